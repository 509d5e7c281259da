"""The shared training loop through `hits-stamps train` / `evaluate` / `info`, and exact resumption."""

import json

import pytest
import torch
from safetensors.torch import load_file

from hits_stamps.cli import main
from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.io import write_stamps
from hits_stamps.training import TrainConfig, fit, load_model

# a small rotinv-cnn with dropout and augmentation, so resuming must restore both RNG streams
SMALL = {"widths": [4, 8], "hidden": 8, "dropout": 0.5}
SMALL_RECIPE = {"augment": "dihedral", "batch_size": 32}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_stamps(make_synthetic_stamps(150, seed=0), d / "train.npz")
    write_stamps(make_synthetic_stamps(80, seed=1), d / "test.npz")
    write_stamps(make_synthetic_stamps(60, seed=4), d / "val.npz")
    return d


def _cfg(epochs):
    return TrainConfig(model="rotinv-cnn", epochs=epochs, seed=7, model_kwargs=SMALL, recipe_overrides=SMALL_RECIPE)


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    data = make_synthetic_stamps(100, seed=3)
    straight = fit(_cfg(2), data, tmp_path / "a", progress=False)

    def interrupt(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(2), data, tmp_path / "b", progress=False, on_epoch=interrupt)
    # nothing under the final name until training completes; the checkpoint waits in .b.partial
    assert not (tmp_path / "b").exists() and (tmp_path / ".b.partial" / "checkpoint.pt").exists()
    resumed = fit(_cfg(2), data, tmp_path / "b", progress=False, resume=True)
    wa = load_file(str(tmp_path / "a" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["loss"] for r in straight.history] == [r["loss"] for r in resumed.history]


def test_a_different_seed_gives_different_weights(tmp_path):
    data = make_synthetic_stamps(64, seed=3)
    fit(_cfg(1), data, tmp_path / "a", progress=False)
    fit(TrainConfig(model="rotinv-cnn", epochs=1, seed=8, model_kwargs=SMALL, recipe_overrides=SMALL_RECIPE),
        data, tmp_path / "b", progress=False)
    wa, wb = (load_file(str(tmp_path / n / "model.safetensors")) for n in "ab")
    assert not all(torch.equal(wa[k], wb[k]) for k in wa)


def test_train_info_evaluate_cli(files, tmp_path, capsys):
    out = tmp_path / "seed"
    rc = main(["train", "--model", "seed-cnn", "--data", str(files / "train.npz"), "--out", str(out),
               "--epochs", "1", "--seed", "1", "--no-progress"])
    assert rc == 0
    assert "parameters: 63042" in capsys.readouterr().out
    # the directory alone rebuilds the model (no training arguments needed)
    model = load_model(out)
    assert model.name == "seed-cnn" and model.predict_proba(make_synthetic_stamps(5, seed=9)).shape == (5, 2)
    assert main(["info", str(out)]) == 0
    assert "parameters: 63042" in capsys.readouterr().out.splitlines()
    ev = tmp_path / "ev"
    assert main(["evaluate", str(out), "--data", str(files / "test.npz"), "--out", str(ev), "--no-progress"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["n"] == 80 and 0 <= metrics["accuracy"] <= 1
    assert json.loads((out / "metrics.json").read_text())["data"] == str(files / "test.npz")
    assert main(["info", str(out)]) == 0
    assert "metrics: n 80" in capsys.readouterr().out
    # the FPR 1% threshold chosen on validation stamps of other objects, recorded with its source
    ev2 = tmp_path / "ev2"
    assert main(["evaluate", str(out), "--data", str(files / "test.npz"), "--out", str(ev2), "--no-progress",
                 "--val-data", str(files / "val.npz")]) == 0
    m2 = json.loads((ev2 / "metrics.json").read_text())
    assert m2["threshold_source"]["data"] == str(files / "val.npz") and m2["threshold_source"]["n"] == 60
    assert m2["threshold_fpr1"] == m2["threshold_source"]["threshold"]
    assert m2["fpr_at_val_threshold"] is not None and m2["ci95"]["fnr_at_val_threshold"] is not None
    capsys.readouterr()
    # validation stamps that share objects with the test stamps are refused in one line
    assert main(["evaluate", str(out), "--data", str(files / "test.npz"), "--out", str(tmp_path / "ev3"),
                 "--no-progress", "--val-data", str(files / "test.npz")]) == 2
    err = capsys.readouterr().err
    assert "--val-data must hold other objects" in err and "share 80 object(s)" in err


def test_train_refuses_to_clobber_and_overwrite_clears_old_metrics(files, tmp_path, capsys):
    out = tmp_path / "m"
    args = ["train", "--model", "rotinv-cnn", "--data", str(files / "train.npz"), "--out", str(out),
            "--epochs", "1", "--no-progress", "--model-arg", "widths=[4, 8]", "--model-arg", "hidden=8",
            "--recipe", "batch_size=64"]
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_kwargs"]["widths"] == [4, 8] and cfg["recipe"]["batch_size"] == 64
    (out / "metrics.json").write_text("{}")
    capsys.readouterr()
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize("extra,match", [
    (["--val", "X.npz", "--val-fraction", "0.3"], "either --val or --val-fraction"),
    (["--model-arg", "nonsense=1"], "cannot build the model"),
    (["--recipe", "nonsense=1"], "unknown recipe keys"),
    (["--resume"], "nothing to resume"),
])
def test_train_argument_errors(files, tmp_path, capsys, extra, match):
    rc = main(["train", "--model", "rotinv-cnn", "--data", str(files / "train.npz"), "--out",
               str(tmp_path / "x"), "--epochs", "1", "--no-progress", *extra])
    assert rc == 2
    assert match in capsys.readouterr().err


def test_cli_resume_takes_the_stored_model_arguments(files, tmp_path):
    out = tmp_path / "m"
    # more epochs on a finished model: only with a constant learning rate (a cosine schedule depends on the count)
    base = ["train", "--model", "rotinv-cnn", "--data", str(files / "train.npz"), "--out", str(out), "--no-progress",
            "--recipe", "lr_schedule=constant"]
    assert main(base + ["--epochs", "1", "--model-arg", "widths=[4, 8]", "--model-arg", "hidden=8"]) == 0
    assert main(base + ["--epochs", "2", "--resume"]) == 0  # no --model-arg: the stored ones are used
    assert load_model(out).config["epochs_completed"] == 2
    assert main(base + ["--epochs", "3", "--resume", "--model-arg", "hidden=16"]) == 2


def test_resume_with_another_model_is_refused(files, tmp_path, capsys):
    out = tmp_path / "m"
    fit(_cfg(1), make_synthetic_stamps(40, seed=0), out, progress=False)
    rc = main(["train", "--model", "seed-cnn", "--data", str(files / "train.npz"), "--out", str(out),
               "--resume", "--no-progress"])
    assert rc == 2
    assert "cannot resume 'rotinv-cnn'" in capsys.readouterr().err


def test_training_on_63x63x3_stamps(tmp_path):
    data = make_synthetic_stamps(32, seed=0, size=63, channels=3)
    model = fit(TrainConfig(model="rotinv-cnn", epochs=1, model_kwargs={"widths": [4, 8, 8], "hidden": 8}),
                data, tmp_path / "m", progress=False)
    assert model.config["input"]["size"] == [63, 63]
    assert model.predict_proba(data).shape == (32, 2)


def test_evaluate_dispatches_generators_to_the_judge(tmp_path, monkeypatch, capsys):
    import hits_stamps.generation.judge as judge

    calls = []

    def fake_judge(**kwargs):
        calls.append(kwargs)
        return {"agreement_real": 0.99, "tstr_over_trtr": 0.98}

    monkeypatch.setattr(judge, "evaluate_generator", fake_judge)
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "config.json").write_text(json.dumps({"model": "cvae"}))
    rc = main(["evaluate", str(gen), "--data", "test.npz", "--out", str(tmp_path / "ev"), "--classifier",
               str(tmp_path / "clf"), "--seed", "3", "--no-progress"])
    assert rc == 0 and len(calls) == 1
    assert calls[0]["model_dir"] == gen and calls[0]["classifier"] == tmp_path / "clf" and calls[0]["seed"] == 3
    assert "agreement_real 0.99" in capsys.readouterr().out
