"""Training gradients are bit-reproducible on CPU even while other processes compete for the cores.

Advanced indexing's backward (index_put_ with accumulate) adds duplicate rows in whatever order
the threads reach them when the CPU is contended, so two identical runs drifted apart by 1e-8
after one step and `--resume` after a kill was not bit-exact on a loaded CI machine. The networks
and the Chamfer loss gather with index_select, whose backward (index_add_) sums in index order.
"""
from __future__ import annotations

import subprocess
import sys

import torch

from ddpo_ros.config import ModelConfig
from ddpo_ros.models import build_denoiser, build_encoder
from training.losses import chamfer_squared

BUSY = "import time\nend = time.time() + 60\nwhile time.time() < end: pass"


def _gradients(step) -> list[dict]:
    """The gradients of `step` computed 12 times while two busy processes load both cores."""
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(2)]
    try:
        return [step() for _ in range(12)]
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def _assert_identical(runs: list[dict]) -> None:
    for i, grads in enumerate(runs[1:], 1):
        differ = [k for k in grads if not torch.equal(grads[k], runs[0][k])]
        assert not differ, f"repeat {i}: gradients of {differ[:4]} differ from the first computation"


def test_denoiser_and_encoder_gradients_repeat_exactly_under_cpu_contention():
    torch.manual_seed(0)
    cfg = ModelConfig(width=0.125)
    encoder, denoiser = build_encoder(cfg).train(), build_denoiser(cfg).train()
    params = [*encoder.named_parameters(), *denoiser.named_parameters()]
    x_t, scan = torch.randn(2, 12000, 3) * 4, torch.randn(2, 800, 3) * 4
    t = torch.tensor([20, 700])

    def step():
        for _, p in params:
            p.grad = None
        denoiser(x_t, encoder(scan), t).square().sum().backward()
        return {n: p.grad.clone() for n, p in params}
    _assert_identical(_gradients(step))


def test_chamfer_gradient_repeats_exactly_under_cpu_contention():
    torch.manual_seed(0)
    pred = (torch.randn(2, 500, 3) * 3).requires_grad_()
    gt = torch.randn(2, 30000, 3) * 3  # many ground-truth points share a nearest predicted point

    def step():
        pred.grad = None
        chamfer_squared(pred, gt).backward()
        return {"pred": pred.grad.clone()}
    _assert_identical(_gradients(step))
