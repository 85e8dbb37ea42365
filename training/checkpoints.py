"""Training checkpoints: weights the Completer can load, plus everything needed to resume exactly.

out/checkpoints/step_0000500/
    weights.safetensors   ddpo_ros weights (roles + inference config): `ddpo complete --weights` takes it
    state.safetensors     optimiser tensors; metadata: optimiser param groups, step, epoch, position
                          in the epoch, the step generator's state, TensorBoard step
out/checkpoints/latest    the name of the newest complete checkpoint

A checkpoint is written into a temporary folder and renamed into place, and `latest` is replaced
atomically after that, so a run killed at any moment leaves the previous checkpoint intact.
No pickle anywhere: tensors in safetensors, everything else JSON.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ddpo_ros.atomic import atomic_open, atomic_write
from ddpo_ros.checkpoint import CheckpointError, build_models, load_checkpoint, save_checkpoint


def _flatten_optimizer(name: str, state: dict, tensors: dict) -> dict:
    """Optimiser state dict -> tensors (into `tensors`) and a JSON-able remainder."""
    rest = {"param_groups": state["param_groups"], "state": {}}
    for idx, slots in state["state"].items():
        rest["state"][str(idx)] = {}
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                rest["state"][str(idx)][key] = value
    return rest


def _unflatten_optimizer(name: str, rest: dict, f) -> dict:
    state = {}
    for idx, slots in rest["state"].items():
        state[int(idx)] = dict(slots)
        prefix = f"{name}.{idx}."
        for key in f.keys():
            if key.startswith(prefix):
                state[int(idx)][key[len(prefix):]] = f.get_tensor(key)
    return {"state": state, "param_groups": rest["param_groups"]}


def save(out: Path, step: int, models: dict, optimizers: dict, config, progress: dict) -> Path:
    """Write checkpoint `step` (models: role -> module; optimizers: name -> optimiser)."""
    root = Path(out) / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_checkpoint(tmp / "weights.safetensors", models, config, step=step)
    tensors, meta = {}, {"progress": progress, "optimizers": {}}
    for name, opt in optimizers.items():
        meta["optimizers"][name] = _flatten_optimizer(name, opt.state_dict(), tensors)
    tensors["__nothing__"] = torch.zeros(0)  # safetensors needs at least one tensor
    save_file(tensors, str(tmp / "state.safetensors"), metadata={"training": json.dumps(meta)})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # a folder: ddpo_ros.atomic handles files, and a rename is all it takes
    with atomic_open(root / "latest", "w") as f:
        f.write(final.name)
    return final


def publish_weights(out: Path) -> Path:
    """out/weights.safetensors: a copy of the latest checkpoint's weights (atomic), the run's result."""
    src = latest(out) / "weights.safetensors"
    return atomic_write(Path(out) / "weights.safetensors", lambda tmp: shutil.copyfile(src, tmp))


def latest(out: Path) -> Path | None:
    pointer = Path(out) / "checkpoints" / "latest"
    return Path(out) / "checkpoints" / pointer.read_text().strip() if pointer.exists() else None


def load(path: Path, models: dict, optimizers: dict) -> dict:
    """Restore models and optimisers in place from a checkpoint folder; returns its progress record."""
    ckpt = load_checkpoint(path / "weights.safetensors")
    for role, module in models.items():
        module.load_state_dict(ckpt.state[role])
    with safe_open(str(path / "state.safetensors"), framework="pt", device="cpu") as f:
        meta = json.loads(f.metadata()["training"])
        for name, opt in optimizers.items():
            opt.load_state_dict(_unflatten_optimizer(name, meta["optimizers"][name], f))
    return meta["progress"]


def load_roles(path: str, field: str, cfg, roles: list[str], device) -> dict:
    """Networks of `roles` from the weights file `path` (the config field `field`), checked against cfg.model."""
    if not path:
        raise ValueError(f"{field} is empty: give the weights the teacher stage wrote "
                         "(runs/<teacher>/checkpoints/step_.../weights.safetensors)")
    ckpt = load_checkpoint(path)
    if ckpt.config.model != cfg.model:
        raise CheckpointError(f"{path} ({field}): its networks are {ckpt.config.model}, but the config's model "
                              f"section is {cfg.model}; make them agree")
    return build_models(ckpt, roles, device=device)
