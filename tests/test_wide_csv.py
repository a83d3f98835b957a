"""The wide-CSV reader (``date,col1,...,colN``: one series per column) against a pandas recomputation, its bad-input
errors, ``data convert`` to netCDF, and a single series (S = 1) and all seven ETTh1 columns (S = 7) through train,
predict and benchmark (tiny network, a few steps). The files are written here in exactly the ETTh1 layout."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from urlk_forecast.cli import cli
from urlk_forecast.data.readers import ReaderError, detect_format, open_dataset, read_netcdf, read_wide_csv

ETT_COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
TINY = ["--model-kw", "d_model=32", "--model-kw", "dims=[8,16,32,64]", "--model-kw", "node_size=4", "--threads", "1"]


def _etth1(path: Path, hours: int = 24 * 30, seed: int = 0) -> pd.DataFrame:
    """An ETTh1-layout CSV (``date,HUFL,...,OT``, times ``2016-07-01 00:00:00``) of daily-periodic series; returns
    the table as pandas reads it back (the independent reference)."""
    t = pd.date_range("2016-07-01", periods=hours, freq="h")
    rng = np.random.default_rng(seed)
    h = np.arange(hours)
    vals = np.stack([5.0 + k + 3.0 * np.sin(2 * np.pi * h / 24 + k) + 0.3 * rng.normal(size=hours)
                     for k in range(len(ETT_COLUMNS))], axis=1)
    df = pd.DataFrame(vals.round(3), columns=ETT_COLUMNS)
    df.insert(0, "date", t.strftime("%Y-%m-%d %H:%M:%S"))
    df.to_csv(path, index=False)
    return pd.read_csv(path, parse_dates=["date"])


def test_etth1_layout_equals_a_pandas_recomputation(tmp_path: Path) -> None:
    ref = _etth1(tmp_path / "ETTh1.csv")
    assert detect_format(tmp_path / "ETTh1.csv") == "wide-csv"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # good input reads without a word
        ds = open_dataset(tmp_path / "ETTh1.csv", units={"value": "kW"})
    assert list(ds["station"].values) == ETT_COLUMNS and list(ds["name"].values) == ETT_COLUMNS
    assert ds["value"].dims == ("time", "station") and ds["value"].attrs["units"] == "kW"
    np.testing.assert_array_equal(ds["time"].values, ref["date"].values)
    np.testing.assert_allclose(ds["value"].values, ref[ETT_COLUMNS].to_numpy(np.float32), rtol=0, atol=0)
    assert np.isnan(ds["lat"].values).all() and np.isnan(ds["lon"].values).all()


def test_columns_time_column_variable_and_registry_units(tmp_path: Path) -> None:
    ref = _etth1(tmp_path / "e.csv")
    df = pd.read_csv(tmp_path / "e.csv")
    df = df[["HUFL", "date", "OT"]].rename(columns={"date": "when"})
    df["OT"] = df["OT"] * 9 / 5 + 32  # degF: a registry variable's units are converted
    df.to_csv(tmp_path / "f.csv", index=False)
    ds = read_wide_csv(tmp_path / "f.csv", time_column="when", columns=["OT"], variable="temperature",
                       units="degF")
    assert list(ds["station"].values) == ["OT"] and ds["temperature"].attrs["standard_name"] == "air_temperature"
    np.testing.assert_allclose(ds["temperature"].values[:, 0], ref["OT"].to_numpy(), atol=1e-4)
    # gaps: a missing row and an empty cell are NaN on the regular axis, never zero
    lines = (tmp_path / "e.csv").read_text().splitlines()
    lines[1 + 5] = lines[1 + 5].rsplit(",", 1)[0] + ","  # OT empty at hour 5
    del lines[1 + 9]  # hour 9 missing
    (tmp_path / "g.csv").write_text("\n".join(lines) + "\n")
    g = open_dataset(tmp_path / "g.csv", format="wide_csv", units={"value": "kW"})
    assert g.sizes["time"] == len(ref)
    assert np.isnan(g["value"].sel(station="OT").values[5]) and np.isnan(g["value"].values[9]).all()
    assert g["value"].sel(station="HUFL").values[5] == pytest.approx(ref["HUFL"][5])


@pytest.mark.parametrize(
    ("text", "kw", "match"),
    [
        ("date,A,B\n2020-01-01 00:00,1,2\n2020-01-01 01:00,3,4\n", {}, r"give the units of the series"),
        ("date,A,A\n2020-01-01 00:00,1,2\n2020-01-01 01:00,3,4\n", {"units": "1"},
         r"line 1: column name 'A' appears twice in the header \(columns 2 and 3\)"),
        ("date,A,B\n2020-01-01 00:00,1,x\n2020-01-01 01:00,3,4\n", {"units": "1"},
         r"line 2, field B: 'x' is not a number"),
        ("date,A\n2020-01-01 00:00,1\n2020-01-01 01:00,2\n2020-01-01 02:00,3\n2020-01-01 02:07,4\n"
         "2020-01-01 03:00,5\n", {"units": "1"},
         r"line 5, field date: irregular time axis: time 2020-01-01 02:07:00 is not on the regular 0 days 01:00:00 "
         r"grid.*resample it to one regular step first, e\.g\. with pandas: "
         r"df\.set_index\('date'\)\.resample\('1h'\)\.mean\(\)"),
        ("date,A\n" + "".join(f"2020-01-01 {h:02d}:00,1\n" for h in range(6))
         + "".join(f"{t:%Y-%m-%d %H:%M},1\n" for t in pd.date_range("2020-01-01 05:10", periods=9, freq="10min")),
         {"units": "1"},
         r"mixed time steps \(0 days 00:10:00 \(9x\), 0 days 01:00:00 \(5x\)\): the 15 times fill only 38 % of a "
         r"regular 0 days 00:10:00 axis; resample it"),
        ("date,A\n2020-01-01 00:00,1\n2020-01-01 00:00,2\n", {"units": "1"}, r"duplicate time 2020-01-01 00:00:00"),
        ("date,A\n2020-01-01 00:00,1\n", {"units": "1", "columns": ["Z"]}, r"columns=\['Z'\] not in the file"),
        ("date,A\n2020-01-01 00:00,1\n", {"units": "1", "time_column": "t"}, r"time_column='t' is not a column"),
        ("date,A\n2020-01-01 00:00,1\n", {"units": {"value": "1", "other": "m"}}, r"\['other'\] name no variable"),
        ("date,A\n2020-01-01 00:00,1\n", {"variable": "temperature", "units": "m/s"}, r"not a temperature unit"),
    ],
)
def test_bad_wide_csv_is_one_clear_error(tmp_path: Path, text: str, kw: dict, match: str) -> None:
    (tmp_path / "w.csv").write_text(text)
    with pytest.raises(ReaderError, match=match):
        read_wide_csv(tmp_path / "w.csv", **kw)


def test_data_convert_writes_netcdf_that_reads_back_equal(tmp_path: Path) -> None:
    _etth1(tmp_path / "ETTh1.csv")
    src = open_dataset(tmp_path / "ETTh1.csv", units={"value": "kW"})
    r = CliRunner().invoke(cli, ["data", "convert", str(tmp_path / "ETTh1.csv"), "--units", "value=kW",
                                 "-o", str(tmp_path / "e.nc")])
    assert r.exit_code == 0, r.output
    assert "7 stations x 720 times" in r.output and "from wide-csv" in r.output
    back = read_netcdf(tmp_path / "e.nc")
    np.testing.assert_array_equal(back["value"].values, src["value"].values)
    assert back["value"].attrs["units"] == "kW" and list(back["station"].values) == ETT_COLUMNS
    # without units: one line naming the flag, no file
    r = CliRunner().invoke(cli, ["data", "convert", str(tmp_path / "ETTh1.csv"), "-o", str(tmp_path / "x.nc")])
    assert r.exit_code == 1 and "--units value=kW" in r.output and not (tmp_path / "x.nc").exists()
    r = CliRunner().invoke(cli, ["data", "info", str(tmp_path / "ETTh1.csv"), "--columns", "OT", "--var-name",
                                 "oil_temp", "--units", "oil_temp=degC", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["stations"] == 1 and info["variables"]["oil_temp"]["units"] == "degC"


def _train_predict_benchmark(tmp_path: Path, extra: list[str], runs: Path) -> tuple[str, Path]:
    env = {"URLK_RUNS_DIR": str(runs), "URLK_DWCONV": "torch"}
    run = runs / "w"
    res = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "ETTh1.csv"), *extra, *TINY, "--seq-len", "2D",
                                   "--label-len", "12h", "--pred-len", "24", "--max-steps", "2",
                                   "--eval-windows", "3", "--out", str(run)], env=env)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["predict", "--run", str(run), "--out", str(tmp_path / "f.csv")], env=env)
    assert res.exit_code == 0, res.output
    bench = CliRunner().invoke(cli, ["benchmark", "--run", str(run), "--baselines", "persistence,seasonal_naive",
                                     "--max-windows", "3", "--quiet", "--out", str(tmp_path / "b")], env=env)
    assert bench.exit_code == 0, bench.output
    return res.output, run


def test_single_series_trains_predicts_and_benchmarks(tmp_path: Path) -> None:
    ref = _etth1(tmp_path / "ETTh1.csv")
    out, run = _train_predict_benchmark(tmp_path, ["--columns", "OT", "--var-name", "oil_temperature",
                                                   "--units", "oil_temperature=degC"], tmp_path / "runs")
    assert "1 stations x 24 h of oil_temperature" in out
    spec = json.loads((run / "run.json").read_text())
    assert spec["data"]["reader"] == {"format": "wide-csv", "columns": ["OT"], "variable": "oil_temperature"}
    assert spec["options"]["seq_len"] == "2 days 00:00:00"
    cfg = json.loads((run / "model" / "config.json").read_text())
    assert (cfg["seq_len"], cfg["label_len"], cfg["pred_len"], cfg["units"]) == (48, 12, 24, "degC")
    fc = pd.read_csv(tmp_path / "f.csv")
    assert list(fc["station"].unique()) == ["OT"] and list(fc["lead_time_h"]) == list(range(1, 25))
    assert (fc["units"] == "degC").all() and np.isfinite(fc["oil_temperature"]).all()
    assert pd.Timestamp(fc["issue_time"][0]) == ref["date"].iloc[-1]
    md = (tmp_path / "b" / "benchmark_oil_temperature.md").read_text()
    assert "oil_temperature (degC)" in md and "stations: 1;" in md


def test_all_seven_columns_train_as_seven_series(tmp_path: Path) -> None:
    _etth1(tmp_path / "ETTh1.csv")
    out, _ = _train_predict_benchmark(tmp_path, ["--units", "value=kW"], tmp_path / "runs")
    assert "7 stations x 24 h of value" in out
    fc = pd.read_csv(tmp_path / "f.csv")
    assert sorted(fc["station"].unique()) == sorted(ETT_COLUMNS) and len(fc) == 7 * 24
    table = pd.read_csv(tmp_path / "b" / "benchmark_value.csv")
    assert {"Persistence", "Seasonal naive", "unireplknet_a"} <= set(table["method"])
    assert np.isfinite(table["MSE"]).all() and (table["coverage"] == 1.0).all()
