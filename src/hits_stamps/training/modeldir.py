"""A trained model is a directory that is enough to rebuild and run it:

    DIR/model.safetensors   weights (loaded without executing code)
    DIR/config.json         model name and kwargs, input size and channels, class names, recipe,
                            preprocessing statistics, seed, training data (path, sha256, n),
                            package version
    DIR/history.json        per-epoch training history
    DIR/metrics.json        written by `hits-stamps evaluate` (optional)
    DIR/checkpoint.pt       last training state for --resume (tensors only; weights_only=True)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hits_stamps.errors import HitsStampsError, StampFileError
from hits_stamps.io.atomic import atomic_path
from hits_stamps.models.registry import ModelSpec, count_parameters, get_spec
from hits_stamps.preprocess import Preprocessor
from hits_stamps.stamps import StampSet

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
HISTORY = "history.json"
METRICS = "metrics.json"
CHECKPOINT = "checkpoint.pt"
CLASS_NAMES = ("bogus", "real")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (replacing any previous file)."""
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a malformed file raises StampFileError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise StampFileError(path, None, "valid JSON", str(exc)) from exc


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def file_sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def is_model_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG).exists()


def save_weights(module: torch.nn.Module, path: str | os.PathLike) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path, overwrite=True) as tmp:
        save_file(state, str(tmp))


@dataclass
class TrainedModel:
    """A model rebuilt from its directory, ready to predict."""

    path: Path
    spec: ModelSpec
    module: torch.nn.Module
    config: dict[str, Any]
    preprocessor: Preprocessor
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def n_parameters(self) -> int:
        return count_parameters(self.module)

    def check_input(self, stamps: StampSet) -> None:
        h, w = self.config["input"]["size"]
        c = self.config["input"]["channels"]
        if stamps.size != (h, w) or stamps.n_channels != len(c):
            raise HitsStampsError(
                f"model {self.path} expects stamps of {h}x{w}x{len(c)}; "
                f"got {stamps.size[0]}x{stamps.size[1]}x{stamps.n_channels}"
            )

    def inputs(self, images: np.ndarray) -> torch.Tensor:
        """(N, H, W, C) stamps -> preprocessed (N, C, H, W) tensor."""
        return torch.from_numpy(self.preprocessor.transform(images))

    @torch.no_grad()
    def predict_proba(
        self,
        stamps: StampSet | np.ndarray,
        batch_size: int = 1024,
        device: str = "cpu",
        mc_samples: int | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        """Class probabilities (N, 2) (columns: bogus, real), computed in batches.

        Bayesian models average `mc_samples` Monte-Carlo forward passes (default from the model's
        config, `mc_samples` key, else 30); deterministic models ignore it.
        """
        from hits_stamps.uncertainty import mc_predict_proba

        images = stamps.images if isinstance(stamps, StampSet) else np.asarray(stamps)
        if isinstance(stamps, StampSet):
            self.check_input(stamps)
        if self.spec.task == "generator":
            raise HitsStampsError(f"{self.name} is a generator; it does not classify stamps")
        module = self.module.to(device).eval()
        bayesian = self.spec.task == "bayesian-classifier"
        s = (mc_samples or self.config.get("mc_samples", 30)) if bayesian else 1
        out = []
        for start in range(0, len(images), batch_size):
            x = self.inputs(images[start : start + batch_size]).to(device)
            if bayesian:
                probs = mc_predict_proba(module, x, n_samples=s, seed=seed + start).mean(0)
            else:
                probs = torch.softmax(module(x), dim=-1)
            out.append(probs.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.float32)

    def predict(self, stamps: StampSet | np.ndarray, threshold: float = 0.5, **kw) -> np.ndarray:
        return (self.predict_proba(stamps, **kw)[:, 1] >= threshold).astype(np.int64)


def load_model(path: str | os.PathLike, device: str = "cpu") -> TrainedModel:
    """Rebuild a model from its directory (weights via safetensors: no code is executed)."""
    path = Path(path)
    if not path.is_dir():
        raise StampFileError(path, None, "a trained-model directory", "no such directory")
    cfg_path = path / CONFIG
    if not cfg_path.exists():
        raise StampFileError(path, CONFIG, "a model directory with config.json", "no config.json")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise StampFileError(cfg_path, None, "valid JSON", str(exc)) from exc
    spec = get_spec(config["model"])
    module = spec.builder(
        in_channels=len(config["input"]["channels"]),
        size=tuple(config["input"]["size"]),
        **config.get("model_kwargs", {}),
    )
    weights = path / WEIGHTS
    if not weights.exists():
        raise StampFileError(path, WEIGHTS, "trained weights", "no weights file (training unfinished?)")
    module.load_state_dict(load_file(str(weights), device=device))
    module.eval()
    history = json.loads((path / HISTORY).read_text()) if (path / HISTORY).exists() else []
    pre = Preprocessor.from_dict(config["preprocess"])
    return TrainedModel(path, spec, module.to(device), config, pre, history)
