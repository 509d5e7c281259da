"""Tests of the real-pixel path: sequence files in, labelled difference stamps out."""

import re

import numpy as np
import pytest

from hits_stamps.cli import main
from hits_stamps.errors import StampFileError
from hits_stamps.io import read_stamps
from hits_stamps.realdata import (
    RealConfig,
    best_template,
    build_real,
    default_sequences_path,
    object_epochs,
    packaged_sample_path,
    prepare_cutouts,
    read_sequences,
    write_sequence_sample,
)
from hits_stamps.simulate import load_conditions
from hits_stamps.simulate.scene import add_noise, render_points

FIELD = "Blind15A_02"


def make_sequences(path, with_lc=True, seed=0):
    """A tiny sequence file on real HiTS 2015 conditions of one field.

    Objects: 0 `SN` (appears from epoch 5, bright), 1 `NV` (faint static star: subtracts cleanly),
    2 `RRL` (a star that brightens strongly from epoch 5), 3 `EB` (faint static star), 4 `SN`
    without light-curve rows (appears from epoch 5). Epochs 0-4 are the template candidates.
    """
    table = load_conditions()
    rows = np.flatnonzero((table.field == FIELD) & table.usable())[:8]
    rows = rows[np.argsort(table.mjd[rows])]
    rng = np.random.default_rng(seed)
    n_ep, size = rows.size, 21
    fwhm = 0.875 * table.seeing[rows] / 0.27
    scale = table.exp_time_s[rows] * 10 ** (0.4 * (table.zero_point[rows] - 25.0))  # ADU of a g = 25 source
    names = np.array(["SNfake", "NVfake", "RRLfake", "EBfake", "SNnolc"])
    classes = np.array(["SN", "NV", "RRL", "EB", "SN"])
    stamps, oi, mjd = [], [], []
    for j in range(len(names)):
        flux = np.zeros(n_ep)
        if classes[j] in ("SN",):
            flux[5:] = 10 ** (-0.4 * (19.5 - 25)) * scale[5:]
        elif classes[j] == "RRL":
            flux[:] = 10 ** (-0.4 * (21.5 - 25)) * scale
            flux[5:] *= 8.0
        else:
            flux[:] = 10 ** (-0.4 * (22.5 - 25)) * scale
        model = np.full((n_ep, size, size), 0, np.float32) + table.sky_level_adu[rows].astype(np.float32)[:, None, None]
        model += render_points((size, size), np.full(n_ep, 10.0), np.full(n_ep, 10.0), flux, fwhm)
        stamps.append(add_noise(model, rng))
        oi.append(np.full(n_ep, j))
        mjd.append(table.mjd[rows])
    arrays = {
        "stamps": np.concatenate(stamps).astype(np.float32),
        "object_index": np.concatenate(oi).astype(np.int32),
        "mjd": np.concatenate(mjd),
        "centroid_xy": np.full((n_ep * len(names), 2), np.nan, np.float32),
        "object_name": names,
        "object_class": classes,
        "field": np.full(len(names), FIELD),
    }
    if with_lc:
        t = table.mjd[rows]
        snr = np.where(np.arange(n_ep) >= 5, 20.0, 0.5)
        arrays.update(lc_object_index=np.zeros(n_ep, np.int32), lc_mjd=t, lc_mjd_ref=np.full(n_ep, t[0]),
                      lc_flux_adu=snr * 50.0, lc_flux_err_adu=np.full(n_ep, 50.0))
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return make_sequences(tmp_path_factory.mktemp("seq") / "fake.npz")


def test_labels_per_class(fake):
    s = build_real(fake)
    name = np.array(s.meta["object_names"])[s.columns["object_index"]]
    sn = name == "SNfake"
    assert (s.labels[sn] == 1).all() and (s.kind[sn] == "sn").all()
    assert sn.sum() == 3  # epochs 5-7: survey SNR 20; earlier ones have survey SNR 0.5 and are skipped
    assert (s.columns["survey_snr"][sn] == 20).all()
    rrl = name == "RRLfake"
    assert rrl.sum() == 3 and (s.labels[rrl] == 1).all() and (s.kind[rrl] == "variable").all()
    nolc = name == "SNnolc"
    assert (s.labels[nolc] == 1).all() and nolc.sum() == 3  # own detection decides without a light curve
    assert not np.isin(name, ["EBfake"]).any() or (s.labels[name == "EBfake"] == 0).all()
    # every differenced pair is either written or counted
    assert s.meta["written"] + sum(v for k, v in s.meta["skipped"].items()
                                   if k not in ("no_data", "template_or_earlier_epoch",
                                                "objects_without_epoch_before_rise")) == s.meta["pairs_differenced"]


def test_ids_columns_and_channels(fake):
    s = build_real(fake)
    assert s.images.shape[1:] == (21, 21, 4)
    assert all(re.fullmatch(r"[A-Za-z]+:\d+\.\d{6}", i) for i in s.ids)
    assert len(set(s.ids.tolist())) == len(s)
    for col in ("object_index", "mjd", "mjd_template", "seeing", "fwhm", "sky", "zero_point", "peak_snr",
                "psf_flux_snr", "survey_snr", "detected", "conditions_matched"):
        assert s.columns[col].shape == (len(s),)
    assert (s.columns["conditions_matched"] == 1).all()
    assert (s.columns["mjd"] > s.columns["mjd_template"]).all()
    assert np.allclose(s.snr, np.abs(s.columns["peak_snr"]))


