"""The node's parameter table: defaults, validation errors that name the parameter, mapping to the config."""
from __future__ import annotations

import pytest

from ddpo_ros.config import CompletionConfig
from ddpo_ros.frontends.node_params import BY_NAME, PARAMETERS, RUNTIME, check_value, completion_overrides, validate
from ddpo_ros.loading import completion_settings


def test_defaults_are_valid_and_complete():
    values = validate({})
    assert list(values) == [p.name for p in PARAMETERS] and len(BY_NAME) == len(PARAMETERS)
    assert set(RUNTIME) == {"completion.steps", "completion.guidance_scale", "completion.refine", "completion.seed"}
    for p in PARAMETERS:
        assert p.description and check_value(p.name, p.default) == p.default
        assert (p.low is None) == (p.high is None)


@pytest.mark.parametrize("name, value, match", [
    ("completion.steps", 0, r"'completion.steps' must be in \[1, 50\]"),
    ("completion.steps", 51, r"in \[1, 50\], got 51"),
    ("completion.steps", 8.0, "must be int, got float"),
    ("completion.refine", 1, "must be bool, got int"),
    ("device", 0, "must be str"),
    ("input.reliability", "sometimes", r"must be one of \['best_effort', 'reliable'\]"),
    ("completion.denoiser", "ta_win", "one of"),
    ("max_points", 0, "max_points"),
    ("nonsense", 1, "unknown parameter 'nonsense'"),
])
def test_bad_values_name_the_parameter(name, value, match):
    with pytest.raises(ValueError, match=match):
        validate({name: value})


def test_ints_are_accepted_for_doubles_and_ranges_cross_checked():
    assert validate({"completion.guidance_scale": 2})["completion.guidance_scale"] == 2.0
    with pytest.raises(ValueError, match="min_range < max_range"):
        validate({"completion.min_range": 60.0})


def test_completion_overrides_applied_to_the_weights_settings():
    """The node's completion.* parameters -> CompletionConfig through the one settings function."""
    base = CompletionConfig(num_points=4000, replication=10, seed=7)
    values = validate({})
    cfg = completion_settings(base, completion_overrides(values))
    assert cfg.num_points == 4000 and cfg.guidance_scale is None and cfg.seed is None and cfg.steps == 8
    # -1 guidance keeps the weights' own w (the bundled mini teacher's is 1: not the teacher class's 6)
    own = CompletionConfig(num_points=4000, replication=10, guidance_scale=1.0)
    assert completion_settings(own, completion_overrides(values)).guidance_scale == 1.0
    at_runtime = completion_overrides(values, ["completion.guidance_scale"], weights_guidance=1.0)
    assert at_runtime == {"guidance_scale": 1.0}
    back = completion_overrides(values, ["completion.guidance_scale"], weights_guidance=None)
    assert back == {"guidance_scale": None}  # weights without their own w: the denoiser's default
    assert cfg.replication == 10 and cfg.denoiser == "auto" and cfg.max_range == 50.0
    values = validate({"completion.num_points": 500, "completion.seed": 3, "completion.guidance_scale": 1.0,
                       "completion.refine": False, "completion.steps": 2})
    cfg = completion_settings(base, completion_overrides(values))
    assert (cfg.num_points, cfg.seed, cfg.guidance_scale, cfg.refine, cfg.steps) == (500, 3, 1.0, False, 2)
    # at runtime only the changed parameters are passed on
    assert completion_overrides(values, ["completion.steps", "completion.seed", "warmup"]) == {"steps": 2, "seed": 3}
    assert completion_overrides(validate({"completion.seed": -1}), ["completion.seed"]) == {"seed": None}
