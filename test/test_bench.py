"""`ddpo bench` end to end on a tiny case: pure-PyTorch backend, thin model, real KITTI frame."""
from __future__ import annotations

import json

from conftest import DATA

from ddpo_ros import bench


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
