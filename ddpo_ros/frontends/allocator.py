"""Keep freed memory in the process, so large tensors stop paying page faults.

glibc serves every allocation above 32 MiB with a fresh mmap and unmaps it on free. A
full-width denoiser call at 180k points allocates hundreds of such tensors (conv outputs,
concatenations, residual sums), and each one's first touch faults in every page anew: a
180k x 96 float32 `torch.zeros` takes ~16 ms that way and ~1.4 ms from retained memory (2-core
Xeon VM). `retain_freed_memory()` turns glibc's mmap path off and never trims the heap, so freed
blocks are reused. Results are bit-identical; the price is that the process keeps its peak heap.
It is process-wide, so only entry points call it (the CLI, the node, benchmarks, training).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -3, -4, -8  # glibc <malloc.h>
_retained = False


def _mallopt():
    """glibc's mallopt, or None (not Linux, or a C library without it such as musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse; True if it now does (False off glibc/Linux).

    For inference, whose tensor sizes repeat frame after frame. Not for training (see
    return_freed_memory)."""
    global _retained
    if _retained:
        return True
    if (mallopt := _mallopt()) is None:
        return False
    # One arena: a thread arena cannot grow past 64 MiB without mmap, and falling back from it
    # costs far more than the page faults saved (measured: 110 ms per 69 MB allocation).
    _retained = (bool(mallopt(_M_ARENA_MAX, 1)) and bool(mallopt(_M_MMAP_MAX, 0))
                 and bool(mallopt(_M_TRIM_THRESHOLD, -1)))  # -1: never trim (man mallopt)
    return _retained


def retaining() -> bool:
    """Whether retain_freed_memory() is in effect in this process."""
    return _retained


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """Make glibc give blocks above `threshold` bytes back to the system on free; True if it does.

    glibc's default raises its mmap threshold to the size of every mmapped block freed (up to 32 MiB),
    so after the first large tensors nearly all of them come from the heap. When the sizes change
    from step to step, as in training (each scene its own point and voxel counts), that heap fragments
    without bound: the CPU teacher_mini grew 0.3-0.5 GB per step to an OOM kill at 23 GB. A fixed
    threshold keeps large blocks in mmap, at ~15% more time per step in page faults. (Most of the
    remaining growth was a reference cycle in the sparse backend, fixed since: README, Training.)
    Process-wide: only training's entry point calls it.
    """
    if _retained or (mallopt := _mallopt()) is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, threshold))
