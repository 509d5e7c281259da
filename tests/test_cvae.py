import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import distributions as D

from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.errors import HitsStampsError
from hits_stamps.models.cvae import ChannelTransform, ConditionalVAE, LowRankPixelMVN, cvae_objective, gaussian_kl
from hits_stamps.models.registry import get_spec
from hits_stamps.training import TrainConfig, fit
from hits_stamps.training.modeldir import load_model

TINY = {"latent_dim": 3, "base_channels": 4, "hidden": 16}


def _fitted(c=4, size=(21, 21), **kw):
    model = ConditionalVAE(in_channels=c, size=size, **{**TINY, **kw})
    x = torch.randn(16, c, *size) * 5 + 100
    return model.fit_input_stats(x), x


@pytest.mark.parametrize(
    ("likelihood", "c", "size"),
    [(lik, 4, (21, 21)) for lik in ("gaussian", "laplace", "student_t", "mvn", "mvn_lowrank")]
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
    assert set(res.parts) == {"nll", "kl", "kl_weight", "nll_data"}
    for mode in ("sample", "loc"):
        assert model.sample(y[:5], mode=mode).shape == (5, c, *size)


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
    assert res.parts["kl_weight"] == 1.0
    torch.testing.assert_close(gaussian_kl(out.z_mean, out.z_log_std), kl, rtol=1e-5, atol=1e-5)


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


def test_lowrank_pixel_mvn_matches_dense_gaussian():
    torch.manual_seed(0)
    b, h, w, c, r = 2, 3, 2, 4, 3
    loc = torch.randn(b, h, w, c, dtype=torch.float64)
    tril = torch.randn(b, h, w, c, c, dtype=torch.float64).tril()
    tril.diagonal(dim1=-2, dim2=-1).abs_().add_(0.5)
    factor = torch.randn(b, h, w, c, r, dtype=torch.float64)
    dist = LowRankPixelMVN(loc, tril, factor)
    assert dist.batch_shape == (b,) and dist.event_shape == (h, w, c)
    blocks = tril.reshape(b, h * w, c, c)
    cov = factor.reshape(b, -1, r) @ factor.reshape(b, -1, r).transpose(1, 2)
    for p in range(h * w):
        cov[:, p * c : (p + 1) * c, p * c : (p + 1) * c] += blocks[:, p] @ blocks[:, p].transpose(-1, -2)
    x = torch.randn(b, h, w, c, dtype=torch.float64)
    dense = D.MultivariateNormal(loc.reshape(b, -1), covariance_matrix=cov)
    torch.testing.assert_close(dist.log_prob(x), dense.log_prob(x.reshape(b, -1)))
    draws = torch.stack([dist.sample() for _ in range(4000)])[:, 0].reshape(4000, -1)
    err = (torch.cov(draws.T) - cov[0]).abs().max() / cov[0].abs().max()
    assert float(err) < 0.08
    torch.testing.assert_close(dist.mean, loc)


def test_kl_warmup_counts_training_steps_only():
    model, x = _fitted(kl_warmup_steps=4)
    y = torch.zeros(16, dtype=torch.long)
    model.train()
    weights = [cvae_objective(model, x, y, 1).parts["kl_weight"] for _ in range(5)]
    assert weights == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert int(model.train_steps) == 5
    model.eval()
    assert cvae_objective(model, x, y, 1).parts["kl_weight"] == 1.0
    assert int(model.train_steps) == 5
    assert "train_steps" in model.state_dict()
    beta_model, _ = _fitted(kl_warmup_steps=4, kl_weight=0.5)  # a beta-VAE with warm-up
    beta_model.train()
    assert [cvae_objective(beta_model, x, y, 1).parts["kl_weight"] for _ in range(5)] == [0.125, 0.25, 0.375, 0.5, 0.5]
    with pytest.raises(ValueError, match="kl_weight must be > 0"):
        ConditionalVAE(4, (21, 21), kl_weight=0.0)


def test_unfitted_model_fits_stats_on_first_training_batch():
    model = ConditionalVAE(4, (21, 21), **TINY)
    x = torch.randn(8, 4, 21, 21) * 3 + 50
    assert not model.stats_fitted
    model.train()
    cvae_objective(model, x, torch.zeros(8, dtype=torch.long), 1)
    assert model.stats_fitted
    assert float(model.transform.center[0]) == pytest.approx(float(x[:, 0].median()), rel=1e-3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="likelihood must be one of"):
        ConditionalVAE(4, (21, 21), likelihood="poisson")
    model, x = _fitted()
    with pytest.raises(ValueError, match="class labels must be in 0..1"):
        model(x[:2], torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="mode must be"):
        model.sample(torch.tensor([0]), mode="mean")


def test_registered_as_generator_with_invertible_recipe():
    spec = get_spec("cvae")
    assert spec.task == "generator"
    assert spec.recipe.scaling == "none"


def test_trained_through_the_loop_in_training_file_units(tmp_path):
    toy = make_synthetic_stamps(96, seed=2)
    toy.images = toy.images * 1000.0 + 5000.0  # a file in other units: the model must give these back
    cfg = TrainConfig(model="cvae", epochs=1, batch_size=32, model_kwargs=TINY)
    tm = fit(cfg, toy, tmp_path / "m", progress=False)
    module = tm.module
    assert module.stats_fitted
    train_part = toy.split((0.8, 0.2), seed=0)[0]  # the loop's own seeded split
    pixels = train_part.images.reshape(-1, 4).astype(np.float64)
    pixels[:, 1] -= pixels[:, 0]  # the registry default models science - template
    np.testing.assert_allclose(module.transform.center.numpy(), np.median(pixels, axis=0), rtol=1e-5)
    assert set(tm.history[0]) >= {"loss", "nll", "kl", "val_loss"}
    x = module.sample(torch.ones(64, dtype=torch.long), mode="loc").numpy()
    lo, hi = np.percentile(toy.images[..., 0], [0.5, 99.5])
    assert lo < np.median(x[:, 0]) < hi  # in the file's units (about 5000 +- 2000), not the model's (about 0)
    assert lo > 1000
    assert module.has_latent_mixture  # fitted by the loop after training and saved in the weights file


def test_latent_mixture_fits_the_codes_of_each_class_and_samples_from_them():
    model, x = _fitted(latent_components=1)
    y = torch.tensor([0] * 8 + [1] * 8)
    model.eval()
    assert not model.has_latent_mixture
    with pytest.raises(ValueError, match="no latent mixture fitted"):
        model.sample_latent(y, "aggregate")
    model.fit_latent(x, y)
    assert model.has_latent_mixture
    mu = model.encode(x, y)[0].detach().double()
    for k in (0, 1):
        codes = mu[y == k]
        np.testing.assert_allclose(model.latent_means[k, 0].numpy(), codes.mean(0).numpy(), atol=1e-5)
        cov = torch.cov(codes.T, correction=0) + 1e-4 * torch.eye(3, dtype=torch.float64)  # sklearn's reg_covar
        tril = model.latent_tril[k, 0].double()
        np.testing.assert_allclose((tril @ tril.T).numpy(), cov.numpy(), rtol=1e-4, atol=1e-6)
    # draws of class 1 follow N(mean_1, cov_1), not the prior
    gen = torch.Generator().manual_seed(0)
    z = model.sample_latent(torch.ones(20000, dtype=torch.long), "aggregate", gen).double()
    mean1 = model.latent_means[1, 0].double()
    tril1 = model.latent_tril[1, 0].double()
    assert torch.allclose(z.mean(0), mean1, atol=4 * float(tril1.diagonal().max()) / math.sqrt(20000) + 1e-4)
    np.testing.assert_allclose(torch.cov(z.T).numpy(), (tril1 @ tril1.T).numpy(), atol=0.05 * float(
        (tril1 @ tril1.T).diagonal().max()))
    prior = model.sample_latent(torch.ones(4, dtype=torch.long), "prior", torch.Generator().manual_seed(3))
    torch.testing.assert_close(prior, torch.randn(4, 3, generator=torch.Generator().manual_seed(3),
                                                  dtype=torch.float64).float())
    with pytest.raises(ValueError, match="latent must be one of"):
        model.sample_latent(y, "posterior")
    with pytest.raises(ValueError, match="latent_components must be >= 1"):
        ConditionalVAE(4, (21, 21), latent_components=0)


def test_mixture_components_and_weights_saved_and_old_weights_still_load():
    from hits_stamps.models.cvae import CODES_PER_COMPONENT

    model, _ = _fitted(latent_components=4)
    x = torch.randn(145, 4, 21, 21) * 5 + 100
    y = torch.tensor([0] * 45 + [1] * 100)
    model.fit_latent(x, y)
    # class 0 has 45 codes: at most 45 // 20 = 2 components, the others weigh 0; class 1 has all 4
    assert CODES_PER_COMPONENT == 20
    assert int((model.latent_weights[0] > 0).sum()) == 2 and int((model.latent_weights[1] > 0).sum()) == 4
    # the same mixture from the codes computed beforehand
    model.eval()
    codes = model.encode(x, y)[0].detach()
    twin_fit = ConditionalVAE(4, (21, 21), **TINY, latent_components=4)
    twin_fit.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("latent_")}, strict=False)
    twin_fit.fit_latent_codes(codes, y)
    torch.testing.assert_close(twin_fit.latent_means, model.latent_means)
    with pytest.raises(ValueError, match="expected codes"):
        model.fit_latent_codes(codes[:, :2], y)
    torch.testing.assert_close(model.latent_weights.sum(1), torch.ones(2))
    state = model.state_dict()
    twin = ConditionalVAE(4, (21, 21), **TINY, latent_components=4)
    twin.load_state_dict(state)
    assert twin.has_latent_mixture and torch.equal(twin.latent_tril, model.latent_tril)
    old = {k: v for k, v in state.items() if not k.startswith("latent_")}  # weights saved before the mixture existed
    legacy = ConditionalVAE(4, (21, 21), **TINY, latent_components=4)
    legacy.load_state_dict(old)
    assert not legacy.has_latent_mixture
    with pytest.raises(RuntimeError, match="Unexpected key"):
        legacy.load_state_dict({**state, "bogus_key": torch.zeros(1)})


