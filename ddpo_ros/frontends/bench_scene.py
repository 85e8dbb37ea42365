"""Seconds and peak memory per completed scene (`ddpo bench-scene`; `make bench` runs it).

Whole `Completer.complete` calls on the real KITTI frame (seq 00 frame 0): preprocessing (crop,
exact FPS), the scan encoder, every CFG denoising step (2 denoiser calls each), post-processing and
the x6 refiner. Three tables:

- steps: seconds per scene at 1/2/4/8/50 steps, mini scale (config/model/mini.yaml, 40k points)
  and paper scale (config/model/lidiff.yaml, 180k points), in fp32 and in bf16
  (`completion.precision`: bfloat16 convolutions, an approximation);
- shortcuts (fp32): each exact shortcut of the pipeline turned off alone, and all off (LiDiff's
  straightforward evaluation: encoder twice per step, separate branches, per-voxel MLPs,
  all-pairs 1-NN, unfolded BatchNorm), on 2-step scenes, and all off vs all on for an 8-step
  scene; also glibc's default allocator (freed memory returned, see ddpo_ros/frontends/allocator.py) and
  the plain-torch twins of the compiled kernels (DDPO_NATIVE=0, see ddpo_ros/sparse/native.py),
  the latter in bf16 at 8 steps too;
- scaling: an 8-step paper-scale scene at 20k/50k/180k/360k points, both precisions.

The 8-step scenes of the steps table (the headline figure) run --repeats times (default 3) and
report the median, with the range; every other case is one scene.

Weights: with --weights, the real model and its own trajectory. Without (no trained paper-scale
weights here), seeded random weights, and the sampler is steered by the oracle noise
eps = (x_t - x_init) / sigma_t, i.e. the prediction "the clean scene is x_init": the network still
runs in full on every call (its cost is what is timed) but its random output, which would throw
the points metres away, does not steer; each call then sees x_init + sigma_t noise, the point
distribution a trained model meets. Each scale and point count runs in a fresh process after a
1-step warm-up; peak memory is the process's peak RSS during the scene (VmHWM after a reset),
weights and interpreter included, or the CUDA allocator's peak.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .bench import REPO, _spawn, machine_facts, measure_once, memory, write_results

SCALES = {"mini": "config/model/mini.yaml", "paper": "config/model/lidiff.yaml"}
SHORTCUTS = ("encoder_once", "shared_branches", "grouped_mlps", "lattice_match", "fold_batchnorm")
PRECISIONS = ("fp32", "bf16")
KEYS = ("scale", "n_points", "precision", "retain", "native")
WORKER_TIMEOUT_S = 4 * 3600  # a paper-scale 50-step scene alone is ~15 min on 2 CPU cores


class OracleSteered(torch.nn.Module):
    """A denoiser that runs `net` in full but answers eps = (x_t - x_init) / sigma_t (see above)."""

    def __init__(self, net, schedule, x_init: torch.Tensor):
        super().__init__()
        self.net, self.schedule, self.x_init = net, schedule, x_init

    def _eps(self, x_t, t):
        return (x_t - self.x_init) / float(self.schedule.sigma(int(t[0])))

    def forward(self, x_t, cond, t):
        self.net(x_t, cond, t)
        return self._eps(x_t, t)

    def forward_branches(self, x_t, conds, t):
        return [self._eps(x_t, t) for _ in self.net.forward_branches(x_t, conds, t)]

    # The Completer flips the network's benchmark switches through these.
    per_voxel_mlps = property(lambda self: self.net.per_voxel_mlps,
                              lambda self, v: setattr(self.net, "per_voxel_mlps", v))
    brute_force_match = property(lambda self: self.net.brute_force_match,
                                 lambda self, v: setattr(self.net, "brute_force_match", v))


def build_completer(spec: dict):
    from ..clouds import find_kitti_frame, read_kitti_bin
    from ..config import load_config
    from ..models import build_denoiser, build_encoder, build_refiner
    from ..pipeline import Completer

    scan = read_kitti_bin(find_kitti_frame())
    if spec.get("weights"):
        from ..loading import load_completer
        comp = load_completer(spec["weights"], device=spec["device"])
        cfg = comp.config
    else:
        cfg = load_config(REPO / SCALES[spec["scale"]])
        if spec.get("width"):
            cfg = replace(cfg, model=replace(cfg.model, width=spec["width"]))
        torch.manual_seed(0)
        nets = build_encoder(cfg.model), build_denoiser(cfg.model), build_refiner(cfg.model)
        comp = Completer(*nets, cfg, kind="student", device=spec["device"])
    reps = cfg.completion.replication
    comp.config = replace(cfg, completion=replace(cfg.completion, num_points=spec["n_points"] // reps,
                                                  precision=spec["precision"]))
    if not spec.get("weights"):
        partial, _ = comp.preprocess(scan)
        x_init = torch.from_numpy(partial).to(comp.device)[None].repeat(1, reps, 1)
        comp.denoiser = OracleSteered(comp.denoiser, comp.schedule, x_init)
    return comp, scan


def run_worker(spec: dict) -> list[dict]:
    """All cases of one scale and point count, in this process, after a 1-step warm-up."""
    from .allocator import retain_freed_memory
    from ..pipeline import Shortcuts
    from ..sparse import native
    torch.set_num_threads(spec["threads"])
    if spec["retain"]:
        retain_freed_memory()
    os.environ["DDPO_NATIVE"] = "1" if spec.get("native", True) else "0"
    kernels = native.status()
    comp, scan = build_completer(spec)
    comp.complete(scan, steps=1, seed=0)
    records = []
    for case in spec["cases"]:
        comp.shortcuts = Shortcuts(**case["shortcuts"])
        runs = []  # (seconds, memory growth, peak, completion) per scene
        for _ in range(case.get("repeats", 1)):
            result = []
            seconds, grown = measure_once(lambda: result.append(comp.complete(scan, steps=case["steps"], seed=0)),
                                          comp.device)
            runs.append((seconds, grown, memory(comp.device, peak=True), result[0]))  # peak: since the reset
        seconds, grown, _, out = sorted(runs, key=lambda r: r[0])[(len(runs) - 1) // 2]  # the median scene
        peak = max(r[2] for r in runs)
        steps = [v for k, v in out.timings.items() if k.startswith("step ")]
        records.append({**{k: spec[k] for k in KEYS}, **case, "seconds": seconds, "step_s": steps,
                        "seconds_runs": [r[0] for r in runs],
                        "stages": out.timings, "counts": out.counts, "peak_mem_bytes": peak, "mem_growth_bytes": grown,
                        "denoiser_calls": len(steps) * (2 if out.guidance_scale != 1 else 1),
                        "width": comp.config.model.width, "kernels": kernels,
                        "trajectory": "model" if spec.get("weights") else "oracle-steered"})
    return records


def plan(scales, points_paper, steps, scaling, points_mini: int = 40000, precisions=PRECISIONS,
         repeats: int = 1) -> list[dict]:
    """The worker specs of a full run: per scale the steps sweep in each precision, then the
    fp32 shortcut cases (a process each group, so one failure loses less), then the paper-scale
    point-count scaling. Every worker but the "glibc default" one retains freed memory, and every
    worker but the "no native kernels" ones uses the compiled kernels where they build. The
    sweep's 8-step scene (without 8 in `steps`, its last) runs `repeats` times."""
    on = dict.fromkeys(SHORTCUTS, True)
    off = dict.fromkeys(SHORTCUTS, False)
    headline = 8 if 8 in steps else steps[-1]
    sweep = [{"steps": s, "shortcuts": on, "case": "steps", **({"repeats": repeats} if s == headline else {})}
             for s in steps]
    workers = []
    for scale in scales:
        n = points_paper if scale == "paper" else points_mini
        base = {"scale": scale, "n_points": n, "precision": "fp32", "retain": True, "native": True}
        cases = [{"steps": headline, "shortcuts": off, "case": "straightforward"}]
        if scale == "paper":
            cases += [{"steps": 2, "shortcuts": {**on, k: False}, "case": f"no {k}"} for k in SHORTCUTS]
            cases += [{"steps": 2, "shortcuts": off, "case": "none"}]
        workers += [{**base, "precision": p, "cases": sweep} for p in precisions]
        workers += [{**base, "cases": cases}]
        if scale == "paper":
            workers += [{**base, "retain": False, "cases": [{"steps": 2, "shortcuts": on, "case": "glibc default"}]}]
            plain = {"shortcuts": on, "case": "no native kernels"}
            workers += [{**base, "native": False, "cases": [{**plain, "steps": 2}]}]
            if "bf16" in precisions:
                workers += [{**base, "native": False, "precision": "bf16",
                             "cases": [{**plain, "steps": headline}]}]
            scale8 = [{"steps": 8, "shortcuts": on, "case": "scaling"}]
            workers += [{**base, "n_points": m, "precision": p, "cases": scale8}
                        for p in precisions for m in scaling if m != n]
    return workers


