"""Tests of the real-pixel sets of a transfer experiment: parts by object, variable stars in training."""

import numpy as np
import pytest

from hits_stamps.errors import HitsStampsError
from hits_stamps.realdata import packaged_sample_path
from hits_stamps.realsets import RealSetsConfig, build_real_sets, default_variables_path
from hits_stamps.stamps import GroupLeakError

VARIABLES = default_variables_path()


def test_variables_split_takes_two_or_three_fractions():
    RealSetsConfig(variables_split=(0.5, 0.5))
    RealSetsConfig(variables_split=(0.4, 0.3, 0.3))
    for bad in ((1.0,), (0.2, 0.2, 0.3, 0.3), (0.5, -0.5), (0.0, 0.0, 0.0)):
        with pytest.raises(HitsStampsError, match="variables_split"):
            RealSetsConfig(variables_split=bad)


def test_one_object_on_two_sides_is_refused():
    # the packaged sample given as its own variable-star file: its objects would sit in two parts
    cfg = RealSetsConfig(n_inject=0, variables_split=(0.5, 0.25, 0.25))
    with pytest.raises(GroupLeakError, match="split by object"):
        build_real_sets(packaged_sample_path(), packaged_sample_path(), cfg)


@pytest.mark.skipif(VARIABLES is None, reason="needs ../shared/data/hits2015/hits2015_variables.npz")
def test_three_part_variables_split_trains_on_other_stars():
    two = build_real_sets(packaged_sample_path(), VARIABLES, RealSetsConfig(n_inject=0, object_fraction=0.3))
    assert "variables_train" not in two and {"variables_val", "variables_test"} <= set(two)
    three = build_real_sets(packaged_sample_path(), VARIABLES,
                            RealSetsConfig(n_inject=0, object_fraction=0.3, variables_split=(0.4, 0.3, 0.3)))
    parts = {k: set(three[k].groups.tolist()) for k in ("variables_train", "variables_val", "variables_test")}
    assert all(parts.values())
    assert not parts["variables_train"] & (parts["variables_val"] | parts["variables_test"])
    assert not parts["variables_val"] & parts["variables_test"]
    train = three["variables_train"]
    assert set(np.unique(train.labels)) == {0, 1}  # both Kron classes, unlabelled epochs dropped
    assert train.meta["objects"] == sorted(parts["variables_train"])
