"""Does training on generated stamps help? `augmentation_experiment` answers it by measurement.

For each fraction f of the real training stamps, three classifiers of the same architecture
(`rotinv-cnn` by default) are trained with the same number of optimizer steps
(TrainConfig.steps_per_epoch fixed per fraction) and the same real validation set:

- `none`:      the f-subset only;
- `dihedral`:  the f-subset with random rotations by 90 degrees and flips (the simple baseline);
- `generated`: the f-subset plus `generated_per_real` x as many generated stamps, with the
  subset's class balance, drawn from a cvae.

The cvae for fraction f < 1 is, by default, retrained on that same f-subset with the training
configuration of `cvae_dir` (so the generator knows no more real stamps than the classifier);
`cvae_dir` itself is used for f = 1 and, with `retrain_cvae=False`, for every fraction (the
generator then has seen stamps the classifier has not: an optimistic setting, recorded in the
result). A retrained cvae takes over the per-condition pixel temperatures of `cvae_dir`
(`generation.tune`) when both have the same conditions. Each classifier is scored on the real
test set: accuracy at p >= 0.5 and the FNR at the threshold where FPR = 1%.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from hits_stamps.errors import HitsStampsError
from hits_stamps.evaluation.metrics import fnr_at_fpr
from hits_stamps.generation.sample import GENERATED_KIND, generate_like, load_generator, sampling_of, train_config_of
from hits_stamps.stamps import StampSet
from hits_stamps.training.loop import TrainConfig, fit, resolve_recipe
from hits_stamps.training.modeldir import TrainedModel, write_json

AUGMENTATION_JSON = "augmentation.json"
ARMS = ("none", "dihedral", "generated")


def _score(model, test: StampSet) -> dict[str, float]:
    p = model.predict_proba(test)[:, 1]
    fnr, thr = fnr_at_fpr(test.labels, p, 0.01)
    return {"accuracy": float(np.mean((p >= 0.5) == (test.labels == 1))), "fnr_at_fpr_1pct": fnr,
            "threshold_at_fpr_1pct": thr}


def augmentation_experiment(
    train: StampSet,
    test: StampSet,
    cvae_dir: str | os.PathLike,
    fractions: tuple[float, ...] = (0.05, 0.1, 0.25, 1.0),
    seed: int = 0,
    epochs: int = 5,
    out_dir: str | os.PathLike = "augmentation",
    *,
    classifier_model: str = "rotinv-cnn",
    classifier_kwargs: dict[str, Any] | None = None,
    generated_per_real: float = 1.0,
    retrain_cvae: bool = True,
    val_fraction: float = 0.1,
    temperature: float = 1.0,
    latent: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train and score the three arms at every fraction; writes out_dir/augmentation.json and a figure.

    train, test: labelled real (or simulated) stamps. A seeded, stratified `val_fraction` of
    `train` is held out once as the validation set of every model; fraction f takes a seeded,
    stratified f-subset of the rest. Returns {"fractions": {str(f): {...}}, "settings": {...}}
    with, per fraction, the arms' test accuracy and FNR at FPR = 1% and the differences
    `generated - none` and `generated - dihedral`.
    """
    fractions = tuple(float(f) for f in fractions)
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise HitsStampsError(f"fractions must be in (0, 1]; got {list(fractions)}")
    for name, s in (("train", train), ("test", test)):
        if np.any(s.labels < 0):
            raise HitsStampsError(f"{name} stamps must all be labelled; {int(np.sum(s.labels < 0))} are not")
        if s.kind is not None and np.any(s.kind == GENERATED_KIND):
            raise HitsStampsError(f"{name} stamps include generated ones (kind 'generated'); give real stamps only")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_cvae = load_generator(cvae_dir)
    cvae_cfg = train_config_of(base_cvae)
    pool, val = train.split((1 - val_fraction, val_fraction), seed=seed)
    batch = resolve_recipe(TrainConfig(model=classifier_model)).batch_size
    results: dict[str, Any] = {}
    t_all = time.perf_counter()
    for f in fractions:
        subset = pool if f >= 1 else pool.split((f, 1 - f), seed=seed)[0]
        if len(np.unique(subset.labels)) < 2:
            raise HitsStampsError(f"fraction {f} leaves {len(subset)} training stamps with one class only")
        tag = f"f{f:g}"
        if f < 1 and retrain_cvae:
            cfg = dataclasses.replace(cvae_cfg, seed=seed)
            cvae = fit(cfg, subset, out / tag / "cvae", val=val, overwrite=True, progress=progress)
            cvae_note = f"retrained on the {len(subset)}-stamp subset"
            if _carry_temperatures(base_cvae, cvae):
                cvae_note += ", with the given cvae's per-condition temperatures"
        else:
            cvae, cvae_note = base_cvae, f"{base_cvae.path} (as given)"
        synth = generate_like(cvae, subset, generated_per_real, seed + 17, temperature=temperature, latent=latent)
        synth.ids = np.array([f"aug_{tag}_{i}" for i in synth.ids])
        steps = math.ceil((len(subset) + len(synth)) / batch)
        row: dict[str, Any] = {"n_real": len(subset), "n_generated": len(synth), "steps_per_epoch": steps,
                               "epochs": epochs, "cvae": cvae_note, "arms": {}}
        for arm in ARMS:
            data = StampSet.concat([subset, synth]) if arm == "generated" else subset
            cfg = TrainConfig(
                model=classifier_model, seed=seed, epochs=epochs, steps_per_epoch=steps,
                model_kwargs=dict(classifier_kwargs or {}),
                recipe_overrides={"augment": "dihedral"} if arm == "dihedral" else {},
            )
            t0 = time.perf_counter()
            model = fit(cfg, data, out / tag / arm, val=val, overwrite=True, progress=progress)
            row["arms"][arm] = {**_score(model, test), "train_seconds": time.perf_counter() - t0}
        arms = row["arms"]
        for ref in ("none", "dihedral"):
            row[f"generated_minus_{ref}"] = {
                k: arms["generated"][k] - arms[ref][k] for k in ("accuracy", "fnr_at_fpr_1pct")
            }
        results[f"{f:g}"] = row
    summary = {
        "fractions": results,
        "settings": {
            "classifier_model": classifier_model, "classifier_kwargs": dict(classifier_kwargs or {}),
            "epochs": epochs, "seed": seed, "generated_per_real": generated_per_real,
            "retrain_cvae": retrain_cvae, "temperature": temperature, "latent": latent, "cvae_dir": str(base_cvae.path),
            "n_train_pool": len(pool),
            "n_val": len(val), "n_test": len(test), "batch_size": batch,
        },
        "seconds": time.perf_counter() - t_all,
    }
    write_json(out / AUGMENTATION_JSON, summary)
    summary["figure"] = str(plot_augmentation(summary, out / "gen_augmentation.png"))
    write_json(out / AUGMENTATION_JSON, summary)
    return summary


