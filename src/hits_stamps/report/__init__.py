"""The run report: one self-contained HTML page built from a `hits-stamps run` directory."""

from hits_stamps.report.html import render_report, write_report

__all__ = ["render_report", "write_report"]
