"""Python API mirroring the command line, scikit-learn style.

    from hits_stamps.api import StampClassifier
    clf = StampClassifier("rotinv-cnn", epochs=5, seed=0).fit(train)      # hits-stamps train
    p = clf.predict_proba(test)                                            # (N, 2): bogus, real
    metrics = clf.evaluate(test, "eval/")                                  # hits-stamps evaluate
    clf2 = StampClassifier.from_dir(clf.model_dir_)                        # a saved model directory

The constructor only stores its arguments; learned state ends in `_`; using an unfitted estimator
raises `NotFittedError`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hits_stamps.errors import NotFittedError
from hits_stamps.stamps import StampSet


class StampClassifier:
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
        self.recipe_overrides = recipe_overrides

    # ------------------------------------------------------------------ sklearn protocol
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {
            "model": self.model, "epochs": self.epochs, "seed": self.seed, "device": self.device,
            "out_dir": self.out_dir, "model_kwargs": self.model_kwargs, "val_fraction": self.val_fraction,
            "progress": self.progress, **self.recipe_overrides,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if v is not None)
        return f"StampClassifier({args})"

    def fit(self, train: StampSet, val: StampSet | None = None) -> StampClassifier:
        """Train on `train` (validation: `val`, or a held-out `val_fraction`); returns self."""
        from hits_stamps.training.loop import TrainConfig, fit

        cfg = TrainConfig(
            model=self.model, seed=self.seed, epochs=self.epochs, val_fraction=self.val_fraction,
            device=self.device, model_kwargs=dict(self.model_kwargs or {}),
            recipe_overrides=dict(self.recipe_overrides),
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
        """Class probabilities (N, 2), columns (bogus, real). `stamps`: StampSet or (N, H, W, C)."""
        self._check_fitted()
        device = "cpu" if self.device == "auto" else self.device
        return self.model_.predict_proba(stamps, batch_size=batch_size, device=device, mc_samples=mc_samples)

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
        from hits_stamps.training.modeldir import load_model

        model = load_model(path, device=device)
        tc = model.config.get("train_config", {})
        est = cls(
            model=model.name, epochs=model.config.get("recipe", {}).get("epochs"),
            seed=int(model.config.get("seed", 0)), device=device, out_dir=Path(path),
            model_kwargs=dict(model.config.get("model_kwargs", {})),
            val_fraction=float(tc.get("val_fraction", 0.2)),
            **dict(tc.get("recipe_overrides", {})),
        )
        est.model_ = model
        est._set_fitted()
        return est


__all__ = ["NotFittedError", "StampClassifier"]
