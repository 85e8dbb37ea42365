"""How much of Distillation-DPO's |g| is BatchNorm statistics, and how far the student moves.

    python tools/distill_signal.py --steps 3 --out bench/distill_signal

Runs the real `distill` stage (config/train/distill_mini.yaml, the bundled teacher unless
--teacher) for a few steps on the same batches in four settings: BatchNorm frozen to the
teacher's statistics (distill.freeze_bn) or in train mode (the reference), and TAs that learn
(the config's distill.ta_lr) or cannot (ta_lr 1e-30 leaves every float32 weight as it is). Per
step: |g| = |eps_teacher - eps_ta| at the winner and the loser, and the student's drift from the
teacher (parameters apart from BatchNorm buffers). Train mode with TAs that cannot learn is the
statistics-noise floor: a |g| no larger than that floor is not a learning signal.
Writes OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.data import default_collate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from training import distill  # noqa: E402
from training.config import load_train_config  # noqa: E402
from training.data.sets import build_sets  # noqa: E402
from training.loop import setup  # noqa: E402

KEYS = ("g/winner_norm", "g/loser_norm", "drift/student_params", "drift/student_params_relative",
        "drift/student_buffers", "drift/ta_win_params", "preference/margin")


def run(config: Path, overrides: dict, steps: int) -> list[dict]:
    cfg = load_train_config(config, overrides)
    train_set, _ = build_sets(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        stage = distill.build(cfg, train_set=train_set, val_set=None, run=setup(cfg, Path(tmp)))
        logs = [stage.step(default_collate([train_set[i]])) for i in range(steps)]
    return [{k: log[k] for k in KEYS} for log in logs]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "config" / "train" / "distill_mini.yaml"))
    p.add_argument("--teacher", default=str(REPO / "ddpo_ros" / "weights" / "mini.safetensors"))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default="bench/distill_signal")
    args = p.parse_args(argv)
    base = {"distill.teacher": args.teacher, "data.num_workers": 0, "data.augment": False}
    rows = []
    for freeze in (True, False):
        for learns in (True, False):
            over = {**base, "distill.freeze_bn": freeze, **({} if learns else {"distill.ta_lr": 1e-30})}
            torch.manual_seed(0)
            rows.append({"freeze_bn": freeze, "tas_learn": learns, "steps": run(Path(args.config), over, args.steps)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": args.config,
              "teacher": args.teacher, "rows": rows}
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = ["| BatchNorm | TAs | step | g winner | g loser | student drift (params) | relative | buffers | TA drift |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        for i, s in enumerate(r["steps"]):
            bn, tas = "frozen" if r["freeze_bn"] else "train mode", "learn" if r["tas_learn"] else "frozen"
            lines.append(f"| {bn} | {tas} | {i + 1} | {s['g/winner_norm']:.3g} | {s['g/loser_norm']:.3g} | "
                         f"{s['drift/student_params']:.3g} | {s['drift/student_params_relative']:.2g} | "
                         f"{s['drift/student_buffers']:.3g} | {s['drift/ta_win_params']:.3g} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
