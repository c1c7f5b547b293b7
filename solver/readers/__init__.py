"""Microstructure files: readers and writers as small plugins chosen by extension.

Conventions (docs/microstructure.md):

* Every plugin module names its ``file_extensions``, its ``kind`` (``"ebsd"``:
  a 2-D map, ``"grid"``: a voxel grid), the reader ``options`` it accepts, and
  provides ``file_reader(path, **options) -> Microstructure`` and
  ``file_writer(path, ms, **options)`` (as orix's ``orix.io.plugins``).
* EBSD coordinates are in micrometres in the files and metres in memory; a map
  becomes a single voxel layer (z = 1) of ``thickness`` (default: the x step).
* Unindexed points get the orientation of their nearest indexed point; their
  number is kept in ``Microstructure.unindexed`` and logged on the
  ``"slipstream"`` logger. Grains are then segmented with a cubic
  disorientation threshold (:func:`solver.microstructure.segment_grains`).
* Every problem with a file raises :class:`~solver.errors.InputFileError` with
  one line naming the file (and line and value where there is one).
"""

from __future__ import annotations

import io
import logging
import math
import pathlib
import warnings
from types import ModuleType

import numpy as np

from ..errors import ConfigError, InputFileError
from ..microstructure import (DEFAULT_MISORIENTATION_THRESHOLD, Microstructure, fill_unindexed,
                              segment_grains)

logger = logging.getLogger("slipstream")

#: Fraction of unindexed points above which filling is logged as a warning.
UNINDEXED_WARNING_FRACTION = 0.05

_MICRON = 1.0e-6


# --------------------------------------------------------------------------- shared by the plugins
# (defined before the plugin imports below: the plugins import these names)

def read_text(path: pathlib.Path) -> list[str]:
    """The lines of a text file; a binary or unreadable file is an InputFileError."""
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        try:
            text = path.read_text(encoding="latin-1")
        except OSError as exc:  # pragma: no cover - the OS decides
            raise InputFileError(f"{path.name}: cannot read ({exc.strerror})") from None
        if "\x00" in text:
            raise InputFileError(f"{path.name}: not a text file (binary data)") from None
    except OSError as exc:
        raise InputFileError(f"{path.name}: cannot read ({exc.strerror})") from None
    if "\x00" in text:
        raise InputFileError(f"{path.name}: not a text file (binary data)")
    if not text.strip():
        raise InputFileError(f"{path.name}: empty file")
    return text.splitlines()


