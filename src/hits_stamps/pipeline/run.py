"""Run the steps of `hits-stamps run` in order, resumably, and write summary.json and report.html.

Resuming: a step that finished wrote `DIR/steps/<step>.json`; started again with the same
configuration, the run skips those steps. A directory made with another configuration is refused
(the message lists the keys that differ) unless `overwrite`, which empties it first. A failing step
raises `StepFailed` (a user-facing error: one line, non-zero exit) after writing its traceback to
`DIR/steps/<step>.error.txt`; the steps that finished are kept.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console

from hits_stamps import __version__
from hits_stamps.errors import HitsStampsError, StampFileError
from hits_stamps.io.atomic import atomic_path, output_lock
from hits_stamps.pipeline.config import RunConfig, config_hash, diff_configs, from_dict, to_dict, to_toml
from hits_stamps.pipeline.steps import TEST_SETS, RunContext, Step, plan
from hits_stamps.results import EvaluationResult, GeneratorJudgement, RunSummary
from hits_stamps.rundir import REPORT, RUN_CONFIG, STEPS_DIR, SUMMARY, RunDir
from hits_stamps.training.modeldir import read_json, write_json

__all__ = ["REPORT", "RUN_CONFIG", "STEPS_DIR", "SUMMARY", "StepFailed", "collect_summary", "load_config_of",
           "marker_path", "prepare_run_dir", "read_marker", "read_run_config", "rebuild_report", "run_pipeline",
           "write_summary"]


class StepFailed(HitsStampsError):
    """A step of the run raised; the finished steps are kept."""


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """What the run ran on: CPU model, cores, threads, Python, torch and numpy versions, device."""
    import numpy as np
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu or "unknown",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def resolved_device(device: str) -> str:
    from hits_stamps.training.loop import resolve_device

    return str(resolve_device(device))


def is_run_dir(path: Path) -> bool:
    return RunDir(path).run_config.is_file()


def prepare_run_dir(out: Path, config: RunConfig, overwrite: bool) -> None:
    """Create `out`, or check that it was made with `config` (or empty it when `overwrite`)."""
    current = to_dict(config)
    if out.exists() and not out.is_dir():
        raise HitsStampsError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not is_run_dir(out):
            raise HitsStampsError(
                f"{out}: exists, is not empty and is not a hits-stamps run directory (no {RUN_CONFIG}); "
                "choose another --out"
            )
        stored = read_run_config(out)
        if overwrite:
            _clear_run_dir(out)
        elif stored.get("config") != current:
            diffs = diff_configs(stored.get("config", {}), current)
            shown = "; ".join(diffs[:6]) + (f"; ... ({len(diffs)} in all)" if len(diffs) > 6 else "")
            raise HitsStampsError(
                f"{out} was made with a different configuration ({shown}); rerun with the same "
                "arguments to resume, pass --overwrite to start again, or choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    layout = RunDir(out)
    if not is_run_dir(out):
        write_json(layout.run_config, {"config": current, "hash": config_hash(config),
                                       "package_version": __version__, "created": _now()})
        with atomic_path(layout.run_config_toml, overwrite=True) as tmp:
            tmp.write_text(to_toml(config))
    layout.steps.mkdir(exist_ok=True)


def _clear_run_dir(out: Path) -> None:
    """Remove everything in a run directory (only called on one that has run_config.json)."""
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def marker_path(out: Path, step: str) -> Path:
    return RunDir(out).marker(step)


def read_run_config(out: Path) -> dict[str, Any]:
    """DIR/run_config.json, checked: a JSON object whose `config` is a table (StampFileError naming it)."""
    path = RunDir(out).run_config
    stored = read_json(path)
    if not isinstance(stored, dict) or not isinstance(stored.get("config"), dict):
        raise StampFileError(path, "config", "the run configuration written by hits-stamps run",
                             f"{stored!r:.80}; remove the file or choose another --out")
    return stored


def read_marker(out: Path, step: str) -> dict[str, Any]:
    """The marker of a finished step, checked (a malformed one is refused, naming the file)."""
    path = marker_path(out, step)
    done = read_json(path)
    seconds = done.get("duration_s") if isinstance(done, dict) else None
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        raise StampFileError(path, "duration_s", "a step marker written by hits-stamps run",
                             f"{done!r:.80}; delete it to run the step again")
    return done


def load_config_of(out: Path) -> RunConfig:
    """The configuration a run directory was made with."""
    if not is_run_dir(out):
        raise HitsStampsError(f"{out}: not a hits-stamps run directory (no {RUN_CONFIG})")
    return from_dict(read_run_config(out)["config"], str(RunDir(out).run_config))


def run_pipeline(
    config: RunConfig,
    out: str | os.PathLike,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = True,
    console: Console | None = None,
    steps: list[Step] | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Run (or resume) every step for `config` in `out`; returns the summary (also in summary.json).

    `steps` replaces the plan (tests use it to inject a failing step). The run directory is locked:
    a second `hits-stamps run` on it is refused while this one runs.
    """
    out = Path(out)
    with output_lock(out):
        return _run_locked(config, out, overwrite, device, progress, console, steps, report)


