"""`inject`: sources injected into real HiTS 2015 images and artefacts painted on them, differenced."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hits_stamps.cli._app import app, console
from hits_stamps.errors import HitsStampsError

PARTS = ("train", "val", "test")
VARIETIES = ("nominal", "varied")

SPLIT_HELP = ("Object split 'a,b,c' (fractions of train, val, test objects, stratified by class); "
              "with --part, use only that part's objects. The same --object-split and --split-seed give "
              "disjoint parts in build-real and inject.")


def variety_option(name: str):
    """The DifferencingVariety named on the command line."""
    from hits_stamps.differencing import NOMINAL, VARIED

    if name not in VARIETIES:
        raise HitsStampsError(f"--variety must be one of {list(VARIETIES)}; got {name!r}")
    return VARIED if name == "varied" else NOMINAL


def objects_option(sequences: Path, split: str | None, part: str | None, seed: int) -> np.ndarray | None:
    """Object names of one part of an object split, or None (every object) without --part."""
    from hits_stamps.realdata import read_sequences, split_objects

    if part is None and split is None:
        return None
    if part is None or split is None:
        raise HitsStampsError("--object-split and --part go together (e.g. --object-split 0.6,0.2,0.2 --part train)")
    if part not in PARTS:
        raise HitsStampsError(f"--part must be one of {list(PARTS)}; got {part!r}")
    try:
        fractions = [float(v) for v in split.split(",")]
    except ValueError as exc:
        raise HitsStampsError(f"--object-split must be three numbers like 0.6,0.2,0.2; got {split!r}") from exc
    if len(fractions) != 3 or not all(np.isfinite(f) and f >= 0 for f in fractions) or sum(fractions) <= 0:
        raise HitsStampsError(f"--object-split must be three non-negative numbers with a positive sum; got {split!r}")
    names = split_objects(read_sequences(sequences), fractions, seed)[PARTS.index(part)]
    if not names.size:
        raise HitsStampsError(f"--object-split {split} leaves no object in part {part!r}")
    return names


@app.command()
def inject(
    sequences: Path = typer.Argument(..., help="HiTS sequence file (.npz), e.g. "
                                     "../shared/data/hits2015/hits2015_sequences.npz."),
    n: int = typer.Option(10_000, "--n", help="Stamps to write (injections and bogus candidates)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same stamps)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz or .h5."),
    real_fraction: float = typer.Option(0.5, "--real-fraction", help="Share of injections (label 1)."),
    placements: str = typer.Option(
        "injected_star,injected_fading,injected_host,injected_random", "--placements",
        help="Comma-separated placements to mix (weights 35/20/25/20 for the default four)."),
    variety: str = typer.Option("varied", "--variety", help="Differencing: 'varied' (per-pair PSF, kernel, "
                                "registration, noise and template departures) or 'nominal'."),
    object_split: str = typer.Option(None, "--object-split", help=SPLIT_HELP),
    part: str = typer.Option(None, "--part", help="train, val or test: the part of --object-split to use."),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the object split."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Inject point sources into real HiTS 2015 epochs, paint artefacts on them, and difference (docs/simulation.md)."""
    from hits_stamps.cli.simulate import _check_out, _summary
    from hits_stamps.inject import REAL_PLACEMENTS, InjectConfig, inject_stamps
    from hits_stamps.io import write_stamps

    if n < 1:
        raise HitsStampsError(f"--n must be >= 1; got {n}")
    if not 0.0 <= real_fraction <= 1.0:
        raise HitsStampsError(f"--real-fraction must be in [0, 1]; got {real_fraction}")
    chosen = tuple(p.strip() for p in placements.split(",") if p.strip())
    unknown = [p for p in chosen if p not in REAL_PLACEMENTS]
    if unknown or not chosen:
        raise HitsStampsError(f"--placements: expected names from {list(REAL_PLACEMENTS)}; got {placements!r}")
    default = InjectConfig()
    weights = tuple(default.placement_weights[REAL_PLACEMENTS.index(p)] for p in chosen)
    cfg = InjectConfig(real_fraction=real_fraction, placements=chosen, placement_weights=weights)
    var = variety_option(variety)
    _check_out(out, overwrite)
    objects = objects_option(sequences, object_split, part, split_seed)
    t0 = time.perf_counter()
    with Progress(TextColumn("injecting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("inject", total=n)
        stamps = inject_stamps(n, seed=seed, sequences=sequences, config=cfg, variety=var, objects=objects,
                               progress=lambda done: bar.update(task, completed=done))
    elapsed = time.perf_counter() - t0
    write_stamps(stamps, out, overwrite=overwrite)
    console.print(f"wrote {out}: {_summary(stamps)} in {elapsed:.1f} s, from {stamps.n_groups()} objects")
    meta = stamps.meta
    eff = ", ".join(f"{k} {meta['written'][k]}/{meta['drawn'][k]}" for k in meta["quotas"] if meta["drawn"][k])
    console.print(f"kept/drawn per kind: {eff}")
