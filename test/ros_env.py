"""Loopback-only DDS for tests: `ddpo_ros.frontends.dds.loopback_env` as a fixture."""
from __future__ import annotations

import pytest

from ddpo_ros.frontends.dds import loopback_env  # noqa: F401  (tests import it from here)


@pytest.fixture
def ros_env(tmp_path) -> dict:
    """os.environ plus loopback DDS settings (a private domain, a Fast DDS 127.0.0.1 allowlist)."""
    return loopback_env(tmp_path)
