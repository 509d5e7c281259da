"""Both generators (cvae, diffusion), settings chosen with a tuner classifier, judged by another.

Given trained directories (`hits-stamps train`), a tuner classifier and a judge classifier of
another architecture, both trained on the same real (simulated) training stamps:

1. validation (the held-out split the training loop made from --train, seed 0; never the test
   set): each generator setting is scored with the TUNER only: agreement per class, Fréchet
   distance to the validation stamps of the class in the tuner's features, physical consistency;
   - cvae: stamps as the network draws them (raw) against stamps derived through differencing
     (consistent), then the per-condition pixel temperature (`tune_temperatures`) kept if the
     tuner's worst-class agreement is not lower;
   - diffusion: guidance weight (`tune_guidance`), then DDIM steps (--steps candidates), the fewest
     steps within one binomial standard error of the best worst-class agreement;
2. test: `evaluate_generator` with the JUDGE (it refuses the tuner and its architecture) for the
   chosen cvae, the chosen diffusion model, and the raw cvae for comparison.

Tuned copies are written under OUT (the given directories are not changed). Writes
OUT/bench_generators.json and prints a summary.

    nice -n 10 python benchmarks/bench_generators.py --train runs/gen21/train.npz \
        --test runs/gen21/test.npz --cvae runs/gen21/cvae --diffusion runs/gen21/diffusion \
        --tuner runs/gen21/deephits --judge runs/gen21/rotinv --out runs/gen21/bench
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from _common import add_smoke, machine
from hits_stamps.generation import generate, load_generator
from hits_stamps.generation.consistent import load_bank
from hits_stamps.generation.judge import (
    classifier_features,
    evaluate_generator,
    frechet_distance,
    physical_consistency,
)
from hits_stamps.generation.sample import fit_bank
from hits_stamps.generation.tune import tune_guidance, tune_temperatures
from hits_stamps.io import read_stamps
from hits_stamps.training.modeldir import load_model, read_json, write_json

CLASSES = (("real", 1), ("bogus", 0))


def validation_split(train, seed: int = 0, fraction: float = 0.2):
    """The part of --train the training loop held out (its seeded split), so no generator or classifier saw it."""
    return train.split((1 - fraction, fraction), seed=seed)[1]


def score(gen_dir: Path, val, tuner, n: int, seed: int, **kw) -> dict:
    """Tuner's view of one generator setting on validation: agreement, FD (and floor), physics, clipping, speed."""
    out: dict = {}
    for name, lab in CLASSES:
        real = val[val.labels == lab]
        t0 = time.perf_counter()
        g = generate(gen_dir, n, lab, seed=1000 + 2 * seed + lab, **kw)
        sec = time.perf_counter() - t0
        p = tuner.predict_proba(g)[:, 1]
        half = len(real) // 2
        fr = classifier_features(tuner, real)
        fg = classifier_features(tuner, g)
        cons = g.meta.get("consistency", {})
        sci = g.images[..., 1]
        out[name] = {
            "agreement": float(np.mean((p >= 0.5) == bool(lab))),
            "frechet": frechet_distance(fg[:half], fr[:half]),
            "frechet_floor": frechet_distance(fr[half : 2 * half], fr[:half]),
            "physical": physical_consistency(g),
            "max_abs_science": float(np.nanmax(np.abs(sci))),
            "clipped_pixels": cons.get("clipped_pixels"), "stamps_with_clipped_pixels": cons.get(
                "stamps_with_clipped_pixels"),
            "stamps_with_nan": int(np.sum(~np.isfinite(g.images).all(axis=(1, 2, 3)))),
            "stamps_per_s": n / sec,
        }
    out["worst_agreement"] = min(out[c]["agreement"] for c, _ in CLASSES)
    return out


def choose_candidates(gen_dir: Path, many: dict, one: dict, tuner, n: int) -> int:
    """16 candidate conditions matched to the network's difference, or 1 drawn at random: the tuner's worst-class
    agreement decides, a tie (one standard error) goes to the smaller summed Fréchet distance; stored in config.json."""
    fd = {k: sum(s[c]["frechet"] for c, _ in CLASSES) for k, s in ((16, many), (1, one))}
    best = max(many["worst_agreement"], one["worst_agreement"])
    ok = [k for k, s in ((16, many), (1, one)) if within_se(best, s["worst_agreement"], n)]
    chosen = min(ok, key=lambda k: fd[k])
    cfg = read_json(gen_dir / "config.json")
    cfg["derivation"] = {"candidates": chosen, "setting": "derivation candidates", "tuned_with": str(tuner.path),
                         "tuned_with_model": tuner.name, "compared": [16, 1]}
    write_json(gen_dir / "config.json", cfg)
    return chosen


