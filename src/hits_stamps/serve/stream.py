"""Chunked, read-only access to the images and ids of a stamp file, with bounded memory.

What is streamed and what is loaded:

- HDF5 (`.h5`, `.hdf5`): `images` and `ids` are read by row slices (h5py hyperslabs); only the
  chunks holding the requested rows are decompressed. The chunk cache of `images` holds two of the
  file's chunks (at most 64 MiB), so reading row blocks that do not line up with the file's chunks
  does not decompress a chunk twice. Random access is cheap: any row range can be read directly.
- `.npz`: the `images.npy` and `ids.npy` members are streamed out of the zip archive row by row,
  whether stored (`np.savez`) or deflated (`np.savez_compressed`, the default of `write_npz`): the
  `.npy` header is parsed with `numpy.lib.format` and rows are decoded from the member's byte
  stream with `np.frombuffer`. Access is sequential: moving forward skips (decompresses and
  discards) the rows in between, moving backward reopens the member. Members in Fortran order or
  with an `.npy` header version other than 1.0/2.0 cannot be read row-wise and are loaded whole.
- every other readable format (pickles, FITS) is loaded whole with `read_stamps` and then served in
  chunks; convert it to HDF5 (`hits-stamps convert FILE --out FILE.h5`) for bounded memory.

Memory held by a stream is O(rows per chunk), independent of the number of stamps in the file.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hits_stamps.errors import StampFileError
from hits_stamps.io import READ_FORMATS, _suffix, read_stamps
from hits_stamps.io.native import check_fits_in_memory, missing_images_error, npy_member_header
from hits_stamps.stamps import CHANNELS

#: rows read per chunk when the file gives no better hint (HDF5 files written by hits-stamps use 4096)
DEFAULT_CHUNK_ROWS = 4096
#: upper bound on the HDF5 chunk cache of one open file, in bytes
MAX_H5_CACHE_BYTES = 64 * 1024 * 1024


def default_ids(start: int, stop: int) -> np.ndarray:
    """The ids `StampSet` gives stamps of a file without an `ids` array: `stamp_0000000`, ..."""
    return np.array([f"stamp_{i:07d}" for i in range(start, stop)])


def default_channels(c: int) -> tuple[str, ...]:
    return CHANNELS if c == len(CHANNELS) else tuple(f"ch{i}" for i in range(c))


class StampStream:
    """Base class: rows [start, stop) of `images` (N, H, W, C) and `ids` (N,) on demand.

    Attributes
    ----------
    path : the file
    n : number of stamps
    stamp_shape : (H, W, C)
    channels : channel names (length C)
    format : "h5", "npz" or "memory"
    streamed : True when rows are read from disk on demand (False: the file was loaded whole)
    chunk_rows : a good number of rows per read for this file (its HDF5 chunk size, else 4096)
    dtype : dtype of the stored images
    """

    path: Path
    n: int
    stamp_shape: tuple[int, int, int]
    channels: tuple[str, ...]
    format: str
    streamed: bool
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    dtype: np.dtype

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids (M,) str, images (M, H, W, C) float) for rows [start, stop), M = stop - start."""
        if not 0 <= start <= stop <= self.n:
            raise IndexError(f"rows [{start}, {stop}) outside [0, {self.n}) of {self.path}")
        return self._read(start, stop)

    def _read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def read_ids(self, start: int, stop: int) -> np.ndarray:
        """ids (M,) str of rows [start, stop) (HDF5 reads them without touching the images)."""
        return self.read(start, stop)[0]

    def chunks(self, rows: int, start: int = 0) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield (first row, ids, images) for consecutive blocks of `rows` rows from `start`."""
        if rows < 1:
            raise ValueError(f"rows per chunk must be >= 1; got {rows}")
        for a in range(start, self.n, rows):
            b = min(a + rows, self.n)
            ids, images = self.read(a, b)
            yield a, ids, images

    def head(self, n: int) -> None:
        """Serve only the first `n` rows from now on (`self.n` becomes min(n, N)); n >= 1."""
        if n < 1:
            raise ValueError(f"head needs n >= 1; got {n}")
        self.n = min(self.n, int(n))

    def close(self) -> None:
        """Release the open file handles."""

    def __enter__(self) -> StampStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_images(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        if len(shape) != 4:
            raise StampFileError(self.path, "images", "rank 4 (N, H, W, C)", f"shape {tuple(shape)}")
        if not np.issubdtype(dtype, np.floating):
            raise StampFileError(self.path, "images", "a floating-point dtype", f"dtype {dtype}")
        self.n = int(shape[0])
        self.dtype = np.dtype(dtype)
        self.stamp_shape = (int(shape[1]), int(shape[2]), int(shape[3]))

    def _check_ids(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        if tuple(shape) != (self.n,):
            raise StampFileError(self.path, "ids", f"shape ({self.n},)", f"shape {tuple(shape)}")
        if dtype.kind not in "USO":
            raise StampFileError(self.path, "ids", "strings", f"dtype {dtype}")

    def _set_channels(self, names) -> None:
        c = self.stamp_shape[2]
        if names is None:
            self.channels = default_channels(c)
            return
        names = tuple(str(x) for x in names)
        if len(names) != c:
            raise StampFileError(self.path, "channels", f"{c} names", f"{len(names)} names")
        self.channels = names


class H5StampStream(StampStream):
    """Row slices of an HDF5 stamp file (see the module docstring)."""

    format = "h5"
    streamed = True

    def __init__(self, path: Path):
        import h5py

        self.path = path
        try:
            with h5py.File(path, "r") as probe:
                keys = set(probe.keys())
                if "images" not in keys:
                    raise missing_images_error(path, keys)
                images = probe["images"]
                self._check_images(images.shape, images.dtype)
                file_chunk = images.chunks[0] if images.chunks else None
                row_bytes = int(np.prod(self.stamp_shape)) * images.dtype.itemsize
                chunk_bytes = row_bytes * (images.chunks[0] if images.chunks else 1)
                if "ids" in keys:
                    self._check_ids(probe["ids"].shape, probe["ids"].dtype)
                channels = None
                if "channels" in keys:
                    dset = probe["channels"]
                    channels = dset.asstr()[()] if dset.dtype.kind in "OS" else dset[()]
                self._set_channels(channels)
            self._fh = h5py.File(path, "r")
            # the chunk cache of `images` alone holds two of its chunks (at most 64 MiB), so row
            # blocks that straddle chunk boundaries do not decompress a chunk twice; the other
            # datasets keep HDF5's default 1 MiB cache
            dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
            dapl.set_chunk_cache(521, int(min(MAX_H5_CACHE_BYTES, max(1 << 20, 2 * chunk_bytes))), 1.0)
            self._images = h5py.Dataset(h5py.h5d.open(self._fh.id, b"images", dapl))
        except StampFileError:
            raise
        except OSError as exc:
            raise StampFileError(path, None, "a readable HDF5 file", f"a truncated or corrupt file ({exc})") from exc
        self._ids = self._fh["ids"] if "ids" in self._fh else None
        if file_chunk:
            self.chunk_rows = int(file_chunk)
        self._row_bytes = row_bytes

    def _read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            images = self._images[start:stop]
        except OSError as exc:
            raise StampFileError(
                self.path, "images", f"readable rows {start}-{stop - 1}", f"a read error ({exc})"
            ) from exc
        return self.read_ids(start, stop), images

    def read_ids(self, start: int, stop: int) -> np.ndarray:
        try:
            if self._ids is None:
                return default_ids(start, stop)
            if self._ids.dtype.kind in "OS":
                return np.asarray(self._ids.asstr()[start:stop]).astype(str)
            return self._ids[start:stop].astype(str)
        except OSError as exc:
            raise StampFileError(
                self.path, "ids", f"readable rows {start}-{stop - 1}", f"a read error ({exc})"
            ) from exc

    def close(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()
            self._fh = None


class _NpyMember:
    """Sequential row reader of one `.npy` member of a zip archive."""

    def __init__(self, archive: zipfile.ZipFile, name: str, path: Path, field: str):
        self.archive, self.name, self.path, self.field = archive, name, path, field
        self._fh = None
        self._pos = 0
        # the declared shape is checked against the member's real size before anything is read
        shape, fortran, dtype, offset = npy_member_header(archive, name, path, field)
        self.loaded: np.ndarray | None = None
        if shape is None or fortran or dtype.hasobject:
            if dtype is not None and dtype.hasobject:
                raise StampFileError(path, field, "plain arrays (no pickled objects)", f"dtype {dtype}")
            # not row-streamable: load the member whole (documented in the module docstring)
            if shape is not None:
                check_fits_in_memory(path, field, shape, dtype)
            with archive.open(name) as whole:
                self.loaded = np.lib.format.read_array(whole, allow_pickle=False)
            shape, dtype = self.loaded.shape, self.loaded.dtype
        else:
            self._fh = archive.open(name)
            self._fh.seek(offset)
            self._data_offset = offset
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype: np.dtype = np.dtype(dtype)
        self.row_items = int(np.prod(self.shape[1:], dtype=np.int64))
        self.row_bytes = self.row_items * self.dtype.itemsize

    def read(self, start: int, stop: int) -> np.ndarray:
        if self.loaded is not None:
            return self.loaded[start:stop]
        if start < self._pos:  # backward: reopen the member
            self._fh.close()
            self._fh = self.archive.open(self.name)
            self._fh.seek(self._data_offset)
            self._pos = 0
        if start > self._pos:  # forward: skip (for deflated members this decompresses and discards)
            self._fh.seek(self._data_offset + start * self.row_bytes)
            self._pos = start
        want = (stop - start) * self.row_bytes
        buf = self._fh.read(want)
        if len(buf) != want:
            raise StampFileError(
                self.path, self.field, f"{stop - start} rows from row {start}",
                f"{len(buf) // max(self.row_bytes, 1)} (truncated member)",
            )
        self._pos = stop
        return np.frombuffer(buf, dtype=self.dtype).reshape((stop - start,) + self.shape[1:])

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class NpzStampStream(StampStream):
    """Rows streamed out of the `.npy` members of an `.npz` archive (see the module docstring)."""

    format = "npz"

    def __init__(self, path: Path):
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise StampFileError(path, None, "a readable .npz archive", f"a truncated or corrupt file ({exc})") from exc
        try:
            members = {n[:-4]: n for n in self._zip.namelist() if n.endswith(".npy")}
            if "images" not in members:
                raise missing_images_error(path, set(members))
            self._images = _NpyMember(self._zip, members["images"], path, "images")
            self._check_images(self._images.shape, self._images.dtype)
            self._ids = None
            if "ids" in members:
                self._ids = _NpyMember(self._zip, members["ids"], path, "ids")
                self._check_ids(self._ids.shape, self._ids.dtype)
            channels = None
            if "channels" in members:
                with self._zip.open(members["channels"]) as fh:
                    channels = np.lib.format.read_array(fh, allow_pickle=False)
            self._set_channels(channels)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            self.close()
            raise StampFileError(path, None, "a readable .npz archive", f"a truncated or corrupt file ({exc})") from exc
        except BaseException:
            self.close()
            raise
        self.streamed = self._images.loaded is None

    def _read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            images = self._images.read(start, stop)
            ids = default_ids(start, stop) if self._ids is None else self._ids.read(start, stop).astype(str)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise StampFileError(self.path, None, "a readable .npz archive", f"a corrupt member ({exc})") from exc
        return ids, images

    def close(self) -> None:
        for member in (getattr(self, "_images", None), getattr(self, "_ids", None)):
            if member is not None:
                member.close()
        z = getattr(self, "_zip", None)
        if z is not None:
            z.close()
            self._zip = None


class MemoryStampStream(StampStream):
    """A file read whole with `read_stamps`, served in chunks (no memory bound)."""

    format = "memory"
    streamed = False

    def __init__(self, path: Path, trust_pickle: bool = False):
        self.path = path
        self._stamps = read_stamps(path, trust_pickle=trust_pickle)
        self.n = len(self._stamps)
        self.dtype = self._stamps.images.dtype
        self.stamp_shape = tuple(self._stamps.images.shape[1:])  # type: ignore[assignment]
        self.channels = self._stamps.channels

    def _read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return self._stamps.ids[start:stop], self._stamps.images[start:stop]


def open_stamp_stream(path: str | os.PathLike, trust_pickle: bool = False) -> StampStream:
    """Open a stamp file for chunked reading: HDF5 and `.npz` are streamed, other formats loaded.

    Raises `StampFileError` (naming the file, the field, what was expected and found) for a
    missing, unreadable or misshaped file. Use as a context manager, or call `close()`.
    """
    path = Path(path)
    if not path.exists():
        raise StampFileError(path, None, "an existing file", "no such file or directory")
    fmt = READ_FORMATS.get(_suffix(path)) if path.is_file() else None
    if fmt == "h5":
        return H5StampStream(path)
    if fmt == "npz":
        return NpzStampStream(path)
    return MemoryStampStream(path, trust_pickle=trust_pickle)


__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "H5StampStream",
    "MemoryStampStream",
    "NpzStampStream",
    "StampStream",
    "default_ids",
    "open_stamp_stream",
]
