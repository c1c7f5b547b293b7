"""Microstructures from configs: Voronoi tessellations, textures, grain segmentation.

Texture statistics are checked against numbers nobody here chose: the
Mackenzie (1958) disorientation distribution of randomly oriented cubic
crystals (mean 40.74 deg, maximum 62.80 deg), the mean rotation angle of
uniform rotations without symmetry (pi/2 + 2/pi rad), the moments of the
half-normal spread, and the tabulated Euler angles of the FCC rolling
components (Hirsch & Lücke 1988).
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest

from solver import rotations, textures, voronoi
from solver.errors import ConfigError, InputFileError
from solver.microstructure import Microstructure, microstructure_from_config, segment_grains
from solver.readers import write_microstructure

HERE = pathlib.Path(__file__).resolve().parent
NO_SYMMETRY = np.eye(3)[None]


def rng(seed=0):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- Voronoi


def test_periodic_tessellation_wraps_a_grain_across_the_boundary():
    seeds = np.array([[0.3, 2.0, 0.5], [5.0, 2.0, 0.5]])
    periodic = voronoi.tessellate((10, 4, 1), (10.0, 4.0, 1.0), seeds, periodic=True)
    open_box = voronoi.tessellate((10, 4, 1), (10.0, 4.0, 1.0), seeds, periodic=False)
    # the last column (x = 9.5) is 0.8 from seed 0 through the face, 4.5 from seed 1
    assert np.all(periodic[..., -1] == 0) and np.all(open_box[..., -1] == 1)
    assert np.all(periodic[..., 0] == 0)


def test_tessellation_matches_brute_force_minimum_image():
    cells, size = (7, 5, 6), np.array([3.5, 2.0, 3.0])
    seeds = rng(4).random((9, 3)) * size
    got = voronoi.tessellate(cells, size, seeds, periodic=True)
    step = size / cells
    z, y, x = np.meshgrid(*[(np.arange(n) + 0.5) * step[k] for k, n in ((2, 6), (1, 5), (0, 7))], indexing="ij")
    d = np.stack([x, y, z], -1)[..., None, :] - seeds
    d -= size * np.round(d / size)
    np.testing.assert_array_equal(got, np.argmin((d**2).sum(-1), axis=-1))


@pytest.mark.parametrize("cells, grains", [((16, 16, 16), 20), ((4, 4, 4), 64), ((9, 7, 1), 12), ((5, 1, 1), 1)])
def test_voronoi_grain_count_exact_and_contiguous(cells, grains):
    gid, seeds = voronoi.voronoi_grains(cells, (1.0, 1.0, 1.0), grains, rng(1), periodic=True)
    assert gid.shape == cells[::-1] and gid.dtype == np.int32
    assert np.array_equal(np.unique(gid), np.arange(grains)) and seeds.shape == (grains, 3)


def test_voronoi_config_reproducible_and_texture_keeps_geometry():
    cfg = {"kind": "voronoi", "cells": [12, 10, 8], "grains": 15, "seed": 42}
    a = microstructure_from_config(cfg, HERE)
    b = microstructure_from_config(dict(cfg), HERE)
    np.testing.assert_array_equal(a.euler, b.euler)
    np.testing.assert_array_equal(a.grain_id, b.grain_id)
    c = microstructure_from_config(dict(cfg, seed=43), HERE)
    assert not np.array_equal(a.grain_id, c.grain_id)
    d = microstructure_from_config(dict(cfg, texture={"component": {"name": "goss", "spread": 3.0}}), HERE)
    np.testing.assert_array_equal(a.grain_id, d.grain_id)
    assert a.n_grains == 15 and a.periodic and a.cells == (12, 10, 8) and a.shape == (8, 10, 12)
    np.testing.assert_allclose(a.size, [1e-4] * 3)
    np.testing.assert_allclose(a.spacing, [1e-4 / 12, 1e-5, 1e-4 / 8])
    # one orientation per grain
    for g in range(a.n_grains):
        e = a.euler[a.grain_id == g]
        assert np.ptp(e, axis=0).max() == 0.0
    assert a.orientation_matrices().shape == (8, 10, 12, 3, 3)


def test_periodic_voronoi_has_grains_crossing_the_faces():
    ms = microstructure_from_config({"kind": "voronoi", "cells": [16, 16, 16], "grains": 12, "seed": 0}, HERE)
    crossing = set(ms.grain_id[..., 0].ravel()) & set(ms.grain_id[..., -1].ravel())
    assert crossing
    # and the wrapped grain is one connected region once the faces are glued: segmentation agrees
    assert segment_grains(ms.euler, 1.0, periodic=True).max() + 1 == ms.n_grains


# --------------------------------------------------------------------------- textures


def test_random_texture_reproduces_mackenzie_distribution():
    g = textures.sample_orientations("random", 20000, rng(7))
    cubic = np.degrees(rotations.misorientation_angle(g, np.eye(3)))
    assert abs(cubic.mean() - 40.74) < 0.35  # Mackenzie 1958: mean 40.74 deg
    assert 60.0 < cubic.max() <= 62.80 + 1e-6  # maximum 62.80 deg
    plain = rotations.misorientation_angle(g, np.eye(3), NO_SYMMETRY)
    assert abs(plain.mean() - (np.pi / 2 + 2 / np.pi)) < 0.02


def test_fibre_spread_statistics():
    crystal, sample, spread = np.array([1.0, 1.0, 1.0]), np.array([1.0, 0.0, 0.0]), 5.0
    g = textures.sample_orientations({"fibre": {"crystal": [1, 1, 1], "sample": [1, 0, 0], "spread": spread}},
                                     20000, rng(3))
    d = np.einsum("nji,j->ni", g, crystal / np.linalg.norm(crystal))  # crystal direction in the lab
    beta = np.degrees(np.arccos(np.clip(d @ sample, -1, 1)))
    assert abs(beta.mean() - spread * math.sqrt(2 / math.pi)) < 0.1  # half-normal mean
    assert abs(np.sqrt((beta**2).mean()) - spread) < 0.1  # half-normal rms = sigma
    ideal = textures.sample_orientations({"fibre": {"crystal": [1, 1, 1], "sample": [1, 0, 0]}}, 20000, rng(4))
    d = np.einsum("nji,j->ni", ideal, crystal / np.sqrt(3))
    np.testing.assert_allclose(d, np.broadcast_to(sample, d.shape), atol=1e-12)
    # the rotation about the fibre axis is uniform: a perpendicular crystal direction points anywhere
    p = np.einsum("nji,j->ni", ideal, np.array([1.0, -1.0, 0.0]) / math.sqrt(2))
    psi = np.arctan2(p[:, 2], p[:, 1])
    assert abs(np.mean(np.exp(1j * psi))) < 0.03
    assert abs(np.mean(np.exp(2j * psi))) < 0.03


def test_component_spread_is_half_normal_misorientation():
    g = textures.sample_orientations({"component": {"name": "brass", "spread": 5.0}}, 20000, rng(5))
    omega = np.degrees(rotations.misorientation_angle(g, textures.component_matrix("brass"), NO_SYMMETRY))
    assert abs(omega.mean() - 5.0 * math.sqrt(2 / math.pi)) < 0.1
    assert abs(np.sqrt((omega**2).mean()) - 5.0) < 0.1


@pytest.mark.parametrize("name, euler_deg", [
    ("cube", (0.0, 0.0, 0.0)), ("goss", (0.0, 45.0, 0.0)), ("brass", (35.26, 45.0, 0.0)),
    ("copper", (90.0, 35.26, 45.0)), ("s", (58.98, 36.70, 63.43)),
])
def test_ideal_components_have_tabulated_euler_angles(name, euler_deg):
    got = np.degrees(rotations.matrix_to_euler(textures.component_matrix(name)))
    np.testing.assert_allclose(got, euler_deg, atol=0.01)


def test_cube_component_is_identity_and_single_is_exact():
    g = textures.sample_orientations({"component": {"name": "cube"}}, 4, rng())
    np.testing.assert_allclose(g, np.broadcast_to(np.eye(3), (4, 3, 3)), atol=1e-15)
    g = textures.sample_orientations({"single": {"euler": [90, 35.26, 45], "degrees": True}}, 3, rng())
    np.testing.assert_allclose(g, rotations.euler_to_matrix(np.radians([[90, 35.26, 45]] * 3)))
    ms = microstructure_from_config({"kind": "voronoi", "cells": [4, 4, 4], "grains": 5,
                                     "texture": {"single": {"euler": [0.1, 0.2, 0.3]}}}, HERE)
    np.testing.assert_allclose(ms.euler, np.broadcast_to([0.1, 0.2, 0.3], ms.euler.shape), atol=1e-12)


@pytest.mark.parametrize("texture, fragment", [
    ("gaussian", "unknown texture 'gaussian'"),
    ({"single": {"euler": [0, 45, 0]}}, "set degrees: true"),
    ({"single": {"euler": [0, 1]}}, "3 numbers"),
    ({"fibre": {"crystal": [0, 0, 0], "sample": [1, 0, 0]}}, "texture.fibre.crystal"),
    ({"fibre": {"crystal": [1, 1, 1], "sample": [1, 0, 0], "spread": -1}}, "spread"),
    ({"component": {"name": "rotated_goss"}}, "unknown component 'rotated_goss'"),
    ({"component": {"name": "cube", "euler": [0, 0, 0]}}, "exactly one of"),
    ({"component": {"name": "cube", "sigma": 3}}, "unknown key 'sigma'"),
    ({"random": {}, "single": {}}, "one key"),
])
def test_bad_textures_refused(texture, fragment):
    with pytest.raises(ConfigError) as e:
        textures.sample_orientations(texture, 3, rng())
    assert fragment in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- segmentation


def test_segmentation_uses_cubic_symmetry_and_threshold():
    g_a = rotations.euler_to_matrix([0.3, 0.6, 0.9])
    # the same crystal described after a 90 deg turn about its [001]: symmetry-equivalent
    g_eq = rotations.axis_angle_to_matrix([0, 0, 1], np.pi / 2) @ g_a
    g_b = rotations.axis_angle_to_matrix([1, 2, 3], np.radians(20)) @ g_a
    noise = rotations.axis_angle_to_matrix(rng(2).normal(size=(1, 4, 8, 3)), np.radians(1.5))
    g = np.empty((1, 4, 8, 3, 3))
    g[..., :4, :, :] = g_a
    g[0, :2, :4] = g_eq
    g[..., 4:, :, :] = g_b
    g = noise @ g
    gid = segment_grains(rotations.matrix_to_euler(g), 5.0)
    assert gid.max() == 1 and np.all(gid[..., :4] == 0) and np.all(gid[..., 4:] == 1)
    assert segment_grains(rotations.matrix_to_euler(g), 30.0).max() == 0


# --------------------------------------------------------------------------- Microstructure and configs


def test_microstructure_validate():
    ok = dict(euler=np.zeros((1, 2, 2, 3)), grain_id=np.zeros((1, 2, 2), int), size=np.ones(3))
    Microstructure(**ok).validate()
    for change, fragment in [({"size": np.array([1.0, -1.0, 1.0])}, "size must be positive"),
                             ({"grain_id": np.array([[[0, 2], [2, 2]]])}, "not contiguous"),
                             ({"grain_id": np.zeros((1, 2, 3), int)}, "does not match"),
                             ({"euler": np.full((1, 2, 2, 3), 7.0)}, "outside"),
                             ({"lattice": "fcc2"}, "unknown lattice")]:
        with pytest.raises(InputFileError) as e:
            Microstructure(**dict(ok, **change)).validate()
        assert fragment in str(e.value) and "\n" not in str(e.value)
    assert "grains=1" in repr(Microstructure(**ok))


@pytest.mark.parametrize("cfg, fragment", [
    ({"kind": "spectral"}, "unknown kind 'spectral'"),
    ({"kind": "voronoi", "cells": [4, 4, 4], "grains": 2, "colour": 1}, "unknown key 'colour'"),
    ({"kind": "voronoi", "cells": [4, 0, 4], "grains": 2}, "3 positive integers"),
    ({"kind": "voronoi", "cells": [4, 4], "grains": 2}, "3 positive integers"),
    ({"kind": "voronoi", "grains": 2}, "cells is required"),
    ({"kind": "voronoi", "cells": [2, 2, 2], "grains": 0}, "[1, 8]"),
    ({"kind": "voronoi", "cells": [2, 2, 2], "grains": 9}, "[1, 8]"),
    ({"kind": "voronoi", "cells": [2, 2, 2], "grains": 2.5}, "grains"),
    ({"kind": "voronoi", "cells": [2, 2, 2], "grains": 2, "size": [1, 1, 0]}, "positive lengths"),
    ({"kind": "voronoi", "cells": [2, 2, 2], "grains": 2, "seed": -1}, "seed"),
    ({"kind": "voronoi", "cells": [2, 2, 2], "grains": 2, "periodic": "yes"}, "periodic"),
    ({"kind": "voronoi", "cells": [2, 2, 2], "grains": 2, "texture": {"fibre": 3}}, "texture.fibre"),
    ({"kind": "ebsd"}, "file"),
    ({"kind": "ebsd", "file": "x.ang", "misorientation_threshold": 0}, "misorientation_threshold"),
    ({"kind": "ebsd", "file": "x.ctf", "confidence_threshold": 0.1}, ".ang files only"),
    ({"kind": "ebsd", "file": "x.ang", "thickness": -1}, "thickness"),
    ({"kind": "ebsd", "file": "x.npz"}, "use kind: grid"),
    ({"kind": "grid", "file": "x.ang"}, "use kind: ebsd"),
    ({"kind": "grid", "file": "x.npz", "thickness": 1e-6}, "unknown key 'thickness'"),
    ("voronoi", "mapping"),
])
def test_bad_configs_refused_with_one_line(cfg, fragment):
    with pytest.raises(ConfigError) as e:
        microstructure_from_config(cfg, HERE)
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_ebsd_and_grid_configs_resolve_files_against_base_dir(tmp_path):
    src = microstructure_from_config({"kind": "voronoi", "cells": [8, 6, 1], "size": [8e-6, 6e-6, 1e-6],
                                      "grains": 4, "seed": 2, "periodic": False}, tmp_path)
    (tmp_path / "scans").mkdir()
    write_microstructure(tmp_path / "scans" / "m.ang", src)
    ms = microstructure_from_config({"kind": "ebsd", "file": "scans/m.ang", "thickness": 3e-6,
                                     "confidence_threshold": 0.5}, tmp_path)
    assert ms.cells == (8, 6, 1) and ms.n_grains == 4 and not ms.periodic
    np.testing.assert_allclose(ms.size, [8e-6, 6e-6, 3e-6])
    write_microstructure(tmp_path / "g.npz", src)
    assert microstructure_from_config({"kind": "grid", "file": "g.npz"}, tmp_path).n_grains == 4
    with pytest.raises(InputFileError) as e:
        microstructure_from_config({"kind": "ebsd", "file": "scans/absent.ctf"}, tmp_path)
    assert "absent.ctf" in str(e.value) and "no such file" in str(e.value)
