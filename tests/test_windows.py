import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from urlk_forecast.data.schema import SchemaError, make_dataset
from urlk_forecast.data.windows import (
    WindowDataset,
    fill_gaps,
    hilbert_index,
    split_dataset,
    station_order,
    time_features,
)


def _ds(T=300, S=12, seed=0, start="2020-01-01", nan_frac=0.0):
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, periods=T, freq="h")
    v = (rng.normal(size=(T, S)).cumsum(0) + 10).astype(np.float32)
    if nan_frac:
        v[rng.random(v.shape) < nan_frac] = np.nan
    lat = rng.uniform(-60, 70, S)
    lon = rng.uniform(-180, 180, S)
    ids = [f"st{i:03d}" for i in range(S)]
    return make_dataset(times, ids, lat, lon, rng.uniform(0, 2000, S), temperature=v, wind_speed=np.abs(v))


# ------------------------------------------------------------------------------------------ time features


def test_time_features_closed_form():
    t = pd.DatetimeIndex(["2019-01-01 00:00", "2019-12-31 23:00", "2020-02-29 12:00", "2021-03-07 05:00"])
    f = time_features(t)
    assert f.shape == (4, 4) and f.dtype == np.float32
    expect = np.array(
        [
            [0 / 23 - 0.5, 1 / 6 - 0.5, 0 / 30 - 0.5, 0 / 365 - 0.5],  # Tuesday, Jan 1
            [23 / 23 - 0.5, 1 / 6 - 0.5, 30 / 30 - 0.5, 364 / 365 - 0.5],  # Tuesday, Dec 31
            [12 / 23 - 0.5, 5 / 6 - 0.5, 28 / 30 - 0.5, 59 / 365 - 0.5],  # Saturday, Feb 29 (day 60)
            [5 / 23 - 0.5, 6 / 6 - 0.5, 6 / 30 - 0.5, 65 / 365 - 0.5],  # Sunday, Mar 7 (day 66)
        ],
        np.float32,
    )
    np.testing.assert_allclose(f, expect, atol=1e-7)
    year = time_features(pd.date_range("2020-01-01", "2020-12-31 23:00", freq="h"))
    assert year.min() >= -0.5 and year.max() <= 0.5
    np.testing.assert_allclose(year.min(0), -0.5)
    np.testing.assert_allclose(year.max(0), 0.5)  # leap-year day 366 -> 365/365 - 0.5


# ------------------------------------------------------------------------------------------------ splits


def test_split_ratios_chronological():
    ds = _ds(T=1000)
    parts = split_dataset(ds)
    assert [parts[k].sizes["time"] for k in ("train", "val", "test")] == [700, 100, 200]
    joined = np.concatenate([parts[k].time.values for k in ("train", "val", "test")])
    np.testing.assert_array_equal(joined, ds.time.values)
    assert parts["test"].attrs["split"] == "test"
    parts = split_dataset(_ds(T=999), ratios=(0.6, 0.2, 0.2))
    assert [parts[k].sizes["time"] for k in ("train", "val", "test")] == [599, 201, 199]  # int() then the rest


def test_split_context_and_windows_start_at_boundary():
    ds = _ds(T=1000)
    parts = split_dataset(ds, context=48)
    test = parts["test"]
    assert test.sizes["time"] == 248 and test.attrs["split_context"] == 48
    ws = WindowDataset(test, "temperature", seq_len=48, label_len=24, pred_len=24)
    assert ws.forecast_start_times[0] == ds.time.values[800]  # first target = first own test step
    assert len(ws) == 200 - 24 + 1
    ws96 = WindowDataset(test, "temperature", seq_len=24, label_len=12, pred_len=24)  # shorter history is fine too
    assert ws96.forecast_start_times[0] == ds.time.values[800]
    assert parts["train"].attrs["split_context"] == 0


def test_split_bounds_attribute_is_honoured():
    ds = _ds(T=100)
    t = pd.DatetimeIndex(ds.time.values)
    ds.attrs["split_bounds"] = f"train:{t[0]}/{t[59]};val:{t[60].isoformat()}/{t[69]};test:{t[70]}/{t[99]}"
    parts = split_dataset(ds, ratios=(0.5, 0.25, 0.25))  # ratios ignored
    assert [parts[k].sizes["time"] for k in ("train", "val", "test")] == [60, 10, 30]
    assert parts["val"].time.values[0] == t[60]
    assert "split_bounds" not in parts["val"].attrs


