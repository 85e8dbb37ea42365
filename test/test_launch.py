"""launch/complete.launch.py: its source, its logic on stand-in launch modules, the real thing where installed.

`launch` and `launch_ros` are not on PyPI, so most checks read the file's AST or run it against
recording stand-ins. The launch_testing test that starts the node is test/test_launch_node.py:
launch_testing turns a module with `generate_test_description` into a launch test and runs
nothing else in it.
"""
from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "complete.launch.py"
ARGUMENTS = {"input_topic", "output_topic", "params_file", "weights", "device", "steps", "use_sim_time", "bag",
             "rviz", "managed", "namespace"}
DEFAULTS = {"input_topic": "/velodyne_points", "output_topic": "/ddpo/points", "weights": "", "device": "",
            "steps": "", "use_sim_time": "false", "bag": "", "rviz": "false", "managed": "false",
            "namespace": ""}
LAUNCH_MODULES = ("launch", "launch.actions", "launch.conditions", "launch.substitutions", "launch_ros",
                  "launch_ros.actions", "launch_ros.parameter_descriptions", "launch_ros.substitutions")


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)]


def keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def console_scripts() -> dict[str, str]:
    """The console scripts setup.py declares (a literal list there), as name -> module:function."""
    setup = next(c for c in calls(ast.parse((REPO / "setup.py").read_text()), "setup"))
    scripts = ast.literal_eval(keyword(setup, "entry_points"))["console_scripts"]
    return dict((part.strip() for part in s.split("=")) for s in scripts)


@pytest.fixture(scope="module")
def tree() -> ast.Module:
    return ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))


@pytest.fixture(scope="module")
def declared(tree) -> dict[str, ast.Call]:
    out = {}
    for call in calls(tree, "DeclareLaunchArgument"):
        name = call.args[0] if call.args else keyword(call, "name")
        assert isinstance(name, ast.Constant), f"line {call.lineno}: the argument name must be a literal"
        out[name.value] = call
    return out


# --- (a) the source -------------------------------------------------------------------------------------------------
def test_defines_generate_launch_description(tree):
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    assert not functions["generate_launch_description"].args.args


def test_declares_every_argument_with_a_description_and_default(declared):
    assert set(declared) == ARGUMENTS
    for name, call in declared.items():
        description = keyword(call, "description")
        assert isinstance(description, ast.Constant) and len(description.value) > 20, f"{name}: no description"
        assert keyword(call, "default_value") is not None, f"{name}: no default (would be a required argument)"
    for name, default in DEFAULTS.items():
        assert ast.literal_eval(keyword(declared[name], "default_value")) == default, name


def test_params_file_default_is_the_installed_node_yaml(declared):
    default = keyword(declared["params_file"], "default_value")
    assert isinstance(default, ast.Call) and default.func.id == "PathJoinSubstitution"
    share, *parts = default.args[0].elts
    assert isinstance(share, ast.Call) and share.func.id == "FindPackageShare"
    assert ast.literal_eval(share.args[0]) == "ddpo_ros"
    parts = [ast.literal_eval(p) for p in parts]
    assert parts == ["config", "node.yaml"] and REPO.joinpath(*parts).is_file()


def test_node_runs_the_console_script_setup_py_declares(tree):
    (node,) = [c for c in calls(tree, "node_class") if ast.literal_eval(keyword(c, "package")) == "ddpo_ros"]
    executable = ast.literal_eval(keyword(node, "executable"))
    assert console_scripts()[executable] == "ddpo_ros.frontends.node:main"
    assert ast.literal_eval(keyword(node, "name")) == "ddpo_completion"
    assert ast.literal_eval(keyword(node, "output")) == "screen"
    remapped = {ast.literal_eval(pair.elts[0]) for pair in keyword(node, "remappings").elts}
    assert remapped == {"~/input/points", "~/output/points"}


def test_rviz_config_and_bag_replay_are_wired(tree):
    rviz = [c for c in calls(tree, "Node") if ast.literal_eval(keyword(c, "package")) == "rviz2"]
    assert len(rviz) == 1 and keyword(rviz[0], "condition") is not None
    path = [ast.literal_eval(p) for p in calls(rviz[0], "PathJoinSubstitution")[0].args[0].elts[1:]]
    assert path == ["config", "ddpo.rviz"] and REPO.joinpath(*path).is_file()
    (bag,) = calls(tree, "ExecuteProcess")
    command = ast.unparse(keyword(bag, "cmd"))
    assert command.startswith("['ros2', 'bag', 'play'") and "'--clock'" in command
    assert keyword(bag, "condition") is not None


# --- (a') the logic, on recording stand-ins for launch and launch_ros -----------------------------------------------
class Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def stand_in(name: str, classes: dict) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__getattr__ = lambda attr: classes.setdefault(attr, type(attr, (Recorded,), {}))
    return module


