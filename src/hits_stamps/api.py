"""Python API mirroring the command line, scikit-learn style.

    from hits_stamps.api import StampClassifier
    clf = StampClassifier("rotinv-cnn", epochs=5, seed=0).fit(train)      # hits-stamps train
    p = clf.predict_proba(test)                                            # (N, 2): bogus, real
    metrics = clf.evaluate(test, "eval/")                                  # hits-stamps evaluate
    clf2 = StampClassifier.from_dir(clf.model_dir_)                        # a saved model directory

The constructor only stores its arguments; learned state ends in `_`; using an unfitted estimator
raises `NotFittedError`.

`StampClassifier` follows scikit-learn's estimator contract (`BaseEstimator`, `ClassifierMixin`):
`fit(X, y)` with X (N, H, W, C) float stamps (channels last, as in a StampSet) and y (N,) in
{0, 1}, as well as `fit(stamp_set)`; `get_params`/`set_params` (recipe fields such as `lr` or
`batch_size` are parameters too), `score` (accuracy), `classes_ = array([0, 1])` and tags (a
classifier that accepts NaN pixels, 4-d input), so `sklearn.base.clone`, `GridSearchCV` and
`CalibratedClassifierCV` work on it. Leave `out_dir=None` under cross-validation: every clone then
trains into its own temporary directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from hits_stamps.errors import HitsStampsError, NotFittedError, ParameterError
from hits_stamps.stamps import StampSet

#: the constructor's named parameters (recipe fields come on top, see `set_params`)
PARAMS = ("model", "epochs", "seed", "device", "out_dir", "model_kwargs", "val_fraction", "progress",
          "steps_per_epoch")


def _recipe_fields() -> set[str]:
    import dataclasses

    from hits_stamps.models.registry import Recipe

    return {f.name for f in dataclasses.fields(Recipe)}


class StampClassifier(ClassifierMixin, BaseEstimator):
    """Train, apply and evaluate a registered stamp classifier.

    Parameters
    ----------
    model : registered model name (`seed-cnn`, `deephits`, `rotinv-cnn`, `seed-bnn`, `bayes-cnn`, ...)
    epochs : training epochs (None: the model's recipe)
    seed : seed of weights, validation split, shuffling and dropout
    device : "cpu", "cuda" or "auto"
    out_dir : model directory to write; None writes to a temporary directory owned by the estimator
    model_kwargs : arguments for the model builder (e.g. {"group": "c4"} for rotinv-cnn)
    val_fraction : share of the training stamps held out for validation when `fit` gets no `val`
    progress : show the training progress bar
    steps_per_epoch : fixed optimizer steps per epoch (None: one pass over the training stamps)
    **recipe_overrides : any field of `hits_stamps.models.registry.Recipe` (lr, batch_size, ...)
    """

    def __init__(
        self,
        model: str = "rotinv-cnn",
        epochs: int | None = None,
        seed: int = 0,
        device: str = "auto",
        out_dir: str | os.PathLike | None = None,
        model_kwargs: dict[str, Any] | None = None,
        val_fraction: float = 0.2,
        progress: bool = False,
        steps_per_epoch: int | None = None,
        **recipe_overrides: Any,
    ):
        self.model = model
        self.epochs = epochs
        self.seed = seed
        self.device = device
        self.out_dir = out_dir
        self.model_kwargs = model_kwargs
        self.val_fraction = val_fraction
        self.progress = progress
        self.steps_per_epoch = steps_per_epoch
        self.recipe_overrides = recipe_overrides

    # ------------------------------------------------------------------ sklearn protocol
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters, recipe overrides included (`deep` has nothing to recurse into)."""
        return {**{k: getattr(self, k) for k in PARAMS}, **self.recipe_overrides}

    def set_params(self, **params: Any) -> StampClassifier:
        """Set constructor parameters or recipe fields (e.g. `lr`, `batch_size`); returns self."""
        recipe = None
        for key, value in params.items():
            if key in PARAMS:
                setattr(self, key, value)
                continue
            recipe = recipe if recipe is not None else _recipe_fields()
            if key not in recipe:
                raise ParameterError(
                    f"StampClassifier: expected a parameter in {sorted(PARAMS)} or a recipe field in "
                    f"{sorted(recipe)}; found {key!r}"
                )
            self.recipe_overrides = {**self.recipe_overrides, key: value}
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # missing pixels are handled by the model's NaN policy
        tags.input_tags.two_d_array = False  # X is (N, H, W, C) stamps
        tags.classifier_tags.multi_class = False  # real (1) / bogus (0)
        return tags

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if v is not None)
        return f"StampClassifier({args})"

    def fit(self, X: StampSet | np.ndarray, y: np.ndarray | StampSet | None = None,
            val: StampSet | None = None) -> StampClassifier:
        """Train; returns self.

        `X`: a StampSet (its labels; `y`, if given, replaces them) or (N, H, W, C) float stamps with
        `y` (N,) in {0, 1}. Validation: `val` (a StampSet; also accepted in `y`'s place, as
        `fit(train, val)`), or a held-out `val_fraction` of the training stamps.
        """
        from hits_stamps.models.registry import get_spec
        from hits_stamps.training.loop import TrainConfig, fit

        task = get_spec(self.model).task
        if not task.classifies:
            raise HitsStampsError(f"model {self.model!r} is a {task}; a StampClassifier trains classifiers "
                                  "(train generators with hits_stamps.training.fit)")
        if isinstance(y, StampSet):
            y, val = None, y
        train = _as_stamps(X, y)
        cfg = TrainConfig(
            model=self.model, seed=self.seed, epochs=self.epochs, val_fraction=self.val_fraction,
            device=self.device, model_kwargs=dict(self.model_kwargs or {}),
            recipe_overrides=dict(self.recipe_overrides), steps_per_epoch=self.steps_per_epoch,
        )
        if self.out_dir is not None:
            out = Path(self.out_dir)
            # refitting replaces only a directory this estimator wrote itself
            overwrite = getattr(self, "model_dir_", None) == out
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="hits-stamps-model-")
            out = Path(self._tmp.name)
            overwrite = True
        self.model_ = fit(cfg, train, out, val=val, overwrite=overwrite, progress=self.progress)
        self._set_fitted()
        return self

    def _set_fitted(self) -> None:
        self.model_dir_ = Path(self.model_.path)
        self.history_ = list(self.model_.history)
        self.config_ = self.model_.config
        self.classes_ = np.array([0, 1])
        self.n_parameters_ = self.model_.n_parameters

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(
                "this StampClassifier is not fitted yet; call fit(train) or use StampClassifier.from_dir(path)"
            )

    def predict_proba(self, stamps: StampSet | np.ndarray, batch_size: int = 1024,
                      mc_samples: int | None = None) -> np.ndarray:
        """Class probabilities (N, 2), columns (bogus, real).

        `stamps`: a StampSet, whose channels are matched to the model's by name and whose stamps are
        centre-cropped or NaN-padded to the model's size (`hits_stamps.geometry`), or (N, H, W, C)
        float stamps already in the model's size and channel order.
        """
        self._check_fitted()
        device = "cpu" if self.device == "auto" else self.device
        if isinstance(stamps, StampSet):
            from hits_stamps.geometry import plan_for_model

            adapter = plan_for_model(self.model_, stamps.images.shape[1:], stamps.channels)
            images = adapter.apply(stamps.images)
        else:
            images = np.asarray(stamps)
            h, w = self.model_.config["input"]["size"]
            c = len(self.model_.config["input"]["channels"])
            if images.ndim != 4 or images.shape[1:] != (h, w, c):
                raise HitsStampsError(f"X: expected stamps of shape (N, {h}, {w}, {c}) (channels "
                                      f"{', '.join(self.model_.config['input']['channels'])}); found {images.shape}")
        return self.model_.predict_proba(images, batch_size=batch_size, device=device, mc_samples=mc_samples)

    def predict(self, stamps: StampSet | np.ndarray, threshold: float = 0.5, **kwargs) -> np.ndarray:
        """Labels (N,): 1 (real) where p_real >= threshold, else 0 (bogus)."""
        return (self.predict_proba(stamps, **kwargs)[:, 1] >= threshold).astype(np.int64)

    def evaluate(self, stamps: StampSet, out_dir: str | os.PathLike, mc_samples: int | None = None,
                 progress: bool = False) -> dict[str, Any]:
        """As `hits-stamps evaluate`: write metrics.json and figures to `out_dir`; return the metrics."""
        from hits_stamps.evaluation.evaluate import evaluate_model

        self._check_fitted()
        return evaluate_model(self.model_, stamps, out_dir, mc_samples=mc_samples, progress=progress)

    @classmethod
    def from_dir(cls, path: str | os.PathLike, device: str = "cpu") -> StampClassifier:
        """A fitted estimator from a model directory (`hits-stamps train` output)."""
        from hits_stamps.training.modeldir import TrainedClassifier, load_model

        model = load_model(path, device=device)
        if not isinstance(model, TrainedClassifier):
            raise HitsStampsError(f"{path}: {model.name} is a {model.spec.task}; a StampClassifier needs a trained "
                                  "classifier")
        tc = model.config.get("train_config", {})
        est = cls(
            model=model.name, epochs=model.config.get("recipe", {}).get("epochs"),
            seed=int(model.config.get("seed", 0)), device=device, out_dir=Path(path),
            model_kwargs=dict(model.config.get("model_kwargs", {})),
            val_fraction=float(tc.get("val_fraction", 0.2)), steps_per_epoch=tc.get("steps_per_epoch"),
            **dict(tc.get("recipe_overrides", {})),
        )
        est.model_ = model
        est._set_fitted()
        return est


