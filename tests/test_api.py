"""The scikit-learn-style Python API."""

import numpy as np
import pytest

from hits_stamps.api import StampClassifier
from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.errors import NotFittedError


def test_unfitted_estimator_raises():
    clf = StampClassifier("seed-cnn")
    assert not hasattr(clf, "model_")
    with pytest.raises(NotFittedError, match="not fitted"):
        clf.predict_proba(make_synthetic_stamps(4))


def test_fit_predict_evaluate_and_reload(tmp_path):
    train, test = make_synthetic_stamps(150, seed=0), make_synthetic_stamps(60, seed=1)
    clf = StampClassifier("seed-cnn", epochs=1, seed=0, device="cpu", out_dir=tmp_path / "m")
    assert clf.fit(train) is clf
    p = clf.predict_proba(test)
    assert p.shape == (60, 2) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert set(np.unique(clf.predict(test))) <= {0, 1}
    assert np.array_equal(clf.predict(test.images), (p[:, 1] >= 0.5).astype(int))  # raw (N, H, W, C) too
    assert clf.n_parameters_ == 63042 and len(clf.history_) == 1 and list(clf.classes_) == [0, 1]
    metrics = clf.evaluate(test, tmp_path / "ev")
    assert metrics["n"] == 60 and (tmp_path / "ev" / "metrics.json").exists()
    again = StampClassifier.from_dir(tmp_path / "m")
    assert again.model == "seed-cnn" and np.allclose(again.predict_proba(test), p)
    # refitting replaces the directory this estimator wrote
    clf.fit(train)


def test_recipe_overrides_and_temporary_directory():
    clf = StampClassifier("rotinv-cnn", epochs=1, model_kwargs={"widths": [4, 8], "hidden": 8}, batch_size=64,
                          lr=1e-3)
    assert clf.get_params()["batch_size"] == 64
    clf.fit(make_synthetic_stamps(80, seed=0))
    assert clf.config_["recipe"]["batch_size"] == 64 and clf.config_["recipe"]["lr"] == 1e-3
    assert clf.model_dir_.exists()


def test_fit_into_a_foreign_directory_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "something").write_text("x")
    with pytest.raises(Exception, match="exists"):
        StampClassifier("seed-cnn", epochs=1, out_dir=tmp_path / "m").fit(make_synthetic_stamps(50))
