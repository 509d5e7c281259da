"""Read-only stamp formats that HiTS users hold, converted to a `StampSet`.

Pickles (only with `trust_pickle=True`; loading a pickle can run arbitrary code):
- Deep-HiTS chunks (Cabrera-Vives et al. 2017; `chunk_*_5000.pkl`, optionally gzipped): a dict
  written by Python 2 with `temp_images`, `sci_images`, `diff_images`, `SNR_images` (each (N, H*W)
  flattened row-major, or (N, H, W)), `labels` (N,) and `SNRs` (N,). Channels are stacked in the
  order template, science, difference, SNR; `snr` comes from `SNRs`; ids are `<file stem>:<row>`.
  Other keys (e.g. `features`) are not converted; a warning names them and `meta` lists them.
- course-style dicts: `images` (N, H, W, C) and optionally `labels`, `snr`, `kind`, `ids`.

FITS (astropy):
- a cube: the first HDU with an image of rank >= 2. Its axes (numpy order, i.e. the reverse of
  NAXISn) are named by the header keyword `STMPAXES`: `NHWC`, `NCHW`, `NHW` (single channel),
  `HWC`, `CHW` or `HW` (one stamp). Without it: rank 2 is `HW`, rank 3 is `NHW`, and rank 4 is
  `NHWC` if axes 1 and 2 are equal (square stamps) and `NCHW` if axes 2 and 3 are, else an error
  asks for `STMPAXES`. Optional `CHNAMES` = comma-separated channel names. Per-stamp values come
  from the first table HDU: columns `LABEL`, `SNR`, `ID`, `KIND` (any case; other numeric columns
  become `columns`); a one-stamp file may give `LABEL`, `SNR`, `KIND` as header keywords instead.
- a folder of cutouts: every `*.fits`, `*.fit`, `*.fits.gz`, `*.fit.gz`, `*.fz` file (not hidden
  ones) in name order, one stamp per file (rank 2 `HW`; rank 3 `HWC`/`CHW` by `STMPAXES`, else
  inferred from the two equal axes of a square stamp); ids are the file names without extension.
Integer FITS pixels (BITPIX 8/16/32/64) are converted to float32 (exact up to 2**24); float64
pixels are rounded to float32, the schema's dtype.
"""

from __future__ import annotations

import gzip
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hits_stamps.errors import StampFileError
from hits_stamps.stamps import StampSet

DEEPHITS_IMAGE_KEYS = ("temp_images", "sci_images", "diff_images", "SNR_images")  # channel order
PICKLE_SUFFIXES = (".pkl.gz", ".pickle.gz", ".pkl", ".pickle")
FITS_SUFFIXES = (".fits.gz", ".fit.gz", ".fits.fz", ".fits", ".fit", ".fz")
AXES_KEYWORD = "STMPAXES"
CHANNELS_KEYWORD = "CHNAMES"
FITS_AXES = ("NHWC", "NCHW", "NHW", "HWC", "CHW", "HW")


# --------------------------------------------------------------------------- helpers
def _stem(path: Path, suffixes: tuple[str, ...]) -> str:
    name = path.name
    for suf in suffixes:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _row_ids(stem: str, n: int) -> np.ndarray:
    return np.array([f"{stem}:{i:06d}" for i in range(n)])


def _array(path: Path, field: str, value: Any) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:  # e.g. a list of arrays of different shapes
        found = f"a {type(value).__name__} that is not one ({_one_line(exc)})"
        raise StampFileError(path, field, "an array", found) from exc


def _float_images(path: Path, field: str, value: Any, allow_int: bool) -> np.ndarray:
    arr = _array(path, field, value)
    if arr.dtype.kind == "f" or (allow_int and arr.dtype.kind in "iu"):
        return arr.astype(np.float32)
    expected = "real-valued pixels" if allow_int else "floating-point pixels"
    raise StampFileError(path, field, expected, f"dtype {arr.dtype}")


