"""The configuration of `hits-stamps run`: one frozen dataclass per concern, defaults embedded.

The dataclass defaults below are the default run (they are also written out, with comments, in
`hits_stamps/resources/run_default.toml`, which a test keeps identical). A TOML file given with
`--config` overrides any subset of them; an unknown key is an error that names the file and the
key. `--quick` applies `QUICK` (a small run that checks the whole job end to end) before the file.

Seeds: the simulated training, validation and test sets use `data.seed`, `data.seed + 1` and
`data.seed + 2`; every model, the Monte-Carlo sampling, generation and the augmentation experiment
use `seed`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hits_stamps.errors import HitsStampsError

#: What `data.train_mix` may name: simulated stamps, injections into real training objects, real candidates.
TRAIN_MIX: tuple[str, ...] = ("simulated", "injected", "real")

#: Every model the default run trains, in the order they are trained and reported.
DEFAULT_MODELS: tuple[str, ...] = ("seed-cnn", "deephits", "rotinv-cnn", "seed-bnn", "bayes-cnn", "cvae")


@dataclass(frozen=True)
class DataConfig:
    """What the classifiers train, validate and are tested on (see docs/pipeline.md, "Data")."""

    n_train: int = 12000  # simulated training stamps
    n_val: int = 2000  # simulated validation stamps (training curves)
    n_test: int = 5000  # simulated test stamps
    real_fraction: float = 0.5  # fraction of real (label 1) stamps in every simulated split
    seed: int = 0  # train/val/test are simulated with seeds seed, seed + 1, seed + 2; seeds injection and splits
    real: bool = True  # build the real-pixel HiTS 2015 sets when a sequence file is found
    real_sequences: str = ""  # sequence file (.npz); "" = ../shared/data/hits2015 if present, else the sample
    real_split: tuple[float, ...] = (0.6, 0.2, 0.2)  # train / val / test fractions of the real objects (by object)
    real_objects: float = 1.0  # fraction of the real objects used at all (stratified, seeded); the rest unused
    inject_n: int = 8000  # stamps injected into (and painted on) the real training objects' epochs; 0: none
    variables: bool = True  # HiTS 2015 variable stars (Kron-labelled) for validation and test, when found
    variables_sequences: str = ""  # variable-star file; "" = ../shared/data/hits2015/hits2015_variables.npz if present
    train_mix: tuple[str, ...] = ("simulated", "injected", "real")  # what the classifiers train on (any of these)
    train: str = ""  # your labelled training file (.npz/.h5/...): the classifiers train on it instead of train_mix
    val: str = ""  # your validation file; "" with `train` set: 20% of the training file's objects
    test: str = ""  # your test file: scored first and leading the report
    group_column: str = ""  # column of your files naming each stamp's object (not needed when they have `groups`)
    calibration_n: int = 2000  # simulated stamps compared with the real pixels in the calibration step


@dataclass(frozen=True)
class ModelConfig:
    """How long (and, optionally, how) one model trains; unset fields take the model's recipe."""

    epochs: int = 1  # passes over the training set
    batch_size: int | None = None  # stamps per step (None: the recipe's)
    lr: float | None = None  # learning rate (None: the recipe's)
    steps_per_epoch: int | None = None  # fixed optimizer steps per epoch (None: one pass)
    scaling: str | None = None  # per-stamp input scaling, one of hits_stamps.preprocess.SCALINGS (None: the recipe's)


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation of every classifier on every test set."""

    mc_samples: int = 10  # Monte-Carlo forward passes per stamp for the Bayesian networks
    max_bayesian: int | None = 1000  # Bayesian networks: a stratified subset of this many stamps per test set
    max_real: int | None = None  # cap on real-pixel test stamps for every model (None: all of them)
    uncertainty: bool = True  # the uncertainty step: calibration chosen on validation objects, judged per test set
    uncertainty_resamples: int = 200  # bootstrap resamples (over objects) of the uncertainty step's intervals


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling from the conditional VAE and judging the samples."""

    judge: str = "rotinv-cnn"  # a classifier of this run as the judge; "": train `judge_model` for judging
    judge_model: str = "rotinv-cnn"  # with judge = "": the judge's architecture and recipe
    judge_epochs: int = 2  # with judge = "": epochs of the judge trained for judging and of its TSTR twin
    reference_n: int = 0  # real training stamps given to the judging (0: all): TSTR trains on as many generated
    max_per_class: int = 500  # generated and real test stamps per class for agreement and Frechet distance
    tune_with: str = ""  # a classifier of this run (not the judge) that picks the cvae's per-condition pixel
    # temperatures before judging (generation.tune); "" (default): keep the fitted noise (temperature 1)
    tune_n: int = 300  # stamps generated per condition and temperature for the tuning


