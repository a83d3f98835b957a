"""Open variables: any float (time, station) variable with units is data; the NCEI readers expose what their formats
carry (exact values read from small files written here: sentinels -> NaN, scale factors, unit conversions by the
textbook formulas, the shared plausibility bounds); --var / Forecaster(variable=...) take any data variable and its
units flow into the forecast file and the benchmark table."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from click.testing import CliRunner

from urlk_forecast.cli import cli
from urlk_forecast.data.plausibility import ImplausibleValuesWarning
from urlk_forecast.data.readers import (
    read_csv_long,
    read_global_hourly,
    read_gsod,
    read_isd_lite,
    read_netcdf,
    write_netcdf,
)
from urlk_forecast.data.schema import SchemaError, make_dataset, validate
from urlk_forecast.data.synthetic import synthetic_global

TINY = ["--model-kw", "d_model=32", "--model-kw", "dims=[8,16,32,64]", "--model-kw", "node_size=4", "--threads", "1"]


def _isd_line(hour: int, *fields: int) -> str:
    """One fixed-width ISD-Lite record of 2020-01-01 ``hour``: 4+3+3+3 date columns, then 8 fields of 6."""
    return f"2020{1:3d}{1:3d}{hour:3d}" + "".join(f"{v:6d}" for v in fields) + "\n"


def test_isd_lite_reads_every_field_with_its_scale_and_sentinels(tmp_path: Path) -> None:
    #              temp  dew   slp  dir  wspd sky  p1h  p6h
    rows = [_isd_line(0, 39, -33, 10132, 250, 46, 2, -9999, -9999),
            _isd_line(1, 10, 20, 8000, 360, 0, 8, -1, 15),       # dew > temp; slp 800.0 hPa; trace 1-h precipitation
            _isd_line(2, -9999, -9999, -9999, -9999, -9999, 9, 3, -1),  # all missing; sky 9 "obscured"
            _isd_line(3, 255, 101, 9999, 0, 123, 10, 0, 254)]    # sky 10 "partial obscuration"; slp 999.9 hPa
    (tmp_path / "725090-14739-2020").write_text("".join(rows))
    with pytest.warns(ImplausibleValuesWarning) as caught:
        ds = read_isd_lite(tmp_path / "725090-14739-2020", history=False, missing_coords="nan")
    message = " ".join(str(w.message) for w in caught)
    assert re.search(r"1 slp value\(s\) outside the plausible range \[850, 1090\] hPa set to NaN "
                     r"\(first on line 2", message)
    assert re.search(r"1 dew_point value\(s\) above air_temp \+ 0\.5 set to NaN "
                     r"\(first on line 2: 2 > 1 degC\)", message)
    v = {k: ds[k].values[:, 0] for k in ds.data_vars}
    nan = np.nan
    np.testing.assert_allclose(v["temperature"], [3.9, 1.0, nan, 25.5], atol=1e-6)
    np.testing.assert_allclose(v["dew_point"], [-3.3, nan, nan, 10.1], atol=1e-6)
    np.testing.assert_allclose(v["sea_level_pressure"], [1013.2, nan, nan, 999.9], atol=1e-4)
    np.testing.assert_allclose(v["wind_direction"], [250, 360, nan, 0])
    np.testing.assert_allclose(v["wind_speed"], [4.6, 0.0, nan, 12.3], atol=1e-6)
    np.testing.assert_allclose(v["sky_cover"], [2, 8, nan, nan])
    np.testing.assert_allclose(v["precipitation_1h"], [nan, 0.0, 0.3, 0.0], atol=1e-6)
    np.testing.assert_allclose(v["precipitation_6h"], [nan, 1.5, 0.0, 25.4], atol=1e-6)
    assert ds["sea_level_pressure"].attrs["units"] == "hPa" and ds["sky_cover"].attrs["units"] == "oktas"
    assert "trace" in ds["precipitation_1h"].attrs["comment"]
    assert ds["dew_point"].attrs["standard_name"] == "dew_point_temperature"


def test_isd_lite_leaves_out_a_variable_no_record_reports(tmp_path: Path) -> None:
    (tmp_path / "725090-14739-2020").write_text(_isd_line(0, 39, -33, 10132, 250, 46, 2, -9999, -9999)
                                                + _isd_line(1, 40, -30, 10130, 250, 40, 3, -9999, -9999))
    ds = read_isd_lite(tmp_path / "725090-14739-2020", history=False, missing_coords="nan")
    assert list(ds.data_vars) == ["temperature", "dew_point", "sea_level_pressure", "wind_direction", "wind_speed",
                                  "sky_cover"]


_GH_HEADER = ('"STATION","DATE","SOURCE","LATITUDE","LONGITUDE","ELEVATION","NAME","REPORT_TYPE","CALL_SIGN",'
              '"QUALITY_CONTROL","WND","CIG","VIS","TMP","DEW","SLP"\n')


def _gh(date: str, tmp: str, dew: str, slp: str) -> str:
    return (f'"72509014739","{date}","7","42.36","-71.01","3.7","BOSTON","FM-15","KBOS ","V030","250,1,N,0046,1",'
            f'"22000,1,9,N","016093,1,9,9","{tmp}","{dew}","{slp}"\n')


def test_global_hourly_reads_dew_point_and_sea_level_pressure(tmp_path: Path) -> None:
    text = _GH_HEADER + "".join([
        _gh("2020-01-01T00:00:00", "+0039,1", "-0033,1", "10132,1"),
        _gh("2020-01-01T01:00:00", "+0050,1", "+9999,9", "99999,9"),   # missing codes
        _gh("2020-01-01T02:00:00", "+0044,1", "-0021,3", "10140,7"),   # QC 3 / 7: erroneous
        _gh("2020-01-01T03:00:00", "+0061,1", "+0012,1", "09998,1"),   # 999.8 hPa
    ])
    (tmp_path / "72509014739.csv").write_text(text)
    ds = read_global_hourly(tmp_path / "72509014739.csv")
    assert {"dew_point", "sea_level_pressure"} <= set(ds.data_vars)
    np.testing.assert_allclose(ds["dew_point"].values[:, 0], [-3.3, np.nan, np.nan, 1.2], atol=1e-6)
    np.testing.assert_allclose(ds["sea_level_pressure"].values[:, 0], [1013.2, np.nan, np.nan, 999.8], atol=1e-4)
    np.testing.assert_allclose(ds["temperature"].values[:, 0], [3.9, 5.0, 4.4, 6.1], atol=1e-6)


_GSOD_HEADER = ('"STATION","DATE","LATITUDE","LONGITUDE","ELEVATION","NAME","TEMP","TEMP_ATTRIBUTES","DEWP",'
                '"DEWP_ATTRIBUTES","SLP","SLP_ATTRIBUTES","WDSP","WDSP_ATTRIBUTES","MAX","MAX_ATTRIBUTES","MIN",'
                '"MIN_ATTRIBUTES","PRCP","PRCP_ATTRIBUTES"\n')


def _gsod(date: str, temp: str, dewp: str, slp: str, wdsp: str, mx: str, mn: str, prcp: str, flag: str) -> str:
    return (f'"72509014739","{date}","42.36","-71.01","3.7","BOSTON","{temp}"," 24","{dewp}"," 24","{slp}"," 24",'
            f'"{wdsp}"," 24","{mx}","*","{mn}","*","{prcp}","{flag}"\n')


def test_gsod_reads_max_min_dew_point_pressure_and_precipitation(tmp_path: Path) -> None:
    text = _GSOD_HEADER + "".join([
        _gsod("2020-01-01", "41.0", "25.3", "1015.2", "8.0", "48.0", "35.1", "0.50", "G"),
        _gsod("2020-01-02", "9999.9", "9999.9", "9999.9", "999.9", "9999.9", "9999.9", "99.99", ""),  # sentinels
        _gsod("2020-01-03", "32.0", "14.0", "1000.0", "10.0", "212.0", "-40.0", "0.00", "I"),  # I: nothing reported
        _gsod("2020-01-04", "50.0", "30.0", "1020.5", "0.0", "59.0", "41.0", "0.00", "H"),     # H: incomplete
        _gsod("2020-01-05", "50.0", "30.0", "1020.5", "0.0", "59.0", "41.0", "1.25", "D"),
    ])
    (tmp_path / "72509014739.csv").write_text(text)
    with pytest.warns(ImplausibleValuesWarning, match=r"1 MAX value\(s\) outside the plausible range \[-90, 60\] "
                                                       r"degC set to NaN \(first on line 4: 212 degF\)"):
        ds = read_gsod(tmp_path / "72509014739.csv")

    def c(f: float) -> float:  # the textbook conversion
        return (f - 32.0) * 5.0 / 9.0

    v = {k: ds[k].values[:, 0] for k in ds.data_vars}
    nan = np.nan
    np.testing.assert_allclose(v["temperature"], [c(41), nan, 0.0, c(50), c(50)], atol=1e-5)
    np.testing.assert_allclose(v["dew_point"], [c(25.3), nan, c(14), c(30), c(30)], atol=1e-5)
    np.testing.assert_allclose(v["temperature_max"], [c(48), nan, nan, c(59), c(59)], atol=1e-5)
    np.testing.assert_allclose(v["temperature_min"], [c(35.1), nan, -40.0, 5.0, 5.0], atol=1e-5)
    np.testing.assert_allclose(v["sea_level_pressure"], [1015.2, nan, 1000.0, 1020.5, 1020.5], atol=1e-4)
    np.testing.assert_allclose(v["precipitation_24h"], [12.7, nan, nan, nan, 31.75], atol=1e-5)
    np.testing.assert_allclose(v["wind_speed"], [8 * 1852 / 3600, nan, 10 * 1852 / 3600, 0, 0], atol=1e-5)
    assert ds["precipitation_24h"].attrs["units"] == "mm" and ds["temperature_max"].attrs["units"] == "degC"


def test_schema_takes_any_float_variable_with_units() -> None:
    t = pd.date_range("2021-01-01", periods=4, freq="h")
    load = np.arange(8, dtype=np.float32).reshape(4, 2)
    ds = make_dataset(t, ["a", "b"], [1, 2], [3, 4], var_attrs={"load": {"units": "MW"}}, load=load)
    assert validate(ds, variables=["load"])["load"].attrs == {"long_name": "load", "units": "MW"}
    with pytest.raises(SchemaError, match=r"variable 'flow' is not in the variable registry .*its units must be given"):
        make_dataset(t, ["a", "b"], [1, 2], [3, 4], flow=load)
    with pytest.raises(SchemaError, match=r"variable 'load' has no 'units' attribute; every data variable needs one"):
        validate(ds.assign(load=ds["load"].assign_attrs(units="")))
    with pytest.raises(SchemaError, match=r"variable 'load' must be floating point"):
        validate(ds.assign(load=ds["load"].astype(np.int32)))
    with pytest.raises(SchemaError, match=r"variable 'dew_point' is in 'K'; convert to 'degC'"):
        validate(ds.assign(dew_point=ds["load"].assign_attrs(units="K")))
    with pytest.raises(SchemaError, match=r"missing variable 'humidity'; dataset has \['load'\]"):
        validate(ds, variables=["humidity"])


def _two_variable_file(path: Path) -> None:
    """Synthetic temperature plus a ``load`` in MW (not a registry variable) with a daily cycle."""
    ds = synthetic_global(stations=6, hours=24 * 25, seed=3, variables=("temperature",))
    h = np.arange(ds.sizes["time"])
    load = 50 + 10 * np.sin(2 * np.pi * h / 24)[:, None] + np.arange(6)[None, :]
    ds["load"] = (("time", "station"), load.astype(np.float32), {"units": "MW", "long_name": "electric load"})
    write_netcdf(ds, path)


def test_any_data_variable_trains_predicts_and_benchmarks_with_its_units(tmp_path: Path) -> None:
    _two_variable_file(tmp_path / "d.nc")
    back = read_netcdf(tmp_path / "d.nc")
    assert back["load"].attrs["units"] == "MW"
    runs, run = tmp_path / "runs", tmp_path / "runs" / "r"
    env = {"URLK_RUNS_DIR": str(runs), "URLK_DWCONV": "torch"}
    bad = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "d.nc"), "--var", "humidity", *TINY,
                                   "--max-steps", "1", "--out", str(run)], env=env)
    assert bad.exit_code == 1 and "the data has no 'humidity'; available: temperature, load" in bad.output
    assert not run.exists()
    res = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "d.nc"), "--var", "load", *TINY, "--max-steps",
                                   "2", "--eval-windows", "3", "--out", str(run)], env=env)
    assert res.exit_code == 0, res.output
    assert "load [MW]" in res.output
    res = CliRunner().invoke(cli, ["predict", "--run", str(run), "--out", str(tmp_path / "f.csv")], env=env)
    assert res.exit_code == 0, res.output
    fc = pd.read_csv(tmp_path / "f.csv")
    assert (fc["units"] == "MW").all() and np.isfinite(fc["load"]).all()
    res = CliRunner().invoke(cli, ["predict", "--run", str(run), "--out", str(tmp_path / "f.nc")], env=env)
    assert res.exit_code == 0, res.output
    with xr.open_dataset(tmp_path / "f.nc") as f:
        assert f["load"].attrs["units"] == "MW" and f["load"].attrs["long_name"] == "forecast electric load"
    res = CliRunner().invoke(cli, ["benchmark", "--data", str(tmp_path / "d.nc"), "--var", "load", "--baselines",
                                   "persistence,seasonal_naive", "--max-windows", "3", "--quiet",
                                   "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "# Baseline comparison: load (MW)" in (tmp_path / "b" / "benchmark_load.md").read_text()
    res = CliRunner().invoke(cli, ["benchmark", "--data", str(tmp_path / "d.nc"), "--var", "humidity",
                                   "--out", str(tmp_path / "b2")])
    assert res.exit_code == 1 and "the data has no variable 'humidity'; its variables are: temperature, load" \
        in res.output


def test_csv_long_reads_registry_variable_columns(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("station,time,lat,lon,temperature,dew_point,sea_level_pressure,humidity\n"
                                    "A,2020-01-01T00:00,1,2,50.0,41.0,1013.2,80\n"
                                    "A,2020-01-01T01:00,1,2,59.0,68.0,29.92,81\n")
    with pytest.warns(UserWarning) as caught:
        ds = read_csv_long(tmp_path / "l.csv", units={"temperature": "degF", "dew_point": "degF"})
    text = " ".join(str(w.message) for w in caught)
    assert "column(s) ['humidity'] are not read" in text
    assert "1 dew_point value(s) above temperature + 0.5 set to NaN" in text  # 20 degC dew point at 15 degC
    assert "sea_level_pressure value(s) outside the plausible range [850, 1090] hPa" in text  # 29.92: inHg, not hPa
    np.testing.assert_allclose(ds["dew_point"].values[:, 0], [5.0, np.nan], atol=1e-5)
    np.testing.assert_allclose(ds["sea_level_pressure"].values[:, 0], [1013.2, np.nan], atol=1e-4)
    assert ds["dew_point"].attrs["units"] == "degC"


def test_relative_humidity_from_temperature_and_dew_point() -> None:
    """Against Buck's (1981) saturation vapour pressure, an independent formula (agreement within 0.3 %)."""
    from urlk_forecast.data.derived import relative_humidity, with_relative_humidity

    def buck(t: np.ndarray) -> np.ndarray:
        return 6.1121 * np.exp((18.678 - t / 234.5) * (t / (257.14 + t)))

    t = np.array([20.0, 30.0, -10.0, 15.0, np.nan])
    td = np.array([10.0, 25.0, -15.0, 15.0, 5.0])
    got = relative_humidity(t, td)
    ref = 100 * buck(td) / buck(t)
    np.testing.assert_allclose(got[:4], ref[:4], atol=0.3)
    assert got[3] == pytest.approx(100.0) and np.isnan(got[4])
    ds = read_isd_lite_sample()
    out = with_relative_humidity(ds)
    assert out["relative_humidity"].attrs["units"] == "%"
    ok = np.isfinite(ds["temperature"].values) & np.isfinite(ds["dew_point"].values)
    np.testing.assert_allclose(out["relative_humidity"].values[ok],
                               np.minimum(100 * buck(ds["dew_point"].values[ok].astype(np.float64))
                                          / buck(ds["temperature"].values[ok].astype(np.float64)), 100), atol=0.5)


def read_isd_lite_sample() -> xr.Dataset:
    return read_isd_lite(Path(__file__).resolve().parents[1] / "datasets" / "samples" / "isd-lite")
