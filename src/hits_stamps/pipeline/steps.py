"""The steps of `hits-stamps run`, each a function `RunContext -> result dict`.

A step writes its outputs under the run directory (files atomically, directories by building
`NAME.partial` and renaming it), and returns a small JSON-ready dict that the runner stores in
`DIR/steps/<step>.json` together with its duration. The runner (`run.py`) decides what to skip.

The layout of a run directory is `hits_stamps.rundir` (`RunContext.layout`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from hits_stamps.errors import HitsStampsError
from hits_stamps.io import read_stamps
from hits_stamps.pipeline.config import RunConfig
from hits_stamps.results import EvaluationResult
from hits_stamps.rundir import RunDir
from hits_stamps.runsets import MIX_STEMS, TEST_SET_TITLES, TEST_SETS
from hits_stamps.stamps import StampSet


@dataclass
class RunContext:
    """What every step sees: the run directory, the config and how to report progress."""

    out: Path
    config: RunConfig
    device: str = "auto"
    progress: bool = True
    console: Console = field(default_factory=Console)
    _cache: dict[str, StampSet] = field(default_factory=dict)

    @property
    def layout(self) -> RunDir:
        """Where each file of this run lives."""
        return RunDir(self.out)

    def data_path(self, stem: str) -> Path:
        return self.layout.data_file(stem)

    def stamps(self, stem: str) -> StampSet:
        """A data file of this run (cached in memory for the rest of the run)."""
        if stem not in self._cache:
            path = self.data_path(stem)
            if not path.exists():
                raise HitsStampsError(f"{path}: missing; the step that writes it has not finished")
            self._cache[stem] = read_stamps(path)
        return self._cache[stem]

    def has(self, stem: str) -> bool:
        return self.data_path(stem).exists()

    def has_real(self) -> bool:
        return self.has("real_test")

    def mix(self) -> tuple[str, ...]:
        """The ingredients the classifiers train on (your file alone when `data.train` is set)."""
        if self.config.data.train:
            return ("user",)
        return tuple(m for m in self.config.data.train_mix if self.has(MIX_STEMS[m]))

    def classifier_training(self) -> StampSet:
        """The classifiers' training set: the ingredients of `mix()`, concatenated (cached)."""
        if "_classifier_train" not in self._cache:
            parts = [_core(self.stamps(MIX_STEMS[m])) for m in self.mix()]
            if not parts:
                raise HitsStampsError("no training data: data.train_mix names no set this run has")
            self._cache["_classifier_train"] = StampSet.concat(parts) if len(parts) > 1 else parts[0]
        return self._cache["_classifier_train"]

    def validation_stems(self) -> tuple[str, ...]:
        """Validation sets of the classifiers: yours; else the real validation objects; else simulated."""
        if self.config.data.train:
            return ("user_val",)
        real = tuple(s for s in ("real_val", "variables_val") if self.has(s))
        return real or ("val",)

    def classifier_validation(self) -> StampSet:
        """The validation sets of `validation_stems()`, concatenated (training curves, the FPR = 1% threshold)."""
        if "_classifier_val" not in self._cache:
            parts = [_core(_labelled(self.stamps(s))) for s in self.validation_stems()]
            self._cache["_classifier_val"] = StampSet.concat(parts) if len(parts) > 1 else parts[0]
        return self._cache["_classifier_val"]

    def model_dir(self, name: str) -> Path:
        return self.layout.model(name)

    def eval_dir(self, model: str, test_set: str) -> Path:
        return self.layout.eval(model, test_set)

    def status(self, message: str):
        """A spinner with `message` while a block runs (nothing when progress is off)."""
        return self.console.status(f"  {message}") if self.progress else contextlib.nullcontext()


@contextlib.contextmanager
def staged_dir(final: Path, keep_partial: bool = False, root: Path | None = None) -> Iterator[Path]:
    """Yield `final.partial`; when the block succeeds, it replaces `final` by a rename.

    A previous `.partial` is removed first unless `keep_partial` (training keeps it so that its
    checkpoint resumes an interrupted fit). On error the partial folder stays for inspection.
    Paths into the partial folder written in JSON files inside it (e.g. a metrics.json's
    `figures`) are rewritten to the final folder; with `root` (the run directory), every path
    inside `root` that such a JSON string starts with (or lists after ", ") becomes relative to it
    (`hits_stamps.rundir`: paths in a run's JSON are relative to the run directory).
    """
    partial = final.with_name(final.name + ".partial")
    if partial.exists() and not keep_partial:
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    yield partial
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    old, new = json.dumps(str(partial))[1:-1], json.dumps(str(final))[1:-1]
    prefixes = [] if root is None else sorted({json.dumps(str(p))[1:-1] + "/" for p in (root, root.resolve())},
                                              key=len, reverse=True)
    for path in final.rglob("*.json"):
        text = path.read_text()
        changed = text.replace(old, new)
        for prefix in prefixes:
            changed = changed.replace('"' + prefix, '"').replace(", " + prefix, ", ")
        if changed != text:
            path.write_text(changed)


