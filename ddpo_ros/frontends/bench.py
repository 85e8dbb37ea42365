"""Speed and peak memory of the sparse backends on a real KITTI frame (`ddpo bench`).

Cases per point count N (default 20k, 50k, 180k), on both backends. ``conv``: one 3x3x3 submanifold
convolution 32 -> 32 channels, forward + backward, kernel map cached by the warm-up (as for every conv
of a level but the first); ``conv+map``: the same on a tensor built anew each run (hashing and kernel
map timed too); ``denoiser``: one full-width MinkUNetDiff forward (eval, no_grad), encoder excluded.

Inputs are identical across backends (digest checked): KITTI seq 00 frame 0 cropped to 3.5 m < r <
50 m, a seeded subset of N/10 points (the encoder's partial scan) replicated 10x plus Gaussian noise
like LiDiff's x_t = x_0 + sqrt(1 - abar_t) eps: sigma 0.45 m (t ~ 250); at the largest N also
sigma 0.05 m (late step: nearly clean, voxels with many neighbours) and, for the denoiser, 0.9852 m
(t = 999, the first sampler step). Conv input: the 5 cm voxels of x_t,
features = voxel mean xyz @ a seeded (3, 32) matrix. Weights: seed 0, the same for both backends.

Each (case, backend) runs in a fresh subprocess (``python -m ddpo_ros.frontends.bench --worker SPEC``, one JSON
line out; MinkowskiEngine's in --minkowski-python). Time: median and min of --repeats runs after 1
warm-up (CUDA synchronised). Peak memory, max over runs: CPU: growth of the process's peak RSS in the
op (VmHWM after - VmRSS before, VmHWM reset by /proc/self/clear_refs); CUDA: max_memory_allocated
growth. Both backends: 2 torch threads and the caller's OMP_WAIT_POLICY (recorded). Cases run one
at a time: two processes with spinning OpenMP threads on a 2-core VM stall each other for seconds.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..clouds import KITTI_FRAME, crop_range, find_kitti_frame, read_kitti_bin

REPO = Path(__file__).resolve().parents[2]
EARLY_SIGMA, MID_SIGMA, LATE_SIGMA, VOXEL, CHANNELS, REPLICAS = 0.9852, 0.45, 0.05, 0.05, 32, 10
OPS = ("conv", "conv+map", "denoiser")
MEMORY = {"cpu": "process peak RSS growth, VmHWM after - VmRSS before (VmHWM reset)",
          "cuda": "growth of torch.cuda.max_memory_allocated"}
CASE_KEYS, WORKER_TIMEOUT_S = ("op", "n_points", "sigma", "backend", "device", "width"), 1800


def diffusion_step(sigma: float) -> int:
    """Step t of LiDiff's linear schedule whose noise std sqrt(1 - abar_t) is closest to sigma."""
    from ..config import DiffusionConfig
    from ..diffusion import schedule_from_config
    schedule = schedule_from_config(DiffusionConfig())  # its defaults are LiDiff's schedule
    return int((schedule.sigma(slice(None)) - sigma).abs().argmin())


def make_inputs(frame: Path, n_points: int, sigma: float) -> dict:
    """Partial scan (1, N/10, 3), x_t (1, N, 3) and the voxelised x_t with 32-channel features."""
    xyz = crop_range(read_kitti_bin(frame)[:, :3])
    m = n_points // REPLICAS
    part = xyz[np.random.default_rng(0).choice(len(xyz), m, replace=False)]
    noise = np.random.default_rng(1).normal(0.0, sigma, (m * REPLICAS, 3)).astype(np.float32)
    x_t = torch.from_numpy(np.tile(part, (REPLICAS, 1)) + noise)
    grid, inverse = torch.unique(torch.round(x_t / VOXEL).long(), dim=0, return_inverse=True)
    mean = torch.zeros(len(grid), 3).index_add_(0, inverse, x_t) / torch.bincount(inverse)[:, None]
    proj = torch.from_numpy(np.random.default_rng(2).standard_normal((3, CHANNELS)).astype(np.float32))
    return {"part": torch.from_numpy(part)[None], "x_t": x_t[None], "feats": mean @ proj,
            "coords": torch.cat([torch.zeros(len(grid), 1, dtype=torch.long), grid], 1),
            "digest": hashlib.sha1(x_t.numpy().tobytes()).hexdigest()[:12]}


def _measure(op, device: torch.device, repeats: int) -> tuple[list[float], int]:
    """Times of `repeats` runs after one warm-up, and the peak memory growth over all runs."""
    times, peak = [], 0
    for _ in range(repeats + 1):
        seconds, grown = measure_once(op, device)
        times.append(seconds)
        peak = max(peak, grown)
    return times[1:], peak


