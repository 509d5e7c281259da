"""`simulate_stamps`: realistic HiTS stamps from real observing conditions.

Per stamp: a template and a science observing condition (rows of the HiTS 2015 g-band table, see
`conditions.sample_pairs`), a scene on a `canvas` x `canvas` image pair (sky, field stars and
galaxies, the kind's own sources), Poisson + read noise, the kind's detector artefacts, then the
shared differencing (`hits_stamps.differencing`): PSF matching with the *nominal* PSF widths and
catalogue zero points the pipeline would know, subtraction, noise map, SNR, detection of the |SNR|
peak within `search_radius` of the centre, and the `stamp_size` cut around the peak. Only stamps
that pass the detection (|SNR| >= 5) are kept; each kind is simulated until it has its quota.

The true scene differs from what the pipeline assumes, as in real data: the pipeline takes the PSF
FWHM as psf_scale * seeing / 0.27" and the catalogue zero points, while each epoch's true PSF has
FWHM (psf_true_slope * seeing / 0.27" + psf_true_offset) * exp(e_common + e_epoch), its own wing
weight and ellipticity, its true zero point is the catalogue one plus N(0, zp_jitter) mag, and the
science image is misregistered by N(0, registration_jitter) px. These are measured on the real
non-variable stars (see docs/simulation.md). `snr` is the true |SNR|: the pipeline's operator
applied to the noiseless images (true sky removed), at the detected peak, over the noise map.

Kinds (label 1 real, 0 bogus):
- `sn` (1): a new point source in the science image; on a host galaxy (`host_fraction`), near a
  bright star (`near_star_fraction`); magnitude with density ~ 10^(sn_mag_slope m) from
  `sn_depth` mag above to `sn_faint_margin` below the stamp's own 5-sigma limit (the magnitude
  whose expected peak-pixel |SNR| in the difference is 5);
- `variable` (1): a star whose flux changes (brightening or fading) between the epochs;
- `bad_subtraction` (0): a static bright star or compact galaxy with a wrong PSF width,
  misregistration and/or photometric scaling error (dipoles, rings, positive/negative cores);
- `cosmic_ray` (0): a sharp track (0-6 px) of charge in the science image only;
- `hot_pixel` (0): one or two hot pixels in either image;
- `bad_column` (0): a hot or dead column (whole or partial) in either image;
- `saturated` (0): a saturated star (clipped at 40,000 ADU) with bleed trails along the column;
- `noise` (0): a sub-PSF Gaussian-tail fluctuation (>= 5 sigma) in the unconvolved image;
- `edge` (0): a chip edge: no data (NaN) beyond a straight edge 1-3 px from the candidate, with an
  edge-glow strip along it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from hits_stamps.differencing import (
    DECAM,
    FWHM_PER_SIGMA,
    Camera,
    DetectionConfig,
    cut_stamps,
    detect,
    difference,
    estimate_sky,
)
from hits_stamps.simulate.conditions import (
    ConditionsTable,
    TemplatePools,
    load_conditions,
    sample_pairs,
    template_pools,
)
from hits_stamps.simulate.scene import (
    add_noise,
    mag_to_adu,
    power_law_mags,
    psf_components,
    render_galaxies,
    render_points,
)
from hits_stamps.stamps import StampSet

REAL_KINDS = ("sn", "variable")
BOGUS_KINDS = ("bad_subtraction", "cosmic_ray", "hot_pixel", "bad_column", "saturated", "noise", "edge")
KIND_LABEL = {**dict.fromkeys(REAL_KINDS, 1), **dict.fromkeys(BOGUS_KINDS, 0)}
CALIBRATION_KIND = "static_star"  # for calibration only: a static star from `bright_star_mags`, no extra errors
ARCMIN2_PER_PX = (DECAM.pixel_scale / 60.0) ** 2
BATCHES_PER_ROUND = 2  # batches simulated per round (one per worker thread)


@dataclass(frozen=True)
class SimConfig:
    """Every knob of the simulator (defaults: calibrated against HiTS 2015, docs/simulation.md)."""

    canvas: int = 27  # side (px) of the simulated images; the stamp is cut from them
    real_mix: tuple[tuple[str, float], ...] = (("sn", 0.75), ("variable", 0.25))  # shares within real
    bogus_mix: tuple[tuple[str, float], ...] = (  # shares within bogus
        ("bad_subtraction", 0.35), ("cosmic_ray", 0.15), ("hot_pixel", 0.10), ("bad_column", 0.10),
        ("saturated", 0.10), ("noise", 0.10), ("edge", 0.10),
    )
    psf_scale: float = 0.875  # nominal FWHM (px) = psf_scale * seeing / pixel_scale (real NV median)
    psf_true_slope: float = 0.97  # true FWHM = (slope * seeing / pixel_scale + offset) * exp(e): the fit of the
    psf_true_offset: float = -0.45  # real NV stars' FWHM (px) against the table's seeing (px), seeing < 8 px
    psf_jitter_common: float = 0.045  # sd of log FWHM error shared by both epochs (CCD position; real: 0.047)
    psf_jitter_epoch: float = 0.045  # sd of log FWHM error per epoch (real, within an object: 0.038 + noise)
    psf_wing_scatter: float = 0.35  # sd of the log weight of the widest PSF component, per epoch
    psf_e1_sd: float = 0.06  # sd of the PSF ellipticity (pixel axes only; real e1, e2 sds 0.036, 0.048 combined)
    conditions_weighting: str = "cutouts"  # science rows drawn like the real set ("cutouts") or "uniform"
    zp_jitter: float = 0.03  # mag: sd of the true zero point around the catalogue one (real NV scatter 0.027)
    registration_jitter: float = 0.05  # px: sd of the science misregistration per axis
    star_density: float = 1.0  # field stars per arcmin^2 brighter than star_mags[1]
    star_slope: float = 0.1  # d log10 N / dm of field stars
    star_mags: tuple[float, float] = (15.0, 24.0)
    galaxy_density: float = 6.0  # field galaxies per arcmin^2 brighter than galaxy_mags[1]
    galaxy_slope: float = 0.45  # d log10 N / dm of field galaxies
    galaxy_mags: tuple[float, float] = (17.0, 24.0)
    galaxy_re_arcsec: float = 1.0  # median half-light radius at g = 20 (scales as 10^(-0.2 (g - 20)))
    bright_star_mags: tuple[float, float] = (15.0, 21.0)  # central star of bad subtractions / variables
    host_fraction: float = 0.7  # share of `sn` on a host galaxy
    host_mags: tuple[float, float] = (18.0, 24.0)
    near_star_fraction: float = 0.15  # share of `sn` with a bright star 4-9 px away
    sn_mag_slope: float = 0.2  # d log10 N / dm of transient magnitudes
    sn_depth: float = 5.0  # mag above the 5-sigma limit reached by the brightest transients
    sn_faint_margin: float = 0.3  # mag below the 5-sigma limit reached by the faintest
    saturated_mags: tuple[float, float] = (10.5, 13.5)
    batch_size: int = 512  # images per batch (small batches stay in the CPU caches: 1.5x faster than 4096)
    detection: DetectionConfig = field(default_factory=DetectionConfig)

    def __post_init__(self) -> None:
        for name, mix, allowed in (("real_mix", self.real_mix, REAL_KINDS), ("bogus_mix", self.bogus_mix, BOGUS_KINDS)):
            for kind, share in mix:
                if kind not in allowed:
                    raise ValueError(f"{name}: unknown kind {kind!r}; expected one of {allowed}")
                if not share >= 0:
                    raise ValueError(f"{name}: share of {kind!r} must be >= 0; got {share}")
            if sum(s for _, s in mix) <= 0:
                raise ValueError(f"{name}: shares must sum to > 0")
        if self.canvas < self.detection.stamp_size:
            raise ValueError(f"canvas {self.canvas} must be >= stamp_size {self.detection.stamp_size}")
        if self.batch_size < 16:
            raise ValueError(f"batch_size must be >= 16; got {self.batch_size}")


def kind_quota(n: int, real_fraction: float, config: SimConfig) -> dict[str, int]:
    """Stamps per kind for n stamps (largest-remainder rounding; real share `real_fraction`)."""
    shares: dict[str, float] = {}
    for mix, frac in ((config.real_mix, real_fraction), (config.bogus_mix, 1 - real_fraction)):
        total = sum(s for _, s in mix)
        for kind, s in mix:
            shares[kind] = shares.get(kind, 0.0) + frac * s / total
    raw = {k: n * v for k, v in shares.items()}
    out = {k: int(math.floor(v)) for k, v in raw.items()}
    rest = n - sum(out.values())
    for k in sorted(raw, key=lambda k: raw[k] - out[k], reverse=True)[:rest]:
        out[k] += 1
    return {k: v for k, v in out.items() if v > 0}


@dataclass
class _Batch:
    """One simulated pass: stamps (B, S, S, 4) and per-stamp values, all aligned."""

    stamps: np.ndarray  # (B, S, S, 4)
    detected: np.ndarray  # (B,) bool
    true_snr: np.ndarray  # (B,)
    peak_snr: np.ndarray  # (B,) signed
    columns: dict[str, np.ndarray]
    science: np.ndarray | None = None  # (B, canvas, canvas) science images when asked for


def _log_uniform(rng, lo, hi, n):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def _add_layer(img: np.ndarray, idx: np.ndarray, layer: np.ndarray) -> None:
    if idx.size:
        img[idx] += layer


def simulate_batch(
    kinds: np.ndarray,
    rng: np.random.Generator,
    config: SimConfig,
    table: ConditionsTable,
    camera: Camera = DECAM,
    pools: TemplatePools | None = None,
    keep_science: bool = False,
) -> _Batch:
    """Simulate one image pair per entry of `kinds` (B,) and difference them (whether detected or not).

    `kinds` may also hold `CALIBRATION_KIND`; with `keep_science` the full science images are returned.
    """
    cfg = config
    b = len(kinds)
    h = w = cfg.canvas
    c0 = (h - 1) / 2
    shape = (h, w)
    i_t, i_s = sample_pairs(table, b, rng, pools)
    see_t, see_s = table.seeing[i_t], table.seeing[i_s]
    sky_t, sky_s = table.sky_level_adu[i_t], table.sky_level_adu[i_s]
    zp_t, zp_s = table.zero_point[i_t], table.zero_point[i_s]
    et_t, et_s = table.exp_time_s[i_t], table.exp_time_s[i_s]
    nom_t = cfg.psf_scale * see_t / camera.pixel_scale
    nom_s = cfg.psf_scale * see_s / camera.pixel_scale
    common = rng.normal(0, cfg.psf_jitter_common, b)
    true_t = np.maximum(cfg.psf_true_slope * see_t / camera.pixel_scale + cfg.psf_true_offset, 1.0)
    true_s = np.maximum(cfg.psf_true_slope * see_s / camera.pixel_scale + cfg.psf_true_offset, 1.0)
    true_fw_t = true_t * np.exp(common + rng.normal(0, cfg.psf_jitter_epoch, b))
    true_fw_s = true_s * np.exp(common + rng.normal(0, cfg.psf_jitter_epoch, b))
    wf_t = np.exp(rng.normal(0, cfg.psf_wing_scatter, b))
    wf_s = np.exp(rng.normal(0, cfg.psf_wing_scatter, b))
    e1_t = np.clip(rng.normal(0, cfg.psf_e1_sd, b), -0.3, 0.3)
    e1_s = np.clip(rng.normal(0, cfg.psf_e1_sd, b), -0.3, 0.3)

    def psf_t(idx):
        return {"fwhm": true_fw_t[idx], "wing_scale": wf_t[idx], "e1": e1_t[idx]}

    def psf_s(idx):
        return {"fwhm": true_fw_s[idx], "wing_scale": wf_s[idx], "e1": e1_s[idx]}

    tzp_t = zp_t + rng.normal(0, cfg.zp_jitter, b)
    tzp_s = zp_s + rng.normal(0, cfg.zp_jitter, b)
    reg = rng.normal(0, cfg.registration_jitter, (b, 2))  # science misregistration (dy, dx)
    known = (*REAL_KINDS, *BOGUS_KINDS, CALIBRATION_KIND)
    unknown = sorted(set(np.unique(kinds).tolist()) - set(known))
    if unknown:
        raise ValueError(f"kinds must be in {known}; found {unknown}")
    is_kind = {k: np.flatnonzero(kinds == k) for k in known}

    # bad subtractions: larger pipeline errors (at least one of PSF width, registration, scaling)
    bs = is_kind["bad_subtraction"]
    if bs.size:
        which = rng.random((bs.size, 3)) < np.array([0.6, 0.5, 0.4])
        which[~which.any(axis=1), 0] = True
        true_fw_s[bs] *= np.exp(which[:, 0] * rng.normal(0, 0.10, bs.size))
        reg[bs] += which[:, 1:2] * rng.normal(0, 0.3, (bs.size, 2))
        tzp_s[bs] += which[:, 2] * rng.normal(0, 0.06, bs.size)

    model_t = np.empty((b, h, w), np.float32)
    model_t[:] = sky_t.astype(np.float32)[:, None, None]
    model_s = np.empty((b, h, w), np.float32)
    model_s[:] = sky_s.astype(np.float32)[:, None, None]
    mag_col = np.full(b, np.nan)

    def static_points(idx, y, x, mag):
        """Static point sources at sky position (y, x), seen in both epochs."""
        _add_layer(model_t, idx, render_points(shape, y, x, mag_to_adu(mag, tzp_t[idx], et_t[idx]), **psf_t(idx)))
        _add_layer(model_s, idx, render_points(shape, y + reg[idx, 0], x + reg[idx, 1],
                                               mag_to_adu(mag, tzp_s[idx], et_s[idx]), **psf_s(idx)))

    def static_galaxies(idx, y, x, mag, r_e, q, th):
        _add_layer(model_t, idx, render_galaxies(shape, y, x, mag_to_adu(mag, tzp_t[idx], et_t[idx]),
                                                 r_e, q, th, true_fw_t[idx]))
        _add_layer(model_s, idx, render_galaxies(shape, y + reg[idx, 0], x + reg[idx, 1],
                                                 mag_to_adu(mag, tzp_s[idx], et_s[idx]), r_e, q, th, true_fw_s[idx]))

    def galaxy_shape(mag, n):
        r_e = cfg.galaxy_re_arcsec * 10 ** (-0.2 * (mag - 20.0)) * np.exp(rng.normal(0, 0.4, n))
        r_e = np.clip(r_e, 0.15, 4.0) / camera.pixel_scale
        return r_e, rng.uniform(0.3, 1.0, n), rng.uniform(0, np.pi, n)

    # field population on the canvas plus a margin (sources outside still shine in)
    margin = 6.0
    area = (h + 2 * margin) ** 2 * ARCMIN2_PER_PX
    for density, slope, (m_lo, m_hi), is_gal in (
        (cfg.star_density, cfg.star_slope, cfg.star_mags, False),
        (cfg.galaxy_density, cfg.galaxy_slope, cfg.galaxy_mags, True),
    ):
        counts = rng.poisson(density * area, b)
        for slot in range(int(counts.max(initial=0))):
            idx = np.flatnonzero(counts > slot)
            y = rng.uniform(-margin, h - 1 + margin, idx.size)
            x = rng.uniform(-margin, w - 1 + margin, idx.size)
            mag = power_law_mags(rng, idx.size, m_lo, m_hi, slope)
            if is_gal:
                static_galaxies(idx, y, x, mag, *galaxy_shape(mag, idx.size))
            else:
                static_points(idx, y, x, mag)

    # expected peak-pixel noise of the difference and the stamp's 5-sigma limiting magnitude
    fw_b = np.maximum(nom_t, nom_s)
    wts, sig = psf_components(fw_b)
    peak_per_flux = (wts / (2 * np.pi * sig**2)).sum(axis=1)
    k_nom = (et_s / et_t) * 10 ** (0.4 * (zp_s - zp_t))
    v_t = (sky_t / camera.gain + (camera.read_noise / camera.gain) ** 2) * k_nom**2
    v_s = sky_s / camera.gain + (camera.read_noise / camera.gain) ** 2
    sig_k = np.sqrt(np.abs(nom_s**2 - nom_t**2)) / FWHM_PER_SIGMA
    shrink = np.minimum(1.0, 1.0 / (4 * np.pi * np.maximum(sig_k, 1e-3) ** 2))  # sum of squared 2-D kernel weights
    conv_t = nom_s >= nom_t
    noise_d = np.sqrt(np.where(conv_t, v_s + v_t * shrink, v_t + v_s * shrink))
    m5 = zp_s - 2.5 * np.log10(5 * noise_d / (peak_per_flux * et_s))

    cy = c0 + rng.uniform(-0.5, 0.5, b)  # candidate position on the sky
    cx = c0 + rng.uniform(-0.5, 0.5, b)

    # ---- real: supernovae
    sn = is_kind["sn"]
    if sn.size:
        mag = power_law_mags(rng, sn.size, m5[sn] - cfg.sn_depth, m5[sn] + cfg.sn_faint_margin, cfg.sn_mag_slope)
        mag_col[sn] = mag
        _add_layer(model_s, sn, render_points(shape, cy[sn] + reg[sn, 0], cx[sn] + reg[sn, 1],
                                              mag_to_adu(mag, tzp_s[sn], et_s[sn]), **psf_s(sn)))
        host = sn[rng.random(sn.size) < cfg.host_fraction]
        if host.size:
            hm = power_law_mags(rng, host.size, *cfg.host_mags, 0.3)
            r_e, q, th = galaxy_shape(hm, host.size)
            rad = rng.gamma(2.0, r_e / 1.678)  # exponential-disc light: p(r) ~ r exp(-1.678 r / r_e)
            phi = rng.uniform(0, 2 * np.pi, host.size)
            ox, oy = rad * np.cos(phi), q * rad * np.sin(phi)  # offset in the galaxy frame
            gx = cx[host] - (ox * np.cos(th) - oy * np.sin(th))
            gy = cy[host] - (ox * np.sin(th) + oy * np.cos(th))
            static_galaxies(host, gy, gx, hm, r_e, q, th)
        near = sn[rng.random(sn.size) < cfg.near_star_fraction]
        if near.size:
            d = rng.uniform(4, 9, near.size)
            a = rng.uniform(0, 2 * np.pi, near.size)
            static_points(near, cy[near] + d * np.sin(a), cx[near] + d * np.cos(a),
                          power_law_mags(rng, near.size, 16.0, 20.0, 0.1))

    # ---- real: variable stars
    var = is_kind["variable"]
    if var.size:
        m_delta = power_law_mags(rng, var.size, m5[var] - cfg.sn_depth, m5[var] + cfg.sn_faint_margin,
                                 cfg.sn_mag_slope)
        m_star = np.maximum(m_delta - rng.uniform(0.1, 3.0, var.size), 14.5)
        brighten = rng.random(var.size) < 0.6
        f_t = mag_to_adu(m_star, tzp_t[var], et_t[var])
        f_s = mag_to_adu(m_star, tzp_s[var], et_s[var])
        dflux = mag_to_adu(m_delta, tzp_s[var], et_s[var])
        dflux = np.where(brighten, dflux, -np.minimum(dflux, 0.9 * f_s))
        mag_col[var] = m_delta
        _add_layer(model_t, var, render_points(shape, cy[var], cx[var], f_t, **psf_t(var)))
        _add_layer(model_s, var, render_points(shape, cy[var] + reg[var, 0], cx[var] + reg[var, 1],
                                               f_s + dflux, **psf_s(var)))

    # ---- bogus: bad subtraction of a static star or compact galaxy
    if bs.size:
        gal = rng.random(bs.size) < 0.25
        mag = power_law_mags(rng, bs.size, *cfg.bright_star_mags, 0.1)
        mag_col[bs] = mag
        st = bs[~gal]
        static_points(st, cy[st], cx[st], mag[~gal])
        gg = bs[gal]
        if gg.size:
            static_galaxies(gg, cy[gg], cx[gg], mag[gal], rng.uniform(0.5, 2.0, gg.size),
                            rng.uniform(0.5, 1.0, gg.size), rng.uniform(0, np.pi, gg.size))

    # ---- calibration: a static star with only the ordinary pipeline errors
    cal = is_kind[CALIBRATION_KIND]
    if cal.size:
        mag = power_law_mags(rng, cal.size, *cfg.bright_star_mags, 0.1)
        mag_col[cal] = mag
        static_points(cal, cy[cal], cx[cal], mag)

    # ---- bogus: saturated star (rendered now, clipped after the noise)
    sat = is_kind["saturated"]
    if sat.size:
        mag = rng.uniform(*cfg.saturated_mags, sat.size)
        mag_col[sat] = mag
        static_points(sat, cy[sat] + rng.uniform(-2, 2, sat.size), cx[sat] + rng.uniform(-2, 2, sat.size), mag)

    truth_t, truth_s = model_t, model_s  # noiseless models (sky included)
    img_t = add_noise(model_t, rng, camera)
    img_s = add_noise(model_s, rng, camera)
    if sat.size:
        for img, truth in ((img_t, truth_t), (img_s, truth_s)):
            mask = _saturation_mask(truth[sat], camera.saturation)
            img[sat] = np.where(mask, np.float32(camera.saturation), img[sat])
            truth[sat] = np.where(mask, np.float32(camera.saturation), truth[sat])
    for img in (img_t, img_s):  # any other pixel over the full well reads as saturated
        np.minimum(img, np.float32(camera.saturation), out=img)

    # ---- detector artefacts, after the noise (they are not photons from the sky)
    _cosmic_rays(img_s, truth_s, is_kind["cosmic_ray"], cy, cx, rng, camera)
    _hot_pixels(img_t, img_s, truth_t, truth_s, is_kind["hot_pixel"], rng, c0)
    _bad_columns(img_t, img_s, truth_t, truth_s, is_kind["bad_column"], rng, c0)
    _noise_spikes(img_t, img_s, is_kind["noise"], rng, c0, conv_t, noise_d, k_nom)
    _edges(img_t, img_s, truth_t, truth_s, is_kind["edge"], rng, c0, noise_d, np.minimum(sky_t, sky_s))

    # ---- the shared pipeline: what a survey would do with these two images
    det_cfg = cfg.detection
    est_t = estimate_sky(img_t, window=det_cfg.stamp_size)
    est_s = estimate_sky(img_s, window=det_cfg.stamp_size)
    est_t = np.where(np.isfinite(est_t), est_t, sky_t)
    est_s = np.where(np.isfinite(est_s), est_s, sky_s)
    res = difference(img_t, img_s, nom_t, nom_s, est_t, est_s, flux_scale=k_nom, camera=camera, config=det_cfg)
    det = detect(res.snr, det_cfg)
    stamps = np.stack(
        [cut_stamps(p, det.peak_yx, det_cfg.stamp_size) for p in (img_t, img_s, res.difference, res.snr)], axis=-1
    )  # (B, S, S, 4)

    # true SNR: the pipeline's operator applied to the noiseless images, at the detected peak; kernel rows
    # sum to one, so the convolved sky is the sky: conv(k (T - sky)) = k (conv(T) - sky)
    py, px = det.peak_yx[:, 0], det.peak_yx[:, 1]
    ar = np.arange(b)
    ky, kx = res.kernel_y[ar, py], res.kernel_x[ar, px]  # (B, H), (B, W)
    conv_tpl = k_nom * ((np.matmul(ky[:, None, :], truth_t)[:, 0, :] * kx).sum(axis=1) - sky_t)
    conv_sci = (np.matmul(ky[:, None, :], truth_s)[:, 0, :] * kx).sum(axis=1) - sky_s
    at_t = k_nom * (truth_t[ar, py, px] - sky_t)
    at_s = truth_s[ar, py, px] - sky_s
    true_diff = np.where(res.template_convolved, at_s - conv_tpl, conv_sci - at_t)
    with np.errstate(invalid="ignore", divide="ignore"):
        true_snr = np.abs(true_diff / res.noise[ar, py, px])

    columns = {
        "seeing": see_s, "seeing_template": see_t,
        "fwhm": nom_s, "fwhm_template": nom_t,
        "sky": sky_s, "sky_template": sky_t,
        "zero_point": zp_s, "zero_point_template": zp_t,
        "limit_mag": table.limit_mag_5sigma[i_s], "airmass": table.airmass[i_s],
        "mjd": table.mjd[i_s], "mjd_template": table.mjd[i_t],
        "peak_snr": det.peak_snr, "mag": mag_col,
    }
    return _Batch(stamps=stamps, detected=det.detected, true_snr=true_snr, peak_snr=det.peak_snr, columns=columns,
                  science=img_s if keep_science else None)


def _saturation_mask(truth: np.ndarray, level: float) -> np.ndarray:
    """Saturated pixels plus bleed trails: (S, H, W) bool.

    The charge above the full well in each column, Q = sum_y max(I - level, 0), spills along the
    column: the saturated run grows by Q / level pixels, split evenly above and below.
    """
    s, h, w = truth.shape
    over = truth >= level
    excess = np.clip(truth - level, 0, None).sum(axis=1)  # (S, W)
    yy = np.arange(h)[None, :, None]
    has = over.any(axis=1)  # (S, W)
    top = np.where(has, np.argmax(over, axis=1), 0)
    bottom = np.where(has, h - 1 - np.argmax(over[:, ::-1], axis=1), -1)
    grow = excess / level / 2
    lo = (top - grow)[:, None, :]
    hi = (bottom + grow)[:, None, :]
    return (yy >= lo) & (yy <= hi) & has[:, None, :]


def _cosmic_rays(img_s, truth_s, idx, cy, cx, rng, camera) -> None:
    """Tracks of 0-6 px at a random angle, 100-3000 ADU per px, deposited bilinearly, science only."""
    if not idx.size:
        return
    n, (h, w) = idx.size, img_s.shape[1:]
    length = np.where(rng.random(n) < 0.3, 0.0, rng.uniform(0.5, 6.0, n))
    ang = rng.uniform(0, np.pi, n)
    amp = _log_uniform(rng, 100, 3000, n)
    n_pts = 16
    t = (np.arange(n_pts) + 0.5) / n_pts - 0.5
    y = (cy[idx] + rng.uniform(-1, 1, n))[:, None] + t[None] * (length * np.sin(ang))[:, None]
    x = (cx[idx] + rng.uniform(-1, 1, n))[:, None] + t[None] * (length * np.cos(ang))[:, None]
    q = (amp * np.maximum(length, 1.0))[:, None] / n_pts * np.ones_like(y)
    deposit = np.zeros((n, h * w), np.float32)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = y - y0, x - x0
    rows = np.repeat(np.arange(n)[:, None], n_pts, axis=1)
    for dy, dx, wgt in ((0, 0, (1 - fy) * (1 - fx)), (1, 0, fy * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 1, fy * fx)):
        yy, xx = np.clip(y0 + dy, 0, h - 1), np.clip(x0 + dx, 0, w - 1)
        np.add.at(deposit, (rows, yy * w + xx), (q * wgt).astype(np.float32))
    deposit = deposit.reshape(n, h, w)
    img_s[idx] = np.minimum(img_s[idx] + deposit, np.float32(camera.saturation))
    truth_s[idx] += deposit


def _hot_pixels(img_t, img_s, truth_t, truth_s, idx, rng, c0) -> None:
    """One (80%) or two adjacent hot pixels, 40-5000 ADU, in the science (70%) or the template."""
    if not idx.size:
        return
    n = idx.size
    in_sci = rng.random(n) < 0.7
    py = np.round(c0 + rng.integers(-2, 3, n)).astype(int)
    px = np.round(c0 + rng.integers(-2, 3, n)).astype(int)
    amp = _log_uniform(rng, 40, 5000, n).astype(np.float32)
    pair = rng.random(n) < 0.2
    for imgs, sel in (((img_s, truth_s), in_sci), ((img_t, truth_t), ~in_sci)):
        j = idx[sel]
        for arr in imgs:
            arr[j, py[sel], px[sel]] += amp[sel]
            arr[j[pair[sel]], py[sel][pair[sel]] + 1, px[sel][pair[sel]]] += amp[sel][pair[sel]] * np.float32(0.5)


def _bad_columns(img_t, img_s, truth_t, truth_s, idx, rng, c0) -> None:
    """A hot (+15..500 ADU, 80%) or dead (-> 0 ADU) column through the centre region, whole or partial."""
    if not idx.size:
        return
    n, (h, w) = idx.size, img_s.shape[1:]
    in_sci = rng.random(n) < 0.7
    col = np.round(c0 + rng.integers(-2, 3, n)).astype(int)
    width = np.where(rng.random(n) < 0.15, 2, 1)
    hot = rng.random(n) < 0.8
    amp = _log_uniform(rng, 15, 500, n)
    yy = np.arange(h)[None, :]
    start = np.where(rng.random(n) < 0.5, 0, rng.integers(0, int(c0) - 1, n))
    up = rng.random(n) < 0.5  # partial columns run from `start` to the top or from the bottom
    rows = np.where(up[:, None], yy >= start[:, None], yy <= (h - 1 - start)[:, None])  # (n, H)
    xx = np.arange(w)[None, :]
    cols = (xx >= col[:, None]) & (xx < (col + width)[:, None])  # (n, W)
    mask = rows[:, :, None] & cols[:, None, :]
    for (img, truth), sel in (((img_s, truth_s), in_sci), ((img_t, truth_t), ~in_sci)):
        j = idx[sel]
        if not j.size:
            continue
        m = mask[sel]
        for arr in (img, truth):
            vals = arr[j]
            dead = np.zeros_like(vals)  # a dead column reads ~0 ADU
            hot_v = vals + amp[sel].astype(np.float32)[:, None, None]
            arr[j] = np.where(m, np.where(hot[sel][:, None, None], hot_v, dead), vals)


def _noise_spikes(img_t, img_s, idx, rng, c0, conv_t, noise_d, k_nom) -> None:
    """A sub-PSF bump (sigma 0.4-0.9 px) whose peak is a Gaussian-tail value z >= 5 of the difference noise.

    z = 5 + E with E exponential of mean 0.2 (the tail of N(0, 1) beyond 5 decays as exp(-5 (z - 5)));
    the bump's peak is (z + 0.5) times the expected difference noise, so that most still pass 5 sigma
    once the pixel's own noise is added (those that do not are rejected like any undetected stamp).
    It goes into the image that is not convolved, so the matching kernel does not smooth it away.
    """
    if not idx.size:
        return
    n, (h, w) = idx.size, img_s.shape[1:]
    z = 5.0 + rng.exponential(0.2, n) + 0.5
    s = rng.uniform(0.4, 0.9, n)
    py = c0 + rng.uniform(-2, 2, n)
    px = c0 + rng.uniform(-2, 2, n)
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = (yy[None] - py[:, None, None]) ** 2 + (xx[None] - px[:, None, None]) ** 2
    bump = np.exp(-0.5 * r2 / s[:, None, None] ** 2)
    bump /= bump.reshape(n, -1).max(axis=1)[:, None, None]
    amp = z * noise_d[idx]
    into_sci = conv_t[idx]
    for img, sel, scale in ((img_s, into_sci, np.ones(n)), (img_t, ~into_sci, 1.0 / k_nom[idx])):
        j = idx[sel]
        if j.size:  # a noise fluctuation carries no true signal: the noiseless images stay as they are
            img[j] += ((amp * scale)[sel][:, None, None] * bump[sel]).astype(np.float32)


def _edges(img_t, img_s, truth_t, truth_s, idx, rng, c0, noise_d, sky) -> None:
    """No data (NaN) beyond a straight chip edge 1-3 px from the centre, with a 1-2 px glow strip."""
    if not idx.size:
        return
    n, (h, w) = idx.size, img_s.shape[1:]
    in_sci = rng.random(n) < 0.6
    side = rng.integers(0, 4, n)  # 0: top, 1: bottom, 2: right, 3: left
    dist = rng.integers(1, 4, n)
    glow_w = rng.integers(1, 3, n)
    bright = rng.random(n) < 0.7  # a glowing edge, or a depressed one (never below zero ADU)
    amp = np.where(bright, rng.uniform(6, 40, n) * noise_d[idx], -rng.uniform(0.2, 0.8, n) * sky[idx])
    amp = amp.astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    ic = int(round(c0))
    coord = np.where((side < 2)[:, None, None], yy[None], xx[None])  # (n, H, W)
    sgn = np.where(side % 2 == 0, 1, -1)[:, None, None]
    rel = (coord - ic) * sgn  # distance from the centre towards the edge side
    nodata = rel > dist[:, None, None]
    glow = (rel > (dist - glow_w)[:, None, None]) & ~nodata
    for (img, truth), sel in (((img_s, truth_s), in_sci), ((img_t, truth_t), ~in_sci)):
        j = idx[sel]
        if not j.size:
            continue
        vals = img[j] + np.where(glow[sel], amp[sel][:, None, None], np.float32(0))
        img[j] = np.where(nodata[sel], np.float32(np.nan), vals)
        truth[j] += np.where(glow[sel], amp[sel][:, None, None], np.float32(0))


def simulate_stamps(
    n: int,
    seed: int = 0,
    real_fraction: float = 0.5,
    config: SimConfig | None = None,
    conditions: ConditionsTable | None = None,
    camera: Camera = DECAM,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> StampSet:
    """n simulated HiTS stamps (S, S, 4), reproducible from `seed`.

    Labels: 1 for kinds `sn` and `variable`, 0 for the bogus kinds; `real_fraction` of the stamps
    are real (rounded per kind). `snr` is the true |SNR| at the detected peak (the pipeline's
    difference of the noiseless images over the noise map); columns hold the observing conditions
    of both epochs (seeing, sky, zero point, ...), the measured signed `peak_snr` and the transient
    magnitude `mag` (NaN for detector artefacts). Each kind is simulated in rounds of
    `BATCHES_PER_ROUND` batches (each with its own child seed) until it has its quota, so the result
    does not depend on `workers` (threads running the batches of a round; default: up to 2).
    `progress(k)` is called with the number of stamps finished so far.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    if not 0.0 <= real_fraction <= 1.0:
        raise ValueError(f"real_fraction must be in [0, 1]; got {real_fraction}")
    cfg = config or SimConfig()
    table = conditions if conditions is not None else load_conditions()
    pools = template_pools(table, weighting=cfg.conditions_weighting)
    seeds = np.random.SeedSequence(seed)
    quota = kind_quota(n, real_fraction, cfg)
    size = cfg.detection.stamp_size
    # output rows are shuffled up front: kind k fills the rows slots[k], in the order it is simulated
    perm = np.random.default_rng(seeds.spawn(1)[0]).permutation(n)
    slots, offset = {}, 0
    for k, q in quota.items():
        slots[k] = perm[offset:offset + q]
        offset += q
    images = np.empty((n, size, size, 4), np.float32)
    true_snr = np.empty(n)
    kinds_out = np.empty(n, dtype=f"<U{max((len(k) for k in KIND_LABEL), default=1)}")
    cols: dict[str, np.ndarray] = {}
    have = dict.fromkeys(quota, 0)
    tried = dict.fromkeys(quota, 0)
    kept = dict.fromkeys(quota, 0)
    n_workers = max(1, min(workers or min(2, os.cpu_count() or 1), BATCHES_PER_ROUND))
    rounds = 0
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        while any(have[k] < quota[k] for k in quota):
            rounds += 1
            need = {k: quota[k] - have[k] for k in quota if have[k] < quota[k]}
            accept = {k: kept[k] / tried[k] if tried[k] else 0.8 for k in need}
            plan = {k: int(math.ceil(v / max(accept[k], 0.02) * 1.03)) + 2 for k, v in need.items()}
            total = sum(plan.values())
            cap = cfg.batch_size * BATCHES_PER_ROUND
            if total > cap:
                plan = {k: max(2, int(v * cap / total)) for k, v in plan.items()}
            kinds = np.repeat(np.array(list(plan)), list(plan.values()))
            chunks = np.array_split(kinds, BATCHES_PER_ROUND)
            jobs = zip(chunks, seeds.spawn(len(chunks)), strict=True)
            batches = list((pool.map if n_workers > 1 else map)(
                lambda job: simulate_batch(job[0], np.random.default_rng(job[1]), cfg, table, camera, pools), jobs
            ))
            for chunk, batch in zip(chunks, batches, strict=True):
                if not cols:
                    cols = {c: np.empty(n, dtype=v.dtype) for c, v in batch.columns.items()}
                for k in np.unique(chunk):
                    sel = np.flatnonzero((chunk == k) & batch.detected)
                    tried[k] += int((chunk == k).sum())
                    kept[k] += sel.size
                    take = sel[: quota[k] - have[k]]
                    rows = slots[k][have[k]:have[k] + take.size]
                    images[rows] = batch.stamps[take]
                    true_snr[rows] = batch.true_snr[take]
                    kinds_out[rows] = k
                    for c, v in batch.columns.items():
                        cols[c][rows] = v[take]
                    have[k] += take.size
            if progress is not None:
                progress(sum(have.values()))
            stuck = [k for k in need if tried[k] > 2000 and kept[k] == 0]
            if stuck or rounds > 10_000:
                raise RuntimeError(f"simulator cannot produce detectable stamps of kind(s) {stuck or list(need)}")
    labels = np.array([KIND_LABEL[k] for k in kinds_out], dtype=np.int64)
    return StampSet(
        images=images, labels=labels, snr=true_snr, kind=kinds_out,
        ids=np.char.add(f"sim{seed}_", np.char.zfill(np.arange(n).astype(str), 7)),
        columns=cols,
        meta={
            "source": "hits_stamps.simulate", "seed": seed, "real_fraction": real_fraction,
            "acceptance": {k: round(kept[k] / tried[k], 4) for k in quota if tried[k]},
            "config": asdict(cfg),
        },
    )
