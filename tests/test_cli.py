"""`slipstream simulate` end to end, and bad input: one line, exit 2, nothing half-written."""

import json

import numpy as np
import pytest
import yaml

from solver.microstructure import Microstructure
from solver.readers import write_microstructure

GOOD = {
    "microstructure": {"kind": "voronoi", "cells": [3, 3, 2], "grains": 3, "seed": 1, "texture": "random"},
    "material": {"preset": "Cu"},
    "boundary": "periodic",
    "loading": {"mode": "tension", "direction": [1, 0, 0], "strain": 0.002, "rate": 1.0e-3, "increments": 3},
    "output": {"every": 1},
}


def write_config(path, cfg):
    path.write_text(yaml.safe_dump(cfg))
    return path


from clitools import assert_one_line_error  # noqa: E402


@pytest.mark.skip_in_parallel
def test_simulate_writes_store_paraview_and_pictures(tempdir, run_cli):
    import xarray as xr

    from solver import store

    cfg = write_config(tempdir / "run.yaml", GOOD)
    proc = run_cli("simulate", cfg, "--out", tempdir / "run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("[3/3]") == 1
    out = tempdir / "run"
    for name in ("stress_strain.png", "ipf_initial.png", "ipf_final.png", "von_mises_stress.png",
                 "pole_figures_initial.png", "pole_figures_final.png", "gnd_density.png", "fields.xdmf",
                 "summary.json"):
        assert (out / name).stat().st_size > 0, name
    group = store.open_store(out / "results.zarr")
    assert store.sample_status(group).tolist() == [store.DONE]
    assert group["stress"].shape == (1, 4, 2, 3, 3, 6)
    ds = xr.open_zarr(out / "results.zarr")
    assert ds["stress"].dims == ("sample", "step", "z", "y", "x", "voigt")
    assert ds["stress"].attrs["units"] == "Pa"
    # the mean of the per-voxel Cauchy stress matches the stored macroscopic stress (equal voxel volumes, small strain)
    mean_voxel = np.asarray(ds["stress"][0, -1]).reshape(-1, 6).mean(0)
    assert np.allclose(mean_voxel, ds["macro_stress"][0, -1], rtol=1e-3, atol=1e-3 * abs(float(ds["macro_stress"][0, -1, 0])))
    # Nye tensor: zero before deformation, non-zero where grains meet after it
    assert ds["nye"].dims == ("sample", "step", "z", "y", "x", "tensor9")
    assert np.abs(np.asarray(ds["nye"][0, 0])).max() == 0.0
    assert np.abs(np.asarray(ds["nye"][0, -1])).max() > 0.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_stress_along_load_MPa"] > 0
    # the run directory is not overwritten without --overwrite
    again = run_cli("simulate", cfg, "--out", out)
    assert_one_line_error(again, "already exists")


@pytest.mark.skip_in_parallel
def test_simulate_under_mpirun_matches_serial(tempdir, run_cli):
    from solver import store

    cfg = write_config(tempdir / "run.yaml", GOOD)
    serial = run_cli("simulate", cfg, "--out", tempdir / "serial", "--quiet")
    parallel = run_cli("simulate", cfg, "--out", tempdir / "parallel", ranks=2)
    assert serial.returncode == 0 and parallel.returncode == 0, parallel.stderr
    assert parallel.stdout.count("[3/3]") == 1  # progress printed once, by rank 0
    a = store.open_store(tempdir / "serial" / "results.zarr")
    b = store.open_store(tempdir / "parallel" / "results.zarr")
    assert np.allclose(a["macro_stress"][:], b["macro_stress"][:], rtol=1e-7, atol=1.0)
    assert np.allclose(a["stress"][:], b["stress"][:], rtol=1e-4, atol=1e2)  # float32 per-voxel fields


def _bad_cases(tmp):
    ang_ok = tmp / "ok.ang"
    ms = Microstructure(euler=np.zeros((1, 3, 3, 3)), grain_id=np.zeros((1, 3, 3), dtype=np.int32),
                        size=[3e-6, 3e-6, 1e-6], periodic=False)
    write_microstructure(ang_ok, ms)
    corrupt = tmp / "corrupt.ang"
    text = ang_ok.read_text().splitlines()
    corrupt.write_text("\n".join(text[:-3] + ["0.1 0.2 abc 1.0 2.0"]) + "\n")
    nan_euler = dict(GOOD, microstructure={"kind": "voronoi", "cells": [2, 2, 2], "grains": 1,
                                           "texture": {"single": {"euler": [float("nan"), 0.0, 0.0]}}})
    big_euler = dict(GOOD, microstructure={"kind": "voronoi", "cells": [2, 2, 2], "grains": 1,
                                           "texture": {"single": {"euler": [0.0, 45.0, 0.0]}}})
    return {
        "unknown preset": (dict(GOOD, material={"preset": "Unobtainium"}), ["Unobtainium"]),
        "unknown lattice": (dict(GOOD, material={"preset": "Cu", "lattice": "hcp"}), ["hcp"]),
        "nan euler": (nan_euler, ["NaN"]),
        "out-of-range euler": (big_euler, ["Phi"]),
        "zero increments": (dict(GOOD, loading=dict(GOOD["loading"], increments=0)), ["increments"]),
        "unknown key": (dict(GOOD, loading=dict(GOOD["loading"], strian=0.1)), ["strian"]),
        "unknown section": (dict(GOOD, materials={"preset": "Cu"}), ["materials"]),
        "missing file": (dict(GOOD, microstructure={"kind": "ebsd", "file": "nowhere.ang"}), ["nowhere.ang"]),
        "corrupt ang": (dict(GOOD, microstructure={"kind": "ebsd", "file": str(corrupt)}), ["corrupt.ang"]),
        "bad boundary": (dict(GOOD, boundary="sticky"), ["sticky"]),
        "specimen off-axis": (dict(GOOD, boundary="specimen", loading=dict(GOOD["loading"], direction=[1, 1, 0])),
                              ["specimen"]),
    }


@pytest.mark.skip_in_parallel
@pytest.mark.parametrize("case", ["unknown preset", "unknown lattice", "nan euler", "out-of-range euler",
                                  "zero increments", "unknown key", "unknown section", "missing file",
                                  "corrupt ang", "bad boundary", "specimen off-axis"])
def test_bad_input_one_line_error_nothing_written(tempdir, run_cli, case):
    cfg, needles = _bad_cases(tempdir)[case]
    path = write_config(tempdir / "bad.yaml", cfg)
    proc = run_cli("simulate", path, "--out", tempdir / "out")
    assert_one_line_error(proc, *needles)
    assert not (tempdir / "out").exists()


@pytest.mark.skip_in_parallel
def test_malformed_yaml_and_missing_config(tempdir, run_cli):
    bad = tempdir / "bad.yaml"
    bad.write_text("loading: {mode: tension,, direction: [1, 0\n")
    assert_one_line_error(run_cli("simulate", bad, "--out", tempdir / "out"), "malformed YAML", "line")
    assert_one_line_error(run_cli("simulate", tempdir / "none.yaml", "--out", tempdir / "out"), "not found")
    assert not (tempdir / "out").exists()


@pytest.mark.skip_in_parallel
def test_bad_input_under_mpirun_does_not_hang(tempdir, run_cli):
    path = write_config(tempdir / "bad.yaml", dict(GOOD, material={"preset": "Unobtainium"}))
    proc = run_cli("simulate", path, "--out", tempdir / "out", ranks=2, timeout=120)
    assert proc.returncode != 0
    assert "slipstream: error:" in proc.stderr and "Unobtainium" in proc.stderr
    assert not (tempdir / "out").exists()
