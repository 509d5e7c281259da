"""Native stamp files (.npz, .h5): exact round trips, atomic writes, refusals."""

import os
import stat

import h5py
import numpy as np
import pytest

from hits_stamps import StampSet
from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.errors import HitsStampsError, StampFileError
from hits_stamps.io import read_stamps, write_stamps

EXTS = (".npz", ".h5")


def _rich_set(n=12, size=21, channels=4, seed=0):
    """Stamps that exercise every field: NaN and inf pixels, -1 labels, unicode ids, columns, nested meta."""
    s = make_synthetic_stamps(n=n, seed=seed, size=size, channels=channels)
    images = s.images.copy()
    images[0, 3, 4, 1] = np.nan
    images[1, :, :, -1] = np.inf
    labels = s.labels.copy()
    labels[2] = -1
    return StampSet(
        images=images, labels=labels, snr=s.snr, kind=s.kind,
        ids=np.array([f"étoile-{i}" for i in range(n)]),
        channels=tuple(f"band_{c}" for c in range(channels)),
        columns={"seeing": np.linspace(0.8, 1.9, n), "ccd": np.arange(n, dtype=np.int32),
                 "field": np.array([f"Blind15A_{i % 3:02d}" for i in range(n)])},
        meta={"survey": "HiTS", "seed": seed, "nested": {"a": [1, 2.5, None]}},
    )


def _assert_identical(a: StampSet, b: StampSet) -> None:
    assert a.images.dtype == b.images.dtype == np.float32
    assert a.images.shape == b.images.shape
    assert a.images.tobytes() == b.images.tobytes()  # bit-identical, NaN payloads included
    assert a.labels.dtype == b.labels.dtype and np.array_equal(a.labels, b.labels)
    assert (a.snr is None) == (b.snr is None)
    if a.snr is not None:
        assert a.snr.dtype == b.snr.dtype and a.snr.tobytes() == b.snr.tobytes()
    assert (a.kind is None) == (b.kind is None)
    if a.kind is not None:
        assert list(a.kind) == list(b.kind)
    assert list(a.ids) == list(b.ids)
    assert a.channels == b.channels
    assert sorted(a.columns) == sorted(b.columns)
    for k in a.columns:
        assert a.columns[k].dtype == b.columns[k].dtype, k
        assert np.array_equal(a.columns[k], b.columns[k]), k
    assert a.meta == b.meta


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize(("size", "channels"), [(21, 4), (63, 3)])
def test_round_trip_is_bit_identical(tmp_path, ext, size, channels):
    s = _rich_set(size=size, channels=channels)
    out = write_stamps(s, tmp_path / f"stamps{ext}")
    _assert_identical(s, read_stamps(out))


def test_npz_and_h5_load_identical(tmp_path):
    s = _rich_set()
    a = read_stamps(write_stamps(s, tmp_path / "a.npz"))
    b = read_stamps(write_stamps(s, tmp_path / "a.h5"))
    _assert_identical(a, b)


@pytest.mark.parametrize("ext", EXTS)
def test_minimal_and_empty_sets_round_trip(tmp_path, ext):
    minimal = StampSet(images=np.ones((3, 5, 5, 2), np.float32))
    _assert_identical(minimal, read_stamps(write_stamps(minimal, tmp_path / f"min{ext}")))
    empty = make_synthetic_stamps(n=0)
    back = read_stamps(write_stamps(empty, tmp_path / f"empty{ext}"))
    assert len(back) == 0 and back.images.shape == (0, 21, 21, 4)


def test_h5_is_chunked_and_compressed(tmp_path):
    s = make_synthetic_stamps(n=400)
    path = write_stamps(s, tmp_path / "s.h5")
    with h5py.File(path, "r") as fh:
        dset = fh["images"]
        assert dset.compression == "gzip" and dset.shuffle
        chunk_bytes = np.prod(dset.chunks) * dset.dtype.itemsize
        assert dset.chunks[1:] == (21, 21, 4) and chunk_bytes <= 1 << 20


def test_written_file_has_normal_permissions(tmp_path):
    path = write_stamps(make_synthetic_stamps(n=3), tmp_path / "s.npz")
    reference = tmp_path / "plain"
    reference.write_bytes(b"")
    assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(reference).st_mode)


def _explode_after_partial_npz(file, *args, **kwargs):
    file.write(b"PK\x03\x04 half an archive")
    raise RuntimeError("simulated crash while writing")


