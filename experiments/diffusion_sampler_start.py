"""Where DDIM starts, and how the predicted x0 is bounded, chosen with the tuner on validation stamps.

For a trained diffusion directory: 200 generated stamps per class (kinds drawn uniformly within the
class), 10 DDIM steps, guidance 1, for each start time t0 (the DDIM times run from t0 down to 0)
and bound ("sym": +-max |x0|, "asym": the per-channel training minimum and maximum); the tuner's
agreement and Fréchet distance (its features) to validation stamps of the class (the training loop's
held-out 20%, seed 0), and the median science pixel of the generated stamps against the real ones.

    python experiments/diffusion_sampler_start.py --model runs/gen21/diffusion --train runs/gen21/train.npz \
        --tuner runs/gen21/deephits --starts 999,990,980,960,920
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from hits_stamps.generation.judge import classifier_features, frechet_distance
from hits_stamps.generation.sample import load_generator
from hits_stamps.io import read_stamps
from hits_stamps.stamps import StampSet
from hits_stamps.training.modeldir import load_model


@torch.no_grad()
def sample(m, c: torch.Tensor, t0: int, lo: torch.Tensor, hi: torch.Tensor, steps: int = 10, w: float = 1.0):
    """The model's DDIM loop (`ConditionalDiffusion.sample`) with the start time and the x0 bounds as arguments."""
    g = torch.Generator().manual_seed(0)
    b = len(c)
    x = torch.randn((b, m.t_std.numel(), *m.sizes[0]), generator=g)
    times = torch.linspace(t0, 0, steps).round().long().tolist()
    null = torch.full_like(c, m.n_classes)
    lo, hi = lo.view(1, -1, 1, 1), hi.view(1, -1, 1, 1)
    for k, t in enumerate(times):
        tt = torch.full((b,), t)
        e = m(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([c, null]))
        eps = (1 + w) * e[:b] - w * e[b:]
        ab = m.alpha_bar[t]
        x0 = torch.minimum(torch.maximum((x - (1 - ab).sqrt() * eps) / ab.sqrt(), lo), hi)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        abp = m.alpha_bar[times[k + 1]] if k + 1 < len(times) else torch.tensor(1.0)
        x = abp.sqrt() * x0 + (1 - abp).sqrt() * eps
    return m.to_data_units(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--tuner", required=True)
    ap.add_argument("--starts", default="999,990,980,960,920")
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tm = load_generator(args.model)
    m = tm.module.eval()
    train = read_stamps(args.train)
    fit_part, val = train.split((0.8, 0.2), seed=0)
    x0 = m.to_model_units(torch.from_numpy(tm.preprocessor.transform(fit_part.images, report=False)))
    bounds = {"sym": (-x0.abs().amax(dim=(0, 2, 3)), x0.abs().amax(dim=(0, 2, 3))),
              "asym": (x0.amin(dim=(0, 2, 3)), x0.amax(dim=(0, 2, 3)))}
    tuner = load_model(args.tuner)
    labels = m.condition_label.tolist()
    for lab in (1, 0):
        real = val[val.labels == lab][: 2 * args.n]
        fr = classifier_features(tuner, real)
        conds = [i for i, v in enumerate(labels) if v == lab]
        c = torch.tensor(np.random.default_rng(0).choice(conds, args.n))
        for t0 in (int(s) for s in args.starts.split(",")):
            for name, (lo, hi) in bounds.items():
                out = sample(m, c, t0, lo, hi).numpy().transpose(0, 2, 3, 1)
                s = StampSet(images=np.ascontiguousarray(out), labels=np.full(args.n, lab), channels=train.channels)
                agree = float(np.mean(tuner.predict(s) == lab))
                fd = frechet_distance(classifier_features(tuner, s), fr[: args.n])
                print(f"class {lab} start {t0} (abar {float(m.alpha_bar[t0]):.1e}) bound {name}: agreement {agree:.3f}"
                      f" FD {fd:.2f} median science {np.median(out[..., 1]):.1f} (real "
                      f"{np.nanmedian(real.images[..., 1]):.1f})", flush=True)


if __name__ == "__main__":
    main()
