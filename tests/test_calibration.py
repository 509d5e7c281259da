"""ECE, NLL, referral curves and the uncertainty report (deterministic and Bayesian models)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.errors import HitsStampsError
from hits_stamps.evaluation.bayesian import sample_accuracy, select_examples
from hits_stamps.evaluation.calibration import (
    accuracy_at_referral,
    binary_entropy,
    confidence_bins,
    ece,
    nll,
    referral_curve,
    uncertainty_report,
)
from hits_stamps.models.registry import ModelSpec, ObjectiveOutput, Recipe
from hits_stamps.preprocess import Preprocessor
from hits_stamps.training import TrainConfig, TrainedClassifier, fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ece_of_a_calibrated_predictor_is_near_zero():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = (rng.random(200_000) < p).astype(int)  # P(real | p) = p exactly
    # sampling noise: per bin ~ sqrt(0.25 / 13,000) ~ 0.004, and ECE averages |noise|
    assert ece(y, p) < 0.01


def test_ece_of_a_constant_overconfident_predictor():
    y = np.array([1] * 60 + [0] * 40)
    assert ece(y, np.full(100, 0.9)) == pytest.approx(0.9 - 0.6)  # says 90% real, 60% are
    assert ece(y, np.full(100, 0.2)) == pytest.approx(0.8 - 0.4)  # says 80% bogus, 40% are
    assert ece(y, y.astype(float)) == 0.0  # certain and always right
    assert ece(y, 1.0 - y) == pytest.approx(1.0)  # certain and always wrong


def test_confidence_bins_edges():
    y = np.array([1, 0, 1, 1])
    b = confidence_bins(y, np.array([1.0, 0.5, 0.5, 0.6]), n_bins=15)
    # confidence 1.0 -> last bin; 0.5 -> ceil(7.5) - 1 = 7; 0.6 -> ceil(9.0) - 1 = 8
    assert b.count[14] == 1 and b.count[7] == 2 and b.count[8] == 1 and b.count.sum() == 4
    assert b.accuracy[7] == 0.5  # p = 0.5 is called real: one right, one wrong
    assert np.isnan(b.accuracy[0]) and b.n_bins == 15 and b.edges.shape == (16,)
    assert b.to_json() == {"n_bins": 15, "count": b.count.tolist(), "accuracy": [None] * 7 + [0.5, 1.0] + [None] * 5
                           + [1.0], "confidence": [None] * 7 + [0.5, 0.6] + [None] * 5 + [1.0]}
    with pytest.raises(ValueError, match="n_bins must be >= 1"):
        confidence_bins(y, np.ones(4), 0)


def test_nll_values():
    y = np.array([1, 0, 1, 0])
    assert nll(y, np.full(4, 0.5)) == pytest.approx(math.log(2))
    p = np.array([0.9, 0.2, 0.7, 0.4])
    expected = -np.mean(np.log([0.9, 0.8, 0.7, 0.6]))
    assert nll(y, p) == pytest.approx(expected)
    assert nll(y, np.stack([1 - p, p], 1)) == pytest.approx(expected)  # (N, K) form
    assert nll(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-12))  # clipped, finite
    with pytest.raises(ValueError, match="p must have shape"):
        nll(y, np.ones((3, 2)))
    with pytest.raises(ValueError, match="p_real must be finite probabilities"):
        nll(y, np.array([0.1, 1.2, 0.3, 0.4]))


def test_referral_curve_by_hand():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.6, 0.4, 0.1])  # stamps 1 and 2 are wrong
    u = np.array([0.1, 0.9, 0.8, 0.2])  # ... and the most uncertain
    f, acc = referral_curve(y, p, u, [0.0, 0.25, 0.5, 1.0])
    assert acc[:3] == pytest.approx([0.5, 2 / 3, 1.0])
    assert np.isnan(acc[3])
    assert accuracy_at_referral(y, p, u, 0.5) == 1.0
    # an uncertainty that points at the right stamps makes referral useless
    assert accuracy_at_referral(y, p, -u, 0.5) == 0.0
    with pytest.raises(ValueError, match="uncertainty must have shape"):
        referral_curve(y, p, u[:3])


def test_binary_entropy():
    assert binary_entropy(np.array([0.0, 1.0, 0.5])) == pytest.approx([0.0, 0.0, math.log(2)])


def test_sample_accuracy_counts():
    y = np.array([0, 0, 1])
    p_real = np.array([[0.1, 0.6, 0.7], [0.2, 0.3, 0.4], [0.4, 0.2, 0.9], [0.6, 0.1, 0.8]])  # (S=4, N=3)
    samples = np.stack([1 - p_real, p_real], -1)
    acc = sample_accuracy(y, samples)
    assert acc["bogus"] == {"n_stamps": 2, "n_sample_predictions": 8, "correct": 6, "wrong": 2, "rate": 0.75}
    assert acc["real"]["correct"] == 3 and acc["real"]["rate"] == 0.75
    picks = dict((why, i) for i, why in select_examples(y, samples, per_group=1))
    # every stamp is right by its mean (0.325, 0.3, 0.7); std of p_real: 0.19, 0.19, 0.19...
    assert "wrong" not in picks
    assert picks["real, confident"] == 2
    assert set(picks) == {"bogus, confident", "real, confident", "most uncertain"}
    assert len(set(picks.values())) == 3


def _objective(model, x, y, n_train):
    logits = model(x)
    return ObjectiveOutput(torch.nn.functional.cross_entropy(logits, y), logits, {})


def _linear_model(tmp_path, stamps) -> TrainedClassifier:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 21 * 21, 2)).eval()
    spec = ModelSpec("toy-linear", "classifier", lambda **kw: module, _objective, Recipe())
    pre = Preprocessor().fit(stamps.images, stamps.channels)
    config = {"input": {"size": [21, 21], "channels": list(stamps.channels)}, "class_names": ["bogus", "real"]}
    return TrainedClassifier(tmp_path, spec, module, config, pre)


def _is_small_png(path) -> bool:
    data = Path(path).read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and 1000 < len(data) < 300_000


def test_report_for_a_deterministic_model(tmp_path):
    stamps = make_synthetic_stamps(60, seed=2)
    stamps.labels[:5] = -1  # unlabelled stamps are left out
    model = _linear_model(tmp_path, stamps)
    rep = uncertainty_report(model, stamps, tmp_path / "ev")
    p = model.predict_proba(stamps[5:])[:, 1]
    y = stamps.labels[5:]
    assert rep["n"] == 55 and rep["mc_samples"] is None
    assert rep["ece"] == pytest.approx(ece(y, p))
    assert rep["nll"] == pytest.approx(nll(y, p))
    assert rep["accuracy_at_10pct_referral"] == pytest.approx(accuracy_at_referral(y, p, binary_entropy(p), 0.1))
    assert set(rep["figures"]) == {"reliability", "referral"}
    assert all(_is_small_png(f) for f in rep["figures"].values())
    # given probabilities are used as they are
    probs = np.tile([[0.1, 0.9]], (60, 1))
    rep2 = uncertainty_report(model, stamps, tmp_path / "ev2", probs=probs)
    assert rep2["ece"] == pytest.approx(abs(0.9 - np.mean(y == 1)))
    with pytest.raises(HitsStampsError, match=r"probs must have shape \(60, 2\)"):
        uncertainty_report(model, stamps, tmp_path / "ev3", probs=probs[:10])
    stamps.labels[:] = -1
    with pytest.raises(HitsStampsError, match="needs labelled stamps"):
        uncertainty_report(model, stamps, tmp_path / "ev4")


def test_report_for_a_bayesian_model(tmp_path):
    train = make_synthetic_stamps(64, seed=0)
    model = fit(TrainConfig(model="seed-bnn", epochs=1), train, tmp_path / "m", progress=False)
    test = make_synthetic_stamps(30, seed=5)
    rep = uncertainty_report(model, test, tmp_path / "ev", mc_samples=8)
    assert rep["mc_samples"] == 8
    for key in ("ece", "nll", "accuracy_at_10pct_referral", "accuracy_at_10pct_referral_mi", "mean_entropy",
                "mean_mutual_information"):
        assert np.isfinite(rep[key]), key
    acc = rep["mc_sample_accuracy"]
    assert acc["bogus"]["n_stamps"] + acc["real"]["n_stamps"] == 30
    assert acc["real"]["n_sample_predictions"] == 8 * acc["real"]["n_stamps"]
    assert set(rep["figures"]) == {"reliability", "referral", "mc_stamps", "mc_sample_predictions", "mc_mean_std"}
    assert all(_is_small_png(f) for f in rep["figures"].values())
    # the probabilities are the mean of the Monte-Carlo samples (seed 0, as predict_proba)
    p = model.predict_proba(test, mc_samples=8, seed=0)[:, 1]
    assert rep["nll"] == pytest.approx(nll(test.labels, p), rel=1e-6)
    # default: the model's recipe (30 samples) for Bayesian models
    rep = uncertainty_report(model, test[:6], tmp_path / "ev_default", figures=False)
    assert rep["mc_samples"] == model.mc_samples == 30 and rep["figures"] == {}
    assert not (tmp_path / "ev_default" / "reliability.png").exists()


def test_given_monte_carlo_samples_are_used_once(tmp_path, monkeypatch):
    from hits_stamps import montecarlo
    from hits_stamps.evaluation import calibration, evaluate
    from hits_stamps.evaluation.evaluate import evaluate_model, mc_samples_with_progress, predict_with_progress

    train = make_synthetic_stamps(64, seed=0)
    model = fit(TrainConfig(model="seed-bnn", epochs=1), train, tmp_path / "m", progress=False)
    test = make_synthetic_stamps(30, seed=5)
    samples = mc_samples_with_progress(model, test, 8, progress=False)
    assert samples.shape == (8, 30, 2)
    np.testing.assert_allclose(samples.mean(0), predict_with_progress(model, test, mc_samples=8, progress=False),
                               atol=1e-6)
    rep = uncertainty_report(model, test, tmp_path / "ev", mc_samples=8, figures=False)
    with pytest.raises(HitsStampsError, match=r"samples must have shape \(S, 30, 2\)"):
        uncertainty_report(model, test, tmp_path / "ev", samples=samples[:, :10], figures=False)
    calls = []
    real_mc = montecarlo.predict_samples
    counted = lambda *a, **k: calls.append(1) or real_mc(*a, **k)  # noqa: E731
    monkeypatch.setattr(calibration, "predict_samples", counted)
    monkeypatch.setattr(evaluate, "predict_samples", counted)
    given = uncertainty_report(model, test, tmp_path / "ev", samples=samples, figures=False)
    assert not calls  # no second Monte-Carlo pass
    assert given["nll"] == pytest.approx(rep["nll"], rel=1e-6) and given["mc_samples"] == 8
    # evaluate_model runs the Monte-Carlo pass exactly once per chunk (here one chunk)
    metrics = evaluate_model(model, test, tmp_path / "eval", mc_samples=8, progress=False)
    assert len(calls) == 1
    assert metrics["nll"] == pytest.approx(rep["nll"], rel=1e-6) and metrics["mc_samples"] == 8
