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
    code = ("import sys, ddpo_ros.frontends.cli, ddpo_ros.config; ddpo_ros.frontends.cli.build_parser();"
            "assert 'torch' not in sys.modules, 'torch imported';"
            "import ddpo_ros.models, ddpo_ros.checkpoint, ddpo_ros.sparse;"
            "assert 'rclpy' not in sys.modules and 'MinkowskiEngine' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


COLCON = Path(sys.executable).parent / "colcon"


def install_env(prefix: Path, **extra: str) -> dict:
    """os.environ as `source install/setup.bash` leaves it for the package at `prefix` (a colcon install)."""
    site = sorted(prefix.glob("lib/python3*/site-packages"))
    env = {**os.environ, **extra}
    env["AMENT_PREFIX_PATH"] = os.pathsep.join([str(prefix), *filter(None, [os.environ.get("AMENT_PREFIX_PATH")])])
    env["PYTHONPATH"] = os.pathsep.join([*map(str, site), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(prefix / "bin"), env.get("PATH", "")])
    return env


@pytest.fixture(scope="module")
def ros_install(tmp_path_factory) -> Path:
    """`colcon build` of a copy of the checkout; the install prefix install/ddpo_ros.

    Tests that run something from the install tree (`lib/ddpo_ros/completion_node`, the launch
    file) take this fixture and `install_env(prefix)`.
    """
    if shutil.which("colcon", path=str(COLCON.parent)) is None:
        pytest.skip("colcon not installed (pip install -e .[dev])")
    tmp_path = tmp_path_factory.mktemp("colcon")
    src = tmp_path / "src" / "ddpo_ros"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".venv*", ".git", "build", "install", "log", "*.egg-info", "__pycache__", "fixtures"))
    env = {**os.environ, "COLCON_HOME": str(tmp_path / ".colcon")}
    proc = subprocess.run([str(COLCON), "build", "--base-paths", "src"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return tmp_path / "install" / "ddpo_ros"


def test_colcon_build_makes_a_ros_install_tree(ros_install):
    prefix = ros_install
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "ddpo_ros").exists()
    assert (prefix / "share" / "ddpo_ros" / "package.xml").exists()
    assert (prefix / "share" / "ddpo_ros" / "config" / "model" / "lidiff.yaml").exists()
    assert (prefix / "lib" / "ddpo_ros" / "ddpo").exists()  # where `ros2 run ddpo_ros ddpo` looks
    assert list(prefix.glob("lib/python3*/site-packages/ddpo_ros/sparse/coords.py"))
    # the compiled kernels' source, which sparse/native.py builds on first use
    assert list(prefix.glob("lib/python3*/site-packages/ddpo_ros/sparse/native.cpp"))


def test_install_tree_has_the_launch_file_configs_and_node(ros_install):
    share = ros_install / "share" / "ddpo_ros"
    for name in ("launch/complete.launch.py", "config/node.yaml", "config/ddpo.rviz"):
        assert (share / name).read_bytes() == (REPO / name).read_bytes(), name
    node = ros_install / "lib" / "ddpo_ros" / "completion_node"  # where launch_ros and `ros2 run` look
    assert node.is_file() and os.access(node, os.X_OK)
    assert "'console_scripts', 'completion_node'" in node.read_text()


def test_ament_index_finds_the_install_tree(ros_install, tmp_path):
    pytest.importorskip("ament_index_python")
    code = ("from importlib.metadata import distribution;"
            "from ament_index_python.packages import get_package_share_directory as share;"
            "import ddpo_ros; from ddpo_ros.resources import share_dir, config_path;"
            "print(share('ddpo_ros')); print(share_dir()); print(config_path('node.yaml')); print(ddpo_ros.__file__);"
            "print(*(e.value for e in distribution('ddpo_ros').entry_points if e.name == 'completion_node'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=install_env(ros_install),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    share = ros_install / "share" / "ddpo_ros"
    lines = out.stdout.split()
    assert lines[:3] == [str(share), str(share), str(share / "config" / "node.yaml")]
    assert Path(lines[3]).is_relative_to(ros_install)  # the installed package, not the checkout
    assert lines[4] == "ddpo_ros.frontends.node:main"


def test_node_runs_from_the_install_tree_with_its_params_file(ros_install, tmp_path, tiny_weights, monkeypatch):
    """What a vehicle runs: lib/ddpo_ros/completion_node with share/ddpo_ros/config/node.yaml; it publishes."""
    pytest.importorskip("rclpy")
    from sensor_msgs.msg import PointCloud2, PointField
    from std_msgs.msg import Header

    from conftest import kitti_scan
    from ddpo_ros.clouds import make_pointcloud2
    from ddpo_ros.frontends.dds import LOOPBACK_KEYS, loopback_env
    from ddpo_ros.frontends.recorder import Recorder, stop_node

    dds = loopback_env(tmp_path)
    for key in LOOPBACK_KEYS:
        monkeypatch.setenv(key, dds[key])
    env = install_env(ros_install, **{k: dds[k] for k in LOOPBACK_KEYS})
    share = ros_install / "share" / "ddpo_ros"
    log = open(tmp_path / "node.log", "w")
    node = subprocess.Popen(
        [str(ros_install / "lib" / "ddpo_ros" / "completion_node"), "--ros-args", "-r", "__ns:=/car1",
         "--params-file", str(share / "config" / "node.yaml"), "-p", f"weights:={tiny_weights}",
         "-p", "device:=cpu", "-p", "diagnostics.period:=0.2", "-r", "~/input/points:=/points_raw"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    rec = Recorder(namespace="/car1", input_topic="/points_raw")
    try:
        assert rec.wait(lambda: rec.status.get("ready") == "yes", 120), (tmp_path / "node.log").read_text()
        pub = rec.node.create_publisher(PointCloud2, "/points_raw", 10)
        msg = make_pointcloud2(kitti_scan(0), Header(frame_id="velodyne"), PointCloud2, PointField)
        msg.header.stamp.sec = 42
        assert rec.wait(lambda: pub.get_subscription_count() > 1, 30)  # the node and the recorder

        def stream():  # a sensor streams: best-effort input (node.yaml's default) may lose a 2 MB sample
            pub.publish(msg)
            return bool(rec.outputs)
        assert rec.wait(stream, 60, poll=0.3), (tmp_path / "node.log").read_text()
    finally:
        code = stop_node(node)
        rec.close()
    assert rec.outputs[0][0] == 42 * 10**9 and rec.outputs[0][3] == "velodyne"
    assert code == 0
    assert "site-packages/ddpo_ros" not in (tmp_path / "node.log").read_text()  # no traceback
