"""Inference backends: the model's torch module, or its ONNX export run by onnxruntime on the CPU.

Both return class probabilities (B, 2) float32 (columns: bogus, real). The torch backend takes
preprocessed stamps (B, C, H, W) float32 (the output of the model's `Preprocessor`, applied in
`predict_chunk`); the onnxruntime backend takes raw stamps (B, H, W, C), because the exported graph
holds the same preprocessing (`hits_stamps.serve.export`; parity tested on stamps with NaNs).

- `torch`: classifiers give softmax(f(x)); Bayesian classifiers the Monte-Carlo predictive mean
  (1/S) sum_s softmax(f_{w_s}(x)) with S = `mc_samples` (default: the model's recipe, `TrainedClassifier.mc_samples`),
  seeded per batch with `seed + first row of the batch`, exactly as `TrainedClassifier.predict_proba`
  seeds its batches. Predicting a file in chunks whose boundaries are multiples of the batch size
  therefore gives the same numbers as `predict_proba` on the whole file.
- `onnxruntime`: the exported network (`hits_stamps.serve.export`); for Bayesian models that is the
  posterior-mean network, deterministic, so its p_real differs from the Monte-Carlo mean.
- `auto` (the default of `predict`; `choose_backend`): onnxruntime for a deterministic classifier
  on the CPU when onnxruntime is installed and the file has at least `AUTO_ONNX_MIN_ROWS` rows (the
  in-memory export costs seconds, which only a large file wins back), torch otherwise, and torch
  where the export fails. Both give the same probabilities to within `PARITY_TOLERANCE` (the
  export's parity check; tested). The choice depends only on the command (model, file length,
  options), never on the machine's state, so `--resume` makes the same choice.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from hits_stamps.errors import HitsStampsError
from hits_stamps.montecarlo import model_sampling, sample_batch
from hits_stamps.serve import export
from hits_stamps.training.modeldir import TrainedClassifier

BACKENDS = ("torch", "onnxruntime")
#: what `predict --backend` accepts: a backend, or `auto` (`choose_backend`)
BACKEND_CHOICES = ("auto", *BACKENDS)
#: rows from which `auto` runs a deterministic classifier with onnxruntime. Measured end to end
#: (experiments/auto_backend_breakeven.py, seed-cnn, AVX2, load 3): importing the exporter,
#: exporting in memory and starting onnxruntime cost 5-6 s more than torch's start, and
#: onnxruntime then saves 54-76 us per stamp, so it breaks even at 68,000-102,000 stamps; this
#: leaves a margin for other loads and CPUs.
AUTO_ONNX_MIN_ROWS = 150_000
UNCERTAINTY_COLUMNS = ("p_std", "entropy", "mutual_information")


class TorchBackend:
    """Runs `model.module` with torch (see the module docstring)."""

    name = "torch"
    takes_raw = False  # input (B, C, H, W) from the model's Preprocessor

    def __init__(
        self,
        model: TrainedClassifier,
        device: str = "cpu",
        mc_samples: int | None = None,
        seed: int = 0,
        threads: int | None = None,
    ):
        if not model.spec.task.classifies:
            raise HitsStampsError(f"{model.path}: {model.name} is a {model.spec.task}; it does not classify stamps")
        if threads:
            torch.set_num_threads(int(threads))
        self.model = model
        self.device = torch.device(device)
        self.module = model.module.to(self.device).eval()
        self.bayesian = model.spec.task.bayesian
        self.sampling = model_sampling(model)
        self.mc_samples = int(mc_samples or model.mc_samples) if self.bayesian else 1
        if self.mc_samples < 1:
            raise HitsStampsError(f"mc_samples must be >= 1; got {self.mc_samples}")
        self.seed = int(seed)
        self.network = f"Monte-Carlo mean of {self.mc_samples} samples" if self.bayesian else "deterministic"

    def samples(self, x: np.ndarray, start: int) -> torch.Tensor:
        """x (B, C, H, W) float32, rows start..start+B-1 of the file -> probabilities (S, B, 2) on the device."""
        xt = torch.from_numpy(x).to(self.device)
        return sample_batch(self.module, xt, self.mc_samples, self.seed + start, self.sampling)

    def predict_proba(self, x: np.ndarray, start: int) -> np.ndarray:
        """x (B, C, H, W) float32, rows start..start+B-1 of the file -> probabilities (B, 2)."""
        return self.samples(x, start).mean(0).cpu().numpy().astype(np.float32, copy=False)

    @torch.no_grad()
    def predict_uncertainty(self, x: np.ndarray, start: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Bayesian models: (mean probabilities (B, 2), {p_std, entropy, mutual_information}: (B,) each).

        The same S seeded samples as `predict_proba` (so the mean is identical); p_std is the spread
        of p_real over the samples, entropy and mutual information as in `hits_stamps.uncertainty`.
        """
        from hits_stamps.uncertainty import summarize

        if not self.bayesian:
            raise HitsStampsError(f"{self.model.path}: {self.model.name} is deterministic; it has no Monte-Carlo "
                                  "uncertainty (use a Bayesian model: seed-bnn, bayes-cnn)")
        samples = self.samples(x, start)  # (S, B, 2)
        probs = samples.mean(0).cpu().numpy().astype(np.float32, copy=False)
        u = summarize(samples.cpu().numpy())
        return probs, {"p_std": u["std"][:, 1], "entropy": u["entropy"], "mutual_information": u["mutual_information"]}


