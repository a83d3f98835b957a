"""Readers on small real-format fixture files (tests/fixtures), checked value by value."""

from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from urlk_forecast.data.formats.global_hourly import snap_to_hour
from urlk_forecast.data.formats.isd_lite import _fast_parse, parse_isd_lite
from urlk_forecast.data.readers import (
    ReaderError,
    detect_format,
    open_dataset,
    read_csv_long,
    read_global_hourly,
    read_gsod,
    read_isd_history,
    read_isd_lite,
)
from urlk_forecast.data.schema import validate

FIX = Path(__file__).parent / "fixtures"
NAN = np.nan


def series(ds, var, station):
    return ds[var].sel(station=station).values.astype(np.float64)


# ------------------------------------------------------------------------------------------- ISD-Lite
def test_isd_lite_directory_values_and_metadata():
    ds = read_isd_lite(FIX / "isd-lite")
    validate(ds, ["temperature", "wind_speed"])
    assert list(ds.station.values) == ["010010-99999", "725090-14739"]
    t = pd.DatetimeIndex(ds.time.values)
    assert t[0] == pd.Timestamp("2019-12-31 18:00") and t[-1] == pd.Timestamp("2020-01-01 04:00")
    assert len(t) == 11  # hourly, no gaps in the axis
    # Jan Mayen: -9999 -> NaN; calm (0) is a real 0; the 2020-01-01 00 hour is in both year files and
    # must come from the 2020 file (-54, 41), not the 2019 one (-55, 40)
    np.testing.assert_allclose(
        series(ds, "temperature", "010010-99999"),
        [-4.5, -5.1, NAN, -6.0, -6.2, -5.8, -5.4, -5.0, -4.7, -4.4, NAN],
        rtol=0,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        series(ds, "wind_speed", "010010-99999"),
        [7.2, 8.0, 6.5, NAN, 0.0, 3.1, 4.1, 4.5, NAN, 5.2, NAN],
        atol=1e-6,
    )
    # Boston: plain (not gzip) file with the 02:00 record absent -> NaN, never 0
    np.testing.assert_allclose(series(ds, "temperature", "725090-14739")[6:], [3.9, 3.3, NAN, 2.8, 2.2], atol=1e-6)
    np.testing.assert_allclose(series(ds, "wind_speed", "725090-14739")[6:], [4.6, 4.1, NAN, 3.6, 0.0], atol=1e-6)
    assert np.isnan(series(ds, "temperature", "725090-14739")[:6]).all()
    jm = ds.sel(station="010010-99999")
    assert float(jm.lat) == pytest.approx(70.933, abs=1e-4)
    assert float(jm.lon) == pytest.approx(-8.667, abs=1e-4)
    assert float(jm.elevation) == pytest.approx(9.0)
    assert str(jm.name.values) == "JAN MAYEN(NOR-NAVY)"
    assert ds.temperature.dtype == np.float32


def test_isd_lite_files_list_explicit_history_and_time_range():
    files = [FIX / "isd-lite" / "725090-14739-2020"]
    ds = read_isd_lite(files, history=FIX / "isd-lite" / "isd-history.csv", start="2020-01-01", end="2020-01-01 23:00")
    assert len(ds.time) == 24 and ds.sizes["station"] == 1
    assert np.isnan(ds.temperature.values[5:]).all()
    assert float(ds.lat[0]) == pytest.approx(42.361, abs=1e-4)


def test_isd_lite_without_history(tmp_path):
    shutil.copy(FIX / "isd-lite" / "725090-14739-2020", tmp_path)
    with pytest.warns(UserWarning, match="isd-history"):
        ds = read_isd_lite(tmp_path)
    assert np.isnan(ds.lat.values).all() and str(ds.name.values[0]) == "725090-14739"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds2 = read_isd_lite(tmp_path, history=False)
    np.testing.assert_array_equal(ds.temperature.values, ds2.temperature.values)


