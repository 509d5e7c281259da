"""Every figure hits-stamps draws for evaluation, generation, the documentation and the run report.

matplotlib's object API on the Agg canvas: no pyplot state, no display, nothing to close. One helper
writes a figure (`save_png`, atomically) and one returns its bytes (`png_bytes`, for the report's
embedded figures); one function draws ROC curves (`draw_roc`), used by the per-model ROC figure and
the report's overlay of every classifier. Stamp panels share one scaling (`show_channel`): template
and science from their 1st to 99.5th percentile in grey, difference and SNR symmetric around zero
in a diverging map, unless a figure says otherwise.

Sections: shared pieces; evaluation (training curves, ROC, confusion matrix, completeness and
purity, misclassified stamps); generated stamps (real beside generated, latent interpolation);
documentation stamps (one per kind, real beside simulated); the report's own figures (example
stamps, class balance, cross-model training curves, ROC, reliability and referral overlays).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hits_stamps.io.atomic import save_figure
from hits_stamps.stamps import LABEL_NAMES, StampSet

REAL_COLOR = "#d95f02"
BOGUS_COLOR = "#1b9e77"
MODEL_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
CHANNEL_TITLES = ("template", "science", "difference", "SNR")


# ----------------------------------------------------------------------------------------------
# shared pieces


def new_figure(figsize: tuple[float, float], **kwargs: Any) -> Figure:
    """A figure with an Agg canvas attached (so layout works before saving); kwargs go to `Figure`."""
    fig = Figure(figsize=figsize, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | os.PathLike, dpi: float | None = 110, tight: bool = True) -> Path:
    """Write `fig` as a PNG at `path`, atomically; returns the path.

    `dpi` None keeps the figure's own; `tight` crops the white margin (`bbox_inches="tight"`).
    """
    kwargs: dict[str, Any] = {"bbox_inches": "tight"} if tight else {}
    if dpi is not None:
        kwargs["dpi"] = dpi
    return save_figure(fig, path, **kwargs)


def png_bytes(fig: Figure, dpi: float = 110) -> bytes:
    """`fig` as PNG bytes (tight margins), for figures that are embedded rather than written."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def show_channel(ax, img: np.ndarray, channel: str, origin: str = "upper") -> None:
    """One channel of one stamp: difference and SNR symmetric around zero (RdBu_r, 99.5th percentile of
    |value|), other channels grey from their 1st to 99.5th percentile; NaN pixels drawn as the low end."""
    finite = np.isfinite(img)
    vals = img[finite]
    if vals.size == 0:
        ax.imshow(np.zeros_like(img), cmap="gray", origin=origin)
    elif channel.lower() in ("difference", "snr") or channel.startswith("diff"):
        lim = float(np.percentile(np.abs(vals), 99.5)) or 1.0
        ax.imshow(np.where(finite, img, 0.0), cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest",
                  origin=origin)
    else:
        lo, hi = np.percentile(vals, [1, 99.5])
        ax.imshow(np.where(finite, img, lo), cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6), interpolation="nearest",
                  origin=origin)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_roc(ax, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], colors: Sequence[str] = MODEL_COLORS,
             with_auc: bool = True) -> float:
    """ROC curves (true positive rate vs false positive rate) of labels (N,) and p_real (N,) per name.

    The FPR axis is logarithmic, floored at half of one negative (a zero FPR stays visible), so the
    operating region near FPR = 1% shows; the dashed line marks FPR = 1%. `with_auc` appends each
    curve's ROC AUC to its label. Returns the floor (the axis' left end). Every curve needs both classes.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    floor = 1.0
    for j, (name, (y, p)) in enumerate(curves.items()):
        y = np.asarray(y)
        fpr, tpr, _ = roc_curve(y, p)
        n_neg = max(int(np.sum(y == 0)), 1)
        floor = min(floor, 0.5 / n_neg)
        label = f"{name} (AUC {roc_auc_score(y, p):.4f})" if with_auc else name
        ax.plot(np.maximum(fpr, 0.5 / n_neg), tpr, color=colors[j % len(colors)], lw=1.5, label=label,
                drawstyle="steps-post")
    ax.axvline(0.01, color="gray", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false positive rate (bogus called real)")
    ax.set_ylabel("true positive rate (real found)")
    ax.grid(alpha=0.3, which="both")
    return floor


def _two_classes(y: np.ndarray) -> bool:
    return len(np.unique(np.asarray(y))) == 2


# ----------------------------------------------------------------------------------------------
# evaluation: eval/<model>/<test set>/*.png


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Accuracy and loss vs epoch, training vs validation (two panels)."""
    fig = new_figure((9, 3.6))
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
    return save_png(fig, path)