def parse_table(lines: list[str], first_line: int, name: str, n_columns: int | None = None,
                min_columns: int = 1, columns: list[str] | None = None) -> np.ndarray:
    """Parse whitespace-separated numeric rows; '#' lines and blank lines are skipped.

    Args:
        lines: the data lines.
        first_line: 1-based line number of ``lines[0]`` in the file (for messages).
        name: file name for messages.
        n_columns: required number of columns, if known.
        min_columns: otherwise, the least number of columns accepted.
        columns: column names for messages (NaN in column ...).

    Returns:
        ``(rows, columns)`` float array, all finite.

    Raises:
        InputFileError: naming the first bad line: wrong column count, a
            non-numeric value, NaN or infinity, or no rows at all.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data" is reported below
            data = np.loadtxt(io.StringIO("\n".join(lines)), ndmin=2, comments="#", dtype=float)
    except ValueError:
        data = None
    line_of = _row_lines(lines, first_line)
    if data is None or data.size == 0 and line_of:
        _locate_bad_row(lines, first_line, name, n_columns)
        raise InputFileError(f"{name}: unreadable data table")  # pragma: no cover - located above
    if data.shape[0] == 0:
        raise InputFileError(f"{name}: no data rows")
    ncol = data.shape[1]
    if n_columns is not None and ncol != n_columns:
        raise InputFileError(f"{name} line {line_of[0]}: expected {n_columns} columns, found {ncol}")
    if ncol < min_columns:
        raise InputFileError(f"{name} line {line_of[0]}: expected at least {min_columns} columns, found {ncol}")
    finite = np.isfinite(data)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        what = columns[col] if columns and col < len(columns) else f"column {col + 1}"
        raise InputFileError(f"{name} line {line_of[row]}: {what} is {data[row, col]} (NaN or infinite)")
    return data


def _row_lines(lines: list[str], first_line: int) -> list[int]:
    return [first_line + i for i, s in enumerate(lines) if s.strip() and not s.lstrip().startswith("#")]


def _locate_bad_row(lines: list[str], first_line: int, name: str, n_columns: int | None) -> None:
    expected = n_columns
    for i, s in enumerate(lines):
        if not s.strip() or s.lstrip().startswith("#"):
            continue
        tokens = s.split()
        if expected is None:
            expected = len(tokens)
        if len(tokens) != expected:
            raise InputFileError(f"{name} line {first_line + i}: expected {expected} columns, found "
                                 f"{len(tokens)} (truncated or corrupt row)")
        for tok in tokens:
            try:
                float(tok)
            except ValueError:
                raise InputFileError(f"{name} line {first_line + i}: non-numeric value {tok[:40]!r}") from None
    if expected is None:
        raise InputFileError(f"{name}: no data rows")


def check_angles(euler: np.ndarray, valid: np.ndarray, line_of, name: str, tol: float, unit: str,
                 labels=("phi1", "Phi", "phi2")) -> np.ndarray:
    """Range-check Bunge angles at ``valid`` points and wrap rounding overshoots.

    ``phi1, phi2`` must be in ``[0, 2 pi]`` and ``Phi`` in ``[0, pi]`` (``unit``
    ``"rad"`` or ``"deg"``) within ``tol``; values within ``tol`` outside are
    brought back (rounding in 5-decimal files can write 2 pi as 6.28319).

    Returns:
        The angles in radians, in range.
    """
    full = 360.0 if unit == "deg" else 2.0 * math.pi
    half = full / 2.0
    for k, (label, hi) in enumerate(zip(labels, (full, half, full))):
        bad = valid & ((euler[:, k] < -tol) | (euler[:, k] > hi + tol))
        if bad.any():
            row = int(np.argmax(bad))
            hint = "; .ang stores radians" if unit == "rad" else ""
            raise InputFileError(f"{name} line {line_of(row)}: {label} = {euler[row, k]:g} {unit} is outside "
                                 f"[0, {hi:g}]{hint}")
    rad = np.radians(euler) if unit == "deg" else np.array(euler, dtype=float)
    rad[:, 0] = np.mod(rad[:, 0], 2.0 * math.pi)
    rad[:, 2] = np.mod(rad[:, 2], 2.0 * math.pi)
    rad[:, 1] = np.clip(rad[:, 1], 0.0, math.pi)
    return rad


def map_to_microstructure(*, x: np.ndarray, y: np.ndarray, euler: np.ndarray, unindexed: np.ndarray,
                          step: tuple[float | None, float | None], header_shape: tuple[int | None, int | None],
                          line_of, name: str, lattice: str | None, misorientation_threshold: float,
                          thickness: float | None) -> Microstructure:
    """Put EBSD points on their square grid, fill unindexed points, segment grains.

    Args:
        x, y: ``(N,)`` coordinates in micrometres.
        euler: ``(N, 3)`` angles in radians (anything at unindexed points).
        unindexed: ``(N,)`` boolean.
        step: ``(dx, dy)`` from the header in micrometres, None where absent.
        header_shape: ``(nrows, ncols)`` from the header, None where absent.
        line_of: row index -> 1-based file line (for messages).
        name: file name.
        lattice: lattice name or None.
        misorientation_threshold: grain segmentation threshold, degrees.
        thickness: layer thickness in metres (default: the x step).
    """
    dx = _step(x, step[0], "XSTEP", name)
    dy = _step(y, step[1], "YSTEP", name)
    if dx is None and dy is None:
        dx = dy = 1.0
        logger.warning("%s: a single point and no step in the header; assuming 1 um", name)
    dx = dx if dx is not None else dy
    dy = dy if dy is not None else dx
    x0, y0 = float(x.min()), float(y.min())
    fx, fy = (x - x0) / dx, (y - y0) / dy
    ix, iy = np.rint(fx).astype(np.int64), np.rint(fy).astype(np.int64)
    for f, i, label in ((fx, ix, "x"), (fy, iy, "y")):
        off = np.abs(f - i) > 0.1
        if off.any():
            row = int(np.argmax(off))
            raise InputFileError(f"{name} line {line_of(row)}: {label} = {(x if label == 'x' else y)[row]:g} "
                                 f"is not on the {dx if label == 'x' else dy:g} um grid")
    nx, ny = int(ix.max()) + 1, int(iy.max()) + 1
    nrows, ncols = header_shape
    n = x.size
    if nrows and ncols and n < nrows * ncols:
        raise InputFileError(f"{name}: truncated: header gives {nrows} rows x {ncols} columns = "
                             f"{nrows * ncols} points, file has {n}")
    if (nrows and ny != nrows) or (ncols and nx != ncols):
        raise InputFileError(f"{name}: coordinates span {ny} rows x {nx} columns but the header says "
                             f"{nrows} x {ncols}")
    flat = iy * nx + ix
    counts = np.bincount(flat, minlength=nx * ny)
    if counts.max() > 1:
        row = int(np.flatnonzero(counts[flat] > 1)[1])
        raise InputFileError(f"{name} line {line_of(row)}: duplicate point at x = {x[row]:g}, y = {y[row]:g}")
    if n < nx * ny:
        raise InputFileError(f"{name}: {nx * ny - n} of {nx * ny} grid points are missing (truncated file?)")

    grid = np.zeros((1, ny, nx, 3))
    mask = np.zeros((1, ny, nx), dtype=bool)
    grid[0, iy, ix] = euler
    mask[0, iy, ix] = unindexed
    n_unindexed = int(mask.sum())
    if n_unindexed == n:
        raise InputFileError(f"{name}: no indexed points (all {n} points are unindexed)")
    thick = float(thickness) if thickness is not None else dx * _MICRON
    spacing = (dx * _MICRON, dy * _MICRON, thick)
    if n_unindexed:
        fraction = n_unindexed / n
        level = logging.WARNING if fraction > UNINDEXED_WARNING_FRACTION else logging.INFO
        logger.log(level, "%s: %d of %d points unindexed (%.1f %%), filled from their nearest indexed point",
                   name, n_unindexed, n, 100.0 * fraction)
        grid = fill_unindexed(grid, mask, spacing)
    grain_id = segment_grains(grid, misorientation_threshold, periodic=False)
    ms = Microstructure(euler=grid, grain_id=grain_id, size=np.array([nx * spacing[0], ny * spacing[1], thick]),
                        origin=np.array([x0 * _MICRON, y0 * _MICRON, 0.0]), lattice=lattice, periodic=False,
                        source=name, unindexed=n_unindexed)
    return ms.validate()


def _step(coord: np.ndarray, header_step: float | None, key: str, name: str) -> float | None:
    if header_step is not None:
        if not (math.isfinite(header_step) and header_step > 0):
            raise InputFileError(f"{name}: {key} = {header_step:g} must be a positive step")
        return float(header_step)
    values = np.unique(np.round(coord, 6))
    if values.size < 2:
        return None
    return float(np.min(np.diff(values)))


def check_threshold(value: float) -> float:
    """Validate a misorientation threshold in degrees (reader option)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0.0 < float(value) <= 180.0:
        raise ConfigError(f"misorientation_threshold must be in (0, 180] degrees, got {value!r}")
    return float(value)


