"""``slipstream evaluate``: accuracy, calibration and speed of a trained model on a store.

Metrics (docs/surrogate.md gives the definitions and the published figures):

* ``nrmse``: per field group, RMSE / RMS(target) (PDEBench's nRMSE).
* ``stress_nmae``: per Voigt component, MAE / (max - min of the target
  component over the split) (the "normalised MAE" of arXiv 2210.16994), and
  ``stress_mae_over_mean_abs``: MAE / mean |target| (stricter).
* ``von_mises_mape``: mean |vm_pred - vm| / vm over voxels (Mianroodi et al. 2021),
  on all steps and at the last step.
* ``misorientation_deg``: disorientation (cubic symmetry) between predicted and
  true deformed orientations, median and 95th percentile; next to it the same
  for "no lattice rotation" (the deformed map = the initial one), for scale.
* ``macro_curve``: relative error of the voxel mean of the predicted stress
  against the stored macroscopic stress, per step.
* ``equilibrium_residual``: RMS of ``div sigma`` on the voxel grid (per voxel) over
  RMS of ``sigma``, for the surrogate and, as the floor, for the solver's voxel stresses.
* ``boundary`` / ``interior``: von Mises MAPE and stress nRMSE on grain-boundary
  voxels and on the others.
* ``slip_system``: accuracy of the dominant slip system on plastic voxels,
  next to the plain Schmid prediction (largest |Schmid factor| of the nominal stress direction).
* ``trust``: per-sample trust against per-sample error (Spearman), and the reliability table.
* ``speed``: seconds per sample (all steps), one sample at a time and batched.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from solver.errors import ConfigError, StoreError
from solver.loading import MODES

from . import features, losses
from .data import make_splits, SplitSpec, store_info, check_fits
from .train import collate
from .uncertainty import Ensemble, load_model, reliability, von_mises

STRESS_NAMES = ("11", "22", "33", "23", "13", "12")


class _Accumulator:
    """Running sums for the metrics of one split (all in float64)."""

    def __init__(self):
        self.sq = {g: 0.0 for g in features.TARGETS}
        self.sq_t = {g: 0.0 for g in features.TARGETS}
        self.abs_c = np.zeros(6)
        self.abs_t = np.zeros(6)
        self.tmin = np.full(6, np.inf)
        self.tmax = np.full(6, -np.inf)
        self.n_vox = 0
        self.ape, self.ape_last, self.ape_gb, self.ape_in = [], [], [], []
        self.sq_gb = self.sq_gb_t = self.sq_in = self.sq_in_t = 0.0
        self.mis, self.mis_zero = [], []
        self.slip_hit = self.slip_schmid_hit = self.slip_n = 0
        self.slip_hit_last = self.slip_schmid_last = self.slip_n_last = 0
        self.macro = []
        self.per_sample: dict[int, dict[str, list]] = {}
        self.trust, self.within = [], []
        self.div_p = self.div_t = self.div_n = 0.0


def _update(acc: _Accumulator, batch: dict, pred: dict, trust: torch.Tensor, last_step: int, tolerance: float):
    t = batch["target"].double()
    p = pred["values"].double()
    for g, sl in features.TARGETS.items():
        acc.sq[g] += float((p[:, sl] - t[:, sl]).square().sum())
        acc.sq_t[g] += float(t[:, sl].square().sum())
    s_sl = features.TARGETS["stress"]
    err = (p[:, s_sl] - t[:, s_sl]).abs()
    acc.abs_c += err.sum(dim=(0, 2, 3)).numpy()
    acc.abs_t += t[:, s_sl].abs().sum(dim=(0, 2, 3)).numpy()
    acc.tmin = np.minimum(acc.tmin, t[:, s_sl].amin(dim=(0, 2, 3)).numpy())
    acc.tmax = np.maximum(acc.tmax, t[:, s_sl].amax(dim=(0, 2, 3)).numpy())
    acc.n_vox += t.shape[0] * t.shape[2] * t.shape[3]

    # equilibrium: RMS of div(sigma) (per voxel) over RMS of sigma, for the surrogate and for the solver's own
    # voxel stresses (the floor: the FE stress averaged per voxel is not exactly divergence-free on the grid)
    acc.div_p += float(losses.divergence_2d(p[:, s_sl]).square().sum())
    acc.div_t += float(losses.divergence_2d(t[:, s_sl]).square().sum())
    acc.div_n += float(t[:, s_sl].square().sum())
    vm_t = von_mises(t[:, s_sl])
    vm_p = pred["von_mises"].double()
    ape = (vm_p - vm_t).abs() / vm_t.clamp_min(1e-30)
    gb = batch["boundary"]
    acc.ape.append(ape.flatten().numpy())
    last = batch["step"] == last_step
    acc.ape_last.append(ape[last].flatten().numpy())
    acc.ape_gb.append(ape[gb].numpy())
    acc.ape_in.append(ape[~gb].numpy())
    d2 = (p[:, s_sl] - t[:, s_sl]).square().sum(1)
    t2 = t[:, s_sl].square().sum(1)
    acc.sq_gb += float(d2[gb].sum()); acc.sq_gb_t += float(t2[gb].sum())
    acc.sq_in += float(d2[~gb].sum()); acc.sq_in_t += float(t2[~gb].sum())

    rot = features.TARGETS["rotation"]
    cos = losses.disorientation_cosine(batch["g0"], p[:, rot], t[:, rot])
    acc.mis.append(np.degrees(np.arccos(cos.numpy())).flatten())
    cos0 = losses.disorientation_cosine(batch["g0"], torch.zeros_like(p[:, rot]), t[:, rot])
    acc.mis_zero.append(np.degrees(np.arccos(cos0.numpy())).flatten())

    dom = batch["dominant"]
    plastic = dom >= 0
    guess = pred["slip_probability"].argmax(1)
    schmid = batch["schmid"].abs().argmax(1)
    acc.slip_hit += int((guess == dom)[plastic].sum())
    acc.slip_schmid_hit += int((schmid == dom)[plastic].sum())
    acc.slip_n += int(plastic.sum())
    pl = plastic & last[:, None, None]
    acc.slip_hit_last += int((guess == dom)[pl].sum())
    acc.slip_schmid_last += int((schmid == dom)[pl].sum())
    acc.slip_n_last += int(pl.sum())

    mean_p = p[:, s_sl].mean(dim=(-2, -1))
    macro = batch["macro_stress"].double()
    rel = (mean_p - macro).norm(dim=1) / macro.norm(dim=1).clamp_min(1e-30)
    acc.macro.append(rel.numpy())

    floor = vm_p.mean(dim=(-2, -1), keepdim=True) / 4.0
    tau = tolerance * torch.maximum(vm_p, floor)
    acc.trust.append(trust.double().flatten().numpy())
    acc.within.append(((vm_p - vm_t).abs() <= tau).flatten().numpy())
    # stress along the nominal stress direction (the condition's Voigt direction, shears x sqrt 2)
    sdir = batch["condition"][:, len(MODES):len(MODES) + 6].double()
    w = torch.tensor([1, 1, 1, math.sqrt(2), math.sqrt(2), math.sqrt(2)], dtype=torch.float64)
    along_p = (mean_p * w * sdir).sum(1)
    along_m = (macro * w * sdir).sum(1)
    for i, s in enumerate(batch["sample"].tolist()):
        rec = acc.per_sample.setdefault(s, {"trust": [], "ape": [], "curve": []})
        rec["trust"].append(float(trust[i].mean()))
        rec["ape"].append(float(ape[i].mean()))
        rec["curve"].append((float(batch["condition"][i, len(MODES) + 6]), float(along_m[i]), float(along_p[i])))


def _summary(acc: _Accumulator) -> dict[str, Any]:
    cat = np.concatenate
    mis, mis0 = cat(acc.mis), cat(acc.mis_zero)
    trust_s = np.array([np.mean(r["trust"]) for r in acc.per_sample.values()])
    err_s = np.array([np.mean(r["ape"]) for r in acc.per_sample.values()])
    table, ece = reliability(cat(acc.trust), cat(acc.within).astype(float))
    out = {
        "samples": len(acc.per_sample),
        "nrmse": {g: math.sqrt(acc.sq[g] / max(acc.sq_t[g], 1e-300)) for g in features.TARGETS},
        "stress_nmae": {c: float(acc.abs_c[k] / acc.n_vox / max(acc.tmax[k] - acc.tmin[k], 1e-30))
                        for k, c in enumerate(STRESS_NAMES)},
        "stress_mae_over_mean_abs": {c: float(acc.abs_c[k] / max(acc.abs_t[k], 1e-30)) for k, c in enumerate(STRESS_NAMES)},
        "von_mises_mape": float(cat(acc.ape).mean()),
        "von_mises_mape_last_step": float(cat(acc.ape_last).mean()) if acc.ape_last else None,
        "misorientation_deg": {"median": float(np.median(mis)), "p95": float(np.percentile(mis, 95)),
                               "no_rotation_median": float(np.median(mis0)),
                               "no_rotation_p95": float(np.percentile(mis0, 95))},
        "macro_curve": {"median_relative_error": float(np.median(cat(acc.macro))),
                        "p95_relative_error": float(np.percentile(cat(acc.macro), 95))},
        "equilibrium_residual": {"surrogate": math.sqrt(acc.div_p / max(acc.div_n, 1e-300)),
                                 "solver": math.sqrt(acc.div_t / max(acc.div_n, 1e-300))},
        "boundary": {"von_mises_mape": float(cat(acc.ape_gb).mean()) if cat(acc.ape_gb).size else None,
                     "stress_nrmse": math.sqrt(acc.sq_gb / max(acc.sq_gb_t, 1e-300))},
        "interior": {"von_mises_mape": float(cat(acc.ape_in).mean()) if cat(acc.ape_in).size else None,
                     "stress_nrmse": math.sqrt(acc.sq_in / max(acc.sq_in_t, 1e-300))},
        "slip_system": {"accuracy": acc.slip_hit / max(acc.slip_n, 1),
                        "schmid_accuracy": acc.slip_schmid_hit / max(acc.slip_n, 1),
                        "accuracy_last_step": acc.slip_hit_last / max(acc.slip_n_last, 1),
                        "schmid_accuracy_last_step": acc.slip_schmid_last / max(acc.slip_n_last, 1),
                        "plastic_voxels": acc.slip_n},
        "trust": {"mean": float(trust_s.mean()),
                  "spearman_trust_vs_error": _spearman(trust_s, err_s),
                  "reliability": table, "expected_calibration_error": ece},
    }
    out["stress_nmae_mean"] = float(np.mean(list(out["stress_nmae"].values())))
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:  # a constant has no rank correlation
        return None
    from scipy.stats import spearmanr

    r = spearmanr(a, b).statistic
    return None if not np.isfinite(r) else float(r)


def evaluate_split(ensemble: Ensemble | None, store: str, samples: list[int], batch_size: int = 32,
                   keep: int = 0, *, coarse: str | None = None, upsampling: str = "grain",
                   predictor=None, tolerance: float | None = None,
                   element: tuple[int, bool] | None = None) -> tuple[dict[str, Any], list[dict]]:
    """Metrics of ``ensemble`` on ``samples`` of ``store``; also up to ``keep`` samples' last-step maps.

    Args:
        coarse: the store's coarse partner, for a low-resolution correction model
            (items of :class:`surrogate.correction.CorrectionDataset`, ``upsampling``).
        predictor: ``f(batch) -> (pred, trust)`` in place of the ensemble (baselines,
            e.g. :func:`surrogate.correction.coarse_baseline`); ``tolerance`` then
            sets the trust tolerance (default 5 %).
        element: evaluate on this symmetric copy of every sample (:mod:`surrogate.symmetry`;
            not with ``coarse``): a rotated or mirrored map is as physical as the map itself.
    """
    from .correction import campaign_dataset

    if element is not None and coarse is not None:
        raise ConfigError("a low-resolution correction is not evaluated on symmetric copies")
    ds = campaign_dataset(store, samples, coarse, upsampling, **({"element": element} if element else {}))
    # whole samples per batch keep the per-sample records together
    steps = len(ds.steps)
    loader = DataLoader(ds, batch_size=max(1, batch_size // steps) * steps, shuffle=False, collate_fn=collate)
    acc = _Accumulator()
    kept = []
    tol = float(ensemble.meta["config"]["trust_tolerance"]) if ensemble is not None else (tolerance or 0.05)
    for batch in loader:
        if predictor is not None:
            pred, trust = predictor(batch)
        else:
            pred = ensemble.predict(batch["fields"], batch["condition"], batch["schmid"])
            pred = {k: v.cpu() for k, v in pred.items()}
            trust = ensemble.trust(pred)
        _update(acc, batch, pred, trust, ds.steps[-1], tol)
        for i in np.flatnonzero((batch["step"] == ds.steps[-1]).numpy()):
            if len(kept) < keep:
                kept.append({"sample": int(batch["sample"][i]), "target": batch["target"][i].numpy(),
                             "pred": pred["values"][i].numpy(), "trust": trust[i].numpy(),
                             "vm_true": von_mises(batch["target"][i:i + 1, :6])[0].numpy(),
                             "vm_pred": pred["von_mises"][i].numpy()})
    summary = _summary(acc)
    summary["curves"] = {str(k): sorted(v["curve"]) for k, v in list(acc.per_sample.items())[:keep]}
    return summary, kept


def timing(ensemble: Ensemble, store: str, samples: list[int], repeats: int = 3,
           coarse: str | None = None) -> dict[str, float]:
    """Seconds per sample (all output steps) of the ensemble: one sample per call, and batched."""
    from .correction import campaign_dataset

    ds = campaign_dataset(store, samples[:8], coarse)
    steps = len(ds.steps)
    items = [collate([ds[k * steps + j] for j in range(steps)]) for k in range(len(ds.samples))]
    ensemble.predict(items[0]["fields"], items[0]["condition"], items[0]["schmid"])  # warm-up
    best_single = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for it in items:
            ensemble.predict(it["fields"], it["condition"], it["schmid"])
        best_single = min(best_single, (time.perf_counter() - t0) / len(items))
    big = collate([ds[i] for i in range(len(ds))])
    best_batch = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        ensemble.predict(big["fields"], big["condition"], big["schmid"])
        best_batch = min(best_batch, (time.perf_counter() - t0) / len(items))
    return {"seconds_per_sample": best_single, "seconds_per_sample_batched": best_batch,
            "steps_per_sample": steps, "members": len(ensemble.members), "threads": torch.get_num_threads()}


def evaluate(model_dir: str | Path, store: str | Path, out: str | Path, *, splits: list[str] | None = None,
             plots: bool = True, quiet: bool = False, coarse: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a model directory on a store; writes ``evaluation.json`` and PNGs into ``out``.

    Args:
        splits: names among ``train validation test held_out all``. Default: the
            model's own test/held_out/validation splits when the store is the one
            it was trained on, else ``all`` (every finished sample).
        coarse: the coarse partner of ``store``, required for a low-resolution
            correction model; the plain coarse solve (nearest, bilinear and
            grain-aware upsampling) is then evaluated beside the correction.

    Raises:
        ModelError, StoreError, ConfigError: bad model, a store it does not fit, unknown split.
    """
    from .correction import UPSAMPLING, coarsening_factor, coarse_baseline, done_in_both, is_correction

    ensemble = load_model(model_dir)
    info = store_info(store)
    check_fits(ensemble.meta["store"], info)
    if is_correction(ensemble.meta):
        if coarse is None:
            raise ConfigError(f"{model_dir} is a low-resolution correction: give the store's coarse partner (--coarse)")
        factor = coarsening_factor(info, store_info(coarse))
        if factor != ensemble.meta["coarse"]["factor"]:
            raise StoreError(f"{coarse}: {factor}x coarser, but the model corrects {ensemble.meta['coarse']['factor']}x "
                             "coarser solves")
        coarse = str(coarse)
    elif coarse is not None:
        raise ConfigError(f"{model_dir} is a surrogate, not a low-resolution correction: --coarse does not apply")
    same_store = ensemble.meta["store"]["fingerprint"] == info.fingerprint
    if splits is None:
        splits = ["test", "held_out", "validation"] if same_store else ["all"]
    chosen: dict[str, list[int]] = {}
    for name in splits:
        if name == "all":
            chosen["all"] = sorted(sum(make_splits(store, SplitSpec(validation=0, test=0, held_out=[])).values(), []))
        elif name in ("train", "validation", "test", "held_out"):
            if not same_store:
                raise ConfigError(f"split '{name}' refers to the model's training store; this store is another "
                                  "campaign: use --split all")
            chosen[name] = ensemble.meta["splits"][name]
        else:
            raise ConfigError(f"unknown split '{name}'; choose from train, validation, test, held_out, all")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    report: dict[str, Any] = {"model": str(model_dir), "store": str(store), "splits": {}}
    maps = {}
    for name, samples in chosen.items():
        if not samples:
            say(f"evaluate: split '{name}' is empty, skipped")
            continue
        t0 = time.perf_counter()
        if coarse is not None:
            samples = done_in_both(samples, coarse)
        metrics, kept = evaluate_split(ensemble, str(store), samples, keep=3, coarse=coarse)
        if coarse is not None:  # the plain coarse solve on the same samples, in the same run
            tol = float(ensemble.meta["config"]["trust_tolerance"])
            metrics["baselines"] = {
                f"coarse_{up}": evaluate_split(None, str(store), samples, coarse=coarse, upsampling=up,
                                               predictor=coarse_baseline, tolerance=tol)[0]
                for up in UPSAMPLING}
        report["splits"][name] = metrics
        maps[name] = kept
        say(f"evaluate [{name}] {metrics['samples']} samples: stress nMAE {100 * metrics['stress_nmae_mean']:.2f} %, "
            f"von Mises MAPE {100 * metrics['von_mises_mape']:.2f} %, misorientation median "
            f"{metrics['misorientation_deg']['median']:.3f} deg (p95 {metrics['misorientation_deg']['p95']:.3f}), "
            f"macro error {100 * metrics['macro_curve']['median_relative_error']:.2f} %, slip system "
            f"{100 * metrics['slip_system']['accuracy']:.1f} % (Schmid {100 * metrics['slip_system']['schmid_accuracy']:.1f} %), "
            f"trust {metrics['trust']['mean']:.2f} ({time.perf_counter() - t0:.0f} s)")
        for base, m in metrics.get("baselines", {}).items():
            say(f"evaluate [{name}] plain {base.replace('_', ' ')}: stress nMAE {100 * m['stress_nmae_mean']:.2f} %, "
                f"von Mises MAPE {100 * m['von_mises_mape']:.2f} %, misorientation median "
                f"{m['misorientation_deg']['median']:.3f} deg")
    first = next((v for v in chosen.values() if v), None)
    report["speed"] = timing(ensemble, str(store), first, coarse=coarse) if first else None
    report["calibration"] = ensemble.meta.get("calibration")
    if plots:
        report["pictures"] = _plots(report, maps, out)
    (out / "evaluation.json").write_text(json.dumps(report, indent=1))
    say(f"evaluate: {out / 'evaluation.json'}")
    return report


