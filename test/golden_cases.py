"""Parity cases run identically on every sparse backend.

`tools/make_golden.py` runs them on a real MinkowskiEngine build and stores inputs and results in
test/fixtures/minkowski_golden.safetensors; test_sparse_parity.py replays them on the pure-PyTorch
backend (and live on MinkowskiEngine when it is importable). Rows are compared in lexicographic
coordinate order, so the backends' internal row orders do not matter.
"""
from __future__ import annotations

import numpy as np
import torch

from ddpo_ros.models.networks import MinkGlobalEnc, MinkUNet, MinkUNetDiff
from ddpo_ros.sparse import get_backend

LAYER_CASES = [
    dict(name="subm3_s1", op="conv", c_in=5, c_out=7, kernel=3, stride=1, tensor_stride=1),
    dict(name="subm3_s4", op="conv", c_in=6, c_out=3, kernel=3, stride=1, tensor_stride=4),
    dict(name="conv1", op="conv", c_in=6, c_out=4, kernel=1, stride=1, tensor_stride=1),
    dict(name="down2_s1", op="conv", c_in=4, c_out=5, kernel=2, stride=2, tensor_stride=1),
    dict(name="down2_s2", op="conv", c_in=3, c_out=6, kernel=2, stride=2, tensor_stride=2),
    dict(name="up2_s2", op="convtr", c_in=5, c_out=4, kernel=2, stride=2, tensor_stride=1),
    dict(name="bn_train", op="bn", c_in=6, train=True, tensor_stride=1),
    dict(name="bn_eval", op="bn", c_in=6, train=False, tensor_stride=1),
    dict(name="field", op="field", voxel=0.05),
]
UNET_CASE = dict(name="unet", op="unet", width=0.1, batch=2, n_part=200, n_full=2000)
CASES = LAYER_CASES + [UNET_CASE]


def _coord_order(coords: torch.Tensor) -> torch.Tensor:
    c = coords.long().numpy()
    return torch.from_numpy(np.lexsort(c.T[::-1]).copy())


