"""What a generator fits after training, on its trained network and its training stamps, and saves beside its weights.

`fit_sampling(module, x, y)` fits, per condition k (a class, or a stamp kind):

- the conditions' training frequencies `condition_weight` (K,), what `draw_conditions` draws kinds
  with when only a class is asked for (both generators);
- (cvae) a Gaussian mixture over the posterior means of the training stamps (`fit_latent`;
  ex-post density estimation, Ghosh et al. 2020)::

      z ~ sum_m w_km N(mean_km, L_km L_km^T)

- (cvae) a Gaussian model of the residuals of the decoder location, standardised per pixel by the
  decoder's channel factor L_p and per channel by an amplitude a_k(b) that follows the location's
  brightness b (`fit_residuals`)::

      t = loc(z, k) + L (a_k(b(loc)) * e),  e ~ N(m_k, U_k S_k^2 U_k^T + blockdiag_p B_kp)

and `condition_temperature` (K,), the per-condition pixel temperature (1 after fitting;
`generation.tune.tune_temperatures` may change it). All of it is a `SamplingModels`, saved as
`sampling.safetensors` in the model directory (tensors plus string metadata; loaded without
executing code). Directories written while these were buffers of the cvae's weights
(`model.safetensors`) load them from there (`load_sampling`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hits_stamps.errors import HitsStampsError, StampFileError
from hits_stamps.io.atomic import atomic_path
from hits_stamps.models.cvae import ConditionalVAE

SAMPLING_FILE = "sampling.safetensors"
FORMAT = "hits-stamps sampling models 1"
LATENTS = ("prior", "aggregate")
# brightness knots (model units, max |location| over the channels) of the residual amplitude a_k(b)
AMPLITUDE_KNOTS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_LATENT = ("latent_weights", "latent_means", "latent_tril", "latent_fitted")
_RESIDUAL = ("resid_mean", "resid_factor", "resid_tril", "resid_fitted", "resid_amp")


@dataclass(frozen=True)
class PosthocConfig:
    """Sizes of the cvae's sampling models (the recipe's values)."""

    components: int = 100  # at most this many mixture components per condition
    codes_per_component: int = 20  # ... and at most one per this many training codes of the condition
    noise_rank: int = 64  # principal directions of the residual model (capped at H W C)
    batch_size: int = 1024  # stamps encoded at once

    def __post_init__(self) -> None:
        if self.components < 1 or self.codes_per_component < 1 or self.noise_rank < 0 or self.batch_size < 1:
            raise ValueError(f"need components >= 1, codes_per_component >= 1, noise_rank >= 0, batch_size >= 1; "
                             f"got {self}")


@dataclass
class SamplingModels:
    """The fitted state (K conditions; shapes below). `latent` and `residual` are empty for a diffusion model."""

    condition_weight: torch.Tensor  # (K,) training frequency of each condition
    condition_temperature: torch.Tensor  # (K,) pixel temperature of each condition
    latent: dict[str, torch.Tensor] = field(default_factory=dict)  # latent_weights (K, M), latent_means (K, M, d),
    # latent_tril (K, M, d, d) Cholesky factors, latent_fitted (K,) bool
    residual: dict[str, torch.Tensor] = field(default_factory=dict)  # resid_mean (K, P), resid_factor (K, P, r),
    # resid_tril (K, H W, C, C), resid_fitted (K,) bool, resid_amp (K, C, len(AMPLITUDE_KNOTS)); P = H W C

    @property
    def has_latent_mixture(self) -> bool:
        """True when every condition has a fitted latent mixture."""
        return bool(self.latent) and bool(self.latent["latent_fitted"].all())

    @property
    def has_residual_model(self) -> bool:
        """True when every condition has a fitted residual model (mode "residual" of the sampler)."""
        return bool(self.residual) and bool(self.residual["resid_fitted"].all())

    # ------------------------------------------------------------------ file
    def save(self, model_dir: str | os.PathLike) -> Path:
        """Write `sampling.safetensors` into a model directory (atomically); returns its path."""
        tensors = {"condition_weight": self.condition_weight, "condition_temperature": self.condition_temperature,
                   **self.latent, **self.residual}
        path = Path(model_dir) / SAMPLING_FILE
        with atomic_path(path, overwrite=True) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                      metadata={"format": FORMAT})
        return path

    # ------------------------------------------------------------------ drawing
    def draw_conditions(self, module, label: int, n: int, kind: str | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """n condition indices (n,) for new stamps of class `label`.

        "class": all `label`. "kind": `kind` when given (it must belong to the class), else kinds of
        that class drawn with their training frequencies (`condition_weight`).
        """
        if module.condition_on == "class":
            if kind is not None:
                raise ValueError("this generator is conditioned on the class only (real/bogus), not on kind")
            return torch.full((n,), int(label), dtype=torch.long)
        of_class = [i for i, v in enumerate(module.condition_label.tolist()) if v == int(label)]
        if kind is not None:
            if kind not in module.kinds or module.kinds.index(kind) not in of_class:
                names = [module.kinds[i] for i in of_class]
                raise ValueError(f"kind {kind!r} is not a kind of class {label} for this generator; "
                                 f"choose one of {names}")
            return torch.full((n,), module.kinds.index(kind), dtype=torch.long)
        if not of_class:
            raise ValueError(f"this generator has no kind of class {label}")
        weights = self.condition_weight.cpu().double()[of_class]
        pick = torch.multinomial(weights / weights.sum(), n, replacement=True, generator=generator) if n else \
            torch.zeros(0, dtype=torch.long)
        return torch.tensor(of_class, dtype=torch.long)[pick]

    def sample_latent(self, y: torch.Tensor, d: int, latent: str = "aggregate",
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Codes z (B, d) for conditions y (B,): from the prior N(0, I) (`latent="prior"`) or from the condition's
        fitted mixture (`"aggregate"`: component m ~ Cat(w_k), z = mean_km + L_km eps).

        Draws use `generator` (CPU) when given, else torch's global RNG. A condition without a fitted
        mixture is refused for "aggregate".
        """
        if latent not in LATENTS:
            raise ValueError(f"latent must be one of {LATENTS}; got {latent!r}")
        y = y.long().cpu()
        b = len(y)
        eps = torch.randn(b, d, generator=generator, dtype=torch.float64)  # (B, d)
        if latent == "prior":
            return eps.float()
        fitted = self.latent.get("latent_fitted")
        missing = [int(k) for k in y.unique() if fitted is None or not bool(fitted[k])]
        if missing:
            raise ValueError(f"no latent mixture fitted for condition(s) {missing}; use latent='prior' or fit_latent")
        weights = self.latent["latent_weights"].cpu().double()[y]  # (B, M)
        comp = torch.multinomial(weights, 1, generator=generator).squeeze(1) if b else torch.zeros(0, dtype=torch.long)
        mean = self.latent["latent_means"].cpu().double()[y, comp]  # (B, d)
        tril = self.latent["latent_tril"].cpu().double()[y, comp]  # (B, d, d)
        return (mean + (tril @ eps.unsqueeze(-1)).squeeze(-1)).float()

    def residual_amplitude(self, k: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The residual amplitude a_kc(b) (B, H, W, C) for conditions k (B,) and brightness b (B, H, W, C).

        Piecewise linear in b between the knots `AMPLITUDE_KNOTS` (constant beyond the last), from the
        per-condition, per-channel residual RMS `resid_amp` (K, C, nb) fitted by `fit_residuals`.
        """
        return _amplitude(self.residual["resid_amp"], k, b)

    def residual_draw(self, k: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        """e ~ N(m_k, U_k S_k^2 U_k^T + blockdiag_p B_kp) per row for its condition k (B,).

        Shaped like loc (B, H, W, C); uses torch's global RNG (on loc's device)."""
        fitted = self.residual.get("resid_fitted")
        if fitted is None or not bool(fitted[k.cpu()].all()):
            raise ValueError("no residual model fitted for these conditions; use mode 'sample' or fit_residuals")
        mean, factor, tril = (self.residual[n].to(loc.device) for n in ("resid_mean", "resid_factor", "resid_tril"))
        b, k = len(k), k.to(loc.device)
        eps_r = torch.randn(b, factor.shape[-1], 1, dtype=loc.dtype, device=loc.device)
        eps_p = torch.randn(b, mean.shape[1], dtype=loc.dtype, device=loc.device)
        pixel = (tril[k] @ eps_p.view(b, -1, loc.shape[-1], 1)).reshape(b, -1)  # (B, P)
        r = mean[k] + (factor[k] @ eps_r).squeeze(-1) + pixel
        return r.view_as(loc)


def _knot_position(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For brightness b (any shape): i, the index of the knot at or above b (1..nb-1), and f in [0, 1], b's
    position between knots i - 1 and i (b clamped to the knot range), both shaped like b."""
    knots = torch.as_tensor(AMPLITUDE_KNOTS, dtype=b.dtype, device=b.device)
    bc = b.clamp(knots[0], knots[-1]).contiguous()
    i = torch.searchsorted(knots, bc, right=True).clamp(1, len(knots) - 1)
    return i, (bc - knots[i - 1]) / (knots[i] - knots[i - 1])


