"""Predict the response of one orientation map under one load with a trained ensemble.

The what-if path: Euler map + grain ids + a load -> per-voxel fields at every
output step, the deformed orientation map, the macroscopic curve (voxel means),
and the trust score, in the same layout as a solver sample of the store
(stress and strain Voigt 11, 22, 33, 23, 13, 12, Cauchy stress in Pa, Hencky
strain, Bunge angles in rad; step 0 is the unloaded state).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from solver.errors import ConfigError
from solver.loading import MODES
from solver.rotations import euler_to_matrix, matrix_to_euler, validate_euler

from . import features
from .data import material_stiffness
from .uncertainty import Ensemble


def predict_map(ensemble: Ensemble, euler: np.ndarray, grain_id: np.ndarray, mode: str, direction, strain: float,
                *, rate: float = 1.0e-3, steps: int = 10, coarse_values: np.ndarray | None = None,
                coarse_euler: np.ndarray | None = None) -> dict[str, Any]:
    """Surrogate fields of a 2-D map under a load, at ``steps`` equal strain increments.

    With a low-resolution correction model (:mod:`surrogate.correction`),
    ``coarse_values`` ``(steps, 16, ny / k, nx / k)`` are the targets of the coarse
    solve of the same load at the same steps (:func:`surrogate.data.sample_targets`
    without step 0) on the coarse map ``coarse_euler`` ``(ny / k, nx / k, 3)``, and the
    fields are the corrected fine fields.

    Args:
        ensemble: a loaded model (:func:`surrogate.uncertainty.load_model`).
        euler: ``(ny, nx, 3)`` Bunge angles (rad); grain_id: ``(ny, nx)``.
        mode: a load mode of :data:`solver.loading.MODES` (not ``deformation_gradient``).
        direction: load axis (lab); strain: final strain magnitude; rate: strain rate (1/s).
        steps: output steps after the unloaded one.

    Returns:
        ``stress``, ``strain`` ``(steps+1, ny, nx, 6)``; ``euler`` ``(steps+1, ny, nx, 3)``;
        ``slip`` (total accumulated slip) and ``von_mises_stress`` ``(steps+1, ny, nx)``;
        ``trust`` ``(steps+1, ny, nx)`` (1 at step 0); ``macro_stress`` ``(steps+1, 6)``
        (voxel means); ``applied_strain`` ``(steps+1,)``; ``dominant_slip_system``
        ``(ny, nx)`` at the last step (-1 where the predicted slip says elastic); ``sample_trust`` (domain factor included),
        ``domain_reason``; ``seconds``.

    Raises:
        ConfigError: unknown or unsupported mode, bad strain, wrong shapes.
    """
    if mode not in MODES or mode == "deformation_gradient":
        raise ConfigError(f"load mode '{mode}' is not one the surrogate predicts "
                          f"({', '.join(m for m in MODES if m != 'deformation_gradient')})")
    if not (np.isfinite(strain) and strain > 0):
        raise ConfigError(f"load strain must be a positive number, got {strain!r}")
    euler = validate_euler(np.asarray(euler, dtype=float), "orientation map")
    grain_id = np.asarray(grain_id)
    if euler.ndim != 3 or grain_id.shape != euler.shape[:2]:
        raise ConfigError(f"expected a 2-D map: euler (ny, nx, 3) and grain ids (ny, nx), got {euler.shape} "
                          f"and {grain_id.shape}")
    t0 = time.perf_counter()
    info = ensemble.meta["store"]
    inputs = features.sample_inputs(euler, grain_id, mode, direction, info["lattice"],
                                    material_stiffness(info["material"]))
    applied = np.linspace(0.0, float(strain), steps + 1)
    condition = np.stack([features.load_condition(mode, direction, e, rate) for e in applied[1:]]).astype(np.float32)
    n = steps
    correction = ensemble.meta.get("coarse")
    if correction and (coarse_values is None or coarse_euler is None):
        raise ConfigError("this model corrects a coarse solve: give the coarse solve's fields (slipstream couple correct)")
    if correction:
        k = int(correction["factor"])
        if coarse_values.shape != (steps, features.N_TARGETS, euler.shape[0] // k, euler.shape[1] // k) \
                or euler.shape[0] % k or euler.shape[1] % k:
            raise ConfigError(f"coarse fields {coarse_values.shape} do not fit a {euler.shape[1]} x {euler.shape[0]} map "
                              f"at factor {k} and {steps} steps")
        from .correction import fine_inputs

        f = torch.from_numpy(np.ascontiguousarray(fine_inputs(inputs["fields"], coarse_values, k, coarse_euler)))
    else:
        f = torch.from_numpy(inputs["fields"])[None].expand(n, -1, -1, -1)
    s = torch.from_numpy(inputs["schmid"])[None].expand(n, -1, -1, -1)
    pred = ensemble.predict(f, torch.from_numpy(condition), s)
    pred = {k: v.cpu() for k, v in pred.items()}
    trust = ensemble.trust(pred).numpy()
    values = pred["values"].numpy().astype(np.float64)  # (steps, 16, ny, nx)
    ny, nx = grain_id.shape
    factor, reason = ensemble.domain_factor(mode, float(strain), features.microstructure_summary(inputs["fields"]))
    fields = state_fields(values, euler)
    fields["von_mises_stress"][1:] = pred["von_mises"].numpy()  # the members' mean von Mises, not that of the mean
    return {
        **fields,
        "trust": np.concatenate([np.ones((1, ny, nx)), trust]),
        "applied_strain": applied,
        "dominant_slip_system": np.where(values[-1, 15] >= features.PLASTIC_SLIP,
                                         pred["slip_probability"][-1].argmax(0).numpy(), -1),
        "sample_trust": float(trust.mean()) * factor,
        "domain_factor": factor,
        "domain_reason": reason,
        "seconds": time.perf_counter() - t0,
    }


def state_fields(values: np.ndarray, euler: np.ndarray) -> dict[str, np.ndarray]:
    """Fields of a map from predicted targets at steps ``1..n`` (step 0 unloaded).

    Args:
        values: ``(n, 16, ny, nx)`` targets in SI units (:func:`surrogate.features.step_targets` layout).
        euler: ``(ny, nx, 3)`` initial Bunge angles.

    Returns:
        ``stress``, ``strain`` ``(n+1, ny, nx, 6)``; ``euler`` ``(n+1, ny, nx, 3)``
        (the initial orientation rotated by the predicted lattice rotation);
        ``slip`` and ``von_mises_stress`` ``(n+1, ny, nx)``; ``macro_stress`` ``(n+1, 6)`` (voxel means).
    """
    from .uncertainty import von_mises

    values = np.asarray(values, dtype=np.float64)
    ny, nx = values.shape[-2:]
    zeros = np.zeros((1, ny, nx))
    g = features.deformed_orientation(euler_to_matrix(euler)[None],
                                      np.moveaxis(values[:, features.TARGETS["rotation"]], 1, -1))
    stress = np.concatenate([np.zeros((1, ny, nx, 6)), np.moveaxis(values[:, :6], 1, -1)])
    return {
        "stress": stress,
        "strain": np.concatenate([np.zeros((1, ny, nx, 6)), np.moveaxis(values[:, 6:12], 1, -1)]),
        "euler": np.concatenate([euler[None], matrix_to_euler(g)]),
        "slip": np.concatenate([zeros, np.maximum(values[:, 15], 0.0)]),
        "von_mises_stress": np.concatenate([zeros, von_mises(torch.from_numpy(values[:, :6])).numpy()]),
        "macro_stress": stress.mean(axis=(1, 2)),
    }
