"""Preprocessing: NaN policies, scalings, exact save/restore, errors."""

import json
import warnings

import numpy as np
import pytest

from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.errors import HitsStampsError
from hits_stamps.preprocess import PreprocessConfig, Preprocessor, handle_nans, scale


@pytest.fixture
def images():
    return make_synthetic_stamps(n=40, seed=2).images


def _pre(**kwargs):
    return Preprocessor(PreprocessConfig(**kwargs))


def _no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


@pytest.mark.parametrize("scaling", ["minmax", "robust", "none"])
def test_output_layout(images, scaling):
    out = _no_warnings(_pre(scaling=scaling).fit(images).transform, images)
    assert out.shape == (40, 4, 21, 21) and out.dtype == np.float32 and out.flags.c_contiguous
    if scaling == "none":
        assert np.array_equal(out, images.transpose(0, 3, 1, 2))


def test_minmax_maps_each_stamp_channel_onto_0_1(images):
    x = images.copy()
    x[3, :, :, 1] = 7.0  # a flat channel
    out = _pre(scaling="minmax").transform(x)
    lo, hi = out.min(axis=(2, 3)), out.max(axis=(2, 3))  # (N, C)
    flat = np.zeros_like(lo, dtype=bool)
    flat[3, 1] = True
    assert np.all(lo[~flat] == 0.0) and np.all(hi[~flat] == 1.0)
    assert np.all(out[3, 1] == 0.0)
    ref = (x[5, :, :, 2] - x[5, :, :, 2].min()) / (x[5, :, :, 2].max() - x[5, :, :, 2].min())
    np.testing.assert_allclose(out[5, 2], ref, rtol=1e-6, atol=1e-7)


def test_minmax_does_not_depend_on_units(images):
    """eps is relative: stamps in tiny physical units are scaled, not zeroed as flat."""
    a = _pre(scaling="minmax").transform(images)
    b = _pre(scaling="minmax").transform(images.astype(np.float64) * 1e-17)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert b.max() == 1.0


def test_robust_standardisation(images):
    out = _pre(scaling="robust", clip=1e6).transform(images)
    for i, c in [(0, 0), (7, 2), (21, 3)]:
        x = images[i, :, :, c].astype(np.float64)
        med = np.median(x)
        mad = np.median(np.abs(x - med))
        np.testing.assert_allclose(out[i, c], (x - med) / (1.4826 * mad), rtol=1e-5, atol=1e-5)
        assert np.median(out[i, c]) == pytest.approx(0.0, abs=1e-6)  # 441 pixels: the median pixel maps to 0
        assert np.median(np.abs(out[i, c])) == pytest.approx(1 / 1.4826, rel=1e-5)


def test_robust_clips_and_handles_zero_mad():
    x = np.zeros((1, 9, 9, 1), np.float32)
    x[0, 4, 4, 0] = 50.0  # a cosmic-ray spike on an exactly flat background: MAD = 0
    out = _pre(scaling="robust", clip=10.0).transform(x)
    assert out[0, 0, 4, 4] == 10.0 and np.count_nonzero(out) == 1
    assert np.all(_pre(scaling="robust").transform(np.zeros((2, 9, 9, 1), np.float32)) == 0)


@pytest.mark.parametrize("scaling", ["minmax", "robust"])
def test_zero_policy(images, scaling):
    x = images.copy()
    x[1, 2, 3, 0] = np.nan
    x[1, 4, 4, 2] = -np.inf
    x[6, :, :, 3] = np.nan  # an all-NaN channel
    original = x.copy()
    pre = _pre(nan_policy="zero", scaling=scaling)
    with pytest.warns(UserWarning, match=r"images: 443 non-finite pixels in 2 of 40 stamps replaced \(nan_policy "
                      r"'zero'\); 1 stamp channels had no finite pixel and are all 0"):
        out = pre.transform(x)
    assert x.tobytes() == original.tobytes()  # input never mutated
    assert pre.last_nan_count_ == 443
    assert np.isfinite(out).all()
    assert out[1, 0, 2, 3] == 0.0 and out[1, 2, 4, 4] == 0.0 and np.all(out[6, 3] == 0.0)
    # statistics come from the finite pixels only: the rest of the stamp scales as if the pixel were absent
    finite = x[1, :, :, 0][np.isfinite(x[1, :, :, 0])].astype(np.float64)
    if scaling == "minmax":
        expected = (x[1, 0, 0, 0] - finite.min()) / (finite.max() - finite.min())
    else:
        med = np.median(finite)
        expected = np.clip((x[1, 0, 0, 0] - med) / (1.4826 * np.median(np.abs(finite - med))), -10, 10)
    assert out[1, 0, 0, 0] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # stamps without non-finite pixels are untouched by the policy
    clean = _no_warnings(pre.transform, images[[0, 2]])
    np.testing.assert_array_equal(out[[0, 2]], clean)