@pytest.mark.parametrize("units", ["model", "decoder"])
def test_residual_model_matches_the_residual_moments_and_draws_correlated_noise(units):
    model, x = _fitted(noise_rank=20, residual_units=units)
    x = x + 3 * torch.randn_like(x)
    y = torch.tensor([0] * 6 + [1] * 10)
    model.eval()
    with pytest.raises(ValueError, match="no residual model fitted"):
        model.sample(y, mode="residual")
    model.fit_residuals(x, y)
    assert model.has_residual_model and bool(model.resid_standardized) == (units == "decoder")
    t = model.to_model_units(x)
    mu = model.encode(x, y)[0]
    dist = model.decode(mu, y)
    r = (t.permute(0, 2, 3, 1) - dist.mean).detach()  # (16, H, W, C)
    if units == "decoder":  # each pixel standardised by the decoder's channel scale factor
        r = torch.linalg.solve_triangular(model.pixel_tril(dist), r.unsqueeze(-1), upper=False).squeeze(-1).detach()
    r = r.flatten(1).double()  # (16, P)
    for k in (0, 1):
        rk = r[y == k]
        np.testing.assert_allclose(model.resid_mean[k].numpy(), rk.mean(0).numpy(), atol=1e-5)
        # rank 20 >= N_k - 1: the low-rank part is the whole sample covariance, so the diagonal is the floor
        cov = torch.cov(rk.T)
        f = model.resid_factor[k].double()
        np.testing.assert_allclose((f @ f.T).numpy(), cov.numpy(), atol=1e-4)
        assert float(model.resid_tril[k].abs().max()) < 1e-3
    twin = ConditionalVAE(4, (21, 21), **TINY, noise_rank=20, residual_units=units)
    twin.load_state_dict(model.state_dict())
    assert twin.has_residual_model and bool(twin.resid_standardized) == (units == "decoder")
    # a sample is loc + L e (decoder units) or loc + r (model units), e / r a draw of the fitted model
    z, yy = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    torch.manual_seed(3)
    got = model.sample(yy, mode="residual", z=z)
    torch.manual_seed(3)
    d5 = model.decode(z, yy)
    draw = model._residual_draw(yy, d5.mean)
    if units == "decoder":
        draw = (model.pixel_tril(d5) @ draw.unsqueeze(-1)).squeeze(-1)
    expected = model.to_data_units((d5.mean + draw).permute(0, 3, 1, 2))
    torch.testing.assert_close(got, expected.detach())
    # draws: mean residual + correlated noise with the fitted per-pixel variance
    torch.manual_seed(0)
    loc = torch.zeros(2000, 21, 21, 4)
    draws = model._residual_draw(torch.ones(2000, dtype=torch.long), loc).flatten(1).double()
    blocks = model.resid_tril[1].double() @ model.resid_tril[1].double().transpose(1, 2)  # (H W, C, C)
    var = (model.resid_factor[1].double() ** 2).sum(1) + torch.diagonal(blocks, dim1=1, dim2=2).reshape(-1)
    np.testing.assert_allclose(draws.mean(0).numpy(), model.resid_mean[1].numpy(), atol=5 * float(var.max().sqrt())
                               / math.sqrt(2000))
    np.testing.assert_allclose(draws.var(0).numpy(), var.numpy(), rtol=0.2, atol=1e-6)
    assert model.sample(y[:3], mode="residual").shape == (3, 4, 21, 21)


