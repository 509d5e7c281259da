"""Monte-Carlo prediction with Bayesian networks and the uncertainty measures built on it.

Sampling is explicit: each call seeds its own generator, and every forward pass of a Bayesian
(Flipout) module draws new weights, in train() and eval() mode alike.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def mc_predict_proba(
    module: torch.nn.Module, x: torch.Tensor, n_samples: int = 30, seed: int = 0
) -> torch.Tensor:
    """Class probabilities of `n_samples` stochastic forward passes.

    x: (N, C, H, W) -> (S, N, K). Seeded: the same seed gives the same samples, and the global
    torch RNG state is restored afterwards.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1; got {n_samples}")
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return torch.stack([torch.softmax(module(x), dim=-1) for _ in range(n_samples)])
