"""hits_stamps.hardware: CPU feature detection, precision and thread choice; their use in training."""

from __future__ import annotations

import json
import time

import pytest
import torch

from hits_stamps import hardware
from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.errors import HitsStampsError
from hits_stamps.training.loop import TrainConfig, fit

AMD_AVX2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_tile amx_bf16 amx_int8\n\n"
COOPER = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16\n\n"
TINY = {"widths": [4, 8], "hidden": 8}


@pytest.mark.parametrize(("cpuinfo", "fast"), [(AMD_AVX2, False), (SAPPHIRE, True), (COOPER, True), ("", False)])
def test_bf16_only_where_the_cpu_has_it(tmp_path, monkeypatch, cpuinfo, fast):
    monkeypatch.delenv(hardware.PRECISION_ENV, raising=False)
    f = tmp_path / "cpuinfo"
    f.write_text(cpuinfo)
    flags = hardware.cpu_flags(f)
    assert hardware.has_fast_bf16(flags) is fast
    assert hardware.choose_precision("auto", "cpu", flags) == ("bfloat16" if fast else "float32")
    assert hardware.choose_precision("float32", "cpu", flags) == "float32"


def test_missing_cpuinfo_means_no_flags(tmp_path):
    assert hardware.cpu_flags(tmp_path / "absent") == frozenset()


def test_precision_env_override_and_errors(monkeypatch):
    avx2 = frozenset({"avx2"})
    monkeypatch.setenv(hardware.PRECISION_ENV, "float32")
    assert hardware.choose_precision("auto", "cpu", frozenset({"amx_bf16"})) == "float32"
    monkeypatch.setenv(hardware.PRECISION_ENV, "bfloat16")
    with pytest.warns(UserWarning, match="emulated"):
        assert hardware.choose_precision("auto", "cpu", avx2) == "bfloat16"
    monkeypatch.setenv(hardware.PRECISION_ENV, "half")
    with pytest.raises(ValueError, match="HITS_STAMPS_PRECISION must be one of"):
        hardware.choose_precision("auto", "cpu", avx2)
    with pytest.raises(ValueError, match="precision must be one of"):
        hardware.choose_precision("fp16", "cpu", avx2)


def test_autocast_contexts():
    with hardware.autocast("float32"):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 3) @ torch.ones(3, 2)).dtype == torch.float32
    with hardware.autocast("bfloat16"):
        assert (torch.ones(2, 3) @ torch.ones(3, 2)).dtype == torch.bfloat16


@pytest.mark.parametrize(("cores", "busy", "want"), [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 9.0, 1),
                                                      (16, 3.2, 13), (1, 0.0, 1)])
def test_threads_leave_busy_cores_alone(monkeypatch, cores, busy, want):
    monkeypatch.delenv(hardware.THREADS_ENV, raising=False)
    assert hardware.choose_threads(cores=cores, busy=busy) == want


def test_threads_requested_and_env(monkeypatch):
    monkeypatch.setenv(hardware.THREADS_ENV, "3")
    assert hardware.choose_threads(cores=2, busy=2.0) == 3
    assert hardware.choose_threads(5) == 5
    monkeypatch.setenv(hardware.THREADS_ENV, "many")
    with pytest.raises(ValueError, match="HITS_STAMPS_THREADS must be an integer"):
        hardware.choose_threads()
    with pytest.raises(ValueError, match="threads must be >= 1"):
        hardware.choose_threads(0)


def test_busy_cores_is_a_core_count():
    busy = hardware.busy_cores(window=0.05)
    assert 0.0 <= busy <= (torch.get_num_threads() + 64)


def test_torch_threads_restores():
    before = torch.get_num_threads()
    with hardware.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_train_config_rejects_bad_precision_and_threads():
    with pytest.raises(HitsStampsError, match="precision must be one of"):
        TrainConfig(model="seed-cnn", precision="fp8")
    with pytest.raises(HitsStampsError, match="threads must be an integer >= 1"):
        TrainConfig(model="seed-cnn", threads=0)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def test_float32_training_is_exactly_the_plain_run(tmp_path, monkeypatch):
    """On a CPU without bf16 hardware `auto` trains in float32: bit-identical to an explicit float32
    run (no autocast anywhere), and the choice is recorded in config.json."""
    monkeypatch.delenv(hardware.PRECISION_ENV, raising=False)
    monkeypatch.setattr(hardware, "_this_cpu_flags", lambda: frozenset({"avx2"}))
    data = make_synthetic_stamps(160, seed=3)
    common = {"model": "rotinv-cnn", "epochs": 2, "seed": 4, "model_kwargs": TINY, "threads": 1}
    a = fit(TrainConfig(**common), data, tmp_path / "a", progress=False)
    b = fit(TrainConfig(**common, precision="float32"), data, tmp_path / "b", progress=False)
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    compute = json.loads((tmp_path / "a" / "config.json").read_text())["compute"]
    assert compute["precision"] == "float32" and compute["threads"] == 1


def test_bf16_training_where_detected(tmp_path, monkeypatch):
    """Where AMX is detected, training runs under bf16 autocast (other weights than float32, finite)."""
    monkeypatch.delenv(hardware.PRECISION_ENV, raising=False)
    monkeypatch.setattr(hardware, "_this_cpu_flags", lambda: frozenset({"amx_bf16"}))
    data = make_synthetic_stamps(64, seed=3)
    common = {"model": "seed-cnn", "epochs": 1, "seed": 4, "threads": 1}
    a = fit(TrainConfig(**common), data, tmp_path / "a", progress=False)
    b = fit(TrainConfig(**common, precision="float32"), data, tmp_path / "b", progress=False)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["compute"]["precision"] == "bfloat16"
    wa, wb = _weights(a), _weights(b)
    assert all(torch.isfinite(v).all() for v in wa.values())
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_chosen_threads_never_exceed_torchs_setting(monkeypatch):
    monkeypatch.delenv(hardware.THREADS_ENV, raising=False)
    monkeypatch.setitem(hardware._BUSY_CACHE, "at", time.monotonic())  # a fresh sample
    monkeypatch.setitem(hardware._BUSY_CACHE, "busy", 0.0)  # an idle machine
    before = torch.get_num_threads()
    with hardware.torch_threads():
        assert torch.get_num_threads() == min(before, hardware.usable_cores())
    monkeypatch.setitem(hardware._BUSY_CACHE, "busy", 64.0)  # every core busy
    with hardware.torch_threads():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
