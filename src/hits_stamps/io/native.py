"""The stamp-file schema as `.npz` (no pickle) and HDF5 (`.h5`, chunked, gzip).

Arrays: `images` (N,H,W,C) float32, `labels` (N,) int, optional `snr`, `kind`, `ids`, `channels`,
per-stamp numeric columns stored as `col_<name>`, and `meta_json` (a JSON string).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from hits_stamps.errors import StampFileError
from hits_stamps.io.atomic import atomic_path
from hits_stamps.stamps import StampSet

SEQUENCE_KEYS = {"stamps", "object_index", "mjd"}


def _to_arrays(stamps: StampSet) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {
        "images": stamps.images,
        "labels": stamps.labels,
        "ids": stamps.ids.astype(str),
        "channels": np.asarray(stamps.channels, dtype=str),
        "meta_json": np.asarray(json.dumps(stamps.meta, default=str)),
    }
    if stamps.snr is not None:
        arrays["snr"] = stamps.snr
    if stamps.kind is not None:
        arrays["kind"] = stamps.kind.astype(str)
    for name, values in stamps.columns.items():
        arrays[f"col_{name}"] = np.asarray(values)
    return arrays


def _from_arrays(path: Path, get, keys: set[str]) -> StampSet:
    if "images" not in keys:
        if SEQUENCE_KEYS <= keys:
            raise StampFileError(
                path, None, "a stamp file with an `images` array",
                "a HiTS sequence file (stamps/object_index/mjd); build stamps from it with "
                "`hits-stamps build-real`",
            )
        raise StampFileError(path, "images", "an (N, H, W, C) float array", f"keys {sorted(keys)}")
    images = get("images")
    if images.ndim != 4:
        raise StampFileError(path, "images", "rank 4 (N, H, W, C)", f"shape {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise StampFileError(path, "images", "a floating-point dtype", f"dtype {images.dtype}")
    n = images.shape[0]
    labels = get("labels") if "labels" in keys else np.full(n, -1, dtype=np.int64)
    if labels.shape != (n,):
        raise StampFileError(path, "labels", f"shape ({n},) matching images", f"shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.number) or np.any(np.mod(labels, 1) != 0):
            raise StampFileError(path, "labels", "integers in {-1, 0, 1}", f"dtype {labels.dtype}")
    outside = ~np.isin(labels, (-1, 0, 1))
    if outside.any():
        found = sorted(set(labels[outside].tolist()))[:5]
        raise StampFileError(path, "labels", "values in {-1, 0, 1}", f"values {found}")
    optional = {}
    for name in ("snr", "kind", "ids"):
        if name in keys:
            arr = get(name)
            if arr.shape != (n,):
                raise StampFileError(path, name, f"shape ({n},)", f"shape {arr.shape}")
            optional[name] = arr.astype(str) if name != "snr" else arr
    channels = tuple(str(c) for c in get("channels")) if "channels" in keys else None
    if channels is not None and len(channels) != images.shape[3]:
        raise StampFileError(
            path, "channels", f"{images.shape[3]} names", f"{len(channels)} names"
        )
    columns = {k[4:]: get(k) for k in sorted(keys) if k.startswith("col_")}
    for name, col in columns.items():
        if col.shape != (n,):
            raise StampFileError(path, f"col_{name}", f"shape ({n},)", f"shape {col.shape}")
    meta = json.loads(str(get("meta_json"))) if "meta_json" in keys else {}
    return StampSet(
        images=images, labels=labels.astype(np.int64), channels=channels, columns=columns,
        meta=meta, **optional,
    )


def read_npz(path: Path) -> StampSet:
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            cache: dict[str, np.ndarray] = {}

            def get(key: str) -> np.ndarray:
                if key not in cache:
                    cache[key] = data[key]
                return cache[key]

            return _from_arrays(path, get, keys)
    except StampFileError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise StampFileError(
                path, None, "plain arrays (no pickled objects)", "an object array needing pickle"
            ) from exc
        raise StampFileError(path, None, "a readable .npz archive", f"{exc}") from exc
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise StampFileError(
            path, None, "a readable .npz archive", f"a truncated or corrupt file ({exc})"
        ) from exc


def write_npz(stamps: StampSet, path: Path, overwrite: bool = False, compress: bool = True) -> Path:
    arrays = _to_arrays(stamps)
    with atomic_path(path, overwrite) as tmp:
        with open(tmp, "wb") as fh:
            (np.savez_compressed if compress else np.savez)(fh, **arrays)
    return Path(path)


def read_h5(path: Path) -> StampSet:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            keys = set(fh.keys())

            def get(key: str) -> np.ndarray:
                dset = fh[key]
                if dset.dtype.kind in "OS":
                    return np.asarray(dset.asstr()[()])
                return dset[()]

            return _from_arrays(path, get, keys)
    except StampFileError:
        raise
    except OSError as exc:
        raise StampFileError(
            path, None, "a readable HDF5 file", f"a truncated or corrupt file ({exc})"
        ) from exc


def write_h5(stamps: StampSet, path: Path, overwrite: bool = False) -> Path:
    import h5py

    arrays = _to_arrays(stamps)
    n = len(stamps)
    chunk_rows = max(1, min(n, 4096))
    with atomic_path(path, overwrite) as tmp:
        with h5py.File(tmp, "w") as fh:
            for key, arr in arrays.items():
                if arr.dtype.kind == "U":
                    fh.create_dataset(key, data=arr.astype(object), dtype=h5py.string_dtype())
                elif arr.ndim >= 1 and n > 0 and arr.shape[0] == n:
                    chunks = (chunk_rows,) + arr.shape[1:]
                    fh.create_dataset(key, data=arr, chunks=chunks, compression="gzip",
                                      compression_opts=4, shuffle=True)
                else:
                    fh.create_dataset(key, data=arr)
    return Path(path)
