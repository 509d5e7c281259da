"""Bootstrap over objects and Wilson intervals: closed forms, coverage, groups respected, degenerate sets."""

import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hits_stamps.evaluation.intervals import (
    bootstrap_intervals,
    group_codes,
    resample_weights,
    resampled_auc,
    wilson_interval,
)


def _width(ci):
    return ci[1] - ci[0]


@pytest.mark.parametrize("k,n,expected", [
    (3, 4, (0.3006, 0.9544)),  # the formula in the docstring, z = 1.959964
    (0, 10, (0.0, 0.2775)),  # stays inside [0, 1] and is not empty at k = 0
    (10, 10, (0.7225, 1.0)),
])
def test_wilson_closed_form(k, n, expected):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(expected[0], abs=1e-4) and hi == pytest.approx(expected[1], abs=1e-4)


def test_wilson_degenerate_and_invalid():
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(5, 3)


def test_wilson_covers_a_simulated_binomial():
    rng = np.random.default_rng(1)
    p, n = 0.9, 60
    hits = 0
    for k in rng.binomial(n, p, size=2000):
        lo, hi = wilson_interval(int(k), n)
        hits += lo <= p <= hi
    assert 0.93 <= hits / 2000 <= 0.975


def test_bootstrap_covers_a_simulated_binomial_accuracy():
    """Stamps correct with probability 0.9: the 95% interval of the accuracy holds 0.9 about 95% of the time."""
    rng = np.random.default_rng(2)
    hits = 0
    sims, n = 150, 200
    for s in range(sims):
        y = rng.integers(0, 2, n)
        correct = rng.random(n) < 0.9
        p = np.where(correct, y, 1 - y).astype(float)
        ci = bootstrap_intervals(y, p, None, n_resamples=300, seed=s, auc=False)["intervals"]["accuracy"]
        hits += ci[0] <= 0.9 <= ci[1]
    assert 0.89 <= hits / sims <= 0.99


def _grouped_set(n_objects=60, seed=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n_objects)
    p = np.clip(0.35 * y + 0.65 * rng.random(n_objects), 0, 1)
    return y, p, np.array([f"obj{i}" for i in range(n_objects)])


def test_duplicating_stamps_within_objects_keeps_the_interval():
    y, p, g = _grouped_set()
    base = bootstrap_intervals(y, p, g, seed=0)["intervals"]
    rep = 5
    dup = bootstrap_intervals(np.repeat(y, rep), np.repeat(p, rep), np.repeat(g, rep), seed=0)["intervals"]
    as_stamps = bootstrap_intervals(np.repeat(y, rep), np.repeat(p, rep), None, seed=0)["intervals"]
    for key in ("accuracy", "recall", "recall_bogus", "precision", "roc_auc"):
        # the same objects drawn the same number of times: the same interval
        assert dup[key] == pytest.approx(base[key]), key
        # five copies taken as five independent objects: about sqrt(5) narrower, which is the error avoided
        assert _width(as_stamps[key]) < 0.6 * _width(base[key]), key


def test_resampled_auc_matches_weighted_sklearn_with_ties():
    rng = np.random.default_rng(4)
    n = 300
    y = rng.integers(0, 2, n)
    p = np.round(np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1), 1)  # many ties
    codes, n_groups = group_codes(rng.integers(0, 40, n).astype(str), n)
    w = resample_weights(n_groups, 4, seed=0)
    got = resampled_auc(y, p, codes, w)
    want = [roc_auc_score(y, p, sample_weight=w[b, codes]) for b in range(4)]
    assert got == pytest.approx(want)
    assert resampled_auc(y, p, codes, np.ones((1, n_groups)))[0] == pytest.approx(roc_auc_score(y, p))


def test_bootstrap_is_seeded():
    y, p, g = _grouped_set()
    a = bootstrap_intervals(y, p, g, seed=7)["intervals"]
    assert a == bootstrap_intervals(y, p, g, seed=7)["intervals"]
    assert a != bootstrap_intervals(y, p, g, seed=8)["intervals"]


def test_thresholds_are_keyed_by_suffix():
    y, p, g = _grouped_set()
    out = bootstrap_intervals(y, p, g, thresholds={"": 0.5, "_val": 0.9}, n_resamples=200)
    iv = out["intervals"]
    assert {"fnr", "fpr", "fnr_val", "fpr_val", "roc_auc"} <= set(iv)
    assert iv["fnr_val"][0] > iv["fnr"][0]  # a stricter threshold misses more real stamps
    assert out["n_objects"] == 60 and out["method"] == "percentile bootstrap over objects"


def test_degenerate_sets_give_none_with_a_note():
    one_object = bootstrap_intervals([0, 1, 1], [0.2, 0.7, 0.9], ["a", "a", "a"])
    assert all(v is None for v in one_object["intervals"].values())
    assert "1 object(s)" in one_object["notes"][0]
    one_class = bootstrap_intervals([1, 1, 1, 1], [0.2, 0.7, 0.9, 0.6], None, n_resamples=50)
    assert one_class["intervals"]["roc_auc"] is None and one_class["intervals"]["recall_bogus"] is None
    assert one_class["intervals"]["recall"] is not None
    assert any("roc_auc" in note for note in one_class["notes"])
    # a rare class: some resamples draw no real stamp; those are counted, not crashed on
    rare = bootstrap_intervals([1] + [0] * 19, np.linspace(0, 1, 20), None, n_resamples=200)
    assert rare["undefined_resamples"]["recall"] > 0 and rare["intervals"]["recall"] is not None
    with pytest.raises(ValueError, match="groups must have shape"):
        bootstrap_intervals([0, 1], [0.1, 0.9], ["a"])


def test_bootstrap_is_fast_enough():
    rng = np.random.default_rng(5)
    n = 5000
    y = rng.integers(0, 2, n)
    p = rng.random(n)
    g = rng.integers(0, 400, n).astype(str)
    t0 = time.perf_counter()
    out = bootstrap_intervals(y, p, g, thresholds={"": 0.5, "_val": 0.8}, n_resamples=1000)
    assert time.perf_counter() - t0 < 5.0
    assert out["intervals"]["roc_auc"] is not None
