"""The steps of `hits-stamps run`, each a function `RunContext -> result dict`.

A step writes its outputs under the run directory (files atomically, directories by building
`NAME.partial` and renaming it), and returns a small JSON-ready dict that the runner stores in
`DIR/steps/<step>.json` together with its duration. The runner (`run.py`) decides what to skip.

Layout of a run directory::

    run_config.json / run_config.toml   the configuration the directory was made with
    steps/<step>.json                    done-markers (duration, result); <step>.error.txt on failure
    data/{train,val,test,real}.npz       simulated splits and the real-pixel HiTS 2015 set
    calibration/                         simulated vs real pixel statistics (KS) and figure
    models/<name>/                       every trained model directory
    eval/<model>/<test set>/             metrics.json and figures per classifier and test set
    generation/                          generated stamps, judging numbers and figures
    augmentation/                        the augmentation experiment
    summary.json, report.html            written at the end (and by `hits-stamps report DIR`)
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
from hits_stamps.stamps import StampSet

#: Test sets every classifier is evaluated on: name -> data file stem.
TEST_SETS: dict[str, str] = {"simulated": "test", "real": "real"}
TEST_SET_TITLES: dict[str, str] = {
    "simulated": "simulated HiTS test set",
    "real": "real-pixel HiTS 2015 set (trained on simulation only)",
}


@dataclass
class RunContext:
    """What every step sees: the run directory, the config and how to report progress."""

    out: Path
    config: RunConfig
    device: str = "auto"
    progress: bool = True
    console: Console = field(default_factory=Console)
    _cache: dict[str, StampSet] = field(default_factory=dict)

    def data_path(self, stem: str) -> Path:
        return self.out / "data" / f"{stem}.npz"

    def stamps(self, stem: str) -> StampSet:
        """A data file of this run (cached in memory for the rest of the run)."""
        if stem not in self._cache:
            path = self.data_path(stem)
            if not path.exists():
                raise HitsStampsError(f"{path}: missing; the step that writes it has not finished")
            self._cache[stem] = read_stamps(path)
        return self._cache[stem]

    def has_real(self) -> bool:
        return self.data_path("real").exists()

    def model_dir(self, name: str) -> Path:
        return self.out / "models" / name

    def eval_dir(self, model: str, test_set: str) -> Path:
        return self.out / "eval" / model / test_set

    def status(self, message: str):
        """A spinner with `message` while a block runs (nothing when progress is off)."""
        return self.console.status(f"  {message}") if self.progress else contextlib.nullcontext()


@contextlib.contextmanager
def staged_dir(final: Path, keep_partial: bool = False) -> Iterator[Path]:
    """Yield `final.partial`; when the block succeeds, it replaces `final` by a rename.

    A previous `.partial` is removed first unless `keep_partial` (training keeps it so that its
    checkpoint resumes an interrupted fit). On error the partial folder stays for inspection.
    Paths into the partial folder written in JSON files inside it (e.g. a metrics.json's
    `figures`) are rewritten to the final folder.
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
    for path in final.rglob("*.json"):
        text = path.read_text()
        if old in text:
            path.write_text(text.replace(old, new))


def _labelled(stamps: StampSet) -> StampSet:
    keep = stamps.labels >= 0
    return stamps if keep.all() else stamps[keep]


def _set_summary(stamps: StampSet) -> dict[str, Any]:
    return {"n": len(stamps), "class_balance": stamps.class_balance(), "kinds": stamps.kind_counts()}


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


