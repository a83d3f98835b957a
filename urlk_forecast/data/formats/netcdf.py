"""netCDF: our schema round-trip, and CF station files with other names mapped onto it.

``write_netcdf`` is atomic: it writes a temp file in the destination directory, fsyncs it and
``os.replace``s it over the target, so a crash or error never leaves a partial file (the temp file is
removed on error). ``read_netcdf`` reads our own files back unchanged and maps foreign CF files
(ERA5-at-stations, station archives) through ``name_map``, converting units through ``data/units.py``
and setting impossible values to NaN (``data/plausibility.py``).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..plausibility import apply_bounds, at_grid, resolve_units
from ..schema import SchemaError, make_dataset, validate
from ..units import UnitError, lookup
from ..variables import REGISTRY, SCHEMA_VARIABLES
from ._common import PathLike, ReaderError, regular_grid

__all__ = ["read_netcdf", "write_netcdf", "NETCDF_MAGIC"]

#: first bytes of netCDF classic (CDF\x01/\x02/\x05) and netCDF-4 (HDF5) files
NETCDF_MAGIC = (b"CDF\x01", b"CDF\x02", b"CDF\x05", b"\x89HDF\r\n\x1a\n")

# Names recognised without a name_map (unambiguous spellings in CF station files): 1-d variables
# for the station coordinates, dimensions for the axes.
_COORD_ALIASES = {
    "latitude": "lat",
    "longitude": "lon",
    "altitude": "elevation",
    "elev": "elevation",
    "station_name": "name",
}
_DIM_ALIASES = {"stations": "station", "station_id": "station", "valid_time": "time", "times": "time"}
#: attributes of a registry variable kept from the file (its CF name and units come from the registry)
_KEPT_ATTRS = ("comment", "cell_methods")
_STANDARD_NAMES = {spec.standard_name: var for var, spec in reversed(list(REGISTRY.items()))}


def _auto_map(ds: xr.Dataset) -> dict[str, str]:
    """Renames we can infer: schema variables by CF standard_name, coords/dims by common aliases."""
    names = set(ds.variables) | set(ds.dims)
    out: dict[str, str] = {}
    for var in ds.data_vars:
        if str(var) in REGISTRY:  # already a registry name (precipitation_1h shares precipitation's standard_name)
            continue
        target = _STANDARD_NAMES.get(str(ds[var].attrs.get("standard_name", "")))
        if target and target not in names and target not in out.values():
            out[str(var)] = target
    for src, dst in _COORD_ALIASES.items():
        if src in ds.variables and src not in ds.dims and ds[src].ndim == 1 and dst not in names:
            if dst not in out.values():
                out[src] = dst
    for src, dst in _DIM_ALIASES.items():
        if src in ds.dims and dst not in names and dst not in out.values():
            out[src] = dst
    return out


def read_netcdf(
    path: PathLike, name_map: Mapping[str, str] | None = None, *, units: Mapping[str, str] | None = None
) -> xr.Dataset:
    """Read a netCDF file into the schema (loaded into memory; the file is closed on return).

    ``name_map`` maps names in the file — variables, coordinates or dimensions — onto the schema's
    (``{"t2m": "temperature", "si10": "wind_speed", "stations": "station", "latitude": "lat"}``).
    Without it, variables are recognised by CF ``standard_name`` (air_temperature, wind_speed,
    dew_point_temperature, ...: the variable registry) and coordinates by common spellings (latitude,
    longitude, altitude, ...). Registry variables are converted from their ``units`` attribute (e.g. K ->
    degC, knots -> m/s); ``units={"temperature": "degF"}`` supplies or overrides it. Any other numeric
    variable on (time, station) with a ``units`` attribute is read as it is (open variables). Impossible
    values become NaN with one warning; data variables that are not read are named in a warning. Times
    with gaps on a regular step are put on the full axis, gaps NaN. Global attributes are kept.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    with open(p, "rb") as fh:
        magic = fh.read(8)
    if not any(magic.startswith(m) for m in NETCDF_MAGIC):
        raise ReaderError(p, f"not a netCDF file (starts with {magic[:8]!r})")
    try:
        src = xr.load_dataset(p)
    except (OSError, ValueError, RuntimeError, KeyError, IndexError) as e:
        raise ReaderError(p, f"cannot read netCDF (truncated or corrupt?): {e}") from None
    try:
        return _to_schema(src, p, name_map, units)
    except SchemaError as e:
        raise ReaderError(p, str(e)) from None


