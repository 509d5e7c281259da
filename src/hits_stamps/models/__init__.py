"""The model zoo. Model modules hold only `torch.nn.Module`s and their losses: no I/O, no parsing.

`registry` maps user-facing names (`seed-cnn`, `deephits`, ...) to builders, training recipes and
objectives. Importing this package registers every model.
"""

from hits_stamps.models.registry import MODEL_NAMES, ModelSpec, Recipe, get_spec, register

__all__ = ["MODEL_NAMES", "ModelSpec", "Recipe", "get_spec", "register"]
