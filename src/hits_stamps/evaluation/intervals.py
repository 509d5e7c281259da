"""Confidence intervals for classification metrics: a seeded bootstrap over objects, and Wilson intervals.

Stamps of one astronomical object (a HiTS source seen on several nights) are not independent: a
classifier that misses an object tends to miss all its stamps. Resampling stamps would then
understate the spread, so the bootstrap resamples *objects* (groups) with replacement and each
drawn object brings all its stamps (Efron & Tibshirani 1993, ch. 6; the "cluster bootstrap").
Sets without groups count each stamp as its own object, which is the ordinary bootstrap.

Resample b draws G objects from the G objects of the set, uniformly with replacement; w_bg, the
number of times object g is drawn, is multinomial(G, 1/G), so sum_g w_bg = G. With per-object
confusion counts c_g = (TN_g, FP_g, FN_g, TP_g) at a fixed threshold, the resampled counts are
C_b = sum_g w_bg c_g (one matrix product W @ c) and

    accuracy_b     = (TP_b + TN_b) / (TP_b + TN_b + FP_b + FN_b)
    precision_b    = TP_b / (TP_b + FP_b)
    recall_b       = TP_b / (TP_b + FN_b)        (real recall, TPR; FNR_b = 1 - recall_b)
    recall_bogus_b = TN_b / (TN_b + FP_b)        (bogus recall, TNR; FPR_b = 1 - recall_bogus_b)

ROC AUC of resample b is the weighted Mann-Whitney statistic with stamp weights v_i = w_{b, g(i)}:

    AUC_b = sum_{i real} sum_{j bogus} v_i v_j [s_i > s_j] + 1/2 [s_i = s_j]  /  (sum_{i real} v_i)(sum_{j bogus} v_j)

computed from one sort of the scores: per distinct score level k the resampled real weight P_bk and
bogus weight N_bk, then AUC_b = sum_k P_bk (sum_{l<k} N_bl + N_bk / 2) / (sum P_b)(sum N_b).

The interval is the percentile interval [q_{(1-level)/2}, q_{(1+level)/2}] of the resampled values
over the resamples where the quantity is defined (a resample may draw no real object, leaving
recall undefined; those are counted in `undefined_resamples`). The threshold is held fixed: the
intervals do not include the uncertainty of choosing it.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
_CHUNK = 128  # resamples per block in the AUC computation: memory ~ _CHUNK x N x 8 bytes

#: Quantities computed from confusion counts at a fixed threshold: name -> (numerator, denominator)
#: as index lists into (TN, FP, FN, TP).
_COUNT_RATES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "accuracy": ((0, 3), (0, 1, 2, 3)),
    "precision": ((3,), (1, 3)),
    "recall": ((3,), (2, 3)),
    "recall_bogus": ((0,), (0, 1)),
    "fnr": ((2,), (2, 3)),
    "fpr": ((1,), (0, 1)),
}


def wilson_interval(k: int, n: int, level: float = DEFAULT_LEVEL) -> list[float] | None:
    """Wilson score interval for a binomial rate k / n; None when n == 0.

    With p = k / n and z the (1 + level) / 2 normal quantile (1.96 for 95%):

        centre = (p + z^2 / 2n) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

    (Wilson 1927). Unlike p +- z sqrt(p(1-p)/n) it stays inside [0, 1] and is not empty at k = 0 or
    k = n. It treats the n trials as independent: for stamps grouped into fewer objects it is too narrow.
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n; got k={k}, n={n}")
    if n == 0:
        return None
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z / den * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def group_codes(groups, n: int) -> tuple[np.ndarray, int]:
    """(codes (N,) int in [0, G), G) for the objects of N stamps; each stamp its own object when None."""
    if groups is None:
        return np.arange(n), n
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have shape ({n},); got {g.shape}")
    _, codes = np.unique(g, return_inverse=True)
    codes = codes.reshape(-1)
    return codes, int(codes.max()) + 1 if n else 0


def resample_weights(n_groups: int, n_resamples: int, seed: int) -> np.ndarray:
    """(B, G) float: how many times each of G objects is drawn in each of B resamples (rows sum to G)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_resamples).astype(np.float64)


def group_confusion(y: np.ndarray, pred: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """(G, 4) per-object counts (TN, FP, FN, TP) for labels and predictions in {0, 1}."""
    cell = 2 * y.astype(np.int64) + pred.astype(np.int64)  # 0 TN, 1 FP, 2 FN, 3 TP
    return np.bincount(codes * 4 + cell, minlength=4 * n_groups).reshape(n_groups, 4).astype(np.float64)


def _count_rates(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Rates of (B, 4) resampled counts; NaN where the denominator is 0."""
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for name, (num, den) in _COUNT_RATES.items():
            d = counts[:, list(den)].sum(1)
            out[name] = np.where(d > 0, counts[:, list(num)].sum(1) / np.where(d > 0, d, 1), np.nan)
    return out


