"""Speed against the seed report's stack (tf_keras + TensorFlow Probability), in one run.

What it measures (docs/benchmarks/speed.md), in `--repeats` alternating rounds, ours in this process,
the peer in its own process (the venv of benchmarks/peer_requirements.txt), medians over rounds, the
1-minute load average recorded next to every number:

1. training: seconds per epoch of seed-cnn (batch 50, RMSprop) and seed-bnn (batch 64, Adam 1e-4) on
   the same 4,026 stamps (`make_synthetic_stamps(4026, seed=0)`, min-max scaled), 80/20 split,
   validation pass included in the epoch (ours: `fit`'s epoch time; peer: `model.fit(...,
   validation_split=0.2)` timed by a callback); the first epoch (warm-up, tracing) is dropped;
2. inference in memory: seed-cnn `TrainedModel.predict_proba` (raw stamps in, preprocessing
   included; torch) and the onnxruntime backend that `predict --backend auto` picks for large files
   (`OnnxBackend`, raw stamps in, batches of `PredictConfig().batch_size`; its in-memory export timed
   apart) against tf_keras `model.predict` (pre-scaled stamps in) on `--n-infer` stamps; and
   seed-cnn / rotinv-cnn forward passes as a fraction of the float32 matrix-multiply rate
   (2048 x 2048, same threads) = forward FLOPs x stamps/s / matmul FLOP/s;
3. end to end: `hits-stamps predict FILE.h5 --out FILE.csv` (a child process, default options: the
   backend chosen by `--backend auto`; its wall time from start to exit, Python start-up, imports,
   model loading and any export included) on the same `--n-infer` stamps and on a file of `--n-e2e`
   stamps, against the peer's in-memory `model.predict` rate on `--n-infer` stamps;
4. Monte-Carlo prediction of seed-bnn: seconds per stamp and sample (ours: `predict_proba` with
   `--mc-samples`; peer: the compiled model called once per sample);
5. onnxruntime int8 (dynamic quantization) against float32: rate and the accuracy change on
   `--n-infer` held-out stamps (`make_synthetic_stamps(n, seed=7)`).

Ours runs as a user runs it: no environment variables; threads and precision chosen by
`hits_stamps.hardware` (recorded). The peer runs with TensorFlow's defaults.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_speed.py --peer-python /work/tfvenv/bin/python \\
        --n-infer 10000 --n-e2e 100000 --out benchmarks/results/speed.json
    PYTHONPATH=src .venv/bin/python benchmarks/bench_speed.py --smoke --out runs/speed_smoke.json

The peer side (run by the above with the peer venv's python; imports neither torch nor hits_stamps):
    /work/tfvenv/bin/python benchmarks/bench_speed.py peer --data D.npz --epochs 3 --mc-samples 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def load() -> float:
    return round(os.getloadavg()[0], 2)


# ----------------------------------------------------------------------------- the peer (its own venv)


def peer(args: argparse.Namespace) -> None:
    """tf_keras seed CNN and TFP seed BNN on the stamps of --data; prints one JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    import tensorflow_probability as tfp
    import tf_keras as keras

    tf.random.set_seed(0)
    d = np.load(args.data)
    x, y, xi, xm = d["x"], d["y"], d["x_infer"], d["x_mc"]  # (N, 21, 21, 4), min-max scaled
    yy = np.eye(2, dtype=np.float32)[y]
    out: dict = {"versions": {"tensorflow": tf.__version__, "tf_keras": keras.__version__,
                              "tensorflow_probability": tfp.__version__}}

    def timed_fit(model, batch):
        times: list[float] = []

        class T(keras.callbacks.Callback):
            def on_epoch_begin(self, e, logs=None):
                self.t = time.perf_counter()

            def on_epoch_end(self, e, logs=None):  # after the validation pass
                times.append(time.perf_counter() - self.t)

        model.fit(x, yy, batch_size=batch, epochs=args.epochs, validation_split=0.2, shuffle=True, verbose=0,
                  callbacks=[T()])
        return times[1:]

    L = keras.layers
    cnn = keras.Sequential([keras.Input(x.shape[1:])] + [
        layer for _ in range(4) for layer in (L.Conv2D(64, 2, padding="same", activation="relu"), L.MaxPooling2D(2))
    ] + [L.Flatten(), L.Dense(64, activation="sigmoid"), L.Dense(64, activation="sigmoid"),
         L.Dense(64, activation="sigmoid"), L.Dense(2, activation="softmax")])
    cnn.compile(optimizer=keras.optimizers.RMSprop(learning_rate=1e-3, rho=0.9, epsilon=1e-7),
                loss="binary_crossentropy", metrics=["accuracy"])
    out["cnn_epoch_seconds"] = timed_fit(cnn, 50)
    out["cnn_params"] = int(cnn.count_params())
    cnn.predict(xi[:1024], batch_size=1024, verbose=0)
    t = time.perf_counter()
    cnn.predict(xi, batch_size=1024, verbose=0)
    out["cnn_predict_seconds"] = time.perf_counter() - t

    n = int(len(x) * 0.8)

    def kl(q, p, _):
        return tfp.distributions.kl_divergence(q, p) / n

    bnn = keras.Sequential(
        [keras.layers.Flatten(input_shape=x.shape[1:])]
        + [tfp.layers.DenseFlipout(64, activation="relu", kernel_divergence_fn=kl) for _ in range(3)]
        + [tfp.layers.DenseFlipout(2, activation="softmax", kernel_divergence_fn=kl)])
    bnn.compile(optimizer=keras.optimizers.Adam(1e-4), loss="binary_crossentropy")
    out["bnn_epoch_seconds"] = timed_fit(bnn, 64)
    out["bnn_params"] = int(bnn.count_params())
    forward = tf.function(lambda t: bnn(t, training=False))
    forward(xm[:1024])
    t = time.perf_counter()
    probs = np.stack([np.concatenate([forward(xm[i:i + 1024]).numpy() for i in range(0, len(xm), 1024)])
                      for _ in range(args.mc_samples)])
    out["bnn_mc_seconds"] = time.perf_counter() - t
    assert probs.shape == (args.mc_samples, len(xm), 2)
    print("RESULT " + json.dumps(out))


