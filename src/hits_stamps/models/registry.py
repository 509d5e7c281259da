"""Name -> (builder, recipe, objective) for every model the CLI can train.

A model module registers itself at import with `register(ModelSpec(...))`; `get_spec(name)` imports
the built-in modules on first use so that the registry is complete.

Contracts
---------
builder(in_channels: int, size: tuple[int, int], **kwargs) -> torch.nn.Module
    Classifiers' `forward(x)` takes (B, C, H, W) float32 and returns logits (B, K).
objective(model, x, y, n_train) -> ObjectiveOutput
    `loss` is the scalar to minimise for this batch (for variational models the per-batch share
    of the negative ELBO: `nll_mean + kl_sum / n_train`); `logits` (B, K) or None when the model
    is not a classifier; `parts` named scalar terms (floats) for the history. y is the label of
    each stamp, or what the model's `training_targets(stamps)` returns when it declares that hook
    (cvae: the index of the condition, e.g. the stamp kind).

Training hooks (`ModelSpec.hooks`: the training loop calls exactly the hooks a spec declares, as
methods of the built module; `tests/test_tasks.py` checks declarations against the modules)
    training_targets(stamps: StampSet) -> (N,) int64   targets for the objective instead of the labels
    fit_input_stats(x_train: (N, C, H, W) tensor)      fit the model's own input scaling before training
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from hits_stamps.errors import HitsStampsError
from hits_stamps.tasks import Task

#: the training hooks a model may declare (see the module docstring)
HOOKS = ("training_targets", "fit_input_stats")

BUILTIN_MODULES = (
    "hits_stamps.models.cnn",
    "hits_stamps.models.bayesian",
    "hits_stamps.models.cvae",
    "hits_stamps.models.diffusion",
)


class ObjectiveOutput(NamedTuple):
    loss: torch.Tensor  # scalar
    logits: torch.Tensor | None  # (B, K) for classifiers
    parts: dict[str, float]  # e.g. {"nll": ..., "kl": ...}


@dataclass(frozen=True)
class Recipe:
    """Training defaults of one model (each may be overridden from the CLI or API)."""

    optimizer: str = "adam"  # "adam" | "adamw" | "rmsprop" | "sgd"
    lr: float = 1e-3  # learning rate
    batch_size: int = 64  # stamps per step
    epochs: int = 10  # passes over the training set
    weight_decay: float = 0.0  # decoupled for adamw, L2 otherwise
    momentum: float = 0.0  # sgd momentum
    rmsprop_alpha: float = 0.9  # RMSprop decay (Keras' rho)
    eps: float = 1e-7  # optimizer epsilon (Keras default 1e-7)
    scaling: str = "minmax"  # preprocessing scaling, see hits_stamps.preprocess
    nan_policy: str = "zero"  # preprocessing NaN policy
    augment: str = "none"  # "none" | "dihedral" (random rotations by 90 deg and flips)
    lr_schedule: str = "constant"  # "constant" | "cosine"
    clip_grad_norm: float | None = None  # clip the gradient norm if set
    mc_samples: int = 30  # Monte-Carlo forward passes per stamp when a Bayesian model predicts (the one
    #                       default of every prediction path; hits_stamps.montecarlo)

    def __post_init__(self) -> None:
        if not isinstance(self.mc_samples, int) or isinstance(self.mc_samples, bool) or self.mc_samples < 1:
            raise ValueError(f"mc_samples must be an integer >= 1; got {self.mc_samples!r}")


@dataclass(frozen=True)
class ModelSpec:
    name: str  # user-facing name, e.g. "rotinv-cnn"
    task: Task  # classifier | bayesian-classifier | generator (a string value is converted)
    builder: Callable[..., torch.nn.Module]
    objective: Callable[..., ObjectiveOutput]
    recipe: Recipe
    description: str = ""
    default_kwargs: dict[str, Any] = field(default_factory=dict)
    # (training StampSet, model kwargs) -> model kwargs completed from the data (cvae: the kinds it is
    # conditioned on); called by the training loop before building, so the values are stored in config.json
    data_kwargs: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None
    hooks: frozenset[str] = frozenset()  # training hooks its module implements (HOOKS; module docstring)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hooks", frozenset(self.hooks))
        unknown = self.hooks - set(HOOKS)
        if unknown:
            raise HitsStampsError(f"model {self.name!r}: unknown hooks {sorted(unknown)}; known: {list(HOOKS)}")
        try:
            object.__setattr__(self, "task", Task(self.task))
        except ValueError as exc:
            raise HitsStampsError(f"model {self.name!r}: task must be one of {[t.value for t in Task]}; "
                                  f"got {self.task!r}") from exc


_REGISTRY: dict[str, ModelSpec] = {}
_LOADED = False


def register(spec: ModelSpec) -> ModelSpec:
    _REGISTRY[spec.name] = spec
    return spec


def _load_builtins() -> None:
    global _LOADED
    if _LOADED:
        return
    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
    _LOADED = True


def get_spec(name: str) -> ModelSpec:
    _load_builtins()
    if name not in _REGISTRY:
        raise HitsStampsError(f"unknown model {name!r}; choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def model_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


class _Names:
    """Lazy list of registered names (for help texts)."""

    def __iter__(self):
        return iter(model_names())

    def __repr__(self) -> str:
        return repr(model_names())


MODEL_NAMES = _Names()


def count_parameters(model: torch.nn.Module) -> int:
    """Trainable parameters, counted as the model defines them.

    A module may define `count_parameters()` to count as its reference framework does (e.g. TFP's
    Flipout layers count kernel loc + kernel scale + bias loc).
    """
    if hasattr(model, "count_parameters"):
        return int(model.count_parameters())
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))
