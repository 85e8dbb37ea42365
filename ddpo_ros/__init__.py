"""ddpo_ros: online LiDAR scene completion with a Distillation-DPO diffusion student.

The core (this package minus `node`) is ROS-free: numpy in, numpy out.
"""
__version__ = "0.1.0"
