"""Shared fixtures: toy stamps from `make_synthetic_stamps`, and the real HiTS 2015 data when present."""

from pathlib import Path

import pytest

from hits_stamps.datasets import make_synthetic_stamps

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hits2015"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP spinning makes small batches far slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def toy():
    return make_synthetic_stamps(n=200, seed=1)


@pytest.fixture
def hits2015_dir():
    if not (SHARED / "hits2015_sequences.npz").exists():
        pytest.skip("../shared/data/hits2015 not present")
    return SHARED