def run_peer(python: str, data: Path, epochs: int, mc_samples: int) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "peer", "--data", str(data), "--epochs", str(epochs),
           "--mc-samples", str(mc_samples)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"peer failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ----------------------------------------------------------------------------- ours


def matmul_flops(threads: int, n: int = 2048, reps: int = 5) -> float:
    """float32 n x n matrix-product rate (FLOP/s, median of `reps`) with `threads` intra-op threads."""
    from _common import sgemm_flops
    from hits_stamps.hardware import torch_threads

    with torch_threads(threads):
        return sgemm_flops(n, reps, warmup=1)


def ours_round(work: Path, train, x_infer: np.ndarray, x_mc: np.ndarray, h5: Path, h5_large: Path, args,
               first: bool) -> dict:
    import torch

    from hits_stamps.hardware import choose_threads, torch_threads
    from hits_stamps.models.cnn import forward_flops
    from hits_stamps.training.loop import TrainConfig, fit

    r: dict = {}
    models = {}
    for name in ("seed-cnn", "seed-bnn", "rotinv-cnn"):
        if name == "rotinv-cnn" and not first:
            continue  # trained once: only its forward pass is measured
        epochs = args.epochs if name != "rotinv-cnn" else 1
        r[f"{name}_load_before"] = load()
        m = fit(TrainConfig(model=name, epochs=epochs, seed=0), train, work / f"{name}_r", progress=False,
                overwrite=True)
        r[f"{name}_epoch_seconds"] = [row["seconds"] for row in m.history][1:]
        r[f"{name}_compute"] = m.config["compute"]
        models[name] = m

    cnn = models["seed-cnn"]
    cnn.predict_proba(x_infer[:1024])
    r["infer_load_before"] = load()
    t = time.perf_counter()
    cnn.predict_proba(x_infer)
    r["seed-cnn_infer_seconds"] = time.perf_counter() - t

    # forward passes only, as a share of the matmul rate with the same threads (float32)
    threads = min(choose_threads(), torch.get_num_threads())
    r["forward_threads"] = threads
    r["matmul_flops_per_s"] = matmul_flops(threads)
    for name in ("seed-cnn", "rotinv-cnn"):
        if name not in models:
            continue
        mod = models[name].module.eval()
        xin = models[name].inputs(x_infer)  # (N, C, H, W), the model's own preprocessing
        with torch.no_grad(), torch_threads(threads):
            mod(xin[:1024])
            t = time.perf_counter()
            for i in range(0, len(xin), 1024):
                mod(xin[i:i + 1024])
            dt = time.perf_counter() - t
        r[f"{name}_forward_stamps_per_s"] = len(xin) / dt
        r[f"{name}_forward_flops_per_stamp"] = forward_flops(mod, 4, (21, 21))

    # in memory with the onnxruntime backend (what `predict --backend auto` runs on a large file)
    from hits_stamps.serve import PredictConfig
    from hits_stamps.serve.backends import OnnxBackend, predict_chunk

    t = time.perf_counter()
    ort = OnnxBackend(cnn, None, threads=threads)
    r["onnx_export_seconds"] = time.perf_counter() - t
    bs = PredictConfig().batch_size
    predict_chunk(cnn, ort, x_infer[:1024], 0, bs)
    r["infer_onnx_load_before"] = load()
    t = time.perf_counter()
    p_ort, _ = predict_chunk(cnn, ort, x_infer, 0, bs)
    r["seed-cnn_infer_onnx_seconds"] = time.perf_counter() - t
    r["onnx_max_abs_diff_vs_torch"] = float(np.abs(p_ort - cnn.predict_proba(x_infer)).max())

    # end to end: the CLI in a child process, from start to exit, with its default options
    for tag, path in (("", h5), ("_large", h5_large)):
        csv = work / "pred.csv"
        r[f"predict_cli{tag}_load_before"] = load()
        t = time.perf_counter()
        cli = "import sys; from hits_stamps.cli import run_main; sys.argv[0] = 'hits-stamps'; run_main()"
        proc = subprocess.run([sys.executable, "-c", cli, "predict", str(work / "seed-cnn_r"), "--data", str(path),
                               "--out", str(csv), "--overwrite", "--no-progress"],
                              capture_output=True, text=True, check=False,
                              env={**os.environ, "PYTHONPATH": str(HERE.parent / "src")})
        r[f"predict_cli{tag}_seconds"] = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"hits-stamps predict failed: {proc.stderr[-2000:]}")
        said = [ln for ln in proc.stdout.splitlines() if "backend" in ln]
        r[f"predict_cli{tag}_backend"] = said[-1].split("backend ")[1].split(",")[0] if said else None
        if not tag:
            p_cli = np.loadtxt(csv, delimiter=",", skiprows=1, usecols=1, dtype=np.float64)
            r["predict_cli_max_abs_diff_vs_in_memory"] = float(np.abs(p_cli - cnn.predict_proba(x_infer)[:, 1]).max())

    bnn = models["seed-bnn"]
    bnn.predict_proba(x_mc[:256], mc_samples=2)
    r["mc_load_before"] = load()
    t = time.perf_counter()
    bnn.predict_proba(x_mc, mc_samples=args.mc_samples, batch_size=1024)
    r["seed-bnn_mc_seconds"] = time.perf_counter() - t
    r["load_after"] = load()
    return r


