"""Metrics on hand-checked inputs, plots, and `evaluate_model` end to end on a tiny trained model."""

import json

import numpy as np
import pytest

from hits_stamps import plotting as plots
from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.errors import HitsStampsError
from hits_stamps.evaluation.evaluate import evaluate_model
from hits_stamps.evaluation.metrics import classification_metrics, fnr_at_fpr
from hits_stamps.results import CLASSIFICATION_KEYS, RUN_KEYS, EvaluationResult
from hits_stamps.training import TrainConfig, fit, load_model

Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
P = np.array([0.1, 0.2, 0.6, 0.3, 0.9, 0.4, 0.8, 0.7])


def test_metrics_on_known_inputs():
    m = classification_metrics(Y, P)
    # predicted real: 0.6 (bogus), 0.9, 0.8, 0.7 (real); 0.4 (real) missed
    assert m["confusion_matrix"] == [[3, 1], [1, 3]]
    for key in ("accuracy", "precision", "recall", "f1"):
        assert m[key] == pytest.approx(0.75)
    assert m["fpr"] == pytest.approx(0.25) and m["fnr"] == pytest.approx(0.25)
    assert m["roc_auc"] == pytest.approx(15 / 16)  # 15 of 16 real-bogus pairs ordered correctly
    # with 4 bogus stamps any false positive is 25% > 1%: the threshold must clear 0.6
    assert m["threshold_at_fpr_1pct"] == pytest.approx(0.7)
    assert m["fnr_at_fpr_1pct"] == pytest.approx(0.25)
    assert m["n"] == 8 and m["by_snr"] is None and m["by_kind"] is None


def test_fnr_at_fpr_when_top_score_is_bogus():
    fnr, thr = fnr_at_fpr(np.array([0, 1, 1]), np.array([0.9, 0.5, 0.4]), 0.01)
    assert fnr == 1.0 and thr > 0.9


def test_metrics_by_snr_and_kind():
    snr = np.array([6, 12, 30, 60, 7, 15, 55, 3.0])
    kind = np.array(["cr", "cr", "dipole", "dipole", "sn", "sn", "sn", "sn"])
    m = classification_metrics(Y, P, snr=snr, kind=kind)
    assert list(m["by_snr"]) == ["5-10", "10-20", "20-50", ">50"]
    assert m["by_snr"]["5-10"] == {"n": 2, "n_real": 1, "accuracy": 1.0, "fnr": 0.0}
    assert m["by_snr"]["10-20"]["fnr"] == 1.0  # the real stamp at snr 15 has p 0.4
    assert m["by_snr"]["20-50"]["fnr"] is None  # no real stamps there
    assert m["n_outside_snr_bins"] == 1
    sn = m["by_kind"]["sn"]
    assert {k: sn[k] for k in ("n", "n_objects", "label", "n_correct", "accuracy", "fnr")} == {
        "n": 4, "n_objects": 4, "label": "real", "n_correct": 3, "accuracy": 0.75, "fnr": 0.25}
    assert sn["fnr_ci95"] == pytest.approx([0.0456, 0.6994], abs=1e-4)  # Wilson, 1 of 4
    assert m["by_kind"]["dipole"]["fpr"] == 0.5 and "fnr" not in m["by_kind"]["dipole"]
    assert m["by_kind"]["cr"]["fpr"] == 0.0 and m["by_kind"]["cr"]["fpr_ci95"][0] == 0.0
    # grouped: the two dipole stamps come from one object
    g = np.array(["a", "b", "c", "c", "d", "e", "f", "g"])
    assert classification_metrics(Y, P, kind=kind, groups=g)["by_kind"]["dipole"]["n_objects"] == 1


def test_completeness_purity_per_snr_bin():
    snr = np.array([6, 12, 30, 60, 7, 15, 55, 3.0])
    m = classification_metrics(Y, P, snr=snr, n_resamples=0)
    cp = m["completeness_purity"]
    assert cp["threshold"] == 0.5 and cp["n_no_snr"] == 0
    rows = {r["bin"]: r for r in cp["bins"]}
    assert list(rows) == ["<5", "5-10", "10-20", "20-50", ">50"]  # the low bin appears: one stamp has SNR 3
    # SNR 3: one real stamp at p 0.7, found; nothing else called real there
    assert rows["<5"]["n"] == 1 and rows["<5"]["completeness"] == 1.0 and rows["<5"]["purity"] == 1.0
    # >50: bogus at p 0.3 (60) and real at p 0.8 (55): found, and the only stamp called real
    assert rows[">50"]["n"] == 2 and rows[">50"]["n_found"] == 1 and rows[">50"]["purity"] == 1.0
    # 10-20: bogus p 0.2 (12) and real p 0.4 (15): missed, nothing called real -> purity undefined
    assert rows["10-20"]["completeness"] == 0.0 and rows["10-20"]["purity"] is None
    assert rows["10-20"]["purity_ci95"] is None and rows["10-20"]["completeness_ci95"][1] > 0.5
    # 20-50: the bogus stamp at p 0.6 called real: purity 0, no real stamps
    assert rows["20-50"]["n_called_real"] == 1 and rows["20-50"]["purity"] == 0.0
    assert rows["20-50"]["completeness"] is None
    no_low = classification_metrics(Y, P, snr=np.abs(snr) + 5, n_resamples=0)["completeness_purity"]
    assert [r["bin"] for r in no_low["bins"]] == ["5-10", "10-20", "20-50", ">50"]
    # at the validation threshold when one is given
    at_val = classification_metrics(Y, P, snr=snr, threshold_fpr1=0.85, n_resamples=0)["completeness_purity"]
    assert at_val["threshold"] == 0.85 and {r["bin"]: r for r in at_val["bins"]}[">50"]["n_found"] == 0


