"""Real station series that a fresh machine gets offline, from package wheels: loaders for the real-data suite.

``benchmarks/real_skill.py`` trains and benchmarks on these series exactly as a user would, through files; this
module reads the raw files shipped inside two wheels (nothing is copied into the repository) and returns the
package schema (:mod:`urlk_forecast.data.schema`), and :func:`write_series` writes each series to a netCDF file in
a cache directory.

Series (:data:`SERIES`):

* ``tmy3`` -- the two NREL TMY3 files inside the ``pvlib`` wheel (``pvlib/data/703165TY.csv``, Sand Point AK, and
  ``723170TYA.CSV``, Greensboro NC): hourly dry-bulb temperature (degC), wind speed (m/s), dew point (degC) and
  station pressure (``pressure``, hPa = the file's mbar; not reduced to sea level, so it is not the registry's
  ``sea_level_pressure``) measured at the station.
  A *typical* meteorological year is stitched from twelve calendar months of different years, so the
  series jumps where consecutive months come from different years. TMY3 smooths those joins over 6 hours on each
  side with curve fitting (the values there are not observations), so the ``2 * join_hours`` hours around every
  join are set missing (NaN). A 12-hour gap is longer than the window dataset's ``max_gap``, so no smoothed value is
  a target; windows whose input crosses a join still exist and see a held value, as after a real outage. Times are
  the file's local standard time (hour ending, ``01:00 .. 24:00``) converted to UTC in the non-leap reference year
  :data:`TMY3_YEAR`; both stations share one UTC axis (a few hours are missing at each end of the station whose
  time zone starts later).
* ``vega`` -- ``_data/seattle-temps.csv`` and ``_data/sf-temps.csv`` inside the ``vega_datasets`` wheel: hourly
  temperature of 2010 in degF, converted to degC. Temperature only. The published clock times are US Pacific;
  they are read as standard time (UTC-8). The source skips 2010-03-14 03:00, which becomes a 1-hour gap. Caveat:
  these series are very smooth (the mean change over 24 h is a fraction of the mean change over 1 h), i.e. they
  behave like hourly climate normals rather than one year's weather; they are a sanity check, not a weather test.
  The source does not name the stations, so city-centre coordinates are used and elevation is unknown (NaN).

The NCEI ISD-Lite files in ``datasets/samples/isd-lite`` are 4-7-hour excerpts (reader fixtures), far shorter than
one 72-hour window, so they are no series here.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .formats.netcdf import write_netcdf
from .schema import convert_units, make_dataset, validate

__all__ = [
    "RealSeries",
    "SERIES",
    "TMY3_FILES",
    "TMY3_YEAR",
    "VEGA_FILES",
    "default_cache_dir",
    "list_series",
    "load_series",
    "load_tmy3",
    "load_vega",
    "package_data_path",
    "read_tmy3",
    "read_vega_temps",
    "tmy3_joins",
    "write_series",
]

#: The TMY3 files inside the pvlib wheel (``pvlib/data/``).
TMY3_FILES: tuple[str, ...] = ("703165TY.csv", "723170TYA.CSV")
#: Non-leap reference year of the stitched typical years (TMY3 has 8760 hours, no 29 February).
TMY3_YEAR = 2001
#: Hours set missing on each side of a month join of a TMY3 file (TMY3 smooths 6 hours on each side).
TMY3_JOIN_HOURS = 6

#: The vega_datasets hourly temperature files (``vega_datasets/_data/``): station id -> (file, name, lat, lon).
VEGA_FILES: dict[str, tuple[str, str, float, float]] = {
    "vega-seattle": ("seattle-temps.csv", "SEATTLE WA (vega_datasets, city centre)", 47.61, -122.33),
    "vega-sf": ("sf-temps.csv", "SAN FRANCISCO CA (vega_datasets, city centre)", 37.77, -122.42),
}
_VEGA_UTC_OFFSET_H = -8  # US Pacific standard time
#: variable -> TMY3 column (the units are the schema's: degC, m/s, and mbar = hPa for the station pressure)
_TMY3_COLUMNS = {"temperature": "Dry-bulb (C)", "wind_speed": "Wspd (m/s)", "dew_point": "Dew-point (C)",
                 "pressure": "Pressure (mbar)"}
#: CF attributes of the TMY3 station pressure (not a registry variable: the registry's is sea-level pressure)
_PRESSURE_ATTRS = {"units": "hPa", "standard_name": "surface_air_pressure", "long_name": "station pressure"}


def package_data_path(package: str, *parts: str, extra: str = "bench") -> Path:
    """Path of a data file shipped inside an installed package (found without importing it).

    Raises ImportError naming the optional extra that installs the package, FileNotFoundError naming the file.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the real-data series need the {package!r} package: pip install 'urlk-forecast[{extra}]'")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not in the installed {package!r} package (another version?)")
    return path


