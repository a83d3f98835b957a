"""The offline real series (pvlib TMY3, vega_datasets temperatures): schema, lengths, units, month joins, cache."""

from __future__ import annotations

import csv
import importlib.util

import numpy as np
import pandas as pd
import pytest

from urlk_forecast.data.readers import open_dataset
from urlk_forecast.data.real_samples import (
    TMY3_FILES,
    TMY3_JOIN_HOURS,
    TMY3_YEAR,
    VEGA_FILES,
    list_series,
    load_series,
    load_tmy3,
    load_vega,
    package_data_path,
    read_tmy3,
    tmy3_joins,
    write_series,
)
from urlk_forecast.data.schema import validate

needs_pvlib = pytest.mark.skipif(importlib.util.find_spec("pvlib") is None, reason="needs pvlib (extra 'bench')")
needs_vega = pytest.mark.skipif(importlib.util.find_spec("vega_datasets") is None,
                                reason="needs vega_datasets (extra 'bench')")


def _raw_rows(path):
    """The raw CSV rows (header line(s) excluded by the caller), read with the csv module, not pandas."""
    with open(path, newline="", encoding="latin-1") as fh:
        return list(csv.reader(fh))


def _check_schema(ds, variables):
    validate(ds, variables=list(variables))
    for v in variables:
        assert ds[v].dtype == np.float32
        assert ds[v].dims == ("time", "station")
    for c in ("station", "lat", "lon", "elevation", "name"):
        assert ds[c].dims == ("station",)
    assert (pd.DatetimeIndex(ds.time.values).to_series().diff().dropna() == pd.Timedelta("1h")).all()


def test_registry_names_and_unknown():
    assert list_series() == ["tmy3", "vega"]
    with pytest.raises(ValueError, match="unknown real series 'nope'"):
        load_series("nope")


def test_missing_package_names_the_extra():
    with pytest.raises(ImportError, match=r"urlk-forecast\[bench\]"):
        package_data_path("no_such_package_urlk_xyz", "data", "f.csv")


def test_tmy3_joins_positions():
    years = np.array([1997] * 3 + [1995] * 2 + [1995] * 2 + [2005])
    assert tmy3_joins(years).tolist() == [3, 7]


@needs_pvlib
def test_tmy3_schema_lengths_values_and_joins():
    ds = load_tmy3()
    _check_schema(ds, ("temperature", "wind_speed"))
    assert ds.sizes["station"] == 2 and list(ds.station.values) == ["703165", "723170"]
    # 8760 local-standard-time hours per station; time zones -9 and -5 put the two on a 8764-hour UTC axis
    assert ds.sizes["time"] == 8760 + 4
    t = ds["temperature"].values
    w = ds["wind_speed"].values
    assert np.nanmin(t) >= -60 and np.nanmax(t) <= 50
    assert np.nanmin(w) >= 0 and np.nanmax(w) <= 60
    for s, fname in enumerate(TMY3_FILES):
        rows = _raw_rows(package_data_path("pvlib", "data", fname))
        data = rows[2:]
        assert len(data) == 8760
        years = np.array([int(r[0].split("/")[2]) for r in data])
        n_joins = tmy3_joins(years).size
        assert n_joins >= 5  # months from different years: the series is stitched
        assert np.isfinite(t[:, s]).sum() == 8760 - 2 * TMY3_JOIN_HOURS * n_joins
        assert np.isfinite(w[:, s]).sum() == 8760 - 2 * TMY3_JOIN_HOURS * n_joins
        # the first raw row, hand-placed: local standard time 01:00 on 1 Jan + |tz| hours = UTC
        tz = float(rows[0][3])
        col_t = rows[1].index("Dry-bulb (C)")
        col_w = rows[1].index("Wspd (m/s)")
        t0 = pd.Timestamp(f"{TMY3_YEAR}-01-01 01:00") - pd.Timedelta(hours=tz)
        got = ds.sel(time=t0).isel(station=s)
        assert float(got["temperature"]) == pytest.approx(float(data[0][col_t]), abs=1e-5)
        assert float(got["wind_speed"]) == pytest.approx(float(data[0][col_w]), abs=1e-5)


@needs_pvlib
def test_tmy3_join_hours_are_missing_and_others_kept():
    path = package_data_path("pvlib", "data", TMY3_FILES[1])
    df = read_tmy3(path)
    full = read_tmy3(path, join_hours=0)
    assert full["temperature"].notna().all() and len(full) == 8760
    j = df.index.get_loc(df.attrs["joins"][0])
    assert df["temperature"].iloc[j - TMY3_JOIN_HOURS:j + TMY3_JOIN_HOURS].isna().all()
    assert df["temperature"].iloc[[j - TMY3_JOIN_HOURS - 1, j + TMY3_JOIN_HOURS]].notna().all()
    keep = df["temperature"].notna()
    np.testing.assert_array_equal(df["temperature"][keep].to_numpy(), full["temperature"][keep].to_numpy())


