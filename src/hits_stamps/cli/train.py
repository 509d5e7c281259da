"""`train` and `evaluate`: fit any registered model with the shared loop, and score it on test data."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import typer

from hits_stamps.cli._app import app, console
from hits_stamps.errors import HitsStampsError
from hits_stamps.io.atomic import staged_output_dir

_SUMMARY_KEYS = ("n", "n_objects", "accuracy", "precision", "recall", "recall_bogus", "f1", "roc_auc", "fpr", "fnr",
                 "fnr_at_fpr_1pct", "threshold_at_fpr_1pct", "threshold_fpr1", "fnr_at_val_threshold",
                 "fpr_at_val_threshold", "ece", "nll", "accuracy_at_10pct_referral")


def parse_assignments(items: list[str] | None, what: str) -> dict[str, Any]:
    """['key=value', ...] -> {key: value}; values are read as JSON where they parse (3, 1e-3, true,
    [16, 32]) and kept as strings otherwise."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise HitsStampsError(f"{what} must be KEY=VALUE; got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip().replace("-", "_")] = value
    return out


def _check_ids(stamps, path: Path, what: str) -> None:
    """Warn (once, naming the file) when a stamp file repeats ids: rows stay in file order, metrics count each."""
    from hits_stamps.stamps import describe_duplicates

    dups = stamps.duplicate_ids()
    if dups:
        warnings.warn(f"{path}: {describe_duplicates(dups)} in the {what} data; each row is used as it is",
                      stacklevel=2)


@app.command()
def train(
    model: str = typer.Option(..., "--model", "-m", help="Model name: seed-cnn, deephits, rotinv-cnn, ..."),
    data: Path = typer.Option(..., "--data", help="Training stamp file (.npz, .h5, ...)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write."),
    val: Path | None = typer.Option(None, "--val", help="Validation stamp file (default: hold out --val-fraction)."),
    val_fraction: float | None = typer.Option(
        None, "--val-fraction", help="Fraction of --data held out when no --val (default 0.2)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs (default: the model's recipe)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Batch size (default: the recipe)."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (default: the recipe)."),
    seed: int = typer.Option(0, "--seed", help="Seed for weights, split, shuffling and dropout."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the directory's last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model directory."),
    early_stopping: int | None = typer.Option(
        None, "--early-stopping", help="Stop after N epochs without validation-loss improvement; keep the best."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    recipe: list[str] = typer.Option(None, "--recipe", help="Override a recipe field, KEY=VALUE (repeatable)."),
    model_arg: list[str] = typer.Option(None, "--model-arg", help="Model builder argument KEY=VALUE (repeatable)."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow reading pickle files (they can run code)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train a model with its recipe defaults and write a model directory."""
    from hits_stamps.io import read_stamps
    from hits_stamps.training.loop import TrainConfig, fit

    if val is not None and val_fraction is not None:
        raise HitsStampsError("give either --val or --val-fraction, not both")
    cfg = TrainConfig(
        model=model, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr,
        val_fraction=0.2 if val_fraction is None else val_fraction,
        early_stopping_patience=early_stopping, device=device,
        model_kwargs=parse_assignments(model_arg, "--model-arg"),
        recipe_overrides=parse_assignments(recipe, "--recipe"),
    )
    train_set = read_stamps(data, trust_pickle=trust_pickle)
    val_set = read_stamps(val, trust_pickle=trust_pickle) if val is not None else None
    _check_ids(train_set, data, "training")
    if val_set is not None:
        _check_ids(val_set, val, "validation")
        shared = np.intersect1d(train_set.ids, val_set.ids)
        if shared.size:
            raise HitsStampsError(f"--val {val}: {shared.size} stamp ids are also in --data {data} (e.g. "
                                  f"{str(shared[0])!r}); validation must hold other stamps")
    t0 = time.perf_counter()
    trained = fit(cfg, train_set, out, val=val_set, resume=resume, overwrite=overwrite, progress=progress,
                  data_path=data)
    seconds = time.perf_counter() - t0
    last = trained.history[-1] if trained.history else {}
    console.print(f"wrote {out}: {trained.name}, parameters: {trained.n_parameters}, "
                  f"{len(trained.history)} epochs in {seconds:.1f} s")
    if last:
        console.print("last epoch: " + ", ".join(
            f"{k} {last[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in last))
    if trained.config.get("restored_best_epoch"):
        console.print(f"restored the best epoch: {trained.config['restored_best_epoch']}")


@app.command()
def evaluate(
    model_dir: Path = typer.Argument(..., help="A trained model directory."),
    data: Path = typer.Option(..., "--data", help="Labelled test stamp file."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for metrics.json and figures."),
    val_data: Path | None = typer.Option(
        None, "--val-data", help="Labelled validation stamps of other objects: the FPR 1% threshold is chosen there."),
    mc_samples: int | None = typer.Option(
        None, "--mc-samples", help="Monte-Carlo samples for Bayesian models (default: the model's)."),
    classifier: Path | None = typer.Option(
        None, "--classifier", help="Generators only: the independent classifier that judges the samples."),
    seed: int = typer.Option(0, "--seed", help="Seed for generator judging."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder (when complete)."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow reading pickle files (they can run code)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress."),
) -> None:
    """Score a classifier on labelled stamps (metrics.json + plots), or judge a generator."""
    from hits_stamps.models.registry import get_spec
    from hits_stamps.training import modeldir

    if mc_samples is not None and mc_samples < 1:
        raise HitsStampsError(f"--mc-samples must be >= 1; got {mc_samples}")
    config = modeldir.read_config(model_dir, full=False)
    generator = not get_spec(config["model"]).task.classifies
    with staged_output_dir(out, overwrite, markers=(modeldir.METRICS, "generation.json"),
                           rewrite=(model_dir / modeldir.METRICS,)) as tmp:
        if generator:
            from hits_stamps.generation.judge import evaluate_generator

            result = evaluate_generator(model_dir=model_dir, data=data, out_dir=tmp, classifier=classifier,
                                        seed=seed, progress=progress)
        else:
            from hits_stamps.evaluation.evaluate import evaluate_model
            from hits_stamps.io import read_stamps

            model = modeldir.load_model(model_dir)
            stamps = read_stamps(data, trust_pickle=trust_pickle)
            _check_ids(stamps, data, "test")
            source = None
            if val_data is not None:
                from hits_stamps.evaluation.evaluate import threshold_from_validation
                from hits_stamps.stamps import GroupLeakError, check_disjoint_groups

                val_set = read_stamps(val_data, trust_pickle=trust_pickle)
                try:
                    check_disjoint_groups({f"test {data}": stamps, f"validation {val_data}": val_set})
                except GroupLeakError as exc:
                    raise HitsStampsError(f"--val-data must hold other objects than --data; {exc}") from None
                source = threshold_from_validation(model, val_set, mc_samples=mc_samples, progress=progress,
                                                   data_path=val_data)
            metrics = evaluate_model(model, stamps, tmp, mc_samples=mc_samples, progress=progress, data_path=data,
                                     threshold_fpr1=None if source is None else source["threshold"],
                                     threshold_source=source)
    if generator:
        console.print(f"wrote {out}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)))
        return
    console.print(f"wrote {out / modeldir.METRICS} ({model.name} on {metrics['n']} stamps, "
                  f"{metrics['n_objects']} objects)")
    for key in _SUMMARY_KEYS:
        v = metrics.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            ci = (metrics.get("ci95") or {}).get(key)
            console.print((f"{key}: {v:.6g}" if isinstance(v, float) else f"{key}: {v}")
                          + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""))
