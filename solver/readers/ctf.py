"""Oxford Instruments HKL Channel 5 / AZtec ``.ctf`` EBSD maps.

Conventions of the format (as orix's ``ctf`` plugin and MTEX's loader):

* A tab-separated header: ``Channel Text File``, ``XCells``, ``YCells``,
  ``XStep``, ``YStep`` (um), ``Phases n`` followed by n phase lines
  ``a;b;c  alpha;beta;gamma  name  laue_group  space_group ...``, then the
  column line ``Phase X Y Bands Error Euler1 Euler2 Euler3 MAD BC BS``.
* One point per row, x fastest; Bunge Euler angles in **degrees**.
* ``Phase`` 0 marks an unindexed point.
* Only cubic m-3m phases (Laue group 11) are read; space group 225 gives
  ``lattice="fcc"``, 229 ``"bcc"``, anything else None. The Euler angles are
  taken as written (no CS0/CS1 frame correction, as orix).
"""

from __future__ import annotations

import pathlib

import numpy as np

from ..errors import InputFileError
from ..microstructure import DEFAULT_MISORIENTATION_THRESHOLD, Microstructure
from . import check_angles, check_thickness, check_threshold, map_to_microstructure, parse_table, read_text
from . import writable_map

format_name = "ctf"
file_extensions = (".ctf",)
kind = "ebsd"
options = ("misorientation_threshold", "thickness")

#: Laue group id of cubic m-3m in Channel 5 phase lines.
LAUE_CUBIC = 11
#: Space group -> lattice name.
SPACE_GROUP_LATTICE = {225: "fcc", 229: "bcc"}

_REQUIRED = ("Phase", "X", "Y", "Euler1", "Euler2", "Euler3")
_TOL_DEG = 1.0e-3


def file_reader(path: pathlib.Path, misorientation_threshold: float = DEFAULT_MISORIENTATION_THRESHOLD,
                thickness: float | None = None) -> Microstructure:
    """Read an Oxford ``.ctf`` map.

    Args:
        path: the file.
        misorientation_threshold: grain segmentation threshold, degrees.
        thickness: layer thickness in metres (default: the x step).

    Returns:
        A one-layer :class:`Microstructure` (``periodic=False``).
    """
    path = pathlib.Path(path)
    name = path.name
    threshold = check_threshold(misorientation_threshold)
    thickness = check_thickness(thickness)
    lines = read_text(path)
    if not lines[0].strip().startswith("Channel Text File"):
        raise InputFileError(f"{name} line 1: not a Channel Text File (first line {lines[0][:40]!r})")
    col_line = next((i for i, s in enumerate(lines) if s.split()[:3] == ["Phase", "X", "Y"]), None)
    if col_line is None:
        raise InputFileError(f"{name}: no column line 'Phase X Y ...' (truncated header?)")
    header = _parse_header(lines[:col_line], name)
    columns = lines[col_line].split()
    missing = [c for c in _REQUIRED if c not in columns]
    if missing:
        raise InputFileError(f"{name} line {col_line + 1}: column {missing[0]!r} is missing")
    data = parse_table(lines[col_line + 1:], col_line + 2, name, n_columns=len(columns), columns=columns)
    rows = np.array([i + 1 for i in range(col_line + 1, len(lines)) if lines[i].strip()
                     and not lines[i].lstrip().startswith("#")])
    col = {c: k for k, c in enumerate(columns)}
    phase = np.rint(data[:, col["Phase"]]).astype(int)
    unindexed = phase == 0
    phases = header["phases"]
    bad = (phase < 0) | (phase > len(phases))
    if bad.any():
        row = int(np.argmax(bad))
        raise InputFileError(f"{name} line {rows[row]}: phase {phase[row]} is not in the header "
                             f"({len(phases)} phases)")
    present = sorted(set(np.unique(phase[~unindexed]).tolist()))
    if len(present) > 1:
        raise InputFileError(f"{name}: multi-phase maps are not supported (indexed phases "
                             f"{', '.join(str(i) for i in present)})")
    lattice = None
    for pid in present:
        p = phases[pid - 1]
        if p["laue"] != LAUE_CUBIC:
            raise InputFileError(f"{name}: phase {pid} ({p['name'] or 'unnamed'}) has Laue group {p['laue']}; "
                                 f"only cubic m-3m phases (Laue group 11) are supported")
        lattice = SPACE_GROUP_LATTICE.get(p["space_group"])
    euler = data[:, [col["Euler1"], col["Euler2"], col["Euler3"]]]
    euler = check_angles(euler, ~unindexed, rows.__getitem__, name, _TOL_DEG, "deg",
                         labels=("Euler1", "Euler2", "Euler3"))
    return map_to_microstructure(
        x=data[:, col["X"]], y=data[:, col["Y"]], euler=euler, unindexed=unindexed,
        step=(header["XStep"], header["YStep"]), header_shape=(header["YCells"], header["XCells"]),
        line_of=rows.__getitem__, name=name, lattice=lattice, misorientation_threshold=threshold,
        thickness=thickness)


