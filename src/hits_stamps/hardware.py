"""What this CPU can do, and the precision and thread count the tool runs with because of it.

Precision. bfloat16 autocast pays only where the CPU multiplies bf16 matrices in hardware: Intel AMX
(`amx_bf16`) or AVX-512 BF16 (`avx512_bf16`), read from the `flags` of /proc/cpuinfo. Everywhere else
PyTorch emulates bf16 and it is far slower than float32 (on an AMD EPYC with AVX2 only, a bf16
matrix product is hundreds of times slower), so `auto` means float32 there,
and float32 results are exactly those of a run without autocast. `HITS_STAMPS_PRECISION=float32`
(or `bfloat16`) overrides the choice; nobody needs to set it.

Threads. On a machine whose cores are already busy (its 1-minute load average close to the core
count), PyTorch's OpenMP threads wait for each other at every barrier and a small network's step
gets many times slower with all cores' threads than with one (docs/benchmarks/speed.md).
`choose_threads` therefore takes the cores this process may run on minus the cores other work
keeps busy (sampled from /proc/stat for 0.1 s), at least 1. `HITS_STAMPS_THREADS=N` overrides it.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from functools import lru_cache
from pathlib import Path

import torch

PRECISIONS = ("auto", "float32", "bfloat16")
PRECISION_ENV = "HITS_STAMPS_PRECISION"
THREADS_ENV = "HITS_STAMPS_THREADS"
#: cpuinfo flags of a matrix unit or vector extension that computes bf16 products natively
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (the `flags` line of /proc/cpuinfo); empty where there is none (macOS, Windows)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@lru_cache(maxsize=1)
def _this_cpu_flags() -> frozenset[str]:
    return cpu_flags()


def has_fast_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU multiplies bf16 in hardware (AMX or AVX-512 BF16; see the module docstring)."""
    flags = _this_cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_FLAGS)


def describe_cpu(flags: frozenset[str] | None = None) -> dict:
    """What the choices were based on: torch's vector capability and the relevant cpuinfo flags."""
    flags = _this_cpu_flags() if flags is None else flags
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", *BF16_FLAGS, "amx_tile", "amx_int8")
    return {"torch_capability": torch.backends.cpu.get_cpu_capability(),
            "flags": sorted(f for f in wanted if f in flags),
            "fast_bf16": has_fast_bf16(flags)}


def choose_precision(requested: str = "auto", device: str | torch.device = "cpu",
                     flags: frozenset[str] | None = None) -> str:
    """`float32` or `bfloat16`: the precision a CPU computation runs in.

    `auto` (the default) takes `$HITS_STAMPS_PRECISION` when set, else bfloat16 exactly where
    `has_fast_bf16`; other devices than the CPU run in float32. An explicit `bfloat16` on a CPU
    without bf16 hardware is honoured with a warning (it is slow there).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {requested!r}")
    if requested == "auto":
        env = os.environ.get(PRECISION_ENV, "").strip()
        if env:
            if env not in PRECISIONS:
                raise ValueError(f"${PRECISION_ENV} must be one of {PRECISIONS}; got {env!r}")
            requested = env
    if torch.device(device).type != "cpu":
        return "float32"
    fast = has_fast_bf16(flags)
    if requested == "auto":
        return "bfloat16" if fast else "float32"
    if requested == "bfloat16" and not fast:
        warnings.warn("bfloat16 was asked for on a CPU without AMX or AVX-512 BF16; it is emulated and "
                      "much slower than float32 here", stacklevel=2)
    return requested


def autocast(precision: str, device: str | torch.device = "cpu"):
    """A context in which matrix products and convolutions run in `precision` (float32: no autocast at all)."""
    if precision == "float32":
        return contextlib.nullcontext()
    if precision != "bfloat16":
        raise ValueError(f"precision must be float32 or bfloat16; got {precision!r}")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _busy_jiffies(stat: str = "/proc/stat") -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores so far, from the `cpu` line of /proc/stat; None where absent."""
    try:
        with open(stat, encoding="ascii") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


_BUSY_CACHE: dict[str, float] = {}
#: seconds a `busy_cores` sample is reused (prediction calls it once per `predict_proba`)
BUSY_MAX_AGE = 10.0


def busy_cores(window: float = 0.1, cores: int | None = None, max_age: float = BUSY_MAX_AGE) -> float:
    """Cores kept busy by other work, sampled over `window` seconds while this thread sleeps.

    From /proc/stat where there is one (this process is asleep in the window, so its own earlier
    work does not count, unlike in the load average); else the 1-minute load average. A sample
    younger than `max_age` seconds is reused.
    """
    import time

    now = time.monotonic()
    if max_age > 0 and now - _BUSY_CACHE.get("at", -math.inf) < max_age:
        return _BUSY_CACHE["busy"]
    cores = usable_cores() if cores is None else cores
    busy = None
    a = _busy_jiffies()
    if a is not None:
        time.sleep(window)
        b = _busy_jiffies()
        if b is not None and b[1] > a[1]:
            busy = (b[0] - a[0]) / (b[1] - a[1]) * (os.cpu_count() or cores)
    if busy is None:
        try:
            busy = float(os.getloadavg()[0])
        except (AttributeError, OSError):
            busy = 0.0
    _BUSY_CACHE.update(at=time.monotonic(), busy=busy)
    return busy


def choose_threads(requested: int | None = None, cores: int | None = None,
                   busy: float | None = None) -> int:
    """Intra-op threads: `requested`, else `$HITS_STAMPS_THREADS`, else the cores not already busy.

    Busy cores (`busy`, default `busy_cores()`) are rounded to the nearest whole core; the result
    is between 1 and `cores` (default `usable_cores()`).
    """
    if requested is None:
        env = os.environ.get(THREADS_ENV, "").strip()
        if env:
            try:
                requested = int(env)
            except ValueError:
                raise ValueError(f"${THREADS_ENV} must be an integer >= 1; got {env!r}") from None
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be >= 1; got {requested}")
        return int(requested)
    cores = usable_cores() if cores is None else cores
    busy = busy_cores(cores=cores) if busy is None else busy
    return int(max(1, min(cores, round(cores - busy))))


@contextlib.contextmanager
def torch_threads(n: int | None = None):
    """Run the block with `torch.set_num_threads(n)`, restoring the previous count afterwards.

    n None: `choose_threads()`, but never more than torch is set to now (its default: the cores).
    """
    before = torch.get_num_threads()
    if n is None:
        n = min(choose_threads(), before)
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["BF16_FLAGS", "PRECISIONS", "PRECISION_ENV", "THREADS_ENV", "autocast", "busy_cores", "choose_precision",
           "choose_threads", "cpu_flags", "describe_cpu", "has_fast_bf16", "torch_threads", "usable_cores"]
