"""Evaluate a trained classifier on a labelled stamp set: metrics.json, predictions and figures.

`evaluate_model` writes into `out_dir`:

    metrics.json            classification metrics (see `metrics.classification_metrics`) with
                            bootstrap intervals over the set's objects (`stamps.groups`), merged
                            with the calibration/uncertainty report (ece, nll, referral accuracy)
    predictions.csv         id, label, p_real for every labelled stamp
    training_curves.png     accuracy and loss vs epoch, training vs validation
    roc.png                 ROC curve with the FPR = 1% operating point(s)
    confusion_matrix.png    counts and row percentages at threshold 0.5
    completeness_purity.png completeness and purity vs SNR (when the stamps have SNRs)
    misclassified.png       the most confidently misclassified stamps, all channels

The FPR = 1% threshold is honest only when chosen on other objects: `threshold_from_validation`
picks it on a labelled validation set, and `evaluate_model(..., threshold_fpr1=...)` applies it.

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

from hits_stamps import plotting as plots
from hits_stamps.errors import HitsStampsError
from hits_stamps.evaluation.calibration import mc_sample_count, uncertainty_report
from hits_stamps.evaluation.intervals import DEFAULT_RESAMPLES
from hits_stamps.evaluation.metrics import TARGET_FPR, classification_metrics, fnr_at_fpr, threshold_at_fpr
from hits_stamps.io.atomic import atomic_path
from hits_stamps.montecarlo import predict_samples
from hits_stamps.results import EvaluationResult
from hits_stamps.stamps import StampSet
from hits_stamps.training import modeldir
from hits_stamps.training.modeldir import TrainedClassifier

CHUNK = 8192  # stamps per prediction chunk (a multiple of the 1024-stamp batch)


def predict_with_progress(model: TrainedClassifier, stamps: StampSet, mc_samples: int | None = None,
                          progress: bool = True, batch_size: int = 1024, device: str = "cpu") -> np.ndarray:
    """`model.predict_proba` over `stamps` in chunks, with a progress bar; returns (N, 2).

    The Monte-Carlo seed of each chunk is its start index, so the result equals one
    `predict_proba(stamps, seed=0)` call.
    """
    model.check_input(stamps)
    parts = _chunked(model, stamps, progress, lambda part, start: model.predict_proba(
        part, batch_size=batch_size, device=device, mc_samples=mc_samples, seed=start))
    return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.float32)


def mc_samples_with_progress(model: TrainedClassifier, stamps: StampSet, n_samples: int, progress: bool = True,
                             batch_size: int = 1024, device: str = "cpu") -> np.ndarray:
    """Monte-Carlo probabilities (S, N, 2) over `stamps` in chunks, with a progress bar.

    Seeded like `predict_with_progress`, so `.mean(0)` equals its result for the same `n_samples`.
    """
    model.check_input(stamps)
    parts = _chunked(model, stamps, progress, lambda part, start: predict_samples(
        model, part, n_samples=n_samples, batch_size=batch_size, seed=start, device=device))
    return np.concatenate(parts, axis=1) if parts else np.zeros((n_samples, 0, 2), dtype=np.float32)


def _chunked(model: TrainedClassifier, stamps: StampSet, progress: bool, fn) -> list[np.ndarray]:
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


def _labelled_only(stamps: StampSet, what: str) -> tuple[StampSet, int]:
    """(the labelled stamps, how many unlabelled were skipped); refuses a set without labels."""
    labelled = stamps.labels >= 0
    if not labelled.any():
        raise HitsStampsError(f"{what} has no labelled stamps (labels 0 or 1)")
    n_skipped = int((~labelled).sum())
    if n_skipped:
        warnings.warn(f"{n_skipped} unlabelled stamps (label -1) skipped in the {what}", stacklevel=3)
        stamps = stamps[labelled]
    return stamps, n_skipped


def threshold_from_validation(
    model: TrainedClassifier,
    val_stamps: StampSet,
    mc_samples: int | None = None,
    progress: bool = True,
    data_path: str | os.PathLike | None = None,
    device: str = "cpu",
    target_fpr: float = TARGET_FPR,
) -> dict[str, Any]:
    """The FPR = `target_fpr` threshold of `model` chosen on labelled validation stamps.

    The validation stamps must come from other objects than the test stamps (check with
    `hits_stamps.stamps.check_disjoint_groups`). Bayesian models average `mc_samples` Monte-Carlo
    passes, like `evaluate_model`. Returns {"threshold", "target_fpr", "fpr", "fnr" (both on the
    validation set), "n", "n_objects", "n_real", "n_bogus", "data"}: pass "threshold" to
    `evaluate_model(threshold_fpr1=...)` and the whole dict as its `threshold_source`.
    """
    val, _ = _labelled_only(val_stamps, "validation data")
    if model.spec.task.bayesian:
        mc_samples = mc_sample_count(mc_samples, model)
    else:
        mc_samples = None
    p = predict_with_progress(model, val, mc_samples=mc_samples, progress=progress, device=device)[:, 1]
    try:
        thr = threshold_at_fpr(val.labels, p, target_fpr)
    except ValueError as exc:
        raise HitsStampsError(f"{data_path or 'validation data'}: {exc}") from None
    fnr, _ = fnr_at_fpr(val.labels.astype(np.int64), p.astype(np.float64), target_fpr)
    is_bogus = val.labels == 0
    return {
        "threshold": thr,
        "target_fpr": target_fpr,
        "fpr": float(np.mean(p[is_bogus] >= thr)),
        "fnr": fnr,
        "n": len(val),
        "n_objects": val.n_groups(),
        "n_real": int(np.sum(~is_bogus)),
        "n_bogus": int(np.sum(is_bogus)),
        "data": str(data_path) if data_path is not None else None,
    }


def evaluate_model(
    model: TrainedClassifier,
    stamps: StampSet,
    out_dir: str | os.PathLike,
    mc_samples: int | None = None,
    progress: bool = True,
    data_path: str | os.PathLike | None = None,
    device: str = "cpu",
    threshold_fpr1: float | None = None,
    threshold_source: dict[str, Any] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Score `model` on the labelled stamps of `stamps`; write metrics, predictions and figures.

    Unlabelled stamps (label -1) are skipped and counted (`n_unlabelled_skipped`). Intervals are a
    bootstrap over `stamps.groups` (`n_resamples` resamples, `seed`). `threshold_fpr1` is the
    FPR = 1% threshold chosen on validation objects (`threshold_from_validation`); the test FNR and
    FPR at it are reported as fnr_at_val_threshold / fpr_at_val_threshold, and `threshold_source`
    (what it was chosen on) is stored as metrics["threshold_source"]. Returns the metrics dict
    (`hits_stamps.results.EvaluationResult.to_json()`) that is written to out_dir/metrics.json and to
    the model directory's metrics.json.
    """
    if not model.spec.task.classifies:
        raise HitsStampsError(f"{model.path}: {model.name} is a generator; evaluate it with the generator judge")
    model.check_input(stamps)
    stamps, n_skipped = _labelled_only(stamps, "evaluation data")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    samples = None
    if model.spec.task.bayesian:  # one Monte-Carlo pass serves the metrics and the uncertainty
        samples = mc_samples_with_progress(model, stamps, mc_sample_count(mc_samples, model), progress=progress,
                                           device=device)
        probs = samples.mean(axis=0)
    else:
        probs = predict_with_progress(model, stamps, progress=progress, device=device)
    seconds = time.perf_counter() - t0
    p_real = probs[:, 1]
    scores = classification_metrics(stamps.labels, p_real, snr=stamps.snr, kind=stamps.kind, groups=stamps.groups,
                                    threshold_fpr1=threshold_fpr1, n_resamples=n_resamples, seed=seed)
    run = {
        "threshold_source": None if threshold_fpr1 is None else (threshold_source or {"threshold": threshold_fpr1}),
        "model": model.name,
        "model_dir": str(model.path),
        "data": str(data_path) if data_path is not None else None,
        "n_parameters": model.n_parameters,
        "n_unlabelled_skipped": n_skipped,
        "predict_seconds": seconds,
        "stamps_per_second": len(stamps) / seconds if seconds > 0 else None,
    }
    report = uncertainty_report(model, stamps, out, probs=probs, mc_samples=mc_samples, samples=samples)
    result = EvaluationResult.from_parts(scores, run, report)  # classification keys take precedence
    metrics = result.to_json()

    _write_predictions(out / "predictions.csv", stamps, p_real)
    title = f"{model.name} ({len(stamps)} stamps)"
    plots.plot_training_curves(model.history, out / "training_curves.png", title=f"{model.name}: training")
    plots.plot_roc(stamps.labels, p_real, out / "roc.png", title=title, metrics=metrics)
    plots.plot_confusion_matrix(result.confusion_matrix, out / "confusion_matrix.png", title=title)
    if metrics.get("completeness_purity"):
        plots.plot_completeness_purity(metrics["completeness_purity"], out / "completeness_purity.png", title=title)
    plots.plot_misclassified(stamps, p_real, out / "misclassified.png")

    result.write(out / modeldir.METRICS)
    try:
        result.write(Path(model.path) / modeldir.METRICS)
    except OSError as exc:
        warnings.warn(f"could not store metrics in the model directory {model.path}: {exc}", stacklevel=2)
    return metrics


__all__ = ["evaluate_model", "predict_with_progress", "threshold_from_validation"]
