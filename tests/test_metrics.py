import numpy as np
import pandas as pd
import pytest
import torch

from urlk_forecast import metrics
from urlk_forecast.metrics import evaluate_arrays, mae, mse, per_horizon, per_station


def _data(n=300, h=6, s=5, seed=0, missing=0.3):
    rng = np.random.default_rng(seed)
    true = rng.normal(10, 5, (n, h, s)).astype(np.float32)
    pred = (true + rng.normal(0, 2, true.shape)).astype(np.float32)
    true[rng.random(true.shape) < missing / 2] = np.nan
    mask = rng.random(true.shape) > missing / 2
    mask[3] = False  # a window without any observed target
    true[7] = np.nan  # and one whose targets are all NaN
    return pred, true, mask


def _reference(pred, true, mask):
    """Float64 loop over windows: mean over observed entries, then mean over windows with data."""
    se, ae = [], []
    for i in range(pred.shape[0]):
        ok = np.isfinite(true[i]) & mask[i]
        if ok.sum() == 0:
            continue
        d = pred[i].astype(np.float64)[ok] - true[i].astype(np.float64)[ok]
        se.append(np.mean(d * d))
        ae.append(np.mean(np.abs(d)))
    return float(np.mean(se)), float(np.mean(ae))


def test_matches_float64_reference_with_mask_and_nan():
    pred, true, mask = _data()
    assert pred.shape[0] > metrics._CHUNK  # exercises the chunked path
    ref_mse, ref_mae = _reference(pred, true, mask)
    assert mse(pred, true, mask) == pytest.approx(ref_mse, rel=1e-12)
    assert mae(pred, true, mask) == pytest.approx(ref_mae, rel=1e-12)
    res = evaluate_arrays(pred, true, mask)
    assert res["mse"] == pytest.approx(ref_mse, rel=1e-12)
    assert res["mae"] == pytest.approx(ref_mae, rel=1e-12)
    assert res["rmse"] == pytest.approx(np.sqrt(ref_mse), rel=1e-12)
    assert res["windows"] == pred.shape[0] - 2
    assert res["count"] == int((np.isfinite(true) & mask).sum())


def test_torch_inputs_equal_numpy():
    pred, true, mask = _data(n=40)
    a = evaluate_arrays(pred, true, mask)
    b = evaluate_arrays(torch.from_numpy(pred), torch.from_numpy(true), torch.from_numpy(mask))
    assert a == b
    pred_t = torch.from_numpy(pred).requires_grad_(True)
    assert mse(pred_t, true) == pytest.approx(mse(pred, true))


def test_without_missing_equals_global_mean():
    # Corrformer's metric(pred, true) = np.mean over everything; equal to the window average when nothing is missing.
    rng = np.random.default_rng(1)
    true = rng.normal(size=(17, 24, 9))
    pred = true + rng.normal(size=true.shape)
    assert mse(pred, true) == pytest.approx(np.mean((pred - true) ** 2), rel=1e-12)
    assert mae(pred, true) == pytest.approx(np.mean(np.abs(pred - true)), rel=1e-12)


def test_window_average_is_not_pooled_average():
    # Window 0 has 1 observed entry with error 10, window 1 has 4 entries with error 0.
    true = np.zeros((2, 2, 2))
    pred = np.zeros((2, 2, 2))
    mask = np.array([[[True, False], [False, False]], [[True, True], [True, True]]])
    pred[0, 0, 0] = 10.0
    assert mse(pred, true, mask) == pytest.approx((100.0 + 0.0) / 2)
    assert mae(pred, true, mask) == pytest.approx(5.0)


def test_all_missing_gives_nan_and_nan_prediction_is_not_hidden():
    true = np.full((2, 3, 4), np.nan)
    assert np.isnan(mse(np.zeros_like(true), true))
    true = np.ones((2, 3, 4))
    pred = np.ones_like(true)
    pred[0, 0, 0] = np.nan
    assert np.isnan(mse(pred, true))
    mask = np.ones(true.shape, bool)
    mask[0, 0, 0] = False  # masking the entry removes it
    assert mse(pred, true, mask) == 0.0


