"""Real-pixel difference stamps from HiTS 2015 image sequences (`hits-stamps build-real`).

A sequence file (schema of ../shared/data/hits2015/hits2015_sequences.npz, see its README) holds
science cutouts (M, H, W) of K objects, one per epoch, and optionally the survey's own difference
light curves of the supernovae (`lc_*`). For each object:

1. Missing pixels: cutouts store 0 where the CCD had no data; those pixels become NaN, and so do
   pixels at or above `bad_above` ADU (no flux: the HiTS 2015 files hold 9.998e7 where a pixel was
   flagged, while DECam saturates at about 40,000 ADU; counted per cutout as `bad_pixels`). A
   cutout with no finite pixel is skipped (counted as `no_data`).
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
- any other class (variable stars such as `EB`, `RRL`): where detected and the file has Kron
  light curves (`kron_*`, aperture photometry of the science images, independent of any difference
  image), the Kron flux change between template and science epoch decides: |df| / err >=
  `kron_real_sigma` and |df| / f_template >= `kron_real_fraction` -> real, kind `variable` (the
  star's own flux changed); |df| / f_template < `kron_bogus_fraction` -> bogus, kind
  `bad_subtraction` (the star was at the template's brightness: a subtraction residual); in
  between, or no Kron row -> not written (ambiguous). Without Kron light curves the PSF-fit flux of
  the difference at the centre decides instead (|F / err| >= `variable_real_snr` real, <
  `variable_bogus_snr` bogus).
Ids are `object_name:mjd` (mjd with 6 decimals); `groups` is the object name, so that every split
of the set keeps an object's epochs together.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from hits_stamps.differencing import (
    DECAM,
    NOMINAL,
    Camera,
    DetectionConfig,
    DifferencingVariety,
    PairVariety,
    cut_stamps,
    detect,
    estimate_sky,
    psf_flux,
    vary_difference,
)
from hits_stamps.errors import StampFileError
from hits_stamps.simulate.conditions import ConditionsTable, load_conditions, match_conditions
from hits_stamps.stamps import StampSet

SHARED_SEQUENCES = Path("../shared/data/hits2015/hits2015_sequences.npz")
PACKAGED_SAMPLE = "hits2015_sample.npz"
REQUIRED = ("stamps", "object_index", "mjd", "object_name", "object_class")
LC_KEYS = ("lc_object_index", "lc_mjd", "lc_flux_adu", "lc_flux_err_adu")
KRON_KEYS = ("kron_object_index", "kron_epoch", "kron_mag", "kron_mag_err")


@dataclass(frozen=True)
class RealConfig:
    """How real sequences become labelled difference stamps."""

    psf_scale: float = 0.875  # FWHM (px) = psf_scale * seeing / pixel_scale (median over HiTS 2015 NV stars)
    template_candidates: int = 5  # the template is the best-seeing of this many earliest usable epochs
    bad_above: float = 1e6  # ADU: pixel values at or above are flags, not flux (missing; DECam saturates ~40,000)
    rise_snr: float = 3.0  # survey |SNR| that marks the start of a supernova light curve
    survey_snr_min: float = 5.0  # survey SNR at or above which a supernova epoch is real
    lc_match_tol: float = 1e-3  # days: light-curve row to cutout time match
    field_match_tol: float = 5e-3  # days: cutout to conditions row, same field
    time_match_tol: float = 1e-4  # days: cutout to conditions row when the field is unknown
    variable_real_snr: float = 5.0  # other classes: |PSF flux SNR| of the difference for real
    variable_bogus_snr: float = 3.0  # other classes: |PSF flux SNR| below which a detection is bogus
    kron_real_sigma: float = 5.0  # Kron light curve: |flux change| / its error at or above which a change is real
    kron_real_fraction: float = 0.15  # ... and |flux change| / template flux at or above which it is real
    kron_bogus_fraction: float = 0.05  # |flux change| / template flux below which a detection is a residual (bogus)
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
    epoch: np.ndarray | None = None  # (M,) HiTS epoch number, where the file has it
    kron: dict[str, np.ndarray] | None = None  # kron_object_index, kron_epoch, kron_mag, kron_mag_err, or None


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
    lc = _object_table(path, arrays, LC_KEYS, "lc_mjd", k)
    kron = _object_table(path, arrays, KRON_KEYS, "kron_mag", k, also=("epoch",))
    epoch = arrays.get("epoch")
    if epoch is not None and epoch.shape != (m,):
        raise StampFileError(path, "epoch", f"shape ({m},)", f"shape {epoch.shape}")
    return Sequences(
        path=path, stamps=stamps.astype(np.float32), object_index=oi.astype(np.int64),
        mjd=mjd.astype(np.float64), centroid_xy=cxy.astype(np.float64), object_name=names.astype(str),
        object_class=classes.astype(str), field=fields.astype(str), lc=lc,
        epoch=None if epoch is None else epoch.astype(np.int64), kron=kron,
    )


def _object_table(
    path: Path, arrays: dict[str, np.ndarray], keys: tuple[str, ...], ref: str, k: int, also: tuple[str, ...] = ()
) -> dict[str, np.ndarray] | None:
    """Per-row arrays `keys` (1-d, the length of `ref`; keys[0] indexes the K objects), all or none of them.

    `also` names arrays that must be present with them. Returns None when none of `keys` is there.
    """
    present = [key for key in keys if key in arrays]
    if not present:
        return None
    if len(present) != len(keys) or any(a not in arrays for a in also):
        raise StampFileError(path, ", ".join(sorted(set(keys + also) - set(arrays))),
                             f"all of {list(keys)}" + (f" and {list(also)}" if also else "") + ", or none",
                             f"only {present}")
    n_rows = arrays[ref].shape
    for key in keys:
        if arrays[key].shape != n_rows or arrays[key].ndim != 1:
            raise StampFileError(path, key, f"shape {n_rows} like {ref}", f"shape {arrays[key].shape}")
    idx = arrays[keys[0]]
    if idx.size and (idx.min() < 0 or idx.max() >= k):
        raise StampFileError(path, keys[0], f"values in [0, {k})", f"range [{idx.min()}, {idx.max()}]")
    return {key: arrays[key] for key in keys}


def kron_flux_change(seq: Sequences, ti: np.ndarray, si: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kron-photometry flux change between template and science epochs, (P,) each; NaN where unmatched.

    With f = 10^(-0.4 m) and sigma_f = 0.4 ln(10) f sigma_m per epoch (rows matched by object and
    HiTS epoch number): returns (delta_f / f_template, |delta_f| / sqrt(sigma_f,t^2 + sigma_f,s^2)).
    """
    n = ti.size
    if seq.kron is None or seq.epoch is None:
        return np.full(n, np.nan), np.full(n, np.nan)
    kr = seq.kron
    key = {(int(o), int(e)): i for i, (o, e) in enumerate(zip(kr["kron_object_index"], kr["kron_epoch"], strict=True))}
    row = np.array([key.get((int(o), int(e)), -1) for o, e in zip(seq.object_index, seq.epoch, strict=True)])
    mag = np.where(row >= 0, kr["kron_mag"][row], np.nan)
    mag_err = np.where(row >= 0, kr["kron_mag_err"][row], np.nan)
    f = 10.0 ** (-0.4 * mag)
    sf = 0.4 * np.log(10.0) * f * mag_err
    with np.errstate(invalid="ignore", divide="ignore"):
        df = f[si] - f[ti]
        return df / f[ti], np.abs(df) / np.hypot(sf[ti], sf[si])


