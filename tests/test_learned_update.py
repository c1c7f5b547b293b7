"""Learned constitutive update: elastic limit, autograd tangent, accuracy against the physics kernel, FE runs."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import yaml

from clitools import assert_one_line_error
from solver.errors import ConfigError, ModelError
from solver.materials import material_from_config

CONFIG = {"microstructure": {"kind": "voronoi", "cells": [6, 6, 1], "grains": 5, "seed": 3},
          "material": {"preset": "Al-DAMASK"},
          "loading": {"mode": "tension", "direction": [1, 0, 0], "strain": 0.004, "increments": 4},
          "output": {"every": 1, "paraview": False, "plots": False}}


SHIPPED = pathlib.Path(__file__).resolve().parents[1] / "surrogate" / "pretrained" / "learned_update_al"


@pytest.fixture(scope="module")
def model():
    """The shipped learned update for Al-DAMASK (slipstream train --learned-update Al-DAMASK)."""
    return SHIPPED


@pytest.mark.skip_in_parallel
def test_training_writes_a_model_and_refuses_to_overwrite_it(tmp_path):
    from surrogate.learned_update import load_learned_update, train_learned_update

    meta = train_learned_update("Al-DAMASK", tmp_path / "m", samples=3000, epochs=2, hidden=16, layers=1, quiet=True)
    net, loaded = load_learned_update(tmp_path / "m")
    assert loaded["material"]["name"] == meta["material"]["name"] and net.kwargs["hidden"] == 16
    assert len(meta["history"]) == 2 and meta["samples"] > 2500  # points the physics kernel did not converge are left out
    with pytest.raises(ModelError, match="already"):
        train_learned_update("Al-DAMASK", tmp_path / "m", samples=3000, epochs=2, quiet=True)
    with pytest.raises(ConfigError):
        train_learned_update("Al-DAMASK", tmp_path / "n", samples=0)


def _kernel(model, n, seed=0):
    from solver.textures import sample_orientations
    from surrogate.learned_update import LearnedCrystalPlasticity

    g = sample_orientations("random", n, np.random.default_rng(seed))
    return LearnedCrystalPlasticity(model, material_from_config({"preset": "Al-DAMASK"}), g), g


@pytest.mark.skip_in_parallel
def test_far_below_yield_the_learned_update_is_the_elastic_limit(model):
    from solver.elastic import AnisotropicElasticity

    kernel, g = _kernel(model, 50)
    mat = material_from_config({"preset": "Al-DAMASK"})
    rng = np.random.default_rng(1)
    F = np.eye(3) + 2e-5 * rng.normal(size=(50, 3, 3))  # ~1 MPa: far below xi0 = 31 MPa
    res = kernel.update(F, kernel.initial_state(), 0.5)
    ref = AnisotropicElasticity(mat.stiffness_tensor(), g).update(F, {}, 0.5)
    np.testing.assert_allclose(res.stress, ref.stress, rtol=0, atol=1e-4 * np.abs(ref.stress).max())
    assert np.all(res.state["accumulated_slip"] < 1e-8)


@pytest.mark.skip_in_parallel
def test_the_tangent_is_the_derivative_of_the_learned_stress(model):
    kernel, _ = _kernel(model, 6, seed=2)
    rng = np.random.default_rng(3)
    F = np.eye(3) + 3e-3 * rng.normal(size=(6, 3, 3))  # beyond yield: slip is active
    state = kernel.initial_state()
    res = kernel.update(F, state, 0.5)
    assert res.state["accumulated_slip"].max() > 1e-5
    h = 1e-7
    for k, l in ((0, 0), (0, 1), (2, 1)):
        dF = np.zeros((3, 3))
        dF[k, l] = h
        fd = (kernel.update(F + dF, state, 0.5, tangent=False).stress
              - kernel.update(F - dF, state, 0.5, tangent=False).stress) / (2 * h)
        np.testing.assert_allclose(res.tangent[:, :, :, k, l], fd, rtol=1e-4, atol=1e-5 * np.abs(fd).max())


@pytest.mark.skip_in_parallel
def test_the_learned_update_follows_the_physics_kernel(model):
    from surrogate.learned_update import LearnedCrystalPlasticity, generate_updates

    mat = material_from_config({"preset": "Al-DAMASK"})
    d = generate_updates(mat, 1000, np.random.default_rng(11), chunk=1000)  # unseen seed
    n = d["F"].shape[0]
    kernel = LearnedCrystalPlasticity(model, mat, np.tile(np.eye(3), (n, 1, 1)))
    state = {"plastic_deformation": np.tile(np.eye(3), (n, 1, 1)), "slip_resistance": d["xi_n"],
             "accumulated_slip": np.zeros((n, 12)), "slip": np.zeros((n, 12))}
    learned = kernel.update(d["F"], state, float(d["dt"][0]), tangent=False).stress
    kernel.net.out.bias.data[:] = -1e3  # no slip at all: the elastic trial
    trial = kernel.update(d["F"], state, float(d["dt"][0]), tangent=False).stress
    norm = np.linalg.norm(d["P"], axis=(1, 2))
    err = np.linalg.norm(learned - d["P"], axis=(1, 2)) / norm
    err_trial = np.linalg.norm(trial - d["P"], axis=(1, 2)) / norm
    assert np.median(err) < 0.05 and np.median(err) < 0.25 * np.median(err_trial), (np.median(err),
                                                                                     np.median(err_trial))


def _simulate(run_cli, tmp_path, name, solver=None, ranks=1):
    cfg = dict(CONFIG, **({"solver": solver} if solver else {}))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = run_cli("simulate", path, "--out", tmp_path / name, "--quiet", ranks=ranks)
    assert r.returncode == 0, r.stderr
    import zarr

    return zarr.open_group(str(tmp_path / name / "results.zarr"), mode="r")


@pytest.mark.skip_in_parallel
def test_a_polycrystal_with_the_learned_update_serial_and_on_two_ranks(model, run_cli, tmp_path):
    physics = _simulate(run_cli, tmp_path, "physics")
    learned = _simulate(run_cli, tmp_path, "learned", {"constitutive": "learned", "learned_model": str(model)})
    learned2 = _simulate(run_cli, tmp_path, "learned2", {"constitutive": "learned", "learned_model": str(model)},
                         ranks=2)
    s_p, s_l, s_2 = (np.asarray(g["macro_stress"][0]) for g in (physics, learned, learned2))
    np.testing.assert_allclose(s_2, s_l, rtol=1e-6, atol=1e-6 * np.abs(s_l).max())
    assert abs(s_l[-1, 0] - s_p[-1, 0]) < 0.05 * abs(s_p[-1, 0])  # the stress-strain curve within 5 %
    vm_p, vm_l = np.asarray(physics["von_mises_stress"][0, -1]), np.asarray(learned["von_mises_stress"][0, -1])
    assert np.abs(vm_l - vm_p).mean() < 0.1 * vm_p.mean()
    assert int(learned["newton_iterations"][0]) <= 3 * int(physics["newton_iterations"][0])  # a consistent tangent


@pytest.mark.skip_in_parallel
def test_learned_update_bad_input(model, run_cli, tmp_path):
    from solver.config import prepare_simulation

    with pytest.raises(ConfigError, match="learned_model"):
        prepare_simulation(dict(CONFIG, solver={"constitutive": "learned"}))
    with pytest.raises(ConfigError, match="not a trained model"):
        prepare_simulation(dict(CONFIG, solver={"constitutive": "learned", "learned_model": str(tmp_path)}))
    with pytest.raises(ConfigError, match="only with"):
        prepare_simulation(dict(CONFIG, solver={"learned_model": str(model)}))
    # a model trained for another material is refused before any solving
    other = tmp_path / "other"
    other.mkdir()
    for f in model.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    meta = json.loads((other / "model.json").read_text())
    meta["material"]["C11"] *= 1.1
    (other / "model.json").write_text(json.dumps(meta))
    from surrogate.learned_update import LearnedCrystalPlasticity

    with pytest.raises(ModelError, match="C11"):
        LearnedCrystalPlasticity(other, material_from_config({"preset": "Al-DAMASK"}), np.eye(3)[None])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(dict(CONFIG, solver={"constitutive": "learned", "learned_model": str(other)})))
    assert_one_line_error(run_cli("simulate", path, "--out", tmp_path / "bad"), "C11")
