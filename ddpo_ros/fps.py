"""Exact farthest-point sampling, the same selection as Open3D's `farthest_point_down_sample`.

LiDiff picks its 18,000 scan points with Open3D: start at point 0, then repeatedly take the
point whose squared distance (float64) to the chosen set is largest, the first such point on a
tie; the result is returned in input order. A direct implementation costs O(N M) distance
updates (about 2.2e9 for a KITTI scan), so this one does the same selection with far less work:

- A new pick s can only lower the distance of points closer to s than the current largest
  distance R (every distance is <= R^2). Points are sorted by x, so those candidates lie in
  one contiguous slab |x - s_x| < R found by binary search; only the slab is updated.
- The largest distance is kept per block of 256 sorted points; after an update only the
  blocks the slab touched are re-reduced, and the global argmax reads the block maxima.

Exact ties are resolved to the lowest input index, as Open3D's strict `>` scan does, and a
maximum of zero (all points already chosen) keeps the previous pick, as Open3D does too.
"""
from __future__ import annotations

import numpy as np

_BLOCK = 256


def farthest_point_sample(points: np.ndarray, num_samples: int) -> np.ndarray:
    """Indices (ascending) of `num_samples` farthest-point samples of `points` (N, >=3)."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be (N, 3+), got shape {points.shape}")
    n = len(points)
    if not 0 <= num_samples <= n:
        raise ValueError(f"cannot take {num_samples} farthest points from a cloud of {n}")
    if num_samples == n:
        return np.arange(n)
    if num_samples == 0:
        return np.zeros(0, dtype=np.int64)

    order = np.argsort(points[:, 0], kind="stable")  # sorted position -> input index
    xyz = points[order, :3].astype(np.float64)
    x, y, z = (np.ascontiguousarray(xyz[:, k]) for k in range(3))
    blocks = -(-n // _BLOCK)
    dist = np.full(blocks * _BLOCK, -np.inf)  # padding never wins an argmax
    dist[:n] = np.inf
    block_max = np.full(blocks, np.inf)
    position = np.empty(n, dtype=np.int64)  # input index -> sorted position
    position[order] = np.arange(n)

    chosen = np.empty(num_samples, dtype=np.int64)
    cur = int(position[0])  # Open3D starts at input point 0
    radius = np.inf
    for i in range(num_samples):
        chosen[i] = cur
        sx, sy, sz = x[cur], y[cur], z[cur]
        if np.isinf(radius):
            lo, hi = 0, n
        else:  # the slab |x - sx| <= R, one binary search each side (inclusive: no rounding loss)
            lo = int(np.searchsorted(x, sx - radius, side="left"))
            hi = int(np.searchsorted(x, sx + radius, side="right"))
        dx, dy, dz = x[lo:hi] - sx, y[lo:hi] - sy, z[lo:hi] - sz
        np.minimum(dist[lo:hi], dx * dx + dy * dy + dz * dz, out=dist[lo:hi])
        b0, b1 = lo // _BLOCK, -(-hi // _BLOCK)
        block_max[b0:b1] = dist[b0 * _BLOCK:b1 * _BLOCK].reshape(-1, _BLOCK).max(axis=1)

        best_block = int(block_max.argmax())
        top = block_max[best_block]
        if top <= 0.0:  # every point is a pick already: Open3D keeps the previous one
            continue
        block = dist[best_block * _BLOCK:(best_block + 1) * _BLOCK]
        nxt = best_block * _BLOCK + int(block.argmax())
        if np.count_nonzero(block_max == top) > 1 or np.count_nonzero(block == top) > 1:
            ties = np.flatnonzero(dist[:n] == top)  # rare: lowest input index wins
            nxt = int(ties[np.argmin(order[ties])])
        cur, radius = nxt, float(np.sqrt(top)) * (1.0 + 1e-9)  # margin for sqrt rounding
    return np.sort(order[chosen])


def farthest_point_sample_reference(points: np.ndarray, num_samples: int) -> np.ndarray:
    """Open3D's loop written out directly (O(N M)); the test oracle for `farthest_point_sample`."""
    xyz = np.asarray(points)[:, :3].astype(np.float64)
    n = len(xyz)
    if num_samples == n:
        return np.arange(n)
    dist = np.full(n, np.inf)
    chosen, cur = [], 0
    for _ in range(num_samples):
        chosen.append(cur)
        d = xyz - xyz[cur]
        np.minimum(dist, d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2], out=dist)
        j = int(dist.argmax())  # numpy's argmax returns the first maximum, like Open3D's strict >
        if dist[j] > 0.0:
            cur = j
    return np.sort(np.asarray(chosen, dtype=np.int64))
