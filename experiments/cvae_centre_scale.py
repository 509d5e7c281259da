"""Where does a trained cvae's decoder put its uncertainty? Centre vs corners of one kind's stamps.

For each cvae directory: the stamps of `--kind` in the training loop's held-out split of `--train-file`
(seed 0, 20%), encoded to their posterior means and decoded; per channel (model units), the median over
stamps of the RMS residual t - loc and of the decoder's per-pixel scale (diagonal of L), over the central
5x5 pixels and the four 4x4 corners. A decoder whose scale grows where its residual grows has explained
the misfit with a wider distribution instead of fitting it.

    python experiments/cvae_centre_scale.py runs/s3/f24_kind_dec runs/s5/g0 --train-file runs/clfbench/sim_train.npz
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from hits_stamps.io import read_stamps
from hits_stamps.training.modeldir import load_model

CHANNELS = ("template", "science-template", "difference", "snr")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cvae_dirs", nargs="+")
    ap.add_argument("--train-file", required=True)
    ap.add_argument("--kind", default="variable")
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    held_out = read_stamps(args.train_file).split((0.8, 0.2), seed=0)[1]
    idx = np.where(held_out.kind == args.kind)[0][: args.n]
    if not len(idx):
        raise SystemExit(f"no stamps of kind {args.kind!r} in the held-out split")
    x = torch.nan_to_num(torch.as_tensor(held_out.images[idx].transpose(0, 3, 1, 2).astype(np.float32)))
    centre, corners = (slice(8, 13), slice(8, 13)), [(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(-4, None)),
                                                     (slice(-4, None), slice(0, 4)), (slice(-4, None), slice(-4, None))]
    print(f"{len(idx)} held-out stamps of kind {args.kind}; medians over stamps, model units")
    print(f"{'model':16s} {'channel':17s} {'resid centre':>12s} {'corners':>8s} {'scale centre':>12s} {'corners':>8s}")
    for d in args.cvae_dirs:
        m = load_model(d).module.eval()
        y = torch.as_tensor(m.condition_index(held_out.labels[idx], held_out.kind[idx]))
        with torch.no_grad():
            t = m.to_model_units(x)
            dist = m.decode(m.encode(x, y)[0], y)
            r = t.permute(0, 2, 3, 1) - m.location(dist)  # (B, H, W, C)
            sc = torch.diagonal(m.pixel_tril(dist), dim1=-2, dim2=-1)  # (B, H, W, C)

        def rms(a, regions, ch):
            return float(torch.cat([a[:, i, j, ch].flatten(1) for i, j in regions], 1).pow(2).mean(1).sqrt().median())

        label = d.rstrip("/").split("/")[-1]
        for ch, name in enumerate(CHANNELS[: m.in_channels]):
            print(f"{label:16s} {name:17s} {rms(r, [centre], ch):12.3f} {rms(r, corners, ch):8.3f} "
                  f"{rms(sc, [centre], ch):12.3f} {rms(sc, corners, ch):8.3f}")


if __name__ == "__main__":
    main()
