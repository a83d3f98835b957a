"""Prophet-like model: planted trend and seasonality are recovered; agreement with the real Prophet if installed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from urlk_forecast.baselines import ProphetLike
from urlk_forecast.baselines.base import window_arrays
from urlk_forecast.baselines.prophet_like import fourier_terms, prophet_available
from urlk_forecast.data.schema import make_dataset
from urlk_forecast.data.windows import WindowDataset

T_TRAIN = 24 * 120
T_ALL = T_TRAIN + 24 * 10


def _planted(S: int = 8, noise: float = 0.3, seed: int = 0) -> tuple[object, dict[str, np.ndarray]]:
    """Truth built independently of the model code: a piecewise-linear trend with one kink + daily/weekly waves."""
    rng = np.random.default_rng(seed)
    times = pd.date_range("2021-01-04", periods=T_ALL, freq="h")
    days = (times - pd.Timestamp("1970-01-01")) / pd.Timedelta("1D")
    t = np.arange(T_ALL) / (T_TRAIN - 1)  # the model scales training time to [0, 1]
    kink = 0.5
    m0 = rng.uniform(5, 15, S)
    k0 = rng.uniform(-3, 3, S)
    dk = rng.uniform(-4, 4, S)
    trend = m0 + k0 * t[:, None] + dk * np.maximum(t[:, None] - kink, 0.0)
    a_d = rng.uniform(2, 5, S)  # daily amplitude
    p_d = rng.uniform(0, 2 * np.pi, S)
    a_w = rng.uniform(0.5, 1.5, S)
    daily = a_d * np.sin(2 * np.pi * days.to_numpy()[:, None] + p_d)
    weekly = a_w * np.cos(2 * np.pi * days.to_numpy()[:, None] / 7)
    clean = trend + daily + weekly
    vals = clean + noise * rng.normal(size=clean.shape)
    vals[rng.random(vals.shape) < 0.15] = np.nan  # scattered missing data, different per station
    ds = make_dataset(times, [f"p{i}" for i in range(S)], np.linspace(-40, 40, S), np.linspace(0, 300, S),
                      temperature=vals.astype(np.float32))
    truth = {"trend": trend, "clean": clean, "a_d": a_d, "p_d": p_d, "a_w": a_w, "times": times.values}
    return ds, truth


def test_recovers_planted_trend_and_seasonality() -> None:
    ds, truth = _planted()
    train = ds.isel(time=slice(0, T_TRAIN))
    model = ProphetLike(yearly_order=0, n_changepoints=25, recent_hours=None).fit(train)
    cols = model.columns
    coef = model.coef * model.y_scale  # physical units
    # daily wave a sin(w t + p) = a cos(p) sin(w t) + a sin(p) cos(w t): first-harmonic coefficients
    np.testing.assert_allclose(coef[cols.index("daily_sin1")], truth["a_d"] * np.cos(truth["p_d"]), atol=0.05)
    np.testing.assert_allclose(coef[cols.index("daily_cos1")], truth["a_d"] * np.sin(truth["p_d"]), atol=0.05)
    np.testing.assert_allclose(coef[cols.index("weekly_cos1")], truth["a_w"], atol=0.08)
    for name in ("daily_sin2", "daily_cos3", "weekly_sin2", "weekly_cos3"):
        assert np.abs(coef[cols.index(name)]).max() < 0.06
    # the trend (intercept + slope + changepoint ramps) reproduces the planted piecewise-linear trend
    A = model.design(truth["times"][:T_TRAIN])
    ntr = 2 + model.n_changepoints
    fitted_trend = A[:, :ntr] @ coef[:ntr]
    err = np.abs(fitted_trend - truth["trend"][:T_TRAIN])
    assert err.mean() < 0.05 and err.max() < 0.35
    # the noise scale is estimated (residual std, physical units)
    np.testing.assert_allclose(model.sigma * model.y_scale, 0.3, rtol=0.1)
    # forecasts on windows after the training period follow the clean signal (trend extrapolated by its last slope)
    test = ds.isel(time=slice(T_TRAIN - 48, None))
    ws = WindowDataset(test, "temperature", seq_len=48, label_len=0, pred_len=24, order="identity")
    pred = model.predict_windows(ws)
    starts = np.arange(len(ws)) + T_TRAIN - 48 + 48
    clean = np.stack([truth["clean"][s : s + 24] for s in starts])
    assert np.abs(pred - clean).mean() < 0.15
    assert model.n_params == (len(cols) + 1) * 8


def test_level_adjustment_removes_a_level_shift() -> None:
    ds, truth = _planted(S=3, noise=0.0)
    train = ds.isel(time=slice(0, T_TRAIN))
    test = ds.isel(time=slice(T_TRAIN, None)).copy(deep=True)
    test["temperature"].values[:] += 4.0  # a regime change the trend cannot know about
    plain = ProphetLike(yearly_order=0, recent_hours=None).fit(train)
    adj = ProphetLike(yearly_order=0, adjust_level=True).fit(train)
    ws = WindowDataset(test, "temperature", seq_len=48, label_len=0, pred_len=24)
    assert plain.evaluate(ws)["mae"] > 3.5
    assert adj.evaluate(ws)["mae"] < 0.2
    assert adj.name != plain.name
    # conditioning on the recent 72 h follows the shifted level, too (from the second day of the test period on)
    recent = ProphetLike(yearly_order=0).fit(train)
    later = np.arange(len(ws))[np.arange(len(ws)) >= 72]
    assert recent.evaluate(ws, later)["mae"] < 0.5 and plain.evaluate(ws, later)["mae"] > 3.5  # weekly wave: 72 h


def test_fourier_terms_and_unfitted_station() -> None:
    times = pd.date_range("2000-01-01", periods=48, freq="h").values
    f = fourier_terms(times, 1.0, 2)
    days = (times.astype("datetime64[ns]").astype(np.int64) / 86_400e9)
    np.testing.assert_allclose(f[:, 0], np.sin(2 * np.pi * days), atol=1e-9)
    np.testing.assert_allclose(f[:, 3], np.cos(4 * np.pi * days), atol=1e-9)
    ds, _ = _planted(S=3)
    ds["temperature"].values[:, 1] = np.nan
    with pytest.warns(RuntimeWarning, match="1 of 3 stations"):
        model = ProphetLike(yearly_order=0, recent_hours=None).fit(ds.isel(time=slice(0, T_TRAIN)))
    assert np.isnan(model.coef[:, 1]).all() and np.isfinite(model.coef[:, [0, 2]]).all()
    # 120 days of history cannot identify a yearly Fourier series: it is dropped (orders_), not extrapolated wildly
    with pytest.warns(RuntimeWarning, match="fewer than"):
        auto = ProphetLike(recent_hours=None).fit(ds.isel(time=slice(0, T_TRAIN)))
    assert auto.orders_ == {"daily": 4, "weekly": 3, "yearly": 0} and not any("yearly" in c for c in auto.columns)


@pytest.mark.skipif(not prophet_available(), reason="the real prophet package is not installed")
def test_agrees_with_real_prophet() -> None:
    from urlk_forecast.baselines import ProphetReal

    ds, truth = _planted(S=2, noise=0.3, seed=4)
    train = ds.isel(time=slice(0, T_TRAIN))
    test = ds.isel(time=slice(T_TRAIN - 48, None))
    ws = WindowDataset(test, "temperature", seq_len=48, label_len=0, pred_len=24, order="identity")
    kw = {"yearly_order": 10}  # dropped by both: 120 days of history (min_periods rule)
    real = ProphetReal(stations=None, **kw).fit(train)
    assert real.kwargs_["yearly_seasonality"] is False
    own = ProphetLike(recent_hours=None, **kw).fit(train)
    p_real, p_own = real.predict_windows(ws), own.predict_windows(ws)
    assert np.isfinite(p_real).all()
    # same model, different prior on the deltas (Laplace vs Gaussian) and solver: forecasts nearly agree
    assert np.abs(p_real - p_own).mean() < 0.05
    y = window_arrays(ws, np.arange(len(ws)))
    e_real = real.evaluate(ws)["mae"]
    e_own = own.evaluate(ws)["mae"]
    assert abs(e_real - e_own) < 0.02 and np.isfinite(y["y"]).any()
    assert real.n_params == (3 + 25 + 2 * (4 + 3)) * 2


def test_flat_direction_ridge_tames_an_unobserved_season() -> None:
    """A 4-month outage in the only year of history: the exact MAP (flat_ridge=0) puts wild harmonics there."""
    rng = np.random.default_rng(0)
    T = 24 * 500
    times = pd.date_range("2019-01-01", periods=T, freq="h")
    days = np.arange(T) / 24
    clean = 10 + 12 * np.sin(2 * np.pi * days / 365.25) + 4 * np.sin(2 * np.pi * days)
    y = clean + rng.normal(0, 1.0, T) + np.cumsum(rng.normal(0, 0.05, T))
    gap = slice(24 * 190, 24 * 310)
    y[gap] = np.nan
    ds = make_dataset(times, ["a"], [0.0], [0.0], temperature=y[:, None].astype(np.float32))
    err = {}
    for fr in (0.0, 1e-4):
        f = ProphetLike(flat_ridge=fr, recent_hours=None).fit(ds).fitted_function(times.values)[:, 0]
        err[fr] = (np.abs(f[gap] - clean[gap]).mean(), np.nanmean(np.abs(f - y)))
    assert err[0.0][0] > 50 and err[1e-4][0] < 20 and err[1e-4][0] < 0.2 * err[0.0][0]
    assert err[1e-4][1] < 1.05 * err[0.0][1]  # the observed part is fitted as well as before


def _history_ds(ds, origin: int, hours: int):  # the ``hours`` observed steps before ``origin``, as their own dataset
    return ds.isel(time=slice(origin - hours, origin))


def test_recent_refit_is_the_fit_on_the_history_before_each_origin() -> None:
    """Independent reference: the fit-once model (its own code path) fitted on exactly the 72 h before an origin,
    with Prophet's linear trend continuation, forecasts what the per-origin refit forecasts; and altering anything
    at or after an origin leaves that origin's forecast unchanged (no leakage)."""
    ds, _ = _planted(S=3, noise=0.3, seed=2)
    train = ds.isel(time=slice(0, T_TRAIN))
    test = ds.isel(time=slice(T_TRAIN - 48, None))
    ws = WindowDataset(test, "temperature", seq_len=48, label_len=0, pred_len=24, order="identity")
    recent = ProphetLike(recent_trend="linear").fit(train)
    assert recent.recent_hours == 72 and recent.recent_trend == "linear"
    idx = np.array([0, 30, 100])
    pred = recent.predict_windows(ws, idx)
    for n, i in enumerate(idx):
        origin = T_TRAIN + int(i)  # row of the window's first target in ``ds``
        once = ProphetLike(recent_hours=None, yearly_order=10).fit(_history_ds(ds, origin, 72))
        assert once.orders_ == {"daily": 4, "weekly": 0, "yearly": 0}
        ref = once.fitted_function(ds["time"].values[origin : origin + 24])
        np.testing.assert_allclose(pred[n], ref, atol=2e-3)
    changed = test.copy(deep=True)
    changed["temperature"].values[48 + 100 :] += 50.0  # everything from window 100's origin on
    ws2 = WindowDataset(changed, "temperature", seq_len=48, label_len=0, pred_len=24, order="identity")
    np.testing.assert_array_equal(recent.predict_windows(ws2, idx), pred)


