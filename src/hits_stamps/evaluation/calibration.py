"""Calibration and uncertainty of real/bogus probabilities: ECE, NLL, reliability, referral.

Conventions (as `hits_stamps.evaluation.metrics`): label 1 is real, 0 bogus; a stamp is predicted
real when p_real >= 0.5. The confidence of a prediction is the probability of the predicted class,
max(p_real, 1 - p_real).

- `ece`: expected calibration error (Naeini et al. 2015; Guo et al. 2017) over `n_bins` equal-width
  confidence bins B_m = ((m-1)/M, m/M]:  ECE = sum_m |B_m|/N * |acc(B_m) - conf(B_m)|.
- `nll`: mean negative log-likelihood of the labels, -(1/N) sum_n log p(y_n | x_n), in nats.
- `referral_curve`: accuracy on the stamps kept when the fraction f with the highest uncertainty is
  referred to a human (ties broken by stamp order).

`uncertainty_report` applies these to a trained model on a labelled StampSet (every classifier)
and, for Bayesian models, adds the Monte-Carlo analysis of `hits_stamps.evaluation.bayesian`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hits_stamps.errors import HitsStampsError
from hits_stamps.montecarlo import predict_samples

if TYPE_CHECKING:
    from hits_stamps.stamps import StampSet
    from hits_stamps.training.modeldir import TrainedClassifier


def mc_sample_count(mc_samples: int | None, model: TrainedClassifier) -> int:
    """Monte-Carlo passes for a Bayesian model: `mc_samples`, or the model's default (its recipe's) when None; >= 1."""
    s = model.mc_samples if mc_samples is None else int(mc_samples)
    if s < 1:
        raise HitsStampsError(f"mc_samples must be >= 1; got {s}")
    return s


REFERRAL_FRACTIONS = np.round(np.arange(0.0, 0.501, 0.01), 2)


def _check(y, p_real) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    p = np.asarray(p_real, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape:
        raise ValueError(f"y and p_real must be 1-d of the same length; got {y.shape} and {p.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"y must hold labels 0 (bogus) or 1 (real); found {sorted(set(y.tolist()) - {0, 1})[:5]}")
    if p.size and (not np.isfinite(p).all() or p.min() < 0 or p.max() > 1):
        raise ValueError("p_real must be finite probabilities in [0, 1]")
    return y.astype(np.int64), p


@dataclass(frozen=True)
class ReliabilityBins:
    """Reliability-diagram statistics over M equal-width confidence bins of [0, 1] (`confidence_bins`)."""

    edges: np.ndarray  # (M + 1,) bin edges, 0 to 1
    count: np.ndarray  # (M,) stamps per bin
    confidence: np.ndarray  # (M,) mean confidence (probability of the predicted class); NaN in empty bins
    accuracy: np.ndarray  # (M,) fraction of the bin's stamps predicted right; NaN in empty bins

    @property
    def n_bins(self) -> int:
        return len(self.count)

    def to_json(self) -> dict[str, Any]:
        """{n_bins, count, confidence, accuracy}, empty bins' NaN as None: the "reliability" entry of the
        uncertainty and shift results (read back by the report's reliability overlay)."""
        return {"n_bins": self.n_bins, "count": self.count.tolist(), "confidence": _nan_to_none(self.confidence),
                "accuracy": _nan_to_none(self.accuracy)}


def confidence_bins(y, p_real, n_bins: int = 15) -> ReliabilityBins:
    """Reliability-diagram statistics over `n_bins` equal-width confidence bins of [0, 1].

    Returns `edges` (n_bins + 1,), and per bin `count`, mean `confidence` and `accuracy` (n_bins,);
    empty bins have count 0 and NaN confidence/accuracy. A confidence c falls in bin ceil(c*M) - 1
    (bins closed on the right; c = 0 goes to the first bin).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1; got {n_bins}")
    y, p = _check(y, p_real)
    pred = (p >= 0.5).astype(np.int64)
    conf = np.where(pred == 1, p, 1.0 - p)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    correct_sum = np.bincount(idx, weights=(pred == y).astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ReliabilityBins(
            edges=np.linspace(0.0, 1.0, n_bins + 1),
            count=count,
            confidence=np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan),
            accuracy=np.where(count > 0, correct_sum / np.maximum(count, 1), np.nan),
        )


def ece(y, p_real, n_bins: int = 15) -> float:
    """Expected calibration error (top-label confidence, `n_bins` equal-width bins); 0 is perfect."""
    b = confidence_bins(y, p_real, n_bins)
    n = b.count.sum()
    if n == 0:
        raise ValueError("ece needs at least one stamp")
    used = b.count > 0
    return float(np.sum(b.count[used] / n * np.abs(b.accuracy[used] - b.confidence[used])))


def nll(y, p, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood -(1/N) sum_n log p(y_n), nats.

    p: (N,) probabilities of class 1 (real), or (N, K) class probabilities. Probabilities are
    clipped to [eps, 1] so that one confidently wrong stamp gives a large but finite value.
    """
    y = np.asarray(y).astype(np.int64)
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 1:
        y, p = _check(y, p)
        p_true = np.where(y == 1, p, 1.0 - p)
    elif p.ndim == 2 and p.shape[0] == y.shape[0] and y.ndim == 1:
        if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
            raise ValueError(f"y must hold class indices in [0, {p.shape[1]}); found {y.min()}..{y.max()}")
        p_true = p[np.arange(len(y)), y]
    else:
        raise ValueError(f"p must have shape (N,) or (N, K) with N = len(y) = {y.shape}; got {p.shape}")
    if p_true.size == 0:
        raise ValueError("nll needs at least one stamp")
    return float(-np.mean(np.log(np.clip(p_true, eps, 1.0))))


def binary_entropy(p_real) -> np.ndarray:
    """Entropy (nats) of Bernoulli(p_real), elementwise: the uncertainty of a single prediction."""
    p = np.clip(np.asarray(p_real, dtype=np.float64), 0.0, 1.0)
    q = 1.0 - p
    with np.errstate(divide="ignore", invalid="ignore"):
        return -(np.where(p > 0, p * np.log(p), 0.0) + np.where(q > 0, q * np.log(q), 0.0))


def referral_curve(y, p_real, uncertainty, fractions=None) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy on the kept stamps after referring the most uncertain fraction f, for each f.

    uncertainty: (N,), higher = less certain. For fraction f the round(f*N) most uncertain stamps
    are referred (ties: the earlier stamp is referred first). Returns (fractions, accuracy), with
    accuracy NaN where nothing is kept. Default fractions 0, 0.01, ..., 0.5.
    """
    y, p = _check(y, p_real)
    u = np.asarray(uncertainty, dtype=np.float64)
    if u.shape != y.shape:
        raise ValueError(f"uncertainty must have shape {y.shape}; got {u.shape}")
    if not np.isfinite(u).all():
        raise ValueError("uncertainty must be finite")
    f = REFERRAL_FRACTIONS if fractions is None else np.asarray(fractions, dtype=np.float64)
    if f.ndim != 1 or (f.size and (f.min() < 0 or f.max() > 1)):
        raise ValueError(f"fractions must be a 1-d array in [0, 1]; got {f}")
    n = len(y)
    order = np.argsort(-u, kind="stable")  # most uncertain first
    correct = ((p >= 0.5).astype(np.int64) == y)[order].astype(np.float64)
    # kept stamps for r referred are order[r:]; their correct count is a suffix sum
    suffix = np.concatenate([np.cumsum(correct[::-1])[::-1], [0.0]])  # (N+1,)
    referred = np.rint(f * n).astype(np.int64)
    kept = n - referred
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(kept > 0, suffix[referred] / np.maximum(kept, 1), np.nan)
    return f, acc


def accuracy_at_referral(y, p_real, uncertainty, fraction: float = 0.1) -> float:
    """Accuracy on the stamps kept when the `fraction` most uncertain are referred."""
    return float(referral_curve(y, p_real, uncertainty, [fraction])[1][0])


# ----------------------------------------------------------------------------- figures


def plot_reliability(bins: ReliabilityBins, path: str | Path, title: str) -> Path:
    """Reliability diagram (accuracy vs confidence per bin, with the bin counts) as a PNG."""
    from matplotlib.figure import Figure

    from hits_stamps.plotting import save_png

    fig = Figure(figsize=(4.6, 4.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    edges = bins.edges
    width = np.diff(edges)
    used = bins.count > 0
    ax.bar(edges[:-1][used], bins.accuracy[used], width=width[used], align="edge",
           color="tab:blue", edgecolor="k", alpha=0.8, label="accuracy")
    ax.bar(edges[:-1][used], bins.confidence[used] - bins.accuracy[used], bottom=bins.accuracy[used],
           width=width[used], align="edge", color="tab:red", alpha=0.3, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for lo, w, c, a in zip(edges[:-1][used], width[used], bins.count[used], bins.accuracy[used], strict=True):
        ax.text(lo + w / 2, min(a, 0.95) + 0.02, str(int(c)), ha="center", fontsize=6, rotation=90)
    lo = 0.5 if np.all(edges[:-1][used] >= 0.45) else 0.0
    ax.set(xlim=(lo, 1), ylim=(lo, 1.05), xlabel="confidence (probability of the predicted class)",
           ylabel="accuracy", title=title)
    ax.legend(loc="upper left", fontsize=7)
    return save_png(fig, path, dpi=None, tight=False)


def plot_referral(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str) -> Path:
    """Accuracy of the kept stamps vs the fraction referred, one line per uncertainty measure."""
    from matplotlib.figure import Figure

    from hits_stamps.plotting import save_png

    fig = Figure(figsize=(5.0, 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for name, (f, acc) in curves.items():
        ax.plot(100 * f, acc, marker=".", ms=3, label=name)
    ax.axvline(10, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="stamps referred to a human (%, most uncertain first)", ylabel="accuracy of the kept stamps",
           title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path, dpi=None, tight=False)


# ----------------------------------------------------------------------------- the report


def uncertainty_report(
    model: TrainedClassifier,
    stamps: StampSet,
    out_dir: Path,
    probs: np.ndarray | None = None,
    mc_samples: int | None = None,
    figures: bool = True,
    samples: np.ndarray | None = None,
) -> dict[str, Any]:
    """Calibration and uncertainty of `model` on the labelled stamps of `stamps`; writes PNGs to out_dir.

    probs: (N, 2) class probabilities the caller already computed for all of `stamps` (used for
    ECE, NLL and the referral curves); computed here when None. For Bayesian models
    (task "bayesian-classifier") `mc_samples` Monte-Carlo passes (default: the model's recipe, 30) give the predictive
    std, entropy and mutual information and the seed report's Figures 3-5
    (`hits_stamps.evaluation.bayesian`); the headline referral uses the predictive entropy, the MI
    referral is reported beside it. Deterministic models refer by the entropy of their softmax and
    report `mc_samples` None. `figures=False` skips the PNGs (`figures` is then empty).
    samples: the (S, N, 2) Monte-Carlo probabilities of a Bayesian model the caller already
    computed for all of `stamps` (then no prediction runs here; `probs` defaults to their mean).

    Returns a JSON-serialisable dict: `ece`, `nll`, `accuracy_at_10pct_referral`, `mc_samples`,
    `n`, `referral_uncertainty`, `referral_curve`, `reliability`, `figures`, and for Bayesian models
    `accuracy_at_10pct_referral_mi`, `mc_sample_accuracy` (per class: counts and rates of correct
    sample predictions), `mean_predictive_std`, `mean_entropy`, `mean_mutual_information`.
    """
    from hits_stamps.evaluation import bayesian as bayes_plots
    from hits_stamps.uncertainty import summarize

    if not model.spec.task.classifies:
        raise HitsStampsError(f"{model.name} is a {model.spec.task}; uncertainty_report needs a classifier")
    bayesian = model.spec.task.bayesian
    if probs is not None:
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != (len(stamps), 2):
            raise HitsStampsError(f"probs must have shape ({len(stamps)}, 2) to match the stamps; got {probs.shape}")
    keep = stamps.labels >= 0
    if not keep.any():
        raise HitsStampsError("uncertainty_report needs labelled stamps (labels 0 or 1); found none")
    data = stamps if keep.all() else stamps[keep]
    if probs is not None:
        probs = probs[keep]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    y = data.labels

    if not bayesian:
        samples = None
    if bayesian:
        if samples is None:
            samples = predict_samples(model, data, n_samples=mc_sample_count(mc_samples, model), seed=0)  # (S, N, 2)
        else:
            samples = np.asarray(samples)
            if samples.ndim != 3 or samples.shape[1:] != (len(stamps), 2):
                raise HitsStampsError(
                    f"samples must have shape (S, {len(stamps)}, 2) to match the stamps; got {samples.shape}")
            samples = samples[:, keep]
        if probs is None:
            probs = samples.mean(axis=0)
    elif probs is None:
        probs = model.predict_proba(data)
    p_real = np.clip(probs[:, 1], 0.0, 1.0)

    bins = confidence_bins(y, p_real, 15)
    title = model.name
    if bayesian:
        summ = summarize(samples)
        uncert = {"predictive entropy": summ["entropy"], "mutual information (BALD)": summ["mutual_information"]}
    else:
        uncert = {"softmax entropy": binary_entropy(p_real)}
    curves = {name: referral_curve(y, p_real, u) for name, u in uncert.items()}
    head_curve = next(iter(curves.values()))
    plots: dict[str, str] = {}
    if figures:
        plots["reliability"] = str(plot_reliability(bins, out_dir / "reliability.png", f"{title}: reliability"))
        plots["referral"] = str(plot_referral(curves, out_dir / "referral.png", f"{title}: accuracy vs referral"))
    report: dict[str, Any] = {
        "n": int(len(y)),
        "ece": ece(y, p_real, 15),
        "nll": nll(y, p_real),
        "accuracy_at_10pct_referral": accuracy_at_referral(y, p_real, next(iter(uncert.values())), 0.1),
        "mc_samples": int(samples.shape[0]) if bayesian else None,
        "referral_uncertainty": next(iter(uncert)),
        "referral_curve": {"fraction": head_curve[0].tolist(), "accuracy": _nan_to_none(head_curve[1])},
        "reliability": bins.to_json(),
    }
    if bayesian:
        report["accuracy_at_10pct_referral_mi"] = accuracy_at_referral(y, p_real, summ["mutual_information"], 0.1)
        report["mc_sample_accuracy"] = bayes_plots.sample_accuracy(y, samples)
        report["mean_predictive_std"] = {
            name: float(summ["std"][y == k, 1].mean()) if np.any(y == k) else None
            for k, name in enumerate(("bogus", "real"))
        }
        report["mean_entropy"] = float(summ["entropy"].mean())
        report["mean_mutual_information"] = float(summ["mutual_information"].mean())
        if figures:
            plots.update(bayes_plots.write_figures(data, samples, out_dir, title))
    report["figures"] = plots
    return report


def _nan_to_none(a: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=np.float64)]