# ---------------------------------------------------------------------------------------------------- TMY3
def _tmy3_header(path: Path) -> dict[str, str | float]:
    """The first line of a TMY3 file: USAF id, name, state, time zone, lat, lon, elevation."""
    with open(path, encoding="latin-1") as fh:
        first = fh.readline().strip().split(",")
    if len(first) < 7:
        raise ValueError(f"{path}: first line is not a TMY3 station header: {','.join(first)!r}")
    usaf, name, state, tz, lat, lon, elev = first[:7]
    return {"usaf": usaf.strip(), "name": f"{name.strip().strip(chr(34))} {state.strip()}", "tz": float(tz),
            "lat": float(lat), "lon": float(lon), "elevation": float(elev)}


def tmy3_joins(source_years: np.ndarray) -> np.ndarray:
    """Row positions where the source year changes (the first row of a month taken from another year)."""
    y = np.asarray(source_years)
    return np.flatnonzero(y[1:] != y[:-1]) + 1


def read_tmy3(path: str | os.PathLike[str], *, year: int = TMY3_YEAR, join_hours: int = TMY3_JOIN_HOURS
              ) -> pd.DataFrame:
    """One TMY3 file as a UTC-indexed frame with ``temperature`` (degC), ``wind_speed`` (m/s), ``dew_point`` (degC)
    and ``pressure`` (station pressure, hPa).

    The ``join_hours`` hours on each side of every month join (where the source year changes) are NaN; ``attrs``
    hold the station header and ``joins`` (UTC times of the first hour after each join).
    """
    path = Path(path)
    head = _tmy3_header(path)
    raw = pd.read_csv(path, skiprows=1, usecols=["Date (MM/DD/YYYY)", "Time (HH:MM)", *_TMY3_COLUMNS.values()],
                      dtype={"Date (MM/DD/YYYY)": str, "Time (HH:MM)": str})
    if len(raw) != 8760:
        raise ValueError(f"{path}: a TMY3 file has 8760 hourly rows, found {len(raw)}")
    date = raw["Date (MM/DD/YYYY)"].str.split("/", expand=True).astype(int)  # month, day, source year
    hour = raw["Time (HH:MM)"].str.slice(0, 2).astype(int)  # 1..24, hour ending, local standard time
    local = pd.to_datetime(pd.DataFrame({"year": year, "month": date[0], "day": date[1]})) + pd.to_timedelta(
        hour, unit="h")
    utc = pd.DatetimeIndex(local - pd.Timedelta(hours=head["tz"]))
    if not ((utc[1:] - utc[:-1]) == pd.Timedelta(hours=1)).all():
        raise ValueError(f"{path}: the rows are not consecutive hours")
    values = {v: raw[col].to_numpy(np.float64, copy=True) for v, col in _TMY3_COLUMNS.items()}
    for v in values.values():
        v[v <= -9000] = np.nan  # TMY3's missing code (-9900); the shipped files have none
    joins = tmy3_joins(date[2].to_numpy())
    for j in joins:
        for v in values.values():
            v[max(0, j - join_hours):j + join_hours] = np.nan
    out = pd.DataFrame(values, index=utc)
    out.attrs.update(head, joins=list(utc[joins]), source=str(path))
    return out


def load_tmy3(*, year: int = TMY3_YEAR, join_hours: int = TMY3_JOIN_HOURS) -> xr.Dataset:
    """Both TMY3 stations of the pvlib wheel on one hourly UTC axis (see the module docstring)."""
    frames = [read_tmy3(package_data_path("pvlib", "data", f), year=year, join_hours=join_hours) for f in TMY3_FILES]
    start = min(f.index[0] for f in frames)
    end = max(f.index[-1] for f in frames)
    time = pd.date_range(start, end, freq="h")
    arrays = {v: np.stack([f[v].reindex(time).to_numpy() for f in frames], axis=1) for v in _TMY3_COLUMNS}
    ds = make_dataset(time, [f.attrs["usaf"] for f in frames], [f.attrs["lat"] for f in frames],
                      [f.attrs["lon"] for f in frames], [f.attrs["elevation"] for f in frames],
                      [f.attrs["name"] for f in frames],
                      attrs={"title": "NREL TMY3 typical years shipped with pvlib (Sand Point AK, Greensboro NC)",
                             "source": ", ".join(f"pvlib/data/{f}" for f in TMY3_FILES),
                             "comment": f"typical years stitched from months of different years, placed in {year} "
                                        f"(UTC); {join_hours} h on each side of every month join set missing"},
                      var_attrs={"pressure": _PRESSURE_ATTRS}, **arrays)
    return validate(ds)