def _renamed(src: xr.Dataset, p: Path, name_map: Mapping[str, str] | None) -> xr.Dataset:
    """``src`` with the user's ``name_map`` and the inferred CF renames applied (dims and variables apart)."""
    names = set(src.variables) | set(src.dims)
    mapping = dict(name_map or {})
    for k in mapping:
        if k not in names:
            raise ReaderError(p, f"name_map names {k!r}, which is not in the file; it has {sorted(map(str, names))}")

    def kind(name: str) -> str:
        return "dim" if name in src.dims else "var"

    for k, v in _auto_map(src).items():  # user entries win over guesses of the same kind
        if k not in mapping and not any(t == v and kind(s) == kind(k) for s, t in mapping.items()):
            mapping[k] = v
    # rename dims and variables separately: a dim without a coordinate variable is not a variable
    dim_map = {k: v for k, v in mapping.items() if k in src.dims and k != v}
    var_map = {k: v for k, v in mapping.items() if k in src.variables and k not in src.dims and k != v}
    ds = src.rename_dims(dim_map) if dim_map else src
    if var_map:
        ds = ds.rename_vars(var_map)
    for k, v in dim_map.items():  # dimension coordinate of a renamed dim
        if k in ds.variables and v not in ds.variables:
            ds = ds.rename_vars({k: v})
    for dim in ("time", "station"):
        if dim not in ds.dims:
            raise ReaderError(
                p,
                f"no {dim!r} dimension (dims are {list(ds.dims)}); map the file's name onto it, "
                f"e.g. name_map={{'<name>': '{dim}'}}",
            )
    return ds


def _time_axis(ds: xr.Dataset, p: Path) -> tuple[pd.DatetimeIndex, pd.DatetimeIndex]:
    """(the file's times, the regular axis covering them)."""
    if "time" not in ds.coords:
        raise ReaderError(p, "the time dimension has no coordinate values", field="time")
    tv = np.asarray(ds["time"].values)
    if not np.issubdtype(tv.dtype, np.datetime64):
        raise ReaderError(
            p, f"time values are {tv.dtype}, not dates (missing CF 'units' like 'hours since ...'?)", field="time"
        )
    t = pd.DatetimeIndex(tv)
    if t.has_duplicates:
        raise ReaderError(p, f"duplicate time {t[t.duplicated()][0]}", field="time")
    if len(t) < 2:
        return t, t
    try:
        return t, regular_grid(t.values)
    except ValueError as e:
        raise ReaderError(p, str(e), field="time") from None


def _stations(ds: xr.Dataset, p: Path) -> tuple[list[str], dict[str, np.ndarray | None], list[str] | None]:
    """(station ids, lat/lon/elevation arrays, names or None)."""
    n = ds.sizes["station"]
    ids = ds["station"].values if "station" in ds.variables else np.array([f"S{i:04d}" for i in range(n)])
    ids = [x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(ids).tolist()]
    coords: dict[str, np.ndarray | None] = {}
    for c in ("lat", "lon", "elevation"):
        if c in ds.variables:
            if ds[c].dims != ("station",):
                raise ReaderError(p, f"{c} must be on the station dimension, found dims {ds[c].dims}", field=c)
            coords[c] = np.asarray(ds[c].values, np.float64)
        elif c == "elevation":
            coords[c] = None
        else:
            raise ReaderError(p, f"no {c} coordinate; map the file's name onto it (name_map={{'<name>': '{c}'}})")
    names = None
    if "name" in ds.variables:
        names = [x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(ds["name"].values).tolist()]
    return ids, coords, names


def _values(ds: xr.Dataset, v: str, p: Path) -> tuple[np.ndarray, str | None]:
    """(the (time, station) values of ``v`` as stored, its ``units`` attribute or None)."""
    da = ds[v]
    extra = [d for d in da.dims if d not in ("time", "station")]
    for d in extra:
        if da.sizes[d] != 1:
            raise ReaderError(p, f"{v} has an extra dimension {d!r} of size {da.sizes[d]}", field=v)
    da = da.squeeze(extra, drop=True) if extra else da
    if set(da.dims) != {"time", "station"}:
        raise ReaderError(p, f"{v} must span (time, station), found dims {da.dims}", field=v)
    units = da.attrs.get("units")
    return np.asarray(da.transpose("time", "station").values), None if units is None else str(units)


