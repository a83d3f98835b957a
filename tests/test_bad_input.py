"""The bad-input corpus: every way a file can lie, and the exact outcome.

Each case writes a small file in ``tmp_path`` (derived from the fixtures or written out here) and asserts
either an error whose text names the file and the line (or the argument), or that the impossible
values became NaN with one warning naming the count and the first line. Unit conversions are checked
against hand-computed values.
"""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from urlk_forecast.data.plausibility import ImplausibleValuesWarning, apply_bounds, at_lines
from urlk_forecast.data.readers import (
    ReaderError,
    detect_format,
    open_dataset,
    parse_split_bounds,
    read_corrformer_npy,
    read_csv_long,
    read_global_hourly,
    read_gsod,
    read_isd_lite,
    read_netcdf,
    write_netcdf,
)
from urlk_forecast.data.schema import VARIABLES, SchemaError, convert_units, make_dataset
from urlk_forecast.data.units import UnitError, convert, known_units
from urlk_forecast.data.variables import REGISTRY, SCHEMA_VARIABLES

FIX = Path(__file__).parent / "fixtures"
SAMPLES = Path(__file__).parent.parent / "datasets" / "samples"
HDR = "station,time,lat,lon,temperature,wind_speed\n"


def _csv(tmp_path: Path, name: str, temps, winds=None, start: int = 0) -> Path:
    """A long CSV of one station, hourly from 2020-01-01 00:00; data line k is file line k + 2."""
    winds = [1.0] * len(temps) if winds is None else winds
    rows = [f"A,2020-01-01T{start + h:02d}:00,52.1,5.2,{t},{w}\n" for h, (t, w) in enumerate(zip(temps, winds))]
    p = tmp_path / name
    p.write_text(HDR + "".join(rows))
    return p


def _one_warning(record) -> str:
    msgs = [str(w.message) for w in record if issubclass(w.category, ImplausibleValuesWarning)]
    assert len(msgs) == 1, msgs  # ONE warning per file
    return msgs[0]


# ------------------------------------------------------------------------------------------- CSV long
def test_csv_sentinels_become_nan_with_one_warning(tmp_path):
    p = _csv(tmp_path, "s.csv", [1, 2, 9999, -9999, 999.9, 3], [1, 2, 3, 4, 5, 999.9])
    with pytest.warns(ImplausibleValuesWarning) as rec:
        ds = read_csv_long(p)
    msg = _one_warning(rec)
    assert msg.startswith(f"{p}: 3 temperature value(s) equal to a missing-value code (-9999, 999.9, 9999)")
    assert "(first on line 4)" in msg and "1 wind_speed value(s) equal to a missing-value code (999.9)" in msg
    assert "first on line 7" in msg
    np.testing.assert_array_equal(ds.temperature.values[:, 0], [1, 2, np.nan, np.nan, np.nan, 3])
    np.testing.assert_array_equal(ds.wind_speed.values[:, 0], [1, 2, 3, 4, 5, np.nan])


def test_csv_impossible_heat_becomes_nan(tmp_path):
    p = _csv(tmp_path, "hot.csv", [20, 21, 81, 82, 83, 84, 22, 23, 24, 25])
    with pytest.warns(
        ImplausibleValuesWarning,
        match=re.escape(f"{p}: 4 temperature value(s) outside the plausible range [-90, 60] degC set to NaN "
                        "(first on line 4: 81 degC)"),
    ):
        ds = read_csv_long(p)
    assert np.isnan(ds.temperature.values[2:6, 0]).all()
    np.testing.assert_array_equal(ds.temperature.values[[0, 1, 6, 9], 0], [20, 21, 22, 25])


def test_csv_kelvin_labelled_degc_is_an_error_suggesting_kelvin(tmp_path):
    p = _csv(tmp_path, "k.csv", [275.1 + k for k in range(8)])
    with pytest.raises(ReaderError) as exc:
        read_csv_long(p)
    assert str(exc.value) == (
        f"{p}, line 2, field temperature: 8 of 8 temperature values (100 %) are outside the plausible air "
        "temperature range [-90, 60] degC (first on line 2: 275.1 degC); they look like K, not degC: "
        "pass units={'temperature': 'K'}"
    )
    ds = read_csv_long(p, units={"temperature": "kelvin"})
    np.testing.assert_allclose(ds.temperature.values[:, 0], [1.95 + k for k in range(8)], atol=1e-4)


