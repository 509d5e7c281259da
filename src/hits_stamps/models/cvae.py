"""`cvae`: a convolutional variational autoencoder conditioned on the class (real / bogus) or the stamp kind.

Generative model (Kingma & Welling 2014; conditional form: Sohn et al. 2015)::

    z ~ N(0, I_d)                                   prior, d = latent_dim
    t = T(x)                                        invertible per-channel input transform
    p(t | z, y) = prod_{h,w} D(t_hw; z, y)          per-pixel decoder distribution over the C channels
    q(z | x, y) = N(mu(x, y), diag sigma(x, y)^2)   encoder (diagonal Gaussian posterior)

with y the class one-hot. `likelihood` chooses D, always with parameters predicted per pixel:
- "gaussian", "laplace", "student_t": the C channels independent, each with a learned location
  and scale (Student-t: plus learned degrees of freedom per channel, df = 2 + softplus(.));
- "mvn": a C-variate Gaussian per pixel with a full learned covariance L L^T (L lower-triangular,
  positive diagonal), so the decoder can express that the difference, science - template and
  SNR of one pixel move together.
With `decoder_scale="global"` the scales (and, for "mvn", the whole C x C factor L) are not predicted
per pixel but learned once, shared by every pixel and stamp (a calibrated decoder in the sense of
Rybkin et al. 2021): the decoder can then no longer explain a missed star core with a wide
distribution there, so the location has to fit the core.
This is the PyTorch counterpart of TensorFlow Probability's probabilistic output layers: the
decoder returns a `torch.distributions` object with event shape (H, W, C) (channels last, as in
stamp files).

Loss (per stamp, averaged over the batch; `cvae_objective`)::

    loss = mean_b[ -log p(t_b | z_b, y_b) ] + beta * mean_b[ KL(q(z | x_b, y_b) || N(0, I)) ]
    z_b = mu_b + sigma_b * eps,  eps ~ N(0, I)        (one reparameterised sample)
    KL  = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)     (closed form)

`beta` is `kl_weight` (default 1: the plain negative ELBO; below 1 a beta-VAE, Higgins et al.
2017, which puts more information in z at the price of a looser bound); with `kl_warmup_steps` > 0
it rises linearly from kl_weight/kl_warmup_steps to kl_weight over the first `kl_warmup_steps`
training steps (Bowman et al. 2016). The
step counter is a buffer of the module (`train_steps`), advanced by the objective once per
training batch, so it is saved in checkpoints and a resumed run continues the same schedule.
Validation always uses beta = 1, so the validation loss is the negative ELBO. The NLL is measured
in transformed units t; it differs from the NLL in data units by the log-Jacobian of T, which
does not depend on the model's parameters.

Input transform T (exactly invertible; generated stamps come back in the training file's units)::

    t = asinh((x - center_c) / scale_c)       ("asinh", default), or
    t = (x - center_c) / scale_c              ("standardize")
    x = center_c + scale_c * sinh(t)          (inverse, resp. center_c + scale_c * t)

`center_c` is the median of all training pixels of channel c. For "asinh", `scale_c` is
`asinh_softening` (default 5) x the typical noise of channel c: the median over training stamps of
1.4826 x the within-stamp median absolute deviation. Pixel noise then stays in the nearly linear
part of asinh (a 3-sigma pixel is compressed by about 5%), so a Gaussian in t is close to Gaussian
noise in data units, while bright stars (thousands of sigma) are compressed logarithmically
(Lupton, Gunn & Szalay 1999). For "standardize", `scale_c` is 1.4826 x the MAD of all pixels. The
statistics are buffers in the state dict. The training loop calls `fit_input_stats(x_train)` once
before training; a module that was never fitted fits itself from its first training batch
instead. The recipe therefore uses `scaling="none"`: the loop's per-stamp scalings cannot be
inverted for new samples.

Sampling after training (fitted by `post_fit`, which the training loop calls once on its training
stamps after the last epoch; both are buffers, so they are saved with the weights)::

    z ~ sum_m w_km N(mean_km, L_km L_km^T)        per-class mixture fitted to the posterior means
                                                  (`fit_latent`; ex-post density, Ghosh et al. 2020)
    t = loc(z, k) + L(z, k) e,  e ~ N(m_k, U_k S_k^2 U_k^T + blockdiag_p B_kp)
                                                  per-class low-rank + block-diagonal Gaussian fitted to
                                                  the residuals t - loc(mu(x), k), each pixel standardised
                                                  by the decoder's scale factor L_p (`fit_residuals`;
                                                  `residual_units="model"`: L = I; "location": also by
                                                  an amplitude a_k(loc) that follows the location's
                                                  brightness, t = loc + L (a_k(loc) * e))

`sample(y, mode=...)`: "sample" draws t from the decoder distribution, "residual" adds r to the
location, "loc" returns the location. The pixel deviation from the location is scaled by a
temperature per row: the `temperature` argument times `condition_temperature[k]` (K,), a buffer
that is 1 after training and may be set per condition by `generation.tune.tune_temperatures`.

Conditions (`condition`): "class" conditions on the label alone (y in {bogus, real}); "kind"
conditions on the stamp kind (e.g. sn, variable, cosmic_ray, bad_subtraction), one
condition per kind listed in `kinds`, each belonging to the class in `kind_labels`. The training
loop fills both from the training stamps (`data_kwargs`) and passes condition indices to the
objective (`training_targets`). Everything indexed "per class" above (one-hots, latent mixtures,
residual models) is then per kind; `condition_label` (K,) maps a condition to its class, and
`condition_weight` (K,), set by `post_fit` to the training frequencies, is what `draw_conditions`
samples kinds from when only a class is asked for. The registry default "auto" is resolved by the
training loop (`cvae_data_kwargs`): "kind" when the training stamps have more kinds than classes and
each kind belongs to one class, else "class". An SNR-bin condition is not implemented.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn

from hits_stamps.models.registry import ModelSpec, ObjectiveOutput, Recipe, register

LIKELIHOODS = ("gaussian", "laplace", "student_t", "mvn", "mvn_lowrank")
INPUT_TRANSFORMS = ("asinh", "standardize")
LATENT_SOURCES = ("prior", "aggregate")
SAMPLE_MODES = ("sample", "loc", "residual")
CONDITIONS = ("class", "kind")  # what the model is built with; "auto" is resolved on the data (cvae_data_kwargs)
RESIDUAL_UNITS = ("decoder", "model", "location")
# the latent mixture has at most one component per this many training codes of a condition (`fit_latent`)
CODES_PER_COMPONENT = 20
AMPLITUDE_FROM = ("all", "images", "own")
# brightness knots (model units, max |location| over the channels) of the "location" residual amplitude
AMPLITUDE_KNOTS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
DECODER_SCALES = ("pixel", "global")


class CVAEOutput(NamedTuple):
    dist: D.Distribution  # p(t | z, y): batch shape (B,), event shape (H, W, C)
    target: torch.Tensor  # (B, H, W, C) the input in transformed units t = T(x), channels last
    z_mean: torch.Tensor  # (B, d) posterior mean
    z_log_std: torch.Tensor  # (B, d) posterior log standard deviation
    z: torch.Tensor  # (B, d) the reparameterised sample that was decoded


class ChannelTransform(nn.Module):
    """Invertible transform: optional channel differences, then a per-channel asinh / affine map.

    `forward(x)`: (B, C, H, W) data units -> model units; `inverse(t)`: back to data units.
    `subtract` lists (i, j) pairs: channel i is first replaced by x_i - x_j (e.g. (1, 0): science
    minus template); a channel j that is subtracted may not itself be replaced, so the inverse adds
    the x_j back exactly. The statistics of `fit` are those of the differenced channels.
    """

    def __init__(
        self,
        channels: int,
        kind: str = "asinh",
        softening: float = 5.0,
        subtract: tuple[tuple[int, int], ...] | list = (),
        eps: float = 1e-6,
    ):
        super().__init__()
        if kind not in INPUT_TRANSFORMS:
            raise ValueError(f"input_transform must be one of {INPUT_TRANSFORMS}; got {kind!r}")
        if not softening > 0:
            raise ValueError(f"asinh_softening must be > 0; got {softening}")
        pairs = tuple((int(i), int(j)) for i, j in subtract)
        targets = {i for i, _ in pairs}
        for i, j in pairs:
            if not (0 <= i < channels and 0 <= j < channels) or i == j or j in targets or len(targets) != len(pairs):
                raise ValueError(
                    f"subtract_channels must be (i, j) pairs of distinct channels in 0..{channels - 1}, each i once "
                    f"and no j replaced itself; got {[list(p) for p in pairs]} (pass subtract_channels=[] for none)"
                )
        self.kind, self.softening, self.eps, self.subtract = kind, float(softening), eps, pairs
        self.register_buffer("center", torch.zeros(channels))
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> ChannelTransform:
        """Set `center` and `scale` per channel from training stamps x (N, C, H, W) (statistics in the module doc).

        center_c: median of all finite pixels of channel c. scale_c: for "asinh", `softening` x the
        median over stamps of the within-stamp noise 1.4826 MAD; for "standardize", 1.4826 MAD of
        all pixels. A scale that is not positive falls back to the standard deviation, then to 1.
        """
        if x.ndim != 4 or x.shape[1] != self.center.numel():
            raise ValueError(f"expected (N, {self.center.numel()}, H, W); got {tuple(x.shape)}")
        arr = self._mix(x.detach().to("cpu", torch.float64)).numpy()
        n_ch = arr.shape[1]
        center, scale = np.zeros(n_ch), np.ones(n_ch)
        for c in range(n_ch):
            plane = arr[:, c].reshape(len(arr), -1)  # (N, H*W)
            finite = np.isfinite(plane)
            values = plane[finite]
            if values.size == 0:
                continue
            center[c] = np.median(values)
            if self.kind == "asinh":
                plane = np.where(finite, plane, np.nan)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # stamps with no finite pixel
                    per_stamp = np.nanmedian(np.abs(plane - np.nanmedian(plane, axis=1, keepdims=True)), axis=1)
                robust = self.softening * 1.4826 * (np.nanmedian(per_stamp) if np.isfinite(per_stamp).any() else 0.0)
            else:
                robust = 1.4826 * np.median(np.abs(values - center[c]))
            std = values.std()
            floor = self.eps * max(1.0, abs(center[c]))
            scale[c] = robust if robust > floor else (std if std > floor else 1.0)
        self.center.copy_(torch.as_tensor(center))
        self.scale.copy_(torch.as_tensor(scale))
        self.fitted.fill_(True)
        return self

    def _affine(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return self.center.view(shape).to(x.dtype), self.scale.view(shape).to(x.dtype)

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        if not self.subtract:
            return x
        out = x.clone()
        for i, j in self.subtract:
            out[:, i] = x[:, i] - x[:, j]
        return out

    def _unmix(self, x: torch.Tensor) -> torch.Tensor:
        if not self.subtract:
            return x
        out = x.clone()
        for i, j in self.subtract:
            out[:, i] = x[:, i] + x[:, j]  # x[:, j] is never replaced, so it is the original channel
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        center, scale = self._affine(x)
        u = (self._mix(x) - center) / scale
        return torch.asinh(u) if self.kind == "asinh" else u

    def log_abs_det_jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """log |det dt/dx| per stamp, (B, C, H, W) -> (B,): sum over pixels of -log scale_c [- 1/2 log(1 + u^2)].

        The channel differences have determinant 1. NLL in data units = NLL in t - this.
        """
        center, scale = self._affine(x)
        u = (self._mix(x) - center) / scale
        logdet = -torch.log(scale).expand_as(u)
        if self.kind == "asinh":
            logdet = logdet - 0.5 * torch.log1p(u * u)
        return logdet.flatten(1).sum(1)

    def inverse(self, t: torch.Tensor) -> torch.Tensor:
        center, scale = self._affine(t)
        u = torch.sinh(t) if self.kind == "asinh" else t
        return self._unmix(center + scale * u)


class LowRankPixelMVN(D.Distribution):
    """Gaussian over a whole stamp: covariance W W^T + blockdiag_p(L_p L_p^T) (Dorta et al. 2018 style).

    loc: (B, H, W, C); tril: (B, H, W, C, C) per-pixel lower-triangular factors of the channel
    covariance (pixel noise); factor: (B, H, W, C, r), r columns of W, each a stamp-wide pattern
    (structured uncertainty, e.g. a source brighter or fainter as a whole). Batch shape (B,), event
    shape (H, W, C). log p(t) = -1/2 (N log 2 pi + log det S + r^T S^-1 r), r = t - loc, N = H W C,
    evaluated with the matrix determinant lemma and Woodbury's identity:
    with a_p = L_p^-1 r_p, A_p = L_p^-1 W_p and K = I_r + sum_p A_p^T A_p,
    log det S = log det K + 2 sum_p sum_c log L_p,cc and
    r^T S^-1 r = sum_p |a_p|^2 - u^T K^-1 u, u = sum_p A_p^T a_p.
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, loc: torch.Tensor, tril: torch.Tensor, factor: torch.Tensor):
        self.loc, self.tril, self.factor = loc, tril, factor
        super().__init__(batch_shape=loc.shape[:1], event_shape=loc.shape[1:], validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        b, r = self.loc.shape[0], self.factor.shape[-1]
        resid = (value - self.loc).unsqueeze(-1)  # (B, H, W, C, 1)
        a = torch.linalg.solve_triangular(self.tril, resid, upper=False).flatten(1)  # (B, P*C)
        big_a = torch.linalg.solve_triangular(self.tril, self.factor, upper=False).reshape(b, -1, r)  # (B, P*C, r)
        cap = torch.eye(r, dtype=a.dtype, device=a.device) + big_a.transpose(1, 2) @ big_a  # (B, r, r)
        chol = torch.linalg.cholesky(cap)
        u = (big_a.transpose(1, 2) @ a.unsqueeze(-1))  # (B, r, 1)
        v = torch.linalg.solve_triangular(chol, u, upper=False).squeeze(-1)  # (B, r): |v|^2 = u^T K^-1 u
        maha = (a * a).sum(1) - (v * v).sum(1)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1) + 2 * torch.log(
            torch.diagonal(self.tril, dim1=-2, dim2=-1)).flatten(1).sum(1)
        n = a.shape[1]
        return -0.5 * (n * math.log(2 * math.pi) + logdet + maha)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        if sample_shape != torch.Size():
            raise ValueError("LowRankPixelMVN draws one sample per batch row")
        b, r = self.loc.shape[0], self.factor.shape[-1]
        eps_w = torch.randn(b, r, dtype=self.loc.dtype, device=self.loc.device)  # (B, r)
        eps_p = torch.randn_like(self.loc).unsqueeze(-1)  # (B, H, W, C, 1)
        structured = (self.factor @ eps_w[:, None, None, :, None]).squeeze(-1)  # (B, H, W, C)
        return self.loc + structured + (self.tril @ eps_p).squeeze(-1)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1)


