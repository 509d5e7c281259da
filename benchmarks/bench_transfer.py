"""Transfer to real pixels: which training mixture holds on real HiTS 2015 objects it never saw.

Every recipe trains the same classifier (default rotinv-cnn with its recipe) on a different mixture
of simulated stamps, injections into real training objects (`hits_stamps.inject`) and the training
objects' own real candidates, then scores it on the validation objects (real supernovae + stars,
and variable stars labelled by Kron photometry). The recipe is chosen on validation only (largest
worst-class recall at the validation-chosen threshold, then ROC AUC); the test objects are scored
once, for every recipe, with 95% intervals from a bootstrap over objects. `real_test_varied` is
the same test objects differenced with the varied pipeline (another seed): a stand-in for stamps
made by another differencing pipeline.

    python benchmarks/bench_transfer.py --out benchmarks/results/transfer.json --threads 1 \
        --recipes sim+inj+real+var@joint,sim+inj+real@joint,sim+inj+real+var@minmax,sim+inj+real@minmax,\
sim@minmax,inj+real@joint
    python benchmarks/bench_transfer.py --smoke --out /tmp/transfer_smoke.json   # seconds, packaged sample
    python benchmarks/bench_transfer.py --table benchmarks/results/transfer.json

Results: docs/benchmarks/transfer.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from hits_stamps.differencing import VARIED  # noqa: E402
from hits_stamps.realdata import build_real, default_sequences_path, packaged_sample_path  # noqa: E402
from hits_stamps.realsets import RealSetsConfig, build_real_sets, default_variables_path  # noqa: E402
from hits_stamps.stamps import StampSet, check_disjoint_groups  # noqa: E402
from hits_stamps.training import TrainConfig, fit  # noqa: E402

warnings.filterwarnings("ignore", message=".*non-finite pixels.*")

RECIPES = {
    "sim": ("sim",),
    "sim+real": ("sim", "real_train"),
    "inj": ("inject",),
    "inj+real": ("inject", "real_train"),
    "sim+inj": ("sim", "inject"),
    "sim+inj+real": ("sim", "inject", "real_train"),
    "sim+inj+real+var": ("sim", "inject", "real_train", "variables_train"),
    # the training variable stars four times over (ids made distinct): 2% of the stamps otherwise
    "sim+inj+real+var4": ("sim", "inject", "real_train") + ("variables_train",) * 4,
}
VAL_SETS = ("real_val", "variables_val")
TEST_SETS = ("real_test", "real_test_varied", "variables_test", "sim_test")


def balanced_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold on validation scores that maximises the worse of the two class recalls."""
    cand = np.unique(np.concatenate([p, [0.5]]))
    best, best_t = -1.0, 0.5
    for t in cand:
        pred = p >= t
        worst = min(pred[y == 1].mean() if (y == 1).any() else 1.0, (~pred[y == 0]).mean() if (y == 0).any() else 1.0)
        if worst > best + 1e-12:
            best, best_t = worst, float(t)
    return best_t


