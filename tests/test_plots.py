"""Figures: IPF colours against the TSL key, PNG output, slicing, pole geometry."""

import numpy as np
import pytest
from matplotlib.image import imread

from solver import plots
from solver.errors import ConfigError, InputFileError
from solver.rotations import axis_angle_to_matrix, euler_to_matrix, matrix_to_euler

RED, GREEN, BLUE = (1, 0, 0), (0, 1, 0), (0, 0, 1)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # orix -> diffpy API rename


def _orientation_with(crystal_dir, sample_dir, spin):
    """Bunge angles of an orientation whose crystal ``crystal_dir`` lies along ``sample_dir``.

    Built independently of orix from the passive convention ``v_c = g v_s``:
    ``g = R_align R_spin``, ``R_spin`` about ``sample_dir`` (keeps it fixed),
    ``R_align`` turning ``sample_dir`` onto ``crystal_dir``.
    """
    c = np.asarray(crystal_dir, float) / np.linalg.norm(crystal_dir)
    s = np.asarray(sample_dir, float) / np.linalg.norm(sample_dir)
    axis = np.cross(s, c)
    if np.linalg.norm(axis) < 1e-12:  # parallel or antiparallel
        axis = np.cross(s, [1.0, 0.0, 0.0] if abs(s[0]) < 0.9 else [0.0, 1.0, 0.0])
    angle = np.arccos(np.clip(s @ c, -1.0, 1.0))
    g = axis_angle_to_matrix(axis, angle) @ axis_angle_to_matrix(s, spin)
    assert np.allclose(g @ s, c)
    return matrix_to_euler(g)


@pytest.mark.parametrize("sample_dir", [(0, 0, 1), (1, 0, 0), (0, 1, 1)])
def test_ipf_colors_tsl_key(sample_dir):
    # the TSL/EDAX key for m-3m: <001> red, <101> green, <111> blue, any symmetric equivalent
    cases = [((0, 0, 1), RED), ((0, 0, -1), RED), ((1, 0, 0), RED),
             ((1, 0, 1), GREEN), ((0, 1, -1), GREEN), ((1, 1, 0), GREEN),
             ((1, 1, 1), BLUE), ((-1, 1, -1), BLUE)]
    spins = np.linspace(0.1, 5.9, len(cases))
    euler = np.array([_orientation_with(c, sample_dir, spin) for (c, _), spin in zip(cases, spins)])
    rgb = plots.ipf_colors(euler, direction=sample_dir)
    expected = np.array([colour for _, colour in cases], float)
    np.testing.assert_allclose(rgb, expected, atol=0.1)


def test_ipf_colors_between_vertices_and_shapes():
    # [102] lies on the red-green edge: no blue
    rgb = plots.ipf_colors(_orientation_with((1, 0, 2), (0, 0, 1), 0.3))
    assert rgb[2] < 0.05 and rgb[0] > 0.3 and rgb[1] > 0.3
    euler = np.zeros((2, 3, 4, 3))
    euler[0, 0, 0] = np.nan
    rgb = plots.ipf_colors(euler)
    assert rgb.shape == (2, 3, 4, 3)
    np.testing.assert_array_equal(rgb[0, 0, 0], [0, 0, 0])  # unassigned -> black
    np.testing.assert_allclose(rgb[1, 2, 3], RED, atol=0.1)  # identity: crystal [001] along z


def test_ipf_colors_refuse_degrees_and_other_lattices():
    with pytest.raises(InputFileError) as err:
        plots.ipf_colors(np.array([[30.0, 45.0, 60.0]]))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError):
        plots.ipf_colors(np.zeros((1, 3)), lattice="hcp")
    with pytest.raises(ConfigError):
        plots.ipf_colors(np.zeros((1, 3)), direction=(0, 0, 0))


def _png(path):
    assert path.exists() and path.stat().st_size > 5000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path)[..., :3]


def _count(image, colour, tol=0.05):
    return int(np.sum(np.all(np.abs(image - np.asarray(colour)) < tol, axis=-1)))


