"""Crystallographic textures: random samples of orientations.

Conventions: orientation matrices are passive (lab -> crystal,
``v_crystal = g @ v_lab``); the lab (sample) axes are x = RD, y = TD, z = ND;
Euler angles are Bunge, radians unless a config says ``degrees: true``;
every ``spread`` is in degrees.

Texture configs (the ``texture`` key of a ``voronoi`` microstructure):

* ``random``: uniform on SO(3) (Haar measure).
* ``{single: {euler: [phi1, Phi, phi2], degrees: false}}``: one orientation.
* ``{fibre: {crystal: [1, 1, 1], sample: [1, 0, 0], spread: 5.0}}``: the crystal
  direction is parallel to the sample direction, with a uniformly random
  rotation about it; the crystal direction is then tilted away from the sample
  direction about a random perpendicular axis by a half-normal angle
  ``|N(0, spread)|``, so ``spread`` is the standard deviation of that deviation.
* ``{component: {name: cube, spread: 5.0}}`` or ``{component: {euler: [...],
  degrees: false, spread: 5.0}}``: an ideal orientation times a misorientation
  about a uniformly random axis by a half-normal angle ``|N(0, spread)|`` (as
  DAMASK's ``Rotation.from_spherical_component``); mean misorientation
  ``spread * sqrt(2 / pi)``.

Ideal components (FCC rolling texture, (hkl)[uvw] with hkl || ND, uvw || RD;
e.g. Hirsch & Lücke, Acta Metall. 36 (1988) 2863; Kocks, Tomé & Wenk, Texture
and Anisotropy (1998), ch. 2), Bunge Euler angles in degrees:

=========  ==============  ==========================
name       (hkl)[uvw]      (phi1, Phi, phi2) deg
=========  ==============  ==========================
cube       (001)[100]      (0, 0, 0)
goss       (011)[100]      (0, 45, 0)
brass      (011)[2-11]     (35.26, 45, 0)
copper     (112)[-1-11]    (90, 35.26, 45)
s          (213)[-3-64]    (58.98, 36.70, 63.43)
=========  ==============  ==========================

The families are {001}<100>, {011}<100>, {011}<211>, {112}<111> and
{123}<634>; the variants above are the ones whose Euler angles are the
tabulated ones. The matrices are built from the Miller indices (exact).
"""

from __future__ import annotations

import math

import numpy as np

from . import rotations
from .errors import ConfigError

#: Ideal components as ((hkl) parallel to ND, [uvw] parallel to RD).
IDEAL_COMPONENTS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "cube": ((0, 0, 1), (1, 0, 0)),
    "goss": ((0, 1, 1), (1, 0, 0)),
    "brass": ((0, 1, 1), (2, -1, 1)),
    "copper": ((1, 1, 2), (-1, -1, 1)),
    "s": ((2, 1, 3), (-3, -6, 4)),
}

TEXTURE_KINDS = ("random", "single", "fibre", "component")


def miller_to_matrix(hkl, uvw) -> np.ndarray:
    """Passive orientation matrix of the ideal orientation (hkl)[uvw].

    The plane normal (hkl) is parallel to ND (z) and the direction [uvw] to
    RD (x), i.e. ``g @ x = uvw/|uvw|`` and ``g @ z = hkl/|hkl|`` (cubic crystal).
    """
    n = np.asarray(hkl, dtype=float)
    u = np.asarray(uvw, dtype=float)
    n, u = n / np.linalg.norm(n), u / np.linalg.norm(u)
    # columns are the images of the lab axes x, y, z in the crystal frame
    return np.column_stack([u, np.cross(n, u), n])


def component_matrix(name: str) -> np.ndarray:
    """Passive orientation matrix of a named ideal component (see module docstring)."""
    key = str(name).lower()
    if key not in IDEAL_COMPONENTS:
        raise ConfigError(f"texture.component.name: unknown component {name!r} "
                          f"(known: {', '.join(IDEAL_COMPONENTS)})")
    return miller_to_matrix(*IDEAL_COMPONENTS[key])