def test_isd_history_parsing():
    h = read_isd_history(FIX / "isd-lite" / "isd-history.csv")
    assert h.loc["010010-99999", "icao"] == "ENJA"
    assert np.isnan(h.loc["010014-99999", "elevation"])  # -0999.0 means unknown
    assert np.isnan(h.loc["999999-00001", "lat"]) and np.isnan(h.loc["999999-00001", "elevation"])
    assert h.loc["725090-14739", "begin"] == pd.Timestamp("1943-10-01")
    assert h.loc["725090-14739", "line"] == 5


def _isd_line(y, m, d, h, t, ws):
    return f"{y:4d} {m:02d} {d:02d} {h:02d}{t:6d}{-9999:6d}{-9999:6d}{0:6d}{ws:6d}{0:6d}{-9999:6d}{-9999:6d}\n"


def test_isd_lite_blank_coordinates_policy(tmp_path):
    for f in (FIX / "isd-lite").iterdir():
        shutil.copy(f, tmp_path)
    (tmp_path / "999999-00001-2020").write_text(_isd_line(2020, 1, 1, 0, 11, 22))
    with pytest.raises(ReaderError, match=r"isd-history.csv, line 6: station 999999-00001 has a blank LAT/LON"):
        read_isd_lite(tmp_path)
    ds = read_isd_lite(tmp_path, missing_coords="nan")
    assert "999999-00001" in ds.station.values and np.isnan(float(ds.lat.sel(station="999999-00001")))
    assert float(ds.temperature.sel(station="999999-00001", time="2020-01-01 00:00")) == pytest.approx(1.1)
    ds = read_isd_lite(tmp_path, missing_coords="drop")
    assert list(ds.station.values) == ["010010-99999", "725090-14739"]
    (tmp_path / "999999-00001-2020").unlink()
    (tmp_path / "123456-00002-2020").write_text(_isd_line(2020, 1, 1, 0, 11, 22))
    with pytest.raises(ReaderError, match="isd-history.csv: station 123456-00002 is not listed"):
        read_isd_lite(tmp_path)


def test_isd_lite_fast_and_slow_paths_agree():
    rng = np.random.default_rng(1)
    times = pd.date_range("2019-01-01", periods=2000, freq="h")
    keep = np.sort(rng.choice(len(times), 1500, replace=False))
    temps = rng.integers(-400, 400, len(keep))
    temps[rng.random(len(keep)) < 0.05] = -9999
    winds = rng.integers(0, 300, len(keep))
    winds[rng.random(len(keep)) < 0.05] = -9999
    lines = [_isd_line(t.year, t.month, t.day, t.hour, a, w) for t, a, w in zip(times[keep], temps, winds)]
    fixed = "".join(lines).encode()
    loose = "".join("  ".join(ln.split()) + "\r\n" for ln in lines).encode()  # not fixed width: slow path
    assert _fast_parse(fixed) is not None and _fast_parse(loose) is None  # both paths really run
    a, b = parse_isd_lite(fixed), parse_isd_lite(loose)
    np.testing.assert_array_equal(a["time"], times[keep].values)
    for k in ("time", "temperature", "wind_speed"):
        np.testing.assert_array_equal(a[k], b[k])
    ref = np.where(temps == -9999, np.nan, temps / 10.0).astype(np.float32)
    np.testing.assert_array_equal(a["temperature"], ref)
    np.testing.assert_array_equal(a["wind_speed"], np.where(winds == -9999, np.nan, winds / 10.0).astype(np.float32))


def test_isd_lite_implausible_values_become_nan_with_warning():
    data = (_isd_line(2020, 1, 1, 0, 950, 10) + _isd_line(2020, 1, 1, 1, 20, 10)).encode()
    with pytest.warns(UserWarning, match=r"1 air_temp value\(s\) outside .* line 1"):
        rec = parse_isd_lite(data, "x")
    assert np.isnan(rec["temperature"][0]) and rec["temperature"][1] == pytest.approx(2.0)


