"""What a registered model does: the `Task` of its `ModelSpec`.

A `StrEnum`, so a task compares equal to, formats as and is written to JSON as its value
(`"classifier"`, `"bayesian-classifier"`, `"generator"`), as config.json has always held it.
"""

from __future__ import annotations

from enum import StrEnum


class Task(StrEnum):
    CLASSIFIER = "classifier"  # deterministic classifier: softmax(f(x)), shape (N, K)
    BAYESIAN_CLASSIFIER = "bayesian-classifier"  # weights sampled per forward pass (Flipout): S samples
    GENERATOR = "generator"  # learns p(stamp | condition); does not classify

    @property
    def classifies(self) -> bool:
        """True for both classifier tasks."""
        return self is not Task.GENERATOR

    @property
    def bayesian(self) -> bool:
        """True when every forward pass samples new weights (Monte-Carlo prediction)."""
        return self is Task.BAYESIAN_CLASSIFIER


__all__ = ["Task"]
