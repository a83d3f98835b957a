"""NWP baseline: gridded forecasts (GFS or any lat/lon model) interpolated to the stations.

Input: an ``xarray.Dataset`` or a file -- netCDF (or anything ``xarray.open_dataset`` reads), or GRIB2 through cfgrib
(``pip install 'urlk-forecast[grib]'``) -- on a regular latitude/longitude grid with either

* forecast dims ``(init, step)``: ``init`` named ``init_time``/``reference_time``/``time`` (cfgrib's name) and
  ``step`` named ``step``/``lead_time``/``forecast_period`` (timedeltas, or hours as numbers); or
* one valid-time dim named ``valid_time``/``time`` (a single forecast trajectory or a "best available" series).

Variables (names found automatically, or given with ``name_map={"t2m": "TMP_2maboveground", ...}``): 2 m temperature
``t2m`` (units from its ``units`` attribute: K, degC, degF), 10 m wind components ``u10``/``v10`` (wind speed =
hypot(u10, v10)) or a wind speed ``si10``.

Space: bilinear interpolation in (latitude, longitude) at each station, precomputed once as 4 corner indices and
weights. Latitudes may be descending (GFS order); station longitudes are mapped into the grid's convention (0..360 or
-180..180); a grid that covers all longitudes wraps around, so stations between its last column and the first
(across the 0/360 seam, or across the dateline) are interpolated between those two columns. Stations outside a
regional grid get NaN.

Time: for an ``(init, step)`` source, each window is forecast from the latest initialisation at or before its last
input time minus ``latency`` (no look-ahead: a forecast issued after the window's "now" is never used; GFS output is
available ~4 h after its nominal time, so ``latency="4h"`` is realistic), then interpolated linearly between the
forecast steps bracketing each target time. For a valid-time source the forecast is interpolated linearly in valid
time. Targets with no forecast (before the first init, beyond the last step, gaps longer than ``max_gap``) are NaN,
reported as unforecast by the scorer -- never filled.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..data.schema import convert_units
from ..data.windows import WindowSource
from .base import Baseline, input_times, resolve_indices, target_times, window_geometry

__all__ = ["GFSInterpolation", "open_grid", "bilinear_weights", "interpolate_points", "synthetic_nwp_grid"]

_LAT = ("latitude", "lat", "y")
_LON = ("longitude", "lon", "x")
_INIT = ("init_time", "reference_time", "forecast_reference_time", "time")
_STEP = ("step", "lead_time", "forecast_period", "forecast_hour")
_VALID = ("valid_time", "time")
_VARS = {
    "t2m": ("t2m", "2t", "TMP_2maboveground", "tmp2m", "t2", "air_temperature_2m", "temperature_2m", "temperature"),
    "u10": ("u10", "10u", "UGRD_10maboveground", "ugrd10m", "u_10m"),
    "v10": ("v10", "10v", "VGRD_10maboveground", "vgrd10m", "v_10m"),
    "si10": ("si10", "10si", "wind_speed_10m", "ws10", "wind_speed"),
}
_GRIB_SUFFIXES = (".grib", ".grib2", ".grb", ".grb2")


def open_grid(source: xr.Dataset | str | Path) -> xr.Dataset:
    """Open a gridded forecast: a Dataset as is, a GRIB file through cfgrib, anything else with xarray."""
    if isinstance(source, xr.Dataset):
        return source
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"NWP grid file not found: {path}")
    if path.suffix.lower() in _GRIB_SUFFIXES:
        try:
            import cfgrib  # noqa: F401
        except ImportError as e:
            raise ImportError(f"reading GRIB file {path} needs cfgrib: pip install 'urlk-forecast[grib]'") from e
        return xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": ""})
    try:
        return xr.open_dataset(path)
    except Exception as e:  # noqa: BLE001 - say which file and why
        raise ValueError(f"cannot open NWP grid {path}: {e}") from e


def _find(names: Sequence[str], present: Sequence[str]) -> str | None:
    low = {p.lower(): p for p in present}
    for n in names:
        if n.lower() in low:
            return low[n.lower()]
    return None


def bilinear_weights(grid_lat: np.ndarray, grid_lon: np.ndarray, lat: np.ndarray, lon: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Corner indices and weights of bilinear interpolation on a regular lat/lon grid.

    Returns ``(rows (S, 4), cols (S, 4), weights (S, 4), inside (S,))``; rows/cols index the grid *as given*
    (descending latitudes fine), corners ordered (lo,lo), (lo,hi), (hi,lo), (hi,hi). Longitudes of the points are
    mapped into the grid's convention; a grid spanning 360 degrees wraps around its seam.
    """
    glat = np.asarray(grid_lat, np.float64)
    glon = np.asarray(grid_lon, np.float64)
    lat = np.asarray(lat, np.float64)
    lon = np.asarray(lon, np.float64)
    if glat.ndim != 1 or glon.ndim != 1 or glat.size < 2 or glon.size < 2:
        raise ValueError("grid latitude and longitude must be 1-D with at least 2 points (a regular lat/lon grid)")
    # latitude: ascending view
    lat_order = np.argsort(glat)
    la = glat[lat_order]
    # longitude: sort, then rotate so the grid is contiguous (a regional grid may straddle 0/360 or the dateline);
    # a grid whose largest gap is one regular spacing covers all longitudes and wraps around
    lon_order = np.argsort(glon)
    lo = glon[lon_order]
    if np.any(np.diff(lo) <= 0):
        raise ValueError("grid longitudes contain duplicates")
    gaps = np.diff(np.append(lo, lo[0] + 360.0))
    k = int(np.argmax(gaps))
    if k != lo.size - 1:
        lon_order = np.roll(lon_order, -(k + 1))
        lo = np.concatenate([lo[k + 1 :], lo[: k + 1] + 360.0])
    spacing = float(np.median(np.diff(lo)))
    wraps = float(gaps.max()) <= 1.5 * spacing
    if wraps:
        lo = np.append(lo, lo[0] + 360.0)
        lon_order = np.append(lon_order, lon_order[0])
    pts = np.mod(lon - lo[0], 360.0) + lo[0]  # station longitudes in the grid's (rotated) convention
    i = np.clip(np.searchsorted(la, lat, side="right") - 1, 0, la.size - 2)
    j = np.clip(np.searchsorted(lo, pts, side="right") - 1, 0, lo.size - 2)
    wy = (lat - la[i]) / (la[i + 1] - la[i])
    wx = (pts - lo[j]) / (lo[j + 1] - lo[j])
    eps = 1e-9
    inside = (wy >= -eps) & (wy <= 1 + eps) & (wx >= -eps) & (wx <= 1 + eps) & np.isfinite(lat) & np.isfinite(lon)
    wy, wx = np.clip(wy, 0, 1), np.clip(wx, 0, 1)
    r0, r1 = lat_order[i], lat_order[i + 1]
    c0, c1 = lon_order[j], lon_order[j + 1]
    rows = np.stack([r0, r0, r1, r1], axis=1)
    cols = np.stack([c0, c1, c0, c1], axis=1)
    w = np.stack([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx], axis=1)
    return rows, cols, w, inside


