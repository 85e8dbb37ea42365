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
                                   "into one safetensors file, export ours back to a reference layout, or merge "
                                   "several of ours (e.g. teacher + refiner runs) into one.")
    p.add_argument("inputs", nargs="+",
                   help="input .ckpt files (merged), one .safetensors file (with --layout), "
                        "or several .safetensors files (merged)")
    p.add_argument("-o", "--output", required=True, help="output .safetensors (import) or .ckpt (export)")
    p.add_argument("--roles", default=None,
                   help="comma-separated roles to keep (teacher,student,ta_win,ta_lose,ta,ta_real,encoder,refiner)")
    p.add_argument("--layout", default=None,
                   help="reference layout to export to "
                        "(lidiff, lidiff_refine, scorelidar, distillation_dpo, ddpo_teacher)")
    p.add_argument("--set", action="append", default=[], metavar="completion.KEY=VALUE",
                   help="a sampling setting for the .safetensors output, e.g. --set completion.start_t=125")
    p.set_defaults(func=_lazy("convert", "convert_cli"))

    p = sub.add_parser("complete", help="complete LiDAR scans from files (.bin, .ply, .pcd, .npy) or a rosbag2",
                       description="Complete each scan with the Completer the ROS node uses; write PLY "
                                   "(or .bin/.pcd/.npy) and print per-stage timings. A rosbag2 input "
                                   "(folder with metadata.yaml, .mcap, .db3) becomes a new bag: every "
                                   "message copied, plus <topic>/completed and /diagnostics.")
    p.add_argument("inputs", nargs="+", help="scan files or folders of them, or one rosbag2")
    p.add_argument("-o", "--output", required=True, help="output file (one input) or folder; the new bag for a bag")
    p.add_argument("--weights", default=None,
                   help="ddpo_ros .safetensors weights (default: the bundled mini weights; `ddpo convert` "
                        "makes them from LiDiff/DDPO .ckpt)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: 8 student, 50 teacher)")
    p.add_argument("--guidance", type=float, default=None, help="CFG weight w (default: 3.5 student, 6 teacher)")
    p.add_argument("--no-refine", action="store_true", help="skip the x6 refinement net")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: fresh noise per scan)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16"],
                   help="bf16: bfloat16 convolutions, ~2x faster at paper width on AMX CPUs, approximate "
                        "(default: the weights' completion.precision, fp32)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--format", default=".ply", choices=[".ply", ".bin", ".pcd", ".npy"],
                   help="output format when -o is a folder")
    p.add_argument("--save-coarse", action="store_true", help="also write the scene before refinement")
    p.add_argument("--png", action="store_true", help="also render input vs completion to <output>.png")
    p.add_argument("--topic", default=None, help="bag input: the PointCloud2 topic (default: the only one)")
    p.add_argument("--out-topic", default=None, help="bag input: completion topic (default: <topic>/completed)")
    p.add_argument("--storage", default=None, choices=["sqlite3", "mcap"],
                   help="bag input: storage of the new bag (default: the input's)")
    p.set_defaults(func=_lazy("offline", "complete_cli"))

    p = sub.add_parser("kitti2bag", help="a KITTI odometry sequence as a rosbag2 (no ROS needed)",
                       description="One sensor_msgs/PointCloud2 (x, y, z, intensity) per velodyne scan, "
                                   "stamped 2011-10-03 + times.txt, /tf_static base_link -> sensor "
                                   "(latched), optional /tf odom -> base_link from poses.txt. rosbag2 "
                                   "metadata version 8, readable by Humble and later.")
    p.add_argument("seq_dir", help="sequence folder with velodyne/*.bin, times.txt, calib.txt (poses.txt)")
    p.add_argument("-o", "--output", required=True, help="bag folder to create (must not exist)")
    p.add_argument("--storage", default="sqlite3", choices=["sqlite3", "mcap"],
                   help="sqlite3 (Humble's default) or mcap (Jazzy's)")
    p.add_argument("--topic", default="/velodyne_points")
    p.add_argument("--frame-id", default="velodyne", help="frame of the clouds")
    p.add_argument("--base-frame", default="base_link", help="parent of the cloud frame in /tf_static")
    p.add_argument("--tf", action="store_true", help="also write /tf odom -> base_link from poses.txt")
    p.add_argument("--limit", type=int, default=None, help="only the first N scans")
    p.set_defaults(func=_lazy("bags", "kitti2bag_cli"))

    p = sub.add_parser("play", help="replay a rosbag2 with rclpy (for machines without the ros2 CLI)",
                       description="Publish every message of a bag with its recorded type and timing; "
                                   "/clock carries the bag time for use_sim_time nodes.")
    p.add_argument("bag", help="rosbag2 folder, .mcap or .db3")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    p.add_argument("--topics", nargs="+", default=None, help="play only these topics")
    p.add_argument("--clock", action=argparse.BooleanOptionalAction, default=True,
                   help="publish /clock at the bag time (default: on)")
    p.add_argument("--loop", action="store_true", help="start over at the end, until Ctrl-C")
    p.add_argument("--depth", type=int, default=10, help="publisher queue depth (reliable, keep-last)")
    p.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for a subscriber on every topic (and /clock) before playing")
    p.set_defaults(func=_lazy("player", "play_cli"))

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
    p.add_argument("--repeats", type=int, default=3,
                   help="scenes per 8-step case of the steps table (median and range reported); others run once")
    p.add_argument("--weights", default=None, help="real weights (.safetensors): their own trajectory")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--width", type=float, default=None, help=argparse.SUPPRESS)  # thin models for tests
    p.set_defaults(func=_lazy("bench_scene", "bench_scene_cli"))

    p = sub.add_parser("demo", help="the online path end to end on the bundled KITTI frames (loopback DDS)",
                       description="Convert the bundled KITTI scans to a bag, start completion_node, replay the "
                                   "bag into it, and report latency, dropped frames and Chamfer distance to "
                                   "aggregated ground truth, with a PNG.")
    p.add_argument("--data", default=None, help="shared data folder (default: $DDPO_DATA or ../shared/data)")
    p.add_argument("--out", default="demo_out", help="folder for the bag, logs, demo.json and demo.png")
    p.add_argument("--frames", type=int, default=12, help="scans to replay (of 40)")
    p.add_argument("--rate", type=float, default=0.05, help="replay speed (x real time; 0.05 = a scan every ~2 s)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the weights' own)")
    p.add_argument("--weights", default=None, help="weights file (default: the bundled mini weights)")
    p.set_defaults(func=_lazy("demo", "demo_cli"))
    return parser


def main(argv: list[str] | None = None) -> int:
    from .allocator import retain_freed_memory

    args = build_parser().parse_args(argv)
    retain_freed_memory()  # large tensors reuse freed pages instead of faulting in fresh ones
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