def within_se(best: float, value: float, n: int) -> bool:
    se = max(math.sqrt(best * (1 - best) / n), 1.0 / n)
    return value >= best - se


def smoke_inputs(out: Path) -> dict[str, str]:
    """--smoke: tiny simulated files and one-epoch models (what the Data section of the docs trains), in OUT/inputs."""
    from hits_stamps.io import write_stamps
    from hits_stamps.simulate import simulate_stamps
    from hits_stamps.training import TrainConfig, fit

    d = out / "inputs"
    d.mkdir(parents=True, exist_ok=True)
    train = simulate_stamps(400, seed=0, workers=1)
    paths = {"train": str(write_stamps(train, d / "train.npz", overwrite=True)),
             "test": str(write_stamps(simulate_stamps(200, seed=2, workers=1), d / "test.npz", overwrite=True))}
    small = {"cvae": {"base_channels": 8}, "diffusion": {"base_channels": 8}}
    for role, model in (("cvae", "cvae"), ("diffusion", "diffusion"), ("tuner", "deephits"), ("judge", "rotinv-cnn")):
        cfg = TrainConfig(model=model, epochs=1, model_kwargs=small.get(model, {}))
        fit(cfg, train, d / role, overwrite=True, progress=False, data_path=paths["train"])
        paths[role] = str(d / role)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train")
    ap.add_argument("--test")
    ap.add_argument("--cvae")
    ap.add_argument("--diffusion")
    ap.add_argument("--tuner", help="classifier that chooses every setting")
    ap.add_argument("--judge", help="classifier of another architecture that gives the final numbers")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-val", type=int, default=300, help="generated stamps per class for each validation score")
    ap.add_argument("--n-tune", type=int, default=150, help="stamps per condition (cvae) / class (diffusion) tuning")
    ap.add_argument("--guidances", default="0,1,2,4")
    ap.add_argument("--steps", default="10,20", help="DDIM step counts compared on validation")
    ap.add_argument("--max-per-class", type=int, default=500)
    ap.add_argument("--tstr-n", type=int, default=3000, help="real training stamps the TSTR twin is sized on")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    add_smoke(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.smoke:  # tiny inputs made here, few stamps per score
        for k, v in smoke_inputs(out).items():
            setattr(args, k, v)
        args.n_val, args.n_tune, args.guidances, args.steps = 20, 10, "0,1", "2,3"
        args.max_per_class, args.tstr_n = 20, 100
    missing = [k for k in ("train", "test", "cvae", "diffusion", "tuner", "judge") if not getattr(args, k)]
    if missing:
        raise SystemExit(f"missing --{', --'.join(missing)} (or --smoke)")
    t_start = time.perf_counter()
    train, test = read_stamps(args.train), read_stamps(args.test)
    val = validation_split(train)
    tuner = load_model(args.tuner)
    report: dict = {"machine": machine(),
                    "args": vars(args), "n_validation": len(val), "tuner": {"path": args.tuner, "model": tuner.name},
                    "judge": {"path": args.judge, "model": load_model(args.judge).name}, "validation": {}}
    for name in ("cvae", "diffusion"):
        cfg = read_json(Path(getattr(args, name)) / "config.json")
        hist = read_json(Path(getattr(args, name)) / "history.json")
        report[name] = {"train_seconds": float(sum(h["seconds"] for h in hist)), "epochs": len(hist),
                        "final_val_loss": hist[-1]["val_loss"], "model_kwargs": cfg["model_kwargs"],
                        "parameters": int(sum(p.numel() for p in
                                              load_generator(getattr(args, name)).module.parameters()))}

    # ---- cvae on validation
    cvae = out / "cvae_tuned"
    if cvae.exists():
        shutil.rmtree(cvae)
    shutil.copytree(args.cvae, cvae)
    if load_bank(cvae) is None:  # trained before the bank existed: fit it on the same training file
        fit_bank(cvae, train)
    v = report["validation"]
    v["cvae_raw"] = score(cvae, val, tuner, args.n_val, args.seed, consistent=False)
    v["cvae_consistent"] = score(cvae, val, tuner, args.n_val, args.seed)
    v["cvae_consistent_c1"] = score(cvae, val, tuner, args.n_val, args.seed, candidates=1)
    print("cvae raw", v["cvae_raw"]["worst_agreement"], "consistent", v["cvae_consistent"]["worst_agreement"],
          "one candidate", v["cvae_consistent_c1"]["worst_agreement"], flush=True)
    report["cvae_candidates"] = choose_candidates(cvae, v["cvae_consistent"], v["cvae_consistent_c1"], tuner,
                                                  args.n_val)
    untuned = out / "cvae_untuned"
    if untuned.exists():
        shutil.rmtree(untuned)
    shutil.copytree(cvae, untuned)
    report["cvae_tuning"] = tune_temperatures(cvae, tuner, n_per_condition=args.n_tune, seed=args.seed)
    v["cvae_tuned"] = score(cvae, val, tuner, args.n_val, args.seed)
    before = v["cvae_consistent_c1" if report["cvae_candidates"] == 1 else "cvae_consistent"]
    keep_tuned = v["cvae_tuned"]["worst_agreement"] >= before["worst_agreement"]
    cvae_final = cvae if keep_tuned else untuned
    report["cvae_choice"] = {"dir": str(cvae_final), "temperatures_tuned": keep_tuned, "consistent": True}
    print("cvae tuned", v["cvae_tuned"]["worst_agreement"], "->", cvae_final, flush=True)

    # ---- diffusion on validation
    diff = out / "diffusion_tuned"
    if diff.exists():
        shutil.rmtree(diff)
    shutil.copytree(args.diffusion, diff)
    if load_bank(diff) is None:
        fit_bank(diff, train)
    steps = [int(s) for s in args.steps.split(",")]
    guid = tuple(float(w) for w in args.guidances.split(","))
    report["diffusion_tuning"] = tune_guidance(diff, tuner, guidances=guid, n_per_class=args.n_tune, seed=args.seed,
                                               steps=min(steps))
    w = report["diffusion_tuning"]["chosen"]
    for s in steps:
        v[f"diffusion_steps{s}"] = score(diff, val, tuner, args.n_val, args.seed, steps=s)
        print("diffusion w", w, "steps", s, v[f"diffusion_steps{s}"]["worst_agreement"], flush=True)
    best = max(v[f"diffusion_steps{s}"]["worst_agreement"] for s in steps)
    chosen_steps = min(s for s in steps if within_se(best, v[f"diffusion_steps{s}"]["worst_agreement"], args.n_val))
    cfg = read_json(diff / "config.json")
    cfg["model_kwargs"]["sampling_steps"] = chosen_steps
    cfg["sampling"]["steps"] = chosen_steps
    cfg["sampling"]["steps_chosen_from"] = steps
    write_json(diff / "config.json", cfg)
    v["diffusion_c1"] = score(diff, val, tuner, args.n_val, args.seed, candidates=1)
    report["diffusion_candidates"] = choose_candidates(diff, v[f"diffusion_steps{chosen_steps}"], v["diffusion_c1"],
                                                       tuner, args.n_val)
    report["diffusion_choice"] = {"dir": str(diff), "guidance": w, "steps": chosen_steps, "consistent": True,
                                  "candidates": report["diffusion_candidates"]}

    # ---- test, with the judge
    rng = np.random.default_rng(args.seed)
    ref = train[np.sort(rng.choice(len(train), min(args.tstr_n, len(train)), replace=False))]
    report["test"] = {}
    for name, gdir, kw in (("cvae", cvae_final, {}), ("diffusion", diff, {}),
                           ("cvae_raw", untuned, {"tstr": False})):
        t0 = time.perf_counter()
        if name == "cvae_raw":  # the same model without the derivation: move its bank aside while judging
            (untuned / "conditions.npz").rename(out / "cvae_untuned_conditions.npz")
        try:
            res = evaluate_generator(gdir, test, out / f"judge_{name}", classifier=args.judge, seed=args.seed,
                                     progress=True, train=ref, max_per_class=args.max_per_class, **kw)
        finally:
            if name == "cvae_raw":
                (out / "cvae_untuned_conditions.npz").rename(untuned / "conditions.npz")
        res["seconds"] = time.perf_counter() - t0
        report["test"][name] = {k: res.get(k) for k in (
            "agreement_real", "agreement_bogus", "frechet_real", "frechet_bogus", "frechet_floor_real",
            "frechet_floor_bogus", "tstr_accuracy", "trtr_accuracy", "tstr_over_trtr", "generation_stamps_per_s",
            "physical", "consistency", "roles", "judge", "agreement_per_kind", "memorisation", "seconds")}
        print(name, {k: report["test"][name][k] for k in ("agreement_real", "agreement_bogus", "frechet_real",
                                                            "frechet_bogus", "tstr_over_trtr")}, flush=True)
    report["seconds"] = time.perf_counter() - t_start
    write_json(out / "bench_generators.json", report)
    print(json.dumps({k: report["test"][k]["roles"] for k in report["test"]}, indent=1))


if __name__ == "__main__":
    main()
