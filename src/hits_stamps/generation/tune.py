"""Sampling settings chosen with a selection classifier: a cvae's per-condition pixel temperature
(`tune_temperatures`) and a diffusion model's guidance weight (`tune_guidance`).

The residual noise model of a cvae (`generation.posthoc.fit_residuals`) is fitted to everything the
decoder location misses: pixel noise, and also the part of a bright source's shape the decoder
does not reproduce. For kinds built around a star, added at full strength, that second part can
make a variable star look like a bad subtraction. `tune_temperatures` therefore chooses, for each
condition (class, or kind), the pixel temperature T (t = loc + T r) at which a classifier labels
the generated stamps as their class most often, and stores it in the model's sampling models
(`condition_temperature` in `sampling.safetensors`), which `generate` then applies (times its own
`temperature`).

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
from hits_stamps.generation.sample import generate, load_generator, resolve_mode, sampling_of
from hits_stamps.stamps import LABEL_NAMES
from hits_stamps.training.modeldir import CONFIG, WEIGHTS, TrainedModel, load_model, read_json, save_weights, write_json

DEFAULT_TEMPERATURES = (0.25, 0.5, 0.75, 1.0)


def _near_best(agreement: dict[float, float], n: int) -> list[float]:
    """The settings whose agreement (over n stamps) is within one binomial standard error of the best one."""
    best = max(agreement.values())
    se = max(math.sqrt(best * (1 - best) / n), 1.0 / n)
    return [k for k, a in agreement.items() if a >= best - se]


def _choose(agreement: dict[float, float], n: int) -> float:
    """The largest temperature whose agreement is within one binomial standard error of the best one."""
    return max(_near_best(agreement, n))


def tune_temperatures(
    model: str | os.PathLike | TrainedModel,
    classifier: str | os.PathLike | TrainedModel,
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES,
    n_per_condition: int = 300,
    seed: int = 0,
    save: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Choose and set `condition_temperature` of a cvae; with `save`, rewrite its sampling models and record the choice.

    For each condition k (a kind for a kind-conditioned model, else a class) and each temperature T,
    `n_per_condition` stamps are generated as k with the model's default latent and pixel mode (the
    same seed at every T, so only the noise amplitude changes) and labelled by `classifier`; the
    agreement is the fraction labelled as k's class. Returns {"conditions": {name: {"label",
    "agreement": {T: a}, "chosen": T}}, "temperatures", "n_per_condition", "classifier", "mode"}; with
    `save` the same goes into config.json under "sampling" and `sampling.safetensors` is rewritten.
    """
    temps = sorted({float(t) for t in temperatures})
    if not temps or any(not 0.0 < t <= 1.0 for t in temps):
        raise HitsStampsError(f"temperatures must be in (0, 1]; got {list(temperatures)}")
    if n_per_condition < 1:
        raise HitsStampsError(f"n_per_condition must be >= 1; got {n_per_condition}")
    tm = load_generator(model)
    judge = classifier if isinstance(classifier, TrainedModel) else load_model(classifier)
    if not judge.spec.task.classifies:
        raise HitsStampsError(f"{judge.path}: the selection model must be a classifier, not a generator")
    mode = resolve_mode(tm, None)
    if mode == "loc":
        raise HitsStampsError(f"{tm.path}: a generator without pixel noise has no temperature to tune")
    module, sm = tm.module, sampling_of(tm)
    names = list(module.kinds) if module.kinds else [LABEL_NAMES[k] for k in range(module.n_classes)]
    previous = sm.condition_temperature.clone()
    sm.condition_temperature.fill_(1.0)
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
        sm.condition_temperature.copy_(previous)
        raise
    chosen = torch.tensor([rows[name]["chosen"] for name in names], dtype=sm.condition_temperature.dtype)
    sm.condition_temperature.copy_(chosen)
    result = {"conditions": rows, "temperatures": temps, "n_per_condition": int(n_per_condition), "seed": int(seed),
              "classifier": str(judge.path), "mode": mode}
    if save:
        sm.save(tm.path)
        config = read_json(Path(tm.path) / CONFIG)
        config["sampling"] = {"setting": "condition_temperature",
                              "condition_temperature": {n: rows[n]["chosen"] for n in names},
                              "tuned_with": result["classifier"], "tuned_with_model": judge.name,
                              "temperatures": temps,
                              "n_per_condition": int(n_per_condition), "seed": int(seed)}
        write_json(Path(tm.path) / CONFIG, config)
        tm.config = config
    return result


