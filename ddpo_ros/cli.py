"""`ddpo`: one command-line tool over the same core the ROS node uses.

Heavy imports (torch, models) happen inside each command so `ddpo --help` is instant.
"""
from __future__ import annotations

import argparse
import sys


def _convert(args) -> int:
    from .checkpoint import convert_cli
    return convert_cli(args)


def _bench(args) -> int:
    from .bench import bench_cli
    return bench_cli(args)


def _demo(args) -> int:
    from .demo import demo_cli
    return demo_cli(args)


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
    p.set_defaults(func=_convert)

    p = sub.add_parser("bench", help="speed and peak memory of the sparse backends (JSON + table)")
    p.add_argument("--out", default="bench/results.json", help="JSON file to write")
    p.add_argument("--points", default="20000,50000,180000", help="comma-separated point counts")
    p.add_argument("--minkowski-python", default=None,
                   help="python of an environment with MinkowskiEngine, to bench it in the same run")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    p.set_defaults(func=_bench)

    p = sub.add_parser("demo", help="run the best end-to-end job on the bundled real KITTI frames")
    p.add_argument("--data", default=None, help="shared data folder (default: $DDPO_DATA or ../shared/data)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--weights", default=None, help="ddpo_ros .safetensors weights (from `ddpo convert`)")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