def select_objects(seq: Sequences, names: Iterable[str]) -> Sequences:
    """The sequences of the named objects only (object arrays cut, `object_index` renumbered).

    Every name must be in the file; the error names the first few that are not.
    """
    wanted = np.asarray(sorted(set(names)), dtype=str)
    missing = wanted[~np.isin(wanted, seq.object_name)]
    if missing.size:
        raise StampFileError(seq.path, "object_name", "the objects asked for",
                             f"{missing.size} not in the file (e.g. {', '.join(missing[:3])})")
    keep_obj = np.flatnonzero(np.isin(seq.object_name, wanted))
    new_index = np.full(len(seq.object_name), -1)
    new_index[keep_obj] = np.arange(keep_obj.size)
    rows = np.flatnonzero(np.isin(seq.object_index, keep_obj))
    lc = kron = None
    if seq.lc is not None:
        keep = np.isin(seq.lc["lc_object_index"], keep_obj)
        lc = {k: (new_index[v[keep]] if k == "lc_object_index" else v[keep]) for k, v in seq.lc.items()}
    if seq.kron is not None:
        keep = np.isin(seq.kron["kron_object_index"], keep_obj)
        kron = {k: (new_index[v[keep]] if k == "kron_object_index" else v[keep]) for k, v in seq.kron.items()}
    return Sequences(
        path=seq.path, stamps=seq.stamps[rows], object_index=new_index[seq.object_index[rows]],
        mjd=seq.mjd[rows], centroid_xy=seq.centroid_xy[rows], object_name=seq.object_name[keep_obj],
        object_class=seq.object_class[keep_obj], field=seq.field[keep_obj], lc=lc,
        epoch=None if seq.epoch is None else seq.epoch[rows], kron=kron,
    )


