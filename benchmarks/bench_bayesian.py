"""Bayesian networks: speed against the seed's stack, and accuracy/calibration on test sets.

    # speed: seed-bnn, ours (PyTorch) vs tf_keras + TensorFlow Probability DenseFlipout, same run
    python benchmarks/bench_bayesian.py speed --tf-python PEER_VENV/bin/python --out speed.json

    # quality: train seed-bnn, bayes-cnn, rotinv-cnn on TRAIN; score each TEST file
    python benchmarks/bench_bayesian.py quality --train sim_train.npz --test sim_test.npz \
        --test real_test.npz --out-dir runs/bench_bayes --epochs seed-bnn=60 --epochs bayes-cnn=10

The speed benchmark times (1) one training epoch of the seed's Flipout network on 4,026 stamps of
21x21x4 with batch 64 (Adam, loss = cross-entropy + KL / N) and (2) Monte-Carlo prediction of
100 samples x 10,000 stamps, for our layers and for TFP's DenseFlipout in a separate interpreter
(`--tf-python`, a venv with tensorflow, tf-keras and tensorflow-probability), in alternating
rounds, and reports medians and ratios. The `tf-worker` subcommand is that interpreter's side;
it imports only numpy and TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import add_smoke, machine, write_json

# On a machine whose cores are shared with other jobs, OpenMP threads that spin while waiting
# slow PyTorch's multi-threaded CPU kernels down by 10-50x; passive waiting avoids that. It must be
# set before torch starts its thread pool (TF uses its own pool and is not affected).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

N_TRAIN = 4026
N_PREDICT = 10_000
MC_SAMPLES = 100
BATCH = 64
PREDICT_BATCH = 1024


# ----------------------------------------------------------------------------- the TF side


def tf_worker(args: argparse.Namespace) -> None:
    """Time the seed network built from TFP DenseFlipout layers (run inside the TF venv)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    import tensorflow_probability as tfp
    import tf_keras as keras

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.random.set_seed(0)
    data = np.load(args.data)
    x_train, y_train, x_pred = data["x_train"], data["y_train"], data["x_pred"]  # (N, 21, 21, 4) channels last
    n = len(x_train)

    def kl(q, p, _):
        return tfp.distributions.kl_divergence(q, p) / n

    model = keras.Sequential(
        [keras.layers.Flatten(input_shape=x_train.shape[1:])]
        + [tfp.layers.DenseFlipout(64, activation="relu", kernel_divergence_fn=kl) for _ in range(3)]
        + [tfp.layers.DenseFlipout(2, activation="softmax", kernel_divergence_fn=kl)]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="binary_crossentropy")
    n_params = int(model.count_params())
    y_onehot = np.eye(2, dtype=np.float32)[y_train]
    epoch_times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_times.append(time.perf_counter() - self.t0)

    model.fit(x_train, y_onehot, batch_size=BATCH, epochs=args.epochs + 1, verbose=0, callbacks=[Timer()],
              shuffle=True)

    @tf.function
    def forward(x):
        return model(x, training=False)

    def mc_compiled() -> float:
        t0 = time.perf_counter()
        out = []
        for _ in range(MC_SAMPLES):
            out.append(np.concatenate([forward(x_pred[i : i + PREDICT_BATCH]).numpy()
                                       for i in range(0, len(x_pred), PREDICT_BATCH)]))
        probs = np.stack(out)
        assert probs.shape == (MC_SAMPLES, len(x_pred), 2)
        return time.perf_counter() - t0

    def mc_predict() -> float:  # the seed's way: model.predict once per sample
        t0 = time.perf_counter()
        probs = np.stack([model.predict(x_pred, batch_size=PREDICT_BATCH, verbose=0) for _ in range(MC_SAMPLES)])
        assert probs.shape == (MC_SAMPLES, len(x_pred), 2)
        return time.perf_counter() - t0

    forward(x_pred[:PREDICT_BATCH])  # trace once
    model.predict(x_pred[:PREDICT_BATCH], verbose=0)
    result = {
        "epoch_seconds": epoch_times[1:],  # the first epoch includes tracing
        "mc_seconds_compiled": mc_compiled(),
        "mc_seconds_predict": mc_predict(),
        "n_parameters": n_params,
        "versions": {"tensorflow": tf.__version__, "tf_keras": keras.__version__,
                     "tensorflow_probability": tfp.__version__},
    }
    print("RESULT " + json.dumps(result))


# ----------------------------------------------------------------------------- our side


