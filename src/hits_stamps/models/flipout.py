"""Flipout layers: mean-field Gaussian variational layers (Wen et al. 2018, arXiv:1803.04386).

Posterior over each weight w: q(w) = N(loc, scale^2) with scale = softplus(rho) + eps (float32
machine epsilon, as TensorFlow Probability's `default_loc_scale_fn`). Prior p(w) = N(0, prior_std^2).
The bias is a deterministic point estimate by default (TFP's DenseFlipout: `bias_posterior_fn` is
singular); `bayesian_bias=True` gives it a Gaussian posterior too.

Flipout estimator. One perturbation dW = scale * eps, eps ~ N(0, I), is drawn per forward call and
decorrelated across the examples of the batch by independent Rademacher sign vectors:

    y_b = x_b W_loc^T + ((x_b * s_in_b) dW^T) * s_out_b + bias

For each example b the effective weight W_loc + dW * (s_out_b s_in_b^T) has exactly the
distribution q(W) (a sign flip leaves a zero-mean Gaussian unchanged), so the per-example output
has the same distribution as under plain reparameterisation, with lower variance of the gradient
over a batch. For convolutions the signs are per example and per channel (shared over pixels).

Sampling is explicit: every forward call draws new weights, in `train()` and `eval()` mode alike,
from torch's global RNG (seed it, e.g. through `hits_stamps.uncertainty.mc_predict_proba`). The
posterior-mean network (W = loc) runs deterministically inside `with use_mean(model): ...`, which
is what ONNX export of "the mean network" uses.

KL. `kl()` returns the analytic KL(q || p) summed over the layer's Bayesian parameters:

    KL = sum_i [ log(prior_std / scale_i) + (scale_i^2 + loc_i^2) / (2 prior_std^2) - 1/2 ]
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_EPS = float(torch.finfo(torch.float32).eps)


_BIT_SHIFTS: dict[torch.device, torch.Tensor] = {}


def rademacher(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Independent +-1 entries with probability 1/2, dtype and device of `like`.

    Drawn as the bits of uniform random bytes (8 signs per byte), several times faster on CPU
    than `bernoulli_`; seeded by torch's RNG like every other draw here.
    """
    n = math.prod(shape)
    shifts = _BIT_SHIFTS.get(like.device)
    if shifts is None:
        shifts = _BIT_SHIFTS.setdefault(like.device, torch.arange(8, dtype=torch.uint8, device=like.device))
    words = torch.randint(0, 256, ((n + 7) // 8,), dtype=torch.uint8, device=like.device)  # (ceil(n/8),)
    bits = ((words.unsqueeze(-1) >> shifts) & 1).view(-1)[:n]  # (n,) in {0, 1}
    return bits.view(shape).to(like.dtype).mul_(2.0).sub_(1.0)


def gaussian_kl(loc: torch.Tensor, scale: torch.Tensor, prior_std: float) -> torch.Tensor:
    """Summed KL(N(loc, scale^2) || N(0, prior_std^2)) over all elements (a scalar, in nats)."""
    ratio = scale / prior_std
    return (-torch.log(ratio) + 0.5 * (ratio.square() + (loc / prior_std).square()) - 0.5).sum()


class _SoftplusGaussianKL(torch.autograd.Function):
    """`gaussian_kl(loc, softplus(rho) + eps, prior_std)` with a hand-written backward.

    Forward: KL = sum_i [log p - log s_i + (s_i^2 + loc_i^2) / (2 p^2) - 1/2], s = softplus(rho) + eps.
    Backward: dKL/dloc = loc / p^2;  dKL/drho = (s / p^2 - 1 / s) * sigmoid(rho).
    Fewer passes over the weights and fewer temporaries than the autograd chain (it runs every step).
    """

    @staticmethod
    def forward(ctx, loc: torch.Tensor, rho: torch.Tensor, prior_std: float) -> torch.Tensor:
        scale = F.softplus(rho) + _EPS
        ctx.save_for_backward(loc, rho, scale)
        ctx.prior_var = prior_std * prior_std
        quad = (torch.dot(scale.reshape(-1), scale.reshape(-1)) + torch.dot(loc.reshape(-1), loc.reshape(-1)))
        n = scale.numel()
        return n * (math.log(prior_std) - 0.5) - torch.log(scale).sum() + quad / (2.0 * ctx.prior_var)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        loc, rho, scale = ctx.saved_tensors
        g_loc = g_rho = None
        if ctx.needs_input_grad[0]:
            g_loc = loc * (grad / ctx.prior_var)
        if ctx.needs_input_grad[1]:
            g_rho = (scale / ctx.prior_var - scale.reciprocal()).mul_(torch.sigmoid(rho)).mul_(grad)
        return g_loc, g_rho, None


def softplus_gaussian_kl(loc: torch.Tensor, rho: torch.Tensor, prior_std: float) -> torch.Tensor:
    """Summed KL(N(loc, s^2) || N(0, prior_std^2)) with s = softplus(rho) + eps; scalar, nats."""
    return _SoftplusGaussianKL.apply(loc, rho, float(prior_std))


class _Flipout(nn.Module):
    """Shared parameters, KL and mean mode of the Flipout layers (not used on its own)."""

    def __init__(
        self,
        weight_shape: tuple[int, ...],
        n_out: int,
        fan_in: int,
        bias: bool,
        bayesian_bias: bool,
        prior_std: float,
        loc_init_std: float | None,
        rho_init: float,
    ) -> None:
        super().__init__()
        if prior_std <= 0:
            raise ValueError(f"prior_std must be > 0; got {prior_std}")
        if bayesian_bias and not bias:
            raise ValueError("bayesian_bias=True needs bias=True")
        self.prior_std = float(prior_std)
        self.loc_init_std = loc_init_std
        self.rho_init = float(rho_init)
        self.fan_in = fan_in
        self.mean_mode = False  # True: use W = loc, no sampling (see `use_mean`)
        self.weight_loc = nn.Parameter(torch.empty(weight_shape))
        self.weight_rho = nn.Parameter(torch.empty(weight_shape))  # scale = softplus(rho) + eps
        self.bias_loc = nn.Parameter(torch.empty(n_out)) if bias else None
        self.bias_rho = nn.Parameter(torch.empty(n_out)) if bayesian_bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """loc ~ N(0, loc_init_std^2) (TFP's default 0.1) or, with loc_init_std=None, U(+-1/sqrt(fan_in))
        (torch's nn.Linear/Conv2d default); rho ~ N(rho_init, 0.1^2) (TFP: -3, so scale ~ 0.05)."""
        with torch.no_grad():
            if self.loc_init_std is None:
                bound = 1.0 / math.sqrt(self.fan_in)
                self.weight_loc.uniform_(-bound, bound)
            else:
                self.weight_loc.normal_(0.0, self.loc_init_std)
            self.weight_rho.normal_(self.rho_init, 0.1)
            if self.bias_loc is not None:
                if self.loc_init_std is None:
                    self.bias_loc.zero_()
                else:
                    self.bias_loc.normal_(0.0, self.loc_init_std)
            if self.bias_rho is not None:
                self.bias_rho.normal_(self.rho_init, 0.1)

    @property
    def weight_scale(self) -> torch.Tensor:
        """Posterior standard deviation of every weight, softplus(rho) + eps (same shape as loc)."""
        return F.softplus(self.weight_rho) + _EPS

    @property
    def bias_scale(self) -> torch.Tensor | None:
        return None if self.bias_rho is None else F.softplus(self.bias_rho) + _EPS

    def kl(self) -> torch.Tensor:
        """Analytic KL(q || p) summed over the weights (and the bias when it is Bayesian); scalar."""
        total = softplus_gaussian_kl(self.weight_loc, self.weight_rho, self.prior_std)
        if self.bias_rho is not None:
            total = total + softplus_gaussian_kl(self.bias_loc, self.bias_rho, self.prior_std)
        return total

    def count_parameters(self) -> int:
        """As TFP counts: weight loc + weight scale (+ bias loc, + bias scale when Bayesian)."""
        return sum(p.numel() for p in self.parameters())

    def _sample_bias(self) -> torch.Tensor | None:
        if self.bias_rho is None or self.mean_mode:
            return self.bias_loc
        return self.bias_loc + self.bias_scale * torch.randn_like(self.bias_loc)

    def _signs(self, batch: int, n: int, n_tied: int, like: torch.Tensor) -> torch.Tensor:
        """(n_tied * batch, n) Rademacher signs; the n_tied blocks of `batch` rows share signs."""
        if n_tied < 1 or batch % n_tied:
            raise ValueError(f"batch of {batch} cannot be split into n_tied={n_tied} equal blocks")
        s = rademacher((batch // n_tied, n), like)
        return s.repeat(n_tied, 1) if n_tied > 1 else s


class LinearFlipout(_Flipout):
    """Dense layer with a mean-field Gaussian weight posterior, sampled with Flipout.

    x: (B, in_features) -> (B, out_features). A new weight sample every call (see module docs).
    `n_tied` (forward argument): the batch is `n_tied` consecutive blocks holding the same B/n_tied
    examples in different transforms (e.g. the four rotations of each stamp); the blocks share
    their sign vectors, so every block sees the same effective weights.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        prior_std: float = 1.0,
        bayesian_bias: bool = False,
        loc_init_std: float | None = 0.1,
        rho_init: float = -3.0,
    ) -> None:
        self.in_features, self.out_features = in_features, out_features
        super().__init__(
            (out_features, in_features), out_features, in_features, bias, bayesian_bias,
            prior_std, loc_init_std, rho_init,
        )

    def forward(self, x: torch.Tensor, n_tied: int = 1) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"LinearFlipout expects (B, {self.in_features}); got {tuple(x.shape)}")
        bias = self._sample_bias()
        mean = F.linear(x, self.weight_loc, bias)  # (B, out)
        if self.mean_mode:
            return mean
        delta = self.weight_scale * torch.randn_like(self.weight_loc)  # (out, in), one draw per call
        s_in = self._signs(x.shape[0], self.in_features, n_tied, x)  # (B, in)
        s_out = self._signs(x.shape[0], self.out_features, n_tied, x)  # (B, out)
        return mean + F.linear(x * s_in, delta) * s_out

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of each output under q, per example: x (..., in) -> two (..., out).

            mean = x loc^T + bias,   var = x^2 (scale^2)^T (+ bias_scale^2 when the bias is Bayesian)

        For one example the outputs are independent Gaussians with exactly these moments, whether
        the weights are sampled directly or with Flipout. In mean mode var is 0.
        """
        mean = F.linear(x, self.weight_loc, self.bias_loc)
        if self.mean_mode:
            return mean, torch.zeros_like(mean)
        var = F.linear(x.square(), self.weight_scale.square())
        if self.bias_rho is not None:
            var = var + self.bias_scale.square()
        return mean, var

    def sample_local(self, x: torch.Tensor) -> torch.Tensor:
        """One independent draw per row from the output distribution (local reparameterisation,
        Kingma et al. 2015): mean + sqrt(var) * eps. x (..., in) -> (..., out).

        Per row the same distribution as `forward`, but rows are independent (no shared weight
        draw); used for Monte-Carlo prediction, where the rows are samples of the same stamps.
        """
        mean, var = self.moments(x)
        if self.mean_mode:
            return mean
        return mean + var.sqrt() * torch.randn_like(mean)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, bias={self.bias_loc is not None}, "
            f"bayesian_bias={self.bias_rho is not None}, prior_std={self.prior_std}"
        )


class Conv2dFlipout(_Flipout):
    """2-D convolution with a mean-field Gaussian kernel posterior, sampled with Flipout.

    x: (B, C_in, H, W) -> (B, C_out, H', W') as `torch.nn.Conv2d` with the same stride/padding.
    Rademacher signs are per example and per channel: s_in (B, C_in, 1, 1), s_out (B, C_out, 1, 1)
    (as TFP's Convolution2DFlipout). `n_tied` as in `LinearFlipout`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | str = 0,
        dilation: int = 1,
        bias: bool = True,
        prior_std: float = 1.0,
        bayesian_bias: bool = False,
        loc_init_std: float | None = 0.1,
        rho_init: float = -3.0,
    ) -> None:
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kh, kw)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        super().__init__(
            (out_channels, in_channels, kh, kw), out_channels, in_channels * kh * kw, bias,
            bayesian_bias, prior_std, loc_init_std, rho_init,
        )

    def _conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(x, w, b, stride=self.stride, padding=self.padding, dilation=self.dilation)

    def forward(self, x: torch.Tensor, n_tied: int = 1) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2dFlipout expects (B, {self.in_channels}, H, W); got {tuple(x.shape)}")
        bias = self._sample_bias()
        mean = self._conv(x, self.weight_loc, bias)  # (B, C_out, H', W')
        if self.mean_mode:
            return mean
        delta = self.weight_scale * torch.randn_like(self.weight_loc)  # (C_out, C_in, kh, kw)
        b = x.shape[0]
        s_in = self._signs(b, self.in_channels, n_tied, x)[:, :, None, None]  # (B, C_in, 1, 1)
        s_out = self._signs(b, self.out_channels, n_tied, x)[:, :, None, None]  # (B, C_out, 1, 1)
        return mean + self._conv(x * s_in, delta, None) * s_out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, prior_std={self.prior_std}"
        )


def flipout_layers(module: nn.Module) -> list[_Flipout]:
    """Every Flipout layer inside `module` (including itself)."""
    return [m for m in module.modules() if isinstance(m, _Flipout)]


def kl_divergence(module: nn.Module) -> torch.Tensor:
    """Sum of `kl()` over the Flipout layers of `module` (a scalar tensor; 0 when there are none)."""
    layers = flipout_layers(module)
    if not layers:
        return torch.zeros(())
    return torch.stack([m.kl() for m in layers]).sum()


def is_bayesian(module: nn.Module) -> bool:
    """True when `module` holds at least one Flipout layer."""
    return bool(flipout_layers(module))


def set_mean_mode(module: nn.Module, enabled: bool) -> None:
    """Switch every Flipout layer of `module` to the posterior mean (enabled) or to sampling."""
    for m in flipout_layers(module):
        m.mean_mode = bool(enabled)


@contextlib.contextmanager
def use_mean(module: nn.Module) -> Iterator[nn.Module]:
    """Run the posterior-mean network deterministically inside the block (weights = loc).

    Example (ONNX export of the mean network)::

        with use_mean(model):
            torch.onnx.export(model, x, "model.onnx")

    The previous modes are restored on exit, also after an exception.
    """
    layers = flipout_layers(module)
    before = [m.mean_mode for m in layers]
    try:
        for m in layers:
            m.mean_mode = True
        yield module
    finally:
        for m, mode in zip(layers, before, strict=True):
            m.mean_mode = mode
