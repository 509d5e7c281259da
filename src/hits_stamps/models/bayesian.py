"""Bayesian (variational, Flipout) classifiers: the seed's network and a rotation-invariant Bayesian CNN.

Both return logits (B, 2) from one weight sample per call (see `hits_stamps.models.flipout`), and
are trained by minimising the negative ELBO per batch (`elbo_objective`). Monte-Carlo prediction
averages the softmax of several calls (`hits_stamps.uncertainty.mc_predict_proba`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hits_stamps.models.flipout import Conv2dFlipout, LinearFlipout, kl_divergence
from hits_stamps.models.registry import ModelSpec, ObjectiveOutput, Recipe, register

N_CLASSES = 2


def elbo_objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_train: int) -> ObjectiveOutput:
    """Per-batch share of the negative evidence lower bound (ELBO), with one weight sample w ~ q.

        -ELBO / N = (1/N) sum_{n=1}^{N} E_q[-log p(y_n | x_n, w)] + KL(q(w) || p(w)) / N
                 ~= nll_mean + kl_sum / n_train

    nll_mean = (1/B) sum_b -log softmax(f_w(x_b))[y_b] over the batch. This is the seed's binary
    cross-entropy on one-hot targets: for two softmax outputs p and 1-p, Keras'
    `binary_crossentropy` averages the per-output terms -[t log q + (1-t) log(1-q)], and both equal
    -log p_y. kl_sum is the analytic KL of all Flipout layers, summed (not averaged) over
    parameters; n_train is the number of training stamps. Deterministic layers of the model are
    point estimates and add no KL.

    x: (B, C, H, W), y: (B,) int64 -> loss (scalar), logits (B, 2), parts {"nll", "kl"} (kl in
    nats, unscaled).
    """
    logits = model(x)  # (B, 2)
    nll = F.cross_entropy(logits, y)
    kl = kl_divergence(model).to(nll.device)
    loss = nll + kl / n_train
    return ObjectiveOutput(loss, logits, {"nll": float(nll.detach()), "kl": float(kl.detach())})


class SeedBNN(nn.Module):
    """The seed report's Flipout network: Flatten, DenseFlipout(64, ReLU) x3, DenseFlipout(2).

    (B, C, H, W) -> logits (B, 2); the softmax is applied by the loss and by prediction.
    Initialised as TFP's DenseFlipout: loc ~ N(0, 0.1^2), rho ~ N(-3, 0.1^2), bias loc ~ N(0, 0.1^2),
    deterministic bias, N(0, prior_std^2) prior. For 21x21x4 input it has 242,626 parameters
    counted as TFP counts them (kernel loc + kernel scale + bias loc).
    """

    def __init__(
        self,
        in_channels: int = 4,
        size: tuple[int, int] = (21, 21),
        hidden: int = 64,
        depth: int = 3,
        prior_std: float = 1.0,
    ) -> None:
        super().__init__()
        n_in = in_channels * size[0] * size[1]
        widths = [n_in] + [hidden] * depth
        self.hidden = nn.ModuleList(
            LinearFlipout(a, b, prior_std=prior_std) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.out = LinearFlipout(widths[-1], N_CLASSES, prior_std=prior_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)  # (B, C*H*W)
        for layer in self.hidden:
            h = F.relu(layer(h))  # (B, hidden)
        return self.out(h)  # (B, 2)

    def count_parameters(self) -> int:
        """Kernel loc + kernel scale + bias loc of every layer (TFP's count)."""
        return sum(p.numel() for p in self.parameters())

    def mc_logits(self, x: torch.Tensor, n_samples: int) -> torch.Tensor:
        """Logits of `n_samples` independent weight samples for every stamp: (B, C, H, W) -> (S, B, 2).

        The same per-stamp distribution as `n_samples` calls of `forward`, drawn layer by layer from
        each layer's output moments (`LinearFlipout.sample_local`). The first layer's moments depend
        only on the stamp, so its two large matrix products run once, not once per sample.
        """
        b = x.shape[0]
        mean, var = self.hidden[0].moments(x.flatten(1))  # (B, hidden) each
        eps = torch.randn((n_samples, *mean.shape), dtype=mean.dtype, device=mean.device)
        h = F.relu(mean + var.sqrt() * eps).reshape(n_samples * b, -1)  # (S*B, hidden)
        for layer in self.hidden[1:]:
            h = F.relu(layer.sample_local(h))
        return self.out.sample_local(h).view(n_samples, b, -1)  # (S, B, 2)


GROUPS = {"c4": 4, "d4": 8, "none": 1}


def rot90(x: torch.Tensor, k: int) -> torch.Tensor:
    """`torch.rot90(x, k, dims=(-2, -1))` from flips and transposes (which ONNX exporters support)."""
    k = k % 4
    if k == 1:
        return x.flip(-1).transpose(-2, -1)
    if k == 2:
        return x.flip(-2, -1)
    if k == 3:
        return x.transpose(-2, -1).flip(-1)
    return x


def group_transforms(x: torch.Tensor, group: str) -> torch.Tensor:
    """Stack the symmetry transforms of a batch, transform-major.

    x: (B, C, H, W) -> (G*B, C, H, W) with G = 4 ("c4": rotations by 0, 90, 180, 270 degrees),
    8 ("d4": the rotations of x and of its left-right mirror) or 1 ("none"). Block g holds
    transform g of every stamp, so `out.view(G, B, ...)` regroups them.
    """
    if group == "none":
        return x
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"group {group!r} needs square stamps; got {tuple(x.shape[-2:])}")
    views = [rot90(x, k) for k in range(4)]
    if group == "d4":
        xf = torch.flip(x, dims=(-1,))
        views += [rot90(xf, k) for k in range(4)]
    return torch.cat(views)


