import dataclasses
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import distributions as D

from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.errors import HitsStampsError, StampFileError
from hits_stamps.models.cvae import ConditionalVAE, CVAEConfig, cvae_objective, gaussian_kl
from hits_stamps.models.generator import ChannelTransform
from hits_stamps.models.registry import get_spec
from hits_stamps.training import TrainConfig, fit
from hits_stamps.training.modeldir import load_model, write_json

TINY = {"latent_dim": 3, "base_channels": 4, "hidden": 16}


def _model(c=4, size=(21, 21), **kw):
    return ConditionalVAE(c, size, CVAEConfig(**{**TINY, "condition": "class", **kw}))


def _fitted(c=4, size=(21, 21), **kw):
    model = _model(c, size, **kw)
    x = torch.randn(16, c, *size) * 5 + 100
    return model.fit_input_stats(x), x


@pytest.mark.parametrize(
    ("likelihood", "c", "size"),
    [(lik, 4, (21, 21)) for lik in ("gaussian", "laplace", "student_t", "mvn")]
    + [("mvn", 3, (63, 63)), ("student_t", 2, (16, 24))],
)
def test_shapes_for_sizes_channels_and_likelihoods(likelihood, c, size):
    model, x = _fitted(c, size, likelihood=likelihood)
    y = torch.tensor([0, 1] * 8)
    out = model(x, y)
    assert out.dist.batch_shape == (16,) and out.dist.event_shape == (*size, c)
    assert out.target.shape == (16, *size, c)
    assert out.z_mean.shape == out.z_log_std.shape == (16, 3)
    res = cvae_objective(model, x, y, n_train=100)
    assert res.logits is None and res.loss.ndim == 0 and torch.isfinite(res.loss)
    assert set(res.parts) == {"nll", "kl", "nll_data"}
    assert model.decode(torch.randn(5, 3), y[:5]).sample().shape == (5, *size, c)


@pytest.mark.parametrize("kind", ["asinh", "standardize"])
def test_input_transform_inverts_exactly(kind):
    rng = np.random.default_rng(0)
    # HiTS-like dynamic range: sky ~130 ADU with noise ~10, sources up to 4e4 ADU, negative differences
    x = np.concatenate([rng.normal(130, 10, (64, 1, 21, 21)), rng.lognormal(5, 2, (64, 1, 21, 21)),
                        rng.normal(0, 30, (64, 1, 21, 21)) * rng.lognormal(0, 2, (64, 1, 1, 1))], axis=1)
    tr = ChannelTransform(3, kind).fit(torch.as_tensor(x, dtype=torch.float32))
    x64 = torch.as_tensor(x, dtype=torch.float64)
    np.testing.assert_allclose(tr.inverse(tr(x64)).numpy(), x, rtol=1e-12, atol=1e-9)
    x32 = torch.as_tensor(x, dtype=torch.float32)
    back = tr.inverse(tr(x32)).numpy()
    err = np.abs(back - x32.numpy()) / (np.abs(x32.numpy()) + tr.scale.numpy()[None, :, None, None])
    assert err.max() < 1e-5  # float32 rounding only
    flat = x32.numpy().astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1)
    med = np.median(flat, axis=1)
    np.testing.assert_allclose(tr.center.numpy(), med, rtol=1e-6)
    if kind == "standardize":
        expected = 1.4826 * np.median(np.abs(flat - med[:, None]), axis=1)
    else:  # 5 x the median within-stamp noise
        per = x32.numpy().astype(np.float64).reshape(64, 3, -1)
        mad = np.median(np.abs(per - np.median(per, axis=2, keepdims=True)), axis=2)  # (N, C)
        expected = 5 * 1.4826 * np.median(mad, axis=0)
        assert expected[0] == pytest.approx(5 * 10, rel=0.05)  # 5 x the sky noise of 10
    np.testing.assert_allclose(tr.scale.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("kind", ["asinh", "standardize"])
def test_channel_differences_invert_exactly(kind):
    rng = np.random.default_rng(1)
    sky = rng.normal(120, 8, (32, 1, 21, 21))
    x = np.concatenate([sky, sky + rng.normal(0, 8, sky.shape) + rng.lognormal(4, 2, (32, 1, 1, 1)),
                        rng.normal(0, 11, (32, 2, 21, 21))], axis=1)  # template, science, difference, snr
    tr = ChannelTransform(4, kind, subtract=[[1, 0]]).fit(torch.as_tensor(x))
    x64 = torch.as_tensor(x)
    np.testing.assert_allclose(tr.inverse(tr(x64)).numpy(), x, rtol=1e-12, atol=1e-9)
    # the statistics are those of science - template
    assert float(tr.center[1]) == pytest.approx(np.median(x[:, 1] - x[:, 0]), rel=1e-6)
    for bad in ([[1, 1]], [[1, 0], [0, 2]], [[4, 0]], [[1, 0], [1, 2]]):
        with pytest.raises(ValueError, match="subtract_channels must be"):
            ChannelTransform(4, kind, subtract=bad)


@pytest.mark.parametrize("kind", ["asinh", "standardize"])
def test_log_jacobian_matches_autograd(kind):
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64) * 50 + 20
    tr = ChannelTransform(2, kind, subtract=[[1, 0]]).fit(x)
    jac = torch.autograd.functional.jacobian(lambda v: tr(v.view(1, 2, 4, 4)).flatten(), x[0].flatten())
    assert float(tr.log_abs_det_jacobian(x[:1])) == pytest.approx(float(torch.linalg.slogdet(jac)[1]), rel=1e-9)


