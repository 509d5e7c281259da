"""Pixel noise modes of the main job's cvae, judged on the main job's own validation stamps.

`hits-stamps run --out RUN` trains a cvae on RUN/data/train.npz (briefly: 8 epochs by default; the
run's RUN/data/val.npz is its validation set) and judges it on the test stamps. This script judges
the same cvae on RUN/data/val.npz instead (stamps no model of the run was fitted on), with the run's
rotinv-cnn as the judge, in each pixel mode listed: `sample`, `loc`, or `residual_<units>` (a copy of
the directory with its residual model refitted in those units on the stamps the cvae was fitted on;
`decoder` or `location`).

    OMP_NUM_THREADS=1 python experiments/cvae_modes_run.py runs/s6/mainrun --out runs/s6/mj \
        --modes sample,residual_location,residual_decoder
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _cvae import refit_copy, row, show

from hits_stamps.generation.judge import evaluate_generator
from hits_stamps.generation.sample import load_generator, train_config_of
from hits_stamps.io import read_stamps
from hits_stamps.training.modeldir import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="an output folder of hits-stamps run (data/, models/cvae, models/<judge>)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--modes", default="sample,residual_location,residual_decoder")
    ap.add_argument("--judge", default="rotinv-cnn", help="a classifier of the run")
    ap.add_argument("--max-per-class", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run, out = Path(args.run_dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, val = read_stamps(run / "data" / "train.npz"), read_stamps(run / "data" / "val.npz")
    rows = {}
    for name in args.modes.split(","):
        mode, _, units = name.partition("_")
        cvae = run / "models" / "cvae"
        if units:
            gen = load_generator(cvae)
            cfg = train_config_of(gen)
            fit_on = train  # the run trains on all of train.npz (val.npz is its validation set), else the loop split it
            if gen.config["training_data"]["n_train"] != len(train):
                fit_on = train.split((1 - cfg.val_fraction, cfg.val_fraction), seed=cfg.seed)[0]
            cvae = refit_copy(cvae, out / f"cvae_{units}", units, fit_on, cfg.seed)
        res = evaluate_generator(cvae, val, out / name, classifier=run / "models" / args.judge, seed=0,
                                 progress=False, train=train, max_per_class=args.max_per_class, mode=mode,
                                 make_figures=False)
        rows[name] = row(res)
        show(name, rows[name])
        write_json(out / "modes.json", {"run_dir": str(run), "n_val": len(val), "rows": rows})

if __name__ == "__main__":
    main()
