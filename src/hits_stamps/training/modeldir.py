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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hits_stamps import hardware
from hits_stamps.errors import HitsStampsError, StampFileError
from hits_stamps.io.atomic import atomic_path
from hits_stamps.models.registry import ModelSpec, count_parameters, get_spec
from hits_stamps.montecarlo import default_mc_samples, predict_mean
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
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StampFileError(path, None, "valid JSON", str(exc)) from exc
    except OSError as exc:
        raise StampFileError(path, None, "a readable JSON file", exc.strerror or str(exc)) from exc


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


def stamps_sha256(stamps: StampSet) -> str:
    """Content hash of a stamp set (images, labels, ids): the identity of training data, whatever its path."""
    h = hashlib.sha256()
    for arr in (stamps.images, stamps.labels, stamps.ids.astype(str)):
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    return h.hexdigest()


def weights_sha256(path: str | os.PathLike) -> str:
    """sha256 of a model directory's weights and config.json: the identity of a trained model."""
    path = Path(path)
    h = hashlib.sha256()
    for name in (WEIGHTS, CONFIG):
        h.update(file_sha256(path / name).encode())
    return h.hexdigest()


def partial_dir(out: str | os.PathLike) -> Path:
    """Where a model directory is built until it is complete: `.NAME.partial` beside it."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def resumable(out: str | os.PathLike) -> bool:
    """True when `fit(..., resume=True)` has a checkpoint to continue for `out` (partial or finished)."""
    out = Path(out)
    return (partial_dir(out) / CHECKPOINT).is_file() or (out / CHECKPOINT).is_file()


def is_model_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG).exists()


def save_weights(module: torch.nn.Module, path: str | os.PathLike) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path, overwrite=True) as tmp:
        save_file(state, str(tmp))


@dataclass
class TrainedModel:
    """A model rebuilt from its directory: what classifiers and generators share.

    `load_model` returns a `TrainedClassifier` (it predicts) or a `TrainedGenerator` (it samples
    stamps with `hits_stamps.generation`); each has only the methods its task supports.
    """

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



@dataclass
class TrainedClassifier(TrainedModel):
    """A trained classifier (task classifier or bayesian-classifier): class probabilities of stamps."""

    @property
    def mc_samples(self) -> int:
        """Monte-Carlo samples per stamp by default (its recipe's `mc_samples`; see `hits_stamps.montecarlo`)."""
        return default_mc_samples(self.config)

    def predict_proba(
        self,
        stamps: StampSet | np.ndarray,
        batch_size: int = 1024,
        device: str = "cpu",
        mc_samples: int | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        """Class probabilities (N, 2) (columns: bogus, real), computed in batches.

        Bayesian models average `mc_samples` Monte-Carlo forward passes (default: the model's
        recipe, `self.mc_samples`); deterministic models ignore it. `hits_stamps.montecarlo.predict_mean`.
        """
        with hardware.torch_threads():  # leave the cores other work keeps busy (hits_stamps.hardware)
            return predict_mean(self, stamps, n_samples=mc_samples, batch_size=batch_size, seed=seed, device=device)

    def predict(self, stamps: StampSet | np.ndarray, threshold: float = 0.5, **kw) -> np.ndarray:
        return (self.predict_proba(stamps, **kw)[:, 1] >= threshold).astype(np.int64)


@dataclass
class TrainedGenerator(TrainedModel):
    """A trained generator (task generator): it samples stamps (`hits_stamps.generation.sample`) and
    does not classify, so it has no `predict_proba`."""


def torch_device(device: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' as a torch device; anything else, or CUDA without a GPU, is refused."""
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise HitsStampsError(f"device must be cpu, cuda or cuda:N; got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise HitsStampsError(f"device {device!r} requested but no CUDA device is available")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise HitsStampsError(f"device {device!r}: only {torch.cuda.device_count()} CUDA devices")
    return torch.device(device)


def _field(cfg_path: Path, config: dict, key: str, kind: type | tuple[type, ...], expected: str) -> Any:
    value = config.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise StampFileError(cfg_path, key, expected, "no such key" if key not in config else f"{value!r:.80}")
    return value


def read_config(path: str | os.PathLike, full: bool = True) -> dict[str, Any]:
    """The checked config.json of a model directory (model name, input size and channels, preprocessing).

    With `full=False` only the model name is checked (enough to tell a generator from a classifier,
    whose loaders check the rest). Every problem (no directory, no or malformed config.json, a
    missing or mistyped key, an unregistered model) is a StampFileError naming the file and the key.
    """
    path = Path(path)
    if not path.is_dir():
        raise StampFileError(path, None, "a trained-model directory", "no such directory")
    cfg_path = path / CONFIG
    if not cfg_path.is_file():
        raise StampFileError(path, CONFIG, "a model directory with config.json", "no config.json")
    config = read_json(cfg_path)
    if not isinstance(config, dict):
        raise StampFileError(cfg_path, None, "a JSON object", f"a JSON {type(config).__name__}")
    name = _field(cfg_path, config, "model", str, "a registered model name")
    try:
        get_spec(name)
    except HitsStampsError as exc:
        raise StampFileError(cfg_path, "model", "a registered model name", str(exc)) from exc
    if not full:
        return config
    inp = _field(cfg_path, config, "input", dict, "{size: [H, W], channels: [...]}")
    size, channels = inp.get("size"), inp.get("channels")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise StampFileError(cfg_path, "input.size", "[H, W] positive integers", f"{size!r:.80}")
    if not (isinstance(channels, list) and channels and all(isinstance(c, str) for c in channels)):
        raise StampFileError(cfg_path, "input.channels", "a non-empty list of channel names", f"{channels!r:.80}")
    _field(cfg_path, config, "preprocess", dict, "the preprocessing state (a JSON object)")
    if not isinstance(config.get("model_kwargs", {}), dict):
        raise StampFileError(cfg_path, "model_kwargs", "a JSON object", f"{config['model_kwargs']!r:.80}")
    return config


def load_model(path: str | os.PathLike, device: str = "cpu") -> TrainedClassifier | TrainedGenerator:
    """Rebuild a model from its directory (weights via safetensors: no code is executed).

    A classifier comes back as a `TrainedClassifier`, a generator as a `TrainedGenerator`.

    A foreign, corrupt, truncated or mismatched file (config.json, model.safetensors, history.json)
    raises a StampFileError naming it.
    """
    from safetensors import SafetensorError

    path = Path(path)
    dev = torch_device(device)
    config = read_config(path)
    cfg_path = path / CONFIG
    spec = get_spec(config["model"])
    try:
        pre = Preprocessor.from_dict(config["preprocess"])
    except (HitsStampsError, KeyError, TypeError, ValueError) as exc:
        raise StampFileError(cfg_path, "preprocess", "the preprocessing state of a trained model", str(exc)) from exc
    kwargs = config.get("model_kwargs", {})
    try:
        module = spec.builder(in_channels=len(config["input"]["channels"]), size=tuple(config["input"]["size"]),
                              **kwargs)
    except (TypeError, ValueError) as exc:
        raise StampFileError(cfg_path, "model_kwargs", f"arguments that build a {spec.name}",
                             f"{kwargs!r:.80} ({exc})") from exc
    weights = path / WEIGHTS
    if not weights.is_file():
        raise StampFileError(path, WEIGHTS, "trained weights", "no weights file (training unfinished?)")
    try:
        state = load_file(str(weights), device=str(dev))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise StampFileError(weights, None, "a safetensors weights file", f"a corrupt or truncated file ({exc})") \
            from exc
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:200]
        raise StampFileError(weights, None, f"the weights of the {spec.name} that {CONFIG} describes",
                             f"tensors of another architecture ({first})") from exc
    module.eval()
    history: list[dict[str, Any]] = []
    if (path / HISTORY).exists():
        history = read_json(path / HISTORY)
        if not (isinstance(history, list) and all(isinstance(r, dict) for r in history)):
            raise StampFileError(path / HISTORY, None, "a JSON list of per-epoch objects", f"{history!r:.80}")
    kind = TrainedClassifier if spec.task.classifies else TrainedGenerator
    return kind(path, spec, module.to(dev), config, pre, history)