@pytest.mark.parametrize(
    "bounds, match",
    [
        ("train:2020-01-01/2020-01-02;val:2020-01-03/2020-01-03", "lacks \\['test'\\]"),
        ("train 2020-01-01/2020-01-02", "not 'NAME:START/END'"),
        ("train:2020-01-01/nonsense;val:x/y;test:a/b", "bad time"),
        ("train:2030-01-01/2030-01-02;val:2020-01-01/2020-01-02;test:2020-01-03/2020-01-04", "selects no time"),
    ],
)
def test_split_bounds_errors(bounds, match):
    ds = _ds(T=200)
    ds.attrs["split_bounds"] = bounds
    with pytest.raises(SchemaError, match=match):
        split_dataset(ds)


def test_split_bad_ratios():
    with pytest.raises(ValueError, match="summing to 1"):
        split_dataset(_ds(), ratios=(0.7, 0.2, 0.2))
    with pytest.raises(ValueError, match="too few"):
        split_dataset(_ds(T=3), ratios=(0.7, 0.1, 0.2))


# ----------------------------------------------------------------------------------------- station order


def test_hilbert_curve_is_continuous_bijection():
    bits = 5
    n = 1 << bits
    gx, gy = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    d = hilbert_index(gx.ravel(), gy.ravel(), bits)
    assert np.array_equal(np.sort(d), np.arange(n * n))
    order = np.argsort(d)
    steps = np.abs(np.diff(gx.ravel()[order])) + np.abs(np.diff(gy.ravel()[order]))
    assert np.all(steps == 1)  # consecutive cells along the curve are grid neighbours
    with pytest.raises(ValueError, match="grid coordinates"):
        hilbert_index(np.array([n]), np.array([0]), bits)


def _haversine_km(lat1, lon1, lat2, lon2):
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * np.arcsin(np.sqrt(a))


