"""Campaign store: layout, roundtrip, status contract, refusals, xarray access."""

import datetime
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from solver import store
from solver.errors import ConfigError, StoreError

N_SAMPLES, GRID, N_STEPS, N_SLIP = 3, (1, 4, 5), 2, 12
CONFIG = {"name": "tiny", "loads": [{"mode": "tension", "strain": 0.05, "direction": [1, 0, 0]}],
          "grid": {"shape": [1, 4, 5], "seed": 7}}
MATERIAL = {"name": "Cu", "C11": 168.4e9, "C12": 121.4e9, "C44": 75.4e9}


def _create(path, **kw):
    args = dict(n_samples=N_SAMPLES, grid_shape=GRID, n_steps=N_STEPS, n_slip=N_SLIP, config=CONFIG,
                material=MATERIAL, lattice="fcc")
    args.update(kw)
    return store.create_store(path, **args)


def _sample(group, seed=0):
    """Random data of the right shapes for every field write_sample takes."""
    rng = np.random.default_rng(seed)
    fields = {name: rng.random(shape) for name, shape in store.sample_field_shapes(group).items()}
    fields.update(grain_id=rng.integers(0, 5, GRID), load_mode="tension", increments=10,
                  newton_iterations=42, cutbacks=1, time=np.array([0.5, 1.0]))
    return fields


@pytest.fixture
def path(tmp_path):
    return tmp_path / "campaign.zarr"


@pytest.fixture
def group(path):
    return _create(path)


def _one_line(err):
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


# ---------------------------------------------------------------- layout --

def test_layout_dims_chunks_units(group):
    sizes = {"sample": 3, "step": 2, "z": 1, "y": 4, "x": 5, "slip_system": 12,
             "euler_angle": 3, "vector3": 3, "voigt": 6, "tensor9": 9}
    names = set(group.array_keys())
    assert names == {n for n, f in store.FIELDS.items() if not f.optional}
    for name in names:
        arr, f = group[name], store.FIELDS[name]
        assert arr.metadata.dimension_names == f.dims
        assert arr.shape == tuple(sizes[d] for d in f.dims)
        assert arr.chunks == (1,) + arr.shape[1:], name  # one sample per chunk
        assert any(type(c).__name__ == "ZstdCodec" for c in arr.compressors), name
        assert arr.attrs["units"] == f.unit and arr.attrs["description"]
    assert group["stress"].attrs["measure"] == "Cauchy"
    assert group["strain"].attrs["measure"].startswith("Hencky")
    assert group["stress"].attrs["components"] == ["11", "22", "33", "23", "13", "12"]
    assert group["stress"].attrs["units"] == "Pa" and group["load_rate"].attrs["units"] == "1/s"
    assert group["load_mode"].attrs["codes"]["deformation_gradient"] == 5


def test_root_attrs(group):
    attrs = dict(group.attrs)
    assert attrs["schema"] == store.SCHEMA == "slipstream.campaign/1"
    assert attrs["config"] == CONFIG and attrs["material"] == MATERIAL
    assert attrs["config_fingerprint"] == store.config_fingerprint(CONFIG)
    assert (attrs["n_samples"], attrs["grid_shape"], attrs["n_steps"], attrs["n_slip"], attrs["lattice"]) \
        == (3, [1, 4, 5], 2, 12, "fcc")
    assert attrs["units"]["stress"] == "Pa" and attrs["units"]["time"] == "s"
    prov = attrs["provenance"]
    for key in ("slipstream", "numpy", "zarr", "dolfinx", "torch", "git_commit", "created"):
        assert isinstance(prov[key], str) and prov[key], key
    created = datetime.datetime.fromisoformat(prov["created"])
    assert created.utcoffset() == datetime.timedelta(0)


def test_nye_only_when_asked(tmp_path):
    assert "nye" not in _create(tmp_path / "a.zarr")
    g = _create(tmp_path / "b.zarr", with_nye=True)
    assert g["nye"].shape == (3, 2, 1, 4, 5, 9) and g["nye"].attrs["units"] == "1/m"
    assert "nye" in store.sample_field_shapes(g)


def test_no_object_dtype_or_pickle(group, path):
    store.write_sample(group, 0, _sample(group))
    store.mark_failed(group, 1, "diverged")
    for name in group.array_keys():
        assert group[name].dtype != np.dtype(object), name
        assert group[name][:].dtype.kind != "O", name
    text = " ".join(p.read_text() for p in Path(path).rglob("zarr.json"))
    assert "pickle" not in text.lower() and "object" not in text.lower()
    meta = json.loads((Path(path) / "failure_reason" / "zarr.json").read_text())
    assert meta["data_type"] == "string"  # zarr v3 native variable-length UTF-8


