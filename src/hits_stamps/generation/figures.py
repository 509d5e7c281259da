"""Figures of generated stamps: real vs generated grids, reconstructions, latent interpolation.

matplotlib's object API on the Agg canvas (no pyplot state); PNGs are written atomically and each
function returns the path it wrote. A figure is one mosaic image (fast to draw, small to store).
Every panel is one channel of one stamp, scaled to its own 1-99 percentile range, except in the
interpolation figure, where a channel shares one range along its row so that the change from step
to step is visible.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from hits_stamps.io.atomic import save_figure
from hits_stamps.stamps import StampSet


def _save(fig: Figure, path: str | os.PathLike, dpi: int = 80) -> Path:
    return save_figure(fig, path, dpi=dpi, bbox_inches="tight")


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


def _show(mosaic: np.ndarray, col_titles: list[str], panel_w: int, gap: int, size: tuple[float, float],
          suptitle: str, row_titles: list[str] | None = None, panel_h: int = 0) -> Figure:
    import matplotlib as mpl

    fig = Figure(figsize=size)
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
    """n rows; the left block shows `left`'s channels, the right block `right`'s (e.g. real | generated)."""
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
    fig = _show(_mosaic(rows), cols, w, 2, (0.75 * (2 * c + 1) + 0.5, 0.75 * n + 1.0), suptitle)
    ax = fig.axes[0]
    for k, title in enumerate(titles):
        ax.text((c + 1) * (w + 2) * k + c * (w + 2) / 2 - 1, -9, title, ha="center", va="bottom", fontsize=8,
                fontweight="bold")
    return _save(fig, path, dpi=100)


def plot_interpolation(stamps: StampSet, path: str | os.PathLike, title: str = "") -> Path:
    """One column per interpolation step, one row per channel (shared range along each row)."""
    steps, c = len(stamps), stamps.n_channels
    h, w = stamps.size
    rows = []
    for j in range(c):
        limits = _limits(stamps.images[..., j])
        rows.append([_normalise(stamps.images[k, :, :, j], limits) for k in range(steps)])
    fig = _show(_mosaic(rows), [f"step {k}" for k in range(steps)], w, 2, (0.75 * steps + 0.8, 0.75 * c + 0.8),
                title, row_titles=list(stamps.channels), panel_h=h)
    return _save(fig, path, dpi=100)
