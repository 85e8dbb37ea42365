"""The numbers and the table of `make mini-benchmark` (tools/mini_benchmark.py): the teacher's key, a
student's drift from its teacher, per-run summaries over seeds, paired per-scene differences with a bootstrap
interval, training curves from TensorBoard logs and their trends, markdown."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def teacher_hash(path: Path) -> str:
    """SHA-256 of a weights file's encoder and teacher tensors (names, dtypes, shapes, bytes), not of the
    file: the students train from the networks alone, and every row is scored at the reference's start
    (train.py evaluate --start-t ref), so a change of the file's completion settings (the bundled
    completion.start_t) leaves the records valid."""
    import torch
    from safetensors.torch import load_file
    h = hashlib.sha256()
    for name, t in sorted(load_file(str(path)).items()):
        if name.startswith(("encoder.", "teacher.")):
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


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


CURVES = ("preference/winner", "preference/loser", "preference/lam_sample_won", "g/winner_norm", "g/loser_norm",
          "g/norm", "drift/student_params_relative")


def curves(run: Path) -> dict[str, list]:
    """The training scalars worth keeping from a run's TensorBoard logs, {tag: [[step, value], ...]};
    a step logged again after a resume keeps its latest value by wall time. Not by file order: event
    files written in one second sort by a per-process counter as text (".10" before ".9")."""
    if not (run / "tensorboard").is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0}, purge_orphaned_data=False)
    events.Reload()
    have, out = set(events.Tags()["scalars"]), {}
    for tag in (t for t in CURVES if t in have):
        latest = {}
        for e in sorted(events.Scalars(tag), key=lambda e: e.wall_time):
            latest[e.step] = e.value
        out[tag] = sorted(latest.items())
    return out


def trend(curve: list) -> tuple[float, float]:
    """Mean of the first and of the last quarter of a curve's logged values (at least one each), so
    that a 40-step ablation and a 100-step run are both read start against end."""
    values = [v for _, v in curve]
    window = max(1, len(values) // 4)
    return float(np.mean(values[:window])), float(np.mean(values[-window:]))


def markdown(result: dict) -> str:
    def cell(m, key, std=True):
        v = m[key]
        return f"{v['mean']:.3f}" + (f" ± {v['std']:.3f}" if std and v["runs"] > 1 else "")
    lines = [f"Mini-scale Distillation-DPO benchmark, {result['date']} ({result['machine']}, CPU); teacher "
             f"{Path(result['teacher']['path']).name} ({result['teacher']['sha256']}); students "
             f"{result['student_steps']} optimiser steps" + (
                 f"; ablations seed 0, {result['ablation_steps']} steps" if result.get("ablation_steps") else "")
             + "; mean ± std over seeds.", "",
             *([f"**Incomplete**: no record yet of {', '.join(result['missing'])} (tools/mini_benchmark.py "
                "finishes them).", ""] if result.get("missing") else []),
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
    lines += ["", "During training (mean of the first -> last quarter of the logged steps): the preference score "
              "(CD in m; JSD for the JSD-as-preference run) of the student's own one-step winner and loser, "
              "how often the lam sample won, |g| per side:", "",
              "| student | winner score | loser score | lam sample won | abs(g_w) | abs(g_l) |",
              "|---|---|---|---|---|---|"]
    tags = ("preference/winner", "preference/loser", "preference/lam_sample_won", "g/winner_norm", "g/loser_norm")
    for name, t in result.get("training", {}).items():
        if "preference/winner" not in t:
            continue
        cells = [f"{t[k][0]:.3f} -> {t[k][1]:.3f}" if k in t else "" for k in tags]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
