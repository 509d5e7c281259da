"""Classification metrics of real/bogus probabilities, overall, per SNR bin and per kind, with intervals.

Conventions: label 1 is real (positive), 0 is bogus (negative); a stamp is predicted real when
p_real >= threshold (0.5 unless given). FPR = FP / (FP + TN) (bogus called real), FNR = FN / (FN +
TP) (real called bogus). A quantity that is undefined for the input (e.g. ROC AUC with one class, FNR
without real stamps) is None, with the reason in `notes`.

The FPR = 1% operating point is honest only when its threshold is chosen on other objects:
`threshold_at_fpr` picks it from validation labels and scores, and `classification_metrics(...,
threshold_fpr1=t)` reports the test FNR and FPR at that fixed t (the test FPR is then whatever it
is, near 1% if validation and test agree). `fnr_at_fpr_1pct` tunes the threshold on the scored set
itself and is optimistic. Intervals are bootstrap intervals over objects (`intervals.py`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hits_stamps.evaluation.intervals import DEFAULT_RESAMPLES, bootstrap_intervals, group_codes, wilson_interval

SNR_BINS: tuple[tuple[str, float, float], ...] = (
    ("5-10", 5.0, 10.0),
    ("10-20", 10.0, 20.0),
    ("20-50", 20.0, 50.0),
    (">50", 50.0, np.inf),
)
#: Extra bin for completeness/purity of stamps below the detection cut, used when a set has any.
LOW_SNR_BIN: tuple[str, float, float] = ("<5", 0.0, 5.0)
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


def threshold_at_fpr(y_val, p_val, target_fpr: float = TARGET_FPR) -> float:
    """The FPR = `target_fpr` threshold chosen on validation labels and scores (other objects than the test's).

    The lowest threshold t with FP(t) / n_bogus <= target_fpr on the validation set (`fnr_at_fpr`);
    stamps with p_real >= t are called real. Raises ValueError when the validation set lacks a class.
    """
    y, p, _, _ = _check_inputs(y_val, p_val, None, None)
    n_real, n_bogus = int(np.sum(y == 1)), int(np.sum(y == 0))
    if not (n_real and n_bogus):
        raise ValueError(f"the validation set needs real and bogus stamps to choose a threshold; "
                         f"found {n_real} real and {n_bogus} bogus")
    return fnr_at_fpr(y, p, target_fpr)[1]


def classification_metrics(
    y_true,
    p_real,
    snr=None,
    kind=None,
    threshold: float = 0.5,
    groups=None,
    threshold_fpr1: float | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Score real/bogus probabilities, with bootstrap intervals over objects.

    Parameters
    ----------
    y_true : (N,) labels in {0, 1}
    p_real : (N,) probability of the real class
    snr : (N,) optional signal-to-noise; binned by |snr| into 5-10, 10-20, 20-50, >50
    kind : (N,) optional str kinds (`sn`, `cosmic_ray`, ...)
    groups : (N,) optional object of each stamp (None: each stamp its own object); the bootstrap
        resamples objects, and per-bin / per-kind rows count objects
    threshold_fpr1 : the FPR = 1% threshold chosen on validation (`threshold_at_fpr`), or None
    n_resamples : bootstrap resamples for the intervals (0: no intervals); seed : their seed

    Returns a dict with n, n_objects, n_real, n_bogus, threshold, accuracy, precision, recall (real
    recall, TPR), recall_bogus (bogus recall, TNR), f1, roc_auc, fpr, fnr (at `threshold`),
    fnr_at_fpr_1pct and threshold_at_fpr_1pct (threshold tuned on this set: optimistic),
    confusion_matrix ([[TN, FP], [FN, TP]]: rows true bogus/real, columns predicted bogus/real),
    by_snr ({bin: {n, n_real, accuracy, fnr}}; stamps outside 5..inf or with NaN SNR are counted in
    `n_outside_snr_bins`), completeness_purity (`completeness_purity`, at threshold_fpr1 when given,
    else at `threshold`), by_kind ({kind: {n, n_objects, label, n_correct, accuracy, accuracy_ci95,
    fnr | fpr, fnr_ci95 | fpr_ci95}}; `fnr` for kinds whose stamps are all real, `fpr` for all-bogus
    kinds, both for mixed kinds; Wilson intervals), and notes. With threshold_fpr1: threshold_fpr1,
    fnr_at_val_threshold, fpr_at_val_threshold, confusion_matrix_at_val_threshold. With
    n_resamples > 0: ci95 ({accuracy, precision, recall, recall_bogus, fnr, fpr, roc_auc, and
    fnr_at_val_threshold, fpr_at_val_threshold, recall_at_val_threshold, recall_bogus_at_val_threshold
    with threshold_fpr1: [lo, hi] | None}) and bootstrap (method, level, n_resamples, seed,
    n_objects, undefined_resamples, notes).
    """
    y, p, snr, kind = _check_inputs(y_true, p_real, snr, kind)
    codes, n_objects = group_codes(groups, len(y))
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
        "n_objects": n_objects,
        "n_real": n_real,
        "n_bogus": n_bogus,
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, len(y)),
        "precision": precision,
        "recall": recall,
        "recall_bogus": _ratio(tn, tn + fp),
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
    thresholds = {"": float(threshold)}
    if threshold_fpr1 is not None:
        pred_val = (p >= threshold_fpr1).astype(np.int64)
        vtn, vfp, vfn, vtp = confusion_counts(y, pred_val)
        out.update({
            "threshold_fpr1": float(threshold_fpr1),
            "fnr_at_val_threshold": _ratio(vfn, vfn + vtp),
            "fpr_at_val_threshold": _ratio(vfp, vfp + vtn),
            "confusion_matrix_at_val_threshold": [[vtn, vfp], [vfn, vtp]],
        })
        thresholds["_at_val_threshold"] = float(threshold_fpr1)
    if n_resamples > 0:
        boot = bootstrap_intervals(y, p, groups, thresholds, n_resamples=n_resamples, seed=seed)
        keep = ["accuracy", "precision", "recall", "recall_bogus", "fnr", "fpr", "roc_auc"]
        if threshold_fpr1 is not None:
            keep += [k + "_at_val_threshold" for k in ("fnr", "fpr", "recall", "recall_bogus")]
        out["ci95"] = {k: boot["intervals"][k] for k in keep}
        out["bootstrap"] = {k: v for k, v in boot.items() if k != "intervals"}
    cp_threshold = float(threshold if threshold_fpr1 is None else threshold_fpr1)
    if snr is not None:
        out["by_snr"] = _by_snr(y, pred, snr)
        in_bins = np.abs(snr) >= SNR_BINS[0][1]
        out["n_outside_snr_bins"] = int(np.sum(~in_bins))
        out["completeness_purity"] = completeness_purity(y, p, snr, cp_threshold, groups)
        out["completeness_purity"]["threshold_source"] = (
            "threshold_fpr1 (validation)" if threshold_fpr1 is not None else "threshold")
    if kind is not None:
        out["by_kind"] = _by_kind(y, pred, kind, codes)
    return out


