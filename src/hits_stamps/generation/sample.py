"""New stamps, reconstructions and latent interpolations from a trained generator directory.

Every function takes a model directory or an already loaded `TrainedModel` and returns a
`StampSet` in the units of the training file (the model inverts its own input transform).
Randomness is explicit: the same `seed` (and `batch_size`) gives the same stamps.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

from hits_stamps.errors import HitsStampsError
from hits_stamps.generation.consistent import BANK_FILE, DEFAULT_CANDIDATES, ConditionBank, derive_stamps, load_bank
from hits_stamps.generation.posthoc import (
    LATENTS,
    PosthocConfig,
    SamplingModels,
    brightness,
    fit_sampling,
    load_sampling,
)
from hits_stamps.stamps import LABEL_NAMES, StampSet
from hits_stamps.tasks import Task
from hits_stamps.training.loop import TrainConfig
from hits_stamps.training.modeldir import TrainedModel, load_model

MODES = ("sample", "loc", "residual")
GENERATED_KIND = "generated"
_SAMPLING = "_sampling_models"  # attribute of a loaded TrainedModel that holds its SamplingModels (`sampling_of`)


def load_generator(model: str | os.PathLike | TrainedModel, device: str = "cpu") -> TrainedModel:
    """A trained generator from a directory (or passed through); refuses classifiers."""
    tm = model if isinstance(model, TrainedModel) else load_model(model, device=device)
    if tm.spec.task is not Task.GENERATOR:
        raise HitsStampsError(
            f"{tm.path}: model {tm.name!r} is a {tm.spec.task}, not a generator (train one with --model cvae)"
        )
    return tm


def sampling_of(tm: TrainedModel) -> SamplingModels:
    """The generator's sampling models (`generation.posthoc`), read from its directory on first use and then kept
    with the loaded model, so a refit (`fit_sampling_models(save=False)`) or a tuned temperature applies to it."""
    sm = tm.__dict__.get(_SAMPLING)
    if sm is None:
        try:
            sm = load_sampling(tm.path, tm.module, tm.config.get("model_kwargs"))
        except ValueError as exc:
            raise HitsStampsError(f"{tm.path}: {exc}") from exc
        setattr(tm, _SAMPLING, sm)
    return sm


def label_value(label: int | str) -> int:
    """1 / 'real' -> 1, 0 / 'bogus' -> 0; anything else is an error."""
    names = {"real": 1, "bogus": 0}
    if isinstance(label, str) and label.strip().lower() in names:
        return names[label.strip().lower()]
    if isinstance(label, (int, np.integer)) and int(label) in (0, 1):
        return int(label)
    raise HitsStampsError(f"label must be 'real' (1) or 'bogus' (0); got {label!r}")


def quiet_inputs(tm: TrainedModel, images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) stamps -> the model's (N, C, H, W) inputs, without repeating the NaN-count warning per batch."""
    return torch.from_numpy(tm.preprocessor.transform(images, report=False))


def conditions_of(tm: TrainedModel, stamps: StampSet) -> torch.Tensor:
    """The generator's condition for each labelled stamp (N,): its class, or its kind for a kind-conditioned cvae."""
    try:
        return torch.from_numpy(tm.module.condition_index(stamps.labels, stamps.kind))
    except ValueError as exc:
        raise HitsStampsError(f"{tm.path}: {exc}") from exc


def _check_mode(mode: str, tm: TrainedModel | None = None) -> None:
    if mode not in MODES:
        raise HitsStampsError(f"mode must be one of {MODES}; got {mode!r}")
    if mode == "residual" and tm is not None and not sampling_of(tm).has_residual_model:
        raise HitsStampsError(
            f"{tm.path}: this generator has no fitted residual model (trained before it existed?); "
            "use mode 'sample' or 'loc', or refit it with hits_stamps.generation.sample.fit_sampling_models"
        )


