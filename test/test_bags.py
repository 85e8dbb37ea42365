"""rosbag2 I/O on the real KITTI frames: kitti2bag, reading clouds back, offline bag completion, replay.

Bags are read back with rosbags and, where the type exists here, with real rclpy deserialisation.
The player test runs rclpy in subprocesses on loopback DDS (test/ros_env.py).
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import DATA, REPO
from ddpo_ros.frontends.bag_complete import complete_bag
from ddpo_ros.frontends.bags import KITTI_EPOCH_NS, kitti_to_bag, open_bag, read_bag_clouds, typestore
from ddpo_ros.frontends.cli import main
from ddpo_ros.clouds import make_pointcloud2
from ddpo_ros.config import CompletionConfig, Config, ModelConfig
from ddpo_ros.datasets.kitti import KittiSequence, read_times
from ddpo_ros.models import build_denoiser, build_encoder, build_refiner
from ddpo_ros.pipeline import Completer

QosDurability = pytest.importorskip("rosbags.interfaces").QosDurability

FLAT = DATA / "kitti_seq00_0_39"
SEMKITTI = DATA / "semantickitti_seq00_mini" / "sequences" / "00"
BUNDLED = DATA / "kitti_seq00_rosbag2_derived" / "kitti00_velodyne_6frames"
TINY = Config(model=ModelConfig(width=0.125), completion=CompletionConfig(num_points=300, replication=2))


def messages(bag) -> list[tuple[str, int, bytes]]:
    with open_bag(bag) as reader:
        return [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]


def qos_of(bag, topic):
    with open_bag(bag) as reader:
        return [q for c in reader.connections if c.topic == topic for q in c.ext.offered_qos_profiles]


@pytest.fixture(scope="module")
def kitti_bag(tmp_path_factory):
    """Frames 0-3 of the flat KITTI folder with /tf (sqlite3)."""
    return kitti_to_bag(FLAT, tmp_path_factory.mktemp("bags") / "kitti4", limit=4, with_tf=True, progress=False)


@pytest.fixture(scope="module")
def completer():
    torch.manual_seed(0)
    return Completer(build_encoder(TINY.model), build_denoiser(TINY.model), build_refiner(TINY.model), TINY)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_kitti_to_bag_round_trip(storage, tmp_path, kitti_bag):
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import PointCloud2

    bag = kitti_bag if storage == "sqlite3" else kitti_to_bag(FLAT, tmp_path / "b", storage="mcap", limit=3,
                                                              progress=False)
    n = 4 if storage == "sqlite3" else 3
    meta = (bag / "metadata.yaml").read_text()
    assert "version: 8" in meta and f"storage_identifier: {storage}" in meta
    assert next(bag.glob("*.db3" if storage == "sqlite3" else "*.mcap")).name.startswith(bag.name)

    msgs = messages(bag)
    assert Counter(t for t, _, _ in msgs) == ({"/velodyne_points": n, "/tf_static": 1, "/tf": n}
                                              if storage == "sqlite3" else {"/velodyne_points": n, "/tf_static": 1})
    times = read_times(FLAT / "times.txt")
    seq = KittiSequence(FLAT)
    ts = typestore()
    clouds = [(t, raw) for topic, t, raw in msgs if topic == "/velodyne_points"]
    for i, (t, raw) in enumerate(clouds):
        assert t == KITTI_EPOCH_NS + round(times[i] * 1e9)  # bag time = 2011-10-03 + times.txt
        msg = ts.deserialize_cdr(raw, "sensor_msgs/msg/PointCloud2")
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == t
        assert msg.header.frame_id == "velodyne" and msg.point_step == 16 and msg.width == len(seq.scan(i))
        assert [f.name for f in msg.fields] == ["x", "y", "z", "intensity"]
        assert msg.data.tobytes() == (FLAT / "velodyne" / f"{i:06d}.bin").read_bytes()
        real = deserialize_message(raw, PointCloud2)  # the real rclpy type support reads our CDR
        assert bytes(real.data) == msg.data.tobytes() and real.header.stamp.nanosec == msg.header.stamp.nanosec

    static = ts.deserialize_cdr(next(raw for topic, _, raw in msgs if topic == "/tf_static"), "tf2_msgs/msg/TFMessage")
    (tf,) = static.transforms
    assert (tf.header.frame_id, tf.child_frame_id) == ("base_link", "velodyne") and tf.transform.rotation.w == 1.0
    (latched,) = qos_of(bag, "/tf_static")
    assert latched.durability == QosDurability.TRANSIENT_LOCAL and latched.depth == 1
    assert "durability: 1" in meta  # rmw's TRANSIENT_LOCAL, in the v8 string form Humble parses
    assert all(q.durability == QosDurability.VOLATILE for q in qos_of(bag, "/velodyne_points"))


def test_tf_follows_the_velodyne_poses(kitti_bag):
    ts = typestore()
    seq = KittiSequence(FLAT)
    tfs = [ts.deserialize_cdr(raw, "tf2_msgs/msg/TFMessage").transforms[0]
           for topic, _, raw in messages(kitti_bag) if topic == "/tf"]
    assert [(t.header.frame_id, t.child_frame_id) for t in tfs] == [("odom", "base_link")] * 4
    for i, t in enumerate(tfs):
        v, q = t.transform.translation, t.transform.rotation
        # odom is base_link (= velodyne here) at the first scan
        assert [v.x, v.y, v.z] == pytest.approx((np.linalg.inv(seq.pose(0)) @ seq.pose(i))[:3, 3], abs=1e-9)
        assert np.linalg.norm([q.x, q.y, q.z, q.w]) == pytest.approx(1.0)
    assert tfs[3].transform.translation.x == pytest.approx(2.5, abs=0.2)  # ~0.86 m per frame forward


def test_sensor_mount_goes_to_tf_static_and_tf(tmp_path):
    from ddpo_ros.transforms import quaternion_matrix

    mount = np.eye(4)
    mount[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # sensor yawed 90 degrees, 1.73 m up
    mount[:3, 3] = [0.2, 0.0, 1.73]
    bag = kitti_to_bag(FLAT, tmp_path / "b", limit=3, with_tf=True, base_to_sensor=mount, frame_id="/velo",
                       progress=False)
    ts = typestore()

    def matrix(tf):
        m = np.eye(4)
        q, v = tf.transform.rotation, tf.transform.translation
        m[:3, :3], m[:3, 3] = quaternion_matrix([q.x, q.y, q.z, q.w]), [v.x, v.y, v.z]
        return m

    msgs = messages(bag)
    (static,) = [ts.deserialize_cdr(raw, "tf2_msgs/msg/TFMessage").transforms[0]
                 for topic, _, raw in msgs if topic == "/tf_static"]
    assert static.child_frame_id == "velo"  # tf2 frame ids have no leading slash
    assert np.allclose(matrix(static), mount)
    seq = KittiSequence(FLAT)
    for i, (topic, _, raw) in enumerate(m for m in msgs if m[0] == "/tf"):
        odom_base = matrix(ts.deserialize_cdr(raw, "tf2_msgs/msg/TFMessage").transforms[0])
        motion = np.linalg.inv(seq.pose(0)) @ seq.pose(i)
        assert np.allclose(odom_base @ mount, mount @ motion, atol=1e-9)  # base pose * mount = mount * sensor motion


def test_kitti_to_bag_refuses_to_overwrite_and_leaves_no_half_bag(tmp_path, kitti_bag):
    before = (kitti_bag / "metadata.yaml").read_text()
    with pytest.raises(FileExistsError, match="exists already; not overwriting"):
        kitti_to_bag(FLAT, kitti_bag, limit=1, progress=False)
    assert (kitti_bag / "metadata.yaml").read_text() == before
    # a scan that breaks half-way: the error names it, and neither the bag nor its scratch folder remains
    seq = tmp_path / "seq"
    (seq / "velodyne").mkdir(parents=True)
    (seq / "velodyne" / "000000.bin").symlink_to(FLAT / "velodyne" / "000000.bin")
    (seq / "velodyne" / "000001.bin").write_bytes((FLAT / "velodyne" / "000001.bin").read_bytes()[:-6])
    (seq / "times.txt").write_text((FLAT / "times.txt").read_text())
    with pytest.raises(ValueError, match="000001.bin: .* not a whole number"):
        kitti_to_bag(seq, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seq"]
    with pytest.raises(ValueError, match="with_tf needs poses"):
        kitti_to_bag(seq, tmp_path / "out", with_tf=True, progress=False)


def test_read_bag_clouds_on_the_bundled_bag():
    clouds = list(read_bag_clouds(BUNDLED))
    assert [len(c.points) for _, _, _, c in clouds] == [124668, 124605, 124478, 124167, 123969, 123924]
    times = read_times(SEMKITTI / "times.txt")
    for i, (topic, t, header, cloud) in enumerate(clouds):
        assert topic == "/velodyne_points" and header.frame_id == "velodyne"
        assert header.stamp.sec * 10**9 + header.stamp.nanosec == t
        assert t == pytest.approx(KITTI_EPOCH_NS + times[i] * 1e9, abs=1000)  # written via float seconds
        scan = np.fromfile(SEMKITTI / "velodyne" / f"{i:06d}.bin", np.float32).reshape(-1, 4)
        assert cloud.total == len(scan) and cloud.dropped == 0 and np.array_equal(cloud.points, scan)
    with pytest.raises(ValueError, match="no sensor_msgs/msg/PointCloud2 topic '/points'.*/velodyne_points"):
        next(read_bag_clouds(BUNDLED, "/points"))
    (only,) = {c.points.shape[1] for _, _, _, c in read_bag_clouds(BUNDLED / f"{BUNDLED.name}.db3", intensity=False)}
    assert only == 3


def test_complete_bag_keeps_everything_and_adds_completions(kitti_bag, completer, tmp_path):
    out = tmp_path / "done"
    completer.configure(steps=1, seed=0)  # the settings every cloud of the bag is completed with
    summary = complete_bag(kitti_bag, out, completer, progress=False)
    assert summary == {"clouds": 4, "completed": 4, "skipped": 0, "written": 17,
                       "topics": {"/tf_static": 1, "/velodyne_points": 4, "/tf": 4,
                                  "/velodyne_points/completed": 4, "/diagnostics": 4}}
    original, written = messages(kitti_bag), messages(out)
    assert Counter(original) - Counter(written) == Counter()  # every input message, byte for byte, same time
    assert len(written) == 17 and "version: 8" in (out / "metadata.yaml").read_text()
    assert qos_of(out, "/tf_static") == qos_of(kitti_bag, "/tf_static")  # latching survives the copy

    ts = typestore()
    inputs = {t: ts.deserialize_cdr(raw, "sensor_msgs/msg/PointCloud2").header
              for topic, t, raw in original if topic == "/velodyne_points"}
    done = [(t, ts.deserialize_cdr(raw, "sensor_msgs/msg/PointCloud2"))
            for topic, t, raw in written if topic == "/velodyne_points/completed"]
    assert sorted(t for t, _ in done) == sorted(inputs)
    first = None
    for t, msg in done:
        assert msg.header == inputs[t]  # same stamp and frame as its input, at the input's bag time
        pts = msg.data.view("<f4").reshape(-1, 3)
        assert [f.name for f in msg.fields] == ["x", "y", "z"] and len(pts) > 0 and np.isfinite(pts).all()
        first = pts if first is None else first
    again = completer.complete(KittiSequence(FLAT).scan(0), steps=1, seed=0)
    assert np.array_equal(first, again.points)  # the bag holds exactly what the Completer makes

    diags = [(t, ts.deserialize_cdr(raw, "diagnostic_msgs/msg/DiagnosticArray"))
             for topic, t, raw in written if topic == "/diagnostics"]
    assert sorted(t for t, _ in diags) == sorted(inputs)
    for t, d in diags:
        (status,) = d.status
        values = {kv.key: kv.value for kv in status.values}
        assert d.header == inputs[t] and status.level == 0 and status.name == "ddpo_ros: offline completion"
        assert values["steps"] == "1" and int(values["points in"]) > 100_000 and int(values["points out"]) > 0
        assert float(values["stage denoise ms"]) > 0 and float(values["stage total ms"]) > 0
    assert values["frames processed"] == "4"
    with pytest.raises(FileExistsError):
        complete_bag(kitti_bag, out, completer, progress=False)


def test_complete_bag_reports_unusable_clouds(completer, tmp_path):
    """An mcap bag with a real scan and a 5-point cloud: one completion, two diagnostics (OK, WARN)."""
    from ddpo_ros.frontends.bags import header, new_bag, qos

    ts = typestore()
    pc2, field = ts.types["sensor_msgs/msg/PointCloud2"], ts.types["sensor_msgs/msg/PointField"]
    scan = KittiSequence(SEMKITTI).scan(0)
    with new_bag(tmp_path / "in", "mcap") as w:
        conn = w.add_connection("/lidar", "sensor_msgs/msg/PointCloud2", typestore=ts, offered_qos_profiles=[qos()])
        for k, pts in enumerate([scan, scan[:5]]):
            msg = make_pointcloud2(pts, header(ts, 10**9 * (k + 1), "lidar"), pc2, field)
            w.write(conn, 10**9 * (k + 1), ts.serialize_cdr(msg, "sensor_msgs/msg/PointCloud2"))
    completer.configure(steps=1, seed=None)
    summary = complete_bag(tmp_path / "in", tmp_path / "out", completer, progress=False)
    assert (summary["completed"], summary["skipped"], summary["written"]) == (1, 1, 5)
    assert (tmp_path / "out" / "out.mcap").exists()  # the input's storage is kept
    levels = [ts.deserialize_cdr(raw, "diagnostic_msgs/msg/DiagnosticArray").status[0].level
              for topic, _, raw in messages(tmp_path / "out") if topic == "/diagnostics"]
    assert levels == [0, 1]


def test_cli_kitti2bag_and_complete_a_bag(tiny_weights, tmp_path, capsys):
    bag = tmp_path / "k2"
    assert main(["kitti2bag", str(SEMKITTI), "-o", str(bag), "--storage", "mcap", "--limit", "2"]) == 0
    assert main(["kitti2bag", str(SEMKITTI), "-o", str(bag)]) == 2
    assert "exists already" in capsys.readouterr().err
    out = tmp_path / "k2_done"
    rc = main(["complete", str(bag), "-o", str(out), "--weights", str(tiny_weights), "--steps", "1",
               "--out-topic", "/dense", "--storage", "sqlite3"])
    assert rc == 0
    assert "/dense: 2" in capsys.readouterr().out
    expected = {"/velodyne_points": 2, "/tf_static": 1, "/dense": 2, "/diagnostics": 2}
    assert Counter(t for t, _, _ in messages(out)) == expected
    assert main(["complete", str(out), "-o", str(tmp_path / "x"), "--weights", str(tiny_weights)]) == 2
    assert "2 sensor_msgs/msg/PointCloud2 topics" in capsys.readouterr().err


SUBSCRIBER = """
import json, sys, time
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import PointCloud2
rclpy.init()
node = rclpy.create_node("bag_probe")
clouds, clocks = [], []
node.create_subscription(PointCloud2, "/velodyne_points", clouds.append,
                         QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
node.create_subscription(Clock, "/clock", clocks.append, 100)
last = int(sys.argv[1])  # the bag's last stamp: /clock ends there
end = time.monotonic() + 60
# a sample lost on the wire comes back at the writer's next heartbeat (seconds), so wait for the end
while time.monotonic() < end and (len(clouds) < 6 or not any(c.clock.sec * 10**9 + c.clock.nanosec == last
                                                                 for c in clocks)):
    rclpy.spin_once(node, timeout_sec=0.05)
print(json.dumps({"clouds": [[m.header.stamp.sec * 10**9 + m.header.stamp.nanosec, m.header.frame_id, m.width,
                              bytes(m.data[:16]).hex()] for m in clouds],
                  "clocks": [c.clock.sec * 10**9 + c.clock.nanosec for c in clocks]}))
"""


def test_player_publishes_every_cloud_and_the_clock(tmp_path):
    pytest.importorskip("rclpy")
    from ros_env import loopback_env

    env = loopback_env(tmp_path)
    env["PYTHONPATH"] = str(REPO)
    expected = [t for _, t, _, _ in read_bag_clouds(BUNDLED)]
    sub = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, str(expected[-1])], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        play = subprocess.run([sys.executable, "-m", "ddpo_ros.frontends.cli", "play", str(BUNDLED), "--rate", "2",
                               "--wait-for-subscribers", "30"], env=env, capture_output=True, text=True, timeout=90)
        out, err = sub.communicate(timeout=90)
    finally:
        sub.kill()
    assert out.strip(), err
    assert play.returncode == 0, play.stderr
    assert "/velodyne_points: 6" in play.stderr and "played 6 messages" in play.stderr
    assert float(play.stderr.split("played 6 messages in ")[1].split(" s")[0]) >= 0.25  # 0.52 s of bag at x2
    got = json.loads(out)
    stamps = [t for t, _, _, _ in got["clouds"]]
    assert stamps == expected and all(f == "velodyne" for _, f, _, _ in got["clouds"])
    assert [w for _, _, w, _ in got["clouds"]] == [124668, 124605, 124478, 124167, 123969, 123924]
    first = np.fromfile(SEMKITTI / "velodyne" / "000000.bin", np.float32)[:4].tobytes().hex()
    assert got["clouds"][0][3] == first
    clocks = got["clocks"]
    # /clock moves forward through the bag's time span and ends at its last stamp
    assert len(clocks) >= 6 and expected[0] <= min(clocks) and max(clocks) == expected[-1]
    assert set(expected) <= set(clocks)  # a tick at each message's bag time


def test_player_skips_types_it_cannot_import(kitti_bag, tmp_path):
    """tf2_msgs has no wheel here: both TF topics are skipped with one warning, the clouds still go out."""
    pytest.importorskip("rclpy")
    from ros_env import loopback_env

    env = loopback_env(tmp_path)
    env["PYTHONPATH"] = str(REPO)
    play = subprocess.run([sys.executable, "-m", "ddpo_ros.frontends.cli", "play", str(kitti_bag), "--rate", "50",
                           "--no-clock"], env=env, capture_output=True, text=True, timeout=60)
    assert play.returncode == 0, play.stderr
    assert play.stderr.count("cannot import tf2_msgs/msg/TFMessage") == 1
    assert "no ros-jazzy-tf2-msgs wheel on PyPI" in play.stderr and "only with target_frame" in play.stderr
    assert "/velodyne_points: 4" in play.stderr and "/clock" not in play.stderr and "/tf:" not in play.stderr
