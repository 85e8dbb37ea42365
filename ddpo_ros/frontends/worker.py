"""The thread that owns the model: load, warm up, then one cloud at a time, newest first.

Every torch call of the node runs on this one thread, loading included: OpenMP work on a second
thread slowed every scene by 30% (docs/ros.md). Clouds arrive on the ROS executor's thread and
wait in a one-message slot; a cloud replaced before the model reaches it counts as dropped.
No ROS here: the node hands in callables.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any, Callable


class CompletionWorker:
    """`start()` loads (and warms up) on the worker and returns the Completer or raises the load
    error; `submit(msg)` queues a cloud for `process(completer, msg)`; `stop()` ends the thread,
    which lets go of the model (and the CUDA cache) on its way out."""

    def __init__(self, load: Callable[[], Any], process: Callable[[Any, Any], None], *,
                 warmup: Callable[[Any], None] | None = None, on_drop: Callable[[], None] = lambda: None,
                 on_error: Callable[[BaseException], None] = lambda err: None, name: str = "ddpo_completion_worker"):
        self._load, self._process, self._warmup = load, process, warmup
        self._on_drop, self._on_error = on_drop, on_error
        self._cond = threading.Condition()
        self._waiting = None
        self._overrides: dict[str, Any] = {}
        self._stop = False
        self._ready: Future = Future()  # the Completer once loaded and warmed up, or the error
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self, timeout: float | None = None):
        """Load and warm up on the worker thread; the Completer, or the loading/warm-up error."""
        self._thread.start()
        return self._ready.result(timeout)

    @property
    def waiting(self) -> bool:
        return self._waiting is not None

    def submit(self, msg) -> None:
        """Queue `msg` in the one-message slot; the cloud it replaces counts as dropped."""
        with self._cond:
            if self._waiting is not None:
                self._on_drop()
            self._waiting = msg
            self._cond.notify()

    def clear(self) -> None:
        """Forget the queued cloud (deactivation: it will not be completed)."""
        with self._cond:
            self._waiting = None

    def configure(self, **overrides) -> None:
        """Completer settings to apply before the next cloud (from the worker thread)."""
        with self._cond:
            self._overrides.update(overrides)

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        completer = None
        try:
            try:
                completer = self._load()
                if self._warmup is not None:
                    self._warmup(completer)
            except BaseException as err:
                self._ready.set_exception(err)
                return
            self._ready.set_result(completer)
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._waiting is not None or self._stop)
                    if self._stop:
                        return
                    msg, self._waiting = self._waiting, None
                    overrides, self._overrides = self._overrides, {}
                try:
                    if overrides:
                        completer.configure(**overrides)
                    self._process(completer, msg)
                except Exception as err:  # the worker must outlive any one cloud
                    self._on_error(err)
        finally:
            device = getattr(completer, "device", None)
            del completer  # the caller drops its reference too: then the model's memory is freed
            if getattr(device, "type", "cpu") == "cuda":
                import torch
                torch.cuda.empty_cache()
