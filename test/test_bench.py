"""`ddpo bench` and `ddpo bench-scene` end to end on tiny cases: thin models, real KITTI frame."""
from __future__ import annotations

import json

import torch

from conftest import DATA

from ddpo_ros.frontends import bench


def test_bench_tiny_torch_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DDPO_DATA", str(DATA))
    out = tmp_path / "results.json"
    rc = bench.main(["--out", str(out), "--points", "2000", "--repeats", "1", "--width", "0.125"])
    assert rc == 0

    doc = json.loads(out.read_text())
    assert {"cpu", "cores", "torch", "threads", "date", "device"} <= doc["machine"].keys()
    assert doc["machine"]["threads"] == 2 and doc["machine"]["minkowski_engine"] is None
    cases = [(r["op"], r["n_points"], r["sigma"]) for r in doc["results"]]
    assert cases == [("conv", 2000, 0.45), ("conv+map", 2000, 0.45), ("denoiser", 2000, 0.45),
                     ("conv", 2000, 0.05), ("denoiser", 2000, 0.05), ("denoiser", 2000, 0.9852)]
    for r in doc["results"]:
        assert "error" not in r, r
        assert r["backend"] == "torch" and r["threads"] == 2 and r["width"] == 0.125
        assert len(r["times_s"]) == 1 and all(t > 0 for t in r["times_s"])
        assert r["min_s"] > 0 and r["median_s"] >= r["min_s"]
        assert 0 < r["n_voxels"] <= 2000 and r["peak_mem_bytes"] >= 0
    assert doc["results"][0]["t"] == 249  # sigma 0.45 is t ~ 250 of LiDiff's linear schedule
    # The noisier mid-step cloud occupies more voxels than the late-step one.
    assert doc["results"][0]["n_voxels"] > doc["results"][3]["n_voxels"]

    table = out.with_suffix(".md").read_text()
    assert "| conv | 2,000 | 0.45 (249) |" in table
    assert table in capsys.readouterr().out


def test_failing_worker_is_an_error_entry(tmp_path):
    spec = {"op": "conv", "n_points": 2000, "sigma": 0.45, "backend": "minkowski", "device": "cpu",
            "width": 0.125, "threads": 2, "repeats": 1, "frame": "x"}
    r = bench._spawn(str(tmp_path / "no-python"), spec)
    assert r["backend"] == "minkowski" and "error" in r


def test_bench_scene_tiny(tmp_path, monkeypatch, capsys):
    """Whole scenes: the steps sweep, each shortcut off, the straightforward path, point scaling."""
    from ddpo_ros.frontends import bench_scene
    monkeypatch.setenv("DDPO_DATA", str(DATA))
    out = tmp_path / "scene.json"
    rc = bench_scene.main(["--out", str(out), "--scales", "mini,paper", "--points", "3000", "--mini-points",
                           "2000", "--steps", "1,2", "--scaling", "2000,3000", "--width", "0.125",
                           "--repeats", "2"])
    assert rc == 0
    doc = json.loads(out.read_text())
    rs = doc["results"]
    assert all("error" not in r for r in rs), rs
    cases = [(r["scale"], r["n_points"], r["precision"], r["case"], r["steps"]) for r in rs]
    assert cases[:5] == [("mini", 2000, "fp32", "steps", 1), ("mini", 2000, "fp32", "steps", 2),
                         ("mini", 2000, "bf16", "steps", 1), ("mini", 2000, "bf16", "steps", 2),
                         ("mini", 2000, "fp32", "straightforward", 2)]
    assert ("paper", 3000, "fp32", "no grouped_mlps", 2) in cases
    assert ("paper", 3000, "fp32", "no fold_batchnorm", 2) in cases
    assert ("paper", 2000, "fp32", "scaling", 8) in cases and ("paper", 2000, "bf16", "scaling", 8) in cases
    assert [r["retain"] for r in rs if r["case"] == "glibc default"] == [False]
    assert all(r["retain"] for r in rs if r["case"] != "glibc default")
    off = [(r["precision"], r["steps"], r["kernels"]) for r in rs if not r["native"]]
    assert off == [("fp32", 2, "disabled (DDPO_NATIVE=0)"), ("bf16", 2, "disabled (DDPO_NATIVE=0)")]
    assert all(r["kernels"] != "disabled (DDPO_NATIVE=0)" for r in rs if r["native"])
    # The headline scene (8 steps, here the last of 1,2) of the steps table runs --repeats times.
    repeated = [(r["scale"], r["precision"], r["steps"]) for r in rs if len(r["seconds_runs"]) == 2]
    assert repeated == [("mini", "fp32", 2), ("mini", "bf16", 2), ("paper", "fp32", 2), ("paper", "bf16", 2)]
    for r in rs:
        assert r["seconds"] in r["seconds_runs"] and len(r["seconds_runs"]) in (1, 2)
        assert len(r["step_s"]) == r["steps"] and r["denoiser_calls"] == 2 * r["steps"]
        assert r["trajectory"] == "oracle-steered" and r["peak_mem_bytes"] > 0
        assert r["counts"]["diffused"] == r["n_points"] and r["seconds"] >= r["stages"]["total"]
        # Oracle steering keeps the points on the scan: the crop keeps nearly all of them.
        assert r["counts"]["coarse"] > 0.9 * r["n_points"]
    table = out.with_suffix(".md").read_text()
    assert "| mini | 0.125 | 2,000 | fp32 |" in table and "| mini | 0.125 | 2,000 | bf16 |" in table
    assert "2 repeats: median (min-max)" in table
    fp32_mini = next(line for line in table.splitlines() if line.startswith("| mini | 0.125 | 2,000 | fp32 |"))
    lo, hi = sorted(next(r for r in rs if r["scale"] == "mini" and r["precision"] == "fp32"
                         and r["case"] == "steps" and r["steps"] == 2)["seconds_runs"])
    assert f"({lo:.1f}-{hi:.1f})" in fp32_mini
    assert "all off (LiDiff's way)" in table and "| 3,000 | bf16 |" in table and "glibc frees memory" in table
    assert "| paper | 2 | off: native kernels |" in table and "| paper | 2 | bf16, off: native kernels |" in table
    assert table in capsys.readouterr().out


def test_oracle_steering_returns_the_noise_back_to_x_init():
    from ddpo_ros.frontends.bench_scene import OracleSteered
    from ddpo_ros.diffusion import make_schedule

    calls = []

    class Net(torch.nn.Module):
        per_voxel_mlps = brute_force_match = False

        def forward(self, x_t, cond, t):
            calls.append(t)
            return torch.zeros_like(x_t)

        def forward_branches(self, x_t, conds, t):
            return [self(x_t, c, t) for c in conds]

    sched = make_schedule()
    x_init = torch.randn(1, 50, 3)
    noise = torch.randn(1, 50, 3)
    wrapped = OracleSteered(Net(), sched, x_init)
    x_t = x_init + sched.sigma(600).item() * noise
    eps = wrapped.forward_branches(x_t, ["c", "u"], torch.tensor([600]))
    torch.testing.assert_close(eps[0], noise)
    torch.testing.assert_close(eps[1], noise)
    assert len(calls) == 2  # the real network still ran for both branches
    wrapped.per_voxel_mlps = True
    assert wrapped.net.per_voxel_mlps is True
