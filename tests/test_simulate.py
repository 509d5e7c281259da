"""Tests of the simulator: conditions, scene rendering, stamps, calibration and the CLI."""

import numpy as np
import pytest

from hits_stamps.cli import main
from hits_stamps.differencing import FWHM_PER_SIGMA, adaptive_fwhm
from hits_stamps.errors import StampFileError
from hits_stamps.io import read_stamps
from hits_stamps.simulate import (
    BOGUS_KINDS,
    REAL_KINDS,
    SimConfig,
    kind_quota,
    load_conditions,
    match_conditions,
    sample_pairs,
    simulate_stamps,
)
from hits_stamps.simulate.conditions import template_pools
from hits_stamps.simulate.scene import (
    mag_to_adu,
    power_law_mags,
    psf_components,
    render_galaxies,
    render_points,
    standard_normal,
)


@pytest.fixture(scope="module")
def table():
    return load_conditions()


@pytest.fixture(scope="module")
def sim(table):
    return simulate_stamps(400, seed=3, conditions=table)


def test_packaged_conditions(table):
    assert len(table) == 1344
    assert table.usable().sum() >= 1300
    assert set(np.unique(table.exp_time_s[table.usable()])) <= {86.0, 102.0}
    assert (table.n_cutouts >= 0).all() and table.n_cutouts.sum() > 10_000


def test_conditions_file_errors(tmp_path):
    bad = tmp_path / "c.csv"
    bad.write_text("field,mjd\nA,1\n")
    with pytest.raises(StampFileError, match="the HiTS conditions columns"):
        load_conditions(bad)
    with pytest.raises(StampFileError, match="no such file"):
        load_conditions(tmp_path / "missing.csv")


def test_sample_pairs_template_is_good_seeing_same_field(table):
    rng = np.random.default_rng(0)
    pools = template_pools(table, weighting="cutouts")
    t, s = sample_pairs(table, 2000, rng, pools)
    assert np.array_equal(table.field[t], table.field[s])
    for f in np.unique(table.field[s])[:5]:
        rows = np.flatnonzero((table.field == f) & table.usable())
        cut = np.quantile(table.seeing[rows], 1 / 3)
        assert (table.seeing[t[table.field[t] == f]] <= cut + 1e-12).all()
    assert (table.n_cutouts[s] > 0).all()  # weighted like the real set: unobserved rows never drawn


def test_match_conditions(table):
    rows = np.array([5, 100, 700])
    got = match_conditions(table, table.mjd[rows] + 1e-4, table.field[rows])
    assert got.tolist() == rows.tolist()
    assert match_conditions(table, np.array([40000.0]))[0] == -1


def test_psf_rendering_closed_forms():
    fw = np.array([3.5, 5.0, 7.0])
    img = render_points((41, 41), np.full(3, 20.0), np.full(3, 20.0), np.full(3, 1e4), fw)
    assert img.sum(axis=(1, 2)) == pytest.approx(np.full(3, 1e4), rel=2e-3)
    measured = adaptive_fwhm(img.astype(np.float64), sky=np.zeros(3))
    assert measured == pytest.approx(fw, rel=0.01)  # PSFs are named by their adaptive-moment FWHM
    w, sig = psf_components(fw, wing_scale=np.array([0.5, 1.0, 2.0]))
    assert np.allclose(w.sum(axis=1), 1)
    assert w[0, 2] < w[1, 2] < w[2, 2]
    gal = render_galaxies((61, 61), np.array([30.0]), np.array([30.0]), np.array([5e3]), np.array([3.0]),
                          np.array([0.5]), np.array([0.3]), np.array([4.0]))
    assert gal.sum() == pytest.approx(5e3, rel=0.01)


def test_magnitudes_and_noise():
    rng = np.random.default_rng(0)
    m = power_law_mags(rng, 20_000, 18.0, 22.0, 0.3)
    assert m.min() >= 18 and m.max() <= 22
    hist = np.histogram(m, bins=[18, 19, 20, 21, 22])[0]
    assert hist[1] / hist[0] == pytest.approx(10**0.3, rel=0.1)  # dN/dm ~ 10^(0.3 m)
    assert mag_to_adu(25.0, 25.0, 86.0) == pytest.approx(86.0)
    z = standard_normal(rng, (200_000,))
    assert z.mean() == pytest.approx(0, abs=0.01) and z.std() == pytest.approx(1, abs=0.01)
    assert np.mean(np.abs(z) > 3) == pytest.approx(0.0027, abs=0.0008)


def test_kind_quota():
    q = kind_quota(1000, 0.3, SimConfig())
    assert sum(q.values()) == 1000
    assert sum(q[k] for k in REAL_KINDS) == 300
    assert set(q) <= set(REAL_KINDS) | set(BOGUS_KINDS)
    assert kind_quota(0, 0.5, SimConfig()) == {}


