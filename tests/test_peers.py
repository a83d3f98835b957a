"""Optional real-library peers behind the Method contract (extra ``peers``).

neuralforecast (PatchTST, NHITS, DLinear): batched prediction equals the library's own
``NeuralForecast.predict(df=history)``, NaN without observed input, the time box, the table columns.
statsforecast (AutoETS, MSTL): each window's forecast equals the library's ``forward`` on the station's history up to
the window's origin, built independently from the raw data; fallbacks; stations without training data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from urlk_forecast.baselines.peers import NeuralForecastPeer, neuralforecast_available, training_frame
from urlk_forecast.baselines.statsforecast_models import AutoETSMethod, MSTLMethod, statsforecast_available
from urlk_forecast.data.schema import make_dataset
from urlk_forecast.data.windows import WindowDataset, split_dataset
from urlk_forecast.scoring import score_methods

needs_nf = pytest.mark.skipif(not neuralforecast_available(), reason="needs neuralforecast (extra 'peers')")
needs_sf = pytest.mark.skipif(not statsforecast_available(), reason="needs statsforecast (extra 'peers')")


def _dataset(hours: int = 24 * 40, stations: int = 3, seed: int = 0, dead: int | None = None, gaps: bool = True):
    """Daily cycle + AR(1) weather per station; gaps in the first half; station ``dead`` unobserved at the end."""
    rng = np.random.default_rng(seed)
    t = pd.date_range("2021-03-01", periods=hours, freq="h")
    h = np.arange(hours)[:, None]
    ar = np.zeros((hours, stations))
    for i in range(1, hours):
        ar[i] = 0.95 * ar[i - 1] + rng.normal(0, 0.5, stations)
    v = 10 + 5 * np.sin(2 * np.pi * (h - 9 + 2 * np.arange(stations)) / 24) + ar
    if gaps:
        v[100:102, 0] = np.nan  # short gap (interpolated)
        v[200:220, 1] = np.nan  # long gap (held, available_mask 0 in training)
    if dead is not None:
        v[-24 * 12:, dead] = np.nan
    return make_dataset(t, [f"st{i}" for i in range(stations)], 40 + np.arange(stations), 5 + np.arange(stations),
                        temperature=v.astype(np.float32))


@pytest.fixture(scope="module")
def fitted():
    ds = _dataset()
    parts = split_dataset(ds, context=48)
    peer = NeuralForecastPeer("dlinear", max_steps=30, max_time=60, accelerator="cpu", val_check_steps=10)
    peer.fit(parts["train"], val=parts["val"])
    ws = WindowDataset(parts["test"], "temperature", 48, 24, 24)
    return peer, parts, ws


@needs_nf
def test_training_frame_is_gap_filled_with_the_window_mask():
    ds = _dataset()
    parts = split_dataset(ds, context=48)
    df, val_size = training_frame(parts["train"], "temperature", parts["val"])
    n_train = parts["train"].sizes["time"]
    assert val_size == parts["val"].sizes["time"] - 48  # the val hours after the training split
    assert set(df["unique_id"]) == {"st0", "st1", "st2"}
    assert len(df) == 3 * (n_train + val_size)
    assert df["y"].notna().all()
    s0 = df[df["unique_id"] == "st0"].reset_index(drop=True)
    s1 = df[df["unique_id"] == "st1"].reset_index(drop=True)
    raw0 = ds["temperature"].values[:, 0]
    # short gap: linear interpolation, available; long gap: last value held, not available
    assert s0.loc[100, "y"] == pytest.approx(raw0[99] + (raw0[102] - raw0[99]) / 3, abs=1e-4)
    assert s0.loc[100:101, "available_mask"].eq(1.0).all()
    assert s1.loc[200:219, "available_mask"].eq(0.0).all()
    assert np.allclose(s1.loc[200:219, "y"], ds["temperature"].values[199, 1])
    assert s1.loc[220, "available_mask"] == 1.0


@needs_nf
@pytest.mark.filterwarnings("ignore:.*LeafSpec")  # pytorch_lightning internals, in the reference call
def test_batched_prediction_equals_neuralforecast_predict_on_history(fitted):
    peer, parts, ws = fitted
    test = parts["test"]
    vals = test["temperature"].transpose("time", "station").values
    times = pd.DatetimeIndex(test.time.values)
    ids = [str(s) for s in test.station.values]
    for i in (5, len(ws) - 1):
        got = peer.predict_windows(ws, [i])[0]  # (pred_len, S), model order
        origin = int(np.flatnonzero(times == ws.forecast_start_times[i])[0])
        assert np.isfinite(vals[:origin]).all()  # history longer than the input, no gap: the library's own path
        hist = pd.DataFrame({"unique_id": np.repeat(ids, origin), "ds": np.tile(times[:origin].values, len(ids)),
                             "y": vals[:origin].T.reshape(-1), "available_mask": 1.0})
        ref = peer.nf.predict(df=hist)
        col = [c for c in ref.columns if c not in ("unique_id", "ds")][0]
        for j, sid in enumerate(ws.station_ids):
            r = ref[ref["unique_id"] == sid].sort_values("ds")
            assert pd.DatetimeIndex(r["ds"])[0] == ws.forecast_start_times[i]
            np.testing.assert_allclose(got[:, j], r[col].to_numpy(), rtol=1e-4, atol=1e-4)


@needs_nf
def test_scored_like_every_method(fitted):
    peer, _parts, ws = fitted
    table = score_methods([peer], ws, [0, 10, 20])
    s = table[peer.name]
    assert peer.name == "DLinear (neuralforecast)" and peer.kind == "neural"
    assert np.isfinite(s.mse) and s.coverage == 1.0
    d = peer.describe()
    assert d["parameters"] == peer.n_params > 0 and d["fit_s"] > 0
    assert peer.train_info["steps"] > 0 and peer.train_info["val_size"] > 0


@needs_nf
def test_nan_where_the_input_has_no_observation():
    ds = _dataset(dead=2)
    parts = split_dataset(ds, context=48)
    peer = NeuralForecastPeer("nhits", max_steps=5, max_time=60, accelerator="cpu").fit(parts["train"])
    with pytest.warns(UserWarning, match="no temperature observation"):
        ws = WindowDataset(parts["test"], "temperature", 48, 24, 24, order="identity")
    pred = peer.predict_windows(ws, [len(ws) - 1, len(ws) - 2])
    assert pred.shape == (2, 24, 3) and pred.dtype == np.float32
    assert np.isnan(pred[:, :, 2]).all()
    assert np.isfinite(pred[:, :, :2]).all()


@needs_nf
def test_time_box_stops_training():
    ds = _dataset()
    parts = split_dataset(ds, context=48)
    peer = NeuralForecastPeer("dlinear", max_steps=10**7, max_time=2.0, accelerator="cpu")
    peer.fit(parts["train"])
    assert peer.train_info["stopped"] == "max_time"
    assert peer.fit_seconds < 30


@needs_nf
def test_contract_errors(fitted):
    peer, parts, ws = fitted
    with pytest.raises(ValueError, match="unknown neuralforecast peer"):
        NeuralForecastPeer("lstm")
    with pytest.raises(RuntimeError, match="call fit"):
        NeuralForecastPeer("nhits").predict_windows(ws, [0])
    wind = WindowDataset(parts["test"].assign(wind_speed=parts["test"]["temperature"].assign_attrs(units="m s-1")),
                         "wind_speed", 48, 24, 24)
    with pytest.raises(ValueError, match="forecasts 'temperature'"):
        peer.predict_windows(wind, [0])


@needs_nf
@pytest.mark.slow
@pytest.mark.parametrize("model", ["patchtst", "nhits", "dlinear"])
def test_each_peer_fits_and_forecasts(model):
    ds = _dataset(hours=24 * 60)
    parts = split_dataset(ds, context=48)
    peer = NeuralForecastPeer(model, max_steps=40, max_time=120, accelerator="cpu", val_check_steps=20)
    peer.fit(parts["train"], val=parts["val"])
    ws = WindowDataset(parts["test"], "temperature", 48, 24, 24)
    s = peer.evaluate(ws)
    assert np.isfinite(s.mse) and s.mse < 50  # the series' variance is ~15 + AR noise; no skill asserted
    assert peer.n_params > 0


# ------------------------------------------------------------------------------------------------ statsforecast
def _raw(ds):
    return ds["temperature"].transpose("time", "station").values.astype(np.float64), pd.DatetimeIndex(ds.time.values)


@needs_sf
@pytest.mark.parametrize("cls", [AutoETSMethod, MSTLMethod])
def test_statsforecast_forward_on_the_history_up_to_each_origin(cls):
    from statsforecast.models import MSTL, AutoETS

    ds = _dataset(hours=24 * 50, gaps=False)
    parts = split_dataset(ds, context=48)
    m = cls().fit(parts["train"], val=parts["val"])
    ws = WindowDataset(parts["test"], "temperature", 48, 24, 24)
    idx = [0, 7, len(ws) - 1]
    got = m.predict_windows(ws, idx)
    assert got.shape == (3, 24, 3) and np.isfinite(got).all() and m.fallbacks == 0
    vals, times = _raw(ds)
    n_train = parts["train"].sizes["time"]
    ids = [str(s) for s in ds.station.values]
    for k, i in enumerate(idx):
        origin = times.get_loc(ws.forecast_start_times[i])
        for j, sid in enumerate(ws.station_ids):
            c = ids.index(sid)
            if cls is AutoETSMethod:  # fitted on the training split, forward over everything since its start
                ref_model = AutoETS(season_length=24).fit(y=vals[:n_train, c])
                y = vals[:origin, c]
            else:  # the last 4 weeks
                ref_model = MSTL(season_length=24, trend_forecaster=AutoETS(model="ZZN")).fit(y=vals[:n_train, c])
                y = vals[origin - 24 * 28:origin, c]
            ref = ref_model.forward(y=y, h=24)["mean"]
            np.testing.assert_allclose(got[k, :, j], ref, rtol=1e-5, atol=1e-4)
    assert m.n_params > 0 and m.describe()["type"] == "statistical"


@needs_sf
def test_statsforecast_fallback_and_unfitted_station(monkeypatch):
    ds = _dataset(hours=24 * 30, gaps=False)
    v = ds["temperature"].values.copy()
    n_train = split_dataset(ds)["train"].sizes["time"]
    v[:n_train, 2] = np.nan  # no training data at station 2
    ds = ds.assign(temperature=(("time", "station"), v, ds["temperature"].attrs))
    parts = split_dataset(ds, context=48)
    m = AutoETSMethod(history=24 * 7).fit(parts["train"])
    assert m.models[2] is None
    ws = WindowDataset(parts["test"], "temperature", 48, 24, 24, order="identity")
    pred = m.predict_windows(ws, [0, 1])
    assert np.isnan(pred[:, :, 2]).all() and np.isfinite(pred[:, :, :2]).all()

    def boom(*_a, **_k):
        raise ValueError("no")

    monkeypatch.setattr(m.models[0], "forward", boom)
    pred = m.predict_windows(ws, [3])
    x = ws.batch([3])["x"].numpy()
    np.testing.assert_allclose(pred[0, :, 0], x[0, -1, 0])  # persistence fallback, counted
    assert m.fallbacks == 1
    with pytest.raises(ValueError, match="history must be"):
        AutoETSMethod(history=0)


def test_registered_as_baselines():
    from urlk_forecast.baselines import get_baseline, list_baselines

    assert {"patchtst", "nhits", "dlinear", "autoets", "mstl"} <= set(list_baselines())
    p = get_baseline("NHITS", variable="wind_speed", max_time=10)
    assert isinstance(p, NeuralForecastPeer) and p.model == "nhits" and p.variable == "wind_speed"
    assert isinstance(get_baseline("autoets"), AutoETSMethod) and isinstance(get_baseline("mstl"), MSTLMethod)
