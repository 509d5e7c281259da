"""Judging generated stamps with an independent classifier (`evaluate_generator` -> generation.json).

The judge is a classifier trained on real (or simulated) stamps only, never on generated ones:
either a trained classifier directory passed as `classifier`, or one trained here (`rotinv-cnn` by
default) on the generator's training file. Against a labelled test set it measures:

- agreement_c: the fraction of generated class-c stamps that the judge labels c (p >= 0.5), per
  kind as well for a kind-conditioned generator (`agreement_per_kind`); beside it the judge's own
  recall on the real test stamps, per class and per kind, which is what a perfect generator scores;
- Fréchet distance (Heusel et al. 2017) between real and generated class-c stamps in the judge's
  penultimate features, ``FD = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))``, with the
  floor: the same distance between two disjoint halves of the real class-c test stamps (the
  generated sample has the size of one half, so both numbers carry the same finite-sample bias);
- TSTR / TRTR: test accuracy of a classifier of the judge's architecture and recipe trained on
  generated stamps only, over that of the judge itself (trained on the real training stamps);
- physical consistency (`physical_consistency`): the difference channel against science minus
  template, and the SNR channel against difference / noise, on generated and real stamps;
- memorisation: the distance from every generated stamp to its nearest training stamp, against the
  same distance for held-out real stamps (distances in the generator's transformed units);
- figures: real vs generated grids per class, reconstructions of test stamps, a latent
  interpolation from a real to a bogus stamp.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hits_stamps import plotting as figures
from hits_stamps.errors import HitsStampsError
from hits_stamps.generation.sample import (
    GENERATED_KIND,
    conditions_of,
    generate,
    generate_like,
    interpolate,
    is_diffusion,
    load_generator,
    peak_snr,
    quiet_inputs,
    reconstruct,
    resolve_latent,
    resolve_mode,
    train_config_of,
)
from hits_stamps.io import read_stamps
from hits_stamps.results import GeneratorJudgement
from hits_stamps.stamps import StampSet
from hits_stamps.training.loop import TrainConfig, fit
from hits_stamps.training.modeldir import TrainedModel, file_sha256, load_model, read_config

GENERATION_JSON = "generation.json"
HITS_CHANNELS = ("template", "science", "difference", "snr")
CLASSES = (("real", 1), ("bogus", 0))


# ----------------------------------------------------------------------------- statistics
def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature rows a (N, F) and b (M, F).

    FD = |mu_a - mu_b|^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2)), with sample covariances
    (ddof 1). Tr((S_a S_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of
    the symmetric S_a^(1/2) S_b S_a^(1/2), which is stable where S_a or S_b is singular.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N >= 2, F) feature arrays with the same F; got {a.shape} and {b.shape}")
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(sa)
    sa_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(sa_half @ sb @ sa_half)
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2.0 * np.sqrt(np.clip(cross, 0, None)).sum())


def _pearson_rows(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pearson correlation per row of (N, P) arrays (NaN where a row is constant)."""
    u = u - u.mean(1, keepdims=True)
    v = v - v.mean(1, keepdims=True)
    den = np.sqrt((u * u).sum(1) * (v * v).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (u * v).sum(1) / den, np.nan)


def _border(plane: np.ndarray, width: int = 3) -> np.ndarray:
    """(N, H, W) -> (N, P) pixels within `width` of the stamp edge."""
    h, w = plane.shape[1:]
    mask = np.ones((h, w), bool)
    mask[width : h - width, width : w - width] = False
    return plane[:, mask]


