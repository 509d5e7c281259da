"""Observing conditions of the HiTS 2015 campaign: load, sample template/science pairs, match by time.

The packaged table `resources/hits2015_conditions_g.csv` holds the 1,344 g-band rows of
`hits2015_observing_conditions.csv` (one row per field and epoch; DECam, 86 s exposures). Columns:
field, epoch, mjd, exp_time_s, seeing (FWHM, arcsec), airmass, sky_level_adu,
std_empty_aperture_adu, limit_mag_5sigma, zero_point (magnitude of 1 ADU/s), and n_cutouts: how many
cutouts of the real HiTS 2015 sequence file were taken in that exposure (matched by field and time),
used to weight the simulator's draws like the real set.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from hits_stamps.errors import StampFileError

PACKAGED_CONDITIONS = "hits2015_conditions_g.csv"
NUMERIC_COLUMNS = (
    "epoch", "mjd", "exp_time_s", "seeing", "airmass", "sky_level_adu", "std_empty_aperture_adu",
    "limit_mag_5sigma", "zero_point",
)


@dataclass(frozen=True)
class ConditionsTable:
    """Observing conditions, one row per exposure; every array has shape (R,)."""

    field: np.ndarray  # str: HiTS field name, e.g. Blind15A_01
    epoch: np.ndarray  # int: HiTS epoch number
    mjd: np.ndarray  # float: exposure time stamp (days)
    exp_time_s: np.ndarray  # float: exposure time (s)
    seeing: np.ndarray  # float: PSF FWHM (arcsec)
    airmass: np.ndarray  # float
    sky_level_adu: np.ndarray  # float: sky background per pixel (ADU)
    std_empty_aperture_adu: np.ndarray  # float: noise in an empty aperture (ADU)
    limit_mag_5sigma: np.ndarray  # float: 5-sigma point-source limiting magnitude
    zero_point: np.ndarray  # float: magnitude of 1 ADU/s (NaN where unknown)
    n_cutouts: np.ndarray  # int: real HiTS 2015 cutouts taken in this exposure (0 where the column is absent)

    def __len__(self) -> int:
        return int(self.mjd.shape[0])

    def usable(self) -> np.ndarray:
        """(R,) bool: rows with every value finite and positive seeing, sky and exposure time."""
        ok = np.ones(len(self), bool)
        for name in NUMERIC_COLUMNS:
            ok &= np.isfinite(getattr(self, name))
        return ok & (self.seeing > 0) & (self.sky_level_adu > 0) & (self.exp_time_s > 0)


def packaged_conditions_path() -> Path:
    """Path of the g-band conditions table shipped with the package."""
    return Path(str(resources.files("hits_stamps").joinpath("resources", PACKAGED_CONDITIONS)))


def load_conditions(path: str | Path | None = None, band: str | None = "g") -> ConditionsTable:
    """Read a conditions CSV (default: the packaged g-band table); keep rows of `band` if it has one."""
    path = Path(path) if path is not None else packaged_conditions_path()
    if not path.exists():
        raise StampFileError(path, None, "an observing-conditions CSV", "no such file")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in ("field", *NUMERIC_COLUMNS) if c not in header]
        if missing:
            raise StampFileError(path, ", ".join(missing), "the HiTS conditions columns", f"columns {header}")
        rows = [r for r in reader if band is None or "band" not in r or r["band"] == band]
    if not rows:
        raise StampFileError(path, "band", f"rows of band {band!r}", "none")

    def num(name: str) -> np.ndarray:
        out = np.empty(len(rows))
        for i, r in enumerate(rows):
            v = r[name].strip()
            try:
                out[i] = float(v) if v else np.nan
            except ValueError as exc:
                raise StampFileError(path, name, "a number", f"{v!r} in data row {i + 1}") from exc
        return out

    cols = {name: num(name) for name in NUMERIC_COLUMNS}
    cols["epoch"] = np.nan_to_num(cols["epoch"], nan=-1).astype(np.int64)
    counts = num("n_cutouts") if "n_cutouts" in header else np.zeros(len(rows))
    if np.any(~np.isfinite(counts)) or np.any(counts < 0):
        raise StampFileError(path, "n_cutouts", "non-negative counts", "negative or missing values")
    return ConditionsTable(field=np.array([r["field"] for r in rows]), n_cutouts=counts.astype(np.int64), **cols)


@dataclass(frozen=True)
class TemplatePools:
    """Science-row draw weights, and per row the rows that may serve as its template."""

    usable: np.ndarray  # (U,) row indices that may be drawn as science rows
    cumulative: np.ndarray  # (U,) cumulative draw probability of those rows (last = 1)
    flat: np.ndarray  # (P,) template rows, grouped by field
    start: np.ndarray  # (R,) where the pool of each row's field starts in `flat` (-1: unusable row)
    size: np.ndarray  # (R,) size of that pool


WEIGHTINGS = ("cutouts", "uniform")


def template_pools(
    table: ConditionsTable, template_quantile: float = 1 / 3, weighting: str = "uniform"
) -> TemplatePools:
    """Science rows and template pools of a table.

    weighting: `uniform` draws every usable row alike; `cutouts` draws rows in proportion to
    `n_cutouts` (the real set's exposures; falls back to uniform when the table has no counts).
    A field's template pool is its usable rows with seeing at or below the field's
    `template_quantile` quantile (good-seeing references, as the real set's templates).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}; got {weighting!r}")
    ok = np.flatnonzero(table.usable())
    if ok.size == 0:
        raise ValueError("the conditions table has no usable row")
    wts = np.ones(ok.size)
    if weighting == "cutouts" and table.n_cutouts[ok].sum() > 0:
        wts = table.n_cutouts[ok].astype(np.float64)
    cumulative = np.cumsum(wts) / wts.sum()
    fields, inverse = np.unique(table.field[ok], return_inverse=True)
    start = np.full(len(table), -1, dtype=np.int64)
    size = np.zeros(len(table), dtype=np.int64)
    flat: list[np.ndarray] = []
    offset = 0
    for f in range(len(fields)):
        rows = ok[inverse == f]
        pool = rows[table.seeing[rows] <= np.quantile(table.seeing[rows], template_quantile)]
        start[rows], size[rows] = offset, pool.size
        flat.append(pool)
        offset += pool.size
    return TemplatePools(usable=ok, cumulative=cumulative, flat=np.concatenate(flat), start=start, size=size)


def sample_pairs(
    table: ConditionsTable, n: int, rng: np.random.Generator, pools: TemplatePools | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (template, science), each (n,), for n simulated stamps.

    The science row is drawn with the pools' weights; the template row is uniform over the
    template pool of the science row's field (`template_pools`).
    """
    pools = pools or template_pools(table)
    pos = np.minimum(np.searchsorted(pools.cumulative, rng.random(n), side="right"), pools.usable.size - 1)
    sci = pools.usable[pos]
    pick = pools.start[sci] + (rng.random(n) * pools.size[sci]).astype(np.int64)
    return pools.flat[pick], sci


def match_conditions(
    table: ConditionsTable, mjd: np.ndarray, field: np.ndarray | None = None, tol: float = 5e-3
) -> np.ndarray:
    """Row of `table` for each exposure time, (M,) int, -1 where no row is within `tol` days.

    Where `field` is given and not empty, only rows of that field are considered (consecutive HiTS
    exposures of different fields are about two minutes apart, and some time stamps carry only
    float32 precision, about 0.004 d near MJD 57,000).
    """
    mjd = np.asarray(mjd, dtype=np.float64)
    out = np.full(mjd.shape, -1, dtype=np.int64)
    fields = np.full(mjd.shape, "", dtype=object) if field is None else np.asarray(field, dtype=object)
    order = np.argsort(table.mjd)
    tm = table.mjd[order]
    for f in np.unique(fields):
        sel = np.flatnonzero(fields == f)
        if f:
            rows = order[table.field[order] == f]
            times = table.mjd[rows]
        else:
            rows, times = order, tm
        if rows.size == 0:
            continue
        pos = np.clip(np.searchsorted(times, mjd[sel]), 1, max(rows.size - 1, 1))
        lo = np.clip(pos - 1, 0, rows.size - 1)
        hi = np.clip(pos, 0, rows.size - 1)
        near = np.where(np.abs(times[lo] - mjd[sel]) <= np.abs(times[hi] - mjd[sel]), lo, hi)
        good = np.abs(times[near] - mjd[sel]) <= tol
        out[sel[good]] = rows[near[good]]
    return out
