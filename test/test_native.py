"""The compiled CPU kernels (ddpo_ros/sparse/native.cpp) against their plain-torch twins, on real
kernel maps of a KITTI frame: float32 bit-identical, bfloat16 at least as accurate as torch's."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, kernels
from ddpo_ros.sparse import CoordinateSet, TorchBackend, native
from ddpo_ros.sparse.layers import Conv, ConvTranspose


@pytest.fixture(scope="module")
def kitti_voxels():
    """A real frame as a stride-1 sparse tensor at 10 cm (~60k voxels) with 32 random channels."""
    from conftest import kitti_scan

    xyz = torch.from_numpy(kitti_scan(0)[:, :3].copy())
    field = TorchBackend.field(xyz[None], 0.1)
    x = TorchBackend.sparse(field)
    return x.replace(torch.randn(len(x.F), 32, generator=torch.Generator().manual_seed(0)))


def test_builds_where_a_compiler_exists():
    with kernels("native"):
        assert native.status() == "native"


def _map_rows(x):
    kmap = x.coordinates.submanifold_map(3)
    return torch.cat([o for k, o in enumerate(kmap.outputs) if k != kmap.identity]), kmap.n_out


@pytest.mark.parametrize("stride", [1, 4])
def test_submanifold_maps_equal_the_torch_maps(kitti_voxels, stride):
    coords = kitti_voxels.C.clone()
    coords[:, 1:] = torch.div(coords[:, 1:], stride, rounding_mode="floor") * stride
    coords = torch.unique(coords, dim=0)
    maps = {}
    for mode in ("native", "torch"):
        with kernels(mode):  # a fresh set each time: maps are cached per set
            maps[mode] = CoordinateSet(coords, stride).submanifold_map(3)
    assert maps["native"].identity == maps["torch"].identity == 13
    for k in range(27):
        assert torch.equal(maps["native"].inputs[k], maps["torch"].inputs[k]), k
        assert torch.equal(maps["native"].outputs[k], maps["torch"].outputs[k]), k
    assert sum(len(o) for o in maps["native"].outputs) > 3 * len(coords)  # a real neighbourhood


def test_scatter_plan_equals_the_torch_plan(kitti_voxels):
    rows, n_out = _map_rows(kitti_voxels)
    with kernels("torch"):
        want = native.scatter_plan(rows, n_out)
    with kernels("native"):
        got = native.scatter_plan(rows, n_out)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("channels", [3, 32, 96])
def test_scatter_add_float32_is_bit_identical_to_index_add(kitti_voxels, channels):
    rows, n_out = _map_rows(kitti_voxels)
    gen = torch.Generator().manual_seed(channels)
    src, start = torch.randn(len(rows), channels, generator=gen), torch.randn(n_out, channels, generator=gen)
    want = start.clone().index_add_(0, rows, src)
    with kernels("native"):
        got = start.clone()
        native.scatter_add(got, rows, src, native.scatter_plan(rows, n_out))
    assert torch.equal(got, want)


def test_scatter_add_bfloat16_is_as_accurate_as_index_add(kitti_voxels):
    rows, n_out = _map_rows(kitti_voxels)
    gen = torch.Generator().manual_seed(1)
    src, start = torch.randn(len(rows), 64, generator=gen), torch.randn(n_out, 64, generator=gen)
    exact = start.double().index_add_(0, rows, src.double())
    torch_err = (start.bfloat16().index_add_(0, rows, src.bfloat16()).double() - exact).abs().mean()
    with kernels("native"):
        got = start.bfloat16()
        native.scatter_add(got, rows, src.bfloat16(), lambda: native.scatter_plan(rows, n_out))
    assert (got.double() - exact).abs().mean() <= torch_err * 1.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias,other,relu", [(True, False, True), (False, True, True), (True, True, False)])
def test_bias_act_equals_the_torch_ops(dtype, bias, other, relu):
    gen = torch.Generator().manual_seed(2)
    x, b, o = (torch.randn(*s, generator=gen).to(dtype) for s in [(5000, 48), (48,), (5000, 48)])
    want = x.float() + (b.float() if bias else 0) + (o.float() if other else 0)
    want = want.relu() if relu else want
    with kernels("native"):
        got = native.bias_act_(x.clone(), b if bias else None, o if other else None, relu)
    if dtype == torch.float32:
        assert torch.equal(got, want)
    else:  # one rounding at the end instead of one per op
        assert torch.equal(got, want.bfloat16())


@pytest.mark.parametrize("layer", ["submanifold", "strided", "transposed"])
def test_convolutions_are_bit_identical_with_and_without_native_kernels(kitti_voxels, layer):
    torch.manual_seed(3)
    x = kitti_voxels
    if layer == "submanifold":
        conv = Conv(32, 24, 3, 1)
    elif layer == "strided":
        conv = Conv(32, 24, 2, 2)
    else:
        x = Conv(32, 32, 2, 2)(x)
        conv = ConvTranspose(32, 24, 2, 2)
    x = x.replace(x.F.detach().requires_grad_())
    outs = {}
    for mode in ("native", "torch"):
        with kernels(mode):
            x.F.grad = None
            conv.zero_grad()
            y = conv(x)
            (y.F * torch.linspace(-1, 1, y.F.shape[1])).sum().backward()  # the backward scatters too
            outs[mode] = (y.F.detach(), x.F.grad.clone(), conv.kernel.grad.clone())
    for got, want in zip(outs["native"], outs["torch"]):
        assert torch.equal(got, want)


def test_without_a_compiler_everything_takes_the_torch_path(tmp_path):
    """A failed build warns once and falls back; results stay correct."""
    code = ("import warnings, torch\n"
            "from ddpo_ros.sparse import native\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    print(native.status().split(':')[0])\n"
            "    out = torch.zeros(3, 2); native.scatter_add(out, torch.tensor([0, 2, 0]), torch.ones(3, 2), None)\n"
            "    print(out[:, 0].tolist(), any('native kernels unavailable' in str(m.message) for m in w))\n")
    env = dict(os.environ, CXX="/bin/false", TORCH_EXTENSIONS_DIR=str(tmp_path), DDPO_NATIVE="1")
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == ["unavailable", "[2.0, 0.0, 1.0] True"], run.stdout + run.stderr


def test_disabled_by_environment():
    with kernels("torch"):
        assert native.status() == "disabled (DDPO_NATIVE=0)" and native.load() is None
        assert native.nearest_lattice(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long),
                                      torch.zeros(1, dtype=torch.long), 16) is None
