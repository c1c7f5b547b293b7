"""In-loop low-resolution correction: the solver takes a corrected state, and a learned model hands it one.

Physics of the hand-back against numbers nobody here chose:

* Slip resistance: without hardening and at a strain rate equal to gdot0, the
  steady flow stress of a [001] crystal is ``xi / m (1 / (k m))^(1/n)``
  (Schmid; m = 0.408, k = 8). Handing back twice ``xi0`` doubles it.
* Plastic deformation: a uniform plastic strain ``delta`` along [100], with the
  slip resistance handed back too high to slip, shifts the elastic line:
  ``sigma = E_100 (eps - delta)``, ``E_100`` = 66.8 GPa for Cu (validation.md).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from clitools import assert_one_line_error

pytest.importorskip("dolfinx")
from mpi4py import MPI  # noqa: E402

from solver.config import prepare_simulation  # noqa: E402
from solver.materials import material_from_config  # noqa: E402
from solver.simulate import make_solver  # noqa: E402

from test_correction import TINY  # noqa: E402  (the same 8 x 8 campaign as the post-processing correction)


def _cu_crystal(strain, increments, rate, hardening=True):
    material = {"preset": "Cu", **({} if hardening else {"hardening_modulus": 0.0})}
    return prepare_simulation({
        "microstructure": {"kind": "voronoi", "cells": [2, 2, 2], "grains": 1,
                           "texture": {"single": {"euler": [0.0, 0.0, 0.0]}}},
        "material": material,
        "loading": {"mode": "tension", "direction": [1, 0, 0], "strain": strain, "rate": rate,
                    "increments": increments}})


def _axial_curve(solver, setup):
    dt = setup.loading.duration / setup.loading.increments
    d = setup.loading.direction
    curve = []
    for n in range(1, setup.loading.increments + 1):
        solver.advance(n * dt)
        F, sigma, _ = solver.macro_fields()
        curve.append((d @ (F - np.eye(3)) @ d, d @ sigma @ d))
    return np.array(curve)


def _uniform(value, comm):
    """A (1, 2, 2, ...) voxel array of ``value`` on rank 0 (the others pass None)."""
    return np.broadcast_to(value, (2, 2, 2) + np.shape(value)).copy() if comm.rank == 0 else None


@pytest.mark.mpi
def test_handing_back_twice_the_slip_resistance_doubles_the_schmid_flow_stress():
    comm = MPI.COMM_WORLD
    cu = material_from_config({"preset": "Cu"})
    xi0, n, gdot0 = cu.slip_resistance_initial[0], cu.rate_exponent, cu.shear_rate_reference
    m, k = 1 / np.sqrt(6), 8
    setup = _cu_crystal(0.004, 10, gdot0, hardening=False)
    solver = make_solver(comm, setup)
    solver.set_voxel_state(slip_resistance=_uniform(np.full(12, 2 * xi0), comm))
    flow = _axial_curve(solver, setup)[-1, 1]
    assert flow == pytest.approx(2 * xi0 / m * (1 / (k * m)) ** (1 / n), rel=0.02)
    xi = solver.cell_fields()["slip_resistance"]
    np.testing.assert_allclose(xi, 2 * xi0, rtol=1e-12)  # no hardening: it stays what was handed back
    solver.destroy()


@pytest.mark.mpi
def test_handing_back_a_plastic_strain_shifts_the_elastic_line_by_it():
    comm = MPI.COMM_WORLD
    cu = material_from_config({"preset": "Cu"})
    delta = 1e-4
    setup = _cu_crystal(3e-4, 3, 1e-3)
    solver = make_solver(comm, setup)
    Fp = np.diag(np.exp([delta, -delta / 2, -delta / 2]))  # isochoric, det Fp = 1
    solver.set_voxel_state(plastic_deformation=_uniform(Fp, comm),
                           slip_resistance=_uniform(np.full(12, 1e3 * cu.slip_resistance_initial[0]), comm))
    curve = _axial_curve(solver, setup)
    modulus = np.diff(curve[:, 1]) / np.diff(curve[:, 0])
    np.testing.assert_allclose(modulus, 66.8e9, rtol=0.01)  # still elastic, Cu <100>
    offset = curve[:, 0] - curve[:, 1] / 66.8e9
    np.testing.assert_allclose(offset, delta, rtol=0.02)  # the line moved by the plastic strain
    np.testing.assert_allclose(solver.cell_fields()["plastic_deformation"], np.broadcast_to(Fp, (solver.n_cells, 3, 3)),
                               atol=1e-12)
    solver.destroy()


def test_a_correction_equal_to_the_current_state_changes_nothing():
    comm = MPI.COMM_SELF
    setup = prepare_simulation({
        "microstructure": {"kind": "voronoi", "cells": [4, 4, 1], "grains": 3, "seed": 2, "texture": "random"},
        "material": {"preset": "Al-DAMASK"},
        "loading": {"mode": "tension", "direction": [1, 0, 0], "strain": 0.004, "increments": 4}})
    curves = []
    for hand_back in (False, True):
        solver = make_solver(comm, setup)
        dt = setup.loading.duration / 4
        for n in range(1, 5):
            solver.advance(n * dt)
            if hand_back:
                vf = solver.gather_voxel_fields(solver.cell_fields())
                solver.set_voxel_state(vf["plastic_deformation"], vf["slip_resistance"])
        curves.append(solver.cell_fields()["stress"])
        solver.destroy()
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-6, atol=1e-6 * np.abs(curves[0]).max())


# ------------------------------------------------------------------------- learned, in the loop

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A fine campaign with its 2x coarser partner, a post-processing correction, and in-loop models:
    ``round0`` (trained on the partner) and ``still`` (learning rate 0: it corrects nothing)."""
    import yaml

    from solver.campaign import run_campaign
    from surrogate.inloop import train_state_correction
    from surrogate.train import train
    from test_correction import SMALL

    if MPI.COMM_WORLD.size > 1:
        pytest.skip("built serially")
    base = tmp_path_factory.mktemp("inloop")
    cfg = base / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    run_campaign(MPI.COMM_SELF, cfg, base / "fine.zarr", quiet=True)
    run_campaign(MPI.COMM_SELF, cfg, base / "coarse.zarr", quiet=True, coarsen=2)
    split = {"validation": 0.25, "test": 0.125, "held_out": []}
    train_state_correction(base / "fine.zarr", [base / "coarse.zarr"], base / "round0",
                           {"epochs": 300, "width": 16, "split": split, "select": "last"}, quiet=True)
    train_state_correction(base / "fine.zarr", [base / "coarse.zarr"], base / "still",
                           {"epochs": 1, "width": 16, "learning_rate": 0.0, "split": split}, quiet=True)
    train(base / "fine.zarr", base / "post", SMALL, quiet=True, coarse=base / "coarse.zarr")
    return base


