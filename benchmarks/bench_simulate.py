"""Throughput of the simulator and time of build-real.

Usage: python benchmarks/bench_simulate.py [--n 20000] [--repeats 5] [--sequences PATH] [--out FILE.json]
       python benchmarks/bench_simulate.py --smoke --out W/simulate_smoke.json   # 200 stamps, packaged sample

Times `simulate_stamps(n)` with 1 and 2 worker threads, side by side with the toy generator
`make_synthetic_stamps(n)` as a baseline, each `--repeats` times in alternation, and reports the
median stamps/s (wall clock) and the CPU seconds per 1,000 stamps. Then times `build_real` on the
sequence file (default: ../shared/data/hits2015/hits2015_sequences.npz, else the packaged sample).
Prints a markdown table; `--out` also writes the numbers as JSON. On a shared machine the wall-clock
rates depend on the other load (the load average is recorded); the CPU seconds per stamp less so.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from _common import add_smoke, machine, write_json


def timed(fn):
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sequences", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    add_smoke(ap)
    args = ap.parse_args(argv)

    from hits_stamps.datasets import make_synthetic_stamps
    from hits_stamps.realdata import build_real, default_sequences_path, packaged_sample_path
    from hits_stamps.simulate import load_conditions, simulate_stamps

    if args.smoke:
        args.n, args.repeats, args.sequences = 200, 1, packaged_sample_path()

    table = load_conditions()
    simulate_stamps(min(500, args.n), seed=99, conditions=table)  # warm up imports and caches
    runs: dict[str, list[tuple[float, float]]] = {"simulate, 1 thread": [], "simulate, 2 threads": [],
                                                  "make_synthetic_stamps (toy baseline)": []}
    for r in range(args.repeats):
        for name, fn in (
            ("simulate, 1 thread", lambda r=r: simulate_stamps(args.n, seed=r, conditions=table, workers=1)),
            ("simulate, 2 threads", lambda r=r: simulate_stamps(args.n, seed=r, conditions=table, workers=2)),
            ("make_synthetic_stamps (toy baseline)", lambda r=r: make_synthetic_stamps(args.n, seed=r)),
        ):
            _, wall, cpu = timed(fn)
            runs[name].append((wall, cpu))
    rows = {}
    for name, vals in runs.items():
        wall = np.array([v[0] for v in vals])
        cpu = np.array([v[1] for v in vals])
        rows[name] = {
            "median_stamps_per_s": float(np.median(args.n / wall)),
            "all_stamps_per_s": [round(float(x), 1) for x in args.n / wall],
            "median_cpu_s_per_1000": float(np.median(cpu / args.n * 1000)),
        }
    seq = args.sequences or default_sequences_path()
    real_times = []
    for _ in range(max(1, min(3, args.repeats))):
        real, wall, _ = timed(lambda: build_real(seq, conditions=table))
        real_times.append(wall)
    result = {
        "machine": machine(numpy=np.__version__),  # load average at the end
        "smoke": args.smoke, "n": args.n, "repeats": args.repeats, "simulate": rows,
        "build_real": {"sequences": str(seq), "stamps": len(real), "median_s": float(np.median(real_times)),
                       "all_s": [round(t, 2) for t in real_times]},
    }
    print(f"machine: {result['machine']}")
    print(f"\n| generator (n = {args.n}) | median stamps/s | runs (stamps/s) | CPU s per 1,000 stamps |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['median_stamps_per_s']:,.0f} | {', '.join(f'{x:,.0f}' for x in r['all_stamps_per_s'])} "
              f"| {r['median_cpu_s_per_1000']:.3f} |")
    b = result["build_real"]
    print(f"\nbuild_real({seq}): {b['stamps']} stamps, median {b['median_s']:.2f} s (runs {b['all_s']})")
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
