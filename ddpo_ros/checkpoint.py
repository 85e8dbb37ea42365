"""Weights on disk: our single-file safetensors format, and the reference Lightning checkpoints.

Our file: tensors "{role}.{param}" (param names = the reference LiDiff keys, BN buffers included) and
string metadata `format`, `config` (JSON of `to_dict(Config)`), `roles`, `step`, optional `source`
and `extra`. The importer reads the released LiDiff / ScoreLiDAR / Distillation-DPO `.ckpt` files
(reference notes, sections 1 and 8) with torch's weights-only unpickler, so no code in a file runs.
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .config import LIDIFF_CHANNELS, Config, ConfigError, DiffusionConfig, ModelConfig, from_dict, to_dict
from .models import ROLE_BUILDERS

FORMAT = "ddpo_ros/1"
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
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


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


_UMASK = os.umask(0)  # reading the umask means setting it: once, at import, and put straight back
os.umask(_UMASK)


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write via a temp file in the same directory, fsync, then os.replace: readers never see a
    half-written file and a failed write leaves the old one untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes 0600 and safetensors recreates the file 0600 too; weights are meant to be
        # shared like any other output, so give them what the umask allows a new file.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (not possible on every platform)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(dir_fd)
        os.close(dir_fd)
    except OSError:
        pass


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
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
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
    merge adds a refiner to a file that had none (the training loop stores refine=False there).
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
    info = {"merged": [str(c.path) for c in ckpts], "roles": origin}
    return Checkpoint(state, replace(base.config, completion=completion), max(c.step for c in ckpts),
                      base.extra, json.dumps(info))


def merge_checkpoints(paths, out, roles=None) -> Path:
    """Write `merge(paths, roles)` to the .safetensors file `out`; returns its path."""
    ckpt = merge(paths, roles)
    return save_checkpoint(out, ckpt.state, ckpt.config, step=ckpt.step, extra=ckpt.extra, source=ckpt.source)


# --- reference (PyTorch Lightning) checkpoints ------------------------------------------------
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
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))
    return path


def _param_count(state: Mapping[str, Tensor]) -> int:
    return sum(t.numel() for k, t in state.items() if not k.endswith(_BUFFERS))


def convert_cli(args) -> int:
    """`ddpo convert`: .ckpt files -> one .safetensors, one .safetensors + --layout -> .ckpt, or
    several .safetensors -> one merged .safetensors (e.g. a teacher run's and a refine run's weights)."""
    try:
        roles = [r.strip() for r in args.roles.split(",") if r.strip()] if args.roles else None
        _check_roles(roles or (), "--roles")
        inputs = [Path(p) for p in args.inputs]
        if args.layout:
            if len(inputs) != 1 or inputs[0].suffix != ".safetensors":
                raise CheckpointError("--layout exports exactly one .safetensors input")
            ckpt = load_checkpoint(inputs[0])
            ckpt = replace(ckpt, state={r: s for r, s in ckpt.state.items() if roles is None or r in roles})
            out = export_reference(ckpt, args.output, args.layout)
            state, config = {r: ckpt.state[r] for r in LAYOUTS[args.layout]}, ckpt.config
        elif all(p.suffix == ".safetensors" for p in inputs) and len(inputs) > 1:
            ckpt = merge(inputs, roles)
            out = save_checkpoint(args.output, ckpt.state, ckpt.config, step=ckpt.step, extra=ckpt.extra,
                                  source=ckpt.source)
            state, config = ckpt.state, ckpt.config
        else:
            if any(p.suffix == ".safetensors" for p in inputs):
                raise CheckpointError("a .safetensors input needs --layout (export), or two or more "
                                      ".safetensors inputs and nothing else (merge); import takes .ckpt files")
            state, config, info = import_reference(inputs, roles)
            hp = info.pop("hyper_parameters")
            try:
                extra = {"hyper_parameters": json.loads(json.dumps(hp))} if hp else None
            except (TypeError, ValueError):
                extra = None  # not JSON: the export then writes only the schedule
            out = save_checkpoint(args.output, state, config, step=info["global_step"] or 0,
                                  extra=extra, source=json.dumps(info))
    except (CheckpointError, ConfigError, OSError) as err:  # OSError: e.g. an unwritable output
        print(f"ddpo convert: error: {err}", file=sys.stderr)
        return 2
    for role, st in state.items():
        print(f"  {role:8s} {_param_count(st):>12,d} parameters")
    m, d = config.model, config.diffusion
    print(f"  width {m.width:g}, voxel {m.voxel_size:g} m, T={d.num_train_timesteps}, "
          f"betas {d.beta_start:g}..{d.beta_end:g}")
    print(f"wrote {out}")
    return 0
