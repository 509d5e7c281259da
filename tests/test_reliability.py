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


# ----------------------------------------------------------------------------- stamp files: sizes before reading


def _forged_npz(path: Path, shape: tuple[int, ...], data: bytes) -> Path:
    """An .npz whose images.npy header declares `shape` (float32) but holds only `data`."""
    import io
    import zipfile

    import numpy as np

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("images.npy", buf.getvalue() + data)
    return path


@pytest.mark.parametrize("command", ["info", "predict", "evaluate", "convert"])
def test_a_forged_stamp_count_is_refused_before_allocating(files, tmp_path, capsys, command):
    data = _forged_npz(tmp_path / "forged.npz", (10**9, 21, 21, 4), bytes(64))
    out = tmp_path / "out"
    argv = {
        "info": ["info", str(data)],
        "predict": ["predict", str(files / "model"), "--data", str(data), "--out", str(out), "--no-progress"],
        "evaluate": ["evaluate", str(files / "model"), "--data", str(data), "--out", str(out), "--no-progress"],
        "convert": ["convert", str(data), "--out", str(tmp_path / "x.h5")],
    }[command]
    _one_line_error(capsys, main(argv), r"forged.npz \[images\]: expected 7056000000000 bytes .* found 64 bytes")


def test_an_array_larger_than_the_available_memory_is_refused(tmp_path, capsys, monkeypatch):
    from hits_stamps.datasets import make_synthetic_stamps
    from hits_stamps.io import native, write_stamps

    for ext in ("npz", "h5"):
        path = write_stamps(make_synthetic_stamps(50, seed=0), tmp_path / f"s.{ext}")
        monkeypatch.setattr(native, "available_memory", lambda: 10_000)  # 10 kB free
        _one_line_error(capsys, main(["info", str(path)]), r"s\.(npz|h5) \[images\]: expected an array that fits")
        monkeypatch.undo()
        assert main(["info", str(path)]) == 0


# ----------------------------------------------------------------------------- fault injection: train


