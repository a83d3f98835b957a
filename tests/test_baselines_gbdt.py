"""GBDT baseline: beats persistence on a lagged signal; features are what they claim to be."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from urlk_forecast.baselines import GBDT, Persistence, SeasonalNaive
from urlk_forecast.baselines.base import window_arrays
from urlk_forecast.baselines.gbdt import Forest
from urlk_forecast.data.schema import make_dataset
from urlk_forecast.data.windows import WindowDataset


def _lagged(T: int = 24 * 60, S: int = 8, seed: int = 0) -> object:
    """Diurnal cycle (phase set by longitude) + a persistent AR(1) anomaly: predictable from lags and calendar."""
    rng = np.random.default_rng(seed)
    lon = rng.uniform(-180, 180, S)
    e = np.zeros((T, S))
    for i in range(1, T):
        e[i] = 0.95 * e[i - 1] + rng.normal(0, 0.5, S)
    t = np.arange(T)[:, None]
    vals = 10 + 5 * np.sin(2 * np.pi * (t / 24 + lon / 360)) + e
    vals[rng.random(vals.shape) < 0.05] = np.nan
    return make_dataset(pd.date_range("2022-02-01", periods=T, freq="h"), [f"g{i}" for i in range(S)],
                        rng.uniform(-60, 60, S), lon, rng.uniform(0, 2000, S), temperature=vals.astype(np.float32))


def test_gbdt_beats_persistence_on_lagged_signal() -> None:
    ds = _lagged()
    train, test = ds.isel(time=slice(0, 24 * 50)), ds.isel(time=slice(24 * 50, None))
    g = GBDT(max_rows=30_000, n_threads=1).fit(train)
    assert 15_000 < g.n_train_rows <= 30_000 and g.n_params > 0 and g.kind == "ML"
    ws = WindowDataset(test, "temperature", seq_len=48, label_len=24, pred_len=24)
    res = g.evaluate(ws)
    pers = Persistence().fit(train).evaluate(ws)
    snaive = SeasonalNaive().fit(train).evaluate(ws)
    assert res["n_unforecast"] == 0 and res["n_points"] == pers["n_points"]
    assert res["mse"] < 0.3 * pers["mse"], (res, pers)
    assert res["mse"] < snaive["mse"], (res, snaive)
    # deterministic given random_state
    g2 = GBDT(max_rows=30_000, n_threads=1).fit(train)
    np.testing.assert_array_equal(g.predict_windows(ws, [0, 3]), g2.predict_windows(ws, [0, 3]))
    # the compiled forest gives exactly scikit-learn's predictions
    fast = g.predict_windows(ws, [1, 7])
    g.forest = None
    np.testing.assert_allclose(g.predict_windows(ws, [1, 7]), fast, rtol=0, atol=1e-5)


def test_compiled_forest_equals_sklearn_predict() -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(5000, 6)).astype(np.float32)
    X[rng.random(X.shape) < 0.1] = np.nan
    X[:, 5] = np.round(X[:, 5])  # ties on thresholds
    y = np.nan_to_num(X[:, 0]) * 2 + np.sin(np.nan_to_num(X[:, 1])) + rng.normal(size=5000) * 0.1
    model = HistGradientBoostingRegressor(max_iter=40, max_leaf_nodes=15, random_state=0).fit(X, y)
    forest = Forest(model)
    Xt = rng.normal(size=(3000, 6)).astype(np.float32)
    Xt[rng.random(Xt.shape) < 0.2] = np.nan
    Xt[:, 5] = np.round(Xt[:, 5])
    np.testing.assert_array_equal(forest.predict(Xt), model.predict(Xt))
    np.testing.assert_array_equal(forest.predict(Xt.astype(np.float64)), model.predict(Xt))
    assert len(forest) == sum(len(it[0].nodes) for it in model._predictors)
    with pytest.raises(ValueError, match="expected"):
        forest.predict(Xt[:, :3])


def test_feature_rows_match_their_definition() -> None:
    ds = _lagged(T=24 * 8, S=3)
    ws = WindowDataset(ds, "temperature", seq_len=48, label_len=0, pred_len=24, order="identity")
    g = GBDT()
    idx = np.array([2, 9])
    arrs = window_arrays(ws, idx)
    n = np.array([0, 1, 1])
    s = np.array([2, 0, 1])
    h = np.array([0, 23, 5])
    geo = g._station_geo(ds)
    starts = np.asarray(ws.window_start_times, dtype="datetime64[ns]")[idx].astype(np.int64)
    F = g._features(arrs["x"], arrs["x_mask"], starts, 3600 * 10**9, n, s, h, geo)
    names = g.feature_names
    xv = np.where(arrs["x_mask"], arrs["x"], np.nan)
    for r in range(3):
        np.testing.assert_equal(F[r, names.index("lag1")], xv[n[r], 47, s[r]])
        np.testing.assert_equal(F[r, names.index("lag48")], xv[n[r], 0, s[r]])
        np.testing.assert_equal(F[r, names.index("target_minus_24h")], xv[n[r], 48 + h[r] - 24, s[r]])
        np.testing.assert_equal(F[r, names.index("target_minus_48h")], xv[n[r], 48 + h[r] - 48, s[r]])
        target = pd.Timestamp(ws.window_start_times[idx[n[r]]]) + pd.Timedelta(hours=48 + int(h[r]))
        assert F[r, names.index("hour_sin")] == pytest.approx(np.sin(2 * np.pi * target.hour / 24), abs=1e-6)
        solar = (target.hour + geo[s[r], 1] / 15) % 24
        assert F[r, names.index("solar_cos")] == pytest.approx(np.cos(2 * np.pi * solar / 24), abs=1e-5)
        assert F[r, names.index("lead")] == h[r] + 1
        assert F[r, names.index("elevation")] == pytest.approx(geo[s[r], 2])


def test_grid_features_equal_row_features() -> None:
    ds = _lagged(T=24 * 8, S=5)
    ws = WindowDataset(ds, "temperature", seq_len=48, label_len=0, pred_len=24, order="identity")
    g = GBDT()
    idx = np.array([0, 4, 17])
    a = window_arrays(ws, idx)
    starts = np.asarray(ws.window_start_times, dtype="datetime64[ns]")[idx].astype(np.int64)
    geo = g._station_geo(ds)
    grid = g._grid_features(a["x"], a["x_mask"], starts, 3600 * 10**9, 24, geo)
    n = np.repeat(np.arange(3), 24 * 5)
    h = np.tile(np.repeat(np.arange(24), 5), 3)
    s = np.tile(np.arange(5), 3 * 24)
    rows = g._features(a["x"], a["x_mask"], starts, 3600 * 10**9, n, s, h, geo)
    np.testing.assert_array_equal(grid, rows)


def test_gbdt_geometry_errors() -> None:
    ds = _lagged(T=24 * 20, S=3)
    g = GBDT(max_rows=5_000, max_iter=20, n_threads=1).fit(ds)
    with pytest.raises(ValueError, match="seq_len >= 48"):
        g.predict_windows(WindowDataset(ds, "temperature", seq_len=24, label_len=0, pred_len=24), [0])
    with pytest.raises(ValueError, match="leads up to 24"):
        g.predict_windows(WindowDataset(ds, "temperature", seq_len=48, label_len=0, pred_len=30), [0])
    with pytest.raises(ValueError, match="largest lag"):
        GBDT(lags=(1, 72), seq_len=48)
