"""`hits-stamps info` and `hits-stamps convert`: output, and one-line errors for every bad input."""

import json
import pickle
import re

import h5py
import numpy as np
import pytest

from hits_stamps import cli
from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.io import read_stamps, write_stamps


def _run(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------------------- bad inputs
def _good(tmp_path, ext=".npz", n=30):
    return write_stamps(make_synthetic_stamps(n=n, seed=3), tmp_path / f"good{ext}")


def missing_file(tmp_path):
    return tmp_path / "nowhere.npz", r"nowhere\.npz: expected an existing file; found no such file or directory"


def wrong_extension(tmp_path):
    path = tmp_path / "stamps.csv"
    path.write_text("a,b\n1,2\n")
    return path, r"stamps\.csv: expected one of the extensions .*; found extension '\.csv'"


def truncated_npz(tmp_path):
    raw = _good(tmp_path).read_bytes()
    path = tmp_path / "truncated.npz"
    path.write_bytes(raw[: len(raw) // 2])
    (tmp_path / "good.npz").unlink()
    return path, r"truncated\.npz: expected a readable \.npz archive; found a truncated or corrupt file"


def corrupt_npz(tmp_path):
    raw = bytearray(_good(tmp_path).read_bytes())
    (tmp_path / "good.npz").unlink()
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(64)
    path = tmp_path / "corrupt.npz"
    path.write_bytes(bytes(raw))
    return path, r"corrupt\.npz: expected a readable \.npz archive; found a truncated or corrupt file \(Bad CRC-32"


def truncated_h5(tmp_path):
    raw = _good(tmp_path, ".h5").read_bytes()
    (tmp_path / "good.h5").unlink()
    path = tmp_path / "truncated.h5"
    path.write_bytes(raw[: len(raw) // 2])
    return path, r"truncated\.h5: expected a readable HDF5 file; found a truncated or corrupt file \(.*truncated file"


def corrupt_h5(tmp_path):
    raw = bytearray(_good(tmp_path, ".h5", n=200).read_bytes())
    (tmp_path / "good.h5").unlink()
    mid = len(raw) // 2
    raw[mid:mid + 512] = b"\x01" * 512
    path = tmp_path / "corrupt.h5"
    path.write_bytes(bytes(raw))
    return path, r"corrupt\.h5: expected a readable HDF5 file; found a truncated or corrupt file"


def wrong_rank_npz(tmp_path):
    path = tmp_path / "rank3.npz"
    np.savez(path, images=np.zeros((4, 21, 21), np.float32), labels=np.zeros(4, np.int64))
    return path, r"rank3\.npz \[images\]: expected rank 4 \(N, H, W, C\); found shape \(4, 21, 21\)"


def wrong_rank_h5(tmp_path):
    path = tmp_path / "rank5.h5"
    with h5py.File(path, "w") as fh:
        fh["images"] = np.zeros((2, 3, 21, 21, 4), np.float32)
    return path, r"rank5\.h5 \[images\]: expected rank 4 \(N, H, W, C\); found shape \(2, 3, 21, 21, 4\)"


def labels_length(tmp_path):
    path = tmp_path / "short_labels.npz"
    np.savez(path, images=np.zeros((4, 21, 21, 4), np.float32), labels=np.zeros(3, np.int64))
    return path, r"short_labels\.npz \[labels\]: expected shape \(4,\) matching images; found shape \(3,\)"


def labels_outside(tmp_path):
    path = tmp_path / "bad_labels.h5"
    with h5py.File(path, "w") as fh:
        fh["images"] = np.zeros((4, 21, 21, 4), np.float32)
        fh["labels"] = np.array([0, 1, 2, -3])
    return path, r"bad_labels\.h5 \[labels\]: expected values in \{-1, 0, 1\}; found values \[-3, 2\]"


def int_images(tmp_path):
    path = tmp_path / "ints.npz"
    np.savez(path, images=np.zeros((4, 21, 21, 4), np.int16), labels=np.zeros(4, np.int64))
    return path, r"ints\.npz \[images\]: expected a floating-point dtype; found dtype int16"


def untrusted_pickle(tmp_path):
    path = tmp_path / "course.pkl"
    path.write_bytes(pickle.dumps({"images": np.zeros((2, 21, 21, 4), np.float32), "labels": [0, 1]}))
    return path, (r"course\.pkl: expected a file that is safe to load; pass --trust-pickle \(API: trust_pickle=True\)"
                  r".*found a pickle, and loading a pickle can run arbitrary code")


def sequence_file(tmp_path):
    path = tmp_path / "sequences.npz"
    np.savez(path, stamps=np.zeros((5, 21, 21), np.float32), object_index=np.zeros(5, np.int32), mjd=np.arange(5.0))
    return path, r"sequences\.npz: expected a stamp file with an `images` array; found a HiTS sequence file"


BAD_INPUTS = [missing_file, wrong_extension, truncated_npz, corrupt_npz, truncated_h5, corrupt_h5, wrong_rank_npz,
              wrong_rank_h5, labels_length, labels_outside, int_images, untrusted_pickle, sequence_file]


@pytest.mark.parametrize("command", ["info", "convert"])
@pytest.mark.parametrize("make_bad", BAD_INPUTS, ids=lambda f: f.__name__)
def test_bad_input_is_one_line_error_and_writes_nothing(tmp_path, capsys, command, make_bad):
    bad, pattern = make_bad(tmp_path)
    before = _files(tmp_path)
    extra = ["--out", tmp_path / "new_folder" / "out.h5"] if command == "convert" else []
    code, out, err = _run(capsys, command, bad, *extra)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err + out
    assert _files(tmp_path) == before  # nothing written, not even the output's folder


def test_output_exists_without_overwrite(tmp_path, capsys):
    src = _good(tmp_path)
    target = write_stamps(make_synthetic_stamps(n=4, seed=8), tmp_path / "target.h5")
    before = target.read_bytes()
    code, _, err = _run(capsys, "convert", src, "--out", target)
    assert code == 2
    expected = f"error: {target}: output exists; pass --overwrite (overwrite=True) to replace it"
    assert err.strip().splitlines() == [expected]
    assert target.read_bytes() == before
    code, out, _ = _run(capsys, "convert", src, "--out", target, "--overwrite")
    assert code == 0 and "wrote" in out
    assert len(read_stamps(target)) == 30


def test_convert_refuses_bad_output_extension_before_reading(tmp_path, capsys):
    code, _, err = _run(capsys, "convert", tmp_path / "missing.npz", "--out", tmp_path / "out.txt")
    assert code == 2
    assert re.fullmatch(r"error: .*out\.txt: expected an output extension in \['\.h5', '\.hdf5', '\.npz'\]; "
                        r"found extension '\.txt'", err.strip())


def test_real_hits2015_sequence_file_gives_clear_message(hits2015_dir, capsys):
    code, out, err = _run(capsys, "info", hits2015_dir / "hits2015_sequences.npz")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err + out
    assert ("hits2015_sequences.npz: expected a stamp file with an `images` array; "
            "found a HiTS sequence file") in lines[0]
    assert "hits-stamps build-real" in lines[0]


# ---------------------------------------------------------------------------- good inputs
def test_info_reports_shape_balance_and_non_finite_per_channel(tmp_path, capsys):
    s = make_synthetic_stamps(n=10, seed=4)
    s.images[2, :, :, 2] = np.nan  # one all-NaN difference channel: 441 pixels
    s.images[5, 0, 0, 0] = np.inf
    path = write_stamps(s, tmp_path / "s.npz")
    code, out, _ = _run(capsys, "info", path)
    assert code == 0
    bal = s.class_balance()
    assert "10 stamps of 21x21x4" in out
    assert f"labels: real {bal['real']}, bogus {bal['bogus']}, unknown 0" in out
    assert "non-finite pixels: 442 (in 2 stamps)" in out
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in out.splitlines() if line.count("│") == 6}
    assert rows["difference"][2:] == ["441", "1"]
    assert rows["template"][2:] == ["1", "1"]
    assert rows["science"][2:] == ["0", "0"]


def test_info_json_is_strict_json(tmp_path, capsys):
    s = make_synthetic_stamps(n=6, seed=5)
    s.images[:, :, :, 3] = np.nan  # a channel with no finite pixel at all
    code, out, _ = _run(capsys, "info", write_stamps(s, tmp_path / "s.h5"), "--json")
    assert code == 0
    data = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert data["n"] == 6 and data["shape"] == [21, 21, 4]
    assert data["ranges"]["snr"] is None
    assert data["nan_count_per_channel"] == {"template": 0, "science": 0, "difference": 0, "snr": 6 * 441}
    lo, hi = data["ranges"]["science"]
    assert lo == float(np.nanmin(s.images[..., 1])) and hi == float(np.nanmax(s.images[..., 1]))


@pytest.mark.parametrize(("src_ext", "out_ext"), [(".npz", ".h5"), (".h5", ".npz"), (".npz", ".hdf5")])
def test_convert_between_native_formats(tmp_path, capsys, src_ext, out_ext):
    s = make_synthetic_stamps(n=25, seed=6)
    src = write_stamps(s, tmp_path / f"in{src_ext}")
    out_path = tmp_path / "sub" / f"out{out_ext}"
    code, out, _ = _run(capsys, "convert", src, "--out", out_path)
    assert code == 0
    bal = s.class_balance()
    assert f"25 stamps of 21x21x4 (real {bal['real']}, bogus {bal['bogus']}, unknown 0)" in out
    back = read_stamps(out_path)
    assert back.images.tobytes() == s.images.tobytes()
    assert list(back.ids) == list(s.ids) and np.array_equal(back.labels, s.labels)


def test_error_messages_keep_brackets_in_paths(tmp_path, capsys):
    code, _, err = _run(capsys, "info", tmp_path / "run[bold]1.npz")
    assert code == 2 and "run[bold]1.npz: expected an existing file" in err
