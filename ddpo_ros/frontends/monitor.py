"""Health of a running completion: rolling latency statistics, counters and a status level.

ROS-free: the node (and the offline bag completer) feed it events and turn `report()` into a
diagnostic_msgs/DiagnosticArray with `diagnostic_array`, which works on rclpy and on rosbags
message classes alike. Levels follow diagnostic_msgs: OK, WARN, ERROR.
"""
from __future__ import annotations

import resource
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

OK, WARN, ERROR = 0, 1, 2
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR"}


@dataclass
class Report:
    level: int
    message: str
    values: list[tuple[str, str]] = field(default_factory=list)


def peak_memory_mib(device: str = "cpu") -> float:
    """Peak memory of this process: CUDA allocations on a GPU, resident set size on the CPU."""
    torch = sys.modules.get("torch")
    if torch is not None and device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _stats(samples) -> tuple[float, float, float]:
    """mean, p95, max of a window, in the samples' unit (nan for an empty window)."""
    if not samples:
        return float("nan"), float("nan"), float("nan")
    a = np.asarray(samples, np.float64)
    return float(a.mean()), float(np.percentile(a, 95)), float(a.max())


def _rate(times) -> float:
    """Events per second over a window of arrival times."""
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0


class Monitor:
    """Counters and rolling windows; thread-safe (the subscriber and the worker both report)."""

    def __init__(self, window: int = 50, latency_warn_ms: float = 0.0, device: str = "cpu", clock=time.monotonic):
        self.latency_warn_ms, self.device, self.clock = latency_warn_ms, device, clock
        self.counts = dict(received=0, processed=0, dropped=0, malformed=0, skipped=0, failed=0)
        self._latency, self._processing = deque(maxlen=window), deque(maxlen=window)
        self._arrivals, self._outputs = deque(maxlen=window), deque(maxlen=window)
        self._stages: dict[str, deque] = {}
        self._last: dict[str, str] = {}
        self._problem: tuple[float, int, str] | None = None  # (time, level, reason) since the last success
        self._dropped_reported = 0
        self.ready = False  # set by the node once the model is loaded and warmed up
        self.inactive = False  # a lifecycle node between deactivate and activate
        self._lock = threading.Lock()

    # -- events -----------------------------------------------------------------------------
    def received(self) -> None:
        with self._lock:
            self.counts["received"] += 1
            self._arrivals.append(self.clock())

    def dropped(self, n: int = 1) -> None:
        """A waiting frame was replaced by a newer one before the model got to it."""
        with self._lock:
            self.counts["dropped"] += n

    def rejected(self, kind: str, reason: str) -> None:
        """A frame not completed: malformed (ERROR), skipped (WARN: unusable, no transform) or failed (ERROR)."""
        level = {"malformed": ERROR, "skipped": WARN, "failed": ERROR}[kind]
        with self._lock:
            self.counts[kind] += 1
            self._problem = (self.clock(), level, f"{kind}: {reason}")

    def processed(self, completion, latency_s: float | None, processing_s: float) -> None:
        """A completion was published. latency: now - header stamp; processing: take to publish."""
        with self._lock:
            self.counts["processed"] += 1
            self._outputs.append(self.clock())
            if latency_s is not None:
                self._latency.append(latency_s * 1000)
            self._processing.append(processing_s * 1000)
            stages: dict[str, float] = {}
            for name, seconds in completion.timings.items():
                key = "denoise" if name.startswith("step ") else name  # all steps as one stage
                stages[key] = stages.get(key, 0.0) + seconds * 1000
            for key, ms in stages.items():
                self._stages.setdefault(key, deque(maxlen=self._processing.maxlen)).append(ms)
            self._last = {"steps": str(completion.steps), "guidance_scale": f"{completion.guidance_scale:g}",
                          "points in": str(completion.counts.get("input", "")),
                          "points invalid": str(completion.counts.get("invalid", "")),  # NaN or all-zero
                          "points out": str(completion.counts.get("output", ""))}
            self._problem = None

    # -- summary ----------------------------------------------------------------------------
    def report(self) -> Report:
        with self._lock:
            c = dict(self.counts)
            lat, proc = _stats(self._latency), _stats(self._processing)
            values = [("ready", "yes" if self.ready else "warming up"), ("device", self.device)]
            values += list(self._last.items())
            values += [(f"frames {k}", str(v)) for k, v in c.items()]
            for name, stats in (("latency", lat), ("processing", proc)):
                # n/a, not nan: offline (`ddpo complete BAG`) there is no live clock to measure latency
                values += [(f"{name} {k} ms", "n/a" if v != v else f"{v:.1f}")
                           for k, v in zip(("mean", "p95", "max"), stats)]
            values += [(f"stage {k} ms", f"{np.mean(v):.1f}") for k, v in self._stages.items()]
            values += [("input rate Hz", f"{_rate(self._arrivals):.2f}"),
                       ("output rate Hz", f"{_rate(self._outputs):.2f}"),
                       ("peak memory MiB", f"{peak_memory_mib(self.device):.0f}")]
            new_drops = c["dropped"] - self._dropped_reported
            self._dropped_reported = c["dropped"]
            level, message = OK, ("completing" if c["processed"] else "waiting for the first cloud" if self.ready
                                  else "warming up")
            if self.inactive:
                message = "inactive (lifecycle): not subscribed"
            if self.latency_warn_ms > 0 and lat[0] > self.latency_warn_ms:
                level, message = WARN, f"mean latency {lat[0]:.0f} ms > {self.latency_warn_ms:g} ms"
            if new_drops:
                level, message = WARN, f"{new_drops} frame(s) dropped since the last report: input faster than model"
            if self._problem is not None and self._problem[1] >= level:
                level, message = self._problem[1], self._problem[2]
        return Report(level, message, values)


def diagnostic_array(report: Report, header, array_cls, status_cls, kv_cls, *, name: str, hardware_id: str):
    """A DiagnosticArray of one status, for rclpy classes or rosbags (dataclass) classes."""
    level = bytes([report.level]) if isinstance(status_cls.OK, bytes) else report.level  # rclpy: octet
    # Both kinds of message class take their fields as keyword arguments.
    status = status_cls(level=level, name=name, message=report.message, hardware_id=hardware_id,
                        values=[kv_cls(key=k, value=v) for k, v in report.values])
    return array_cls(header=header, status=[status])
