"""The training loop shared by every model (classifiers, Bayesian networks, the VAE).

Reproducible: the shuffling of epoch e comes from `default_rng([seed, e])`, torch's RNG is seeded
once and its state is checkpointed, so `--resume` after an interruption gives the same final
weights as an uninterrupted run with the same seed.

Speed (docs/benchmarks/speed.md): the training stamps are one preprocessed tensor, each step's
batch is gathered from it by an index tensor (no DataLoader, no per-sample Python); the step runs
with the intra-op threads and the precision `hits_stamps.hardware` chooses for this machine:
bfloat16 autocast only where the CPU has AMX or AVX-512 BF16, float32 (no autocast, the same
numbers as before) elsewhere; the cores other work keeps busy are left to it. Both choices are
recorded in the model's config.json (`compute`), and `--resume` continues with the recorded thread
count (a few models, e.g. rotinv-cnn, give slightly different weights with another thread count).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hits_stamps import __version__, hardware
from hits_stamps.errors import HitsStampsError, StampFileError
from hits_stamps.io.atomic import atomic_path, output_lock, replace_dir
from hits_stamps.models.registry import Recipe, count_parameters, get_spec
from hits_stamps.preprocess import PreprocessConfig, Preprocessor
from hits_stamps.stamps import StampSet
from hits_stamps.tasks import Task
from hits_stamps.training import modeldir
from hits_stamps.training.augment import augment_batch


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how; `None` fields take the model's recipe default."""

    model: str  # registered model name, e.g. "rotinv-cnn"
    seed: int = 0  # seeds weights, shuffling, dropout and weight sampling
    epochs: int | None = None  # passes over the training set
    batch_size: int | None = None
    lr: float | None = None
    steps_per_epoch: int | None = None  # fixed optimizer steps per epoch (None: one pass)
    val_fraction: float = 0.2  # held out from the training file when no validation set is given
    early_stopping_patience: int | None = None  # epochs without val-loss improvement; None: off
    device: str = "auto"  # "cpu" | "cuda" | "auto"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the model builder
    recipe_overrides: dict[str, Any] = field(default_factory=dict)  # any other Recipe field
    precision: str = "auto"  # "auto" (bfloat16 where the CPU has AMX / AVX-512 BF16) | "float32" | "bfloat16"
    threads: int | None = None  # intra-op threads (None: chosen by hardware.choose_threads)

    def __post_init__(self) -> None:
        problems = []
        for key in ("epochs", "batch_size", "steps_per_epoch", "early_stopping_patience"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                problems.append(f"{key} must be an integer >= 1; got {v!r}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be a finite number > 0; got {self.lr!r}")
        if not (isinstance(self.val_fraction, (int, float)) and 0 < self.val_fraction < 1):
            problems.append(f"val_fraction must be in (0, 1); got {self.val_fraction!r}")
        if self.precision not in hardware.PRECISIONS:
            problems.append(f"precision must be one of {hardware.PRECISIONS}; got {self.precision!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or isinstance(self.threads, bool)
                                         or self.threads < 1):
            problems.append(f"threads must be an integer >= 1; got {self.threads!r}")
        if self.device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?", str(self.device)):
            problems.append(f"device must be cpu, cuda, cuda:N or auto; got {self.device!r}")
        if problems:
            raise HitsStampsError("; ".join(problems))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return modeldir.torch_device(device)


def resolve_recipe(cfg: TrainConfig) -> Recipe:
    recipe = get_spec(cfg.model).recipe
    over = dict(cfg.recipe_overrides)
    for key in ("epochs", "batch_size", "lr"):
        if getattr(cfg, key) is not None:
            over[key] = getattr(cfg, key)
    unknown = set(over) - {f.name for f in dataclasses.fields(Recipe)}
    if unknown:
        raise HitsStampsError(f"unknown recipe keys {sorted(unknown)}")
    try:
        recipe = dataclasses.replace(recipe, **over)
    except (TypeError, ValueError) as exc:
        raise HitsStampsError(f"recipe: {exc}") from exc
    problems = []
    for f in dataclasses.fields(Recipe):
        v = getattr(recipe, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            problems.append(f"recipe {f.name} must be finite; got {v}")
    for key in ("epochs", "batch_size"):
        v = getattr(recipe, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            problems.append(f"recipe {key} must be an integer >= 1; got {v!r}")
    if not (isinstance(recipe.lr, (int, float)) and recipe.lr > 0):
        problems.append(f"recipe lr must be a number > 0; got {recipe.lr!r}")
    if problems:
        raise HitsStampsError("; ".join(problems))
    return recipe


def make_optimizer(recipe: Recipe, params) -> torch.optim.Optimizer:
    name = recipe.optimizer
    if name == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, eps=recipe.eps, weight_decay=recipe.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, eps=recipe.eps, weight_decay=recipe.weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=recipe.lr, alpha=recipe.rmsprop_alpha, eps=recipe.eps,
            weight_decay=recipe.weight_decay,
        )
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
    raise HitsStampsError(f"unknown optimizer {name!r}")


def _labelled(stamps: StampSet, what: str) -> StampSet:
    keep = stamps.labels >= 0
    if not keep.any():
        raise HitsStampsError(f"{what} has no labelled stamps (labels 0 or 1)")
    return stamps if keep.all() else stamps[keep]


def fit(
    cfg: TrainConfig,
    train: StampSet,
    out_dir: str | os.PathLike,
    val: StampSet | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    data_path: str | os.PathLike | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> modeldir.TrainedModel:
    """Train `cfg.model` on `train` and write a model directory to `out_dir`.

    Without `val`, a stratified `cfg.val_fraction` of `train` is held out (seeded). Unknown labels
    (-1) are dropped with a count in the history metadata. Returns the trained model, loaded back
    from its directory.

    The directory is built in `.NAME.partial` beside `out_dir` (checkpoints included) and moved into
    place only when complete; with `overwrite` the old directory is replaced only then, so a refused,
    failed or killed run leaves it untouched. The output is locked: a second writer is refused.
    `resume` continues the partial directory's checkpoint (or a finished directory's, to train more
    epochs) and refuses data, a seed or hyper-parameters other than the checkpoint's, naming them.
    """
    out = Path(out_dir)
    with output_lock(out):
        return _fit(cfg, train, out, val, resume, overwrite, progress, data_path, on_epoch)


def _resume_source(out: Path, work: Path, resume: bool, overwrite: bool) -> Path | None:
    """The directory whose checkpoint `resume` continues (None: a fresh start), after checking `out`."""
    if out.exists() and not out.is_dir():
        raise HitsStampsError(f"{out}: exists and is not a directory; expected a model directory path")
    if out.is_dir() and any(out.iterdir()) and not (resume or overwrite):
        raise HitsStampsError(
            f"{out}: model directory exists; pass --resume to continue or --overwrite to replace it"
        )
    if overwrite and not resume and out.is_dir() and any(out.iterdir()) and not modeldir.is_model_dir(out):
        raise HitsStampsError(f"{out}: not a hits-stamps model directory (no {modeldir.CONFIG}); "
                              "refusing to replace it with --overwrite")
    if not resume:
        if (work / modeldir.CHECKPOINT).is_file() and not overwrite:
            raise HitsStampsError(f"{out}: an interrupted training is in {work}; pass --resume to continue it "
                                  "or --overwrite to start again")
        return None
    for source in (work, out):
        if (source / modeldir.CHECKPOINT).is_file():
            return source
    raise HitsStampsError(f"{out}: nothing to resume (no {modeldir.CHECKPOINT})")


def _resume_differences(stored: dict[str, Any], cfg: TrainConfig, recipe: Recipe, val_given: bool,
                        data: dict[str, Any]) -> list[str]:
    """What a resumed run would change against the run that wrote the checkpoint (empty: nothing)."""
    diffs = []
    then_recipe, now_recipe = stored.get("recipe", {}), dataclasses.asdict(recipe)
    for key in now_recipe:
        if key != "epochs" and then_recipe.get(key) != now_recipe[key]:
            diffs.append(f"{key} {then_recipe.get(key)!r} then, {now_recipe[key]!r} now")
    if then_recipe.get("epochs") != recipe.epochs and recipe.lr_schedule != "constant":
        diffs.append(f"epochs {then_recipe.get('epochs')!r} then, {recipe.epochs!r} now (the "
                     f"{recipe.lr_schedule} learning-rate schedule depends on it)")
    then_cfg = stored.get("train_config", {})
    keys = ["seed", "steps_per_epoch", "early_stopping_patience"] + ([] if val_given else ["val_fraction"])
    for key in keys:
        if then_cfg.get(key) != getattr(cfg, key):
            diffs.append(f"{key} {then_cfg.get(key)!r} then, {getattr(cfg, key)!r} now")
    then_data = stored.get("training_data", {})
    for key, what in (("train_sha256", "training data"), ("val_sha256", "validation data")):
        if then_data.get(key) != data[key]:
            was = f"content sha256 {then_data[key][:12]}" if then_data.get(key) else "none (or not recorded)"
            now = f"content sha256 {data[key][:12]}" if data[key] else "none"
            diffs.append(f"{what}: {was} then, {now} now")
    return diffs


def _fit(cfg, train, out, val, resume, overwrite, progress, data_path, on_epoch) -> modeldir.TrainedModel:
    spec = get_spec(cfg.model)
    recipe = resolve_recipe(cfg)
    device = resolve_device(cfg.device)
    work = modeldir.partial_dir(out)
    source = _resume_source(out, work, resume, overwrite)
    ckpt_path = work / modeldir.CHECKPOINT
    stored_cfg = None
    stored_kwargs = None
    stored_threads = None
    if source is not None and (source / modeldir.CONFIG).exists():
        stored_cfg = modeldir.read_json(source / modeldir.CONFIG)
        if not isinstance(stored_cfg, dict):
            raise StampFileError(source / modeldir.CONFIG, None, "a JSON object", f"{stored_cfg!r:.80}")
        if stored_cfg.get("model") != spec.name:
            raise HitsStampsError(f"{out}: cannot resume {stored_cfg.get('model')!r} training as model {spec.name!r}")
        stored_kwargs = stored_cfg.get("model_kwargs")
        stored_threads = (stored_cfg.get("compute") or {}).get("threads")
    data_identity = {
        "train_sha256": modeldir.stamps_sha256(train),
        "val_sha256": modeldir.stamps_sha256(val) if val is not None else None,
    }
    if stored_cfg is not None:
        diffs = _resume_differences(stored_cfg, cfg, recipe, val is not None, data_identity)
        if diffs:
            raise HitsStampsError(f"{out}: cannot resume with other settings than the checkpoint's: "
                                  + "; ".join(diffs) + " (rerun with the original values, or --overwrite)")

    train = _labelled(train, "training data")
    if val is None:
        if not 0 < cfg.val_fraction < 1:
            raise HitsStampsError(f"val_fraction must be in (0, 1); got {cfg.val_fraction}")
        train, val = train.split((1 - cfg.val_fraction, cfg.val_fraction), seed=cfg.seed)
    else:
        val = _labelled(val, "validation data")
    if val.size != train.size or val.n_channels != train.n_channels:
        raise HitsStampsError(
            f"validation stamps {val.shape[1:]} differ from training stamps {train.shape[1:]}"
        )

    # every check passed: only now is anything written (into the partial directory)
    if source is not work and work.exists():
        shutil.rmtree(work)
    if source == out:  # more epochs for a finished model: continue a copy, swap it in when done
        shutil.copytree(out, work)
        (work / modeldir.METRICS).unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    pre = Preprocessor(PreprocessConfig(nan_policy=recipe.nan_policy, scaling=recipe.scaling))
    pre.fit(train.images, train.channels)
    x_train = torch.from_numpy(pre.transform(train.images))
    y_train = torch.from_numpy(train.labels)
    x_val = torch.from_numpy(pre.transform(val.images, report=False))
    y_val = torch.from_numpy(val.labels)

    torch.manual_seed(cfg.seed)
    kwargs = {**spec.default_kwargs, **cfg.model_kwargs}
    if spec.data_kwargs is not None:  # arguments resolved on the training stamps (cvae: its conditions)
        try:
            kwargs = spec.data_kwargs(train, kwargs)
        except ValueError as exc:
            raise HitsStampsError(f"{spec.name}: {exc}") from exc
    if stored_kwargs is not None and stored_kwargs != kwargs:
        if cfg.model_kwargs:
            raise HitsStampsError(
                f"{out}: resume with the model arguments it was started with: {stored_kwargs}; got {kwargs}"
            )
        kwargs = dict(stored_kwargs)  # resuming without model arguments: take the stored ones
    try:
        model = spec.builder(in_channels=train.n_channels, size=train.size, **kwargs).to(device)
    except (TypeError, ValueError) as exc:
        raise HitsStampsError(
            f"{spec.name}: cannot build the model for {train.size[0]}x{train.size[1]}x{train.n_channels} "
            f"stamps with arguments {kwargs}: {exc}"
        ) from exc
    if "training_targets" in spec.hooks:  # models trained on other targets than the label (cvae: kinds)
        try:
            y_train = torch.from_numpy(model.training_targets(train))
            y_val = torch.from_numpy(model.training_targets(val))
        except ValueError as exc:
            raise HitsStampsError(f"{spec.name}: {exc}") from exc
    if "fit_input_stats" in spec.hooks:  # models that hold their own invertible input scaling (cvae)
        model.fit_input_stats(x_train)
    optimizer = make_optimizer(recipe, model.parameters())
    n_train = len(train)
    steps = cfg.steps_per_epoch or math.ceil(n_train / recipe.batch_size)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps * recipe.epochs)
        if recipe.lr_schedule == "cosine"
        else None
    )

    precision = hardware.choose_precision(cfg.precision, device)
    if cfg.threads is not None or stored_threads is None:
        # never more than torch is set to (its default: the cores), fewer where other work keeps cores busy
        threads = cfg.threads or min(hardware.choose_threads(), torch.get_num_threads())
    else:
        threads = int(stored_threads)  # resume: the thread count the checkpoint was computed with
    config = {
        "model": spec.name,
        "task": spec.task,
        "model_kwargs": kwargs,
        "input": {"size": list(train.size), "channels": list(train.channels)},
        "class_names": list(modeldir.CLASS_NAMES),
        "recipe": dataclasses.asdict(recipe),
        "train_config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "model_kwargs"},
        "preprocess": pre.to_dict(),
        "seed": cfg.seed,
        "n_parameters": count_parameters(model),
        "training_data": {
            "path": str(data_path) if data_path else None,
            "sha256": modeldir.file_sha256(data_path) if data_path else None,
            **data_identity,
            "n_train": n_train,
            "n_val": len(val),
            "class_balance_train": train.class_balance(),
        },
        "package_version": __version__,
        "compute": {"precision": precision, "threads": threads, "cpu": hardware.describe_cpu()},
    }
    history: list[dict[str, Any]] = []
    start_epoch = 0
    best = {"val_loss": math.inf, "epoch": -1, "state": None, "bad_epochs": 0}
    if resume:
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and "scheduler" in ckpt:
            scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        history = list(ckpt["history"])
        start_epoch = int(ckpt["epoch"]) + 1
        best = dict(ckpt["best"])
        if recipe.epochs < start_epoch:
            raise HitsStampsError(f"{out}: the checkpoint has {start_epoch} epochs already; resume with "
                                  f"--epochs >= {start_epoch}; got {recipe.epochs}")
    modeldir.write_json(work / modeldir.CONFIG, config)

    bar = _Progress(progress, recipe.epochs, steps, spec.name)
    cast = hardware.autocast(precision, device)
    with bar, hardware.torch_threads(threads):
        for epoch in range(start_epoch, recipe.epochs):
            t0 = time.perf_counter()
            rng = np.random.default_rng([cfg.seed, epoch])
            order = torch.from_numpy(_epoch_order(rng, n_train, steps * recipe.batch_size))
            model.train()
            sums = {"loss": 0.0, "correct": 0, "n": 0}
            parts_sum: dict[str, float] = {}
            bar.start_epoch(epoch)
            for step in range(steps):
                idx = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
                if len(idx) == 0:
                    break
                xb = x_train.index_select(0, idx)  # (B, C, H, W) gathered from the epoch's tensor
                if recipe.augment != "none":
                    xb = augment_batch(xb, recipe.augment, rng)
                xb, yb = xb.to(device), y_train.index_select(0, idx).to(device)
                with cast:
                    res = spec.objective(model, xb, yb, n_train)
                optimizer.zero_grad(set_to_none=True)
                res.loss.backward()
                if recipe.clip_grad_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad_norm)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                b = len(idx)
                loss_value = float(res.loss.detach())
                if not math.isfinite(loss_value):
                    raise HitsStampsError(
                        f"{spec.name}: loss became {loss_value} at epoch {epoch + 1}, step {step + 1}; "
                        "try a lower learning rate"
                    )
                sums["loss"] += loss_value * b
                sums["n"] += b
                if res.logits is not None:
                    sums["correct"] += int((res.logits.argmax(-1) == yb).sum())
                for k, v in res.parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + float(v) * b
                bar.step(sums["loss"] / sums["n"], sums["correct"] / sums["n"] if res.logits is not None else None)
            row: dict[str, Any] = {"epoch": epoch + 1, "loss": sums["loss"] / sums["n"]}
            if spec.task.classifies:
                row["accuracy"] = sums["correct"] / sums["n"]
            row.update({k: v / sums["n"] for k, v in parts_sum.items()})
            with cast:
                row.update(evaluate_objective(spec, model, x_val, y_val, n_train, recipe.batch_size, device))
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            bar.end_epoch(row)
            if row["val_loss"] < best["val_loss"]:
                best = {
                    "val_loss": row["val_loss"], "epoch": epoch, "bad_epochs": 0,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                }
            else:
                best["bad_epochs"] += 1
            stop = (
                cfg.early_stopping_patience is not None
                and best["bad_epochs"] >= cfg.early_stopping_patience
            )
            _save_checkpoint(ckpt_path, epoch, model, optimizer, scheduler, history, best)
            if on_epoch is not None:
                on_epoch(row)
            if stop:
                break

    if cfg.early_stopping_patience is not None and best["state"] is not None:
        model.load_state_dict(best["state"])
        config["restored_best_epoch"] = best["epoch"] + 1
    if spec.task is Task.GENERATOR:  # observing conditions and masks that generated stamps are derived with
        from hits_stamps.generation.consistent import write_bank
        from hits_stamps.generation.posthoc import fit_sampling

        fit_sampling(model, x_train, y_train).save(work)  # latent mixture, residual model, condition frequencies
        config["generation_conditions"] = write_bank(work, train, y_train.numpy())
    modeldir.save_weights(model, work / modeldir.WEIGHTS)
    config["epochs_completed"] = len(history)
    modeldir.write_json(work / modeldir.CONFIG, config)
    modeldir.write_json(work / modeldir.HISTORY, history)
    replace_dir(work, out)  # complete: only now is an existing directory replaced
    return modeldir.load_model(out)


