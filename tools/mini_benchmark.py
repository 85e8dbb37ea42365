"""`make mini-benchmark`: Distillation-DPO against its teacher and score distillation, in miniature.

The paper's Table 2/6 comparison, its lambda sweep (Table 5) and JSD as the preference (Table 3)
on this CPU, all from one trained teacher (--teacher, roles encoder + teacher; default the bundled
mini teacher of config/train/teacher_mini.yaml):

1. students: Distillation-DPO (distill_mini.yaml) and score distillation (score_distill_mini.yaml),
   --student-steps optimiser steps, for each of --seeds seeds; and the ablations with seed 0 and
   --ablation-steps steps (with a baseline of the main settings at that budget): distill.lam in
   --lams, distill.preference jsd, distill.loser_weight in --loser-weights, pairs from two noises
   (distill.pair_noise independent, lam 1), the real score from ta_real (distill.real_ta) or from the
   ideal denoiser (distill.oracle_real; with and without the loser's term), and a structure term, the
   winner's Chamfer distance to the ground truth (distill.gt_weight in --gt-weights);
2. every model scored by `train.py evaluate` without the refiner (as the reference evaluates) on
   --synthetic held-out synthetic scenes and on KITTI frames 10/20/30 of kitti_seq00_0_39, which no
   stage trains on: teacher --teacher-steps and 8/4/2/1 steps, score distillation 8, Distillation-DPO
   8/4/2/1;
3. per row the mean and std over seeds of each run's mean CD, accuracy and coverage; the paired
   differences DDPO-8 minus teacher-8, DDPO-8 minus score-8 and DDPO-k minus teacher-k at 4/2/1 steps
   per scene (averaged over seeds) with a 95% bootstrap interval over scenes;
4. each student's drift from the teacher, trained weights apart from BatchNorm statistics;
5. bench/mini_benchmark.{json,md}. --bundle writes the seed-0 Distillation-DPO student with the encoder,
   the teacher and the teacher file's refiner to ddpo_ros/weights/mini.safetensors (the node then runs
   the student), only if DDPO-8 beats teacher-8 with the interval below zero.

Each finished run (trained and scored) leaves a small record in --records (bench/mini_benchmark_runs,
kept in git: per-scene scores, drift, training curves, wall time, the commit), keyed by the teacher
networks' SHA-256 (every row is scored at the reference's start, whatever start the file sets), the
resolved stage config's, the settings, the budget and what was scored. A rerun
reads a matching record instead of training again, so the hours of CPU can be spread over sessions
(headline runs first); --report-only writes the table from the records there are. Without a record,
finished work in --out still counts: a stage resumes or extends to a larger budget, an evaluation is
redone only for a student that trained further, and a folder is tied to its teacher, config and settings.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # training/ is not an installed package
from training import checkpoints  # noqa: E402
from tools.mini_benchmark_report import (bootstrap_interval, curves, drift, markdown, paired,  # noqa: E402,F401
                                         summarise, teacher_hash as teacher_hash_of, trend)
TRAIN = [sys.executable, str(REPO / "training" / "train.py")]
SPLITS = ("synthetic", "kitti")
FEW = (8, 4, 2, 1)  # the sampling steps of the students' rows (and of the teacher's, next to its long row)


def sh(cmd: list, log: Path) -> None:
    print("$", " ".join(map(str, cmd)), flush=True)
    with open(log, "a") as f:
        proc = subprocess.run(list(map(str, cmd)), cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): see {log}")


def steps_done(out: Path) -> int:
    """The step of the stage's last checkpoint (folders are named step_NNNNNNN), 0 before the first."""
    last = checkpoints.latest(out)
    return int(last.name.split("_")[1]) if last is not None else 0


def stage(name: str, config: str, out: Path, steps: int, log: Path, *extra: str) -> Path:
    """Train `name` up to `steps` optimiser steps, resuming a run that stopped short or had a smaller
    budget (the lr schedule is a function of the epoch, so it continues exactly). Wall time
    accumulates in out/seconds.txt."""
    done = steps_done(out)
    if done < steps or not (out / "weights.safetensors").exists():
        start = time.perf_counter()
        resume = ["--resume"] if done else []
        sh([*TRAIN, name, "--config", REPO / "config" / "train" / config, "--out", out,
            "--set", f"train.max_steps={steps}", *extra, *resume], log)
        before = float((out / "seconds.txt").read_text()) if done and (out / "seconds.txt").exists() else 0.0
        (out / "seconds.txt").write_text(f"{before + time.perf_counter() - start:.0f}\n")
    return out / "weights.safetensors"


