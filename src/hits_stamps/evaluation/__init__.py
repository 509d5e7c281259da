"""Judging trained models: classification metrics, plots, calibration and uncertainty reports.

`metrics.classification_metrics` scores probabilities against labels; `evaluate.evaluate_model`
runs a trained model over a labelled stamp file and writes metrics.json and figures.
"""
