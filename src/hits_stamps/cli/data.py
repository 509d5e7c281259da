"""`info` and `convert`: look at and convert stamp files (and describe model directories)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from hits_stamps.cli._app import app, console
from hits_stamps.io import read_stamps, write_stamps


@app.command()
def info(
    path: Path = typer.Argument(..., help="A stamp file (.npz, .h5, ...) or a model directory."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow reading pickle files (they can run code)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Shape, channels, class balance, kinds, non-finite counts and value ranges per channel.

    On a model directory: the model's summary. `--json` prints the same facts as strict JSON
    (a channel with no finite pixel has range null).
    """
    from hits_stamps.training.modeldir import is_model_dir

    if is_model_dir(path):
        _model_info(path, as_json)
        return
    stamps = read_stamps(path, trust_pickle=trust_pickle)
    s = stamps.summary()
    if as_json:
        console.print_json(json.dumps(s, allow_nan=False))
        return
    n, (h, w, c) = s["n"], s["shape"]
    say = functools.partial(console.print, soft_wrap=True, highlight=False)
    say(f"[bold]{escape(str(path))}[/bold]: {n} stamps of {h}x{w}x{c}")
    say(f"channels: {escape(', '.join(s['channels']))}")
    bal = s["class_balance"]
    say(f"labels: real {bal['real']}, bogus {bal['bogus']}, unknown {bal['unknown']}")
    if s["kinds"]:
        say(escape("kinds: " + ", ".join(f"{k} {v}" for k, v in s["kinds"].items())))
    say(f"non-finite pixels: {s['nan_count']} (in {s['stamps_with_nan']} stamps)")
    if s["duplicate_ids"]:
        from hits_stamps.stamps import describe_duplicates

        say(f"[yellow]{escape(describe_duplicates(stamps.duplicate_ids()))}[/yellow]")
    table = Table("channel", "min", "max", "non-finite pixels", "stamps with non-finite")
    for ch, rng in s["ranges"].items():
        lo, hi = ("-", "-") if rng is None else (f"{rng[0]:.4g}", f"{rng[1]:.4g}")
        table.add_row(escape(ch), lo, hi, str(s["nan_count_per_channel"][ch]),
                      str(s["stamps_with_nan_per_channel"][ch]))
    console.print(table)
    if s["columns"]:
        say(escape("columns: " + ", ".join(s["columns"])))


def _model_info(path: Path, as_json: bool) -> None:
    from hits_stamps.training.modeldir import METRICS, load_model, read_json

    model = load_model(path)
    cfg = model.config
    metrics_path = path / METRICS
    metrics = read_json(metrics_path) if metrics_path.exists() else None
    data = cfg.get("training_data", {})
    summary = {
        "model": model.name,
        "parameters": model.n_parameters,
        "channels": cfg["input"]["channels"],
        "input_size": cfg["input"]["size"],
        "training_data": data,
        "epochs_completed": cfg.get("epochs_completed"),
        "metrics": metrics,
    }
    if as_json:
        console.print_json(json.dumps(summary, default=str))
        return
    console.print(f"model: {model.name}")
    console.print(f"parameters: {model.n_parameters}")
    console.print(f"channels: {', '.join(cfg['input']['channels'])}")
    console.print(f"input size: {cfg['input']['size'][0]}x{cfg['input']['size'][1]}")
    console.print(
        f"training data: {data.get('path')} (sha256 {data.get('sha256')}, "
        f"{data.get('n_train')} train / {data.get('n_val')} val)"
    )
    console.print(f"epochs completed: {cfg.get('epochs_completed')}")
    if metrics:
        keys = ("n", "accuracy", "f1", "roc_auc", "fnr_at_fpr_1pct", "ece")
        console.print("metrics: " + ", ".join(
            f"{k} {metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), (int, float))
        ))
    else:
        console.print("metrics: none stored (run `hits-stamps evaluate`)")


@app.command()
def convert(
    src: Path = typer.Argument(
        ..., help="Input: .npz, .h5, Deep-HiTS/course pickle, FITS cube or folder, ZTF/Rubin .avro alerts."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz or .h5."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow reading pickle files (they can run code)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Convert a stamp file to the safe schema (.npz or .h5)."""
    from hits_stamps.io import WRITE_FORMATS, _suffix
    from hits_stamps.io.atomic import check_writable

    if _suffix(out) not in WRITE_FORMATS:
        from hits_stamps.errors import StampFileError

        raise StampFileError(out, None, f"an output extension in {sorted(WRITE_FORMATS)}",
                             f"extension {_suffix(out) or '(none)'!r}")
    check_writable(out, overwrite, make_parent=False)  # refuse before reading: nothing is written
    stamps = read_stamps(src, trust_pickle=trust_pickle)
    write_stamps(stamps, out, overwrite=overwrite)
    bal = stamps.class_balance()
    n, h, w, c = stamps.shape
    message = (f"wrote {out}: {n} stamps of {h}x{w}x{c} "
               f"(real {bal['real']}, bogus {bal['bogus']}, unknown {bal['unknown']})")
    skipped = stamps.meta.get("skipped") or []
    if skipped:
        message += f"; {len(skipped)} of {stamps.meta.get('n_packets', '?')} packets not converted (reasons above)"
    console.print(escape(message), soft_wrap=True, highlight=False)
