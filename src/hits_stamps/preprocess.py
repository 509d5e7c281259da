"""Preprocessing: a named NaN policy and per-stamp per-channel scaling.

Policies for non-finite pixels (NaN, +inf, -inf; counted and reported as a warning, never silent):
- `zero`: the pixel is 0 in the scaled output (as ALeRCE's stamp classifier and braai do); the
  scaling statistics of its stamp and channel come from the finite pixels only;
- `median`: the pixel is replaced by the median of the finite pixels of the same stamp and
  channel before scaling (so it also takes part in the scaling statistics);
- `error`: refuse any stamp that has a non-finite pixel.
A stamp channel with no finite pixel at all cannot be scaled: under `zero`/`median` it becomes 0
(and the warning says how many such channels there were); under `error` it raises.

Scalings (each per stamp and per channel, so no statistics leak across stamps; x is one
(H, W) channel of one stamp, m = max |x| over that channel):
- `minmax`: (x - min) / (max - min), into [0, 1] (Deep-HiTS, Cabrera-Vives et al. 2017);
  a flat channel, max - min <= eps * m, becomes 0;
- `robust`: (x - median) / s with s = max(1.4826 * MAD, eps * m), clipped to +-`clip`
  (MAD = median |x - median|; 1.4826 * MAD estimates the standard deviation of Gaussian noise);
  an all-zero channel stays 0;
- `joint`: the image channels (template, science, difference) keep their flux ratios: each loses
  its own median (the background) and all three are divided by one number per stamp, the larger
  of the template's and the science image's peak above background, clipped to +-`clip`; a stamp
  whose peak is <= eps * m (m over the three channels) gives 0. Other channels (SNR) are scaled
  `minmax`. Per-channel scalings erase how large a difference is compared with the star under it,
  the quantity that separates a variable star's real change from a bright star's subtraction
  residual; `joint` keeps it. It needs the channels named (`fit` with channel names);
- `none`: pixels as they are (non-finite ones handled by the policy).
`eps` is relative to the channel's magnitude, so data in any unit (ADU, e-, erg/s/cm^2) scale alike.

A fitted `Preprocessor` also stores dataset-level statistics of the training set (per-channel
median and 1.4826 * MAD over all stamps) in `to_dict`; `from_dict(to_dict())` rebuilds a
preprocessor whose `transform` gives bit-identical output.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from hits_stamps.errors import HitsStampsError

NAN_POLICIES = ("zero", "median", "error")
SCALINGS = ("minmax", "robust", "joint", "none")
#: `joint` scaling: the channels that share one scale, and those whose peak sets it
JOINT_CHANNELS: tuple[str, ...] = ("template", "science", "difference")
JOINT_PEAK_CHANNELS: tuple[str, ...] = ("template", "science")
MAD_TO_STD = 1.4826  # 1 / Phi^-1(3/4): MAD of Gaussian noise times this is its standard deviation


@dataclass(frozen=True)
class PreprocessConfig:
    """How stamps become network inputs."""

    nan_policy: str = "zero"  # one of NAN_POLICIES
    scaling: str = "minmax"  # one of SCALINGS
    clip: float = 10.0  # robust scaling: clip standardised values to +-clip
    eps: float = 1e-6  # relative floor: spans / MADs below eps * max|x| of the stamp channel count as flat

    def __post_init__(self) -> None:
        if self.nan_policy not in NAN_POLICIES:
            raise HitsStampsError(f"nan_policy must be one of {NAN_POLICIES}; got {self.nan_policy!r}")
        if self.scaling not in SCALINGS:
            raise HitsStampsError(f"scaling must be one of {SCALINGS}; got {self.scaling!r}")
        if not self.clip > 0:
            raise HitsStampsError(f"clip must be > 0; got {self.clip!r}")
        if not 0 <= self.eps < 1:
            raise HitsStampsError(f"eps must be in [0, 1); got {self.eps!r}")


def _check_images(images, what: str = "images") -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 4:
        raise HitsStampsError(f"{what}: expected shape (N, H, W, C); found shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise HitsStampsError(f"{what}: expected real-valued pixels; found dtype {x.dtype}")
    return x.astype(np.float32, copy=False)


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
        """Record channel names and per-channel median / 1.4826 * MAD over all finite pixels."""
        images = _check_images(images)
        c = images.shape[-1]
        if channels is not None and len(channels) != c:
            raise HitsStampsError(f"channels: expected {c} names to match the images; found {len(channels)}")
        self.channels_ = tuple(str(ch) for ch in channels) if channels else tuple(f"ch{i}" for i in range(c))
        if self.config.scaling == "joint":
            joint_indices(self.channels_)  # refuses channels without the names it needs
        flat = images.reshape(-1, c)
        finite = np.isfinite(flat)
        med, scl = [], []
        for i in range(c):
            vals = flat[finite[:, i], i]
            if vals.size == 0:  # no finite pixel in the whole training set for this channel
                med.append(0.0)
                scl.append(0.0)
                continue
            m = float(np.median(vals))
            med.append(m)
            scl.append(float(MAD_TO_STD * np.median(np.abs(vals - m))))
        self.channel_median_, self.channel_scale_ = med, scl
        return self

    def transform(self, images: np.ndarray, report: bool = True, source: str | None = None) -> np.ndarray:
        """(N, H, W, C) -> (N, C, H, W) float32, finite everywhere; the input is not modified.

        `report` warns with the count of non-finite pixels handled; `source` (e.g. a file name)
        is named in errors and warnings. `last_nan_count_` keeps the count of the last call.
        """
        x = _check_images(images, f"{source} [images]" if source else "images")
        if self.channels_ is not None and x.shape[-1] != len(self.channels_):
            raise HitsStampsError(
                f"{source + ': ' if source else ''}stamps have {x.shape[-1]} channels; this model was "
                f"fitted on {len(self.channels_)} ({', '.join(self.channels_)})"
            )
        nan = handle_nans(x, self.config.nan_policy, report=report, source=source,
                          channels=self.channels_)
        self.last_nan_count_ = int(nan.nan_count)
        joint = joint_indices(self.channels_) if self.config.scaling == "joint" else None
        out = scale(nan.values, self.config.scaling, clip=self.config.clip, eps=self.config.eps, mask=nan.mask,
                    joint=joint)
        if nan.mask is not None:
            out = np.where(nan.mask, np.float32(0.0), out)  # `zero`: missing pixels are 0 in scaled units
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))  # (N, C, H, W)

    def to_dict(self) -> dict:
        """JSON-ready state; `Preprocessor.from_dict` rebuilds the exact transform."""
        return {
            "config": asdict(self.config),
            "channels": list(self.channels_) if self.channels_ else None,
            "channel_median": self.channel_median_,
            "channel_scale": self.channel_scale_,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessor:
        if not isinstance(d, dict) or "config" not in d:
            raise HitsStampsError(f"preprocessing state: expected a dict with a 'config' entry; found {d!r:.80}")
        unknown = set(d) - {"config", "channels", "channel_median", "channel_scale"}
        if unknown:
            raise HitsStampsError(f"preprocessing state: unknown keys {sorted(unknown)}")
        known = {f.name for f in fields(PreprocessConfig)}
        bad = set(d["config"]) - known
        if bad:
            raise HitsStampsError(f"preprocessing config: unknown keys {sorted(bad)}; expected some of {sorted(known)}")
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


def handle_nans(
    images: np.ndarray,
    policy: str,
    report: bool = True,
    source: str | None = None,
    channels: tuple[str, ...] | None = None,
) -> _NanResult:
    """Apply a NaN policy to (N, H, W, C) images; returns new arrays (the input is never modified).

    Under `error` a non-finite pixel raises a HitsStampsError naming the source, the field
    (`images`), what was expected and what was found (counts, the first stamp and channel).
    Under `zero`/`median` a warning reports the counts unless `report=False`.
    """
    if policy not in NAN_POLICIES:
        raise HitsStampsError(f"nan_policy must be one of {NAN_POLICIES}; got {policy!r}")
    bad = ~np.isfinite(images)
    count = int(bad.sum())
    if count == 0:
        return _NanResult(images, None, 0)
    bad_stamps = bad.any(axis=(1, 2, 3))
    n_stamps = int(bad_stamps.sum())
    empty = bad.all(axis=(1, 2))  # (N, C): stamp channels with no finite pixel
    n_empty = int(empty.sum())
    where = f"{source} [images]" if source else "images"
    if policy == "error":
        first = int(np.flatnonzero(bad_stamps)[0])
        ch = int(np.flatnonzero(bad[first].any(axis=(0, 1)))[0])
        ch_name = channels[ch] if channels and ch < len(channels) else str(ch)
        all_nan = f"; {n_empty} stamp channels have no finite pixel" if n_empty else ""
        raise HitsStampsError(
            f"{where}: expected finite pixels (nan_policy 'error'); found {count} non-finite pixels in "
            f"{n_stamps} stamps (first: stamp {first}, channel {ch_name}){all_nan}; "
            "use nan_policy 'zero' or 'median' to replace them"
        )
    if report:
        all_nan = f"; {n_empty} stamp channels had no finite pixel and are all 0" if n_empty else ""
        warnings.warn(
            f"{where}: {count} non-finite pixels in {n_stamps} of {len(images)} stamps replaced "
            f"(nan_policy {policy!r}){all_nan}",
            stacklevel=3,
        )
    rows = np.flatnonzero(bad_stamps)  # only stamps with a bad pixel need a median
    filled = np.array(images, dtype=np.float32, copy=True)
    sub = np.where(bad[rows], np.nan, filled[rows])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN channels: handled just below
        med = np.nanmedian(sub, axis=(1, 2), keepdims=True)  # (n_bad, 1, 1, C)
    med = np.where(np.isfinite(med), med, np.float32(0.0)).astype(np.float32)
    filled[rows] = np.where(bad[rows], med, sub)
    return _NanResult(filled, bad if policy == "zero" else None, count)


def _channel_stat(x: np.ndarray, mask: np.ndarray | None, fn, nanfn) -> np.ndarray:
    """fn over (H, W) per stamp and channel -> (N, 1, 1, C); masked pixels excluded via nanfn."""
    out = fn(x, axis=(1, 2), keepdims=True)
    if mask is not None:
        rows = np.flatnonzero(mask.any(axis=(1, 2, 3)))
        if rows.size:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-masked channel -> NaN -> output 0
                out[rows] = nanfn(np.where(mask[rows], np.nan, x[rows]), axis=(1, 2), keepdims=True)
    return out


def joint_indices(channels: tuple[str, ...] | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(indices of JOINT_CHANNELS, indices of JOINT_PEAK_CHANNELS) in `channels`, or an error naming them."""
    names = list(channels or ())
    missing = [c for c in JOINT_CHANNELS if c not in names]
    if missing:
        raise HitsStampsError(f"scaling 'joint' needs channels named {', '.join(JOINT_CHANNELS)}; "
                              f"found {', '.join(names) if names else 'no channel names'}")
    return tuple(names.index(c) for c in JOINT_CHANNELS), tuple(names.index(c) for c in JOINT_PEAK_CHANNELS)


