"""Figures of example stamps for the documentation (docs/figures/sim_examples.png, real_examples.png).

`make_doc_figures(out_dir, sequences_path)` simulates a few hundred stamps, builds the real set, and
draws one example of every simulated kind, and real stamps beside simulated ones of the same kind,
all four channels each (template and science each from their 1st to 99.5th percentile, difference
and SNR symmetric around zero).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hits_stamps.stamps import StampSet

CHANNEL_TITLES = ("template", "science", "difference", "SNR")


def _draw_row(axes, stamp: np.ndarray, label: str) -> None:
    """Four panels of one (H, W, 4) stamp."""
    for c, ax in enumerate(axes):
        img = stamp[..., c]
        vals = img[np.isfinite(img)]
        if c < 2:
            lo, hi = np.percentile(vals, [1, 99.5]) if vals.size else (0.0, 1.0)
            ax.imshow(img, origin="lower", cmap="gray", vmin=lo, vmax=hi)
        else:
            m = float(np.percentile(np.abs(vals), 99.5)) if vals.size else 1.0
            ax.imshow(img, origin="lower", cmap="RdBu_r", vmin=-m, vmax=m)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")


def plot_kinds(stamps: StampSet, path: str | Path, title: str, per_kind: int = 1, seed: int = 0) -> Path:
    """One row per stamp: `per_kind` random stamps of every kind in `stamps`, four channels each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    rows = []
    for k in sorted(stamps.kind_counts()):
        idx = np.flatnonzero(stamps.kind == k)
        rows += [(k, i) for i in rng.choice(idx, size=min(per_kind, idx.size), replace=False)]
    fig, axes = plt.subplots(len(rows), 4, figsize=(4.4, 1.1 * len(rows) + 0.4), squeeze=False)
    for r, (k, i) in enumerate(rows):
        lab = "real" if stamps.labels[i] == 1 else "bogus"
        _draw_row(axes[r], stamps.images[i], f"{k}\n({lab}, SNR {abs(stamps.columns['peak_snr'][i]):.0f})")
    for c, t in enumerate(CHANNEL_TITLES):
        axes[0, c].set_title(t, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_side_by_side(real: StampSet, sim: StampSet, kinds: tuple[str, ...], path: str | Path, per_kind: int = 2,
                      seed: int = 0) -> Path:
    """Rows of real stamps (left, four channels) beside simulated stamps of the same kind (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    rows = []
    for k in kinds:
        ri = np.flatnonzero(real.kind == k)
        si = np.flatnonzero(sim.kind == k)
        n = min(per_kind, ri.size, si.size)
        rows += list(zip([k] * n, rng.choice(ri, n, replace=False), rng.choice(si, n, replace=False), strict=True))
    fig, axes = plt.subplots(len(rows), 8, figsize=(8.0, 1.0 * len(rows) + 0.4), squeeze=False)
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
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    from hits_stamps.io.atomic import save_figure

    path = save_figure(fig, path, dpi=80)
    plt.close(fig)
    return path


def make_doc_figures(out_dir: str | Path, sequences_path: str | Path | None = None, seed: int = 0) -> list[Path]:
    """Write sim_examples.png and real_examples.png into `out_dir`."""
    from hits_stamps.realdata import build_real
    from hits_stamps.simulate.simulator import simulate_stamps

    out = Path(out_dir)
    sim = simulate_stamps(600, seed=seed)
    real = build_real(sequences_path)
    return [
        plot_kinds(sim, out / "sim_examples.png", "simulated HiTS stamps, one per kind", seed=seed),
        plot_side_by_side(real, sim, ("sn", "bad_subtraction"), out / "real_examples.png", per_kind=3, seed=seed),
    ]
