"""PNG renders of LiDAR point clouds: a scan beside its completion, for the README and validation.

numpy in, one PNG out. matplotlib is imported inside `render_clouds` so that importing this
module (and the rest of the package) never needs it; the Agg canvas is attached explicitly, so
no display and no pyplot global state are involved.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_open

VIEWS = {"bev": ("bev",), "3d": ("3d",), "both": ("bev", "3d")}
CMAP = "turbo"        # bright at both ends, so low ground points stay visible on a black background
BACKGROUND = "black"  # tiny bright dots on black separate sparse rings from dense surfaces best
FOREGROUND = "0.85"


def _check_panels(panels: Sequence[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """(label, (N, 3) finite float64) pairs; non-finite rows (NaN padding in ROS clouds) dropped."""
    if len(panels) == 0:
        raise ValueError("render_clouds needs at least one (label, xyz) panel")
    out = []
    for i, item in enumerate(panels):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ValueError(f"panel {i}: expected a (label, xyz) pair, got {type(item).__name__}")
        label, xyz = item
        try:
            xyz = np.asarray(xyz, dtype=np.float64)
        except (TypeError, ValueError) as e:  # ragged lists, strings: say which panel
            raise ValueError(f"panel {label!r}: xyz is not a numeric array ({e})") from e
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise ValueError(f"panel {label!r}: expected an (N, 3) xyz array, got shape {xyz.shape}")
        out.append((str(label), xyz[np.isfinite(xyz).all(axis=1)]))
    return out


def render_clouds(path: str | Path, panels: Sequence[tuple[str, np.ndarray]], *,
                  title: str | None = None, view: str = "both", max_points: int = 200_000,
                  size: tuple[float, float] | None = None, dpi: int = 100,
                  z_range: tuple[float, float] | None = None, seed: int = 0) -> Path:
    """Render `panels` [(label, xyz (N, 3))] side by side into the PNG `path`; returns the path.

    view: "bev" (bird's-eye, x forward up the page, y to the left), "3d" (oblique perspective) or
    "both" (two rows). Colour is height z on one scale shared by every panel: `z_range`, or the
    1st..99th percentile of all panels' z. Each panel is randomly subsampled to `max_points` with
    numpy.random.default_rng(seed), so the same inputs give the same image (byte for byte).
    Non-finite points are dropped; an empty panel says "no points". `size` is the figure in
    inches (default about 4.6 per panel and row); the PNG is size * dpi pixels.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {sorted(VIEWS)}, got {view!r}")
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import Normalize
        from matplotlib.figure import Figure
        from matplotlib.cm import ScalarMappable
    except ImportError as e:
        raise ImportError("ddpo_ros.frontends.render needs matplotlib: pip install matplotlib "
                          "(or the package extra ddpo_ros[viz])") from e
    panels = _check_panels(panels)
    path = Path(path)

    # One colour scale for all panels, so the same height has the same colour everywhere; robust
    # percentiles keep a few stray points (birds, multipath below the road) from flattening it.
    if z_range is None:
        z_all = np.concatenate([xyz[:, 2] for _, xyz in panels])
        z_range = tuple(np.percentile(z_all, [1, 99])) if z_all.size else (0.0, 1.0)
    lo, hi = float(z_range[0]), float(z_range[1])
    if not hi > lo:
        lo, hi = lo - 0.5, lo + 0.5
    norm = Normalize(lo, hi)

    # Shared square BEV extent (rounded up to 10 m) so panels compare at the same scale.
    reach = [np.percentile(np.abs(xyz[:, :2]).max(axis=1), 99.9) for _, xyz in panels if len(xyz)]
    lim = max(10.0, 10.0 * np.ceil(max(reach, default=10.0) / 10.0))

    # Subsample deterministically: one generator drawn panel by panel in order.
    rng = np.random.default_rng(seed)
    shown = []
    for label, xyz in panels:
        if len(xyz) > max_points:
            xyz = xyz[np.sort(rng.choice(len(xyz), max_points, replace=False))]
        # Ascending height: in a bird's-eye view higher points (cars, poles) are drawn over the road.
        shown.append(xyz[np.argsort(xyz[:, 2], kind="stable")])

    rows, cols = VIEWS[view], len(panels)
    heights = [1.0 if kind == "bev" else 0.7 for kind in rows]  # a flat oblique view needs less height
    top_in = 0.95 if title else 0.7  # room for the title, then each column's label and count
    size = size or (4.6 * cols + 1.8, 4.6 * sum(heights) + top_in + 0.5)
    fig = Figure(figsize=size, dpi=dpi, facecolor=BACKGROUND)
    FigureCanvasAgg(fig)
    # Fixed margins in inches, not constrained layout: mplot3d's oversized tight boxes would
    # otherwise shrink the bird's-eye panels; the colour bar takes the right-hand strip.
    w, h = size
    grid = fig.add_gridspec(len(rows), cols, height_ratios=heights, left=0.7 / w, right=1 - 1.3 / w,
                            top=1 - top_in / h, bottom=0.5 / h, wspace=0.25, hspace=0.12)
    if title:
        fig.suptitle(title, color=FOREGROUND, fontsize=13, y=1 - 0.15 / h, va="top")
    for r, kind in enumerate(rows):
        for c, ((label, full), xyz) in enumerate(zip(panels, shown)):
            ax = fig.add_subplot(grid[r, c], projection="3d" if kind == "3d" else None)
            if r == 0:  # label and count once per column, above its top panel
                count = f"{len(full):,} points" + (f" ({len(xyz):,} shown)" if len(xyz) < len(full) else "")
                ax.set_title(f"{label}\n{count}", color=FOREGROUND, fontsize=11)
            (_bev if kind == "bev" else _oblique)(ax, xyz, lim, norm)
            if len(xyz) == 0:  # Axes3D.text wants a 3-D position; text2D is the axes-fraction one
                getattr(ax, "text2D", ax.text)(0.5, 0.65, "no points", transform=ax.transAxes,
                                               ha="center", va="center", color=FOREGROUND, fontsize=12)
    cax = fig.add_axes((1 - 0.8 / w, 0.15, 0.15 / w, 0.7))
    bar = fig.colorbar(ScalarMappable(norm, CMAP), cax=cax)
    bar.set_label("height z [m]", color=FOREGROUND)
    bar.ax.tick_params(colors=FOREGROUND)

    # Atomic write: a reader (README build, TensorBoard, a watcher) never sees a half-written PNG.
    with atomic_open(path) as f:
        # No Software/date metadata: identical inputs give byte-identical files.
        fig.savefig(f, format="png", facecolor=BACKGROUND, metadata={"Software": None})
    return path


def _style(ax) -> None:
    ax.set_facecolor(BACKGROUND)
    ax.tick_params(colors=FOREGROUND, labelsize=8)
    for spine in getattr(ax, "spines", {}).values():
        spine.set_color("0.4")


def _bev(ax, xyz: np.ndarray, lim: float, norm) -> None:
    """Bird's-eye view: x (forward) up the page, y (left) to the left, metres, range rings."""
    import matplotlib.patches as mpatches

    _style(ax)
    for ring in np.arange(10.0, lim * 1.42, 10.0):  # faint 10 m rings out to the square's corners
        ax.add_patch(mpatches.Circle((0, 0), ring, fill=False, lw=0.5, ec="0.3", zorder=0))
    ax.scatter(xyz[:, 1], xyz[:, 0], c=xyz[:, 2], s=0.3, cmap=CMAP, norm=norm,
               linewidths=0)
    ax.plot(0, 0, marker="^", color="white", ms=5)  # the sensor
    ax.set_xlim(lim, -lim)  # +y (left of the car) on the left of the page
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("y [m] (left)", color=FOREGROUND, fontsize=9)
    ax.set_ylabel("x [m] (forward)", color=FOREGROUND, fontsize=9)


def _oblique(ax, xyz: np.ndarray, lim: float, norm) -> None:
    """Oblique perspective from behind and above the sensor, true horizontal scale."""
    _style(ax)
    ax.set_proj_type("persp", focal_length=0.6)
    ax.view_init(elev=28, azim=-155)
    ax.grid(False)  # 3-D grid lines and grey panes clutter the faint far points
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_pane_color((0, 0, 0, 0))
        axis.line.set_color("0.4")
    ax.set_zticks([])  # heights are exaggerated here; the colour bar gives them in metres
    ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=xyz[:, 2], s=0.3, cmap=CMAP, norm=norm,
               linewidths=0, depthshade=False)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    zlo, zhi = norm.vmin - 1.0, norm.vmax + 1.0
    ax.set_zlim(zlo, zhi)
    # Heights exaggerated 3x: at true scale a 50 m scene is a flat sheet a few metres thick.
    ax.set_box_aspect((2 * lim, 2 * lim, 3 * (zhi - zlo)), zoom=1.3)
    ax.set_xlabel("x [m]", color=FOREGROUND, fontsize=8)
    ax.set_ylabel("y [m]", color=FOREGROUND, fontsize=8)
