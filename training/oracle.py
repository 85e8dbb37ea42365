"""The ideal denoiser of a scene whose ground truth is known: the ceiling of LiDiff's formulation.

Training noises ground-truth points, x_t = x_0 + sigma_t eps (DDPO Eq. 1) with x_0 drawn from the
scene's ground truth G (shuffled and tiled), and regresses eps. Per point, the minimiser of that
loss is the posterior mean (Tweedie):

    p(x_0 = g | x_t) ~ exp(-|x_t - g|^2 / (2 sigma_t^2)),   eps*(x_t) = (x_t - E[x_0 | x_t]) / sigma_t.

No network trained with this loss on this scene can do better per point, so a completion driven
by eps* (through the real Completer: same x_init, sampler and post-processing) is the best any
teacher trained to the loss's optimum would produce, and its noise MSE per t is the floor of any teacher's.

The sum runs over every ground-truth point whose weight is at least exp(-cutoff^2 / 2) of the
nearest one's (a k-d tree ball of radius sqrt(d_nearest^2 + (cutoff sigma)^2)). Once sigma is
large against the point spacing (at t = 999 a 4 sigma ball holds thousands of points of each
surface), points are first merged into cubes of side sigma / 4 to sigma / 2 that carry their
count and centroid; the first-order error of that cancels at the centroid. Against the exact sum
over every point (test/test_oracle.py) the error is below 0.5% of sigma on average and 10% at
worst (at t = 999, in the tails of the Gaussian).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from ddpo_ros.diffusion import Schedule, add_local_noise


def _merge(points: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (K, 3), counts (K,)) of the points in each occupied cube of side `cell`."""
    keys = np.floor(points / cell).astype(np.int64)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    sums = np.zeros((len(counts), 3))
    np.add.at(sums, inverse, points)
    return sums / counts[:, None], counts.astype(np.float64)


class OracleDenoiser:
    """eps*(x_t, t) for ground truth `gt` (M, 3); call it as the Completer's `denoise(x_t, t)`.

    cutoff: neighbours farther than cutoff * sigma are ignored; cell_fraction: points are merged
    into cubes of side cell_fraction * sigma once that exceeds `min_cell` (0: never merge).
    """

    def __init__(self, gt, schedule: Schedule, *, cutoff: float = 4.0, cell_fraction: float = 0.5,
                 min_cell: float = 0.05, max_neighbours: int = 4096, chunk: int = 4096,
                 pair_budget: int = 2_000_000):
        gt = np.asarray(gt, dtype=np.float64)[:, :3]
        if gt.ndim != 2 or len(gt) == 0 or not np.isfinite(gt).all():
            raise ValueError(f"ground truth must be a non-empty finite (M, 3) array, got shape {gt.shape}")
        self.gt, self.schedule = gt, schedule
        self.cutoff, self.cell_fraction, self.min_cell = cutoff, cell_fraction, min_cell
        self.max_neighbours, self.chunk, self.pair_budget = max_neighbours, chunk, pair_budget
        self._levels: dict[float, tuple[cKDTree, np.ndarray, np.ndarray]] = {}
        self.truncated = 0  # queries whose ball held more than max_neighbours points (nearest kept)

    def _level(self, sigma: float):
        """(tree, centroids, counts) at the merge level for sigma; cells are powers of two of min_cell."""
        cell = 0.0
        if self.cell_fraction > 0 and self.cell_fraction * sigma > self.min_cell:
            cell = self.min_cell * 2.0 ** math.floor(math.log2(self.cell_fraction * sigma / self.min_cell))
        if cell not in self._levels:
            pts, counts = (self.gt, np.ones(len(self.gt))) if cell == 0.0 else _merge(self.gt, cell)
            self._levels[cell] = (cKDTree(pts), pts, counts)
        return self._levels[cell]

    def posterior_mean(self, x: np.ndarray, sigma: float) -> np.ndarray:
        """E[x_0 | x_t = x] for (N, 3) float64 queries at noise std sigma."""
        tree, pts, counts = self._level(sigma)
        # Relative to each query's nearest point: every point whose weight is at least
        # exp(-cutoff^2 / 2) of the largest one (a point 2 sigma off a surface still sees all of it).
        nearest = tree.query(x, k=1, workers=-1)[0]
        radius = np.sqrt(nearest ** 2 + (self.cutoff * sigma) ** 2)
        out = np.empty_like(x)
        counts_all = tree.query_ball_point(x, radius, return_length=True, workers=-1)
        k_all = int(min(max(counts_all.max(), 1), self.max_neighbours, len(pts)))
        chunk = max(16, min(self.chunk, self.pair_budget // k_all))  # rows x k pairs held at once
        for lo in range(0, len(x), chunk):
            q, n, r = x[lo:lo + chunk], counts_all[lo:lo + chunk], radius[lo:lo + chunk]
            k = int(min(max(n.max(), 1), self.max_neighbours, len(pts)))
            self.truncated += int((n > k).sum())
            d, i = tree.query(q, k=k, distance_upper_bound=r.max(), workers=-1)
            d, i = d.reshape(len(q), k), i.reshape(len(q), k)
            valid = (i < len(pts)) & (d <= r[:, None])  # beyond: distance inf, index len(pts)
            i = np.where(valid, i, 0)
            d2 = np.where(valid, d, np.inf) ** 2
            logw = -(d2 - d2[:, :1]) / (2.0 * sigma * sigma)  # nearest first: stable exponent
            w = np.exp(logw) * counts[i] * valid
            out[lo:lo + chunk] = np.einsum("nk,nkc->nc", w, pts[i]) / w.sum(1, keepdims=True)
        return out

    def eps(self, x_t: np.ndarray, t: int) -> np.ndarray:
        sigma = float(self.schedule.sigma(int(t)))
        return (x_t - self.posterior_mean(x_t, sigma)) / sigma

    def __call__(self, x_t: Tensor, t: int) -> Tensor:
        """The Completer's `denoise`: (1, N, 3) or (N, 3) tensor in, eps of the same shape out."""
        flat = x_t.detach().reshape(-1, 3).double().cpu().numpy()
        return torch.from_numpy(self.eps(flat, t)).to(x_t).reshape(x_t.shape)


# A coarser ideal denoiser than the oracle study's (cutoff 4, cubes of sigma / 2) for training targets
# (training/rollout.py) and the real score (training/distill.IdealScore): 3-5x faster (0.5-1.0 s for
# 40,000 points on a 2-core Xeon) and 0.013 RMS from it in eps, squared 2e-4, against the teacher's
# 0.02-0.35 squared error that it is to correct (held-out synthetic scene, t = 125-999).
TARGET_ORACLE = {"cutoff": 3.0, "cell_fraction": 1.0}


def noise_mse(eps_fn, gt: Tensor, t: int, schedule: Schedule, generator: torch.Generator,
              repeats: int = 1) -> float:
    """E|eps_fn(x_t, t) - eps|^2 per coordinate for x_t = gt + sigma_t eps (the training loss at t).

    eps_fn((1, N, 3), t) -> (1, N, 3): a trained denoiser with its condition bound, or the oracle.
    1.0 is the error of predicting zero noise.
    """
    total = 0.0
    for _ in range(repeats):
        noise = torch.randn(gt.shape, generator=generator, dtype=gt.dtype)
        x_t = add_local_noise(schedule, gt[None], torch.tensor([t]), noise[None])
        total += float((eps_fn(x_t, t)[0] - noise).pow(2).mean())
    return total / repeats


__all__ = ["OracleDenoiser", "TARGET_ORACLE", "noise_mse"]