DEFAULT_GUIDANCES = (0.0, 0.5, 1.0, 2.0, 3.0)


def _choose_guidance(worst: dict[float, float], n: int) -> float:
    """The smallest guidance whose worst-class agreement is within one binomial standard error of the best one.

    Ties go to the smaller weight: guidance trades diversity for agreement, so it is raised only
    when that clearly helps.
    """
    return min(_near_best(worst, n))


def tune_guidance(
    model: str | os.PathLike | TrainedModel,
    classifier: str | os.PathLike | TrainedModel,
    guidances: tuple[float, ...] = DEFAULT_GUIDANCES,
    n_per_class: int = 300,
    seed: int = 0,
    steps: int | None = None,
    save: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Choose a diffusion model's classifier-free guidance weight w with a selection classifier.

    For each w, `n_per_class` stamps of each class are generated (the same seed at every w, so the
    same starting noise) and labelled by `classifier`; the agreement of class c is the fraction
    labelled c, and w is chosen by its worst class (`_choose_guidance`). The classifier must not
    be the one that judges the generator afterwards (`judge.check_independent_judge` refuses it and
    its architecture). With `save`, the `guidance` buffer is rewritten in the weights and config.json
    records {"sampling": {"guidance", "tuned_with", "tuned_with_model", "setting": "guidance", ...}}.
    """
    ws = sorted({float(w) for w in guidances})
    if not ws or any(not (math.isfinite(w) and w >= 0) for w in ws):
        raise HitsStampsError(f"guidance weights must be finite and >= 0; got {list(guidances)}")
    if n_per_class < 1:
        raise HitsStampsError(f"n_per_class must be >= 1; got {n_per_class}")
    tm = load_generator(model)
    if not getattr(tm.module, "is_diffusion", False):
        raise HitsStampsError(f"{tm.path}: guidance applies to diffusion models; {tm.name} has none "
                              "(tune a cvae's temperatures with tune_temperatures)")
    judge = classifier if isinstance(classifier, TrainedModel) else load_model(classifier)
    if not judge.spec.task.classifies:
        raise HitsStampsError(f"{judge.path}: the selection model must be a classifier, not a generator")
    agreement: dict[float, dict[str, float]] = {}
    for w in ws:
        agreement[w] = {}
        for label in (1, 0):
            gen = generate(tm, n_per_class, label, seed=seed + label, guidance=w, steps=steps)
            agreement[w][LABEL_NAMES[label]] = float(np.mean(judge.predict(gen) == label))
        if progress:
            print(f"w={w:g}: " + ", ".join(f"{k} {a:.3f}" for k, a in agreement[w].items()), flush=True)
    worst = {w: min(a.values()) for w, a in agreement.items()}
    chosen = _choose_guidance(worst, n_per_class)
    result = {"agreement": agreement, "chosen": chosen, "guidances": ws, "n_per_class": int(n_per_class),
              "seed": int(seed), "steps": int(steps or tm.module.sampling_steps), "classifier": str(judge.path),
              "classifier_model": judge.name}
    if save:
        tm.module.guidance.fill_(chosen)
        save_weights(tm.module, Path(tm.path) / WEIGHTS)
        config = read_json(Path(tm.path) / CONFIG)
        config["sampling"] = {"setting": "guidance", "guidance": chosen, "tuned_with": str(judge.path),
                              "tuned_with_model": judge.name, "guidances": ws, "n_per_class": int(n_per_class),
                              "seed": int(seed), "steps": result["steps"]}
        write_json(Path(tm.path) / CONFIG, config)
        tm.config = config
    return result
