"""KITTI odometry readers on the real shared sequence files, and their errors on broken copies."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import DATA
from ddpo_ros.datasets.kitti import (KittiSequence, read_calib, read_labels, read_poses, read_times,
                                     velodyne_poses)

FLAT = DATA / "kitti_seq00_0_39"
SEMKITTI = DATA / "semantickitti_seq00_mini" / "sequences" / "00"


def test_times_calib_poses_of_the_real_sequence():
    times = read_times(FLAT / "times.txt")
    assert times.shape == (40,) and times.dtype == np.float64
    assert times[0] == 0.0 and times[1] == pytest.approx(0.1037359)
    assert np.all((np.diff(times) > 0.1035) & (np.diff(times) < 0.1039))  # SOURCE.md: 0.1035-0.1039 s

    calib = read_calib(FLAT / "calib.txt")
    assert set(calib) == {"P0", "P1", "P2", "P3", "Tr"}
    assert calib["P0"].shape == (3, 4) and calib["P0"][0, 0] == pytest.approx(718.856)
    tr = calib["Tr"]
    assert tr.shape == (4, 4) and np.array_equal(tr[3], [0, 0, 0, 1])
    # velodyne x (forward) is camera z (forward): Tr maps the x axis to about +z
    assert tr[:3, :3] @ [1, 0, 0] == pytest.approx([0, 0, 1], abs=0.01)

    poses = read_poses(FLAT / "poses.txt")
    assert poses.shape == (40, 4, 4)
    assert np.allclose(poses[0], np.eye(4), atol=1e-6)
    assert poses[1, 2, 3] == pytest.approx(0.8586941)  # cam0 moves along +z

    velo = velodyne_poses(poses, tr)
    assert np.allclose(velo[0], np.eye(4), atol=1e-6)
    # in the velodyne frame the car drives along +x; SOURCE.md: GT 0->5 = 4.30 m
    assert velo[5, 0, 3] == pytest.approx(4.29, abs=0.02)
    assert np.allclose(velo[7], np.linalg.inv(tr) @ poses[7] @ tr)


def test_semantickitti_labels_match_the_scan():
    seq = KittiSequence(SEMKITTI)
    labels = seq.labels(0)
    assert labels.dtype == np.uint16 and labels.shape == (124668,) == (len(seq.scan(0)),)
    # SOURCE.md lists the classes present in frame 0
    assert set(np.unique(labels).tolist()) >= {0, 1, 10, 40, 44, 48, 50, 51, 52, 60, 70, 71, 72}
    assert seq.labels(1) is None  # only frame 0 is labelled
    raw = np.fromfile(SEMKITTI / "labels" / "000000.label", np.uint32)
    assert np.array_equal(labels, raw & 0xFFFF)
    with pytest.raises(ValueError, match="124668 labels for a scan of 5 points"):
        read_labels(SEMKITTI / "labels" / "000000.label", 5)


@pytest.mark.parametrize("root, n", [(FLAT, 40), (SEMKITTI, 6)])
def test_sequence_on_both_layouts(root, n):
    seq = KittiSequence(root)
    assert len(seq) == n
    scan = seq.scan(3)
    assert scan.dtype == np.float32 and scan.shape == (124167, 4)  # frame 3 size from SOURCE.md
    assert np.array_equal(scan, np.fromfile(root / "velodyne" / "000003.bin", np.float32).reshape(-1, 4))
    assert seq.time(2) == pytest.approx(0.2073381)
    assert seq.pose(0) == pytest.approx(np.eye(4), abs=1e-6)
    assert seq.pose(5)[0, 3] == pytest.approx(4.29, abs=0.02)


def test_sequence_subset_uses_the_frame_numbers_and_optional_poses(tmp_path):
    (tmp_path / "velodyne").mkdir()
    for frame in (4, 5):  # frames 4-5 only: rows 4 and 5 of times/poses
        (tmp_path / "velodyne" / f"{frame:06d}.bin").symlink_to(SEMKITTI / "velodyne" / f"{frame:06d}.bin")
    (tmp_path / "times.txt").write_text((SEMKITTI / "times.txt").read_text())
    (tmp_path / "calib.txt").write_text((SEMKITTI / "calib.txt").read_text())
    seq = KittiSequence(tmp_path)
    assert len(seq) == 2 and seq.pose(0) is None
    assert seq.time(0) == pytest.approx(read_times(SEMKITTI / "times.txt")[4])
    seq = KittiSequence(tmp_path, poses=FLAT / "poses_sova.txt")
    sova = velodyne_poses(read_poses(FLAT / "poses_sova.txt"), read_calib(FLAT / "calib.txt")["Tr"])
    assert np.allclose(seq.pose(1), sova[5])


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_errors_name_the_file_and_line(tmp_path):
    lines = (FLAT / "poses.txt").read_text().splitlines()
    lines[6] = " ".join(lines[6].split()[:11])
    with pytest.raises(ValueError, match=r"poses\.txt line 7: expected 12 numbers, got 11"):
        read_poses(write(tmp_path, "poses.txt", "\n".join(lines)))
    lines = (FLAT / "poses.txt").read_text().splitlines()
    lines[2] = lines[2].replace("9.999968e-01", "1.5", 1)
    with pytest.raises(ValueError, match=r"poses\.txt line 3: rotation is not orthonormal"):
        read_poses(write(tmp_path, "poses.txt", "\n".join(lines)))
    with pytest.raises(ValueError, match=r"times\.txt line 3: time 0\.05 does not increase"):
        read_times(write(tmp_path, "times.txt", "0.0\n0.1\n0.05\n"))
    with pytest.raises(ValueError, match=r"times\.txt line 2: not a list of numbers: '0\.1x'"):
        read_times(write(tmp_path, "times.txt", "0.0\n0.1x\n"))
    with pytest.raises(ValueError, match=r"times\.txt line 2: NaN"):
        read_times(write(tmp_path, "times.txt", "0.0\nnan\n"))
    with pytest.raises(ValueError, match=r"calib\.txt line 2: expected 'NAME: numbers'"):
        read_calib(write(tmp_path, "calib.txt", "P0: " + " ".join(["1"] * 12) + "\n1 2 3\n"))
    with pytest.raises(ValueError, match=r"calib\.txt line 1: Tr: expected 12 numbers, got 4"):
        read_calib(write(tmp_path, "calib.txt", "Tr: 1 2 3 4\n"))
    (tmp_path / "bad.label").write_bytes(b"\0" * 6)
    with pytest.raises(ValueError, match=r"bad\.label: 6 bytes"):
        read_labels(tmp_path / "bad.label")


def test_sequence_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no velodyne/\\*.bin"):
        KittiSequence(tmp_path)
    (tmp_path / "velodyne").mkdir()
    (tmp_path / "velodyne" / "000009.bin").symlink_to(SEMKITTI / "velodyne" / "000000.bin")
    (tmp_path / "times.txt").write_text((SEMKITTI / "times.txt").read_text())
    with pytest.raises(ValueError, match=r"times\.txt: 6 lines, but scan 000009\.bin needs line 10"):
        KittiSequence(tmp_path)
    (tmp_path / "times.txt").unlink()
    (tmp_path / "poses.txt").write_text((SEMKITTI / "poses.txt").read_text())
    with pytest.warns(UserWarning, match="assuming 10 Hz"), \
            pytest.raises(ValueError, match="poses need the velodyne->camera matrix Tr"):
        KittiSequence(tmp_path)
