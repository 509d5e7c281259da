"""How good an uncertainty is, on one labelled set: calibration, proper scores, and referral.

Input: labels y (N,) in {0, 1} and the Monte-Carlo (or ensemble) class probabilities of a method,
samples (S, N, 2) (`hits_stamps.predictive`). With p_n = (1/S) sum_s p_sn the predictive mean, a
stamp is called real when p_n,real >= 0.5 and is wrong when that call differs from y_n. Every
quantity is a weighted statistic with stamp weights v_n (all 1 for the point estimate; for the
bootstrap over objects, how many times the stamp's object was drawn; `intervals.resample_weights`):

    ECE        = sum_m |sum_{n in B_m} v_n (correct_n - conf_n)| / sum_n v_n   (15 equal-width bins of
                 the top-label confidence conf_n = max_k p_nk; as `calibration.ece`)
    NLL        = -sum_n v_n log p_{n y_n} / sum_n v_n        (nats; p clipped at 1e-12)
    Brier      = sum_n v_n sum_k (p_nk - [y_n = k])^2 / sum_n v_n   (two-class sum: 2 (p_real - y)^2)
    AUROC(u)   = P(u_wrong > u_right) + P(=)/2, the ROC AUC of the uncertainty u for telling wrong
                 stamps from right ones (0.5: no better than chance; undefined without errors)
    err(f)     = error rate of the stamps kept after referring the fraction f of the stamp weight
                 with the highest u (stamps ordered by u, ties by stamp order; the stamp on the
                 boundary counts in part), and err_ratio(f) = err(f) / err(0): <= 0.5 means that
                 referring f at least halves the error rate of the rest.

The uncertainty u is the predictive entropy H(p_n) (or the mutual information; `uncertainty`).
Intervals: percentile bootstrap over objects (resampled objects bring all their stamps).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hits_stamps.evaluation.calibration import confidence_bins
from hits_stamps.evaluation.intervals import (
    DEFAULT_LEVEL,
    group_codes,
    percentile_interval,
    resample_weights,
    resampled_auc,
)
from hits_stamps.uncertainty import summarize

N_BINS = 15
REFERRAL_FRACTIONS = (0.05, 0.1, 0.2)
SCALARS = ("accuracy", "ece", "nll", "brier", "auroc_uncertainty") + tuple(
    f"{k}_at_{int(round(100 * f))}pct" for f in REFERRAL_FRACTIONS for k in ("error_kept", "error_ratio"))


def _bins(conf: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def weighted_metrics(y: np.ndarray, mean: np.ndarray, u: np.ndarray, v: np.ndarray,
                     fractions=REFERRAL_FRACTIONS, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Every scalar of the module doc for each row of stamp weights v (B, N); values (B,) each.

    y (N,) in {0, 1}; mean (N, 2) predictive mean; u (N,) uncertainty (higher: less certain).
    AUROC is not computed here (see `resampled_auc`).
    """
    p_real = mean[:, 1]
    pred = (p_real >= 0.5).astype(np.int64)
    correct = (pred == y).astype(np.float64)
    conf = np.where(pred == 1, p_real, 1.0 - p_real)
    w = v.sum(axis=1)  # (B,)
    onehot = np.zeros((len(y), n_bins))
    onehot[np.arange(len(y)), _bins(conf, n_bins)] = 1.0
    gap = v @ (onehot * (correct - conf)[:, None])  # (B, M): sum over each bin of v (correct - conf)
    p_true = np.clip(np.where(y == 1, p_real, 1.0 - p_real), 1e-12, 1.0)
    sq = ((mean - np.eye(2)[y]) ** 2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "accuracy": v @ correct / w,
            "ece": np.abs(gap).sum(axis=1) / w,
            "nll": v @ -np.log(p_true) / w,
            "brier": v @ sq / w,
        }
        order = np.argsort(-u, kind="stable")  # most uncertain first
        vo = v[:, order]  # (B, N)
        wrong = 1.0 - correct[order]
        cum = np.cumsum(vo, axis=1)  # weight referred up to and including each stamp
        err0 = vo @ wrong / w
        for f in fractions:
            r = f * w  # (B,) referred weight
            kept = np.clip(cum - r[:, None], 0.0, vo)  # (B, N) part of each stamp's weight that is kept
            err = (kept @ wrong) / (w - r)
            tag = f"{int(round(100 * f))}pct"
            out[f"error_kept_at_{tag}"] = err
            out[f"error_ratio_at_{tag}"] = np.where(err0 > 0, err / np.where(err0 > 0, err0, 1.0), np.nan)
    return out


