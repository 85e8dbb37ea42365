"""Stage `refine`: train LiDiff's refinement net (MinkUNet, tanh head of refine_up_factor offsets).

The refiner turns a coarse, noisy completion into a denser one on the surface: every input point
p becomes p + offset_k, k = 1..up (reference sections 1c and 4; the Completer applies it the same
way, ddpo_ros.pipeline.Completer.refine). LiDiff trains it on the aggregated cloud of 40 scans plus
jitter against the same cloud voxelised at 0.1 m (reference section 3, "Refine dataloader"). Here it
reuses the diffusion stage's pairs (training/data: ScanPairs, SyntheticPairs), whose `gt` is already
that aggregated, 0.1 m voxelised ground truth cut to the scan (r < 50 m), shuffled and tiled to
data.gt_points, with the same augmentation. The scan (`partial`) is not used. Per sample:

    input  = a random subset of gt of refine.input_points points (0: completion.num_points x
             completion.replication, the size of the diffusion output the refiner gets at inference;
             drawn without replacement, tiled first when gt has fewer points), plus a per-coordinate
             Gaussian jitter N(0, jitter_sigma^2) clipped to +-jitter_clip (reference: 0.2, 0.3 m);
    target = gt (all data.gt_points points);
    loss   = chamfer_squared(input[:, :, None] + refiner(input), gt): pytorch3d's default chamfer
             (squared distances, both directions averaged over points, summed) on the up x N
             refined points, as LiDiff's train_refine.py.

So at paper scale the refiner sees 180,000 points, as many as the diffusion output it refines at
inference (LiDiff: 180,000 jittered aggregated points against 360,000 ground-truth points), and
makes 1,080,000. Subset and jitter draw from run.generator (resume stays exact). Adam, the loop's lr
(reference: 1e-4, batch 8, 5 epochs, no scheduler: set train.lr_decay_every 0).

With refine.teacher (weights with encoder + teacher) the input is instead that teacher's own
completion of the sample's scan (`partial`), made by the real Completer with the teacher's
completion settings and no refiner, resampled to refine.input_points (shuffled and tiled: the r/z
crop drops a few hundred). The refiner then learns on what it refines at inference: a teacher's
points lie off the surfaces in its own way, not as isotropic jitter of the ground truth (the mini
teacher's 8-step points: 18 cm from the surfaces, spread like the scan, not like the ground truth).
A completion costs the teacher's sampling steps per sample (~5 s at mini scale on 2 CPU cores).

`refine.init` starts from the refiner of existing weights instead of random ones (fine-tuning).

Validation: on the first train.val_scans validation pairs, the paper's CD
(ddpo_ros.datasets.ground_truth.chamfer_distance, metres) of the input (jittered ground truth or
the teacher's completion) and of the refined output to the ground truth, as val/cd_input and
val/cd_refined; the input comes from a fixed seed per pair, so the numbers compare across steps.
One PNG per validation in out/val/.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ddpo_ros.checkpoint import load_checkpoint
from ddpo_ros.datasets.ground_truth import chamfer_distance
from ddpo_ros.models import build_refiner
from ddpo_ros.frontends.render import render_clouds
from ddpo_ros.pipeline import Completer

from .checkpoints import load_roles
from .common import make_optimizer
from .loop import Run, Stage
from .losses import chamfer_squared


def input_points(cfg) -> int:
    """Refiner input size: refine.input_points, or the diffusion output's size at inference."""
    return cfg.refine.input_points or cfg.completion.num_points * cfg.completion.replication


def refiner_input(gt: Tensor, num: int, sigma: float, clip: float, generator: torch.Generator) -> Tensor:
    """(B, M, 3) ground truth -> (B, num, 3): a random subset of each cloud plus clipped Gaussian jitter.

    Without replacement; when num > M the cloud is repeated first (each copy gets its own jitter).
    Random numbers come from `generator` (CPU); the result is on gt's device.
    """
    b, m, _ = gt.shape
    reps = math.ceil(num / m)
    idx = torch.stack([torch.cat([torch.randperm(m, generator=generator) for _ in range(reps)])[:num]
                       for _ in range(b)])
    jitter = (torch.randn((b, num, 3), generator=generator) * sigma).clamp_(-clip, clip)
    return torch.gather(gt, 1, idx.to(gt.device)[..., None].expand(-1, -1, 3)) + jitter.to(gt.device, gt.dtype)


