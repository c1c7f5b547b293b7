"""The square's symmetries (surrogate.symmetry): an augmented sample is the solve of the transformed map.

The reference is the solver itself on the rotated (mirrored) map under the
rotated load: the boundary-value problem on a periodic grid of cubes is
invariant under the square's symmetries, so the transformed training item of
one solve must equal the item read from the other solve, to solver tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from solver.rotations import euler_to_matrix, matrix_to_euler, random_matrices
from solver.tensors import from_voigt
from surrogate import features, symmetry
from surrogate.data import CampaignDataset

N = 8
SIZE = 8.0e-5


def _crystal_map(rng):
    """Three grains in a layout with no symmetry of its own, random orientations: ``(ny, nx, 3)``, ids."""
    grain = np.zeros((N, N), dtype=np.int32)
    grain[:, 5:] = 1
    grain[:3, :6] = 2
    grain[6, 1] = 1
    euler = matrix_to_euler(random_matrices(3, rng))[grain]
    return euler, grain


def _solve(comm, tempdir, name, euler, grain, direction):
    from solver.simulate import run_simulation

    if comm.rank == 0:
        np.savez(tempdir / f"{name}.npz", euler=euler, grain_id=grain[None], size=np.array([SIZE, SIZE, SIZE / N]))
        cfg = {"microstructure": {"kind": "grid", "file": f"{name}.npz"}, "material": {"preset": "Al-DAMASK"},
               "boundary": "periodic",
               "loading": {"mode": "tension", "direction": [float(v) for v in direction], "strain": 0.004,
                           "increments": 3},
               "output": {"paraview": False, "plots": False}, "solver": {"stress_tolerance": 1.0e-3}}
        (tempdir / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    comm.Barrier()
    run_simulation(comm, tempdir / f"{name}.yaml", tempdir / name, quiet=True)
    return tempdir / name / "results.zarr"


def _items(store):
    ds = CampaignDataset(store, [0])
    return [{k: v.numpy() for k, v in ds[i].items() if isinstance(v, torch.Tensor)} for i in range(len(ds))]


def _transformed_map(euler, grain, element):
    Q = symmetry.proper_rotation(element)
    moved = np.moveaxis(symmetry.move_voxels(np.moveaxis(euler, -1, 0), element), 0, -1)
    return matrix_to_euler(euler_to_matrix(moved) @ Q.T), symmetry.move_voxels(grain, element)


@pytest.mark.mpi
@pytest.mark.parametrize("element", [(1, False), (3, True)], ids=["quarter_turn", "diagonal_mirror"])
def test_a_transformed_item_is_the_solve_of_the_transformed_map(tempdir, element):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    euler, grain = _crystal_map(np.random.default_rng(7))
    direction = np.array([1.0, 0.0, 0.0])
    original = _items(_solve(comm, tempdir, "original", euler, grain, direction))
    Q = symmetry.proper_rotation(element)
    euler_t, grain_t = _transformed_map(euler, grain, element)
    solved = _items(_solve(comm, tempdir, "transformed", euler_t, grain_t, Q @ direction))
    assert len(original) == len(solved) == 3
    for item, reference in zip(original, solved):
        got = symmetry.transform_item(item, element)
        # inputs are functions of the map and the load alone: equal to rounding
        for key in ("fields", "condition", "schmid", "g0"):
            np.testing.assert_allclose(got[key], reference[key], atol=1e-5, err_msg=key)
        np.testing.assert_array_equal(got["boundary"], reference["boundary"])
        # outputs: to the solver's tolerance (1e-3 Pa on nodal forces), relative to each field's size;
        # the lattice rotation comes from the store's float32 Euler angles (resolution ~4e-7 rad)
        for name in ("stress", "strain", "rotation", "slip"):
            sl = features.TARGETS[name]
            scale = np.abs(reference["target"][sl]).max()
            assert scale > 0, name
            atol = 1e-6 if name == "rotation" else 1e-5 * scale
            np.testing.assert_allclose(got["target"][sl], reference["target"][sl], atol=atol, err_msg=name)
        np.testing.assert_allclose(got["macro_stress"], reference["macro_stress"],
                                   atol=1e-5 * np.abs(reference["macro_stress"]).max())
        np.testing.assert_array_equal(got["dominant"], reference["dominant"])
    # the check has teeth: the untransformed item is far from the transformed solve
    far = np.abs(original[-1]["target"][:6] - solved[-1]["target"][:6]).max()
    assert far > 0.1 * np.abs(solved[-1]["target"][:6]).max()


def test_the_elements_form_the_square_group_acting_on_positions():
    rng = np.random.default_rng(0)
    x = rng.random((2, 6, 6))
    for element in symmetry.ELEMENTS:
        A = symmetry.in_plane(element)
        assert abs(round(np.linalg.det(A))) == 1 and np.allclose(A @ A.T, np.eye(2))
        # a voxel's value lands at the image of its centre
        moved = symmetry.move_voxels(x, element)
        for j, i in [(0, 0), (1, 4), (5, 2)]:
            u = A @ np.array([i + 0.5, j + 0.5])
            assert moved[0, int(np.floor(u[1] % 6)), int(np.floor(u[0] % 6))] == x[0, j, i]
        Q = symmetry.proper_rotation(element)
        assert np.isclose(np.linalg.det(Q), 1.0) and np.allclose(Q @ Q.T, np.eye(3))
    # a quarter turn four times, or a mirror twice, is the identity
    y = x
    for _ in range(4):
        y = symmetry.move_voxels(y, (1, False))
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(symmetry.move_voxels(symmetry.move_voxels(x, (0, True)), (0, True)), x)
    # a non-square grid keeps the four elements that map it onto itself
    assert len(symmetry.elements_for((4, 8))) == 4 and len(symmetry.elements_for((8, 8))) == 8
    with pytest.raises(ValueError, match="does not map"):
        symmetry.move_voxels(rng.random((4, 8)), (1, False))


def test_tensors_rotate_with_the_crystals():
    rng = np.random.default_rng(1)
    g = random_matrices(6, rng)
    sigma = rng.normal(size=(6, 6))
    for element in symmetry.ELEMENTS:
        Q = symmetry.proper_rotation(element)
        # the orientation tensor of the rotated crystals
        np.testing.assert_allclose(
            symmetry.rotate_orientation_tensor(features.cubic_orientation_tensor(g), Q, axis=-1),
            features.cubic_orientation_tensor(g @ Q.T), atol=1e-12)
        # the resolved shear stresses (crystal frame) do not change when crystals and stress turn together
        S = from_voigt(sigma)
        S_t = from_voigt(symmetry.rotate_voigt(sigma, Q, axis=-1))
        np.testing.assert_allclose(g @ S @ np.swapaxes(g, -1, -2), (g @ Q.T) @ S_t @ (Q @ np.swapaxes(g, -1, -2)),
                                   atol=1e-12)


@pytest.mark.skip_in_parallel
def test_augmented_items_are_symmetric_copies_drawn_by_the_seed(tmp_path):
    from synthetic_store import make_store

    store = make_store(tmp_path / "s.zarr", samples=2, n=8, steps=3)
    plain = CampaignDataset(store, [0, 1])
    augmented = CampaignDataset(store, [0, 1], augment=True)

    def draw():
        torch.manual_seed(0)
        return [augmented[i % len(augmented)] for i in range(16)]

    first, again = draw(), draw()
    drawn = set()
    for i, (a, b) in enumerate(zip(first, again)):
        for key, value in a.items():  # the seed decides
            assert torch.equal(value, b[key]) if isinstance(value, torch.Tensor) else value == b[key]
        base = {k: v.numpy() for k, v in plain[i % len(plain)].items() if isinstance(v, torch.Tensor)}
        matches = [e for e in symmetry.ELEMENTS
                   if all(np.allclose(symmetry.transform_item(base, e)[k], a[k].numpy(), atol=1e-6) for k in base)]
        assert matches, f"item {i} is no symmetric copy of its sample"
        drawn.add(matches[0])
    assert len(drawn) >= 4  # 16 draws over 8 elements
    # one fixed copy of every sample (evaluation on rotated maps)
    fixed = CampaignDataset(store, [0, 1], element=(1, True))
    for i in range(len(fixed)):
        base = {k: v.numpy() for k, v in plain[i].items() if isinstance(v, torch.Tensor)}
        want = symmetry.transform_item(base, (1, True))
        for k, v in fixed[i].items():
            if isinstance(v, torch.Tensor):
                np.testing.assert_array_equal(v.numpy(), want[k])


@pytest.mark.skip_in_parallel
def test_augment_is_checked_and_refused_for_a_correction(tmp_path):
    from solver.errors import ConfigError
    from surrogate.config import train_config
    from surrogate.train import train
    from synthetic_store import make_store

    assert train_config({})["augment"] is False
    with pytest.raises(ConfigError, match="augment must be true or false"):
        train_config({"augment": "yes"})
    store = make_store(tmp_path / "s.zarr", samples=4, n=8, steps=3)
    with pytest.raises(ConfigError, match="augment is for the surrogate's own training"):
        train(store, tmp_path / "m", {"augment": True}, coarse=tmp_path / "coarse.zarr", quiet=True)
    assert not (tmp_path / "m").exists()
    # the surrogate's own training takes it, and records it
    small = {"ensemble": 2, "epochs": 1, "batch_size": 4, "model_kwargs": {"width": 8, "modes": 3, "layers": 2},
             "split": {"validation": 0.25, "test": 0.0, "held_out": []}, "augment": True}
    meta = train(store, tmp_path / "m", small, quiet=True)
    assert meta["config"]["augment"] is True and np.isfinite(meta["metrics"]["members"][0]["score"])
    # and predicts with the symmetric copies it learned, calibrated so
    from surrogate.uncertainty import load_model, recalibrate

    assert meta["calibration"]["symmetric_copies"] is True and load_model(tmp_path / "m").symmetric
    assert recalibrate(tmp_path / "m", store, symmetric=False)["symmetric_copies"] is False
    assert not load_model(tmp_path / "m").symmetric


@pytest.mark.skip_in_parallel
def test_symmetric_prediction_is_exactly_equivariant():
    from solver.materials import material_from_config
    from surrogate.models import Surrogate
    from surrogate.uncertainty import Ensemble
    from synthetic_store import voronoi_map

    rng = np.random.default_rng(3)
    grain = voronoi_map(N, 4, rng)
    euler = matrix_to_euler(random_matrices(4, rng))[grain]
    C = material_from_config({"preset": "Al-DAMASK"}).stiffness_tensor()
    inputs = features.sample_inputs(euler, grain, "shear", [1, 1, 0], "fcc", C)
    fields = torch.from_numpy(inputs["fields"])[None]
    schmid = torch.from_numpy(inputs["schmid"])[None]
    condition = torch.from_numpy(features.load_condition("shear", [1, 1, 0], 0.004, 1e-3).astype(np.float32))[None]
    torch.manual_seed(0)
    members = [Surrogate("fno", n_fields=fields.shape[1], backbone_kwargs={"width": 8, "modes": 3, "layers": 2})
               for _ in range(2)]
    for m in members:  # an untrained head answers 0 everywhere: give it something to say
        torch.nn.init.normal_(m.head[-1].weight, std=0.3)
    plain, symmetric = Ensemble(members, {}), Ensemble(members, {"calibration": {"symmetric_copies": True}})
    assert symmetric.symmetric and not plain.symmetric
    reference = symmetric.predict(fields, condition, schmid)
    for element in symmetry.ELEMENTS[1:]:
        f, c, s = symmetry.transform_inputs(fields.numpy(), condition.numpy(), schmid.numpy(), element)
        turned = symmetric.predict(torch.from_numpy(f), torch.from_numpy(c), torch.from_numpy(s))
        want = symmetry.transform_values(reference["values"].numpy(), element)
        scale = np.abs(want).max(axis=(0, 2, 3), keepdims=True)
        np.testing.assert_allclose(turned["values"].numpy() / scale, want / scale, atol=1e-5)
        np.testing.assert_allclose(turned["von_mises"].numpy(),
                                   symmetry.move_voxels(reference["von_mises"].numpy(), element),
                                   rtol=1e-4, atol=1e-6 * float(reference["von_mises"].max()))
    # a non-square map: the four elements that keep its shape
    grain = voronoi_map(12, 4, rng)[:8]
    euler = matrix_to_euler(random_matrices(4, rng))[grain]
    rect = features.sample_inputs(euler, grain, "tension", [1, 0, 0], "fcc", C)
    rect = [torch.from_numpy(rect["fields"])[None], condition, torch.from_numpy(rect["schmid"])[None]]
    reference = symmetric.predict(*rect)
    for element in symmetry.elements_for((8, 12))[1:]:
        f, c, s = symmetry.transform_inputs(*(t.numpy() for t in rect), element)
        turned = symmetric.predict(torch.from_numpy(f), torch.from_numpy(c), torch.from_numpy(s))
        want = symmetry.transform_values(reference["values"].numpy(), element)
        scale = np.abs(want).max(axis=(0, 2, 3), keepdims=True)
        np.testing.assert_allclose(turned["values"].numpy() / scale, want / scale, atol=1e-5)
    # the members alone are not equivariant: the check has teeth
    f, c, s = symmetry.transform_inputs(fields.numpy(), condition.numpy(), schmid.numpy(), (1, False))
    alone = plain.predict(torch.from_numpy(f), torch.from_numpy(c), torch.from_numpy(s))["values"].numpy()
    want = symmetry.transform_values(plain.predict(fields, condition, schmid)["values"].numpy(), (1, False))
    assert np.abs(alone - want).max() > 1e-3 * np.abs(want).max()
