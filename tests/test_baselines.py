"""Shared baseline protocol and the naive baselines (persistence, seasonal naive, climatology)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from urlk_forecast.baselines import BASELINES, Persistence, get_baseline, list_baselines
from urlk_forecast.baselines.base import Baseline, target_times, window_arrays
from urlk_forecast.data.schema import make_dataset
from urlk_forecast.data.windows import WindowDataset
from urlk_forecast.method import Method
from urlk_forecast.metrics import evaluate_arrays, per_horizon

HOURS = 24 * 30


def _dataset(values: np.ndarray, start: str = "2021-03-01") -> object:
    t = pd.date_range(start, periods=values.shape[0], freq="h")
    s = values.shape[1]
    rng = np.random.default_rng(3)
    return make_dataset(t, [f"st{i}" for i in range(s)], rng.uniform(-60, 60, s), rng.uniform(-180, 180, s),
                        rng.uniform(0, 500, s), temperature=values)


def _sinusoid(hours: int = HOURS, s: int = 5) -> np.ndarray:
    t = np.arange(hours)[:, None]
    amp = np.linspace(1.0, 6.0, s)[None]
    phase = np.linspace(0.0, 3.0, s)[None]
    return (10.0 + np.arange(s)[None] + amp * np.sin(2 * np.pi * t / 24 + phase)).astype(np.float32)


def _split(ds: object, n_train: int) -> tuple[object, object]:
    return ds.isel(time=slice(0, n_train)), ds.isel(time=slice(n_train, None))


def test_registry_names_and_errors() -> None:
    assert {"persistence", "seasonal_naive", "climatology", "holt_winters", "prophet_like", "gbdt", "gfs"} <= set(
        list_baselines())
    assert set(list_baselines()) == set(BASELINES)
    assert type(get_baseline("Seasonal-Naive")).__name__ == "SeasonalNaive"
    with pytest.raises(ValueError, match="unknown baseline 'arima'"):
        get_baseline("arima")


def test_seasonal_naive_exact_on_daily_sinusoid() -> None:
    ds = _dataset(_sinusoid())
    train, test = _split(ds, 24 * 20)
    ws = WindowDataset(test, "temperature", seq_len=48, label_len=24, pred_len=36)  # pred_len > one season
    m = get_baseline("seasonal_naive").fit(train)
    pred = m.predict_windows(ws)
    y = window_arrays(ws, np.arange(len(ws)))["y"]
    assert pred.shape == (len(ws), 36, 5) and pred.dtype == np.float32
    np.testing.assert_allclose(pred, y, atol=1e-5)
    res = m.evaluate(ws)
    assert res["mse"] < 1e-10 and res["n_windows"] == len(ws) and res["n_unforecast"] == 0


def test_seasonal_naive_indexing_rule() -> None:
    # lead h (0-based) is x[seq_len - 24 + (h mod 24)]: check on an arbitrary (non-periodic) series
    rng = np.random.default_rng(0)
    ds = _dataset(rng.normal(size=(24 * 10, 3)).astype(np.float32))
    ws = WindowDataset(ds, "temperature", seq_len=30, label_len=0, pred_len=50, order="identity")
    m = get_baseline("seasonal_naive").fit(ds)
    idx = np.array([0, 7, len(ws) - 1])
    x = window_arrays(ws, idx)["x"]
    pred = m.predict_windows(ws, idx)
    for h in range(50):
        np.testing.assert_array_equal(pred[:, h], x[:, 30 - 24 + h % 24])
    with pytest.raises(ValueError, match="seq_len >= its season"):
        m.predict_windows(WindowDataset(ds, "temperature", seq_len=12, label_len=0, pred_len=4), [0])
    with pytest.raises(ValueError, match="whole number of time steps"):
        type(m)(period="90min").fit(ds).predict_windows(ws, [0])


def test_persistence_closed_form_on_ramp() -> None:
    slope = 0.25
    hours = 24 * 8
    vals = (np.arange(hours)[:, None] * slope + np.array([[0.0, 5.0, -3.0]])).astype(np.float32)
    ds = _dataset(vals)
    ws = WindowDataset(ds, "temperature", seq_len=24, label_len=12, pred_len=12)
    m = get_baseline("persistence").fit(ds)
    pred = m.predict_windows(ws)
    x = window_arrays(ws, np.arange(len(ws)))["x"]
    np.testing.assert_array_equal(pred, np.repeat(x[:, -1:], 12, axis=1))
    res = m.evaluate(ws)
    h = np.arange(1, 13)
    assert res["mse"] == pytest.approx(slope**2 * np.mean(h**2), rel=1e-5)
    assert res["mae"] == pytest.approx(slope * np.mean(h), rel=1e-5)


def test_climatology_hour_of_day_means_and_fallback() -> None:
    vals = _sinusoid(24 * 12, 4)
    vals[:, 3] = np.nan  # a station never observed
    vals[np.arange(24 * 12) % 24 == 5, 2] = np.nan  # station 2 never observed at 05 UTC
    ds = _dataset(vals)
    train, test = _split(ds, 24 * 8)
    m = get_baseline("climatology").fit(train)
    assert m.n_params == 24 * 4
    with pytest.warns(UserWarning, match="no temperature observation"):
        ws = WindowDataset(test, "temperature", seq_len=24, label_len=0, pred_len=24, max_gap=0)
    pred = m.predict_windows(ws)
    # independent reference: pandas groupby hour on the training frame, in model order
    frame = pd.DataFrame(train["temperature"].values, index=pd.DatetimeIndex(train["time"].values),
                         columns=[str(s) for s in train["station"].values])
    clim = frame.groupby(frame.index.hour).mean()
    overall = frame.mean()
    clim = clim.reindex(range(24)).fillna(overall)
    hours = pd.DatetimeIndex(target_times(ws, np.arange(len(ws))).ravel()).hour.to_numpy()
    ref = clim.loc[hours, list(ws.station_ids)].to_numpy().reshape(len(ws), 24, 4)
    np.testing.assert_allclose(pred, ref, rtol=1e-6, equal_nan=True)
    col2 = list(ws.station_ids).index("st2")
    assert np.isfinite(pred[..., col2]).all()  # 05 UTC falls back to the station mean
    assert np.isnan(pred[..., list(ws.station_ids).index("st3")]).all()  # never a silent zero
    # on the observed stations the pure sinusoid is reproduced except at st2's missing hour
    y = window_arrays(ws, np.arange(len(ws)))["y"]
    ok = [list(ws.station_ids).index(s) for s in ("st0", "st1")]
    np.testing.assert_allclose(pred[..., ok], y[..., ok], atol=1e-4)


def test_station_order_is_model_order() -> None:
    ds = _dataset(_sinusoid(24 * 10, 6))
    m = get_baseline("climatology").fit(ds)
    ws_h = WindowDataset(ds, "temperature", seq_len=24, label_len=0, pred_len=6)  # Hilbert order
    ws_i = WindowDataset(ds, "temperature", seq_len=24, label_len=0, pred_len=6, order="identity")
    assert list(ws_h.station_ids) != list(ws_i.station_ids)
    p_h = m.predict_windows(ws_h, [3])
    p_i = m.predict_windows(ws_i, [3])
    np.testing.assert_array_equal(ws_h.to_dataset_order(p_h), p_i)


def test_evaluate_matches_full_metrics_in_batches() -> None:
    rng = np.random.default_rng(1)
    vals = (_sinusoid(24 * 15, 4) + rng.normal(0, 1, (24 * 15, 4))).astype(np.float32)
    vals[rng.random(vals.shape) < 0.2] = np.nan  # gaps: long ones are masked targets
    ds = _dataset(vals)
    ws = WindowDataset(ds, "temperature", seq_len=48, label_len=24, pred_len=24, max_gap=1)
    m = get_baseline("persistence").fit(ds)
    idx = np.arange(len(ws))
    arrs = window_arrays(ws, idx)
    full = evaluate_arrays(m.predict_windows(ws), arrs["y"], arrs["y_mask"])
    res = m.evaluate(ws, batch_size=7)  # the one scorer, in chunks of 7 windows
    assert res["mse"] == pytest.approx(full["mse"], rel=1e-9)
    assert res["mae"] == pytest.approx(full["mae"], rel=1e-9)
    assert res["n_windows"] == full["windows"] and res["n_points"] == full["count"]
    assert res.coverage == 1.0 and res.n_unforecast == 0
    # float64 recomputation of the Corrformer averaging by hand
    p, y, mk = m.predict_windows(ws).astype(np.float64), arrs["y"].astype(np.float64), arrs["y_mask"]
    per_window = [np.mean((p[i] - y[i])[mk[i]] ** 2) for i in range(len(ws)) if mk[i].any()]
    assert res["mse"] == pytest.approx(np.mean(per_window), rel=1e-9)
    # per lead: the chunked scores equal the metrics on all windows at once
    ref = per_horizon(m.predict_windows(ws), arrs["y"], arrs["y_mask"])
    np.testing.assert_allclose(res.per_lead["mse"], ref["mse"], rtol=1e-9)
    np.testing.assert_allclose(res.per_lead["mae"], ref["mae"], rtol=1e-9)
    assert list(res.per_lead["lead"]) == list(range(1, 25))


class _Holey(Persistence):
    """Persistence without a forecast for station 0 at lead 1."""

    name = "holey persistence"

    def predict_windows(self, ws: object, indices: object = None) -> np.ndarray:
        p = super().predict_windows(ws, indices)
        p[:, 0, 0] = np.nan
        return p


def test_unforecast_points_are_counted_not_hidden() -> None:
    ds = _dataset(_sinusoid(24 * 6, 3))
    ws = WindowDataset(ds, "temperature", seq_len=24, label_len=0, pred_len=4)
    res = _Holey().fit(ds).evaluate(ws)
    assert res["n_unforecast"] == len(ws)
    assert np.isfinite(res["mse"])
    observed = len(ws) * 4 * 3
    assert res.n_points == observed - len(ws) and res.coverage == pytest.approx(1 - len(ws) / observed)


def test_baselines_follow_the_method_contract() -> None:
    ds = _dataset(_sinusoid(24 * 6, 3))
    for name in ("persistence", "seasonal_naive", "climatology"):
        m = get_baseline(name)
        assert isinstance(m, Baseline) and isinstance(m, Method) and m.variable == "temperature"
        assert m.fit_seconds is None
        assert m.fit(ds, val=ds) is m  # val is accepted and ignored
        assert m.fit_seconds is not None and m.fit_seconds >= 0.0  # fit times itself
        d = m.describe()
        assert d == {"method": m.name, "type": "statistical", "parameters": m.n_params, "fit_s": m.fit_seconds}
    wind = ds.rename({"temperature": "wind_speed"})
    m = get_baseline("Seasonal Naive", variable="wind_speed", period="12h").fit(wind)
    assert m.variable == "wind_speed" and m.period == "12h"
    with pytest.raises(ValueError, match="forecasts 'wind_speed' but the windows are 'temperature'"):
        m.predict_windows(WindowDataset(ds, "temperature", seq_len=24, label_len=0, pred_len=4))
    with pytest.raises(TypeError, match=r"constructor setting: Persistence\(variable=...\)"):
        Persistence().fit(ds, "temperature")  # the old fit(train, variable) call says what to do


def test_protocol_errors_are_clear() -> None:
    ds = _dataset(_sinusoid(24 * 6, 3))
    ws = WindowDataset(ds, "temperature", seq_len=24, label_len=0, pred_len=4)
    with pytest.raises(RuntimeError, match="call fit"):
        get_baseline("persistence").predict_windows(ws)
    with pytest.raises(ValueError, match="variable 'wind_speed' not in the training data"):
        get_baseline("persistence", variable="wind_speed").fit(ds)
    other = _dataset(_sinusoid(24 * 6, 2))
    m = get_baseline("persistence").fit(other.assign_coords(station=["a", "b"]))
    with pytest.raises(ValueError, match="not fitted on 3 of the window dataset's stations"):
        m.predict_windows(ws)
    m = get_baseline("persistence").fit(ds)
    with pytest.raises(IndexError, match="out of range"):
        m.predict_windows(ws, [len(ws)])
