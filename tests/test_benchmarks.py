"""The benchmark scripts' --smoke modes: a refactor that breaks a benchmark fails here, not silently."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
# scripts whose smoke mode is tested elsewhere, or that have none yet (say why)
ELSEWHERE = {
    "bench_speed.py": "tests/test_speed.py",
}
SMOKE_TESTED = {"bench_transfer.py", "bench_uncertainty.py", "bench_simulate.py", "bench_classifiers.py",
                "bench_bayesian.py", "bench_generators.py", "bench_serve.py"}


def _run(*args, cwd):
    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_every_benchmark_script_has_a_smoke_test():
    """A new benchmarks/bench_*.py needs a --smoke mode and a test here (one-offs go to experiments/)."""
    scripts = {p.name for p in BENCH.glob("bench_*.py")}
    assert scripts - set(ELSEWHERE) == SMOKE_TESTED
    for name in SMOKE_TESTED:
        assert "add_smoke(" in (BENCH / name).read_text() or "--smoke" in (BENCH / name).read_text(), name


def test_transfer_benchmark_smoke(tmp_path):
    out = tmp_path / "transfer.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_transfer.py"), "--smoke",
                           "--recipes", "sim,sim+inj+real", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert set(res["recipes"]) == {"sim", "sim+inj+real"} and res["chosen_on_validation"] in res["recipes"]
    rec = res["recipes"]["sim+inj+real"]
    assert rec["train"]["parts"] == ["sim", "inject", "real_train"]
    for name in ("real_test", "sim_test"):
        m = rec["test"][name]["at_val_threshold"]
        assert 0 <= m["accuracy"]["value"] <= 1 and m["threshold"] == rec["threshold_from_validation"]
        lo, hi = m["accuracy"]["ci95"]
        assert lo <= m["accuracy"]["value"] <= hi
    assert "**real_test**" in subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_transfer.py"),
                                              "--table", str(out)], capture_output=True, text=True).stdout


def test_uncertainty_benchmark_smoke(tmp_path):
    out = tmp_path / "uncertainty.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_uncertainty.py"), "--smoke",
                           "--work", str(tmp_path / "work"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    chosen = res["chosen_on_validation"]
    assert chosen in res["validation_out_of_fold"] and chosen in res["test"]
    assert res["saved_matches_benchmark_max_abs_diff"] < 1e-9  # predict's saved method gives the same numbers
    assert (tmp_path / "work" / res["saved"]).is_file()
    # calibrated on real-pixel and simulated validation stamps, each domain with half the weight
    assert res["sets"]["sim_val"]["n"] == res["sets"]["sim_val"]["objects"] > 0
    assert abs(res["domain_total_weight"]["sim"] - 0.5) < 1e-9 and res["scaling"] == "joint"
    m = res["test"][chosen]["real_test"]
    lo, hi = m["ece"]["ci95"]
    assert lo <= m["ece"]["value"] <= hi and m["n_objects"] == res["sets"]["real_test"]["objects"]


def test_simulate_benchmark_smoke(tmp_path):
    out = tmp_path / "simulate.json"
    stdout = _run(BENCH / "bench_simulate.py", "--smoke", "--out", out, cwd=tmp_path)
    res = json.loads(out.read_text())
    assert res["smoke"] and res["n"] == 200 and res["build_real"]["stamps"] > 0
    assert all(r["median_stamps_per_s"] > 0 for r in res["simulate"].values())
    assert res["machine"]["cpu"] and "| generator" in stdout


@pytest.mark.slow
def test_classifiers_benchmark_smoke(tmp_path):
    script = BENCH / "bench_classifiers.py"
    _run(script, "data", "--smoke", "--out", "data", "--threads", "1", cwd=tmp_path)
    assert {p.name for p in (tmp_path / "data").iterdir()} == {"sim_train.npz", "sim_test.npz", "real.npz"}
    _run(script, "compare", "--smoke", "--data", "data", "--work", "work", "--out", "compare.json",
         "--models", "seed-cnn", "--threads", "1", cwd=tmp_path)
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    assert [(r["model"], r["epochs"]) for r in rows] == [("seed-cnn", 1), ("seed-cnn", 1)]
    assert set(rows[0]["tests"]) == {"sim_test", "real", "real_test_objects"}
    assert set(rows[1]["tests"]) == {"real_by_object"}
    for r in rows:
        for t in r["tests"].values():
            assert 0 <= t["accuracy"] <= 1 and 0 <= t["roc_auc"] <= 1
    table = _run(script, "table", "compare.json", cwd=tmp_path)
    assert "| trained on simulation | sim_test | seed-cnn | 0 | 1 | 200 |" in table


def test_wilson_interval():
    sys.path.insert(0, str(BENCH))
    try:
        from _common import wilson_interval
    finally:
        sys.path.remove(str(BENCH))
    lo, hi = wilson_interval(50, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)  # the textbook value for 50 / 100
    lo, hi = wilson_interval(100, 100)
    assert hi == pytest.approx(1.0) and 0.96 < lo < 0.97


@pytest.mark.slow
def test_bayesian_benchmark_smoke(tmp_path):
    _run(BENCH / "bench_bayesian.py", "quality", "--smoke", "--out-dir", "out", "--threads", "1",
         "--models", "seed-bnn", "bayes-cnn", cwd=tmp_path)
    res = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert res["smoke"] and set(res["models"]) == {"seed-bnn", "bayes-cnn"}
    for m in res["models"].values():
        t = m["tests"]["toy_test"]
        assert m["epochs"] == 1 and t["mc_samples"] == 5 and 0 <= t["ece"] <= 1 and t["nll"] > 0


@pytest.mark.slow
def test_generators_benchmark_smoke(tmp_path):
    _run(BENCH / "bench_generators.py", "--smoke", "--out", "out", cwd=tmp_path)
    res = json.loads((tmp_path / "out" / "bench_generators.json").read_text())
    assert set(res["test"]) == {"cvae", "diffusion", "cvae_raw"}
    assert res["diffusion_choice"]["steps"] in (2, 3) and res["diffusion_tuning"]["chosen"] in (0.0, 1.0)
    for name in ("cvae", "diffusion"):
        t = res["test"][name]
        assert 0 <= t["agreement_real"] <= 1 and 0 <= t["agreement_bogus"] <= 1 and t["frechet_real"] >= 0


@pytest.mark.slow
def test_serve_benchmark_smoke(tmp_path):
    script = BENCH / "bench_serve.py"
    _run(script, "--smoke", "--workdir", "work", "--json", "serve.json", cwd=tmp_path)
    res = json.loads((tmp_path / "serve.json").read_text())
    assert res["smoke"] and res["args"]["large"] == "2048"
    assert set(res["rate"]) == {"seed-cnn|torch-1thread", "seed-cnn|onnxruntime-1thread", "seed-cnn|dask-1-onnxruntime"}
    for v in res["rate"].values():
        assert v["n"] == 1024 and len(v["runs"]) == 1 and v["median_stamps_per_cpu_second"] > 0
    assert set(res["memory"]) == {"seed-cnn|onnxruntime-1thread|1024", "seed-cnn|onnxruntime-1thread|2048"}
    assert [r["n"] for r in res["memory"].values()] == [1024, 2048]
    assert [r["batch"] for r in res["batch_sweep"]] == [32, 256]
    assert not list((tmp_path / "work").glob("stamps_*.h5"))  # the stamp files are deleted without --keep
    table = _run(script, "report", "serve.json", "--figure", "rates.png", cwd=tmp_path)
    assert "| seed-cnn | dask-1-onnxruntime | 1 |" in table and (tmp_path / "rates.png").stat().st_size > 0
