import json

import numpy as np
import pytest
import scipy.linalg

from hits_stamps.cli import main
from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.errors import HitsStampsError
from hits_stamps.generation import generate, interpolate, load_generator, reconstruct
from hits_stamps.generation.augment import augmentation_experiment
from hits_stamps.generation.judge import (
    CLASSES,
    evaluate_generator,
    frechet_distance,
    nearest_distances,
    physical_consistency,
)
from hits_stamps.generation.sample import sampling_of
from hits_stamps.io import read_stamps, write_stamps
from hits_stamps.results import JUDGEMENT_KEYS, GeneratorJudgement
from hits_stamps.stamps import StampSet
from hits_stamps.training import TrainConfig, fit
from hits_stamps.training.modeldir import load_model

TINY_CVAE = {"latent_dim": 3, "base_channels": 4, "hidden": 16, "condition": "class"}
TINY_CNN = {"widths": [4, 8], "hidden": 8}


@pytest.fixture(scope="module")
def toy_train():
    return make_synthetic_stamps(160, seed=11)


@pytest.fixture(scope="module")
def cvae_dir(tmp_path_factory, toy_train):
    out = tmp_path_factory.mktemp("gen") / "cvae"
    fit(TrainConfig(model="cvae", epochs=1, batch_size=32, model_kwargs=TINY_CVAE), toy_train, out, progress=False)
    return out


def test_generate_schema_ids_kind_and_seed(cvae_dir, tmp_path):
    g = generate(cvae_dir, 10, "bogus", seed=4)
    assert g.shape == (10, 21, 21, 4) and g.channels == ("template", "science", "difference", "snr")
    assert (g.labels == 0).all() and set(g.kind) == {"generated"}
    assert len(set(g.ids)) == 10 and np.isfinite(g.images).all() and g.snr.shape == (10,)
    write_stamps(g, tmp_path / "g.npz")
    back = read_stamps(tmp_path / "g.npz")
    np.testing.assert_array_equal(back.images, g.images)
    assert list(back.kind) == ["generated"] * 10
    np.testing.assert_array_equal(generate(cvae_dir, 10, 0, seed=4).images, g.images)
    assert not np.allclose(generate(cvae_dir, 10, 0, seed=5).images, g.images)
    real = generate(cvae_dir, 10, "real", seed=4)
    assert (real.labels == 1).all() and not set(real.ids) & set(g.ids)


def test_generate_refusals(cvae_dir, tmp_path):
    with pytest.raises(HitsStampsError, match="conditioned on the class only"):
        generate(cvae_dir, 3, "real", kind="sn")
    with pytest.raises(HitsStampsError, match="label must be 'real'"):
        generate(cvae_dir, 3, "maybe")
    clf = fit(TrainConfig(model="rotinv-cnn", epochs=1, model_kwargs=TINY_CNN),
              make_synthetic_stamps(40, seed=1), tmp_path / "clf", progress=False)
    with pytest.raises(HitsStampsError, match="not a generator"):
        generate(clf.path, 3, "real")


