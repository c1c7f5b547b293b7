"""`slipstream campaign` and `slipstream inspect`: distributions -> samples -> one resumable Zarr store.

The solving tests use examples/campaign_tiny.yaml (4 samples of 3x3x1 voxels, 2
increments, small strains): serial, under mpirun -n 2 with one and two ranks per
sample, killed with SIGKILL and resumed, extended. The failure and dispatch paths
are tested with a fake solver (fast, exact), also under mpirun -n 2.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import yaml

from solver import campaign, store
from solver.errors import ConfigError, SolverError, StoreError

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "campaign_tiny.yaml"
DATA_FIELDS = ("euler0", "grain_id", "load_mode", "load_direction", "load_strain", "load_rate", "time",
               "stress", "strain", "euler", "slip", "slip_resistance", "von_mises_stress", "von_mises_strain",
               "macro_stress", "macro_strain")
INPUT_FIELDS = ("euler0", "grain_id", "load_mode", "load_direction", "load_strain", "load_rate", "time")


def _comm():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def tiny_config(**changes) -> dict:
    """The tiny example's config; a mapping given for a section is merged into it, anything else replaces."""
    cfg = yaml.safe_load(TINY.read_text())
    for key, value in changes.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    return cfg


def write_config(path, cfg) -> pathlib.Path:
    path = pathlib.Path(path)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("slipstream: error: ")
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]


def assert_same_samples(a, b, *, exact: bool, indices=None):
    """Sample-by-sample equality of two stores: inputs exactly, results exactly or to solver accuracy."""
    ga, gb = store.open_store(a), store.open_store(b)
    idx = range(gb["status"].shape[0]) if indices is None else indices
    for i in idx:
        assert ga["status"][i] == gb["status"][i] == store.DONE, i
        for name in DATA_FIELDS:
            x, y = np.asarray(ga[name][i]), np.asarray(gb[name][i])
            if exact or name in INPUT_FIELDS:
                assert np.array_equal(x, y), (i, name)
            elif name in ("stress", "von_mises_stress", "slip_resistance", "macro_stress"):
                assert np.allclose(x, y, rtol=1e-4, atol=1e2), (i, name)  # Pa, float32 per voxel
            else:
                assert np.allclose(x, y, rtol=1e-4, atol=1e-9), (i, name)


def assert_done_means_complete(path):
    """No sample is ever done with missing data."""
    g = zarr_open_live(path)
    status = store.sample_status(g)
    for i in np.flatnonzero(status == store.DONE):
        for name in DATA_FIELDS:
            v = np.asarray(g[name][i])
            if v.dtype.kind == "f":
                assert np.all(np.isfinite(v)), (i, name)
            elif name == "grain_id":
                assert v.min() >= 0, (i, name)
    return status


def zarr_open_live(path):
    return store.open_store(path, "r+")  # the live metadata (a running campaign has not consolidated yet)


# ------------------------------------------------------------- the config ---

def test_sample_depends_only_on_seed_and_index():
    few = campaign.parse_campaign(tiny_config(samples=3))
    many = campaign.parse_campaign(tiny_config(samples=1000))
    for i in range(3):
        assert campaign.sample_config(few, i) == campaign.sample_config(many, i)
    # SeedSequence(seed).spawn(n)[i] is the stream of sample i, whatever n
    child = np.random.SeedSequence(few.seed).spawn(5)[2]
    assert np.array_equal(np.random.default_rng(child).random(4), campaign.sample_rng(few.seed, 2).random(4))
    plans = [campaign.sample_plan(many, i) for i in range(200)]
    assert len({p["microstructure_seed"] for p in plans}) == 200
    assert {p["mode"] for p in plans} == {"tension", "compression", "shear"}
    assert all(2 <= p["grains"] <= 4 and 0.0002 <= p["strain"] <= 0.0005 for p in plans)
    d = np.array([p["direction"] for p in plans])
    assert np.allclose(np.linalg.norm(d, axis=1), 1.0)
    assert abs(d.mean(axis=0)).max() < 0.15  # uniform on the sphere: no preferred side
    other = campaign.parse_campaign(tiny_config(seed=8))
    assert campaign.sample_config(other, 0) != campaign.sample_config(few, 0)
    # the config is normalized: defaults written out, key order irrelevant, a stored config parses to itself
    assert campaign.parse_campaign(few.config).config == few.config
    assert campaign.sample_plan(few.config, 2) == campaign.sample_plan(few, 2)
    assert few.config["loading"]["rate"] == 1.0e-3 and few.config["solver"] == {}
    assert store.config_fingerprint(few.config) == store.config_fingerprint(
        campaign.parse_campaign(dict(reversed(list(tiny_config(samples=3).items())))).config)


