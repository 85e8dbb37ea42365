"""What a completion returns (`Completion`), the exact shortcuts it may take (`Shortcuts`) and
the clock that times its stages: the Completer's vocabulary, shared by every front end."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Shortcuts:
    """Exact savings over the straightforward evaluation; all on by default."""

    encoder_once: bool = True      # encode the scan once per scene (LiDiff: twice per step)
    shared_branches: bool = True   # cond/uncond share voxelisation, stem and kernel maps of x_t
    grouped_mlps: bool = True      # conditioning MLPs on encoder voxels, then gathered
    lattice_match: bool = True     # 1-NN to encoder voxels by lattice rings, not all pairs
    fold_batchnorm: bool = True    # eval-mode BatchNorm folded into the convolution before it

    @classmethod
    def none(cls) -> "Shortcuts":
        return cls(False, False, False, False, False)


@dataclass
class Completion:
    """One completed scene and how it was made."""

    points: np.ndarray                 # (M, 3) float32: refined scene (or the coarse one without refine)
    coarse: np.ndarray                 # (K, 3) float32: the diffusion output after the range/z crop
    partial: np.ndarray                # (num_points, 3) float32: the sampled scan points
    timings: dict[str, float]          # seconds per stage, in order, and "total"
    counts: dict[str, int]             # input, invalid, in_range, sampled, diffused, coarse, output
    steps: int
    guidance_scale: float
    seed: int | None = None


class StageClock:
    """Stage timer that waits for the device before reading the clock."""

    def __init__(self, device: torch.device):
        self.device = device
        self.timings: dict[str, float] = {}
        self.start = self.last = time.perf_counter()

    def mark(self, stage: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[stage] = now - self.last
        self.last = now

    def finish(self) -> dict[str, float]:
        self.timings["total"] = self.last - self.start
        return self.timings


def stage_table(timings: dict[str, float]) -> str:
    """Per-stage timings as aligned text lines (the CLI and the demo print this)."""
    width = max(len(k) for k in timings)
    return "\n".join(f"  {k:<{width}}  {v * 1000:9.1f} ms" for k, v in timings.items())
