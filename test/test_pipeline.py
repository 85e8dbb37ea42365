"""The Completer on the real KITTI frame: stages, shortcuts, reproducibility, bad input."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import kitti_scan
from ddpo_ros.checkpoint import CheckpointError, save_checkpoint
from ddpo_ros.config import CompletionConfig, Config, ModelConfig
from ddpo_ros.models import build_denoiser, build_encoder, build_refiner
from ddpo_ros.completion import stage_table
from ddpo_ros.loading import resolve_device
from ddpo_ros.pipeline import Completer, Shortcuts, clean_input

TINY = Config(model=ModelConfig(width=0.125), completion=CompletionConfig(num_points=600))


def tiny_nets(seed: int = 0):
    torch.manual_seed(seed)
    return build_encoder(TINY.model), build_denoiser(TINY.model), build_refiner(TINY.model)


@pytest.fixture(scope="module")
def completer():
    return Completer(*tiny_nets(), TINY)


@pytest.fixture(scope="module")
def scan():
    return kitti_scan(0)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_completes_a_real_scan(completer, scan, steps):
    out = completer.complete(scan, steps=steps, seed=0)
    n = TINY.completion.num_points * TINY.completion.replication
    assert out.points.dtype == np.float32 and out.points.shape == (6 * out.counts["coarse"], 3)
    assert np.isfinite(out.points).all() and 0 < out.counts["coarse"] <= n
    assert out.partial.shape == (600, 3) and out.counts["diffused"] == n
    assert out.counts["input"] == len(scan) and out.counts["in_range"] == 122549
    # Coarse points obey the reference's crop; refined ones stay within 1 m (tanh offsets) of them.
    r = np.linalg.norm(out.coarse, axis=1)
    z = np.tile(out.partial[:, 2].astype(np.float64), 10)
    assert (r < 50).all() and (out.coarse[:, 2] < z.max()).all()
    assert (out.coarse[:, 2] > z.mean() - 2 * z.std(ddof=1)).all()
    assert np.abs(out.points.reshape(-1, 6, 3) - out.coarse[:, None]).max() <= 1.0 + 1e-5
    stages = list(out.timings)
    assert stages[:2] == ["preprocess", "encoder"] and stages[-3:] == ["postprocess", "refine", "total"]
    assert len([s for s in stages if s.startswith("step ")]) == steps
    assert out.timings["total"] == pytest.approx(sum(v for k, v in out.timings.items() if k != "total"))
    assert "step 1 (t=999)" in stage_table(out.timings)


def test_same_seed_same_scene_and_new_seed_new_scene(completer, scan):
    a = completer.complete(scan, steps=2, seed=3)
    b = completer.complete(scan, steps=2, seed=3)
    c = completer.complete(scan, steps=2, seed=4)
    assert np.array_equal(a.points, b.points)
    assert not np.array_equal(a.coarse, c.coarse)


def test_shortcuts_change_nothing_but_time(scan):
    """Encoder once, shared branches, grouped MLPs and lattice matching vs. LiDiff's way."""
    fast = Completer(*tiny_nets(), TINY).complete(scan, steps=2, seed=1)
    slow = Completer(*tiny_nets(), TINY, shortcuts=Shortcuts.none()).complete(scan, steps=2, seed=1)
    assert fast.counts == slow.counts
    np.testing.assert_allclose(fast.points, slow.points, atol=2e-4)