def completion_input(completer: Completer, partial: Tensor, num: int, generator: torch.Generator) -> Tensor:
    """(B, P, 3) scans -> (B, num, 3): the completer's completion of each (its settings, no refiner),
    shuffled and tiled to num points. Sampler seeds and shuffles come from `generator` (CPU)."""
    out = []
    for scan in partial:
        seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
        # Augmentation's scaling can move a few of the num_points sampled points out of the
        # Completer's range window; tiled twice, FPS picks the same points when enough remain
        # (a copy is never farther than its original) and repeats some when not, as training_pair does.
        scan = np.tile(scan.cpu().numpy(), (2, 1))
        points = torch.from_numpy(completer.complete(scan, refine=False, seed=seed).points)
        reps = math.ceil(num / len(points))
        out.append(points[torch.cat([torch.randperm(len(points), generator=generator) for _ in range(reps)])[:num]])
    return torch.stack(out)


def refined(refiner, x: Tensor) -> Tensor:
    """(B, N, 3) -> (B, N * up, 3): every point plus its up offsets (Completer.refine, batched)."""
    offsets = refiner(x)
    return (x[:, :, None, :] + offsets).reshape(x.shape[0], -1, 3)


def build(cfg, run: Run, train_set, val_set) -> Stage:
    if cfg.refine.init:  # fine-tuning, e.g. the bundled refiner behind a retrained teacher
        refiner = load_roles(cfg.refine.init, "refine.init", cfg, ["refiner"], run.device)["refiner"]
    else:
        refiner = build_refiner(cfg.model).to(run.device)
    net = run.wrap(refiner)
    params = list(refiner.parameters())
    optimizer = make_optimizer(cfg, params)
    c, num = cfg.refine, input_points(cfg)
    completer = None
    if c.teacher:
        nets = load_roles(c.teacher, "refine.teacher", cfg, ["encoder", "teacher"], "cpu")
        completer = Completer(nets["encoder"], nets["teacher"], None, load_checkpoint(c.teacher).config,
                              kind="teacher", device=run.device)

    def make_input(item: dict, generator: torch.Generator) -> Tensor:
        if completer is not None:
            return completion_input(completer, item["partial"], num, generator)
        return refiner_input(item["gt"], num, c.jitter_sigma, c.jitter_clip, generator)
    what = "teacher's completion" if completer is not None else "gt + jitter"

    def step(batch) -> dict[str, float]:
        refiner.train()
        gt = batch["gt"]
        x = make_input(batch, run.generator).to(run.device)
        offsets = net(x)
        out = (x[:, :, None, :] + offsets).reshape(len(x), -1, 3)
        loss = chamfer_squared(out, gt.to(run.device))
        norm = run.optimise(optimizer, loss, params)
        return {"loss/refine": loss.item(), "grad_norm/refine": norm,
                "offsets/mean_abs": offsets.detach().abs().mean().item()}

    @torch.no_grad()
    def validate(step: int) -> dict[str, float]:
        if val_set is None or len(val_set) == 0:
            return {}
        refiner.eval()
        cd_in, cd_out = [], []
        for i in range(min(cfg.train.val_scans, len(val_set))):
            item = val_set[i]
            gt = item["gt"][None]
            x = make_input({"gt": gt, "partial": item["partial"][None]}, torch.Generator().manual_seed(i))
            y = refined(refiner, x.to(run.device)).cpu()
            gt_np, x_np, y_np = gt[0].numpy(), x[0].numpy(), y[0].numpy()
            cd_in.append(chamfer_distance(x_np, gt_np))
            cd_out.append(chamfer_distance(y_np, gt_np))
            if i == 0:
                render_clouds(Path(run.out) / "val" / f"step_{step:07d}.png",
                              [(f"input: {what}, CD {cd_in[-1]:.3f} m", x_np),
                               (f"refined x{refiner.up_factor}, CD {cd_out[-1]:.3f} m", y_np),
                               ("ground truth", gt_np)], title=f"{item['scan']} at step {step}", view="bev")
        refiner.train()
        return {"val/cd_input": float(np.mean(cd_in)), "val/cd_refined": float(np.mean(cd_out))}

    return Stage(models={"refiner": refiner}, optimizers={"refiner": optimizer}, step=step,
                 validate=validate, train_set=train_set)
