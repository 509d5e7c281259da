"""Monte-Carlo prediction with Bayesian networks and the uncertainty measures built on it.

Sampling is explicit: each call seeds its own generator, and every forward pass of a Bayesian
(Flipout) module draws new weights, in train() and eval() mode alike.

All measures take Monte-Carlo class probabilities `probs` of shape (S, N, K) (S samples, N stamps,
K classes) and work on probabilities, never on averaged log-probabilities:

    mean_k(n)   = (1/S) sum_s p_snk                         predictive mean        (N, K)
    std_k(n)    = sqrt((1/S) sum_s (p_snk - mean_k(n))^2)   predictive std (population)  (N, K)
    H(n)        = -sum_k mean_k log mean_k                  predictive entropy     (N,)
    E[H](n)     = -(1/S) sum_s sum_k p_snk log p_snk        expected entropy       (N,)
    MI(n)       = H(n) - E[H](n)                            mutual information (BALD; Houlsby et al. 2011)

Entropies are in nats; 0 log 0 = 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from hits_stamps.stamps import StampSet
    from hits_stamps.training.modeldir import TrainedModel


@torch.no_grad()
def mc_predict_proba(
    module: torch.nn.Module, x: torch.Tensor, n_samples: int = 30, seed: int = 0, dropout: bool = False
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


def mc_predict_stamps(
    model: TrainedModel,
    stamps: StampSet | np.ndarray,
    n_samples: int,
    batch_size: int = 1024,
    seed: int = 0,
    device: str = "cpu",
) -> np.ndarray:
    """Monte-Carlo class probabilities (S, N, K) of a trained model over a StampSet, in batches.

    Batches are seeded as in `TrainedModel.predict_proba` (batch starting at stamp i uses seed
    `seed + i`), so `mc_predict_stamps(m, s, S).mean(0)` equals
    `m.predict_proba(s, mc_samples=S, seed=seed)` for the same batch size. A deterministic model
    returns its softmax once, shape (1, N, K).
    """
    from hits_stamps.errors import HitsStampsError
    from hits_stamps.stamps import StampSet

    if n_samples < 1:
        raise HitsStampsError(f"n_samples must be >= 1; got {n_samples}")
    if batch_size < 1:
        raise HitsStampsError(f"batch_size must be >= 1; got {batch_size}")
    if model.spec.task == "generator":
        raise HitsStampsError(f"{model.name} is a generator; it does not classify stamps")
    if isinstance(stamps, StampSet):
        model.check_input(stamps)
        images = stamps.images
    else:
        images = np.asarray(stamps)
    module = model.module.to(device).eval()
    bayesian = model.spec.task == "bayesian-classifier"
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = model.inputs(images[start : start + batch_size]).to(device)  # (B, C, H, W)
            if bayesian:
                p = mc_predict_proba(module, x, n_samples=n_samples, seed=seed + start)  # (S, B, K)
            else:
                p = torch.softmax(module(x), dim=-1)[None]  # (1, B, K)
            out.append(p.cpu().numpy())
    if not out:
        s = n_samples if bayesian else 1
        return np.zeros((s, 0, len(model.config.get("class_names", (0, 1)))), dtype=np.float32)
    return np.concatenate(out, axis=1)


def _check_probs(probs) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"probs must have shape (S, N, K); got {p.shape}")
    return p


def _xlogx(p: np.ndarray) -> np.ndarray:
    """p log p with 0 log 0 = 0 (elementwise)."""
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)


def predictive_mean(probs) -> np.ndarray:
    """(S, N, K) -> (N, K): the Monte-Carlo average of the class probabilities."""
    return _check_probs(probs).mean(axis=0)


def predictive_std(probs) -> np.ndarray:
    """(S, N, K) -> (N, K): the spread (population std over samples) of each class probability."""
    return _check_probs(probs).std(axis=0)


def predictive_entropy(probs) -> np.ndarray:
    """(S, N, K) -> (N,): entropy of the mean prediction, H[y | x, D] in nats (total uncertainty)."""
    return -_xlogx(predictive_mean(probs)).sum(axis=-1)


def expected_entropy(probs) -> np.ndarray:
    """(S, N, K) -> (N,): mean over samples of each sample's entropy (aleatoric part), nats."""
    return -_xlogx(_check_probs(probs)).sum(axis=-1).mean(axis=0)


