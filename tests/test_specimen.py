"""Specimen mode: grips on two faces, lateral faces free.

With frictionless grips a homogeneous crystal is in exact uniaxial stress, so
the measured modulus is the directional modulus (Cu <100>: 66.8 GPa,
validation.md); clamped grips add lateral constraint at the ends and make the
specimen stiffer, more so for a short one.
"""

import numpy as np
import pytest

pytest.importorskip("dolfinx")
from mpi4py import MPI  # noqa: E402

from solver.config import prepare_simulation  # noqa: E402
from solver.simulate import make_solver  # noqa: E402


def specimen(grips, direction=(1, 0, 0), cells=(6, 3, 3), mode="tension"):
    cfg = {"microstructure": {"kind": "voronoi", "cells": list(cells), "size": [3e-4, 1.5e-4, 1.5e-4],
                              "grains": 1, "texture": {"single": {"euler": [0.0, 0.0, 0.0]}}},
           "material": {"preset": "Cu"},
           "boundary": {"kind": "specimen", "grips": grips},
           "loading": {"mode": mode, "direction": list(direction), "strain": 1e-5, "increments": 1}}
    setup = prepare_simulation(cfg)
    solver = make_solver(MPI.COMM_WORLD, setup)
    solver.advance(setup.loading.duration)
    F, sigma, _ = solver.macro_fields()
    solver.destroy()
    d = np.abs(setup.loading.direction)
    return d @ (F - np.eye(3)) @ d, d @ sigma @ d, sigma


@pytest.mark.mpi
def test_frictionless_grips_give_the_directional_modulus():
    strain, stress, sigma = specimen("frictionless")
    assert strain == pytest.approx(1e-5, rel=1e-6)
    assert stress / strain / 1e9 == pytest.approx(66.8, rel=0.01)
    assert np.abs(sigma[1:, 1:]).max() < 1e-6 * abs(stress)  # lateral faces really free


@pytest.mark.mpi
def test_clamped_grips_are_stiffer_and_compression_mirrors_tension():
    e_f, s_f, _ = specimen("frictionless")
    e_c, s_c, _ = specimen("clamped")
    assert s_c / e_c > 1.02 * s_f / e_f
    e_m, s_m, _ = specimen("clamped", direction=(-1, 0, 0), mode="compression")
    assert e_m == pytest.approx(-e_c, rel=1e-6) and s_m == pytest.approx(-s_c, rel=1e-3)


@pytest.mark.mpi
def test_gmsh_polycrystal_specimen_single_orientation_modulus():
    """The grain-conforming tetrahedral mesh (quadratic elements), every grain cube-oriented: E<100> exactly."""
    import pathlib

    mesh_file = pathlib.Path(__file__).resolve().parents[1] / "meshes" / "polycrystal.msh"
    cfg = {"microstructure": {"kind": "mesh", "file": str(mesh_file), "texture": {"single": {"euler": [0, 0, 0]}}},
           "material": {"preset": "Cu"},
           "boundary": {"kind": "specimen", "grips": "frictionless"},
           "loading": {"mode": "tension", "direction": [0, 1, 0], "strain": 1e-5, "increments": 1}}
    setup = prepare_simulation(cfg)
    solver = make_solver(MPI.COMM_WORLD, setup)
    assert MPI.COMM_WORLD.allreduce(int(solver.cell_grain.max()), op=MPI.MAX) >= 2  # several grains
    solver.advance(setup.loading.duration)
    F, sigma, _ = solver.macro_fields()
    solver.destroy()
    assert sigma[1, 1] / (F[1, 1] - 1.0) / 1e9 == pytest.approx(66.8, rel=0.01)
