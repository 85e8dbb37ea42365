"""`ddpo demo`: the furthest end-to-end job the package can run today, on a real KITTI scan.

Reads frame 0 of the bundled SemanticKITTI sequence 00, prepares it the way the completion
pipeline does (3.5 m < r < 50 m, 18,000 points, replicated x10, noised to the first sampler
step), and runs the full-width LiDiff networks once each on the pure-PyTorch sparse backend:
scan encoder, one denoiser evaluation (one NFE) and the refiner. With `--weights` (a file made
by `ddpo convert` from LiDiff's diff_net.ckpt / refine_net.ckpt) the real weights are used;
otherwise the networks are randomly initialised and only the compute cost is meaningful.
"""
from __future__ import annotations

import time

import numpy as np


def demo_cli(args) -> int:
    import torch

    from .clouds import crop_range, find_kitti_frame, read_kitti_bin
    from .config import ModelConfig
    from .models import build_denoiser, build_encoder, build_refiner

    torch.manual_seed(0)
    scan = read_kitti_bin(find_kitti_frame(args.data))[:, :3]
    kept = crop_range(scan)
    rng = np.random.default_rng(0)
    partial = kept[rng.choice(len(kept), 18000, replace=False)]
    print(f"KITTI seq 00 frame 0: {len(scan):,} points, {len(kept):,} within 3.5-50 m, 18,000 kept")

    device = torch.device(args.device)
    cfg = ModelConfig()
    enc, den, ref = (build(cfg).eval().to(device) for build in (build_encoder, build_denoiser, build_refiner))
    weights = getattr(args, "weights", None)
    if weights:
        from .checkpoint import build_models, load_checkpoint
        models = build_models(load_checkpoint(weights), device=device)
        enc, den = models.get("encoder", enc), models.get("student", models.get("teacher", den))
        ref = models.get("refiner", ref)
        print(f"weights: {weights} ({', '.join(sorted(models))})")
    else:
        print("weights: none bundled yet -> random initialisation (timings only)")
    for name, m in (("encoder", enc), ("denoiser", den), ("refiner", ref)):
        print(f"  {name:9s} {sum(p.numel() for p in m.parameters()):>11,} parameters")

    part = torch.from_numpy(partial)[None].to(device)
    x_init = part.repeat(1, 10, 1)
    x_t = x_init + torch.randn(x_init.shape, device=device)  # x_T = x_init + eps (LiDiff)
    timings = {}
    with torch.no_grad():
        for name, fn in (("encoder", lambda: enc(part)),
                         ("denoiser", lambda: den(x_t, cond, torch.tensor([999], device=device))),
                         ("refiner", lambda: ref(x_init))):
            start = time.perf_counter()
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings[name] = time.perf_counter() - start
            if name == "encoder":
                cond = out
            elif name == "denoiser":
                eps = out
            else:
                offsets = out
    print("one cold call each (no warm-up; `ddpo bench` has warmed medians):")
    print(f"encoder : 18,000 points -> {cond.F.shape[0]:,} voxels at 0.8 m   {timings['encoder']:.2f} s")
    print(f"denoiser: 180,000 points -> eps {tuple(eps.shape)}, |eps| mean {eps.abs().mean():.3f}   "
          f"{timings['denoiser']:.2f} s")
    print(f"refiner : 180,000 points -> {offsets.shape[1] * offsets.shape[2]:,} refined points, "
          f"offsets within {offsets.abs().max():.3f} m   {timings['refiner']:.2f} s")
    assert torch.isfinite(eps).all() and torch.isfinite(offsets).all()
    return 0
