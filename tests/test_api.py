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


# ----------------------------------------------------------------------------- scikit-learn contract
def _tiny(**kw):
    """A fast estimator: small rotinv-cnn, one epoch of a few steps."""
    params = dict(model="rotinv-cnn", epochs=1, steps_per_epoch=3, device="cpu", batch_size=32,
                  model_kwargs={"widths": [4, 8], "hidden": 8})
    return StampClassifier(**{**params, **kw})


def _arrays(n=240, seed=0):
    s = make_synthetic_stamps(n, seed=seed)
    return s.images, s.labels


def test_sklearn_protocol_clone_params_tags_and_array_fit():
    from sklearn.base import clone, is_classifier

    clf = _tiny(lr=2e-3)
    assert is_classifier(clf)
    twin = clone(clf)
    assert twin.get_params() == clf.get_params() and twin is not clf and twin.get_params()["lr"] == 2e-3
    assert clf.set_params(epochs=2, weight_decay=1e-4) is clf
    assert clf.epochs == 2 and clf.recipe_overrides["weight_decay"] == 1e-4
    with pytest.raises(ValueError, match="found 'no_such_param'"):
        clf.set_params(no_such_param=1)
    tags = clf.__sklearn_tags__()
    assert tags.input_tags.allow_nan and tags.estimator_type == "classifier"
    X, y = _arrays()
    clf = _tiny()
    assert clf.fit(X, y) is clf
    assert list(clf.classes_) == [0, 1]
    acc = clf.score(X[:60], y[:60])
    assert acc == pytest.approx(np.mean(clf.predict(X[:60]) == y[:60]))
    with pytest.raises(Exception, match=r"y: expected labels in \{0, 1\}"):
        _tiny().fit(X[:10], np.full(10, 2))
    with pytest.raises(Exception, match="y: expected labels"):
        _tiny().fit(X[:10])
    with pytest.raises(Exception, match=r"X: expected stamps of shape \(N, 21, 21, 4\)"):
        clf.predict_proba(X[:5, :15, :15])


def test_grid_search_and_calibration_work(one_torch_thread):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import GridSearchCV

    X, y = _arrays(300, seed=1)
    grid = GridSearchCV(_tiny(), {"lr": [1e-3, 3e-3]}, cv=2, scoring="roc_auc").fit(X, y)
    assert set(grid.cv_results_["param_lr"]) == {1e-3, 3e-3}
    assert np.isfinite(grid.cv_results_["mean_test_score"]).all()
    assert grid.best_estimator_.predict_proba(X[:4]).shape == (4, 2)
    cal = CalibratedClassifierCV(_tiny(), cv=2, method="sigmoid").fit(X, y)
    p = cal.predict_proba(X[:20])
    assert p.shape == (20, 2) and np.allclose(p.sum(1), 1)


def test_stampset_channels_matched_by_name_in_predict_proba():
    from hits_stamps.stamps import StampSet

    s = make_synthetic_stamps(120, seed=2)
    clf = _tiny().fit(s)
    order = [3, 1, 0, 2]
    shuffled = StampSet(s.images[..., order], channels=tuple(s.channels[i] for i in order))
    np.testing.assert_array_equal(clf.predict_proba(shuffled), clf.predict_proba(s))