def _labelled(stamps: StampSet) -> StampSet:
    keep = stamps.labels >= 0
    return stamps if keep.all() else stamps[keep]


def _core(stamps: StampSet) -> StampSet:
    """Images, labels, snr, kind, ids and groups only, so that sets with other columns concatenate."""
    return StampSet(images=stamps.images, labels=stamps.labels, snr=stamps.snr, kind=stamps.kind, ids=stamps.ids,
                    groups=stamps.groups, channels=stamps.channels)


def _set_summary(stamps: StampSet) -> dict[str, Any]:
    return {"n": len(stamps), "class_balance": stamps.class_balance(), "kinds": stamps.kind_counts(),
            "objects": stamps.n_groups() if stamps.groups is not None else None}


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


# ---------------------------------------------------------------------------------------------
# data


@contextlib.contextmanager
def counter(ctx: RunContext, total: int, description: str) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar fed by a `callback(done_so_far)`; yields None when progress is off."""
    if not ctx.progress:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=ctx.console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=int(done))


def save_stamps(stamps: StampSet, path: Path) -> None:
    """Write a run's data file: uncompressed .npz (stamp noise barely compresses), atomically."""
    from hits_stamps.io.native import write_npz

    write_npz(stamps, path, overwrite=True, compress=False)


def step_simulate(ctx: RunContext) -> dict[str, Any]:
    """Simulate the training, validation and test sets (seeds data.seed, +1, +2)."""
    from hits_stamps.simulate import simulate_stamps

    d = ctx.config.data
    out: dict[str, Any] = {}
    for i, (stem, n) in enumerate((("train", d.n_train), ("val", d.n_val), ("test", d.n_test))):
        seed = d.seed + i
        with counter(ctx, n, f"simulating {stem}") as callback:
            stamps = simulate_stamps(n, seed, real_fraction=d.real_fraction, progress=callback)
        save_stamps(stamps, ctx.data_path(stem))
        ctx._cache[stem] = stamps
        out[stem] = {**_set_summary(stamps), "seed": seed}
        ctx.console.print(
            f"  {stem}: {len(stamps)} stamps (real {out[stem]['class_balance']['real']}, "
            f"bogus {out[stem]['class_balance']['bogus']}), seed {seed}"
        )
    return out


def resolve_sequences(ctx: RunContext) -> Path | None:
    """The sequence file this run builds its real-pixel set from, or None."""
    d = ctx.config.data
    if not d.real:
        return None
    if d.real_sequences:
        p = Path(d.real_sequences).expanduser()
        if not p.is_file():
            raise HitsStampsError(f"data.real_sequences: {p} not found")
        return p
    from hits_stamps.realdata import default_sequences_path

    p = default_sequences_path()
    return Path(p) if p is not None and Path(p).is_file() else None


def resolve_variables(ctx: RunContext) -> Path | None:
    """The variable-star sequence file this run validates and tests on, or None."""
    d = ctx.config.data
    if not d.variables:
        return None
    if d.variables_sequences:
        p = Path(d.variables_sequences).expanduser()
        if not p.is_file():
            raise HitsStampsError(f"data.variables_sequences: {p} not found")
        return p
    from hits_stamps.realsets import default_variables_path

    return default_variables_path()


