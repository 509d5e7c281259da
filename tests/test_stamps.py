import numpy as np
import pytest

from hits_stamps import StampSet
from hits_stamps.datasets import make_synthetic_stamps


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