def torch_side(x_train: np.ndarray, y_train: np.ndarray, x_pred: np.ndarray, epochs: int, threads: int) -> dict:
    """Same network and protocol with our Flipout layers (one shared training step as in `fit`)."""
    import torch

    from hits_stamps.models.bayesian import SeedBNN, elbo_objective
    from hits_stamps.uncertainty import mc_predict_proba

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    xt = torch.from_numpy(np.ascontiguousarray(x_train.transpose(0, 3, 1, 2)))  # (N, C, H, W)
    yt = torch.from_numpy(y_train.astype(np.int64))
    xp = torch.from_numpy(np.ascontiguousarray(x_pred.transpose(0, 3, 1, 2)))
    model = SeedBNN(in_channels=xt.shape[1], size=tuple(xt.shape[2:]))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-7)
    n = len(xt)
    rng = np.random.default_rng(0)
    epoch_times = []
    for _ in range(epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.from_numpy(rng.permutation(n))
        for start in range(0, n, BATCH):
            idx = order[start : start + BATCH]
            res = elbo_objective(model, xt[idx], yt[idx], n)
            opt.zero_grad(set_to_none=True)
            res.loss.backward()
            opt.step()
        epoch_times.append(time.perf_counter() - t0)
    model.eval()
    t0 = time.perf_counter()
    probs = torch.cat([mc_predict_proba(model, xp[i : i + PREDICT_BATCH], MC_SAMPLES, seed=i)
                       for i in range(0, len(xp), PREDICT_BATCH)], dim=1)
    mc = time.perf_counter() - t0
    assert probs.shape == (MC_SAMPLES, len(xp), 2)
    return {"epoch_seconds": epoch_times[1:], "mc_seconds": mc, "n_parameters": model.count_parameters(),
            "versions": {"torch": torch.__version__}}




def speed(args: argparse.Namespace) -> None:
    from hits_stamps.datasets import make_synthetic_stamps
    from hits_stamps.preprocess import Preprocessor

    pre = Preprocessor()
    train = make_synthetic_stamps(N_TRAIN, seed=0)
    pred = make_synthetic_stamps(N_PREDICT, seed=1)
    x_train = pre.fit(train.images).transform(train.images).transpose(0, 2, 3, 1)  # back to (N, H, W, C)
    x_pred = pre.transform(pred.images).transpose(0, 2, 3, 1)
    x_train, x_pred = np.ascontiguousarray(x_train), np.ascontiguousarray(x_pred)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.npz"
        np.savez(data, x_train=x_train, y_train=train.labels, x_pred=x_pred)
        for r in range(args.rounds):
            ours = torch_side(x_train, train.labels, x_pred, args.epochs, args.threads)
            print(f"round {r + 1}: ours epoch {statistics.median(ours['epoch_seconds']):.3f} s, "
                  f"MC {ours['mc_seconds']:.2f} s", flush=True)
            theirs = None
            if args.tf_python:
                cmd = [args.tf_python, __file__, "tf-worker", "--data", str(data), "--epochs", str(args.epochs),
                       "--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    raise SystemExit(f"TF worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
                theirs = json.loads(line[len("RESULT "):])
                print(f"round {r + 1}: TFP  epoch {statistics.median(theirs['epoch_seconds']):.3f} s, "
                      f"MC {theirs['mc_seconds_compiled']:.2f} s (tf.function) / "
                      f"{theirs['mc_seconds_predict']:.2f} s (model.predict)", flush=True)
            rounds.append({"ours": ours, "tfp": theirs})
    ours_epoch = statistics.median(t for r in rounds for t in r["ours"]["epoch_seconds"])
    ours_mc = statistics.median(r["ours"]["mc_seconds"] for r in rounds)
    summary = {
        "machine": machine(),
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "protocol": {"n_train": N_TRAIN, "batch": BATCH, "epochs_timed_per_round": args.epochs,
                     "rounds": args.rounds, "mc_samples": MC_SAMPLES, "n_predict": N_PREDICT,
                     "predict_batch": PREDICT_BATCH},
        "ours": {"epoch_seconds_median": ours_epoch, "mc_seconds_median": ours_mc,
                 "n_parameters": rounds[0]["ours"]["n_parameters"], "versions": rounds[0]["ours"]["versions"]},
        "rounds": rounds,
    }
    if args.tf_python:
        tf_epoch = statistics.median(t for r in rounds for t in r["tfp"]["epoch_seconds"])
        tf_mc_c = statistics.median(r["tfp"]["mc_seconds_compiled"] for r in rounds)
        tf_mc_p = statistics.median(r["tfp"]["mc_seconds_predict"] for r in rounds)
        summary["tfp"] = {"epoch_seconds_median": tf_epoch, "mc_seconds_compiled_median": tf_mc_c,
                          "mc_seconds_predict_median": tf_mc_p, "n_parameters": rounds[0]["tfp"]["n_parameters"],
                          "versions": rounds[0]["tfp"]["versions"]}
        summary["ratio_ours_over_tfp"] = {
            "epoch": ours_epoch / tf_epoch,
            "mc_vs_best_tf": ours_mc / min(tf_mc_c, tf_mc_p),
        }
    text = json.dumps(summary, indent=2)
    print(json.dumps({k: summary[k] for k in summary if k != "rounds"}, indent=2))
    if args.out:
        Path(args.out).write_text(text + "\n")


# ----------------------------------------------------------------------------- quality


def _parse_epochs(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"--epochs takes MODEL=N; got {item!r}")
        out[name] = int(value)
    return out


def quality(args: argparse.Namespace) -> None:
    import torch

    from hits_stamps.evaluation.calibration import uncertainty_report
    from hits_stamps.io import read_stamps
    from hits_stamps.training import TrainConfig, fit, load_model

    torch.set_num_threads(args.threads)
    if args.smoke:  # toy files, one epoch, 5 Monte-Carlo samples
        from hits_stamps.datasets import make_synthetic_stamps
        from hits_stamps.io import write_stamps

        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        args.train = write_stamps(make_synthetic_stamps(300, seed=0), Path(args.out_dir) / "toy_train.npz",
                                  overwrite=True)
        args.test = [write_stamps(make_synthetic_stamps(200, seed=1), Path(args.out_dir) / "toy_test.npz",
                                  overwrite=True)]
        args.epochs = [f"{m}=1" for m in args.models]
        args.mc_samples = 5
    elif not args.train or not args.test:
        raise SystemExit("quality needs --train and --test (or --smoke)")
    train = read_stamps(args.train)
    if args.n_train and args.n_train < len(train):
        train = train[np.sort(np.random.default_rng(args.seed).permutation(len(train))[: args.n_train])]
    tests = {Path(p).stem: read_stamps(p) for p in args.test}
    epochs = _parse_epochs(args.epochs)
    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    out_dir = Path(args.out_dir)
    results: dict = {"train": {"path": str(args.train), "n": len(train), "balance": train.class_balance(),
                               "val_fraction": 0.2},
                     "tests": {k: {"n": len(v), "balance": v.class_balance()} for k, v in tests.items()},
                     "models": {}}
    for name in args.models:
        mdir = out_dir / name
        t0 = time.perf_counter()
        if (mdir / "model.safetensors").exists() and not args.retrain:
            model = load_model(mdir)
        else:
            cfg = TrainConfig(model=name, seed=args.seed, epochs=epochs.get(name), model_kwargs=kwargs.get(name, {}))
            model = fit(cfg, train, mdir, overwrite=True, progress=False, data_path=args.train)
        train_s = time.perf_counter() - t0
        res = {"epochs": len(model.history), "train_seconds": train_s, "n_parameters": model.n_parameters,
               "model_kwargs": model.config.get("model_kwargs", {}), "tests": {}}
        for tname, test in tests.items():
            t0 = time.perf_counter()
            bayes = model.spec.task == "bayesian-classifier"
            probs = model.predict_proba(test, mc_samples=args.mc_samples if bayes else None)
            acc = float(np.mean((probs[:, 1] >= 0.5).astype(int) == test.labels))
            rep = uncertainty_report(model, test, out_dir / name / f"eval_{tname}", probs=probs,
                                     mc_samples=args.mc_samples if bayes else None)
            keep = ("ece", "nll", "accuracy_at_10pct_referral", "accuracy_at_10pct_referral_mi", "mc_samples",
                    "mc_sample_accuracy", "mean_predictive_std")
            res["tests"][tname] = {"accuracy": acc, **{k: rep[k] for k in keep if k in rep},
                                   "seconds": time.perf_counter() - t0}
            print(f"{name} on {tname}: acc {acc:.4f} ece {rep['ece']:.4f} nll {rep['nll']:.4f} "
                  f"acc@10% {rep['accuracy_at_10pct_referral']:.4f}", flush=True)
        results["models"][name] = res
    results["machine"] = machine()
    results["torch_threads"] = args.threads
    results["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    results["smoke"] = args.smoke
    write_json(out_dir / "quality.json", results)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("speed", help="ours vs TFP DenseFlipout")
    sp.add_argument("--tf-python", default=None, help="python of a venv with tensorflow + tf-keras + TFP")
    sp.add_argument("--epochs", type=int, default=3, help="timed epochs per round (one more is run as warm-up)")
    sp.add_argument("--rounds", type=int, default=3, help="alternating rounds ours / TFP")
    sp.add_argument("--threads", type=int, default=2, help="CPU threads for both frameworks")
    sp.add_argument("--out", default=None, help="write the JSON summary here")
    tw = sub.add_parser("tf-worker", help=argparse.SUPPRESS)
    tw.add_argument("--data", required=True)
    tw.add_argument("--epochs", type=int, default=3)
    tw.add_argument("--threads", type=int, default=2)
    q = sub.add_parser("quality", help="train and score seed-bnn, bayes-cnn, rotinv-cnn")
    q.add_argument("--train", help="labelled training stamp file")
    q.add_argument("--test", action="append", help="labelled test stamp file (repeatable)")
    q.add_argument("--out-dir", required=True)
    q.add_argument("--models", nargs="+", default=["seed-bnn", "bayes-cnn", "rotinv-cnn"])
    q.add_argument("--epochs", action="append", default=[], help="MODEL=N (default: the model's recipe)")
    q.add_argument("--model-kwargs", default=None, help='JSON {"model": {kwarg: value}}')
    q.add_argument("--n-train", type=int, default=None, help="use a random subset of this many training stamps")
    q.add_argument("--mc-samples", type=int, default=100)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--threads", type=int, default=2)
    q.add_argument("--retrain", action="store_true", help="train again even if OUT_DIR/MODEL exists")
    add_smoke(q)
    args = ap.parse_args(argv)
    {"speed": speed, "tf-worker": tf_worker, "quality": quality}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
