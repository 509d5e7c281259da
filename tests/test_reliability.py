"""Reliability: one-line errors for a user's mistake, nothing lost or mixed (fault injection).

Each test plays a hostile or unlucky user: mistyped options, bad values, corrupt model files, a
kill in the middle of a write, a full disk, a read-only folder, two writers on one output.
"""

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from hits_stamps.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(capsys, rc: int, match: str | None = None) -> str:
    """Assert a refused command: non-zero exit, one stderr line starting `error:`, no traceback."""
    err = capsys.readouterr().err
    assert rc != 0, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    if match is not None:
        assert re.search(match, lines[0]), lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- usage errors


def test_the_pinned_typer_is_the_installed_one():
    """constraints.txt pins the typer (and click) that the usage-error handling below is tested on."""
    pins = dict(
        line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert pins["typer"] == version("typer")
    assert pins["click"] == version("click")
    assert pins["torch"] == version("torch").split("+")[0]


@pytest.mark.parametrize("argv,match", [
    (["train", "--bogus"], r"No such option: --bogus"),
    (["predict", "m", "--data", "d.h5", "--out", "o.csv", "--batch-size", "abc"], r"Invalid value for '--batch-size'"),
    (["train"], r"Missing option '--model'"),
    (["predict"], r"Missing argument"),
    (["evaluate", "m", "--data"], r"requires an argument|Option '--data'"),
    (["no-such-command"], r"No such command"),
])
def test_usage_errors_are_one_line(capsys, argv, match):
    """A typer upgrade that changes its exception classes (0.29 vendors click) fails this test."""
    _one_line_error(capsys, main(argv), match)


def test_usage_error_from_the_console_script_has_no_traceback():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    script = "from hits_stamps.cli import run_main; run_main()"
    proc = subprocess.run([sys.executable, "-c", script, "train", "--bogus"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "No such option: --bogus" in proc.stderr


# ----------------------------------------------------------------------------- fixtures

SMALL = {"widths": [4, 8], "hidden": 8}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A labelled train file, a test file and a one-epoch rotinv-cnn model directory."""
    from hits_stamps.datasets import make_synthetic_stamps
    from hits_stamps.io import write_stamps
    from hits_stamps.training import TrainConfig, fit

    d = tmp_path_factory.mktemp("rel")
    write_stamps(make_synthetic_stamps(120, seed=0), d / "train.npz")
    write_stamps(make_synthetic_stamps(150, seed=1), d / "test.h5")
    fit(TrainConfig(model="rotinv-cnn", epochs=1, seed=0, model_kwargs=SMALL, recipe_overrides={"batch_size": 32}),
        make_synthetic_stamps(120, seed=0), d / "model", progress=False, data_path=d / "train.npz")
    return d


def _copy_model(files, dest: Path) -> Path:
    import shutil

    shutil.copytree(files / "model", dest)
    return dest


# ----------------------------------------------------------------------------- bad values


def _train_args(files, out, *extra):
    return ["train", "--model", "rotinv-cnn", "--data", str(files / "train.npz"), "--out", str(out),
            "--no-progress", "--model-arg", "widths=[4, 8]", "--model-arg", "hidden=8", *extra]


@pytest.mark.parametrize("extra,match", [
    (["--batch-size", "0"], r"batch_size must be an integer >= 1; got 0"),
    (["--lr", "-1"], r"lr must be a finite number > 0; got -1"),
    (["--lr", "nan"], r"lr must be a finite number > 0; got nan"),
    (["--lr", "inf"], r"lr must be a finite number > 0; got inf"),
    (["--epochs", "0"], r"epochs must be an integer >= 1; got 0"),
    (["--early-stopping", "0"], r"early_stopping_patience must be an integer >= 1"),
    (["--val-fraction", "1.5"], r"val_fraction must be in \(0, 1\)"),
    (["--device", "bogus"], r"device must be cpu, cuda, cuda:N or auto; got 'bogus'"),
    (["--recipe", "lr=NaN"], r"recipe lr must be finite"),
    (["--recipe", "batch_size=-3"], r"recipe batch_size must be an integer >= 1"),
])
def test_bad_train_values_are_refused_before_anything_is_written(files, tmp_path, capsys, extra, match):
    out = tmp_path / "m"
    _one_line_error(capsys, main(_train_args(files, out, *extra)), match)
    assert not out.exists()


@pytest.mark.parametrize("extra,match", [
    (["--batch-size", "0"], r"batch_size must be >= 1; got 0"),
    (["--threshold", "nan"], r"threshold must be in \[0, 1\]; got nan"),
    (["--mc-samples", "0"], r"mc_samples must be >= 1"),
    (["--device", "bogus"], r"device must be cpu, cuda or cuda:N; got 'bogus'"),
    (["--limit", "0"], r"limit must be >= 1"),
])
def test_bad_predict_values_are_refused(files, tmp_path, capsys, extra, match):
    out = tmp_path / "p.csv"
    rc = main(["predict", str(files / "model"), "--data", str(files / "test.h5"), "--out", str(out),
               "--no-progress", *extra])
    _one_line_error(capsys, rc, match)
    assert not out.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is present")
@pytest.mark.parametrize("command", ["train", "predict"])
def test_cuda_without_a_gpu_is_one_line(files, tmp_path, capsys, command):
    if command == "train":
        argv = _train_args(files, tmp_path / "m", "--device", "cuda")
    else:
        argv = ["predict", str(files / "model"), "--data", str(files / "test.h5"), "--out", str(tmp_path / "p.csv"),
                "--device", "cuda"]
    _one_line_error(capsys, main(argv), r"no CUDA device is available")


def test_simulate_zero_stamps_is_refused(tmp_path, capsys):
    _one_line_error(capsys, main(["simulate", "--n", "0", "--out", str(tmp_path / "s.npz")]), r"--n must be >= 1")
    assert not (tmp_path / "s.npz").exists()


def test_unlabelled_training_data_is_refused(tmp_path, capsys):
    from hits_stamps.datasets import make_synthetic_stamps
    from hits_stamps.io import write_stamps

    s = make_synthetic_stamps(40, seed=0)
    s.labels[:] = -1
    write_stamps(s, tmp_path / "u.npz")
    rc = main(["train", "--model", "rotinv-cnn", "--data", str(tmp_path / "u.npz"), "--out", str(tmp_path / "m"),
               "--epochs", "1", "--no-progress"])
    _one_line_error(capsys, rc, r"no labelled stamps")


@pytest.mark.parametrize("toml,match", [
    ("[model.rotinv-cnn]\nlr = nan\n", r"model.rotinv-cnn.lr must be a finite number"),
    ("[model.rotinv-cnn]\nlr = -0.5\n", r"model.rotinv-cnn.lr must be a finite number > 0"),
    ("[model.no-such-net]\nepochs = 2\n", r"unknown model table \[model.no-such-net\]"),
    ("time_budget_s = inf\n", r"time_budget_s must be a finite number"),
])
def test_bad_run_config_values(tmp_path, toml, match):
    from hits_stamps.errors import HitsStampsError
    from hits_stamps.pipeline.config import load_config

    (tmp_path / "c.toml").write_text(toml)
    with pytest.raises(HitsStampsError, match=match):
        load_config(tmp_path / "c.toml")


def test_malformed_run_config_and_step_marker_are_one_line(tmp_path, capsys):
    from hits_stamps.pipeline.config import load_config
    from hits_stamps.pipeline.run import RUN_CONFIG, collect_summary, marker_path, prepare_run_dir

    run = tmp_path / "run"
    cfg = load_config(quick=True)
    prepare_run_dir(run, cfg, overwrite=False)
    marker_path(run, "simulate").write_text('{"step": "simulate"}')
    from hits_stamps.errors import StampFileError

    with pytest.raises(StampFileError, match=r"simulate.json \[duration_s\]: expected a step marker"):
        collect_summary(run, cfg)
    (run / RUN_CONFIG).write_text("[1, 2]")
    _one_line_error(capsys, main(["report", str(run)]), r"run_config.json \[config\]")
    (run / RUN_CONFIG).write_text("{not json")
    _one_line_error(capsys, main(["report", str(run)]), r"run_config.json: expected valid JSON")


# ----------------------------------------------------------------------------- corrupt model directories


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _zero(p: Path) -> None:
    p.write_bytes(bytes(p.stat().st_size))


def _foreign_weights(p: Path) -> None:
    from safetensors.torch import save_file

    from hits_stamps.models.registry import get_spec

    other = get_spec("seed-cnn").builder(in_channels=4, size=(21, 21))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(p))


def _edit_config(change):
    def apply(p: Path) -> None:
        import json

        cfg = json.loads(p.read_text())
        change(cfg)
        p.write_text(json.dumps(cfg))
    return apply


CORRUPTIONS = {
    "truncated weights": ("model.safetensors", _truncate, r"model.safetensors: expected a safetensors weights file"),
    "zeroed weights": ("model.safetensors", _zero, r"model.safetensors: expected a safetensors weights file"),
    "foreign weights": ("model.safetensors", _foreign_weights, r"model.safetensors: expected the weights of the "
                        r"rotinv-cnn"),
    "config without input": ("config.json", _edit_config(lambda c: c.pop("input")), r"config.json \[input\]"),
    "config without model": ("config.json", _edit_config(lambda c: c.pop("model")), r"config.json \[model\]"),
    "config with a bad size": ("config.json", _edit_config(lambda c: c["input"].update(size="big")),
                               r"config.json \[input.size\]"),
    "config with bad kwargs": ("config.json", _edit_config(lambda c: c["model_kwargs"].update(bogus=1)),
                               r"config.json \[model_kwargs\]"),
    "config with bad preprocessing": ("config.json", _edit_config(lambda c: c.update(preprocess={"x": 1})),
                                      r"config.json \[preprocess\]"),
    "config not JSON": ("config.json", lambda p: p.write_text("{"), r"config.json: expected valid JSON"),
    "bad history": ("history.json", lambda p: p.write_text("[1, 2"), r"history.json: expected valid JSON"),
    "history not a list": ("history.json", lambda p: p.write_text('{"a": 1}'), r"history.json: expected a JSON list"),
}


@pytest.mark.parametrize("command", ["info", "predict", "evaluate", "export"])
@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_a_corrupt_model_directory_is_one_line_naming_the_file(files, tmp_path, capsys, command, case):
    name, corrupt, match = CORRUPTIONS[case]
    model = _copy_model(files, tmp_path / "model")
    corrupt(model / name)
    out = tmp_path / "out"
    argv = {
        "info": ["info", str(model)],
        "predict": ["predict", str(model), "--data", str(files / "test.h5"), "--out", str(out), "--no-progress"],
        "evaluate": ["evaluate", str(model), "--data", str(files / "test.h5"), "--out", str(out), "--no-progress"],
        "export": ["export", str(model), "--out", str(out)],
    }[command]
    _one_line_error(capsys, main(argv), match)
    assert not out.exists()
