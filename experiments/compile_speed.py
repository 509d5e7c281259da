"""Does torch.compile (inductor, CPU), a fused optimizer or channels-last pay for seed-cnn / seed-bnn here?

Training: the step of `hits_stamps.training.loop.fit` (batches gathered by index from the
preprocessed tensor, the model's objective, zero_grad, backward, optimizer step, the validation
pass in every epoch), on `make_synthetic_stamps(--n-train, seed=0)` split 80/20 as `fit` splits it,
with the recipe's batch size and optimizer, one variant per fresh process (so each compiles from
nothing: its own empty inductor cache directory), the variants alternating within each round.
Variants:

- `eager`: what `fit` does today;
- `compile`: `torch.compile(model)` (inductor; forward and, through AOTAutograd, backward);
- `compile-objective`: `torch.compile(objective)`: the loss (and the Flipout KL) compiled too;
- `compile-all`: `compile-objective` plus `torch.compile(optimizer.step)`;
- `fused`: eager with the optimizer's fused CPU kernel (`fused=True`; Adam, AdamW, SGD);
- `channels-first`: seed-cnn without its channels-last conversion (eager).

Recorded per variant: each epoch's seconds (the first includes compilation), the weights' and the
validation probabilities' largest difference from `eager` (same seed), and validation accuracy and
ROC AUC after the last epoch; with `--test FILE` (e.g. a `hits-stamps simulate` file) also the
test accuracy and AUC. Inference (`--infer N`): seed-cnn eval forward over N preprocessed stamps
in batches of 64 and 1,024, eager against compiled (compile time included separately) and the
onnxruntime export (raw stamps in: its graph preprocesses).

    PYTHONPATH=src python experiments/compile_speed.py train --model seed-cnn --epochs 4 --rounds 2 \\
        --variants eager compile compile-objective fused --out runs/compile/cnn.json
    PYTHONPATH=src python experiments/compile_speed.py infer --n 10000 --rounds 3 --out runs/compile/infer.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = ("eager", "compile", "compile-objective", "compile-all", "fused", "channels-first")


def load() -> float:
    return round(os.getloadavg()[0], 2)


def _data(model_name: str, n_train: int, test: str | None):
    from hits_stamps.datasets import make_synthetic_stamps
    from hits_stamps.models.registry import get_spec
    from hits_stamps.preprocess import PreprocessConfig, Preprocessor

    recipe = get_spec(model_name).recipe
    train, val = make_synthetic_stamps(n_train, seed=0).split((0.8, 0.2), seed=0)
    pre = Preprocessor(PreprocessConfig(nan_policy=recipe.nan_policy, scaling=recipe.scaling))
    pre.fit(train.images, train.channels)
    out = {"x_train": pre.transform(train.images), "y_train": train.labels, "x_val": pre.transform(val.images),
           "y_val": val.labels}
    if test:
        from hits_stamps.io import read_stamps

        t = read_stamps(test)
        keep = t.labels >= 0
        out["x_test"], out["y_test"] = pre.transform(t.images[keep]), t.labels[keep]
    return out


def _probs(model, spec, x, bayesian: bool):
    """Class-1 probabilities (N,): softmax of one call (deterministic), or the 30-sample MC mean."""
    import torch

    model.eval()
    with torch.no_grad():
        xt = torch.from_numpy(x)
        if bayesian:
            torch.manual_seed(123)
            p = torch.softmax(model.mc_logits(xt, 30), -1).mean(0)
        else:
            p = torch.softmax(model(xt), -1)
    return p[:, 1].numpy()


def _scores(p, y) -> dict:
    from sklearn.metrics import roc_auc_score

    return {"accuracy": float(((p >= 0.5) == y).mean()), "auc": float(roc_auc_score(y, p))}


def train_worker(args) -> dict:
    """One variant, in this (fresh) process: epochs timed as `fit` times them."""
    import torch

    from hits_stamps.models.cnn import SeedCNN
    from hits_stamps.models.registry import get_spec
    from hits_stamps.training.loop import evaluate_objective, make_optimizer

    torch.set_num_threads(args.threads)
    spec = get_spec(args.model)
    recipe = spec.recipe
    d = _data(args.model, args.n_train, args.test)
    x_train, y_train = torch.from_numpy(d["x_train"]), torch.from_numpy(d["y_train"])
    x_val, y_val = torch.from_numpy(d["x_val"]), torch.from_numpy(d["y_val"])
    torch.manual_seed(0)
    if args.variant == "channels-first":
        class ChannelsFirst(SeedCNN):
            def _features(self, x):
                import torch.nn.functional as F

                from hits_stamps.models.cnn import max_pool_2x2
                for conv in self.convs:
                    h, w = x.shape[-2:]
                    x = F.pad(x, (0, 1 - w % 2, 0, 1 - h % 2)) if (h % 2 == 0 or w % 2 == 0) else x
                    x = F.relu(max_pool_2x2(conv(x)))
                x = x.permute(0, 2, 3, 1).flatten(1)
                for layer in self.dense:
                    x = torch.sigmoid(layer(x))
                return x

        model = ChannelsFirst(in_channels=4, size=(21, 21), **spec.default_kwargs)
    else:
        model = spec.builder(in_channels=4, size=(21, 21), **spec.default_kwargs)
    if args.variant == "fused":
        if recipe.optimizer not in ("adam", "adamw", "sgd"):
            raise SystemExit(f"no fused CPU kernel for {recipe.optimizer}")
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[recipe.optimizer]
        optimizer = cls(model.parameters(), lr=recipe.lr, eps=recipe.eps, weight_decay=recipe.weight_decay,
                        fused=True)
    else:
        optimizer = make_optimizer(recipe, model.parameters())
    net, objective, opt_step = model, spec.objective, optimizer.step
    if args.variant == "compile":
        net = torch.compile(model)
    if args.variant in ("compile-objective", "compile-all"):
        objective = torch.compile(spec.objective)
    if args.variant == "compile-all":
        opt_step = torch.compile(optimizer.step)
    n_train = len(x_train)
    steps = -(-n_train // recipe.batch_size)
    seconds, first_step = [], None
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([0, epoch])
        order = torch.from_numpy(rng.permutation(n_train))
        net.train()
        for step in range(steps):
            idx = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            xb, yb = x_train.index_select(0, idx), y_train.index_select(0, idx)
            res = objective(net, xb, yb, n_train)
            optimizer.zero_grad(set_to_none=True)
            res.loss.backward()
            opt_step()
            float(res.loss.detach())
            if res.logits is not None:
                int((res.logits.argmax(-1) == yb).sum())
            if first_step is None:
                first_step = time.perf_counter() - t0
        evaluate_objective(spec, net, x_val, y_val, n_train, recipe.batch_size, "cpu")
        seconds.append(time.perf_counter() - t0)
    bayesian = spec.task.bayesian
    out = {"variant": args.variant, "model": args.model, "threads": args.threads, "epoch_seconds": seconds,
           "first_step_seconds": first_step, "val": _scores(_probs(model, spec, d["x_val"], bayesian), d["y_val"])}
    np.save(args.save, _probs(model, spec, d["x_val"], bayesian))
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, args.save + ".pt")
    if args.test:
        out["test"] = _scores(_probs(model, spec, d["x_test"], bayesian), d["y_test"])
        np.save(args.save + ".test.npy", _probs(model, spec, d["x_test"], bayesian))
    return out


def infer_worker(args) -> dict:
    """seed-cnn eval forward: eager, compiled, onnxruntime; stamps/s per batch size."""
    import torch

    from hits_stamps.datasets import make_synthetic_stamps
    from hits_stamps.serve import export
    from hits_stamps.training.loop import TrainConfig, fit

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        m = fit(TrainConfig(model="seed-cnn", epochs=1, seed=0, threads=args.threads),
                make_synthetic_stamps(1000, seed=0), Path(tmp) / "m", progress=False)
        raw = make_synthetic_stamps(args.n, seed=1).images
        x = torch.from_numpy(m.preprocessor.transform(raw, report=False))
        mod = m.module.eval()
        out: dict = {"threads": args.threads, "n": args.n}
        with torch.no_grad():
            ref = torch.softmax(mod(x), -1)
            t = time.perf_counter()
            cmod = torch.compile(mod)
            for bs in (64, 1024):
                cmod(x[:bs])
            cmod(x[:37])  # a ragged last batch
            out["compile_seconds"] = time.perf_counter() - t
            got = torch.cat([torch.softmax(cmod(x[i:i + 1024]), -1) for i in range(0, len(x), 1024)])
            out["compiled_max_abs_diff"] = float((got - ref).abs().max())
            sess = export.make_session(export.export_onnx_bytes(m), threads=args.threads)
            raw_c = np.ascontiguousarray(raw, dtype=np.float32)
            p_onnx = np.concatenate([sess.run([export.ONNX_OUTPUT], {export.ONNX_INPUT: raw_c[i:i + 1024]})[0]
                                     for i in range(0, len(raw_c), 1024)])
            out["onnx_max_abs_diff"] = float(np.abs(p_onnx - ref.numpy()).max())
            for _ in range(args.rounds):
                for bs in (64, 1024):
                    for name in ("eager", "compiled", "onnxruntime"):
                        out.setdefault(f"{name}_{bs}_load", []).append(load())
                        t = time.perf_counter()
                        for i in range(0, len(x), bs):
                            if name == "eager":
                                mod(x[i:i + bs])
                            elif name == "compiled":
                                cmod(x[i:i + bs])
                            else:
                                sess.run([export.ONNX_OUTPUT], {export.ONNX_INPUT: raw_c[i:i + bs]})
                        out.setdefault(f"{name}_{bs}_stamps_per_s", []).append(len(x) / (time.perf_counter() - t))
    return out


def drive_train(args) -> dict:
    """Alternating rounds, one fresh process (and empty inductor cache) per variant and round."""
    res: dict = {"command": " ".join(sys.argv), "runs": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            variants = args.variants if r % 2 == 0 else list(reversed(args.variants))
            for v in variants:
                cache = Path(tmp) / f"cache_{r}_{v}"
                save = str(Path(tmp) / f"{v}_{r}")
                cmd = [sys.executable, __file__, "train-worker", "--model", args.model, "--variant", v,
                       "--epochs", str(args.epochs), "--n-train", str(args.n_train), "--threads", str(args.threads),
                       "--save", save] + (["--test", args.test] if args.test else [])
                before = load()
                t = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                      env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)})
                wall = time.perf_counter() - t
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    row = {"variant": v, "round": r, "error": proc.stderr[-1500:]}
                else:
                    row = json.loads(lines[-1][7:]) | {"round": r, "process_seconds": wall, "load_before": before,
                                                       "load_after": load()}
                    row["save"] = save
                res["runs"].append(row)
                print(json.dumps({k: x for k, x in row.items() if k != "error"}), row.get("error", ""), flush=True)
                out.write_text(json.dumps(res, indent=1) + "\n")
        import torch

        for row in res["runs"]:  # against eager of the same round (same seed): not bit-identical when compiled
            ref = str(Path(tmp) / f"eager_{row['round']}")
            save = row.pop("save", None)
            if save is None or row["variant"] == "eager" or not Path(ref + ".npy").exists():
                continue
            row["val_prob_max_abs_diff_vs_eager"] = float(np.abs(np.load(save + ".npy") - np.load(ref + ".npy")).max())
            a, b = torch.load(save + ".pt", weights_only=True), torch.load(ref + ".pt", weights_only=True)
            row["weights_max_abs_diff_vs_eager"] = max(float((a[k] - b[k]).abs().max()) for k in a)
            if Path(ref + ".test.npy").exists():
                row["test_prob_max_abs_diff_vs_eager"] = float(np.abs(np.load(save + ".test.npy")
                                                                      - np.load(ref + ".test.npy")).max())
    summary = {}
    for v in args.variants:
        rows = [x for x in res["runs"] if x["variant"] == v and "epoch_seconds" in x]
        if rows:
            summary[v] = {"first_epoch_s": statistics.median(x["epoch_seconds"][0] for x in rows),
                          "later_epoch_s": statistics.median(s for x in rows for s in x["epoch_seconds"][1:]),
                          "process_s": statistics.median(x["process_seconds"] for x in rows)}
    res["summary"] = summary
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cmd", choices=("train", "train-worker", "infer"))
    p.add_argument("--model", default="seed-cnn")
    p.add_argument("--variant", default="eager", choices=VARIANTS)
    p.add_argument("--variants", nargs="+", default=["eager", "compile"], choices=VARIANTS)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--n-train", type=int, default=4026)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--test", default=None)
    p.add_argument("--save", default=None)
    p.add_argument("--out", default="runs/compile/result.json")
    args = p.parse_args()
    if args.cmd == "train-worker":
        print("RESULT " + json.dumps(train_worker(args)), flush=True)
    elif args.cmd == "train":
        drive_train(args)
    else:
        res = infer_worker(args)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps({k: (statistics.median(v) if isinstance(v, list) else v) for k, v in res.items()}, indent=1))


if __name__ == "__main__":
    main()
