import io
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from urlk_forecast.data.scaling import StandardScaler
from urlk_forecast.data.schema import make_dataset
from urlk_forecast.data.windows import WindowDataset


def _arr(seed=0, T=400, S=6):
    rng = np.random.default_rng(seed)
    a = rng.normal(loc=rng.uniform(-20, 30, S), scale=rng.uniform(0.5, 8, S), size=(T, S))
    a[rng.random(a.shape) < 0.2] = np.nan
    return a.astype(np.float32)


def test_per_station_stats_match_nan_reference():
    a = _arr()
    sc = StandardScaler().fit(a)
    np.testing.assert_allclose(sc.mean, np.nanmean(a.astype(np.float64), axis=0), rtol=1e-12)
    np.testing.assert_allclose(sc.std, np.nanstd(a.astype(np.float64), axis=0), rtol=1e-10)
    z = sc.transform(a)
    assert z.dtype == np.float32
    np.testing.assert_allclose(np.nanmean(z, 0), 0, atol=1e-5)
    np.testing.assert_allclose(np.nanstd(z, 0), 1, atol=1e-5)
    assert np.array_equal(np.isnan(z), np.isnan(a))  # missing stays missing, never zero
    np.testing.assert_allclose(sc.inverse_transform(z), a, rtol=1e-5, atol=1e-4)


def test_torch_round_trip_keeps_dtype_and_broadcasts():
    a = _arr()
    sc = StandardScaler().fit(torch.from_numpy(a))
    x = torch.from_numpy(np.nan_to_num(a[:48]))[None].repeat(3, 1, 1)  # (B, L, S)
    z = sc.transform(x)
    assert isinstance(z, torch.Tensor) and z.dtype == torch.float32 and z.shape == x.shape
    np.testing.assert_allclose(z.numpy(), (x.numpy() - sc.mean) / sc.std, rtol=1e-5, atol=1e-5)
    back = sc.inverse_transform(z.double())
    assert back.dtype == torch.float64
    torch.testing.assert_close(back, x.double(), rtol=1e-6, atol=1e-5)


def test_std_floor_and_sparse_station_fallback():
    a = _arr(S=4)
    a[:, 1] = 5.0  # constant station
    a[:, 2] = np.nan
    a[7, 2] = 3.0  # a single value
    with pytest.warns(UserWarning, match="1 station"):
        sc = StandardScaler(min_std=0.1).fit(a)
    assert sc.std[1] == pytest.approx(0.1)
    pooled = a[np.isfinite(a)].astype(np.float64)
    assert sc.mean[2] == pytest.approx(pooled.mean()) and sc.std[2] == pytest.approx(pooled.std())
    assert np.all(np.isfinite(sc.transform(np.nan_to_num(a))))


def test_pooled_mode():
    a = _arr()
    sc = StandardScaler(per_station=False).fit(a)
    pooled = a[np.isfinite(a)].astype(np.float64)
    np.testing.assert_allclose(sc.mean, pooled.mean())
    np.testing.assert_allclose(sc.std, pooled.std())


def test_fit_on_dataset_and_window_dataset():
    a = _arr(T=200, S=5)
    times = pd.date_range("2020-01-01", periods=200, freq="h")
    ds = make_dataset(times, list("abcde"), np.linspace(-40, 40, 5), np.linspace(-90, 90, 5), temperature=a)
    from_ds = StandardScaler().fit(ds, "temperature")
    np.testing.assert_allclose(from_ds.mean, np.nanmean(a.astype(np.float64), 0), rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = WindowDataset(ds, "temperature", max_gap=3)
    from_ws = StandardScaler().fit(ws)  # observed values only, in model order
    np.testing.assert_allclose(from_ws.mean, from_ds.mean[ws.order], rtol=1e-12)
    with pytest.raises(ValueError, match="variable="):
        StandardScaler().fit(ds)


def test_state_dict_round_trip_through_torch_save():
    sc = StandardScaler().fit(_arr())
    buf = io.BytesIO()
    torch.save({"scaler": sc.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)["scaler"]
    sc2 = StandardScaler.from_state_dict(state)
    np.testing.assert_array_equal(sc2.mean, sc.mean)
    np.testing.assert_array_equal(sc2.std, sc.std)
    sc3 = StandardScaler.from_state_dict({"mean": sc.mean.tolist(), "std": sc.std.tolist()})
    np.testing.assert_array_equal(sc3.std, sc.std)


def test_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        StandardScaler().transform(np.zeros((2, 3)))
    sc = StandardScaler().fit(_arr(S=6))
    with pytest.raises(ValueError, match="expected 6 stations"):
        sc.transform(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="no finite value"):
        StandardScaler().fit(np.full((3, 2), np.nan))
    with pytest.raises(KeyError, match="lacks"):
        StandardScaler.from_state_dict({"mean": [0.0]})
    with pytest.raises(ValueError, match="non-positive"):
        StandardScaler.from_state_dict({"mean": [0.0], "std": [0.0]})
