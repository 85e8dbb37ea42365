"""`ddpo convert`: weights between the reference Lightning `.ckpt` files and our `.safetensors`.

Three directions, picked by the inputs: `.ckpt` files -> one `.safetensors` (import, merged),
one `.safetensors` + --layout -> a reference `.ckpt` (export), several `.safetensors` -> one
(merge, e.g. a teacher run's and a refine run's weights; `--set completion.KEY=VALUE` changes the
sampling settings the weights ship with). The work is in ddpo_ros.checkpoint
(our format) and ddpo_ros.reference_ckpt (theirs); this module parses, reports and prints.
"""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Mapping

from torch import Tensor

from ..checkpoint import CheckpointError, _check_roles, load_checkpoint, merge, save_checkpoint
from ..config import CompletionConfig, ConfigError, from_dict, to_dict
from ..reference_ckpt import LAYOUTS, export_reference, import_reference

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _param_count(state: Mapping[str, Tensor]) -> int:
    """Trainable parameters in a state dict: BN running statistics and counters are not counted."""
    return sum(t.numel() for k, t in state.items() if not k.endswith(_BUFFERS))


def with_completion(ckpt, sets) -> object:
    """ckpt with `completion.KEY=VALUE` settings (YAML values) in its config: the sampling settings the
    weights ship with (e.g. completion.start_t). model and diffusion describe the networks: not settable."""
    import yaml
    values = to_dict(ckpt.config.completion)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("completion."):
            raise ConfigError(f"--set {item!r}: expected completion.KEY=VALUE")
        values[key.removeprefix("completion.")] = yaml.safe_load(value)
    completion = from_dict(CompletionConfig, values, "--set completion")
    return replace(ckpt, config=replace(ckpt.config, completion=completion))


def convert_cli(args) -> int:
    """`ddpo convert`: .ckpt files -> one .safetensors, one .safetensors + --layout -> .ckpt, or
    several .safetensors -> one merged .safetensors (e.g. a teacher run's and a refine run's weights),
    one .safetensors + --roles -> those roles only."""
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
        elif all(p.suffix == ".safetensors" for p in inputs) and (len(inputs) > 1 or roles or args.set):
            # one file with --roles: a subset, e.g. a teacher file's encoder + teacher to merge with a
            # refine run's refiner in place of the one it holds; with --set: new sampling settings
            ckpt = with_completion(merge(inputs, roles), args.set)
            out = save_checkpoint(args.output, ckpt.state, ckpt.config, step=ckpt.step, extra=ckpt.extra,
                                  source=ckpt.source)
            state, config = ckpt.state, ckpt.config
        else:
            if any(p.suffix == ".safetensors" for p in inputs):
                raise CheckpointError("a .safetensors input needs --layout (export), --roles (a subset), --set, or "
                                      "two or more .safetensors inputs and nothing else (merge); import takes "
                                      ".ckpt files")
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