# ------------------------------------------------------ roundtrip/status --

def test_roundtrip(group, path):
    data = _sample(group, seed=3)
    store.write_sample(group, 1, data)
    store.mark_done(group, 1)
    g = store.open_store(path)
    for name, value in data.items():
        stored = g[name][1]
        if name == "load_mode":
            assert stored == 0
        elif g[name].dtype == np.float32:
            np.testing.assert_allclose(stored, value, rtol=1e-6)
        else:
            np.testing.assert_array_equal(stored, value)
    # samples not written keep their fill values
    assert np.isnan(g["stress"][0]).all() and (g["grain_id"][2] == -1).all()


def test_status_semantics(group):
    assert np.array_equal(store.sample_status(group), [0, 0, 0])
    store.write_sample(group, 0, _sample(group))
    assert store.sample_status(group)[0] == store.PENDING  # data alone is not "done"
    store.mark_done(group, 0)
    store.mark_failed(group, 2, "SNES diverged\n  after 5 cutbacks")
    assert np.array_equal(store.sample_status(group), [1, 0, 2])
    assert group["failure_reason"][2] == "SNES diverged after 5 cutbacks"
    assert group["failure_reason"][0] == ""
    assert np.array_equal(store.pending_samples(group), [1, 2])
    assert np.array_equal(store.pending_samples(group, include_failed=False), [1])
    # rewriting a done sample puts it back to pending until mark_done
    store.write_sample(group, 0, _sample(group, seed=1))
    assert store.sample_status(group)[0] == store.PENDING
    # a redone failed sample loses its old reason
    store.write_sample(group, 2, _sample(group))
    store.mark_done(group, 2)
    assert group["failure_reason"][2] == "" and store.sample_status(group)[2] == store.DONE


def test_mark_done_needs_data(group):
    with pytest.raises(StoreError) as err:
        store.mark_done(group, 1)
    assert "write_sample" in _one_line(err)
    assert store.sample_status(group)[1] == store.PENDING


def test_write_sample_checks_before_writing(group):
    good = _sample(group)
    store.write_sample(group, 0, good)
    store.mark_done(group, 0)
    cases = [
        ({k: v for k, v in good.items() if k != "stress"}, "missing field(s) stress"),
        ({**good, "temperature": 1.0}, "unknown field(s) temperature"),
        ({**good, "status": 1}, "mark_done"),
        ({**good, "nye": np.zeros((2, 1, 4, 5, 9))}, "without nye"),
        ({**good, "stress": np.zeros((2, 1, 5, 4, 6))}, "stress has shape (2, 1, 5, 4, 6)"),
        ({**good, "grain_id": np.zeros(GRID) + 0.5}, "grain_id has dtype float64"),
        ({**good, "load_mode": "torsion"}, "'torsion' is not one of"),
    ]
    for fields, expected in cases:
        with pytest.raises(StoreError) as err:
            store.write_sample(group, 0, fields)
        assert expected in _one_line(err)
    # nothing was touched by the refused writes
    assert store.sample_status(group)[0] == store.DONE
    np.testing.assert_allclose(group["stress"][0], good["stress"], rtol=1e-6)
    with pytest.raises(StoreError) as err:
        store.write_sample(group, 3, good)
    assert "out of range [0, 3)" in _one_line(err)


def test_read_only_refuses_writes(group, path):
    g = store.open_store(path, "r")
    with pytest.raises(StoreError) as err:
        store.mark_failed(g, 0, "x")
    assert "read-only" in _one_line(err)
    g2 = store.open_store(path, "r+")
    store.mark_failed(g2, 0, "x")
    assert store.sample_status(store.open_store(path))[0] == store.FAILED


# ------------------------------------------------------------- refusals --

def test_existing_store_not_overwritten(group, path):
    store.write_sample(group, 0, _sample(group))
    store.mark_done(group, 0)
    with pytest.raises(StoreError) as err:
        _create(path)
    assert "already exists" in _one_line(err)
    assert store.sample_status(store.open_store(path))[0] == store.DONE
    fresh = _create(path, overwrite=True)
    assert np.array_equal(store.sample_status(fresh), [0, 0, 0])


def test_overwrite_never_deletes_a_non_store(tmp_path):
    precious = tmp_path / "results"
    precious.mkdir()
    (precious / "thesis.tex").write_text("...")
    with pytest.raises(StoreError) as err:
        _create(precious, overwrite=True)
    assert "not a Zarr store" in _one_line(err)
    assert (precious / "thesis.tex").exists()


