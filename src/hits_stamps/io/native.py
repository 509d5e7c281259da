"""The stamp-file schema as `.npz` (no pickle) and HDF5 (`.h5`, chunked, gzip).

Arrays (the same names in both containers; see docs/data-formats.md):
- `images` (N, H, W, C) float32, channels last;
- `labels` (N,) int64: 1 real, 0 bogus, -1 unknown;
- `ids` (N,) str; `channels` (C,) str;
- optional `snr` (N,) float64, `kind` (N,) str and `groups` (N,) str (the object each stamp comes
  from: real pixels are split by it);
- per-stamp columns stored as `col_<name>` (N,), numeric or str;
- `meta_json`: a JSON string with the set's free metadata.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from hits_stamps.errors import HitsStampsError, StampFileError
from hits_stamps.io.atomic import atomic_path
from hits_stamps.stamps import StampSet

SEQUENCE_KEYS = {"stamps", "object_index", "mjd"}
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members / an empty zip
NPY_MAGIC = b"\x93NUMPY"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
H5_CHUNK_BYTES = 1 << 20  # target size of one HDF5 chunk (HDF5's default chunk cache holds 1 MiB)


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
    if stamps.groups is not None:
        arrays["groups"] = stamps.groups.astype(str)
    for name, values in stamps.columns.items():
        if not name or "/" in name:
            raise HitsStampsError(f"column name {name!r}: expected a non-empty name without '/'")
        arr = np.asarray(values)
        if arr.dtype.kind == "O":
            # object arrays would need pickle (npz) and have no HDF5 type: store text or refuse
            if not all(isinstance(v, str) for v in arr.tolist()):
                raise HitsStampsError(
                    f"column {name!r}: expected numbers or strings; found dtype object with other values"
                )
            arr = arr.astype(str)
        elif arr.dtype.kind not in "biufU":
            raise HitsStampsError(f"column {name!r}: expected numbers or strings; found dtype {arr.dtype}")
        arrays[f"col_{name}"] = arr
    return arrays


def _numeric(path: Path, name: str, arr: np.ndarray, n: int) -> np.ndarray:
    if arr.shape != (n,):
        raise StampFileError(path, name, f"shape ({n},)", f"shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise StampFileError(path, name, "real numbers", f"dtype {arr.dtype}")
    return arr


def missing_images_error(path: Path, keys: set[str]) -> StampFileError:
    """The error for a file with no `images` array (`keys`: what it has), naming a sequence file as such."""
    if SEQUENCE_KEYS <= keys:
        return StampFileError(
            path, None, "a stamp file with an `images` array",
            "a HiTS sequence file (stamps/object_index/mjd); build stamps from it with "
            "`hits-stamps build-real`",
        )
    return StampFileError(path, "images", "an (N, H, W, C) float array", f"no such array; keys {sorted(keys)}")


def _from_arrays(path: Path, get, keys: set[str]) -> StampSet:
    if "images" not in keys:
        raise missing_images_error(path, keys)
    images = get("images")
    if images.ndim != 4:
        raise StampFileError(path, "images", "rank 4 (N, H, W, C)", f"shape {images.shape}")
    if images.dtype.kind != "f":
        raise StampFileError(path, "images", "a floating-point dtype", f"dtype {images.dtype}")
    n = images.shape[0]
    labels = get("labels") if "labels" in keys else np.full(n, -1, dtype=np.int64)
    if labels.shape != (n,):
        raise StampFileError(path, "labels", f"shape ({n},) matching images", f"shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind != "f" or not np.all(np.mod(labels, 1) == 0):
            raise StampFileError(path, "labels", "integers in {-1, 0, 1}", f"dtype {labels.dtype}")
    outside = ~np.isin(labels, (-1, 0, 1))
    if outside.any():
        found = sorted(set(labels[outside].tolist()))[:5]
        raise StampFileError(path, "labels", "values in {-1, 0, 1}", f"values {found}")
    optional: dict[str, np.ndarray] = {}
    if "snr" in keys:
        optional["snr"] = _numeric(path, "snr", get("snr"), n)
    for name in ("kind", "ids", "groups"):
        if name in keys:
            arr = get(name)
            if arr.shape != (n,):
                raise StampFileError(path, name, f"shape ({n},)", f"shape {arr.shape}")
            optional[name] = arr.astype(str)
    channels = None
    if "channels" in keys:
        ch = get("channels")
        if ch.shape != (images.shape[3],):
            raise StampFileError(path, "channels", f"{images.shape[3]} names, shape ({images.shape[3]},)",
                                 f"shape {ch.shape}")
        channels = tuple(str(c) for c in ch)
    columns = {k[4:]: get(k) for k in sorted(keys) if k.startswith("col_")}
    for name, col in columns.items():
        if col.shape != (n,):
            raise StampFileError(path, f"col_{name}", f"shape ({n},)", f"shape {col.shape}")
    meta = {}
    if "meta_json" in keys:
        try:
            meta = json.loads(str(get("meta_json")))
        except ValueError as exc:
            raise StampFileError(path, "meta_json", "a JSON object", f"invalid JSON ({exc})") from exc
        if not isinstance(meta, dict):
            raise StampFileError(path, "meta_json", "a JSON object", f"a JSON {type(meta).__name__}")
    try:
        return StampSet(
            images=images, labels=labels.astype(np.int64), channels=channels, columns=columns,
            meta=meta, **optional,
        )
    except ValueError as exc:  # anything StampSet itself refuses
        raise StampFileError(path, None, "a valid stamp set", str(exc)) from exc


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits_in_memory(path: Path, field: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse, before reading, an array whose declared size exceeds the memory available now."""
    need = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
    free = available_memory()
    if free is not None and need > free:
        raise StampFileError(
            path, field, f"an array that fits in the {free / 2**30:.1f} GiB of available memory",
            f"shape {tuple(shape)} ({need / 2**30:.1f} GiB); `hits-stamps predict` streams .h5/.npz files in "
            "bounded memory, or split the file",
        )


