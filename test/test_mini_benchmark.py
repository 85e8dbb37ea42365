"""tools/mini_benchmark.py's bookkeeping: budgets that extend a stage, the teacher a student came
from, how far a student moved, and the table (the training itself is each stage's own test)."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from safetensors.torch import save_file

from conftest import REPO


@pytest.fixture(scope="module")
def mb():
    spec = importlib.util.spec_from_file_location("mini_benchmark", REPO / "tools" / "mini_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(out, step: int):
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "latest").write_text(f"step_{step:07d}")
    (out / "weights.safetensors").write_bytes(b"")
    (out / "seconds.txt").write_text("100\n")


def test_a_stage_runs_only_to_extend_its_budget(mb, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(mb, "sh", lambda cmd, log: calls.append(cmd))
    fake_run(tmp_path / "teacher", 300)
    mb.stage("teacher", "teacher_mini.yaml", tmp_path / "teacher", 300, tmp_path / "log")
    assert calls == []  # done: skipped
    mb.stage("teacher", "teacher_mini.yaml", tmp_path / "teacher", 1000, tmp_path / "log")
    cmd = list(map(str, calls[0]))
    assert "train.max_steps=1000" in cmd and cmd[-1] == "--resume"  # extended from its last checkpoint
    assert float((tmp_path / "teacher" / "seconds.txt").read_text()) >= 100  # time accumulates
    (tmp_path / "refine").mkdir()  # train.py makes it
    mb.stage("refine", "refine_mini.yaml", tmp_path / "refine", 50, tmp_path / "log")
    assert "--resume" not in list(map(str, calls[1]))  # a fresh stage


def test_a_student_is_tied_to_its_teacher_step(mb, tmp_path):
    mb.check_teacher(tmp_path / "distill", "300+25")
    mb.check_teacher(tmp_path / "distill", "300+25")
    with pytest.raises(SystemExit, match=r"teacher at step 300\+25, but the teacher is now at step 300\+50"):
        mb.check_teacher(tmp_path / "distill", "300+50")


def test_drift_separates_weights_from_batchnorm_statistics(mb, tmp_path):
    teacher = {"teacher.w": torch.full((4,), 2.0), "teacher.bn.running_mean": torch.zeros(3),
               "teacher.bn.num_batches_tracked": torch.tensor(5), "encoder.w": torch.ones(2)}
    student = {"student.w": torch.tensor([2.0, 2.0, 2.0, 2.3]), "student.bn.running_mean": torch.tensor([0., 0., 4.]),
               "student.bn.num_batches_tracked": torch.tensor(9), **teacher}
    save_file(teacher, str(tmp_path / "t.safetensors"))
    save_file(student, str(tmp_path / "s.safetensors"))
    d = mb.drift(tmp_path / "t.safetensors", tmp_path / "s.safetensors")
    assert d["weights"]["l2"] == pytest.approx(0.3) and d["weights"]["relative"] == pytest.approx(0.3 / 4)
    assert d["bn_stats"]["l2"] == pytest.approx(4.0)


def test_markdown_table_has_every_row_and_the_scan_baseline(mb):
    cell = {"cd": {"mean": 0.5}, "jsd_3d": {"mean": 0.2}, "emd": None, "seconds": 9.1, "nfe": 16,
            "scan_cd": {"mean": 0.3}, "scans": 2}
    result = {"date": "2026-11-24", "machine": "cpu (2 cores)", "budget_steps": {"teacher": 1},
              "train_seconds": {"teacher": 120.0}, "rows": [{"model": "LiDiff teacher", "steps": 8,
                                                             "synthetic": cell, "kitti": cell}],
              "student_drift": {"distill": {"weights": {"l2": 1e-4, "relative": 1e-6},
                                            "bn_stats": {"l2": 2.0, "relative": 0.1}}}}
    text = mb.markdown(result)
    assert "| LiDiff teacher | 8 | 16 | 0.500 | 0.200 | - | 9.1 |" in text
    assert "| the scan itself (no completion) | - | 0 | 0.300 |" in text
    assert "| distill | 1.00e-04 | 1.0e-06 | 2.00e+00 | 1.0e-01 |" in text
    assert "'teacher': 2.0" in text  # minutes
