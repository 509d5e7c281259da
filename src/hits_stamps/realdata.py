"""Real-pixel difference stamps from HiTS 2015 image sequences (`hits-stamps build-real`).

A sequence file (schema of ../shared/data/hits2015/hits2015_sequences.npz, see its README) holds
science cutouts (M, H, W) of K objects, one per epoch, and optionally the survey's own difference
light curves of the supernovae (`lc_*`). For each object:

1. Missing pixels: cutouts store 0 where the CCD had no data; those pixels become NaN. A cutout
   with no finite pixel is skipped (counted as `no_data`).
2. Conditions: each cutout is matched to the HiTS 2015 g-band conditions table by field and time
   (|dt| <= 5e-3 d; by time alone, |dt| <= 1e-4 d, where the object has no field). Its PSF FWHM is
   `psf_scale` * seeing / 0.27" (the cutouts carry no per-epoch PSF; `psf_scale` = 0.875 is the
   median ratio of the adaptive-moment FWHM of the non-variable stars to the table's seeing, so the
   same rule serves stars and supernovae alike), its flux scale comes from the table's zero point
   and exposure time. Unmatched cutouts take their object's median FWHM and zero point (or the
   table's median when the object has none) and are flagged in `conditions_matched`.
3. Template: among the object's `template_candidates` earliest usable epochs (for a supernova with
   a survey light curve: epochs before the first survey |SNR| >= 3 point), the one with the
   smallest FWHM; cutouts with missing pixels are used only when nothing else is left.
4. Every later epoch is differenced against the template with `hits_stamps.differencing` (the
   simulator's module): sky from each cutout's outer frame, registration shift from the measured
   centroids (`centroid_xy`, x then y) where both epochs have one, then detection of the |SNR| peak
   within 3 px of the centre and the 21x21 cut (the cutout itself).

Labels and kinds (only candidates are written; everything else is counted in `meta["skipped"]`):
- supernova (`SN`) with survey light-curve rows: an epoch whose survey SNR
  (lc_flux_adu / lc_flux_err_adu, matched within `lc_match_tol` days) is >= 5 is real, kind `sn`,
  whether or not our own difference passes 5 sigma (column `detected` says);
- supernova without light-curve rows (or a file without `lc_*` arrays): real, kind `sn`, where our
  difference is detected with a positive peak;
- non-variable star (`NV`): bogus, kind `bad_subtraction`, where our difference is detected
  (residuals of imperfect subtraction);
- any other class (variable stars such as `EB`, `RRL`): where detected, the PSF-fit flux of the
  difference at the centre decides: |F / err| >= `variable_real_snr` -> real, kind `variable` (the
  star's own flux changed); |F / err| < `variable_bogus_snr` -> bogus, kind `bad_subtraction` (a
  residual with no net flux); in between -> not written (ambiguous).
Ids are `object_name:mjd` (mjd with 6 decimals); `groups` is the object name, so that every split
of the set keeps an object's epochs together.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from hits_stamps.differencing import (
    DECAM,
    Camera,
    DetectionConfig,
    cut_stamps,
    detect,
    difference,
    estimate_sky,
    psf_flux,
)
from hits_stamps.errors import StampFileError
from hits_stamps.simulate.conditions import ConditionsTable, load_conditions, match_conditions
from hits_stamps.stamps import StampSet

SHARED_SEQUENCES = Path("../shared/data/hits2015/hits2015_sequences.npz")
PACKAGED_SAMPLE = "hits2015_sample.npz"
REQUIRED = ("stamps", "object_index", "mjd", "object_name", "object_class")
LC_KEYS = ("lc_object_index", "lc_mjd", "lc_flux_adu", "lc_flux_err_adu")


@dataclass(frozen=True)
class RealConfig:
    """How real sequences become labelled difference stamps."""

    psf_scale: float = 0.875  # FWHM (px) = psf_scale * seeing / pixel_scale (median over HiTS 2015 NV stars)
    template_candidates: int = 5  # the template is the best-seeing of this many earliest usable epochs
    rise_snr: float = 3.0  # survey |SNR| that marks the start of a supernova light curve
    survey_snr_min: float = 5.0  # survey SNR at or above which a supernova epoch is real
    lc_match_tol: float = 1e-3  # days: light-curve row to cutout time match
    field_match_tol: float = 5e-3  # days: cutout to conditions row, same field
    time_match_tol: float = 1e-4  # days: cutout to conditions row when the field is unknown
    variable_real_snr: float = 5.0  # other classes: |PSF flux SNR| of the difference for real
    variable_bogus_snr: float = 3.0  # other classes: |PSF flux SNR| below which a detection is bogus
    detection: DetectionConfig = field(default_factory=DetectionConfig)


@dataclass
class Sequences:
    """A validated sequence file; epoch arrays (M,), object arrays (K,), light-curve arrays (L,)."""

    path: Path
    stamps: np.ndarray  # (M, H, W) float32 ADU
    object_index: np.ndarray  # (M,) int
    mjd: np.ndarray  # (M,) float
    centroid_xy: np.ndarray  # (M, 2) float, NaN where unknown
    object_name: np.ndarray  # (K,) str
    object_class: np.ndarray  # (K,) str
    field: np.ndarray  # (K,) str, "" where unknown
    lc: dict[str, np.ndarray] | None  # lc_object_index, lc_mjd, lc_flux_adu, lc_flux_err_adu, or None


def default_sequences_path() -> Path:
    """../shared/data/hits2015/hits2015_sequences.npz when it exists, else the packaged sample.

    The shared file is looked for relative to the working directory, then beside the source
    checkout (an editable install in <repo>/src with the shared folder next to <repo>).
    """
    beside_checkout = Path(__file__).resolve().parents[3] / "shared" / "data" / "hits2015" / SHARED_SEQUENCES.name
    for candidate in (SHARED_SEQUENCES, beside_checkout):
        if candidate.is_file():
            return candidate
    return packaged_sample_path()


def packaged_sample_path() -> Path:
    """The small HiTS 2015 sequence sample shipped in hits_stamps/resources (see its README)."""
    return Path(str(resources.files("hits_stamps").joinpath("resources", PACKAGED_SAMPLE)))


def read_sequences(path: str | Path) -> Sequences:
    """Load and validate a sequence file; any problem is a `StampFileError` naming the field."""
    path = Path(path)
    if not path.exists():
        raise StampFileError(path, None, "an existing HiTS sequence file (.npz)", "no such file")
    if path.is_dir():
        raise StampFileError(path, None, "a HiTS sequence file (.npz)", "a directory")
    if not zipfile.is_zipfile(path):
        raise StampFileError(path, None, "a HiTS sequence file (.npz archive)",
                             f"a file that is not an .npz archive (extension {path.suffix or '(none)'!r})")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise StampFileError(path, None, "plain arrays (no pickled objects)", "an object array") from exc
        raise StampFileError(path, None, "a readable .npz archive", str(exc)) from exc
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise StampFileError(path, None, "a readable .npz archive", f"a truncated or corrupt file ({exc})") from exc
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        if "images" in arrays:
            raise StampFileError(path, None, f"a HiTS sequence file with {list(REQUIRED)}",
                                 "a stamp file (it has `images`); it is already built")
        raise StampFileError(path, ", ".join(missing), f"arrays {list(REQUIRED)}", f"keys {sorted(arrays)}")
    stamps = arrays["stamps"]
    if stamps.ndim != 3 or not np.issubdtype(stamps.dtype, np.number):
        raise StampFileError(path, "stamps", "a numeric (M, H, W) array", f"shape {stamps.shape}, dtype {stamps.dtype}")
    m = stamps.shape[0]
    oi = arrays["object_index"]
    mjd = arrays["mjd"]
    names, classes = arrays["object_name"], arrays["object_class"]
    if oi.shape != (m,) or not np.issubdtype(oi.dtype, np.integer):
        raise StampFileError(path, "object_index", f"an integer array of shape ({m},)",
                             f"shape {oi.shape}, dtype {oi.dtype}")
    if mjd.shape != (m,) or not np.issubdtype(mjd.dtype, np.number):
        raise StampFileError(path, "mjd", f"a numeric array of shape ({m},)", f"shape {mjd.shape}, dtype {mjd.dtype}")
    if not np.isfinite(mjd).all():
        raise StampFileError(path, "mjd", "finite times", f"{int((~np.isfinite(mjd)).sum())} non-finite values")
    k = names.shape[0] if names.ndim == 1 else -1
    if names.ndim != 1 or classes.shape != names.shape:
        raise StampFileError(path, "object_class", f"shape ({k},) like object_name", f"shape {classes.shape}")
    if m and (oi.min() < 0 or oi.max() >= k):
        raise StampFileError(path, "object_index", f"values in [0, {k})", f"range [{oi.min()}, {oi.max()}]")
    fields = arrays.get("field", np.full(k, ""))
    if fields.shape != (k,):
        raise StampFileError(path, "field", f"shape ({k},)", f"shape {fields.shape}")
    cxy = arrays.get("centroid_xy", np.full((m, 2), np.nan))
    if cxy.shape != (m, 2):
        raise StampFileError(path, "centroid_xy", f"shape ({m}, 2)", f"shape {cxy.shape}")
    lc = None
    present = [key for key in LC_KEYS if key in arrays]
    if present:
        if len(present) != len(LC_KEYS):
            raise StampFileError(path, ", ".join(sorted(set(LC_KEYS) - set(present))),
                                 f"all of {list(LC_KEYS)} or none", f"only {present}")
        n_lc = arrays["lc_mjd"].shape
        for key in LC_KEYS:
            if arrays[key].shape != n_lc or arrays[key].ndim != 1:
                raise StampFileError(path, key, f"shape {n_lc} like lc_mjd", f"shape {arrays[key].shape}")
        loi = arrays["lc_object_index"]
        if loi.size and (loi.min() < 0 or loi.max() >= k):
            raise StampFileError(path, "lc_object_index", f"values in [0, {k})", f"range [{loi.min()}, {loi.max()}]")
        lc = {key: arrays[key] for key in LC_KEYS}
    return Sequences(
        path=path, stamps=stamps.astype(np.float32), object_index=oi.astype(np.int64),
        mjd=mjd.astype(np.float64), centroid_xy=cxy.astype(np.float64), object_name=names.astype(str),
        object_class=classes.astype(str), field=fields.astype(str), lc=lc,
    )


def _median_or(values: np.ndarray, default: float) -> float:
    v = values[np.isfinite(values)]
    return float(np.median(v)) if v.size else float(default)


@dataclass
class SequencePairs:
    """Every (template, later epoch) pair of a sequence file, differenced; pair arrays are (P,)."""

    sequences: Sequences
    template: np.ndarray  # (P,) cutout row of the template
    science: np.ndarray  # (P,) cutout row of the science epoch
    stamps: np.ndarray  # (P, S, S, 4) template, science, difference, SNR
    peak_snr: np.ndarray  # (P,) signed |SNR| peak near the centre
    detected: np.ndarray  # (P,) bool
    flux_snr: np.ndarray  # (P,) PSF-fit flux / error of the difference at the centre
    survey_snr: np.ndarray  # (M,) per cutout: the survey light curve's SNR (NaN where none)
    has_lc: np.ndarray  # (K,) per object: the file has light-curve rows for it
    cutout: dict[str, np.ndarray]  # (M,) per cutout: seeing, fwhm, sky, zero_point, exp_time, limit_mag, airmass,
    #                                matched (bool)
    skipped: dict[str, int]


def difference_sequences(
    seq: Sequences,
    config: RealConfig | None = None,
    conditions: ConditionsTable | None = None,
    camera: Camera = DECAM,
    progress: Callable[[str], None] | None = None,
) -> SequencePairs:
    """Steps 1-4 of the module doc: conditions, templates, and the difference of every later epoch."""
    cfg = config or RealConfig()
    table = conditions if conditions is not None else load_conditions()
    say = progress or (lambda _msg: None)
    m = seq.stamps.shape[0]
    skipped: dict[str, int] = {}

    def skip(reason: str, count: int) -> None:
        if count:
            skipped[reason] = skipped.get(reason, 0) + int(count)

    # 1. missing pixels
    images = np.where(seq.stamps == 0, np.float32(np.nan), seq.stamps)
    finite_frac = np.isfinite(images).reshape(m, -1).mean(axis=1) if m else np.zeros(0)
    usable = finite_frac > 0
    complete = finite_frac == 1
    skip("no_data", int((~usable).sum()))

    # 2. conditions and PSF per cutout
    say("matching observing conditions")
    obj_field = seq.field[seq.object_index]
    row = np.full(m, -1, dtype=np.int64)
    has_field = obj_field != ""
    row[has_field] = match_conditions(table, seq.mjd[has_field], obj_field[has_field], cfg.field_match_tol)
    row[~has_field] = match_conditions(table, seq.mjd[~has_field], None, cfg.time_match_tol)
    matched = row >= 0

    def from_table(values: np.ndarray) -> np.ndarray:
        out = np.full(m, np.nan)
        out[matched] = values[row[matched]]
        return out

    seeing = from_table(table.seeing)
    zp = from_table(table.zero_point)
    exptime = from_table(table.exp_time_s)
    limit_mag = from_table(table.limit_mag_5sigma)
    airmass = from_table(table.airmass)
    fwhm = cfg.psf_scale * seeing / camera.pixel_scale
    ok_rows = table.usable()
    default_fwhm = cfg.psf_scale * float(np.median(table.seeing[ok_rows])) / camera.pixel_scale
    default_zp = float(np.median(table.zero_point[ok_rows]))
    default_exptime = float(np.median(table.exp_time_s[ok_rows]))
    for j in np.unique(seq.object_index[~matched | ~np.isfinite(zp)]):
        sel = seq.object_index == j
        fwhm[sel & ~np.isfinite(fwhm)] = _median_or(fwhm[sel], default_fwhm)
        zp[sel & ~np.isfinite(zp)] = _median_or(zp[sel], default_zp)
        exptime[sel & ~np.isfinite(exptime)] = default_exptime
    sky = estimate_sky(images)

    # 3. template per object
    say("choosing templates")
    lc_snr = np.full(m, np.nan)
    rise = np.full(len(seq.object_name), np.inf)
    has_lc = np.zeros(len(seq.object_name), bool)
    if seq.lc is not None:
        l_oi = seq.lc["lc_object_index"].astype(np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            l_snr = seq.lc["lc_flux_adu"] / seq.lc["lc_flux_err_adu"]
        has_lc[np.unique(l_oi)] = True
        for j in np.unique(l_oi):
            r = l_oi == j
            up = np.abs(l_snr[r]) >= cfg.rise_snr
            if up.any():
                rise[j] = seq.lc["lc_mjd"][r][up].min()
            cut = np.flatnonzero(seq.object_index == j)
            if cut.size:
                dt = np.abs(seq.mjd[cut][:, None] - seq.lc["lc_mjd"][r][None, :])  # (epochs, lc rows)
                near = dt.argmin(axis=1)
                hit = dt[np.arange(cut.size), near] <= cfg.lc_match_tol
                lc_snr[cut[hit]] = l_snr[r][near[hit]]

    tmpl_of = np.full(len(seq.object_name), -1, dtype=np.int64)
    pair_t: list[np.ndarray] = []
    pair_s: list[np.ndarray] = []
    for j in range(len(seq.object_name)):
        ep = np.flatnonzero((seq.object_index == j) & usable)
        if ep.size == 0:
            continue
        ep = ep[np.argsort(seq.mjd[ep], kind="stable")]
        pre = ep[seq.mjd[ep] < rise[j] - cfg.lc_match_tol] if np.isfinite(rise[j]) else ep
        if pre.size == 0:
            skip("objects_without_epoch_before_rise", 1)  # counts objects, not epochs
            pre = ep
        full = pre[complete[pre]]
        cand = (full if full.size else pre)[: cfg.template_candidates]
        t = cand[np.argmin(fwhm[cand])]
        tmpl_of[j] = t
        later = ep[seq.mjd[ep] > seq.mjd[t] + 1e-6]
        skip("template_or_earlier_epoch", ep.size - later.size)
        pair_t.append(np.full(later.size, t))
        pair_s.append(later)
    ti = np.concatenate(pair_t) if pair_t else np.zeros(0, np.int64)
    si = np.concatenate(pair_s) if pair_s else np.zeros(0, np.int64)

    # 4. difference every pair with the shared module
    say(f"differencing {ti.size} epoch pairs")
    det_cfg = cfg.detection
    size = det_cfg.stamp_size
    h, w = seq.stamps.shape[1:]
    if min(h, w) < size:
        raise StampFileError(seq.path, "stamps", f"cutouts of at least {size}x{size} pixels", f"{h}x{w}")
    shift = seq.centroid_xy[si][:, ::-1] - seq.centroid_xy[ti][:, ::-1]  # (dy, dx): centroid_xy is (x, y)
    shift = np.where(np.isfinite(shift).all(axis=1, keepdims=True), shift, 0.0)
    k = (exptime[si] / exptime[ti]) * 10 ** (0.4 * (zp[si] - zp[ti]))
    if ti.size:
        res = difference(images[ti], images[si], fwhm[ti], fwhm[si], np.nan_to_num(sky[ti]), np.nan_to_num(sky[si]),
                         flux_scale=k, shift=shift, camera=camera, config=det_cfg)
        det = detect(res.snr, det_cfg)
        flux, err = psf_flux(res.difference, res.noise, np.maximum(fwhm[ti], fwhm[si]))
        with np.errstate(invalid="ignore", divide="ignore"):
            flux_snr = flux / err
        planes = [cut_stamps(p, det.peak_yx, size) for p in (images[ti], images[si], res.difference, res.snr)]
        stamps = np.stack(planes, axis=-1)
        peak, detected = det.peak_snr, det.detected
    else:
        stamps = np.zeros((0, size, size, 4), np.float32)
        peak = flux_snr = np.zeros(0)
        detected = np.zeros(0, bool)

    return SequencePairs(
        sequences=seq, template=ti, science=si, stamps=stamps, peak_snr=peak, detected=detected,
        flux_snr=flux_snr, survey_snr=lc_snr, has_lc=has_lc,
        cutout={"seeing": seeing, "fwhm": fwhm, "sky": sky, "zero_point": zp, "exp_time": exptime,
                "limit_mag": limit_mag, "airmass": airmass, "matched": matched},
        skipped=skipped,
    )


def build_real(
    sequences_path: str | Path | None = None,
    config: RealConfig | None = None,
    conditions: ConditionsTable | None = None,
    camera: Camera = DECAM,
    progress: Callable[[str], None] | None = None,
) -> StampSet:
    """Labelled real-pixel difference stamps (N, 21, 21, 4) from a HiTS sequence file (see module doc).

    Columns: object_index, mjd, mjd_template, seeing, seeing_template (NaN where unmatched), fwhm,
    fwhm_template (px), sky, sky_template (ADU, measured), zero_point, zero_point_template,
    limit_mag, airmass, peak_snr (signed), psf_flux_snr, survey_snr (NaN where none), detected and
    conditions_matched (0/1). `snr` is |peak_snr|. `meta` counts what was skipped and why, and
    keeps the object names (`object_names`, indexed by `object_index`).
    """
    cfg = config or RealConfig()
    seq = read_sequences(sequences_path if sequences_path is not None else default_sequences_path())
    pairs = difference_sequences(seq, cfg, conditions, camera, progress)
    ti, si, stamps = pairs.template, pairs.science, pairs.stamps
    peak, detected, flux_snr, has_lc = pairs.peak_snr, pairs.detected, pairs.flux_snr, pairs.has_lc
    lc_snr = pairs.survey_snr
    cut = pairs.cutout
    seeing, fwhm, sky, zp = cut["seeing"], cut["fwhm"], cut["sky"], cut["zero_point"]
    limit_mag, airmass, matched = cut["limit_mag"], cut["airmass"], cut["matched"]
    skipped = dict(pairs.skipped)

    def skip(reason: str, count: int) -> None:
        if count:
            skipped[reason] = skipped.get(reason, 0) + int(count)

    # 5. labels
    cls = seq.object_class[seq.object_index[si]]
    obj = seq.object_index[si]
    label = np.full(ti.size, -2, dtype=np.int64)  # -2: not a candidate
    kind = np.full(ti.size, "", dtype=object)
    is_sn = cls == "SN"
    sn_lc = is_sn & has_lc[obj]
    survey = lc_snr[si]
    real_sn = sn_lc & (survey >= cfg.survey_snr_min)
    label[real_sn], kind[real_sn] = 1, "sn"
    skip("sn_survey_snr_below_min", int((sn_lc & ~real_sn & np.isfinite(survey)).sum()))
    skip("sn_no_light_curve_row", int((sn_lc & ~np.isfinite(survey)).sum()))
    sn_own = is_sn & ~has_lc[obj] & detected & (peak > 0)
    label[sn_own], kind[sn_own] = 1, "sn"
    skip("sn_without_light_curve_not_detected", int((is_sn & ~has_lc[obj] & ~sn_own).sum()))
    nv = cls == "NV"
    label[nv & detected], kind[nv & detected] = 0, "bad_subtraction"
    skip("nv_not_detected", int((nv & ~detected).sum()))
    other = ~is_sn & ~nv
    strong = other & detected & (np.abs(flux_snr) >= cfg.variable_real_snr)
    weak = other & detected & (np.abs(flux_snr) < cfg.variable_bogus_snr)
    label[strong], kind[strong] = 1, "variable"
    label[weak], kind[weak] = 0, "bad_subtraction"
    skip("variable_not_detected", int((other & ~detected).sum()))
    skip("variable_ambiguous_flux", int((other & detected & ~strong & ~weak).sum()))
    keep = np.flatnonzero(label >= 0)

    ids = np.array([f"{seq.object_name[o]}:{t:.6f}" for o, t in zip(obj[keep], seq.mjd[si[keep]], strict=True)])
    if len(set(ids.tolist())) != ids.size:  # two cutouts of one object at the same time: number them
        _, first = np.unique(ids, return_index=True)
        dup = np.setdiff1d(np.arange(ids.size), first)
        ids[dup] = np.char.add(ids[dup], np.char.add("#", dup.astype(str)))
    columns = {
        "object_index": obj[keep],
        "mjd": seq.mjd[si[keep]], "mjd_template": seq.mjd[ti[keep]],
        "seeing": seeing[si[keep]], "seeing_template": seeing[ti[keep]],
        "fwhm": fwhm[si[keep]], "fwhm_template": fwhm[ti[keep]],
        "sky": sky[si[keep]], "sky_template": sky[ti[keep]],
        "zero_point": zp[si[keep]], "zero_point_template": zp[ti[keep]],
        "limit_mag": limit_mag[si[keep]], "airmass": airmass[si[keep]],
        "peak_snr": peak[keep], "psf_flux_snr": flux_snr[keep], "survey_snr": survey[keep],
        "detected": detected[keep].astype(np.int64),
        "conditions_matched": (matched[si[keep]] & matched[ti[keep]]).astype(np.int64),
    }
    meta = {
        "source": "hits_stamps.build_real",
        "sequences": str(seq.path),
        "cutouts": int(seq.stamps.shape[0]),
        "objects": int(len(seq.object_name)),
        "object_classes": {str(c): int((seq.object_class == c).sum()) for c in np.unique(seq.object_class)},
        "templates": int(np.unique(ti).size),
        "pairs_differenced": int(ti.size),
        "written": int(keep.size),
        "skipped": skipped,
        "cutouts_without_conditions": int((~matched & np.isfinite(sky)).sum()),
        "object_names": seq.object_name.tolist(),
        "config": asdict(cfg),
    }
    return StampSet(
        images=stamps[keep], labels=label[keep], snr=np.abs(peak[keep]), kind=kind[keep].astype(str),
        ids=ids, groups=seq.object_name[obj[keep]], columns=columns, meta=meta,
    )


def write_sequence_sample(
    source: str | Path, destination: str | Path, n_sn: int = 10, n_nv: int = 6, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write a small sequence file: every epoch of `n_sn` supernovae and `n_nv` non-variable stars.

    The supernovae with the most survey light-curve rows at SNR >= 5 are taken (ties broken by
    name); the stars are drawn at random with `seed`. Object and light-curve arrays are cut to the
    chosen objects and `object_index` renumbered. This made `resources/hits2015_sample.npz` from
    ../shared/data/hits2015/hits2015_sequences.npz.
    """
    from hits_stamps.io.atomic import atomic_path

    with np.load(source, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    seq = read_sequences(source)
    sn = np.flatnonzero(seq.object_class == "SN")
    score = np.zeros(len(seq.object_name))
    if seq.lc is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            good = seq.lc["lc_flux_adu"] / seq.lc["lc_flux_err_adu"] >= 5
        score = np.bincount(seq.lc["lc_object_index"][good], minlength=len(seq.object_name)).astype(float)
    sn = sn[np.lexsort((seq.object_name[sn], -score[sn]))][:n_sn]
    nv_all = np.flatnonzero(seq.object_class == "NV")
    nv = np.sort(np.random.default_rng(seed).choice(nv_all, size=min(n_nv, nv_all.size), replace=False))
    chosen = np.concatenate([sn, nv])
    new_index = np.full(len(seq.object_name), -1)
    new_index[chosen] = np.arange(chosen.size)
    rows = np.flatnonzero(np.isin(seq.object_index, chosen))
    m, k = seq.stamps.shape[0], len(seq.object_name)
    out: dict[str, np.ndarray] = {}
    for key, arr in arrays.items():
        if key == "object_index":
            out[key] = new_index[arr[rows]].astype(arr.dtype)
        elif key.startswith("lc_"):
            keep = np.isin(arrays["lc_object_index"], chosen)
            out[key] = new_index[arr[keep]].astype(arr.dtype) if key == "lc_object_index" else arr[keep]
        elif arr.shape[:1] == (m,):
            out[key] = arr[rows]
        elif arr.shape[:1] == (k,):
            out[key] = arr[chosen]
        else:
            out[key] = arr
    with atomic_path(destination, overwrite) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **out)
    return Path(destination)
