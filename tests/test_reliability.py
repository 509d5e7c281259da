"""Reliability: one-line errors for a user's mistake, nothing lost or mixed (fault injection).

Each test plays a hostile or unlucky user: mistyped options, bad values, corrupt model files, a
kill in the middle of a write, a full disk, a read-only folder, two writers on one output.
"""

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from hits_stamps.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(capsys, rc: int, match: str | None = None) -> str:
    """Assert a refused command: non-zero exit, one stderr line starting `error:`, no traceback."""
    err = capsys.readouterr().err
    assert rc != 0, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    if match is not None:
        assert re.search(match, lines[0]), lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- usage errors


def test_the_pinned_typer_is_the_installed_one():
    """constraints.txt pins the typer (and click) that the usage-error handling below is tested on."""
    pins = dict(
        line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert pins["typer"] == version("typer")
    assert pins["click"] == version("click")
    assert pins["torch"] == version("torch").split("+")[0]


@pytest.mark.parametrize("argv,match", [
    (["train", "--bogus"], r"No such option: --bogus"),
    (["predict", "m", "--data", "d.h5", "--out", "o.csv", "--batch-size", "abc"], r"Invalid value for '--batch-size'"),
    (["train"], r"Missing option '--model'"),
    (["predict"], r"Missing argument"),
    (["evaluate", "m", "--data"], r"requires an argument|Option '--data'"),
    (["no-such-command"], r"No such command"),
])
def test_usage_errors_are_one_line(capsys, argv, match):
    """A typer upgrade that changes its exception classes (0.29 vendors click) fails this test."""
    _one_line_error(capsys, main(argv), match)


def test_usage_error_from_the_console_script_has_no_traceback():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    script = "from hits_stamps.cli import run_main; run_main()"
    proc = subprocess.run([sys.executable, "-c", script, "train", "--bogus"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "No such option: --bogus" in proc.stderr
