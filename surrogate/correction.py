"""Low-resolution correction: coarse-solve fields + the fine orientation map -> fine fields.

A campaign solved on a grid ``k`` times coarser (``slipstream campaign CFG
--coarsen K``, :func:`solver.microstructure.coarsen`) is the *coarse partner* of
the fine store made by the same config: sample ``i`` is the same map (block
majority grain) under the same load. A correction model is a
:class:`surrogate.models.Surrogate` whose inputs are the fine map's channels
(:func:`surrogate.features.sample_inputs`), the coarse map's, and the coarse
solve's 16 target channels brought to the fine grid by
:func:`upsample_grain_aware` (each fine voxel from the nearby coarse voxels of
its own crystal), and whose output
adds a learned correction to those upsampled coarse fields (``n_coarse`` in
:class:`~surrogate.models.Surrogate`): the network learns the difference
between the coarse and the fine solve, which is small where the grains are
large and concentrated at grain boundaries and triple junctions.

Conventions: fields ``(..., C, ny, nx)`` on a periodic, cell-centred voxel grid;
the coarse voxel ``(J, I)`` covers fine voxels ``J k .. J k + k - 1`` (and the
same in x), its centre lies at fine index ``(J + 1/2) k - 1/2``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from solver import store as _store
from solver.errors import StoreError

from . import features
from .data import CampaignDataset, SampleData, StoreInfo, partner_value, sample_targets, store_info


def upsample(x, factor: int, method: str = "bilinear"):
    """Bring periodic cell-centred fields ``(..., C, ny, nx)`` to a grid ``factor`` times finer.

    Args:
        x: NumPy array or tensor.
        factor: positive integer.
        method: ``"nearest"`` (each coarse voxel's value over its block: what the
            coarse solve itself says) or ``"bilinear"`` (periodic, cell-centred).

    Returns:
        The same type as ``x``, shape ``(..., C, factor ny, factor nx)``.
    """
    if factor == 1:
        return x
    is_numpy = isinstance(x, np.ndarray)
    t = torch.as_tensor(x)
    lead = t.shape[:-2]
    t = t.reshape(-1, 1, *t.shape[-2:]).float()
    if method == "nearest":
        up = t.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    elif method == "bilinear":
        padded = F.pad(t, (1, 1, 1, 1), mode="circular")
        up = F.interpolate(padded, scale_factor=factor, mode="bilinear", align_corners=False)
        up = up[..., factor:-factor, factor:-factor]
    else:
        raise ValueError(f"unknown upsampling method {method!r}")
    up = up.reshape(*lead, *up.shape[-2:])
    return up.numpy() if is_numpy else up


def upsample_grain_aware(x: np.ndarray, factor: int, fine_orientation: np.ndarray, coarse_orientation: np.ndarray,
                         spatial: float = 0.6, contrast: float = 0.02) -> np.ndarray:
    """Periodic upsampling that takes each fine voxel's values from the nearby coarse voxels of its own crystal.

    A joint bilateral upsampling: the fine value is the mean of the 3 x 3
    coarse voxels around it, weighted by a Gaussian of the distance between the
    voxel centres (``spatial`` coarse voxels) times ``exp(-|A_f - A_c|^2 /
    contrast)``, ``A`` the cubic orientation tensors of the fine voxel and of
    the coarse voxel. Inside a grain it is a smooth interpolation; where the
    coarse grid gave a block to a neighbouring grain, the fine voxels of the
    other grain take the values of the nearest coarse voxels of their own grain
    (if none is within reach, the spatial weights alone decide).

    Args:
        x: ``(..., C, cy, cx)`` coarse fields.
        factor: the grid ratio.
        fine_orientation: ``(15, ny, nx)``; coarse_orientation: ``(15, cy, cx)``.

    Returns:
        ``(..., C, ny, nx)`` float32.
    """
    cy, cx = x.shape[-2:]
    ny, nx = cy * factor, cx * factor
    j, i = np.arange(ny), np.arange(nx)
    J, I = j // factor, i // factor
    yc, xc = (j + 0.5) / factor - 0.5, (i + 0.5) / factor - 0.5  # fine centres in coarse index units
    offsets = [(dj, di) for dj in (-1, 0, 1) for di in (-1, 0, 1)]
    weights, values = [], []
    A_f = np.asarray(fine_orientation, dtype=np.float64)
    A_c = np.asarray(coarse_orientation, dtype=np.float64)
    for dj, di in offsets:
        rows, cols = (J + dj) % cy, (I + di) % cx
        dy = yc - (J + dj)
        dx = xc - (I + di)
        w_s = np.exp(-(dy[:, None] ** 2 + dx[None, :] ** 2) / (2 * spatial ** 2))
        a = A_c[:, rows][:, :, cols]
        w_o = np.exp(-np.square(A_f - a).sum(0) / contrast)
        weights.append((w_s, w_s * w_o))
        values.append(x[..., rows, :][..., cols])
    plain = sum(w for w, _ in weights)
    joint = sum(w for _, w in weights)
    # where no neighbour shares the crystal, fall back on the spatial weights alone
    use_joint = joint > 1e-3 * plain
    out = 0.0
    for (w_s, w_j), v in zip(weights, values):
        w = np.where(use_joint, w_j / np.maximum(joint, 1e-300), w_s / plain)
        out = out + w * v
    return np.asarray(out, dtype=np.float32)


def restrict(x, factor: int):
    """Block means of fine fields ``(..., ny, nx)`` over ``factor x factor`` blocks (the inverse of nearest)."""
    if factor == 1:
        return x
    *lead, ny, nx = x.shape
    return x.reshape(*lead, ny // factor, factor, nx // factor, factor).mean(axis=(-3, -1))


def coarsening_factor(fine: StoreInfo, coarse: StoreInfo) -> int:
    """The factor of a coarse partner store, checked against the fine store.

    Raises:
        StoreError: not the same campaign (config apart from ``coarsen``), another
            step count, or a grid that is not a whole fraction.
    """
    fine_factor = _store.open_store(fine.path, "r").attrs["config"].get("microstructure", {}).get("coarsen", 1)
    # a coarse solve with an in-loop state correction is a partner too (its fields are what MODEL corrects)
    value = partner_value(fine, coarse, "microstructure", "coarsen",
                          "slipstream campaign CFG --coarsen K", ignore=(("solver", "correction_in_loop"),)) or 1
    factor = int(value) // int(fine_factor)
    if factor < 2:
        raise StoreError(f"{coarse.path}: its grid {list(coarse.grid_shape)} is not coarser than {fine.path}'s "
                         f"{list(fine.grid_shape)}")
    if fine.grid_shape[1] != factor * coarse.grid_shape[1] or fine.grid_shape[2] != factor * coarse.grid_shape[2]:
        raise StoreError(f"{coarse.path}: grid {list(coarse.grid_shape)} is not {fine.path}'s "
                         f"{list(fine.grid_shape)} at factor {factor}")
    return factor


class CorrectionDataset(CampaignDataset):
    """(sample, step) items of a fine store with its coarse partner's fields appended to the inputs.

    Items are those of :class:`~surrogate.data.CampaignDataset`, with ``fields``
    ``(Cf + N_COARSE_MAP + 16, ny, nx)`` (:func:`fine_inputs`): the fine map's
    channels, the coarse map's, then the coarse solve's targets upsampled to
    the fine grid.

    Args:
        path: the fine store; coarse: its coarse partner (:func:`coarsening_factor`).
        samples: sample indices done in both stores.
        upsampling: ``"grain"`` (what correction models see), ``"bilinear"`` or ``"nearest"``.
    """

    def __init__(self, path: str | Path, coarse: str | Path, samples, steps=None, cache_samples: int = 512,
                 upsampling: str = "grain"):
        super().__init__(path, samples, steps, cache_samples)
        self.upsampling = upsampling
        self.coarse_path = str(coarse)
        self.coarse_info = store_info(coarse)
        self.factor = coarsening_factor(self.info, self.coarse_info)
        self._coarse_group = None

    def __getstate__(self):
        state = super().__getstate__()
        state["_coarse_group"] = None
        return state

    def sample_data(self, index: int) -> SampleData:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        data = super().sample_data(index)
        if self._coarse_group is None:
            self._coarse_group = _store.open_store(self.coarse_path, "r")
        if int(self._coarse_group["status"][index]) != _store.DONE:
            raise StoreError(f"{self.coarse_path}: sample {index} is not done (rerun its campaign)")
        coarse = sample_targets(self._coarse_group, index)[0]
        coarse_euler = np.asarray(self._coarse_group["euler0"][index][0], dtype=float)
        data.fields = fine_inputs(data.fields, coarse, self.factor, coarse_euler, self.upsampling)
        return data

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        out = super().__getitem__(item)
        out["fields"] = out["fields"][out["step"]]
        return out


def campaign_dataset(store, samples, coarse=None, upsampling: str = "grain", **kwargs) -> CampaignDataset:
    """The dataset a model reads: :class:`CorrectionDataset` given a coarse partner, else
    :class:`~surrogate.data.CampaignDataset` (``kwargs``: ``steps``, ``cache_samples``; for a surrogate also ``augment``, ``element``)."""
    if coarse is None:
        return CampaignDataset(store, samples, **kwargs)
    return CorrectionDataset(store, coarse, samples, upsampling=upsampling, **kwargs)


def done_in_both(samples: list[int], coarse: str | Path) -> list[int]:
    """The samples of ``samples`` that the coarse partner has done too."""
    status = _store.sample_status(_store.open_store(coarse, "r"))
    return [i for i in samples if i < status.size and status[i] == _store.DONE]


def correction_meta(dataset: CorrectionDataset) -> dict[str, Any]:
    """What ``model.json`` records about the coarse partner of a correction model."""
    return {"factor": dataset.factor, "store": dataset.coarse_info.signature(), "upsampling": dataset.upsampling}


#: Channels that describe the coarse map on the fine grid: its orientation tensor, and the mismatch.
N_COARSE_MAP = features.N_ORIENTATION + 1


def coarse_map_channels(fine_fields: np.ndarray, coarse_euler: np.ndarray, factor: int) -> np.ndarray:
    """``(N_COARSE_MAP, ny, nx)``: the crystal the coarse solve put at each fine voxel (cubic orientation
    tensor of the coarse voxel over it), and how much it differs from the fine voxel's own
    (squared distance of the two tensors: 0 inside grains the coarse grid resolves, large where a
    block's majority grain took over a fine voxel of another grain)."""
    from solver.rotations import euler_to_matrix

    coarse = np.moveaxis(features.cubic_orientation_tensor(euler_to_matrix(coarse_euler)), -1, 0)
    coarse = upsample(coarse.astype(np.float32), factor, "nearest")
    mismatch = np.square(fine_fields[: features.N_ORIENTATION] - coarse).sum(0, keepdims=True)
    return np.concatenate([coarse, mismatch]).astype(np.float32)


UPSAMPLING = ("nearest", "bilinear", "grain")


def fine_inputs(fine_fields: np.ndarray, coarse_values: np.ndarray, factor: int, coarse_euler: np.ndarray,
                upsampling: str = "grain") -> np.ndarray:
    """Model inputs ``(n_steps, Cf + N_COARSE_MAP + 16, ny, nx)``: the fine map's channels, the coarse
    map's (:func:`coarse_map_channels`), and the coarse solve's targets ``(n_steps, 16, cy, cx)``
    upsampled (last: the correction adds to them) by ``upsampling``: ``nearest``, ``bilinear`` or
    ``grain`` (:func:`upsample_grain_aware`)."""
    coarse_values = np.asarray(coarse_values, dtype=np.float32)
    if upsampling == "grain":
        from solver.rotations import euler_to_matrix

        A_c = np.moveaxis(features.cubic_orientation_tensor(euler_to_matrix(coarse_euler)), -1, 0)
        up = upsample_grain_aware(coarse_values, factor, fine_fields[: features.N_ORIENTATION], A_c)
    elif upsampling in UPSAMPLING:
        up = upsample(coarse_values, factor, upsampling)
    else:
        raise ValueError(f"unknown upsampling {upsampling!r}; known: {', '.join(UPSAMPLING)}")
    static = np.concatenate([fine_fields, coarse_map_channels(fine_fields, coarse_euler, factor)])
    return np.concatenate([np.broadcast_to(static, (up.shape[0],) + static.shape), up], axis=1)


def is_correction(meta: Mapping[str, Any]) -> bool:
    """Whether a ``model.json`` describes a low-resolution correction model."""
    return bool(meta.get("coarse"))


def coarse_baseline(batch: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The upsampled coarse solve itself as a prediction of a :class:`CorrectionDataset` batch
    (for :func:`surrogate.evaluate.evaluate_split`): its fields, the Schmid guess of the active
    system, and a trust of 1."""
    from .uncertainty import von_mises

    values = batch["fields"][:, -features.N_TARGETS:].float()
    slip = torch.nn.functional.one_hot(batch["schmid"].abs().argmax(1), batch["schmid"].shape[1])
    pred = {"values": values, "von_mises": von_mises(values[:, features.TARGETS["stress"]]),
            "slip_probability": slip.permute(0, 3, 1, 2).float()}
    return pred, torch.ones_like(pred["von_mises"])