def test_latent_sources_default_refit_and_legacy_models(cvae_dir, toy_train, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from hits_stamps.generation.sample import fit_sampling_models, sampling_of

    g = generate(cvae_dir, 6, "real", seed=1)
    assert g.meta["latent"] == "aggregate"  # the loop fitted the mixture, so it is the default
    assert g.meta["mode"] == "residual"  # and the residual model
    for mode in ("sample", "loc"):
        assert generate(cvae_dir, 2, "real", mode=mode).meta["mode"] == mode
    np.testing.assert_array_equal(generate(cvae_dir, 6, "real", seed=1, latent="aggregate").images, g.images)
    p = generate(cvae_dir, 6, "real", seed=1, latent="prior")
    assert p.meta["latent"] == "prior" and not np.allclose(p.images, g.images)
    with pytest.raises(HitsStampsError, match="latent must be one of"):
        generate(cvae_dir, 2, "real", latent="posterior")
    # a model directory written before the sampling models existed: prior by default, aggregate refused until refitted
    legacy = tmp_path / "legacy"
    shutil.copytree(cvae_dir, legacy)
    (legacy / "sampling.safetensors").unlink()
    legacy_gen = generate(legacy, 2, "bogus")
    assert legacy_gen.meta["latent"] == "prior" and legacy_gen.meta["mode"] == "sample"
    with pytest.raises(HitsStampsError, match="no fitted latent mixture"):
        generate(legacy, 2, "bogus", latent="aggregate")
    with pytest.raises(HitsStampsError, match="no fitted residual model"):
        generate(legacy, 2, "bogus", mode="residual")
    with pytest.raises(HitsStampsError, match="no fitted residual model"):
        reconstruct(legacy, toy_train[:2], mode="residual")
    fit_sampling_models(legacy, toy_train, components=2)
    refit = load_file(legacy / "sampling.safetensors")
    assert bool(refit["latent_fitted"].all()) and int((refit["latent_weights"] > 0).sum(1).max()) <= 2
    assert bool(refit["resid_fitted"].all())
    assert generate(legacy, 2, "bogus").meta["latent"] == "aggregate"
    # more components: a new file, loaded as refitted
    fit_sampling_models(legacy, toy_train, components=7)
    assert load_file(legacy / "sampling.safetensors")["latent_weights"].shape[1] == 7
    reloaded = load_model(legacy)
    assert int((sampling_of(reloaded).latent["latent_weights"] > 0).sum(1).max()) > 2  # more than the 2 before
    a, b = generate(legacy, 5, "bogus", seed=3), generate(reloaded, 5, "bogus", seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    for bad in (0, 2.5, True):
        with pytest.raises(HitsStampsError, match="components must be a whole number"):
            fit_sampling_models(legacy, toy_train, components=bad)


def test_cli_generate_writes_file_and_refuses_overwrite(cvae_dir, tmp_path):
    out = tmp_path / "gen.h5"
    args = ["generate", str(cvae_dir), "--n", "7", "--label", "real", "--seed", "2", "--out", str(out)]
    assert main(args) == 0
    s = read_stamps(out)
    assert len(s) == 7 and (s.labels == 1).all() and set(s.kind) == {"generated"}
    assert main(args) == 2
    assert main([*args, "--overwrite"]) == 0
    assert main(["generate", str(cvae_dir), "--n", "2", "--label", "real", "--out", str(tmp_path / "x.txt")]) == 2
    assert main([*args, "--overwrite", "--latent", "prior"]) == 0 and read_stamps(out).meta["latent"] == "prior"
    assert main([*args, "--overwrite", "--latent", "nowhere"]) == 2


def test_generate_in_snr_range_keeps_only_that_range(cvae_dir, tmp_path):
    from hits_stamps.generation.sample import generate_in_snr_range

    peaks = generate(cvae_dir, 600, "real", seed=9).snr
    lo, hi = (float(v) for v in np.quantile(peaks, [0.4, 0.6]))  # about 20% of the draws fall inside
    calls = []
    g = generate_in_snr_range(cvae_dir, 50, "real", snr_min=lo, snr_max=hi, seed=3,
                              progress=lambda kept, drawn: calls.append((kept, drawn)))
    assert len(g) == 50 and ((g.snr >= lo) & (g.snr < hi)).all() and (g.labels == 1).all()
    assert len(set(g.ids)) == 50 and all(i.startswith("gen_real_snr") for i in g.ids)
    assert g.meta["drawn"] >= 50 and 0.05 < g.meta["acceptance"] < 0.6 and g.meta["snr_range"] == [lo, hi]
    assert calls[-1] == (50, g.meta["drawn"])
    np.testing.assert_array_equal(generate_in_snr_range(cvae_dir, 50, "real", lo, hi, seed=3).images, g.images)
    # an open upper end, and the file round trip of the metadata
    bright = generate_in_snr_range(cvae_dir, 10, "bogus", snr_min=float(np.median(peaks)), seed=1)
    assert (bright.snr >= np.median(peaks)).all() and bright.meta["snr_range"][1] is None
    write_stamps(bright, tmp_path / "bright.npz")
    assert read_stamps(tmp_path / "bright.npz").meta["snr_range"][1] is None
    with pytest.raises(HitsStampsError, match=r"only 0 of 1000 .*acceptance 0\.00%"):
        generate_in_snr_range(cvae_dir, 5, "real", snr_min=1e6, snr_max=2e6, max_draws=1000)
    with pytest.raises(HitsStampsError, match="snr_min < snr_max"):
        generate_in_snr_range(cvae_dir, 5, "real", snr_min=3.0, snr_max=2.0)
    # the command line
    out = tmp_path / "range.npz"
    assert main(["generate", str(cvae_dir), "--n", "6", "--label", "real", "--snr-min", str(lo), "--snr-max",
                 str(hi), "--out", str(out)]) == 0
    got = read_stamps(out)
    assert len(got) == 6 and ((got.snr >= lo) & (got.snr < hi)).all()


def test_generate_in_snr_range_needs_an_snr_channel(tmp_path):
    from hits_stamps.generation.sample import generate_in_snr_range

    three = make_synthetic_stamps(64, seed=2, channels=3)
    gen = fit(TrainConfig(model="cvae", epochs=1, batch_size=32, model_kwargs=TINY_CVAE), three, tmp_path / "g3",
              progress=False)
    with pytest.raises(HitsStampsError, match="needs an 'snr' channel"):
        generate_in_snr_range(gen.path, 5, "real", snr_min=1.0)


def test_reconstruct_and_interpolate(cvae_dir, toy_train):
    stamps = toy_train[:6]
    rec = reconstruct(cvae_dir, stamps)
    assert rec.shape == stamps.shape and list(rec.ids) == list(stamps.ids)
    real = toy_train[np.flatnonzero(toy_train.labels == 1)[:1]]
    bogus = toy_train[np.flatnonzero(toy_train.labels == 0)[:1]]
    path = interpolate(cvae_dir, real, bogus, steps=5)
    assert len(path) == 5 and (path.labels == -1).all()
    np.testing.assert_allclose(path.images[0], reconstruct(cvae_dir, real).images[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(path.images[-1], reconstruct(cvae_dir, bogus).images[0], rtol=1e-4, atol=1e-4)
    unknown = StampSet(images=stamps.images[:2])
    with pytest.raises(HitsStampsError, match="unknown labels"):
        reconstruct(cvae_dir, unknown)


def test_frechet_distance_against_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(1.0, 2.0, size=(300, 5))
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa + sb - 2 * scipy.linalg.sqrtm(sa @ sb).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    one_a, one_b = rng.normal(0, 1, (5000, 1)), rng.normal(3, 2, (5000, 1))
    expected = (one_a.mean() - one_b.mean()) ** 2 + (one_a.std(ddof=1) - one_b.std(ddof=1)) ** 2
    assert frechet_distance(one_a, one_b) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="same F"):
        frechet_distance(a, b[:, :3])


def test_nearest_distances_brute_force():
    rng = np.random.default_rng(1)
    q, r = rng.normal(size=(30, 7)), rng.normal(size=(50, 7))
    brute = np.sqrt(((q[:, None] - r[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(nearest_distances(q, r, batch=8), brute, rtol=1e-5)


def test_channel_painter_scores_worse_on_physical_consistency():
    stamps = make_synthetic_stamps(200, seed=3)
    rng = np.random.default_rng(0)
    # a "generator" that paints each channel from a different, unrelated stamp
    painted = stamps.images.copy()
    for c in range(4):
        painted[..., c] = stamps.images[rng.permutation(len(stamps)), :, :, c]
    good = physical_consistency(stamps)
    bad = physical_consistency(StampSet(images=painted))
    assert good["diff_corr"] > 0.99 and good["snr_corr"] > 0.99
    assert bad["diff_corr"] < good["diff_corr"] - 0.3
    assert bad["snr_corr"] < good["snr_corr"] - 0.3
    assert bad["diff_resid"] > good["diff_resid"] + 0.3
    assert bad["snr_noise_logratio"] > good["snr_noise_logratio"]
    assert physical_consistency(make_synthetic_stamps(10, channels=3)) is None


def test_evaluate_generator_writes_judging_json(cvae_dir, toy_train, tmp_path):
    test = make_synthetic_stamps(80, seed=12)
    res = evaluate_generator(
        cvae_dir, test, tmp_path / "judge", seed=0, progress=False, train=toy_train,
        classifier_epochs=1, classifier_kwargs=TINY_CNN, max_per_class=20,
    )
    on_disk = json.loads((tmp_path / "judge" / "generation.json").read_text())
    keys = {"agreement_real", "agreement_bogus", "frechet_real", "frechet_bogus", "frechet_floor_real",
            "frechet_floor_bogus", "tstr_over_trtr", "physical", "memorisation", "figures"}
    assert keys <= set(on_disk)
    for k in ("agreement_real", "agreement_bogus"):
        assert 0.0 <= on_disk[k] <= 1.0
    assert on_disk["frechet_real"] >= 0 and on_disk["tstr_over_trtr"] > 0
    assert on_disk["physical"]["real"]["real"]["diff_corr"] > 0.99
    assert on_disk["memorisation"]["n_reference"] == 128  # the cvae's own 80% training split of 160
    assert set(on_disk["peak_snr"]) == {"real", "bogus"} and 0.0 <= on_disk["peak_snr"]["real"]["ks"] <= 1.0
    per_class = on_disk["memorisation"]["per_class"]
    assert sum(v["n_reference"] for v in per_class.values()) == 128 and all(v["ratio"] > 0 for v in per_class.values())
    for path in on_disk["figures"].values():
        assert (tmp_path / "judge" / path.split("/")[-1]).stat().st_size > 1000
    assert res["n_generated"] == 40
    # a judge given as a directory is used as it is, and the TSTR twin copies its recipe
    res2 = evaluate_generator(cvae_dir, test, tmp_path / "judge2", classifier=tmp_path / "judge" / "judge_classifier",
                              progress=False, train=toy_train, max_per_class=10, make_figures=False, tstr=False)
    assert res2["judge"]["trained_here"] is False and res2["tstr_over_trtr"] is None
    assert res2["judge"]["test_accuracy"] == pytest.approx(res["judge"]["test_accuracy"])
    recall = res2["judge"]["test_recall_per_kind"]
    assert set(recall) == set(test.kind) and all(0.0 <= v <= 1.0 for v in recall.values())
    assert "agreement_per_kind" not in res2  # a class-conditioned generator has no kinds
    assert "figures" not in res2 and "tstr_recall_per_class" not in res2
    # generation.json read back as a GeneratorJudgement and written again is the same file, byte for byte
    for folder, r in (("judge", res), ("judge2", res2)):
        path = tmp_path / folder / "generation.json"
        judged = GeneratorJudgement.read(path)
        assert judged.to_json() == r and list(judged.to_json()) == list(r)
        judged.write(tmp_path / "copy.json")
        assert (tmp_path / "copy.json").read_bytes() == path.read_bytes()
    assert judged.figures is None and judged.tstr_over_trtr is None and judged.n_generated == 20
    assert [f"{m}_{c}" for c, _ in CLASSES for m in ("agreement", "frechet", "frechet_floor")] == [
        k for k in JUDGEMENT_KEYS if k.endswith(("_real", "_bogus"))]  # the file's per-class keys, in its order
    broken = dict(res2)
    del broken["memorisation"]
    with pytest.raises(HitsStampsError, match=r"x\.json \[memorisation\]: expected the generator judgement key"):
        GeneratorJudgement.from_json(broken, "x.json")
    assert GeneratorJudgement.from_json({**res2, "later": 1}).to_json() == {**res2, "later": 1}  # unknown keys kept
    mixed = StampSet.concat([toy_train, generate(cvae_dir, 4, "real")])
    with pytest.raises(HitsStampsError, match="include generated"):
        evaluate_generator(cvae_dir, test, tmp_path / "j3", train=mixed, progress=False, max_per_class=10)


def test_peak_snr_comparison_sees_a_longer_tail():
    from hits_stamps.generation.judge import peak_snr_comparison

    real = make_synthetic_stamps(300, seed=5)
    same = peak_snr_comparison(real, real)
    assert same["ks"] == 0.0 and same["generated"] == same["real"] and same["quantiles"][2] == 0.5
    louder = real[np.arange(len(real))]  # a copy
    louder.images[..., 3] *= 3.0  # the SNR channel three times too loud
    cmp = peak_snr_comparison(louder, real)
    np.testing.assert_allclose(cmp["generated"], 3.0 * np.array(cmp["real"]), rtol=1e-5)
    assert cmp["ks"] > 0.3
    assert peak_snr_comparison(make_synthetic_stamps(10, channels=3), real) is None
    assert peak_snr_comparison(real[:0], real) is None


def test_memorisation_per_class_catches_a_class_that_the_pooled_threshold_hides():
    from hits_stamps.generation.judge import _memorisation_per_class, nearest_distances

    rng = np.random.default_rng(0)

    def stamps(points, label):  # one-pixel, one-channel "stamps" at the given positions on a line
        img = np.zeros((len(points), 1, 1, 1), np.float32)
        img[:, 0, 0, 0] = points
        return StampSet(img, np.full(len(points), label), channels=("x",))

    def flat(s):
        return s.images.reshape(len(s), -1)

    # bogus: a dense class (training stamps 0.1 apart, held-out ones 0.03 from one); real: sparse (10 apart,
    # held-out ones 5 from one). Generated real stamps sit 0.5 from a training stamp: near-copies of their
    # class, yet far from the pooled threshold, which the dense bogus class sets (0.03).
    fitted_on = StampSet.concat([stamps(np.arange(1000) * 0.1, 0), stamps(1000 + np.arange(100) * 10.0, 1)])
    held = {"bogus": stamps(rng.integers(0, 1000, 200) * 0.1 + 0.03, 0),
            "real": stamps(1000 + rng.integers(0, 100, 50) * 10.0 + 5.0, 1)}
    generated = {"bogus": stamps(rng.integers(0, 1000, 200) * 0.1 + 0.04, 0),
                 "real": stamps(1000 + rng.integers(0, 100, 50) * 10.0 + 0.5, 1)}
    ref = flat(fitted_on)
    pooled_held = nearest_distances(np.concatenate([flat(held["bogus"]), flat(held["real"])]), ref)
    pooled_gen = nearest_distances(np.concatenate([flat(generated["bogus"]), flat(generated["real"])]), ref)
    assert np.mean(pooled_gen < np.percentile(pooled_held, 1)) == 0.0  # the pooled threshold sees nothing

    gen_flat = {name: flat(g) for name, g in generated.items()}
    held_flat = {name: flat(h) for name, h in held.items()}
    per = _memorisation_per_class(ref, fitted_on.labels, gen_flat, held_flat)
    assert per["real"]["fraction_generated_below_held_out_p1"] == 1.0
    assert per["real"]["ratio"] == pytest.approx(0.1, rel=1e-3) and per["real"]["n_reference"] == 100
    assert per["bogus"]["fraction_generated_below_held_out_p5"] == 0.0
    assert per["bogus"]["ratio"] == pytest.approx(4 / 3, rel=1e-2) and per["bogus"]["n_reference"] == 1000
    only_real = fitted_on[fitted_on.labels == 1]
    assert _memorisation_per_class(flat(only_real), only_real.labels, gen_flat, held_flat)["bogus"] is None


def test_augmentation_experiment_tiny(cvae_dir, toy_train, tmp_path):
    test = make_synthetic_stamps(60, seed=13)
    res = augmentation_experiment(
        toy_train, test, cvae_dir, fractions=(0.5,), seed=0, epochs=1, out_dir=tmp_path / "aug",
        classifier_kwargs=TINY_CNN,
    )
    assert set(res["fractions"]) == {"0.5"}
    half = res["fractions"]["0.5"]
    assert set(half["arms"]) == {"none", "dihedral", "generated"}
    assert half["n_generated"] == half["n_real"]
    assert half["cvae"].startswith("retrained")
    assert half["generated_minus_none"]["accuracy"] == pytest.approx(
        half["arms"]["generated"]["accuracy"] - half["arms"]["none"]["accuracy"])
    assert (tmp_path / "aug" / "augmentation.json").exists() and (tmp_path / "aug" / "gen_augmentation.png").exists()
    with pytest.raises(HitsStampsError, match=r"fractions must be in \(0, 1\]"):
        augmentation_experiment(toy_train, test, cvae_dir, fractions=(0.0,), out_dir=tmp_path / "x")


@pytest.fixture(scope="module")
def kind_cvae_dir(tmp_path_factory, toy_train):
    out = tmp_path_factory.mktemp("gen_kind") / "cvae"
    # the registry default, condition "auto", resolves to "kind" on these stamps (4 kinds, each of one class)
    tiny = {k: v for k, v in TINY_CVAE.items() if k != "condition"}
    fit(TrainConfig(model="cvae", epochs=1, batch_size=32, model_kwargs=tiny), toy_train, out, progress=False)
    return out


def test_kind_conditioned_generator_learns_the_kinds_and_their_frequencies(kind_cvae_dir, toy_train):
    config = json.loads((kind_cvae_dir / "config.json").read_text())
    kinds = sorted(set(toy_train.kind))
    assert config["model_kwargs"]["condition"] == "kind"  # "auto" resolved on the data and stored
    assert config["model_kwargs"]["kinds"] == kinds  # filled from the training stamps and stored
    assert config["model_kwargs"]["kind_labels"] == [int(toy_train.labels[toy_train.kind == k][0]) for k in kinds]
    tm = load_generator(kind_cvae_dir)
    train_part = toy_train.split((0.8, 0.2), seed=0)[0]  # the loop's own seeded split
    expected = [float(np.sum(train_part.kind == k)) for k in kinds]
    np.testing.assert_array_equal(sampling_of(tm).condition_weight.numpy(), expected)

    g = generate(kind_cvae_dir, 400, "bogus", seed=3)
    assert (g.labels == 0).all() and set(g.kind) == {"generated"} and len(set(g.ids)) == 400
    drawn = g.meta["kinds"]
    assert sum(drawn.values()) == 400 and set(drawn) <= {"bad_subtraction", "cosmic_ray", "noise"}
    bogus_total = sum(e for k, e in zip(kinds, expected, strict=True) if k != "sn")
    for k, count in drawn.items():  # drawn with the training frequencies (binomial, 400 draws)
        p = expected[kinds.index(k)] / bogus_total
        assert abs(count - 400 * p) < 5 * np.sqrt(400 * p * (1 - p)) + 1
    assert sum(f"_{k}_" in i for k in drawn for i in g.ids) == 400  # each id names its kind
    one = generate(kind_cvae_dir, 5, "bogus", kind="cosmic_ray", seed=3)
    assert one.meta["kinds"] == {"cosmic_ray": 5} and all("_cosmic_ray_" in i for i in one.ids)
    np.testing.assert_array_equal(generate(kind_cvae_dir, 400, "bogus", seed=3).images, g.images)


def test_kind_conditioned_generator_refusals_and_reconstruction(kind_cvae_dir, toy_train):
    with pytest.raises(HitsStampsError, match="not a kind of class"):
        generate(kind_cvae_dir, 3, "bogus", kind="sn")
    with pytest.raises(HitsStampsError, match="not a kind of class"):
        generate(kind_cvae_dir, 3, "real", kind="hot_pixel")
    rec = reconstruct(kind_cvae_dir, toy_train[:12])
    assert rec.shape == (12, 21, 21, 4) and np.isfinite(rec.images).all()
    odd = toy_train[:3]
    odd.kind = np.array(["satellite"] * 3, dtype=object)
    with pytest.raises(HitsStampsError, match="not among the kinds"):
        reconstruct(kind_cvae_dir, odd)
    ends = [toy_train[np.flatnonzero(toy_train.kind == k)[:1]] for k in ("sn", "cosmic_ray")]
    path = interpolate(kind_cvae_dir, ends[0], ends[1], steps=4)
    assert (path.labels == -1).all() and path.shape == (4, 21, 21, 4)


def test_judging_a_kind_conditioned_generator_reports_agreement_per_kind(kind_cvae_dir, cvae_dir, toy_train,
                                                                           tmp_path):
    test = make_synthetic_stamps(80, seed=12)
    judge = fit(TrainConfig(model="rotinv-cnn", epochs=1, model_kwargs=TINY_CNN), toy_train, tmp_path / "clf",
                progress=False)
    res = evaluate_generator(kind_cvae_dir, test, tmp_path / "judge", classifier=judge.path, progress=False,
                             train=toy_train, max_per_class=30, make_figures=False, tstr=False)
    per_kind = res["agreement_per_kind"]
    assert set(per_kind) <= set(toy_train.kind) and sum(v["n"] for v in per_kind.values()) == 60
    assert all(0.0 <= row["agreement"] <= 1.0 and row["n"] >= 1 for row in per_kind.values())
    n_bogus = sum(v["n"] for k, v in per_kind.items() if k != "sn")
    agree_bogus = sum(v["agreement"] * v["n"] for k, v in per_kind.items() if k != "sn") / n_bogus
    assert agree_bogus == pytest.approx(res["agreement_bogus"])  # the per-kind rows add up to the class's


def test_choose_keeps_the_largest_temperature_within_one_standard_error():
    from hits_stamps.generation.tune import _choose

    # measured shapes: a star kind that wants less noise, an artefact kind that does not care
    assert _choose({0.25: 0.980, 0.5: 0.967, 0.75: 0.940, 1.0: 0.890}, 300) == 0.25
    assert _choose({0.25: 0.973, 0.5: 0.993, 0.75: 0.993, 1.0: 0.997}, 300) == 1.0
    assert _choose({0.5: 0.80, 1.0: 0.79}, 300) == 1.0  # 0.01 apart, inside one standard error (0.023)
    assert _choose({0.5: 0.80, 1.0: 0.70}, 300) == 0.5
    assert _choose({0.5: 1.0, 1.0: 0.99}, 50) == 1.0  # best at 1.0: the standard error floor is 1/n


def test_tune_temperatures_sets_stores_and_applies_per_condition_temperatures(kind_cvae_dir, cvae_dir, toy_train,
                                                                             tmp_path):
    import shutil

    from hits_stamps.generation.tune import tune_temperatures

    work = tmp_path / "cvae"
    shutil.copytree(kind_cvae_dir, work)
    clf = fit(TrainConfig(model="rotinv-cnn", epochs=1, model_kwargs=TINY_CNN), toy_train, tmp_path / "clf",
              progress=False)
    res = tune_temperatures(work, clf.path, temperatures=(1.0, 0.5), n_per_condition=20, seed=4)
    kinds = sorted(set(toy_train.kind))
    assert list(res["conditions"]) == kinds and res["temperatures"] == [0.5, 1.0]
    for name, row in res["conditions"].items():
        assert set(row["agreement"]) == {0.5, 1.0} and row["chosen"] in (0.5, 1.0)
        assert row["label"] == ("real" if name == "sn" else "bogus")
    tm = load_generator(work)  # stored in sampling.safetensors and in config.json
    chosen = [res["conditions"][k]["chosen"] for k in kinds]
    np.testing.assert_allclose(sampling_of(tm).condition_temperature.numpy(), chosen)
    assert tm.config["sampling"]["condition_temperature"] == dict(zip(kinds, chosen, strict=True))
    # generate applies the stored temperature: the same stamps as the untuned model at that temperature
    for kind in ("sn", "cosmic_ray"):
        t = res["conditions"][kind]["chosen"]
        label = "real" if kind == "sn" else "bogus"
        tuned = generate(work, 6, label, kind=kind, seed=9)
        np.testing.assert_allclose(tuned.images, generate(kind_cvae_dir, 6, label, kind=kind, seed=9,
                                                          temperature=t).images, rtol=1e-5, atol=1e-5)
    with pytest.raises(HitsStampsError, match="must be a classifier"):
        tune_temperatures(work, cvae_dir, n_per_condition=5)
    with pytest.raises(HitsStampsError, match=r"temperatures must be in \(0, 1\]"):
        tune_temperatures(work, clf.path, temperatures=(0.0, 1.0))
    cli = ["tune-generator", str(work), "--classifier", str(clf.path)]
    assert main([*cli, "--temperatures", "0.5,1", "--n", "5"]) == 0
    assert main([*cli, "--temperatures", "half"]) == 2
