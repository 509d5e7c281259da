"""Batch augmentation by the symmetries of a square stamp (rotations by 90 degrees and flips)."""

from __future__ import annotations

import numpy as np
import torch

AUGMENTATIONS = ("none", "rot90", "dihedral")


def augment_batch(x: torch.Tensor, method: str, rng: np.random.Generator) -> torch.Tensor:
    """Apply a random symmetry per stamp. x: (B, C, H, W) with H == W; returns a new tensor.

    `rot90`: one of the four rotations; `dihedral`: rotation and optional horizontal flip (the
    eight symmetries of the square). Randomness comes from `rng`, so it is reproducible.
    """
    if method == "none":
        return x
    if method not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}; got {method!r}")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation augmentation needs square stamps; got {tuple(x.shape[-2:])}")
    k = rng.integers(0, 4, size=len(x))
    flip = rng.integers(0, 2, size=len(x)) if method == "dihedral" else np.zeros(len(x), int)
    out = x.clone()
    for r in range(4):
        for f in (0, 1):
            sel = np.flatnonzero((k == r) & (flip == f))
            if len(sel) == 0:
                continue
            part = x[sel]
            if f:
                part = torch.flip(part, dims=(-1,))
            out[sel] = torch.rot90(part, r, dims=(-2, -1))
    return out
