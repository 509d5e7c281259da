"""Generated stamps derived through the differencing module (generation.consistent)."""

import numpy as np
import pytest

from hits_stamps.differencing import difference
from hits_stamps.errors import HitsStampsError
from hits_stamps.generation import generate
from hits_stamps.generation.consistent import (
    BANK_FILE,
    ConditionBank,
    check_consistency,
    derive_stamps,
    fit_condition_bank,
    fit_flux_scale,
    load_bank,
)
from hits_stamps.simulate import simulate_stamps
from hits_stamps.training import TrainConfig, fit

TINY_CVAE = {"latent_dim": 3, "base_channels": 4, "hidden": 16, "condition": "kind"}


@pytest.fixture(scope="module")
def sim():
    return simulate_stamps(360, seed=5, workers=1)


def _kind_index(stamps):
    kinds = sorted(set(stamps.kind))
    return np.array([kinds.index(k) for k in stamps.kind]), kinds


@pytest.fixture(scope="module")
def bank(sim):
    cond, _ = _kind_index(sim)
    return fit_condition_bank(sim, cond)


def test_flux_scale_fit_recovers_the_scale_a_difference_was_made_with(sim):
    x = sim.images[:40]
    t, s = x[..., 0], x[..., 1]
    fw_t, fw_s = sim.columns["fwhm_template"][:40], sim.columns["fwhm"][:40]
    k_true = np.linspace(0.6, 1.6, 40)
    from hits_stamps.differencing import estimate_sky

    d = difference(t, s, fw_t, fw_s, estimate_sky(t), estimate_sky(s), flux_scale=k_true).difference
    k = fit_flux_scale(t, s, d, fw_t, fw_s)
    assert np.median(np.abs(k - k_true)) < 0.02