def step_build_real(ctx: RunContext) -> dict[str, Any]:
    """Split the real HiTS 2015 objects, inject into the training objects, build every real-pixel set."""
    if not ctx.config.data.real:
        ctx.console.print("  real-pixel sets disabled (data.real = false)")
        return {"available": False, "reason": "disabled in the configuration (data.real = false)"}
    seq = resolve_sequences(ctx)
    if seq is None:
        ctx.console.print("  [yellow]no HiTS 2015 sequence file found; the real-pixel sets are skipped[/yellow]")
        return {"available": False, "reason": "no HiTS 2015 sequence file found (shared data or packaged sample)"}
    from hits_stamps.realsets import RealSetsConfig, build_real_sets

    d = ctx.config.data
    variables = resolve_variables(ctx)
    cfg = RealSetsConfig(split=tuple(d.real_split), split_seed=d.seed, n_inject=d.inject_n, inject_seed=d.seed,
                         object_fraction=d.real_objects)
    say = (lambda msg: ctx.console.print(f"  {msg}", highlight=False)) if ctx.progress else None
    sets = build_real_sets(seq, variables, cfg, progress=say)
    test = sets.get("real_test")
    if test is None or len(np.unique(test.labels)) < 2:
        ctx.console.print(f"  [yellow]{seq}: the test objects gave no stamps of both classes; real-pixel sets "
                          "skipped[/yellow]")
        return {"available": False, "sequences": str(seq),
                "reason": f"{seq}: the real test objects gave {0 if test is None else len(test)} stamps, not both "
                          "classes"}
    out: dict[str, Any] = {"available": True, "sequences": str(seq),
                           "variables": str(variables) if variables else None,
                           "split": list(d.real_split), "split_seed": d.seed, "object_fraction": d.real_objects,
                           "sets": {}}
    for name, stamps in sets.items():
        save_stamps(stamps, ctx.data_path(name))
        ctx._cache[name] = stamps
        out["sets"][name] = _set_summary(stamps)
        bal = stamps.class_balance()
        ctx.console.print(f"  {name}: {len(stamps)} stamps (real {bal['real']}, bogus {bal['bogus']}) from "
                          f"{stamps.n_groups()} objects")
    if "inject" in sets:
        m = sets["inject"].meta
        out["inject"] = {k: m[k] for k in ("quotas", "drawn", "written", "fwhm_check", "fainter_than_limit",
                                           "variety")}
    return out


def step_user_data(ctx: RunContext) -> dict[str, Any]:
    """Read your own labelled files ([data] train / val / test), with their objects, and check the split."""
    from hits_stamps.stamps import check_disjoint_groups

    d = ctx.config.data
    read: dict[str, StampSet] = {}
    for key, path in (("train", d.train), ("val", d.val), ("test", d.test)):
        if path:
            read[key] = _user_file(Path(path).expanduser(), f"data.{key}", d.group_column)
    if "train" in read and "val" not in read:
        train, val = read["train"].split((0.8, 0.2), seed=d.seed)  # by object when the file has groups
        read["train"], read["val"] = train, val
    shapes = {k: (s.shape[1:], s.channels) for k, s in read.items()}
    if len(set(shapes.values())) > 1:
        raise HitsStampsError("your files differ in stamp shape or channels: "
                              + "; ".join(f"data.{k} {v[0]} {list(v[1])}" for k, v in shapes.items()))
    check_disjoint_groups(read)
    out: dict[str, Any] = {}
    for key, stamps in read.items():
        stem = f"user_{key}"
        save_stamps(stamps, ctx.data_path(stem))
        ctx._cache[stem] = stamps
        out[key] = {**_set_summary(stamps), "file": getattr(d, key) or f"{d.train} (20% of its objects)"}
        bal = stamps.class_balance()
        ctx.console.print(f"  your {key}: {len(stamps)} stamps (real {bal['real']}, bogus {bal['bogus']}), "
                          f"{stamps.n_groups()} objects")
    return out


def _user_file(path: Path, key: str, group_column: str) -> StampSet:
    from hits_stamps.io import read_stamps

    if not path.is_file():
        raise HitsStampsError(f"{key}: {path} not found")
    stamps = _labelled(read_stamps(path))
    if len(stamps) == 0:
        raise HitsStampsError(f"{key}: {path} has no labelled stamps (labels 0 or 1)")
    if group_column:
        if group_column not in stamps.columns:
            raise HitsStampsError(f"{key}: {path} has no column {group_column!r} (data.group_column); columns: "
                                  f"{sorted(stamps.columns)}")
        groups = np.asarray(stamps.columns[group_column]).astype(str)
        stamps = StampSet(images=stamps.images, labels=stamps.labels, snr=stamps.snr, kind=stamps.kind,
                          ids=stamps.ids, groups=groups, channels=stamps.channels, columns=stamps.columns,
                          meta=stamps.meta)
    if stamps.kind is None:
        stamps = StampSet(images=stamps.images, labels=stamps.labels, snr=stamps.snr,
                          kind=np.where(stamps.labels == 1, "real", "bogus"), ids=stamps.ids, groups=stamps.groups,
                          channels=stamps.channels, columns=stamps.columns, meta=stamps.meta)
    return stamps


