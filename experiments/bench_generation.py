"""Benchmark of the conditional VAE: training time, generation speed, the judging numbers, augmentation.

Runs on the simulated set (`hits_stamps.simulate.simulate_stamps`) and on the real-pixel HiTS 2015
set (`hits_stamps.realdata.build_real`, split by object so no source is on both sides), and writes
OUT/bench_generation.json plus the figures (OUT/<set>/judge/gen_*.png, OUT/augmentation/...).
Copy the figures to docs/figures with --docs-figures. Superseded by benchmarks/bench_generators.py
(see experiments/README.md).

    PYTHONPATH=src:benchmarks nice python experiments/bench_generation.py --out bench_out/generation --docs-figures

Sizes are modest on purpose (2 shared CPU cores); every size is an argument and is recorded in the
JSON. Speed is measured as a ratio in one run: generated stamps/s of the cvae against simulated
stamps/s of the simulator (the other way to get new labelled stamps), medians of --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _cvae import generator_split

from _machine import cpu_model
from hits_stamps.generation import generate, load_generator
from hits_stamps.generation.augment import augmentation_experiment
from hits_stamps.generation.judge import evaluate_generator, negative_elbo
from hits_stamps.generation.sample import resolve_latent, resolve_mode, sampling_of
from hits_stamps.io import read_stamps, write_stamps
from hits_stamps.stamps import StampSet
from hits_stamps.training import TrainConfig, fit
from hits_stamps.training.modeldir import write_json


def machine() -> dict:
    return {"cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def data_sets(args) -> dict[str, tuple[StampSet, StampSet]]:
    """{'simulated': (train, test), 'real': (train, test)} (real only when the sequence file is found)."""
    from hits_stamps.simulate import simulate_stamps

    cache = Path(args.out) / "data"
    cache.mkdir(parents=True, exist_ok=True)
    sets = {}
    paths = {"train": cache / f"sim_train_{args.n_train}.npz", "test": cache / f"sim_test_{args.n_test}.npz"}
    if not args.skip_simulated and args.train_file:
        # files written before (e.g. by bench_classifiers.py data, so the judge can be that benchmark's model)
        test = read_stamps(args.test_file)
        sets["simulated"] = (read_stamps(args.train_file), test[: args.n_test] if args.n_test < len(test) else test)
    elif not args.skip_simulated:
        if not paths["train"].exists():
            write_stamps(simulate_stamps(args.n_train, seed=args.seed), paths["train"], overwrite=True)
        if not paths["test"].exists():
            write_stamps(simulate_stamps(args.n_test, seed=args.seed + 2), paths["test"], overwrite=True)
        sets["simulated"] = (read_stamps(paths["train"]), read_stamps(paths["test"]))
    if not args.skip_real:
        try:
            from hits_stamps.realdata import build_real

            real = build_real()
        except Exception as exc:  # noqa: BLE001 - the real set is optional; say why it is missing
            print(f"real-pixel set not built: {exc}")
        else:
            train, test = real.split((0.7, 0.3), seed=args.seed, groups=real.columns["object_index"])
            sets["real"] = (train, test)
    return sets


# registry defaults (mvn, science - template, min_scale 0.002) with one thing changed at a time
DEFAULT_VARIANTS = json.dumps([
    {}, {"likelihood": "gaussian"}, {"likelihood": "laplace"}, {"likelihood": "student_t"},
    {"subtract_channels": []}, {"subtract_channels": [], "min_scale": 0.01},
])


def train_judge(train: StampSet, args, out: Path):
    t0 = time.perf_counter()
    judge = fit(TrainConfig(model=args.judge_model, seed=args.seed, epochs=args.judge_epochs), train,
                out / "judge_classifier", overwrite=True, progress=args.progress)
    return judge, time.perf_counter() - t0


def select(train: StampSet, val: StampSet, judge, args, out: Path) -> list[dict]:
    """Each cvae variant trained with the same budget, scored on validation stamps (never the test set)."""
    from hits_stamps.generation.judge import classifier_features, frechet_distance

    rows = []
    sub = train[: args.select_n]
    for k, kwargs in enumerate(json.loads(args.select_variants)):
        t0 = time.perf_counter()
        cvae = fit(TrainConfig(model="cvae", seed=args.seed, epochs=args.select_epochs, model_kwargs=kwargs),
                   sub, out / f"variant_{k}", overwrite=True, progress=args.progress)
        row = {"model_kwargs": kwargs, "train_seconds": time.perf_counter() - t0,
               "val": negative_elbo(cvae, val, seed=args.seed)}
        for name, lab in (("real", 1), ("bogus", 0)):
            real = val[val.labels == lab]
            gen = generate(cvae, len(real), lab, seed=args.seed)
            row[f"agreement_{name}"] = float(np.mean(judge.predict(gen) == lab))
            row[f"frechet_{name}"] = frechet_distance(classifier_features(judge, gen), classifier_features(judge, real))
        print("variant", row, flush=True)
        rows.append(row)
    return rows


def temperature_sweep(cvae, val: StampSet, judge, temperatures: list[float], seed: int) -> list[dict]:
    """Agreement and Fréchet distance per class on validation stamps at several pixel temperatures."""
    from hits_stamps.generation.judge import classifier_features, frechet_distance, physical_consistency

    rows = []
    for temp in temperatures:
        row: dict = {"temperature": temp}
        for name, lab in (("real", 1), ("bogus", 0)):
            real = val[val.labels == lab]
            gen = generate(cvae, len(real), lab, seed=seed, temperature=temp)
            row[f"agreement_{name}"] = float(np.mean(judge.predict(gen) == lab))
            row[f"frechet_{name}"] = frechet_distance(classifier_features(judge, gen), classifier_features(judge, real))
            row[f"diff_corr_{name}"] = physical_consistency(gen)["diff_corr"]
        print("temperature", row, flush=True)
        rows.append(row)
    return rows


def _judged(gen: StampSet, real: StampSet, lab: int, judge) -> dict:
    from hits_stamps.generation.judge import classifier_features, frechet_distance

    return {"agreement": float(np.mean(judge.predict(gen) == lab)),
            "frechet": frechet_distance(classifier_features(judge, gen), classifier_features(judge, real))}


def latent_diagnosis(cvae_dir, fit_on: StampSet, val: StampSet, judge, seed: int, components: list[int],
                     temperatures: list[float]) -> list[dict]:
    """Where do samples go wrong? Agreement and Fréchet distance per class on validation stamps for codes from

    - `reconstruction`: the posterior mean of each validation stamp, decoded with its own class;
    - `label_swap`: the same codes decoded with the other class (agreement with the swapped class
      measures how much the decoder uses y rather than z);
    - `prior`: z ~ N(0, I);
    - `aggregate_M`: the per-class Gaussian mixture with M components fitted to the codes of `fit_on`
      (the generator's training stamps), each in mode "loc" and "sample" (at each temperature).
    """
    from hits_stamps.generation.sample import fit_sampling_models, reconstruct

    tm = load_generator(cvae_dir)
    rows = []

    def add(source: str, mode: str, temp, per_class: dict) -> None:
        row = {"latent": source, "mode": mode, "temperature": temp}
        for name, r in per_class.items():
            row[f"agreement_{name}"], row[f"frechet_{name}"] = r["agreement"], r["frechet"]
        print("diagnosis", {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        rows.append(row)

    classes = (("real", 1), ("bogus", 0))
    if not sampling_of(tm).has_residual_model:
        fit_sampling_models(tm, fit_on, seed=seed, save=False)
    for mode in ("loc", "sample", "residual"):
        add("reconstruction", mode, 1.0, {name: _judged(reconstruct(tm, val[val.labels == lab], mode=mode, seed=seed),
                                                        val[val.labels == lab], lab, judge) for name, lab in classes})
    swapped = val[:]
    swapped.labels = 1 - val.labels
    rec = reconstruct(tm, swapped, mode="loc", seed=seed)
    add("label_swap", "loc", 1.0, {name: _judged(rec[swapped.labels == lab], val[val.labels == lab], lab, judge)
                                   for name, lab in classes})
    sources = [("prior", None)] + [(f"aggregate_{m}", m) for m in components]
    for source, m in sources:
        if m is not None:
            fit_sampling_models(tm, fit_on, components=m, seed=seed, save=False)
        latent = "prior" if m is None else "aggregate"
        for mode, temp in [("loc", 1.0)] + [(md, t) for md in ("sample", "residual") for t in temperatures]:
            add(source, mode, temp, {
                name: _judged(generate(tm, int(np.sum(val.labels == lab)), lab, seed=seed, mode=mode,
                                       temperature=temp, latent=latent), val[val.labels == lab], lab, judge)
                for name, lab in classes})
    return rows


def run_set(name: str, train: StampSet, test: StampSet, judge, args, out: Path) -> dict:
    res: dict = {"n_train": len(train), "n_test": len(test), "class_balance_train": train.class_balance(),
                 "class_balance_test": test.class_balance()}
    cvae_kwargs = json.loads(args.cvae_kwargs)
    if args.cvae_n and args.cvae_n < len(train):
        train = train[: args.cvae_n]  # the generator (and the judging's reference) sees this prefix only
        res["n_train_cvae"] = len(train)
    t0 = time.perf_counter()
    given = args.cvae_dir if name == "simulated" else args.real_cvae_dir
    if given:
        # trained earlier with this script's settings (the same fit call); its time is the sum of its epochs
        cvae = load_generator(given)
        if cvae.config["training_data"]["n_train"] + cvae.config["training_data"]["n_val"] != len(train):
            raise SystemExit(f"{given} was not trained on these {len(train)} {name} stamps")
        train_seconds = sum(r["seconds"] for r in cvae.history)
        res["cvae_dir"] = str(cvae.path)
        (out / "cvae").parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(cvae.path, out / "cvae", dirs_exist_ok=True)
        cvae = load_generator(out / "cvae")
        if not (sampling_of(cvae).has_latent_mixture and sampling_of(cvae).has_residual_model):
            # trained before the loop fitted these: fit them as the loop's post_fit does, on its training split
            from hits_stamps.generation.sample import fit_sampling_models, train_config_of

            cfg = train_config_of(cvae)
            fit_on = train.split((1 - cfg.val_fraction, cfg.val_fraction), seed=cfg.seed)[0]
            t1 = time.perf_counter()
            cvae = fit_sampling_models(cvae, fit_on, seed=cfg.seed)
            train_seconds += time.perf_counter() - t1
            res["post_fit_added"] = f"latent mixture and residual model fitted on {len(fit_on)} stamps"
    else:
        cvae = fit(TrainConfig(model="cvae", seed=args.seed, epochs=args.cvae_epochs, model_kwargs=cvae_kwargs),
                   train, out / "cvae", overwrite=True, progress=args.progress)
        train_seconds = time.perf_counter() - t0
    epochs = len(cvae.history)
    res["cvae"] = {"train_seconds": train_seconds, "epochs": epochs, "n_parameters": cvae.n_parameters,
                   "model_kwargs": cvae.config["model_kwargs"], "final": cvae.history[-1],
                   "seconds_per_epoch": train_seconds / max(epochs, 1),
                   "seconds_per_1000_stamp_epoch": 1000 * train_seconds / max(epochs, 1)
                   / cvae.config["training_data"]["n_train"]}
    res["judging"] = evaluate_generator(
        cvae, test, out / "judge", classifier=judge.path, seed=args.seed, progress=args.progress, train=train,
        max_per_class=args.max_per_class, mode=args.mode or None, temperature=args.temperature,
        latent=args.latent or None,
    )
    return res


def speed(args, cvae_dir: Path) -> dict:
    from hits_stamps.simulate import simulate_stamps

    tm = load_generator(cvae_dir)
    n = args.speed_n
    generate(tm, 256, "real")  # warm-up
    latent = args.latent or None
    t_gen, _ = timed(lambda: generate(tm, n, "real", seed=1, latent=latent), args.repeats)
    t_loc, _ = timed(lambda: generate(tm, n, "real", seed=1, mode="loc", latent=latent), args.repeats)
    t_smp, _ = timed(lambda: generate(tm, n, "real", seed=1, mode="sample", latent=latent), args.repeats)
    t_sim, _ = timed(lambda: simulate_stamps(n, seed=5), args.repeats)
    return {"n": n, "repeats": args.repeats, "cvae_stamps_per_s": n / t_gen, "cvae_loc_stamps_per_s": n / t_loc,
            "cvae_sample_mode_stamps_per_s": n / t_smp, "mode": resolve_mode(tm, None),
            "simulator_stamps_per_s": n / t_sim, "cvae_over_simulator": t_sim / t_gen,
            "latent": resolve_latent(tm, latent)}


def diagnose(args, out: Path, result: dict) -> None:
    """--diagnose: latent_diagnosis for each given cvae directory, on simulated validation stamps."""
    from hits_stamps.simulate import simulate_stamps
    from hits_stamps.training.modeldir import load_model

    train = read_stamps(args.train_file or Path(args.out) / "data" / f"sim_train_{args.n_train}.npz")
    val = simulate_stamps(args.n_val, seed=args.seed + 1)
    judge = load_model(args.judge_dir)
    result["diagnosis"] = {}
    for cvae_dir in args.diagnose.split(","):
        tm = load_generator(cvae_dir)
        fit_on = generator_split(tm, train)[0]
        print(f"== {cvae_dir}: {tm.config['model_kwargs']}, fitted on {len(fit_on)}", flush=True)
        t0 = time.perf_counter()
        rows = latent_diagnosis(tm, fit_on, val, judge, args.seed,
                                [int(m) for m in args.diagnose_components.split(",")],
                                [float(t) for t in args.temperatures.split(",")])
        result["diagnosis"][cvae_dir] = {"model_kwargs": tm.config["model_kwargs"], "n_fit": len(fit_on),
                                         "rows": rows, "seconds": time.perf_counter() - t0}
        write_json(out / "diagnosis.json", result)


def _snr_residuals(stamps: StampSet, rec: StampSet) -> tuple[np.ndarray, np.ndarray]:
    """Per stamp (N,): RMS of rec - stamps in the SNR channel over the central 5 x 5 pixels and over the corners."""
    c = list(stamps.channels).index("snr")
    d = np.nan_to_num(rec.images[..., c].astype(np.float64) - stamps.images[..., c])  # (N, H, W)
    h, w = d.shape[1:]
    centre = d[:, h // 2 - 2 : h // 2 + 3, w // 2 - 2 : w // 2 + 3].reshape(len(d), -1)
    corner = np.concatenate([d[:, :4, :4], d[:, :4, -4:], d[:, -4:, :4], d[:, -4:, -4:]], axis=1).reshape(len(d), -1)
    return np.sqrt(np.mean(centre**2, axis=1)), np.sqrt(np.mean(corner**2, axis=1))


def _validation_stamps(args, tm, train: StampSet | None) -> tuple[StampSet, str]:
    """Validation stamps for a cvae: the first --n-val stamps of its own held-out split of `train` (the stamps of
    --train-file), else simulate_stamps(--n-val, seed=--seed + 1); and a line saying which.

    The held-out split is the one the training loop made (the cvae's seed and validation fraction on the
    stamps it was given), so it comes from the same simulation as the training stamps and the cvae never
    saw it; a judge trained on the same file with the same split (bench_classifiers.py) never saw it either.
    """
    from hits_stamps.generation.sample import train_config_of
    from hits_stamps.simulate import simulate_stamps

    if train is None:
        return simulate_stamps(args.n_val, seed=args.seed + 1), f"simulate_stamps({args.n_val}, seed={args.seed + 1})"
    cfg = train_config_of(tm)
    held_out = generator_split(tm, train)[1]
    return held_out[: args.n_val], (f"first {min(args.n_val, len(held_out))} of the held-out split "
                                    f"(fraction {cfg.val_fraction}, seed {cfg.seed}) of {args.train_file}")


def per_kind(args, out: Path, result: dict) -> None:
    """--per-kind: judge agreement per stamp kind, on validation stamps (`_validation_stamps`), for each cvae directory.

    Per kind: the judge's own recall on the validation stamps, the agreement of their reconstructions
    (posterior mean; pixel mode --mode, default the model's) and, for kind-conditioned generators, of stamps
    generated as that kind; per class: the same, and the Fréchet distance of generated stamps to the
    validation stamps in the judge's features. How well the decoder reproduces each kind: the SNR channel
    of the noise-free reconstruction (mode "loc") minus the stamp's, in units of the pixel noise (the SNR
    channel's unit), as the median over stamps of the per-stamp RMS over the central 5 x 5 pixels
    (`snr_resid_centre`) and over the four 4 x 4 corners (`snr_resid_corner`, about 1 when only noise is
    left).
    """
    from hits_stamps.generation.judge import classifier_features, frechet_distance
    from hits_stamps.generation.sample import reconstruct
    from hits_stamps.training.modeldir import load_model

    judge = load_model(args.judge_dir)
    train = read_stamps(args.train_file) if args.train_file else None
    result["per_kind"] = {"judge": args.judge_dir, "models": {}}
    for cvae_dir in args.per_kind.split(","):
        tm = load_generator(cvae_dir)
        val, source = _validation_stamps(args, tm, train)
        p_val = judge.predict(val)
        f_val = classifier_features(judge, val)
        mode = resolve_mode(tm, args.mode or None)
        gen = StampSet.concat([generate(tm, args.max_per_class, lab, seed=10 + lab, temperature=args.temperature,
                                        mode=mode) for lab in (0, 1)])
        gen_kind = (np.array([tm.module.kinds[i] for i in gen.columns["condition"]]) if tm.module.kinds
                    else np.full(len(gen), ""))
        p_rec = judge.predict(reconstruct(tm, val, mode=mode, seed=args.seed))
        centre, corner = _snr_residuals(val, reconstruct(tm, val, mode="loc", seed=args.seed))
        p_gen = judge.predict(gen)
        f_gen = classifier_features(judge, gen)
        rows = {}
        for k in sorted(set(val.kind)):
            s, g = val.kind == k, gen_kind == k
            rows[k] = {"n_val": int(s.sum()), "judge_recall": float(np.mean(p_val[s] == val.labels[s])),
                       "reconstruction": float(np.mean(p_rec[s] == val.labels[s])),
                       "snr_resid_centre": float(np.median(centre[s])), "snr_resid_corner": float(np.median(corner[s])),
                       "n_generated": int(g.sum()),
                       "generated": float(np.mean(p_gen[g] == gen.labels[g])) if g.any() else None}
        for name, lab in (("real", 1), ("bogus", 0)):
            s, g = val.labels == lab, gen.labels == lab
            rows[name] = {"n_val": int(s.sum()), "judge_recall": float(np.mean(p_val[s] == lab)),
                          "reconstruction": float(np.mean(p_rec[s] == lab)),
                          "snr_resid_centre": float(np.median(centre[s])),
                          "snr_resid_corner": float(np.median(corner[s])),
                          "n_generated": int(g.sum()), "generated": float(np.mean(p_gen[g] == lab)),
                          "frechet": frechet_distance(f_gen[g], f_val[s])}
        result["per_kind"]["models"][cvae_dir] = {"model_kwargs": tm.config["model_kwargs"], "validation": source,
                                                  "temperature": args.temperature, "mode": mode, "rows": rows}
        print(f"== {cvae_dir}", flush=True)
        for k, r in rows.items():
            print(f"{k:16s} {r['n_val']:5d} judge {r['judge_recall']:.3f} rec {r['reconstruction']:.3f} gen "
                  + (f"{r['generated']:.3f} ({r['n_generated']})" if r["generated"] is not None else "-")
                  + (f" FD {r['frechet']:.1f}" if "frechet" in r else "")
                  + (f" snr resid {r['snr_resid_centre']:.2f}/{r['snr_resid_corner']:.2f}" if "snr_resid_centre" in r
                     else ""), flush=True)
        write_json(out / "per_kind.json", result)

NOISE_VARIANTS = ("loc", "default", "lowrank_half", "no_lowrank", "pixel_only", "bootstrap")


@torch.no_grad()
def noise_variants(args, out: Path, result: dict) -> None:
    """--noise-variants: which part of the residual noise model makes generated stamps of a kind look like another.

    For each kind of a kind-conditioned cvae, `--max-per-class` codes are drawn from its latent mixture and
    decoded once; the same locations get six kinds of pixel noise (decoder-standardised units, mapped back
    with the decoder's per-pixel factor L_p as mode "residual" does): `loc` none; `default` the fitted model
    m + U S e_r + B e_p; `lowrank_half` the low-rank (spatially correlated) part halved; `no_lowrank` it
    left out (m + B e_p); `pixel_only` each pixel's full channel covariance of the standardised training
    residuals, independent between pixels (no spatial correlation); `bootstrap` the standardised residual of a
    random training stamp of the same kind (the empirical noise, misfits included). The judge's agreement per
    kind and, weighted by the training frequencies of the kinds, per class; the judge's recall on the
    validation stamps (`_validation_stamps`) beside it. The residuals are those of the first --n-train stamps of the
    cvae's training split.
    """
    from hits_stamps.generation.posthoc import residuals
    from hits_stamps.generation.sample import conditions_of, quiet_inputs
    from hits_stamps.training.modeldir import load_model

    tm = load_generator(args.noise_variants)
    m, sm = tm.module.eval(), sampling_of(tm)
    if not m.kinds or not sm.has_residual_model:
        raise SystemExit("--noise-variants needs a kind-conditioned cvae with a residual model")
    train = read_stamps(args.train_file)
    fit_on = generator_split(tm, train)[0][: args.n_train]
    val, source = _validation_stamps(args, tm, train)
    judge = load_model(args.judge_dir)
    p_val = judge.predict(val)
    x, y = quiet_inputs(tm, fit_on.images), conditions_of(tm, fit_on)
    resid, cond = residuals(m, x, y, sm.residual["resid_amp"]), y.numpy()  # the units of the residual model
    gen = torch.Generator().manual_seed(args.seed)
    c_dim, per = m.in_channels, args.max_per_class
    rows = {}
    for k, name in enumerate(m.kinds):
        e = resid[torch.as_tensor(np.flatnonzero(cond == k))]  # (N_k, H, W, C)
        centred = e - e.mean(0)
        cov = torch.einsum("nhwc,nhwd->hwcd", centred, centred) / max(len(e) - 1, 1)
        pixel_tril = torch.linalg.cholesky(cov + 1e-6 * torch.eye(c_dim))  # (H, W, C, C)
        c = torch.full((per,), k, dtype=torch.long)
        dist = m.decode(sm.sample_latent(c, m.latent_dim, "aggregate", gen), c)
        loc, scale = m.location(dist), m.pixel_tril(dist)
        mean = sm.residual["resid_mean"][c].view_as(loc)
        factor = sm.residual["resid_factor"][c]
        lowrank = (factor @ torch.randn(per, factor.shape[-1], 1, generator=gen)).squeeze(-1).view_as(loc)
        eps = torch.randn(per, loc.shape[1] * loc.shape[2], c_dim, 1, generator=gen)
        blocks = (sm.residual["resid_tril"][c] @ eps).view_as(loc)
        pixel = e.mean(0) + (pixel_tril @ torch.randn(per, *loc.shape[1:3], c_dim, 1, generator=gen)).squeeze(-1)
        pick = torch.randint(0, len(e), (per,), generator=gen)
        draws = {"loc": torch.zeros_like(loc), "default": mean + lowrank + blocks,
                 "lowrank_half": mean + 0.5 * lowrank + blocks, "no_lowrank": mean + blocks, "pixel_only": pixel,
                 "bootstrap": e[pick]}
        label, s = int(m.condition_label[k]), val.kind == name
        row = {"label": label, "n_val": int(s.sum()), "judge_recall": float(np.mean(p_val[s] == label)) if s.any()
               else None, "training_weight": float(sm.condition_weight[k])}
        for variant in NOISE_VARIANTS:
            t = loc + (scale @ draws[variant].unsqueeze(-1)).squeeze(-1)
            images = m.to_data_units(t.permute(0, 3, 1, 2)).numpy().transpose(0, 2, 3, 1).astype(np.float32)
            stamps = StampSet(images=images, labels=np.full(per, label), ids=np.array([f"g{i}" for i in range(per)]),
                              channels=val.channels)
            row[variant] = float(np.mean(judge.predict(stamps) == label))
        rows[name] = row
        print(f"{name:16s} judge {row['judge_recall']:.3f} " + " ".join(f"{v} {row[v]:.3f}" for v in NOISE_VARIANTS),
              flush=True)
    per_class = {}
    for label, name in ((1, "real"), (0, "bogus")):
        ks = [k for k in rows if rows[k]["label"] == label]
        w = np.array([rows[k]["training_weight"] for k in ks])
        w = w / w.sum()
        per_class[name] = {v: float(sum(wi * rows[k][v] for wi, k in zip(w, ks, strict=True)))
                           for v in ("judge_recall", *NOISE_VARIANTS)}
        print(f"{name:16s} " + " ".join(f"{v} {x:.3f}" for v, x in per_class[name].items()), flush=True)
    rows.update(per_class)
    result["noise_variants"] = {"cvae": args.noise_variants, "judge": args.judge_dir, "validation": source,
                                "n_residuals": len(fit_on), "per_kind": per, "rows": rows}
    write_json(out / "noise_variants.json", result)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n-train", type=int, default=12000)
    p.add_argument("--n-test", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-file", default="", help="simulated training stamps from a file instead of "
                   "simulate_stamps(--n-train, seed=--seed); needs --test-file (its first --n-test stamps are used)")
    p.add_argument("--test-file", default="")
    p.add_argument("--cvae-epochs", type=int, default=12)
    p.add_argument("--cvae-kwargs", default="{}", help="JSON dict of cvae builder arguments")
    p.add_argument("--cvae-dir", default="", help="a cvae trained before on the same simulated training stamps "
                   "(fit with --seed; e.g. by an earlier run): reused instead of training one")
    p.add_argument("--real-cvae-dir", default="", help="as --cvae-dir, for the real-pixel set (trained on its "
                   "training part by an earlier run of this script)")
    p.add_argument("--judge-model", default="rotinv-cnn")
    p.add_argument("--judge-epochs", type=int, default=5)
    p.add_argument("--max-per-class", type=int, default=1000)
    p.add_argument("--mode", default="", help="residual | sample | loc (default: the model's default)")
    p.add_argument("--latent", default="", help="prior | aggregate (default: the model's default)")
    p.add_argument("--cvae-n", type=int, default=0, help="train the cvae on the first N training stamps (0: all)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--select-variants", default=DEFAULT_VARIANTS, help="JSON list of cvae kwargs ('[]': skip)")
    p.add_argument("--select-n", type=int, default=5000)
    p.add_argument("--select-epochs", type=int, default=4)
    p.add_argument("--n-val", type=int, default=2000)
    p.add_argument("--temperatures", default="0,0.25,0.5,0.75,1", help="pixel temperatures swept on validation")
    p.add_argument("--speed-n", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--aug-fractions", default="0.05,0.1,0.25,1.0")
    p.add_argument("--aug-epochs", type=int, default=3)
    p.add_argument("--aug-reuse-cvae", action="store_true", help="augmentation: generate with the given cvae at "
                   "every fraction instead of retraining it on each subset (fair at fraction 1 when it was "
                   "trained on the same file; optimistic below)")
    p.add_argument("--skip-real", action="store_true")
    p.add_argument("--skip-simulated", action="store_true",
                   help="only the real-pixel set (no speed measurement, no augmentation)")
    p.add_argument("--skip-augmentation", action="store_true")
    p.add_argument("--only-augmentation", action="store_true",
                   help="run only the augmentation experiment: with the cvae in --cvae-dir on the simulated set, "
                   "or with --skip-simulated and --real-cvae-dir on the real-pixel set")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--diagnose", default="", help="comma-separated cvae directories: run only `latent_diagnosis` "
                   "on the simulated validation set with the judge in --judge-dir")
    p.add_argument("--judge-dir", default="", help="a judge this script trained before (simulated set; "
                   "for --diagnose and to skip retraining it)")
    p.add_argument("--diagnose-components", default="1,10", help="mixture sizes for --diagnose")
    p.add_argument("--per-kind", default="", help="comma-separated cvae directories: run only `per_kind` (judge "
                   "agreement per stamp kind on validation stamps: the cvae's held-out split of --train-file, "
                   "else freshly simulated; judge in --judge-dir)")
    p.add_argument("--noise-variants", default="", help="a kind-conditioned cvae directory: run only "
                   "`noise_variants` (judge agreement per kind with parts of the residual noise model left out; "
                   "needs --train-file, --test-file and --judge-dir)")
    p.add_argument("--docs-figures", action="store_true", help="copy the figures to docs/figures/gen_*.png")
    args = p.parse_args()
    if bool(args.train_file) != bool(args.test_file):
        p.error("--train-file and --test-file go together")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine(), "args": vars(args), "sets": {}}
    if args.diagnose:
        diagnose(args, out, result)
        return
    if args.per_kind:
        per_kind(args, out, result)
        return
    if args.noise_variants:
        if not (args.train_file and args.judge_dir):
            p.error("--noise-variants needs --train-file, --test-file and --judge-dir")
        noise_variants(args, out, result)
        return
    sets = data_sets(args)
    if args.only_augmentation:
        # the simulated set with --cvae-dir, or (with --skip-simulated) the real-pixel set with --real-cvae-dir
        name = "simulated" if "simulated" in sets else "real"
        cvae_dir = args.cvae_dir if name == "simulated" else args.real_cvae_dir
        if not cvae_dir or name not in sets:
            p.error("--only-augmentation needs --cvae-dir and the simulated set, or --skip-simulated, "
                    "--real-cvae-dir and the real-pixel set")
        train, test = sets[name]
        result["augmentation_set"] = name
        result["augmentation"] = augmentation_experiment(
            train, test, cvae_dir, fractions=tuple(float(f) for f in args.aug_fractions.split(",")),
            seed=args.seed, epochs=args.aug_epochs, out_dir=out / "augmentation", progress=args.progress,
            temperature=args.temperature, latent=args.latent or None, retrain_cvae=not args.aug_reuse_cvae,
        )
        write_json(out / "bench_generation.json", result)
        return
    for name, (train, test) in sets.items():
        print(f"== {name}: {len(train)} train / {len(test)} test", flush=True)
        if name == "simulated" and args.judge_dir:
            from hits_stamps.training.modeldir import load_model

            judge, judge_seconds = load_model(args.judge_dir), None  # trained earlier by this script
        else:
            judge, judge_seconds = train_judge(train, args, out / name)
        val = None
        if name == "simulated" and args.train_file and args.cvae_dir:
            val, source = _validation_stamps(args, load_generator(args.cvae_dir), train)  # its held-out split
            result["validation"] = source
        elif name == "simulated":
            from hits_stamps.simulate import simulate_stamps

            val = simulate_stamps(args.n_val, seed=args.seed + 1)
            result["validation"] = f"simulate_stamps({args.n_val}, seed={args.seed + 1})"
        if val is not None and json.loads(args.select_variants):
            result["selection"] = {"n_train": args.select_n, "epochs": args.select_epochs, "n_val": len(val),
                                   "variants": select(train, val, judge, args, out / "selection")}
            write_json(out / "bench_generation.json", result)
        result["sets"][name] = run_set(name, train, test, judge, args, out / name)
        result["sets"][name]["judge_train_seconds"] = judge_seconds
        if val is not None and args.temperatures:
            temps = [float(t) for t in args.temperatures.split(",")]
            result["sets"][name]["temperature_sweep_val"] = temperature_sweep(
                out / name / "cvae", val, judge, temps, args.seed)
        write_json(out / "bench_generation.json", result)
    if "simulated" in sets:  # speed and augmentation use the simulated set's cvae
        result["speed"] = speed(args, out / "simulated" / "cvae")
        write_json(out / "bench_generation.json", result)
    if not args.skip_augmentation and "simulated" in sets:
        train, test = sets["simulated"]
        fractions = tuple(float(f) for f in args.aug_fractions.split(","))
        result["augmentation"] = augmentation_experiment(
            train, test, out / "simulated" / "cvae", fractions=fractions, seed=args.seed, epochs=args.aug_epochs,
            out_dir=out / "augmentation", progress=args.progress, temperature=args.temperature,
            latent=args.latent or None, retrain_cvae=not args.aug_reuse_cvae,
        )
        write_json(out / "bench_generation.json", result)
    if args.docs_figures:
        docs = Path(__file__).resolve().parents[1] / "docs" / "figures"
        docs.mkdir(parents=True, exist_ok=True)
        for name in result["sets"]:
            for png in sorted((out / name / "judge").glob("gen_*.png")):
                shutil.copy(png, docs / f"gen_{name}_{png.name[4:]}")
        aug = out / "augmentation" / "gen_augmentation.png"
        if aug.exists():
            shutil.copy(aug, docs / "gen_augmentation.png")
    print(json.dumps({k: v for k, v in result.items() if k != "sets"}, indent=1, default=str))
    for name, r in result["sets"].items():
        j = r["judging"]
        print(name, {k: round(j[k], 4) if isinstance(j[k], float) else j[k] for k in (
            "agreement_real", "agreement_bogus", "frechet_real", "frechet_floor_real", "frechet_bogus",
            "frechet_floor_bogus", "tstr_over_trtr")})


if __name__ == "__main__":
    main()
