"""Sources injected into real HiTS 2015 images, and artefacts painted onto them (`hits-stamps inject`).

The simulator draws a whole scene; here only the change is synthetic and everything else is real
pixels: a real template epoch and a real science epoch of one object from a sequence file, with
that epoch's PSF, sky and noise, differenced by the same module as `build_real`
(`hits_stamps.differencing`), optionally with per-pair departures from the nominal pipeline
(`DifferencingVariety`). This is how DES (autoScan's fakes) and KMTNet (Lee et al. 2025,
arXiv 2510.17053) train classifiers that hold on real data.

Real (label 1), by placement (`kind`):
- `injected_star`: a point source at a star's centroid in the science epoch (a variable star
  brightening), in the sequences of stars (any object class but `SN`), at least
  `min_star_fraction` of the star's template-epoch flux (the rule that labels the variable stars:
  a smaller change of a star is a subtraction residual, not a transient);
- `injected_fading`: the source is injected into the *template* epoch instead (at the star's
  centroid, or near the supernova's host), so the difference is negative: a real fading;
- `injected_host`: near or on the host of a supernova, within `host_radius` px of the supernova's
  position (the cutout centre), using only the epochs before its survey light curve rises;
- `injected_random`: anywhere within `random_radius` px of the cutout centre, in any sequence.
  (The cutouts are 21x21 and centred on their object, so a candidate centred on its detection can
  only lie in the central disc that `detect` searches.)

Bogus (label 0), from the same real pairs:
- `bad_subtraction`: what a real pair gives with nothing injected (star residuals, PSF mismatch,
  misregistration), where it is detected;
- `cosmic_ray` (science only), `hot_pixel`, `bad_column`, `trail` (a satellite or aircraft streak
  across the science epoch): artefacts painted onto the real pixels, with the simulator's models.

Sources: the PSF is the simulator's Moffat-like profile (`render_points`) with the epoch's FWHM
from the observing conditions (psf_scale * seeing / 0.27"), checked against the star in the cutout
where there is one: where the adaptive-moment FWHM of the star differs by more than
`fwhm_check_tolerance` (relative), the measured value is used, and how often is recorded
(`meta["fwhm_check"]`). Magnitudes are uniform between `mag_bright` and the epoch's 5-sigma limit
plus `mag_below_limit`, so some injections are fainter than the limit; the flux is
t * 10^(-0.4 (m - zp)) ADU, with its own Poisson noise (Gaussian approximation, gain from the
camera). An injection is written only where it is a candidate: the pair is detected (|SNR| >= 5
within 3 px of the centre) *and* the injected source alone has PSF-fit SNR >= `min_injected_snr`
on the pair's noise map, so a star residual that happens to be detected is never labelled real
for an injection it cannot show. Undetected draws are counted in `meta["drawn"]` and
`meta["written"]` per kind (the detection efficiency of the injections).

Every stamp's `groups` is its object's name, and its columns record the pair, the conditions and
the injection (`injected_mag`, `injected_flux`, `injected_snr`, `inj_dy`, `inj_dx` relative to the
cutout centre, NaN for bogus kinds) and the differencing variety drawn for it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hits_stamps.differencing import (
    DECAM,
    NOMINAL,
    Camera,
    DifferencingVariety,
    PairVariety,
    adaptive_fwhm,
    frame_pixels,
    psf_flux,
)
from hits_stamps.errors import HitsStampsError
from hits_stamps.realdata import (
    Cutouts,
    RealConfig,
    Sequences,
    best_template,
    default_sequences_path,
    difference_pairs,
    object_epochs,
    prepare_cutouts,
    read_sequences,
    select_objects,
)
from hits_stamps.simulate.conditions import ConditionsTable, load_conditions
from hits_stamps.simulate.scene import render_points, standard_normal
from hits_stamps.stamps import StampSet

REAL_PLACEMENTS = ("injected_star", "injected_fading", "injected_host", "injected_random")
BOGUS_KINDS = ("bad_subtraction", "cosmic_ray", "hot_pixel", "bad_column", "trail")
KINDS = REAL_PLACEMENTS + BOGUS_KINDS


@dataclass(frozen=True)
class InjectConfig:
    """What is injected or painted, where, and how bright."""

    real_fraction: float = 0.5  # fraction of the written stamps that are injections (label 1)
    placements: tuple[str, ...] = REAL_PLACEMENTS  # real kinds to draw (a subset of REAL_PLACEMENTS)
    placement_weights: tuple[float, ...] = (0.35, 0.2, 0.25, 0.2)  # relative share of each placement
    bogus_kinds: tuple[str, ...] = BOGUS_KINDS  # bogus kinds to draw (a subset of BOGUS_KINDS)
    bogus_weights: tuple[float, ...] = (0.4, 0.15, 0.15, 0.15, 0.15)  # relative share of each bogus kind
    mag_bright: float = 17.0  # brightest injected magnitude (g)
    mag_below_limit: float = 0.75  # faintest injected magnitude = the epoch's 5-sigma limit plus this
    host_radius: float = 2.5  # px: largest offset of an `injected_host` source from the supernova position
    random_radius: float = 3.0  # px: largest offset of an `injected_random` source from the cutout centre
    star_jitter: float = 0.3  # px: rms offset of an `injected_star` source from the measured centroid
    min_injected_snr: float = 5.0  # PSF-fit SNR the injected source alone must reach on the pair's noise
    min_star_fraction: float = 0.15  # on a star: the source's flux / the star's template-epoch flux at least this
    #                                  (the variable-star labels' rule, RealConfig.kron_real_fraction); 0 = any
    fwhm_check_tolerance: float = 0.25  # relative FWHM difference (conditions vs the star) above which the star's
    #                                     measured FWHM is used
    batch: int = 2048  # pairs drawn per round
    max_rounds: int = 200  # rounds before giving up on a quota (the error reports the acceptance)
    real: RealConfig = field(default_factory=RealConfig)  # conditions, templates, detection (shared with build-real)

    def __post_init__(self) -> None:
        if not 0 <= self.real_fraction <= 1:
            raise HitsStampsError(f"real_fraction must be in [0, 1]; got {self.real_fraction!r}")
        if not 0 <= self.min_star_fraction < 1:
            raise HitsStampsError(f"min_star_fraction must be in [0, 1); got {self.min_star_fraction!r}")
        for names, weights, allowed, what in (
            (self.placements, self.placement_weights, REAL_PLACEMENTS, "placements"),
            (self.bogus_kinds, self.bogus_weights, BOGUS_KINDS, "bogus_kinds"),
        ):
            bad = [n for n in names if n not in allowed]
            if bad:
                raise HitsStampsError(f"{what}: unknown {bad}; choose from {list(allowed)}")
            if len(weights) != len(names):
                raise HitsStampsError(f"{what}: {len(names)} names but {len(weights)} weights")
            w = np.asarray(weights, dtype=float)
            if names and (not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0):
                raise HitsStampsError(f"{what} weights must be non-negative with a positive sum; got {list(weights)}")
        if not self.placements and self.real_fraction > 0:
            raise HitsStampsError("real_fraction > 0 needs at least one placement")
        if not self.bogus_kinds and self.real_fraction < 1:
            raise HitsStampsError("real_fraction < 1 needs at least one bogus kind")
        for name in ("host_radius", "random_radius", "star_jitter", "mag_below_limit", "fwhm_check_tolerance"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise HitsStampsError(f"{name} must be finite and >= 0; got {v!r}")
        if not np.isfinite(self.mag_bright):
            raise HitsStampsError(f"mag_bright must be finite; got {self.mag_bright!r}")
        if self.batch < 1 or self.max_rounds < 1:
            raise HitsStampsError("batch and max_rounds must be >= 1")

    def quotas(self, n: int) -> dict[str, int]:
        """Stamps of each kind in a set of n (largest remainders; real_fraction of them injections)."""
        n_real = int(round(n * self.real_fraction))
        out = _share(n_real, self.placements, self.placement_weights)
        out.update(_share(n - n_real, self.bogus_kinds, self.bogus_weights))
        return out


def _share(n: int, names: Sequence[str], weights: Sequence[float]) -> dict[str, int]:
    if not names:
        return {}
    w = np.asarray(weights, dtype=float)
    exact = n * w / w.sum()
    base = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - base), kind="stable")[: n - base.sum()]:
        base[i] += 1
    return {name: int(k) for name, k in zip(names, base, strict=True)}


@dataclass
class _Pools:
    """Which objects and epochs each kind may use."""

    stars: np.ndarray  # object rows that are stars (class not SN) with >= 2 usable epochs
    hosts: np.ndarray  # supernova rows with >= 2 usable epochs before the light curve rises
    epochs: list[np.ndarray]  # per object: epochs a pair may use (pre-rise for supernovae)
    template: np.ndarray  # per object: its best template epoch (-1 where none)
    is_sn: np.ndarray  # per object: class SN


def _pools(seq: Sequences, cut: Cutouts, cfg: RealConfig) -> _Pools:
    k = len(seq.object_name)
    is_sn = seq.object_class == "SN"
    epochs: list[np.ndarray] = []
    template = np.full(k, -1, dtype=np.int64)
    for j in range(k):
        ep, pre = object_epochs(seq, cut, j, cfg)
        use = pre if is_sn[j] else ep  # a supernova's own light must not be in either epoch
        epochs.append(use)
        if use.size >= 2:
            template[j] = best_template(use, cut, cfg)
    ok = template >= 0
    return _Pools(stars=np.flatnonzero(ok & ~is_sn), hosts=np.flatnonzero(ok & is_sn), epochs=epochs,
                  template=template, is_sn=is_sn)


def _star_fwhm(cut: Cutouts, rows: np.ndarray, is_star: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """FWHM per cutout row: the conditions' value, or the star's measured one where they disagree.

    Returns (fwhm (R,), replaced (R,) bool).
    """
    fwhm = cut.cond["fwhm"][rows].copy()
    replaced = np.zeros(rows.size, bool)
    if is_star.any():
        measured = adaptive_fwhm(cut.images[rows[is_star]], cut.cond["sky"][rows[is_star]])
        nominal = fwhm[is_star]
        with np.errstate(invalid="ignore"):
            off = np.isfinite(measured) & (np.abs(measured / nominal - 1) > tolerance)
        sub = fwhm[is_star]
        sub[off] = measured[off]
        fwhm[is_star] = sub
        rep = replaced[is_star]
        rep[off] = True
        replaced[is_star] = rep
    return fwhm, replaced


def _paint_trails(img: np.ndarray, idx: np.ndarray, rng: np.random.Generator, fwhm: np.ndarray, c0: float) -> None:
    """A straight streak through the central 5x5 px at a random angle, in place; img (S, H, W), fwhm (S,).

    Cross-section Gaussian of the epoch's PSF sigma (times 1-2 for defocused or moving objects),
    peak 30-3000 ADU per pixel (log-uniform), so a satellite or aircraft trail in one exposure.
    """
    if not idx.size:
        return
    n, (h, w) = idx.size, img.shape[1:]
    ang = rng.uniform(0, np.pi, n)
    py = c0 + rng.uniform(-2, 2, n)
    px = c0 + rng.uniform(-2, 2, n)
    sigma = fwhm[idx] / 2.3548 * rng.uniform(1.0, 2.0, n)
    amp = np.exp(rng.uniform(np.log(30), np.log(3000), n))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dist = (yy[None] - py[:, None, None]) * np.cos(ang)[:, None, None] - (xx[None] - px[:, None, None]) * np.sin(
        ang)[:, None, None]  # signed distance from the line, (n, H, W)
    img[idx] += (amp[:, None, None] * np.exp(-0.5 * (dist / sigma[:, None, None]) ** 2)).astype(np.float32)


def inject_stamps(
    n: int,
    seed: int = 0,
    sequences: str | Path | Sequences | None = None,
    config: InjectConfig | None = None,
    variety: DifferencingVariety | None = None,
    objects: Iterable[str] | None = None,
    conditions: ConditionsTable | None = None,
    camera: Camera = DECAM,
    progress: Callable[[int], None] | None = None,
) -> StampSet:
    """n labelled stamps from real HiTS 2015 sequences with injected sources and painted artefacts.

    Parameters
    ----------
    n : stamps to write (kinds in the proportions of `config.quotas(n)`)
    seed : seeds every draw; the same arguments give the same stamps
    sequences : a sequence file or a read `Sequences` (default: the shared HiTS 2015 file, else
        the packaged sample)
    variety : per-pair departures from the nominal differencing (None: nominal)
    objects : use only these objects (e.g. the training part of `split_objects`)
    progress : called with the number of stamps written so far after each round

    Returns a StampSet (n, 21, 21, 4) with labels, kind, snr = |peak SNR|, groups = object names.
    """
    cfg = config or InjectConfig()
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise HitsStampsError(f"n must be a whole number >= 1; got {n!r}")
    var = variety or NOMINAL
    seq = sequences if isinstance(sequences, Sequences) else read_sequences(
        sequences if sequences is not None else default_sequences_path())
    if objects is not None:
        seq = select_objects(seq, objects)
    table = conditions if conditions is not None else load_conditions()
    cut = prepare_cutouts(seq, cfg.real, table, camera)
    ok_rows = table.usable()
    limit_default = float(np.median(table.limit_mag_5sigma[ok_rows]))
    limit_mag = np.where(np.isfinite(cut.cond["limit_mag"]), cut.cond["limit_mag"], limit_default)
    pools = _pools(seq, cut, cfg.real)
    quotas = cfg.quotas(int(n))
    needs_star = quotas.get("injected_star", 0) > 0
    needs_host = quotas.get("injected_host", 0) > 0
    if needs_star and not pools.stars.size:
        raise HitsStampsError(f"{seq.path}: injected_star needs star sequences with >= 2 usable epochs; found none")
    if needs_host and not pools.hosts.size:
        raise HitsStampsError(f"{seq.path}: injected_host needs supernova sequences with >= 2 epochs before the "
                              "light curve rises; found none")
    any_obj = np.concatenate([pools.stars, pools.hosts])
    if not any_obj.size:
        raise HitsStampsError(f"{seq.path}: no object has two usable epochs to pair")

    rng = np.random.default_rng(seed)
    h, w = seq.stamps.shape[1:]
    c0y, c0x = (h - 1) / 2, (w - 1) / 2
    written = dict.fromkeys(quotas, 0)
    drawn = dict.fromkeys(quotas, 0)
    parts: list[dict[str, np.ndarray]] = []
    fwhm_checked = fwhm_replaced = 0
    faint_drawn = faint_written = 0

    for _round in range(cfg.max_rounds):
        left = {k: q - written[k] for k, q in quotas.items() if q > written[k]}
        if not left:
            break
        total_left = sum(left.values())
        b = min(cfg.batch, max(64, 3 * total_left))
        names = np.array(list(left))
        kinds = names[rng.choice(names.size, size=b, p=np.array(list(left.values()), float) / total_left)]

        # objects: stars for star placements, hosts for host placements, any for the rest
        obj = np.empty(b, dtype=np.int64)
        for kind_name, pool in (("injected_star", pools.stars), ("injected_host", pools.hosts)):
            sel = kinds == kind_name
            obj[sel] = pool[rng.integers(pool.size, size=int(sel.sum()))]
        rest = ~np.isin(kinds, ("injected_star", "injected_host"))
        obj[rest] = any_obj[rng.integers(any_obj.size, size=int(rest.sum()))]

        # pairs: the best template (or a random other epoch), a random other epoch as science
        pv: PairVariety = var.draw(rng, b)
        ti = pools.template[obj].copy()
        si = np.empty(b, dtype=np.int64)
        for i in range(b):
            ep = pools.epochs[obj[i]]
            if pv.random_template[i]:
                ti[i] = ep[rng.integers(ep.size)]
            other = ep[ep != ti[i]]
            si[i] = other[rng.integers(other.size)]

        t_img = cut.images[ti].copy()
        s_img = cut.images[si].copy()
        star_obj = ~pools.is_sn[obj]
        fw_t, rep_t = _star_fwhm(cut, ti, star_obj, cfg.fwhm_check_tolerance)
        fw_s, rep_s = _star_fwhm(cut, si, star_obj, cfg.fwhm_check_tolerance)
        fwhm_checked += 2 * int(star_obj.sum())
        fwhm_replaced += int(rep_t.sum() + rep_s.sum())

        # injections: where, how bright, into which epoch
        is_real = np.isin(kinds, REAL_PLACEMENTS)
        fading = kinds == "injected_fading"
        into = np.where(fading, ti, si)  # the epoch that receives the source
        cxy = seq.centroid_xy[into]  # (x, y) of the star in that epoch, NaN for supernovae
        has_c = np.isfinite(cxy).all(axis=1)
        y = np.full(b, c0y)
        x = np.full(b, c0x)
        on_star = (kinds == "injected_star") | (fading & star_obj)
        use_c = on_star & has_c
        y[use_c] = cxy[use_c, 1]
        x[use_c] = cxy[use_c, 0]
        jitter = rng.normal(0.0, cfg.star_jitter, (b, 2))
        y[on_star] += jitter[on_star, 0]
        x[on_star] += jitter[on_star, 1]
        for sel, radius in (((kinds == "injected_host") | (fading & ~star_obj), cfg.host_radius),
                            (kinds == "injected_random", cfg.random_radius)):
            r = radius * np.sqrt(rng.random(b))
            a = rng.uniform(0, 2 * np.pi, b)
            y[sel] = c0y + (r * np.sin(a))[sel]
            x[sel] = c0x + (r * np.cos(a))[sel]
        lim = limit_mag[into]
        faint_end = lim + cfg.mag_below_limit
        # on a star, a change must be a sizeable fraction of the star's flux to be real (as for the variable
        # stars' labels); the faint end is capped there, and a star too bright for any allowed source is refused
        star_ok = np.ones(b, dtype=bool)
        star_flux = np.full(b, np.nan)
        if use_c.any():
            k = np.flatnonzero(use_c)
            c_t = seq.centroid_xy[ti[k]]
            c_t = np.where(np.isfinite(c_t).all(axis=1, keepdims=True), c_t, cxy[k])
            f_star = _star_flux(cut.images[ti[k]], fw_t[k], c_t)
            star_flux[k] = f_star
        if cfg.min_star_fraction > 0 and use_c.any():
            f = cfg.min_star_fraction
            need = np.where(fading[k], f / (1.0 - f), f) * np.maximum(f_star, 0.0)  # fading: the template holds both
            with np.errstate(divide="ignore", invalid="ignore"):
                m_need = cut.cond["zero_point"][into[k]] - 2.5 * np.log10(need / cut.cond["exp_time"][into[k]])
            m_need = np.where(np.isfinite(m_need), m_need, np.inf)
            faint_end[k] = np.minimum(faint_end[k], m_need)
            star_ok[k] = faint_end[k] >= cfg.mag_bright + 0.1
        mag = rng.uniform(cfg.mag_bright, np.maximum(faint_end, cfg.mag_bright + 0.1))
        flux = cut.cond["exp_time"][into] * 10.0 ** (-0.4 * (mag - cut.cond["zero_point"][into]))
        fw_into = np.where(fading, fw_t, fw_s)
        ridx = np.flatnonzero(is_real)
        model = np.zeros((b, h, w), np.float32)
        if ridx.size:
            model[ridx] = render_points((h, w), y[ridx], x[ridx], flux[ridx], fw_into[ridx])
            noisy = model[ridx] + np.sqrt(np.maximum(model[ridx], 0) / np.float32(camera.gain)) * standard_normal(
                rng, (ridx.size, h, w))
            fsel = fading[ridx]
            t_img[ridx[fsel]] += noisy[fsel]
            s_img[ridx[~fsel]] += noisy[~fsel]

        # artefacts painted on real pixels (the simulator's models)
        _paint_artefacts(kinds, t_img, s_img, fw_s, rng, camera, c0y, c0x)

        # keep the template's own sky: missing pixels stay NaN (adding to NaN keeps NaN)
        stamps, peak, detected, flux_snr, noise = difference_pairs(
            seq, cut, ti, si, cfg.real, camera, None if var.is_nominal else pv,
            template_images=t_img, science_images=s_img)
        inj_snr = np.full(b, np.nan)
        if ridx.size:
            f_alone, err = psf_flux(model[ridx], noise[ridx], fw_into[ridx],
                                    centre_yx=np.stack([y[ridx], x[ridx]], axis=1))
            with np.errstate(invalid="ignore", divide="ignore"):
                inj_snr[ridx] = f_alone / err
        with np.errstate(invalid="ignore"):
            good = detected & np.where(is_real, (inj_snr >= cfg.min_injected_snr) & star_ok, True)
        keep: list[int] = []
        for k in left:
            cand = np.flatnonzero(kinds == k)
            drawn[k] += cand.size
            take = cand[good[cand]][: left[k]]
            written[k] += take.size
            keep.extend(take.tolist())
        keep_idx = np.sort(np.asarray(keep, dtype=np.int64))
        faint = is_real & (mag > lim) & np.isin(kinds, list(left))
        faint_drawn += int(faint.sum())
        faint_written += int(faint[keep_idx].sum())
        if keep_idx.size:
            parts.append({
                "images": stamps[keep_idx], "kind": kinds[keep_idx], "obj": obj[keep_idx], "ti": ti[keep_idx],
                "si": si[keep_idx], "peak": peak[keep_idx], "flux_snr": flux_snr[keep_idx],
                "mag": np.where(is_real, mag, np.nan)[keep_idx], "flux": np.where(is_real, flux, np.nan)[keep_idx],
                "inj_snr": inj_snr[keep_idx], "star_flux": star_flux[keep_idx],
                "dy": np.where(is_real, y - c0y, np.nan)[keep_idx],
                "dx": np.where(is_real, x - c0x, np.nan)[keep_idx], "fwhm": fw_s[keep_idx],
                "fwhm_template": fw_t[keep_idx], "sky_noise": pv.sky_noise[keep_idx].astype(np.int64),
                "random_template": pv.random_template[keep_idx].astype(np.int64),
                "fwhm_factor_t": pv.fwhm_factor[keep_idx, 0], "fwhm_factor_s": pv.fwhm_factor[keep_idx, 1],
                "shift_error_y": pv.shift_error[keep_idx, 0], "shift_error_x": pv.shift_error[keep_idx, 1],
            })
        if progress is not None:
            progress(sum(written.values()))
    short = {k: quotas[k] - written[k] for k in quotas if written[k] < quotas[k]}
    if short:
        acc = {k: f"{written[k]}/{drawn[k]}" for k in short}
        raise HitsStampsError(f"{seq.path}: could not reach the quota of {sorted(short)} in {cfg.max_rounds} rounds "
                              f"(kept/drawn {acc}); raise max_rounds or mag_bright, or lower min_injected_snr")

    cat = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    # a stable order: by kind as in KINDS, then as drawn
    order = np.argsort(np.array([KINDS.index(k) for k in cat["kind"]]), kind="stable")
    cat = {key: v[order] for key, v in cat.items()}
    labels = np.isin(cat["kind"], REAL_PLACEMENTS).astype(np.int64)
    names = seq.object_name[cat["obj"]]
    ids = np.array([f"inj{seed}_{i:07d}:{nm}" for i, nm in enumerate(names)])
    c = cut.cond
    columns = {
        "object_index": cat["obj"], "mjd": seq.mjd[cat["si"]], "mjd_template": seq.mjd[cat["ti"]],
        "fwhm": cat["fwhm"], "fwhm_template": cat["fwhm_template"],
        "zero_point": c["zero_point"][cat["si"]], "limit_mag": limit_mag[cat["si"]],
        "peak_snr": cat["peak"], "psf_flux_snr": cat["flux_snr"],
        "injected_mag": cat["mag"], "injected_flux": cat["flux"], "injected_snr": cat["inj_snr"],
        "inj_dy": cat["dy"], "inj_dx": cat["dx"], "star_template_flux": cat["star_flux"],
        "variety_sky_noise": cat["sky_noise"], "variety_random_template": cat["random_template"],
        "variety_fwhm_factor_template": cat["fwhm_factor_t"], "variety_fwhm_factor_science": cat["fwhm_factor_s"],
        "variety_shift_error_y": cat["shift_error_y"], "variety_shift_error_x": cat["shift_error_x"],
    }
    meta = {
        "source": "hits_stamps.inject",
        "sequences": str(seq.path),
        "seed": int(seed),
        "objects": int(len(seq.object_name)),
        "objects_used": int(np.unique(cat["obj"]).size),
        "quotas": quotas,
        "drawn": drawn,
        "written": written,
        "fwhm_check": {"epochs_checked": fwhm_checked, "measured_fwhm_used": fwhm_replaced},
        "fainter_than_limit": {"drawn": faint_drawn, "written": faint_written},
        "object_names": seq.object_name.tolist(),
        "config": asdict(cfg),
        "variety": asdict(var),
    }
    return StampSet(images=cat["images"], labels=labels, snr=np.abs(cat["peak"]), kind=cat["kind"], ids=ids,
                    groups=names, columns=columns, meta=meta)


def _star_flux(images: np.ndarray, fwhm: np.ndarray, centroid_xy: np.ndarray) -> np.ndarray:
    """PSF-fit flux (ADU) of the star at its centroid in each image, over the frame's median sky, (B,)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN frame gives NaN
        sky = np.nanmedian(frame_pixels(images).astype(np.float64), axis=1)
    flux, _ = psf_flux(images - sky[:, None, None], np.ones_like(images), fwhm,
                       centre_yx=np.stack([centroid_xy[:, 1], centroid_xy[:, 0]], axis=1))
    return flux


def _paint_artefacts(kinds, t_img, s_img, fwhm_s, rng, camera, c0y, c0x) -> None:
    """Cosmic rays (science only), hot pixels, bad columns and trails, in place, with the simulator's models."""
    from hits_stamps.simulate.simulator import _bad_columns, _cosmic_rays, _hot_pixels

    b = kinds.size
    c0 = float(c0y)
    scratch_t = np.zeros_like(t_img)  # the simulator's functions also update a noise-free truth: unused here
    scratch_s = np.zeros_like(s_img)
    cy = np.full(b, c0y)
    cx = np.full(b, c0x)
    _cosmic_rays(s_img, scratch_s, np.flatnonzero(kinds == "cosmic_ray"), cy, cx, rng, camera)
    _hot_pixels(t_img, s_img, scratch_t, scratch_s, np.flatnonzero(kinds == "hot_pixel"), rng, c0)
    _bad_columns(t_img, s_img, scratch_t, scratch_s, np.flatnonzero(kinds == "bad_column"), rng, c0)
    _paint_trails(s_img, np.flatnonzero(kinds == "trail"), rng, fwhm_s, c0)
