"""Inference copies: BatchNorm folded into convolutions (exact), bfloat16 convolutions (approximate),
and the glibc setting that keeps freed memory."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import kitti_scan
from ddpo_ros.config import CompletionConfig, Config, ConfigError, ModelConfig, from_dict
from ddpo_ros.models import build_denoiser, build_encoder, build_refiner
from ddpo_ros.pipeline import Completer, Shortcuts
from ddpo_ros.sparse.fused import FusedConv, fuse_for_inference
from ddpo_ros.sparse.layers import BatchNorm, _KernelLayer

TINY = Config(model=ModelConfig(width=0.125), completion=CompletionConfig(num_points=600))


def trained_looking(net: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm running statistics and an affine map far from the identity, as training
    does, so folding them is a real test (fresh BatchNorms are almost the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.normal_(0.0, 0.5, generator=g)
            m.running_var.uniform_(0.2, 3.0, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0.0, 0.3, generator=g)
    return net.eval()


def nets(seed: int = 0):
    torch.manual_seed(seed)
    return [trained_looking(build(TINY.model), seed + i)
            for i, build in enumerate((build_encoder, build_denoiser, build_refiner))]


@pytest.fixture(scope="module")
def scan_points():
    xyz = kitti_scan(0)[:, :3]
    xyz = xyz[(np.linalg.norm(xyz, axis=1) > 3.5) & (np.linalg.norm(xyz, axis=1) < 50)]
    return torch.from_numpy(xyz[np.random.default_rng(0).choice(len(xyz), 3000, replace=False)])[None]


def run_all(encoder, denoiser, refiner, points):
    cond = encoder(points)
    x_t = points + 0.3 * torch.randn(points.shape, generator=torch.Generator().manual_seed(1))
    eps = denoiser(x_t, cond, torch.tensor([500]))
    return cond.F, eps, refiner(points)


@torch.no_grad()
def test_folded_networks_equal_the_originals(scan_points):
    originals = nets()
    before = [{k: v.clone() for k, v in n.state_dict().items()} for n in originals]
    folded = [fuse_for_inference(n) for n in originals]
    for ref, out in zip(run_all(*originals, scan_points), run_all(*folded, scan_points)):
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    for net, fused, state in zip(originals, folded, before):
        convs = sum(isinstance(m, _KernelLayer) for m in net.modules())
        assert sum(isinstance(m, FusedConv) for m in fused.modules()) == convs
        assert not any(isinstance(m, (_KernelLayer, BatchNorm)) for m in fused.modules())
        # The originals are untouched: same weights, still trainable.
        assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
        assert all(p.requires_grad for p in net.parameters())


@torch.no_grad()
def test_bf16_networks_compute_in_bfloat16_and_stay_close(scan_points):
    originals = nets()
    fused = [fuse_for_inference(n, "bf16") for n in originals[1:]]
    kernels = [m.kernel.dtype for m in fused[0].modules() if isinstance(m, FusedConv)]
    # The first convolution sees coordinates in metres and keeps float32; every other is bf16.
    assert kernels[0] == torch.float32 and set(kernels[1:]) == {torch.bfloat16}
    ref = run_all(*originals, scan_points)
    _, eps, offsets = run_all(originals[0], *fused, scan_points)
    for out, want in ((eps, ref[1]), (offsets, ref[2])):
        assert out.dtype == torch.float32
        rel = float((out - want).norm() / want.norm())
        print(f"bf16 relative error {rel:.2e}")
        assert 1e-5 < rel < 5e-2, rel  # approximate (not float32), but close


def test_precision_is_checked():
    with pytest.raises(ValueError, match="precision must be one of"):
        fuse_for_inference(nn.Sequential(), "fp16")
    plain = nn.Sequential(nn.Linear(3, 3))  # no sparse layers of ours (as a MinkowskiEngine model)
    assert fuse_for_inference(plain) is plain
    with pytest.raises(ValueError, match="pure-PyTorch sparse backend"):
        fuse_for_inference(plain, "bf16")
    with pytest.raises(ConfigError, match="completion.precision"):
        from_dict(Config, {"completion": {"precision": "fp16"}})


def test_completer_folds_exactly_and_bf16_completes_close(scan_points):
    scan = kitti_scan(0)
    folded = Completer(*nets(), TINY).complete(scan, steps=2, seed=1)
    plain = Completer(*nets(), TINY, shortcuts=Shortcuts(fold_batchnorm=False)).complete(scan, steps=2, seed=1)
    assert folded.counts == plain.counts
    np.testing.assert_allclose(folded.points, plain.points, atol=1e-4)
    bf16_cfg = replace(TINY, completion=replace(TINY.completion, precision="bf16"))
    fast = Completer(*nets(), bf16_cfg)
    approx = fast.complete(scan, steps=2, seed=1)
    assert approx.points.dtype == np.float32 and np.isfinite(approx.points).all()
    # Same noise, same trajectory up to bfloat16 rounding: the coarse scenes stay point-for-point close.
    n = min(len(approx.coarse), len(folded.coarse))
    assert abs(len(approx.coarse) - len(folded.coarse)) <= 0.01 * len(folded.coarse)
    gap = np.linalg.norm(approx.coarse[:n] - folded.coarse[:n], axis=1)
    print(f"bf16 vs fp32 coarse scene: median {np.median(gap):.2e} m, 99th percentile {np.quantile(gap, 0.99):.2e} m")
    assert np.median(gap) < 0.05
    fast.shortcuts = Shortcuts(fold_batchnorm=False)
    with pytest.raises(ValueError, match="needs the fold_batchnorm shortcut"):
        fast.complete(scan, steps=1, seed=1)


def test_retaining_freed_memory_changes_no_result():
    """glibc's retention is process-wide: run it in fresh interpreters, with the completion on a
    worker thread as the ROS node runs it."""
    code = """
