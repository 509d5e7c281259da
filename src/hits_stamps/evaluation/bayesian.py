"""The Monte-Carlo analysis of a Bayesian classifier: the seed report's Figures 3-5 and their numbers.

Input everywhere: labels y (N,) in {0 bogus, 1 real} and Monte-Carlo class probabilities
`samples` (S, N, 2) from `hits_stamps.uncertainty.mc_predict_stamps`. A sample prediction is
"real" when its p_real >= 0.5 and is correct when it equals the label.

- `plot_mc_stamps` (Figure 3): test stamps (every channel) beside the predictive mean +- std of each
  class: confidently right, most uncertain, and wrong examples.
- `plot_sample_predictions` (Figure 4): per true class, histograms of the sampled probability of the
  true class, correct and wrong sample predictions apart, with their counts and rates.
- `plot_mean_std` (Figure 5): per true class, histograms of the predictive mean of the true class
  and of the predictive std.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hits_stamps.stamps import StampSet

CLASS_NAMES = ("bogus", "real")
FIGURE_FILES = {
    "mc_stamps": "mc_stamps.png",
    "mc_sample_predictions": "mc_sample_predictions.png",
    "mc_mean_std": "mc_mean_std.png",
}


def _check(y, samples) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64)
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim != 3 or s.shape[2] != 2 or s.shape[1] != y.shape[0] or y.ndim != 1:
        raise ValueError(f"samples must have shape (S, N, 2) with N = len(y) = {y.shape}; got {s.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("y must hold labels 0 (bogus) or 1 (real)")
    return y, s


def sample_accuracy(y, samples) -> dict[str, dict[str, Any]]:
    """Per true class: stamps, sample predictions, how many are correct/wrong, and the correct rate.

    rate = (1 / (S N_c)) sum_{n in class c} sum_s [argmax_k p_snk == c] (the seed report's MC
    per-class accuracy). Classes without stamps get rate None.
    """
    y, s = _check(y, samples)
    pred = (s[..., 1] >= 0.5).astype(np.int64)  # (S, N)
    correct = pred == y[None, :]
    out = {}
    for k, name in enumerate(CLASS_NAMES):
        sel = y == k
        n_pred = int(sel.sum()) * s.shape[0]
        n_ok = int(correct[:, sel].sum())
        out[name] = {
            "n_stamps": int(sel.sum()),
            "n_sample_predictions": n_pred,
            "correct": n_ok,
            "wrong": n_pred - n_ok,
            "rate": n_ok / n_pred if n_pred else None,
        }
    return out


def select_examples(y, samples, per_group: int = 2) -> list[tuple[int, str]]:
    """Stamps to show in Figure 3: (index, why) for confident right bogus/real, most uncertain, wrong.

    Confident = lowest predictive std among correctly classified stamps of the class; uncertain =
    highest predictive std; wrong = misclassified by the predictive mean, most confident first.
    """
    y, s = _check(y, samples)
    mean, std = s.mean(0)[:, 1], s.std(0)[:, 1]  # (N,), (N,)
    pred = (mean >= 0.5).astype(np.int64)
    chosen: list[tuple[int, str]] = []
    used: set[int] = set()

    def take(idx: np.ndarray, key: np.ndarray, why: str) -> None:
        n = 0
        for i in idx[np.argsort(key, kind="stable")]:
            if n == per_group:
                break
            if int(i) not in used:
                used.add(int(i))
                chosen.append((int(i), why))
                n += 1

    for k, name in enumerate(CLASS_NAMES):
        ok = np.flatnonzero((y == k) & (pred == k))
        take(ok, std[ok], f"{name}, confident")
    all_idx = np.arange(len(y))
    take(all_idx, -std, "most uncertain")
    wrong = np.flatnonzero(pred != y)
    take(wrong, -np.abs(mean[wrong] - 0.5), "wrong")
    return chosen


def _scaled(img: np.ndarray) -> np.ndarray:
    """One channel scaled to [0, 1] by its 1st/99th percentiles (non-finite pixels -> 0)."""
    a = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = np.percentile(a, [1, 99])
    return np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a)


def _strip(image: np.ndarray, gap: int = 1) -> np.ndarray:
    """(H, W, C) stamp -> (H, C*W + (C-1)*gap) strip of its channels, each scaled to [0, 1]; gaps NaN."""
    h, _, c = image.shape
    parts = []
    for k in range(c):
        if k:
            parts.append(np.full((h, gap), np.nan))
        parts.append(_scaled(image[:, :, k]))
    return np.concatenate(parts, axis=1)


def plot_mc_stamps(stamps: StampSet, samples, path: str | Path, title: str = "", per_group: int = 2) -> Path:
    """Figure 3: selected stamps, every channel, with the predictive mean +- std of each class."""
    import matplotlib as mpl
    from matplotlib.figure import Figure

    from hits_stamps.plotting import save_png

    y, s = _check(stamps.labels, samples)
    picks = select_examples(y, s, per_group)
    mean, std = s.mean(0), s.std(0)  # (N, 2)
    n_ch = stamps.n_channels
    rows = max(len(picks), 1)
    cmap = mpl.colormaps["gray"].with_extremes(bad="white")
    fig = Figure(figsize=(1.25 * n_ch + 3.2, 1.3 * rows + 0.5), dpi=80, layout="constrained")
    grid = fig.add_gridspec(rows, 2, width_ratios=[1.25 * n_ch, 2.6])
    for r, (i, why) in enumerate(picks):
        ax = fig.add_subplot(grid[r, 0])
        ax.imshow(_strip(stamps.images[i]), cmap=cmap, origin="lower", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"{why}\ntrue {CLASS_NAMES[y[i]]}", fontsize=7)
        if r == 0:
            ax.set_title(" | ".join(stamps.channels), fontsize=8)
        ax = fig.add_subplot(grid[r, 1])
        ax.barh([0, 1], mean[i], xerr=std[i], color=["tab:orange", "tab:blue"], capsize=3)
        ax.set_yticks([0, 1], [f"{n} {m:.2f}+-{d:.2f}" for n, m, d in zip(CLASS_NAMES, mean[i], std[i], strict=True)],
                      fontsize=7)
        ax.set_xlim(0, 1)
        ax.tick_params(axis="x", labelsize=6)
    if not picks:
        fig.add_subplot(grid[0, 0]).text(0.5, 0.5, "no stamps", ha="center")
    fig.suptitle(f"{title}: predictive mean +- std per class ({s.shape[0]} samples)", fontsize=9)
    return save_png(fig, path, dpi=None, tight=False)


def plot_sample_predictions(y, samples, path: str | Path, title: str = "") -> Path:
    """Figure 4: per true class, histograms of the sampled P(true class), correct vs wrong samples."""
    from matplotlib.figure import Figure

    from hits_stamps.plotting import save_png

    y, s = _check(y, samples)
    acc = sample_accuracy(y, s)
    fig = Figure(figsize=(9, 3.4), dpi=90, layout="constrained")
    bins = np.linspace(0, 1, 51)
    for k, name in enumerate(CLASS_NAMES):
        ax = fig.add_subplot(1, 2, k + 1)
        p_true = s[:, y == k, k].ravel()  # sampled probability of the true class
        ok = (s[:, y == k, 1].ravel() >= 0.5) == bool(k)  # as sample_accuracy: real when p_real >= 0.5
        a = acc[name]
        rate = "n/a" if a["rate"] is None else f"{100 * a['rate']:.1f}%"
        wrong_rate = "n/a" if a["rate"] is None else f"{100 * (1 - a['rate']):.1f}%"
        ax.hist(p_true[ok], bins=bins, color="tab:green", alpha=0.75, label=f"correct: {a['correct']} ({rate})")
        ax.hist(p_true[~ok], bins=bins, color="tab:red", alpha=0.75, label=f"wrong: {a['wrong']} ({wrong_rate})")
        ax.set_yscale("log")
        ax.set(xlabel=f"sampled P({name})", ylabel="sample predictions",
               title=f"true {name}: {a['n_stamps']} stamps x {s.shape[0]} samples")
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"{title}: Monte-Carlo sample predictions per class", fontsize=10)
    return save_png(fig, path, dpi=None, tight=False)


def plot_mean_std(y, samples, path: str | Path, title: str = "") -> Path:
    """Figure 5: per true class, histograms of the predictive mean P(true class) and predictive std."""
    from matplotlib.figure import Figure

    from hits_stamps.plotting import save_png

    y, s = _check(y, samples)
    mean, std = s.mean(0), s.std(0)  # (N, 2)
    fig = Figure(figsize=(8, 5.5), dpi=90, layout="constrained")
    for k, name in enumerate(CLASS_NAMES):
        sel = y == k
        ax = fig.add_subplot(2, 2, 2 * k + 1)
        ax.hist(mean[sel, k], bins=np.linspace(0, 1, 41), color="tab:blue")
        ax.set_yscale("log")
        ax.set(xlabel=f"predictive mean P({name})", ylabel="stamps", title=f"true {name} ({int(sel.sum())} stamps)")
        ax = fig.add_subplot(2, 2, 2 * k + 2)
        ax.hist(std[sel, k], bins=np.linspace(0, 0.5, 41), color="tab:purple")
        ax.set_yscale("log")
        m = float(std[sel, k].mean()) if sel.any() else float("nan")
        ax.set(xlabel=f"predictive std of P({name})", ylabel="stamps", title=f"true {name}: mean std {m:.3f}")
    fig.suptitle(f"{title}: predictive mean and std per class ({s.shape[0]} samples)", fontsize=10)
    return save_png(fig, path, dpi=None, tight=False)


def write_figures(stamps: StampSet, samples, out_dir: str | Path, title: str = "") -> dict[str, str]:
    """Figures 3, 4, 5 into out_dir (names in FIGURE_FILES); returns {name: path}."""
    out_dir = Path(out_dir)
    return {
        "mc_stamps": str(plot_mc_stamps(stamps, samples, out_dir / FIGURE_FILES["mc_stamps"], title)),
        "mc_sample_predictions": str(
            plot_sample_predictions(stamps.labels, samples, out_dir / FIGURE_FILES["mc_sample_predictions"], title)
        ),
        "mc_mean_std": str(plot_mean_std(stamps.labels, samples, out_dir / FIGURE_FILES["mc_mean_std"], title)),
    }
