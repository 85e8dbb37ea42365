"""Sparse convolution backends behind one small interface.

The networks in `ddpo_ros.models` only use what a backend object offers:

    sp.Conv(c_in, c_out, kernel_size, stride)   sp.ConvTranspose(...)   sp.BatchNorm(c)   sp.ReLU()
    sp.field(points (B, N, 3), voxel_size)  ->  field;   sp.sparse(field)  ->  x
    sp.sparse_tensor(features, coords (n, 4), stride)  ->  x;   sp.replace(x, features)
    sp.slice(x, field) -> (B*N, C) tensor;   sp.cat(a, b);   sp.coords(x) -> (n, 4) long
    x.F, x * w, a + b

`torch` (default) is this package's pure-PyTorch implementation; `minkowski` wraps
MinkowskiEngine 0.5.4 when it is installed. Both have the same semantics and parameter layout.
"""
from __future__ import annotations

from torch import Tensor

from . import layers, tensor
from .coords import CoordinateSet, KernelMap, kernel_offsets
from .tensor import SparseTensor, TensorField

BACKENDS = ("torch", "minkowski")


class TorchBackend:
    """Pure-PyTorch backend: CPU and CUDA, autograd; on CPU a few compiled kernels (native.py) where they build."""

    name = "torch"
    Conv = layers.Conv
    ConvTranspose = layers.ConvTranspose
    BatchNorm = layers.BatchNorm
    ReLU = layers.ReLU

    @staticmethod
    def field(points: Tensor, voxel_size: float) -> TensorField:
        return tensor.points_to_field(points, voxel_size)

    @staticmethod
    def sparse(field: TensorField) -> SparseTensor:
        return field.sparse()

    @staticmethod
    def sparse_tensor(features: Tensor, coords: Tensor, stride: int = 1) -> SparseTensor:
        """Tensor on given unique (n, 4) coordinates (multiples of `stride`)."""
        return SparseTensor(features, CoordinateSet(coords, stride))

    @staticmethod
    def replace(x: SparseTensor, features: Tensor) -> SparseTensor:
        """New features on the coordinates of x."""
        return x.replace(features)

    @staticmethod
    def slice(x: SparseTensor, field: TensorField) -> Tensor:
        return x.slice(field)

    @staticmethod
    def cat(*xs: SparseTensor) -> SparseTensor:
        return tensor.cat(*xs)

    @staticmethod
    def coords(x: SparseTensor) -> Tensor:
        return x.C

    @staticmethod
    def coordinate_key(x: SparseTensor):
        return id(x.coordinates)


def get_backend(name: str):
    """The backend called `name` ('torch' or 'minkowski')."""
    if name == "torch":
        return TorchBackend
    if name == "minkowski":
        from .minkowski import MinkowskiBackend  # imports MinkowskiEngine; optional
        return MinkowskiBackend
    raise ValueError(f"unknown sparse backend {name!r}; choose one of {', '.join(BACKENDS)}")


def minkowski_available() -> bool:
    try:
        get_backend("minkowski")
    except ImportError:
        return False
    return True


__all__ = ["BACKENDS", "CoordinateSet", "KernelMap", "SparseTensor", "TensorField", "TorchBackend",
           "get_backend", "kernel_offsets", "minkowski_available"]