def _run_locked(config, out, overwrite, device, progress, console, steps, report) -> dict[str, Any]:
    console = console or Console()
    device = resolved_device(device)
    steps = plan(config) if steps is None else steps
    prepare_run_dir(out, config, overwrite)
    ctx = RunContext(out=out, config=config, device=device, progress=progress, console=console)
    t_run = time.perf_counter()
    n = len(steps)
    ran = 0
    for i, step in enumerate(steps, 1):
        marker = marker_path(out, step.name)
        if marker.exists():
            done = read_marker(out, step.name)
            console.print(f"[dim][{i}/{n}] {step.title}: done earlier ({done['duration_s']:.1f} s), skipped[/dim]")
            continue
        console.rule(f"[bold][{i}/{n}] {step.title}")
        err_path = RunDir(out).error(step.name)
        t0, c0 = time.perf_counter(), _cpu_seconds()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = step.fn(ctx)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            dt = time.perf_counter() - t0
            err_path.write_text(traceback.format_exc())
            msg = f"{type(exc).__name__}: {exc}" if not isinstance(exc, HitsStampsError) else str(exc)
            raise StepFailed(
                f"step {step.name!r} failed after {dt:.1f} s: {msg} (traceback in {err_path}); "
                f"{i - 1} of {n} steps are finished and kept in {out}; fix the cause and rerun the same "
                "command to resume"
            ) from exc
        dt, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        ran += 1
        notes = _collapse_warnings(caught)
        for note in notes:
            console.print(f"  [yellow]warning:[/yellow] {note}", highlight=False)
        write_json(marker, {"step": step.name, "title": step.title, "duration_s": dt, "cpu_s": cpu,
                            "load_avg": _load_avg(), "finished": _now(), "device": device,
                            "warnings": notes, "result": result})
        if err_path.exists():
            err_path.unlink()
        console.print(f"[green]done[/green] {step.title} in {dt:.1f} s (CPU {cpu:.1f} s)")
    summary = write_summary(out, config, steps, device)
    elapsed = time.perf_counter() - t_run
    if report:
        from hits_stamps.report.html import write_report

        path = write_report(out)
        console.print(f"report: {path}")
    total = summary["durations_s"].get("total", elapsed)
    if total > config.time_budget_s:
        warnings.warn(
            f"the run took {total:.0f} s of step time, over its time budget of {config.time_budget_s:.0f} s",
            stacklevel=2,
        )
    console.print(f"[bold]finished[/bold]: {ran} steps run, {n - ran} skipped, {elapsed:.1f} s this time; "
                  f"summary: {RunDir(out).summary}")
    return summary