def test_csv_fahrenheit_labelled_degc_is_an_error_then_converted(tmp_path):
    temps = [75.9, 70.0, 65.0, 62.0, 61.0, 66.0, 68.0, 37.5, 50.0, 64.0]
    p = _csv(tmp_path, "f.csv", temps)
    with pytest.raises(ReaderError, match=re.escape(f"{p}, line 2, field temperature: 8 of 10")) as exc:
        read_csv_long(p)
    assert "they look like degF, not degC: pass units={'temperature': 'degF'}" in str(exc.value)
    for spelling in ("degF", "fahrenheit", "°F", "F"):
        ds = read_csv_long(p, units={"temperature": spelling})
        np.testing.assert_allclose(ds.temperature.values[:, 0], [(t - 32) * 5 / 9 for t in temps], atol=1e-5)
    for spelling in ("degC", "celsius", "°C"):  # all accepted; the data is then (mostly) impossible
        with pytest.raises(ReaderError, match="look like degF"):
            read_csv_long(p, units={"temperature": spelling})


def test_csv_wind_in_knots_and_kmh(tmp_path):
    p = _csv(tmp_path, "w.csv", [1, 2, 3], [10, 20, 36])
    ds = read_csv_long(p, units={"wind_speed": "knots"})
    np.testing.assert_allclose(ds.wind_speed.values[:, 0], [5.144444, 10.288889, 18.52], rtol=1e-6)
    ds = read_csv_long(p, units={"wind_speed": "km/h", "temperature": "degC"})
    np.testing.assert_allclose(ds.wind_speed.values[:, 0], [10 / 3.6, 20 / 3.6, 10.0], rtol=1e-6)


@pytest.mark.parametrize(
    ("units", "match"),
    [
        ({"humidity": "percent"}, r"units=\{'humidity': 'percent'\}: 'humidity' is not a variable name \(known "
         r"variables: temperature, wind_speed, dew_point, .*relative_humidity, .*precipitation_24h\); the variables "
         r"read here are temperature, wind_speed"),
        ({"temp": "degF"}, r"units=\{'temp': 'degF'\}: 'temp' is not a variable name"),
        ({"relative_humidity": "%"}, r"units=\{'relative_humidity': '%'\}: this file has no relative_humidity "
         r"column that is read"),
        ({"temperature": "furlongs"}, r"units=\{'temperature': 'furlongs'\}: unknown units 'furlongs'; known "
         r"temperature units: degC, degF, K, .*fahrenheit.*kelvin"),
        ({"temperature": "knots"}, r"units=\{'temperature': 'knots'\}: 'knots' is a speed unit, not a temperature "
         r"unit; known: degC, degF, K"),
    ],
)
def test_csv_bad_units_argument_is_an_error_naming_it(tmp_path, units, match):
    p = _csv(tmp_path, "u.csv", [1, 2, 3])
    with pytest.raises(ReaderError, match=re.escape(str(p)) + ": " + match):
        read_csv_long(p, units=units)
    with pytest.raises(ReaderError, match=match):  # open_dataset passes units= on unchanged
        open_dataset(p, units=units)