def _open_variables(ds: xr.Dataset) -> list[str]:
    """Variables outside the registry that are read as they are: numeric, on (time, station), with units."""
    out = []
    for v, da in ds.data_vars.items():
        if str(v) in REGISTRY or str(v) in ("lat", "lon", "elevation", "name"):
            continue
        on_grid = {"time", "station"} <= set(da.dims) and all(da.sizes[d] == 1 for d in da.dims
                                                              if d not in ("time", "station"))
        if on_grid and np.issubdtype(da.dtype, np.number) and str(da.attrs.get("units", "")).strip():
            out.append(str(v))
    return out


def _warn_unread(ds: xr.Dataset, p: Path, read: list[str]) -> None:
    """Name the data variables that are not read (an extra variable is never dropped without a word)."""
    skip = set(read) | {"time", "station", "lat", "lon", "elevation", "name"}
    unread = sorted(str(v) for v in ds.data_vars if str(v) not in skip)
    if unread:
        warnings.warn(
            f"{p}: variable(s) {unread} are not read: a data variable must be numeric on (time, station) with a "
            f"units attribute (known variables such as {', '.join(SCHEMA_VARIABLES)} are recognised by name, "
            "standard_name or name_map)",
            UserWarning,
            stacklevel=4,
        )


def _to_schema(
    src: xr.Dataset, p: Path, name_map: Mapping[str, str] | None, units: Mapping[str, str] | None = None
) -> xr.Dataset:
    ds = _renamed(src, p, name_map)
    present = [v for v in REGISTRY if v in ds.data_vars or v in ds.coords]
    others = _open_variables(ds)
    if not present and not others:
        raise ReaderError(
            p,
            f"no data variable: none of {sorted(map(str, ds.data_vars))} is numeric on (time, station) with units "
            "or a known variable; map one, e.g. name_map={'t2m': 'temperature'}",
        )
    t, grid = _time_axis(ds, p)
    ids, coords, names = _stations(ds, p)
    raw, file_units = {}, {}
    for v in present:
        raw[v], file_units[v] = _values(ds, v, p)
    extra = {v: _values(ds, v, p) for v in others}
    given = resolve_units(units, {v: u or "" for v, u in file_units.items()}, p)
    for v in present:
        if not given[v]:
            raise ReaderError(
                p, f"{v} has no units attribute; cannot tell what its numbers mean (pass units={{{v!r}: ...}})",
                field=v,
            )
        try:
            lookup(given[v], REGISTRY[v].quantity)
        except UnitError as e:
            raise ReaderError(p, f"{v} has units {given[v]!r}: {e}", field=v) from None
    _warn_unread(ds, p, present + others)
    data = apply_bounds(raw, p, units=given, locate=at_grid(t, ids), stacklevel=4) if raw else {}
    data.update({v: np.asarray(vals, np.float32) for v, (vals, _) in extra.items()})
    if not (len(grid) == len(t) and (len(t) < 2 or t.is_monotonic_increasing)):
        for v, vals in data.items():  # gaps in the file's times: put on the full axis
            full = np.full((len(grid), len(ids)), np.nan, np.float32)
            full[grid.get_indexer(t)] = vals
            data[v] = full
    attrs = {k: v for k, v in src.attrs.items() if k not in ("Conventions", "featureType")}
    var_attrs = {v: {k: str(a) for k, a in ds[v].attrs.items() if k in ("units", "long_name", "standard_name")}
                 for v in others}
    var_attrs.update({v: {k: str(a) for k, a in ds[v].attrs.items() if k in _KEPT_ATTRS} for v in raw})
    out = make_dataset(grid, ids, coords["lat"], coords["lon"], elevation=coords["elevation"], name=names,
                       attrs=attrs, var_attrs=var_attrs, **data)
    return validate(out)


def write_netcdf(ds: xr.Dataset, path: PathLike, compress: int = 0) -> Path:
    """Validate ``ds`` and write it atomically to ``path`` (netCDF-4); returns the path.

    ``compress`` is the zlib level (0 = off, the default: fastest to open; 1-9 smaller files).
    """
    validate(ds, regular=False)
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    enc: dict[str, dict] = {}
    for v in ds.data_vars:
        enc[str(v)] = {"dtype": "float32", "_FillValue": np.float32(np.nan)}
        if compress:
            enc[str(v)].update(zlib=True, complevel=int(compress), shuffle=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result should look like any new file
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=enc)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return dest