def score(y: np.ndarray, p: np.ndarray, groups: np.ndarray, threshold: float, n_boot: int, seed: int) -> dict:
    """Accuracy, recall per class and ROC AUC at `threshold`, with 95% bootstrap-over-objects intervals.

    The intervals are `hits_stamps.evaluation.intervals.bootstrap_intervals`, the same as
    `hits-stamps evaluate` reports.
    """
    from sklearn.metrics import roc_auc_score

    from hits_stamps.evaluation.intervals import bootstrap_intervals

    groups = np.arange(y.size) if groups is None else groups  # simulated stamps: each its own object
    pred = p >= threshold
    est = {"accuracy": float((pred == (y == 1)).mean()),
           "real_recall": float(pred[y == 1].mean()) if (y == 1).any() else float("nan"),
           "bogus_recall": float((~pred[y == 0]).mean()) if (y == 0).any() else float("nan"),
           "roc_auc": float(roc_auc_score(y, p)) if 0 < y.sum() < y.size else float("nan")}
    ci = bootstrap_intervals(y, p, groups, thresholds={"": threshold}, n_resamples=n_boot, seed=seed)["intervals"]
    keys = {"accuracy": "accuracy", "real_recall": "recall", "bogus_recall": "recall_bogus", "roc_auc": "roc_auc"}
    out = {n: {"value": est[n], "ci95": ci[k] or [float("nan"), float("nan")]} for n, k in keys.items()}
    out.update({"n": int(y.size), "n_real": int((y == 1).sum()), "n_objects": int(np.unique(groups).size),
                "threshold": float(threshold)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="JSON results file")
    ap.add_argument("--model", default="rotinv-cnn")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--n-sim", type=int, default=12_000)
    ap.add_argument("--n-inject", type=int, default=12_000)
    ap.add_argument("--n-sim-test", type=int, default=5_000)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--scalings", default="recipe",
                    help="comma-separated preprocessing scalings, each recipe trained under each: 'recipe' (the "
                         "model's own) or minmax, robust, joint (hits_stamps.preprocess); keys become recipe@scaling")
    ap.add_argument("--seed", type=int, default=0, help="training seed; the object split uses --split-seed")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--variables-split", default="0.4,0.3,0.3",
                    help="variable stars by object: train,val,test fractions (or val,test: none trains on them)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--smoke", action="store_true", help="tiny sets on the packaged sample, 1 epoch (a test runs it)")
    ap.add_argument("--append", action="store_true",
                    help="add the recipes to an existing --out file made with the same settings (same sets)")
    ap.add_argument("--table", type=Path, help="print the markdown tables of a results file and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0
    if args.out is None:
        ap.error("--out is required")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        sequences, variables = packaged_sample_path(), None
        args.epochs, args.n_sim, args.n_inject, args.n_sim_test, args.n_boot = 1, 300, 300, 200, 50
    else:
        sequences, variables = default_sequences_path(), default_variables_path()
    from hits_stamps.simulate import simulate_stamps

    t0 = time.perf_counter()
    vsplit = tuple(float(x) for x in args.variables_split.split(","))
    cfg = RealSetsConfig(split_seed=args.split_seed, n_inject=args.n_inject, inject_seed=args.seed,
                         variables_split=vsplit)
    sets = build_real_sets(sequences, variables, cfg)
    test_obj = sets["real_test"].meta["objects"]
    sets["real_test_varied"] = build_real(sequences, objects=test_obj, variety=VARIED, seed=args.seed + 101)
    sets["real_test_varied"] = sets["real_test_varied"][sets["real_test_varied"].labels >= 0]
    sets["sim"] = simulate_stamps(args.n_sim, seed=args.seed + 1000)
    sets["sim_test"] = simulate_stamps(args.n_sim_test, seed=args.seed + 2000)  # the simulated set must hold too
    data_seconds = time.perf_counter() - t0
    val = StampSet.concat([sets[k] for k in VAL_SETS if k in sets])
    train_parts = [_strip(sets[k]) for k in ("inject", "real_train", "variables_train") if k in sets]
    check_disjoint_groups({"train": StampSet.concat(train_parts),
                           "validation": val,
                           "test": StampSet.concat([_strip(sets[k]) for k in TEST_SETS if k in sets])})
    results: dict = {
        "command": "python benchmarks/bench_transfer.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": args.model, "scalings": args.scalings.split(","), "epochs": args.epochs, "seed": args.seed,
        "split_seed": args.split_seed,
        "variables_split": list(vsplit),
        "sets": {k: {"n": len(v), "real": int((v.labels == 1).sum()), "objects": v.n_groups() if v.groups is not None
                     else None} for k, v in sets.items()},
        "data_seconds": data_seconds, "torch_threads": torch.get_num_threads(), "recipes": {},
    }
    if args.append and args.out.is_file():
        old = json.loads(args.out.read_text())
        same = ("model", "epochs", "seed", "split_seed", "variables_split", "sets")
        differ = [k for k in same if old.get(k) != results[k]]
        if differ:
            raise SystemExit(f"--append: {args.out} was made with other settings ({', '.join(differ)})")
        results["recipes"] = old["recipes"]
        results["command"] = old["command"] + "\n" + results["command"]
    scalings = args.scalings.split(",")
    # "recipe@scaling" names one pairing; a bare recipe is trained under each of --scalings
    runs = [tuple(r.split("@", 1)) if "@" in r else (r, sc) for r in args.recipes.split(",")
            for sc in (scalings if "@" not in r else scalings[:1])]
    named = len(scalings) > 1 or any("@" in r for r in args.recipes.split(","))
    for recipe, scaling in runs:
        parts = RECIPES[recipe]
        name = f"{recipe}@{scaling}" if named else recipe
        if any(p not in sets for p in parts):
            print(f"{name}: skipped, this run has no {[p for p in parts if p not in sets]}", flush=True)
            continue
        train = StampSet.concat([_strip(sets[p], copy=parts[:i].count(p)) for i, p in enumerate(parts)])
        t1 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            overrides = {} if scaling == "recipe" else {"scaling": scaling}
            model = fit(TrainConfig(model=args.model, seed=args.seed, epochs=args.epochs, recipe_overrides=overrides),
                        train, tmp, val=_strip(val), overwrite=True, progress=False)
            train_seconds = time.perf_counter() - t1
            probs = {k: model.predict_proba(sets[k])[:, 1] for k in VAL_SETS + TEST_SETS if k in sets}
        yv = np.concatenate([sets[k].labels for k in VAL_SETS if k in sets])
        pv = np.concatenate([probs[k] for k in VAL_SETS if k in sets])
        thr = balanced_threshold(yv, pv)
        rec = {"recipe": recipe, "scaling": model.preprocessor.config.scaling,
               "train": {"parts": list(parts), "n": len(train), "real": int((train.labels == 1).sum())},
               "train_seconds": train_seconds, "threshold_from_validation": thr, "val": {}, "test": {}}
        for k in VAL_SETS + TEST_SETS:
            if k not in sets:
                continue
            s = sets[k]
            where = "val" if k in VAL_SETS else "test"
            rec[where][k] = {"at_0.5": score(s.labels, probs[k], s.groups, 0.5, args.n_boot, args.seed),
                             "at_val_threshold": score(s.labels, probs[k], s.groups, thr, args.n_boot, args.seed)}
        rec["val"]["pooled"] = score(yv, pv, np.concatenate([sets[k].groups for k in VAL_SETS if k in sets]), thr,
                                     args.n_boot, args.seed)
        pooled = rec["val"]["pooled"]
        rec["val_criterion"] = [min(pooled["real_recall"]["value"], pooled["bogus_recall"]["value"]),
                                pooled["roc_auc"]["value"]]
        results["recipes"][name] = rec
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**results, "partial": True}, indent=1))  # a long run keeps what it has
        print(f"{name}: val worst recall {rec['val_criterion'][0]:.3f} auc {rec['val_criterion'][1]:.4f} "
              f"thr {thr:.3f} ({train_seconds:.0f} s)", flush=True)
    chosen = max(results["recipes"], key=lambda r: tuple(results["recipes"][r]["val_criterion"]))
    results["chosen_on_validation"] = chosen
    results["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


def _strip(s: StampSet, copy: int = 0) -> StampSet:
    """Images, labels, kind, ids, groups and snr only, so sets with different columns concatenate alike; for
    copy = k > 0 the ids are suffixed `#k` (a part repeated in a recipe keeps distinct ids)."""
    ids = s.ids if copy == 0 else np.char.add(s.ids.astype(str), f"#{copy}")
    return StampSet(images=s.images, labels=s.labels, kind=s.kind, ids=ids, groups=s.groups, snr=s.snr)


def _fmt(m: dict, key: str) -> str:
    v = m[key]
    return f"{v['value']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"


def table(res: dict) -> str:
    chosen = res.get("chosen_on_validation", "none yet (partial run)")
    lines = [f"model {res['model']}, {res['epochs']} epochs, seed {res['seed']}, object split seed "
             f"{res['split_seed']}; chosen on validation: **{chosen}**", ""]
    lines.append("| recipe | train stamps | val worst recall | val ROC AUC | threshold |")
    lines.append("|---|---|---|---|---|")
    for name, r in res["recipes"].items():
        lines.append(f"| {name} | {r['train']['n']:,} | {r['val_criterion'][0]:.3f} | {r['val_criterion'][1]:.4f} | "
                     f"{r['threshold_from_validation']:.3f} |")
    for k in TEST_SETS:
        if not any(k in r["test"] for r in res["recipes"].values()):
            continue
        s = res["sets"][k]
        size = f"{s['objects']} objects" if s["objects"] else "independent stamps"
        for at, words in (("at_val_threshold", "at the validation threshold"), ("at_0.5", "at p = 0.5")):
            if at == "at_0.5" and s["objects"]:
                continue  # real objects: the validation threshold only; simulated stamps: both
            lines += ["", f"**{k}** ({s['n']:,} stamps, {s['real']:,} real, {size}), {words}:", "",
                      "| recipe | accuracy | real recall | bogus recall | ROC AUC |", "|---|---|---|---|---|"]
            for name, r in res["recipes"].items():
                m = r["test"][k][at]
                lines.append(f"| {name} | {_fmt(m, 'accuracy')} | {_fmt(m, 'real_recall')} | "
                             f"{_fmt(m, 'bogus_recall')} | {_fmt(m, 'roc_auc')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
