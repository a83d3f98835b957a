"""Bad input: truncated, mis-formatted and wrong-kind files raise ReaderError naming file and line/field.

Includes hypothesis property tests throwing random garbage lines at the ISD-Lite and Global Hourly
parsers: the outcome is a clean ReaderError naming the file (and line) or a valid parse, never another
exception type.
"""

from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from urlk_forecast.data.formats.global_hourly import parse_global_hourly
from urlk_forecast.data.formats.isd_lite import parse_isd_lite
from urlk_forecast.data.readers import (
    ReaderError,
    read_csv_long,
    read_global_hourly,
    read_gsod,
    read_isd_history,
    read_isd_lite,
)

FIX = Path(__file__).parent / "fixtures"
ISD_GOOD = (FIX / "isd-lite" / "725090-14739-2020").read_text().splitlines(keepends=True)
GH_GOOD = (FIX / "global-hourly" / "72509014739.csv").read_text().splitlines(keepends=True)


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


# ------------------------------------------------------------------------------------------- ISD-Lite
@pytest.mark.parametrize(
    ("content", "match"),
    [
        (ISD_GOOD[0] + ISD_GOOD[1][:30], r"line 2: expected 12 whitespace-separated .*found 7.*truncated file"),
        (ISD_GOOD[0] + ISD_GOOD[1].replace("   33", "  3.3"), r"line 2, field air_temp: '3.3' is not an integer"),
        (ISD_GOOD[0] + "2020 02 30 05    10    10 10000     0     0     0 -9999 -9999\n", r"line 2, field day: day 30"),
        (ISD_GOOD[0] + "2020 01 01 24    10    10 10000     0     0     0 -9999 -9999\n", r"line 2, field hour"),
        (ISD_GOOD[0] + ISD_GOOD[1] + ISD_GOOD[1], r"line 3: duplicate hour 2020-01-01 01:00:00 \(also on line 2\)"),
        (ISD_GOOD[0] + "caf\u00e9\n", r"line 2: byte 0xc3 is not valid ascii"),
        ((FIX / "global-hourly" / "72509014739.csv").read_text(), r"line 1: expected 12 whitespace-separated"),
        ("", r"no ISD-Lite records \(empty file\)"),
    ],
)
def test_isd_lite_bad_files_name_file_and_line(tmp_path, content, match):
    p = _write(tmp_path, "725090-14739-2020", content)
    with pytest.raises(ReaderError, match=match) as exc:
        read_isd_lite(p, history=False)
    assert str(exc.value).startswith(str(p))


def test_isd_lite_truncated_and_fake_gzip(tmp_path):
    gz = (FIX / "isd-lite" / "010010-99999-2019.gz").read_bytes()
    p = _write(tmp_path, "010010-99999-2019.gz", gz[: len(gz) // 2])
    with pytest.raises(ReaderError, match=r"010010-99999-2019.gz: truncated gzip file"):
        read_isd_lite(p, history=False)
    p.write_bytes(b"".join(x.encode() for x in ISD_GOOD))
    with pytest.raises(ReaderError, match=r"named .gz but is not gzip-compressed"):
        read_isd_lite(p, history=False)
    p.write_bytes(b"\x1f\x8b" + b"\x00" * 40)
    with pytest.raises(ReaderError, match=r"corrupt gzip file"):
        read_isd_lite(p, history=False)


def test_isd_lite_bad_file_name_and_same_year_twice(tmp_path):
    p = _write(tmp_path, "boston.txt", "".join(ISD_GOOD))
    with pytest.raises(ReaderError, match=r"boston.txt: cannot tell the station"):
        read_isd_lite(p, history=False)
    a = _write(tmp_path, "725090-14739-2020", "".join(ISD_GOOD))
    b = _write(tmp_path, "725090-14739-2020.gz", gzip.compress("".join(ISD_GOOD).encode()))
    with pytest.raises(ReaderError, match=r"station-year 725090-14739 2020 is also in"):
        read_isd_lite([a, b], history=False)


def test_isd_history_bad_rows(tmp_path):
    text = (FIX / "isd-lite" / "isd-history.csv").read_text()
    p = _write(tmp_path, "isd-history.csv", text.replace('"+42.361"', '"north"'))
    with pytest.raises(ReaderError, match=r"isd-history.csv, line 5, field LAT: 'north' is not a number"):
        read_isd_history(p)
    p.write_text(text.replace('"+42.361"', '"+142.361"'))
    with pytest.raises(ReaderError, match=r"line 5, field LAT: 142.361 is outside"):
        read_isd_history(p)
    p.write_text(text.rsplit('","', 3)[0])  # truncated last row
    with pytest.raises(ReaderError, match=r"line 6: expected 11 fields"):
        read_isd_history(p)
    p.write_text(text.replace('"19431001"', '"19430230"'))
    with pytest.raises(ReaderError, match=r"line 5, field BEGIN: '19430230' is not a valid date"):
        read_isd_history(p)
    p.write_text(text.replace('"19431001"', '"1943-10-01"'))
    with pytest.raises(ReaderError, match=r"line 5, field BEGIN: '1943-10-01' is not a YYYYMMDD date"):
        read_isd_history(p)
    p.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ReaderError, match=r"line 1: not an isd-history.csv station list"):
        read_isd_history(p)


# -------------------------------------------------------------------------------------- Global Hourly
@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ('"+0039,1"', '"+39,1"', r"line 2, field TMP: '\+39,1' is not like"),
        ('"250,1,N,0046,1"', '"250,1,N,46,1"', r"line 2, field WND"),
        ('"2020-01-01T01:54:00"', '"01/01/2020 01:54"', r"line 4, field DATE"),
        ('"2020-01-01T01:54:00"', '"2020-02-30T01:54:00"', r"line 4, field DATE: '2020-02-30T01:54:00' is not a valid"),
        ('"42.3606","-71.0097","3.7"', '"42.3606","west","3.7"', r"line 2, field LONGITUDE"),
        ('"KBOS ","V030","250,1,N,0046,1"', '"KBOS ","250,1,N,0046,1"', r"line 2: expected 19 fields"),
        ('"FM-16","KBOS ","V030","260', '"FM-16,"KBOS ","V030","260', r"line 3"),
    ],
)
def test_global_hourly_bad_rows(tmp_path, old, new, match):
    text = "".join(GH_GOOD)
    assert old in text
    p = _write(tmp_path, "72509014739.csv", text.replace(old, new, 1))
    with pytest.raises(ReaderError, match=match):
        read_global_hourly(p)


