"""``urlk-forecast benchmark`` and run_benchmark on tiny synthetic sets (real files, real processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from urlk_forecast.baselines import run_benchmark
from urlk_forecast.baselines.base import window_arrays
from urlk_forecast.baselines.table import PAPER_TABLE12, compare
from urlk_forecast.cli import cli
from urlk_forecast.data.synthetic import synthetic_global
from urlk_forecast.data.windows import WindowDataset, split_dataset
from urlk_forecast.method import Method
from urlk_forecast.metrics import evaluate_arrays

REPO = Path(__file__).resolve().parents[1]
HOURS = 24 * 100


def _invoke(*args: str) -> object:
    return CliRunner().invoke(cli, ["benchmark", *args])


def _evenly(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def test_cli_tiny_synthetic_table_files_and_independent_scores(tmp_path: Path) -> None:
    out = tmp_path / "res"
    r = _invoke("--stations", "10", "--hours", str(HOURS), "--max-windows", "6", "--jobs", "1", "--baselines",
                "persistence,seasonal_naive,climatology,holt_winters,prophet_like,prophet_like_adjusted",
                "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "| method | type | parameters | MSE | MAE | fit_s | predict_s | coverage |" in r.output
    md = (out / "benchmark_temperature.md").read_text()
    csv = pd.read_csv(out / "benchmark_temperature.csv")
    assert list(csv["method"]) == ["Persistence", "Seasonal naive", "Climatology", "Holt-Winters", "Prophet-like",
                                   "Prophet-like (level-adjusted)"]
    assert set(csv["type"]) == {"statistical"} and (csv["coverage"] == 1.0).all()
    assert (csv["MSE"] > 0).all() and np.isfinite(csv[["MSE", "MAE", "fit_s", "predict_s"]].to_numpy()).all()
    assert "SYNTHETIC" in md and "test windows scored: 6 of" in md
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files
    # independent recomputation of two rows on the same windows
    ds = synthetic_global(stations=10, hours=HOURS, seed=0)
    parts = split_dataset(ds, context=48)
    ws = WindowDataset(parts["test"], "temperature", 48, 24, 24)
    idx = _evenly(len(ws), 6)
    a = window_arrays(ws, idx)
    pers = np.repeat(a["x"][:, -1:], 24, axis=1)
    ref = evaluate_arrays(pers, a["y"], a["y_mask"])
    row = csv.set_index("method").loc["Persistence"]
    assert row["MSE"] == pytest.approx(ref["mse"], rel=1e-6) and row["MAE"] == pytest.approx(ref["mae"], rel=1e-6)
    snaive = a["x"][:, 24:48]
    ref = evaluate_arrays(snaive, a["y"], a["y_mask"])
    assert csv.set_index("method").loc["Seasonal naive", "MSE"] == pytest.approx(ref["mse"], rel=1e-6)
    # alpha, beta, gamma, phi (damped trend) + the 24-step seasonal profile, per station
    assert csv.set_index("method").loc["Holt-Winters", "parameters"] == (4 + 24) * 10
    lead = pd.read_csv(out / "benchmark_temperature_per_lead.csv")
    assert len(lead) == 6 * 24 and list(lead.columns) == ["method", "lead", "MSE", "MAE"]
    pl = lead[lead["method"] == "Persistence"].set_index("lead")
    err = (pers - a["y"]) ** 2
    ref1 = np.mean([err[i, 0][a["y_mask"][i, 0]].mean() for i in range(idx.size) if a["y_mask"][i, 0].any()])
    assert pl.loc[1, "MSE"] == pytest.approx(ref1, rel=1e-5)
    assert pl.loc[1, "MSE"] < pl.loc[12, "MSE"]  # persistence error grows with lead


def test_cli_netcdf_data_wind_and_synthetic_gfs(tmp_path: Path) -> None:
    ds = synthetic_global(stations=12, hours=24 * 60, seed=3)
    path = tmp_path / "stations.nc"
    ds.to_netcdf(path)
    r = _invoke("--data", str(path), "--var", "wind_speed", "--stations", "6", "--max-windows", "4",
                "--baselines", "persistence,climatology", "--gfs", "synthetic", "--out", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    csv = pd.read_csv(tmp_path / "o" / "benchmark_wind_speed.csv")
    assert list(csv["method"]) == ["Persistence", "Climatology", "GFS (synthetic demo)"]
    assert csv.set_index("method").loc["GFS (synthetic demo)", "type"] == "NWP"
    md = (tmp_path / "o" / "benchmark_wind_speed.md").read_text()
    assert "stations: 6;" in md and "(m s-1)" in md


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    r = _invoke("--baselines", "persistence,arima", "--stations", "3", "--hours", "500")
    assert r.exit_code != 0 and "unknown baseline(s) arima" in r.output and "Traceback" not in r.output
    r = _invoke("--data", str(tmp_path / "nope.nc"))
    assert r.exit_code != 0 and "nope.nc: no such file or directory" in r.output
    r = _invoke("--data", str(tmp_path), "--hours", "500")
    assert r.exit_code != 0 and "--hours applies to the synthetic default only" in r.output
    r = _invoke("--gfs", str(tmp_path / "gfs.grib2"), "--stations", "3", "--hours", "500")
    assert r.exit_code != 0 and "gfs.grib2: no such file" in r.output
    r = _invoke("--run", str(tmp_path), "--max-windows", "2")
    assert r.exit_code != 0 and "not a training run or saved model" in r.output


def test_cli_checks_out_before_computing(tmp_path: Path) -> None:
    """An --out that cannot be written fails at once: nothing computed, no table printed, nothing written."""
    import time

    blocker = tmp_path / "file"
    blocker.write_text("")
    t0 = time.perf_counter()
    r = _invoke("--stations", "3", "--hours", "500", "--out", str(blocker / "res"))
    assert r.exit_code == 1 and f"--out {blocker / 'res'}: cannot write there, {blocker} is not a directory" in r.output
    assert len(r.output.strip().splitlines()) == 1 and "| method |" not in r.output
    assert time.perf_counter() - t0 < 10  # before the data was even generated
    r = _invoke("--stations", "3", "--hours", "500", "--out", str(blocker))
    assert r.exit_code == 1 and f"--out {blocker}: exists and is not a directory" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_model_row_from_a_saved_forecaster(tmp_path: Path) -> None:
    from urlk_forecast.forecaster import Forecaster

    ds = synthetic_global(stations=8, hours=24 * 40, seed=2, variables=("temperature",))
    parts = split_dataset(ds, context=48)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fc = Forecaster("unireplknet_a", "temperature", d_model=32, n_heads=4, node_size=4, dims=(8, 16, 32, 64),
                        kernel_size=7)
        fc.fit(parts["train"], val=parts["val"], max_steps=2, batch_size=4, progress=False, val_windows=2, seed=0)
        fc.save(tmp_path / "model")
        data = tmp_path / "data.nc"
        ds.to_netcdf(data)
        r = _invoke("--run", str(tmp_path / "model"), "--data", str(data), "--baselines", "persistence",
                    "--max-windows", "5", "--out", str(tmp_path / "o"))
    finally:
        torch.set_num_threads(n)
    assert r.exit_code == 0, r.output
    csv = pd.read_csv(tmp_path / "o" / "benchmark_temperature.csv").set_index("type")
    assert csv.loc["neural", "method"] == "unireplknet_a"  # the model's name, one more Method row
    assert csv.loc["neural", "fit_s"] == pytest.approx(fc.fit_seconds, rel=1e-6)  # its training wall time
    assert csv.loc["neural", "parameters"] == sum(p.numel() for p in fc.net.parameters())
    # independent: the model's own forecasts on the same windows, scored on the points every method forecast
    ws = WindowDataset(parts["test"], "temperature", 48, 24, 24)
    idx = _evenly(len(ws), 5)
    a = window_arrays(ws, idx)
    pm = fc.predict_windows(ws, idx)
    mask = a["y_mask"] & np.isfinite(pm)
    ref = evaluate_arrays(pm, a["y"], mask)
    assert csv.loc["neural", "MSE"] == pytest.approx(ref["mse"], rel=1e-5)


def test_paper_reference_printed_for_the_corrformer_release() -> None:
    ds = synthetic_global(stations=4, hours=24 * 30, seed=5)
    ds.attrs["source_format"] = "corrformer"
    res = run_benchmark(ds, "wind_speed", baselines=["persistence"], max_windows=3)
    ref = res.reference.set_index("method")
    assert tuple(ref.loc["UniRepLKNet-S (paper)"]) == PAPER_TABLE12["wind_speed"]["UniRepLKNet-S (paper)"]
    assert tuple(ref.loc["Corrformer (paper)"]) == (3.889, 1.304)
    md = res.to_markdown()
    assert "reported, not re-run" in md and "3.865" in md
    assert run_benchmark(synthetic_global(stations=4, hours=24 * 30), baselines=["persistence"],
                         max_windows=3).reference is None


class _Breaks(Method):
    """A method following the contract whose forecast fails, to check the table survives it."""

    name = "Broken"
    kind = "statistical"

    def __init__(self) -> None:
        self.variable = "temperature"
        self.fit_seconds = 0.0

    def fit(self, train: object, val: object = None) -> _Breaks:
        return self

    def predict_windows(self, ws: object, indices: object = None) -> np.ndarray:
        raise RuntimeError("boom")

    @property
    def n_params(self) -> int:
        return 0


def test_a_failing_method_is_reported_and_the_rest_scored() -> None:
    from urlk_forecast.baselines import Persistence

    ds = synthetic_global(stations=4, hours=24 * 20, seed=1)
    ws = WindowDataset(ds, "temperature", 48, 24, 24)
    p = Persistence().fit(ds)
    lines: list[str] = []
    rows = compare([p, _Breaks()], ws, np.arange(10), batch_size=4, keep_going=True, progress=lines.append)
    assert list(rows["method"]) == ["Persistence"] and "boom" in rows.attrs["failures"]["Broken"]
    assert rows.attrs["points"] == rows.attrs["observed"] > 0 and rows.attrs["windows"] == 10
    assert any("Broken FAILED" in line for line in lines)
    assert list(rows.columns) == ["method", "type", "parameters", "MSE", "MAE", "fit_s", "predict_s", "coverage"]
    alone = p.evaluate(ws, np.arange(10))
    assert rows["MSE"].iloc[0] == pytest.approx(alone.mse, rel=1e-12) and rows["coverage"].iloc[0] == 1.0
    assert rows["fit_s"].iloc[0] == p.fit_seconds and rows["parameters"].iloc[0] == 0
    with pytest.raises(RuntimeError, match="boom"):  # without keep_going the failure propagates
        compare([p, _Breaks()], ws, np.arange(10), batch_size=4)


def test_benchmarks_script_is_a_thin_wrapper(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "forecast_table.py"), "--stations", "4",
                           "--hours", "1200", "--max-windows", "3", "--baselines", "persistence,seasonal_naive",
                           "--out", str(tmp_path), "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| Seasonal naive | statistical |" in proc.stdout
    assert (tmp_path / "benchmark_temperature.csv").is_file()


@pytest.mark.slow
def test_default_suite_on_500_stations(tmp_path: Path) -> None:
    """Every default baseline (incl. GBDT and, if installed, the real Prophet) end to end."""
    r = _invoke("--stations", "500", "--max-windows", "64", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    csv = pd.read_csv(tmp_path / "benchmark_temperature.csv").set_index("method")
    assert {"Persistence", "Seasonal naive", "Climatology", "Holt-Winters", "Prophet-like", "GBDT"} <= set(csv.index)
    # sanity on the synthetic weather: learnt/seasonal methods beat "no change"
    assert csv.loc["GBDT", "MSE"] < csv.loc["Persistence", "MSE"]
    assert csv.loc["Seasonal naive", "MSE"] < csv.loc["Persistence", "MSE"]


def _daily_file(tmp_path: Path, degf: bool = False) -> Path:
    """The synthetic set resampled to daily means with xarray (written as netCDF); temperatures in degF if asked."""
    from urlk_forecast.data.readers import write_netcdf

    hourly = synthetic_global(stations=6, hours=24 * 400, seed=1)
    daily = hourly.resample(time="1D").mean()
    for v in hourly.data_vars:
        daily[v].attrs = dict(hourly[v].attrs)
    if degf:
        daily["temperature"] = daily["temperature"] * 9.0 / 5.0 + 32.0
        daily["temperature"].attrs = dict(hourly["temperature"].attrs)  # still says degC: --units corrects it
    path = tmp_path / ("daily_degf.nc" if degf else "daily.nc")
    write_netcdf(daily, path)
    return path


def test_daily_data_is_described_in_days(tmp_path: Path) -> None:
    path = _daily_file(tmp_path)
    res = CliRunner().invoke(cli, ["benchmark", "--data", str(path), "--max-windows", "8", "--baselines",
                                   "persistence,seasonal_naive", "--seq-len", "30", "--label-len", "7",
                                   "--pred-len", "7", "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "out" / "benchmark_temperature.md").read_text()
    assert "steps of 1 day (forecast 7 days ahead)" in md and "Seasonal naive (7 days)" in md
    assert " h " not in md and " h)" not in md and "hour" not in md, md


def test_units_flag_reads_the_data_in_its_units(tmp_path: Path) -> None:
    """A degF file with --units temperature=degF scores exactly like the degC file (same data, converted)."""
    args = ["--max-windows", "8", "--baselines", "persistence,seasonal_naive", "--seq-len", "30", "--label-len", "7",
            "--pred-len", "7", "--quiet"]
    ref = _invoke("--data", str(_daily_file(tmp_path)), *args, "--out", str(tmp_path / "c"))
    got = _invoke("--data", str(_daily_file(tmp_path, degf=True)), *args, "--units", "temperature=degF",
                  "--out", str(tmp_path / "f"))
    assert ref.exit_code == 0 and got.exit_code == 0, (ref.output, got.output)
    a = pd.read_csv(tmp_path / "c" / "benchmark_temperature.csv").set_index("method")
    b = pd.read_csv(tmp_path / "f" / "benchmark_temperature.csv").set_index("method")
    np.testing.assert_allclose(b[["MSE", "MAE"]].to_numpy(), a[["MSE", "MAE"]].to_numpy(), rtol=1e-4)
    bad = _invoke("--data", str(_daily_file(tmp_path)), *args, "--units", "humidity=percent",
                  "--out", str(tmp_path / "x"))
    line = bad.output.strip()
    assert bad.exit_code == 1 and len(line.splitlines()) == 1 and "humidity" in line and "temperature" in line, line
    res = _invoke("--units", "temperature=degF", "--out", str(tmp_path / "y"))
    assert res.exit_code == 2 and "--units describes the --data file" in res.output
