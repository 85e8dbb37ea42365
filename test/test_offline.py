"""`ddpo complete` and `ddpo render` end to end on the real KITTI frame with a tiny checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import kitti_scan
from ddpo_ros.checkpoint import save_checkpoint
from ddpo_ros.frontends.cli import main
from ddpo_ros.datasets.cloud_files import read_cloud, write_cloud
from ddpo_ros.config import CompletionConfig, Config, ModelConfig
from ddpo_ros.models import build_denoiser, build_encoder, build_refiner
from ddpo_ros.frontends.offline import output_paths

TINY = Config(model=ModelConfig(width=0.125), completion=CompletionConfig(num_points=500))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    nets = {"encoder": build_encoder(TINY.model), "student": build_denoiser(TINY.model),
            "refiner": build_refiner(TINY.model)}
    save_checkpoint(path, nets, TINY)
    return path


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """The real frame as KITTI .bin and as PLY, plus a cloud too small to complete."""
    d = tmp_path_factory.mktemp("in")
    scan = kitti_scan(0)
    (d / "000000.bin").write_bytes(scan.astype("<f4").tobytes())
    write_cloud(d / "frame.ply", scan[:, :3])
    write_cloud(d / "tiny.pcd", scan[:100, :3])
    return d


def test_one_scan_to_ply_with_timings(weights, scans, tmp_path, capsys):
    out = tmp_path / "done.ply"
    rc = main(["complete", str(scans / "000000.bin"), "-o", str(out), "--weights", str(weights),
               "--steps", "2", "--seed", "0", "--save-coarse"])
    assert rc == 0
    done, coarse = read_cloud(out), read_cloud(tmp_path / "done_coarse.ply")
    assert done.shape == (6 * len(coarse), 3) and np.isfinite(done).all()
    err = capsys.readouterr()
    assert "step 2 (t=500)" in err.err and "refine" in err.err and "000000.bin" in err.out
    # Same seed, same scene, whatever the input format.
    rc = main(["complete", str(scans / "frame.ply"), "-o", str(tmp_path / "again.ply"), "--weights",
               str(weights), "--steps", "2", "--seed", "0", "--save-coarse"])
    assert rc == 0 and np.array_equal(read_cloud(tmp_path / "again.ply"), done)


def test_precision_flag_runs_bf16_close_to_fp32(weights, scans, tmp_path):
    """--precision bf16 overrides the weights' completion.precision: same noise, nearby scene."""
    outs = {}
    for precision in ("fp32", "bf16"):
        outs[precision] = tmp_path / f"{precision}.ply"
        assert main(["complete", str(scans / "000000.bin"), "-o", str(outs[precision]), "--weights", str(weights),
                     "--steps", "1", "--seed", "0", "--no-refine", "--precision", precision]) == 0
    a, b = read_cloud(outs["fp32"]), read_cloud(outs["bf16"])
    assert not np.array_equal(a, b) and abs(len(a) - len(b)) <= 0.01 * len(a)
    n = min(len(a), len(b))
    assert np.median(np.linalg.norm(a[:n] - b[:n], axis=1)) < 0.05


def test_folder_in_folder_out_skips_bad_scans(weights, scans, tmp_path, capsys):
    rc = main(["complete", str(scans), "-o", str(tmp_path / "out"), "--weights", str(weights),
               "--steps", "1", "--no-refine", "--format", ".bin", "--png"])
    assert rc == 1  # tiny.pcd cannot be completed; the others are
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["000000.bin", "000000.png", "frame.bin", "frame.png"]
    err = capsys.readouterr().err
    assert "tiny.pcd: skipped" in err and "fewer than the 500" in err


def test_bad_arguments_are_reported(weights, scans, tmp_path, capsys):
    assert main(["complete", str(tmp_path / "nope.bin"), "-o", str(tmp_path / "o.ply"),
                 "--weights", str(weights)]) == 2
    assert "nope.bin: no such file" in capsys.readouterr().err
    assert main(["complete", str(scans / "frame.ply"), "-o", str(tmp_path / "o.ply"),
                 "--weights", str(tmp_path / "missing.safetensors")]) == 2
    with pytest.raises(ValueError, match="need an output folder"):
        output_paths([scans / "a.bin", scans / "b.bin"], tmp_path / "x.ply")
    names = output_paths([scans / "00" / "000000.bin", scans / "08" / "000000.bin"], tmp_path)
    assert [p.name for p in names] == ["00_000000.ply", "08_000000.ply"]


def test_render_writes_a_png(scans, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "view.png"
    assert main(["render", str(scans / "000000.bin"), str(scans / "frame.ply"), "-o", str(out),
                 "--labels", "bin,ply", "--view", "bev"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["render", str(scans / "frame.ply"), "-o", str(out), "--labels", "a,b"]) == 2


def test_without_weights_the_bundled_mini_model_completes(scans, tmp_path, capsys):
    out = tmp_path / "bundled.ply"
    assert main(["complete", str(scans / "000000.bin"), "-o", str(out), "--steps", "1", "--no-refine"]) == 0
    err = capsys.readouterr().err
    assert "teacher from the bundled mini weights" in err, err
    assert len(read_cloud(out)) > 10_000  # 4,000 sampled points x 10, cropped
