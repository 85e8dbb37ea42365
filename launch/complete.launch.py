"""The DDPO completion node, with an optional bag replay and RViz.

    ros2 launch ddpo_ros complete.launch.py weights:=/path/to/ddpo.safetensors device:=cuda
    ros2 launch ddpo_ros complete.launch.py bag:=kitti_00 use_sim_time:=true rviz:=true
    ros2 launch ddpo_ros complete.launch.py managed:=true   # a lifecycle manager configures and activates it
    ros2 launch ddpo_ros complete.launch.py --show-args

Parameters come from params_file (config/node.yaml by default). The weights, device and steps
arguments override it only when they are given: left empty, the YAML's values stand.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def as_bool(name: str, text: str) -> bool:
    if text.strip().lower() not in TRUE + FALSE:
        raise ValueError(f"launch argument {name}:={text!r} must be true or false")
    return text.strip().lower() in TRUE


def parameter_overrides(args: dict) -> dict:
    """Node parameters from the launch arguments that were given (an empty one keeps the YAML's)."""
    overrides = {"use_sim_time": as_bool("use_sim_time", args["use_sim_time"])}
    if as_bool("managed", args["managed"]):
        overrides["autostart"] = False  # the lifecycle manager drives configure / activate
    for name in ("weights", "device"):
        if args[name]:
            overrides[name] = args[name]
    if args["steps"]:
        try:
            overrides["completion.steps"] = int(args["steps"])
        except ValueError:
            raise ValueError(f"launch argument steps:={args['steps']!r} must be an integer") from None
    return overrides


def completion_node(context):
    args = context.launch_configurations
    # A LifecycleNode action lets launch itself emit transition events to a managed node; the
    # process and its parameters are the same either way.
    node_class = LifecycleNode if as_bool("managed", args["managed"]) else Node
    return [node_class(
        package="ddpo_ros",
        executable="completion_node",
        name="ddpo_completion",
        namespace=args["namespace"],
        parameters=[args["params_file"], parameter_overrides(args)],  # later entries win
        remappings=[("~/input/points", args["input_topic"]), ("~/output/points", args["output_topic"])],
        output="screen",
        emulate_tty=True,
    )]


def generate_launch_description():
    bag = LaunchConfiguration("bag")
    return LaunchDescription([
        DeclareLaunchArgument(
            "input_topic", default_value="/velodyne_points",
            description="sensor_msgs/PointCloud2 topic to complete (remapped onto ~/input/points)"),
        DeclareLaunchArgument(
            "output_topic", default_value="/ddpo/points",
            description="where the completed scene is published (remapped onto ~/output/points)"),
        DeclareLaunchArgument(
            "params_file", default_value=PathJoinSubstitution([FindPackageShare("ddpo_ros"), "config", "node.yaml"]),
            description="YAML file with the node's parameters"),
        DeclareLaunchArgument(
            "weights", default_value="",
            description="ddpo_ros .safetensors weights; empty = params_file's value (default: bundled mini weights)"),
        DeclareLaunchArgument(
            "device", default_value="",
            description="torch device: cuda, cuda:N or cpu; empty = params_file's value (cuda, falling back to cpu)"),
        DeclareLaunchArgument(
            "steps", default_value="",
            description="denoising steps per scene (1-50); empty = params_file's value"),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false",
            description="use /clock for the node's time: true when replaying a bag, false on the vehicle"),
        DeclareLaunchArgument(
            "bag", default_value="",
            description="rosbag2 to play with `ros2 bag play BAG --clock` (set use_sim_time:=true); empty = none"),
        DeclareLaunchArgument(
            "rviz", default_value="false",
            description="start RViz with config/ddpo.rviz (input and completed clouds)"),
        DeclareLaunchArgument(
            "managed", default_value="false",
            description="true: start unconfigured (autostart false) for a lifecycle manager; false: configure "
                        "and activate at start"),
        DeclareLaunchArgument(
            "namespace", default_value="",
            description="ROS namespace of the node (for several sensors or vehicles)"),
        OpaqueFunction(function=completion_node),
        ExecuteProcess(
            cmd=["ros2", "bag", "play", bag, "--clock"],
            condition=IfCondition(PythonExpression(["'", bag, "' != ''"])),
            output="screen"),
        Node(
            package="rviz2", executable="rviz2", name="rviz2",
            arguments=["-d", PathJoinSubstitution([FindPackageShare("ddpo_ros"), "config", "ddpo.rviz"])],
            parameters=[{"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)}],
            condition=IfCondition(LaunchConfiguration("rviz")),
            output="screen"),
    ])