import sys, threading, numpy as np, torch
sys.path.insert(0, sys.argv[2])
from ddpo_ros.frontends.allocator import retain_freed_memory, retaining
from test_fused import TINY, nets
from conftest import kitti_scan
from ddpo_ros.pipeline import Completer
if sys.argv[1] == "1":
    assert retain_freed_memory() and retaining()
out = {}
completer = Completer(*nets(), TINY)
worker = threading.Thread(target=lambda: out.update(p=completer.complete(kitti_scan(0), steps=1, seed=2).points))
worker.start(); worker.join()
sys.stdout.buffer.write(out["p"].tobytes())
"""
    here = str(Path(__file__).parent)
    runs = [subprocess.run([sys.executable, "-c", code, flag, here], capture_output=True, check=True,
                           timeout=300).stdout for flag in ("0", "1")]
    assert len(runs[0]) > 0 and runs[0] == runs[1]


def test_training_returns_freed_memory_and_evaluation_retains_it(monkeypatch, tmp_path):
    """Training's tensor sizes change every step: a heap that keeps freed blocks fragments without
    bound there (the CPU teacher_mini was OOM-killed at 23 GB), so train.py returns large blocks to
    the system for training stages and retains them only for evaluation."""
    from ddpo_ros.frontends import allocator
    from training import train

    calls = []
    monkeypatch.setattr(allocator, "retain_freed_memory", lambda: calls.append("retain"))
    monkeypatch.setattr(allocator, "return_freed_memory", lambda: calls.append("return"))

    def fails(argv):  # the config / weights do not exist; the allocator is set before they are read
        try:
            assert train.main(argv) != 0
        except (FileNotFoundError, ValueError):
            pass
    fails(["teacher", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "run")])
    fails(["evaluate", "--weights", str(tmp_path / "missing.safetensors"), "--data", "synthetic:1",
           "--out", str(tmp_path / "eval")])
    assert calls == ["return", "retain"]


def test_return_freed_memory_sets_glibc_and_leaves_retention_alone():
    code = """
import sys
from ddpo_ros.frontends.allocator import retain_freed_memory, return_freed_memory
assert return_freed_memory() is True
assert retain_freed_memory() is True
assert return_freed_memory() is False  # an inference process that retains keeps retaining
"""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
