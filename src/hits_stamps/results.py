"""Frozen results written to and read from JSON in one place.

`EvaluationResult` is a classifier's metrics.json (`hits_stamps.evaluation.evaluate.evaluate_model`
writes it into its output folder and the model directory; the pipeline's summary reads it back).
Its fields are the keys every metrics.json has; the optional parts keep their JSON keys and order
in two mappings. `to_json()` gives the dict that is written, key for key and in file order, so
`EvaluationResult.read(p).write(q)` copies p to q byte for byte. A file that lacks a required key
raises `StampFileError` (a `HitsStampsError`) naming the file and the key.

`GeneratorJudgement` is a generator's generation.json (`hits_stamps.generation.judge.evaluate_generator`
writes it; the pipeline's summary reads it back), with the same contract.

`RunSummary` is a run's summary.json (`hits_stamps.pipeline.run.collect_summary` gathers it from the
steps' outputs; the report reads it), with the same contract; its parts stay the JSON mappings
the steps wrote, and the report checks inside them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from hits_stamps.errors import StampFileError


def _require(d: Any, keys: tuple[str, ...], source: str | os.PathLike, what: str, writer: str) -> Mapping[str, Any]:
    """`d` as a mapping with every key of `keys`; else StampFileError naming `source` and the first missing key."""
    if not isinstance(d, Mapping):
        raise StampFileError(source, None, f"a {what} object", type(d).__name__)
    for k in keys:
        if k not in d:
            raise StampFileError(source, k, f"the {what} key {k!r} ({writer} writes it)", "no such key")
    return d


def _read_json(path: str | os.PathLike) -> Any:
    from hits_stamps.training.modeldir import read_json

    return read_json(path)


def _write_json(path: str | os.PathLike, obj: Any) -> None:
    from hits_stamps.training.modeldir import write_json

    write_json(path, obj)


#: Keys of `metrics.classification_metrics` that every metrics.json has, in their order there.
CLASSIFICATION_KEYS: tuple[str, ...] = (
    "n", "n_objects", "n_real", "n_bogus", "threshold", "accuracy", "precision", "recall", "recall_bogus", "f1",
    "roc_auc", "fpr", "fnr", "fnr_at_fpr_1pct", "threshold_at_fpr_1pct", "confusion_matrix", "by_snr", "by_kind",
    "notes",
)
#: Keys `evaluate_model` adds after them: what was scored, on what, and how fast.
RUN_KEYS: tuple[str, ...] = ("threshold_source", "model", "model_dir", "data", "n_parameters",
                             "n_unlabelled_skipped", "predict_seconds", "stamps_per_second")
#: metrics.json entries copied into the pipeline's evaluate step summary (the report reads the full file).
SUMMARY_KEYS: tuple[str, ...] = ("n", "n_objects", "accuracy", "recall", "recall_bogus", "f1", "roc_auc",
                                 "fnr_at_fpr_1pct", "fnr_at_val_threshold", "fpr_at_val_threshold", "ece", "ci95")


@dataclass(frozen=True)
class EvaluationResult:
    """A classifier scored on a labelled stamp set: the content of its metrics.json.

    Definitions of the classification entries: `hits_stamps.evaluation.metrics.classification_metrics`
    (label 1 real, 0 bogus; rates at `threshold`; None where undefined, with the reason in `notes`).
    """

    # classification, at `threshold`
    n: int  # labelled stamps scored
    n_objects: int  # distinct objects among them (the bootstrap resamples objects)
    n_real: int
    n_bogus: int
    threshold: float  # p_real >= threshold is called real
    accuracy: float | None
    precision: float | None
    recall: float | None  # real recall (TPR)
    recall_bogus: float | None  # bogus recall (TNR)
    f1: float | None
    roc_auc: float | None
    fpr: float | None
    fnr: float | None
    fnr_at_fpr_1pct: float | None  # threshold tuned on this set: optimistic
    threshold_at_fpr_1pct: float | None
    confusion_matrix: list[list[int]]  # [[TN, FP], [FN, TP]]
    by_snr: dict[str, dict[str, Any]] | None  # {SNR bin: {n, n_real, accuracy, fnr}}
    by_kind: dict[str, dict[str, Any]] | None  # {kind: {n, n_objects, label, accuracy, ...}}
    notes: list[str]
    # the run
    threshold_source: dict[str, Any] | None  # what the FPR = 1% threshold was chosen on (None: no threshold)
    model: str
    model_dir: str
    data: str | None  # the scored stamp file
    n_parameters: int
    n_unlabelled_skipped: int
    predict_seconds: float
    stamps_per_second: float | None
    # optional classification parts, in file order: threshold_fpr1, fnr_at_val_threshold,
    # fpr_at_val_threshold, confusion_matrix_at_val_threshold, ci95, bootstrap, n_outside_snr_bins,
    # completeness_purity
    classification_extra: Mapping[str, Any] = field(default_factory=dict)
    # every later key, in file order: the calibration / uncertainty report (ece, nll, reliability, ...)
    uncertainty: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_parts(cls, classification: Mapping[str, Any], run: Mapping[str, Any],
                   uncertainty: Mapping[str, Any] | None = None) -> EvaluationResult:
        """From `classification_metrics`' dict, the RUN_KEYS values and an uncertainty report.

        An uncertainty key that the classification or run part already has is dropped (those take precedence).
        """
        missing = [k for k in RUN_KEYS if k not in run] + [k for k in CLASSIFICATION_KEYS if k not in classification]
        if missing or set(run) - set(RUN_KEYS):
            raise ValueError(f"from_parts: missing keys {missing}, or run has keys other than RUN_KEYS: {sorted(run)}")
        taken = set(classification) | set(run)
        return cls(**{k: classification[k] for k in CLASSIFICATION_KEYS}, **{k: run[k] for k in RUN_KEYS},
                   classification_extra={k: v for k, v in classification.items() if k not in CLASSIFICATION_KEYS},
                   uncertainty={k: v for k, v in (uncertainty or {}).items() if k not in taken})

    def to_json(self) -> dict[str, Any]:
        """The metrics.json dict: classification keys, optional classification parts, run keys, the rest."""
        return {**{k: getattr(self, k) for k in CLASSIFICATION_KEYS}, **self.classification_extra,
                **{k: getattr(self, k) for k in RUN_KEYS}, **self.uncertainty}

    @classmethod
    def from_json(cls, d: Any, source: str | os.PathLike = "metrics.json") -> EvaluationResult:
        """Read back `to_json()`'s dict; `source` names it in errors (a missing key raises StampFileError)."""
        d = _require(d, (*CLASSIFICATION_KEYS, *RUN_KEYS), source, "metrics", "evaluate_model")
        keys = list(d)
        split = keys.index("threshold_source")  # optional classification parts come before the run keys
        return cls(**{k: d[k] for k in (*CLASSIFICATION_KEYS, *RUN_KEYS)},
                   classification_extra={k: d[k] for k in keys[:split] if k not in CLASSIFICATION_KEYS},
                   uncertainty={k: d[k] for k in keys[split:] if k not in RUN_KEYS})

    @classmethod
    def read(cls, path: str | os.PathLike) -> EvaluationResult:
        """A metrics.json file; malformed JSON or a missing key raises StampFileError naming the file."""
        return cls.from_json(_read_json(path), path)

    def write(self, path: str | os.PathLike) -> None:
        """Write `to_json()` atomically to `path` (2-space indented JSON, numpy values as Python ones)."""
        _write_json(path, self.to_json())

    def summary(self) -> dict[str, Any]:
        """The SUMMARY_KEYS entries this result has (the pipeline's evaluate step records them)."""
        d = self.to_json()
        return {k: d[k] for k in SUMMARY_KEYS if k in d}


