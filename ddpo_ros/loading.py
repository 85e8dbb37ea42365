"""Which weights, which device, which settings -> a Completer: the one place that decides.

Every front end (the node, `ddpo complete`, bag completion, evaluation, benchmarks) asks here:
empty weights mean the mini weights bundled with the package, a CUDA device that is not there
either fails or (the node's choice) falls back to the CPU with a warning, and the weights' own
`completion:` section is the base that the caller's overrides replace field by field.
"""
from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .config import CompletionConfig

COMPLETION_FIELDS = tuple(f.name for f in fields(CompletionConfig))


def resolve_device(device: str | torch.device, *, cpu_fallback: bool = False,
                   warn: Callable[[str], None] | None = None) -> torch.device:
    """A torch device. CUDA asked for but absent: CPU with a warning if `cpu_fallback`, else a
    ValueError that says what is missing."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        if not cpu_fallback:
            raise ValueError(f"device {device!r} requested but this torch has no CUDA device")
        if warn is not None:
            warn(f"device {str(device)!r} requested but CUDA is not available: using cpu")
        return torch.device("cpu")
    return dev


def completion_settings(base: CompletionConfig, overrides: Mapping[str, Any] | None = None) -> CompletionConfig:
    """`base` with each given field replaced (None included: it means "the denoiser's own" for
    steps and guidance and "fresh noise" for the seed). Unknown names and bad values raise
    ValueError naming the `completion.<field>` at fault."""
    overrides = dict(overrides or {})
    unknown = [k for k in overrides if k not in COMPLETION_FIELDS]
    if unknown:
        raise ValueError(f"unknown completion setting(s) {['completion.' + k for k in unknown]}; "
                         f"known: {', '.join(COMPLETION_FIELDS)}")
    return replace(base, **overrides)  # CompletionConfig.__post_init__ checks the values


def weights_path(weights: str | Path | None) -> Path:
    """The weights file to load: `weights`, or the bundled mini weights when it is empty."""
    if weights:
        return Path(weights)
    from .resources import default_weights

    bundled = default_weights()
    if bundled is None:
        raise ValueError("no weights given and this install bundles no mini weights; "
                         "pass the path of a ddpo_ros .safetensors file (weights:=...)")
    return bundled


def load_completer(weights: str | Path | None = None, *, device: str | torch.device = "cpu",
                   overrides: Mapping[str, Any] | None = None, cpu_fallback: bool = False,
                   warn: Callable[[str], None] | None = None, **kwargs):
    """A Completer over `weights` (empty: the bundled mini weights) on `device`, its settings the
    weights' `completion:` section with `overrides` applied. `kwargs` go to the Completer."""
    from .checkpoint import load_checkpoint
    from .pipeline import Completer

    ckpt = load_checkpoint(weights_path(weights))
    settings = completion_settings(ckpt.config.completion, overrides)
    dev = resolve_device(device, cpu_fallback=cpu_fallback, warn=warn)
    return Completer.from_checkpoint(ckpt, device=dev, completion=settings, **kwargs)


__all__ = ["COMPLETION_FIELDS", "completion_settings", "load_completer", "resolve_device", "weights_path"]
