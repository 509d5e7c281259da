"""Serving benchmark: prediction rate (stamps/s) and peak memory against file size.

What it measures, in one run (so that ratios compare like with like on the same machine):

1. batch-size sweep: forward passes only (torch and onnxruntime, one thread), stamps per CPU-second;
2. rate: `predict_file` on the same K-stamp HDF5 file (default 10,000, in 1,024-row HDF5 chunks)
   for seed-cnn and rotinv-cnn with torch and onnxruntime (local engine, default threads and one
   thread) and with the Dask engine (LocalCluster of 1 and 2 workers, both backends); each
   configuration runs `--reps` times in round-robin order in a fresh process; medians reported;
3. memory: peak RSS (VmHWM of the predicting process; for Dask also of every worker) for a
   100,000- and a 1,000,000-stamp HDF5 file, for a few configurations (`--memory-configs`); these
   runs also give the rates on the 1M file.

Stamp files: `simulate_stamps` (the realistic HiTS simulator) makes a base block of stamps that is
tiled, with unique ids, into HDF5 files written block by block (memory stays bounded) with the same
layout as `write_stamps` (gzip level 4, shuffle, 4,096-row chunks). The models are trained for one
epoch: the prediction cost does not depend on the weights. Files live in --workdir and are deleted
at the end unless --keep.

    nice -n 10 .venv/bin/python benchmarks/bench_serve.py --workdir /tmp/hits-serve-bench \\
        --json docs/benchmarks/serving.json

A child run (used internally, also handy alone):
    .venv/bin/python benchmarks/bench_serve.py one --model DIR --data FILE.h5 --backend onnxruntime
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
MODELS = ("seed-cnn", "rotinv-cnn")
#: (name, backend, engine, workers, threads)
RATE_CONFIGS = (
    ("torch", "torch", "local", None, None),
    ("torch-1thread", "torch", "local", None, 1),
    ("onnxruntime", "onnxruntime", "local", None, None),
    ("onnxruntime-1thread", "onnxruntime", "local", None, 1),
    ("dask-1-torch", "torch", "dask", 1, None),
    ("dask-2-torch", "torch", "dask", 2, None),
    ("dask-1-onnxruntime", "onnxruntime", "dask", 1, None),
    ("dask-2-onnxruntime", "onnxruntime", "dask", 2, None),
)


# ----------------------------------------------------------------------------- helpers


def machine() -> dict:
    import dask
    import onnxruntime
    import torch

    cpu = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    import hashlib

    import hits_stamps.models.cnn as cnn

    return {
        "models_cnn_py_sha256": hashlib.sha256(Path(cnn.__file__).read_bytes()).hexdigest()[:16],
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__, "dask": dask.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def write_tiled_h5(path: Path, n: int, base, block: int = 16384, chunk_rows: int = 4096) -> float:
    """Write n stamps (base tiled, ids sim_0000000...) as an HDF5 stamp file; returns seconds."""
    import h5py

    t0 = time.perf_counter()
    m = len(base)
    h, w, c = base.images.shape[1:]
    with h5py.File(path, "w") as fh:
        images = fh.create_dataset("images", shape=(n, h, w, c), dtype=np.float32, chunks=(min(n, chunk_rows), h, w, c),
                                   compression="gzip", compression_opts=4, shuffle=True)
        labels = fh.create_dataset("labels", shape=(n,), dtype=np.int64, chunks=(min(n, chunk_rows),))
        ids = fh.create_dataset("ids", shape=(n,), dtype=h5py.string_dtype(), chunks=(min(n, chunk_rows),))
        fh.create_dataset("channels", data=np.asarray(base.channels, dtype=object), dtype=h5py.string_dtype())
        fh.create_dataset("meta_json", data=json.dumps({"source": "bench_serve tiled simulate_stamps"}))
        for a in range(0, n, block):
            b = min(a + block, n)
            rows = np.arange(a, b) % m
            images[a:b] = base.images[rows]
            labels[a:b] = base.labels[rows]
            ids[a:b] = np.array([f"sim_{i:07d}" for i in range(a, b)], dtype=object)
    return time.perf_counter() - t0


def run_child(args: list[str]) -> dict:
    cmd = [sys.executable, str(HERE), "one", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_seconds"] = wall
    return result


def child_args(model: Path, data: Path, out: Path, backend: str, engine: str, workers, threads, onnx: Path | None,
               batch_size: int) -> list[str]:
    args = ["--model", str(model), "--data", str(data), "--out", str(out), "--backend", backend,
            "--engine", engine, "--batch-size", str(batch_size)]
    if workers:
        args += ["--workers", str(workers)]
    if threads:
        args += ["--threads", str(threads)]
    if backend == "onnxruntime" and onnx is not None:
        args += ["--onnx", str(onnx)]
    return args


# ----------------------------------------------------------------------------- child


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def one(ns: argparse.Namespace) -> None:
    """Predict one file in this process and print a JSON line with time, CPU and memory.

    The loop is timed from the first progress call (model loaded, backend built, Dask cluster up)
    to the end; CPU seconds are this process's (for Dask, the workers' are in worker_stats).
    """
    from hits_stamps.serve import PredictConfig, predict_file
    from hits_stamps.serve.dask_engine import peak_rss_mib

    marks: dict[str, float] = {}

    def progress(done: int, total: int) -> None:
        if "wall" not in marks:
            marks["wall"], marks["cpu"] = time.perf_counter(), _cpu()

    cfg = PredictConfig(batch_size=ns.batch_size, backend=ns.backend, onnx_path=ns.onnx, engine=ns.engine,
                        workers=ns.workers, threads=ns.threads)
    summary = predict_file(ns.model, ns.data, ns.out, cfg, overwrite=True, progress=progress)
    wall, cpu = time.perf_counter() - marks["wall"], _cpu() - marks["cpu"]
    print(json.dumps({
        "n": summary.n_written,
        "seconds": summary.seconds,
        "setup_seconds": summary.setup_seconds,
        "loop_seconds": wall,
        "loop_cpu_seconds": cpu,
        "stamps_per_second": summary.stamps_per_second,
        "max_rss_mib": peak_rss_mib(),
        "worker_stats": summary.worker_stats,
        "network": summary.network,
    }))


# ----------------------------------------------------------------------------- parts


def per_cpu(r: dict) -> float:
    """Stamps per CPU-second: the loop's CPU in this process plus (Dask) the workers' CPU after their
    model was loaded (older result files without that field: all of the workers' CPU)."""
    workers = sum(w.get("cpu_seconds_after_load", w["cpu_seconds"]) for w in (r["worker_stats"] or {}).values())
    return r["n"] / (r["loop_cpu_seconds"] + workers)


def summarize(v: list[dict]) -> dict:
    med = statistics.median
    return {
        "n": v[0]["n"],
        "median_stamps_per_second": med(r["stamps_per_second"] for r in v),
        "median_stamps_per_second_after_setup": med(r["n"] / r["loop_seconds"] for r in v),
        "median_stamps_per_cpu_second": med(per_cpu(r) for r in v),
        "median_setup_seconds": med(r["setup_seconds"] for r in v),
        "median_max_rss_mib": med(r["max_rss_mib"] for r in v),
        "runs": v,
    }


def maxpool_variant_onnx(model) -> bytes | None:
    """The ONNX export with `F.max_pool2d` (an ONNX MaxPool) in place of `models.cnn.max_pool_2x2`.

    `max_pool_2x2` takes the maximum of four strided slices at inference, which is faster in torch
    but exports as Slice + Max nodes; this variant measures what a MaxPool in the graph would give.
    None when the model module has no such function.
    """
    import torch
    import torch.nn.functional as F

    import hits_stamps.models.cnn as cnn
    from hits_stamps.serve.export import export_onnx_bytes

    original = getattr(cnn, "max_pool_2x2", None)
    if original is None:
        return None
    cnn.max_pool_2x2 = lambda t: F.max_pool2d(t, 2) if torch.compiler.is_exporting() else original(t)
    try:
        return export_onnx_bytes(model)
    finally:
        cnn.max_pool_2x2 = original


def batch_sweep(models: dict[str, Path], onnx: dict[str, Path], base, sizes=(32, 64, 256, 1024), n=4096) -> list:
    """Stamps per CPU-second of the forward pass alone, one thread, for several batch sizes (torch,
    onnxruntime, and onnxruntime on the MaxPool variant of the export)."""
    import torch

    from hits_stamps.serve.export import make_session
    from hits_stamps.training import load_model

    torch.set_num_threads(1)
    rows = []
    for name, path in models.items():
        model = load_model(path)
        x = model.preprocessor.transform(base.images[:n], report=False)
        n = len(x)
        sessions = {"ort": make_session(onnx[name], threads=1)}
        variant = maxpool_variant_onnx(model)
        if variant is not None:
            sessions["ort_maxpool"] = make_session(variant, threads=1)
        for b in sizes:
            row = {"model": name, "batch": b}
            t0 = time.process_time()
            with torch.no_grad():
                for a in range(0, n, b):
                    model.module(torch.from_numpy(x[a:a + b]))
            row["torch_per_cpu_s"] = n / (time.process_time() - t0)
            for key, session in sessions.items():
                t0 = time.process_time()
                for a in range(0, n, b):
                    session.run(None, {"input": x[a:a + b]})
                row[f"{key}_per_cpu_s"] = n / (time.process_time() - t0)
            rows.append(row)
            print(f"  batch sweep {name} b={b}: " + ", ".join(f"{k} {v:.0f}" for k, v in row.items()
                                                            if k.endswith("cpu_s")), flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    o = sub.add_parser("one")
    o.add_argument("--model", required=True)
    o.add_argument("--data", required=True)
    o.add_argument("--out", required=True)
    o.add_argument("--backend", default="torch")
    o.add_argument("--engine", default="local")
    o.add_argument("--workers", type=int)
    o.add_argument("--threads", type=int)
    o.add_argument("--onnx")
    o.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/hits-serve-bench"))
    p.add_argument("--json", type=Path, help="write all results here")
    p.add_argument("--rate-stamps", type=int, default=10000)
    p.add_argument("--small", type=int, default=100_000)
    p.add_argument("--large", type=int, default=1_000_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--base-stamps", type=int, default=16384, help="simulated stamps tiled into the files")
    p.add_argument("--memory-configs",
                   default="seed-cnn:onnxruntime,seed-cnn:torch-1thread,seed-cnn:dask-2-onnxruntime,"
                   "rotinv-cnn:onnxruntime-1thread",
                   help="model:config pairs run on the small and large files")
    p.add_argument("--skip-rate", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the stamp files")
    ns = p.parse_args(argv)
    if ns.cmd == "one":
        one(ns)
        return

    from hits_stamps.serve import export_onnx
    from hits_stamps.training import TrainConfig, fit

    try:
        from hits_stamps.simulate import simulate_stamps as generate
    except ImportError:  # pragma: no cover - the toy generator when the simulator is absent
        from hits_stamps.datasets import make_synthetic_stamps as generate

    work = ns.workdir
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "args": {k: str(v) for k, v in vars(ns).items()}}
    print(f"machine: {results['machine']}", flush=True)

    t0 = time.perf_counter()
    base = generate(ns.base_stamps, seed=0)
    results["base_generation_seconds"] = time.perf_counter() - t0
    print(f"simulated {len(base)} base stamps in {results['base_generation_seconds']:.1f} s", flush=True)

    models, onnx = {}, {}
    for name in MODELS:
        d = work / name
        if not (d / "model.safetensors").exists():
            shutil.rmtree(d, ignore_errors=True)
            fit(TrainConfig(model=name, epochs=1, seed=0), base[np.arange(2000)], d, progress=False)
        models[name] = d
        onnx[name] = export_onnx(d, work / f"{name}.onnx", overwrite=True)

    results["batch_sweep"] = batch_sweep(models, onnx, base)
    files: list[Path] = []
    try:
        if not ns.skip_rate:
            rate_file = work / f"rate_{ns.rate_stamps}.h5"
            files.append(rate_file)
            # 1,024-row chunks: enough blocks for two Dask workers to share evenly
            results["rate_file_write_seconds"] = write_tiled_h5(rate_file, ns.rate_stamps, base, chunk_rows=1024)
            runs: dict[str, list] = {}
            for rep in range(ns.reps):
                for name in MODELS:
                    for cname, backend, engine, workers, threads in RATE_CONFIGS:
                        args = child_args(models[name], rate_file, work / "preds.csv", backend, engine, workers,
                                          threads, onnx[name], ns.batch_size)
                        r = run_child(args)
                        runs.setdefault(f"{name}|{cname}", []).append(r)
                        print(f"  rep {rep} {name:10s} {cname:20s} {r['stamps_per_second']:8.0f} stamps/s, "
                              f"{r['n'] / r['loop_seconds']:8.0f} after setup, {per_cpu(r):8.0f} per CPU-s "
                              f"(setup {r['setup_seconds']:.1f} s, rss {r['max_rss_mib']:.0f} MiB)", flush=True)
            results["rate"] = {key: summarize(v) for key, v in runs.items()}
        if not ns.skip_memory:
            results["memory"] = {}
            for n in (ns.small, ns.large):
                path = work / f"stamps_{n}.h5"
                files.append(path)
                secs = write_tiled_h5(path, n, base)
                results["memory"][f"write_{n}_seconds"] = secs
                print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {secs:.0f} s", flush=True)
                for pair in ns.memory_configs.split(","):
                    name, cname = pair.split(":")
                    _, backend, engine, workers, threads = next(c for c in RATE_CONFIGS if c[0] == cname)
                    args = child_args(models[name], path, work / "preds.csv", backend, engine, workers, threads,
                                      onnx[name], ns.batch_size)
                    r = run_child(args)
                    results["memory"][f"{name}|{cname}|{n}"] = r
                    print(f"  {n:8d} {name} {cname}: {r['stamps_per_second']:.0f} stamps/s, "
                          f"{per_cpu(r):.0f} per CPU-s, peak RSS {r['max_rss_mib']:.0f} MiB, "
                          f"workers {r['worker_stats']}", flush=True)
                if not ns.keep:
                    path.unlink()
    finally:
        if not ns.keep:
            for f in files:
                f.unlink(missing_ok=True)
            (work / "preds.csv").unlink(missing_ok=True)
        results["load_average_at_end"] = os.getloadavg()
        if ns.json:
            ns.json.parent.mkdir(parents=True, exist_ok=True)
            ns.json.write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
