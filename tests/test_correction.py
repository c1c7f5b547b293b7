"""Low-resolution correction: coarsening, upsampling, coarse partner stores, `slipstream couple correct`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clitools import assert_one_line_error
from solver.errors import ConfigError, StoreError
from solver.microstructure import Microstructure, coarsen

# 8 x 8 Al maps, 2 increments: a fine campaign and its 2x coarser partner in seconds
TINY = {"samples": 8, "seed": 11,
        "microstructure": {"cells": [8, 8, 1], "grains": [3, 6], "textures": ["random"]},
        "materials": ["Al-DAMASK"], "boundary": "periodic",
        "loading": {"modes": ["tension", "shear"], "directions": [[1, 0, 0], [0, 1, 0]],
                    "strain": [0.002, 0.004], "increments": 2},
        "output": {"every": 1}}
SMALL = {"ensemble": 2, "epochs": 2, "batch_size": 8, "model_kwargs": {"width": 8, "modes": 3, "layers": 2},
         "split": {"validation": 0.25, "test": 0.125, "held_out": []}}


def _map(grain_id, euler_of_grain):
    gid = np.asarray(grain_id, dtype=np.int32)[None]
    return Microstructure(euler=np.asarray(euler_of_grain, dtype=float)[gid], grain_id=gid, size=[1e-4, 1e-4, 1e-5])


def test_coarsen_takes_the_majority_grain_of_each_block():
    # 4 x 4 map, 2 x 2 blocks: top-left block 3 of grain 0; top-right 2-2 tie (first met wins: grain 1);
    # bottom-left all grain 2; bottom-right 3 of grain 3 (grain 1 loses its last voxel there)
    gid = [[0, 0, 1, 2],
           [0, 1, 2, 1],
           [2, 2, 3, 3],
           [2, 2, 3, 1]]
    euler = [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9], [1.0, 1.1, 1.2]]
    c = coarsen(_map(gid, euler), 2)
    assert c.shape == (1, 2, 2)
    np.testing.assert_array_equal(c.grain_id[0], [[0, 1], [2, 3]])
    np.testing.assert_allclose(c.euler[0, :, :, 0], [[0.1, 0.4], [0.7, 1.0]])
    np.testing.assert_allclose(c.size, [1e-4, 1e-4, 1e-5])  # the same box, larger voxels
    # a grain that wins no block vanishes, and ids stay contiguous
    c = coarsen(_map([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 2, 1], [0, 0, 1, 1]], euler[:3]), 2)
    assert c.n_grains == 2 and set(np.unique(c.grain_id)) == {0, 1}
    assert coarsen(_map(gid, euler), 1).shape == (1, 4, 4)
    with pytest.raises(ConfigError, match="does not divide"):
        coarsen(_map(gid, euler), 3)
    with pytest.raises(ConfigError, match="positive integer"):
        coarsen(_map(gid, euler), 0)


def test_upsampling_nearest_inverts_block_means_and_bilinear_is_exact_on_linear_fields():
    from surrogate.correction import restrict, upsample

    rng = np.random.default_rng(0)
    coarse = rng.normal(size=(2, 3, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(restrict(upsample(coarse, 4, "nearest"), 4), coarse, rtol=1e-6)
    np.testing.assert_allclose(upsample(np.full((1, 4, 4), 2.5, np.float32), 2), 2.5)
    # c[I] = I along x: the cell-centred bilinear value at fine centre x_f = (i + 1/2)/k - 1/2 is x_f itself
    k, n = 4, 6
    c = np.tile(np.arange(n, dtype=np.float32), (3, 1))
    fine = upsample(c, k)[0]
    xf = (np.arange(n * k) + 0.5) / k - 0.5
    inside = (xf >= 0) & (xf <= n - 1)  # beyond, the periodic image (n-1 -> 0) is interpolated
    np.testing.assert_allclose(fine[inside], xf[inside], atol=1e-6)
    # periodic: between the last and the first coarse voxel the value runs from n-1 back to 0
    assert fine[-1] == pytest.approx((n - 1) * (1 - 0.375) + 0 * 0.375)


def test_a_correction_model_without_correction_returns_the_coarse_fields():
    import torch

    from surrogate import features
    from surrogate.models import Surrogate

    m = Surrogate(n_fields=30 + 16, backbone_kwargs={"width": 8, "modes": 3, "layers": 1}, n_coarse=16)
    m.target_norm.set(np.linspace(-1, 1, 16), np.linspace(1, 3, 16))
    fields = torch.randn(2, 46, 8, 8)  # the last layer starts at zero: untrained, it adds nothing
    out = m(fields, torch.zeros(2, features.N_CONDITION), torch.zeros(2, 12, 8, 8))
    torch.testing.assert_close(m.physical(out["values"]), fields[:, -16:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError):
        Surrogate(n_coarse=3)


def test_coarsen_option_keeps_old_fingerprints_and_shrinks_the_grid():
    from solver.campaign import parse_campaign

    fine, coarse = parse_campaign(TINY), parse_campaign({**TINY, "microstructure": {**TINY["microstructure"],
                                                                                     "coarsen": 2}})
    assert "coarsen" not in fine.config["microstructure"]  # stores made before the key keep their fingerprint
    assert coarse.config["microstructure"]["coarsen"] == 2
    assert fine.grid_shape == (1, 8, 8) and coarse.grid_shape == (1, 4, 4)
    with pytest.raises(ConfigError, match="does not divide"):
        parse_campaign({**TINY, "microstructure": {**TINY["microstructure"], "coarsen": 3}})


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A fine campaign, its 2x coarser partner, and a small correction trained on them (serial, in-process)."""
    import yaml
    from mpi4py import MPI

    from solver.campaign import run_campaign
    from surrogate.train import train

    if MPI.COMM_WORLD.size > 1:
        pytest.skip("built serially")
    base = tmp_path_factory.mktemp("correction")
    cfg = base / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    run_campaign(MPI.COMM_SELF, cfg, base / "fine.zarr", quiet=True)
    run_campaign(MPI.COMM_SELF, cfg, base / "coarse.zarr", quiet=True, coarsen=2)
    train(base / "fine.zarr", base / "model", SMALL, quiet=True, coarse=base / "coarse.zarr")
    return base