@needs_vega
def test_vega_schema_lengths_and_fahrenheit_conversion():
    ds = load_vega()
    _check_schema(ds, ("temperature",))
    assert "wind_speed" not in ds
    assert list(ds.station.values) == list(VEGA_FILES)
    assert ds.sizes["time"] == 8760  # 2010, hourly
    t = ds["temperature"].values
    assert np.nanmin(t) >= -60 and np.nanmax(t) <= 50
    for s, (fname, *_rest) in enumerate(VEGA_FILES.values()):
        rows = _raw_rows(package_data_path("vega_datasets", "_data", fname))
        head, data = rows[0], rows[1:]
        assert np.isfinite(t[:, s]).sum() == len(data) == 8759  # the source skips one hour
        i_t, i_d = head.index("temp"), head.index("date")
        # hand-computed: (degF - 32) * 5/9 at the published local time + 8 h (PST -> UTC)
        for k in (0, 4000):
            want = (float(data[k][i_t]) - 32.0) * 5.0 / 9.0
            when = pd.Timestamp(data[k][i_d].replace("/", "-")) + pd.Timedelta(hours=8)
            assert float(ds["temperature"].sel(time=when).isel(station=s)) == pytest.approx(want, abs=1e-4)
    # Seattle 2010-01-01 00:00 is 39.4 degF in the raw file = 4.111 degC
    assert float(ds["temperature"].isel(time=0, station=0)) == pytest.approx((39.4 - 32) / 1.8, abs=1e-4)


@needs_vega
def test_write_series_caches_and_reads_back(tmp_path):
    p = write_series("vega", tmp_path)
    assert p == tmp_path / "vega.nc" and p.is_file()
    back = open_dataset(p)
    ref = load_vega()
    np.testing.assert_allclose(back["temperature"].values, ref["temperature"].values, equal_nan=True)
    assert list(back.station.values) == list(ref.station.values)
    mtime = p.stat().st_mtime_ns
    assert write_series("vega", tmp_path) == p and p.stat().st_mtime_ns == mtime  # reused
    write_series("vega", tmp_path, overwrite=True)
    assert open_dataset(p).sizes["time"] == 8760


def _suite():
    """benchmarks/real_skill.py as a module (it is a script, not part of the package)."""
    import importlib.util as iu
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "real_skill.py"
    spec = iu.spec_from_file_location("real_skill", path)
    mod = iu.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_suite_verdict_needs_both_metrics_against_every_row():
    suite = _suite()
    rows = [{"method": "Persistence", "source": "cli", "MSE": 5.0, "MAE": 2.0},
            {"method": "NHITS", "source": "in-process", "MSE": 4.0, "MAE": 1.5},
            {"method": "UniRepLKNet-A", "source": "model", "MSE": 3.9, "MAE": 1.6}]
    ok, text = suite.verdict(rows)
    assert ok is False and "NHITS" in text and "Persistence" not in text  # MAE 1.6 >= 1.5
    rows[-1]["MAE"] = 1.4
    assert suite.verdict(rows)[0] is True
    assert suite.verdict(rows[:2])[0] is None  # no model row: no verdict
    cli = pd.DataFrame({"method": ["Persistence"], "MSE": [5.0]})
    assert "checked" in suite.check_windows(cli, [{"method": "NHITS", "persistence_MSE": 5.0, "MSE": 4.0}])
    assert "WARNING" in suite.check_windows(cli, [{"method": "NHITS", "persistence_MSE": 5.1, "MSE": 4.0}])


def test_suite_seeds_keep_results_apart_and_aggregate_means():
    suite = _suite()
    a = suite.parse(["--seeds", "2,0,2", "--out", "o"])
    assert a.seeds == [0, 2]
    assert suite.pair_dir("o", "tmy3", "wind_speed", suite.SEQ_LEN, 0).as_posix() == "o/tmy3/wind_speed"
    assert suite.pair_dir("o", "tmy3", "wind_speed", 96, 2).as_posix() == "o/tmy3/wind_speed_in96_seed2"
    with pytest.raises(SystemExit):
        suite.parse(["--seeds", "-1"])
    seed0 = [{"method": "M", "source": "model", "MSE": 4.0, "MAE": 1.0, "fit_s": 10.0},
             {"method": "P", "source": "in-process", "MSE": 3.0, "MAE": 1.2, "fit_s": 5.0}]
    seed1 = [{"method": "M", "source": "model", "MSE": 2.0, "MAE": 1.4, "fit_s": 30.0},
             {"method": "P", "source": "in-process", "MSE": 3.4, "MAE": 1.3, "fit_s": 7.0}]
    rows = {r["method"]: r for r in suite.aggregate([seed0, seed1])}
    assert rows["M"]["MSE"] == pytest.approx(3.0) and rows["M"]["MAE"] == pytest.approx(1.2)
    assert rows["M"]["fit_s"] == pytest.approx(20.0) and "2.000-4.000" in rows["M"]["note"]
    assert rows["P"]["MSE"] == pytest.approx(3.2) and rows["P"]["source"] == "in-process"
    # the verdict on the means: M beats P in MSE (3.0 < 3.2) and MAE (1.2 < 1.25), although P wins seed 0 in MSE
    assert suite.verdict(list(rows.values()))[0] is True
    # a peer factory gives the neural peers random_seed 1 + seed
    peer = suite.PEERS["dlinear"]("temperature", 10.0, None, 48, 3)
    assert peer.random_seed == 4