def _parse_header(lines: list[str], name: str) -> dict:
    header = {"XCells": None, "YCells": None, "XStep": None, "YStep": None, "phases": []}
    i = 0
    while i < len(lines):
        parts = lines[i].split("\t")
        key = parts[0].strip()
        if key in header and key != "phases":
            value = parts[1].strip() if len(parts) > 1 else ""
            try:
                v = float(value.replace(",", "."))
            except ValueError:
                raise InputFileError(f"{name} line {i + 1}: {key} value {value[:40]!r} is not a number") from None
            header[key] = int(v) if key.endswith("Cells") else v
        elif key == "Phases":
            try:
                n = int(parts[1])
            except (IndexError, ValueError):
                raise InputFileError(f"{name} line {i + 1}: Phases needs a count") from None
            for k in range(n):
                j = i + 1 + k
                if j >= len(lines):
                    raise InputFileError(f"{name}: header announces {n} phases but has {k}")
                header["phases"].append(_parse_phase(lines[j], j + 1, name))
            i += n
        i += 1
    return header


def _parse_phase(line: str, lineno: int, name: str) -> dict:
    parts = line.split("\t")
    try:
        laue = int(parts[3])
        space_group = int(parts[4]) if len(parts) > 4 and parts[4].strip() else 0
    except (IndexError, ValueError):
        raise InputFileError(f"{name} line {lineno}: malformed phase line {line[:60]!r}") from None
    return {"name": parts[2].strip(), "laue": laue, "space_group": space_group}


# --------------------------------------------------------------------------- writer

_PHASE_LINES = {
    "fcc": "3.615;3.615;3.615\t90.000;90.000;90.000\tCopper\t11\t225\t\t\tslipstream",
    "bcc": "2.866;2.866;2.866\t90.000;90.000;90.000\tIron bcc\t11\t229\t\t\tslipstream",
    None: "1.000;1.000;1.000\t90.000;90.000;90.000\tcubic\t11\t0\t\t\tslipstream",
}


def file_writer(path: pathlib.Path, ms: Microstructure, unindexed: np.ndarray | None = None) -> None:
    """Write a 2-D map in the Channel 5 layout (11 tab-separated columns).

    Args:
        path: target ``.ctf`` file.
        ms: a microstructure with nz = 1 and a cubic (or unset) lattice.
        unindexed: optional ``(ny, nx)`` mask written as unindexed points
            (phase 0, error 3 "no solution", zero angles and quality columns).
    """
    path = pathlib.Path(path)
    euler, mask = writable_map(ms, path, unindexed)
    ny, nx = mask.shape
    dx, dy = (float(v) * 1e6 for v in ms.spacing[:2])
    x0, y0 = (float(v) * 1e6 for v in ms.origin[:2])
    head = [
        "Channel Text File",
        f"Prj\t{ms.source or 'slipstream'}",
        "Author\tslipstream",
        "JobMode\tGrid",
        f"XCells\t{nx}",
        f"YCells\t{ny}",
        f"XStep\t{dx:.4f}",
        f"YStep\t{dy:.4f}",
        "AcqE1\t0.0000",
        "AcqE2\t0.0000",
        "AcqE3\t0.0000",
        "Euler angles refer to Sample Coordinate system (CS0)!\tMag\t100.0000\tCoverage\t100\tDevice\t0"
        "\tKV\t20.0000\tTiltAngle\t70.0000\tTiltAxis\t0",
        "Phases\t1",
        _PHASE_LINES.get(ms.lattice, _PHASE_LINES[None]),
        "Phase\tX\tY\tBands\tError\tEuler1\tEuler2\tEuler3\tMAD\tBC\tBS",
    ]
    yy, xx = np.meshgrid(y0 + dy * np.arange(ny), x0 + dx * np.arange(nx), indexing="ij")
    m = mask.reshape(-1)
    deg = np.degrees(euler.reshape(-1, 3))
    deg[m] = 0.0
    indexed = ~m
    table = np.column_stack([indexed.astype(int), xx.reshape(-1), yy.reshape(-1), np.where(m, 0, 10),
                             np.where(m, 3, 0), deg, np.where(m, 0.0, 0.5), np.where(m, 0, 200),
                             np.where(m, 0, 200)])
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write("\n".join(head) + "\n")
        np.savetxt(f, table, fmt=["%d", "%.4f", "%.4f", "%d", "%d", "%.4f", "%.4f", "%.4f", "%.4f", "%d", "%d"],
                   delimiter="\t")
