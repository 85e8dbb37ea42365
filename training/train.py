"""Train and evaluate the Distillation-DPO student: `python training/train.py <stage> ...`.

Stages:
  teacher        LiDiff's diffusion model from scratch (config/train/teacher.yaml, teacher_mini.yaml)
  refine         LiDiff's refinement net on jittered ground truth or a teacher's completions
                 (config/train/refine.yaml, refine_mini.yaml)
  distill        Distillation-DPO student from a teacher (config/train/distill.yaml, distill_mini.yaml)
  score-distill  the score-distillation baseline of Table 6 (config/train/score_distill*.yaml)
  diffusion-dpo  Diffusion-DPO fine-tuning of the teacher, Table 4 (config/train/diffusion_dpo*.yaml)
  evaluate   Table 1/2 metrics (CD, P/R/F, JSD, EMD, IoU, seconds, NFE) of a weights file on a split

    python training/train.py teacher --config config/train/teacher_mini.yaml --out runs/teacher_mini
    python training/train.py teacher --config ... --out runs/teacher_mini --resume     # after an interruption
    torchrun --nproc_per_node 2 training/train.py teacher --config config/train/teacher.yaml --out runs/teacher
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="training/train.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    from training.config import STAGES

    helps = {"teacher": "train LiDiff's diffusion model (encoder + denoiser)",
             "refine": "train the refinement net (x6 points)",
             "distill": "Distillation-DPO: a few-step student from the teacher (Eqs. 18-20)",
             "score-distill": "the score-distillation baseline (one teacher assistant, Table 6)",
             "diffusion-dpo": "Diffusion-DPO fine-tuning of the teacher from preference pairs (Eq. 10, Table 4)"}
    for name in STAGES:
        p = sub.add_parser(name, help=helps.get(name, name))
        p.add_argument("--config", required=True, help="config/train/<x>.yaml")
        p.add_argument("--out", required=True, help="run folder: checkpoints/, tensorboard/, val/")
        p.add_argument("--resume", action="store_true", help="continue from out/checkpoints/latest, exactly")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value (YAML syntax), e.g. --set train.max_steps=10")

    p = sub.add_parser("evaluate", help="paper-table metrics of a weights file on a KITTI split",
                       description="Complete every scan of a split and score it against the aggregated "
                                   "ground truth as the reference's eval_path.py does; resumable.")
    p.add_argument("--weights", required=True, help="ddpo_ros .safetensors weights")
    p.add_argument("--data", required=True,
                   help="SemanticKITTI root (sequences/XX/...), one sequence folder, or synthetic:N (held-out scenes)")
    p.add_argument("--split", default="val", choices=["train", "val"], help="val = sequence 08")
    p.add_argument("--sequences", default=None, help="comma-separated sequence names instead of --split")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: 8 student, 50 teacher)")
    p.add_argument("--guidance", type=float, default=None, help="CFG weight (default: 3.5 student, 6 teacher)")
    p.add_argument("--no-refine", action="store_true", help="score the diffusion output without the refiner")
    p.add_argument("--start-t", default=None, metavar="T|ref", type=lambda v: v if v == "ref" else int(v),
                   help="first sampler step (completion.start_t); ref: the reference's x_init + eps at T-1 "
                        "(default: the weights' own)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16"],
                   help="bf16: bfloat16 convolutions, faster on AMX CPUs and GPUs, approximate (default: the weights')")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the first scan (+1 per scan)")
    p.add_argument("--start", type=int, default=0, help="first scan index")
    p.add_argument("--every", type=int, default=1, help="every k-th scan")
    p.add_argument("--limit", type=int, default=None, help="at most this many scans")
    p.add_argument("--renders", type=int, default=3, help="PNG renders of the first n scans")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", default="runs/maps", help="where ground-truth maps are cached")
    p.add_argument("--poses", default=None, help="poses file name in each sequence folder (default poses.txt)")
    p.add_argument("--out", default="runs/eval", help="results.jsonl, summary.json/.md, renders/")
    return parser


def main(argv=None) -> int:
    from ddpo_ros.frontends import allocator

    args = build_parser().parse_args(argv)
    if args.stage == "evaluate":
        from training.evaluate import evaluate
        allocator.retain_freed_memory()  # large tensors reuse freed pages (frontends/allocator.py)
        return evaluate(args)
    # Training's tensors change size every step, and a heap that keeps them fragments without bound.
    allocator.return_freed_memory()
    return run_stage(args)


def run_stage(args) -> int:
    from ddpo_ros.config import ConfigError
    from training.config import load_train_config, parse_sets
    from training.data.sets import build_sets
    from training.loop import setup, train

    try:
        overrides = parse_sets(args.set)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        cfg = load_train_config(args.config, overrides)
        if cfg.stage != args.stage:
            raise ConfigError(f"{args.config}: stage is {cfg.stage!r}, but the command is {args.stage!r}")
        train_set, val_set = build_sets(cfg)
        run = setup(cfg, Path(args.out))
        module = importlib.import_module(f"training.{args.stage.replace('-', '_')}")
        stage = module.build(cfg, run, train_set, val_set)
    except (ConfigError, FileNotFoundError, ValueError) as err:  # CheckpointError is a ValueError
        print(f"train.py {args.stage}: {err}", file=sys.stderr)
        return 2
    train(cfg, stage, run, resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