def test_location_amplitude_interpolates_between_knots_and_is_constant_beyond():
    from hits_stamps.models.cvae import AMPLITUDE_KNOTS

    model, _ = _fitted(residual_units="location")
    nb = len(AMPLITUDE_KNOTS)
    model.resid_amp[1] = torch.arange(nb, dtype=torch.float32).repeat(4, 1) + torch.arange(4.0)[:, None] * 10
    k = torch.ones(3, dtype=torch.long)
    knots = torch.tensor(AMPLITUDE_KNOTS)
    b = torch.stack([knots[2].expand(21, 21), ((knots[3] + knots[4]) / 2).expand(21, 21),
                     torch.full((21, 21), 50.0)])  # (3, H, W): a knot, half way between two, beyond the last
    a = model.residual_amplitude(k, b[..., None].expand(-1, -1, -1, 4))  # (3, H, W, C)
    torch.testing.assert_close(a[0, 5, 5], torch.tensor([2.0, 12.0, 22.0, 32.0]))
    torch.testing.assert_close(a[1, 0, 0], torch.tensor([3.5, 13.5, 23.5, 33.5]))
    torch.testing.assert_close(a[2, 20, 20], torch.tensor([8.0, 18.0, 28.0, 38.0]))
    # each channel looks its brightness up in its own table
    own = torch.stack([knots[1], knots[2], knots[3], torch.tensor(99.0)]).expand(1, 21, 21, 4)
    torch.testing.assert_close(model.residual_amplitude(k[:1], own)[0, 3, 4], torch.tensor([1.0, 12.0, 23.0, 38.0]))