def test_station_order_puts_neighbours_together():
    rng = np.random.default_rng(3)
    lat = np.degrees(np.arcsin(rng.uniform(-0.9, 0.95, 3000)))
    lon = rng.uniform(-180, 180, 3000)
    order = station_order(lat, lon)
    assert np.array_equal(np.sort(order), np.arange(3000))
    curve = _haversine_km(lat[order][:-1], lon[order][:-1], lat[order][1:], lon[order][1:]).mean()
    perm = rng.permutation(3000)
    rand = _haversine_km(lat[perm][:-1], lon[perm][:-1], lat[perm][1:], lon[perm][1:]).mean()
    assert curve < 0.05 * rand, (curve, rand)
    # groups of 16 consecutive stations are compact (the paper's nodes)
    g = order[: 3000 // 16 * 16].reshape(-1, 16)
    spread = _haversine_km(lat[g], lon[g], lat[g].mean(1, keepdims=True), lon[g].mean(1, keepdims=True)).mean()
    assert spread < 800, spread
    with pytest.raises(ValueError, match="non-finite"):
        station_order([0.0, np.nan], [0.0, 1.0])


# ------------------------------------------------------------------------------------------- gap filling


def test_fill_gaps_against_reference():
    v = np.array([np.nan, np.nan, 1.0, 2.0, np.nan, np.nan, 8.0, np.nan, np.nan, np.nan, np.nan, 3.0, np.nan])
    filled, mask, observed = fill_gaps(v[:, None], max_gap=3)
    expect = [1, 1, 1, 2, 4, 6, 8, 8, 8, 8, 8, 3, 3]  # lead: back-hold; 2-gap: interp; 4-gap: hold; tail: hold
    np.testing.assert_allclose(filled[:, 0], expect)
    assert mask[:, 0].tolist() == [False, False, True, True, True, True, True, False, False, False, False, True, False]
    assert observed[:, 0].tolist() == list(np.isfinite(v))
    rng = np.random.default_rng(0)
    w = rng.normal(size=(500, 7)).astype(np.float32)
    w[rng.random(w.shape) < 0.4] = np.nan
    f, m, _ = fill_gaps(w, max_gap=2)
    for s in range(7):  # interpolated entries equal np.interp over the observations
        ok = np.isfinite(w[:, s])
        ref = np.interp(np.arange(500), np.flatnonzero(ok), w[ok, s])
        interp = m[:, s] & ~ok
        np.testing.assert_allclose(f[interp, s], ref[interp], rtol=1e-6)
        assert np.all(f[ok, s] == w[ok, s])


# ------------------------------------------------------------------------------------------------ windows


def test_windows_are_slices_of_the_dataset_in_model_order():
    ds = _ds(T=200, S=12)
    ws = WindowDataset(ds, "temperature", seq_len=48, label_len=24, pred_len=12, stride=5)
    v = ds.temperature.values[:, ws.order]
    assert len(ws) == (200 - 60) // 5 + 1
    np.testing.assert_array_equal(ws.station_ids, ds.station.values[ws.order])
    marks = time_features(ds.time.values)
    for i in (0, 7, len(ws) - 1):
        it = ws[i]
        s0 = 5 * i
        np.testing.assert_array_equal(it["x"].numpy(), v[s0 : s0 + 48])
        np.testing.assert_array_equal(it["y"].numpy(), v[s0 + 24 : s0 + 60])
        np.testing.assert_array_equal(it["x_mark"].numpy(), marks[s0 : s0 + 48])
        np.testing.assert_array_equal(it["y_mark"].numpy(), marks[s0 + 24 : s0 + 60])
        assert it["x_mask"].all() and it["y_mask"].all() and it["index"] == i
        assert it["x"].dtype == torch.float32 and it["x_mask"].dtype == torch.bool
    assert ws.window_start_times[7] == ds.time.values[35]
    assert ws.forecast_start_times[7] == ds.time.values[35 + 48]
    with pytest.raises(IndexError):
        ws[len(ws)]
    np.testing.assert_array_equal(ws[-1]["x"].numpy(), ws[len(ws) - 1]["x"].numpy())


def test_batch_equals_stacked_items_and_dataloader():
    ws = WindowDataset(_ds(T=150, S=9, nan_frac=0.1), "wind_speed", seq_len=24, label_len=12, pred_len=6)
    idx = [0, 5, 3, 40]
    b = ws.batch(idx)
    for k in ("x", "y", "x_mark", "y_mark", "x_mask", "y_mask"):
        ref = torch.stack([ws[i][k] for i in idx])
        assert torch.equal(torch.nan_to_num(b[k], nan=-999.0), torch.nan_to_num(ref, nan=-999.0)), k
    assert b["index"].tolist() == idx
    loader = torch.utils.data.DataLoader(ws, batch_size=4, shuffle=False)
    first = next(iter(loader))
    assert first["x"].shape == (4, 24, 9) and first["index"].tolist() == [0, 1, 2, 3]
    fast = torch.utils.data.DataLoader(
        ws, batch_size=None, sampler=torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(ws), 4, False)
    )
    via_sampler = next(iter(fast))
    for k in ("x", "y_mask", "index"):
        assert torch.equal(torch.nan_to_num(via_sampler[k]), torch.nan_to_num(first[k])), k
    batches = list(ws.iter_batches(batch_size=32, shuffle=True, seed=1))
    seen = torch.cat([bb["index"] for bb in batches])
    assert sorted(seen.tolist()) == list(range(len(ws)))
    assert len(list(ws.iter_batches(batch_size=32, drop_last=True))) == len(ws) // 32


