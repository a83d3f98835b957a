
import numpy as np
import pandas as pd
import pytest

from urlk_forecast.data import synthetic as syn
from urlk_forecast.data.schema import validate
from urlk_forecast.data.synthetic import is_land_like, synthetic_global


@pytest.fixture(scope="module")
def year():
    """200 stations x one year, complete (no missing values)."""
    return synthetic_global(stations=200, hours=24 * 365, seed=3, missing=0.0)


def _gc_km(lat, lon):
    la, lo = np.radians(np.asarray(lat, float)), np.radians(np.asarray(lon, float))
    xyz = np.c_[np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)]
    return np.arccos(np.clip(xyz @ xyz.T, -1, 1)) * 6371.0


def test_schema_and_synthetic_labels():
    ds = synthetic_global(stations=50, hours=100, seed=1)
    validate(ds, variables=["temperature", "wind_speed"])
    assert ds.sizes == {"time": 100, "station": 50}
    assert ds.temperature.dtype == np.float32 and ds.wind_speed.dtype == np.float32
    assert ds.attrs["synthetic"] == "true"
    assert "SYNTHETIC" in ds.attrs["description"] and "SYNTHETIC" in ds.attrs["title"]
    assert all(str(n).startswith("SYNTHETIC") for n in ds.name.values)
    assert pd.Timestamp(ds.time.values[0]) == pd.Timestamp("2019-01-01")
    assert (pd.DatetimeIndex(ds.time.values)[1:] - pd.DatetimeIndex(ds.time.values)[:-1] == pd.Timedelta(hours=1)).all()
    assert len(set(ds.station.values)) == 50


def test_deterministic_per_seed():
    a = synthetic_global(stations=40, hours=300, seed=7)
    b = synthetic_global(stations=40, hours=300, seed=7)
    c = synthetic_global(stations=40, hours=300, seed=8)
    for v in ("temperature", "wind_speed"):
        np.testing.assert_array_equal(a[v].values, b[v].values)  # NaNs in the same places too
    np.testing.assert_array_equal(a.lat.values, b.lat.values)
    assert not np.array_equal(a.lat.values, c.lat.values)
    assert not np.allclose(np.nan_to_num(a.temperature.values), np.nan_to_num(c.temperature.values))
    # a shorter run is a prefix of a longer one (the noise is a hash of hour and station, not of chunking)
    short = synthetic_global(stations=40, hours=120, seed=7, missing=0.0)
    long = synthetic_global(stations=40, hours=300, seed=7, missing=0.0)
    np.testing.assert_array_equal(short.temperature.values, long.temperature.values[:120])


def test_threads_do_not_change_the_result(monkeypatch):
    monkeypatch.setattr(syn.os, "cpu_count", lambda: 1)
    one = synthetic_global(stations=1100, hours=60, seed=2)
    monkeypatch.setattr(syn.os, "cpu_count", lambda: 4)
    four = synthetic_global(stations=1100, hours=60, seed=2)
    np.testing.assert_array_equal(one.temperature.values, four.temperature.values)
    np.testing.assert_array_equal(one.wind_speed.values, four.wind_speed.values)


def test_stations_on_land_with_plausible_elevation(year):
    lat, lon, elev = year.lat.values, year.lon.values, year.elevation.values
    assert is_land_like(lat, lon).all()
    assert not is_land_like(np.array([0.0, -50.0, 30.0]), np.array([-150.0, -30.0, -40.0])).any()  # open ocean
    assert np.all(elev >= 0) and 50 < np.median(elev) < 1000
    high = syn._terrain(lat, lon) > 1500
    assert high.any() and elev[high].mean() > elev[~high].mean() + 500
    assert (lat > 0).mean() > 0.7  # like the NCEI archive: mostly northern hemisphere


def test_climatology_lapse_rate_and_seasons(year):
    t = year.temperature.values.astype(np.float64)
    lat, elev = year.lat.values.astype(np.float64), year.elevation.values.astype(np.float64)
    annual = t.mean(0)
    # regress the annual mean on sin^2(lat) and elevation: the elevation slope is the lapse rate
    A = np.c_[np.ones_like(lat), np.sin(np.radians(lat)) ** 2, elev / 1000.0]
    coef, *_ = np.linalg.lstsq(A, annual, rcond=None)
    assert coef[2] == pytest.approx(-6.5, abs=1.0)
    assert coef[1] < -20  # colder towards the poles
    month = pd.DatetimeIndex(year.time.values).month
    jan, jul = t[month == 1].mean(0), t[month == 7].mean(0)
    north, south = lat > 25, lat < -25
    assert np.all(jul[north] > jan[north]) and np.all(jan[south] > jul[south])
    amp = np.abs(jul - jan)
    assert np.corrcoef(np.abs(lat), amp)[0, 1] > 0.6  # larger seasonal cycle at higher latitude


