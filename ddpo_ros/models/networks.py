"""LiDiff's three networks: scan encoder, conditional denoiser and refinement net.

All take dense point tensors (B, N, 3) in metres and voxelise them themselves
(coords = round(xyz / voxel_size), voxel feature = mean xyz), so callers never see the sparse
backend. Full-width parameter counts: MinkUNetDiff 24,174,515, MinkGlobalEnc 8,497,952,
MinkUNet (18 outputs) 21,722,926.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import LIDIFF_CHANNELS
from ..sparse import get_backend
from .blocks import add_decoder, add_encoder, init_batch_norms, point_head, scale_channels
from .conditioning import ConditionMatcher, timestep_embedding

ENCODER_STRIDE = 16  # tensor stride of the encoder output: 16 voxels = 0.8 m at 5 cm
# Injection points of the denoiser, in forward order: before stage1..4 and before up1..4.
INJECTIONS = ("stage1", "stage2", "stage3", "stage4", "up1", "up2", "up3", "up4")


class MinkGlobalEnc(nn.Module):
    """Scan encoder: stem + 4 strided stages; returns the stride-16 sparse tensor (cs[4] channels)."""

    def __init__(self, channels=LIDIFF_CHANNELS, width: float = 1.0, in_channels: int = 3,
                 voxel_size: float = 0.05, backend: str = "torch"):
        super().__init__()
        self.sp = get_backend(backend)
        self.voxel_size = voxel_size
        self.cs = scale_channels(channels, width)
        add_encoder(self, self.sp, self.cs, in_channels)
        init_batch_norms(self)

    def forward(self, partial: Tensor):
        """partial (B, M, 3) -> sparse tensor at stride 16."""
        x = self.sp.sparse(self.sp.field(partial, self.voxel_size))
        for stage in (self.stem, self.stage1, self.stage2, self.stage3, self.stage4):
            x = stage(x)
        return x


class MinkUNetDiff(nn.Module):
    """LiDiff denoiser: a MinkUNet whose 8 block inputs are scaled by w = MLP([cond, time]).

    At each injection s the input x of the next block becomes x * w_s with
    w_s = latemp_s([latent_s(c), s_temp(emb(t))]) (up1 concatenates [time, cond]), where c is
    the encoder feature of the voxel's nearest encoder voxel. Returns epsilon per point.
    """

    def __init__(self, channels=LIDIFF_CHANNELS, width: float = 1.0, in_channels: int = 3,
                 voxel_size: float = 0.05, backend: str = "torch"):
        super().__init__()
        self.sp = get_backend(backend)
        self.voxel_size = voxel_size
        cs = self.cs = scale_channels(channels, width)
        self.embed_dim = cs[-1]
        add_encoder(self, self.sp, cs, in_channels)
        # Channels each injection modulates: the inputs of stage1..4, then of up1..4.
        modulated = dict(zip(INJECTIONS, [cs[0], cs[1], cs[2], cs[3], cs[4], cs[5], cs[6], cs[7]]))
        for name, c in modulated.items():
            hidden = cs[4] if name.startswith("stage") or name == "up1" else c
            setattr(self, f"latent_{name}", nn.Sequential(nn.Linear(cs[4], cs[4]), nn.LeakyReLU(0.1),
                                                          nn.Linear(cs[4], cs[4])))
            setattr(self, f"latemp_{name}", nn.Sequential(nn.Linear(2 * cs[4], hidden), nn.LeakyReLU(0.1),
                                                          nn.Linear(hidden, c)))
            setattr(self, f"{name}_temp", nn.Sequential(nn.Linear(self.embed_dim, self.embed_dim),
                                                        nn.LeakyReLU(0.1), nn.Linear(self.embed_dim, cs[4])))
        add_decoder(self, self.sp, cs)
        self.last = point_head(cs[8], 3)
        init_batch_norms(self)
        # Benchmark switches for the straightforward (LiDiff) evaluation; same numbers, more work.
        self.per_voxel_mlps = False    # run the modulation MLPs on every voxel, not per encoder voxel
        self.brute_force_match = False  # 1-NN to encoder voxels by all-pairs search, not lattice rings

    def _modulation(self, name: str, x, match: ConditionMatcher, emb: Tensor) -> Tensor:
        """Per-voxel weights w_s of injection `name` for tensor x.

        w_s is a row-wise function of the matched encoder voxel (its feature and its batch's
        time embedding), so the MLPs run on the few encoder voxels and the result is gathered:
        the same numbers as LiDiff's per-voxel evaluation at a fraction of the cost.
        """
        # One encoder voxel (the unconditional branch's all-zero scan): every voxel matches it, so
        # w_s is one row, broadcast below instead of searched and gathered.
        single = len(match.features) == 1 and not self.per_voxel_mlps
        rows = None if single else match(x)
        # Gathers use index_select: its backward (index_add_) is deterministic on CPU; advanced
        # indexing's (index_put_ accumulate) sums duplicate rows in thread order under load.
        if self.per_voxel_mlps:  # LiDiff's order: gather first, then the MLPs on every voxel
            cond = getattr(self, f"latent_{name}")(match.features.index_select(0, rows))
            time = getattr(self, f"{name}_temp")(emb).index_select(0, match.batch[rows])
        else:
            cond = getattr(self, f"latent_{name}")(match.features)
            time = getattr(self, f"{name}_temp")(emb).index_select(0, match.batch)
        # LiDiff concatenates [time, cond] at up1 and [cond, time] everywhere else.
        fused = getattr(self, f"latemp_{name}")(torch.cat((time, cond) if name == "up1" else (cond, time), dim=1))
        fused = fused.to(x.F.dtype)  # bfloat16 features under fuse_for_inference(precision='bf16')
        if single:
            return fused.expand(x.F.shape[0], -1)
        return fused if self.per_voxel_mlps else fused.index_select(0, rows)

    def forward(self, x_t: Tensor, cond, t: Tensor) -> Tensor:
        """x_t (B, N, 3), cond = encoder output, t (B,) integer steps -> epsilon (B, N, 3)."""
        return self.forward_branches(x_t, [cond], t)[0]

    def forward_branches(self, x_t: Tensor, conds, t: Tensor) -> list[Tensor]:
        """epsilon for the same x_t under several conditions (classifier-free guidance's pair).

        The voxelisation, the stem (which sees no condition) and every kernel map depend on x_t
        only, so they are built once and shared by the branches: each output equals `forward`.
        """
        field = self.sp.field(x_t, self.voxel_size)
        stem = self.stem(self.sp.sparse(field))  # strides 1, 2, 4, 8 follow
        emb = timestep_embedding(t, self.embed_dim)
        return [self._branch(field, stem, cond, emb).reshape(x_t.shape) for cond in conds]

    def _branch(self, field, stem, cond, emb: Tensor) -> Tensor:
        match = ConditionMatcher(self.sp, cond, ENCODER_STRIDE, brute_force=self.brute_force_match)
        skips = [stem]
        x = stem
        for k in range(1, 5):
            name = f"stage{k}"
            x = getattr(self, name)(x * self._modulation(name, x, match, emb))
            skips.append(x)
        skips.pop()  # x is now the stride-16 tensor
        for k in range(1, 5):
            deconv, blocks = getattr(self, f"up{k}")
            up = deconv(x * self._modulation(f"up{k}", x, match, emb))
            x = blocks(self.sp.cat(up, skips.pop()))
        return self.last(self.sp.slice(x, field).to(self.last[0].weight.dtype))


class MinkUNet(nn.Module):
    """LiDiff refinement net: plain MinkUNet with a tanh head of `3 * up_factor` offsets per point."""

    def __init__(self, channels=LIDIFF_CHANNELS, width: float = 1.0, in_channels: int = 3,
                 up_factor: int = 6, voxel_size: float = 0.05, backend: str = "torch"):
        super().__init__()
        self.sp = get_backend(backend)
        self.voxel_size = voxel_size
        self.up_factor = up_factor
        cs = self.cs = scale_channels(channels, width)
        add_encoder(self, self.sp, cs, in_channels)
        add_decoder(self, self.sp, cs)
        self.last = point_head(cs[8], 3 * up_factor, nn.Tanh())
        init_batch_norms(self)

    def forward(self, points: Tensor) -> Tensor:
        """points (B, N, 3) -> offsets (B, N, up_factor, 3) in metres, each in [-1, 1]."""
        field = self.sp.field(points, self.voxel_size)
        skips = [self.stem(self.sp.sparse(field))]
        for k in range(1, 5):
            skips.append(getattr(self, f"stage{k}")(skips[-1]))
        x = skips.pop()
        for k in range(1, 5):
            deconv, blocks = getattr(self, f"up{k}")
            x = blocks(self.sp.cat(deconv(x), skips.pop()))
        b, n, _ = points.shape
        return self.last(self.sp.slice(x, field).to(self.last[0].weight.dtype)).reshape(b, n, self.up_factor, 3)
