"""Diffusion U-Net width chosen on validation: the same short budget for each width, held-out DDPM loss.

The loss in eval mode uses fixed times and noise (`diffusion_objective`), so the validation losses of
two widths compare. Every run: `fit` on the first --n stamps of --train (the loop holds out 20% as
validation, seed 0), --epochs epochs, recipe defaults otherwise. Prints one row per width.

    nice -n 10 python experiments/diffusion_size.py --train runs/gen21/train.npz --out runs/gen21/size
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hits_stamps.io import read_stamps
from hits_stamps.training import TrainConfig, fit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--widths", default="8,16,24")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = read_stamps(args.train)[: args.n]
    rows = []
    for base in (int(b) for b in args.widths.split(",")):
        tm = fit(TrainConfig(model="diffusion", epochs=args.epochs, model_kwargs={"base_channels": base}), data,
                 Path(args.out) / f"base{base}", overwrite=True, progress=False)
        hist = json.loads((Path(tm.path) / "history.json").read_text())
        rows.append({"base_channels": base, "parameters": sum(p.numel() for p in tm.module.parameters()),
                     "val_loss": [round(h["val_loss"], 4) for h in hist],
                     "seconds": round(sum(h["seconds"] for h in hist), 1)})
        print(json.dumps(rows[-1]), flush=True)
    (Path(args.out) / "diffusion_size.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