def scale(
    images: np.ndarray,
    method: str,
    clip: float = 10.0,
    eps: float = 1e-6,
    mask: np.ndarray | None = None,
    joint: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
) -> np.ndarray:
    """Per-stamp scaling of (N, H, W, C) images; returns a new float32 array.

    `mask` (N, H, W, C), optional: True for pixels to leave out of the statistics (their output
    values are meaningless; `Preprocessor` sets them to 0). `joint` (method `joint` only): the
    channel indices that share a scale and those whose peak sets it (`joint_indices`). See the
    module docstring for formulas.
    """
    x = np.asarray(images, dtype=np.float32)
    if method == "none":
        return x.copy()
    if method not in SCALINGS:
        raise HitsStampsError(f"scaling must be one of {SCALINGS}; got {method!r}")
    if method == "joint":
        if joint is None:
            raise HitsStampsError("scaling 'joint' needs the indices of the channels that share a scale")
        return _scale_joint(x, clip, eps, mask, *joint)
    with np.errstate(invalid="ignore"):
        mag = _channel_stat(np.abs(x), mask, np.max, np.nanmax)  # (N, 1, 1, C)
    floor = np.float32(eps) * mag
    if method == "minmax":
        lo = _channel_stat(x, mask, np.min, np.nanmin)
        span = _channel_stat(x, mask, np.max, np.nanmax) - lo
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(span > floor, (x - lo) / np.where(span > 0, span, 1), 0.0)
        return out.astype(np.float32)
    med = _channel_stat(x, mask, np.median, np.nanmedian)
    mad = _channel_stat(np.abs(x - med), mask, np.median, np.nanmedian)
    s = np.maximum(np.float32(MAD_TO_STD) * mad, floor)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(s > 0, (x - med) / np.where(s > 0, s, 1), 0.0)
    return np.clip(z, -clip, clip).astype(np.float32)