def step_calibrate(ctx: RunContext) -> dict[str, Any]:
    """Compare simulated and real HiTS pixels (two-sample KS per statistic) and draw the figure."""
    seq = resolve_sequences(ctx)
    if seq is None:
        return {"available": False, "reason": "no HiTS 2015 sequence file to calibrate against"}
    from hits_stamps.simulate.calibrate import calibrate, plot_calibration

    n = ctx.config.data.calibration_n
    if n == 0:
        return {"available": False, "reason": "disabled in the configuration (data.calibration_n = 0)"}
    with ctx.status(f"simulating {n} star cutouts and measuring real and simulated pixels"):
        cal = calibrate(seq, n=n, seed=ctx.config.data.seed)
    with staged_dir(ctx.layout.calibration, root=ctx.out) as tmp:
        plot_calibration(cal, tmp / "calibration.png")
    rows = cal.table()
    if rows:
        ctx.console.print("  KS distances: " + ", ".join(f"{r['statistic']} {r['ks_d']:.3f}" for r in rows))
    return {
        "available": True,
        "sequences": str(seq),
        "n_sim": n,
        "statistics": rows,
        "mag_window": list(cal.mag_window),
        "detected_fraction": {"real": cal.detected_fraction[0], "simulated": cal.detected_fraction[1]},
    }


# ---------------------------------------------------------------------------------------------
# models


def step_train(ctx: RunContext, name: str) -> dict[str, Any]:
    """Train one model: a classifier on the run's training mix (`RunContext.mix`), validating on the real
    validation objects; the generator on the simulated training set."""
    from hits_stamps.models.registry import get_spec
    from hits_stamps.training import TrainConfig, fit
    from hits_stamps.training.modeldir import CHECKPOINT, load_model, resumable

    if not get_spec(name).task.classifies:
        train, val, data_path = ctx.stamps("train"), ctx.stamps("val"), ctx.data_path("train")
        mix, val_stems = ("simulated",), ("val",)
    else:
        train, val, data_path = ctx.classifier_training(), ctx.classifier_validation(), None
        mix, val_stems = ctx.mix(), ctx.validation_stems()
    mc = ctx.config.model_config(name)
    cfg = TrainConfig(
        model=name,
        seed=ctx.config.seed,
        epochs=mc.epochs if mc else None,
        batch_size=mc.batch_size if mc else None,
        lr=mc.lr if mc else None,
        steps_per_epoch=mc.steps_per_epoch if mc else None,
        recipe_overrides={"scaling": mc.scaling} if mc and mc.scaling else {},
        device=ctx.device,
    )
    final = ctx.model_dir(name)
    with staged_dir(final, keep_partial=True) as tmp:
        resume = resumable(tmp)
        if resume:
            ctx.console.print(f"  resuming {name} from its last checkpoint")
        fit(cfg, train, tmp, val=val, resume=resume, overwrite=not resume, progress=ctx.progress,
            data_path=data_path)
    # the epoch checkpoint (optimizer state included) only serves to resume this step; it is done
    (final / CHECKPOINT).unlink(missing_ok=True)
    model = load_model(final)
    hist = model.history
    last = hist[-1] if hist else {}
    return {
        "model": name,
        "task": model.spec.task,
        "n_parameters": model.n_parameters,
        "epochs": len(hist),
        "train_seconds": float(sum(r.get("seconds", 0.0) for r in hist)),
        "final": {k: v for k, v in last.items() if isinstance(v, (int, float))},
        "recipe": model.config.get("recipe", {}),
        "training_data": {"mix": list(mix), "n": len(train), "class_balance": train.class_balance(),
                          "parts": {m: len(ctx.stamps(MIX_STEMS[m])) for m in mix}},
        "validation_data": {"sets": list(val_stems), "n": len(val)},
    }


def _subset(stamps: StampSet, n: int | None, seed: int) -> StampSet:
    """A stratified, seeded subset of about `n` stamps (the same for every model), or all of them.

    Sets with objects (`groups`) are subset by whole objects, so the count is approximate.
    """
    if n is None or len(stamps) <= n:
        return stamps
    return stamps.split((n, len(stamps) - n), seed=seed)[0]


