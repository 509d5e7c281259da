"""Predictive distributions of every uncertainty method behind one interface, and post-hoc calibration.

Every method gives class probabilities of shape (S, N, K) (S samples, N stamps, K classes), which
`hits_stamps.uncertainty` turns into a mean, an entropy and a mutual information:

- `softmax`: a deterministic classifier, S = 1.
- `flipout`: a Bayesian (Flipout) classifier, S weight samples (`montecarlo.sample_batch`).
- `mc-dropout`: a classifier with dropout, S passes with the dropout layers active and batch norm
  in eval mode (Gal & Ghahramani 2016).
- `ensemble`: M members trained alike with different seeds (Lakshminarayanan et al. 2017); each
  member contributes its own samples (S = M for deterministic members, M x S_m for Bayesian ones).

Post-hoc calibration, fitted on labelled *validation* stamps (objects never used for testing), acts
on the samples, so the result keeps the shape (S, N, K):

- `temperature` (Guo et al. 2017): every sample's log-probabilities are divided by one T > 0 and
  renormalised, p'_snk = softmax_k(log p_snk / T). For a deterministic classifier that is
  softmax(z / T) of its logits z. T minimises the validation NLL of the mean prediction,
  -(1/N) sum_n log (1/S) sum_s p'_{s n y_n}, over log T in [log 0.05, log 20].
- `platt` (Platt 1999; logistic calibration): a slope and an offset on every sample's log-odds,
  p'_s,real = sigmoid(a log(p_s,real / p_s,bogus) + b), fitted like the temperature (minimum
  validation NLL of the mean; a in [0.01, 50], b in [-20, 20]); two classes only. With b = 0 it is
  temperature scaling with T = 1 / a; the offset moves the decision boundary, which a class-
  dependent shift (real pixels differ from simulated ones) can need.
- `isotonic` (Zadrozny & Elkan 2002): a non-decreasing map g of p_real, fitted by pool-adjacent-
  violators to the validation labels against the validation mean p_real, stored as the knots of a
  piecewise-linear interpolation, and applied to every sample's p_real (p_bogus = 1 - g(p_real));
  two classes only. For S = 1 it is ordinary isotonic calibration; for S > 1 the mean of g(p_s) is
  not exactly g(mean) (g is not linear), which the validation numbers measure.

Every `fit(samples, y, sample_weight=None)` takes optional stamp weights w_n: the NLL above becomes
-sum_n w_n log (1/S) sum_s p'_{s n y_n} / sum_n w_n, and isotonic a weighted least-squares fit.
`domain_weights` gives each domain of a pooled validation set (e.g. simulated stamps and real-pixel
objects) the same total weight, so that one calibrator is fitted for both rather than for the
domain with more stamps.

A chosen method is saved as `predictive.json` in a model directory (one model) or an ensemble
directory (members in sub-directories); `load_predictive(path)` rebuilds it and `hits-stamps
predict` uses it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hits_stamps.errors import HitsStampsError, NotFittedError, StampFileError
from hits_stamps.montecarlo import DEFAULT_MC_SAMPLES, model_sampling, sample_batch
from hits_stamps.stamps import StampSet
from hits_stamps.tasks import Task

METHODS = ("softmax", "flipout", "mc-dropout", "ensemble")
CALIBRATIONS = ("none", "temperature", "platt", "isotonic")
REFERRAL_SCORES = ("entropy", "mutual_information")
PREDICTIVE_FILE = "predictive.json"
_TINY = 1e-38  # probabilities are clipped here before a log (float32's smallest normal number)
_LOG_T_BOUNDS = (float(np.log(0.05)), float(np.log(20.0)))


def _check_samples(samples) -> np.ndarray:
    p = np.asarray(samples, dtype=np.float64)
    if p.ndim != 3 or p.shape[0] < 1:
        raise HitsStampsError(f"samples: expected class probabilities of shape (S, N, K); found shape {p.shape}")
    if p.size and (not np.isfinite(p).all() or p.min() < 0 or p.max() > 1):
        raise HitsStampsError("samples: expected finite probabilities in [0, 1]")
    return p


def _check_labels(y, n: int, k: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,) or n == 0:
        raise HitsStampsError(f"y: expected {n} labels (N,), N >= 1, to match the samples; found shape {y.shape}")
    if not np.isin(y, np.arange(k)).all():
        raise HitsStampsError(f"y: expected class labels in 0..{k - 1} (labelled validation stamps); found "
                              f"{sorted(set(np.unique(y).tolist()) - set(range(k)))[:5]}")
    return y.astype(np.int64)


# ----------------------------------------------------------------------------- post-hoc calibration


def apply_temperature(samples, temperature: float) -> np.ndarray:
    """(S, N, K) -> (S, N, K): p'_snk = softmax_k(log p_snk / T)."""
    p = _check_samples(samples)
    if not (np.isfinite(temperature) and temperature > 0):
        raise HitsStampsError(f"temperature must be a finite number > 0; got {temperature}")
    z = np.log(np.clip(p, _TINY, 1.0)) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _check_weights(sample_weight, n: int) -> np.ndarray | None:
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or w.min() < 0 or w.sum() <= 0:
        raise HitsStampsError(f"sample_weight: expected {n} finite weights >= 0 with a positive sum, one per "
                              f"stamp; found shape {w.shape}")
    return w


