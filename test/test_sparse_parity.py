"""The pure-PyTorch backend reproduces MinkowskiEngine 0.5.4, proven by golden fixtures.

Fixtures come from a real MinkowskiEngine CPU build (tools/make_golden.py). When MinkowskiEngine
is importable, the same cases also run live against it on fresh random inputs.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import golden_cases as gc
from conftest import FIXTURES
from ddpo_ros.sparse import minkowski_available

GOLDEN = FIXTURES / "minkowski_golden.safetensors"
TOL = 1e-5


def _load():
    with safe_open(GOLDEN, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return meta, tensors


META, TENSORS = _load()


def _group(prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in TENSORS.items() if k.startswith(prefix)}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rel: float = TOL):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if expected.dtype in (torch.int32, torch.int64):
        assert torch.equal(actual.long(), expected.long()), f"{what}: integer values differ"
        return
    scale = max(1.0, float(expected.abs().max()))
    err = float((actual - expected).abs().max())
    assert err <= rel * scale, f"{what}: max |diff| {err:.3g} > {rel:g} x {scale:.3g}"


def test_fixture_was_made_by_minkowski_engine():
    assert META["minkowski_engine"] == "0.5.4"
    assert [c["name"] for c in json.loads(META["cases"])] == [c["name"] for c in gc.CASES]


@pytest.mark.parametrize("case", gc.LAYER_CASES, ids=[c["name"] for c in gc.LAYER_CASES])
def test_layer_matches_golden(case):
    inputs, expected = _group(f"{case['name']}/in/"), _group(f"{case['name']}/out/")
    actual = gc.run_layer("torch", case, inputs)
    assert set(actual) == set(expected)
    for key in expected:
        assert_close(actual[key], expected[key], f"{case['name']}.{key}")


def test_golden_layers_are_not_trivial():
    """Guard against fixtures that would pass for a broken backend (all-zero outputs, no overlap)."""
    for case in gc.LAYER_CASES:
        for key, value in _group(f"{case['name']}/out/").items():
            if value.is_floating_point():
                assert value.abs().max() > 0.1, f"{case['name']}.{key} is ~0"
    subm = _group("subm3_s1/out/")["out_feats"]
    inputs = _group("subm3_s1/in/")
    centre_only = inputs["feats"] @ inputs["kernel"][13]
    assert (subm - centre_only[gc._coord_order(inputs["coords"])]).abs().max() > 1.0  # neighbours contribute


@pytest.fixture(scope="module")
def unet_actual():
    case = gc.UNET_CASE
    return gc.run_unet("torch", case, _group("unet/in/"), _group("unet/state/"))


@pytest.mark.parametrize("key", sorted(k for k in _group("unet/out/")))
def test_whole_unet_matches_golden(unet_actual, key):
    expected = _group("unet/out/")[key]
    # Train-mode BatchNorm on a random-init net amplifies float32 rounding (both backends drift
    # from a float64 run by ~1e-5 relative), so train-mode outputs get a looser bound.
    rel = 1e-4 if key.startswith("train_") else TOL
    assert_close(unet_actual[key], expected, f"unet.{key}", rel)


@pytest.mark.skipif(not minkowski_available(), reason="MinkowskiEngine not installed (make minkowski)")
@pytest.mark.parametrize("case", gc.LAYER_CASES, ids=[c["name"] for c in gc.LAYER_CASES])
def test_layer_matches_minkowski_live(case):
    inputs = gc.make_inputs(case, torch.Generator().manual_seed(7))
    ours, theirs = gc.run_layer("torch", case, inputs), gc.run_layer("minkowski", case, inputs)
    for key in theirs:
        assert_close(ours[key], theirs[key], f"live {case['name']}.{key}")


@pytest.mark.skipif(not minkowski_available(), reason="MinkowskiEngine not installed (make minkowski)")
def test_whole_unet_matches_minkowski_live(scan_xyz):
    gen = torch.Generator().manual_seed(11)
    case = gc.UNET_CASE
    inputs = gc.make_unet_inputs(case, scan_xyz, gen)
    states = {}
    for name, model in zip(("encoder", "denoiser", "refiner"), gc.unet_models("torch", case["width"])):
        gc.randomise_batch_norms(model, gen)
        states.update({f"{name}.{k}": v.clone() for k, v in model.state_dict().items()})
    ours, theirs = gc.run_unet("torch", case, inputs, states), gc.run_unet("minkowski", case, inputs, states)
    for key in theirs:
        assert_close(ours[key], theirs[key], f"live unet.{key}", 1e-4 if key.startswith("train_") else TOL)
