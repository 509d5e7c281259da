"""Physically consistent generated stamps: template and science are free, the rest is derived.

A generator's four channels are not tied to each other: nothing makes its difference channel equal
science minus the PSF-matched template, or its SNR equal difference / noise, and nothing keeps its
pixels inside the range of the data (the asinh inverse of a wild draw reaches 1e8 ADU). Here the
generator supplies what is free, the template T and the science S (and a guide to the kernel, its
own difference channel D_g), and everything else comes from `hits_stamps.differencing.difference`,
the function that made the training stamps:

1. T and S are clipped to the training range of their channel ([lo_c, hi_c] over the finite
   training pixels); the clipped pixels are counted per stamp (column `clipped_pixels`) and in
   total (`meta["consistency"]`).
2. The observing conditions are not invented: the `ConditionBank` holds, for every training
   stamp, its PSF FWHMs (columns `fwhm_template`, `fwhm`), the flux scale k that reproduces its
   difference channel (least squares, `fit_flux_scale`), its condition (kind or class) and its
   no-data masks (NaN pixels of template and science: chip edges). For each generated stamp
   `n_candidates` rows of its condition are drawn, each is applied to (T, S), and the row whose
   derived difference is closest to D_g in noise units, mean over finite pixels of
   ((D(row) - D_g) / noise(row))^2, is kept: the generator's difference picks the matching kernel,
   it never becomes a pixel of the output.
3. The kept row's masks become NaN pixels of T and S; the sky of each is measured as the
   simulator does (`estimate_sky`: median of the 3-px frame); D, the noise map and SNR = D / noise
   come from `difference` with the row's FWHMs and k. So for every stamp
   D = (S - sky_S) - k conv(T - sky_T) (or the science convolved, whichever is sharper) and
   SNR = D / noise hold to float rounding, and `check_consistency` recomputes both from the
   stamp's columns.

Derived D and SNR can still leave the training range (a bright generated star in S over an
empty T); those pixels are counted (`meta["consistency"]["outside_range"]`), not clipped, since
clipping them would break the identities.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hits_stamps.differencing import DECAM, Camera, DetectionConfig, difference, estimate_sky
from hits_stamps.errors import HitsStampsError
from hits_stamps.stamps import StampSet

HITS_CHANNELS = ("template", "science", "difference", "snr")
BANK_FILE = "conditions.npz"  # in a generator's model directory, written by the training loop
FLUX_SCALE_RANGE = (0.1, 10.0)  # a fitted k outside this is not trusted; clamped and counted
DEFAULT_CANDIDATES = 16  # training conditions tried per generated stamp (config.json derivation.candidates overrides)
COLUMNS = ("fwhm_template", "fwhm", "sky_template", "sky", "flux_scale")  # the conditions of `difference` per stamp


def is_hits(channels) -> bool:
    """True when the channels are the HiTS four, in order (the only layout differencing can derive)."""
    return tuple(channels) == HITS_CHANNELS


def _check_stamps(stamps: StampSet, what: str) -> None:
    if not is_hits(stamps.channels):
        raise HitsStampsError(f"{what}: deriving difference and SNR needs the channels {HITS_CHANNELS}; "
                              f"got {stamps.channels}")


def fit_flux_scale(t: np.ndarray, s: np.ndarray, d: np.ndarray, fwhm_t: np.ndarray, fwhm_s: np.ndarray,
                   camera: Camera = DECAM, config: DetectionConfig | None = None) -> np.ndarray:
    """Flux scale k (B,) with which `difference` best reproduces the stored difference d.

    D(k) is linear in k up to the frame-median offset removal, so with A = D(0) and B = D(1),
    k = sum((d - A)(B - A)) / sum((B - A)^2) over pixels finite in all three. t, s, d: (B, H, W).
    """
    sky_t, sky_s = np.nan_to_num(estimate_sky(t)), np.nan_to_num(estimate_sky(s))
    a = difference(t, s, fwhm_t, fwhm_s, sky_t, sky_s, flux_scale=0.0, camera=camera, config=config).difference
    b = difference(t, s, fwhm_t, fwhm_s, sky_t, sky_s, flux_scale=1.0, camera=camera, config=config).difference
    u, v = (d - a).astype(np.float64), (b - a).astype(np.float64)
    ok = np.isfinite(u) & np.isfinite(v)
    num = np.where(ok, u * v, 0.0).sum(axis=(1, 2))
    den = np.where(ok, v * v, 0.0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        k = num / den
    return np.where(np.isfinite(k), k, 1.0)


@dataclass
class ConditionBank:
    """Observing conditions and no-data masks of the training stamps, per generator condition.

    Arrays are per training stamp (M rows); `masks` holds only the rows with a NaN pixel.
    """

    condition: np.ndarray  # (M,) int: generator condition (kind or class index) of each row
    fwhm_template: np.ndarray  # (M,) px
    fwhm_science: np.ndarray  # (M,) px
    flux_scale: np.ndarray  # (M,) k fitted by `fit_flux_scale`, clamped to FLUX_SCALE_RANGE
    mask_index: np.ndarray  # (M,) int: row of `masks`, -1 for no NaN pixel
    masks: np.ndarray  # (Q, H, W, 2) bool: NaN pixels of (template, science)
    lo: np.ndarray  # (2,) smallest finite training pixel of template, science
    hi: np.ndarray  # (2,) largest finite training pixel of template, science
    diff_range: np.ndarray  # (2, 2): (lo, hi) of the training difference and SNR channels
    n_flux_scale_clamped: int = 0  # rows whose fitted k was outside FLUX_SCALE_RANGE

    def rows_of(self, k: int) -> np.ndarray:
        return np.flatnonzero(self.condition == k)

    def save(self, path: str | os.PathLike) -> Path:
        from hits_stamps.io.atomic import atomic_path

        path = Path(path)
        with atomic_path(path, overwrite=True) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, condition=self.condition, fwhm_template=self.fwhm_template,
                                    fwhm_science=self.fwhm_science, flux_scale=self.flux_scale,
                                    mask_index=self.mask_index, masks=self.masks, lo=self.lo, hi=self.hi,
                                    diff_range=self.diff_range,
                                    n_flux_scale_clamped=np.int64(self.n_flux_scale_clamped))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConditionBank:
        with np.load(path, allow_pickle=False) as z:
            return cls(**{k: z[k] for k in ("condition", "fwhm_template", "fwhm_science", "flux_scale",
                                             "mask_index", "masks", "lo", "hi", "diff_range")},
                       n_flux_scale_clamped=int(z["n_flux_scale_clamped"]))


def fit_condition_bank(stamps: StampSet, condition: np.ndarray, camera: Camera = DECAM,
                       batch: int = 2048) -> ConditionBank:
    """The `ConditionBank` of labelled HiTS stamps with columns `fwhm_template` and `fwhm`.

    condition (N,): the generator's condition index of each stamp (its `training_targets`).
    """
    _check_stamps(stamps, "training stamps")
    missing = [c for c in ("fwhm_template", "fwhm") if c not in stamps.columns]
    if missing:
        raise HitsStampsError(f"training stamps lack the column(s) {missing}: the PSF FWHMs the derived difference "
                              "needs (simulate and build-real write them)")
    condition = np.asarray(condition, dtype=np.int64)
    if condition.shape != (len(stamps),):
        raise ValueError(f"condition must have shape ({len(stamps)},); got {condition.shape}")
    fw_t = np.asarray(stamps.columns["fwhm_template"], np.float64)
    fw_s = np.asarray(stamps.columns["fwhm"], np.float64)
    good = np.isfinite(fw_t) & np.isfinite(fw_s) & (fw_t > 0) & (fw_s > 0)
    if not good.any():
        raise HitsStampsError("no training stamp has finite, positive fwhm and fwhm_template")
    idx = np.flatnonzero(good)
    x = stamps.images
    k = np.empty(idx.size)
    for start in range(0, idx.size, batch):
        j = idx[start : start + batch]
        k[start : start + batch] = fit_flux_scale(x[j, ..., 0], x[j, ..., 1], x[j, ..., 2], fw_t[j], fw_s[j], camera)
    clamped = int(np.sum((k < FLUX_SCALE_RANGE[0]) | (k > FLUX_SCALE_RANGE[1])))
    k = np.clip(k, *FLUX_SCALE_RANGE)
    nan_ts = ~np.isfinite(x[idx][..., :2])  # (M, H, W, 2)
    has = nan_ts.any(axis=(1, 2, 3))
    mask_index = np.full(idx.size, -1, np.int64)
    mask_index[has] = np.arange(int(has.sum()))

    def finite_range(c: int) -> tuple[float, float]:
        v = x[..., c]
        v = v[np.isfinite(v)]
        return (float(v.min()), float(v.max())) if v.size else (-np.inf, np.inf)

    lo, hi = zip(*(finite_range(c) for c in (0, 1)), strict=True)
    return ConditionBank(
        condition=condition[idx], fwhm_template=fw_t[idx], fwhm_science=fw_s[idx], flux_scale=k,
        mask_index=mask_index, masks=nan_ts[has], lo=np.array(lo), hi=np.array(hi),
        diff_range=np.array([finite_range(2), finite_range(3)]), n_flux_scale_clamped=clamped,
    )


def bank_path(model_dir: str | os.PathLike) -> Path:
    return Path(model_dir) / BANK_FILE


def write_bank(model_dir: str | os.PathLike, train: StampSet, condition: np.ndarray) -> dict[str, Any]:
    """Fit the bank on a generator's training stamps and write it into its directory; what happened, for config.json.

    Stamps that are not HiTS four-channel stamps with FWHM columns get no bank (their generated
    stamps are then returned as the generator draws them) and the reason is returned.
    """
    try:
        bank = fit_condition_bank(train, condition)
    except HitsStampsError as exc:
        return {"file": None, "reason": str(exc)}
    bank.save(bank_path(model_dir))
    return {"file": BANK_FILE, "rows": int(len(bank.condition)), "masks": int(len(bank.masks)),
            "flux_scale_clamped": bank.n_flux_scale_clamped}


def load_bank(model_dir: str | os.PathLike) -> ConditionBank | None:
    """The generator's bank, or None when its directory has none (trained before it existed, or not HiTS)."""
    p = bank_path(model_dir)
    return ConditionBank.load(p) if p.exists() else None


