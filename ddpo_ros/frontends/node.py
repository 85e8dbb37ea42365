"""`completion_node`: sensor_msgs/PointCloud2 in, completed scene out, with diagnostics.

A managed (lifecycle) rclpy node and a thin shell (KISS-ICP style): parameters come from
node_params, the model from loading, each frame goes through frame.complete_message, the model
lives on worker.CompletionWorker's thread, health comes from monitor; this file wires them to ROS.

    configure   check the parameters, load the weights, warm up; publishers and /diagnostics
    activate    subscribe to ~/input/points: clouds are completed and published
    deactivate  unsubscribe and stop publishing; the model stays loaded
    cleanup     stop the worker and free the model

With `autostart` (the default) `completion_node` configures and activates itself, so a plain
`ros2 run` works; with autostart:=false it waits for a lifecycle manager.
"""
from __future__ import annotations

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Float64, Header

from . import node_params
from .frame import complete_message
from .monitor import Monitor, diagnostic_array
from .worker import CompletionWorker

THROTTLE_S = 5.0
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


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


class CompletionNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__("ddpo_completion", **kwargs)
        for p in node_params.PARAMETERS:
            self.declare_parameter(p.name, p.default, _descriptor(p))
        self.settings = {p.name: self.get_parameter(p.name).value for p in node_params.PARAMETERS}
        self.completer = self.monitor = self.tf = self._worker = self.sub = None
        self._pubs, self._timer = [], None
        self._weights_guidance = node_params.UNSET  # the loaded weights' guidance, once loaded
        self.add_on_set_parameters_callback(self._on_set_parameters)

    @property
    def ready(self) -> bool:
        """Configured: the model is loaded and warmed up."""
        return self.completer is not None

    # -- lifecycle ----------------------------------------------------------------------------
    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            s = self.settings = node_params.validate({p.name: self.get_parameter(p.name).value
                                                      for p in node_params.PARAMETERS})
            self.tf = self._tf_buffer() if s["target_frame"] else None
            self.monitor = Monitor(s["diagnostics.window"], s["diagnostics.latency_warn_ms"])
            self._worker = CompletionWorker(self._load, self._process, warmup=self._warm_up if s["warmup"] else None,
                                            on_drop=self.monitor.dropped, on_error=self._failed)
            self.completer = self._worker.start()
        except Exception as err:  # bad parameters, weights or model: say which, stay unconfigured
            self.get_logger().error(f"configure failed: {err}")
            self._release()
            return FAILURE
        self.monitor.device, self.monitor.ready, self.monitor.inactive = str(self.completer.device), True, True
        self.pub = self.create_lifecycle_publisher(PointCloud2, "~/output/points", _qos(s["output.reliability"], 5))
        self.pub_processing = self.create_lifecycle_publisher(Float64, "~/debug/processing_time_ms", 10)
        self.pub_latency = self.create_lifecycle_publisher(Float64, "~/debug/pipeline_latency_ms", 10)
        self._pubs = [self.pub, self.pub_processing, self.pub_latency]
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # steady clock: with use_sim_time the node must still report while no /clock is playing
        self._timer = self.create_timer(s["diagnostics.period"], self._publish_diagnostics,
                                        clock=Clock(clock_type=ClockType.STEADY_TIME))
        return SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        s = self.settings
        self.sub = self.create_subscription(PointCloud2, "~/input/points", self._on_cloud,
                                            _qos(s["input.reliability"], s["input.depth"]))
        self.monitor.inactive = False
        return super().on_activate(state)  # enables the lifecycle publishers

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self.destroy_subscription(self.sub)
        self.sub = None
        self._worker.clear()
        self.monitor.inactive = True
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._release()
        return SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._release()
        return SUCCESS

    def _release(self) -> None:
        """Back to unconfigured: no subscription, publishers or timer; the worker and model gone."""
        if self.sub is not None:
            self.destroy_subscription(self.sub)
        for pub in self._pubs:
            self.destroy_lifecycle_publisher(pub)
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self.destroy_publisher(self.pub_diag)
        if self._worker is not None:
            self._worker.stop()
        self.completer = self._worker = self.sub = self._timer = self.tf = None
        self._pubs = []

    # -- on the worker thread -----------------------------------------------------------------
    def _load(self):
        from ..loading import load_completer

        s = self.settings
        completer = load_completer(s["weights"], device=s["device"], cpu_fallback=True,
                                   warn=self.get_logger().warning,
                                   overrides=node_params.completion_overrides(s))
        self._weights_guidance = completer.config.completion.guidance_scale  # what -1 goes back to
        self.get_logger().info(f"{completer.kind} from {s['weights'] or 'the bundled mini weights'} on "
                               f"{completer.device}; steps {s['completion.steps']}, guidance "
                               f"{completer.default_guidance:g}, refine {s['completion.refine']}")
        return completer

    def _warm_up(self, completer) -> None:
        import time
        start = time.perf_counter()
        completer.warmup(steps=1)
        self.get_logger().info(f"warm-up done in {time.perf_counter() - start:.1f} s")

    def _process(self, completer, msg) -> None:
        self.process(msg, completer)

    def _failed(self, err: BaseException) -> None:
        if self.context.ok():  # else Ctrl-C shut the context down while this cloud was in flight
            self.get_logger().error(f"processing failed: {err!r}", throttle_duration_sec=THROTTLE_S)
            self.monitor.rejected("failed", repr(err))

    def process(self, msg: PointCloud2, completer=None) -> bool:
        """Complete one cloud and publish it; False (with a warning and a diagnostic) if it could not."""
        result = complete_message(completer or self.completer, msg, PointField, self.monitor,
                                  max_points=self.settings["max_points"],
                                  lookup=self._lookup if self.tf is not None else None,
                                  now_ns=lambda: self.get_clock().now().nanoseconds)
        if result.cloud is None:
            self.get_logger().warning(result.reason, throttle_duration_sec=THROTTLE_S)
            return False
        self.pub.publish(result.cloud)
        self.pub_processing.publish(Float64(data=result.processing_s * 1000))
        self.pub_latency.publish(Float64(data=result.latency_s * 1000))
        return True

    # -- on the executor ------------------------------------------------------------------------
    def _on_cloud(self, msg: PointCloud2) -> None:
        self.monitor.received()
        self._worker.submit(msg)

    def _on_set_parameters(self, params) -> SetParametersResult:
        changed = {}
        for p in params:
            if p.name in node_params.BY_NAME and p.name not in node_params.RUNTIME:
                return SetParametersResult(successful=False, reason=f"{p.name} is read-only; restart the node")
            try:
                changed[p.name] = node_params.check_value(p.name, p.value)
            except ValueError as err:
                return SetParametersResult(successful=False, reason=str(err))
        self.settings = {**self.settings, **changed}
        if self._worker is not None:  # applied by the worker before its next cloud
            self._worker.configure(**node_params.completion_overrides(self.settings, changed,
                                                                      weights_guidance=self._weights_guidance))
        return SetParametersResult(successful=True)

    def _publish_diagnostics(self) -> None:
        header = Header(stamp=self.get_clock().now().to_msg())
        self.pub_diag.publish(diagnostic_array(self.monitor.report(), header, DiagnosticArray, DiagnosticStatus,
                                               KeyValue, name="ddpo_completion: completion",
                                               hardware_id=self.monitor.device))

    # -- tf2 ------------------------------------------------------------------------------------
    def _tf_buffer(self):
        try:
            from tf2_ros import Buffer, TransformListener
        except ImportError:
            raise ValueError("parameter 'target_frame' needs tf2_ros, which is not installed; "
                             "leave target_frame empty to publish in the input frame") from None
        buffer = Buffer()
        self._tf_listener = TransformListener(buffer, self)
        return buffer

    def _lookup(self, header):
        target = self.settings["target_frame"]
        try:
            tf = self.tf.lookup_transform(target, header.frame_id, header.stamp,
                                          rclpy.duration.Duration(seconds=self.settings["tf_timeout"]))
        except Exception as err:  # tf2 raises several exception types; every one skips the frame
            raise LookupError(f"no transform {header.frame_id} -> {target}: {err}") from None
        t, q = tf.transform.translation, tf.transform.rotation
        return (t.x, t.y, t.z), (q.x, q.y, q.z, q.w), target


def main(args=None) -> int:
    from rclpy.exceptions import ParameterException
    from rclpy.executors import ExternalShutdownException

    from .allocator import retain_freed_memory

    retain_freed_memory()  # before threads start
    rclpy.init(args=args)
    node = None
    try:
        node = CompletionNode()
        if node.get_parameter("autostart").value:
            if node.trigger_configure() != SUCCESS:
                return 1  # on_configure logged why
            node.trigger_activate()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        # Ctrl-C shuts the context down from rclpy's signal handler; a message being taken then
        # raises RuntimeError from take_message (seen in CI): the requested exit, not a failure.
        if rclpy.ok():
            raise
    except (ValueError, OSError, ParameterException) as err:  # bad parameters: say which, exit 1
        rclpy.logging.get_logger("ddpo_completion").fatal(str(err))
        return 1
    finally:
        if node is not None:
            node._release()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