def _fields(path, names=("stress", "plastic_deformation", "slip_resistance")):
    import zarr

    g = zarr.open_group(str(path), mode="r")
    return {n: np.asarray(g[n][:], dtype=float) for n in names}


@pytest.mark.skip_in_parallel
def test_the_stores_carry_the_plastic_deformation_with_unit_determinant(runs):
    fp = _fields(runs / "fine.zarr", ("plastic_deformation",))["plastic_deformation"]
    fp = fp.reshape(fp.shape[:-1] + (3, 3))
    np.testing.assert_allclose(np.linalg.det(fp), 1.0, atol=1e-5)  # voxel means of isochoric Fp: det 1 to O(dFp^2)
    np.testing.assert_allclose(fp[:, 0], np.broadcast_to(np.eye(3), fp[:, 0].shape), atol=1e-7)  # virgin at step 0
    assert np.abs(fp[:, -1] - np.eye(3)).max() > 1e-4  # and it slipped


@pytest.mark.skip_in_parallel
def test_an_in_loop_model_that_corrects_nothing_leaves_the_coarse_solve_as_it_was(runs, run_cli):
    r = run_cli("campaign", runs / "tiny.yaml", "--store", runs / "still.zarr", "--coarsen", "2",
                "--correct-in-loop", runs / "still", "--quiet")
    assert r.returncode == 0, r.stderr
    plain, still = _fields(runs / "coarse.zarr"), _fields(runs / "still.zarr")
    for name in plain:
        np.testing.assert_allclose(still[name], plain[name], rtol=1e-5, atol=1e-6 * np.abs(plain[name]).max())


