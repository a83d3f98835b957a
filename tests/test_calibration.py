"""Post-hoc quantile calibration (urlk_forecast.calibration) and its use by the Forecaster.

References are independent of the code under test: the normal distribution's quantiles (scipy), numpy's
``inverted_cdf`` quantile of the ratios, a sequential float64 recomputation of the calibrated levels, binomial
sampling error on fresh samples, and the reloaded model compared with the one that saved it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import norm

from urlk_forecast.calibration import (
    QuantileCalibration,
    apply_factors,
    apply_factors_numpy,
    calibration_scores,
    fit_calibration,
    fit_factors,
)
from urlk_forecast.data.synthetic import synthetic_global
from urlk_forecast.data.windows import split_dataset
from urlk_forecast.forecaster import CALIBRATION_NAME, Forecaster
from urlk_forecast.scoring import window_targets

LEVELS = (0.1, 0.5, 0.9)
TINY = dict(d_model=32, n_heads=4, node_size=4, dims=(8, 16, 32, 64), kernel_size=7)


def _gaussian(rng: np.random.Generator, n: int, P: int, S: int, k: float, levels=LEVELS):
    """Targets y ~ N(mu, sigma^2) with sigma varying by window, lead and station, and a "network" band that is
    ``k`` times the true one: q_tau = mu + k z_tau sigma (the raw quantiles, hand-set)."""
    mu = rng.normal(10.0, 5.0, (n, P, S))
    sigma = rng.uniform(0.5, 3.0, (n, P, S)) * np.linspace(1.0, 2.0, P)[None, :, None]
    y = mu + sigma * rng.standard_normal((n, P, S))
    z = norm.ppf(levels)
    q = mu[..., None] + k * z * sigma[..., None]
    return q.astype(np.float32), y


def test_too_narrow_gaussian_band_gets_nominal_coverage_on_fresh_samples() -> None:
    rng = np.random.default_rng(0)
    n, P, S, k = 400, 6, 10, 0.5  # 4000 targets per lead; the raw 80 % band covers 2 Phi(0.5 z_0.9) - 1 = 0.52
    q_fit, y_fit = _gaussian(rng, n, P, S, k)
    cal = fit_calibration(q_fit, y_fit, LEVELS)
    q_new, y_new = _gaussian(rng, n, P, S, k)  # fresh samples of the same process
    raw = calibration_scores(q_new, y_new, LEVELS)
    after = calibration_scores(cal.apply(q_new), y_new, LEVELS)
    expected_raw = 2 * norm.cdf(k * norm.ppf(0.9)) - 1
    N = n * P * S
    se80, se10 = np.sqrt(0.8 * 0.2 / N), np.sqrt(0.1 * 0.9 / N)
    assert abs(raw["cover80"] - expected_raw) < 4 * np.sqrt(expected_raw * (1 - expected_raw) / N)
    # nominal within sampling error of the fresh set plus that of the fitted factor (fit set as large: x sqrt 2)
    assert abs(after["cover80"] - 0.8) < 4 * np.sqrt(2) * se80
    for lv in ("0.1", "0.9"):
        assert abs(after["level_share"][lv] - float(lv)) < 4 * np.sqrt(2) * se10
    assert after["level_share"]["0.5"] == raw["level_share"]["0.5"]  # the median never moves
    # the factor is the band's missing width, 1 / k, per lead, within its sampling error: the tau-quantile of
    # z / (k z_tau) has sd sqrt(tau (1 - tau)) / (phi(z_tau) n^0.5) / (k z_tau) (asymptotic order statistic)
    sd = np.sqrt(0.09) / norm.pdf(norm.ppf(0.9)) / np.sqrt(n * S) / (k * norm.ppf(0.9))
    np.testing.assert_allclose(cal.factors[:, [0, 2]], 1 / k, atol=4 * sd)
    assert (cal.factors[:, 1] == 1).all()
    assert after["crps"] < raw["crps"] and after["pinball"] < raw["pinball"]  # the true distribution scores better


def test_factor_is_the_inverted_cdf_quantile_of_the_ratios() -> None:
    """Closed form: above the median the factor is numpy's inverted_cdf tau-quantile of (y - median) / (q - median);
    below it minus that of (y - median) / (median - q)."""
    rng = np.random.default_rng(1)
    n, P = 257, 3
    med = rng.normal(0, 1, (n, P, 1))
    lo_gap, hi_gap = rng.uniform(0.1, 2, (n, P, 1)), rng.uniform(0.1, 2, (n, P, 1))
    q = np.concatenate([med - lo_gap, med, med + hi_gap], axis=-1)
    y = med[..., 0] + rng.standard_t(3, (n, P, 1))[..., 0] * 2
    factors, counts = fit_factors(q, y, LEVELS)
    assert counts.tolist() == [n] * P
    for h in range(P):
        t_hi = (y[:, h] - med[:, h, 0]) / hi_gap[:, h, 0]
        t_lo = (y[:, h] - med[:, h, 0]) / lo_gap[:, h, 0]
        assert factors[h, 2] == pytest.approx(np.quantile(t_hi, 0.9, method="inverted_cdf"), rel=1e-12)
        assert factors[h, 0] == pytest.approx(-np.quantile(t_lo, 0.1, method="inverted_cdf"), rel=1e-12)
    # the fitted set then holds ceil(tau n) targets at or below each level per lead (continuous data: no ties), up
    # to the one target per lead that lies exactly on the level, which float32 rounding may put on either side
    share = calibration_scores(apply_factors_numpy(q, factors, 1), y, LEVELS)["level_share"]
    for lv in (0.1, 0.9):
        assert share[f"{lv:g}"] * n * P == pytest.approx(P * np.ceil(lv * n), abs=P)


def test_many_levels_never_cross_and_match_a_sequential_recomputation() -> None:
    levels = (0.05, 0.25, 0.5, 0.75, 0.95)
    rng = np.random.default_rng(2)
    n, P, S = 300, 4, 3
    med = rng.normal(0, 1, (n, P, S, 1))
    gaps = rng.exponential(0.3, (n, P, S, 4))
    gaps[..., 1][rng.random((n, P, S)) < 0.1] = 0.0  # collapsed gaps (level 0.25 on the median) break nothing
    q = np.concatenate([med - gaps[..., :2].sum(-1, keepdims=True), med - gaps[..., 1:2], med,
                        med + gaps[..., 2:3], med + gaps[..., 2:].sum(-1, keepdims=True)], axis=-1)
    y = med[..., 0] + rng.laplace(0, 1.5, (n, P, S))  # heavy tails: the gaps get very different factors
    y[rng.random(y.shape) < 0.05] = np.nan  # unobserved targets are left out
    factors, counts = fit_factors(q, y, levels)
    assert (factors >= 0).all() and (counts < n * S).all()
    out = apply_factors_numpy(q, factors, 2)
    assert (np.diff(out, axis=-1) >= 0).all()
    np.testing.assert_array_equal(out[..., 2], q[..., 2].astype(np.float32))
    ref = np.empty(q.shape)  # float64, level by level outward from the median
    ref[..., 2] = q[..., 2]
    for j in (3, 4):
        ref[..., j] = ref[..., j - 1] + factors[None, :, None, j] * (q[..., j] - q[..., j - 1])
    for j in (1, 0):
        ref[..., j] = ref[..., j + 1] - factors[None, :, None, j] * (q[..., j + 1] - q[..., j])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    share = calibration_scores(ref, y, levels)["level_share"]
    for lv in levels[:2] + levels[3:]:
        assert lv - 0.02 <= share[f"{lv:g}"] <= lv + 0.02  # each level holds its share (ceil(tau n) per lead)


def test_torch_apply_keeps_nan_and_broadcasts_over_extra_axes() -> None:
    q = torch.tensor([[[[0.0, 1.0, 2.0], [float("nan")] * 3]]])  # (1, P=1, S=2, Q=3)
    out = apply_factors(q, torch.tensor([[3.0, 1.0, 0.5]]), 1)
    assert out[0, 0, 0].tolist() == [-2.0, 1.0, 1.5] and torch.isnan(out[0, 0, 1]).all()


def test_bad_input_is_named() -> None:
    q = np.zeros((10, 2, 1, 3))
    with pytest.raises(ValueError, match="lead 1: 10 finite target"):
        fit_factors(q, np.zeros((10, 2, 1)), LEVELS)
    with pytest.raises(ValueError, match="lack the median"):
        fit_factors(q, np.zeros((10, 2, 1)), (0.1, 0.6, 0.9))
    with pytest.raises(ValueError, match="need quantiles"):
        fit_factors(q, np.zeros((10, 2)), LEVELS)
    with pytest.raises(ValueError, match="non-negative"):
        QuantileCalibration(levels=list(LEVELS), factors=[[-1.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="x.json: not a quantile calibration"):
        QuantileCalibration.from_dict({"format": "other"}, source="x.json")


# ------------------------------------------------------------------------------------------------- Forecaster
@pytest.fixture(scope="module")
def fitted():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = synthetic_global(stations=8, hours=24 * 40, seed=5, variables=("temperature",))
        parts = split_dataset(ds, context=24)
        fc = Forecaster("unireplknet_a", "temperature", 24, 12, 12, quantiles=LEVELS, **TINY)
        fc.fit(parts["train"], val=parts["val"], max_steps=4, batch_size=4, progress=False, seed=0)
    finally:
        torch.set_num_threads(n)
    return fc, parts


def test_fit_calibrates_on_the_validation_windows(fitted) -> None:
    fc, parts = fitted
    cal = fc.calibration
    assert cal is not None and cal.factors.shape == (12, 3)
    rec = fc.train_info["calibration"]
    assert rec["factors"] == cal.factors.tolist() and rec["windows"] == fc.train_info["val_windows"]
    ws = fc._windows(parts["val"], order=fc._order_for(parts["val"], "val"))
    idx = np.arange(len(ws))
    y, mask = window_targets(ws, idx)
    y = np.where(mask, y, np.nan)
    q = fc.predict_quantiles(ws, idx)  # calibrated
    after = calibration_scores(q, y, LEVELS)  # recomputed from the model's own outputs
    assert after["cover80"] == pytest.approx(rec["after"]["cover80"], abs=1e-9)
    for lv in ("0.1", "0.9"):  # on the windows it was fitted on each level holds its share, up to 1/n per lead
        assert abs(after["level_share"][lv] - float(lv)) <= 1.0 / mask[:, 0].sum() + 1e-3
    raw = fc._forecast_windows(ws, idx, 32)
    np.testing.assert_allclose(q, cal.apply(raw), rtol=0, atol=0)
    np.testing.assert_array_equal(fc.predict_windows(ws, idx), raw[..., 1])  # the point forecast is unchanged


def test_save_load_round_trip_and_an_old_run_without_calibration(fitted, tmp_path) -> None:
    fc, parts = fitted
    d = fc.save(tmp_path / "m")
    back = Forecaster.load(d)
    np.testing.assert_array_equal(back.calibration.factors, fc.calibration.factors)
    assert back.calibration.after == fc.calibration.after
    ws = fc._windows(parts["val"], order=fc._order_for(parts["val"], "val"))
    np.testing.assert_array_equal(back.predict_quantiles(ws, [0, 5]), fc.predict_quantiles(ws, [0, 5]))
    f1, f2 = back.predict(parts["val"])["temperature"], fc.predict(parts["val"])["temperature"]
    np.testing.assert_array_equal(f1.values, f2.values)
    (d / CALIBRATION_NAME).unlink()  # a model saved before calibrations existed
    old = Forecaster.load(d)
    assert old.calibration is None
    np.testing.assert_array_equal(old.predict_quantiles(ws, [0, 5]), fc._forecast_windows(ws, [0, 5], 32))
    old.save(d)  # saving without a calibration leaves no file behind
    assert not (d / CALIBRATION_NAME).exists()


def test_a_calibration_file_that_does_not_fit_is_refused(fitted, tmp_path) -> None:
    fc, _ = fitted
    d = fc.save(tmp_path / "m")
    raw = json.loads((d / CALIBRATION_NAME).read_text())
    raw["factors"] = raw["factors"][:5]
    (d / CALIBRATION_NAME).write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=f"{CALIBRATION_NAME}: a calibration of levels .* over 5 leads"):
        Forecaster.load(d)
    (d / CALIBRATION_NAME).write_text("{")
    with pytest.raises(ValueError, match="invalid JSON"):
        Forecaster.load(d)


def test_calibrate_false_keeps_the_raw_levels(fitted) -> None:
    _, parts = fitted
    fc = Forecaster("unireplknet_a", "temperature", 24, 12, 12, quantiles=LEVELS, **TINY)
    fc.fit(parts["train"], val=parts["val"], max_steps=1, batch_size=4, progress=False, seed=0, calibrate=False)
    assert fc.calibration is None and "calibrate=False" in fc.train_info["calibration"]["skipped"]
    point = Forecaster("unireplknet_a", "temperature", 24, 12, 12, **TINY)
    point.fit(parts["train"], val=parts["val"], max_steps=1, batch_size=4, progress=False, seed=0)
    assert point.calibration is None and "calibration" not in point.train_info
    with pytest.raises(ValueError, match="forecasts no quantiles"):
        point.calibrate(parts["val"])


def test_calibrate_bounds_the_targets_per_lead(fitted) -> None:
    import copy

    fc, parts = fitted
    fc = copy.deepcopy(fc)  # the fixture's calibration stays the one fit made
    S = len(fc.station_ids)
    cal = fc.calibrate(parts["val"], max_targets=10 * S)  # 10 windows of S stations per lead
    assert cal.source["windows"] == 10 and max(cal.targets) <= 10 * S and fc.calibration is cal
