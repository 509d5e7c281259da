"""The predictions CSV: header `id,p_real,label` (then any extra columns, e.g. the uncertainty of a
Bayesian model: `p_std,entropy,mutual_information[,refer]`), one row per stamp in file order, written incrementally.

Rows are appended one chunk at a time (one `write` per chunk, then flushed) to `.NAME.partial`
beside the output, and what they are computed with (model weights and config, data file, threshold,
batch size, backend, Monte-Carlo samples and seed, device, limit) is recorded in
`.NAME.partial.json`. Only the complete file is renamed to NAME, so a reader never sees a half
file under the final name and `--overwrite` replaces an old file only when the new one is complete.

Resuming refuses an identity that differs from the recorded one (naming what differs), checks every
finished row against the data file (a different id: another input, refused; a malformed row: the
kept rows end there, with a warning), removes a last line cut short, and keeps a multiple of the
batch size, so the recomputed rows fall in the same batches as in an uninterrupted run and the
finished file is byte-identical to it.

p_real and the extra float columns are written with 9 significant digits (enough to round-trip a
float32 exactly); label is 1 when p_real >= threshold, else 0; integer extra columns as integers.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import warnings
from pathlib import Path

import numpy as np

from hits_stamps.errors import HitsStampsError, StampFileError
from hits_stamps.io.atomic import atomic_path

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
    if resume and path.exists() and not partial_path(path).exists():
        raise HitsStampsError(f"{path}: is complete, there is nothing to resume; pass --overwrite to compute it again")
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
        head = fh.readline(len(header) + 1)
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


def partial_path(out: str | os.PathLike) -> Path:
    """Where the rows of an unfinished prediction are written: `.NAME.partial` beside the CSV."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def identity_path(out: str | os.PathLike) -> Path:
    """What the unfinished rows were computed with (model, data, threshold, ...): `.NAME.partial.json`."""
    out = Path(out)
    return out.parent / f".{out.name}.partial.json"


def identity_differences(then: dict, now: dict) -> list[str]:
    """The entries of two prediction identities that differ, as 'key X then, Y now'."""
    diffs = []
    for key in sorted(set(then) | set(now)):
        if then.get(key) != now.get(key):
            a, b = then.get(key), now.get(key)
            short = {k: (v[:12] if isinstance(v, str) and len(v) == 64 else v) for k, v in (("a", a), ("b", b))}
            diffs.append(f"{key} {short['a']!r} then, {short['b']!r} now")
    return diffs