def test_validation_threshold_is_applied_not_tuned():
    m = classification_metrics(Y, P, threshold_fpr1=0.65, n_resamples=0)
    # at 0.65: real stamps 0.9, 0.8, 0.7 called real, 0.4 missed; the bogus 0.6 is no longer let through
    assert m["fnr_at_val_threshold"] == 0.25 and m["fpr_at_val_threshold"] == 0.0
    assert m["confusion_matrix_at_val_threshold"] == [[4, 0], [1, 3]]
    assert m["threshold_fpr1"] == 0.65 and "ci95" not in m
    # a threshold from a validation set on which the model ranks worse: the test FPR is what it is
    m2 = classification_metrics(Y, P, threshold_fpr1=0.15)
    assert m2["fpr_at_val_threshold"] == 0.75 and m2["fnr_at_val_threshold"] == 0.0
    assert m2["fnr_at_fpr_1pct"] == 0.25  # the tuned number stays, and differs
    ci = m2["ci95"]
    assert ci["fpr_at_val_threshold"][0] <= 0.75 <= ci["fpr_at_val_threshold"][1]
    assert set(ci) >= {"accuracy", "recall", "recall_bogus", "roc_auc", "fnr_at_val_threshold"}


def test_threshold_at_fpr_on_validation():
    from hits_stamps.evaluation.metrics import threshold_at_fpr

    y_val = np.r_[np.zeros(100, int), np.ones(20, int)]
    p_val = np.r_[np.linspace(0, 0.9, 100), np.full(20, 0.95)]
    t = threshold_at_fpr(y_val, p_val)
    assert np.mean(p_val[y_val == 0] >= t) <= 0.01
    assert t == pytest.approx(0.9)  # one bogus stamp of 100 (p 0.9) may pass: FPR 1%
    with pytest.raises(ValueError, match="needs real and bogus"):
        threshold_at_fpr(np.ones(5, int), np.full(5, 0.5))


def test_intervals_and_objects_in_metrics():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.4 * y + 0.6 * rng.random(400), 0, 1)
    g = np.repeat(np.arange(40).astype(str), 10)
    m = classification_metrics(y, p, groups=g, n_resamples=300)
    assert m["n"] == 400 and m["n_objects"] == 40 and m["bootstrap"]["n_objects"] == 40
    for key in ("accuracy", "recall", "recall_bogus", "roc_auc"):
        lo, hi = m["ci95"][key]
        assert lo <= m[key] <= hi, key
    assert m["recall_bogus"] == pytest.approx(1 - m["fpr"])
    flat = classification_metrics(y, p, n_resamples=300)
    assert flat["n_objects"] == 400 and flat["bootstrap"]["method"] == "percentile bootstrap over stamps"


def test_single_class_is_handled():
    m = classification_metrics(np.ones(5, int), np.full(5, 0.8))
    assert m["roc_auc"] is None and m["fnr_at_fpr_1pct"] is None and m["fpr"] is None
    assert m["ci95"]["roc_auc"] is None and m["ci95"]["recall"] == [1.0, 1.0]
    assert m["accuracy"] == 1.0 and m["recall"] == 1.0
    assert any("only one class" in note for note in m["notes"])


@pytest.mark.parametrize("y,p,match", [
    ([0, 1, -1], [0.1, 0.2, 0.3], "labels 0"),
    ([0, 1], [0.1, 1.5], r"\[0, 1\]"),
    ([0, 1], [0.1], "same length"),
])
def test_metrics_validate_input(y, p, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y, p)