def test_global_hourly_wrong_kind_and_truncated(tmp_path):
    with pytest.raises(ReaderError, match=r"01001099999.csv, line 1: not a Global Hourly .*TMP nor a WND"):
        read_global_hourly(FIX / "gsod" / "01001099999.csv")
    with pytest.raises(ReaderError, match=r"line 1: not a Global Hourly.*missing column"):
        read_global_hourly(FIX / "csv-long" / "long.csv")
    text = "".join(GH_GOOD)
    p = _write(tmp_path, "cut.csv", text[: text.index("+0022,2") + 3])  # ends inside a quoted field
    with pytest.raises(ReaderError, match=r"cut.csv, line 8"):
        read_global_hourly(p)
    p = _write(tmp_path, "bin.csv", bytes(range(256)))
    with pytest.raises(ReaderError, match=r"bin.csv, line \d+: byte 0x"):
        read_global_hourly(p)


# ----------------------------------------------------------------------------------------------- GSOD
def test_gsod_bad_rows(tmp_path):
    text = (FIX / "gsod" / "01001099999.csv").read_text()
    p = _write(tmp_path, "g.csv", text.replace('"   32.0"', '"  thirty"'))
    with pytest.raises(ReaderError, match=r"g.csv, line 3, field TEMP: 'thirty' is not a number"):
        read_gsod(p)
    lines = text.splitlines(keepends=True)
    p.write_text("".join(lines + [lines[2]]))
    with pytest.raises(ReaderError, match=r"line 6: duplicate date 2020-01-02 00:00:00 \(also on line 3\)"):
        read_gsod(p)
    p.write_text(text.replace('"2020-01-05"', '"2020-13-05"'))
    with pytest.raises(ReaderError, match=r"line 5, field DATE"):
        read_gsod(p)
    with pytest.raises(ReaderError, match=r"line 1: not a GSOD .*missing column"):
        read_gsod(FIX / "global-hourly" / "72509014739.csv")


