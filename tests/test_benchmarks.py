"""The benchmark scripts' --smoke modes: a refactor that breaks a benchmark fails here, not silently."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    m = res["test"][chosen]["real_test"]
    lo, hi = m["ece"]["ci95"]
    assert lo <= m["ece"]["value"] <= hi and m["n_objects"] == res["sets"]["real_test"]["objects"]