class PredictiveBackend:
    """Runs a saved uncertainty method (`hits_stamps.predictive`: an ensemble, MC dropout, Flipout,
    softmax, each possibly calibrated) with torch; the probabilities are the mean of its calibrated
    samples, seeded per batch with `seed + first row of the batch`."""

    name = "torch"
    takes_raw = True  # input (B, H, W, C) raw stamps: each model preprocesses them its own way

    def __init__(self, predictive, threads: int | None = None):
        if threads:
            torch.set_num_threads(int(threads))
        self.predictive = predictive
        self.network = predictive.describe()

    def predict_proba(self, x: np.ndarray, start: int) -> np.ndarray:
        return self.predictive.samples_batch(x, start).mean(0).astype(np.float32)

    def predict_uncertainty(self, x: np.ndarray, start: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(mean probabilities (B, 2), {p_std, entropy, mutual_information}) of the calibrated samples."""
        from hits_stamps.uncertainty import summarize

        u = summarize(self.predictive.samples_batch(x, start))  # from (S, B, 2)
        return u["mean"].astype(np.float32), {"p_std": u["std"][:, 1], "entropy": u["entropy"],
                                              "mutual_information": u["mutual_information"]}


class OnnxBackend:
    """Runs the ONNX export of `model` with onnxruntime on the CPU.

    `onnx_model`: a path to a file written by `export_onnx` (checked against the model directory's
    weights hash and input shape), the bytes of one, or None to export in memory now.
    """

    name = "onnxruntime"
    takes_raw = True  # the graph preprocesses: input (B, H, W, C) raw stamps

    def __init__(
        self,
        model: TrainedClassifier,
        onnx_model: str | os.PathLike | bytes | None = None,
        threads: int | None = None,
    ):
        kind = export.network_kind(model)
        self.onnx_bytes: bytes | None = onnx_model if isinstance(onnx_model, bytes) else None
        if onnx_model is None:
            onnx_model = self.onnx_bytes = export.export_onnx_bytes(model)
            source = f"{model.path} (exported in memory)"
        elif isinstance(onnx_model, bytes):
            source = f"{model.path} (ONNX bytes)"
        else:
            path = Path(onnx_model)
            if not path.is_file():
                raise HitsStampsError(f"{path}: expected an ONNX file; found no such file")
            source = str(path)
        try:
            self.session = export.make_session(onnx_model, threads=threads)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise HitsStampsError(f"{source}: expected a readable ONNX model; found {exc}") from exc
        self.meta = export.check_onnx_matches(model, self.session, source)
        self.model = model
        self.network = "posterior-mean network (not the Monte-Carlo mean)" if kind == "mean" else "deterministic"

    def predict_proba(self, x: np.ndarray, start: int) -> np.ndarray:
        """x (B, H, W, C) raw float32 stamps -> probabilities (B, 2); `start` is unused (deterministic)."""
        return self.session.run([export.ONNX_OUTPUT], {export.ONNX_INPUT: np.ascontiguousarray(x)})[0]


def onnxruntime_installed() -> bool:
    """True when onnxruntime and onnx (the exporter's output) can be imported."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def choose_backend(
    model: TrainedClassifier,
    n_rows: int,
    device: str = "cpu",
    uncertainty: bool = False,
    onnx_model: str | os.PathLike | bytes | None = None,
    min_rows: int | None = None,
) -> str:
    """The backend `auto` means: `onnxruntime` or `torch` (see the module docstring).

    onnxruntime where all hold: an ONNX file is given (`onnx_model`), or the model is a deterministic
    classifier (a Bayesian model's export is its posterior-mean network, not the Monte-Carlo mean
    that torch computes), on the CPU, without uncertainty columns, onnxruntime installed, and
    `n_rows` >= `min_rows` (default `AUTO_ONNX_MIN_ROWS`). Whether the export succeeds is left to
    `make_auto_backend`.
    """
    if onnx_model is not None:
        return "onnxruntime"
    min_rows = AUTO_ONNX_MIN_ROWS if min_rows is None else int(min_rows)
    if (model.spec.task.bayesian or uncertainty or torch.device(device).type != "cpu" or n_rows < min_rows
            or not onnxruntime_installed()):
        return "torch"
    return "onnxruntime"


def make_auto_backend(
    model: TrainedClassifier,
    n_rows: int,
    onnx_model: str | os.PathLike | bytes | None = None,
    device: str = "cpu",
    mc_samples: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    uncertainty: bool = False,
) -> TorchBackend | OnnxBackend:
    """The backend `choose_backend` picks, built; torch (with a warning) when the in-memory export fails."""
    name = choose_backend(model, n_rows, device, uncertainty, onnx_model)
    if name == "onnxruntime" and onnx_model is None:
        try:
            return OnnxBackend(model, None, threads=threads)
        except (HitsStampsError, ImportError) as exc:
            warnings.warn(f"{model.path}: the onnxruntime backend is not available ({exc}); predicting with torch",
                          stacklevel=2)
            name = "torch"
    return make_backend(model, name, onnx_model=onnx_model, device=device, mc_samples=mc_samples, seed=seed,
                        threads=threads)


def make_backend(
    model: TrainedClassifier,
    backend: str = "torch",
    onnx_model: str | os.PathLike | bytes | None = None,
    device: str = "cpu",
    mc_samples: int | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> TorchBackend | OnnxBackend:
    """Build the named backend (`torch` or `onnxruntime`) for `model`."""
    if backend == "torch":
        if onnx_model is not None:
            raise HitsStampsError("an ONNX file was given but the backend is torch; pass --backend onnxruntime")
        return TorchBackend(model, device=device, mc_samples=mc_samples, seed=seed, threads=threads)
    if backend == "onnxruntime":
        if device != "cpu":
            raise HitsStampsError(f"the onnxruntime backend runs on the CPU; got device {device!r}")
        return OnnxBackend(model, onnx_model, threads=threads)
    raise HitsStampsError(f"backend must be one of {BACKENDS}; got {backend!r}")


def predict_chunk(
    model: TrainedClassifier,
    backend: TorchBackend | OnnxBackend,
    images: np.ndarray,
    start: int,
    batch_size: int,
    uncertainty: bool = False,
):
    """Probabilities (M, 2) float32 of stamps (M, H, W, C) that are rows start..start+M-1 of a file.

    Preprocesses the chunk with the model's `Preprocessor` (per stamp, so chunking does not change
    the result; the onnxruntime backend does the same inside its graph and gets the raw stamps) and
    runs the backend on consecutive batches of `batch_size` rows. Returns the probabilities and the
    number of non-finite pixels the NaN policy replaced. Under nan_policy `error` a chunk with a
    non-finite pixel raises, whichever the backend. The two halves, `prepare_chunk` and
    `predict_prepared`, can run in different threads (`hits_stamps.serve.predict` overlaps them).
    """
    x, nan_count = prepare_chunk(model, backend, images, start)
    return predict_prepared(backend, x, nan_count, start, batch_size, uncertainty)


def prepare_chunk(model: TrainedClassifier, backend, images: np.ndarray, start: int) -> tuple[np.ndarray, int]:
    """The backend's input for stamps (M, H, W, C) (preprocessed (M, C, H, W), or raw for a graph that
    preprocesses) and the number of non-finite pixels; see `predict_chunk`."""
    if len(images) == 0:
        return np.zeros((0, *images.shape[1:]), dtype=np.float32), 0
    pre = model.preprocessor
    try:
        if getattr(backend, "takes_raw", False):
            x = np.ascontiguousarray(images, dtype=np.float32)  # (M, H, W, C)
            nan_count = int((~np.isfinite(x)).sum())
            if nan_count and pre.config.nan_policy == "error":
                pre.transform(x, report=False)  # raises the Preprocessor's one-line error
        else:
            x = pre.transform(images, report=False)  # (M, C, H, W)
            nan_count = int(pre.last_nan_count_)
    except HitsStampsError as exc:
        raise HitsStampsError(f"rows {start}-{start + len(images) - 1}: {exc}") from exc
    return x, nan_count


def predict_prepared(backend, x: np.ndarray, nan_count: int, start: int, batch_size: int,
                     uncertainty: bool = False):
    """`predict_chunk`'s result for the output `x` of `prepare_chunk`: the backend on batches of `batch_size`."""
    if len(x) == 0:
        return np.zeros((0, 2), dtype=np.float32), 0
    out = np.empty((len(x), 2), dtype=np.float32)
    extra = {k: np.empty(len(x), dtype=np.float64) for k in UNCERTAINTY_COLUMNS} if uncertainty else None
    for a in range(0, len(x), batch_size):
        b = min(a + batch_size, len(x))
        if extra is None:
            out[a:b] = backend.predict_proba(x[a:b], start + a)
        else:
            out[a:b], u = backend.predict_uncertainty(x[a:b], start + a)
            for k in UNCERTAINTY_COLUMNS:
                extra[k][a:b] = u[k]
    return (out, nan_count) if extra is None else (out, nan_count, extra)


def record(writer, state: dict, ids, p_real, nan_count: int, threshold: float, extras: dict | None = None) -> None:
    """Append one chunk's rows (and extra columns) to a `PredictionWriter`; update the running totals.

    Shared by the local and the Dask engine (`state`: {"nan": pixels replaced, "real": rows labelled 1}).
    """
    writer.append(ids, p_real, extras)
    state["nan"] += int(nan_count)
    state["real"] += int((p_real >= threshold).sum())


__all__ = ["AUTO_ONNX_MIN_ROWS", "BACKENDS", "BACKEND_CHOICES", "UNCERTAINTY_COLUMNS", "OnnxBackend",
           "PredictiveBackend", "TorchBackend", "choose_backend", "make_auto_backend", "make_backend",
           "onnxruntime_installed", "predict_chunk", "predict_prepared", "prepare_chunk", "record"]