def config_hash(path: Path, sets) -> str:
    """SHA-256 of the resolved stage config (YAML, --set, schema defaults; an added_option only when set, see
    ddpo_ros.config.behaviour): a new comment keeps a record, a new default does not. The teacher: teacher_hash."""
    from ddpo_ros.config import behaviour
    from training.config import load_train_config, parse_sets
    cfg = behaviour(load_train_config(path, parse_sets(sets)))
    cfg["distill"]["teacher"] = ""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_run(student_out: Path, key: dict) -> None:
    """Refuse to extend or score a student folder made from another teacher file, stage config or
    settings (the budget may grow: a stage extends)."""
    tag = student_out / "run_key.json"
    if tag.exists() and (old := json.loads(tag.read_text())) != key:
        changed = ", ".join(f"{k} {old.get(k)} -> {v}" for k, v in key.items() if old.get(k) != v)
        sys.exit(f"{student_out} was trained under other settings ({changed}): delete it to train it again")
    student_out.mkdir(parents=True, exist_ok=True)
    tag.write_text(json.dumps(key) + "\n")


def evaluate(weights: Path, split: str, out: Path, steps: int, args, log: Path) -> dict[str, dict]:
    """Per-scene metrics {scene: completion metrics} of one model on one split (train.py evaluate)."""
    if not (out / "summary.json").exists():
        data = [f"synthetic:{args.synthetic}"] if split == "synthetic" else \
            [Path(args.data) / "kitti_seq00_0_39", "--start", 10, "--every", 10, "--cache-dir", Path(args.out) / "maps"]
        sh([*TRAIN, "evaluate", "--weights", weights, "--data", *data, "--steps", steps, "--no-refine",
            "--start-t", "ref", "--renders", 1, "--out", out], log)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    return {r["scan"]: {**r["completion"], "seconds": r["seconds"], "scan_cd": r["scan_only"]["cd"]} for r in rows}


def record_for(path: Path, key: dict, ignore: bool) -> dict | None:
    """The stored record of a finished run, if it was made under the same key (teacher file, stage
    config, settings, budget, what was evaluated)."""
    if ignore or not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if record.get("key") == key else None