def physical_consistency(stamps: StampSet) -> dict[str, float] | None:
    """Medians over stamps of four per-stamp statistics; None without the four HiTS channels.

    - diff_corr: Pearson r of the difference pixels with science - template (1 when the
      difference is an unmatched subtraction; a PSF-matched one gives somewhat less);
    - diff_resid: rms(difference - (science - template)) / rms(difference);
    - snr_corr: Pearson r of the SNR pixels with the difference pixels (1 for a uniform noise map);
    - snr_noise_logratio: |ln(sigma_snr / sigma_bg)|, where sigma_snr = sum(d s) / sum(s^2) is the
      noise implied by the SNR channel (least-squares slope of difference on SNR) and sigma_bg =
      1.4826 MAD of the difference in the 3-pixel border (0 when they agree).
    Non-finite pixels are set to 0 first. Real stamps measured the same way give the baseline.
    """
    if len(stamps) == 0 or not set(HITS_CHANNELS) <= set(stamps.channels):
        return None
    x = np.nan_to_num(stamps.images.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    tmpl, sci, diff, snr = (x[..., stamps.channels.index(ch)] for ch in HITS_CHANNELS)  # (N, H, W) each
    n = len(stamps)
    d, s, sub = diff.reshape(n, -1), snr.reshape(n, -1), (sci - tmpl).reshape(n, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        resid = np.sqrt(((d - sub) ** 2).mean(1)) / np.sqrt((d * d).mean(1))
        sigma_snr = (d * s).sum(1) / (s * s).sum(1)
        bg = _border(diff)
        sigma_bg = 1.4826 * np.median(np.abs(bg - np.median(bg, 1, keepdims=True)), 1)
        logratio = np.abs(np.log(np.abs(sigma_snr) / sigma_bg))
    stats = {
        "diff_corr": _pearson_rows(d, sub),
        "diff_resid": resid,
        "snr_corr": _pearson_rows(s, d),
        "snr_noise_logratio": logratio,
    }
    return {k: float(np.nanmedian(np.where(np.isfinite(v), v, np.nan))) if np.isfinite(v).any() else float("nan")
            for k, v in stats.items()}


PEAK_SNR_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def peak_snr_comparison(generated: StampSet, real: StampSet) -> dict[str, Any] | None:
    """The |SNR| peak (`StampSet.snr` of generated stamps) of generated against real stamps of one class.

    Quantiles `PEAK_SNR_QUANTILES` of each and the two-sample Kolmogorov-Smirnov statistic (0: the
    same distribution). Noise that grows too much on bright sources shows up here as a longer tail.
    Non-finite pixels count as 0. None without an `snr` channel or without stamps.
    """
    from scipy.stats import ks_2samp

    if len(generated) == 0 or len(real) == 0 or "snr" not in generated.channels or "snr" not in real.channels:
        return None

    g, r = peak_snr(generated.images, generated.channels), peak_snr(real.images, real.channels)
    return {"quantiles": list(PEAK_SNR_QUANTILES), "generated": np.quantile(g, PEAK_SNR_QUANTILES).tolist(),
            "real": np.quantile(r, PEAK_SNR_QUANTILES).tolist(), "ks": float(ks_2samp(g, r).statistic)}


def nearest_distances(query: np.ndarray, reference: np.ndarray, batch: int = 512) -> np.ndarray:
    """Euclidean distance from each query row (N, P) to its nearest reference row (M, P), (N,)."""
    ref = torch.as_tensor(np.asarray(reference, np.float32))
    out = []
    for start in range(0, len(query), batch):
        q = torch.as_tensor(np.asarray(query[start : start + batch], np.float32))
        out.append(torch.cdist(q, ref).min(dim=1).values.numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


@torch.no_grad()
def negative_elbo(gen: TrainedModel, stamps: StampSet, seed: int = 0, batch_size: int = 512) -> dict[str, float]:
    """Held-out negative ELBO per stamp (one seeded posterior sample per stamp, beta = 1).

    `neg_elbo`: in the model's transformed units (what training minimises); `neg_elbo_data`: in the
    units of the data (minus the log-Jacobian of the input transform), comparable across input
    transforms; `nll_data` and `kl`: its two terms. Lower is better.
    """
    from hits_stamps.models.cvae import cvae_objective

    module = gen.module.eval()
    labelled = stamps if np.all(stamps.labels >= 0) else stamps[stamps.labels >= 0]
    conds = conditions_of(gen, labelled)
    sums = {"neg_elbo": 0.0, "neg_elbo_data": 0.0, "nll_data": 0.0, "kl": 0.0}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(labelled), batch_size):
            x = quiet_inputs(gen, labelled.images[start : start + batch_size])
            y = conds[start : start + batch_size]
            res = cvae_objective(module, x, y, len(labelled))
            logdet = float(module.transform.log_abs_det_jacobian(x).mean())
            b = len(x)
            sums["neg_elbo"] += float(res.loss) * b
            sums["neg_elbo_data"] += (float(res.loss) - logdet) * b
            sums["nll_data"] += res.parts["nll_data"] * b
            sums["kl"] += res.parts["kl"] * b
    return {k: v / max(len(labelled), 1) for k, v in sums.items()}


# ----------------------------------------------------------------------------- the judge
@torch.no_grad()
def classifier_features(tm: TrainedModel, stamps: StampSet, batch_size: int = 1024) -> np.ndarray:
    """Penultimate features (N, F) of a classifier: its `features(x)` method, else the input of its last Linear."""
    module = tm.module.eval()
    captured: list[torch.Tensor] = []
    hook = None
    if not hasattr(module, "features"):
        linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise HitsStampsError(f"{tm.path}: classifier {tm.name} has no features() method and no Linear layer")
        hook = linears[-1].register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
    out = []
    try:
        for start in range(0, len(stamps), batch_size):
            x = quiet_inputs(tm, stamps.images[start : start + batch_size])
            if hook is None:
                out.append(module.features(x).flatten(1).numpy())
            else:
                captured.clear()
                module(x)
                out.append(captured[-1].flatten(1).numpy())
    finally:
        if hook is not None:
            hook.remove()
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 0))


