"""Serving: chunked streaming == in-memory prediction, resume, bounded memory, ONNX parity, Dask."""

from __future__ import annotations

import csv
import gc
import time
import tracemalloc

import numpy as np
import psutil
import pytest

from hits_stamps.cli import main
from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.errors import HitsStampsError, StampFileError
from hits_stamps.io import read_stamps, write_stamps
from hits_stamps.io.native import write_npz
from hits_stamps.serve import PredictConfig, export_onnx, open_stamp_stream, predict_file
from hits_stamps.serve.export import (
    ONNX_INPUT,
    ONNX_NONFINITE,
    ONNX_OUTPUT,
    exportable,
    make_session,
    onnx_metadata,
)
from hits_stamps.stamps import StampSet
from hits_stamps.training import TrainConfig, fit, load_model

N = 1000  # stamps in the ONNX parity file
M = 300  # stamps in the files of the other tests


def _read_csv(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids = [r["id"] for r in rows]
    p = np.array([float(r["p_real"]) for r in rows], dtype=np.float64).astype(np.float32)
    labels = np.array([int(r["label"]) for r in rows])
    return ids, p, labels


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def work(tmp_path_factory, one_torch_thread):
    """Tiny trained seed-cnn, rotinv-cnn and seed-bnn; 1,000 stamps; 300 of them in three file layouts."""
    root = tmp_path_factory.mktemp("serve")
    train = make_synthetic_stamps(200, seed=0)
    models = {}
    for name in ("seed-cnn", "rotinv-cnn", "seed-bnn"):
        cfg = TrainConfig(model=name, epochs=1, steps_per_epoch=3, batch_size=32, seed=0)
        fit(cfg, train, root / name, progress=False)
        models[name] = root / name
    big = make_synthetic_stamps(N, seed=5)
    data = big[np.arange(M)]
    files = {
        "h5": write_stamps(data, root / "data.h5"),
        "npz": write_npz(data, root / "data.npz"),  # compressed members (the default)
        "npz-stored": write_npz(data, root / "stored.npz", compress=False),
    }
    return {"root": root, "models": models, "big": big, "data": data, "files": files}


@pytest.fixture(scope="module")
def onnx_files(work):
    root = work["root"]
    return {name: export_onnx(work["models"][name], root / f"{name}.onnx") for name in ("seed-cnn", "rotinv-cnn")}


# ----------------------------------------------------------------------------- streaming reads


@pytest.mark.parametrize("layout", ["h5", "npz", "npz-stored"])
def test_stream_chunks_reassemble_the_file(work, layout):
    data = work["data"]
    with open_stamp_stream(work["files"][layout]) as stream:
        assert stream.streamed and stream.n == M and stream.stamp_shape == (21, 21, 4)
        assert stream.channels == data.channels
        parts = list(stream.chunks(70))
        assert [a for a, _, _ in parts] == [0, 70, 140, 210, 280]
        assert max(len(ids) for _, ids, _ in parts) == 70
        np.testing.assert_array_equal(np.concatenate([im for _, _, im in parts]), data.images)
        np.testing.assert_array_equal(np.concatenate([ids for _, ids, _ in parts]), data.ids)
        # backward and forward jumps
        np.testing.assert_array_equal(stream.read(10, 20)[1], data.images[10:20])
        np.testing.assert_array_equal(stream.read(250, 251)[0], data.ids[250:251])


def test_stream_rejects_bad_files(work, tmp_path):
    with pytest.raises(StampFileError, match="no such file"):
        open_stamp_stream(tmp_path / "missing.h5")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(StampFileError, match="readable .npz archive"):
        open_stamp_stream(bad)
    np.savez(tmp_path / "noimg.npz", labels=np.zeros(3))
    with pytest.raises(StampFileError, match=r"\[images\]"):
        open_stamp_stream(tmp_path / "noimg.npz")
    np.savez(tmp_path / "int.npz", images=np.zeros((2, 5, 5, 4), dtype=np.int16))
    with pytest.raises(StampFileError, match="floating-point"):
        open_stamp_stream(tmp_path / "int.npz")


# ----------------------------------------------------------------------------- chunked == in memory


@pytest.mark.parametrize(
    ("name", "layout"),
    [("seed-cnn", "h5"), ("seed-cnn", "npz"), ("seed-cnn", "npz-stored"), ("rotinv-cnn", "h5")],
)
def test_chunked_prediction_equals_in_memory(work, name, layout, tmp_path):
    model = load_model(work["models"][name])
    ref = model.predict_proba(read_stamps(work["files"][layout]), batch_size=32)[:, 1]
    out = tmp_path / "p.csv"
    summary = predict_file(model, work["files"][layout], out, PredictConfig(batch_size=32, chunk_rows=50))
    ids, p, labels = _read_csv(out)  # chunks of 64 rows
    assert ids == list(work["data"].ids)
    np.testing.assert_array_equal(p, ref)  # 9 significant digits round-trip float32 exactly
    np.testing.assert_array_equal(labels, (ref >= 0.5).astype(int))
    assert summary.n_written == M and summary.n_skipped == 0 and summary.streamed
    assert summary.n_real == int((ref >= 0.5).sum())


@pytest.mark.parametrize("layout", ["h5", "npz"])
def test_limit_predicts_the_leading_rows(work, layout, tmp_path):
    model = load_model(work["models"]["seed-cnn"])
    path = work["files"][layout]
    predict_file(model, path, tmp_path / "all.csv", PredictConfig(batch_size=32, chunk_rows=64))
    # 160 rows: the same batches of 32 as the full run (a batch's size can change the last bits)
    summary = predict_file(model, path, tmp_path / "head.csv", PredictConfig(batch_size=32, chunk_rows=64, limit=160))
    assert summary.n_total == summary.n_written == 160
    lines = (tmp_path / "all.csv").read_text().splitlines()
    assert (tmp_path / "head.csv").read_text().splitlines() == lines[:161]  # header + 160 rows
    with pytest.raises(HitsStampsError, match="limit"):
        PredictConfig(limit=0)


def test_bayesian_chunked_equals_predict_proba(work, tmp_path):
    """MC seeds follow the global row of each batch, so chunking does not change the samples."""
    model = load_model(work["models"]["seed-bnn"])
    subset = work["data"]
    path = work["files"]["h5"]
    ref = model.predict_proba(subset, batch_size=64, mc_samples=4, seed=3)[:, 1]
    cfg = PredictConfig(batch_size=64, chunk_rows=100, mc_samples=4, seed=3)  # chunks of 128 rows
    summary = predict_file(model, path, tmp_path / "p.csv", cfg)
    _, p, _ = _read_csv(tmp_path / "p.csv")
    np.testing.assert_array_equal(p, ref)
    assert "Monte-Carlo mean of 4" in summary.network


# ----------------------------------------------------------------------------- resume


def test_resume_after_interruption_gives_the_same_file(work, tmp_path):
    data_path = work["files"]["h5"]
    model = work["models"]["seed-cnn"]
    cfg = PredictConfig(batch_size=50, chunk_rows=50)
    full = tmp_path / "full.csv"
    predict_file(model, data_path, full, cfg)

    out = tmp_path / "part.csv"
    calls = []

    def interrupt(done, total):
        calls.append(done)
        if done >= 100:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_file(model, data_path, out, cfg, progress=interrupt)
    assert not out.exists()  # the finished rows wait under a temporary name
    partial = tmp_path / ".part.csv.partial"
    _, p_part, _ = _read_csv(partial)
    assert len(p_part) == 100
    with open(partial, "a") as fh:  # a kill in the middle of a write leaves half a line
        fh.write("toy_5_000100,0.4")
    with pytest.warns(UserWarning, match="partial last line"):
        summary = predict_file(model, data_path, out, cfg, resume=True)
    assert summary.n_skipped == 100 and summary.n_written == M - 100
    assert out.read_bytes() == full.read_bytes()
    assert not partial.exists() and not (tmp_path / ".part.csv.partial.json").exists()

    with pytest.raises(HitsStampsError, match="nothing to resume"):  # complete
        predict_file(model, data_path, out, cfg, resume=True)


# ----------------------------------------------------------------------------- bounded memory


@pytest.mark.parametrize("layout", ["h5", "npz"])
def test_peak_memory_does_not_grow_with_file_size(work, layout, tmp_path):
    """Python-side peak allocations (numpy arrays are traced) for 200 vs 3,000 stamps in 50-row chunks.

    The reader thread may hold up to READ_AHEAD + 2 chunks in flight (raw and preprocessed), which a
    200-stamp file (4 chunks) need not reach; beyond that nothing may grow with the file."""
    from hits_stamps.serve.predict import READ_AHEAD

    model = load_model(work["models"]["seed-cnn"])
    big = StampSet.concat([work["data"]] * 10)[np.arange(3000)]
    small = work["data"][np.arange(200)]
    peaks = {}
    for label, stamps in (("small", small), ("big", big)):
        path = tmp_path / f"{label}.{layout}"
        write_stamps(stamps, path)
        gc.collect()
        tracemalloc.start()
        predict_file(model, path, tmp_path / f"{label}.csv", PredictConfig(batch_size=50, chunk_rows=50))
        peaks[label] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    chunk_bytes = 50 * 21 * 21 * 4 * 4
    in_flight = 2 * (READ_AHEAD + 2) * chunk_bytes  # raw + preprocessed chunks the reader may hold
    assert peaks["big"] < 1.25 * peaks["small"] + in_flight, peaks
    assert peaks["big"] < big.images.nbytes / 4, (peaks, big.images.nbytes)


# ----------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("name", ["seed-cnn", "rotinv-cnn"])
def test_onnx_parity_on_1000_stamps(work, onnx_files, name):
    """The graph holds the preprocessing: raw stamps with NaNs in, the torch path's probabilities out."""
    import torch

    model = load_model(work["models"][name])
    session = make_session(onnx_files[name])
    meta = onnx_metadata(session)
    assert meta["model"] == name and meta["network"] == "deterministic"
    raw = work["big"].images.copy()  # (1000, 21, 21, 4)
    rng = np.random.default_rng(3)
    raw[rng.random(raw.shape) < 0.01] = np.nan
    raw[:50, :4] = np.nan  # edge-padded stamps
    raw[50, ..., 3] = np.nan  # a channel with no finite pixel
    x = model.preprocessor.transform(raw, report=False)  # (1000, 4, 21, 21)
    with exportable(model) as net, torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()  # (1000, 2)
    got, bad = session.run([ONNX_OUTPUT, ONNX_NONFINITE], {ONNX_INPUT: raw})
    assert got.shape == (N, 2)
    assert np.max(np.abs(got - ref)) <= 1e-5
    np.testing.assert_array_equal(bad, (~np.isfinite(raw)).sum(axis=(1, 2, 3)))
    for b in (1, 7):  # dynamic batch
        np.testing.assert_allclose(session.run([ONNX_OUTPUT], {ONNX_INPUT: raw[:b]})[0], ref[:b], atol=1e-5, rtol=0)
    import onnx

    ops = {node.op_type for node in onnx.load(str(onnx_files[name])).graph.node}
    assert "MaxPool" in ops, ops  # pooling exported as MaxPool, not strided slices


@pytest.mark.parametrize("policy,scaling", [("median", "robust"), ("zero", "robust"), ("error", "minmax")])
def test_onnx_preprocessing_in_graph_matches_python(policy, scaling):
    """Every NaN policy and scaling: the graph's preprocessing equals `Preprocessor.transform`."""
    import torch

    from hits_stamps.preprocess import PreprocessConfig, Preprocessor
    from hits_stamps.serve.export import ServingNetwork, StampPreprocess

    cfg = PreprocessConfig(nan_policy=policy, scaling=scaling)
    rng = np.random.default_rng(0)
    raw = rng.normal(100, 10, (30, 9, 9, 3)).astype(np.float32)
    if policy != "error":
        raw[rng.random(raw.shape) < 0.05] = np.nan
        raw[2, ..., 1] = np.nan
        raw[4, 0, 0, 0] = -np.inf
    raw[3] = 5.0  # flat
    x, bad = StampPreprocess(cfg)(torch.from_numpy(raw))
    np.testing.assert_allclose(x.numpy(), Preprocessor(cfg).transform(raw, report=False), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(bad.numpy(), (~np.isfinite(raw)).sum(axis=(1, 2, 3)))
    if policy == "error":  # a graph cannot raise: refused stamps get NaN probabilities
        net = ServingNetwork(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(2)), cfg)
        raw[7, 1, 1, 1] = np.nan
        probs, _ = net(torch.from_numpy(raw))
        assert torch.isnan(probs[7]).all() and torch.isfinite(probs[:7]).all()


def test_onnx_joint_scaling_in_graph_matches_python(tmp_path):
    """`joint` scaling (shared flux scale over template, science, difference) inside the graph."""
    model_dir = fit(TrainConfig(model="seed-cnn", epochs=1, steps_per_epoch=2, batch_size=32, seed=0,
                                recipe_overrides={"scaling": "joint"}),
                    make_synthetic_stamps(100, seed=1), tmp_path / "joint", progress=False).path
    model = load_model(model_dir)
    assert model.preprocessor.config.scaling == "joint"
    raw = make_synthetic_stamps(200, seed=6).images.copy()
    raw[np.random.default_rng(1).random(raw.shape) < 0.02] = np.nan
    raw[3, ..., 0] = np.nan  # no template pixel: the science image sets the scale
    raw[4, ..., :3] = np.nan  # no image channel at all
    session = make_session(export_onnx(model_dir, tmp_path / "joint.onnx"))
    got = session.run([ONNX_OUTPUT], {ONNX_INPUT: raw})[0]
    np.testing.assert_allclose(got, model.predict_proba(raw), atol=1e-5, rtol=0)


def test_onnx_backend_on_nan_stamps_equals_torch_backend(work, onnx_files, tmp_path):
    data = work["data"]
    images = data.images.copy()
    images[::3, :5] = np.nan
    path = write_stamps(StampSet(images, ids=data.ids), tmp_path / "nan.h5")
    a, b = tmp_path / "torch.csv", tmp_path / "onnx.csv"
    with pytest.warns(UserWarning, match="non-finite pixels replaced"):
        predict_file(work["models"]["seed-cnn"], path, a)
    with pytest.warns(UserWarning, match="non-finite pixels replaced"):
        s = predict_file(work["models"]["seed-cnn"], path, b,
                         PredictConfig(backend="onnxruntime", onnx_path=str(onnx_files["seed-cnn"])))
    assert s.nan_pixels == int(np.isnan(images).sum())
    _, pa, _ = _read_csv(a)
    ids, pb, _ = _read_csv(b)
    assert ids == list(data.ids) and np.max(np.abs(pa - pb)) <= 1e-5


def test_onnx_bayesian_exports_the_mean_network(work, tmp_path):
    import torch

    from hits_stamps.models.flipout import use_mean

    model = load_model(work["models"]["seed-bnn"])
    path = export_onnx(model, tmp_path / "bnn.onnx")
    session = make_session(path)
    assert onnx_metadata(session)["network"] == "mean"
    x = model.preprocessor.transform(work["data"].images)
    with use_mean(model.module), torch.no_grad():
        ref = torch.softmax(model.module.eval()(torch.from_numpy(x)), -1).numpy()
        again = torch.softmax(model.module(torch.from_numpy(x)), -1).numpy()
    np.testing.assert_array_equal(ref, again)  # the mean network is deterministic
    assert np.max(np.abs(session.run([ONNX_OUTPUT], {ONNX_INPUT: work["data"].images})[0] - ref)) <= 1e-5
    with pytest.raises(HitsStampsError, match="exists"):
        export_onnx(model, path)


# ----------------------------------------------------------------------------- Dask


def test_dask_two_workers_identical_to_local(work, tmp_path):
    model_dir, data_path = work["models"]["seed-cnn"], work["files"]["h5"]
    local = tmp_path / "local.csv"
    predict_file(model_dir, data_path, local, PredictConfig(batch_size=64, chunk_rows=128))
    out = tmp_path / "dask.csv"
    cfg = PredictConfig(batch_size=64, chunk_rows=128, engine="dask", workers=2)  # 3 blocks: 128, 128, 44 rows
    summary = predict_file(model_dir, data_path, out, cfg)
    assert out.read_bytes() == local.read_bytes()
    loads = [w["model_loads"] for w in summary.worker_stats.values()]
    assert len(loads) == 2 and all(v <= 1 for v in loads) and sum(loads) >= 1  # loaded once per worker
    deadline = time.monotonic() + 10  # the LocalCluster's processes are gone
    while _dask_children() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _dask_children()


def test_dask_adapts_files_as_local(work, tmp_path):
    """A file in another channel order and size (ZTF-like 63x63x3, shuffled, NaN edge; a 15x15 one)
    is adapted block by block on the workers: the CSV is the local engine's, byte for byte."""
    model_dir, data = work["models"]["seed-bnn"], work["data"][np.arange(40)]
    rng = np.random.default_rng(0)
    big = rng.normal(0, 1, (40, 63, 63, 3)).astype(np.float32)
    big[:, 21:42, 21:42, :] = data.images[..., :3]
    big[0, :5] = np.nan  # an edge-padded stamp (cropped away)
    big[1, 30, 25:30] = np.nan  # missing pixels that stay
    order = [2, 0, 1]
    ztf = StampSet(big[..., order], ids=data.ids, channels=tuple(("ref", "sci", "diff")[i] for i in order))
    small = StampSet(data.images[:, 3:18, 3:18][..., [3, 1, 0, 2]], ids=data.ids,
                     channels=("snr", "science", "template", "difference"))
    for name, stamps in (("ztf", ztf), ("small", small)):
        path = write_stamps(stamps, tmp_path / f"{name}.h5")
        local, out = tmp_path / f"{name}-local.csv", tmp_path / f"{name}-dask.csv"
        cfg = dict(batch_size=8, chunk_rows=16, mc_samples=4, seed=3)  # 3 blocks: 16, 16, 8 rows
        with pytest.warns(UserWarning, match="channels taken by name"):
            ref = predict_file(model_dir, path, local, PredictConfig(**cfg))
        with pytest.warns(UserWarning, match="channels taken by name"):
            summary = predict_file(model_dir, path, out, PredictConfig(**cfg, engine="dask", workers=1))
        assert out.read_bytes() == local.read_bytes()
        assert summary.nan_pixels == ref.nan_pixels > 0  # NaN edge / NaN padding counted alike


def _dask_children():
    """Child processes other than multiprocessing's resource tracker (which lives as long as we do)."""
    return [c for c in psutil.Process().children(recursive=True)
            if not any("resource_tracker" in part for part in c.cmdline())]


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_before_writing(work, onnx_files, tmp_path):
    model_dir = work["models"]["seed-cnn"]
    three = make_synthetic_stamps(20, seed=1, channels=3)
    wrong = write_stamps(three, tmp_path / "three.h5")
    with pytest.raises(HitsStampsError, match=r"three.h5 \[channels\]: expected channels named like .*found ch0, ch1"):
        predict_file(model_dir, wrong, tmp_path / "a.csv")
    named = StampSet(three.images, channels=("template", "science", "snr"))
    with pytest.raises(HitsStampsError, match=r"needs channel 'difference' .*found channels template, science, snr"):
        predict_file(model_dir, write_stamps(named, tmp_path / "named.h5"), tmp_path / "a.csv")
    with pytest.raises(StampFileError, match="no such file"):
        predict_file(model_dir, tmp_path / "missing.h5", tmp_path / "a.csv")
    assert not (tmp_path / "a.csv").exists()

    out = tmp_path / "exists.csv"
    out.write_text("keep me\n")
    with pytest.raises(HitsStampsError, match="output exists"):
        predict_file(model_dir, work["files"]["h5"], out)
    with pytest.raises(HitsStampsError, match="exclude each other"):
        predict_file(model_dir, work["files"]["h5"], out, resume=True, overwrite=True)
    foreign = onnx_files["rotinv-cnn"]
    with pytest.raises(HitsStampsError, match="exported from other weights"):
        predict_file(model_dir, work["files"]["h5"], out, PredictConfig(backend="onnxruntime", onnx_path=str(foreign)),
                     overwrite=True)
    with pytest.raises(HitsStampsError, match="reads HDF5"):
        predict_file(model_dir, work["files"]["npz"], out, PredictConfig(engine="dask"), overwrite=True)
    assert out.read_text() == "keep me\n"  # nothing was written over it
    with pytest.raises(HitsStampsError, match="nothing to resume"):
        predict_file(model_dir, work["files"]["h5"], out, resume=True)
    with pytest.raises(HitsStampsError, match="--scheduler and --workers need --engine dask"):
        PredictConfig(workers=2)


# ----------------------------------------------------------------------------- geometry and channels


def test_channels_matched_by_name_never_by_position(work, tmp_path):
    """A file in another channel order predicts exactly as the original; a ZTF-like 63x63x3 file is
    cropped, gets a built snr channel, and predicts as the same stamps adapted by hand."""
    from hits_stamps.geometry import fit_size, snr_from_difference

    model_dir, data = work["models"]["seed-cnn"], work["data"][np.arange(40)]
    ref = tmp_path / "ref.csv"
    predict_file(model_dir, write_stamps(data, tmp_path / "ref.h5"), ref)
    order = [2, 0, 3, 1]
    shuffled = StampSet(data.images[..., order], ids=data.ids, channels=tuple(data.channels[i] for i in order))
    out = tmp_path / "shuffled.csv"
    with pytest.warns(UserWarning, match="channels taken by name: template, science, difference, snr"):
        predict_file(model_dir, write_stamps(shuffled, tmp_path / "shuffled.h5"), out)
    assert out.read_bytes() == ref.read_bytes()

    rng = np.random.default_rng(0)
    big = rng.normal(0, 1, (40, 63, 63, 3)).astype(np.float32)
    big[:, 21:42, 21:42, :] = data.images[..., :3]
    big[0, :5] = np.nan  # an edge-padded stamp
    ztf = StampSet(big, ids=data.ids, channels=("ref", "sci", "diff"))
    out = tmp_path / "ztf.csv"
    with pytest.warns(UserWarning, match="snr built from the difference.*cropped about the centre from 63x63 to 21x21"):
        predict_file(model_dir, write_stamps(ztf, tmp_path / "ztf.h5"), out)
    by_hand = np.concatenate([big, snr_from_difference(big[..., 2])[..., None]], axis=-1)
    manual = StampSet(fit_size(by_hand, (21, 21)), ids=data.ids)
    ids, p, _ = _read_csv(out)
    expected = load_model(model_dir).predict_proba(manual)[:, 1]
    np.testing.assert_allclose(p, expected, atol=1e-6)
    assert ids == list(data.ids)
    small = StampSet(data.images[:, 3:18, 3:18], ids=data.ids)  # 15x15: NaN-padded to 21x21, never refused
    with pytest.warns(UserWarning, match="padded with NaN"):
        predict_file(model_dir, write_stamps(small, tmp_path / "small.h5"), tmp_path / "small.csv")


# ----------------------------------------------------------------------------- uncertainty columns


def test_bayesian_uncertainty_columns_and_referral(work, tmp_path, capsys):
    from hits_stamps.uncertainty import mc_predict_stamps, summarize

    model_dir, data = work["models"]["seed-bnn"], work["data"][np.arange(100)]
    path = write_stamps(data, tmp_path / "d.h5")
    plain, unc = tmp_path / "plain.csv", tmp_path / "unc.csv"
    predict_file(model_dir, path, plain, PredictConfig(batch_size=32, mc_samples=8))
    cfg = PredictConfig(batch_size=32, mc_samples=8, refer_above=0.5)
    predict_file(model_dir, path, unc, cfg)
    with open(unc, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["id", "p_real", "label", "p_std", "entropy", "mutual_information", "refer"]
    _, p_plain, _ = _read_csv(plain)
    np.testing.assert_array_equal(np.array([float(r["p_real"]) for r in rows], dtype=np.float32), p_plain)
    u = summarize(mc_predict_stamps(load_model(model_dir), data, n_samples=8, batch_size=32))
    got = {k: np.array([float(r[k]) for r in rows]) for k in ("p_std", "entropy", "mutual_information")}
    np.testing.assert_allclose(got["p_std"], u["std"][:, 1], atol=1e-6)
    np.testing.assert_allclose(got["entropy"], u["entropy"], atol=1e-6)
    np.testing.assert_allclose(got["mutual_information"], u["mutual_information"], atol=1e-6)
    np.testing.assert_array_equal([int(r["refer"]) for r in rows], (got["entropy"] >= 0.5).astype(int))
    # an interrupted run resumes with the extra columns, byte-identical
    part = tmp_path / "part.csv"

    def interrupt(done, total):
        if done >= 64:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_file(model_dir, path, part, PredictConfig(batch_size=32, chunk_rows=32, mc_samples=8,
                                                          refer_above=0.5), progress=interrupt)
    with pytest.raises(HitsStampsError, match="columns"):  # other columns than the unfinished rows
        predict_file(model_dir, path, part, PredictConfig(batch_size=32, chunk_rows=32, mc_samples=8), resume=True)
    predict_file(model_dir, path, part, PredictConfig(batch_size=32, chunk_rows=32, mc_samples=8, refer_above=0.5),
                 resume=True)
    assert part.read_bytes() == unc.read_bytes()
    with pytest.raises(HitsStampsError, match="is deterministic"):
        predict_file(work["models"]["seed-cnn"], path, tmp_path / "x.csv", PredictConfig(uncertainty=True))
    with pytest.raises(HitsStampsError, match="need --backend torch"):
        PredictConfig(uncertainty=True, backend="onnxruntime")
    # the referral cut from a labelled validation set, then used by predict
    val = write_stamps(work["big"][np.arange(300, 500)], tmp_path / "val.h5")
    assert main(["referral-threshold", str(model_dir), "--data", str(val), "--target-accuracy", "0.5",
                 "--mc-samples", "8", "--json"]) == 0
    import json

    res = json.loads(capsys.readouterr().out)
    assert res["accuracy_kept"] >= 0.5 and 0 <= res["fraction_referred"] < 1 and res["n"] == 200
    assert main(["referral-threshold", str(work["models"]["seed-cnn"]), "--data", str(val),
                 "--target-accuracy", "0.9"]) == 2
    assert "is a classifier; the referral cut is on the Monte-Carlo" in capsys.readouterr().err


# ----------------------------------------------------------------------------- CLI


def test_cli_predict_and_export(work, tmp_path, capsys):
    model_dir = str(work["models"]["seed-cnn"])
    out = tmp_path / "p.csv"
    rc = main(["predict", model_dir, "--data", str(work["files"]["npz"]), "--out", str(out), "--batch-size", "100",
               "--no-progress"])
    assert rc == 0
    ids, p, _ = _read_csv(out)
    assert len(ids) == M and f"{M} rows" in capsys.readouterr().out
    assert main(["predict", model_dir, "--data", str(work["files"]["npz"]), "--out", str(out)]) == 2
    assert "output exists" in capsys.readouterr().err
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", model_dir, "--format", "onnx", "--out", str(onnx_path)]) == 0
    assert "parity with torch" in capsys.readouterr().out
    assert main(["export", model_dir, "--format", "tflite", "--out", str(tmp_path / "m.tfl")]) == 2
    rc = main(["predict", model_dir, "--data", str(work["files"]["h5"]), "--out", str(out), "--overwrite",
               "--backend", "onnxruntime", "--onnx", str(onnx_path), "--no-progress"])
    assert rc == 0
    _, p_onnx, _ = _read_csv(out)
    assert np.max(np.abs(p_onnx - p)) <= 1e-5


# ----------------------------------------------------------------------------- speed: writer and reader thread


@pytest.mark.parametrize("ids", [["a1", "b_2", "stamp_0000003"], ['x,1', 'say "hi"', ""], ["plain", "com,ma", "q"]])
def test_fast_csv_writer_writes_the_csv_module_bytes(tmp_path, ids):
    """The joined fast path (plain ids) and the csv-module path (ids that need quoting) both give
    exactly the bytes `csv.writer` gives for (id, p_real with 9 significant digits, label, extras)."""
    import io

    from hits_stamps.serve.csvout import PredictionWriter, partial_path

    p = np.array([0.1, 0.5, 0.987654321], dtype=np.float32)
    extras = {"p_std": np.array([0.01, 0.2, 1e-9]), "entropy": np.array([0.5, 0.6, 0.7]),
              "mutual_information": np.array([0.0, 1.0, 2.0]), "refer": np.array([0, 1, 1], dtype=np.int8)}
    cols = ("p_std", "entropy", "mutual_information", "refer")
    w = PredictionWriter(tmp_path / "o.csv", threshold=0.5, extra_columns=cols)
    w.append(np.array(ids), p, extras)
    w.close()
    want = io.StringIO()
    ref = csv.writer(want, lineterminator="\n")
    ref.writerow(("id", "p_real", "label", *cols))
    for k, i in enumerate(ids):
        ref.writerow((i, f"{float(p[k]):.9g}", int(p[k] >= 0.5), f"{float(np.float32(extras['p_std'][k])):.9g}",
                      f"{float(np.float32(extras['entropy'][k])):.9g}",
                      f"{float(np.float32(extras['mutual_information'][k])):.9g}", int(extras["refer"][k])))
    assert partial_path(tmp_path / "o.csv").read_bytes() == want.getvalue().encode()


def test_line_break_in_an_id_is_refused_with_its_row(tmp_path):
    from hits_stamps.serve.csvout import PredictionWriter

    w = PredictionWriter(tmp_path / "o.csv")
    w.append(np.array(["a", "b"]), np.array([0.1, 0.2], dtype=np.float32))
    with pytest.raises(HitsStampsError, match=r"id 'c\\nd' \(row 4\) contains a line break"):
        w.append(np.array(["x", "c\nd"]), np.array([0.1, 0.2], dtype=np.float32))
    w.close()


def test_reader_thread_error_reaches_the_caller_and_stops(work):
    """An error while reading or preprocessing a chunk is raised in the predicting thread, after the
    chunks before it, and the reader thread ends."""
    import threading

    from hits_stamps.serve.backends import make_backend
    from hits_stamps.serve.predict import prepared_chunks

    model = load_model(work["models"]["seed-cnn"])
    backend = make_backend(model, "torch")

    class Broken:
        def __init__(self, stream):
            self.stream = stream

        def chunks(self, rows, start=0):
            for k, item in enumerate(self.stream.chunks(rows, start)):
                if k == 2:
                    raise StampFileError(work["files"]["h5"], "images", "readable rows", "a bad block")
                yield item

    seen = []
    with open_stamp_stream(work["files"]["h5"]) as stream:
        with pytest.raises(StampFileError, match="a bad block"):
            for a, _ids, x, _nan in prepared_chunks(model, backend, Broken(stream), 64):
                seen.append(a)
                assert x.shape[1:] == (4, 21, 21)
        assert seen == [0, 64]
        # leaving the loop early stops the reader too
        gen = prepared_chunks(model, backend, stream, 32)
        next(gen)
        gen.close()
    assert not any(t.name == "hits-stamps-reader" for t in threading.enumerate())
