"""Corrformer .npy release and netCDF (round trip, CF name mapping, atomic writes)."""

from __future__ import annotations

import os
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from urlk_forecast.data.readers import (
    ReaderError,
    detect_format,
    open_dataset,
    parse_split_bounds,
    read_corrformer_npy,
    read_netcdf,
    write_netcdf,
)
from urlk_forecast.data.schema import make_dataset

T_SPLITS = {"train": 18, "val": 4, "test": 8}  # 30 hours, 7 stations
S = 7


def _release(d: Path, channels: int = 1, gap: int = 0, time_dtype=object) -> dict:
    """Write a small Corrformer-style release with np.save; returns the raw x10 arrays per split."""
    rng = np.random.default_rng(0)
    t0 = pd.Timestamp("2019-01-01 01:00")
    raw = {}
    start = 0
    for split, n in T_SPLITS.items():
        times = pd.date_range(t0 + pd.Timedelta(hours=start), periods=n, freq="h")
        np.save(d / f"data_time_{split}.npy", np.array([str(t) for t in times], dtype=time_dtype))
        temp = rng.integers(-300, 350, size=(n, S, channels)).astype(np.float64)
        wind = rng.integers(0, 200, size=(n, S, 1)).astype(np.float64)
        np.save(d / f"temp_global_hourly_{split}.npy", temp)
        np.save(d / f"wind_global_hourly_{split}.npy", wind)
        raw[split] = (times, temp[..., 0], wind[..., 0])
        start += n + gap
    coords = rng.normal(size=(S, 3))
    np.save(d / "stations_sorted.npy", coords)
    raw["coords"] = coords
    return raw


def test_corrformer_concatenated_with_split_bounds(tmp_path):
    raw = _release(tmp_path)
    ds = read_corrformer_npy(tmp_path)
    assert ds.sizes == {"time": 30, "station": S}
    assert list(ds.station.values) == [f"S{i:04d}" for i in range(S)]
    np.testing.assert_allclose(
        ds.temperature.values, np.concatenate([raw[s][1] for s in T_SPLITS]) / 10.0, rtol=0, atol=1e-5
    )
    np.testing.assert_allclose(ds.wind_speed.values, np.concatenate([raw[s][2] for s in T_SPLITS]) / 10.0, atol=1e-5)
    assert ds.attrs["coords_standardised"] == "true"
    np.testing.assert_allclose(ds.lat.values, raw["coords"][:, 0], rtol=1e-6)
    np.testing.assert_allclose(ds.elevation.values, raw["coords"][:, 2], rtol=1e-6)
    assert ds.attrs["split_bounds"] == (
        "train:2019-01-01T01:00:00/2019-01-01T18:00:00;"
        "val:2019-01-01T19:00:00/2019-01-01T22:00:00;"
        "test:2019-01-01T23:00:00/2019-01-02T06:00:00"
    )
    b = parse_split_bounds(ds.attrs["split_bounds"])
    assert b["val"] == (pd.Timestamp("2019-01-01 19:00"), pd.Timestamp("2019-01-01 22:00"))
    assert detect_format(tmp_path) == "corrformer"
    assert open_dataset(tmp_path).equals(ds)


def test_corrformer_one_split_three_channels_and_unicode_times(tmp_path):
    raw = _release(tmp_path, channels=3, time_dtype=str)
    ds = read_corrformer_npy(tmp_path, split="val", variables=["temperature"])
    assert list(ds.data_vars) == ["temperature"] and ds.attrs["split"] == "val" and "split_bounds" not in ds.attrs
    np.testing.assert_array_equal(pd.DatetimeIndex(ds.time.values), raw["val"][0])
    np.testing.assert_allclose(ds.temperature.values, raw["val"][1] / 10.0, atol=1e-5)


def test_corrformer_split_bounds_drive_split_dataset(tmp_path):
    from urlk_forecast.data.windows import split_dataset

    raw = _release(tmp_path)
    parts = split_dataset(read_corrformer_npy(tmp_path), ratios=(0.5, 0.25, 0.25))  # ratios ignored
    for name in T_SPLITS:
        np.testing.assert_array_equal(pd.DatetimeIndex(parts[name].time.values), raw[name][0])
    (tmp_path / "data_time_test.npy").unlink()
    with pytest.raises(ReaderError, match=r"data_time_test.npy: missing.*pass split='train'"):
        read_corrformer_npy(tmp_path)


def test_corrformer_gap_between_splits_is_nan(tmp_path):
    _release(tmp_path, gap=2)
    ds = read_corrformer_npy(tmp_path)
    assert ds.sizes["time"] == 34
    assert np.isnan(ds.temperature.values[18:20]).all() and not np.isnan(ds.temperature.values[20]).any()


def test_corrformer_bad_inputs(tmp_path):
    _release(tmp_path)
    np.save(tmp_path / "data_time_test.npy", np.array(["2019-01-01 23:00:00"] * 3, dtype=object))
    with pytest.raises(
        ReaderError, match=r"temp_global_hourly_test.npy: has 8 time steps but its data_time file lists 3"
    ):
        read_corrformer_npy(tmp_path)
    np.save(tmp_path / "data_time_test.npy", np.array(["2019-01-01 23:00:00", "yesterday"] + ["x"] * 6, dtype=object))
    with pytest.raises(ReaderError, match=r"data_time_test.npy: entry 1 is 'yesterday'"):
        read_corrformer_npy(tmp_path)
    good = tmp_path / "wind_global_hourly_val.npy"
    good.write_bytes(good.read_bytes()[:100])  # truncated
    with pytest.raises(ReaderError, match=r"wind_global_hourly_val.npy: not a readable .npy array"):
        read_corrformer_npy(tmp_path, split="val")
    with pytest.raises(ReaderError, match="directory of the Corrformer"):
        read_corrformer_npy(tmp_path / "temp_global_hourly_train.npy")


