"""The run report's tables, built from metrics records."""

from __future__ import annotations

import numpy as np

from hits_stamps.evaluation.metrics import classification_metrics
from hits_stamps.report.context import _leaderboard, _per_kind_tables
from hits_stamps.report.html import environment


def test_leaderboard_shows_intervals_objects_and_the_validation_threshold():
    y = np.r_[np.zeros(60, int), np.ones(60, int)]
    p = np.clip(np.r_[np.linspace(0, 0.7, 60), np.linspace(0.3, 1, 60)], 0, 1)
    kind = np.where(y == 1, "sn", "cosmic_ray")
    new = classification_metrics(y, p, kind=kind, groups=np.repeat(np.arange(30).astype(str), 4),
                                 threshold_fpr1=0.6, n_resamples=200)
    new["threshold_source"] = {"threshold": 0.6, "n": 500, "n_objects": 90, "data": "val.npz"}
    old = {"n": 120, "accuracy": 0.9, "f1": 0.9, "roc_auc": 0.95, "fnr_at_fpr_1pct": 0.3}  # an older summary
    summary = {"models": {"a": {"real": new}, "b": {"real": old}}, "training": {}}
    macro = environment().from_string('{% from "_macros.html.j2" import table %}{{ table(t) }}')
    board = _leaderboard(summary, "real")
    html = macro.render(t=board.table)
    lo, hi = new["ci95"]["accuracy"]
    assert f"{new['accuracy']:.3f} <span class=\"muted\">[{lo:.3f}, {hi:.3f}]</span>" in html
    assert "tuned on this set (optimistic)" in html and "validation threshold" in html
    assert f"(FPR {new['fpr_at_val_threshold']:.4g}" in html  # the achieved test FPR beside the honest FNR
    assert "<th class=\"\">objects</th>" in html and ">30<" in html
    assert board.threshold == ("500", "90", "val.npz")
    assert "0.9</td>" in html  # the old summary still renders, without intervals
    kinds = "".join(macro.render(t=k.table) for k in _per_kind_tables(summary["models"], ["real"]))
    assert "cosmic_ray" in kinds and "FPR (bogus called real)" in kinds and "FNR (real missed)" in kinds
    fpr, (flo, fhi) = new["by_kind"]["cosmic_ray"]["fpr"], new["by_kind"]["cosmic_ray"]["fpr_ci95"]
    assert f"{fpr:.3f} <span class=\"muted\">[{flo:.3f}, {fhi:.3f}]</span>" in kinds
    only_old = _leaderboard({"models": {"b": {"real": old}}, "training": {}}, "real")
    assert "objects" not in macro.render(t=only_old.table) and only_old.threshold is None
