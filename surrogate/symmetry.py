"""The square's symmetries acting on a periodic 2-D voxel sample: training-data augmentation.

A map rotated by 90 degrees about the sample normal (or mirrored), loaded
along the rotated (mirrored) direction, is solved by the rotated (mirrored)
fields: the boundary-value problem on a periodic grid of cubes has the
symmetry of the square (the dihedral group D4, 8 elements), and a cubic
crystal's response is centrosymmetric, so a mirror acts on the crystals as the
proper rotation ``Q = -M``. One solved sample is therefore 8 samples for
training, at the cost of an index permutation and some tensor rotations.

Conventions (those of :mod:`surrogate.features`): voxel ``(j, i)`` of a
``(..., ny, nx)`` map has its centre at ``x = i + 1/2``, ``y = j + 1/2`` (voxel
units, periodic); an element ``(k, mirror)`` maps the in-plane position
``p -> A p``, ``A = R(90 deg k) diag(-1 if mirror else 1, 1)``, and the 3-D
problem by the proper rotation ``Q = det(A3) A3``, ``A3 = diag(A, 1)``. Then

* a voxel's value moves to the image of its centre;
* orientations ``g -> g Q^T`` (passive, lab -> crystal);
* symmetric tensors ``T -> Q T Q^T`` (stress, strain, the load's stress direction);
* lattice rotation vectors ``w -> Q w`` (an axial vector: ``det(M) M w`` for a mirror ``M``);
* the cubic orientation tensor (4th order) ``T_abcd -> Q_ai Q_bj Q_ck Q_dl T_ijkl``;
* scalars, sorted Schmid factors, the load stiffness, the signed Schmid factors
  (``g S g^T`` is unchanged) and grain-boundary features only move with their voxels.

A non-square grid keeps the elements that map it onto itself (no quarter turns).
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from solver.tensors import from_voigt, rotate_stiffness, to_voigt

from . import features

#: The 8 elements ``(quarter turns, mirror)`` of the square's symmetry group; ``(0, False)`` is the identity.
ELEMENTS = tuple((k, m) for m in (False, True) for k in range(4))


def in_plane(element: tuple[int, bool]) -> np.ndarray:
    """``A``: the element's integer 2 x 2 map of in-plane positions ``(x, y)``."""
    k, mirror = element
    c, s = round(math.cos(k * math.pi / 2)), round(math.sin(k * math.pi / 2))
    A = np.array([[c, -s], [s, c]])
    return A @ np.diag([-1, 1]) if mirror else A


def proper_rotation(element: tuple[int, bool]) -> np.ndarray:
    """``Q``, ``(3, 3)``: the rotation the element applies to crystals, tensors and rotation vectors."""
    A3 = np.eye(3)
    A3[:2, :2] = in_plane(element)
    return np.linalg.det(A3) * A3


def elements_for(shape: tuple[int, int]) -> tuple[tuple[int, bool], ...]:
    """The elements that map a ``(ny, nx)`` grid onto itself: all 8 for a square, else 4."""
    ny, nx = shape
    return ELEMENTS if ny == nx else tuple(e for e in ELEMENTS if e[0] % 2 == 0)


def move_voxels(x: np.ndarray, element: tuple[int, bool]) -> np.ndarray:
    """Move each voxel of ``(..., ny, nx)`` to the image of its centre (periodic)."""
    ny, nx = x.shape[-2:]
    if element not in elements_for((ny, nx)):
        raise ValueError(f"element {element} does not map a {ny} x {nx} grid onto itself")
    jj, ii = np.meshgrid(np.arange(ny) + 0.5, np.arange(nx) + 0.5, indexing="ij")
    # the source of new voxel p' is A^T p' (A is orthogonal)
    src = np.tensordot(in_plane(element).T, np.stack([ii, jj]), axes=1)
    i = np.floor(np.mod(src[0], nx)).astype(int)
    j = np.floor(np.mod(src[1], ny)).astype(int)
    return x[..., j, i]


def rotate_voigt(v: np.ndarray, Q: np.ndarray, axis: int = 0) -> np.ndarray:
    """``Q T Q^T`` of symmetric tensors given as Voigt 6-vectors (tensor components) along ``axis``."""
    v = np.asarray(v)
    T = from_voigt(np.moveaxis(v, axis, -1))
    return np.moveaxis(to_voigt(Q @ T @ Q.T), -1, axis).astype(v.dtype)


def rotate_vector(v: np.ndarray, Q: np.ndarray, axis: int = 0) -> np.ndarray:
    """``Q v`` of 3-vectors along ``axis``."""
    return np.moveaxis(np.tensordot(np.moveaxis(v, axis, -1), Q.T, axes=1), -1, axis).astype(np.asarray(v).dtype)


