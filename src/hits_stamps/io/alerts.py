"""Survey alert packets (Avro) converted to a `StampSet`: ZTF and Rubin (LSST).

An alert packet is an Avro container file holding one or more alerts; a folder of `*.avro` files
is read in name order. The survey is told by the alert record: a `candidate` record is ZTF, a
`diaSource` record is Rubin.

ZTF (schema `ztf.alert`, versions up to 3.x and the earlier unversioned test packets):
- cutouts `cutoutTemplate`, `cutoutScience`, `cutoutDifference`, each `{fileName, stampData}` with
  `stampData` a gzipped FITS image of nominally 63x63 pixels;
- channels are stored as (template, science, difference) with difference = science - template,
  the project's convention (HiTS): ZTF ships the difference of a negative candidate
  (`isdiffpos` f/0) as reference - science (file name `..._refmsci.fits.gz`), which is negated;
  the column `difference_negated` says where;
- pixels of magnitude >= 1e30 (ZTF marks no-data template pixels with -3.4e38) become NaN;
- a cutout cut short at a CCD edge (e.g. 41x63) is padded to 63x63 with NaN (missing pixels, never
  invented flux) on the side of the edge, told by the candidate's `xpos`/`ypos` (a position within
  half a stamp of pixel 1 is at the low edge, else the high edge); `cutout_height`,
  `cutout_width` keep the native size;
- ids are the `candid`, groups the `objectId` (so splits keep an object's alerts together);
  columns keep `objectId` and the candidate fields in `ZTF_FIELDS` that
  the packet has (NaN where an older schema lacks them, e.g. `drb` before 3.3); `isdiffpos` becomes
  1 (positive) or 0 (negative).

Rubin (schema `lsst.vX_Y.alert`, Rubin's published alert_packet schema):
- `cutoutTemplate`, `cutoutScience`, `cutoutDifference` are FITS bytes (optionally gzipped) as
  written by astropy's CCDData: the image in the primary HDU and, where present, an `UNCERT`
  extension (variance, or a standard deviation when its header says `StdDevUncertainty`);
- channels are (template, science, difference, snr) when the difference cutout has an
  uncertainty plane, snr = difference / sqrt(variance) (NaN where the variance is not positive),
  else (template, science, difference);
- ids are the `diaSourceId`, groups the `diaObjectId` (the source's id when it has none);
  columns keep `alertId`, `diaObjectId` and the `diaSource` fields in
  `RUBIN_FIELDS` that the packet has. Cutouts are padded to the largest cutout of the file set, centred.

A packet that cannot give flux stamps (JPEG cutouts from ZTF's early test stream, a missing
cutout, a corrupt file) is not converted: `read_alerts` returns one one-line reason per such packet
(`AlertReadResult.skipped`), and `read_stamps` warns with each reason and keeps them in
`meta["skipped"]`. Nothing is guessed: a JPEG holds 8-bit display values, not flux.
"""

from __future__ import annotations

import gzip
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hits_stamps.errors import StampFileError
from hits_stamps.stamps import StampSet

AVRO_SUFFIXES = (".avro",)
ZTF_CUTOUTS = (("template", "cutoutTemplate"), ("science", "cutoutScience"), ("difference", "cutoutDifference"))
RUBIN_CUTOUTS = ZTF_CUTOUTS
ZTF_NOMINAL_SIZE = 63  # pixels per side of a ZTF cutout away from a CCD edge
#: candidate fields kept as numeric columns when present
ZTF_FIELDS = ("jd", "fid", "ra", "dec", "magpsf", "sigmapsf", "diffmaglim", "rb", "drb", "xpos", "ypos",
              "fwhm", "programid", "field", "rcid", "nid", "scorr", "sgscore1", "distpsnr1", "ndethist")
#: diaSource fields kept as numeric columns when present
RUBIN_FIELDS = ("visit", "detector", "midpointMjdTai", "ra", "dec", "x", "y", "psfFlux", "psfFluxErr", "snr",
                "apFlux", "apFluxErr", "reliability", "isDipole", "is_negative", "trailLength", "extendedness")
