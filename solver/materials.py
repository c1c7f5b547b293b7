"""Material parameters for cubic crystal plasticity (phenomenological power law).

Conventions (see docs/conventions.md, docs/constitutive.md):

* SI units everywhere: stresses and moduli in Pa, rates in 1/s.
* Parameter names and meaning follow DAMASK's ``phenopowerlaw``:

  =============================  ==================  ======================
  Slipstream field               DAMASK key          unit
  =============================  ==================  ======================
  ``C11``, ``C12``, ``C44``      ``C_11`` ...        Pa
  ``shear_rate_reference``       ``dot_gamma_0_sl``  1/s
  ``rate_exponent``              ``n_sl``            -
  ``slip_resistance_initial``    ``xi_0_sl``         Pa, one per family
  ``slip_resistance_saturation`` ``xi_inf_sl``       Pa, one per family
  ``hardening_modulus``          ``h_0_sl-sl``       Pa
  ``hardening_exponent``         ``a_sl``            -
  ``interaction``                ``h_sl-sl``         -, DAMASK order
  =============================  ==================  ======================

* Elastic constants are the cubic ones in the crystal frame; Voigt order
  11, 22, 33, 23, 13, 12 (engineering shear strains for the 6x6 matrix).

Presets come from published parameter sets (see ``PRESETS``); a config either
names a preset (optionally overriding fields) or gives every field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import lattice as _lattice
from .errors import ConfigError, finite_number
from .tensors import stiffness_from_voigt

_FAMILY_FIELDS = ("slip_resistance_initial", "slip_resistance_saturation")


# --- validation helpers ----------------------------------------------------------

def _real(name: str, key: str, value) -> float:
    return finite_number(value, f"material {name!r}: {key}")


def _tuple_of_reals(name: str, key: str, values) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or np.ndim(values) != 1:
        raise ConfigError(f"material {name!r}: {key} must be a list of numbers, got {values!r}")
    return tuple(_real(name, key, v) for v in values)


def _family_tuple(name: str, key: str, values, n_fam: int, lattice: str) -> tuple[float, ...]:
    values = _tuple_of_reals(name, key, values)
    if len(values) != n_fam:
        raise ConfigError(f"material {name!r}: {key} needs {n_fam} value(s), one per slip family of "
                          f"{lattice} ({', '.join(_lattice.family_names(lattice))}), got {len(values)}")
    return values


@dataclass(frozen=True)
class Material:
    """A cubic crystal with phenomenological power-law slip (DAMASK phenopowerlaw).

    Attributes:
        name: label written to provenance.
        lattice: ``'fcc'`` or ``'bcc'``.
        C11, C12, C44: cubic elastic constants in the crystal frame, Pa.
        shear_rate_reference: reference slip rate ``gdot0``, 1/s.
        rate_exponent: stress exponent ``n`` (``gdot = gdot0 |tau/xi|^n sgn tau``).
        slip_resistance_initial: ``xi_0`` per slip family, Pa.
        slip_resistance_saturation: ``xi_inf`` per slip family, Pa.
        hardening_modulus: ``h_0``, Pa (0 switches hardening off).
        hardening_exponent: ``a`` of ``|1 - xi/xi_inf|^a``.
        interaction: slip-slip coefficients in DAMASK's order
            (:data:`solver.lattice.INTERACTION_NAMES`): 7 fcc, 24 bcc.
        reference: where the numbers come from.

    Raises:
        ConfigError: on construction, if any value is out of range (one line).
    """

    name: str
    lattice: str
    C11: float
    C12: float
    C44: float
    shear_rate_reference: float
    rate_exponent: float
    slip_resistance_initial: tuple[float, ...]
    slip_resistance_saturation: tuple[float, ...]
    hardening_modulus: float
    hardening_exponent: float
    interaction: tuple[float, ...]
    reference: str = ""

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        if self.lattice not in _lattice.LATTICES:
            raise ConfigError(f"material {self.name!r}: unknown lattice {self.lattice!r}; "
                              f"known: {', '.join(_lattice.LATTICES)}")
        for key in ("C11", "C12", "C44", "shear_rate_reference", "rate_exponent",
                    "hardening_modulus", "hardening_exponent"):
            set_(key, _real(self.name, key, getattr(self, key)))
        for key in ("C11", "C44", "shear_rate_reference", "hardening_exponent"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"material {self.name!r}: {key} must be > 0, got {getattr(self, key):g}")
        if not self.rate_exponent >= 1:
            raise ConfigError(f"material {self.name!r}: rate_exponent must be >= 1, got {self.rate_exponent:g}")
        if not self.hardening_modulus >= 0:
            raise ConfigError(f"material {self.name!r}: hardening_modulus must be >= 0, "
                              f"got {self.hardening_modulus:g}")
        # cubic stiffness is positive definite iff these three eigenvalues are > 0
        if not (self.C11 - self.C12 > 0 and self.C11 + 2 * self.C12 > 0 and self.C44 > 0):
            raise ConfigError(f"material {self.name!r}: stiffness not positive definite "
                              f"(need C11 > |C12|, C11 + 2 C12 > 0, C44 > 0)")
        n_fam = len(_lattice.family_sizes(self.lattice))
        for key in _FAMILY_FIELDS:
            values = _family_tuple(self.name, key, getattr(self, key), n_fam, self.lattice)
            if not all(v > 0 for v in values):
                raise ConfigError(f"material {self.name!r}: {key} must be > 0 for every family")
            set_(key, values)
        n_coef = _lattice.n_interaction_coefficients(self.lattice)
        coef = _tuple_of_reals(self.name, "interaction", self.interaction)
        if len(coef) != n_coef:
            raise ConfigError(f"material {self.name!r}: interaction takes {n_coef} coefficients "
                              f"for {self.lattice} (DAMASK order), got {len(coef)}")
        if not all(c >= 0 for c in coef):
            raise ConfigError(f"material {self.name!r}: interaction coefficients must be >= 0")
        set_("interaction", coef)
        set_("name", str(self.name))
        set_("reference", str(self.reference))

    # --- derived quantities -------------------------------------------------

    @property
    def n_slip(self) -> int:
        """Number of slip systems (12 fcc, 24 bcc)."""
        return sum(_lattice.family_sizes(self.lattice))

    @property
    def family_sizes(self) -> tuple[int, ...]:
        """Slip systems per family."""
        return _lattice.family_sizes(self.lattice)

    def per_system(self, values) -> np.ndarray:
        """Expand one value per family to one value per slip system, ``(ns,)``."""
        return np.repeat(np.asarray(values, dtype=float), self.family_sizes)

    def interaction_matrix(self) -> np.ndarray:
        """``(ns, ns)`` hardening interaction matrix (row reacting, column acting)."""
        return _lattice.interaction_matrix(self.lattice, self.interaction)

    def stiffness_voigt(self) -> np.ndarray:
        """Crystal-frame stiffness as a 6x6 matrix, Voigt order 11, 22, 33, 23, 13, 12, Pa."""
        C = np.zeros((6, 6))
        C[:3, :3] = self.C12
        C[[0, 1, 2], [0, 1, 2]] = self.C11
        C[[3, 4, 5], [3, 4, 5]] = self.C44
        return C

    def stiffness_tensor(self) -> np.ndarray:
        """Crystal-frame stiffness tensor ``C_ijkl``, ``(3, 3, 3, 3)``, Pa."""
        return stiffness_from_voigt(self.stiffness_voigt())

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field (SI units), for provenance."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        out["units"] = {"C11": "Pa", "C12": "Pa", "C44": "Pa", "shear_rate_reference": "1/s",
                        "slip_resistance_initial": "Pa", "slip_resistance_saturation": "Pa",
                        "hardening_modulus": "Pa"}
        return out

    def replace(self, **changes) -> "Material":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


FIELDS = tuple(f.name for f in dataclasses.fields(Material))

_MPa, _GPa = 1e6, 1e9

#: Published parameter sets, SI units.
PRESETS: dict[str, Material] = {
    # DAMASK examples/config/phase/mechanical/plastic/phenopowerlaw_Cu.yaml (fitted by DAMASK to
    # T. Takeuchi, Trans. JIM 16 (1975) 629, Fig. 3b, [111] and [001] crystals) with
    # elastic/Hooke_Cu.yaml (W.C. Overton, J. Gaffney, Phys. Rev. 98 (1955) 969), 293 K.
    "Cu": Material(
        name="Cu", lattice="fcc", C11=168.9 * _GPa, C12=121.8 * _GPa, C44=75.8 * _GPa,
        shear_rate_reference=3e-3, rate_exponent=20.0,
        slip_resistance_initial=(1.6 * _MPa,), slip_resistance_saturation=(96.4 * _MPa,),
        hardening_modulus=350 * _MPa, hardening_exponent=0.6,
        interaction=(1, 1, 5.123, 0.574, 1.123, 1.123, 1),
        reference="DAMASK 3.1 phenopowerlaw_Cu.yaml (Takeuchi 1975, doi:10.2320/matertrans1960.16.629); "
                  "Hooke_Cu.yaml (Overton and Gaffney 1955, doi:10.1103/PhysRev.98.969)"),
    # DAMASK phenopowerlaw_Al.yaml (fitted to W.F. Hosford et al., Acta Metall. 8 (1960) 187,
    # Fig. 5, [111] and [001]) with elastic/Hooke_Al.yaml (Kamm and Alers 1964), 293 K.
    "Al": Material(
        name="Al", lattice="fcc", C11=106.9 * _GPa, C12=60.5 * _GPa, C44=28.4 * _GPa,
        shear_rate_reference=7.5e-5, rate_exponent=20.0,
        slip_resistance_initial=(2.69 * _MPa,), slip_resistance_saturation=(67.5 * _MPa,),
        hardening_modulus=281.5 * _MPa, hardening_exponent=5.4,
        interaction=(1, 1, 5.123, 0.574, 1.123, 1.123, 1),
        reference="DAMASK 3.1 phenopowerlaw_Al.yaml (Hosford et al. 1960, "
                  "doi:10.1016/0001-6160(60)90127-9); Hooke_Al.yaml (Kamm and Alers 1964, "
                  "doi:10.1063/1.1713309)"),
    # DAMASK 3.1 examples/grid/material.yaml, phase "Aluminum" (the 20-grain tensionX example).
    "Al-DAMASK": Material(
        name="Al-DAMASK", lattice="fcc", C11=106.75 * _GPa, C12=60.41 * _GPa, C44=28.34 * _GPa,
        shear_rate_reference=1e-3, rate_exponent=20.0,
        slip_resistance_initial=(31 * _MPa,), slip_resistance_saturation=(63 * _MPa,),
        hardening_modulus=75 * _MPa, hardening_exponent=2.25,
        interaction=(1, 1, 1.4, 1.4, 1.4, 1.4, 1.4),
        reference="DAMASK 3.1 examples/grid/material.yaml (phase Aluminum)"),
    # BCC ferrite of a dual-phase steel: DAMASK phenopowerlaw_DP-steel-ferrite.yaml
    # (C.C. Tasan et al., Acta Mater. 81 (2014) 386, Tab. 1) with elastic/Hooke_Fe.yaml
    # (D.J. Dever, J. Appl. Phys. 43 (1972) 3293, values at T_ref = 293.15 K).
    "Fe-ferrite": Material(
        name="Fe-ferrite", lattice="bcc", C11=232.2 * _GPa, C12=136.4 * _GPa, C44=117.0 * _GPa,
        shear_rate_reference=1e-3, rate_exponent=20.0,
        slip_resistance_initial=(95 * _MPa, 96 * _MPa),
        slip_resistance_saturation=(222 * _MPa, 412 * _MPa),
        hardening_modulus=1.0 * _GPa, hardening_exponent=2.25,
        interaction=(1, 1.4, 1) + (1.4,) * 21,
        reference="DAMASK 3.1 phenopowerlaw_DP-steel-ferrite.yaml (Tasan et al. 2014, "
                  "doi:10.1016/j.actamat.2014.07.071); Hooke_Fe.yaml (Dever 1972, doi:10.1063/1.1661710)"),
}


def material_from_config(cfg: dict) -> Material:
    """Build a :class:`Material` from a config mapping.

    Two forms:

    * ``{preset: Cu}`` plus optional overrides of any field, e.g.
      ``{preset: Al-DAMASK, hardening_modulus: 0}``;
    * every field given explicitly (SI units), ``name`` optional.

    Per-family fields take a list with one value per slip family, or one
    number used for every family.

    Args:
        cfg: the ``material`` section of a config.

    Returns:
        The validated material.

    Raises:
        ConfigError: unknown keys or preset, missing fields, bad values (one line).
    """
    if isinstance(cfg, Material):
        return cfg
    if isinstance(cfg, str):
        cfg = {"preset": cfg}
    if not isinstance(cfg, dict):
        raise ConfigError(f"material: expected a mapping, got {type(cfg).__name__}")
    allowed = ("preset",) + FIELDS
    unknown = sorted(str(k) for k in cfg if k not in allowed)
    if unknown:
        raise ConfigError(f"material: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    fields = dict(cfg)
    preset = fields.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"material: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        base = PRESETS[preset].as_dict()
        base.pop("units")
        if fields:
            base["name"] = fields.get("name", f"{preset} (modified)")
            base["reference"] = fields.get("reference", base["reference"] + "; with config overrides")
        base.update(fields)
        fields = base
    else:
        fields.setdefault("name", "custom")
        missing = [f for f in FIELDS if f not in fields and f != "reference"]
        if missing:
            raise ConfigError(f"material: missing field(s) {', '.join(missing)} "
                              f"(or give preset: one of {', '.join(PRESETS)})")
    lat = fields.get("lattice")
    if lat not in _lattice.LATTICES:
        raise ConfigError(f"material: unknown lattice {lat!r}; known: {', '.join(_lattice.LATTICES)}")
    n_fam = len(_lattice.family_sizes(lat))
    for key in _FAMILY_FIELDS:
        value = fields[key]
        if np.ndim(value) == 0 and not isinstance(value, (list, tuple)):
            fields[key] = (value,) * n_fam  # one number for every family
    return Material(**fields)


# --- analytic elasticity of cubic crystals -------------------------------------

def _compliances(m: Material) -> tuple[float, float, float]:
    """Cubic compliances S11, S12, S44 (Voigt, engineering shear), 1/Pa."""
    d = (m.C11 - m.C12) * (m.C11 + 2 * m.C12)
    return (m.C11 + m.C12) / d, -m.C12 / d, 1.0 / m.C44


def directional_modulus(material: Material, direction_crystal) -> np.ndarray:
    """Young's modulus of the single crystal along a crystal direction.

    ``1/E = S11 - 2 (S11 - S12 - S44/2)(l1^2 l2^2 + l2^2 l3^2 + l3^2 l1^2)``
    (Nye, Physical Properties of Crystals, 1957).

    Args:
        material: the crystal.
        direction_crystal: ``(..., 3)`` direction in the crystal frame (any length).

    Returns:
        ``(...)`` modulus in Pa.
    """
    S11, S12, S44 = _compliances(material)
    l = np.asarray(direction_crystal, dtype=float)
    l = l / np.linalg.norm(l, axis=-1, keepdims=True)
    l2 = l * l
    J = l2[..., 0] * l2[..., 1] + l2[..., 1] * l2[..., 2] + l2[..., 2] * l2[..., 0]
    return 1.0 / (S11 - 2.0 * (S11 - S12 - 0.5 * S44) * J)


def elastic_bounds(material: Material) -> dict[str, dict[str, float]]:
    """Voigt, Reuss and Hill estimates of an untextured aggregate of the crystal.

    Cubic formulas: ``K = (C11 + 2 C12)/3`` (all three), ``G_V = (C11 - C12 + 3 C44)/5``,
    ``G_R = 5 (C11 - C12) C44 / (4 C44 + 3 (C11 - C12))``, Hill = arithmetic mean,
    ``E = 9 K G / (3 K + G)`` for each.

    Returns:
        ``{'voigt': {'K', 'G', 'E'}, 'reuss': {...}, 'hill': {...}}`` in Pa.
    """
    C11, C12, C44 = material.C11, material.C12, material.C44
    K = (C11 + 2 * C12) / 3.0
    G = {"voigt": (C11 - C12 + 3 * C44) / 5.0,
         "reuss": 5 * (C11 - C12) * C44 / (4 * C44 + 3 * (C11 - C12))}
    G["hill"] = 0.5 * (G["voigt"] + G["reuss"])
    return {k: {"K": K, "G": g, "E": 9 * K * g / (3 * K + g)} for k, g in G.items()}
