"""The ensemble, its calibrated spread, and the trust score.

Members are independently seeded models trained on the same split (a deep
ensemble, Lakshminarayanan et al. 2017). Their spread is an *uncalibrated*
uncertainty; on the validation split we fit one factor per output group so that
``err / (c * spread)`` has unit variance (the Gaussian maximum-likelihood
scale), and report the coverage of the nominal 50/80/90/95 % intervals.

Trust score. Per voxel, the probability under the calibrated Gaussian that the
von Mises stress is within ``tolerance`` (relative, default 5 %) of the truth::

    trust = erf(tau / (sqrt(2) c_t sigma_vm)),   tau = tolerance * max(vm, vm_mean / 4)

The errors are heavy-tailed, so ``c_t`` is fitted on its own: the factor whose
trust best predicts, on validation, whether each voxel's error is within
tolerance (least Brier score, as temperature scaling does for classifiers).

(``vm_mean / 4`` keeps nearly unloaded voxels from asking for a vanishing
absolute error). A sample's trust is the mean over its voxels and steps,
multiplied by a *domain factor* that falls from 1 to 0 as the input leaves what
the model was trained on: a mode never seen; an applied strain beyond the
largest trained one (0 at 25 % beyond); a map whose texture coefficients and
grain-boundary fraction lie farther from the training maps than the farthest
1 % of them (0 at twice that Mahalanobis distance). The reliability of the trust
score (predicted probability against the observed frequency of errors within
tolerance) is measured on validation and reported.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from solver.errors import ModelError
from solver.loading import MODES

from . import checkpoint, features
from .models import Surrogate, build_model

COVERAGE_LEVELS = (0.5, 0.8, 0.9, 0.95)
GROUPS = ("stress", "strain", "rotation", "slip", "von_mises")


def von_mises(stress: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Von Mises equivalent of Voigt stresses (11, 22, 33, 23, 13, 12) along ``dim``."""
    s11, s22, s33, s23, s13, s12 = stress.unbind(dim)
    return torch.sqrt(0.5 * ((s11 - s22) ** 2 + (s22 - s33) ** 2 + (s33 - s11) ** 2)
                      + 3.0 * (s23 ** 2 + s13 ** 2 + s12 ** 2))


