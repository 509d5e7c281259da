"""`predict --backend auto`: which backend it picks, and that it predicts what torch predicts."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.errors import HitsStampsError
from hits_stamps.io import write_stamps
from hits_stamps.serve import PredictConfig, backends, predict_file
from hits_stamps.training import TrainConfig, fit, load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N = 400


@pytest.fixture(scope="module")
def work(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("auto")
    train = make_synthetic_stamps(200, seed=0)
    models = {}
    for name in ("seed-cnn", "seed-bnn"):
        fit(TrainConfig(model=name, epochs=1, steps_per_epoch=3, batch_size=32, seed=0), train, root / name,
            progress=False)
        models[name] = load_model(root / name)
    return {"root": root, "models": models, "h5": write_stamps(make_synthetic_stamps(N, seed=5), root / "d.h5")}


def _p_real(path):
    with open(path, newline="") as fh:
        return np.array([float(r["p_real"]) for r in csv.DictReader(fh)])


def test_choice_rules(work, monkeypatch):
    cnn, bnn = work["models"]["seed-cnn"], work["models"]["seed-bnn"]
    big = backends.AUTO_ONNX_MIN_ROWS
    assert backends.choose_backend(cnn, big) == "onnxruntime"
    assert backends.choose_backend(cnn, big - 1) == "torch"  # a small file: the export would not pay
    assert backends.choose_backend(bnn, big) == "torch"  # its export is the mean network, not the MC mean
    assert backends.choose_backend(cnn, big, uncertainty=True) == "torch"
    assert backends.choose_backend(cnn, 10, onnx_model="m.onnx") == "onnxruntime"  # an export is given
    monkeypatch.setattr(backends, "onnxruntime_installed", lambda: False)
    assert backends.choose_backend(cnn, big) == "torch"


def test_auto_is_the_default_and_matches_torch(work, tmp_path, monkeypatch):
    cnn_dir = work["models"]["seed-cnn"].path
    ref = predict_file(cnn_dir, work["h5"], tmp_path / "torch.csv", PredictConfig(backend="torch"))
    small = predict_file(cnn_dir, work["h5"], tmp_path / "small.csv")  # N rows < AUTO_ONNX_MIN_ROWS
    assert PredictConfig().backend == "auto" and small.backend == "torch"
    assert (tmp_path / "small.csv").read_bytes() == (tmp_path / "torch.csv").read_bytes()
    monkeypatch.setattr(backends, "AUTO_ONNX_MIN_ROWS", N)  # as if the file were large
    big = predict_file(cnn_dir, work["h5"], tmp_path / "auto.csv")
    assert big.backend == "onnxruntime" and ref.backend == "torch"
    p_torch, p_auto = _p_real(tmp_path / "torch.csv"), _p_real(tmp_path / "auto.csv")
    assert len(p_auto) == N and np.max(np.abs(p_auto - p_torch)) <= 1e-5
    # the Bayesian model stays on torch: the Monte-Carlo mean, not the exported mean network
    assert predict_file(work["models"]["seed-bnn"].path, work["h5"], tmp_path / "bnn.csv").backend == "torch"
    # resume makes the same choice, so the interrupted run's identity matches and the rows are the same
    cfg = PredictConfig(chunk_rows=128)

    def interrupt(done, total):
        if done >= 128:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_file(cnn_dir, work["h5"], tmp_path / "part.csv", cfg, progress=interrupt)
    again = predict_file(cnn_dir, work["h5"], tmp_path / "part.csv", cfg, resume=True)
    assert again.backend == "onnxruntime" and again.n_skipped == 128
    assert np.max(np.abs(_p_real(tmp_path / "part.csv") - p_torch)) <= 1e-5


def test_auto_falls_back_to_torch_when_the_export_fails(work, tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "AUTO_ONNX_MIN_ROWS", 1)

    def broken(model):
        raise HitsStampsError("ONNX export failed: no")

    monkeypatch.setattr(backends.export, "export_onnx_bytes", broken)
    with pytest.warns(UserWarning, match="onnxruntime backend is not available"):
        s = predict_file(work["models"]["seed-cnn"].path, work["h5"], tmp_path / "o.csv")
    assert s.backend == "torch"


def test_config_checks_with_auto():
    with pytest.raises(HitsStampsError, match="backend must be one of"):
        PredictConfig(backend="tensorrt")
    with pytest.raises(HitsStampsError, match="--onnx needs --backend onnxruntime"):
        PredictConfig(backend="torch", onnx_path="m.onnx")
    PredictConfig(onnx_path="m.onnx")  # auto with a given export: onnxruntime
    PredictConfig(uncertainty=True)  # auto with uncertainty: torch
