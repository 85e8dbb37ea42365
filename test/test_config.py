"""Typed configuration: every shipped YAML loads; mistakes are named precisely."""
from __future__ import annotations

from pathlib import Path

import pytest

from ddpo_ros.config import Config, ConfigError, ModelConfig, from_dict, load_config, to_dict

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