def _schema_ds(n_t=48, n_s=5, seed=0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    temp = rng.normal(10, 8, (n_t, n_s)).astype(np.float32)
    temp[rng.random(temp.shape) < 0.1] = np.nan
    wind = np.abs(rng.normal(4, 2, (n_t, n_s))).astype(np.float32)
    return make_dataset(
        pd.date_range("2020-01-01", periods=n_t, freq="h"),
        [f"ST{i}" for i in range(n_s)],
        rng.uniform(-60, 70, n_s),
        rng.uniform(-180, 180, n_s),
        elevation=[1.0, np.nan, 300.0, 12.5, 0.0][:n_s],
        name=["Zürich", "b", "c", "d", "e"][:n_s],
        attrs={"split_bounds": "train:2020-01-01T00:00:00/2020-01-02T00:00:00", "synthetic": "no"},
        temperature=temp,
        wind_speed=wind,
    )


def test_netcdf_round_trip_identical(tmp_path):
    ds = _schema_ds()
    path = write_netcdf(ds, tmp_path / "sub" / "x.nc")
    back = read_netcdf(path)
    xr.testing.assert_identical(back, ds)
    assert back.attrs["split_bounds"] == ds.attrs["split_bounds"]
    assert detect_format(path) == "netcdf"
    assert [p.name for p in path.parent.iterdir()] == ["x.nc"]  # no temp file left behind
    write_netcdf(ds, tmp_path / "z.nc", compress=4)
    xr.testing.assert_identical(read_netcdf(tmp_path / "z.nc"), ds)


def _cf_file(path: Path, temp_k: np.ndarray, wind: np.ndarray) -> None:
    """A foreign CF station file written with netCDF4 directly: other names, (station, time) order, K."""
    n_s, n_t = temp_k.shape
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("stations", n_s)
        nc.createDimension("valid_time", n_t)
        nc.createDimension("height", 1)
        t = nc.createVariable("valid_time", "i8", ("valid_time",))
        t.units = "hours since 2021-06-01 00:00:00"
        t[:] = np.arange(n_t) * 3  # 3-hourly
        sid = nc.createVariable("stn", str, ("stations",))
        for i in range(n_s):
            sid[i] = f"W{i:03d}"
        for name, vals, units in (("latitude", [1.0, 2.0], "degrees_north"), ("longitude", [3.0, 4.0], "degrees_east")):
            v = nc.createVariable(name, "f8", ("stations",))
            v.units = units
            v[:] = vals[:n_s]
        v = nc.createVariable("t2m", "f4", ("stations", "height", "valid_time"), fill_value=np.float32(-999))
        v.units = "K"
        v.standard_name = "air_temperature"
        v[:] = temp_k[:, None, :]
        w = nc.createVariable("si10", "f4", ("stations", "valid_time"))
        w.units = "knots"
        w[:] = wind
        nc.title = "foreign file"


def test_netcdf_cf_name_map_and_units(tmp_path):
    temp_k = np.array([[280.0, 281.5, -999.0, 279.0], [290.0, 291.0, 292.0, 293.5]], np.float32)
    wind = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 10.0, 20.0, 30.0]], np.float32)
    p = tmp_path / "cf.nc"
    _cf_file(p, temp_k, wind)
    ds = read_netcdf(p, name_map={"si10": "wind_speed", "stn": "station"})  # t2m by standard_name, lat/lon alias
    assert list(ds.station.values) == ["W000", "W001"]
    assert (np.diff(ds.time.values) == np.timedelta64(3, "h")).all()
    exp_t = np.where(temp_k == -999.0, np.nan, temp_k.astype(np.float64) - 273.15).T
    np.testing.assert_allclose(ds.temperature.values, exp_t, atol=1e-4)
    np.testing.assert_allclose(ds.wind_speed.values, wind.T * 1852 / 3600, rtol=1e-5)
    np.testing.assert_allclose(ds.lat.values, [1.0, 2.0])
    assert ds.attrs["title"] == "foreign file"
    with pytest.raises(ReaderError, match=r"name_map names 'nope'"):
        read_netcdf(p, name_map={"nope": "temperature"})


def test_netcdf_missing_units_and_not_netcdf(tmp_path):
    ds = _schema_ds()
    ds.temperature.attrs.pop("units")
    ds.to_netcdf(tmp_path / "nounits.nc")
    with pytest.raises(ReaderError, match=r"nounits.nc, field temperature: temperature has no units"):
        read_netcdf(tmp_path / "nounits.nc")
    (tmp_path / "text.nc").write_text("station,time\n")
    with pytest.raises(ReaderError, match=r"text.nc: not a netCDF file"):
        read_netcdf(tmp_path / "text.nc")
    good = write_netcdf(_schema_ds(), tmp_path / "good.nc")
    cut = tmp_path / "cut.nc"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ReaderError, match=r"cut.nc: cannot read netCDF"):
        read_netcdf(cut)


def test_write_netcdf_is_atomic_on_error(tmp_path):
    dest = tmp_path / "out.nc"
    ds = _schema_ds()
    write_netcdf(ds, dest)
    before = dest.read_bytes()
    bad = ds.copy()
    bad.attrs["bad"] = {"a dict": "is not a netCDF attribute"}
    with pytest.raises(TypeError):
        write_netcdf(bad, dest)
    assert dest.read_bytes() == before  # old file untouched
    assert sorted(os.listdir(tmp_path)) == ["out.nc"]  # temp file removed
    with pytest.raises(TypeError):
        write_netcdf(bad, tmp_path / "new.nc")
    assert sorted(os.listdir(tmp_path)) == ["out.nc"]  # no partial new file either
