import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.errors import HitsStampsError
from hits_stamps.generation import generate
from hits_stamps.generation.posthoc import (
    AMPLITUDE_KNOTS,
    SAMPLING_FILE,
    PosthocConfig,
    SamplingModels,
    _fit_amplitude,
    brightness,
    fit_latent,
    fit_latent_codes,
    fit_residuals,
    fit_sampling,
    load_sampling,
    posterior_codes,
    residuals,
)
from hits_stamps.generation.sample import decode_stamps, fit_sampling_models, sampling_of
from hits_stamps.models.cvae import ConditionalVAE, CVAEConfig
from hits_stamps.training import TrainConfig, fit
from hits_stamps.training.modeldir import read_json, write_json

TINY = {"latent_dim": 3, "base_channels": 4, "hidden": 16}


def _fitted(**kw):
    model = ConditionalVAE(4, (21, 21), CVAEConfig(**{**TINY, "condition": "class", **kw}))
    x = torch.randn(16, 4, 21, 21) * 5 + 100
    return model.fit_input_stats(x).eval(), x


def _empty(k=2):
    return SamplingModels(condition_weight=torch.ones(k), condition_temperature=torch.ones(k))


def test_latent_mixture_fits_the_codes_of_each_condition_and_samples_from_them():
    model, x = _fitted()
    y = torch.tensor([0] * 8 + [1] * 8)
    with pytest.raises(ValueError, match="no latent mixture fitted"):
        _empty().sample_latent(y, 3, "aggregate")
    sm = _empty()
    sm.latent = fit_latent(model, x, y, PosthocConfig(components=1))
    assert sm.has_latent_mixture
    mu = model.encode(x, y)[0].detach().double()
    for k in (0, 1):
        codes = mu[y == k]
        np.testing.assert_allclose(sm.latent["latent_means"][k, 0].numpy(), codes.mean(0).numpy(), atol=1e-5)
        cov = torch.cov(codes.T, correction=0) + 1e-4 * torch.eye(3, dtype=torch.float64)  # sklearn's reg_covar
        tril = sm.latent["latent_tril"][k, 0].double()
        np.testing.assert_allclose((tril @ tril.T).numpy(), cov.numpy(), rtol=1e-4, atol=1e-6)
    # draws of condition 1 follow N(mean_1, cov_1), not the prior
    z = sm.sample_latent(torch.ones(20000, dtype=torch.long), 3, "aggregate", torch.Generator().manual_seed(0))
    mean1, tril1 = sm.latent["latent_means"][1, 0].double(), sm.latent["latent_tril"][1, 0].double()
    z = z.double()
    assert torch.allclose(z.mean(0), mean1, atol=4 * float(tril1.diagonal().max()) / math.sqrt(20000) + 1e-4)
    np.testing.assert_allclose(torch.cov(z.T).numpy(), (tril1 @ tril1.T).numpy(),
                               atol=0.05 * float((tril1 @ tril1.T).diagonal().max()))
    prior = sm.sample_latent(torch.ones(4, dtype=torch.long), 3, "prior", torch.Generator().manual_seed(3))
    torch.testing.assert_close(prior, torch.randn(4, 3, generator=torch.Generator().manual_seed(3),
                                                  dtype=torch.float64).float())
    with pytest.raises(ValueError, match="latent must be one of"):
        sm.sample_latent(y, 3, "posterior")
    with pytest.raises(ValueError, match="need components >= 1"):
        PosthocConfig(components=0)


def test_mixture_components_follow_the_number_of_codes_and_refit_from_codes():
    model, _ = _fitted()
    x = torch.randn(145, 4, 21, 21) * 5 + 100
    y = torch.tensor([0] * 45 + [1] * 100)
    cfg = PosthocConfig(components=4)
    latent = fit_latent(model, x, y, cfg)
    # condition 0 has 45 codes: at most 45 // 20 = 2 components, the others weigh 0; condition 1 has all 4
    assert cfg.codes_per_component == 20
    w = latent["latent_weights"]
    assert int((w[0] > 0).sum()) == 2 and int((w[1] > 0).sum()) == 4
    torch.testing.assert_close(w.sum(1), torch.ones(2))
    again = fit_latent_codes(posterior_codes(model, x, y), y, 2, cfg)
    assert all(torch.equal(again[k], latent[k]) for k in latent)
    with pytest.raises(ValueError, match="expected codes"):
        fit_latent_codes(torch.zeros(3, 2), y, 2, cfg)
    one = fit_latent_codes(posterior_codes(model, x[:1], y[:1]), y[:1], 2, cfg)  # a single code: unfitted
    assert not bool(one["latent_fitted"].any())