def npy_member_header(archive: zipfile.ZipFile, name: str, path: Path, field: str):
    """(shape, fortran_order, dtype, data offset) of a `.npy` zip member, checked against its real size.

    The shape the header declares must account for exactly the bytes the member holds (from the
    zip directory), so a forged or truncated header is refused before anything is allocated.
    Headers of another version than 1.0/2.0 give (None, True, None, offset): load such a member whole.
    """
    with archive.open(name) as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return None, True, None, fh.tell()
        except ValueError as exc:
            raise StampFileError(path, field, "a valid .npy member", f"{exc}") from exc
        offset = fh.tell()
    if not dtype.hasobject:
        declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        held = archive.getinfo(name).file_size - offset
        if declared != held:
            raise StampFileError(path, field, f"{declared} bytes of data for the declared shape {tuple(shape)}",
                                 f"{held} bytes (a forged or truncated member)")
    return tuple(shape), fortran, dtype, offset


def _magic(path: Path, n: int = 8) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError as exc:
        raise StampFileError(path, None, "a readable file", exc.strerror or str(exc)) from exc


def read_npz(path: Path) -> StampSet:
    """Read a `.npz` stamp file without ever unpickling; every failure is a StampFileError."""
    path = Path(path)
    head = _magic(path)
    if not head.startswith(ZIP_MAGIC):
        found = "an .npy array (save stamps with write_stamps)" if head.startswith(NPY_MAGIC) else (
            "an HDF5 file (rename it to .h5)" if head.startswith(HDF5_MAGIC) else
            f"a truncated or non-zip file (starts with {head[:4]!r})" if head else "an empty file"
        )
        raise StampFileError(path, None, "a .npz (zip) archive", found)
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as data:
            keys = set(data.files)
            cache: dict[str, np.ndarray] = {}

            def get(key: str) -> np.ndarray:
                if key not in cache:
                    shape, _, dtype, _ = npy_member_header(data.zip, f"{key}.npy", path, key)
                    if shape is not None:
                        check_fits_in_memory(path, key, shape, dtype)
                    try:
                        cache[key] = data[key]
                    except ValueError as exc:
                        if "pickle" in str(exc).lower():
                            raise StampFileError(
                                path, key, "a plain array (no pickled objects)", "an object array needing pickle"
                            ) from exc
                        raise
                return cache[key]

            return _from_arrays(path, get, keys)
    except StampFileError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as exc:
        raise StampFileError(
            path, None, "a readable .npz archive", f"a truncated or corrupt file ({_one_line(exc)})"
        ) from exc