def resampled_auc(y: np.ndarray, p: np.ndarray, codes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) ROC AUC of each resample (weighted Mann-Whitney, ties count 1/2; formula in the module doc).

    y (N,) in {0, 1}, p (N,) scores, codes (N,) object index of each stamp, weights (B, G) draws per
    object. NaN for a resample that holds one class only.
    """
    order = np.argsort(p, kind="stable")
    ps, ys, cs = p[order], y[order], codes[order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])  # first stamp of each distinct score level
    real = (ys == 1).astype(np.float64)
    out = np.empty(len(weights))
    for b0 in range(0, len(weights), _CHUNK):
        v = weights[b0:b0 + _CHUNK][:, cs]  # (b, N) stamp weights in score order
        pos = np.add.reduceat(v * real, starts, axis=1)  # (b, K) real weight per level
        neg = np.add.reduceat(v * (1.0 - real), starts, axis=1)  # (b, K) bogus weight per level
        below = np.cumsum(neg, axis=1) - neg  # bogus weight strictly below each level
        num = np.sum(pos * (below + 0.5 * neg), axis=1)
        den = pos.sum(1) * neg.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[b0:b0 + _CHUNK] = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return out


def percentile_interval(values: np.ndarray, level: float = DEFAULT_LEVEL) -> list[float] | None:
    """[q_(1-level)/2, q_(1+level)/2] of the finite values, or None when there are none."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return None
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def bootstrap_intervals(
    y_true,
    p_real,
    groups=None,
    thresholds: dict[str, float] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    auc: bool = True,
) -> dict[str, Any]:
    """Percentile bootstrap intervals over objects for metrics at fixed thresholds and for ROC AUC.

    Parameters
    ----------
    y_true : (N,) labels in {0, 1} (1 real)
    p_real : (N,) scores; a stamp is called real when p_real >= threshold
    groups : (N,) object of each stamp, or None (each stamp its own object)
    thresholds : {suffix: threshold}; for each, the intervals of accuracy, precision, recall,
        recall_bogus, fnr and fpr at that threshold are keyed `name + suffix` (suffix "" for the
        default {"": 0.5})
    n_resamples, level, seed : B, the interval level, the seed of the draws (same seed, same intervals)
    auc : also the interval of ROC AUC (key `roc_auc`)

    Returns {"method", "level", "n_resamples", "seed", "n_objects", "intervals": {key: [lo, hi] | None},
    "undefined_resamples": {key: count}, "notes": [...]}. A quantity undefined in every resample, or a
    set with fewer than two objects (nothing to resample between), gives None with a note.
    """
    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(p_real, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape:
        raise ValueError(f"y_true and p_real must be 1-d of the same length; got {y.shape} and {p.shape}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1; got {n_resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}")
    thresholds = {"": 0.5} if thresholds is None else dict(thresholds)
    codes, n_groups = group_codes(groups, len(y))
    keys = [name + suffix for suffix in thresholds for name in _COUNT_RATES] + (["roc_auc"] if auc else [])
    out: dict[str, Any] = {
        "method": "percentile bootstrap over objects" if groups is not None else "percentile bootstrap over stamps",
        "level": level, "n_resamples": n_resamples, "seed": seed, "n_objects": n_groups,
        "intervals": dict.fromkeys(keys), "undefined_resamples": {}, "notes": [],
    }
    if n_groups < 2:
        out["notes"].append(f"no intervals: {n_groups} object(s), nothing to resample between")
        return out
    w = resample_weights(n_groups, n_resamples, seed)  # (B, G)
    values: dict[str, np.ndarray] = {}
    for suffix, thr in thresholds.items():
        counts = w @ group_confusion(y, (p >= thr).astype(np.int64), codes, n_groups)  # (B, 4)
        values.update({name + suffix: v for name, v in _count_rates(counts).items()})
    if auc:
        if (y == 1).any() and (y == 0).any():
            values["roc_auc"] = resampled_auc(y, p, codes, w)
        else:
            values["roc_auc"] = np.full(n_resamples, np.nan)
    for key, v in values.items():
        bad = int(np.sum(~np.isfinite(v)))
        if bad:
            out["undefined_resamples"][key] = bad
        out["intervals"][key] = percentile_interval(v, level)
        if out["intervals"][key] is None:
            out["notes"].append(f"{key}: undefined in every resample (a class or a prediction is missing)")
    return out


__all__ = ["bootstrap_intervals", "group_codes", "group_confusion", "percentile_interval", "resample_weights",
           "resampled_auc", "wilson_interval"]