def settings_chosen_with(gen: TrainedModel) -> list[dict[str, str]]:
    """The classifiers that chose a sampling setting of a generator (config.json "sampling"): path, model, setting."""
    out = []
    for key, default in (("sampling", "condition_temperature"), ("derivation", "candidates")):
        part = gen.config.get(key) or {}
        path = part.get("tuned_with")
        if not path:
            continue
        model = part.get("tuned_with_model")
        if model is None:  # written before the architecture was recorded
            try:
                model = read_config(path, full=False)["model"]
            except HitsStampsError:
                model = "unknown"
        out.append({"path": str(path), "model": str(model), "setting": str(part.get("setting", default))})
    return out


def check_independent_judge(gen: TrainedModel, judge: TrainedModel) -> dict[str, Any]:
    """Refuse a judge that took part in choosing the generator's settings; return who did what.

    A judge is independent when it is neither the directory nor the architecture of any classifier
    that tuned the generator (`settings_chosen_with`): the same architecture trained again on the
    same stamps shares most of its blind spots, so a setting tuned to please one would be judged by
    its twin. Returns {"judge": {path, model}, "tuners": [...], "independent": True} for generation.json.
    """
    tuners = settings_chosen_with(gen)
    jpath = Path(judge.path).resolve()
    for t in tuners:
        if Path(t["path"]).resolve() == jpath:
            raise HitsStampsError(f"{judge.path}: this classifier chose the generator's settings ({t['setting']}); "
                                  "the judge must be another classifier, of another architecture")
        if t["model"] == judge.name:
            raise HitsStampsError(f"{judge.path}: the judge is a {judge.name}, the architecture that chose the "
                                  f"generator's settings ({t['path']}); judge with another architecture")
    return {"judge": {"path": str(judge.path), "model": judge.name}, "tuners": tuners, "independent": True,
            "rule": "settings chosen with the tuner(s) on generated stamps; the judge took no part in any choice "
                    "and is of another architecture"}


def _as_stamps(data: StampSet | str | os.PathLike, what: str) -> StampSet:
    stamps = data if isinstance(data, StampSet) else read_stamps(data)
    keep = stamps.labels >= 0
    if not keep.any():
        raise HitsStampsError(f"{what} has no labelled stamps (labels 0 or 1)")
    return stamps if keep.all() else stamps[keep]


