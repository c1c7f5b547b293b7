"""Figures of single results: IPF maps, field maps, stress-strain curves, pole figures.

Every function takes NumPy arrays and an output path, writes one PNG and returns
the path. Figures are drawn on matplotlib's Agg canvas without pyplot (no global
state, safe in a server or under MPI); orix draws the IPF colour key and the
stereographic projections. No dolfinx, no torch.

Conventions (docs/conventions.md):

* Euler angles are Bunge ZXZ ``(phi1, Phi, phi2)`` in radians, passive
  (lab -> crystal), as in :mod:`solver.rotations` and orix.
* Voxel maps are ``(ny, nx)`` slices of ``(nz, ny, nx)`` grids, drawn with x to
  the right and y up (``origin="lower"``), so the lab z axis points out of the
  page: an IPF-Z map colours the crystal direction facing the viewer.
* IPF colours use the TSL key (orix ``IPFColorKeyTSL``) for the cubic Laue
  group m-3m: [001] red, [101] green, [111] blue. Unassigned voxels
  (non-finite angles) are black.
* Stresses arrive in Pa and are shown in MPa.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import ConfigError
from .rotations import cubic_symmetry_operators, euler_to_matrix, validate_euler

_CUBIC = ("fcc", "bcc")
_DPI = 150
_UNASSIGNED_RGB = (0.0, 0.0, 0.0)


# ----------------------------------------------------------------- helpers --

def _laue_group(lattice: str):
    """orix Laue group of a lattice (cubic only: the hexagonal Euler frame is not fixed yet)."""
    if lattice not in _CUBIC:
        raise ConfigError(f"IPF colours and pole figures support the cubic lattices {', '.join(_CUBIC)}, "
                          f"not {lattice!r}")
    from orix.quaternion.symmetry import Oh

    return Oh


def _direction(direction: Sequence[float]) -> np.ndarray:
    d = np.asarray(direction, dtype=float)
    if d.shape != (3,) or not np.all(np.isfinite(d)) or np.linalg.norm(d) == 0:
        raise ConfigError(f"sample direction must be 3 finite numbers, not all zero; got {direction!r}")
    return d / np.linalg.norm(d)


def _direction_label(direction: Sequence[float]) -> str:
    """``X``/``Y``/``Z`` for the lab axes, ``[u v w]`` otherwise."""
    d = _direction(direction)
    for k, name in enumerate("XYZ"):
        if np.isclose(d[k], 1.0):
            return name
    return "[" + " ".join(f"{v:g}" for v in np.asarray(direction, dtype=float)) + "]"


def _slice(values: np.ndarray, trailing: int, z_index: int | None, what: str) -> tuple[np.ndarray, str]:
    """A ``(ny, nx, ...)`` map of a 2-D map or a ``(nz, ny, nx, ...)`` grid (middle z slice by default).

    Returns:
        The map and a title suffix naming the slice (empty for a 2-D map).
    """
    values = np.asarray(values)
    if values.ndim == 2 + trailing:
        if z_index not in (None, 0):
            raise ConfigError(f"{what}: z_index {z_index} given for a 2-D map")
        return values, ""
    if values.ndim != 3 + trailing:
        shape = "(ny, nx" + ", 3" * trailing + ") or (nz, ny, nx" + ", 3" * trailing + ")"
        raise ConfigError(f"{what}: expected shape {shape}, got {values.shape}")
    nz = values.shape[0]
    k = nz // 2 if z_index is None else int(z_index)
    if not 0 <= k < nz:
        raise ConfigError(f"{what}: z_index {k} is outside [0, {nz})")
    return values[k], ("" if nz == 1 else f" (z = {k})")


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight", facecolor="white")
    return path


def _voxel_axes(ax) -> None:
    ax.set_xlabel("x (voxel)")
    ax.set_ylabel("y (voxel)")


def _imshow_kw(ny: int, nx: int) -> dict:
    # voxel centres at integer coordinates, x right, y up
    return {"origin": "lower", "interpolation": "nearest", "extent": (-0.5, nx - 0.5, -0.5, ny - 0.5)}


# --------------------------------------------------------------------- IPF --

def ipf_colors(euler: np.ndarray, direction: Sequence[float] = (0, 0, 1), lattice: str = "fcc") -> np.ndarray:
    """TSL inverse-pole-figure colours of orientations seen along a sample direction.

    The colour encodes the crystal direction parallel to ``direction`` in the
    m-3m fundamental sector: [001] red, [101] green, [111] blue.

    Args:
        euler: ``(..., 3)`` Bunge Euler angles in radians (passive). Non-finite
            entries (unassigned voxels) get black.
        direction: sample (lab) direction, e.g. ``(0, 0, 1)`` for IPF-Z.
        lattice: ``"fcc"`` or ``"bcc"``.

    Returns:
        ``(..., 3)`` RGB values in ``[0, 1]``.

    Raises:
        InputFileError: angles out of the Bunge ranges (e.g. degrees).
        ConfigError: a non-cubic lattice or a zero direction.
    """
    from orix.plot import IPFColorKeyTSL
    from orix.quaternion import Orientation

    euler = np.asarray(euler, dtype=float)
    if euler.shape[-1:] != (3,):
        raise ConfigError(f"Euler angles must have shape (..., 3), got {euler.shape}")
    symmetry = _laue_group(lattice)
    key = IPFColorKeyTSL(symmetry, direction=_direction(direction))
    flat = euler.reshape(-1, 3)
    ok = np.all(np.isfinite(flat), axis=1)
    rgb = np.empty(flat.shape)
    rgb[:] = _UNASSIGNED_RGB
    if np.any(ok):
        angles = validate_euler(flat[ok])
        rgb[ok] = key.orientation2color(Orientation.from_euler(angles, symmetry=symmetry))
    return np.clip(rgb, 0.0, 1.0).reshape(euler.shape)


def ipf_map(euler: np.ndarray, path: str | Path, direction: Sequence[float] = (0, 0, 1), lattice: str = "fcc",
            title: str | None = None, z_index: int | None = None) -> Path:
    """IPF map of an orientation field with the colour-key triangle beside it.

    Args:
        euler: ``(ny, nx, 3)`` or ``(nz, ny, nx, 3)`` Bunge angles in radians.
        path: PNG to write.
        direction: sample direction of the key (default z, out of the page).
        lattice: ``"fcc"`` or ``"bcc"`` (both m-3m).
        title: figure title (default ``IPF-Z`` etc.).
        z_index: slice of a 3-D grid (default the middle one).

    Returns:
        ``path``.
    """
    sliced, where = _slice(euler, 1, z_index, "ipf_map")
    rgb = ipf_colors(sliced, direction, lattice)
    ny, nx = rgb.shape[:2]
    label = _direction_label(direction)

    fig = _new_figure((7.0, 4.8))
    ax = fig.add_axes((0.08, 0.1, 0.62, 0.8))
    ax.imshow(rgb, **_imshow_kw(ny, nx))
    _voxel_axes(ax)
    ax.set_title((title or f"IPF-{label} ({lattice})") + where)

    # the key is a stereographic IPF axes of its own (orix registers "ipf")
    import orix.plot  # noqa: F401

    key_ax = fig.add_axes((0.74, 0.42, 0.24, 0.4), projection="ipf", symmetry=_laue_group(lattice).laue)
    key_ax.plot_ipf_color_key(show_title=False)
    key_ax.set_title(f"IPF-{label}\nm-3m", fontsize=9)
    return _save(fig, path)


# --------------------------------------------------------------- field map --

def field_map(values: np.ndarray, path: str | Path, title: str, unit: str, cmap: str = "viridis",
              z_index: int | None = None, vmin: float | None = None, vmax: float | None = None) -> Path:
    """Map of a scalar voxel field with a labelled colour bar.

    Args:
        values: ``(ny, nx)`` or ``(nz, ny, nx)``; NaN voxels are grey.
        path: PNG to write.
        title: what is shown, e.g. ``"von Mises stress"``.
        unit: unit of ``values``; ``"Pa"`` is shown as MPa.
        cmap: matplotlib colour map (a diverging one such as ``"RdBu_r"`` with
            ``vmin = -vmax`` for signed components).
        z_index: slice of a 3-D grid (default the middle one).
        vmin, vmax: colour limits in the unit of ``values`` (default: data range).

    Returns:
        ``path``.
    """
    import matplotlib

    sliced, where = _slice(np.asarray(values, dtype=float), 0, z_index, "field_map")
    scale, shown_unit = (1e-6, "MPa") if unit == "Pa" else (1.0, unit)
    data = np.ma.masked_invalid(sliced * scale)
    ny, nx = data.shape
    colours = matplotlib.colormaps[cmap].with_extremes(bad="lightgrey")

    fig = _new_figure((6.0, 4.8))
    ax = fig.add_subplot()
    image = ax.imshow(data, cmap=colours, vmin=None if vmin is None else vmin * scale,
                      vmax=None if vmax is None else vmax * scale, **_imshow_kw(ny, nx))
    _voxel_axes(ax)
    ax.set_title(title + where)
    bar = fig.colorbar(image, ax=ax, fraction=0.046 * min(1.0, ny / nx), pad=0.04)
    bar.set_label(f"{title} ({shown_unit})" if shown_unit not in ("", "1") else title)
    return _save(fig, path)


# ------------------------------------------------------ stress-strain curve --

def _curves(values, what: str) -> list[np.ndarray]:
    """One 1-D array per curve from a 1-D array, a 2-D array or a sequence of 1-D arrays."""
    if isinstance(values, np.ndarray) and values.ndim in (1, 2):
        return [values.astype(float)] if values.ndim == 1 else [row.astype(float) for row in values]
    curves = [np.asarray(v, dtype=float) for v in values]
    if curves and all(c.ndim == 0 for c in curves):  # a plain list of numbers
        return [np.asarray(curves, dtype=float)]
    if any(c.ndim != 1 for c in curves):
        raise ConfigError(f"{what}: each curve must be 1-D")
    return curves


def stress_strain_curve(strain, stress, path: str | Path, xlabel: str, ylabel: str,
                        labels: Sequence[str] | None = None,
                        markers: Mapping[str, tuple[float, float]] | None = None) -> Path:
    """Stress-strain curve(s), stress in MPa.

    Args:
        strain: one curve ``(n,)``, several ``(k, n)`` or a sequence of 1-D arrays.
        stress: the matching stresses in Pa.
        path: PNG to write.
        xlabel: e.g. ``"Hencky strain ln V_11"``.
        ylabel: e.g. ``"Cauchy stress sigma_11"``; ``"(MPa)"`` is appended.
        labels: legend entry per curve.
        markers: named points ``{"Rp0.2": (strain, stress_Pa)}`` drawn and labelled.

    Returns:
        ``path``.
    """
    xs, ys = _curves(strain, "strain"), _curves(stress, "stress")
    if len(xs) != len(ys) or any(x.shape != y.shape for x, y in zip(xs, ys)):
        raise ConfigError(f"stress_strain_curve: {len(xs)} strain and {len(ys)} stress curves "
                          "of different lengths")
    if labels is not None and len(labels) != len(xs):
        raise ConfigError(f"stress_strain_curve: {len(labels)} labels for {len(xs)} curves")

    fig = _new_figure((6.0, 4.5))
    ax = fig.add_subplot()
    for k, (x, y) in enumerate(zip(xs, ys)):
        ax.plot(x, y * 1e-6, lw=1.6, label=None if labels is None else labels[k])
    for name, (x, y) in (markers or {}).items():
        ax.plot([x], [y * 1e-6], "o", ms=6, mfc="white", mec="black", zorder=5)
        ax.annotate(f"{name} = {y * 1e-6:.0f} MPa", (x, y * 1e-6), xytext=(8, -12),
                    textcoords="offset points", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel if "MPa" in ylabel else f"{ylabel} (MPa)")
    ax.grid(True, alpha=0.3)
    ax.set_xlim(left=min(0.0, min(float(np.nanmin(x)) for x in xs)) if xs else None)
    if labels is not None:
        ax.legend(frameon=False)
    return _save(fig, path)


# ------------------------------------------------------------ pole figures --

def _equivalent_poles(plane: Sequence[int]) -> np.ndarray:
    """Unit normals of the cubic family {hkl}, antipodes included (``(k, 3)``, crystal frame)."""
    n = np.asarray(plane, dtype=float)
    if n.shape != (3,) or not np.any(n):
        raise ConfigError(f"pole figure plane must be three Miller indices, not all zero; got {plane!r}")
    n = n / np.linalg.norm(n)
    poles = cubic_symmetry_operators() @ n
    poles = np.concatenate([poles, -poles])
    _, keep = np.unique(np.round(poles, 8) + 0.0, axis=0, return_index=True)  # + 0.0: -0.0 -> 0.0
    return poles[np.sort(keep)]


def sample_frame_poles(euler: np.ndarray, plane: Sequence[int]) -> np.ndarray:
    """Unit vectors, in the sample frame, of all poles of the family {hkl} of each orientation.

    Args:
        euler: ``(n, 3)`` Bunge angles in radians (passive, lab -> crystal).
        plane: Miller indices ``(h, k, l)`` of a cubic plane family.

    Returns:
        ``(n, k, 3)``; ``k`` distinct poles ±{hkl}: 6 for {100}, 12 for {110}, 8 for {111}, 48 for {123}.
    """
    g = euler_to_matrix(np.asarray(euler, dtype=float).reshape(-1, 3))
    # crystal -> lab: v_lab = g^T v_crystal (g is passive, lab -> crystal)
    return np.einsum("nji,kj->nki", g, _equivalent_poles(plane))


def _family_label(plane: Sequence[int]) -> str:
    digits = "".join(rf"\bar{{{-int(i)}}}" if i < 0 else f"{int(i)}" for i in plane)
    return rf"$\{{{digits}\}}$"


def pole_figures(euler: np.ndarray, path: str | Path, planes: Sequence[Sequence[int]] = ((1, 0, 0), (1, 1, 0), (1, 1, 1)),
                 title: str | None = None, lattice: str = "fcc", max_orientations: int = 20000) -> Path:
    """Pole figures {hkl} in the sample frame, stereographic upper hemisphere.

    Each orientation contributes all symmetrically equivalent poles of each
    family (antipodes included, so poles on the lower hemisphere appear at
    their upper-hemisphere antipode). Sample X is to the right, Y up, Z out of
    the page.

    Args:
        euler: ``(..., 3)`` Bunge angles in radians (e.g. ``(n, 3)`` or a voxel
            field); non-finite rows are dropped.
        path: PNG to write.
        planes: Miller indices of the families.
        title: figure title.
        lattice: ``"fcc"`` or ``"bcc"``.
        max_orientations: larger inputs are subsampled (fixed seed) to keep
            the figure readable; the title says so.

    Returns:
        ``path``.
    """
    import orix.plot  # noqa: F401  (registers the "stereographic" projection)
    from orix.vector import Vector3d

    _laue_group(lattice)
    flat = np.asarray(euler, dtype=float)
    if flat.shape[-1:] != (3,):
        raise ConfigError(f"Euler angles must have shape (..., 3), got {flat.shape}")
    flat = flat.reshape(-1, 3)
    flat = validate_euler(flat[np.all(np.isfinite(flat), axis=1)], "pole_figures")
    if len(flat) == 0:
        raise ConfigError("pole_figures: no finite orientations to plot")
    note = ""
    if len(flat) > max_orientations:
        flat = flat[np.sort(np.random.default_rng(0).choice(len(flat), max_orientations, replace=False))]
        note = f" ({max_orientations} of the orientations)"

    fig = _new_figure((3.4 * len(planes), 3.8))
    for k, plane in enumerate(planes):
        v_lab = sample_frame_poles(flat, plane).reshape(-1, 3)
        ax = fig.add_subplot(1, len(planes), k + 1, projection="stereographic")
        ax.hemisphere = "upper"
        size = float(np.clip(3000.0 / len(v_lab), 0.5, 25.0))
        ax.scatter(Vector3d(v_lab), s=size, c="black", alpha=0.6 if size < 2 else 1.0)
        ax.set_labels("X", "Y", None)
        ax.stereographic_grid(False)
        ax.set_title(_family_label(plane), pad=12)
    fig.suptitle((title or f"Pole figures ({lattice}, {len(flat)} orientations)") + note)
    fig.text(0.5, 0.01, "stereographic projection, upper hemisphere", ha="center", fontsize=8)
    return _save(fig, path)