def sample_orientations(texture_cfg, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` orientations from a texture.

    Args:
        texture_cfg: ``"random"`` or a one-key mapping ``{single|fibre|component: {...}}``
            (see the module docstring).
        n: number of orientations.
        rng: random generator (the only source of randomness).

    Returns:
        ``(n, 3, 3)`` passive orientation matrices.

    Raises:
        ConfigError: a malformed texture (one line naming the key).
    """
    kind, opts = _parse(texture_cfg)
    if kind == "random":
        _check_keys(opts, set(), "random")
        return rotations.random_matrices(n, rng)
    if kind == "single":
        _check_keys(opts, {"euler", "degrees"}, "single")
        g = rotations.euler_to_matrix(_euler(opts, "single"))
        return np.broadcast_to(g, (n, 3, 3)).copy()
    if kind == "fibre":
        _check_keys(opts, {"crystal", "sample", "spread"}, "fibre")
        crystal = _direction(opts, "crystal")
        sample = _direction(opts, "sample")
        return fibre_orientations(crystal, sample, _spread(opts, "fibre"), n, rng)
    _check_keys(opts, {"name", "euler", "degrees", "spread"}, "component")
    if ("name" in opts) == ("euler" in opts):
        raise ConfigError("texture.component needs exactly one of 'name' or 'euler'")
    if "name" in opts:
        if "degrees" in opts:
            raise ConfigError("texture.component: 'degrees' goes with 'euler', not with 'name'")
        center = component_matrix(opts["name"])
    else:
        center = rotations.euler_to_matrix(_euler(opts, "component"))
    return spherical_component(center, _spread(opts, "component"), n, rng)


def spherical_component(center: np.ndarray, spread_deg: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` orientations scattered about ``center`` (passive, ``(3, 3)``).

    Each is ``R(a, w) @ center`` with a uniformly random axis ``a`` and
    ``w = |N(0, spread)|``, so ``w`` is exactly the misorientation angle (no
    symmetry) from ``center``.
    """
    axis = _random_unit_vectors(n, rng)
    omega = np.abs(rng.normal(scale=math.radians(spread_deg), size=n))
    return rotations.axis_angle_to_matrix(axis, omega) @ center


def fibre_orientations(crystal, sample, spread_deg: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` orientations of the fibre crystal direction || sample direction.

    The rotation about the fibre axis is uniform in ``[0, 2 pi)``; the crystal
    direction (in the lab frame) is tilted from ``sample`` by ``|N(0, spread)|``
    about a uniformly random axis perpendicular to ``sample``.

    Args:
        crystal: crystal direction ``[u, v, w]``.
        sample: sample direction ``(x, y, z)`` in the lab frame.
        spread_deg: standard deviation of the tilt, degrees.
        n: number of orientations.
        rng: random generator.

    Returns:
        ``(n, 3, 3)`` passive matrices ``g`` with ``g.T @ c`` close to ``s``.
    """
    c = np.asarray(crystal, dtype=float)
    s = np.asarray(sample, dtype=float)
    c, s = c / np.linalg.norm(c), s / np.linalg.norm(s)
    g0 = _rotation_taking(s, c)  # g0 @ s = c
    about = rotations.axis_angle_to_matrix(np.broadcast_to(s, (n, 3)), rng.random(n) * 2.0 * np.pi)
    g = g0 @ about  # about @ s = s, so still g @ s = c
    if spread_deg > 0:
        # tilt axis: uniform on the circle perpendicular to s
        e1 = np.cross(s, [1.0, 0.0, 0.0] if abs(s[0]) < 0.9 else [0.0, 1.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(s, e1)
        psi = rng.random(n) * 2.0 * np.pi
        axis = np.cos(psi)[:, None] * e1 + np.sin(psi)[:, None] * e2
        beta = np.abs(rng.normal(scale=math.radians(spread_deg), size=n))
        tilt = rotations.axis_angle_to_matrix(axis, beta)
        g = g @ np.swapaxes(tilt, -1, -2)  # crystal direction in the lab becomes tilt @ s
    return g


def _rotation_taking(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Active rotation matrix ``R`` with ``R @ a = b`` (unit vectors)."""
    axis = np.cross(a, b)
    sin, cos = np.linalg.norm(axis), float(np.dot(a, b))
    if sin < 1e-12:
        if cos > 0:
            return np.eye(3)
        perp = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        return rotations.axis_angle_to_matrix(perp, np.pi)
    return rotations.axis_angle_to_matrix(axis / sin, math.atan2(sin, cos))


def _random_unit_vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _parse(texture_cfg) -> tuple[str, dict]:
    if isinstance(texture_cfg, str):
        if texture_cfg != "random":
            raise ConfigError(f"texture: unknown texture {texture_cfg!r} (known: {', '.join(TEXTURE_KINDS)})")
        return "random", {}
    if not isinstance(texture_cfg, dict) or len(texture_cfg) != 1:
        raise ConfigError(f"texture must be 'random' or a mapping with one key of "
                          f"{', '.join(TEXTURE_KINDS)}, got {texture_cfg!r}")
    (kind, opts), = texture_cfg.items()
    kind = "fibre" if kind == "fiber" else kind
    if kind not in TEXTURE_KINDS:
        raise ConfigError(f"texture: unknown texture {kind!r} (known: {', '.join(TEXTURE_KINDS)})")
    if opts is None:
        opts = {}
    if not isinstance(opts, dict):
        raise ConfigError(f"texture.{kind} must be a mapping, got {opts!r}")
    return kind, opts


def _check_keys(opts: dict, allowed: set, kind: str) -> None:
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise ConfigError(f"texture.{kind}: unknown key {unknown[0]!r} "
                          f"(allowed: {', '.join(sorted(allowed)) or 'none'})")


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _euler(opts: dict, kind: str) -> np.ndarray:
    e = opts.get("euler")
    if not isinstance(e, (list, tuple)) or len(e) != 3 or not all(_is_number(x) for x in e):
        raise ConfigError(f"texture.{kind}.euler must be 3 numbers [phi1, Phi, phi2], got {e!r}")
    degrees = opts.get("degrees", False)
    if not isinstance(degrees, bool):
        raise ConfigError(f"texture.{kind}.degrees must be true or false, got {degrees!r}")
    e = np.radians(e) if degrees else np.asarray(e, dtype=float)
    unit = "deg" if degrees else "rad"
    for k, (name, hi) in enumerate((("phi1", 2 * np.pi), ("Phi", np.pi), ("phi2", 2 * np.pi))):
        if not -1e-9 <= e[k] <= hi + 1e-9:
            shown = math.degrees(e[k]) if degrees else e[k]
            hint = "" if degrees else "; set degrees: true for angles in degrees"
            raise ConfigError(f"texture.{kind}.euler: {name} = {shown:g} {unit} is outside "
                              f"[0, {math.degrees(hi) if degrees else hi:.6g}]{hint}")
    return e


def _direction(opts: dict, key: str) -> np.ndarray:
    v = opts.get(key)
    if (not isinstance(v, (list, tuple)) or len(v) != 3 or not all(_is_number(x) for x in v)
            or not any(x != 0 for x in v)):
        raise ConfigError(f"texture.fibre.{key} must be a non-zero direction of 3 numbers, got {v!r}")
    return np.asarray(v, dtype=float)


def _spread(opts: dict, kind: str) -> float:
    s = opts.get("spread", 0.0)
    if not _is_number(s) or s < 0 or s > 180:
        raise ConfigError(f"texture.{kind}.spread must be in [0, 180] degrees, got {s!r}")
    return float(s)