def _reference_train(gen: TrainedModel, train, data: StampSet, seed: int) -> tuple[StampSet, StampSet, str]:
    """(real training stamps for the judge, real test stamps, where the training stamps came from)."""
    if train is not None:
        return _as_stamps(train, "training data"), data, "given"
    info = gen.config.get("training_data", {})
    path = info.get("path")
    if path and Path(path).exists() and (info.get("sha256") in (None, file_sha256(path))):
        return _as_stamps(path, f"training data {path}"), data, f"generator training file {path}"
    first, second = data.split((0.5, 0.5), seed=seed)
    return first, second, "half of the test data (the generator's training file is not available)"


def _generator_training_part(gen: TrainedModel, reference: StampSet) -> tuple[StampSet, str]:
    """The stamps the generator was fitted on: the loop's seeded train/val split of its training file."""
    cfg = gen.config
    vf = float(cfg.get("train_config", {}).get("val_fraction", 0.2))
    n_train = cfg.get("training_data", {}).get("n_train")
    if n_train == len(reference):
        return reference, "all training stamps"
    part = reference.split((1 - vf, vf), seed=int(cfg.get("seed", 0)))[0]
    if n_train == len(part):
        return part, "the generator's training split (validation part excluded)"
    return reference, f"all {len(reference)} reference stamps (generator recorded n_train={n_train})"


def _accuracy(tm: TrainedModel, stamps: StampSet) -> tuple[float, dict[str, float], np.ndarray]:
    """Accuracy of `tm` on labelled stamps, its recall per class, and its predictions (N,)."""
    pred = tm.predict(stamps)
    per_class = {name: float(np.mean(pred[stamps.labels == lab] == lab)) for name, lab in CLASSES
                 if np.any(stamps.labels == lab)}
    return float(np.mean(pred == stamps.labels)), per_class, pred


