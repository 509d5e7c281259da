"""What the benchmark scripts share: the machine record, result writing, the --smoke flag, intervals, the
matrix-multiply rate.

A benchmark is a script with a `main(argv)`; its result is one JSON file (written by `write_json`)
whose "machine" entry is `machine()`. Every kept script has a `--smoke` mode (`add_smoke`): tiny
sizes on the packaged sample or toy data, seconds to a minute, run by tests/test_benchmarks.py so
that a refactor that breaks a benchmark fails a test instead of the next measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from _machine import cpu_model

SMOKE_HELP = "tiny sizes, seconds to a minute, numbers meaningless (tests/test_benchmarks.py runs it)"


def add_smoke(parser: argparse.ArgumentParser) -> None:
    """Add the `--smoke` flag every benchmark script has."""
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)


def machine(**extra: Any) -> dict[str, Any]:
    """The machine a number was measured on: CPU model, cores, Python, torch and its threads, load average."""
    import torch

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()], **extra}


def sgemm_flops(n: int = 2048, reps: int = 10, warmup: int = 3) -> float:
    """float32 n x n matrix-product rate (FLOP/s): the median of `reps` timed products after `warmup` untimed
    ones, with the caller's torch thread settings."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(warmup):
        a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion successes / n (independent trials); (nan, nan) for n = 0."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write `obj` as JSON (numpy scalars as floats), creating the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, default=float) + "\n")
    print(f"wrote {path}")
    return path
