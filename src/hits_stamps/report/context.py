"""The report's typed context: everything the template shows, built from summary.json in one function.

`build_context(out, summary)` is the only place that reads the run: summary.json's records, the data
files (for the data section's table and figures), the evaluation's predictions.csv and the PNG
figures the steps wrote. The template (templates/report.html.j2) only lays the context out.

Keys the pipeline always writes are required: a missing one raises `ReportDataError` naming it
(`summary.json: models.seed-cnn.real.n is missing`), so a renamed key fails loudly instead of
dropping a table. Parts of a run that may legitimately be absent (a step not finished, no real
pixels, no Bayesian network) are `None` or empty in the context types below, and the template says
so in the page. Figures are found by the exact file names the steps write (`EVAL_FIGURES`,
`GENERATION_FIGURES`), never by guessing a kind from a name.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup, escape

from hits_stamps.errors import HitsStampsError
from hits_stamps.results import RUN_SUMMARY_KEYS
from hits_stamps.runsets import PROVENANCE, TEST_SET_TITLES
from hits_stamps.tasks import Task

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: Leaderboard columns: (metrics.json key, header, higher is better). A column is shown when some model
#: has the key (older summaries lack the newer ones); its 95% interval (metrics["ci95"][key]) is shown
#: beside the value when present.
LEADERBOARD = (
    ("accuracy", "accuracy", True),
    ("recall", "real recall", True),
    ("recall_bogus", "bogus recall", True),
    ("f1", "F1", True),
    ("roc_auc", "ROC AUC", True),
    ("fnr_at_val_threshold", "FNR at FPR 1% (validation threshold; achieved test FPR)", False),
    ("fnr_at_fpr_1pct", "FNR at FPR 1%, tuned on this set (optimistic)", False),
    ("ece", "ECE", False),
    ("nll", "NLL", False),
    ("accuracy_at_10pct_referral", "acc. at 10% referral", True),
)

#: The figures evaluation writes into eval/<model>/<test set>/: (kind, file name), in display order
#: (hits_stamps.evaluation.evaluate, .calibration and .bayesian name these files).
EVAL_FIGURES = (
    ("curves", "training_curves.png"),
    ("roc", "roc.png"),
    ("confusion", "confusion_matrix.png"),
    ("misclassified", "misclassified.png"),
    ("completeness", "completeness_purity.png"),
    ("fig3", "mc_stamps.png"),
    ("fig4", "mc_sample_predictions.png"),
    ("fig5", "mc_mean_std.png"),
    ("reliability", "reliability.png"),
    ("referral", "referral.png"),
)

FIGURE_CAPTIONS = {
    "curves": "Training curves: accuracy and loss per epoch, training vs validation (the seed report's Figure 1).",
    "roc": "ROC curve.",
    "confusion": "Confusion matrix at threshold 0.5.",
    "misclassified": "Misclassified test stamps (all four channels).",
    "completeness": "Completeness (real stamps found) and purity (stamps called real that are real) per |SNR| bin, "
                    "at the validation FPR 1% threshold when there is one (else 0.5), with Wilson 95% intervals; "
                    "the open top bin is drawn at its median |SNR|.",
    "fig3": "Test stamps with the Monte-Carlo predictive mean and standard deviation per class "
            "(the seed report's Figure 3).",
    "fig4": "Per class: Monte-Carlo sample predictions of correct vs wrong stamps, with counts and rates "
            "(the seed report's Figure 4).",
    "fig5": "Per class: histograms of the predictive mean and standard deviation (the seed report's Figure 5).",
    "reliability": "Reliability diagram (confidence vs accuracy, 15 bins) with the expected calibration error.",
    "referral": "Accuracy on the stamps kept when the most uncertain fraction is referred to a human.",
}

#: The figures judging writes into generation/ (hits_stamps.generation.judge), in display order, with captions.
GENERATION_FIGURES = (
    ("gen_grid_real.png", "Class real: real test stamps (left) beside generated stamps (right), all four channels."),
    ("gen_grid_bogus.png", "Class bogus: real test stamps (left) beside generated stamps (right), all four channels."),
    ("gen_reconstructions.png", "Test stamps (left) and their reconstructions by the conditional VAE (right)."),
    ("gen_interpolation.png", "Latent interpolation from a real stamp (left) to a bogus one (right)."),
)
#: The augmentation experiment's figure (hits_stamps.generation.augment) and the calibration step's.
AUGMENTATION_FIGURE = "gen_augmentation.png"
CALIBRATION_FIGURE = "calibration.png"

JUDGE_KEYS = (
    ("agreement_real", "classifier agreement, generated real (goal >= 0.97)"),
    ("agreement_bogus", "classifier agreement, generated bogus (goal >= 0.97)"),
    ("frechet_real", "Fréchet distance, real class"),
    ("frechet_floor_real", "  floor: real vs real, real class"),
    ("frechet_bogus", "Fréchet distance, bogus class"),
    ("frechet_floor_bogus", "  floor: real vs real, bogus class"),
    ("tstr_accuracy", "TSTR accuracy (trained on generated, tested on real)"),
    ("trtr_accuracy", "TRTR accuracy (trained on real, tested on real)"),
    ("tstr_over_trtr", "TSTR / TRTR (goal >= 0.97)"),
)

PHYSICAL_KEYS = {
    "diff_corr": "r(difference, science - template)",
    "diff_resid": "rms(difference - (science - template)) / rms(difference)",
    "snr_corr": "r(SNR, difference)",
    "snr_noise_logratio": "|ln(noise implied by SNR / border noise)|",
}

#: The data section's sets: (file stem under data/, label in the report).
DATA_SETS = (("user_train", "your training file"), ("user_val", "your validation"), ("user_test", "your test file"),
             ("train", "simulated train"), ("val", "simulated val"), ("test", "simulated test"),
             ("inject", "injected (training objects)"), ("real_train", "real candidates (training objects)"),
             ("real_val", "real candidates (validation objects)"), ("real_test", "real candidates (test objects)"),
             ("variables_val", "variable stars (validation objects)"),
             ("variables_test", "variable stars (test objects)"))


class ReportDataError(HitsStampsError):
    """summary.json (or a file it points to) lacks something the report needs."""


# ---------------------------------------------------------------------------------------------
# the context types


@dataclass(frozen=True)
class Figure:
    """One embedded PNG with its caption (plain text; the template escapes it)."""

    png: bytes
    caption: str
    alt: str


@dataclass(frozen=True)
class Cell:
    """One table cell: plain text (escaped by the template) or `Markup` built here with escaped parts."""

    text: str
    cls: str = ""


@dataclass(frozen=True)
class Table:
    headers: tuple[Cell, ...]
    rows: tuple[tuple[Cell, ...], ...]


@dataclass(frozen=True)
class Details:
    """A collapsed block: a summary line and figures."""

    title: str
    figures: tuple[Figure, ...]


@dataclass(frozen=True)
class Header:
    models: tuple[str, ...]
    training_words: str
    run_dir: str
    unfinished_steps: tuple[str, ...]


@dataclass(frozen=True)
class Card:
    value: str
    label: str


@dataclass(frozen=True)
class SimulatedData:
    """The simulated sets and the object split of the real ones (config.data)."""

    mix: tuple[tuple[str, str], ...]  # (ingredient, where it comes from)
    n_train: int
    n_val: int
    n_test: int
    seed: int
    real_fraction: float
    real_split: tuple[float, ...]


@dataclass(frozen=True)
class CalibrationPart:
    """The simulator-calibration step: `state` is "missing" (not finished), "unavailable" or "done"."""

    state: str
    reason: str = ""
    table: Table | None = None
    detected: tuple[float | None, float | None] | None = None  # (real, simulated) fraction, when recorded
    mag_window: tuple[float, float] | None = None
    figures: tuple[Figure, ...] = ()


@dataclass(frozen=True)
class DataSection:
    user_files: tuple[str, str] | None  # (training file, validation file) when the user's data replaced the mix
    simulated: SimulatedData
    real_unavailable: str | None  # the reason, when the real-pixel sets are missing
    sets: Table | None
    real_sources: tuple[str, str | None] | None  # (sequences, variables) files of the real-pixel stamps
    examples: Figure | None
    narrow_examples: tuple[Figure, ...]
    balance: Figure | None
    simulation_missing: bool
    calibration: CalibrationPart


@dataclass(frozen=True)
class Leaderboard:
    title: str
    table: Table | None  # None: no classifier was evaluated on this set
    bootstrap: tuple[str, str, str, str] | None = None  # (level %, method, resamples, objects)
    threshold: tuple[str, str, str | None] | None = None  # (validation stamps, objects, data file)


@dataclass(frozen=True)
class KindTable:
    title: str
    table: Table


@dataclass(frozen=True)
class ClassifierSection:
    training_words: str
    mc_samples: int
    leaderboards: tuple[Leaderboard, ...]
    curves: Figure | None
    per_model_curves: tuple[Figure, ...]
    roc: tuple[Figure, ...]
    details: tuple[Details, ...]
    per_kind: tuple[KindTable, ...]


@dataclass(frozen=True)
class CalibratedUncertainty:
    """The uncertainty step: each classifier raw and calibrated on the validation objects."""

    validation_sets: tuple[str, ...]
    n: int | None
    objects: int | None
    tables: tuple[KindTable, ...]
    reliability: Figure | None
    referral: Figure | None


@dataclass(frozen=True)
class MonteCarloTable:
    table: Table
    mc_samples: Any
    std: tuple[Any, Any] | None  # (bogus, real) mean predictive std


@dataclass(frozen=True)
class BayesModel:
    name: str
    mc: MonteCarloTable | None
    figures: tuple[Figure, ...]


@dataclass(frozen=True)
class UncertaintySection:
    mc_samples: int
    max_bayesian: int | None
    calibrated: CalibratedUncertainty | None
    bayes: tuple[BayesModel, ...]
    overlays: tuple[Figure, ...]
    details: tuple[Details, ...]
    others: Details | None


@dataclass(frozen=True)
class JudgeDescription:
    """Who judged the generated stamps: the run's own classifier, or one trained for judging."""

    run_classifier: str | None
    model: str | None
    n_reference: int
    epochs: Any


