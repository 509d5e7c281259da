"""Does a real-pixel cvae reproduce its training stamps, or its training objects? Per class, per mixture size.

The real-pixel HiTS 2015 set has few objects per class (in the benchmark's training part 58
supernovae give 346 stamps, several epochs each), and the set is split by object, so the test
stamps are new objects while the training loop's validation stamps are new epochs of the training
objects. This script takes a cvae trained by `bench_generation.py --skip-simulated`, refits its latent
mixture of one class with several numbers of components (at most one per --codes-per-component
training codes; the directory is not changed), generates --n stamps of that class each time (default
pixel mode), and reports the judge's memorisation numbers for that class against both references:
the median distance from each generated stamp to its nearest training stamp of the class over the
same for the reference stamps (ratio < 1: closer to the training stamps than the reference is), and
the fraction of generated stamps closer than the closest 1% / 5% of the reference stamps. Distances
as in `evaluate_generator` (all pixels and channels, in the cvae's transformed units).

    OMP_NUM_THREADS=1 python experiments/cvae_memorisation_real.py runs/s6/real_modes/cvae_location \\
        --out runs/s7/memorisation_real.json
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _cvae import generator_split

import hits_stamps.models.cvae as cvae_module
from hits_stamps.generation.judge import _model_units_flat, nearest_distances
from hits_stamps.generation.sample import generate, load_generator, posterior_means
from hits_stamps.realdata import build_real
from hits_stamps.training.modeldir import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cvae_dir", help="a cvae trained by bench_generation.py on the real-pixel set's training part")
    ap.add_argument("--label", type=int, default=1, help="the class whose mixture is refitted (1: real)")
    ap.add_argument("--codes-per-component", default="100000,55,28,20,11",
                    help="caps to try; a cap above the number of codes gives one component")
    ap.add_argument("--n", type=int, default=500, help="generated stamps per setting")
    ap.add_argument("--seed", type=int, default=0, help="the seed of the benchmark run that split the set")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, help="JSON file for the results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    real = build_real()
    train, test = real.split((0.7, 0.3), seed=args.seed, groups=real.columns["object_index"])
    gen = load_generator(args.cvae_dir)
    module = gen.module.eval()
    fit_on, val = generator_split(gen, train)
    flat = _model_units_flat(gen)
    mine = fit_on.labels == args.label
    ref = flat(fit_on[mine])
    references = {"validation (training objects)": val, "test (new objects)": test}
    d_ref = {name: nearest_distances(flat(s[s.labels == args.label]), ref) for name, s in references.items()}
    objects = {name: int(len(np.unique(s.columns["object_index"][s.labels == args.label])))
               for name, s in {"fitted on": fit_on, **references}.items()}
    print(f"class {args.label}: {int(mine.sum())} training stamps; objects {objects}", flush=True)
    codes, y = posterior_means(gen, fit_on)
    rows = []
    saved = cvae_module.CODES_PER_COMPONENT
    try:
        for cpc in (int(c) for c in args.codes_per_component.split(",")):
            cvae_module.CODES_PER_COMPONENT = cpc
            module.fit_latent_codes(codes, y, seed=gen.config.get("seed", 0))
            k = int(np.flatnonzero(module.condition_label.numpy() == args.label)[0])
            d_gen = nearest_distances(flat(generate(gen, args.n, args.label, seed=args.label)), ref)
            row = {"codes_per_component": cpc, "components": int((module.latent_weights[k] > 0).sum())}
            for name, d in d_ref.items():
                row[name] = {"ratio": float(np.median(d_gen) / np.median(d)),
                             "below_p1": float(np.mean(d_gen < np.percentile(d, 1))),
                             "below_p5": float(np.mean(d_gen < np.percentile(d, 5)))}
            rows.append(row)
            print(f"{row['components']:4d} components: " + "  ".join(
                f"{name}: ratio {v['ratio']:.2f}, below p1 {v['below_p1']:.3f}, p5 {v['below_p5']:.3f}"
                for name, v in row.items() if isinstance(v, dict)), flush=True)
    finally:
        cvae_module.CODES_PER_COMPONENT = saved
    write_json(args.out, {"cvae_dir": args.cvae_dir, "label": args.label, "n": args.n, "objects": objects,
                          "n_reference": {name: len(d) for name, d in d_ref.items()}, "rows": rows})


if __name__ == "__main__":
    main()
