"""Tests of the shared differencing module against closed forms."""

import numpy as np
import pytest

from hits_stamps.differencing import (
    DECAM,
    FWHM_PER_SIGMA,
    DetectionConfig,
    adaptive_fwhm,
    cut_stamps,
    detect,
    difference,
    difference_stamps,
    estimate_pixel_noise,
    estimate_sky,
    gaussian_matrix,
    psf_flux,
    separable_convolve,
)


def gaussian(n, sigma, cy=None, cx=None, flux=1.0):
    """Unit-flux (times `flux`) circular Gaussian sampled on an n x n grid, centred by default."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    cy = (n - 1) / 2 if cy is None else cy
    cx = (n - 1) / 2 if cx is None else cx
    return flux * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)


def sky_noise(rng, b, n, sky):
    sigma = np.sqrt(sky / DECAM.gain + (DECAM.read_noise / DECAM.gain) ** 2)
    return (sky + sigma * rng.standard_normal((b, n, n))).astype(np.float32)


@pytest.mark.parametrize(("s1", "s2"), [(1.2, 0.8), (2.0, 1.5), (1.6, 2.4)])
def test_gaussian_convolved_with_gaussian_is_gaussian(s1, s2):
    n = 41
    img = gaussian(n, s1)[None].astype(np.float32)
    k = gaussian_matrix(np.array([s2]), np.zeros(1), n)
    out = separable_convolve(img, k, k)[0]
    expect = gaussian(n, np.hypot(s1, s2))
    assert np.abs(out - expect).max() < 2e-3 * expect.max()
    assert out.sum() == pytest.approx(1.0, rel=1e-4)


def test_gaussian_matrix_identity_and_shift():
    k = gaussian_matrix(np.array([0.0, 1.0]), np.array([0.0, 2.0]), 15)
    assert np.allclose(k[0], np.eye(15), atol=1e-6)
    x = np.zeros(15, np.float32)
    x[5] = 1
    moved = k[1] @ x
    assert np.argmax(moved) == 7  # content moves by +shift
    assert np.allclose(k.sum(axis=2), 1, atol=1e-5)


@pytest.mark.parametrize("template_sharper", [True, False])
def test_psf_matched_difference_of_a_static_star_is_zero(template_sharper):
    n, sky = 31, 120.0
    s_t, s_s = (1.5, 2.3) if template_sharper else (2.3, 1.5)
    tpl = (sky + gaussian(n, s_t, flux=5e4))[None]
    sci = (sky + gaussian(n, s_s, flux=5e4))[None]
    res = difference(tpl, sci, s_t * FWHM_PER_SIGMA, s_s * FWHM_PER_SIGMA, sky, sky)
    assert res.template_convolved[0] == template_sharper
    assert np.abs(res.difference).max() < 1e-3 * (5e4 * gaussian(n, max(s_t, s_s)).max())


def test_new_source_is_positive_whichever_image_is_convolved():
    n, sky = 31, 120.0
    star = gaussian(n, 2.0, flux=2e4)
    for s_t, s_s in ((1.5, 2.0), (2.5, 2.0)):
        tpl = (sky + gaussian(n, s_t) * 0)[None]
        sci = (sky + star)[None]
        res = difference(tpl, sci, s_t * FWHM_PER_SIGMA, s_s * FWHM_PER_SIGMA, sky, sky)
        c = n // 2
        assert res.difference[0, c, c] > 0
        assert res.snr[0, c, c] > 5


def test_flux_scale_and_registration_shift():
    n, sky = 31, 100.0
    c = (n - 1) / 2
    tpl = (sky + gaussian(n, 1.5, c, c, flux=2e4))[None]
    # science: the same star 0.3 px down and 0.4 px left, twice as bright (other zero point)
    sci = (sky + gaussian(n, 2.0, c + 0.3, c - 0.4, flux=4e4))[None]
    res = difference(tpl, sci, 1.5 * FWHM_PER_SIGMA, 2.0 * FWHM_PER_SIGMA, sky, sky,
                     flux_scale=2.0, shift=[[0.3, -0.4]], config=DetectionConfig(background_window=None))
    assert np.abs(res.difference).max() < 2e-3 * 4e4 * gaussian(n, 2.0).max()


def test_perfect_match_gives_zero_difference():
    rng = np.random.default_rng(0)
    img = sky_noise(rng, 4, 25, 130.0) + gaussian(25, 1.8, flux=3e3).astype(np.float32)
    res = difference(img, img, 4.0, 4.0, 130.0, 130.0)
    assert np.all(res.difference == 0)
    assert np.all(res.snr == 0)


@pytest.mark.parametrize(("fw_t", "fw_s", "scale"), [(3.5, 5.0, 1.0), (5.0, 3.5, 1.0), (4.0, 6.0, 1.3)])
def test_pure_noise_gives_unit_variance_snr(fw_t, fw_s, scale):
    """Sky-only pairs: the SNR map has unit variance (tolerance 3%; 64 images of 31x31)."""
    rng = np.random.default_rng(1)
    b, n, sky = 64, 31, 120.0
    tpl = sky_noise(rng, b, n, sky)
    sci = sky_noise(rng, b, n, sky * scale)  # a science image with `scale` times the template's counts
    res = difference(tpl, sci, fw_t, fw_s, sky, sky * scale, flux_scale=scale,
                     config=DetectionConfig(background_window=None))
    inner = res.snr[:, 6:-6, 6:-6]  # away from the renormalised kernel edges
    assert inner.std() == pytest.approx(1.0, abs=0.03)
    assert abs(inner.mean()) < 0.1  # correlated pixels: about 1,000 independent values per case


def test_detect_finds_peak_near_centre_only():
    snr = np.zeros((3, 21, 21), np.float32)
    snr[0, 11, 9] = 7.0  # inside the 3-px disc
    snr[1, 10, 10] = -6.0  # negative peaks count
    snr[2, 2, 2] = 50.0  # outside the disc: ignored
    det = detect(snr)
    assert det.detected.tolist() == [True, True, False]
    assert det.peak_yx[0].tolist() == [11, 9]
    assert det.peak_snr[1] == pytest.approx(-6.0)


def test_detect_ignores_nan():
    snr = np.full((1, 21, 21), np.nan, np.float32)
    det = detect(snr)
    assert not det.detected[0] and np.isnan(det.peak_snr[0])


def test_cut_stamps_is_centred_and_stays_inside():
    img = np.arange(27 * 27, dtype=np.float32).reshape(1, 27, 27).repeat(2, axis=0)
    out = cut_stamps(img, np.array([[13, 13], [1, 26]]), 21)
    assert out.shape == (2, 21, 21)
    assert out[0, 10, 10] == img[0, 13, 13]
    assert np.array_equal(out[1], img[1, 0:21, 6:27])  # moved inside the image
    four = np.stack([img] * 4, axis=-1)
    assert cut_stamps(four, np.array([[13, 13], [13, 13]]), 21).shape == (2, 21, 21, 4)
    with pytest.raises(ValueError, match="does not fit"):
        cut_stamps(img, np.array([[13, 13], [13, 13]]), 29)


def test_difference_stamps_channels():
    rng = np.random.default_rng(2)
    tpl = sky_noise(rng, 5, 27, 110.0)
    sci = sky_noise(rng, 5, 27, 110.0) + gaussian(27, 2.0, flux=3e3).astype(np.float32)
    stamps, res, det = difference_stamps(tpl, sci, 4.0, 4.7, 110.0, 110.0)
    assert stamps.shape == (5, 21, 21, 4)
    assert det.detected.all()
    assert np.allclose(stamps[..., 3], stamps[..., 2] / cut_stamps(res.noise, det.peak_yx, 21), atol=1e-5)


def test_missing_pixels_stay_missing():
    rng = np.random.default_rng(3)
    tpl = sky_noise(rng, 2, 25, 120.0)
    sci = sky_noise(rng, 2, 25, 120.0)
    tpl[0, :, 18:] = np.nan
    res = difference(tpl, sci, 3.0, 5.0, 120.0, 120.0)
    assert np.isnan(res.difference[0, :, 22:]).all()
    assert np.isfinite(res.difference[0, :, :14]).all()
    assert np.isfinite(res.difference[1]).all()


def test_measurements():
    n = 21
    imgs = np.stack([100 + gaussian(n, 1.7, flux=5e3), 100 + gaussian(n, 2.6, 10.3, 9.6, flux=5e3)])
    fw = adaptive_fwhm(imgs, sky=np.array([100.0, 100.0]))
    assert fw == pytest.approx([1.7 * FWHM_PER_SIGMA, 2.6 * FWHM_PER_SIGMA], rel=1e-4)
    assert estimate_sky(imgs) == pytest.approx([100.0, 100.0], abs=0.5)
    nan_frame = imgs.copy()
    nan_frame[0, :2] = np.nan
    assert np.isfinite(estimate_sky(nan_frame)).all()
    rng = np.random.default_rng(4)
    noise = estimate_pixel_noise(100 + 7.0 * rng.standard_normal((200, n, n)))
    assert np.median(noise) == pytest.approx(7.0, rel=0.05)


def test_psf_flux_closed_form():
    n, sigma, flux, sd = 21, 2.0, 1500.0, 5.0
    diff = gaussian(n, sigma, flux=flux)[None]
    noise = np.full((1, n, n), sd)
    f, err = psf_flux(diff, noise, np.array([sigma * FWHM_PER_SIGMA]))
    p = gaussian(n, sigma)
    assert f[0] == pytest.approx(flux, rel=1e-6)
    assert err[0] == pytest.approx(sd / np.sqrt((p**2).sum()), rel=1e-6)


def test_input_validation():
    a = np.zeros((2, 21, 21), np.float32)
    with pytest.raises(ValueError, match="same shape"):
        difference(a, np.zeros((2, 21, 20)), 3.0, 3.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"must be a scalar or have shape \(2,\)"):
        difference(a, a, np.ones(3), 3.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="finite and > 0"):
        difference(a, a, 0.0, 3.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"shape \(B, H, W\)"):
        difference(np.zeros(5), np.zeros(5), 3.0, 3.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="shift must have shape"):
        difference(a, a, 3.0, 3.0, 0.0, 0.0, shift=np.zeros((2, 3)))
