"""One training loop for every model, and the trained-model directory it writes."""

from hits_stamps.training.loop import TrainConfig, fit
from hits_stamps.training.modeldir import TrainedClassifier, TrainedGenerator, TrainedModel, load_model

__all__ = ["TrainConfig", "TrainedClassifier", "TrainedGenerator", "TrainedModel", "fit", "load_model"]
