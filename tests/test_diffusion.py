"""The conditional diffusion model (models/diffusion.py) through the same train / generate / judge code as the cvae."""

import json

import numpy as np
import pytest
import torch

from hits_stamps.cli import main
from hits_stamps.errors import HitsStampsError
from hits_stamps.generation import generate
from hits_stamps.generation.consistent import check_consistency
from hits_stamps.models.diffusion import build_diffusion, cosine_alpha_bar, diffusion_objective
from hits_stamps.simulate import simulate_stamps
from hits_stamps.training import TrainConfig, fit

TINY = {"base_channels": 8, "channel_mults": [1, 2], "emb_dim": 32, "timesteps": 200, "sampling_steps": 4}


@pytest.fixture(scope="module")
def sim():
    return simulate_stamps(240, seed=8, workers=1)


@pytest.fixture(scope="module")
def diff_dir(tmp_path_factory, sim, one_torch_thread):
    out = tmp_path_factory.mktemp("diffusion") / "model"
    fit(TrainConfig(model="diffusion", epochs=4, batch_size=32, lr=3e-3, model_kwargs=TINY), sim, out,
        progress=False)
    return out


def test_cosine_schedule_is_a_decreasing_fraction():
    ab = cosine_alpha_bar(1000)
    assert ab.shape == (1000,) and float(ab[0]) > 0.999 and float(ab[-1]) < 1e-3
    assert bool((ab[1:] < ab[:-1]).all()) and bool((ab > 0).all())


def test_model_units_invert_exactly_and_the_unet_keeps_odd_sizes():
    m = build_diffusion(4, (21, 21), **TINY)
    x = torch.rand(16, 4, 21, 21, dtype=torch.float64).float() * 500 + 50
    m.fit_input_stats(x)
    torch.testing.assert_close(m.to_data_units(m.to_model_units(x)), x, rtol=1e-4, atol=1e-2)
    assert torch.allclose(m.to_model_units(x).std(dim=(0, 2, 3)), torch.ones(4), atol=0.05)
    eps = m(torch.randn(3, 4, 21, 21), torch.tensor([0, 5, 199]), torch.tensor([0, 1, 2]))  # 2: the null condition
    assert eps.shape == (3, 4, 21, 21)
    m2 = build_diffusion(3, (63, 63), base_channels=8, channel_mults=[1, 2, 2], emb_dim=16, timesteps=50)
    assert m2(torch.randn(2, 3, 63, 63), torch.tensor([1, 2]), torch.tensor([0, 1])).shape == (2, 3, 63, 63)


def test_training_lowers_the_loss_on_a_tiny_set(diff_dir):
    hist = json.loads((diff_dir / "history.json").read_text())
    # the untrained network predicts eps = 0 (zero-initialised output): loss E[eps^2] = 1
    assert hist[-1]["val_loss"] < 0.85 and hist[-1]["val_loss"] < hist[0]["val_loss"]
    assert hist[-1]["loss"] < hist[0]["loss"]


def test_eval_loss_is_reproducible_and_training_loss_drops_conditions():
    m = build_diffusion(4, (21, 21), **{**TINY, "p_uncond": 0.5})
    x = torch.rand(32, 4, 21, 21) * 100 + 50
    m.fit_input_stats(x)
    y = torch.zeros(32, dtype=torch.long)
    m.eval()
    assert float(diffusion_objective(m, x, y, 32).loss) == float(diffusion_objective(m, x, y, 32).loss)
    seen = []
    hook = m.cond_emb.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    m.train()
    torch.manual_seed(0)
    diffusion_objective(m, x, y, 32)
    hook.remove()
    assert 0 < int((seen[0] == m.n_classes).sum()) < 32  # some, not all, trained on the null condition


