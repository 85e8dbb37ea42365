"""Typed configuration: one frozen dataclass per concern, loaded from YAML, unknown keys rejected.

The same section names are used by the YAML files under config/, the checkpoint metadata, the
node's parameters and the CLI. Only factories (`build_*`) read a config; classes take plain
arguments.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


# LiDiff's MinkUNet channel list: stem, stage1..4, up1..4.
LIDIFF_CHANNELS = (32, 32, 64, 128, 256, 256, 128, 96, 96)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names it."""


def added_option(default: Any) -> Any:
    """A field for an option added after results were recorded, whose default changes nothing (it
    runs exactly the code that ran before the option existed). `behaviour` leaves it out at its
    default, so records keyed by the config (tools/mini_benchmark.py) keep matching; a test should
    show the default is a no-op."""
    return field(default=default, metadata={"added_option": True})


@dataclass(frozen=True)
class ModelConfig:
    """LiDiff network shape (MinkUNetDiff / MinkGlobalEnc / MinkUNet) and sparse backend."""

    channels: tuple[int, ...] = LIDIFF_CHANNELS
    width: float = 1.0               # LiDiff's `cr`: every channel count is int(width * c)
    voxel_size: float = 0.05         # metres per sparse voxel
    refine_up_factor: int = 6        # points the refiner makes from each input point
    backend: Literal["torch", "minkowski"] = "torch"

    def __post_init__(self):
        _check(len(self.channels) == 9, "model.channels", "needs 9 entries")
        _check(self.width > 0, "model.width", "must be > 0")
        _check(self.voxel_size > 0, "model.voxel_size", "must be > 0")
        _check(self.refine_up_factor >= 1, "model.refine_up_factor", "must be >= 1")


@dataclass(frozen=True)
class DiffusionConfig:
    """Training noise schedule: linear betas, x_t = x_0 + sqrt(1 - abar_t) eps (LiDiff Sec. 3)."""

    num_train_timesteps: int = 1000
    beta_start: float = 3.5e-5
    beta_end: float = 0.007
    beta_schedule: Literal["linear"] = "linear"

    def __post_init__(self):
        _check(self.num_train_timesteps >= 1, "diffusion.num_train_timesteps", "must be >= 1")
        _check(0 < self.beta_start < self.beta_end < 1, "diffusion.beta_start/beta_end",
               "need 0 < beta_start < beta_end < 1")


SAMPLER_NAMES = ("sde-dpmsolver++", "dpmsolver++", "ddpm", "ve-sde-dpmsolver++", "ve-dpmsolver++")


@dataclass(frozen=True)
class CompletionConfig:
    """Inference pipeline (LiDiff's diff_completion_pipeline.py; DDPO Sec. 5 evaluation settings).

    `None` means "what the chosen denoiser was made for": 8 steps and guidance 3.5 for a
    Distillation-DPO student, 50 steps and guidance 6 for a LiDiff teacher.
    """

    denoiser: Literal["auto", "student", "teacher"] = "auto"  # auto: the student if the weights have one
    steps: int | None = None
    guidance_scale: float | None = None   # classifier-free guidance w; 1 = conditional only
    num_points: int = 18000               # scan points kept by farthest-point sampling
    replication: int = 10                 # x_init = the kept points repeated this many times
    min_range: float = 3.5                # metres; the scan crop before sampling
    max_range: float = 50.0               # metres; also the crop of the completed scene
    refine: bool = True                   # run the x refine_up_factor refinement net
    # ve-*: DPM-Solver++ with the training noise's parameterisation (alpha = 1; diffusion/samplers.py)
    sampler: Literal["sde-dpmsolver++", "dpmsolver++", "ddpm", "ve-sde-dpmsolver++", "ve-dpmsolver++"] = \
        "sde-dpmsolver++"
    final_sigma: Literal["sigma_min", "zero"] = "sigma_min"  # sigma_min: end at t = 0 as the reference
    # First sampler step (SDEdit-style partial diffusion): start from x_init + sigma_t eps at t = start_t
    # and sample only start_t .. 0. None: the reference, x_init + eps at T-1. The scan already lies on
    # the surfaces, so a teacher that drifts off them on its own trajectory loses less from a later
    # start (docs/mini-scale.md, "Where sampling starts"). Distillation students generate from T-1.
    start_t: int | None = added_option(None)
    seed: int | None = None               # None: fresh noise every scene
    # bf16: bfloat16 convolutions in the denoiser and refiner (AMX CPUs, GPUs): ~2x faster at
    # paper width on an AMX CPU (not at mini width), an approximation of fp32; both measured in the README.
    precision: Literal["fp32", "bf16"] = "fp32"

    def __post_init__(self):
        _check(self.steps is None or self.steps >= 1, "completion.steps", "must be >= 1")
        _check(self.guidance_scale is None or self.guidance_scale >= 0, "completion.guidance_scale",
               "must be >= 0")
        _check(self.num_points >= 1, "completion.num_points", "must be >= 1")
        _check(self.replication >= 1, "completion.replication", "must be >= 1")
        _check(0 <= self.min_range < self.max_range, "completion.min_range/max_range",
               "need 0 <= min_range < max_range")
        _check(self.start_t is None or self.start_t >= 0, "completion.start_t", "must be >= 0 (or null)")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    completion: CompletionConfig = field(default_factory=CompletionConfig)


def _check(ok: bool, name: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {why}")


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(hint))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        item = typing.get_args(hint)[0]
        return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        return _convert(value, next(a for a in args if a is not type(None)), where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads exponents without a dot (1e-5) as strings
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls, data: Any, where: str = ""):
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown key(s) {unknown}; known: {names}")
    prefix = f"{where}." if where else ""
    kwargs = {k: _convert(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}" if where and not str(err).startswith(where) else str(err)) from None


def to_dict(cfg) -> dict:
    """Plain dict (lists, not tuples) that `from_dict` reads back to an equal config."""
    return _plain(dataclasses.asdict(cfg))


def behaviour(cfg) -> dict:
    """`to_dict` without the `added_option` fields that sit at their default: two configs that run the
    same code give the same dict, whatever options were added since one of them was recorded."""
    def walk(obj):
        if not dataclasses.is_dataclass(obj):
            return obj
        return {f.name: walk(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("added_option") and getattr(obj, f.name) == f.default)}
    return _plain(walk(cfg))


def _plain(v):
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def load_config(path: str | Path, cls=Config):
    """Read a YAML file into `cls`; errors name the file and the field at fault."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        return from_dict(cls, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
