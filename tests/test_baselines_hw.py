"""Holt-Winters: own filters against statsmodels, parallel per-station fits, history-conditioned window forecasts."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from urlk_forecast.baselines import HoltWinters, Persistence
from urlk_forecast.baselines.holt_winters import fit_series, history_init, hw_filter
from urlk_forecast.data.schema import make_dataset
from urlk_forecast.data.windows import WindowDataset, split_dataset


def _series(n: int = 400, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 10 + 0.01 * t + 5 * np.sin(2 * np.pi * t / 24) + np.cumsum(rng.normal(0, 0.3, n)) + rng.normal(0, 0.5, n)


def _statsmodels_fix_mask(sm: np.ndarray, ref: np.ndarray, m: int) -> np.ndarray:
    """Leads to compare with statsmodels' forecast: at h = m, 2m, ... statsmodels <= 0.15 reuses the seasonal state of
    one cycle earlier (statsmodels issue #9538, fixed upstream by PR #10230); compare there too once it is fixed."""
    h = sm.shape[0]
    steps = np.arange(1, h + 1)
    fixed = np.allclose(sm[m - 1], ref[m - 1], rtol=0.0, atol=1e-8)
    return np.ones(h, bool) if fixed else (steps % m != 0)


@pytest.mark.parametrize("damped", [True, False])
@pytest.mark.parametrize("init", ["estimated", "heuristic"])
def test_filter_matches_statsmodels_forecast(init: str, damped: bool) -> None:
    y = _series()
    m, h = 24, 60
    res = fit_series(y, m, init, damped=damped)
    p = res.params
    phi = float(p["damping_trend"]) if damped else 1.0
    fc = hw_filter(y, p["smoothing_level"], p["smoothing_trend"], p["smoothing_seasonal"], p["initial_level"],
                   p["initial_trend"], p["initial_seasons"], h, phi=phi)
    # independent reference 1: the textbook forecast from statsmodels' own final states
    # yhat_{T+h} = l_T + (phi + ... + phi^h) b_T + s_{T+h-m(k+1)}, k = floor((h-1)/m)   (Hyndman & Athanasopoulos)
    lvl, trd, seas = res.level[-1], res.trend[-1], np.asarray(res.season)
    steps = np.arange(1, h + 1)
    k = (steps - 1) // m
    ref = lvl + np.cumsum(phi ** steps) * trd + seas[len(y) + steps - m * (k + 1) - 1]
    np.testing.assert_allclose(fc, ref, atol=1e-6)
    # reference 2: statsmodels' forecast itself
    sm = np.asarray(res.forecast(h))
    sel = _statsmodels_fix_mask(sm, ref, m)
    np.testing.assert_allclose(fc[sel], sm[sel], atol=1e-6)
    if damped:
        assert 0.8 <= phi <= 0.995  # statsmodels' bounds


def test_filter_vectorised_equals_loop_and_nan_propagates_states() -> None:
    rng = np.random.default_rng(0)
    y = np.stack([_series(120, s) for s in range(6)], axis=1)  # (T, 6)
    alpha, beta, gamma = rng.uniform(0.05, 0.6, 6), rng.uniform(0.0, 0.2, 6), rng.uniform(0.0, 0.4, 6)
    phi = rng.uniform(0.8, 1.0, 6)
    s0 = rng.normal(0, 2, (24, 6))
    l0, b0 = rng.normal(10, 1, 6), rng.normal(0, 0.1, 6)
    fc = hw_filter(y, alpha, beta, gamma, l0, b0, s0, 30, phi=phi)
    for j in range(6):
        one = hw_filter(y[:, j], alpha[j], beta[j], gamma[j], l0[j], b0[j], s0[:, j], 30, phi=phi[j])
        np.testing.assert_allclose(fc[:, j], one, rtol=1e-12)
    # a missing input propagates the states: forecasting from the prefix with h steps equals filtering the prefix
    # followed by NaNs, then forecasting the rest (damped trend included)
    yn = y[:, 0].copy()
    yn[100:] = np.nan
    a = hw_filter(yn, alpha[0], beta[0], gamma[0], l0[0], b0[0], s0[:, 0], 10, phi=phi[0])
    b = hw_filter(y[:100, 0], alpha[0], beta[0], gamma[0], l0[0], b0[0], s0[:, 0], 30, phi=phi[0])[20:]
    np.testing.assert_allclose(a, b, rtol=1e-12)


def _station_dataset(hours: int, s: int, noise: float = 0.0, seed: int = 0) -> object:
    rng = np.random.default_rng(seed)
    t = np.arange(hours)[:, None]
    vals = 15 + 0.002 * t * np.arange(1, s + 1) + np.linspace(2, 6, s) * np.sin(2 * np.pi * t / 24 + np.arange(s))
    vals = vals + noise * rng.normal(size=vals.shape)
    times = pd.date_range("2020-05-01", periods=hours, freq="h")
    return make_dataset(times, [f"s{i}" for i in range(s)], np.linspace(-50, 50, s), np.linspace(-170, 170, s),
                        temperature=vals.astype(np.float32))


def test_forecasts_clean_seasonal_trend_series() -> None:
    ds = _station_dataset(24 * 40, 4)
    train, test = ds.isel(time=slice(0, 24 * 30)), ds.isel(time=slice(24 * 30, None))
    hw = HoltWinters(n_jobs=1).fit(train)
    assert hw.fit_fallbacks == 0 and hw.n_params == (4 + 24) * 4
    ws = WindowDataset(test, "temperature", seq_len=48, label_len=24, pred_len=24)
    res = hw.evaluate(ws)
    # a noise-free daily cycle + slow trend is (nearly) exactly representable by additive Holt-Winters
    assert res["mae"] < 0.1, res
    # and far better than persistence
    assert res["mse"] < 0.01 * Persistence().fit(train).evaluate(ws)["mse"]


def _reference_forecast(hw: HoltWinters, series: np.ndarray, times: pd.DatetimeIndex, origin: int, j: int,
                        hours: int, h: int = 24) -> np.ndarray:
    """The numpy filter on ``series[origin - hours:origin]`` from :func:`history_init` states (station ``j``)."""
    hist = series[origin - hours : origin].astype(np.float64)
    ph = (np.asarray(times[origin - hours : origin - hours + 24], "datetime64[h]").astype(np.int64)) % 24
    l0, b0, s0 = history_init(hist, hw.profile[j, ph])
    a, b, g = hw.smoothing[j]
    return hw_filter(hist, a, b, g, l0, b0, s0, h, phi=hw.damping[j])


def test_parallel_fit_equals_serial_and_window_forecast_filters_the_history() -> None:
    ds = _station_dataset(24 * 70, 5, noise=0.5, seed=2)
    vals = ds["temperature"].values
    vals[24 * 30 : 24 * 30 + 7, 1] = np.nan  # a gap in the kept training tail: its steps only propagate the states
    vals[24 * 50 + 3 : 24 * 50 + 20, 2] = np.nan  # a long gap in the window source's own series
    ds["temperature"].values[:] = vals
    train, test = ds.isel(time=slice(0, 24 * 42)), ds.isel(time=slice(24 * 42 - 48, None))
    serial = HoltWinters(n_jobs=1, fit_hours=24 * 14, history_hours=24 * 21).fit(train)
    par = HoltWinters(n_jobs=2, fit_hours=24 * 14, history_hours=24 * 21).fit(train)
    np.testing.assert_allclose(par.params, serial.params, rtol=1e-10)
    assert (serial.damping >= 0.8).all() and (serial.damping <= 0.995).all()
    # each window's forecast is the numpy filter over the 3 weeks before its origin: for the first windows that
    # history is mostly the kept training tail, later it is the window source's own series
    ws = WindowDataset(test, "temperature", seq_len=48, label_len=0, pred_len=24, order="identity")
    series = ds["temperature"].values
    times = pd.DatetimeIndex(ds["time"].values)
    for i in (0, 7, 200, len(ws) - 1):
        pred = serial.predict_windows(ws, [i])[0]
        origin = 24 * 42 + i
        ref = np.stack([_reference_forecast(serial, series[:, j], times, origin, j, 24 * 21) for j in range(5)], 1)
        np.testing.assert_allclose(pred, ref, rtol=1e-6, atol=2e-6)
    # batches and single windows agree; no value at or after the origin is read: changing the future changes nothing
    both = serial.predict_windows(ws, [7, 200])
    np.testing.assert_array_equal(both[1], serial.predict_windows(ws, [200])[0])
    cut = WindowDataset(ds.isel(time=slice(24 * 42 - 48, 24 * 42 + 200 + 48)), "temperature", seq_len=48,
                        label_len=0, pred_len=24, order="identity")
    np.testing.assert_array_equal(serial.predict_windows(cut, [200])[0], both[1])


def test_history_from_validation_and_window_only_sources() -> None:
    ds = _station_dataset(24 * 60, 2, noise=0.4, seed=3)
    train, val, test = (ds.isel(time=slice(0, 24 * 30)), ds.isel(time=slice(24 * 30, 24 * 45)),
                        ds.isel(time=slice(24 * 45 - 48, None)))
    hw_val = HoltWinters(n_jobs=1, history_hours=24 * 10).fit(train, val)
    hw = HoltWinters(n_jobs=1, history_hours=24 * 10).fit(train)
    np.testing.assert_array_equal(hw.params, hw_val.params)  # val only extends the history, never the fit
    ws = WindowDataset(test, "temperature", seq_len=48, label_len=0, pred_len=24, order="identity")
    series, times = ds["temperature"].values, pd.DatetimeIndex(ds["time"].values)
    ref = np.stack([_reference_forecast(hw, series[:, j], times, 24 * 45, j, 24 * 10) for j in range(2)], 1)
    np.testing.assert_allclose(hw_val.predict_windows(ws, [0])[0], ref, rtol=1e-6, atol=2e-6)
    # without the validation split the first test window has only its 48 inputs before the origin
    short = np.stack([_reference_forecast(hw, series[:, j], times, 24 * 45, j, 48) for j in range(2)], 1)
    np.testing.assert_allclose(hw.predict_windows(ws, [0])[0], short, rtol=1e-6, atol=2e-6)

    class OnlyWindows:  # a WindowSource without a series: each window's own inputs are its whole history
        def __init__(self, inner: WindowDataset) -> None:
            self._w = inner
            for a in ("variable", "units", "seq_len", "label_len", "pred_len", "station_ids", "times",
                      "window_start_times", "num_stations"):
                setattr(self, a, getattr(inner, a))

        def __len__(self) -> int:
            return len(self._w)

        def batch(self, indices: object) -> dict:
            return self._w.batch(indices)

    bare = OnlyWindows(ws)
    got = hw_val.predict_windows(bare, [0, 300])
    for n, i in enumerate((0, 300)):
        ref = np.stack([_reference_forecast(hw, series[:, j], times, 24 * 45 + i, j, 48) for j in range(2)], 1)
        np.testing.assert_allclose(got[n], ref, rtol=1e-6, atol=2e-6)


def test_fallback_for_sparse_station_and_errors() -> None:
    ds = _station_dataset(24 * 20, 3, noise=0.3)
    vals = ds["temperature"].values.copy()
    vals[:, 2] = np.nan
    vals[::50, 2] = 12.0  # far too few observations to fit
    ds["temperature"].values[:] = vals
    with pytest.warns(RuntimeWarning, match="1 of 3 stations could not be fitted"):
        hw = HoltWinters(n_jobs=1, fit_hours=24 * 10).fit(ds)
    assert hw.fit_fallbacks == 1
    np.testing.assert_allclose(hw.smoothing[2], np.median(hw.smoothing[:2], axis=0))
    np.testing.assert_allclose(hw.damping[2], np.median(hw.damping[:2]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = WindowDataset(ds, "temperature", seq_len=48, label_len=0, pred_len=12, max_gap=60)
    pred = hw.predict_windows(ws, [0, 1, 300])
    assert pred.dtype == np.float32 and np.isfinite(pred[:, :, :2]).all()
    with pytest.raises(ValueError, match="fit_hours >= 3"):
        HoltWinters(fit_hours=30)
    with pytest.raises(ValueError, match="history_hours"):
        HoltWinters(history_hours=0)
    assert HoltWinters(damped=False).name != HoltWinters().name


# ------------------------------------------------------------------------------------------ real data (offline)
def _agree_with_statsmodels(name: str, variable: str, limit: int | None) -> tuple[int, float]:
    """Our forecasts on the validation windows of a real series vs statsmodels ``ExponentialSmoothing`` run with the
    same parameters and initial states (``initialization_method="known"``, ``optimized=False``) on the same 4-week
    history, for every (window, station) whose history is fully observed (statsmodels takes no NaN); returns
    (pairs compared, largest |difference|)."""
    import xarray as xr
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    from urlk_forecast.data.real_samples import load_series

    parts = split_dataset(load_series(name), context=48)
    hours = 672
    hw = HoltWinters(n_jobs=1, history_hours=hours, variable=variable).fit(parts["train"])
    c = int(parts["val"].attrs["split_context"])
    whole = xr.concat([parts["train"], parts["val"].isel(time=slice(c, None))], dim="time")
    series, times = whole[variable].transpose("time", "station").values, pd.DatetimeIndex(whole["time"].values)
    ws = WindowDataset(parts["val"], variable, seq_len=48, label_len=0, pred_len=24, order="identity")
    pairs = []
    for i in range(len(ws)):
        o = int(times.get_loc(ws.forecast_start_times[i]))
        pairs += [(i, o, j) for j in range(ws.num_stations) if np.isfinite(series[o - hours : o, j]).all()]
    if limit:
        pairs = [pairs[k] for k in np.unique(np.linspace(0, len(pairs) - 1, limit).round().astype(int))]
    worst = 0.0
    for i, o, j in pairs:
        hist = series[o - hours : o, j].astype(np.float64)
        ph = np.asarray(times[o - hours : o - hours + 24], "datetime64[h]").astype(np.int64) % 24
        l0, _, s0 = history_init(hist, hw.profile[j, ph])
        a, b, g = hw.smoothing[j]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sm = ExponentialSmoothing(hist, trend="add", damped_trend=True, seasonal="add", seasonal_periods=24,
                                      initialization_method="known", initial_level=float(l0), initial_trend=0.0,
                                      initial_seasonal=s0)
            ref = np.asarray(sm.fit(smoothing_level=a, smoothing_trend=b, smoothing_seasonal=g,
                                    damping_trend=hw.damping[j], optimized=False).forecast(24))
        ours = hw.predict_windows(ws, [i])[0, :, j]
        textbook = _reference_forecast(hw, series[:, j], times, o, j, hours)
        np.testing.assert_allclose(ours, textbook, rtol=1e-6, atol=2e-6)
        sel = _statsmodels_fix_mask(ref, textbook, 24)
        np.testing.assert_allclose(ours[sel], ref[sel], rtol=1e-6, atol=2e-6)
        worst = max(worst, float(np.abs(ours[sel] - ref[sel]).max()))
    return len(pairs), worst


def test_agrees_with_statsmodels_on_a_real_tmy3_station() -> None:
    pytest.importorskip("pvlib")
    n, worst = _agree_with_statsmodels("tmy3", "temperature", limit=4)
    assert n == 4 and worst < 2e-6


@pytest.mark.slow
@pytest.mark.parametrize("name,variable", [("tmy3", "temperature"), ("tmy3", "wind_speed"),
                                           ("vega", "temperature")])
def test_agrees_with_statsmodels_on_real_series(name: str, variable: str) -> None:
    pytest.importorskip("pvlib" if name == "tmy3" else "vega_datasets")
    n, worst = _agree_with_statsmodels(name, variable, limit=None)
    assert n >= 20 and worst < 2e-6
