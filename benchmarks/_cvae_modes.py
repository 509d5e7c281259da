"""Shared by the cvae pixel-mode benchmarks (cvae_modes_real.py, cvae_modes_run.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from hits_stamps.generation.sample import fit_sampling_models
from hits_stamps.stamps import StampSet
from hits_stamps.training.modeldir import CONFIG, write_json

KEYS = ("agreement_real", "agreement_bogus", "frechet_real", "frechet_bogus", "frechet_floor_real",
        "frechet_floor_bogus", "tstr_over_trtr")


def refit_copy(cvae_dir: str | Path, copy: Path, residual_units: str, fit_on: StampSet, seed: int) -> Path:
    """A copy of a cvae directory whose sampling models are refitted on `fit_on` with `residual_units`."""
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(cvae_dir, copy)
    config = json.loads((copy / CONFIG).read_text())
    config["model_kwargs"]["residual_units"] = residual_units
    write_json(copy / CONFIG, config)
    fit_sampling_models(copy, fit_on, seed=seed)
    return copy


def row(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one judging (evaluate_generator's result) that the mode tables show."""
    out = {k: result.get(k) for k in KEYS}
    out["tstr_recall"] = result.get("tstr_recall_per_class")
    out["physical_real"] = (result.get("physical") or {}).get("real", {}).get("generated")
    out["memorisation_ratio"] = (result.get("memorisation") or {}).get("ratio")
    return out


def show(name: str, values: dict[str, Any]) -> None:
    print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}, flush=True)
