"""Stamp geometry and channels: make a file's stamps into the stamps a model was trained on.

A model stores its input size (H, W) and channel names. `plan_input` compares a file's stamps
with them and returns an `InputAdapter` (or refuses with a one-line error); `InputAdapter.apply`
does the work on (N, H, W, C) arrays, never modifying its input:

- channels are matched by name, never by position. Names are compared after lower-casing and
  mapping common aliases (`ref`/`reference` -> template, `sci`/`new` -> science,
  `diff`/`sub` -> difference; see `CHANNEL_ALIASES`). A file in another channel order is
  reordered; a file lacking a channel the model needs is refused, naming both channel lists;
  unnamed channels (`ch0`, `ch1`, ...) only match a model trained on unnamed channels.
- an `snr` channel the file lacks is built from its `difference`: snr = difference / sigma, with
  sigma = 1.4826 * MAD of the finite difference pixels of that stamp (a robust estimate of the
  noise of the difference image; the stamp is mostly sky). A stamp whose sigma is 0 or undefined
  gets an all-NaN snr channel (handled by the model's NaN policy, never invented). Packets that
  carry a variance plane (Rubin) already give snr = difference / sqrt(variance) when read.
  sigma is computed on the file's full stamp, before any crop.
- size: a larger stamp is cropped about its centre, pixel ((H - h) // 2, (W - w) // 2) being the
  first kept; a smaller one is padded with NaN (missing pixels) around it, so no flux is invented.
  The model's NaN policy then treats the padding as it treats any missing pixel.

Nothing here resamples: the pixel scale is the file's (a ZTF pixel is 1.01", a HiTS pixel 0.27").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hits_stamps.errors import HitsStampsError
from hits_stamps.preprocess import MAD_TO_STD

#: canonical channel name -> accepted spellings (lower-case)
CHANNEL_ALIASES: dict[str, tuple[str, ...]] = {
    "template": ("template", "ref", "reference", "tmpl", "temp"),
    "science": ("science", "sci", "new", "image"),
    "difference": ("difference", "diff", "sub", "subtraction"),
    "snr": ("snr", "significance", "sig"),
}
_CANON = {alias: name for name, aliases in CHANNEL_ALIASES.items() for alias in aliases}
_UNNAMED = re.compile(r"^ch\d+$")


def canonical_channel(name: str) -> str:
    """The canonical name of a channel name (`"Sci"` -> `"science"`); unknown names lower-cased."""
    key = str(name).strip().lower()
    return _CANON.get(key, key)


def _unnamed(names: Sequence[str]) -> bool:
    return all(_UNNAMED.match(str(n)) for n in names)


@dataclass(frozen=True)
class InputAdapter:
    """Turns (N, H, W, C_file) stamps into (N, h, w, C_model) stamps; see the module docstring."""

    source_shape: tuple[int, int, int]  # (H, W, C) of the file's stamps
    target_size: tuple[int, int]  # (h, w) of the model
    take: tuple[int, ...]  # per model channel: index of the file channel, or -1 for the built snr
    snr_from: int | None  # index of the file's difference channel when snr is built, else None
    notes: tuple[str, ...] = ()  # what is done, for the user (empty when nothing is)

    @property
    def identity(self) -> bool:
        """True when the stamps pass unchanged."""
        h, w, c = self.source_shape
        return (h, w) == self.target_size and self.take == tuple(range(c))

    def apply(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C_file) -> (N, h, w, C_model) float32; a new array unless `identity`."""
        x = np.asarray(images)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.source_shape:
            raise HitsStampsError(f"images: expected shape (N, {', '.join(map(str, self.source_shape))}); "
                                  f"found {x.shape}")
        if self.identity:
            return x
        planes = []
        for idx in self.take:
            planes.append(snr_from_difference(x[..., self.snr_from]) if idx < 0 else x[..., idx])
        return fit_size(np.stack(planes, axis=-1).astype(np.float32, copy=False), self.target_size)


def snr_from_difference(diff: np.ndarray) -> np.ndarray:
    """(N, H, W) difference -> (N, H, W) float32 snr = diff / (1.4826 * MAD over the stamp's finite pixels).

    Stamps whose noise estimate is 0 or undefined (no finite pixel) give NaN everywhere.
    """
    d = np.asarray(diff, dtype=np.float32)
    out = np.full(d.shape, np.nan, dtype=np.float32)
    for i in range(len(d)):
        vals = d[i][np.isfinite(d[i])]
        if vals.size == 0:
            continue
        sigma = MAD_TO_STD * float(np.median(np.abs(vals - np.median(vals))))
        if sigma > 0:
            out[i] = d[i] / np.float32(sigma)
    return out