class Ensemble:
    """Members of a trained model directory, predicting together.

    Args:
        members: :class:`Surrogate` instances (same kwargs).
        meta: the directory's ``model.json`` (config, calibration, training domain...).
    """

    def __init__(self, members: list[Surrogate], meta: Mapping[str, Any]):
        self.members = [m.eval() for m in members]
        self.meta = dict(meta)
        self.device = torch.device("cpu")
        #: predict every map as its symmetric copies too (set by the calibration the model carries)
        self.symmetric = bool((self.meta.get("calibration") or {}).get("symmetric_copies"))

    @property
    def kwargs(self) -> dict:
        return self.members[0].kwargs

    def to(self, device) -> "Ensemble":
        self.device = torch.device(device)
        self.members = [m.to(self.device) for m in self.members]
        return self

    @torch.no_grad()
    def predict(self, fields, condition, schmid) -> dict[str, torch.Tensor]:
        """Ensemble prediction in SI units.

        With :attr:`symmetric`, every member also predicts the map's copies under
        the square's symmetries (:mod:`surrogate.symmetry`), mapped back; mean
        and spread are then over members x copies, so a model's disagreement
        with the symmetry the physics has counts as uncertainty.

        Args:
            fields ``(B, Cf, y, x)``, condition ``(B, Nc)``, schmid ``(B, ns, y, x)``.

        Returns:
            ``values`` (mean, ``(B, 16, y, x)``), ``spread`` (member standard deviation),
            ``von_mises``, ``von_mises_spread`` ``(B, y, x)``, ``slip_probability``
            ``(B, ns, y, x)`` (mean of the members' softmax).
        """
        from . import symmetry

        elements = symmetry.elements_for(tuple(fields.shape[-2:])) if self.symmetric else [(0, False)]
        vals, vms, probs = [], [], []
        for element in elements:
            inputs = (fields, condition, schmid)
            if element != (0, False):
                inputs = symmetry.transform_inputs(*(torch.as_tensor(t).cpu().numpy() for t in inputs), element)
            args = [torch.as_tensor(t).to(self.device, torch.float32) for t in inputs]
            outs = [m(*args) for m in self.members]
            v = torch.stack([m.physical(o["values"].float()) for m, o in zip(self.members, outs)])
            p = torch.stack([torch.softmax(o["slip_logits"].float(), dim=1) for o in outs])
            if element != (0, False):  # the copy's answers (all members at once), mapped back onto the map
                back = symmetry.inverse(element)
                v = torch.from_numpy(symmetry.transform_values(v.cpu().numpy(), back)).to(self.device)
                p = torch.from_numpy(symmetry.move_voxels(p.cpu().numpy(), back)).to(self.device)
            vals.extend(v)
            vms.extend(von_mises(v[:, :, features.TARGETS["stress"]], dim=2))
            probs.extend(p)
        vals, vms = torch.stack(vals), torch.stack(vms)
        n = len(vals)
        return {"values": vals.mean(0), "spread": vals.std(0, unbiased=True) if n > 1 else torch.zeros_like(vals[0]),
                "von_mises": vms.mean(0),
                "von_mises_spread": vms.std(0, unbiased=True) if n > 1 else torch.zeros_like(vms[0]),
                "slip_probability": torch.stack(probs).mean(0)}

    def trust(self, pred: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-voxel trust ``(B, y, x)`` in [0, 1] (see the module docstring); needs a calibration."""
        cal = self.meta.get("calibration")
        if not cal:
            raise ModelError("this model has no calibration (model.json lacks 'calibration'); retrain or recalibrate")
        if cal.get("constant_trust") is not None:  # the members' spread carried no information (calibrate)
            return torch.full_like(pred["von_mises"], float(cal["constant_trust"]))
        return trust_score(pred["von_mises"], pred["von_mises_spread"], cal.get("trust_scale", cal["scale"]["von_mises"]),
                           float(self.meta["config"]["trust_tolerance"]))

    def domain_factor(self, mode: str, strain: float, summary=None) -> tuple[float, str]:
        """How far a load (and a map, by its :func:`~surrogate.features.microstructure_summary`) lies
        inside the training domain: (factor in [0, 1], reason or '')."""
        return domain_factor(self.meta.get("training_domain", {}), mode, strain, summary)


def tolerance_band(vm: torch.Tensor, tolerance: float) -> torch.Tensor:
    """The von Mises error ``tau = tolerance * max(vm, mean(vm)/4)`` per voxel that counts as a hit.

    ``vm`` ``(..., y, x)`` is the *predicted* von Mises stress; the floor keeps
    nearly unloaded voxels from demanding an absolute precision of nothing.
    """
    return tolerance * torch.maximum(vm, vm.mean(dim=(-2, -1), keepdim=True) / 4.0)


def trust_score(vm: torch.Tensor, vm_spread: torch.Tensor, scale: float, tolerance: float) -> torch.Tensor:
    """``erf(tau / (sqrt 2 * scale * spread))`` per voxel, ``tau`` of :func:`tolerance_band`."""
    tau = tolerance_band(vm, tolerance)
    sigma = (scale * vm_spread).clamp_min(1e-12 * float(vm.abs().max()) + 1e-30)
    return torch.erf(tau / (math.sqrt(2.0) * sigma))


def beyond_largest(value: float, largest: float) -> float:
    """Domain factor of a load quantity above the largest trained: 1 at it, 0 at 25 % beyond, linear between."""
    return max(0.0, 1.0 - (value - largest) / (0.25 * largest))


def domain_factor(domain: Mapping[str, Any], mode: str, strain: float, summary=None) -> tuple[float, str]:
    """1 inside the training domain; falls linearly to 0 beyond it (see the module docstring).

    Three checks, the smallest factor wins: the load mode must have been
    trained; the strain may exceed the largest trained one by up to 25 %; the
    map's summary (texture coefficients and boundary fraction) may lie up to
    twice as far (Mahalanobis) from the training maps' mean as the farthest 1 %
    of the training maps do.
    """
    if not domain:
        return 1.0, ""
    if mode not in domain.get("modes", MODES):
        return 0.0, f"load mode '{mode}' was never seen in training (trained: {', '.join(domain['modes'])})"
    factors = [(1.0, "")]
    top = float(domain["strain_max"])
    if strain > top:
        factors.append((beyond_largest(strain, top),
                        f"applied strain {strain:.4g} beyond the largest trained {top:.4g}"))
    ms = domain.get("microstructure")
    if ms is not None and summary is not None:
        d = np.asarray(summary, dtype=float) - np.asarray(ms["mean"])
        distance = float(np.sqrt(max(d @ np.asarray(ms["inverse_covariance"]) @ d, 0.0)))
        radius = max(float(ms["radius"]), 1e-12)  # one training map (or identical ones): a point, not a ball
        if distance > radius:
            factors.append((max(0.0, 2.0 - distance / radius),
                            f"the map is unlike the training maps (texture/grain-size distance {distance:.1f}, "
                            f"training maps within {radius:.1f})"))
    return min(factors, key=lambda f: f[0])


def microstructure_domain(summaries: np.ndarray) -> dict[str, Any]:
    """Mean, regularised inverse covariance and 99th-percentile Mahalanobis radius of training-map summaries."""
    x = np.asarray(summaries, dtype=float)
    mean = x.mean(axis=0)
    cov = np.cov(x, rowvar=False) if x.shape[0] > 1 else np.zeros((x.shape[1], x.shape[1]))
    # ridge: a few training maps do not span all 16 directions
    cov = cov + (1e-3 * max(float(np.trace(cov)) / x.shape[1], 1e-12)) * np.eye(x.shape[1])
    inv = np.linalg.inv(cov)
    d = np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", x - mean, inv, x - mean), 0.0))
    return {"mean": mean.tolist(), "inverse_covariance": inv.tolist(), "radius": float(np.percentile(d, 99))}


def update_domain(model_dir: str | Path, store: str | Path) -> dict[str, Any]:
    """Recompute a trained model's training domain from its training split; writes ``model.json``."""
    from .train import training_domain

    ensemble = load_model(model_dir)
    domain = training_domain(str(store), ensemble.meta["splits"]["train"])
    meta = dict(ensemble.meta, training_domain=domain)
    (Path(model_dir) / "model.json").write_text(json.dumps(meta, indent=1))
    return domain


def load_model(model_dir: str | Path) -> Ensemble:
    """Load a model directory (``model.json`` + ``member_*.pt``) written by ``slipstream train``.

    Raises:
        ModelError: missing directory or files, unreadable checkpoints, members that disagree.
    """
    model_dir = Path(model_dir)
    meta = checkpoint.read_model_json(model_dir, checkpoint.FORMAT, "a surrogate")
    members = []
    for name in meta.get("members", []):
        ckpt = checkpoint.load(model_dir / name)
        if ckpt["model"]["kwargs"] != meta["model"]["kwargs"]:
            raise ModelError(f"{model_dir / name}: its model {ckpt['model']['kwargs']} is not the one in "
                             f"model.json {meta['model']['kwargs']}")
        model = build_model(ckpt["model"]["kwargs"])
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as exc:
            raise ModelError(f"{model_dir / name}: weights do not fit the model ({str(exc).splitlines()[0]})") from None
        members.append(model)
    if not members:
        raise ModelError(f"{model_dir}: model.json lists no members")
    return Ensemble(members, meta)


# ------------------------------------------------------------------------ calibration

def _z_quantile(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2.0))