def test_residual_model_matches_the_standardised_residual_moments_and_draws_correlated_noise():
    model, x = _fitted()
    x = x + 3 * torch.randn_like(x)
    y = torch.tensor([0] * 6 + [1] * 10)
    with pytest.raises(ValueError, match="no residual model fitted"):
        _empty().residual_draw(y, torch.zeros(16, 21, 21, 4))
    resid = fit_residuals(model, x, y, PosthocConfig(noise_rank=20))
    sm = _empty()
    sm.residual = resid
    assert sm.has_residual_model
    with torch.no_grad():
        t = model.to_model_units(x)
        dist = model.decode(model.encode(x, y)[0], y)
        r = t.permute(0, 2, 3, 1) - dist.mean  # (16, H, W, C)
        r = torch.linalg.solve_triangular(model.pixel_tril(dist), r.unsqueeze(-1), upper=False).squeeze(-1)
        r = r / sm.residual_amplitude(y, brightness(dist.mean))  # standardised by pixel scale and amplitude
    torch.testing.assert_close(residuals(model, x, y, resid["resid_amp"]), r)
    r = r.flatten(1).double()  # (16, P)
    for k in (0, 1):
        rk = r[y == k]
        np.testing.assert_allclose(resid["resid_mean"][k].numpy(), rk.mean(0).numpy(), atol=1e-5)
        # rank 20 >= N_k - 1: the low-rank part is the whole sample covariance, so the diagonal is the floor
        f = resid["resid_factor"][k].double()
        np.testing.assert_allclose((f @ f.T).numpy(), torch.cov(rk.T).numpy(), atol=1e-4)
        assert float(resid["resid_tril"][k].abs().max()) < 1e-3
    # draws: mean residual + correlated noise with the fitted per-pixel variance
    torch.manual_seed(0)
    draws = sm.residual_draw(torch.ones(2000, dtype=torch.long), torch.zeros(2000, 21, 21, 4)).flatten(1).double()
    blocks = resid["resid_tril"][1].double() @ resid["resid_tril"][1].double().transpose(1, 2)  # (H W, C, C)
    var = (resid["resid_factor"][1].double() ** 2).sum(1) + torch.diagonal(blocks, dim1=1, dim2=2).reshape(-1)
    np.testing.assert_allclose(draws.mean(0).numpy(), resid["resid_mean"][1].numpy(),
                               atol=5 * float(var.max().sqrt()) / math.sqrt(2000))
    np.testing.assert_allclose(draws.var(0).numpy(), var.numpy(), rtol=0.2, atol=1e-6)


def test_amplitude_interpolates_between_knots_and_is_constant_beyond():
    nb = len(AMPLITUDE_KNOTS)
    sm = _empty()
    amp = torch.ones(2, 4, nb)
    amp[1] = torch.arange(nb, dtype=torch.float32).repeat(4, 1) + torch.arange(4.0)[:, None] * 10
    sm.residual = {"resid_amp": amp}
    k = torch.ones(3, dtype=torch.long)
    knots = torch.tensor(AMPLITUDE_KNOTS)
    b = torch.stack([knots[2].expand(21, 21), ((knots[3] + knots[4]) / 2).expand(21, 21),
                     torch.full((21, 21), 50.0)])  # (3, H, W): a knot, half way between two, beyond the last
    a = sm.residual_amplitude(k, b[..., None].expand(-1, -1, -1, 4))  # (3, H, W, C)
    torch.testing.assert_close(a[0, 5, 5], torch.tensor([2.0, 12.0, 22.0, 32.0]))
    torch.testing.assert_close(a[1, 0, 0], torch.tensor([3.5, 13.5, 23.5, 33.5]))
    torch.testing.assert_close(a[2, 20, 20], torch.tensor([8.0, 18.0, 28.0, 38.0]))
    loc = torch.zeros(1, 21, 21, 4)
    loc[0, 10, 10] = torch.tensor([0.5, -2.0, 1.0, 7.0])
    bright = brightness(loc)  # the largest |loc| over the channels, for every channel
    assert float(bright[0, 0, 0].abs().max()) == 0.0
    torch.testing.assert_close(bright[0, 10, 10], torch.tensor([7.0] * 4))


