"""ONNX export of a trained classifier with its preprocessing and softmax inside the graph.

The ONNX graph maps raw stamps to class probabilities, so onnxruntime plus numpy is all a
broker needs (no re-implemented preprocessing, no train/serve skew):

    input              (batch, H, W, C) float32   -- raw stamps, channels last, in the model's size and
                                                     channel order (metadata `channels`); NaN/inf allowed
    probabilities      (batch, 2) float32         -- columns: bogus, real
    nonfinite_pixels   (batch,) int64             -- non-finite input pixels per stamp

Inside the graph (`StampPreprocess`, the torch twin of `hits_stamps.preprocess.Preprocessor`):
the model's NaN policy (`zero`: statistics from the finite pixels, missing pixels 0 after scaling;
`median`: missing pixels replaced by the median of the finite pixels of their stamp and channel;
`error`: a stamp with a non-finite pixel gets NaN probabilities, since a graph cannot raise), the
per-stamp scaling (`minmax`, `robust`, `joint` or `none`, formulas in `hits_stamps.preprocess`;
medians are the mean of the two middle values for an even count, as numpy's), and the layout
change (B, H, W, C) -> (B, C, H, W). Matching channels by name and cropping / padding to the
model's size (`hits_stamps.geometry`) happen before the graph; the metadata names the channels
and the size.

The batch dimension is dynamic. Bayesian (Flipout) models are exported as their MEAN network:
every Flipout weight set to its posterior mean (`loc`), run deterministically
(`hits_stamps.models.flipout.use_mean`). Its output is softmax(f_mean(x)), which is not the
Monte-Carlo predictive mean (1/S) sum_s softmax(f_{w_s}(x)) that `TrainedModel.predict_proba`
returns; the file's metadata says which network it holds.

Every export is checked: onnxruntime on raw stamps and torch on the Python `Preprocessor`'s output
are run on the same random stamps with NaN pixels and all-NaN channels (batch sizes 1 and 64), and
the export fails if the probabilities differ by more than `PARITY_TOLERANCE`. The model name, task,
network kind, input shape and layout, the SHA-256 of the weights file and the measured difference
are stored in the ONNX metadata (`hits_stamps.*` keys), so a prediction can refuse an ONNX file
exported from a different model directory, or one written before preprocessing moved into the graph.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hits_stamps import __version__
from hits_stamps.errors import HitsStampsError
from hits_stamps.io.atomic import atomic_path, check_writable
from hits_stamps.preprocess import MAD_TO_STD, PreprocessConfig, joint_indices
from hits_stamps.training.modeldir import WEIGHTS, TrainedModel, file_sha256, load_model

ONNX_INPUT = "input"
ONNX_OUTPUT = "probabilities"
ONNX_NONFINITE = "nonfinite_pixels"
#: metadata `input_layout` of files whose graph holds the preprocessing
INPUT_LAYOUT = "raw NHWC (preprocessing in the graph)"
#: largest max |p_onnx - p_torch| an export may show on its check inputs
PARITY_TOLERANCE = 1e-5
META = "hits_stamps."


def _masked_median(v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Median over the last axis of the `valid` entries: (B, C, P) -> (B, C, 1); NaN where none is valid.

    The mean of the two middle values for an even count (numpy's median), via a sort with invalid
    entries pushed to the end.
    """
    p = v.shape[-1]
    srt = torch.sort(torch.where(valid, v, torch.full_like(v, float("inf"))), dim=-1).values
    k = valid.sum(dim=-1, keepdim=True)  # (B, C, 1)
    lo = srt.gather(-1, torch.clamp(k - 1, min=0) // 2)
    hi = srt.gather(-1, torch.clamp(k // 2, max=p - 1))
    return torch.where(k > 0, (lo + hi) / 2, torch.full_like(lo, float("nan")))


def _masked_max(v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.where(valid, v, torch.full_like(v, float("-inf"))).amax(dim=-1, keepdim=True)


def _masked_min(v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.where(valid, v, torch.full_like(v, float("inf"))).amin(dim=-1, keepdim=True)


class StampPreprocess(nn.Module):
    """`Preprocessor.transform` in torch: raw (B, H, W, C) -> ((B, C, H, W) network input, (B,) bad pixels).

    Same NaN policies and scalings as `hits_stamps.preprocess` (see the module docstrings); under
    `error` the caller turns stamps with bad pixels into NaN probabilities.
    """

    def __init__(self, config: PreprocessConfig, channels: tuple[str, ...] | None = None):
        super().__init__()
        self.joint = joint_indices(channels) if config.scaling == "joint" else None
        self.nan_policy = config.nan_policy
        self.scaling = config.scaling
        self.clip = float(config.clip)
        self.eps = float(config.eps)

    def forward(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = raw.permute(0, 3, 1, 2)  # (B, C, H, W)
        flat = x.flatten(2)  # (B, C, P)
        finite = torch.isfinite(flat)
        n_bad = (~finite).flatten(1).sum(dim=1)  # (B,)
        zero = torch.zeros_like(flat)
        if self.nan_policy == "median":
            med = _masked_median(flat, finite)
            flat = torch.where(finite, flat, torch.where(torch.isfinite(med), med, zero[..., :1]))
            valid = torch.ones_like(finite)
        else:
            flat = torch.where(finite, flat, zero)
            valid = finite
        if self.scaling == "none":
            out = flat
        elif self.scaling == "joint":
            out = self._joint(flat, valid, zero)
        else:
            floor = self.eps * _masked_max(flat.abs(), valid)  # (B, C, 1); -inf when no valid pixel
            if self.scaling == "minmax":
                out = self._minmax(flat, valid, zero)
            else:  # robust
                med = _masked_median(flat, valid)
                mad = _masked_median((flat - med).abs(), valid)
                s = torch.maximum(MAD_TO_STD * mad, floor)
                ok = (s > 0) & torch.isfinite(s)
                z = torch.where(ok, (flat - med) / torch.where(ok, s, torch.ones_like(s)), zero)
                out = torch.clamp(z, -self.clip, self.clip)
        if self.nan_policy != "median":
            out = torch.where(valid, out, zero)  # missing pixels are 0 in scaled units
        return out.reshape(x.shape), n_bad

    def _minmax(self, flat: torch.Tensor, valid: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        floor = self.eps * _masked_max(flat.abs(), valid)
        lo = _masked_min(flat, valid)
        span = _masked_max(flat, valid) - lo
        ok = (span > floor) & torch.isfinite(span)
        return torch.where(ok, (flat - lo) / torch.where(ok & (span > 0), span, torch.ones_like(span)), zero)

    def _joint(self, flat: torch.Tensor, valid: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """`joint` scaling: the shared channels over one per-stamp peak above background, the rest minmax."""
        shared, peak_of = self.joint
        out = self._minmax(flat, valid, zero)
        idx = list(shared)
        fs, vs = flat[:, idx], valid[:, idx]
        bg = _masked_median(fs, vs)  # (B, k, 1); NaN for a channel without a valid pixel
        y = fs - torch.where(torch.isfinite(bg), bg, torch.zeros_like(bg))
        ch_peak = _masked_max(y, vs)  # -inf without a valid pixel
        pos = [idx.index(c) for c in peak_of]
        peak = ch_peak[:, pos].amax(dim=1, keepdim=True)  # (B, 1, 1)
        mag = _masked_max(fs.abs(), vs).amax(dim=1, keepdim=True)
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
        mag = torch.where(torch.isfinite(mag), mag, torch.zeros_like(mag))
        ok = peak > self.eps * mag
        z = torch.where(ok, y / torch.where(ok, peak, torch.ones_like(peak)), torch.zeros_like(y))
        z = torch.where(torch.isfinite(z), z, torch.zeros_like(z))
        scaled = torch.clamp(z, -self.clip, self.clip)
        cols = [scaled[:, idx.index(c):idx.index(c) + 1] if c in idx else out[:, c:c + 1] for c in range(flat.shape[1])]
        return torch.cat(cols, dim=1)


class ProbabilityNetwork(nn.Module):
    """softmax(module(x), dim=-1): (B, C, H, W) float32 -> (B, K) class probabilities."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.module(x), dim=-1)  # (B, K)


class ServingNetwork(nn.Module):
    """Raw stamps (B, H, W, C) -> (probabilities (B, K), non-finite pixels (B,)): preprocessing + network."""

    def __init__(self, module: nn.Module, config: PreprocessConfig, channels: tuple[str, ...] | None = None):
        super().__init__()
        self.preprocess = StampPreprocess(config, channels)
        self.net = ProbabilityNetwork(module)
        self.refuse_nan = config.nan_policy == "error"

    def forward(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, n_bad = self.preprocess(raw)
        probs = self.net(x)
        if self.refuse_nan:  # a graph cannot raise: stamps the policy refuses get NaN probabilities
            probs = torch.where((n_bad > 0)[:, None], torch.full_like(probs, float("nan")), probs)
        return probs, n_bad


def network_kind(model: TrainedModel) -> str:
    """"deterministic" for classifiers, "mean" for Bayesian ones (what the ONNX file holds)."""
    task = model.spec.task
    if not task.classifies:
        raise HitsStampsError(f"{model.path}: {model.name} is a {task}; only classifiers can be exported to ONNX")
    return "mean" if task.bayesian else "deterministic"


@contextlib.contextmanager
def exportable(model: TrainedModel) -> Iterator[ProbabilityNetwork]:
    """The deterministic probability network of `model` (the mean network for Bayesian models).

    Inside the block the module is in eval mode and, for Bayesian models, its Flipout layers use
    the posterior means; the previous modes are restored on exit.
    """
    kind = network_kind(model)
    module = model.module
    was_training = module.training
    module.eval()
    try:
        if kind == "mean":
            from hits_stamps.models.flipout import is_bayesian, use_mean

            if not is_bayesian(module):
                raise HitsStampsError(
                    f"{model.path}: {model.name} is registered as Bayesian but has no Flipout layers"
                )
            with use_mean(module):
                yield ProbabilityNetwork(module)
        else:
            yield ProbabilityNetwork(module)
    finally:
        module.train(was_training)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's informational logging and deprecation warnings."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _input_shape(model: TrainedModel) -> tuple[int, int, int]:
    """(C, H, W) of the network input."""
    h, w = model.config["input"]["size"]
    return len(model.config["input"]["channels"]), int(h), int(w)


def _serving(model: TrainedModel, net: ProbabilityNetwork) -> ServingNetwork:
    serving = ServingNetwork(net.module, model.preprocessor.config, model.preprocessor.channels_)
    return serving.eval()


def build_onnx_proto(model: TrainedModel):
    """Export `model` to an `onnx.ModelProto` (dynamic batch, softmax included) with metadata.

    Uses the dynamo-based `torch.onnx.export` with a dynamic batch dimension (the TorchScript
    exporter cannot translate `torch.rot90`, which the rotation-invariant models use).

    The graph is traced with autograd enabled (the module in eval mode; nothing is trained). Layers
    with a separate inference path then export their standard operator: `models.cnn.max_pool_2x2`
    takes four strided slices without autograd (faster in eager torch) but `F.max_pool2d` with it,
    so the graph has one ONNX `MaxPool` instead of 3 `Max` of 4 `Slice` nodes, which onnxruntime runs
    2-3 times faster (docs/benchmarks/serving.md). Both compute the same maximum exactly.
    """
    import onnx

    c, h, w = _input_shape(model)
    example = torch.zeros(2, h, w, c)  # raw stamps, channels last
    batch = torch.export.Dim("batch", min=1)
    with exportable(model) as net, _quiet_exporter():
        serving = _serving(model, net)
        # One eager pass first: a module that caches tensors on its first call (e.g. index tables
        # in an lru_cache) must not have them created under the exporter's fake tensors.
        with torch.no_grad():
            serving(example)
        try:
            with torch.enable_grad():  # see the docstring: MaxPool rather than slices
                program = torch.onnx.export(
                    serving, (example,), dynamo=True, input_names=[ONNX_INPUT],
                    output_names=[ONNX_OUTPUT, ONNX_NONFINITE], dynamic_shapes=({0: batch},), optimize=True,
                    verbose=False,
                )
        except Exception as exc:  # the exporter raises many types; report them as one line
            raise HitsStampsError(f"{model.path}: ONNX export of {model.name} failed: {exc}") from exc
    proto = program.model_proto
    props = {
        META + "model": model.name,
        META + "task": model.spec.task,
        META + "network": network_kind(model),
        META + "input_shape": json.dumps([h, w, c]),
        META + "input_layout": INPUT_LAYOUT,
        META + "channels": json.dumps(list(model.config["input"]["channels"])),
        META + "class_names": json.dumps(list(model.config.get("class_names", ["bogus", "real"]))),
        META + "preprocess": json.dumps(model.config["preprocess"]),
        META + "weights_sha256": file_sha256(Path(model.path) / WEIGHTS),
        META + "package_version": __version__,
    }
    existing = {p.key: p.value for p in proto.metadata_props}
    onnx.helper.set_model_props(proto, {**existing, **props})
    return proto


def parity_stamps(model: TrainedModel, n: int = 64, seed: int = 0) -> np.ndarray:
    """Random raw stamps (n, H, W, C) float32 for parity checks: sky-like values with NaN and inf
    pixels in some stamps and one all-NaN channel, so the in-graph NaN policy and scaling are exercised."""
    c, h, w = _input_shape(model)
    rng = np.random.default_rng(seed)
    x = rng.normal(100.0, 10.0, (n, h, w, c)).astype(np.float32)
    x[:, h // 2, w // 2, :] += rng.uniform(0, 500, (n, c)).astype(np.float32)  # a source in some channels
    x[rng.random((n, h, w, c)) < 0.02] = np.nan
    if n > 2:
        x[1, 0, 0, 0] = np.inf
        x[2, ..., -1] = np.nan  # a channel with no finite pixel
    if n > 3:
        x[3] = 100.0  # flat stamp
    return x


def parity_check(model: TrainedModel, onnx_bytes: bytes, n: int = 64, seed: int = 0) -> float:
    """max |p_onnxruntime(raw) - p_torch(Preprocessor(raw))| over `parity_stamps` of batch sizes 1 and n.

    Under nan_policy `error` only the stamps without non-finite pixels are compared (the others are
    refused by the Preprocessor and get NaN in the graph, which is checked too).
    """
    x = parity_stamps(model, n, seed)
    if model.preprocessor.config.nan_policy == "error":
        bad = ~np.isfinite(x).all(axis=(1, 2, 3))
        got = make_session(onnx_bytes, threads=1).run([ONNX_OUTPUT], {ONNX_INPUT: x})[0]
        if not np.isnan(got[bad]).all():
            return float("inf")
        x = x[~bad] if (~bad).any() else np.full((1,) + x.shape[1:], 100.0, dtype=np.float32)
    session = make_session(onnx_bytes, threads=1)
    worst = 0.0
    with exportable(model) as net, torch.no_grad():
        for batch in (x[:1], x):
            ref = net(torch.from_numpy(model.preprocessor.transform(batch, report=False))).numpy()
            got = session.run([ONNX_OUTPUT], {ONNX_INPUT: batch})[0]
            worst = max(worst, float(np.max(np.abs(got - ref))))
    return worst


def export_onnx_bytes(model: TrainedModel) -> bytes:
    """The serialized, parity-checked ONNX model of `model` (see `export_onnx`)."""
    import onnx

    proto = build_onnx_proto(model)
    data = proto.SerializeToString()
    diff = parity_check(model, data)
    if not diff <= PARITY_TOLERANCE:
        raise HitsStampsError(
            f"{model.path}: ONNX export of {model.name} differs from torch by {diff:.3g} "
            f"(tolerance {PARITY_TOLERANCE:g}); not written"
        )
    onnx.helper.set_model_props(
        proto, {**{p.key: p.value for p in proto.metadata_props}, META + "parity_max_abs_diff": f"{diff:.3g}"}
    )
    return proto.SerializeToString()


def export_onnx(
    model_dir: str | os.PathLike | TrainedModel, out_path: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write the ONNX model of a trained classifier to `out_path` (atomically) and return the path.

    Input `input` (batch, H, W, C) raw float32 stamps; outputs `probabilities` (batch, 2) and
    `nonfinite_pixels` (batch,); preprocessing runs inside the graph (module docstring). Bayesian
    models are exported as their posterior-mean network (module docstring). Refuses to replace an
    existing file unless `overwrite`; raises `HitsStampsError` if the export fails or its parity
    check against torch exceeds `PARITY_TOLERANCE`.
    """
    out = Path(out_path)
    if out.suffix.lower() != ".onnx":
        raise HitsStampsError(f"{out}: ONNX output must end in .onnx; got {out.suffix or '(no extension)'!r}")
    check_writable(out, overwrite)
    model = model_dir if isinstance(model_dir, TrainedModel) else load_model(model_dir)
    data = export_onnx_bytes(model)
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return out


def quantize_int8(onnx_bytes: bytes) -> bytes:
    """The model with int8 weights (onnxruntime dynamic quantization: int8 weights, activations
    quantized per batch at run time). Not used by `predict`: on a CPU without VNNI (AVX2 only) it
    ran several times slower than float32 (docs/benchmarks/speed.md gives the measured ratio and
    the accuracy change)."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "float32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_bytes)
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return dst.read_bytes()


def make_session(onnx_model: bytes | str | os.PathLike, threads: int | None = None):
    """An onnxruntime `InferenceSession` on the CPU; `threads` sets the intra-op thread count."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    source = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_metadata(session) -> dict[str, str]:
    """The `hits_stamps.*` metadata of an ONNX session, without the prefix."""
    props = session.get_modelmeta().custom_metadata_map
    return {k[len(META):]: v for k, v in props.items() if k.startswith(META)}


def check_onnx_matches(model: TrainedModel, session, source: str) -> dict[str, str]:
    """Refuse an ONNX model that was not exported from `model`'s directory (weights hash, shape)."""
    meta = onnx_metadata(session)
    if "weights_sha256" not in meta:
        raise HitsStampsError(
            f"{source}: expected an ONNX file written by `hits-stamps export`; found no hits_stamps metadata"
        )
    want = file_sha256(Path(model.path) / WEIGHTS)
    if meta["weights_sha256"] != want:
        raise HitsStampsError(
            f"{source}: exported from other weights (model {meta.get('model')}, sha256 "
            f"{meta['weights_sha256'][:12]}...) than {model.path} (sha256 {want[:12]}...); re-export it"
        )
    if meta.get("input_layout") != INPUT_LAYOUT:
        raise HitsStampsError(
            f"{source}: expected an ONNX file with the preprocessing in its graph (input_layout {INPUT_LAYOUT!r}); "
            f"found input_layout {meta.get('input_layout')!r}, written by an older hits-stamps; re-export it"
        )
    inputs = session.get_inputs()
    c, h, w = _input_shape(model)
    if len(inputs) != 1 or inputs[0].name != ONNX_INPUT or list(inputs[0].shape[1:]) != [h, w, c]:
        found = [(i.name, i.shape) for i in inputs]
        raise HitsStampsError(
            f"{source}: expected one input {ONNX_INPUT!r} of shape (batch, {h}, {w}, {c}); found {found}"
        )
    return meta


__all__ = [
    "INPUT_LAYOUT",
    "ONNX_INPUT",
    "ONNX_NONFINITE",
    "ONNX_OUTPUT",
    "PARITY_TOLERANCE",
    "ProbabilityNetwork",
    "ServingNetwork",
    "StampPreprocess",
    "build_onnx_proto",
    "check_onnx_matches",
    "export_onnx",
    "export_onnx_bytes",
    "exportable",
    "make_session",
    "network_kind",
    "onnx_metadata",
    "parity_check",
    "parity_stamps",
]
