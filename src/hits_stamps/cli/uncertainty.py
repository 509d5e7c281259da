"""`calibrate-uncertainty`: how a model (or an ensemble) reports its uncertainty, fitted on validation objects."""

from __future__ import annotations

from pathlib import Path

import typer

from hits_stamps.cli._app import app, console
from hits_stamps.errors import HitsStampsError


@app.command("calibrate-uncertainty")
def calibrate_uncertainty(
    directory: Path = typer.Argument(..., help="A trained-model directory, or an ensemble directory (with --member)."),
    data: Path = typer.Option(..., "--data", help="Labelled validation stamps (objects never used for testing)."),
    method: str = typer.Option(
        "", "--method", help="softmax | flipout | mc-dropout | ensemble (default: flipout for a Bayesian model, "
        "ensemble with --member, else softmax)."),
    member: list[Path] = typer.Option(
        None, "--member", help="Ensemble: a member's model directory (repeat the option); stored relative to "
        "DIRECTORY."),
    calibration: str = typer.Option("temperature", "--calibration", help="none | temperature | platt | isotonic"),
    mc_samples: int | None = typer.Option(
        None, "--mc-samples", help="Monte-Carlo samples (flipout, mc-dropout; default: the model's recipe, 30)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the Monte-Carlo samples."),
    referral: str = typer.Option(
        "entropy", "--referral", help="Uncertainty to refer by: entropy | mutual_information."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing predictive.json."),
) -> None:
    """Fit a post-hoc calibration of an uncertainty method on labelled validation stamps; write predictive.json.

    `hits-stamps predict DIRECTORY` then uses the method (pass --method raw there for the network
    alone). See docs/uncertainty.md for the methods and for choosing one on validation objects.
    """
    import os

    import numpy as np

    from hits_stamps.evaluation.calibration import ece, nll
    from hits_stamps.geometry import plan_for_model
    from hits_stamps.io import read_stamps
    from hits_stamps.predictive import Predictive
    from hits_stamps.training.modeldir import load_model

    paths = [Path(m) for m in member] if member else [directory]
    models = [load_model(p) for p in paths]
    if not method:
        method = "ensemble" if member else (
            "flipout" if models[0].spec.task.bayesian else "softmax")
    pred = Predictive(models, method, mc_samples=mc_samples or models[0].mc_samples, seed=seed, referral=referral)
    stamps = read_stamps(data)
    labelled = stamps.labels >= 0
    if not labelled.any():
        raise HitsStampsError(f"{data} [labels]: expected labelled validation stamps (0/1); found none labelled")
    stamps = stamps[labelled]
    images = plan_for_model(models[0], stamps.images.shape[1:], stamps.channels, source=str(data)).apply(stamps.images)
    raw = pred.raw_sample_proba(images)  # (S, N, 2)
    pred.fit_calibration(calibration, raw, stamps.labels)
    y = stamps.labels
    before, after = raw.mean(0)[:, 1], pred.calibrator.transform(raw).mean(0)[:, 1]
    objects = f", {stamps.n_groups()} objects" if stamps.groups is not None else ""
    note = f"calibration fitted on {data.name} ({len(y)} labelled stamps{objects})"
    rel = [os.path.relpath(p.resolve(), directory.resolve()) for p in paths]
    out = pred.save(directory, members=rel, note=note, overwrite=overwrite)
    console.print(f"wrote {out}: {pred.describe()}", soft_wrap=True)
    console.print(f"on the {len(y)} fitting stamps{objects} (in-sample, optimistic): ECE {ece(y, before):.4f} -> "
                  f"{ece(y, after):.4f}, NLL {nll(y, before):.4f} -> {nll(y, after):.4f}", soft_wrap=True)
    if np.all(y == y[0]):
        console.print("note: the validation stamps hold one class only", soft_wrap=True)