def test_brightness_follows_all_channels_the_image_channels_or_each_channel_itself():
    loc = torch.zeros(1, 21, 21, 4)
    loc[0, 10, 10] = torch.tensor([0.5, -2.0, 1.0, 7.0])
    expected = {"all": [7.0] * 4, "images": [2.0] * 4, "own": [0.5, 2.0, 1.0, 7.0]}
    for how, want in expected.items():
        model, _ = _fitted(residual_units="location", amplitude_from=how)
        b = model.brightness(loc)
        assert b.shape == loc.shape and float(b[0, 0, 0].abs().max()) == 0.0
        torch.testing.assert_close(b[0, 10, 10], torch.tensor(want))
    with pytest.raises(ValueError, match="amplitude_from must be one of"):
        ConditionalVAE(4, (21, 21), amplitude_from="science")


def test_location_units_fit_an_amplitude_that_grows_with_brightness_and_scale_draws_by_it():
    from hits_stamps.models.cvae import AMPLITUDE_KNOTS

    torch.manual_seed(0)
    model, _ = _fitted(noise_rank=4, residual_units="location")
    model.eval()
    n = 400
    # residuals whose spread grows with the location's brightness: |loc| 0.1 in one half, 3 in the other
    b = torch.zeros(n, 21, 21, 4)
    b[:, :, 11:] = 3.0
    b[:, :, :10] = 0.1
    spread = torch.where(b > 1, 2.0, 0.5)  # (N, H, W, C)
    r = torch.randn(n, 21, 21, 4) * spread
    y = torch.ones(n, dtype=torch.long)
    model._fit_amplitude(r, b, y)
    knots = list(AMPLITUDE_KNOTS)
    amp = model.resid_amp[1]  # (C, nb)
    np.testing.assert_allclose(amp[:, knots.index(3.0)].numpy(), 2.0, rtol=0.05)
    np.testing.assert_allclose(amp[:, 0].numpy(), 0.5, rtol=0.05)
    assert bool((model.resid_amp[0] == 1).all())  # class 0 had no stamps: left at 1
    # standardised by the amplitude, the residuals have unit spread in both halves
    e = r / model.residual_amplitude(y, b)
    np.testing.assert_allclose([float(e[:, :, 12:].std()), float(e[:, :, :9].std())], 1.0, rtol=0.05)
    # a residual draw is the standardised model's draw times L_p times the amplitude at the location
    x = torch.randn(16, 4, 21, 21) * 5 + 100
    yy = torch.tensor([0] * 6 + [1] * 10)
    model.fit_residuals(x, yy)
    assert bool(model.resid_amp_fitted) and bool(model.resid_standardized)
    z, yk = torch.randn(3, 3), torch.tensor([1, 0, 1])
    torch.manual_seed(5)
    got = model.sample(yk, mode="residual", z=z)
    torch.manual_seed(5)
    d = model.decode(z, yk)
    draw = model._residual_draw(yk, d.mean) * model.residual_amplitude(yk, model.brightness(d.mean))
    draw = (model.pixel_tril(d) @ draw.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got, model.to_data_units((d.mean + draw).permute(0, 3, 1, 2)).detach())
    twin = ConditionalVAE(4, (21, 21), **TINY, noise_rank=4, residual_units="location")
    twin.load_state_dict(model.state_dict())
    assert bool(twin.resid_amp_fitted) and torch.equal(twin.resid_amp, model.resid_amp)


