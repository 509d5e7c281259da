"""The one Monte-Carlo prediction path: class probabilities (S, N, K) of a trained classifier.

Every prediction in the package is a thin use of `sample_batch` (one batch of preprocessed stamps)
or of `predict_samples` / `predict_mean` (a stamp set, in batches): `TrainedModel.predict_proba`,
`hits_stamps.uncertainty`, the serving backend, evaluation and `hits_stamps.predictive`.

    deterministic classifier   S = 1            p_1nk = softmax(f(x_n))_k
    Bayesian classifier        S = n_samples    p_snk = softmax(f_{w_s}(x_n))_k,  w_s ~ q(w)  (Flipout)
    MC dropout                 S = n_samples    p_snk = softmax(f(x_n; mask_s))_k             (Gal & Ghahramani 2016)

Seeding: the batch whose first stamp is row i of the set uses seed `seed + i`, so predicting a set
in chunks whose boundaries are multiples of the batch size gives the same numbers as one call. The
default number of samples is the model's recipe `mc_samples` (`Recipe.mc_samples`, stored in the
model directory's config.json; `DEFAULT_MC_SAMPLES` for directories written before it was).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from hits_stamps.errors import HitsStampsError
from hits_stamps.models.registry import Recipe

if TYPE_CHECKING:
    from hits_stamps.stamps import StampSet
    from hits_stamps.training.modeldir import TrainedClassifier

#: Monte-Carlo samples per stamp when neither the caller nor the model's recipe says otherwise
DEFAULT_MC_SAMPLES: int = Recipe.mc_samples
SAMPLINGS = ("none", "weights", "dropout")


def default_mc_samples(config: dict) -> int:
    """The Monte-Carlo sample count of a model directory's config.json: its recipe's, else the default."""
    recipe = config.get("recipe") or {}
    return int(recipe.get("mc_samples", DEFAULT_MC_SAMPLES))


@torch.no_grad()
def mc_predict_proba(
    module: torch.nn.Module, x: torch.Tensor, n_samples: int = DEFAULT_MC_SAMPLES, seed: int = 0,
    dropout: bool = False,
) -> torch.Tensor:
    """Class probabilities of `n_samples` stochastic forward passes.

    x: (N, C, H, W) -> (S, N, K). Seeded: the same seed gives the same samples, and the global
    torch RNG state is restored afterwards. A module that defines `mc_logits(x, n_samples) -> (S, N,
    K)` (the Bayesian models in `hits_stamps.models.bayesian`) draws all samples at once from the
    same per-stamp distribution, reusing the parts that do not depend on the weight sample;
    otherwise `module(x)` is called `n_samples` times.

    dropout=True is Monte-Carlo dropout (Gal & Ghahramani 2016): the module's `nn.Dropout` layers
    draw a new mask on every pass while everything else (batch norm: running statistics) stays in
    eval mode; the modes are restored afterwards. A module whose dropout sits only after its
    `features` (a class attribute `dropout_only_in_head = True`, as `RotInvCNN`) computes
    `features(x)` once and samples `head` `n_samples` times: the same draws, in the same order, as
    full passes. A module without dropout gives `n_samples` identical rows.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1; got {n_samples}")
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if dropout:
            return _mc_dropout(module, x, n_samples)
        if hasattr(module, "mc_logits"):
            return torch.softmax(module.mc_logits(x, n_samples), dim=-1)
        return torch.stack([torch.softmax(module(x), dim=-1) for _ in range(n_samples)])