def split_objects(seq: Sequences, fractions: Sequence[float], seed: int = 0) -> list[np.ndarray]:
    """Object names in len(fractions) disjoint parts, stratified by object class, reproducible by seed.

    Each class's objects are shuffled with `seed` and cut at the cumulative fractions (rounded), so
    a part never holds an epoch of another part's object. Fractions may be 0 (an empty part).
    """
    fr = np.asarray(fractions, dtype=float)
    if fr.ndim != 1 or fr.size < 1 or np.any(~np.isfinite(fr)) or np.any(fr < 0) or fr.sum() <= 0:
        raise ValueError(f"fractions must be non-negative numbers with a positive sum; got {list(fractions)}")
    fr = fr / fr.sum()
    rng = np.random.default_rng(seed)
    parts: list[list[str]] = [[] for _ in fr]
    for cls in np.unique(seq.object_class):
        names = rng.permutation(np.sort(seq.object_name[seq.object_class == cls]))
        cuts = np.round(np.cumsum(fr)[:-1] * names.size).astype(int)
        for k, chunk in enumerate(np.split(names, cuts)):
            parts[k].extend(chunk.tolist())
    return [np.asarray(sorted(p), dtype=str) for p in parts]


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
    #                                matched (bool), bad_pixels
    skipped: dict[str, int]
    variety: PairVariety | None = None  # (P,) departures from the nominal differencing, None when nominal


@dataclass
class Cutouts:
    """Per-cutout arrays (M,) that every pair built from a sequence file needs (steps 1-3 of the module doc)."""

    images: np.ndarray  # (M, H, W) float32 ADU, NaN where the CCD had no data
    usable: np.ndarray  # (M,) bool: at least one finite pixel
    complete: np.ndarray  # (M,) bool: every pixel finite
    cond: dict[str, np.ndarray]  # seeing, fwhm, sky, zero_point, exp_time, limit_mag, airmass, matched,
    #                              bad_pixels (flagged values made missing)
    survey_snr: np.ndarray  # (M,) the survey light curve's SNR at this epoch (NaN where none)
    rise: np.ndarray  # (K,) per object: first light-curve time with |SNR| >= rise_snr (inf where none)
    has_lc: np.ndarray  # (K,) bool: the file has light-curve rows for the object
    skipped: dict[str, int]


def prepare_cutouts(
    seq: Sequences,
    config: RealConfig | None = None,
    conditions: ConditionsTable | None = None,
    camera: Camera = DECAM,
) -> Cutouts:
    """Missing pixels, observing conditions and PSF per cutout, and the supernovae's light-curve timing."""
    cfg = config or RealConfig()
    table = conditions if conditions is not None else load_conditions()
    m = seq.stamps.shape[0]
    skipped: dict[str, int] = {}
    # 1. missing pixels
    flagged = seq.stamps >= cfg.bad_above
    images = np.where((seq.stamps == 0) | flagged, np.float32(np.nan), seq.stamps)
    finite_frac = np.isfinite(images).reshape(m, -1).mean(axis=1) if m else np.zeros(0)
    usable = finite_frac > 0
    complete = finite_frac == 1
    if (~usable).any():
        skipped["no_data"] = int((~usable).sum())

    # 2. conditions and PSF per cutout
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

    # 3. the supernovae's survey light curves: SNR per cutout and the time the light curve rises
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
    cond = {"seeing": seeing, "fwhm": fwhm, "sky": sky, "zero_point": zp, "exp_time": exptime,
            "limit_mag": limit_mag, "airmass": airmass,
            "matched": matched, "bad_pixels": flagged.reshape(m, -1).sum(axis=1)}
    return Cutouts(images=images, usable=usable, complete=complete, cond=cond, survey_snr=lc_snr, rise=rise,
                   has_lc=has_lc, skipped=skipped)


