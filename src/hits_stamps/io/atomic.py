"""Atomic, exclusive writes: write to a temporary name beside the target, then rename over it.

`os.replace` within one folder is atomic on POSIX and Windows, so a reader (or a crash) sees either
the old file or the complete new one, never a half-written file under the final name. Folders
(model directories) are built under a temporary name too and swapped in by `replace_dir`.

Every output is written under an exclusive lock (`output_lock`: `fcntl.flock` on `.NAME.lock`
beside it), so a second writer of the same output is refused with one line instead of mixing its
rows with the first one's. A lock dies with its process, so a killed run never blocks the next one;
the temporary files a killed run left behind are removed by the next writer of the same output.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import re
import shutil
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


def lock_path_of(path: str | os.PathLike) -> Path:
    """The lock file of an output: `.NAME.lock` in the same folder."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on the output `path` (a file or a folder) for the block.

    A second process (or a second lock in this process) on the same output gets a one-line
    HitsStampsError at once; it does not wait. The lock file is removed when the block ends and
    the lock is released by the kernel if the process dies, so a stale lock file never blocks.
    On systems without `fcntl` (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield Path(path)
        return
    path = Path(path)
    lock = lock_path_of(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HitsStampsError(f"{path}: cannot create the output folder ({exc.strerror or exc})") from exc
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise HitsStampsError(f"{path}: cannot write in {lock.parent} ({exc.strerror or exc})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise HitsStampsError(
                f"{path}: another hits-stamps process is writing this output (lock {lock} is held); "
                "wait for it to finish or choose another output"
            ) from None
        try:  # the lock file may have been removed (and recreated) by the previous holder meanwhile
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed writers of `path` left (call it holding `output_lock(path)`)."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp{re.escape(path.suffix)}")
    removed = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        if pattern.fullmatch(name):
            stale = path.parent / name
            with contextlib.suppress(OSError):
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale)
                else:
                    stale.unlink()
                removed.append(stale)
    return removed


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def replace_dir(new: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the complete folder `new` to `final`, replacing an existing `final` only now.

    On Linux the two folders are swapped atomically (renameat2), so `final` is at every moment
    either the old folder or the new one; elsewhere the old folder is renamed aside first (a crash
    between the two renames leaves it as `.NAME.old` beside `final`). The old folder is then removed.
    """
    new, final = Path(new), Path(final)
    if not final.exists():
        os.replace(new, final)
        return
    if _exchange(new, final):
        shutil.rmtree(new)  # now the old folder
        return
    old = final.parent / f".{final.name}.old"
    if old.exists():
        shutil.rmtree(old)
    os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old)


@contextlib.contextmanager
def staged_output_dir(
    final: str | os.PathLike, overwrite: bool = False, markers: tuple[str, ...] = (),
    rewrite: tuple[str | os.PathLike, ...] = (),
) -> Iterator[Path]:
    """Yield an empty `.NAME.partial` folder beside `final`, locked; on success it replaces `final`.

    Refused at once (nothing written): `final` is a file; `final` is a non-empty folder and not
    `overwrite`; `overwrite` of a non-empty folder holding none of `markers` (not an output of this
    kind: never delete a folder the user pointed at by mistake). On success the JSON files in the
    folder, and the files in `rewrite`, that name the partial folder are rewritten to name `final`,
    then `replace_dir` swaps it in; on failure the partial folder is removed and `final` is untouched.
    """
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise HitsStampsError(f"{final}: exists and is not a folder; expected an output folder")
    if final.is_dir() and any(final.iterdir()):
        if not overwrite:
            raise HitsStampsError(f"{final}: output folder exists and is not empty; pass --overwrite to replace it")
        if markers and not any((final / m).exists() for m in markers):
            raise HitsStampsError(f"{final}: holds none of {list(markers)}, so it is not an output of this command; "
                                  "refusing to replace it with --overwrite")
    with output_lock(final):
        partial = final.parent / f".{final.name}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        try:
            yield partial
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        old, new = (json_text(str(p)) for p in (partial.resolve(), final.resolve()))
        old_raw, new_raw = json_text(str(partial)), json_text(str(final))
        for path in [*partial.rglob("*.json"), *(Path(r) for r in rewrite)]:
            if path.is_file():
                text = path.read_text(encoding="utf-8")
                if old in text or old_raw in text:
                    path.write_text(text.replace(old, new).replace(old_raw, new_raw), encoding="utf-8")
        replace_dir(partial, final)


def json_text(s: str) -> str:
    """`s` as it appears inside a JSON string (escaped, without the quotes)."""
    import json

    return json.dumps(s)[1:-1]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it to `path`.

    On any exception (including KeyboardInterrupt) the temporary file is removed and `path` is
    untouched, so an interrupted write never leaves a half file under the final name and never
    clobbers an existing file. An OSError while writing (disk full, permission denied) becomes a
    one-line HitsStampsError. The finished file gets the usual permissions (0o666 minus the umask),
    not the private 0o600 of a temporary file. The write holds `output_lock(path)` and first removes
    the temporary files of killed writers of the same path.
    """
    path = check_writable(path, overwrite)
    with output_lock(path):
        remove_stale_temps(path)
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
            reason = " ".join(str(exc.strerror or exc).split())
            raise HitsStampsError(f"{path}: write failed, nothing written ({reason})") from exc
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