def step_build_real(ctx: RunContext) -> dict[str, Any]:
    """Build the real-pixel HiTS 2015 difference stamps, or say why there are none."""
    if not ctx.config.data.real:
        ctx.console.print("  real-pixel set disabled (data.real = false)")
        return {"available": False, "reason": "disabled in the configuration (data.real = false)"}
    seq = resolve_sequences(ctx)
    if seq is None:
        ctx.console.print("  [yellow]no HiTS 2015 sequence file found; the real-pixel test set is skipped[/yellow]")
        return {"available": False, "reason": "no HiTS 2015 sequence file found (shared data or packaged sample)"}
    from hits_stamps.realdata import build_real

    say = (lambda msg: ctx.console.print(f"  {msg}", highlight=False)) if ctx.progress else None
    stamps = build_real(seq, progress=say)
    labelled = _labelled(stamps)
    if len(labelled) == 0 or len(np.unique(labelled.labels)) < 2:
        ctx.console.print(f"  [yellow]{seq} gave no stamps of both classes; real-pixel test set skipped[/yellow]")
        return {"available": False, "reason": f"{seq} gave {len(labelled)} labelled stamps, not both classes",
                "sequences": str(seq)}
    save_stamps(stamps, ctx.data_path("real"))
    ctx._cache["real"] = stamps
    bal = stamps.class_balance()
    ctx.console.print(f"  real-pixel set from {seq}: {len(stamps)} stamps (real {bal['real']}, bogus {bal['bogus']})")
    meta = {k: v for k, v in stamps.meta.items() if not isinstance(v, (list, tuple))}  # drop per-object lists
    return {"available": True, "sequences": str(seq), **_set_summary(stamps), "meta": meta}


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
    with staged_dir(ctx.out / "calibration") as tmp:
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
    """Train one model on the simulated training set, validating on the simulated validation set."""
    from hits_stamps.training import TrainConfig, fit
    from hits_stamps.training.modeldir import CHECKPOINT, load_model, resumable

    mc = ctx.config.model_config(name)
    cfg = TrainConfig(
        model=name,
        seed=ctx.config.seed,
        epochs=mc.epochs if mc else None,
        batch_size=mc.batch_size if mc else None,
        lr=mc.lr if mc else None,
        steps_per_epoch=mc.steps_per_epoch if mc else None,
        device=ctx.device,
    )
    final = ctx.model_dir(name)
    with staged_dir(final, keep_partial=True) as tmp:
        resume = resumable(tmp)
        if resume:
            ctx.console.print(f"  resuming {name} from its last checkpoint")
        fit(cfg, ctx.stamps("train"), tmp, val=ctx.stamps("val"), resume=resume, overwrite=not resume,
            progress=ctx.progress, data_path=ctx.data_path("train"))
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
    }


def _subset(stamps: StampSet, n: int | None, seed: int) -> StampSet:
    """A stratified, seeded subset of `n` stamps (the same for every model), or all of them."""
    if n is None or len(stamps) <= n:
        return stamps
    return stamps.split((n, len(stamps) - n), seed=seed)[0]


def step_evaluate(ctx: RunContext, name: str) -> dict[str, Any]:
    """Evaluate one classifier on every available test set (metrics.json + figures per set)."""
    from hits_stamps.evaluation.evaluate import evaluate_model
    from hits_stamps.training.modeldir import load_model

    ev = ctx.config.evaluate
    model = load_model(ctx.model_dir(name))
    bayesian = model.spec.task == "bayesian-classifier"
    out: dict[str, Any] = {}
    for test_set, stem in TEST_SETS.items():
        if stem == "real" and not ctx.has_real():
            continue
        stamps = _labelled(ctx.stamps(stem))
        if stem == "real":
            stamps = _subset(stamps, ev.max_real, ctx.config.seed)
        if bayesian:
            stamps = _subset(stamps, ev.max_bayesian, ctx.config.seed)
        extra = f", {ev.mc_samples} Monte-Carlo samples each" if bayesian else ""
        ctx.console.print(f"  {name} on the {TEST_SET_TITLES[test_set]} ({len(stamps)} stamps{extra})")
        with staged_dir(ctx.eval_dir(name, test_set)) as tmp, ctx.status(f"evaluating {name} on {test_set}"):
            metrics = evaluate_model(model, stamps, tmp, mc_samples=ev.mc_samples if bayesian else None,
                                     progress=ctx.progress, data_path=ctx.data_path(stem), device=_eval_device(ctx))
        out[test_set] = {k: metrics[k] for k in ("n", "accuracy", "f1", "roc_auc", "fnr_at_fpr_1pct", "ece")
                         if k in metrics}
    return out


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
    with staged_dir(ctx.out / "generation") as tmp:
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
    with staged_dir(ctx.out / "augmentation") as tmp:
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
        Step("build-real", "build the real-pixel HiTS 2015 set", step_build_real),
        Step("calibrate", "calibrate the simulator against real pixels", step_calibrate),
    ]
    tasks = {name: get_spec(name).task for name in config.models}
    for name, task in tasks.items():
        steps.append(Step(f"train-{name}", f"train {name}", lambda ctx, n=name: step_train(ctx, n)))
        if task != "generator":
            steps.append(Step(f"evaluate-{name}", f"evaluate {name}", lambda ctx, n=name: step_evaluate(ctx, n)))
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
    if "cvae" in tasks and tune_with and (tune_with not in tasks or tasks[tune_with] == "generator"):
        raise HitsStampsError(f"generation.tune_with = {tune_with!r} is not one of the run's classifiers "
                              f"{[n for n, t in tasks.items() if t != 'generator']} (\"\" skips the tuning)")
    return steps
