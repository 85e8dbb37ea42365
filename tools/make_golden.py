"""Write golden parity fixtures from a real MinkowskiEngine 0.5.4 build.

Run inside the environment made by tools/build_minkowski.sh (`make golden`):

    PYTHONPATH=. .venv-minkowski/bin/python tools/make_golden.py test/fixtures/minkowski_golden

Every case of test/golden_cases.py runs on the `minkowski` backend; its inputs, weights, outputs
and gradients go to <out>.safetensors with the case list and versions in the metadata.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
import golden_cases as gc  # noqa: E402

SCAN = "semantickitti_seq00_mini/sequences/00/velodyne/000000.bin"


def main(out: str) -> None:
    import MinkowskiEngine as ME

    torch.set_num_threads(1)  # deterministic float summation order in the reference
    torch.manual_seed(20261123)  # network weight initialisation (inputs use `gen` below)
    tensors: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(20261123)
    for case in gc.LAYER_CASES:
        inputs = gc.make_inputs(case, gen)
        outputs = gc.run_layer("minkowski", case, inputs)
        tensors.update({f"{case['name']}/in/{k}": v for k, v in inputs.items()})
        tensors.update({f"{case['name']}/out/{k}": v for k, v in outputs.items()})

    case = gc.UNET_CASE
    data = Path(os.environ.get("DDPO_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    scan = np.fromfile(data / SCAN, np.float32).reshape(-1, 4)[:, :3]
    r = np.linalg.norm(scan, axis=1)
    scan = scan[(r > 3.5) & (r < 50)]
    inputs = gc.make_unet_inputs(case, scan, gen)
    states = {}
    for name, model in zip(("encoder", "denoiser", "refiner"), gc.unet_models("minkowski", case["width"])):
        gc.randomise_batch_norms(model, gen)
        states.update({f"{name}.{k}": v.clone() for k, v in model.state_dict().items()})
    outputs = gc.run_unet("minkowski", case, inputs, states)
    tensors.update({f"unet/in/{k}": v for k, v in inputs.items()})
    tensors.update({f"unet/state/{k}": v for k, v in states.items()})
    tensors.update({f"unet/out/{k}": v for k, v in outputs.items()})

    meta = {"cases": json.dumps(gc.CASES), "minkowski_engine": ME.__version__, "torch": torch.__version__,
            "source_scan": SCAN}
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, f"{out}.safetensors", metadata=meta)
    size = Path(f"{out}.safetensors").stat().st_size
    print(f"wrote {len(tensors)} tensors ({size / 1e6:.2f} MB) to {out}.safetensors")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "test/fixtures/minkowski_golden")
