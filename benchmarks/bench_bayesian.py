"""Bayesian networks: accuracy and calibration on test sets.

    # quality: train seed-bnn, bayes-cnn, rotinv-cnn on TRAIN; score each TEST file
    python benchmarks/bench_bayesian.py quality --train sim_train.npz --test sim_test.npz \
        --test real_test.npz --out-dir runs/bench_bayes --epochs seed-bnn=60 --epochs bayes-cnn=10

Speed against the seed's stack (tf_keras + TensorFlow Probability) is measured by
`benchmarks/bench_speed.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
    {"quality": quality}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
