"""Atomic writes: write to a temporary file beside the target, then rename over it.

`os.replace` within one folder is atomic on POSIX and Windows, so a reader (or a crash) sees either
the old file or the complete new one, never a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hits_stamps.errors import HitsStampsError


def check_writable(path: str | os.PathLike, overwrite: bool, make_parent: bool = True) -> Path:
    """Refuse to clobber an existing file unless `overwrite`; optionally create the parent folder.

    Call it before reading any input, so a refused run writes nothing (use `make_parent=False`
    for that early check: not even a folder is created).
    """
    path = Path(path)
    if path.is_dir():
        raise HitsStampsError(f"{path}: output is an existing folder; expected a file path")
    if path.exists() and not overwrite:
        raise HitsStampsError(f"{path}: output exists; pass --overwrite (overwrite=True) to replace it")
    if make_parent:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HitsStampsError(f"{path}: cannot create the output folder ({exc.strerror or exc})") from exc
    return path


@functools.cache
def _default_file_mode() -> int:
    """The mode `open(..., "w")` would give a new file (0o666 minus the umask), read once."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it to `path`.

    On any exception (including KeyboardInterrupt) the temporary file is removed and `path` is
    untouched, so an interrupted write never leaves a half file under the final name and never
    clobbers an existing file. An OSError while writing (disk full, permission denied) becomes a
    one-line HitsStampsError. The finished file gets the usual permissions (0o666 minus the umask),
    not the private 0o600 of a temporary file.
    """
    path = check_writable(path, overwrite)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as exc:
        raise HitsStampsError(f"{path}: cannot write in {path.parent} ({exc.strerror or exc})") from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _default_file_mode())
        os.replace(tmp_path, path)
    except OSError as exc:
        raise HitsStampsError(f"{path}: write failed, nothing written ({exc.strerror or exc})") from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """Write a matplotlib figure as a PNG at `path`, atomically, replacing any old file.

    Works for a bare `matplotlib.figure.Figure` (an Agg canvas is attached first) and for pyplot
    figures; `savefig_kwargs` go to `Figure.savefig` (e.g. `dpi`, `bbox_inches="tight"`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", **savefig_kwargs)
    return Path(path)