def test_ipf_map_2d_and_3d_slices(tmp_path):
    red = _orientation_with((0, 0, 1), (0, 0, 1), 0.4)
    blue = _orientation_with((1, 1, 1), (0, 0, 1), 1.2)
    grid = np.empty((2, 12, 16, 3))
    grid[0], grid[1] = red, blue

    out = plots.ipf_map(grid[0], tmp_path / "map2d.png", title="2-D map")
    assert out == tmp_path / "map2d.png"
    image = _png(out)
    assert _count(image, RED) > 10 * max(_count(image, BLUE), 1)

    image = _png(plots.ipf_map(grid, tmp_path / "z1.png", z_index=1))
    assert _count(image, BLUE) > 10 * max(_count(image, RED), 1)
    image = _png(plots.ipf_map(grid, tmp_path / "z0.png", z_index=0, lattice="bcc"))
    assert _count(image, RED) > 10 * max(_count(image, BLUE), 1)

    with pytest.raises(ConfigError):
        plots.ipf_map(grid, tmp_path / "bad.png", z_index=2)
    with pytest.raises(ConfigError):
        plots.ipf_map(np.zeros((4, 3)), tmp_path / "bad.png")


def test_field_map(tmp_path):
    values = np.linspace(0.0, 300e6, 2 * 6 * 8).reshape(2, 6, 8)
    values[1, 0, 0] = np.nan
    _png(plots.field_map(values, tmp_path / "vm.png", "von Mises stress", "Pa"))
    _png(plots.field_map(values[0] * 1e-9, tmp_path / "eps.png", "Hencky strain 11", "1", cmap="RdBu_r",
                         z_index=0, vmin=-0.3, vmax=0.3))
    with pytest.raises(ConfigError):
        plots.field_map(values, tmp_path / "bad.png", "x", "1", z_index=-1)


def test_stress_strain_curve(tmp_path):
    strain = np.linspace(0.0, 0.05, 40)
    stress = 200e6 * (1 - np.exp(-strain / 0.004)) + 500e6 * strain
    _png(plots.stress_strain_curve(strain, stress, tmp_path / "one.png", "Hencky strain", "Cauchy stress"))
    _png(plots.stress_strain_curve([strain, strain[:20]], [stress, 1.1 * stress[:20]], tmp_path / "two.png",
                                   "Hencky strain ln V_11", "Cauchy stress sigma_11", labels=["solver", "surrogate"],
                                   markers={"Rp0.2": (0.0045, 130e6)}))
    with pytest.raises(ConfigError):
        plots.stress_strain_curve([strain], [stress[:10]], tmp_path / "bad.png", "e", "s")


def test_pole_geometry():
    # identity: {100} poles are the lab axes (both signs)
    poles = plots.sample_frame_poles(np.zeros((1, 3)), (1, 0, 0))[0]
    assert poles.shape == (6, 3)
    np.testing.assert_allclose(np.sort(np.abs(poles).max(axis=1)), np.ones(6))
    # crystal turned 45 deg about z (phi1 = 45 deg): <100> poles at 45 deg in the XY plane
    euler = np.array([[np.pi / 4, 0.0, 0.0]])
    poles = plots.sample_frame_poles(euler, (1, 0, 0))[0]
    in_plane = poles[np.abs(poles[:, 2]) < 1e-9]
    np.testing.assert_allclose(np.abs(in_plane[:, :2]), np.full((4, 2), np.sqrt(0.5)), atol=1e-12)
    # the transform is g^T: crystal directions go back to the lab frame
    g = euler_to_matrix(euler)[0]
    np.testing.assert_allclose(g @ poles.T, plots._equivalent_poles((1, 0, 0)).T, atol=1e-12)
    assert [len(plots._equivalent_poles(p)) for p in [(1, 1, 0), (1, 1, 1), (1, 2, 3)]] == [12, 8, 48]


def test_pole_figures(tmp_path):
    rng = np.random.default_rng(0)
    euler = np.column_stack([rng.uniform(0, 2 * np.pi, 200), np.arccos(rng.uniform(-1, 1, 200)),
                             rng.uniform(0, 2 * np.pi, 200)])
    _png(plots.pole_figures(euler, tmp_path / "pf.png", title="random texture"))
    _png(plots.pole_figures(euler.reshape(2, 10, 10, 3), tmp_path / "pf_sub.png", planes=((1, 1, 1),),
                            max_orientations=50))
    with pytest.raises(ConfigError):
        plots.pole_figures(np.full((3, 3), np.nan), tmp_path / "bad.png")