def calibrate(ensemble: Ensemble, loader, tolerance: float) -> dict[str, Any]:
    """Fit the spread scale per output group and measure the trust score's reliability.

    Args:
        ensemble: the members; loader: batches of the validation split.
        tolerance: relative von Mises error of the trust score.

    Returns:
        ``{"scale": {group: c}, "coverage": {group: {level: observed}}, "reliability": [...],
        "expected_calibration_error": float, "n_voxels": int}``.
    """
    ratios = {g: [] for g in GROUPS}
    trust_vals, within = [], []
    for batch in loader:
        pred = ensemble.predict(batch["fields"], batch["condition"], batch["schmid"])
        target = batch["target"].to(ensemble.device)
        err = pred["values"] - target
        for g in ("stress", "strain", "rotation", "slip"):
            sl = features.TARGETS[g]
            ratios[g].append((err[:, sl] / pred["spread"][:, sl].clamp_min(1e-30)).flatten().cpu())
        vm_true = von_mises(target[:, features.TARGETS["stress"]])
        vm_err = pred["von_mises"] - vm_true
        ratios["von_mises"].append((vm_err / pred["von_mises_spread"].clamp_min(1e-30)).flatten().cpu())
        tau = tolerance_band(pred["von_mises"], tolerance)
        within.append((vm_err.abs() <= tau).flatten().cpu())
        # the trust needs the fitted scale: keep what it is made of
        trust_vals.append((pred["von_mises_spread"].flatten().cpu(), tau.flatten().cpu()))
    scale, coverage = {}, {}
    for g, r in ratios.items():
        r = torch.cat(r).double()
        r = r[torch.isfinite(r)]
        c = float(torch.sqrt(torch.mean(r ** 2))) if r.numel() else 1.0
        scale[g] = c
        coverage[g] = {str(level): float((r.abs() <= c * _z_quantile(level)).double().mean()) for level in COVERAGE_LEVELS}
    spread = torch.cat([t[0] for t in trust_vals]).double()
    tau = torch.cat([t[1] for t in trust_vals]).double()
    hit = torch.cat(within).double()
    # the errors are heavy-tailed (the RMS scale over-covers the bulk), so the trust gets its own scale:
    # the one whose probabilities best match the observed hits (least Brier score; temperature scaling)
    candidates = scale["von_mises"] * torch.logspace(-2, 1, 61, dtype=torch.float64)
    brier = [float(((torch.erf(tau / (math.sqrt(2.0) * (c * spread).clamp_min(1e-30))) - hit) ** 2).mean())
             for c in candidates]
    trust_scale = float(candidates[int(np.argmin(brier))])
    trust = torch.erf(tau / (math.sqrt(2.0) * (trust_scale * spread).clamp_min(1e-30)))
    # members that agree whatever the error (e.g. corrections that all stay near their common input) carry no
    # information: then the validation hit rate, a constant, is the better-calibrated trust, and is used
    base = float(hit.mean())
    constant = float(min(brier)) > base * (1.0 - base)
    if constant:
        trust = torch.full_like(hit, base)
    table, ece = reliability(trust.numpy(), hit.numpy())
    return {"scale": scale, "coverage": coverage, "trust_scale": trust_scale,
            "brier_score": base * (1.0 - base) if constant else float(min(brier)),
            "constant_trust": base if constant else None,
            "reliability": table, "expected_calibration_error": ece, "n_voxels": int(hit.numel()),
            "tolerance": tolerance, "symmetric_copies": bool(getattr(ensemble, "symmetric", False))}