def test_coords_are_standardised_and_order_round_trips():
    ds = _ds(S=20)
    ws = WindowDataset(ds, "temperature")
    c = ws.coords
    assert c.shape == (20, 3) and c.dtype == np.float32
    np.testing.assert_allclose(c.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(c.std(0), 1, atol=1e-5)
    np.testing.assert_allclose(c[:, 0], (ws.lat - ds.lat.values.mean()) / ds.lat.values.std(), rtol=1e-4, atol=1e-5)
    model = ws.batch([0])["x"]
    back = ws.to_dataset_order(model)
    np.testing.assert_array_equal(back[0].numpy(), ds.temperature.values[:48])
    ident = WindowDataset(ds, "temperature", order="identity")
    np.testing.assert_array_equal(ident.station_ids, ds.station.values)
    custom = WindowDataset(ds, "temperature", order=np.arange(20)[::-1])
    np.testing.assert_array_equal(custom.station_ids, ds.station.values[::-1])


def test_missing_data_policy():
    T, S = 120, 3
    ds = _ds(T=T, S=S)
    v = ds.temperature.values.copy()
    v[60:62, 0] = np.nan  # short gap inside the target
    v[70:90, 1] = np.nan  # long gap inside the target
    v[10:30, 2] = np.nan  # long gap inside x
    ds["temperature"].values[:] = v
    ws = WindowDataset(ds, "temperature", seq_len=48, label_len=24, pred_len=48, order="identity")
    b = ws[0]  # x = rows 0..47, targets = rows 48..95
    x, y, xm, ym = b["x"].numpy(), b["y"].numpy(), b["x_mask"].numpy(), b["y_mask"].numpy()
    # short target gap: interpolated, counts as observed
    np.testing.assert_allclose(y[24 + 12 : 24 + 14, 0], np.interp([60, 61], [59, 62], v[[59, 62], 0]), rtol=1e-6)
    assert ym[24 + 12 : 24 + 14, 0].all()
    # long target gap: NaN and masked, never zero
    assert np.isnan(y[24 + 22 : 24 + 42, 1]).all() and not ym[24 + 22 : 24 + 42, 1].any()
    assert np.isfinite(y[:, [0, 2]]).all()
    # long input gap: holds the last observation, masked
    np.testing.assert_array_equal(x[10:30, 2], np.full(20, v[9, 2]))
    assert not xm[10:30, 2].any() and xm[:10, 2].all() and xm[30:, 2].all()
    assert np.isfinite(x).all()
    # y's label rows are x's tail
    np.testing.assert_array_equal(y[:24], x[24:])
    np.testing.assert_array_equal(ym[:24], xm[24:])


def test_empty_station_is_flagged_not_zero_filled():
    ds = _ds(T=100, S=4)
    ds["temperature"].values[:, 2] = np.nan
    with pytest.warns(UserWarning, match="st002"):
        ws = WindowDataset(ds, "temperature", order="identity")
    b = ws.batch([0, 10])
    nearest = np.argmin(
        [_haversine_km(ds.lat.values[2], ds.lon.values[2], ds.lat.values[j], ds.lon.values[j]) for j in (0, 1, 3)]
    )
    src = [0, 1, 3][nearest]
    assert torch.equal(b["x"][:, :, 2], b["x"][:, :, src])
    assert not b["x_mask"][:, :, 2].any() and torch.isnan(b["y"][:, 24:, 2]).all()
    all_nan = _ds(T=100, S=2)
    all_nan["temperature"].values[:] = np.nan
    with pytest.raises(SchemaError, match="no observation at all"):
        WindowDataset(all_nan, "temperature")


def test_leading_gap_inputs_come_from_nearest_station_with_data_causally():
    T = 120
    rng = np.random.default_rng(5)
    v = rng.normal(size=(T, 4)).astype(np.float32).cumsum(0)
    v[:30, 0] = np.nan  # station 0 starts at t=30
    v[:10, 1] = np.nan  # its nearest neighbour starts at t=10 ...
    v[20:22, 1] = np.nan  # ... and has a short gap (interpolated for itself, held when lent)
    coords = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 10.0], [0.0, 50.0]])
    ws = WindowDataset.from_arrays(v, pd.date_range("2020-01-01", periods=T, freq="h"), coords, order="identity",
                                   seq_len=48, label_len=24, pred_len=24, max_gap=3)
    x, xm, y = ws[0]["x"].numpy(), ws[0]["x_mask"].numpy(), ws[0]["y"].numpy()
    np.testing.assert_array_equal(x[:10, 0], v[:10, 2])  # before any neighbour nearer than station 2 has data
    np.testing.assert_array_equal(x[10:20, 0], v[10:20, 1])
    np.testing.assert_array_equal(x[20:22, 0], [v[19, 1], v[19, 1]])  # donor's causal (held) value
    np.testing.assert_array_equal(x[22:30, 0], v[22:30, 1])
    np.testing.assert_array_equal(x[30:, 0], v[30:48, 0])
    assert not xm[:30, 0].any() and xm[30:, 0].all()
    np.testing.assert_allclose(x[20:22, 1], np.interp([20, 21], [19, 22], v[[19, 22], 1]), rtol=1e-6)  # own: interp
    assert np.isfinite(y[:, 0]).all()  # the targets (rows 48..71) are observed


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    max_gap=st.integers(0, 5),
    frac=st.floats(0.0, 0.6),
    window=st.integers(0, 40),
)
def test_inputs_never_see_the_future(seed, max_gap, frac, window):
    """x and x_mask of a window do not change when everything after its last input step changes."""
    rng = np.random.default_rng(seed)
    T, S, L, Q = 100, 6, 24, 12
    v = rng.normal(size=(T, S)).astype(np.float32)
    v[rng.random(v.shape) < frac] = np.nan
    for s in range(S):  # some runs of gaps of random length
        a = rng.integers(0, T)
        v[a : a + rng.integers(1, 8), s] = np.nan
    e = window + L - 1
    w = v.copy()
    w[e + 1 :] = rng.normal(size=(T - e - 1, S))
    w[e + 1 :][rng.random((T - e - 1, S)) < 0.5] = np.nan
    times = pd.date_range("2021-01-01", periods=T, freq="h")
    coords = np.c_[np.linspace(-50, 50, S), np.linspace(-100, 100, S)]
    kw = dict(seq_len=L, label_len=L // 2, pred_len=Q, max_gap=max_gap, order="identity")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = WindowDataset.from_arrays(v, times, coords, **kw).batch([window])
        b = WindowDataset.from_arrays(w, times, coords, **kw).batch([window])
    # every value is causal except rows before the first observation of any station (nothing exists to use there)
    obs_rows = np.flatnonzero(np.isfinite(v[: e + 1]).any(axis=1))
    r0 = max(0, obs_rows[0] - window) if obs_rows.size else L
    np.testing.assert_array_equal(a["x"][0].numpy()[r0:], b["x"][0].numpy()[r0:])
    np.testing.assert_array_equal(a["x_mask"][0].numpy(), b["x_mask"][0].numpy())


def test_windows_hold_one_array_not_copies():
    ds = _ds(T=2000, S=50)
    ws = WindowDataset(ds, "temperature", stride=1)
    arrays = [a for a in vars(ws).values() if isinstance(a, np.ndarray)]
    total = sum(a.nbytes for a in arrays)
    T, S = 2000, 50
    assert total < T * S * (4 + 1 + 1) + T * 4 * 4 + 100 * S * 8  # values + mask + observed + marks + per-station
    assert len(ws) == 2000 - 72 + 1  # ~2000 windows that would be 2000x larger if materialised


def test_bad_arguments():
    ds = _ds()
    with pytest.raises(ValueError, match="label_len"):
        WindowDataset(ds, "temperature", seq_len=12, label_len=24)
    with pytest.raises(ValueError, match="stride"):
        WindowDataset(ds, "temperature", stride=0)
    with pytest.raises(ValueError, match="permutation"):
        WindowDataset(ds, "temperature", order=[0, 0, 1])
    with pytest.raises(SchemaError, match="missing variable 'pressure'|unknown variable 'pressure'"):
        WindowDataset(ds, "pressure")
    ws = WindowDataset(ds, "temperature")
    with pytest.raises(IndexError, match="out of range"):
        ws.batch([0, len(ws)])
    with pytest.raises(TypeError):
        ws.batch([0.5])
    short = WindowDataset(_ds(T=50), "temperature")
    assert len(short) == 0


def test_gap_open_at_end_of_inputs_is_held_not_interpolated():
    ds = _ds(T=100, S=2)
    v = ds.temperature.values
    v[46:50, 0] = np.nan  # a 4-step gap, short for max_gap=4, straddling the x/y border (x = rows 0..47)
    ws = WindowDataset(ds, "temperature", seq_len=48, label_len=24, pred_len=24, max_gap=4, order="identity")
    b = ws[0]
    np.testing.assert_array_equal(b["x"][46:, 0].numpy(), [v[45, 0], v[45, 0]])
    assert not b["x_mask"][46:, 0].any()
    ref = np.interp([48, 49], [45, 50], v[[45, 50], 0])  # the targets are interpolated and observed
    np.testing.assert_allclose(b["y"][24:26, 0].numpy(), ref, rtol=1e-6)
    assert b["y_mask"][24:26, 0].all()
    later = ws[3]  # x = rows 3..50: the gap is closed inside x, so interpolated and observed
    np.testing.assert_allclose(later["x"][43:47, 0].numpy(), np.interp([46, 47, 48, 49], [45, 50], v[[45, 50], 0]),
                               rtol=1e-6)
    assert later["x_mask"][43:47, 0].all()


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    max_gap=st.integers(0, 6),
    frac=st.floats(0.0, 0.7),
    seq_len=st.integers(1, 30),
    label_frac=st.floats(0.0, 1.0),
    pred_len=st.integers(1, 12),
    stride=st.integers(1, 5),
)
def test_fast_batch_matches_numpy_reference(seed, max_gap, frac, seq_len, label_frac, pred_len, stride):
    rng = np.random.default_rng(seed)
    T, S = 90, 7
    v = rng.normal(size=(T, S)).astype(np.float32)
    v[rng.random(v.shape) < frac] = np.nan
    v[:, 0] = np.where(np.arange(T) % 11 < 5, np.nan, v[:, 0])  # regular gaps of 5
    v[0, 1] = 1.0
    label_len = int(label_frac * seq_len)
    kw = dict(seq_len=seq_len, label_len=label_len, pred_len=pred_len, stride=stride, max_gap=max_gap)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = WindowDataset.from_arrays(v, pd.date_range("2022-01-01", periods=T, freq="h"),
                                       np.c_[np.linspace(-40, 40, S), np.linspace(-120, 120, S)], **kw)
    idx = rng.integers(0, len(ws), 9)
    fast, ref = ws.batch(idx), ws._batch_reference(idx)
    for k in ("x", "y", "x_mask", "y_mask"):
        np.testing.assert_array_equal(fast[k].numpy(), ref[k], err_msg=k)
    assert np.isfinite(fast["x"].numpy()).all()


