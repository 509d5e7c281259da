"""Uncertainty methods behind one interface, post-hoc calibration, their evaluation, and predict with them."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from hits_stamps.cli import main
from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.errors import HitsStampsError, NotFittedError, StampFileError
from hits_stamps.evaluation.calibration import ece, nll, referral_curve
from hits_stamps.evaluation.shift import evaluate_uncertainty, weighted_metrics
from hits_stamps.io import write_stamps
from hits_stamps.predictive import (
    IsotonicCalibration,
    PlattScaling,
    Predictive,
    TemperatureScaling,
    apply_platt,
    apply_temperature,
    domain_weights,
    load_predictive,
    make_calibrator,
    object_folds,
    out_of_fold,
)
from hits_stamps.serve import PredictConfig, predict_file
from hits_stamps.training import TrainConfig, fit, load_model
from hits_stamps.uncertainty import mc_predict_proba, mutual_information, summarize

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"widths": [4, 8], "hidden": 8}


def _overconfident(n: int, seed: int, scale: float = 4.0):
    """Labels drawn from sigmoid(z) and probabilities sigmoid(scale * z): overconfident by `scale`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int64)
    p = 1 / (1 + np.exp(-scale * z))
    return y, np.stack([1 - p, p], axis=-1)[None]  # (1, N, 2)


@pytest.fixture(scope="module")
def models(tmp_path_factory, one_torch_thread):
    """Two tiny rotinv-cnn (seeds 0 and 1) and a tiny seed-cnn (no dropout), trained for a few steps."""
    root = tmp_path_factory.mktemp("predictive")
    train = make_synthetic_stamps(160, seed=0)
    out = {}
    for name, model, seed, kw in (("m0", "rotinv-cnn", 0, TINY), ("m1", "rotinv-cnn", 1, TINY),
                                  ("plain", "seed-cnn", 0, {})):
        cfg = TrainConfig(model=model, epochs=1, steps_per_epoch=3, batch_size=32, seed=seed, model_kwargs=kw)
        out[name] = fit(cfg, train, root / "ens" / name, progress=False)
    out["root"] = root
    out["val"] = make_synthetic_stamps(120, seed=3)
    return out


# ----------------------------------------------------------------------------- calibration


def test_temperature_fitted_on_overconfident_probabilities_lowers_nll():
    y, s = _overconfident(4000, seed=0)
    t = TemperatureScaling().fit(s, y)
    assert 3.0 < t.temperature_ < 5.5  # the true over-sharpening is 4
    yt, st = _overconfident(4000, seed=1)  # fresh stamps: the gain is not in-sample only
    assert nll(yt, t.transform(st)[0]) < nll(yt, st[0]) - 0.1
    assert ece(yt, t.transform(st)[0, :, 1]) < 0.5 * ece(yt, st[0, :, 1])


def test_temperature_of_calibrated_probabilities_is_near_one_and_t1_is_identity():
    y, s = _overconfident(20000, seed=2, scale=1.0)
    assert TemperatureScaling().fit(s, y).temperature_ == pytest.approx(1.0, abs=0.08)
    np.testing.assert_allclose(apply_temperature(s, 1.0), s, atol=1e-12)
    logits = np.random.default_rng(0).normal(0, 3, (7, 2))
    soft = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    want = np.exp(logits / 2.5) / np.exp(logits / 2.5).sum(1, keepdims=True)
    np.testing.assert_allclose(apply_temperature(soft[None], 2.5)[0], want, atol=1e-10)  # = softmax(z / T)


def test_platt_recovers_a_shifted_and_overconfident_map_and_contains_temperature():
    rng = np.random.default_rng(6)
    z = rng.normal(0, 1.5, 6000)
    y = (rng.random(6000) < 1 / (1 + np.exp(-z))).astype(np.int64)
    p = 1 / (1 + np.exp(-(3.0 * z - 2.0)))  # log-odds 3z - 2: slope 1/3 and offset 2/3 undo it
    s = np.stack([1 - p, p], axis=-1)[None]
    pl = PlattScaling().fit(s, y)
    assert pl.slope_ == pytest.approx(1 / 3, abs=0.05) and pl.offset_ == pytest.approx(2 / 3, abs=0.12)
    assert nll(y, pl.transform(s)[0]) < nll(y, TemperatureScaling().fit(s, y).transform(s)[0]) - 0.01
    np.testing.assert_allclose(apply_platt(s, 0.4, 0.0), apply_temperature(s, 2.5), atol=1e-9)


