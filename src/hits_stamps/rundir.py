"""The layout of a `hits-stamps run` directory: the one place that knows where each file lives.

    run_config.json / run_config.toml   the configuration the directory was made with
    steps/<step>.json                    done-markers (duration, result); <step>.error.txt on failure
    data/{train,val,test}.npz            simulated splits
    data/{inject,real_train,real_val,real_test,variables_val,variables_test}.npz
                                         real-pixel HiTS 2015 sets, split by object (hits_stamps.realsets)
    data/{user_train,user_val,user_test}.npz  your own files ([data] train / val / test), when given
    calibration/                         simulated vs real pixel statistics (KS) and figure
    models/<name>/                       every trained model directory
    eval/<model>/<test set>/             metrics.json, predictions.csv and figures per classifier and test set
    uncertainty/<model>.json             calibration and referral of each classifier's uncertainty
    generation/                          generated stamps, judging numbers and figures (generation.json)
    augmentation/                        the augmentation experiment (augmentation.json)
    summary.json, report.html            written at the end (and by `hits-stamps report DIR`)

Paths stored in the run's JSON files are relative to the run directory (`RunDir.relative`), so a
run directory can be moved or copied and still be read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

RUN_CONFIG = "run_config.json"
RUN_CONFIG_TOML = "run_config.toml"
SUMMARY = "summary.json"
REPORT = "report.html"
STEPS_DIR = "steps"


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory `root` (nothing is created or read here)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ------------------------------------------------------------------ configuration and bookkeeping
    @property
    def run_config(self) -> Path:
        return self.root / RUN_CONFIG

    @property
    def run_config_toml(self) -> Path:
        return self.root / RUN_CONFIG_TOML

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY

    @property
    def report(self) -> Path:
        return self.root / REPORT

    @property
    def steps(self) -> Path:
        return self.root / STEPS_DIR

    def marker(self, step: str) -> Path:
        """steps/<step>.json: written when the step finished."""
        return self.steps / f"{step}.json"

    def error(self, step: str) -> Path:
        """steps/<step>.error.txt: the traceback of the step's last failure."""
        return self.steps / f"{step}.error.txt"

    # ------------------------------------------------------------------ what the steps write
    @property
    def data(self) -> Path:
        return self.root / "data"

    def data_file(self, stem: str) -> Path:
        """data/<stem>.npz (stems: train, val, test, real_test, user_train, ...)."""
        return self.data / f"{stem}.npz"

    @property
    def calibration(self) -> Path:
        return self.root / "calibration"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model(self, name: str) -> Path:
        return self.models / name

    def eval(self, model: str, test_set: str) -> Path:
        return self.root / "eval" / model / test_set

    def metrics(self, model: str, test_set: str) -> Path:
        return self.eval(model, test_set) / "metrics.json"

    @property
    def uncertainty_dir(self) -> Path:
        return self.root / "uncertainty"

    def uncertainty(self, model: str) -> Path:
        return self.uncertainty_dir / f"{model}.json"

    @property
    def generation(self) -> Path:
        return self.root / "generation"

    @property
    def generation_json(self) -> Path:
        return self.generation / "generation.json"

    @property
    def augmentation(self) -> Path:
        return self.root / "augmentation"

    @property
    def augmentation_json(self) -> Path:
        return self.augmentation / "augmentation.json"

    # ------------------------------------------------------------------ paths in JSON
    def relative(self, path: str | os.PathLike) -> str:
        """`path` as stored in the run's JSON: relative to the run directory when inside it (POSIX
        separators), else unchanged (an absolute path, e.g. a user's file elsewhere)."""
        p = Path(path)
        try:
            return p.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)

    def resolve(self, stored: str | os.PathLike) -> Path:
        """The inverse of `relative`: a path read from the run's JSON, as a usable path."""
        p = Path(stored)
        return p if p.is_absolute() else self.root / p


__all__ = ["REPORT", "RUN_CONFIG", "RUN_CONFIG_TOML", "STEPS_DIR", "SUMMARY", "RunDir"]
