"""Tests of injection into real HiTS 2015 sequences (the packaged sample, so they run without ../shared)."""

import numpy as np
import pytest

from hits_stamps.cli import main
from hits_stamps.differencing import NOMINAL, VARIED, DifferencingVariety
from hits_stamps.errors import HitsStampsError
from hits_stamps.inject import BOGUS_KINDS, REAL_PLACEMENTS, InjectConfig, inject_stamps
from hits_stamps.io import read_stamps
from hits_stamps.realdata import build_real, packaged_sample_path, read_sequences, split_objects
from hits_stamps.stamps import GroupLeakError, check_disjoint_groups


@pytest.fixture(scope="module")
def sample():
    return read_sequences(packaged_sample_path())


@pytest.fixture(scope="module")
def injected(sample):
    return inject_stamps(600, seed=3, sequences=sample, variety=VARIED)


def test_quotas_labels_kinds_and_groups(injected, sample):
    assert len(injected) == 600
    assert injected.class_balance() == {"real": 300, "bogus": 300, "unknown": 0}
    assert set(injected.kind_counts()) == set(REAL_PLACEMENTS) | set(BOGUS_KINDS)
    real = np.isin(injected.kind, REAL_PLACEMENTS)
    assert (injected.labels == real).all()
    assert set(injected.groups) <= set(sample.object_name)
    # supernova hosts only for host placements, stars only for star placements
    cls = dict(zip(sample.object_name, sample.object_class, strict=True))
    assert {cls[g] for g in injected.groups[injected.kind == "injected_host"]} == {"SN"}
    assert "SN" not in {cls[g] for g in injected.groups[injected.kind == "injected_star"]}
    # every stamp is a candidate, and every injection is visible on its own
    assert (injected.snr >= 5).all()
    assert (injected.columns["injected_snr"][real] >= 5).all()
    assert np.isnan(injected.columns["injected_mag"][~real]).all()


def test_fading_is_negative_and_brightening_positive(injected):
    peak = injected.columns["peak_snr"]
    fading = injected.kind == "injected_fading"
    brightening = np.isin(injected.kind, ("injected_host", "injected_random"))
    assert np.median(peak[fading]) < -5
    assert np.median(peak[brightening]) > 5


def test_a_change_on_a_star_is_a_sizeable_fraction_of_its_flux(injected, sample):
    """Real on a star only when >= min_star_fraction of its template flux (the variable stars' labelling rule)."""
    c = injected.columns
    on_star = np.isfinite(c["star_template_flux"])
    kind = injected.kind[on_star]
    assert set(kind) == {"injected_star", "injected_fading"} and (kind == "injected_star").sum() > 20
    f, star = c["injected_flux"][on_star], c["star_template_flux"][on_star]
    frac = np.where(kind == "injected_fading", f / (star + f), f / star)
    assert frac.min() >= 0.15 * 0.999
    loose = inject_stamps(600, seed=3, sequences=sample, variety=VARIED, config=InjectConfig(min_star_fraction=0.0))
    lc = loose.columns
    sel = loose.kind == "injected_star"
    assert (lc["injected_flux"][sel] / lc["star_template_flux"][sel]).min() < 0.15  # the rule is what cuts them


def test_magnitudes_reach_below_the_limit(sample):
    s = inject_stamps(400, seed=0, sequences=sample, config=InjectConfig(real_fraction=1.0))
    faint = s.meta["fainter_than_limit"]
    assert faint["drawn"] > 0 and faint["written"] < faint["drawn"] / 4  # mostly lost below the limit
    assert (s.columns["injected_mag"] - s.columns["limit_mag"]).max() > -0.5  # kept down to the limit
    drawn, written = s.meta["drawn"], s.meta["written"]
    assert sum(drawn.values()) > sum(written.values())  # faint draws were not detected


def test_seeded_and_objects_respected(sample):
    a = inject_stamps(120, seed=5, sequences=sample)
    b = inject_stamps(120, seed=5, sequences=sample)
    np.testing.assert_array_equal(np.nan_to_num(a.images), np.nan_to_num(b.images))
    c = inject_stamps(120, seed=6, sequences=sample)
    assert not np.array_equal(np.nan_to_num(a.images), np.nan_to_num(c.images))
    train, _, test = split_objects(sample, (0.5, 0.0, 0.5), seed=0)
    inj = inject_stamps(120, seed=5, sequences=sample, objects=train)
    real = build_real(packaged_sample_path(), objects=test)
    assert set(inj.groups) <= set(train)
    check_disjoint_groups({"injected": inj, "test": real})
    with pytest.raises(GroupLeakError):
        check_disjoint_groups({"injected": inj, "all": build_real(packaged_sample_path())})


def test_variety_changes_the_difference_not_the_pixels(sample):
    nominal = build_real(packaged_sample_path())
    varied = build_real(packaged_sample_path(), variety=VARIED, seed=1)
    assert varied.meta["variety"]["shift_error"] == VARIED.shift_error
    same = np.intersect1d(nominal.ids, varied.ids)
    assert same.size > 50
    a = nominal[np.isin(nominal.ids, same)]
    b = varied[np.isin(varied.ids, same)]
    assert (a.ids == b.ids).all()
    # science cutouts are the same real pixels; differences differ
    np.testing.assert_array_equal(np.nan_to_num(a.images[..., 1]), np.nan_to_num(b.images[..., 1]))
    assert np.nanmean(np.abs(a.images[..., 2] - b.images[..., 2])) > 1.0


def test_variety_is_validated():
    with pytest.raises(ValueError, match="sky_noise_fraction must be a fraction"):
        DifferencingVariety(sky_noise_fraction=1.5)
    assert NOMINAL.is_nominal and not VARIED.is_nominal


@pytest.mark.parametrize("kwargs, match", [
    ({"real_fraction": 1.2}, "real_fraction must be in"),
    ({"placements": ("on_moon",), "placement_weights": (1.0,)}, "unknown"),
    ({"placement_weights": (1.0, 1.0)}, "4 names but 2 weights"),
    ({"host_radius": -1.0}, "host_radius must be"),
    ({"min_star_fraction": 1.0}, "min_star_fraction must be in"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(HitsStampsError, match=match):
        InjectConfig(**kwargs)


def test_cli_inject_and_build_real_parts(tmp_path, capsys):
    seq = str(packaged_sample_path())
    split = ["--object-split", "0.5,0,0.5", "--split-seed", "2"]
    assert main(["inject", seq, "--n", "150", "--out", str(tmp_path / "inj.npz"), *split, "--part", "train"]) == 0
    assert main(["build-real", seq, "--out", str(tmp_path / "test.npz"), *split, "--part", "test"]) == 0
    inj, test = read_stamps(tmp_path / "inj.npz"), read_stamps(tmp_path / "test.npz")
    assert len(inj) == 150 and inj.groups is not None
    check_disjoint_groups({"inj": inj, "test": test})
    capsys.readouterr()
    assert main(["inject", seq, "--n", "10", "--out", str(tmp_path / "x.npz"), "--part", "train"]) == 2
    assert "--object-split and --part go together" in capsys.readouterr().err
    assert main(["inject", seq, "--n", "10", "--out", str(tmp_path / "x.npz"), "--variety", "wild"]) == 2
    assert "--variety must be one of" in capsys.readouterr().err