@pytest.mark.parametrize("w", [1.0, 3.5])
def test_one_step_scene_is_x_init_plus_the_guided_x0(scan, w):
    """With the clean final step, a 1-step scene is x_init + (x_T - sigma eps_w) / alpha, cropped."""
    cfg = replace(TINY, completion=replace(TINY.completion, final_sigma="zero"))
    c = Completer(*tiny_nets(), cfg)
    out = c.complete(scan, steps=1, seed=2, guidance_scale=w, refine=False)
    partial = torch.from_numpy(out.partial)[None]
    x_init = partial.repeat(1, 10, 1)
    noise = torch.randn(x_init.shape, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([999])
    with torch.no_grad():
        eps_c = c.denoiser(x_init + noise, c.encoder(partial), t)
        eps_u = c.denoiser(x_init + noise, c.encoder(torch.zeros_like(partial)), t)
    eps = eps_u + w * (eps_c - eps_u)
    x0 = (noise - c.schedule.sigma(999).item() * eps) / c.schedule.alpha(999).item()
    expected = c.postprocess((x_init + x0)[0], x_init[0]).numpy()
    assert expected.shape == out.coarse.shape
    np.testing.assert_allclose(out.coarse, expected, atol=1e-4)
    with pytest.raises(ValueError, match="num_steps"):
        c.complete(scan, steps=0)


def test_a_later_start_begins_at_start_t_from_x_init_plus_sigma_noise(scan):
    """completion.start_t (SDEdit-style): the first state is x_init + sigma_start eps, the first call's t
    is start_t, and the steps are the end of the reference grid; the default is the reference's start."""
    calls = {}
    for start in (None, 125):
        cfg = replace(TINY, completion=replace(TINY.completion, start_t=start))
        seen = []

        def record(x, t):
            seen.append((x.clone(), t))
            return torch.zeros_like(x)
        c = Completer(None, None, None, cfg)
        c.complete(scan, steps=4, seed=5, refine=False, denoise=record)
        partial = torch.from_numpy(c.preprocess(scan)[0])[None]
        noise = torch.randn((1, 6000, 3), generator=torch.Generator().manual_seed(5))
        scale = 1.0 if start is None else float(c.schedule.sigma(125))
        torch.testing.assert_close(seen[0][0], partial.repeat(1, 10, 1) + scale * noise)
        calls[start] = [t for _, t in seen]
    assert calls[None] == [999, 749, 500, 250] and calls[125] == [125, 94, 62, 31]
    c = Completer(None, None, None, replace(TINY, completion=replace(TINY.completion, start_t=125)))
    with pytest.raises(ValueError, match=r"completion.steps / completion.start_t: num_steps must be in 1..126"):
        c.complete(scan, steps=200, refine=False, denoise=lambda x, t: torch.zeros_like(x))
    with pytest.raises(ValueError, match="completion.start_t"):
        CompletionConfig(start_t=-1)


def test_input_validation_names_the_problem(completer, scan):
    with pytest.raises(ValueError, match="numpy array"):
        completer.complete(scan.tolist())
    with pytest.raises(ValueError, match=r"shape \(N, 3\) or \(N, 4\)"):
        completer.complete(scan[:, :2])
    with pytest.raises(ValueError, match="floating point"):
        completer.complete(scan.astype(np.int32))
    with pytest.raises(ValueError, match="no valid points"):
        completer.complete(np.full((10, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="no valid points"):
        completer.complete(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="fewer than the 600"):
        completer.complete(scan[:500])
    with pytest.raises(ValueError, match="fewer than the 600"):  # all inside 3.5 m
        completer.complete(np.random.default_rng(0).normal(size=(5000, 3)).astype(np.float32))
    dirty = scan.copy()
    dirty[::100, 1] = np.nan
    dirty[1::100, 2] = np.inf
    dirty[2::100, :3] = 0.0  # a driver's "no return" row
    xyz, dropped = clean_input(dirty)
    assert dropped == len(scan[::100]) + len(scan[1::100]) + len(scan[2::100]) and len(xyz) == len(scan) - dropped
    out = completer.complete(dirty, steps=1, seed=0)
    assert out.counts["invalid"] == dropped and np.isfinite(out.points).all()


def test_float64_and_xyz_only_input_give_the_same_scene(completer, scan):
    a = completer.complete(scan, steps=1, seed=5)
    b = completer.complete(scan[:, :3].astype(np.float64), steps=1, seed=5)
    assert np.array_equal(a.points, b.points)


def test_refine_switch_and_missing_refiner(scan):
    enc, den, _ = tiny_nets()
    c = Completer(enc, den, None, TINY)
    out = c.complete(scan, steps=1, seed=0, refine=False)
    assert np.array_equal(out.points, out.coarse) and "refine" not in out.timings
    with pytest.raises(ValueError, match="no refiner"):
        c.complete(scan, steps=1)


def test_from_checkpoint_picks_the_denoiser_and_its_defaults(tmp_path, scan):
    enc, den, ref = tiny_nets()
    student = tmp_path / "student.safetensors"
    save_checkpoint(student, {"encoder": enc, "student": den, "refiner": ref, "teacher": den}, TINY)
    c = Completer.from_checkpoint(student)
    assert (c.kind, c.default_steps, c.default_guidance) == ("student", 8, 3.5)
    direct = Completer(enc, den, ref, TINY).complete(scan, steps=1, seed=0)
    assert np.array_equal(c.complete(scan, steps=1, seed=0).points, direct.points)

    teacher = tmp_path / "teacher.safetensors"
    save_checkpoint(teacher, {"encoder": enc, "teacher": den}, TINY)
    c = Completer.from_checkpoint(teacher)
    assert (c.kind, c.default_steps, c.default_guidance, c.refiner) == ("teacher", 50, 6.0, None)
    custom = replace(TINY.completion, steps=4, guidance_scale=2.0, denoiser="teacher")
    c = Completer.from_checkpoint(student, completion=custom)
    assert (c.kind, c.default_steps, c.default_guidance) == ("teacher", 4, 2.0)

    save_checkpoint(tmp_path / "no_encoder.safetensors", {"teacher": den}, TINY)
    with pytest.raises(CheckpointError, match=r"no_encoder.safetensors.*\['encoder'\]"):
        Completer.from_checkpoint(tmp_path / "no_encoder.safetensors")


def test_warmup_and_devices(completer):
    out = completer.warmup()
    assert len(out.points) > 0 and out.counts["input"] == TINY.completion.num_points + 1
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_scene(scan):
    cpu = Completer(*tiny_nets(), TINY).complete(scan, steps=2, seed=0)
    gpu = Completer(*tiny_nets(), TINY, device="cuda").complete(scan, steps=2, seed=0)
    assert abs(len(cpu.coarse) - len(gpu.coarse)) <= 0.01 * len(cpu.coarse)
