"""What every benchmark records about the machine: the CPU as `lscpu` names it."""

from __future__ import annotations

import platform
import subprocess


def lscpu() -> dict[str, str]:
    """`lscpu`'s "key: value" lines as a dict; empty when lscpu is missing or fails."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {k.strip(): v.strip() for k, sep, v in (line.partition(":") for line in out.splitlines()) if sep}


def cpu_model() -> str:
    """The CPU's model name from lscpu, else `platform.processor()`, else "unknown"."""
    return lscpu().get("Model name") or platform.processor() or "unknown"
