"""The predictions CSV: header `id,p_real,label`, one row per stamp in file order, written incrementally.

Rows are appended one chunk at a time (one `write` per chunk, then flushed), so an interrupted
prediction leaves a valid prefix of the final file. Resuming counts the finished rows, checks that
the last one is the stamp the data file has at that position, and appends the rest. If the
interruption cut the last line short (no newline), that partial line is removed first, with a
warning, so the finished CSV never holds a half line.

p_real is written with 9 significant digits (enough to round-trip a float32 exactly); label is
1 when p_real >= threshold, else 0.
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


def scan_csv(path: Path) -> tuple[int, str | None, int]:
    """(finished rows, id of the last finished row or None, byte length of the complete lines).

    Streams the file in blocks (constant memory). Raises `StampFileError` if the header is not
    `id,p_real,label`.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(len(HEADER_LINE))
        if size == 0:
            return 0, None, 0
        if head != HEADER_LINE.encode():
            raise StampFileError(path, "header", HEADER_LINE.strip(), repr(head.decode(errors="replace").strip()))
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

    def __init__(self, path: str | os.PathLike, resume: bool = False, overwrite: bool = False, threshold: float = 0.5):
        self.path = check_output(path, resume, overwrite)
        self.threshold = float(threshold)
        self.rows_done = 0
        self.last_id: str | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists():
            rows, last_id, complete = scan_csv(self.path)
            if complete < self.path.stat().st_size:
                warnings.warn(
                    f"{self.path}: removed a partial last line left by the interrupted run", stacklevel=2
                )
                with open(self.path, "r+b") as fh:
                    fh.truncate(complete)
            self.rows_done, self.last_id = rows, last_id
            self._fh = open(self.path, "a", encoding="utf-8", newline="")
            if complete == 0:
                self._write(HEADER_LINE)
        else:
            self._fh = open(self.path, "w", encoding="utf-8", newline="")
            self._write(HEADER_LINE)

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

    def append(self, ids: np.ndarray, p_real: np.ndarray) -> None:
        """Append rows (ids (M,), p_real (M,)); one write and a flush per call."""
        if len(ids) != len(p_real):
            raise ValueError(f"ids ({len(ids)}) and p_real ({len(p_real)}) differ in length")
        if len(ids) == 0:
            return
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        labels = (np.asarray(p_real) >= self.threshold).astype(np.int8)
        for i, p, lab in zip(ids.tolist(), np.asarray(p_real, dtype=np.float32).tolist(), labels.tolist(), strict=True):
            if "\n" in i or "\r" in i:
                row = self.rows_done + 1
                raise HitsStampsError(f"id {i!r} (row {row}) contains a line break; ids must be one line")
            writer.writerow((i, f"{p:.9g}", lab))
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


__all__ = ["HEADER", "PredictionWriter", "check_output", "scan_csv"]