def test_open_refusals(tmp_path):
    with pytest.raises(StoreError) as err:
        store.open_store(tmp_path / "nope.zarr")
    assert "does not exist" in _one_line(err)

    (tmp_path / "file.zarr").write_text("hello")
    with pytest.raises(StoreError) as err:
        store.open_store(tmp_path / "file.zarr")
    assert "not a Zarr v3 store" in _one_line(err)

    (tmp_path / "dir").mkdir()
    with pytest.raises(StoreError) as err:
        store.open_store(tmp_path / "dir")
    assert "not a Zarr v3 store" in _one_line(err)

    zarr.create_group(str(tmp_path / "plain.zarr"), zarr_format=3)
    with pytest.raises(StoreError) as err:
        store.open_store(tmp_path / "plain.zarr")
    assert "no schema attribute" in _one_line(err) and "slipstream.campaign/1" in str(err.value)

    zarr.create_group(str(tmp_path / "other.zarr"), zarr_format=3, attributes={"schema": "acme.ebsd/3"})
    with pytest.raises(StoreError) as err:
        store.open_store(tmp_path / "other.zarr")
    msg = _one_line(err)
    assert "'acme.ebsd/3'" in msg and "'slipstream.campaign/1'" in msg

    zarr.create_group(str(tmp_path / "v2.zarr"), zarr_format=2)
    with pytest.raises(StoreError) as err:
        store.open_store(tmp_path / "v2.zarr")
    assert "Zarr v2" in _one_line(err)

    zarr.create_array(str(tmp_path / "array.zarr"), shape=(2,), dtype="f8", zarr_format=3)
    with pytest.raises(StoreError) as err:
        store.open_store(tmp_path / "array.zarr")
    _one_line(err)


def test_bad_create_arguments(tmp_path):
    with pytest.raises(ConfigError):
        _create(tmp_path / "a.zarr", lattice="fcc-ish")
    with pytest.raises(ConfigError):
        _create(tmp_path / "b.zarr", grid_shape=(4, 5))
    with pytest.raises(ConfigError):
        _create(tmp_path / "c.zarr", n_steps=0)
    with pytest.raises(ConfigError) as err:
        _create(tmp_path / "d.zarr", config={"solver": {"callback": print}})
    assert "config.solver.callback" in _one_line(err)
    with pytest.raises(ConfigError):
        _create(tmp_path / "e.zarr", config={"tol": float("nan")})
    assert not any(tmp_path.iterdir())  # nothing half-created


# ------------------------------------------------- fingerprint/compatible --

def test_config_fingerprint_stable():
    a = {"b": 1, "a": {"y": [1, 2.5], "x": "fcc"}}
    b = {"a": {"x": "fcc", "y": (np.int64(1), np.float64(2.5))}, "b": 1}
    assert store.config_fingerprint(a) == store.config_fingerprint(b)
    assert len(store.config_fingerprint(a)) == 64
    assert store.config_fingerprint(a) != store.config_fingerprint({**a, "b": 2})


def test_check_compatible(group):
    reordered = dict(reversed(list(CONFIG.items())))
    store.check_compatible(group, reordered)
    with pytest.raises(StoreError) as err:
        store.check_compatible(group, {**CONFIG, "name": "other"})
    assert "another config" in _one_line(err)


# ---------------------------------------------------------------- readers --

def test_xarray_open_zarr(group, path):
    store.write_sample(group, 0, _sample(group))
    store.mark_done(group, 0)
    store.mark_failed(group, 1, "diverged")
    store.consolidate(path)
    ds = xr.open_zarr(path, consolidated=True)
    assert ds["stress"].dims == ("sample", "step", "z", "y", "x", "voigt")
    assert ds["euler0"].dims == ("sample", "z", "y", "x", "euler_angle")
    assert ds.sizes["slip_system"] == N_SLIP
    assert not ds.coords  # no array is mistaken for a dimension's index
    for name in ds.data_vars:
        assert "units" in ds[name].attrs, name
        assert ds[name].dtype.kind != "O", name
    assert ds["stress"].attrs["units"] == "Pa" and ds["stress"].attrs["measure"] == "Cauchy"
    assert ds["time"].dtype == np.float64  # "s" is not decoded as a timedelta
    assert ds.attrs["schema"] == store.SCHEMA
    assert list(ds["status"].values) == [1, 2, 0]
    assert str(ds["failure_reason"].values[1]) == "diverged"
    # consolidated store still opens through open_store, also for resuming
    assert store.open_store(path, "r+").attrs["n_samples"] == N_SAMPLES


def test_store_module_imports_no_fem_or_torch():
    code = ("import sys, solver.store, solver.plots; "
            "bad = [m for m in ('dolfinx', 'petsc4py', 'mpi4py', 'torch') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
