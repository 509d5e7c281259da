"""`hits-stamps run`: configuration, resuming after a failed step, summary.json and the HTML report.

One tiny run (a few hundred stamps, one epoch, three models) is shared by the module: it first fails
in an injected step, then resumes; the other tests read what it wrote.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from hits_stamps.errors import HitsStampsError
from hits_stamps.pipeline import config as C
from hits_stamps.pipeline.run import StepFailed, marker_path, prepare_run_dir, run_pipeline
from hits_stamps.pipeline.steps import Step, plan
from hits_stamps.realdata import packaged_sample_path
from hits_stamps.realsets import default_variables_path
from hits_stamps.stamps import StampSet

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
#: Set by .ci/run: the headless-Chromium check of the report must run (a missing Chromium fails the test).
REQUIRE_CHROMIUM = "HITS_STAMPS_REQUIRE_CHROMIUM"

TINY = {
    "time_budget_s": 60.0,
    "models": ["seed-cnn", "seed-bnn", "cvae"],
    # the packaged HiTS 2015 sample: the real-pixel steps run without ../shared
    "data": {"n_train": 240, "n_val": 60, "n_test": 100, "calibration_n": 60,
             "real_sequences": str(packaged_sample_path())},
    # seed-cnn under another scaling than its recipe's: the override reaches training and prediction
    "model": {"seed-cnn": {"epochs": 1, "scaling": "joint"}, "seed-bnn": {"epochs": 1},
              "cvae": {"epochs": 1, "batch_size": 32, "steps_per_epoch": 2}},
    "evaluate": {"mc_samples": 2, "max_bayesian": 40, "max_real": 60},
    "generation": {"judge": "seed-cnn", "max_per_class": 16, "tune_with": "seed-bnn", "tune_n": 8},
    "augmentation": {"fraction": 0.5, "epochs": 1, "model": "seed-cnn", "retrain_cvae": False},
}
FAIL_AT = "train-seed-bnn"


def _screenshot_module():
    spec = importlib.util.spec_from_file_location("screenshot_report", ROOT / "scripts" / "screenshot_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _counted(steps: list[Step], calls: list[str], fail_at: str | None = None) -> list[Step]:
    """The same steps, recording each call; `fail_at` raises instead of running."""

    def wrap(step: Step) -> Step:
        def fn(ctx):
            calls.append(step.name)
            if step.name == fail_at:
                raise RuntimeError("injected failure")
            return step.fn(ctx)

        return Step(step.name, step.title, fn)

    return [wrap(s) for s in steps]


@pytest.fixture(scope="module")
def tiny_config() -> C.RunConfig:
    return C.apply_overrides(C.RunConfig(), TINY, "TINY")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_config):
    out = tmp_path_factory.mktemp("run") / "hsrun"
    quiet = Console(file=io.StringIO(), width=120)
    first: list[str] = []
    with pytest.raises(StepFailed, match=rf"step '{FAIL_AT}' failed .*injected failure.*rerun the same command"):
        run_pipeline(tiny_config, out, device="cpu", progress=False, console=quiet,
                     steps=_counted(plan(tiny_config), first, fail_at=FAIL_AT))
    state = {
        "first_calls": list(first),
        "markers": sorted(p.stem for p in (out / "steps").glob("*.json")),
        "error_file": (out / "steps" / f"{FAIL_AT}.error.txt").read_text(),
        "mtimes": {p.stem: p.stat().st_mtime_ns for p in (out / "steps").glob("*.json")},
        "summary_after_failure": (out / "summary.json").exists(),
    }
    second: list[str] = []
    summary = run_pipeline(tiny_config, out, device="cpu", progress=False, console=quiet,
                           steps=_counted(plan(tiny_config), second))
    state["second_calls"] = second
    return out, summary, state


# ---------------------------------------------------------------------------------------------
# configuration


def test_shipped_default_toml_equals_the_dataclass_defaults():
    values = tomllib.loads(C.default_toml_path().read_text())
    assert values == C.to_dict(C.RunConfig())
    assert C.load_config(C.default_toml_path()) == C.RunConfig()


def test_quick_preset_is_smaller_and_file_overrides_apply_on_top(tmp_path):
    default, quick = C.load_config(), C.load_config(quick=True)
    assert quick.data.n_train == C.QUICK["data"]["n_train"] < default.data.n_train
    assert quick.time_budget_s == 120.0 and default.time_budget_s == 900.0
    assert all(quick.model[m].epochs <= default.model[m].epochs for m in default.models)
    path = tmp_path / "c.toml"
    path.write_text('[data]\nn_test = 777\n\n[model.seed-cnn]\nepochs = 3\nlr = 0.01\n')
    cfg = C.load_config(path, quick=True)
    assert cfg.data.n_test == 777 and cfg.data.n_train == quick.data.n_train
    assert cfg.model["seed-cnn"] == C.ModelConfig(epochs=3, lr=0.01)
    assert cfg.model["deephits"] == quick.model["deephits"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("n_trian = 3\n", r"unknown key 'n_trian'"),
        ("[data]\nn_trian = 3\n", r"unknown key data\.'n_trian'"),
        ("[model.seed-cnn]\nepochz = 3\n", r"unknown key model\.seed-cnn\.'epochz'"),
        ("[bogus]\nx = 1\n", r"unknown key 'bogus'"),
        ("[data]\nn_train = \"many\"\n", r"data\.n_train must be int; got str"),
        ("[data]\nreal = 1\n", r"data\.real must be bool; got int"),
        ("models = \"seed-cnn\"\n", r"models must be a list of strings"),
        ("[data]\nn_train = 1\n", r"data\.n_train must be >= 2; got 1"),
        ("[evaluate]\nmc_samples = 0\n", r"evaluate\.mc_samples must be >= 1"),
        ("[model.rotinv-cnn]\nscaling = \"log\"\n", r"model\.rotinv-cnn\.scaling must be one of"),
        ("[data\n", r"not valid TOML"),
    ],
)
def test_bad_config_files_are_refused_with_the_key(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(HitsStampsError, match=match) as info:
        C.load_config(path)
    assert str(path) in str(info.value) or "invalid run configuration" in str(info.value)


def test_missing_config_file_and_unknown_model(tmp_path):
    with pytest.raises(HitsStampsError, match="config file not found"):
        C.load_config(tmp_path / "nope.toml")
    cfg = C.apply_overrides(C.RunConfig(), {"models": ["seed-cnn", "no-such-net"]})
    with pytest.raises(HitsStampsError, match="unknown model 'no-such-net'"):
        plan(cfg)


def test_toml_round_trip_and_show_config(tmp_path, capsys):
    from hits_stamps.cli import main

    cfg = C.apply_overrides(C.load_config(quick=True), {"data": {"real_sequences": "x \"y\".npz"}})
    path = tmp_path / "rt.toml"
    path.write_text(C.to_toml(cfg))
    assert C.load_config(path) == cfg
    assert main(["run", "--quick", "--show-config"]) == 0
    shown = tomllib.loads(capsys.readouterr().out)
    assert C.from_dict(shown) == C.load_config(quick=True)


def test_plan_lists_every_step_in_order(tiny_config):
    names = [s.name for s in plan(C.RunConfig())]
    assert names[:3] == ["simulate", "build-real", "calibrate"]
    for m in C.DEFAULT_MODELS:
        assert f"train-{m}" in names
    assert "evaluate-cvae" not in names and names[-2:] == ["generate", "augment"]  # no tuning by default
    assert names.index("train-rotinv-cnn") < names.index("evaluate-rotinv-cnn") < names.index("generate")
    assert [s.name for s in plan(tiny_config)] == [
        "simulate", "build-real", "calibrate", "train-seed-cnn", "evaluate-seed-cnn", "train-seed-bnn",
        "evaluate-seed-bnn", "train-cvae", "uncertainty", "tune-cvae", "generate", "augment",
    ]
    no_tuning = C.apply_overrides(tiny_config, {"generation": {"tune_with": ""}})
    assert "tune-cvae" not in [s.name for s in plan(no_tuning)]
    with pytest.raises(HitsStampsError, match=r"tune_with = 'deephits' is not one of the run's classifiers"):
        plan(C.apply_overrides(tiny_config, {"generation": {"tune_with": "deephits"}}))
    with pytest.raises(HitsStampsError, match="tune_with must not be the judge"):
        C.apply_overrides(tiny_config, {"generation": {"tune_with": "seed-cnn"}})


# ---------------------------------------------------------------------------------------------
# run directory: refusing, overwriting


def test_run_dir_made_with_another_config_is_refused_then_overwritten(tmp_path, tiny_config):
    out = tmp_path / "r"
    prepare_run_dir(out, tiny_config, overwrite=False)
    (out / "steps" / "simulate.json").write_text("{}")
    other = C.apply_overrides(tiny_config, {"data": {"n_train": 500}})
    with pytest.raises(HitsStampsError, match=r"different configuration \(data\.n_train: 240 -> 500\).*--overwrite"):
        prepare_run_dir(out, other, overwrite=False)
    prepare_run_dir(out, tiny_config, overwrite=False)  # same config: accepted, nothing removed
    assert (out / "steps" / "simulate.json").exists()
    prepare_run_dir(out, other, overwrite=True)
    assert not (out / "steps" / "simulate.json").exists()
    assert json.loads((out / "run_config.json").read_text())["config"]["data"]["n_train"] == 500


def test_a_foreign_directory_is_never_emptied(tmp_path, tiny_config):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(HitsStampsError, match="not a hits-stamps run directory"):
        prepare_run_dir(tmp_path, tiny_config, overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------
# the tiny run: failure, resume, summary, report


def test_failed_step_keeps_finished_steps(finished_run):
    _, _, state = finished_run
    fail_index = state["first_calls"].index(FAIL_AT)
    assert state["first_calls"][-1] == FAIL_AT
    assert state["markers"] == sorted(state["first_calls"][:fail_index])
    assert "RuntimeError: injected failure" in state["error_file"]
    assert not state["summary_after_failure"]


def test_resume_skips_finished_steps(finished_run):
    out, _, state = finished_run
    done_first = set(state["first_calls"]) - {FAIL_AT}
    assert not done_first & set(state["second_calls"])
    assert state["second_calls"][0] == FAIL_AT
    for name, mtime in state["mtimes"].items():
        assert marker_path(out, name).stat().st_mtime_ns == mtime, f"{name} was redone"
    assert not (out / "steps" / f"{FAIL_AT}.error.txt").exists()


def test_summary_has_every_part(finished_run, tiny_config, tmp_path):
    from hits_stamps.results import RUN_SUMMARY_KEYS, RunSummary

    out, summary, _ = finished_run
    on_disk = json.loads((out / "summary.json").read_text())
    assert list(on_disk)[: len(RUN_SUMMARY_KEYS)] == list(RUN_SUMMARY_KEYS)
    RunSummary.read(out / "summary.json").write(tmp_path / "copy.json")  # one reader and writer: same bytes
    assert (tmp_path / "copy.json").read_bytes() == (out / "summary.json").read_bytes()
    assert on_disk["models"] == summary["models"]
    for key in ("models", "generation", "augmentation", "durations_s", "config", "machine", "training"):
        assert on_disk[key], key
    assert set(on_disk["models"]) == {"seed-cnn", "seed-bnn"}
    assert on_disk["data"]["build-real"]["available"] and on_disk["calibration"]["available"]
    for name, per_set in on_disk["models"].items():
        assert set(per_set) == {"simulated", "real"} | ({"variables"} if default_variables_path() else set())
        for test_set, metrics in per_set.items():
            assert metrics == json.loads((out / "eval" / name / test_set / "metrics.json").read_text())
            for k in ("accuracy", "f1", "roc_auc", "fnr_at_fpr_1pct", "ece"):
                assert k in metrics
    assert on_disk["models"]["seed-bnn"]["simulated"]["n"] == 40  # max_bayesian
    assert on_disk["models"]["seed-cnn"]["simulated"]["n"] == 100
    assert {"agreement_real", "agreement_bogus", "tstr_over_trtr"} <= set(on_disk["generation"])
    tuning = on_disk["generator_tuning"]
    assert tuning["classifier"].endswith("seed-bnn") and tuning["n_per_condition"] == 8
    chosen = {k: row["chosen"] for k, row in tuning["conditions"].items()}
    stored = json.loads((out / "models" / "cvae" / "config.json").read_text())["sampling"]
    assert stored["condition_temperature"] == chosen
    assert on_disk["augmentation"]["fractions"]
    assert on_disk["config"] == C.to_dict(tiny_config)
    assert on_disk["steps"] == {s.name: "done" for s in plan(tiny_config)}
    steps = {k: v for k, v in on_disk["durations_s"].items() if k != "total"}
    assert set(steps) == set(on_disk["steps"])
    assert on_disk["durations_s"]["total"] == pytest.approx(sum(steps.values()))
    for name in tiny_config.models:
        assert (out / "models" / name / "model.safetensors").exists()
        assert not (out / "models" / f"{name}.partial").exists()


def test_classifiers_train_on_the_mix_and_are_tested_on_unseen_objects(finished_run):
    """Training mix = simulated + injected + real training objects; unseen test objects; threshold from validation."""
    from hits_stamps.io import read_stamps
    from hits_stamps.stamps import check_disjoint_groups

    out, summary, _ = finished_run
    train = summary["training"]["seed-cnn"]["training_data"]
    assert train["mix"] == ["simulated", "injected", "real"]
    assert summary["training"]["seed-cnn"]["recipe"]["scaling"] == "joint"  # the run's override, not the recipe's
    assert summary["training"]["seed-bnn"]["recipe"]["scaling"] == "minmax"
    sets = {stem: read_stamps(out / "data" / f"{stem}.npz")
            for stem in ("inject", "real_train", "real_val", "real_test")}
    assert train["n"] == sum(len(read_stamps(out / "data" / f"{s}.npz")) for s in ("train", "inject", "real_train"))
    check_disjoint_groups({"training": StampSet.concat([sets["inject"], sets["real_train"]]),
                           "validation": sets["real_val"], "test": sets["real_test"]})
    metrics = json.loads((out / "eval" / "seed-cnn" / "real" / "metrics.json").read_text())
    source = metrics["threshold_source"]
    assert source["sets"][0] == "real_val" and source["n"] > 0
    assert metrics["threshold_fpr1"] == source["threshold"]
    assert 1 < metrics["n_objects"] <= sets["real_test"].n_groups()
    assert "accuracy" in metrics["ci95"]


def test_uncertainty_step_calibrates_on_validation_and_judges_every_test_set(finished_run):
    from hits_stamps.predictive import load_predictive

    out, summary, _ = finished_run
    unc = summary["uncertainty"]
    assert unc["validation"]["sets"][0] == "real_val" and set(unc["models"]) == {"seed-cnn", "seed-bnn"}
    for name, rec in unc["models"].items():
        assert rec["chosen"] == min(rec["validation_out_of_fold_nll"], key=rec["validation_out_of_fold_nll"].get)
        assert {"simulated", "real"} <= set(rec["test"])
        real = rec["test"]["real"]
        assert real["raw"]["n"] == real["calibrated"]["n"] == summary["models"][name]["real"]["n"]
        assert real["calibrated"]["ece"]["value"] is not None
        pred = load_predictive(out / "models" / name)  # what `hits-stamps predict` applies
        assert pred.calibrator.to_dict() == rec["calibration"]
    assert "Calibrated on the validation objects" in (out / "report.html").read_text()


def test_report_shows_the_generator_tuning(finished_run):
    out, summary, _ = finished_run
    html = (out / "report.html").read_text()
    assert "Before judging, the pixel temperature of each condition" in html and "<b>seed-bnn</b>" in html
    for name in summary["generator_tuning"]["conditions"]:
        assert f'<td class="l">{name}</td>' in html


def test_report_is_self_contained_with_decodable_pngs(finished_run):
    from PIL import Image

    out, _, _ = finished_run
    text = (out / "report.html").read_text(encoding="utf-8")
    shot = _screenshot_module()
    result = shot.check_static(text)
    assert result["images"] >= 10
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert len(srcs) == result["images"]
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            assert im.format == "PNG" and min(im.size) > 10
    assert not re.search(r'(src|href)="(?!data:|#)', text)
    assert "<script" not in text and "<link" not in text
    for heading in ("1. Data", "2. Classifiers", "3. Uncertainty", "4. Generated stamps",
                    "5. Augmentation", "Reproducibility", "Leaderboard: simulated HiTS test set"):
        assert heading in text
    # an injected external reference is caught by the same check
    with pytest.raises(shot.ReportError, match="external|not a base64 PNG"):
        shot.check_static(text.replace("<main>", '<main><img src="https://example.org/x.png">', 1))


def test_report_command_rebuilds_without_training(finished_run, tmp_path):
    from hits_stamps.cli import main

    out, _, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "report.html").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in (copy / "steps").glob("*.json")}
    assert main(["report", str(copy)]) == 0
    assert (copy / "report.html").stat().st_size > 100_000
    assert {p.name: p.stat().st_mtime_ns for p in (copy / "steps").glob("*.json")} == before
    assert main(["report", str(tmp_path / "nothing")]) == 2


def _chromium_or_skip(path: Path = CHROMIUM) -> Path:
    """The Chromium binary. Where it is missing: a skip with its reason on a dev machine, a failure in CI
    (.ci/run installs the Debian package and sets HITS_STAMPS_REQUIRE_CHROMIUM=1)."""
    if path.exists():
        return path
    msg = f"needs the Debian package chromium ({path})"
    if os.environ.get(REQUIRE_CHROMIUM) == "1":
        pytest.fail(f"{msg}: {REQUIRE_CHROMIUM}=1 (set by .ci/run) requires the report's Chromium check to run")
    pytest.skip(f"{msg}; `apt-get install chromium` as root, or .ci/run, installs it")


def test_a_missing_chromium_fails_where_ci_requires_it(monkeypatch, tmp_path):
    monkeypatch.setenv(REQUIRE_CHROMIUM, "1")
    with pytest.raises(pytest.fail.Exception, match="requires the report's Chromium check to run"):
        _chromium_or_skip(tmp_path / "chromium")
    monkeypatch.delenv(REQUIRE_CHROMIUM)
    with pytest.raises(pytest.skip.Exception, match=r"needs the Debian package chromium .*\.ci/run"):
        _chromium_or_skip(tmp_path / "chromium")


def test_report_renders_in_headless_chromium(finished_run, tmp_path):
    chromium = _chromium_or_skip()
    out, _, _ = finished_run
    shot = _screenshot_module()
    result = shot.check_report(out / "report.html", tmp_path / "shot.png", window="1280,900", chromium=str(chromium))
    assert result["broken"] == 0 and result["rendered_images"] == result["images"]
    from PIL import Image

    with Image.open(tmp_path / "shot.png") as im:
        assert im.size == (1280, 900)
        assert len(im.convert("L").resize((64, 45)).getcolors(4096)) > 5  # not a blank page


def test_staged_dir_points_json_paths_at_the_final_folder(tmp_path):
    from hits_stamps.pipeline.steps import staged_dir

    final = tmp_path / "eval" / "model"
    with staged_dir(final) as tmp:
        (tmp / "metrics.json").write_text(json.dumps({"figures": {"roc": str(tmp / "roc.png")}, "n": 3}))
        (tmp / "roc.png").write_bytes(b"png")
    assert not final.with_name("model.partial").exists()
    metrics = json.loads((final / "metrics.json").read_text())
    assert metrics == {"figures": {"roc": str(final / "roc.png")}, "n": 3}
    assert Path(metrics["figures"]["roc"]).read_bytes() == b"png"


# ---------------------------------------------------------------------------------------------
# your own files


def _grouped_toy(n: int, seed: int, prefix: str) -> StampSet:
    from hits_stamps.datasets import make_synthetic_stamps

    s = make_synthetic_stamps(n=n, seed=seed)
    return StampSet(images=s.images, labels=s.labels, snr=s.snr, kind=s.kind, ids=s.ids,
                    groups=np.array([f"{prefix}{i // 4}" for i in range(n)]), channels=s.channels)


def test_user_files_replace_the_training_mix_and_keep_objects_apart(tmp_path):
    from hits_stamps.io import write_stamps
    from hits_stamps.pipeline.steps import RunContext, step_user_data
    from hits_stamps.stamps import GroupLeakError

    train = write_stamps(_grouped_toy(80, 1, "a"), tmp_path / "mine.npz")
    test = write_stamps(_grouped_toy(40, 2, "b"), tmp_path / "mine_test.npz")
    cfg = C.apply_overrides(C.RunConfig(), {"data": {"train": str(train), "test": str(test)}}, "test")
    assert [s.name for s in plan(cfg)][3] == "user-data"
    ctx = RunContext(out=tmp_path / "run", config=cfg, progress=False, console=Console(file=io.StringIO()))
    result = step_user_data(ctx)
    assert ctx.mix() == ("user",) and ctx.validation_stems() == ("user_val",)
    tr, va = ctx.stamps("user_train"), ctx.stamps("user_val")
    assert len(tr) + len(va) == 80 and not set(tr.groups) & set(va.groups)  # 20% of the objects, whole
    assert result["test"]["objects"] == 10 and len(ctx.classifier_training()) == len(tr)

    leak = write_stamps(_grouped_toy(40, 3, "a"), tmp_path / "leak.npz")  # objects a0.. also in training
    cfg = C.apply_overrides(C.RunConfig(), {"data": {"train": str(train), "test": str(leak)}}, "test")
    ctx = RunContext(out=tmp_path / "run2", config=cfg, progress=False, console=Console(file=io.StringIO()))
    with pytest.raises(GroupLeakError, match="a0"):
        step_user_data(ctx)

    cfg = C.apply_overrides(C.RunConfig(), {"data": {"train": str(train), "group_column": "field"}}, "test")
    ctx = RunContext(out=tmp_path / "run3", config=cfg, progress=False, console=Console(file=io.StringIO()))
    with pytest.raises(HitsStampsError, match="no column 'field'"):
        step_user_data(ctx)
    with pytest.raises(HitsStampsError, match="data.val goes with data.train"):
        C.apply_overrides(C.RunConfig(), {"data": {"val": str(train)}}, "test")


def test_staged_dir_with_the_run_root_stores_paths_relative_to_it(tmp_path, monkeypatch):
    from hits_stamps.pipeline.steps import staged_dir
    from hits_stamps.rundir import RunDir

    monkeypatch.chdir(tmp_path)
    run = RunDir(Path("runs") / "r")  # a relative --out, as `hits-stamps run --out runs/r`
    elsewhere = tmp_path / "elsewhere" / "runs" / "r" / "data" / "x.npz"  # same tail, outside the run
    with staged_dir(run.eval("m", "real"), root=run.root) as tmp:
        (tmp / "metrics.json").write_text(json.dumps({
            "figures": {"roc": str(tmp / "roc.png")},
            "data": str(run.data_file("real_test")),
            "sets": f"{run.data_file('val').resolve()}, {run.data_file('real_val')}",
            "user": str(elsewhere),
        }))
    metrics = json.loads(run.metrics("m", "real").read_text())
    assert metrics == {"figures": {"roc": "eval/m/real/roc.png"}, "data": "data/real_test.npz",
                       "sets": "data/val.npz, data/real_val.npz", "user": str(elsewhere)}
    assert run.resolve(metrics["figures"]["roc"]) == run.eval("m", "real") / "roc.png"
    assert run.relative(elsewhere) == str(elsewhere) and run.relative(run.model("cvae")) == "models/cvae"


def test_run_command_on_your_own_files_end_to_end(tmp_path):
    """`hits-stamps run --config` with [data] train / test files: trains on them, leads with their test."""
    from hits_stamps.cli import main
    from hits_stamps.io import write_stamps

    train = write_stamps(_grouped_toy(160, 4, "a"), tmp_path / "my_train.h5")
    test = write_stamps(_grouped_toy(60, 5, "b"), tmp_path / "my_test.npz")
    config = tmp_path / "mine.toml"
    config.write_text(f"""
models = ["seed-cnn"]
[data]
n_train = 40
n_val = 20
n_test = 40
real = false
variables = false
calibration_n = 0
train = "{train}"
test = "{test}"
[model.seed-cnn]
epochs = 1
[augmentation]
enabled = false
""")
    out = tmp_path / "run"
    assert main(["run", "--config", str(config), "--out", str(out), "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    training = summary["training"]["seed-cnn"]["training_data"]
    assert training["mix"] == ["user"] and training["n"] == 128  # 80% of the 40 objects, whole
    metrics = json.loads((out / "eval" / "seed-cnn" / "user" / "metrics.json").read_text())
    assert metrics["n"] == 60 and metrics["n_objects"] == 15
    html = (out / "report.html").read_text()
    assert "your test file" in html and html.index("your test set") < html.index("simulated")
