"""`hits-stamps run`: the main job, from simulated data to one HTML report, resumable step by step."""

from hits_stamps.pipeline.config import QUICK, RunConfig, load_config, to_toml
from hits_stamps.pipeline.run import StepFailed, rebuild_report, run_pipeline

__all__ = ["QUICK", "RunConfig", "StepFailed", "load_config", "rebuild_report", "run_pipeline", "to_toml"]
