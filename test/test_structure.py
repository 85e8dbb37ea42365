"""The design's rules, checked on the source: the core (ddpo_ros/ minus its two wings) is ROS-free
and file-format-free and imports neither wing; the front ends (ddpo_ros/frontends) and the data
sources (ddpo_ros/datasets) sit on it; one file knows MinkowskiEngine, rclpy stays in the ROS
shell, imports flow training -> ddpo_ros and never back, library code never seeds globally, and
every module stays under 300 lines."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ddpo_ros"
FRONTENDS, DATASETS = PACKAGE / "frontends", PACKAGE / "datasets"
ROS_SHELL = {"node.py", "player.py", "recorder.py"}  # the node, the bag player, the demo recorder
MAX_LINES = 300


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def sources():
    return sorted(PACKAGE.rglob("*.py"))


def test_only_one_file_knows_minkowski_engine():
    users = [p.relative_to(REPO).as_posix() for p in sources() if any(
        n.split(".")[0] == "MinkowskiEngine" for n in imports(p))]
    assert users == ["ddpo_ros/sparse/minkowski.py"]


def relative_imports(path: Path) -> set[str]:
    """`from ..x import y` as "..x" (and "..x.y" for `from .. import y`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = "." * node.level + (node.module or "")
            names |= {base} if node.module else {f"{base}{a.name}" for a in node.names}
    return names


def core_sources():
    return [p for p in sources() if FRONTENDS not in p.parents and DATASETS not in p.parents]


def test_rclpy_only_in_the_ros_shell():
    users = [p for p in sources() if any(n.split(".")[0] == "rclpy" for n in imports(p))]
    assert all(p.parent == FRONTENDS and p.name in ROS_SHELL for p in users), users


def test_core_imports_neither_wing_nor_ros():
    """numpy in, numpy out: the core knows no front end, no data source, no ROS and no bag library."""
    for p in core_sources():
        absolute = imports(p)
        assert not {n for n in absolute if n.split(".")[0] in {"rclpy", "rosbags", "sensor_msgs", "matplotlib"}}, p
        assert not {n for n in absolute if n.startswith(("ddpo_ros.frontends", "ddpo_ros.datasets"))}, p
        wings = {n for n in relative_imports(p) if n.lstrip(".").split(".")[0] in {"frontends", "datasets"}}
        assert not wings, (p, wings)


def test_datasets_sit_on_the_core_only():
    for p in DATASETS.glob("*.py"):
        assert not {n for n in relative_imports(p) if "frontends" in n}, p
        assert not {n for n in imports(p) if n.split(".")[0] in {"rclpy", "ddpo_ros"}}, p


def test_every_module_is_small():
    big = {p.relative_to(REPO).as_posix(): n for p in sources() + sorted((REPO / "training").rglob("*.py"))
           + sorted((REPO / "tools").glob("*.py")) if (n := len(p.read_text().splitlines())) >= MAX_LINES}
    assert not big, f"modules of {MAX_LINES}+ lines: split them: {big}"


def test_library_never_imports_training():
    assert not [p for p in sources() if any(n.split(".")[0] == "training" for n in imports(p))]


def test_models_and_sparse_do_not_import_upwards():
    for sub in ("sparse", "models"):
        for p in (PACKAGE / sub).rglob("*.py"):
            src = p.read_text()
            for upper in ("pipeline", "node", "cli", "checkpoint", "diffusion"):
                assert f"from ..{upper}" not in src and f"ddpo_ros.{upper}" not in src, (p, upper)


def test_one_place_builds_the_noise_schedule():
    users = [p.relative_to(REPO).as_posix() for p in sources() if "cumprod(" in p.read_text()]
    assert users == ["ddpo_ros/diffusion/schedule.py"]


def test_diffusion_knows_no_networks():
    for p in (PACKAGE / "diffusion").rglob("*.py"):
        assert not {n for n in imports(p) if "sparse" in n or "models" in n or n.startswith("torch.nn")}, p
        src = p.read_text()
        assert "from ..models" not in src and "from ..sparse" not in src, p


def test_no_global_seeding_in_library_code():
    for p in sources():
        if p.parent == FRONTENDS and p.name in {"demo.py", "bench.py", "bench_scene.py", "cli.py"}:  # entry points
            continue
        assert "manual_seed(" not in p.read_text().replace("Generator().manual_seed(", ""), p


def test_one_frame_step_and_one_loader():
    """The node and bag completion share frame.complete_message; Completers come from loading.py."""
    for name in ("node.py", "bag_complete.py"):
        src = (FRONTENDS / name).read_text()
        assert "complete_message(" in src, name
        assert "read_pointcloud2" not in src and "make_pointcloud2" not in src and ".complete(" not in src, name
    for p in sources() + sorted((REPO / "training").rglob("*.py")):
        if p.name not in {"loading.py", "pipeline.py"}:
            src = p.read_text()
            assert "from_checkpoint(" not in src, f"{p}: load a Completer with ddpo_ros.loading.load_completer"
