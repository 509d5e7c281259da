"""Classifier benchmarks: rotinv-cnn ablation, seed-cnn vs deephits vs rotinv-cnn.

Subcommands (run heavy ones with `nice`; every result is a JSON file, `table` prints markdown;
`data --smoke` then `compare --smoke` run the whole path on tiny files in about a minute):

    data      simulate train/test stamps and build the real-pixel HiTS 2015 set
              python benchmarks/bench_classifiers.py data --out runs/clfbench --n-train 40000 --n-test 20000
    ablation  rotinv-cnn variants trained on a training subset, scored on a held-out validation split
              python benchmarks/bench_classifiers.py ablation --data runs/clfbench --out runs/clfbench/ablation.json
    compare   the three classifiers trained on simulation, tested on simulated and real-pixel stamps, and
              trained/tested on the real-pixel set split by object
              python benchmarks/bench_classifiers.py compare --data runs/clfbench --work runs/clfbench/work \\
                  --out runs/clfbench/compare.json
    figures   ROC curves of the three models and selected evaluation figures for the docs
              python benchmarks/bench_classifiers.py figures --work runs/clfbench/work --out docs/figures
    table     markdown tables from the JSON files
              python benchmarks/bench_classifiers.py table runs/clfbench/*.json

Speed against tf_keras and TensorFlow Probability is measured by `benchmarks/bench_speed.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

from _common import add_smoke, machine, wilson_interval, write_json

# PyTorch's OpenMP threads spin-wait by default; on a shared, oversubscribed machine a spinning
# thread starves its partner and a 2-thread training step gets >10x slower. Passive waiting (set
# before torch loads OpenMP) removes that; TensorFlow's own thread pool does not need it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hits_stamps.evaluation.metrics import classification_metrics  # noqa: E402
from hits_stamps.io import read_stamps, write_stamps  # noqa: E402
from hits_stamps.stamps import StampSet  # noqa: E402
from hits_stamps.training import TrainConfig, fit  # noqa: E402

warnings.filterwarnings("ignore", message=".*non-finite pixels.*")
KEYS = ("accuracy", "f1", "roc_auc", "fnr_at_fpr_1pct", "fpr", "fnr")


def _machine() -> dict:
    return machine(omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))


def _write(path: Path, obj: dict) -> None:
    write_json(path, obj)


# ----------------------------------------------------------------------------- data
def cmd_data(args) -> None:
    from hits_stamps.simulate import simulate_stamps

    if args.smoke:  # tiny files; the real-pixel set from the packaged sample
        from hits_stamps.realdata import packaged_sample_path

        args.n_train, args.n_test, args.sequences = 400, 200, str(packaged_sample_path())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_stamps(simulate_stamps(args.n_train, seed=args.seed), out / "sim_train.npz", overwrite=True)
    write_stamps(simulate_stamps(args.n_test, seed=args.test_seed), out / "sim_test.npz", overwrite=True)
    seq = Path(args.sequences)
    if seq.exists():
        from hits_stamps.realdata import build_real

        write_stamps(build_real(seq), out / "real.npz", overwrite=True)
    else:
        print(f"{seq} not found: no real-pixel set")


# ----------------------------------------------------------------------------- training helpers
def train_and_score(model: str, train: StampSet, val: StampSet, tests: dict[str, StampSet], out_dir: Path,
                    epochs: int | None, seed: int, model_kwargs: dict | None = None,
                    recipe: dict | None = None, eval_dir: Path | None = None) -> dict:
    """Fit with the shared loop (validation set `val`), then score every test set.

    With `eval_dir`, each test set goes through `evaluate_model` (metrics.json, predictions and
    figures in eval_dir/<test name>); otherwise only `classification_metrics` is computed.
    """
    cfg = TrainConfig(model=model, epochs=epochs, seed=seed, model_kwargs=model_kwargs or {},
                      recipe_overrides=recipe or {})
    # an interrupted run (checkpoint, no weights yet) continues; its time is the sum of its epochs
    resume = (out_dir / "checkpoint.pt").exists() and not (out_dir / "model.safetensors").exists()
    t0 = time.perf_counter()
    trained = fit(cfg, train, out_dir, val=val, overwrite=not resume, resume=resume, progress=False)
    train_s = sum(h.get("seconds", 0.0) for h in trained.history) or time.perf_counter() - t0
    res = {"model": model, "model_kwargs": model_kwargs or {}, "recipe": recipe or {}, "seed": seed,
           "epochs": len(trained.history), "train_seconds": train_s, "n_train": len(train), "n_val": len(val),
           "n_parameters": trained.n_parameters, "model_dir": str(out_dir), "history": trained.history,
           "tests": {}}
    for name, stamps in tests.items():
        if eval_dir is not None:
            from hits_stamps.evaluation.evaluate import evaluate_model

            m = evaluate_model(trained, stamps, eval_dir / name, progress=False)
        else:
            p = trained.predict_proba(stamps)[:, 1]
            m = classification_metrics(stamps.labels, p, snr=stamps.snr, kind=stamps.kind)
        keep = (*KEYS, "n", "by_snr", "by_kind", "threshold_at_fpr_1pct", "ece", "nll", "accuracy_at_10pct_referral")
        res["tests"][name] = {k: m.get(k) for k in keep}
    short = ", ".join(f"{n}: acc {t['accuracy']:.4f} auc {t['roc_auc']:.4f} fnr@1% {t['fnr_at_fpr_1pct']:.4f}"
                      for n, t in res["tests"].items())
    print(f"{model} {model_kwargs or ''} {recipe or ''} seed {seed}: {train_s:.0f} s; {short}", flush=True)
    return res


def _labelled(s: StampSet) -> StampSet:
    return s[s.labels >= 0]


# ----------------------------------------------------------------------------- ablation
BASE = {"group": "c4", "batch_norm": False, "dropout": 0.3, "widths": [16, 32, 64], "hidden": 64}
BASE_RECIPE = {"optimizer": "adam", "lr": 1e-3, "batch_size": 128, "scaling": "minmax", "lr_schedule": "constant"}
ABLATION = [
    ("cyclic average pooling, C4 (Reyes et al. 2018 style)", {}, {}),
    ("+ batch norm", {"batch_norm": True}, {}),
    ("+ batch norm + D4 (flips)", {"batch_norm": True, "group": "d4"}, {}),
    ("+ batch norm + C4 + flip augmentation", {"batch_norm": True}, {"augment": "dihedral"}),
    ("+ batch norm + D4 + robust scaling", {"batch_norm": True, "group": "d4"}, {"scaling": "robust"}),
    ("+ batch norm + D4 + entropy 0.1", {"batch_norm": True, "group": "d4", "entropy_weight": 0.1}, {}),
    ("+ batch norm + D4 + AdamW 3e-3 cosine", {"batch_norm": True, "group": "d4"},
     {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "lr_schedule": "cosine"}),
    ("+ batch norm + D4 + widths 32/64/64", {"batch_norm": True, "group": "d4", "widths": [32, 64, 64]}, {}),
    ("+ batch norm + D4 + raw pixels, in-network robust asinh", {"batch_norm": True, "group": "d4",
                                                                 "input_norm": "robust_asinh"},
     {"scaling": "none", "nan_policy": "median"}),
    ("+ batch norm + C4 + raw pixels, in-network robust asinh", {"batch_norm": True, "input_norm": "robust_asinh"},
     {"scaling": "none", "nan_policy": "median"}),
    ("+ batch norm + D4 + AdamW 3e-3 cosine + entropy 0.1", {"batch_norm": True, "group": "d4", "entropy_weight": 0.1},
     {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "lr_schedule": "cosine"}),
    ("+ batch norm + D4 + AdamW 3e-3 cosine + raw pixels, in-network min-max & robust asinh",
     {"batch_norm": True, "group": "d4", "input_norm": "minmax+robust_asinh"},
     {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "lr_schedule": "cosine", "scaling": "none",
      "nan_policy": "median"}),
    ("seed-cnn (its recipe, same epochs), for reference", {}, {}, "seed-cnn"),
    ("+ batch norm + C4 + AdamW 3e-3 cosine", {"batch_norm": True},
     {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "lr_schedule": "cosine"}),
    ("+ batch norm + D4 + AdamW 3e-3 cosine + dropout 0.5", {"batch_norm": True, "group": "d4", "dropout": 0.5},
     {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "lr_schedule": "cosine"}),
]


def real_split(real: StampSet) -> tuple[StampSet, StampSet]:
    """The real-pixel set split by object (seed 0): 70% of objects for training / validation, 30% test.

    The same split everywhere: `ablation --real-val` selects on the 70% part only, `compare` reports
    on the 30% part (and on the whole set)."""
    r_train, r_test = real.split((0.7, 0.3), seed=0, groups=object_groups(real))
    assert not set(object_groups(r_test)) & set(object_groups(r_train))
    return r_train, r_test


def cmd_ablation(args) -> None:
    data = Path(args.data)
    full = _labelled(read_stamps(data / "sim_train.npz"))
    sub = full[np.random.default_rng(0).permutation(len(full))[: args.n_train + args.n_val]]
    train, val = sub.split((args.n_train, args.n_val), seed=0)
    tests = {"val": val}
    if args.real_val and (data / "real.npz").exists():
        tests["real_val"] = real_split(_labelled(read_stamps(data / "real.npz")))[0]
    only = set(args.only.split(",")) if args.only else None
    rows = json.loads(Path(args.out).read_text())["rows"] if args.append and Path(args.out).exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, kw, rec, *model) in enumerate(ABLATION):
            if only is not None and str(i) not in only:
                continue
            name = model[0] if model else "rotinv-cnn"
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                res = train_and_score(name, train, val, tests, Path(tmp) / f"m{i}_{seed}", args.epochs, seed,
                                      {**BASE, **kw} if name == "rotinv-cnn" else kw,
                                      {**BASE_RECIPE, **rec} if name == "rotinv-cnn" else rec)
                res["label"] = label
                res["variant"] = i
                rows.append(res)
                _write(Path(args.out), {"machine": _machine(), "n_train": len(train), "n_val": len(val),
                                        "epochs": args.epochs, "rows": rows})


# ----------------------------------------------------------------------------- compare
def object_groups(stamps: StampSet) -> np.ndarray:
    """One group per astronomical object: the `object_index` column, else the id before ':'."""
    if "object_index" in stamps.columns:
        return np.asarray(stamps.columns["object_index"])
    return np.array([i.split(":")[0] for i in stamps.ids])


def _score_missing(rows: list[dict], setting: str, name: str, seed: int, tests: dict[str, StampSet],
                   eval_dir: Path) -> None:
    """Evaluate an already trained model (its row in `rows`) on test sets it has not seen yet."""
    from hits_stamps.evaluation.evaluate import evaluate_model
    from hits_stamps.training import load_model

    row = next(r for r in rows if (r["setting"], r["model"], r["seed"]) == (setting, name, seed))
    for test, stamps in tests.items():
        if test not in row["tests"]:
            m = evaluate_model(load_model(row["model_dir"]), stamps, eval_dir / test, progress=False)
            keep = (*KEYS, "n", "by_snr", "by_kind", "threshold_at_fpr_1pct", "ece", "nll",
                    "accuracy_at_10pct_referral")
            row["tests"][test] = {k: m.get(k) for k in keep}
            print(f"{name} seed {seed} ({setting}) on {test}: acc {m['accuracy']:.4f}", flush=True)


def cmd_compare(args) -> None:
    """Models trained on simulation (tested on simulated and real-pixel stamps), and trained on the
    real-pixel set split by object (70% of objects train+validation, 30% test)."""
    data, work = Path(args.data), Path(args.work)
    sim_train = _labelled(read_stamps(data / "sim_train.npz"))
    train, val = sim_train.split((0.8, 0.2), seed=0)
    tests = {"sim_test": _labelled(read_stamps(data / "sim_test.npz"))}
    real = _labelled(read_stamps(data / "real.npz")) if (data / "real.npz").exists() else None
    if real is not None:
        tests["real"] = real
        r_train, r_test = real_split(real)
        tests["real_test_objects"] = r_test  # the objects the real-trained models are tested on
    models = args.models.split(",")
    epochs = json.loads(args.epochs) if args.epochs else {}
    if args.smoke:  # one epoch of each model
        epochs = dict.fromkeys(models, 1)
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if args.append and out.exists() else []
    done = {(r["setting"], r["model"], r["seed"]) for r in rows}
    settings = args.settings.split(",")
    runs = []
    if "sim" in settings:
        runs.append(("trained on simulation", "sim", train, val, tests))
    if "real" in settings and real is not None:
        r_tr, r_val = r_train.split((0.8, 0.2), seed=0, groups=object_groups(r_train))
        runs.append(("real-pixel set split by object (70/30)", "real", r_tr, r_val, {"real_by_object": r_test}))
    for setting, tag, tr, va, te in runs:
        for name in models:
            for seed in range(args.seeds):
                if (setting, name, seed) in done:
                    _score_missing(rows, setting, name, seed, te, work / "eval" / f"{tag}_{name}_s{seed}")
                    _write(out, {"machine": _machine(), "rows": rows})
                    continue
                res = train_and_score(name, tr, va, te, work / "models" / f"{tag}_{name}_s{seed}", epochs.get(name),
                                      seed, eval_dir=work / "eval" / f"{tag}_{name}_s{seed}")
                res["setting"] = setting
                rows.append(res)
                _write(out, {"machine": _machine(), "rows": rows})


# ----------------------------------------------------------------------------- figures
def _read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import csv

    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return np.array([int(r["label"]) for r in rows]), np.array([float(r["p_real"]) for r in rows])


def cmd_figures(args) -> None:
    """ROC curves of the three models per test set, and copies of selected evaluation figures."""
    import shutil

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = args.models.split(",")
    panels = [("sim", "sim_test", "simulated test set (trained on simulation)"),
              ("sim", "real", "real-pixel HiTS 2015 set (trained on simulation)"),
              ("real", "real_by_object", "real-pixel set, split by object")]
    fig = Figure(figsize=(13, 4.2))
    axes = fig.subplots(1, 3)
    for ax, (tag, test, title) in zip(axes, panels, strict=True):
        for name in models:
            pred = work / "eval" / f"{tag}_{name}_s0" / test / "predictions.csv"
            if not pred.exists():
                continue
            y, p = _read_predictions(pred)
            fpr, tpr, _ = roc_curve(y, p)
            floor = 0.5 / max(int(np.sum(y == 0)), 1)
            ax.plot(np.maximum(fpr, floor), tpr, label=name)
        ax.axvline(0.01, color="grey", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="lower right")
    FigureCanvasAgg(fig)
    fig.savefig(out / "clf_roc.png", dpi=100, bbox_inches="tight")
    print(f"wrote {out / 'clf_roc.png'}")
    for src, dst in ((work / "eval" / "sim_seed-cnn_s0" / "sim_test" / "training_curves.png",
                      out / "clf_seed_cnn_training_curves.png"),
                     (work / "eval" / "sim_rotinv-cnn_s0" / "sim_test" / "training_curves.png",
                      out / "clf_rotinv_training_curves.png"),
                     (work / "eval" / "sim_rotinv-cnn_s0" / "sim_test" / "misclassified.png",
                      out / "clf_rotinv_misclassified.png")):
        if src.exists():
            shutil.copyfile(src, dst)
            print(f"wrote {dst}")


# ----------------------------------------------------------------------------- tables
def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def cmd_table(args) -> None:
    for path in args.files:
        res = json.loads(Path(path).read_text())
        print(f"\n### {Path(path).name}\n")
        if "rows" in res and res["rows"] and "variant" in res["rows"][0]:
            by: dict[int, list] = {}
            for r in res["rows"]:
                by.setdefault(r["variant"], []).append(r)
            print("| variant | seeds | val accuracy | val AUC | val FNR at FPR=1% | val loss (last) | train s |")
            print("|---|---|---|---|---|---|---|")
            for _, rs in sorted(by.items()):
                t = [r["tests"]["val"] for r in rs]

                def mean(k, t=t):
                    return float(np.mean([x[k] for x in t]))
                print(f"| {rs[0]['label']} | {len(rs)} | {mean('accuracy'):.4f} | {mean('roc_auc'):.4f} | "
                      f"{mean('fnr_at_fpr_1pct'):.4f} | {np.mean([r['history'][-1]['val_loss'] for r in rs]):.4f} | "
                      f"{np.mean([r['train_seconds'] for r in rs]):.0f} |")
        elif "rows" in res:
            # Wilson intervals treat stamps as independent: true for simulated stamps, too narrow for
            # real-pixel sets where one object has several epochs
            print("| setting | test set | model | seed | epochs | stamps | accuracy | 95% interval (Wilson) | F1 | "
                  "ROC AUC | FNR at FPR=1% | train s |")
            print("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for r in res["rows"]:
                for name, t in r["tests"].items():
                    lo, hi = wilson_interval(t["accuracy"] * t["n"], t["n"])
                    ci = f"[{lo:.4f}, {hi:.4f}]" if name.startswith("sim") else "n/a (grouped by object)"
                    print(f"| {r['setting']} | {name} | {r['model']} | {r['seed']} | {r['epochs']} | {t['n']:,} | "
                          f"{_fmt(t['accuracy'])} | {ci} | {_fmt(t['f1'])} | {_fmt(t['roc_auc'])} | "
                          f"{_fmt(t['fnr_at_fpr_1pct'])} | {r['train_seconds']:.0f} |")
        else:
            print(json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)}, indent=1))
            for k in ("ours", "tf_keras"):
                if k in res:
                    print(k, json.dumps({a: b for a, b in res[k].items() if not isinstance(b, list)}, indent=1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("data")
    p.add_argument("--out", required=True)
    p.add_argument("--n-train", type=int, default=40000)
    p.add_argument("--n-test", type=int, default=20000)
    p.add_argument("--seed", type=int, default=101, help="simulation seed of the training file")
    p.add_argument("--test-seed", type=int, default=202, help="simulation seed of the test file")
    p.add_argument("--sequences", default=str(Path(__file__).resolve().parents[2] / "shared/data/hits2015/"
                                              "hits2015_sequences.npz"))
    add_smoke(p)
    p = sub.add_parser("ablation")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n-train", type=int, default=16000)
    p.add_argument("--n-val", type=int, default=8000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--only", default="", help="comma-separated variant indices")
    p.add_argument("--append", action="store_true", help="add rows to an existing --out file")
    p.add_argument("--real-val", action="store_true",
                   help="also score the 70%% training objects of the real-pixel set (never the test objects)")
    p = sub.add_parser("compare")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--models", default="seed-cnn,deephits,rotinv-cnn")
    p.add_argument("--epochs", default="", help='JSON, e.g. {"deephits": 5}; default: each recipe')
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--settings", default="sim,real", help="sim (train on simulation), real (real set by object)")
    p.add_argument("--work", required=True, help="folder for the model directories and evaluation outputs")
    p.add_argument("--append", action="store_true", help="keep rows of an existing --out; skip runs already in it")
    add_smoke(p)
    p = sub.add_parser("figures")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--models", default="seed-cnn,deephits,rotinv-cnn")
    p = sub.add_parser("table")
    p.add_argument("files", nargs="+")
    for p in sub.choices.values():
        p.add_argument("--threads", type=int, default=0,
                       help="torch intra-op threads (0: torch's default); 1 is faster on a loaded shared machine")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    {"data": cmd_data, "ablation": cmd_ablation, "compare": cmd_compare, "figures": cmd_figures,
     "table": cmd_table}[args.cmd](args)


if __name__ == "__main__":
    main()
