"""Weights on disk: our single-file safetensors format.

Our file: tensors "{role}.{param}" (param names = the reference LiDiff keys, BN buffers included) and
string metadata `format`, `config` (JSON of `to_dict(Config)`), `roles`, `step`, optional `source`
and `extra`. The reference LiDiff / ScoreLiDAR / Distillation-DPO `.ckpt` files are read and written
by reference_ckpt, and `ddpo convert` (frontends/convert.py) moves weights between the two.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .atomic import atomic_write
from .config import Config, ConfigError, ModelConfig, from_dict, to_dict
from .models import ROLE_BUILDERS

FORMAT = "ddpo_ros/1"


class CheckpointError(ValueError):
    """A weights file is unreadable, unsafe or does not fit the networks; the message names the file."""


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns; `build_models` turns it into networks."""

    state: dict[str, dict[str, Tensor]]          # role -> param -> tensor
    config: Config
    step: int = 0
    extra: dict = field(default_factory=dict)
    source: str | None = None                     # what it was converted from, if anything
    path: str | None = None                       # the file it was read from

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.state)


def _listing(names, cap: int = 8) -> str:
    names = list(names)
    more = f" ... and {len(names) - cap} more" if len(names) > cap else ""
    return ", ".join(names[:cap]) + more + f" ({len(names)})"


