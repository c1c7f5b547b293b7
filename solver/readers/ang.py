"""EDAX/TSL ``.ang`` EBSD maps (OIM Data Collection / Analysis layout).

Conventions of the format (as orix's ``ang`` plugin and MTEX's loader):

* Header lines start with ``#``: phases (``Phase``, ``MaterialName``,
  ``Symmetry``, ``LatticeConstants``) then the grid (``GRID: SqrGrid``,
  ``XSTEP``, ``YSTEP``, ``NCOLS_ODD``, ``NCOLS_EVEN``, ``NROWS``).
* One point per row, x fastest: ``phi1 Phi phi2 x y IQ CI phase_id [SEM
  signal, fit, ...]``; Bunge Euler angles in **radians**, x and y in um.
* Unindexed points: CI = -1 (so CI < ``confidence_threshold``), Euler angles
  written as 4 pi (12.56637), or all-zero angles with CI <= 0.
* Only square grids and cubic m-3m phases (EDAX ``Symmetry 43``) are read; the
  Euler angles are taken as written (no reference-frame correction, as orix).
"""

from __future__ import annotations

import logging
import math
import pathlib
import re

import numpy as np

from ..errors import ConfigError, InputFileError
from ..microstructure import DEFAULT_MISORIENTATION_THRESHOLD, Microstructure
from . import check_angles, check_thickness, check_threshold, map_to_microstructure, parse_table, read_text
from . import writable_map

logger = logging.getLogger("slipstream")

format_name = "ang"
file_extensions = (".ang",)
kind = "ebsd"
options = ("misorientation_threshold", "confidence_threshold", "thickness")

#: EDAX symmetry codes and point-group names of the cubic m-3m Laue class.
CUBIC_SYMMETRIES = {"43", "m-3m", "m3m", "432", "-43m"}

COLUMNS = ["phi1", "Phi", "phi2", "x", "y", "image quality", "confidence index", "phase id",
           "SEM signal", "fit"]
_SENTINEL = 4.0 * math.pi
_TOL_RAD = 1.0e-4  # 5-decimal files round 2 pi up to 6.28319
_HEADER_RE = re.compile(r"#\s*([A-Za-z_][A-Za-z0-9_\-]*)\s*:?\s*(.*)$")


def file_reader(path: pathlib.Path, misorientation_threshold: float = DEFAULT_MISORIENTATION_THRESHOLD,
                confidence_threshold: float = 0.0, thickness: float | None = None) -> Microstructure:
    """Read an EDAX/TSL ``.ang`` map.

    Args:
        path: the file.
        misorientation_threshold: grain segmentation threshold, degrees.
        confidence_threshold: points with CI below it are unindexed (default 0:
            only EDAX's CI = -1 marker; raw scans often use 0.1).
        thickness: layer thickness in metres (default: the x step).

    Returns:
        A one-layer :class:`Microstructure` (``periodic=False``, ``lattice=None``).
    """
    path = pathlib.Path(path)
    name = path.name
    threshold = check_threshold(misorientation_threshold)
    thickness = check_thickness(thickness)
    if isinstance(confidence_threshold, bool) or not isinstance(confidence_threshold, (int, float)) \
            or not math.isfinite(confidence_threshold):
        raise ConfigError(f"confidence_threshold must be a number, got {confidence_threshold!r}")
    lines = read_text(path)
    n_header = 0
    while n_header < len(lines) and (lines[n_header].startswith("#") or not lines[n_header].strip()):
        n_header += 1
    header = _parse_header(lines[:n_header], name)
    if header["grid"] is not None and header["grid"].lower().startswith("hex"):
        raise InputFileError(f"{name}: hexagonal EBSD grids are not supported; resample to a square grid")
    if n_header == len(lines):
        raise InputFileError(f"{name}: no data rows after the header")
    n_columns = header["n_columns"]
    data = parse_table(lines[n_header:], n_header + 1, name, n_columns=n_columns, min_columns=8,
                       columns=COLUMNS)
    rows = _row_numbers(lines, n_header)

    euler, x, y, ci, phase = data[:, 0:3], data[:, 3], data[:, 4], data[:, 6], np.rint(data[:, 7]).astype(int)
    sentinel = np.all(np.abs(euler - _SENTINEL) < 1e-3, axis=1)
    zero = np.all(euler == 0.0, axis=1) & (ci <= 0.0)
    unindexed = (ci < confidence_threshold) | sentinel | zero
    _check_phases(header["phases"], phase, ~unindexed, name, rows)
    euler = check_angles(euler, ~unindexed, rows.__getitem__, name, _TOL_RAD, "rad")
    return map_to_microstructure(
        x=x, y=y, euler=euler, unindexed=unindexed, step=(header["xstep"], header["ystep"]),
        header_shape=(header["nrows"], header["ncols"]), line_of=rows.__getitem__, name=name, lattice=None,
        misorientation_threshold=threshold, thickness=thickness)


