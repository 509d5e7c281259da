"""Preprocessing: a named NaN policy and per-stamp per-channel scaling.

Policies for non-finite pixels (counted and reported, never silent):
- `zero`: replace with 0 (as ALeRCE's stamp classifier and braai do), after scaling;
- `median`: replace with the median of the finite pixels of the same stamp and channel;
- `error`: refuse any stamp that has non-finite pixels.
A stamp whose channel has no finite pixel at all cannot be scaled: under `zero`/`median` that
channel becomes 0; under `error` it raises.

Scalings (each per stamp and per channel, so no statistics leak across stamps):
- `minmax`: (x - min) / (max - min) into [0, 1] (Deep-HiTS); a flat channel becomes 0;
- `robust`: (x - median) / (1.4826 * MAD), clipped to +-`clip` (MAD floored at `eps`);
- `none`: pixels as they are.
A fitted `Preprocessor` also stores dataset-level statistics (per-channel medians and scales of the
training set) in `to_dict`, so a model directory rebuilds the exact transform.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from hits_stamps.errors import HitsStampsError

NAN_POLICIES = ("zero", "median", "error")
SCALINGS = ("minmax", "robust", "none")


@dataclass(frozen=True)
class PreprocessConfig:
    """How stamps become network inputs."""

    nan_policy: str = "zero"  # one of NAN_POLICIES
    scaling: str = "minmax"  # one of SCALINGS
    clip: float = 10.0  # robust scaling: clip standardised values to +-clip
    eps: float = 1e-6  # floor for (max - min) and for the MAD

    def __post_init__(self) -> None:
        if self.nan_policy not in NAN_POLICIES:
            raise HitsStampsError(f"nan_policy must be one of {NAN_POLICIES}; got {self.nan_policy!r}")
        if self.scaling not in SCALINGS:
            raise HitsStampsError(f"scaling must be one of {SCALINGS}; got {self.scaling!r}")


@dataclass
class Preprocessor:
    """Turns (N, H, W, C) stamps into (N, C, H, W) float32 network inputs.

    `fit` records the channel names and dataset statistics of the training set; `transform` is
    per-stamp, so it needs no fitted state beyond the config, but refuses stamps whose channel
    count differs from the training set's.
    """

    config: PreprocessConfig = field(default_factory=PreprocessConfig)
    channels_: tuple[str, ...] | None = None
    channel_median_: list[float] | None = None
    channel_scale_: list[float] | None = None
    last_nan_count_: int = 0

    def fit(self, images: np.ndarray, channels: tuple[str, ...] | None = None) -> Preprocessor:
        images = np.asarray(images, dtype=np.float32)
        c = images.shape[-1]
        self.channels_ = tuple(channels) if channels else tuple(f"ch{i}" for i in range(c))
        flat = images.reshape(-1, c)
        self.channel_median_ = [float(np.nanmedian(flat[:, i])) for i in range(c)]
        self.channel_scale_ = [
            float(1.4826 * np.nanmedian(np.abs(flat[:, i] - self.channel_median_[i])))
            for i in range(c)
        ]
        return self

    def transform(self, images: np.ndarray, report: bool = True) -> np.ndarray:
        """(N, H, W, C) -> (N, C, H, W) float32, finite everywhere."""
        x = np.asarray(images, dtype=np.float32)
        if x.ndim != 4:
            raise HitsStampsError(f"images must have shape (N, H, W, C); got {x.shape}")
        if self.channels_ is not None and x.shape[-1] != len(self.channels_):
            raise HitsStampsError(
                f"stamps have {x.shape[-1]} channels; this model was fitted on "
                f"{len(self.channels_)} ({', '.join(self.channels_)})"
            )
        x = handle_nans(x, self.config.nan_policy, report=report)
        self.last_nan_count_ = int(x.nan_count)
        out = scale(x.values, self.config.scaling, clip=self.config.clip, eps=self.config.eps)
        if x.mask is not None:
            # `zero` policy: missing pixels are 0 in scaled units too
            out = np.where(x.mask, np.float32(0.0), out)
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "channels": list(self.channels_) if self.channels_ else None,
            "channel_median": self.channel_median_,
            "channel_scale": self.channel_scale_,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessor:
        unknown = set(d) - {"config", "channels", "channel_median", "channel_scale"}
        if unknown:
            raise HitsStampsError(f"unknown preprocessing keys {sorted(unknown)}")
        return cls(
            config=PreprocessConfig(**d["config"]),
            channels_=tuple(d["channels"]) if d.get("channels") else None,
            channel_median_=d.get("channel_median"),
            channel_scale_=d.get("channel_scale"),
        )


@dataclass
class _NanResult:
    values: np.ndarray  # (N, H, W, C) with non-finite replaced (by a placeholder for `zero`)
    mask: np.ndarray | None  # (N, H, W, C) True where the pixel was non-finite (`zero` only)
    nan_count: int


def handle_nans(images: np.ndarray, policy: str, report: bool = True) -> _NanResult:
    """Apply a NaN policy; returns new arrays (the input is never modified)."""
    if policy not in NAN_POLICIES:
        raise HitsStampsError(f"nan_policy must be one of {NAN_POLICIES}; got {policy!r}")
    bad = ~np.isfinite(images)
    count = int(bad.sum())
    if count == 0:
        return _NanResult(images, None, 0)
    n_stamps = int(bad.any(axis=(1, 2, 3)).sum())
    if policy == "error":
        first = int(np.flatnonzero(bad.any(axis=(1, 2, 3)))[0])
        raise HitsStampsError(
            f"{count} non-finite pixels in {n_stamps} stamps (first: stamp {first}) under "
            "nan_policy='error'; use nan_policy 'zero' or 'median' to replace them"
        )
    if report:
        warnings.warn(
            f"{count} non-finite pixels in {n_stamps} stamps replaced (nan_policy={policy!r})",
            stacklevel=3,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(np.where(bad, np.nan, images), axis=(1, 2), keepdims=True)
    med = np.where(np.isfinite(med), med, 0.0).astype(np.float32)
    filled = np.where(bad, med, images).astype(np.float32)
    return _NanResult(filled, bad if policy == "zero" else None, count)


def scale(images: np.ndarray, method: str, clip: float = 10.0, eps: float = 1e-6) -> np.ndarray:
    """Per-stamp, per-channel scaling of finite (N, H, W, C) images; returns a new array."""
    x = np.asarray(images, dtype=np.float32)
    if method == "none":
        return x.copy()
    if method == "minmax":
        lo = x.min(axis=(1, 2), keepdims=True)
        span = x.max(axis=(1, 2), keepdims=True) - lo
        return np.where(span > eps, (x - lo) / np.maximum(span, eps), 0.0).astype(np.float32)
    if method == "robust":
        med = np.median(x, axis=(1, 2), keepdims=True)
        mad = 1.4826 * np.median(np.abs(x - med), axis=(1, 2), keepdims=True)
        z = (x - med) / np.maximum(mad, eps)
        return np.clip(z, -clip, clip).astype(np.float32)
    raise HitsStampsError(f"scaling must be one of {SCALINGS}; got {method!r}")