def uncertainty_scores(samples) -> dict[str, np.ndarray]:
    """(S, N, K) -> mean (N, K), entropy (N,), mutual_information (N,) (`uncertainty.summarize`)."""
    s = summarize(samples)
    return {"mean": s["mean"], "entropy": s["entropy"], "mutual_information": s["mutual_information"]}


def evaluate_uncertainty(
    y,
    samples,
    groups=None,
    uncertainty: str = "entropy",
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, Any]:
    """The module doc's quantities for one method on one labelled set, with bootstrap-over-objects intervals.

    y (N,) in {0, 1}; samples (S, N, 2); groups (N,) object of each stamp (None: each stamp its own).
    Returns a JSON-ready dict: `n`, `n_objects`, `n_errors`, `uncertainty`, per scalar
    {"value", "ci95"} (the interval None when it cannot be resampled), the reliability diagram
    (`reliability`: per-bin count, confidence, accuracy) and the referral curve (`referral`:
    fraction 0..0.5, accuracy of the kept stamps, `calibration.referral_curve`).
    """
    from hits_stamps.evaluation.calibration import referral_curve

    y = np.asarray(y).astype(np.int64)
    p = np.asarray(samples, dtype=np.float64)
    if p.ndim != 3 or p.shape[1:] != (len(y), 2) or len(y) == 0:
        raise ValueError(f"samples must have shape (S, {len(y)}, 2) for {len(y)} labels (N >= 1); got {p.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y must hold labels 0 (bogus) or 1 (real)")
    scores = uncertainty_scores(p)
    if uncertainty not in ("entropy", "mutual_information"):
        raise ValueError(f"uncertainty must be entropy or mutual_information; got {uncertainty!r}")
    mean, u = scores["mean"], scores[uncertainty]
    codes, n_groups = group_codes(groups, len(y))
    point = weighted_metrics(y, mean, u, np.ones((1, len(y))))
    wrong = ((mean[:, 1] >= 0.5).astype(np.int64) != y).astype(np.int64)
    has_both = 0 < wrong.sum() < len(y)
    point["auroc_uncertainty"] = resampled_auc(wrong, u, np.arange(len(y)), np.ones((1, len(y)))) if has_both \
        else np.array([np.nan])
    out: dict[str, Any] = {"n": int(len(y)), "n_real": int(y.sum()), "n_objects": int(n_groups),
                           "n_errors": int(wrong.sum()), "n_samples": int(p.shape[0]), "uncertainty": uncertainty,
                           "mean_entropy": float(scores["entropy"].mean()),
                           "mean_mutual_information": float(scores["mutual_information"].mean())}
    if n_groups >= 2 and n_resamples > 0:
        w = resample_weights(n_groups, n_resamples, seed)  # (B, G)
        boot = weighted_metrics(y, mean, u, w[:, codes])
        boot["auroc_uncertainty"] = resampled_auc(wrong, u, codes, w) if has_both else np.full(n_resamples, np.nan)
    else:
        boot = None
    for key in SCALARS:
        val = float(point[key][0])
        out[key] = {"value": val if np.isfinite(val) else None,
                    "ci95": percentile_interval(boot[key], level) if boot is not None else None}
    bins = confidence_bins(y, np.clip(mean[:, 1], 0, 1), N_BINS)
    out["reliability"] = bins.to_json()
    f, acc = referral_curve(y, np.clip(mean[:, 1], 0, 1), u)
    out["referral"] = {"fraction": f.tolist(), "accuracy": [None if not np.isfinite(a) else float(a) for a in acc]}
    return out


__all__ = ["REFERRAL_FRACTIONS", "SCALARS", "evaluate_uncertainty", "uncertainty_scores", "weighted_metrics"]