def test_fitted_amplitude_grows_with_brightness():
    torch.manual_seed(0)
    n = 400
    # residuals whose spread grows with the location's brightness: |loc| 0.1 in one half, 3 in the other
    b = torch.zeros(n, 21, 21, 4)
    b[:, :, 11:] = 3.0
    b[:, :, :10] = 0.1
    r = torch.randn(n, 21, 21, 4) * torch.where(b > 1, 2.0, 0.5)
    y = torch.ones(n, dtype=torch.long)
    amp = _fit_amplitude(r, b, y, 2)
    knots = list(AMPLITUDE_KNOTS)
    np.testing.assert_allclose(amp[1][:, knots.index(3.0)].numpy(), 2.0, rtol=0.05)
    np.testing.assert_allclose(amp[1][:, 0].numpy(), 0.5, rtol=0.05)
    assert bool((amp[0] == 1).all())  # condition 0 had no stamps: left at 1
    sm = _empty()
    sm.residual = {"resid_amp": amp}
    e = r / sm.residual_amplitude(y, b)  # standardised by the amplitude: unit spread in both halves
    np.testing.assert_allclose([float(e[:, :, 12:].std()), float(e[:, :, :9].std())], 1.0, rtol=0.05)


def test_decoded_stamps_add_the_scaled_residual_draw_and_the_condition_temperature():
    model, x = _fitted()
    y = torch.tensor([0, 1] * 8)
    sm = fit_sampling(model, x, y, PosthocConfig(components=1, noise_rank=8))
    z, yy = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    torch.manual_seed(5)
    got = decode_stamps(model, sm, yy, z, "residual")
    torch.manual_seed(5)
    with torch.no_grad():
        d = model.decode(z, yy)
        e = sm.residual_draw(yy, d.mean) * sm.residual_amplitude(yy, brightness(d.mean))
        t = d.mean + (model.pixel_tril(d) @ e.unsqueeze(-1)).squeeze(-1)
        expected = model.to_data_units(t.permute(0, 3, 1, 2))
    torch.testing.assert_close(got, expected)
    for mode in ("sample", "residual"):
        def draw(temperature=1.0, mode=mode):
            torch.manual_seed(3)
            return decode_stamps(model, sm, yy, z, mode, temperature)

        full, half, quarter = draw(), draw(0.5), draw(0.25)
        sm.condition_temperature[1] = 0.5  # condition 1 only
        mixed = draw()
        torch.testing.assert_close(mixed[yy == 0], full[yy == 0])
        torch.testing.assert_close(mixed[yy == 1], half[yy == 1])
        torch.testing.assert_close(draw(0.5)[yy == 1], quarter[yy == 1])  # the two temperatures multiply
        sm.condition_temperature.fill_(1.0)
    loc = decode_stamps(model, sm, yy, z, "loc")
    torch.testing.assert_close(loc, model.to_data_units(model.decode(z, yy).mean.permute(0, 3, 1, 2)).detach())
    with pytest.raises(ValueError, match="mode must be one of"):
        decode_stamps(model, sm, yy, z, "mean")


def test_draw_conditions_with_the_training_frequencies_of_the_kinds():
    kinds, labels = ["bad_column", "cosmic_ray", "sn", "variable"], [0, 0, 1, 1]
    model = ConditionalVAE(4, (21, 21), CVAEConfig(**TINY, condition="kind", kinds=kinds, kind_labels=labels))
    y = torch.tensor([0] * 1 + [1] * 3 + [2] * 5)
    sm = fit_sampling(model.fit_input_stats(torch.randn(9, 4, 21, 21)), torch.randn(9, 4, 21, 21), y)
    assert sm.condition_weight.tolist() == [1.0, 3.0, 5.0, 0.0]
    g = torch.Generator().manual_seed(0)
    drawn = sm.draw_conditions(model, 0, 4000, generator=g)
    assert set(drawn.tolist()) == {0, 1} and abs(float((drawn == 1).float().mean()) - 0.75) < 0.03
    assert set(sm.draw_conditions(model, 1, 50, generator=g).tolist()) == {2}  # variable has weight 0
    assert sm.draw_conditions(model, 0, 3, kind="cosmic_ray").tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="not a kind of class 1"):
        sm.draw_conditions(model, 1, 3, kind="cosmic_ray")
    plain, _ = _fitted()
    assert _empty().draw_conditions(plain, 1, 3).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="class only"):
        _empty().draw_conditions(plain, 1, 3, kind="sn")


@pytest.fixture(scope="module")
def cvae_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("posthoc") / "cvae"
    toy = make_synthetic_stamps(96, seed=3)
    fit(TrainConfig(model="cvae", epochs=1, batch_size=32, seed=5, model_kwargs={**TINY, "condition": "class"}),
        toy, out, progress=False)
    return out


