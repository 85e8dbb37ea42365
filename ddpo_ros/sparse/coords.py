"""Voxel coordinate sets and kernel maps with MinkowskiEngine 0.5.4 semantics, in plain PyTorch.

A `CoordinateSet` is what MinkowskiEngine calls a coordinate map: the unique integer voxel
coordinates (batch, x, y, z) of a sparse tensor at one tensor stride. Coordinates are in
stride-1 voxel units, so at tensor stride s every spatial coordinate is a multiple of s.
Kernel maps (which input row feeds which output row through which kernel slice) are cached
on the set, so the convolutions of a network that share coordinates build each map once.

Conventions proven against a real MinkowskiEngine build (test/test_sparse_parity.py):
- kernel offsets enumerate x fastest, then y, then z (`kernel_offsets`);
- odd kernels are centred on the output voxel, even kernels span offsets 0..k-1;
- a stride-2 convolution's output coordinates are floor(c / 2s) * 2s;
- a transposed convolution writes back onto the finer coordinate set it came from.
"""
from __future__ import annotations

import itertools
import weakref

import torch
from torch import Tensor

from . import native


def kernel_offsets(kernel_size: int) -> list[tuple[int, int, int]]:
    """Kernel offsets in units of the input tensor stride, in MinkowskiEngine's order."""
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    lo = -((kernel_size - 1) // 2) if kernel_size % 2 else 0
    axis = range(lo, lo + kernel_size)
    # itertools.product varies its last factor fastest; ME varies x fastest.
    return [(x, y, z) for z, y, x in itertools.product(axis, axis, axis)]


def pack(grid: Tensor) -> Tensor:
    """Packed int64 key of integer (n, 4) coordinates; the order is lexicographic (b, x, y, z)."""
    if len(grid) == 0:
        return grid.new_zeros(0)
    lo = grid.min(0).values
    extent = grid.max(0).values - lo + 1
    g = grid - lo
    if float(extent.double().prod()) >= 2 ** 62:
        raise ValueError("coordinate extent too large to hash; crop the cloud first")
    return ((g[:, 0] * extent[1] + g[:, 1]) * extent[2] + g[:, 2]) * extent[3] + g[:, 3]


def unique_keys(keys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted unique keys, the index of each key's unique entry, and the first row holding each."""
    unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    first = torch.full((len(unique),), len(keys), dtype=torch.long, device=keys.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(keys), device=keys.device), "amin")
    return unique, inverse, first


class KernelMap:
    """Per kernel slice k: rows `inputs[k]` of the input feed rows `outputs[k]` of the output."""

    __slots__ = ("inputs", "outputs", "n_out", "identity", "_chunks", "_plans", "_transposed")

    def __init__(self, inputs: list[Tensor], outputs: list[Tensor], n_out: int,
                 identity: int | None = None):
        self.inputs = inputs
        self.outputs = outputs
        self.n_out = n_out
        self.identity = identity  # slice whose map is the identity (centre of a submanifold conv)
        self._chunks: dict = {}
        self._plans: dict = {}
        self._transposed: dict = {}

    def transposed(self, n_out: int) -> "KernelMap":
        if n_out not in self._transposed:
            self._transposed[n_out] = KernelMap(self.outputs, self.inputs, n_out, self.identity)
        return self._transposed[n_out]

    def chunks(self, max_rows: int) -> list[tuple[Tensor, Tensor, list[tuple[int, int, int]]]]:
        """Non-identity pairs cut into chunks of at most `max_rows` pairs, kept in slice order.

        Each chunk is (input rows, output rows, [(slice k, start, count)]): one gather, a few
        matmuls and one scatter. Small slices (noisy clouds have ~0.6 neighbours per voxel)
        share a chunk; big ones (clean surfaces, coarse strides) are split, so the gathered
        block stays cache-sized and fits a reusable workspace.
        """
        if max_rows not in self._chunks:
            chunks, rows_in, rows_out, slices, filled = [], [], [], [], 0
            for k, (ins, outs) in enumerate(zip(self.inputs, self.outputs)):
                if k == self.identity:
                    continue
                start = 0
                while start < ins.numel():
                    take = min(ins.numel() - start, max_rows - filled)
                    rows_in.append(ins[start:start + take])
                    rows_out.append(outs[start:start + take])
                    slices.append((k, filled, take))
                    start, filled = start + take, filled + take
                    if filled == max_rows:
                        chunks.append((torch.cat(rows_in), torch.cat(rows_out), slices))
                        rows_in, rows_out, slices, filled = [], [], [], 0
            if slices:
                chunks.append((torch.cat(rows_in), torch.cat(rows_out), slices))
            self._chunks[max_rows] = chunks
        return self._chunks[max_rows]

    def scatter_plan(self, max_rows: int, index: int) -> tuple[Tensor, Tensor]:
        """The CSR plan of chunk `index`'s output rows for the compiled scatter (cached: every
        layer of this stride reuses it)."""
        key = (max_rows, index)
        if key not in self._plans:
            self._plans[key] = native.scatter_plan(self.chunks(max_rows)[index][1], self.n_out)
        return self._plans[key]


class CoordinateSet:
    """Unique voxel coordinates at one tensor stride, with cached lookups and kernel maps."""

    def __init__(self, coords: Tensor, stride: int, finer: "CoordinateSet | None" = None):
        if coords.ndim != 2 or coords.shape[1] != 4:
            raise ValueError(f"coordinates must be (n, 4) = (batch, x, y, z), got {tuple(coords.shape)}")
        self.coords = coords.long()
        self.stride = int(stride)
        self.finer = finer  # the set this one was strided from; a transposed conv writes back to it
        self._grid = None
        self._sorted = None
        self._kernel_maps: dict = {}
        self._coarser: dict = {}

    def __len__(self) -> int:
        return self.coords.shape[0]

    @property
    def device(self) -> torch.device:
        return self.coords.device

    # -- packed keys ---------------------------------------------------------------------------
    def _packing(self):
        """Grid coordinates (c / stride) and a linear packing into int64 keys.

        One voxel of padding on every side keeps the packing linear for neighbours at offsets
        -1..+1, so a neighbour's key is the voxel's key plus a constant and never aliases.
        """
        if self._grid is None:
            grid = self.coords.clone()
            grid[:, 1:] = torch.div(grid[:, 1:], self.stride, rounding_mode="floor")
            if len(grid):
                lo = grid.min(0).values - 1
                extent = grid.max(0).values - lo + 2
            else:
                lo = grid.new_zeros(4)
                extent = grid.new_ones(4)
            lo[0], extent[0] = 0, max(int(extent[0]), 1)
            mult = [int(extent[1] * extent[2] * extent[3]), int(extent[2] * extent[3]), int(extent[3]), 1]
            if int(extent[0]) * mult[0] >= 2 ** 62:
                raise ValueError("coordinate extent too large to hash; crop the cloud first")
            self._grid = (grid, lo, mult)
        return self._grid

    def keys_of(self, grid: Tensor) -> Tensor:
        """Packed key of grid coordinates (batch, x/s, y/s, z/s) in this set's packing."""
        _, lo, mult = self._packing()
        g = grid - lo
        return g[:, 0] * mult[0] + g[:, 1] * mult[1] + g[:, 2] * mult[2] + g[:, 3]

    def _lookup_table(self):
        if self._sorted is None:
            grid, _, _ = self._packing()
            keys, order = torch.sort(self.keys_of(grid))
            self._sorted = (keys, order)
        return self._sorted

    def find(self, query_keys: Tensor) -> Tensor:
        """Row index of each packed key in this set, or -1 where absent."""
        keys, order = self._lookup_table()
        if len(keys) == 0:
            return torch.full_like(query_keys, -1)
        pos = torch.searchsorted(keys, query_keys).clamp_(max=len(keys) - 1)
        return torch.where(keys[pos] == query_keys, order[pos], torch.full_like(pos, -1))

    def offset_key(self, offset: tuple[int, int, int]) -> int:
        """Key difference of a neighbour at `offset` (grid units, each in -1..1)."""
        _, _, mult = self._packing()
        return offset[0] * mult[1] + offset[1] * mult[2] + offset[2] * mult[3]

    # -- kernel maps ---------------------------------------------------------------------------
    def submanifold_map(self, kernel_size: int) -> KernelMap:
        """Stride-1 map of an odd kernel: output voxels are the input voxels (ME's default)."""
        if kernel_size % 2 == 0:
            raise NotImplementedError("even kernels at stride 1 change the coordinates; not supported")
        cache_key = ("subm", kernel_size)
        if cache_key not in self._kernel_maps:
            offsets = kernel_offsets(kernel_size)
            if kernel_size == 1:
                rows = torch.arange(len(self), device=self.device)
                self._kernel_maps[cache_key] = KernelMap([rows], [rows], len(self), identity=0)
                return self._kernel_maps[cache_key]
            if kernel_size > 3:
                raise NotImplementedError("kernel sizes above 3 need a wider hash padding")
            grid, _, _ = self._packing()
            own_keys = self.keys_of(grid)
            rows = torch.arange(len(self), device=self.device)
            inputs: list = [None] * len(offsets)
            outputs: list = [None] * len(offsets)
            index = {o: k for k, o in enumerate(offsets)}
            for k, off in enumerate(offsets):
                if inputs[k] is not None:
                    continue
                if off == (0, 0, 0):
                    inputs[k], outputs[k] = rows, rows
                    continue
                mirror = index[(-off[0], -off[1], -off[2])]
                pairs = native.submanifold_pairs(own_keys, *self._lookup_table(), self.offset_key(off))
                if pairs is not None:  # the compiled twin of the lines below
                    inputs[k], outputs[k], inputs[mirror], outputs[mirror] = pairs
                    continue
                found = self.find(own_keys + self.offset_key(off))
                hit = found >= 0
                out_rows, in_rows = rows[hit], found[hit]
                inputs[k], outputs[k] = in_rows, out_rows
                # Submanifold maps are symmetric: o + d = i  <=>  i - d = o. The mirrored pairs
                # are put in output order, as every slice's are: the convolution's scatter then
                # walks the output rows forwards (~2x faster than in random order), and since a
                # slice holds each output row once, the sums are the same.
                by_out = torch.argsort(in_rows)
                inputs[mirror], outputs[mirror] = out_rows[by_out], in_rows[by_out]
            self._kernel_maps[cache_key] = KernelMap(inputs, outputs, len(self),
                                                     identity=index[(0, 0, 0)])
        return self._kernel_maps[cache_key]

    def downsample(self, factor: int = 2) -> tuple["CoordinateSet", Tensor, Tensor]:
        """Coarser set at stride * factor: (coarse set, parent row per voxel, corner per voxel).

        The corner is the index of the voxel's offset from its parent in `kernel_offsets(factor)`,
        which is the kernel slice a k=factor, stride=factor convolution applies to it.
        """
        hit = self._coarser.get(factor)
        child = None if hit is None else hit[0]()
        if child is None:
            grid, _, _ = self._packing()
            parent = grid.clone()
            parent[:, 1:] = torch.div(grid[:, 1:], factor, rounding_mode="floor")
            corner_xyz = grid[:, 1:] - parent[:, 1:] * factor
            corner = corner_xyz[:, 0] + factor * (corner_xyz[:, 1] + factor * corner_xyz[:, 2])
            _, inverse, first = unique_keys(pack(parent))
            coarse = parent[first]  # coordinates of the parents, read from the first voxel of each
            coarse[:, 1:] *= self.stride * factor
            child = CoordinateSet(coarse, self.stride * factor, finer=self)
            # Held weakly: the child holds this set (`finer`), and a strong link both ways made a
            # reference cycle per forward pass that only Python's cyclic GC freed, so training grew
            # by its kernel maps (~0.5 GB per teacher_mini step) between collections. While a tensor
            # holds the child, every stride-`factor` convolution of this set gets that same child.
            hit = (weakref.ref(child), inverse, corner)
            self._coarser[factor] = hit
        return child, hit[1], hit[2]

    def strided_map(self, kernel_size: int, factor: int) -> tuple["CoordinateSet", KernelMap]:
        """Map of a kernel_size == stride == factor convolution onto the coarser set."""
        if kernel_size != factor:
            raise NotImplementedError("strided convolutions need kernel_size == stride")
        cache_key = ("down", factor)
        child, inverse, corner = self.downsample(factor)
        if cache_key not in self._kernel_maps:  # rows of this set and of the child: valid for any rebuilt child
            order = torch.argsort(corner, stable=True)
            counts = torch.bincount(corner, minlength=factor ** 3).tolist()
            in_rows = list(torch.split(order, counts))
            out_rows = [inverse[rows] for rows in in_rows]
            self._kernel_maps[cache_key] = KernelMap(in_rows, out_rows, len(child))
        return child, self._kernel_maps[cache_key]