# -------------------------------------------------------------------------------------- Global Hourly
def test_global_hourly_snapping_qc_and_ids():
    ds = read_global_hourly(FIX / "global-hourly" / "72509014739.csv")
    assert list(ds.station.values) == ["725090-14739"]  # 11-digit id -> USAF-WBAN like ISD-Lite
    # 00:54 -> 01:00 and the 23:59 SOD summary is not an observation (axis ends 04:00, not 2020-01-02)
    assert list(pd.DatetimeIndex(ds.time.values).hour) == [1, 2, 3, 4]
    # 01:00: 00:54 (6 min) beats 01:20 (20 min); 02:00: the SYNOP TMP has QC 7 -> 01:54 value, but its
    # calm wind (C, 0000) is a real 0 at 0 min; 03:00: 02:54 all missing, 03:10 wind speed QC 3 dropped
    np.testing.assert_allclose(series(ds, "temperature", "725090-14739"), [3.9, 3.3, 2.5, 2.2], atol=1e-6)
    np.testing.assert_allclose(series(ds, "wind_speed", "725090-14739"), [4.6, 0.0, NAN, 3.1], atol=1e-6)
    assert float(ds.lat[0]) == pytest.approx(42.3606, abs=1e-4)
    assert str(ds.name.values[0]).startswith("BOSTON LOGAN")


def test_global_hourly_directory_two_stations():
    ds = read_global_hourly(FIX / "global-hourly")
    assert list(ds.station.values) == ["010010-99999", "725090-14739"]
    np.testing.assert_allclose(series(ds, "temperature", "010010-99999"), [-5.4, NAN, NAN, -4.4, NAN], atol=1e-6)


def _snap_reference(times, values):
    best = {}
    for t, v in zip(pd.DatetimeIndex(times), values):
        if np.isnan(v):
            continue
        hour = (t + pd.Timedelta("30min")).floor("h")
        key = (abs(t - hour), t)
        if hour not in best or key < best[hour][0]:
            best[hour] = (key, v)
    hours = sorted(best)
    return np.array(hours, dtype="datetime64[ns]"), np.array([best[h][1] for h in hours])


def test_snap_to_hour_matches_brute_force():
    rng = np.random.default_rng(3)
    t = pd.Timestamp("2020-01-01").value + rng.integers(0, 48 * 3600, 400) * 10**9
    v = rng.normal(size=400)
    v[rng.random(400) < 0.2] = np.nan
    ht, hv = snap_to_hour(t.astype("datetime64[ns]"), v)
    rt, rv = _snap_reference(t.astype("datetime64[ns]"), v)
    np.testing.assert_array_equal(ht, rt)
    np.testing.assert_array_equal(hv, rv)


def test_snap_tie_goes_to_earlier_report():
    t = np.array(["2020-01-01T00:50", "2020-01-01T01:10"], dtype="datetime64[ns]")
    ht, hv = snap_to_hour(t, np.array([1.0, 2.0]))
    assert list(hv) == [1.0] and ht[0] == np.datetime64("2020-01-01T01:00")


# ----------------------------------------------------------------------------------------------- GSOD
def test_gsod_units_sentinels_daily_axis():
    ds = read_gsod(FIX / "gsod")
    assert list(ds.station.values) == ["010010-99999", "725090-14739"]
    assert list(pd.DatetimeIndex(ds.time.values).day) == [1, 2, 3, 4, 5]
    f2c = lambda f: (f - 32.0) * 5.0 / 9.0  # noqa: E731
    kn = 1852.0 / 3600.0
    np.testing.assert_allclose(
        series(ds, "temperature", "010010-99999"), [f2c(23.0), f2c(32.0), NAN, NAN, f2c(14.0)], atol=1e-5
    )
    np.testing.assert_allclose(
        series(ds, "wind_speed", "010010-99999"), [15.6 * kn, NAN, 10.0 * kn, NAN, 0.0], rtol=1e-5
    )
    np.testing.assert_allclose(series(ds, "temperature", "725090-14739")[1], f2c(41.0), atol=1e-5)