def int8_check(model_dir: Path, n: int) -> dict:
    """onnxruntime float32 vs int8 (dynamic quantization): stamps/s and accuracy on held-out stamps."""
    from hits_stamps.datasets import make_synthetic_stamps
    from hits_stamps.hardware import choose_threads
    from hits_stamps.serve import export
    from hits_stamps.training.modeldir import load_model

    model = load_model(model_dir)
    test = make_synthetic_stamps(n, seed=7)
    x, y = np.ascontiguousarray(test.images, dtype=np.float32), test.labels
    f32 = export.export_onnx_bytes(model)
    out: dict = {"n_test": n, "load_before": load()}
    probs = {}
    threads = choose_threads()
    for name, data in (("float32", f32), ("int8", export.quantize_int8(f32))):
        sess = export.make_session(data, threads=threads)
        sess.run([export.ONNX_OUTPUT], {export.ONNX_INPUT: x[:64]})
        t = time.perf_counter()
        p = np.concatenate([sess.run([export.ONNX_OUTPUT], {export.ONNX_INPUT: x[i:i + 64]})[0]
                            for i in range(0, len(x), 64)])
        out[f"{name}_stamps_per_s"] = len(x) / (time.perf_counter() - t)
        out[f"{name}_accuracy"] = float(((p[:, 1] >= 0.5) == y).mean())
        probs[name] = p
    out["accuracy_change"] = out["int8_accuracy"] - out["float32_accuracy"]
    out["max_abs_prob_diff"] = float(np.abs(probs["int8"] - probs["float32"]).max())
    out["threads"] = threads
    out["load_after"] = load()
    return out