def test_simulated_stamps(sim):
    assert sim.images.shape == (400, 21, 21, 4)
    assert sim.class_balance() == {"real": 200, "bogus": 200, "unknown": 0}
    assert set(sim.kind_counts()) == set(REAL_KINDS) | set(BOGUS_KINDS)
    assert (np.abs(sim.columns["peak_snr"]) >= 5).all()  # every stamp is a detection
    for col in ("seeing", "sky", "zero_point", "limit_mag", "fwhm", "seeing_template", "mag"):
        assert sim.columns[col].shape == (400,)
    nan_stamps = np.isnan(sim.images).any(axis=(1, 2, 3))
    assert np.array_equal(nan_stamps, sim.kind == "edge")
    assert np.isfinite(sim.snr).all()
    real = sim.labels == 1
    assert (sim.snr[real] > 2).all()  # a real transient carries true signal
    assert np.median(sim.snr[sim.kind == "noise"]) < 1  # a noise fluctuation carries none
    assert np.isfinite(sim.columns["mag"][real]).all()
    assert len(set(sim.ids.tolist())) == 400


def test_simulation_is_reproducible_and_independent_of_threads(table):
    a = simulate_stamps(120, seed=11, conditions=table, workers=1)
    b = simulate_stamps(120, seed=11, conditions=table, workers=2)
    c = simulate_stamps(120, seed=12, conditions=table, workers=1)
    assert np.array_equal(a.images, b.images, equal_nan=True)
    assert np.array_equal(a.kind, b.kind)
    assert not np.array_equal(a.images, c.images, equal_nan=True)


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_real_fraction_extremes(table, fraction):
    s = simulate_stamps(60, seed=0, real_fraction=fraction, conditions=table)
    assert (s.labels == int(fraction)).all()


def test_simulate_argument_errors():
    with pytest.raises(ValueError, match="real_fraction"):
        simulate_stamps(10, real_fraction=1.5)
    with pytest.raises(ValueError, match="n must be"):
        simulate_stamps(-1)
    with pytest.raises(ValueError, match="unknown kind 'ghost'"):
        SimConfig(bogus_mix=(("ghost", 1.0),))
    with pytest.raises(ValueError, match="canvas"):
        SimConfig(canvas=15)


def test_calibration_on_packaged_sample(tmp_path, table):
    from hits_stamps.realdata import packaged_sample_path
    from hits_stamps.simulate.calibrate import STATISTICS, calibrate, write_calibration

    cal = calibrate(packaged_sample_path(), n=300, seed=0, conditions=table)
    assert set(cal.ks) == set(STATISTICS)
    assert all(0 <= d <= 1 for d, _ in cal.ks.values())
    assert cal.ks["star_fwhm_px"][0] < 0.3  # the simulated PSF widths follow the real ones
    assert cal.mag_window[0] < cal.mag_window[1]
    paths = write_calibration(cal, tmp_path / "cal")
    assert all(p.exists() for p in paths.values())
    assert "KS D" in paths["markdown"].read_text()


def test_cli_simulate(tmp_path, capsys):
    out = tmp_path / "sim.npz"
    assert main(["simulate", "--n", "50", "--seed", "1", "--real-fraction", "0.4", "--out", str(out)]) == 0
    s = read_stamps(out)
    assert len(s) == 50 and s.class_balance()["real"] == 20
    assert main(["simulate", "--n", "50", "--out", str(out)]) == 2  # exists, no --overwrite
    assert "output exists" in capsys.readouterr().err
    assert main(["simulate", "--n", "5", "--real-fraction", "2", "--out", str(tmp_path / "x.npz")]) == 2
    assert main(["simulate", "--n", "5", "--out", str(tmp_path / "x.txt")]) == 2
    assert main(["info", str(out)]) == 0
    assert "sn" in capsys.readouterr().out


def test_psf_width_in_stamps_follows_conditions(sim):
    # the science FWHM column is the pipeline's nominal width, psf_scale * seeing / 0.27
    assert np.allclose(sim.columns["fwhm"], 0.875 * sim.columns["seeing"] / 0.27)
    assert FWHM_PER_SIGMA == pytest.approx(2.3548, abs=1e-4)


def test_simulate_batch_rejects_unknown_kinds(table):
    from hits_stamps.simulate import simulate_batch

    with pytest.raises(ValueError, match=r"found \['ghost'\]"):
        simulate_batch(np.array(["sn", "ghost"]), np.random.default_rng(0), SimConfig(), table)


def test_cli_calibrate(tmp_path, capsys):
    from hits_stamps.realdata import packaged_sample_path

    out = tmp_path / "cal"
    assert main(["calibrate", "--sequences", str(packaged_sample_path()), "--n", "100", "--out", str(out)]) == 0
    assert (out / "sim_calibration.png").exists() and (out / "calibration.json").exists()
    assert "star FWHM" in capsys.readouterr().out
    assert main(["calibrate", "--sequences", str(tmp_path / "none.npz"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
