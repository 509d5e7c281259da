"""Image differencing shared by the simulator and the real-pixel path.

Given batches of template and science images of the same sky (B, H, W) in ADU, sky not subtracted,
with their PSF FWHMs (px) and sky levels, `difference` returns

- the difference D = (S - sky_S) - k * (T - sky_T), where the sharper of the two images is
  convolved with a Gaussian of width sigma_k = sqrt(sigma_blurrier^2 - sigma_sharper^2) so that
  both have the same PSF (sigma = FWHM / 2.3548), and k (`flux_scale`) puts the template on the
  science's photometric scale;
- the per-pixel noise of D: each image's variance is Poisson + read noise from its own pixels,
  V = max(I, 0) / gain + (read_noise / gain)^2 (ADU^2), propagated through the convolution
  (a separable kernel K gives Var(K * I) = K^2 * V for independent pixels) and summed;
- SNR = D / noise.

`detect` finds the |SNR| peak within `search_radius` of the image centre and flags it when
|SNR| >= `threshold` (5, as HiTS did); `cut_stamps` cuts the `stamp_size` window centred on the peak,
shifted to stay inside the image (a 21x21 real cutout gives itself). `difference_stamps` runs the
three steps and stacks the four HiTS channels (template, science, difference, SNR) channels last.

The convolution is a pair of matrix products per image, K_y @ I @ K_x^T, batched with `np.matmul`
(no Python loop over stamps). Rows of K are Gaussian weights renormalised to sum to one, so the
truncated kernel at the image border keeps a flat background flat. The kernel may also shift the
image by a sub-pixel offset (registration); when it must shift but sigma_k < `min_shift_sigma`,
sigma_k is raised to that floor so the shift is an interpolation, not a jump to the nearest pixel.
Non-finite pixels (no data) are handled by normalised convolution: pixels whose kernel weight on
finite data is below one half become NaN, the others are renormalised.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

FWHM_PER_SIGMA = float(2.0 * np.sqrt(2.0 * np.log(2.0)))  # 2.3548: Gaussian FWHM / sigma
MAD_TO_STD = 1.4826  # MAD of Gaussian noise times this is its standard deviation


@dataclass(frozen=True)
class Camera:
    """Detector constants (DECam, from the HiTS 2015 data README)."""

    gain: float = 4.1  # e- per ADU
    read_noise: float = 6.1  # e- per pixel (rms)
    saturation: float = 40_000.0  # ADU where pixels saturate
    pixel_scale: float = 0.27  # arcsec per pixel


DECAM = Camera()


@dataclass(frozen=True)
class DetectionConfig:
    """How a candidate is found in the SNR image and cut out."""

    threshold: float = 5.0  # |SNR| a peak must reach to be a detection
    search_radius: float = 3.0  # px from the image centre inside which the peak is searched
    stamp_size: int = 21  # side of the stamp cut around the peak
    min_shift_sigma: float = 0.5  # px: smallest kernel sigma used when the kernel also shifts
    min_coverage: float = 0.5  # normalised convolution: kernel weight on finite pixels needed
    background_window: int | None = 21  # remove the median of the difference's 3-px frame of this central window


@dataclass
class DifferenceResult:
    """Output of `difference`; all maps (B, H, W) float32."""

    difference: np.ndarray  # (B, H, W) ADU: science minus PSF-matched, flux-scaled template, sky removed
    noise: np.ndarray  # (B, H, W) ADU: 1-sigma of `difference`
    snr: np.ndarray  # (B, H, W) difference / noise
    kernel_sigma: np.ndarray  # (B,) px: sigma of the matching Gaussian actually used
    template_convolved: np.ndarray  # (B,) bool: True where the template was convolved, else the science
    kernel_y: np.ndarray  # (B, H, H) row weights of the matching kernel
    kernel_x: np.ndarray  # (B, W, W) column weights of the matching kernel


@dataclass
class Detection:
    """Output of `detect`."""

    peak_yx: np.ndarray  # (B, 2) int: row, column of the |SNR| peak in the searched disc
    peak_snr: np.ndarray  # (B,) float: signed SNR at the peak (NaN where the disc has no finite pixel)
    detected: np.ndarray  # (B,) bool: |peak_snr| >= threshold


def _as_batch(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{name} must have shape (B, H, W) or (H, W); got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    return arr


def _per_image(x, b: int, name: str, default: float | None = None) -> np.ndarray:
    if x is None:
        if default is None:
            raise ValueError(f"{name} is required")
        x = default
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(b, float(arr))
    if arr.shape != (b,):
        raise ValueError(f"{name} must be a scalar or have shape ({b},); got {arr.shape}")
    return arr


def gaussian_matrix(sigma: np.ndarray, shift: np.ndarray, n: int, transpose: bool = False) -> np.ndarray:
    """Row-normalised 1-D Gaussian convolution matrices, (B, n, n) float32 (K^T with `transpose`).

    out = K @ x gives out[i] = sum_j K[i, j] x[j] with K[i, j] proportional to
    exp(-(j - i + shift)^2 / (2 sigma^2)): the input blurred by `sigma` and moved by `shift` pixels
    towards larger indices. sigma -> 0 with shift 0 gives the identity.
    """
    sigma = np.maximum(np.asarray(sigma, dtype=np.float32), np.float32(1e-3))[:, None]
    shift = np.asarray(shift, dtype=np.float32)[:, None]
    lags = np.arange(-(n - 1), n, dtype=np.float32)[None, :]  # j - i
    g = np.exp(np.float32(-0.5) * ((lags + shift) / sigma) ** 2)  # (B, 2n - 1): weight per lag
    g[g < 1e-12] = 0  # no subnormal floats (they slow matrix products down tenfold); squares stay normal
    idx = np.arange(n)
    lag = idx[None, :] - idx[:, None] + (n - 1)  # (n, n): lag index of K[i, j]
    w = np.take(g, lag.T if transpose else lag, axis=1)  # (B, n, n) Toeplitz gather (np.take: C-contiguous)
    w /= w.sum(axis=1 if transpose else 2, keepdims=True)
    return w


def separable_convolve(images: np.ndarray, ky: np.ndarray, kx: np.ndarray) -> np.ndarray:
    """K_y @ I @ K_x^T per image: (B, H, H), (B, H, W), (B, W, W) -> (B, H, W)."""
    return _conv(images, ky, np.ascontiguousarray(np.swapaxes(kx, 1, 2)))


def _conv(images: np.ndarray, ky: np.ndarray, kx_t: np.ndarray) -> np.ndarray:
    """K_y @ I @ K_x^T with K_x^T given contiguous, (B, H, W)."""
    return np.matmul(np.matmul(ky, images), kx_t)


def pixel_variance(images: np.ndarray, camera: Camera = DECAM) -> np.ndarray:
    """Poisson + read-noise variance (ADU^2) of images in ADU with the sky included.

    V = max(I, 0) / gain + (read_noise / gain)^2, shape as `images`.
    """
    rn2 = np.float32((camera.read_noise / camera.gain) ** 2)
    return np.maximum(images, 0, dtype=np.float32) / np.float32(camera.gain) + rn2


def _convolve_with_nans(
    values: np.ndarray, variance: np.ndarray, ky: np.ndarray, kx_t: np.ndarray, min_coverage: float
) -> tuple[np.ndarray, np.ndarray]:
    """Convolve values (and variance with squared weights), treating non-finite pixels as missing.

    `values` and `variance` are scratch arrays: non-finite pixels in them are overwritten with 0.
    """
    b = values.shape[0]
    row_ok = np.isfinite(values.reshape(b, -1).sum(axis=1))  # a NaN or inf anywhere makes the sum non-finite
    bad = np.flatnonzero(~row_ok)
    if bad.size:
        finite = np.isfinite(values[bad])
        values[bad] = np.where(finite, values[bad], np.float32(0))
        variance[bad] = np.where(finite, variance[bad], np.float32(0))
    out_v = _conv(values, ky, kx_t)
    out_var = _conv(variance, ky * ky, kx_t * kx_t)
    if bad.size:
        cover = _conv(finite.astype(np.float32), ky[bad], kx_t[bad])  # kernel weight on finite pixels
        ok = cover >= min_coverage
        safe = np.where(ok, cover, np.float32(1))
        out_v[bad] = np.where(ok, out_v[bad] / safe, np.nan)
        out_var[bad] = np.where(ok, out_var[bad] / safe**2, np.nan)
    return out_v, out_var


def difference(
    template,
    science,
    fwhm_template,
    fwhm_science,
    sky_template,
    sky_science,
    *,
    flux_scale=None,
    shift=None,
    kernel_axis_scale=None,
    camera: Camera = DECAM,
    config: DetectionConfig | None = None,
) -> DifferenceResult:
    """PSF-match, subtract, and propagate the noise, for a batch of image pairs.

    Parameters
    ----------
    template, science : (B, H, W) or (H, W) arrays in ADU, sky included; NaN marks missing pixels
    fwhm_template, fwhm_science : (B,) or scalar PSF FWHM in pixels (Gaussian equivalent)
    sky_template, sky_science : (B,) or scalar sky level in ADU, subtracted before differencing
    flux_scale : (B,) or scalar factor k multiplying the template (photometric scaling to the
        science), default 1
    shift : (B, 2) (dy, dx) pixels by which the template content is moved to register it on the
        science (or the science moved by -shift when the science is convolved), default 0
    kernel_axis_scale : (B, 2) factors (y, x) on the matching kernel's sigma per axis, default 1: an
        elliptical kernel, one way a real pipeline's kernel departs from the ideal (see
        `DifferencingVariety`)
    camera : gain and read noise for the variance model
    config : `DetectionConfig` (only `min_shift_sigma` and `min_coverage` are used here)

    Returns
    -------
    DifferenceResult with difference, noise and snr maps (B, H, W) float32.
    D = (S - sky_S) - k (T - sky_T) after matching; Var(D) = Var_S' + k^2 Var_T', where ' marks the
    convolved image (variance convolved with the squared kernel).
    """
    cfg = config or DetectionConfig()
    t = _as_batch(template, "template").astype(np.float32, copy=False)
    s = _as_batch(science, "science").astype(np.float32, copy=False)
    if t.shape != s.shape:
        raise ValueError(f"template and science must have the same shape; got {t.shape} and {s.shape}")
    b, h, w = t.shape
    fw_t = _per_image(fwhm_template, b, "fwhm_template")
    fw_s = _per_image(fwhm_science, b, "fwhm_science")
    if np.any(~np.isfinite(fw_t)) or np.any(~np.isfinite(fw_s)) or np.any(fw_t <= 0) or np.any(fw_s <= 0):
        raise ValueError("fwhm_template and fwhm_science must be finite and > 0")
    sky_t = _per_image(sky_template, b, "sky_template")
    sky_s = _per_image(sky_science, b, "sky_science")
    k = _per_image(flux_scale, b, "flux_scale", default=1.0)
    if shift is None:
        sh = np.zeros((b, 2))
    else:
        sh = np.asarray(shift, dtype=np.float64)
        if sh.shape == (2,):
            sh = np.broadcast_to(sh, (b, 2))
        if sh.shape != (b, 2):
            raise ValueError(f"shift must have shape ({b}, 2) or (2,); got {sh.shape}")

    sig_t, sig_s = fw_t / FWHM_PER_SIGMA, fw_s / FWHM_PER_SIGMA
    conv_t = sig_s >= sig_t  # convolve the sharper image: the template when the science is blurrier
    sigma_k = np.sqrt(np.abs(sig_s**2 - sig_t**2))
    moving = np.any(sh != 0, axis=1)
    sigma_k = np.where(moving, np.maximum(sigma_k, cfg.min_shift_sigma), sigma_k)
    sigma_yx = np.repeat(sigma_k[:, None], 2, axis=1)  # (B, 2): kernel sigma along y and x
    if kernel_axis_scale is not None:
        ax = np.broadcast_to(np.asarray(kernel_axis_scale, dtype=np.float64), (b, 2))
        if not (np.isfinite(ax).all() and (ax > 0).all()):
            raise ValueError("kernel_axis_scale must be finite and > 0")
        sigma_yx = sigma_yx * ax
        sigma_yx = np.where(moving[:, None], np.maximum(sigma_yx, cfg.min_shift_sigma), sigma_yx)
    direction = np.where(conv_t, 1.0, -1.0)  # move the template by +shift, or the science by -shift
    ky = gaussian_matrix(sigma_yx[:, 0], direction * sh[:, 0], h)
    kx_t = gaussian_matrix(sigma_yx[:, 1], direction * sh[:, 1], w, transpose=True)  # K_x^T, as the products need it
    kx = np.swapaxes(kx_t, 1, 2)  # (B, W, W) view

    # A: the image to convolve, O: the other one; both on the science's photometric scale
    sel = conv_t[:, None, None]
    f32 = np.float32
    scale_a = np.where(conv_t, k, 1.0).astype(f32)[:, None, None]
    scale_o = np.where(conv_t, 1.0, k).astype(f32)[:, None, None]
    sky_a = np.where(conv_t, sky_t, sky_s).astype(f32)[:, None, None]
    sky_o = np.where(conv_t, sky_s, sky_t).astype(f32)[:, None, None]
    raw_a = np.where(sel, t, s)
    raw_o = np.where(sel, s, t)
    var_a = pixel_variance(raw_a, camera)
    var_a *= scale_a * scale_a
    var_o = pixel_variance(raw_o, camera)
    var_o *= scale_o * scale_o
    raw_a -= sky_a
    raw_a *= scale_a
    raw_o -= sky_o
    raw_o *= scale_o
    conv_a, var = _convolve_with_nans(raw_a, var_a, ky, kx_t, cfg.min_coverage)
    diff = np.subtract(raw_o, conv_a, out=raw_o)  # S - conv(T), or T - conv(S) where the science is convolved
    diff *= np.where(conv_t, f32(1), f32(-1)).astype(f32)[:, None, None]  # science minus template in both cases
    var += var_o
    if cfg.background_window is not None:  # sky mismatch left after subtraction (star wings bias each image's sky)
        n_win = min(cfg.background_window, h, w)
        offset = estimate_sky(diff, width=3, window=n_win)
        diff -= np.nan_to_num(offset).astype(f32)[:, None, None]
    noise = np.sqrt(var, out=var)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = diff / noise
    return DifferenceResult(
        difference=diff, noise=noise, snr=snr, kernel_sigma=sigma_k,
        template_convolved=conv_t, kernel_y=ky, kernel_x=kx,
    )


def _disc(h: int, w: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 <= radius**2


def detect(snr: np.ndarray, config: DetectionConfig | None = None) -> Detection:
    """The |SNR| peak within `search_radius` of the centre of each (H, W) SNR image.

    snr : (B, H, W); non-finite pixels are never the peak.
    """
    cfg = config or DetectionConfig()
    snr = _as_batch(snr, "snr")
    b, h, w = snr.shape
    disc = _disc(h, w, cfg.search_radius)
    a = np.abs(snr)
    a = np.where(disc[None] & np.isfinite(a), a, -1.0)
    flat = a.reshape(b, -1).argmax(axis=1)
    py, px = np.divmod(flat, w)
    peak = snr[np.arange(b), py, px].astype(np.float64)
    peak = np.where(a.reshape(b, -1)[np.arange(b), flat] < 0, np.nan, peak)
    with np.errstate(invalid="ignore"):
        detected = np.abs(peak) >= cfg.threshold
    return Detection(peak_yx=np.stack([py, px], axis=1), peak_snr=peak, detected=detected)


def cut_stamps(images: np.ndarray, centre_yx: np.ndarray, size: int) -> np.ndarray:
    """Cut (size, size) windows centred on `centre_yx`, moved to stay inside the images.

    images : (B, H, W) or (B, H, W, C) with H, W >= size; centre_yx : (B, 2) int.
    Returns (B, size, size) or (B, size, size, C), a copy.
    """
    b, h, w = images.shape[:3]
    if size > h or size > w:
        raise ValueError(f"stamp size {size} does not fit images of {h}x{w}")
    corner = window_corner(centre_yx, (h, w), size)
    windows = np.lib.stride_tricks.sliding_window_view(images, (size, size), axis=(1, 2))  # (B, h', w', ..., S, S)
    out = windows[np.arange(b), corner[:, 0], corner[:, 1]]
    if images.ndim == 4:  # sliding windows put the window axes last: (B, C, S, S) -> (B, S, S, C)
        out = np.moveaxis(out, 1, -1)
    return np.ascontiguousarray(out)


def window_corner(centre_yx: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """Top-left (row, col) of the windows `cut_stamps` cuts, (B, 2) int."""
    h, w = shape
    half = size // 2
    cy = np.clip(np.asarray(centre_yx)[:, 0], half, h - size + half)
    cx = np.clip(np.asarray(centre_yx)[:, 1], half, w - size + half)
    return np.stack([cy - half, cx - half], axis=1)


def difference_stamps(
    template,
    science,
    fwhm_template,
    fwhm_science,
    sky_template,
    sky_science,
    *,
    flux_scale=None,
    shift=None,
    camera: Camera = DECAM,
    config: DetectionConfig | None = None,
) -> tuple[np.ndarray, DifferenceResult, Detection]:
    """`difference`, `detect` and `cut_stamps` in one call.

    Returns (stamps, result, detection) with stamps (B, S, S, 4) float32, channels template,
    science, difference, SNR (template and science as given, sky included), S = stamp_size,
    centred on the |SNR| peak of each pair whether or not it passed the threshold.
    """
    cfg = config or DetectionConfig()
    t = _as_batch(template, "template").astype(np.float32, copy=False)
    s = _as_batch(science, "science").astype(np.float32, copy=False)
    res = difference(
        t, s, fwhm_template, fwhm_science, sky_template, sky_science,
        flux_scale=flux_scale, shift=shift, camera=camera, config=cfg,
    )
    det = detect(res.snr, cfg)
    planes = [cut_stamps(p, det.peak_yx, cfg.stamp_size) for p in (t, s, res.difference, res.snr)]
    return np.stack(planes, axis=-1), res, det


@dataclass(frozen=True)
class DifferencingVariety:
    """Departures from the nominal differencing, drawn per image pair, so no model learns one pipeline.

    Real pipelines differ from ours and from each other: their PSF estimates are off by some
    percent, their kernels are not round Gaussians, their registration leaves sub-pixel errors,
    some divide by one background noise per image instead of a per-pixel noise map, and each picks
    its template its own way. With `draw`, each pair gets its own departures (all zero in `NOMINAL`):

    - FWHMs given to the kernel: fwhm * exp(e), e ~ N(0, fwhm_error^2), independently per image;
    - kernel sigma per axis times exp(a), a ~ N(0, kernel_anisotropy^2), per axis;
    - registration shift plus N(0, shift_error^2) px per axis;
    - with probability sky_noise_fraction, noise = one robust value per image (1.4826 MAD of the
      difference's outer frame), so SNR = difference / that value with no source Poisson term;
    - with probability random_template_fraction, the template is a random other epoch instead of the
      best-seeing early one (the caller chooses templates; this only draws the flag).
    """

    fwhm_error: float = 0.0  # rms of the log error of each FWHM given to the matching kernel
    kernel_anisotropy: float = 0.0  # rms of the log factor on the kernel sigma per axis
    shift_error: float = 0.0  # px: rms registration error per axis
    sky_noise_fraction: float = 0.0  # fraction of pairs with one background noise value instead of a noise map
    random_template_fraction: float = 0.0  # fraction of pairs whose template is a random other epoch

    def __post_init__(self) -> None:
        for name in ("fwhm_error", "kernel_anisotropy", "shift_error"):
            v = getattr(self, name)
            if not (np.isfinite(v) and 0 <= v <= 2):
                raise ValueError(f"{name} must be in [0, 2]; got {v!r}")
        for name in ("sky_noise_fraction", "random_template_fraction"):
            v = getattr(self, name)
            if not (np.isfinite(v) and 0 <= v <= 1):
                raise ValueError(f"{name} must be a fraction in [0, 1]; got {v!r}")

    @property
    def is_nominal(self) -> bool:
        return self == NOMINAL

    def draw(self, rng: np.random.Generator, b: int) -> PairVariety:
        """Per-pair departures for `b` pairs (identity values where a setting is 0)."""
        return PairVariety(
            fwhm_factor=np.exp(rng.normal(0.0, 1.0, (b, 2)) * self.fwhm_error),
            kernel_axis_scale=np.exp(rng.normal(0.0, 1.0, (b, 2)) * self.kernel_anisotropy),
            shift_error=rng.normal(0.0, 1.0, (b, 2)) * self.shift_error,
            sky_noise=rng.random(b) < self.sky_noise_fraction,
            random_template=rng.random(b) < self.random_template_fraction,
        )


@dataclass
class PairVariety:
    """What `DifferencingVariety.draw` drew for a batch of pairs."""

    fwhm_factor: np.ndarray  # (B, 2): factors on the (template, science) FWHM given to the kernel
    kernel_axis_scale: np.ndarray  # (B, 2): factors on the kernel sigma along (y, x)
    shift_error: np.ndarray  # (B, 2) px: added to the (dy, dx) registration shift
    sky_noise: np.ndarray  # (B,) bool: one background noise value instead of the noise map
    random_template: np.ndarray  # (B,) bool: template is a random other epoch

    def take(self, idx: np.ndarray) -> PairVariety:
        return PairVariety(self.fwhm_factor[idx], self.kernel_axis_scale[idx], self.shift_error[idx],
                           self.sky_noise[idx], self.random_template[idx])


NOMINAL = DifferencingVariety()
#: The spread used to train models that must hold on other pipelines' stamps (docs/simulation.md).
VARIED = DifferencingVariety(fwhm_error=0.1, kernel_anisotropy=0.1, shift_error=0.2, sky_noise_fraction=0.3,
                             random_template_fraction=0.5)


def background_noise(diff: np.ndarray, width: int = 3) -> np.ndarray:
    """One robust noise value per difference image: 1.4826 * MAD of its finite outer-frame pixels, (B,)."""
    px = frame_pixels(diff, width).astype(np.float64)
    px = np.where(np.isfinite(px), px, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN frame gives NaN
        med = np.nanmedian(px, axis=1, keepdims=True)
        return MAD_TO_STD * np.nanmedian(np.abs(px - med), axis=1)


def vary_difference(
    template,
    science,
    fwhm_template,
    fwhm_science,
    sky_template,
    sky_science,
    variety: PairVariety | None,
    *,
    flux_scale=None,
    shift=None,
    camera: Camera = DECAM,
    config: DetectionConfig | None = None,
) -> DifferenceResult:
    """`difference` with per-pair departures from the nominal pipeline (None: exactly `difference`).

    The FWHMs given to the kernel are multiplied by `variety.fwhm_factor`, the kernel is stretched
    per axis, the shift gets its error added; where `variety.sky_noise`, the noise map is replaced by
    `background_noise` of the difference and the SNR recomputed.
    """
    if variety is None:
        return difference(template, science, fwhm_template, fwhm_science, sky_template, sky_science,
                          flux_scale=flux_scale, shift=shift, camera=camera, config=config)
    b = variety.fwhm_factor.shape[0]
    sh = np.zeros((b, 2)) if shift is None else np.broadcast_to(np.asarray(shift, dtype=np.float64), (b, 2))
    res = difference(
        template, science,
        _per_image(fwhm_template, b, "fwhm_template") * variety.fwhm_factor[:, 0],
        _per_image(fwhm_science, b, "fwhm_science") * variety.fwhm_factor[:, 1],
        sky_template, sky_science, flux_scale=flux_scale, shift=sh + variety.shift_error,
        kernel_axis_scale=variety.kernel_axis_scale, camera=camera, config=config,
    )
    flat = np.flatnonzero(variety.sky_noise)
    if flat.size:
        level = background_noise(res.difference[flat]).astype(np.float32)  # (F,)
        noise = np.broadcast_to(level[:, None, None], res.difference[flat].shape)
        res.noise[flat] = noise
        with np.errstate(invalid="ignore", divide="ignore"):
            res.snr[flat] = res.difference[flat] / noise
    return res


# ------------------------------------------------------------------------ measurements on images
def frame_pixels(images: np.ndarray, width: int = 3, window: int | None = None) -> np.ndarray:
    """Pixels of the outer frame (`width` px) of the central `window` x `window` region, (B, P)."""
    images = _as_batch(images, "images")
    b, h, w = images.shape
    n = window or min(h, w)
    y0, x0 = (h - n) // 2, (w - n) // 2
    sub = images[:, y0:y0 + n, x0:x0 + n]
    mask = np.ones((n, n), bool)
    mask[width:n - width, width:n - width] = False
    return sub[:, mask]


def estimate_sky(images: np.ndarray, width: int = 3, window: int | None = None) -> np.ndarray:
    """Sky level (ADU) per image: the median of the finite outer-frame pixels, (B,) float64.

    With `window`, the frame of the central window x window region is used (so a 27x27 simulated
    canvas is measured like a 21x21 real cutout). NaN where the frame has no finite pixel.
    """
    px = frame_pixels(images, width, window)
    finite = np.isfinite(px)
    if finite.all():
        return _median_rows(px)
    out = np.empty(px.shape[0])
    clean = finite.all(axis=1)
    out[clean] = _median_rows(px[clean])
    part = np.flatnonzero(~clean)
    srt = np.sort(np.where(finite[part], px[part], np.nan), axis=1)  # NaN sort last
    nf = finite[part].sum(axis=1)
    lo, hi = srt[np.arange(part.size), np.maximum(nf - 1, 0) // 2], srt[np.arange(part.size), nf // 2]
    out[part] = np.where(nf > 0, 0.5 * (lo.astype(np.float64) + hi), np.nan)
    return out


def _median_rows(x: np.ndarray) -> np.ndarray:
    """Median of each row of a finite (B, P) array by partial sorting, (B,) float64."""
    p = x.shape[1]
    k = p // 2
    if p % 2:
        return np.partition(x, k, axis=1)[:, k].astype(np.float64)
    part = np.partition(x, (k - 1, k), axis=1)
    return 0.5 * (part[:, k - 1].astype(np.float64) + part[:, k])


def corner_pixels(images: np.ndarray, corner: int = 4, window: int | None = None) -> np.ndarray:
    """Pixels of the four `corner` x `corner` corners of the central window, (B, 4 corner^2)."""
    images = _as_batch(images, "images")
    b, h, w = images.shape
    n = window or min(h, w)
    y0, x0 = (h - n) // 2, (w - n) // 2
    sub = images[:, y0:y0 + n, x0:x0 + n]
    c = corner
    parts = [sub[:, :c, :c], sub[:, :c, -c:], sub[:, -c:, :c], sub[:, -c:, -c:]]
    return np.concatenate([p.reshape(b, -1) for p in parts], axis=1)


def estimate_pixel_noise(images: np.ndarray, corner: int = 4, window: int | None = None) -> np.ndarray:
    """Robust pixel noise (ADU) per image: 1.4826 * MAD of the corner pixels, (B,) float64."""
    px = corner_pixels(images, corner, window).astype(np.float64)
    med = np.median(px, axis=1, keepdims=True)
    return MAD_TO_STD * np.median(np.abs(px - med), axis=1)


def adaptive_fwhm(
    images: np.ndarray, sky: np.ndarray | None = None, n_iter: int = 20, r_max: float | None = None
) -> np.ndarray:
    """FWHM (px) of the source at the image centre from adaptive (Gaussian-weighted) moments, (B,).

    Iterates the weighted centroid and the weight width: with weight exp(-r^2 / (2 s^2)) the weighted
    second moment of a Gaussian of width sigma is M = sigma^2 s^2 / (sigma^2 + s^2) per axis; the
    fixed point s^2 = 2 M gives s = sigma, so FWHM = 2.3548 s. NaN when the weighted flux is not
    positive or the width does not settle in (0.3, H/2).
    """
    images = _as_batch(images, "images").astype(np.float64)
    b, h, w = images.shape
    if sky is None:
        sky = estimate_sky(images)
    x = images - np.asarray(sky, dtype=np.float64)[:, None, None]
    x = np.where(np.isfinite(x), x, 0.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy = np.full(b, (h - 1) / 2)
    cx = np.full(b, (w - 1) / 2)
    s2 = np.full(b, 2.0**2)
    rmax2 = (r_max if r_max is not None else min(h, w) / 2) ** 2
    for _ in range(n_iter):
        dy = yy[None] - cy[:, None, None]
        dx = xx[None] - cx[:, None, None]
        r2 = dy**2 + dx**2
        wgt = np.exp(-0.5 * r2 / s2[:, None, None]) * (r2 <= rmax2)
        f = (wgt * x).sum(axis=(1, 2))
        ok = f > 0
        fs = np.where(ok, f, 1.0)
        ncy = cy + (wgt * x * dy).sum(axis=(1, 2)) / fs
        ncx = cx + (wgt * x * dx).sum(axis=(1, 2)) / fs
        m = 0.5 * (wgt * x * r2).sum(axis=(1, 2)) / fs  # per-axis weighted second moment
        cy = np.where(ok, np.clip(ncy, 0, h - 1), cy)
        cx = np.where(ok, np.clip(ncx, 0, w - 1), cx)
        s2 = np.where(ok & (m > 0), np.clip(2.0 * m, 0.09, (min(h, w) / 2) ** 2), s2)
    fwhm = FWHM_PER_SIGMA * np.sqrt(s2)
    bad = ~ok | (np.sqrt(s2) <= 0.3 + 1e-9) | (np.sqrt(s2) >= min(h, w) / 2 - 1e-9)
    return np.where(bad, np.nan, fwhm)


def psf_flux(
    diff: np.ndarray, noise: np.ndarray, fwhm: np.ndarray, centre_yx: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Matched-filter (PSF-fit) flux of a Gaussian point source and its error, (B,) each.

    With P the unit-flux Gaussian PSF of `fwhm` at `centre_yx` (default the image centre) and
    V = noise^2: F = sum(P D / V) / sum(P^2 / V), err = 1 / sqrt(sum(P^2 / V)). Non-finite pixels
    are left out of both sums.
    """
    d = _as_batch(diff, "diff").astype(np.float64)
    v = _as_batch(noise, "noise").astype(np.float64) ** 2
    b, h, w = d.shape
    fw = _per_image(fwhm, b, "fwhm")
    if centre_yx is None:
        cyx = np.tile([(h - 1) / 2, (w - 1) / 2], (b, 1))
    else:
        cyx = np.asarray(centre_yx, dtype=np.float64)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    sig2 = (fw / FWHM_PER_SIGMA)[:, None, None] ** 2
    r2 = (yy[None] - cyx[:, 0, None, None]) ** 2 + (xx[None] - cyx[:, 1, None, None]) ** 2
    p = np.exp(-0.5 * r2 / sig2) / (2 * np.pi * sig2)
    ok = np.isfinite(d) & np.isfinite(v) & (v > 0)
    vs = np.where(ok, v, 1.0)
    pd = np.where(ok, p * d / vs, 0.0).sum(axis=(1, 2))
    pp = np.where(ok, p * p / vs, 0.0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd / pp, 1.0 / np.sqrt(pp)
