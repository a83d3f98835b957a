"""Probabilistic scores of the one scorer: pinball loss, interval coverage and the quantile CRPS estimate, checked
against a Gaussian series whose true quantiles are known (closed-form CRPS of a normal forecast, binomial bounds on
coverage) and against a float64 recomputation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from urlk_forecast.data.schema import make_dataset
from urlk_forecast.data.windows import WindowDataset
from urlk_forecast.method import Method
from urlk_forecast.metrics import central_intervals, crps_weights, pinball
from urlk_forecast.scoring import score_methods, window_targets

S, PRED = 12, 24


def _gaussian(hours: int, seed: int = 0) -> tuple[object, np.ndarray, np.ndarray]:
    """iid N(mu_s, sigma_s) per station: the true predictive distribution at every lead is known."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(-5, 25, S)
    sigma = rng.uniform(0.5, 4.0, S)
    values = mu + sigma * rng.standard_normal((hours, S))
    t = pd.date_range("2022-01-01", periods=hours, freq="h")
    ds = make_dataset(t, [f"s{i:02d}" for i in range(S)], rng.uniform(-60, 60, S), rng.uniform(-180, 180, S),
                      rng.uniform(0, 500, S), temperature=values.astype(np.float32))
    return ds, mu, sigma


class _Normal(Method):
    """Forecasts N(mu_s + shift, (scale sigma_s)^2) quantiles at every lead (stations in the windows' order)."""

    name = "normal"

    def __init__(self, mu: np.ndarray, sigma: np.ndarray, levels: Sequence[float] | None, shift: float = 0.0,
                 scale: float = 1.0) -> None:
        self.mu, self.sigma = mu + shift, sigma * scale
        self.quantiles = None if levels is None else tuple(levels)
        self.variable = "temperature"

    def fit(self, train: object, val: object = None) -> _Normal:
        return self

    def _pos(self, ws: object) -> np.ndarray:
        return np.array([int(s[1:]) for s in ws.station_ids])

    def predict_windows(self, ws: object, indices: object = None) -> np.ndarray:
        n = len(np.atleast_1d(indices))
        return np.broadcast_to(self.mu[self._pos(ws)], (n, ws.pred_len, len(ws.station_ids))).astype(np.float32)

    def predict_quantiles(self, ws: object, indices: object = None) -> np.ndarray:
        z = norm.ppf(np.asarray(self.quantiles))
        pos = self._pos(ws)
        q = self.mu[pos][:, None] + self.sigma[pos][:, None] * z[None, :]  # (S, Q)
        n = len(np.atleast_1d(indices))
        return np.broadcast_to(q, (n, ws.pred_len, *q.shape)).astype(np.float32)

    @property
    def n_params(self) -> int:
        return 0


def _windows(hours: int = 24 * 202, seed: int = 0) -> tuple[WindowDataset, np.ndarray, np.ndarray]:
    ds, mu, sigma = _gaussian(hours, seed)
    # stride = pred_len: every target is scored once, so the scored points are independent draws
    ws = WindowDataset(ds, "temperature", seq_len=24, label_len=0, pred_len=PRED, stride=PRED, order="identity")
    return ws, mu, sigma


def _crps_normal(mu: np.ndarray, s: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = (y - mu) / s
    return s * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / np.sqrt(np.pi))


PERCENTILES = tuple(np.round(np.arange(1, 100) / 100, 2))


@pytest.mark.parametrize("shift, scale", [(0.0, 1.0), (1.5, 1.0), (0.0, 2.0), (0.0, 0.5)])
def test_crps_from_dense_quantiles_matches_the_closed_form(shift: float, scale: float) -> None:
    ws, mu, sigma = _windows()
    method = _Normal(mu, sigma, PERCENTILES, shift, scale)
    sc = method.evaluate(ws)
    y, mask = window_targets(ws, np.arange(len(ws)))
    assert mask.all()
    exact = _crps_normal((mu + shift)[None, None], (sigma * scale)[None, None], y.astype(np.float64)).mean()
    assert sc.crps == pytest.approx(exact, rel=0.01)
    if shift == 0.0 and scale == 1.0:  # calibrated: the expected CRPS is sigma / sqrt(pi)
        assert sc.crps == pytest.approx(np.mean(sigma) / np.sqrt(np.pi), rel=0.03)


def test_true_quantiles_cover_at_the_nominal_rate_within_binomial_error() -> None:
    ws, mu, sigma = _windows()
    sc = _Normal(mu, sigma, PERCENTILES).evaluate(ws)
    n = sc.n_points
    assert n == len(ws) * PRED * S
    assert len(sc.interval_coverage) == 49 and set(sc.interval_coverage) >= {0.8, 0.5, 0.9, 0.98}
    for nominal, share in sc.interval_coverage.items():
        assert abs(share - nominal) < 4.5 * np.sqrt(nominal * (1 - nominal) / n), nominal
    # a forecast twice too narrow under-covers far beyond sampling error
    narrow = _Normal(mu, sigma, (0.1, 0.5, 0.9), scale=0.5).evaluate(ws)
    expect = 2 * norm.cdf(0.5 * norm.ppf(0.9)) - 1  # P(|Z| < 0.64) = 0.48
    assert narrow.interval_coverage == {0.8: pytest.approx(expect, abs=4.5 * np.sqrt(0.25 / n))}
    assert sc.crps < narrow.crps


