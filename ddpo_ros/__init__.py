"""ddpo_ros: online LiDAR scene completion with a Distillation-DPO diffusion student.

The core (this package minus its two wings) is ROS-free: numpy in, numpy out;
`ddpo_ros.loading.load_completer` gives the `Completer`. The wings sit on it: `frontends`
(the ROS node, the `ddpo` CLI, bags, demo, benchmarks) and `datasets` (KITTI, ground truth,
point cloud files).
"""
__version__ = "0.1.0"
