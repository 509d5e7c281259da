"""`predict` and `export`: batch prediction over stamp files of any size, and ONNX export."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from hits_stamps.cli._app import app, console, console_err
from hits_stamps.errors import HitsStampsError

EXPORT_FORMATS = ("onnx",)


@app.command()
def predict(
    model_dir: Path = typer.Argument(..., help="A trained-model directory (from `hits-stamps train`), or an ensemble "
                                     "directory with a predictive.json (`hits-stamps calibrate-uncertainty`)."),
    data: Path = typer.Option(..., "--data", help="Stamp file to classify (.h5 and .npz are streamed in chunks)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output CSV with columns id, p_real, label."),
    batch_size: int = typer.Option(64, "--batch-size", help="Stamps per forward pass."),
    backend: str = typer.Option("auto", "--backend", help="auto (onnxruntime for a deterministic classifier on a "
                                "large file when installed, else torch) | torch | onnxruntime"),
    onnx: Path | None = typer.Option(
        None, "--onnx", help="ONNX file from `hits-stamps export` (onnxruntime backend; default: export in memory)."
    ),
    engine: str = typer.Option("local", "--engine", help="local | dask"),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="Dask scheduler address (default: a LocalCluster on 127.0.0.1)."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Dask LocalCluster worker processes (default: CPUs)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted prediction: keep finished rows."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output CSV."),
    threshold: float = typer.Option(0.5, "--threshold", help="label = 1 when p_real >= threshold."),
    chunk_rows: int | None = typer.Option(
        None, "--chunk-rows", help="Rows read per chunk (default: the file's chunk size, a multiple of the batch)."
    ),
    mc_samples: int | None = typer.Option(
        None, "--mc-samples", help="Bayesian models, torch backend: Monte-Carlo samples (default: the model's)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the Monte-Carlo samples (Bayesian models)."),
    device: str = typer.Option("cpu", "--device", help="torch device: cpu | cuda (onnxruntime uses the CPU)."),
    threads: int | None = typer.Option(None, "--threads", help="Local engine: intra-op threads (default: all)."),
    limit: int | None = typer.Option(None, "--limit", help="Predict only the first N stamps of the file."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow pickle stamp files (they can run code)."),
    uncertainty: bool = typer.Option(
        False, "--uncertainty", help="Bayesian models and saved uncertainty methods: add columns p_std, entropy, "
        "mutual_information."
    ),
    refer_above: float | None = typer.Option(
        None, "--refer-above", help="Add a column refer = 1 where the predictive entropy >= this (nats; see "
        "`hits-stamps referral-threshold`); implies --uncertainty."
    ),
    method: str = typer.Option(
        "saved", "--method", help="saved: the uncertainty method of MODEL_DIR/predictive.json when present "
        "(`hits-stamps calibrate-uncertainty`; an ensemble directory) | raw: the network alone."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Classify every stamp of a file in chunks with bounded memory; write id, p_real, label to a CSV.

    Channels are matched to the model's by name and stamps centre-cropped or NaN-padded to its size
    (a warning says what was done); alert packets (.avro, or a folder of them) are read directly.
    """
    from hits_stamps.serve import PredictConfig, predict_file

    config = PredictConfig(
        batch_size=batch_size, backend=backend, onnx_path=str(onnx) if onnx else None, engine=engine,
        scheduler=scheduler, workers=workers, threshold=threshold, chunk_rows=chunk_rows, device=device,
        mc_samples=mc_samples, seed=seed, threads=threads, trust_pickle=trust_pickle, limit=limit,
        uncertainty=uncertainty, refer_above=refer_above, method=method,
    )
    with _Bar(progress, f"predict {data.name}") as bar:
        summary = predict_file(model_dir, data, out, config, resume=resume, overwrite=overwrite, progress=bar.update)
    if summary.n_skipped:
        console.print(f"resumed: {summary.n_skipped} finished rows kept", soft_wrap=True)
    rate = summary.stamps_per_second
    console.print(
        f"wrote {summary.out}: {summary.n_total} rows; this run {summary.n_written} stamps "
        f"({summary.n_real} real at threshold {threshold:g})"
        + (f", {rate:,.0f} stamps/s" if summary.n_written and rate == rate else ""),
        soft_wrap=True,
    )
    console.print(f"engine {summary.engine}, backend {summary.backend}, network: {summary.network}", soft_wrap=True)
    if not summary.streamed:
        console.print(f"note: {data} was loaded whole (only .h5 and .npz are streamed)", soft_wrap=True)


