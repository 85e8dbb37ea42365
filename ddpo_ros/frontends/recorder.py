"""Run the completion node as a process and watch it from outside, as the demo and the e2e test do.

`start_node` launches `completion_node` (as `python -m ddpo_ros.frontends.node`) with parameters and
remappings on the command line, the way `ros2 run` would. `Recorder` subscribes to what goes
into and out of the node and notes wall-clock arrival times, so end-to-end latency is measured
where a user would see it, independently of the node's own numbers.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Float64

from .bags import stamp_ns
from ..clouds import read_pointcloud2

NODE = "ddpo_completion"


def start_node(env: dict, *, namespace: str, input_topic: str, params: dict, log_path=None) -> subprocess.Popen:
    """The node in its own process; its output goes to `log_path` (or is discarded)."""
    args = [sys.executable, "-m", "ddpo_ros.frontends.node", "--ros-args", "-r", f"__ns:={namespace}",
            "-r", f"~/input/points:={input_topic}"]
    for name, value in params.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ["-p", f"{name}:={text}"]
    if not log_path:
        return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    with open(log_path, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop_node(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """Ctrl-C, as a user would; kill only if it does not exit in time. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class Recorder:
    """Inputs, outputs, debug times and diagnostics of one node, with wall-clock arrival times."""

    def __init__(self, context=None, *, namespace: str, input_topic: str):
        self._own_context = context is None
        if context is None:  # a private context: the caller may share it (e.g. with the player)
            context = rclpy.Context()
            rclpy.init(context=context)
        self.context = context
        self.node = rclpy.create_node("ddpo_recorder", context=context)
        self.inputs: dict[int, float] = {}                  # stamp -> wall arrival
        self.outputs: list[tuple[int, float, object, str]] = []  # (stamp, wall arrival, points (M, 3), frame)
        self.processing_ms: list[float] = []
        self.status: dict[str, str] = {}
        self.levels: list[int] = []
        reliable = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        base = f"{namespace}/{NODE}"
        sub = self.node.create_subscription
        sub(PointCloud2, input_topic, lambda m: self.inputs.setdefault(stamp_ns(m.header.stamp), time.monotonic()),
            reliable)
        sub(PointCloud2, f"{base}/output/points", self._on_output, reliable)
        sub(Float64, f"{base}/debug/processing_time_ms", lambda m: self.processing_ms.append(m.data), 20)
        sub(DiagnosticArray, "/diagnostics", self._on_diagnostics, 20)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _on_output(self, msg: PointCloud2) -> None:
        points = read_pointcloud2(msg, intensity=False).points
        self.outputs.append((stamp_ns(msg.header.stamp), time.monotonic(), points, msg.header.frame_id))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(NODE):
                self.status = {kv.key: kv.value for kv in status.values}
                self.status["message"] = status.message
                self.levels.append(status.level[0] if isinstance(status.level, bytes) else int(status.level))

    def count(self, key: str) -> int:
        return int(self.status.get(f"frames {key}", 0))

    def idle(self, clouds: int) -> bool:
        """Every one of `clouds` inputs was received by the node and completed, dropped or rejected."""
        done = sum(self.count(k) for k in ("processed", "dropped", "malformed", "skipped", "failed"))
        return self.count("received") >= clouds and done == self.count("received")

    @staticmethod
    def wait(condition, timeout: float, poll: float = 0.05) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if condition():
                return True
            time.sleep(poll)
        return False

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        if self._own_context:
            rclpy.try_shutdown(context=self.context)