def default_mode(model: TrainedModel) -> str:
    """"residual" when the generator has a fitted residual model for every condition, else "sample".

    Chosen on held-out validation stamps in three settings (docs/benchmarks/generation.md: the
    simulated benchmark's 24-epoch cvae, the real-pixel set, the main job's 8-epoch cvae): with the
    residual model's brightness-following amplitude (`generation.posthoc`) it has the best
    worst-class agreement with the judge and the smallest Fréchet distances, and meets the TSTR goal
    wherever "sample" does. The decoder's own noise ("sample") is far worse for a briefly trained
    cvae, whose one learned noise scale is still large.
    """
    return "residual" if not is_diffusion(model) and sampling_of(model).has_residual_model else "sample"


def resolve_mode(tm: TrainedModel, mode: str | None) -> str:
    """The pixel mode to use: `mode` checked against the model, or its default for None."""
    if mode is None:
        return default_mode(tm)
    _check_mode(mode, tm)
    return mode


def default_latent(model: TrainedModel) -> str:
    """"aggregate" when the generator has a fitted latent mixture for every class, else "prior"."""
    return "aggregate" if not is_diffusion(model) and sampling_of(model).has_latent_mixture else "prior"


def resolve_latent(tm: TrainedModel, latent: str | None) -> str:
    """The latent source to use: `latent` checked against the model, or its default for None."""
    if latent is None:
        return default_latent(tm)
    if latent not in LATENTS:
        raise HitsStampsError(f"latent must be one of {LATENTS}; got {latent!r}")
    if latent == "aggregate" and default_latent(tm) != "aggregate":
        raise HitsStampsError(
            f"{tm.path}: this generator has no fitted latent mixture (trained before it existed?); "
            "use latent 'prior' or refit it with hits_stamps.generation.sample.fit_sampling_models"
        )
    return latent


def fit_sampling_models(
    model: str | os.PathLike | TrainedModel, stamps: StampSet, components: int | None = None, seed: int = 0,
    save: bool = True,
) -> TrainedModel:
    """(Re)fit what a generator samples from after training (`generation.posthoc.fit_sampling`) on labelled `stamps`
    (its training stamps).

    The training loop fits these after training, so this is for directories written before they
    existed, or to fit the latent mixture with another number of components (`components`; None:
    `PosthocConfig`'s). The refit replaces the loaded model's (`sampling_of`); with `save` it is also
    written to the directory's `sampling.safetensors` (atomically).
    """
    tm = load_generator(model)
    tm.check_input(stamps)
    if np.any(stamps.labels < 0):
        raise HitsStampsError(f"{int(np.sum(stamps.labels < 0))} stamps have unknown labels (-1)")
    if components is not None and (isinstance(components, bool) or int(components) != components or components < 1):
        raise HitsStampsError(f"components must be a whole number >= 1; got {components!r}")
    config = PosthocConfig() if components is None else PosthocConfig(components=int(components))
    x, y = quiet_inputs(tm, stamps.images), conditions_of(tm, stamps)
    sm = fit_sampling(tm.module, x, y, config, seed=seed)
    setattr(tm, _SAMPLING, sm)
    if save:
        sm.save(tm.path)
    return tm


def _channels(tm: TrainedModel) -> tuple[str, ...]:
    return tuple(tm.config["input"]["channels"])