def _peak_local_hour(values, times, lon):
    """Hour of the mean diurnal maximum by local solar time, per station (after removing daily means)."""
    utc = pd.DatetimeIndex(times).hour.to_numpy()
    days = values.reshape(-1, 24, values.shape[1])
    days = days - days.mean(1, keepdims=True)
    cycle = days.mean(0)  # (24 UTC hours, S)
    phase = np.angle((cycle * np.exp(2j * np.pi * utc[:24, None] / 24)).sum(0))  # first harmonic, UTC hours
    return ((phase * 24 / (2 * np.pi)) + lon / 15.0) % 24


def test_diurnal_cycle_follows_local_solar_time(year):
    lon = year.lon.values.astype(np.float64)
    peak_t = _peak_local_hour(year.temperature.values.astype(np.float64), year.time.values, lon)
    assert np.all(np.abs(peak_t - 15.0) < 1.5), peak_t  # warmest mid-afternoon local time everywhere
    peak_w = _peak_local_hour(year.wind_speed.values.astype(np.float64), year.time.values, lon)
    assert np.median(np.abs(peak_w - 14.0)) < 1.5


def test_wind_nonnegative_and_tied_to_field_gradient(year):
    w = year.wind_speed.values
    assert np.nanmin(w) >= 0.0 and np.nanmax(w) < 45.0
    assert 2.0 < np.nanmean(w) < 7.0
    assert (w == 0).mean() > 0.001  # calms exist
    # recompute the synoptic field's gradient magnitude from the generator's parts (same seed)
    st = syn._stations(200, np.random.default_rng([3, 0]))
    modes = syn._modes(np.random.default_rng([3, 1]))
    basis, var = syn._basis(st["lat"], st["lon"], modes)
    hours = np.arange(24 * 365 // 3 + 2, dtype=np.float64) * 3
    coef = syn._mode_coefficients(modes, hours, np.random.default_rng([3, 2]))
    _, grad = syn._coarse_fields(coef, basis, (1 / np.sqrt(var)).astype(np.float32))
    daily_w = w[::3].reshape(-1, 8, 200).mean(1)
    daily_g = grad[: w.shape[0] // 3].reshape(-1, 8, 200).mean(1)
    r = [np.corrcoef(daily_w[:, s], daily_g[:, s])[0, 1] for s in range(200)]
    assert np.median(r) > 0.6


def test_gradient_basis_matches_finite_differences():
    modes = syn._modes(np.random.default_rng([0, 1]))
    lat, lon = np.array([10.0, 45.0, -30.0, 62.0]), np.array([-100.0, 15.0, 140.0, 100.0])
    b, _ = syn._basis(lat, lon, modes)
    S, h = 4, 1e-3  # degrees
    f = lambda la, lo: syn._basis(la, lo, modes)[0][:, :S].astype(np.float64)  # noqa: E731
    km_per_deg = 6371.0 * np.pi / 180.0 / 1000.0  # in 1000 km
    dx = (f(lat, lon + h) - f(lat, lon - h)) / (2 * h * km_per_deg * np.cos(np.radians(lat)))
    dy = (f(lat + h, lon) - f(lat - h, lon)) / (2 * h * km_per_deg)
    np.testing.assert_allclose(b[:, S : 2 * S], dx, rtol=2e-3, atol=2e-3 * np.abs(dx).max())
    np.testing.assert_allclose(b[:, 2 * S :], dy, rtol=2e-3, atol=2e-3 * np.abs(dy).max())


def _runs(missing_col):
    """Lengths of runs of True in a 1-D bool array."""
    d = np.diff(np.r_[0, missing_col.astype(np.int8), 0])
    return np.flatnonzero(d == -1) - np.flatnonzero(d == 1)


def test_missing_values_are_realistic():
    ds = synthetic_global(stations=300, hours=24 * 200, seed=5, missing=0.03)
    m = np.isnan(ds.temperature.values)
    assert 0.02 < m.mean() < 0.04
    runs = np.concatenate([_runs(m[:, s]) for s in range(300)])
    assert (runs == 1).sum() > 1000  # isolated dropouts
    assert ((runs >= 3) & (runs <= 72)).sum() > 100  # gaps of several hours
    assert (runs >= 24 * 7).sum() >= 1  # long station outages
    mw = np.isnan(ds.wind_speed.values)
    assert (m & mw).sum() > 0.5 * m.sum()  # outages hit both variables
    assert not np.isnan(synthetic_global(stations=30, hours=500, missing=0.0).temperature.values).any()


def _neighbour_experiment(ds, k=6):
    """Per-station ridge regressions forecasting 24 h ahead; returns mean test MSE per method."""
    v = ds.temperature.values.astype(np.float64)
    T, S = v.shape
    d = _gc_km(ds.lat.values, ds.lon.values)
    np.fill_diagonal(d, np.inf)
    nb = np.argsort(d, axis=1)[:, :k]
    dlon = (ds.lon.values[None, :] - ds.lon.values[:, None] + 180.0) % 360.0 - 180.0
    lead, t0 = 24, 72
    ts = np.arange(t0, T - lead)
    split = t0 + int(0.7 * len(ts))
    train, test = ts[ts < split - lead], ts[ts >= split]
    hod = np.arange(T) % 24
    idx = {"train": train, "test": test}
    # own last day relative to now, and day-over-day changes (no climatology, no daily cycle) for neighbours
    own = {k: np.stack([v[i - lag] - v[i] for lag in range(1, 25)], 1) for k, i in idx.items()}  # (n, 24, S)
    chg = {k: np.stack([v[i - lag] - v[i - lag - 24] for lag in (0, 3, 6, 12)], 1) for k, i in idx.items()}
    truth = v[test + lead]
    out = {"persistence": np.mean((v[test] - truth) ** 2, axis=0)}
    clims = []  # best of two per-station daily cycles: the whole training period, or its last 30 days
    for lo in (0, split - 24 * 30):
        clim = np.stack([v[lo:split][hod[lo:split] == h].mean(0) for h in range(24)])  # (24, S)
        clims.append(np.mean((clim[hod[test + lead]] - truth) ** 2, axis=0))
    out["climatology"] = np.minimum(*clims)

    def ridge(nbs):
        """Batched per-station ridge fits; ``nbs`` (S, k) neighbour indices. Returns per-station test MSE."""
        def design(k):
            n = len(idx[k])
            parts = [own[k].transpose(2, 0, 1)]  # (S, n, 24)
            if nbs.shape[1]:
                parts.append(chg[k][:, :, nbs].transpose(2, 0, 3, 1).reshape(S, n, -1))
            return np.concatenate(parts + [np.ones((S, n, 1))], axis=2)

        A = design("train")
        rhs = (v[train + lead] - v[train]).T[:, :, None]
        gram = np.stack([a.T @ a for a in A]) + np.eye(A.shape[2])  # per-station BLAS calls (fast for any width)
        w = np.linalg.solve(gram, A.transpose(0, 2, 1) @ rhs)
        pred = v[test].T + (design("test") @ w)[:, :, 0]
        return np.mean((pred - truth.T) ** 2, axis=1)

    out["own"] = ridge(np.zeros((S, 0), int))
    out["own+neighbours"] = ridge(nb)
    west_d = np.where((dlon < 0) & (d < 2000), d, np.inf)
    east_d = np.where((dlon > 0) & (d < 2000), d, np.inf)
    ok = (np.isfinite(west_d).sum(1) >= 3) & (np.isfinite(east_d).sum(1) >= 3)
    out["west"] = ridge(np.argsort(west_d, axis=1)[:, :3])[ok]
    out["east"] = ridge(np.argsort(east_d, axis=1)[:, :3])[ok]
    return {k: float(np.mean(x)) for k, x in out.items()}, int(ok.sum())


def test_rewards_recent_history_and_upstream_neighbours():
    ds = synthetic_global(stations=200, hours=2000, seed=0, missing=0.0)
    r, n_pairs = _neighbour_experiment(ds)
    assert r["own+neighbours"] < 0.85 * r["own"], r  # neighbours add a measurable margin over own history
    assert r["own+neighbours"] < 0.8 * r["persistence"], r
    assert r["own+neighbours"] < 0.7 * r["climatology"], r
    assert r["own"] < r["persistence"] < r["climatology"], r  # recent history beats the daily cycle
    assert n_pairs > 100
    assert r["west"] < 0.9 * r["east"], r  # the field moves east: upstream stations carry the signal


def test_bad_arguments():
    with pytest.raises(ValueError, match="stations and hours"):
        synthetic_global(stations=0)
    with pytest.raises(ValueError, match="missing"):
        synthetic_global(stations=5, hours=10, missing=0.7)
    with pytest.raises(ValueError, match="variables"):
        synthetic_global(stations=5, hours=10, variables=("pressure",))
    only_t = synthetic_global(stations=5, hours=10, variables=("temperature",))
    assert list(only_t.data_vars) == ["temperature"]


@pytest.mark.slow
def test_full_size_default():
    """The embedded default at full size (its generation time is measured by benchmarks/data_pipeline.py)."""
    ds = synthetic_global()
    assert ds.sizes == {"time": 17544, "station": 3850}
    frac = float(np.isnan(ds.temperature.values).mean())
    assert 0.02 < frac < 0.04