@pytest.mark.skip_in_parallel
def test_the_coarse_partner_solves_the_coarsened_maps_under_the_same_loads(pair):
    import zarr

    from solver.campaign import parse_campaign, sample_config
    from solver.config import prepare_simulation

    fine, coarse = (zarr.open_group(str(pair / n), mode="r") for n in ("fine.zarr", "coarse.zarr"))
    spec = parse_campaign(TINY)
    for i in range(TINY["samples"]):
        ms = prepare_simulation(sample_config(spec, i)).microstructure
        np.testing.assert_array_equal(coarse["euler0"][i], coarsen(ms, 2).euler)
        np.testing.assert_array_equal(coarse["load_direction"][i], fine["load_direction"][i])
        assert coarse["load_strain"][i] == fine["load_strain"][i]
    # a periodic cell's mean stress does not depend much on the grid: the coarse curve is close to the fine one
    rel = np.linalg.norm(coarse["macro_stress"][:, -1] - fine["macro_stress"][:, -1], axis=1) / \
        np.linalg.norm(fine["macro_stress"][:, -1], axis=1)
    assert np.all(rel < 0.1), rel


@pytest.mark.skip_in_parallel
def test_a_store_that_is_not_the_coarse_partner_is_refused(pair, tmp_path):
    import yaml
    from mpi4py import MPI

    from solver.campaign import run_campaign
    from surrogate.correction import coarsening_factor
    from surrogate.data import store_info

    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**TINY, "samples": 2, "seed": 12}))
    run_campaign(MPI.COMM_SELF, other, tmp_path / "other.zarr", quiet=True, coarsen=2)
    with pytest.raises(StoreError, match="not a partner.*seed"):
        coarsening_factor(store_info(pair / "fine.zarr"), store_info(tmp_path / "other.zarr"))
    with pytest.raises(StoreError, match="not coarser"):
        coarsening_factor(store_info(pair / "fine.zarr"), store_info(pair / "fine.zarr"))
    assert coarsening_factor(store_info(pair / "fine.zarr"), store_info(pair / "coarse.zarr")) == 2


