"""Checkpoints: our safetensors format, import/export of the reference Lightning .ckpt layouts,
the weights-only safety of the importer, and `ddpo convert`.

The reference files are written here in the layouts the reference scripts save (LiDiff
diff_net/refine_net, ScoreLiDAR, Distillation-DPO, the Diffusion-DPO teacher); no downloads.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ddpo_ros import checkpoint as ck
from ddpo_ros import reference_ckpt as ref_ck
from ddpo_ros.checkpoint import CheckpointError, build_models, check_state, load_checkpoint, save_checkpoint
from ddpo_ros.frontends import convert
from ddpo_ros.frontends.cli import main
from ddpo_ros.reference_ckpt import export_reference, import_reference
from ddpo_ros.config import Config, ConfigError, DiffusionConfig, ModelConfig, to_dict
from ddpo_ros.models import ROLE_BUILDERS

TINY = ModelConfig(width=0.125)  # channels 4, 4, 8, 16, 32, 32, 16, 12, 12
LIDIFF_HP = {"experiment": {"id": "lidiff"}, "data": {"resolution": 0.05, "num_points": 180000},
             "diff": {"beta_start": 3.5e-5, "beta_end": 0.01, "beta_func": "linear", "t_steps": 500,
                      "s_steps": 50}, "train": {"lr": 1e-4, "uncond_w": 6.0}}


def make_net(role: str, seed: int, cfg: ModelConfig = TINY):
    """A network of `role` with non-trivial BN statistics, so round trips compare real values."""
    torch.manual_seed(seed)
    net = ROLE_BUILDERS[role](cfg)
    with torch.no_grad():
        for name, t in net.state_dict().items():  # these share memory with the module
            if name.endswith("running_mean") or name.endswith("bn.bias"):
                t.normal_(0, 0.05)
            elif name.endswith("running_var") or name.endswith("bn.weight"):
                t.uniform_(0.7, 1.3)
            elif name.endswith("num_batches_tracked"):
                t.fill_(1234 + seed)
    return net.eval()


@pytest.fixture(scope="module")
def nets():
    """Distinct tiny networks per role (different seeds), so a wrong prefix mapping shows."""
    roles = ["teacher", "student", "ta", "ta_win", "ta_lose", "encoder", "refiner"]
    return {r: make_net(r, seed=i) for i, r in enumerate(roles)}


def sd(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def write_ref(path, prefixed: dict, hp=None, **top):
    """A Lightning-shaped checkpoint: prefix -> state dict, plus hyper_parameters and counters."""
    obj = {"epoch": 3, "global_step": 100, "pytorch-lightning_version": "1.9.5",
           "state_dict": {p + k: v for p, st in prefixed.items() for k, v in st.items()}, **top}
    if hp is not None:
        obj["hyper_parameters"] = hp
    torch.save(obj, path)
    return path


def assert_same_state(a: dict, b: dict):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


@contextlib.contextmanager
def fake_lightning():
    """`pytorch_lightning.utilities.parsing.AttributeDict` exists only inside this block."""
    names = ["pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing"]
    assert not any(n in sys.modules for n in names)
    mods = {n: types.ModuleType(n) for n in names}

    class AttributeDict(dict):
        pass

    AttributeDict.__module__, AttributeDict.__qualname__ = names[-1], "AttributeDict"
    mods[names[-1]].AttributeDict = AttributeDict
    sys.modules.update(mods)
    try:
        yield AttributeDict
    finally:
        for n in names:
            del sys.modules[n]


# --- reference layouts ----------------------------------------------------------------------
def test_lidiff_round_trip_is_lossless(tmp_path, nets):
    ref = write_ref(tmp_path / "diff_net.ckpt", {"model.": sd(nets["teacher"]), "partial_enc.": sd(nets["encoder"])},
                    hp=LIDIFF_HP)
    state, config, info = import_reference([ref])
    assert sorted(state) == ["encoder", "teacher"]
    assert config.model == ModelConfig(width=0.125)
    assert config.diffusion == DiffusionConfig(num_train_timesteps=500, beta_start=3.5e-5, beta_end=0.01)
    assert info["roles"] == {"teacher": "diff_net.ckpt:model.", "encoder": "diff_net.ckpt:partial_enc."}
    assert info["global_step"] == 100

    ours = save_checkpoint(tmp_path / "w.safetensors", state, config, step=100, extra={"hyper_parameters": LIDIFF_HP},
                           source="diff_net.ckpt")
    loaded = load_checkpoint(ours)
    assert loaded.roles == ("teacher", "encoder") and loaded.step == 100 and loaded.config == config
    assert loaded.source == "diff_net.ckpt" and loaded.path == str(ours)
    assert loaded.state["teacher"]["stem.1.bn.num_batches_tracked"].dtype == torch.int64
    assert loaded.state["teacher"]["stem.1.bn.num_batches_tracked"].item() == 1234

    back = export_reference(loaded, tmp_path / "back.ckpt", "lidiff")
    obj = torch.load(back, weights_only=True)  # our export needs no allowlist at all
    original = torch.load(ref, weights_only=True)["state_dict"]
    assert_same_state(dict(sorted(obj["state_dict"].items())), dict(sorted(original.items())))
    hp = obj["hyper_parameters"]
    assert hp["diff"]["t_steps"] == 500 and hp["diff"]["beta_end"] == 0.01 and hp["train"]["uncond_w"] == 6.0
    assert hp["data"]["resolution"] == 0.05 and obj["global_step"] == 100
    # ... and the export imports back to the same weights and config.
    state2, config2, _ = import_reference([back])
    assert config2 == config
    for role in state:
        assert_same_state(state2[role], state[role])


def test_lightning_extras_load_through_inert_stand_ins(tmp_path, nets):
    """AttributeDict hyper_parameters (class not installed when loading), numpy values and an
    argparse.Namespace in callback state: loaded as plain data, without the real classes."""
    with fake_lightning() as AttributeDict:
        hp = AttributeDict(LIDIFF_HP)
        callbacks = {"ModelCheckpoint{'monitor': None}": {
            "best_model_score": torch.tensor(0.5), "kth_value": np.float64(0.25), "ids": np.arange(3),
            "dtype": np.dtype("float32"), "args": argparse.Namespace(lr=1e-4)}}
        ref = write_ref(tmp_path / "diff_net.ckpt",
                        {"model.": sd(nets["teacher"]), "partial_enc.": sd(nets["encoder"])},
                        hp=hp, callbacks=callbacks, optimizer_states=[{"state": {}, "param_groups": [{"lr": 1e-4}]}])
    assert "pytorch_lightning" not in sys.modules
    with pytest.raises(Exception, match="not an allowed global"):  # plain weights_only refuses this file
        torch.load(ref, weights_only=True)
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(ref)) == {
        "pytorch_lightning.utilities.parsing.AttributeDict", "argparse.Namespace", "numpy.dtype", "numpy.ndarray",
        "numpy._core.multiarray.scalar", "numpy._core.multiarray._reconstruct"}
    obj = ref_ck._torch_load(ref)
    assert type(obj["hyper_parameters"]) is dict and obj["hyper_parameters"] == LIDIFF_HP
    assert isinstance(obj["callbacks"]["ModelCheckpoint{'monitor': None}"]["args"], ref_ck._Namespace)
    state, config, info = import_reference([ref])
    assert config.diffusion.num_train_timesteps == 500
    assert info["hyper_parameters"] == LIDIFF_HP
    assert_same_state(state["teacher"], sd(nets["teacher"]))


def test_namespace_hyper_parameters(tmp_path, nets):
    ref = write_ref(tmp_path / "a.ckpt", {"model.": sd(nets["teacher"])}, hp=argparse.Namespace(**LIDIFF_HP))
    _, config, _ = import_reference([ref])
    assert config.diffusion.beta_end == 0.01


def test_prefix_table():
    assert ref_ck.PREFIX_ROLES == {
        "model.": "teacher", "partial_enc.": "encoder", "model_refine.": "refiner", "generator.": "student",
        "teacher.": "teacher", "auxDiff.": "ta", "auxDiffBetter.": "ta_win", "auxDiffWorse.": "ta_lose",
        "DiffModel.": "teacher", "DM_encoder.": "encoder"}


def test_refine_layout(tmp_path):
    refiner = make_net("refiner", 3, ModelConfig(width=0.125, refine_up_factor=4))
    ref = write_ref(tmp_path / "refine_net.ckpt", {"model_refine.": sd(refiner)})
    state, config, _ = import_reference([ref])
    assert list(state) == ["refiner"]
    assert config.model.refine_up_factor == 4 and config.model.width == 0.125
    assert config.diffusion == DiffusionConfig()
    out = export_reference(state, tmp_path / "back.ckpt", "lidiff_refine")
    assert_same_state(torch.load(out, weights_only=True)["state_dict"],
                      {"model_refine." + k: v for k, v in sd(refiner).items()})


@pytest.mark.parametrize("layout, prefixes", [
    ("scorelidar", {"generator.": "student", "partial_enc.": "encoder", "teacher.": "teacher", "auxDiff.": "ta"}),
    ("distillation_dpo", {"generator.": "student", "partial_enc.": "encoder", "teacher.": "teacher",
                          "auxDiffBetter.": "ta_win", "auxDiffWorse.": "ta_lose"}),
    ("ddpo_teacher", {"DiffModel.": "teacher", "DM_encoder.": "encoder"}),
])
def test_distillation_layouts(tmp_path, nets, layout, prefixes):
    ref = write_ref(tmp_path / f"{layout}.ckpt", {p: sd(nets[r]) for p, r in prefixes.items()})
    state, config, info = import_reference([ref])
    assert sorted(state) == sorted(prefixes.values())
    for role in state:  # each prefix went to its own role (the nets differ per role)
        assert_same_state(state[role], sd(nets[role]))
    # No hyper_parameters (Distillation-DPO saves none): the hard-coded linear 3.5e-5..0.007, T=1000.
    assert config.diffusion == DiffusionConfig(num_train_timesteps=1000, beta_start=3.5e-5, beta_end=0.007)
    out = export_reference(state, tmp_path / "back.ckpt", layout)
    assert_same_state(dict(sorted(torch.load(out, weights_only=True)["state_dict"].items())),
                      dict(sorted(torch.load(ref, weights_only=True)["state_dict"].items())))


def test_merge_two_files(tmp_path, nets):
    dd = write_ref(tmp_path / "distillationdpo_st.ckpt", {"generator.": sd(nets["student"]),
                                                          "partial_enc.": sd(nets["encoder"])})
    refine = write_ref(tmp_path / "refine_net.ckpt", {"model_refine.": sd(nets["refiner"])})
    state, config, info = import_reference([dd, refine])
    assert sorted(state) == ["encoder", "refiner", "student"]
    assert info["roles"]["refiner"] == "refine_net.ckpt:model_refine."
    assert_same_state(state["refiner"], sd(nets["refiner"]))
    # The same role twice is fine when identical ...
    again = write_ref(tmp_path / "enc_copy.ckpt", {"DM_encoder.": sd(nets["encoder"])})
    assert sorted(import_reference([dd, again])[0]) == ["encoder", "student"]
    # ... and an error when not.
    other = write_ref(tmp_path / "other.ckpt", {"partial_enc.": sd(make_net("encoder", seed=99))})
    with pytest.raises(CheckpointError, match=r"other\.ckpt: role 'encoder' is also in .*distillationdpo_st\.ckpt"):
        import_reference([dd, other])


def test_roles_filter_and_prefix_overlap(tmp_path, nets):
    ref = write_ref(tmp_path / "dd.ckpt", {"generator.": sd(nets["student"]), "auxDiffBetter.": sd(nets["ta_win"]),
                                           "auxDiff.": sd(nets["ta"]), "partial_enc.": sd(nets["encoder"])})
    state, _, _ = import_reference([ref], roles=["ta_win", "encoder"])
    assert sorted(state) == ["encoder", "ta_win"]
    assert_same_state(state["ta_win"], sd(nets["ta_win"]))  # "auxDiff." did not swallow "auxDiffBetter."
    with pytest.raises(CheckpointError, match=r"no weights for role\(s\) \['refiner'\]"):
        import_reference([ref], roles=["student", "refiner"])


def test_unknown_prefix_is_an_error_even_with_roles(tmp_path, nets):
    st = sd(nets["teacher"])
    ref = write_ref(tmp_path / "ema.ckpt", {"model.": st, "ema_model.": {"stem.0.kernel": st["stem.0.kernel"]}})
    for roles in (None, ["teacher"]):
        with pytest.raises(CheckpointError,
                           match=r"ema\.ckpt: keys with no known prefix .*ema_model\.stem\.0\.kernel \(1\)"):
            import_reference([ref], roles=roles)


def test_bare_state_dict_and_ddp_prefix(tmp_path, nets):
    path = tmp_path / "bare.pt"
    torch.save({"module.model." + k: v for k, v in sd(nets["teacher"]).items()}, path)
    state, _, info = import_reference([path])
    assert list(state) == ["teacher"] and info["global_step"] is None
    assert_same_state(state["teacher"], sd(nets["teacher"]))


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, nets):
    st = sd(nets["teacher"])
    del st["stage1.0.net.1.bn.running_var"]
    st["stage9.0.kernel"] = torch.zeros(8, 4, 4)
    st["last.2.weight"] = torch.zeros(4, 20)
    ref = write_ref(tmp_path / "broken.ckpt", {"model.": st})
    with pytest.raises(CheckpointError) as err:
        import_reference([ref])
    msg = str(err.value)
    assert msg.startswith(f"{ref}: role 'teacher' does not fit its network")
    assert "missing keys: stage1.0.net.1.bn.running_var (1)" in msg
    assert "unexpected keys: stage9.0.kernel (1)" in msg
    assert "shape mismatches: last.2.weight [4, 20] (network [3, 20]) (1)" in msg


def test_long_key_lists_are_capped_with_a_count(nets):
    net = nets["encoder"]
    n = len(net.state_dict())
    with pytest.raises(CheckpointError,
                       match=rf"x\.ckpt: role 'encoder' .*missing keys: stem\.0\.kernel, .* and {n - 8} more \({n}\)$"):
        check_state(net, {}, "encoder", "x.ckpt")


def test_width_no_width_explains(tmp_path, nets):
    st = sd(nets["teacher"])
    st["stage4.2.net.3.kernel"] = torch.zeros(27, 100, 100)
    ref = write_ref(tmp_path / "odd.ckpt", {"model.": st})
    with pytest.raises(CheckpointError, match="role 'teacher': no width explains 4 stem and 100 stage4 channels"):
        import_reference([ref])


def test_full_width_import(tmp_path):
    teacher, encoder = ROLE_BUILDERS["teacher"](ModelConfig()), ROLE_BUILDERS["encoder"](ModelConfig())
    ref = write_ref(tmp_path / "diff_net.ckpt", {"model.": teacher.state_dict(), "partial_enc.": encoder.state_dict()},
                    hp=LIDIFF_HP)
    state, config, _ = import_reference([ref])
    assert config.model.width == 1.0
    assert state["teacher"]["stem.0.kernel"].shape == (27, 3, 32)
    assert state["teacher"]["stage4.2.net.3.kernel"].shape == (27, 256, 256)
    assert state["teacher"]["up1.1.0.downsample.0.kernel"].shape == (384, 256)  # ME's 2-D 1x1x1 kernel
    assert convert._param_count(state["teacher"]) == 24_174_515
    assert convert._param_count(state["encoder"]) == 8_497_952


# --- safety ---------------------------------------------------------------------------------
class _Exec:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


class _System(_Exec):
    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.mark.parametrize("payload, name", [(_Exec, "builtins.exec"), (_System, "system")])
def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path, nets, payload, name):
    marker = tmp_path / "pwned"
    ref = write_ref(tmp_path / "evil.ckpt", {"model.": sd(nets["teacher"])}, hp={"diff": payload(marker)})
    torch.load(ref, weights_only=False)  # the payload is live: a plain unpickle runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match=rf"evil\.ckpt: refused: .*{name}.*the file was not loaded"):
        import_reference([ref])
    assert not marker.exists()
    assert main(["convert", str(ref), "-o", str(tmp_path / "out.safetensors")]) == 2
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_unknown_class_is_refused(tmp_path, nets):
    with fake_lightning() as AttributeDict:
        AttributeDict.__module__ = "mylab.config"  # not on the allowlist
        sys.modules["mylab"] = sys.modules["mylab.config"] = types.ModuleType("mylab.config")
        sys.modules["mylab.config"].AttributeDict = AttributeDict
        try:
            ref = write_ref(tmp_path / "c.ckpt", {"model.": sd(nets["teacher"])}, hp=AttributeDict(LIDIFF_HP))
        finally:
            del sys.modules["mylab"], sys.modules["mylab.config"]
    with pytest.raises(CheckpointError, match=r"c\.ckpt: refused: .*\['mylab\.config\.AttributeDict'\]"):
        import_reference([ref])


# --- our format -----------------------------------------------------------------------------
def test_load_rejects_non_safetensors_and_bad_metadata(tmp_path, nets):
    ref = write_ref(tmp_path / "diff_net.ckpt", {"model.": sd(nets["teacher"])})
    with pytest.raises(CheckpointError, match=r"diff_net\.ckpt: not a readable safetensors file"):
        load_checkpoint(ref)
    with pytest.raises(CheckpointError, match=r"nothere\.safetensors: not a readable safetensors file"):
        load_checkpoint(tmp_path / "nothere.safetensors")
    t = {"teacher.a": torch.zeros(1)}
    good = {"format": "ddpo_ros/1", "config": '{"model": {"width": 0.125}}', "roles": '["teacher"]', "step": "7"}
    cases = [({"format": "other/2"}, CheckpointError, "metadata 'format' is 'other/2', expected 'ddpo_ros/1'"),
             ({"format": None}, CheckpointError, "metadata 'format' is None"),
             ({"config": '{"model": {"wdth": 1}}'}, ConfigError,
              r"bad 'config' metadata: model: unknown key\(s\) \['wdth'\]"),
             ({"roles": '["teacher", "critic"]'}, CheckpointError, r"unknown role\(s\) \['critic'\]"),
             ({"roles": '["student"]'}, CheckpointError, r"tensors of roles not listed .*teacher\.a \(1\)")]
    for i, (change, error, message) in enumerate(cases):
        meta = {k: v for k, v in {**good, **change}.items() if v is not None}
        path = tmp_path / f"m{i}.safetensors"
        save_file(t, str(path), metadata=meta)
        with pytest.raises(error, match=rf"m{i}\.safetensors: .*{message}"):
            load_checkpoint(path)
    save_file(t, str(tmp_path / "ok.safetensors"), metadata=good)
    ok = load_checkpoint(tmp_path / "ok.safetensors")
    assert ok.step == 7 and ok.config.model.width == 0.125 and ok.extra == {} and ok.source is None


def test_save_is_atomic_and_validates_roles(tmp_path, nets, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_checkpoint(path, {"teacher": nets["teacher"], "student": nets["teacher"]}, Config(TINY), step=5,
                    extra={"note": "x"})  # one module under two roles: shared memory is fine
    assert os.listdir(tmp_path) == ["w.safetensors"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not safetensors' 0600: weights are shared
    before = path.read_bytes()
    ckpt = load_checkpoint(path)
    assert ckpt.extra == {"note": "x"} and ckpt.step == 5 and ckpt.roles == ("teacher", "student")
    assert_same_state(ckpt.state["student"], sd(nets["teacher"]))

    def half_write_then_fail(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", half_write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"teacher": nets["student"]}, Config(TINY))
    assert os.listdir(tmp_path) == ["w.safetensors"] and path.read_bytes() == before
    with pytest.raises(CheckpointError, match=r"w2\.safetensors: unknown role\(s\) \['critic'\]"):
        save_checkpoint(tmp_path / "w2.safetensors", {"critic": nets["teacher"]}, Config(TINY))


def test_build_models_reproduce_the_original_outputs(tmp_path, nets, scan_xyz):
    path = save_checkpoint(tmp_path / "w.safetensors", {r: nets[r] for r in ("teacher", "encoder", "refiner")},
                           Config(TINY))
    built = build_models(load_checkpoint(path))
    assert set(built) == {"teacher", "encoder", "refiner"}
    assert all(not m.training for m in built.values())
    gen = torch.Generator().manual_seed(1)
    pts = torch.from_numpy(scan_xyz)
    partial = pts[torch.randperm(len(pts), generator=gen)[:200]][None]
    noisy = (pts[torch.randperm(len(pts), generator=gen)[:2000]] + 0.1 * torch.randn(2000, 3, generator=gen))[None]
    t = torch.tensor([500])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead, a lot of it on a busy machine
    try:
        with torch.no_grad():
            want = nets["teacher"](noisy, nets["encoder"](partial), t)
            got = built["teacher"](noisy, built["encoder"](partial), t)
            assert want.shape == (1, 2000, 3) and want.abs().max() > 0
            assert torch.equal(got, want)
            assert torch.equal(built["refiner"](partial), nets["refiner"](partial))
    finally:
        torch.set_num_threads(threads)
    only = build_models(load_checkpoint(path), roles=["encoder"])
    assert list(only) == ["encoder"]
    ckpt = load_checkpoint(path)
    ckpt.state["teacher"]["last.0.weight"] = torch.zeros(20, 5)
    with pytest.raises(CheckpointError,
                       match=r"w\.safetensors: role 'teacher' .*last\.0\.weight \[20, 5\] \(network \[20, 12\]\)"):
        build_models(ckpt, roles=["teacher"])
    with pytest.raises(CheckpointError, match=r"has no role 'student'"):
        build_models(ckpt, roles=["student"])


def test_export_needs_its_roles(tmp_path, nets):
    with pytest.raises(CheckpointError, match=r"layout 'scorelidar' needs role\(s\) \['ta'\]"):
        export_reference({r: sd(nets[r]) for r in ("student", "encoder", "teacher")}, tmp_path / "x.ckpt", "scorelidar")
    with pytest.raises(CheckpointError, match="unknown layout 'lidif'"):
        export_reference({}, tmp_path / "x.ckpt", "lidif")
    assert not (tmp_path / "x.ckpt").exists()


# --- CLI ------------------------------------------------------------------------------------
def test_cli_import_and_export(tmp_path, nets, capsys):
    dd = write_ref(tmp_path / "distillationdpo_st.ckpt", {
        "generator.": sd(nets["student"]), "partial_enc.": sd(nets["encoder"]), "teacher.": sd(nets["teacher"]),
        "auxDiffBetter.": sd(nets["ta_win"]), "auxDiffWorse.": sd(nets["ta_lose"])})
    refine = write_ref(tmp_path / "refine_net.ckpt", {"model_refine.": sd(nets["refiner"])})
    out = tmp_path / "student.safetensors"
    assert main(["convert", str(dd), str(refine), "-o", str(out), "--roles", "student,encoder,refiner"]) == 0
    text = capsys.readouterr().out
    n_student = convert._param_count(sd(nets["student"]))
    assert f"student  {n_student:>12,d} parameters" in text and "width 0.125" in text and f"wrote {out}" in text
    ckpt = load_checkpoint(out)
    assert ckpt.roles == ("student", "encoder", "refiner") and ckpt.step == 100
    assert "distillationdpo_st.ckpt:generator." in ckpt.source

    back = tmp_path / "lidiff_refine.ckpt"
    assert main(["convert", str(out), "--layout", "lidiff_refine", "-o", str(back)]) == 0
    assert_same_state(torch.load(back, weights_only=True)["state_dict"],
                      {"model_refine." + k: v for k, v in sd(nets["refiner"]).items()})
    capsys.readouterr()
    assert main(["convert", str(out), "--layout", "lidiff", "-o", str(tmp_path / "l.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs role(s) ['teacher']" in err and "Traceback" not in err


def test_cli_keeps_lidiff_hyper_parameters_for_export(tmp_path, nets, capsys):
    with fake_lightning() as AttributeDict:
        ref = write_ref(tmp_path / "diff_net.ckpt",
                        {"model.": sd(nets["teacher"]), "partial_enc.": sd(nets["encoder"])},
                        hp=AttributeDict(LIDIFF_HP))
    out, back = tmp_path / "w.safetensors", tmp_path / "back.ckpt"
    assert main(["convert", str(ref), "-o", str(out)]) == 0
    assert "T=500, betas 3.5e-05..0.01" in capsys.readouterr().out
    assert load_checkpoint(out).extra == {"hyper_parameters": LIDIFF_HP}
    assert main(["convert", str(out), "--layout", "lidiff", "-o", str(back)]) == 0
    obj = torch.load(back, weights_only=True)
    assert {k: v for k, v in obj["hyper_parameters"].items() if k != "ddpo_ros"} == LIDIFF_HP
    assert obj["hyper_parameters"]["ddpo_ros"] == to_dict(load_checkpoint(out).config)


def test_merge_our_files_teacher_plus_refiner(tmp_path, nets, capsys):
    """A teacher run's weights (refine off, it had no refiner) + a refine run's: one Completer file."""
    from dataclasses import replace

    from ddpo_ros.config import CompletionConfig
    teacher_cfg = Config(model=TINY, diffusion=DiffusionConfig(num_train_timesteps=500),
                         completion=CompletionConfig(denoiser="teacher", num_points=300, refine=False))
    refine_cfg = Config(model=TINY)  # its schedule and completion settings mean nothing
    a = save_checkpoint(tmp_path / "teacher.safetensors", {"encoder": nets["encoder"], "teacher": nets["teacher"]},
                        teacher_cfg, step=40)
    b = save_checkpoint(tmp_path / "refiner.safetensors", {"refiner": nets["refiner"]}, refine_cfg, step=7)
    out = ck.merge_checkpoints([a, b], tmp_path / "merged.safetensors")
    m = load_checkpoint(out)
    assert m.roles == ("encoder", "teacher", "refiner") and m.step == 40
    assert m.config == replace(teacher_cfg, completion=replace(teacher_cfg.completion, refine=True))
    for role in m.roles:
        assert_same_state(m.state[role], sd(nets[role]))
    assert json.loads(m.source)["roles"]["refiner"] == str(b)
    # the refiner-only file first: settings still come from the teacher's file
    assert ck.merge([b, a]).config.diffusion.num_train_timesteps == 500
    assert ck.merge([a, b], roles=["refiner", "encoder"]).roles == ("encoder", "refiner")

    # `ddpo convert a.safetensors b.safetensors -o merged.safetensors`
    cli_out = tmp_path / "cli.safetensors"
    assert main(["convert", str(a), str(b), "-o", str(cli_out)]) == 0
    assert f"wrote {cli_out}" in capsys.readouterr().out
    assert load_checkpoint(cli_out).roles == m.roles
    # one file + --roles: a subset, to merge with another refiner in place of its own
    sub = tmp_path / "sub.safetensors"
    assert main(["convert", str(cli_out), "--roles", "encoder,teacher", "-o", str(sub)]) == 0
    assert load_checkpoint(sub).roles == ("encoder", "teacher")
    assert load_checkpoint(sub).config == teacher_cfg  # refine off again: no refiner left
    assert_same_state(load_checkpoint(sub).state["teacher"], sd(nets["teacher"]))
    # one file + --set: the same networks shipped with other sampling settings; the networks stay put
    tuned = tmp_path / "tuned.safetensors"
    assert main(["convert", str(cli_out), "--set", "completion.start_t=125", "--set", "completion.steps=4",
                 "-o", str(tuned)]) == 0
    t = load_checkpoint(tuned)
    assert t.config == replace(m.config, completion=replace(m.config.completion, start_t=125, steps=4))
    for role in m.roles:
        assert_same_state(t.state[role], m.state[role])
    for bad, why in ((["--set", "model.width=2"], "expected completion.KEY=VALUE"),
                     (["--set", "completion.start=1"], "start"), (["--set", "completion.start_t=-5"], "start_t")):
        assert main(["convert", str(cli_out), *bad, "-o", str(tmp_path / "bad.safetensors")]) == 2
        assert why in capsys.readouterr().err
    assert not (tmp_path / "bad.safetensors").exists()

    # one shape per file, one tensor set per role, one schedule per diffusion file
    wide = save_checkpoint(tmp_path / "wide.safetensors", {"refiner": make_net("refiner", 0, ModelConfig(width=0.25))},
                           Config(model=ModelConfig(width=0.25)))
    with pytest.raises(CheckpointError, match=r"wide\.safetensors: model config differs .*width 0\.125 vs 0\.25"):
        ck.merge([a, wide])
    other = save_checkpoint(tmp_path / "other.safetensors", {"encoder": make_net("encoder", 99)}, teacher_cfg)
    with pytest.raises(CheckpointError, match=r"other\.safetensors: role 'encoder' is also in .*teacher\.safetensors"):
        ck.merge([a, other])
    sched = save_checkpoint(tmp_path / "sched.safetensors", {"student": nets["student"]}, Config(model=TINY))
    with pytest.raises(CheckpointError, match=r"sched\.safetensors: diffusion schedule differs"):
        ck.merge([a, sched])
    with pytest.raises(CheckpointError, match=r"no weights for role\(s\) \['student'\]"):
        ck.merge([a, b], roles=["student"])
    assert main(["convert", str(a), str(tmp_path / "o.ckpt"), "-o", str(tmp_path / "o.safetensors")]) == 2
    assert "needs --layout" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["convert", "{junk}", "-o", "{tmp}/o.safetensors"], "junk.ckpt: not a readable PyTorch checkpoint"),
    (["convert", "{junk}", "-o", "{tmp}/o.safetensors", "--roles", "teacher,critic"], "unknown role(s) ['critic']"),
    (["convert", "{tmp}/a.safetensors", "-o", "{tmp}/o.safetensors"], "needs --layout"),
    (["convert", "{junk}", "--layout", "lidiff", "-o", "{tmp}/o.ckpt"], "exactly one .safetensors"),
])
def test_cli_errors_exit_2_with_one_line(tmp_path, capsys, argv, message):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"this is not a checkpoint")
    assert main([a.format(junk=junk, tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddpo convert: error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "o.safetensors").exists()
