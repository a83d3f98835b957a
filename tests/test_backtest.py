"""Rolling-origin backtests (urlk_forecast.backtest, Forecaster.cross_validation, ``urlk-forecast backtest``).

References are independent of the code under test: origins, leads and target times computed by hand from the row
indices; forecasts of persistence / seasonal naive read straight off the raw data; summaries recomputed in float64
from the tidy table; fits counted by the methods themselves. Leakage: altering (and blanking) every value after an
origin changes no forecast made at or before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from click.testing import CliRunner

from urlk_forecast.backtest import Backtest, cross_validation, origin_rows, refit_schedule
from urlk_forecast.baselines import get_baseline
from urlk_forecast.baselines.naive import Persistence
from urlk_forecast.cli import cli
from urlk_forecast.data.schema import make_dataset
from urlk_forecast.data.windows import WindowDataset, WindowSource
from urlk_forecast.forecaster import Forecaster
from urlk_forecast.method import Method
from urlk_forecast.ops import use_backend
from urlk_forecast.scoring import resolve_indices

TINY = dict(d_model=32, n_heads=4, node_size=4, dims=(8, 16, 32, 64), kernel_size=7)
GEO = dict(seq_len=48, label_len=24, pred_len=12)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(hours: int = 24 * 16, stations: int = 4, seed: int = 0, gaps: bool = True) -> xr.Dataset:
    """A diurnal cycle per station plus AR(1) noise, hourly, with a few missing values (a short and a long gap)."""
    rng = np.random.default_rng(seed)
    t = np.arange(hours)
    noise = np.zeros((hours, stations))
    for i in range(1, hours):
        noise[i] = 0.8 * noise[i - 1] + rng.normal(0, 0.7, stations)
    vals = 10 + 6 * np.sin(2 * np.pi * (t[:, None] - 14) / 24) + np.arange(stations) * 2.0 + noise
    if gaps:
        vals[hours - 5:hours - 3, 1] = np.nan  # a short gap among the last targets
        vals[hours - 30:hours - 18, 2] = np.nan  # a long gap (never interpolated)
    times = pd.date_range("2021-03-01", periods=hours, freq="h")
    return make_dataset(times, [f"S{i}" for i in range(stations)], 40 + np.arange(stations) * 0.5,
                        -100 + np.arange(stations) * 0.7, None, temperature=vals.astype(np.float32))


class _Gappy(Persistence):
    """Persistence that leaves station S0 at lead 1 unforecast (NaN): points every method forecast exclude it."""

    name = "Gappy"

    def predict_windows(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        out = super().predict_windows(ws, indices).copy()
        out[:, 0, list(ws.station_ids).index("S0")] = np.nan
        return out


class _Counting(Persistence):
    """Persistence that records every fit: the last time step of the data it was fitted on."""

    name = "Counting"

    def __init__(self) -> None:
        super().__init__()
        self.fit_ends: list[pd.Timestamp] = []

    def _fit(self, train: xr.Dataset) -> None:
        super()._fit(train)
        self.fit_ends.append(pd.Timestamp(train["time"].values[-1]))


class _TrainMean(Persistence):
    """Forecasts the mean of its training data everywhere (so each forecast says which fit made it)."""

    name = "Train mean"

    def _fit(self, train: xr.Dataset) -> None:
        super()._fit(train)
        self.level = float(np.nanmean(train["temperature"].values.astype(np.float64)))

    def predict_windows(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        n = resolve_indices(ws, indices).size
        return np.full((n, ws.pred_len, ws.num_stations), self.level, np.float32)


class _Band(Persistence):
    """Persistence with quantiles: the last value -1, +0, +2 (a non-decreasing set of levels)."""

    name = "Band"

    def __init__(self) -> None:  # Persistence keeps its own ``quantiles`` (None) per instance
        super().__init__()
        self.quantiles = (0.1, 0.5, 0.9)

    def predict_windows(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        levels, self.quantiles = self.quantiles, None  # the plain last value (not Persistence's error quantiles)
        try:
            return super().predict_windows(ws, indices)
        finally:
            self.quantiles = levels

    def predict_quantiles(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        p = self.predict_windows(ws, indices)
        return np.stack([p - 1, p, p + 2], axis=-1)


# ------------------------------------------------------------------------------------ origins, leads, targets
def test_origins_leads_and_targets_against_a_hand_computation():
    ds = _data(hours=200, gaps=True)
    raw = ds["temperature"].values.astype(np.float64)
    held = pd.DataFrame(raw).ffill().to_numpy()  # inputs hold the last observation over a gap (max_gap=0)
    times = pd.DatetimeIndex(ds["time"].values)
    bt = cross_validation([Persistence(), get_baseline("seasonal_naive")], ds, n_windows=3, step=5, refit=False,
                          seq_len=30, label_len=10, pred_len=6, max_gap=0)
    # the last origin leaves exactly pred_len targets: rows 200-1-6 = 193, then 5 rows apart
    rows = [183, 188, 193]
    assert list(origin_rows(200, n_windows=3, step=5, seq_len=30, pred_len=6)) == rows
    t = bt.table
    assert list(t.columns) == ["origin", "station", "lead", "target_time", "target", "Persistence", "Seasonal naive"]
    assert len(t) == 3 * 4 * 6
    ids = [str(s) for s in ds["station"].values]
    for _, r in t.iterrows():
        k = rows[[times[o] for o in rows].index(r["origin"])]
        s = ids.index(r["station"])
        h = int(r["lead"])
        assert 1 <= h <= 6 and r["target_time"] == times[k + h]
        target = raw[k + h, s]
        assert (np.isnan(r["target"]) and np.isnan(target)) or r["target"] == pytest.approx(target, abs=1e-5)
        assert r["Persistence"] == pytest.approx(held[k, s], abs=1e-5)
        assert r["Seasonal naive"] == pytest.approx(held[k + h - 24, s], abs=1e-5)  # the value one day earlier
    assert t["target"].isna().sum() == 2  # S1's two missing hours are targets of the last origin
    assert bt.info["first_origin"] == str(times[183]) and bt.info["last_origin"] == str(times[193])


def test_too_little_data_and_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=r"n_windows=10, step=24\) with seq_len=48 and pred_len=12 need 276"):
        cross_validation([Persistence()], _data(hours=200), n_windows=10, step=24, **GEO)
    with pytest.raises(ValueError, match="step must be an integer >= 1"):
        origin_rows(200, n_windows=2, step=0, seq_len=4, pred_len=2)
    with pytest.raises(ValueError, match="refit must be"):
        refit_schedule(4, -1)
    with pytest.raises(ValueError, match="same variable"):
        cross_validation([Persistence(), Persistence(variable="wind_speed")], _data(), n_windows=2, **GEO)
    with pytest.raises(ValueError, match="one flag per method"):
        cross_validation([Persistence()], _data(), n_windows=2, fitted=[True, False], **GEO)


# ------------------------------------------------------------------------------------------------ summaries
def _recompute(bt: Backtest) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per lead / per origin / overall MSE, MAE in float64 from the tidy table alone (the Corrformer averaging: per
    origin the mean over its points, per lead the mean over origins of the station mean at that lead)."""
    t = bt.table
    y = t["target"].to_numpy(np.float64)
    common = np.isfinite(y)
    for m in bt.methods:
        common &= np.isfinite(t[m].to_numpy(np.float64))
    lead, origin, overall = [], [], []
    for m in bt.methods:
        e = t[m].to_numpy(np.float64) - y
        d = pd.DataFrame({"origin": t["origin"], "lead": t["lead"], "se": e ** 2, "ae": np.abs(e)})[common]
        by_ol = d.groupby(["origin", "lead"])[["se", "ae"]].mean()
        by_l = by_ol.groupby("lead").mean()
        lead += [{"method": m, "lead": int(k), "mse": r["se"], "mae": r["ae"]} for k, r in by_l.iterrows()]
        by_o = d.groupby("origin")[["se", "ae"]].mean()
        origin += [{"method": m, "origin": k, "mse": r["se"], "mae": r["ae"]} for k, r in by_o.iterrows()]
        overall.append({"method": m, "mse": by_o["se"].mean(), "mae": by_o["ae"].mean(), "points": int(common.sum())})
    return pd.DataFrame(lead), pd.DataFrame(origin), pd.DataFrame(overall)


