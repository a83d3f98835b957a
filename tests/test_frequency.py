"""Any regular frequency: lengths as steps or durations (parsed and rejected), the seasonal period from the step
(a hand-built daily series with a known weekly season), irregular input errors that say how to resample, and tiny
train / predict / benchmark runs on 10-minute, 3-hourly and daily data through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from urlk_forecast import Forecaster
from urlk_forecast.baselines import SeasonalNaive
from urlk_forecast.cli import cli
from urlk_forecast.data.readers import ReaderError, read_csv_long, write_netcdf
from urlk_forecast.data.schema import SchemaError, infer_frequency, make_dataset
from urlk_forecast.data.windows import WindowDataset
from urlk_forecast.utils.steps import default_season, lead_time_unit, length_steps, parse_length

TINY = ["--model-kw", "d_model=32", "--model-kw", "dims=[8,16,32,64]", "--model-kw", "node_size=4", "--threads", "1"]


@pytest.mark.parametrize(
    ("value", "freq", "steps"),
    [(48, "1h", 48), ("48", "1h", 48), ("48h", "1h", 48), ("48h", "10min", 288), ("2D", "3h", 16), ("7D", "1D", 7),
     ("30min", "10min", 3), (pd.Timedelta(hours=6), "3h", 2), ("1W", "1D", 7)],
)
def test_durations_become_whole_steps(value: object, freq: str, steps: int) -> None:
    assert length_steps(value, freq, "seq_len") == steps  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "freq", "match"),
    [("90min", "1h", r"seq_len='90min' is not a whole number of the data's 1 h steps \(1\.5 steps\)"),
     ("5h", "1D", r"seq_len='5h' is not a whole number of the data's 1 day steps"),
     ("48 apples", "1h", r"seq_len='48 apples' is neither a number of steps nor a duration like '48h'"),
     ("-3h", "1h", r"seq_len='-3h' must be a positive duration"),
     (2.5, "1h", r"seq_len=2\.5 is neither a number of steps nor a duration"),
     ("48h", None, r"seq_len='48h' is a duration, but the data's time step is not known")],
)
def test_bad_lengths_are_rejected_naming_the_argument(value: object, freq: str | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        length_steps(value, freq, "seq_len")  # type: ignore[arg-type]


def test_forecaster_takes_durations_and_resolves_them_with_the_data() -> None:
    fc = Forecaster(variable="temperature", seq_len="2D", label_len="12h", pred_len="1D")
    assert fc.lengths == {"seq_len": pd.Timedelta(days=2), "label_len": pd.Timedelta(hours=12),
                          "pred_len": pd.Timedelta(days=1)}
    fc.resolve_lengths(_regular("3h", 40))
    assert (fc.seq_len, fc.label_len, fc.pred_len) == (16, 4, 8)
    with pytest.raises(ValueError, match=r"label_len \(2 days 00:00:00\) must not exceed seq_len \(1 days"):
        Forecaster(seq_len="1D", label_len="2D")
    with pytest.raises(ValueError, match=r"pred_len='7 h' is not a whole number of the data's 1 day steps"):
        Forecaster(pred_len="7h").resolve_lengths(_regular("1D", 40))
    assert parse_length(" 24 ", "x") == 24 and isinstance(parse_length("24h", "x"), pd.Timedelta)


def test_season_and_lead_units_follow_the_step() -> None:
    assert [default_season(f) for f in ("10min", "1h", "3h", "1D", "7D", None)] == [144, 24, 8, 7, 1, 24]
    assert [lead_time_unit(f)[0] for f in ("10min", "1h", "3h", "1D", "90s")] == ["min", "h", "h", "d", "s"]


def _regular(freq: str, n: int, stations: int = 3, seed: int = 0) -> object:
    """A schema dataset of ``n`` steps of ``freq``: a daily cycle (sub-daily data) or a weekly one (daily data)."""
    t = pd.date_range("2021-01-01", periods=n, freq=freq)
    step = pd.Timedelta(freq)
    period = pd.Timedelta(days=1) if step < pd.Timedelta(days=1) else pd.Timedelta(days=7)
    phase = 2 * np.pi * ((t - t[0]) / period).to_numpy(float)
    rng = np.random.default_rng(seed)
    vals = np.stack([10 + 3 * s + 5 * np.sin(phase + s) + 0.3 * rng.normal(size=n) for s in range(stations)], 1)
    return make_dataset(t, [f"S{s}" for s in range(stations)], 40.0 + np.arange(stations), -75.0 + np.arange(stations),
                        temperature=vals)


def test_seasonal_naive_on_daily_data_repeats_the_last_week() -> None:
    """A hand-built daily series with a known weekly season: the default seasonal naive is the value 7 days earlier
    (pandas shift(7) as the reference), and period= still overrides it."""
    week = np.array([0.0, 1.0, 5.0, 2.0, 8.0, 3.0, -4.0])
    t = pd.date_range("2021-03-01", periods=70, freq="D")
    trend = np.linspace(0, 3, 70)
    series = pd.Series(np.tile(week, 10) + trend, index=t)
    ds = make_dataset(t, ["A"], [1.0], [2.0], temperature=series.to_numpy()[:, None])
    ws = WindowDataset(ds, "temperature", seq_len=14, label_len=0, pred_len=7, max_gap=0)
    m = SeasonalNaive().fit(ds)
    assert m.season_steps(pd.Timedelta(days=1)) == 7 and m.label("1D") == "Seasonal naive (7 days)"
    got = m.predict_windows(ws)[:, :, 0]
    ref = series.shift(7)
    for i in range(len(ws)):
        targets = t[i + 14: i + 21]
        np.testing.assert_allclose(got[i], ref.loc[targets].to_numpy(), rtol=0, atol=1e-5)
    one_day = SeasonalNaive(period="1D").fit(ds).predict_windows(ws, [0])[0, :, 0]
    np.testing.assert_allclose(one_day, np.full(7, series.iloc[13]), atol=1e-5)  # period=1 step: persistence


def test_irregular_input_errors_say_how_to_resample(tmp_path: Path) -> None:
    ds = _regular("1h", 10)
    bad = ds.isel(time=[0, 1, 2, 4, 5])
    with pytest.raises(SchemaError, match=r"irregular time frequency: step 0 days 01:00:00 at the start but 0 days "
                                          r"02:00:00 between .*; resample it to one regular step first, e\.g\. with "
                                          r"pandas: .*resample\('1h'\)\.mean\(\).*ds\.resample\(time='1h'\)\.mean\(\)"):
        infer_frequency(bad)
    rows = ["station,time,temperature"] + [f"A,2021-01-01T0{h}:00,1.0" for h in range(4)] + ["A,2021-01-01T04:20,2.0"]
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ReaderError, match=r"line 6, field time: time 2021-01-01 04:20:00 is not on the regular "
                                          r"0 days 01:00:00 grid .*; resample it to one regular step first"):
        read_csv_long(tmp_path / "l.csv")
    times = list(pd.date_range("2021-01-01", periods=6, freq="h")) + list(
        pd.date_range("2021-01-01 05:10", periods=12, freq="10min"))
    rows = ["station,time,temperature"] + [f"A,{t.isoformat()},1.0" for t in times]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ReaderError, match=r"field time: mixed time steps \(0 days 00:10:00 \(12x\), 0 days 01:00:00 "
                                          r"\(5x\)\): the 18 times fill only 42 % of a regular 0 days 00:10:00 axis; "
                                          r"resample it to one regular step first"):
        read_csv_long(tmp_path / "m.csv")
    assert read_csv_long(tmp_path / "m.csv", freq="10min").sizes["time"] == 43  # freq= takes them as gaps


@pytest.mark.parametrize(
    ("freq", "n", "lengths", "steps", "lead_col", "leads", "season", "horizon"),
    [
        ("10min", 6 * 24 * 12, ["--seq-len", "1D", "--label-len", "2h", "--pred-len", "3h"], (144, 12, 18),
         "lead_time_min", list(range(10, 190, 10)), "Seasonal naive (144 x 10 min)", "18 x 10 min"),
        ("3h", 8 * 80, ["--seq-len", "2D", "--label-len", "12h", "--pred-len", "1D"], (16, 4, 8),
         "lead_time_h", list(range(3, 27, 3)), "Seasonal naive (8 x 3 h)", "8 x 3 h"),
        ("1D", 400, ["--seq-len", "28", "--label-len", "7D", "--pred-len", "1W"], (28, 7, 7),
         "lead_time_d", list(range(1, 8)), "Seasonal naive (7 days)", "7 days"),
    ],
)
def test_train_predict_benchmark_at_any_frequency(tmp_path: Path, freq: str, n: int, lengths: list[str],
                                                  steps: tuple[int, int, int], lead_col: str, leads: list[int],
                                                  season: str, horizon: str) -> None:
    write_netcdf(_regular(freq, n, stations=4), tmp_path / "d.nc")
    runs, run = tmp_path / "runs", tmp_path / "runs" / "r"
    env = {"URLK_RUNS_DIR": str(runs), "URLK_DWCONV": "torch"}
    res = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "d.nc"), *TINY, *lengths, "--max-steps", "2",
                                   "--eval-windows", "3", "--out", str(run)], env=env)
    assert res.exit_code == 0, res.output
    assert season in res.output
    cfg = json.loads((run / "model" / "config.json").read_text())
    assert (cfg["seq_len"], cfg["label_len"], cfg["pred_len"]) == steps
    assert pd.Timedelta(cfg["frequency"]) == pd.Timedelta(freq)
    res = CliRunner().invoke(cli, ["predict", "--run", str(run), "--out", str(tmp_path / "f.csv")], env=env)
    assert res.exit_code == 0, res.output
    assert f"4 stations x {horizon} of temperature" in res.output
    fc = pd.read_csv(tmp_path / "f.csv")
    assert lead_col in fc.columns and "lead_time_h" not in fc.columns or lead_col == "lead_time_h"
    assert list(fc[lead_col].unique()) == leads
    assert np.isfinite(fc["temperature"]).all()
    res = CliRunner().invoke(cli, ["benchmark", "--run", str(run), "--baselines", "persistence,seasonal_naive",
                                   "--max-windows", "3", "--quiet", "--out", str(tmp_path / "b")], env=env)
    assert res.exit_code == 0, res.output
    md = (tmp_path / "b" / "benchmark_temperature.md").read_text()
    assert f"{season.split('(')[1][:-1]}" in md and f"forecast {horizon} ahead" in md


def test_benchmark_season_is_overridable(tmp_path: Path) -> None:
    write_netcdf(_regular("1h", 24 * 30), tmp_path / "h.nc")
    base = ["benchmark", "--data", str(tmp_path / "h.nc"), "--baselines", "seasonal_naive", "--max-windows", "4",
            "--quiet"]
    res = CliRunner().invoke(cli, [*base, "--season", "12h", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "Seasonal naive (12 h): the last season" in (tmp_path / "a" / "benchmark_temperature.md").read_text()
    res = CliRunner().invoke(cli, [*base, "--season", "90min", "--out", str(tmp_path / "b")])
    assert res.exit_code == 1 and "--season '90 min' is not a whole number of the data's 1 h steps" in res.output