# ------------------------------------------------------------------------------------------ CSV long
def test_csv_long_with_inline_metadata():
    ds = read_csv_long(FIX / "csv-long" / "long.csv")
    assert list(ds.station.values) == ["A", "B"]
    np.testing.assert_allclose(series(ds, "temperature", "A"), [1.5, 1.0, 0.5])
    np.testing.assert_allclose(series(ds, "temperature", "B"), [-2.0, NAN, NAN])  # absent row and "NA"
    np.testing.assert_allclose(series(ds, "wind_speed", "A"), [3.0, NAN, 2.5])  # empty cell
    assert list(ds.name.values) == ["De Bilt", "Paris"]
    np.testing.assert_allclose(ds.elevation.values, [2.0, 75.0])


def test_csv_long_station_file_and_units():
    ds = read_csv_long(
        FIX / "csv-long" / "values_only.csv", stations=FIX / "csv-long" / "stations.csv", units={"temperature": "degF"}
    )
    assert "wind_speed" not in ds
    np.testing.assert_allclose(series(ds, "temperature", "A"), [(34.7 - 32) * 5 / 9, (33.8 - 32) * 5 / 9], atol=1e-5)
    np.testing.assert_allclose(series(ds, "temperature", "B"), [NAN, -1.0], atol=1e-5)
    assert np.isnan(float(ds.elevation.sel(station="B"))) and float(ds.lat.sel(station="B")) == pytest.approx(48.8)


def test_csv_long_timezones_to_utc(tmp_path):
    p = tmp_path / "tz.csv"
    p.write_text("station,time,lat,lon,temperature\nA,2020-01-01T01:00:00+01:00,1,2,5\nA,2020-01-01T01:00:00Z,1,2,6\n")
    ds = read_csv_long(p)
    assert list(pd.DatetimeIndex(ds.time.values).hour) == [0, 1]
    np.testing.assert_allclose(ds.temperature.values[:, 0], [5, 6])


# ------------------------------------------------------------------------------------ detection/open
@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("isd-lite", "isd-lite"),
        ("isd-lite/010010-99999-2019.gz", "isd-lite"),
        ("isd-lite/725090-14739-2020", "isd-lite"),
        ("global-hourly", "global-hourly"),
        ("global-hourly/72509014739.csv", "global-hourly"),
        ("gsod", "gsod"),
        ("gsod/01001099999.csv", "gsod"),
        ("csv-long/long.csv", "csv-long"),
    ],
)
def test_detect_format(path, fmt):
    assert detect_format(FIX / path) == fmt


def test_open_dataset_equals_direct_reader():
    a = open_dataset(FIX / "isd-lite")
    b = read_isd_lite(FIX / "isd-lite", history=FIX / "isd-lite" / "isd-history.csv")
    np.testing.assert_array_equal(a.temperature.values, b.temperature.values)
    g = open_dataset(FIX / "gsod" / "01001099999.csv")
    assert g.sizes["station"] == 1


def test_open_dataset_gzipped_csv(tmp_path):
    p = tmp_path / "72509014739.csv.gz"
    p.write_bytes(gzip.compress((FIX / "global-hourly" / "72509014739.csv").read_bytes()))
    ds = open_dataset(p)
    np.testing.assert_allclose(series(ds, "temperature", "725090-14739"), [3.9, 3.3, 2.5, 2.2], atol=1e-6)


def test_open_dataset_unknown_and_station_list(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello world\n")
    with pytest.raises(ReaderError, match=r"notes.txt, line 1: unknown format"):
        open_dataset(p)
    with pytest.raises(ReaderError, match="isd-history.csv station list, not data"):
        open_dataset(FIX / "isd-lite" / "isd-history.csv")
    with pytest.raises(FileNotFoundError):
        open_dataset(tmp_path / "absent.nc")


@pytest.mark.parametrize("path", ["isd-lite", "global-hourly", "gsod", "csv-long/long.csv"])
def test_dataset_samples_open(path):
    """The user-facing samples in datasets/samples stay valid real-format files."""
    ds = open_dataset(FIX.parent.parent / "datasets" / "samples" / path)
    validate(ds)
    assert ds.sizes["station"] >= 1 and np.isfinite(ds.temperature.values).any()
