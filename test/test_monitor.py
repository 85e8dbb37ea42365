"""Node health without ROS: rolling statistics, levels and the DiagnosticArray they become."""
from __future__ import annotations

import numpy as np
import pytest

from ddpo_ros.frontends.monitor import ERROR, OK, WARN, Monitor, diagnostic_array
from ddpo_ros.pipeline import Completion


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def completion(steps=2):
    timings = {"preprocess": 0.010, "encoder": 0.020}
    timings.update({f"step {i + 1} (t={999 - i})": 0.100 for i in range(steps)})
    timings.update(postprocess=0.001, refine=0.030)
    timings["total"] = sum(timings.values())
    counts = {"input": 120000, "output": 24000}
    empty = np.zeros((0, 3), np.float32)
    return Completion(empty, empty, empty, timings, counts, steps, 3.5, None)


def values(report):
    return dict(report.values)


def test_waiting_then_ok_with_statistics():
    clock = FakeClock()
    mon = Monitor(window=50, device="cpu", clock=clock)
    assert mon.report().level == OK and mon.report().message == "warming up"
    mon.ready = True
    assert mon.report().level == OK and "waiting" in mon.report().message
    assert values(mon.report())["ready"] == "yes"
    latencies = np.arange(1, 21) / 10  # 0.1 .. 2.0 s
    for lat in latencies:
        mon.received()
        mon.processed(completion(), latency_s=float(lat), processing_s=0.5)
        clock.now += 0.5
    rep = mon.report()
    v = values(rep)
    assert rep.level == OK and rep.message == "completing"
    assert float(v["latency mean ms"]) == pytest.approx(latencies.mean() * 1000, abs=0.1)
    assert float(v["latency p95 ms"]) == pytest.approx(np.percentile(latencies, 95) * 1000, abs=0.1)
    assert float(v["latency max ms"]) == pytest.approx(2000.0)
    assert float(v["stage denoise ms"]) == pytest.approx(200.0)  # both steps summed
    assert float(v["stage refine ms"]) == pytest.approx(30.0)
    assert float(v["input rate Hz"]) == pytest.approx(2.0) and float(v["output rate Hz"]) == pytest.approx(2.0)
    assert v["frames processed"] == "20" and v["steps"] == "2" and v["points out"] == "24000"
    assert float(v["peak memory MiB"]) > 10 and v["device"] == "cpu"


def test_window_forgets_old_frames():
    mon = Monitor(window=3)
    for lat in (10.0, 10.0, 1.0, 1.0, 1.0):
        mon.processed(completion(), latency_s=lat, processing_s=0.1)
    assert float(values(mon.report())["latency max ms"]) == pytest.approx(1000.0)


def test_dropped_frames_warn_once_per_report():
    mon = Monitor()
    mon.processed(completion(), 0.1, 0.1)
    mon.dropped(3)
    rep = mon.report()
    assert rep.level == WARN and rep.message.startswith("3 frame(s) dropped")
    assert values(rep)["frames dropped"] == "3"
    assert mon.report().level == OK  # nothing new since


def test_problems_set_the_level_until_the_next_success():
    mon = Monitor()
    mon.rejected("skipped", "no transform velodyne -> map")
    assert (mon.report().level, mon.report().message) == (WARN, "skipped: no transform velodyne -> map")
    mon.rejected("malformed", "no field z")
    assert mon.report().level == ERROR and "no field z" in mon.report().message
    mon.processed(completion(), 0.1, 0.1)
    assert mon.report().level == OK
    mon.rejected("failed", "RuntimeError('CUDA out of memory')")
    rep = mon.report()
    assert rep.level == ERROR and values(rep)["frames failed"] == "1" and values(rep)["frames malformed"] == "1"
    with pytest.raises(KeyError):
        mon.rejected("weird", "?")


def test_latency_budget():
    mon = Monitor(latency_warn_ms=500)
    mon.processed(completion(), latency_s=0.4, processing_s=0.1)
    assert mon.report().level == OK
    mon.processed(completion(), latency_s=1.0, processing_s=0.1)
    rep = mon.report()
    assert rep.level == WARN and "mean latency 700 ms > 500 ms" in rep.message


def test_latency_unknown_is_not_available():
    mon = Monitor()
    mon.processed(completion(), latency_s=None, processing_s=0.1)
    assert values(mon.report())["latency mean ms"] == "n/a"
    assert values(mon.report())["processing mean ms"] == "100.0"


def test_diagnostic_array_for_rosbags_classes_serialises():
    typesys = pytest.importorskip("rosbags.typesys")
    ts = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
    t = ts.types
    mon = Monitor()
    mon.rejected("malformed", "data shorter than width*point_step")
    header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=5, nanosec=6), frame_id="")
    arr = diagnostic_array(mon.report(), header, t["diagnostic_msgs/msg/DiagnosticArray"],
                           t["diagnostic_msgs/msg/DiagnosticStatus"], t["diagnostic_msgs/msg/KeyValue"],
                           name="ddpo_completion: completion", hardware_id="cpu")
    raw = ts.serialize_cdr(arr, "diagnostic_msgs/msg/DiagnosticArray")
    back = ts.deserialize_cdr(raw, "diagnostic_msgs/msg/DiagnosticArray")
    assert back.status[0].level == ERROR and back.status[0].hardware_id == "cpu"
    assert {kv.key for kv in back.status[0].values} >= {"frames malformed", "latency p95 ms"}


def test_diagnostic_array_for_rclpy_classes():
    pytest.importorskip("rclpy")
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from rclpy.serialization import deserialize_message, serialize_message
    from std_msgs.msg import Header

    mon = Monitor()
    mon.dropped()
    arr = diagnostic_array(mon.report(), Header(frame_id=""), DiagnosticArray, DiagnosticStatus, KeyValue,
                           name="n", hardware_id="cuda:0")
    back = deserialize_message(serialize_message(arr), DiagnosticArray)
    assert back.status[0].level == DiagnosticStatus.WARN and back.status[0].name == "n"