def fit_size(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop or NaN-pad (N, H, W, C) stamps to (N, h, w, C); per axis independently.

    Crop keeps rows (H - h) // 2 ... (H - h) // 2 + h - 1; a pad puts the stamp at offset
    (h - H) // 2 in a NaN canvas. Returns the input itself when the size already matches.
    """
    x = np.asarray(images)
    h, w = int(size[0]), int(size[1])
    if x.shape[1:3] == (h, w):
        return x
    out = np.full((x.shape[0], h, w, x.shape[3]), np.nan, dtype=np.float32)
    src, dst = [], []
    for have, want in ((x.shape[1], h), (x.shape[2], w)):
        if have >= want:
            a = (have - want) // 2
            src.append(slice(a, a + want))
            dst.append(slice(0, want))
        else:
            a = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(a, a + have))
    out[:, dst[0], dst[1], :] = x[:, src[0], src[1], :]
    return out


def plan_input(
    source_shape: Sequence[int],
    source_channels: Sequence[str],
    target_size: Sequence[int],
    target_channels: Sequence[str],
    source: str = "stamps",
    model: str = "the model",
) -> InputAdapter:
    """How to turn a file's stamps (H, W, C) with `source_channels` into the model's; refuses clearly.

    `source` (e.g. the file name) and `model` (e.g. its directory) are named in errors and notes.
    """
    h, w, c = (int(v) for v in source_shape)
    th, tw = (int(v) for v in target_size)
    src = [str(s) for s in source_channels]
    tgt = [str(t) for t in target_channels]
    if len(src) != c:
        raise HitsStampsError(f"{source} [channels]: expected {c} names; found {len(src)}")
    notes: list[str] = []
    if src == tgt:
        take = tuple(range(c))
        snr_from = None
    else:
        if _unnamed(src) != _unnamed(tgt):
            raise HitsStampsError(
                f"{source} [channels]: expected channels named like {model}'s ({', '.join(tgt)}) to match them by "
                f"name; found {', '.join(src)} (name the file's channels, e.g. FITS CHNAMES or the `channels` array)"
            )
        canon_src = [canonical_channel(s) for s in src]
        dup = sorted({n for n in canon_src if canon_src.count(n) > 1})
        if dup:
            raise HitsStampsError(f"{source} [channels]: expected distinct channel names; found {dup} more than once "
                                  f"in {', '.join(src)}")
        picks: list[int] = []
        snr_from = None
        for name in tgt:
            key = canonical_channel(name)
            if key in canon_src:
                picks.append(canon_src.index(key))
            elif key == "snr" and "difference" in canon_src:
                snr_from = canon_src.index("difference")
                picks.append(-1)
                notes.append("snr built from the difference / (1.4826 * MAD of the stamp's difference)")
            else:
                raise HitsStampsError(
                    f"{source} [channels]: {model} needs channel {name!r} (channels {', '.join(tgt)}); "
                    f"found channels {', '.join(src)}"
                )
        take = tuple(picks)
        mapped = [src[i] if i >= 0 else "snr (built)" for i in take]
        if [i for i in take if i >= 0] != list(range(c)) or snr_from is not None:
            notes.insert(0, f"channels taken by name: {', '.join(mapped)} -> {', '.join(tgt)}")
    if (h, w) != (th, tw):
        verb = "cropped" if h >= th and w >= tw else "padded with NaN" if h <= th and w <= tw else "cropped/padded"
        notes.append(f"stamps {verb} about the centre from {h}x{w} to {th}x{tw}")
    return InputAdapter((h, w, c), (th, tw), take, snr_from, tuple(notes))


def plan_for_model(model, source_shape: Sequence[int], source_channels: Sequence[str],
                   source: str = "stamps") -> InputAdapter:
    """`plan_input` against a trained model's stored input size and channel names."""
    cfg = model.config["input"]
    return plan_input(source_shape, source_channels, cfg["size"], cfg["channels"], source=source,
                      model=f"model {model.path}")


__all__ = ["CHANNEL_ALIASES", "InputAdapter", "canonical_channel", "fit_size", "plan_for_model", "plan_input",
           "snr_from_difference"]