def test_isotonic_is_monotone_and_fixes_a_miscalibrated_map():
    y, s = _overconfident(4000, seed=4)
    iso = IsotonicCalibration().fit(s, y)
    assert np.all(np.diff(iso.x_) > 0) and np.all(np.diff(iso.y_) >= 0)
    yt, st = _overconfident(4000, seed=5)
    assert ece(yt, iso.transform(st)[0, :, 1]) < 0.5 * ece(yt, st[0, :, 1])
    with pytest.raises(HitsStampsError, match="two classes"):
        IsotonicCalibration().fit(np.full((1, 4, 3), 1 / 3), np.zeros(4, int))


def test_calibrators_refuse_use_before_fit_and_bad_labels():
    with pytest.raises(NotFittedError, match="not fitted"):
        TemperatureScaling().transform(np.full((1, 3, 2), 0.5))
    with pytest.raises(NotFittedError, match="not fitted"):
        IsotonicCalibration().transform(np.full((1, 3, 2), 0.5))
    with pytest.raises(NotFittedError, match="not fitted"):
        PlattScaling().transform(np.full((1, 3, 2), 0.5))
    with pytest.raises(HitsStampsError, match="class labels"):
        TemperatureScaling().fit(np.full((1, 3, 2), 0.5), np.array([0, 1, -1]))


def test_domain_weights_give_each_domain_the_same_total_and_average_one():
    d = np.array(["sim"] * 90 + ["real"] * 10)
    w = domain_weights(d)
    assert w.mean() == pytest.approx(1.0)
    assert w[d == "sim"].sum() == pytest.approx(w[d == "real"].sum())
    assert np.all(w[d == "real"] == w[0 + 90])
    np.testing.assert_allclose(domain_weights(np.array(["a", "a", "a"])), 1.0)
    with pytest.raises(HitsStampsError, match="one label per stamp"):
        domain_weights(np.array([]))


@pytest.mark.parametrize("kind", ["temperature", "platt", "isotonic"])
def test_integer_weights_fit_as_repeated_stamps(kind):
    """Weight 2 on a stamp is the same fit as the stamp twice (weighted NLL / least squares)."""
    y, s = _overconfident(600, seed=7, scale=2.5)
    w = np.where(np.arange(600) % 3 == 0, 2.0, 1.0)
    rep = np.repeat(np.arange(600), w.astype(int))
    a = make_calibrator(kind).fit(s, y, sample_weight=w)
    b = make_calibrator(kind).fit(s[:, rep], y[rep])
    grid = np.linspace(0.01, 0.99, 25)
    g = np.stack([1 - grid, grid], axis=-1)[None]
    np.testing.assert_allclose(a.transform(g), b.transform(g), atol=2e-3)
    c = make_calibrator(kind).fit(s, y)
    assert np.abs(a.transform(g) - c.transform(g)).max() > 1e-3  # the weights changed the fit


def test_domain_weighted_fit_serves_the_small_domain_that_an_unweighted_fit_ignores():
    """A few overconfident stamps (domain A) beside many calibrated ones (B): equal domain weight
    lowers A's NLL against the stamp-weighted fit, which the many B stamps dominate."""
    ya, sa = _overconfident(300, seed=8, scale=4.0)
    yb, sb = _overconfident(6000, seed=9, scale=1.0)
    s, y = np.concatenate([sa, sb], axis=1), np.concatenate([ya, yb])
    dom = np.array(["a"] * 300 + ["b"] * 6000)
    plain = TemperatureScaling().fit(s, y)
    pooled = TemperatureScaling().fit(s, y, sample_weight=domain_weights(dom))
    assert 1.0 < plain.temperature_ < pooled.temperature_ < 4.0
    assert nll(ya, pooled.transform(sa)[0]) < nll(ya, plain.transform(sa)[0]) - 0.02
    with pytest.raises(HitsStampsError, match="sample_weight"):
        TemperatureScaling().fit(s, y, sample_weight=np.ones(5))
    with pytest.raises(HitsStampsError, match="sample_weight"):
        PlattScaling().fit(s, y, sample_weight=-np.ones(len(y)))


