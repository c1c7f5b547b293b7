"""Hybrid physics-ML forecasts: the physics partners (elastic, frozen hardening), rollouts, training,
`slipstream couple forecast`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clitools import assert_one_line_error
from solver.errors import ConfigError, StoreError

# 8 x 8 Al maps, 4 increments (horizon 2): a crystal-plasticity campaign and its elastic partner in seconds
TINY = {"samples": 8, "seed": 5,
        "microstructure": {"cells": [8, 8, 1], "grains": [3, 6], "textures": ["random"]},
        "materials": ["Al-DAMASK"], "boundary": "periodic",
        "loading": {"modes": ["tension", "shear"], "directions": [[1, 0, 0], [0, 1, 0]],
                    "strain": [0.004, 0.008], "increments": 4},
        "output": {"every": 1}}
SMALL = {"epochs": 2, "batch_size": 4, "model_kwargs": {"width": 8, "modes": 3, "layers": 2},
         "split": {"validation": 0.25, "test": 0.125, "held_out": []}}


def test_the_elastic_limit_of_a_cube_crystal_has_the_analytic_young_modulus(tmp_path):
    """Uniaxial stress along [100] of a cubic crystal: sigma = eps / S11, S11 = (C11 + C12) / ((C11 - C12)(C11 + 2 C12))."""
    from mpi4py import MPI

    from coupling.whatif import _solve
    from solver.materials import material_from_config
    from solver.microstructure import Microstructure

    if MPI.COMM_WORLD.size > 1:
        pytest.skip("serial")
    mat = material_from_config({"preset": "Al-DAMASK"})
    C = mat.stiffness_tensor()
    c11, c12 = C[0, 0, 0, 0], C[0, 0, 1, 1]
    s11 = (c11 + c12) / ((c11 - c12) * (c11 + 2 * c12))
    ms = Microstructure(euler=np.zeros((1, 4, 4, 3)), grain_id=np.zeros((1, 4, 4), np.int32), size=[1e-4, 1e-4, 2.5e-5])
    run = _solve(MPI.COMM_SELF, ms, {"mode": "tension", "direction": [1, 0, 0], "strain": 1e-5}, 1, tmp_path / "run",
                 {k: v for k, v in mat.as_dict().items()}, True, constitutive="elastic")
    import zarr

    g = zarr.open_group(run["store"], mode="r")
    sigma, eps = g["macro_stress"][0, -1], g["macro_strain"][0, -1]
    # St Venant-Kirchhoff differs from linear elasticity at O(strain): 1e-5 keeps that below 1e-4
    assert sigma[0] == pytest.approx(eps[0] / s11, rel=1e-4)
    assert abs(sigma[1]) < 1e-6 * sigma[0] and abs(sigma[2]) < 1e-6 * sigma[0]
    assert np.all(np.asarray(g["slip"][0]) == 0)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A crystal-plasticity campaign, its elastic and frozen-hardening partners, and small forecasts."""
    import yaml
    from mpi4py import MPI

    from solver.campaign import run_campaign
    from surrogate.forecast import train_forecast

    if MPI.COMM_WORLD.size > 1:
        pytest.skip("built serially")
    base = tmp_path_factory.mktemp("forecast")
    cfg = base / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    run_campaign(MPI.COMM_SELF, cfg, base / "cp.zarr", quiet=True)
    run_campaign(MPI.COMM_SELF, cfg, base / "elastic.zarr", quiet=True, constitutive="elastic")
    run_campaign(MPI.COMM_SELF, cfg, base / "frozen.zarr", quiet=True, constitutive="frozen_hardening")
    train_forecast(base / "cp.zarr", base / "hybrid", kind="hybrid", physics=base / "elastic.zarr", config=SMALL,
                   quiet=True)
    train_forecast(base / "cp.zarr", base / "neural", kind="neural", config=SMALL, quiet=True)
    train_forecast(base / "cp.zarr", base / "hybrid_frozen", kind="hybrid", physics=base / "frozen.zarr",
                   config=SMALL, quiet=True)
    return base