def test_recent_refit_trend_continuations() -> None:
    """flat holds the trend's last value, damped adds a geometric sum of its last slope, linear its full slope."""
    times = pd.date_range("2021-01-01", periods=24 * 20, freq="h")
    y = 0.1 * np.arange(times.size)  # a pure ramp: trend slope 0.1 per step, no seasonality
    ds = make_dataset(times, ["a"], [0.0], [0.0], temperature=y[:, None].astype(np.float32))
    ws = WindowDataset(ds.isel(time=slice(24 * 10, None)), "temperature", seq_len=48, label_len=0, pred_len=24)
    train = ds.isel(time=slice(0, 24 * 10))
    truth = window_arrays(ws, np.array([5]))["y"][0, :, 0]
    last = truth[0] - 0.1  # the value at the last history step
    k = np.arange(1, 25)
    expect = {"flat": np.full(24, last), "linear": last + 0.1 * k,
              "damped": last + 0.1 * np.cumsum(0.8 ** k)}
    for mode, want in expect.items():
        got = ProphetLike(recent_trend=mode, n_changepoints=0, daily_order=0, weekly_order=0,
                          yearly_order=0).fit(train).predict_windows(ws, [5])[0, :, 0]
        np.testing.assert_allclose(got, want, atol=0.02, err_msg=mode)
    with pytest.raises(ValueError, match="recent_trend"):
        ProphetLike(recent_trend="cubic")
    with pytest.raises(ValueError, match="recent_hours"):
        ProphetLike(recent_hours=2)


@pytest.mark.skipif(not prophet_available(), reason="the real prophet package is not installed")
def test_recent_refit_agrees_with_real_prophet_fitted_the_same_way() -> None:
    """Real Prophet fitted on the 72 h before each origin (its own linear trend continuation) vs the batched refit."""
    from urlk_forecast.baselines import ProphetReal

    ds, _ = _planted(S=2, noise=0.3, seed=4)
    train = ds.isel(time=slice(0, T_TRAIN))
    test = ds.isel(time=slice(T_TRAIN - 48, None))
    ws = WindowDataset(test, "temperature", seq_len=48, label_len=0, pred_len=24, order="identity")
    own = ProphetLike(recent_trend="linear").fit(train)
    for i in (10, 120):
        origin = T_TRAIN + i
        real = ProphetReal(stations=None).fit(_history_ds(ds, origin, 72))
        p_real = real.predict_windows(ws, [i])
        p_own = own.predict_windows(ws, [i])
        assert np.isfinite(p_real).all()
        # Laplace vs Gaussian prior on the deltas: the linear continuations of the last slope differ slightly
        assert np.abs(p_real - p_own).mean() < 0.25, (i, np.abs(p_real - p_own).mean())