def memory(device: torch.device, peak: bool) -> int:
    """Bytes in use now, or the peak since the last reset (CPU: process RSS; CUDA: allocator)."""
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated)(device)
    status = Path("/proc/self/status").read_text()
    return 1024 * int(re.search(("VmHWM" if peak else "VmRSS") + r":\s+(\d+)", status).group(1))


def measure_once(op, device: torch.device) -> tuple[float, int]:
    """Seconds of one call of `op` (device synchronised) and how far memory rose above the start."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to VmRSS
    base, start = memory(device, peak=False), time.perf_counter()
    op()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, memory(device, peak=True) - base


def run_case(spec: dict) -> dict:
    """One (op, N, sigma, backend) case in this process; returns its result record."""
    from ..models.networks import MinkGlobalEnc, MinkUNetDiff
    from ..sparse import get_backend, layers
    torch.set_num_threads(spec["threads"])
    device, backend, width = torch.device(spec["device"]), spec["backend"], spec["width"]
    sp = get_backend(backend)
    inp = make_inputs(Path(spec["frame"]), spec["n_points"], spec["sigma"])
    t = diffusion_step(spec["sigma"])
    torch.manual_seed(0)  # reference (pure-PyTorch) weights, loaded by the other backend

    def load(ref: torch.nn.Module, make) -> torch.nn.Module:
        model = ref if backend == "torch" else make()
        model.load_state_dict(ref.state_dict())
        return model.to(device).eval()

    if spec["op"] == "denoiser":
        refs = MinkGlobalEnc(width=width), MinkUNetDiff(width=width)  # both before any other model
        enc, den = [load(ref, lambda cls=type(ref): cls(width=width, backend=backend)) for ref in refs]
        x_t, steps = inp["x_t"].to(device), torch.full((1,), t, dtype=torch.long, device=device)
        with torch.no_grad():
            cond = enc(inp["part"].to(device))

        def op():
            with torch.no_grad():
                den(x_t, cond, steps)
    else:
        conv = load(layers.Conv(CHANNELS, CHANNELS, 3, 1), lambda: sp.Conv(CHANNELS, CHANNELS, 3, 1))
        feats, coords = inp["feats"].to(device).requires_grad_(), inp["coords"].to(device)
        grad_out = torch.randn(feats.shape, generator=torch.Generator().manual_seed(3)).to(device)
        cached = sp.sparse_tensor(feats.detach(), coords, 1)  # its kernel map is cached by the warm-up

        def op():
            x = sp.replace(cached, feats) if spec["op"] == "conv" else sp.sparse_tensor(feats, coords, 1)
            conv(x).F.backward(grad_out)
            feats.grad = conv.kernel.grad = None

    times, peak = _measure(op, device, spec["repeats"])
    me = sys.modules.get("MinkowskiEngine")
    return {**{k: spec[k] for k in CASE_KEYS}, "t": t, "n_voxels": len(inp["coords"]),
            "input_digest": inp["digest"], "median_s": float(np.median(times)), "min_s": min(times),
            "times_s": times, "peak_mem_bytes": peak, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "minkowski_engine": me and me.__version__}


def _spawn(python: str, spec: dict, module: str = "ddpo_ros.frontends.bench", keys=CASE_KEYS,
           timeout: float = WORKER_TIMEOUT_S):
    """Run one case in a fresh `python -m module --worker SPEC`; a failure becomes an error record."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(spec["threads"])}
    try:
        proc = subprocess.run([python, "-m", module, "--worker", json.dumps(spec)], env=env,
                              capture_output=True, text=True, timeout=timeout, cwd=REPO)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("{", "["))]
        if proc.returncode == 0 and lines:
            return json.loads(lines[-1])
        error = f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-600:]}"
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    return {**{k: spec[k] for k in keys if k in spec}, "error": error}


