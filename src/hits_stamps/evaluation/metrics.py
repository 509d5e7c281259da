"""Classification metrics of real/bogus probabilities, overall, per SNR bin and per kind.

Conventions: label 1 is real (positive), 0 is bogus (negative); a stamp is predicted real when
p_real >= threshold (0.5 unless given). FPR = FP / (FP + TN) (bogus called real), FNR = FN / (FN +
TP) (real called bogus). A quantity that is undefined for the input (e.g. ROC AUC with one class, FNR
without real stamps) is None, with the reason in `notes`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SNR_BINS: tuple[tuple[str, float, float], ...] = (
    ("5-10", 5.0, 10.0),
    ("10-20", 10.0, 20.0),
    ("20-50", 20.0, 50.0),
    (">50", 50.0, np.inf),
)
TARGET_FPR = 0.01


def _ratio(num: int, den: int) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _check_inputs(y_true, p_real, snr, kind) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    y = np.asarray(y_true)
    p = np.asarray(p_real, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape:
        raise ValueError(f"y_true and p_real must be 1-d of the same length; got {y.shape} and {p.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        found = sorted(set(np.unique(y[~np.isin(y, (0, 1))]).tolist()))[:5]
        raise ValueError(f"y_true must hold labels 0 (bogus) or 1 (real); found {found}")
    if p.size and (not np.isfinite(p).all() or p.min() < 0 or p.max() > 1):
        raise ValueError("p_real must be finite probabilities in [0, 1]")
    if snr is not None:
        snr = np.asarray(snr, dtype=np.float64)
        if snr.shape != y.shape:
            raise ValueError(f"snr must have shape {y.shape}; got {snr.shape}")
    if kind is not None:
        kind = np.asarray(kind).astype(str)
        if kind.shape != y.shape:
            raise ValueError(f"kind must have shape {y.shape}; got {kind.shape}")
    return y.astype(np.int64), p, snr, kind


def confusion_counts(y: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, int]:
    """(tn, fp, fn, tp) for labels and predictions in {0, 1}."""
    tn = int(np.sum((y == 0) & (pred == 0)))
    fp = int(np.sum((y == 0) & (pred == 1)))
    fn = int(np.sum((y == 1) & (pred == 0)))
    tp = int(np.sum((y == 1) & (pred == 1)))
    return tn, fp, fn, tp


def fnr_at_fpr(y: np.ndarray, p: np.ndarray, target_fpr: float = TARGET_FPR) -> tuple[float, float]:
    """FNR at the lowest threshold whose FPR is <= target_fpr, and that threshold.

    Stamps with p_real >= threshold are called real. Needs both classes. If even the top-scored
    stamp is bogus and one false positive already exceeds the target, the threshold is just above
    the highest score and FNR is 1.
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)  # thr decreasing, thr[0] = inf
    idx = int(np.flatnonzero(fpr <= target_fpr + 1e-12)[-1])
    if not np.isfinite(thr[idx]):
        return 1.0, float(np.nextafter(np.max(p), np.inf))
    return float(1.0 - tpr[idx]), float(thr[idx])