# ------------------------------------------------------------------------------------------ CSV long
@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("station,time,temperature\nA,2020-01-01T00:00,1\nA,2020-01-01T01:00,warm\n", r"line 3, field temperature"),
        ("station,time,temperature\nA,2020-01-01T00:00,1\nA,not a time,2\n", r"line 3, field time: 'not a time'"),
        ("station,time,temperature\nA,2020-01-01T00:00,1\n\nA,2020-01-01T00:00,2\n", r"line 4: station 'A' has time"),
        (
            "station,time,temperature\nA,2020-01-01T00:00,1\nA,2020-01-01T01:00,1\nA,2020-01-01T02:00,1\n"
            "B,2020-01-01T02:10,1\nB,2020-01-01T03:00,1\n",
            r"line 5, field time: time 2020-01-01 02:10:00 is not on the regular 0 days 01:00:00 grid",
        ),
        (
            "station,time,lat,lon,temperature\nA,2020-01-01T00:00,1,2,1\nA,2020-01-01T01:00,1.5,2,1\n",
            r"line 3, field lat",
        ),
        ("station,temperature\nA,1\n", r"line 1: missing column\(s\) \['time'\]"),
        ("station,time,pressure\nA,2020-01-01T00:00,1000\n", r"line 1: no variable column"),
        ('station,time,temperature\nA,2020-01-01T00:00,1\nA,"2020-01-01T01:00,2\n', r"line 3: malformed CSV"),
    ],
)
def test_csv_long_bad_rows(tmp_path, content, match):
    p = _write(tmp_path, "long.csv", content)
    with pytest.raises(ReaderError, match=match):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_csv_long(p)


def test_csv_long_unlisted_station(tmp_path):
    meta = _write(tmp_path, "st.csv", "station,lat,lon\nA,1,2\n")
    data = _write(tmp_path, "d.csv", "station,time,temperature\nA,2020-01-01,1\nC,2020-01-01,2\n")
    with pytest.raises(ReaderError, match=r"st.csv: station\(s\) \['C'\]"):
        read_csv_long(data, stations=meta)


# --------------------------------------------------------------------------------- property tests
_garbage_line = st.one_of(
    st.text(max_size=90).map(lambda s: s.replace("\n", " ")),
    st.lists(st.from_regex(r"-?[0-9]{1,7}", fullmatch=True), min_size=8, max_size=14).map(" ".join),
    st.binary(max_size=70).map(lambda b: b.replace(b"\n", b" ").decode("latin-1")),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.lists(_garbage_line, min_size=1, max_size=3), pos=st.integers(0, len(ISD_GOOD)))
def test_isd_lite_garbage_lines_give_reader_error_or_parse(garbage, pos):
    lines = ISD_GOOD[:pos] + [g + "\n" for g in garbage] + ISD_GOOD[pos:]
    data = "".join(lines).encode("utf-8", "surrogatepass")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rec = parse_isd_lite(data, "garbage.txt")
        except ReaderError as e:
            assert str(e).startswith("garbage.txt")
            assert e.line is not None and 1 <= e.line <= len(lines)
            return
    assert len(rec["time"]) >= len(ISD_GOOD)  # a valid parse keeps every good record
    assert np.all(np.diff(rec["time"].astype(np.int64)) != 0)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.binary(max_size=400))
def test_isd_lite_random_bytes(garbage):
    try:
        parse_isd_lite(garbage, "bytes.bin")
    except ReaderError as e:
        assert str(e).startswith("bytes.bin")


_gh_garbage = st.one_of(
    st.text(max_size=120).map(lambda s: s.replace("\n", " ").replace("\r", " ")),
    st.lists(st.text(alphabet='0123456789+-,.:TNC "', max_size=14), min_size=17, max_size=21).map(
        lambda fs: ",".join(f'"{f}"' for f in fs)
    ),
    st.tuples(
        st.sampled_from(GH_GOOD[1:-1]), st.integers(0, 30), st.text(alphabet='0123456789+-,9"CN', max_size=6)
    ).map(
        lambda t: (lambda parts: ",".join(parts[: t[1] % len(parts)] + [f'"{t[2]}"'] + parts[t[1] % len(parts) + 1 :]))(
            t[0].rstrip("\n").split('","')
        )
    ),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.lists(_gh_garbage, min_size=1, max_size=3), pos=st.integers(1, len(GH_GOOD)))
def test_global_hourly_garbage_lines_give_reader_error_or_parse(garbage, pos):
    lines = GH_GOOD[:pos] + [g + "\n" for g in garbage] + GH_GOOD[pos:]
    data = "".join(lines).encode("utf-8", "surrogatepass")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = parse_global_hourly(data, "gh.csv")
        except ReaderError as e:
            assert str(e).startswith("gh.csv")
            assert e.line is not None and 1 <= e.line <= len(lines) + 1
            return
    assert "725090-14739" in out  # the good reports survive a valid parse


def test_directory_copy_of_fixtures_reads(tmp_path):
    """Sanity for the property tests: the untouched fixture parses (so failures above are the garbage)."""
    shutil.copytree(FIX / "isd-lite", tmp_path / "d")
    assert read_isd_lite(tmp_path / "d").sizes["station"] == 2
    assert parse_global_hourly("".join(GH_GOOD).encode(), "x")["725090-14739"]["time"].size == 7
