"""tools/trajectory_error.py runs a denoiser's own trajectory and scores it at every sampler call."""
from __future__ import annotations

import importlib.util
import json
import math

from conftest import REPO


def test_trajectory_error_table(tiny_weights, tmp_path):
    spec = importlib.util.spec_from_file_location("trajectory_error", REPO / "tools" / "trajectory_error.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "te"
    assert tool.main(["--weights", f"tiny={tiny_weights}", "--scenes", "1", "--steps", "2", "--role", "student",
                      "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())["results"]["tiny"]
    assert sorted(map(int, result["per_t"]), reverse=True) == [999, 500]  # the 2-step sampler's calls
    for row in result["per_t"].values():
        assert all(math.isfinite(v) and v > 0 for v in row.values())
    assert "| tiny | trajectory |" in out.with_suffix(".md").read_text()
