"""The `dask` engine: the same chunked prediction, as a Dask computation spread over workers.

    images = da.from_array(<HDF5 rows start..N-1, read by slices on the worker>, chunks=(R, H, W, C))
    result = images.map_blocks(_predict_block, drop_axis=[2, 3], chunks=(R, 2))  # (N - start, 2)

(column 0 of `result` is p_real, column 1 the stamp's count of non-finite pixels.)

Each block is R rows (the same blocks as the local engine), read by the worker straight from the
HDF5 file, so only the file path travels in the task graph, never pixels. `_predict_block` adapts
the block to the model (channels by name, crop / NaN pad: the local engine's `InputAdapter`) and
runs `predict_chunk` (the local engine's code) with a model loaded once per worker process: the loader
is cached by model directory (and the modification times of its weights and of the ONNX file).
Each task runs its backend on one thread (torch.set_num_threads(1), onnxruntime intra-op 1), so a
worker's parallelism is its number of Dask threads; LocalClusters use one thread per worker.

The client submits a sliding window of blocks (twice the cluster's thread count), writes finished
blocks to the CSV in file order, and reads the ids of each block itself; so its memory, like the
workers', does not grow with the file.

Scheduler: a `LocalCluster` on 127.0.0.1 with `workers` processes (threads_per_worker=1; its HTTP
endpoint on a free loopback port) that is shut down afterwards, or an existing scheduler by
address. With an existing scheduler, every worker must have hits-stamps installed and see the model directory, the data
file and the ONNX file (if any) under the same paths as the client (a shared file system).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from hits_stamps.errors import HitsStampsError
from hits_stamps.geometry import InputAdapter
from hits_stamps.serve.backends import make_backend, predict_chunk, record
from hits_stamps.training.modeldir import WEIGHTS

#: Dask settings while `run_dask` runs: short diagnostic logs (a LocalCluster's scheduler runs in
#: this process, and its default logs, 10,000 entries each, make this process's memory grow with
#: the number of blocks until they are full), and LocalCluster workers started without
#: distributed's default MALLOC_TRIM_THRESHOLD_=65536: setting it turns off glibc's dynamic mmap
#: threshold, so every torch activation over 128 KiB is a fresh mmap whose pages fault in on each
#: forward pass; the torch backend ran at half its rate per CPU-second with it
#: (docs/benchmarks/serving.md). Workers of an existing cluster keep their own settings.
DASK_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.admin.log-length": 100,
    "distributed.admin.low-level-log-length": 100,
    "distributed.admin.system-monitor.log-length": 100,
    "distributed.scheduler.dashboard.tasks.task-stream-length": 100,
    "distributed.scheduler.dashboard.status.task-stream-length": 100,
}
_LOADED_AT_CPU: list[float] = []  # this worker's CPU seconds when its (first) model was ready


class H5Rows:
    """Array-like view of rows `offset`.. of one HDF5 dataset, opened on each read (picklable).

    shape (N - offset, ...), dtype of the dataset; `x[a:b]` returns rows offset+a .. offset+b-1.
    """

    def __init__(self, path: str, key: str, offset: int, shape: tuple[int, ...], dtype):
        self.path, self.key, self.offset = path, key, int(offset)
        self.shape = (int(shape[0]) - self.offset,) + tuple(int(s) for s in shape[1:])
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, index) -> np.ndarray:
        import h5py

        if not isinstance(index, tuple):
            index = (index,)
        rows = index[0]
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise IndexError(f"H5Rows supports contiguous row slices; got {index!r}")
        a, b, _ = rows.indices(self.shape[0])
        with h5py.File(self.path, "r") as fh:  # one read per open: no chunk is decompressed twice
            block = fh[self.key][self.offset + a : self.offset + b]
        rest = index[1:]
        return block[(slice(None),) + rest] if rest else block


@functools.lru_cache(maxsize=4)
def _worker_backend(model_dir: str, weights_mtime: int, backend: str, onnx_path: str | None, onnx_mtime: int,
                    device: str, mc_samples: int | None, seed: int):
    """(model, backend) for this worker process, built once per distinct argument tuple."""
    import torch

    from hits_stamps.training.modeldir import load_model

    torch.set_num_threads(1)
    model = load_model(model_dir, device=device)
    built = model, make_backend(model, backend, onnx_model=onnx_path, device=device, mc_samples=mc_samples,
                                seed=seed, threads=1)
    if not _LOADED_AT_CPU:
        _LOADED_AT_CPU.append(_cpu_seconds())
    return built


def _cpu_seconds() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _predict_block(images: np.ndarray, *, offset: int, batch_size: int, loader_args: tuple,
                   adapter: InputAdapter | None = None, block_info=None) -> np.ndarray:
    """One block of the file's stamps (M, H, W, C) -> (M, 2) float32 on a worker.

    `adapter` makes the file's stamps the model's (channels by name, centre crop / NaN pad;
    `hits_stamps.geometry`), as the local engine does chunk by chunk. Column 0: p_real; column 1:
    the adapted stamp's number of non-finite pixels (replaced by the model's NaN policy; NaN padding
    included), so the client can report the total as the local engine does.
    """
    model, backend = _worker_backend(*loader_args)
    if adapter is not None:
        images = adapter.apply(images)  # (M, h, w, C_model)
    first = offset + (block_info[0]["array-location"][0][0] if block_info else 0)
    probs, _ = predict_chunk(model, backend, images, first, batch_size)
    bad = (~np.isfinite(images)).sum(axis=(1, 2, 3))  # (M,)
    return np.stack([probs[:, 1], bad.astype(np.float32)], axis=1)


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB: VmHWM from /proc (Linux), else ru_maxrss.

    VmHWM starts afresh at exec; ru_maxrss of a child process can carry its parent's peak.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker_stats() -> dict[str, float]:
    """This worker process: models built (the loader cache's misses), CPU seconds (in all, and since
    its first model was ready, i.e. without the start-up imports and model loading), peak RSS in MiB."""
    cpu = _cpu_seconds()
    return {
        "model_loads": _worker_backend.cache_info().misses,
        "cpu_seconds": cpu,
        "cpu_seconds_after_load": cpu - _LOADED_AT_CPU[0] if _LOADED_AT_CPU else 0.0,
        "max_rss_mib": peak_rss_mib(),
    }


def _mtime(path: str | os.PathLike | None) -> int:
    return Path(path).stat().st_mtime_ns if path is not None else 0


def _open_client(config):
    """(client, cluster or None): connect to `config.scheduler` or start a loopback LocalCluster."""
    from distributed import Client, LocalCluster

    if config.scheduler is not None:
        try:
            return Client(config.scheduler, timeout="10s"), None
        except (OSError, TimeoutError) as exc:
            raise HitsStampsError(f"cannot connect to the Dask scheduler at {config.scheduler}: {exc}") from exc
    workers = config.workers or os.cpu_count() or 1
    # dashboard_address ":0": the scheduler's HTTP endpoint on a free loopback port (None would still
    # try the default port 8787 and warn when another cluster holds it)
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=":0", silence_logs=logging.ERROR,
    )
    try:
        return Client(cluster), cluster
    except BaseException:
        cluster.close()
        raise


def run_dask(model, backend, stream, writer, config, rows: int, start: int, state: dict, progress,
             adapter: InputAdapter | None = None) -> None:
    """Predict rows start.. of an HDF5 `stream` on Dask; append them to `writer` in file order.

    `adapter` (from `serve.predict.check_compatible`) is applied to every block on the workers, so a
    file in another channel order or stamp size is predicted as the local engine predicts it.

    `backend` is the backend built (and so validated) in this process; the workers build their own
    from the same arguments. An ONNX model exported in memory is written to a temporary file for
    the workers of a LocalCluster and removed afterwards.
    """
    import dask
    import distributed  # noqa: F401  (before dask.config.set below; see the comment there)

    if start >= stream.n:
        return
    with contextlib.ExitStack() as stack:
        onnx_path = config.onnx_path
        if config.backend == "onnxruntime" and onnx_path is None:
            tmpdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="hits-stamps-onnx-"))
            onnx_path = Path(tmpdir) / "model.onnx"
            onnx_path.write_bytes(backend.onnx_bytes)
        # distributed adds its defaults to dask's config when first imported; imported inside this
        # context, leaving it would remove them all again (the context restores the keys it found
        # missing), and the next LocalCluster in this process failed with KeyError 'comm'
        stack.enter_context(dask.config.set(DASK_CONFIG))
        result = _block_array(model, stream, config, rows, start, onnx_path, adapter)
        t0 = time.perf_counter()
        client, cluster = _open_client(config)
        state["setup_seconds"] = time.perf_counter() - t0
        try:
            _compute_in_order(client, result, stream, writer, config, start, state, progress)
            state["worker_stats"] = client.run(_worker_stats)
        finally:
            if cluster is not None:  # ours: stop workers and scheduler (shutdown avoids heartbeat errors)
                client.shutdown()
                cluster.close()
            else:
                client.close()


def _block_array(model, stream, config, rows: int, start: int, onnx_path, adapter: InputAdapter | None = None):
    """The lazy (N - start, 2) result: column 0 p_real, column 1 non-finite pixels per stamp."""
    import dask.array as da
    from dask.base import tokenize

    model_dir = str(Path(model.path).resolve())
    data_path = str(Path(stream.path).resolve())
    onnx_path = None if onnx_path is None else str(Path(onnx_path).resolve())
    loader_args = (
        model_dir, _mtime(Path(model_dir) / WEIGHTS), config.backend, onnx_path, _mtime(onnx_path),
        config.device, config.mc_samples, config.seed,
    )
    h, w, c = stream.stamp_shape
    source = H5Rows(data_path, "images", start, (stream.n, h, w, c), stream.dtype)
    name = "hits-stamps-images-" + tokenize(data_path, _mtime(data_path), start, rows)
    images = da.from_array(source, chunks=(rows, h, w, c), name=name, asarray=True, lock=False,
                           meta=np.empty((0, h, w, c), dtype=source.dtype))
    return images.map_blocks(
        _predict_block, offset=start, batch_size=config.batch_size, loader_args=loader_args,
        adapter=None if adapter is None or adapter.identity else adapter,
        drop_axis=[2, 3], chunks=(images.chunks[0], (2,)), dtype=np.float32,
        meta=np.empty((0, 2), dtype=np.float32),
    )


def _compute_in_order(client, result, stream, writer, config, start: int, state: dict, progress) -> None:
    """Keep a window of blocks computing; append finished blocks to the CSV in file order."""
    n = stream.n
    bounds = np.cumsum((0,) + result.chunks[0]) + start
    window = max(2, 2 * sum(client.nthreads().values()))
    if progress is not None:
        progress(start, n)
    pending: collections.deque = collections.deque()
    # `result.blocks[i]` keeps the high-level graph, so the client culls it to one block and its
    # memory does not grow with the number of blocks
    todo = iter(range(result.numblocks[0]))

    def submit(i: int) -> None:
        pending.append((i, client.compute(result.blocks[i])))

    for i in todo:
        submit(i)
        if len(pending) >= window:
            break
    try:
        while pending:
            i, future = pending.popleft()
            block = np.asarray(future.result(), dtype=np.float32)
            future.release()
            nxt = next(todo, None)
            if nxt is not None:
                submit(nxt)
            a, b = int(bounds[i]), int(bounds[i + 1])
            if block.shape != (b - a, 2):
                raise HitsStampsError(f"dask block {i} returned shape {block.shape} for rows {a}-{b - 1}")
            record(writer, state, stream.read_ids(a, b), block[:, 0], int(block[:, 1].sum()), config.threshold)
            if progress is not None:
                progress(b, n)
    finally:
        for _, future in pending:
            future.cancel()


__all__ = ["DASK_CONFIG", "H5Rows", "peak_rss_mib", "run_dask"]