def _plots(report: dict, maps: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pictures = []
    for name, kept in maps.items():
        for k, rec in enumerate(kept[:2]):
            fig, ax = plt.subplots(1, 4, figsize=(14, 3.4), constrained_layout=True)
            vmax = float(max(rec["vm_true"].max(), rec["vm_pred"].max())) / 1e6
            for a, (title, img) in zip(ax, [("solver von Mises (MPa)", rec["vm_true"] / 1e6),
                                            ("surrogate von Mises (MPa)", rec["vm_pred"] / 1e6),
                                            ("|error| (MPa)", np.abs(rec["vm_pred"] - rec["vm_true"]) / 1e6),
                                            ("trust", rec["trust"])]):
                im = a.imshow(img, origin="lower", cmap="viridis" if title != "trust" else "RdYlGn",
                              vmin=0 if "error" in title or title == "trust" else 0,
                              vmax=1 if title == "trust" else (None if "error" in title else vmax))
                a.set_title(title)
                a.set_xticks([]); a.set_yticks([])
                fig.colorbar(im, ax=a, shrink=0.8)
            fig.suptitle(f"{name}: sample {rec['sample']}, last step")
            path = out / f"{name}_sample{rec['sample']}_von_mises.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            pictures.append(str(path))
    # macroscopic curves: solver (stored volume average) vs surrogate (voxel mean), a few samples per split
    for name, m in report["splits"].items():
        curves = m.get("curves", {})
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(5, 4), constrained_layout=True)
        for k, (sample, pts) in enumerate(curves.items()):
            e, sm, sp = (np.array(v) for v in zip(*pts))
            line, = ax.plot(100 * e, sm / 1e6, "-", label=f"sample {sample}: solver")
            ax.plot(100 * e, sp / 1e6, "o", color=line.get_color(), mfc="none", label="surrogate")
        ax.set_xlabel("applied strain (%)")
        ax.set_ylabel("mean stress along the nominal stress direction (MPa)")
        ax.legend(fontsize=7)
        ax.set_title(f"{name}: macroscopic curves")
        path = out / f"{name}_curves.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        pictures.append(str(path))
    # reliability of the trust score, every split on one plot
    fig, ax = plt.subplots(figsize=(4.5, 4.2), constrained_layout=True)
    ax.plot([0, 1], [0, 1], "k:", label="perfectly calibrated")
    for name, m in report["splits"].items():
        tab = m["trust"]["reliability"]
        ax.plot([r["trust"] for r in tab], [r["observed"] for r in tab], "o-",
                label=f"{name} (ECE {m['trust']['expected_calibration_error']:.3f})")
    ax.set_xlabel("trust (predicted probability of a von Mises error within tolerance)")
    ax.set_ylabel("observed frequency")
    ax.legend(fontsize=8)
    path = out / "trust_reliability.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    pictures.append(str(path))
    return pictures