def _mean_nll(samples: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    """-sum_n w_n log((1/S) sum_s p_{s n y_n}) / sum_n w_n (w_n = 1 when no weights are given)."""
    p_true = samples[:, np.arange(samples.shape[1]), y].mean(axis=0)  # (N,)
    return float(-np.average(np.log(np.clip(p_true, _TINY, 1.0)), weights=w))


def domain_weights(domains) -> np.ndarray:
    """(N,) stamp weights that give every domain the same total weight: w_n = N / (D N_d(n)).

    domains: (N,) labels (e.g. "real", "sim"), D distinct ones, N_d stamps in domain d. The weights
    average 1, so a weighted NLL is the mean over domains of each domain's own mean NLL; a domain
    with many stamps (simulated ones are cheap) does not outvote one with few (real pixels).
    """
    d = np.asarray(domains)
    if d.ndim != 1 or d.size == 0:
        raise HitsStampsError(f"domains: expected one label per stamp (N,), N >= 1; found shape {d.shape}")
    _, inv, counts = np.unique(d, return_inverse=True, return_counts=True)
    return d.size / (counts.size * counts[inv.reshape(-1)].astype(np.float64))


@dataclass
class TemperatureScaling:
    """One temperature for all classes and samples (module doc); `fit(samples, y) -> self`."""

    temperature_: float | None = None

    def fit(self, samples, y, sample_weight=None) -> TemperatureScaling:
        from scipy.optimize import minimize_scalar

        p = _check_samples(samples)
        y = _check_labels(y, p.shape[1], p.shape[2])
        w = _check_weights(sample_weight, p.shape[1])
        res = minimize_scalar(lambda log_t: _mean_nll(apply_temperature(p, float(np.exp(log_t))), y, w),
                              bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
        self.temperature_ = float(np.exp(res.x))
        return self

    def transform(self, samples) -> np.ndarray:
        if self.temperature_ is None:
            raise NotFittedError("TemperatureScaling is not fitted; call fit(samples, y) on validation stamps first")
        return apply_temperature(samples, self.temperature_)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "temperature", "temperature": self.temperature_}


def apply_platt(samples, slope: float, offset: float) -> np.ndarray:
    """(S, N, 2) -> (S, N, 2): p'_real = sigmoid(slope * log(p_real / p_bogus) + offset)."""
    p = _check_samples(samples)
    if p.shape[2] != 2:
        raise HitsStampsError(f"platt calibration needs two classes; found {p.shape[2]}")
    logit = np.log(np.clip(p[:, :, 1], _TINY, 1.0)) - np.log(np.clip(p[:, :, 0], _TINY, 1.0))
    real = 0.5 * (1.0 + np.tanh(0.5 * (slope * logit + offset)))  # sigmoid, without overflow
    return np.stack([1.0 - real, real], axis=-1)


@dataclass
class PlattScaling:
    """A slope and an offset on the log-odds of every sample (module doc); `fit(samples, y) -> self`."""

    slope_: float | None = None
    offset_: float | None = None

    def fit(self, samples, y, sample_weight=None) -> PlattScaling:
        from scipy.optimize import minimize

        p = _check_samples(samples)
        if p.shape[2] != 2:
            raise HitsStampsError(f"platt calibration needs two classes; found {p.shape[2]}")
        y = _check_labels(y, p.shape[1], 2)
        w = _check_weights(sample_weight, p.shape[1])
        res = minimize(lambda ab: _mean_nll(apply_platt(p, ab[0], ab[1]), y, w), x0=np.array([1.0, 0.0]),
                       method="L-BFGS-B", bounds=[(0.01, 50.0), (-20.0, 20.0)])
        self.slope_, self.offset_ = float(res.x[0]), float(res.x[1])
        return self

    def transform(self, samples) -> np.ndarray:
        if self.slope_ is None or self.offset_ is None:
            raise NotFittedError("PlattScaling is not fitted; call fit(samples, y) on validation stamps first")
        return apply_platt(samples, self.slope_, self.offset_)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "platt", "slope": self.slope_, "offset": self.offset_}