def validation_threshold(ctx: RunContext, model, bayesian: bool) -> dict[str, Any]:
    """The FPR = 1% threshold of `model`, chosen on the classifiers' validation objects (never a test set).

    Returns `threshold_from_validation`'s record plus the validation stems, or {"threshold": None,
    "reason"} when the validation set cannot fix one (a single class).
    """
    from hits_stamps.evaluation.evaluate import threshold_from_validation

    ev = ctx.config.evaluate
    val = ctx.classifier_validation()
    if bayesian:
        val = _subset(val, ev.max_bayesian, ctx.config.seed)
    stems = list(ctx.validation_stems())
    if len(np.unique(val.labels)) < 2:
        return {"threshold": None, "reason": "the validation set has one class", "sets": stems}
    source = threshold_from_validation(model, val, mc_samples=ev.mc_samples if bayesian else None, progress=False,
                                       data_path=", ".join(ctx.layout.relative(ctx.data_path(s)) for s in stems),
                                       device=_eval_device(ctx))
    return {**source, "sets": stems}


def step_evaluate(ctx: RunContext, name: str) -> dict[str, Any]:
    """Evaluate one classifier on every available test set (metrics.json + figures per set).

    The FPR = 1% threshold is fixed on the validation objects first and applied unchanged to every
    test set, so a test set's FNR and FPR at that threshold are honest numbers.
    """
    from hits_stamps.evaluation.evaluate import evaluate_model
    from hits_stamps.training.modeldir import load_model

    ev = ctx.config.evaluate
    model = load_model(ctx.model_dir(name))
    bayesian = model.spec.task.bayesian
    with ctx.status(f"choosing {name}'s FPR = 1% threshold on the validation objects"):
        chosen = validation_threshold(ctx, model, bayesian)
    out: dict[str, Any] = {"validation_threshold": chosen}
    for test_set, stem in TEST_SETS.items():
        if not ctx.has(stem):
            continue
        stamps = _labelled(ctx.stamps(stem))
        if stamps.shape[1:] != ctx.classifier_training().shape[1:]:
            out[test_set] = {"skipped": f"stamps {stamps.shape[1:]} differ from the training stamps"}
            continue
        if stem != "test":
            stamps = _subset(stamps, ev.max_real, ctx.config.seed)
        if bayesian:
            stamps = _subset(stamps, ev.max_bayesian, ctx.config.seed)
        extra = f", {ev.mc_samples} Monte-Carlo samples each" if bayesian else ""
        ctx.console.print(f"  {name} on the {TEST_SET_TITLES[test_set]} ({len(stamps)} stamps{extra})")
        with staged_dir(ctx.eval_dir(name, test_set), root=ctx.out) as tmp, \
                ctx.status(f"evaluating {name} on {test_set}"):
            metrics = evaluate_model(model, stamps, tmp, mc_samples=ev.mc_samples if bayesian else None,
                                     progress=ctx.progress, data_path=ctx.data_path(stem), device=_eval_device(ctx),
                                     threshold_fpr1=chosen["threshold"],
                                     threshold_source=chosen if chosen["threshold"] is not None else None,
                                     seed=ctx.config.seed)
        out[test_set] = EvaluationResult.from_json(metrics).summary()  # (the report reads the full metrics.json)
    return out


#: Calibrations the uncertainty step compares on the validation objects (out of fold), in order of preference.
CALIBRATIONS: tuple[str, ...] = ("none", "temperature", "platt")


def _out_of_fold_nll(samples: np.ndarray, y: np.ndarray, groups: np.ndarray | None, kind: str, seed: int) -> float:
    """Mean NLL of calibration `kind` on the validation stamps, each half of the objects calibrated on the other."""
    from hits_stamps.predictive import object_folds, out_of_fold

    folds = object_folds(groups if groups is not None else np.arange(len(y)), 2, seed)
    if any(len(np.unique(y[folds != f])) < 2 for f in np.unique(folds)):
        return float("inf")  # a half with one class cannot fit a calibration
    p = out_of_fold(kind, samples, y, folds).mean(axis=0)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)).mean())