def test_end_to_end_persistence_score_matches_pandas_reference():
    """synthetic -> split(context) -> windows -> metrics equals a direct pandas/float64 computation."""
    from urlk_forecast.data.synthetic import synthetic_global
    from urlk_forecast.metrics import evaluate_arrays

    ds = synthetic_global(stations=60, hours=1500, seed=4, missing=0.05)
    test = split_dataset(ds, context=48)["test"]
    ws = WindowDataset(test, "temperature", seq_len=48, label_len=24, pred_len=24, max_gap=0, order="identity")
    b = ws.batch(np.arange(len(ws)))
    boundary = 1500 - int(1500 * 0.2)
    raw = pd.DataFrame(ds.temperature.values[boundary - 48 :].astype(np.float64))  # the test split with context
    late = np.isnan(raw.to_numpy()[0])  # stations whose record starts late borrow neighbours' inputs: left out
    assert 0 < late.sum() < 10
    pred = b["x"][:, -1:, :].repeat(1, 24, 1)  # persistence of the last (held) input value
    got = evaluate_arrays(pred, b["y"][:, 24:], b["y_mask"][:, 24:] & torch.from_numpy(~late))

    raw.loc[:, late] = np.nan
    held = raw.ffill().to_numpy()  # last observation carried forward
    v = raw.to_numpy()
    per_window = []
    for i in range(len(ws)):
        t_last = 47 + i  # last input step of window i
        truth = v[t_last + 1 : t_last + 25]
        ok = np.isfinite(truth)
        if ok.any():
            per_window.append(np.mean((held[t_last][None, :].repeat(24, 0)[ok] - truth[ok]) ** 2))
    assert len(ws) == 300 - 24 + 1
    assert got["mse"] == pytest.approx(np.mean(per_window), rel=1e-6)


