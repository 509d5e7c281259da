"""The classifier zoo: exact seed architecture, shapes for other stamp sizes, invariances, losses."""

import pytest
import torch
import torch.nn.functional as F

from hits_stamps.models.cnn import (
    DeepHiTS,
    RotInvCNN,
    SeedCNN,
    cross_entropy_with_entropy_penalty,
    forward_flops,
    input_transform,
    keras_binary_crossentropy,
    keras_same_pad_2x2,
    max_pool_2x2,
    minmax_scale,
    robust_asinh,
    symmetry_copies,
)
from hits_stamps.models.registry import count_parameters, get_spec

CLASSIFIERS = ["seed-cnn", "deephits", "rotinv-cnn"]


def test_seed_cnn_has_exactly_63042_parameters():
    assert count_parameters(get_spec("seed-cnn").builder(4, (21, 21))) == 63042


def test_seed_cnn_flops_match_hand_count():
    # conv: 2 * out_elements * (2*2*C_in); dense: 2 * out * in. On odd-sized maps (21, 5) the conv
    # computes one row and column fewer than Keras' 'same' output: the 2x2 pool never reads them.
    expected = (2 * 64 * 20 * 20 * 16 + 2 * 64 * 10 * 10 * 256 + 2 * 64 * 4 * 4 * 256 + 2 * 64 * 2 * 2 * 256
                + 3 * 2 * 64 * 64 + 2 * 2 * 64)
    assert forward_flops(SeedCNN(4, (21, 21)), 4, (21, 21)) == expected


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("channels,size", [(4, 21), (3, 63)])
def test_shapes_for_other_sizes_and_channels(name, channels, size):
    torch.manual_seed(0)
    model = get_spec(name).builder(in_channels=channels, size=(size, size)).eval()
    x = torch.randn(3, channels, size, size)
    assert model(x).shape == (3, 2)
    assert model.features(x).shape == (3, 64)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_blocked_inference_equals_one_pass(name):
    torch.manual_seed(0)
    model = get_spec(name).builder(4, (21, 21)).eval()
    x = torch.randn(70, 4, 21, 21)
    with torch.no_grad():
        model.inference_chunk = 16  # 70 stamps -> 5 blocks
        blocked, blocked_f = model(x), model.features(x)
        model.inference_chunk = 1000
        assert torch.allclose(blocked, model(x), atol=1e-5)
        assert torch.allclose(blocked_f, model.features(x), atol=1e-5)


def test_seed_cnn_recipe_is_the_seeds():
    r = get_spec("seed-cnn").recipe
    assert (r.optimizer, r.lr, r.rmsprop_alpha, r.eps, r.batch_size, r.epochs) == ("rmsprop", 1e-3, 0.9, 1e-7, 50, 15)