@pytest.fixture
def with_stand_ins(monkeypatch):
    """The launch file imported against stand-ins that record every constructor call."""
    classes: dict[str, type] = {}
    for name in LAUNCH_MODULES:
        monkeypatch.setitem(sys.modules, name, stand_in(name, classes))
    spec = importlib.util.spec_from_file_location("complete_launch_stand_in", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launch_arguments(**given) -> dict[str, str]:
    return {**DEFAULTS, "params_file": str(REPO / "config" / "node.yaml"), **given}


def test_empty_arguments_leave_the_yaml_alone(with_stand_ins):
    assert with_stand_ins.parameter_overrides(launch_arguments()) == {"use_sim_time": False}


def test_given_arguments_override_the_yaml(with_stand_ins):
    overrides = with_stand_ins.parameter_overrides(launch_arguments(
        weights="/w/ddpo.safetensors", device="cuda:1", steps="4", use_sim_time="True"))
    assert overrides == {"use_sim_time": True, "weights": "/w/ddpo.safetensors", "device": "cuda:1",
                         "completion.steps": 4}


@pytest.mark.parametrize("bad, message", [({"steps": "four"}, "steps:='four' must be an integer"),
                                          ({"use_sim_time": "maybe"}, "use_sim_time:='maybe' must be true or false")])
def test_bad_arguments_say_which(with_stand_ins, bad, message):
    with pytest.raises(ValueError, match=message):
        with_stand_ins.parameter_overrides(launch_arguments(**bad))


def test_the_node_gets_yaml_then_overrides_and_the_remappings(with_stand_ins):
    context = types.SimpleNamespace(launch_configurations=launch_arguments(
        input_topic="/kitti/velo", device="cpu", namespace="car1"))
    (node,) = with_stand_ins.completion_node(context)
    kw = node.kwargs
    assert (kw["package"], kw["executable"], kw["name"], kw["namespace"]) == (
        "ddpo_ros", "completion_node", "ddpo_completion", "car1")
    assert kw["parameters"] == [str(REPO / "config" / "node.yaml"), {"use_sim_time": False, "device": "cpu"}]
    assert kw["remappings"] == [("~/input/points", "/kitti/velo"), ("~/output/points", "/ddpo/points")]


def test_managed_starts_a_lifecycle_node_that_waits_for_its_manager(with_stand_ins):
    context = types.SimpleNamespace(launch_configurations=launch_arguments(managed="true"))
    (node,) = with_stand_ins.completion_node(context)
    assert type(node).__name__ == "LifecycleNode"
    assert node.kwargs["parameters"][1] == {"use_sim_time": False, "autostart": False}
    with pytest.raises(ValueError, match="managed:='sure' must be true or false"):
        with_stand_ins.parameter_overrides(launch_arguments(managed="sure"))


def test_the_description_lists_arguments_then_node_bag_and_rviz(with_stand_ins):
    (entities,) = with_stand_ins.generate_launch_description().args
    kinds = [type(e).__name__ for e in entities]
    assert kinds == ["DeclareLaunchArgument"] * len(ARGUMENTS) + ["OpaqueFunction", "ExecuteProcess", "Node"]
    assert entities[len(ARGUMENTS)].kwargs["function"] is with_stand_ins.completion_node


# --- (b) the real launch and launch_ros, where they are installed (ROS machines) -------------------------------------
def test_real_launch_description(tmp_path):
    launch = pytest.importorskip("launch")
    pytest.importorskip("launch_ros")
    from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
    from launch_ros.actions import Node

    spec = importlib.util.spec_from_file_location("complete_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    arguments = {a.name: a for a in description.get_launch_arguments()}
    assert set(arguments) == ARGUMENTS and all(a.description for a in arguments.values())
    (bag,) = [e for e in description.entities if isinstance(e, ExecuteProcess) and not isinstance(e, Node)]
    (rviz,) = [e for e in description.entities if isinstance(e, Node)]

    context = launch.LaunchContext()
    given = {"params_file": str(REPO / "config" / "node.yaml"), "namespace": "car1", "steps": "2"}
    context.launch_configurations.update(given)
    for entity in description.entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.execute(context)  # fills in the defaults of the arguments not given
    assert {k: context.launch_configurations[k] for k in DEFAULTS if k not in given} == {
        k: v for k, v in DEFAULTS.items() if k not in given}
    assert not bag.condition.evaluate(context) and not rviz.condition.evaluate(context)
    context.launch_configurations.update(bag=str(tmp_path / "kitti_00"), rviz="true")
    assert bag.condition.evaluate(context) and rviz.condition.evaluate(context)
    (opaque,) = [e for e in description.entities if isinstance(e, OpaqueFunction)]
    (node,) = opaque.execute(context)
    assert isinstance(node, Node)
    assert (node.node_package, node.node_executable) == ("ddpo_ros", "completion_node")
    node._perform_substitutions(context)  # what Node.execute does before it starts the process
    assert node.node_name == "/car1/ddpo_completion"
    assert node.expanded_remapping_rules == [("~/input/points", "/velodyne_points"),
                                             ("~/output/points", "/ddpo/points")]