def peak_snr(images: np.ndarray, channels: tuple[str, ...], box: int = 5) -> np.ndarray | None:
    """|SNR| peak in the central box x box pixels of the `snr` channel, (N,); None without one (non-finite: 0)."""
    if "snr" not in channels:
        return None
    plane = np.nan_to_num(images[..., channels.index("snr")], nan=0.0, posinf=0.0, neginf=0.0)  # (N, H, W)
    h, w = plane.shape[1:]
    r0, c0 = max(0, (h - box) // 2), max(0, (w - box) // 2)
    return np.abs(plane[:, r0 : r0 + box, c0 : c0 + box]).max(axis=(1, 2)).astype(np.float64)


def _to_stamps_layout(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) tensor -> (B, H, W, C) float32 array."""
    return np.ascontiguousarray(x.detach().cpu().numpy().transpose(0, 2, 3, 1)).astype(np.float32)


def generate(
    model: str | os.PathLike | TrainedModel,
    n: int,
    label: int | str,
    kind: str | None = None,
    seed: int = 0,
    mode: str | None = None,
    batch_size: int = 1024,
    device: str = "cpu",
    temperature: float = 1.0,
    latent: str | None = None,
    consistent: bool | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    candidates: int | None = None,
) -> StampSet:
    """n new stamps of class `label`: z ~ p_label(z), x ~ p(x | z, label) (cvae), or DDIM from noise (diffusion).

    For a `diffusion` model, `steps` (DDIM steps) and `guidance` (classifier-free guidance weight w)
    default to the model's (`sampling_steps`, the `guidance` buffer that `tune_guidance` sets);
    `mode`, `latent` and `temperature` do not apply (meta records mode "ddim", latent "noise").
    `candidates`: training conditions tried per stamp by the derivation (None: config.json
    `derivation.candidates`, else 16; 1 draws a condition of the stamp's kind at random).

    `consistent` (None: when the model directory has a condition bank, `generation.consistent`):
    keep the generated template and science (clipped to the training range, counted), and derive
    the difference, noise and SNR through `hits_stamps.differencing.difference` with observing
    conditions and no-data masks of training stamps of the same condition, so that
    difference = science - PSF-matched template and SNR = difference / noise hold for every stamp
    (`derive_stamps`; the columns record the conditions, `meta["consistency"]` the counts). False:
    the four channels as the network draws them.

    `latent` chooses where the codes come from: "aggregate" draws z from the Gaussian mixture
    fitted after training to the codes of the training stamps of that class (ex-post density
    estimation, `generation.posthoc.fit_latent`); "prior" draws z ~ N(0, I). None (the default) means
    "aggregate" when the model has a fitted mixture, else "prior" (`default_latent`).

    Returns a StampSet (n, H, W, C) in training-file units with `labels` = label, `kind` = "generated",
    unique ids `gen_<label>_s<seed>_<i>`, and `snr` = the |SNR| peak in the central 5x5 pixels of the
    generated SNR channel (when the model has one). `mode="residual"` adds to the decoder location a
    draw of the class's fitted residual model (spatially and across channels correlated noise,
    `generation.posthoc.fit_residuals`); `mode="sample"` draws every pixel from the decoder distribution
    (independent per pixel); `mode="loc"` returns the location (noise-free). None (the default) means
    "residual" when the model has a residual model, else "sample" (`default_mode`). `temperature` in [0,
    1] scales the pixel deviations from the location (1: the model's own distribution). `kind` asks for
    one stamp kind of that class; it needs a generator conditioned on kinds (`condition="kind"`), which
    otherwise draws the kinds of the class with their training frequencies; a class-conditioned
    generator refuses any `kind`. The kind each stamp was generated as is in its id
    (`gen_<label>_<kind>_s<seed>_<i>`) and in the column `condition` (an index into
    `meta["condition_kinds"]`; counts in `meta["kinds"]`); the `kind` field stays "generated".
    """
    tm = load_generator(model, device=device)
    diffusion = is_diffusion(tm)
    if diffusion:  # no latent mixture or pixel modes: DDIM from noise
        if mode not in (None, "ddim") or latent not in (None, "noise"):
            raise HitsStampsError(f"{tm.path}: a diffusion model samples with DDIM from noise; mode and latent do "
                                  f"not apply (got mode={mode!r}, latent={latent!r})")
        mode, latent = "ddim", "noise"
        if temperature != 1.0:
            raise HitsStampsError(f"{tm.path}: a diffusion model has no pixel temperature (got {temperature})")
    else:
        mode = resolve_mode(tm, mode)
        latent = resolve_latent(tm, latent)
    sm = sampling_of(tm)
    y = label_value(label)
    if not 0.0 <= temperature <= 1.0:
        raise HitsStampsError(f"temperature must be in [0, 1]; got {temperature}")
    if n < 0 or batch_size < 1:
        raise HitsStampsError(f"need n >= 0 and batch_size >= 1; got n={n}, batch_size={batch_size}")
    module = tm.module.to(device).eval()
    gen = torch.Generator().manual_seed(int(seed))
    try:
        conds = sm.draw_conditions(module, y, n, kind, gen)  # (n,): the class, or kinds of the class
    except ValueError as exc:
        raise HitsStampsError(f"{tm.path}: {exc}") from exc
    chunks = []
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    if diffusion:
        try:
            for start in range(0, n, batch_size):  # the noise of every batch comes from `gen`, in order
                c = conds[start : start + batch_size].to(device)
                chunks.append(_to_stamps_layout(module.sample(c, generator=gen, steps=steps, guidance=guidance)))
        except ValueError as exc:
            raise HitsStampsError(f"{tm.path}: {exc}") from exc
    else:
        z_all = sm.sample_latent(conds, module.latent_dim, latent, gen)  # (n, d): fixed by seed alone
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(int(seed) + 1)
            for start in range(0, n, batch_size):
                z = z_all[start : start + batch_size].to(device)
                c = conds[start : start + batch_size].to(device)
                chunks.append(_to_stamps_layout(decode_stamps(module, sm, c, z, mode, temperature)))
    h, w = tm.config["input"]["size"]
    channels = _channels(tm)
    images = np.concatenate(chunks) if chunks else np.zeros((0, h, w, len(channels)), np.float32)
    name = LABEL_NAMES[y]
    meta = {"source": "generated", "generator": str(tm.path), "label": name, "seed": int(seed), "mode": mode,
            "temperature": float(temperature), "latent": latent}
    if diffusion:
        meta.update({"steps": int(steps or module.sampling_steps),
                     "guidance": float(module.guidance if guidance is None else guidance)})
    bank = resolve_bank(tm, consistent)
    columns = {}
    if module.kinds:
        kinds = [module.kinds[i] for i in conds.tolist()]
        ids = [f"gen_{name}_{k}_s{seed}_{i:07d}" for i, k in enumerate(kinds)]
        meta["kinds"] = {k: kinds.count(k) for k in sorted(set(kinds))}
        meta["condition_kinds"] = list(module.kinds)
        columns["condition"] = conds.numpy().astype(np.int64)  # index into meta["condition_kinds"]
    else:
        ids = [f"gen_{name}_s{seed}_{i:07d}" for i in range(n)]
    out = StampSet(
        images=images,
        labels=np.full(n, y, dtype=np.int64),
        snr=peak_snr(images, channels),
        kind=np.full(n, GENERATED_KIND),
        ids=np.array(ids),
        channels=channels,
        columns=columns,
        meta=meta,
    )
    if bank is None:
        out.meta["consistency"] = {"derived": False}
        return out
    if candidates is None:
        candidates = int((tm.config.get("derivation") or {}).get("candidates", DEFAULT_CANDIDATES))
    return derive_stamps(out, conds.numpy(), bank, seed=seed, n_candidates=candidates)


@torch.no_grad()
def decode_stamps(module, sm: SamplingModels, y: torch.Tensor, z: torch.Tensor, mode: str = "sample",
                  temperature: float = 1.0) -> torch.Tensor:
    """Stamps in data units (B, C, H, W) decoded by a cvae from codes z (B, d) with conditions y (B,) (or soft (B, K)).

    `mode="sample"` draws every pixel from the decoder distribution, t = loc + T (t_drawn - loc);
    `mode="residual"` adds a draw of the fitted residual model (`generation.posthoc`),
    t = loc + T L (a_k(b(loc)) e); `mode="loc"` returns the location (noise-free). The pixel
    temperature of a row is T = temperature x `condition_temperature[k]` for its condition k (the
    condition of largest weight for soft conditions): 1 is the model's own noise, below 1 pixel
    deviations shrink towards the location. Uses torch's global RNG: seed it (or use
    `torch.random.fork_rng`) for reproducible draws.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if not 0.0 <= temperature <= 1.0:
        raise ValueError(f"temperature must be in [0, 1]; got {temperature}")
    dist = module.decode(z, y)
    loc = module.location(dist)  # (B, H, W, C)
    k = y.argmax(-1) if y.ndim == 2 else y.long()
    temp = (temperature * sm.condition_temperature.to(loc.device)[k.to(loc.device)]).to(loc.dtype)
    temp = temp.view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    if mode == "sample":
        t = loc + temp * (dist.sample() - loc)
    elif mode == "residual":
        e = sm.residual_draw(k, loc) * sm.residual_amplitude(k, brightness(loc))  # (B, H, W, C)
        t = loc + temp * (module.pixel_tril(dist) @ e.unsqueeze(-1)).squeeze(-1)  # back from standardised units
    else:
        t = loc
    return module.to_data_units(t.permute(0, 3, 1, 2))


def is_diffusion(tm: TrainedModel) -> bool:
    """True for a diffusion generator (sampled with DDIM), False for the cvae."""
    return bool(getattr(tm.module, "is_diffusion", False))


def resolve_bank(tm: TrainedModel, consistent: bool | None) -> ConditionBank | None:
    """The condition bank to derive generated stamps with (None: return them as drawn).

    consistent None: the model directory's bank when it has one; True: it must have one."""
    if consistent is False:
        return None
    bank = load_bank(tm.path)
    if bank is None and consistent:
        raise HitsStampsError(
            f"{tm.path}: no {BANK_FILE} (observing conditions of the training stamps) to derive consistent "
            "stamps with; refit it with hits_stamps.generation.sample.fit_bank(model_dir, train_stamps)")
    return bank


def fit_bank(model: str | os.PathLike | TrainedModel, stamps: StampSet) -> dict:
    """Write the condition bank of a generator directory from its training stamps (for directories without one)."""
    tm = load_generator(model)
    tm.check_input(stamps)
    from hits_stamps.generation.consistent import write_bank

    info = write_bank(tm.path, stamps, conditions_of(tm, stamps).numpy())
    if info["file"] is None:
        raise HitsStampsError(f"{tm.path}: {info['reason']}")
    return info


def generate_in_snr_range(
    model: str | os.PathLike | TrainedModel,
    n: int,
    label: int | str,
    snr_min: float = 0.0,
    snr_max: float = float("inf"),
    kind: str | None = None,
    seed: int = 0,
    max_draws: int | None = None,
    progress=None,
    **kwargs,
) -> StampSet:
    """n new stamps of class `label` whose |SNR| peak (`StampSet.snr`, central 5x5) lies in [snr_min, snr_max).

    The generator is not conditioned on SNR: stamps are drawn with `generate` in rounds (round r with
    a seed derived from (seed, r)) and kept when their peak falls in the range, until n are kept or
    `max_draws` (default 200 n) have been drawn, which raises HitsStampsError with the acceptance
    rate. So the stamps follow the generator's own distribution given the range; for a
    kind-conditioned generator asked for a class, kinds that rarely reach the range are rarer among
    the stamps than in training. `kwargs` go to `generate` (mode, temperature, latent, device,
    batch_size). `progress(kept, drawn)` is called after each round. ids are
    `gen_<label>_snr<min>-<max>_s<seed>_<i>`; meta records the range, the draws and the acceptance rate.
    """
    tm = load_generator(model, device=kwargs.get("device", "cpu"))
    if "snr" not in _channels(tm):
        raise HitsStampsError(f"{tm.path}: selecting by SNR needs an 'snr' channel; the generator has "
                              f"{list(_channels(tm))}")
    if not (np.isfinite(snr_min) and snr_min >= 0 and snr_max > snr_min):
        raise HitsStampsError(f"need 0 <= snr_min < snr_max; got snr_min={snr_min}, snr_max={snr_max}")
    if n < 0:
        raise HitsStampsError(f"need n >= 0; got {n}")
    max_draws = 200 * n if max_draws is None else int(max_draws)
    kept: list[StampSet] = []
    n_kept, drawn, rnd = 0, 0, 0
    while n_kept < n:
        if drawn >= max_draws:
            raise HitsStampsError(
                f"{tm.path}: only {n_kept} of {drawn} generated {LABEL_NAMES[label_value(label)]} stamps had an "
                f"|SNR| peak in [{snr_min:g}, {snr_max:g}) (acceptance {n_kept / max(drawn, 1):.2%}); "
                f"raise max_draws or widen the range")
        rate = n_kept / drawn if drawn else 1.0
        want = int(np.ceil(1.2 * (n - n_kept) / max(rate, 1.0 / max(drawn, 1))))
        batch = min(max(want, 256), 20_000, max_draws - drawn)  # at most 20,000 stamps in memory per round
        round_seed = int(np.random.SeedSequence([int(seed), rnd]).generate_state(1)[0])
        draw = generate(tm, batch, label, kind=kind, seed=round_seed, **kwargs)
        inside = (draw.snr >= snr_min) & (draw.snr < snr_max)
        if inside.any():
            kept.append(draw[np.flatnonzero(inside)[: n - n_kept]])
            n_kept += len(kept[-1])
        drawn += batch
        rnd += 1
        if progress is not None:
            progress(n_kept, drawn)
    if kept:
        out = StampSet.concat(kept)
    else:  # n == 0
        out = generate(tm, 0, label, kind=kind, seed=seed, **kwargs)
    name = LABEL_NAMES[label_value(label)]
    out.ids = np.array([f"gen_{name}_snr{snr_min:g}-{snr_max:g}_s{seed}_{i:07d}" for i in range(len(out))])
    meta = dict(kept[0].meta) if kept else dict(out.meta)
    meta.update({"seed": int(seed), "snr_range": [float(snr_min), float(snr_max) if np.isfinite(snr_max) else None],
                 "drawn": int(drawn),
                 "acceptance": float(n_kept / drawn) if drawn else None})
    if "condition" in out.columns:
        kinds = [meta["condition_kinds"][i] for i in out.columns["condition"].tolist()]
        meta["kinds"] = {k: kinds.count(k) for k in sorted(set(kinds))}
    if meta.get("consistency", {}).get("derived"):  # counts of the kept stamps, not of the first round
        clipped = out.columns["clipped_pixels"]
        meta["consistency"] = {
            **{k: v for k, v in meta["consistency"].items() if k != "outside_range"},
            "clipped_pixels": int(clipped.sum()), "stamps_with_clipped_pixels": int(np.sum(clipped > 0)),
            "nonfinite_generated_pixels": int(out.columns["nonfinite_generated_pixels"].sum()),
            "stamps_with_nan_mask": int(np.sum(~np.isfinite(out.images[..., :2]).all(axis=(1, 2, 3)))),
        }
    out.meta = meta
    return out


def generate_like(
    model: str | os.PathLike | TrainedModel, like: StampSet, ratio: float = 1.0, seed: int = 0, mode: str | None = None,
    temperature: float = 1.0, latent: str | None = None, consistent: bool | None = None,
) -> StampSet:
    """round(ratio x count) generated stamps for each class of `like` (class c drawn with seed 2 seed + c)."""
    tm = load_generator(model)
    parts = []
    for lab in (0, 1):
        k = int(round(ratio * np.sum(like.labels == lab)))
        if k:
            parts.append(generate(tm, k, lab, seed=2 * seed + lab, mode=mode, temperature=temperature, latent=latent,
                                  consistent=consistent))
    if not parts:
        raise HitsStampsError(f"nothing to generate: {len(like)} labelled stamps x ratio {ratio}")
    return StampSet.concat(parts)


def train_config_of(tm: TrainedModel) -> TrainConfig:
    """The TrainConfig a model directory was trained with (to train a twin the same way)."""
    tc = dict(tm.config.get("train_config", {}))
    tc["model_kwargs"] = dict(tm.config.get("model_kwargs", {}))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in tc.items() if k in names})