def machine() -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from _machine import cpu_model
    from hits_stamps.hardware import describe_cpu, usable_cores

    return {"cpu": cpu_model(), "cores": usable_cores(), "python": platform.python_version(),
            "torch": torch.__version__, **describe_cpu()}


def med(rounds: list[dict], key: str) -> float:
    vals = []
    for r in rounds:
        v = r.get(key)
        if v is None:
            continue
        vals += v if isinstance(v, list) else [v]
    return statistics.median(vals) if vals else float("nan")


def summarize(ours: list[dict], theirs: list[dict], n_infer: int, n_mc: int, mc: int, n_e2e: int) -> dict:
    s: dict = {}
    s["seed-cnn_epoch_s"] = med(ours, "seed-cnn_epoch_seconds")
    s["seed-bnn_epoch_s"] = med(ours, "seed-bnn_epoch_seconds")
    s["seed-cnn_infer_stamps_per_s"] = n_infer / med(ours, "seed-cnn_infer_seconds")
    s["seed-cnn_infer_onnx_stamps_per_s"] = n_infer / med(ours, "seed-cnn_infer_onnx_seconds")
    s["onnx_export_s"] = med(ours, "onnx_export_seconds")
    s["predict_cli_stamps_per_s"] = n_infer / med(ours, "predict_cli_seconds")
    s["predict_cli_large_stamps_per_s"] = n_e2e / med(ours, "predict_cli_large_seconds")
    s["predict_cli_backend"] = ours[0].get("predict_cli_backend")
    s["predict_cli_large_backend"] = ours[0].get("predict_cli_large_backend")
    s["seed-bnn_mc_us_per_stamp_sample"] = med(ours, "seed-bnn_mc_seconds") / (n_mc * mc) * 1e6
    g = med(ours, "matmul_flops_per_s")
    s["matmul_gflops"] = g / 1e9
    for name in ("seed-cnn", "rotinv-cnn"):
        rate = med(ours, f"{name}_forward_stamps_per_s")
        s[f"{name}_forward_stamps_per_s"] = rate
        s[f"{name}_fraction_of_matmul"] = rate * ours[0][f"{name}_forward_flops_per_stamp"] / g
    if theirs:
        s["peer_cnn_epoch_s"] = med(theirs, "cnn_epoch_seconds")
        s["peer_bnn_epoch_s"] = med(theirs, "bnn_epoch_seconds")
        s["peer_cnn_predict_stamps_per_s"] = n_infer / med(theirs, "cnn_predict_seconds")
        s["peer_bnn_mc_us_per_stamp_sample"] = med(theirs, "bnn_mc_seconds") / (n_mc * mc) * 1e6
        s["ratio_cnn_epoch_ours_over_peer"] = s["seed-cnn_epoch_s"] / s["peer_cnn_epoch_s"]
        s["ratio_bnn_epoch_ours_over_peer"] = s["seed-bnn_epoch_s"] / s["peer_bnn_epoch_s"]
        peer_rate = s["peer_cnn_predict_stamps_per_s"]
        s["ratio_in_memory_ours_over_peer_predict"] = s["seed-cnn_infer_stamps_per_s"] / peer_rate
        s["ratio_in_memory_onnx_ours_over_peer_predict"] = s["seed-cnn_infer_onnx_stamps_per_s"] / peer_rate
        s["ratio_end_to_end_ours_over_peer_predict"] = s["predict_cli_stamps_per_s"] / peer_rate
        s["ratio_end_to_end_large_ours_over_peer_predict"] = s["predict_cli_large_stamps_per_s"] / peer_rate
        s["ratio_mc_ours_over_peer"] = s["seed-bnn_mc_us_per_stamp_sample"] / s["peer_bnn_mc_us_per_stamp_sample"]
        s["goals"] = {
            "seed-cnn epoch <= 0.5x tf_keras": s["ratio_cnn_epoch_ours_over_peer"] <= 0.5,
            "seed-bnn epoch <= 0.5x TFP": s["ratio_bnn_epoch_ours_over_peer"] <= 0.5,
            "predict end to end >= 2x tf_keras model.predict (--n-infer file)":
                s["ratio_end_to_end_ours_over_peer_predict"] >= 2,
            "predict end to end >= 2x tf_keras model.predict (--n-e2e file)":
                s["ratio_end_to_end_large_ours_over_peer_predict"] >= 2,
            "in memory >= 4x tf_keras model.predict (predict_proba, torch)":
                s["ratio_in_memory_ours_over_peer_predict"] >= 4,
            "in memory >= 4x tf_keras model.predict (onnxruntime backend)":
                s["ratio_in_memory_onnx_ours_over_peer_predict"] >= 4,
        }
    return s