def _cell(record: dict) -> str:
    """Seconds of a scene: "median (min-max)" where it ran more than once."""
    runs = record.get("seconds_runs", [record["seconds"]])
    return f"{record['seconds']:.1f}" + (f" ({min(runs):.1f}-{max(runs):.1f})" if len(runs) > 1 else "")


def markdown(doc: dict) -> str:
    m, rs = doc["machine"], [r for r in doc["results"] if "error" not in r]
    head = (f"{m['device']}: {m['gpu'] or m['cpu']}, {m['cores']} cores; torch {m['torch']}, {m['threads']} threads; "
            f"{m['date']}. One scene each after a 1-step warm-up (the steps table's "
            f"{doc['settings'].get('repeats', 1)} repeats: median (min-max)); KITTI seq 00 frame 0; "
            f"trajectory: {rs[0]['trajectory'] if rs else '?'}; peak MiB = the process's peak RSS during the scene "
            "(CPU) or torch.cuda.max_memory_allocated (CUDA), weights included. fp32 is exact; bf16 "
            "(bfloat16 convolutions) is an approximation.")
    steps = doc["settings"]["steps"]
    lines = [head, "", "Seconds per scene (CFG: 2 denoiser calls per step; refine on):", "",
             "| scale | width | points | precision | " + " | ".join(f"{s} steps" for s in steps)
             + " | peak MiB (8 steps) |", "|---|---:|---:|---|" + "---:|" * (len(steps) + 1)]
    for scale in doc["settings"]["scales"]:
        for precision in PRECISIONS:
            sweep = {r["steps"]: r for r in rs if r["scale"] == scale and r["case"] == "steps"
                     and r["precision"] == precision}
            if sweep:
                any_r = next(iter(sweep.values()))
                peak = sweep.get(8, any_r)["peak_mem_bytes"] / 2**20
                lines.append(f"| {scale} | {any_r['width']} | {any_r['n_points']:,} | {precision} | "
                             + " | ".join(_cell(sweep[s]) if s in sweep else "—" for s in steps)
                             + f" | {peak:.0f} |")
    short = [r for r in rs if r["case"] in ("straightforward", "none", "glibc default") or r["case"].startswith("no ")
             or (r["case"] == "steps" and r["steps"] in (2, 8))]
    short = [r for r in short if r["precision"] == "fp32" or any(
        o["case"] == "no native kernels" and o["precision"] == r["precision"] and o["steps"] == r["steps"] for o in rs)]
    if short:
        lines += ["", "Exact shortcuts (same outputs to float rounding; see ddpo_ros/pipeline.py and "
                  "ddpo_ros/sparse/native.py), fp32 unless marked:", "",
                  "| scale | steps | shortcuts | s / scene | denoising s / step | encoder s | peak MiB |",
                  "|---|---:|---|---:|---:|---:|---:|"]
        for r in short:
            label = {"steps": "all on", "straightforward": "all off (LiDiff's way)", "none": "all off",
                     "glibc default": "all on, glibc frees memory (not retained)"}.get(
                r["case"], r["case"].replace("no ", "off: "))
            label = f"bf16, {label}" if r["precision"] != "fp32" else label
            lines.append(f"| {r['scale']} | {r['steps']} | {label} | {r['seconds']:.1f} | "
                         f"{np.mean(r['step_s']):.2f} | {r['stages'].get('encoder', 0):.2f} | "
                         f"{r['peak_mem_bytes'] / 2**20:.0f} |")
    scaling = {(r["n_points"], r["precision"]): r for r in rs
               if r["scale"] == "paper" and r["steps"] == 8 and r["case"] in ("steps", "scaling")}
    if scaling:
        lines += ["", "Scaling with point count (paper scale, 8 steps):", "",
                  "| points | precision | s / scene | s / step | refine s | peak MiB |",
                  "|---:|---|---:|---:|---:|---:|"]
        lines += [f"| {n:,} | {p} | {r['seconds']:.1f} | {np.mean(r['step_s']):.2f} | "
                  f"{r['stages'].get('refine', 0):.2f} | {r['peak_mem_bytes'] / 2**20:.0f} |"
                  for (n, p), r in sorted(scaling.items(), key=lambda kv: (kv[0][0], PRECISIONS.index(kv[0][1])))]
    errors = [r for r in doc["results"] if "error" in r]
    lines += [f"\nerror in {r['scale']} {r['n_points']} {r.get('precision', '')}: {r['error'].splitlines()[-1]}"
              for r in errors]
    return "\n".join(lines) + "\n"