def completeness_purity(y_true, p_real, snr, threshold: float, groups=None) -> dict[str, Any]:
    """Completeness and purity of the stamps called real, per |SNR| bin.

    In a bin, with TP real stamps called real, FN real stamps missed and FP bogus stamps called real
    (p_real >= threshold):

        completeness = TP / (TP + FN)     (real recall in the bin)
        purity       = TP / (TP + FP)     (precision of the stamps called real in the bin)

    with Wilson 95% intervals (`wilson_interval`, stamps treated as independent). Purity depends on
    the set's ratio of bogus to real stamps. Bins: SNR_BINS, preceded by "<5" when any stamp has
    |SNR| < 5; NaN SNRs are counted in `n_no_snr`.

    Returns {"threshold", "bins": [{bin, lo, hi (None: open), snr_median (of |SNR| in the bin), n,
    n_objects, n_real, n_found (TP), n_called_real (TP + FP), completeness, completeness_ci95, purity,
    purity_ci95}], "n_no_snr"}.
    """
    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(p_real, dtype=np.float64)
    a = np.abs(np.asarray(snr, dtype=np.float64))
    codes, _ = group_codes(groups, len(y))
    pred = p >= threshold
    finite = np.isfinite(a)
    bins = ((LOW_SNR_BIN,) if np.any(finite & (a < SNR_BINS[0][1])) else ()) + SNR_BINS
    rows = []
    for name, lo, hi in bins:
        sel = finite & (a >= lo) & (a < hi)
        tp = int(np.sum(sel & pred & (y == 1)))
        fn = int(np.sum(sel & ~pred & (y == 1)))
        fp = int(np.sum(sel & pred & (y == 0)))
        rows.append({
            "bin": name, "lo": lo, "hi": None if np.isinf(hi) else hi,
            "snr_median": float(np.median(a[sel])) if sel.any() else None,
            "n": int(sel.sum()), "n_objects": int(np.unique(codes[sel]).size), "n_real": tp + fn,
            "n_found": tp, "n_called_real": tp + fp,
            "completeness": _ratio(tp, tp + fn), "completeness_ci95": wilson_interval(tp, tp + fn),
            "purity": _ratio(tp, tp + fp), "purity_ci95": wilson_interval(tp, tp + fp),
        })
    return {"threshold": float(threshold), "bins": rows, "n_no_snr": int(np.sum(~finite))}


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


def _by_kind(y: np.ndarray, pred: np.ndarray, kind: np.ndarray, codes: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per kind: counts, objects, accuracy / FNR / FPR with Wilson 95% intervals (stamps as trials)."""
    res = {}
    for k in np.unique(kind):
        sel = kind == k
        ys, ps = y[sel], pred[sel]
        n, n_real, n_bogus = int(sel.sum()), int(np.sum(ys == 1)), int(np.sum(ys == 0))
        n_correct = int(np.sum(ys == ps))
        row: dict[str, Any] = {
            "n": n,
            "n_objects": int(np.unique(codes[sel]).size),
            "label": "real" if n_bogus == 0 else ("bogus" if n_real == 0 else "mixed"),
            "n_correct": n_correct,
            "accuracy": _ratio(n_correct, n),
            "accuracy_ci95": wilson_interval(n_correct, n),
        }
        if n_real:
            fn = int(np.sum((ys == 1) & (ps == 0)))
            row["fnr"] = _ratio(fn, n_real)
            row["fnr_ci95"] = wilson_interval(fn, n_real)
        if n_bogus:
            fp = int(np.sum((ys == 0) & (ps == 1)))
            row["fpr"] = _ratio(fp, n_bogus)
            row["fpr_ci95"] = wilson_interval(fp, n_bogus)
        res[str(k)] = row
    return res


__all__ = ["LOW_SNR_BIN", "SNR_BINS", "classification_metrics", "completeness_purity", "confusion_counts",
           "fnr_at_fpr", "threshold_at_fpr"]