@pytest.mark.skip_in_parallel
def test_the_elastic_partner_overshoots_once_grains_yield(stores):
    import zarr

    cp, el = (zarr.open_group(str(stores / n), mode="r") for n in ("cp.zarr", "elastic.zarr"))
    np.testing.assert_array_equal(cp["euler0"][:], el["euler0"][:])
    vm_cp, vm_el = np.asarray(cp["von_mises_stress"]), np.asarray(el["von_mises_stress"])
    # Al yields near 60-90 MPa (xi0 = 31 MPa, Taylor factor ~3): at 0.4-0.8 % the elastic stress is several times that
    assert np.all(vm_el[:, -1].mean(axis=(1, 2, 3)) > 2 * vm_cp[:, -1].mean(axis=(1, 2, 3)))
    assert np.all(np.asarray(el["slip"]) == 0) and np.all(np.asarray(cp["slip"])[:, -1].sum(-1).max(axis=(1, 2, 3)) > 0)


@pytest.mark.skip_in_parallel
def test_the_frozen_hardening_partner_keeps_the_initial_slip_resistance(stores):
    import zarr

    from solver.materials import PRESETS

    cp, fr = (zarr.open_group(str(stores / n), mode="r") for n in ("cp.zarr", "frozen.zarr"))
    xi0 = PRESETS["Al-DAMASK"].slip_resistance_initial[0]
    # h0 = 0: every system keeps xi0 at every step, though the grains slip
    np.testing.assert_array_equal(np.asarray(fr["slip_resistance"]), xi0)
    assert np.asarray(fr["slip"])[:, -1].max() > 1e-4
    # the full material hardens wherever it slips, so it carries more stress at the same strain
    assert np.asarray(cp["slip_resistance"])[:, -1].max() > xi0
    vm_cp, vm_fr = (np.asarray(g["von_mises_stress"])[:, -1].mean(axis=(1, 2, 3)) for g in (cp, fr))
    assert np.all(vm_fr <= vm_cp * (1 + 1e-6)) and np.any(vm_fr < vm_cp)


@pytest.mark.skip_in_parallel
def test_a_store_that_is_not_a_physics_partner_is_refused(stores):
    from surrogate.data import store_info
    from surrogate.forecast import load_forecaster, physics_partner

    with pytest.raises(StoreError, match="not an incomplete physics"):
        physics_partner(store_info(stores / "cp.zarr"), store_info(stores / "cp.zarr"))
    assert physics_partner(store_info(stores / "cp.zarr"), store_info(stores / "elastic.zarr")) == "elastic"
    assert physics_partner(store_info(stores / "cp.zarr"), store_info(stores / "frozen.zarr")) == "frozen_hardening"
    # the model records its physics, so couple forecast solves with the same one
    assert load_forecaster(stores / "hybrid")[1]["physics_constitutive"] == "elastic"
    assert load_forecaster(stores / "hybrid_frozen")[1]["physics_constitutive"] == "frozen_hardening"


