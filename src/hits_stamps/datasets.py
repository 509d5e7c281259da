"""`make_synthetic_stamps`: a fast toy stamp generator for tests, examples and docs.

It needs no data files and takes milliseconds. Real stamps carry a new PSF-shaped source in the
science and difference channels; bogus stamps carry a dipole (misaligned star), a one-pixel spike
(cosmic ray / hot pixel) or pure noise. For realistic HiTS stamps use `hits_stamps.simulate`.
"""

from __future__ import annotations

import numpy as np

from hits_stamps.stamps import StampSet


def make_synthetic_stamps(
    n: int = 256,
    seed: int = 0,
    size: int = 21,
    channels: int = 4,
    real_fraction: float = 0.5,
    noise: float = 1.0,
) -> StampSet:
    """n toy stamps of (size, size, channels) with labels, `snr`, `kind` and ids.

    Channel order (for channels == 4): template, science, difference, snr. With other channel
    counts, channel 0 is the template, the last is the difference and the rest are science-like.
    """
    if n < 0 or size < 5 or channels < 2:
        raise ValueError(f"need n >= 0, size >= 5, channels >= 2; got {n}, {size}, {channels}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c0 = (size - 1) / 2
    labels = (rng.random(n) < real_fraction).astype(np.int64)
    sigma = rng.uniform(1.0, 2.0, n).astype(np.float32)[:, None, None]
    dx, dy = (rng.normal(0, 0.5, (2, n)).astype(np.float32)[..., None, None])
    psf = np.exp(-((xx - c0 - dx) ** 2 + (yy - c0 - dy) ** 2) / (2 * sigma**2))  # (n, H, W)
    flux = rng.uniform(6, 40, n).astype(np.float32)[:, None, None]
    host = rng.uniform(0, 20, n).astype(np.float32)[:, None, None] * psf * (rng.random(n) < 0.5)[:, None, None]
    template = host + rng.normal(0, noise, (n, size, size)).astype(np.float32)
    science = host + rng.normal(0, noise, (n, size, size)).astype(np.float32)
    kinds = np.where(labels == 1, "sn", "noise").astype(object)
    bogus = np.flatnonzero(labels == 0)
    which = rng.integers(0, 3, len(bogus))
    signal = np.zeros((n, size, size), np.float32)
    signal[labels == 1] = (flux * psf)[labels == 1]
    for j, i in enumerate(bogus):
        if which[j] == 0:  # dipole: a star shifted by one pixel between epochs
            shifted = np.roll(psf[i], 1, axis=1)
            signal[i] = flux[i, 0, 0] * (psf[i] - shifted)
            kinds[i] = "bad_subtraction"
        elif which[j] == 1:  # cosmic ray: one hot pixel
            signal[i, int(c0), int(c0)] = flux[i, 0, 0] * 2
            kinds[i] = "cosmic_ray"
        else:
            signal[i] = rng.normal(0, noise * 1.5, (size, size)).astype(np.float32)
    science = science + signal
    diff = science - template
    snr_map = diff / (noise * np.sqrt(2))
    planes = [template, science, diff, snr_map] if channels == 4 else (
        [template] + [science] * (channels - 2) + [diff]
    )
    images = np.stack(planes, axis=-1).astype(np.float32)
    snr = np.abs(snr_map).max(axis=(1, 2))
    return StampSet(
        images=images, labels=labels, snr=snr, kind=kinds.astype(str),
        ids=np.array([f"toy_{seed}_{i:06d}" for i in range(n)]),
        meta={"source": "make_synthetic_stamps", "seed": seed},
    )