@dataclass(frozen=True)
class AugmentationConfig:
    """Training a classifier on a fraction of the data, with and without generated stamps."""

    enabled: bool = True  # run the experiment (needs cvae among the models)
    fraction: float = 0.25  # fraction of the simulated training set used
    epochs: int = 4  # epochs of each classifier trained in the experiment (all arms: the same steps)
    model: str = "rotinv-cnn"  # the classifier trained in every arm
    retrain_cvae: bool = True  # retrain the cvae on the same subset (False: use the run's cvae, optimistic)


def _default_model_table() -> dict[str, ModelConfig]:
    # Sized so that the default run fits 15 minutes on 2 CPU cores (see docs/pipeline.md).
    return {
        "seed-cnn": ModelConfig(epochs=5),
        "deephits": ModelConfig(epochs=2),
        # joint scaling keeps how bright the difference is against the star under it; chosen on validation
        # objects by benchmarks/bench_transfer.py (docs/benchmarks/transfer.md)
        "rotinv-cnn": ModelConfig(epochs=4, scaling="joint"),
        "seed-bnn": ModelConfig(epochs=10),
        "bayes-cnn": ModelConfig(epochs=3),
        "cvae": ModelConfig(epochs=8),
    }


@dataclass(frozen=True)
class RunConfig:
    """Everything `hits-stamps run` does, and how big. See docs/pipeline.md for each key."""

    seed: int = 0  # seeds every model, MC sampling, generation and augmentation
    time_budget_s: float = 900.0  # the run warns (and the report says) when it takes longer
    models: tuple[str, ...] = DEFAULT_MODELS  # registered model names to train, in order
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, ModelConfig] = field(default_factory=_default_model_table)  # per model
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)

    def __post_init__(self) -> None:
        _check_values(self)

    def model_config(self, name: str) -> ModelConfig | None:
        """The table entry of one model; None means: the model's own recipe epochs."""
        return self.model.get(name)


#: The `--quick` preset: a small run (seconds per model) that exercises every step.
QUICK: dict[str, Any] = {
    "time_budget_s": 120.0,
    "data": {"n_train": 600, "n_val": 200, "n_test": 400, "calibration_n": 400, "inject_n": 600,
             "real_objects": 0.25},
    "model": {**{name: {"epochs": 1} for name in DEFAULT_MODELS}, "cvae": {"epochs": 1, "steps_per_epoch": 8}},
    "evaluate": {"mc_samples": 5, "max_bayesian": 200, "max_real": 300},
    "generation": {"max_per_class": 100, "tune_n": 20},
    "augmentation": {"fraction": 0.25, "epochs": 1, "retrain_cvae": False},
}


# ---------------------------------------------------------------------------------------------
# validation