def test_per_horizon_matches_reference():
    pred, true, mask = _data(n=50, h=4)
    df = per_horizon(pred, true, mask)
    assert list(df.columns[:3]) == ["horizon", "mse", "mae"]
    assert df["horizon"].tolist() == [1, 2, 3, 4]
    for k in range(4):
        ref_mse, ref_mae = _reference(pred[:, k : k + 1], true[:, k : k + 1], mask[:, k : k + 1])
        assert df.loc[k, "mse"] == pytest.approx(ref_mse, rel=1e-12)
        assert df.loc[k, "mae"] == pytest.approx(ref_mae, rel=1e-12)
        assert df.loc[k, "count"] == (np.isfinite(true[:, k]) & mask[:, k]).sum()


def test_per_station_matches_reference_and_labels():
    pred, true, mask = _data(n=50, s=3)
    true[:, :, 2] = np.nan  # a station with no data
    ids = np.array(["A", "B", "C"])
    df = per_station(pred, true, mask, station_ids=ids)
    assert df["station"].tolist() == ["A", "B", "C"]
    for j in range(2):
        ref_mse, ref_mae = _reference(pred[:, :, j : j + 1], true[:, :, j : j + 1], mask[:, :, j : j + 1])
        assert df.loc[j, "mse"] == pytest.approx(ref_mse, rel=1e-12)
        assert df.loc[j, "mae"] == pytest.approx(ref_mae, rel=1e-12)
    assert np.isnan(df.loc[2, "mse"]) and df.loc[2, "count"] == 0
    assert isinstance(df, pd.DataFrame)


def test_single_window_2d_input():
    rng = np.random.default_rng(2)
    t = rng.normal(size=(24, 5))
    p = t + 1.0
    assert mse(p, t) == pytest.approx(1.0)
    assert mae(p, t, np.ones((24, 5), bool)) == pytest.approx(1.0)


def test_shape_errors_are_clear():
    p = np.zeros((2, 24, 3))
    with pytest.raises(ValueError, match=r"true\[:, -24:\]"):
        mse(p, np.zeros((2, 48, 3)))
    with pytest.raises(ValueError, match="mask has shape"):
        mse(p, p, np.ones((2, 24, 4), bool))
    with pytest.raises(ValueError, match="station_ids has 2 entries for 3"):
        per_station(p, p, station_ids=["a", "b"])
    with pytest.raises(ValueError, match="pred must be"):
        mse(np.zeros(5), np.zeros(5))


def test_batch_averaging_reproduces_the_corrformer_test_loop():
    """Corrformer's test(): per batch simple_metric = np.mean over the batch, then the mean over batches."""
    rng = np.random.default_rng(4)
    true = rng.normal(size=(70, 24, 6))
    pred = true + rng.normal(scale=rng.uniform(0.5, 2.0, (70, 1, 1)), size=true.shape)
    for bs, drop_last in ((32, False), (32, True), (16, False), (7, True)):
        n = 70 - (70 % bs if drop_last else 0)
        batches = [(pred[i : i + bs], true[i : i + bs]) for i in range(0, n, bs)]
        ref_mse = np.mean([np.mean((p - t) ** 2) for p, t in batches])
        ref_mae = np.mean([np.mean(np.abs(p - t)) for p, t in batches])
        assert mse(pred, true, batch_size=bs, drop_last=drop_last) == pytest.approx(ref_mse, rel=1e-12)
        assert mae(pred, true, batch_size=bs, drop_last=drop_last) == pytest.approx(ref_mae, rel=1e-12)
    # the window average differs when the last batch is partial, and agrees when batches are full
    assert mse(pred, true, batch_size=32) != pytest.approx(mse(pred, true), rel=1e-9)
    assert mse(pred, true, batch_size=35) == pytest.approx(mse(pred, true), rel=1e-12)
    with pytest.raises(ValueError, match="batch_size"):
        mse(pred, true, batch_size=0)
