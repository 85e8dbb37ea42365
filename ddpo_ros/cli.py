"""`ddpo`: one command-line tool over the same core the ROS node uses.

Heavy imports (torch, models) happen inside each command so `ddpo --help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys


def _lazy(module: str, function: str):
    """A command that imports its module only when it runs."""
    def run(args) -> int:
        return getattr(importlib.import_module(f".{module}", __package__), function)(args)
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddpo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="reference .ckpt <-> ddpo_ros .safetensors weights",
                       description="Import LiDiff / ScoreLiDAR / Distillation-DPO Lightning checkpoints "
                                   "into one safetensors file, or export ours back to a reference layout.")
    p.add_argument("inputs", nargs="+", help="input .ckpt files (merged) or one .safetensors file")
    p.add_argument("-o", "--output", required=True, help="output .safetensors (import) or .ckpt (export)")
    p.add_argument("--roles", default=None,
                   help="comma-separated roles to keep (teacher,student,ta_win,ta_lose,ta,encoder,refiner)")
    p.add_argument("--layout", default=None,
                   help="reference layout to export to (lidiff, lidiff_refine, scorelidar, distillation_dpo, ddpo_teacher)")
    p.set_defaults(func=_lazy("checkpoint", "convert_cli"))

    p = sub.add_parser("complete", help="complete LiDAR scans from files (.bin, .ply, .pcd, .npy)",
                       description="Complete each scan with the Completer the ROS node uses; write PLY "
                                   "(or .bin/.pcd/.npy) and print per-stage timings.")
    p.add_argument("inputs", nargs="+", help="scan files or folders of them")
    p.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    p.add_argument("--weights", required=True,
                   help="ddpo_ros .safetensors weights (`ddpo convert` makes them from LiDiff/DDPO .ckpt)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: 8 student, 50 teacher)")
    p.add_argument("--guidance", type=float, default=None, help="CFG weight w (default: 3.5 student, 6 teacher)")
    p.add_argument("--no-refine", action="store_true", help="skip the x6 refinement net")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: fresh noise per scan)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--format", default=".ply", choices=[".ply", ".bin", ".pcd", ".npy"],
                   help="output format when -o is a folder")
    p.add_argument("--save-coarse", action="store_true", help="also write the scene before refinement")
    p.add_argument("--png", action="store_true", help="also render input vs completion to <output>.png")
    p.set_defaults(func=_lazy("offline", "complete_cli"))

    p = sub.add_parser("render", help="PNG of point clouds side by side (bird's-eye and 3-D views)")
    p.add_argument("clouds", nargs="+", help="cloud files (.bin, .ply, .pcd, .npy)")
    p.add_argument("-o", "--output", required=True, help="PNG file to write")
    p.add_argument("--labels", default=None, help="comma-separated panel labels (default: file names)")
    p.add_argument("--title", default=None)
    p.add_argument("--view", default="both", choices=["bev", "3d", "both"])
    p.set_defaults(func=_lazy("offline", "render_cli"))

    p = sub.add_parser("bench", help="speed and peak memory of the sparse backends (JSON + table)")
    p.add_argument("--out", default="bench/results.json", help="JSON file to write")
    p.add_argument("--points", default="20000,50000,180000", help="comma-separated point counts")
    p.add_argument("--minkowski-python", default=None,
                   help="python of an environment with MinkowskiEngine, to bench it in the same run")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    p.set_defaults(func=_lazy("bench", "bench_cli"))

    p = sub.add_parser("bench-scene", help="seconds and peak memory per completed scene (JSON + tables)")
    p.add_argument("--out", default="bench/scene.json", help="JSON file to write (a .md table beside it)")
    p.add_argument("--scales", default="mini,paper", help="comma-separated: mini, paper")
    p.add_argument("--steps", default="1,2,4,8,50", help="comma-separated step counts")
    p.add_argument("--points", type=int, default=180000, help="paper-scale points (x_init size)")
    p.add_argument("--mini-points", type=int, default=40000, help="mini-scale points (x_init size)")
    p.add_argument("--scaling", default="20000,50000,180000,360000", help="paper-scale point counts, 8 steps")
    p.add_argument("--weights", default=None, help="real weights (.safetensors): their own trajectory")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--width", type=float, default=None, help=argparse.SUPPRESS)  # thin models for tests
    p.set_defaults(func=_lazy("bench_scene", "bench_scene_cli"))

    p = sub.add_parser("demo", help="run the best end-to-end job on the bundled real KITTI frames")
    p.add_argument("--data", default=None, help="shared data folder (default: $DDPO_DATA or ../shared/data)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--weights", default=None, help="ddpo_ros .safetensors weights (from `ddpo convert`)")
    p.set_defaults(func=_lazy("demo", "demo_cli"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