def _scale_joint(x: np.ndarray, clip: float, eps: float, mask: np.ndarray | None,
                 shared: tuple[int, ...], peak_of: tuple[int, ...]) -> np.ndarray:
    """`joint` scaling (module docstring): `shared` channels over one per-stamp peak, the rest minmax."""
    shared_l, peak_l = list(shared), list(peak_of)
    others = [c for c in range(x.shape[-1]) if c not in shared]
    out = np.empty_like(x)
    if others:
        sub_mask = None if mask is None else mask[..., others]
        out[..., others] = scale(x[..., others], "minmax", clip=clip, eps=eps, mask=sub_mask)
    xs = x[..., shared_l]
    ms = None if mask is None else mask[..., shared_l]
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-masked channels: NaN statistics, output 0
        bg = _channel_stat(xs, ms, np.median, np.nanmedian)  # (N, 1, 1, k)
        y = xs - bg
        where_peak = [shared_l.index(c) for c in peak_l]
        peak = np.nanmax(_channel_stat(y, ms, np.max, np.nanmax)[..., where_peak], axis=-1, keepdims=True)
        mag = np.nanmax(_channel_stat(np.abs(xs), ms, np.max, np.nanmax), axis=-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    ok = peak > np.float32(eps) * np.where(np.isfinite(mag), mag, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(ok, y / np.where(ok, peak, 1.0), 0.0)
    z = np.where(np.isfinite(z), z, 0.0)
    out[..., shared_l] = np.clip(z, -clip, clip)
    return out.astype(np.float32)
