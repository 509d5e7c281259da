"""The report's own figures (the data section and the cross-model training curves), as PNG bytes.

Everything else in the report reuses the PNGs that evaluation and judging wrote. Matplotlib runs
with the Agg backend and never opens a window.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np

from hits_stamps.stamps import StampSet

REAL_COLOR = "#d95f02"
BOGUS_COLOR = "#1b9e77"
MODEL_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig, dpi: int = 110) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def example_indices(stamps: StampSet, per_kind: int = 1, seed: int = 0) -> list[tuple[str, int]]:
    """(kind, index) of `per_kind` examples of every kind, picked near the kind's median SNR.

    Without a `kind` column the labels stand in for kinds (`real`, `bogus`).
    """
    kinds = stamps.kind if stamps.kind is not None else np.where(stamps.labels == 1, "real", "bogus")
    snr = stamps.snr if stamps.snr is not None else np.zeros(len(stamps))
    rng = np.random.default_rng(seed)
    out = []
    for kind in sorted(set(kinds.tolist())):
        idx = np.flatnonzero(kinds == kind)
        s = np.nan_to_num(snr[idx], nan=0.0)
        order = idx[np.argsort(np.abs(s - np.median(s)) + 1e-9 * rng.random(len(idx)))]
        out.extend((str(kind), int(i)) for i in order[:per_kind])
    return out


def _show_channel(ax, img: np.ndarray, channel: str) -> None:
    finite = np.isfinite(img)
    vals = img[finite]
    if vals.size == 0:
        ax.imshow(np.zeros_like(img), cmap="gray")
    elif channel in ("difference", "snr") or channel.startswith("diff"):
        lim = float(np.percentile(np.abs(vals), 99.5)) or 1.0
        ax.imshow(np.where(finite, img, 0.0), cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    else:
        lo, hi = np.percentile(vals, [1, 99.5])
        ax.imshow(np.where(finite, img, lo), cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def stamp_examples_png(stamps: StampSet, title: str, seed: int = 0) -> bytes:
    """One column per kind (an example near the kind's median SNR), one row per channel."""
    plt = _plt()
    picks = example_indices(stamps, 1, seed)
    c = stamps.n_channels
    fig, axes = plt.subplots(c, len(picks), figsize=(1.35 * len(picks) + 0.6, 1.35 * c + 0.7), squeeze=False)
    for j, (kind, i) in enumerate(picks):
        label = {1: "real", 0: "bogus"}.get(int(stamps.labels[i]), "?")
        snr = "" if stamps.snr is None or not np.isfinite(stamps.snr[i]) else f"\nSNR {stamps.snr[i]:.0f}"
        axes[0, j].set_title(f"{kind}\n({label}){snr}", fontsize=8,
                             color=REAL_COLOR if label == "real" else BOGUS_COLOR)
        for k in range(c):
            _show_channel(axes[k, j], stamps.images[i, :, :, k], stamps.channels[k])
    for k in range(c):
        axes[k, 0].set_ylabel(stamps.channels[k], fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def class_balance_png(sets: Mapping[str, StampSet]) -> bytes:
    """Left: real vs bogus counts per set; right: stamps per kind per set."""
    plt = _plt()
    names = list(sets)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.2), gridspec_kw={"width_ratios": [1, 2]})
    real = [sets[n].class_balance()["real"] for n in names]
    bogus = [sets[n].class_balance()["bogus"] for n in names]
    y = np.arange(len(names))
    ax1.barh(y, real, color=REAL_COLOR, label="real (1)")
    ax1.barh(y, bogus, left=real, color=BOGUS_COLOR, label="bogus (0)")
    for yi, r, b in zip(y, real, bogus, strict=True):
        tot = max(r + b, 1)
        ax1.text(r + b, yi, f" {r / tot:.0%} real", va="center", fontsize=8)
    ax1.set_yticks(y, names)
    ax1.invert_yaxis()
    ax1.set_xlabel("stamps")
    ax1.legend(fontsize=8, loc="lower right")
    ax1.set_title("class balance", fontsize=10)
    ax1.margins(x=0.25)
    kinds = sorted({k for n in names for k in sets[n].kind_counts()})
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(kinds))
    for j, n in enumerate(names):
        counts = sets[n].kind_counts()
        total = max(len(sets[n]), 1)
        ax2.bar(x + j * width, [counts.get(k, 0) / total for k in kinds], width, label=n,
                color=MODEL_COLORS[j % len(MODEL_COLORS)])
    ax2.set_xticks(x + width * (len(names) - 1) / 2, kinds, rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("fraction of the set")
    ax2.set_title("kinds", fontsize=10)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def training_curves_png(histories: Mapping[str, list[dict]]) -> bytes | None:
    """Validation accuracy and validation loss per epoch, one line per classifier."""
    rows = {k: h for k, h in histories.items() if h and "val_accuracy" in h[0]}
    if not rows:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    for j, (name, hist) in enumerate(rows.items()):
        ep = [r["epoch"] for r in hist]
        color = MODEL_COLORS[j % len(MODEL_COLORS)]
        ax1.plot(ep, [r["val_accuracy"] for r in hist], "o-", color=color, label=name)
        ax1.plot(ep, [r.get("accuracy", np.nan) for r in hist], "--", color=color, alpha=0.5)
        ax2.plot(ep, [r["val_loss"] for r in hist], "o-", color=color, label=name)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("accuracy")
    ax1.set_title("validation (solid) and training (dashed) accuracy", fontsize=10)
    ax1.legend(fontsize=8)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation loss (each model's own objective)")
    ax2.set_yscale("log")
    ax2.set_title("validation loss", fontsize=10)
    for ax in (ax1, ax2):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def durations_png(durations: Mapping[str, float]) -> bytes | None:
    """Horizontal bars: seconds per step."""
    items = [(k, v) for k, v in durations.items() if k != "total"]
    if not items:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(items) + 0.9))
    y = np.arange(len(items))
    ax.barh(y, [v for _, v in items], color="#4c72b0")
    ax.set_yticks(y, [k for k, _ in items], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    for yi, (_, v) in zip(y, items, strict=True):
        ax.text(v, yi, f" {v:.0f}", va="center", fontsize=7)
    ax.margins(x=0.12)
    fig.tight_layout()
    return _png(fig)


def roc_overlay_png(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str) -> bytes | None:
    """ROC curves of several classifiers on one test set: labels (N,) and p_real (N,) per model.

    The x axis (false positive rate) is logarithmic, as in the evaluation's own ROC figures, so the
    operating region near FPR = 1% is visible; the dashed line marks FPR = 1%.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    usable = {k: v for k, v in curves.items() if len(np.unique(v[0])) == 2}
    if not usable:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    floor = 1.0
    for j, (name, (y, p)) in enumerate(usable.items()):
        fpr, tpr, _ = roc_curve(y, p)
        n_neg = max(int(np.sum(y == 0)), 1)
        floor = min(floor, 0.5 / n_neg)
        ax.plot(np.maximum(fpr, 0.5 / n_neg), tpr, color=MODEL_COLORS[j % len(MODEL_COLORS)],
                label=f"{name} (AUC {roc_auc_score(y, p):.4f})", drawstyle="steps-post")
    ax.axvline(0.01, color="gray", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false positive rate (bogus called real)")
    ax.set_ylabel("true positive rate (real found)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7.5, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def reliability_overlay_png(bins: Mapping[str, dict], title: str) -> bytes | None:
    """Reliability of several classifiers: accuracy vs mean confidence per bin (from metrics.json)."""
    usable = {k: v for k, v in bins.items() if v and v.get("confidence") and v.get("accuracy")}
    if not usable:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 4.2))
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=0.8, label="perfect calibration")
    for j, (name, b) in enumerate(usable.items()):
        conf = np.array([np.nan if c is None else c for c in b["confidence"]], dtype=float)
        acc = np.array([np.nan if a is None else a for a in b["accuracy"]], dtype=float)
        ok = np.isfinite(conf) & np.isfinite(acc)
        ax.plot(conf[ok], acc[ok], "o-", ms=3.5, color=MODEL_COLORS[j % len(MODEL_COLORS)], label=name)
    ax.set_xlabel("confidence (mean predicted probability of the predicted class)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5)
    fig.tight_layout()
    return _png(fig)


def referral_overlay_png(curves: Mapping[str, dict], title: str) -> bytes | None:
    """Accuracy on the kept stamps vs the fraction referred (most uncertain first), per classifier."""
    usable = {k: v for k, v in curves.items() if v and v.get("fraction") and v.get("accuracy")}
    if not usable:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 4.2))
    for j, (name, c) in enumerate(usable.items()):
        frac = np.asarray(c["fraction"], dtype=float)
        acc = np.array([np.nan if a is None else a for a in c["accuracy"]], dtype=float)
        ax.plot(frac, acc, "-", color=MODEL_COLORS[j % len(MODEL_COLORS)], label=name)
    ax.axvline(0.1, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("fraction of stamps referred to a human (most uncertain first)")
    ax.set_ylabel("accuracy on the stamps kept")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5)
    fig.tight_layout()
    return _png(fig)
