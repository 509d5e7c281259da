"""The run report rendered from a stored summary (tests/data/report/summary.json, trimmed from a
`hits-stamps run --quick`), with tiny figures and data files written by the test: every section,
escaping, required keys, optional sections, and figures found by their exact names."""

from __future__ import annotations

import base64
import copy
import csv
import importlib.util
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.evaluation.metrics import classification_metrics
from hits_stamps.io import write_stamps
from hits_stamps.report.context import (
    AUGMENTATION_FIGURE,
    CALIBRATION_FIGURE,
    EVAL_FIGURES,
    GENERATION_FIGURES,
    ReportDataError,
    _leaderboard,
    _per_kind_tables,
    build_context,
)
from hits_stamps.report.html import environment, render_report, write_report

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = ROOT / "tests" / "data" / "report" / "summary.json"
TUNING = {"classifier": "runs/x/models/seed-bnn", "n_per_condition": 8, "temperatures": [0.5, 1.0],
          "conditions": {"sn": {"label": "real", "agreement": {"0.5": 0.9, "1.0": 0.8}, "chosen": 0.5}}}


def _png(path: Path, shade: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), (shade, 120, 200)).save(path, format="PNG")


def _stored_run(out: Path, summary: dict) -> Path:
    """A run directory as the pipeline leaves it, with tiny files: figures, predictions, one data set."""
    rng = np.random.default_rng(0)
    for name, per_set in summary["models"].items():
        for test_set in per_set:
            folder = out / "eval" / name / test_set
            for _, file_name in EVAL_FIGURES:
                _png(folder / file_name)
            y = rng.integers(0, 2, 40)
            with open(folder / "predictions.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["id", "label", "p_real"])
                w.writerows((f"s{i}", int(v), float(np.clip(0.6 * v + 0.4 * rng.random(), 0, 1)))
                            for i, v in enumerate(y))
        (out / "models" / name).mkdir(parents=True, exist_ok=True)
        (out / "models" / name / "history.json").write_text(json.dumps(
            [{"epoch": 1, "accuracy": 0.7, "val_accuracy": 0.75, "val_loss": 0.5},
             {"epoch": 2, "accuracy": 0.8, "val_accuracy": 0.8, "val_loss": 0.4}]))
    for file_name, _ in GENERATION_FIGURES:
        _png(out / "generation" / file_name)
    _png(out / "augmentation" / AUGMENTATION_FIGURE)
    _png(out / "calibration" / CALIBRATION_FIGURE)
    write_stamps(make_synthetic_stamps(60, seed=3), out / "data" / "test.npz")
    (out / "summary.json").write_text(json.dumps(summary))
    return out


@pytest.fixture(scope="module")
def stored():
    summary = json.loads(SUMMARY.read_text())
    summary["generator_tuning"] = TUNING
    return summary


@pytest.fixture
def run_dir(tmp_path, stored):
    return _stored_run(tmp_path / "run", copy.deepcopy(stored))


@pytest.fixture
def quick_figures(monkeypatch):
    """The report's own figures replaced by one tiny PNG: for tests of the context, not of the drawing."""
    from hits_stamps import plotting as figures

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    for name in ("stamp_examples_png", "class_balance_png", "training_curves_png", "roc_overlay_png",
                 "reliability_overlay_png", "referral_overlay_png"):
        monkeypatch.setattr(figures, name, lambda *args, **kwargs: buf.getvalue())


def _check_static():
    spec = importlib.util.spec_from_file_location("screenshot_report", ROOT / "scripts" / "screenshot_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.check_static


def test_report_renders_every_section_from_a_stored_summary(run_dir, stored):
    text = write_report(run_dir).read_text(encoding="utf-8")
    for heading in ("1. Data", "Simulator calibration against real pixels", "2. Classifiers",
                    "Leaderboard: simulated HiTS test set", "Leaderboard: real-pixel HiTS 2015 test objects",
                    "3. Uncertainty", "Calibrated on the validation objects", "4. Generated stamps",
                    "Before judging, the pixel temperature", "5. Augmentation", "Reproducibility"):
        assert heading in text, heading
    cnn = stored["models"]["seed-cnn"]["real"]
    lo, hi = cnn["ci95"]["accuracy"]
    assert f'{cnn["accuracy"]:.3f} <span class="muted">[{lo:.3f}, {hi:.3f}]</span>' in text
    assert '<td class="l">sn</td>' in text  # the tuning table
    # every evaluation figure of every model and test set is embedded, with its caption
    n_eval = sum(len(per_set) for per_set in stored["models"].values())
    assert text.count("Confusion matrix at threshold 0.5.</figcaption>") == n_eval
    # seed-bnn's Figure 3: in its own section (simulated), and the real test objects' under "other figures"
    assert text.count("(the seed report&#39;s Figure 3).</figcaption>") == 2
    result = _check_static()(text)
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert len(srcs) == result["images"] >= 40
    for src in srcs:
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            assert im.format == "PNG"
    assert "<script" not in text and "{{" not in text and "{%" not in text


def test_text_from_the_run_is_escaped(run_dir, stored, quick_figures):
    summary = copy.deepcopy(stored)
    summary["calibration"] = {"available": False, "reason": "<script>alert(1)</script> & more"}
    summary["config"]["models"] = ["seed-cnn", "<b>evil</b>"]
    text = render_report(run_dir, summary)
    assert "<script>" not in text and "<b>evil</b>" not in text
    assert "Not calibrated in this run: &lt;script&gt;alert(1)&lt;/script&gt; &amp; more." in text
    assert "(seed-cnn, &lt;b&gt;evil&lt;/b&gt;)" in text


@pytest.mark.parametrize(("path", "named"), [
    (("machine",), "machine is missing"),
    (("config", "data", "n_train"), "config.data.n_train is missing"),
    (("config", "evaluate", "mc_samples"), "config.evaluate.mc_samples is missing"),
    (("models", "seed-cnn", "real", "n"), "models.seed-cnn.real.n is missing"),
    (("uncertainty", "models", "seed-bnn", "test", "real", "raw"), "uncertainty.models.seed-bnn.test.real.raw is"),
    (("calibration", "statistics"), "calibration.statistics is missing"),
    (("augmentation", "fractions", "0.25", "arms"), "augmentation.fractions.0.25.arms is missing"),
])
def test_a_missing_required_key_is_an_error_naming_it(run_dir, stored, quick_figures, path, named):
    summary = copy.deepcopy(stored)
    node = summary
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    with pytest.raises(ReportDataError, match=re.escape(named)):
        render_report(run_dir, summary)


def test_sections_of_steps_that_did_not_run_say_so(run_dir, stored, quick_figures):
    summary = copy.deepcopy(stored)
    summary.update(generation=None, augmentation=None, calibration=None, generator_tuning=None)
    summary["steps"]["generate"] = "not run"
    context = build_context(run_dir, summary)
    assert context.generation is None and context.augmentation is None
    text = render_report(run_dir, summary)
    for note in ("The conditional VAE was not trained or judged in this run.",
                 "The augmentation experiment did not run.", "The calibration step has not finished.",
                 "This run is not finished: steps generate have not completed", "Steps not finished: generate."):
        assert note in text, note
    assert "Before judging" not in text


def test_figures_are_found_by_their_exact_names(run_dir, quick_figures):
    """A PNG evaluation does not write is shown as 'other' under its own name, never guessed into a kind."""
    _png(run_dir / "eval" / "seed-cnn" / "simulated" / "roc_zoom.png", shade=10)
    context = build_context(run_dir, json.loads((run_dir / "summary.json").read_text()))
    roc = next(d for d in context.classifiers.details if d.title.startswith("Per-model ROC"))
    assert len(roc.figures) == sum(len(v) for v in json.loads((run_dir / "summary.json").read_text())["models"]
                                   .values())
    assert [f.caption for f in context.uncertainty.others.figures][0] == "seed-cnn, simulated HiTS test set: Roc zoom."
    (run_dir / "eval" / "seed-cnn" / "simulated" / "roc.png").write_text("not a png")
    with pytest.raises(ReportDataError, match=r"seed-cnn/simulated/roc.png: not a PNG"):
        build_context(run_dir, json.loads((run_dir / "summary.json").read_text()))


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


def test_stored_summary_reads_as_a_run_summary_and_a_missing_key_is_named(tmp_path):
    from hits_stamps.errors import HitsStampsError
    from hits_stamps.results import RunSummary

    stored = json.loads(SUMMARY.read_text())
    assert RunSummary.from_json(stored).to_json() == stored
    broken = {k: v for k, v in stored.items() if k != "uncertainty"}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(HitsStampsError, match=r"summary\.json.*uncertainty"):
        RunSummary.read(path)
