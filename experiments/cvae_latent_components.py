"""How many latent-mixture components a trained cvae should sample from: judge agreement against copying.

For a trained kind- or class-conditioned cvae, refits only its latent mixture
(`ConditionalVAE.fit_latent_codes`, on codes computed once, in memory; the directory is not changed) for
every combination of --components (the most components per condition) and --codes-per-component (at most
one component per this many training codes of a condition; `hits_stamps.models.cvae.CODES_PER_COMPONENT`
is set to it for the fit), then on the cvae's own held-out validation stamps (the first --n-val of the
training loop's split of --train-file):

- agreement: the fraction of --per-class generated stamps per class (pixel mode --mode) that the judge
  (--judge-dir, a classifier trained on the same file) labels as their class, per class and per kind;
  and the Fréchet distance to the validation stamps of the class in the judge's features;
- copying: per condition, --copies-n codes drawn from the mixture are decoded without pixel noise
  (the decoder location) and compared with the decoded posterior means of the condition's training
  stamps: the median distance to the nearest one, over the same for the condition's validation stamps
  (ratio < 1: generated stamps sit closer to training stamps than new real ones do), and the fraction
  of generated ones closer than the closest 5% of validation stamps (0.05 for a generator that does
  not copy).

    OMP_NUM_THREADS=1 python experiments/cvae_latent_components.py runs/s5/g0 \\
        --train-file runs/clfbench/sim_train.npz --judge-dir runs/clfbench/work/models/sim_rotinv-cnn_s0 \\
        --components 10,30,100,200,400 --codes-per-component 2,20 --out runs/s6/latent_components.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from _cvae import generator_split

import hits_stamps.models.cvae as cvae_module
from hits_stamps.generation.judge import classifier_features, frechet_distance, nearest_distances
from hits_stamps.generation.sample import generate, load_generator, posterior_means
from hits_stamps.io import read_stamps
from hits_stamps.training.modeldir import load_model, write_json


@torch.no_grad()
def _locations(tm, z: torch.Tensor, condition: int, batch: int = 2048) -> np.ndarray:
    """Decoder locations (N, H W C) in model units of codes z (N, d) under one condition."""
    out = []
    for a in range(0, len(z), batch):
        zb = z[a : a + batch]
        out.append(tm.module.location(tm.module.decode(zb, torch.full((len(zb),), condition))).flatten(1).numpy())
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cvae_dir")
    ap.add_argument("--train-file", required=True, help="the stamp file the cvae was trained on")
    ap.add_argument("--judge-dir", required=True)
    ap.add_argument("--components", default="10,30,100,200,400")
    ap.add_argument("--codes-per-component", default="20")
    ap.add_argument("--mode", default="sample", help="pixel mode of the generated stamps judged")
    ap.add_argument("--n-val", type=int, default=4000)
    ap.add_argument("--per-class", type=int, default=2000)
    ap.add_argument("--copies-n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, help="JSON file for the results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tm = load_generator(args.cvae_dir)
    module = tm.module.eval()
    fit_on, held_out = generator_split(tm, read_stamps(args.train_file))
    val = held_out[: args.n_val]
    judge = load_model(args.judge_dir)
    f_val = classifier_features(judge, val)
    names = list(module.kinds) if module.kinds else ["bogus", "real"]
    # per condition: decoded posterior means of its training and validation stamps (the copying reference)
    (z_fit, y_fit), (z_val, y_val) = posterior_means(tm, fit_on), posterior_means(tm, val)
    reference = {}
    for k, name in enumerate(names):
        tr, va = z_fit[y_fit == k], z_val[y_val == k]
        if len(tr) and len(va) >= 20:
            ref = _locations(tm, tr, k)
            d_val = nearest_distances(_locations(tm, va, k), ref)
            reference[name] = (k, ref, d_val)

    results = []
    saved_cpc = cvae_module.CODES_PER_COMPONENT
    try:
        for cpc in (int(c) for c in args.codes_per_component.split(",")):
            for m in (int(c) for c in args.components.split(",")):
                t0 = time.perf_counter()
                cvae_module.CODES_PER_COMPONENT = cpc
                module.latent_components = m
                module.fit_latent_codes(z_fit, y_fit)
                fitted = {name: int((w > 0).sum()) for name, w in zip(names, module.latent_weights, strict=True)}
                row = {"components": m, "codes_per_component": cpc, "fitted_components": fitted,
                       "agreement": {}, "frechet": {}, "agreement_per_kind": {}, "copying": {}}
                for cls, lab in (("real", 1), ("bogus", 0)):
                    g = generate(tm, args.per_class, lab, seed=10 + lab, mode=args.mode)
                    pred = judge.predict(g)
                    row["agreement"][cls] = float(np.mean(pred == lab))
                    row["frechet"][cls] = frechet_distance(classifier_features(judge, g), f_val[val.labels == lab])
                    if "condition" in g.columns:
                        for k in np.unique(g.columns["condition"]):
                            sel = g.columns["condition"] == k
                            row["agreement_per_kind"][names[k]] = float(np.mean(pred[sel] == lab))
                gen = torch.Generator().manual_seed(5)
                for name, (k, ref, d_val) in reference.items():
                    z = module.sample_latent(torch.full((args.copies_n,), k), "aggregate", gen)
                    d_gen = nearest_distances(_locations(tm, z, k), ref)
                    row["copying"][name] = {"ratio": float(np.median(d_gen) / np.median(d_val)),
                                            "below_p5": float(np.mean(d_gen < np.quantile(d_val, 0.05)))}
                row["seconds"] = time.perf_counter() - t0
                results.append(row)
                worst = min(row["copying"].items(), key=lambda kv: kv[1]["ratio"]) if row["copying"] else None
                agree, fd = row["agreement"], row["frechet"]
                print(f"cpc {cpc:3d} M {m:4d}: agreement real {agree['real']:.3f} bogus {agree['bogus']:.3f}  "
                      f"FD {fd['real']:.1f} / {fd['bogus']:.1f}"
                      + f"  variable {row['agreement_per_kind'].get('variable', float('nan')):.3f}"
                      + (f"  copying: lowest ratio {worst[1]['ratio']:.2f} ({worst[0]}), largest fraction below p5 "
                         f"{max(v['below_p5'] for v in row['copying'].values()):.3f}" if worst else ""), flush=True)
                write_json(args.out, {"cvae_dir": args.cvae_dir, "train_file": args.train_file,
                                      "judge_dir": args.judge_dir, "mode": args.mode, "n_val": len(val),
                                      "per_class": args.per_class, "copies_n": args.copies_n, "rows": results})
    finally:
        cvae_module.CODES_PER_COMPONENT = saved_cpc
    print(json.dumps({"out": args.out}))


if __name__ == "__main__":
    main()