def test_out_of_fold_weighted_calibration_never_sees_its_own_fold():
    ya, sa = _overconfident(400, seed=10, scale=4.0)
    groups = np.array([f"o{i // 4}" for i in range(400)])
    folds = object_folds(groups, 4, seed=0)
    assert all(len(set(folds[groups == g])) == 1 for g in np.unique(groups))  # objects stay in one fold
    w = np.ones(400)
    oof = out_of_fold("temperature", sa, ya, folds, sample_weight=w)
    first = folds == 0
    own = TemperatureScaling().fit(sa[:, ~first], ya[~first]).transform(sa[:, first])
    np.testing.assert_allclose(oof[:, first], own, atol=1e-9)
    np.testing.assert_allclose(out_of_fold("temperature", sa, ya, folds), oof, atol=1e-9)


# ----------------------------------------------------------------------------- the methods


def test_ensemble_of_identical_members_has_zero_mutual_information(models):
    m0 = models["m0"]
    same = Predictive([m0, load_model(m0.path)], "ensemble").raw_sample_proba(models["val"])  # (2, N, 2)
    assert same.shape == (2, 120, 2)
    assert np.max(mutual_information(same)) < 1e-9
    two = Predictive([m0, models["m1"]], "ensemble").raw_sample_proba(models["val"])
    assert np.mean(mutual_information(two)) > 1e-6  # different seeds disagree somewhere


def test_mc_dropout_spread_and_no_spread_without_dropout(models):
    m0 = models["m0"]
    x = m0.inputs(models["val"].images[:20])
    on = mc_predict_proba(m0.module, x, n_samples=16, seed=0, dropout=True).numpy()
    assert on.shape == (16, 20, 2) and summarize(on)["std"].max() > 1e-4
    assert not m0.module.drop.training and not m0.module.training  # modes restored
    p = m0.module.drop.p
    m0.module.drop.p = 0.0
    try:
        off = mc_predict_proba(m0.module, x, n_samples=16, seed=0, dropout=True).numpy()
    finally:
        m0.module.drop.p = p
    assert np.abs(off - off[0]).max() == 0.0
    # the head-only shortcut draws what full passes draw (one inference chunk, same RNG order)
    m0.module.dropout_only_in_head = False
    try:
        full = mc_predict_proba(m0.module, x, n_samples=16, seed=0, dropout=True).numpy()
    finally:
        del m0.module.dropout_only_in_head
    np.testing.assert_allclose(full, on, atol=1e-6)
    with pytest.raises(HitsStampsError, match="needs a classifier with dropout"):
        Predictive([models["plain"]], "mc-dropout")


def test_predictive_save_load_round_trip_and_seeded_samples(models, tmp_path):
    ens = models["root"] / "ens"
    pred = Predictive([models["m0"], models["m1"]], "ensemble").fit_calibration("temperature", models["val"])
    pred.save(ens, members=["m0", "m1"], overwrite=True)
    again = load_predictive(ens)
    val = models["val"]
    np.testing.assert_allclose(again.predict_proba(val), pred.predict_proba(val), atol=1e-12)
    assert again.calibrator.temperature_ == pred.calibrator.temperature_
    drop = Predictive([models["m0"]], "mc-dropout", mc_samples=8, seed=3)
    np.testing.assert_array_equal(drop.raw_sample_proba(val), drop.raw_sample_proba(val))  # seeded
    (tmp_path / "predictive.json").write_text(json.dumps({"method": "softmax", "members": ["x"],
                                                          "calibration": {"kind": "temperature",
                                                                          "temperature": -1}}))
    with pytest.raises(StampFileError, match="predictive.json"):
        load_predictive(tmp_path)
    with pytest.raises(HitsStampsError, match="uses one model"):
        Predictive([models["m0"], models["m1"]], "softmax")


# ----------------------------------------------------------------------------- evaluation