def test_keras_same_padding_pads_right_and_bottom():
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    conv = torch.nn.Conv2d(1, 1, 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0  # picks the pixel below-right of each output position
    y = conv(keras_same_pad_2x2(x))[0, 0]
    assert y.shape == (3, 3)
    assert torch.equal(y, torch.tensor([[4.0, 5.0, 0.0], [7.0, 8.0, 0.0], [0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("size", [(21, 21), (20, 20), (63, 63), (21, 18)])
def test_seed_cnn_matches_the_plain_keras_layer_sequence(size):
    """The optimised forward (padding only where the pool keeps it, ReLU after the pool) is exact."""
    torch.manual_seed(0)
    model = SeedCNN(3, size).eval()
    x = torch.randn(4, 3, *size)
    z = x
    for conv in model.convs:
        z = F.max_pool2d(F.relu(conv(keras_same_pad_2x2(z))), 2)
    z = z.permute(0, 2, 3, 1).flatten(1)
    for layer in model.dense:
        z = torch.sigmoid(layer(z))
    with torch.no_grad():
        assert torch.allclose(model(x), model.out(z), atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 21, 21), (2, 3, 10, 7)])
def test_max_pool_2x2_equals_torch_pooling_with_and_without_autograd(shape):
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(max_pool_2x2(x), F.max_pool2d(x, 2))
    xg = x.clone().requires_grad_()
    max_pool_2x2(xg).sum().backward()
    assert xg.grad.sum() == shape[0] * shape[1] * (shape[2] // 2) * (shape[3] // 2)


def test_keras_binary_crossentropy_formula_and_equivalence_to_ce():
    logits = torch.tensor([[2.0, -1.0], [0.3, 0.1], [-4.0, 5.0]])
    y = torch.tensor([0, 1, 1])
    eps = 1e-7
    p = torch.softmax(logits, -1).clamp(eps, 1 - eps)
    t = F.one_hot(y, 2).float()
    by_hand = -(t * (p + eps).log() + (1 - t) * (1 - p + eps).log()).mean()
    assert torch.allclose(keras_binary_crossentropy(logits, y), by_hand, atol=1e-6)
    assert torch.allclose(keras_binary_crossentropy(logits, y), F.cross_entropy(logits, y), atol=1e-5)
    # the Keras clip: an extreme wrong answer costs about -log(2e-7), not infinity
    huge = keras_binary_crossentropy(torch.tensor([[100.0, -100.0]]), torch.tensor([1]))
    assert 15.0 < float(huge) < -torch.log(torch.tensor(eps))


def test_entropy_penalty_formula():
    logits = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 1])
    loss, ce, ent = cross_entropy_with_entropy_penalty(logits, y, entropy_weight=0.5)
    p = torch.softmax(logits, -1)
    h = -(p * p.log()).sum(-1).mean()
    assert torch.allclose(ent, h) and torch.allclose(ce, F.cross_entropy(logits, y))
    assert torch.allclose(loss, ce - 0.5 * h)


@pytest.mark.parametrize("group", ["c4", "d4"])
def test_rotinv_cnn_is_invariant_to_its_group(group):
    torch.manual_seed(0)
    model = RotInvCNN(4, (21, 21), group=group).eval()
    x = torch.randn(5, 4, 21, 21)
    with torch.no_grad():
        ref = model(x)
        for k in (1, 2, 3):
            assert torch.allclose(model(torch.rot90(x, k, dims=(-2, -1))), ref, atol=1e-5)
        flipped = model(torch.flip(x, dims=(-1,)))
    if group == "d4":
        assert torch.allclose(flipped, ref, atol=1e-5)
    else:  # rotations only: a mirror image is a different input
        assert not torch.allclose(flipped, ref, atol=1e-4)


def test_rotinv_cnn_with_in_network_scaling_is_invariant_to_raw_pixels():
    torch.manual_seed(0)
    model = RotInvCNN(4, (21, 21), input_norm="robust_asinh").eval()
    x = 300 + 40 * torch.randn(3, 4, 21, 21)  # raw ADU-like values
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(model(torch.rot90(x, 3, dims=(-2, -1)).flip(-2)), ref, atol=1e-5)
    with pytest.raises(ValueError, match="input_norm"):
        RotInvCNN(4, (21, 21), input_norm="zscore")


def test_in_network_minmax_matches_the_preprocessor():
    import numpy as np

    from hits_stamps.preprocess import scale

    x = 200 + 30 * torch.randn(3, 4, 21, 21)
    x[0, 1] = 5.0  # a flat channel becomes 0, as in the preprocessor
    ref = scale(x.permute(0, 2, 3, 1).numpy(), "minmax").transpose(0, 3, 1, 2)
    assert np.allclose(minmax_scale(x).numpy(), ref, atol=1e-6)
    both = input_transform(x, "minmax+robust_asinh")
    assert both.shape == (3, 8, 21, 21) and torch.equal(both[:, 4:], robust_asinh(x))
    with pytest.raises(ValueError, match="input_norm"):
        input_transform(x, "zscore")


def test_robust_asinh_formula():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0]).reshape(1, 1, 1, 5)
    # median 3, MAD median(|x - 3|) = median(2, 1, 0, 1, 97) = 1
    expected = torch.asinh((x - 3.0) / 1.4826)
    assert torch.allclose(robust_asinh(x), expected)


def test_rotinv_cnn_invariance_holds_in_training_mode_batch_norm():
    torch.manual_seed(0)
    model = RotInvCNN(4, (21, 21), dropout=0.0).train()
    x = torch.randn(6, 4, 21, 21)
    assert torch.allclose(model(torch.rot90(x, 1, dims=(-2, -1))), model(x), atol=1e-5)


def test_deephits_sees_four_rotations_but_is_not_invariant():
    torch.manual_seed(0)
    model = DeepHiTS(4, (21, 21)).eval()
    assert model.flat_dim == 4 * 64 * 6 * 6  # 21 -> pad 27 -> 24 -> 12 -> 6, four copies
    x = torch.randn(2, 4, 21, 21)
    with torch.no_grad():
        assert not torch.allclose(model(torch.rot90(x, 1, dims=(-2, -1))), model(x), atol=1e-4)


def test_symmetry_copies():
    x = torch.randn(2, 1, 5, 5)
    d4 = symmetry_copies(x, "d4")
    assert d4.shape == (8, 2, 1, 5, 5)
    assert torch.equal(d4[1], torch.rot90(x, 1, dims=(-2, -1)))
    assert torch.equal(d4[4], torch.flip(x, dims=(-1,)))
    with pytest.raises(ValueError, match="group must be"):
        symmetry_copies(x, "c8")


@pytest.mark.parametrize("name", ["deephits", "rotinv-cnn"])
def test_rotation_models_refuse_non_square_stamps(name):
    with pytest.raises(ValueError, match="square"):
        get_spec(name).builder(4, (21, 25))


def test_seed_cnn_refuses_too_small_stamps():
    with pytest.raises(ValueError, match="at least 16x16"):
        SeedCNN(4, (8, 8))
