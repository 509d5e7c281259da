"""What the two generators (`cvae`, `diffusion`) share: the invertible input transform and the conditions.

Conditions (`condition`): "class" conditions on the label alone (y in {bogus, real}); "kind"
conditions on the stamp kind (e.g. sn, variable, cosmic_ray, bad_subtraction), one condition per
kind listed in `kinds`, each belonging to the class in `kind_labels`. `condition_label` (K,) maps a
condition to its class. The registry value "auto" is resolved on the training stamps by
`resolve_condition` (the specs' `data_kwargs`): "kind" when the training stamps have more kinds
than classes and each kind belongs to one class, else "class".

Input transform T (`ChannelTransform`, exactly invertible; generated stamps come back in the
training file's units)::

    t = asinh((x - center_c) / scale_c)       ("asinh", default), or
    t = (x - center_c) / scale_c              ("standardize")
    x = center_c + scale_c * sinh(t)          (inverse, resp. center_c + scale_c * t)

`center_c` is the median of all training pixels of channel c. For "asinh", `scale_c` is
`asinh_softening` (default 5) x the typical noise of channel c: the median over training stamps of
1.4826 x the within-stamp median absolute deviation. Pixel noise then stays in the nearly linear
part of asinh (a 3-sigma pixel is compressed by about 5%), so a Gaussian in t is close to Gaussian
noise in data units, while bright stars (thousands of sigma) are compressed logarithmically
(Lupton, Gunn & Szalay 1999). For "standardize", `scale_c` is 1.4826 x the MAD of all pixels. The
statistics are buffers in the state dict, fitted by the training loop (`fit_input_stats`) before
training; the recipes therefore use `scaling="none"`: the loop's per-stamp scalings cannot be
inverted for new samples.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

CONDITIONS = ("class", "kind")  # what a generator is built with; "auto" is resolved on the data (resolve_condition)
INPUT_TRANSFORMS = ("asinh", "standardize")
N_CLASSES = 2  # labels: 0 bogus, 1 real


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


class Conditions:
    """Mixin of both generators: the conditions a generator is built with and the condition of a stamp.

    `_init_conditions` sets `condition_on` ("class" | "kind"), `kinds` (K names for "kind", else ()),
    `n_classes` (K, the number of conditions) and the buffer `condition_label` (K,): each condition's class.
    """

    def _init_conditions(self, condition: str, kinds, kind_labels) -> None:
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
            if any(v < 0 or v >= N_CLASSES for v in kind_labels):
                raise ValueError(f"kind_labels must be class labels in 0..{N_CLASSES - 1}; got {kind_labels}")
            self.kinds: tuple[str, ...] = tuple(str(k) for k in kinds)
            labels = kind_labels
        else:
            self.kinds = ()
            labels = list(range(N_CLASSES))
        self.n_classes = len(labels)  # the number of conditions
        self.register_buffer("condition_label", torch.tensor(labels, dtype=torch.long))  # (K,)

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


def resolve_condition(train, kwargs: dict) -> dict:
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