def test_transform_flat_channel_and_bad_shape():
    x = torch.zeros(4, 2, 5, 5)
    x[:, 1] = torch.randn(4, 5, 5)
    tr = ChannelTransform(2).fit(x)
    assert float(tr.scale[0]) == 1.0  # a constant channel falls back to unit scale
    with pytest.raises(ValueError, match=r"expected \(N, 2, H, W\)"):
        tr.fit(torch.zeros(4, 3, 5, 5))
    with pytest.raises(ValueError, match="input_transform must be one of"):
        ChannelTransform(2, "log")


def test_elbo_parts_match_closed_forms():
    model, x = _fitted(likelihood="gaussian")
    model.eval()
    y = torch.tensor([0, 1] * 8)
    torch.manual_seed(3)
    res = cvae_objective(model, x, y, n_train=1)
    torch.manual_seed(3)
    with torch.no_grad():
        out = model(x, y)
    loc, scale = out.dist.base_dist.loc, out.dist.base_dist.scale
    t = out.target
    nll = (0.5 * math.log(2 * math.pi) + scale.log() + (t - loc) ** 2 / (2 * scale**2)).sum((1, 2, 3))
    kl = D.kl_divergence(D.Normal(out.z_mean, out.z_log_std.exp()), D.Normal(0.0, 1.0)).sum(-1)
    assert res.parts["nll"] == pytest.approx(float(nll.mean()), rel=1e-5)
    assert res.parts["kl"] == pytest.approx(float(kl.mean()), rel=1e-5)
    assert float(res.loss.detach()) == pytest.approx(float(nll.mean() + kl.mean()), rel=1e-5)
    torch.testing.assert_close(gaussian_kl(out.z_mean, out.z_log_std), kl, rtol=1e-5, atol=1e-5)