def _as_stamps(X: StampSet | np.ndarray, y: np.ndarray | None) -> StampSet:
    """Training stamps from a StampSet (labels optionally replaced by y) or from arrays X, y."""
    if isinstance(X, StampSet):
        if y is None:
            return X
        return StampSet(X.images, labels=_labels(y, len(X)), snr=X.snr, kind=X.kind, ids=X.ids, groups=X.groups,
                        channels=X.channels, columns=X.columns, meta=X.meta)
    x = np.asarray(X)
    if x.ndim != 4 or x.dtype.kind not in "fiu":
        raise HitsStampsError(f"X: expected (N, H, W, C) real-valued stamps, channels last; found shape {x.shape}, "
                              f"dtype {x.dtype}")
    if y is None:
        raise HitsStampsError("y: expected labels (N,) in {0, 1} with array stamps; found None")
    return StampSet(x.astype(np.float32, copy=False), labels=_labels(y, len(x)))


def _labels(y, n: int) -> np.ndarray:
    arr = np.asarray(y)
    if arr.shape != (n,):
        raise HitsStampsError(f"y: expected shape ({n},), one label per stamp; found shape {arr.shape}")
    if arr.dtype.kind not in "iubf" or not np.isin(arr, (0, 1)).all():
        found = sorted(set(np.unique(arr).tolist()) - {0, 1})[:5] if arr.dtype.kind in "iubf" else arr.dtype
        raise HitsStampsError(f"y: expected labels in {{0, 1}} (bogus, real); found {found}")
    return arr.astype(np.int64)


__all__ = ["NotFittedError", "StampClassifier"]
