"""Evaluate a trained classifier on a labelled stamp set: metrics.json, predictions and figures.

`evaluate_model` writes into `out_dir`:

    metrics.json            classification metrics (see `metrics.classification_metrics`) merged
                            with the calibration/uncertainty report (ece, nll, referral accuracy)
    predictions.csv         id, label, p_real for every labelled stamp
    training_curves.png     accuracy and loss vs epoch, training vs validation
    roc.png                 ROC curve with the FPR = 1% operating point
    confusion_matrix.png    counts and row percentages at threshold 0.5
    misclassified.png       the most confidently misclassified stamps, all channels

and copies metrics.json (with the data path) into the model directory as its latest evaluation.
"""

from __future__ import annotations

import csv
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hits_stamps.errors import HitsStampsError
from hits_stamps.evaluation import plots
from hits_stamps.evaluation.calibration import mc_sample_count, uncertainty_report
from hits_stamps.evaluation.metrics import classification_metrics
from hits_stamps.io.atomic import atomic_path
from hits_stamps.stamps import StampSet
from hits_stamps.training import modeldir
from hits_stamps.training.modeldir import TrainedModel

CHUNK = 8192  # stamps per prediction chunk (a multiple of the 1024-stamp batch)


def predict_with_progress(model: TrainedModel, stamps: StampSet, mc_samples: int | None = None,
                          progress: bool = True, batch_size: int = 1024, device: str = "cpu") -> np.ndarray:
    """`model.predict_proba` over `stamps` in chunks, with a progress bar; returns (N, 2).

    The Monte-Carlo seed of each chunk is its start index, so the result equals one
    `predict_proba(stamps, seed=0)` call.
    """
    model.check_input(stamps)
    parts = _chunked(model, stamps, progress, lambda part, start: model.predict_proba(
        part, batch_size=batch_size, device=device, mc_samples=mc_samples, seed=start))
    return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.float32)


def mc_samples_with_progress(model: TrainedModel, stamps: StampSet, n_samples: int, progress: bool = True,
                             batch_size: int = 1024, device: str = "cpu") -> np.ndarray:
    """Monte-Carlo probabilities (S, N, 2) over `stamps` in chunks, with a progress bar.

    Seeded like `predict_with_progress`, so `.mean(0)` equals its result for the same `n_samples`.
    """
    from hits_stamps.uncertainty import mc_predict_stamps

    model.check_input(stamps)
    parts = _chunked(model, stamps, progress, lambda part, start: mc_predict_stamps(
        model, part, n_samples=n_samples, batch_size=batch_size, seed=start, device=device))
    return np.concatenate(parts, axis=1) if parts else np.zeros((n_samples, 0, 2), dtype=np.float32)


def _chunked(model: TrainedModel, stamps: StampSet, progress: bool, fn) -> list[np.ndarray]:
    """fn(images[start:start + CHUNK], start) for every chunk, with a progress bar over large sets."""
    n = len(stamps)
    out = []
    bar = None
    if progress and n > CHUNK:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.__enter__()
        task = bar.add_task(f"predicting {model.name}", total=n)
    try:
        for start in range(0, n, CHUNK):
            part = stamps.images[start : start + CHUNK]
            out.append(fn(part, start))
            if bar is not None:
                bar.update(task, advance=len(part))
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    return out


def _write_predictions(path: Path, stamps: StampSet, p_real: np.ndarray) -> None:
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "label", "p_real"])
        for i, lab, p in zip(stamps.ids, stamps.labels, p_real, strict=True):
            w.writerow([i, int(lab), f"{p:.6g}"])


def evaluate_model(
    model: TrainedModel,
    stamps: StampSet,
    out_dir: str | os.PathLike,
    mc_samples: int | None = None,
    progress: bool = True,
    data_path: str | os.PathLike | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Score `model` on the labelled stamps of `stamps`; write metrics, predictions and figures.

    Unlabelled stamps (label -1) are skipped and counted (`n_unlabelled_skipped`). Returns the
    metrics dict that is written to out_dir/metrics.json and to the model directory's metrics.json.
    """
    if model.spec.task == "generator":
        raise HitsStampsError(f"{model.path}: {model.name} is a generator; evaluate it with the generator judge")
    model.check_input(stamps)
    labelled = stamps.labels >= 0
    if not labelled.any():
        raise HitsStampsError("evaluation data has no labelled stamps (labels 0 or 1)")
    n_skipped = int((~labelled).sum())
    if n_skipped:
        warnings.warn(f"{n_skipped} unlabelled stamps (label -1) skipped in the evaluation", stacklevel=2)
        stamps = stamps[labelled]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    samples = None
    if model.spec.task == "bayesian-classifier":  # one Monte-Carlo pass serves the metrics and the uncertainty
        samples = mc_samples_with_progress(model, stamps, mc_sample_count(mc_samples), progress=progress,
                                           device=device)
        probs = samples.mean(axis=0)
    else:
        probs = predict_with_progress(model, stamps, progress=progress, device=device)
    seconds = time.perf_counter() - t0
    p_real = probs[:, 1]
    metrics = classification_metrics(stamps.labels, p_real, snr=stamps.snr, kind=stamps.kind)
    metrics.update({
        "model": model.name,
        "model_dir": str(model.path),
        "data": str(data_path) if data_path is not None else None,
        "n_parameters": model.n_parameters,
        "n_unlabelled_skipped": n_skipped,
        "predict_seconds": seconds,
        "stamps_per_second": len(stamps) / seconds if seconds > 0 else None,
    })

    report = uncertainty_report(model, stamps, out, probs=probs, mc_samples=mc_samples, samples=samples)
    for key, value in (report or {}).items():
        metrics.setdefault(key, value)  # classification keys above take precedence

    _write_predictions(out / "predictions.csv", stamps, p_real)
    title = f"{model.name} ({len(stamps)} stamps)"
    plots.plot_training_curves(model.history, out / "training_curves.png", title=f"{model.name}: training")
    plots.plot_roc(stamps.labels, p_real, out / "roc.png", title=title, metrics=metrics)
    plots.plot_confusion_matrix(metrics["confusion_matrix"], out / "confusion_matrix.png", title=title)
    plots.plot_misclassified(stamps, p_real, out / "misclassified.png")

    modeldir.write_json(out / modeldir.METRICS, metrics)
    try:
        modeldir.write_json(Path(model.path) / modeldir.METRICS, metrics)
    except OSError as exc:
        warnings.warn(f"could not store metrics in the model directory {model.path}: {exc}", stacklevel=2)
    return metrics


__all__ = ["evaluate_model", "predict_with_progress"]