def posterior_means(
    tm: TrainedModel, stamps: StampSet, device: str = "cpu", batch_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means (N, d) of labelled stamps, and their conditions (N,) (`conditions_of`).

    Encoded in batches of `batch_size` (1024: the batches of `generation.posthoc.fit_latent`, so a mixture
    fitted to these codes is the one the training loop fits)."""
    tm.check_input(stamps)
    if np.any(stamps.labels < 0):
        raise HitsStampsError(
            f"{int(np.sum(stamps.labels < 0))} stamps have unknown labels (-1); the cvae encoder needs the class"
        )
    conds = conditions_of(tm, stamps)
    module = tm.module.to(device).eval()
    mus = []
    with torch.no_grad():
        for start in range(0, len(stamps), batch_size):
            x = quiet_inputs(tm, stamps.images[start : start + batch_size]).to(device)  # (B, C, H, W) data units
            mus.append(module.encode(x, conds[start : start + batch_size].to(device))[0].cpu())
    d = module.latent_dim
    return (torch.cat(mus) if mus else torch.zeros(0, d)), conds


def reconstruct(
    model: str | os.PathLike | TrainedModel,
    stamps: StampSet,
    mode: str = "loc",
    seed: int = 0,
    batch_size: int = 1024,
    device: str = "cpu",
) -> StampSet:
    """Reconstructions x' ~ p(x | z = mu(x, y), y) of labelled stamps, rows aligned with `stamps`.

    Uses the posterior mean as the code; `mode="loc"` returns the decoder location (the default,
    what "reconstruction" usually shows), `mode="sample"` draws pixels. Labels, kinds and ids are
    those of the input; `meta["source"]` is "reconstruction".
    """
    tm = load_generator(model, device=device)
    _check_mode(mode, tm)
    mu, conds = posterior_means(tm, stamps, device, batch_size)
    module = tm.module
    chunks = []
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(int(seed))
        for start in range(0, len(mu), batch_size):
            z = mu[start : start + batch_size].to(device)
            c = conds[start : start + batch_size].to(device)
            chunks.append(_to_stamps_layout(decode_stamps(module, sampling_of(tm), c, z, mode)))
    images = np.concatenate(chunks) if chunks else np.zeros((0, *stamps.shape[1:]), np.float32)
    return StampSet(
        images=images, labels=stamps.labels, snr=peak_snr(images, stamps.channels), kind=stamps.kind,
        ids=stamps.ids, channels=stamps.channels,
        meta={"source": "reconstruction", "generator": str(tm.path), "mode": mode, "seed": int(seed)},
    )


def interpolate(
    model: str | os.PathLike | TrainedModel,
    a: StampSet,
    b: StampSet,
    steps: int = 8,
    mode: str = "loc",
    seed: int = 0,
    device: str = "cpu",
) -> StampSet:
    """`steps` stamps decoded along the straight line between the codes of stamps a and b.

    a, b: StampSets of one labelled stamp each. Step k (0..steps-1) decodes
    z_k = (1 - s) mu_a + s mu_b with the class condition (1 - s) onehot_a + s onehot_b,
    s = k / (steps - 1); the first and last rows are the reconstructions of a and b. Labels are
    the shared label when a and b agree, else -1 (unknown). A kind-conditioned generator
    interpolates between the two stamps' kinds in the same way.
    """
    tm = load_generator(model, device=device)
    _check_mode(mode, tm)
    if len(a) != 1 or len(b) != 1:
        raise HitsStampsError(f"interpolate needs one stamp at each end; got {len(a)} and {len(b)}")
    if steps < 2:
        raise HitsStampsError(f"steps must be >= 2; got {steps}")
    ends = StampSet.concat([a, b])
    mu, conds = posterior_means(tm, ends, device, 2)
    labels = ends.labels
    module = tm.module
    s = torch.linspace(0.0, 1.0, steps)[:, None]  # (steps, 1)
    z = (1 - s) * mu[0] + s * mu[1]  # (steps, d)
    onehot = module.condition(conds)  # (2, K)
    cond = (1 - s) * onehot[0] + s * onehot[1]  # (steps, K)
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(int(seed))
        images = _to_stamps_layout(decode_stamps(module, sampling_of(tm), cond.to(device), z.to(device), mode))
    same = int(labels[0]) == int(labels[1])
    return StampSet(
        images=images,
        labels=np.full(steps, int(labels[0]) if same else -1, dtype=np.int64),
        snr=peak_snr(images, a.channels),
        kind=np.full(steps, GENERATED_KIND),
        ids=np.array([f"interp_{a.ids[0]}_{b.ids[0]}_{k:03d}" for k in range(steps)]),
        channels=a.channels,
        meta={"source": "interpolation", "generator": str(tm.path), "from": str(a.ids[0]), "to": str(b.ids[0])},
    )
