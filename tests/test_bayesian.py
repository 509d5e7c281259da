"""seed-bnn and bayes-cnn: parameter count, ELBO objective, invariance, training through `fit`."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.models.bayesian import BayesRotInvCNN, SeedBNN, elbo_objective, group_transforms, rot90
from hits_stamps.models.flipout import Conv2dFlipout, LinearFlipout, kl_divergence, use_mean
from hits_stamps.models.registry import count_parameters, get_spec
from hits_stamps.training import TrainConfig, fit, load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_seed_bnn_has_242626_parameters_counted_as_tfp():
    spec = get_spec("seed-bnn")
    model = spec.builder(in_channels=4, size=(21, 21))
    assert model.count_parameters() == 242_626
    assert count_parameters(model) == 242_626
    # kernel loc + kernel scale + bias loc, layer by layer: 1764 -> 64 -> 64 -> 64 -> 2
    widths = [21 * 21 * 4, 64, 64, 64, 2]
    assert sum(2 * a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True)) == 242_626
    layers = [m for m in model.modules() if isinstance(m, LinearFlipout)]
    assert len(layers) == 4 and all(m.bias_rho is None for m in layers)  # deterministic biases


def test_seed_bnn_recipe_and_task():
    spec = get_spec("seed-bnn")
    assert spec.task == "bayesian-classifier"
    r = spec.recipe
    assert (r.optimizer, r.lr, r.batch_size, r.epochs) == ("adam", 1e-4, 64, 180)
    assert get_spec("bayes-cnn").task == "bayesian-classifier"


@pytest.mark.parametrize("shape", [(4, 21, 21), (3, 63, 63), (2, 16, 24)])
def test_seed_bnn_any_stamp_shape(shape):
    c, h, w = shape
    model = SeedBNN(in_channels=c, size=(h, w))
    assert model(torch.rand(5, c, h, w)).shape == (5, 2)


def test_elbo_objective_is_nll_plus_kl_over_n():
    torch.manual_seed(0)
    model = SeedBNN(in_channels=2, size=(6, 6))
    x, y = torch.rand(8, 2, 6, 6), torch.tensor([0, 1] * 4)
    torch.manual_seed(5)
    res = elbo_objective(model, x, y, n_train=1000)
    torch.manual_seed(5)
    logits = model(x)
    assert torch.equal(logits, res.logits)
    p = torch.softmax(logits, -1)
    t = F.one_hot(y, 2).float()
    keras_bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean().detach()  # over outputs, then batch
    kl = kl_divergence(model).detach()
    assert res.parts["nll"] == pytest.approx(float(keras_bce), rel=1e-5)
    assert res.parts["kl"] == pytest.approx(float(kl), rel=1e-6)
    assert float(res.loss.detach()) == pytest.approx(float(keras_bce) + float(kl) / 1000, rel=1e-5)
    res.loss.backward()
    assert model.hidden[0].weight_rho.grad.abs().sum() > 0


@pytest.mark.parametrize("bayesian", ["last", "head", "all"])
def test_bayes_cnn_every_sample_is_dihedral_invariant(bayesian):
    model = BayesRotInvCNN(widths=(4, 8), hidden=8, bayesian=bayesian, group="d4").eval()
    x = torch.rand(3, 4, 21, 21)
    views = [torch.rot90(x, 1, dims=(-2, -1)), torch.rot90(x, 2, dims=(-2, -1)), torch.flip(x, dims=(-1,))]
    torch.manual_seed(7)
    ref = model(x)
    for v in views:
        torch.manual_seed(7)
        assert torch.allclose(model(v), ref, atol=1e-5)
    torch.manual_seed(8)
    assert not torch.allclose(model(x), ref)  # but it does sample


def test_bayes_cnn_layers_and_mean_mode():
    all_b = BayesRotInvCNN(widths=(4, 8), hidden=8, bayesian="all")
    head = BayesRotInvCNN(widths=(4, 8), hidden=8, bayesian="head")
    last = BayesRotInvCNN(widths=(4, 8), hidden=8, bayesian="last")
    assert sum(isinstance(m, Conv2dFlipout) for m in all_b.modules()) == 2
    assert sum(isinstance(m, Conv2dFlipout) for m in head.modules()) == 0
    assert sum(isinstance(m, LinearFlipout) for m in head.modules()) == 2
    assert sum(isinstance(m, LinearFlipout) for m in last.modules()) == 1
    x = torch.rand(2, 4, 21, 21)
    all_b.eval()
    with use_mean(all_b):
        assert torch.equal(all_b(x), all_b(x))


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5])
def test_rot90_matches_torch(k):
    x = torch.rand(2, 3, 5, 5)
    assert torch.equal(rot90(x, k), torch.rot90(x, k, dims=(-2, -1)))


def test_group_transforms_and_errors():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    g = group_transforms(x, "c4")
    assert g.shape == (8, 1, 3, 3)
    assert torch.equal(g[2:4], torch.rot90(x, 1, dims=(-2, -1)))  # block 1 = rotation by 90 degrees
    assert group_transforms(x, "d4").shape == (16, 1, 3, 3)
    with pytest.raises(ValueError, match="needs square stamps; got 21x19"):
        BayesRotInvCNN(size=(21, 19))
    with pytest.raises(ValueError, match="group must be one of"):
        BayesRotInvCNN(group="c8")
    with pytest.raises(ValueError, match="bayesian must be"):
        BayesRotInvCNN(bayesian="some")
    with pytest.raises(ValueError, match="needs stamps of at least 8 pixels"):
        BayesRotInvCNN(size=(5, 5))
    assert BayesRotInvCNN(size=(21, 19), group="none", widths=(4,))(torch.rand(2, 4, 21, 19)).shape == (2, 2)


@pytest.mark.parametrize(
    "name, kwargs", [("seed-bnn", {}), ("bayes-cnn", {"widths": [4, 8], "hidden": 8, "group": "c4"})]
)
def test_train_through_the_shared_loop(tmp_path, name, kwargs):
    train = make_synthetic_stamps(96, seed=3)
    cfg = TrainConfig(model=name, epochs=1, batch_size=32, model_kwargs=kwargs, val_fraction=0.25)
    model = fit(cfg, train, tmp_path / name, progress=False)
    row = model.history[-1]
    assert {"nll", "kl", "loss", "val_loss"} <= set(row)
    assert row["loss"] == pytest.approx(row["nll"] + row["kl"] / 72, rel=1e-3)  # 72 training stamps
    again = load_model(tmp_path / name)
    assert again.spec.task == "bayesian-classifier"
    p1 = again.predict_proba(train, mc_samples=4, seed=1)
    p2 = again.predict_proba(train, mc_samples=4, seed=1)
    assert p1.shape == (96, 2) and np.allclose(p1.sum(1), 1, atol=1e-5)
    assert np.array_equal(p1, p2)
    assert not np.array_equal(p1, again.predict_proba(train, mc_samples=4, seed=2))
    cfg_json = json.loads((tmp_path / name / "config.json").read_text())
    if name == "seed-bnn":
        assert cfg_json["n_parameters"] == 242_626


def test_info_prints_tfp_parameter_count(tmp_path, capsys):
    from hits_stamps.cli import main

    fit(TrainConfig(model="seed-bnn", epochs=1), make_synthetic_stamps(40, seed=0), tmp_path / "m", progress=False)
    assert main(["info", str(tmp_path / "m")]) == 0
    assert "parameters: 242626" in capsys.readouterr().out


def _compare_samples(a: torch.Tensor, b: torch.Tensor, var_rtol: float) -> None:
    """Two sets of (n, B, K) draws: per-stamp means within 5 standard errors, variances within var_rtol."""
    a, b = a.double(), b.double()
    n = a.shape[0]
    se = torch.sqrt((a.var(0) + b.var(0)) / n)
    assert torch.all((a.mean(0) - b.mean(0)).abs() <= 5 * se + 1e-9)
    assert torch.allclose(a.var(0), b.var(0), rtol=var_rtol)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SeedBNN(in_channels=2, size=(6, 6), hidden=16),
        lambda: BayesRotInvCNN(widths=(4, 8), hidden=8, bayesian="head", group="c4"),
        lambda: BayesRotInvCNN(widths=(4, 8), hidden=8, bayesian="last", group="c4"),
    ],
)
def test_mc_logits_draw_from_the_forward_distribution(make):
    # n = 3000 draws: the standard error of a variance ratio is ~ sqrt(2 * 2 / n) = 3.7% for
    # Gaussian outputs (more for the ReLU network's skewed logits); allowed 20%.
    torch.manual_seed(0)
    model = make().eval()
    with torch.no_grad():
        for m in model.modules():  # larger posterior scales, so that the spread is visible
            if isinstance(m, LinearFlipout):
                m.weight_rho.fill_(-1.0)
        x = torch.rand(3, *((2, 6, 6) if isinstance(model, SeedBNN) else (4, 21, 21)))
        n = 3000
        torch.manual_seed(1)
        if isinstance(model, SeedBNN):
            loop = torch.stack([model(x) for _ in range(n)])  # (n, 3, 2)
        else:  # forward = out(relu(fc(pooled(x)))); the pooled features are deterministic
            z = model.pooled(x)
            torch.manual_seed(9)
            ref = model(x)
            torch.manual_seed(9)
            assert torch.equal(model.out(F.relu(model.fc(z))), ref)
            loop = torch.stack([model.out(F.relu(model.fc(z))) for _ in range(n)])
        torch.manual_seed(2)
        fast = model.mc_logits(x, n)
    assert fast.shape == (n, 3, 2)
    _compare_samples(loop, fast, 0.2)


def test_mc_logits_with_flipout_convolutions_is_the_forward_loop():
    model = BayesRotInvCNN(widths=(4, 8), hidden=8, bayesian="all", group="c4").eval()
    x = torch.rand(2, 4, 21, 21)
    with torch.no_grad():
        torch.manual_seed(3)
        loop = torch.stack([model(x) for _ in range(5)])
        torch.manual_seed(3)
        assert torch.equal(model.mc_logits(x, 5), loop)
