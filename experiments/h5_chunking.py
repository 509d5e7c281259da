"""HDF5 stamp files: read speed for ~1 MiB chunks (what `write_h5` writes) vs 4096-row chunks.

Random single-stamp reads (batch prediction, data loaders) must decompress a whole chunk; a chunk
larger than HDF5's 1 MiB chunk cache is decompressed again on every read. Whole-file reads are
timed too. Medians of `--repeats` runs, both layouts in the same run.

    python experiments/h5_chunking.py --n 8192 --reads 200 --repeats 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.io.native import _chunk_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8192, help="stamps in the file")
    ap.add_argument("--reads", type=int, default=200, help="random single-stamp reads per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    images = make_synthetic_stamps(n=args.n, seed=0).images
    layouts = {"4096 rows": min(4096, args.n), "~1 MiB": _chunk_rows(images[:1].nbytes, args.n)}
    idx = np.random.default_rng(0).integers(0, args.n, args.reads)
    random_s: dict[str, list[float]] = {k: [] for k in layouts}
    full_s: dict[str, list[float]] = {k: [] for k in layouts}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, rows in layouts.items():
            paths[name] = Path(tmp) / f"{rows}.h5"
            with h5py.File(paths[name], "w") as fh:
                fh.create_dataset("images", data=images, chunks=(rows,) + images.shape[1:], compression="gzip",
                                  compression_opts=4, shuffle=True)
        for _ in range(args.repeats):
            for name in layouts:
                with h5py.File(paths[name], "r") as fh:
                    dset = fh["images"]
                    t0 = time.perf_counter()
                    for i in idx:
                        dset[int(i)]
                    random_s[name].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    dset[()]
                    full_s[name].append(time.perf_counter() - t0)
    print(f"{args.n} stamps of {images.shape[1:]}, {args.reads} random reads, median of {args.repeats}")
    for name, rows in layouts.items():
        print(f"{name:>10} ({rows} rows/chunk): random reads {np.median(random_s[name]):.3f} s, "
              f"whole file {np.median(full_s[name]):.3f} s")
    ratio = np.median(random_s["4096 rows"]) / np.median(random_s["~1 MiB"])
    print(f"random-read speed-up of ~1 MiB chunks: {ratio:.1f}x")


if __name__ == "__main__":
    main()
