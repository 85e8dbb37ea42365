"""`training/train.py evaluate` on the bundled SemanticKITTI frames with tiny weights: tables, resume, renders."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import DATA, REPO
from training.train import main

SEMKITTI = DATA / "semantickitti_seq00_mini"


def run(out, weights, *extra):
    return main(["evaluate", "--weights", str(weights), "--data", str(SEMKITTI), "--sequences", "00",
                 "--steps", "1", "--limit", "2", "--renders", "1", "--cache-dir", str(out / "maps"),
                 "--out", str(out / "eval"), *extra])


def test_evaluate_writes_the_tables_and_resumes(tmp_path, tiny_weights, capsys):
    assert run(tmp_path, tiny_weights) == 0
    ev = tmp_path / "eval"
    rows = [json.loads(line) for line in (ev / "results.jsonl").read_text().splitlines()]
    assert [r["scan"].rsplit("/", 1)[1] for r in rows] == ["000000.bin", "000001.bin"]
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["scans"] == 2 and summary["settings"]["steps"] == 1
    scan_cd, completion_cd = summary["scan_only"]["cd"]["mean"], summary["completion"]["cd"]["mean"]
    assert 0.05 < scan_cd < 0.6 and completion_cd > 0  # tiny random weights: no claim about quality
    assert 0 < summary["scan_only"]["iou_0.5"] <= 1
    table = (ev / "summary.md").read_text()
    assert "| scan (no completion) |" in table and "| student, 1 steps + refine |" in table and "| 2 |" in table
    assert len(list((ev / "renders").glob("*.png"))) == 1

    before = (ev / "results.jsonl").read_text()
    assert run(tmp_path, tiny_weights) == 0  # resumed: nothing left to do, nothing recomputed
    assert (ev / "results.jsonl").read_text() == before
    assert run(tmp_path, tiny_weights, "--no-refine") == 2  # other settings, same folder: refused
    assert "other settings" in capsys.readouterr().err


def test_script_entry_point_runs_from_anywhere(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "training" / "train.py"), "evaluate", "--help"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--weights" in out.stdout


def test_missing_split_names_the_folder(tmp_path, tiny_weights):
    with pytest.raises(FileNotFoundError, match="none of the sequences 08"):
        main(["evaluate", "--weights", str(tiny_weights), "--data", str(SEMKITTI), "--out", str(tmp_path)])


def test_evaluate_on_held_out_synthetic_scenes(tmp_path, tiny_weights):
    out = tmp_path / "syn"
    assert main(["evaluate", "--weights", str(tiny_weights), "--data", "synthetic:2", "--steps", "1",
                 "--renders", "0", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["scan"] for r in rows] == ["synthetic:1000000", "synthetic:1000001"]
    assert 0 < json.loads((out / "summary.json").read_text())["scan_only"]["cd"]["mean"] < 1.0


def test_kitti_scenes_take_the_poses_file_named(tmp_path):
    """--poses picks the map's poses per sequence folder (the bundled frames: poses_sova.txt, LiDAR-aligned)."""
    import numpy as np

    from ddpo_ros.datasets.ground_truth import MapBuilder, scan_ground_truth
    from ddpo_ros.datasets.kitti import KittiSequence
    from training.evaluate import kitti_scenes

    src, seq = DATA / "kitti_seq00_0_39", tmp_path / "seq"
    (seq / "velodyne").mkdir(parents=True)
    for name in ("calib.txt", "times.txt", "poses.txt", "poses_sova.txt"):
        (seq / name).symlink_to(src / name)
    for i in range(3):  # frames 0-2: where the official poses smear most (SOURCE.md)
        (seq / "velodyne" / f"{i:06d}.bin").symlink_to(src / "velodyne" / f"{i:06d}.bin")
    default = dict(kitti_scenes(seq, lambda n: [1], tmp_path / "maps"))
    sova = dict(kitti_scenes(seq, lambda n: [1], tmp_path / "maps", poses="poses_sova.txt"))
    (key, load), = sova.items()
    scan, gt = load()
    aligned = KittiSequence(seq, poses=seq / "poses_sova.txt")
    world = MapBuilder()
    for i in range(3):
        world.add(aligned.scan(i), aligned.pose(i))
    raw = scan[np.linalg.norm(scan, axis=1) < 50.0]
    np.testing.assert_array_equal(gt, scan_ground_truth(world.points, aligned.pose(1), raw, z_max=4.4))
    assert len(default[key]()[1]) > len(gt)  # the smeared map spreads the same surfaces over more voxels
    with pytest.raises(FileNotFoundError, match="--poses nope.txt"):
        kitti_scenes(seq, lambda n: [1], None, poses="nope.txt")
