"""Shared by the cvae benchmarks (bench_generation.py, cvae_latent_components.py, cvae_modes_*.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from hits_stamps.generation.sample import fit_sampling_models, train_config_of
from hits_stamps.stamps import StampSet
from hits_stamps.training.modeldir import CONFIG, write_json

KEYS = ("agreement_real", "agreement_bogus", "frechet_real", "frechet_bogus", "frechet_floor_real",
        "frechet_floor_bogus", "tstr_over_trtr")


def generator_split(tm, stamps: StampSet) -> tuple[StampSet, StampSet]:
    """The training loop's own split of the stamps a cvae was given (a prefix of `stamps`): (fitted on, held out)."""
    cfg = train_config_of(tm)
    n = tm.config["training_data"]["n_train"] + tm.config["training_data"]["n_val"]
    part = stamps[:n] if n < len(stamps) else stamps  # the stamps the generator was given (a prefix, see select)
    return part.split((1 - cfg.val_fraction, cfg.val_fraction), seed=cfg.seed)


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
    out["memorisation_per_class"] = (result.get("memorisation") or {}).get("per_class")
    return out


def show(name: str, values: dict[str, Any]) -> None:
    print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}, flush=True)
