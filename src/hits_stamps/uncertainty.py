"""Monte-Carlo prediction with Bayesian networks and the uncertainty measures built on it.

The samples come from `hits_stamps.montecarlo` (`mc_predict_proba` for a batch of preprocessed
stamps, `mc_predict_stamps` = `montecarlo.predict_samples` for a stamp set): sampling is explicit,
each call seeds its own generator, and every forward pass of a Bayesian (Flipout) module draws new
weights, in train() and eval() mode alike.

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

import numpy as np

# the Monte-Carlo samples themselves come from the one prediction path (re-exported here)
from hits_stamps.montecarlo import mc_predict_proba
from hits_stamps.montecarlo import predict_samples as mc_predict_stamps


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


__all__ = ["expected_entropy", "mc_predict_proba", "mc_predict_stamps", "mutual_information", "predictive_entropy",
           "predictive_mean", "predictive_std", "referral_threshold", "summarize"]