def evaluate_generator(
    model_dir: str | os.PathLike | TrainedModel,
    data: StampSet | str | os.PathLike,
    out_dir: str | os.PathLike,
    classifier: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    *,
    train: StampSet | str | os.PathLike | None = None,
    classifier_model: str = "rotinv-cnn",
    classifier_epochs: int | None = None,
    classifier_kwargs: dict[str, Any] | None = None,
    max_per_class: int = 2000,
    mode: str | None = None,
    temperature: float = 1.0,
    latent: str | None = None,
    tstr: bool = True,
    max_reference: int = 20000,
    make_figures: bool = True,
) -> dict[str, Any]:
    """Judge a trained generator on labelled test stamps `data`; writes out_dir/generation.json.

    `classifier`: a trained classifier directory used as the judge (trained on real/simulated
    stamps only); without it a `classifier_model` is trained (seeded, `classifier_epochs` or its
    recipe's) on `train`, else on the generator's recorded training file, else on a seeded half of
    `data` (the other half is then the test set). `max_per_class` caps the generated and real test
    stamps per class; `max_reference` caps the training stamps searched for nearest neighbours;
    `mode`, `temperature` and `latent` are passed to `generate` (None: the model's defaults).
    Returns the dict written to generation.json (`hits_stamps.results.GeneratorJudgement.to_json()`;
    keys in the module docstring and docs/generation.md).
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = _Log(progress)
    gen = load_generator(model_dir)
    test = _as_stamps(data, "test data")
    gen.check_input(test)
    reference, test, ref_source = _reference_train(gen, train, test, seed)
    gen.check_input(reference)
    if reference.kind is not None and np.any(reference.kind == GENERATED_KIND):
        raise HitsStampsError("the judge's training stamps include generated ones (kind 'generated'); "
                              "the judge must be trained on real or simulated stamps only")
    rng = np.random.default_rng(seed)
    if not is_diffusion(gen):  # a diffusion model has neither (generate records "ddim" and "noise")
        latent = resolve_latent(gen, latent)
        mode = resolve_mode(gen, mode)
    result: dict[str, Any] = {"generator": str(gen.path), "generator_model": gen.name, "seed": int(seed),
                              "mode": mode, "temperature": temperature,
                              "latent": latent,
                              "reference_train": ref_source, "notes": []}

    # the independent classifier
    if classifier is not None:
        judge = load_model(classifier)
        if not judge.spec.task.classifies:
            raise HitsStampsError(f"{classifier}: the judge must be a classifier; {judge.name} is a generator")
        judge_cfg = train_config_of(judge)
        trained_here = False
    else:
        judge_cfg = TrainConfig(model=classifier_model, seed=seed, epochs=classifier_epochs,
                                model_kwargs=dict(classifier_kwargs or {}))
        log(f"training the judge ({classifier_model}) on {len(reference)} real stamps")
        judge = fit(judge_cfg, reference, out / "judge_classifier", overwrite=True, progress=progress)
        trained_here = True
    judge.check_input(test)
    result["roles"] = check_independent_judge(gen, judge)
    trtr, trtr_per_class, pred = _accuracy(judge, test)
    result["judge"] = {"path": str(judge.path), "model": judge.name, "trained_here": trained_here,
                       "test_accuracy": trtr, "test_recall_per_class": trtr_per_class}
    if test.kind is not None:  # how often the judge itself is right on each kind of real stamp
        result["judge"]["test_recall_per_kind"] = {
            str(k): float(np.mean(pred[test.kind == k] == test.labels[test.kind == k])) for k in sorted(set(test.kind))
        }

    # generated and real samples per class
    generated: dict[str, StampSet] = {}
    real_test: dict[str, StampSet] = {}
    gen_seconds, n_gen = 0.0, 0
    for name, lab in CLASSES:
        idx = np.flatnonzero(test.labels == lab)
        if len(idx) < 4:
            raise HitsStampsError(f"test data needs at least 4 {name} stamps; found {len(idx)}")
        idx = rng.permutation(idx)[:max_per_class]
        real_test[name] = test[np.sort(idx)]
        t0 = time.perf_counter()
        generated[name] = generate(gen, len(idx), lab, seed=2 * seed + lab, mode=mode, temperature=temperature,
                                   latent=latent)
        gen_seconds += time.perf_counter() - t0
        n_gen += len(idx)
    result["n_generated"] = n_gen
    result["consistency"] = {name: _consistency_summary(generated[name]) for name, _ in CLASSES}
    result["test_negative_elbo"] = (None if is_diffusion(gen) else
                                    negative_elbo(gen, StampSet.concat([real_test[n] for n, _ in CLASSES]), seed))
    result["generation_stamps_per_s"] = n_gen / gen_seconds if gen_seconds > 0 else None

    # agreement and Fréchet distances
    log("agreement and Fréchet distances in the judge's features")
    per_kind: dict[str, dict[str, float]] = {}
    for name, lab in CLASSES:
        p = judge.predict_proba(generated[name])[:, 1]
        agree = (p >= 0.5) == bool(lab)
        result[f"agreement_{name}"] = float(np.mean(agree))
        if "condition" in generated[name].columns:  # a kind-conditioned generator: agreement per kind
            cond = generated[name].columns["condition"]
            for i in np.unique(cond):
                kind = generated[name].meta["condition_kinds"][int(i)]
                per_kind[kind] = {"n": int(np.sum(cond == i)), "agreement": float(np.mean(agree[cond == i]))}
        real = real_test[name]
        halves = rng.permutation(len(real))
        a_idx, b_idx = np.sort(halves[: len(real) // 2]), np.sort(halves[len(real) // 2 :])
        fa = classifier_features(judge, real[a_idx])
        fb = classifier_features(judge, real[b_idx])
        fg = classifier_features(judge, generated[name][: len(b_idx)])
        result[f"frechet_{name}"] = frechet_distance(fg, fa)
        result[f"frechet_floor_{name}"] = frechet_distance(fb, fa)
    result["n_per_class"] = {name: len(real_test[name]) for name, _ in CLASSES}
    if per_kind:
        result["agreement_per_kind"] = dict(sorted(per_kind.items()))

    # TSTR / TRTR
    if tstr:
        log(f"TSTR: training {judge_cfg.model} on {len(reference)} generated stamps")
        synth = generate_like(gen, reference, 1.0, seed + 1000, mode, temperature, latent)
        synth.ids = np.array([f"tstr_{i}" for i in synth.ids])
        tstr_cfg = dataclasses.replace(judge_cfg, seed=seed)
        twin = fit(tstr_cfg, synth, out / "tstr_classifier", overwrite=True, progress=progress)
        tstr_acc, tstr_per_class, _ = _accuracy(twin, test)
        result.update({"tstr_accuracy": tstr_acc, "trtr_accuracy": trtr, "tstr_over_trtr": tstr_acc / trtr,
                       "tstr_recall_per_class": tstr_per_class})
    else:
        result.update({"tstr_accuracy": None, "trtr_accuracy": trtr, "tstr_over_trtr": None})
        result["notes"].append("TSTR skipped (tstr=False)")

    # physical consistency
    result["physical"] = {
        name: {"generated": physical_consistency(generated[name]), "real": physical_consistency(real_test[name])}
        for name, _ in CLASSES
    }
    if result["physical"]["real"]["generated"] is None:
        result["notes"].append(f"physical consistency needs the channels {HITS_CHANNELS}")

    result["peak_snr"] = {name: peak_snr_comparison(generated[name], real_test[name]) for name, _ in CLASSES}

    # memorisation
    log("memorisation: nearest training stamps")
    fitted_on, fitted_note = _generator_training_part(gen, reference)
    if len(fitted_on) > max_reference:
        fitted_on = fitted_on[np.sort(rng.choice(len(fitted_on), max_reference, replace=False))]
    flat = _model_units_flat(gen)
    ref_flat = flat(fitted_on)
    gen_flat = {n: flat(generated[n]) for n, _ in CLASSES}  # each class once, for the pooled and per-class parts
    held_flat = {n: flat(real_test[n]) for n, _ in CLASSES}
    d_gen = nearest_distances(np.concatenate(list(gen_flat.values())), ref_flat)
    d_held = nearest_distances(np.concatenate(list(held_flat.values())), ref_flat)
    copy_threshold = float(np.percentile(d_held, 1))
    result["memorisation"] = {
        "reference": fitted_note if ref_source.startswith("generator") or ref_source == "given" else ref_source,
        "n_reference": len(fitted_on),
        "median_nn_generated": float(np.median(d_gen)),
        "median_nn_held_out": float(np.median(d_held)),
        "ratio": float(np.median(d_gen) / np.median(d_held)),
        "fraction_generated_below_held_out_p1": float(np.mean(d_gen < copy_threshold)),
        "per_class": _memorisation_per_class(ref_flat, fitted_on.labels, gen_flat, held_flat),
        "units": "euclidean distance over all pixels and channels in the generator's transformed units",
    }

    # figures
    if make_figures:
        log("figures")
        result["figures"] = _figures(gen, generated, real_test, out, seed)
    result["seconds"] = time.perf_counter() - t_start
    judgement = GeneratorJudgement.from_json(result, "evaluate_generator's result")  # every key it must have
    judgement.write(out / GENERATION_JSON)
    return judgement.to_json()


def _consistency_summary(stamps: StampSet) -> dict[str, Any]:
    """How generated stamps were made consistent (`meta["consistency"]`) and, when derived, the recomputed check."""
    from hits_stamps.generation.consistent import check_consistency

    info = dict(stamps.meta.get("consistency", {"derived": False}))
    if info.get("derived"):
        info["check"] = check_consistency(stamps)
    if set(HITS_CHANNELS) <= set(stamps.channels):
        sci = stamps.images[..., stamps.channels.index("science")]
        dif = stamps.images[..., stamps.channels.index("difference")]
        info["max_abs_science"] = float(np.nanmax(np.abs(sci), initial=0.0))
        info["max_abs_difference"] = float(np.nanmax(np.abs(dif), initial=0.0))
        info["stamps_with_nan"] = int(np.sum(~np.isfinite(stamps.images).all(axis=(1, 2, 3))))
    return info


def _model_units_flat(gen: TrainedModel):
    module = gen.module

    @torch.no_grad()
    def flat(stamps: StampSet) -> np.ndarray:
        chunks = []
        for start in range(0, len(stamps), 2048):
            x = quiet_inputs(gen, stamps.images[start : start + 2048])
            chunks.append(module.to_model_units(x).flatten(1).numpy())
        return np.concatenate(chunks)

    return flat


def _memorisation_per_class(ref_flat: np.ndarray, ref_labels: np.ndarray, gen_flat: dict[str, np.ndarray],
                            held_flat: dict[str, np.ndarray]) -> dict[str, dict[str, float] | None]:
    """Per class: generated and held-out real stamps of that class against the training stamps of that class.

    All stamps as flat rows in the generator's model units: ref_flat (M, P) the training stamps with
    their labels ref_labels (M,); gen_flat and held_flat, per class name, (N, P).

    The pooled figures mix the classes, whose nearest-neighbour distances differ in scale (few, bright
    transients against many faint artifacts), so a class that reproduces its training stamps can hide
    under the other's threshold. None for a class with fewer than 2 training stamps.
    """
    out: dict[str, dict[str, float] | None] = {}
    for name, lab in CLASSES:
        ref = ref_flat[ref_labels == lab]
        if len(ref) < 2:
            out[name] = None
            continue
        d_gen = nearest_distances(gen_flat[name], ref)
        d_held = nearest_distances(held_flat[name], ref)
        out[name] = {
            "n_reference": len(ref),
            "ratio": float(np.median(d_gen) / np.median(d_held)),
            "fraction_generated_below_held_out_p1": float(np.mean(d_gen < np.percentile(d_held, 1))),
            "fraction_generated_below_held_out_p5": float(np.mean(d_gen < np.percentile(d_held, 5))),
        }
    return out


def _figures(gen: TrainedModel, generated: dict[str, StampSet], real: dict[str, StampSet], out: Path,
             seed: int) -> dict[str, str]:
    paths = {}
    for name, _ in CLASSES:
        paths[f"grid_{name}"] = str(figures.plot_side_by_side(
            real[name], generated[name], out / f"gen_grid_{name}.png", ("real stamps", "generated"),
            f"class {name}: real test stamps (left) and generated stamps (right)",
        ))
    if is_diffusion(gen):  # no encoder: no reconstructions or latent interpolation
        return paths
    test = StampSet.concat([real[n][:3] for n, _ in CLASSES])
    recon = reconstruct(gen, test, seed=seed)
    paths["reconstructions"] = str(figures.plot_side_by_side(
        test, recon, out / "gen_reconstructions.png", ("test stamp", "reconstruction"),
        "test stamps (left) and their reconstructions (right)",
    ))
    path = interpolate(gen, real["real"][:1], real["bogus"][:1], steps=8, seed=seed)
    paths["interpolation"] = str(figures.plot_interpolation(
        path, out / "gen_interpolation.png", "latent interpolation: a real stamp (left) to a bogus one (right)",
    ))
    return paths


class _Log:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            from hits_stamps.cli._app import console_err

            console_err.print(f"[dim]{time.perf_counter() - self.t0:7.1f}s[/dim] judge: {msg}", highlight=False)


__all__ = [
    "GENERATION_JSON",
    "classifier_features",
    "evaluate_generator",
    "frechet_distance",
    "nearest_distances",
    "negative_elbo",
    "physical_consistency",
]