class PredictionWriter:
    """Append-only writer of the predictions CSV (see the module docstring).

    Rows go to `.NAME.partial` beside `path`, with the prediction's identity in
    `.NAME.partial.json`; `finish()` renames the complete file to `path` (replacing an old one only
    then) and removes the identity. Opening with `resume=True` keeps the partial file's finished
    rows (`rows_done`, after `check_resume`) when its identity matches `identity`, and appends.
    """

    def __init__(self, path: str | os.PathLike, resume: bool = False, overwrite: bool = False,
                 threshold: float = 0.5, identity: dict | None = None, extra_columns: tuple[str, ...] = ()):
        self.out = check_output(path, resume, overwrite)
        self.path = partial_path(self.out)
        self.threshold = float(threshold)
        self.identity = dict(identity or {})
        self.extra_columns = tuple(extra_columns)
        self.header = header_line(self.extra_columns)
        self.rows_done = 0
        self.last_id: str | None = None
        self._fh = None
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists():
            self._check_identity()
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
            self.path.unlink(missing_ok=True)
            write_identity(identity_path(self.out), self.identity)
            self._fh = open(self.path, "w", encoding="utf-8", newline="")
            self._write(self.header)

    def _check_identity(self) -> None:
        import json

        ipath = identity_path(self.out)
        try:
            then = json.loads(ipath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StampFileError(ipath, None, "the record of how the unfinished rows were computed",
                                 f"{type(exc).__name__} ({exc}); pass --overwrite to start again") from exc
        if not isinstance(then, dict):
            raise StampFileError(ipath, None, "a JSON object", f"{then!r:.60}; pass --overwrite to start again")
        diffs = identity_differences(then, self.identity)
        if diffs:
            raise HitsStampsError(
                f"{self.out}: cannot resume: the finished rows were computed differently: " + "; ".join(diffs)
                + " (rerun with the original model, data and options, or pass --overwrite)"
            )

    def check_resume(self, n_rows: int, read_ids, batch_size: int = 1) -> None:
        """Check every finished row against the data file and keep only rows that an uninterrupted run has.

        `read_ids(a, b)` returns the ids (b - a,) of data rows [a, b). A row whose id differs from
        the data file's is refused (another input); a malformed row (not `id,p_real,label` as this
        writer writes it, label inconsistent with the threshold) ends the kept rows there, with a
        warning. The kept rows are then cut to a multiple of `batch_size`, so that the rows computed
        now fall in the same batches as in an uninterrupted run (byte-identical results).
        """
        if self.rows_done == 0:
            return
        if self.rows_done > n_rows:
            raise HitsStampsError(
                f"{self.out}: has {self.rows_done} finished rows but the data file has only {n_rows} stamps; "
                "it belongs to another input (use --overwrite)"
            )
        good, offsets = self._valid_rows(read_ids)
        keep = good - good % max(1, batch_size)
        if keep < self.rows_done:
            self._fh.close()
            with open(self.path, "r+b") as fh:
                fh.truncate(offsets[keep])
            self._fh = open(self.path, "a", encoding="utf-8", newline="")
            self.rows_done = keep

    def _valid_rows(self, read_ids, block: int = 4096) -> tuple[int, list[int]]:
        """(number of leading valid rows, byte offsets where rows 0, 1, ... start, up to the first bad one)."""
        offsets: list[int] = []
        good = 0
        with open(self.path, "rb") as fh:
            fh.readline()  # the header, checked by scan_csv
            data_ids, base = np.empty(0, dtype=str), 0
            for i in range(self.rows_done):
                offsets.append(fh.tell())
                if i - base >= len(data_ids):
                    data_ids, base = read_ids(i, min(i + block, self.rows_done)), i
                problem = self._row_problem(fh.readline(), str(data_ids[i - base]), i)
                if problem is not None:
                    warnings.warn(f"{self.path}: row {i + 1} {problem}; recomputing from there", stacklevel=3)
                    break
                good += 1
        return good, offsets

    def _row_problem(self, raw: bytes, want_id: str, i: int) -> str | None:
        """None for a row this writer would have written for data id `want_id`, else what is wrong."""
        try:
            fields = next(csv.reader([raw.decode("utf-8").rstrip("\n")]))
        except (UnicodeDecodeError, csv.Error, StopIteration):
            return "is not a CSV line"
        if len(fields) != 3 + len(self.extra_columns):
            return f"has {len(fields)} fields, expected {3 + len(self.extra_columns)}"
        rid, p_text, label = fields[:3]
        if rid != want_id:
            raise HitsStampsError(
                f"{self.out}: row {i + 1} has id {rid!r} but the data file has {want_id!r} there; "
                "it belongs to another input (use --overwrite)"
            )
        try:
            p = float(np.float32(p_text))
        except ValueError:
            return f"has p_real {p_text!r}, not a number"
        if not 0.0 <= p <= 1.0 or f"{p:.9g}" != p_text:
            return f"has p_real {p_text!r}, not a probability as written by hits-stamps"
        if label != str(int(p >= self.threshold)):
            return f"has label {label!r}, inconsistent with p_real {p_text} at threshold {self.threshold:g}"
        for name, text in zip(self.extra_columns, fields[3:], strict=True):
            try:
                float(text)
            except ValueError:
                return f"has {name} {text!r}, not a number"
        return None

    def append(self, ids: np.ndarray, p_real: np.ndarray, extras: dict[str, np.ndarray] | None = None) -> None:
        """Append rows (ids (M,), p_real (M,), extras: one (M,) array per extra column); one write and a flush."""
        if len(ids) != len(p_real):
            raise ValueError(f"ids ({len(ids)}) and p_real ({len(p_real)}) differ in length")
        extras = extras or {}
        if set(extras) != set(self.extra_columns):
            raise ValueError(f"extra columns {sorted(extras)} differ from the header's {list(self.extra_columns)}")
        if len(ids) == 0:
            return
        labels = (np.asarray(p_real) >= self.threshold).astype(np.int8).tolist()
        id_list = [str(i) for i in ids.tolist()]
        joined = "".join(id_list)
        if "\n" in joined or "\r" in joined:
            i = next(k for k, t in enumerate(id_list) if "\n" in t or "\r" in t)
            raise HitsStampsError(f"id {id_list[i]!r} (row {self.rows_done + i + 1}) contains a line break; "
                                  "ids must be one line")
        p_text = [f"{p:.9g}" for p in np.asarray(p_real, dtype=np.float32).tolist()]
        cols = [p_text, [str(v) for v in labels], *(_formatted(np.asarray(extras[k])) for k in self.extra_columns)]
        if "," in joined or '"' in joined or "" in id_list:
            # ids that need CSV quoting (or an empty id): the csv module writes them
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(zip(id_list, *cols, strict=True))
            text = buf.getvalue()
        else:  # plain ids, the usual case: one join, the same bytes as csv.writer (tested)
            text = "\n".join(map(",".join, zip(id_list, *cols, strict=True))) + "\n"
        self._write(text)
        self.rows_done += len(ids)
        self.last_id = str(ids[-1])

    def _write(self, text: str) -> None:
        try:
            self._fh.write(text)
            self._fh.flush()
        except OSError as exc:
            raise HitsStampsError(
                f"{self.out}: write failed after {self.rows_done} rows ({exc.strerror or exc}); the finished rows "
                f"are kept in {self.path}: fix the cause and rerun with --resume"
            ) from exc

    def finish(self) -> Path:
        """Make the complete file the output: fsync, rename over `path`, remove the identity record."""
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self.path, self.out)
        except OSError as exc:
            raise HitsStampsError(
                f"{self.out}: could not finish the file ({exc.strerror or exc}); the rows are kept in {self.path}: "
                "fix the cause and rerun with --resume"
            ) from exc
        identity_path(self.out).unlink(missing_ok=True)
        return self.out

    def close(self) -> None:
        """Close without finishing (the partial file stays for --resume)."""
        if self._fh is not None and not self._fh.closed:
            with contextlib.suppress(OSError):  # a failed write (full disk) was reported already
                self._fh.close()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_identity(path: Path, identity: dict) -> None:
    import json

    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _formatted(values: np.ndarray) -> list[str]:
    if values.dtype.kind in "iub":
        return [str(int(v)) for v in values.tolist()]
    return [f"{v:.9g}" for v in values.astype(np.float32).tolist()]


__all__ = ["HEADER", "PredictionWriter", "check_output", "header_line", "identity_path", "partial_path", "scan_csv"]