def test_summaries_equal_a_float64_recomputation_from_the_tidy_table():
    ds = _data()
    bt = cross_validation([Persistence(), get_baseline("seasonal_naive"), _Gappy()], ds, n_windows=6, step=7,
                          refit=2, **GEO)
    lead, origin, overall = _recompute(bt)
    got = bt.per_lead.dropna(subset=["mse"]).sort_values(["method", "lead"]).reset_index(drop=True)
    want = lead.sort_values(["method", "lead"]).reset_index(drop=True)
    assert got[["method", "lead"]].equals(want[["method", "lead"]])
    np.testing.assert_allclose(got[["mse", "mae"]].to_numpy(), want[["mse", "mae"]].to_numpy(), rtol=1e-9)
    # lead 1 of S0 is unforecast by Gappy, so it is scored for no method; lead 1 still has the other stations
    assert bt.per_lead["windows"].min() == 6
    got_o = bt.per_origin.sort_values(["method", "origin"]).reset_index(drop=True)
    want_o = origin.sort_values(["method", "origin"]).reset_index(drop=True)
    np.testing.assert_allclose(got_o[["mse", "mae"]].to_numpy(), want_o[["mse", "mae"]].to_numpy(), rtol=1e-9)
    assert (got_o["points"] > 0).all() and got_o["points"].sum() == 3 * overall["points"].iloc[0]
    np.testing.assert_allclose(bt.overall[["mse", "mae"]].to_numpy(), overall[["mse", "mae"]].to_numpy(), rtol=1e-9)
    assert (bt.overall["points"] == overall["points"]).all()
    coverage = bt.overall.set_index("method")["coverage"]
    assert coverage["Gappy"] < 1.0 and coverage["Persistence"] == 1.0
    text = bt.summary_text()
    assert "per lead" in text and "per origin" in text and "MSE Seasonal naive" in text


