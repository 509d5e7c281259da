"""Evaluation figures: training curves, ROC, confusion matrix, completeness and purity vs SNR, misclassified stamps.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot state, no display
needed) and written atomically as PNG. Each function returns the path it wrote.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hits_stamps.io.atomic import save_figure
from hits_stamps.stamps import LABEL_NAMES, StampSet


def _save(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    return save_figure(fig, path, dpi=dpi, bbox_inches="tight")


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Accuracy and loss vs epoch, training vs validation (two panels)."""
    fig = Figure(figsize=(9, 3.6))
    ax_acc, ax_loss = fig.subplots(1, 2)
    epochs = [row["epoch"] for row in history]
    for ax, key, label in ((ax_acc, "accuracy", "accuracy"), (ax_loss, "loss", "loss")):
        for prefix, name, style in (("", "training", "-o"), ("val_", "validation", "-s")):
            vals = [row.get(prefix + key) for row in history]
            if any(v is not None for v in vals):
                ax.plot(epochs, [np.nan if v is None else v for v in vals], style, ms=3, label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if not history:
        ax_acc.text(0.5, 0.5, "no training history", ha="center", va="center", transform=ax_acc.transAxes)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_roc(y_true: np.ndarray, p_real: np.ndarray, path: str | os.PathLike, title: str = "",
             metrics: dict[str, Any] | None = None) -> Path:
    """ROC curve (true positive rate vs false positive rate; log FPR axis) with FPR = 1% marked."""
    from sklearn.metrics import roc_curve

    fig = Figure(figsize=(4.8, 4.2))
    ax = fig.subplots()
    y = np.asarray(y_true)
    if len(np.unique(y)) < 2:
        ax.text(0.5, 0.5, "ROC undefined: one class only", ha="center", va="center", transform=ax.transAxes)
    else:
        fpr, tpr, _ = roc_curve(y, p_real)
        floor = 0.5 / max(int(np.sum(y == 0)), 1)
        ax.plot(np.maximum(fpr, floor), tpr, lw=1.5,
                label=f"AUC {metrics['roc_auc']:.4f}" if metrics and metrics.get("roc_auc") is not None else None)
        ax.axvline(0.01, color="grey", ls="--", lw=1)
        if metrics and metrics.get("fnr_at_fpr_1pct") is not None:
            ax.plot([0.01], [1 - metrics["fnr_at_fpr_1pct"]], "o", color="C3",
                    label=f"FNR {metrics['fnr_at_fpr_1pct']:.4f} at FPR 1% (tuned on this set)")
        if metrics and None not in (metrics.get("fnr_at_val_threshold"), metrics.get("fpr_at_val_threshold")):
            ax.plot([max(metrics["fpr_at_val_threshold"], floor)], [1 - metrics["fnr_at_val_threshold"]], "s",
                    color="C2", label=f"validation threshold: FNR {metrics['fnr_at_val_threshold']:.4f}, "
                                      f"FPR {metrics['fpr_at_val_threshold']:.4f}")
        ax.set_xscale("log")
        ax.set_xlim(floor, 1)
        ax.legend(loc="lower right")
    ax.set_xlabel("false positive rate (bogus called real)")
    ax.set_ylabel("true positive rate (real found)")
    ax.grid(alpha=0.3, which="both")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_confusion_matrix(cm: Sequence[Sequence[int]], path: str | os.PathLike, title: str = "") -> Path:
    """2x2 confusion matrix (rows true, columns predicted: bogus, real) with counts and row %."""
    m = np.asarray(cm, dtype=float)
    rows = m.sum(1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    fig = Figure(figsize=(3.8, 3.4))
    ax = fig.subplots()
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    names = [LABEL_NAMES[0], LABEL_NAMES[1]]
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{int(m[i, j])}\n{100 * frac[i, j]:.2f}%", ha="center", va="center",
                    color="white" if frac[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_completeness_purity(cp: dict[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """Completeness and purity per |SNR| bin with Wilson 95% error bars (`metrics.completeness_purity`).

    Each bin is drawn at its centre (lo + hi) / 2, the open top bin at the median |SNR| of its stamps;
    horizontal bars span the bin; a bin where a quantity is undefined is left out of that curve.
    """
    fig = Figure(figsize=(5.6, 3.8))
    ax = fig.subplots()
    rows = [r for r in cp.get("bins", []) if r.get("n")]
    for key, name, marker, shift in (("completeness", "completeness (real found)", "o", 0.97),
                                     ("purity", "purity (called real that are real)", "s", 1.03)):
        pts = [r for r in rows if r.get(key) is not None]
        if not pts:
            continue
        x = np.array([(r["lo"] + r["hi"]) / 2 if r["hi"] is not None else r["snr_median"] for r in pts]) * shift
        v = np.array([r[key] for r in pts])
        ci = np.array([r[key + "_ci95"] for r in pts])
        yerr = np.maximum(0.0, [v - ci[:, 0], ci[:, 1] - v])  # (2, bins); rounding may put v a hair outside
        ax.errorbar(x, v, yerr=yerr, fmt=marker + "-", capsize=3, ms=4, label=name)
    for r in rows:
        ax.annotate(f"{r['n_real']}/{r['n_called_real']}", ((r["lo"] + r["hi"]) / 2 if r["hi"] is not None
                    else r["snr_median"], 0.02), fontsize=7, ha="center", color="grey")
    if not rows:
        ax.text(0.5, 0.5, "no stamps with an SNR", ha="center", va="center", transform=ax.transAxes)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("|SNR| (bin centre)")
    ax.set_ylabel("fraction (Wilson 95% intervals)")
    ax.grid(alpha=0.3, which="both")
    if rows:
        ax.legend(loc="center right", fontsize=8)
    ax.set_title((title + "\n" if title else "") + f"threshold {cp.get('threshold', float('nan')):.4g}; "
                 "grey: real / called-real stamps per bin", fontsize=9)
    return _save(fig, path)


def plot_stamp_gallery(stamps: StampSet, path: str | os.PathLike, captions: Sequence[str] | None = None,
                       title: str = "", max_rows: int = 12) -> Path:
    """One row per stamp, one column per channel, each panel scaled to its 1-99% range."""
    n = min(len(stamps), max_rows)
    c = stamps.n_channels
    fig = Figure(figsize=(1.5 * c + 2.2, 1.5 * max(n, 1) + 0.4))
    if n == 0:
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, title or "no stamps", ha="center", va="center")
        return _save(fig, path)
    axes = np.atleast_2d(fig.subplots(n, c, squeeze=False))
    for i in range(n):
        for j in range(c):
            ax = axes[i, j]
            img = stamps.images[i, :, :, j]
            finite = img[np.isfinite(img)]
            lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
            ax.imshow(np.where(np.isfinite(img), img, np.nan), cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1,
                      origin="lower", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(stamps.channels[j], fontsize=9)
        if captions is not None:
            axes[i, 0].set_ylabel(captions[i], fontsize=7, rotation=0, ha="right", va="center", labelpad=4)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi=90)


def plot_misclassified(stamps: StampSet, p_real: np.ndarray, path: str | os.PathLike, threshold: float = 0.5,
                       max_rows: int = 12) -> Path:
    """Gallery of misclassified stamps (all channels), the most confidently wrong first."""
    p = np.asarray(p_real, dtype=float)
    y = stamps.labels
    wrong = np.flatnonzero((p >= threshold).astype(int) != y)
    # confidence of the wrong answer: p for false positives, 1 - p for false negatives
    conf = np.where(y[wrong] == 1, 1 - p[wrong], p[wrong])
    order = wrong[np.argsort(-conf, kind="stable")][:max_rows]
    sub = stamps[order]
    captions = []
    for k, i in enumerate(order):
        parts = [str(sub.ids[k])[:22], f"true {LABEL_NAMES[int(y[i])]}", f"p_real {p[i]:.3f}"]
        if stamps.kind is not None:
            parts.append(str(stamps.kind[i]))
        if stamps.snr is not None and np.isfinite(stamps.snr[i]):
            parts.append(f"snr {stamps.snr[i]:.1f}")
        captions.append("\n".join(parts))
    title = (f"{len(wrong)} misclassified of {len(stamps)} (showing {len(order)})" if len(wrong)
             else f"no misclassified stamps among {len(stamps)}")
    return plot_stamp_gallery(sub, path, captions=captions, title=title, max_rows=max_rows)


__all__ = [
    "plot_completeness_purity",
    "plot_confusion_matrix",
    "plot_misclassified",
    "plot_roc",
    "plot_stamp_gallery",
    "plot_training_curves",
]
