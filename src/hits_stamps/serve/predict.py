"""Streaming batch prediction over a stamp file of any size, into a CSV, resumable.

    stamp file --(chunks of R rows, stream.py)--> preprocess (Python, per stamp)
               --> backend (torch | onnxruntime), batches of B rows --> p_real --> CSV (csvout.py)

The backend is chosen by `backends.choose_backend` unless named (`--backend auto`, the default):
onnxruntime for a deterministic classifier on a file of at least `AUTO_ONNX_MIN_ROWS` stamps when it
is installed, torch otherwise; the summary, the CSV's identity and the CLI name the one that ran.

With the local engine, reading, decompressing and preprocessing run in a reader thread that stays
at most two chunks ahead (a bounded queue), overlapped with the network in the calling thread;
h5py, numpy's reductions and torch release the GIL, so the two share the cores. The results do not
depend on the overlap (the same chunks in the same order).

The chunk size R is a multiple of the batch size B (at least the file's HDF5 chunk rows, 4096 for
files written by hits-stamps), and the `local` and `dask` engines cut the file into the same
blocks, so both give identical results, and for Bayesian models the same Monte-Carlo samples as
`TrainedModel.predict_proba` with the same batch size and seed. Memory is bounded by the chunk
size, not by the file size (for HDF5 and `.npz`; see `hits_stamps.serve.stream`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hits_stamps import hardware
from hits_stamps.errors import HitsStampsError
from hits_stamps.geometry import InputAdapter, plan_for_model
from hits_stamps.io.atomic import output_lock
from hits_stamps.predictive import has_predictive, load_predictive
from hits_stamps.serve.backends import (
    BACKEND_CHOICES,
    UNCERTAINTY_COLUMNS,
    PredictiveBackend,
    make_auto_backend,
    make_backend,
    predict_prepared,
    prepare_chunk,
    record,
)
from hits_stamps.serve.csvout import PredictionWriter, check_output
from hits_stamps.serve.stream import StampStream, open_stamp_stream
from hits_stamps.training.modeldir import TrainedModel, file_sha256, load_model, torch_device, weights_sha256

ENGINES = ("local", "dask")
METHOD_CHOICES = ("saved", "raw")


@dataclass(frozen=True)
class PredictConfig:
    """How to run a batch prediction (the CLI fills this from its options)."""

    batch_size: int = 64  # stamps per forward pass (small batches stay in cache: docs/benchmarks/serving.md)
    backend: str = "auto"  # "auto" (backends.choose_backend) | "torch" | "onnxruntime"
    onnx_path: str | None = None  # ONNX file from `hits-stamps export` (onnxruntime; None: export in memory)
    engine: str = "local"  # "local": this process | "dask": a Dask computation over the chunks
    scheduler: str | None = None  # dask: address of an existing scheduler (None: a LocalCluster)
    workers: int | None = None  # dask LocalCluster: worker processes (None: one per CPU core)
    threshold: float = 0.5  # label = 1 when p_real >= threshold
    chunk_rows: int | None = None  # rows read per chunk; rounded up to a multiple of batch_size
    device: str = "cpu"  # torch device ("cpu", "cuda"); onnxruntime runs on the CPU
    mc_samples: int | None = None  # Bayesian models, torch backend: MC samples (None: model default)
    seed: int = 0  # Bayesian models: seed of the Monte-Carlo samples
    threads: int | None = None  # local engine: torch / onnxruntime intra-op threads (None: local_threads chooses)
    trust_pickle: bool = False  # allow pickle stamp files (they can run code)
    limit: int | None = None  # predict only the first `limit` rows of the file (None: all of them)
    uncertainty: bool = False  # Bayesian models, torch backend, local engine: add p_std, entropy, mutual_information
    refer_above: float | None = None  # add `refer` = 1 where the predictive entropy (or a saved method's referral
    #                                   score) >= this (implies uncertainty)
    method: str = "saved"  # "saved": the uncertainty method in DIR/predictive.json when there is one
    #                        (hits-stamps calibrate-uncertainty; all an ensemble directory has);
    #                        "raw": the network alone

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise HitsStampsError(f"batch_size must be >= 1; got {self.batch_size}")
        if self.backend not in BACKEND_CHOICES:
            raise HitsStampsError(f"backend must be one of {BACKEND_CHOICES}; got {self.backend!r}")
        if self.engine not in ENGINES:
            raise HitsStampsError(f"engine must be one of {ENGINES}; got {self.engine!r}")
        if self.onnx_path is not None and self.backend == "torch":
            raise HitsStampsError("--onnx needs --backend onnxruntime")
        if self.engine == "local" and (self.scheduler is not None or self.workers is not None):
            raise HitsStampsError("--scheduler and --workers need --engine dask")
        if self.scheduler is not None and self.workers is not None:
            raise HitsStampsError("--workers sizes a LocalCluster; it cannot be used with --scheduler")
        if self.workers is not None and self.workers < 1:
            raise HitsStampsError(f"workers must be >= 1; got {self.workers}")
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise HitsStampsError(f"chunk_rows must be >= 1; got {self.chunk_rows}")
        if not 0.0 <= self.threshold <= 1.0:
            raise HitsStampsError(f"threshold must be in [0, 1]; got {self.threshold}")
        if self.limit is not None and self.limit < 1:
            raise HitsStampsError(f"limit must be >= 1; got {self.limit}")
        if self.threads is not None and self.threads < 1:
            raise HitsStampsError(f"threads must be >= 1; got {self.threads}")
        if self.mc_samples is not None and self.mc_samples < 1:
            raise HitsStampsError(f"mc_samples must be >= 1; got {self.mc_samples}")
        torch_device(self.device)  # cpu | cuda | cuda:N, and a GPU present for cuda
        if self.method not in METHOD_CHOICES:
            raise HitsStampsError(f"method must be one of {METHOD_CHOICES}; got {self.method!r}")
        if self.refer_above is not None and not self.refer_above >= 0:
            raise HitsStampsError(f"refer_above must be an entropy >= 0 (nats); got {self.refer_above}")
        if self.wants_uncertainty and (self.backend == "onnxruntime" or self.engine != "local"):
            raise HitsStampsError("--uncertainty/--refer-above need --backend torch and --engine local "
                                  "(the Monte-Carlo samples of a Bayesian model)")

    @property
    def wants_uncertainty(self) -> bool:
        return self.uncertainty or self.refer_above is not None

    @property
    def extra_columns(self) -> tuple[str, ...]:
        if not self.wants_uncertainty:
            return ()
        return UNCERTAINTY_COLUMNS + (("refer",) if self.refer_above is not None else ())


@dataclass
class PredictionSummary:
    """What a `predict_file` call did."""

    out: Path  # the CSV
    n_total: int  # stamps in the data file
    n_skipped: int  # rows already finished (resume)
    n_written: int  # rows written by this call
    n_real: int  # rows of this call with label 1
    seconds: float  # wall time of the prediction loop
    nan_pixels: int  # non-finite pixels replaced by the model's NaN policy
    engine: str
    backend: str
    network: str  # "deterministic", "Monte-Carlo mean of S samples", or the posterior-mean network
    streamed: bool  # False when the data format had to be loaded whole
    setup_seconds: float = 0.0  # part of `seconds` spent starting or connecting to the Dask cluster
    worker_stats: dict[str, dict[str, float]] | None = None  # dask, per worker: model_loads, cpu_seconds,
    #                                                          max_rss_mib

    @property
    def stamps_per_second(self) -> float:
        return self.n_written / self.seconds if self.seconds > 0 else math.nan


def check_compatible(model: TrainedModel, stream: StampStream) -> InputAdapter:
    """How the file's stamps become the model's (channels by name, centre crop / NaN pad); refuses clearly.

    Every change made (reordered or built channels, crop, pad) is reported in one warning; see
    `hits_stamps.geometry`. A file whose channels cannot be matched by name is refused: stamps are
    never predicted in the wrong channel order.
    """
    adapter = plan_for_model(model, stream.stamp_shape, stream.channels, source=str(stream.path))
    if adapter.notes:
        warnings.warn(f"{stream.path}: " + "; ".join(adapter.notes), stacklevel=3)
    return adapter


def file_fingerprint(path: str | os.PathLike, blocks: int = 16, block_bytes: int = 1 << 16) -> str:
    """Identity of a (possibly huge) file in constant time: size and sha256 of 16 evenly spaced 64 KiB blocks."""
    import hashlib

    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        for k in range(blocks):
            fh.seek((size - block_bytes) * k // (blocks - 1) if size > block_bytes else 0)
            h.update(fh.read(block_bytes))
    return f"{size} bytes, sha256 {h.hexdigest()}"


def prediction_identity(model: TrainedModel, stream: StampStream, config: PredictConfig, predictive=None) -> dict:
    """Everything the rows of a prediction depend on; `--resume` refuses a run whose identity differs.

    With a saved uncertainty method (`predictive`), its predictive.json and every member's weights
    are part of the identity.
    """
    bayesian = model.spec.task.bayesian
    extra = {}
    if predictive is not None:
        extra["predictive"] = {"file": file_sha256(Path(predictive.path) / "predictive.json"),
                               "members": [weights_sha256(m.path) for m in predictive.models]}
    return extra | {
        "model": weights_sha256(model.path),  # weights and config.json (preprocessing, architecture)
        "data": file_fingerprint(stream.path) if stream.path.is_file() else str(stream.path),
        "n_rows": stream.n,
        "threshold": config.threshold,
        "batch_size": config.batch_size,
        "backend": config.backend,
        "onnx": file_sha256(config.onnx_path) if config.onnx_path else None,
        "mc_samples": (config.mc_samples or model.mc_samples) if bayesian else None,
        "seed": config.seed if bayesian else None,
        "device": config.device,
        "columns": list(config.extra_columns),
        "refer_above": config.refer_above,
    }


def local_threads(config: PredictConfig) -> int | None:
    """Intra-op threads of the local engine: `config.threads`, else the cores other work leaves free
    (`hardware.choose_threads`) less one for the reader thread, at least 1. None for Dask (its tasks
    run on one thread each). Predictions do not depend on it (tested)."""
    if config.engine != "local":
        return None
    if config.threads is not None:
        return config.threads
    return max(1, hardware.choose_threads() - 1)


def chunk_rows_for(stream: StampStream, config: PredictConfig) -> int:
    """Rows per chunk: `config.chunk_rows` or the file's chunk rows, rounded up to a multiple of the batch."""
    want = config.chunk_rows or stream.chunk_rows
    return max(1, math.ceil(want / config.batch_size)) * config.batch_size