def _per_stamp(path: Path, field: str, value: Any, n: int) -> np.ndarray:
    """A per-stamp vector of length n; (n, 1) is accepted as a column vector."""
    arr = _array(path, field, value)
    if arr.shape == (n, 1):
        arr = arr[:, 0]
    if arr.shape != (n,):
        raise StampFileError(path, field, f"shape ({n},), one value per stamp", f"shape {arr.shape}")
    return arr


def _labels(path: Path, field: str, value: Any, n: int) -> np.ndarray:
    arr = _per_stamp(path, field, value, n)
    if arr.dtype.kind not in "iuf" or (arr.dtype.kind == "f" and not np.all(np.mod(arr, 1) == 0)):
        raise StampFileError(path, field, "integers in {-1, 0, 1}", f"dtype {arr.dtype}")
    bad = ~np.isin(arr, (-1, 0, 1))
    if bad.any():
        raise StampFileError(path, field, "values in {-1, 0, 1}", f"values {sorted(set(arr[bad].tolist()))[:5]}")
    return arr.astype(np.int64)


def _real(path: Path, field: str, value: Any, n: int) -> np.ndarray:
    arr = _per_stamp(path, field, value, n)
    if arr.dtype.kind not in "iuf":
        raise StampFileError(path, field, "real numbers", f"dtype {arr.dtype}")
    return arr.astype(np.float64)


def _build(path: Path, **kwargs) -> StampSet:
    try:
        return StampSet(**kwargs)
    except ValueError as exc:
        raise StampFileError(path, None, "a valid stamp set", str(exc)) from exc


# --------------------------------------------------------------------------- pickles
def _text_key(key: Any) -> Any:
    return key.decode("latin1") if isinstance(key, bytes) else key


def _load_pickle(path: Path) -> Any:
    """Unpickle a (possibly gzipped, possibly Python 2) pickle. Runs code: callers check trust."""
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            fh = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
            # latin1 maps every Python 2 `str` byte to one character, which numpy needs to rebuild
            # arrays pickled by Python 2 (their raw bytes travel as `str`)
            return pickle.load(fh, encoding="latin1")
    except Exception as exc:  # unpickling can fail in any way (bad opcodes, missing classes, gzip)
        raise StampFileError(
            path, None, "a readable pickle (optionally gzip-compressed)", f"{type(exc).__name__}: {_one_line(exc)}"
        ) from exc


def read_pickle(path: str | os.PathLike, trust_pickle: bool = False) -> StampSet:
    """Read a Deep-HiTS chunk or a course-style dict pickle (see the module docstring).

    Refused unless `trust_pickle=True` (CLI: `--trust-pickle`): unpickling can run arbitrary code,
    so only load pickles from a source you trust; convert them once to `.npz`/`.h5`.
    """
    path = Path(path)
    if not trust_pickle:
        raise StampFileError(
            path, None,
            "a file that is safe to load; pass --trust-pickle (API: trust_pickle=True) only for a pickle "
            "from a source you trust",
            "a pickle, and loading a pickle can run arbitrary code",
        )
    obj = _load_pickle(path)
    if not isinstance(obj, dict):
        raise StampFileError(path, None, "a dict of arrays (Deep-HiTS chunk or course-style pickle)",
                             f"a pickled {type(obj).__name__}")
    data = {_text_key(k): v for k, v in obj.items()}
    if any(k in data for k in DEEPHITS_IMAGE_KEYS):
        return _from_deephits(path, data)
    if "images" in data:
        return _from_course(path, data)
    raise StampFileError(
        path, None,
        f"Deep-HiTS chunk keys {list(DEEPHITS_IMAGE_KEYS) + ['labels', 'SNRs']} or course keys ['images', 'labels']",
        f"keys {sorted(map(str, data))[:12]}",
    )