def _row_numbers(lines: list[str], n_header: int) -> np.ndarray:
    return np.array([i + 1 for i in range(n_header, len(lines))
                     if lines[i].strip() and not lines[i].lstrip().startswith("#")])


def _parse_header(lines: list[str], name: str) -> dict:
    header = {"grid": None, "xstep": None, "ystep": None, "nrows": None, "ncols": None, "n_columns": None,
              "phases": []}
    ncols_odd = ncols_even = None
    column_numbers = []
    for lineno, line in enumerate(lines, start=1):
        m = _HEADER_RE.match(line)
        if not m:
            continue
        key, value = m.group(1), m.group(2).strip()
        upper = key.upper()
        if upper == "GRID":
            header["grid"] = value
        elif upper in ("XSTEP", "YSTEP"):
            header[upper.lower()] = _number(value, key, lineno, name, float)
        elif upper == "NROWS":
            header["nrows"] = _number(value, key, lineno, name, int)
        elif upper == "NCOLS_ODD":
            ncols_odd = _number(value, key, lineno, name, int)
        elif upper == "NCOLS_EVEN":
            ncols_even = _number(value, key, lineno, name, int)
        elif upper == "PHASE":
            header["phases"].append({"id": _number(value.split()[0] if value else "", key, lineno, name, int),
                                     "name": "", "symmetry": None})
        elif upper == "MATERIALNAME" and header["phases"]:
            header["phases"][-1]["name"] = value
        elif upper == "SYMMETRY":
            if not header["phases"]:  # ASTAR files name no "Phase" line
                header["phases"].append({"id": 1, "name": "", "symmetry": None})
            header["phases"][-1]["symmetry"] = value.split()[0] if value else ""
        elif upper == "COLUMN":
            # EDAX OIM 8: "# Column 1-3: phi1, PHI, phi2 ...", "# Column 10: Fit"
            numbers = re.findall(r"\d+", value.split(":")[0])
            column_numbers += [int(v) for v in numbers]
    if ncols_odd is not None and ncols_even is not None and ncols_odd != ncols_even \
            and not (header["grid"] or "").lower().startswith("hex"):
        raise InputFileError(f"{name}: NCOLS_ODD = {ncols_odd} and NCOLS_EVEN = {ncols_even} differ "
                             f"on a square grid")
    header["ncols"] = ncols_odd if ncols_odd is not None else ncols_even
    if column_numbers:
        header["n_columns"] = max(column_numbers)
    return header


def _number(value: str, key: str, lineno: int, name: str, cast):
    try:
        return cast(value.split()[0]) if cast is float else int(float(value.split()[0]))
    except (ValueError, IndexError):
        raise InputFileError(f"{name} line {lineno}: {key} value {value[:40]!r} is not a number") from None


def _check_phases(phases: list[dict], phase: np.ndarray, indexed: np.ndarray, name: str, rows) -> None:
    if not phases:
        logger.warning("%s: no phase in the header; assuming a cubic m-3m phase", name)
        return
    used = phases
    if len(phases) > 1:
        ids = {p["id"]: p for p in phases}
        present = sorted(set(np.unique(phase[indexed]).tolist()))
        unknown = [i for i in present if i not in ids]
        if unknown:
            row = int(np.argmax(indexed & (phase == unknown[0])))
            raise InputFileError(f"{name} line {rows[row]}: phase id {unknown[0]} is not in the header "
                                 f"(phases {', '.join(str(i) for i in ids)})")
        if len(present) > 1:
            raise InputFileError(f"{name}: multi-phase maps are not supported (indexed phases "
                                 f"{', '.join(str(i) for i in present)})")
        used = [ids[i] for i in present]
    for p in used:
        if p["symmetry"] is not None and p["symmetry"] not in CUBIC_SYMMETRIES:
            raise InputFileError(f"{name}: phase {p['id']} ({p['name'] or 'unnamed'}) has symmetry "
                                 f"{p['symmetry']}; only cubic m-3m phases (Symmetry 43) are supported")