def test_quantile_columns_hold_predict_quantiles():
    bt = cross_validation([_Band(), Persistence()], _data(), n_windows=3, step=12, **GEO)
    t = bt.table
    assert [c for c in t.columns if c.startswith("Band")] == ["Band", "Band_q0.1", "Band_q0.5", "Band_q0.9"]
    np.testing.assert_array_equal(t["Band_q0.1"].to_numpy(), t["Persistence"].to_numpy() - 1)
    np.testing.assert_array_equal(t["Band_q0.9"].to_numpy(), t["Persistence"].to_numpy() + 2)
    np.testing.assert_array_equal(t["Band_q0.5"].to_numpy(), t["Band"].to_numpy())



class _WideBand(_Band):
    """The last value -4, +0, +6: wide enough that the share inside varies with the lead."""

    name = "Wide band"

    def predict_quantiles(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        p = self.predict_windows(ws, indices)
        return np.stack([p - 4, p, p + 6], axis=-1)


def _pinball_by_hand(y: np.ndarray, q: np.ndarray, tau: float) -> np.ndarray:
    u = y - q
    return np.where(u >= 0, tau * u, (tau - 1.0) * u)


def test_quantile_summaries_equal_a_hand_computation_from_the_tidy_table():
    """Pinball loss, CRPS estimate and 80 % coverage per origin, per lead and overall, recomputed in float64 from the
    tidy table: the same points as MSE/MAE (observed, forecast by every method: the gap and Gappy's S0 at lead 1
    drop out), per origin the mean over its points, per lead the mean over origins of the station mean, coverage
    pooled over the row's points; CRPS = 2 (0.3 pb_0.1 + 0.4 pb_0.5 + 0.3 pb_0.9) (cells 0..0.3..0.7..1)."""
    bt = cross_validation([_WideBand(), Persistence(), _Gappy()], _data(), n_windows=6, step=7, refit=2, **GEO)
    t = bt.table
    y = t["target"].to_numpy(np.float64)
    common = np.isfinite(y)
    for m in bt.methods:
        common &= np.isfinite(t[m].to_numpy(np.float64))
    assert 0 < common.sum() < len(t)
    q = {tau: t[f"Wide band_q{tau:g}"].to_numpy(np.float64) for tau in (0.1, 0.5, 0.9)}
    pb = {tau: _pinball_by_hand(y, q[tau], tau) for tau in q}
    d = pd.DataFrame({"origin": t["origin"], "lead": t["lead"], "pinball": (pb[0.1] + pb[0.5] + pb[0.9]) / 3,
                      "crps": 2 * (0.3 * pb[0.1] + 0.4 * pb[0.5] + 0.3 * pb[0.9]),
                      "inside": (q[0.1] <= y) & (y <= q[0.9])})[common]
    by_o = d.groupby("origin").agg(pinball=("pinball", "mean"), crps=("crps", "mean"), cover80=("inside", "mean"))
    by_l = d.groupby(["origin", "lead"])[["pinball", "crps"]].mean().groupby("lead").mean()
    by_l["cover80"] = d.groupby("lead")["inside"].mean()
    assert 0.2 < d["inside"].mean() < 0.95 and by_l["cover80"].max() > by_l["cover80"].min()  # not trivial

    cols = ["pinball", "crps", "cover80"]
    got_o = bt.per_origin.query("method == 'Wide band'").set_index("origin")[cols]
    np.testing.assert_allclose(got_o.to_numpy(), by_o.loc[got_o.index, cols].to_numpy(), rtol=1e-9)
    got_l = bt.per_lead.query("method == 'Wide band'").set_index("lead")[cols]
    np.testing.assert_allclose(got_l.to_numpy(), by_l.loc[got_l.index, cols].to_numpy(), rtol=1e-9)
    row = bt.overall.set_index("method").loc["Wide band"]
    np.testing.assert_allclose([row["pinball"], row["crps"]], by_o[["pinball", "crps"]].mean().to_numpy(), rtol=1e-9)
    assert row["cover80"] == pytest.approx(d["inside"].mean(), rel=1e-12)
    # the point columns are those of the median: the same MSE as the plain last value (Persistence)
    o = bt.overall.set_index("method")
    assert o.loc["Wide band", "mse"] == o.loc["Persistence", "mse"]
    # point forecasts get NaN quantile scores, everywhere
    for frame in (bt.per_origin, bt.per_lead, bt.overall):
        assert frame.loc[frame["method"] != "Wide band", cols].isna().all().all()
    text = bt.summary_text()
    assert "quantile forecasts" in text and "cover80 Wide band" in text and "CRPS Wide band" in text
    assert "cover80 Persistence" not in text

# ---------------------------------------------------------------------------------------------------- refits
@pytest.mark.parametrize("refit, expected", [(False, [0]), (0, [0]), (True, [0, 1, 2, 3, 4, 5, 6]),
                                             (3, [0, 3, 6]), (2, [0, 2, 4, 6]), (7, [0])])
def test_refit_every_n_origins_fits_exactly_there(refit, expected):
    ds = _data()
    times = pd.DatetimeIndex(ds["time"].values)
    counting, mean = _Counting(), _TrainMean()
    bt = cross_validation([counting, mean], ds, n_windows=7, step=5, refit=refit, **GEO)
    rows = origin_rows(len(times), n_windows=7, step=5, seq_len=48, pred_len=12)
    assert counting.fit_ends == [times[rows[k]] for k in expected]
    assert list(bt.fits.query("method == 'Counting'")["k"]) == expected
    # every forecast comes from the latest fit at or before its origin: the mean of the data up to that fit's origin
    raw = ds["temperature"].values.astype(np.float64)
    for k in range(7):
        last = max(e for e in expected if e <= k)
        want = np.nanmean(raw[: rows[last] + 1])
        got = bt.table.loc[bt.table["origin"] == times[rows[k]], "Train mean"].to_numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_method_trained_after_the_first_origin_is_refused():
    ds = _data()
    times = pd.DatetimeIndex(ds["time"].values)
    rows = origin_rows(len(times), n_windows=3, step=6, seq_len=48, pred_len=12)
    late = Persistence().fit(ds)
    late.train_period = (times[0], times[rows[0] + 1])
    with pytest.raises(ValueError, match="after the first origin"):
        cross_validation([late], ds, n_windows=3, step=6, fitted=True, **GEO)
    early = _Counting().fit(ds.isel(time=slice(0, rows[0] + 1)))
    early.train_period = (times[0], times[rows[0]])
    bt = cross_validation([early], ds, n_windows=3, step=6, fitted=True, refit=2, **GEO)
    assert early.fit_ends == [times[rows[0]], times[rows[2]]]  # the given fit, then the refit at origin 2 only
    assert list(bt.fits["kept"]) == [True, False]


# --------------------------------------------------------------------------------------------------- leakage
def _altered_after(ds: xr.Dataset, row: int) -> xr.Dataset:
    """``ds`` with every value after time row ``row`` changed (+30 degC) and some blanked (NaN)."""
    v = ds["temperature"].values.copy()
    v[row + 1:] += 30.0
    v[row + 1::7, 0] = np.nan
    out = ds.copy()
    out["temperature"] = (("time", "station"), v, dict(ds["temperature"].attrs))
    return out


def _assert_no_leak(make: Callable[[], Method], refit: bool | int, n_windows: int = 3, step: int = 24) -> None:
    ds = _data(hours=24 * 40)
    rows = origin_rows(ds.sizes["time"], n_windows=n_windows, step=step, seq_len=48, pred_len=12)
    k = 1  # alter everything after the middle origin
    base = cross_validation([make()], ds, n_windows=n_windows, step=step, refit=refit, **GEO).table
    alt = cross_validation([make()], _altered_after(ds, int(rows[k])), n_windows=n_windows, step=step, refit=refit,
                           **GEO).table
    col = base.columns[-1]
    known = base["origin"] <= pd.Timestamp(ds["time"].values[rows[k]])
    assert known.sum() == (k + 1) * ds.sizes["station"] * 12
    np.testing.assert_array_equal(base.loc[known, col].to_numpy(), alt.loc[known, col].to_numpy())
    assert np.isfinite(base.loc[known, col]).all()
    # ... while the later origins do see the change (the test can fail)
    assert not np.allclose(base.loc[~known, col].to_numpy(), alt.loc[~known, col].to_numpy(), equal_nan=True)


@pytest.mark.parametrize("refit", [False, 1])
@pytest.mark.parametrize("name", ["persistence", "seasonal_naive", "gbdt", "holt_winters"])
def test_no_forecast_changes_when_data_after_its_origin_changes(name, refit):
    kw = {"gbdt": dict(seq_len=48, max_horizon=12, max_iter=20, max_rows=5000, n_threads=1),
          "holt_winters": dict(n_jobs=1, fit_hours=24 * 7, history_hours=24 * 7)}.get(name, {})
    _assert_no_leak(lambda: get_baseline(name, **kw), refit)


@pytest.mark.parametrize("refit", [False, 1])
def test_no_neural_forecast_changes_when_data_after_its_origin_changes(refit):
    def make() -> Method:
        return Forecaster("unireplknet_a", "temperature", **GEO, **TINY)

    ds = _data(hours=24 * 40)
    rows = origin_rows(ds.sizes["time"], n_windows=3, step=24, seq_len=48, pred_len=12)
    fit = dict(schedule="paper", max_steps=4, batch_size=8, progress=False, val_windows=4, seed=0)
    runs = []
    # the torch depthwise path throughout (the own kernels compile lazily); the network is built before fit's seed
    # applies, so the global generator is seeded for each run
    with use_backend("torch"):
        for data in (ds, _altered_after(ds, int(rows[1]))):
            torch.manual_seed(0)
            fc = make()
            runs.append(fc.cross_validation(data, n_windows=3, step=24, refit=refit, refit_max_time=None,
                                            **fit).table)
    known = runs[0]["origin"] <= pd.Timestamp(ds["time"].values[rows[1]])
    np.testing.assert_array_equal(runs[0].loc[known, "unireplknet_a"].to_numpy(),
                                  runs[1].loc[known, "unireplknet_a"].to_numpy())
    assert not np.allclose(runs[0].loc[~known, "unireplknet_a"], runs[1].loc[~known, "unireplknet_a"])


# ------------------------------------------------------------------------------------------ the Forecaster
def test_forecaster_cross_validation_fits_once_then_warm_refits_for_a_bounded_time():
    ds = _data(hours=24 * 20)
    fc = Forecaster("unireplknet_a", "temperature", **GEO, **TINY)
    fit = dict(schedule="paper", max_steps=3, batch_size=8, lr=2e-3, progress=False, val_windows=4, seed=0)
    bt = fc.cross_validation(ds, n_windows=4, step=6, refit=False, baselines=[Persistence()], **fit)
    assert list(bt.fits["method"]) == ["unireplknet_a", "Persistence"]  # one fit each, at the first origin
    rows = origin_rows(ds.sizes["time"], n_windows=4, step=6, seq_len=48, pred_len=12)
    origin_times = pd.DatetimeIndex(ds["time"].values[rows])
    assert origin_times[0] - pd.Timedelta("3D") < fc.train_period[1] < origin_times[0]  # (its val split follows)
    ws = WindowDataset(ds, "temperature", **GEO)
    want = fc.predict_windows(ws, rows - 47)  # (4, 12, S), stations in ws order = the table's
    got = bt.table["unireplknet_a"].to_numpy().reshape(4, ws.num_stations, 12)
    np.testing.assert_array_equal(got, np.swapaxes(want, 1, 2))

    net, first_end = fc.net, fc.train_period[1]
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    bt2 = fc.cross_validation(ds, n_windows=4, step=6, refit=2, refit_max_time=30.0, **{**fit, "lr": 1e-12})
    assert fc.net is net  # trained: kept at the first origin, then warm refits of the same network
    assert list(bt2.fits["kept"]) == [True, False] and list(bt2.fits["k"]) == [0, 2]
    assert fc.train_info["train_config"]["max_time"] == 30.0
    assert first_end < fc.train_period[1] < origin_times[2]  # refitted on the data up to origin 2
    for k, v in net.named_parameters():  # lr ~ 0: the weights continued, not re-initialised
        torch.testing.assert_close(v.detach(), before[k], rtol=1e-5, atol=1e-6)


def test_forecaster_cross_validation_takes_lengths_as_durations():
    fc = Forecaster("unireplknet_a", "temperature", seq_len="48h", label_len="24h", pred_len="12h", **TINY)
    bt = fc.cross_validation(_data(hours=24 * 10), n_windows=2, step=6, schedule="paper", max_steps=1, batch_size=8,
                             progress=False, val_windows=2, seed=0)
    assert (fc.seq_len, fc.label_len, fc.pred_len) == (48, 24, 12)
    assert sorted(bt.table["lead"].unique()) == list(range(1, 13)) and bt.info["seq_len"] == 48


def test_warm_start_needs_the_same_stations():
    ds = _data(hours=24 * 10)
    fc = Forecaster("unireplknet_a", "temperature", **GEO, **TINY)
    fit = dict(schedule="paper", max_steps=1, batch_size=8, progress=False, val_windows=2, seed=0)
    fc.fit(ds, **fit)
    with pytest.raises(ValueError, match="warm_start=True continues the current network"):
        fc.fit(ds.isel(station=[0, 1, 2]), warm_start=True, **fit)


# ------------------------------------------------------------------------------------------------------- CLI
def test_cli_writes_the_table_and_prints_the_summaries(tmp_path):
    ds = _data()
    ds.to_netcdf(tmp_path / "d.nc")
    out = tmp_path / "res" / "table.csv"
    res = CliRunner().invoke(cli, ["backtest", "--data", str(tmp_path / "d.nc"), "--baselines",
                                   "persistence,seasonal_naive", "--n-windows", "4", "--step", "6", "--refit", "2",
                                   "--seq-len", "48", "--label-len", "24", "--pred-len", "12", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "per lead" in res.stdout and "per origin" in res.stdout
    got = pd.read_csv(out, parse_dates=["origin", "target_time"])
    want = cross_validation([Persistence(), get_baseline("seasonal_naive")], ds, n_windows=4, step=6, refit=2,
                            **GEO).table
    assert list(got.columns) == list(want.columns) and len(got) == len(want) == 4 * 4 * 12
    assert (got["origin"].to_numpy() == want["origin"].to_numpy()).all()
    np.testing.assert_allclose(got["Seasonal naive"], want["Seasonal naive"], rtol=1e-6)



def test_cli_quantiles_make_the_baselines_forecast_those_levels(tmp_path):
    """``--quantiles``: the table's quantile columns are what the same baselines built with those levels forecast,
    and the printed summary has their coverage."""
    ds = _data()
    ds.to_netcdf(tmp_path / "d.nc")
    res = CliRunner().invoke(cli, ["backtest", "--data", str(tmp_path / "d.nc"), "--baselines",
                                   "persistence,seasonal_naive", "--n-windows", "4", "--step", "6", "--seq-len", "48",
                                   "--label-len", "24", "--pred-len", "12", "--quantiles", "0.1,0.5,0.9",
                                   "--quiet", "--out", str(tmp_path / "t.csv")])
    assert res.exit_code == 0, res.output
    assert "cover80 Persistence" in res.stdout and "cover80 Seasonal naive" in res.stdout
    got = pd.read_csv(tmp_path / "t.csv")
    levels = (0.1, 0.5, 0.9)
    want = cross_validation([Persistence(quantiles=levels, max_horizon=12),
                             get_baseline("seasonal_naive", quantiles=levels, max_horizon=12)], ds, n_windows=4,
                            step=6, **GEO).table
    for m in ("Persistence", "Seasonal naive"):
        cols = [m] + [f"{m}_q{v:g}" for v in levels]
        np.testing.assert_allclose(got[cols].to_numpy(), want[cols].to_numpy(), rtol=1e-6)
        assert (np.diff(got[cols[1:]].to_numpy(), axis=1) >= 0).all()
        assert (got[f"{m}_q0.9"] > got[f"{m}_q0.1"]).any()

@pytest.mark.parametrize("args, message", [
    (["--n-windows", "40", "--step", "24"], "(--n-windows 40, --step 24) with --seq-len 48 and --pred-len 24 need"),
    (["--n-windows", "2", "--step", "6", "--baselines", "persistence,nope"], "--baselines: unknown baseline(s) nope"),
    (["--n-windows", "2", "--step", "6", "--run", "NOPE"], "--run NOPE"),
    (["--n-windows", "2", "--step", "6", "--data", "NOPE.nc"], "--data NOPE.nc: no such file"),
    (["--n-windows", "2", "--step", "6", "--quantiles", "0.9,0.1"], "--quantiles [0.9, 0.1]: levels must be sorted"),
])
def test_cli_fails_cleanly_without_a_partial_file(tmp_path, args, message):
    _data().to_netcdf(tmp_path / "d.nc")
    args = ["--data", str(tmp_path / "d.nc"), "--baselines", "persistence", *args]
    res = CliRunner().invoke(cli, ["backtest", *args, "--out", str(tmp_path / "t.csv")])
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1 and message in lines[0], res.output
    assert "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.nc"]


def test_cli_backtests_a_saved_model_trained_before_the_first_origin(tmp_path):
    ds = _data(hours=24 * 12)
    ds.to_netcdf(tmp_path / "d.nc")
    rows = origin_rows(ds.sizes["time"], n_windows=3, step=6, seq_len=48, pred_len=12)
    fit = dict(schedule="paper", max_steps=2, batch_size=8, progress=False, val_windows=2, seed=0)
    early = Forecaster("unireplknet_a", "temperature", **GEO, **TINY).fit(ds.isel(time=slice(0, rows[0] + 1)), **fit)
    early.save(tmp_path / "early")
    late = Forecaster("unireplknet_a", "temperature", **GEO, **TINY).fit(ds, **fit)
    late.save(tmp_path / "late")
    base = ["backtest", "--data", str(tmp_path / "d.nc"), "--baselines", "persistence", "--n-windows", "3",
            "--step", "6", "--refit", "2", "--refit-max-time", "5"]
    res = CliRunner().invoke(cli, [*base, "--run", str(tmp_path / "early"), "--out", str(tmp_path / "t.csv")])
    assert res.exit_code == 0, res.output
    got = pd.read_csv(tmp_path / "t.csv")
    assert list(got.columns[5:]) == ["unireplknet_a", "Persistence"] and len(got) == 3 * 4 * 12
    assert got["unireplknet_a"].notna().all()
    res = CliRunner().invoke(cli, [*base, "--run", str(tmp_path / "late"), "--out", str(tmp_path / "u.csv")])
    assert res.exit_code == 1 and "after the first origin" in res.output
    assert "smaller --n-windows or --step" in res.output and not (tmp_path / "u.csv").exists()


def test_cli_checks_the_output_name_first(tmp_path):
    _data().to_netcdf(tmp_path / "d.nc")
    res = CliRunner().invoke(cli, ["backtest", "--data", str(tmp_path / "d.nc"), "--n-windows", "2", "--step", "6",
                                   "--out", str(tmp_path / "t.txt")])
    assert res.exit_code != 0 and "--out" in res.output and not (tmp_path / "t.txt").exists()
