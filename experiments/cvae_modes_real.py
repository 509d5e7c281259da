"""Pixel noise modes of a cvae trained on the real-pixel HiTS 2015 set, judged on its own validation split.

The generation benchmark (`bench_generation.py --skip-simulated`) trains the cvae on the training part
of the real-pixel set (split by object, seed 0) and judges it on the test part. To compare sampling
settings without the test part, this script takes that cvae directory, rebuilds the same training
part, and uses the training loop's own split of it: a rotinv-cnn judge is trained on the part the
cvae was fitted on, and the held-out part is the validation set. For each `--residual-units` a copy of
the directory gets its residual model refitted in those units (the cvae's weights and latent mixture
are unchanged), and `evaluate_generator` judges it in each `--modes` (agreement, Fréchet distance,
TSTR/TRTR on the validation stamps, physical consistency, memorisation).

    OMP_NUM_THREADS=1 python experiments/cvae_modes_real.py runs/s6/real/real/cvae --out runs/s6/real_modes
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _cvae import generator_split, refit_copy, row, show

from hits_stamps.generation.judge import evaluate_generator
from hits_stamps.generation.sample import load_generator, train_config_of
from hits_stamps.realdata import build_real
from hits_stamps.training import TrainConfig, fit
from hits_stamps.training.modeldir import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cvae_dir", help="a cvae trained by bench_generation.py on the real-pixel set's training part")
    ap.add_argument("--out", required=True)
    ap.add_argument("--modes", default="sample,residual")
    ap.add_argument("--residual-units", default="decoder,location")
    ap.add_argument("--judge-epochs", type=int, default=5)
    ap.add_argument("--max-per-class", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0, help="the seed of the benchmark run that split the set")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    real = build_real()
    train, _ = real.split((0.7, 0.3), seed=args.seed, groups=real.columns["object_index"])
    gen = load_generator(args.cvae_dir)
    if gen.config["training_data"]["n_train"] + gen.config["training_data"]["n_val"] != len(train):
        raise SystemExit(f"{args.cvae_dir} was not trained on the {len(train)} stamps of the real training part")
    cfg = train_config_of(gen)
    fit_on, val = generator_split(gen, train)
    print(f"real-pixel set: {len(fit_on)} stamps the cvae was fitted on {fit_on.class_balance()}, "
          f"{len(val)} validation stamps {val.class_balance()}", flush=True)
    judge = fit(TrainConfig(model="rotinv-cnn", seed=args.seed, epochs=args.judge_epochs), fit_on,
                out / "judge", overwrite=True, progress=False)

    rows = {}
    for units in args.residual_units.split(","):
        copy = refit_copy(args.cvae_dir, out / f"cvae_{units}", units, fit_on, cfg.seed)
        for mode in args.modes.split(","):
            if mode != "residual" and units != args.residual_units.split(",")[0]:
                continue  # the residual units only change mode "residual"
            name = f"{mode}" if mode != "residual" else f"residual_{units}"
            res = evaluate_generator(copy, val, out / name, classifier=judge.path, seed=args.seed, progress=False,
                                     train=fit_on, max_per_class=args.max_per_class, mode=mode, make_figures=False)
            rows[name] = row(res)
            show(name, rows[name])
            write_json(out / "modes.json", {"cvae_dir": args.cvae_dir, "n_fit": len(fit_on), "n_val": len(val),
                                            "rows": rows})

if __name__ == "__main__":
    main()
