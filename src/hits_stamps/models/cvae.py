"""`cvae`: a convolutional variational autoencoder conditioned on the class (real / bogus) or the stamp kind.

Generative model (Kingma & Welling 2014; conditional form: Sohn et al. 2015)::

    z ~ N(0, I_d)                                   prior, d = latent_dim
    t = T(x)                                        invertible per-channel input transform (models.generator)
    p(t | z, y) = prod_{h,w} D(t_hw; z, y)          per-pixel decoder distribution over the C channels
    q(z | x, y) = N(mu(x, y), diag sigma(x, y)^2)   encoder (diagonal Gaussian posterior)

with y the one-hot of the condition (class, or stamp kind: `models.generator.Conditions`).
`likelihood` chooses D; its location is predicted per pixel, its scales are learned once and shared
by every pixel and stamp (a calibrated decoder, Rybkin et al. 2021: the decoder cannot explain a
missed star core with a wide distribution there, so the location has to fit the core):
- "mvn" (the recipe's): a C-variate Gaussian per pixel with a full learned covariance L L^T (L
  lower-triangular, positive diagonal), so the difference, science - template and SNR of one pixel
  move together;
- "gaussian", "laplace", "student_t": the C channels independent, each with a learned scale
  (Student-t: plus learned degrees of freedom per channel, df = 2 + softplus(.)).
This is the PyTorch counterpart of TensorFlow Probability's probabilistic output layers: the
decoder returns a `torch.distributions` object with event shape (H, W, C) (channels last, as in
stamp files).

Loss (per stamp, averaged over the batch; `cvae_objective`), the negative ELBO::

    loss = mean_b[ -log p(t_b | z_b, y_b) ] + mean_b[ KL(q(z | x_b, y_b) || N(0, I)) ]
    z_b = mu_b + sigma_b * eps,  eps ~ N(0, I)        (one reparameterised sample)
    KL  = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)     (closed form)

The NLL is measured in transformed units t; it differs from the NLL in data units by the
log-Jacobian of T, which does not depend on the model's parameters.

What is fitted after training on the trained network (the per-condition latent mixture, the
residual noise model, the conditions' frequencies) and how stamps are drawn from it live in
`hits_stamps.generation.posthoc` and `hits_stamps.generation.sample`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn

from hits_stamps.models.generator import ChannelTransform, Conditions, resolve_condition
from hits_stamps.models.registry import ModelSpec, ObjectiveOutput, Recipe, register

LIKELIHOODS = ("mvn", "gaussian", "laplace", "student_t")

# options of model directories written before they were removed (experiments no recipe used; their code and
# results are in git history): accepted when they hold the behaviour that was kept, refused otherwise
_KEPT_BEHAVIOUR = {"decoder_scale": ("global",), "kl_warmup_steps": (0,), "kl_weight": (1,), "point_sources": (0,),
                   "n_classes": (2,)}
# options that never changed the network (sizes and units of the ex-post sampling models, read by
# generation.posthoc from the directory itself), or only options of removed ones
_NOT_NETWORK = ("latent_components", "noise_rank", "residual_units", "amplitude_from", "linear_noise_channels",
                "linear_noise_labels", "rank", "source_offset")


@dataclass(frozen=True)
class CVAEConfig:
    """What builds a `ConditionalVAE` (besides the stamps' channels and size); the defaults are the recipe's."""

    latent_dim: int = 16  # d, the size of the code z
    base_channels: int = 32  # width of the first encoder level; doubles per level up to max_channels
    max_channels: int = 128  # widest conv level
    hidden: int = 256  # width of the dense layer between the last conv level and z (both ways)
    min_size: int = 6  # the encoder halves the stamp until both sides are <= this
    likelihood: str = "mvn"  # decoder distribution per pixel: one of LIKELIHOODS
    input_transform: str = "asinh"  # "asinh" | "standardize" (models.generator.ChannelTransform)
    asinh_softening: float = 5.0  # asinh scale = this x the typical per-stamp noise of the channel
    subtract_channels: tuple[tuple[int, int], ...] = ((1, 0),)  # (i, j): channel i modelled as x_i - x_j
    # (HiTS order template, science, difference, snr: science modelled as science - template)
    min_scale: float = 2e-3  # floor added to the decoder scales (softplus + min_scale)
    condition: str = "auto"  # "class" | "kind"; "auto" is resolved on the training stamps (resolve_condition)
    kinds: tuple[str, ...] = ()  # condition "kind": the kinds, sorted (filled from the training stamps)
    kind_labels: tuple[int, ...] = ()  # condition "kind": the class of each kind

    def __post_init__(self) -> None:
        object.__setattr__(self, "subtract_channels", tuple((int(i), int(j)) for i, j in self.subtract_channels))
        object.__setattr__(self, "kinds", tuple(str(k) for k in self.kinds))
        object.__setattr__(self, "kind_labels", tuple(int(v) for v in self.kind_labels))
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}; got {self.likelihood!r}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1; got {self.latent_dim}")

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> CVAEConfig:
        """From config.json's `model_kwargs` (or `--model-arg`s): unknown keys are an error; options of
        directories written before they were removed load when they hold the behaviour that was kept."""
        fields = {f.name for f in dataclasses.fields(cls)}
        known = {}
        for key, value in kwargs.items():
            if key in fields:
                known[key] = value
            elif key in _KEPT_BEHAVIOUR:
                if value not in _KEPT_BEHAVIOUR[key]:
                    raise ValueError(f"cvae option {key}={value!r} was removed (an experiment no recipe used; it is in "
                                     f"git history); retrain the model with `hits-stamps train --model cvae`")
            elif key not in _NOT_NETWORK:
                raise ValueError(f"unknown cvae option {key!r}; the options are {sorted(fields)}")
        if known.get("likelihood") == "mvn_lowrank":
            raise ValueError("cvae option likelihood='mvn_lowrank' was removed (an experiment no recipe used; it is "
                             "in git history); retrain the model with `hits-stamps train --model cvae`")
        return cls(**known)

    def to_kwargs(self) -> dict[str, Any]:
        """JSON-ready `model_kwargs` (lists for tuples) that `from_kwargs` turns back into this config."""
        out = dataclasses.asdict(self)
        out["subtract_channels"] = [list(p) for p in self.subtract_channels]
        out["kinds"], out["kind_labels"] = list(self.kinds), list(self.kind_labels)
        return out


class CVAEOutput(NamedTuple):
    dist: D.Distribution  # p(t | z, y): batch shape (B,), event shape (H, W, C)
    target: torch.Tensor  # (B, H, W, C) the input in transformed units t = T(x), channels last
    z_mean: torch.Tensor  # (B, d) posterior mean
    z_log_std: torch.Tensor  # (B, d) posterior log standard deviation
    z: torch.Tensor  # (B, d) the reparameterised sample that was decoded


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1)


class ConditionalVAE(Conditions, nn.Module):
    """Convolutional conditional VAE for (B, C, H, W) stamps of any size and channel count.

    Encoder: [t, one-hot maps] -> conv3x3 -> (stride-2 conv3x3, conv3x3) per level, halving the
    size until it is <= `min_size` -> dense(hidden) -> (mu, log sigma) of d = `latent_dim`.
    Decoder: [z, one-hot] -> dense(hidden) -> dense -> per level (upsample to the encoder's size at
    that level, conv3x3, conv3x3) -> conv1x1 -> per-pixel locations for C channels; the scales (for
    "mvn" the whole C x C factor L) are parameters shared by every pixel (`global_scale`).
    """

    def __init__(self, in_channels: int = 4, size: tuple[int, int] = (21, 21), config: CVAEConfig | None = None):
        super().__init__()
        cfg = CVAEConfig(condition="class") if config is None else config
        self.config = cfg
        self._init_conditions(cfg.condition, cfg.kinds, cfg.kind_labels)
        h, w = (int(size[0]), int(size[1]))
        if min(h, w) < 3 or in_channels < 1:
            raise ValueError(f"need size >= 3 and channels >= 1; got size {size}, channels {in_channels}")
        self.in_channels, self.size = in_channels, (h, w)
        self.latent_dim, self.likelihood, self.min_scale = cfg.latent_dim, cfg.likelihood, cfg.min_scale
        self.transform = ChannelTransform(in_channels, cfg.input_transform, cfg.asinh_softening, cfg.subtract_channels)

        # spatial sizes of the encoder levels, e.g. 21x21 -> [(21, 21), (11, 11), (6, 6)]
        sizes = [(h, w)]
        while max(sizes[-1]) > cfg.min_size:
            sh, sw = sizes[-1]
            sizes.append(((sh + 1) // 2, (sw + 1) // 2))
        self.level_sizes = sizes
        widths = [min(cfg.base_channels * 2**i, cfg.max_channels) for i in range(len(sizes))]
        k, d, hidden = self.n_classes, cfg.latent_dim, cfg.hidden

        enc: list[nn.Module] = [_conv(in_channels + k, widths[0]), nn.SiLU()]
        for i in range(1, len(sizes)):
            enc += [_conv(widths[i - 1], widths[i], stride=2), nn.SiLU(), _conv(widths[i], widths[i]), nn.SiLU()]
        self.encoder = nn.Sequential(*enc)
        flat = widths[-1] * sizes[-1][0] * sizes[-1][1]
        self.enc_head = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.SiLU(), nn.Linear(hidden, 2 * d))

        self.dec_head = nn.Sequential(nn.Linear(d + k, hidden), nn.SiLU(), nn.Linear(hidden, flat), nn.SiLU())
        self._dec_shape = (widths[-1], *sizes[-1])
        self.dec_levels = nn.ModuleList()
        for i in range(len(sizes) - 1, 0, -1):
            w_in, w_out = widths[i], widths[i - 1]
            self.dec_levels.append(nn.Sequential(_conv(w_in, w_out), nn.SiLU(), _conv(w_out, w_out), nn.SiLU()))
        # shared by all pixels and stamps: C raw scales (the diagonal of L for "mvn"), and for "mvn" the
        # C (C - 1) / 2 entries of L below its diagonal
        self.n_offdiag = in_channels * (in_channels - 1) // 2 if cfg.likelihood == "mvn" else 0
        self.global_scale = nn.Parameter(torch.zeros(in_channels + self.n_offdiag))
        self.dec_out = nn.Conv2d(widths[0], in_channels, kernel_size=1)
        if cfg.likelihood == "student_t":
            # degrees of freedom per channel: df = 2 + softplus(raw), initialised at df = 5
            self.raw_df = nn.Parameter(torch.full((in_channels,), math.log(math.expm1(3.0))))

    # ------------------------------------------------------------------ input statistics
    @property
    def stats_fitted(self) -> bool:
        return bool(self.transform.fitted)

    def fit_input_stats(self, x: torch.Tensor) -> ConditionalVAE:
        """Fit the input transform on training stamps x (N, C, H, W) in data units (before training); returns self."""
        self.transform.fit(x)
        return self

    def to_model_units(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) data units -> transformed units t."""
        return self.transform(x)

    def to_data_units(self, t: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) transformed units -> data units (the exact inverse of `to_model_units`)."""
        return self.transform.inverse(t)

    # ------------------------------------------------------------------ encoder / decoder
    def condition(self, y: torch.Tensor) -> torch.Tensor:
        """Condition indices (B,) int -> one-hot (B, K); a float (B, K) tensor passes through (soft conditions)."""
        if y.ndim == 2 and y.is_floating_point():
            if y.shape[1] != self.n_classes:
                raise ValueError(f"condition must have {self.n_classes} columns; got {tuple(y.shape)}")
            return y
        y = y.long()
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise ValueError(f"class labels must be in 0..{self.n_classes - 1}; got {y.unique().tolist()}")
        return F.one_hot(y, self.n_classes).float()

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
        hid = self.dec_head(torch.cat([z, onehot], dim=-1)).view(-1, *self._dec_shape)  # (B, W_L, h_L, w_L)
        for level, target in zip(self.dec_levels, reversed(self.level_sizes[:-1]), strict=True):
            hid = level(F.interpolate(hid, size=target, mode="nearest"))
        loc = self.dec_out(hid).permute(0, 2, 3, 1)  # (B, H, W, C)
        c = self.in_channels
        shared = self.global_scale.to(loc.dtype).expand(*loc.shape[:-1], -1)  # (B, H, W, C + C(C-1)/2)
        scale = F.softplus(shared[..., :c]) + self.min_scale  # (B, H, W, C)
        if self.likelihood == "mvn":
            rows, cols = torch.tril_indices(c, c, offset=-1, device=loc.device)
            tril = torch.diag_embed(scale)  # (B, H, W, C, C)
            tril[..., rows, cols] = shared[..., c:]
            return D.Independent(D.MultivariateNormal(loc, scale_tril=tril), 2)
        if self.likelihood == "gaussian":
            base: D.Distribution = D.Normal(loc, scale)
        elif self.likelihood == "laplace":
            base = D.Laplace(loc, scale)
        else:
            df = (2.0 + F.softplus(self.raw_df)).expand_as(loc)
            base = D.StudentT(df, loc, scale)
        return D.Independent(base, 3)

    @staticmethod
    def location(dist: D.Distribution) -> torch.Tensor:
        """The decoder's location (B, H, W, C): its mean (for Laplace also the median)."""
        return dist.mean

    @staticmethod
    def pixel_tril(dist: D.Distribution) -> torch.Tensor:
        """(B, H, W, C, C): the decoder's per-pixel lower-triangular channel scale factor (mvn: its scale_tril,
        otherwise diag(scale))."""
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

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As nn.Module's; weights written while the sampling models were buffers of the network load without
        them (`generation.posthoc` reads them from such a file). Per-pixel decoder scales (removed) are refused."""
        state_dict = {k: v for k, v in state_dict.items() if k not in LEGACY_BUFFERS}
        if "global_scale" not in state_dict:
            raise RuntimeError("these weights predict the decoder scales per pixel (decoder_scale='pixel', removed; "
                               "it is in git history); retrain the model with `hits-stamps train --model cvae`")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


# buffers of weights files written before the sampling models moved to generation.posthoc
LEGACY_BUFFERS = ("train_steps", "condition_weight", "condition_temperature", "latent_weights", "latent_means",
                  "latent_tril", "latent_fitted", "resid_mean", "resid_factor", "resid_tril", "resid_fitted",
                  "resid_standardized", "resid_amp", "resid_amp_fitted")


def gaussian_kl(mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag sigma^2) || N(0, I)) per row: 1/2 sum_j (mu^2 + sigma^2 - 1 - 2 log sigma). (B, d) -> (B,)."""
    return 0.5 * (mu.pow(2) + (2 * log_std).exp() - 1.0 - 2 * log_std).sum(dim=-1)


def cvae_objective(model: ConditionalVAE, x: torch.Tensor, y: torch.Tensor, n_train: int) -> ObjectiveOutput:
    """Negative ELBO per stamp, averaged over the batch: mean_b[nll_b] + mean_b[kl_b] (module docstring).

    x: (B, C, H, W) in data units (the recipe's `scaling="none"`), y: (B,) condition indices.
    The model is not changed (its input transform must be fitted: `fit_input_stats`). `n_train` is
    unused: the latent KL belongs to each stamp, unlike the KL of weight posteriors, which is shared
    by the whole training set. parts: `nll`, `kl` (per stamp), and `nll_data`, the NLL in the units
    of the data (nll minus the log-Jacobian of the input transform), which compares models with
    different transforms.
    """
    del n_train
    if not model.stats_fitted:
        raise ValueError("the cvae's input transform is not fitted; call fit_input_stats(x_train) before training")
    out = model(x, y)
    nll = -out.dist.log_prob(out.target)  # (B,)
    kl = gaussian_kl(out.z_mean, out.z_log_std)  # (B,)
    loss = nll.mean() + kl.mean()
    with torch.no_grad():
        nll_data = nll - model.transform.log_abs_det_jacobian(x)  # (B,) NLL of x in data units
    parts = {"nll": float(nll.mean().detach()), "kl": float(kl.mean().detach()), "nll_data": float(nll_data.mean())}
    return ObjectiveOutput(loss, None, parts)


def build_cvae(in_channels: int, size: tuple[int, int], **kwargs) -> ConditionalVAE:
    return ConditionalVAE(in_channels, tuple(size), CVAEConfig.from_kwargs(kwargs))


def cvae_data_kwargs(train, kwargs: dict) -> dict:
    """`resolve_condition` on the training stamps, then the whole config (so config.json records every field).

    Only for a new model: the options that older directories still load with are refused here."""
    fields = {f.name for f in dataclasses.fields(CVAEConfig)}
    old = sorted(set(kwargs) - fields)
    if old:
        if old[0] in ("latent_components", "noise_rank"):
            raise ValueError(f"{old[0]} is not a cvae option: the sampling models are fitted after training "
                             f"(hits_stamps.generation.posthoc.PosthocConfig; refit with "
                             f"hits_stamps.generation.sample.fit_sampling_models(model_dir, stamps, components=...))")
        CVAEConfig.from_kwargs({k: kwargs[k] for k in old})  # a removed option: its own message
        raise ValueError(f"unknown cvae option {old[0]!r}; the options are {sorted(fields)}")
    return CVAEConfig.from_kwargs(resolve_condition(train, kwargs)).to_kwargs()


register(
    ModelSpec(
        name="cvae",
        task="generator",
        builder=build_cvae,
        objective=cvae_objective,
        data_kwargs=cvae_data_kwargs,
        hooks={"training_targets", "fit_input_stats"},
        recipe=Recipe(
            optimizer="adam", lr=1e-3, batch_size=64, epochs=48, scaling="none", nan_policy="median",
            clip_grad_norm=100.0, lr_schedule="cosine",
        ),
        description="Conditional VAE (on the class or the stamp kind) with a per-pixel probabilistic decoder",
        default_kwargs=CVAEConfig().to_kwargs(),
    )
)
