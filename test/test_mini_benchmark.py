"""tools/mini_benchmark.py's bookkeeping: budgets that extend a stage, the teacher a student came
from, how far a student moved, and the table (the training itself is each stage's own test)."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
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


def test_a_student_folder_is_tied_to_its_teacher_config_and_settings(mb, tmp_path):
    key = {"teacher_sha256": "abc", "config_sha256": "c1", "settings": ["train.seed=0"]}
    mb.check_run(tmp_path / "distill", key)
    mb.check_run(tmp_path / "distill", key)
    with pytest.raises(SystemExit, match=r"other settings \(teacher_sha256 abc -> def\): delete it"):
        mb.check_run(tmp_path / "distill", {**key, "teacher_sha256": "def"})
    with pytest.raises(SystemExit, match="config_sha256 c1 -> c2"):
        mb.check_run(tmp_path / "distill", {**key, "config_sha256": "c2"})


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


def test_bootstrap_interval_of_paired_differences(mb):
    assert mb.bootstrap_interval([-0.1] * 6) == pytest.approx((-0.1, -0.1))
    rng = np.random.default_rng(1)
    low, high = mb.bootstrap_interval(rng.normal(0.0, 1.0, 200))
    assert low < 0 < high and high - low == pytest.approx(2 * 1.96 / np.sqrt(200), rel=0.25)
    shifted = mb.bootstrap_interval(rng.normal(-1.0, 1.0, 200))
    assert shifted[1] < 0  # a clear improvement excludes zero


def test_paired_differences_average_seeds_per_scene(mb):
    a = [{"s1": {"cd": 0.1}, "s2": {"cd": 0.3}}, {"s1": {"cd": 0.3}, "s2": {"cd": 0.5}}]  # seed means 0.2, 0.4
    b = [{"s1": {"cd": 0.5}, "s2": {"cd": 0.5}, "s3": {"cd": 9.0}}]  # s3 is not shared: left out
    c = mb.paired(a, b, 1000)
    assert c["scenes"] == 2 and c["mean"] == pytest.approx(-0.2)
    assert c["ci95"][0] == pytest.approx(-0.3) and c["ci95"][1] == pytest.approx(-0.1)


def fake_training(mb, tmp_path, monkeypatch) -> tuple[list, object]:
    """Stand-ins for training and evaluation (each stage has its own test); returns the list of
    trained runs and the teacher file."""
    teacher = tmp_path / "teacher.safetensors"
    save_file({"teacher.w": torch.ones(4), "encoder.w": torch.ones(2)}, str(teacher))
    trained = []

    def fake_stage(name, config, out, steps, log, *extra):
        trained.append((name, config, out.name, extra, steps))
        (out / "checkpoints" / "step_0000002").mkdir(parents=True, exist_ok=True)
        (out / "checkpoints" / "latest").write_text("step_0000002")
        (out / "seconds.txt").write_text("60\n")
        save_file({"student.w": torch.full((4,), 1.5), "teacher.w": torch.ones(4)}, str(out / "weights.safetensors"))
        if out.name == "distill_s0":  # real TensorBoard logs, with a resume that logs step 12 again
            from torch.utils.tensorboard import SummaryWriter
            for first, last in ((1, 13), (12, 21)):  # the first run's step 12 is lost with its checkpoint
                with SummaryWriter(out / "tensorboard") as writer:
                    for step in range(first, last):
                        lost = 0.5 if (step, last) == (12, 13) else 0.0
                        writer.add_scalar("preference/winner", 0.2 + 0.01 * step + lost, step)
                        writer.add_scalar("preference/lam_sample_won", 0.0, step)
                        writer.add_scalar("loss/ta", 1.0, step)
        return out / "weights.safetensors"

    def fake_evaluate(weights, split, out, steps, args, log):
        cd = 0.3 if weights == teacher else 0.3 - 0.01 * steps / 8  # students a little better at 8 steps
        return {f"{split}:{i}": {"cd": cd + 0.001 * i, "accuracy": cd, "coverage": cd, "jsd_3d": 0.1, "seconds": 1.0,
                                 "scan_cd": 0.25} for i in range(4)}
    monkeypatch.setattr(mb, "stage", fake_stage)
    monkeypatch.setattr(mb, "evaluate", fake_evaluate)
    monkeypatch.setattr(mb, "REPO", tmp_path)
    (tmp_path / "config" / "train").mkdir(parents=True)
    for config in ("distill_mini.yaml", "score_distill_mini.yaml"):
        (tmp_path / "config" / "train" / config).write_text((REPO / "config" / "train" / config).read_text())
    return trained, teacher


def test_main_trains_every_student_and_scores_every_row(mb, tmp_path, monkeypatch):
    """Seeds and ablations trained from the teacher, each row scored on both splits, paired
    comparisons, drift."""
    trained, teacher = fake_training(mb, tmp_path, monkeypatch)
    assert mb.main(["--teacher", str(teacher), "--out", str(tmp_path / "runs"), "--seeds", "2", "--lams", "1.2",
                    "--loser-weights", "0.5", "--gt-weights", "0.1", "--resamples", "200"]) == 0
    runs = sorted(r[2] for r in trained)
    assert runs == ["distill_base_40", "distill_gt0.1_40", "distill_indep_40", "distill_jsd_40", "distill_lam1.2_40",
                    "distill_lw0.5_40", "distill_oracle_40", "distill_oracle_lw0_40", "distill_realta_40",
                    "distill_s0", "distill_s1", "score_s0", "score_s1"]
    assert {r[2]: r[4] for r in trained}["distill_s1"] == 100 and {r[2]: r[4] for r in trained}["distill_jsd_40"] == 40
    indep = next(r[3] for r in trained if r[2] == "distill_indep_40")
    assert "distill.pair_noise=independent" in indep and "distill.lam=1.0" in indep
    assert any("distill.loser_weight=0.5" in r[3] for r in trained if r[2] == "distill_lw0.5_40")
    oracle_lw0 = next(r[3] for r in trained if r[2] == "distill_oracle_lw0_40")
    assert "distill.oracle_real=true" in oracle_lw0 and "distill.loser_weight=0" in oracle_lw0
    assert all(f"distill.teacher={teacher.resolve()}" in r[3] for r in trained)
    result = json.loads((tmp_path / "bench" / "mini_benchmark.json").read_text())
    labels = [(r["model"], r["steps"], r["seeds"]) for r in result["rows"]]
    assert labels[:6] == [("LiDiff teacher", s, 1) for s in (50, 8, 4, 2, 1)] + [("score distillation", 8, 2)]
    assert ("Distillation-DPO", 1, 2) in labels and ("Distillation-DPO, JSD preference", 8, 1) in labels
    assert ("Distillation-DPO, as the main run (lambda 1.1)", 8, 1) in labels
    vs_teacher = result["comparisons"]["DDPO-8 minus teacher-8"]
    assert vs_teacher["all"]["scenes"] == 8 and vs_teacher["all"]["mean"] == pytest.approx(-0.01)
    assert result["comparisons"]["DDPO-8 minus score-8"]["kitti"]["mean"] == pytest.approx(0.0)
    assert result["comparisons"]["DDPO-1 minus teacher-1"]["all"]["mean"] == pytest.approx(-0.01 / 8)
    jsd = result["comparisons"]["JSD preference (ablation) minus teacher-8"]["all"]
    assert jsd["scenes"] == 8 and jsd["mean"] == pytest.approx(-0.01)
    assert result["drift"]["ddpo_s0"]["weights"]["l2"] == pytest.approx(1.0)
    assert result["training_minutes"] == pytest.approx(13.0)  # 13 students of 60 s
    text = (tmp_path / "bench" / "mini_benchmark.md").read_text()
    assert "| Distillation-DPO | 8 | 2 |" in text and "ablations seed 0, 40 steps" in text
    record = json.loads((tmp_path / "bench" / "mini_benchmark_runs" / "distill_s0.json").read_text())
    winner = record["curves"]["preference/winner"]
    assert [s for s, _ in winner] == list(range(1, 21)) and winner[11][1] == pytest.approx(0.32)  # resumed value
    assert "loss/ta" not in record["curves"]
    assert result["training"]["ddpo_s0"]["preference/winner"] == pytest.approx([0.23, 0.38])  # steps 1-5, 16-20
    assert "ddpo_s1" not in result["training"]  # no logs
    assert "| ddpo_s0 | 0.230 -> 0.380 |  | 0.000 -> 0.000 |" in text


def test_records_let_a_later_session_finish_the_benchmark(mb, tmp_path, monkeypatch):
    """A finished run's record replaces its training and scoring, even with the run folder gone; a
    record made under other settings does not; --ignore-records ignores them all."""
    trained, teacher = fake_training(mb, tmp_path, monkeypatch)
    args = ["--teacher", str(teacher), "--seeds", "2", "--no-ablations", "--resamples", "100"]
    mb.main([*args, "--out", str(tmp_path / "runs1")])
    records = sorted(p.name for p in (tmp_path / "bench" / "mini_benchmark_runs").iterdir())
    assert records == ["distill_s0.json", "distill_s1.json", "score_s0.json", "score_s1.json",
                       f"teacher_{mb.teacher_hash_of(teacher)}.json"]
    first = (tmp_path / "bench" / "mini_benchmark.json").read_text()
    trained.clear()
    mb.main([*args, "--out", str(tmp_path / "runs2")])  # a new session: no run folders
    assert trained == []
    second = json.loads((tmp_path / "bench" / "mini_benchmark.json").read_text())
    assert second["rows"] == json.loads(first)["rows"]
    mb.main([*args, "--out", str(tmp_path / "runs2"), "--seeds", "3"])  # one more seed: only it trains
    assert [r[2] for r in trained] == ["distill_s2", "score_s2"]
    trained.clear()
    mb.main([*args, "--out", str(tmp_path / "runs3"), "--student-steps", "50"])  # another budget: all again
    assert sorted(r[2] for r in trained) == ["distill_s0", "distill_s1", "score_s0", "score_s1"]
    trained.clear()
    score_yaml = tmp_path / "config" / "train" / "score_distill_mini.yaml"
    score_yaml.write_text(score_yaml.read_text() + "# a comment changes no result\n")
    mb.main([*args, "--out", str(tmp_path / "runs4"), "--student-steps", "50"])
    assert trained == []
    score_yaml.write_text(score_yaml.read_text().replace("lr: 1.0e-5", "lr: 2.0e-5", 1))
    with pytest.raises(SystemExit, match="score_s0 was trained under other settings"):  # not re-recorded as new
        mb.main([*args, "--out", str(tmp_path / "runs3"), "--student-steps", "50"])
    mb.main([*args, "--out", str(tmp_path / "runs4"), "--student-steps", "50"])  # a changed config: its stage again
    assert sorted(r[2] for r in trained) == ["score_s0", "score_s1"]
    trained.clear()
    mb.main([*args, "--out", str(tmp_path / "runs5"), "--student-steps", "50", "--ignore-records"])
    assert len(trained) == 4


def test_markdown_table_has_every_row_and_the_scan_baseline(mb):
    m = {k: {"mean": 0.5, "std": 0.01, "runs": 3} for k in ("cd", "accuracy", "coverage", "jsd_3d", "seconds")}
    c = {k: {"mean": -0.02, "ci95": [-0.03, -0.01], "scenes": 11} for k in ("synthetic", "kitti", "all")}
    result = {"date": "2026-12-05", "machine": "cpu (2 cores)",
              "teacher": {"path": "/x/mini.safetensors", "sha256": "abc"},
              "student_steps": 100, "scan_cd": {"synthetic": 0.131, "kitti": 0.301},
              "rows": [{"model": "Distillation-DPO", "steps": 8, "seeds": 3, "synthetic": m, "kitti": m}],
              "comparisons": {"DDPO-8 minus teacher-8": c},
              "drift": {"ddpo_s0": {"weights": {"l2": 1e-4, "relative": 1e-6},
                                    "bn_stats": {"l2": 2.0, "relative": 0.1}}}}
    text = mb.markdown(result)
    assert "| Distillation-DPO | 8 | 3 | 0.500 ± 0.010 | 0.500 | 0.500 | 0.500 ± 0.010 |" in text
    assert "| the scan itself | - | - | 0.131 | | | 0.301 |" in text
    assert "| DDPO-8 minus teacher-8 | -0.0200 [-0.0300, -0.0100] (n=11) |" in text
    assert "| ddpo_s0 | 1.00e-04 | 1.0e-06 | 2.00e+00 | 1.0e-01 |" in text


def test_report_only_writes_the_table_from_the_records_there_are(mb, tmp_path, monkeypatch):
    """Half-way through (here: seed 1 and the ablations not trained yet), --report-only trains
    nothing and writes the table of what is recorded, naming what is missing."""
    trained, teacher = fake_training(mb, tmp_path, monkeypatch)
    args = ["--teacher", str(teacher), "--resamples", "100", "--lams", "1.2", "--loser-weights", "", "--gt-weights", ""]
    with pytest.raises(SystemExit, match="no record of the teacher"):
        mb.main([*args, "--out", str(tmp_path / "r0"), "--report-only"])
    mb.main([*args, "--out", str(tmp_path / "r1"), "--seeds", "1", "--no-ablations"])
    trained.clear()
    mb.main([*args, "--out", str(tmp_path / "r2"), "--seeds", "2", "--report-only"])
    assert trained == []
    result = json.loads((tmp_path / "bench" / "mini_benchmark.json").read_text())
    assert result["missing"] == ["distill_s1", "score_s1", "distill_base_40", "distill_lam1.2_40", "distill_jsd_40",
                                 "distill_indep_40", "distill_realta_40", "distill_oracle_40", "distill_oracle_lw0_40"]
    assert ("Distillation-DPO", 8, 1) in [(r["model"], r["steps"], r["seeds"]) for r in result["rows"]]
    assert result["comparisons"]["DDPO-8 minus teacher-8"]["all"]["scenes"] == 8
    text = (tmp_path / "bench" / "mini_benchmark.md").read_text()
    assert "**Incomplete**: no record yet of distill_s1, score_s1," in text


def test_curves_keep_the_resumed_value_whatever_the_event_files_names(mb, tmp_path):
    """Event files written in one second sort by a per-process counter as text (".10" before ".9"): the
    value a resume logged again must win by wall time, not by file name."""
    from torch.utils.tensorboard import SummaryWriter
    logs = tmp_path / "run" / "tensorboard"
    for first, last in ((1, 13), (12, 21)):
        with SummaryWriter(logs) as writer:
            for step in range(first, last):
                writer.add_scalar("preference/winner", 0.2 + 0.01 * step + (0.5 if last == 13 else 0.0), step)
    older, newer = sorted(logs.iterdir(), key=lambda p: p.stat().st_mtime)
    older.rename(logs / "events.out.tfevents.1.host.1.9")  # the first run's file now sorts last
    newer.rename(logs / "events.out.tfevents.1.host.1.10")
    winner = mb.curves(tmp_path / "run")["preference/winner"]
    assert [s for s, _ in winner] == list(range(1, 21))
    assert winner[11][1] == pytest.approx(0.32) and winner[0][1] == pytest.approx(0.71)


def test_the_teacher_key_is_its_networks_not_the_file(mb, tmp_path):
    """Records stay valid when the teacher file's completion settings or refiner change (rows are scored
    at the reference's start), not when a network tensor changes."""
    a, b, c = (tmp_path / f"{n}.safetensors" for n in "abc")
    save_file({"teacher.w": torch.ones(4), "encoder.w": torch.ones(2)}, str(a), metadata={"config": "start_t: null"})
    save_file({"teacher.w": torch.ones(4), "encoder.w": torch.ones(2), "refiner.w": torch.zeros(3)}, str(b),
              metadata={"config": "start_t: 125"})
    save_file({"teacher.w": torch.ones(4), "encoder.w": torch.full((2,), 1.0 + 1e-6)}, str(c))
    assert mb.teacher_hash_of(a) == mb.teacher_hash_of(b) != mb.teacher_hash_of(c)
