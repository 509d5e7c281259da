"""Realistic HiTS stamps simulated from real HiTS 2015 observing conditions.

`simulate_stamps(n, seed, real_fraction)` is the entry point; `SimConfig` holds every knob;
`calibrate` compares simulated science images with the real HiTS 2015 cutouts.
"""

from hits_stamps.simulate.conditions import ConditionsTable, load_conditions, match_conditions, sample_pairs
from hits_stamps.simulate.simulator import (
    BOGUS_KINDS,
    KIND_LABEL,
    REAL_KINDS,
    SimConfig,
    kind_quota,
    simulate_batch,
    simulate_stamps,
)

__all__ = [
    "BOGUS_KINDS",
    "KIND_LABEL",
    "REAL_KINDS",
    "ConditionsTable",
    "SimConfig",
    "kind_quota",
    "load_conditions",
    "match_conditions",
    "sample_pairs",
    "simulate_batch",
    "simulate_stamps",
]