@dataclass(frozen=True)
class Tuning:
    classifier: str
    n_per_condition: str
    table: Table


@dataclass(frozen=True)
class GenerationSection:
    judge: JudgeDescription
    tuning: Tuning | None
    numbers: Table | None
    physical: Table | None
    peaks: Table | None
    figures: tuple[Figure, ...]
    rest: Table | None


@dataclass(frozen=True)
class AugmentationSection:
    classifier: str
    epochs: Any
    generated_per_real: Any
    retrain_cvae: bool
    table: Table | None
    figures: tuple[Figure, ...]


@dataclass(frozen=True)
class StepTimes:
    total: float
    cpu_total: float | None
    budget: float | None
    exceeded: bool
    cores: Any
    table: Table


@dataclass(frozen=True)
class Footer:
    version: str
    seed: int
    data_seed: int
    machine: Table | None
    times: StepTimes | None
    config_text: str
    unfinished_steps: tuple[str, ...]
    written: str


@dataclass(frozen=True)
class ReportContext:
    header: Header
    cards: tuple[Card, ...]
    data: DataSection
    classifiers: ClassifierSection
    uncertainty: UncertaintySection
    generation: GenerationSection | None  # None: the generator was not trained or judged
    augmentation: AugmentationSection | None  # None: the augmentation experiment did not run
    footer: Footer
    toc: tuple[tuple[str, str], ...] = field(default=(
        ("data", "Data"), ("classifiers", "Classifiers"), ("uncertainty", "Uncertainty"),
        ("generation", "Generation"), ("augmentation", "Augmentation"), ("reproducibility", "Reproducibility")))