def interpolate_points(field: np.ndarray, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray,
                       inside: np.ndarray) -> np.ndarray:
    """Bilinear values of ``field`` (..., nlat, nlon) at the points: (..., S); NaN outside the grid or where a
    corner is NaN."""
    corners = field[..., rows, cols]  # (..., S, 4)
    out = np.einsum("...sk,sk->...s", corners, weights)
    out[..., ~inside] = np.nan
    return out


class GFSInterpolation(Baseline):
    """Gridded NWP forecasts interpolated bilinearly to the stations (see the module docstring).

    ``grid_source``: Dataset or path. ``name_map``: our names (``t2m``, ``u10``, ``v10``, ``si10``, ``latitude``,
    ``longitude``, ``init``, ``step``, ``valid``) -> the source's. ``latency``: how long after its initialisation a
    forecast may be used. ``max_gap``: longest time gap bridged by linear interpolation. ``label``: the table row name.
    """

    name = "GFS"
    kind = "NWP"

    def __init__(self, grid_source: xr.Dataset | str | Path, name_map: Mapping[str, str] | None = None,
                 latency: str | pd.Timedelta = "0h", max_gap: str | pd.Timedelta = "6h",
                 label: str | None = None, *, variable: str = "temperature") -> None:
        super().__init__(variable=variable)
        self.source = grid_source
        self.name_map = dict(name_map or {})
        self.latency = pd.Timedelta(latency)
        self.max_gap = pd.Timedelta(max_gap)
        if label:
            self.name = label
        self.points: np.ndarray | None = None  # (I, K, S) forecast mode or (V, S) valid-time mode
        self.inits: np.ndarray | None = None  # datetime64[ns] (I,)
        self.steps: np.ndarray | None = None  # int64 ns (K,)
        self.valid: np.ndarray | None = None  # datetime64[ns] (V,)
        self.grid_points: int = 0

    # -- reading --------------------------------------------------------------------------------------------------
    def _name(self, key: str, candidates: Sequence[str], present: Sequence[str]) -> str | None:
        if key in self.name_map:
            if self.name_map[key] not in present:
                raise ValueError(f"name_map[{key!r}] = {self.name_map[key]!r} not in the NWP grid ({sorted(present)})")
            return self.name_map[key]
        return _find(candidates, present)

    def _field(self, grid: xr.Dataset, variable: str) -> xr.DataArray:
        """The forecast field of ``variable`` in canonical units (degC, m/s)."""
        names = list(grid.data_vars)
        if variable == "temperature":
            v = self._name("t2m", _VARS["t2m"], names)
            if v is None:
                raise ValueError(f"NWP grid has no 2 m temperature (looked for {_VARS['t2m']}); it has {names}; "
                                 "pass name_map={'t2m': ...}")
            da = grid[v].astype(np.float64)
            units = str(da.attrs.get("units", "")).strip()
            if not units:
                units = "K" if float(np.nanmedian(da.values)) > 150 else "degC"
                warnings.warn(f"NWP variable {v!r} has no units attribute; assuming {units}", stacklevel=3)
            return xr.apply_ufunc(lambda a: convert_units(a, units, "temperature"), da)
        if variable == "wind_speed":
            u = self._name("u10", _VARS["u10"], names)
            w = self._name("v10", _VARS["v10"], names)
            if u is not None and w is not None:
                du, dv = grid[u].astype(np.float64), grid[w].astype(np.float64)
                uu = str(du.attrs.get("units", "m s-1")).strip() or "m s-1"
                speed = np.hypot(du, dv)
                return xr.apply_ufunc(lambda a: convert_units(a, uu, "wind_speed"), speed)
            s = self._name("si10", _VARS["si10"], names)
            if s is None:
                raise ValueError(f"NWP grid has neither u10/v10 nor a wind speed variable; it has {names}")
            ds_ = grid[s].astype(np.float64)
            su = str(ds_.attrs.get("units", "m s-1")).strip() or "m s-1"
            return xr.apply_ufunc(lambda a: convert_units(a, su, "wind_speed"), ds_)
        raise ValueError(f"NWP baseline supports temperature and wind_speed, not {variable!r}")

    def _load(self, variable: str, lat: np.ndarray, lon: np.ndarray) -> None:
        grid = open_grid(self.source)
        field = self._field(grid, variable)
        dims = list(field.dims)
        coords = list(field.coords) + dims
        la = self._name("latitude", _LAT, coords)
        lo = self._name("longitude", _LON, coords)
        if la is None or lo is None:
            raise ValueError(f"NWP grid needs latitude/longitude coordinates; it has {coords}")
        step = self._name("step", _STEP, dims)
        init = self._name("init", _INIT, [d for d in dims if d != step]) if step else None
        valid = None if step else self._name("valid", _VALID, dims)
        if step is not None and init is None:
            # a single initialisation stored as a scalar coordinate (e.g. cfgrib's 'time' for one GRIB run)
            sc = self._name("init", _INIT, list(field.coords))
            if sc is None or field[sc].ndim != 0:
                raise ValueError(f"NWP grid has a step dim {step!r} but no initialisation time; dims {dims}")
            field = field.expand_dims(sc)
            init = sc
        if step is None and valid is None:
            raise ValueError(f"NWP grid needs (init, step) or valid-time dims; it has dims {dims}")
        lat_dim = field[la].dims[0] if field[la].ndim == 1 else None
        lon_dim = field[lo].dims[0] if field[lo].ndim == 1 else None
        if lat_dim is None or lon_dim is None:
            raise ValueError("NWP grid latitude/longitude must be 1-D (a regular lat/lon grid)")
        rows, cols, w, inside = bilinear_weights(field[la].values, field[lo].values, lat, lon)
        self.grid_points = int(field[la].size * field[lo].size)
        time_dims = [init, step] if step else [valid]
        extra = [d for d in dims if d not in (*time_dims, lat_dim, lon_dim)]
        if extra:
            if any(field.sizes[d] != 1 for d in extra):
                raise ValueError(f"NWP field has extra dims {extra}; select a level/member first")
            field = field.isel({d: 0 for d in extra})
        field = field.transpose(*time_dims, lat_dim, lon_dim)
        # read only the grid points the stations need (lazy backends load just those)
        need_r, inv_r = np.unique(rows, return_inverse=True)
        need_c, inv_c = np.unique(cols, return_inverse=True)
        sub = np.asarray(field.isel({lat_dim: need_r, lon_dim: need_c}).values, np.float64)
        pts = interpolate_points(sub, inv_r.reshape(rows.shape), inv_c.reshape(cols.shape), w, inside)
        if step:
            inits = np.asarray(field[init].values).astype("datetime64[ns]")
            sv = np.asarray(field[step].values)
            if np.issubdtype(sv.dtype, np.timedelta64):
                steps = sv.astype("timedelta64[ns]").astype(np.int64)
            else:  # numbers: hours
                steps = (np.asarray(sv, np.float64) * 3600e9).round().astype(np.int64)
            oi, ok = np.argsort(inits), np.argsort(steps)
            self.inits, self.steps = inits[oi], steps[ok]
            self.points = pts[oi][:, ok].astype(np.float32)
            self.valid = None
        else:
            vt = np.asarray(field[valid].values).astype("datetime64[ns]")
            ov = np.argsort(vt)
            self.valid = vt[ov]
            self.points = pts[ov].astype(np.float32)
            self.inits = self.steps = None
        outside = int((~inside).sum())
        if outside:
            warnings.warn(f"{outside} of {inside.size} stations lie outside the NWP grid; they get no forecast",
                          RuntimeWarning, stacklevel=3)

    def _fit(self, train: xr.Dataset) -> None:
        """Interpolate the grid to the training stations (nothing is learnt from the observations)."""
        self._record_stations(train)
        self._load(self.variable, np.asarray(train["lat"].values), np.asarray(train["lon"].values))

    # -- forecasting ----------------------------------------------------------------------------------------------
    @staticmethod
    def _interp_axis(axis: np.ndarray, q: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bracketing indices and weight of ``q`` on the sorted int64 ``axis``; ok=False outside/too wide gaps."""
        hi = np.searchsorted(axis, q, side="left")
        exact = (hi < axis.size) & (axis[np.minimum(hi, axis.size - 1)] == q)
        lo = np.where(exact, hi, hi - 1)
        ok = (lo >= 0) & (hi < axis.size)
        lo_c, hi_c = np.clip(lo, 0, axis.size - 1), np.clip(hi, 0, axis.size - 1)
        span = axis[hi_c] - axis[lo_c]
        ok &= span <= max_gap
        w = np.where(span > 0, (q - axis[lo_c]) / np.where(span > 0, span, 1), 0.0)
        return lo_c, hi_c, np.where(ok, w, np.nan)

    def predict_windows(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(N, pred_len, S): the interpolated NWP forecast at each target (NaN where there is none)."""
        pos = self._check_ready(ws)
        assert self.points is not None
        idx = resolve_indices(ws, indices)
        geo = window_geometry(ws)
        tt = target_times(ws, idx).astype(np.int64)  # (N, H)
        gap = int(self.max_gap.value)
        if self.valid is not None:
            lo, hi, w = self._interp_axis(self.valid.astype(np.int64), tt, gap)
            a, b = self.points[lo][..., pos], self.points[hi][..., pos]  # (N, H, S)
        else:
            assert self.inits is not None and self.steps is not None
            now = input_times(ws, idx)[:, geo.seq_len - 1].astype(np.int64) - int(self.latency.value)
            ii = np.searchsorted(self.inits.astype(np.int64), now, side="right") - 1  # latest init <= now
            has = ii >= 0
            ii = np.clip(ii, 0, self.inits.size - 1)
            lead = tt - self.inits.astype(np.int64)[ii][:, None]
            lo, hi, w = self._interp_axis(self.steps, lead, gap)
            w = np.where(has[:, None], w, np.nan)
            a = self.points[ii[:, None], lo][..., pos]
            b = self.points[ii[:, None], hi][..., pos]
        out = a + w[..., None] * (b - a)
        return out.astype(np.float32)

    @property
    def n_params(self) -> int:
        """0: nothing is fitted to the observations (the NWP model itself is external)."""
        return 0


def synthetic_nwp_grid(ds: xr.Dataset, variable: str = "temperature", resolution: float = 2.5,
                       init_every: str = "6h", max_step: str = "48h", step: str = "1h", error_std: float = 1.0,
                       error_growth: float = 0.5, seed: int = 0) -> xr.Dataset:
    """A demo "NWP" forecast grid built from station truth + error (for demos and tests; it is NOT a model).

    Each grid value is the inverse-distance mean of the 4 nearest stations' observations at the valid time, plus a
    per-(init, step) error that grows with lead (``error_std + error_growth * lead_days``). Temperature is written
    as ``t2m`` in K; wind as ``u10``/``v10`` m/s with a random direction per grid point (so speed = the value).
    Dims ``(init_time, step, latitude, longitude)``, latitudes descending, longitudes 0..360 like GFS.
    """
    from scipy.spatial import cKDTree

    if variable not in ("temperature", "wind_speed"):
        raise ValueError(f"variable must be temperature or wind_speed, got {variable!r}")
    rng = np.random.default_rng(seed)
    truth = np.asarray(ds[variable].transpose("time", "station").values, np.float64)
    times = pd.DatetimeIndex(ds["time"].values)
    lats = np.arange(90.0, -90.0 - 1e-9, -resolution)
    lons = np.arange(0.0, 360.0 - 1e-9, resolution)

    def xyz(la: np.ndarray, lo: np.ndarray) -> np.ndarray:
        r, q = np.radians(la), np.radians(lo)
        return np.stack([np.cos(r) * np.cos(q), np.cos(r) * np.sin(q), np.sin(r)], axis=-1)

    glat, glon = np.meshgrid(lats, lons, indexing="ij")
    tree = cKDTree(xyz(np.asarray(ds["lat"].values, np.float64), np.asarray(ds["lon"].values, np.float64)))
    dist, nb = tree.query(xyz(glat.ravel(), glon.ravel()), k=min(4, truth.shape[1]))
    dist, nb = dist.reshape(glat.size, -1), nb.reshape(glat.size, -1)
    wgt = 1.0 / np.maximum(dist, 1e-6) ** 2
    inits = pd.date_range(times[0], times[-1], freq=init_every)
    steps = pd.timedelta_range("0h", max_step, freq=step)
    data = np.full((len(inits), len(steps), glat.size), np.nan, np.float32)
    tindex = pd.Series(np.arange(len(times)), index=times)
    for a, t0 in enumerate(inits):
        vt = t0 + steps
        ti = tindex.reindex(vt).to_numpy()
        ok = np.isfinite(ti)
        if not ok.any():
            continue
        vals = truth[ti[ok].astype(np.int64)][:, nb]  # (k_ok, G, 4)
        fin = np.isfinite(vals)
        ww = np.where(fin, wgt[None], 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            field = (np.where(fin, vals, 0.0) * ww).sum(-1) / ww.sum(-1)
        lead_days = np.asarray(steps[ok] / pd.Timedelta("1D"))[:, None]
        err = rng.normal(0.0, 1.0, field.shape) * (error_std + error_growth * lead_days)
        data[a, ok] = field + err
    data = data.reshape(len(inits), len(steps), lats.size, lons.size)
    coords = {"init_time": inits.values, "step": steps.values, "latitude": lats, "longitude": lons}
    dims = ("init_time", "step", "latitude", "longitude")
    attrs = {"title": "synthetic NWP demo grid (station truth + error), not a model", "synthetic": 1}
    if variable == "temperature":
        return xr.Dataset({"t2m": (dims, data + np.float32(273.15), {"units": "K"})}, coords=coords, attrs=attrs)
    speed = np.maximum(data, 0.0)
    ang = rng.uniform(0, 2 * np.pi, (lats.size, lons.size)).astype(np.float32)
    return xr.Dataset({"u10": (dims, speed * np.cos(ang), {"units": "m s-1"}),
                       "v10": (dims, speed * np.sin(ang), {"units": "m s-1"})}, coords=coords, attrs=attrs)
