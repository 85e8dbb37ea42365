"""The completion node's parameters: one table, checked without ROS.

The node declares exactly these (with descriptors and ranges), config/node.yaml sets exactly
these, and the launch file passes them through. Dotted names mirror the YAML sections of the
model config (`completion.steps` is `completion: steps:` there), so one vocabulary serves the
node, the YAML files and the CLI. ROS parameters cannot be null, so "use what the weights were
made for" is spelled 0 (num_points) or -1 (guidance: the weights' `completion.guidance_scale`) and
-1 seed means fresh noise (`None` in `CompletionConfig`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    read_only: bool = True            # False: may be changed while the node runs
    low: float | None = None          # numeric range (inclusive)
    high: float | None = None
    choices: tuple[str, ...] = ()


PARAMETERS: tuple[Param, ...] = (
    Param("weights", "", "ddpo_ros .safetensors weights; empty = the mini weights bundled with the package"),
    Param("device", "cuda", "torch device (cuda, cuda:N or cpu); cuda falls back to cpu with a warning"),
    Param("completion.denoiser", "auto", "which denoiser of the weights to run (auto: the student if present)",
          choices=("auto", "student", "teacher")),
    Param("completion.steps", 8, "denoising steps per scene (student: 8, or 1-4; teacher: 50)",
          read_only=False, low=1, high=50),
    Param("completion.guidance_scale", -1.0, "classifier-free guidance w; -1 = the weights' own value "
          "(if they set none: 3.5 student, 6 teacher)", read_only=False, low=-1.0, high=20.0),
    Param("completion.refine", True, "run the x6 refinement net on the completed scene", read_only=False),
    Param("completion.num_points", 0, "scan points kept by farthest-point sampling; 0 = the weights' value",
          low=0, high=200000),
    Param("completion.min_range", 3.5, "metres; scan points nearer than this are ignored", low=0.0, high=100.0),
    Param("completion.max_range", 50.0, "metres; scan and completed scene are cropped to this radius",
          low=1.0, high=300.0),
    Param("completion.seed", -1, "noise seed per scene for reproducible output; -1 = fresh noise",
          read_only=False, low=-1, high=2**31 - 1),
    Param("completion.precision", "fp32", "bf16: bfloat16 convolutions, ~2x faster at paper width on AMX CPUs "
          "(Sapphire Rapids and later), an approximation of fp32", choices=("fp32", "bf16")),
    Param("input.reliability", "best_effort", "QoS reliability of ~/input/points",
          choices=("best_effort", "reliable")),
    Param("input.depth", 5, "QoS history depth of ~/input/points; the node keeps only the newest cloud and "
          "counts the rest as dropped (clouds DDS drops at depth 1 are never seen, so not counted)", low=1, high=100),
    Param("output.reliability", "reliable", "QoS reliability of ~/output/points", choices=("best_effort", "reliable")),
    Param("target_frame", "", "publish the completion in this frame via tf2; empty = the input cloud's frame"),
    Param("tf_timeout", 0.1, "seconds to wait for the target_frame transform before skipping the frame",
          low=0.0, high=10.0),
    Param("max_points", 2000000, "clouds with more points than this are rejected as malformed", low=1, high=50000000),
    Param("warmup", True, "run one tiny completion while configuring so that the first cloud is not slow"),
    Param("autostart", True, "configure and activate at start; false: wait for a lifecycle manager's transitions"),
    Param("diagnostics.period", 1.0, "seconds between /diagnostics messages", low=0.05, high=60.0),
    Param("diagnostics.window", 50, "frames in the rolling latency statistics", low=1, high=10000),
    Param("diagnostics.latency_warn_ms", 0.0, "WARN when mean latency exceeds this; 0 = never", low=0.0, high=1e7),
)
BY_NAME = {p.name: p for p in PARAMETERS}
RUNTIME = tuple(p.name for p in PARAMETERS if not p.read_only)


def check_value(name: str, value: Any) -> Any:
    """The value if `name` accepts it, else a ValueError that names the parameter and its rule."""
    if name not in BY_NAME:
        raise ValueError(f"unknown parameter {name!r}; known: {', '.join(BY_NAME)}")
    p = BY_NAME[name]
    kind = type(p.default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        raise ValueError(f"parameter {name!r} must be {kind.__name__}, got {type(value).__name__} {value!r}")
    if p.choices and value not in p.choices:
        raise ValueError(f"parameter {name!r} must be one of {list(p.choices)}, got {value!r}")
    if p.low is not None and not (p.low <= value <= p.high):
        raise ValueError(f"parameter {name!r} must be in [{p.low:g}, {p.high:g}], got {value!r}")
    return value


def validate(values: dict[str, Any]) -> dict[str, Any]:
    """All parameters, defaults filled in, each checked; ValueError on the first bad one."""
    out = {p.name: p.default for p in PARAMETERS}
    for name, value in values.items():
        out[name] = check_value(name, value)
    if out["completion.min_range"] >= out["completion.max_range"]:
        raise ValueError("parameters 'completion.min_range' and 'completion.max_range': need min_range < max_range, "
                         f"got {out['completion.min_range']} and {out['completion.max_range']}")
    return out


UNSET = object()


def completion_overrides(values: dict[str, Any], names=None, weights_guidance: Any = UNSET) -> dict[str, Any]:
    """The `completion.*` parameters (all, or those in `names`) as CompletionConfig overrides for
    `loading.load_completer` / `Completer.configure`: -1 seed becomes None (fresh noise), num_points
    0 is left out (the weights' value) and so is -1 guidance, unless `weights_guidance` (the loaded
    weights' completion.guidance_scale) is given: then -1 becomes that, so setting -1 at runtime goes
    back to it. (Passing None for -1 would mean the denoiser class's default, 6 for any teacher,
    which is not what weights that set their own, e.g. the bundled mini teacher's w = 1, were made for.)"""
    out = {}
    for name in names if names is not None else BY_NAME:
        if not name.startswith("completion."):
            continue
        value, key = values[name], name.removeprefix("completion.")
        if key == "seed" and value < 0:
            value = None
        if key == "guidance_scale" and value < 0:
            if weights_guidance is UNSET:
                continue
            value = weights_guidance
        if key == "num_points" and value == 0:
            continue
        out[key] = value
    return out