def _tree_digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_refused_or_failed_train_overwrite_keeps_the_old_model(files, tmp_path, capsys):
    from hits_stamps.datasets import make_synthetic_stamps
    from hits_stamps.io import write_stamps
    from hits_stamps.training import TrainConfig, fit, load_model

    model = _copy_model(files, tmp_path / "m")
    before = _tree_digest(model)
    unlabelled = make_synthetic_stamps(40, seed=0)
    unlabelled.labels[:] = -1
    write_stamps(unlabelled, tmp_path / "u.npz")
    for extra, data in ((["--batch-size", "0"], files / "train.npz"), ([], tmp_path / "u.npz")):
        argv = _train_args(files, model, "--overwrite", "--epochs", "1", *extra)
        argv[argv.index("--data") + 1] = str(data)
        _one_line_error(capsys, main(argv))
        assert _tree_digest(model) == before

    def fail(row):
        raise RuntimeError("injected failure after an epoch")

    cfg = TrainConfig(model="rotinv-cnn", epochs=2, seed=1, model_kwargs=SMALL)
    with pytest.raises(RuntimeError, match="injected"):
        fit(cfg, make_synthetic_stamps(60, seed=2), model, overwrite=True, progress=False, on_epoch=fail)
    assert _tree_digest(model) == before and load_model(model).config["seed"] == 0
    # a complete overwrite replaces it, and leaves no partial folder or lock behind
    fit(cfg, make_synthetic_stamps(60, seed=2), model, overwrite=True, progress=False)
    assert load_model(model).config["seed"] == 1 and "metrics.json" not in _tree_digest(model)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_killed_train_overwrite_keeps_the_old_model(files, tmp_path):
    """SIGKILL in the middle of training: the old directory is untouched and nothing blocks the next run."""
    import signal
    import time

    model = _copy_model(files, tmp_path / "m")
    before = _tree_digest(model)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    argv = _train_args(files, model, "--overwrite", "--epochs", "200", "--recipe", "lr_schedule=constant")
    proc = subprocess.Popen([sys.executable, "-c", "from hits_stamps.cli import run_main; run_main()", *argv],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / ".m.partial" / "checkpoint.pt"
    deadline = time.monotonic() + 90
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "training never reached its first checkpoint"
    assert _tree_digest(model) == before
    # the dead process's lock does not block; --resume continues the interrupted (partial) training
    assert main(_train_args(files, model, "--resume", "--epochs", "2", "--recipe", "lr_schedule=constant")) == 0
    assert _tree_digest(model) != before and not (tmp_path / ".m.partial").exists()


@pytest.mark.parametrize("change,what", [
    (["--lr", "0.01"], r"lr 0.003 then, 0.01 now"),
    (["--batch-size", "16"], r"batch_size 32 then, 16 now"),
    (["--seed", "5"], r"seed 0 then, 5 now"),
    (["--data", "OTHER"], r"training data: content sha256 \w+ then, content sha256 \w+ now"),
    (["--epochs", "3"], r"epochs 1 then, 3 now \(the cosine learning-rate schedule"),
])
def test_train_resume_refuses_other_settings(files, tmp_path, capsys, change, what):
    from hits_stamps.datasets import make_synthetic_stamps
    from hits_stamps.io import write_stamps

    model = _copy_model(files, tmp_path / "m")
    before = _tree_digest(model)
    argv = _train_args(files, model, "--resume", "--batch-size", "32", "--epochs", "1")
    if change[0] == "--data":
        argv[argv.index("--data") + 1] = str(write_stamps(make_synthetic_stamps(120, seed=5), tmp_path / "o.npz"))
    else:
        argv += change
    _one_line_error(capsys, main(argv), r"cannot resume with other settings than the checkpoint's: .*" + what)
    assert _tree_digest(model) == before


# ----------------------------------------------------------------------------- fault injection: predict


def _predict(files, out, *extra, model=None):
    return main(["predict", str(model or files / "model"), "--data", str(files / "test.h5"), "--out", str(out),
                 "--no-progress", "--batch-size", "16", "--chunk-rows", "32", *extra])


def _interrupted_partial(files, out: Path, rows: int, **kw) -> Path:
    """Run predict_file until at least `rows` rows are written, then interrupt it (as a kill would)."""
    from hits_stamps.serve import PredictConfig, predict_file

    def stop(done, total):
        if done >= rows:
            raise KeyboardInterrupt

    cfg = PredictConfig(batch_size=16, chunk_rows=32, **kw)
    with pytest.raises(KeyboardInterrupt):
        predict_file(files / "model", files / "test.h5", out, cfg, progress=stop)
    return out.parent / f".{out.name}.partial"


@pytest.fixture(scope="module")
def reference_csv(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.csv"
    assert _predict(files, out) == 0
    return out.read_bytes()


def _keep_lines(path: Path, n: int, edit=None) -> None:
    lines = path.read_bytes().splitlines(keepends=True)[: n + 1]  # header + n rows
    if edit is not None:
        edit(lines)
    path.write_bytes(b"".join(lines))


@pytest.mark.parametrize("damage", ["cut at row 73", "corrupt row 40", "NUL bytes in row 50", "half last line"])
def test_predict_resume_from_any_row_is_byte_identical(files, tmp_path, reference_csv, damage):
    out = tmp_path / "p.csv"
    partial = _interrupted_partial(files, out, 96)
    if damage == "cut at row 73":
        _keep_lines(partial, 73)
    elif damage == "corrupt row 40":
        _keep_lines(partial, 96, lambda lines: lines.__setitem__(40, lines[40].replace(b",0.", b",7.")))
    elif damage == "NUL bytes in row 50":
        _keep_lines(partial, 96, lambda lines: lines.__setitem__(50, b"\0" * 12 + b"\n"))
    else:
        _keep_lines(partial, 96, lambda lines: lines.__setitem__(96, lines[96][:8]))
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")
        assert _predict(files, out, "--resume") == 0
    assert out.read_bytes() == reference_csv
    assert not partial.exists()


@pytest.mark.parametrize("change,what", [
    (["--threshold", "0.7"], r"threshold 0.5 then, 0.7 now"),
    (["--batch-size", "32"], r"batch_size 16 then, 32 now"),
    (["OTHER MODEL"], r"model '\w+' then, '\w+' now"),
])
def test_predict_resume_refuses_another_model_or_option(files, tmp_path, capsys, change, what):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "p.csv"
    partial = _interrupted_partial(files, out, 64)
    before = partial.read_bytes()
    model = None
    if change == ["OTHER MODEL"]:
        model = _copy_model(files, tmp_path / "other")
        w = load_file(str(model / "model.safetensors"))
        save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in w.items()}, str(model / "model.safetensors"))
        change = []
    argv = ["predict", str(model or files / "model"), "--data", str(files / "test.h5"), "--out", str(out),
            "--no-progress", "--batch-size", "16", "--chunk-rows", "32", "--resume"]
    for opt in change[::2]:
        i = argv.index(opt) if opt in argv else None
        if i is None:
            argv += change
        else:
            argv[i + 1] = change[change.index(opt) + 1]
    _one_line_error(capsys, main(argv), r"cannot resume: the finished rows were computed differently: .*" + what)
    assert partial.read_bytes() == before and not out.exists()


