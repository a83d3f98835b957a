"""End to end through the command line: ``train --quantiles 0.1,0.5,0.9`` (a tiny model, a few steps), then
``predict`` to netCDF / CSV / PNG, ``benchmark --run`` and ``backtest --run`` on the same data file.

References are independent of the commands: the saved model reloaded in Python (``Forecaster.load``) and its
``predict`` / ``predict_quantiles`` on windows built here, the files read back with xarray/pandas, the interval
coverage recomputed in float64 from targets and quantiles.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from click.testing import CliRunner

from urlk_forecast.cli import cli
from urlk_forecast.data.readers import open_dataset, write_netcdf
from urlk_forecast.data.synthetic import synthetic_global
from urlk_forecast.data.windows import WindowDataset, split_dataset
from urlk_forecast.forecaster import Forecaster
from urlk_forecast.utils import evenly_spaced

LEVELS = (0.1, 0.5, 0.9)
TINY = ["--model-kw", "d_model=32", "--model-kw", "dims=[8,16,32,64]", "--model-kw", "node_size=4",
        "--seq-len", "24", "--label-len", "12", "--pred-len", "12", "--threads", "1"]
ENV = {"URLK_DWCONV": "torch"}  # the op path does not matter here; torch's conv skips the kernels' start-up


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(data file, run dir, train output) of one tiny quantile training run through the CLI."""
    root = tmp_path_factory.mktemp("qcli")
    data = root / "d.nc"
    write_netcdf(synthetic_global(stations=12, hours=24 * 20, seed=3, variables=("temperature",)), data)
    res = CliRunner().invoke(cli, ["train", "--data", str(data), *TINY, "--quantiles", "0.1,0.5,0.9",
                                   "--max-time", "60", "--max-steps", "6", "--batch-size", "4",
                                   "--eval-windows", "8", "--out", str(root / "run")], env=ENV,
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return data, root / "run", res.output


def test_train_records_the_levels_and_the_max_time_given(run) -> None:
    _, rd, _ = run
    cfg = json.loads((rd / "model" / "config.json").read_text())
    assert cfg["quantiles"] == list(LEVELS)
    # --max-time with the automatic schedule: the given budget wins over the regime's own
    assert json.loads((rd / "run.json").read_text())["regime"]["settings"]["max_time"] == 60


def test_predict_writes_the_quantile_dim_and_columns_of_the_median_forecast(run, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    data, rd, _ = run
    r = CliRunner()
    res = r.invoke(cli, ["predict", "--run", str(rd), "--data", str(data), "--out", str(tmp_path / "f.nc"),
                         "--plot", str(tmp_path / "f.png")], env=ENV)
    assert res.exit_code == 0, res.output
    res = r.invoke(cli, ["predict", "--run", str(rd), "--data", str(data), "--out", str(tmp_path / "f.csv")], env=ENV)
    assert res.exit_code == 0, res.output
    want = Forecaster.load(rd / "model").predict(open_dataset(data))["temperature"]  # the model, reloaded here
    with xr.open_dataset(tmp_path / "f.nc") as nc:
        da = nc["temperature"].load()
    assert da.dims == ("lead_time", "station", "quantile") and da.shape == (12, 12, 3)
    assert list(da["quantile"].values) == list(LEVELS)
    np.testing.assert_allclose(da.values, want.transpose(*da.dims).values, rtol=0, atol=1e-5)
    assert (np.diff(da.values, axis=-1) >= 0).all() and (np.diff(da.values, axis=-1) > 0).any()

    df = pd.read_csv(tmp_path / "f.csv")
    q = df[[f"temperature_q{v:g}" for v in LEVELS]].to_numpy()
    assert len(df) == 12 * 12 and np.isfinite(q).all()
    assert (np.diff(q, axis=1) >= 0).all()  # monotone in every row
    np.testing.assert_array_equal(df["temperature"].to_numpy(), df["temperature_q0.5"].to_numpy())
    # row by row, each level equals the netCDF value of that station and lead (CSV: 4 decimals)
    nc_q = da.transpose("lead_time", "station", "quantile").values
    pos = {str(s): i for i, s in enumerate(da["station"].values)}
    rows = (df["lead_time_h"].to_numpy() - 1).astype(int), df["station"].astype(str).map(pos).to_numpy()
    np.testing.assert_allclose(q, nc_q[rows[0], rows[1]], rtol=0, atol=6e-5)
    png = (tmp_path / "f.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def _coverage80(fc: Forecaster, ws: WindowDataset, idx: np.ndarray) -> float:
    q = np.asarray(fc.predict_quantiles(ws, idx), np.float64)
    b = ws.batch(idx)
    y = np.asarray(b["y"])[:, ws.label_len:].astype(np.float64)
    ok = np.asarray(b["y_mask"])[:, ws.label_len:].astype(bool) & np.isfinite(y)
    return float(((q[..., 0] <= y) & (y <= q[..., 2]))[ok].mean())


def test_benchmark_run_reports_the_coverage_of_the_model_and_the_baselines(run, tmp_path) -> None:
    data, rd, _ = run
    res = CliRunner().invoke(cli, ["benchmark", "--run", str(rd), "--data", str(data), "--baselines",
                                   "persistence,seasonal_naive", "--max-windows", "8", "--quiet",
                                   "--out", str(tmp_path / "b")], env=ENV)
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(tmp_path / "b" / "benchmark_temperature.csv").set_index("method")
    assert {"CRPS", "cover80"} <= set(rows.columns) and "cover80" in res.output
    assert rows["cover80"].notna().all()  # the baselines forecast the model's levels
    # the model's coverage, recomputed from its own quantiles on the test windows benchmark scores
    fc = Forecaster.load(rd / "model")
    ds = open_dataset(data)
    test = split_dataset(ds, context=fc.seq_len)["test"]
    ws = WindowDataset(test, "temperature", fc.seq_len, fc.label_len, fc.pred_len, max_gap=fc.max_gap)
    idx = evenly_spaced(len(ws), 8)
    assert rows.loc[fc.name, "cover80"] == pytest.approx(_coverage80(fc, ws, idx), abs=1e-9)


def test_backtest_run_scores_the_quantiles_per_origin_and_lead(run, tmp_path) -> None:
    data, rd, _ = run
    res = CliRunner().invoke(cli, ["backtest", "--run", str(rd), "--data", str(data), "--baselines", "persistence",
                                   "--n-windows", "3", "--step", "12", "--quiet", "--out", str(tmp_path / "t.csv")],
                             env=ENV)
    assert res.exit_code == 0, res.output
    assert "quantile forecasts" in res.output and "cover80 unireplknet_a" in res.output
    assert "cover80 Persistence" in res.output  # the baseline follows the run's levels
    t = pd.read_csv(tmp_path / "t.csv")
    cols = [f"unireplknet_a_q{v:g}" for v in LEVELS]
    assert set(cols) <= set(t.columns) and "Persistence_q0.1" in t.columns
    np.testing.assert_array_equal(t["unireplknet_a"].to_numpy(), t["unireplknet_a_q0.5"].to_numpy())
    assert (np.diff(t[cols].to_numpy(), axis=1) >= 0).all()