def derive_stamps(
    generated: StampSet,
    conditions: np.ndarray,
    bank: ConditionBank,
    seed: int = 0,
    n_candidates: int = DEFAULT_CANDIDATES,
    camera: Camera = DECAM,
    batch: int = 512,
) -> StampSet:
    """Generated stamps made consistent (module docstring): T, S clipped and kept, D and SNR derived.

    generated: (N, H, W, 4) HiTS stamps from a generator; conditions (N,): the condition index each
    was generated with. Returns a new StampSet (rows aligned) whose columns add `COLUMNS`,
    `clipped_pixels` (template and science pixels moved into the training range),
    `nonfinite_generated_pixels`, `bank_row` and `match_chi2`; `meta["consistency"]` holds the counts.
    """
    _check_stamps(generated, "generated stamps")
    if n_candidates < 1:
        raise HitsStampsError(f"n_candidates must be >= 1; got {n_candidates}")
    conditions = np.asarray(conditions, dtype=np.int64)
    n = len(generated)
    if conditions.shape != (n,):
        raise ValueError(f"conditions must have shape ({n},); got {conditions.shape}")
    rng = np.random.default_rng([int(seed), 7919])
    x = generated.images
    ts = np.empty_like(x[..., :2])
    clipped = np.zeros(n, np.int64)
    nonfinite = np.zeros(n, np.int64)
    for c in (0, 1):
        v = x[..., c]
        fin = np.isfinite(v)
        ts[..., c] = np.clip(np.where(fin, v, bank.lo[c]), bank.lo[c], bank.hi[c])
        clipped += (fin & ((v < bank.lo[c]) | (v > bank.hi[c]))).sum(axis=(1, 2))
        nonfinite += (~fin).sum(axis=(1, 2))  # set to lo: a generator should not draw these
    guide = np.nan_to_num(x[..., 2], nan=0.0, posinf=0.0, neginf=0.0)
    guide = np.clip(guide, *bank.diff_range[0])  # (N, H, W)

    # 1. candidate conditions per stamp, scored against the generator's own difference
    cand = np.empty((n, n_candidates), np.int64)
    for k in np.unique(conditions):
        rows = bank.rows_of(int(k))
        if rows.size == 0:
            rows = np.arange(len(bank.condition))  # a condition without training rows: any row
        sel = conditions == k
        cand[sel] = rows[rng.integers(0, rows.size, (int(sel.sum()), n_candidates))]
    chosen = np.empty(n, np.int64)
    chi2 = np.empty(n)
    for start in range(0, n, max(1, batch // n_candidates)):
        j = np.arange(start, min(n, start + max(1, batch // n_candidates)))
        rows = cand[j].reshape(-1)  # (b * K,)
        t = np.repeat(ts[j, ..., 0], n_candidates, axis=0)
        s = np.repeat(ts[j, ..., 1], n_candidates, axis=0)
        res = difference(t, s, bank.fwhm_template[rows], bank.fwhm_science[rows], estimate_sky(t), estimate_sky(s),
                         flux_scale=bank.flux_scale[rows], camera=camera)
        g = np.repeat(guide[j], n_candidates, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            z2 = ((res.difference - g) / res.noise) ** 2
        score = np.nanmean(np.where(np.isfinite(z2), z2, np.nan).reshape(len(j), n_candidates, -1), axis=2)
        score = np.where(np.isfinite(score), score, np.inf)
        best = score.argmin(axis=1)
        chosen[j] = cand[j, best]
        chi2[j] = score[np.arange(len(j)), best]

    # 2. masks of the chosen rows, then the final difference
    t, s = ts[..., 0].copy(), ts[..., 1].copy()
    mi = bank.mask_index[chosen]
    has = mi >= 0
    if has.any():
        m = bank.masks[mi[has]]  # (P, H, W, 2)
        t[has] = np.where(m[..., 0], np.nan, t[has])
        s[has] = np.where(m[..., 1], np.nan, s[has])
    sky_t, sky_s = estimate_sky(t), estimate_sky(s)
    sky_t = np.where(np.isfinite(sky_t), sky_t, np.nanmedian(ts[..., 0], axis=(1, 2)))
    sky_s = np.where(np.isfinite(sky_s), sky_s, np.nanmedian(ts[..., 1], axis=(1, 2)))
    fw_t, fw_s, k = bank.fwhm_template[chosen], bank.fwhm_science[chosen], bank.flux_scale[chosen]
    res = difference(t, s, fw_t, fw_s, sky_t, sky_s, flux_scale=k, camera=camera)
    images = np.stack([t, s, res.difference, res.snr], axis=-1).astype(np.float32)  # (N, H, W, 4)
    outside = {
        name: int(np.sum(np.isfinite(p) & ((p < lo) | (p > hi))))
        for name, p, (lo, hi) in (("difference", res.difference, bank.diff_range[0]),
                                  ("snr", res.snr, bank.diff_range[1]))
    }
    columns = dict(generated.columns)
    columns.update({
        "fwhm_template": fw_t, "fwhm": fw_s, "sky_template": sky_t, "sky": sky_s, "flux_scale": k,
        "clipped_pixels": clipped, "nonfinite_generated_pixels": nonfinite, "bank_row": chosen, "match_chi2": chi2,
    })
    meta = dict(generated.meta)
    meta["consistency"] = {
        "derived": True, "n_candidates": int(n_candidates), "camera": {"gain": camera.gain,
                                                                       "read_noise": camera.read_noise},
        "clip_range": {"template": [float(bank.lo[0]), float(bank.hi[0])],
                       "science": [float(bank.lo[1]), float(bank.hi[1])]},
        "clipped_pixels": int(clipped.sum()), "stamps_with_clipped_pixels": int(np.sum(clipped > 0)),
        "pixels_per_stamp": int(2 * x.shape[1] * x.shape[2]), "nonfinite_generated_pixels": int(nonfinite.sum()),
        "outside_range": outside, "stamps_with_nan_mask": int(has.sum()),
    }
    from hits_stamps.generation.sample import peak_snr

    return StampSet(images=images, labels=generated.labels, snr=peak_snr(images, HITS_CHANNELS), kind=generated.kind,
                    ids=generated.ids, groups=generated.groups, channels=generated.channels, columns=columns,
                    meta=meta)


def check_consistency(stamps: StampSet, camera: Camera = DECAM) -> dict[str, Any]:
    """Recompute D and SNR of derived stamps from their template, science and `COLUMNS`.

    Returns the largest absolute error of the difference relative to the stamp's largest |D|
    (`max_rel_err_difference`), of SNR relative to its largest |SNR| (`max_rel_err_snr`), and
    whether the NaN pixels agree (`nan_mismatch`: pixels NaN in one and not the other).
    """
    _check_stamps(stamps, "stamps")
    missing = [c for c in COLUMNS if c not in stamps.columns]
    if missing:
        raise HitsStampsError(f"stamps lack the column(s) {missing}; were they made by derive_stamps?")
    c = stamps.columns
    x = stamps.images
    res = difference(x[..., 0], x[..., 1], c["fwhm_template"], c["fwhm"], c["sky_template"], c["sky"],
                     flux_scale=c["flux_scale"], camera=camera)

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        ok = np.isfinite(a) & np.isfinite(b)
        scale = np.nanmax(np.where(ok, np.abs(b), 0.0), axis=(1, 2), initial=0.0)  # (N,)
        err = np.where(ok, np.abs(a - b), 0.0).max(axis=(1, 2), initial=0.0)
        return float(np.max(err / np.maximum(scale, 1e-12), initial=0.0))

    nan_mismatch = int(np.sum(np.isfinite(res.difference) != np.isfinite(x[..., 2]))
                       + np.sum(np.isfinite(res.snr) != np.isfinite(x[..., 3])))
    return {"max_rel_err_difference": rel(x[..., 2], res.difference), "max_rel_err_snr": rel(x[..., 3], res.snr),
            "nan_mismatch": nan_mismatch, "n": len(stamps)}
