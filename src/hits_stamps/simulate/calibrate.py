"""Calibration of the simulator against the real HiTS 2015 science cutouts.

The real sample is the non-variable-star (`NV`) cutouts of a sequence file: 21x21 science images
centred on a star. The simulated sample is made by the simulator's own machinery (conditions drawn
from the g-band table, double-Gaussian PSF with its true-width scatter, field stars and galaxies,
Poisson + read noise, saturation) with a static star at the centre, its magnitude drawn from the
simulator's bright-star law restricted to the magnitude window of the real NV stars (the survey
picked those stars in a narrow window; the window is measured here, from large-aperture photometry
with the table's zero points). The same estimators run on both samples:

- `sky_level_adu`: median of the outer 3-px frame (`differencing.estimate_sky`);
- `pixel_noise_adu`: 1.4826 * MAD of the four 4x4 corners (`differencing.estimate_pixel_noise`);
- `star_fwhm_px`: adaptive-moment FWHM of the central star (`differencing.adaptive_fwhm`);
- `star_peak_adu`: brightest pixel within 2 px of the centre minus the sky;
- `residual_peak_snr`: |SNR| peak of the star's difference (template: the best-seeing early epoch),
  the quantity that decides whether a static star becomes a bogus candidate.

Each statistic gets the two-sample Kolmogorov-Smirnov distance D (scipy.stats.ks_2samp); the aim
is D <= 0.1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from hits_stamps.differencing import DECAM, adaptive_fwhm, estimate_pixel_noise, estimate_sky
from hits_stamps.realdata import RealConfig, default_sequences_path, difference_sequences, read_sequences
from hits_stamps.simulate.conditions import ConditionsTable, load_conditions, match_conditions, template_pools
from hits_stamps.simulate.simulator import CALIBRATION_KIND, SimConfig, simulate_batch

STATISTICS = {
    "sky_level_adu": "sky level (ADU)",
    "pixel_noise_adu": "pixel noise (ADU)",
    "star_fwhm_px": "star FWHM (px)",
    "star_peak_adu": "star peak above sky (ADU)",
    "residual_peak_snr": "peak abs(SNR) of the star's difference",
}
KS_GOAL = 0.1


@dataclass
class Calibration:
    """Samples of every statistic, real and simulated, and their KS distances."""

    real: dict[str, np.ndarray]
    sim: dict[str, np.ndarray]
    ks: dict[str, tuple[float, float]]  # statistic -> (D, p-value)
    mag_window: tuple[float, float]
    detected_fraction: tuple[float, float]  # (real, sim): static stars whose difference passes 5 sigma
    psf: dict[str, float] = field(default_factory=dict)  # `real_psf_statistics` of the real stars

    def table(self) -> list[dict]:
        rows = []
        for key, label in STATISTICS.items():
            r, s = self.real[key], self.sim[key]
            rows.append({
                "statistic": key, "description": label, "n_real": int(r.size), "n_sim": int(s.size),
                "real_median": float(np.median(r)), "sim_median": float(np.median(s)),
                "real_p16_p84": [float(v) for v in np.percentile(r, [16, 84])],
                "sim_p16_p84": [float(v) for v in np.percentile(s, [16, 84])],
                "ks_d": self.ks[key][0], "ks_p": self.ks[key][1], "meets_goal": bool(self.ks[key][0] <= KS_GOAL),
            })
        return rows


def science_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """The four science-image statistics of star-centred cutouts (B, H, W); each (B,) float64."""
    images = np.asarray(images, dtype=np.float64)
    b, h, w = images.shape
    sky = estimate_sky(images)
    yy, xx = np.mgrid[0:h, 0:w]
    near = (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 <= 4
    peak = np.where(near[None], images, -np.inf).reshape(b, -1).max(axis=1) - sky
    return {
        "sky_level_adu": sky,
        "pixel_noise_adu": estimate_pixel_noise(images),
        "star_fwhm_px": adaptive_fwhm(images, sky),
        "star_peak_adu": peak,
    }


def _finite(x: np.ndarray) -> np.ndarray:
    return x[np.isfinite(x)]


def real_samples(
    sequences_path: str | Path, conditions: ConditionsTable, real_config: RealConfig | None = None
) -> tuple[dict[str, np.ndarray], tuple[float, float], float]:
    """Statistics of the real NV cutouts, their magnitude window, and their detected fraction."""
    seq = read_sequences(sequences_path)
    is_nv = seq.object_class[seq.object_index] == "NV"
    has_data = ~(seq.stamps == 0).any(axis=(1, 2))
    nv = np.flatnonzero(is_nv & has_data)
    if nv.size == 0:
        from hits_stamps.errors import StampFileError

        raise StampFileError(seq.path, "object_class", "some non-variable-star (NV) cutouts", "none")
    stats = science_statistics(seq.stamps[nv])
    # magnitude window of the real stars: large-aperture (r <= 8 px) photometry with the table's zero points
    row = match_conditions(conditions, seq.mjd[nv], seq.field[seq.object_index[nv]])
    ok = row >= 0
    h, w = seq.stamps.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w]
    ap = ((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) <= 64
    flux = ((seq.stamps[nv][ok] - stats["sky_level_adu"][ok][:, None, None]) * ap).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = conditions.zero_point[row[ok]] - 2.5 * np.log10(flux / conditions.exp_time_s[row[ok]])
    obj = seq.object_index[nv][ok]
    per_object = np.array([np.nanmedian(mag[obj == j]) for j in np.unique(obj)])
    window = tuple(float(v) for v in np.nanpercentile(per_object, [1, 99]))
    # differences of the NV stars through the real-set pipeline
    pairs = difference_sequences(seq, real_config, conditions)
    sel = seq.object_class[seq.object_index[pairs.science]] == "NV"
    stats["residual_peak_snr"] = np.abs(pairs.peak_snr[sel])
    detected = float(pairs.detected[sel].mean()) if sel.any() else float("nan")
    return {k: _finite(v) for k, v in stats.items()}, window, detected


def real_psf_statistics(sequences_path: str | Path, conditions: ConditionsTable) -> dict[str, float]:
    """The PSF and photometry numbers of the real NV stars that the simulator's defaults come from.

    Per NV cutout matched to the conditions table (field and time): the adaptive-moment FWHM over
    the table's seeing in pixels (median, 16th and 84th percentiles; robust sd of its log overall,
    between objects and within an object), the least-squares line FWHM = a * seeing_px + b over
    seeing_px < 8, the weighted ellipticities e1 = (Mxx - Myy) / (Mxx + Myy) and e2 = 2 Mxy / (Mxx + Myy)
    (sd), the cutout's sky over the table's sky (median), and the robust scatter of the star's
    magnitude (r <= 8 px aperture, table zero point) around its median over the epochs with
    seeing < 2".
    """
    seq = read_sequences(sequences_path)
    nv = np.flatnonzero((seq.object_class[seq.object_index] == "NV") & ~(seq.stamps == 0).any(axis=(1, 2)))
    row = match_conditions(conditions, seq.mjd[nv], seq.field[seq.object_index[nv]])
    nv, row = nv[row >= 0], row[row >= 0]
    img = seq.stamps[nv].astype(np.float64)
    sky = estimate_sky(img)
    fw = adaptive_fwhm(img, sky)
    see_px = conditions.seeing[row] / DECAM.pixel_scale
    lr = np.log(fw / see_px)
    obj = seq.object_index[nv]

    def rsd(x):
        x = x[np.isfinite(x)]
        return float(1.4826 * np.median(np.abs(x - np.median(x))))

    per_obj = np.array([np.nanmedian(lr[obj == j]) for j in np.unique(obj)])
    within = np.array([rsd(lr[obj == j]) for j in np.unique(obj)])
    fit = see_px < 8
    slope, offset = np.polyfit(see_px[fit & np.isfinite(fw)], fw[fit & np.isfinite(fw)], 1)
    h, w = img.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cxy = seq.centroid_xy[nv]
    cen_x = np.where(np.isfinite(cxy[:, 0]), cxy[:, 0], (w - 1) / 2)[:, None, None]
    cen_y = np.where(np.isfinite(cxy[:, 1]), cxy[:, 1], (h - 1) / 2)[:, None, None]
    dx, dy = xx[None] - cen_x, yy[None] - cen_y
    s2 = (fw / 2.3548)[:, None, None] ** 2
    wgt = np.exp(-0.5 * (dx**2 + dy**2) / s2) * (img - sky[:, None, None])
    mxx, myy, mxy = (wgt * dx * dx).sum((1, 2)), (wgt * dy * dy).sum((1, 2)), (wgt * dx * dy).sum((1, 2))
    e1, e2 = (mxx - myy) / (mxx + myy), 2 * mxy / (mxx + myy)
    ap = (dx**2 + dy**2) <= 64
    flux = ((img - sky[:, None, None]) * ap).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = conditions.zero_point[row] - 2.5 * np.log10(flux / conditions.exp_time_s[row])
    good = conditions.seeing[row] < 2.0
    dev = np.concatenate([mag[good & (obj == j)] - np.nanmedian(mag[good & (obj == j)])
                          for j in np.unique(obj) if (good & (obj == j)).sum() >= 5])
    q16, q50, q84 = np.nanpercentile(fw / see_px, [16, 50, 84])
    return {
        "n_cutouts": int(nv.size),
        "fwhm_over_seeing_median": float(q50), "fwhm_over_seeing_p16": float(q16),
        "fwhm_over_seeing_p84": float(q84),
        "log_ratio_sd": rsd(lr), "log_ratio_sd_between_objects": float(np.nanstd(per_obj)),
        "log_ratio_sd_within_object": float(np.nanmedian(within)),
        "fwhm_fit_slope": float(slope), "fwhm_fit_offset_px": float(offset),
        "e1_sd": float(np.nanstd(e1)), "e2_sd": float(np.nanstd(e2)),
        "sky_over_table_median": float(np.nanmedian(sky / conditions.sky_level_adu[row])),
        "mag_scatter_robust_sd": rsd(dev),
    }


def simulated_samples(
    n: int, seed: int, mag_window: tuple[float, float], conditions: ConditionsTable, config: SimConfig | None = None
) -> tuple[dict[str, np.ndarray], float]:
    """Statistics of n simulated star-centred science cutouts, and their detected fraction."""
    cfg = replace(config or SimConfig(), bright_star_mags=mag_window)
    rng = np.random.default_rng(seed)
    pools = template_pools(conditions, weighting=cfg.conditions_weighting)
    size = cfg.detection.stamp_size
    stats: dict[str, list[np.ndarray]] = {k: [] for k in STATISTICS}
    detected: list[np.ndarray] = []
    for start in range(0, n, cfg.batch_size):
        b = min(cfg.batch_size, n - start)
        kinds = np.full(b, CALIBRATION_KIND)
        batch = simulate_batch(kinds, rng, cfg, conditions, DECAM, pools, keep_science=True)
        off = (cfg.canvas - size) // 2
        sci = batch.science[:, off:off + size, off:off + size]
        for k, v in science_statistics(sci).items():
            stats[k].append(v)
        stats["residual_peak_snr"].append(np.abs(batch.peak_snr))
        detected.append(batch.detected)
    out = {k: _finite(np.concatenate(v)) for k, v in stats.items()}
    return out, float(np.concatenate(detected).mean())


def calibrate(
    sequences_path: str | Path | None = None,
    n: int = 5000,
    seed: int = 0,
    config: SimConfig | None = None,
    conditions: ConditionsTable | None = None,
) -> Calibration:
    """Compare n simulated star cutouts with the real NV cutouts of `sequences_path`."""
    from scipy.stats import ks_2samp

    table = conditions if conditions is not None else load_conditions()
    path = sequences_path if sequences_path is not None else default_sequences_path()
    real, window, det_real = real_samples(path, table)
    sim, det_sim = simulated_samples(n, seed, window, table, config)
    ks = {}
    for key in STATISTICS:
        res = ks_2samp(real[key], sim[key])
        ks[key] = (float(res.statistic), float(res.pvalue))
    return Calibration(real=real, sim=sim, ks=ks, mag_window=window, detected_fraction=(det_real, det_sim),
                       psf=real_psf_statistics(path, table))


def format_table(cal: Calibration) -> str:
    """Markdown table: statistic, medians (16th-84th percentiles), KS D and p."""
    lines = [
        "| statistic | real median (16-84%) | simulated median (16-84%) | KS D | p | D <= 0.1 |",
        "|---|---|---|---|---|---|",
    ]
    for r in cal.table():
        lo_r, hi_r = r["real_p16_p84"]
        lo_s, hi_s = r["sim_p16_p84"]
        lines.append(
            f"| {r['description']} | {r['real_median']:.4g} ({lo_r:.4g}-{hi_r:.4g}) | "
            f"{r['sim_median']:.4g} ({lo_s:.4g}-{hi_s:.4g}) | {r['ks_d']:.3f} | {r['ks_p']:.2g} | "
            f"{'yes' if r['meets_goal'] else 'no'} |"
        )
    det_r, det_s = cal.detected_fraction
    lines.append("")
    lines.append(f"Static stars whose difference passes |SNR| >= 5: real {det_r:.3f}, simulated {det_s:.3f}. "
                 f"Star magnitude window: g {cal.mag_window[0]:.2f}-{cal.mag_window[1]:.2f}.")
    if cal.psf:
        lines.append("")
        lines.append("Real non-variable stars (simulator inputs): " + ", ".join(
            f"{k} {v:.4g}" for k, v in cal.psf.items()))
    return "\n".join(lines)


def plot_calibration(cal: Calibration, path: str | Path) -> Path:
    """Histograms of every statistic, real vs simulated, with the KS distance in each title."""
    from matplotlib.ticker import NullFormatter

    from hits_stamps.plotting import new_figure, save_png

    keys = list(STATISTICS)
    fig = new_figure((3.2 * len(keys), 2.8))
    axes = fig.subplots(1, len(keys))
    for ax, key in zip(axes, keys, strict=True):
        r, s = cal.real[key], cal.sim[key]
        lo, hi = np.percentile(np.concatenate([r, s]), [0.5, 99.5])
        log = key in ("star_peak_adu", "residual_peak_snr", "pixel_noise_adu", "sky_level_adu")
        bins = np.geomspace(max(lo, 1e-3), hi, 40) if log and lo > 0 else np.linspace(lo, hi, 40)
        ax.hist(r, bins=bins, density=True, histtype="step", lw=1.6, label=f"real ({r.size})")
        ax.hist(s, bins=bins, density=True, histtype="step", lw=1.6, label=f"simulated ({s.size})")
        if log and lo > 0:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{STATISTICS[key]}\nKS D = {cal.ks[key][0]:.3f}", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_png(fig, path, dpi=90, tight=False)


def write_calibration(cal: Calibration, out_dir: str | Path) -> dict[str, Path]:
    """Write calibration.json, calibration.md and sim_calibration.png into `out_dir`."""
    from hits_stamps.io.atomic import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "calibration.json", "markdown": out / "calibration.md",
             "figure": out / "sim_calibration.png"}
    payload = {
        "rows": cal.table(), "mag_window": list(cal.mag_window),
        "detected_fraction": {"real": cal.detected_fraction[0], "sim": cal.detected_fraction[1]},
        "real_psf": cal.psf,
    }
    with atomic_path(paths["json"], overwrite=True) as tmp:
        tmp.write_text(json.dumps(payload, indent=2))
    with atomic_path(paths["markdown"], overwrite=True) as tmp:
        tmp.write_text(format_table(cal) + "\n")
    plot_calibration(cal, paths["figure"])
    return paths