def _plane(path: Path, key: str, value: Any) -> np.ndarray:
    """One Deep-HiTS channel: (N, H*W) flattened row-major (square stamps) or (N, H, W) -> (N, H, W)."""
    arr = _float_images(path, key, value, allow_int=False)
    if arr.ndim == 3:
        return arr
    if arr.ndim == 2:
        side = int(round(np.sqrt(arr.shape[1])))
        if side * side != arr.shape[1]:
            raise StampFileError(path, key, "flattened square stamps (N, side*side)", f"shape {arr.shape}")
        return arr.reshape(arr.shape[0], side, side)
    raise StampFileError(path, key, "rank 2 (N, H*W) or rank 3 (N, H, W)", f"shape {arr.shape}")


def _from_deephits(path: Path, data: dict) -> StampSet:
    missing = [k for k in (*DEEPHITS_IMAGE_KEYS, "labels") if k not in data]
    if missing:
        raise StampFileError(path, missing[0], f"the Deep-HiTS chunk keys {list(DEEPHITS_IMAGE_KEYS) + ['labels']}",
                             f"keys {sorted(map(str, data))}")
    planes = [_plane(path, k, data[k]) for k in DEEPHITS_IMAGE_KEYS]
    for key, plane in zip(DEEPHITS_IMAGE_KEYS[1:], planes[1:], strict=True):
        if plane.shape != planes[0].shape:
            raise StampFileError(path, key, f"shape {planes[0].shape} like temp_images", f"shape {plane.shape}")
    images = np.stack(planes, axis=-1)  # (N, H, W, 4): template, science, difference, SNR
    n = images.shape[0]
    labels = _labels(path, "labels", data["labels"], n)
    snr = _real(path, "SNRs", data["SNRs"], n) if "SNRs" in data else None
    ignored = sorted(str(k) for k in data if k not in (*DEEPHITS_IMAGE_KEYS, "labels", "SNRs"))
    if ignored:
        warnings.warn(f"{path}: keys {ignored} are not stamp data and were not converted", stacklevel=3)
    meta = {"source_format": "deep-hits-chunk", "source_file": path.name}
    if ignored:
        meta["ignored_keys"] = ignored
    return _build(path, images=images, labels=labels, snr=snr, ids=_row_ids(_stem(path, PICKLE_SUFFIXES), n),
                  channels=("template", "science", "difference", "snr"), meta=meta)


def _from_course(path: Path, data: dict) -> StampSet:
    images = _float_images(path, "images", data["images"], allow_int=False)
    if images.ndim != 4:
        raise StampFileError(path, "images", "rank 4 (N, H, W, C)", f"shape {images.shape}")
    n = images.shape[0]
    labels = _labels(path, "labels", data["labels"], n) if "labels" in data else None
    snr = _real(path, "snr", data["snr"], n) if "snr" in data else None
    kind = _per_stamp(path, "kind", data["kind"], n).astype(str) if "kind" in data else None
    ids = _per_stamp(path, "ids", data["ids"], n).astype(str) if "ids" in data else None
    ignored = sorted(str(k) for k in data if k not in ("images", "labels", "snr", "kind", "ids"))
    if ignored:
        warnings.warn(f"{path}: keys {ignored} are not stamp data and were not converted", stacklevel=3)
    meta = {"source_format": "course-pickle", "source_file": path.name}
    if ignored:
        meta["ignored_keys"] = ignored
    if ids is None:
        ids = _row_ids(_stem(path, PICKLE_SUFFIXES), n)
    return _build(path, images=images, labels=labels, snr=snr, kind=kind, ids=ids, meta=meta)


# --------------------------------------------------------------------------- FITS
def is_fits_name(name: str) -> bool:
    return name.lower().endswith(FITS_SUFFIXES)


def _infer_axes(path: Path, shape: tuple[int, ...], one_stamp: bool) -> str:
    if len(shape) == 2:
        return "HW"
    if len(shape) == 3 and not one_stamp:
        return "NHW"
    if len(shape) in (3, 4):
        off = len(shape) - 3  # 0 for one stamp (3 axes), 1 for a cube (N first)
        a, b, c = shape[off:]
        lead = "N" if off else ""
        last_is_channel = a == b and c != a  # H == W, channels last
        first_is_channel = b == c and a != b  # channels first, H == W
        if last_is_channel != first_is_channel:
            return lead + ("HWC" if last_is_channel else "CHW")
    raise StampFileError(
        path, AXES_KEYWORD, f"a header keyword naming the axes, one of {list(FITS_AXES)}",
        f"no keyword and an image of shape {shape} whose channel axis cannot be told from the stamp axes",
    )


