"""Typed configuration: every shipped YAML loads; mistakes are named precisely."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ddpo_ros.config import Config, ConfigError, ModelConfig, added_option, behaviour, from_dict, load_config, to_dict

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


@pytest.mark.parametrize("path", sorted((CONFIG_DIR / "model").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_model_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert from_dict(Config, to_dict(cfg)) == cfg  # lossless round trip


@pytest.mark.parametrize("path", sorted((CONFIG_DIR / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_training_configs_load(path):
    from training.config import load_train_config
    cfg = load_train_config(path)
    assert cfg.stage.replace("-", "_") == path.stem.split("_mini")[0]  # teacher_mini.yaml: teacher


def test_paper_scale_config_is_the_reference():
    cfg = load_config(CONFIG_DIR / "model" / "lidiff.yaml")
    assert cfg.model == ModelConfig() and cfg.model.channels == (32, 32, 64, 128, 256, 256, 128, 96, 96)
    diffusion = cfg.diffusion
    assert (diffusion.beta_start, diffusion.beta_end, diffusion.num_train_timesteps) == (3.5e-5, 0.007, 1000)


def test_unknown_key_names_file_and_field(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  widht: 0.5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: model: unknown key\(s\) \['widht'\]"):
        load_config(p)
    p.write_text("modle: {}\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['modle'\]"):
        load_config(p)


@pytest.mark.parametrize("text, message", [
    ("model:\n  refine_up_factor: six\n", "model.refine_up_factor: expected int, got str 'six'"),
    ("model:\n  backend: spconv\n", r"model.backend: 'spconv' is not one of \['torch', 'minkowski'\]"),
    ("model:\n  width: -1\n", "model.width: must be > 0"),
    ("model:\n  channels: [1, 2]\n", "model.channels: needs 9 entries"),
    ("model: [1, 2]\n", "model: expected a mapping"),
    ("model: {width: [\n", "bad.yaml: not valid YAML"),
])
def test_wrong_types_and_values_are_named(tmp_path, text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(p)


def test_yaml_exponents_without_a_dot_are_floats(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("diffusion:\n  beta_start: 1e-5\n  beta_end: 2e-2\n")
    cfg = load_config(p)
    assert cfg.diffusion.beta_start == 1e-5 and cfg.diffusion.beta_end == 0.02


def test_empty_file_gives_defaults(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("")
    assert load_config(p) == Config()


@dataclass(frozen=True)
class _Section:
    lam: float = 1.1


@dataclass(frozen=True)
class _SectionLater:  # _Section after two options were added, one declared as a no-op at its default
    lam: float = 1.1
    gt_weight: float = added_option(0.0)
    plain_new: int = 3


@dataclass(frozen=True)
class _Top:
    distill: _Section = field(default_factory=_Section)


@dataclass(frozen=True)
class _TopLater:
    distill: _SectionLater = field(default_factory=_SectionLater)
    steps: tuple = added_option((8, 4))


def test_behaviour_ignores_added_options_only_at_their_default():
    """Records keyed by behaviour(config) survive an added no-op option, not a set one or a plain field."""
    old, later = behaviour(_Top()), behaviour(_TopLater())
    assert later == {"distill": {"lam": 1.1, "plain_new": 3}} and old == {"distill": {"lam": 1.1}}
    assert behaviour(_TopLater(_SectionLater(gt_weight=0.5)))["distill"]["gt_weight"] == 0.5
    assert behaviour(_TopLater(steps=(1,)))["steps"] == [1]
    full = to_dict(Config())
    assert full["completion"].pop("start_t") is None  # the one added option of the model schema
    assert behaviour(Config()) == full