def test_predict_resume_refuses_rows_of_another_input(files, tmp_path, capsys):
    out = tmp_path / "p.csv"
    partial = _interrupted_partial(files, out, 64)
    _keep_lines(partial, 64, lambda lines: lines.__setitem__(20, b"someone_else," + lines[20].split(b",", 1)[1]))
    _one_line_error(capsys, _predict(files, out, "--resume"), r"row 20 has id 'someone_else'.*another input")


def test_predict_overwrite_replaces_only_a_complete_file(files, tmp_path, reference_csv):
    out = tmp_path / "p.csv"
    out.write_text("old results\n")
    from hits_stamps.serve import PredictConfig, predict_file

    def stop(done, total):
        if done >= 64:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_file(files / "model", files / "test.h5", out, PredictConfig(batch_size=16, chunk_rows=32),
                     overwrite=True, progress=stop)
    assert out.read_text() == "old results\n"
    assert _predict(files, out, "--overwrite") == 0 and out.read_bytes() == reference_csv


# ----------------------------------------------------------------------------- fault injection: concurrency


@pytest.fixture
def held_lock():
    """Hold the lock of an output from another process, as a second writer would."""
    procs = []

    def hold(path: Path):
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        code = ("import sys\nfrom hits_stamps.io.atomic import output_lock\n"
                "with output_lock(sys.argv[1]):\n    print('locked', flush=True)\n    sys.stdin.read()\n")
        proc = subprocess.Popen([sys.executable, "-c", code, str(path)], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "locked"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=30)


@pytest.mark.parametrize("command", ["predict", "train", "evaluate", "simulate"])
def test_a_second_writer_of_one_output_is_refused(files, tmp_path, capsys, held_lock, command):
    out = {"predict": tmp_path / "p.csv", "train": tmp_path / "m", "evaluate": tmp_path / "ev",
           "simulate": tmp_path / "s.npz"}[command]
    argv = {
        "predict": ["predict", str(files / "model"), "--data", str(files / "test.h5"), "--out", str(out),
                    "--no-progress"],
        "train": _train_args(files, out, "--epochs", "1"),
        "evaluate": ["evaluate", str(files / "model"), "--data", str(files / "test.h5"), "--out", str(out),
                     "--no-progress"],
        "simulate": ["simulate", "--n", "20", "--out", str(out)],
    }[command]
    proc = held_lock(out)
    _one_line_error(capsys, main(argv), r"another hits-stamps process is writing this output")
    assert not out.exists()
    proc.stdin.close()
    proc.wait(timeout=30)
    assert main(argv) == 0 and out.exists()


def test_stale_temporary_files_of_a_killed_writer_are_removed(files, tmp_path):
    from hits_stamps.datasets import make_synthetic_stamps
    from hits_stamps.io import write_stamps

    stale = tmp_path / ".s.npz.abcd1234.tmp.npz"
    stale.write_bytes(b"half a file")
    other = tmp_path / ".t.npz.abcd1234.tmp.npz"  # another output's: not ours to remove
    other.write_bytes(b"x")
    (tmp_path / ".s.npz.lock").write_text("")  # a dead process's lock file does not block
    write_stamps(make_synthetic_stamps(10, seed=0), tmp_path / "s.npz")
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".t.npz.abcd1234.tmp.npz", "s.npz"]


