"""From how many stamps does `predict` with onnxruntime (exported in memory) beat torch end to end?

Trains a small seed-cnn (1 epoch, 1,000 stamps), writes 10,000- and 100,000-stamp HDF5 files, and
times `hits-stamps predict` in a child process (start to exit) with `--backend torch` and
`--backend onnxruntime` on both, in two alternating rounds; then the in-process export time and the
start-up (imports) alone. The line through the two sizes per backend gives each backend's fixed
cost and cost per stamp; where they cross is the break-even that `AUTO_ONNX_MIN_ROWS` is set from.

    PYTHONPATH=src python experiments/auto_backend_breakeven.py --work runs/breakeven
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/breakeven", help="folder for the model, the files and the CSV")
    args = p.parse_args()
    t0 = time.perf_counter()
    from hits_stamps.datasets import make_synthetic_stamps
    from hits_stamps.io import write_stamps
    from hits_stamps.training.loop import TrainConfig, fit

    tmp = Path(args.work)
    tmp.mkdir(parents=True, exist_ok=True)
    m = fit(TrainConfig(model="seed-cnn", epochs=1, seed=0, threads=1), make_synthetic_stamps(1000, seed=0),
            tmp / "m", progress=False, overwrite=True)
    h5 = write_stamps(make_synthetic_stamps(100000, seed=3), tmp / "large.h5", overwrite=True)
    h5s = write_stamps(make_synthetic_stamps(10000, seed=1), tmp / "small.h5", overwrite=True)
    print("setup", time.perf_counter() - t0, flush=True)
    cli = "import sys; from hits_stamps.cli import run_main; sys.argv[0] = 'hits-stamps'; run_main()"
    for rnd in range(2):
        for f in (h5s, h5):
            for backend in ("torch", "onnxruntime"):
                la = os.getloadavg()[0]
                t = time.perf_counter()
                proc = subprocess.run([sys.executable, "-c", cli, "predict", str(tmp / "m"), "--data", str(f),
                                       "--out", str(tmp / "o.csv"), "--overwrite", "--no-progress",
                                       "--backend", backend], capture_output=True, text=True, check=False)
                said = proc.stdout.strip().splitlines()[-2:] if proc.returncode == 0 else proc.stderr[-500:]
                print(rnd, f.name, backend, round(time.perf_counter() - t, 2), "load", la, said, flush=True)
    import torch

    from hits_stamps.serve import export

    torch.set_num_threads(1)
    for _ in range(2):
        t = time.perf_counter()
        export.export_onnx_bytes(m)
        print("export_onnx_bytes", time.perf_counter() - t, flush=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import hits_stamps.cli, torch"], capture_output=True, check=False)
    print("import cli+torch", time.perf_counter() - t)


if __name__ == "__main__":
    main()