def step_uncertainty(ctx: RunContext) -> dict[str, Any]:
    """Calibrate every classifier on the validation objects and judge its uncertainty on every test set.

    For each classifier (softmax; the Bayesian networks' Monte-Carlo samples): the calibration
    (none, temperature or Platt) with the lowest out-of-fold NLL on the validation objects (two
    halves by object) is fitted on all of them and saved as the model's `predictive.json`, which
    `hits-stamps predict` then applies. Every test set is scored raw and calibrated
    (`evaluation.shift.evaluate_uncertainty`: ECE, NLL, Brier, AUROC of the uncertainty, error
    after referral), written to `uncertainty/<model>.json`.
    """
    from hits_stamps.evaluation.shift import evaluate_uncertainty
    from hits_stamps.predictive import PREDICTIVE_FILE, Predictive
    from hits_stamps.training.modeldir import load_model, write_json

    ev = ctx.config.evaluate
    seed = ctx.config.seed
    val = ctx.classifier_validation()
    if len(np.unique(val.labels)) < 2:
        return {"skipped": "the validation set has one class"}
    ctx.layout.uncertainty_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"validation": {"sets": list(ctx.validation_stems()), "n": len(val),
                                             "objects": val.n_groups()}, "models": {}}
    for name in ctx.config.models:
        model = load_model(ctx.model_dir(name))
        if not model.spec.task.classifies:
            continue
        bayesian = model.spec.task.bayesian
        pred = Predictive([model], "flipout" if bayesian else "softmax", mc_samples=ev.mc_samples, seed=seed)
        v = _subset(val, ev.max_bayesian, seed) if bayesian else val
        with ctx.status(f"calibrating {name} on the validation objects"):
            raw_val = pred.raw_sample_proba(v)
        nll = {kind: _out_of_fold_nll(raw_val, v.labels, v.groups, kind, seed) for kind in CALIBRATIONS}
        chosen = min(CALIBRATIONS, key=lambda k: (nll[k], CALIBRATIONS.index(k)))
        pred.fit_calibration(chosen, raw_val, v.labels)
        pred.save(ctx.model_dir(name), members=["."], overwrite=True,
                  note=f"calibration {chosen} chosen by out-of-fold NLL and fitted on the validation objects "
                       f"({', '.join(ctx.validation_stems())}: {len(v)} stamps, {v.n_groups()} objects) of "
                       f"hits-stamps run {ctx.out.name}")
        rec: dict[str, Any] = {"method": pred.method, "calibration": pred.calibrator.to_dict(), "chosen": chosen,
                               "validation_out_of_fold_nll": nll, "describe": pred.describe(), "test": {}}
        for test_set, stem in TEST_SETS.items():
            if not ctx.has(stem):
                continue
            stamps = _labelled(ctx.stamps(stem))
            if stamps.shape[1:] != val.shape[1:] or len(stamps) == 0:
                continue
            if stem != "test":
                stamps = _subset(stamps, ev.max_real, seed)
            if bayesian:
                stamps = _subset(stamps, ev.max_bayesian, seed)
            with ctx.status(f"uncertainty of {name} on {test_set}"):
                raw = pred.raw_sample_proba(stamps)
            rec["test"][test_set] = {
                "raw": evaluate_uncertainty(stamps.labels, raw, stamps.groups, n_resamples=ev.uncertainty_resamples,
                                            seed=seed),
                "calibrated": evaluate_uncertainty(stamps.labels, pred.calibrator.transform(raw), stamps.groups,
                                                   n_resamples=ev.uncertainty_resamples, seed=seed),
            }
        write_json(ctx.layout.uncertainty(name), rec)
        real = rec["test"].get("real", {})
        if real:
            ece = (real["raw"]["ece"]["value"], real["calibrated"]["ece"]["value"])
            ctx.console.print(f"  {name}: {chosen} calibration; real-pixel test ECE {ece[0]:.4f} -> {ece[1]:.4f}"
                              f" ({PREDICTIVE_FILE} written)", highlight=False)
        result["models"][name] = {k: rec[k] for k in ("method", "chosen", "calibration", "describe")}
    return result


def _eval_device(ctx: RunContext) -> str:
    return "cuda" if ctx.device.startswith("cuda") else "cpu"


# ---------------------------------------------------------------------------------------------
# generation


def step_tune(ctx: RunContext) -> dict[str, Any]:
    """Choose the cvae's per-condition pixel temperatures with a classifier that is not the judge."""
    from hits_stamps.generation.tune import tune_temperatures

    g = ctx.config.generation
    with ctx.status(f"tuning the generator's temperatures with {g.tune_with}"):
        result = tune_temperatures(ctx.model_dir("cvae"), ctx.model_dir(g.tune_with), n_per_condition=g.tune_n,
                                   seed=ctx.config.seed)
    if isinstance(result.get("classifier"), str):  # the run's JSON holds paths relative to the run directory
        result = {**result, "classifier": ctx.layout.relative(result["classifier"])}
    return result