# --------------------------------------------------------------------------- writer

_LATTICE_CONSTANTS = {"fcc": ("Copper", "Cu", 3.615), "bcc": ("Iron (Alpha)", "Fe", 2.866)}


def file_writer(path: pathlib.Path, ms: Microstructure, unindexed: np.ndarray | None = None,
                confidence_index: np.ndarray | None = None) -> None:
    """Write a 2-D map in the EDAX/TSL layout (10 columns, square grid).

    Args:
        path: target ``.ang`` file.
        ms: a microstructure with nz = 1 and a cubic (or unset) lattice.
        unindexed: optional ``(ny, nx)`` mask written as EDAX's unindexed
            points (Euler 4 pi, IQ 0, CI -1, phase 0, fit 180).
        confidence_index: optional ``(ny, nx)`` CI of the indexed points
            (default 1.0).
    """
    path = pathlib.Path(path)
    euler, mask = writable_map(ms, path, unindexed)
    ny, nx = mask.shape
    dx, dy = (float(v) * 1e6 for v in ms.spacing[:2])
    x0, y0 = (float(v) * 1e6 for v in ms.origin[:2])
    ci = np.ones((ny, nx)) if confidence_index is None else np.asarray(confidence_index, dtype=float).reshape(ny, nx)
    material, formula, a = _LATTICE_CONSTANTS.get(ms.lattice, ("cubic", "", 1.0))
    head = [
        "TEM_PIXperUM          1.000000",
        "x-star                0.500000",
        "y-star                0.500000",
        "z-star                0.500000",
        "WorkingDistance       15.000000",
        "",
        "Phase 1",
        f"MaterialName  \t{material}",
        f"Formula     \t{formula}",
        "Info \t\tslipstream synthetic map",
        "Symmetry              43",
        f"LatticeConstants      {a:.3f} {a:.3f} {a:.3f}  90.000  90.000  90.000",
        "NumberFamilies        0",
        "",
        "GRID: SqrGrid",
        f"XSTEP: {dx:.6f}",
        f"YSTEP: {dy:.6f}",
        f"NCOLS_ODD: {nx}",
        f"NCOLS_EVEN: {nx}",
        f"NROWS: {ny}",
        "",
        "OPERATOR: \tslipstream",
        "",
        f"SAMPLEID: \t{ms.source}",
        "",
        "SCANID: ",
        "",
        "Column 1-3: phi1, PHI, phi2 (orientation of point in radians)",
        "Column 4-5: x, y (coordinates of point in microns)",
        "Column 6: image quality",
        "Column 7: confidence index",
        "Column 8: phase ID",
        "Column 9: SEM signal",
        "Column 10: Fit of Solution",
        "",
    ]
    yy, xx = np.meshgrid(y0 + dy * np.arange(ny), x0 + dx * np.arange(nx), indexing="ij")
    e = euler.reshape(-1, 3).copy()
    m = mask.reshape(-1)
    e[m] = 4.0 * math.pi
    iq = np.where(m, 0.0, 1000.0)
    cis = np.where(m, -1.0, ci.reshape(-1))
    phase = np.where(m, 0, 1)
    fit = np.where(m, 180.0, 0.5)
    table = np.column_stack([e, xx.reshape(-1), yy.reshape(-1), iq, cis, phase, np.zeros(m.size), fit])
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write("".join(f"# {line}".rstrip() + "\n" for line in head))
        np.savetxt(f, table, fmt=["%9.5f", "%9.5f", "%9.5f", "%12.5f", "%12.5f", "%8.1f", "%6.3f", "%2d",
                                  "%6d", "%6.3f"], delimiter=" ")
