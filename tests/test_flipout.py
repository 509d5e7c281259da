"""Flipout layers: KL against the closed form, moments against plain reparameterisation, gradients,
seeded sampling, the posterior-mean mode and tied signs."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from hits_stamps.models.flipout import (
    Conv2dFlipout,
    LinearFlipout,
    flipout_layers,
    gaussian_kl,
    is_bayesian,
    rademacher,
    set_mean_mode,
    use_mean,
)
from hits_stamps.models.flipout import (
    kl_divergence as model_kl,
)


def _set_params(layer, scale_lo=0.2, scale_hi=0.8, seed=0):
    """Give a layer distinct, non-trivial locs and scales (scale in [lo, hi])."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight_loc.copy_(torch.randn(layer.weight_loc.shape, generator=g))
        scale = scale_lo + (scale_hi - scale_lo) * torch.rand(layer.weight_rho.shape, generator=g)
        layer.weight_rho.copy_(torch.log(torch.expm1(scale)))  # inverse softplus
        if layer.bias_loc is not None:
            layer.bias_loc.copy_(torch.randn(layer.bias_loc.shape, generator=g))
        if layer.bias_rho is not None:
            b_scale = scale_lo + (scale_hi - scale_lo) * torch.rand(layer.bias_rho.shape, generator=g)
            layer.bias_rho.copy_(torch.log(torch.expm1(b_scale)))


@pytest.mark.parametrize("prior_std", [1.0, 0.3])
@pytest.mark.parametrize("bayesian_bias", [False, True])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_kl_equals_closed_form(prior_std, bayesian_bias, kind):
    layer = (
        LinearFlipout(7, 5, prior_std=prior_std, bayesian_bias=bayesian_bias)
        if kind == "linear"
        else Conv2dFlipout(3, 4, 3, prior_std=prior_std, bayesian_bias=bayesian_bias)
    )
    _set_params(layer)
    prior = Normal(0.0, prior_std)
    expected = kl_divergence(Normal(layer.weight_loc, layer.weight_scale), prior).sum()
    if bayesian_bias:
        expected = expected + kl_divergence(Normal(layer.bias_loc, layer.bias_scale), prior).sum()
    assert torch.allclose(layer.kl(), expected, rtol=1e-5)
    assert torch.allclose(model_kl(torch.nn.Sequential(layer)), expected, rtol=1e-5)


def test_kl_scalar_by_hand():
    # KL(N(0.5, 0.2^2) || N(0, 2^2)) = log(2/0.2) + (0.04 + 0.25) / 8 - 1/2
    kl = gaussian_kl(torch.tensor([0.5]), torch.tensor([0.2]), 2.0)
    assert float(kl) == pytest.approx(math.log(10.0) + 0.29 / 8 - 0.5, rel=1e-6)
    # q == p gives zero
    assert float(gaussian_kl(torch.zeros(4), torch.full((4,), 2.0), 2.0)) == pytest.approx(0.0, abs=1e-6)


def test_kl_of_model_sums_layers_and_is_zero_without_flipout():
    a, b = LinearFlipout(4, 3), LinearFlipout(3, 2)
    net = torch.nn.Sequential(a, torch.nn.ReLU(), b, torch.nn.Linear(2, 2))
    assert torch.allclose(model_kl(net), a.kl() + b.kl())
    assert float(model_kl(torch.nn.Linear(3, 2))) == 0.0
    assert is_bayesian(net) and not is_bayesian(torch.nn.Linear(3, 2))
    assert flipout_layers(net) == [a, b]