def step_judge(ctx: RunContext) -> dict[str, Any]:
    """Sample the conditional VAE and judge the samples with an independent classifier."""
    from hits_stamps.generation.judge import evaluate_generator

    g = ctx.config.generation
    classifier = ctx.model_dir(g.judge) if g.judge else None
    if classifier is not None and not classifier.exists():
        raise HitsStampsError(
            f"generation.judge = {g.judge!r}, but {classifier} does not exist (is {g.judge} in `models`?)"
        )
    train = _subset(ctx.stamps("train"), g.reference_n or None, ctx.config.seed)
    with staged_dir(ctx.layout.generation, root=ctx.out) as tmp:
        result = evaluate_generator(ctx.model_dir("cvae"), ctx.stamps("test"), tmp,
                                    classifier=classifier, seed=ctx.config.seed, progress=ctx.progress, train=train,
                                    classifier_model=g.judge_model, classifier_epochs=g.judge_epochs,
                                    max_per_class=g.max_per_class)
    return _scalars(result)


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    """The top-level numbers and strings of a result (the full result stays in its own JSON file)."""
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool)) or v is None}


def step_augment(ctx: RunContext) -> dict[str, Any]:
    """A classifier on a fraction of the training set, with and without generated stamps."""
    from hits_stamps.generation.augment import augmentation_experiment

    a = ctx.config.augmentation
    with staged_dir(ctx.layout.augmentation, root=ctx.out) as tmp:
        result = augmentation_experiment(ctx.stamps("train"), ctx.stamps("test"), ctx.model_dir("cvae"),
                                         fractions=[a.fraction], seed=ctx.config.seed, epochs=a.epochs, out_dir=tmp,
                                         classifier_model=a.model, retrain_cvae=a.retrain_cvae,
                                         progress=ctx.progress)
    return dict(result)


# ---------------------------------------------------------------------------------------------
# the plan


@dataclass(frozen=True)
class Step:
    name: str  # file-safe, unique: the done-marker is steps/<name>.json
    title: str  # what the progress line says
    fn: Callable[[RunContext], dict[str, Any]]


def plan(config: RunConfig) -> list[Step]:
    """The ordered steps for a config (each model is trained, then evaluated if it classifies)."""
    from hits_stamps.models.registry import get_spec

    steps = [
        Step("simulate", "simulate the training, validation and test sets", step_simulate),
        Step("build-real", "split the real HiTS 2015 objects, inject, build the real-pixel sets", step_build_real),
        Step("calibrate", "calibrate the simulator against real pixels", step_calibrate),
    ]
    if config.data.train or config.data.test:
        steps.append(Step("user-data", "read your labelled files", step_user_data))
    tasks = {name: get_spec(name).task for name in config.models}
    for name, task in tasks.items():
        steps.append(Step(f"train-{name}", f"train {name}", lambda ctx, n=name: step_train(ctx, n)))
        if task.classifies:
            steps.append(Step(f"evaluate-{name}", f"evaluate {name}", lambda ctx, n=name: step_evaluate(ctx, n)))
    if any(t.classifies for t in tasks.values()) and config.evaluate.uncertainty:
        steps.append(Step("uncertainty", "calibrate on the validation objects and judge every uncertainty",
                          step_uncertainty))
    if "cvae" in tasks and config.generation.tune_with:
        steps.append(Step("tune-cvae", "tune the generator's pixel temperatures", step_tune))
    if "cvae" in tasks:
        steps.append(Step("generate", "generate stamps and judge them", step_judge))
        if config.augmentation.enabled:
            steps.append(Step("augment", "augmentation experiment", step_augment))
    judge = config.generation.judge
    if "cvae" in tasks and judge and judge not in tasks:
        raise HitsStampsError(f"generation.judge = {judge!r} is not one of the run's models {list(config.models)}")
    tune_with = config.generation.tune_with
    if "cvae" in tasks and tune_with and (tune_with not in tasks or not tasks[tune_with].classifies):
        raise HitsStampsError(f"generation.tune_with = {tune_with!r} is not one of the run's classifiers "
                              f"{[n for n, t in tasks.items() if t.classifies]} (\"\" skips the tuning)")
    return steps