def test_kind_conditions_map_stamps_to_kinds_and_draw_kinds_of_a_class():
    kinds, labels = ["bad_column", "cosmic_ray", "sn", "variable"], [0, 0, 1, 1]
    model = ConditionalVAE(4, (21, 21), condition="kind", kinds=kinds, kind_labels=labels, **TINY)
    assert model.n_classes == 4 and model.condition_label.tolist() == labels
    cond = model.condition_index(np.array([1, 0, 1]), np.array(["variable", "bad_column", "sn"]))
    assert cond.tolist() == [3, 0, 2]
    assert model.condition_label[torch.tensor([3, 0, 2])].tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="not among the kinds"):
        model.condition_index(np.array([0]), np.array(["satellite"]))
    with pytest.raises(ValueError, match="differs from the class of their kind"):
        model.condition_index(np.array([0]), np.array(["sn"]))
    with pytest.raises(ValueError, match="the stamps need kinds"):
        model.condition_index(np.array([0]))
    model.condition_weight.copy_(torch.tensor([1.0, 3.0, 5.0, 0.0]))
    g = torch.Generator().manual_seed(0)
    drawn = model.draw_conditions(0, 4000, generator=g)
    assert set(drawn.tolist()) == {0, 1} and abs(float((drawn == 1).float().mean()) - 0.75) < 0.03
    assert set(model.draw_conditions(1, 50, generator=g).tolist()) == {2}  # variable has weight 0
    assert model.draw_conditions(0, 3, kind="cosmic_ray").tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="not a kind of class 1"):
        model.draw_conditions(1, 3, kind="cosmic_ray")
    plain = ConditionalVAE(4, (21, 21), **TINY)
    assert plain.condition_index(np.array([1, 0]), np.array(["x", "y"])).tolist() == [1, 0]
    assert plain.draw_conditions(1, 3).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="class only"):
        plain.draw_conditions(1, 3, kind="sn")


