"""Inference-only copies of the pure-PyTorch networks: BatchNorm folded into its convolution,
optionally with bfloat16 convolutions.

In eval mode a BatchNorm after a convolution is the affine map y = s * z + b per channel, with
s = gamma / sqrt(var + eps) and b = beta - mean * s, so conv -> BN is one convolution with
kernel K * s and bias b: the same numbers up to float rounding, and one pass less over every
activation (BatchNorm alone was ~11% of a full-width denoiser call on 2 CPU cores).

`precision="bf16"` also stores the folded kernels, and carries the features between them, in
bfloat16: on CPUs with AMX (Sapphire Rapids and later) a bfloat16 matmul runs 5-10x faster than
float32, and every gather and scatter moves half the bytes. It is an approximation (8-bit
mantissas: ~3e-3 relative error per matmul), opt-in, and measured against float32 in
`make bench`. The first convolution of a network keeps float32: its input features are point
coordinates in metres, which bfloat16 would round to 25 cm at 50 m.

Elementwise passes cost as much as a small convolution on a CPU with little memory bandwidth, so
the copy also runs the ReLU after a folded convolution, and a residual block's add + ReLU, as one
in-place pass each (`native.bias_act_`; plain torch ops where the compiled kernels are absent).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from . import native
from .layers import BatchNorm, ReLU, _KernelLayer, _apply, conv_target
from .tensor import SparseTensor

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


class FusedConv(nn.Module):
    """A convolution, the eval-mode BatchNorm after it and optionally the ReLU after that, as one
    biased convolution whose bias and ReLU are applied in one pass."""

    def __init__(self, conv: _KernelLayer, bn: BatchNorm | None, dtype: torch.dtype = torch.float32,
                 out_dtype: torch.dtype | None = None, relu: bool = False):
        super().__init__()
        self.kernel_size, self.stride, self.transposed = conv.kernel_size, conv.stride, conv.transposed
        kernel = conv.kernel.detach().float()
        kernel = kernel[None] if kernel.ndim == 2 else kernel
        if bn is not None:
            norm = bn.bn
            scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
            bias = norm.bias.detach() - norm.running_mean * scale
            kernel = kernel * scale
        else:
            bias = None
        self.register_buffer("kernel", kernel.to(dtype).contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(dtype))
        self.out_dtype = out_dtype or dtype
        self.relu = relu

    def forward(self, x: SparseTensor) -> SparseTensor:
        coords, kmap = conv_target(x, self.kernel_size, self.stride, self.transposed)
        if self.relu:
            out = native.bias_act_(_apply(x.F.to(self.kernel.dtype), self.kernel, kmap), self.bias, relu=True)
        else:
            out = _apply(x.F.to(self.kernel.dtype), self.kernel, kmap, self.bias)
        return SparseTensor(out.to(self.out_dtype), coords)

    def extra_repr(self) -> str:
        return (f"{self.kernel.shape[1]}, {self.kernel.shape[2]}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, transposed={self.transposed}, dtype={self.kernel.dtype}, relu={self.relu}")


def fuse_for_inference(model: nn.Module, precision: str = "fp32") -> nn.Module:
    """An eval-only copy of `model` whose conv -> BatchNorm pairs are `FusedConv`s.

    The copy shares nothing with `model` (later training of `model` does not reach it); build
    a new one after changing the weights. A model without this backend's layers (the
    MinkowskiEngine backend's) is returned as it is in fp32, and refused in bf16.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if not any(isinstance(m, _KernelLayer) for m in model.modules()):
        if dtype != torch.float32:
            raise ValueError(f"precision {precision!r} needs the pure-PyTorch sparse backend (model.backend: torch)")
        return model
    fused = copy.deepcopy(model).eval()
    first = True
    for module in fused.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children()) + [(None, None), (None, None)]
        for i, (name, child) in enumerate(children[:-2]):
            if not isinstance(child, _KernelLayer):
                continue
            bn = children[i + 1][1] if isinstance(children[i + 1][1], BatchNorm) else None
            act_name, act = children[i + 2] if bn is not None else children[i + 1]
            relu = isinstance(act, ReLU)
            # Module order is forward order here, so the first kernel layer sees the coordinates.
            conv_dtype = torch.float32 if first else dtype
            setattr(module, name, FusedConv(child, bn, conv_dtype, out_dtype=dtype, relu=relu))
            if bn is not None:
                setattr(module, children[i + 1][0], nn.Identity())
            if relu:
                setattr(module, act_name, nn.Identity())
            first = False
    for module in fused.modules():
        if hasattr(module, "add_relu_in_place"):  # ResidualBlock: its sum is its own fresh output
            module.add_relu_in_place = True
    left = [name for name, m in fused.named_modules() if isinstance(m, (_KernelLayer, BatchNorm))]
    if left:
        raise ValueError(f"fuse_for_inference: layers outside a conv -> BatchNorm sequence: {left}")
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused
