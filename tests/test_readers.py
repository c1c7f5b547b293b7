"""EBSD and grid readers/writers: vendor layouts, round trips, unindexed points, corrupt files.

Vendor files are written here by hand in the layouts orix's own tests use
(EDAX TSL OIM v7 .ang, Oxford AZtec .ctf), and every map we read is
cross-checked against orix's independent readers.
"""

from __future__ import annotations

import logging
import math
import pathlib

import numpy as np
import pytest

from solver import rotations
from solver.errors import ConfigError, InputFileError
from solver.microstructure import Microstructure, microstructure_from_config
from solver.readers import PLUGINS, read_microstructure, write_microstructure

orix_io = pytest.importorskip("orix.io")

ROOT = pathlib.Path(__file__).resolve().parents[1]

ANG_HEADER = """# TEM_PIXperUM          1.000000
# x-star                0.413900
# y-star                0.729100
# z-star                0.514900
# WorkingDistance       27.100000
#
# Phase 1
# MaterialName      Nickel
# Formula       Ni
# Info
# Symmetry              {symmetry}
# LatticeConstants      3.520 3.520 3.520  90.000  90.000  90.000
# NumberFamilies        4
# hklFamilies        1 -1 -1 1 8.469246 1
# ElasticConstants  -1.000000 -1.000000 -1.000000 -1.000000 -1.000000 -1.000000
# Categories0 0 0 0 0
#
# GRID: {grid}
# XSTEP: {dx:.6f}
# YSTEP: {dy:.6f}
# NCOLS_ODD: {nx}
# NCOLS_EVEN: {nx}
# NROWS: {ny}
#
# OPERATOR:     sem
#
# SAMPLEID:
#
# SCANID:
#
"""

CTF_HEADER = """Channel Text File
Prj\tstandard steel sample
Author
JobMode\tGrid
XCells\t{nx}
YCells\t{ny}
XStep\t{dx:.4f}
YStep\t{dy:.4f}
AcqE1\t0.0000
AcqE2\t0.0000
AcqE3\t0.0000
Euler angles refer to Sample Coordinate system (CS0)!\tMag\t180.0000\tCoverage\t97\tDevice\t0\tKV\t20.0000
Phases\t1
3.660;3.660;3.660\t90.000;90.000;90.000\tIron fcc\t{laue}\t225\t\t\tSome reference
Phase\tX\tY\tBands\tError\tEuler1\tEuler2\tEuler3\tMAD\tBC\tBS
"""

# two grains: left half A, right half B (Bunge radians)
EULER_A = (0.5, 0.8, 1.2)
EULER_B = (4.0, 2.0, 5.5)


def two_grain_map(ny=3, nx=6):
    euler = np.empty((ny, nx, 3))
    euler[:, : nx // 2] = EULER_A
    euler[:, nx // 2:] = EULER_B
    return euler


def write_ang(path, euler, ci=None, dx=0.5, dy=0.5, symmetry="43", grid="SqrGrid", nrows=None, rows=None):
    """An EDAX TSL OIM v7 file (10 columns), written independently of solver.readers."""
    ny, nx = euler.shape[:2]
    ci = np.ones((ny, nx)) if ci is None else ci
    y, x = np.meshgrid(np.arange(ny) * dy, np.arange(nx) * dx, indexing="ij")
    table = np.column_stack([euler.reshape(-1, 3), x.ravel(), y.ravel(), np.full(nx * ny, 800.0), ci.ravel(),
                             np.ones(nx * ny), np.zeros(nx * ny), np.full(nx * ny, 0.7)])
    header = ANG_HEADER.format(symmetry=symmetry, grid=grid, dx=dx, dy=dy, nx=nx, ny=nrows or ny)
    lines = [" ".join(f"{v:10.5f}" if k != 7 else f"{int(v):2d}" for k, v in enumerate(row)) for row in table]
    if rows is not None:
        lines = rows(lines)
    path.write_text(header + "\n".join(lines) + "\n")
    return path


def write_ctf(path, euler_deg, phase=None, dx=1.5, dy=1.5, laue=11):
    ny, nx = euler_deg.shape[:2]
    phase = np.ones((ny, nx), int) if phase is None else phase
    y, x = np.meshgrid(np.arange(ny) * dy, np.arange(nx) * dx, indexing="ij")
    rows = []
    for p, xx, yy, e in zip(phase.ravel(), x.ravel(), y.ravel(), euler_deg.reshape(-1, 3)):
        rows.append(f"{p}\t{xx:.4f}\t{yy:.4f}\t8\t0\t{e[0]:.4f}\t{e[1]:.4f}\t{e[2]:.4f}\t0.4\t150\t160")
    path.write_text(CTF_HEADER.format(nx=nx, ny=ny, dx=dx, dy=dy, laue=laue) + "\n".join(rows) + "\n")
    return path


def edit(row: str, column: int, value: str) -> str:
    """A data row with one whitespace-separated field replaced."""
    tokens = row.split()
    tokens[column] = value
    return " ".join(tokens)


def one_line_error(excinfo, *fragments):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


def same_partition(a, b, where=None):
    """True if two label arrays describe the same regions (up to renumbering), optionally only ``where``."""
    where = np.ones(np.shape(a), bool) if where is None else np.broadcast_to(where, np.shape(a))
    a, b = np.asarray(a)[where], np.asarray(b)[where]
    pairs = np.unique(np.stack([a, b]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


# --------------------------------------------------------------------------- .ang


def test_ang_vendor_file_matches_orix(tmp_path):
    euler = two_grain_map()
    ci = np.ones(euler.shape[:2])
    euler[1, 1] = 4 * np.pi  # EDAX's unindexed marker
    ci[1, 1] = -1
    path = write_ang(tmp_path / "tsl.ang", euler, ci=ci, dx=0.5, dy=0.25)
    ms = read_microstructure(path)
    assert ms.shape == (1, 3, 6) and ms.cells == (6, 3, 1)
    np.testing.assert_allclose(ms.size, [6 * 0.5e-6, 3 * 0.25e-6, 0.5e-6])
    np.testing.assert_allclose(ms.spacing, [0.5e-6, 0.25e-6, 0.5e-6])
    assert ms.unindexed == 1 and ms.n_grains == 2 and not ms.periodic and ms.lattice is None
    np.testing.assert_allclose(ms.euler[0, 1, 1], EULER_A)  # filled from its neighbours
    # orix reads the same file independently: same angles at the indexed points
    xmap = orix_io.load(path)
    assert int((~xmap.is_indexed).sum()) == 1
    orix_euler = xmap.rotations.to_euler().reshape(3, 6, 3)
    indexed = ci.reshape(-1) > 0
    np.testing.assert_allclose(orix_euler.reshape(-1, 3)[indexed], ms.euler[0].reshape(-1, 3)[indexed], atol=1e-6)


def test_ang_round_trip_and_orix_reads_our_writer(tmp_path):
    ms = microstructure_from_config({"kind": "voronoi", "cells": [12, 9, 1], "size": [24e-6, 18e-6, 2e-6],
                                     "grains": 6, "seed": 3, "periodic": False}, tmp_path)
    mask = np.zeros((9, 12), bool)
    mask[0, 0] = mask[4, 7] = True
    write_microstructure(tmp_path / "rt.ang", ms, unindexed=mask)
    back = read_microstructure(tmp_path / "rt.ang", thickness=2e-6)
    assert back.unindexed == 2
    keep = ~mask
    assert np.abs(back.euler[0][keep] - ms.euler[0][keep]).max() < 1e-5  # 5 decimals in the file
    assert same_partition(back.grain_id, ms.grain_id, where=keep)  # a filled point may join a neighbour grain
    np.testing.assert_allclose(back.size, ms.size)
    xmap = orix_io.load(tmp_path / "rt.ang")
    assert xmap.shape == (9, 12) and int((~xmap.is_indexed).sum()) == 2
    assert xmap.phases[1].point_group.name in ("m-3m", "432")
    np.testing.assert_allclose(xmap.rotations.to_euler()[xmap.is_indexed], ms.euler[0][keep], atol=1e-5)


def test_unindexed_filled_from_nearest_indexed_point(tmp_path, caplog):
    # one row: A A x x B -> the first gap is nearest to A, the second to B
    euler = np.array([[EULER_A, EULER_A, EULER_A, EULER_B, EULER_B]], dtype=float)
    ci = np.array([[0.9, 0.9, 0.05, -1.0, 0.9]])
    euler[0, 3] = 4 * np.pi
    path = write_ang(tmp_path / "row.ang", euler, ci=ci)
    with caplog.at_level(logging.INFO, logger="slipstream"):
        ms = read_microstructure(path, confidence_threshold=0.1)
    assert ms.unindexed == 2
    np.testing.assert_allclose(ms.euler[0, 0, 2], EULER_A)
    np.testing.assert_allclose(ms.euler[0, 0, 3], EULER_B)
    assert any("2 of 5 points unindexed" in r.getMessage() for r in caplog.records)
    # default threshold 0: only CI = -1 (and the 4 pi marker) is unindexed
    assert read_microstructure(path).unindexed == 1


def test_all_zero_angles_with_zero_ci_are_unindexed_but_cube_with_ci_is_kept(tmp_path):
    euler = np.array([[EULER_A, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)]], dtype=float)
    ms = read_microstructure(write_ang(tmp_path / "z.ang", euler, ci=np.array([[0.8, 0.0, 0.8]])))
    assert ms.unindexed == 1
    np.testing.assert_allclose(ms.euler[0, 0, 1], EULER_A)
    np.testing.assert_allclose(ms.euler[0, 0, 2], 0.0)


def test_all_unindexed_refused(tmp_path):
    euler = np.full((2, 2, 3), 4 * np.pi)
    with pytest.raises(InputFileError) as e:
        read_microstructure(write_ang(tmp_path / "none.ang", euler, ci=-np.ones((2, 2))))
    one_line_error(e, "none.ang", "no indexed points")


def test_hexagonal_grid_refused(tmp_path):
    with pytest.raises(InputFileError) as e:
        read_microstructure(write_ang(tmp_path / "hex.ang", two_grain_map(), grid="HexGrid"))
    one_line_error(e, "hex.ang", "hexagonal EBSD grids are not supported; resample to a square grid")


def test_non_cubic_phase_refused(tmp_path):
    with pytest.raises(InputFileError) as e:
        read_microstructure(write_ang(tmp_path / "ti.ang", two_grain_map(), symmetry="62"))
    one_line_error(e, "ti.ang", "symmetry 62", "cubic")


@pytest.mark.parametrize("case, fragments", [
    ("short_row", ["line 33", "expected 10 columns, found 4"]),
    ("missing_rows", ["truncated", "header gives 4 rows"]),
    ("text", ["line 32", "non-numeric value 'abc'"]),
    ("nan", ["line 31", "phi1", "NaN"]),
    ("degrees", ["line 31", "Phi = 45", "outside", "radians"]),
    ("empty", ["empty file"]),
    ("header_only", ["no data rows"]),
    ("off_grid", ["line 31", "x = 0.21 is not on the 0.5 um grid"]),
    ("duplicate", ["duplicate point"]),
])
def test_corrupt_ang_refused_with_one_line(tmp_path, case, fragments):
    path = tmp_path / f"{case}.ang"
    euler = two_grain_map()
    if case == "short_row":
        write_ang(path, euler, rows=lambda rows: rows[:2] + [rows[2][:40]] + rows[3:])
    elif case == "missing_rows":
        write_ang(path, euler, nrows=4)
    elif case == "text":
        write_ang(path, euler, rows=lambda rows: rows[:1] + [edit(rows[1], 1, "abc")] + rows[2:])
    elif case == "nan":
        euler[0, 0, 0] = np.nan
        write_ang(path, euler)
    elif case == "degrees":
        euler[0, 0, 1] = 45.0
        write_ang(path, euler)
    elif case == "empty":
        path.write_text("")
    elif case == "header_only":
        path.write_text(ANG_HEADER.format(symmetry=43, grid="SqrGrid", dx=1, dy=1, nx=2, ny=2))
    elif case == "off_grid":
        write_ang(path, euler, rows=lambda rows: [edit(rows[0], 3, "0.21")] + rows[1:])
    elif case == "duplicate":
        write_ang(path, euler, rows=lambda rows: rows[:-1] + [rows[0]])
    with pytest.raises(InputFileError) as e:
        read_microstructure(path)
    one_line_error(e, path.name, *fragments)


def test_multi_phase_ang_refused(tmp_path):
    text = write_ang(tmp_path / "a.ang", two_grain_map()).read_text()
    second = "# Phase 2\n# MaterialName  Iron\n# Symmetry 43\n"
    text = text.replace("#\n# GRID", second + "#\n# GRID", 1)
    lines = text.splitlines()
    lines[-1] = edit(lines[-1], 7, "2")  # last point in phase 2
    (tmp_path / "multi.ang").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError) as e:
        read_microstructure(tmp_path / "multi.ang")
    one_line_error(e, "multi.ang", "multi-phase")


# --------------------------------------------------------------------------- .ctf


def test_ctf_vendor_file_degrees_and_phase_zero(tmp_path):
    deg = np.degrees(two_grain_map(ny=4, nx=4))
    phase = np.ones((4, 4), int)
    phase[2, 3] = 0
    deg[2, 3] = 0.0
    path = write_ctf(tmp_path / "oxford.ctf", deg, phase=phase)
    ms = read_microstructure(path)
    assert ms.cells == (4, 4, 1) and ms.unindexed == 1 and ms.n_grains == 2 and ms.lattice == "fcc"
    np.testing.assert_allclose(ms.size, [6e-6, 6e-6, 1.5e-6])
    np.testing.assert_allclose(ms.euler[0, 2, 3], EULER_B, atol=1e-6)
    np.testing.assert_allclose(ms.euler[0, 0, 0], EULER_A, atol=1e-6)
    xmap = orix_io.load(path)
    keep = phase.ravel() == 1
    np.testing.assert_allclose(xmap.rotations.to_euler()[xmap.is_indexed], ms.euler[0].reshape(-1, 3)[keep],
                               atol=1e-6)


def test_ctf_round_trip_and_orix_reads_our_writer(tmp_path):
    ms = microstructure_from_config({"kind": "voronoi", "cells": [10, 7, 1], "size": [10e-6, 7e-6, 1e-6],
                                     "grains": 5, "seed": 11, "periodic": False}, tmp_path)
    ms.lattice = "bcc"
    mask = np.zeros((7, 10), bool)
    mask[3, 3] = True
    write_microstructure(tmp_path / "rt.ctf", ms, unindexed=mask)
    back = read_microstructure(tmp_path / "rt.ctf")
    assert back.unindexed == 1 and back.lattice == "bcc"
    assert np.abs(back.euler[0][~mask] - ms.euler[0][~mask]).max() < 1e-5  # 4 decimals of a degree
    assert same_partition(back.grain_id, ms.grain_id, where=~mask)
    xmap = orix_io.load(tmp_path / "rt.ctf")
    assert xmap.shape == (7, 10) and int((~xmap.is_indexed).sum()) == 1
    np.testing.assert_allclose(xmap.rotations.to_euler()[xmap.is_indexed], ms.euler[0][~mask], atol=1e-5)


def test_ctf_refuses_non_cubic_and_out_of_range(tmp_path):
    deg = np.degrees(two_grain_map())
    with pytest.raises(InputFileError) as e:
        read_microstructure(write_ctf(tmp_path / "hcp.ctf", deg, laue=9))
    one_line_error(e, "hcp.ctf", "Laue group 9")
    deg[1, 2, 1] = 200.0
    with pytest.raises(InputFileError) as e:
        read_microstructure(write_ctf(tmp_path / "range.ctf", deg))
    one_line_error(e, "range.ctf", "line 24", "Euler2 = 200 deg is outside [0, 180]")
    text = write_ctf(tmp_path / "cut.ctf", np.degrees(two_grain_map())).read_text()
    (tmp_path / "cut.ctf").write_text(text[: len(text) - 30])
    with pytest.raises(InputFileError) as e:
        read_microstructure(tmp_path / "cut.ctf")
    one_line_error(e, "cut.ctf", "line 33", "expected 11 columns")


# --------------------------------------------------------------------------- .npz


def test_npz_round_trip_exact(tmp_path):
    ms = microstructure_from_config({"kind": "voronoi", "cells": [5, 4, 3], "grains": 7, "seed": 5}, tmp_path)
    ms.lattice = "fcc"
    write_microstructure(tmp_path / "g.npz", ms)
    back = read_microstructure(tmp_path / "g.npz")
    np.testing.assert_array_equal(back.euler, ms.euler)
    np.testing.assert_array_equal(back.grain_id, ms.grain_id)
    np.testing.assert_array_equal(back.size, ms.size)
    assert back.lattice == "fcc" and back.periodic and back.cells == (5, 4, 3)


def test_npz_without_grain_id_is_segmented_periodically(tmp_path):
    euler = np.zeros((2, 3, 6, 3))
    euler[..., 1:5, :] = EULER_B  # grain A at x = 0 and x = 5 meets across the periodic face
    np.savez(tmp_path / "p.npz", euler=euler, size=np.array([6e-6, 3e-6, 2e-6]))
    assert read_microstructure(tmp_path / "p.npz").n_grains == 2
    np.savez(tmp_path / "np.npz", euler=euler, size=np.array([6e-6, 3e-6, 2e-6]), periodic=np.array(False))
    assert read_microstructure(tmp_path / "np.npz").n_grains == 3


@pytest.mark.parametrize("arrays, fragments", [
    ({"size": np.ones(3)}, ["no array 'euler'"]),
    ({"euler": np.zeros((2, 2, 2, 4)), "size": np.ones(3)}, ["(nz, ny, nx, 3)"]),
    ({"euler": np.zeros((1, 2, 2, 3))}, ["no array 'size'"]),
    ({"euler": np.zeros((1, 2, 2, 3)), "size": np.array([1.0, 0.0, 1.0])}, ["size must be positive"]),
    ({"euler": np.full((1, 2, 2, 3), np.nan), "size": np.ones(3)}, ["NaN"]),
    ({"euler": np.full((1, 2, 2, 3), 45.0), "size": np.ones(3)}, ["outside"]),
    ({"euler": np.zeros((1, 2, 2, 3)), "size": np.ones(3), "grain_id": np.zeros((1, 2, 3), int)},
     ["grain_id shape"]),
    ({"euler": np.zeros((1, 2, 2, 3)), "size": np.ones(3), "grain_id": -np.ones((1, 2, 2), int)}, ["negative"]),
])
def test_bad_npz_refused(tmp_path, arrays, fragments):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputFileError) as e:
        read_microstructure(tmp_path / "bad.npz")
    one_line_error(e, "bad.npz", *fragments)


def test_npz_object_arrays_and_non_zip_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", euler=np.array([{"a": 1}], dtype=object), size=np.ones(3))
    with pytest.raises(InputFileError) as e:
        read_microstructure(tmp_path / "obj.npz")
    one_line_error(e, "obj.npz", "pickles are not read")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(InputFileError) as e:
        read_microstructure(tmp_path / "junk.npz")
    one_line_error(e, "junk.npz", "not a readable .npz")


def test_npz_non_contiguous_grain_ids_renumbered(tmp_path):
    gid = np.array([[[3, 3, 9, 9]]])
    np.savez(tmp_path / "r.npz", euler=np.zeros((1, 1, 4, 3)), size=np.ones(3), grain_id=gid)
    np.testing.assert_array_equal(read_microstructure(tmp_path / "r.npz").grain_id, [[[0, 0, 1, 1]]])


# --------------------------------------------------------------------------- dispatch


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "map.txt").write_text("1 2 3")
    with pytest.raises(InputFileError) as e:
        read_microstructure(tmp_path / "map.txt")
    one_line_error(e, "map.txt", ".ang", ".ctf", ".npz")
    with pytest.raises(InputFileError) as e:
        read_microstructure(tmp_path / "absent.ang")
    one_line_error(e, "absent.ang", "no such file")
    assert set(PLUGINS) == {".ang", ".ctf", ".npz"}


def test_reader_options_checked(tmp_path):
    path = write_ctf(tmp_path / "o.ctf", np.degrees(two_grain_map()))
    with pytest.raises(ConfigError, match="confidence_threshold"):
        read_microstructure(path, confidence_threshold=0.1)
    with pytest.raises(ConfigError, match="misorientation_threshold"):
        read_microstructure(path, misorientation_threshold=-1)
    # a threshold above the A/B disorientation merges them into one grain
    disorientation = math.degrees(rotations.misorientation_angle(rotations.euler_to_matrix(EULER_A),
                                                                 rotations.euler_to_matrix(EULER_B)))
    assert read_microstructure(path, misorientation_threshold=disorientation + 0.5).n_grains == 1
    assert read_microstructure(path, misorientation_threshold=disorientation - 0.5).n_grains == 2


def test_ebsd_writers_refuse_3d_grids(tmp_path):
    ms = Microstructure(euler=np.zeros((2, 2, 2, 3)), grain_id=np.zeros((2, 2, 2), int), size=np.ones(3))
    for ext in (".ang", ".ctf"):
        with pytest.raises(InputFileError, match="nz = 2"):
            write_microstructure(tmp_path / f"g{ext}", ms)


def test_sample_files_read():
    for name in ("sample.ang", "sample.ctf"):
        ms = read_microstructure(ROOT / "meshes" / name)
        assert ms.cells == (32, 32, 1) and ms.n_grains == 15 and ms.unindexed == 12
    a, c = read_microstructure(ROOT / "meshes" / "sample.ang"), read_microstructure(ROOT / "meshes" / "sample.ctf")
    assert np.all(rotations.misorientation_angle(a.orientation_matrices(), c.orientation_matrices(),
                                                 np.eye(3)[None]) < 1e-4)
    grid = read_microstructure(ROOT / "meshes" / "sample_grid.npz")
    assert grid.cells == (8, 8, 8) and grid.n_grains == 10 and grid.periodic