def bench_scene_cli(args) -> int:
    steps = [int(s) for s in str(args.steps).split(",")]
    scales = [s for s in str(args.scales).split(",") if s]
    scaling = [int(p) for p in str(args.scaling).split(",") if p.strip()]
    workers = plan(scales, args.points, steps, scaling, args.mini_points, repeats=args.repeats)
    results, start = [], time.perf_counter()
    for w in workers:
        spec = {**w, "device": args.device, "threads": args.threads, "weights": args.weights,
                "width": getattr(args, "width", None)}
        if spec["width"] is None:
            spec.pop("width")
        print(f"[bench-scene {time.perf_counter() - start:5.0f} s] {w['scale']} {w['n_points']:,} points: "
              f"{len(w['cases'])} scenes ...", file=sys.stderr, flush=True)
        got = _spawn(sys.executable, spec, module="ddpo_ros.frontends.bench_scene", keys=KEYS, timeout=WORKER_TIMEOUT_S)
        results += got if isinstance(got, list) else [got]
    doc = {"machine": machine_facts(args.device, args.threads, []), "results": results,
           "wall_s": round(time.perf_counter() - start, 1),
           "settings": {"steps": steps, "scales": scales, "scaling": scaling, "weights": args.weights,
                        "repeats": args.repeats,
                        "shortcuts": list(SHORTCUTS), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}}
    return write_results(doc, Path(args.out), markdown(doc))


def main(argv: list[str] | None = None) -> int:
    """`python -m ddpo_ros.frontends.bench_scene --worker SPEC` runs one worker; anything else is `ddpo bench-scene`."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return print(json.dumps(run_worker(json.loads(argv[1]))), flush=True) or 0
    from .cli import main as cli_main
    return cli_main(["bench-scene", *argv])


if __name__ == "__main__":
    sys.exit(main())
