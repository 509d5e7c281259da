"""Serving benchmark: prediction rate (stamps/s) and peak memory against file size.

What it measures, in one run (so that ratios compare like with like on the same machine):

1. batch-size sweep: forward passes only, one thread, stamps per CPU-second: torch, onnxruntime on
   the export (`MaxPool` nodes), and onnxruntime on the same network exported with strided-slice
   pooling (what `models.cnn.max_pool_2x2` runs in eager torch), to show what the export choice buys;
2. rate: `predict_file --limit K` on the leading K stamps (default 32,768 = 8 HDF5 chunks) of the
   1,000,000-stamp HDF5 file, for seed-cnn and rotinv-cnn with each of `--rate-configs` (default:
   torch and onnxruntime on one thread, the Dask engine on a LocalCluster of 1 and 2 one-thread
   workers with each backend); each configuration runs `--reps` times in round-robin order, each in
   a fresh process; medians reported, as wall rates and as stamps per CPU-second (the predicting
   process's CPU time after set-up plus, for Dask, the workers' CPU time after their model was
   loaded; on a shared machine this is the robust number);
3. memory: full passes over a 100,000- and the 1,000,000-stamp HDF5 file for `--memory-configs`:
   peak RSS (VmHWM of the predicting process; for Dask also of every worker) and the full-file rates.

Stamp files: `simulate_stamps` (the realistic HiTS simulator) makes a base block of stamps that is
tiled, with unique ids, into HDF5 files written block by block (memory stays bounded) with the same
layout as `write_stamps` (gzip level 4, shuffle, 4,096-row chunks). The models are trained for one
epoch: the prediction cost does not depend on the weights. Files live in --workdir and are deleted
at the end unless --keep (a kept file with the right number of rows is reused by the next run).
Results are written to --json after every measurement, so an interrupted run keeps what it measured.

    nice -n 10 .venv/bin/python benchmarks/bench_serve.py --workdir runs/serve-bench \\
        --json benchmarks/results/serving.json

A smoke run (tiny files, seed-cnn only, one repetition; seconds to a minute, numbers meaningless; run by
tests/test_benchmarks.py):
    .venv/bin/python benchmarks/bench_serve.py --smoke --workdir runs/serve-smoke --json runs/serve-smoke.json

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

from _common import add_smoke
from _machine import lscpu

HERE = Path(__file__).resolve()
MODELS = ("seed-cnn", "rotinv-cnn")
#: (name, backend, engine, workers, threads); the local configurations without "-1thread" use the
#: libraries' default thread count (all cores)
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
#: what --smoke sets: every part runs (one Dask configuration included) on files of a few thousand stamps
SMOKE = {"rate_stamps": 1024, "rate_configs": "torch-1thread,onnxruntime-1thread,dask-1-onnxruntime",
         "small": 1024, "large": 2048, "reps": 1, "base_stamps": 512,
         "memory_configs": "seed-cnn:onnxruntime-1thread"}
SMOKE_MODELS = ("seed-cnn",)
SMOKE_SWEEP = {"sizes": (32, 256), "n": 512}


# ----------------------------------------------------------------------------- helpers


def machine() -> dict:
    import dask
    import distributed
    import h5py
    import onnxruntime
    import torch

    info = lscpu()
    cpu = info.get("Model name", "unknown")
    cpu_details = {k: info.get(k) for k in ("CPU family", "Model", "Hypervisor vendor", "L2 cache", "L3 cache")}
    import hashlib

    import hits_stamps.models.cnn as cnn

    return {
        "models_cnn_py_sha256": hashlib.sha256(Path(cnn.__file__).read_bytes()).hexdigest()[:16],
        "cpu": cpu, "cpu_details": cpu_details,
        "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__, "dask": dask.__version__, "distributed": distributed.__version__,
        "h5py": h5py.__version__, "numpy": np.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def h5_rows(path: Path) -> int | None:
    """Rows of `images` in an existing HDF5 file, None when there is no readable file."""
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            return int(fh["images"].shape[0])
    except (OSError, KeyError):
        return None


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
               batch_size: int, limit: int | None = None) -> list[str]:
    args = ["--model", str(model), "--data", str(data), "--out", str(out), "--backend", backend,
            "--engine", engine, "--batch-size", str(batch_size)]
    if limit:
        args += ["--limit", str(limit)]
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
                        workers=ns.workers, threads=ns.threads, limit=ns.limit)
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


def slice_pool_variant_onnx(model) -> bytes | None:
    """The ONNX export with 2x2 max-pooling as the maximum of four strided slices (Slice + Max nodes).

    That is what `models.cnn.max_pool_2x2` runs without autograd (faster in eager torch) and what an
    export traced without autograd would contain; `hits_stamps.serve.export` traces with autograd so
    that the graph gets one `MaxPool` node instead. None when the model module has no such function.
    """
    import torch

    import hits_stamps.models.cnn as cnn
    from hits_stamps.serve.export import export_onnx_bytes

    original = getattr(cnn, "max_pool_2x2", None)
    if original is None:
        return None

    def slices(x: torch.Tensor) -> torch.Tensor:
        h, w = (x.shape[-2] // 2) * 2, (x.shape[-1] // 2) * 2
        return torch.maximum(torch.maximum(x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2]),
                             torch.maximum(x[..., 1:h:2, 0:w:2], x[..., 1:h:2, 1:w:2]))

    cnn.max_pool_2x2 = slices
    try:
        return export_onnx_bytes(model)
    finally:
        cnn.max_pool_2x2 = original


def batch_sweep(models: dict[str, Path], onnx: dict[str, Path], base, sizes=(32, 64, 256, 1024), n=4096) -> list:
    """Stamps per CPU-second of the forward pass alone, one thread, for several batch sizes (torch,
    onnxruntime on the export, and onnxruntime on the strided-slice-pooling variant of the export)."""
    import torch

    from hits_stamps.serve.export import make_session
    from hits_stamps.training import load_model

    torch.set_num_threads(1)
    rows = []
    for name, path in models.items():
        model = load_model(path)
        raw = np.ascontiguousarray(base.images[:n], dtype=np.float32)  # (n, H, W, C): the ONNX graph preprocesses
        x = model.preprocessor.transform(raw, report=False)
        n = len(x)
        sessions = {"ort": make_session(onnx[name], threads=1)}
        variant = slice_pool_variant_onnx(model)
        if variant is not None:
            sessions["ort_slicepool"] = make_session(variant, threads=1)
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
                    session.run(None, {"input": raw[a:a + b]})
                row[f"{key}_per_cpu_s"] = n / (time.process_time() - t0)
            rows.append(row)
            print(f"  batch sweep {name} b={b}: " + ", ".join(f"{k} {v:.0f}" for k, v in row.items()
                                                            if k.endswith("cpu_s")), flush=True)
    return rows


# ----------------------------------------------------------------------------- report

#: alerts or candidates to classify, for the projection: (label, stamps)
WORKLOADS = (("Rubin night", 10_000_000), ("HiTS 2015 campaign", 1_250_000))
WINDOWS = (("10 h", 36_000.0), ("1 h", 3_600.0))


def _worker_rss(r: dict) -> str:
    stats = r.get("worker_stats") or {}
    return " / ".join(f"{w['max_rss_mib']:.0f}" for w in stats.values()) or "-"


def merge_results(files: list[dict]) -> dict:
    """One results dict: machine and args of the first file; rate, batch sweep and memory entries
    of later files replace those of earlier files with the same key."""
    merged = {"machine": files[0]["machine"], "args": files[0]["args"], "rate": {}, "memory": {}, "batch_sweep": []}
    for r in files:
        merged["rate"].update(r.get("rate", {}))
        merged["memory"].update(r.get("memory", {}))
        merged["batch_sweep"] = r.get("batch_sweep") or merged["batch_sweep"]
        merged["load_average_at_end"] = r.get("load_average_at_end", ())
    return merged


def report(results: dict) -> str:
    """Markdown tables of a results file (rates, batch sweep, memory, projection)."""
    lines = []
    m = results["machine"]
    details = ", ".join(f"{k} {v}" for k, v in (m.get("cpu_details") or {}).items() if v)
    lines += [f"machine: {m['cpu']} ({details}), {m['cores']} cores; python {m['python']}, "
              f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, dask {m['dask']}; load average at start "
              f"{tuple(round(v, 2) for v in m['load_average_at_start'])}, at end "
              f"{tuple(round(v, 2) for v in results.get('load_average_at_end', ()))}", ""]
    rate = results.get("rate", {})
    if rate:
        lines += ["| model | configuration | runs | stamps/s (wall, after set-up) | stamps/s (wall, incl. set-up) "
                  "| stamps per CPU-second | set-up s | peak RSS MiB: predicting process | workers |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key, v in rate.items():
            name, cname = key.split("|")
            lines.append(f"| {name} | {cname} | {len(v['runs'])} | {v['median_stamps_per_second_after_setup']:,.0f} | "
                         f"{v['median_stamps_per_second']:,.0f} | {v['median_stamps_per_cpu_second']:,.0f} | "
                         f"{v['median_setup_seconds']:.1f} | {v['median_max_rss_mib']:.0f} | "
                         f"{_worker_rss(v['runs'][0])} |")
        lines.append("")
    sweep = results.get("batch_sweep", [])
    if sweep:
        keys = [k for k in sweep[0] if k.endswith("_per_cpu_s")]
        lines += ["| model | batch | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
        for row in sweep:
            lines.append(f"| {row['model']} | {row['batch']} | " + " | ".join(f"{row[k]:,.0f}" for k in keys) + " |")
        lines.append("")
    memory = {k: v for k, v in results.get("memory", {}).items() if isinstance(v, dict)}
    if memory:
        lines += ["| model | configuration | stamps | wall s | stamps/s | stamps per CPU-second | CPU s "
                  "| peak RSS MiB: predicting process | workers |", "|---|---|---|---|---|---|---|---|---|"]
        for key, r in memory.items():
            name, cname, n = key.split("|")
            cpu = r["n"] / per_cpu(r)
            lines.append(f"| {name} | {cname} | {int(n):,} | {r['seconds']:,.0f} | {r['stamps_per_second']:,.0f} | "
                         f"{per_cpu(r):,.0f} | {cpu:,.0f} | {r['max_rss_mib']:.0f} | {_worker_rss(r)} |")
        lines.append("")
    if rate:
        lines += ["| model | configuration | stamps per CPU-second | "
                  + " | ".join(f"{w} in {t}: cores" for w, _ in WORKLOADS for t, _ in WINDOWS) + " |",
                  "|---|---|---|" + "---|" * (len(WORKLOADS) * len(WINDOWS))]
        for key, v in rate.items():
            name, cname = key.split("|")
            r = v["median_stamps_per_cpu_second"]
            lines.append(f"| {name} | {cname} | {r:,.0f} | "
                         + " | ".join(f"{n / (r * secs):.2g}" for _, n in WORKLOADS for _, secs in WINDOWS) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, out: Path) -> None:
    """Bar chart of the median stamps per CPU-second of every rate configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rate = results["rate"]
    cnames = list(dict.fromkeys(k.split("|")[1] for k in rate))
    fig, ax = plt.subplots(figsize=(7.5, 3.4), dpi=110)
    width = 0.8 / len(MODELS)
    for j, name in enumerate(MODELS):
        vals = [rate.get(f"{name}|{c}", {}).get("median_stamps_per_cpu_second", np.nan) for c in cnames]
        ax.bar(np.arange(len(cnames)) + (j - (len(MODELS) - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(cnames)), cnames, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("stamps per CPU-second")
    ax.set_title(f"predict_file on the leading {int(results['args']['rate_stamps']):,} stamps of a "
                 f"{int(results['args']['large']):,}-stamp HDF5 file (medians)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


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
    o.add_argument("--limit", type=int)
    o.add_argument("--onnx")
    o.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workdir", type=Path, default=Path("runs/serve-bench"))
    p.add_argument("--json", type=Path, help="write all results here (after every measurement)")
    p.add_argument("--rate-stamps", type=int, default=32768, help="leading stamps of the large file per rate run")
    p.add_argument("--rate-configs", default="torch-1thread,onnxruntime-1thread,dask-1-torch,dask-2-torch,"
                   "dask-1-onnxruntime,dask-2-onnxruntime", help=f"names from {[c[0] for c in RATE_CONFIGS]}")
    p.add_argument("--small", type=int, default=100_000)
    p.add_argument("--large", type=int, default=1_000_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--base-stamps", type=int, default=16384, help="simulated stamps tiled into the files")
    p.add_argument("--memory-configs",
                   default="seed-cnn:onnxruntime-1thread,seed-cnn:torch-1thread,seed-cnn:dask-2-onnxruntime",
                   help="model:config pairs run in full on the small and the large file")
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--skip-rate", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the stamp files (and reuse kept ones)")
    add_smoke(p)
    r = sub.add_parser("report", help="print markdown tables of results files (and plot the rates)")
    r.add_argument("results", type=Path, nargs="+",
                   help="results files; a later file's entries replace an earlier file's with the same key")
    r.add_argument("--figure", type=Path, help="write a bar chart of the rates here (PNG)")
    ns = p.parse_args(argv)
    if ns.cmd == "one":
        one(ns)
        return
    if ns.cmd == "report":
        results = merge_results([json.loads(path.read_text()) for path in ns.results])
        print(report(results))
        if ns.figure and results.get("rate"):
            plot(results, ns.figure)
        return

    from hits_stamps.serve import export_onnx
    from hits_stamps.training import TrainConfig, fit

    try:
        from hits_stamps.simulate import simulate_stamps as generate
    except ImportError:  # pragma: no cover - the toy generator when the simulator is absent
        from hits_stamps.datasets import make_synthetic_stamps as generate

    if ns.smoke:
        for key, value in SMOKE.items():
            setattr(ns, key, value)
    model_names = SMOKE_MODELS if ns.smoke else MODELS
    configs = {c[0]: c for c in RATE_CONFIGS}
    rate_configs = ns.rate_configs.split(",")
    memory_pairs = [pair.split(":") for pair in ns.memory_configs.split(",")] if ns.memory_configs else []
    unknown = [c for c in rate_configs + [c for _, c in memory_pairs] if c not in configs]
    if unknown:
        p.error(f"unknown configurations {unknown}; choose from {list(configs)}")

    work = ns.workdir
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "args": {k: str(v) for k, v in vars(ns).items()}, "smoke": ns.smoke}
    print(f"machine: {results['machine']}", flush=True)

    def save() -> None:
        if ns.json:
            ns.json.parent.mkdir(parents=True, exist_ok=True)
            ns.json.write_text(json.dumps(results, indent=1, default=str) + "\n")

    def run_config(name: str, cname: str, path: Path, limit: int | None) -> dict:
        _, backend, engine, workers, threads = configs[cname]
        args = child_args(models[name], path, work / "preds.csv", backend, engine, workers, threads, onnx[name],
                          ns.batch_size, limit)
        r = run_child(args)
        r["load_average"] = os.getloadavg()
        return r

    t0 = time.perf_counter()
    base = generate(ns.base_stamps, seed=0)
    results["base_generation_seconds"] = time.perf_counter() - t0
    print(f"simulated {len(base)} base stamps in {results['base_generation_seconds']:.1f} s", flush=True)

    models, onnx = {}, {}
    for name in model_names:
        d = work / name
        if not (d / "model.safetensors").exists():
            shutil.rmtree(d, ignore_errors=True)
            fit(TrainConfig(model=name, epochs=1, seed=0), base[np.arange(min(2000, len(base)))], d, progress=False)
        models[name] = d
        onnx[name] = export_onnx(d, work / f"{name}.onnx", overwrite=True)

    if not ns.skip_sweep:
        results["batch_sweep"] = batch_sweep(models, onnx, base, **(SMOKE_SWEEP if ns.smoke else {}))
        save()
    files = {n: work / f"stamps_{n}.h5" for n in (ns.small, ns.large)}
    try:
        results["files"] = {}
        for n, path in files.items():
            if ns.skip_memory and n != ns.large:
                continue
            if ns.keep and h5_rows(path) == n:
                print(f"reusing {path}", flush=True)
                continue
            secs = write_tiled_h5(path, n, base)
            results["files"][f"write_{n}_seconds"] = secs
            print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {secs:.0f} s", flush=True)
            save()
        if not ns.skip_rate:
            runs: dict[str, list] = {}
            for rep in range(ns.reps):
                for name in model_names:
                    for cname in rate_configs:
                        r = run_config(name, cname, files[ns.large], ns.rate_stamps)
                        runs.setdefault(f"{name}|{cname}", []).append(r)
                        results["rate"] = {key: summarize(v) for key, v in runs.items()}
                        save()
                        print(f"  rep {rep} {name:10s} {cname:20s} {r['stamps_per_second']:8.0f} stamps/s, "
                              f"{r['n'] / r['loop_seconds']:8.0f} after setup, {per_cpu(r):8.0f} per CPU-s "
                              f"(setup {r['setup_seconds']:.1f} s, rss {r['max_rss_mib']:.0f} MiB)", flush=True)
        if not ns.skip_memory:
            results.setdefault("memory", {})
            for name, cname in memory_pairs:
                for n, path in files.items():
                    r = run_config(name, cname, path, None)
                    results["memory"][f"{name}|{cname}|{n}"] = r
                    save()
                    workers = {k: {"max_rss_mib": round(v["max_rss_mib"]), "cpu_s": round(v["cpu_seconds"])}
                               for k, v in (r["worker_stats"] or {}).items()}
                    print(f"  {n:8d} {name} {cname}: {r['stamps_per_second']:.0f} stamps/s, "
                          f"{per_cpu(r):.0f} per CPU-s, peak RSS {r['max_rss_mib']:.0f} MiB, workers {workers}",
                          flush=True)
    finally:
        if not ns.keep:
            for f in files.values():
                f.unlink(missing_ok=True)
        (work / "preds.csv").unlink(missing_ok=True)
        results["load_average_at_end"] = os.getloadavg()
        save()


if __name__ == "__main__":
    main()