def test_three_level_crps_has_the_documented_bias() -> None:
    """{0.1, 0.5, 0.9}: the cell-weighted estimate is 0.939 x the exact CRPS of a calibrated normal forecast."""
    ws, mu, sigma = _windows()
    sc = _Normal(mu, sigma, (0.1, 0.5, 0.9)).evaluate(ws)
    w = crps_weights((0.1, 0.5, 0.9))
    np.testing.assert_allclose(w, [0.3, 0.4, 0.3])
    expected = 2 * (w * norm.pdf(norm.ppf([0.1, 0.5, 0.9]))).sum() * np.mean(sigma)
    assert expected / (np.mean(sigma) / np.sqrt(np.pi)) == pytest.approx(0.939, abs=0.001)
    assert sc.crps == pytest.approx(expected, rel=0.02)


def test_pinball_and_crps_against_a_float64_recomputation_with_missing_points() -> None:
    ws, mu, sigma = _windows(hours=24 * 40, seed=4)
    levels = (0.05, 0.25, 0.5, 0.75, 0.95)

    class Ragged(_Normal):
        """Noisy quantiles, NaN for station 3 in every other window."""

        def predict_quantiles(self, ws: object, indices: object = None) -> np.ndarray:
            idx = np.atleast_1d(indices)
            q = super().predict_quantiles(ws, idx).copy()
            noise = np.stack([np.random.default_rng(int(i)).normal(0, 0.5, q.shape[1:]) for i in idx])
            q = np.sort(q + noise.astype(np.float32), axis=-1)  # the same per window whatever the chunking
            q[idx % 2 == 1, :, 3] = np.nan
            return q

    m = Ragged(mu, sigma, levels)
    point = _Normal(mu, sigma, None)
    point.name = "point"
    idx = np.arange(len(ws))
    table = score_methods([m, point], ws, idx, batch_size=7)
    sc = table["normal"]
    q = m.predict_quantiles(ws, idx).astype(np.float64)
    y, mask = window_targets(ws, idx)
    y = y.astype(np.float64)
    common = mask & np.isfinite(q).all(-1)
    per_level = []
    for k, tau in enumerate(levels):
        vals = []
        for i in range(len(idx)):
            u = y[i][common[i]] - q[i, ..., k][common[i]]
            vals.append(np.mean(np.maximum(tau * u, (tau - 1) * u)))
        per_level.append(np.mean(vals))
    for k in range(len(levels)):
        assert sc.pinball[levels[k]] == pytest.approx(per_level[k], rel=1e-9)
    w_crps = crps_weights(levels)
    assert sc.crps == pytest.approx(2 * float(np.dot(w_crps, per_level)), rel=1e-9)
    assert sc.pinball_mean == pytest.approx(np.mean(per_level), rel=1e-9)
    # median pinball = MAE / 2 on the same points; the point method is scored on those points too
    assert sc.pinball[0.5] == pytest.approx(sc.mae / 2, rel=1e-6)
    assert table.points == int(common.sum()) and sc.n_unforecast == int((mask & ~common).sum())
    inside = (q[..., 0] <= y) & (y <= q[..., 4]) & common
    assert sc.interval_coverage[0.9] == pytest.approx(inside.sum() / common.sum(), rel=1e-12)
    # per lead: crps and the coverage columns
    lead = sc.per_lead
    assert {"crps", "pinball", "cover90", "cover50"} <= set(lead.columns)
    in1 = inside[:, 0].sum() / common[:, 0].sum()
    assert lead.loc[0, "cover90"] == pytest.approx(in1, rel=1e-12)
    assert table["point"].quantiles is None and np.isnan(table["point"].crps)
    assert table["point"].pinball is None and table["point"].interval_coverage is None
    long = table.per_lead()
    assert list(long.columns) == ["method", "lead", "mse", "mae", "crps"]
    assert long[long["method"] == "point"]["crps"].isna().all()


def test_point_methods_are_scored_as_before_and_errors_are_clear() -> None:
    ws, mu, sigma = _windows(hours=24 * 20)
    point = _Normal(mu + 0.3, sigma, None)
    alone = point.evaluate(ws)
    assert alone.quantiles is None and np.isnan(alone.crps) and "crps" not in alone.per_lead.columns
    assert list(score_methods([point], ws).per_lead().columns) == ["method", "lead", "mse", "mae"]

    class Crossing(_Normal):
        def predict_quantiles(self, ws: object, indices: object = None) -> np.ndarray:
            return super().predict_quantiles(ws, indices)[..., ::-1]

    with pytest.raises(ValueError, match="crossing quantiles"):
        Crossing(mu, sigma, (0.1, 0.9)).evaluate(ws)
    bad = _Normal(mu, sigma, (0.1, 0.9))
    bad.quantiles = (0.9, 0.1)
    with pytest.raises(ValueError, match=r"normal: quantiles=\[0.9, 0.1\]: levels must be sorted and unique"):
        bad.evaluate(ws)
    table = score_methods([Crossing(mu, sigma, (0.1, 0.9)), point], ws, keep_going=True)
    assert "crossing" in table.failures["normal"] and table["normal #2"].mse == pytest.approx(alone.mse)


def test_level_helpers() -> None:
    assert central_intervals((0.025, 0.1, 0.5, 0.9, 0.975)) == [(0, 4, 0.95), (1, 3, 0.8)]
    assert central_intervals((0.1, 0.5, 0.8)) == []
    np.testing.assert_allclose(crps_weights((0.5,)), [1.0])
    np.testing.assert_allclose(pinball(np.array([[1.0, 2.0]]), np.array([1.5]), (0.2, 0.7)), [[0.1, 0.15]])
