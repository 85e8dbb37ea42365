"""The one place that turns weights, device and settings into a Completer (ddpo_ros/loading.py),
and the one per-frame step the node and bag completion share (ddpo_ros/frontends/frame.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import kitti_scan
from ddpo_ros.checkpoint import CheckpointError
from ddpo_ros.clouds import make_pointcloud2
from ddpo_ros.config import CompletionConfig
from ddpo_ros.frontends.frame import complete_message
from ddpo_ros.frontends.monitor import Monitor
from ddpo_ros.loading import completion_settings, load_completer, resolve_device, weights_path
from ddpo_ros.resources import default_weights


def test_cuda_fallback_is_opt_in_and_warns():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu0")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no CUDA"):
        resolve_device("cuda:1")
    warnings = []
    assert resolve_device("cuda:1", cpu_fallback=True, warn=warnings.append) == torch.device("cpu")
    assert warnings == ["device 'cuda:1' requested but CUDA is not available: using cpu"]


def test_settings_replace_fields_and_name_the_one_at_fault():
    base = CompletionConfig(num_points=4000, steps=8, seed=3)
    cfg = completion_settings(base, {"steps": 2, "seed": None, "refine": False})
    assert (cfg.steps, cfg.seed, cfg.refine, cfg.num_points) == (2, None, False, 4000)
    assert completion_settings(base) == base and completion_settings(base, {}) == base
    with pytest.raises(ValueError, match=r"unknown completion setting\(s\) \['completion.stepz'\]"):
        completion_settings(base, {"stepz": 2})
    with pytest.raises(ValueError, match="completion.steps"):
        completion_settings(base, {"steps": 0})


def test_load_completer_applies_overrides_to_the_weights_settings(tiny_weights):
    c = load_completer(tiny_weights, overrides={"steps": 3, "guidance_scale": 1.5, "refine": False})
    assert (c.kind, c.default_steps, c.default_guidance, c.config.completion.refine) == ("student", 3, 1.5, False)
    assert c.config.completion.num_points == 300  # the weights' own value where nothing overrides it
    c.configure(steps=1, seed=4)  # between scenes, by the same rules
    out = c.complete(kitti_scan(0))
    assert (out.steps, out.seed) == (1, 4) and np.array_equal(out.points, c.complete(kitti_scan(0)).points)
    with pytest.raises(ValueError, match="completion.num_points"):
        c.configure(num_points=0)


def test_missing_weights_name_the_path_and_empty_means_bundled(tmp_path):
    with pytest.raises((OSError, CheckpointError), match="nowhere.safetensors"):
        load_completer(tmp_path / "nowhere.safetensors")
    if default_weights() is None:
        with pytest.raises(ValueError, match="bundles no mini weights"):
            weights_path("")
    else:
        assert weights_path("") == weights_path(None) == default_weights()


@pytest.fixture(scope="module")
def rosbags_types():
    from ddpo_ros.frontends.bags import header, typestore

    ts = typestore()
    return ts, header, ts.types["sensor_msgs/msg/PointCloud2"], ts.types["sensor_msgs/msg/PointField"]


def test_one_frame_completed_counted_and_transformed(tiny_weights, rosbags_types):
    ts, header, pc2, field = rosbags_types
    completer = load_completer(tiny_weights, overrides={"steps": 1, "seed": 0})
    scan = kitti_scan(0).copy()
    scan[:100, :3] = np.nan  # decoded rows are left to the Completer: it filters and counts them once
    scan[100:150, :3] = 0.0
    msg = make_pointcloud2(scan, header(ts, 5 * 10**9 + 7, "velodyne"), pc2, field)
    monitor = Monitor()
    result = complete_message(completer, msg, field, monitor)
    assert result.status == "completed" and result.latency_s is None and result.processing_s > 0
    assert result.cloud.header.frame_id == "velodyne" and result.cloud.header.stamp.nanosec == 7
    report = dict(monitor.report().values)
    assert report["points invalid"] == "150" and report["points in"] == str(len(scan))
    pts = result.cloud.data.view("<f4").reshape(-1, 3)
    expected = completer.complete(scan).points
    np.testing.assert_array_equal(pts, expected)

    moved = complete_message(completer, msg, field, monitor, now_ns=lambda: 6 * 10**9 + 7,
                             lookup=lambda h: ((1.0, 2.0, 3.0), (0.0, 0.0, 0.0, 1.0), "map"))
    assert moved.cloud.header.frame_id == "map" and moved.latency_s == pytest.approx(1.0)
    np.testing.assert_allclose(moved.cloud.data.view("<f4").reshape(-1, 3), expected + [1, 2, 3], atol=1e-5)
    assert monitor.counts["processed"] == 2


def test_unusable_frames_come_back_with_a_reason(tiny_weights, rosbags_types):
    ts, header, pc2, field = rosbags_types
    completer = load_completer(tiny_weights, overrides={"steps": 1})
    monitor = Monitor()
    good = make_pointcloud2(kitti_scan(0), header(ts, 1, "velodyne"), pc2, field)
    short = make_pointcloud2(kitti_scan(0), header(ts, 1, "velodyne"), pc2, field)
    short.width += 10
    few = make_pointcloud2(kitti_scan(0)[:20], header(ts, 1, "velodyne"), pc2, field)

    def no_tf(h):
        raise LookupError("no transform velodyne -> map")
    got = [complete_message(completer, m, field, monitor, **kw)
           for m, kw in ((short, {}), (few, {}), (good, {"lookup": no_tf}), (good, {"max_points": 10}))]
    assert [r.status for r in got] == ["malformed", "skipped", "skipped", "malformed"]
    assert all(r.cloud is None and r.reason for r in got)
    assert "row_step" in got[0].reason and "fewer than the 300" in got[1].reason and "velodyne -> map" in got[2].reason
    assert (monitor.counts["malformed"], monitor.counts["skipped"], monitor.counts["processed"]) == (2, 2, 0)
