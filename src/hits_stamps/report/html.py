"""DIR/report.html: one self-contained page (CSS inline, every image a base64 PNG data URI).

It reads top-down like the results section of a paper: the data, the classifier leaderboard per
test set, training curves and ROC curves, the Bayesian analysis, generated stamps and how they were
judged, the augmentation experiment, and a reproducibility footer. Every figure comes from the run:
the PNGs that evaluation and judging wrote, plus the data figures made here from the run's files.

The page is the Jinja2 template templates/report.html.j2 (autoescape on) rendered from the typed
context that `hits_stamps.report.context.build_context` builds from summary.json.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from hits_stamps.errors import HitsStampsError
from hits_stamps.report.context import PNG_SIGNATURE, ReportContext, build_context, fmt


def png_data_uri(data: bytes) -> str:
    if not data.startswith(PNG_SIGNATURE):
        raise HitsStampsError("report images must be PNG")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _percent(v: float) -> str:
    return f"{v:.0%}"


@cache
def environment() -> jinja2.Environment:
    """The report's Jinja2 environment: package templates, autoescape on, undefined names an error."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hits_stamps.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters.update(fmt=fmt, percent=_percent, data_uri=png_data_uri)
    return env


def render_context(context: ReportContext) -> str:
    """The report's HTML text for a built context."""
    return environment().get_template("report.html.j2").render(c=context)


def render_report(out: str | os.PathLike, summary: Mapping[str, Any] | None = None) -> str:
    """The report's HTML text for a run directory (its summary.json unless `summary` is given)."""
    out = Path(out)
    if summary is None:
        p = out / "summary.json"
        if not p.exists():
            raise HitsStampsError(f"{out}: no summary.json (is this a finished `hits-stamps run` directory?)")
        summary = json.loads(p.read_text())
    return render_context(build_context(out, summary))


def write_report(out: str | os.PathLike, summary: Mapping[str, Any] | None = None) -> Path:
    """Write DIR/report.html atomically; returns its path."""
    from hits_stamps.io.atomic import atomic_path

    out = Path(out)
    text = render_report(out, summary)
    path = out / "report.html"
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
