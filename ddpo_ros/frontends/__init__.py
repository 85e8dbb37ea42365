"""The front ends over the core's Completer: the ROS node, the CLI, bags, demo and benchmarks."""