def mutual_information(probs) -> np.ndarray:
    """(S, N, K) -> (N,): BALD mutual information I[y; w | x, D] = H - E[H] (epistemic part), nats.

    Clipped at 0 against round-off; exactly 0 when all samples agree.
    """
    p = _check_probs(probs)
    return np.maximum(predictive_entropy(p) - expected_entropy(p), 0.0)


def summarize(probs) -> dict[str, np.ndarray]:
    """All measures at once: mean (N, K), std (N, K), entropy (N,), expected_entropy (N,), mutual_information (N,)."""
    p = _check_probs(probs)
    mean = p.mean(axis=0)
    h = -_xlogx(mean).sum(axis=-1)
    eh = -_xlogx(p).sum(axis=-1).mean(axis=0)
    return {
        "mean": mean,
        "std": p.std(axis=0),
        "entropy": h,
        "expected_entropy": eh,
        "mutual_information": np.maximum(h - eh, 0.0),
    }


def referral_threshold(y, p_real, uncertainty, target_accuracy: float, threshold: float = 0.5) -> dict[str, float]:
    """The referral cut to use in production, chosen on a labelled validation set.

    Stamps with uncertainty >= `cut` are referred (to a human, or a slower check). Among the cuts
    that separate distinct uncertainty values (plus "refer nothing", cut = +inf), returns the one
    referring the fewest stamps whose kept stamps reach `target_accuracy` (label = p_real >=
    `threshold`). y, p_real, uncertainty: (N,). Returns {cut, fraction_referred, accuracy_kept,
    n}; raises `HitsStampsError` when no cut that keeps a stamp reaches the target.
    """
    from hits_stamps.errors import HitsStampsError

    y = np.asarray(y)
    p = np.asarray(p_real, dtype=np.float64)
    u = np.asarray(uncertainty, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape or u.shape != y.shape or len(y) == 0:
        raise HitsStampsError(f"y, p_real, uncertainty: expected three (N,) arrays, N >= 1; found shapes "
                              f"{y.shape}, {p.shape}, {u.shape}")
    if not np.isin(y, (0, 1)).all():
        raise HitsStampsError("y: expected validation labels in {0, 1}; found other values (unlabelled stamps?)")
    if not np.isfinite(u).all():
        raise HitsStampsError("uncertainty: expected finite values; found NaN or inf")
    if not 0 < target_accuracy <= 1:
        raise HitsStampsError(f"target_accuracy must be in (0, 1]; got {target_accuracy}")
    order = np.argsort(-u, kind="stable")  # most uncertain first
    us = u[order]
    correct = ((p >= threshold).astype(np.int64) == y)[order].astype(np.float64)
    n = len(y)
    kept_correct = np.concatenate([np.cumsum(correct[::-1])[::-1], [0.0]])  # (N+1,): correct among order[r:]
    # r referred is a valid cut when it splits distinct values: r == 0 or us[r-1] > us[r]
    for r in range(n):
        if r > 0 and not us[r - 1] > us[r]:
            continue
        acc = kept_correct[r] / (n - r)
        if acc >= target_accuracy:
            cut = float("inf") if r == 0 else float(us[r - 1])
            return {"cut": cut, "fraction_referred": r / n, "accuracy_kept": float(acc), "n": n}
    best = max(kept_correct[r] / (n - r) for r in range(n) if r == 0 or us[r - 1] > us[r])
    raise HitsStampsError(f"target_accuracy {target_accuracy}: no referral cut reaches it on these {n} stamps "
                          f"(best accuracy on kept stamps {best:.4f})")