def _to_nhwc(path: Path, data: np.ndarray, header, one_stamp: bool) -> np.ndarray:
    given = header.get(AXES_KEYWORD)
    if given is None:
        axes = _infer_axes(path, data.shape, one_stamp)
    else:
        axes = str(given).strip().upper()
        if axes not in FITS_AXES or len(axes) != data.ndim:
            raise StampFileError(path, AXES_KEYWORD, f"one of {list(FITS_AXES)} with {data.ndim} letters "
                                 f"for an image of shape {data.shape}", repr(given))
    for letter in "NHWC":
        if letter not in axes:
            data = data[..., None]
            axes += letter
    return np.ascontiguousarray(data.transpose([axes.index(letter) for letter in "NHWC"]))  # (N, H, W, C)


def _table_column(table: dict[str, np.ndarray], names: tuple[str, ...]):
    lower = {c.lower(): c for c in table}
    for name in names:
        if name in lower:
            return lower[name], table[lower[name]]
    return None, None


def _read_fits_parts(path: Path, one_stamp: bool) -> dict[str, Any]:
    """Images (N, H, W, C) and per-stamp values of one FITS file, as StampSet keyword arguments."""
    from astropy.io import fits

    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path, memmap=False) as hdul:
                image_hdu = next((h for h in hdul if h.is_image and h.data is not None and h.data.ndim >= 2), None)
                if image_hdu is None:
                    raise StampFileError(path, None, "an image HDU of rank >= 2",
                                         f"HDUs {[type(h).__name__ for h in hdul]}")
                data = np.asarray(image_hdu.data)
                header = image_hdu.header.copy()
                table_hdu = next((h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))), None)
                table = None if table_hdu is None or table_hdu.data is None else {
                    name: np.array(table_hdu.data[name]) for name in table_hdu.columns.names
                }
    except StampFileError:
        raise
    except Exception as exc:  # astropy raises many kinds (OSError, ValueError, ...)
        told = "; ".join(_one_line(w.message) for w in caught if "truncated" in str(w.message))
        raise StampFileError(path, None, "a readable FITS file",
                             f"{type(exc).__name__}: {_one_line(exc)}" + (f" ({told})" if told else "")) from exc
    for w in caught:
        if "truncated" in str(w.message):  # a lost table HDU would silently drop the labels
            raise StampFileError(path, None, "a complete FITS file", _one_line(w.message))
        warnings.warn(f"{path}: {_one_line(w.message)}", stacklevel=3)

    images = _to_nhwc(path, _float_images(path, "image", data, allow_int=True), header, one_stamp)
    n, c = images.shape[0], images.shape[3]
    parts: dict[str, Any] = {"images": images}
    if CHANNELS_KEYWORD in header:
        names = tuple(s.strip() for s in str(header[CHANNELS_KEYWORD]).split(","))
        if len(names) != c:
            raise StampFileError(path, CHANNELS_KEYWORD, f"{c} comma-separated channel names",
                                 repr(header[CHANNELS_KEYWORD]))
        parts["channels"] = names
    columns: dict[str, np.ndarray] = {}
    if table is not None:
        used = set()
        for key, names in (("labels", ("label", "labels")), ("snr", ("snr",)), ("ids", ("id", "ids")),
                           ("kind", ("kind",))):
            col, values = _table_column(table, names)
            if col is None:
                continue
            used.add(col)
            field = f"table column {col}"
            if key == "labels":
                parts[key] = _labels(path, field, values, n)
            elif key == "snr":
                parts[key] = _real(path, field, values, n)
            else:
                parts[key] = np.char.strip(_per_stamp(path, field, values, n).astype(str))
        for col, values in table.items():
            if col in used:
                continue
            if values.shape == (n,) and values.dtype.kind in "biuf":
                columns[col.lower()] = values.astype(values.dtype.newbyteorder("="))
            else:
                warnings.warn(f"{path}: table column {col!r} (shape {values.shape}, dtype {values.dtype}) "
                              "is not a per-stamp number and was not converted", stacklevel=4)
    for key, word in (("labels", "LABEL"), ("snr", "SNR"), ("kind", "KIND")):
        if word in header and key not in parts:
            if n != 1:
                raise StampFileError(path, word, "a header keyword only in a one-stamp file (use a table "
                                     "column for a cube)", f"a cube of {n} stamps")
            value = [header[word]]
            parts[key] = (_labels(path, word, value, 1) if key == "labels" else
                          _real(path, word, value, 1) if key == "snr" else np.array([str(header[word])]))
    if columns:
        parts["columns"] = columns
    return parts