@pytest.mark.skip_in_parallel
def test_dagger_rounds_train_on_the_states_the_corrected_solve_reaches(runs, run_cli):
    from surrogate.data import SplitSpec, make_splits, store_info
    from surrogate.inloop import build_pairs, load_state_correction, state_errors

    model, meta = load_state_correction(runs / "round0")
    assert meta["factor"] == 2 and meta["validation"]["coarse"]["fp_ratio"] == 1.0
    # round 0 fits its own training pairs: the corrected state is closer to the fine solve's
    fine, coarse = store_info(runs / "fine.zarr"), store_info(runs / "coarse.zarr")
    splits = make_splits(fine.path, SplitSpec.from_config(meta["config"]["split"]))
    x, y = build_pairs(fine, [coarse], splits["train"], 2)
    err = state_errors(model, x, y)
    assert err["fp_ratio"] < 0.9 and err["xi_mpa_ratio"] < 0.9, err
    # the solve with round 0 in its loop reaches other states than the open-loop one...
    r = run_cli("campaign", runs / "tiny.yaml", "--store", runs / "dagger.zarr", "--coarsen", "2",
                "--correct-in-loop", runs / "round0", "--quiet")
    assert r.returncode == 0, r.stderr
    plain, dagger = _fields(runs / "coarse.zarr"), _fields(runs / "dagger.zarr")
    assert np.abs(dagger["plastic_deformation"] - plain["plastic_deformation"]).max() > 1e-6
    np.testing.assert_array_equal(dagger["stress"][:, 0], plain["stress"][:, 0])  # step 0: nothing to correct
    # ...and round 1 learns from both (dataset aggregation)
    (runs / "round1.yaml").write_text(json.dumps({"width": 16, "split": meta["config"]["split"]}))
    r = run_cli("train", "--in-loop", "--store", runs / "fine.zarr", "--coarse", runs / "coarse.zarr",
                "--coarse", runs / "dagger.zarr", "--out", runs / "round1", "--epochs", "2", "--quiet",
                "--config", runs / "round1.yaml")
    assert r.returncode == 0, r.stderr
    round1 = json.loads((runs / "round1" / "model.json").read_text())
    assert round1["training_pairs"] == 2 * meta["training_pairs"]
    assert round1["coarse_stores"] == [str(runs / "coarse.zarr"), str(runs / "dagger.zarr")]


@pytest.mark.skip_in_parallel
def test_couple_correct_in_loop_serial_and_on_two_ranks(runs, run_cli, tmp_path):
    args = ("couple", "correct", "--model", runs / "post", "--in-loop", runs / "round0", "--microstructure",
            f"{runs / 'fine.zarr'}:1", "--load", "tension 0.3% [1,0,0]", "--steps", "2", "--quiet")
    r1 = run_cli(*args, "--out", tmp_path / "serial")
    assert r1.returncode == 0, r1.stderr
    r2 = run_cli(*args, "--out", tmp_path / "mpi", ranks=2)
    assert r2.returncode == 0, r2.stderr
    s = json.loads((tmp_path / "serial" / "summary.json").read_text())
    assert s["in_loop"] == str(runs / "round0")
    # the coarse run solved with the state model in its loop (the campaign tests show that it acts)
    assert "correction_in_loop" in (tmp_path / "serial" / "coarse" / "solver.yaml").read_text()
    a = _fields(tmp_path / "serial" / "coarse" / "results.zarr")
    b = _fields(tmp_path / "mpi" / "coarse" / "results.zarr")
    for name in a:  # the corrected coarse trajectory: the same on 2 ranks as serially
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-5 * np.abs(a[name]).max())


