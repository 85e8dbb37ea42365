"""Shared test fixtures: real data location, deterministic seeds."""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DDPO_DATA", REPO.parent / "shared" / "data"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session", autouse=True)
def _native_kernels_built():
    """Build the compiled CPU kernels once, up front: the node and CLI subprocesses of later tests
    then find them cached instead of paying the ~30 s build inside their own timeouts."""
    from ddpo_ros.sparse import native

    native.load()


def kitti_scan(frame: int = 0) -> np.ndarray:
    """A real KITTI seq 00 scan (N, 4) float32: x, y, z, remission."""
    path = DATA / "semantickitti_seq00_mini" / "sequences" / "00" / "velodyne" / f"{frame:06d}.bin"
    if not path.exists():
        pytest.fail(f"real test data missing: {path} (set DDPO_DATA to the shared data folder)")
    return np.fromfile(path, np.float32).reshape(-1, 4)


@pytest.fixture
def scan_xyz() -> np.ndarray:
    """Frame 0 cropped to the pipeline's 3.5 m < r < 50 m."""
    xyz = kitti_scan(0)[:, :3]
    r = np.linalg.norm(xyz, axis=1)
    return xyz[(r > 3.5) & (r < 50)]


def make_tiny_weights(path: Path, num_points: int = 300, replication: int = 2) -> Path:
    """Random-initialised, very thin networks saved as a real weights file (student + refiner).

    They complete a real scan in a fraction of a second, so ROS and bag tests can push many
    frames through the whole pipeline. Their output is noise-shaped: tests check plumbing, not quality.
    """
    from ddpo_ros.checkpoint import save_checkpoint
    from ddpo_ros.config import CompletionConfig, Config, ModelConfig
    from ddpo_ros.models import build_denoiser, build_encoder, build_refiner

    cfg = Config(model=ModelConfig(width=0.125),
                 completion=CompletionConfig(num_points=num_points, replication=replication))
    torch.manual_seed(0)
    nets = {"encoder": build_encoder(cfg.model), "student": build_denoiser(cfg.model),
            "refiner": build_refiner(cfg.model)}
    return save_checkpoint(path, nets, cfg)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    return make_tiny_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


def scalars(run: Path) -> dict[str, list[float]]:
    """A training run's TensorBoard scalars, each tag's values in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return {tag: [e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)] for tag in acc.Tags()["scalars"]}


def write_train_config(path: Path, base: dict, **sections) -> Path:
    """A training YAML: `base` with some sections' keys overridden (the stage tests' tiny configs)."""
    import yaml

    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path.write_text(yaml.safe_dump(cfg))
    return path


@contextlib.contextmanager
def kernels(mode: str):
    """Inside, mode "native" runs the compiled CPU code and "torch" its plain-torch twins.

    A context manager rather than a fixture so hypothesis tests can use it. "native" fails where
    a C++ compiler and ninja exist but the build does not (CI has both), and skips elsewhere.
    """
    from ddpo_ros.sparse import native

    old = os.environ.get("DDPO_NATIVE")
    os.environ["DDPO_NATIVE"] = "1" if mode == "native" else "0"
    try:
        if mode == "native" and native.status() != "native":
            if native.toolchain():
                pytest.fail(f"native kernels did not build: {native.status()}")
            pytest.skip("no C++ compiler or ninja here")
        yield
    finally:
        if old is None:
            os.environ.pop("DDPO_NATIVE", None)
        else:
            os.environ["DDPO_NATIVE"] = old


@pytest.fixture(scope="module")
def ros(tmp_path_factory):
    """A private rclpy context on loopback DDS with a spinning executor (one per test module)."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.executors import SingleThreadedExecutor

    from ddpo_ros.frontends.dds import loopback_env

    env = loopback_env(tmp_path_factory.mktemp("dds"))
    with pytest.MonkeyPatch.context() as mp:
        for key in ("ROS_DOMAIN_ID", "ROS_LOCALHOST_ONLY", "ROS_AUTOMATIC_DISCOVERY_RANGE",
                    "FASTRTPS_DEFAULT_PROFILES_FILE"):
            if key in env:
                mp.setenv(key, env[key])
        ctx = rclpy.Context()
        rclpy.init(context=ctx)
        executor = SingleThreadedExecutor(context=ctx)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        yield ctx, executor, env
        executor.shutdown()
        rclpy.try_shutdown(context=ctx)