def test_gallery_and_curves_write_pngs(tmp_path):
    s = make_synthetic_stamps(10, seed=0)
    p = np.linspace(0, 1, 10)
    out = plots.plot_misclassified(s, p, tmp_path / "mis.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    hist = [{"epoch": 1, "loss": 0.5, "accuracy": 0.8, "val_loss": 0.4, "val_accuracy": 0.85},
            {"epoch": 2, "loss": 0.3, "accuracy": 0.9, "val_loss": 0.35, "val_accuracy": 0.88}]
    assert plots.plot_training_curves(hist, tmp_path / "curves.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("m") / "seed"
    train = make_synthetic_stamps(150, seed=2)
    return fit(TrainConfig(model="seed-cnn", epochs=1, seed=0), train, d, progress=False, data_path=None)


def test_evaluate_model_writes_metrics_and_plots(tiny_model, tmp_path):
    test = make_synthetic_stamps(100, seed=5)
    test.labels[:3] = -1  # unlabelled stamps are skipped and counted
    with pytest.warns(UserWarning, match="3 unlabelled"):
        m = evaluate_model(tiny_model, test, tmp_path / "ev", progress=False, data_path="test.npz")
    required = {"n", "accuracy", "precision", "recall", "f1", "roc_auc", "fpr", "fnr", "fnr_at_fpr_1pct",
                "threshold_at_fpr_1pct", "confusion_matrix", "by_snr", "by_kind", "ece", "nll",
                "accuracy_at_10pct_referral"}
    on_disk = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert required <= set(on_disk)
    assert on_disk["n"] == 97 and m["n_unlabelled_skipped"] == 3
    for name in ("roc.png", "confusion_matrix.png", "training_curves.png", "misclassified.png", "predictions.csv"):
        assert (tmp_path / "ev" / name).exists(), name
    stored = json.loads((tiny_model.path / "metrics.json").read_text())
    assert stored["data"] == "test.npz" and stored["accuracy"] == on_disk["accuracy"]
    # the metrics agree with the model's own predictions
    p = load_model(tiny_model.path).predict_proba(test[test.labels >= 0])[:, 1]
    assert on_disk["accuracy"] == pytest.approx(np.mean((p >= 0.5) == test.labels[test.labels >= 0]))


def test_evaluate_model_with_objects_and_a_validation_threshold(tiny_model, tmp_path):
    from dataclasses import replace

    from hits_stamps.evaluation.evaluate import threshold_from_validation

    test = make_synthetic_stamps(120, seed=6)
    test = replace(test, groups=np.repeat([f"obj{i}" for i in range(30)], 4))  # 4 stamps per object
    val = make_synthetic_stamps(100, seed=7)
    source = threshold_from_validation(tiny_model, val, progress=False, data_path="val.npz")
    p_val = tiny_model.predict_proba(val)[:, 1]
    assert np.mean(p_val[val.labels == 0] >= source["threshold"]) == pytest.approx(source["fpr"])
    assert source["fpr"] <= 0.01
    assert source["n"] == 100 and source["n_objects"] == 100 and source["data"] == "val.npz"
    m = evaluate_model(tiny_model, test, tmp_path / "ev", progress=False, threshold_fpr1=source["threshold"],
                       threshold_source=source, n_resamples=200)
    on_disk = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert on_disk["n"] == 120 and on_disk["n_objects"] == 30 and on_disk["bootstrap"]["n_objects"] == 30
    assert on_disk["threshold_source"]["threshold"] == m["threshold_fpr1"] == source["threshold"]
    p = tiny_model.predict_proba(test)[:, 1]
    assert m["fpr_at_val_threshold"] == pytest.approx(np.mean(p[test.labels == 0] >= source["threshold"]))
    assert on_disk["completeness_purity"]["threshold"] == source["threshold"]
    assert (tmp_path / "ev" / "completeness_purity.png").read_bytes()[:4] == b"\x89PNG"
    lo, hi = on_disk["ci95"]["accuracy"]
    assert lo <= on_disk["accuracy"] <= hi
    with pytest.raises(HitsStampsError, match="needs real and bogus"):
        threshold_from_validation(tiny_model, val[val.labels == 1], progress=False)
    # metrics.json read back as an EvaluationResult and written again is the same file, byte for byte
    result = EvaluationResult.read(tmp_path / "ev" / "metrics.json")
    assert result.to_json() == m and list(result.to_json()) == list(m)
    assert result.threshold_source == source and result.classification_extra["threshold_fpr1"] == source["threshold"]
    assert "ece" in result.uncertainty and "ci95" in result.classification_extra
    assert result.summary()["ci95"] == on_disk["ci95"] and result.summary()["n"] == 120
    result.write(tmp_path / "copy.json")
    assert (tmp_path / "copy.json").read_bytes() == (tmp_path / "ev" / "metrics.json").read_bytes()


def test_evaluation_result_names_a_missing_key_and_the_file(tiny_model, tmp_path):
    from dataclasses import fields

    evaluate_model(tiny_model, make_synthetic_stamps(60, seed=8), tmp_path / "ev", progress=False, n_resamples=0)
    path = tmp_path / "ev" / "metrics.json"
    d = json.loads(path.read_text())
    assert not {"ci95", "threshold_fpr1"} & set(d)  # without a threshold or intervals the optional parts are absent
    assert EvaluationResult.from_json(d).to_json() == d
    assert {f.name for f in fields(EvaluationResult)} == {*CLASSIFICATION_KEYS, *RUN_KEYS, "classification_extra",
                                                           "uncertainty"}
    for key in ("roc_auc", "model"):
        broken = tmp_path / f"no_{key}.json"
        broken.write_text(json.dumps({k: v for k, v in d.items() if k != key}))
        with pytest.raises(HitsStampsError, match=rf"no_{key}\.json \[{key}\]: expected the metrics key '{key}'"):
            EvaluationResult.read(broken)
    with pytest.raises(HitsStampsError, match="expected a metrics object; found list"):
        EvaluationResult.from_json([], "x.json")
