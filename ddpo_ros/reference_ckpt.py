"""The reference checkpoints: PyTorch Lightning `.ckpt` files of LiDiff, ScoreLiDAR and Distillation-DPO.

`import_reference` reads the released files (reference notes, sections 1 and 8) into our roles with
torch's weights-only unpickler plus a few inert stand-ins, so no code in a file runs and a file
naming any other Python global is refused; `export_reference` writes our weights back in one of
the reference LAYOUTS, for the reference scripts. Our own format is in checkpoint.py.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from .atomic import atomic_write
from .checkpoint import Checkpoint, CheckpointError, _listing, _meta_state, check_state
from .config import LIDIFF_CHANNELS, Config, ConfigError, DiffusionConfig, ModelConfig, from_dict, to_dict

# The key mapping, one table: layout -> role -> state_dict prefix, as each reference training
# script names its modules (LiDiff diff_net / refine_net, ScoreLiDAR, Distillation-DPO, and the
# Diffusion-DPO teacher lidiff_ddpo_refined.ckpt it starts from). Import reads it backwards.
LAYOUTS = {
    "lidiff": {"teacher": "model.", "encoder": "partial_enc."},
    "lidiff_refine": {"refiner": "model_refine."},
    "scorelidar": {"student": "generator.", "encoder": "partial_enc.", "teacher": "teacher.", "ta": "auxDiff."},
    "distillation_dpo": {"student": "generator.", "encoder": "partial_enc.", "teacher": "teacher.",
                         "ta_win": "auxDiffBetter.", "ta_lose": "auxDiffWorse."},
    "ddpo_teacher": {"teacher": "DiffModel.", "encoder": "DM_encoder."},
}
# prefix -> role. Keys are split at their first ".", so "auxDiff." never swallows "auxDiffBetter.".
PREFIX_ROLES = {prefix: role for layout in LAYOUTS.values() for role, prefix in layout.items()}


# --- the restricted unpickler ---------------------------------------------------------------------
class _AttributeDict:
    """Stand-in for Lightning's AttributeDict (a dict subclass): unpickles as a plain dict, since
    the weights-only unpickler fills only exact dicts."""

    def __new__(cls, *args, **kwargs):
        return dict(*args, **kwargs)


class _Namespace:
    """Stand-in for argparse.Namespace: a bag of attributes, nothing else."""


class _Opaque:
    """Stand-in for numpy scalars/arrays/dtypes in callback or loop state: holds the raw pickled
    arguments, never interprets them (only `state_dict` and `hyper_parameters` are read)."""

    def __init__(self, *args):
        self.args = args

    def __setstate__(self, state):
        self.state = state


# The only non-torch globals a reference checkpoint may name; everything else is refused.
_SAFE_STAND_INS = [(_AttributeDict, n) for n in ("pytorch_lightning.utilities.parsing.AttributeDict",
                                                 "lightning.fabric.utilities.data.AttributeDict",
                                                 "lightning_fabric.utilities.data.AttributeDict")]
_SAFE_STAND_INS += [(_Namespace, "argparse.Namespace")]
_SAFE_STAND_INS += [(_Opaque, n) for n in ("numpy.dtype", "numpy.ndarray", "numpy.core.multiarray.scalar",
                                           "numpy._core.multiarray.scalar", "numpy.core.multiarray._reconstruct",
                                           "numpy._core.multiarray._reconstruct")]


def _torch_load(path: Path) -> Any:
    """torch.load(weights_only=True) with the stand-ins above; a file naming any other global is refused."""
    with torch.serialization.safe_globals(_SAFE_STAND_INS):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # garbage bytes can fail in any way; none of it runs code
            bad = sorted(set(re.findall(r"GLOBAL (\S+)", str(err))))
            if bad:
                try:  # a static scan of the pickle names every refused global, running nothing
                    bad = torch.serialization.get_unsafe_globals_in_checkpoint(path) or bad
                except Exception:
                    pass
                raise CheckpointError(f"{path}: refused: it needs Python global(s) {bad} that are not known "
                                      f"to be harmless, so the file was not loaded") from None
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''})") from None


# --- import and export ----------------------------------------------------------------------------
def split_roles(state_dict: Mapping[str, Tensor], where: str, roles=None) -> dict[str, tuple[str, dict]]:
    """role -> (reference prefix, state) by PREFIX_ROLES; a leading DDP "module." is dropped. Roles
    not in `roles` (when given) are dropped silently; unknown prefixes are always an error."""
    out: dict[str, tuple[str, dict]] = {}
    unknown = []
    for key, t in state_dict.items():
        head, _, name = key.removeprefix("module.").partition(".")
        role = PREFIX_ROLES.get(head + ".")
        if role is None or not name:
            unknown.append(key)
        elif roles is None or role in roles:
            prefix, state = out.setdefault(role, (head + ".", {}))
            if prefix != head + ".":
                raise CheckpointError(f"{where}: prefixes {prefix!r} and {head + '.'!r} both hold role {role!r}")
            state[name] = t
    if unknown:
        raise CheckpointError(f"{where}: keys with no known prefix {sorted(PREFIX_ROLES)}: {_listing(unknown)}")
    return out


def infer_model_config(state: Mapping[str, Mapping[str, Tensor]], where: str, voxel_size: float = 0.05) -> ModelConfig:
    """LiDiff's width multiplier `cr` from stem.0.kernel [27, 3, int(32 cr)] and stage4.2.net.3.kernel
    [27, c4, c4] (c4 = int(256 cr)), one width for all roles; the refiner's up factor from last.2.weight."""
    widths, up = {}, 6
    for role, st in state.items():
        try:
            c0, c4 = st["stem.0.kernel"].shape[-1], st["stage4.2.net.3.kernel"].shape[-1]
        except KeyError as err:
            raise CheckpointError(f"{where}: role {role!r} has no {err.args[0]} (not a LiDiff network)") from None
        fits = [w for w in (c0 / LIDIFF_CHANNELS[0], c4 / LIDIFF_CHANNELS[4])
                if int(w * LIDIFF_CHANNELS[0]) == c0 and int(w * LIDIFF_CHANNELS[4]) == c4]
        if not fits:
            raise CheckpointError(f"{where}: role {role!r}: no width explains {c0} stem and {c4} stage4 channels")
        widths[role] = fits[0]
        if role == "refiner" and "last.2.weight" in st:
            up = max(1, st["last.2.weight"].shape[0] // 3)
    if len(set(widths.values())) > 1:
        raise CheckpointError(f"{where}: roles have different widths {widths}; one file holds one width")
    return ModelConfig(width=next(iter(widths.values()), 1.0), voxel_size=voxel_size, refine_up_factor=up)


def _schedule(hparams: Mapping) -> tuple[dict, Any]:
    """DiffusionConfig fields and voxel size from LiDiff's `hyper_parameters` (its config.yaml)."""
    diff, data = hparams.get("diff") or {}, hparams.get("data") or {}
    names = {"beta_start": "beta_start", "beta_end": "beta_end", "t_steps": "num_train_timesteps",
             "beta_func": "beta_schedule"}
    return {ours: diff[theirs] for theirs, ours in names.items() if theirs in diff}, data.get("resolution")


def import_reference(paths, roles=None) -> tuple[dict[str, dict[str, Tensor]], Config, dict]:
    """Read reference .ckpt files (merged) into (role -> state, Config, source info).

    A role found in two files must have identical tensors. The schedule comes from LiDiff's
    `hyper_parameters['diff']`; without one (Distillation-DPO saves none) DiffusionConfig's defaults,
    which are the values it hard-codes."""
    merged: dict[str, dict[str, Tensor]] = {}
    origin: dict[str, Path] = {}
    info: dict[str, Any] = {"files": [str(p) for p in paths], "roles": {}, "global_step": None}
    hparams: list[dict] = []
    for path in map(Path, paths):
        obj = _torch_load(path)
        bare = isinstance(obj, dict) and "state_dict" not in obj
        sd = obj if bare else obj.get("state_dict") if isinstance(obj, dict) else None
        if not isinstance(sd, dict) or not sd or not all(isinstance(v, Tensor) for v in sd.values()):
            raise CheckpointError(f"{path}: no 'state_dict' of tensors in it")
        for role, (prefix, state) in split_roles(sd, str(path), roles).items():
            if role in merged and (merged[role].keys() != state.keys() or
                                   not all(torch.equal(merged[role][k], state[k]) for k in state)):
                raise CheckpointError(f"{path}: role {role!r} is also in {origin[role]}, with other tensors")
            merged.setdefault(role, state)
            origin.setdefault(role, path)
            info["roles"].setdefault(role, f"{path.name}:{prefix}")
        if not bare:
            hp = obj.get("hyper_parameters")
            hp = vars(hp) if isinstance(hp, _Namespace) else hp
            if isinstance(hp, dict) and hp:
                hparams.append(hp)
            if isinstance(obj.get("global_step"), int):
                info["global_step"] = max(info["global_step"] or 0, obj["global_step"])
    where = ", ".join(info["files"])
    missing = sorted(set(roles or ()) - set(merged))
    if missing or not merged:
        raise CheckpointError(f"{where}: no weights for role(s) {missing or 'any'}")
    schedules = [_schedule(hp) for hp in hparams if hp.get("diff")]
    if any(s != schedules[0] for s in schedules):
        raise CheckpointError(f"{where}: the files disagree on the diffusion schedule: {schedules}")
    sched, voxel = schedules[0] if schedules else ({}, None)
    # Kept so an export can give LiDiff's scripts their config.yaml back (the diffusion one first).
    info["hyper_parameters"] = next((hp for hp in hparams if hp.get("diff")), hparams[0] if hparams else None)
    try:
        model = infer_model_config(merged, where, **({"voxel_size": float(voxel)} if voxel else {}))
        config = Config(model=model, diffusion=from_dict(DiffusionConfig, sched, "diffusion"))
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    for role, state in merged.items():
        check_state(_meta_state(role, config.model), state, role, str(origin[role]))
    return merged, config, info


def export_reference(ckpt_or_state: Checkpoint | Mapping[str, Mapping[str, Tensor]], path, layout: str) -> Path:
    """Write a Lightning-shaped {"state_dict", "hyper_parameters"} .ckpt with the prefixes of `layout`."""
    path = Path(path)
    if layout not in LAYOUTS:
        raise CheckpointError(f"{path}: unknown layout {layout!r}; choose from {list(LAYOUTS)}")
    ckpt = ckpt_or_state if isinstance(ckpt_or_state, Checkpoint) else None
    state = ckpt.state if ckpt else ckpt_or_state
    missing = [r for r in LAYOUTS[layout] if r not in state]
    if missing:
        raise CheckpointError(f"{path}: layout {layout!r} needs role(s) {missing}; have {list(state)}")
    sd = {prefix + k: t.detach().cpu().contiguous() for role, prefix in LAYOUTS[layout].items()
          for k, t in state[role].items()}
    hp: dict = {}
    if ckpt:  # the imported config.yaml when we kept it, with our schedule written over it
        hp = json.loads(json.dumps((ckpt.extra or {}).get("hyper_parameters") or {}))
        d = ckpt.config.diffusion
        hp.setdefault("diff", {}).update(beta_start=d.beta_start, beta_end=d.beta_end,
                                         t_steps=d.num_train_timesteps, beta_func=d.beta_schedule)
        hp.setdefault("data", {})["resolution"] = ckpt.config.model.voxel_size
        hp["ddpo_ros"] = to_dict(ckpt.config)
    obj = {"state_dict": sd, "hyper_parameters": hp, "global_step": ckpt.step if ckpt else 0}
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
    return path