#: generation.json's keys in file order. The per-class ones follow `generation.judge.CLASSES` (real, then bogus).
JUDGEMENT_KEYS: tuple[str, ...] = (
    "generator", "generator_model", "seed", "mode", "temperature", "latent", "reference_train", "notes", "roles",
    "judge", "n_generated", "consistency", "test_negative_elbo", "generation_stamps_per_s",
    "agreement_real", "frechet_real", "frechet_floor_real", "agreement_bogus", "frechet_bogus", "frechet_floor_bogus",
    "n_per_class", "agreement_per_kind", "tstr_accuracy", "trtr_accuracy", "tstr_over_trtr", "tstr_recall_per_class",
    "physical", "peak_snr", "memorisation", "figures", "seconds",
)
#: Keys generation.json has only sometimes; their fields are None when absent.
OPTIONAL_JUDGEMENT_KEYS: frozenset[str] = frozenset({"agreement_per_kind", "tstr_recall_per_class", "figures"})


@dataclass(frozen=True)
class GeneratorJudgement:
    """A generator judged by an independent classifier: the content of its generation.json.

    Definitions: the module docstring of `hits_stamps.generation.judge`. Classes are "real" and "bogus".
    """

    generator: str  # the generator's model directory
    generator_model: str
    seed: int
    mode: str | None  # sampling mode and latent (None for a diffusion model, which has neither)
    temperature: float
    latent: str | None
    reference_train: str  # what the judge's (and TSTR's) training stamps were
    notes: list[str]
    roles: dict[str, Any]  # who tuned the sampling settings and who judged (`check_independent_judge`)
    judge: dict[str, Any]  # {path, model, trained_here, test_accuracy, test_recall_per_class, [test_recall_per_kind]}
    n_generated: int
    consistency: dict[str, Any]  # per class: how the generated channels were derived
    test_negative_elbo: dict[str, float] | None  # None for a diffusion model
    generation_stamps_per_s: float | None
    agreement_real: float  # fraction of generated real stamps the judge calls real
    frechet_real: float  # Fréchet distance, generated vs real, in the judge's features
    frechet_floor_real: float  # the same between two halves of the real test stamps
    agreement_bogus: float
    frechet_bogus: float
    frechet_floor_bogus: float
    n_per_class: dict[str, int]  # real test stamps per class (and generated stamps: as many)
    tstr_accuracy: float | None  # None: TSTR skipped
    trtr_accuracy: float
    tstr_over_trtr: float | None
    physical: dict[str, Any]  # per class: physical_consistency of generated and real stamps
    peak_snr: dict[str, Any]  # per class: peak |SNR| quantiles, generated and real, and the KS statistic
    memorisation: dict[str, Any]  # nearest-training distances, generated vs held-out real
    seconds: float
    agreement_per_kind: dict[str, Any] | None = None  # kind-conditioned generators only
    tstr_recall_per_class: dict[str, float] | None = None  # with TSTR only
    figures: dict[str, Any] | None = None  # with figures only
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this version does not know, in file order

    def to_json(self) -> dict[str, Any]:
        """The generation.json dict, keys in JUDGEMENT_KEYS order (absent optional parts left out), then `extra`."""
        return {**{k: getattr(self, k) for k in JUDGEMENT_KEYS
                   if not (k in OPTIONAL_JUDGEMENT_KEYS and getattr(self, k) is None)}, **self.extra}

    @classmethod
    def from_json(cls, d: Any, source: str | os.PathLike = "generation.json") -> GeneratorJudgement:
        """Read back `to_json()`'s dict; `source` names it in errors (a missing key raises StampFileError)."""
        required = tuple(k for k in JUDGEMENT_KEYS if k not in OPTIONAL_JUDGEMENT_KEYS)
        d = _require(d, required, source, "generator judgement", "evaluate_generator")
        return cls(**{k: d[k] for k in JUDGEMENT_KEYS if k in d},
                   extra={k: v for k, v in d.items() if k not in JUDGEMENT_KEYS})

    @classmethod
    def read(cls, path: str | os.PathLike) -> GeneratorJudgement:
        """A generation.json file; malformed JSON or a missing key raises StampFileError naming the file."""
        return cls.from_json(_read_json(path), path)

    def write(self, path: str | os.PathLike) -> None:
        """Write `to_json()` atomically to `path`."""
        _write_json(path, self.to_json())