# ---------------------------------------------------------------------------------------------------- vega
def read_vega_temps(path: str | os.PathLike[str]) -> pd.Series:
    """One vega_datasets hourly temperature file as a degC series on its published (local clock) times."""
    path = Path(path)
    raw = pd.read_csv(path)
    if not {"date", "temp"} <= set(raw.columns):
        raise ValueError(f"{path}: expected columns 'date' and 'temp', found {list(raw.columns)}")
    t = pd.DatetimeIndex(pd.to_datetime(raw["date"]))
    degc = convert_units(raw["temp"].to_numpy(np.float64), "degF", "temperature")
    s = pd.Series(degc, index=t, name="temperature")
    if s.index.has_duplicates:
        raise ValueError(f"{path}: duplicate time {s.index[s.index.duplicated()][0]}")
    return s.sort_index()


def load_vega() -> xr.Dataset:
    """Seattle and San Francisco hourly temperature 2010 (vega_datasets wheel), degC, hourly UTC axis."""
    series = {sid: read_vega_temps(package_data_path("vega_datasets", "_data", f))
              for sid, (f, *_rest) in VEGA_FILES.items()}
    shift = pd.Timedelta(hours=-_VEGA_UTC_OFFSET_H)
    start = min(s.index[0] for s in series.values()) + shift
    end = max(s.index[-1] for s in series.values()) + shift
    time = pd.date_range(start, end, freq="h")
    temp = np.stack([s.set_axis(s.index + shift).reindex(time).to_numpy() for s in series.values()], axis=1)
    meta = list(VEGA_FILES.values())
    ds = make_dataset(time, list(VEGA_FILES), [m[2] for m in meta], [m[3] for m in meta], None,
                      [m[1] for m in meta],
                      attrs={"title": "Hourly temperature 2010, Seattle and San Francisco (vega_datasets wheel)",
                             "source": ", ".join(f"vega_datasets/_data/{m[0]}" for m in meta),
                             "comment": "degF converted to degC; published US Pacific clock times read as PST "
                                        "(UTC-8); very smooth, behaves like hourly climate normals"},
                      temperature=temp)
    return validate(ds)


# ---------------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class RealSeries:
    """A named real series of the suite: what it is, its variables, the extra installing it, its loader."""

    name: str
    description: str
    variables: tuple[str, ...]
    extra: str
    loader: Callable[[], xr.Dataset]


SERIES: dict[str, RealSeries] = {
    "tmy3": RealSeries("tmy3", "NREL TMY3 typical years, Sand Point AK + Greensboro NC (pvlib wheel); month joins "
                               "+-6 h missing", ("temperature", "wind_speed", "dew_point", "pressure"), "bench",
                       load_tmy3),
    "vega": RealSeries("vega", "Seattle + San Francisco hourly temperature 2010 (vega_datasets wheel); smooth, "
                               "normals-like", ("temperature",), "bench", load_vega),
}


def list_series() -> list[str]:
    """Names accepted by :func:`load_series` and :func:`write_series`."""
    return list(SERIES)


def _get(name: str) -> RealSeries:
    if name not in SERIES:
        raise ValueError(f"unknown real series {name!r}; choose from {', '.join(SERIES)}")
    return SERIES[name]


def load_series(name: str) -> xr.Dataset:
    """The schema dataset of the real series ``name`` (see :data:`SERIES`)."""
    return _get(name).loader()


def default_cache_dir() -> Path:
    """``$URLK_FORECAST_CACHE/real`` if set, else ``$XDG_CACHE_HOME/urlk-forecast/real`` (``~/.cache/...``)."""
    root = os.environ.get("URLK_FORECAST_CACHE")
    if root:
        return Path(root).expanduser() / "real"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "urlk-forecast" / "real"


def write_series(name: str, cache_dir: str | os.PathLike[str] | None = None, *, overwrite: bool = False) -> Path:
    """Write series ``name`` to ``<cache_dir>/<name>.nc`` (atomically) and return the path.

    An existing file is reused unless ``overwrite``; ``cache_dir`` defaults to :func:`default_cache_dir`.
    """
    info = _get(name)
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = path / f"{info.name}.nc"
    if path.is_file() and not overwrite:
        return path
    return write_netcdf(info.loader(), path)
