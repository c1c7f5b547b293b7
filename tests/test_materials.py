"""Material presets, config parsing and analytic elasticity against reference/validation.md."""

import json

import numpy as np
import pytest

from solver.errors import ConfigError
from solver.materials import (PRESETS, Material, directional_modulus, elastic_bounds,
                              material_from_config)
from solver.tensors import stiffness_to_voigt

GPa, MPa = 1e9, 1e6

# validation.md, "Elasticity": K; G Voigt/Reuss/Hill; E Voigt/Reuss/Hill; E<100>, E<111> (GPa)
VALIDATION = {
    "Cu": dict(K=137.5, G=(54.9, 40.2, 47.5), E=(145.4, 109.8, 127.9), E100=66.8, E111=192.1),
    "Al": dict(K=76.0, G=(26.3, 26.1, 26.2), E=(70.8, 70.2, 70.5), E100=63.2, E111=75.8),
}


@pytest.mark.parametrize("name", ["Cu", "Al"])
def test_directional_moduli(name):
    ref = VALIDATION[name]
    m = PRESETS[name]
    assert directional_modulus(m, [1, 0, 0]) / GPa == pytest.approx(ref["E100"], abs=0.051)
    assert directional_modulus(m, [1, 1, 1]) / GPa == pytest.approx(ref["E111"], abs=0.051)
    # cubic symmetry: every <100> and <111> alike, broadcasting over directions
    E = directional_modulus(m, [[0, 0, 2], [0, -3, 0], [-1, 1, -1]]) / GPa
    np.testing.assert_allclose(E, [ref["E100"], ref["E100"], ref["E111"]], atol=0.051)


@pytest.mark.parametrize("name", ["Cu", "Al"])
def test_aggregate_bounds(name):
    ref = VALIDATION[name]
    b = elastic_bounds(PRESETS[name])
    for k, est in enumerate(("voigt", "reuss", "hill")):
        assert b[est]["K"] / GPa == pytest.approx(ref["K"], abs=0.051)
        assert b[est]["G"] / GPa == pytest.approx(ref["G"][k], abs=0.051)
        assert b[est]["E"] / GPa == pytest.approx(ref["E"][k], abs=0.051)
    assert b["reuss"]["G"] <= b["hill"]["G"] <= b["voigt"]["G"]


def test_directional_modulus_from_stiffness_tensor():
    # E along l is 1 / (l l : C^-1 : l l); check the closed form against the 6x6 inverse
    # (stress l l in Voigt form, compliance acting to engineering strains)
    m = PRESETS["Fe-ferrite"]
    S66 = np.linalg.inv(m.stiffness_voigt())
    l = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    sigma = np.array([l[0]**2, l[1]**2, l[2]**2, l[1] * l[2], l[0] * l[2], l[0] * l[1]])
    assert directional_modulus(m, l) == pytest.approx(1.0 / (sigma @ S66 @ sigma), rel=1e-12)


def test_presets_in_si_units():
    cu = PRESETS["Cu"]
    assert (cu.lattice, cu.C11, cu.C12, cu.C44) == ("fcc", 168.9 * GPa, 121.8 * GPa, 75.8 * GPa)
    assert cu.shear_rate_reference == 3e-3 and cu.rate_exponent == 20
    assert cu.slip_resistance_initial == (1.6 * MPa,) and cu.slip_resistance_saturation == (96.4 * MPa,)
    assert cu.hardening_modulus == 350 * MPa and cu.hardening_exponent == 0.6
    assert cu.interaction == (1, 1, 5.123, 0.574, 1.123, 1.123, 1)
    al = PRESETS["Al"]
    assert (al.C11, al.C12, al.C44) == (106.9 * GPa, 60.5 * GPa, 28.4 * GPa)
    assert (al.shear_rate_reference, al.hardening_exponent) == (7.5e-5, 5.4)
    assert al.slip_resistance_initial == (2.69 * MPa,) and al.hardening_modulus == pytest.approx(281.5 * MPa)
    ad = PRESETS["Al-DAMASK"]
    assert (ad.C11, ad.C12, ad.C44) == (106.75 * GPa, 60.41 * GPa, 28.34 * GPa)
    assert ad.slip_resistance_initial == (31 * MPa,) and ad.slip_resistance_saturation == (63 * MPa,)
    assert (ad.hardening_modulus, ad.hardening_exponent, ad.shear_rate_reference) == (75 * MPa, 2.25, 1e-3)
    assert ad.interaction == (1, 1, 1.4, 1.4, 1.4, 1.4, 1.4)
    fe = PRESETS["Fe-ferrite"]
    assert fe.lattice == "bcc" and fe.n_slip == 24 and len(fe.interaction) == 24
    assert fe.slip_resistance_initial == (95 * MPa, 96 * MPa)
    for m in PRESETS.values():
        assert m.reference


