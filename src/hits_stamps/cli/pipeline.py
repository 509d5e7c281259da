"""`run` (the main job: data, every model, evaluation, generation, one HTML report) and `report`."""

from __future__ import annotations

from pathlib import Path

import typer

from hits_stamps.cli._app import app, console

DEFAULT_OUT = Path("hits-stamps-run")


@app.command()
def run(
    out: Path = typer.Option(DEFAULT_OUT, "--out", "-o", help="Run directory (created; resumed if it exists)."),
    quick: bool = typer.Option(False, "--quick", help="A small run (about 2 minutes) that exercises every step."),
    config: Path | None = typer.Option(None, "--config", help="TOML file overriding the default configuration."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Empty an existing run directory and start again."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    show_config: bool = typer.Option(False, "--show-config", help="Print the configuration as TOML and exit."),
) -> None:
    """The main job: simulate data, train and evaluate every model, judge generated stamps, write DIR/report.html.

    Also builds the real-pixel HiTS 2015 test set and writes DIR/summary.json. Started again with the same
    arguments it resumes, skipping finished steps.
    """
    from hits_stamps.pipeline import load_config, run_pipeline, to_toml

    cfg = load_config(config, quick=quick)
    if show_config:
        typer.echo(to_toml(cfg), nl=False)
        return
    console.print(f"[bold]hits-stamps run[/bold] -> {out}" + (" (quick preset)" if quick else "")
                  + (f", config {config}" if config else ""))
    run_pipeline(cfg, out, overwrite=overwrite, device=device, console=console)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A `hits-stamps run` directory."),
) -> None:
    """Rebuild DIR/summary.json and DIR/report.html from a run directory, without retraining."""
    from hits_stamps.pipeline import rebuild_report

    path = rebuild_report(run_dir)
    size = path.stat().st_size / 1e6
    console.print(f"wrote {path} ({size:.1f} MB)")
