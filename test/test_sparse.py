"""Pure-PyTorch sparse backend against an independent dense reference (torch conv3d).

A sparse convolution on active voxels equals a dense convolution of the zero-filled grid read
at the output voxels, once ME's kernel layout (k = (dx+1) + 3(dy+1) + 9(dz+1), offset =
input - output, weight [k, C_in, C_out]) is mapped to conv3d's [C_out, C_in, kx, ky, kz].
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpo_ros.sparse import CoordinateSet, TorchBackend as sp, kernel_offsets
from ddpo_ros.sparse.coords import pack
from ddpo_ros.sparse.layers import apply_kernel_map
from ddpo_ros.sparse.tensor import points_to_field


def dense_weight(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """ME kernel (k^3, C_in, C_out) -> conv3d weight (C_out, C_in, kx, ky, kz)."""
    w = torch.zeros(kernel.shape[2], kernel.shape[1], k, k, k, dtype=kernel.dtype)
    lo = -((k - 1) // 2) if k % 2 else 0
    for idx, (dx, dy, dz) in enumerate(kernel_offsets(k)):
        w[:, :, dx - lo, dy - lo, dz - lo] = kernel[idx].T
    return w


def to_dense(coords, feats, stride, lo, size):
    """Scatter sparse rows into a (B, C, X, Y, Z) grid in units of `stride`."""
    b = int(coords[:, 0].max()) + 1
    grid = torch.zeros(b, feats.shape[1], *size, dtype=feats.dtype)
    g = (coords[:, 1:] // stride - lo).long()
    grid[coords[:, 0].long(), :, g[:, 0], g[:, 1], g[:, 2]] = feats
    return grid


def read_dense(grid, coords, stride, lo):
    g = (coords[:, 1:] // stride - lo).long()
    return grid[coords[:, 0].long(), :, g[:, 0], g[:, 1], g[:, 2]]


coords_strategy = st.builds(
    lambda seed, half, density, batch: _random_coords(seed, half, density, batch),
    st.integers(0, 10_000), st.integers(1, 5), st.floats(0.05, 0.9), st.integers(1, 3))


def _random_coords(seed, half, density, batch):
    gen = torch.Generator().manual_seed(seed)
    axis = torch.arange(-half, half + 1)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    rows = []
    for b in range(batch):
        keep = torch.rand(len(grid), generator=gen) < density
        keep[torch.randint(len(grid), (1,), generator=gen)] = True  # never empty
        rows.append(torch.cat([torch.full((int(keep.sum()), 1), b), grid[keep]], 1))
    c = torch.cat(rows)
    return c[torch.randperm(len(c), generator=gen)]


def test_kernel_offsets_follow_minkowski_order():
    offs = kernel_offsets(3)
    assert offs[0] == (-1, -1, -1) and offs[1] == (0, -1, -1) and offs[3] == (-1, 0, -1)
    assert offs[13] == (0, 0, 0) and offs[14] == (1, 0, 0) and offs[22] == (0, 0, 1)
    assert kernel_offsets(2) == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0),
                                 (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1)]
    assert kernel_offsets(1) == [(0, 0, 0)]
    with pytest.raises(ValueError):
        kernel_offsets(0)


def test_pack_is_lexicographic_and_injective():
    c = _random_coords(3, 4, 0.5, 3)
    keys = pack(c)
    assert len(torch.unique(keys)) == len(c)
    order = torch.argsort(keys)
    lex = np.lexsort(c.numpy().T[::-1])
    assert torch.equal(order, torch.from_numpy(lex))


def test_find_reports_missing_as_minus_one():
    c = torch.tensor([[0, 0, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0]])
    cs = CoordinateSet(c, stride=2)
    grid = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, -1, 0, 0], [1, 1, 0, 0]])
    assert cs.find(cs.keys_of(grid)).tolist() == [0, 1, 2, -1, -1]


@settings(max_examples=25, deadline=None)
@given(coords=coords_strategy, stride=st.sampled_from([1, 2, 4]), k=st.sampled_from([1, 3]))
def test_submanifold_conv_equals_dense_conv3d(coords, stride, k):
    coords = coords.clone()
    coords[:, 1:] *= stride
    gen = torch.Generator().manual_seed(len(coords))
    feats = torch.randn(len(coords), 3, generator=gen, dtype=torch.float64)
    conv = sp.Conv(3, 4, k, 1).double()
    out = conv(sp.sparse_tensor(feats, coords, stride))
    lo = (coords[:, 1:] // stride).min(0).values - 1
    size = ((coords[:, 1:] // stride).max(0).values - lo + 2).tolist()
    dense = to_dense(coords, feats, stride, lo, size)
    kernel = conv.kernel if k > 1 else conv.kernel[None]
    ref = F.conv3d(dense, dense_weight(kernel.detach(), k), padding=k // 2)
    torch.testing.assert_close(out.F, read_dense(ref, coords, stride, lo), rtol=1e-10, atol=1e-10)
    assert out.C is coords or torch.equal(out.C, coords.long())


@settings(max_examples=25, deadline=None)
@given(coords=coords_strategy, stride=st.sampled_from([1, 2]))
def test_strided_and_transposed_conv_equal_dense(coords, stride):
    coords = coords.clone()
    coords[:, 1:] *= stride
    gen = torch.Generator().manual_seed(len(coords) + 1)
    feats = torch.randn(len(coords), 2, generator=gen, dtype=torch.float64)
    down = sp.Conv(2, 3, 2, 2).double()
    up = sp.ConvTranspose(3, 2, 2, 2).double()
    x = sp.sparse_tensor(feats, coords, stride)
    y = down(x)
    z = up(y)
    assert y.tensor_stride == 2 * stride and z.tensor_stride == stride
    # Output voxels are floor(c / 2s) * 2s, like MinkowskiEngine.
    expect = coords.clone()
    expect[:, 1:] = torch.div(coords[:, 1:], 2 * stride, rounding_mode="floor") * 2 * stride
    assert torch.equal(torch.unique(y.C, dim=0), torch.unique(expect, dim=0))
    # Dense reference on a grid whose origin is even, so conv3d's stride-2 windows align with floor.
    lo = torch.div((coords[:, 1:] // stride).min(0).values, 2, rounding_mode="floor") * 2
    size = (((coords[:, 1:] // stride).max(0).values - lo + 2) // 2 * 2).tolist()
    dense = to_dense(coords, feats, stride, lo, size)
    ref_y = F.conv3d(dense, dense_weight(down.kernel.detach(), 2), stride=2)
    torch.testing.assert_close(y.F, read_dense(ref_y, y.C, 2 * stride, lo // 2), rtol=1e-10, atol=1e-10)
    ref_z = F.conv_transpose3d(to_dense(y.C, y.F.detach(), 2 * stride, lo // 2, ref_y.shape[2:]),
                               dense_weight(up.kernel.detach(), 2).transpose(0, 1), stride=2)
    torch.testing.assert_close(z.F, read_dense(ref_z, coords, stride, lo), rtol=1e-10, atol=1e-10)


def test_transposed_conv_needs_a_strided_parent():
    x = sp.sparse_tensor(torch.randn(3, 2), torch.tensor([[0, 0, 0, 0], [0, 2, 0, 0], [0, 4, 2, 0]]), 2)
    with pytest.raises(ValueError, match="stride-2 convolution"):
        sp.ConvTranspose(2, 2, 2, 2)(x)


def test_sum_and_cat_need_the_same_coordinates():
    c = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]])
    a, b = sp.sparse_tensor(torch.ones(2, 1), c), sp.sparse_tensor(torch.ones(2, 1), c.clone())
    with pytest.raises(ValueError, match="same coordinates"):
        a + b
    with pytest.raises(ValueError, match="same coordinates"):
        sp.cat(a, b)
    assert sp.cat(a, a.replace(torch.zeros(2, 2))).F.shape == (2, 3)


def test_gradients_match_finite_differences():
    coords = _random_coords(5, 2, 0.6, 2)
    cs = CoordinateSet(coords, stride=1)
    subm = cs.submanifold_map(3)
    coarse, down = cs.strided_map(2, 2)
    up = down.transposed(len(cs))
    feats = torch.randn(len(coords), 2, dtype=torch.float64, requires_grad=True)
    k0, k1, k2 = (torch.randn(*shape, dtype=torch.float64, requires_grad=True)
                  for shape in ((27, 2, 3), (8, 3, 3), (8, 3, 2)))

    def net(feats, k0, k1, k2):
        return apply_kernel_map(apply_kernel_map(apply_kernel_map(feats, k0, subm), k1, down), k2, up)

    assert torch.autograd.gradcheck(net, (feats, k0, k1, k2))


def test_field_averages_points_per_voxel_and_slices_back():
    pts = torch.tensor([[[0.01, 0.0, 0.0], [0.02, 0.0, 0.0], [0.30, 0.0, 0.0], [-0.024, 0.0, 0.0]]])
    field = points_to_field(pts, 0.05)
    x = field.sparse()
    # round(x / 0.05): 0.01, 0.02, -0.024 -> voxel 0 (round half to even), 0.30 -> voxel 6.
    assert len(x.C) == 2
    per_point = x.slice(field)
    torch.testing.assert_close(per_point[0], torch.tensor([(0.01 + 0.02 - 0.024) / 3, 0.0, 0.0]))
    torch.testing.assert_close(per_point[2], pts[0, 2])
    assert torch.equal(per_point[0], per_point[1]) and torch.equal(per_point[0], per_point[3])


def test_batches_never_mix():
    """Voxels of different batch elements at the same place stay separate through the net."""
    c = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]])
    x = sp.sparse_tensor(torch.tensor([[1.0], [100.0], [2.0]]), c)
    conv = sp.Conv(1, 1, 3, 1)
    with torch.no_grad():
        conv.kernel.fill_(1.0)
    assert conv(x).F.flatten().tolist() == [3.0, 100.0, 3.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    coords = _random_coords(9, 5, 0.4, 2)
    feats = torch.randn(len(coords), 4)
    conv = sp.Conv(4, 5, 3, 1)
    down, up = sp.Conv(5, 5, 2, 2), sp.ConvTranspose(5, 4, 2, 2)
    cpu = up(down(conv(sp.sparse_tensor(feats, coords)))).F
    for m in (conv, down, up):
        m.cuda()
    gpu = up(down(conv(sp.sparse_tensor(feats.cuda(), coords.cuda())))).F
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


def test_a_training_step_leaves_no_reference_cycle_holding_tensors():
    """A coarser coordinate set links back to its finer one weakly: with a strong link, every forward
    pass left a cycle (finer set -> its cached coarser sets -> finer) holding the kernel maps, which
    only Python's cyclic collector freed, and CPU training grew ~0.5 GB per teacher_mini step."""
    import gc

    from ddpo_ros.config import ModelConfig
    from ddpo_ros.models import build_denoiser, build_encoder
    torch.manual_seed(0)
    cfg = ModelConfig(width=0.125)
    enc, den = build_encoder(cfg).train(), build_denoiser(cfg).train()
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        cond = enc(torch.randn(1, 300, 3) * 5)
        den(torch.randn(1, 1500, 3) * 5, cond, torch.tensor([500])).square().mean().backward()
        del cond
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        cyclic = [o for o in gc.garbage if isinstance(o, (torch.Tensor, CoordinateSet))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was:
            gc.enable()
    assert cyclic == []


def test_coarser_sets_are_cached_while_used_and_rebuilt_equal_after():
    """The finer set caches its coarser set weakly (no cycle): while a tensor holds the coarse set,
    every strided convolution gets that very set; once nothing does, it is rebuilt, equal."""
    import weakref
    fine = CoordinateSet(torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 2, 2, 2], [1, 3, 0, 1]]), 1)
    coarse, kmap = fine.strided_map(2, 2)
    assert fine.strided_map(2, 2)[0] is coarse and fine.downsample(2)[0] is coarse and coarse.finer is fine
    coords, ref = coarse.coords.clone(), weakref.ref(coarse)
    del coarse
    assert ref() is None  # the fine set did not keep it alive
    again, kmap_again = fine.strided_map(2, 2)
    assert torch.equal(again.coords, coords) and kmap_again is kmap and again.finer is fine
