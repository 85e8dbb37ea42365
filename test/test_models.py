"""LiDiff networks: exact parameter counts, checkpoint key layout, batching and invariances."""
from __future__ import annotations

import pytest
import torch

from ddpo_ros.config import ModelConfig
from ddpo_ros.models import ROLE_BUILDERS, build_denoiser, build_encoder, build_refiner
from ddpo_ros.models.blocks import scale_channels
from ddpo_ros.sparse import get_backend


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_full_width_parameter_counts_equal_lidiff():
    cfg = ModelConfig()
    assert n_params(build_denoiser(cfg)) == 24_174_515
    assert n_params(build_encoder(cfg)) == 8_497_952
    assert n_params(build_refiner(cfg)) == 21_722_926


def test_state_dict_layout_is_the_reference_layout():
    shapes = {k: tuple(v.shape) for k, v in build_denoiser(ModelConfig()).state_dict().items()}
    expected = {
        "stem.0.kernel": (27, 3, 32), "stage1.0.net.0.kernel": (8, 32, 32), "stage1.1.net.0.kernel": (27, 32, 32),
        "stage4.2.net.3.kernel": (27, 256, 256), "up1.0.net.0.kernel": (8, 256, 256),
        "up1.1.0.net.0.kernel": (27, 384, 256), "up1.1.0.downsample.0.kernel": (384, 256),
        "stem.1.bn.running_var": (32,), "stem.1.bn.num_batches_tracked": (),
        "latent_stage1.0.weight": (256, 256), "latemp_stage1.2.weight": (32, 256),
        "latemp_up2.0.weight": (256, 512), "latemp_up4.2.weight": (96, 96), "stage1_temp.0.weight": (96, 96),
        "stage1_temp.2.weight": (256, 96), "up4_temp.2.weight": (256, 96),
        "last.0.weight": (20, 96), "last.2.weight": (3, 20),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    assert "stage1.1.downsample.0.kernel" not in shapes  # identity shortcut when channels agree
    refiner = build_refiner(ModelConfig()).state_dict()
    assert refiner["last.2.weight"].shape == (18, 20)
    assert not any(k.startswith(("latent", "latemp")) for k in refiner)


def test_width_multiplier_scales_every_channel():
    assert scale_channels((32, 32, 64, 128, 256, 256, 128, 96, 96), 0.25) == [8, 8, 16, 32, 64, 64, 32, 24, 24]
    sd = build_denoiser(ModelConfig(width=0.25)).state_dict()
    assert sd["stem.0.kernel"].shape == (27, 3, 8) and sd["latent_up1.0.weight"].shape == (64, 64)
    with pytest.raises(ValueError, match="9 positive"):
        scale_channels((32, 32, 64, 128, 256, 256, 128, 96, 96), 0.01)


def test_role_builders_cover_every_role():
    roles = {"teacher", "student", "ta_win", "ta_lose", "ta", "ta_real", "encoder", "refiner"}
    assert set(ROLE_BUILDERS) == roles


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown sparse backend 'spconv'"):
        get_backend("spconv")


@pytest.fixture(scope="module")
def mini_models():
    torch.manual_seed(0)
    cfg = ModelConfig(width=0.125)
    return build_encoder(cfg).eval(), build_denoiser(cfg).eval(), build_refiner(cfg).eval()


def _inputs(scan_xyz, b=2, m=400, n=4000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scan = torch.from_numpy(scan_xyz)
    part = torch.stack([scan[torch.randperm(len(scan), generator=gen)[:m]] for _ in range(b)])
    x_t = part.repeat(1, n // m, 1) + 0.4 * torch.randn(b, n, 3, generator=gen)
    return part, x_t


def test_batched_forward_equals_per_sample(mini_models, scan_xyz):
    """Each sample keeps its own time step (LiDiff's repeat_interleave mixes them at strides >= 2)."""
    enc, den, ref = mini_models
    part, x_t = _inputs(scan_xyz)
    t = torch.tensor([999, 125])
    with torch.no_grad():
        eps = den(x_t, enc(part), t)
        offsets = ref(x_t)
        for i in range(2):
            one = den(x_t[i:i + 1], enc(part[i:i + 1]), t[i:i + 1])
            torch.testing.assert_close(eps[i:i + 1], one, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(offsets[i:i + 1], ref(x_t[i:i + 1]), rtol=1e-5, atol=1e-6)


def test_shared_branches_and_straightforward_switches_give_the_same_eps(mini_models, scan_xyz):
    """CFG's two branches share the stem and kernel maps; LiDiff's per-voxel MLPs and all-pairs
    1-NN (the benchmark's straightforward path) give the same numbers as the grouped ones."""
    enc, den, _ = mini_models
    part, x_t = _inputs(scan_xyz)
    t = torch.tensor([999, 250])
    with torch.no_grad():
        cond, uncond = enc(part), enc(torch.zeros_like(part))
        eps_c, eps_u = den.forward_branches(x_t, [cond, uncond], t)
        torch.testing.assert_close(eps_c, den(x_t, cond, t), rtol=0, atol=0)
        torch.testing.assert_close(eps_u, den(x_t, uncond, t), rtol=0, atol=0)
        den.per_voxel_mlps = den.brute_force_match = True
        try:
            slow = den(x_t, cond, t)
        finally:
            den.per_voxel_mlps = den.brute_force_match = False
    torch.testing.assert_close(slow, eps_c, rtol=1e-5, atol=1e-6)


def test_outputs_follow_point_order_and_respond_to_inputs(mini_models, scan_xyz):
    enc, den, ref = mini_models
    part, x_t = _inputs(scan_xyz, b=1)
    perm = torch.randperm(x_t.shape[1])
    weights = []  # what the 8 injections multiply their tensors by
    hooks = [getattr(den, f"latemp_{name}").register_forward_hook(lambda m, i, o: weights.append(o))
             for name in ("stage1", "up1", "up4")]
    enc.train()  # batch statistics: random-init features would otherwise decay to ~0 over 14 BNs
    with torch.no_grad():
        cond = enc(part)
        eps = den(x_t, cond, torch.tensor([500]))
        torch.testing.assert_close(den(x_t[:, perm], cond, torch.tensor([500])), eps[:, perm], rtol=1e-5, atol=1e-6)
        den(x_t, cond, torch.tensor([10]))
        den(x_t, enc(part + torch.tensor([5.0, 0.0, 0.0])), torch.tensor([500]))
        offsets = ref(x_t)
    enc.eval()
    for hook in hooks:
        hook.remove()
    base, other_t, other_cond = weights[:3], weights[6:9], weights[9:12]
    for a, b, c in zip(base, other_t, other_cond):
        assert (a - b).abs().max() > 1e-3  # the time step reaches every injection
        assert (a.mean(0) - c.mean(0)).abs().max() > 1e-3  # and so does the condition (rows differ)
    assert eps.shape == x_t.shape and offsets.shape == (1, x_t.shape[1], 6, 3)
    assert offsets.abs().max() <= 1.0


def test_unconditional_zero_cloud_encodes(mini_models):
    """CFG's unconditional input is an all-zero partial cloud: one voxel, still a valid condition."""
    enc, den, _ = mini_models
    with torch.no_grad():
        cond = enc(torch.zeros(1, 1800, 3))
        assert cond.F.shape[0] == 1
        assert torch.isfinite(den(torch.randn(1, 500, 3) * 10, cond, torch.tensor([999]))).all()


def test_training_step_updates_every_parameter(scan_xyz):
    torch.manual_seed(1)
    cfg = ModelConfig(width=0.125)
    enc, den = build_encoder(cfg), build_denoiser(cfg)
    part, x_t = _inputs(scan_xyz, b=2, m=200, n=2000)
    loss = den(x_t, enc(part), torch.tensor([3, 700])).square().mean()
    loss.backward()
    dead = [n for m in (enc, den) for n, p in m.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert dead == []
