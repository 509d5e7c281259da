"""Per-condition pixel temperature of a trained cvae, chosen with a selection classifier.

The residual noise model of a cvae (`ConditionalVAE.fit_residuals`) is fitted to everything the
decoder location misses: pixel noise, and also the part of a bright source's shape the decoder
does not reproduce. For kinds built around a star, added at full strength, that second part can
make a variable star look like a bad subtraction. `tune_temperatures` therefore chooses, for each
condition (class, or kind), the pixel temperature T (t = loc + T r) at which a classifier labels
the generated stamps as their class most often, and stores it in the model's
`condition_temperature` buffer, which `generate` then applies (times its own `temperature`).

The classifier used here must not be the one that judges the generator afterwards (the judged
agreement would then be the tuned quantity itself): give a second classifier trained on the same
real stamps (e.g. deephits when the judge is rotinv-cnn). Ties go to the larger temperature: among
the temperatures whose agreement is within one binomial standard error of the best, the largest
is kept, so the model's own noise (T = 1) stays unless a lower one is clearly better.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hits_stamps.errors import HitsStampsError
from hits_stamps.generation.sample import generate, load_generator, resolve_mode
from hits_stamps.stamps import LABEL_NAMES
from hits_stamps.training.modeldir import CONFIG, WEIGHTS, TrainedModel, load_model, read_json, save_weights, write_json

DEFAULT_TEMPERATURES = (0.25, 0.5, 0.75, 1.0)


def _choose(agreement: dict[float, float], n: int) -> float:
    """The largest temperature whose agreement is within one binomial standard error of the best one."""
    best = max(agreement.values())
    se = max(math.sqrt(best * (1 - best) / n), 1.0 / n)
    return max(t for t, a in agreement.items() if a >= best - se)


def tune_temperatures(
    model: str | os.PathLike | TrainedModel,
    classifier: str | os.PathLike | TrainedModel,
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES,
    n_per_condition: int = 300,
    seed: int = 0,
    save: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Choose and set `condition_temperature` of a cvae; with `save`, rewrite its weights and record the choice.

    For each condition k (a kind for a kind-conditioned model, else a class) and each temperature T,
    `n_per_condition` stamps are generated as k with the model's default latent and pixel mode (the
    same seed at every T, so only the noise amplitude changes) and labelled by `classifier`; the
    agreement is the fraction labelled as k's class. Returns {"conditions": {name: {"label",
    "agreement": {T: a}, "chosen": T}}, "temperatures", "n_per_condition", "classifier", "mode"}; with
    `save` the same goes into config.json under "sampling" and the weights file is rewritten.
    """
    temps = sorted({float(t) for t in temperatures})
    if not temps or any(not 0.0 < t <= 1.0 for t in temps):
        raise HitsStampsError(f"temperatures must be in (0, 1]; got {list(temperatures)}")
    if n_per_condition < 1:
        raise HitsStampsError(f"n_per_condition must be >= 1; got {n_per_condition}")
    tm = load_generator(model)
    judge = classifier if isinstance(classifier, TrainedModel) else load_model(classifier)
    if judge.spec.task == "generator":
        raise HitsStampsError(f"{judge.path}: the selection model must be a classifier, not a generator")
    mode = resolve_mode(tm, None)
    if mode == "loc":
        raise HitsStampsError(f"{tm.path}: a generator without pixel noise has no temperature to tune")
    module = tm.module
    names = list(module.kinds) if module.kinds else [LABEL_NAMES[k] for k in range(module.n_classes)]
    previous = module.condition_temperature.clone()
    module.condition_temperature.fill_(1.0)
    rows: dict[str, Any] = {}
    try:
        for k, name in enumerate(names):
            label = int(module.condition_label[k])
            kind = name if module.kinds else None
            agreement = {}
            for t in temps:
                gen = generate(tm, n_per_condition, label, kind=kind, seed=seed + k, temperature=t)
                agreement[t] = float(np.mean(judge.predict(gen) == label))
            rows[name] = {"label": LABEL_NAMES[label], "agreement": agreement,
                          "chosen": _choose(agreement, n_per_condition)}
            if progress:
                print(f"{name}: " + ", ".join(f"T={t:g} {a:.3f}" for t, a in agreement.items())
                      + f" -> {rows[name]['chosen']:g}", flush=True)
    except BaseException:
        module.condition_temperature.copy_(previous)
        raise
    chosen = torch.tensor([rows[name]["chosen"] for name in names], dtype=module.condition_temperature.dtype)
    module.condition_temperature.copy_(chosen)
    result = {"conditions": rows, "temperatures": temps, "n_per_condition": int(n_per_condition), "seed": int(seed),
              "classifier": str(judge.path), "mode": mode}
    if save:
        save_weights(module, Path(tm.path) / WEIGHTS)
        config = read_json(Path(tm.path) / CONFIG)
        config["sampling"] = {"condition_temperature": {n: rows[n]["chosen"] for n in names},
                              "tuned_with": result["classifier"], "tuned_with_model": judge.name,
                              "temperatures": temps,
                              "n_per_condition": int(n_per_condition), "seed": int(seed)}
        write_json(Path(tm.path) / CONFIG, config)
        tm.config = config
    return result
