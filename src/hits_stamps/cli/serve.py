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
    model_dir: Path = typer.Argument(..., help="A trained-model directory (from `hits-stamps train`)."),
    data: Path = typer.Option(..., "--data", help="Stamp file to classify (.h5 and .npz are streamed in chunks)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output CSV with columns id, p_real, label."),
    batch_size: int = typer.Option(64, "--batch-size", help="Stamps per forward pass."),
    backend: str = typer.Option("torch", "--backend", help="torch | onnxruntime"),
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
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Classify every stamp of a file in chunks with bounded memory; write id, p_real, label to a CSV."""
    from hits_stamps.serve import PredictConfig, predict_file

    config = PredictConfig(
        batch_size=batch_size, backend=backend, onnx_path=str(onnx) if onnx else None, engine=engine,
        scheduler=scheduler, workers=workers, threshold=threshold, chunk_rows=chunk_rows, device=device,
        mc_samples=mc_samples, seed=seed, threads=threads, trust_pickle=trust_pickle, limit=limit,
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