def test_weighted_metrics_match_the_unweighted_definitions():
    rng = np.random.default_rng(0)
    p = rng.random(500)
    y = (rng.random(500) < p**2).astype(int)
    u = -np.abs(p - 0.5)
    w = weighted_metrics(y, np.stack([1 - p, p], 1), u, np.ones((1, 500)))
    assert w["ece"][0] == pytest.approx(ece(y, p)) and w["nll"][0] == pytest.approx(nll(y, p))
    assert w["brier"][0] == pytest.approx(np.mean(2 * (p - y) ** 2))
    assert w["error_kept_at_10pct"][0] == pytest.approx(1 - referral_curve(y, p, u, [0.1])[1][0])
    w3 = weighted_metrics(y, np.stack([1 - p, p], 1), u, np.full((1, 500), 3.0))  # scale-free in the weights
    assert w3["ece"][0] == pytest.approx(w["ece"][0]) and w3["error_ratio_at_10pct"][0] == pytest.approx(
        w["error_ratio_at_10pct"][0])


def test_referral_by_a_perfect_uncertainty_removes_the_errors():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 1000)
    p = np.where(rng.random(1000) < 0.05, 1 - y, y) * 0.8 + 0.1  # 5% wrong, all at confidence 0.9
    wrong = ((p >= 0.5) != y).astype(float)
    groups = np.repeat(np.arange(100), 10)
    good = evaluate_uncertainty(y, np.stack([1 - p, p], -1)[None], groups, n_resamples=200)
    assert good["auroc_uncertainty"]["value"] is None or good["auroc_uncertainty"]["value"] == pytest.approx(0.5)
    s = np.stack([1 - p, p], -1)[None].repeat(2, 0)
    s[1, wrong == 1] = 0.5  # a second sample that disagrees exactly where the call is wrong
    r = evaluate_uncertainty(y, s, groups, "mutual_information", n_resamples=200)
    assert r["auroc_uncertainty"]["value"] == pytest.approx(1.0)
    assert r["error_ratio_at_10pct"]["value"] == pytest.approx(0.0)
    assert r["n_objects"] == 100 and r["n"] == 1000
    lo, hi = r["ece"]["ci95"]
    assert lo <= r["ece"]["value"] <= hi


# ----------------------------------------------------------------------------- the command line


def test_calibrate_then_predict_uses_the_saved_method(models, tmp_path):
    val = write_stamps(models["val"], tmp_path / "val.h5")
    data = write_stamps(make_synthetic_stamps(50, seed=9), tmp_path / "data.h5")
    ens = models["root"] / "ens2"
    ens.mkdir()
    assert main(["calibrate-uncertainty", str(ens), "--data", str(val), "--member", str(models["m0"].path), "--member",
                 str(models["m1"].path), "--calibration", "temperature"]) == 0
    saved = json.loads((ens / "predictive.json").read_text())
    assert saved["method"] == "ensemble" and saved["members"] == ["../ens/m0", "../ens/m1"]
    assert main(["predict", str(ens), "--data", str(data), "--out", str(tmp_path / "p.csv"), "--uncertainty",
                 "--no-progress"]) == 0
    with open(tmp_path / "p.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    p = np.array([float(r["p_real"]) for r in rows])
    want = load_predictive(ens).predict_proba(make_synthetic_stamps(50, seed=9))[:, 1]
    np.testing.assert_allclose(p, want, atol=1e-6)
    assert max(float(r["mutual_information"]) for r in rows) > 0
    # a model directory with a predictive.json: --method raw is the network alone
    pred = Predictive([models["m0"]], "softmax").fit_calibration("temperature", models["val"])
    pred.save(models["m0"].path, members=["."], overwrite=True)
    try:
        cal = predict_file(models["m0"].path, data, tmp_path / "c.csv", PredictConfig(batch_size=16))
        raw = predict_file(models["m0"].path, data, tmp_path / "r.csv", PredictConfig(batch_size=16, method="raw"))
        assert "temperature" in cal.network and raw.network == "deterministic"
        with pytest.raises(HitsStampsError, match="--method raw"):
            predict_file(models["m0"].path, data, tmp_path / "o.csv", PredictConfig(backend="onnxruntime"))
    finally:
        (models["m0"].path / "predictive.json").unlink()
    assert torch.get_num_threads() == 1
