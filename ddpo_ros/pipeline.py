"""The Completer: a sparse LiDAR scan (numpy) in, a dense completed scene (numpy) out.

Every front end (the ROS node, `ddpo complete`, evaluation) calls this one class. It follows
LiDiff's `diff_completion_pipeline.py` step by step (reference section 2):

1. keep 3.5 m < r < 50 m, farthest-point sample 18,000 points (Open3D's exact selection),
   repeat them x10: x_init (180,000 points); x_T = x_init + eps (Eq. 19 with lambda = 1), or with
   completion.start_t the partial start x_init + sigma_start eps at t = start_t;
2. solve the reverse diffusion on the offset x_t - x_init with classifier-free guidance
   eps = eps_u + w (eps_c - eps_u), the unconditional condition being an all-zero scan;
3. keep r < 50 m and mean_z - 2 std_z < z < max_z of x_init;
4. the refinement net adds 6 offsets per point (x6 points).

Work that depends only on the scan is done once per scene, not once per network call: the
scan encoder runs once for the condition, and the unconditional encoding (of a constant cloud)
once per Completer; the two guidance branches share the voxelisation, the stem and the kernel
maps of x_t; every BatchNorm is folded into the convolution before it. `Shortcuts` turns each
of these off for benchmarks; outputs stay equal (to float rounding). `completion.precision: bf16`
is not a shortcut but an approximation: bfloat16 convolutions in the denoiser and refiner.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .clouds import crop_range, valid_rows
from .config import CompletionConfig, Config
from .diffusion import SAMPLERS, guide, inference_timesteps, schedule_from_config, start_noise_scale
from .completion import Completion, Shortcuts, StageClock
from .fps import farthest_point_sample
from .loading import completion_settings, resolve_device

# What each kind of denoiser was trained and evaluated with (DDPO Sec. 5; LiDiff config.yaml).
DEFAULTS = {"student": {"steps": 8, "guidance_scale": 3.5}, "teacher": {"steps": 50, "guidance_scale": 6.0}}


def clean_input(points) -> tuple[np.ndarray, int]:
    """(N, 3|4) float array -> (valid xyz rows as float32, rows dropped as non-finite or all-zero)."""
    if not isinstance(points, np.ndarray):
        raise ValueError(f"points must be a numpy array, got {type(points).__name__}")
    if points.ndim != 2 or points.shape[1] not in (3, 4):
        raise ValueError(f"points must have shape (N, 3) or (N, 4), got {points.shape}")
    if points.dtype.kind != "f":
        raise ValueError(f"points must be floating point (float32/float64), got dtype {points.dtype}")
    xyz, dropped = valid_rows(points[:, :3])
    return np.ascontiguousarray(xyz, dtype=np.float32), dropped


class Completer:
    """Scene completion with a LiDiff-style denoiser (teacher or Distillation-DPO student).

    `complete(points)` takes the scan as numpy (N, 3) or (N, 4) in the sensor frame (metres)
    and returns a `Completion`. Settings come from `config.completion`; `steps`, `refine`,
    `guidance_scale` and `seed` can be overridden per call.
    """

    def __init__(self, encoder, denoiser, refiner, config: Config, *, kind: str = "student",
                 device: str | torch.device = "cpu", shortcuts: Shortcuts | None = None):
        if kind not in DEFAULTS:
            raise ValueError(f"kind must be one of {list(DEFAULTS)}, got {kind!r}")
        self.device = resolve_device(device)
        # No networks at all is allowed: then every `complete` must bring its own `denoise`.
        self.encoder = encoder.eval().to(self.device) if encoder is not None else None
        self.denoiser = denoiser.eval().to(self.device) if denoiser is not None else None
        self.refiner = refiner.eval().to(self.device) if refiner is not None else None
        self.config = config
        self.kind = kind
        self.schedule = schedule_from_config(config.diffusion)
        self.shortcuts = shortcuts or Shortcuts()
        self._uncond = None  # encoder output of the all-zero scan (a constant)
        self._inference = (None, {})  # (what they were built for, the networks the stages run)

    @classmethod
    def from_checkpoint(cls, path, device: str | torch.device = "cpu", completion: CompletionConfig | None = None,
                        **kwargs) -> "Completer":
        """Networks from a ddpo_ros weights file (`ddpo convert` makes one from LiDiff/DDPO .ckpt)
        or from a Checkpoint already loaded."""
        from .checkpoint import Checkpoint, CheckpointError, build_models, load_checkpoint

        ckpt = path if isinstance(path, Checkpoint) else load_checkpoint(path)
        path = ckpt.path or path
        config = replace(ckpt.config, completion=completion) if completion is not None else ckpt.config
        choice = config.completion.denoiser
        kind = choice if choice != "auto" else ("student" if "student" in ckpt.roles else "teacher")
        missing = [r for r in ("encoder", kind) if r not in ckpt.roles]
        if missing:
            raise CheckpointError(f"{path}: a completion needs roles {missing}, the file has {list(ckpt.roles)}")
        roles = ["encoder", kind] + (["refiner"] if "refiner" in ckpt.roles else [])
        models = build_models(ckpt, roles, device="cpu")
        return cls(models["encoder"], models[kind], models.get("refiner"), config, kind=kind, device=device,
                   **kwargs)

    def configure(self, **overrides) -> None:
        """Change settings between scenes (CompletionConfig fields, e.g. steps=4, refine=False);
        the same rules as the weights' `completion:` section (loading.completion_settings)."""
        self.config = replace(self.config, completion=completion_settings(self.config.completion, overrides))

    def clear_cache(self) -> None:
        """Forget the unconditional encoding and the folded networks (call it after changing weights)."""
        self._uncond = None
        self._inference = (None, {})

    def _nets(self) -> dict:
        """The networks the stages run: BatchNorm-folded copies (in `completion.precision`), or
        the given modules themselves with `fold_batchnorm` off. Built on first use and again
        whenever the modules, the shortcut or the precision change."""
        precision = self.config.completion.precision
        given = {"encoder": self.encoder, "denoiser": self.denoiser, "refiner": self.refiner}
        key = (self.shortcuts.fold_batchnorm, precision, *map(id, given.values()))
        if self._inference[0] != key:
            if not self.shortcuts.fold_batchnorm and precision != "fp32":
                raise ValueError(f"completion.precision {precision!r} needs the fold_batchnorm shortcut")
            nets = given
            if self.shortcuts.fold_batchnorm:
                from .sparse.fused import fuse_for_inference
                # The encoder runs once per scene: it stays float32 whatever the precision.
                nets = {name: None if net is None else
                        fuse_for_inference(net, "fp32" if name == "encoder" else precision)
                        for name, net in given.items()}
            self._inference = (key, nets)
            self._uncond = None
        return self._inference[1]

    # -- settings ---------------------------------------------------------------------------
    @property
    def default_steps(self) -> int:
        return self.config.completion.steps or DEFAULTS[self.kind]["steps"]

    @property
    def default_guidance(self) -> float:
        g = self.config.completion.guidance_scale
        return DEFAULTS[self.kind]["guidance_scale"] if g is None else g

    @property
    def min_points(self) -> int:
        """Points needed within min_range..max_range for one completion."""
        return self.config.completion.num_points

    # -- stages -----------------------------------------------------------------------------
    def preprocess(self, points) -> tuple[np.ndarray, dict[str, int]]:
        """Scan -> the `num_points` farthest-point samples within the range band (float32)."""
        c = self.config.completion
        xyz, invalid = clean_input(points)
        counts = {"input": len(points), "invalid": invalid}
        if len(xyz) == 0:
            raise ValueError(f"the cloud has no valid points ({len(points)} rows, {invalid} non-finite or all-zero)")
        kept = crop_range(xyz, c.min_range, c.max_range)
        counts["in_range"] = len(kept)
        if len(kept) < c.num_points:
            raise ValueError(f"{len(kept)} points lie within {c.min_range}-{c.max_range} m "
                             f"({len(xyz)} finite), fewer than the {c.num_points} the model samples "
                             "(completion.num_points)")
        partial = kept[farthest_point_sample(kept, c.num_points)]
        counts["sampled"] = len(partial)
        return partial, counts

    def _encode(self, partial: Tensor):
        return self._nets()["encoder"](partial)

    def _uncond_encoding(self, partial: Tensor):
        """LiDiff's unconditional input: the all-zero scan. Its encoding never changes."""
        if not self.shortcuts.encoder_once:
            return self._encode(torch.zeros_like(partial))
        if self._uncond is None:
            self._uncond = self._encode(torch.zeros_like(partial))
        return self._uncond

    def _denoise_fn(self, x_init: Tensor, partial: Tensor, guidance: float):
        """eps(offset, t) with classifier-free guidance; the state is the offset from x_init."""
        den, sc = self._nets()["denoiser"], self.shortcuts
        den.per_voxel_mlps, den.brute_force_match = not sc.grouped_mlps, not sc.lattice_match
        cond = self._encode(partial) if sc.encoder_once else None
        uncond = self._uncond_encoding(partial) if sc.encoder_once and guidance != 1.0 else None

        def denoise(offset: Tensor, t: int) -> Tensor:
            x_t = x_init + offset
            steps = torch.full((1,), t, dtype=torch.long, device=self.device)
            c = cond if cond is not None else self._encode(partial)
            if guidance == 1.0:
                return den(x_t, c, steps)
            u = uncond if uncond is not None else self._uncond_encoding(partial)
            if sc.shared_branches:
                eps_c, eps_u = den.forward_branches(x_t, [c, u], steps)
            else:
                eps_c, eps_u = den(x_t, c, steps), den(x_t, u, steps)
            return guide(eps_c, eps_u, guidance)
        return denoise

    def postprocess(self, scene: Tensor, x_init: Tensor) -> Tensor:
        """Keep r < max_range and mean_z - 2 std_z < z < max_z, statistics of x_init (LiDiff)."""
        z = x_init[:, 2].double()
        max_z, min_z = z.max(), z.mean() - 2.0 * z.std()  # torch.std: unbiased, as the reference
        r = scene.norm(dim=1)
        keep = (r < self.config.completion.max_range) & (scene[:, 2] < max_z) & (scene[:, 2] > min_z)
        return scene[keep]

    def refine(self, coarse: Tensor) -> Tensor:
        """The refinement net's offsets: each point becomes refine_up_factor points."""
        offsets = self._nets()["refiner"](coarse[None])[0]  # (K, up, 3)
        return (coarse[:, None, :] + offsets).reshape(-1, 3)

    # -- the whole scene ----------------------------------------------------------------------
    @torch.no_grad()
    def complete(self, points, *, steps: int | None = None, refine: bool | None = None,
                 guidance_scale: float | None = None, seed: int | None = None,
                 denoise: Callable[[Tensor, int], Tensor] | None = None) -> Completion:
        """Complete one scan. Raises ValueError for input the model cannot use.

        `denoise(x_t, t) -> eps` replaces the networks (no encoder, no guidance): x_t is the
        absolute (1, N, 3) state, as the denoiser sees it. The ideal denoiser of a known ground
        truth (training/oracle.py) runs through every other stage of the real pipeline this way.
        """
        c = self.config.completion
        steps = self.default_steps if steps is None else int(steps)
        guidance = self.default_guidance if guidance_scale is None else float(guidance_scale)
        refine = c.refine if refine is None else bool(refine)
        seed = c.seed if seed is None else seed
        if refine and self.refiner is None:
            raise ValueError("refine requested but the weights have no refiner (pass refine=False)")
        if denoise is None and self.denoiser is None:
            raise ValueError("this Completer has no networks: pass denoise=")
        try:  # validates steps against completion.start_t
            timesteps = inference_timesteps(self.schedule, steps, c.start_t)
        except ValueError as e:
            raise ValueError(f"completion.steps / completion.start_t: {e}") from None
        generator = torch.Generator().manual_seed(seed) if seed is not None else None

        clock = StageClock(self.device)
        partial_np, counts = self.preprocess(points)
        partial = torch.from_numpy(partial_np).to(self.device)[None]
        x_init = partial.repeat(1, c.replication, 1)  # tiled, as LiDiff's scan.repeat(10, 1)
        noise = torch.randn(x_init.shape, generator=generator).to(self.device)
        if c.start_t is not None:  # x_init + sigma_start eps (reference: x_init + eps at T-1)
            noise = noise * start_noise_scale(self.schedule, c.start_t)
        clock.mark("preprocess")

        if denoise is None:
            denoise = self._denoise_fn(x_init, partial, guidance)
        else:
            given, guidance = denoise, 1.0

            def denoise(offset: Tensor, t: int) -> Tensor:
                return given(x_init + offset, t)
        clock.mark("encoder")
        sampler = SAMPLERS[c.sampler]
        extra = {"final": c.final_sigma} if c.sampler != "ddpm" else {}  # every dpmsolver variant takes it
        offset = sampler(denoise, noise, timesteps, self.schedule, generator=generator,
                         callback=lambda i, t, x, x0: clock.mark(f"step {i + 1} (t={t})"), **extra)

        coarse = self.postprocess((x_init + offset)[0], x_init[0])
        counts.update(diffused=x_init.shape[1], coarse=len(coarse))
        clock.mark("postprocess")
        out = coarse
        if refine and len(coarse):
            out = self.refine(coarse)
            clock.mark("refine")
        counts["output"] = len(out)
        return Completion(out.float().cpu().numpy(), coarse.float().cpu().numpy(), partial_np,
                          clock.finish(), counts, steps, guidance, seed)

    def warmup(self, steps: int = 1) -> Completion:
        """One completion of a synthetic ring of points, so the first real scan is not the slow one."""
        rng = np.random.default_rng(0)
        c = self.config.completion
        n = c.num_points + 1
        radius = rng.uniform(c.min_range + 0.5, c.max_range - 0.5, n)
        angle = rng.uniform(-np.pi, np.pi, n)
        ring = np.stack([radius * np.cos(angle), radius * np.sin(angle), rng.normal(-1.5, 0.3, n)], 1)
        return self.complete(ring.astype(np.float32), steps=steps, seed=0,
                             refine=self.refiner is not None and c.refine)


__all__ = ["Completer", "Completion", "Shortcuts", "clean_input"]