def check_state(expected: nn.Module | Mapping[str, Tensor], state: Mapping[str, Tensor],
                role: str, where: str) -> None:
    """Raise CheckpointError unless `state` has exactly the keys and shapes of `expected`
    (what `load_state_dict(strict=True)` needs), listing every missing/unexpected/mis-shaped key."""
    want = expected.state_dict() if isinstance(expected, nn.Module) else expected
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [f"{k} {list(state[k].shape)} (network {list(want[k].shape)})"
              for k in want if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    problems = [f"{label}: {_listing(items)}" for label, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if items]
    if problems:
        raise CheckpointError(f"{where}: role {role!r} does not fit its network: " + "; ".join(problems))


def _meta_state(role: str, model: ModelConfig) -> dict[str, Tensor]:
    """The state_dict of `role`'s network on the meta device: names, order and shapes, no memory."""
    with torch.device("meta"):
        return ROLE_BUILDERS[role](model).state_dict()


def _check_roles(roles, where: str) -> None:
    unknown = [r for r in roles if r not in ROLE_BUILDERS]
    if unknown:
        raise CheckpointError(f"{where}: unknown role(s) {unknown}; known: {list(ROLE_BUILDERS)}")


def save_checkpoint(path, models: Mapping[str, nn.Module | Mapping[str, Tensor]], config: Config,
                    step: int = 0, extra: dict | None = None, source: str | None = None) -> Path:
    """Write `models` (role -> module or state dict) and `config` to one .safetensors file."""
    path = Path(path)
    _check_roles(models, str(path))
    tensors, seen = {}, set()
    for role, model in models.items():
        state = model.state_dict() if isinstance(model, nn.Module) else model
        for name, t in state.items():
            t = t.detach().to("cpu").contiguous()
            if t.untyped_storage().data_ptr() in seen and t.numel():
                t = t.clone()  # safetensors refuses tensors sharing memory (e.g. one module, two roles)
            seen.add(t.untyped_storage().data_ptr())
            tensors[f"{role}.{name}"] = t
    meta = {"format": FORMAT, "config": json.dumps(to_dict(config)), "roles": json.dumps(list(models)),
            "step": str(int(step))}
    if source is not None:
        meta["source"] = source
    if extra:
        meta["extra"] = json.dumps(extra)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def load_checkpoint(path) -> Checkpoint:
    """Read a file written by `save_checkpoint`."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        config = from_dict(Config, json.loads(meta.get("config", "null")))
    except (ConfigError, ValueError) as err:
        raise ConfigError(f"{path}: bad 'config' metadata: {err}") from None
    try:
        roles, step = json.loads(meta["roles"]), int(meta.get("step", "0"))
        extra = json.loads(meta.get("extra", "{}"))
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: bad 'roles'/'step'/'extra' metadata ({err})") from None
    _check_roles(roles, str(path))
    state: dict[str, dict[str, Tensor]] = {r: {} for r in roles}
    stray = []
    for key, t in tensors.items():
        role, _, name = key.partition(".")
        if role in state:
            state[role][name] = t
        else:
            stray.append(key)
    if stray:
        raise CheckpointError(f"{path}: tensors of roles not listed in its metadata {roles}: {_listing(stray)}")
    try:  # safetensors sorts names; give them back the network's order
        order = {role: list(_meta_state(role, config.model)) for role in state}
    except ValueError as err:  # e.g. a width that leaves a layer without channels
        raise ConfigError(f"{path}: bad 'config' metadata: {err}") from None
    state = {r: {**{k: st[k] for k in order[r] if k in st}, **st} for r, st in state.items()}
    return Checkpoint(state, config, step, extra, meta.get("source"), str(path))


def build_models(ckpt: Checkpoint, roles=None, device="cpu") -> dict[str, nn.Module]:
    """Networks of `roles` (default: all in the file) with the file's weights, in eval mode."""
    where = ckpt.path or ckpt.source or "checkpoint"
    out = {}
    for role in roles or ckpt.roles:
        if role not in ckpt.state:
            raise CheckpointError(f"{where}: has no role {role!r} (it has {list(ckpt.roles)})")
        net = ROLE_BUILDERS[role](ckpt.config.model)
        check_state(net, ckpt.state[role], role, where)
        net.load_state_dict(ckpt.state[role], strict=True)
        out[role] = net.eval().to(device)
    return out


def merge(paths, roles=None) -> Checkpoint:
    """Our weights files as one Checkpoint (e.g. a teacher run's encoder + teacher and a refine run's refiner).

    One file holds one model config, so every file's `model` section must be the same. A role found
    in two files must have identical tensors. The diffusion schedule and completion settings come
    from the first file with a role other than the refiner (a refiner-only file's schedule means
    nothing), and those files must agree on the schedule; completion.refine is switched on when the
    merge adds a refiner to a file that had none (the training loop stores refine=False there), and
    off when the result holds no refiner.
    `roles` keeps only those roles; step is the largest of the files'."""
    ckpts = [load_checkpoint(p) for p in paths]
    if not ckpts:
        raise CheckpointError("merge: no input files")
    where = ", ".join(str(c.path) for c in ckpts)
    _check_roles(roles or (), "--roles")
    first = ckpts[0]
    for c in ckpts[1:]:
        if c.config.model != first.config.model:
            a, b = to_dict(first.config.model), to_dict(c.config.model)
            diff = ", ".join(f"{k} {a[k]} vs {b[k]}" for k in a if a[k] != b[k])
            raise CheckpointError(f"{c.path}: model config differs from {first.path} ({diff}); "
                                  f"one file holds networks of one shape")
    state: dict[str, dict[str, Tensor]] = {}
    origin: dict[str, str] = {}
    for c in ckpts:
        for role, st in c.state.items():
            if roles is not None and role not in roles:
                continue
            if role in state and (state[role].keys() != st.keys() or
                                  not all(torch.equal(state[role][k], st[k]) for k in st)):
                raise CheckpointError(f"{c.path}: role {role!r} is also in {origin[role]}, with other tensors")
            state.setdefault(role, st)
            origin.setdefault(role, str(c.path))
    missing = sorted(set(roles or ()) - set(state))
    if missing or not state:
        raise CheckpointError(f"{where}: no weights for role(s) {missing or 'any'}")
    diffusing = [c for c in ckpts if any(r != "refiner" for r in c.roles)]
    base = diffusing[0] if diffusing else first
    for c in diffusing[1:]:
        if c.config.diffusion != base.config.diffusion:
            raise CheckpointError(f"{c.path}: diffusion schedule differs from {base.path} "
                                  f"({to_dict(c.config.diffusion)} vs {to_dict(base.config.diffusion)})")
    completion = base.config.completion
    if "refiner" in state and "refiner" not in base.roles:
        completion = replace(completion, refine=True)
    elif "refiner" not in state:  # e.g. --roles encoder,teacher of a file with a refiner: nothing to refine with
        completion = replace(completion, refine=False)
    info = {"merged": [str(c.path) for c in ckpts], "roles": origin}
    return Checkpoint(state, replace(base.config, completion=completion), max(c.step for c in ckpts),
                      base.extra, json.dumps(info))


def merge_checkpoints(paths, out, roles=None) -> Path:
    """Write `merge(paths, roles)` to the .safetensors file `out`; returns its path."""
    ckpt = merge(paths, roles)
    return save_checkpoint(out, ckpt.state, ckpt.config, step=ckpt.step, extra=ckpt.extra, source=ckpt.source)