def plot_roc(y_true: np.ndarray, p_real: np.ndarray, path: str | os.PathLike, title: str = "",
             metrics: dict[str, Any] | None = None) -> Path:
    """One classifier's ROC curve (`draw_roc`) with its operating points at FPR = 1% from `metrics`."""
    fig = new_figure((4.8, 4.2))
    ax = fig.subplots()
    y = np.asarray(y_true)
    if not _two_classes(y):
        ax.text(0.5, 0.5, "ROC undefined: one class only", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("false positive rate (bogus called real)")
        ax.set_ylabel("true positive rate (real found)")
    else:
        auc = metrics.get("roc_auc") if metrics else None
        floor = draw_roc(ax, {f"AUC {auc:.4f}" if auc is not None else "": (y, p_real)}, ("C0",), with_auc=False)
        if metrics and metrics.get("fnr_at_fpr_1pct") is not None:
            ax.plot([0.01], [1 - metrics["fnr_at_fpr_1pct"]], "o", color="C3",
                    label=f"FNR {metrics['fnr_at_fpr_1pct']:.4f} at FPR 1% (tuned on this set)")
        if metrics and None not in (metrics.get("fnr_at_val_threshold"), metrics.get("fpr_at_val_threshold")):
            ax.plot([max(metrics["fpr_at_val_threshold"], floor)], [1 - metrics["fnr_at_val_threshold"]], "s",
                    color="C2", label=f"validation threshold: FNR {metrics['fnr_at_val_threshold']:.4f}, "
                                      f"FPR {metrics['fpr_at_val_threshold']:.4f}")
        ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    return save_png(fig, path)


def plot_confusion_matrix(cm: Sequence[Sequence[int]], path: str | os.PathLike, title: str = "") -> Path:
    """2x2 confusion matrix (rows true, columns predicted: bogus, real) with counts and row %."""
    m = np.asarray(cm, dtype=float)
    rows = m.sum(1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    fig = new_figure((3.8, 3.4))
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
    return save_png(fig, path)


def plot_completeness_purity(cp: dict[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """Completeness and purity per |SNR| bin with Wilson 95% error bars (`metrics.completeness_purity`).

    Each bin is drawn at its centre (lo + hi) / 2, the open top bin at the median |SNR| of its stamps;
    horizontal bars span the bin; a bin where a quantity is undefined is left out of that curve.
    """
    fig = new_figure((5.6, 3.8))
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
    return save_png(fig, path)


def plot_stamp_gallery(stamps: StampSet, path: str | os.PathLike, captions: Sequence[str] | None = None,
                       title: str = "", max_rows: int = 12) -> Path:
    """One row per stamp, one column per channel, each panel scaled to its 1-99% range."""
    n = min(len(stamps), max_rows)
    c = stamps.n_channels
    fig = new_figure((1.5 * c + 2.2, 1.5 * max(n, 1) + 0.4))
    if n == 0:
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, title or "no stamps", ha="center", va="center")
        return save_png(fig, path)
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
    return save_png(fig, path, dpi=90)


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


# ----------------------------------------------------------------------------------------------
# generated stamps: generation/*.png (one mosaic image per figure: fast to draw, small to store)


def _limits(img: np.ndarray) -> tuple[float, float]:
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _normalise(img: np.ndarray, limits: tuple[float, float] | None = None) -> np.ndarray:
    lo, hi = limits or _limits(img)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)


def _mosaic(panels: list[list[np.ndarray | None]], gap: int = 2) -> np.ndarray:
    """Rows of equally sized (h, w) panels in [0, 1] -> one image with NaN gaps (None: an empty column)."""
    h, w = next(p for row in panels for p in row if p is not None).shape
    n_rows, n_cols = len(panels), max(len(r) for r in panels)
    out = np.full((n_rows * (h + gap) - gap, n_cols * (w + gap) - gap), np.nan)
    for i, row in enumerate(panels):
        for j, p in enumerate(row):
            if p is not None:
                out[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = p
    return out


def _show_mosaic(mosaic: np.ndarray, col_titles: list[str], panel_w: int, gap: int, size: tuple[float, float],
                 suptitle: str, row_titles: list[str] | None = None, panel_h: int = 0) -> Figure:
    import matplotlib as mpl

    fig = new_figure(size)
    ax = fig.subplots()
    cmap = mpl.colormaps["gray"].with_extremes(bad="white")
    ax.imshow(mosaic, cmap=cmap, vmin=0, vmax=1, origin="upper", interpolation="nearest")
    ax.set_xticks([(panel_w + gap) * j + panel_w / 2 - 0.5 for j in range(len(col_titles))], col_titles, fontsize=7)
    ax.xaxis.tick_top()
    if row_titles is not None:
        ax.set_yticks([(panel_h + gap) * i + panel_h / 2 - 0.5 for i in range(len(row_titles))], row_titles,
                      fontsize=7)
    else:
        ax.set_yticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return fig


def plot_side_by_side(
    left: StampSet, right: StampSet, path: str | os.PathLike, titles: tuple[str, str], suptitle: str = "",
    n: int = 6,
) -> Path:
    """n rows; the left block shows `left`'s channels, the right block `right`'s (e.g. real | generated).

    Every panel is one channel of one stamp, scaled to its own 1-99 percentile range.
    """
    n = max(1, min(n, len(left), len(right)))
    c = left.n_channels
    h, w = left.size
    rows = []
    for i in range(n):
        row: list[np.ndarray | None] = [_normalise(left.images[i, :, :, j]) for j in range(c)]
        row.append(None)
        row += [_normalise(right.images[i, :, :, j]) for j in range(c)]
        rows.append(row)
    cols = [*left.channels, "", *right.channels]
    fig = _show_mosaic(_mosaic(rows), cols, w, 2, (0.75 * (2 * c + 1) + 0.5, 0.75 * n + 1.0), suptitle)
    ax = fig.axes[0]
    for k, title in enumerate(titles):
        ax.text((c + 1) * (w + 2) * k + c * (w + 2) / 2 - 1, -9, title, ha="center", va="bottom", fontsize=8,
                fontweight="bold")
    return save_png(fig, path, dpi=100)


def plot_interpolation(stamps: StampSet, path: str | os.PathLike, title: str = "") -> Path:
    """One column per interpolation step, one row per channel (a channel shares one range along its row,
    so that the change from step to step is visible)."""
    steps, c = len(stamps), stamps.n_channels
    h, w = stamps.size
    rows = []
    for j in range(c):
        limits = _limits(stamps.images[..., j])
        rows.append([_normalise(stamps.images[k, :, :, j], limits) for k in range(steps)])
    fig = _show_mosaic(_mosaic(rows), [f"step {k}" for k in range(steps)], w, 2,
                       (0.75 * steps + 0.8, 0.75 * c + 0.8), title, row_titles=list(stamps.channels), panel_h=h)
    return save_png(fig, path, dpi=100)


# ----------------------------------------------------------------------------------------------
# documentation stamps: docs/figures/sim_examples.png, real_examples.png


def _draw_row(axes, stamp: np.ndarray, label: str) -> None:
    """Four panels of one (H, W, 4) stamp, origin at the bottom."""
    for c, ax in enumerate(axes):
        show_channel(ax, stamp[..., c], CHANNEL_TITLES[c], origin="lower")
    axes[0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")


def plot_kinds(stamps: StampSet, path: str | Path, title: str, per_kind: int = 1, seed: int = 0) -> Path:
    """One row per stamp: `per_kind` random stamps of every kind in `stamps`, four channels each."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in sorted(stamps.kind_counts()):
        idx = np.flatnonzero(stamps.kind == k)
        rows += [(k, i) for i in rng.choice(idx, size=min(per_kind, idx.size), replace=False)]
    fig = new_figure((4.4, 1.1 * len(rows) + 0.4))
    axes = fig.subplots(len(rows), 4, squeeze=False)
    for r, (k, i) in enumerate(rows):
        lab = "real" if stamps.labels[i] == 1 else "bogus"
        _draw_row(axes[r], stamps.images[i], f"{k}\n({lab}, SNR {abs(stamps.columns['peak_snr'][i]):.0f})")
    for c, t in enumerate(CHANNEL_TITLES):
        axes[0, c].set_title(t, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path, dpi=80, tight=False)


def plot_real_beside_simulated(real: StampSet, sim: StampSet, kinds: tuple[str, ...], path: str | Path,
                               per_kind: int = 2, seed: int = 0) -> Path:
    """Rows of real stamps (left, four channels) beside simulated stamps of the same kind (right)."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in kinds:
        ri = np.flatnonzero(real.kind == k)
        si = np.flatnonzero(sim.kind == k)
        n = min(per_kind, ri.size, si.size)
        rows += list(zip([k] * n, rng.choice(ri, n, replace=False), rng.choice(si, n, replace=False), strict=True))
    fig = new_figure((8.0, 1.0 * len(rows) + 0.4))
    axes = fig.subplots(len(rows), 8, squeeze=False)
    for r, (k, i, j) in enumerate(rows):
        name = real.ids[i].split(":")[0]
        name = name if len(name) <= 12 else "NV star"
        _draw_row(axes[r, :4], real.images[i], f"{k}\n{name}\nSNR {abs(real.columns['peak_snr'][i]):.0f}")
        _draw_row(axes[r, 4:], sim.images[j], f"simulated\nSNR {abs(sim.columns['peak_snr'][j]):.0f}")
    for c, t in enumerate(CHANNEL_TITLES * 2):
        axes[0, c].set_title(("real " if c < 4 else "sim ") + t, fontsize=7)
    fig.subplots_adjust(left=0.12, right=0.93, top=0.95, bottom=0.01, wspace=0.05, hspace=0.15)
    for r in range(len(rows)):  # a gap between the real and the simulated half
        for c in range(4, 8):
            pos = axes[r, c].get_position()
            axes[r, c].set_position([pos.x0 + 0.06, pos.y0, pos.width, pos.height])
    return save_png(fig, path, dpi=80, tight=False)


def make_doc_figures(out_dir: str | Path, sequences_path: str | Path | None = None, seed: int = 0) -> list[Path]:
    """Simulate a few hundred stamps, build the real set, and write sim_examples.png (one example of
    every simulated kind) and real_examples.png (real stamps beside simulated ones of the same kind)
    into `out_dir`."""
    from hits_stamps.realdata import build_real
    from hits_stamps.simulate.simulator import simulate_stamps

    out = Path(out_dir)
    sim = simulate_stamps(600, seed=seed)
    real = build_real(sequences_path)
    return [
        plot_kinds(sim, out / "sim_examples.png", "simulated HiTS stamps, one per kind", seed=seed),
        plot_real_beside_simulated(real, sim, ("sn", "bad_subtraction"), out / "real_examples.png", per_kind=3,
                                   seed=seed),
    ]


# ----------------------------------------------------------------------------------------------
# the report's own figures (PNG bytes; None where there is nothing to draw)


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


def stamp_examples_png(stamps: StampSet, title: str, seed: int = 0) -> bytes:
    """One column per kind (an example near the kind's median SNR), one row per channel."""
    picks = example_indices(stamps, 1, seed)
    c = stamps.n_channels
    fig = new_figure((1.35 * len(picks) + 0.6, 1.35 * c + 0.7))
    axes = fig.subplots(c, len(picks), squeeze=False)
    for j, (kind, i) in enumerate(picks):
        label = {1: "real", 0: "bogus"}.get(int(stamps.labels[i]), "?")
        snr = "" if stamps.snr is None or not np.isfinite(stamps.snr[i]) else f"\nSNR {stamps.snr[i]:.0f}"
        axes[0, j].set_title(f"{kind}\n({label}){snr}", fontsize=8,
                             color=REAL_COLOR if label == "real" else BOGUS_COLOR)
        for k in range(c):
            show_channel(axes[k, j], stamps.images[i, :, :, k], stamps.channels[k])
    for k in range(c):
        axes[k, 0].set_ylabel(stamps.channels[k], fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return png_bytes(fig)


def class_balance_png(sets: Mapping[str, StampSet]) -> bytes:
    """Left: real vs bogus counts per set; right: stamps per kind per set."""
    names = list(sets)
    fig = new_figure((10, 3.2))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
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
    return png_bytes(fig)


def training_curves_png(histories: Mapping[str, list[dict]]) -> bytes | None:
    """Validation accuracy and validation loss per epoch, one line per classifier."""
    rows = {k: h for k, h in histories.items() if h and "val_accuracy" in h[0]}
    if not rows:
        return None
    fig = new_figure((10, 3.4))
    ax1, ax2 = fig.subplots(1, 2)
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
    return png_bytes(fig)


def roc_overlay_png(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str) -> bytes | None:
    """ROC curves of several classifiers on one test set (`draw_roc`): labels (N,) and p_real (N,) per
    model; models whose labels hold one class only are left out."""
    usable = {k: v for k, v in curves.items() if _two_classes(v[0])}
    if not usable:
        return None
    fig = new_figure((5.6, 4.2))
    ax = fig.subplots()
    draw_roc(ax, usable)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7.5, loc="lower right")
    fig.tight_layout()
    return png_bytes(fig)


def reliability_overlay_png(bins: Mapping[str, dict], title: str) -> bytes | None:
    """Reliability of several classifiers: accuracy vs mean confidence per bin (from metrics.json)."""
    usable = {k: v for k, v in bins.items() if v and v.get("confidence") and v.get("accuracy")}
    if not usable:
        return None
    fig = new_figure((5.0, 4.2))
    ax = fig.subplots()
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
    return png_bytes(fig)


def referral_overlay_png(curves: Mapping[str, dict], title: str) -> bytes | None:
    """Accuracy on the kept stamps vs the fraction referred (most uncertain first), per classifier."""
    usable = {k: v for k, v in curves.items() if v and v.get("fraction") and v.get("accuracy")}
    if not usable:
        return None
    fig = new_figure((5.0, 4.2))
    ax = fig.subplots()
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
    return png_bytes(fig)