def random_coords(gen: torch.Generator, stride: int, batch: int = 2, half: int = 6, density: float = 0.35):
    """Unique (batch, x, y, z) voxels, negative and positive, multiples of `stride`."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(-half, half + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    rows = []
    for b in range(batch):
        keep = torch.rand(len(grid), generator=gen) < density
        rows.append(torch.cat([torch.full((int(keep.sum()), 1), b), grid[keep] * stride], 1))
    coords = torch.cat(rows)
    return coords[torch.randperm(len(coords), generator=gen)].int()


def make_inputs(case: dict, gen: torch.Generator) -> dict:
    """Random inputs for a layer case (the unet case takes real points, see make_unet_inputs)."""
    op, t = case["op"], {}
    if op == "field":
        pts = torch.rand(2, 400, 3, generator=gen) * 0.6 - 0.3  # many points share 5 cm voxels
        t["points"], t["upstream"] = pts, torch.randn(800, 3, generator=gen)
        return t
    coords = random_coords(gen, case["tensor_stride"])
    t["coords"] = coords
    t["feats"] = torch.randn(len(coords), case["c_in"], generator=gen)
    if op == "bn":
        t["weight"] = torch.rand(case["c_in"], generator=gen) + 0.5
        t["bias"] = torch.randn(case["c_in"], generator=gen)
        t["running_mean"] = torch.randn(case["c_in"], generator=gen)
        t["running_var"] = torch.rand(case["c_in"], generator=gen) + 0.5
        t["upstream"] = torch.randn(len(coords), case["c_in"], generator=gen)
        return t
    volume = case["kernel"] ** 3
    shape = (case["c_in"], case["c_out"]) if volume == 1 else (volume, case["c_in"], case["c_out"])
    t["kernel"] = torch.randn(*shape, generator=gen)
    if op == "convtr":  # the coarse tensor comes from a stride-2 conv of the fine one
        t["down_kernel"] = torch.randn(8, case["c_in"], case["c_in"], generator=gen)
    t["upstream_seed"] = torch.tensor([int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen))])
    return t


def _upstream(seed: torch.Tensor, shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(int(seed)))


def run_layer(backend: str, case: dict, t: dict) -> dict:
    """Forward + backward of one layer; outputs in coordinate order, input grads in input order."""
    sp = get_backend(backend)
    op = case["op"]
    if op == "field":
        pts = t["points"].clone().requires_grad_(True)
        field = sp.field(pts, case["voxel"])
        x = sp.sparse(field)
        order = _coord_order(sp.coords(x))
        per_point = sp.slice(x, field)
        (per_point * t["upstream"]).sum().backward()
        return {"voxel_coords": sp.coords(x)[order].int(), "voxel_feats": x.F[order].detach(),
                "sliced": per_point.detach(), "grad_points": pts.grad}
    feats = t["feats"].clone().requires_grad_(True)
    x = sp.sparse_tensor(feats, t["coords"], case["tensor_stride"])
    if op == "bn":
        layer = sp.BatchNorm(case["c_in"])
        with torch.no_grad():
            for k in ("weight", "bias", "running_mean", "running_var"):
                getattr(layer.bn, k).copy_(t[k])
        layer.train(case["train"])
        y = layer(x)
        order = _coord_order(sp.coords(y))
        (y.F[order] * t["upstream"][_coord_order(t["coords"])]).sum().backward()
        return {"out_feats": y.F[order].detach(), "grad_feats": feats.grad,
                "grad_weight": layer.bn.weight.grad, "grad_bias": layer.bn.bias.grad,
                "running_mean": layer.bn.running_mean.clone(), "running_var": layer.bn.running_var.clone()}
    if op == "convtr":
        down = sp.Conv(case["c_in"], case["c_in"], 2, 2)
        with torch.no_grad():
            down.kernel.copy_(t["down_kernel"])
        x = down(x)
        layer = sp.ConvTranspose(case["c_in"], case["c_out"], case["kernel"], case["stride"])
    else:
        layer = sp.Conv(case["c_in"], case["c_out"], case["kernel"], case["stride"])
    with torch.no_grad():
        layer.kernel.copy_(t["kernel"])
    y = layer(x)
    order = _coord_order(sp.coords(y))
    out = y.F[order]
    (out * _upstream(t["upstream_seed"], out.shape)).sum().backward()
    return {"out_coords": sp.coords(y)[order].int(), "out_feats": out.detach(),
            "grad_feats": feats.grad, "grad_kernel": layer.kernel.grad}


def make_unet_inputs(case: dict, scan_xyz: np.ndarray, gen: torch.Generator) -> dict:
    """Real LiDAR points: partial scans and noisy 10x replicas as the denoiser sees them."""
    b, n_part = case["batch"], case["n_part"]
    parts = []
    for _ in range(b):
        idx = torch.randperm(len(scan_xyz), generator=gen)[:n_part]
        parts.append(torch.from_numpy(scan_xyz[idx.numpy()]))
    part = torch.stack(parts).float()
    x_t = part.repeat(1, case["n_full"] // n_part, 1)
    x_t = x_t + 0.3 * torch.randn(x_t.shape, generator=gen)
    return {"part": part, "x_t": x_t, "t": torch.tensor([999, 250][:b]),
            "upstream_seed": torch.tensor([int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen))])}


def unet_models(backend: str, width: float):
    return (MinkGlobalEnc(width=width, backend=backend), MinkUNetDiff(width=width, backend=backend),
            MinkUNet(width=width, backend=backend))


def randomise_batch_norms(model, gen: torch.Generator) -> None:
    """Non-trivial BN statistics so that eval mode exercises them."""
    with torch.no_grad():
        for name, v in model.state_dict().items():
            if name.endswith("running_var"):
                v.copy_(torch.rand(v.shape, generator=gen) * 1.5 + 0.5)
            elif name.endswith("running_mean"):
                v.copy_(torch.randn(v.shape, generator=gen) * 0.1)
            elif name.endswith("bn.weight"):
                v.copy_(torch.rand(v.shape, generator=gen) + 0.5)
            elif name.endswith("bn.bias"):
                v.copy_(torch.randn(v.shape, generator=gen) * 0.1)


GRAD_PARAMS = ("stem.0.kernel", "stage2.0.net.0.kernel", "stage4.2.net.3.kernel", "up1.0.net.0.kernel",
               "up1.1.0.downsample.0.kernel", "up4.1.1.net.4.bn.weight", "latent_stage1.0.weight",
               "latemp_up1.2.weight", "up3_temp.0.weight", "last.2.weight")


def run_unet(backend: str, case: dict, t: dict, states: dict) -> dict:
    """Encoder + denoiser + refiner in eval mode (forward and gradients) and train mode (forward)."""
    enc, den, ref = unet_models(backend, case["width"])
    for name, model in (("encoder", enc), ("denoiser", den), ("refiner", ref)):
        model.load_state_dict({k[len(name) + 1:]: v for k, v in states.items() if k.startswith(name + ".")})
    out = {}
    for mode in ("eval", "train"):
        for m in (enc, den, ref):
            m.train(mode == "train")
        x_t = t["x_t"].clone().requires_grad_(mode == "eval")
        cond = enc(t["part"])
        eps = den(x_t, cond, t["t"])
        offsets = ref(t["x_t"]) if mode == "eval" else None
        order = _coord_order(get_backend(backend).coords(cond))
        out[f"{mode}_cond_coords"] = get_backend(backend).coords(cond)[order].int()
        out[f"{mode}_cond_feats"] = cond.F[order].detach()
        out[f"{mode}_eps"] = eps.detach()
        if mode == "eval":
            out["eval_offsets"] = offsets.detach()
            g_eps = _upstream(t["upstream_seed"], eps.shape)
            g_off = _upstream(t["upstream_seed"] + 1, offsets.shape)
            ((eps * g_eps).sum() + (offsets * g_off).sum()).backward()
            out["grad_x_t"] = x_t.grad
            params = dict(den.named_parameters())
            for name in GRAD_PARAMS:
                out[f"grad_denoiser.{name}"] = params[name].grad.clone()
            out["grad_encoder.stage4.2.net.3.kernel"] = dict(enc.named_parameters())["stage4.2.net.3.kernel"].grad
            out["grad_refiner.up4.1.0.net.0.kernel"] = dict(ref.named_parameters())["up4.1.0.net.0.kernel"].grad
    return out