def test_sampling_file_round_trips_and_refits_in_memory_or_on_disk(cvae_dir, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(cvae_dir, model_dir)
    tm = fit_sampling_models(model_dir, make_synthetic_stamps(96, seed=3), components=2, save=False)
    in_memory = sampling_of(tm)
    assert int((in_memory.latent["latent_weights"] > 0).sum(1).max()) <= 2
    a = generate(tm, 5, "bogus", seed=3, consistent=False)  # the refit applies to the loaded model
    on_disk = load_sampling(model_dir, tm.module)
    assert on_disk.latent["latent_weights"].shape[1] == 100  # not saved: the file keeps the loop's fit
    assert not np.array_equal(a.images, generate(model_dir, 5, "bogus", seed=3, consistent=False).images)
    in_memory.save(model_dir)
    back = load_sampling(model_dir, tm.module)
    for name in (*in_memory.latent, *in_memory.residual):
        assert torch.equal({**back.latent, **back.residual}[name], {**in_memory.latent, **in_memory.residual}[name])
    np.testing.assert_array_equal(generate(model_dir, 5, "bogus", seed=3, consistent=False).images, a.images)
    other = ConditionalVAE(4, (21, 21), CVAEConfig(**TINY, condition="kind", kinds=["a", "b", "c"],
                                                   kind_labels=[0, 0, 1]))
    with pytest.raises(ValueError, match="one row per condition of the generator"):
        load_sampling(model_dir, other)


def _as_older_directory(model_dir, residual_units="location"):
    """Rewrite a model directory as the cvae wrote it before its sampling models moved out of its weights."""
    sampling = load_file(model_dir / SAMPLING_FILE)
    weights = load_file(model_dir / "model.safetensors")
    save_file({**weights, **sampling, "train_steps": torch.tensor(6), "resid_amp_fitted": torch.tensor(True),
               "resid_standardized": torch.tensor(residual_units != "model")}, model_dir / "model.safetensors")
    (model_dir / SAMPLING_FILE).unlink()
    config = read_json(model_dir / "config.json")
    config["model_kwargs"].update({"decoder_scale": "global", "latent_components": 100,
                                   "residual_units": residual_units})
    for key in ("max_channels", "min_size", "asinh_softening", "min_scale"):
        config["model_kwargs"].pop(key)
    write_json(model_dir / "config.json", config)


def test_older_model_directories_still_generate_the_same_stamps(cvae_dir, tmp_path):
    older = tmp_path / "older"
    shutil.copytree(cvae_dir, older)
    _as_older_directory(older)
    for kw in ({}, {"mode": "sample", "latent": "prior"}, {"mode": "loc"}):
        np.testing.assert_array_equal(generate(older, 6, "real", seed=2, **kw).images,
                                      generate(cvae_dir, 6, "real", seed=2, **kw).images)
    model_units = tmp_path / "model_units"
    shutil.copytree(cvae_dir, model_units)
    _as_older_directory(model_units, residual_units="model")
    with pytest.raises(HitsStampsError, match="residual_units='model'.*refit it with .*fit_sampling_models"):
        generate(model_units, 2, "real")
    fit_sampling_models(model_units, make_synthetic_stamps(96, seed=3))  # the refit writes the new file
    assert generate(model_units, 2, "real").meta["mode"] == "residual"


def test_recipe_cvae_trains_and_samples_as_before_the_sampling_models_moved(cvae_dir):
    """Pinned on the code before the refactor (commit c67f739, same command): weights and stamps agree to float
    rounding, so the refactor changed no number of the recipe's cvae."""
    from hits_stamps.training.modeldir import load_model

    tm = load_model(cvae_dir)
    w = sum(float(p.detach().double().abs().sum()) for p in tm.module.parameters())
    assert w == pytest.approx(1802.1166700113326, rel=1e-5)
    g = generate(tm, 16, "real", seed=11, consistent=False).images.astype(np.float64)
    np.testing.assert_allclose(g.mean(axis=(0, 1, 2)), [0.18201754526488584, 0.7923613564637141, 0.6103521606413956,
                                                        0.431583397399028], rtol=1e-4)
    np.testing.assert_allclose(g.std(axis=(0, 1, 2)), [1.4272287234754513, 3.4584450313819017, 2.8325773873885183,
                                                       2.002926911726564], rtol=1e-4)
    s = generate(tm, 16, "bogus", seed=12, consistent=False, mode="sample", latent="prior").images.astype(np.float64)
    np.testing.assert_allclose(s.mean(axis=(0, 1, 2)), [2.0224635802465967, 2.005119269956621, -0.7897149013844266,
                                                        -1.134201492268176], rtol=1e-4)