def write_npz(stamps: StampSet, path: Path, overwrite: bool = False, compress: bool = True) -> Path:
    """Write `stamps` as `.npz` (zip of .npy arrays, deflate-compressed unless `compress=False`)."""
    arrays = _to_arrays(stamps)
    assert all(a.dtype.kind != "O" for a in arrays.values()), "object arrays would be pickled"
    with atomic_path(path, overwrite) as tmp:
        with open(tmp, "wb") as fh:
            (np.savez_compressed if compress else np.savez)(fh, **arrays)
    return Path(path)


def read_h5(path: Path) -> StampSet:
    """Read an HDF5 stamp file (datasets named as in the `.npz` schema)."""
    import h5py

    path = Path(path)
    if not _magic(path).startswith(HDF5_MAGIC):
        raise StampFileError(path, None, "an HDF5 file", "a file without the HDF5 signature")
    try:
        with h5py.File(path, "r") as fh:
            keys = set(fh.keys())

            def get(key: str) -> np.ndarray:
                dset = fh[key]
                if not isinstance(dset, h5py.Dataset):
                    raise StampFileError(path, key, "a dataset", f"an HDF5 {type(dset).__name__}")
                check_fits_in_memory(path, key, dset.shape, dset.dtype)
                if dset.dtype.kind in "OS":
                    return np.asarray(dset.asstr()[()]).astype(str)
                return dset[()]

            return _from_arrays(path, get, keys)
    except StampFileError:
        raise
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise StampFileError(
            path, None, "a readable HDF5 file", f"a truncated or corrupt file ({_one_line(exc)})"
        ) from exc


def _chunk_rows(row_bytes: int, n: int) -> int:
    """Rows per HDF5 chunk so one chunk is about H5_CHUNK_BYTES (at least 1, at most n)."""
    return max(1, min(n, H5_CHUNK_BYTES // max(1, row_bytes)))


def write_h5(stamps: StampSet, path: Path, overwrite: bool = False) -> Path:
    """Write `stamps` as HDF5: per-stamp arrays chunked along N (~1 MiB chunks), gzip level 4 + shuffle.

    The file is built in memory (it is at most about the size of the stamps, which are in memory
    already) and then written with plain writes, so a full disk is an ordinary one-line error: HDF5
    itself crashes the process when a write to disk fails mid-file.
    """
    import io

    import h5py

    arrays = _to_arrays(stamps)
    n = len(stamps)
    with atomic_path(path, overwrite) as tmp:
        image = io.BytesIO()
        with h5py.File(image, "w") as fh:
            for key, arr in arrays.items():
                if arr.dtype.kind == "U":
                    fh.create_dataset(key, data=arr.astype(object), dtype=h5py.string_dtype())
                elif arr.ndim >= 1 and n > 0 and arr.shape[0] == n:
                    rows = _chunk_rows(arr[:1].nbytes, n)
                    fh.create_dataset(key, data=arr, chunks=(rows,) + arr.shape[1:], compression="gzip",
                                      compression_opts=4, shuffle=True)
                else:
                    fh.create_dataset(key, data=arr)
        with open(tmp, "wb") as out:
            out.write(image.getbuffer())
            out.flush()
            os.fsync(out.fileno())
    return Path(path)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
