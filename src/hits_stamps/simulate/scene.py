"""Scene rendering for the simulator: PSF, point sources, galaxies, magnitudes, noise.

Everything works on batches: a layer of sources holds at most one source per image, and is
rendered as (S, H, W) and added to the images it belongs to, so no Python loop runs over stamps.

PSF: a Moffat profile with beta = 4.5, approximated by three Gaussians (weights 0.254, 0.592, 0.154;
sigmas 0.342, 0.510, 0.849 times the Moffat FWHM; a least-squares fit of the 2-D profile, exact to
0.3% within one FWHM). Moffat fits to the real HiTS 2015 non-variable-star cutouts give beta ~ 4,
and the loss of flux from a 6-px aperture as the seeing grows follows beta 4-5 (a Gaussian PSF
loses half as much); these wings decide how a bright star subtracts. Each epoch's PSF scales the
weight of the widest component by a random factor (`wing_scale`), and may be elongated along
the pixel axes. PSFs are named by their adaptive-moment FWHM
(`hits_stamps.differencing.adaptive_fwhm`), the Gaussian-equivalent width that the differencing
uses and the calibration measures.

Galaxies: exponential discs (half-light radius r_e, axis ratio q, position angle), approximated by
two Gaussians (weights 0.206 and 0.794, sigmas 0.376 r_e and 1.029 r_e: a least-squares fit to the
exponential profile), each convolved analytically with both PSF components.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from hits_stamps.differencing import DECAM, FWHM_PER_SIGMA, Camera

PSF_WEIGHTS = (0.2539, 0.5922, 0.1539)  # Moffat(beta = 4.5) as three Gaussians: flux weights
PSF_SIGMAS = (0.3421, 0.5103, 0.8489)  # ... and sigmas in units of the Moffat FWHM
EXP_MOG_WEIGHTS = (0.206, 0.794)  # two-Gaussian approximation of an exponential disc
EXP_MOG_SIGMAS = (0.376, 1.029)  # in units of the half-light radius


@cache
def _adaptive_sigma_table() -> tuple[np.ndarray, np.ndarray]:
    """(log wing scale grid (G,), adaptive sigma of the unit-FWHM Moffat mixture (G,)) for interpolation."""
    log_scale = np.linspace(-4.0, 4.0, 801)
    w = np.stack([np.full(log_scale.shape, PSF_WEIGHTS[0]), np.full(log_scale.shape, PSF_WEIGHTS[1]),
                  PSF_WEIGHTS[2] * np.exp(log_scale)], -1)
    w /= w.sum(axis=-1, keepdims=True)
    v = np.asarray(PSF_SIGMAS) ** 2
    s2 = np.full((log_scale.size, 1), 0.25)
    for _ in range(200):
        a = w * s2 / (v + s2)
        s2 = 2.0 * (a * v * s2 / (v + s2)).sum(axis=-1, keepdims=True) / a.sum(axis=-1, keepdims=True)
    return log_scale, np.sqrt(s2[:, 0])


def psf_components(fwhm, wing_scale=1.0) -> tuple[np.ndarray, np.ndarray]:
    """(weights (S, 3), sigmas (S, 3)) of the PSF with adaptive-moment FWHM `fwhm` (S,).

    The widest component's weight is multiplied by `wing_scale` (S,) or scalar, then the weights are
    renormalised. The adaptive sigma s of the mixture solves s^2 = 2 M(s), M(s) being the per-axis
    second moment under the weight exp(-r^2 / 2 s^2) (a component of flux w and variance v has weighted
    flux w s^2 / (v + s^2) and weighted second moment v s^2 / (v + s^2)); the sigmas are then scaled
    so that 2.3548 s = fwhm.
    """
    fwhm = np.asarray(fwhm, dtype=np.float64)
    lam = np.broadcast_to(np.asarray(wing_scale, dtype=np.float64), fwhm.shape)
    w = np.stack([np.full(fwhm.shape, PSF_WEIGHTS[0]), np.full(fwhm.shape, PSF_WEIGHTS[1]), PSF_WEIGHTS[2] * lam], -1)
    w /= w.sum(axis=-1, keepdims=True)
    grid, s_unit = _adaptive_sigma_table()  # the fixed point, tabulated once over log(wing_scale)
    s = np.interp(np.clip(np.log(lam), grid[0], grid[-1]), grid, s_unit)
    unit = fwhm / (FWHM_PER_SIGMA * s)  # Moffat FWHM giving this adaptive FWHM
    return w, unit[..., None] * np.asarray(PSF_SIGMAS)


def render_points(shape: tuple[int, int], y, x, flux, fwhm, wing_scale=1.0, e1=0.0) -> np.ndarray:
    """Point sources, one per image: (S, H, W) float32 in ADU.

    y, x : (S,) centre in pixel coordinates (pixel i spans i - 0.5 .. i + 0.5); flux : (S,) total ADU;
    fwhm : (S,) adaptive-moment FWHM of the PSF; wing_scale : (S,) or scalar (see `psf_components`);
    e1 : (S,) or scalar ellipticity along the pixel axes, sigma_x = sigma sqrt(1 + e1),
    sigma_y = sigma sqrt(1 - e1). Separable per component: sum_c w_c g_c(y) g_c(x) with g_c the
    unit-area 1-D Gaussian sampled at pixel centres.
    """
    h, w = shape
    weights, sig = psf_components(fwhm, wing_scale)
    e1 = np.broadcast_to(np.asarray(e1, dtype=np.float64), sig.shape[:1])
    yy = np.arange(h, dtype=np.float32)
    xx = np.arange(w, dtype=np.float32)
    y = np.asarray(y, np.float32)[:, None]
    x = np.asarray(x, np.float32)[:, None]
    root2pi = np.float32(np.sqrt(2 * np.pi))
    out = np.zeros((y.shape[0], h, w), np.float32)
    for c in range(sig.shape[1]):
        sy = (sig[:, c] * np.sqrt(1 - e1)).astype(np.float32)[:, None]
        sx = (sig[:, c] * np.sqrt(1 + e1)).astype(np.float32)[:, None]
        norm = (np.asarray(flux, np.float64) * weights[:, c]).astype(np.float32)[:, None]
        gy = np.exp(-0.5 * ((yy[None] - y) / sy) ** 2) / (root2pi * sy)  # (S, H)
        gx = np.exp(-0.5 * ((xx[None] - x) / sx) ** 2) / (root2pi * sx)  # (S, W)
        out += (gy * norm)[:, :, None] * gx[:, None, :]
    return out


def render_galaxies(shape: tuple[int, int], y, x, flux, r_e, q, theta, fwhm) -> np.ndarray:
    """Exponential-disc galaxies seen through the PSF, one per image: (S, H, W) float32 in ADU.

    r_e : (S,) half-light radius (px) along the major axis; q : (S,) axis ratio b/a in (0, 1];
    theta : (S,) position angle of the major axis (rad, from +x towards +y); fwhm : (S,) PSF.
    Each Gaussian of the disc is convolved with a Gaussian PSF of the same adaptive-moment FWHM
    (the PSF wing matters little against the extended disc): covariance R diag(a^2, (q a)^2) R^T +
    s_psf^2 I.
    """
    h, w = shape
    f32 = np.float32
    yy = np.arange(h, dtype=f32)[None, :, None]
    xx = np.arange(w, dtype=f32)[None, None, :]
    dy = yy - np.asarray(y, f32)[:, None, None]  # (S, H, 1)
    dx = xx - np.asarray(x, f32)[:, None, None]  # (S, 1, W)
    p2 = (np.asarray(fwhm, np.float64) / FWHM_PER_SIGMA) ** 2
    c, s = np.cos(theta), np.sin(theta)
    out = np.zeros((len(flux), h, w), f32)
    for gw, gs in zip(EXP_MOG_WEIGHTS, EXP_MOG_SIGMAS, strict=True):
        a2 = (gs * np.asarray(r_e)) ** 2
        b2 = a2 * np.asarray(q) ** 2
        cxx = a2 * c**2 + b2 * s**2 + p2
        cyy = a2 * s**2 + b2 * c**2 + p2
        cxy = (a2 - b2) * c * s
        det = cxx * cyy - cxy**2
        amp = np.asarray(flux) * gw / (2 * np.pi * np.sqrt(det))

        def col(v):
            return np.asarray(v, f32)[:, None, None]

        # exponent -0.5 (ixx dx^2 + iyy dy^2 + 2 ixy dx dy) with the inverse covariance (cyy, cxx, -cxy) / det
        quad = col(-0.5 * cyy / det) * dx * dx + col(-0.5 * cxx / det) * dy * dy + col(cxy / det) * dy * dx
        np.exp(quad, out=quad)
        quad *= col(amp)
        out += quad
    return out


def power_law_mags(rng: np.random.Generator, n: int, m_lo, m_hi, slope: float) -> np.ndarray:
    """n magnitudes with density p(m) proportional to 10^(slope m) on [m_lo, m_hi] (arrays allowed)."""
    u = rng.random(n)
    m_lo = np.broadcast_to(np.asarray(m_lo, dtype=np.float64), (n,))
    m_hi = np.broadcast_to(np.asarray(m_hi, dtype=np.float64), (n,))
    if abs(slope) < 1e-9:
        return m_lo + u * (m_hi - m_lo)
    a = slope * np.log(10.0)
    lo, hi = np.exp(a * m_lo), np.exp(a * m_hi)
    return np.log(lo + u * (hi - lo)) / a


def mag_to_adu(mag, zero_point, exp_time) -> np.ndarray:
    """Total ADU of a source of magnitude `mag`: t * 10^(-0.4 (mag - zero_point)), zp for 1 ADU/s."""
    return np.asarray(exp_time) * 10.0 ** (-0.4 * (np.asarray(mag) - np.asarray(zero_point)))


def standard_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 deviates by the Box-Muller transform (faster than the float32 ziggurat here).

    z1 = sqrt(-2 ln(1 - u)) cos(2 pi v), z2 = ... sin(2 pi v) with u, v uniform on [0, 1).
    """
    n = int(np.prod(shape))
    m = (n + 1) // 2
    u = rng.random(m, dtype=np.float32)
    v = rng.random(m, dtype=np.float32)
    np.log1p(-u, out=u)
    u *= np.float32(-2.0)
    np.sqrt(u, out=u)
    v *= np.float32(2 * np.pi)
    out = np.empty(2 * m, np.float32)
    np.cos(v, out=out[:m])
    np.sin(v, out=out[m:])
    out[:m] *= u
    out[m:] *= u
    return out[:n].reshape(shape)


def add_noise(model: np.ndarray, rng: np.random.Generator, camera: Camera = DECAM) -> np.ndarray:
    """Model (ADU, sky included) plus Poisson and read noise, Gaussian approximation, float32.

    I = model + sqrt(max(model, 0) / gain + (read_noise / gain)^2) * z, z ~ N(0, 1). The sky alone
    gives > 400 e- per pixel in HiTS g-band images, where the Gaussian approximation of the
    Poisson distribution is accurate.
    """
    var = np.maximum(model, 0) / np.float32(camera.gain) + np.float32((camera.read_noise / camera.gain) ** 2)
    z = standard_normal(rng, model.shape)
    np.sqrt(var, out=var)
    var *= z
    return model + var
