"""The predictions CSV: header `id,p_real,label` (then any extra columns, e.g. the uncertainty of a
Bayesian model: `p_std,entropy,mutual_information[,refer]`), one row per stamp in file order, written incrementally.

Rows are appended one chunk at a time (one `write` per chunk, then flushed), so an interrupted
prediction leaves a valid prefix of the final file. Resuming counts the finished rows, checks that
the last one is the stamp the data file has at that position, and appends the rest. If the
interruption cut the last line short (no newline), that partial line is removed first, with a
warning, so the finished CSV never holds a half line.

p_real and the extra float columns are written with 9 significant digits (enough to round-trip a
float32 exactly); label is 1 when p_real >= threshold, else 0; integer extra columns as integers.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from pathlib import Path

import numpy as np

from hits_stamps.errors import HitsStampsError, StampFileError

HEADER = ("id", "p_real", "label")
HEADER_LINE = ",".join(HEADER) + "\n"
_TAIL = 1 << 16


def check_output(path: str | os.PathLike, resume: bool, overwrite: bool) -> Path:
    """Validate the output arguments before any work is done (nothing is written here)."""
    path = Path(path)
    if resume and overwrite:
        raise HitsStampsError("--resume and --overwrite exclude each other: resume appends, overwrite starts afresh")
    if path.is_dir():
        raise HitsStampsError(f"{path}: output is a directory; expected a CSV file path")
    if path.exists() and not (resume or overwrite):
        raise HitsStampsError(
            f"{path}: output exists; pass --resume to continue it or --overwrite to replace it"
        )
    return path


def header_line(extra_columns=()) -> str:
    """The CSV's first line for the given extra columns."""
    return ",".join((*HEADER, *extra_columns)) + "\n"


def scan_csv(path: Path, header: str = HEADER_LINE) -> tuple[int, str | None, int]:
    """(finished rows, id of the last finished row or None, byte length of the complete lines).

    Streams the file in blocks (constant memory). Raises `StampFileError` if the header is not
    `header` (default `id,p_real,label`).
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.readline()
        if size == 0:
            return 0, None, 0
        if head != header.encode():
            raise StampFileError(path, "header", header.strip(), repr(head.decode(errors="replace").strip()))
        fh.seek(0)
        lines = 0
        while block := fh.read(1 << 20):
            lines += block.count(b"\n")
        fh.seek(max(0, size - _TAIL))
        tail = fh.read()
    complete = size if tail.endswith(b"\n") else size - (len(tail) - tail.rfind(b"\n") - 1)
    rows = max(lines - 1, 0)
    last_id = None
    if rows:
        body = tail[: len(tail) - (size - complete)]
        last_line = body.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode()
        last_id = next(csv.reader([last_line]))[0]
    return rows, last_id, complete


class PredictionWriter:
    """Append-only writer of the predictions CSV (see the module docstring).

    Opening with `resume=True` on an existing file keeps its finished rows (`rows_done`) and
    appends; otherwise the file is (re)created with the header.
    """

    def __init__(self, path: str | os.PathLike, resume: bool = False, overwrite: bool = False, threshold: float = 0.5,
                 extra_columns: tuple[str, ...] = ()):
        self.path = check_output(path, resume, overwrite)
        self.threshold = float(threshold)
        self.extra_columns = tuple(extra_columns)
        self.header = header_line(self.extra_columns)
        self.rows_done = 0
        self.last_id: str | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists():
            rows, last_id, complete = scan_csv(self.path, self.header)
            if complete < self.path.stat().st_size:
                warnings.warn(
                    f"{self.path}: removed a partial last line left by the interrupted run", stacklevel=2
                )
                with open(self.path, "r+b") as fh:
                    fh.truncate(complete)
            self.rows_done, self.last_id = rows, last_id
            self._fh = open(self.path, "a", encoding="utf-8", newline="")
            if complete == 0:
                self._write(self.header)
        else:
            self._fh = open(self.path, "w", encoding="utf-8", newline="")
            self._write(self.header)

    def check_resume(self, n_rows: int, id_at) -> None:
        """Refuse to resume against a data file that does not match the finished rows.

        `id_at(i)` returns the id of data row i.
        """
        if self.rows_done == 0:
            return
        if self.rows_done > n_rows:
            raise HitsStampsError(
                f"{self.path}: has {self.rows_done} finished rows but the data file has only {n_rows} stamps; "
                "it belongs to another input (use --overwrite)"
            )
        expected = id_at(self.rows_done - 1)
        if expected != self.last_id:
            raise HitsStampsError(
                f"{self.path}: row {self.rows_done} has id {self.last_id!r} but the data file has {expected!r} "
                "there; it belongs to another input (use --overwrite)"
            )

    def append(self, ids: np.ndarray, p_real: np.ndarray, extras: dict[str, np.ndarray] | None = None) -> None:
        """Append rows (ids (M,), p_real (M,), extras: one (M,) array per extra column); one write and a flush."""
        if len(ids) != len(p_real):
            raise ValueError(f"ids ({len(ids)}) and p_real ({len(p_real)}) differ in length")
        extras = extras or {}
        if set(extras) != set(self.extra_columns):
            raise ValueError(f"extra columns {sorted(extras)} differ from the header's {list(self.extra_columns)}")
        if len(ids) == 0:
            return
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        labels = (np.asarray(p_real) >= self.threshold).astype(np.int8)
        cols = [_formatted(np.asarray(extras[k])) for k in self.extra_columns]
        for r, (i, p, lab) in enumerate(zip(ids.tolist(), np.asarray(p_real, dtype=np.float32).tolist(),
                                            labels.tolist(), strict=True)):
            if "\n" in i or "\r" in i:
                row = self.rows_done + 1
                raise HitsStampsError(f"id {i!r} (row {row}) contains a line break; ids must be one line")
            writer.writerow((i, f"{p:.9g}", lab, *(c[r] for c in cols)))
        self._write(buf.getvalue())
        self.rows_done += len(ids)
        self.last_id = str(ids[-1])

    def _write(self, text: str) -> None:
        self._fh.write(text)
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _formatted(values: np.ndarray) -> list[str]:
    if values.dtype.kind in "iub":
        return [str(int(v)) for v in values.tolist()]
    return [f"{v:.9g}" for v in values.astype(np.float32).tolist()]


__all__ = ["HEADER", "PredictionWriter", "check_output", "header_line", "scan_csv"]
