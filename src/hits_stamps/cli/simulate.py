"""`simulate`, `build-real` and `calibrate`: make realistic HiTS stamps and check them against real pixels."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hits_stamps.cli._app import app, console
from hits_stamps.errors import HitsStampsError, StampFileError


def _check_out(out: Path, overwrite: bool) -> None:
    from hits_stamps.io import WRITE_FORMATS, _suffix
    from hits_stamps.io.atomic import check_writable

    if _suffix(out) not in WRITE_FORMATS:
        raise StampFileError(out, None, f"an output extension in {sorted(WRITE_FORMATS)}",
                             f"extension {_suffix(out) or '(none)'!r}")
    check_writable(out, overwrite)


def _summary(stamps) -> str:
    bal = stamps.class_balance()
    kinds = ", ".join(f"{k} {v}" for k, v in stamps.kind_counts().items())
    return f"{len(stamps)} stamps (real {bal['real']}, bogus {bal['bogus']}); kinds: {kinds}"


@app.command()
def simulate(
    n: int = typer.Option(20_000, "--n", help="Number of stamps."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same stamps)."),
    real_fraction: float = typer.Option(0.5, "--real-fraction", help="Share of real (label 1) stamps."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz or .h5."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    workers: int = typer.Option(0, "--workers", help="Threads (0: up to 2); the result does not depend on it."),
) -> None:
    """Simulate HiTS stamps from real HiTS 2015 observing conditions (see docs/simulation.md)."""
    from hits_stamps.io import write_stamps
    from hits_stamps.simulate import simulate_stamps

    if n < 1:
        raise HitsStampsError(f"--n must be >= 1; got {n}")
    if not 0.0 <= real_fraction <= 1.0:
        raise HitsStampsError(f"--real-fraction must be in [0, 1]; got {real_fraction}")
    _check_out(out, overwrite)
    t0 = time.perf_counter()
    with Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=n < 5000) as bar:
        task = bar.add_task("simulate", total=n)
        stamps = simulate_stamps(n, seed=seed, real_fraction=real_fraction, workers=workers or None,
                                 progress=lambda done: bar.update(task, completed=done))
    elapsed = time.perf_counter() - t0
    write_stamps(stamps, out, overwrite=overwrite)
    rate = f" in {elapsed:.1f} s ({len(stamps) / elapsed:,.0f} stamps/s)" if elapsed > 0 and len(stamps) else ""
    console.print(f"wrote {out}: {_summary(stamps)}{rate}")


@app.command("build-real")
def build_real_cmd(
    sequences: Path = typer.Argument(..., help="HiTS sequence file (.npz), e.g. "
                                     "../shared/data/hits2015/hits2015_sequences.npz."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz or .h5."),
    variety: str = typer.Option("nominal", "--variety", help="Differencing: 'nominal' or 'varied' (per-pair PSF, "
                                "kernel, registration, noise and template departures)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --variety draws."),
    object_split: str = typer.Option(None, "--object-split", help="Object split 'a,b,c' (train, val, test "
                                     "fractions, stratified by class), with --part."),
    part: str = typer.Option(None, "--part", help="train, val or test: the part of --object-split to build."),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the object split."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Build labelled real-pixel difference stamps from HiTS 2015 image sequences."""
    from hits_stamps.cli.inject import objects_option, variety_option
    from hits_stamps.io import write_stamps
    from hits_stamps.realdata import build_real

    var = variety_option(variety)
    _check_out(out, overwrite)
    objects = objects_option(sequences, object_split, part, split_seed)
    t0 = time.perf_counter()
    with console.status("building real stamps") as status:
        stamps = build_real(sequences, progress=lambda msg: status.update(msg), objects=objects, variety=var,
                            seed=seed)
    elapsed = time.perf_counter() - t0
    write_stamps(stamps, out, overwrite=overwrite)
    console.print(f"wrote {out}: {_summary(stamps)} in {elapsed:.1f} s")
    meta = stamps.meta
    console.print(f"{meta['pairs_differenced']} epoch pairs differenced from {meta['cutouts']} cutouts of "
                  f"{meta['objects']} objects; not written: "
                  + (", ".join(f"{k} {v}" for k, v in meta["skipped"].items()) or "none"))


@app.command()
def calibrate(
    sequences: Path = typer.Option(None, "--sequences", help="HiTS sequence file (default: ../shared/data/hits2015/"
                                   "hits2015_sequences.npz, else the packaged sample)."),
    n: int = typer.Option(5000, "--n", help="Simulated star cutouts."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    out: Path = typer.Option(Path("calibration"), "--out", "-o", help="Output folder for the table, JSON and figure."),
) -> None:
    """Compare simulated science images with the real HiTS 2015 cutouts (KS distance per statistic)."""
    from hits_stamps.realdata import SHARED_SEQUENCES, default_sequences_path
    from hits_stamps.simulate.calibrate import calibrate as run_calibration
    from hits_stamps.simulate.calibrate import format_table, write_calibration

    if n < 10:
        raise HitsStampsError(f"--n must be >= 10; got {n}")
    path = sequences if sequences is not None else default_sequences_path()
    if not Path(path).exists():
        raise StampFileError(path, None, f"a HiTS sequence file (pass --sequences, or provide {SHARED_SEQUENCES})",
                             "no such file")
    with console.status("calibrating"):
        cal = run_calibration(path, n=n, seed=seed)
    paths = write_calibration(cal, out)
    console.print(f"real: {path}")
    console.print(format_table(cal), highlight=False, soft_wrap=True)
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))