def test_stiffness_voigt_and_tensor():
    m = PRESETS["Cu"]
    C66 = m.stiffness_voigt()
    assert C66[0, 0] == m.C11 and C66[0, 1] == m.C12 and C66[3, 3] == m.C44 and C66[0, 3] == 0
    C = m.stiffness_tensor()
    np.testing.assert_array_equal(stiffness_to_voigt(C), C66)
    # major and minor symmetries
    np.testing.assert_array_equal(C, C.transpose(1, 0, 2, 3))
    np.testing.assert_array_equal(C, C.transpose(2, 3, 0, 1))
    assert C[0, 1, 0, 1] == m.C44 and C[0, 0, 1, 1] == m.C12


def test_as_dict_is_json_and_round_trips():
    for m in PRESETS.values():
        d = m.as_dict()
        json.dumps(d)
        d.pop("units")
        assert material_from_config(d) == m


def test_config_preset_and_overrides():
    assert material_from_config({"preset": "Cu"}) == PRESETS["Cu"]
    m = material_from_config({"preset": "Al-DAMASK", "hardening_modulus": 0, "rate_exponent": "10"})
    assert m.hardening_modulus == 0.0 and m.rate_exponent == 10.0 and m.C11 == 106.75 * GPa
    assert m.name != "Al-DAMASK"
    m = material_from_config({"preset": "Fe-ferrite", "slip_resistance_initial": 100e6})
    assert m.slip_resistance_initial == (100e6, 100e6)


def test_config_explicit():
    cfg = dict(lattice="bcc", C11=230e9, C12=135e9, C44=117e9, shear_rate_reference=1e-3,
               rate_exponent=20, slip_resistance_initial=[50e6, 60e6],
               slip_resistance_saturation=[150e6, 160e6], hardening_modulus=1e9,
               hardening_exponent=2, interaction=[1.0] * 24)
    m = material_from_config(cfg)
    assert isinstance(m, Material) and m.n_slip == 24
    np.testing.assert_array_equal(m.per_system(m.slip_resistance_initial), [50e6] * 12 + [60e6] * 12)


@pytest.mark.parametrize("cfg, match", [
    ({"preset": "Cu", "C13": 1e9}, "unknown key.*C13.*allowed: preset, name, lattice"),
    ({"preset": "Ni"}, "unknown preset 'Ni'; known: Cu, Al, Al-DAMASK, Fe-ferrite"),
    ({"preset": "Cu", "lattice": "hcp"}, "unknown lattice 'hcp'; known: fcc, bcc"),
    ({"preset": "Cu", "C44": -1e9}, "C44 must be > 0"),
    ({"preset": "Cu", "shear_rate_reference": 0}, "shear_rate_reference must be > 0"),
    ({"preset": "Cu", "rate_exponent": 0.5}, "rate_exponent must be >= 1"),
    ({"preset": "Cu", "hardening_modulus": -1}, "hardening_modulus must be >= 0"),
    ({"preset": "Cu", "slip_resistance_initial": [1e6, 2e6]}, "needs 1 value.*got 2"),
    ({"preset": "Fe-ferrite", "slip_resistance_saturation": [1e8, 2e8, 3e8]}, "needs 2 value"),
    ({"preset": "Cu", "slip_resistance_initial": 0}, "must be > 0 for every family"),
    ({"preset": "Cu", "C12": 200e9}, "not positive definite"),
    ({"preset": "Cu", "C12": -100e9}, "not positive definite"),
    ({"preset": "Cu", "interaction": [1, 1, 1]}, "takes 7 coefficients"),
    ({"preset": "Cu", "lattice": "bcc"}, "needs 2 value|takes 24"),
    ({"preset": "Cu", "C11": "stiff"}, "C11 must be a number"),
    ({"lattice": "fcc", "C11": 1e11}, "missing field"),
    ("Cu", None),
])
def test_config_errors(cfg, match):
    if match is None:
        assert material_from_config(cfg) == PRESETS["Cu"]
        return
    with pytest.raises(ConfigError, match=match) as err:
        material_from_config(cfg)
    assert "\n" not in str(err.value)


def test_material_is_frozen_and_replace_validates():
    m = PRESETS["Cu"]
    with pytest.raises(AttributeError):
        m.C11 = 1.0
    with pytest.raises(ConfigError):
        m.replace(C44=0.0)