@pytest.mark.skip_in_parallel
def test_an_untrained_hybrid_is_the_physics_and_errors_are_relative_l2(stores):
    import torch

    from surrogate import features
    from surrogate.forecast import Forecaster, TrajectoryDataset, rollout_errors, statistics

    ds = TrajectoryDataset(stores / "cp.zarr", range(TINY["samples"]), stores / "elastic.zarr")
    model = Forecaster("hybrid", backbone_kwargs={"width": 8, "modes": 3, "layers": 1})
    model.set_statistics(statistics(ds, 2))
    it = ds[3]
    states, residuals = model.rollout(it["physics"][None], it["fields"][None], it["condition"][None], 4)
    torch.testing.assert_close(states[0], it["physics"], rtol=1e-5, atol=1e-3)  # the residual head starts at zero
    assert float(residuals.detach().abs().max()) == 0.0
    # the physics-alone errors, computed here from the two stores directly
    err = rollout_errors(None, ds, 2)["relative_error"]
    truth = np.stack([ds[k]["truth"].numpy() for k in range(len(ds))]).astype(float)
    phys = np.stack([ds[k]["physics"].numpy() for k in range(len(ds))]).astype(float)
    sl = features.TARGETS["stress"]
    expect = np.linalg.norm(phys[:, 4, sl] - truth[:, 4, sl]) / np.linalg.norm(truth[:, 4, sl])
    assert err["4"]["stress"] == pytest.approx(expect, rel=1e-6)
    assert err["4"]["slip"] == pytest.approx(1.0)  # elasticity has no slip at all


@pytest.mark.skip_in_parallel
def test_trained_forecasts_roll_out_beyond_their_horizon(stores):
    from surrogate.forecast import TrajectoryDataset, load_forecaster, rollout_errors

    hybrid, meta = load_forecaster(stores / "hybrid")
    neural, nmeta = load_forecaster(stores / "neural")
    assert meta["horizon"] == nmeta["horizon"] == 2 and meta["kind"] == "hybrid" and nmeta["physics"] is None
    ds = TrajectoryDataset(stores / "cp.zarr", meta["splits"]["validation"], stores / "elastic.zarr")
    r = rollout_errors(hybrid, ds, 2, 4)
    assert set(r["relative_error"]) == {"1", "2", "3", "4"} and set(r["residual_share"]) == {"1", "2", "3", "4"}
    assert all(np.isfinite(v["all"]) for v in r["relative_error"].values())
    assert all(0 <= v for v in r["residual_share"].values())
    assert "residual_share" not in rollout_errors(neural, ds, 2, 4)


@pytest.mark.skip_in_parallel
def test_the_forecast_trust_is_the_validation_hit_rate_times_the_domain_factor(stores):
    import torch

    from solver.errors import ModelError
    from surrogate.forecast import TrajectoryDataset, forecast_trust, load_forecaster

    model, meta = load_forecaster(stores / "hybrid")
    cal = meta["calibration"]
    assert cal["validated_steps"] == 4 and set(cal["hit_rate"]) == {"1", "2", "3", "4"}
    # the hit rates, counted here in NumPy from the validation rollouts
    ds = TrajectoryDataset(stores / "cp.zarr", meta["splits"]["validation"], stores / "elastic.zarr")
    hits, voxels = np.zeros(5), 0
    for k in range(len(ds)):
        it = ds[k]
        with torch.no_grad():
            states, _ = model.rollout(it["physics"][None], it["fields"][None], it["condition"][None], 4)

        def vm(x):
            s = np.asarray(x, dtype=float)[:, :6]
            return np.sqrt(0.5 * ((s[:, 0] - s[:, 1]) ** 2 + (s[:, 1] - s[:, 2]) ** 2 + (s[:, 2] - s[:, 0]) ** 2)
                           + 3 * (s[:, 3] ** 2 + s[:, 4] ** 2 + s[:, 5] ** 2))
        p, t = vm(states[0].numpy()), vm(it["truth"].numpy())
        tau = 0.05 * np.maximum(p, p.mean(axis=(1, 2), keepdims=True) / 4)
        hits += (np.abs(p - t) <= tau).sum(axis=(1, 2))
        voxels += p[0].size
    for n in range(1, 5):
        assert cal["hit_rate"][str(n)] == pytest.approx(hits[n] / voxels, abs=1e-9)
    # inside the domain the trust is the hit rate; beyond the validated steps it is that of the last one, and says so
    domain = meta["training_domain"]
    mode, strain = domain["modes"][0], domain["strain_min"]
    t = forecast_trust(meta, 4, mode, strain)
    assert t["trust"] == pytest.approx(cal["hit_rate"]["4"]) and t["domain_factor"] == 1.0 and t["reason"] == ""
    # more steps than validated: the lowest validated hit rate, and the summary says so
    t = forecast_trust(meta, 8, mode, strain)
    assert t["trust"] == pytest.approx(min(cal["hit_rate"].values())) and "validated up to 4" in t["reason"]
    # the whole trained strain in one step: an increment 4x the largest trained, outside the domain
    t = forecast_trust(meta, 1, mode, domain["strain_max"])
    assert t["trust"] == 0.0 and "strain increment" in t["reason"]
    # a load far outside training: the domain factor drops to 0
    t = forecast_trust(meta, 4, mode, 10 * domain["strain_max"])
    assert t["trust"] == 0.0 and "beyond the largest trained" in t["reason"]
    assert forecast_trust(meta, 4, "compression", strain)["trust"] == 0.0  # a mode never trained
    with pytest.raises(ModelError, match="no calibration"):
        forecast_trust({}, 4, mode, strain)