def test_the_loss_does_not_change_the_model():
    model, x = _fitted()
    y = torch.tensor([0, 1] * 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for mode in (model.train, model.eval):
        mode()
        cvae_objective(model, x, y, n_train=16)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    unfitted = _model()
    with pytest.raises(ValueError, match="input transform is not fitted; call fit_input_stats"):
        cvae_objective(unfitted.train(), x, y, n_train=16)
    assert not unfitted.stats_fitted


def test_mvn_nll_matches_per_pixel_closed_form():
    model, x = _fitted(c=3, size=(5, 6), likelihood="mvn")
    model.eval()
    with torch.no_grad():
        out = model(x, torch.zeros(16, dtype=torch.long))
        mvn = out.dist.base_dist
        loc, tril = mvn.loc, mvn.scale_tril  # (B, H, W, C), (B, H, W, C, C)
        assert torch.all(torch.diagonal(tril, dim1=-2, dim2=-1) >= model.min_scale)
        assert torch.all(tril.triu(1) == 0)
        cov = tril @ tril.transpose(-1, -2)
        r = (out.target - loc).unsqueeze(-1)  # (B, H, W, C, 1)
        maha = (r.transpose(-1, -2) @ torch.linalg.solve(cov, r)).squeeze(-1).squeeze(-1)
        nll = 0.5 * (3 * math.log(2 * math.pi) + torch.logdet(cov) + maha)  # (B, H, W)
        torch.testing.assert_close(-out.dist.log_prob(out.target), nll.sum((1, 2)), rtol=1e-4, atol=1e-3)


def test_config_has_the_recipe_defaults_and_refuses_unknown_or_removed_options():
    spec = get_spec("cvae")
    assert spec.default_kwargs == CVAEConfig().to_kwargs()  # one set of defaults
    cfg = CVAEConfig()
    assert (cfg.latent_dim, cfg.base_channels, cfg.likelihood, cfg.subtract_channels, cfg.condition) == (
        16, 32, "mvn", ((1, 0),), "auto")
    assert CVAEConfig.from_kwargs(cfg.to_kwargs()) == cfg  # through config.json and back
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.latent_dim = 4
    with pytest.raises(ValueError, match="likelihood must be one of"):
        CVAEConfig(likelihood="poisson")
    with pytest.raises(ValueError, match="unknown cvae option 'latent_dims'"):
        CVAEConfig.from_kwargs({"latent_dims": 4})
    for key, value in (("likelihood", "mvn_lowrank"), ("decoder_scale", "pixel"), ("kl_weight", 0.5),
                       ("kl_warmup_steps", 100), ("point_sources", 2)):
        with pytest.raises(ValueError, match=f"{key}=.* was removed.*hits-stamps train --model cvae"):
            CVAEConfig.from_kwargs({key: value})
    # a new model refuses the options that older directories still load with
    toy = make_synthetic_stamps(20, seed=0)
    for key, value, message in (("latent_components", 10, "not a cvae option.*fit_sampling_models"),
                                ("residual_units", "location", "unknown cvae option 'residual_units'"),
                                ("decoder_scale", "pixel", "decoder_scale='pixel' was removed")):
        with pytest.raises(ValueError, match=message):
            spec.data_kwargs(toy, {"condition": "class", key: value})
    # options of older model directories that hold the behaviour that was kept load
    old = {"latent_dim": 16, "decoder_scale": "global", "latent_components": 100, "residual_units": "location",
           "kl_weight": 1.0, "point_sources": 0}
    assert CVAEConfig.from_kwargs(old) == CVAEConfig(latent_dim=16)


def test_bad_arguments():
    model, x = _fitted()
    with pytest.raises(ValueError, match="class labels must be in 0..1"):
        model(x[:2], torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="need size >= 3"):
        _model(size=(2, 21))


def test_registered_as_generator_with_invertible_recipe():
    spec = get_spec("cvae")
    assert spec.task == "generator"
    assert spec.recipe.scaling == "none"


def test_trained_through_the_loop_in_training_file_units(tmp_path):
    from hits_stamps.generation.sample import decode_stamps, sampling_of

    toy = make_synthetic_stamps(96, seed=2)
    toy.images = toy.images * 1000.0 + 5000.0  # a file in other units: the model must give these back
    cfg = TrainConfig(model="cvae", epochs=1, batch_size=32, model_kwargs=TINY)
    tm = fit(cfg, toy, tmp_path / "m", progress=False)
    module = tm.module
    assert module.stats_fitted
    assert tm.config["model_kwargs"] == {**CVAEConfig(**TINY).to_kwargs(), "condition": "kind",
                                         "kinds": sorted(set(toy.kind)), "kind_labels": module.condition_label.tolist()}
    train_part = toy.split((0.8, 0.2), seed=0)[0]  # the loop's own seeded split
    pixels = train_part.images.reshape(-1, 4).astype(np.float64)
    pixels[:, 1] -= pixels[:, 0]  # the recipe models science - template
    np.testing.assert_allclose(module.transform.center.numpy(), np.median(pixels, axis=0), rtol=1e-5)
    assert set(tm.history[0]) >= {"loss", "nll", "kl", "val_loss"}
    sm = sampling_of(tm)
    y = torch.full((64,), int(np.flatnonzero(module.condition_label.numpy() == 1)[0]))
    x = decode_stamps(module, sm, y, torch.randn(64, 3), mode="loc").numpy()
    lo, hi = np.percentile(toy.images[..., 0], [0.5, 99.5])
    assert lo < np.median(x[:, 0]) < hi  # in the file's units (about 5000 +- 2000), not the model's (about 0)
    assert lo > 1000
    # fitted by the loop after training and saved beside the weights, not in them
    assert sm.has_latent_mixture and sm.has_residual_model
    assert (tmp_path / "m" / "sampling.safetensors").is_file()
    assert not any(k.startswith(("latent_", "resid_")) for k in load_file(tmp_path / "m" / "model.safetensors"))


def test_kind_conditions_map_stamps_to_kinds():
    kinds, labels = ["bad_column", "cosmic_ray", "sn", "variable"], [0, 0, 1, 1]
    model = _model(condition="kind", kinds=kinds, kind_labels=labels)
    assert model.n_classes == 4 and model.condition_label.tolist() == labels
    cond = model.condition_index(np.array([1, 0, 1]), np.array(["variable", "bad_column", "sn"]))
    assert cond.tolist() == [3, 0, 2]
    with pytest.raises(ValueError, match="not among the kinds"):
        model.condition_index(np.array([0]), np.array(["satellite"]))
    with pytest.raises(ValueError, match="differs from the class of their kind"):
        model.condition_index(np.array([0]), np.array(["sn"]))
    with pytest.raises(ValueError, match="the stamps need kinds"):
        model.condition_index(np.array([0]))
    plain = _model()
    assert plain.condition_index(np.array([1, 0]), np.array(["x", "y"])).tolist() == [1, 0]


def test_kind_condition_arguments_and_data_kwargs():
    with pytest.raises(ValueError, match="condition must be one of"):
        _model(condition="snr")
    with pytest.raises(ValueError, match="one class label per kind"):
        _model(condition="kind", kinds=["sn", "noise"], kind_labels=[1])
    with pytest.raises(ValueError, match="kind_labels must be class labels"):
        _model(condition="kind", kinds=["sn"], kind_labels=[2])
    with pytest.raises(ValueError, match="resolved by the training loop"):
        _model(condition="auto")
    spec = get_spec("cvae")
    toy = make_synthetic_stamps(60, seed=3)
    filled = spec.data_kwargs(toy, {"condition": "kind"})
    assert filled["kinds"] == sorted(set(toy.kind))
    assert spec.data_kwargs(toy, {"condition": "class"})["condition"] == "class"
    assert spec.data_kwargs(toy, {"condition": "auto"})["condition"] == "kind"  # 4 kinds, one class each
    two = toy[:]
    two.kind = np.where(two.labels == 1, "sn", "bad_subtraction").astype(object)
    assert spec.data_kwargs(two, {"condition": "auto"})["kinds"] == []  # one kind per class: "class"
    toy.labels[np.flatnonzero(toy.kind == "sn")[0]] = 0
    with pytest.raises(ValueError, match="'sn' has stamps of both classes"):
        spec.data_kwargs(toy, {"condition": "kind"})
    assert spec.data_kwargs(toy, {"condition": "auto"})["condition"] == "class"


@pytest.mark.parametrize("likelihood", ["gaussian", "laplace", "student_t", "mvn"])
def test_pixel_tril_is_one_learned_channel_factor_for_every_pixel(likelihood):
    model, x = _fitted(likelihood=likelihood)
    n_cov = 4 + (6 if likelihood == "mvn" else 0)
    assert model.global_scale.shape == (n_cov,) and model.dec_out.out_channels == 4
    dist = model.decode(torch.randn(2, 3), torch.tensor([0, 1]))
    tril = model.pixel_tril(dist)
    assert tril.shape == (2, 21, 21, 4, 4)
    torch.testing.assert_close(tril, torch.tril(tril))
    assert bool((torch.diagonal(tril, dim1=-2, dim2=-1) > 0).all())
    assert torch.equal(tril, tril[:1, :1, :1].expand_as(tril))
    if likelihood != "mvn":
        torch.testing.assert_close(torch.diagonal(tril, dim1=-2, dim2=-1), dist.base_dist.scale)
    res = cvae_objective(model.train(), x, torch.tensor([0, 1] * 8), n_train=16)
    res.loss.backward()
    assert model.global_scale.grad.abs().sum() > 0  # learned with the rest


def test_weights_of_older_directories_load_and_removed_architectures_are_refused(tmp_path):
    model, _ = _fitted()
    state = model.state_dict()
    older = {**state, "train_steps": torch.tensor(5), "latent_weights": torch.ones(2, 3), "resid_amp": torch.ones(2)}
    twin = _model()
    twin.load_state_dict(older)  # the sampling buffers of older weights files are left out (generation.posthoc)
    assert all(torch.equal(v, twin.state_dict()[k]) for k, v in state.items())
    with pytest.raises(RuntimeError, match="Unexpected key"):
        twin.load_state_dict({**state, "bogus_key": torch.zeros(1)})
    per_pixel = {k: v for k, v in state.items() if k != "global_scale"}
    with pytest.raises(RuntimeError, match="decoder_scale='pixel', removed.*retrain"):
        twin.load_state_dict(per_pixel)
    # through a model directory: a removed option in config.json is one clear error naming the file
    toy = make_synthetic_stamps(64, seed=1)
    tm = fit(TrainConfig(model="cvae", epochs=1, batch_size=32, model_kwargs=TINY), toy, tmp_path / "m",
             progress=False)
    tm.config["model_kwargs"]["point_sources"] = 2
    write_json(tmp_path / "m" / "config.json", tm.config)
    with pytest.raises(StampFileError, match="config.json.*point_sources=2 was removed"):
        load_model(tmp_path / "m")


def test_kind_conditioned_training_resumes_with_the_same_or_no_model_arguments(tmp_path):
    toy = make_synthetic_stamps(96, seed=4)
    cfg = TrainConfig(model="cvae", epochs=2, batch_size=32, model_kwargs={**TINY, "condition": "kind"})

    def interrupt(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(cfg, toy, tmp_path / "m", progress=False, on_epoch=interrupt)
    resumed = fit(cfg, toy, tmp_path / "m", progress=False, resume=True)  # the arguments resolve to the stored ones
    assert resumed.config["model_kwargs"]["kinds"] == sorted(set(toy.kind)) and len(resumed.history) == 2
    with pytest.raises(HitsStampsError, match="resume with the model arguments"):
        fit(dataclasses.replace(cfg, model_kwargs={**TINY, "condition": "class"}), toy, tmp_path / "m",
            progress=False, resume=True)