def test_kind_condition_arguments_and_data_kwargs():
    with pytest.raises(ValueError, match="condition must be one of"):
        ConditionalVAE(4, (21, 21), condition="snr", **TINY)
    with pytest.raises(ValueError, match="one class label per kind"):
        ConditionalVAE(4, (21, 21), condition="kind", kinds=["sn", "noise"], kind_labels=[1], **TINY)
    with pytest.raises(ValueError, match="kind_labels must be class labels"):
        ConditionalVAE(4, (21, 21), condition="kind", kinds=["sn"], kind_labels=[2], **TINY)
    spec = get_spec("cvae")
    toy = make_synthetic_stamps(60, seed=3)
    filled = spec.data_kwargs(toy, {"condition": "kind"})
    assert filled["kinds"] == sorted(set(toy.kind))
    assert spec.data_kwargs(toy, {"condition": "class"}) == {"condition": "class"}
    assert spec.data_kwargs(toy, {"condition": "auto"})["condition"] == "kind"  # 4 kinds, one class each
    two = toy[:]
    two.kind = np.where(two.labels == 1, "sn", "bad_subtraction").astype(object)
    assert spec.data_kwargs(two, {"condition": "auto"}) == {"condition": "class"}  # one kind per class
    toy.labels[np.flatnonzero(toy.kind == "sn")[0]] = 0
    with pytest.raises(ValueError, match="'sn' has stamps of both classes"):
        spec.data_kwargs(toy, {"condition": "kind"})
    assert spec.data_kwargs(toy, {"condition": "auto"}) == {"condition": "class"}
    with pytest.raises(ValueError, match="resolved by the training loop"):
        ConditionalVAE(4, (21, 21), condition="auto", **TINY)


@pytest.mark.parametrize("likelihood", ["gaussian", "laplace", "student_t", "mvn", "mvn_lowrank"])
def test_pixel_tril_is_the_decoders_channel_scale(likelihood):
    model, _ = _fitted(likelihood=likelihood)
    dist = model.decode(torch.randn(2, 3), torch.tensor([0, 1]))
    tril = model.pixel_tril(dist)
    assert tril.shape == (2, 21, 21, 4, 4)
    torch.testing.assert_close(tril, torch.tril(tril))
    assert bool((torch.diagonal(tril, dim1=-2, dim2=-1) > 0).all())
    if likelihood in ("gaussian", "laplace", "student_t"):
        torch.testing.assert_close(torch.diagonal(tril, dim1=-2, dim2=-1), dist.base_dist.scale)


def test_weights_without_the_standardisation_flag_load_as_model_unit_residuals():
    model, x = _fitted(noise_rank=4, residual_units="model")
    model.eval()
    model.fit_residuals(x, torch.tensor([0] * 8 + [1] * 8))
    state = {k: v for k, v in model.state_dict().items() if k != "resid_standardized"}  # written before the flag
    twin = ConditionalVAE(4, (21, 21), **TINY, noise_rank=4)  # today's default: decoder units
    twin.load_state_dict(state)
    assert twin.has_residual_model and not bool(twin.resid_standardized)
    with pytest.raises(ValueError, match="residual_units must be one of"):
        ConditionalVAE(4, (21, 21), residual_units="pixels", **TINY)


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


@pytest.mark.parametrize("mode", ["sample", "residual"])
def test_condition_temperature_scales_the_pixel_noise_of_its_condition_only(mode):
    model, x = _fitted(noise_rank=8)
    y = torch.tensor([0, 1] * 8)
    model.fit_residuals(x, y)
    model.eval()
    z = torch.randn(4, model.latent_dim)
    yy = torch.tensor([0, 1, 0, 1])

    def draw(**kw):
        torch.manual_seed(3)
        return model.sample(yy, mode=mode, z=z, **kw)

    full, half = draw(), draw(temperature=0.5)
    model.condition_temperature[1] = 0.5  # class 1 only
    mixed = draw()
    torch.testing.assert_close(mixed[yy == 0], full[yy == 0])
    torch.testing.assert_close(mixed[yy == 1], half[yy == 1])
    assert not torch.allclose(mixed[yy == 1], full[yy == 1])
    # the condition's temperature multiplies the global one: 0.5 x 0.5 = 0.25 for class 1
    torch.testing.assert_close(draw(temperature=0.5)[yy == 1], _at(model, yy, z, mode, 0.25)[yy == 1])
    # the buffer is saved with the weights; older weights without it load with every temperature 1
    state = model.state_dict()
    twin = ConditionalVAE(4, (21, 21), **TINY, noise_rank=8)
    twin.load_state_dict(state)
    assert twin.condition_temperature.tolist() == [1.0, 0.5]
    state.pop("condition_temperature")
    older = ConditionalVAE(4, (21, 21), **TINY, noise_rank=8)
    older.load_state_dict(state)
    assert older.condition_temperature.tolist() == [1.0, 1.0]


def _at(model, yy, z, mode, temperature):
    """The same draw as `sample` with the condition temperatures reset to 1 and one global temperature."""
    saved = model.condition_temperature.clone()
    model.condition_temperature.fill_(1.0)
    torch.manual_seed(3)
    out = model.sample(yy, mode=mode, z=z, temperature=temperature)
    model.condition_temperature.copy_(saved)
    return out


