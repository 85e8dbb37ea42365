"""`completion_node`: sensor_msgs/PointCloud2 in, completed scene out, with diagnostics.

A thin rclpy shell over the Completer (KISS-ICP style): parameters come from node_params,
message conversion from clouds, health from monitor; this file only wires them to ROS.

Threading: the subscription callback only stores the newest cloud (latest-only; a cloud that
is replaced before the model reaches it counts as dropped). One worker thread owns every
torch/CUDA call, loading included (OpenMP work on a second thread slowed every scene by 30%:
docs/ros.md): load, warm-up, then one cloud at a time.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Float64, Header

from . import node_params
from .clouds import CloudError, make_pointcloud2, read_pointcloud2
from .monitor import Monitor, diagnostic_array

THROTTLE_S = 5.0


def _descriptor(p: node_params.Param) -> ParameterDescriptor:
    d = ParameterDescriptor(description=p.description, read_only=p.read_only)
    if p.choices:
        d.additional_constraints = f"one of {', '.join(p.choices)}"
    if p.low is not None and isinstance(p.default, float):
        d.floating_point_range = [FloatingPointRange(from_value=float(p.low), to_value=float(p.high))]
    elif p.low is not None:
        d.integer_range = [IntegerRange(from_value=int(p.low), to_value=int(p.high), step=1)]
    return d


def _qos(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, durability=DurabilityPolicy.VOLATILE,
                      reliability=ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort"
                      else ReliabilityPolicy.RELIABLE)


class CompletionNode(Node):
    def __init__(self, **kwargs):
        super().__init__("ddpo_completion", **kwargs)
        for p in node_params.PARAMETERS:
            self.declare_parameter(p.name, p.default, _descriptor(p))
        self.settings = node_params.validate({p.name: self.get_parameter(p.name).value
                                              for p in node_params.PARAMETERS})
        s = self.settings
        self._cond = threading.Condition()
        self._waiting: PointCloud2 | None = None
        self._stop = False
        self.ready = threading.Event()
        self._loaded: Future = Future()  # the worker's Completer or its loading error
        self._wired = threading.Event()  # publishers and monitor exist
        self._worker = threading.Thread(target=self._run, name="ddpo_completion_worker", daemon=True)
        self._worker.start()
        try:
            self.completer = self._loaded.result()  # a bad `weights` raises here
            self.tf = self._tf_buffer() if s["target_frame"] else None
        except BaseException:
            self.stop()
            raise
        self.monitor = Monitor(s["diagnostics.window"], s["diagnostics.latency_warn_ms"], str(self.completer.device))

        self.pub = self.create_publisher(PointCloud2, "~/output/points", _qos(s["output.reliability"], 5))
        self.pub_processing = self.create_publisher(Float64, "~/debug/processing_time_ms", 10)
        self.pub_latency = self.create_publisher(Float64, "~/debug/pipeline_latency_ms", 10)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._wired.set()
        self.sub = self.create_subscription(PointCloud2, "~/input/points", self._on_cloud,
                                            _qos(s["input.reliability"], s["input.depth"]))
        # steady clock: with use_sim_time the node must still report while no /clock is playing
        self.create_timer(s["diagnostics.period"], self._publish_diagnostics,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))

    # -- start-up -----------------------------------------------------------------------------
    def _load_completer(self):
        import torch

        from .checkpoint import load_checkpoint
        from .pipeline import Completer
        from .resources import default_weights

        s = self.settings
        weights = s["weights"] or default_weights()
        if not weights:
            raise ValueError("parameter 'weights' is empty and this install bundles no mini weights; "
                             "set weights:=/path/to/ddpo.safetensors")
        device = s["device"]
        if device.startswith("cuda") and not torch.cuda.is_available():
            self.get_logger().warning(f"device {device!r} requested but CUDA is not available: using cpu")
            device = "cpu"
        ckpt = load_checkpoint(weights)
        completer = Completer.from_checkpoint(ckpt, device=device,
                                              completion=node_params.completion_config(s, ckpt.config.completion))
        self.get_logger().info(f"{completer.kind} from {weights} on {completer.device}; steps "
                               f"{s['completion.steps']}, refine {s['completion.refine']}")
        return completer

    def _tf_buffer(self):
        try:
            from tf2_ros import Buffer, TransformListener
        except ImportError:
            raise ValueError("parameter 'target_frame' needs tf2_ros, which is not installed; "
                             "leave target_frame empty to publish in the input frame") from None
        buffer = Buffer()
        self._tf_listener = TransformListener(buffer, self)
        return buffer

    # -- callbacks ----------------------------------------------------------------------------
    def _on_cloud(self, msg: PointCloud2) -> None:
        self.monitor.received()
        with self._cond:
            if self._waiting is not None:
                self.monitor.dropped()
            self._waiting = msg
            self._cond.notify()

    def _on_set_parameters(self, params) -> SetParametersResult:
        changed = {}
        for p in params:
            if p.name in node_params.BY_NAME and p.name not in node_params.RUNTIME:
                return SetParametersResult(successful=False, reason=f"{p.name} is read-only; restart the node")
            try:
                changed[p.name] = node_params.check_value(p.name, p.value)
            except ValueError as err:
                return SetParametersResult(successful=False, reason=str(err))
        self.settings = {**self.settings, **changed}  # the worker reads a new dict at its next frame
        return SetParametersResult(successful=True)

    def _publish_diagnostics(self) -> None:
        header = Header(stamp=self.get_clock().now().to_msg())
        self.pub_diag.publish(diagnostic_array(self.monitor.report(), header, DiagnosticArray, DiagnosticStatus,
                                               KeyValue, name="ddpo_completion: completion",
                                               hardware_id=str(self.completer.device)))

    # -- the worker -----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            completer = self._load_completer()
        except BaseException as err:
            self._loaded.set_exception(err)
            return
        self._loaded.set_result(completer)
        self._wired.wait()
        if self._stop:
            return
        try:
            if self.settings["warmup"]:
                start = time.perf_counter()
                self.completer.warmup(steps=1)
                self.get_logger().info(f"warm-up done in {time.perf_counter() - start:.1f} s")
        except Exception as err:  # a broken model still leaves a running node that reports ERROR
            self.monitor.rejected("failed", f"warm-up: {err}")
            self.get_logger().error(f"warm-up failed: {err}")
        self.monitor.ready = True
        self.ready.set()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._waiting is not None or self._stop)
                if self._stop:
                    return
                msg, self._waiting = self._waiting, None
            try:
                self.process(msg)
            except Exception as err:  # the worker must outlive any one cloud
                if not self.context.ok():
                    return  # Ctrl-C shut the context down while this cloud was in flight
                self.get_logger().error(f"processing failed: {err!r}", throttle_duration_sec=THROTTLE_S)
                self.monitor.rejected("failed", repr(err))

    def process(self, msg: PointCloud2) -> bool:
        """Complete one cloud and publish it; False (with a warning and a diagnostic) if it could not."""
        start = time.perf_counter()
        s = self.settings
        try:
            cloud = read_pointcloud2(msg, intensity=False, max_points=s["max_points"])
        except CloudError as err:
            return self._reject("malformed", f"malformed PointCloud2: {err}")
        header = msg.header
        transform = None
        if self.tf is not None:
            try:
                transform = self.tf.lookup_transform(s["target_frame"], header.frame_id, header.stamp,
                                                     rclpy.duration.Duration(seconds=s["tf_timeout"]))
            except Exception as err:  # tf2 raises several exception types; every one skips the frame
                return self._reject("skipped", f"no transform {header.frame_id} -> {s['target_frame']}: {err}")
        try:
            completion = self.completer.complete(cloud.points, **node_params.call_options(s))
        except ValueError as err:  # too few points in range, all NaN, ...
            return self._reject("skipped", f"cloud not usable ({cloud.total} points, {cloud.dropped} "
                                           f"NaN/zero): {err}")
        except Exception as err:
            self.get_logger().error(f"completion failed: {err!r}", throttle_duration_sec=THROTTLE_S)
            self.monitor.rejected("failed", repr(err))
            return False
        points = completion.points
        if transform is not None:
            from .transforms import transform_points
            t, q = transform.transform.translation, transform.transform.rotation
            points = transform_points(points, (t.x, t.y, t.z), (q.x, q.y, q.z, q.w))
            header = Header(stamp=header.stamp, frame_id=s["target_frame"])
        self.pub.publish(make_pointcloud2(points, header, PointCloud2, PointField))
        processing = time.perf_counter() - start
        latency = (self.get_clock().now() - rclpy.time.Time.from_msg(header.stamp)).nanoseconds * 1e-9
        self.pub_processing.publish(Float64(data=processing * 1000))
        self.pub_latency.publish(Float64(data=latency * 1000))
        self.monitor.processed(completion, latency, processing)
        return True

    def _reject(self, kind: str, reason: str) -> bool:
        self.get_logger().warning(reason, throttle_duration_sec=THROTTLE_S)
        self.monitor.rejected(kind, reason)
        return False

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._wired.set()  # a worker still waiting on __init__ sees _stop
        self._worker.join(timeout=30)


def main(args=None) -> int:
    from rclpy.exceptions import ParameterException
    from rclpy.executors import ExternalShutdownException

    from .allocator import retain_freed_memory

    retain_freed_memory()  # before threads start
    rclpy.init(args=args)
    node = None
    try:
        node = CompletionNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        # Ctrl-C shuts the context down from rclpy's signal handler; a message being taken then
        # raises RuntimeError from take_message (seen in CI): the requested exit, not a failure.
        if rclpy.ok():
            raise
    except (ValueError, OSError, ParameterException) as err:  # bad parameters or weights: say which, exit 1
        rclpy.logging.get_logger("ddpo_completion").fatal(str(err))
        return 1
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