def test_fill_gaps_reorders_and_threads_consistently(monkeypatch):
    import urlk_forecast.data.windows as W

    rng = np.random.default_rng(9)
    v = rng.normal(size=(2000, 2100)).astype(np.float32)
    v[rng.random(v.shape) < 0.3] = np.nan
    order = rng.permutation(2100)
    threaded = fill_gaps(v, 3, order)
    monkeypatch.setattr(W.os, "cpu_count", lambda: 1)
    single = fill_gaps(np.ascontiguousarray(v[:, order]), 3)
    for a, b in zip(threaded, single):
        np.testing.assert_array_equal(a, b)
    f64 = fill_gaps(v[:50, :7].astype(np.float64), 3)[0]  # any float dtype in, float32 out
    assert f64.dtype == np.float32
    np.testing.assert_array_equal(f64, fill_gaps(v[:50, :7], 3)[0])


def test_data_pipeline_benchmark_smoke(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "data_pipeline.py"
    spec = importlib.util.spec_from_file_location("data_pipeline_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "bench.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mod.main(["--stations", "40", "--hours", "400", "--seconds", "0.05", "--json", str(out),
                        "--workdir", str(tmp_path)])
    saved = json.loads(out.read_text())
    for key in ("synthetic_generate_s", "netcdf_write_s", "netcdf_read_s", "windows_per_s_batch"):
        assert saved[key] == res[key] and res[key] > 0
    assert not list(tmp_path.glob("*/synthetic.nc"))  # the temporary netCDF is cleaned up
