"""Periodic validation shared by the stages: complete a few held-out scans, score them, draw one."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ddpo_ros.datasets.ground_truth import chamfer_distance
from ddpo_ros.frontends.render import render_clouds

from .metrics import jsd_3d


def validator(cfg, out: Path, val_set, make_completer):
    """A `validate(step) -> scalars` for the loop; make_completer() builds a Completer from the live networks."""
    def validate(step: int) -> dict[str, float]:
        if val_set is None or len(val_set) == 0:
            return {}
        completer = make_completer()
        cds, jsds = [], []
        for i in range(min(cfg.train.val_scans, len(val_set))):
            item = val_set[i]
            partial, gt = item["partial"].numpy(), item["gt"].numpy()
            result = completer.complete(partial, steps=cfg.train.val_steps, seed=i,
                                        refine=completer.refiner is not None and cfg.completion.refine)
            if len(result.points) == 0:  # everything left the 50 m / z band: an early or diverged model
                cds.append(float("nan"))
                jsds.append(float("nan"))
                continue
            cds.append(chamfer_distance(result.points, gt))
            jsds.append(jsd_3d(result.points, gt))
            if i == 0:
                render_clouds(Path(out) / "val" / f"step_{step:07d}.png",
                              [("partial", partial), (f"{completer.kind}, {cfg.train.val_steps} steps", result.points),
                               ("ground truth", gt)], title=f"{item['scan']} at step {step}", view="bev")
        return {"val/cd": float(np.mean(cds)), "val/jsd_3d": float(np.mean(jsds))}
    return validate
