"""Voxel grids as NumPy ``.npz`` archives.

Conventions of the format (read with ``allow_pickle=False``: no code runs):

* ``euler``: ``(nz, ny, nx, 3)`` float Bunge Euler angles in radians
  (a ``(ny, nx, 3)`` array is read as nz = 1).
* ``size``: ``(3,)`` edge lengths ``[Lx, Ly, Lz]`` in metres (required).
* optional ``grain_id``: ``(nz, ny, nx)`` non-negative integers (renumbered
  contiguous if some ids are unused); without it grains are segmented with
  ``misorientation_threshold`` (periodically if the grid is periodic).
* optional ``origin`` ``(3,)`` m, ``periodic`` (bool, default true as DAMASK
  grids), ``lattice`` (string, "" for none), ``source`` (string).
"""

from __future__ import annotations

import logging
import pathlib
import zipfile

import numpy as np

from ..errors import InputFileError
from ..microstructure import DEFAULT_MISORIENTATION_THRESHOLD, Microstructure, segment_grains
from . import check_threshold

format_name = "npz"
file_extensions = (".npz",)
kind = "grid"
options = ("misorientation_threshold",)

logger = logging.getLogger("slipstream")

_KNOWN = {"euler", "grain_id", "size", "origin", "periodic", "lattice", "source"}


def file_reader(path: pathlib.Path,
                misorientation_threshold: float = DEFAULT_MISORIENTATION_THRESHOLD) -> Microstructure:
    """Read a voxel grid from an ``.npz`` archive.

    Args:
        path: the file.
        misorientation_threshold: grain segmentation threshold (degrees), used
            only when the file has no ``grain_id``.

    Returns:
        A validated :class:`Microstructure`.
    """
    path = pathlib.Path(path)
    name = path.name
    threshold = check_threshold(misorientation_threshold)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "pickle" in reason.lower():
            reason = "contains object arrays (pickles are not read)"
        raise InputFileError(f"{name}: not a readable .npz archive ({reason})") from None
    unknown = sorted(set(arrays) - _KNOWN)
    if unknown:
        logger.info("%s: ignoring arrays %s", name, ", ".join(unknown))
    if "euler" not in arrays:
        raise InputFileError(f"{name}: no array 'euler' (arrays: {', '.join(sorted(arrays)) or 'none'})")
    euler = arrays["euler"]
    if euler.ndim == 3:
        euler = euler[None]
    if euler.ndim != 4 or euler.shape[-1] != 3 or not np.issubdtype(euler.dtype, np.number):
        raise InputFileError(f"{name}: euler must be a float array (nz, ny, nx, 3), got shape {euler.shape} "
                             f"{euler.dtype}")
    euler = euler.astype(np.float64)
    if "size" not in arrays:
        raise InputFileError(f"{name}: no array 'size' ([Lx, Ly, Lz] in metres)")
    size = _vector(arrays["size"], "size", name)
    if np.any(size <= 0):
        raise InputFileError(f"{name}: size must be positive, got {size.tolist()} m")
    origin = _vector(arrays["origin"], "origin", name) if "origin" in arrays else np.zeros(3)
    periodic = bool(arrays["periodic"]) if "periodic" in arrays and arrays["periodic"].size == 1 else True
    lattice = str(arrays["lattice"]) if "lattice" in arrays and arrays["lattice"].dtype.kind == "U" else None
    lattice = lattice or None
    source = name
    if "source" in arrays and arrays["source"].dtype.kind == "U" and str(arrays["source"]):
        source = f"{name} ({arrays['source']})"
    from ..rotations import validate_euler
    euler = validate_euler(euler, what=f"{name}: euler")
    if "grain_id" in arrays:
        gid = arrays["grain_id"]
        if gid.ndim == 2:
            gid = gid[None]
        if gid.shape != euler.shape[:3]:
            raise InputFileError(f"{name}: grain_id shape {gid.shape} does not match euler {euler.shape[:3]}")
        if not np.issubdtype(gid.dtype, np.integer):
            raise InputFileError(f"{name}: grain_id must be integers, got {gid.dtype}")
        if gid.min() < 0:
            raise InputFileError(f"{name}: grain_id has negative values (min {int(gid.min())})")
        counts = np.bincount(gid.ravel())
        if np.any(counts == 0):
            logger.info("%s: grain ids are not contiguous; renumbered", name)
            gid = np.unique(gid, return_inverse=True)[1].reshape(gid.shape)
        grain_id = gid.astype(np.int32)
    else:
        grain_id = segment_grains(euler, threshold, periodic=periodic)
    ms = Microstructure(euler=euler, grain_id=grain_id, size=size, origin=origin, lattice=lattice,
                        periodic=periodic, source=source)
    return ms.validate()


def _vector(a: np.ndarray, key: str, name: str) -> np.ndarray:
    if a.shape != (3,) or not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
        raise InputFileError(f"{name}: {key} must be 3 finite numbers [x, y, z] in metres, got {a!r}")
    return a.astype(np.float64)


def file_writer(path: pathlib.Path, ms: Microstructure) -> None:
    """Write ``ms`` to an ``.npz`` archive (compressed; strings as unicode arrays, no pickles)."""
    np.savez_compressed(path, euler=ms.euler, grain_id=ms.grain_id.astype(np.int32), size=ms.size,
                        origin=ms.origin, periodic=np.array(ms.periodic), lattice=np.array(ms.lattice or ""),
                        source=np.array(ms.source))


__all__ = ["file_reader", "file_writer"]