@pytest.mark.skip_in_parallel
def test_in_loop_refuses_bad_input(runs, run_cli, tmp_path):
    from solver.errors import ModelError
    from surrogate.inloop import load_state_correction
    from synthetic_store import make_store

    # a fine store of the same campaign made before the plastic deformation was stored
    import yaml
    from mpi4py import MPI

    from solver import store
    from solver.campaign import load_campaign, run_campaign

    spec = load_campaign(runs / "tiny.yaml")
    old = tmp_path / "old.zarr"
    store.create_store(old, n_samples=spec.samples, grid_shape=spec.grid_shape, n_steps=spec.n_steps,
                       n_slip=spec.n_slip, config=spec.config, material=spec.store_material(), lattice=spec.lattice,
                       with_nye=True)
    run_campaign(MPI.COMM_SELF, runs / "tiny.yaml", old, quiet=True)
    r = run_cli("train", "--in-loop", "--store", old, "--coarse", runs / "coarse.zarr", "--out", tmp_path / "m")
    assert_one_line_error(r, "old.zarr has no plastic_deformation")
    assert not (tmp_path / "m").exists()
    r = run_cli("train", "--in-loop", "--store", runs / "fine.zarr", "--coarse", runs / "coarse.zarr",
                "--ensemble", "2", "--out", tmp_path / "m")
    assert_one_line_error(r, "--ensemble")
    # another material than the model's
    cu = tmp_path / "cu.yaml"
    cu.write_text(yaml.safe_dump({**TINY, "materials": ["Cu"]}))
    r = run_cli("campaign", cu, "--store", tmp_path / "cu.zarr", "--coarsen", "2", "--correct-in-loop",
                runs / "round0")
    assert_one_line_error(r, "trained on material 'Al-DAMASK'")
    assert not (tmp_path / "cu.zarr").exists()
    r = run_cli("train", "--in-loop", "--store", runs / "fine.zarr", "--out", tmp_path / "m")
    assert_one_line_error(r, "--coarse")
    # a post-processing correction is not a state correction; a factor other than the model's
    r = run_cli("campaign", runs / "tiny.yaml", "--store", tmp_path / "x.zarr", "--coarsen", "2",
                "--correct-in-loop", runs / "post")
    assert_one_line_error(r, "not an in-loop state correction")
    r = run_cli("campaign", runs / "tiny.yaml", "--store", tmp_path / "y.zarr", "--correct-in-loop", runs / "round0")
    assert_one_line_error(r, "2x coarser")
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()
    with pytest.raises(ModelError, match="not an in-loop state correction"):
        load_state_correction(runs / "post")
    # couple correct checks the state model before it writes anything
    r = run_cli("couple", "correct", "--model", runs / "post", "--in-loop", runs / "post", "--microstructure",
                f"{runs / 'fine.zarr'}:1", "--load", "tension 0.3%", "--steps", "2", "--out", tmp_path / "cc")
    assert_one_line_error(r, "not an in-loop state correction")
    assert not (tmp_path / "cc").exists()


@pytest.mark.skip_in_parallel
def test_rollout_selection_keeps_the_candidate_whose_solves_are_closest_to_the_fine_one(runs, run_cli):
    import torch
    import zarr

    from surrogate.inloop import block_stress_error

    (runs / "select.yaml").write_text(json.dumps({"width": 16, "epochs": 20, "candidates": 3,
                                                  "split": {"validation": 0.25, "test": 0.125, "held_out": []}}))
    r = run_cli("train", "--in-loop", "--store", runs / "fine.zarr", "--coarse", runs / "coarse.zarr",
                "--out", runs / "selected", "--config", runs / "select.yaml", "--rollout-select", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    meta = json.loads((runs / "selected" / "model.json").read_text())
    sel = meta["rollout_selection"]
    errors = {int(k): v for k, v in sel["errors"].items()}
    assert 0 in errors and len(errors) >= 4 and sel["selected_epoch"] == min(errors, key=errors.get)
    # "no correction" is the plain coarse solve: its error is the coarse partner store's, computed here
    fine, coarse = (zarr.open_group(str(runs / n), mode="r") for n in ("fine.zarr", "coarse.zarr"))
    sums = np.sum([block_stress_error(fine, i, coarse["stress"][i], 2) for i in sel["samples"]], axis=0)
    assert errors[0] == pytest.approx(np.sqrt(sums[0] / sums[1]), rel=1e-4)
    weights = torch.load(runs / "selected" / "weights.pt", weights_only=True)
    if sel["selected_epoch"]:
        chosen = torch.load(runs / "selected" / "candidates" / f"epoch_{sel['selected_epoch']:04d}.pt",
                            weights_only=True)
        assert all(torch.equal(weights[k], chosen[k]) for k in weights)
    else:
        last = max(k for k in weights if k.endswith(".weight"))
        assert not weights[last].any()
