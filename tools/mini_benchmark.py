"""`make mini-benchmark`: Distillation-DPO against its teacher and score distillation, in miniature.

The paper's Table 2/6 comparison, its lambda sweep (Table 5) and JSD as the preference (Table 3)
on this CPU, all from one trained teacher (--teacher, roles encoder + teacher; default the bundled
mini teacher of config/train/teacher_mini.yaml):

1. students, --student-steps optimiser steps each: Distillation-DPO (distill_mini.yaml) and score
   distillation (score_distill_mini.yaml) for each of --seeds seeds; the ablations with seed 0:
   distill.lam in --lams, distill.preference jsd, distill.loser_weight in --loser-weights, pairs from
   two noises (distill.pair_noise independent, lam 1) and the real score from ta_real (distill.real_ta);
2. every model scored by `train.py evaluate` without the refiner (as the reference evaluates) on
   --synthetic held-out synthetic scenes and on KITTI frames 10/20/30 of kitti_seq00_0_39, which no
   stage trains on: teacher --teacher-steps and 8 steps, score distillation 8, Distillation-DPO 8/4/2/1;
3. per row the mean and std over seeds of each run's mean CD, accuracy and coverage; the paired
   differences DDPO-8 minus teacher-8 and DDPO-8 minus score-8 per scene (averaged over seeds) with
   a 95% bootstrap interval over scenes;
4. each student's drift from the teacher, trained weights apart from BatchNorm statistics;
5. bench/mini_benchmark.{json,md}. --bundle writes the seed-0 Distillation-DPO student with the
   encoder, the teacher and the teacher file's refiner to ddpo_ros/weights/mini.safetensors (the
   node then runs the student), only if DDPO-8 beats teacher-8 with the interval below zero.

Rerunning skips finished work: a stage resumes from its last checkpoint or extends to a larger
budget, an evaluation is redone only for a student that trained further. A student folder is tied
to the teacher file it was trained from (its SHA-256).
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
TRAIN = [sys.executable, str(REPO / "training" / "train.py")]
SPLITS = ("synthetic", "kitti")


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


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def check_teacher(student_out: Path, teacher_hash: str) -> None:
    """Refuse to extend a student trained from another teacher file."""
    record = student_out / "teacher.sha256"
    if record.exists() and record.read_text().strip() != teacher_hash:
        sys.exit(f"{student_out} was trained from teacher {record.read_text().strip()}, but --teacher is now "
                 f"{teacher_hash}: delete {student_out} to train it from the new teacher")
    student_out.mkdir(parents=True, exist_ok=True)
    record.write_text(f"{teacher_hash}\n")


def drift(teacher: Path, student: Path, role: str = "student") -> dict:
    """L2 of the student's change from the teacher, trained weights apart from BatchNorm running
    statistics (train-mode passes move those without any gradient), absolute and relative."""
    from safetensors.torch import load_file
    t, s = load_file(str(teacher)), load_file(str(student))
    out = {}
    for kind, pick in (("weights", lambda k: "running_" not in k and "num_batches" not in k),
                       ("bn_stats", lambda k: "running_" in k)):
        keys = [k for k in t if k.startswith("teacher.") and pick(k)]
        moved = sum(float((s[f"{role}." + k.removeprefix("teacher.")].double() - t[k].double()).pow(2).sum())
                    for k in keys) ** 0.5
        norm = sum(float(t[k].double().pow(2).sum()) for k in keys) ** 0.5
        out[kind] = {"l2": moved, "relative": moved / norm if norm else float("nan")}
    return out


def evaluate(weights: Path, split: str, out: Path, steps: int, args, log: Path) -> dict[str, dict]:
    """Per-scene metrics {scene: completion metrics} of one model on one split (train.py evaluate)."""
    if not (out / "summary.json").exists():
        data = [f"synthetic:{args.synthetic}"] if split == "synthetic" else \
            [Path(args.data) / "kitti_seq00_0_39", "--start", 10, "--every", 10, "--cache-dir", Path(args.out) / "maps"]
        sh([*TRAIN, "evaluate", "--weights", weights, "--data", *data, "--steps", steps, "--no-refine",
            "--renders", 1, "--out", out], log)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    return {r["scan"]: {**r["completion"], "seconds": r["seconds"], "scan_cd": r["scan_only"]["cd"]} for r in rows}


def bootstrap_interval(diffs, resamples: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of paired per-scene differences, scenes resampled."""
    diffs = np.asarray(diffs, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(diffs), (resamples, len(diffs)))
    means = diffs[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(runs: list[dict[str, dict]]) -> dict:
    """Mean and std over seeds (runs) of each run's scene-mean metric."""
    out = {}
    for key in ("cd", "accuracy", "coverage", "jsd_3d", "seconds"):
        per_run = [np.mean([m[key] for m in run.values() if m.get(key) is not None]) for run in runs]
        out[key] = {"mean": float(np.mean(per_run)), "std": float(np.std(per_run)), "runs": len(per_run)}
    return out


def paired(a_runs: list[dict], b_runs: list[dict], resamples: int) -> dict:
    """a minus b in CD per scene, each side averaged over its seeds; mean and bootstrap interval."""
    scenes = sorted(set.intersection(*(set(r) for r in a_runs + b_runs)))
    diffs = [np.mean([r[s]["cd"] for r in a_runs]) - np.mean([r[s]["cd"] for r in b_runs]) for s in scenes]
    low, high = bootstrap_interval(diffs, resamples)
    return {"mean": float(np.mean(diffs)), "ci95": [low, high], "scenes": len(scenes)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=str(REPO / "ddpo_ros" / "weights" / "mini.safetensors"))
    p.add_argument("--out", default="runs/mini")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--student-steps", type=int, default=100)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--lams", default="1.05,1.2,1.5", help="Table 5's lambda sweep (seed 0; 1.1 is the main run)")
    p.add_argument("--loser-weights", default="0.5,0",
                   help="distill.loser_weight ablation (seed 0): the loser's push outweighs the winner's pull")
    p.add_argument("--no-ablations", action="store_true")
    p.add_argument("--teacher-steps", type=int, default=50, help="the teacher's long row (and its 8-step row)")
    p.add_argument("--synthetic", type=int, default=8, help="held-out synthetic scenes scored")
    p.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples")
    p.add_argument("--bundle", action="store_true", help="bundle the DDPO student if it beats the teacher (see above)")
    args = p.parse_args(argv)
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.out, log, started = out, out / "log.txt", time.perf_counter()
    teacher, teacher_hash = Path(args.teacher).resolve(), file_hash(args.teacher)

    def train(name: str, run: str, *sets: str) -> Path:
        check_teacher(out / run, teacher_hash)
        extra = [a for s in (f"distill.teacher={teacher}", *sets) for a in ("--set", s)]
        return stage(name, f"{name.replace('-', '_')}_mini.yaml", out / run, args.student_steps, log, *extra)

    students = {("ddpo", s): train("distill", f"distill_s{s}", f"train.seed={s}") for s in range(args.seeds)}
    students.update({("score", s): train("score-distill", f"score_s{s}", f"train.seed={s}")
                     for s in range(args.seeds)})
    ablations = [] if args.no_ablations else [(f"Distillation-DPO, lambda {lam}", f"distill_lam{lam}",
                                              f"distill.lam={lam}") for lam in args.lams.split(",") if lam]
    ablations += [] if args.no_ablations else [("Distillation-DPO, JSD preference", "distill_jsd",
                                                "distill.preference=jsd")]
    ablations += [] if args.no_ablations else [
        (f"Distillation-DPO, loser weight {w}", f"distill_lw{w}", f"distill.loser_weight={w}")
        for w in args.loser_weights.split(",") if w]
    ablations += [] if args.no_ablations else [("Distillation-DPO, independent pair noises, lambda 1", "distill_indep",
                                                "distill.pair_noise=independent", "distill.lam=1.0"),
                                               ("Distillation-DPO, real score from ta_real", "distill_realta",
                                                "distill.real_ta=true")]
    for label, run, *settings in ablations:
        students[(label, 0)] = train("distill", run, *settings, "train.seed=0")

    def scored(weights: Path, steps: int) -> dict[str, dict]:
        tag = f"teacher@{teacher_hash}" if weights == teacher else f"{weights.parent.name}@{steps_done(weights.parent)}"
        return {split: evaluate(weights, split, out / "eval" / f"{tag}_{steps}_{split}", steps, args, log)
                for split in SPLITS}

    def row(label: str, steps: int, runs: list[dict]) -> dict:
        return {"model": label, "steps": steps, "seeds": len(runs),
                **{split: summarise([r[split] for r in runs]) for split in SPLITS}}

    teacher_runs = {s: [scored(teacher, s)] for s in (args.teacher_steps, 8)}
    ddpo = {s: [scored(students[("ddpo", i)], s) for i in range(args.seeds)] for s in (8, 4, 2, 1)}
    score8 = [scored(students[("score", i)], 8) for i in range(args.seeds)]
    rows = [row("LiDiff teacher", s, r) for s, r in teacher_runs.items()]
    rows += [row("score distillation", 8, score8)]
    rows += [row("Distillation-DPO", s, r) for s, r in ddpo.items()]
    rows += [row(label, 8, [scored(students[(label, 0)], 8)]) for label, *_ in ablations]
    scan = {split: float(np.mean([m["scan_cd"] for m in teacher_runs[8][0][split].values()])) for split in SPLITS}

    def compare(a, b) -> dict:
        both = [{k: v for split in SPLITS for k, v in r[split].items()} for r in a], \
               [{k: v for split in SPLITS for k, v in r[split].items()} for r in b]
        return {**{split: paired([r[split] for r in a], [r[split] for r in b], args.resamples) for split in SPLITS},
                "all": paired(*both, args.resamples)}
    comparisons = {"DDPO-8 minus teacher-8": compare(ddpo[8], teacher_runs[8]),
                   "DDPO-8 minus score-8": compare(ddpo[8], score8)}
    drifts = {f"{name}_s{seed}" if name in ("ddpo", "score") else name: drift(teacher, w)
              for (name, seed), w in students.items()}
    from ddpo_ros.frontends.bench import machine_facts
    facts = machine_facts("cpu", 0, [])
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{facts['cpu']} ({facts['cores']} cores), torch {facts['torch']}",
              "teacher": {"path": str(teacher), "sha256": teacher_hash}, "student_steps": args.student_steps,
              "seeds": args.seeds, "scan_cd": scan, "rows": rows, "comparisons": comparisons, "drift": drifts,
              "total_minutes": (time.perf_counter() - started) / 60}
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
        bundle = REPO / "ddpo_ros" / "weights" / "mini.safetensors"
        sh([sys.executable, "-m", "ddpo_ros.frontends.cli", "convert", students[("ddpo", 0)], teacher, "-o", bundle,
            "--roles", "encoder,teacher,student,refiner"], log)
        print(f"bundled {bundle} ({bundle.stat().st_size / 2**20:.1f} MiB)")
    return 0


