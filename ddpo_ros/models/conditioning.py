"""Conditioning of the denoiser: time embedding and the voxel -> encoder-voxel 1-NN match.

LiDiff finds, for every voxel of the denoiser's tensor, the nearest voxel of the scan encoder's
stride-16 output with a pykeops brute-force argKmin. `nearest_voxel` gives the same exact
1-NN in plain torch without the (n x m) distance matrix: encoder voxels sit on a lattice of
spacing `lattice`, so a query only has to look at lattice cells in growing rings around its
own cell until no unvisited cell can hold a closer voxel; once the open queries are few enough
that comparing them with every candidate is cheaper than another ring, a chunked brute force
finishes them. Ties go to the encoder voxel
with the lexicographically smallest (batch, x, y, z), so the result never depends on row order.
Unlike LiDiff's batch-column hashing, voxels only ever match voxels of their own batch element.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..sparse import native
from ..sparse.coords import kernel_offsets, pack, unique_keys

_BRUTE_FORCE_PAIRS = 1 << 22  # below n * m pairs, the direct search is cheaper than rings
_CHUNK_PAIRS = 1 << 22        # pairs per brute-force chunk (int64: 32 MiB per chunk)
_UNSET = torch.iinfo(torch.long).max


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding (DDPM/Transformer): [sin(t f_i), cos(t f_i)], f_i = 10000^(-i/(dim/2-1))."""
    half = dim // 2
    # float64 frequencies cast to float32, then multiplied by the integer step, as LiDiff does.
    freqs = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000) / (half - 1)))
    args = t.reshape(-1, 1).float() * freqs.float().to(t.device)[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


def _ring(r: int) -> Tensor:
    """Lattice offsets at Chebyshev distance exactly r."""
    offs = torch.tensor(kernel_offsets(2 * r + 1))
    return offs[offs.abs().amax(1) == r]


def _brute_force(query: Tensor, cand: Tensor, best: Tensor, rows: Tensor) -> None:
    """Exact search over all candidates of the same batch element, in bounded chunks.

    Squared distances of integer coordinates come from one matmul in float64 (|q|^2 + |c|^2 -
    2 q.c), which is exact while coordinates stay below 2^20 (52 km at 5 cm); beyond that the
    plain int64 difference is used.
    """
    m = len(cand)
    exact_float = bool(query[rows, 1:].abs().max() < (1 << 20)) and bool(cand[:, 1:].abs().max() < (1 << 20))
    for b in torch.unique(query[rows, 0]).tolist():
        q_rows = rows[query[rows, 0] == b]
        c_rows = torch.nonzero(cand[:, 0] == b).flatten()
        if len(c_rows) == 0:
            raise ValueError(f"batch element {b} has no conditioning voxels")
        chunk = max(1, _CHUNK_PAIRS // len(c_rows))
        c = cand[c_rows, 1:]
        if exact_float:
            c = c.double()
            c_sq = (c * c).sum(1)
        for q_chunk in torch.split(q_rows, chunk):
            q = query[q_chunk, 1:]
            if exact_float:
                q = q.double()
                d2 = torch.addmm(c_sq[None], q, c.T, alpha=-2.0).add_((q * q).sum(1, keepdim=True))
                key = d2.mul_(m).add_(c_rows.double()[None]).amin(1).long()
            else:
                key = (((q[:, None] - c[None]) ** 2).sum(-1) * m + c_rows[None]).amin(1)
            best[q_chunk] = key


def nearest_voxel(query: Tensor, cand: Tensor, lattice: int, max_ring: int = 64,
                  brute_force_below: int = _BRUTE_FORCE_PAIRS) -> Tensor:
    """Index into `cand` of the nearest candidate (squared Euclidean) for each row of `query`.

    query: (n, 4) long (batch, x, y, z); cand: (m, 4) long with x, y, z multiples of `lattice`.
    """
    n, m = len(query), len(cand)
    if m == 0:
        raise ValueError("no conditioning voxels to match against")
    order = torch.argsort(pack(cand))  # lexicographic rank = tie-break order
    rank = torch.empty_like(order)
    rank[order] = torch.arange(m, device=order.device)
    best = native.nearest_lattice(query, cand, rank, lattice)
    if best is not None:  # the compiled twin of what follows (CPU)
        if len(best) and int(best.min()) < 0:
            raise ValueError(f"batch element {int(query[best.argmin(), 0])} has no conditioning voxels")
        return best
    cand = cand[order]
    best = torch.full((n,), _UNSET, dtype=torch.long, device=query.device)
    if n * m <= brute_force_below:
        _brute_force(query, cand, best, torch.arange(n, device=query.device))
        return order[best % m]

    half = lattice // 2
    base = torch.cat([query[:, :1], torch.div(query[:, 1:] + half, lattice, rounding_mode="floor")], 1)
    packed_cells, inverse, first = unique_keys(pack(base))
    counts = torch.bincount(inverse, minlength=len(packed_cells))
    cells = base[first]
    by_cell = torch.argsort(inverse, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    cand_cells = torch.cat([cand[:, :1], torch.div(cand[:, 1:], lattice, rounding_mode="floor")], 1)
    # One packing for candidate cells and all ring cells we may probe.
    pad = torch.tensor([0, max_ring, max_ring, max_ring], device=query.device)
    lo = torch.minimum(cells.min(0).values - pad, cand_cells.min(0).values)
    ext = torch.maximum(cells.max(0).values + pad, cand_cells.max(0).values) - lo + 1

    def key(c: Tensor) -> Tensor:
        g = c - lo
        return ((g[:, 0] * ext[1] + g[:, 1]) * ext[2] + g[:, 2]) * ext[3] + g[:, 3]

    cand_keys = key(cand_cells)  # lattice points are unique per batch, so keys are unique
    sorted_keys, sorted_rank = torch.sort(cand_keys)
    cell_keys = key(cells)
    # The key is linear in the cell, so a probe's key is the cell's key plus the offset's key.
    axis_step = torch.stack([ext[2] * ext[3], ext[3], torch.ones_like(ext[3])])
    active = torch.arange(len(cells), device=query.device)
    for r in range(max_ring + 1):
        ring = _ring(r).to(query.device)
        probe_keys = (cell_keys[active, None] + (ring * axis_step).sum(1)[None]).reshape(-1)
        pos = torch.searchsorted(sorted_keys, probe_keys).clamp_(max=m - 1)
        hit = sorted_keys[pos] == probe_keys
        hit_cell = active.repeat_interleave(len(ring))[hit]
        hit_cand = sorted_rank[pos[hit]]
        # Expand each (cell, candidate) hit to the queries of that cell.
        n_q = counts[hit_cell]
        pair_cand = hit_cand.repeat_interleave(n_q)
        first = starts[hit_cell].repeat_interleave(n_q)
        within = torch.arange(len(pair_cand), device=query.device) - (torch.cumsum(n_q, 0) - n_q).repeat_interleave(n_q)
        pair_q = by_cell[first + within]
        d2 = ((query[pair_q, 1:] - cand[pair_cand, 1:]) ** 2).sum(1)
        best.scatter_reduce_(0, pair_q, d2 * m + pair_cand, "amin")
        # Unvisited lattice points are at least (r + 1/2) * lattice away in some axis.
        final = (best != _UNSET) & (4 * (best // m) < ((2 * r + 1) * lattice) ** 2)
        open_cells = torch.zeros(len(cells), dtype=torch.bool, device=query.device)
        open_cells[inverse[~final]] = True
        active = torch.nonzero(open_cells).flatten()
        if len(active) == 0:
            return order[best % m]
        # The next ring probes 24 (r+1)^2 + 2 cells per open cell; the direct search costs one
        # distance per (open query, candidate) pair, ~16x cheaper than a probe. Take the cheaper.
        if int(counts[active].sum()) * m <= 16 * len(active) * (24 * (r + 1) ** 2 + 2):
            break
    rest = torch.nonzero(~final).flatten()
    _brute_force(query, cand, best, rest)
    return order[best % m]


class ConditionMatcher:
    """Nearest encoder voxel of every voxel of a tensor; one search per coordinate set."""

    def __init__(self, sp, cond, lattice: int, brute_force: bool = False):
        self.sp = sp
        self.brute_force = brute_force  # all-pairs search (LiDiff's way; for benchmarks)
        self.coords = sp.coords(cond)
        self.features = cond.F
        self.batch = self.coords[:, 0]
        self.lattice = lattice  # the encoder output's tensor stride
        self._cache: dict = {}

    def __call__(self, x) -> Tensor:
        """Row of the encoder output matched to each voxel of `x`."""
        key = self.sp.coordinate_key(x)
        if key not in self._cache:
            below = torch.iinfo(torch.long).max if self.brute_force else _BRUTE_FORCE_PAIRS
            self._cache[key] = nearest_voxel(self.sp.coords(x), self.coords, self.lattice, brute_force_below=below)
        return self._cache[key]
