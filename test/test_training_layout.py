"""The layout of training/: each stage is one file that imports shared code, never another stage.

Shared code lives in training/common.py, training/student.py and the loop's own modules (loop,
losses, metrics, validation, checkpoints, config, data); a stage file (teacher, refine, distill,
diffusion_dpo, score_distill) importing another stage file would make that stage two files to read.
Training evaluates through ddpo_ros.loading, not through a front end's argparse helper.
"""
from __future__ import annotations

import ast

import pytest

from conftest import REPO

TRAINING = REPO / "training"
STAGES = ("teacher", "refine", "distill", "diffusion_dpo", "score_distill")


def imported_modules(source: str) -> set[str]:
    """Every module `source` (a file directly in training/) imports, as dotted absolute names:
    `from .distill import x`, `from . import distill` and `import training.distill` all give
    "training.distill"."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1:  # relative to training/
                base = f"training.{base}" if base else "training"
            elif node.level:  # above training/: no stage lives there
                base = "." * node.level + base
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from training import distill`
    return names


def stage_imports(source: str, own: str) -> list[str]:
    """The stage modules other than `own` that `source` imports."""
    mods = imported_modules(source)
    return sorted(s for s in STAGES
                  if s != own and any(m == f"training.{s}" or m.startswith(f"training.{s}.") for m in mods))


def test_every_stage_is_a_file_of_training():
    assert [s for s in STAGES if not (TRAINING / f"{s}.py").is_file()] == []


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_never_imports_another_stage(stage):
    found = stage_imports((TRAINING / f"{stage}.py").read_text(), stage)
    assert found == [], (f"training/{stage}.py imports the stage(s) {found}: move what they share to "
                         "training/common.py (or student.py, losses.py, ...)")


@pytest.mark.parametrize("line, stage", [("from .distill import load_teacher", "distill"),
                                         ("from training.teacher import make_optimizer", "teacher"),
                                         ("import training.distill", "distill"),
                                         ("from . import teacher", "teacher"),
                                         ("from training import score_distill as sd", "score_distill"),
                                         ("import training.refine as r", "refine"),
                                         ("def f():\n    from .diffusion_dpo import build", "diffusion_dpo")])
def test_the_check_sees_every_form_of_import(line, stage):
    own = "teacher" if stage != "teacher" else "distill"
    assert stage_imports(f"import torch\n{line}\n", own) == [stage]
    assert stage_imports(f"import torch\n{line}\n", stage) == []  # a file may name itself


@pytest.mark.parametrize("line", ["from .common import load_teacher", "from .student import pair_samples",
                                  "from training.loop import Run", "from .data.sets import build_sets",
                                  "from ddpo_ros.diffusion import add_local_noise", "import training",
                                  "from .teacher_utils import x"])
def test_the_check_lets_shared_imports_pass(line):
    assert stage_imports(f"{line}\n", own="distill") == []


def test_training_never_borrows_the_offline_front_end():
    users = [p.relative_to(REPO).as_posix() for p in sorted(TRAINING.rglob("*.py"))
             if any(m.startswith("ddpo_ros.frontends.offline") for m in imported_modules(p.read_text()))]
    assert users == []