def _check_values(cfg: RunConfig) -> None:
    d = cfg.data
    problems = []
    for name in ("n_train", "n_val", "n_test"):
        if getattr(d, name) < 2:
            problems.append(f"data.{name} must be >= 2; got {getattr(d, name)}")
    split = d.real_split
    if len(split) != 3 or any(not math.isfinite(v) or v < 0 for v in split) or split[0] <= 0 or split[2] <= 0:
        problems.append(f"data.real_split must be three fractions (train, val, test) with train and test > 0; "
                        f"got {list(split)}")
    if not 0 < d.real_objects <= 1:
        problems.append(f"data.real_objects must be in (0, 1]; got {d.real_objects}")
    if d.inject_n < 0:
        problems.append(f"data.inject_n must be >= 0; got {d.inject_n}")
    unknown_mix = sorted(set(d.train_mix) - set(TRAIN_MIX))
    if unknown_mix or not d.train_mix:
        problems.append(f"data.train_mix must name some of {list(TRAIN_MIX)}; got {list(d.train_mix)}")
    if d.val and not d.train:
        problems.append("data.val goes with data.train (your training file)")
    if d.calibration_n < 0:
        problems.append(f"data.calibration_n must be >= 0; got {d.calibration_n}")
    if not 0 < d.real_fraction < 1:
        problems.append(f"data.real_fraction must be in (0, 1); got {d.real_fraction}")
    if not cfg.models:
        problems.append("models must name at least one model")
    if len(set(cfg.models)) != len(cfg.models):
        problems.append(f"models has duplicates: {list(cfg.models)}")
    from hits_stamps.preprocess import SCALINGS  # here: this module itself loads without numpy

    for name, m in cfg.model.items():
        if m.epochs < 1:
            problems.append(f"model.{name}.epochs must be >= 1; got {m.epochs}")
        for key in ("batch_size", "steps_per_epoch"):
            v = getattr(m, key)
            if v is not None and v < 1:
                problems.append(f"model.{name}.{key} must be >= 1; got {v}")
        if m.lr is not None and not (math.isfinite(m.lr) and m.lr > 0):
            problems.append(f"model.{name}.lr must be a finite number > 0; got {m.lr}")
        if m.scaling is not None and m.scaling not in SCALINGS:
            problems.append(f"model.{name}.scaling must be one of {list(SCALINGS)}; got {m.scaling!r}")
    if cfg.evaluate.mc_samples < 1:
        problems.append(f"evaluate.mc_samples must be >= 1; got {cfg.evaluate.mc_samples}")
    if cfg.evaluate.uncertainty_resamples < 0:
        problems.append(f"evaluate.uncertainty_resamples must be >= 0; got {cfg.evaluate.uncertainty_resamples}")
    for key in ("max_real", "max_bayesian"):
        v = getattr(cfg.evaluate, key)
        if v is not None and v < 10:
            problems.append(f"evaluate.{key} must be >= 10; got {v}")
    g = cfg.generation
    if g.judge_epochs < 1:
        problems.append(f"generation.judge_epochs must be >= 1; got {g.judge_epochs}")
    if g.reference_n < 0 or 0 < g.reference_n < 20:
        problems.append(f"generation.reference_n must be 0 (all) or >= 20; got {g.reference_n}")
    if g.max_per_class < 8:
        problems.append(f"generation.max_per_class must be >= 8; got {g.max_per_class}")
    if g.tune_with and g.tune_with == g.judge:
        problems.append(f"generation.tune_with must not be the judge ({g.judge!r}): the judged agreement would be "
                        "the tuned quantity itself")
    if g.tune_n < 8:
        problems.append(f"generation.tune_n must be >= 8; got {g.tune_n}")
    if not 0 < cfg.augmentation.fraction <= 1:
        problems.append(f"augmentation.fraction must be in (0, 1]; got {cfg.augmentation.fraction}")
    if cfg.augmentation.epochs < 1:
        problems.append(f"augmentation.epochs must be >= 1; got {cfg.augmentation.epochs}")
    if not (math.isfinite(cfg.time_budget_s) and cfg.time_budget_s > 0):
        problems.append(f"time_budget_s must be > 0; got {cfg.time_budget_s}")
    if problems:
        raise HitsStampsError("invalid run configuration: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """A plain, JSON/TOML-ready dict (tuples as lists; unset optional fields left out)."""

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if v is not None}
        if isinstance(obj, (list, tuple)):
            return [strip(v) for v in obj]
        return obj

    return strip(dataclasses.asdict(cfg))


def config_hash(cfg: RunConfig) -> str:
    """sha256 of the canonical JSON of the config (what a run directory was made with)."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()


def _type_name(tp) -> str:
    return "a finite number" if tp is float else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str, source: str) -> Any:
    """Check one TOML value against a field's annotation; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, args[0], where, source)
    if origin is tuple:
        if typing.get_args(tp)[:1] == (float,):
            if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in value):
                raise HitsStampsError(f"{source}: {where} must be a list of numbers; got {value!r}")
            return tuple(float(v) for v in value)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise HitsStampsError(f"{source}: {where} must be a list of strings; got {value!r}")
        return tuple(value)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - every field type is listed above
        raise TypeError(f"unsupported config type {tp!r} at {where}")
    if not ok:
        raise HitsStampsError(
            f"{source}: {where} must be {_type_name(tp)}; got {type(value).__name__} {value!r}"
        )
    return value


def _build(cls, values: dict[str, Any], base, where: str, source: str):
    """Return `base` (a `cls` instance) with `values` applied; unknown keys raise."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(values, dict):
        raise HitsStampsError(f"{source}: {where or 'the file'} must be a table; got {values!r}")
    unknown = sorted(set(values) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise HitsStampsError(
            f"{source}: unknown key {prefix}{unknown[0]!r}; expected one of {names}"
        )
    changes = {}
    for key, value in values.items():
        tp = hints[key]
        path = f"{where}.{key}" if where else key
        current = getattr(base, key)
        if dataclasses.is_dataclass(tp):
            changes[key] = _build(tp, value, current, path, source)
        elif key == "model" and cls is RunConfig:
            if not isinstance(value, dict):
                raise HitsStampsError(f"{source}: model must be a table of model tables; got {value!r}")
            table = dict(current)
            from hits_stamps.models.registry import model_names

            for name, sub in value.items():
                if name not in model_names():
                    raise HitsStampsError(
                        f"{source}: unknown model table [model.{name}]; expected one of {model_names()}"
                    )
                table[name] = _build(ModelConfig, sub, table.get(name, ModelConfig()), f"model.{name}", source)
            changes[key] = table
        else:
            changes[key] = _coerce(value, tp, path, source)
    return dataclasses.replace(base, **changes)


def apply_overrides(cfg: RunConfig, values: dict[str, Any], source: str = "overrides") -> RunConfig:
    """`cfg` with a nested dict of overrides applied (the shape of the TOML file)."""
    return _build(RunConfig, values, cfg, "", source)


def from_dict(values: dict[str, Any], source: str = "config") -> RunConfig:
    """A full config from a dict such as `to_dict` writes (missing keys take the defaults)."""
    return apply_overrides(RunConfig(), values, source)


def load_config(path: str | os.PathLike | None = None, quick: bool = False) -> RunConfig:
    """The embedded defaults, then the `QUICK` preset if `quick`, then the TOML file at `path`."""
    cfg = RunConfig()
    if quick:
        cfg = apply_overrides(cfg, QUICK, "the quick preset")
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise HitsStampsError(f"{p}: config file not found")
        try:
            values = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise HitsStampsError(f"{p}: not valid TOML ({exc})") from exc
        cfg = apply_overrides(cfg, values, str(p))
    return cfg


def default_toml_path() -> Path:
    """The shipped, commented copy of the defaults."""
    return Path(__file__).resolve().parents[1] / "resources" / "run_default.toml"


def diff_configs(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two `to_dict` outputs, as 'key: a -> b'."""
    out = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(diff_configs(va, vb, path + "."))
        elif va != vb:
            out.append(f"{path}: {va!r} -> {vb!r}")
    return out


def to_toml(cfg: RunConfig) -> str:
    """The config as TOML text (loadable with `load_config`)."""
    d = to_dict(cfg)

    def fmt(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return repr(v)

    lines = [f"{k} = {fmt(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for section, table in d.items():
        if not isinstance(table, dict):
            continue
        if section == "model":
            for name, sub in table.items():
                lines.append("")
                lines.append(f'[model."{name}"]' if not name.replace("-", "").replace("_", "").isalnum()
                             else f"[model.{name}]")
                lines.extend(f"{k} = {fmt(v)}" for k, v in sub.items())
            continue
        lines.append("")
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {fmt(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"