@dataclass
class IsotonicCalibration:
    """A non-decreasing map of p_real (module doc); two classes only; `fit(samples, y) -> self`."""

    x_: list[float] | None = None  # knots: p_real values, increasing
    y_: list[float] | None = None  # calibrated p_real at the knots, non-decreasing

    def fit(self, samples, y, sample_weight=None) -> IsotonicCalibration:
        from sklearn.isotonic import IsotonicRegression

        p = _check_samples(samples)
        if p.shape[2] != 2:
            raise HitsStampsError(f"isotonic calibration needs two classes; found {p.shape[2]}")
        y = _check_labels(y, p.shape[1], 2)
        w = _check_weights(sample_weight, p.shape[1])
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p[:, :, 1].mean(axis=0), y,
                                                                                  sample_weight=w)
        self.x_ = [float(v) for v in iso.X_thresholds_]
        self.y_ = [float(v) for v in iso.y_thresholds_]
        return self

    def transform(self, samples) -> np.ndarray:
        if self.x_ is None or self.y_ is None:
            raise NotFittedError("IsotonicCalibration is not fitted; call fit(samples, y) on validation stamps first")
        p = _check_samples(samples)
        if p.shape[2] != 2:
            raise HitsStampsError(f"isotonic calibration needs two classes; found {p.shape[2]}")
        real = np.interp(p[:, :, 1], self.x_, self.y_)  # clipped to the end knots outside them
        return np.stack([1.0 - real, real], axis=-1)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "isotonic", "x": self.x_, "y": self.y_}


class Identity:
    """No calibration (`transform` returns the samples as float64)."""

    def fit(self, samples, y, sample_weight=None) -> Identity:
        return self

    def transform(self, samples) -> np.ndarray:
        return _check_samples(samples)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "none"}


def make_calibrator(kind: str) -> Identity | TemperatureScaling | PlattScaling | IsotonicCalibration:
    """An unfitted calibrator by name: none | temperature | platt | isotonic."""
    if kind == "none":
        return Identity()
    if kind == "temperature":
        return TemperatureScaling()
    if kind == "platt":
        return PlattScaling()
    if kind == "isotonic":
        return IsotonicCalibration()
    raise HitsStampsError(f"calibration must be one of {CALIBRATIONS}; got {kind!r}")