def collect_summary(out: Path, config: RunConfig | None = None, steps: list[Step] | None = None,
                    device: str | None = None) -> RunSummary:
    """summary.json's content, gathered from the step markers and the files the steps wrote."""
    out = Path(out)
    layout = RunDir(out)
    config = config or load_config_of(out)
    names = [s.name for s in steps] if steps is not None else [s.name for s in plan(config)]
    markers = {name: read_marker(out, name) for name in names if marker_path(out, name).exists()}
    results = {name: m.get("result", {}) for name, m in markers.items()}
    durations = {name: float(m["duration_s"]) for name, m in markers.items()}
    durations["total"] = float(sum(durations.values()))
    cpu = {name: float(m["cpu_s"]) for name, m in markers.items() if "cpu_s" in m}
    cpu["total"] = float(sum(cpu.values()))
    load = {name: m["load_avg"] for name, m in markers.items() if m.get("load_avg")}

    models: dict[str, dict[str, Any]] = {}
    training: dict[str, Any] = {}
    for name in config.models:
        if f"train-{name}" in results:
            training[name] = results[f"train-{name}"]
        for test_set in TEST_SETS:
            mpath = layout.metrics(name, test_set)
            if mpath.exists():
                models.setdefault(name, {})[test_set] = EvaluationResult.read(mpath).to_json()

    uncertainty = {}
    for name in config.models:
        upath = layout.uncertainty(name)
        if upath.exists():
            uncertainty[name] = read_json(upath)
    generation = (GeneratorJudgement.read(layout.generation_json).to_json() if layout.generation_json.exists()
                  else None) or results.get("generate")
    augmentation = _read_if_present(layout.augmentation_json) or results.get("augment")
    return RunSummary(
        package_version=__version__,
        config=to_dict(config),
        models=models,
        training=training,
        data={k: results[k] for k in ("simulate", "build-real", "user-data") if k in results},
        calibration=results.get("calibrate"),
        uncertainty={"validation": (results.get("uncertainty") or {}).get("validation"), "models": uncertainty},
        generation=generation,
        generator_tuning=results.get("tune-cvae"),
        augmentation=augmentation,
        durations_s=durations,
        cpu_s=cpu,
        load_avg_at_step_end=load,
        steps={name: ("done" if name in markers else "failed" if layout.error(name).exists() else "not run")
               for name in names},
        machine=machine_info(device or "cpu"),
        finished=max((m.get("finished", "") for m in markers.values()), default=None),
    )


def _read_if_present(path: Path) -> Any:
    return read_json(path) if path.exists() else None


def write_summary(out: Path, config: RunConfig, steps: list[Step] | None = None,
                  device: str | None = None) -> dict[str, Any]:
    summary = collect_summary(out, config, steps, device)
    summary.write(RunDir(out).summary)
    return summary.to_json()


def rebuild_report(out: str | os.PathLike) -> Path:
    """`hits-stamps report DIR`: refresh summary.json from the step outputs and rewrite report.html."""
    from hits_stamps.report.html import write_report

    out = Path(out)
    config = load_config_of(out)
    summary_path = RunDir(out).summary
    stored = read_json(summary_path) if summary_path.exists() else {}
    summary = collect_summary(out, config)
    if isinstance(stored, dict) and stored.get("machine"):
        summary = summary.with_machine(stored["machine"])
    summary.write(summary_path)
    return write_report(out)


def _collapse_warnings(caught: list[warnings.WarningMessage], limit: int = 8) -> list[str]:
    """Warnings of a step, grouped by their text with numbers blanked: 'message (x N)'."""
    import re

    groups: dict[str, list[str]] = {}
    for w in caught:
        text = str(w.message)
        groups.setdefault(re.sub(r"\d+(\.\d+)?", "#", text), []).append(text)
    out = [texts[0] + (f" (and {len(texts) - 1} more like it)" if len(texts) > 1 else "")
           for texts in groups.values()]
    return out[:limit] + ([f"... {len(out) - limit} more kinds of warning"] if len(out) > limit else [])


def _cpu_seconds() -> float:
    """CPU seconds used so far by this process (all threads) and its finished child processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _load_avg() -> list[float] | None:
    """1, 5 and 15 minute load averages (other processes sharing the machine), where available."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None