@pytest.mark.skip_in_parallel
def test_forecast_calibration_and_config_refuse_what_does_not_fit(stores):
    from surrogate.forecast import calibrate_forecast, forecast_config

    with pytest.raises(StoreError, match="trained on frozen_hardening"):
        calibrate_forecast(stores / "hybrid_frozen", stores / "cp.zarr", stores / "elastic.zarr")
    with pytest.raises(StoreError, match="not the store"):
        calibrate_forecast(stores / "neural", stores / "elastic.zarr")
    for bad in ("5%", -1, 0, float("nan"), True):
        with pytest.raises(ConfigError, match="trust_tolerance"):
            forecast_config({"trust_tolerance": bad})


@pytest.mark.skip_in_parallel
def test_couple_forecast_falls_back_to_the_solver_out_of_domain(stores, run_cli, tmp_path):
    r = run_cli("couple", "forecast", "--model", stores / "neural", "--microstructure", f"{stores / 'cp.zarr'}:1",
                "--load", "tension 8% [1,0,0]", "--steps", "4", "--out", tmp_path / "ood")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "ood" / "summary.json").read_text())
    assert s["answer_from"] == "solver (fallback)" and s["trust"] == 0.0 and s["domain_reason"]
    assert "solver answers" in r.stdout and len(s["verify"]["forecast"]) == 4
    assert s["answer"] == str(tmp_path / "ood" / "solver") and f"{tmp_path / 'ood' / 'solver'}/" in r.stdout
    assert list((tmp_path / "ood" / "solver").glob("*.zarr"))


@pytest.mark.skip_in_parallel
def test_forecast_training_under_torchrun_two_cpu_processes(stores, tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    import yaml

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed")
    cfg = tmp_path / "fc.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    r = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "coupling.cli", "train",
                        "--forecast", "hybrid", "--store", str(stores / "cp.zarr"), "--physics",
                        str(stores / "elastic.zarr"), "--out", str(tmp_path / "ddp"), "--config", str(cfg)],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"),
                       cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((tmp_path / "ddp" / "model.json").read_text())
    assert meta["processes"] == 2 and meta["calibration"]["validated_steps"] == 4
    assert r.stdout.count("forecast epoch 2/2") == 1  # rank 0 alone logs
    from surrogate.forecast import TrajectoryDataset, load_forecaster, rollout_errors

    model, _ = load_forecaster(tmp_path / "ddp")  # plain weights, loadable in one process
    ds = TrajectoryDataset(stores / "cp.zarr", meta["splits"]["validation"], stores / "elastic.zarr")
    # the validation error it recorded is the one its saved weights give
    best = min(h["validation_error"] for h in meta["history"])
    assert rollout_errors(model, ds, 2)["relative_error"]["2"]["all"] == pytest.approx(best, rel=1e-5)