@pytest.mark.skip_in_parallel
def test_a_single_crystal_needs_no_correction(pair, tmp_path):
    """A homogeneous crystal's solution does not depend on the grid: the plain coarse solve is exact."""
    from coupling.correct import compare_with_fine
    from coupling.whatif import _solve
    from mpi4py import MPI
    from surrogate.uncertainty import load_model

    ens = load_model(pair / "model")
    ms = _map(np.zeros((8, 8), int), [[0.3, 0.7, 1.1]])
    load = {"mode": "tension", "direction": [1, 0, 0], "strain": 0.003}
    mat = dict(ens.meta["store"]["material"])
    fine = _solve(MPI.COMM_SELF, ms, load, 2, tmp_path / "fine", mat, True)
    coarse = _solve(MPI.COMM_SELF, ms, load, 2, tmp_path / "coarse", mat, True, coarsen=2)
    _, metrics, _ = compare_with_fine(ens, fine["store"], coarse["store"])
    for base in ("coarse_nearest", "coarse_bilinear", "coarse_grain"):
        assert metrics[base]["von_mises_mape"] < 1e-5 and metrics[base]["stress_nmae_mean"] < 1e-5


@pytest.mark.skip_in_parallel
def test_evaluate_reports_the_correction_beside_the_plain_coarse_solve(pair, run_cli, tmp_path):
    r = run_cli("evaluate", "--model", pair / "model", "--store", pair / "fine.zarr", "--coarse", pair / "coarse.zarr",
                "--out", tmp_path / "ev", "--split", "all", "--no-plots")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "ev" / "evaluation.json").read_text())["splits"]["all"]
    assert set(rep["baselines"]) == {"coarse_nearest", "coarse_bilinear", "coarse_grain"}
    assert rep["samples"] == rep["baselines"]["coarse_nearest"]["samples"] == TINY["samples"]
    r = run_cli("evaluate", "--model", pair / "model", "--store", pair / "fine.zarr", "--out", tmp_path / "ev2")
    assert_one_line_error(r, "coarse partner")


def _corrected(path):
    import zarr

    g = zarr.open_group(str(path / "corrected.zarr"), mode="r")
    return {k: np.asarray(g[k]) for k in ("stress", "strain", "euler", "slip")}


@pytest.mark.skip_in_parallel
def test_couple_correct_serial_and_on_two_ranks(pair, run_cli, tmp_path):
    args = ("couple", "correct", "--model", pair / "model", "--microstructure", f"{pair / 'fine.zarr'}:0",
            "--load", "tension 0.3% [1,0,0]", "--steps", "2", "--trust-threshold", "0", "--verify")
    r1 = run_cli(*args, "--out", tmp_path / "serial")
    assert r1.returncode == 0, r1.stderr
    r2 = run_cli(*args, "--out", tmp_path / "mpi", ranks=2)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.count("couple correct: answer from") == 1  # rank 0 prints
    s = json.loads((tmp_path / "serial" / "summary.json").read_text())
    assert s["answer_from"] == "corrected coarse solve" and s["factor"] == 2 and 0 <= s["trust"] <= 1
    assert set(s["errors_against_fine_solve"]) == {"corrected", "coarse_nearest", "coarse_bilinear", "coarse_grain"}
    assert s["speedup"] > 0 and s["fine_solve_seconds"] > 0
    for name in ("ipf_initial.png", "ipf_final.png", "von_mises_stress.png", "stress_strain.png",
                 "von_mises_error.png", "pole_figures_final.png"):
        assert (tmp_path / "serial" / name).stat().st_size > 1000
    a, b = _corrected(tmp_path / "serial"), _corrected(tmp_path / "mpi")
    assert a["stress"].shape == (3, 8, 8, 6)
    for k in a:  # the coarse solve on 2 ranks agrees with the serial one to solver tolerance
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-4 * float(np.abs(a[k]).max()))