def save_record(path: Path, record: dict) -> dict:
    """Write a run's record, stamped with the commit and the date."""
    record = {**record, "code": git_commit(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)  # atomic: a run cut off mid-write leaves the old record or none
    return record


def git_commit() -> str:
    proc = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=str(REPO / "ddpo_ros" / "weights" / "mini.safetensors"))
    p.add_argument("--out", default="runs/mini", help="training runs and evaluation outputs (large; not kept)")
    p.add_argument("--records", default="bench/mini_benchmark_runs", help="one small JSON per finished run, in git")
    p.add_argument("--ignore-records", action="store_true",
                   help="train and score again what the records hold (finished runs in --out are still reused)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--student-steps", type=int, default=100)
    p.add_argument("--ablation-steps", type=int, default=40,
                   help="optimiser steps of each ablation student, and of the seed-0 baseline they are read against")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--lams", default="1.05,1.2,1.5", help="Table 5's lambda sweep (seed 0; 1.1 is the main run)")
    p.add_argument("--loser-weights", default="0.5,0",
                   help="distill.loser_weight ablation (seed 0): the loser's push outweighs the winner's pull")
    p.add_argument("--gt-weights", default="0.1,1",
                   help="distill.gt_weight ablation (seed 0): a structure term, the winner's Chamfer distance to the "
                        "ground truth; at 0.1 its gradient is about as large as Eq. 18's")
    p.add_argument("--no-ablations", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: the table from the records there are, naming the runs still missing")
    p.add_argument("--teacher-steps", type=int, default=50, help="the teacher's long row (and its 8-step row)")
    p.add_argument("--synthetic", type=int, default=8, help="held-out synthetic scenes scored")
    p.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples")
    p.add_argument("--bundle", action="store_true", help="bundle the DDPO student if it beats the teacher (see above)")
    args = p.parse_args(argv)
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    records = REPO / args.records
    args.out, log, started = out, out / "log.txt", time.perf_counter()
    teacher, teacher_hash = Path(args.teacher).resolve(), teacher_hash_of(args.teacher)
    missing = []  # runs without a record (--report-only)

    def scored(weights: Path, steps: int) -> dict[str, dict]:
        tag = f"teacher@{teacher_hash}" if weights == teacher else f"{weights.parent.name}@{steps_done(weights.parent)}"
        return {split: evaluate(weights, split, out / "eval" / f"{tag}_{steps}_{split}", steps, args, log)
                for split in SPLITS}

    def student(name: str, run: str, steps: int, eval_steps: tuple, *sets: str) -> dict:
        """Train one student, score it at each of eval_steps and record it; or read its record."""
        config = f"{name.replace('-', '_')}_mini.yaml"
        key = {"stage": name, "config_sha256": config_hash(REPO / "config" / "train" / config, sets),
               "settings": list(sets), "student_steps": steps, "teacher_sha256": teacher_hash,
               "eval_steps": list(eval_steps), "synthetic": args.synthetic}
        path = records / f"{run}.json"
        if (done := record_for(path, key, args.ignore_records)) is not None:
            print(f"{run}: from {path.relative_to(REPO)}", flush=True)
            return done
        if args.report_only:
            missing.append(run)
            return None
        check_run(out / run, {k: key[k] for k in ("teacher_sha256", "config_sha256", "settings")})
        extra = [a for s in (f"distill.teacher={teacher}", *sets) for a in ("--set", s)]
        weights = stage(name, config, out / run, steps, log, *extra)
        return save_record(path, {
            "key": key, "run": run, "train_seconds": float((out / run / "seconds.txt").read_text()),
            "drift": drift(teacher, weights), "curves": curves(out / run),
            "eval": {str(s): scored(weights, s) for s in eval_steps}})

    def teacher_record() -> dict:
        key = {"teacher_sha256": teacher_hash, "eval_steps": [args.teacher_steps, *FEW], "synthetic": args.synthetic}
        path = records / f"teacher_{teacher_hash}.json"
        if (done := record_for(path, key, args.ignore_records)) is not None:
            return done
        if args.report_only:
            sys.exit(f"--report-only: no record of the teacher's scores in {records}")
        return save_record(path, {"key": key, "eval": {str(s): scored(teacher, s) for s in key["eval_steps"]}})

    # the headline runs first, then the ablations: a cut-off session leaves the comparison furthest along
    teacher_runs = teacher_record()["eval"]
    ddpo = [r for s in range(args.seeds) if (r := student("distill", f"distill_s{s}", args.student_steps, FEW,
                                                          f"train.seed={s}"))]
    score = [r for s in range(args.seeds) if (r := student("score-distill", f"score_s{s}", args.student_steps, (8,),
                                                           f"train.seed={s}"))]
    ablations = [] if args.no_ablations else [
        *[(f"lambda {lam}", f"distill_lam{lam}", f"distill.lam={lam}") for lam in args.lams.split(",") if lam],
        ("JSD preference", "distill_jsd", "distill.preference=jsd"),
        *[(f"loser weight {w}", f"distill_lw{w}", f"distill.loser_weight={w}") for w in args.loser_weights.split(",")
          if w],
        ("independent pair noises, lambda 1", "distill_indep", "distill.pair_noise=independent", "distill.lam=1.0"),
        ("real score from ta_real", "distill_realta", "distill.real_ta=true"),
        ("real score from the ideal denoiser", "distill_oracle", "distill.oracle_real=true"),  # a perfect teacher
        ("ideal real score, winner only", "distill_oracle_lw0", "distill.oracle_real=true", "distill.loser_weight=0"),
        *[(f"winner pulled to the ground truth, gt_weight {w}", f"distill_gt{w}", f"distill.gt_weight={w}")
          for w in args.gt_weights.split(",") if w]]
    if ablations and args.ablation_steps != args.student_steps:  # read every ablation against the same budget
        ablations.insert(0, ("as the main run (lambda 1.1)", "distill_base", ))
    ablated = {label: r for label, run, *settings in ablations
               if (r := student("distill", f"{run}_{args.ablation_steps}", args.ablation_steps, (8,), *settings,
                                "train.seed=0"))}

    def row(label: str, steps: int, runs: list[dict]) -> dict:
        return {"model": label, "steps": steps, "seeds": len(runs),
                **{split: summarise([r[split] for r in runs]) for split in SPLITS}}

    rows = [row("LiDiff teacher", s, [teacher_runs[str(s)]]) for s in (args.teacher_steps, *FEW)]
    rows += [row("score distillation", 8, [r["eval"]["8"] for r in score])] if score else []
    rows += [row("Distillation-DPO", s, [r["eval"][str(s)] for r in ddpo]) for s in FEW] if ddpo else []
    if ablations and args.ablation_steps == args.student_steps and ddpo:
        rows += [row("Distillation-DPO, seed 0 (ablation baseline)", 8, [ddpo[0]["eval"]["8"]])]
    rows += [row(f"Distillation-DPO, {label}", 8, [r["eval"]["8"]]) for label, r in ablated.items()]
    scan = {split: float(np.mean([m["scan_cd"] for m in teacher_runs["8"][split].values()])) for split in SPLITS}
    ddpo8, score8 = [r["eval"]["8"] for r in ddpo], [r["eval"]["8"] for r in score]

    def compare(a, b) -> dict:
        both = [{k: v for split in SPLITS for k, v in r[split].items()} for r in a], \
               [{k: v for split in SPLITS for k, v in r[split].items()} for r in b]
        return {**{split: paired([r[split] for r in a], [r[split] for r in b], args.resamples) for split in SPLITS},
                "all": paired(*both, args.resamples)}
    comparisons = {} if not ddpo else {
        "DDPO-8 minus teacher-8": compare(ddpo8, [teacher_runs["8"]]),
        **({"DDPO-8 minus score-8": compare(ddpo8, score8)} if score else {}),
        # the students train their one-step sample only: does that step improve, at least?
        **{f"DDPO-{s} minus teacher-{s}": compare([r["eval"][str(s)] for r in ddpo], [teacher_runs[str(s)]])
           for s in FEW[1:]}}
    # an ablation is one seed, so its interval is over scenes only: does any variant beat the teacher?
    comparisons.update({f"{label} (ablation) minus teacher-8": compare([r["eval"]["8"]], [teacher_runs["8"]])
                        for label, r in ablated.items()})
    named = [*((f"ddpo_s{i}", r) for i, r in enumerate(ddpo)), *((f"score_s{i}", r) for i, r in enumerate(score)),
             *ablated.items()]
    drifts = {name: r["drift"] for name, r in named}
    training = {name: {tag: trend(c) for tag, c in r["curves"].items() if c} for name, r in named if r.get("curves")}
    minutes = sum(r["train_seconds"] for _, r in named) / 60
    from ddpo_ros.frontends.bench import machine_facts
    facts = machine_facts("cpu", 0, [])
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{facts['cpu']} ({facts['cores']} cores), torch {facts['torch']}",
              "teacher": {"path": str(teacher), "sha256": teacher_hash}, "student_steps": args.student_steps,
              "ablation_steps": args.ablation_steps if ablations else None,
              "seeds": args.seeds, "scan_cd": scan, "rows": rows, "comparisons": comparisons, "drift": drifts,
              "training": training, "missing": missing,
              "training_minutes": minutes, "total_minutes": (time.perf_counter() - started) / 60}
    bench = REPO / "bench"
    bench.mkdir(exist_ok=True)
    (bench / "mini_benchmark.json").write_text(json.dumps(result, indent=1))
    (bench / "mini_benchmark.md").write_text(markdown(result))
    print(markdown(result))
    if args.bundle:
        ci = comparisons["DDPO-8 minus teacher-8"]["all"]["ci95"]
        if ci[1] >= 0:
            print(f"not bundled: DDPO-8 minus teacher-8 CD interval {ci} does not lie below zero")
            return 0
        weights = out / "distill_s0" / "weights.safetensors"
        if not weights.exists():
            sys.exit(f"{weights} is gone (scores from {records}): train it again with --ignore-records to bundle")
        bundle = REPO / "ddpo_ros" / "weights" / "mini.safetensors"
        sh([sys.executable, "-m", "ddpo_ros.frontends.cli", "convert", weights, teacher, "-o", bundle,
            "--roles", "encoder,teacher,student,refiner"], log)
        print(f"bundled {bundle} ({bundle.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