def machine_facts(device: str, threads: int, results: list[dict]) -> dict:
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())  # Linux, as /proc/self
    me = [r for r in results if r["backend"] == "minkowski" and "error" not in r] or [{}]
    return {"cpu": cpu.group(1).strip() if cpu else None, "cores": os.cpu_count(), "kernel": os.uname().release,
            "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
            "device": device, "torch": torch.__version__, "threads": threads,
            "minkowski_engine": me[0].get("minkowski_engine"), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def markdown(doc: dict) -> str:
    """The results as a README table: one row per case, the backends side by side."""
    m, s = doc["machine"], doc["settings"]

    def cell(r, mem=False):
        if r is None or "error" in r:
            return "—" if r is None or mem else "error: " + r["error"].splitlines()[-1][:40].replace("|", "")
        return f"{r['peak_mem_bytes'] / 2**20:.0f}" if mem else f"{r['median_s']:.3f} ({r['min_s']:.3f})"

    lines = [f"{m['device']}: {m['gpu'] or m['cpu']}, {m['cores']} cores; torch {m['torch']}, "
             f"{m['threads']} threads, OMP_WAIT_POLICY={s['omp_wait_policy']}; MinkowskiEngine "
             f"{m['minkowski_engine'] or 'not run'}; {m['date']}. Seconds: median (min) of {s['repeats']} "
             f"runs after 1 warm-up. Memory (MiB): {s['memory']}.", "",
             "| op | points | σ m (t) | voxels | torch s | ME s | ME / torch | torch MiB | ME MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case in dict.fromkeys((r["op"], r["n_points"], r["sigma"]) for r in doc["results"]):
        by = {r["backend"]: r for r in doc["results"] if (r["op"], r["n_points"], r["sigma"]) == case}
        tr, me = by.get("torch"), by.get("minkowski")
        ok = [r for r in (tr, me) if r and "error" not in r]
        step, vox = (ok[0]["t"], f"{ok[0]['n_voxels']:,}") if ok else ("?", "?")
        ratio = f"{me['me_over_torch']:.2f}" if me and "me_over_torch" in me else "—"
        lines.append(f"| {case[0]} | {case[1]:,} | {case[2]} ({step}) | {vox} | {cell(tr)} | {cell(me)} "
                     f"| {ratio} | {cell(tr, True)} | {cell(me, True)} |")
    return "\n".join(lines) + "\n"


def bench_cli(args) -> int:
    points = [int(p) for p in str(args.points).split(",") if p.strip()]
    try:
        frame = find_kitti_frame()
    except FileNotFoundError as err:
        sys.exit(f"bench: {err}")
    threads, width = getattr(args, "threads", 2), getattr(args, "width", 1.0)
    cases = [(op, n, MID_SIGMA) for n in points for op in OPS]
    cases += [(op, max(points), LATE_SIGMA) for op in ("conv", "denoiser")]
    cases += [("denoiser", max(points), EARLY_SIGMA)]
    backends = [("torch", sys.executable)]
    backends += [("minkowski", args.minkowski_python)] if args.minkowski_python else []
    results, start = [], time.perf_counter()
    for op, n, sigma in cases:  # both backends of a case back to back
        by = {}
        for backend, python in backends:
            r = by[backend] = _spawn(python, {"op": op, "n_points": n, "sigma": sigma, "backend": backend,
                                              "device": args.device, "width": width, "threads": threads,
                                              "repeats": args.repeats, "frame": str(frame)})
            what = ("ERROR " + r["error"].splitlines()[-1]) if "error" in r else \
                f"{r['median_s']:.3f} s median, {r['n_voxels']} voxels, {r['peak_mem_bytes'] / 2**20:.0f} MiB"
            print(f"[bench {time.perf_counter() - start:5.0f} s] {op} N={n} sigma={sigma} {backend}: {what}",
                  file=sys.stderr, flush=True)
        tr, me = by.get("torch"), by.get("minkowski")
        if tr and me and "error" not in tr and "error" not in me:
            me["me_over_torch"] = me["median_s"] / tr["median_s"]
            if (me["input_digest"], me["n_voxels"]) != (tr["input_digest"], tr["n_voxels"]):
                me["warning"] = "inputs differ between backends"
        results += by.values()
    doc = {"machine": machine_facts(args.device, threads, results), "results": results,
           "wall_s": round(time.perf_counter() - start, 1),
           "settings": {"frame": str(KITTI_FRAME), "crop_m": [3.5, 50], "voxel_m": VOXEL, "replicas": REPLICAS,
                        "conv_channels": CHANNELS, "width": width, "points": points, "repeats": args.repeats,
                        "warmup": 1, "memory": MEMORY[torch.device(args.device).type],
                        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}}
    return write_results(doc, Path(args.out), markdown(doc))


def write_results(doc: dict, out: Path, table: str) -> int:
    """`out` (JSON) and the markdown table beside it; prints the table; 1 if any case failed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    out.with_suffix(".md").write_text(table)
    print(table)
    return 0 if all("error" not in r for r in doc["results"]) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ddpo_ros.frontends.bench", description=__doc__.splitlines()[0])
    for flag, kind, default in (("--out", str, "bench/results.json"), ("--points", str, "20000,50000,180000"),
                                ("--minkowski-python", str, None), ("--device", str, "cpu"),
                                ("--repeats", int, 3)):
        p.add_argument(flag, type=kind, default=default)
    # Hidden: --width (a thin model, for tests), --threads, --worker (JSON spec of one case).
    for flag, kind, default in (("--width", float, 1.0), ("--threads", int, 2), ("--worker", str, None)):
        p.add_argument(flag, type=kind, default=default, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:  # one case, one JSON line
        return print(json.dumps(run_case(json.loads(args.worker))), flush=True) or 0
    return bench_cli(args)


if __name__ == "__main__":
    sys.exit(main())