# ----------------------------------------------------------------------------- fault injection: disk


def _run_with_file_size_limit(argv: list[str], limit: int) -> subprocess.CompletedProcess:
    """Run the CLI with RLIMIT_FSIZE = `limit` bytes (as on a full disk: writes fail with EFBIG)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    code = ("import resource, signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
            "from hits_stamps.cli import run_main\nrun_main()\n")
    return subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=300)


def test_a_full_disk_is_one_line_and_loses_nothing(files, tmp_path, reference_csv):
    # simulate to HDF5: one line (HDF5 used to segfault), no temporary file, an old file kept
    out = tmp_path / "s.h5"
    out.write_bytes(b"old")
    proc = _run_with_file_size_limit(["simulate", "--n", "2000", "--out", str(out), "--overwrite"], 100_000)
    assert proc.returncode not in (0, 139) and "Traceback" not in proc.stderr, proc.stderr
    assert re.fullmatch(r"error: \S+s\.h5: write failed, nothing written \(File too large\)\n", proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"] and out.read_bytes() == b"old"
    # predict: the finished rows are kept under the temporary name, and --resume completes the file
    csv_out = tmp_path / "p.csv"
    argv = ["predict", str(files / "model"), "--data", str(files / "test.h5"), "--out", str(csv_out),
            "--no-progress", "--batch-size", "16", "--chunk-rows", "32"]
    proc = _run_with_file_size_limit(argv, 2_000)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(r"write failed after \d+ rows \(File too large\); the finished rows are kept", proc.stderr)
    assert not csv_out.exists()
    assert main(argv + ["--resume"]) == 0 and csv_out.read_bytes() == reference_csv


@pytest.mark.parametrize("command", ["predict", "train", "evaluate", "simulate"])
def test_an_output_below_a_file_or_in_a_read_only_folder_is_one_line(files, tmp_path, capsys, command):
    (tmp_path / "afile").write_text("x")
    targets = [tmp_path / "afile" / "sub" / "out"]
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        targets.append(ro / "out")
    for out in targets:
        argv = {
            "predict": ["predict", str(files / "model"), "--data", str(files / "test.h5"), "--out", str(out) + ".csv",
                        "--no-progress"],
            "train": _train_args(files, out, "--epochs", "1"),
            "evaluate": ["evaluate", str(files / "model"), "--data", str(files / "test.h5"), "--out", str(out),
                         "--no-progress"],
            "simulate": ["simulate", "--n", "20", "--out", str(out) + ".npz"],
        }[command]
        _one_line_error(capsys, main(argv), r"(Not a directory|Permission denied|not a directory)")


# ----------------------------------------------------------------------------- duplicate ids


def test_duplicate_ids_are_reported_and_a_validation_copy_is_refused(files, tmp_path, capsys):
    import numpy as np

    from hits_stamps.datasets import make_synthetic_stamps
    from hits_stamps.io import write_stamps
    from hits_stamps.stamps import StampSet

    s = make_synthetic_stamps(60, seed=4)
    ids = s.ids.copy()
    ids[[5, 7]] = ids[4]
    dup = write_stamps(StampSet(images=s.images, labels=s.labels, snr=s.snr, kind=s.kind, ids=ids,
                                channels=s.channels), tmp_path / "dup.npz")
    assert main(["info", str(dup)]) == 0
    assert f"1 ids occur more than once ('{ids[4]}' x3)" in capsys.readouterr().out
    assert main(["info", str(dup), "--json"]) == 0
    assert '"duplicate_ids": 1' in capsys.readouterr().out
    val = write_stamps(s[np.arange(10)], tmp_path / "val.npz")  # the same stamps as in training
    out = tmp_path / "m"
    args = ["train", "--model", "seed-cnn", "--data", str(dup), "--val", str(val), "--out", str(out),
            "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "1 ids occur more than once" in err and "8 stamp ids are also in --data" in err
    assert not out.exists()