def check_thickness(value: float | None) -> float | None:
    """Validate a layer thickness in metres (reader option)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"thickness must be a positive length in metres, got {value!r}")
    return float(value)


def writable_map(ms: Microstructure, path: pathlib.Path, unindexed) -> tuple[np.ndarray, np.ndarray]:
    """The 2-D euler map and unindexed mask of ``ms`` for an EBSD writer."""
    if ms.shape[0] != 1:
        raise InputFileError(f"{path.name}: an EBSD file holds one 2-D map; this grid has nz = {ms.shape[0]}")
    if ms.lattice not in (None, "fcc", "bcc", "cubic"):
        raise InputFileError(f"{path.name}: only cubic phases can be written, lattice is {ms.lattice!r}")
    mask = np.zeros(ms.shape[1:], dtype=bool) if unindexed is None else np.asarray(unindexed, dtype=bool)
    if mask.shape == ms.shape:
        mask = mask[0]
    if mask.shape != ms.shape[1:]:
        raise InputFileError(f"{path.name}: unindexed mask shape {mask.shape} does not match the map {ms.shape[1:]}")
    return ms.euler[0], mask


# --------------------------------------------------------------------------- registry

from . import ang, ctf, npz  # noqa: E402  (plugins use the helpers above)

#: Extension (lower case, with dot) -> plugin module.
PLUGINS: dict[str, ModuleType] = {ext: plugin for plugin in (ang, ctf, npz) for ext in plugin.file_extensions}


def _plugin(path: pathlib.Path) -> ModuleType:
    plugin = PLUGINS.get(path.suffix.lower())
    if plugin is None:
        raise InputFileError(f"{path.name}: unknown microstructure file extension {path.suffix or '(none)'!r} "
                             f"(known: {', '.join(sorted(PLUGINS))})")
    return plugin


def read_microstructure(path: str | pathlib.Path, **options) -> Microstructure:
    """Read a microstructure file, choosing the reader by extension.

    Args:
        path: ``.ang`` (EDAX/TSL), ``.ctf`` (Oxford HKL) or ``.npz`` (voxel grid).
        **options: reader options, e.g. ``misorientation_threshold`` (deg),
            ``confidence_threshold`` (.ang), ``thickness`` (m, EBSD maps).

    Returns:
        A validated :class:`~solver.microstructure.Microstructure`.

    Raises:
        InputFileError: unknown extension, missing or corrupt file.
        ConfigError: an option the reader does not take, or a bad option value.
    """
    path = pathlib.Path(path)
    plugin = _plugin(path)
    unknown = sorted(set(options) - set(plugin.options))
    if unknown:
        raise ConfigError(f"{path.name}: option {unknown[0]!r} does not apply to {plugin.format_name} files "
                          f"(options: {', '.join(plugin.options)})")
    if not path.is_file():
        raise InputFileError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    return plugin.file_reader(path, **options)


def write_microstructure(path: str | pathlib.Path, ms: Microstructure, **options) -> None:
    """Write a microstructure, choosing the writer by extension.

    Args:
        path: target file (``.ang``, ``.ctf`` or ``.npz``).
        ms: the microstructure (2-D for EBSD formats).
        **options: writer options, e.g. ``unindexed`` (boolean ``(ny, nx)``
            mask written with the vendor's unindexed markers).
    """
    path = pathlib.Path(path)
    _plugin(path).file_writer(path, ms.validate(), **options)


__all__ = ["PLUGINS", "read_microstructure", "write_microstructure", "DEFAULT_MISORIENTATION_THRESHOLD"]
