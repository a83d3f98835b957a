"""``urlk-forecast data convert`` and ``data info`` (in-process via CliRunner, and one real process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from click.testing import CliRunner

from urlk_forecast.cli.data import _parse_years, data
from urlk_forecast.data.readers import read_gsod, read_isd_lite, read_netcdf, write_netcdf
from urlk_forecast.data.schema import make_dataset

FIX = Path(__file__).parent / "fixtures"


def run(*args: str):
    return CliRunner().invoke(data, list(args), catch_exceptions=False)


def test_convert_isd_lite_directory_in_a_real_process(tmp_path):
    out = tmp_path / "isd.nc"
    r = subprocess.run(
        [sys.executable, "-m", "urlk_forecast.cli", "data", "convert", str(FIX / "isd-lite"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}: 2 stations x 11 times" in r.stdout and "every 1h) from isd-lite" in r.stdout
    xr.testing.assert_identical(read_netcdf(out), read_isd_lite(FIX / "isd-lite"))


def test_convert_several_files_and_format_option(tmp_path):
    files = [str(FIX / "gsod" / "01001099999.csv"), str(FIX / "gsod" / "72509014739.csv")]
    r = run("convert", *files, "--out", str(tmp_path / "g.nc"), "--format", "gsod", "--compress", "3")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(
        read_netcdf(tmp_path / "g.nc").temperature.values, read_gsod(files).temperature.values
    )


def test_convert_csv_long_with_units_and_station_file(tmp_path):
    r = run(
        "convert",
        str(FIX / "csv-long" / "values_only.csv"),
        "-o",
        str(tmp_path / "c.nc"),
        "--stations-csv",
        str(FIX / "csv-long" / "stations.csv"),
        "--units",
        "temperature=degF",
    )
    assert r.exit_code == 0, r.output
    ds = read_netcdf(tmp_path / "c.nc")
    assert float(ds.temperature.sel(station="B").values[1]) == pytest.approx(-1.0, abs=1e-5)  # 30.2 F


def test_convert_netcdf_with_name_map(tmp_path):
    src = xr.Dataset(
        {"tas": (("valid_time", "site"), np.array([[273.15, 283.15], [274.15, 284.15]], "f4"), {"units": "K"})},
        coords={
            "valid_time": pd.date_range("2021-01-01", periods=2, freq="h"),
            "site": ["a", "b"],
            "latitude": ("site", [1.0, 2.0]),
            "longitude": ("site", [3.0, 4.0]),
        },
    )
    src.to_netcdf(tmp_path / "cf.nc")
    r = run("convert", str(tmp_path / "cf.nc"), "-o", str(tmp_path / "o.nc"), "--name-map", "tas=temperature",
            "--name-map", "site=station")  # fmt: skip
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(read_netcdf(tmp_path / "o.nc").temperature.values, [[0, 10], [1, 11]], atol=1e-4)
    r = CliRunner().invoke(data, ["convert", str(tmp_path / "cf.nc"), "-o", str(tmp_path / "p.nc"), "--name-map", "x"])
    assert r.exit_code == 2 and "should look like NAME=VALUE" in r.output


def test_convert_corrformer_split(tmp_path):
    rel = tmp_path / "release"
    rel.mkdir()
    times = pd.date_range("2019-01-01 01:00", periods=6, freq="h")
    for split, sl in (("train", slice(0, 3)), ("val", slice(3, 4)), ("test", slice(4, 6))):
        np.save(rel / f"data_time_{split}.npy", np.array([str(t) for t in times[sl]], dtype=object))
        np.save(rel / f"temp_global_hourly_{split}.npy", np.arange(6 * 4, dtype=float).reshape(6, 4, 1)[sl])
    np.save(rel / "stations_sorted.npy", np.zeros((4, 3)))
    r = run("convert", str(rel), "-o", str(tmp_path / "test.nc"), "--split", "test")
    assert r.exit_code == 0, r.output
    ds = read_netcdf(tmp_path / "test.nc")
    np.testing.assert_allclose(ds.temperature.values, np.arange(16, 24).reshape(2, 4) / 10)
    assert ds.attrs["split"] == "test" and ds.attrs["coords_standardised"] == "true"


def test_convert_bad_input_one_line_error_and_no_output(tmp_path):
    bad = tmp_path / "725090-14739-2020"
    bad.write_text((FIX / "isd-lite" / "725090-14739-2020").read_text().replace("   33", "  x33"))
    out = tmp_path / "out" / "bad.nc"
    r = subprocess.run(
        [sys.executable, "-m", "urlk_forecast.cli", "data", "convert", str(bad), "--out", str(out), "--format",
         "isd-lite"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == f"Error: {bad}, line 2, field air_temp: 'x33' is not an integer"
    assert "Traceback" not in r.stderr
    assert not out.exists() and (not out.parent.exists() or not os.listdir(out.parent))
    r = run("convert", str(FIX / "isd-lite" / "isd-history.csv"), "-o", str(tmp_path / "h.nc"))
    assert r.exit_code == 1 and "station list, not data" in r.output and not (tmp_path / "h.nc").exists()
    r = CliRunner().invoke(data, ["convert", str(FIX / "gsod"), str(FIX / "csv-long" / "long.csv"), "-o", "x.nc"])
    assert r.exit_code == 2 and "inputs mix formats" in r.output
    r = CliRunner().invoke(data, ["convert", str(FIX / "gsod"), "-o", "x.nc", "--name-map", "a=b"])
    assert r.exit_code == 2 and "--name-map applies to netcdf input, not gsod" in r.output


def test_info_numbers_match_the_data(tmp_path):
    t = pd.date_range("2020-01-01", periods=10, freq="3h")
    temp = np.arange(30, dtype=np.float32).reshape(10, 3) - 5
    temp[[1, 4, 7], 0] = np.nan
    temp[:, 2] = np.nan
    ds = make_dataset(t, ["a", "b", "c"], [10, 20, 30], [-5, 0, 5], elevation=[1, np.nan, 3], temperature=temp)
    write_netcdf(ds, tmp_path / "d.nc")
    r = run("info", str(tmp_path / "d.nc"), "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["stations"] == 3 and info["time_steps"] == 10 and info["frequency"] == "3h"
    assert info["time_start"] == "2020-01-01T00:00:00" and info["time_end"] == "2020-01-02T03:00:00"
    s = info["variables"]["temperature"]
    finite = temp[np.isfinite(temp)].astype(np.float64)
    assert s["missing_pct"] == pytest.approx(100 * 13 / 30)
    assert (s["min"], s["max"]) == (finite.min(), finite.max())
    assert s["mean"] == pytest.approx(finite.mean()) and s["std"] == pytest.approx(finite.std())
    assert s["stations_all_missing"] == 1
    assert info["coords"]["elevation"] == {"min": 1.0, "max": 3.0, "unknown": 1}
    text = run("info", str(tmp_path / "d.nc")).output
    assert "stations    3" in text and "every 3h" in text and "43.33" in text


def test_info_synthetic_default_stations_50():
    r = run("info", "--synthetic", "--stations", "50")
    assert r.exit_code == 0, r.output
    assert "stations    50" in r.output and "SYNTHETIC" in r.output and "every 1h" in r.output
    assert "(17544 steps" in r.output


def test_info_usage_errors(tmp_path):
    r = CliRunner().invoke(data, ["info"])
    assert r.exit_code == 2 and "give a PATH or --synthetic" in r.output
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01garbage")
    r = CliRunner().invoke(data, ["info", str(tmp_path / "junk.bin")])
    assert r.exit_code == 1 and "junk.bin, line 1: unknown format" in r.output and "Traceback" not in r.output
    assert "pass --format one of ['corrformer', 'csv-long'" in r.output and "format=" not in r.output


def test_library_errors_name_the_flags(tmp_path):
    src = xr.Dataset(
        {"tas": (("valid_time", "site"), np.array([[273.15, 283.15], [274.15, 284.15]], "f4"), {"units": "K"})},
        coords={"valid_time": pd.date_range("2021-01-01", periods=2, freq="h"), "site": ["a", "b"],
                "latitude": ("site", [1.0, 2.0]), "longitude": ("site", [3.0, 4.0])},
    )
    src.to_netcdf(tmp_path / "cf.nc")
    r = CliRunner().invoke(data, ["convert", str(tmp_path / "cf.nc"), "-o", str(tmp_path / "o.nc")])
    assert r.exit_code == 1 and "map the file's name onto it, e.g. --name-map <name>=station" in r.output
    src["tas"].attrs = {}  # without units "tas" is no data variable (with units it is read as it is: open variables)
    src.to_netcdf(tmp_path / "cf_nounits.nc")
    r = CliRunner().invoke(data, ["convert", str(tmp_path / "cf_nounits.nc"), "-o", str(tmp_path / "o.nc"),
                                  "--name-map", "site=station"])
    assert r.exit_code == 1 and "map one, e.g. --name-map t2m=temperature" in r.output
    assert "name_map" not in r.output and not (tmp_path / "o.nc").exists()


def test_years_parsing():
    assert _parse_years(("2019", "2020")) == [2019, 2020]
    assert _parse_years(("2015-2017", "2020,2019")) == [2015, 2016, 2017, 2019, 2020]


def _degf_csv_long(path: Path) -> np.ndarray:
    """A CSV-long file of two stations, temperatures in degF; returns the values (times x stations) in degF."""
    t = pd.date_range("2020-01-01", periods=30, freq="h")
    degf = np.stack([32.0 + np.arange(30) * 1.5, 50.0 - np.arange(30)], axis=1)
    rows = [{"station": s, "time": tt.isoformat(), "temperature": degf[i, j], "lat": 40.0 + j, "lon": -75.0}
            for j, s in enumerate(["A", "B"]) for i, tt in enumerate(t)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return degf


def test_info_units_converts_every_range(tmp_path):
    degf = _degf_csv_long(tmp_path / "f.csv")
    r = run("info", str(tmp_path / "f.csv"), "--units", "temperature=degF", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)["variables"]["temperature"]
    degc = (degf - 32.0) * 5.0 / 9.0  # independent reference: the textbook formula
    assert s["min"] == pytest.approx(degc.min(), abs=1e-4) and s["max"] == pytest.approx(degc.max(), abs=1e-4)
    assert s["mean"] == pytest.approx(degc.mean(), abs=1e-4)
    text = run("info", str(tmp_path / "f.csv"), "--units", "temperature=degF").output
    assert "temperature  degC" in text and f"{degc.max():.2f}" in text


def test_units_errors_are_one_line(tmp_path):
    _degf_csv_long(tmp_path / "f.csv")
    r = CliRunner().invoke(data, ["info", str(tmp_path / "f.csv"), "--units", "humidity=percent"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    line = r.output.strip()
    assert len(line.splitlines()) == 1 and "humidity" in line and "temperature" in line, line
    r = CliRunner().invoke(data, ["info", str(tmp_path / "f.csv"), "--units", "temperature=furlongs"])
    line = r.output.strip()
    assert r.exit_code == 1 and len(line.splitlines()) == 1, line
    assert "furlongs" in line and "degF" in line and "degC" in line and "K" in line
    r = CliRunner().invoke(data, ["info", str(tmp_path / "f.csv"), "--units", "temperature"])
    assert r.exit_code == 2 and "VARIABLE=UNIT" in r.output
    r = CliRunner().invoke(data, ["info", "--synthetic", "--units", "temperature=degF"])
    assert r.exit_code == 2 and "--units applies to a PATH" in r.output


def test_convert_units_on_netcdf_input(tmp_path):
    """--units is no longer CSV-long only: a netCDF in degF converts too."""
    t = pd.date_range("2021-01-01", periods=4, freq="h")
    degf = np.array([[32.0, 50.0], [41.0, 59.0], [95.0, -40.0], [68.0, 77.0]], dtype=np.float32)
    ds = make_dataset(t, ["a", "b"], [10, 20], [-5, 0], temperature=degf)
    ds["temperature"].attrs["units"] = "degC"  # mislabelled source: --units says what it really is
    write_netcdf(ds, tmp_path / "f.nc")
    r = run("convert", str(tmp_path / "f.nc"), "-o", str(tmp_path / "o.nc"), "--units", "temperature=degF")
    assert r.exit_code == 0, r.output
    got = read_netcdf(tmp_path / "o.nc").temperature.values
    np.testing.assert_allclose(got, (degf.astype(np.float64) - 32.0) * 5.0 / 9.0, atol=1e-4)
    assert "--units" in run("convert", "--help").output and "CSV long: VARIABLE" not in run("convert", "--help").output