def _rotate_full(t: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """``(..., 15)`` orientation-tensor components rotated by ``Q`` through the full 3^4 tensor."""
    full = np.zeros(t.shape[:-1] + (3, 3, 3, 3), dtype=np.float64)
    for k, (a, b, c, d) in enumerate(features._SYM4):
        for p in set(itertools.permutations((a, b, c, d))):
            full[(...,) + p] = t[..., k]
    full = rotate_stiffness(full, Q)
    return np.stack([full[(...,) + idx] for idx in features._SYM4], -1)


@functools.lru_cache(maxsize=64)
def _orientation_matrix(Q_bytes: bytes) -> np.ndarray:
    """The 15 x 15 matrix of the (linear) rotation of orientation-tensor components, rows = inputs."""
    Q = np.frombuffer(Q_bytes, dtype=np.float64).reshape(3, 3)
    return _rotate_full(np.eye(features.N_ORIENTATION), Q)


def rotate_orientation_tensor(t: np.ndarray, Q: np.ndarray, axis: int = 0) -> np.ndarray:
    """The cubic orientation tensor (:func:`surrogate.features.cubic_orientation_tensor`'s 15
    components along ``axis``) of the crystals rotated by ``Q``
    (``T_abcd -> Q_ai Q_bj Q_ck Q_dl T_ijkl``, a linear map of the 15 components)."""
    t = np.asarray(t)
    M = _orientation_matrix(np.ascontiguousarray(Q, dtype=np.float64).tobytes())
    out = np.tensordot(np.moveaxis(t, axis, -1), M, axes=1)
    return np.moveaxis(out, -1, axis).astype(t.dtype)


def inverse(element: tuple[int, bool]) -> tuple[int, bool]:
    """The element that undoes ``element`` (a mirror undoes itself)."""
    k, mirror = element
    return (k, True) if mirror else ((-k) % 4, False)


def transform_inputs(fields: np.ndarray, condition: np.ndarray, schmid: np.ndarray,
                     element: tuple[int, bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A surrogate's inputs for the transformed sample; any leading (batch) dimensions.

    Args:
        fields: ``(..., Cf, ny, nx)`` (:func:`surrogate.features.sample_inputs`: orientation tensor first).
        condition: ``(..., N_CONDITION)`` (:func:`surrogate.features.load_condition`).
        schmid: ``(..., ns, ny, nx)``.
    """
    Q = proper_rotation(element)
    n = features.N_ORIENTATION
    fields = move_voxels(fields, element).copy()
    fields[..., :n, :, :] = rotate_orientation_tensor(fields[..., :n, :, :], Q, axis=-3)
    condition = np.array(condition, copy=True)
    sl = slice(features.N_MODES, features.N_MODES + 6)
    S = condition[..., sl].astype(np.float64)
    S[..., 3:] /= math.sqrt(2.0)  # the condition's shear components carry sqrt 2 (a Frobenius-norm vector)
    S = rotate_voigt(S, Q, axis=-1)
    S[..., 3:] *= math.sqrt(2.0)
    condition[..., sl] = S
    return fields, condition, move_voxels(schmid, element)


def transform_values(values: np.ndarray, element: tuple[int, bool]) -> np.ndarray:
    """The 16 target channels ``(..., 16, ny, nx)`` (stress, strain, lattice rotation, slip) of the
    transformed sample."""
    Q = proper_rotation(element)
    values = move_voxels(values, element).copy()
    for name in ("stress", "strain"):
        sl = features.TARGETS[name]
        values[..., sl, :, :] = rotate_voigt(values[..., sl, :, :], Q, axis=-3)
    sl = features.TARGETS["rotation"]
    values[..., sl, :, :] = rotate_vector(values[..., sl, :, :], Q, axis=-3)
    return values


def transform_item(item: dict[str, np.ndarray], element: tuple[int, bool]) -> dict[str, np.ndarray]:
    """One training item (:class:`surrogate.data.CampaignDataset`'s arrays) of the transformed sample.

    Args:
        item: ``fields (Cf, ny, nx)``, ``condition (N_CONDITION,)``, ``schmid (ns, ny, nx)``,
            ``g0 (9, ny, nx)``, ``target (16, ny, nx)``, ``dominant``, ``boundary (ny, nx)``,
            ``macro_stress (6,)``; other keys are copied.
        element: one of :func:`elements_for` the grid.

    Returns:
        A new dict with the same keys and shapes.
    """
    if element == (0, False):
        return dict(item)
    Q = proper_rotation(element)
    out = dict(item)
    out["fields"], out["condition"], out["schmid"] = transform_inputs(item["fields"], item["condition"],
                                                                      item["schmid"], element)
    g = move_voxels(item["g0"], element).reshape(3, 3, *item["g0"].shape[-2:])
    out["g0"] = np.einsum("abyx,cb->acyx", g, Q).reshape(item["g0"].shape).astype(item["g0"].dtype)
    out["target"] = transform_values(item["target"], element)
    out["dominant"] = move_voxels(item["dominant"], element)
    out["boundary"] = move_voxels(item["boundary"], element)
    out["macro_stress"] = rotate_voigt(item["macro_stress"], Q)
    return out