def _epoch_order(rng: np.random.Generator, n: int, total: int) -> np.ndarray:
    """Indices for one epoch: whole permutations of 0..n-1, concatenated up to `total`."""
    reps = max(1, math.ceil(total / n))
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[: max(total, 0)]


@torch.no_grad()
def evaluate_objective(spec, model, x, y, n_train, batch_size, device) -> dict[str, float]:
    """Validation loss (and accuracy for classifiers), in eval mode."""
    model.eval()
    total, correct, n = 0.0, 0, 0
    for start in range(0, len(x), max(batch_size, 256)):
        xb = x[start : start + max(batch_size, 256)].to(device)
        yb = y[start : start + max(batch_size, 256)].to(device)
        res = spec.objective(model, xb, yb, n_train)
        total += float(res.loss) * len(xb)
        n += len(xb)
        if res.logits is not None:
            correct += int((res.logits.argmax(-1) == yb).sum())
    out = {"val_loss": total / max(n, 1)}
    if spec.task.classifies:
        out["val_accuracy"] = correct / max(n, 1)
    return out


def _save_checkpoint(path, epoch, model, optimizer, scheduler, history, best) -> None:
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
        "best": best,
    }
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(state, tmp)


class _Progress:
    """A rich progress bar with live metrics; silent when disabled."""

    def __init__(self, enabled: bool, epochs: int, steps: int, name: str):
        self.enabled = enabled
        self.epochs, self.steps, self.name = epochs, steps, name
        self._p = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._p = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(),
                TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                TextColumn("{task.fields[metrics]}"), transient=False,
            )
            self._p.__enter__()
            self._task = self._p.add_task(self.name, total=self.steps, metrics="")
        return self

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)

    def start_epoch(self, epoch: int) -> None:
        if self._p is not None:
            self._p.reset(self._task, total=self.steps,
                          description=f"{self.name} epoch {epoch + 1}/{self.epochs}")

    def step(self, loss: float, acc: float | None) -> None:
        if self._p is not None:
            m = f"loss {loss:.4f}" + (f" acc {acc:.4f}" if acc is not None else "")
            self._p.update(self._task, advance=1, metrics=m)

    def end_epoch(self, row: dict[str, Any]) -> None:
        if self._p is not None:
            m = "  ".join(f"{k} {v:.4f}" for k, v in row.items()
                          if k in ("loss", "accuracy", "val_loss", "val_accuracy"))
            self._p.console.print(f"{self.name} epoch {row['epoch']}/{self.epochs}: {m}")
