"""ONNX export of a trained classifier, with the softmax inside: the ONNX output is probabilities.

The ONNX graph maps preprocessed stamps to class probabilities:

    input          (batch, C, H, W) float32   -- the output of the model's `Preprocessor`
    probabilities  (batch, 2) float32         -- columns: bogus, real

The batch dimension is dynamic. Preprocessing (NaN policy and per-stamp scaling) is NOT part of the
graph: it stays in Python (`hits_stamps.preprocess.Preprocessor`, rebuilt from the model directory)
and is shared by the torch and onnxruntime backends, so both see identical network inputs.

Bayesian (Flipout) models are exported as their MEAN network: every Flipout weight set to its
posterior mean (`loc`), run deterministically (`hits_stamps.models.flipout.use_mean`). Its output
is softmax(f_mean(x)), which is not the Monte-Carlo predictive mean (1/S) sum_s softmax(f_{w_s}(x))
that `TrainedModel.predict_proba` returns; the file's metadata says which network it holds.

Every export is checked: onnxruntime and torch are run on the same random inputs (batch sizes 1
and 64) and the export fails if the probabilities differ by more than `PARITY_TOLERANCE`. The
model name, task, network kind, input shape, the SHA-256 of the weights file and the measured
difference are stored in the ONNX metadata (`hits_stamps.*` keys), so a prediction can refuse an
ONNX file exported from a different model directory.
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
from hits_stamps.training.modeldir import WEIGHTS, TrainedModel, file_sha256, load_model

ONNX_INPUT = "input"
ONNX_OUTPUT = "probabilities"
#: largest max |p_onnx - p_torch| an export may show on its check inputs
PARITY_TOLERANCE = 1e-5
META = "hits_stamps."


class ProbabilityNetwork(nn.Module):
    """softmax(module(x), dim=-1): (B, C, H, W) float32 -> (B, K) class probabilities."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.module(x), dim=-1)  # (B, K)


def network_kind(model: TrainedModel) -> str:
    """"deterministic" for classifiers, "mean" for Bayesian ones (what the ONNX file holds)."""
    task = model.spec.task
    if task == "classifier":
        return "deterministic"
    if task == "bayesian-classifier":
        return "mean"
    raise HitsStampsError(f"{model.path}: {model.name} is a {task}; only classifiers can be exported to ONNX")


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
    h, w = model.config["input"]["size"]
    return len(model.config["input"]["channels"]), int(h), int(w)


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
    example = torch.zeros(2, c, h, w)
    batch = torch.export.Dim("batch", min=1)
    with exportable(model) as net, _quiet_exporter():
        # One eager pass first: a module that caches tensors on its first call (e.g. index tables
        # in an lru_cache) must not have them created under the exporter's fake tensors.
        with torch.no_grad():
            net(example)
        try:
            with torch.enable_grad():  # see the docstring: MaxPool rather than slices
                program = torch.onnx.export(
                    net, (example,), dynamo=True, input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                    dynamic_shapes=({0: batch},), optimize=True, verbose=False,
                )
        except Exception as exc:  # the exporter raises many types; report them as one line
            raise HitsStampsError(f"{model.path}: ONNX export of {model.name} failed: {exc}") from exc
    proto = program.model_proto
    props = {
        META + "model": model.name,
        META + "task": model.spec.task,
        META + "network": network_kind(model),
        META + "input_shape": json.dumps([c, h, w]),
        META + "channels": json.dumps(list(model.config["input"]["channels"])),
        META + "class_names": json.dumps(list(model.config.get("class_names", ["bogus", "real"]))),
        META + "preprocess": json.dumps(model.config["preprocess"]),
        META + "weights_sha256": file_sha256(Path(model.path) / WEIGHTS),
        META + "package_version": __version__,
    }
    existing = {p.key: p.value for p in proto.metadata_props}
    onnx.helper.set_model_props(proto, {**existing, **props})
    return proto


def parity_check(model: TrainedModel, onnx_bytes: bytes, n: int = 64, seed: int = 0) -> float:
    """max |p_onnxruntime - p_torch| over random inputs of batch sizes 1 and n (uniform in [0, 1])."""
    c, h, w = _input_shape(model)
    rng = np.random.default_rng(seed)
    x = rng.random((n, c, h, w), dtype=np.float32)
    session = make_session(onnx_bytes, threads=1)
    worst = 0.0
    with exportable(model) as net, torch.no_grad():
        for batch in (x[:1], x):
            ref = net(torch.from_numpy(batch)).numpy()
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

    Input `input` (batch, C, H, W) preprocessed float32; output `probabilities` (batch, 2). Bayesian
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
    inputs = session.get_inputs()
    c, h, w = _input_shape(model)
    if len(inputs) != 1 or inputs[0].name != ONNX_INPUT or list(inputs[0].shape[1:]) != [c, h, w]:
        found = [(i.name, i.shape) for i in inputs]
        raise HitsStampsError(
            f"{source}: expected one input {ONNX_INPUT!r} of shape (batch, {c}, {h}, {w}); found {found}"
        )
    return meta


__all__ = [
    "ONNX_INPUT",
    "ONNX_OUTPUT",
    "PARITY_TOLERANCE",
    "ProbabilityNetwork",
    "build_onnx_proto",
    "check_onnx_matches",
    "export_onnx",
    "export_onnx_bytes",
    "exportable",
    "make_session",
    "network_kind",
    "onnx_metadata",
    "parity_check",
]