def test_file_without_light_curves(tmp_path):
    path = make_sequences(tmp_path / "nolc.npz", with_lc=False)
    s = build_real(path)
    name = np.array(s.meta["object_names"])[s.columns["object_index"]]
    assert ((s.kind[name == "SNfake"] == "sn") & (s.labels[name == "SNfake"] == 1)).all()
    assert np.isnan(s.columns["survey_snr"]).all()


def test_missing_pixels_become_nan(tmp_path):
    path = make_sequences(tmp_path / "z.npz")
    with np.load(path) as d:
        arrays = dict(d)
    arrays["stamps"][5, :, 15:] = 0  # a CCD edge in one science epoch of the SN
    arrays["stamps"][6] = 0  # no data at all
    np.savez(path, **arrays)
    s = build_real(path)
    assert s.meta["skipped"]["no_data"] == 1
    assert np.isnan(s.images).any()


def test_flagged_pixel_values_are_missing_and_never_the_template(tmp_path):
    """HiTS 2015 cutouts hold 9.998e7 where a pixel was flagged: not flux, so never a template's pixels."""
    path = make_sequences(tmp_path / "flag.npz")
    seq = read_sequences(path)
    cut = prepare_cutouts(seq)
    _, pre = object_epochs(seq, cut, 2)  # RRLfake: bright, brightens from epoch 5
    t = best_template(pre, cut)
    with np.load(path) as d:
        arrays = dict(d)
    arrays["stamps"][t, 9:11, 9:11] = 9.998e7  # on the star, in the epoch that would be the template
    np.savez(path, **arrays)
    s = build_real(path)
    assert s.meta["bad_value_pixels"] == 4
    assert np.nanmax(s.images) < 1e6
    flagged = prepare_cutouts(read_sequences(path))
    assert np.isnan(flagged.images[t, 9:11, 9:11]).all() and flagged.cond["bad_pixels"][t] == 4
    assert best_template(pre, flagged) != t


def test_bad_sequence_files(tmp_path, fake):
    with pytest.raises(StampFileError, match="no such file"):
        read_sequences(tmp_path / "none.npz")
    txt = tmp_path / "x.h5"
    txt.write_bytes(b"not a zip")
    with pytest.raises(StampFileError, match="not an .npz archive"):
        read_sequences(txt)
    with np.load(fake) as d:
        arrays = dict(d)
    bad = dict(arrays)
    del bad["mjd"]
    np.savez(tmp_path / "a.npz", **bad)
    with pytest.raises(StampFileError, match=r"\[mjd\]"):
        read_sequences(tmp_path / "a.npz")
    bad = dict(arrays, object_index=arrays["object_index"][:-1])
    np.savez(tmp_path / "b.npz", **bad)
    with pytest.raises(StampFileError, match=r"\[object_index\].*integer array of shape"):
        read_sequences(tmp_path / "b.npz")
    bad = dict(arrays, object_index=arrays["object_index"] + 10)
    np.savez(tmp_path / "c.npz", **bad)
    with pytest.raises(StampFileError, match=r"values in \[0, 5\)"):
        read_sequences(tmp_path / "c.npz")
    bad = {k: v for k, v in arrays.items() if k != "lc_mjd"}
    np.savez(tmp_path / "d.npz", **bad)
    with pytest.raises(StampFileError, match="all of .* or none"):
        read_sequences(tmp_path / "d.npz")
    np.savez(tmp_path / "e.npz", stamps=np.empty(2, dtype=object), allow_pickle=True)
    with pytest.raises(StampFileError, match="no pickled objects"):
        read_sequences(tmp_path / "e.npz")
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 21, 21, 4), np.float32))
    with pytest.raises(StampFileError, match="already built"):
        read_sequences(tmp_path / "f.npz")


def test_packaged_sample_builds_both_classes():
    assert default_sequences_path().exists()
    assert packaged_sample_path().stat().st_size < 1_500_000
    s = build_real(packaged_sample_path())
    bal = s.class_balance()
    assert bal["real"] > 50 and bal["bogus"] > 20
    assert set(s.kind_counts()) == {"sn", "bad_subtraction"}


def test_write_sequence_sample(tmp_path, fake):
    out = write_sequence_sample(fake, tmp_path / "sample.npz", n_sn=1, n_nv=1)
    seq = read_sequences(out)
    assert seq.object_name.tolist() == ["SNfake", "NVfake"]
    assert seq.stamps.shape[0] == 2 * 8
    assert (seq.lc["lc_object_index"] == 0).all()


def test_config_changes_labels(fake):
    strict = build_real(fake, config=RealConfig(survey_snr_min=50.0))
    name = np.array(strict.meta["object_names"])[strict.columns["object_index"]]
    assert not (name == "SNfake").any()


def test_cli_build_real(tmp_path, fake, capsys):
    out = tmp_path / "real.npz"
    assert main(["build-real", str(fake), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "not written" in text
    assert len(read_stamps(out)) > 0
    assert main(["build-real", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "r2.npz")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_full_hits2015_set(hits2015_dir):
    s = build_real(hits2015_dir / "hits2015_sequences.npz")
    bal = s.class_balance()
    assert bal["real"] > 400 and bal["bogus"] > 4000
    assert s.meta["objects"] == 397