def markdown(result: dict) -> str:
    def cell(m, key, std=True):
        v = m[key]
        return f"{v['mean']:.3f}" + (f" ± {v['std']:.3f}" if std and v["runs"] > 1 else "")
    lines = [f"Mini-scale Distillation-DPO benchmark, {result['date']} ({result['machine']}, CPU); teacher "
             f"{Path(result['teacher']['path']).name} ({result['teacher']['sha256']}); students "
             f"{result['student_steps']} optimiser steps; mean ± std over seeds.", "",
             "| model | steps | seeds | synthetic CD m | acc m | cov m | KITTI CD m | acc m | cov m | JSD 3D "
             "| s/scene |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| the scan itself | - | - | {result['scan_cd']['synthetic']:.3f} | | | {result['scan_cd']['kitti']:.3f} "
             "| | | | |"]
    for r in result["rows"]:
        s, k = r["synthetic"], r["kitti"]
        lines.append(f"| {r['model']} | {r['steps']} | {r['seeds']} | {cell(s, 'cd')} | {cell(s, 'accuracy', False)} | "
                     f"{cell(s, 'coverage', False)} | {cell(k, 'cd')} | {cell(k, 'accuracy', False)} | "
                     f"{cell(k, 'coverage', False)} | {cell(k, 'jsd_3d', False)} | {k['seconds']['mean']:.1f} |")
    lines += ["", "Paired CD differences per scene (seed means), 95% bootstrap interval over scenes "
              "(negative: the first is closer to the ground truth):", "",
              "| comparison | synthetic | KITTI | all scenes |", "|---|---:|---:|---:|"]
    for name, c in result["comparisons"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{c[k]['mean']:+.4f} [{c[k]['ci95'][0]:+.4f}, {c[k]['ci95'][1]:+.4f}] (n={c[k]['scenes']})"
            for k in ("synthetic", "kitti", "all")) + " |")
    lines += ["", "How far each student moved from the teacher (L2; relative to the teacher's norm):", "",
              "| student | weights | relative | BatchNorm running stats | relative |", "|---|---:|---:|---:|---:|"]
    for name, d in result["drift"].items():
        w, b = d["weights"], d["bn_stats"]
        lines.append(f"| {name} | {w['l2']:.2e} | {w['relative']:.1e} | {b['l2']:.2e} | {b['relative']:.1e} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