def test_default_campaign_config_is_valid():
    spec = campaign.load_campaign(ROOT / "examples" / "campaign_default.yaml")
    assert spec.grid_shape[0] == 1 and spec.samples >= 100  # 2-D maps, a few hundred samples
    assert spec.material_objects[0].name == "Al-DAMASK"  # the shipped surrogate's material


# ---------------------------------------------------------- fake solver ----

def _fake_solver(monkeypatch, fail=(), slow=()):
    """Replace solve_sample by a fast fake: deterministic fields from the sample's inputs."""
    import solver.simulate as simulate
    from solver.loading import output_increments

    def fake(comm, setup, progress=None, on_step=None):
        i = setup.config["microstructure"]["seed"]
        if i in fail:
            raise SolverError(f"no convergence after 8 cutbacks (fake, sample seed {i})")
        if i in slow:
            time.sleep(0.5)
        if comm.rank != 0:
            return None, {}
        n_steps = len(output_increments(setup.loading.increments, setup.output["every"]))
        shape = setup.microstructure.shape
        rng = np.random.default_rng(i)  # the same fields for the same sample, whoever solves it
        step = (n_steps,) + shape
        fields = {"euler0": setup.microstructure.euler, "grain_id": setup.microstructure.grain_id,
                  "load_mode": setup.loading.mode, "load_direction": setup.loading.direction,
                  "load_strain": setup.loading.strain, "load_rate": setup.loading.rate,
                  "time": np.linspace(0, setup.loading.duration, n_steps),
                  "stress": rng.random(step + (6,)), "strain": rng.random(step + (6,)),
                  "euler": rng.random(step + (3,)), "slip": rng.random(step + (12,)),
                  "slip_resistance": rng.random(step + (12,)), "von_mises_stress": rng.random(step),
                  "von_mises_strain": rng.random(step), "macro_stress": rng.random((n_steps, 6)),
                  "macro_strain": rng.random((n_steps, 6)), "wall_time": 0.01, "increments": 2,
                  "newton_iterations": 4, "cutbacks": 0, "nye": rng.random(step + (9,)),
                  "plastic_deformation": rng.random(step + (9,))}
        return fields, {}

    monkeypatch.setattr(simulate, "solve_sample", fake)
    return fake


def _fake_seed(spec, i):
    return campaign.sample_plan(spec, i)["microstructure_seed"]


