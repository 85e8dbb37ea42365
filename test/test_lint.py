"""ament_flake8 and ament_pep257 over the package, as the ROS package template runs them (`colcon test`).

flake8's settings are setup.cfg's [flake8] section (line length 120, double quotes, the code base's
docstring and import conventions); pep257 runs ament's convention plus the same docstring exceptions.
Both skip where the linters are not installed (`pip install -e .[dev]` installs them).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATHS = [str(REPO / p) for p in ("ddpo_ros", "launch", "training", "test", "tools", "setup.py") if (REPO / p).exists()]
# The code base's docstring conventions where they differ from ament's (see setup.cfg [flake8]), and D213:
# ament's convention ignores D212, so it wants summaries on the second line; ours are on the first.
PEP257_IGNORE = ["D205", "D209", "D213", "D400", "D401", "D403", "D415"]


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    pytest.importorskip("ament_flake8.main")
    # In a fresh process: flake8 forks a worker pool, and forking this one (rclpy, tensorboard and
    # torch threads from earlier tests) can deadlock the workers on a lock a thread held.
    # The working directory is REPO: ament_flake8 honours AMENT_IGNORE files below it.
    code = "import sys; from ament_flake8.main import main; sys.exit(main(argv=sys.argv[1:]))"
    run = subprocess.run([sys.executable, "-c", code, "--config", str(REPO / "setup.cfg"), *PATHS],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, "code style errors:\n" + run.stdout[-20000:] + run.stderr[-2000:]


@pytest.mark.pep257
@pytest.mark.linter
def test_pep257(capsys):
    main = pytest.importorskip("ament_pep257.main").main
    rc = main(argv=[*PATHS, "--add-ignore", *PEP257_IGNORE])
    out = capsys.readouterr().out
    assert rc == 0, "docstring style errors:\n" + "\n".join(line for line in out.splitlines() if ": D" in line)