def _mc_dropout(module: torch.nn.Module, x: torch.Tensor, n_samples: int) -> torch.Tensor:
    """(N, C, H, W) -> (S, N, K) with only the dropout layers in training mode (see mc_predict_proba)."""
    drops = [m for m in module.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        if getattr(module, "dropout_only_in_head", False):
            f = module.features(x)  # (N, F), dropout still off
            for m in drops:
                m.train()
            return torch.stack([torch.softmax(module.head(f), dim=-1) for _ in range(n_samples)])
        for m in drops:
            m.train()
        return torch.stack([torch.softmax(module(x), dim=-1) for _ in range(n_samples)])
    finally:
        for m, mode in modes.items():
            m.train(mode)


@torch.no_grad()
def sample_batch(module: torch.nn.Module, x: torch.Tensor, n_samples: int, seed: int,
                 sampling: str) -> torch.Tensor:
    """One batch of preprocessed stamps x (B, C, H, W) -> class probabilities (S, B, K).

    sampling: `none` (a deterministic pass, S = 1), `weights` (a Bayesian model's weight samples)
    or `dropout` (MC dropout), each with `n_samples` seeded passes (`mc_predict_proba`).
    """
    if sampling == "none":
        return torch.softmax(module(x), dim=-1)[None]  # (1, B, K)
    if sampling not in SAMPLINGS:
        raise HitsStampsError(f"sampling must be one of {SAMPLINGS}; got {sampling!r}")
    return mc_predict_proba(module, x, n_samples=n_samples, seed=seed, dropout=sampling == "dropout")


def model_sampling(model: TrainedClassifier) -> str:
    """`weights` for a Bayesian classifier, `none` for a deterministic one (MC dropout is asked for explicitly)."""
    return "weights" if model.spec.task.bayesian else "none"


def _images(model: TrainedClassifier, stamps: StampSet | np.ndarray) -> np.ndarray:
    from hits_stamps.stamps import StampSet

    if not model.spec.task.classifies:
        raise HitsStampsError(f"{model.name} is a generator; it does not classify stamps")
    if isinstance(stamps, StampSet):
        model.check_input(stamps)
        return stamps.images
    return np.asarray(stamps)


def _batches(model: TrainedClassifier, images: np.ndarray, n_samples: int | None, batch_size: int, seed: int,
             device: str) -> Iterator[torch.Tensor]:
    """(S, B, K) tensors on `device`, batch by batch over images (N, H, W, C)."""
    sampling = model_sampling(model)
    s = model.mc_samples if n_samples is None else n_samples
    if s < 1:
        raise HitsStampsError(f"n_samples must be >= 1; got {s}")
    if batch_size < 1:
        raise HitsStampsError(f"batch_size must be >= 1; got {batch_size}")
    module = model.module.to(device).eval()
    for start in range(0, len(images), batch_size):
        x = model.inputs(images[start : start + batch_size]).to(device)  # (B, C, H, W)
        yield sample_batch(module, x, s, seed + start, sampling)


def _n_classes(model: TrainedClassifier) -> int:
    return len(model.config.get("class_names", (0, 1)))


@torch.no_grad()
def predict_samples(
    model: TrainedClassifier,
    stamps: StampSet | np.ndarray,
    n_samples: int | None = None,
    batch_size: int = 1024,
    seed: int = 0,
    device: str = "cpu",
) -> np.ndarray:
    """Monte-Carlo class probabilities (S, N, K) float32 of a trained classifier over stamps (N, H, W, C).

    S = `n_samples` (None: the model's recipe `mc_samples`) for a Bayesian model, 1 for a
    deterministic one. Batches are seeded `seed + first row` (module docstring).
    """
    images = _images(model, stamps)
    out = [p.cpu().numpy() for p in _batches(model, images, n_samples, batch_size, seed, device)]
    if not out:
        s = (model.mc_samples if n_samples is None else n_samples) if model.spec.task.bayesian else 1
        return np.zeros((s, 0, _n_classes(model)), dtype=np.float32)
    return np.concatenate(out, axis=1)


@torch.no_grad()
def predict_mean(
    model: TrainedClassifier,
    stamps: StampSet | np.ndarray,
    n_samples: int | None = None,
    batch_size: int = 1024,
    seed: int = 0,
    device: str = "cpu",
) -> np.ndarray:
    """The predictive mean (N, K) float32 of `predict_samples`, averaged batch by batch (memory (N, K))."""
    images = _images(model, stamps)
    out = [p.mean(0).cpu().numpy() for p in _batches(model, images, n_samples, batch_size, seed, device)]
    return np.concatenate(out) if out else np.zeros((0, _n_classes(model)), dtype=np.float32)


__all__ = ["DEFAULT_MC_SAMPLES", "SAMPLINGS", "default_mc_samples", "mc_predict_proba", "model_sampling",
           "predict_mean", "predict_samples", "sample_batch"]