def _carry_temperatures(base: TrainedModel, new: TrainedModel) -> bool:
    """Give a retrained cvae the per-condition pixel temperatures of the one it was retrained from (generation.tune),
    when both have the same conditions and the given one's are not all 1; saved into its sampling models. True if
    carried."""
    src, dst = sampling_of(base).condition_temperature, sampling_of(new).condition_temperature
    if tuple(base.module.kinds) != tuple(new.module.kinds) or src.shape != dst.shape or bool((src == 1).all()):
        return False
    dst.copy_(src)
    sampling_of(new).save(new.path)
    return True


def plot_augmentation(summary: dict[str, Any], path: str | os.PathLike) -> Path:
    """Test accuracy and FNR at FPR = 1% against the fraction of real training stamps, one line per arm."""
    from matplotlib.figure import Figure

    from hits_stamps.plotting import save_png

    rows = summary["fractions"]
    fr = sorted(rows, key=float)
    x = [float(f) * 100 for f in fr]
    fig = Figure(figsize=(8, 3.2))
    axes = fig.subplots(1, 2, gridspec_kw={"wspace": 0.35})
    for arm in ARMS:
        axes[0].plot(x, [rows[f]["arms"][arm]["accuracy"] for f in fr], marker="o", label=arm)
        axes[1].plot(x, [rows[f]["arms"][arm]["fnr_at_fpr_1pct"] for f in fr], marker="o", label=arm)
    for ax, name in zip(axes, ("test accuracy", "FNR at FPR = 1%"), strict=True):
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{v:g}" for v in x])  # the fractions measured, not powers of ten
        ax.minorticks_off()
        ax.set_xlabel("% of real training stamps")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{summary['settings']['classifier_model']}: real only, + rotations/flips, + generated stamps",
                 fontsize=10)
    return save_png(fig, path, dpi=90)
