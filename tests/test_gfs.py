"""GFS/NWP baseline: bilinear interpolation of an analytic field, longitude conventions, time alignment, files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from urlk_forecast.baselines import GFSInterpolation
from urlk_forecast.baselines.base import target_times, window_arrays
from urlk_forecast.baselines.gfs import bilinear_weights, interpolate_points, synthetic_nwp_grid
from urlk_forecast.data.schema import make_dataset
from urlk_forecast.data.windows import WindowDataset

A, B, C, D = 0.7, -0.3, 0.011, 5.0


def _field(lat: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """a*lat + b*lon + c*lat*lon + d: bilinear in (lat, lon), so bilinear interpolation reproduces it exactly."""
    return A * lat + B * lam + C * lat * lam + D


def _signed(lon: np.ndarray) -> np.ndarray:
    return (np.asarray(lon) + 180.0) % 360.0 - 180.0  # continuous across 0/360 (jumps at the dateline)


def _positive(lon: np.ndarray) -> np.ndarray:
    return np.asarray(lon) % 360.0  # continuous across the dateline (jumps at 0/360)


def _interp(glat: np.ndarray, glon: np.ndarray, values: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    rows, cols, w, inside = bilinear_weights(glat, glon, lat, lon)
    return interpolate_points(values, rows, cols, w, inside)


def test_analytic_field_across_the_0_360_seam_descending_latitudes() -> None:
    glat = np.arange(90.0, -90.1, -2.5)  # descending, like GFS
    glon = np.arange(0.0, 360.0, 2.5)  # 0..357.5: the seam cell is [357.5, 360 = column 0]
    LA, LO = np.meshgrid(glat, glon, indexing="ij")
    values = _field(LA, _signed(LO))
    lat = np.array([12.3, -45.1, 0.2, 33.3, -71.9, 51.0, 88.8])
    lon = np.array([359.2, -0.7, 0.4, 1.3, 100.1, -100.3, 358.0])  # both conventions, inside the seam cell
    got = _interp(glat, glon, values, lat, lon)
    np.testing.assert_allclose(got, _field(lat, _signed(lon)), rtol=0, atol=1e-9)


def test_analytic_field_across_the_dateline_on_minus180_grid() -> None:
    glat = np.arange(-60.0, 60.1, 1.0)
    glon = np.arange(-180.0, 180.0, 1.0)  # -180..179: the dateline cell is [179, 180 = column 0]
    LA, LO = np.meshgrid(glat, glon, indexing="ij")
    values = _field(LA, _positive(LO))
    lat = np.array([10.25, -5.5, 59.9, 0.0])
    lon = np.array([179.3, -179.6, 180.0, 190.5])  # 190.5 = -169.5 (0..360 convention)
    got = _interp(glat, glon, values, lat, lon)
    np.testing.assert_allclose(got, _field(lat, _positive(lon)), rtol=0, atol=1e-9)


def test_regional_grid_straddling_greenwich_and_outside_points() -> None:
    glat = np.array([30.0, 32.5, 35.0, 37.5, 40.0])
    glon = np.array([350.0, 352.5, 355.0, 357.5, 0.0, 2.5, 5.0, 7.5, 10.0])  # 0..360 convention, unsorted seam
    LA, LO = np.meshgrid(glat, glon, indexing="ij")
    values = _field(LA, _signed(LO))
    lat = np.array([31.0, 39.9, 35.0, 35.0, 20.0])
    lon = np.array([-3.3, 9.99, 358.75, 20.0, 0.0])
    got = _interp(glat, glon, values, lat, lon)
    np.testing.assert_allclose(got[:3], _field(lat[:3], _signed(lon[:3])), atol=1e-9)
    assert np.isnan(got[3:]).all()  # east of the grid / south of it


def _stations(lat: np.ndarray, lon: np.ndarray, times: pd.DatetimeIndex, var: str = "temperature") -> object:
    vals = np.zeros((len(times), lat.size), np.float32)
    return make_dataset(times, [f"w{i}" for i in range(lat.size)], lat, lon, **{var: vals})


def _forecast_grid(inits: pd.DatetimeIndex, steps_h: np.ndarray, beta: float, gamma: float, units: str = "K"
                   ) -> xr.Dataset:
    """t2m = analytic(lat, lon) + beta * valid_hours + gamma * init_index (+273.15 when in K)."""
    glat = np.arange(60.0, -60.1, -5.0)
    glon = np.arange(0.0, 360.0, 5.0)
    LA, LO = np.meshgrid(glat, glon, indexing="ij")
    space = _field(LA, _signed(LO))
    t0 = inits[0]
    data = np.empty((len(inits), steps_h.size, glat.size, glon.size))
    for a, it in enumerate(inits):
        for b, st in enumerate(steps_h):
            valid_h = (it - t0) / pd.Timedelta("1h") + st
            data[a, b] = space + beta * valid_h + gamma * a
    if units == "K":
        data = data + 273.15
    return xr.Dataset(
        {"t2m": (("time", "step", "latitude", "longitude"), data.astype(np.float32), {"units": units})},
        coords={"time": inits.values, "step": pd.to_timedelta(steps_h, unit="h").values, "latitude": glat,
                "longitude": glon},
    )


def test_time_alignment_latest_init_and_linear_in_step() -> None:
    inits = pd.date_range("2021-06-01", periods=12, freq="6h")
    steps_h = np.arange(0, 28, 3)  # 3-hourly steps to 27 h: targets in between are interpolated linearly
    beta, gamma = 0.05, 0.5
    grid = _forecast_grid(inits, steps_h, beta, gamma)
    lat, lon = np.array([10.0, -20.3, 45.2]), np.array([-0.5, 200.0, 17.7])
    times = pd.date_range("2021-06-01", periods=24 * 4, freq="h")
    ds = _stations(lat, lon, times)
    g = GFSInterpolation(grid, latency="2h", max_gap="3h").fit(ds)
    ws = WindowDataset(ds, "temperature", seq_len=24, label_len=0, pred_len=24, order="identity")
    idx = np.arange(len(ws))
    pred = g.predict_windows(ws, idx)
    tt = target_times(ws, idx)
    now = pd.DatetimeIndex(ws.window_start_times) + pd.Timedelta("23h")
    for n in range(len(ws)):
        ref_init = inits[inits <= now[n] - pd.Timedelta("2h")][-1]  # the latest run available at the window's now
        a = int(np.flatnonzero(inits == ref_init)[0])
        valid_h = (pd.DatetimeIndex(tt[n]) - inits[0]) / pd.Timedelta("1h")
        lead_h = (pd.DatetimeIndex(tt[n]) - ref_init) / pd.Timedelta("1h")
        ref = _field(lat, _signed(lon))[None, :] + beta * np.asarray(valid_h)[:, None] + gamma * a  # degC
        ref = np.where((np.asarray(lead_h) <= 27)[:, None], ref, np.nan)  # beyond the last step: no forecast
        np.testing.assert_allclose(pred[n], ref, atol=2e-4, equal_nan=True)  # float32 grid, K -> degC
    assert np.isnan(pred).any() and np.isfinite(pred).any()


def test_no_forecast_before_first_init_and_valid_time_mode(tmp_path: Path) -> None:
    inits = pd.date_range("2021-06-02", periods=4, freq="6h")
    grid = _forecast_grid(inits, np.arange(0, 25, 1), 0.0, 0.0, units="degC")
    times = pd.date_range("2021-06-01", periods=24 * 3, freq="h")
    ds = _stations(np.array([5.0]), np.array([5.0]), times)
    ws = WindowDataset(ds, "temperature", seq_len=12, label_len=0, pred_len=6, order="identity")
    pred = GFSInterpolation(grid).fit(ds).predict_windows(ws, [0])
    assert np.isnan(pred).all()  # the first run is issued after this window's "now"
    # a valid-time series written to a real netCDF file
    vt = pd.date_range("2021-06-01", periods=24, freq="2h")
    glat, glon = np.array([0.0, 10.0]), np.array([0.0, 10.0])
    vals = np.arange(24, dtype=np.float64)[:, None, None] + np.zeros((1, 2, 2))  # = hours / 2 since start
    xr.Dataset({"t2m": (("valid_time", "latitude", "longitude"), vals, {"units": "degC"})},
               coords={"valid_time": vt.values, "latitude": glat, "longitude": glon}).to_netcdf(tmp_path / "v.nc")
    g = GFSInterpolation(tmp_path / "v.nc", max_gap="2h").fit(ds)
    p = g.predict_windows(ws, [0, 5])
    hours = (pd.DatetimeIndex(target_times(ws, np.array([0, 5])).ravel()) - vt[0]) / pd.Timedelta("1h")
    ref = np.where(np.asarray(hours) <= 46, np.asarray(hours) / 2.0, np.nan).reshape(2, 6)
    np.testing.assert_allclose(p[..., 0], ref, atol=1e-6, equal_nan=True)


def test_wind_from_components_and_name_map() -> None:
    vt = pd.date_range("2021-01-01", periods=48, freq="h")
    glat, glon = np.array([-10.0, 10.0]), np.array([-10.0, 10.0])
    u = np.full((48, 2, 2), 3.0)
    v = np.full((48, 2, 2), -4.0)
    grid = xr.Dataset({"UGRD": (("time", "lat", "lon"), u, {"units": "m s-1"}),
                       "VGRD": (("time", "lat", "lon"), v, {"units": "m s-1"})},
                      coords={"time": vt.values, "lat": glat, "lon": glon})
    ds = _stations(np.array([0.0, 3.0]), np.array([1.0, 359.0]), vt, var="wind_speed")
    ws = WindowDataset(ds, "wind_speed", seq_len=12, label_len=0, pred_len=12, order="identity")
    g = GFSInterpolation(grid, name_map={"u10": "UGRD", "v10": "VGRD"}, variable="wind_speed").fit(ds)
    np.testing.assert_allclose(g.predict_windows(ws, [0, 10]), 5.0, atol=1e-6)
    with pytest.raises(ValueError, match="no 2 m temperature"):
        GFSInterpolation(grid).fit(_stations(np.array([0.0]), np.array([0.0]), vt))
    with pytest.raises(ValueError, match=r"name_map\['u10'\]"):
        GFSInterpolation(grid, name_map={"u10": "nope"}, variable="wind_speed").fit(ds)
    with pytest.raises(FileNotFoundError, match="missing.nc"):
        GFSInterpolation("missing.nc", variable="wind_speed").fit(ds)


def _write_grib2(path: Path, grid: xr.Dataset) -> None:
    """Write a (time, step, latitude, longitude) t2m grid as GRIB2 messages with eccodes (as NCEP does)."""
    import eccodes as ec

    lats, lons = grid["latitude"].values, grid["longitude"].values
    with open(path, "wb") as f:
        for a, t0 in enumerate(pd.DatetimeIndex(grid["time"].values)):
            for b, st in enumerate(pd.to_timedelta(grid["step"].values)):
                h = ec.codes_grib_new_from_samples("regular_ll_sfc_grib2")
                keys = [("centre", "kwbc"), ("dataDate", int(t0.strftime("%Y%m%d"))),
                        ("dataTime", int(t0.strftime("%H%M"))), ("Ni", lons.size), ("Nj", lats.size),
                        ("latitudeOfFirstGridPointInDegrees", lats[0]),
                        ("longitudeOfFirstGridPointInDegrees", lons[0]),
                        ("latitudeOfLastGridPointInDegrees", lats[-1]),
                        ("longitudeOfLastGridPointInDegrees", lons[-1]),
                        ("iDirectionIncrementInDegrees", abs(lons[1] - lons[0])),
                        ("jDirectionIncrementInDegrees", abs(lats[1] - lats[0])), ("jScansPositively", 0),
                        ("discipline", 0), ("parameterCategory", 0), ("parameterNumber", 0),
                        ("typeOfFirstFixedSurface", 103), ("scaledValueOfFirstFixedSurface", 2),
                        ("scaleFactorOfFirstFixedSurface", 0), ("stepUnits", 1),
                        ("forecastTime", int(st / pd.Timedelta("1h"))), ("bitsPerValue", 24)]
                for k, v in keys:
                    ec.codes_set(h, k, v)
                ec.codes_set_values(h, grid["t2m"].values[a, b].astype(np.float64).ravel())
                ec.codes_write(h, f)
                ec.codes_release(h)


def test_grib2_through_cfgrib(tmp_path: Path) -> None:
    pytest.importorskip("cfgrib")
    pytest.importorskip("eccodes")
    inits = pd.date_range("2021-06-01", periods=3, freq="6h")
    grid = _forecast_grid(inits, np.arange(0, 19, 3), 0.05, 0.5)
    _write_grib2(tmp_path / "gfs.grib2", grid)
    times = pd.date_range("2021-06-01", periods=36, freq="h")
    ds = _stations(np.array([10.0, -20.3]), np.array([-0.5, 200.0]), times)
    ws = WindowDataset(ds, "temperature", seq_len=12, label_len=0, pred_len=6, order="identity")
    from_grib = GFSInterpolation(tmp_path / "gfs.grib2").fit(ds).predict_windows(ws)
    from_mem = GFSInterpolation(grid).fit(ds).predict_windows(ws)
    assert np.isfinite(from_grib).sum() > 0
    np.testing.assert_allclose(from_grib, from_mem, atol=1e-3, equal_nan=True)  # GRIB packing precision


def test_synthetic_nwp_grid_scores_like_its_error() -> None:
    rng = np.random.default_rng(0)
    times = pd.date_range("2021-03-01", periods=24 * 6, freq="h")
    S = 40
    lat, lon = rng.uniform(-60, 60, S), rng.uniform(-180, 180, S)
    smooth = 10 + 0.2 * lat[None, :] + 3 * np.sin(2 * np.pi * np.arange(len(times))[:, None] / 24)
    ds = make_dataset(times, [f"z{i}" for i in range(S)], lat, lon, temperature=smooth.astype(np.float32))
    grid = synthetic_nwp_grid(ds, "temperature", resolution=2.0, error_std=0.5, error_growth=0.0, seed=1)
    assert grid["t2m"].attrs["units"] == "K" and grid.sizes["step"] == 49
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = GFSInterpolation(grid, label="GFS (synthetic demo)").fit(ds)
    ws = WindowDataset(ds, "temperature", seq_len=24, label_len=0, pred_len=24)
    res = g.evaluate(ws)
    assert g.name == "GFS (synthetic demo)" and g.kind == "NWP" and g.n_params == 0
    assert res["n_unforecast"] == 0
    # the error is the planted N(0, 0.5) noise plus the gridding error of a smooth field: MAE near 0.4
    assert 0.25 < res["mae"] < 0.9, res
    y = window_arrays(ws, np.arange(len(ws)))["y"]
    assert np.isfinite(y).all()
