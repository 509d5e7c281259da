"""`generate`: sample new stamps of one class from a trained conditional VAE."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from hits_stamps.cli._app import app, console


@app.command()
def generate(
    model_dir: Path = typer.Argument(..., help="A trained generator directory (hits-stamps train --model cvae or "
                                     "--model diffusion)."),
    n: int = typer.Option(..., "--n", help="Number of stamps to generate."),
    label: str = typer.Option(..., "--label", help="Class of the new stamps: real or bogus."),
    kind: str | None = typer.Option(None, "--kind", help="Stamp kind (only for generators conditioned on kind)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same stamps."),
    mode: str | None = typer.Option(
        None, "--mode", help="residual: decoder location + correlated residual noise (the default when the model "
        "has a residual model); sample: draw every pixel from the decoder; loc: its location."),
    temperature: float = typer.Option(
        1.0, "--temperature", help="0..1: scale of the pixel deviations from the decoder location (1: as learned)."),
    latent: str | None = typer.Option(
        None, "--latent", help="aggregate: codes from the fitted per-class latent mixture; prior: N(0, I). "
        "Default: aggregate when the model has the mixture."),
    steps: int | None = typer.Option(None, "--steps", help="Diffusion models: DDIM steps (default: the model's)."),
    guidance: float | None = typer.Option(
        None, "--guidance", help="Diffusion models: classifier-free guidance weight (default: the model's, as tuned)."),
    snr_min: float | None = typer.Option(
        None, "--snr-min", help="Keep only stamps whose |SNR| peak (central 5x5) is at least this (drawn until N)."),
    snr_max: float | None = typer.Option(None, "--snr-max", help="Keep only stamps whose |SNR| peak is below this."),
    consistent: bool | None = typer.Option(
        None, "--consistent/--raw", help="consistent: keep the generated template and science (clipped to the "
        "training range) and derive difference and SNR through the differencing module (the default when the "
        "model directory has conditions.npz); raw: the four channels as the network draws them."),
    out: Path = typer.Option(..., "--out", "-o", help="Output stamp file (.npz or .h5)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Write N generated stamps of one class (kind 'generated', unique ids) in the stamp-file schema."""
    from hits_stamps.errors import HitsStampsError, StampFileError
    from hits_stamps.generation.sample import generate as generate_stamps
    from hits_stamps.generation.sample import load_generator
    from hits_stamps.io import WRITE_FORMATS, _suffix, write_stamps
    from hits_stamps.io.atomic import check_writable

    if n < 1:
        raise HitsStampsError(f"--n must be >= 1; got {n}")
    if _suffix(out) not in WRITE_FORMATS:
        raise StampFileError(out, None, f"an output extension in {sorted(WRITE_FORMATS)}",
                             f"extension {_suffix(out) or '(none)'!r}")
    check_writable(out, overwrite)
    model = load_generator(model_dir)
    t0 = time.perf_counter()
    if snr_min is None and snr_max is None:
        stamps = generate_stamps(model, n, label, kind=kind, seed=seed, mode=mode, temperature=temperature,
                                 latent=latent, consistent=consistent, steps=steps, guidance=guidance)
    else:
        from hits_stamps.generation.sample import generate_in_snr_range

        def report(kept: int, drawn: int) -> None:
            console.print(f"  {kept} of {n} kept, {drawn} drawn")

        stamps = generate_in_snr_range(
            model, n, label, snr_min=0.0 if snr_min is None else snr_min,
            snr_max=float("inf") if snr_max is None else snr_max, kind=kind, seed=seed, progress=report,
            mode=mode, temperature=temperature, latent=latent, consistent=consistent, steps=steps, guidance=guidance)
    seconds = time.perf_counter() - t0
    write_stamps(stamps, out, overwrite=overwrite)
    h, w = stamps.size
    drawn = stamps.meta.get("drawn")
    console.print(f"wrote {out}: {len(stamps)} generated {stamps.meta['label']} stamps of {h}x{w}x{stamps.n_channels} "
                  f"in {seconds:.2f} s ({len(stamps) / max(seconds, 1e-9):.0f} stamps/s"
                  + (f", {drawn} drawn, acceptance {stamps.meta['acceptance']:.1%})" if drawn else ")"))
    cons = stamps.meta.get("consistency", {})
    if cons.get("derived"):
        console.print(f"  difference and SNR derived through differencing; {cons['clipped_pixels']} template/science "
                      f"pixels clipped to the training range in {cons['stamps_with_clipped_pixels']} stamps; "
                      f"{cons['stamps_with_nan_mask']} stamps with no-data (NaN) masks")


@app.command("tune-generator")
def tune_generator(
    model_dir: Path = typer.Argument(..., help="A trained generator directory (cvae or diffusion)."),
    classifier: Path = typer.Option(
        ..., "--classifier", help="A classifier trained on the same real stamps, NOT the one that will judge the "
        "generator (e.g. deephits when rotinv-cnn judges)."),
    temperatures: str = typer.Option("0.25,0.5,0.75,1", "--temperatures", help="Comma-separated values in (0, 1]."),
    guidance: str = typer.Option("0,0.5,1,2,3", "--guidance", help="Diffusion models: comma-separated guidance "
                                 "weights (>= 0) to choose from."),
    n_per_condition: int = typer.Option(300, "--n", help="Stamps generated per condition (diffusion: per class) and "
                                        "setting."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated stamps."),
) -> None:
    """Choose sampling settings with a selection classifier (cvae: each condition's pixel temperature; diffusion:
    the guidance weight) and store them in the model directory."""
    from rich.table import Table

    from hits_stamps.generation.sample import is_diffusion, load_generator
    from hits_stamps.generation.tune import tune_guidance, tune_temperatures

    if is_diffusion(load_generator(model_dir)):
        result = tune_guidance(model_dir, classifier, guidances=_numbers(guidance, "--guidance"),
                               n_per_class=n_per_condition, seed=seed,
                               progress=True)
        table = Table(title=f"agreement of {Path(result['classifier']).name} with the generated stamps")
        for col in ("guidance", "real", "bogus"):
            table.add_column(col, justify="right")
        for w, row in result["agreement"].items():
            table.add_row(f"{w:g}" + (" (chosen)" if w == result["chosen"] else ""), f"{row['real']:.3f}",
                          f"{row['bogus']:.3f}")
        console.print(table)
        console.print(f"wrote guidance {result['chosen']:g} into {model_dir} (config.json: sampling)")
        return

    result = tune_temperatures(model_dir, classifier, temperatures=_numbers(temperatures, "--temperatures"),
                               n_per_condition=n_per_condition, seed=seed,
                               progress=True)
    table = Table(title=f"agreement of {Path(result['classifier']).name} with the generated stamps")
    table.add_column("condition")
    table.add_column("class")
    for t in result["temperatures"]:
        table.add_column(f"T={t:g}", justify="right")
    table.add_column("chosen", justify="right")
    for name, row in result["conditions"].items():
        table.add_row(name, row["label"], *(f"{a:.3f}" for a in row["agreement"].values()), f"{row['chosen']:g}")
    console.print(table)
    console.print(f"wrote the chosen temperatures into {model_dir} (config.json: sampling)")


def _numbers(text: str, option: str) -> tuple[float, ...]:
    """'0.5,1,2' -> (0.5, 1.0, 2.0); anything else is a one-line error naming the option."""
    from hits_stamps.errors import HitsStampsError

    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise HitsStampsError(f"{option} must be comma-separated numbers; got {text!r}") from exc