@pytest.mark.skip_in_parallel
def test_couple_correct_refuses_bad_input(pair, run_cli, tmp_path):
    base = ("couple", "correct", "--microstructure", f"{pair / 'fine.zarr'}:0", "--out", tmp_path / "x")
    r = run_cli(*base, "--model", pair / "nope", "--load", "tension 0.3%")
    assert_one_line_error(r, "model.json")
    r = run_cli(*base, "--model", pair / "model", "--load", "tension 0.3% [1,0]")
    assert_one_line_error(r, "direction")
    from surrogate.train import train
    from synthetic_store import make_store

    store = make_store(tmp_path / "syn.zarr", samples=6, n=8, steps=2)
    train(store, tmp_path / "plain", SMALL, quiet=True)
    r = run_cli(*base, "--model", tmp_path / "plain", "--load", "tension 0.3%")
    assert_one_line_error(r, "not a low-resolution correction")
    odd = tmp_path / "odd.npz"
    from solver.readers import write_microstructure

    write_microstructure(odd, _map(np.zeros((7, 7), int), [[0.1, 0.2, 0.3]]))
    r = run_cli("couple", "correct", "--model", pair / "model", "--microstructure", odd, "--load", "tension 0.3%",
                "--out", tmp_path / "y")
    assert_one_line_error(r, "does not divide")


def test_the_coarse_map_channels_flag_voxels_the_coarse_grid_gives_to_another_grain():
    from solver.rotations import euler_to_matrix
    from surrogate import features
    from surrogate.correction import coarse_map_channels

    gid = np.array([[0, 0, 1, 2], [0, 1, 2, 1], [2, 2, 3, 3], [2, 2, 3, 1]])
    euler = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9], [1.0, 1.1, 1.2]])
    fine = _map(gid, euler)
    fields = np.moveaxis(features.cubic_orientation_tensor(euler_to_matrix(fine.euler[0])), -1, 0)
    ch = coarse_map_channels(fields.astype(np.float32), coarsen(fine, 2).euler[0], 2)
    majority = np.array([[0, 1], [2, 3]]).repeat(2, 0).repeat(2, 1)
    assert np.all(ch[-1][gid == majority] < 1e-10) and np.all(ch[-1][gid != majority] > 1e-4)


def test_grain_aware_upsampling_takes_values_from_the_voxels_own_crystal():
    from solver.rotations import euler_to_matrix
    from surrogate import features
    from surrogate.correction import upsample_grain_aware

    gid = np.array([[0, 0, 1, 2], [0, 1, 2, 1], [2, 2, 3, 3], [2, 2, 3, 1]])
    euler = np.array([[0.0, 0.0, 0.0], [0.785, 0.0, 0.0], [0.0, 0.785, 0.0], [0.5, 0.9, 1.3]])
    fine = _map(gid, euler)
    coarse = coarsen(fine, 2)

    def tensor(ms):
        return np.moveaxis(features.cubic_orientation_tensor(euler_to_matrix(ms.euler[0])), -1, 0)

    values = np.array([[[1.0, 2.0], [3.0, 4.0]]])  # one value per coarse voxel = per majority grain 0, 1, 2, 3
    up = upsample_grain_aware(values, 2, tensor(fine), tensor(coarse))[0]
    # every fine voxel gets its own grain's value: the coarse voxel of grain g carries g + 1
    np.testing.assert_allclose(up, gid + 1.0, atol=1e-3)
    np.testing.assert_allclose(upsample_grain_aware(np.full((1, 2, 2), 7.0), 2, tensor(fine), tensor(coarse)), 7.0,
                               rtol=1e-6)


@pytest.mark.skip_in_parallel
def test_a_load_far_outside_training_falls_back_to_the_fine_solve(pair, run_cli, tmp_path):
    # ten times the largest trained strain, in a trained mode: the domain factor is 0, the trust too, and the
    # fine grid is solved
    import zarr

    from solver.loading import MODES

    g = zarr.open_group(str(pair / "fine.zarr"), mode="r")
    mode = MODES[int(g["load_mode"][json.loads((pair / "model" / "model.json").read_text())["splits"]["train"][0]])]
    r = run_cli("couple", "correct", "--model", pair / "model", "--microstructure", f"{pair / 'fine.zarr'}:2",
                "--load", f"{mode} 4% [1,0,0]", "--steps", "2", "--quiet", "--out", tmp_path / "f")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert s["trust"] == 0.0 and s["domain_factor"] == 0.0 and "beyond" in s["domain_reason"]
    assert s["answer_from"] == "fine solve (fallback)" and (tmp_path / "f" / "fine" / "results.zarr").is_dir()
    assert s["answer"] == str(tmp_path / "f" / "fine")