def recalibrate(model_dir: str | Path, store: str | Path, batch_size: int = 32,
                coarse: str | Path | None = None, symmetric: bool | None = None) -> dict[str, Any]:
    """Calibrate a trained model again on its validation split (after a change of the calibration method).

    ``coarse``: the coarse partner store of a low-resolution correction. ``symmetric``:
    predict with the symmetric copies from now on (or not; default: as before). Writes the
    new ``calibration`` into ``model_dir/model.json`` and returns it.
    """
    from torch.utils.data import DataLoader

    from .correction import campaign_dataset
    from .data import check_fits, store_info
    from .train import collate

    ensemble = load_model(model_dir)
    if symmetric is not None:
        ensemble.symmetric = bool(symmetric)
    if ensemble.symmetric and ensemble.meta.get("coarse"):
        raise ModelError(f"{model_dir}: a low-resolution correction does not predict symmetric copies "
                         "(its coarse-partner channels are not transformed)")
    info = store_info(store)
    check_fits(ensemble.meta["store"], info)
    if ensemble.meta["store"]["fingerprint"] != info.fingerprint:
        raise ModelError(f"{store}: not the store {model_dir} was trained on; its validation split lives there")
    samples = ensemble.meta["splits"]["validation"]
    upsampling = ensemble.meta["coarse"]["upsampling"] if coarse is not None else "grain"
    dataset = campaign_dataset(store, samples, coarse, upsampling)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    cal = calibrate(ensemble, loader, float(ensemble.meta["config"]["trust_tolerance"]))
    meta = dict(ensemble.meta, calibration=cal)
    (Path(model_dir) / "model.json").write_text(json.dumps(meta, indent=1))
    return cal


def reliability(trust: np.ndarray, hit: np.ndarray, bins: int = 10) -> tuple[list[dict], float]:
    """Reliability table of a probability against observed 0/1 outcomes, and the ECE."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(trust, edges) - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        sel = idx == b
        if not sel.any():
            continue
        p, f = float(trust[sel].mean()), float(hit[sel].mean())
        table.append({"bin": [float(edges[b]), float(edges[b + 1])], "trust": p, "observed": f, "n": int(sel.sum())})
        ece += sel.mean() * abs(p - f)
    return table, float(ece)