def predict_file(
    model_dir: str | os.PathLike | TrainedModel,
    data: str | os.PathLike,
    out: str | os.PathLike,
    config: PredictConfig | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PredictionSummary:
    """Predict every stamp of `data` with the model in `model_dir`; write `out` (id, p_real, label).

    Streams the file in chunks (bounded memory), appends each chunk's rows to the CSV as soon as
    they are computed, and with `resume` skips the rows an interrupted run already finished.
    `progress(done, total)` is called after every chunk. With `config.limit` only the first rows are
    predicted (the file is treated as if it ended there; `n_total` counts those rows). Errors on bad
    input (missing file, wrong stamp shape or channel count, existing output without
    `resume`/`overwrite`) are raised before anything is written.
    """
    config = config or PredictConfig()
    out = check_output(out, resume, overwrite)
    with output_lock(out):
        return _predict_file(model_dir, data, out, config, resume, overwrite, progress)


def _predict_file(model_dir, data, out, config, resume, overwrite, progress) -> PredictionSummary:
    check_output(out, resume, overwrite)  # again, holding the lock
    predictive = None
    if not isinstance(model_dir, TrainedModel) and config.method == "saved" and has_predictive(model_dir):
        predictive = load_predictive(model_dir, device=config.device)
        if config.backend == "onnxruntime" or config.onnx_path is not None or config.engine != "local":
            raise HitsStampsError(f"{model_dir} holds a saved uncertainty method ({predictive.describe()}), which "
                                  "runs with --backend torch --engine local; pass --method raw to predict with the "
                                  "network alone")
        if config.mc_samples is not None:
            raise HitsStampsError(f"{model_dir}: --mc-samples is fixed by its predictive.json "
                                  f"({predictive.config.mc_samples}); pass --method raw to choose it")
        model = predictive.models[0]
    elif isinstance(model_dir, TrainedModel):
        model = model_dir
    else:
        model = load_model(model_dir, device=config.device)
    if not model.spec.task.classifies:
        raise HitsStampsError(f"{model.path}: {model.name} is a {model.spec.task}; it does not classify stamps")
    with open_stamp_stream(data, trust_pickle=config.trust_pickle) as stream:
        adapter = check_compatible(model, stream)
        if config.limit is not None:
            stream.head(config.limit)
        if config.engine == "dask" and stream.format != "h5":
            raise HitsStampsError(
                f"{stream.path}: --engine dask reads HDF5 files by slices on the workers; found a "
                f"{stream.format} file. Convert it first: hits-stamps convert {stream.path} --out FILE.h5"
            )
        if config.engine == "dask" and config.backend == "onnxruntime" and config.onnx_path is None \
                and config.scheduler is not None:
            raise HitsStampsError(
                "--engine dask with --scheduler and --backend onnxruntime needs --onnx PATH "
                "(a file the workers can read)"
            )
        # built before the output is touched, so a bad backend (e.g. a foreign ONNX file) writes nothing
        if predictive is not None:
            backend = PredictiveBackend(predictive, threads=local_threads(config))
        elif config.backend == "auto" and config.engine == "local":
            backend = make_auto_backend(
                model, stream.n, onnx_model=config.onnx_path, device=config.device, mc_samples=config.mc_samples,
                seed=config.seed, threads=local_threads(config), uncertainty=config.wants_uncertainty,
            )
        else:
            if config.backend == "auto":  # dask: torch, or onnxruntime with --onnx
                config = dataclasses.replace(config, backend="onnxruntime" if config.onnx_path else "torch")
            backend = make_backend(
                model, config.backend, onnx_model=config.onnx_path, device=config.device,
                mc_samples=config.mc_samples, seed=config.seed,
                threads=local_threads(config),
            )
        config = dataclasses.replace(config, backend=backend.name)  # the one that runs (auto resolved)
        rows = chunk_rows_for(stream, config)
        identity = prediction_identity(model, stream, config, predictive)
        if config.wants_uncertainty and predictive is None and not model.spec.task.bayesian:
            raise HitsStampsError(f"{model.path}: {model.name} is deterministic; --uncertainty and --refer-above "
                                  "need a Bayesian model (seed-bnn, bayes-cnn) or a saved uncertainty method "
                                  "(hits-stamps calibrate-uncertainty)")
        with PredictionWriter(out, resume=resume, overwrite=overwrite, threshold=config.threshold,
                              identity=identity, extra_columns=config.extra_columns) as writer:
            writer.check_resume(stream.n, stream.read_ids, config.batch_size)
            start = writer.rows_done
            state = {"nan": 0, "real": 0, "network": backend.network}
            t0 = time.perf_counter()
            if config.engine == "local":
                _run_local(model, backend, stream, writer, config, rows, start, state, progress, adapter)
            else:
                from hits_stamps.serve.dask_engine import run_dask

                run_dask(model, backend, stream, writer, config, rows, start, state, progress, adapter)
            seconds = time.perf_counter() - t0
            writer.finish()
    if state["nan"]:
        warnings.warn(
            f"{state['nan']} non-finite pixels replaced (nan_policy={model.preprocessor.config.nan_policy!r})",
            stacklevel=2,
        )
    return PredictionSummary(
        out=out, n_total=stream.n, n_skipped=start, n_written=stream.n - start, n_real=state["real"],
        seconds=seconds, nan_pixels=state["nan"], engine=config.engine, backend=config.backend,
        network=state["network"], streamed=stream.streamed, setup_seconds=state.get("setup_seconds", 0.0),
        worker_stats=state.get("worker_stats"),
    )


def _run_local(model, backend, stream, writer, config, rows, start, state, progress, adapter=None) -> None:
    if progress is not None:
        progress(start, stream.n)
    for a, ids, x, nan_count in prepared_chunks(model, backend, stream, rows, start, adapter):
        if config.wants_uncertainty:
            probs, nan_count, extras = predict_prepared(backend, x, nan_count, a, config.batch_size, uncertainty=True)
            if config.refer_above is not None:
                score = backend.predictive.config.referral if isinstance(backend, PredictiveBackend) else "entropy"
                extras["refer"] = (extras[score] >= config.refer_above).astype(np.int8)
            record(writer, state, ids, probs[:, 1], nan_count, config.threshold, extras)
        else:
            probs, nan_count = predict_prepared(backend, x, nan_count, a, config.batch_size)
            record(writer, state, ids, probs[:, 1], nan_count, config.threshold)
        if progress is not None:
            progress(a + len(ids), stream.n)


_DONE = object()
#: chunks the reader thread may have ready beyond the one being predicted (and the one it is reading)
READ_AHEAD = 2


def prepared_chunks(model, backend, stream, rows: int, start: int = 0, adapter=None, ahead: int = READ_AHEAD):
    """Yield (first row, ids, backend input, non-finite pixel count) per chunk of `rows` rows from `start`.

    A reader thread reads each chunk, adapts it to the model (`adapter`) and preprocesses it
    (`prepare_chunk`) while the caller predicts the previous one; it stays at most `ahead` chunks
    ahead, so memory stays bounded by the chunk size. An error in the reader is raised here, in
    file order; leaving the loop early stops the reader.
    """
    q: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for a, ids, images in stream.chunks(rows, start=start):
                if adapter is not None:
                    images = adapter.apply(images)  # channels by name, crop / NaN pad to the model's size
                x, nan_count = prepare_chunk(model, backend, images, a)
                if not put((a, ids, x, nan_count)):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    reader = threading.Thread(target=read, name="hits-stamps-reader", daemon=True)
    reader.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()


__all__ = ["ENGINES", "PredictConfig", "PredictionSummary", "check_compatible", "chunk_rows_for", "predict_file"]