# ---------------------------------------------------------------------------------------------
# formatting


def fmt(v: Any, digits: int = 4) -> str:
    """Numbers for tables: ints with separators, floats to `digits` significant digits; text as is."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}" if abs(v) >= 1 else f"{v:.{digits}f}".rstrip("0").rstrip(".") or "0"
    return str(v)


def fmt_ci(v: Any, ci: Any, digits: int = 3) -> str:
    """A value with its interval, "0.962 [0.948, 0.974]" (the interval muted); the value alone without one."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return fmt(v)
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci)):
        return fmt(v)
    return Markup('{} <span class="muted">[{}, {}]</span>').format(
        f"{v:.{digits}f}", f"{ci[0]:.{digits}f}", f"{ci[1]:.{digits}f}")


def _join(*parts: str) -> str:
    """Concatenate plain text and Markup, escaping the plain parts."""
    return Markup("").join(escape(p) for p in parts)


def _muted(text: str) -> str:
    return Markup('<span class="small muted">{}</span>').format(text)


def make_table(headers: Iterable[str | tuple[str, str]], rows: Iterable[Iterable[str | tuple[str, str]]],
               left: int = 1) -> Table:
    """The first `left` columns left-aligned (class "l"), the others right-aligned (numbers); a header or
    cell given as (text, css class) gets that class too."""
    hs = []
    for i, h in enumerate(headers):
        hs.append(Cell(*h) if isinstance(h, tuple) else Cell(h, "l" if i < left else ""))
    body = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            cls = "l" if i < left else ""
            if isinstance(c, tuple):
                c, extra = c
                cls = f"{cls} {extra}".strip()
            cells.append(Cell(c, cls))
        body.append(tuple(cells))
    return Table(tuple(hs), tuple(body))


def kv_table(d: Mapping[str, Any], skip: Iterable[str] = ()) -> Table | None:
    """Scalar entries of a dict as a two-column table (nested dicts flattened with dots); None when empty."""
    rows = []
    skip = set(skip)

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k in skip:
                    continue
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(obj, (int, float, str, bool)) or obj is None:
            rows.append((prefix, fmt(obj)))
        elif isinstance(obj, list) and len(obj) <= 8 and all(isinstance(x, (int, float, str)) for x in obj):
            rows.append((prefix, ", ".join(fmt(x) for x in obj)))

    walk("", d)
    return make_table(["quantity", "value"], rows) if rows else None


def _maybe_float(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) else None


def _signed(v: Any) -> str:
    return f"{v:+.4f}" if isinstance(v, (int, float)) else "–"


# ---------------------------------------------------------------------------------------------
# reading the run


def need(d: Any, key: str, where: str) -> Any:
    """d[key]; a missing key (or a `d` that is not a mapping) is a `ReportDataError` naming `where.key`."""
    if not isinstance(d, Mapping):
        raise ReportDataError(f"summary.json: {where} must be an object; found {type(d).__name__}")
    if key not in d:
        raise ReportDataError(f"summary.json: {where + '.' if where else ''}{key} is missing; the report needs it "
                              "(rebuild summary.json with `hits-stamps report DIR`)")
    return d[key]


def load_figure(path: Path, caption: str, alt: str | None = None) -> Figure:
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ReportDataError(f"{path}: not a PNG file (the report embeds PNG figures only)")
    return Figure(data, caption, alt or caption)


def png_figure(data: bytes | None, caption: str, alt: str | None = None) -> Figure | None:
    """A figure the report drew itself (bytes), or None when there was nothing to draw."""
    if data is None:
        return None
    if not data.startswith(PNG_SIGNATURE):
        raise ReportDataError("report images must be PNG")
    return Figure(data, caption, alt or caption)


def eval_figures(folder: Path, kind: str) -> list[Path]:
    """The evaluation figure of `kind` in eval/<model>/<test set>/, when it was written."""
    name = dict(EVAL_FIGURES)[kind]
    p = folder / name
    return [p] if p.is_file() else []


def other_eval_figures(folder: Path) -> list[Path]:
    """PNGs in an evaluation folder that evaluation does not name (shown under "other", titled by file name)."""
    known = {name for _, name in EVAL_FIGURES}
    return sorted(p for p in folder.glob("*.png") if p.name not in known) if folder.is_dir() else []


def _title_from_name(p: Path) -> str:
    return re.sub(r"[_-]+", " ", p.stem).strip().capitalize()


def _read_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, p_real) of the labelled rows of an evaluation's predictions.csv, or None without the file."""
    if not path.exists():
        return None
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    for key in ("label", "p_real"):
        if key not in rows[0]:
            raise ReportDataError(f"{path}: column {key!r} is missing")
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["p_real"]) for r in rows])
    keep = y >= 0
    return y[keep], p[keep]


# ---------------------------------------------------------------------------------------------
# sections


