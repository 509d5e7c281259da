import numpy as np
import pytest

from hits_stamps import StampSet
from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.stamps import GroupLeakError, check_disjoint_groups


def test_split_matches_seed_report_sizes():
    labels = np.array([0] * 2013 + [1] * 2013)
    s = StampSet(images=np.zeros((4026, 21, 21, 4), np.float32), labels=labels)
    train, test = s.split((0.8, 0.2), seed=0)
    assert (len(train), len(test)) == (3220, 806)
    assert not set(train.ids) & set(test.ids)
    assert train.class_balance()["real"] == 1610


def test_split_is_seeded_and_stratified(toy):
    a1, b1 = toy.split(seed=3)
    a2, _ = toy.split(seed=3)
    a3, _ = toy.split(seed=4)
    assert list(a1.ids) == list(a2.ids)
    assert list(a1.ids) != list(a3.ids)
    frac = toy.labels.mean()
    assert abs(b1.labels.mean() - frac) < 0.05


def test_split_by_group_keeps_groups_whole(toy):
    groups = np.repeat(np.arange(20), 10)
    a, b = toy.split((0.7, 0.3), seed=0, groups=groups)
    ga = {i.split("_")[-1] for i in a.ids}
    assert len(a) + len(b) == len(toy)
    owner = dict(zip(toy.ids, groups, strict=True))
    assert not {owner[i] for i in a.ids} & {owner[i] for i in b.ids}
    assert ga


def test_indexing_and_concat(toy):
    part = toy[10:20]
    assert len(part) == 10 and part.ids[0] == toy.ids[10]
    both = StampSet.concat([toy[:5], toy[5:12]])
    np.testing.assert_array_equal(both.images, toy.images[:12])
    assert list(both.kind) == list(toy.kind[:12])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"images": np.zeros((3, 21, 21), np.float32)}, r"shape \(N, H, W, C\)"),
        ({"images": np.zeros((3, 21, 21, 4), np.int16)}, "floating point"),
        ({"images": np.zeros((3, 21, 21, 4), np.float32), "labels": np.zeros(2)}, r"labels must have shape \(3,\)"),
        ({"images": np.zeros((2, 21, 21, 4), np.float32), "labels": np.array([0, 5])}, r"\{-1, 0, 1\}"),
    ],
)
def test_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StampSet(**kwargs)


def test_other_sizes_and_channels():
    s = make_synthetic_stamps(n=10, size=63, channels=3)
    assert s.shape == (10, 63, 63, 3)
    assert s.channels == ("ch0", "ch1", "ch2")


def test_string_labels_are_a_value_error():
    with pytest.raises(ValueError, match=r"labels must be integers in \{-1, 0, 1\}; got dtype <U1"):
        StampSet(images=np.zeros((2, 5, 5, 1), np.float32), labels=np.array(["a", "b"]))


def test_summary_counts_non_finite_per_channel():
    s = make_synthetic_stamps(n=8, seed=2)
    s.images[1, :, :, 3] = np.nan
    s.images[4, 0, 0, 3] = -np.inf
    s.images[4, 2, 2, 0] = np.nan
    summ = s.summary()
    assert summ["nan_count"] == 443 and summ["stamps_with_nan"] == 2
    assert summ["nan_count_per_channel"] == {"template": 1, "science": 0, "difference": 0, "snr": 442}
    assert summ["stamps_with_nan_per_channel"] == {"template": 1, "science": 0, "difference": 0, "snr": 2}
    finite = s.images[..., 3][np.isfinite(s.images[..., 3])]
    assert summ["ranges"]["snr"] == (float(finite.min()), float(finite.max()))
    s.images[..., 2] = np.nan
    assert s.summary()["ranges"]["difference"] is None


def test_group_split_uses_majority_label_per_group():
    labels = np.array([1, 1, 0, 0, 0, 1, -1, -1, 0, 1] * 10)
    groups = np.repeat(np.arange(50), 2)
    s = StampSet(images=np.zeros((100, 5, 5, 1), np.float32), labels=labels)
    a, b = s.split((0.5, 0.5), seed=1, groups=groups)
    owner = dict(zip(s.ids, groups, strict=True))
    assert not {owner[i] for i in a.ids} & {owner[i] for i in b.ids}
    assert len(a) + len(b) == 100
    # pairs (1,1), (0,0), (0,1), (-1,-1), (0,1): majorities 1, 0, 0 (tie -> lower), -1, 0; 10 / 30 / 10 groups
    majority = {0: 1, 1: 0, 2: 0, 3: -1, 4: 0}
    for part in (a, b):
        groups_in = {owner[i] for i in part.ids}
        counts = {lab: sum(majority[g % 5] == lab for g in groups_in) for lab in (-1, 0, 1)}
        assert counts == {-1: 5, 0: 15, 1: 5}


def test_groups_travel_through_indexing_concat_and_split(toy):
    groups = np.array([f"obj{i % 7}" for i in range(len(toy))])
    s = StampSet(images=toy.images, labels=toy.labels, groups=groups)
    assert s.n_groups() == 7
    assert (s[[0, 8]].groups == ["obj0", "obj1"]).all()
    a, b = s.split((0.6, 0.4), seed=1)  # the set's own groups are used
    assert not set(a.groups) & set(b.groups)
    assert len(a) + len(b) == len(s)
    check_disjoint_groups({"train": a, "test": b})
    with pytest.raises(GroupLeakError, match=r"'train' and 'test' share 1 object"):
        check_disjoint_groups({"train": a, "test": StampSet.concat([b, a[:1]])})
    # an ungrouped set joins as one object per stamp, keyed by its id
    mixed = StampSet.concat([s[:3], StampSet(images=toy.images[:2], ids=np.array(["x", "y"]))])
    assert mixed.groups.tolist() == ["obj0", "obj1", "obj2", "x", "y"]


def test_groups_round_trip_through_files(toy, tmp_path):
    from hits_stamps.io import read_stamps, write_stamps

    s = StampSet(images=toy.images[:5], labels=toy.labels[:5], groups=np.array(list("aabbc")))
    for suffix in (".npz", ".h5"):
        back = read_stamps(write_stamps(s, tmp_path / f"g{suffix}"))
        assert back.groups.tolist() == list("aabbc")
    with pytest.raises(ValueError, match=r"groups must have shape \(5,\)"):
        StampSet(images=toy.images[:5], groups=np.array(["a"]))
