"""Training losses: data terms and physics terms, each reported on its own.

Conventions: fields are ``(B, C, y, x)`` on a periodic voxel grid; stresses in
Voigt order 11, 22, 33, 23, 13, 12 (tensor components); lattice rotations as
rotation vectors (rad, lab frame); orientations as passive matrices flattened
row-major into 9 channels.

Terms (all dimensionless, O(1) for a trivial predictor):

* ``stress``, ``strain``, ``rotation``, ``slip``: mean squared error in the
  target normaliser's units.
* ``equilibrium``: the mean squared divergence of the predicted Cauchy stress,
  ``div sigma = d sigma_ix / dx + d sigma_iy / dy`` by central differences on the
  periodic grid (a 2-D map is uniform along z), in units of stress scale per voxel.
* ``macro``: the voxel mean of the predicted stress against the stored
  macroscopic (volume-averaged) stress of that step.
* ``misorientation``: ``2 (1 - cos theta)`` (about ``theta^2``) of the
  disorientation between predicted and true deformed orientations, over the
  24 cubic symmetry rotations, in units of the rotation scale squared.
* ``slip_system``: cross-entropy of the dominant-system head on plastic voxels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from solver.rotations import cubic_symmetry_operators

from . import features

TERMS = ("stress", "strain", "rotation", "slip", "equilibrium", "macro", "misorientation", "slip_system")
DEFAULT_WEIGHTS = {"stress": 1.0, "strain": 1.0, "rotation": 1.0, "slip": 1.0, "equilibrium": 0.05,
                   "macro": 0.2, "misorientation": 0.2, "slip_system": 0.1}

_CUBIC = torch.tensor(cubic_symmetry_operators(), dtype=torch.float64)


def divergence_2d(stress: torch.Tensor) -> torch.Tensor:
    """Divergence of a Voigt stress field on a periodic 2-D grid with unit spacing.

    Args:
        stress: ``(B, 6, y, x)`` Voigt 11, 22, 33, 23, 13, 12.

    Returns:
        ``(B, 3, y, x)``: ``(d s11/dx + d s12/dy, d s12/dx + d s22/dy, d s13/dx + d s23/dy)``.
    """
    def ddx(f):
        return 0.5 * (torch.roll(f, -1, dims=-1) - torch.roll(f, 1, dims=-1))

    def ddy(f):
        return 0.5 * (torch.roll(f, -1, dims=-2) - torch.roll(f, 1, dims=-2))

    s11, s22, _, s23, s13, s12 = stress.unbind(1)
    return torch.stack([ddx(s11) + ddy(s12), ddx(s12) + ddy(s22), ddx(s13) + ddy(s23)], dim=1)


def skew(omega: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` -> ``(..., 3, 3)`` with ``skew(w) v = w x v``."""
    wx, wy, wz = omega.unbind(-1)
    z = torch.zeros_like(wx)
    return torch.stack([torch.stack([z, -wz, wy], -1), torch.stack([wz, z, -wx], -1),
                        torch.stack([-wy, wx, z], -1)], -2)


def rotation_from_vector(omega: torch.Tensor) -> torch.Tensor:
    """Rotation matrices of rotation vectors, ``(..., 3)`` -> ``(..., 3, 3)`` (matrix exponential)."""
    return torch.linalg.matrix_exp(skew(omega))


def disorientation_cosine(g0: torch.Tensor, omega_pred: torch.Tensor, omega_true: torch.Tensor) -> torch.Tensor:
    """``cos`` of the disorientation between ``g0 R(omega_pred)^T`` and ``g0 R(omega_true)^T``.

    Args:
        g0: ``(B, 9, y, x)`` initial orientations (row-major); omega_*: ``(B, 3, y, x)``.

    Returns:
        ``(B, y, x)``, the largest ``cos theta`` over the 24 cubic symmetry rotations.
    """
    # float64: 1 - cos(theta) of a 0.01 degree error is 1.5e-8, below float32's resolution of 1
    g = g0.permute(0, 2, 3, 1).reshape(*g0.shape[:1], *g0.shape[2:], 3, 3).double()
    Rp = rotation_from_vector(omega_pred.permute(0, 2, 3, 1).double())
    Rt = rotation_from_vector(omega_true.permute(0, 2, 3, 1).double())
    g_pred = g @ Rp.transpose(-1, -2)
    g_true = g @ Rt.transpose(-1, -2)
    delta = g_true @ g_pred.transpose(-1, -2)  # crystal (pred) -> crystal (true)
    traces = torch.einsum("kij,...ji->...k", _CUBIC.to(delta.device), delta)
    return ((traces.max(-1).values - 1.0) / 2.0).clamp(-1.0, 1.0)


def loss_terms(model, batch: dict, out: dict) -> dict[str, torch.Tensor]:
    """Every term of :data:`TERMS` for one batch.

    Args:
        model: the :class:`surrogate.models.Surrogate` (unwrapped) for its normalisers.
        batch: a collated :class:`surrogate.data.CampaignDataset` batch.
        out: ``model(...)`` output.
    """
    values = out["values"].float()
    target = model.target_norm(batch["target"])
    terms = {}
    for name, sl in features.TARGETS.items():
        terms[name] = F.mse_loss(values[:, sl], target[:, sl])

    stress_scale = model.target_norm.std[features.TARGETS["stress"]][0]
    stress = model.physical(values)[:, features.TARGETS["stress"]] / stress_scale
    terms["equilibrium"] = divergence_2d(stress).square().mean()
    macro = batch["macro_stress"].float() / stress_scale
    terms["macro"] = F.mse_loss(stress.mean(dim=(-2, -1)), macro)

    rot = features.TARGETS["rotation"]
    rotation_scale = model.target_norm.std[rot][0]
    cos = disorientation_cosine(batch["g0"], model.physical(values)[:, rot], batch["target"][:, rot])
    terms["misorientation"] = ((2.0 * (1.0 - cos)).mean() / rotation_scale.double() ** 2).float()

    logits = out["slip_logits"].float()
    dominant = batch["dominant"]
    if (dominant >= 0).any():
        terms["slip_system"] = F.cross_entropy(logits, dominant, ignore_index=-1)
    else:
        terms["slip_system"] = logits.sum() * 0.0
    return terms


def total_loss(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Weighted sum of the loss terms."""
    return sum(weights.get(k, 0.0) * v for k, v in terms.items())
