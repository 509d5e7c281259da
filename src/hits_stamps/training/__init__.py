"""One training loop for every model, and the trained-model directory it writes."""

from hits_stamps.training.loop import TrainConfig, fit
from hits_stamps.training.modeldir import TrainedModel, load_model

__all__ = ["TrainConfig", "TrainedModel", "fit", "load_model"]
