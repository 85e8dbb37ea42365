"""Building blocks of LiDiff's MinkUNet family, written once for every backend.

Module and attribute names follow LiDiff's `models/minkunet.py` (`net.0`, `downsample.0`, ...)
because they are the keys of the released checkpoints.
"""
from __future__ import annotations

from torch import nn

from ..sparse import native


def scale_channels(channels, width: float) -> list[int]:
    """LiDiff's width multiplier `cr`: int(cr * c) for every entry."""
    scaled = [int(width * c) for c in channels]
    if len(scaled) != 9 or min(scaled) < 1:
        raise ValueError(f"need 9 positive channel counts after width {width}, got {scaled}")
    return scaled


class ConvBlock(nn.Module):
    """Conv (or transposed conv) -> BatchNorm -> ReLU (BasicConvolutionBlock / BasicDeconvolutionBlock)."""

    def __init__(self, sp, c_in: int, c_out: int, kernel_size: int, stride: int, transpose: bool = False):
        super().__init__()
        conv = sp.ConvTranspose if transpose else sp.Conv
        self.net = nn.Sequential(conv(c_in, c_out, kernel_size, stride), sp.BatchNorm(c_out), sp.ReLU(inplace=True))

    def forward(self, x):
        return self.net(x)


class ResidualBlock(nn.Module):
    """relu([conv3-bn-relu-conv3-bn](x) + shortcut(x)); the shortcut is conv1-bn when channels change."""

    def __init__(self, sp, c_in: int, c_out: int):
        super().__init__()
        self.net = nn.Sequential(sp.Conv(c_in, c_out, 3, 1), sp.BatchNorm(c_out), sp.ReLU(inplace=True),
                                 sp.Conv(c_out, c_out, 3, 1), sp.BatchNorm(c_out))
        self.downsample = (nn.Sequential() if c_in == c_out else
                           nn.Sequential(sp.Conv(c_in, c_out, 1, 1), sp.BatchNorm(c_out)))
        self.relu = sp.ReLU(inplace=True)
        self.add_relu_in_place = False  # set by sparse.fused.fuse_for_inference (inference copies only)

    def forward(self, x):
        y, skip = self.net(x), self.downsample(x)
        if self.add_relu_in_place:  # y is this block's own fresh tensor: add and ReLU in one pass
            return y.replace(native.bias_act_(y.F, other=skip.F, relu=True))
        return self.relu(y + skip)


def add_encoder(module: nn.Module, sp, cs: list[int], in_channels: int) -> None:
    """stem (stride 1) and stage1..4 (strides 2, 4, 8, 16): stage k maps cs[k-1] -> cs[k]."""
    module.stem = nn.Sequential(sp.Conv(in_channels, cs[0], 3, 1), sp.BatchNorm(cs[0]), sp.ReLU(inplace=True),
                                sp.Conv(cs[0], cs[0], 3, 1), sp.BatchNorm(cs[0]), sp.ReLU(inplace=True))
    for k in range(1, 5):
        setattr(module, f"stage{k}", nn.Sequential(
            ConvBlock(sp, cs[k - 1], cs[k - 1], kernel_size=2, stride=2),
            ResidualBlock(sp, cs[k - 1], cs[k]),
            ResidualBlock(sp, cs[k], cs[k]),
        ))


def add_decoder(module: nn.Module, sp, cs: list[int]) -> None:
    """up1..4 (strides 8, 4, 2, 1): deconv cs[3+k] -> cs[4+k], concat the skip cs[4-k], two residuals."""
    for k in range(1, 5):
        c_in, c_out, c_skip = cs[3 + k], cs[4 + k], cs[4 - k]
        setattr(module, f"up{k}", nn.ModuleList([
            ConvBlock(sp, c_in, c_out, kernel_size=2, stride=2, transpose=True),
            nn.Sequential(ResidualBlock(sp, c_out + c_skip, c_out), ResidualBlock(sp, c_out, c_out)),
        ]))


def point_head(c_in: int, c_out: int, final: nn.Module | None = None) -> nn.Sequential:
    """Per-point head `last`: Linear(c_in, 20) -> LeakyReLU(0.1) -> Linear(20, c_out) [-> final]."""
    layers = [nn.Linear(c_in, 20), nn.LeakyReLU(0.1), nn.Linear(20, c_out)]
    return nn.Sequential(*layers, *([final] if final is not None else []))


def init_batch_norms(module: nn.Module) -> None:
    """LiDiff's weight_initialization: every BatchNorm starts at weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