def _set_source(model, dy, dx, amp_core, sigma):
    """Point the first source of `model` at (dy, dx) px from the centre with core flux `amp_core` and width `sigma`."""
    c = model.in_channels
    with torch.no_grad():
        model.src_head.weight.zero_()
        bias = torch.zeros_like(model.src_head.bias)
        bias[0], bias[1] = math.atanh(dy / model.source_offset), math.atanh(dx / model.source_offset)
        bias[2 : 2 + c] = math.asinh(amp_core / 10.0)
        bias[2 + c : 2 + 2 * c] = 0.0  # no wing
        bias[2 + 2 * c : 2 + 3 * c] = math.log(math.expm1(sigma - 0.5)) - 1.0
        model.src_head.bias.copy_(bias)


def test_point_source_layer_renders_unit_flux_gaussians_at_the_decoded_centre():
    model, _ = _fitted(point_sources=1)
    _set_source(model, dy=1.5, dx=-2.0, amp_core=40.0, sigma=1.3)
    img = model.source_images(torch.zeros(2, 16)).detach().numpy()  # (2, H, W, C)
    assert img.shape == (2, 21, 21, 4)
    yy, xx = np.mgrid[:21, :21] - 10.0
    for c in range(4):
        plane = img[0, ..., c]
        assert plane.sum() == pytest.approx(40.0, rel=1e-3)  # unit-flux Gaussian times the amplitude
        assert (plane * yy).sum() / plane.sum() == pytest.approx(1.5, abs=1e-3)
        assert (plane * xx).sum() / plane.sum() == pytest.approx(-2.0, abs=1e-3)
        var = (plane * ((yy - 1.5) ** 2 + (xx + 2.0) ** 2)).sum() / plane.sum() / 2
        assert math.sqrt(var) == pytest.approx(1.3, rel=1e-2)


def test_point_source_is_added_in_linear_units_and_learns_a_star():
    model, x = _fitted(point_sources=1)
    model.eval()
    z, y = torch.zeros(1, 3), torch.tensor([1])
    with torch.no_grad():
        plain = model.location(model.decode(z, y))
        _set_source(model, 0.0, 0.0, 50.0, 1.0)
        top = model.dec_head[:2](torch.cat([z, model.condition(y)], dim=-1))
        with_star = model.location(model.decode(z, y))
        np.testing.assert_allclose(torch.sinh(with_star) - torch.sinh(plain), model.source_images(top), atol=1e-3)
    # a star the conv decoder alone cannot place: only the source head is trained, and it finds it
    truth = ConditionalVAE(4, (21, 21), **TINY, point_sources=1)
    truth.transform.load_state_dict(model.transform.state_dict())
    truth.load_state_dict(model.state_dict())
    _set_source(truth, -2.5, 3.0, 80.0, 1.4)
    target = truth.location(truth.decode(z, y)).detach()
    with torch.no_grad():
        model.src_head.weight.zero_()
        model.src_head.bias.zero_()
    opt = torch.optim.Adam(model.src_head.parameters(), lr=0.05)
    losses = []
    for _ in range(600):
        opt.zero_grad()
        loss = (model.location(model.decode(z, y)) - target).pow(2).sum()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 1e-4 * losses[0]
    with torch.no_grad():
        centre = model.source_offset * torch.tanh(model.src_head(top)[0, :2])
    np.testing.assert_allclose(centre.numpy(), [-2.5, 3.0], atol=0.05)


def test_point_sources_are_off_by_default_and_saved_with_the_weights(tmp_path):
    assert not any(k.startswith("src_head") for k in ConditionalVAE(**TINY).state_dict())
    with pytest.raises(ValueError, match="point_sources >= 0"):
        ConditionalVAE(**TINY, point_sources=-1)
    toy = make_synthetic_stamps(64, seed=3)
    cfg = TrainConfig(model="cvae", epochs=1, batch_size=32, model_kwargs={**TINY, "point_sources": 2})
    tm = fit(cfg, toy, tmp_path / "m", progress=False)
    again = load_model(tmp_path / "m").module
    assert again.point_sources == 2
    torch.testing.assert_close(again.src_head.weight, tm.module.src_head.weight)
    assert again.sample(torch.tensor([0, 1]), mode="residual").shape == (2, 4, 21, 21)


