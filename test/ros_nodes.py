"""Shared by the node tests (with conftest's `ros` fixture: a private rclpy context on loopback DDS):
a probe node, real clouds, lifecycle start and stop."""
from __future__ import annotations

import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Float64, Header

from conftest import kitti_scan
from ddpo_ros.clouds import make_pointcloud2

WAIT_S = 60.0


class Probe:
    """A test node: publishes clouds to the completion node and records what comes back."""

    def __init__(self, ctx, executor, ns: str):
        self.node = rclpy.create_node(f"probe_{ns}", context=ctx)
        self.outputs, self.diagnostics, self.processing, self.latency = [], [], [], []
        self.pub = self.node.create_publisher(PointCloud2, f"/{ns}/ddpo_completion/input/points", 10)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(PointCloud2, f"/{ns}/ddpo_completion/output/points", self.outputs.append,
                                      reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 50)
        self.node.create_subscription(Float64, f"/{ns}/ddpo_completion/debug/processing_time_ms",
                                      self.processing.append, 50)
        self.node.create_subscription(Float64, f"/{ns}/ddpo_completion/debug/pipeline_latency_ms",
                                      self.latency.append, 50)
        executor.add_node(self.node)

    def wait(self, what, timeout=WAIT_S):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if what():
                return True
            time.sleep(0.02)
        return False

    def connected(self, completion_node):
        return self.wait(lambda: self.pub.get_subscription_count() > 0 and completion_node.ready)


def started(node):
    """A lifecycle node configured and activated, as `autostart` does."""
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    return node


def stopped(node) -> None:
    node.trigger_shutdown()  # frees the model and ends the worker
    node.destroy_node()


def cloud_msg(frame: int = 0, stamp_s: int = 100, frame_id: str = "velodyne") -> PointCloud2:
    header = Header(frame_id=frame_id)
    header.stamp.sec = stamp_s
    return make_pointcloud2(kitti_scan(frame), header, PointCloud2, PointField)


def status_of(array: DiagnosticArray):
    status = array.status[0]
    return status.level, status.message, {kv.key: kv.value for kv in status.values}
