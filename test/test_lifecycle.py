"""The completion node as a managed (lifecycle) node, driven over DDS on loopback.

A manager node calls the node's real lifecycle services (change_state, get_state) the way
`ros2 lifecycle set` or nav2's lifecycle manager do; a probe node sends real KITTI clouds and
watches what comes back. Configure loads the weights, activate starts the completions,
deactivate stops them with the model still loaded, cleanup frees the model.
"""
from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

rclpy = pytest.importorskip("rclpy")

from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from ros_nodes import Probe, cloud_msg  # noqa: E402

QUIET_S = 3.0  # how long "nothing comes out" is watched for


class Manager:
    """Calls a lifecycle node's services over DDS, as a lifecycle manager does."""

    def __init__(self, ctx, executor, node_name: str):
        self.node = rclpy.create_node("lifecycle_manager", context=ctx)
        self.change = self.node.create_client(ChangeState, f"{node_name}/change_state")
        self.get = self.node.create_client(GetState, f"{node_name}/get_state")
        executor.add_node(self.node)
        assert self.change.wait_for_service(30) and self.get.wait_for_service(30), "no lifecycle services on DDS"

    def _call(self, client, request, timeout=120.0):
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        assert done.wait(timeout), f"no answer from {client.srv_name}"
        return future.result()

    def transition(self, transition_id: int) -> bool:
        return self._call(self.change, ChangeState.Request(transition=Transition(id=transition_id))).success

    def state(self) -> int:
        return self._call(self.get, GetState.Request()).current_state.id


def quiet(probe: Probe, count: int) -> bool:
    """Nothing beyond `count` outputs arrives for QUIET_S."""
    time.sleep(QUIET_S)
    return len(probe.outputs) == count


@pytest.fixture
def managed(ros, tiny_weights, request):
    from ddpo_ros.frontends.node import CompletionNode

    ctx, executor, _ = ros
    ns = f"lc{request.node.name[-8:].replace('[', '').replace(']', '')}"
    weights = getattr(request, "param", str(tiny_weights))
    node = CompletionNode(context=ctx, namespace=ns, parameter_overrides=[
        Parameter("weights", value=weights), Parameter("device", value="cpu"),
        Parameter("completion.steps", value=1), Parameter("completion.seed", value=0),
        Parameter("input.reliability", value="reliable"), Parameter("diagnostics.period", value=0.2)])
    executor.add_node(node)
    manager = Manager(ctx, executor, f"/{ns}/ddpo_completion")
    probe = Probe(ctx, executor, ns)
    yield node, manager, probe
    for n in (probe.node, manager.node):
        executor.remove_node(n)
        n.destroy_node()
    executor.remove_node(node)
    node.trigger_shutdown()
    node.destroy_node()


def test_transitions_over_dds_gate_the_completions(managed):
    node, manager, probe = managed
    assert manager.state() == State.PRIMARY_STATE_UNCONFIGURED and node.completer is None
    assert probe.pub.get_subscription_count() == 0  # nothing listens before activation

    assert manager.transition(Transition.TRANSITION_CONFIGURE)
    assert manager.state() == State.PRIMARY_STATE_INACTIVE and node.ready  # loaded and warmed up
    probe.pub.publish(cloud_msg(0, stamp_s=1))
    assert quiet(probe, 0), "an inactive node completed a cloud"

    assert manager.transition(Transition.TRANSITION_ACTIVATE)
    assert manager.state() == State.PRIMARY_STATE_ACTIVE
    assert probe.connected(node), "no DDS match after activation"
    probe.pub.publish(cloud_msg(1, stamp_s=2))
    assert probe.wait(lambda: len(probe.outputs) == 1), "no completion while active"
    assert probe.outputs[0].header.stamp.sec == 2

    assert manager.transition(Transition.TRANSITION_DEACTIVATE)
    assert manager.state() == State.PRIMARY_STATE_INACTIVE
    assert probe.wait(lambda: probe.pub.get_subscription_count() == 0)
    probe.pub.publish(cloud_msg(2, stamp_s=3))
    assert quiet(probe, 1), "a deactivated node still published"
    assert node.completer is not None  # deactivate keeps the model
    assert probe.wait(lambda: any(d.status[0].message.startswith("inactive") for d in probe.diagnostics[-3:]))

    model = weakref.ref(node.completer)
    worker = node._worker._thread
    assert manager.transition(Transition.TRANSITION_CLEANUP)
    assert manager.state() == State.PRIMARY_STATE_UNCONFIGURED
    gc.collect()
    assert node.completer is None and model() is None, "cleanup left the model in memory"
    assert not worker.is_alive()

    # configure again: the weights load anew and the node completes again
    assert manager.transition(Transition.TRANSITION_CONFIGURE)
    assert manager.transition(Transition.TRANSITION_ACTIVATE)
    assert probe.connected(node)
    probe.pub.publish(cloud_msg(3, stamp_s=4))
    assert probe.wait(lambda: len(probe.outputs) == 2 and probe.outputs[-1].header.stamp.sec == 4)


@pytest.mark.parametrize("managed", ["/nonexistent/dir/w.safetensors"], indirect=True)
def test_bad_weights_fail_configure_naming_the_path(managed, capfd):
    node, manager, probe = managed
    assert not manager.transition(Transition.TRANSITION_CONFIGURE)
    assert manager.state() == State.PRIMARY_STATE_UNCONFIGURED and node.completer is None
    assert "/nonexistent/dir/w.safetensors" in capfd.readouterr().err
    assert probe.pub.get_subscription_count() == 0 and node._worker is None


def test_autostart_off_waits_for_a_manager(ros, tiny_weights, monkeypatch):
    """`completion_node` with autostart:=false spins unconfigured; by default it comes up active."""
    import ddpo_ros.frontends.node as node_module

    for key in ("ROS_DOMAIN_ID", "ROS_LOCALHOST_ONLY", "ROS_AUTOMATIC_DISCOVERY_RANGE",
                "FASTRTPS_DEFAULT_PROFILES_FILE"):
        if key in ros[2]:
            monkeypatch.setenv(key, ros[2][key])
    seen = []
    monkeypatch.setattr(node_module.rclpy, "spin", lambda node: seen.append(
        (node._state_machine.current_state[1], node.completer is not None)))
    args = ["completion_node", "--ros-args", "-p", f"weights:={tiny_weights}", "-p", "device:=cpu",
            "-p", "warmup:=false"]
    assert node_module.main(args + ["-p", "autostart:=false"]) == 0
    assert node_module.main(args) == 0
    assert seen == [("unconfigured", False), ("active", True)]
