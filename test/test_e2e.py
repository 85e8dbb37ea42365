"""End to end with real processes: a KITTI bag played into the node, watched from outside.

The node runs as its own process (as `ros2 run` would start it), the bag is played with the
rclpy player, and a recorder subscribes to the node's input, output and /diagnostics over
loopback DDS. Tiny random weights keep each completion well under a second.
"""
from __future__ import annotations

import json

import pytest

rclpy = pytest.importorskip("rclpy")

from conftest import DATA, kitti_scan  # noqa: E402
from ddpo_ros.frontends.bags import KITTI_EPOCH_NS, kitti_to_bag  # noqa: E402
from ddpo_ros.frontends.dds import LOOPBACK_KEYS, loopback_env  # noqa: E402

FRAMES = 6


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return kitti_to_bag(DATA / "kitti_seq00_0_39", tmp_path_factory.mktemp("bag") / "kitti00", limit=FRAMES,
                        progress=False)


def test_player_outruns_the_node_and_malformed_clouds_do_not_stop_it(tmp_path, bag, tiny_weights, monkeypatch):
    from sensor_msgs.msg import PointCloud2, PointField
    from std_msgs.msg import Header

    from ddpo_ros.clouds import make_pointcloud2
    from ddpo_ros.frontends.player import play
    from ddpo_ros.frontends.recorder import Recorder, start_node, stop_node

    env = loopback_env(tmp_path)
    for key in LOOPBACK_KEYS:
        monkeypatch.setenv(key, env[key])
    node = start_node(env, namespace="/e2e", input_topic="/velodyne_points", log_path=tmp_path / "node.log",
                      params={"weights": tiny_weights, "device": "cpu", "completion.steps": 2,
                              "input.reliability": "reliable", "input.depth": 10,
                              "diagnostics.period": 0.2})
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    rec = Recorder(ctx, namespace="/e2e", input_topic="/velodyne_points")
    try:
        assert rec.wait(lambda: rec.status.get("ready") == "yes", 120), (tmp_path / "node.log").read_text()
        sent = play(bag, rate=2.0, context=ctx, wait_for_subscribers=10.0, log=lambda _: None)
        assert sent["/velodyne_points"] == FRAMES
        counts = lambda: {k: v for k, v in rec.status.items() if k.startswith("frames")}  # noqa: E731
        assert rec.wait(lambda: rec.idle(FRAMES), 60), (counts(), len(rec.inputs))

        # A malformed cloud (no z field), then a good one: the node reports and carries on.
        pub = rec.node.create_publisher(PointCloud2, "/velodyne_points", 10)
        bad = make_pointcloud2(kitti_scan(0), Header(frame_id="velodyne"), PointCloud2, PointField)
        bad.fields = [f for f in bad.fields if f.name != "z"]
        pub.publish(bad)
        assert rec.wait(lambda: rec.count("malformed") == 1, 30), rec.status
        good = make_pointcloud2(kitti_scan(3), Header(frame_id="velodyne"), PointCloud2, PointField)
        good.header.stamp.sec = 7
        pub.publish(good)
        assert rec.wait(lambda: any(o[0] == 7 * 10**9 for o in rec.outputs), 60), rec.status
        assert rec.wait(lambda: rec.count("processed") == len(rec.outputs), 5)
    finally:
        code = stop_node(node)
        rec.close()
        rclpy.try_shutdown(context=ctx)
    assert code == 0, (tmp_path / "node.log").read_text()

    stamps = [o[0] for o in rec.outputs]
    bag_stamps = set(rec.inputs) - {0, 7 * 10**9}  # minus the malformed and the good hand-made cloud
    assert len(bag_stamps) == FRAMES and all(s >= KITTI_EPOCH_NS for s in bag_stamps)
    assert set(stamps[:-1]) <= bag_stamps and stamps[:-1] == sorted(stamps[:-1])  # newest-first never reorders
    assert {o[3] for o in rec.outputs} == {"velodyne"}
    assert all(300 < len(o[2]) <= 300 * 2 * 6 for o in rec.outputs)
    # one output per processed cloud; every cloud the player sent was completed or counted as dropped
    assert rec.count("processed") == len(stamps) and rec.count("received") == FRAMES + 2
    assert rec.count("dropped") == FRAMES - (len(stamps) - 1) > 0, "the player at 2x should outrun the node"
    assert max(rec.levels) == 2  # ERROR while the malformed cloud was the latest event
    assert rec.status["message"] == "completing" and float(rec.status["processing p95 ms"]) > 0
    assert len(rec.processing_ms) == len(stamps)


def test_demo_runs_on_the_bundled_frames(tmp_path, tiny_weights):
    from ddpo_ros.frontends.demo import run_demo

    lines = []
    result = run_demo(DATA, tmp_path, frames=3, rate=0.5, weights=tiny_weights,
                      params={"completion.steps": 1}, timeout=120, log=lines.append)
    assert result["exit_code"] == 0 and result["node"]["received"] == 3
    assert len(result["frames"]) == result["node"]["processed"] >= 1
    for row in result["frames"]:
        assert 0.1 < row["cd_scan_m"] < 0.5 and row["cd_completion_m"] > 0 and row["end_to_end_ms"] > 0
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["node"] == result["node"] and saved["map_has_moving_objects"] is True
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert any("CD scan m" in line for line in lines)