def training_words(summary: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> str:
    """'trained on N stamps (simulated 12,000 + injected 8,000 + real 3,951)' from the training records."""
    info = next((t.get("training_data") for t in (summary.get("training") or {}).values()
                 if isinstance(t, dict) and t.get("training_data")), None)
    if not info:
        return f"trained on {fmt(need(data_cfg, 'n_train', 'config.data'))} simulated stamps"
    parts = " + ".join(f"{m} {fmt(n)}" for m, n in need(info, "parts", "training.*.training_data").items())
    return f"trained on {fmt(need(info, 'n', 'training.*.training_data'))} stamps ({parts})"


def _data_section(out: Path, summary: Mapping[str, Any], seed: int) -> DataSection:
    from hits_stamps import plotting as F
    from hits_stamps.io import read_stamps

    cfg = summary["config"]
    d = need(cfg, "data", "config")
    data = summary["data"] or {}
    real = data.get("build-real") or {}
    user = data.get("user-data") or {}
    training = summary["training"] or {}
    train_info = next(iter(training.values()), {}) if training else {}
    mix = list((train_info.get("training_data") or {}).get("mix", [])) or list(d.get("train_mix", []))
    simulated = SimulatedData(
        mix=tuple((m, PROVENANCE.get(m, m)) for m in mix),
        n_train=need(d, "n_train", "config.data"), n_val=need(d, "n_val", "config.data"),
        n_test=need(d, "n_test", "config.data"), seed=int(need(d, "seed", "config.data")),
        real_fraction=need(d, "real_fraction", "config.data"), real_split=tuple(d.get("real_split", [])))
    user_files = None
    if user:
        user_files = (str(user.get("train", {}).get("file", "")), str(user.get("val", {}).get("file", "")))
    real_unavailable = str(real.get("reason", "")) if real and not real.get("available", False) else None

    sets = {label: read_stamps(out / "data" / f"{stem}.npz") for stem, label in DATA_SETS
            if (out / "data" / f"{stem}.npz").exists()}
    table = real_sources = examples = balance = None
    narrow: list[Figure] = []
    if sets:
        rows = []
        for label, s in sets.items():
            bal = s.class_balance()
            kinds = ", ".join(f"{k} {v:,}" for k, v in s.kind_counts().items())
            objects = fmt(s.n_groups()) if s.groups is not None else "-"
            rows.append((label, fmt(len(s)), objects, fmt(bal["real"]), fmt(bal["bogus"]), fmt(bal["unknown"]),
                         (Markup('<span class="small">{}</span>').format(kinds), "l")))
        table = make_table(["set", "stamps", "objects", "real", "bogus", "unlabelled", ("kinds", "l")], rows)
        if real.get("available") and real.get("sequences"):
            real_sources = (str(real["sequences"]), str(real["variables"]) if real.get("variables") else None)
        if "simulated test" in sets:
            examples = png_figure(F.stamp_examples_png(sets["simulated test"], "simulated (test set)", seed),
                                  "Example simulated stamps, one of every kind (chosen near the kind's median "
                                  "SNR); rows are the four channels; difference and SNR in a diverging map.",
                                  "example simulated stamps")
        for label, caption in (("injected (training objects)", "Example injected and painted stamps on real "
                                "HiTS 2015 epochs, one of every kind."),
                               ("real candidates (test objects)", "Example real-pixel HiTS 2015 difference stamps "
                                "of the test objects, every kind.")):
            if label in sets:
                narrow.append(png_figure(F.stamp_examples_png(sets[label], label, seed), caption,
                                         f"example stamps: {label}"))
        balance = png_figure(F.class_balance_png(sets), "Class balance and kinds of every set.", "class balance")
    return DataSection(
        user_files=user_files, simulated=simulated, real_unavailable=real_unavailable, sets=table,
        real_sources=real_sources, examples=examples, narrow_examples=tuple(narrow), balance=balance,
        simulation_missing=not sets and data.get("simulate") is None,
        calibration=_calibration_part(out, summary["calibration"]))


def _calibration_part(out: Path, cal: Any) -> CalibrationPart:
    if not cal:
        return CalibrationPart("missing")
    if not cal.get("available", True):
        return CalibrationPart("unavailable", reason=str(cal.get("reason", "")))
    rows = []
    for i, r in enumerate(need(cal, "statistics", "calibration")):
        where = f"calibration.statistics[{i}]"
        lo_r, hi_r = need(r, "real_p16_p84", where)
        lo_s, hi_s = need(r, "sim_p16_p84", where)
        d = need(r, "ks_d", where)
        rows.append((r.get("description", need(r, "statistic", where)), fmt(need(r, "real_median", where)),
                     f"{fmt(lo_r)} – {fmt(hi_r)}", fmt(need(r, "sim_median", where)), f"{fmt(lo_s)} – {fmt(hi_s)}",
                     (fmt(d), "best" if isinstance(d, float) and d <= 0.1 else ""), fmt(r.get("ks_p")),
                     f"{fmt(r.get('n_real'))} / {fmt(r.get('n_sim'))}"))
    table = make_table(["statistic", "real median", "real 16–84%", "simulated median", "simulated 16–84%", "KS D",
                        "p-value", "n real / simulated"], rows)
    det = cal.get("detected_fraction") or None
    win = cal.get("mag_window")
    folder = out / "calibration"
    figures = tuple(load_figure(p, "Each statistic's distribution, real HiTS 2015 star cutouts against simulated "
                                   "ones, with the KS distance in the panel title.")
                    for p in [folder / CALIBRATION_FIGURE] if p.is_file())
    return CalibrationPart("done", table=table,
                           detected=(det.get("real"), det.get("simulated")) if det else None,
                           mag_window=(win[0], win[1]) if win else None, figures=figures)


def _leaderboard(summary: Mapping[str, Any], test_set: str) -> Leaderboard:
    """One test set's leaderboard: every classifier evaluated on it, the best value of a column in bold."""
    models = summary.get("models") or {}
    training = summary.get("training") or {}
    title = TEST_SET_TITLES[test_set]
    names = [n for n in models if test_set in models[n]]
    if not names:
        return Leaderboard(title, None)
    cols = [c for c in LEADERBOARD if any(isinstance(models[n][test_set].get(c[0]), (int, float)) for n in names)]
    with_objects = any(isinstance(models[n][test_set].get("n_objects"), int) for n in names)
    best = {}
    for key, _, higher in cols:
        vals = [models[n][test_set].get(key) for n in names]
        vals = [v for v in vals if isinstance(v, (int, float)) and not math.isnan(v)]
        if vals:
            best[key] = max(vals) if higher else min(vals)
    cpu_s = summary.get("cpu_s") or {}
    rows = []
    for n in names:
        m = models[n][test_set]
        t = training.get(n, {})
        row: list[Any] = [Markup("<b>{}</b>").format(n), fmt(t.get("n_parameters")), fmt(t.get("epochs")),
                          fmt(_maybe_float(t.get("train_seconds")), 3), fmt(_maybe_float(cpu_s.get(f"train-{n}")), 3),
                          fmt(need(m, "n", f"models.{n}.{test_set}"))]
        if with_objects:
            row.append(fmt(m.get("n_objects")))
        ci95 = m.get("ci95") or {}
        for key, _, _ in cols:
            v = m.get(key)
            cell = fmt_ci(v, ci95.get(key))
            if key == "fnr_at_val_threshold" and isinstance(m.get("fpr_at_val_threshold"), (int, float)):
                cell = _join(cell, " ", _muted(f"(FPR {fmt(m['fpr_at_val_threshold'])})"))
            if key in best and isinstance(v, (int, float)) and v == best[key] and len(names) > 1:
                cell = (cell, "best")
            row.append(cell)
        rows.append(row)
    headers = (["model", "parameters", "epochs", "training s", "training CPU s", "test stamps"]
               + (["objects"] if with_objects else []) + [h for _, h, _ in cols])
    boot = next((models[n][test_set].get("bootstrap") for n in names if models[n][test_set].get("bootstrap")), None)
    bootstrap = None
    if boot:
        bootstrap = (fmt(100 * boot.get("level", 0.95), 3), str(boot.get("method", "bootstrap")),
                     fmt(boot.get("n_resamples")), fmt(boot.get("n_objects")))
    sources = [s for s in (models[n][test_set].get("threshold_source") for n in names) if isinstance(s, dict)]
    threshold = None
    if sources:
        src = sources[0]
        threshold = (fmt(src.get("n")), fmt(src.get("n_objects")), str(src["data"]) if src.get("data") else None)
    return Leaderboard(title, make_table(headers, rows), bootstrap, threshold)


def _per_kind_tables(models: Mapping[str, Any], test_sets: Iterable[str]) -> tuple[KindTable, ...]:
    """One table per test set: every model's rate per kind with counts, objects and Wilson intervals."""
    titles = TEST_SET_TITLES
    out = []
    for t in test_sets:
        rows = []
        for name in models:
            for kind, r in sorted(((models[name].get(t) or {}).get("by_kind") or {}).items()):
                # the rate that matters for the kind: missed real (FNR), passed bogus (FPR), or accuracy if mixed
                key = {"real": "fnr", "bogus": "fpr"}.get(r.get("label"), "accuracy")
                rate = {"fnr": "FNR (real missed)", "fpr": "FPR (bogus called real)"}.get(key, "accuracy")
                rows.append((name, kind, str(r.get("label", "")), fmt(r.get("n")), fmt(r.get("n_objects")),
                             rate, fmt_ci(r.get(key), r.get(key + "_ci95")),
                             fmt_ci(r.get("accuracy"), r.get("accuracy_ci95"))))
        if rows:
            out.append(KindTable(f"Per-kind rates, {titles[t]}", make_table(
                ["model", "kind", "label", "stamps", "objects", "rate", "value [95%]", "accuracy [95%]"], rows,
                left=3)))
    return tuple(out)


def _per_model_details(out: Path, models: Iterable[str], test_sets: list[str],
                       kinds: Iterable[tuple[str, str]]) -> tuple[Details, ...]:
    """One collapsed grid per (figure kind, title) of every model's evaluation figures of that kind."""
    titles = TEST_SET_TITLES
    blocks = []
    for kind, title in kinds:
        figs = tuple(load_figure(p, f"{name}, {titles[t]}: {FIGURE_CAPTIONS[kind]}")
                     for t in test_sets for name in models for p in eval_figures(out / "eval" / name / t, kind))
        if figs:
            blocks.append(Details(title, figs))
    return tuple(blocks)


def _test_sets(models: Mapping[str, Any]) -> list[str]:
    return [t for t in TEST_SET_TITLES if any(t in models[m] for m in models)]


def _classifier_section(out: Path, summary: Mapping[str, Any]) -> ClassifierSection:
    from hits_stamps import plotting as F

    titles = TEST_SET_TITLES
    cfg = summary["config"]
    models = summary["models"] or {}
    test_sets = _test_sets(models) or ["simulated"]
    histories = {}
    for name in models:
        h = _read_json(out / "models" / name / "history.json")
        if h:
            histories[name] = h
    curves = png_figure(F.training_curves_png(histories),
                        "All classifiers: accuracy and validation loss per epoch (simulated validation set).",
                        "training curves of all classifiers")
    per_model_curves = tuple(load_figure(p, f"{name}: {FIGURE_CAPTIONS['curves']}") for name in models
                             for p in eval_figures(out / "eval" / name / "simulated", "curves"))
    roc = []
    for t in test_sets:
        curves_t = {}
        for name in models:
            pred = read_predictions(out / "eval" / name / t / "predictions.csv")
            if pred is not None:
                curves_t[name] = pred
        fig = png_figure(F.roc_overlay_png(curves_t, f"ROC, {titles[t]}"),
                         f"ROC curves of every classifier on the {titles[t]} (logarithmic false "
                         "positive rate; dashed: FPR 1%). From the evaluation's predictions.csv.",
                         f"ROC curves, {titles[t]}")
        if fig is not None:
            roc.append(fig)
    details = _per_model_details(out, models, test_sets, (
        ("roc", "Per-model ROC curves with the FPR 1% operating point"),
        ("completeness", "Completeness and purity against SNR"),
        ("confusion", "Confusion matrices"), ("misclassified", "Misclassified stamps")))
    return ClassifierSection(
        training_words=training_words(summary, cfg["data"]),
        mc_samples=need(need(cfg, "evaluate", "config"), "mc_samples", "config.evaluate"),
        leaderboards=tuple(_leaderboard(summary, t) for t in test_sets), curves=curves,
        per_model_curves=per_model_curves, roc=tuple(roc), details=details,
        per_kind=_per_kind_tables(models, test_sets))


def _calibrated_uncertainty(summary: Mapping[str, Any]) -> CalibratedUncertainty | None:
    from hits_stamps import plotting as F

    unc = summary["uncertainty"] or {}
    models = unc.get("models") or {}
    if not models:
        return None
    val = unc.get("validation") or {}
    tables = []
    for t, title in TEST_SET_TITLES.items():
        rows = []
        for name, rec in models.items():
            m = (need(rec, "test", f"uncertainty.models.{name}") or {}).get(t)
            if not m:
                continue
            where = f"uncertainty.models.{name}.test.{t}"
            r, c = need(m, "raw", where), need(m, "calibrated", where)

            def value(d, key, w):
                return need(need(d, key, w), "value", f"{w}.{key}")

            def cell(d, key, w=where + ".calibrated"):
                return fmt_ci(value(d, key, w), need(d[key], "ci95", f"{w}.{key}"), 4)

            rows.append((name, str(rec.get("describe", rec.get("method"))),
                         fmt(need(c, "n", where + ".calibrated")), fmt(need(c, "n_objects", where + ".calibrated")),
                         fmt(need(c, "n_errors", where + ".calibrated")),
                         _join(fmt(value(r, "ece", where + ".raw")), Markup(" &rarr; "), cell(c, "ece")),
                         _join(fmt(value(r, "nll", where + ".raw")), Markup(" &rarr; "), cell(c, "nll")),
                         cell(c, "brier"), cell(c, "auroc_uncertainty"), cell(c, "error_ratio_at_10pct")))
        if rows:
            tables.append(KindTable(title, make_table(
                ["model", ("calibration (chosen on validation)", "l"), "stamps", "objects", "errors", "ECE", "NLL",
                 "Brier", "AUROC (uncertainty)", "error ratio at 10% referred"], rows, left=2)))
    real = {n: (r.get("test") or {}).get("real") for n, r in models.items()}
    real = {n: m for n, m in real.items() if m}
    reliability = referral = None
    if real:
        where = "uncertainty.models.{}.test.real.{}"
        rel = {**{f"{n} raw": need(m["raw"], "reliability", where.format(n, "raw")) for n, m in real.items()},
               **{f"{n} calibrated": need(m["calibrated"], "reliability", where.format(n, "calibrated"))
                  for n, m in real.items()}}
        reliability = png_figure(F.reliability_overlay_png(rel, "real-pixel test objects: reliability"),
                                 "Reliability on the real-pixel test objects, raw and calibrated.")
        ref = {n: need(m["calibrated"], "referral", where.format(n, "calibrated"))
               for n, m in real.items()}
        referral = png_figure(F.referral_overlay_png(ref, "real-pixel test objects: referral"),
                              "Accuracy of the kept stamps against the fraction referred (calibrated).")
    return CalibratedUncertainty(tuple(val.get("sets") or []), val.get("n"), val.get("objects"), tuple(tables),
                                 reliability, referral)


def _mc_table(m: Mapping[str, Any]) -> MonteCarloTable | None:
    """Per true class: Monte-Carlo sample predictions that are right and wrong (the seed's Figure 4 numbers)."""
    acc = m.get("mc_sample_accuracy")
    if not isinstance(acc, dict):
        return None
    rows = [(cls, fmt(v.get("n_stamps")), fmt(v.get("n_sample_predictions")), fmt(v.get("correct")),
             fmt(v.get("wrong")), fmt(v.get("rate"))) for cls, v in acc.items() if isinstance(v, dict)]
    std = m.get("mean_predictive_std") or None
    return MonteCarloTable(
        make_table(["true class", "stamps", "sample predictions", "correct", "wrong", "rate"], rows),
        m.get("mc_samples"), (std.get("bogus"), std.get("real")) if std else None)


def _uncertainty_section(out: Path, summary: Mapping[str, Any]) -> UncertaintySection:
    from hits_stamps import plotting as F

    titles = TEST_SET_TITLES
    models = summary["models"] or {}
    training = summary["training"] or {}
    mc = need(summary["config"], "evaluate", "config")
    bayes_names = [n for n in models if training.get(n, {}).get("task") == Task.BAYESIAN_CLASSIFIER]
    bayes = []
    for name in bayes_names:
        folder = out / "eval" / name / "simulated"
        figs = tuple(load_figure(p, f"{name}: {FIGURE_CAPTIONS[kind]}")
                     for kind in ("fig3", "fig4", "fig5", "reliability") for p in eval_figures(folder, kind))
        bayes.append(BayesModel(name, _mc_table(models[name].get("simulated", {})), figs))
    test_sets = _test_sets(models)
    overlays = []
    for t in test_sets:
        rel = {n: models[n][t].get("reliability") for n in models if t in models[n]}
        overlays.append(png_figure(F.reliability_overlay_png(rel, f"reliability, {titles[t]}"),
                                   f"Reliability of every classifier on the {titles[t]} (15 bins; "
                                   "empty bins left out).", f"reliability, {titles[t]}"))
        ref = {n: models[n][t].get("referral_curve") for n in models if t in models[n]}
        overlays.append(png_figure(F.referral_overlay_png(ref, f"referral, {titles[t]}"),
                                   f"Accuracy vs referral on the {titles[t]}; dashed: 10% referred "
                                   "(the leaderboard's 'acc. at 10% referral').", f"referral, {titles[t]}"))
    details = _per_model_details(out, models, test_sets, (
        ("reliability", "Per-model reliability diagrams"), ("referral", "Per-model referral curves")))
    others = [load_figure(p, f"{name}, {titles[t]}: {_title_from_name(p)}.")
              for t in test_sets for name in models for p in other_eval_figures(out / "eval" / name / t)]
    others += [load_figure(p, f"{name}, {titles[t]}: {FIGURE_CAPTIONS[k]}")
               for t in ("user", "real") for name in bayes_names for k in ("fig3", "fig4", "fig5")
               for p in eval_figures(out / "eval" / name / t, k)]
    return UncertaintySection(
        mc_samples=need(mc, "mc_samples", "config.evaluate"), max_bayesian=mc.get("max_bayesian"),
        calibrated=_calibrated_uncertainty(summary), bayes=tuple(bayes),
        overlays=tuple(f for f in overlays if f is not None), details=details,
        others=Details("Other evaluation figures", tuple(others)) if others else None)


def _tuning(tuning: Any) -> Tuning | None:
    """The per-condition pixel temperatures chosen before judging (generation.tune)."""
    if not tuning:
        return None
    conditions = need(tuning, "conditions", "generator_tuning")
    temps = [float(t) for t in need(tuning, "temperatures", "generator_tuning")]
    rows = []
    for name, row in conditions.items():
        agreement = {float(t): a for t, a in need(row, "agreement", f"generator_tuning.conditions.{name}").items()}
        rows.append([name, str(row.get("label", "")), *(fmt(agreement.get(t)) for t in temps),
                     fmt(need(row, "chosen", f"generator_tuning.conditions.{name}"))])
    return Tuning(Path(str(need(tuning, "classifier", "generator_tuning"))).name,
                  fmt(need(tuning, "n_per_condition", "generator_tuning")),
                  make_table(["condition", "class", *(f"T = {t:g}" for t in temps), "chosen"], rows))


def _generation_section(out: Path, summary: Mapping[str, Any]) -> GenerationSection | None:
    gen = summary["generation"]
    if not gen:
        return None
    cfg = summary["config"]
    g = need(cfg, "generation", "config")
    j = gen.get("judge") if isinstance(gen.get("judge"), dict) else {}
    judge = JudgeDescription(run_classifier=g.get("judge") or None, model=j.get("model", g.get("judge_model")),
                             n_reference=g.get("reference_n") or cfg["data"]["n_train"], epochs=g.get("judge_epochs"))
    indent = Markup("&nbsp;&nbsp;&nbsp;")
    # a label that starts with two spaces is an indented row (a floor under its distance)
    rows: list[tuple[str, str]] = [(_join(indent, label[2:]) if label.startswith("  ") else label, fmt(gen.get(key)))
                                   for key, label in JUDGE_KEYS if key in gen]
    mem = gen.get("memorisation")
    if isinstance(mem, dict):
        rows.append(("memorisation: median nearest-training distance, generated / held-out real",
                     fmt(mem.get("ratio"))))
        rows.append(("memorisation: generated closer than 99% of held-out real stamps",
                     fmt(mem.get("fraction_generated_below_held_out_p1"))))
        for cls, per in (mem.get("per_class") or {}).items():
            if isinstance(per, dict):
                rows.append((_join(indent, f"{cls} class against its own training stamps: distance ratio; "
                                   "closer than 99% of its held-out stamps"),
                             f"{fmt(per.get('ratio'))}; {fmt(per.get('fraction_generated_below_held_out_p1'))}"))
    physical = None
    phys = gen.get("physical")
    if isinstance(phys, dict) and all(isinstance(v, dict) for v in phys.values()):
        prow = []
        for key, label in PHYSICAL_KEYS.items():
            cells = [label]
            for cls in phys:
                for which in ("generated", "real"):
                    cells.append(fmt((phys[cls].get(which) or {}).get(key)))
            prow.append(cells)
        physical = make_table(["physical consistency (median over stamps)"]
                              + [f"{c}: {w}" for c in phys for w in ("generated", "real")], prow)
    peaks = None
    pk = gen.get("peak_snr")
    if isinstance(pk, dict) and any(isinstance(v, dict) for v in pk.values()):
        srow = []
        for cls, v in pk.items():
            if isinstance(v, dict):
                w = f"generation.peak_snr.{cls}"
                gq, rq = need(v, "generated", w), need(v, "real", w)
                srow.append([cls, fmt(gq[2]), fmt(rq[2]), fmt(gq[-1]), fmt(rq[-1]), fmt(need(v, "ks", w))])
        peaks = make_table(["|SNR| peak (central 5x5)", "median: generated", "real", "95%: generated", "real",
                            "Kolmogorov-Smirnov statistic"], srow)
    folder = out / "generation"
    known = {name for name, _ in GENERATION_FIGURES}
    figures = [load_figure(folder / name, caption) for name, caption in GENERATION_FIGURES if (folder / name).is_file()]
    if folder.is_dir():
        figures += [load_figure(p, _title_from_name(p) + ".") for p in sorted(folder.glob("*.png"))
                    if p.name not in known]
    rest = {k: v for k, v in gen.items() if k not in dict(JUDGE_KEYS) and k not in ("physical", "figures", "peak_snr")}
    return GenerationSection(judge, _tuning(summary["generator_tuning"]), make_table(["judging number", "value"], rows)
                             if rows else None, physical, peaks, tuple(figures), kv_table(rest) if rest else None)


def _augmentation_section(out: Path, summary: Mapping[str, Any]) -> AugmentationSection | None:
    aug = summary["augmentation"]
    if not aug:
        return None
    st = aug.get("settings", {})
    fractions = aug.get("fractions")
    if isinstance(fractions, dict):
        rows = []
        for f, row in fractions.items():
            for arm, m in need(row, "arms", f"augmentation.fractions.{f}").items():
                rows.append((f"{float(f):.0%}", arm, fmt(row.get("n_real")),
                             fmt(row.get("n_generated") if arm == "generated" else 0),
                             fmt(m.get("accuracy")), fmt(m.get("fnr_at_fpr_1pct")), fmt(m.get("train_seconds"), 3)))
            for ref in ("none", "dihedral"):
                d = row.get(f"generated_minus_{ref}")
                if isinstance(d, dict):
                    rows.append((f"{float(f):.0%}", Markup("<i>{}</i>").format(f"generated − {ref}"), "", "",
                                 _signed(d.get("accuracy")), _signed(d.get("fnr_at_fpr_1pct")), ""))
        table = make_table(["fraction", "arm", "real stamps", "generated stamps", "test accuracy",
                            "FNR at FPR 1%", "training s"], rows, left=2)
    else:
        table = kv_table(aug)
    p = out / "augmentation" / AUGMENTATION_FIGURE
    figures = (load_figure(p, "Test accuracy and FNR at FPR 1% per arm."),) if p.is_file() else ()
    return AugmentationSection(str(st.get("classifier_model", "rotinv-cnn")), st.get("epochs"),
                               st.get("generated_per_real"), bool(st.get("retrain_cvae")), table, figures)


def _footer(out: Path, summary: Mapping[str, Any]) -> Footer:
    cfg = summary["config"]
    mach = summary["machine"] or {}
    dur = summary["durations_s"] or {}
    total = dur.get("total")
    budget = cfg.get("time_budget_s")
    times = None
    if total is not None:
        cpu = summary["cpu_s"] or {}
        load = summary["load_avg_at_step_end"] or {}
        rows = [(k, f"{v:.1f}", f"{cpu[k]:.1f}" if k in cpu else "–",
                 ", ".join(f"{x:.1f}" for x in load[k]) if k in load else "–") for k, v in dur.items()]
        times = StepTimes(total, cpu.get("total"), budget, bool(budget) and total > budget, mach.get("cpu_count"),
                          make_table(["step", "wall s", "CPU s", "load average (1, 5, 15 min)"], rows))
    toml_path = out / "run_config.toml"
    text = toml_path.read_text() if toml_path.exists() else json.dumps(cfg, indent=2)
    return Footer(version=str(summary["package_version"]), seed=int(need(cfg, "seed", "config")),
                  data_seed=int(cfg["data"]["seed"]), machine=kv_table(mach), times=times, config_text=text,
                  unfinished_steps=_unfinished(summary),
                  written=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))


