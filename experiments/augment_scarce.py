"""Augmentation where labels are scarce, on real pixels: does anything beat training on the few real stamps?

Data: the real-pixel HiTS 2015 sets (`hits_stamps.realsets.build_real_sets`, split by object):
`real_train` (234 objects), `real_val` (validation for every model), `real_test` (scores), `inject`
(injections and painted artefacts on the training objects' epochs). For each fraction f of the
training OBJECTS (stratified by class, at least one object per class, seeded) and each seed, five
arms train the same classifier (`seed-cnn`, not rotation-invariant, so flips can matter) with the
same number of optimizer steps (steps per epoch = ceil(2 n / batch), n real stamps):

- `nothing`: the n real stamps of the chosen objects;
- `flips`: the same with random rotations by 90 degrees and flips (recipe augment=dihedral);
- `injected`: plus n injected stamps of the chosen objects (half real, half bogus, as injected);
- `cvae`, `diffusion`: plus n generated stamps, half of each class, from a generator trained on the
  same n stamps (its conditions' bank from them too; sampled with the defaults, consistent).

Every setting is fixed in advance (epochs, sizes); nothing is tuned on the test set. Metric:
balanced accuracy on `real_test` (mean recall of the two classes: 90% of the stamps are bogus), and
ROC AUC. Reported per (fraction, arm): mean over seeds, and the mean difference from `nothing` with a
95% t interval over the seeds (t_{0.975, 2} = 4.303 for 3 seeds).

    nice -n 10 python experiments/augment_scarce.py --real runs/gen21/real --out runs/gen21/scarce
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from hits_stamps.generation import generate
from hits_stamps.io import read_stamps
from hits_stamps.stamps import StampSet
from hits_stamps.training import TrainConfig, fit

ARMS = ("nothing", "flips", "injected", "cvae", "diffusion")
T975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}


def choose_objects(train: StampSet, fraction: float, seed: int) -> np.ndarray:
    """Object names: `fraction` of each class's objects (at least one), seeded."""
    rng = np.random.default_rng([seed, int(fraction * 1e6)])
    names = np.array(sorted(set(train.groups.tolist())))
    label = np.array([int(train.labels[train.groups == g].max()) for g in names])  # an object with an SN epoch is SN
    out = []
    for lab in (0, 1):
        pool = names[label == lab]
        k = max(1, int(round(fraction * len(pool))))
        out.extend(rng.choice(pool, k, replace=False).tolist())
    return np.array(sorted(out))


def scores(tm, test: StampSet) -> dict:
    p = tm.predict_proba(test)[:, 1]
    pred = (p >= 0.5).astype(int)
    recalls = [float(np.mean(pred[test.labels == c] == c)) for c in (0, 1)]
    return {"balanced_accuracy": float(np.mean(recalls)), "recall_bogus": recalls[0], "recall_real": recalls[1],
            "roc_auc": float(roc_auc_score(test.labels, p))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", required=True, help="folder with real_train/real_val/real_test/inject .npz")
    ap.add_argument("--out", required=True)
    ap.add_argument("--fractions", default="0.01,0.03,0.1")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--clf-epochs", type=int, default=15)
    ap.add_argument("--cvae-epochs", type=int, default=30)
    ap.add_argument("--diffusion-epochs", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    real = Path(args.real)
    train, val, test, inject = (read_stamps(real / f"{k}.npz") for k in ("real_train", "real_val", "real_test",
                                                                          "inject"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    t_start = time.perf_counter()
    for fraction in (float(f) for f in args.fractions.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            objects = choose_objects(train, fraction, seed)
            sub = train[np.flatnonzero(np.isin(train.groups, objects))]
            n = len(sub)
            rng = np.random.default_rng([seed, 99])
            inj = inject[np.flatnonzero(np.isin(inject.groups, objects))]
            inj = inj[np.sort(rng.choice(len(inj), min(n, len(inj)), replace=False))] if len(inj) else inj
            work = out / f"f{fraction:g}_s{seed}"
            extra: dict[str, StampSet | None] = {"nothing": None, "flips": None, "injected": inj}
            t0 = time.perf_counter()
            for gen_name, epochs in (("cvae", args.cvae_epochs), ("diffusion", args.diffusion_epochs)):
                g = fit(TrainConfig(model=gen_name, epochs=epochs, seed=seed), sub, work / gen_name, val=val,
                        overwrite=True, progress=False)
                parts = [generate(g, n // 2, lab, seed=seed + lab) for lab in (1, 0)]
                extra[gen_name] = StampSet.concat([p for p in parts if len(p)])
            gen_seconds = time.perf_counter() - t0
            steps = math.ceil(2 * n / 64)
            for arm in ARMS:
                data = sub if extra[arm] is None or len(extra[arm]) == 0 else StampSet.concat([sub, extra[arm]])
                recipe = {"augment": "dihedral"} if arm == "flips" else {}
                clf = fit(TrainConfig(model="seed-cnn", epochs=args.clf_epochs, seed=seed, steps_per_epoch=steps,
                                      recipe_overrides=recipe), data, work / f"clf_{arm}", val=val, overwrite=True,
                          progress=False)
                row = {"fraction": fraction, "seed": seed, "arm": arm, "objects": len(objects), "n_real": n,
                       "n_real_sn": int(np.sum(sub.labels == 1)),
                       "n_extra": 0 if extra[arm] is None else len(extra[arm]), **scores(clf, test)}
                rows.append(row)
                print(json.dumps(row), flush=True)
            print(f"  generators trained and sampled in {gen_seconds:.0f} s", flush=True)
            (out / "augment_scarce.json").write_text(json.dumps(rows, indent=1))
    summary = {}
    for fraction in sorted({r["fraction"] for r in rows}):
        for arm in ARMS:
            entry = {}
            for metric in ("balanced_accuracy", "roc_auc"):
                base = {r["seed"]: r[metric] for r in rows if r["fraction"] == fraction and r["arm"] == "nothing"}
                mine = {r["seed"]: r[metric] for r in rows if r["fraction"] == fraction and r["arm"] == arm}
                d = np.array([mine[s] - base[s] for s in sorted(base) if s in mine])
                t = T975.get(len(d) - 1, float("nan"))
                half = t * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
                entry[metric] = float(np.mean(list(mine.values())))
                entry[f"{metric}_diff"] = float(d.mean())
                entry[f"{metric}_diff_ci95"] = [float(d.mean() - half), float(d.mean() + half)]
            summary[f"{fraction:g}/{arm}"] = entry
            print(fraction, arm, json.dumps(entry), flush=True)
    (out / "augment_scarce.json").write_text(json.dumps({"rows": rows, "summary": summary,
                                                         "seconds": time.perf_counter() - t_start}, indent=1))


if __name__ == "__main__":
    main()
