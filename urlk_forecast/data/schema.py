"""The one station-data schema every reader returns.

An ``xarray.Dataset`` with dims ``(time, station)``; data variables are open: any floating-point variable on
``(time, station)`` with a ``units`` attribute (NaN = missing). Variables of the registry
(``data/variables.py``: ``temperature`` in degC, ``wind_speed`` in m s-1, ``dew_point``, ``sea_level_pressure``,
...) keep their names, CF metadata and canonical units; any other name (a wide CSV's ``value``, a load in MW)
carries the units it was given. Coords ``station`` (id string), ``lat``, ``lon``, ``elevation`` and ``name``
on the station dim (lat/lon NaN = location unknown). ``validate`` checks all of it and raises one
:class:`SchemaError` saying what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .formats._common import RESAMPLE_ADVICE
from .units import UnitError, convert, lookup
from .variables import REGISTRY, SCHEMA_VARIABLES

__all__ = [
    "VARIABLES",
    "SchemaError",
    "make_dataset",
    "validate",
    "infer_frequency",
    "convert_units",
    "SPLITS",
    "parse_split_bounds",
    "format_split_bounds",
    "variable_attrs",
    "data_variables",
    "variable_units",
    "require_variable",
]

#: CF metadata of the schema's data variables, keyed by our variable name (from the variable registry).
VARIABLES: dict[str, dict[str, str]] = {name: REGISTRY[name].cf_attrs() for name in SCHEMA_VARIABLES}

COORD_ATTRS: dict[str, dict[str, str]] = {
    "lat": {"units": "degrees_north", "standard_name": "latitude"},
    "lon": {"units": "degrees_east", "standard_name": "longitude"},
    "elevation": {"units": "m", "standard_name": "height_above_mean_sea_level"},
    "name": {"long_name": "station name"},
    "station": {"long_name": "station identifier", "cf_role": "timeseries_id"},
}

#: the split names of ``ds.attrs["split_bounds"]``, in time order
SPLITS = ("train", "val", "test")


class SchemaError(ValueError):
    """A dataset does not follow the urlk-forecast station schema."""


def convert_units(values: np.ndarray, units: str, variable: str) -> np.ndarray:
    """Convert ``values`` given in ``units`` to the canonical unit of ``variable`` (float64).

    The conversion table is :mod:`urlk_forecast.data.units`; an unknown unit or one of another
    quantity raises :class:`SchemaError` naming the known ones.
    """
    if variable not in REGISTRY:
        raise SchemaError(f"unknown variable {variable!r}; known: {sorted(REGISTRY)}")
    spec = REGISTRY[variable]
    try:
        lookup(str(units).strip(), spec.quantity)
        return convert(values, str(units).strip(), spec.units)
    except UnitError as e:
        raise SchemaError(f"{variable}: {e}") from None


def variable_attrs(name: str, attrs: Mapping[str, object] | None = None) -> dict[str, str]:
    """The CF attributes of data variable ``name``: the registry's for a known variable (``attrs`` may add to them
    but not change its canonical units), else ``attrs``, which must hold a non-empty ``units`` string."""
    extra = {str(k): str(v) for k, v in (attrs or {}).items()}
    if name in REGISTRY:
        spec = REGISTRY[name]
        if "units" in extra and extra["units"] != spec.units:
            raise SchemaError(f"variable {name!r} is stored in {spec.units!r}, not {extra['units']!r}; convert it "
                              "with convert_units")
        return {**extra, **spec.cf_attrs()}
    if not extra.get("units", "").strip():
        raise SchemaError(f"variable {name!r} is not in the variable registry ({', '.join(REGISTRY)}), so its "
                          "units must be given")
    return {"long_name": name, **extra}


def data_variables(ds: xr.Dataset) -> list[str]:
    """The data variables of a schema dataset (every variable on ``(time, station)``), in dataset order."""
    return [str(v) for v, da in ds.data_vars.items() if set(da.dims) == {"time", "station"}]


def variable_units(ds: xr.Dataset, name: str) -> str:
    """The ``units`` attribute of ``ds[name]`` (the registry's canonical unit when the attribute is absent)."""
    units = ds[name].attrs.get("units") if name in ds.data_vars else None
    if units is None:
        return REGISTRY[name].units if name in REGISTRY else ""
    return str(units)


def require_variable(ds: xr.Dataset, name: str, what: str = "the data") -> None:
    """Raise :class:`SchemaError` naming the dataset's variables when ``ds`` has no data variable ``name``."""
    if name not in ds.data_vars:
        have = data_variables(ds)
        raise SchemaError(f"{what} has no variable {name!r}; its variables are: {', '.join(have) or 'none'}")


def format_split_bounds(bounds: Mapping[str, tuple[pd.Timestamp, pd.Timestamp]]) -> str:
    """``{"train": (t0, t1), ...}`` -> ``"train:t0/t1;val:..."`` (ISO times, inclusive ends)."""
    return ";".join(f"{k}:{pd.Timestamp(a).isoformat()}/{pd.Timestamp(b).isoformat()}" for k, (a, b) in bounds.items())


def parse_split_bounds(text: str) -> dict[str, tuple[pd.Timestamp, pd.Timestamp]]:
    """Parse ``ds.attrs["split_bounds"]``: ``"train:START/END;val:START/END;test:START/END"``.

    The one parser of that attribute (inverse of :func:`format_split_bounds`): ISO times, both ends
    inclusive, every split of :data:`SPLITS` exactly once. Raises :class:`SchemaError` naming the bad part.
    """
    out: dict[str, tuple[pd.Timestamp, pd.Timestamp]] = {}
    for part in str(text).split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, span = part.partition(":")
        start, sep2, end = span.partition("/")
        name = name.strip()
        if not sep or not sep2 or name not in SPLITS:
            raise SchemaError(
                f"ds.attrs['split_bounds'] entry {part!r} is not 'NAME:START/END' with NAME in {SPLITS}: {text!r}"
            )
        if name in out:
            raise SchemaError(f"ds.attrs['split_bounds'] names split {name!r} twice: {text!r}")
        try:
            out[name] = (pd.Timestamp(start.strip()), pd.Timestamp(end.strip()))
        except ValueError as exc:
            raise SchemaError(f"ds.attrs['split_bounds'] entry {part!r} has a bad time: {exc}") from None
        if out[name][1] < out[name][0]:
            raise SchemaError(f"ds.attrs['split_bounds'] entry {part!r} ends before it starts")
    missing = [s for s in SPLITS if s not in out]
    if missing:
        raise SchemaError(f"ds.attrs['split_bounds'] lacks {missing}: {text!r}")
    return out


def make_dataset(
    time: Sequence | np.ndarray | pd.DatetimeIndex,
    station: Sequence[str] | np.ndarray,
    lat: Sequence[float] | np.ndarray,
    lon: Sequence[float] | np.ndarray,
    elevation: Sequence[float] | np.ndarray | None = None,
    name: Sequence[str] | np.ndarray | None = None,
    attrs: Mapping[str, object] | None = None,
    var_attrs: Mapping[str, Mapping[str, object]] | None = None,
    **variables: np.ndarray,
) -> xr.Dataset:
    """Build a schema dataset from arrays of shape ``(time, station)`` per variable.

    Values of registry variables must already be in canonical units (see :func:`convert_units`); any other
    variable needs its CF attributes, ``units`` at least, in ``var_attrs[name]`` (:func:`variable_attrs`).
    ``elevation`` defaults to NaN (unknown) and ``name`` to the station id.
    """
    time_index = pd.DatetimeIndex(pd.to_datetime(np.asarray(time)))
    ids = np.asarray([str(s) for s in station], dtype=object)
    n = len(ids)
    elev = np.full(n, np.nan, np.float32) if elevation is None else np.asarray(elevation, np.float32)
    names = ids.copy() if name is None else np.asarray([str(s) for s in name], dtype=object)
    data_vars = {}
    for var, arr in variables.items():
        meta = variable_attrs(var, (var_attrs or {}).get(var))
        a = np.asarray(arr, dtype=np.float32)
        if a.shape != (len(time_index), n):
            raise SchemaError(f"{var} has shape {a.shape}, expected (time, station) = {(len(time_index), n)}")
        data_vars[var] = (("time", "station"), a, meta)
    ds = xr.Dataset(
        data_vars,
        coords={
            "time": ("time", time_index.values.astype("datetime64[ns]"), {"standard_name": "time"}),
            "station": ("station", ids, COORD_ATTRS["station"]),
            "lat": ("station", np.asarray(lat, np.float32), COORD_ATTRS["lat"]),
            "lon": ("station", np.asarray(lon, np.float32), COORD_ATTRS["lon"]),
            "elevation": ("station", elev, COORD_ATTRS["elevation"]),
            "name": ("station", names, COORD_ATTRS["name"]),
        },
        attrs={"Conventions": "CF-1.8", "featureType": "timeSeries", **dict(attrs or {})},
    )
    return ds


def infer_frequency(ds: xr.Dataset) -> pd.Timedelta:
    """The constant time step of ``ds`` (raises :class:`SchemaError` if irregular or too short)."""
    t = pd.DatetimeIndex(ds["time"].values)
    if len(t) < 2:
        raise SchemaError(f"need at least 2 time steps to infer a frequency, got {len(t)}")
    d = np.diff(t.asi8)
    if not np.all(d == d[0]):
        bad = int(np.argmax(d != d[0]))
        raise SchemaError(
            f"irregular time frequency: step {pd.Timedelta(int(d[0]))} at the start but "
            f"{pd.Timedelta(int(d[bad]))} between {t[bad]} and {t[bad + 1]}; {RESAMPLE_ADVICE}"
        )
    return pd.Timedelta(int(d[0]))


def _check_structure(ds: xr.Dataset) -> None:
    """Dims ``time``/``station`` and the station coordinates on the station dim."""
    if not isinstance(ds, xr.Dataset):
        raise SchemaError(f"expected an xarray.Dataset, got {type(ds).__name__}")
    for dim in ("time", "station"):
        if dim not in ds.dims:
            raise SchemaError(f"missing dimension {dim!r}; dataset has dims {tuple(ds.dims)}")
    for coord in ("time", "station", "lat", "lon", "elevation", "name"):
        if coord not in ds.coords:
            raise SchemaError(f"missing coordinate {coord!r}; dataset has coords {sorted(ds.coords)}")
        if coord != "time" and ds[coord].dims != ("station",):
            raise SchemaError(f"coordinate {coord!r} must be on dim 'station', found dims {ds[coord].dims}")


def _check_variable(ds: xr.Dataset, v: str) -> None:
    """Dims, units (canonical for a registry variable, present for any other) and a floating dtype of ``v``."""
    da = ds[v]
    if set(da.dims) != {"time", "station"}:
        raise SchemaError(f"variable {v!r} must have dims (time, station), found {da.dims}")
    units = da.attrs.get("units")
    if v not in REGISTRY:
        if units is None or not str(units).strip():
            raise SchemaError(f"variable {v!r} has no 'units' attribute; every data variable needs one")
        if not np.issubdtype(da.dtype, np.floating):
            raise SchemaError(f"variable {v!r} must be floating point (NaN = missing), found {da.dtype}")
        return
    if units is None:
        raise SchemaError(f"variable {v!r} has no 'units' attribute (expected {REGISTRY[v].units!r})")
    want = REGISTRY[v].units
    if units != want:
        try:
            lookup(str(units), REGISTRY[v].quantity)
        except UnitError:
            raise SchemaError(f"variable {v!r} has unknown units {units!r}; expected {want!r}") from None
        raise SchemaError(f"variable {v!r} is in {units!r}; convert to {want!r} with convert_units")
    if not np.issubdtype(da.dtype, np.floating):
        raise SchemaError(f"variable {v!r} must be floating point (NaN = missing), found {da.dtype}")


def validate(ds: xr.Dataset, variables: Sequence[str] | None = None, regular: bool = True) -> xr.Dataset:
    """Check ``ds`` follows the schema; return it unchanged or raise one clear :class:`SchemaError`.

    ``variables`` names the data variables that must be present (default: at least one). Every data
    variable on ``(time, station)`` and every registry variable is checked (dims, units, dtype); other
    variables (a scalar ``crs``) are left alone. ``regular=False`` skips the constant-frequency check.
    """
    _check_structure(ds)
    present = [str(v) for v in ds.data_vars if v in REGISTRY or str(v) in data_variables(ds)]
    for v in variables if variables is not None else []:
        if v not in ds.data_vars:
            raise SchemaError(f"missing variable {v!r}; dataset has {sorted(present)}")
    if not present:
        raise SchemaError(
            "no schema variable present: a dataset needs at least one floating-point data variable on "
            f"(time, station) with units (e.g. {', '.join(VARIABLES)})"
        )
    for v in present:
        _check_variable(ds, v)
    t = pd.DatetimeIndex(ds["time"].values)
    if t.has_duplicates:
        dup = t[t.duplicated()][0]
        raise SchemaError(f"duplicate time {dup}")
    if not t.is_monotonic_increasing:
        i = int(np.argmax(np.diff(t.asi8) < 0))
        raise SchemaError(f"times are not monotonic increasing: {t[i]} is followed by {t[i + 1]}")
    ids = pd.Index([str(s) for s in ds["station"].values])
    if ids.has_duplicates:
        raise SchemaError(f"duplicate station id {ids[ids.duplicated()][0]!r}")
    if regular and len(t) >= 2:
        infer_frequency(ds)
    return ds
