"""Survey alert packets: the real ZTF sample in ../shared, and Rubin packets built here from a schema
that mirrors the published lsst alert_packet fields the reader uses."""

from __future__ import annotations

import gzip
import io
import warnings
from pathlib import Path

import numpy as np
import pytest

from hits_stamps.errors import StampFileError
from hits_stamps.io import read_stamps, write_stamps
from hits_stamps.io.alerts import read_alerts

ZTF = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ztf-alerts"
JPEG_PACKETS = {f"{stem}{i}.avro" for stem in ("87704463155", "1726958725155") for i in ("000", "001", "002")}

fastavro = pytest.importorskip("fastavro")


@pytest.fixture
def ztf_dir():
    if not ZTF.is_dir() or not any(ZTF.glob("*.avro")):
        pytest.skip("../shared/data/ztf-alerts not present")
    return ZTF


# ------------------------------------------------------------------------------------------ ZTF (real)
def test_ztf_folder_every_readable_packet_converts(ztf_dir):
    result = read_alerts(ztf_dir)
    assert result.n_packets == 22
    s = result.stamps
    assert s.shape == (16, 63, 63, 3)
    assert s.channels == ("template", "science", "difference")
    assert {src for src, _ in result.skipped} == JPEG_PACKETS
    for _, reason in result.skipped:
        assert "\n" not in reason and "JPEG" in reason and "no flux" in reason
    # ids and candidate fields kept; drb only where the schema has it
    assert "1661382530015060001" in set(s.ids)
    assert set(s.columns) >= {"candid", "objectId", "rb", "drb", "isdiffpos", "fid", "ra", "dec"}
    i = list(s.ids).index("472263571115115000")
    assert s.columns["drb"][i] == pytest.approx(0.98764, abs=1e-4)
    assert s.columns["rb"][i] == pytest.approx(0.8433, abs=1e-3)
    assert np.isnan(s.columns["drb"][list(s.ids).index("472263571115090000")])
    assert s.columns["objectId"][i] == "ZTF17aaajnnn"
    # two alerts of one object share a group, so a split keeps them on one side
    assert s.groups[i] == s.groups[list(s.ids).index("472263571115095000")] == "ZTF17aaajnnn"


def test_ztf_edge_cutouts_padded_with_nan_on_the_edge_side(ztf_dir):
    s = read_alerts(ztf_dir).stamps
    ids = list(s.ids)
    # ypos 10.4: 41 rows, the 22 missing ones are below the cutout (low y = first numpy rows)
    i = ids.index("396522680015040001")
    assert (s.columns["cutout_height"][i], s.columns["cutout_width"][i], s.columns["padded"][i]) == (41, 63, 1)
    assert np.isnan(s.images[i, :22]).all() and np.isfinite(s.images[i, 22:, :33, 1]).all()
    # xpos 3051 of 3072: 53 columns, the 10 missing ones beyond the high-x edge
    j = ids.index("472263571115115014")
    assert s.columns["cutout_width"][j] == 53
    assert np.isnan(s.images[j, :, 53:]).all() and np.isfinite(s.images[j, :, :30, 1]).all()
    assert s.columns["padded"].sum() == 3


def test_ztf_difference_is_science_minus_template_and_blank_pixels_are_nan(ztf_dir):
    s = read_alerts(ztf_dir).stamps
    # negative candidates ship reference - science: negated so that every difference is sci - ref
    neg = s.columns["isdiffpos"] == 0
    assert neg.any() and (s.columns["difference_negated"][neg] == 1).all()
    assert (s.columns["difference_negated"][~neg] == 0).all()
    raw = next(fastavro.reader(open(ztf_dir / "1661382530015060001.avro", "rb")))
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        diff = fits.open(io.BytesIO(gzip.decompress(raw["cutoutDifference"]["stampData"])))[0].data
    i = list(s.ids).index("1661382530015060001")
    np.testing.assert_array_equal(s.images[i, ..., 2], -diff.astype(np.float32))
    # the -3.4e38 no-data template pixels of one packet are missing pixels, not flux
    assert np.nanmin(s.images[..., 0]) > -1e30
    assert np.isnan(s.images[list(s.ids).index("472263571115090000"), ..., 0]).sum() >= 1183


def test_ztf_jpeg_packet_alone_is_one_line_error(ztf_dir):
    with pytest.raises(StampFileError, match="none convertible.*JPEG image"):
        read_stamps(ztf_dir / "87704463155000.avro")


def test_ztf_convert_cli_names_each_skipped_packet(ztf_dir, tmp_path, capsys):
    from hits_stamps.cli import main

    out = tmp_path / "ztf.h5"
    assert main(["convert", str(ztf_dir), "--out", str(out)]) == 0
    err = capsys.readouterr()
    assert "6 of 22 packets not converted" in err.out
    assert sum("not converted" in line for line in err.err.splitlines()) == 6
    assert "Traceback" not in err.err
    back = read_stamps(out)
    assert back.shape == (16, 63, 63, 3) and back.columns["objectId"].dtype.kind == "U"
    assert main(["convert", str(ztf_dir / "87704463155001.avro"), "--out", str(tmp_path / "j.h5")]) == 2
    err = capsys.readouterr().err
    assert "JPEG" in err and "Traceback" not in err and not (tmp_path / "j.h5").exists()