def object_epochs(
    seq: Sequences, cut: Cutouts, j: int, config: RealConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(all usable epochs, epochs before the light curve rises) of object j, each sorted by time.

    Objects without a rising light curve (stars) have every usable epoch in both.
    """
    cfg = config or RealConfig()
    ep = np.flatnonzero((seq.object_index == j) & cut.usable)
    ep = ep[np.argsort(seq.mjd[ep], kind="stable")]
    pre = ep[seq.mjd[ep] < cut.rise[j] - cfg.lc_match_tol] if np.isfinite(cut.rise[j]) else ep
    return ep, pre


def best_template(pre: np.ndarray, cut: Cutouts, config: RealConfig | None = None) -> int:
    """The best-seeing of the `template_candidates` earliest epochs in `pre` (complete cutouts first)."""
    cfg = config or RealConfig()
    full = pre[cut.complete[pre]]
    cand = (full if full.size else pre)[: cfg.template_candidates]
    return int(cand[np.argmin(cut.cond["fwhm"][cand])])


def difference_pairs(
    seq: Sequences,
    cut: Cutouts,
    ti: np.ndarray,
    si: np.ndarray,
    config: RealConfig | None = None,
    camera: Camera = DECAM,
    variety: PairVariety | None = None,
    template_images: np.ndarray | None = None,
    science_images: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Difference the cutout pairs (ti, si) with the shared module (step 4 of the module doc).

    `template_images` / `science_images` (P, H, W), when given, replace the cutouts of the pairs
    (e.g. with injected sources); their conditions stay those of the cutouts. Returns (stamps
    (P, S, S, 4), signed peak SNR (P,), detected (P,), PSF-flux SNR at the centre (P,), noise maps
    (P, H, W)).
    """
    cfg = config or RealConfig()
    det_cfg = cfg.detection
    size = det_cfg.stamp_size
    h, w = seq.stamps.shape[1:]
    if min(h, w) < size:
        raise StampFileError(seq.path, "stamps", f"cutouts of at least {size}x{size} pixels", f"{h}x{w}")
    if ti.size == 0:
        return (np.zeros((0, size, size, 4), np.float32), np.zeros(0), np.zeros(0, bool), np.zeros(0),
                np.zeros((0, h, w), np.float32))
    c = cut.cond
    t_img = cut.images[ti] if template_images is None else template_images
    s_img = cut.images[si] if science_images is None else science_images
    shift = seq.centroid_xy[si][:, ::-1] - seq.centroid_xy[ti][:, ::-1]  # (dy, dx): centroid_xy is (x, y)
    shift = np.where(np.isfinite(shift).all(axis=1, keepdims=True), shift, 0.0)
    k = (c["exp_time"][si] / c["exp_time"][ti]) * 10 ** (0.4 * (c["zero_point"][si] - c["zero_point"][ti]))
    sky_t = np.nan_to_num(estimate_sky(t_img)) if template_images is not None else np.nan_to_num(c["sky"][ti])
    sky_s = np.nan_to_num(estimate_sky(s_img)) if science_images is not None else np.nan_to_num(c["sky"][si])
    res = vary_difference(t_img, s_img, c["fwhm"][ti], c["fwhm"][si], sky_t, sky_s, variety,
                          flux_scale=k, shift=shift, camera=camera, config=det_cfg)
    det = detect(res.snr, det_cfg)
    flux, err = psf_flux(res.difference, res.noise, np.maximum(c["fwhm"][ti], c["fwhm"][si]))
    with np.errstate(invalid="ignore", divide="ignore"):
        flux_snr = flux / err
    planes = [cut_stamps(p, det.peak_yx, size) for p in (t_img, s_img, res.difference, res.snr)]
    return np.stack(planes, axis=-1), det.peak_snr, det.detected, flux_snr, res.noise


def difference_sequences(
    seq: Sequences,
    config: RealConfig | None = None,
    conditions: ConditionsTable | None = None,
    camera: Camera = DECAM,
    progress: Callable[[str], None] | None = None,
    variety: DifferencingVariety | None = None,
    seed: int = 0,
) -> SequencePairs:
    """Steps 1-4 of the module doc: conditions, templates, and the difference of every later epoch.

    With a `variety` other than the nominal one, each pair gets its own departures from the nominal
    differencing (drawn with `seed`); a pair flagged `random_template` is differenced against a
    random other epoch of its object (before the light curve rises, for a supernova) instead of
    the object's best template.
    """
    cfg = config or RealConfig()
    say = progress or (lambda _msg: None)
    say("matching observing conditions")
    cut = prepare_cutouts(seq, cfg, conditions, camera)
    skipped = dict(cut.skipped)

    def skip(reason: str, count: int) -> None:
        if count:
            skipped[reason] = skipped.get(reason, 0) + int(count)

    say("choosing templates")
    pair_t: list[np.ndarray] = []
    pair_s: list[np.ndarray] = []
    pools: list[np.ndarray] = []
    for j in range(len(seq.object_name)):
        ep, pre = object_epochs(seq, cut, j, cfg)
        if ep.size == 0:
            continue
        if pre.size == 0:
            skip("objects_without_epoch_before_rise", 1)  # counts objects, not epochs
            pre = ep
        t = best_template(pre, cut, cfg)
        later = ep[seq.mjd[ep] > seq.mjd[t] + 1e-6]
        skip("template_or_earlier_epoch", ep.size - later.size)
        pair_t.append(np.full(later.size, t))
        pair_s.append(later)
        pools.extend([pre] * later.size)
    ti = np.concatenate(pair_t) if pair_t else np.zeros(0, np.int64)
    si = np.concatenate(pair_s) if pair_s else np.zeros(0, np.int64)
    drawn = None
    if variety is not None and not variety.is_nominal:
        rng = np.random.default_rng(seed)
        drawn = variety.draw(rng, ti.size)
        for p in np.flatnonzero(drawn.random_template):
            other = pools[p][pools[p] != si[p]]
            if other.size:
                ti[p] = other[rng.integers(other.size)]

    say(f"differencing {ti.size} epoch pairs")
    stamps, peak, detected, flux_snr, _ = difference_pairs(seq, cut, ti, si, cfg, camera, drawn)
    return SequencePairs(
        sequences=seq, template=ti, science=si, stamps=stamps, peak_snr=peak, detected=detected,
        flux_snr=flux_snr, survey_snr=cut.survey_snr, has_lc=cut.has_lc, cutout=cut.cond, skipped=skipped,
        variety=drawn,
    )


def build_real(
    sequences_path: str | Path | None = None,
    config: RealConfig | None = None,
    conditions: ConditionsTable | None = None,
    camera: Camera = DECAM,
    progress: Callable[[str], None] | None = None,
    objects: Iterable[str] | None = None,
    variety: DifferencingVariety | None = None,
    seed: int = 0,
) -> StampSet:
    """Labelled real-pixel difference stamps (N, 21, 21, 4) from a HiTS sequence file (see module doc).

    `objects` keeps only the named objects (e.g. one part of `split_objects`); `variety` (drawn
    with `seed`) departs from the nominal differencing per pair (see `DifferencingVariety`).
    Columns: object_index, mjd, mjd_template, seeing, seeing_template (NaN where unmatched), fwhm,
    fwhm_template (px), sky, sky_template (ADU, measured), zero_point, zero_point_template,
    limit_mag, airmass, peak_snr (signed), psf_flux_snr, survey_snr (NaN where none),
    kron_flux_change and kron_change_sigma (NaN without Kron light curves), detected and
    conditions_matched (0/1). `snr` is |peak_snr|; `groups` the object name. `meta` counts what was
    skipped and why, and keeps the object names (`object_names`, indexed by `object_index`).
    """
    cfg = config or RealConfig()
    seq = read_sequences(sequences_path if sequences_path is not None else default_sequences_path())
    if objects is not None:
        seq = select_objects(seq, objects)
    pairs = difference_sequences(seq, cfg, conditions, camera, progress, variety=variety, seed=seed)
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
    frac, sigma = kron_flux_change(seq, ti, si)
    by_kron = other & np.isfinite(frac) & np.isfinite(sigma)
    with np.errstate(invalid="ignore"):
        k_real = by_kron & (sigma >= cfg.kron_real_sigma) & (np.abs(frac) >= cfg.kron_real_fraction)
        k_bogus = by_kron & (np.abs(frac) < cfg.kron_bogus_fraction)
    strong = other & detected & np.where(by_kron, k_real, np.abs(flux_snr) >= cfg.variable_real_snr)
    weak = other & detected & np.where(by_kron, k_bogus, np.abs(flux_snr) < cfg.variable_bogus_snr)
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
        "kron_flux_change": frac[keep], "kron_change_sigma": sigma[keep],
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
        "bad_value_pixels": int(cut["bad_pixels"].sum()),  # flagged values made missing (RealConfig.bad_above)
        "object_names": seq.object_name.tolist(),
        "config": asdict(cfg),
        "variety": asdict(variety) if variety is not None else asdict(NOMINAL),
        "variety_seed": int(seed),
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