def read_fits(path: str | os.PathLike) -> StampSet:
    """Read a FITS cube (or a one-stamp FITS file) into a StampSet; see the module docstring."""
    path = Path(path)
    parts = _read_fits_parts(path, one_stamp=False)
    n = parts["images"].shape[0]
    parts.setdefault("ids", _row_ids(_stem(path, FITS_SUFFIXES), n))
    meta = {"source_format": "fits-cube", "source_file": path.name}
    return _build(path, meta=meta, **parts)


def read_fits_folder(folder: str | os.PathLike) -> StampSet:
    """Read a folder of one-stamp FITS cutouts (sorted by file name; ids = file names without extension)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_fits_name(p.name))
    if not files:
        raise StampFileError(folder, None, f"a folder of FITS cutouts ({', '.join('*' + s for s in FITS_SUFFIXES)})",
                             "no FITS files")
    parts = []
    owner: dict[str, Path] = {}
    for f in files:
        p = _read_fits_parts(f, one_stamp=True)
        n = p["images"].shape[0]
        if n != 1:
            raise StampFileError(f, "image", "one stamp per file in a FITS folder", f"{n} stamps")
        if parts and p["images"].shape != parts[0]["images"].shape:
            raise StampFileError(f, "image", f"stamp shape {parts[0]['images'].shape[1:]} like {files[0].name}",
                                 f"shape {p['images'].shape[1:]}")
        if parts and p.get("channels") != parts[0].get("channels"):
            raise StampFileError(f, CHANNELS_KEYWORD, f"channels {parts[0].get('channels')} like {files[0].name}",
                                 f"{p.get('channels')}")
        stem = _stem(f, FITS_SUFFIXES)
        if stem in owner:
            raise StampFileError(f, None, "file names that are unique without their extension",
                                 f"the same name as {owner[stem].name}")
        owner[stem] = f
        parts.append(p)
    kwargs: dict[str, Any] = {
        "images": np.concatenate([p["images"] for p in parts]),
        "labels": np.concatenate([p.get("labels", np.array([-1])) for p in parts]),
        "ids": np.array(list(owner)),
        "channels": parts[0].get("channels"),
        "meta": {"source_format": "fits-folder", "source_file": folder.name, "n_files": len(files)},
    }
    if any("snr" in p for p in parts):
        kwargs["snr"] = np.concatenate([p.get("snr", np.array([np.nan])) for p in parts])
    if any("kind" in p for p in parts):
        kwargs["kind"] = np.concatenate([p.get("kind", np.array(["unknown"])).astype(str) for p in parts])
    common = set.intersection(*(set(p.get("columns", {})) for p in parts))
    partial = set.union(*(set(p.get("columns", {})) for p in parts)) - common
    if partial:
        warnings.warn(f"{folder}: table columns {sorted(partial)} are missing from some files and were not "
                      "converted", stacklevel=2)
    if common:
        kwargs["columns"] = {k: np.concatenate([p["columns"][k] for p in parts]) for k in sorted(common)}
    return _build(folder, **kwargs)
