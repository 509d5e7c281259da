"""Stamp files in and out, chosen by extension.

Native schema: `.npz` and `.h5`/`.hdf5`. Read-only inputs converted to the schema: Deep-HiTS chunk
pickles and course-style dict pickles (`.pkl`, `.pkl.gz`, only with `trust_pickle=True`), and FITS
cubes or folders of FITS cutouts, and survey alert packets (ZTF and Rubin Avro files, or a folder
of them; `hits_stamps.io.alerts`).
"""

from __future__ import annotations

import os
from pathlib import Path

from hits_stamps.errors import StampFileError
from hits_stamps.io.native import read_h5, read_npz, write_h5, write_npz
from hits_stamps.stamps import StampSet

WRITE_FORMATS = {".npz": "npz", ".h5": "h5", ".hdf5": "h5"}
READ_FORMATS = {
    **WRITE_FORMATS,
    ".pkl": "pickle", ".pickle": "pickle", ".pkl.gz": "pickle", ".pickle.gz": "pickle",
    ".fits": "fits", ".fit": "fits", ".fits.gz": "fits", ".fit.gz": "fits", ".fz": "fits",
    ".avro": "avro",
}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for ext in sorted(READ_FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return path.suffix.lower()


def read_stamps(path: str | os.PathLike, trust_pickle: bool = False) -> StampSet:
    """Read any supported stamp file (or a folder of FITS cutouts or of alert packets) into a StampSet.

    A folder holding `.avro` files and no FITS files is read as alert packets; packets that cannot be
    converted are named in one warning line each (and in `meta["skipped"]`).
    """
    path = Path(path)
    if not path.exists():
        raise StampFileError(path, None, "an existing file", "no such file or directory")
    if path.is_dir():
        from hits_stamps.io.alerts import is_avro_name, read_alert_stamps
        from hits_stamps.io.legacy import is_fits_name, read_fits_folder

        names = [p.name for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
        if any(is_avro_name(n) for n in names) and not any(is_fits_name(n) for n in names):
            return read_alert_stamps(path)
        return read_fits_folder(path)
    ext = _suffix(path)
    fmt = READ_FORMATS.get(ext)
    if fmt is None:
        raise StampFileError(
            path, None, f"one of the extensions {sorted(READ_FORMATS)} or a FITS folder",
            f"extension {ext or '(none)'!r}",
        )
    if fmt == "npz":
        return read_npz(path)
    if fmt == "h5":
        return read_h5(path)
    if fmt == "avro":
        from hits_stamps.io.alerts import read_alert_stamps

        return read_alert_stamps(path)
    from hits_stamps.io import legacy

    if fmt == "pickle":
        return legacy.read_pickle(path, trust_pickle=trust_pickle)
    return legacy.read_fits(path)


def write_stamps(stamps: StampSet, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a StampSet as `.npz` or `.h5` (by extension), atomically."""
    path = Path(path)
    fmt = WRITE_FORMATS.get(_suffix(path))
    if fmt is None:
        raise StampFileError(
            path, None, f"an output extension in {sorted(WRITE_FORMATS)}",
            f"extension {_suffix(path) or '(none)'!r}",
        )
    if fmt == "npz":
        return write_npz(stamps, path, overwrite=overwrite)
    return write_h5(stamps, path, overwrite=overwrite)


__all__ = ["WRITE_FORMATS", "read_stamps", "write_stamps"]
