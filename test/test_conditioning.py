"""Exact 1-NN conditioning match and time embedding."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import kernels
from ddpo_ros.models.conditioning import nearest_voxel, timestep_embedding


def brute_force(query, cand):
    """All pairs; ties go to the lexicographically smallest candidate (batch, x, y, z)."""
    out = []
    lex = np.lexsort(cand.numpy().T[::-1])
    rank = np.empty(len(cand), dtype=np.int64)
    rank[lex] = np.arange(len(cand))
    for q in query.numpy():
        same = np.nonzero(cand[:, 0].numpy() == q[0])[0]
        d2 = ((cand[same, 1:].numpy() - q[1:]) ** 2).sum(1)
        best = same[d2 == d2.min()]
        out.append(best[np.argmin(rank[best])])
    return torch.tensor(out)


def make_case(seed, lattice, n_query, n_cand, spread, batch):
    gen = torch.Generator().manual_seed(seed)
    cells = torch.randint(-spread, spread + 1, (n_cand, 3), generator=gen)
    cb = torch.randint(0, batch, (n_cand, 1), generator=gen)
    cand = torch.unique(torch.cat([cb, cells * lattice], 1), dim=0)
    cand = cand[torch.randperm(len(cand), generator=gen)]
    qb = cand[torch.randint(0, len(cand), (n_query,), generator=gen), :1]  # only batches that exist
    q = torch.randint(-(spread + 3) * lattice, (spread + 3) * lattice + 1, (n_query, 3), generator=gen)
    # Half of the queries sit on lattice midpoints, where ties are guaranteed.
    q[: n_query // 2] = (q[: n_query // 2] // lattice) * lattice + lattice // 2
    return torch.cat([qb, q], 1), cand


# "native": the compiled kernel answers (it takes every CPU case); the other paths are its torch twin.
@pytest.mark.parametrize("path", ["native", "brute", "rings", "rings+fallback"])
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), lattice=st.sampled_from([2, 4, 16]), spread=st.integers(1, 6),
       batch=st.integers(1, 3))
def test_nearest_voxel_is_exact_with_deterministic_ties(path, seed, lattice, spread, batch):
    query, cand = make_case(seed, lattice, 300, 40, spread, batch)
    with kernels("native" if path == "native" else "torch"):
        got = nearest_voxel(query, cand, lattice, max_ring=0 if path == "rings+fallback" else 2,
                            brute_force_below=10 ** 9 if path == "brute" else 0)
    assert torch.equal(got, brute_force(query, cand))


@pytest.mark.parametrize("mode", ["native", "torch"])
def test_far_queries_fall_back_to_brute_force(mode):
    cand = torch.tensor([[0, 0, 0, 0], [0, 16, 0, 0], [1, 160, 0, 0]])
    query = torch.tensor([[0, 5000, 0, 0], [0, -700, 30, 3], [1, -4000, 0, 0], [0, 9, 0, 0]])
    with kernels(mode):
        assert nearest_voxel(query, cand, 16, brute_force_below=0).tolist() == [1, 0, 2, 1]


@pytest.mark.parametrize("mode", ["native", "torch"])
def test_result_does_not_depend_on_candidate_row_order(mode):
    query, cand = make_case(1, 16, 500, 60, 4, 2)
    perm = torch.randperm(len(cand))
    with kernels(mode):
        a = cand[nearest_voxel(query, cand, 16)]
        b = cand[perm][nearest_voxel(query, cand[perm], 16)]
    assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["native", "torch"])
def test_batch_without_conditioning_is_an_error(mode):
    cand = torch.tensor([[0, 0, 0, 0], [2, 0, 0, 0]])
    with kernels(mode), pytest.raises(ValueError, match="batch element 1"):
        nearest_voxel(torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0]]), cand, 16)
    with kernels(mode), pytest.raises(ValueError, match="no conditioning voxels"):
        nearest_voxel(torch.tensor([[0, 0, 0, 0]]), cand[:0], 16)


def test_off_lattice_candidates_take_the_torch_path():
    """The compiled kernel needs candidates on the lattice; others are answered exactly anyway."""
    query, cand = make_case(3, 16, 200, 30, 3, 1)
    cand[0, 1] += 1
    with kernels("native"):
        assert torch.equal(nearest_voxel(query, cand, 16), brute_force(query, cand))


@pytest.mark.parametrize("mode", ["native", "torch"])
def test_large_real_sized_match_is_exact_and_bounded(mode, scan_xyz):
    """A real scan's stride-16 voxels against 180k noisy points: same answer as chunked brute force."""
    rng = np.random.default_rng(0)
    part = scan_xyz[rng.choice(len(scan_xyz), 18000, replace=False)]
    cand = np.unique(np.floor(np.round(part / 0.05) / 16) * 16, axis=0).astype(np.int64)
    full = np.repeat(part, 10, 0) + rng.normal(0, 0.5, (180000, 3))
    query = np.round(full / 0.05).astype(np.int64)
    q = torch.from_numpy(np.concatenate([np.zeros((len(query), 1), np.int64), query], 1))
    c = torch.from_numpy(np.concatenate([np.zeros((len(cand), 1), np.int64), cand], 1))
    with kernels(mode):
        got = nearest_voxel(q, c, 16)
    check = torch.from_numpy(rng.choice(len(q), 3000, replace=False))
    assert torch.equal(got[check], brute_force(q[check], c))


def test_timestep_embedding_values():
    emb = timestep_embedding(torch.tensor([0, 999]), 96)
    assert emb.shape == (2, 96) and emb.dtype == torch.float32
    assert torch.equal(emb[0, :48], torch.zeros(48)) and torch.equal(emb[0, 48:], torch.ones(48))
    f1 = math.exp(-math.log(10000) / 47)  # second frequency
    assert emb[1, 1].item() == pytest.approx(math.sin(999 * f1), abs=1e-4)
    assert emb[1, 47].item() == pytest.approx(math.sin(999 * 1e-4), abs=1e-6)  # lowest frequency
    assert timestep_embedding(torch.tensor([5]), 7).shape == (1, 7)  # odd dims are zero-padded