def _unfinished(summary: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(k for k, v in (summary["steps"] or {}).items() if v != "done")


def chosen_on_validation(summary: Mapping[str, Any]) -> str | None:
    """The classifier with the best validation accuracy at its last epoch (never a test-set choice)."""
    training = summary.get("training") or {}
    scored = [(t["final"]["val_accuracy"], n) for n, t in training.items() if n in (summary.get("models") or {})
              and isinstance((t.get("final") or {}).get("val_accuracy"), float)]
    return max(scored)[1] if scored else None


def _cards(summary: Mapping[str, Any]) -> tuple[Card, ...]:
    models = summary["models"] or {}
    cards = []
    chosen = chosen_on_validation(summary)
    if chosen is not None:
        for t, label in (("user", "your test set"), ("real", "real-pixel test objects"),
                         ("variables", "variable stars (test objects)"), ("simulated", "simulated test")):
            m = models[chosen].get(t) or {}
            if not isinstance(m.get("accuracy"), float):
                continue
            ci = (m.get("ci95") or {}).get("accuracy")
            interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            objects = m.get("n_objects")
            size = f"{fmt(m.get('n'))} stamps" + (f", {fmt(objects)} objects" if objects and objects != m.get("n")
                                                   else "")
            cards.append(Card(f"{m['accuracy']:.3f}{interval}", f"accuracy, {label} ({size})"))
        if cards:
            cards.insert(0, Card(chosen, "classifier chosen on the validation objects (best validation accuracy)"))
    gen = summary["generation"] or {}
    if isinstance(gen.get("agreement_real"), float) and isinstance(gen.get("agreement_bogus"), float):
        cards.append(Card(f"{gen['agreement_real']:.0%} / {gen['agreement_bogus']:.0%}",
                          "judge agreement on generated real / bogus"))
    total = (summary["durations_s"] or {}).get("total")
    if total is not None:
        cores = (summary["machine"] or {}).get("cpu_count", "?")
        cpu = (summary["cpu_s"] or {}).get("total")
        cards.append(Card(f"{total / 60:.1f} min", f"wall-clock step time on {cores} cores"
                          + (f" ({cpu / 60:.1f} CPU-min)" if isinstance(cpu, float) else "")))
    return tuple(cards)


def build_context(out: str | Path, summary: Mapping[str, Any]) -> ReportContext:
    """Everything the report shows, from a run directory and its summary.json content."""
    out = Path(out)
    for key in RUN_SUMMARY_KEYS:  # every summary.json has them (a value may be null where its step did not run)
        need(summary, key, "")
    cfg = summary["config"]
    d = need(cfg, "data", "config")
    header = Header(models=tuple(need(cfg, "models", "config")), training_words=training_words(summary, d),
                    run_dir=str(out.resolve()), unfinished_steps=_unfinished(summary))
    return ReportContext(
        header=header,
        cards=_cards(summary),
        data=_data_section(out, summary, int(need(cfg, "seed", "config"))),
        classifiers=_classifier_section(out, summary),
        uncertainty=_uncertainty_section(out, summary),
        generation=_generation_section(out, summary),
        augmentation=_augmentation_section(out, summary),
        footer=_footer(out, summary),
    )
