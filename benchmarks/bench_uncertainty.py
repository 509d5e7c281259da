"""Uncertainty under shift: which method stays calibrated on real pixels of unseen objects and on simulated ones.

Trains, on the best transfer recipe (simulated + injected + the training objects' real candidates,
`bench_transfer.py`'s sim+inj+real), M rotinv-cnn members with seeds seed..seed+M-1 (preprocessing
scaling `--scaling`, default joint: the scaling `bench_transfer.py` chose for rotinv-cnn on
validation) and one bayes-cnn (its recipe's scaling), then compares, with one interface (samples
(S, N, 2), `hits_stamps.predictive`):

    softmax (member 0) | mc-dropout (member 0) | ensemble-m (members 0..m-1, m = 2..M) | flipout (bayes-cnn)
    x calibration none | temperature | platt | isotonic

Calibrators are fitted on validation sets only, never on a test set: the real-pixel validation
objects (real_val + variables_val) and `sim_val` (simulated, its own seed), pooled with equal total
weight per domain (real pixels, simulated; `--domain-weighting equal`, `predictive.domain_weights`),
so that one calibrator serves both. The default method (base, ensemble size, calibration) is
chosen on validation only: the lowest out-of-fold domain-weighted NLL (the mean of the two domains'
NLLs) over K folds of the validation objects (each simulated stamp its own object; each fold
calibrated by the other folds), ties by the larger of the two domains' ECE; its referral score
(entropy or mutual information) by the out-of-fold error ratio at 10% referral on the real-pixel
validation objects. `--validation-only` stops after the choice (no test set is scored). Test sets,
scored once for every method with 95% bootstrap-over-objects intervals: `sim_test` (simulated,
another seed), `real_test` (unseen objects, nominal differencing), `real_test_varied` (the same
objects, varied differencing), `variables_test` (variable stars).

    python benchmarks/bench_uncertainty.py --work WORKDIR --out benchmarks/results/uncertainty.json \
        --figures docs/figures/uncertainty
    python benchmarks/bench_uncertainty.py --smoke --work W --out W/smoke.json   # packaged sample, a minute
    python benchmarks/bench_uncertainty.py --table benchmarks/results/uncertainty.json

WORKDIR keeps the trained models (a rerun reuses them when their scaling matches) and the chosen
method's predictive.json (for `hits-stamps predict`). Results: docs/benchmarks/uncertainty.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from hits_stamps.differencing import VARIED  # noqa: E402
from hits_stamps.evaluation.shift import evaluate_uncertainty  # noqa: E402
from hits_stamps.predictive import (  # noqa: E402
    CALIBRATIONS,
    Predictive,
    domain_weights,
    make_calibrator,
    object_folds,
    out_of_fold,
)
from hits_stamps.realdata import build_real, default_sequences_path, packaged_sample_path  # noqa: E402
from hits_stamps.realsets import RealSetsConfig, build_real_sets, default_variables_path  # noqa: E402
from hits_stamps.stamps import StampSet, check_disjoint_groups  # noqa: E402
from hits_stamps.training import TrainConfig, fit, load_model  # noqa: E402
from hits_stamps.training.loop import resolve_recipe  # noqa: E402
from hits_stamps.training.modeldir import is_model_dir  # noqa: E402

warnings.filterwarnings("ignore", message=".*non-finite pixels.*")

REAL_VAL_SETS = ("real_val", "variables_val")  # real-pixel validation objects (also the training monitor)
VAL_SETS = REAL_VAL_SETS + ("sim_val",)  # calibration and every choice
TEST_SETS = ("sim_test", "real_test", "real_test_varied", "variables_test")
TRAIN_PARTS = ("sim", "inject", "real_train")


def _strip(s: StampSet) -> StampSet:
    return StampSet(images=s.images, labels=s.labels, kind=s.kind, ids=s.ids, groups=s.groups, snr=s.snr)


def _own_objects(s: StampSet, prefix: str) -> StampSet:
    """Simulated stamps have no objects: each stamp is its own (folds and the bootstrap take stamps)."""
    return StampSet(images=s.images, labels=s.labels, kind=s.kind, ids=s.ids, snr=s.snr,
                    groups=np.array([f"{prefix}-{i}" for i in range(len(s))]))


def build_data(args) -> dict[str, StampSet]:
    from hits_stamps.simulate import simulate_stamps

    if args.smoke:
        sequences, variables = packaged_sample_path(), None
    else:
        sequences, variables = default_sequences_path(), default_variables_path()
    cfg = RealSetsConfig(split_seed=args.split_seed, n_inject=args.n_inject, inject_seed=args.seed)
    sets = build_real_sets(sequences, variables, cfg)
    varied = build_real(sequences, objects=sets["real_test"].meta["objects"], variety=VARIED, seed=args.seed + 101)
    sets["real_test_varied"] = varied[varied.labels >= 0]
    sets["sim"] = simulate_stamps(args.n_sim, seed=args.seed + 1000)
    sets["sim_test"] = _own_objects(simulate_stamps(args.n_sim_test, seed=args.seed + 2000), "sim")
    sets["sim_val"] = _own_objects(simulate_stamps(args.n_sim_val, seed=args.seed + 3000), "simval")
    check_disjoint_groups({"train": StampSet.concat([_strip(sets[k]) for k in ("inject", "real_train")]),
                           "validation": StampSet.concat([_strip(sets[k]) for k in REAL_VAL_SETS if k in sets]),
                           "test": StampSet.concat([_strip(sets[k]) for k in TEST_SETS[1:] if k in sets])})
    return sets


def train_models(args, sets) -> tuple[list, object, int]:
    """The M rotinv-cnn members and the bayes-cnn (reused from --work when trained with the same scaling)."""
    train = StampSet.concat([_strip(sets[p]) for p in TRAIN_PARTS])
    val = StampSet.concat([_strip(sets[k]) for k in REAL_VAL_SETS if k in sets])
    out = []
    member = {} if args.scaling == "recipe" else {"scaling": args.scaling}
    plan = [(args.work / "ensemble" / f"member-{i}", "rotinv-cnn", args.seed + i, member)
            for i in range(args.members)]
    plan.append((args.work / "bayes-cnn", "bayes-cnn", args.seed, {}))
    for path, name, seed, overrides in plan:
        cfg = TrainConfig(model=name, seed=seed, epochs=args.epochs, recipe_overrides=overrides)
        if is_model_dir(path) and (path / "model.safetensors").is_file():
            model = load_model(path)
            if model.preprocessor.config.scaling == resolve_recipe(cfg).scaling:
                out.append(model)
                continue
            print(f"{path}: trained with scaling {model.preprocessor.config.scaling}; retraining", flush=True)
        t0 = time.perf_counter()
        out.append(fit(cfg, train, path, val=val, overwrite=True, progress=False))
        print(f"trained {path.name} ({name}, seed {seed}) in {time.perf_counter() - t0:.0f} s", flush=True)
    return out[:-1], out[-1], len(train)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="JSON results file")
    ap.add_argument("--work", type=Path, help="folder for the trained models and the chosen predictive.json")
    ap.add_argument("--figures", type=Path, help="folder for the reliability and referral PNGs")
    ap.add_argument("--members", type=int, default=5, help="ensemble members (rotinv-cnn seeds)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--n-sim", type=int, default=12_000)
    ap.add_argument("--n-inject", type=int, default=12_000)
    ap.add_argument("--n-sim-test", type=int, default=4_000)
    ap.add_argument("--n-sim-val", type=int, default=4_000, help="simulated validation stamps (seed + 3000)")
    ap.add_argument("--scaling", default="joint", choices=("joint", "minmax", "robust", "recipe"),
                    help="preprocessing scaling of the rotinv-cnn members ('recipe': the model's own, minmax)")
    ap.add_argument("--domain-weighting", default="equal", choices=("equal", "stamp"),
                    help="calibration fits: equal total weight for real-pixel and simulated validation "
                         "stamps, or one weight per stamp")
    ap.add_argument("--validation-only", action="store_true", help="stop after the choice; score no test set")
    ap.add_argument("--mc-samples", type=int, default=30)
    ap.add_argument("--folds", type=int, default=5, help="object folds of the validation set for the choice")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--smoke", action="store_true", help="packaged sample, tiny sets, 1 epoch, 2 members")
    ap.add_argument("--table", type=Path, help="print the markdown tables of a results file and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0
    if args.out is None or args.work is None:
        ap.error("--out and --work are required")
    import torch

    torch.set_num_threads(args.threads)
    if args.smoke:
        args.epochs, args.n_sim, args.n_inject, args.n_sim_test, args.n_sim_val = 1, 300, 300, 300, 300
        args.n_boot, args.members, args.mc_samples, args.folds = 50, 2, 5, 3
    t0 = time.perf_counter()
    sets = build_data(args)
    members, bayes, n_train = train_models(args, sets)
    train_seconds = time.perf_counter() - t0
    names = [k for k in VAL_SETS + (() if args.validation_only else TEST_SETS) if k in sets]

    # ---- raw samples (S, N, 2) of every base, on every set
    t1 = time.perf_counter()
    bases: dict[str, Predictive] = {"softmax": Predictive(members[:1], "softmax"),
                                    "mc-dropout": Predictive(members[:1], "mc-dropout", mc_samples=args.mc_samples),
                                    "flipout": Predictive([bayes], "flipout", mc_samples=args.mc_samples)}
    raw = {b: {k: p.raw_sample_proba(sets[k]) for k in names} for b, p in bases.items()}
    member_probs = [raw["softmax"]] + [{k: Predictive([m], "softmax").raw_sample_proba(sets[k]) for k in names}
                                       for m in members[1:]]
    for m in range(2, len(members) + 1):
        raw[f"ensemble-{m}"] = {k: np.concatenate([member_probs[i][k] for i in range(m)]) for k in names}
    predict_seconds = time.perf_counter() - t1

    # ---- the choice, on validation only (out-of-fold calibration, equal weight per domain)
    vnames = [k for k in VAL_SETS if k in sets]
    yv = np.concatenate([sets[k].labels for k in vnames])
    gv = np.concatenate([sets[k].groups for k in vnames])
    which = np.concatenate([np.full(len(sets[k]), i) for i, k in enumerate(vnames)])
    domain = np.concatenate([np.full(len(sets[k]), "sim" if k.startswith("sim") else "real") for k in vnames])
    wv = domain_weights(domain) if args.domain_weighting == "equal" else np.ones(len(yv))
    folds = object_folds(gv, args.folds, args.seed)
    # the validation samples alone (no test set), for looking at calibrators without re-predicting
    np.savez_compressed(args.work / "validation_samples.npz", y=yv, groups=gv, domain=domain, folds=folds,
                        set=np.array(vnames)[which],
                        **{b: np.concatenate([raw[b][k] for k in vnames], axis=1).astype(np.float32) for b in raw})
    validation: dict[str, dict] = {}
    for base in raw:
        sv = np.concatenate([raw[base][k] for k in vnames], axis=1)
        for cal in CALIBRATIONS:
            oof = out_of_fold(cal, sv, yv, folds, sample_weight=wv)
            p_true = oof[:, np.arange(len(yv)), yv].mean(axis=0)
            rec = {"weighted_nll": float(-np.average(np.log(np.clip(p_true, 1e-12, 1.0)), weights=wv))}
            for d in ("real", "sim"):
                m = domain == d
                rec[d] = _val_summary(evaluate_uncertainty(yv[m], oof[:, m], gv[m], n_resamples=0))
                if d == "real":
                    rec["real_mi"] = _val_summary(evaluate_uncertainty(yv[m], oof[:, m], gv[m], "mutual_information",
                                                                       n_resamples=0))
            for i, k in enumerate(vnames):
                rec[k] = _val_summary(evaluate_uncertainty(yv[which == i], oof[:, which == i], gv[which == i],
                                                           n_resamples=0))
            validation[f"{base}+{cal}"] = rec
    chosen = min(validation, key=lambda m: (validation[m]["weighted_nll"],
                                            max(validation[m]["real"]["ece"], validation[m]["sim"]["ece"])))
    cv = validation[chosen]
    ratio_h, ratio_mi = cv["real"]["error_ratio_at_10pct"], cv["real_mi"]["error_ratio_at_10pct"]
    referral = "mutual_information" if (ratio_mi is not None and (ratio_h is None or ratio_mi < ratio_h)) \
        else "entropy"
    print(f"chosen on validation: {chosen}, referral by {referral}", flush=True)
    setup = {
        "command": "python benchmarks/bench_uncertainty.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "members": args.members, "scaling": members[0].preprocessor.config.scaling,
        "bayes_scaling": bayes.preprocessor.config.scaling, "epochs": args.epochs, "mc_samples": args.mc_samples,
        "seed": args.seed, "split_seed": args.split_seed, "folds": int(folds.max()) + 1, "n_boot": args.n_boot,
        "domain_weighting": args.domain_weighting,
        "domain_total_weight": {d: float(wv[domain == d].sum() / wv.sum()) for d in ("real", "sim")},
        "train": {"parts": list(TRAIN_PARTS), "n": n_train},
        "sets": {k: {"n": len(sets[k]), "real": int((sets[k].labels == 1).sum()),
                     "objects": int(len(np.unique(sets[k].groups)))} for k in names},
        "chosen_on_validation": chosen, "referral_of_chosen": referral,
    }
    if args.validation_only:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(setup | {"validation_out_of_fold": validation}, indent=1))
        print(table(setup | {"validation_out_of_fold": validation, "test": {}}))
        return 0

    # ---- every method calibrated on the whole validation set, scored once on each test set
    tests: dict[str, dict] = {}
    fitted: dict[str, dict] = {}
    for base in raw:
        sv = np.concatenate([raw[base][k] for k in vnames], axis=1)
        for cal in CALIBRATIONS:
            name = f"{base}+{cal}"
            c = make_calibrator(cal).fit(sv, yv, sample_weight=wv)
            fitted[name] = c.to_dict() if cal != "isotonic" else {"kind": "isotonic", "knots": len(c.x_)}
            u = referral if name == chosen else "entropy"
            tests[name] = {k: evaluate_uncertainty(sets[k].labels, c.transform(raw[base][k]), sets[k].groups, u,
                                                   n_resamples=args.n_boot, seed=args.seed)
                           for k in TEST_SETS if k in sets}
            if name == chosen:
                chosen_cal = c

    for name, per_set in tests.items():  # curves and bins of the chosen method and the plain softmax only
        if name not in (chosen, "softmax+none"):
            for r in per_set.values():
                r.pop("referral"), r.pop("reliability")

    # ---- the chosen method saved for `hits-stamps predict`, and checked against the numbers above
    base = chosen.split("+")[0]
    if base.startswith("ensemble-"):
        m = int(base.split("-")[1])
        pred, where = Predictive(members[:m], "ensemble"), args.work / "ensemble"
        rel = [f"member-{i}" for i in range(m)]
    else:
        model = bayes if base == "flipout" else members[0]
        pred = Predictive([model], base, mc_samples=args.mc_samples)
        where, rel = model.path, ["."]
    pred.calibrator = chosen_cal
    pred.config = dataclasses.replace(pred.config, referral=referral)
    saved = pred.save(where, members=rel, overwrite=True,
                      note=f"chosen on validation (real_val + variables_val objects and simulated sim_val, "
                           f"{args.domain_weighting} weight per domain; out-of-fold NLL over {int(folds.max()) + 1} "
                           f"object folds); calibration fitted on all of them")
    from hits_stamps.predictive import load_predictive

    again = load_predictive(where).predict_proba(sets["real_test"])
    bench = chosen_cal.transform(raw[base]["real_test"]).mean(0)
    results = setup | {
        "saved": str(saved.relative_to(args.work)) if saved.is_relative_to(args.work) else str(saved),
        "saved_matches_benchmark_max_abs_diff": float(np.abs(again - bench).max()),
        "calibration_fitted": fitted, "validation_out_of_fold": validation, "test": tests,
        "seconds": {"data_and_training": train_seconds, "prediction": predict_seconds,
                    "total": time.perf_counter() - t0},
        "torch_threads": torch.get_num_threads(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    if args.figures:
        write_figures(results, raw, chosen_cal, base, sets, args.figures)
    print(table(results))
    return 0


def _val_summary(r: dict) -> dict:
    keep = ("accuracy", "ece", "nll", "brier", "auroc_uncertainty", "error_ratio_at_10pct")
    return {k: r[k]["value"] for k in keep} | {"n": r["n"], "n_objects": r["n_objects"], "n_errors": r["n_errors"]}


def write_figures(results, raw, cal, base, sets, folder: Path) -> None:
    """Reliability diagrams of the chosen method before and after calibration, and referral curves, per test set."""
    from hits_stamps.evaluation.calibration import confidence_bins, plot_referral, plot_reliability, referral_curve
    from hits_stamps.uncertainty import mutual_information, predictive_entropy

    chosen, referral = results["chosen_on_validation"], results["referral_of_chosen"]
    score = mutual_information if referral == "mutual_information" else predictive_entropy
    for k in TEST_SETS:
        if k not in sets:
            continue
        y = sets[k].labels
        curves = {}
        for label, s in (("uncalibrated", raw[base][k]), ("calibrated", cal.transform(raw[base][k]))):
            p = s.mean(0)[:, 1]
            plot_reliability(confidence_bins(y, np.clip(p, 0, 1), 15), folder / f"reliability_{k}_{label}.png",
                             f"{k}: {base} {label}")
            curves[f"{base} {label} ({referral})"] = referral_curve(y, np.clip(p, 0, 1), score(s))
        s = raw["softmax"][k]
        curves["softmax, member 0 (entropy)"] = referral_curve(y, s.mean(0)[:, 1], predictive_entropy(s))
        plot_referral(curves, folder / f"referral_{k}.png", f"{k}: referral, {chosen}")


def _fmt(m: dict, digits: int = 4) -> str:
    if m["value"] is None:
        return "n/a"
    ci = m.get("ci95")
    return f"{m['value']:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def table(res: dict) -> str:
    lines = [f"{res['members']} rotinv-cnn members ({res['scaling']} scaling) + bayes-cnn ({res['bayes_scaling']}), "
             f"{res['epochs']} epochs, trained on {'+'.join(res['train']['parts'])} ({res['train']['n']:,} stamps); "
             f"MC samples {res['mc_samples']}; chosen on validation: **{res['chosen_on_validation']}** "
             f"(referral by {res['referral_of_chosen']})", "",
             f"Validation (out-of-fold calibration over {res['folds']} folds of real_val + variables_val objects "
             f"and sim_val stamps; {res['domain_weighting']} weight per domain; criterion: weighted NLL):", "",
             "| method | weighted NLL | real: accuracy | ECE | NLL | err ratio @10% (H / MI) | sim: accuracy | ECE "
             "| NLL |",
             "|---|---|---|---|---|---|---|---|---|"]

    def f(c, d=4):
        return "n/a" if c is None else f"{c:.{d}f}"

    for name, r in res["validation_out_of_fold"].items():
        re_, si = r["real"], r["sim"]
        bold = "**" if name == res["chosen_on_validation"] else ""
        lines.append(f"| {bold}{name}{bold} | {f(r['weighted_nll'])} | {f(re_['accuracy'])} | {f(re_['ece'])} | "
                     f"{f(re_['nll'])} | {f(re_['error_ratio_at_10pct'], 3)} / "
                     f"{f(r['real_mi']['error_ratio_at_10pct'], 3)} | {f(si['accuracy'])} | {f(si['ece'])} | "
                     f"{f(si['nll'])} |")
    for k in TEST_SETS:
        if k not in res["sets"] or not res.get("test"):
            continue
        s = res["sets"][k]
        lines += ["", f"**{k}** ({s['n']:,} stamps, {s['real']:,} real, {s['objects']:,} objects):", "",
                  "| method | accuracy | ECE | NLL | Brier | AUROC(u) | error kept @10% | ratio @10% |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in res["test"].items():
            m = r[k]
            bold = "**" if name == res["chosen_on_validation"] else ""
            lines.append(f"| {bold}{name}{bold} | {_fmt(m['accuracy'])} | {_fmt(m['ece'])} | {_fmt(m['nll'], 3)} | "
                         f"{_fmt(m['brier'])} | {_fmt(m['auroc_uncertainty'], 3)} | "
                         f"{_fmt(m['error_kept_at_10pct'])} | {_fmt(m['error_ratio_at_10pct'], 3)} |")
    return "\n".join(lines)

if __name__ == "__main__":
    sys.exit(main())
