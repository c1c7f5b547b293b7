"""Macroscopic loading: modes, mixed boundary conditions and the load schedule.

Conventions:

* The mean deformation gradient of a periodic cell is written
  ``F_mean = I + sum_k c_k B_k`` over an orthonormal basis ``B_k`` (Frobenius
  product) of 3x3 matrices, built in a *loading frame* whose first axis is the
  load ``direction``: normal parts ``E11, E22, E33``, symmetric shears
  ``(E23+E32)/sqrt2, (E13+E31)/sqrt2, (E12+E21)/sqrt2`` and spins
  ``(E23-E32)/sqrt2, (E13-E31)/sqrt2, (E12-E21)/sqrt2`` (``Eab = e_a (x) e_b``
  of the loading frame, written in the lab frame).
* Each coefficient is either *prescribed* (a ramp ``c_k(t)``) or *free*; a free
  coefficient's work-conjugate mean stress vanishes, ``<P> : B_k = 0``. This is
  DAMASK's mixed condition (some components of the mean deformation-gradient
  rate prescribed, the complementary mean stress components zero), expressed in
  a basis that lets any load direction be used and keeps the rigid spin fixed.
* Strain magnitudes are engineering (``F'_11 = 1 + strain`` in the loading frame);
  ``rate`` is its rate (1/s), so the loading time is ``strain / rate``.

Modes (``loading.mode``):

============== ============================================================
tension        ``c(E11) = +strain``; spins 0; everything else stress-free
compression    ``c(E11) = -strain``; as tension
shear          simple shear ``F = I + strain d (x) n`` (``n`` = ``normal``);
               the other shears and spins 0; normal stresses free
plane_strain   ``c(E11) = -strain`` (compression along d), ``c(E22) = 0``
               along ``constrained``; the rest stress-free, spins 0
biaxial        ``c(E11) = c(E22) = +strain`` (d and ``second``); rest free
deformation_gradient  the whole final ``F`` given (``F: [[..],[..],[..]]``)
============== ============================================================
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .errors import ConfigError

# The store's load_mode codes are positions in this tuple: append only.
MODES = ("tension", "compression", "shear", "plane_strain", "biaxial", "deformation_gradient")

_LOADING_KEYS = {"mode", "direction", "strain", "rate", "increments", "normal", "constrained",
                 "second", "F"}

_S = 1.0 / math.sqrt(2.0)
# (a, b, sign): basis k = (E_ab + sign E_ba) / norm in the loading frame
_BASIS = [(0, 0, 0), (1, 1, 0), (2, 2, 0), (1, 2, 1), (0, 2, 1), (0, 1, 1),
          (1, 2, -1), (0, 2, -1), (0, 1, -1)]
BASIS_NAMES = ("E11", "E22", "E33", "S23", "S13", "S12", "W23", "W13", "W12")
_SPINS = (6, 7, 8)
_SHEARS = (3, 4, 5)


def _unit(vec, what: str) -> np.ndarray:
    try:
        v = np.asarray(vec, dtype=float).reshape(3)
    except (TypeError, ValueError):
        raise ConfigError(f"loading.{what} must be a list of 3 numbers, got {vec!r}") from None
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n == 0.0:
        raise ConfigError(f"loading.{what} must be a finite non-zero vector, got {vec!r}")
    return v / n


def loading_frame(direction: np.ndarray, second: np.ndarray | None = None) -> np.ndarray:
    """Orthonormal loading frame: columns ``e1 = direction``, ``e2``, ``e3 = e1 x e2``.

    ``e2`` is ``second`` made orthogonal to ``e1``, or else the lab axis least
    aligned with ``e1`` (so ``[1,0,0]`` gives the lab frame itself).
    """
    e1 = direction / np.linalg.norm(direction)
    if second is None:
        # the lab axis after e1 in cyclic order keeps x -> (x, y, z), y -> (y, z, x), ...
        k = int(np.argmax(np.abs(e1)))
        second = np.eye(3)[(k + 1) % 3]
    e2 = second - np.dot(second, e1) * e1
    if np.linalg.norm(e2) < 1e-8:
        raise ConfigError("loading: the second direction is parallel to the load direction")
    e2 /= np.linalg.norm(e2)
    return np.column_stack([e1, e2, np.cross(e1, e2)])


def basis_matrices(frame: np.ndarray) -> np.ndarray:
    """The 9 orthonormal basis matrices ``B_k`` in the lab frame, ``(9, 3, 3)``."""
    out = np.zeros((9, 3, 3))
    for k, (a, b, sign) in enumerate(_BASIS):
        E = np.zeros((3, 3))
        if sign == 0:
            E[a, b] = 1.0
        else:
            E[a, b], E[b, a] = _S, sign * _S
        out[k] = frame @ E @ frame.T
    return out


@dataclasses.dataclass(frozen=True)
class Loading:
    """A macroscopic load history.

    Attributes:
        mode: one of :data:`MODES`.
        direction: unit load direction (lab frame).
        strain: final engineering strain magnitude (>0), or for
            ``deformation_gradient`` the largest ``|F - I|`` component.
        rate: strain rate (1/s).
        increments: number of load increments.
        frame: ``(3, 3)`` loading frame (columns).
        basis: ``(9, 3, 3)`` basis matrices.
        prescribed: ``(9,)`` bool, which coefficients are prescribed.
        final: ``(9,)`` final values of the prescribed coefficients.
    """

    mode: str
    direction: np.ndarray
    strain: float
    rate: float
    increments: int
    frame: np.ndarray
    basis: np.ndarray
    prescribed: np.ndarray
    final: np.ndarray

    @property
    def duration(self) -> float:
        """Total loading time (s)."""
        return self.strain / self.rate

    @property
    def free(self) -> np.ndarray:
        """Indices of the stress-free (unknown) basis coefficients."""
        return np.flatnonzero(~self.prescribed)

    def prescribed_coefficients(self, t: float) -> np.ndarray:
        """``(9,)`` prescribed coefficients at time ``t`` (linear ramp), 0 where free."""
        return np.where(self.prescribed, self.final * min(t / self.duration, 1.0), 0.0)

    def mean_deformation_gradient(self, coefficients: np.ndarray) -> np.ndarray:
        """``I + sum_k c_k B_k``."""
        return np.eye(3) + np.einsum("k,kij->ij", coefficients, self.basis)

    def as_dict(self) -> dict:
        """Plain-type description (for stores and provenance)."""
        return {"mode": self.mode, "direction": self.direction.tolist(), "strain": self.strain,
                "rate": self.rate, "increments": self.increments,
                "frame": self.frame.tolist(), "prescribed": [BASIS_NAMES[k] for k in np.flatnonzero(self.prescribed)]}


def loading_from_config(cfg: dict) -> Loading:
    """Build a :class:`Loading` from the ``loading`` section of a config.

    Raises:
        ConfigError: unknown mode or key, non-positive strain/rate, increments < 1.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"loading must be a mapping, got {type(cfg).__name__}")
    unknown = set(cfg) - _LOADING_KEYS
    if unknown:
        raise ConfigError(f"loading: unknown key(s) {sorted(unknown)}; allowed: {sorted(_LOADING_KEYS)}")
    mode = cfg.get("mode", "tension")
    if mode not in MODES:
        raise ConfigError(f"loading.mode '{mode}' is unknown; known: {', '.join(MODES)}")
    try:
        rate = float(cfg.get("rate", 1.0e-3))
        increments = cfg.get("increments", 20)
        if isinstance(increments, bool) or int(increments) != increments:
            raise ValueError
        increments = int(increments)
    except (TypeError, ValueError):
        raise ConfigError("loading.rate must be a number and loading.increments an integer") from None
    if not (rate > 0 and math.isfinite(rate)):
        raise ConfigError(f"loading.rate must be positive, got {rate}")
    if increments < 1:
        raise ConfigError(f"loading.increments must be at least 1, got {increments}")

    direction = _unit(cfg.get("direction", [1, 0, 0]), "direction")
    prescribed = np.zeros(9, dtype=bool)
    final = np.zeros(9)
    prescribed[list(_SPINS)] = True

    if mode == "deformation_gradient":
        if "F" not in cfg:
            raise ConfigError("loading.mode deformation_gradient needs loading.F (a 3x3 list)")
        try:
            F = np.asarray(cfg["F"], dtype=float).reshape(3, 3)
        except (TypeError, ValueError):
            raise ConfigError("loading.F must be a 3x3 list of numbers") from None
        if not np.all(np.isfinite(F)) or np.linalg.det(F) <= 0:
            raise ConfigError("loading.F must be finite with a positive determinant")
        frame = np.eye(3)
        basis = basis_matrices(frame)
        prescribed[:] = True
        final = np.einsum("ij,kij->k", F - np.eye(3), basis)
        strain = float(cfg.get("strain", np.abs(F - np.eye(3)).max()))
        if strain <= 0:
            strain = 1.0  # a pure rigid rotation still needs a time scale
        return Loading(mode, direction, strain, rate, increments, frame, basis, prescribed, final)

    try:
        strain = float(cfg.get("strain", 0.02))
    except (TypeError, ValueError):
        raise ConfigError("loading.strain must be a number") from None
    if not (strain > 0 and math.isfinite(strain)):
        raise ConfigError(f"loading.strain must be a positive magnitude, got {strain}")
    if mode in ("compression", "plane_strain") and strain >= 1.0:
        raise ConfigError(f"loading.strain {strain} in {mode} must be below 1")

    second = None
    if mode == "shear":
        second = _unit(cfg["normal"], "normal") if "normal" in cfg else None
    elif mode == "plane_strain" and "constrained" in cfg:
        second = _unit(cfg["constrained"], "constrained")
    elif mode == "biaxial" and "second" in cfg:
        second = _unit(cfg["second"], "second")
    if second is not None and abs(np.dot(second, direction)) > 1e-6:
        raise ConfigError("loading: the second/normal/constrained direction must be perpendicular to loading.direction")
    frame = loading_frame(direction, second)
    basis = basis_matrices(frame)

    if mode == "tension":
        prescribed[0], final[0] = True, strain
    elif mode == "compression":
        prescribed[0], final[0] = True, -strain
    elif mode == "shear":
        # F = I + strain e1 (x) e2 = I + strain (S12 + W12) / sqrt2
        prescribed[list(_SHEARS)] = True
        final[5] = final[8] = strain * _S
    elif mode == "plane_strain":
        prescribed[[0, 1]] = True
        final[0] = -strain
    elif mode == "biaxial":
        prescribed[[0, 1]] = True
        final[[0, 1]] = strain
    return Loading(mode, direction, strain, rate, increments, frame, basis, prescribed, final)


def specimen_axis(loading: Loading) -> int:
    """Box axis (0, 1, 2) of a specimen test; the grips sit on the faces normal to it.

    Raises:
        ConfigError: unless the load is tension or compression along a box axis.
    """
    axis = int(np.argmax(np.abs(loading.direction)))
    if abs(abs(loading.direction[axis]) - 1.0) > 1e-12 or loading.mode not in ("tension", "compression"):
        raise ConfigError("boundary 'specimen' needs tension or compression along a box axis "
                          f"(got {loading.mode} along {np.round(loading.direction, 6).tolist()})")
    return axis


def output_increments(increments: int, every: int) -> np.ndarray:
    """Increments after which fields are written (0 = the initial state).

    Always includes 0 and the last increment; ``every`` thins the rest.
    """
    steps = list(range(0, increments + 1, every))
    if steps[-1] != increments:
        steps.append(increments)
    return np.asarray(steps, dtype=int)
