"""Surrogate: features against closed forms, losses, models, data pipeline, training, checkpoints, CLI.

Stores are made here (tests/synthetic_store.py: a closed-form local response),
never shipped. Everything is serial: the surrogate has no MPI (its parallelism
is torchrun, tested with two CPU processes).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from clitools import assert_one_line_error
from solver import lattice
from solver.errors import ConfigError, ModelError, StoreError
from solver.materials import material_from_config
from solver.rotations import axis_angle_to_matrix, cubic_symmetry_operators, random_matrices
from solver.tensors import rotate_stiffness
from surrogate import checkpoint, data, features, losses
from surrogate.config import train_config
from surrogate.models import Surrogate
from synthetic_store import make_store

pytestmark = pytest.mark.skip_in_parallel

SMALL = {"ensemble": 2, "epochs": 2, "batch_size": 8, "model_kwargs": {"width": 8, "modes": 3, "layers": 2},
         "split": {"validation": 0.2, "test": 0.1, "held_out": [{"direction": [1, 1, 1]}]}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return str(make_store(tmp_path_factory.mktemp("syn") / "syn.zarr", samples=16, n=8, steps=3))


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    from surrogate.train import train

    out = tmp_path_factory.mktemp("model") / "model"
    train(store, out, SMALL, quiet=True)
    return out


# ---------------------------------------------------------------- features (closed forms)

def test_orientation_encoding_is_cubic_invariant_and_separates_orientations():
    rng = np.random.default_rng(1)
    g = random_matrices(50, rng)
    T = features.cubic_orientation_tensor(g)
    for S in cubic_symmetry_operators():
        np.testing.assert_allclose(features.cubic_orientation_tensor(S @ g), T, atol=1e-12)
    # distinct orientations (not symmetry-related) give distinct encodings
    d = np.linalg.norm(T[:, None] - T[None], axis=-1) + np.eye(50)
    assert d.min() > 1e-3


def test_orientation_tensor_gives_the_rotated_cubic_stiffness():
    # C_lab = C12 I(x)I + 2 C44 I_sym + (C11 - C12 - 2 C44) T, the cubic identity the encoding relies on
    m = material_from_config({"preset": "Cu"})
    C = m.stiffness_tensor()
    g = random_matrices(5, np.random.default_rng(2))
    I = np.eye(3)
    Isym = 0.5 * (np.einsum("ik,jl->ijkl", I, I) + np.einsum("il,jk->ijkl", I, I))
    T4 = np.einsum("...ai,...aj,...ak,...al->...ijkl", g, g, g, g)
    C_lab = m.C12 * np.einsum("ij,kl->ijkl", I, I) + 2 * m.C44 * Isym + (m.C11 - m.C12 - 2 * m.C44) * T4
    np.testing.assert_allclose(C_lab, rotate_stiffness(C, np.swapaxes(g, -1, -2)), rtol=1e-10, atol=1e-3)
    # and the 15 independent components are those of T4
    T = features.cubic_orientation_tensor(g)
    np.testing.assert_allclose(T[:, 0], T4[:, 0, 0, 0, 0])
    np.testing.assert_allclose(T[:, 1], T4[:, 0, 0, 0, 1])


@pytest.mark.parametrize("axis, largest, count", [([0, 0, 1], 0.408, 8), ([1, 1, 1], 0.272, 6), ([1, 2, 3], 0.467, 1)])
def test_schmid_factors_of_uniaxial_tension(axis, largest, count):
    # reference/validation.md: FCC {111}<110> largest Schmid factors
    d = np.asarray(axis, float) / np.linalg.norm(axis)
    S = features.nominal_stress_direction("tension", [1, 0, 0])
    # a crystal whose [axis] points along lab x: rows of g are crystal axes in the lab
    R = _rotation_taking(d, np.array([1.0, 0, 0]))
    g = R.T  # lab x = R d  => crystal direction d is lab x
    m = np.abs(features.schmid_factors(g, S, "fcc"))
    assert m.max() == pytest.approx(largest, abs=1e-3)
    assert int(np.sum(np.isclose(m, m.max(), atol=1e-6))) == count


def _rotation_taking(a, b):
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if np.linalg.norm(v) < 1e-12:
        return np.eye(3)
    return axis_angle_to_matrix(v / np.linalg.norm(v), math.atan2(np.linalg.norm(v), c))


def test_nominal_stress_directions():
    d = np.array([1.0, 1.0, 0.0]) / math.sqrt(2)
    np.testing.assert_allclose(features.nominal_stress_direction("tension", d), np.outer(d, d), atol=1e-12)
    np.testing.assert_allclose(features.nominal_stress_direction("compression", d), -np.outer(d, d), atol=1e-12)
    for mode in ("shear", "biaxial", "plane_strain"):
        S = features.nominal_stress_direction(mode, d)
        assert np.linalg.norm(S) == pytest.approx(1.0)
        np.testing.assert_allclose(S, S.T)
    assert np.trace(features.nominal_stress_direction("shear", d)) == pytest.approx(0.0, abs=1e-12)


def test_lattice_rotation_recovers_a_known_rotation_under_symmetric_relabelling():
    rng = np.random.default_rng(3)
    g0 = random_matrices(20, rng)
    axis = np.array([0.3, -0.2, 0.9]) / np.linalg.norm([0.3, -0.2, 0.9])
    omega = np.radians(0.7) * axis
    g = features.deformed_orientation(g0, np.broadcast_to(omega, (20, 3)))
    S = cubic_symmetry_operators()[rng.integers(0, 24, 20)]
    np.testing.assert_allclose(features.lattice_rotation(g0, S @ g), np.broadcast_to(omega, (20, 3)), atol=1e-10)


def test_boundary_features_flag_and_misorientation():
    gid = np.zeros((4, 4), dtype=int)
    gid[:, 2:] = 1
    g = np.broadcast_to(np.eye(3), (4, 4, 3, 3)).copy()
    g[:, 2:] = axis_angle_to_matrix(np.array([0, 0, 1.0]), np.radians(30.0))
    flag, angle = features.boundary_features(g, gid)
    assert flag.sum() == 16  # every column touches the other grain (periodic, two columns each)
    np.testing.assert_allclose(np.degrees(angle), 30.0, atol=1e-6)
    g[:, 2:] = axis_angle_to_matrix(np.array([0, 0, 1.0]), np.radians(90.0))  # a symmetry rotation
    assert np.degrees(features.boundary_features(g, gid)[1]).max() < 1e-5


# ---------------------------------------------------------------- losses

def test_divergence_of_an_analytic_stress_field():
    n = 64
    y, x = np.mgrid[0:n, 0:n].astype(float)
    k = 2 * np.pi / n
    s = np.zeros((1, 6, n, n))
    s[0, 0] = np.sin(k * x)        # d s11/dx = k cos(kx)
    s[0, 5] = np.cos(k * y)        # d s12/dy = -k sin(ky) ; d s12/dx = 0
    div = losses.divergence_2d(torch.tensor(s)).numpy()[0]
    # the central difference of a Fourier mode is exact up to the factor sin(k h) / (k h)
    np.testing.assert_allclose(div[0], np.sin(k) * (np.cos(k * x) - np.sin(k * y)), atol=1e-12)
    assert np.abs(div[0] - k * (np.cos(k * x) - np.sin(k * y))).max() < 2 * k ** 3 / 6  # second order
    assert np.abs(div[1]).max() < 1e-12 and np.abs(div[2]).max() < 1e-12
    assert losses.divergence_2d(torch.ones(2, 6, 8, 8)).abs().max() == 0


def test_disorientation_cosine_is_the_rotation_angle_and_ignores_symmetry():
    rng = np.random.default_rng(4)
    g0 = random_matrices(6, rng)
    g0t = torch.tensor(g0.reshape(6, 9).T.reshape(1, 9, 2, 3))
    wt = torch.zeros(1, 3, 2, 3, dtype=torch.float64)
    wp = torch.zeros_like(wt)
    wp[:, 2] = math.radians(0.05)
    cos = losses.disorientation_cosine(g0t, wp, wt)
    np.testing.assert_allclose(np.degrees(np.arccos(cos.numpy())), 0.05, rtol=1e-6)
    wp[:, 2] = math.pi / 2  # a 90 degree rotation about lab z maps a cube onto itself only if z is a cube axis
    wt[:, 2] = 0
    g_cube = torch.eye(3, dtype=torch.float64).reshape(9, 1, 1).expand(9, 2, 3)[None]
    assert float(torch.arccos(losses.disorientation_cosine(g_cube, wp, wt)).max()) < 1e-6


# ---------------------------------------------------------------- models

@pytest.mark.parametrize("backbone, kwargs", [("fno", {"width": 8, "modes": 4, "layers": 2}),
                                              ("unet", {"width": 8, "depth": 2})])
def test_models_are_translation_equivariant_and_normalisers_travel(backbone, kwargs):
    torch.manual_seed(0)
    m = Surrogate(backbone, backbone_kwargs=kwargs).eval()
    x, c, s = torch.randn(2, 30, 16, 16), torch.randn(2, 14), torch.randn(2, 12, 16, 16)
    out = m(x, c, s)
    shifted = m(torch.roll(x, (4, 8), (2, 3)), c, torch.roll(s, (4, 8), (2, 3)))
    torch.testing.assert_close(shifted["values"], torch.roll(out["values"], (4, 8), (2, 3)), atol=1e-4, rtol=1e-4)
    keys = m.state_dict().keys()
    assert {"field_norm.mean", "field_norm.std", "target_norm.std", "condition_norm.mean"} <= set(keys)


def test_fno_runs_across_resolutions_and_unet_refuses_odd_grids():
    m = Surrogate("fno", backbone_kwargs={"width": 8, "modes": 6, "layers": 2}).eval()
    for n in (8, 16, 40):
        assert m(torch.randn(1, 30, n, n), torch.randn(1, 14), torch.randn(1, 12, n, n))["values"].shape[-1] == n
    u = Surrogate("unet", backbone_kwargs={"width": 8, "depth": 3})
    with pytest.raises(ConfigError, match="divisible by 8"):
        u(torch.randn(1, 30, 12, 12), torch.randn(1, 14), torch.randn(1, 12, 12, 12))


def test_slip_head_is_equivariant_under_relabelling_of_the_systems():
    m = Surrogate("fno", backbone_kwargs={"width": 8, "modes": 3, "layers": 1}).eval()
    x, c, s = torch.randn(1, 30, 8, 8), torch.randn(1, 14), torch.randn(1, 12, 8, 8)
    perm = torch.randperm(12)
    signs = torch.tensor([1.0, -1.0] * 6)[:, None, None]  # symmetry rotations also flip some slip directions
    a = m(x, c, s)["slip_logits"]
    b = m(x, c, s[:, perm] * signs)["slip_logits"]
    torch.testing.assert_close(b, a[:, perm])


# ---------------------------------------------------------------- data

def test_splits_are_by_sample_disjoint_seeded_and_hold_out_by_rule(store):
    spec = data.SplitSpec.from_config({"validation": 0.2, "test": 0.2, "seed": 5,
                                       "held_out": [{"direction": [1, 1, 1]}]})
    a, b = data.make_splits(store, spec), data.make_splits(store, spec)
    assert a == b
    every = sum(a.values(), [])
    assert sorted(every) == list(range(16)) and len(set(every)) == 16
    import zarr
    dirs = zarr.open_group(store, mode="r")["load_direction"][:]
    held = [i for i in range(16) if np.allclose(np.abs(dirs[i]), 1 / math.sqrt(3))]
    assert a["held_out"] == held and held
    c = data.make_splits(store, data.SplitSpec.from_config({**spec.as_dict(), "seed": 6}))
    assert c["held_out"] == held and c["train"] != a["train"]
    with pytest.raises(ConfigError):
        data.SplitSpec.from_config({"held_out": [{"grain_size": 3}]})


def test_texture_rule_holds_out_the_samples_the_campaign_drew_with_that_texture(tmp_path):
    from solver.campaign import load_campaign, sample_plan

    spec = load_campaign(data.Path(__file__).resolve().parents[1] / "examples" / "campaign_default.yaml")
    path = make_store(tmp_path / "c.zarr", samples=12, n=4, steps=2, config=spec.config)
    split = data.make_splits(path, data.SplitSpec.from_config({"held_out": [{"texture": "cube"}]}))
    cube = [i for i in range(12) if sample_plan(spec, i)["texture"] == 1]
    assert split["held_out"] == cube and cube
    with pytest.raises(ConfigError, match="goss"):
        data.make_splits(path, data.SplitSpec.from_config({"held_out": [{"texture": "goss"}]}))
    with pytest.raises(StoreError, match="campaign"):
        data.make_splits(make_store(tmp_path / "s.zarr", samples=3, n=4, steps=2),
                         data.SplitSpec.from_config({"held_out": [{"texture": 0}]}))


def test_dataset_is_lazy_and_workers_see_the_same_items(store):
    ds = data.CampaignDataset(store, [0, 1, 2])
    assert ds._group is None and len(ds) == 3 * 2
    item = ds[3]
    assert item["sample"] == 1 and item["step"] == 2
    assert item["fields"].shape == (features.n_field_channels(12), 8, 8)
    from surrogate.train import collate
    serial = [b for b in torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)]
    parallel = [b for b in torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate, num_workers=2,
                                                           multiprocessing_context="spawn")]
    for p, q in zip(serial, parallel):
        torch.testing.assert_close(p["target"], q["target"])
    assert ds._group is not None  # opened by this process on first use


def test_stores_the_surrogate_cannot_learn_are_refused(tmp_path):
    path = make_store(tmp_path / "3d.zarr", samples=2, n=4, steps=2, grid=(2, 4, 4))
    with pytest.raises(StoreError, match="2-D maps"):
        data.store_info(path)
    with pytest.raises(StoreError, match="no campaign store"):
        data.store_info(tmp_path / "missing.zarr")


# ---------------------------------------------------------------- training, checkpoints, evaluation

def test_training_learns_the_closed_form_response(tmp_path):
    from surrogate.train import train

    bigger = make_store(tmp_path / "s.zarr", samples=64, n=8, steps=3, seed=1)
    cfg = {**SMALL, "epochs": 12, "model_kwargs": {"width": 16, "modes": 4, "layers": 2}, "learning_rate": 3e-3}
    meta = train(bigger, tmp_path / "m", cfg, quiet=True)
    for member in meta["metrics"]["members"]:
        # a model that learned nothing has nRMSE 1 (it predicts the mean)
        assert member["nrmse_stress"] < 0.7
        assert member["nrmse_slip"] < 0.7
    assert meta["calibration"]["scale"]["von_mises"] > 0 and meta["calibration"]["trust_scale"] > 0
    assert set(meta["splits"]) == {"train", "validation", "test", "held_out"}
    assert meta["training_domain"]["strain_max"] <= 0.01


class _GaussianEnsemble:
    """Errors exactly Gaussian with twice the reported spread: calibration must find the 2."""

    device = torch.device("cpu")

    def predict(self, fields, condition, schmid):
        from surrogate.uncertainty import von_mises

        g = torch.Generator().manual_seed(int(fields.sum() * 1e3) % 2 ** 31)
        target = fields  # the fake batches carry the target in `fields`
        spread = 0.1 * target.abs() + 1.0
        # the batches hold a uniaxial stress of ~1000: spreads from 0.5 % to 4 % of it give trusts from
        # ~0.5 to ~1, and the error moves the tolerance (5 % of the *predicted* stress) only a little
        vm = von_mises(target[:, :6])
        vm_spread = 5.0 + 35.0 * torch.rand(vm.shape, generator=g, dtype=vm.dtype)
        return {"values": target + 2.0 * spread * torch.randn(target.shape, generator=g, dtype=target.dtype),
                "spread": spread, "von_mises": vm + 2.0 * vm_spread * torch.randn(vm.shape, generator=g, dtype=vm.dtype),
                "von_mises_spread": vm_spread}


def _calibration_batches(n: int) -> list[dict]:
    """``n`` validation batches whose targets are random fields (stress 11 offset to keep von Mises away from 0)."""
    torch.manual_seed(0)
    batches = []
    for _ in range(n):
        t = torch.randn(4, 16, 16, 16, dtype=torch.float64) * 5.0
        t[:, 0] += 1000.0
        batches.append({"fields": t, "condition": None, "schmid": None, "target": t})
    return batches


def test_calibration_recovers_a_known_spread_factor():
    from surrogate.uncertainty import calibrate

    cal = calibrate(_GaussianEnsemble(), _calibration_batches(8), tolerance=0.05)
    for group in ("stress", "strain", "rotation", "slip"):
        assert cal["scale"][group] == pytest.approx(2.0, rel=0.03)
        assert cal["coverage"][group]["0.9"] == pytest.approx(0.9, abs=0.01)
    # the trust scale is fitted to the hits, not assumed: about 2 as well (the grid steps 12 %), and calibrated
    assert cal["trust_scale"] == pytest.approx(2.0, rel=0.15)
    assert cal["expected_calibration_error"] < 0.02


class _AgreeingEnsemble(_GaussianEnsemble):
    """A spread unrelated to the error (members that agree, or disagree, whatever their error)."""

    def predict(self, fields, condition, schmid):
        out = super().predict(fields, condition, schmid)
        g = torch.Generator().manual_seed(7)
        noise = 1e-9 * (1.0 + torch.rand(out["von_mises_spread"].shape, generator=g, dtype=torch.float64))
        return {**out, "von_mises_spread": noise}


def test_a_spread_that_says_nothing_gives_the_validation_hit_rate_as_trust():
    from surrogate.uncertainty import Ensemble, calibrate

    batches = _calibration_batches(4)
    cal = calibrate(_AgreeingEnsemble(), batches, tolerance=0.05)
    rate = cal["constant_trust"]
    assert rate is not None and 0.1 < rate < 0.99
    assert cal["expected_calibration_error"] < 1e-9  # a constant equal to the observed rate is calibrated
    assert cal["brier_score"] == pytest.approx(rate * (1 - rate))
    ens = Ensemble.__new__(Ensemble)
    ens.meta = {"calibration": cal, "config": {"trust_tolerance": 0.05}}
    trust = ens.trust({"von_mises": torch.ones(2, 3, 3), "von_mises_spread": torch.zeros(2, 3, 3)})
    assert torch.allclose(trust, torch.full((2, 3, 3), rate))
    # an informative spread keeps the spread-based trust
    assert calibrate(_GaussianEnsemble(), batches, tolerance=0.05)["constant_trust"] is None


def test_checkpoints_are_plain_and_checked(trained, tmp_path):
    ckpt = torch.load(trained / "member_0.pt", weights_only=True)  # plain types only
    assert ckpt["format"] == checkpoint.FORMAT and ckpt["model"]["kwargs"]["backbone"] == "fno"
    assert "target_norm.std" in ckpt["state_dict"] and ckpt["store"]["material"]["name"] == "Al-DAMASK"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a readable checkpoint"):
        checkpoint.load(bad)
    torch.save({"format": "someone-else/1"}, bad)
    with pytest.raises(ModelError, match="not a Slipstream surrogate checkpoint"):
        checkpoint.load(bad)


def test_resume_after_a_kill_gives_the_uninterrupted_result(store, tmp_path, monkeypatch):
    from surrogate import train as tr

    cfg = {**SMALL, "epochs": 3}
    tr.train(store, tmp_path / "full", cfg, quiet=True)
    calls = {"n": 0}
    real = tr.validate

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # killed during epoch 2 of member 0
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tr, "validate", dying)
    with pytest.raises(KeyboardInterrupt):
        tr.train(store, tmp_path / "cut", cfg, quiet=True)
    monkeypatch.setattr(tr, "validate", real)
    with pytest.raises(ModelError, match="--resume"):
        tr.train(store, tmp_path / "cut", cfg, quiet=True)
    with pytest.raises(ModelError, match="another config"):
        tr.train(store, tmp_path / "cut", {**cfg, "epochs": 4}, resume=True, quiet=True)
    tr.train(store, tmp_path / "cut", cfg, resume=True, quiet=True)
    for m in (0, 1):
        a = torch.load(tmp_path / "full" / f"member_{m}.pt", weights_only=True)["state_dict"]
        b = torch.load(tmp_path / "cut" / f"member_{m}.pt", weights_only=True)["state_dict"]
        for k in a:
            torch.testing.assert_close(a[k], b[k], msg=k)


def test_shipped_copy_predicts_as_the_original(trained, tmp_path):
    from surrogate.ship import ship
    from surrogate.uncertainty import load_model

    ship(trained, tmp_path / "shipped", half_above=100)
    half = torch.load(tmp_path / "shipped" / "member_0.pt", weights_only=True)["state_dict"]
    assert any(v.dtype == torch.float16 for v in half.values())
    assert half["target_norm.std"].dtype == torch.float32  # statistics keep full precision
    a, b = load_model(trained), load_model(tmp_path / "shipped")
    x, c, s = torch.randn(2, 30, 8, 8), torch.randn(2, 14), torch.randn(2, 12, 8, 8)
    pa, pb = a.predict(x, c, s)["values"], b.predict(x, c, s)["values"]
    assert float((pa - pb).abs().max() / pa.abs().max()) < 1e-2  # float16 weights: ~1e-3 relative


def test_a_model_refuses_a_store_of_another_material(trained, tmp_path):
    from surrogate.evaluate import evaluate

    cu = make_store(tmp_path / "cu.zarr", samples=3, n=8, steps=2, material="Cu")
    with pytest.raises(StoreError, match="differs from the model"):
        evaluate(trained, cu, tmp_path / "ev", quiet=True)


def test_evaluate_reports_every_figure(trained, store, tmp_path):
    from surrogate.evaluate import evaluate

    rep = evaluate(trained, store, tmp_path / "ev", quiet=True)
    assert set(rep["splits"]) == {"test", "held_out", "validation"}
    m = rep["splits"]["held_out"]
    for key in ("equilibrium_residual", "nrmse", "stress_nmae", "von_mises_mape", "misorientation_deg", "macro_curve", "boundary",
                "interior", "slip_system", "trust"):
        assert key in m
    assert 0 <= m["slip_system"]["accuracy"] <= 1 and 0 <= m["trust"]["mean"] <= 1
    # the Schmid baseline on this closed-form store is exact: the dominant system has the largest |m_s|
    assert m["slip_system"]["schmid_accuracy"] == pytest.approx(1.0)
    assert rep["speed"]["seconds_per_sample"] > 0
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text())["splits"]
    assert (tmp_path / "ev" / "trust_reliability.png").stat().st_size > 1000


def test_train_config_is_checked():
    assert train_config()["model"] == "fno"
    for bad, msg in [({"modle": "fno"}, "unknown key"), ({"model": "gnn"}, "unknown"),
                     ({"epochs": 0}, "positive"), ({"ensemble": 1}, "at least 2"),
                     ({"loss_weights": {"energy": 1}}, "unknown loss term"),
                     ({"model_kwargs": {"width": -3}}, "positive integer")]:
        with pytest.raises(ConfigError, match=msg):
            train_config(bad)


# ---------------------------------------------------------------- CLI and torchrun

def test_cli_train_evaluate_and_errors(run_cli, store, tmp_path):
    cfg = tmp_path / "train.yaml"
    import yaml
    cfg.write_text(yaml.safe_dump({**SMALL, "epochs": 1}))
    r = run_cli("train", "--store", store, "--out", str(tmp_path / "m"), "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "member 1 epoch 1/1" in r.stdout
    r = run_cli("evaluate", "--model", str(tmp_path / "m"), "--store", store, "--split", "test", "--no-plots")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m" / "evaluation" / "evaluation.json").is_file()
    # bad input: one line, exit 2, nothing of the model touched
    before = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert_one_line_error(run_cli("train", "--store", store, "--out", str(tmp_path / "m"), "--config", str(cfg)),
                          "holds a training run")
    assert_one_line_error(run_cli("evaluate", "--model", str(tmp_path / "nope"), "--store", store), "no model.json")
    assert_one_line_error(run_cli("evaluate", "--model", str(tmp_path / "m"), "--store", store, "--split", "bogus"),
                          "unknown split")
    (tmp_path / "broken.yaml").write_text("epochs: [1,\n")
    assert_one_line_error(run_cli("train", "--store", store, "--out", str(tmp_path / "m2"), "--config",
                                  str(tmp_path / "broken.yaml")), "not valid YAML")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == before
    shutil.copy(tmp_path / "m" / "member_0.pt", tmp_path / "m" / "member_0.bak")
    (tmp_path / "m" / "member_0.pt").write_bytes(b"\x00garbage")
    assert_one_line_error(run_cli("evaluate", "--model", str(tmp_path / "m"), "--store", store), "checkpoint")


def test_torchrun_two_cpu_processes(store, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed")
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "coupling.cli", "train", "--store", store,
           "--out", str(tmp_path / "ddp"), "--epochs", "2"]
    cfg = tmp_path / "train.yaml"
    import yaml
    cfg.write_text(yaml.safe_dump({k: v for k, v in SMALL.items() if k != "epochs"}))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd + ["--config", str(cfg)], capture_output=True, text=True, timeout=600, env=env,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((tmp_path / "ddp" / "model.json").read_text())
    assert meta["processes"] == 2
    # rank 0 alone logs: each epoch line once
    assert r.stdout.count("member 0 epoch 2/2") == 1
