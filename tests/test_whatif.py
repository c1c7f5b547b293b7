"""`slipstream predict`: load strings, maps from files and stores, fallback, --verify serially and on 2 ranks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clitools import assert_one_line_error
from coupling.whatif import parse_load
from solver.errors import ConfigError
from solver.microstructure import Microstructure
from solver.readers import write_microstructure
from synthetic_store import make_store, voronoi_map

SMALL = {"ensemble": 2, "epochs": 2, "batch_size": 8, "model_kwargs": {"width": 8, "modes": 3, "layers": 2},
         "split": {"validation": 0.2, "test": 0.1, "held_out": []}}


@pytest.fixture(scope="module")
def model_and_map(tmp_path_factory):
    """A small model (Al, synthetic 8 x 8 maps) and a 12 x 12 EBSD map written here (larger than the training grid)."""
    from surrogate.train import train

    base = tmp_path_factory.mktemp("whatif")
    store = make_store(base / "syn.zarr", samples=12, n=8, steps=3)
    train(store, base / "model", SMALL, quiet=True)
    rng = np.random.default_rng(0)
    gid = voronoi_map(12, 4, rng)
    euler = np.stack([rng.uniform(0, 2 * np.pi, 4), np.arccos(rng.uniform(-1, 1, 4)),
                      rng.uniform(0, 2 * np.pi, 4)], -1)[gid]
    ms = Microstructure(euler=euler[None], grain_id=gid[None].astype(np.int32), size=[12e-6, 12e-6, 1e-6],
                        periodic=False, source="test map")
    ang = base / "map.ang"
    write_microstructure(ang, ms)
    return base / "model", ang, store


def test_load_strings():
    assert parse_load("tension 0.005 [1,0,0]") == {"mode": "tension", "strain": 0.005, "direction": [1.0, 0.0, 0.0]}
    assert parse_load("shear 0.5%")["strain"] == pytest.approx(0.005)
    assert parse_load("compression 1e-3 [1 1 0]")["direction"] == [1.0, 1.0, 0.0]
    for bad in ("", "tension", "twist 0.01", "tension -0.01", "tension nan", "tension 0.01 [1,0]",
                "tension 0.01 [0,0,0]", "deformation_gradient 0.01"):
        with pytest.raises(ConfigError):
            parse_load(bad)


@pytest.mark.skip_in_parallel
def test_predict_writes_pictures_fields_and_trust(model_and_map, run_cli, tempdir):
    model, ang, _ = model_and_map
    r = run_cli("predict", "--model", model, "--microstructure", ang, "--load", "tension 0.004 [1,0,0]",
                "--out", tempdir / "p", "--trust-threshold", "0")
    assert r.returncode == 0, r.stderr
    s = json.loads((tempdir / "p" / "summary.json").read_text())
    assert s["answer_from"] == "surrogate" and 0 <= s["trust"] <= 1 and s["answer"] == str(tempdir / "p")
    for name in ("ipf_initial.png", "ipf_final.png", "pole_figures_initial.png", "pole_figures_final.png",
                 "von_mises_stress.png", "accumulated_slip.png", "stress_strain.png", "trust.png"):
        assert (tempdir / "p" / name).stat().st_size > 1000
    import zarr
    g = zarr.open_group(str(tempdir / "p" / "prediction.zarr"), mode="r")
    assert g["stress"].shape == (11, 12, 12, 6) and g["stress"].attrs["units"] == "Pa"


@pytest.mark.skip_in_parallel
def test_out_of_domain_load_falls_back_to_the_solver(model_and_map, run_cli, tempdir):
    model, ang, _ = model_and_map
    # ten times the largest trained strain: the domain factor is 0, so the trust is 0 and the solver answers
    r = run_cli("predict", "--model", model, "--microstructure", ang, "--load", "tension 0.1 [1,0,0]",
                "--out", tempdir / "f", "--steps", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    s = json.loads((tempdir / "f" / "summary.json").read_text())
    assert s["trust"] == 0.0 and s["domain_factor"] == 0.0 and "beyond" in s["domain_reason"]
    assert s["answer_from"] == "solver (fallback)" and s["answer"] == str(tempdir / "f" / "solver")
    assert (tempdir / "f" / "solver" / "results.zarr").is_dir()


@pytest.mark.skip_in_parallel
def test_an_unseen_texture_lowers_the_trust_and_falls_back(model_and_map, run_cli, tempdir):
    model, _, _ = model_and_map
    # one orientation everywhere, no boundaries: unlike the random 4-grain training maps
    ms = Microstructure(euler=np.zeros((1, 12, 12, 3)), grain_id=np.zeros((1, 12, 12), dtype=np.int32),
                        size=[12e-6, 12e-6, 1e-6], periodic=True, source="single crystal")
    grid = tempdir / "crystal.npz"
    write_microstructure(grid, ms)
    r = run_cli("predict", "--model", model, "--microstructure", grid, "--load", "tension 0.004 [1,0,0]",
                "--out", tempdir / "t", "--steps", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    s = json.loads((tempdir / "t" / "summary.json").read_text())
    assert s["domain_factor"] < 0.5 and "unlike the training maps" in s["domain_reason"]
    assert s["answer_from"] == "solver (fallback)"


@pytest.mark.skip_in_parallel
@pytest.mark.parametrize("ranks", [1, 2])
def test_verify_runs_the_solver_and_reports_errors(model_and_map, run_cli, tempdir, ranks):
    model, ang, _ = model_and_map
    # a relative --out (the solver's run is written inside it and must still find the map)
    r = run_cli("predict", "--model", model, "--microstructure", ang, "--load", "tension 0.004 [1,0,0]",
                "--out", "v", "--steps", "3", "--verify", "--trust-threshold", "0", ranks=ranks, cwd=tempdir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("surrogate vs solver") == 1  # rank 0 alone prints
    s = json.loads((tempdir / "v" / "summary.json").read_text())
    assert s["answer_from"] == "surrogate"
    e = s["errors_against_solver"]
    assert np.isfinite(e["von_mises_mape"]) and 0 <= e["slip_system"]["accuracy"] <= 1
    assert s["solver"]["speedup_of_surrogate"] > 0


@pytest.mark.skip_in_parallel
def test_predict_bad_input(model_and_map, run_cli, tempdir):
    model, ang, store = model_and_map
    base = ["--out", str(tempdir / "x")]
    assert_one_line_error(run_cli("predict", "--model", tempdir / "none", "--microstructure", ang, "--load",
                                  "tension 0.01", *base), "no model.json")
    assert_one_line_error(run_cli("predict", "--model", model, "--microstructure", ang, "--load", "tension",
                                  *base), "MODE STRAIN")
    corrupt = tempdir / "corrupt.ang"
    lines = ang.read_text().splitlines()
    corrupt.write_text("\n".join(lines[:-2] + ["1.0 abc 2.0"]) + "\n")
    assert_one_line_error(run_cli("predict", "--model", model, "--microstructure", corrupt, "--load",
                                  "tension 0.01", *base), "corrupt.ang")
    assert_one_line_error(run_cli("predict", "--model", model, "--microstructure", f"{store}:99", "--load",
                                  "tension 0.01", *base), "no sample 99")
    assert not (tempdir / "x").exists()
