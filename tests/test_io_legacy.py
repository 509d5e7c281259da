"""Legacy inputs: Deep-HiTS chunk pickles (Python 2), course pickles, FITS cubes and FITS folders."""

import gzip
import io
import pickle
import struct

import numpy as np
import pytest
from astropy.io import fits

from hits_stamps import cli
from hits_stamps.errors import StampFileError
from hits_stamps.io import read_stamps
from hits_stamps.io.legacy import read_fits, read_fits_folder, read_pickle

DEEPHITS_KEYS = ("temp_images", "sci_images", "diff_images", "SNR_images")


# ---------------------------------------------------------------------------- Python 2 pickles
class Py2Pickler(pickle._Pickler):
    """Writes pickles the way Python 2 + numpy 1.x did.

    Every text or byte string is a Python 2 `str` (opcode SHORT_BINSTRING / BINSTRING), so array
    buffers travel as `str`, and numpy globals are named `numpy.core.multiarray`. Reading such a
    pickle in Python 3 needs `encoding="latin1"`.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "") or ""
        if module.startswith("numpy._core"):
            name = name or obj.__qualname__
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n" + name.encode() + b"\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def py2_pickle_bytes(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def make_chunk(n=12, flat=True, dtype=np.float32, seed=0):
    """A Deep-HiTS chunk dict with the real key names (plus the `features` key real chunks carry)."""
    rng = np.random.default_rng(seed)
    chunk = {}
    for k, key in enumerate(DEEPHITS_KEYS):
        plane = (rng.normal(100.0 * (k == 0), 5.0, (n, 21, 21))).astype(dtype)
        chunk[key] = plane.reshape(n, 441) if flat else plane
    chunk["labels"] = (np.arange(n) % 2).astype(np.int64)
    chunk["SNRs"] = rng.uniform(3, 50, n)
    chunk["features"] = rng.normal(size=(n, 7))
    return chunk


def stacked(chunk):
    n = len(chunk["labels"])
    return np.stack([np.asarray(chunk[k]).reshape(n, 21, 21) for k in DEEPHITS_KEYS], axis=-1).astype(np.float32)


def test_py2_pickle_really_is_python2_style():
    raw = py2_pickle_bytes(make_chunk(n=2))
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    assert pickle.SHORT_BINSTRING + bytes([len("temp_images")]) + b"temp_images" in raw
    with pytest.raises(UnicodeDecodeError):  # the reason Deep-HiTS chunks need encoding="latin1"
        pickle.loads(raw)


@pytest.mark.parametrize("name", ["chunk_0_5000.pkl", "chunk_7_5000.pkl.gz"])
@pytest.mark.parametrize("flat", [True, False])
def test_deephits_chunk_converts_to_npz_and_h5_bit_identical(tmp_path, capsys, name, flat):
    chunk = make_chunk(flat=flat)
    raw = py2_pickle_bytes(chunk)
    src = tmp_path / name
    src.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    errors = ""
    for ext in (".npz", ".h5"):
        code = cli.main(["convert", str(src), "--out", str(tmp_path / f"out{ext}"), "--trust-pickle"])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert "12 stamps of 21x21x4 (real 6, bogus 6, unknown 0)" in out
        errors += err
    # the unconverted `features` key is reported (Python shows a given warning once per process)
    assert "warning:" in errors and "keys ['features'] are not stamp data" in errors
    a, b = read_stamps(tmp_path / "out.npz"), read_stamps(tmp_path / "out.h5")
    expected = stacked(chunk)
    for s in (a, b):
        assert s.images.dtype == np.float32 and s.images.tobytes() == expected.tobytes()
        assert s.channels == ("template", "science", "difference", "snr")
        assert s.labels.tolist() == chunk["labels"].tolist()
        assert s.snr.tobytes() == chunk["SNRs"].tobytes()
        stem = name.split(".")[0]
        assert s.ids[0] == f"{stem}:000000" and s.ids[11] == f"{stem}:000011"
        assert s.meta == {"source_format": "deep-hits-chunk", "source_file": name, "ignored_keys": ["features"]}
    assert a.images.tobytes() == b.images.tobytes() and a.snr.tobytes() == b.snr.tobytes()
    assert list(a.ids) == list(b.ids)


def test_deephits_float64_bytes_keys_and_column_labels(tmp_path):
    """Protocol-2 pickle from Python 3 with bytes keys, float64 pixels and (N, 1) float labels."""
    chunk = {k.encode(): v for k, v in make_chunk(n=5, dtype=np.float64).items()}
    chunk[b"labels"] = np.array([[1.0], [0.0], [1.0], [1.0], [0.0]])
    path = tmp_path / "chunk_1_5000.pkl"
    path.write_bytes(pickle.dumps(chunk, protocol=2))
    with pytest.warns(UserWarning, match="features"):
        s = read_pickle(path, trust_pickle=True)
    source = {k.decode(): v for k, v in chunk.items()}
    assert np.array_equal(s.images, stacked(source))  # float64 rounded to float32
    assert s.labels.tolist() == [1, 0, 1, 1, 0]


def test_pickle_refused_without_trust_and_never_loaded(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # unpickling this would create `marker`
            return (open, (str(marker), "w"))

    path = tmp_path / "chunk_0_5000.pkl"
    path.write_bytes(pickle.dumps({"labels": Payload()}))
    for call in (lambda: read_stamps(path), lambda: read_pickle(path)):
        with pytest.raises(StampFileError, match=r"--trust-pickle \(API: trust_pickle=True\).*arbitrary code"):
            call()
    assert not marker.exists()


def test_course_pickle(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(6, 21, 21, 4)).astype(np.float32)
    path = tmp_path / "course_train.pickle"
    path.write_bytes(pickle.dumps({"images": images, "labels": [1, 0, 0, 1, 1, 0]}))
    s = read_stamps(path, trust_pickle=True)
    assert s.images.tobytes() == images.tobytes()
    assert s.labels.tolist() == [1, 0, 0, 1, 1, 0]
    assert s.channels == ("template", "science", "difference", "snr")
    assert s.ids[5] == "course_train:000005" and s.meta["source_format"] == "course-pickle"


def _pickle_file(tmp_path, obj, name="chunk_0_5000.pkl"):
    path = tmp_path / name
    path.write_bytes(py2_pickle_bytes(obj))
    return path


def _without(d, key):
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ([1, 2, 3], r"expected a dict of arrays .*; found a pickled list"),
        ({"foo": np.zeros(3)}, r"expected Deep-HiTS chunk keys .* or course keys \['images', 'labels'\]; found keys"),
        (_without(make_chunk(n=3), "SNR_images"), r"\[SNR_images\]: expected the Deep-HiTS chunk keys"),
        ({**make_chunk(n=3), "diff_images": np.zeros((3, 440), np.float32)},
         r"\[diff_images\]: expected flattened square stamps \(N, side\*side\); found shape \(3, 440\)"),
        ({**make_chunk(n=3), "sci_images": np.zeros((3, 21, 21), np.float32)[:2]},
         r"\[sci_images\]: expected shape \(3, 21, 21\) like temp_images; found shape \(2, 21, 21\)"),
        ({**make_chunk(n=3), "temp_images": np.zeros((3, 441), np.int32)},
         r"\[temp_images\]: expected floating-point pixels; found dtype int32"),
        ({**make_chunk(n=3), "labels": np.array([0, 1, 5])},
         r"\[labels\]: expected values in \{-1, 0, 1\}; found values \[5\]"),
        ({**make_chunk(n=3), "labels": np.array([0, 1])}, r"\[labels\]: expected shape \(3,\), one value per stamp"),
        ({**make_chunk(n=3), "SNRs": np.zeros(4)}, r"\[SNRs\]: expected shape \(3,\)"),
        ({"images": np.zeros((3, 21, 21), np.float32)}, r"\[images\]: expected rank 4 \(N, H, W, C\); found shape"),
        ({"images": [np.zeros((21, 21, 4)), np.zeros((20, 21, 4))]},
         r"\[images\]: expected an array; found a list that is not one"),
    ],
)
def test_malformed_pickles(tmp_path, obj, match):
    path = _pickle_file(tmp_path, obj)
    with pytest.raises(StampFileError, match=match):
        read_pickle(path, trust_pickle=True)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "bad_gzip"])
def test_unreadable_pickles(tmp_path, damage):
    raw = py2_pickle_bytes(make_chunk(n=3))
    versions = {"truncate": raw[: len(raw) // 2], "garbage": b"\x80\x02garbage", "bad_gzip": gzip.compress(raw)[:40]}
    data = versions[damage]
    path = tmp_path / "chunk_0_5000.pkl.gz"
    path.write_bytes(data)
    with pytest.raises(StampFileError, match=r"expected a readable pickle \(optionally gzip-compressed\); found \w+"):
        read_pickle(path, trust_pickle=True)


# ---------------------------------------------------------------------------- FITS
def _cube(n=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 21, 21, 4)).astype(np.float32)


def _table(**cols):
    formats = {"i": "K", "f": "D", "U": "20A"}
    return fits.BinTableHDU.from_columns(
        [fits.Column(name=k, format=formats[np.asarray(v).dtype.kind], array=np.asarray(v)) for k, v in cols.items()]
    )


def test_fits_cube_nhwc_with_table(tmp_path):
    cube = _cube()
    hdu = fits.PrimaryHDU(cube)
    hdu.header["CHNAMES"] = "template,science,difference,snr"
    table = _table(LABEL=np.array([1, 0, 1, -1, 0]), snr=np.linspace(5, 9, 5),
                   Id=np.array([f"cand{i}" for i in range(5)]), KIND=np.array(["sn", "noise", "sn", "x", "noise"]),
                   seeing=np.linspace(1, 2, 5))
    path = tmp_path / "cube.fits"
    fits.HDUList([hdu, table]).writeto(path)
    s = read_stamps(path)
    assert s.images.dtype == np.float32 and s.images.tobytes() == cube.tobytes()
    assert s.labels.tolist() == [1, 0, 1, -1, 0]
    assert np.array_equal(s.snr, np.linspace(5, 9, 5))
    assert list(s.ids) == [f"cand{i}" for i in range(5)] and s.kind[1] == "noise"
    assert np.array_equal(s.columns["seeing"], np.linspace(1, 2, 5))
    assert s.meta == {"source_format": "fits-cube", "source_file": "cube.fits"}


@pytest.mark.parametrize("keyword", [True, False])
def test_fits_cube_nchw(tmp_path, keyword):
    cube = _cube()
    hdu = fits.PrimaryHDU(cube.transpose(0, 3, 1, 2))  # (N, C, H, W)
    if keyword:
        hdu.header["STMPAXES"] = "NCHW"
    hdu.writeto(tmp_path / "c.fits.gz")
    s = read_fits(tmp_path / "c.fits.gz")
    assert s.images.tobytes() == cube.tobytes()
    assert s.labels.tolist() == [-1] * 5 and s.ids[4] == "c:000004"


def test_fits_single_channel_cube_and_integer_pixels(tmp_path):
    data = np.arange(3 * 9 * 9, dtype=np.int16).reshape(3, 9, 9)
    fits.PrimaryHDU(data).writeto(tmp_path / "ints.fits")
    s = read_fits(tmp_path / "ints.fits")
    assert s.shape == (3, 9, 9, 1) and s.images.dtype == np.float32
    assert np.array_equal(s.images[..., 0], data.astype(np.float32))


@pytest.mark.parametrize(
    ("shape", "header", "match"),
    [
        ((2, 4, 4, 4), {}, r"\[STMPAXES\]: expected a header keyword naming the axes"),
        ((2, 21, 20, 4), {}, r"\[STMPAXES\]: expected a header keyword naming the axes"),
        ((2, 21, 21, 4), {"STMPAXES": "NHW"}, r"\[STMPAXES\]: expected one of .* with 4 letters"),
        ((2, 21, 21, 4), {"CHNAMES": "a,b"}, r"\[CHNAMES\]: expected 4 comma-separated channel names"),
        ((2, 21, 21, 4), {"LABEL": 1}, r"\[LABEL\]: expected a header keyword only in a one-stamp file"),
        ((2, 3, 21, 21, 4), {}, r"\[STMPAXES\]"),
    ],
)
def test_fits_cube_errors(tmp_path, shape, header, match):
    hdu = fits.PrimaryHDU(np.zeros(shape, np.float32))
    for k, v in header.items():
        hdu.header[k] = v
    hdu.writeto(tmp_path / "bad.fits")
    with pytest.raises(StampFileError, match=match):
        read_fits(tmp_path / "bad.fits")


def test_fits_truncated_and_garbage(tmp_path):
    fits.PrimaryHDU(_cube(n=20)).writeto(tmp_path / "full.fits")
    raw = (tmp_path / "full.fits").read_bytes()
    (tmp_path / "cut.fits").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "junk.fits").write_bytes(b"not a fits file" * 300)
    for name in ("cut.fits", "junk.fits"):
        with pytest.raises(StampFileError, match=rf"{name}: expected a readable FITS file; found"):
            read_stamps(tmp_path / name)


def _cutout(path, data, **header):
    hdu = fits.PrimaryHDU(data)
    for k, v in header.items():
        hdu.header[k] = v
    hdu.writeto(path)


def test_fits_folder(tmp_path, capsys):
    cube = _cube(n=3, seed=4)
    folder = tmp_path / "cutouts"
    folder.mkdir()
    _cutout(folder / "b_second.fits", cube[1].transpose(2, 0, 1), LABEL=0, SNR=7.5)  # (C, H, W), inferred
    _cutout(folder / "a_first.fits.gz", cube[0], STMPAXES="HWC", LABEL=1, KIND="sn")
    _cutout(folder / "c_third.fit", cube[2].transpose(2, 0, 1), STMPAXES="CHW")
    (folder / "notes.txt").write_text("not a cutout")
    _cutout(folder / ".hidden.fits", np.zeros((2, 2), np.float32))
    s = read_stamps(folder)
    assert list(s.ids) == ["a_first", "b_second", "c_third"]
    assert s.images.tobytes() == cube.tobytes()
    assert s.labels.tolist() == [1, 0, -1]
    assert np.isnan(s.snr[0]) and s.snr[1] == 7.5 and np.isnan(s.snr[2])
    assert list(s.kind) == ["sn", "unknown", "unknown"]
    assert read_fits_folder(folder).images.tobytes() == s.images.tobytes()
    assert cli.main(["convert", str(folder), "--out", str(tmp_path / "cutouts.h5")]) == 0
    assert read_stamps(tmp_path / "cutouts.h5").images.tobytes() == cube.tobytes()
    capsys.readouterr()


def test_fits_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StampFileError, match=r"empty: expected a folder of FITS cutouts .*; found no FITS files"):
        read_fits_folder(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _cutout(mixed / "a.fits", np.zeros((21, 21), np.float32))
    _cutout(mixed / "b.fits", np.zeros((25, 25), np.float32))
    with pytest.raises(StampFileError, match=r"b\.fits \[image\]: expected stamp shape \(21, 21, 1\) like a\.fits"):
        read_fits_folder(mixed)
    multi = tmp_path / "multi"
    multi.mkdir()
    _cutout(multi / "a.fits", np.zeros((3, 21, 21), np.float32), STMPAXES="NHW")
    with pytest.raises(StampFileError, match=r"a\.fits \[image\]: expected one stamp per file"):
        read_fits_folder(multi)
    twins = tmp_path / "twins"
    twins.mkdir()
    _cutout(twins / "a.fits", np.zeros((21, 21), np.float32))
    _cutout(twins / "a.fits.gz", np.zeros((21, 21), np.float32))
    with pytest.raises(StampFileError, match=r"expected file names that are unique without their extension"):
        read_fits_folder(twins)
