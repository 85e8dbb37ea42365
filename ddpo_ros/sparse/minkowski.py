"""MinkowskiEngine 0.5.4 backend: the only module in the project that imports MinkowskiEngine.

Exposes the same interface as `TorchBackend`; used for parity checks and benchmarks, and by
users who already run MinkowskiEngine on CUDA. Importing this module raises ImportError when
MinkowskiEngine is missing.
"""
from __future__ import annotations

import MinkowskiEngine as ME
import torch
from torch import Tensor


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
    return ME.MinkowskiConvolution(in_channels, out_channels, kernel_size=kernel_size,
                                   stride=stride, bias=False, dimension=3)


def _conv_transpose(in_channels: int, out_channels: int, kernel_size: int, stride: int):
    return ME.MinkowskiConvolutionTranspose(in_channels, out_channels, kernel_size=kernel_size,
                                            stride=stride, bias=False, dimension=3)


def _batch_norm(channels: int, eps: float = 1e-5, momentum: float = 0.1):
    return ME.MinkowskiBatchNorm(channels, eps=eps, momentum=momentum)


class MinkowskiBackend:
    name = "minkowski"
    Conv = staticmethod(_conv)
    ConvTranspose = staticmethod(_conv_transpose)
    BatchNorm = staticmethod(_batch_norm)
    ReLU = ME.MinkowskiReLU

    @staticmethod
    def field(points: Tensor, voxel_size: float):
        b, n, _ = points.shape
        feats = points.reshape(b * n, 3)
        grid = torch.round(feats.detach() / voxel_size)
        batch = torch.arange(b, device=points.device, dtype=grid.dtype).repeat_interleave(n)
        return ME.TensorField(
            features=feats,
            coordinates=torch.cat([batch[:, None], grid], dim=1),
            quantization_mode=ME.SparseTensorQuantizationMode.UNWEIGHTED_AVERAGE,
            minkowski_algorithm=ME.MinkowskiAlgorithm.SPEED_OPTIMIZED,
            device=points.device,
        )

    @staticmethod
    def sparse(field):
        return field.sparse()

    @staticmethod
    def sparse_tensor(features: Tensor, coords: Tensor, stride: int = 1):
        return ME.SparseTensor(features, coordinates=coords.int(), tensor_stride=stride)

    @staticmethod
    def replace(x, features: Tensor):
        return ME.SparseTensor(features, coordinate_map_key=x.coordinate_map_key,
                               coordinate_manager=x.coordinate_manager)

    @staticmethod
    def slice(x, field) -> Tensor:
        return x.slice(field).F

    @staticmethod
    def cat(*xs):
        return ME.cat(*xs)

    @staticmethod
    def coords(x) -> Tensor:
        return x.C.long()

    @staticmethod
    def coordinate_key(x):
        return (id(x.coordinate_manager), str(x.coordinate_map_key))
