"""`ddpo complete` and `ddpo render`: the Completer over files, no ROS needed.

Inputs are KITTI .bin, .ply, .pcd or .npy clouds (or folders of them); each completed scene is
written as PLY (or .bin/.pcd/.npy, chosen by the output suffix) with a per-scan timing table.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..datasets.cloud_files import SUFFIXES as CLOUD_SUFFIXES  # numpy-only import: `ddpo --help` stays fast


def expand_inputs(inputs) -> list[Path]:
    """Files as given, folders as their cloud files (sorted); missing paths raise FileNotFoundError."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in CLOUD_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{item}: no {'/'.join(CLOUD_SUFFIXES)} files in this folder")
            files += found
        elif item.exists():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files


def output_paths(files: list[Path], out: Path, suffix: str = ".ply") -> list[Path]:
    """One input and a file name with a cloud suffix: that file. Otherwise a folder of <stem>.ply."""
    if len(files) == 1 and out.suffix.lower() in CLOUD_SUFFIXES:
        return [out]
    if out.suffix.lower() in CLOUD_SUFFIXES:
        raise ValueError(f"-o {out}: {len(files)} inputs need an output folder, not a file name")
    stems = [f.stem for f in files]
    if len(set(stems)) < len(stems):  # e.g. two sequences' 000000.bin: keep the parent's name too
        stems = [f"{f.parent.name}_{f.stem}" for f in files]
    return [out / f"{s}{suffix}" for s in stems]


def load_completer(args):
    """The Completer of `ddpo complete`: the weights' settings with the options given applied."""
    from ..loading import load_completer as load

    given = {"steps": args.steps, "guidance_scale": args.guidance, "seed": args.seed,
             "refine": False if args.no_refine else None, "precision": args.precision}
    return load(args.weights, device=args.device, overrides={k: v for k, v in given.items() if v is not None})


def complete_cli(args) -> int:
    import torch
    from tqdm import tqdm

    from .bags import is_bag
    from ..datasets.cloud_files import read_cloud, write_cloud
    from ..completion import stage_table

    if any(is_bag(p) for p in args.inputs):
        return complete_bag_cli(args)
    try:
        files = expand_inputs(args.inputs)
        outs = output_paths(files, Path(args.output), args.format)
        completer = load_completer(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"ddpo complete: {err}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    c = completer.config.completion
    print(f"{len(files)} scan(s); {completer.kind} from {args.weights or 'the bundled mini weights'}, "
          f"{completer.default_steps} steps, guidance {completer.default_guidance:g}, "
          f"refine {'on' if c.refine and completer.refiner is not None else 'off'}, {completer.device}",
          file=sys.stderr)
    rows, failed = [], []
    for src, dst in tqdm(list(zip(files, outs)), desc="completing", unit="scan", file=sys.stderr,
                         disable=len(files) < 2):
        try:
            scan = read_cloud(src)
            result = completer.complete(scan)
        except ValueError as err:  # unusable scan: report it, go on with the rest
            failed.append(src)
            tqdm.write(f"{src}: skipped: {err}", file=sys.stderr)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_cloud(dst, result.points)
        if args.save_coarse:
            write_cloud(dst.with_name(f"{dst.stem}_coarse{dst.suffix}"), result.coarse)
        if args.png:
            from .render import render_clouds
            render_clouds(dst.with_suffix(".png"), [("input scan", scan[:, :3]),
                                                    ("completion", result.points)], title=src.name)
        tqdm.write(f"{src} -> {dst}: {result.counts['input']:,} -> {len(result.points):,} points\n"
                   + stage_table(result.timings), file=sys.stderr)
        rows.append((src.name, result.counts["input"], len(result.points), result.timings["total"]))
    if rows:
        width = max(len(r[0]) for r in rows)
        print(f"{'scan':<{width}}  {'input':>9}  {'output':>10}  {'seconds':>8}")
        for name, n_in, n_out, sec in rows:
            print(f"{name:<{width}}  {n_in:>9,}  {n_out:>10,}  {sec:>8.2f}")
    if failed:
        print(f"{len(failed)} of {len(files)} scan(s) could not be completed", file=sys.stderr)
    return 1 if failed else 0


def complete_bag_cli(args) -> int:
    """`ddpo complete BAG -o OUT_BAG`: the bag copied whole plus a completion and diagnostics per cloud."""
    import torch
    from rosbags.highlevel import AnyReaderError

    from .bag_complete import complete_bag

    if len(args.inputs) != 1:
        print(f"ddpo complete: a rosbag2 input must be the only input, got {len(args.inputs)}", file=sys.stderr)
        return 2
    if args.save_coarse or args.png:
        print("ddpo complete: --save-coarse and --png apply to files, not bags; ignored", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        completer = load_completer(args)
        summary = complete_bag(args.inputs[0], args.output, completer, topic=args.topic,
                               out_topic=args.out_topic, storage=args.storage)
    except (OSError, ValueError, AnyReaderError) as err:
        print(f"ddpo complete: {err}", file=sys.stderr)
        return 2
    print(f"{args.output}: {summary['completed']} of {summary['clouds']} clouds completed, "
          f"{summary['written']} messages")
    for topic, n in sorted(summary["topics"].items()):
        print(f"  {topic}: {n}")
    return 1 if summary["skipped"] else 0


def render_cli(args) -> int:
    from ..datasets.cloud_files import read_cloud
    from .render import render_clouds

    labels = args.labels.split(",") if args.labels else [Path(p).name for p in args.clouds]
    if len(labels) != len(args.clouds):
        print(f"ddpo render: {len(labels)} labels for {len(args.clouds)} clouds", file=sys.stderr)
        return 2
    try:
        panels = [(label, read_cloud(p)[:, :3]) for label, p in zip(labels, args.clouds)]
        path = render_clouds(args.output, panels, title=args.title, view=args.view)
    except (FileNotFoundError, ValueError) as err:
        print(f"ddpo render: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0
