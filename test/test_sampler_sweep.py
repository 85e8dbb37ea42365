"""tools/sampler_sweep.py scores a model's completions per sampler variant, refined or not."""
from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO


def load_tool():
    spec = importlib.util.spec_from_file_location("sampler_sweep", REPO / "tools" / "sampler_sweep.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_variants_parse_with_steps_and_refine():
    tool = load_tool()
    assert tool.parse_variant("ve-sde-dpmsolver++:1", 8) == ("ve-sde-dpmsolver++", 1.0, 8, False)
    assert tool.parse_variant("dpmsolver++:2.5:4", 8) == ("dpmsolver++", 2.5, 4, False)
    assert tool.parse_variant("ve-sde-dpmsolver++:1:2:refine", 8) == ("ve-sde-dpmsolver++", 1.0, 2, True)
    for bad in ("ve-sde-dpmsolver++", "a:b", "a:1:x", "a:1:2:3:refine"):
        with pytest.raises(SystemExit, match="--variants"):
            tool.parse_variant(bad, 8)


def test_sweep_refines_only_the_refine_variant(tiny_weights, tmp_path):
    tool = load_tool()
    out = tmp_path / "sweep"
    assert tool.main(["--weights", str(tiny_weights), "--refiner", str(tiny_weights), "--out", str(out),
                      "--synthetic", "1", "--kitti-frames", "", "--cache-dir", str(tmp_path / "maps"),
                      "--variants", "ve-sde-dpmsolver++:1:2,ve-sde-dpmsolver++:1:2:refine"]) == 0
    rows = {r["method"]: r for r in map(json.loads, out.with_suffix(".jsonl").read_text().splitlines())}
    assert set(rows) == {"scan", "ve-sde-dpmsolver++, w 1, 2 steps", "ve-sde-dpmsolver++, w 1, 2 steps, refined"}
    plain, refined = rows["ve-sde-dpmsolver++, w 1, 2 steps"], rows["ve-sde-dpmsolver++, w 1, 2 steps, refined"]
    assert plain["points"] <= 600 < refined["points"] <= 600 * 6  # 300 x 2 diffused, x 6 refined (r/z crop)
    assert refined["refiner"] == str(tiny_weights)
    summary = json.loads(out.with_suffix(".json").read_text())["summary"]
    assert summary["synthetic|ve-sde-dpmsolver++, w 1, 2 steps, refined"]["scenes"] == 1
    assert "refined" in out.with_suffix(".md").read_text()


def test_start_t_runs_every_variant_from_that_start_on_the_scenes_asked(tiny_weights, tmp_path, monkeypatch):
    """--start-t sets completion.start_t for every variant and names the rows; --synthetic-start picks
    the held-out scenes (the bundled start was tuned on scenes 100.. that no table scores)."""
    tool = load_tool()
    starts = []
    real = tool.load_completer

    def spy(*a, **k):
        completer = real(*a, **k)
        complete = completer.complete

        def record(*args, **kwargs):
            starts.append(completer.config.completion.start_t)
            return complete(*args, **kwargs)
        completer.complete = record
        return completer
    monkeypatch.setattr(tool, "load_completer", spy)
    out = tmp_path / "sweep"
    for start in ("1", "ref"):
        assert tool.main(["--weights", str(tiny_weights), "--out", str(out), "--synthetic", "1",
                          "--synthetic-start", "100", "--kitti-frames", "", "--start-t", start,
                          "--variants", "ve-sde-dpmsolver++:1:2"]) == 0
    assert starts == [1, None]
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert {r["key"] for r in rows} == {"synthetic:1000100"}
    assert [r["method"] for r in rows] == ["scan", "ve-sde-dpmsolver++, w 1, 2 steps, from t=1",
                                           "ve-sde-dpmsolver++, w 1, 2 steps, from t=ref"]