#: Top-level keys of summary.json that every summary has, in file order (the report needs each).
RUN_SUMMARY_KEYS: tuple[str, ...] = (
    "package_version", "config", "models", "training", "data", "calibration", "uncertainty", "generation",
    "generator_tuning", "augmentation", "durations_s", "cpu_s", "load_avg_at_step_end", "steps", "machine",
)


@dataclass(frozen=True)
class RunSummary:
    """A `hits-stamps run` directory's summary.json: what ran, on what, and where each result is.

    Parts that a run without that step lacks are None (`calibration`, `generation`, ...); `finished`
    is the time of the last finished step (None before any).
    """

    package_version: str
    config: dict[str, Any]  # the run's configuration (`pipeline.config.to_dict`)
    models: dict[str, Any]  # per classifier and test set: its metrics.json (EvaluationResult.to_json())
    training: dict[str, Any]  # per model: the train step's result
    data: dict[str, Any]  # the data steps' results (simulate, build-real, user-data)
    calibration: dict[str, Any] | None
    uncertainty: dict[str, Any]  # {"validation": ..., "models": {model: uncertainty/<model>.json}}
    generation: dict[str, Any] | None  # generation.json (GeneratorJudgement.to_json()) or the step's result
    generator_tuning: dict[str, Any] | None
    augmentation: dict[str, Any] | None
    durations_s: dict[str, float]  # per step, and "total"
    cpu_s: dict[str, float]
    load_avg_at_step_end: dict[str, Any]
    steps: dict[str, str]  # per planned step: "done", "failed" or "not run"
    machine: dict[str, Any]
    finished: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this version does not know, in file order

    def to_json(self) -> dict[str, Any]:
        """The summary.json dict: RUN_SUMMARY_KEYS in order, then `finished`, then `extra`."""
        return {**{k: getattr(self, k) for k in RUN_SUMMARY_KEYS}, "finished": self.finished, **self.extra}

    @classmethod
    def from_json(cls, d: Any, source: str | os.PathLike = "summary.json") -> RunSummary:
        """Read back `to_json()`'s dict; `source` names it in errors (a missing key raises StampFileError)."""
        d = _require(d, RUN_SUMMARY_KEYS, source, "run summary", "hits-stamps run")
        known = (*RUN_SUMMARY_KEYS, "finished")
        return cls(**{k: d[k] for k in known if k in d}, extra={k: v for k, v in d.items() if k not in known})

    @classmethod
    def read(cls, path: str | os.PathLike) -> RunSummary:
        """A summary.json file; malformed JSON or a missing key raises StampFileError naming the file."""
        return cls.from_json(_read_json(path), path)

    def write(self, path: str | os.PathLike) -> None:
        """Write `to_json()` atomically to `path`."""
        _write_json(path, self.to_json())

    def with_machine(self, machine: dict[str, Any]) -> RunSummary:
        """The same summary with another machine record (a rebuilt report keeps the run's machine)."""
        return replace(self, machine=machine)


__all__ = ["CLASSIFICATION_KEYS", "JUDGEMENT_KEYS", "OPTIONAL_JUDGEMENT_KEYS", "RUN_KEYS", "RUN_SUMMARY_KEYS",
           "SUMMARY_KEYS", "EvaluationResult", "GeneratorJudgement", "RunSummary"]