def _fields(path):
    import zarr

    g = zarr.open_group(str(path / "forecast.zarr"), mode="r")
    return {k: np.asarray(g[k]) for k in ("stress", "strain", "slip")}


@pytest.mark.skip_in_parallel
def test_couple_forecast_serial_and_on_two_ranks(stores, run_cli, tmp_path):
    args = ("couple", "forecast", "--model", stores / "hybrid", "--microstructure", f"{stores / 'cp.zarr'}:1",
            "--load", "tension 0.6% [1,0,0]", "--steps", "4", "--verify")
    r1 = run_cli(*args, "--out", tmp_path / "serial")
    assert r1.returncode == 0, r1.stderr
    r2 = run_cli(*args, "--out", tmp_path / "mpi", ranks=2)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.count("pictures, forecast.zarr and summary.json") == 1  # rank 0 prints
    s = json.loads((tmp_path / "serial" / "summary.json").read_text())
    assert s["kind"] == "hybrid" and s["beyond_horizon"] and len(s["residual_share"]) == 4
    assert 0.0 <= s["trust"] <= 1.0 and s["answer_from"] in ("hybrid forecast", "solver (fallback)")
    assert len(s["verify"]["forecast"]) == 4 and len(s["verify"]["physics_alone"]) == 4
    for name in ("ipf_final.png", "von_mises_stress.png", "stress_strain.png", "von_mises_error.png"):
        assert (tmp_path / "serial" / name).stat().st_size > 1000
    a, b = _fields(tmp_path / "serial"), _fields(tmp_path / "mpi")
    assert a["stress"].shape == (5, 8, 8, 6)
    for k in a:  # the elastic solve on 2 ranks agrees with the serial one to solver tolerance
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-4 * float(np.abs(a[k]).max()) + 1e-12)


@pytest.mark.skip_in_parallel
def test_couple_forecast_solves_the_physics_the_model_was_trained_with(stores, run_cli, tmp_path):
    r = run_cli("couple", "forecast", "--model", stores / "hybrid_frozen", "--microstructure",
                f"{stores / 'cp.zarr'}:2", "--load", "tension 0.6% [1,0,0]", "--steps", "4", "--out", tmp_path / "f")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert s["physics"] == "frozen_hardening" and "frozen_hardening solve" in r.stdout
    import yaml
    import zarr

    assert yaml.safe_load((tmp_path / "f" / "physics" / "solver.yaml").read_text())["solver"]["constitutive"] \
        == "frozen_hardening"
    (store,) = (tmp_path / "f" / "physics").glob("*.zarr")
    xi = np.asarray(zarr.open_group(str(store), mode="r")["slip_resistance"])
    np.testing.assert_array_equal(xi, xi.flat[0])  # no hardening anywhere


@pytest.mark.skip_in_parallel
def test_forecast_bad_input(stores, run_cli, tmp_path):
    r = run_cli("train", "--forecast", "hybrid", "--store", stores / "cp.zarr", "--out", tmp_path / "m")
    assert_one_line_error(r, "--physics")
    r = run_cli("train", "--forecast", "hybrid", "--store", stores / "cp.zarr", "--physics", stores / "cp.zarr",
                "--out", tmp_path / "m2")
    assert_one_line_error(r, "not an incomplete physics")
    r = run_cli("couple", "forecast", "--model", stores / "cp.zarr", "--microstructure", f"{stores / 'cp.zarr'}:1",
                "--load", "tension 0.5%", "--out", tmp_path / "x")
    assert_one_line_error(r, "model.json")
    r = run_cli("couple", "forecast", "--model", stores / "hybrid", "--microstructure", f"{stores / 'cp.zarr'}:1",
                "--load", "tension", "--out", tmp_path / "y")
    assert_one_line_error(r, "load")
    from surrogate.forecast import forecast_config

    with pytest.raises(ConfigError, match="unknown key"):
        forecast_config({"epoch": 3})