def test_median_policy(images):
    x = images.copy()
    x[4, 10, 10, 1] = np.nan
    original = x.copy()
    with pytest.warns(UserWarning, match=r"1 non-finite pixels in 1 of 40 stamps replaced \(nan_policy 'median'\)"):
        out = _pre(nan_policy="median", scaling="none").transform(x)
    assert x.tobytes() == original.tobytes()
    finite = x[4, :, :, 1][np.isfinite(x[4, :, :, 1])]
    assert out[4, 1, 10, 10] == np.median(finite)
    result = handle_nans(x, "median", report=False)
    assert result.nan_count == 1 and result.mask is None and np.isfinite(result.values).all()


def test_error_policy_refuses_all_nan_stamp(images):
    x = images.copy()
    x[9] = np.nan
    pre = _pre(nan_policy="error").fit(images, ("template", "science", "difference", "snr"))
    with pytest.raises(HitsStampsError, match=r"^night3\.h5 \[images\]: expected finite pixels \(nan_policy 'error'\); "
                       r"found 1764 non-finite pixels in 1 stamps \(first: stamp 9, channel template\); "
                       r"4 stamp channels have no finite pixel; use nan_policy 'zero' or 'median'"):
        pre.transform(x, source="night3.h5")
    with pytest.raises(HitsStampsError, match=r"^images: expected finite pixels"):
        pre.transform(x)
    _no_warnings(pre.transform, images)  # finite stamps pass


def test_report_false_is_silent_but_counts(images):
    x = images.copy()
    x[0, 0, 0, 0] = np.nan
    pre = _pre()
    _no_warnings(pre.transform, x, report=False)
    assert pre.last_nan_count_ == 1


@pytest.mark.parametrize("kwargs", [{"scaling": "minmax"}, {"scaling": "robust", "clip": 3.0, "nan_policy": "median"},
                                    {"scaling": "none", "nan_policy": "zero", "eps": 1e-4}])
def test_to_dict_from_dict_reproduces_transform_exactly(images, kwargs):
    x = images.copy()
    x[2, 5, 5, 1] = np.nan
    pre = _pre(**kwargs).fit(x, ("template", "science", "difference", "snr"))
    state = json.loads(json.dumps(pre.to_dict()))  # as stored in a model directory
    again = Preprocessor.from_dict(state)
    assert again.to_dict() == pre.to_dict()
    assert again.config == pre.config and again.channels_ == pre.channels_
    a = pre.transform(x, report=False)
    b = again.transform(x, report=False)
    assert a.tobytes() == b.tobytes()


def test_fit_statistics_ignore_non_finite(images):
    x = images.copy()
    x[0, :, :, 0] = np.nan
    pre = _pre().fit(x)
    vals = x[..., 0][np.isfinite(x[..., 0])]
    med = float(np.median(vals))
    assert pre.channel_median_[0] == med
    assert pre.channel_scale_[0] == pytest.approx(1.4826 * np.median(np.abs(vals - med)), rel=1e-6)
    assert pre.channels_ == ("ch0", "ch1", "ch2", "ch3")