def main_bench(args: argparse.Namespace) -> None:
    from hits_stamps.datasets import make_synthetic_stamps
    from hits_stamps.io import write_stamps
    from hits_stamps.preprocess import scale

    if args.smoke:
        args.n_train, args.n_infer, args.n_mc, args.mc_samples, args.n_e2e = 256, 1024, 256, 4, 2048
        args.repeats, args.epochs, args.peer_python = 1, 2, None
    t_start = time.perf_counter()
    train = make_synthetic_stamps(args.n_train, seed=0)
    x_infer = make_synthetic_stamps(args.n_infer, seed=1).images
    x_mc = x_infer[: args.n_mc]
    result: dict = {"command": " ".join(sys.argv), "machine": machine(), "n_train": args.n_train,
                    "n_infer": args.n_infer, "n_mc": args.n_mc, "mc_samples": args.mc_samples,
                    "repeats": args.repeats, "epochs_per_round": args.epochs, "smoke": args.smoke}
    ours: list[dict] = []
    theirs: list[dict] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        h5 = write_stamps(make_synthetic_stamps(args.n_infer, seed=1), work / "infer.h5")
        h5_large = write_stamps(make_synthetic_stamps(args.n_e2e, seed=3), work / "large.h5")
        data = work / "peer.npz"
        np.savez(data, x=scale(train.images, "minmax"), y=train.labels, x_infer=scale(x_infer, "minmax"),
                 x_mc=scale(x_mc, "minmax"))
        for rep in range(args.repeats):
            ours.append(ours_round(work, train, x_infer, x_mc, h5, h5_large, args, first=rep == 0))
            if args.peer_python:
                before = load()
                r = run_peer(args.peer_python, data, args.epochs, args.mc_samples)
                r["load_before"], r["load_after"] = before, load()
                theirs.append(r)
            print(f"round {rep + 1}/{args.repeats} done (load {load()})", flush=True)
            result.update({"ours": ours, "peer": theirs})
            out.write_text(json.dumps(result, indent=1) + "\n")
        if not args.smoke:
            result["int8"] = int8_check(work / "seed-cnn_r", args.n_infer)
    result["summary"] = summarize(ours, theirs, args.n_infer, args.n_mc, args.mc_samples, args.n_e2e)
    result["seconds"] = time.perf_counter() - t_start
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd")
    pp = sub.add_parser("peer", help="(internal) the tf_keras / TFP side, run in the peer venv")
    pp.add_argument("--data", required=True)
    pp.add_argument("--epochs", type=int, default=3)
    pp.add_argument("--mc-samples", type=int, default=30)
    p.add_argument("--out", default="benchmarks/results/speed.json")
    p.add_argument("--peer-python", default=None, help="python of the venv of benchmarks/peer_requirements.txt")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3, help="epochs per round; the first is dropped (warm-up)")
    p.add_argument("--n-train", type=int, default=4026)
    p.add_argument("--n-infer", type=int, default=20000)
    p.add_argument("--n-e2e", type=int, default=100000, help="stamps of the larger end-to-end file")
    p.add_argument("--n-mc", type=int, default=2000)
    p.add_argument("--mc-samples", type=int, default=30)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one round, no peer: < 60 s")
    args = p.parse_args()
    if args.cmd == "peer":
        peer(args)
    else:
        main_bench(args)


if __name__ == "__main__":
    main()
