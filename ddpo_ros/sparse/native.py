"""The compiled CPU kernels of the torch backend (native.cpp), each with its plain-torch twin.

`native.cpp` is compiled on first use with torch's JIT extension builder (a C++ compiler, and
ninja, which pip installs with the package; ~30 s once, then cached under $TORCH_EXTENSIONS_DIR
or ~/.cache/torch_extensions). It is tuned for the CPU that builds it, so the build is keyed on
the CPU's feature flags. Where it cannot be built, or with DDPO_NATIVE=0, every caller takes its
torch path, which gives the same results (bit-identical in float32) more slowly; CUDA tensors
always take the torch path.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("native.cpp")
_lock = threading.Lock()
_module = None
_failed: str | None = None


def _cpu_key() -> str:
    """A short hash of the CPU model and feature flags: a build for another CPU is never reused."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        wanted = [line for line in lines if line.startswith(("flags", "model name", "Features"))][:3]
    except OSError:
        wanted = [os.uname().machine]
    return hashlib.sha1("\n".join(wanted).encode()).hexdigest()[:10]


def enabled() -> bool:
    return os.environ.get("DDPO_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def _ninja() -> str | None:
    """The ninja binary torch's builder will run: on PATH, or the `ninja` wheel's (made visible)."""
    found = shutil.which("ninja")
    if found is None:
        try:
            import ninja  # the PyPI wheel, an install requirement; its bin dir is not always on PATH
        except ImportError:
            return None
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        found = shutil.which("ninja")
    return found


def toolchain() -> bool:
    """Whether a C++ compiler ($CXX or c++) and ninja are here, i.e. whether a build can work."""
    return bool(shutil.which(os.environ.get("CXX", "c++")) and _ninja())


def load():
    """The compiled module, building it on first use; None where it is disabled or cannot build."""
    global _module, _failed
    if not enabled():
        return None
    if _module is not None or _failed is not None:
        return _module
    with _lock:
        if _module is None and _failed is None:
            from torch.utils.cpp_extension import load as build
            name = f"ddpo_native_{_cpu_key()}"
            _ninja()
            try:
                if not _built(name):  # a silent 30 s pause would look like a hang
                    print(f"ddpo_ros: compiling {SOURCE.name} for this CPU (once, ~30 s)", file=sys.stderr, flush=True)
                _module = build(name, [str(SOURCE)], extra_cflags=["-O3", "-march=native", "-fopenmp"],
                                extra_ldflags=["-fopenmp"], verbose=False)
            except Exception as exc:  # noqa: B902 - any build failure means: use the fallback
                _failed = (f"{type(exc).__name__}: {exc}".strip().splitlines() or ["?"])[0]
                warnings.warn(f"ddpo_ros: native kernels unavailable, using plain torch ({_failed}); "
                              "install a C++ compiler and ninja for faster CPU inference", stacklevel=2)
    return _module


def _built(name: str) -> bool:
    from torch.utils.cpp_extension import _get_build_directory
    return any(Path(_get_build_directory(name, verbose=False)).glob(f"{name}*.so"))


def status() -> str:
    """'native', 'disabled (DDPO_NATIVE=0)' or 'unavailable: <why>' (for benchmarks and --version)."""
    if not enabled():
        return "disabled (DDPO_NATIVE=0)"
    return "native" if load() is not None else f"unavailable: {_failed}"


def scatter_plan(rows: Tensor, n_out: int) -> tuple[Tensor, Tensor]:
    """(order, ptr): the pair indices sorted stably by output row, and each row's range in them."""
    module = load() if rows.device.type == "cpu" else None
    if module is not None:
        order, ptr = module.csr_plan(rows, n_out)
        return order, ptr
    order = torch.argsort(rows, stable=True)
    ptr = torch.zeros(n_out + 1, dtype=torch.long, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=n_out), 0, out=ptr[1:])
    return order, ptr


def submanifold_pairs(keys: Tensor, sorted_keys: Tensor, sorted_rows: Tensor, delta: int):
    """(in, out, mirror in, mirror out) rows of one submanifold offset, or None where the compiled
    kernel does not apply; coords.CoordinateSet.submanifold_map is the torch twin."""
    module = load() if keys.device.type == "cpu" else None
    return None if module is None else module.submanifold_pairs(keys, sorted_keys, sorted_rows, int(delta))


def scatter_add(out: Tensor, rows: Tensor, src: Tensor, plan) -> None:
    """out.index_add_(0, rows, src), by the compiled kernel where it applies. `plan` is
    scatter_plan(rows, len(out)), or a callable returning it (built only when the kernel runs)."""
    module = load() if out.device.type == "cpu" and out.dtype in (torch.float32, torch.bfloat16) else None
    if module is None:
        out.index_add_(0, rows, src)
        return
    order, ptr = plan() if callable(plan) else plan
    module.segment_add(out, src, order, ptr)


def bias_act_(x: Tensor, bias: Tensor | None = None, other: Tensor | None = None, relu: bool = False) -> Tensor:
    """x = relu?(x + bias + other) in place, in one pass where the compiled kernel applies; x must
    be a tensor nobody else holds (an output just made) and autograd must be off."""
    module = load() if x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) else None
    if module is None or not x.is_contiguous():
        if bias is not None:
            x.add_(bias)
        if other is not None:
            x.add_(other)
        return x.relu_() if relu else x
    empty = x.new_empty(0)
    module.bias_act_(x, empty if bias is None else bias.contiguous(),
                     empty if other is None else other.contiguous(), relu)
    return x


# The dense cell grid of nearest_lattice: 64 MiB at most (a 100 x 100 x 10 m scene at 0.8 m is ~0.2M cells).
_MAX_GRID_CELLS = 1 << 23


def nearest_lattice(query: Tensor, cand: Tensor, rank: Tensor, lattice: int) -> Tensor | None:
    """Row of `cand` nearest to each query (ties: smallest `rank`), or None where the compiled
    kernel does not apply (CUDA, disabled, or candidates too spread for its dense cell grid).
    Rows of a batch element without candidates are -1."""
    module = load() if query.device.type == "cpu" and len(query) else None
    if module is None:
        return None
    best = module.nearest_lattice(query, cand, rank, int(lattice), _MAX_GRID_CELLS)
    return best if len(best) == len(query) else None