@app.command("referral-threshold")
def referral_threshold_cmd(
    model_dir: Path = typer.Argument(..., help="A trained Bayesian classifier directory."),
    data: Path = typer.Option(..., "--data", help="Labelled validation stamps (labels 0/1), never the test set."),
    target_accuracy: float = typer.Option(..., "--target-accuracy", help="Accuracy wanted on the kept stamps."),
    mc_samples: int | None = typer.Option(
        None, "--mc-samples", help="Monte-Carlo samples, as you will use in predict (default: the model's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the Monte-Carlo samples."),
    threshold: float = typer.Option(0.5, "--threshold", help="label = 1 when p_real >= threshold."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Pick the predictive-entropy cut for `predict --refer-above` from a labelled validation set.

    Refers the fewest stamps such that the kept ones reach --target-accuracy.
    """
    import json

    from hits_stamps.geometry import plan_for_model
    from hits_stamps.io import read_stamps
    from hits_stamps.montecarlo import predict_samples
    from hits_stamps.training.modeldir import load_model
    from hits_stamps.uncertainty import predictive_entropy, referral_threshold

    model = load_model(model_dir)
    if not model.spec.task.bayesian:
        raise HitsStampsError(f"{model_dir}: {model.name} is a {model.spec.task}; the referral cut is on the "
                              "Monte-Carlo predictive entropy of a Bayesian classifier (seed-bnn, bayes-cnn)")
    mc_samples = mc_samples or model.mc_samples
    stamps = read_stamps(data)
    labelled = stamps.labels >= 0
    if not labelled.any():
        raise HitsStampsError(f"{data} [labels]: expected labelled validation stamps (0/1); found none labelled")
    stamps = stamps[labelled]
    images = plan_for_model(model, stamps.images.shape[1:], stamps.channels, source=str(data)).apply(stamps.images)
    samples = predict_samples(model, images, n_samples=mc_samples, seed=seed)  # (S, N, 2)
    result = referral_threshold(stamps.labels, samples.mean(0)[:, 1], predictive_entropy(samples), target_accuracy,
                                threshold=threshold)
    result.update({"mc_samples": mc_samples, "target_accuracy": target_accuracy})
    if as_json:
        console.print_json(json.dumps(result, allow_nan=False, default=str) if result["cut"] != float("inf")
                           else json.dumps({**result, "cut": None}))
        return
    cut = "none needed (refer nothing)" if result["cut"] == float("inf") else f"{result['cut']:.6g} nats"
    console.print(
        f"referral cut on predictive entropy: {cut}; on {result['n']} validation stamps it refers "
        f"{result['fraction_referred']:.1%} and the kept ones have accuracy {result['accuracy_kept']:.4f}",
        soft_wrap=True,
    )
    if result["cut"] != float("inf"):
        console.print(f"use: hits-stamps predict {model_dir} --data FILE --out preds.csv --mc-samples {mc_samples} "
                      f"--refer-above {result['cut']:.6g}", soft_wrap=True)


@app.command()
def export(
    model_dir: Path = typer.Argument(..., help="A trained classifier directory."),
    fmt: str = typer.Option("onnx", "--format", help="Export format: onnx."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file, e.g. model.onnx."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Export a classifier (softmax included, dynamic batch) for serving; checked against torch."""
    if fmt not in EXPORT_FORMATS:
        raise HitsStampsError(f"--format must be one of {EXPORT_FORMATS}; got {fmt!r}")
    from hits_stamps.serve.export import export_onnx, network_kind
    from hits_stamps.training.modeldir import load_model

    model = load_model(model_dir)
    kind = network_kind(model)
    path = export_onnx(model, out, overwrite=overwrite)
    import onnx as onnx_lib

    meta = {p.key: p.value for p in onnx_lib.load(str(path), load_external_data=False).metadata_props}
    diff = meta.get("hits_stamps.parity_max_abs_diff", "?")
    c, h, w = len(model.config["input"]["channels"]), *model.config["input"]["size"]
    console.print(
        f"wrote {path}: input (batch, {h}, {w}, {c}) raw stamps ({', '.join(model.config['input']['channels'])}) "
        "-> probabilities (batch, 2), nonfinite_pixels (batch,)", soft_wrap=True
    )
    console.print(f"parity with torch: max |dp| = {diff} on random stamps with NaN pixels", soft_wrap=True)
    if kind == "mean":
        console.print(
            "note: Bayesian model exported as its posterior-mean network (deterministic); its p_real is not the "
            "Monte-Carlo mean that the torch backend computes",
            soft_wrap=True,
        )
    console.print(
        f"preprocessing is in the graph (nan_policy {model.preprocessor.config.nan_policy}, scaling "
        f"{model.preprocessor.config.scaling}): feed raw stamps (see docs/serving.md)", soft_wrap=True
    )


class _Bar:
    """A rich progress bar over stamps (stderr); silent when disabled."""

    def __init__(self, enabled: bool, description: str):
        self.enabled, self.description = enabled, description
        self._p = None
        self._task = None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self._p = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console_err,
            )
            self._p.__enter__()
        return self

    def update(self, done: int, total: int) -> None:
        if self._p is None:
            return
        if self._task is None:
            self._task = self._p.add_task(self.description, total=total, completed=done, rate="")
            self._first = done
            self._t0 = time.perf_counter()
            return
        dt = time.perf_counter() - self._t0
        rate = f"{(done - self._first) / dt:,.0f} stamps/s" if dt > 0 else ""
        self._p.update(self._task, completed=done, rate=rate)

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)
