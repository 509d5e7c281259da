"""benchmarks/bench_speed.py --smoke: every measurement runs, the summary is consistent, no peer needed."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_speed_benchmark_smoke(tmp_path):
    out = tmp_path / "speed.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_speed.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["smoke"] and res["peer"] == [] and len(res["ours"]) == 1
    r, s = res["ours"][0], res["summary"]
    # the tool chose the precision from the CPU's flags, and recorded it with each model
    want = "bfloat16" if res["machine"]["fast_bf16"] else "float32"
    assert r["seed-cnn_compute"]["precision"] == want and r["seed-cnn_compute"]["threads"] >= 1
    assert len(r["seed-cnn_epoch_seconds"]) == 1 and r["seed-cnn_epoch_seconds"][0] > 0  # 2 epochs, warm-up dropped
    # the CLI's CSV holds the in-memory probabilities (9 significant digits)
    assert r["predict_cli_max_abs_diff_vs_in_memory"] < 1e-6
    for key in ("seed-cnn_infer_stamps_per_s", "seed-cnn_infer_onnx_stamps_per_s", "predict_cli_stamps_per_s",
                "predict_cli_large_stamps_per_s", "seed-bnn_mc_us_per_stamp_sample"):
        assert s[key] > 0
    # the onnxruntime backend predicts what torch predicts; small files stay on torch under --backend auto
    assert r["onnx_max_abs_diff_vs_torch"] <= 1e-5
    assert s["predict_cli_backend"] == "torch" and s["predict_cli_large_backend"] == "torch"
    for name in ("seed-cnn", "rotinv-cnn"):
        assert 0 < s[f"{name}_fraction_of_matmul"] < 2  # a forward pass cannot beat the matmul rate by far
    assert "goals" not in s  # no peer, no ratios
    assert res["seconds"] < 120