def classification_metrics(
    y_true,
    p_real,
    snr=None,
    kind=None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Score real/bogus probabilities.

    Parameters
    ----------
    y_true : (N,) labels in {0, 1}
    p_real : (N,) probability of the real class
    snr : (N,) optional signal-to-noise; binned by |snr| into 5-10, 10-20, 20-50, >50
    kind : (N,) optional str kinds (`sn`, `cosmic_ray`, ...)

    Returns a dict with n, n_real, n_bogus, threshold, accuracy, precision, recall, f1, roc_auc,
    fpr, fnr (at `threshold`), fnr_at_fpr_1pct and threshold_at_fpr_1pct, confusion_matrix
    ([[TN, FP], [FN, TP]]: rows true bogus/real, columns predicted bogus/real), by_snr
    ({bin: {n, n_real, accuracy, fnr}}; stamps outside 5..inf or with NaN SNR are counted in
    `n_outside_snr_bins`), by_kind ({kind: {n, label, accuracy, fnr | fpr}}; `fnr` for kinds whose
    stamps are all real, `fpr` for all-bogus kinds, both for mixed kinds), and notes.
    """
    y, p, snr, kind = _check_inputs(y_true, p_real, snr, kind)
    pred = (p >= threshold).astype(np.int64)
    tn, fp, fn, tp = confusion_counts(y, pred)
    n_real, n_bogus = int(np.sum(y == 1)), int(np.sum(y == 0))
    notes: list[str] = []
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    if precision is None:
        notes.append("precision undefined: no stamp predicted real")
    if recall is None:
        notes.append("recall and fnr undefined: no real stamps")
    if n_bogus == 0:
        notes.append("fpr undefined: no bogus stamps")
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)  # = 2PR / (P + R) where both are defined
    roc_auc = fnr1 = thr1 = None
    if n_real and n_bogus:
        from sklearn.metrics import roc_auc_score

        roc_auc = float(roc_auc_score(y, p))
        fnr1, thr1 = fnr_at_fpr(y, p, TARGET_FPR)
    else:
        notes.append(f"roc_auc and fnr_at_fpr_1pct undefined: only one class (real {n_real}, bogus {n_bogus})")
    out: dict[str, Any] = {
        "n": int(len(y)),
        "n_real": n_real,
        "n_bogus": n_bogus,
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, len(y)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "roc_auc": roc_auc,
        "fpr": _ratio(fp, fp + tn),
        "fnr": _ratio(fn, fn + tp),
        "fnr_at_fpr_1pct": fnr1,
        "threshold_at_fpr_1pct": thr1,
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "by_snr": None,
        "by_kind": None,
        "notes": notes,
    }
    if snr is not None:
        out["by_snr"] = _by_snr(y, pred, snr)
        in_bins = np.abs(snr) >= SNR_BINS[0][1]
        out["n_outside_snr_bins"] = int(np.sum(~in_bins))
    if kind is not None:
        out["by_kind"] = _by_kind(y, pred, kind)
    return out


def _by_snr(y: np.ndarray, pred: np.ndarray, snr: np.ndarray) -> dict[str, dict[str, Any]]:
    a = np.abs(snr)
    res = {}
    for name, lo, hi in SNR_BINS:
        sel = (a >= lo) & (a < hi)
        ys, ps = y[sel], pred[sel]
        n_real = int(np.sum(ys == 1))
        res[name] = {
            "n": int(sel.sum()),
            "n_real": n_real,
            "accuracy": _ratio(int(np.sum(ys == ps)), int(sel.sum())),
            "fnr": _ratio(int(np.sum((ys == 1) & (ps == 0))), n_real),
        }
    return res


def _by_kind(y: np.ndarray, pred: np.ndarray, kind: np.ndarray) -> dict[str, dict[str, Any]]:
    res = {}
    for k in np.unique(kind):
        sel = kind == k
        ys, ps = y[sel], pred[sel]
        n_real, n_bogus = int(np.sum(ys == 1)), int(np.sum(ys == 0))
        row: dict[str, Any] = {
            "n": int(sel.sum()),
            "label": "real" if n_bogus == 0 else ("bogus" if n_real == 0 else "mixed"),
            "accuracy": _ratio(int(np.sum(ys == ps)), int(sel.sum())),
        }
        if n_real:
            row["fnr"] = _ratio(int(np.sum((ys == 1) & (ps == 0))), n_real)
        if n_bogus:
            row["fpr"] = _ratio(int(np.sum((ys == 0) & (ps == 1))), n_bogus)
        res[str(k)] = row
    return res


__all__ = ["SNR_BINS", "classification_metrics", "confusion_counts", "fnr_at_fpr"]
