"""One frame, the same way everywhere: PointCloud2 in -> Completer -> PointCloud2 out, counted.

The live node and offline bag completion both call `complete_message`; it works on any
PointCloud2 class with the ROS field names (rclpy's messages, rosbags' dataclasses), so it
needs no ROS. What differs stays with the caller: where the message came from, how the
result is published or written, and the diagnostics' cadence.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from ..clouds import CloudError, make_pointcloud2, read_pointcloud2
from ..transforms import transform_points
from .monitor import Monitor

# (translation xyz, quaternion xyzw, target frame id) for a frame, or LookupError
Lookup = Callable[[Any], tuple[tuple[float, float, float], tuple[float, float, float, float], str]]


@dataclass
class FrameResult:
    """What became of one cloud: the completion message, or why there is none."""

    status: str                     # "completed", "malformed" (bad message) or "skipped" (unusable scan)
    cloud: Any = None               # the completed PointCloud2 (the input's class), if completed
    reason: str = ""                # for the log and /diagnostics when not completed
    processing_s: float = 0.0       # decode .. encode
    latency_s: float | None = None  # header stamp -> completion ready, with a live clock


def complete_message(completer, msg, field_cls, monitor: Monitor, *, max_points: int | None = None,
                     lookup: Lookup | None = None, now_ns: Callable[[], int] | None = None) -> FrameResult:
    """Complete one PointCloud2 `msg` and record it in `monitor`.

    Invalid rows (NaN, all-zero) are left in the decoded cloud for the Completer to filter and
    count once. `lookup(header)` gives the transform into a target frame (the completion is
    published there) or raises LookupError (the frame is skipped). `now_ns()` is the live clock
    for the stamp-to-output latency (None offline). A malformed message or a scan the model
    cannot use comes back as a result with a reason; any other error propagates.
    """
    start = time.perf_counter()
    try:
        decoded = read_pointcloud2(msg, intensity=False, max_points=max_points, drop_invalid=False)
    except CloudError as err:
        return _rejected(monitor, "malformed", f"malformed PointCloud2: {err}")
    header = msg.header
    transform = None
    if lookup is not None:
        try:
            transform = lookup(header)
        except LookupError as err:
            return _rejected(monitor, "skipped", str(err))
    try:
        completion = completer.complete(decoded.points)
    except ValueError as err:  # too few points in range, all NaN, ...
        return _rejected(monitor, "skipped", f"cloud not usable ({decoded.total} points): {err}")
    points = completion.points
    if transform is not None:
        translation, rotation, frame_id = transform
        points = transform_points(points, translation, rotation)
        header = type(header)(stamp=header.stamp, frame_id=frame_id)
    cloud = make_pointcloud2(points, header, type(msg), field_cls)
    processing = time.perf_counter() - start
    latency = None
    if now_ns is not None:
        stamp = header.stamp
        latency = (now_ns() - (stamp.sec * 1_000_000_000 + stamp.nanosec)) * 1e-9
    monitor.processed(completion, latency, processing)
    return FrameResult("completed", cloud, processing_s=processing, latency_s=latency)


def _rejected(monitor: Monitor, status: str, reason: str) -> FrameResult:
    monitor.rejected(status, reason)
    return FrameResult(status, reason=reason)
