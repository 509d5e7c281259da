"""Atomic writes: write to a temporary file beside the target, then rename over it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hits_stamps.errors import HitsStampsError


def check_writable(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse to clobber an existing file unless `overwrite`; create the parent folder."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise HitsStampsError(f"{path}: output exists; pass --overwrite (overwrite=True) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it to `path`.

    On any exception the temporary file is removed and `path` is untouched, so an interrupted
    write never leaves a half file under the final name.
    """
    path = check_writable(path, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
