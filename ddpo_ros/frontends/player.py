"""`ddpo play`: replay a rosbag2 with rclpy, for machines that have rclpy but not the ros2 CLI.

rosbags reads the raw CDR; each message goes out unchanged (`publish` of bytes) through a real rclpy
publisher of the recorded type, resolved `pkg/msg/Type` -> `pkg.msg.Type`. Timing follows the bag:
message k is sent at wall start + (t_k - t_0) / rate. With `clock`, /clock carries the bag time
(before every message and at `clock_hz` in between) so nodes run with use_sim_time:=true.
"""
from __future__ import annotations

import importlib
import sys
import time
from collections import Counter
from pathlib import Path

CLOCK_HZ = 40.0  # ros2 bag play's default --clock rate


def message_class(msgtype: str):
    """'sensor_msgs/msg/PointCloud2' -> the rclpy message class, or None when it cannot be imported."""
    pkg, kind, name = (msgtype.split("/") + ["", ""])[:3]
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _transient_local(conn) -> bool:
    """Latched in the recording (offered transient-local), or /tf_static whatever the bag says."""
    from rosbags.interfaces import QosDurability

    offered = getattr(conn.ext, "offered_qos_profiles", None) or []
    return conn.topic == "/tf_static" or any(q.durability == QosDurability.TRANSIENT_LOCAL for q in offered)


def play(bag: str | Path, *, rate: float = 1.0, topics: list[str] | None = None, clock: bool = True,
         loop: bool = False, depth: int = 10, wait_for_subscribers: float = 0.0, clock_hz: float = CLOCK_HZ,
         ack_timeout: float = 5.0, node_name: str = "ddpo_player", context=None, log=None) -> Counter:
    """Publish the bag's messages in time order; returns messages sent per topic.

    `wait_for_subscribers` seconds (at most) are spent before the first message waiting until every
    played topic (and /clock) has a subscriber, and up to `ack_timeout` seconds at the end until reliable
    subscribers have every message. Stops at the end (or never with `loop`), or on Ctrl-C.
    """
    import rclpy
    from rclpy.duration import Duration
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    from .bags import open_bag

    log = log or (lambda text: print(text, file=sys.stderr))
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    own_context = context is None
    if own_context:
        context = rclpy.Context()
        rclpy.init(context=context)
    sent: Counter = Counter()
    started, seconds = time.monotonic(), None
    node = None
    try:
        node = rclpy.create_node(node_name, context=context)
        with open_bag(bag) as reader:
            publishers, skipped = {}, set()
            for conn in reader.connections:
                if (topics and conn.topic not in topics) or conn.topic in publishers:
                    continue
                cls = message_class(conn.msgtype)
                if cls is None:
                    if conn.msgtype not in skipped:
                        package = conn.msgtype.split("/")[0]
                        log(f"note: skipping {conn.topic}: this Python cannot import {conn.msgtype} (the "
                            f"{package} package is not installed; there is no ros-jazzy-{package.replace('_', '-')} "
                            "wheel on PyPI, a ROS install has it). The recording keeps it; only this player "
                            "cannot publish it" + (" (the node needs TF only with target_frame set)"
                                                   if package == "tf2_msgs" else ""))
                        skipped.add(conn.msgtype)
                    continue
                latched = _transient_local(conn)
                profile = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                                     reliability=ReliabilityPolicy.RELIABLE,
                                     durability=DurabilityPolicy.TRANSIENT_LOCAL if latched
                                     else DurabilityPolicy.VOLATILE)
                publishers[conn.topic] = node.create_publisher(cls, conn.topic, profile)
            if topics and (missing := sorted(set(topics) - {c.topic for c in reader.connections})):
                log(f"warning: not in {bag}: {', '.join(missing)}")
            clock_pub = None
            if clock:
                from rosgraph_msgs.msg import Clock
                clock_pub = node.create_publisher(Clock, "/clock", QoSProfile(depth=depth))
            if not publishers:
                names = ", ".join(sorted({c.topic for c in reader.connections}))
                raise ValueError(f"{bag}: nothing to play (topics: {names})")
            _wait_for_subscribers([*publishers.values(), clock_pub], wait_for_subscribers)
            if clock_pub is not None and wait_for_subscribers > 0:
                # A subscriber the player has matched may not have matched the player yet, and a volatile
                # reader drops what came before: prime /clock at the bag's start and wait for the ack,
                # so the first tick of the real pass is not lost.
                from builtin_interfaces.msg import Time
                clock_pub.publish(Clock(clock=Time(sec=reader.start_time // 10**9,
                                                   nanosec=reader.start_time % 10**9)))
                clock_pub.wait_for_all_acked(Duration(seconds=wait_for_subscribers))
            conns = [c for c in reader.connections if c.topic in publishers]
            started = time.monotonic()
            while True:
                _play_once(reader, conns, publishers, clock_pub, rate, clock_hz, sent)
                if not loop:
                    break
            seconds = time.monotonic() - started
            # reliable subscribers may still be repairing lost samples: stay until they have them all
            pending = [p.topic_name for p in [*publishers.values(), clock_pub] if p is not None
                       and not p.wait_for_all_acked(Duration(seconds=ack_timeout))]
            if pending:
                log(f"warning: not acknowledged by every subscriber after {ack_timeout:g} s: {', '.join(pending)}")
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        if node is not None:
            node.destroy_node()
        if own_context:
            rclpy.try_shutdown(context=context)
    if seconds is None:  # interrupted
        seconds = time.monotonic() - started
    log(f"played {sum(v for k, v in sent.items() if k != '/clock')} messages in {seconds:.2f} s")
    for topic, n in sorted(sent.items()):
        log(f"  {topic}: {n}")
    return sent


def _wait_for_subscribers(publishers: list, timeout: float) -> None:
    """Until every publisher (None: absent) has a subscriber, or timeout seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(p is not None and p.get_subscription_count() == 0 for p in publishers):
        time.sleep(0.02)


def _play_once(reader, conns, publishers, clock_pub, rate, clock_hz, sent) -> None:
    """One pass over the bag, paced against the wall clock from now."""
    from builtin_interfaces.msg import Time
    from rosgraph_msgs.msg import Clock

    def tick(bag_ns: int) -> None:
        if clock_pub is not None:
            clock_pub.publish(Clock(clock=Time(sec=bag_ns // 10**9, nanosec=bag_ns % 10**9)))
            sent["/clock"] += 1

    wall0, t0 = time.monotonic(), None
    for conn, t, raw in reader.messages(connections=conns):
        t0 = t if t0 is None else t0
        due = wall0 + (t - t0) / 1e9 / rate
        # sleep in clock ticks so /clock keeps moving through gaps in the bag
        while (left := due - time.monotonic()) > 0:
            if clock_pub is not None:
                tick(t0 + int((time.monotonic() - wall0) * rate * 1e9))
            time.sleep(min(left, 1.0 / clock_hz))
        tick(t)
        publishers[conn.topic].publish(bytes(raw))
        sent[conn.topic] += 1


def play_cli(args) -> int:
    try:
        play(args.bag, rate=args.rate, topics=args.topics, clock=args.clock, loop=args.loop,
             wait_for_subscribers=args.wait_for_subscribers, depth=args.depth)
    except (FileNotFoundError, ValueError) as err:
        print(f"ddpo play: {err}", file=sys.stderr)
        return 2
    return 0