def calibrator_from_dict(d: dict, source: str = PREDICTIVE_FILE):
    """Rebuild a fitted calibrator from its `to_dict()`; a malformed entry raises naming `source`."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "none":
        return Identity()
    if kind == "temperature":
        t = d.get("temperature")
        if not (isinstance(t, (int, float)) and not isinstance(t, bool) and np.isfinite(t) and t > 0):
            raise StampFileError(source, "calibration.temperature", "a number > 0", f"{t!r:.80}")
        return TemperatureScaling(float(t))
    if kind == "platt":
        a, b = d.get("slope"), d.get("offset")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in (a, b)) \
                or a <= 0:
            raise StampFileError(source, "calibration", "a platt slope > 0 and a finite offset", f"{d!r:.80}")
        return PlattScaling(float(a), float(b))
    if kind == "isotonic":
        x, y = d.get("x"), d.get("y")
        ok = (isinstance(x, list) and isinstance(y, list) and len(x) == len(y) >= 1
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x + y))
        if ok:
            xa, ya = np.asarray(x, float), np.asarray(y, float)
            ok = bool(np.isfinite(xa).all() and np.isfinite(ya).all() and (np.diff(xa) > 0).all()
                      and (np.diff(ya) >= 0).all() and ya.min() >= 0 and ya.max() <= 1)
        if not ok:
            raise StampFileError(source, "calibration", "isotonic knots x (increasing) and y (non-decreasing, in "
                                 "[0, 1]) of one length", f"{d!r:.80}")
        return IsotonicCalibration([float(v) for v in x], [float(v) for v in y])
    raise StampFileError(source, "calibration.kind", f"one of {CALIBRATIONS}", f"{kind!r:.80}")


# ----------------------------------------------------------------------------- the methods


@dataclass(frozen=True)
class PredictiveConfig:
    """A chosen uncertainty method; stored as predictive.json beside the model or ensemble members."""

    method: str  # softmax | flipout | mc-dropout | ensemble
    members: tuple[str, ...] = (".",)  # model directories, relative to the predictive.json's folder
    mc_samples: int = DEFAULT_MC_SAMPLES  # Monte-Carlo samples of flipout and mc-dropout (per Bayesian ensemble member)
    seed: int = 0  # seed of the Monte-Carlo samples
    calibration: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})  # a calibrator's to_dict()
    referral: str = "entropy"  # uncertainty to refer by: entropy | mutual_information
    note: str = ""  # where the calibration was fitted and how the method was chosen (free text)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise HitsStampsError(f"method must be one of {METHODS}; got {self.method!r}")
        if not self.members or not all(isinstance(m, str) and m for m in self.members):
            raise HitsStampsError(f"members: expected one or more model directories; got {self.members!r}")
        if self.method != "ensemble" and len(self.members) != 1:
            raise HitsStampsError(f"method {self.method!r} uses one model; got {len(self.members)} members")
        if not isinstance(self.mc_samples, int) or isinstance(self.mc_samples, bool) or self.mc_samples < 1:
            raise HitsStampsError(f"mc_samples must be an integer >= 1; got {self.mc_samples!r}")
        if self.referral not in REFERRAL_SCORES:
            raise HitsStampsError(f"referral must be one of {REFERRAL_SCORES}; got {self.referral!r}")
        calibrator_from_dict(self.calibration, "calibration")


class Predictive:
    """A method over trained models: `sample_proba(stamps) -> (S, N, K)`, calibrated when fitted so.

    models: the trained classifiers (one, or an ensemble's members, all with the same input size and
    channels; each preprocesses the stamps its own way). `fit_calibration(stamps_or_samples, y)` fits the calibrator on
    labelled validation stamps.
    """

    def __init__(self, models: Sequence, method: str, mc_samples: int = DEFAULT_MC_SAMPLES, seed: int = 0,
                 calibration: str | dict = "none", referral: str = "entropy"):
        self.models = list(models)
        _check_models(self.models, method)
        self.config = PredictiveConfig(method=method, members=tuple(str(m.path) for m in self.models),
                                       mc_samples=mc_samples, seed=seed, referral=referral)
        self.calibrator = make_calibrator(calibration) if isinstance(calibration, str) else \
            calibrator_from_dict(calibration, "calibration")
        self.path: Path | None = None  # the folder of its predictive.json, once saved or loaded

    @property
    def method(self) -> str:
        return self.config.method

    def describe(self) -> str:
        cal = self.calibrator.to_dict()
        how = {"softmax": "softmax", "flipout": f"Flipout, {self.config.mc_samples} samples",
               "mc-dropout": f"MC dropout, {self.config.mc_samples} samples",
               "ensemble": f"ensemble of {len(self.models)}"}[self.method]
        if cal["kind"] == "temperature":
            how += f", temperature {cal['temperature']:.3f}"
        elif cal["kind"] == "platt":
            how += f", Platt slope {cal['slope']:.3f} offset {cal['offset']:.3f}"
        elif cal["kind"] == "isotonic":
            how += f", isotonic ({len(cal['x'])} knots)"
        return how

    @torch.no_grad()
    def raw_samples_batch(self, images: np.ndarray, start: int = 0) -> np.ndarray:
        """Raw stamps (B, H, W, C), rows start.. of a file -> uncalibrated (S, B, K) float64.

        Each model preprocesses the stamps with its own Preprocessor. Monte-Carlo samples are seeded
        with `seed + start`, as `TrainedModel.predict_proba` seeds its batches.
        """
        out = []
        for m in self.models:
            module = m.module.eval()
            x = torch.from_numpy(m.preprocessor.transform(images, report=False))  # (B, C, H, W)
            x = x.to(next(module.parameters()).device)
            sampling = "dropout" if self.method == "mc-dropout" else model_sampling(m)
            p = sample_batch(module, x, self.config.mc_samples, self.config.seed + start, sampling)  # (S, B, K)
            out.append(p.cpu().numpy().astype(np.float64))
        return np.concatenate(out, axis=0)

    def samples_batch(self, images: np.ndarray, start: int = 0) -> np.ndarray:
        """As `raw_samples_batch`, then calibrated: (S, B, K) float64."""
        return self.calibrator.transform(self.raw_samples_batch(images, start))

    def raw_sample_proba(self, stamps: StampSet | np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Uncalibrated (S, N, K) over stamps (N, H, W, C) or a StampSet, in batches of `batch_size`."""
        if batch_size < 1:
            raise HitsStampsError(f"batch_size must be >= 1; got {batch_size}")
        if isinstance(stamps, StampSet):
            for m in self.models:
                m.check_input(stamps)
            images = stamps.images
        else:
            images = np.asarray(stamps)
        parts = [self.raw_samples_batch(images[a:a + batch_size], a) for a in range(0, len(images), batch_size)]
        if not parts:
            return np.zeros((self.n_samples, 0, 2))
        return np.concatenate(parts, axis=1)

    def sample_proba(self, stamps: StampSet | np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Calibrated (S, N, K) class probabilities."""
        return self.calibrator.transform(self.raw_sample_proba(stamps, batch_size))

    def predict_proba(self, stamps: StampSet | np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """(N, K): the mean of the calibrated samples."""
        return self.sample_proba(stamps, batch_size).mean(axis=0)

    @property
    def n_samples(self) -> int:
        s = 0
        for m in self.models:
            stochastic = m.spec.task.bayesian or self.method == "mc-dropout"
            s += self.config.mc_samples if stochastic else 1
        return s

    def fit_calibration(self, kind: str, stamps_or_samples, y=None, sample_weight=None) -> Predictive:
        """Fit a calibrator (`none`, `temperature`, `platt`, `isotonic`) on labelled validation data; returns self.

        stamps_or_samples: a labelled StampSet (then `y` defaults to its labels; unlabelled stamps are
        refused), or uncalibrated samples (S, N, K) of this predictive with labels `y`.
        sample_weight: optional (N,) stamp weights of the fit (e.g. `domain_weights`, so that simulated
        and real-pixel validation stamps count equally).
        """
        if isinstance(stamps_or_samples, StampSet):
            y = stamps_or_samples.labels if y is None else y
            if (np.asarray(y) < 0).any():
                raise HitsStampsError("calibration needs labelled validation stamps (labels 0/1); "
                                      "found unlabelled ones")
            samples = self.raw_sample_proba(stamps_or_samples)
        else:
            samples = stamps_or_samples
        self.calibrator = make_calibrator(kind).fit(samples, y, sample_weight)
        return self

    def save(self, directory: str | os.PathLike, members: Sequence[str] | None = None, note: str = "",
             overwrite: bool = False) -> Path:
        """Write DIR/predictive.json (members: model directories relative to DIR; default: each model's path)."""
        from hits_stamps.training.modeldir import write_json

        directory = Path(directory)
        if members is None:
            members = [os.path.relpath(m.path, directory) for m in self.models]
        cfg = PredictiveConfig(method=self.method, members=tuple(members), mc_samples=self.config.mc_samples,
                               seed=self.config.seed, calibration=self.calibrator.to_dict(),
                               referral=self.config.referral, note=note)
        path = directory / PREDICTIVE_FILE
        if path.exists() and not overwrite:
            raise HitsStampsError(f"{path}: exists; pass --overwrite to replace it")
        directory.mkdir(parents=True, exist_ok=True)
        d = asdict(cfg)
        d["members"] = list(cfg.members)
        write_json(path, d)
        self.config, self.path = cfg, directory
        return path


def _check_models(models: list, method: str) -> None:
    if not models:
        raise HitsStampsError("a predictive method needs at least one trained model")
    tasks = {m.spec.task for m in models}
    if not all(t.classifies for t in tasks):
        raise HitsStampsError(f"every model must be a classifier; found {sorted(map(str, tasks))}")
    if method in ("softmax", "flipout", "mc-dropout") and len(models) != 1:
        raise HitsStampsError(f"method {method!r} uses one model; got {len(models)}")
    if method == "softmax" and tasks != {Task.CLASSIFIER}:
        raise HitsStampsError(f"{models[0].path}: method softmax needs a deterministic classifier; "
                              f"{models[0].name} is Bayesian (use flipout)")
    if method == "flipout" and tasks != {Task.BAYESIAN_CLASSIFIER}:
        raise HitsStampsError(f"{models[0].path}: method flipout needs a Bayesian classifier (seed-bnn, bayes-cnn); "
                              f"{models[0].name} is deterministic")
    if method == "mc-dropout":
        m = models[0]
        if m.spec.task is not Task.CLASSIFIER or not any(isinstance(x, torch.nn.modules.dropout._DropoutNd) and x.p > 0
                                                  for x in m.module.modules()):
            raise HitsStampsError(f"{m.path}: method mc-dropout needs a classifier with dropout; {m.name} has none")
    first = models[0]
    for m in models[1:]:
        if m.config["input"] != first.config["input"]:
            raise HitsStampsError(f"ensemble members must share input size and channels; "
                                  f"{m.path} differs from {first.path}")


def load_predictive(path: str | os.PathLike, device: str = "cpu") -> Predictive:
    """Rebuild the method saved in DIR/predictive.json (members loaded with `load_model`)."""
    from hits_stamps.training.modeldir import load_model, read_json

    path = Path(path)
    file = path / PREDICTIVE_FILE
    if not file.is_file():
        raise StampFileError(path, PREDICTIVE_FILE, "a saved uncertainty method (hits-stamps calibrate-uncertainty)",
                             "no predictive.json")
    d = read_json(file)
    if not isinstance(d, dict):
        raise StampFileError(file, None, "a JSON object", f"a JSON {type(d).__name__}")
    known = {"method", "members", "mc_samples", "seed", "calibration", "referral", "note"}
    if set(d) - known:
        raise StampFileError(file, None, f"only the keys {sorted(known)}", f"unknown keys {sorted(set(d) - known)}")
    try:
        cfg = PredictiveConfig(**{**d, "members": tuple(d.get("members", (".",)))})
    except (HitsStampsError, TypeError) as exc:
        raise StampFileError(file, None, "a valid uncertainty method", str(exc)) from exc
    calibrator = calibrator_from_dict(cfg.calibration, str(file))
    models = []
    for rel in cfg.members:
        if Path(rel).is_absolute():
            raise StampFileError(file, "members", "directories relative to the predictive.json", rel)
        models.append(load_model(path / rel, device=device))
    pred = Predictive(models, cfg.method, mc_samples=cfg.mc_samples, seed=cfg.seed, referral=cfg.referral)
    pred.config, pred.calibrator, pred.path = cfg, calibrator, path
    return pred


def has_predictive(path: str | os.PathLike) -> bool:
    return (Path(path) / PREDICTIVE_FILE).is_file()


def object_folds(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(N,) fold index of each stamp: the objects are shuffled (seeded) and dealt into k folds."""
    uniq, inv = np.unique(groups, return_inverse=True)
    k = max(2, min(k, uniq.size))
    fold_of_object = np.random.default_rng(seed).permutation(uniq.size) % k
    return fold_of_object[inv.reshape(-1)]


def out_of_fold(kind: str, samples: np.ndarray, y: np.ndarray, folds: np.ndarray,
                sample_weight: np.ndarray | None = None) -> np.ndarray:
    """Calibrated samples (S, N, K) of every validation stamp, each fold calibrated on the other folds only.

    sample_weight: optional (N,) weights of the fits (each fit uses the weights of its own stamps).
    """
    out = np.empty_like(samples, dtype=np.float64)
    w = _check_weights(sample_weight, samples.shape[1])
    for f in np.unique(folds):
        test = folds == f
        cal = make_calibrator(kind).fit(samples[:, ~test], y[~test], None if w is None else w[~test])
        out[:, test] = cal.transform(samples[:, test])
    return out


__all__ = [
    "CALIBRATIONS",
    "METHODS",
    "PREDICTIVE_FILE",
    "IsotonicCalibration",
    "PlattScaling",
    "Predictive",
    "PredictiveConfig",
    "TemperatureScaling",
    "apply_platt",
    "apply_temperature",
    "calibrator_from_dict",
    "domain_weights",
    "has_predictive",
    "load_predictive",
    "make_calibrator",
    "object_folds",
    "out_of_fold",
]