class BayesRotInvCNN(nn.Module):
    """A Bayesian rotation-invariant CNN: the `rotinv-cnn` design with Flipout layers.

    (B, C, H, W) -> logits (B, 2). Every stamp is seen under the G symmetries of `group`
    (`group_transforms`: "c4" 4 rotations, "d4" rotations x mirror); one shared stack, for each width
    w in `widths`: conv3x3 (pad 1) [+ batch norm] + ReLU + 2x2 max pool (21 -> 10 -> 5 -> 2), turns
    every copy into a feature vector; the G vectors are averaged (cyclic average pooling, Dieleman
    et al. 2016; Reyes et al. 2018), then dense(hidden) + ReLU and dense(2).

    `bayesian` names the Flipout layers (the others are point estimates and add no KL):
      - "last": only the output layer (a Bayesian last layer);
      - "head": both dense layers after the pooling;
      - "all": the convolutions too.
    Flipout convolutions share their sign vectors across the G copies of a stamp (`n_tied=G`), so
    every Monte-Carlo sample, not only their average, is exactly invariant to the group.
    """

    def __init__(
        self,
        in_channels: int = 4,
        size: tuple[int, int] = (21, 21),
        widths: tuple[int, ...] | list[int] = (16, 32, 64),
        hidden: int = 64,
        group: str = "d4",
        batch_norm: bool = True,
        bayesian: str = "head",
        prior_std: float = 1.0,
    ) -> None:
        super().__init__()
        if group not in GROUPS:
            raise ValueError(f"group must be one of {sorted(GROUPS)}; got {group!r}")
        if bayesian not in ("last", "head", "all"):
            raise ValueError(f"bayesian must be 'last', 'head' or 'all'; got {bayesian!r}")
        h, w = int(size[0]), int(size[1])
        if group != "none" and h != w:
            raise ValueError(f"group {group!r} rotates stamps by 90 degrees and needs square stamps; got {h}x{w}")
        self.group, self.n_group = group, GROUPS[group]
        # Flipout layers start from torch's fan-in initialisation of loc (as nn.Conv2d/nn.Linear)
        # and scale softplus(-5) ~ 0.007, so training starts close to a deterministic network.
        flip = {"prior_std": prior_std, "loc_init_std": None, "rho_init": -5.0}
        layers: list[nn.Module] = []
        c = in_channels
        for width in widths:
            width = int(width)
            if bayesian == "all":
                layers.append(Conv2dFlipout(c, width, 3, padding=1, bias=not batch_norm, **flip))
            else:
                layers.append(nn.Conv2d(c, width, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = width, h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(
                f"bayes-cnn with {len(widths)} pooling stages needs stamps of at least {2 ** len(widths)} pixels; "
                f"got {size[0]}x{size[1]}"
            )
        self.stack = nn.ModuleList(layers)
        self.flat_dim = c * h * w
        if bayesian == "last":
            self.fc: nn.Module = nn.Linear(self.flat_dim, hidden)
        else:
            self.fc = LinearFlipout(self.flat_dim, hidden, **flip)
        self.out = LinearFlipout(hidden, N_CLASSES, **flip)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> group-averaged convolutional features (B, flat_dim)."""
        b, g = x.shape[0], self.n_group
        z = group_transforms(x, self.group)  # (G*B, C, H, W), transform-major
        for layer in self.stack:
            z = layer(z, n_tied=g) if isinstance(layer, Conv2dFlipout) else layer(z)
        return z.flatten(1).view(g, b, -1).mean(0)  # (B, flat_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> hidden activations (B, hidden), one weight sample."""
        return F.relu(self.fc(self.pooled(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))  # (B, 2) logits

    def mc_logits(self, x: torch.Tensor, n_samples: int) -> torch.Tensor:
        """Logits of `n_samples` weight samples for every stamp: (B, C, H, W) -> (S, B, 2).

        With deterministic convolutions ("last", "head") the convolutional stack and the pooling run
        once per stamp and only the dense Flipout layers are sampled, from their output moments
        (`LinearFlipout.sample_local`): the same per-stamp distribution as `n_samples` calls of
        `forward`, with independent samples. With Flipout convolutions ("all") it calls `forward`
        `n_samples` times (output pixels of a convolution share weights, so their noise is not
        independent and cannot be drawn from per-pixel moments).
        """
        if any(isinstance(m, Conv2dFlipout) for m in self.stack):
            return torch.stack([self(x) for _ in range(n_samples)])
        b = x.shape[0]
        z = self.pooled(x)  # (B, flat_dim), deterministic
        if isinstance(self.fc, LinearFlipout):
            mean, var = self.fc.moments(z)  # (B, hidden)
            eps = torch.randn((n_samples, *mean.shape), dtype=mean.dtype, device=mean.device)
            h = mean + var.sqrt() * eps  # (S, B, hidden)
        else:
            h = self.fc(z).expand(n_samples, b, -1)
        h = F.relu(h).reshape(n_samples * b, -1)  # (S*B, hidden)
        return self.out.sample_local(h).view(n_samples, b, -1)  # (S, B, 2)


register(
    ModelSpec(
        name="seed-bnn",
        task="bayesian-classifier",
        builder=SeedBNN,
        objective=elbo_objective,
        recipe=Recipe(optimizer="adam", lr=1e-4, batch_size=64, epochs=180, scaling="minmax"),
        description="The seed report's Flipout network: Flatten, DenseFlipout(64, ReLU) x3, DenseFlipout(2); "
        "242,626 parameters on 21x21x4 stamps.",
    )
)

register(
    ModelSpec(
        name="bayes-cnn",
        task="bayesian-classifier",
        builder=BayesRotInvCNN,
        objective=elbo_objective,
        # No weight decay: it would pull the Flipout scales' rho towards 0 (scale 0.69); the KL
        # term is the regulariser of the Bayesian layers.
        recipe=Recipe(optimizer="adam", lr=3e-3, batch_size=128, epochs=10, scaling="minmax", lr_schedule="cosine"),
        description="Bayesian rotation-invariant CNN: cyclic average pooling over the dihedral group (8 "
        "symmetries), batch norm, Flipout dense head; negative ELBO.",
    )
)