#: |pixel| at or above this is a no-data marker (ZTF templates carry -3.4e38, float32's lowest), made NaN
BLANK_ABOVE = 1e30
JPEG_MAGIC = b"\xff\xd8\xff"
GZIP_MAGIC = b"\x1f\x8b"
FITS_MAGIC = b"SIMPLE"


class PacketError(Exception):
    """Why one alert packet cannot be converted (one line; collected, not raised to the user)."""


@dataclass
class AlertReadResult:
    """Stamps from the readable packets and one reason per packet that was not converted."""

    stamps: StampSet | None  # None when no packet was readable
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file[#index], one-line reason)
    n_packets: int = 0  # alerts seen (converted + skipped)


def is_avro_name(name: str) -> bool:
    return name.lower().endswith(AVRO_SUFFIXES)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _import_fastavro():
    try:
        import fastavro
    except ImportError as exc:  # a dependency; only missing in a broken install
        raise StampFileError("fastavro", None, "the fastavro package (pip install fastavro)", "it is not installed") \
            from exc
    return fastavro


def _alerts_of(path: Path) -> list[dict]:
    """Every alert record of one Avro container file."""
    fastavro = _import_fastavro()
    try:
        with open(path, "rb") as fh:
            return list(fastavro.reader(fh))
    except Exception as exc:  # fastavro raises ValueError, EOFError, its own schema errors, ...
        raise PacketError(f"not a readable Avro alert file ({type(exc).__name__}: {_one_line(exc)})") from exc


def _fits_planes(data: bytes, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(image (H, W) float32, variance (H, W) float32 or None) of FITS cutout bytes (gzipped or not)."""
    if data is None:
        raise PacketError(f"{what} is missing (null)")
    head = bytes(data[:6])
    if head.startswith(JPEG_MAGIC):
        raise PacketError(f"{what} is a JPEG image (8-bit display values, no flux): not convertible")
    if head.startswith(GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise PacketError(f"{what} is not valid gzip ({_one_line(exc)})") from exc
    if not bytes(data[:6]).startswith(FITS_MAGIC):
        raise PacketError(f"{what} is neither FITS nor gzipped FITS (starts with {bytes(data[:8])!r})")
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            # ZTF cutout headers trip astropy's "doesn't respect the FITS Standard" on SIMPLE: harmless
            warnings.simplefilter("ignore")
            with fits.open(io.BytesIO(data), memmap=False) as hdul:
                image = np.asarray(hdul[0].data)
                variance = None
                if "UNCERT" in hdul:
                    unc = np.asarray(hdul["UNCERT"].data, dtype=np.float64)
                    kind = str(hdul["UNCERT"].header.get("UTYPE", "VarianceUncertainty"))
                    variance = unc**2 if "StdDev" in kind else unc
    except Exception as exc:  # astropy raises many kinds
        raise PacketError(f"{what} is not a readable FITS image ({type(exc).__name__}: {_one_line(exc)})") from exc
    if image.ndim != 2 or image.dtype.kind not in "fiu":
        raise PacketError(f"{what}: expected a 2-d image of numbers; found shape {image.shape}, dtype {image.dtype}")
    if variance is not None and variance.shape != image.shape:
        raise PacketError(f"{what}: variance plane of shape {variance.shape} differs from the image {image.shape}")
    image = image.astype(np.float32)
    with np.errstate(invalid="ignore"):
        image[np.abs(image) >= BLANK_ABOVE] = np.nan  # no-data markers are missing pixels, not flux
    return image, None if variance is None else variance.astype(np.float32)


def _pad_to(plane: np.ndarray, size: tuple[int, int], low_edge: tuple[bool | None, bool | None]) -> np.ndarray:
    """Pad a (h, w) plane with NaN to `size`; per axis at the start when `low_edge` is True, at the end when
    False, split evenly when None (position unknown). Larger planes are refused by the caller."""
    out = np.full(size, np.nan, dtype=np.float32)
    offs = []
    for axis in (0, 1):
        missing = size[axis] - plane.shape[axis]
        side = low_edge[axis]
        offs.append(missing if side is True else 0 if side is False else missing // 2)
    out[offs[0]: offs[0] + plane.shape[0], offs[1]: offs[1] + plane.shape[1]] = plane
    return out


def _number(value: Any) -> float:
    if value is None:
        return np.nan
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def _ztf_record(alert: dict) -> dict[str, Any]:
    cand = alert.get("candidate")
    if not isinstance(cand, dict):
        raise PacketError("no candidate record")
    planes = {}
    names = {}
    for ch, key in ZTF_CUTOUTS:
        cut = alert.get(key)
        if not isinstance(cut, dict) or cut.get("stampData") is None:
            raise PacketError(f"{key} is missing")
        planes[ch], _ = _fits_planes(cut["stampData"], key)
        names[ch] = str(cut.get("fileName") or "")
    shapes = {p.shape for p in planes.values()}
    if len(shapes) != 1:
        raise PacketError(f"cutouts differ in shape: {sorted(shapes)}")
    (h, w), = shapes
    nominal = ZTF_NOMINAL_SIZE
    if h > nominal or w > nominal:
        raise PacketError(f"cutout of {h}x{w} pixels is larger than ZTF's nominal {nominal}x{nominal}")
    half = nominal // 2 + 1
    low = tuple(None if pos is None else bool(pos <= half)
                for pos in (cand.get("ypos"), cand.get("xpos")))  # numpy axis 0 is y
    isdiffpos = str(cand.get("isdiffpos", "")).strip().lower()
    diff_name = names["difference"].lower()
    if "refmsci" in diff_name:
        negate = True
    elif "scimref" in diff_name:
        negate = False
    else:
        negate = isdiffpos in ("f", "0")
    diff = -planes["difference"] if negate else planes["difference"]
    stack = [planes["template"], planes["science"], diff]
    image = np.stack([_pad_to(p, (nominal, nominal), low) for p in stack], axis=-1)  # (63, 63, 3)
    candid = alert.get("candid", cand.get("candid"))
    if candid is None:
        raise PacketError("no candid")
    cols: dict[str, Any] = {f: _number(cand.get(f)) for f in ZTF_FIELDS}
    cols["candid"] = int(candid)
    cols["objectId"] = str(alert.get("objectId") or "")
    cols["isdiffpos"] = 1 if isdiffpos in ("t", "1") else 0 if isdiffpos in ("f", "0") else -1
    cols["difference_negated"] = int(negate)
    cols["cutout_height"], cols["cutout_width"] = h, w
    return {"image": image, "id": str(candid), "columns": cols, "channels": ("template", "science", "difference")}


def _rubin_record(alert: dict) -> dict[str, Any]:
    src = alert.get("diaSource")
    if not isinstance(src, dict):
        raise PacketError("no diaSource record")
    planes, variance = {}, None
    for ch, key in RUBIN_CUTOUTS:
        planes[ch], var = _fits_planes(alert.get(key), key)
        if ch == "difference":
            variance = var
    shapes = {p.shape for p in planes.values()}
    if len(shapes) != 1:
        raise PacketError(f"cutouts differ in shape: {sorted(shapes)}")
    stack = [planes["template"], planes["science"], planes["difference"]]
    channels: tuple[str, ...] = ("template", "science", "difference")
    if variance is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            snr = np.where(variance > 0, planes["difference"] / np.sqrt(variance), np.nan).astype(np.float32)
        stack.append(snr)
        channels += ("snr",)
    source_id = src.get("diaSourceId")
    if source_id is None:
        raise PacketError("diaSource has no diaSourceId")
    cols: dict[str, Any] = {f: _number(src.get(f)) for f in RUBIN_FIELDS}
    cols["diaSourceId"] = int(source_id)
    cols["alertId"] = str(alert.get("alertId", ""))
    cols["diaObjectId"] = str(src.get("diaObjectId") if src.get("diaObjectId") is not None else "")
    h, w = stack[0].shape
    cols["cutout_height"], cols["cutout_width"] = h, w
    return {"image": np.stack(stack, axis=-1), "id": str(source_id), "columns": cols, "channels": channels}


def _record(alert: Any) -> dict[str, Any]:
    if not isinstance(alert, dict):
        raise PacketError(f"expected an alert record; found a {type(alert).__name__}")
    if "candidate" in alert:
        rec = _ztf_record(alert)
        rec["survey"] = "ztf"
        return rec
    if "diaSource" in alert:
        rec = _rubin_record(alert)
        rec["survey"] = "rubin"
        return rec
    raise PacketError(f"neither a ZTF alert (candidate) nor a Rubin alert (diaSource); fields {sorted(alert)[:8]}")


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and is_avro_name(p.name))
        if not files:
            raise StampFileError(path, None, "a folder of Avro alert packets (*.avro)", "no .avro files")
        return files
    return [path]


def read_alerts(path: str | os.PathLike) -> AlertReadResult:
    """Read an Avro alert file or a folder of them; see the module docstring.

    Returns the stamps of every convertible alert (in file order, then record order) and a
    (source, reason) pair for every other. Raises `StampFileError` only when the path has no
    Avro file at all, or when alerts of different surveys or channel sets are mixed.
    """
    path = Path(path)
    records: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    n = 0
    for f in _files(path):
        try:
            alerts = _alerts_of(f)
        except PacketError as exc:
            skipped.append((f.name, str(exc)))
            n += 1
            continue
        if not alerts:
            skipped.append((f.name, "no alert records in the file"))
            n += 1
        for i, alert in enumerate(alerts):
            n += 1
            where = f.name if len(alerts) == 1 else f"{f.name}#{i}"
            try:
                rec = _record(alert)
            except PacketError as exc:
                skipped.append((where, str(exc)))
                continue
            rec["source"] = where
            records.append(rec)
    if not records:
        return AlertReadResult(None, skipped, n)
    surveys = {r["survey"] for r in records}
    channel_sets = {r["channels"] for r in records}
    if len(surveys) > 1 or len(channel_sets) > 1:
        raise StampFileError(path, None, "alerts of one survey with one set of cutouts",
                             f"surveys {sorted(surveys)}, channel sets {sorted(channel_sets)}")
    h = max(r["image"].shape[0] for r in records)
    w = max(r["image"].shape[1] for r in records)
    images = np.stack([r["image"] if r["image"].shape[:2] == (h, w) else
                       np.stack([_pad_to(r["image"][..., c], (h, w), (None, None))
                                 for c in range(r["image"].shape[2])], axis=-1) for r in records])
    col_names = list(records[0]["columns"])
    columns = {name: np.asarray([r["columns"][name] for r in records]) for name in col_names}
    columns["padded"] = np.asarray(
        [int((r["columns"]["cutout_height"], r["columns"]["cutout_width"]) != (h, w)) for r in records])
    ids = np.asarray([r["id"] for r in records])
    if len(set(ids.tolist())) != len(ids):
        dup = next(i for i in ids.tolist() if (ids == i).sum() > 1)
        raise StampFileError(path, "ids", "one alert per candidate id", f"id {dup} more than once")
    meta = {
        "source_format": f"{records[0]['survey']}-alerts", "source_file": path.name, "n_packets": n,
        "skipped": [f"{s}: {r}" for s, r in skipped],
        "stamp_size_note": f"cutouts smaller than {h}x{w} padded with NaN (column padded)",
    }
    object_key = "objectId" if records[0]["survey"] == "ztf" else "diaObjectId"
    groups = np.where(columns[object_key] != "", columns[object_key], ids)  # the object, else the alert itself
    stamps = StampSet(images=images, ids=ids, groups=groups, channels=records[0]["channels"], columns=columns,
                      meta=meta)
    return AlertReadResult(stamps, skipped, n)


def read_alert_stamps(path: str | os.PathLike) -> StampSet:
    """`read_alerts` for `read_stamps`: warn once per skipped packet; refuse when none converts."""
    result = read_alerts(path)
    if result.stamps is None:
        first = f"; first: {result.skipped[0][0]}: {result.skipped[0][1]}" if result.skipped else ""
        raise StampFileError(path, None, "at least one alert packet with FITS cutouts",
                             f"{result.n_packets} packets, none convertible{first}")
    for source, reason in result.skipped:
        warnings.warn(f"{source}: not converted: {reason}", stacklevel=3)
    return result.stamps


__all__ = ["AVRO_SUFFIXES", "AlertReadResult", "PacketError", "is_avro_name", "read_alert_stamps", "read_alerts"]
