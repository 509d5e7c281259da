"""Sampling from a trained generator (cvae, diffusion), judging the samples, and training with them.

- `posthoc`: what a generator fits after training (latent mixture, residual noise model, condition
  frequencies), saved as `sampling.safetensors` beside the weights;
- `sample`: `generate`, `reconstruct`, `interpolate` (a trained `cvae` directory -> StampSet);
- `judge`: `evaluate_generator`, the independent-classifier judgement written to generation.json;
- `tune`: `tune_temperatures`, the per-condition pixel temperature chosen with a selection classifier;
- `augment`: `augmentation_experiment`, classifiers trained with and without generated stamps.
"""

from hits_stamps.generation.sample import generate, interpolate, load_generator, reconstruct

__all__ = ["generate", "interpolate", "load_generator", "reconstruct"]