def test_every_derived_stamp_satisfies_the_differencing_identities(sim, bank):
    cond, _ = _kind_index(sim)
    junk = sim[:60]
    images = junk.images.copy()
    rng = np.random.default_rng(0)
    images[..., 2] = rng.normal(0, 1e6, images[..., 2].shape)  # a difference channel with nothing to do with T, S
    images[..., 3] = 7.0
    images[0, 10, 10, 1] = 1.4e8  # a science pixel far outside the data
    images[1, 3, 3, 0] = -5e4
    junk.images = images
    out = derive_stamps(junk, cond[:60], bank, seed=1)
    check = check_consistency(out)
    assert check["max_rel_err_difference"] < 1e-5 and check["max_rel_err_snr"] < 1e-5 and check["nan_mismatch"] == 0
    # independently of check_consistency: D = S' - conv(T') with the stored conditions, SNR = D / noise
    c = out.columns
    res = difference(out.images[..., 0], out.images[..., 1], c["fwhm_template"], c["fwhm"], c["sky_template"],
                     c["sky"], flux_scale=c["flux_scale"])
    np.testing.assert_allclose(out.images[..., 2], res.difference, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(out.images[..., 3], res.difference / res.noise, rtol=1e-4, atol=1e-5)
    # clipped into the training range, and counted
    for ch in (0, 1):
        v = out.images[..., ch]
        v = v[np.isfinite(v)]
        assert v.min() >= bank.lo[ch] and v.max() <= bank.hi[ch]
    assert c["clipped_pixels"][0] >= 1 and c["clipped_pixels"][1] >= 1
    assert out.meta["consistency"]["clipped_pixels"] == int(c["clipped_pixels"].sum()) >= 2


def test_derivation_of_real_stamps_reproduces_their_difference(sim, bank):
    """The bank's own stamps, passed as if generated: the derived difference is theirs (21x21 cut edges aside)."""
    cond, _ = _kind_index(sim)
    part = sim[:120]
    out = derive_stamps(part, cond[:120], bank, seed=0, n_candidates=8)
    a, b = part.images[..., 2], out.images[..., 2]
    ok = np.isfinite(a) & np.isfinite(b)
    assert np.corrcoef(a[ok], b[ok])[0, 1] > 0.9


def test_masks_of_the_condition_come_back_as_nan(sim, bank):
    cond, kinds = _kind_index(sim)
    edge = kinds.index("edge")
    rows = bank.rows_of(edge)
    assert (bank.mask_index[rows] >= 0).all()  # every simulated chip-edge stamp has no-data pixels
    gen = sim[np.flatnonzero(cond == edge)[:10]]
    gen.images = np.nan_to_num(gen.images, nan=100.0)  # a generator draws no NaN
    out = derive_stamps(gen, np.full(len(gen), edge), bank, seed=2)
    assert out.meta["consistency"]["stamps_with_nan_mask"] == len(gen)
    assert np.isnan(out.images[..., :2]).any(axis=(1, 2, 3)).all()
    assert check_consistency(out)["nan_mismatch"] == 0
    sn = derive_stamps(sim[np.flatnonzero(cond == kinds.index("sn"))[:10]], np.full(10, kinds.index("sn")), bank)
    assert np.isfinite(sn.images).all()


def test_bank_round_trips_and_needs_fwhm_columns(sim, bank, tmp_path):
    bank.save(tmp_path / "b.npz")
    back = ConditionBank.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(back.flux_scale, bank.flux_scale)
    np.testing.assert_array_equal(back.masks, bank.masks)
    bare = sim[:10]
    bare.columns = {}
    with pytest.raises(HitsStampsError, match="fwhm"):
        fit_condition_bank(bare, np.zeros(10, int))


def test_generate_derives_through_differencing_by_default(sim, tmp_path):
    out = tmp_path / "cvae"
    fit(TrainConfig(model="cvae", epochs=1, batch_size=64, model_kwargs=TINY_CVAE), sim, out, progress=False)
    assert (out / BANK_FILE).exists() and load_bank(out) is not None
    g = generate(out, 40, "bogus", seed=3)
    assert g.meta["consistency"]["derived"] is True
    check = check_consistency(g)
    assert check["max_rel_err_difference"] < 1e-5 and check["max_rel_err_snr"] < 1e-5
    one = generate(out, 40, "bogus", seed=3, candidates=1)  # a random condition of the kind per stamp
    assert one.meta["consistency"]["n_candidates"] == 1 and check_consistency(one)["max_rel_err_difference"] < 1e-5
    assert not np.array_equal(one.columns["bank_row"], g.columns["bank_row"])
    raw = generate(out, 40, "bogus", seed=3, consistent=False)
    assert raw.meta["consistency"] == {"derived": False}
    b = load_bank(out)
    fin = np.isfinite(g.images[..., :2])  # template and science are the network's, clipped to the training range
    np.testing.assert_array_equal(np.clip(raw.images[..., :2], b.lo, b.hi)[fin], g.images[..., :2][fin])
    from hits_stamps.generation.sample import generate_in_snr_range

    faint = generate_in_snr_range(out, 15, "real", snr_min=0.0, snr_max=1e9, seed=1)
    assert faint.meta["consistency"]["clipped_pixels"] == int(faint.columns["clipped_pixels"].sum())
    assert check_consistency(faint)["max_rel_err_difference"] < 1e-5
    (out / BANK_FILE).unlink()
    with pytest.raises(HitsStampsError, match="no conditions.npz"):
        generate(out, 2, "bogus", consistent=True)


def test_the_judge_must_not_be_the_tuner_or_its_architecture(tmp_path):
    import json
    import shutil

    from hits_stamps.datasets import make_synthetic_stamps
    from hits_stamps.generation.judge import evaluate_generator
    from hits_stamps.generation.tune import tune_temperatures

    train, test = make_synthetic_stamps(120, seed=3), make_synthetic_stamps(60, seed=4)
    tiny_cnn = {"widths": [4, 8], "hidden": 8}
    gen = tmp_path / "cvae"
    fit(TrainConfig(model="cvae", epochs=1, batch_size=32, model_kwargs={**TINY_CVAE, "condition": "class"}),
        train, gen, progress=False)
    tuner = fit(TrainConfig(model="rotinv-cnn", epochs=1, model_kwargs=tiny_cnn), train, tmp_path / "tuner",
                progress=False)
    twin = fit(TrainConfig(model="rotinv-cnn", epochs=1, seed=1, model_kwargs=tiny_cnn), train, tmp_path / "twin",
               progress=False)
    other = fit(TrainConfig(model="seed-cnn", epochs=1), train, tmp_path / "other", progress=False)
    tune_temperatures(gen, tuner.path, temperatures=(0.5, 1.0), n_per_condition=5)
    kw = dict(progress=False, train=train, max_per_class=10, make_figures=False, tstr=False)
    with pytest.raises(HitsStampsError, match="chose the generator's settings"):
        evaluate_generator(gen, test, tmp_path / "j1", classifier=tuner.path, **kw)
    with pytest.raises(HitsStampsError, match="architecture that chose"):
        evaluate_generator(gen, test, tmp_path / "j2", classifier=twin.path, **kw)
    res = evaluate_generator(gen, test, tmp_path / "j3", classifier=other.path, **kw)
    roles = json.loads((tmp_path / "j3" / "generation.json").read_text())["roles"]
    assert roles == res["roles"] and roles["independent"] is True
    assert roles["judge"]["model"] == "seed-cnn" and roles["tuners"][0]["model"] == "rotinv-cnn"
    assert roles["tuners"][0]["path"] == str(tuner.path)
    shutil.rmtree(tmp_path / "j3")
