"""Quantile forecasts of the baselines: empirical training-error quantiles (persistence, seasonal naive), the ETS
forecast variance of Holt-Winters (against a simulation of the model), quantile-loss GBDT; calibration on held-out
windows within binomial sampling error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from urlk_forecast.baselines import GBDT, HoltWinters, Persistence, SeasonalNaive
from urlk_forecast.baselines.base import window_arrays
from urlk_forecast.baselines.holt_winters import ets_forecast_sd
from urlk_forecast.baselines.quantiles import column_quantiles, lagged_error_quantiles
from urlk_forecast.data.schema import make_dataset
from urlk_forecast.data.windows import WindowDataset

LEVELS = (0.1, 0.5, 0.9)
Z90 = norm.ppf(0.9)


def _dataset(values: np.ndarray) -> object:
    t = pd.date_range("2021-01-01", periods=values.shape[0], freq="h")
    s = values.shape[1]
    rng = np.random.default_rng(1)
    return make_dataset(t, [f"st{i:02d}" for i in range(s)], rng.uniform(-60, 60, s), rng.uniform(-180, 180, s),
                        rng.uniform(0, 500, s), temperature=values.astype(np.float32))


def _split(values: np.ndarray, n_train: int, seq_len: int = 48, pred_len: int = 24) -> tuple[object, WindowDataset]:
    ds = _dataset(values)
    train = ds.isel(time=slice(0, n_train))
    # non-overlapping targets (stride = pred_len): the scored points of one lead are independent draws
    ws = WindowDataset(ds.isel(time=slice(n_train - seq_len, None)), "temperature", seq_len, 0, pred_len,
                       stride=pred_len)
    return train, ws


def _within(share: float, nominal: float, n: int) -> bool:
    return abs(share - nominal) < 4.5 * np.sqrt(nominal * (1 - nominal) / n)


def test_column_quantiles_equal_nanquantile() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 6))
    a[rng.random(a.shape) < 0.3] = np.nan
    a[:, 2] = np.nan
    q, n = column_quantiles(a, (0.05, 0.5, 0.93))
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        ref = np.nanquantile(a, (0.05, 0.5, 0.93), axis=0)
    np.testing.assert_allclose(q, ref, rtol=1e-12)
    assert n[2] == 0 and np.isnan(q[:, 2]).all()
    # a station with too few errors uses all stations' errors at that lead
    v = rng.normal(size=(500, 3)).cumsum(0)
    v[:, 1] = np.nan
    v[:3, 1] = 1.0
    eq = lagged_error_quantiles(v, [1, 2], (0.5,))
    pooled = np.nanquantile(v[1:] - v[:-1], 0.5)
    assert eq[0, 1, 0] == pytest.approx(pooled)


def test_persistence_random_walk_error_quantiles_and_coverage() -> None:
    rng = np.random.default_rng(2)
    S, days_train, days_test = 20, 150, 60
    values = rng.standard_normal((24 * (days_train + days_test), S)).cumsum(0)
    train, ws = _split(values, 24 * days_train)
    m = Persistence(quantiles=LEVELS).fit(train)
    # lead h of a unit random walk: N(0, h) errors
    np.testing.assert_allclose(m.error_quantiles[:, :, 2].mean(1), Z90 * np.sqrt(np.arange(1, 25)), rtol=0.08)
    idx = np.arange(len(ws))
    q = m.predict_quantiles(ws, idx)
    x = window_arrays(ws, idx)["x"]
    assert q.shape == (len(ws), 24, S, 3) and q.dtype == np.float32 and (np.diff(q, axis=-1) >= 0).all()
    np.testing.assert_array_equal(m.predict_windows(ws, idx), q[..., 1])
    pos = [list(train["station"].values).index(s) for s in ws.station_ids]  # training order -> model order
    median_err = np.broadcast_to(m.error_quantiles[None, :, pos, 1], q[..., 1].shape)
    np.testing.assert_allclose(q[..., 1] - x[:, -1:, :], median_err, atol=1e-4)
    sc = m.evaluate(ws)
    n_lead = len(ws) * S
    cover = sc.per_lead["cover80"].to_numpy()
    assert _within(cover[0], 0.8, n_lead) and _within(cover[23], 0.8, n_lead)
    assert _within(sc.interval_coverage[0.8], 0.8, n_lead)  # leads of a window are correlated: one lead's n
    assert m.n_params == 24 * S * 3
    plain = Persistence().fit(train)
    assert plain.quantiles is None and plain.error_quantiles is None and plain.n_params == 0
    np.testing.assert_array_equal(plain.predict_windows(ws, idx), np.repeat(x[:, -1:], 24, axis=1))
    with pytest.raises(NotImplementedError, match="quantiles=None"):
        plain.predict_quantiles(ws, idx)
    with pytest.raises(ValueError, match="max_horizon >= 24"):
        Persistence(quantiles=LEVELS, max_horizon=12).fit(train).predict_quantiles(ws, idx)


def test_seasonal_naive_gaussian_noise_quantiles_cover_nominally() -> None:
    rng = np.random.default_rng(3)
    S, T = 16, 24 * 200
    t = np.arange(T)[:, None]
    values = 10 + 5 * np.sin(2 * np.pi * t / 24 + np.arange(S)) + rng.standard_normal((T, S))
    train, ws = _split(values, 24 * 140)
    m = SeasonalNaive(quantiles=(0.05, 0.25, 0.75, 0.95)).fit(train)
    assert m.quantiles == (0.05, 0.25, 0.75, 0.95)
    # errors e_t - e_{t-24} ~ N(0, 2) at every lead
    np.testing.assert_allclose(m.error_quantiles[..., -1].mean(), np.sqrt(2) * norm.ppf(0.95), rtol=0.05)
    sc = m.evaluate(ws)
    n = len(ws) * S * 24 // 2  # consecutive windows share their noise (the copied season): half the points
    assert set(sc.interval_coverage) == {0.9, 0.5}
    for nominal, share in sc.interval_coverage.items():
        assert _within(share, nominal, n), (nominal, share)
    # the median (0.5 not a level) is estimated anyway and is the point forecast
    x = window_arrays(ws, np.arange(len(ws)))["x"]
    first = list(train["station"].values).index(ws.station_ids[0])
    np.testing.assert_allclose(m.predict_windows(ws)[:, 0, 0], x[:, 24, 0] + m.error_quantiles[0, first, 2], atol=1e-4)


def test_ets_forecast_sd_matches_a_simulation_of_the_model() -> None:
    alpha, beta, gamma, phi, sigma, m, H = 0.4, 0.3, 0.5, 0.9, 1.5, 6, 14
    rng = np.random.default_rng(5)
    n = 40000
    level, trend, season = np.zeros(n), np.zeros(n), np.zeros((m, n))
    ys = np.empty((n, H))
    for h in range(H):
        s_old = season[h % m].copy()
        lb = level + phi * trend
        y = lb + s_old + sigma * rng.standard_normal(n)
        new_level = alpha * (y - s_old) + (1 - alpha) * lb
        trend = beta * (new_level - level) + (1 - beta) * phi * trend
        season[h % m] = gamma * (y - lb) + (1 - gamma) * s_old
        level = new_level
        ys[:, h] = y
    sd = ets_forecast_sd(np.array([alpha]), np.array([beta]), np.array([gamma]), np.array([phi]),
                         np.array([sigma ** 2]), m, H)[:, 0]
    np.testing.assert_allclose(ys.std(0), sd, rtol=0.02)
    assert sd[0] == pytest.approx(sigma) and (np.diff(sd) > 0).all()
    assert sd[m] - sd[m - 1] > sd[m - 1] - sd[m - 2]  # the season's own error enters one season ahead


def test_holt_winters_gaussian_quantiles_on_noisy_season() -> None:
    """A local level (random walk) + daily season + noise: the kind of series the ETS model describes."""
    rng = np.random.default_rng(6)
    S, T = 6, 24 * 120
    t = np.arange(T)[:, None]
    level = 0.4 * rng.standard_normal((T, S)).cumsum(0)
    values = 10 + level + 4 * np.sin(2 * np.pi * t / 24 + np.arange(S)) + rng.standard_normal((T, S))
    train, ws = _split(values, 24 * 90)
    hw = HoltWinters(n_jobs=1, quantiles=LEVELS).fit(train)
    idx = np.arange(len(ws))
    q = hw.predict_quantiles(ws, idx)
    np.testing.assert_array_equal(q[..., 1], hw.predict_windows(ws, idx))
    assert (np.diff(q, axis=-1) >= 0).all()
    sd = hw.forecast_sd(ws)
    np.testing.assert_allclose(q[..., 2] - q[..., 1], np.broadcast_to(Z90 * sd, q[..., 1].shape), rtol=1e-4)
    # one-step residual sd of a local level + noise: sqrt(1 + 0.4^2 + ...) ~ 1.2
    assert np.sqrt(hw.params[:, 8]) == pytest.approx(np.full(S, 1.2), rel=0.1)
    sc = hw.evaluate(ws)
    # 30 windows x 6 stations per lead, leads correlated: ~0.03 sampling sd
    assert abs(sc.interval_coverage[0.8] - 0.8) < 0.08, sc.interval_coverage
    assert (np.diff(sd, axis=0) >= 0).all() and sd[-1].mean() > 1.5 * sd[0].mean()


def _lagged(T: int = 24 * 80, S: int = 8) -> np.ndarray:
    rng = np.random.default_rng(7)
    t = np.arange(T)[:, None]
    noise = rng.standard_normal((T, S)) * np.linspace(0.5, 2.0, S)  # heteroscedastic across stations
    return 5 + 3 * np.sin(2 * np.pi * t / 24 + np.arange(S)) + noise


def test_gbdt_quantile_models_sorted_and_roughly_calibrated() -> None:
    values = _lagged()
    train, ws = _split(values, 24 * 60)
    g = GBDT(quantiles=LEVELS, n_threads=1, max_rows=30_000).fit(train)
    assert len(g.level_models) == 3 and g.model is g.level_models[1][0]
    idx = np.arange(len(ws))
    q = g.predict_quantiles(ws, idx)
    assert q.shape == (len(ws), 24, 8, 3) and (np.diff(q, axis=-1) >= 0).all()
    np.testing.assert_array_equal(g.predict_windows(ws, idx), q[..., 1])
    F = np.random.default_rng(0).normal(size=(500, int(g.used_features.sum()))).astype(np.float32)
    for model, forest in g.level_models:  # the compiled forests equal scikit-learn's quantile models
        np.testing.assert_allclose(forest.predict(F), model.predict(F), rtol=1e-9, atol=1e-9)
    sc = g.evaluate(ws)
    # roughly: separately fitted quantile trees under-cover a little (0.71 measured here; in-sample leaves)
    assert abs(sc.interval_coverage[0.8] - 0.8) < 0.12, sc.interval_coverage
    y = window_arrays(ws, idx)["y"]
    assert 0.35 < (y < q[..., 1]).mean() < 0.65
    # wider intervals where the noise is larger
    width = dict(zip(ws.station_ids, (q[..., 2] - q[..., 0]).mean(axis=(0, 1))))
    assert width["st07"] > 1.5 * width["st00"], width
    assert g.n_params == sum(len(f) for _, f in g.level_models)


def test_benchmark_cli_quantiles_columns_and_an_independent_row(tmp_path: object) -> None:
    from click.testing import CliRunner

    from urlk_forecast.cli import cli
    from urlk_forecast.data.synthetic import synthetic_global
    from urlk_forecast.data.windows import split_dataset

    out = tmp_path / "res"
    r = CliRunner().invoke(cli, ["benchmark", "--stations", "6", "--hours", "2400", "--max-windows", "5",
                                 "--baselines", "persistence,climatology", "--quantiles", "0.1,0.5,0.9",
                                 "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert ("| method | type | parameters | MSE | MAE | CRPS | pinball | pinball_q10 | pinball_q50 | pinball_q90 | "
            "cover80 | fit_s | predict_s | coverage |") in r.output
    csv = pd.read_csv(out / "benchmark_temperature.csv").set_index("method")
    assert csv.loc["Climatology", ["CRPS", "pinball", "cover80"]].isna().all()
    assert "CRPS" in pd.read_csv(out / "benchmark_temperature_per_lead.csv").columns
    # the persistence row recomputed from its quantiles on the same windows, in float64
    parts = split_dataset(synthetic_global(stations=6, hours=2400, seed=0), context=48)
    ws = WindowDataset(parts["test"], "temperature", 48, 24, 24)
    idx = np.unique(np.linspace(0, len(ws) - 1, 5).round().astype(np.int64))
    q = Persistence(quantiles=LEVELS).fit(parts["train"]).predict_quantiles(ws, idx).astype(np.float64)
    a = window_arrays(ws, idx)
    y, ok = a["y"].astype(np.float64), a["y_mask"]
    u = y[..., None] - q
    loss = np.maximum(np.array(LEVELS) * u, (np.array(LEVELS) - 1) * u)
    per_window = np.array([loss[i][ok[i]].mean(axis=0) for i in range(idx.size)]).mean(axis=0)
    row = csv.loc["Persistence"]
    np.testing.assert_allclose(row[["pinball_q10", "pinball_q50", "pinball_q90"]].to_numpy(float), per_window,
                               rtol=1e-5)
    assert row["CRPS"] == pytest.approx(2 * (0.3 * per_window[0] + 0.4 * per_window[1] + 0.3 * per_window[2]),
                                        rel=1e-5)
    inside = ((q[..., 0] <= y) & (y <= q[..., 2]))[ok].mean()
    assert row["cover80"] == pytest.approx(inside, rel=1e-9)
    bad = CliRunner().invoke(cli, ["benchmark", "--quantiles", "0.9,0.1", "--out", str(tmp_path / "b")])
    assert bad.exit_code != 0 and "--quantiles" in bad.output and "Traceback" not in bad.output


def test_benchmark_default_levels_follow_a_quantile_run() -> None:
    from urlk_forecast.baselines.table import _quantile_levels

    class Run:
        quantiles = (0.05, 0.5, 0.95)

    said: list[str] = []
    assert _quantile_levels(None, Run(), said.append) == (0.05, 0.5, 0.95) and "same levels" in said[0]
    assert _quantile_levels((0.25, 0.75), Run(), said.append) == (0.25, 0.75)
    assert _quantile_levels(None, None, said.append) is None


def test_benchmark_scores_a_quantile_run_at_its_own_levels(tmp_path: object) -> None:
    """A saved Forecaster trained with quantiles: its row gets CRPS/coverage at its levels, and the baselines forecast
    the same levels by default (compared at equal levels)."""
    import torch

    from urlk_forecast.baselines import run_benchmark
    from urlk_forecast.forecaster import Forecaster

    rng = np.random.default_rng(8)
    T, S = 24 * 40, 4
    t = np.arange(T)[:, None]
    ds = _dataset(10 + 4 * np.sin(2 * np.pi * t / 24 + np.arange(S)) + rng.standard_normal((T, S)))
    levels = (0.05, 0.5, 0.95)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fc = Forecaster("unireplknet_a", "temperature", seq_len=24, label_len=12, pred_len=12, quantiles=list(levels),
                        d_model=32, n_heads=4, node_size=4, dims=(8, 16, 32, 64), kernel_size=7)
        fc.fit(ds.isel(time=slice(0, 24 * 28)), schedule="paper", max_steps=3, batch_size=16, progress=False, seed=0)
        run = fc.save(tmp_path / "model")
        res = run_benchmark(data=ds, baselines=["persistence", "climatology"], run=run, max_windows=16)
    finally:
        torch.set_num_threads(n)
    rows = res.rows.set_index("method")
    assert {"CRPS", "pinball_q5", "pinball_q50", "pinball_q95", "cover90"} <= set(rows.columns)
    assert np.isfinite(rows.loc[["Persistence", fc.name], ["CRPS", "cover90", "pinball_q5"]].to_numpy(float)).all()
    assert rows.loc["Climatology", ["CRPS", "cover90"]].isna().all()
    assert rows.loc[fc.name, "pinball_q50"] == pytest.approx(rows.loc[fc.name, "MAE"] / 2, rel=1e-5)
