"""The package installs both ways: pip (console script) and colcon (a real ROS install tree)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_package_xml_is_ament_python_format_3():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "ddpo_ros"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs"} <= deps
    assert (REPO / "resource" / "ddpo_ros").exists()


def test_console_script_is_installed():
    ddpo = Path(sys.executable).parent / "ddpo"
    out = subprocess.run([str(ddpo), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "convert" in out.stdout and "bench" in out.stdout


def test_core_imports_without_heavy_optional_modules():
    """`ddpo --help` and the config never import torch; the core never imports rclpy."""
    code = ("import sys, ddpo_ros.cli, ddpo_ros.config; ddpo_ros.cli.build_parser();"
            "assert 'torch' not in sys.modules, 'torch imported';"
            "import ddpo_ros.models, ddpo_ros.checkpoint, ddpo_ros.sparse;"
            "assert 'rclpy' not in sys.modules and 'MinkowskiEngine' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.skipif(shutil.which("colcon", path=str(Path(sys.executable).parent)) is None,
                    reason="colcon not installed (pip install -e .[dev])")
def test_colcon_build_makes_a_ros_install_tree(tmp_path):
    src = tmp_path / "src" / "ddpo_ros"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv*", ".git", "build", "install", "log",
                                                              "*.egg-info", "__pycache__", "fixtures"))
    colcon = Path(sys.executable).parent / "colcon"
    env = {**os.environ, "COLCON_HOME": str(tmp_path / ".colcon")}
    proc = subprocess.run([str(colcon), "build", "--base-paths", "src"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    prefix = tmp_path / "install" / "ddpo_ros"
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "ddpo_ros").exists()
    assert (prefix / "share" / "ddpo_ros" / "package.xml").exists()
    assert (prefix / "share" / "ddpo_ros" / "config" / "model" / "lidiff.yaml").exists()
    assert (prefix / "lib" / "ddpo_ros" / "ddpo").exists()  # where `ros2 run ddpo_ros ddpo` looks
    assert list(prefix.glob("lib/python3*/site-packages/ddpo_ros/sparse/coords.py"))