def test_generate_samples_the_diffusion_model_consistently(diff_dir, sim):
    g = generate(diff_dir, 12, "bogus", seed=2)
    assert g.shape == (12, 21, 21, 4) and (g.labels == 0).all()
    assert g.meta["mode"] == "ddim" and g.meta["steps"] == 4 and g.meta["guidance"] == 1.0
    kinds = set(g.meta["kinds"])
    assert kinds <= {k for k in set(sim.kind) if k not in ("sn", "variable")}
    check = check_consistency(g)
    assert check["max_rel_err_difference"] < 1e-5 and check["max_rel_err_snr"] < 1e-5
    np.testing.assert_array_equal(generate(diff_dir, 12, "bogus", seed=2).images, g.images)
    other = generate(diff_dir, 12, "bogus", seed=2, guidance=0.0, steps=2)
    assert other.meta["guidance"] == 0.0 and not np.allclose(np.nan_to_num(other.images), np.nan_to_num(g.images))
    with pytest.raises(HitsStampsError, match="DDIM"):
        generate(diff_dir, 2, "real", mode="residual")
    with pytest.raises(HitsStampsError, match="steps must be"):
        generate(diff_dir, 2, "real", steps=10_000)


def test_condition_frequencies_are_saved_beside_the_weights_and_older_directories_load_theirs(diff_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    sampling = load_file(diff_dir / "sampling.safetensors")
    assert set(sampling) == {"condition_weight", "condition_temperature"}  # no latent mixture or residual model
    assert float(sampling["condition_weight"].sum()) == 192  # the training split's stamps, counted per condition
    older = tmp_path / "older"  # written when the frequencies were a buffer of the weights
    shutil.copytree(diff_dir, older)
    weights = load_file(older / "model.safetensors")
    save_file({**weights, "condition_weight": sampling["condition_weight"]}, older / "model.safetensors")
    (older / "sampling.safetensors").unlink()
    np.testing.assert_array_equal(generate(older, 12, "bogus", seed=2).images,
                                  generate(diff_dir, 12, "bogus", seed=2).images)


def test_cli_trains_generates_and_tunes_the_diffusion_model(diff_dir, sim, tmp_path):
    from hits_stamps.generation.judge import evaluate_generator
    from hits_stamps.io import read_stamps, write_stamps

    data = tmp_path / "sim.npz"
    write_stamps(sim[:64], data)
    args = ["train", "--model", "diffusion", "--data", str(data), "--out", str(tmp_path / "d"), "--epochs", "1",
            "--no-progress", "--model-arg", "condition=class"]
    args += [f"--model-arg={k}={json.dumps(v)}" for k, v in TINY.items()]
    assert main(args) == 0 and (tmp_path / "d" / "conditions.npz").exists()
    assert main(["generate", str(diff_dir), "--n", "5", "--label", "real", "--steps", "2", "--out",
                 str(tmp_path / "g.npz")]) == 0
    assert read_stamps(tmp_path / "g.npz").meta["steps"] == 2
    tuner = fit(TrainConfig(model="seed-cnn", epochs=1), sim, tmp_path / "tuner", progress=False)
    import shutil

    work = tmp_path / "tuned"
    shutil.copytree(diff_dir, work)
    assert main(["tune-generator", str(work), "--classifier", str(tuner.path), "--guidance", "0,2", "--n", "6"]) == 0
    cfg = json.loads((work / "config.json").read_text())["sampling"]
    assert cfg["setting"] == "guidance" and cfg["guidance"] in (0.0, 2.0) and cfg["tuned_with_model"] == "seed-cnn"
    assert generate(work, 3, "real").meta["guidance"] == cfg["guidance"]  # stored in the weights
    kw = dict(progress=False, train=sim, max_per_class=8, make_figures=True, tstr=False)
    with pytest.raises(HitsStampsError, match="chose the generator's settings"):
        evaluate_generator(work, sim[120:], tmp_path / "j1", classifier=tuner.path, **kw)
    judge = fit(TrainConfig(model="rotinv-cnn", epochs=1, model_kwargs={"widths": [4, 8], "hidden": 8}), sim,
                tmp_path / "judge", progress=False)
    res = evaluate_generator(work, sim[120:], tmp_path / "j2", classifier=judge.path, **kw)
    assert res["generator_model"] == "diffusion" and res["test_negative_elbo"] is None
    assert res["roles"]["tuners"][0]["model"] == "seed-cnn" and res["roles"]["judge"]["model"] == "rotinv-cnn"
    assert res["consistency"]["real"]["check"]["max_rel_err_difference"] < 1e-5
    assert set(res["figures"]) == {"grid_real", "grid_bogus"}
