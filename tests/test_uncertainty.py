"""Monte-Carlo prediction and the uncertainty measures (from probabilities, vectorised)."""

import math

import numpy as np
import pytest
import torch

from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.models.registry import ModelSpec, ObjectiveOutput, Recipe
from hits_stamps.preprocess import Preprocessor
from hits_stamps.training import TrainConfig, TrainedClassifier, fit
from hits_stamps.uncertainty import (
    expected_entropy,
    mc_predict_proba,
    mc_predict_stamps,
    mutual_information,
    predictive_entropy,
    predictive_mean,
    predictive_std,
    summarize,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bnn(tmp_path_factory):
    d = tmp_path_factory.mktemp("bnn")
    return fit(TrainConfig(model="seed-bnn", epochs=1), make_synthetic_stamps(64, seed=0), d / "m", progress=False)


def test_mc_predict_proba_shape_seed_and_rng_state():
    from hits_stamps.models.bayesian import SeedBNN

    model = SeedBNN(in_channels=2, size=(5, 5)).eval()
    x = torch.rand(7, 2, 5, 5)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = mc_predict_proba(model, x, n_samples=6, seed=4)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert a.shape == (6, 7, 2)
    assert torch.allclose(a.sum(-1), torch.ones(6, 7))
    assert torch.equal(a, mc_predict_proba(model, x, n_samples=6, seed=4))
    assert not torch.equal(a, mc_predict_proba(model, x, n_samples=6, seed=5))
    assert not torch.equal(a[0], a[1])  # samples differ
    with pytest.raises(ValueError, match="n_samples must be >= 1; got 0"):
        mc_predict_proba(model, x, n_samples=0)


def _reference(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Per-stamp loop, written independently of the vectorised code."""
    s, n, k = probs.shape
    out = {name: [] for name in ("mean", "std", "entropy", "expected_entropy", "mutual_information")}
    for i in range(n):
        p = probs[:, i, :]
        m = p.mean(0)
        h = -sum(v * math.log(v) for v in m if v > 0)
        eh = -sum(v * math.log(v) for row in p for v in row if v > 0) / s
        out["mean"].append(m)
        out["std"].append(np.sqrt(((p - m) ** 2).mean(0)))
        out["entropy"].append(h)
        out["expected_entropy"].append(eh)
        out["mutual_information"].append(h - eh)
    return {k: np.array(v) for k, v in out.items()}


def test_measures_match_a_per_stamp_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20, 50, 3)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    probs[:, 0] = [1.0, 0.0, 0.0]  # exact zeros: 0 log 0 = 0
    ref = _reference(probs)
    summ = summarize(probs)
    for key in ref:
        assert np.allclose(summ[key], ref[key], atol=1e-12), key
    assert np.allclose(predictive_mean(probs), ref["mean"])
    assert np.allclose(predictive_std(probs), ref["std"])
    assert np.allclose(predictive_entropy(probs), ref["entropy"])
    assert np.allclose(expected_entropy(probs), ref["expected_entropy"])
    assert np.allclose(mutual_information(probs), ref["mutual_information"], atol=1e-12)
    assert summ["entropy"][0] == 0.0 and summ["mutual_information"][0] == 0.0


def test_known_values():
    agree = np.tile([[0.3, 0.7]], (10, 4, 1))  # all samples agree
    assert np.allclose(mutual_information(agree), 0.0)
    assert np.allclose(predictive_std(agree), 0.0)
    h = -(0.3 * math.log(0.3) + 0.7 * math.log(0.7))
    assert np.allclose(predictive_entropy(agree), h)
    assert np.allclose(expected_entropy(agree), h)
    # two confident samples that disagree: all uncertainty is epistemic
    disagree = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert mutual_information(disagree)[0] == pytest.approx(math.log(2))
    assert expected_entropy(disagree)[0] == 0.0
    assert np.allclose(predictive_std(disagree), 0.5)
    # uniform over K classes: entropy log K
    assert predictive_entropy(np.full((3, 2, 4), 0.25)) == pytest.approx([math.log(4)] * 2)
    # torch tensors work too
    assert np.allclose(mutual_information(torch.tensor(agree)), 0.0)
    with pytest.raises(ValueError, match=r"probs must have shape \(S, N, K\); got \(4, 2\)"):
        predictive_entropy(np.ones((4, 2)))


def test_mc_predict_stamps_matches_predict_proba(bnn):
    stamps = make_synthetic_stamps(50, seed=9)
    samples = mc_predict_stamps(bnn, stamps, n_samples=5, batch_size=16, seed=3)
    assert samples.shape == (5, 50, 2)
    assert np.allclose(samples.mean(0), bnn.predict_proba(stamps, mc_samples=5, seed=3, batch_size=16), atol=1e-6)
    assert np.array_equal(samples, mc_predict_stamps(bnn, stamps, n_samples=5, batch_size=16, seed=3))
    assert mc_predict_stamps(bnn, stamps.images[:3], n_samples=2).shape == (2, 3, 2)  # plain arrays too
    assert mc_predict_stamps(bnn, stamps[:0], n_samples=4).shape == (4, 0, 2)


def test_mc_predict_stamps_errors(bnn):
    from hits_stamps.errors import HitsStampsError

    with pytest.raises(HitsStampsError, match="expects stamps of 21x21x4; got 16x16x4"):
        mc_predict_stamps(bnn, make_synthetic_stamps(4, size=16), n_samples=2)
    with pytest.raises(HitsStampsError, match="n_samples must be >= 1"):
        mc_predict_stamps(bnn, make_synthetic_stamps(4), n_samples=0)


def _objective(model, x, y, n_train):
    logits = model(x)
    return ObjectiveOutput(torch.nn.functional.cross_entropy(logits, y), logits, {})


def test_mc_predict_stamps_deterministic_model_gives_one_sample(tmp_path):
    stamps = make_synthetic_stamps(12, seed=1)
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 21 * 21, 2)).eval()
    spec = ModelSpec("toy-linear", "classifier", lambda **kw: module, _objective, Recipe())
    pre = Preprocessor().fit(stamps.images, stamps.channels)
    config = {"input": {"size": [21, 21], "channels": list(stamps.channels)}, "class_names": ["bogus", "real"]}
    model = TrainedClassifier(tmp_path, spec, module, config, pre)
    samples = mc_predict_stamps(model, stamps, n_samples=30)
    assert samples.shape == (1, 12, 2)
    assert np.allclose(samples[0], model.predict_proba(stamps), atol=1e-6)


def test_referral_threshold_refers_the_fewest_stamps_that_reach_the_target():
    from hits_stamps.errors import HitsStampsError
    from hits_stamps.uncertainty import referral_threshold

    y = np.array([1, 1, 0, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.2, 0.6, 0.4, 0.1])  # stamps 3 and 4 are wrong
    u = np.array([0.1, 0.2, 0.1, 0.6, 0.5, 0.3])
    r = referral_threshold(y, p, u, target_accuracy=1.0)
    assert r["cut"] == 0.5 and r["fraction_referred"] == pytest.approx(2 / 6) and r["accuracy_kept"] == 1.0
    assert ((u >= r["cut"]) == np.array([0, 0, 0, 1, 1, 0], bool)).all()
    r = referral_threshold(y, p, u, target_accuracy=0.75)
    assert r["cut"] == 0.6 and r["fraction_referred"] == pytest.approx(1 / 6)
    assert referral_threshold(y, p, u, target_accuracy=0.6)["cut"] == float("inf")
    tied = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.5])  # no cut splits equal values
    with pytest.raises(HitsStampsError, match="no referral cut reaches it"):
        referral_threshold(y, p, tied, target_accuracy=0.9)
    with pytest.raises(HitsStampsError, match="labels in"):
        referral_threshold(np.array([1, -1]), p[:2], u[:2], target_accuracy=0.9)