# ------------------------------------------------------------------------------------ Rubin (built)
def _schema(with_variance_note: str = "") -> dict:
    """A small schema with the published lsst.v7_x alert's names and types for the fields we read."""
    dia = {
        "type": "record", "name": "diaSource", "namespace": "lsst.v7_4",
        "fields": [
            {"name": "diaSourceId", "type": "long"},
            {"name": "visit", "type": "long"},
            {"name": "detector", "type": "int"},
            {"name": "diaObjectId", "type": ["null", "long"], "default": None},
            {"name": "midpointMjdTai", "type": "double"},
            {"name": "ra", "type": "double"},
            {"name": "dec", "type": "double"},
            {"name": "x", "type": "float"},
            {"name": "y", "type": "float"},
            {"name": "psfFlux", "type": ["null", "float"], "default": None},
            {"name": "psfFluxErr", "type": ["null", "float"], "default": None},
            {"name": "snr", "type": ["null", "float"], "default": None},
        ],
    }
    return {
        "type": "record", "name": "alert", "namespace": "lsst.v7_4",
        "fields": [
            {"name": "alertId", "type": "long"},
            {"name": "diaSource", "type": dia},
            {"name": "cutoutDifference", "type": ["null", "bytes"], "default": None},
            {"name": "cutoutScience", "type": ["null", "bytes"], "default": None},
            {"name": "cutoutTemplate", "type": ["null", "bytes"], "default": None},
        ],
    }


def _ccd_bytes(image: np.ndarray, variance: np.ndarray | None) -> bytes:
    """FITS bytes as Rubin writes its cutouts: astropy CCDData with a variance uncertainty."""
    from astropy.nddata import CCDData, VarianceUncertainty

    ccd = CCDData(image, unit="nJy", uncertainty=None if variance is None else VarianceUncertainty(variance))
    buf = io.BytesIO()
    ccd.write(buf, format="fits")
    return buf.getvalue()


def _rubin_packets(path: Path, n: int = 3, size: int = 15, seed: int = 0, jpeg_at: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    records, planes = [], {}
    for k in range(n):
        tmpl, sci = rng.normal(100, 5, (2, size, size)).astype(np.float32)
        diff = (sci - tmpl).astype(np.float32)
        var = rng.uniform(1, 4, (size, size)).astype(np.float32)
        planes[k] = (tmpl, sci, diff, var)
        records.append({
            "alertId": 1000 + k,
            "diaSource": {"diaSourceId": 5000 + k, "visit": 7, "detector": 3, "diaObjectId": 90 + k,
                          "midpointMjdTai": 60000.5, "ra": 10.0 + k, "dec": -5.0, "x": 100.0, "y": 200.0,
                          "psfFlux": 12.5, "psfFluxErr": 1.5, "snr": 8.3},
            "cutoutDifference": _ccd_bytes(diff, var),
            "cutoutScience": _ccd_bytes(sci, None),
            "cutoutTemplate": (b"\xff\xd8\xff\xe0" + b"\0" * 20) if k == jpeg_at else _ccd_bytes(tmpl, None),
        })
    with open(path, "wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(_schema()), records)
    return planes


def test_rubin_packet_gives_four_channels_with_snr_from_variance(tmp_path):
    path = tmp_path / "rubin.avro"
    planes = _rubin_packets(path, n=3)
    s = read_stamps(path)
    assert s.shape == (3, 15, 15, 4)
    assert s.channels == ("template", "science", "difference", "snr")
    tmpl, sci, diff, var = planes[1]
    np.testing.assert_array_equal(s.images[1, ..., 0], tmpl)
    np.testing.assert_array_equal(s.images[1, ..., 2], diff)
    np.testing.assert_allclose(s.images[1, ..., 3], diff / np.sqrt(var), rtol=1e-6)
    assert list(s.ids) == ["5000", "5001", "5002"]
    assert s.columns["diaObjectId"].tolist() == s.groups.tolist() == ["90", "91", "92"]
    assert s.columns["psfFlux"][0] == pytest.approx(12.5)
    assert s.meta["source_format"] == "rubin-alerts"
    # round trip through the native schema keeps the columns
    back = read_stamps(write_stamps(s, tmp_path / "r.npz"))
    assert back.columns["alertId"].tolist() == ["1000", "1001", "1002"]


def test_rubin_bad_packet_skipped_with_reason(tmp_path):
    path = tmp_path / "rubin.avro"
    _rubin_packets(path, n=3, jpeg_at=1)
    with pytest.warns(UserWarning, match=r"rubin.avro#1: not converted: cutoutTemplate is a JPEG"):
        s = read_stamps(path)
    assert list(s.ids) == ["5000", "5002"]


def test_mixed_surveys_and_corrupt_files(tmp_path, ztf_dir):
    folder = tmp_path / "mixed"
    folder.mkdir()
    _rubin_packets(folder / "a.avro", n=1)
    (folder / "b.avro").write_bytes((ztf_dir / "472263571115115000.avro").read_bytes())
    with pytest.raises(StampFileError, match="alerts of one survey"):
        read_stamps(folder)
    (folder / "b.avro").write_bytes(b"Obj\x01 not really avro")
    with pytest.warns(UserWarning, match="b.avro: not converted: not a readable Avro alert file"):
        s = read_stamps(folder)
    assert len(s) == 1