def _amplitude(resid_amp: torch.Tensor, k: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    nb, c = len(AMPLITUDE_KNOTS), b.shape[-1]
    i, f = _knot_position(b)  # (B, H, W, C) each
    amp = resid_amp.to(b.device)[k.to(b.device)].to(b.dtype).reshape(len(k), c * nb)  # (B, C nb)
    offset = torch.arange(c, device=b.device) * nb  # channel c's knots start at c nb
    idx = (i + offset).flatten(1)  # (B, H W C)
    a_lo = torch.gather(amp, 1, idx - 1).view_as(b)
    a_hi = torch.gather(amp, 1, idx).view_as(b)
    return a_lo + f * (a_hi - a_lo)


def brightness(loc: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) location in model units -> (B, H, W, C): the largest |loc| over the channels, for every channel."""
    a = loc.abs()
    return a.amax(-1, keepdim=True).expand_as(a)


# ---------------------------------------------------------------------- fitting
def fit_sampling(module, x: torch.Tensor, y: torch.Tensor, config: PosthocConfig | None = None,
                 seed: int = 0) -> SamplingModels:
    """Everything a generator samples from after training, fitted on its training stamps x (N, C, H, W) in data
    units with conditions y (N,): the conditions' frequencies, and for a cvae `fit_latent` and `fit_residuals`."""
    config = config or PosthocConfig()
    counts = torch.bincount(y.long().cpu(), minlength=module.n_classes)[: module.n_classes]
    out = SamplingModels(condition_weight=counts.float(), condition_temperature=torch.ones(module.n_classes))
    if isinstance(module, ConditionalVAE):
        out.latent = fit_latent(module, x, y, config, seed=seed)
        out.residual = fit_residuals(module, x, y, config)
    return out


@torch.no_grad()
def posterior_codes(module: ConditionalVAE, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Posterior means mu(x_i, y_i) (N, d) float64 on the CPU, in eval mode (the module's mode is restored)."""
    was_training = module.training
    module.eval()
    dev = module.transform.center.device
    mus = []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size].to(dev), y[start : start + batch_size].to(dev)
        mus.append(module.encode(xb, yb)[0].double().cpu())
    module.train(was_training)
    return torch.cat(mus) if mus else torch.zeros(0, module.latent_dim, dtype=torch.float64)


def fit_latent(module: ConditionalVAE, x: torch.Tensor, y: torch.Tensor, config: PosthocConfig | None = None,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """Per condition k, a Gaussian mixture fitted to the posterior means mu(x_i, k) of its training stamps.

    The aggregate posterior q_k(z) = mean_i q(z | x_i, k) of a trained VAE does not fill the prior
    N(0, I) (it has holes, and the class leaks into z), so codes drawn from the prior decode to
    stamps the training set does not contain; drawing z from a density fitted to the codes of
    condition k keeps samples where the decoder was trained (Ghosh et al. 2020). The mixture has
    min(components, N_k // codes_per_component) components (at least one; fewer codes per
    component and the draws start to copy training stamps), full covariances (sklearn
    GaussianMixture, k-means initialisation, reg_covar 1e-4, seeded). A condition with fewer than 2
    stamps stays unfitted (weights uniform, N(0, I) components).
    """
    config = config or PosthocConfig()
    if x.ndim != 4 or len(x) != len(y):
        raise ValueError(f"expected x (N, C, H, W) and y (N,) of one N; got {tuple(x.shape)}, {tuple(y.shape)}")
    return fit_latent_codes(posterior_codes(module, x, y, config.batch_size), y, module.n_classes, config, seed)


def fit_latent_codes(codes: torch.Tensor, y: torch.Tensor, n_conditions: int, config: PosthocConfig | None = None,
                     seed: int = 0) -> dict[str, torch.Tensor]:
    """The mixture of `fit_latent` from posterior means already computed, codes (N, d) and y (N,)."""
    from sklearn.mixture import GaussianMixture

    config = config or PosthocConfig()
    if codes.ndim != 2 or len(codes) != len(y):
        raise ValueError(f"expected codes (N, d) and y (N,) of one N; got {tuple(codes.shape)}, {tuple(y.shape)}")
    mu = codes.detach().double().cpu().numpy()
    labels = y.detach().cpu().numpy()
    k_all, m, d = n_conditions, config.components, mu.shape[1]
    weights = np.full((k_all, m), 1.0 / m)
    means = np.zeros((k_all, m, d))
    trils = np.tile(np.eye(d), (k_all, m, 1, 1))
    fitted = np.zeros(k_all, dtype=bool)
    for k in range(k_all):
        mine = mu[labels == k]
        if len(mine) < 2:
            continue
        n_comp = max(1, min(m, len(mine) // config.codes_per_component))
        gmm = GaussianMixture(n_comp, covariance_type="full", reg_covar=1e-4, random_state=seed,
                              max_iter=200).fit(mine)
        w = np.zeros(m)
        w[:n_comp] = gmm.weights_
        weights[k] = w / w.sum()
        means[k, :n_comp] = gmm.means_
        trils[k, :n_comp] = np.linalg.cholesky(gmm.covariances_)
        fitted[k] = True
    return {"latent_weights": torch.as_tensor(weights).float(), "latent_means": torch.as_tensor(means).float(),
            "latent_tril": torch.as_tensor(trils).float(), "latent_fitted": torch.as_tensor(fitted)}


@torch.no_grad()
def _residual_parts(module: ConditionalVAE, x: torch.Tensor, y: torch.Tensor,
                    batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(e, b) on the CPU: e (N, H, W, C) = L_p^-1 (t - loc(mu(x, k), k)) per pixel, b (N, H, W, C) its brightness."""
    was_training = module.training
    module.eval()
    dev = module.transform.center.device
    res, bright = [], []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size].to(dev), y[start : start + batch_size].to(dev)
        t = module.to_model_units(xb)
        mu, _ = module._encode_t(t, module.condition(yb).to(t.dtype))
        dist = module.decode(mu, yb)
        loc = module.location(dist)
        resid = t.permute(0, 2, 3, 1) - loc  # (B, H, W, C)
        tril = module.pixel_tril(dist)  # standardised by the decoder's own pixel scales
        res.append(torch.linalg.solve_triangular(tril, resid.unsqueeze(-1), upper=False).squeeze(-1).cpu())
        bright.append(brightness(loc).cpu())
    module.train(was_training)
    h, w = module.size
    if not res:
        return torch.zeros(0, h, w, module.in_channels), torch.zeros(0, h, w, module.in_channels)
    return torch.cat(res), torch.cat(bright)


def _fit_amplitude(r: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, n_conditions: int) -> torch.Tensor:
    """resid_amp (K, C, nb): RMS of the residuals r (N, H, W, C) of condition k, channel c, over pixels whose
    brightness b (N, H, W, C) lies near knot j (linear weights between the two nearest knots); knots with less
    than 200 pixels' weight take the nearest filled knot's value; a condition without pixels keeps 1."""
    nb, c = len(AMPLITUDE_KNOTS), r.shape[-1]
    amp = torch.ones(n_conditions, c, nb)
    labels = labels.long().cpu()
    for k in range(n_conditions):
        sel = labels == k
        if not bool(sel.any()):
            continue
        for ch in range(c):
            i, f = _knot_position(b[sel, ..., ch].double().flatten())
            r2 = r[sel, ..., ch].double().flatten() ** 2
            mass = torch.bincount(i - 1, 1 - f, nb) + torch.bincount(i, f, nb)  # (nb,)
            ms = (torch.bincount(i - 1, (1 - f) * r2, nb) + torch.bincount(i, f * r2, nb)) / mass.clamp_min(1e-12)
            ok = mass >= 200
            if not bool(ok.any()):
                continue
            filled = torch.nonzero(ok).squeeze(1)
            nearest = filled[(torch.arange(nb)[:, None] - filled[None]).abs().argmin(1)]
            amp[k, ch] = ms[nearest].sqrt().clamp_min(1e-6).float()
    return amp


def residuals(module: ConditionalVAE, x: torch.Tensor, y: torch.Tensor, resid_amp: torch.Tensor,
              batch_size: int = 1024) -> torch.Tensor:
    """The residuals the residual model is fitted to, e (N, H, W, C) on the CPU (channels last).

    r = t - loc(mu(x, k), k) in model units for stamps x (N, C, H, W) in data units and conditions y
    (N,), each pixel standardised by the decoder's scale factor there, L_p^-1 r_p (`pixel_tril`),
    then divided per channel by the condition's amplitude at the pixel's brightness.
    """
    r, b = _residual_parts(module, x, y, batch_size)
    return r / _amplitude(resid_amp, y.long().cpu(), b).to(r.dtype) if len(r) else r


@torch.no_grad()
def fit_residuals(module: ConditionalVAE, x: torch.Tensor, y: torch.Tensor,
                  config: PosthocConfig | None = None) -> dict[str, torch.Tensor]:
    """Per condition k, a low-rank-plus-block-diagonal Gaussian for the standardised residuals e (`residuals`).

    The per-pixel decoder distributions draw every pixel independently of its neighbours, while the
    noise of a PSF-matched difference is correlated over the matching kernel; this model keeps the
    correlations: e ~ N(m_k, U_k S_k^2 U_k^T + blockdiag_p(B_kp)), with m_k the mean, U_k S_k the
    top `noise_rank` principal directions of the centred e (SVD, sample covariance with N_k - 1) and
    B_kp the C x C sample covariance of the channels of pixel p minus the low-rank part's
    (eigenvalues clipped at 1e-8; stored as Cholesky factors `resid_tril`). The amplitude
    `resid_amp` (K, C, nb) is the residual RMS per condition and channel at each brightness knot
    (`_fit_amplitude`), so the noise grows with the location's brightness the way the residuals do.
    A condition with fewer than 2 stamps stays unfitted.
    """
    config = config or PosthocConfig()
    if x.ndim != 4 or len(x) != len(y):
        raise ValueError(f"expected x (N, C, H, W) and y (N,) of one N; got {tuple(x.shape)}, {tuple(y.shape)}")
    k_all, c = module.n_classes, module.in_channels
    h, w = module.size
    n_pix = h * w * c
    rank = int(min(config.noise_rank, n_pix))
    r_all, bright = _residual_parts(module, x, y, config.batch_size)
    labels = y.detach().cpu()
    amp = _fit_amplitude(r_all, bright, labels, k_all)
    r_all = r_all / _amplitude(amp, labels.long(), bright).to(r_all.dtype)
    r_all = r_all.flatten(1).double()  # (N, P)
    out = {"resid_mean": torch.zeros(k_all, n_pix), "resid_factor": torch.zeros(k_all, n_pix, rank),
           "resid_tril": torch.eye(c).repeat(k_all, h * w, 1, 1), "resid_fitted": torch.zeros(k_all, dtype=torch.bool),
           "resid_amp": amp}
    for k in range(k_all):
        r = r_all[labels == k]
        if len(r) < 2:
            continue
        mean = r.mean(0)
        centred = (r - mean) / math.sqrt(len(r) - 1)  # (N_k, P): covariance = centred^T centred
        top = min(rank, len(r) - 1)
        factor = torch.zeros(r.shape[1], rank, dtype=torch.float64)
        if top > 0:
            _, sv, vh = torch.linalg.svd(centred, full_matrices=False)
            factor[:, :top] = vh[:top].T * sv[:top]  # (P, top): U S
        # remainder per pixel: the C x C sample covariance of its channels minus the low-rank part's,
        # made positive definite by clipping eigenvalues at 1e-8
        blocks = centred.view(len(r), -1, c)  # (N_k, H W, C)
        fblocks = factor.view(-1, c, rank)  # (H W, C, r)
        rest = torch.einsum("npc,npd->pcd", blocks, blocks) - fblocks @ fblocks.transpose(1, 2)  # (H W, C, C)
        evals, evecs = torch.linalg.eigh(rest)
        rest = (evecs * evals.clamp_min(1e-8).unsqueeze(-2)) @ evecs.transpose(1, 2)
        out["resid_mean"][k] = mean.float()
        out["resid_factor"][k] = factor.float()
        out["resid_tril"][k] = torch.linalg.cholesky(rest).float()
        out["resid_fitted"][k] = True
    return out


# ---------------------------------------------------------------------- loading
def load_sampling(model_dir: str | os.PathLike, module, model_kwargs: dict | None = None) -> SamplingModels:
    """The sampling models of a generator directory: `sampling.safetensors`, or the buffers of an older weights file.

    A directory with neither loads with every condition weighted 1, temperatures 1 and nothing fitted
    (the sampler then falls back to the prior and the decoder's own noise). `model_kwargs` (config.json)
    tells how an older file's residual model was fitted; one this sampler cannot draw from is refused
    with the command that refits it.
    """
    path = Path(model_dir) / SAMPLING_FILE
    k = module.n_classes
    if path.is_file():
        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
            raise StampFileError(path, None, "a safetensors file of sampling models", f"an unreadable file ({exc})") \
                from exc
        source = path
    else:
        from hits_stamps.training.modeldir import WEIGHTS

        weights = Path(model_dir) / WEIGHTS
        state = load_file(str(weights)) if weights.is_file() else {}
        state = {n: v for n, v in state.items() if n in ("condition_weight", "condition_temperature", *_LATENT,
                                                         *_RESIDUAL, "resid_standardized", "resid_amp_fitted")}
        source = weights
        _check_legacy(model_dir, state, model_kwargs or {})
    out = SamplingModels(condition_weight=state.get("condition_weight", torch.ones(k)).float(),
                         condition_temperature=state.get("condition_temperature", torch.ones(k)).float())
    if all(n in state for n in _LATENT):
        out.latent = {n: state[n] for n in _LATENT}
    if all(n in state for n in _RESIDUAL):
        out.residual = {n: state[n] for n in _RESIDUAL}
    for name, tensor in (("condition_weight", out.condition_weight), *out.latent.items(), *out.residual.items()):
        if tensor.shape[:1] != (k,):
            raise StampFileError(source, name, f"one row per condition of the generator ({k})",
                                 f"shape {tuple(tensor.shape)}")
    return out


def _check_legacy(model_dir, state: dict[str, torch.Tensor], kwargs: dict) -> None:
    """Refuse sampling buffers of an older weights file that were fitted with options since removed."""
    if not bool(state.get("resid_fitted", torch.zeros(1, dtype=torch.bool)).any()):
        return
    removed = []
    if not bool(state.get("resid_standardized", torch.tensor(False))):
        removed.append("residual_units='model'")
    if kwargs.get("amplitude_from", "all") != "all":
        removed.append(f"amplitude_from={kwargs['amplitude_from']!r}")
    if kwargs.get("linear_noise_channels"):
        removed.append(f"linear_noise_channels={kwargs['linear_noise_channels']!r}")
    if removed:
        raise HitsStampsError(
            f"{model_dir}: its residual model was fitted with {', '.join(removed)} (removed; it is in git history); "
            "refit it with hits_stamps.generation.sample.fit_sampling_models(model_dir, train_stamps)")