@pytest.mark.mpi
def test_failures_are_recorded_and_the_campaign_goes_on(tempdir, monkeypatch):
    """Dynamic distribution and failure handling with a fake solver (serial and mpirun -n 2)."""
    comm = _comm()
    cfg_path = tempdir / "c.yaml"
    if comm.rank == 0:
        write_config(cfg_path, tiny_config(samples=12))
    comm.Barrier()
    spec = campaign.load_campaign(cfg_path)
    failing = {_fake_seed(spec, 3), _fake_seed(spec, 7)}
    _fake_solver(monkeypatch, fail=failing, slow={_fake_seed(spec, 0)})
    out = tempdir / "log.txt"
    with open(out, "w") if comm.rank == 0 else open(os.devnull, "w") as stream:
        summary = campaign.run_campaign(comm, cfg_path, tempdir / "f.zarr", stream=stream)
    if comm.rank == 0:
        assert summary["done"] == 10 and summary["failed"] == 2 and summary["pending"] == 0
        assert sorted(summary["failures"]) == [3, 7]
        assert "SolverError" in summary["failures"][3] and "cutbacks" in summary["failures"][3]
        log = out.read_text()
        assert log.count("campaign [") == 12  # one line per finished sample, from world rank 0 only
        assert "FAILED" in log and "ETA" in log and "failed sample 3" in log
        if comm.size > 1:  # both groups got work while sample 0 was slow
            assert "[ranks 0]" in log and "[ranks 1]" in log
        g = store.open_store(tempdir / "f.zarr")
        assert store.sample_status(g).tolist() == [1, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1, 1]
        assert "cutbacks" in str(g["failure_reason"][7])
        before = {i: np.asarray(g["stress"][i]) for i in range(12)}
    comm.Barrier()
    # a rerun redoes only the failed samples (now succeeding); done samples are untouched
    _fake_solver(monkeypatch)
    with open(os.devnull, "w") as stream:
        summary = campaign.run_campaign(comm, cfg_path, tempdir / "f.zarr", stream=stream)
    if comm.rank == 0:
        assert summary["solved"] == 2 and summary["done"] == 12 and summary["action"] == "resumed"
        g = store.open_store(tempdir / "f.zarr")
        for i in (0, 1, 2, 4, 5, 6, 8, 9, 10, 11):
            assert np.array_equal(before[i], g["stress"][i])


