"""Pure-PyTorch sparse tensors: a `TensorField` of points and the `SparseTensor` of its voxels.

Mirrors the part of MinkowskiEngine 0.5.4 that LiDiff uses: a TensorField quantised with
UNWEIGHTED_AVERAGE (voxel feature = mean of its points' features), `.sparse()`, `.slice()`
back to the points, elementwise products with per-voxel weights, residual sums and
channel concatenation of tensors that share coordinates.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .coords import CoordinateSet, pack, unique_keys


class SparseTensor:
    """Features (n, C) on the voxels of a `CoordinateSet`."""

    __slots__ = ("F", "coordinates")

    def __init__(self, features: Tensor, coordinates: CoordinateSet):
        if features.ndim != 2 or features.shape[0] != len(coordinates):
            raise ValueError(f"features {tuple(features.shape)} do not match {len(coordinates)} voxels")
        self.F = features
        self.coordinates = coordinates

    @property
    def C(self) -> Tensor:
        """(n, 4) integer coordinates (batch, x, y, z) in stride-1 voxel units."""
        return self.coordinates.coords

    @property
    def tensor_stride(self) -> int:
        return self.coordinates.stride

    def replace(self, features: Tensor) -> "SparseTensor":
        return SparseTensor(features, self.coordinates)

    def _same_coordinates(self, other: "SparseTensor", op: str) -> None:
        if other.coordinates is not self.coordinates:
            raise ValueError(f"{op} needs tensors on the same coordinates "
                             f"(strides {self.tensor_stride} and {other.tensor_stride})")

    def __mul__(self, other):
        if isinstance(other, SparseTensor):
            self._same_coordinates(other, "*")
            other = other.F
        return self.replace(self.F * other)

    def __add__(self, other):
        if isinstance(other, SparseTensor):
            self._same_coordinates(other, "+")
            other = other.F
        return self.replace(self.F + other)

    def slice(self, field: "TensorField") -> Tensor:
        """Per-point features: every point of `field` takes the feature of its voxel."""
        if field.coordinates is not self.coordinates:
            raise ValueError("slice needs the stride-1 tensor made from this field")
        return self.F.index_select(0, field.inverse)

    def __repr__(self) -> str:
        return f"SparseTensor(voxels={len(self.coordinates)}, channels={self.F.shape[1]}, stride={self.tensor_stride})"


def cat(*tensors: SparseTensor) -> SparseTensor:
    """Concatenate channels of tensors on the same coordinates (ME.cat)."""
    for t in tensors[1:]:
        tensors[0]._same_coordinates(t, "cat")
    return tensors[0].replace(torch.cat([t.F for t in tensors], dim=1))


class TensorField:
    """Points with features and integer voxel coordinates; `.sparse()` averages per voxel."""

    def __init__(self, features: Tensor, coords: Tensor):
        if features.ndim != 2 or coords.shape != (features.shape[0], 4):
            raise ValueError(f"features {tuple(features.shape)} and coordinates {tuple(coords.shape)} "
                             "must be (n, C) and (n, 4)")
        coords = coords.long()
        voxels, inverse, first = unique_keys(pack(coords))
        n_vox = len(voxels)
        self.features = features
        self.inverse = inverse
        self.coordinates = CoordinateSet(coords[first], stride=1)
        self._counts = torch.bincount(inverse, minlength=n_vox).to(features.dtype)

    def sparse(self) -> SparseTensor:
        summed = self.features.new_zeros(len(self.coordinates), self.features.shape[1])
        summed = summed.index_add(0, self.inverse, self.features)
        return SparseTensor(summed / self._counts[:, None], self.coordinates)


def points_to_field(points: Tensor, voxel_size: float) -> TensorField:
    """LiDiff's points_to_tensor: features = xyz in metres, coords = round(xyz / voxel), batched.

    `points` is (B, N, 3); rows of the field are the points in batch-major order.
    """
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be (B, N, 3), got {tuple(points.shape)}")
    b, n, _ = points.shape
    feats = points.reshape(b * n, 3)
    grid = torch.round(feats.detach() / voxel_size).long()
    batch = torch.arange(b, device=points.device).repeat_interleave(n)
    return TensorField(feats, torch.cat([batch[:, None], grid], dim=1))