def test_channel_count_mismatch(images):
    pre = _pre().fit(images, ("template", "science", "difference", "snr"))
    with pytest.raises(HitsStampsError, match=r"stamps have 3 channels; this model was fitted on 4 \(template, sci"):
        pre.transform(images[..., :3])
    with pytest.raises(HitsStampsError, match=r"channels: expected 4 names to match the images; found 2"):
        _pre().fit(images, ("a", "b"))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: PreprocessConfig(nan_policy="drop"), r"nan_policy must be one of \('zero', 'median', 'error'\)"),
        (lambda: PreprocessConfig(scaling="zscale"), r"scaling must be one of"),
        (lambda: PreprocessConfig(clip=0), r"clip must be > 0"),
        (lambda: Preprocessor.from_dict({"config": {"nan_policy": "zero", "typo": 1}}),
         r"preprocessing config: unknown keys \['typo'\]"),
        (lambda: Preprocessor.from_dict({"config": {}, "extra": 1}), r"unknown keys \['extra'\]"),
        (lambda: Preprocessor.from_dict({"channels": None}), r"expected a dict with a 'config' entry"),
        (lambda: _pre().transform(np.zeros((2, 21, 21), np.float32)), r"images: expected shape \(N, H, W, C\)"),
        (lambda: scale(np.zeros((1, 3, 3, 1)), "zscale"), r"scaling must be one of"),
        (lambda: handle_nans(np.zeros((1, 3, 3, 1)), "drop"), r"nan_policy must be one of"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(HitsStampsError, match=match):
        call()


# ----------------------------------------------------------------------------- geometry and channels
def test_fit_size_crops_about_the_centre_and_pads_with_nan():
    from hits_stamps.geometry import fit_size

    x = np.arange(2 * 7 * 7 * 1, dtype=np.float32).reshape(2, 7, 7, 1)
    crop = fit_size(x, (3, 3))
    np.testing.assert_array_equal(crop, x[:, 2:5, 2:5])
    pad = fit_size(x, (10, 9))
    assert pad.shape == (2, 10, 9, 1)
    np.testing.assert_array_equal(pad[:, 1:8, 1:8], x)
    assert np.isnan(pad).sum() == 2 * (10 * 9 - 49)
    mixed = fit_size(x, (5, 9))  # crop rows, pad columns
    np.testing.assert_array_equal(mixed[:, :, 1:8], x[:, 1:6])
    assert fit_size(x, (7, 7)) is x
    x0 = x.copy()
    fit_size(x, (3, 3))
    np.testing.assert_array_equal(x, x0)  # input untouched


def test_plan_input_maps_channels_by_name():
    from hits_stamps.geometry import plan_input, snr_from_difference

    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, (5, 9, 9, 3)).astype(np.float32)
    a = plan_input((9, 9, 3), ("Diff", "SCI", "reference"), (9, 9), ("template", "science", "difference", "snr"))
    out = a.apply(x)
    np.testing.assert_array_equal(out[..., 0], x[..., 2])
    np.testing.assert_array_equal(out[..., 1], x[..., 1])
    np.testing.assert_array_equal(out[..., 2], x[..., 0])
    sigma = 1.4826 * np.median(np.abs(x[0, ..., 0] - np.median(x[0, ..., 0])))
    np.testing.assert_allclose(out[0, ..., 3], x[0, ..., 0] / sigma, rtol=1e-5)
    assert not a.identity and a.notes
    same = plan_input((9, 9, 3), ("a", "b", "c"), (9, 9), ("a", "b", "c"))
    assert same.identity and same.apply(x) is x
    flat = np.zeros((1, 4, 4), dtype=np.float32)
    assert np.isnan(snr_from_difference(flat)).all()  # no noise estimate: missing, not invented
    with pytest.raises(HitsStampsError, match=r"needs channel 'science' .*found channels template, difference"):
        plan_input((9, 9, 2), ("template", "difference"), (9, 9), ("template", "science"))
    with pytest.raises(HitsStampsError, match=r"expected channels named like .*found ch0, ch1, ch2"):
        plan_input((9, 9, 3), ("ch0", "ch1", "ch2"), (9, 9), ("template", "science", "difference"))
    with pytest.raises(HitsStampsError, match=r"expected distinct channel names; found \['science'\]"):
        plan_input((9, 9, 2), ("sci", "science"), (9, 9), ("science",))


CH = ("template", "science", "difference", "snr")


def test_joint_keeps_the_flux_ratio_of_difference_to_star(images):
    """A 4% and a 40% change of the same star look alike under minmax; `joint` tells them apart."""
    yy, xx = np.mgrid[:21, :21]
    star = 1000.0 * np.exp(-((yy - 10) ** 2 + (xx - 10) ** 2) / 8.0)
    stamps = np.zeros((2, 21, 21, 4), np.float32)
    for i, change in enumerate((0.04, 0.40)):
        stamps[i, ..., 0] = 50 + star
        stamps[i, ..., 1] = 50 + star * (1 + change)
        stamps[i, ..., 2] = star * change
        stamps[i, ..., 3] = star * change / 5.0
    minmax = _pre(scaling="minmax").fit(stamps, CH).transform(stamps)
    np.testing.assert_allclose(minmax[0], minmax[1], atol=1e-6)  # the ratio is gone
    joint = _no_warnings(_pre(scaling="joint").fit(stamps, CH).transform, stamps)
    # difference peak over the science peak above background: change / (1 + change)
    assert joint[0, 2].max() == pytest.approx(0.04 / 1.04, rel=1e-4)
    assert joint[1, 2].max() == pytest.approx(0.40 / 1.40, rel=1e-4)
    assert joint[1, 1].max() == pytest.approx(1.0) and joint[1, 0].max() == pytest.approx(1 / 1.4, rel=1e-5)
    np.testing.assert_allclose(joint[:, 3], minmax[:, 3])  # the SNR channel is scaled on its own
    # in any unit
    np.testing.assert_allclose(_pre(scaling="joint").fit(stamps, CH).transform(stamps * 7.3), joint, atol=1e-6)


def test_joint_needs_named_channels_and_survives_missing_pixels(images):
    with pytest.raises(HitsStampsError, match="scaling 'joint' needs channels named template, science, difference"):
        _pre(scaling="joint").fit(images)
    x = images.copy()
    x[1, :, :, 0] = np.nan  # an all-NaN template
    x[2, :, :, :3] = np.nan  # no image channel at all
    x[3, 4, 4, 2] = np.inf
    pre = _pre(scaling="joint").fit(images, CH)
    with pytest.warns(UserWarning, match="non-finite pixels"):
        out = pre.transform(x)
    assert np.isfinite(out).all() and np.abs(out).max() <= 10
    assert np.all(out[2, :3] == 0) and out[3, 2, 4, 4] == 0
    assert out[1, 1].max() == pytest.approx(1.0)  # the science image alone sets the scale
    assert Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict()))).transform(x, report=False).tobytes() == \
        out.tobytes()
