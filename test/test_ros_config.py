"""config/node.yaml, config/ddpo.rviz and docs/ros.md agree with the node's parameter table."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ddpo_ros.frontends import node_params

REPO = Path(__file__).resolve().parents[1]
NODE_YAML = REPO / "config" / "node.yaml"
RVIZ = REPO / "config" / "ddpo.rviz"
NODE_KEY = "/**/ddpo_completion"


def load_tool():
    spec = importlib.util.spec_from_file_location("param_table", REPO / "tools" / "param_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(flatten(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return out


@pytest.fixture(scope="module")
def yaml_parameters() -> dict:
    data = yaml.safe_load(NODE_YAML.read_text())
    assert list(data) == [NODE_KEY] and list(data[NODE_KEY]) == ["ros__parameters"]
    return flatten(data[NODE_KEY]["ros__parameters"])


# --- config/node.yaml -----------------------------------------------------------------------------------------------
def test_node_yaml_sets_exactly_the_declared_parameters(yaml_parameters):
    assert list(yaml_parameters) == [p.name for p in node_params.PARAMETERS]


def test_node_yaml_values_are_valid_and_the_defaults(yaml_parameters):
    for name, value in yaml_parameters.items():
        default = node_params.BY_NAME[name].default
        assert node_params.check_value(name, value) == default, name
        # ROS does not convert: an integer in the YAML for a double parameter fails at declare time
        assert type(value) is type(default), f"{name}: {value!r} is not a {type(default).__name__}"
    node_params.validate(yaml_parameters)


def test_node_yaml_is_what_the_tool_writes():
    assert NODE_YAML.read_text() == load_tool().node_yaml(), "run: python tools/param_table.py --write"


def test_the_tool_nests_sections_and_refuses_a_split_one(monkeypatch):
    tool, param = load_tool(), node_params.Param
    monkeypatch.setattr(tool, "PARAMETERS", (param("a.b.c", 1, "x"), param("a.b.d", 1e-5, "y"), param("a.e", "s", "z"),
                                             param("f", False, "w")))
    assert yaml.safe_load(tool.node_yaml())[NODE_KEY]["ros__parameters"] == {
        "a": {"b": {"c": 1, "d": 1e-5}, "e": "s"}, "f": False}
    monkeypatch.setattr(tool, "PARAMETERS", (param("a.x", 1, "x"), param("b", 2, "y"), param("a.y", 3, "z")))
    with pytest.raises(ValueError, match="a.y: keep each section's parameters together"):
        tool.node_yaml()


def test_node_yaml_through_rcl_in_a_namespace(tmp_path):
    """The real rcl parser reads the file for a namespaced node, with each parameter's ROS type."""
    pytest.importorskip("rclpy")
    from ros_env import loopback_env

    code = f"""
import json, rclpy
from rclpy.node import Node
rclpy.init(args=["--ros-args", "--params-file", {str(NODE_YAML)!r}])
node = Node("ddpo_completion", namespace="car1", automatically_declare_parameters_from_overrides=True)
print(json.dumps({{n: [p.value, p.type_.name] for n, p in node.get_parameters_by_prefix("").items()}}))
node.destroy_node()
rclpy.shutdown()
"""
    out = subprocess.run([sys.executable, "-c", code], env=loopback_env(tmp_path), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    ros_type = {bool: "BOOL", int: "INTEGER", float: "DOUBLE", str: "STRING"}
    for p in node_params.PARAMETERS:
        assert loaded[p.name] == [p.default, ros_type[type(p.default)]], p.name


# --- config/ddpo.rviz -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rviz() -> dict:
    return yaml.safe_load(RVIZ.read_text())


def test_rviz_shows_input_and_output_with_the_nodes_qos(rviz):
    manager = rviz["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "velodyne"
    clouds = {d["Topic"]["Value"]: d for d in manager["Displays"]
              if d["Class"] == "rviz_default_plugins/PointCloud2"}
    assert set(clouds) == {"/velodyne_points", "/ddpo/points"}
    rviz_name = {"best_effort": "Best Effort", "reliable": "Reliable"}
    scan, completed = clouds["/velodyne_points"]["Topic"], clouds["/ddpo/points"]["Topic"]
    assert scan["Reliability Policy"] == rviz_name[node_params.BY_NAME["input.reliability"].default]
    assert completed["Reliability Policy"] == rviz_name[node_params.BY_NAME["output.reliability"].default]
    assert (scan["Depth"], completed["Depth"]) == (node_params.BY_NAME["input.depth"].default, 5)
    for topic in (scan, completed):
        assert (topic["History Policy"], topic["Durability Policy"]) == ("Keep Last", "Volatile")
    assert all(d["Enabled"] for d in clouds.values())
    assert clouds["/velodyne_points"]["Color"] != clouds["/ddpo/points"]["Color"]


def test_rviz_has_a_grid_and_an_orbit_view(rviz):
    manager = rviz["Visualization Manager"]
    assert "rviz_default_plugins/Grid" in {d["Class"] for d in manager["Displays"]}
    assert manager["Views"]["Current"]["Class"] == "rviz_default_plugins/Orbit"
    assert {p["Class"] for p in rviz["Panels"]} >= {"rviz_common/Displays", "rviz_common/Views"}


# --- docs/ros.md ----------------------------------------------------------------------------------------------------
def test_docs_have_the_current_parameter_table():
    assert load_tool().markdown_table() in (REPO / "docs" / "ros.md").read_text(), \
        "run: python tools/param_table.py --write"
