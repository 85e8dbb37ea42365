"""`make mini-benchmark`: the paper's Tables 2 and 6 in miniature, trained and measured on this CPU.

1. the earlier mini LiDiff teacher in two phases, batch 1 (config/train/teacher_mini_phase1.yaml) then a short
   fine-tune at batch 4 so BatchNorm's running statistics serve every t (teacher_mini_tune.yaml
   says why), and a mini refiner (refine_mini.yaml);
2. the teacher distilled with Distillation-DPO (distill_mini.yaml) and with score distillation
   (score_distill_mini.yaml) for the same number of student steps;
3. every model scored by `train.py evaluate` on held-out synthetic scenes and on real KITTI frames
   that training never saw (kitti_seq00_0_39 frames 10, 20, 30; training uses frames 0-5):
   teacher 50 and 8 steps (and 8 steps before the batch-4 phase), score distillation 8 steps,
   Distillation-DPO 8/4/2/1 steps, without the refiner (the reference evaluates the diffusion output, `-ur False`);
4. bench/mini_benchmark.json and .md; with --bundle, the student + encoder + refiner merged into
   ddpo_ros/weights/mini.safetensors (the weights `make demo` and the node use).

Each stage's budget is a step count (--teacher-steps, ...); rerunning skips finished stages,
resumes an interrupted one from its last checkpoint, and extends one whose budget was raised.
A student's evaluations are redone when it trained further (their folders name the step).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # training/ is not an installed package
from training import checkpoints  # noqa: E402
TRAIN = [sys.executable, str(REPO / "training" / "train.py")]


def sh(cmd: list[str], log: Path) -> None:
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
    """Train `name` up to `steps` optimiser steps. A stage that stopped short (killed, or an earlier
    run with a smaller budget) resumes from its last checkpoint: the lr schedule is a function of
    the epoch, so a longer budget continues exactly the run it extends. Wall time accumulates in
    out/seconds.txt."""
    done = steps_done(out)
    if done < steps or not (out / "weights.safetensors").exists():
        start = time.perf_counter()
        resume = ["--resume"] if done else []
        sh([*TRAIN, name, "--config", REPO / "config" / "train" / config, "--out", out,
            "--set", f"train.max_steps={steps}", *extra, *resume], log)
        before = float((out / "seconds.txt").read_text()) if done and (out / "seconds.txt").exists() else 0.0
        (out / "seconds.txt").write_text(f"{before + time.perf_counter() - start:.0f}\n")
    return out / "weights.safetensors"


def drift(teacher: Path, student: Path) -> dict:
    """How far a student moved from its teacher: L2 of the change of the trained weights (absolute and
    relative to the teacher's norm) and of the BatchNorm running statistics, which train-mode forward
    passes move without any gradient. SGD with the gradient norm clipped at c moves the weights by at
    most lr * c per step, so this separates learning from statistics drift."""
    from safetensors.torch import load_file
    t, s = load_file(str(teacher)), load_file(str(student))
    out = {}
    for kind, pick in (("weights", lambda k: "running_" not in k and "num_batches" not in k),
                       ("bn_stats", lambda k: "running_" in k)):
        keys = [k for k in t if k.startswith("teacher.") and pick(k)]
        moved = sum(float((s["student." + k.removeprefix("teacher.")].double() - t[k].double()).pow(2).sum())
                    for k in keys) ** 0.5
        norm = sum(float(t[k].double().pow(2).sum()) for k in keys) ** 0.5
        out[kind] = {"l2": moved, "relative": moved / norm if norm else float("nan")}
    return out


def check_teacher(student_out: Path, teacher_step: str) -> None:
    """A run is trained from one teacher (for the batch-4 phase, its phase-1 step; for a student,
    "phase1+phase2" steps): refuse to extend it from a teacher trained further since."""
    record = student_out / "teacher_step.txt"
    if record.exists() and record.read_text().strip() != str(teacher_step):
        sys.exit(f"{student_out} was trained from the teacher at step {record.read_text().strip()}, but the "
                 f"teacher is now at step {teacher_step}: delete {student_out} to train it from the new teacher")
    student_out.mkdir(parents=True, exist_ok=True)
    record.write_text(f"{teacher_step}\n")


def evaluate(weights: Path, data: str, out: Path, steps: int, log: Path, *extra: str) -> dict:
    if not (out / "summary.json").exists():
        sh([*TRAIN, "evaluate", "--weights", weights, "--data", data, "--steps", steps, "--no-refine",
            "--renders", "1", "--out", out, *extra], log)
    return json.loads((out / "summary.json").read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/mini")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--teacher-steps", type=int, default=200, help="phase 1, batch 1")
    p.add_argument("--tune-steps", type=int, default=25, help="phase 2, batch 4 (BatchNorm statistics)")
    p.add_argument("--refine-steps", type=int, default=100)
    p.add_argument("--student-steps", type=int, default=20)
    p.add_argument("--synthetic-scenes", type=int, default=1, help="held-out synthetic scenes scored")
    p.add_argument("--bundle", action="store_true",
                   help="write the student + encoder + refiner to ddpo_ros/weights/mini.safetensors (replacing the "
                        "bundled teacher)")
    args = p.parse_args(argv)
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    started = time.perf_counter()

    phase1 = stage("teacher", "teacher_mini_phase1.yaml", out / "teacher", args.teacher_steps, log)
    check_teacher(out / "teacher_tune", str(steps_done(phase1.parent)))
    teacher = stage("teacher", "teacher_mini_tune.yaml", out / "teacher_tune", args.tune_steps, log,
                    "--set", f"teacher.init={phase1}")
    refiner = stage("refine", "refine_mini.yaml", out / "refine", args.refine_steps, log)
    students = {}
    for name in ("distill", "score-distill"):
        check_teacher(out / name, f"{steps_done(phase1.parent)}+{steps_done(teacher.parent)}")
        students[name] = stage(name, f"{name.replace('-', '_')}_mini.yaml", out / name, args.student_steps, log,
                               "--set", f"distill.teacher={teacher}")

    real = ["--start", "10", "--every", "10", "--cache-dir", str(out / "maps")]
    # Guidance as each model's default (teacher 6, student 3.5), plus the teacher at the students'
    # 3.5: without that control row a student's gain could be the guidance weight alone.
    # The phase-1 teacher too: what the batch-4 phase changed.
    runs = [("LiDiff teacher", teacher, 50, None), ("LiDiff teacher", teacher, 8, None),
            ("LiDiff teacher, w 3.5", teacher, 8, 3.5), ("LiDiff teacher, batch-1 phase only", phase1, 8, None),
            ("score distillation", students["score-distill"], 8, None)]
    runs += [("Distillation-DPO", students["distill"], s, None) for s in (8, 4, 2, 1)]
    rows = []
    for label, weights, steps, guidance in runs:
        row = {"model": label, "steps": steps}
        for split, data, extra in (("synthetic", f"synthetic:{args.synthetic_scenes}", []),
                                   ("kitti", str(Path(args.data) / "kitti_seq00_0_39"), real)):
            tag = f"{weights.parent.name}@{steps_done(weights.parent)}_{steps}_{split}"
            if guidance is not None:
                tag, extra = f"{tag}_w{guidance}", [*extra, "--guidance", guidance]
            s = evaluate(weights, data, out / "eval" / tag, steps, log, *extra)
            row[split] = {"cd": s["completion"]["cd"], "jsd_3d": s["completion"]["jsd_3d"],
                          "emd": s["completion"]["emd"], "seconds": s["rows"][1][2], "nfe": s["rows"][1][3],
                          "scan_cd": s["scan_only"]["cd"], "scans": s["scans"]}
        rows.append(row)

    drifts = {name: drift(teacher, w) for name, w in students.items()}
    budgets = {"teacher": args.teacher_steps, "teacher_tune": args.tune_steps, "refine": args.refine_steps,
               "students": args.student_steps}
    seconds = {n: float((out / n / "seconds.txt").read_text())
               for n in ("teacher", "teacher_tune", "refine", "distill", "score-distill")
               if (out / n / "seconds.txt").exists()}
    from ddpo_ros.frontends.bench import machine_facts
    facts = machine_facts("cpu", 0, [])
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{facts['cpu']} ({facts['cores']} cores), torch {facts['torch']}",
              "budget_steps": budgets, "train_seconds": seconds, "rows": rows, "student_drift": drifts,
              "total_minutes": (time.perf_counter() - started) / 60}
    bench = REPO / "bench"
    (bench / "mini_benchmark.json").write_text(json.dumps(result, indent=1))
    (bench / "mini_benchmark.md").write_text(markdown(result))
    print(markdown(result))
    if args.bundle:
        bundle = REPO / "ddpo_ros" / "weights" / "mini.safetensors"
        bundle.parent.mkdir(exist_ok=True)
        sh([sys.executable, "-m", "ddpo_ros.frontends.cli", "convert", students["distill"], refiner, "-o", bundle,
            "--roles", "encoder,student,refiner"], log)
        print(f"bundled {bundle} ({bundle.stat().st_size / 2**20:.1f} MiB)")
    return 0


def markdown(result: dict) -> str:
    def cell(m, key):
        v = m[key]
        return "-" if v is None else f"{v['mean']:.3f}"
    lines = [f"Mini-scale benchmark, {result['date']} ({result['machine']}, CPU); training budgets in optimiser "
             f"steps: {result['budget_steps']}; training minutes: "
             f"{ {k: round(v / 60, 1) for k, v in result['train_seconds'].items()} }.", "",
             "| model | steps | NFE | synthetic CD m | JSD | EMD | s/scene | KITTI CD m | JSD | EMD | s/scene |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        s, k = r["synthetic"], r["kitti"]
        lines.append(f"| {r['model']} | {r['steps']} | {s['nfe']} | {cell(s, 'cd')} | {cell(s, 'jsd_3d')} | "
                     f"{cell(s, 'emd')} | {s['seconds']} | {cell(k, 'cd')} | {cell(k, 'jsd_3d')} | {cell(k, 'emd')} | "
                     f"{k['seconds']} |")
    s0, k0 = result["rows"][0]["synthetic"], result["rows"][0]["kitti"]
    lines.append(f"| the scan itself (no completion) | - | 0 | {cell(s0, 'scan_cd')} | | | | {cell(k0, 'scan_cd')} "
                 "| | | |")
    lines += ["", "How far each student moved from the teacher (L2 of the change; relative to the teacher's norm):", "",
              "| student | weights | relative | BatchNorm running stats | relative |", "|---|---:|---:|---:|---:|"]
    for name, d in result.get("student_drift", {}).items():
        w, b = d["weights"], d["bn_stats"]
        lines.append(f"| {name} | {w['l2']:.2e} | {w['relative']:.1e} | {b['l2']:.2e} | {b['relative']:.1e} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