@pytest.mark.parametrize("likelihood", ["gaussian", "mvn"])
def test_global_decoder_scale_is_one_learned_covariance_for_every_pixel(likelihood):
    model, x = _fitted(likelihood=likelihood, decoder_scale="global")
    per_pixel, _ = _fitted(likelihood=likelihood)
    assert "global_scale" not in per_pixel.state_dict()
    n_cov = 4 + (6 if likelihood == "mvn" else 0)
    assert model.global_scale.shape == (n_cov,)
    assert model.dec_out.out_channels == per_pixel.dec_out.out_channels - n_cov == 4
    y = torch.tensor([0, 1] * 8)
    tril = model.pixel_tril(model(x, y).dist)  # (B, H, W, C, C)
    assert torch.equal(tril, tril[:1, :1, :1].expand_as(tril))
    res = cvae_objective(model.train(), x, y, n_train=16)
    res.loss.backward()
    assert model.global_scale.grad.abs().sum() > 0  # learned with the rest
    with pytest.raises(ValueError, match="decoder_scale must be one of"):
        ConditionalVAE(**TINY, decoder_scale="stamp")


def test_linear_noise_channels_keep_their_noise_flat_in_data_units():
    from hits_stamps.models.cvae import AMPLITUDE_KNOTS

    model, _ = _fitted(residual_units="location", linear_noise_channels=[3], subtract_channels=[[1, 0]])
    twin, _ = _fitted(residual_units="location", subtract_channels=[[1, 0]])
    real_only, _ = _fitted(residual_units="location", linear_noise_channels=[3], linear_noise_labels=[1],
                           subtract_channels=[[1, 0]])
    twin.load_state_dict(model.state_dict())
    real_only.load_state_dict(model.state_dict())
    h, w = model.size
    # a location that is faint on the left half and bright (|t| = 4) on the right half, in every channel
    loc = torch.zeros(1, h, w, 4)
    loc[:, :, w // 2 + 1 :] = 4.0
    for m in (model, twin, real_only):
        m.eval()
        m.decode = lambda z, y: D.Independent(D.Normal(loc.expand(len(z), -1, -1, -1), 1.0), 3)
        m.resid_fitted.fill_(True)  # unit white residuals (mean 0, no low-rank part, identity blocks)
        m.resid_amp.copy_(torch.tensor(AMPLITUDE_KNOTS).add(1.0).expand_as(m.resid_amp))  # amplitude 1 + brightness
        m.resid_amp_fitted.fill_(True)
    y, z = torch.zeros(4000, dtype=torch.long), torch.zeros(4000, model.latent_dim)
    torch.manual_seed(0)
    flat_noise = model.sample(y, mode="residual", z=z).std(0)  # (C, H, W) in data units
    torch.manual_seed(0)
    grown = twin.sample(y, mode="residual", z=z).std(0)
    scale = model.transform.scale
    faint, bright = (slice(None), slice(0, w // 2)), (slice(None), slice(w // 2 + 1, None))
    # the linear channel: scale x amplitude at brightness 0 (= 1) everywhere, bright pixels included
    torch.testing.assert_close(flat_noise[3][faint].mean(), scale[3], rtol=0.05, atol=0)
    torch.testing.assert_close(flat_noise[3][bright].mean(), scale[3], rtol=0.05, atol=0)
    # without it, the same channel's noise grows on the bright half (amplitude 5, and the asinh slope)
    assert grown[3][bright].mean() > 20 * grown[3][faint].mean()
    # the other channels are drawn as before
    torch.testing.assert_close(flat_noise[:3], grown[:3])
    # linear_noise_labels: only rows of those classes (here class 1) get it
    for label, expected in ((1, flat_noise), (0, grown)):
        torch.manual_seed(0)
        torch.testing.assert_close(real_only.sample(torch.full((4000,), label), mode="residual", z=z).std(0), expected)
    with pytest.raises(ValueError, match="linear_noise_channels"):
        ConditionalVAE(4, (21, 21), **TINY, subtract_channels=[[1, 0]], linear_noise_channels=[1])
    with pytest.raises(ValueError, match="linear_noise_channels"):
        ConditionalVAE(4, (21, 21), **TINY, linear_noise_channels=[4])