def test_csv_wind_units_for_a_file_without_wind(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("station,time,temperature\nA,2020-01-01T00:00,1\n")
    with pytest.raises(ReaderError, match=r"this file has no wind_speed column that is read; the variables read "
                       r"here are temperature"):
        read_csv_long(p, units={"wind_speed": "knots"})


def test_csv_extra_column_is_named_in_a_warning(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text("station,time,lat,lon,temperature,humidity\nA,2020-01-01T00:00,1,2,3,50\n")
    with pytest.warns(UserWarning, match=re.escape(f"{p}: column(s) ['humidity'] are not read")):
        ds = read_csv_long(p)
    assert list(ds.data_vars) == ["temperature"]


@pytest.mark.parametrize(
    ("tail", "match"),
    [
        ("A,2020-01-01T01:00,52.1,5.2,12", r"line 3: the file ends in the middle of this line"),  # 12.3 cut
        ("A,2020-01-01T01:0", r"line 3: the file ends in the middle of this line"),  # cut mid-timestamp
        ("A,2020-01-01T01:0\n", r"line 3: expected 6 fields as in the header, found 2 \(truncated line\?\)"),
        ("A,2020-01-01T01:00,52.1,5.2\n", r"line 3: expected 6 fields as in the header, found 4"),
    ],
)
def test_csv_truncated_last_line_is_an_error(tmp_path, tail, match):
    p = tmp_path / "cut.csv"
    p.write_text(HDR + "A,2020-01-01T00:00,52.1,5.2,12.3,1\n" + tail)
    with pytest.raises(ReaderError, match=re.escape(str(p)) + ", " + match):
        read_csv_long(p)


@pytest.mark.parametrize("bad", ["2020-01-01T01:0", "2020-01-01T01", "2020-01", "2020-01-01T01:00:0"])
def test_csv_incomplete_timestamp_is_an_error(tmp_path, bad):
    p = tmp_path / "t.csv"
    p.write_text(f"station,time,temperature\nA,2020-01-01T00:00,1\nA,{bad},2\n")
    with pytest.raises(ReaderError, match=re.escape(f"{p}, line 3, field time: '{bad}' is not an ISO 8601 time")):
        read_csv_long(p)


# ------------------------------------------------------------------------------------------------ GSOD
def test_gsod_with_temp_renamed_is_detected_and_named(tmp_path):
    text = (FIX / "gsod" / "01001099999.csv").read_text()
    for new in ("temperature", "T"):
        p = tmp_path / f"g_{new}.csv"
        p.write_text(text.replace('"TEMP",', f'"{new}",', 1))
        assert detect_format(p) == "gsod"  # never "csv-long"
        with pytest.raises(ReaderError, match=re.escape(f"{p}, line 1: GSOD CSV without its mandatory column(s) "
                                                        "['TEMP'] (renamed or removed?)")):
            open_dataset(p)


def test_gsod_impossible_values_and_units_override(tmp_path):
    text = (FIX / "gsod" / "01001099999.csv").read_text()
    p = tmp_path / "g.csv"
    p.write_text(text.replace('"   32.0"', '"  999.0"'))  # degF 999 = 537 degC on line 3
    with pytest.warns(ImplausibleValuesWarning, match=re.escape(f"{p}: 1 TEMP value(s) equal to a missing-value "
                                                                "code (999) set to NaN (first on line 3)")):
        ds = read_gsod(p)
    assert np.isnan(ds.temperature.values[1, 0]) and ds.temperature.values[0, 0] == pytest.approx(-5.0)
    ds = read_gsod(FIX / "gsod" / "01001099999.csv", units={"temperature": "degC"})  # TEMP as given
    assert ds.temperature.values[0, 0] == pytest.approx(23.0)
    with pytest.raises(ReaderError, match=r"'TEMP' is not a variable name"):
        read_gsod(FIX / "gsod" / "01001099999.csv", units={"TEMP": "degC"})


def test_gsod_cut_last_line(tmp_path):
    text = (FIX / "gsod" / "01001099999.csv").read_text()
    p = tmp_path / "g.csv"
    p.write_text(text.rstrip("\n")[:-30])
    with pytest.raises(ReaderError, match=re.escape(f"{p}, line 5:")):
        read_gsod(p)


# --------------------------------------------------------------------------------------- Global Hourly
def test_global_hourly_with_tmp_renamed_is_an_error(tmp_path):
    text = (FIX / "global-hourly" / "72509014739.csv").read_text()
    p = tmp_path / "72509014739.csv"
    p.write_text(text.replace('"TMP",', '"T",', 1))
    assert detect_format(p) == "global-hourly"
    with pytest.raises(ReaderError, match=re.escape(f"{p}, line 1: Global Hourly CSV without its mandatory TMP "
                                                    "column (renamed or removed?)")):
        open_dataset(p)


def test_global_hourly_cut_inside_last_field(tmp_path):
    text = (FIX / "global-hourly" / "72509014739.csv").read_text()
    p = tmp_path / "72509014739.csv"
    p.write_text(text[:-10])  # inside the last (quoted) field of the last line
    n = text.count("\n")
    with pytest.raises(ReaderError, match=re.escape(f"{p}, line {n}: the file ends in the middle of this line")):
        read_global_hourly(p)


def test_global_hourly_impossible_temperature(tmp_path):
    text = (FIX / "global-hourly" / "72509014739.csv").read_text()
    p = tmp_path / "72509014739.csv"
    p.write_text(text.replace('"+0039,1"', '"+0950,1"', 1))  # 95.0 degC on line 2
    msg = f"{p}: 1 TMP value(s) outside the plausible range [-90, 60] degC set to NaN (first on line 2: 95 degC)"
    with pytest.warns(ImplausibleValuesWarning, match=re.escape(msg)):
        ds = read_global_hourly(p)
    assert ds.temperature.values[0, 0] == pytest.approx(5.0)  # 01:00 now from the 01:20 report (+0050)


# ----------------------------------------------------------------------------------------------- ISD-Lite
def _isd(y, m, d, h, t, ws):
    return f"{y:4d} {m:02d} {d:02d} {h:02d}{t:6d}{-9999:6d}{-9999:6d}{0:6d}{ws:6d}{0:6d}{-9999:6d}{-9999:6d}\n"


def test_isd_lite_record_of_another_year_is_an_error(tmp_path):
    good = (FIX / "isd-lite" / "725090-14739-2020").read_text()
    p = tmp_path / "725090-14739-2020"
    p.write_text(good + _isd(2021, 1, 1, 7, 10, 10))
    n = good.count("\n") + 1
    with pytest.raises(ReaderError, match=re.escape(f"{p}, line {n}, field year: record for 2021-01-01 07:00:00 is "
                                                    "not in 2020, the year in the file name")):
        read_isd_lite(p, history=False)
    p.write_text(_isd(2019, 12, 31, 23, 10, 10) + good)
    with pytest.raises(ReaderError, match=re.escape(f"{p}, line 1, field year: record for 2019-12-31 23:00:00")):
        read_isd_lite(p, history=False)
    p.write_text(good + _isd(2021, 1, 1, 0, 10, 10))  # the last report rounded up to next year's first hour: fine
    ds = read_isd_lite(p, history=False)
    assert pd.Timestamp(ds.time.values[-1]) == pd.Timestamp("2021-01-01 00:00")
    assert ds.temperature.values[-1, 0] == pytest.approx(1.0)


def test_isd_lite_impossible_values_one_warning_per_file(tmp_path):
    p = tmp_path / "725090-14739-2020"
    p.write_text(_isd(2020, 1, 1, 0, 20, 10) + _isd(2020, 1, 1, 1, 999, 1200) + _isd(2020, 1, 1, 2, 30, 9999)
                 + _isd(2020, 1, 1, 3, 40, 20))
    with pytest.warns(ImplausibleValuesWarning) as rec:
        ds = read_isd_lite(p, history=False)
    assert _one_warning(rec) == (
        f"{p}: 1 air_temp value(s) outside the plausible range [-90, 60] degC set to NaN (first on line 2: 99.9 degC); "
        "1 wind_speed value(s) outside the plausible range [0, 115] m s-1 set to NaN (first on line 2: 120 m s-1) and "
        "1 wind_speed value(s) equal to a missing-value code (999.9) set to NaN (first on line 3)"
    )
    np.testing.assert_allclose(ds.temperature.values[:, 0], [2.0, np.nan, 3.0, 4.0])
    np.testing.assert_allclose(ds.wind_speed.values[:, 0], [1.0, np.nan, np.nan, 2.0])


def test_isd_lite_cut_last_line(tmp_path):
    good = (FIX / "isd-lite" / "725090-14739-2020").read_text()
    p = tmp_path / "725090-14739-2020"
    p.write_text(good.rstrip("\n")[:-2])  # cut inside the last field: still 12 integer fields
    n = good.count("\n")
    with pytest.raises(ReaderError, match=re.escape(f"{p}, line {n}: the file ends in the middle of this line")):
        read_isd_lite(p, history=False)


def test_isd_lite_directory_with_csvs_is_an_error_naming_them(tmp_path):
    shutil.copy(FIX / "isd-lite" / "725090-14739-2020", tmp_path)
    for k in range(3):
        shutil.copy(FIX / "csv-long" / "long.csv", tmp_path / f"c{k}.csv")
    expected = (f"{tmp_path}: directory mixes file formats (csv-long: c0.csv, c1.csv, c2.csv; isd-lite: "
                "725090-14739-2020); put each format in its own directory")
    with pytest.raises(ReaderError) as exc:
        open_dataset(tmp_path)
    assert str(exc.value) == expected
    with pytest.warns(UserWarning, match=re.escape(f"{tmp_path}: 3 file(s) that are not ISD-Lite")):
        read_isd_lite(tmp_path, history=False)  # explicit reader: reads ISD-Lite, names what it skips


def test_directory_of_netcdf_and_npy_is_mixed(tmp_path):
    np.save(tmp_path / "temp_global_hourly_train.npy", np.zeros((2, 2)))
    (tmp_path / "x.nc").write_bytes(b"CDF\x01")
    with pytest.raises(ReaderError, match=r"directory mixes file formats \(corrformer: temp_global_hourly_train.npy; "
                       r"netcdf: x.nc\)"):
        detect_format(tmp_path)


# ------------------------------------------------------------------------------------------- netCDF
def _schema_file(path: Path, temp: np.ndarray, units: str = "degC", **extra) -> Path:
    ds = make_dataset(pd.date_range("2020-01-01", periods=temp.shape[0], freq="h"), ["A", "B"], [1, 2], [3, 4],
                      temperature=temp, wind_speed=np.ones_like(temp))
    ds["temperature"].attrs["units"] = units
    for k, v in extra.items():
        ds[k] = (("time", "station"), v)
    ds.to_netcdf(path)
    return path


def test_netcdf_sentinels_become_nan(tmp_path):
    p = _schema_file(tmp_path / "x.nc", np.array([[1, 2], [9999, 3], [-9999, 4], [5, 6]], np.float32))
    with pytest.warns(ImplausibleValuesWarning, match=re.escape(f"{p}: 2 temperature value(s) equal to a missing-value"
                                                                " code (-9999, 9999) set to NaN (first at "
                                                                "2020-01-01T01:00:00, station A)")):
        ds = read_netcdf(p)
    np.testing.assert_array_equal(ds.temperature.values[:, 0], [1, np.nan, np.nan, 5])
    np.testing.assert_array_equal(ds.temperature.values[:, 1], [2, 3, 4, 6])


def test_netcdf_units_argument_and_wrong_units(tmp_path):
    temp_k = np.array([[274.15, 275.15], [276.15, 277.15]], np.float32)
    p = _schema_file(tmp_path / "k.nc", temp_k)  # Kelvin numbers labelled degC
    with pytest.raises(ReaderError, match=re.escape(f"{p}, field temperature: 4 of 4 temperature values (100 %)")
                       + ".*they look like K, not degC"):
        read_netcdf(p)
    ds = read_netcdf(p, units={"temperature": "K"})
    np.testing.assert_allclose(ds.temperature.values, temp_k - 273.15, atol=1e-4)
    with pytest.raises(ReaderError, match=r"'humidity' is not a variable name"):
        read_netcdf(p, units={"humidity": "%"})
    q = _schema_file(tmp_path / "nounits.nc", temp_k, units="K")
    with pytest.raises(ReaderError, match=r"unknown units 'furlongs'"):
        read_netcdf(q, units={"temperature": "furlongs"})


def test_netcdf_extra_variable_is_named(tmp_path):
    t = np.array([[1, 2], [3, 4]], np.float32)
    p = _schema_file(tmp_path / "rh.nc", t, rh=t * 0 + 50)
    with pytest.warns(UserWarning, match=re.escape(f"{p}: variable(s) ['rh'] are not read")):
        ds = read_netcdf(p)
    assert sorted(ds.data_vars) == ["temperature", "wind_speed"]


# ---------------------------------------------------------------------------------------- Corrformer
def test_corrformer_raw_99990_becomes_nan(tmp_path):
    times = pd.date_range("2019-01-01 01:00", periods=12, freq="h")
    raw = np.full((12, 3, 1), 123.0)
    raw[4, 1, 0] = 99990.0
    raw[7, 2, 0] = -99990.0
    for split, sl in (("train", slice(0, 8)), ("val", slice(8, 10)), ("test", slice(10, 12))):
        np.save(tmp_path / f"data_time_{split}.npy", np.array([str(t) for t in times[sl]], dtype=object))
        np.save(tmp_path / f"temp_global_hourly_{split}.npy", raw[sl])
    f = tmp_path / "temp_global_hourly_train.npy"
    with pytest.warns(ImplausibleValuesWarning, match=re.escape(f"{f}: 2 temperature value(s) equal to a missing-value"
                                                                " code (-9999, 9999) set to NaN (first at "
                                                                "2019-01-01T05:00:00, station S0001)")):
        ds = read_corrformer_npy(tmp_path)
    t = ds.temperature.values
    assert np.isnan(t[4, 1]) and np.isnan(t[7, 2]) and np.isfinite(t).sum() == 12 * 3 - 2
    assert t[0, 0] == pytest.approx(12.3)


# ------------------------------------------------------------------------------- apply_bounds directly
def test_dew_point_above_temperature_becomes_nan():
    temp = np.array([10.0, 12.0, 5.0, -3.0])
    dew = np.array([8.0, 12.4, 7.0, -3.0])
    with pytest.warns(ImplausibleValuesWarning, match=re.escape("f.csv: 1 DEWP value(s) above TEMP + 0.5 set to NaN "
                                                                "(first on line 4: 7 > 5 degC)")):
        out = apply_bounds({"temperature": temp, "dew_point": dew}, "f.csv", fields={"dew_point": "DEWP",
                           "temperature": "TEMP"}, locate=at_lines([2, 3, 4, 5]))
    np.testing.assert_array_equal(out["dew_point"], np.array([8.0, 12.4, np.nan, -3.0], np.float32))
    assert out["dew_point"].dtype == np.float32


@pytest.mark.parametrize(
    ("var", "values", "unit", "guess"),
    [
        ("sea_level_pressure", [101325.0, 100900.0, 102000.0], "hPa", "Pa"),
        ("sea_level_pressure", [29.92, 30.1, 29.5], "hPa", "inHg"),
        ("temperature", [80.0, 95.0, 101.0], "degC", "degF"),
    ],
)
def test_mostly_out_of_range_guesses_the_unit(var, values, unit, guess):
    with pytest.raises(ReaderError, match=re.escape(f"they look like {guess}, not {unit}: pass units={{{var!r}: "
                                                    f"{guess!r}}}")):
        apply_bounds({var: np.array(values)}, "x.csv", units={var: unit})


def test_other_registry_variables_ranges():
    with pytest.warns(ImplausibleValuesWarning, match=r"1 wind_direction value\(s\) outside the plausible range "
                      r"\[0, 360\] degree.*; 1 relative_humidity value\(s\) outside the plausible range \[0, 100\] %"):
        out = apply_bounds(
            {"wind_direction": np.array([10.0, 370.0, 0.0, 360.0]), "relative_humidity": np.array([0, 50, 100, 101.0]),
             "precipitation": np.array([0.0, 0.2, 499.0, 3.0])},
            "y.nc",
        )
    np.testing.assert_array_equal(out["wind_direction"], [10, np.nan, 0, 360])
    np.testing.assert_array_equal(out["relative_humidity"], [0, 50, 100, np.nan])
    np.testing.assert_array_equal(out["precipitation"], np.array([0, 0.2, 499, 3.0], np.float32))


def test_exactly_half_out_of_range_is_a_warning_not_an_error():
    with pytest.warns(ImplausibleValuesWarning, match=r"1 temperature value"):
        out = apply_bounds({"temperature": np.array([99.0, 1.0])}, "x")
    np.testing.assert_array_equal(out["temperature"], [np.nan, 1.0])


# ---------------------------------------------------------------------------------------------- units
@pytest.mark.parametrize(
    ("value", "src", "dst", "expected"),
    [
        (212.0, "degF", "degC", 100.0),
        (32.0, "fahrenheit", "celsius", 0.0),
        (-40.0, "°F", "°C", -40.0),
        (0.0, "K", "degC", -273.15),
        (300.0, "kelvin", "degF", 80.33),
        (10.0, "knots", "m/s", 5.1444),
        (10.0, "kt", "m s-1", 5.1444),
        (36.0, "km/h", "m/s", 10.0),
        (10.0, "mph", "m/s", 4.4704),
        (29.92, "inHg", "hPa", 1013.2),
        (101325.0, "Pa", "mbar", 1013.25),
        (1.0, "in", "mm", 25.4),
        (1013.25, "hPa", "inHg", 29.921),
        (0.5, "1", "percent", 50.0),
    ],
)
def test_convert_against_hand_computed_values(value, src, dst, expected):
    assert float(convert(value, src, dst)) == pytest.approx(expected, rel=1e-4, abs=1e-9)


def test_convert_errors_name_the_known_units():
    with pytest.raises(UnitError, match=r"unknown units 'parsec'; known units: degC, degF, K, m s-1"):
        convert(1.0, "parsec", "degC")
    with pytest.raises(UnitError, match=r"'degC' is a temperature unit, not a speed unit; known: m s-1, km/h, mph"):
        convert(1.0, "knots", "degC")
    assert "fahrenheit" in known_units("temperature") and "kelvin" in known_units("temperature")
    with pytest.raises(SchemaError, match=r"unknown units 'parsec'"):
        convert_units(np.array([1.0]), "parsec", "wind_speed")


def test_schema_variables_derive_from_the_registry():
    assert VARIABLES == {
        "temperature": {"units": "degC", "standard_name": "air_temperature", "long_name": "air temperature"},
        "wind_speed": {"units": "m s-1", "standard_name": "wind_speed", "long_name": "wind speed"},
    }
    assert tuple(VARIABLES) == SCHEMA_VARIABLES
    assert (REGISTRY["temperature"].valid_min, REGISTRY["temperature"].valid_max) == (-90.0, 60.0)
    assert (REGISTRY["wind_speed"].valid_min, REGISTRY["wind_speed"].valid_max) == (0.0, 115.0)
    assert (REGISTRY["sea_level_pressure"].valid_min, REGISTRY["sea_level_pressure"].valid_max) == (850.0, 1090.0)


def test_one_split_bounds_parser_one_exception_type():
    from urlk_forecast.data import windows
    from urlk_forecast.data.formats import corrformer

    assert windows._parse_split_bounds is parse_split_bounds is corrformer.parse_split_bounds
    with pytest.raises(SchemaError, match=r"names split 'train' twice"):
        parse_split_bounds("train:2020-01-01/2020-01-02;train:2020-01-03/2020-01-04;val:a/b;test:c/d")
    with pytest.raises(ValueError, match=r"lacks \['val', 'test'\]"):  # SchemaError is a ValueError
        parse_split_bounds("train:2020-01-01/2020-01-02")


# ----------------------------------------------------------------------- good input stays quiet
@pytest.mark.parametrize("path", ["isd-lite", "global-hourly", "gsod", "csv-long/long.csv"])
def test_samples_read_without_any_warning(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = open_dataset(SAMPLES / path)
    assert np.isfinite(ds.temperature.values).any()


def test_synthetic_round_trip_without_plausibility_warning(tmp_path):
    from urlk_forecast.data.synthetic import synthetic_global

    ds = synthetic_global(stations=300, hours=24 * 60, seed=1)
    for v in SCHEMA_VARIABLES:
        spec = REGISTRY[v]
        a = ds[v].values
        assert np.nanmin(a) >= spec.valid_min and np.nanmax(a) <= spec.valid_max
    write_netcdf(ds, tmp_path / "s.nc")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = read_netcdf(tmp_path / "s.nc")
    np.testing.assert_array_equal(back.temperature.values, ds.temperature.values)