# ------------------------------------------------------- real solving -----

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny campaign solved serially, uninterrupted (a subprocess, like a user)."""
    if _comm().size > 1:
        pytest.skip("serial reference")
    path = tmp_path_factory.mktemp("reference") / "ref.zarr"
    proc = _cli("campaign", TINY, "--store", path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("campaign [") == 4, proc.stdout
    assert "campaign finished: 4 done, 0 failed, 0 pending of 4" in proc.stdout
    return path


from clitools import cli_command as _cli_cmd  # noqa: E402


def _cli(*args, ranks=1, timeout=300):
    cmd, env = _cli_cmd(*args, ranks=ranks)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skip_in_parallel
def test_mpirun_gives_the_same_samples(reference, tempdir, run_cli):
    """mpirun -n 2 with 1 rank per sample (2 groups, dynamic) and 2 ranks per sample: the serial values."""
    one = run_cli("campaign", TINY, "--store", tempdir / "k1.zarr", ranks=2)
    assert one.returncode == 0, one.stderr
    assert one.stdout.count("campaign [") == 4  # progress from world rank 0 only
    assert_same_samples(reference, tempdir / "k1.zarr", exact=True)  # each sample on one rank, as serially
    two = run_cli("campaign", TINY, "--store", tempdir / "k2.zarr", "--ranks-per-sample", 2, ranks=2)
    assert two.returncode == 0, two.stderr
    assert "[ranks 0-1]" in two.stdout
    assert_same_samples(reference, tempdir / "k2.zarr", exact=False)


@pytest.mark.skip_in_parallel
def test_sigkill_then_rerun_equals_uninterrupted(reference, tempdir):
    path = tempdir / "killed.zarr"
    cmd, env = _cli_cmd("campaign", TINY, "--store", path)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    killed_with = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = assert_done_means_complete(path)
            except StoreError:  # not created yet
                status = np.zeros(0)
            if np.sum(status == store.DONE) >= 1:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_with = status
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed_with is not None, proc.stderr.read()
    assert proc.returncode == -signal.SIGKILL
    status = assert_done_means_complete(path)
    assert 1 <= np.sum(status == store.DONE) < 4, status  # killed partway
    done_before = {int(i): np.asarray(zarr_open_live(path)["stress"][i]) for i in np.flatnonzero(status == 1)}

    rerun = _cli("campaign", TINY, "--store", path)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed" in rerun.stdout
    assert rerun.stdout.count("campaign [") == 4 - len(done_before)  # done samples are not redone
    assert_done_means_complete(path)
    assert_same_samples(reference, path, exact=True)
    g = store.open_store(path)
    for i, stress in done_before.items():
        assert np.array_equal(stress, g["stress"][i])


@pytest.mark.skip_in_parallel
def test_extend_adds_the_same_samples(reference, tempdir, capsys):
    from coupling.cli import main

    small = write_config(tempdir / "small.yaml", tiny_config(samples=2))
    path = tempdir / "grow.zarr"
    first = _cli("campaign", small, "--store", path, "--quiet")
    assert first.returncode == 0, first.stderr
    assert_same_samples(reference, path, exact=True)  # samples 0, 1 do not depend on N
    assert main(["campaign", str(TINY), "--store", str(path)]) == 2
    assert "pass --extend to add samples" in capsys.readouterr().err
    grown = _cli("campaign", TINY, "--store", path, "--extend")
    assert grown.returncode == 0, grown.stderr
    assert grown.stdout.count("campaign [") == 2 and "extended" in grown.stdout
    g = store.open_store(path)
    assert g["stress"].shape[0] == 4 and g.attrs["n_samples"] == 4 and g.attrs["config"]["samples"] == 4
    assert_same_samples(reference, path, exact=True)
    assert main(["campaign", str(small), "--store", str(path), "--extend"]) == 2
    assert "already holds 4 samples" in capsys.readouterr().err


@pytest.mark.mpi
def test_in_process_groupings_agree(tempdir):
    """run_campaign on COMM_WORLD with 1 and with all ranks per sample (serial: once)."""
    comm = _comm()
    cfg_path = tempdir / "two.yaml"
    if comm.rank == 0:
        write_config(cfg_path, tiny_config(samples=2))
    comm.Barrier()
    paths = []
    for k in sorted({1, comm.size}):
        paths.append(tempdir / f"k{k}.zarr")
        summary = campaign.run_campaign(comm, cfg_path, paths[-1], ranks_per_sample=k, quiet=True)
        if comm.rank == 0:
            assert summary["done"] == 2 and summary["ranks_per_sample"] == k
    if comm.rank == 0:
        for p in paths[1:]:
            assert_same_samples(paths[0], p, exact=False)


@pytest.mark.skip_in_parallel
def test_xarray_named_dims_and_units(reference):
    import xarray as xr

    ds = xr.open_zarr(reference)
    assert ds["stress"].dims == ("sample", "step", "z", "y", "x", "voigt")
    assert ds["stress"].shape == (4, 3, 1, 3, 3, 6)
    assert ds["stress"].attrs["units"] == "Pa" and ds["strain"].attrs["units"] == "1"
    assert ds["euler0"].dims == ("sample", "z", "y", "x", "euler_angle") and ds["euler0"].attrs["units"] == "rad"
    assert ds["status"].dims == ("sample",) and ds["status"].values.tolist() == [1, 1, 1, 1]
    assert ds["macro_stress"].dims == ("sample", "step", "voigt")
    assert ds.attrs["schema"] == store.SCHEMA and ds.attrs["config"]["samples"] == 4
    assert ds.attrs["material"]["name"] == "Cu"
    assert np.all(np.isfinite(ds["stress"].values))


# ---------------------------------------------------------- bad input -----

def _bad_configs():
    return {
        "unknown key": (tiny_config(sampels=3), ["sampels"]),
        "unknown loading key": (tiny_config(loading={"direction": [1, 0, 0]}),
                                ["direction"]),
        "grains > voxels": (tiny_config(microstructure={"grains": [2, 10]}), ["grains", "9 voxels"]),
        "empty textures": (tiny_config(microstructure={"textures": []}), ["textures", "empty"]),
        "empty modes": (tiny_config(loading={"modes": []}), ["modes", "empty"]),
        "negative strain": (tiny_config(loading={"strain": [-0.01, 0.02]}), ["strain", "positive"]),
        "empty strain range": (tiny_config(loading={"strain": [0.02, 0.01]}), ["strain", "empty"]),
        "mixed grid shapes": (tiny_config(microstructure={"cells": [[3, 3, 1], [4, 4, 1]]}), ["one grid shape"]),
        "unknown mode": (tiny_config(loading={"modes": ["twist"]}), ["twist"]),
        "unknown preset": (tiny_config(materials=["Unobtainium"]), ["Unobtainium"]),
        "bad texture": (tiny_config(microstructure={"textures": [{"spiral": {}}]}), ["textures[0]"]),
        "zero samples": (tiny_config(samples=0), ["samples"]),
        "random specimen": (tiny_config(boundary="specimen"), ["random", "specimen"]),
        "specimen shear": (tiny_config(boundary="specimen", loading={"directions": [[1, 0, 0]]}),
                           ["specimen", "shear"]),
    }


@pytest.mark.skip_in_parallel
@pytest.mark.parametrize("case", list(_bad_configs()))
def test_bad_config_refused_before_anything(tempdir, capsys, case):
    from coupling.cli import main

    cfg, needles = _bad_configs()[case]
    path = write_config(tempdir / "bad.yaml", cfg)
    assert main(["campaign", str(path), "--store", str(tempdir / "data.zarr")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("slipstream: error: "), err
    for needle in needles:
        assert needle.lower() in err[0].lower(), err[0]
    assert not (tempdir / "data.zarr").exists()


def _spec(**changes):
    return campaign.parse_campaign(tiny_config(**changes), ROOT / "examples")


@pytest.mark.skip_in_parallel
def test_bad_store_refused_before_solving(tempdir, capsys, monkeypatch):
    import zarr

    from coupling.cli import main

    def must_not_solve(*a, **k):
        raise AssertionError("solved although the input was bad")

    import solver.simulate as simulate

    monkeypatch.setattr(simulate, "solve_sample", must_not_solve)

    def refused(store_path, *needles, extra=()):
        assert main(["campaign", str(TINY), "--store", str(store_path), *extra]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("slipstream: error: "), err
        for needle in needles:
            assert needle.lower() in err[0].lower(), err[0]

    other_schema = tempdir / "other.zarr"
    zarr.create_group(str(other_schema), zarr_format=3).attrs["schema"] = "someone.else/2"
    refused(other_schema, "schema", "someone.else/2")
    not_zarr = tempdir / "notes"
    not_zarr.mkdir()
    (not_zarr / "readme.txt").write_text("mine")
    refused(not_zarr, "not a Zarr")
    assert (not_zarr / "readme.txt").read_text() == "mine"
    other_config = tempdir / "seed8.zarr"
    campaign.open_or_create_store(_spec(seed=8), other_config)  # an empty store of another config
    refused(other_config, "another config")
    a_file = tempdir / "file.txt"
    a_file.write_text("x")
    refused(a_file / "data.zarr", "cannot create store")
    refused(a_file, "not a directory")
    refused(tempdir / "k.zarr", "ranks-per-sample", extra=("--ranks-per-sample", "2"))
    assert not (tempdir / "k.zarr").exists()
    # an interrupted --extend (arrays grown, attributes not yet) is noticed
    grown = tempdir / "grown.zarr"
    g, _ = campaign.open_or_create_store(_spec(), grown)
    g["status"].resize((6,))
    refused(grown, "--extend")


@pytest.mark.skip_in_parallel
def test_bad_input_exits_2_as_a_process_and_under_mpirun(tempdir):
    path = write_config(tempdir / "bad.yaml", tiny_config(loading={"strain": -0.01}))
    assert_one_line_error(_cli("campaign", path, "--store", tempdir / "d.zarr"), "strain")
    par = _cli("campaign", path, "--store", tempdir / "d.zarr", ranks=2, timeout=120)
    assert par.returncode != 0 and "slipstream: error:" in par.stderr and "strain" in par.stderr
    assert not (tempdir / "d.zarr").exists()


# ------------------------------------------------------------- inspect ----

@pytest.mark.skip_in_parallel
def test_inspect_counts_failures_sizes_and_plots(reference, tempdir, capsys):
    import json

    from coupling.cli import main

    path = tempdir / "copy.zarr"
    shutil.copytree(reference, path)
    g = store.open_store(path, "r+")
    store.mark_failed(g, 2, "SolverError: no convergence after 8 cutbacks")
    g["status"][3] = store.PENDING
    store.consolidate(path)

    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "4: 2 done, 1 failed, 1 pending" in out
    assert "sample 2: SolverError: no convergence after 8 cutbacks" in out
    assert "(z, y, x) = (1, 3, 3), 3 output steps, 12 slip systems (fcc)" in out
    assert "MiB on disk" in out and "per done sample" in out and "Cu" in out
    assert "modes ['tension', 'compression', 'shear']" in out

    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["done"] == 2 and info["failures"] == {"2": "SolverError: no convergence after 8 cutbacks"}
    assert info["bytes_on_disk"] > info["bytes_per_done_sample"] > 0

    pics = tempdir / "pics"
    assert main(["inspect", str(path), "--sample", "1", "--plot", "--out", str(pics)]) == 0
    out = capsys.readouterr().out
    assert "sample 1: done" in out and "MPa along the load" in out
    names = sorted(p.name for p in pics.iterdir())
    assert names == ["sample1_accumulated_slip.png", "sample1_ipf_final.png", "sample1_ipf_initial.png",
                     "sample1_stress_strain.png", "sample1_von_mises_stress.png"]
    for p in pics.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000

    assert main(["inspect", str(path), "--sample", "2", "--plot", "--out", str(pics)]) == 2
    assert "sample 2 is failed" in capsys.readouterr().err
    assert main(["inspect", str(tempdir / "nowhere.zarr")]) == 2
    assert "no campaign store" in capsys.readouterr().err


def test_parse_errors_are_config_errors():
    with pytest.raises(ConfigError, match="one grid shape"):
        campaign.parse_campaign(tiny_config(microstructure={"cells": [[3, 3, 1], [3, 3, 2]]}))
    with pytest.raises(ConfigError, match="no 'samples'"):
        campaign.parse_campaign({k: v for k, v in tiny_config().items() if k != "samples"})


@pytest.mark.skip_in_parallel
def test_a_store_made_before_the_plastic_deformation_was_stored_resumes_without_it(tmp_path):
    from mpi4py import MPI

    spec = campaign.load_campaign(TINY)
    path = tmp_path / "old.zarr"
    # what campaigns created before the array existed: nye, no plastic_deformation
    store.create_store(path, n_samples=spec.samples, grid_shape=spec.grid_shape, n_steps=spec.n_steps,
                       n_slip=spec.n_slip, config=spec.config, material=spec.store_material(), lattice=spec.lattice,
                       with_nye=True)
    campaign.run_campaign(MPI.COMM_SELF, TINY, path, quiet=True)
    g = store.open_store(path)
    assert np.all(store.sample_status(g) == store.DONE)
    assert "plastic_deformation" not in g
    # a new store has it
    campaign.run_campaign(MPI.COMM_SELF, TINY, tmp_path / "new.zarr", quiet=True)
    g = store.open_store(tmp_path / "new.zarr")
    assert g.attrs["with_plastic_deformation"] and not np.any(np.isnan(g["plastic_deformation"][:]))


@pytest.mark.skip_in_parallel
def test_a_store_refuses_to_resume_with_a_changed_model(tempdir):
    """A store solved with a learned model records its digest: the same path with other weights is refused."""
    model = tempdir / "learned"
    shutil.copytree(ROOT / "surrogate" / "pretrained" / "learned_update_al", model)
    spec = campaign.parse_campaign(tiny_config(materials=["Al-DAMASK"],
                                               solver={"constitutive": "learned", "learned_model": str(model)}),
                                   ROOT / "examples")
    path = tempdir / "learned.zarr"
    group, action = campaign.open_or_create_store(spec, path)
    assert action == "created" and set(group.attrs["model_digests"]) == {"learned_model"}
    assert campaign.open_or_create_store(spec, path)[1] == "resumed"
    weights = model / "learned_update.pt"
    weights.write_bytes(weights.read_bytes() + b"\0")  # retrained in place (as far as the store can tell)
    with pytest.raises(StoreError, match="has changed since"):
        campaign.open_or_create_store(spec, path)
    grown = campaign.parse_campaign({**spec.config, "samples": spec.samples + 2}, ROOT / "examples")
    with pytest.raises(StoreError, match="has changed since"):
        campaign.open_or_create_store(grown, path, extend=True)
