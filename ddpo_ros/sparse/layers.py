"""Sparse layers of the pure-PyTorch backend, with MinkowskiEngine's parameter names and layout.

`Conv.kernel` and `ConvTranspose.kernel` are (k^3, C_in, C_out), or (C_in, C_out) for k = 1, like
`MinkowskiConvolution.kernel`, and `BatchNorm.bn` is an `nn.BatchNorm1d`, so state dicts move
between the backends unchanged. Convolutions are gather -> matmul -> scatter over the cached
kernel maps of `coords.py`, in chunks that reuse per-thread workspaces (`clear_workspaces` frees
them); the backward pass applies the transposed map.
"""
from __future__ import annotations

import math
import threading
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import native
from .coords import KernelMap
from .tensor import SparseTensor


# Gathered features per chunk: 64 MiB of float32 per workspace. Swept 2^20..2^26 on the full-width
# denoiser at 180k points (2-core CPU): 2^24 was fastest; smaller chunks pay per-call overhead.
CHUNK_ELEMENTS = 1 << 24
_workspaces = threading.local()


def _workspace(slot: str, numel: int, like: Tensor) -> Tensor:
    """A reusable flat buffer per thread, device and dtype. Fresh large CPU allocations cost page
    faults on every call (3-4x a reused buffer), so the convolutions gather into these."""
    key = (slot, like.device, like.dtype)
    cache = _workspaces.__dict__.setdefault("buffers", {})
    buf = cache.get(key)
    if buf is None or buf.numel() < numel:
        buf = cache[key] = like.new_empty(numel)
    return buf[:numel]


def clear_workspaces() -> None:
    """Free this thread's convolution workspaces (they are kept to avoid re-allocating per call)."""
    _workspaces.__dict__.pop("buffers", None)


def _chunk_rows(channels: int) -> int:
    return max(256, CHUNK_ELEMENTS // max(1, channels))


def _apply(features: Tensor, kernel: Tensor, kmap: KernelMap, bias: Tensor | None = None) -> Tensor:
    """out[o] = bias + sum_k sum_{(i, o) in map_k} features[i] @ kernel[k], kernel (K, C_in, C_out)."""
    c_in, c_out = kernel.shape[1], kernel.shape[2]
    if kmap.identity is not None:
        out = features @ kernel[kmap.identity] if bias is None else torch.addmm(bias, features, kernel[kmap.identity])
    else:
        out = features.new_zeros(kmap.n_out, c_out) if bias is None else bias.expand(kmap.n_out, c_out).clone()
    max_rows = _chunk_rows(max(c_in, c_out))
    for index, (rows_in, rows_out, slices) in enumerate(kmap.chunks(max_rows)):
        n = len(rows_in)
        gathered = torch.index_select(features, 0, rows_in, out=_workspace("in", n * c_in, features).view(n, c_in))
        products = _workspace("out", n * c_out, features).view(n, c_out)
        for k, start, count in slices:
            torch.mm(gathered[start:start + count], kernel[k], out=products[start:start + count])
        native.scatter_add(out, rows_out, products, partial(kmap.scatter_plan, max_rows, index))
    return out


class _SparseConv(torch.autograd.Function):
    """Sparse convolution whose backward applies the transposed kernel map (as ME does), instead
    of letting autograd keep every gathered block and build one dense gradient per slice."""

    @staticmethod
    def forward(ctx, features: Tensor, kernel: Tensor, kmap: KernelMap) -> Tensor:
        ctx.kmap = kmap
        ctx.save_for_backward(features, kernel)
        return _apply(features, kernel, kmap)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        features, kernel = ctx.saved_tensors
        kmap = ctx.kmap
        grad_out = grad_out.contiguous()
        grad_features = grad_kernel = None
        if ctx.needs_input_grad[0]:
            # d out / d features: the same sum over the map with inputs and outputs swapped.
            grad_features = _apply(grad_out, kernel.transpose(1, 2), kmap.transposed(features.shape[0]))
        if ctx.needs_input_grad[1]:
            grad_kernel = torch.zeros_like(kernel)
            if kmap.identity is not None:
                grad_kernel[kmap.identity] = features.T @ grad_out
            c_in, c_out = kernel.shape[1], kernel.shape[2]
            for rows_in, rows_out, slices in kmap.chunks(_chunk_rows(max(c_in, c_out))):
                n = len(rows_in)
                f = torch.index_select(features, 0, rows_in, out=_workspace("in", n * c_in, features).view(n, c_in))
                g = torch.index_select(grad_out, 0, rows_out, out=_workspace("out", n * c_out, features).view(n, c_out))
                for k, start, count in slices:
                    grad_kernel[k].addmm_(f[start:start + count].T, g[start:start + count])
        return grad_features, grad_kernel, None


def apply_kernel_map(features: Tensor, kernel: Tensor, kmap: KernelMap) -> Tensor:
    """ME's sparse convolution over a kernel map; kernel (k^3, C_in, C_out) or (C_in, C_out) for k = 1."""
    return _SparseConv.apply(features, kernel[None] if kernel.ndim == 2 else kernel, kmap)


def conv_target(x: SparseTensor, kernel_size: int, stride: int, transposed: bool = False):
    """(output coordinates, kernel map) of a convolution of x, as MinkowskiEngine defines them:
    submanifold at stride 1, k == stride down-sampling, or the transposed map back onto the
    finer coordinates x was strided from."""
    if not transposed:
        if stride == 1:
            return x.coordinates, x.coordinates.submanifold_map(kernel_size)
        return x.coordinates.strided_map(kernel_size, stride)
    fine = x.coordinates.finer
    if fine is None or fine.stride * stride != x.tensor_stride:
        raise ValueError("transposed convolution needs a tensor made by a stride-"
                         f"{stride} convolution (input stride {x.tensor_stride})")
    _, kmap = fine.strided_map(kernel_size, stride)
    return fine, kmap.transposed(len(fine))


class _KernelLayer(nn.Module):
    transposed = False

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

    def forward(self, x: SparseTensor) -> SparseTensor:
        coords, kmap = conv_target(x, self.kernel_size, self.stride, self.transposed)
        return SparseTensor(apply_kernel_map(x.F, self.kernel, kmap), coords)


class Conv(_KernelLayer):
    """MinkowskiConvolution without bias: submanifold at stride 1, k == stride down-sampling."""


class ConvTranspose(_KernelLayer):
    """MinkowskiConvolutionTranspose (k == stride): writes back onto the finer coordinates."""

    transposed = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        if stride == 1 or kernel_size != stride:
            raise NotImplementedError("transposed convolutions need kernel_size == stride > 1")
        super().__init__(in_channels, out_channels, kernel_size, stride)


class BatchNorm(nn.Module):
    """MinkowskiBatchNorm: BatchNorm1d over the voxel features (eps 1e-5, momentum 0.1)."""

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels, eps=eps, momentum=momentum)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(self.bn(x.F))


class ReLU(nn.Module):
    """MinkowskiReLU; LiDiff uses inplace=True, which saves a copy of every activation."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(F.relu_(x.F) if self.inplace else F.relu(x.F))
