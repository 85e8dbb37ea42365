"""PNG renders of point clouds (ddpo_ros.frontends.render): real KITTI frame and a synthetic dense cloud."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.image import imread  # noqa: E402

from ddpo_ros.frontends.render import render_clouds  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = dict(size=(6.0, 4.0), dpi=50)  # 300 x 200 px: fast, still a real render


def dense_cloud(n: int = 40_000, seed: int = 1) -> np.ndarray:
    """A synthetic dense scene: a flat road at z = -1.7 m and a 2 m wall along x at y = 8 m."""
    rng = np.random.default_rng(seed)
    road = np.c_[rng.uniform(-30, 30, (n // 2, 2)), rng.normal(-1.7, 0.02, n // 2)]
    wall = np.c_[rng.uniform(-30, 30, n // 2), np.full(n // 2, 8.0), rng.uniform(-1.7, 0.3, n // 2)]
    return np.concatenate([road, wall])


def pixels(path) -> np.ndarray:
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    return imread(path)


def test_scan_beside_completion(tmp_path, scan_xyz):
    """Real frame beside a dense cloud, both views: a PNG of the asked size that is not blank."""
    out = render_clouds(tmp_path / "sub" / "pair.png", [("input", scan_xyz), ("dense", dense_cloud())],
                        title="KITTI 00/000000", max_points=20_000, **SMALL)
    assert out == tmp_path / "sub" / "pair.png"
    img = pixels(out)
    assert img.shape[:2] == (200, 300)
    assert img[..., :3].std() > 0.02  # not a blank background
    assert [p.name for p in out.parent.iterdir()] == ["pair.png"]  # no temp file left behind


@pytest.mark.parametrize("view", ["bev", "3d"])
def test_single_views(tmp_path, scan_xyz, view):
    img = pixels(render_clouds(tmp_path / f"{view}.png", [("scan", scan_xyz)], view=view,
                               max_points=10_000, **SMALL))
    assert img.shape[:2] == (200, 300) and img[..., :3].std() > 0.02


def test_default_size_scales_with_panels(tmp_path):
    one = pixels(render_clouds(tmp_path / "1.png", [("a", dense_cloud(2000))], view="bev", dpi=20))
    two = pixels(render_clouds(tmp_path / "2.png", [("a", dense_cloud(2000)), ("b", dense_cloud(2000))],
                               view="bev", dpi=20))
    assert two.shape[0] == one.shape[0] and two.shape[1] > one.shape[1]


def test_deterministic_and_subsampling(tmp_path, scan_xyz):
    """Same inputs and seed: byte-identical files; the subsample depends on the seed only."""
    panels = [("input", scan_xyz), ("dense", dense_cloud())]
    kw = dict(view="bev", max_points=5_000, **SMALL)
    a = render_clouds(tmp_path / "a.png", panels, **kw).read_bytes()
    b = render_clouds(tmp_path / "b.png", panels, **kw).read_bytes()
    c = render_clouds(tmp_path / "c.png", panels, seed=1, **kw).read_bytes()
    assert a == b
    assert a != c  # another seed draws another 5,000 points


def test_fresh_process_gives_same_bytes(tmp_path, scan_xyz):
    """No hidden state (pyplot, global RNG, metadata dates): another interpreter, same PNG."""
    np.save(tmp_path / "xyz.npy", scan_xyz)
    code = ("import numpy as np, sys; from ddpo_ros.frontends.render import render_clouds; "
            "xyz = np.load(sys.argv[1]); "
            "render_clouds(sys.argv[2], [('input', xyz)], view='bev', max_points=5000, size=(6, 4), dpi=50)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "xyz.npy"), str(tmp_path / "child.png")],
                   check=True)
    np.random.seed(123)  # the global RNG must not matter
    here = render_clouds(tmp_path / "here.png", [("input", scan_xyz)], view="bev", max_points=5000,
                         size=(6, 4), dpi=50)
    assert here.read_bytes() == (tmp_path / "child.png").read_bytes()


def test_empty_panels(tmp_path, scan_xyz):
    img = pixels(render_clouds(tmp_path / "e.png", [("nothing", np.zeros((0, 3))), ("scan", scan_xyz)],
                               max_points=5_000, **SMALL))
    assert img.shape[:2] == (200, 300)
    # All empty: still a valid image, colour scale falls back to a default range.
    assert pixels(render_clouds(tmp_path / "ee.png", [("none", np.empty((0, 3)))], **SMALL)).shape[:2] == (200, 300)


def test_explicit_z_range_and_nan_points(tmp_path):
    xyz = dense_cloud(4000)
    xyz[:10] = np.nan  # ROS clouds pad with NaN; those rows are dropped, not an error
    img = pixels(render_clouds(tmp_path / "z.png", [("flat", xyz)], z_range=(-3.0, 2.0), **SMALL))
    assert img[..., :3].std() > 0.02


@pytest.mark.parametrize("bad", [np.zeros((5, 4)), np.zeros(9), np.zeros((2, 3, 3)), [[1, 2], [3]]])
def test_bad_shapes_name_the_panel(tmp_path, bad):
    with pytest.raises(ValueError, match="'broken one'"):
        render_clouds(tmp_path / "x.png", [("fine", dense_cloud(100)), ("broken one", bad)], **SMALL)
    assert not list(tmp_path.iterdir())  # nothing written


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="view"):
        render_clouds(tmp_path / "x.png", [("a", dense_cloud(100))], view="side")
    with pytest.raises(ValueError, match="at least one"):
        render_clouds(tmp_path / "x.png", [])
    with pytest.raises(ValueError, match="max_points"):
        render_clouds(tmp_path / "x.png", [("a", dense_cloud(100))], max_points=0)


def test_missing_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.backends.backend_agg", "matplotlib.colors",
                 "matplotlib.figure", "matplotlib.cm"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes the import fail
    with pytest.raises(ImportError, match="pip install matplotlib"):
        render_clouds(tmp_path / "x.png", [("a", dense_cloud(100))])


def test_import_does_not_need_matplotlib():
    code = ("import sys; sys.modules['matplotlib'] = None; import ddpo_ros.frontends.render; "
            "assert 'matplotlib.figure' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
