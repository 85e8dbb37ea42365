"""Farthest-point sampling: the fast slab/block version picks exactly what Open3D's loop picks."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ddpo_ros.fps import farthest_point_sample, farthest_point_sample_reference


def test_real_scan_matches_the_direct_loop(scan_xyz):
    # 25k real points (every 5th, spread over the whole scan) and 3,000 picks: a full-size
    # check (122k -> 18k) passed too but takes ~30 s with the direct loop.
    pts = scan_xyz[::5]
    got = farthest_point_sample(pts, 3000)
    assert np.array_equal(got, farthest_point_sample_reference(pts, 3000))
    assert np.all(np.diff(got) > 0) and got[0] == 0  # ascending input order; point 0 always first


def test_picks_are_spread_out(scan_xyz):
    """The defining property: the k-th pick is the farthest point from the first k-1 picks."""
    pts = scan_xyz[::20].astype(np.float64)
    idx = farthest_point_sample(pts, 200)
    kept = pts[idx]
    # Every unpicked point is no farther from the picks than the closest pair of picks allows.
    d_rest = np.min(np.linalg.norm(pts[:, None] - kept[None], axis=2), axis=1).max()
    d_pair = np.linalg.norm(kept[:, None] - kept[None], axis=2) + np.eye(len(kept)) * 1e9
    assert d_rest <= d_pair.min() + 1e-9


@pytest.mark.parametrize("shape", ["grid", "duplicates", "line"])
def test_ties_and_duplicates_resolve_like_open3d(shape):
    rng = np.random.default_rng(1)
    if shape == "grid":  # exact equal distances everywhere
        g = np.arange(6, dtype=np.float32)
        pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)[rng.permutation(216)]
    elif shape == "duplicates":  # fewer distinct points than picks: Open3D repeats its last pick
        pts = np.repeat(rng.normal(size=(7, 3)).astype(np.float32), 5, axis=0)[rng.permutation(35)]
    else:
        pts = np.zeros((50, 3), np.float32)
        pts[:, 0] = rng.integers(0, 10, 50)
    for m in (1, 5, 20, len(pts) - 1):
        assert np.array_equal(farthest_point_sample(pts, m), farthest_point_sample_reference(pts, m)), m


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 300), st.just(3)),
              elements=st.floats(-100, 100, width=32)), st.data())
def test_random_clouds(points, data):
    m = data.draw(st.integers(0, len(points)))
    assert np.array_equal(farthest_point_sample(points, m), farthest_point_sample_reference(points, m))


def test_edges_and_errors():
    pts = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    assert farthest_point_sample(pts, 10).tolist() == list(range(10))
    assert farthest_point_sample(pts, 0).tolist() == []
    with pytest.raises(ValueError, match="cannot take 11"):
        farthest_point_sample(pts, 11)
    with pytest.raises(ValueError, match="shape"):
        farthest_point_sample(pts[:, :2], 3)
