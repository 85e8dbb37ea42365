"""Sparse layers of the pure-PyTorch backend, with MinkowskiEngine's parameter names and layout.

`Conv.kernel` and `ConvTranspose.kernel` are (k^3, C_in, C_out), or (C_in, C_out) for k = 1, like
`MinkowskiConvolution.kernel`,
and `BatchNorm.bn` is an `nn.BatchNorm1d`, so state dicts move between the backends unchanged.
Convolutions are gather -> matmul -> scatter over the cached kernel maps of `coords.py`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .coords import KernelMap
from .tensor import SparseTensor


def apply_kernel_map(features: Tensor, kernel: Tensor, kmap: KernelMap) -> Tensor:
    """out[o] = sum_k sum_{(i, o) in map_k} features[i] @ kernel[k]  (ME's sparse convolution)."""
    if kernel.ndim == 2:
        kernel = kernel[None]
    if kmap.identity is not None:
        out = features @ kernel[kmap.identity]
    else:
        out = features.new_zeros(kmap.n_out, kernel.shape[2])
    for k, (rows_in, rows_out) in enumerate(zip(kmap.inputs, kmap.outputs)):
        if k == kmap.identity or rows_in.numel() == 0:
            continue
        out.index_add_(0, rows_out, features.index_select(0, rows_in) @ kernel[k])
    return out


class _KernelLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        if stride not in (1, kernel_size):
            raise NotImplementedError(f"kernel_size={kernel_size}, stride={stride}: strided "
                                      "convolutions need kernel_size == stride")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        # ME drops the kernel axis of 1x1x1 kernels: (C_in, C_out), else (k^3, C_in, C_out).
        volume = kernel_size ** 3
        shape = (in_channels, out_channels) if volume == 1 else (volume, in_channels, out_channels)
        self.kernel = nn.Parameter(torch.empty(shape))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # ME initialises with a uniform bound 1/sqrt(C_in * k^3) (its reset_parameters).
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size ** 3)
        nn.init.uniform_(self.kernel, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"


class Conv(_KernelLayer):
    """MinkowskiConvolution without bias: submanifold at stride 1, k == stride down-sampling."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.stride == 1:
            kmap = x.coordinates.submanifold_map(self.kernel_size)
            return x.replace(apply_kernel_map(x.F, self.kernel, kmap))
        coarse, kmap = x.coordinates.strided_map(self.kernel_size, self.stride)
        return SparseTensor(apply_kernel_map(x.F, self.kernel, kmap), coarse)


class ConvTranspose(_KernelLayer):
    """MinkowskiConvolutionTranspose (k == stride): writes back onto the finer coordinates."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        if stride == 1 or kernel_size != stride:
            raise NotImplementedError("transposed convolutions need kernel_size == stride > 1")
        super().__init__(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: SparseTensor) -> SparseTensor:
        fine = x.coordinates.finer
        if fine is None or fine.stride * self.stride != x.tensor_stride:
            raise ValueError("transposed convolution needs a tensor made by a stride-"
                             f"{self.stride} convolution (input stride {x.tensor_stride})")
        _, kmap = fine.strided_map(self.kernel_size, self.stride)
        return SparseTensor(apply_kernel_map(x.F, self.kernel, kmap.transposed(len(fine))), fine)


class BatchNorm(nn.Module):
    """MinkowskiBatchNorm: BatchNorm1d over the voxel features (eps 1e-5, momentum 0.1)."""

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels, eps=eps, momentum=momentum)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(self.bn(x.F))


class ReLU(nn.Module):
    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(F.relu(x.F))