def _patch_h5_crash(monkeypatch):
    original = h5py.Group.create_dataset
    calls = []

    def create_dataset(self, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 2:  # the first dataset is already on disk
            raise RuntimeError("simulated crash while writing")
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_write_leaves_nothing_and_keeps_existing(tmp_path, monkeypatch, ext, existing):
    target = tmp_path / f"out{ext}"
    old_bytes = None
    if existing:
        write_stamps(make_synthetic_stamps(n=5, seed=9), target)
        old_bytes = target.read_bytes()
    if ext == ".npz":
        monkeypatch.setattr(np, "savez_compressed", _explode_after_partial_npz)
    else:
        _patch_h5_crash(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_stamps(make_synthetic_stamps(n=20), target, overwrite=True)
    if existing:
        assert target.read_bytes() == old_bytes
        monkeypatch.undo()
        assert len(read_stamps(target)) == 5
    else:
        assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ([target.name] if existing else [])


def test_keyboard_interrupt_during_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def interrupted(file, *args, **kwargs):
        file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_stamps(make_synthetic_stamps(n=4), tmp_path / "x.npz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ext", EXTS)
def test_existing_output_refused_without_overwrite(tmp_path, ext):
    target = write_stamps(make_synthetic_stamps(n=5, seed=1), tmp_path / f"out{ext}")
    before = target.read_bytes()
    with pytest.raises(HitsStampsError, match=r"out\.(npz|h5): output exists; pass --overwrite"):
        write_stamps(make_synthetic_stamps(n=7, seed=2), target)
    assert target.read_bytes() == before
    write_stamps(make_synthetic_stamps(n=7, seed=2), target, overwrite=True)
    assert len(read_stamps(target)) == 7


def test_write_refuses_unknown_extension_and_folder_target(tmp_path):
    s = make_synthetic_stamps(n=2)
    with pytest.raises(StampFileError, match=r"expected an output extension in \['.h5', '.hdf5', '.npz'\]"):
        write_stamps(s, tmp_path / "s.csv")
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(HitsStampsError, match="output is an existing folder"):
        write_stamps(s, tmp_path / "d.npz", overwrite=True)


def test_write_refuses_columns_that_need_pickle(tmp_path):
    s = make_synthetic_stamps(n=2)
    s.columns["odd"] = np.array([{"a": 1}, None], dtype=object)
    with pytest.raises(HitsStampsError, match=r"column 'odd': expected numbers or strings; found dtype object"):
        write_stamps(s, tmp_path / "s.npz")
    assert not (tmp_path / "s.npz").exists()


# API-level read errors that the CLI tests (tests/test_cli_data.py) do not already cover
def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_read_errors_name_file_field_expected_found(tmp_path):
    img = np.zeros((2, 5, 5, 1), np.float32)
    cases = [
        (_npz(tmp_path / "obj.npz", images=img, ids=np.array([{"x": 1}, 2], dtype=object)),
         r"obj\.npz \[ids\]: expected a plain array \(no pickled objects\); found an object array needing pickle"),
        (_npz(tmp_path / "noimg.npz", pixels=img),
         r"noimg\.npz \[images\]: expected an \(N, H, W, C\) float array; found no such array; keys \['pixels'\]"),
        (_npz(tmp_path / "snr.npz", images=img, snr=np.array(["a", "b"])),
         r"snr\.npz \[snr\]: expected real numbers; found dtype <U1"),
        (_npz(tmp_path / "ch.npz", images=img, channels=np.array(["a", "b"])),
         r"ch\.npz \[channels\]: expected 1 names"),
        (_npz(tmp_path / "meta.npz", images=img, meta_json=np.asarray("{not json")),
         r"meta\.npz \[meta_json\]: expected a JSON object; found invalid JSON"),
        (_npz(tmp_path / "fl.npz", images=img, labels=np.array([0.0, 0.5])),
         r"fl\.npz \[labels\]: expected integers in \{-1, 0, 1\}; found dtype float64"),
    ]
    np.save(tmp_path / "arr.npy", img)
    os.replace(tmp_path / "arr.npy", tmp_path / "arr.npz")
    cases.append((tmp_path / "arr.npz", r"arr\.npz: expected a \.npz \(zip\) archive; found an \.npy array"))
    (tmp_path / "empty.h5").write_bytes(b"")
    cases.append((tmp_path / "empty.h5", r"empty\.h5: expected an HDF5 file; found a file without the HDF5 signature"))
    with h5py.File(tmp_path / "group.h5", "w") as fh:
        fh.create_group("images")
    cases.append((tmp_path / "group.h5", r"group\.h5 \[images\]: expected a dataset; found an HDF5 Group"))
    for path, match in cases:
        with pytest.raises(StampFileError, match=match):
            read_stamps(path)


def test_float_labels_with_integer_values_are_accepted(tmp_path):
    path = _npz(tmp_path / "f.npz", images=np.zeros((3, 5, 5, 1), np.float32), labels=np.array([1.0, 0.0, -1.0]))
    s = read_stamps(path)
    assert s.labels.dtype == np.int64 and list(s.labels) == [1, 0, -1]