@pytest.fixture
def one_thread():
    """Tiny ops run ~50x faster on one thread when the machine's cores are busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Moments. Every draw is a separate forward call, so draws are independent. With n draws the
# standard error of a variance estimate is var * sqrt(2 / n) (Gaussian outputs): 1.6% for the
# dense test (n = 8,000; allowed 8%), 2.2% for the conv test (n = 4,000; allowed 12%), i.e. 5
# standard errors or more. Means are allowed 5 standard errors, sqrt(var / n).


def _check_moments(draws: torch.Tensor, mean_cf: torch.Tensor, var_cf: torch.Tensor, rtol: float) -> None:
    d = draws.double()
    n = d.shape[0]
    m, v = d.mean(0), d.var(0)
    assert torch.all((m - mean_cf).abs() <= 5 * torch.sqrt(var_cf / n) + 1e-9), (m, mean_cf)
    assert torch.allclose(v, var_cf, rtol=rtol), (v, var_cf)


def test_linear_flipout_moments_match_reparameterisation(one_thread):
    torch.manual_seed(0)
    n = 8_000
    layer = LinearFlipout(6, 3, bayesian_bias=True)
    _set_params(layer)
    x = torch.randn(4, 6)  # 4 different examples in one batch
    mean_cf = F.linear(x, layer.weight_loc, layer.bias_loc).detach().double()  # (4, 3)
    var_cf = (F.linear(x.square(), layer.weight_scale.square()) + layer.bias_scale.square()).detach().double()
    with torch.no_grad():
        flip = torch.stack([layer(x) for _ in range(n)])  # (n, 4, 3)
        # plain reparameterisation: an independent weight sample per draw
        w = layer.weight_loc + layer.weight_scale * torch.randn(n, 3, 6)  # (n, 3, 6)
        b = layer.bias_loc + layer.bias_scale * torch.randn(n, 3)
        reparam = torch.einsum("noi,bi->nbo", w, x) + b[:, None, :]  # (n, 4, 3)
    _check_moments(flip, mean_cf, var_cf, 0.08)
    _check_moments(reparam, mean_cf, var_cf, 0.08)


def test_conv_flipout_moments_match_closed_form(one_thread):
    torch.manual_seed(1)
    n = 4_000
    layer = Conv2dFlipout(2, 3, 3)
    _set_params(layer, 0.1, 0.5)
    x = torch.randn(2, 2, 5, 5)
    # plain reparameterisation of a conv: mean conv(x, loc) + b, variance conv(x^2, scale^2)
    mean_cf = F.conv2d(x, layer.weight_loc, layer.bias_loc).detach().double()  # (2, 3, 3, 3)
    var_cf = F.conv2d(x.square(), layer.weight_scale.square()).detach().double()
    with torch.no_grad():
        draws = torch.stack([layer(x) for _ in range(n)])  # (n, 2, 3, 3, 3)
    _check_moments(draws, mean_cf, var_cf, 0.12)


def test_flipout_decorrelates_examples_within_a_batch(one_thread):
    # two copies of the same example in one batch: their perturbations are uncorrelated under
    # Flipout (independent signs), fully correlated without it (|corr| of the noise ~ 1)
    torch.manual_seed(2)
    layer = LinearFlipout(8, 1, bias=False)
    _set_params(layer)
    x = torch.randn(1, 8).repeat(2, 1)
    with torch.no_grad():
        out = torch.stack([layer(x)[:, 0] for _ in range(4000)])  # (n, 2)
        tied = torch.stack([layer(x, n_tied=2)[:, 0] for _ in range(400)])
    noise = out - out.mean(0)
    corr = float((noise[:, 0] * noise[:, 1]).mean() / noise.std(0).prod())
    assert abs(corr) < 0.1
    assert torch.equal(tied[:, 0], tied[:, 1])


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_gradients_reach_loc_and_scale(kind):
    torch.manual_seed(3)
    if kind == "linear":
        layer, x = LinearFlipout(5, 4, bayesian_bias=True), torch.randn(6, 5)
    else:
        layer, x = Conv2dFlipout(2, 3, 3, bayesian_bias=True), torch.randn(6, 2, 7, 7)
    loss = layer(x).square().mean() + 1e-3 * layer.kl()
    loss.backward()
    for p in (layer.weight_loc, layer.weight_rho, layer.bias_loc, layer.bias_rho):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    # the likelihood alone also moves the scales (through the sampled perturbation)
    layer.zero_grad()
    layer(x).square().mean().backward()
    assert layer.weight_rho.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_sampling_is_seeded_and_happens_in_train_and_eval(mode):
    layer = LinearFlipout(5, 3)
    getattr(layer, mode)()
    x = torch.randn(4, 5)
    torch.manual_seed(11)
    a = layer(x)
    b = layer(x)
    torch.manual_seed(11)
    a2 = layer(x)
    torch.manual_seed(12)
    c = layer(x)
    assert torch.equal(a, a2)
    assert not torch.equal(a, b)
    assert not torch.equal(a, c)


def test_use_mean_runs_the_mean_network_and_restores():
    conv = Conv2dFlipout(2, 3, 3, padding=1)
    lin = LinearFlipout(3 * 4 * 4, 2)
    net = torch.nn.Sequential(conv, torch.nn.Flatten(), lin)
    x = torch.randn(3, 2, 4, 4)
    expected = F.linear(F.conv2d(x, conv.weight_loc, conv.bias_loc, padding=1).flatten(1), lin.weight_loc,
                        lin.bias_loc)
    with use_mean(net) as m:
        assert m is net
        out1, out2 = net(x), net(x)
    assert torch.equal(out1, out2)
    assert torch.allclose(out1, expected, atol=1e-6)
    assert not torch.equal(net(x), net(x))  # sampling again after the block
    with pytest.raises(RuntimeError, match="boom"), use_mean(net):
        raise RuntimeError("boom")
    assert not conv.mean_mode and not lin.mean_mode
    set_mean_mode(net, True)
    assert torch.equal(net(x), net(x))
    set_mean_mode(net, False)
    assert not torch.equal(net(x), net(x))


def test_rademacher_values():
    torch.manual_seed(0)
    s = rademacher((20_000,), torch.zeros(1))
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(s.mean())) < 0.05


def test_parameter_count_and_tfp_initialisation():
    layer = LinearFlipout(1764, 64)
    assert layer.count_parameters() == 2 * 1764 * 64 + 64
    assert float(layer.weight_loc.detach().std()) == pytest.approx(0.1, rel=0.05)
    assert float(layer.weight_scale.detach().mean()) == pytest.approx(math.log1p(math.exp(-3.0)), rel=0.05)


def test_errors():
    with pytest.raises(ValueError, match="prior_std must be > 0"):
        LinearFlipout(3, 2, prior_std=0.0)
    with pytest.raises(ValueError, match="bayesian_bias=True needs bias=True"):
        LinearFlipout(3, 2, bias=False, bayesian_bias=True)
    with pytest.raises(ValueError, match=r"LinearFlipout expects \(B, 3\); got \(2, 4\)"):
        LinearFlipout(3, 2)(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"Conv2dFlipout expects \(B, 2, H, W\)"):
        Conv2dFlipout(2, 2, 3)(torch.zeros(1, 3, 5, 5))
    with pytest.raises(ValueError, match="n_tied=2"):
        LinearFlipout(3, 2)(torch.zeros(3, 3), n_tied=2)


def test_fused_kl_gradients_match_autograd():
    from hits_stamps.models.flipout import softplus_gaussian_kl

    torch.manual_seed(4)
    loc = torch.randn(30, dtype=torch.float64, requires_grad=True)
    rho = (torch.randn(30, dtype=torch.float64) - 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: softplus_gaussian_kl(a, b, 0.7), (loc, rho))
    ref = gaussian_kl(loc, F.softplus(rho) + torch.finfo(torch.float32).eps, 0.7)
    ref_grads = torch.autograd.grad(ref, (loc, rho))
    got = softplus_gaussian_kl(loc, rho, 0.7)
    assert torch.allclose(got, ref)
    for g, r in zip(torch.autograd.grad(got, (loc, rho)), ref_grads, strict=True):
        assert torch.allclose(g, r)


def test_local_samples_have_the_flipout_moments(one_thread):
    torch.manual_seed(5)
    layer = LinearFlipout(6, 3, bayesian_bias=True)
    _set_params(layer)
    x = torch.randn(4, 6)
    mean, var = layer.moments(x)
    n = 16_000
    with torch.no_grad():
        draws = layer.sample_local(x.repeat(n, 1)).view(n, 4, 3)  # rows are independent draws
    _check_moments(draws, mean.detach().double(), var.detach().double(), 0.06)
    with use_mean(layer):
        assert torch.equal(layer.sample_local(x), mean)
        assert float(layer.moments(x)[1].abs().sum()) == 0.0