class ConditionalVAE(nn.Module):
    """Convolutional conditional VAE for (B, C, H, W) stamps of any size and channel count.

    Encoder: [t, one-hot maps] -> conv3x3 -> (stride-2 conv3x3, conv3x3) per level, halving the
    size until it is <= `min_size` -> dense(hidden) -> (mu, log sigma) of d = `latent_dim`.
    Decoder: [z, one-hot] -> dense(hidden) -> dense -> per level (upsample to the encoder's size at
    that level, conv3x3, conv3x3) -> conv1x1 -> per-pixel distribution parameters for C channels.
    With `point_sources` > 0 the first dense layer also predicts that many Gaussian point sources,
    added to the location where the input transform is linear (`source_images`, `_add_sources`).
    """

    def __init__(
        self,
        in_channels: int = 4,
        size: tuple[int, int] = (21, 21),
        latent_dim: int = 16,
        base_channels: int = 32,
        max_channels: int = 128,
        hidden: int = 256,
        min_size: int = 6,
        n_classes: int = 2,
        likelihood: str = "mvn",
        input_transform: str = "asinh",
        asinh_softening: float = 5.0,
        subtract_channels: tuple[tuple[int, int], ...] | list = (),
        min_scale: float = 2e-3,
        kl_warmup_steps: int = 0,
        kl_weight: float = 1.0,
        rank: int = 8,
        latent_components: int = 10,
        noise_rank: int = 64,
        condition: str = "class",
        kinds: list[str] | tuple[str, ...] | None = None,
        kind_labels: list[int] | tuple[int, ...] | None = None,
        residual_units: str = "decoder",
        point_sources: int = 0,
        source_offset: float = 5.0,
        decoder_scale: str = "pixel",
        amplitude_from: str = "all",
        linear_noise_channels: tuple[int, ...] | list = (),
        linear_noise_labels: tuple[int, ...] | list | None = None,
    ):
        super().__init__()
        if residual_units not in RESIDUAL_UNITS:
            raise ValueError(f"residual_units must be one of {RESIDUAL_UNITS}; got {residual_units!r}")
        self.residual_units = residual_units
        if amplitude_from not in AMPLITUDE_FROM:
            raise ValueError(f"amplitude_from must be one of {AMPLITUDE_FROM}; got {amplitude_from!r}")
        self.amplitude_from = amplitude_from
        if condition not in CONDITIONS:
            hint = " ('auto' is resolved by the training loop)" if condition == "auto" else ""
            raise ValueError(f"condition must be one of {CONDITIONS}; got {condition!r}{hint}")
        self.condition_on = condition
        if condition == "kind":
            kinds, kind_labels = list(kinds or []), [int(v) for v in (kind_labels or [])]
            if not kinds or len(kinds) != len(kind_labels) or len(set(kinds)) != len(kinds):
                raise ValueError(
                    f"condition 'kind' needs distinct `kinds` and one class label per kind in `kind_labels`; "
                    f"got kinds {kinds}, kind_labels {kind_labels}"
                )
            if any(v < 0 or v >= n_classes for v in kind_labels):
                raise ValueError(f"kind_labels must be class labels in 0..{n_classes - 1}; got {kind_labels}")
            self.kinds: tuple[str, ...] = tuple(str(k) for k in kinds)
            labels_of_conditions = kind_labels
        else:
            self.kinds = ()
            labels_of_conditions = list(range(n_classes))
        n_classes = len(labels_of_conditions)  # from here on: the number of conditions
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}; got {likelihood!r}")
        h, w = (int(size[0]), int(size[1]))
        if min(h, w) < 3 or in_channels < 1 or latent_dim < 1 or n_classes < 1:
            raise ValueError(
                f"need size >= 3, channels >= 1, latent_dim >= 1, n_classes >= 1; got "
                f"size {size}, channels {in_channels}, latent_dim {latent_dim}, n_classes {n_classes}"
            )
        self.in_channels, self.size = in_channels, (h, w)
        self.latent_dim, self.n_classes = latent_dim, n_classes
        self.likelihood, self.min_scale = likelihood, min_scale
        self.kl_warmup_steps = int(kl_warmup_steps)
        if not kl_weight > 0:
            raise ValueError(f"kl_weight must be > 0; got {kl_weight}")
        self.kl_weight_final = float(kl_weight)
        self.transform = ChannelTransform(in_channels, input_transform, asinh_softening, subtract_channels)
        lin = tuple(sorted({int(c) for c in linear_noise_channels}))
        mixed = {c for pair in self.transform.subtract for c in pair}
        if any(c < 0 or c >= in_channels or c in mixed for c in lin):
            raise ValueError(f"linear_noise_channels must be channels in 0..{in_channels - 1} that subtract_channels "
                             f"does not use; got {list(linear_noise_channels)}")
        self.linear_noise_channels = lin
        # the classes whose conditions get that noise (None: all)
        self.linear_noise_labels = None if linear_noise_labels is None else tuple(int(v) for v in linear_noise_labels)
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))
        # condition -> class label, and the conditions' training frequencies (set by `post_fit`)
        self.register_buffer("condition_label", torch.tensor(labels_of_conditions, dtype=torch.long))  # (K,)
        self.register_buffer("condition_weight", torch.ones(n_classes))  # (K,)
        # per-condition pixel temperature, multiplied into `sample`'s temperature (1: the fitted noise as it is;
        # set after training by `generation.tune.tune_temperatures`)
        self.register_buffer("condition_temperature", torch.ones(n_classes))  # (K,)
        if latent_components < 1:
            raise ValueError(f"latent_components must be >= 1; got {latent_components}")
        # ex-post density of the codes: one Gaussian mixture per class (see `fit_latent`)
        self.latent_components = int(latent_components)
        self._latent_buffers(self.latent_components)
        self.register_buffer("latent_fitted", torch.zeros(n_classes, dtype=torch.bool))  # (K,)
        # ex-post model of the decoder's residuals t - loc, per class (see `fit_residuals`)
        if noise_rank < 0:
            raise ValueError(f"noise_rank must be >= 0; got {noise_rank}")
        n_pix = h * w * in_channels
        self.noise_rank = int(min(noise_rank, n_pix))
        self.register_buffer("resid_mean", torch.zeros(n_classes, n_pix))  # (K, P), P = H W C (channels last)
        self.register_buffer("resid_factor", torch.zeros(n_classes, n_pix, self.noise_rank))  # (K, P, r)
        # per-pixel C x C Cholesky factors of the remainder (channels of one pixel stay correlated)
        self.register_buffer("resid_tril", torch.eye(in_channels).repeat(n_classes, h * w, 1, 1))  # (K, H W, C, C)
        self.register_buffer("resid_fitted", torch.zeros(n_classes, dtype=torch.bool))  # (K,)
        # True when the residual model was fitted to residuals standardised by the decoder's pixel scales
        self.register_buffer("resid_standardized", torch.zeros((), dtype=torch.bool))
        # residual_units="location": per class and channel, the residual RMS at each brightness knot (see
        # `residual_amplitude`); all ones (no effect) until fitted, and for the other units
        self.register_buffer("resid_amp", torch.ones(n_classes, in_channels, len(AMPLITUDE_KNOTS)))  # (K, C, nb)
        self.register_buffer("resid_amp_fitted", torch.zeros((), dtype=torch.bool))

        # spatial sizes of the encoder levels, e.g. 21x21 -> [(21, 21), (11, 11), (6, 6)]
        sizes = [(h, w)]
        while max(sizes[-1]) > min_size:
            sh, sw = sizes[-1]
            sizes.append(((sh + 1) // 2, (sw + 1) // 2))
        self.level_sizes = sizes
        widths = [min(base_channels * 2**i, max_channels) for i in range(len(sizes))]

        enc: list[nn.Module] = [_conv(in_channels + n_classes, widths[0]), nn.SiLU()]
        for i in range(1, len(sizes)):
            enc += [_conv(widths[i - 1], widths[i], stride=2), nn.SiLU(), _conv(widths[i], widths[i]), nn.SiLU()]
        self.encoder = nn.Sequential(*enc)
        flat = widths[-1] * sizes[-1][0] * sizes[-1][1]
        self.enc_head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.SiLU(), nn.Linear(hidden, 2 * latent_dim)
        )

        self.dec_head = nn.Sequential(
            nn.Linear(latent_dim + n_classes, hidden), nn.SiLU(), nn.Linear(hidden, flat), nn.SiLU()
        )
        self._dec_shape = (widths[-1], *sizes[-1])
        self.dec_levels = nn.ModuleList()
        for i in range(len(sizes) - 1, 0, -1):
            w_in, w_out = widths[i], widths[i - 1]
            self.dec_levels.append(nn.Sequential(_conv(w_in, w_out), nn.SiLU(), _conv(w_out, w_out), nn.SiLU()))
        # per pixel: C locations, C scales (the diagonal of L for "mvn"), and for "mvn" the
        # C (C - 1) / 2 entries of L below its diagonal
        self.n_offdiag = in_channels * (in_channels - 1) // 2 if likelihood.startswith("mvn") else 0
        self.rank = int(rank) if likelihood == "mvn_lowrank" else 0
        if likelihood == "mvn_lowrank" and self.rank < 1:
            raise ValueError(f"rank must be >= 1 for mvn_lowrank; got {rank}")
        if decoder_scale not in DECODER_SCALES:
            raise ValueError(f"decoder_scale must be one of {DECODER_SCALES}; got {decoder_scale!r}")
        self.decoder_scale = decoder_scale
        n_scale = in_channels + self.n_offdiag  # per pixel: the scales (and the entries of L below its diagonal)
        if decoder_scale == "global":  # one set shared by all pixels and stamps, learned
            self.global_scale = nn.Parameter(torch.zeros(n_scale))
            n_scale = 0
        self.dec_out = nn.Conv2d(widths[0], in_channels + n_scale + in_channels * self.rank, kernel_size=1)
        if point_sources < 0 or not source_offset > 0:
            raise ValueError(f"need point_sources >= 0 and source_offset > 0; got {point_sources}, {source_offset}")
        self.point_sources, self.source_offset = int(point_sources), float(source_offset)
        if self.point_sources:
            # per source: centre (dy, dx), and per channel two circular Gaussians (core, wing):
            # amplitudes a, b, core width and wing/core width ratio
            self.src_head = nn.Linear(hidden, self.point_sources * (2 + 4 * in_channels))
            nn.init.normal_(self.src_head.weight, std=1e-3)
            nn.init.zeros_(self.src_head.bias)
            yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32) - (h - 1) / 2,
                                    torch.arange(w, dtype=torch.float32) - (w - 1) / 2, indexing="ij")
            self.register_buffer("_grid", torch.stack([yy, xx]), persistent=False)  # (2, H, W) from the centre
        if likelihood == "student_t":
            # degrees of freedom per channel: df = 2 + softplus(raw), initialised at df = 5
            self.raw_df = nn.Parameter(torch.full((in_channels,), math.log(math.expm1(3.0))))

    # ------------------------------------------------------------------ input statistics
    @property
    def stats_fitted(self) -> bool:
        return bool(self.transform.fitted)

    def fit_input_stats(self, x: torch.Tensor) -> ConditionalVAE:
        """Fit the input transform on training stamps x (N, C, H, W) in data units; returns self."""
        self.transform.fit(x)
        return self

    def to_model_units(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) data units -> transformed units t."""
        return self.transform(x)

    def to_data_units(self, t: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) transformed units -> data units (the exact inverse of `to_model_units`)."""
        return self.transform.inverse(t)

    # ------------------------------------------------------------------ conditioning
    def condition(self, y: torch.Tensor) -> torch.Tensor:
        """Class labels (B,) int -> one-hot (B, K); a float (B, K) tensor passes through (soft labels)."""
        if y.ndim == 2 and y.is_floating_point():
            if y.shape[1] != self.n_classes:
                raise ValueError(f"condition must have {self.n_classes} columns; got {tuple(y.shape)}")
            return y
        y = y.long()
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise ValueError(f"class labels must be in 0..{self.n_classes - 1}; got {y.unique().tolist()}")
        return F.one_hot(y, self.n_classes).float()

    def condition_index(self, labels: np.ndarray, kinds: np.ndarray | None = None) -> np.ndarray:
        """The condition of each stamp (N,) int64: its label for "class", the index of its kind in `kinds` for "kind".

        Raises ValueError for a kind the model was not trained on, or a kind listed under the other class.
        """
        labels = np.asarray(labels, dtype=np.int64)
        if self.condition_on == "class":
            return labels
        if kinds is None:
            raise ValueError(f"this generator is conditioned on the stamp kind ({', '.join(self.kinds)}); "
                             "the stamps need kinds")
        index = {k: i for i, k in enumerate(self.kinds)}
        unknown = sorted(set(np.asarray(kinds).tolist()) - set(index))
        if unknown:
            raise ValueError(f"kinds {unknown} are not among the kinds this generator was trained on: "
                             f"{list(self.kinds)}")
        cond = np.array([index[k] for k in np.asarray(kinds).tolist()], dtype=np.int64)
        if len(cond) and np.any(self.condition_label.cpu().numpy()[cond] != labels):
            raise ValueError("some stamps carry a label that differs from the class of their kind")
        return cond

    def training_targets(self, stamps) -> np.ndarray:
        """What the training loop passes to the objective as y for a StampSet: `condition_index` of its stamps."""
        return self.condition_index(stamps.labels, stamps.kind)

    def draw_conditions(
        self, label: int, n: int, kind: str | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """n condition indices (n,) for new stamps of class `label`.

        "class": all `label`. "kind": `kind` when given (it must belong to the class), else kinds of
        that class drawn with their training frequencies (`condition_weight`).
        """
        if self.condition_on == "class":
            if kind is not None:
                raise ValueError("this generator is conditioned on the class only (real/bogus), not on kind")
            return torch.full((n,), int(label), dtype=torch.long)
        of_class = [i for i, v in enumerate(self.condition_label.tolist()) if v == int(label)]
        if kind is not None:
            if kind not in self.kinds or self.kinds.index(kind) not in of_class:
                names = [self.kinds[i] for i in of_class]
                raise ValueError(f"kind {kind!r} is not a kind of class {label} for this generator; "
                                 f"choose one of {names}")
            return torch.full((n,), self.kinds.index(kind), dtype=torch.long)
        if not of_class:
            raise ValueError(f"this generator has no kind of class {label}")
        weights = self.condition_weight.cpu().double()[of_class]
        pick = torch.multinomial(weights / weights.sum(), n, replacement=True, generator=generator) if n else \
            torch.zeros(0, dtype=torch.long)
        return torch.tensor(of_class, dtype=torch.long)[pick]

    # ------------------------------------------------------------------ encoder / decoder
    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in data units, y (B,) -> posterior (mu, log sigma), each (B, d)."""
        t = self.to_model_units(x)
        return self._encode_t(t, self.condition(y).to(t.dtype))

    def _encode_t(self, t: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = onehot[:, :, None, None].expand(-1, -1, *t.shape[-2:])  # (B, K, H, W)
        stats = self.enc_head(self.encoder(torch.cat([t, maps], dim=1)))  # (B, 2d)
        mu, log_std = stats.chunk(2, dim=-1)
        return mu, log_std.clamp(-10.0, 5.0)

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> D.Distribution:
        """z (B, d), y (B,) or (B, K) -> p(t | z, y), batch shape (B,), event shape (H, W, C)."""
        onehot = self.condition(y).to(z.dtype)
        top = self.dec_head[:2](torch.cat([z, onehot], dim=-1))  # (B, hidden)
        hid = self.dec_head[2:](top).view(-1, *self._dec_shape)  # (B, W_L, h_L, w_L)
        for level, target in zip(self.dec_levels, reversed(self.level_sizes[:-1]), strict=True):
            hid = level(F.interpolate(hid, size=target, mode="nearest"))
        params = self.dec_out(hid).permute(0, 2, 3, 1)  # (B, H, W, C [+ C scales + C(C-1)/2] [+ C rank])
        c = self.in_channels
        if self.decoder_scale == "global":
            k = c
            shared = self.global_scale.to(params.dtype).expand(*params.shape[:-1], -1)  # (B, H, W, C + off)
            raw_scale, off = shared[..., :c], shared[..., c:]
        else:
            k = 2 * c + self.n_offdiag
            raw_scale, off = params[..., c : 2 * c], params[..., 2 * c : k]
        loc = params[..., :c]
        if self.point_sources:
            loc = self._add_sources(loc, top)
        scale = F.softplus(raw_scale) + self.min_scale  # (B, H, W, C)
        if self.likelihood.startswith("mvn"):
            rows, cols = torch.tril_indices(c, c, offset=-1, device=params.device)
            tril = torch.diag_embed(scale)  # (B, H, W, C, C)
            tril[..., rows, cols] = off
            if self.likelihood == "mvn_lowrank":
                factor = params[..., k:].reshape(*loc.shape, self.rank)  # (B, H, W, C, r)
                return LowRankPixelMVN(loc, tril, factor)
            return D.Independent(D.MultivariateNormal(loc, scale_tril=tril), 2)
        if self.likelihood == "gaussian":
            base: D.Distribution = D.Normal(loc, scale)
        elif self.likelihood == "laplace":
            base = D.Laplace(loc, scale)
        else:
            df = (2.0 + F.softplus(self.raw_df)).expand_as(loc)
            base = D.StudentT(df, loc, scale)
        return D.Independent(base, 3)

    def source_images(self, top: torch.Tensor) -> torch.Tensor:
        """The point-source layer (B, H, W, C) in the transform's linear units u (before asinh).

        top: (B, hidden), the decoder's first hidden layer. Per source s and channel c,
        a_sc G(r; sigma_sc) + b_sc G(r; k_sc sigma_sc), G the unit-flux circular Gaussian at the source
        centre (shared by the channels, within `source_offset` pixels of the stamp centre),
        sigma = 0.5 + softplus(.) pixels, k = 1 + softplus(.), a and b = 10 sinh(.) (signed, any magnitude
        from a faint supernova to a saturated star).
        """
        b, c, n = top.shape[0], self.in_channels, self.point_sources
        p = self.src_head(top).view(b, n, 2 + 4 * c)
        centre = self.source_offset * torch.tanh(p[..., :2])  # (B, n, 2) (dy, dx) from the stamp centre
        # signed amplitudes 10 sinh(.): a flux of 1 is the transform's scale (softening x noise) summed over the source
        amp = 10.0 * torch.sinh(p[..., 2 : 2 + 2 * c].clamp(-10.0, 10.0))
        amp_core, amp_wing = amp[..., :c], amp[..., c:]  # (B, n, C)
        sigma = 0.5 + F.softplus(p[..., 2 + 2 * c : 2 + 3 * c] + 1.0)  # (B, n, C), about 1.8 px at start
        ratio = 1.0 + F.softplus(p[..., 2 + 3 * c :] + 1.0)  # (B, n, C)
        grid = self._grid.to(top.dtype)  # (2, H, W)
        d2 = ((grid[None, None] - centre[..., None, None]) ** 2).sum(2)  # (B, n, H, W)

        def gauss(s):  # unit-flux Gaussians (B, n, C, H, W)
            var = (s * s)[..., None, None]
            return torch.exp(-d2[:, :, None] / (2 * var)) / (2 * math.pi * var)

        img = amp_core[..., None, None] * gauss(sigma) + amp_wing[..., None, None] * gauss(sigma * ratio)
        return img.sum(1).permute(0, 2, 3, 1)  # (B, H, W, C)

    def _add_sources(self, loc: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """loc (B, H, W, C) in model units plus the point sources, added where the transform is linear."""
        u = torch.sinh(loc.clamp(-20.0, 20.0)) if self.transform.kind == "asinh" else loc  # finite in float32
        u = u + self.source_images(top)
        return torch.asinh(u) if self.transform.kind == "asinh" else u

    @staticmethod
    def location(dist: D.Distribution) -> torch.Tensor:
        """The decoder's location (B, H, W, C): its mean (for Laplace also the median)."""
        return dist.mean

    @staticmethod
    def pixel_tril(dist: D.Distribution) -> torch.Tensor:
        """(B, H, W, C, C): the decoder's per-pixel lower-triangular channel scale factor.

        mvn: its scale_tril; mvn_lowrank: the per-pixel part (without the stamp-wide patterns);
        gaussian / laplace / student_t: diag(scale).
        """
        if isinstance(dist, LowRankPixelMVN):
            return dist.tril
        base = dist.base_dist
        if isinstance(base, D.MultivariateNormal):
            return base.scale_tril
        return torch.diag_embed(base.scale)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> CVAEOutput:
        """x (B, C, H, W) data units, y (B,) -> reconstruction distribution and posterior."""
        t = self.to_model_units(x)
        mu, log_std = self._encode_t(t, self.condition(y).to(t.dtype))
        z = mu + log_std.exp() * torch.randn_like(mu)
        return CVAEOutput(self.decode(z, y), t.permute(0, 2, 3, 1), mu, log_std, z)

    # ------------------------------------------------------------------ ex-post latent density
    def _latent_buffers(self, m: int) -> None:
        """(Re)make the mixture buffers for M = m components per class, unfitted (uniform weights, N(0, I))."""
        k, d = self.n_classes, self.latent_dim
        like = getattr(self, "latent_means", None)
        kw = {"device": like.device} if like is not None else {}
        self.register_buffer("latent_weights", torch.full((k, m), 1.0 / m, **kw))  # (K, M)
        self.register_buffer("latent_means", torch.zeros(k, m, d, **kw))  # (K, M, d)
        self.register_buffer("latent_tril", torch.eye(d, **kw).repeat(k, m, 1, 1))  # (K, M, d, d)

    @torch.no_grad()
    def fit_latent(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024, seed: int = 0) -> ConditionalVAE:
        """Fit, per class k, a Gaussian mixture to the posterior means mu(x_i, k) of the stamps of class k.

        x: (N, C, H, W) training stamps in data units, y: (N,) class labels. Ex-post density
        estimation (Ghosh et al. 2020): the aggregate posterior q_k(z) = mean_i q(z | x_i, k) of a
        trained VAE does not fill the prior N(0, I) (it has holes, and the class leaks into z), so
        codes drawn from the prior decode to stamps the training set does not contain. Drawing z
        from a density fitted to the codes of class k instead keeps samples where the decoder was
        trained. The mixture has min(latent_components, N_k // CODES_PER_COMPONENT) components (at least
        one; fewer codes per component and the draws start to copy training stamps), full covariances
        (sklearn GaussianMixture, k-means initialisation, reg_covar 1e-4, seeded); it is stored in
        buffers (`latent_weights` (K, M), `latent_means` (K, M, d), `latent_tril` (K, M, d, d)
        Cholesky factors, `latent_fitted` (K,)) and so saved with the weights. A class with fewer
        than 2 stamps keeps the prior. Called by the training loop after training (`post_fit`).
        """
        if x.ndim != 4 or len(x) != len(y):
            raise ValueError(f"expected x (N, C, H, W) and y (N,) of one N; got {tuple(x.shape)}, {tuple(y.shape)}")
        was_training = self.training
        self.eval()
        mus = []
        for start in range(0, len(x), batch_size):
            dev = self.transform.center.device
            xb, yb = x[start : start + batch_size].to(dev), y[start : start + batch_size].to(dev)
            mus.append(self.encode(xb, yb)[0].double().cpu())
        self.train(was_training)
        return self.fit_latent_codes(torch.cat(mus) if mus else torch.zeros(0, self.latent_dim), y, seed=seed)

    @torch.no_grad()
    def fit_latent_codes(self, codes: torch.Tensor, y: torch.Tensor, seed: int = 0) -> ConditionalVAE:
        """The per-class mixture of `fit_latent` from posterior means already computed, codes (N, d) and y (N,)."""
        from sklearn.mixture import GaussianMixture

        if codes.ndim != 2 or codes.shape[1] != self.latent_dim or len(codes) != len(y):
            raise ValueError(f"expected codes (N, {self.latent_dim}) and y (N,) of one N; got {tuple(codes.shape)}, "
                             f"{tuple(y.shape)}")
        mu = codes.detach().double().cpu().numpy()
        labels = y.detach().cpu().numpy()
        if self.latent_weights.shape[1] != self.latent_components:  # another number of components: new buffers
            self._latent_buffers(self.latent_components)
            self.latent_fitted.fill_(False)
        m, d = self.latent_weights.shape[1], self.latent_dim
        for k in range(self.n_classes):
            mine = mu[labels == k]
            if len(mine) < 2:
                self.latent_fitted[k] = False
                continue
            n_comp = max(1, min(m, len(mine) // CODES_PER_COMPONENT))
            gmm = GaussianMixture(n_comp, covariance_type="full", reg_covar=1e-4, random_state=seed,
                                  max_iter=200).fit(mine)
            weights = np.zeros(m)
            weights[:n_comp] = gmm.weights_
            means = np.zeros((m, d))
            means[:n_comp] = gmm.means_
            tril = np.tile(np.eye(d), (m, 1, 1))
            tril[:n_comp] = np.linalg.cholesky(gmm.covariances_)
            self.latent_weights[k] = torch.as_tensor(weights / weights.sum())
            self.latent_means[k] = torch.as_tensor(means)
            self.latent_tril[k] = torch.as_tensor(tril)
            self.latent_fitted[k] = True
        return self

    @torch.no_grad()
    def _residual_parts(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(r, b) on the CPU: r (N, H, W, C) = t - loc(mu(x, k), k), standardised by the decoder's pixel factor
        L_p^-1 r_p unless `residual_units="model"`; b (N, H, W, C) the brightness of the location (`brightness`)."""
        was_training = self.training
        self.eval()
        dev = self.transform.center.device
        res, bright = [], []
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size].to(dev), y[start : start + batch_size].to(dev)
            t = self.to_model_units(xb)
            mu, _ = self._encode_t(t, self.condition(yb).to(t.dtype))
            dist = self.decode(mu, yb)
            loc = self.location(dist)
            resid = t.permute(0, 2, 3, 1) - loc  # (B, H, W, C)
            if self.residual_units != "model":  # standardised by the decoder's own pixel scales
                tril = self.pixel_tril(dist)
                resid = torch.linalg.solve_triangular(tril, resid.unsqueeze(-1), upper=False).squeeze(-1)
            res.append(resid.cpu())
            bright.append(self.brightness(loc).cpu())
        self.train(was_training)
        h, w = self.size
        if not res:
            return torch.zeros(0, h, w, self.in_channels), torch.zeros(0, h, w, self.in_channels)
        return torch.cat(res), torch.cat(bright)

    def brightness(self, loc: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) location in model units -> (B, H, W, C): what each channel's residual amplitude follows.

        `amplitude_from="all"`: the largest |loc| over the channels (the same for every channel);
        "images": the largest |loc| over the first two channels (template and science - template in the
        HiTS order); "own": each channel's own |loc|.
        """
        a = loc.abs()
        if self.amplitude_from == "own":
            return a
        b = a[..., :2] if self.amplitude_from == "images" else a
        return b.amax(-1, keepdim=True).expand_as(a)

    @staticmethod
    def _knot_position(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For brightness b (any shape): i, the index of the knot at or above b (1..nb-1), and f in [0, 1], b's
        position between knots i - 1 and i (b clamped to the knot range), both shaped like b."""
        knots = torch.as_tensor(AMPLITUDE_KNOTS, dtype=b.dtype, device=b.device)
        bc = b.clamp(knots[0], knots[-1]).contiguous()
        i = torch.searchsorted(knots, bc, right=True).clamp(1, len(knots) - 1)
        return i, (bc - knots[i - 1]) / (knots[i] - knots[i - 1])

    def residual_amplitude(self, k: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The "location" residual amplitude a_kc(b) (B, H, W, C) for classes k (B,) and brightness b (B, H, W, C).

        Piecewise linear in b between the knots `AMPLITUDE_KNOTS` (constant beyond the last), from the
        per-class, per-channel residual RMS `resid_amp` (K, C, nb) fitted by `fit_residuals`.
        """
        nb, c = len(AMPLITUDE_KNOTS), b.shape[-1]
        i, f = self._knot_position(b)  # (B, H, W, C) each
        amp = self.resid_amp[k.to(self.resid_amp.device)].to(b.dtype).reshape(len(k), c * nb)  # (B, C nb)
        offset = torch.arange(c, device=b.device) * nb  # channel c's knots start at c nb
        idx = (i + offset).flatten(1)  # (B, H W C)
        a_lo = torch.gather(amp, 1, idx - 1).view_as(b)
        a_hi = torch.gather(amp, 1, idx).view_as(b)
        return a_lo + f * (a_hi - a_lo)

    def _fit_amplitude(self, r: torch.Tensor, b: torch.Tensor, labels: torch.Tensor) -> None:
        """resid_amp[k, c, j]: RMS of the residuals r (N, H, W, C) of class k, channel c, over pixels whose
        brightness b (N, H, W, C) lies near knot j (linear weights between the two nearest knots); knots
        with less than 200 pixels' weight take the nearest filled knot's value; a class without pixels keeps 1."""
        nb, c = len(AMPLITUDE_KNOTS), self.in_channels
        labels = labels.long().cpu()
        for k in range(self.n_classes):
            sel = labels == k
            if not bool(sel.any()):
                continue
            for ch in range(c):
                i, f = self._knot_position(b[sel, ..., ch].double().flatten())
                r2 = r[sel, ..., ch].double().flatten() ** 2
                mass = torch.bincount(i - 1, 1 - f, nb) + torch.bincount(i, f, nb)  # (nb,)
                ms = (torch.bincount(i - 1, (1 - f) * r2, nb) + torch.bincount(i, f * r2, nb)) / mass.clamp_min(1e-12)
                ok = mass >= 200
                if not bool(ok.any()):
                    continue
                filled = torch.nonzero(ok).squeeze(1)
                nearest = filled[(torch.arange(nb)[:, None] - filled[None]).abs().argmin(1)]
                self.resid_amp[k, ch] = ms[nearest].sqrt().clamp_min(1e-6).float()

    @torch.no_grad()
    def residuals(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """The residuals the residual model is fitted to, (N, H, W, C) on the CPU (channels last).

        r = t - loc(mu(x, k), k) in model units for stamps x (N, C, H, W) in data units and conditions y
        (N,); with `residual_units="decoder"` each pixel's r_p is standardised by the decoder's own scale
        factor there, L_p^-1 r_p (`pixel_tril`); with "location" that is further divided, per channel, by
        the class's residual amplitude at the pixel's brightness (`residual_amplitude`, fitted by
        `fit_residuals`). Evaluated in eval mode; the module's mode is restored.
        """
        r, b = self._residual_parts(x, y, batch_size)
        if self.residual_units == "location" and len(r):
            r = r / self.residual_amplitude(y.long().cpu(), b).to(r.dtype)
        return r

    @torch.no_grad()
    def fit_residuals(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> ConditionalVAE:
        """Fit, per class k, a low-rank-plus-diagonal Gaussian to the residuals r = t - loc(mu(x, k), k).

        x: (N, C, H, W) training stamps in data units, y: (N,) labels. r (N_k, P) are the flattened
        (channels last) differences between each stamp in model units and the decoder location at its
        posterior mean: the pixel noise and whatever structure the decoder does not reproduce. The
        per-pixel decoder distributions draw every pixel independently of its neighbours, while the
        noise of a PSF-matched difference is correlated over the matching kernel; this model keeps the
        correlations: r ~ N(m_k, U_k S_k^2 U_k^T + blockdiag_p(B_kp)), with m_k the mean residual,
        U_k S_k the top `noise_rank` principal directions of the centred residuals (SVD, sample
        covariance with N_k - 1) and B_kp the C x C sample covariance of the channels of pixel p minus
        the low-rank part's (eigenvalues clipped at 1e-8; stored as Cholesky factors `resid_tril`), so
        each pixel's channel covariance is that of the residuals. A class with fewer than 2 stamps
        stays unfitted. With `residual_units="decoder"` (default) each pixel's residual is first
        standardised by the decoder's own channel scale at that pixel, e_p = L_p^-1 r_p (`pixel_tril`),
        the model is fitted to e, and a draw is mapped back with r_p = L_p e_p: the noise then grows
        where the decoder expects it to (on bright sources) while the fitted model keeps the spatial
        and channel correlations; `resid_standardized` records which units the buffers hold.
        """
        if x.ndim != 4 or len(x) != len(y):
            raise ValueError(f"expected x (N, C, H, W) and y (N,) of one N; got {tuple(x.shape)}, {tuple(y.shape)}")
        r_all, bright = self._residual_parts(x, y, batch_size)
        labels = y.detach().cpu()
        if self.residual_units == "location":
            self.resid_amp.fill_(1.0)
            self._fit_amplitude(r_all, bright, labels)
            r_all = r_all / self.residual_amplitude(labels.long(), bright).to(r_all.dtype)
        r_all = r_all.flatten(1).double()  # (N, P)
        k_max = self.noise_rank
        for k in range(self.n_classes):
            r = r_all[labels == k]
            if len(r) < 2:
                self.resid_fitted[k] = False
                continue
            mean = r.mean(0)
            centred = (r - mean) / math.sqrt(len(r) - 1)  # (N_k, P): covariance = centred^T centred
            rank = min(k_max, len(r) - 1)
            factor = torch.zeros(r.shape[1], k_max, dtype=torch.float64)
            if rank > 0:
                _, sv, vh = torch.linalg.svd(centred, full_matrices=False)
                factor[:, :rank] = vh[:rank].T * sv[:rank]  # (P, rank): U S
            c = self.in_channels
            # remainder per pixel: the C x C sample covariance of its channels minus the low-rank part's,
            # made positive definite by clipping eigenvalues at 1e-8
            blocks = centred.view(len(r), -1, c)  # (N_k, H W, C)
            fblocks = factor.view(-1, c, k_max)  # (H W, C, r)
            rest = torch.einsum("npc,npd->pcd", blocks, blocks) - fblocks @ fblocks.transpose(1, 2)  # (H W, C, C)
            evals, evecs = torch.linalg.eigh(rest)
            rest = (evecs * evals.clamp_min(1e-8).unsqueeze(-2)) @ evecs.transpose(1, 2)
            self.resid_mean[k] = mean.float()
            self.resid_factor[k] = factor.float()
            self.resid_tril[k] = torch.linalg.cholesky(rest).float()
            self.resid_fitted[k] = True
        self.resid_standardized.fill_(self.residual_units != "model")
        self.resid_amp_fitted.fill_(self.residual_units == "location")
        return self

    def post_fit(self, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> None:
        """Hook the training loop calls once after training (on its training stamps, y their conditions):
        the conditions' frequencies (`condition_weight`), `fit_latent`, `fit_residuals`."""
        counts = torch.bincount(y.long().cpu(), minlength=self.n_classes)[: self.n_classes]
        self.condition_weight.copy_(counts.float())
        self.fit_latent(x, y, seed=seed)
        self.fit_residuals(x, y)

    @property
    def has_residual_model(self) -> bool:
        """True when every class has a fitted residual model (mode "residual" of `sample`)."""
        return bool(self.resid_fitted.all())

    @property
    def has_latent_mixture(self) -> bool:
        """True when every class has a fitted latent mixture."""
        return bool(self.latent_fitted.all())

    def sample_latent(
        self, y: torch.Tensor, latent: str = "aggregate", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Codes z (B, d) for class labels y (B,) int: from the prior N(0, I) (`latent="prior"`) or
        from the class's fitted mixture (`"aggregate"`: component m ~ Cat(w_k), z = mean_km + L_km eps).

        Draws use `generator` (CPU) when given, else torch's global RNG. A class without a fitted
        mixture is refused for "aggregate".
        """
        if latent not in LATENT_SOURCES:
            raise ValueError(f"latent must be one of {LATENT_SOURCES}; got {latent!r}")
        y = y.long().cpu()
        b, d = len(y), self.latent_dim
        eps = torch.randn(b, d, generator=generator, dtype=torch.float64)  # (B, d)
        if latent == "prior":
            return eps.float()
        missing = [int(k) for k in y.unique() if not bool(self.latent_fitted[k])]
        if missing:
            raise ValueError(f"no latent mixture fitted for class(es) {missing}; use latent='prior' or fit_latent")
        weights = self.latent_weights.cpu().double()[y]  # (B, M)
        comp = torch.multinomial(weights, 1, generator=generator).squeeze(1) if b else torch.zeros(0, dtype=torch.long)
        mean = self.latent_means.cpu().double()[y, comp]  # (B, d)
        tril = self.latent_tril.cpu().double()[y, comp]  # (B, d, d)
        return (mean + (tril @ eps.unsqueeze(-1)).squeeze(-1)).float()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As nn.Module's, but weights saved before the latent mixture existed load with it unfitted, and a
        mixture saved with another number of components than the builder's `latent_components` (refitted
        by `generation.sample.fit_sampling_models`) loads with its own."""
        state_dict = dict(state_dict)
        saved = state_dict.get("latent_weights")
        if saved is not None and saved.ndim == 2 and saved.shape[1] != self.latent_weights.shape[1]:
            self.latent_components = int(saved.shape[1])
            self._latent_buffers(self.latent_components)
        for name in ("latent_weights", "latent_means", "latent_tril", "latent_fitted", "resid_mean", "resid_factor",
                     "resid_tril", "resid_fitted", "condition_label", "condition_weight", "resid_standardized",
                     "condition_temperature", "resid_amp", "resid_amp_fitted"):
            state_dict.setdefault(name, getattr(self, name).detach().clone())
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self, y: torch.Tensor, mode: str = "sample", z: torch.Tensor | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        """Stamps in data units (B, C, H, W) for labels y (B,) (or soft (B, K)).

        z defaults to draws from the prior N(0, I). `mode="sample"` draws every pixel from the
        decoder distribution, t = loc + T * (t_drawn - loc); `mode="residual"` adds a draw of the fitted
        residual model, t = loc + T * r; `mode="loc"` returns the location (noise-free). The pixel
        temperature of a row is T = temperature x `condition_temperature[k]` for its condition k (the
        condition of largest weight for soft labels): 1 is the model's own noise, below 1 pixel deviations
        shrink towards the location. Uses torch's global RNG: seed it (or use `torch.random.fork_rng`) for
        reproducible draws.
        """
        if mode not in SAMPLE_MODES:
            raise ValueError(f"mode must be one of {SAMPLE_MODES}; got {mode!r}")
        if not 0.0 <= temperature <= 1.0:
            raise ValueError(f"temperature must be in [0, 1]; got {temperature}")
        if z is None:
            z = torch.randn(len(y), self.latent_dim, device=self.transform.center.device)
        dist = self.decode(z, y)
        loc = self.location(dist)  # (B, H, W, C)
        k = y.argmax(-1) if y.ndim == 2 else y.long()
        temp = (temperature * self.condition_temperature[k.to(self.condition_temperature.device)]).to(loc.dtype)
        temp = temp.view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        if mode == "sample":
            t = loc + temp * (dist.sample() - loc)
        elif mode == "residual":
            e = self._residual_draw(y, loc)
            tril = self.pixel_tril(dist) if bool(self.resid_standardized) else None

            def scaled(amplitude: torch.Tensor | None) -> torch.Tensor:
                d = e if amplitude is None else e * amplitude
                # back from standardised units: scaled by the decoder per pixel
                return d if tril is None else (tril @ d.unsqueeze(-1)).squeeze(-1)

            fitted_amp = bool(self.resid_amp_fitted)  # amplitude that follows the location's brightness
            t = loc + temp * scaled(self.residual_amplitude(k, self.brightness(loc)) if fitted_amp else None)
            lin = list(self.linear_noise_channels)
            if lin:
                # these channels' noise does not grow with brightness: the draw at the faint level,
                # added where the input transform is linear (data units / scale)
                faint = scaled(self.residual_amplitude(k, torch.zeros_like(loc)) if fitted_amp else None)
                t_lin = t.clone()
                t_lin[..., lin] = loc[..., lin]
                x_lin = self.to_data_units(t_lin.permute(0, 3, 1, 2))
                scale = self.transform.scale[lin].to(x_lin.dtype).view(1, -1, 1, 1)
                x_lin[:, lin] = x_lin[:, lin] + scale * (temp * faint[..., lin]).permute(0, 3, 1, 2)
                if self.linear_noise_labels is None:
                    return x_lin
                labels = self.condition_label[k.to(self.condition_label.device)].to(loc.device)
                rows = torch.isin(labels, torch.tensor(self.linear_noise_labels, device=loc.device))
                return torch.where(rows.view(-1, 1, 1, 1), x_lin, self.to_data_units(t.permute(0, 3, 1, 2)))
        else:
            t = loc
        return self.to_data_units(t.permute(0, 3, 1, 2))

    def _residual_draw(self, y: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        """r ~ N(m_k, U_k S_k^2 U_k^T + blockdiag_p B_kp) per row for its class k, shaped like loc (B, H, W, C).

        Soft (B, K) conditions use the class of largest weight.
        """
        k = y.argmax(-1) if y.ndim == 2 else y.long()
        if not bool(self.resid_fitted[k].all()):
            raise ValueError("no residual model fitted for these classes; use mode 'sample' or fit_residuals")
        b = len(k)
        eps_r = torch.randn(b, self.noise_rank, 1, dtype=loc.dtype, device=loc.device)
        eps_p = torch.randn(b, self.resid_mean.shape[1], dtype=loc.dtype, device=loc.device)
        pixel = (self.resid_tril[k] @ eps_p.view(b, -1, self.in_channels, 1)).reshape(b, -1)  # (B, P)
        r = self.resid_mean[k] + (self.resid_factor[k] @ eps_r).squeeze(-1) + pixel
        return r.view_as(loc)

    # ------------------------------------------------------------------ KL warm-up
    def kl_weight(self) -> float:
        """beta for the current training step: kl_weight x min(1, (train_steps + 1) / kl_warmup_steps)."""
        if self.kl_warmup_steps <= 0:
            return self.kl_weight_final
        return self.kl_weight_final * min(1.0, (int(self.train_steps) + 1) / self.kl_warmup_steps)


def gaussian_kl(mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag sigma^2) || N(0, I)) per row: 1/2 sum_j (mu^2 + sigma^2 - 1 - 2 log sigma). (B, d) -> (B,)."""
    return 0.5 * (mu.pow(2) + (2 * log_std).exp() - 1.0 - 2 * log_std).sum(dim=-1)


def cvae_objective(model: ConditionalVAE, x: torch.Tensor, y: torch.Tensor, n_train: int) -> ObjectiveOutput:
    """Negative ELBO per stamp, averaged over the batch (formula in the module docstring).

    x: (B, C, H, W) in data units (the recipe's `scaling="none"`), y: (B,) class labels. In
    training mode the KL weight follows the warm-up schedule and the step counter advances; in
    eval mode beta = 1. `n_train` is unused: the latent KL belongs to each stamp, unlike the KL of
    weight posteriors, which is shared by the whole training set. parts: `nll`, `kl` (per stamp,
    unweighted), `kl_weight`, and `nll_data`, the NLL in the units of the data (nll minus the
    log-Jacobian of the input transform), which compares models with different transforms.
    """
    del n_train
    if model.training:
        if not model.stats_fitted:
            model.fit_input_stats(x)  # fallback when the loop did not call fit_input_stats
        beta = model.kl_weight()
        model.train_steps += 1
    else:
        beta = 1.0
    out = model(x, y)
    nll = -out.dist.log_prob(out.target)  # (B,)
    kl = gaussian_kl(out.z_mean, out.z_log_std)  # (B,)
    loss = nll.mean() + beta * kl.mean()
    with torch.no_grad():
        nll_data = nll - model.transform.log_abs_det_jacobian(x)  # (B,) NLL of x in data units
    parts = {"nll": float(nll.mean().detach()), "kl": float(kl.mean().detach()), "kl_weight": beta,
             "nll_data": float(nll_data.mean())}
    return ObjectiveOutput(loss, None, parts)


def build_cvae(in_channels: int, size: tuple[int, int], **kwargs) -> ConditionalVAE:
    return ConditionalVAE(in_channels=in_channels, size=tuple(size), **kwargs)


def _kinds_of(train) -> tuple[list[str], list[int], str | None]:
    """Sorted kinds of labelled stamps, each one's class, and why they cannot be conditions (None if they can)."""
    if train.kind is None:
        return [], [], "the stamps have no kinds"
    kinds = sorted(set(np.asarray(train.kind).tolist()))
    labels = []
    for k in kinds:
        seen = np.unique(train.labels[train.kind == k])
        if len(seen) != 1:
            return kinds, labels, f"kind {k!r} has stamps of both classes"
        labels.append(int(seen[0]))
    return kinds, labels, None


def cvae_data_kwargs(train, kwargs: dict) -> dict:
    """Resolve `condition` on the training stamps; for "kind", fill `kinds` and `kind_labels` unless given.

    "auto" becomes "kind" when every kind of the training stamps belongs to one class and there are
    more kinds than classes, else "class" (conditioning on one kind per class is the class itself).
    "kind" with a kind that carries both labels: ValueError.
    """
    condition = kwargs.get("condition", "class")
    if condition == "auto":
        kinds, labels, problem = _kinds_of(train)
        condition = "kind" if problem is None and len(kinds) > len(set(labels)) else "class"
        kwargs = {**kwargs, "condition": condition}
    if condition != "kind" or kwargs.get("kinds"):
        return kwargs
    kinds, labels, problem = _kinds_of(train)
    if problem is not None:
        raise ValueError(f"{problem}; condition 'kind' needs one class per kind")
    return {**kwargs, "kinds": kinds, "kind_labels": labels}


register(
    ModelSpec(
        name="cvae",
        task="generator",
        builder=build_cvae,
        objective=cvae_objective,
        data_kwargs=cvae_data_kwargs,
        hooks={"training_targets", "fit_input_stats", "post_fit"},
        recipe=Recipe(
            optimizer="adam", lr=1e-3, batch_size=64, epochs=48, scaling="none", nan_policy="median",
            clip_grad_norm=100.0, lr_schedule="cosine",
        ),
        description="Conditional VAE (on the class or the stamp kind) with a per-pixel probabilistic decoder",
        # HiTS channel order (template, science, difference, snr): science is modelled as science - template
        default_kwargs={"latent_dim": 16, "base_channels": 32, "likelihood": "mvn", "input_transform": "asinh",
                        "subtract_channels": [[1, 0]], "condition": "auto", "decoder_scale": "global",
                        "latent_components": 100, "residual_units": "location"},
    )
)
