"""NOAA NCEI Global Summary of the Day (GSOD) CSV files — a daily dataset.

One quoted CSV per station-year (``/data/global-summary-of-the-day/access/{YYYY}/{USAF}{WBAN}.csv``):
``"STATION","DATE","LATITUDE","LONGITUDE","ELEVATION","NAME","TEMP","TEMP_ATTRIBUTES","DEWP",...,
"WDSP","WDSP_ATTRIBUTES",...``. ``TEMP`` is the daily mean temperature in degF (``9999.9`` missing),
``WDSP`` the daily mean wind speed in knots (``999.9`` missing); both are converted to the schema's
degC and m/s. When the file has them, also ``DEWP`` (mean dew point, degF, ``9999.9``) -> ``dew_point``,
``SLP`` (mean sea-level pressure, hPa, ``9999.9``) -> ``sea_level_pressure``, ``MAX``/``MIN`` (degF,
``9999.9``) -> ``temperature_max``/``temperature_min`` and ``PRCP`` (inches, ``99.99``) ->
``precipitation_24h`` in mm. A ``PRCP_ATTRIBUTES`` flag ``I`` (nothing reported that day) or ``H`` (0
reported although precipitation was observed: incomplete) makes that day's amount NaN, never a zero.
``DATE`` is ``YYYY-MM-DD``; the time axis is daily.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..plausibility import apply_bounds, at_lines, resolve_units
from ..schema import make_dataset, validate
from ._common import (
    PathLike,
    ReaderError,
    as_paths,
    check_complete,
    check_unique,
    csv_table,
    decode_text,
    isd_station_id,
    missing_elevation,
    parse_float,
    place_on_grid,
    read_bytes,
    regular_grid,
)

__all__ = ["read_gsod", "parse_gsod", "GSOD_REQUIRED", "NATIVE_UNITS"]

GSOD_REQUIRED = ("STATION", "DATE", "TEMP", "WDSP")
# column -> (schema variable, the format's missing-value code); TEMP and WDSP are mandatory, the others optional
_VALUES = {"TEMP": ("temperature", 9999.9), "WDSP": ("wind_speed", 999.9), "DEWP": ("dew_point", 9999.9),
           "SLP": ("sea_level_pressure", 9999.9), "MAX": ("temperature_max", 9999.9),
           "MIN": ("temperature_min", 9999.9), "PRCP": ("precipitation_24h", 99.99)}
#: PRCP_ATTRIBUTES flags whose amount is not a day's total: I (no report), H (0 reported, precipitation seen)
_PRCP_UNKNOWN = frozenset("HI")
_GSOD_OWN = frozenset({"TEMP", "DEWP", "STP", "VISIB", "WDSP", "MXSPD", "GUST", "MAX", "MIN", "PRCP", "SNDP", "FRSHTT"})
#: the format's units (``units=`` may override them)
NATIVE_UNITS = {"temperature": "degF", "wind_speed": "knots", "dew_point": "degF", "sea_level_pressure": "hPa",
                "temperature_max": "degF", "temperature_min": "degF", "precipitation_24h": "in"}


def _required_columns(cols: dict[str, int], path: PathLike) -> None:
    """TEMP and WDSP must be there: a GSOD file without one (renamed?) is an error naming it, not a gap."""
    missing = [c for c in GSOD_REQUIRED if c not in cols]
    if not missing:
        return
    own = sorted(c for c in cols if c in _GSOD_OWN or c.endswith("_ATTRIBUTES"))
    if len(own) >= 2:
        raise ReaderError(
            path, f"GSOD CSV without its mandatory column(s) {missing} (renamed or removed?); it has {own[:8]}", 1
        )
    shown = ", ".join(list(cols)[:12])[:200]
    raise ReaderError(path, f"not a GSOD (Global Summary of the Day) CSV file: missing column(s) {missing}; "
                      f"header is [{shown}]", 1)


def _row(row: list[str], cols: dict[str, int], path: PathLike, line: int) -> tuple[str, np.datetime64, list, tuple]:
    """(station id, day, raw values of the value columns present, in :data:`_VALUES` order (NaN = missing),
    (lat, lon, elevation, name)) of one row."""
    raw_id = row[cols["STATION"]].strip()
    if not raw_id:
        raise ReaderError(path, "empty station id", line, "STATION")
    date = row[cols["DATE"]].strip()
    try:
        t = np.datetime64(date, "D") if len(date) == 10 else None
    except ValueError:
        t = None
    if t is None:
        raise ReaderError(path, f"{date[:40]!r} is not a date like 2019-01-01", line, "DATE")
    values = []
    for col, (_, sentinel) in _VALUES.items():
        if col not in cols:
            continue
        s = row[cols[col]]
        try:
            v = parse_float(s)
        except ValueError:
            raise ReaderError(path, f"{s.strip()[:40]!r} is not a number", line, col) from None
        if col == "PRCP" and "PRCP_ATTRIBUTES" in cols and row[cols["PRCP_ATTRIBUTES"]].strip() in _PRCP_UNKNOWN:
            v = np.nan
        values.append(np.nan if abs(v - sentinel) < 1e-6 else v)
    coords = []
    for name in ("LATITUDE", "LONGITUDE", "ELEVATION"):
        s = row[cols[name]] if name in cols else ""
        try:
            coords.append(parse_float(s))
        except ValueError:
            raise ReaderError(path, f"{s.strip()[:40]!r} is not a number", line, name) from None
    if abs(coords[0]) > 90 or abs(coords[1]) > 180:
        raise ReaderError(path, f"latitude/longitude {coords[0]}, {coords[1]} out of range", line, "LATITUDE")
    name = row[cols["NAME"]].strip() if "NAME" in cols else ""
    return isd_station_id(raw_id), t, values, (coords[0], coords[1], missing_elevation(coords[2]), name)


def parse_gsod(data: bytes, path: PathLike = "<bytes>", units: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Parse one GSOD CSV into ``{station_id: {"time", "temperature", "wind_speed", [the optional variables of
    the columns present,] "line", "lat", "lon", "elevation", "name"}}`` with values already in degC, m/s, hPa and
    mm (NaN = missing).

    Impossible values become NaN with one warning for the file; a missing final newline (a truncated
    file) raises. ``units`` overrides the format's degF / knots.
    """
    text = decode_text(data, path, "utf-8")
    check_complete(text, path)
    _, cols, rows = csv_table(text, path, GSOD_REQUIRED[:2], "GSOD (Global Summary of the Day)")
    _required_columns(cols, path)
    sids, times, lines, raw = [], [], [], []
    meta: dict[str, tuple] = {}
    for line, row in rows:
        sid, t, values, site = _row(row, cols, path, line)
        sids.append(sid)
        times.append(t)
        lines.append(line)
        raw.append(values)
        meta[sid] = site
    line_arr = np.asarray(lines, np.int64)
    present = {col: var for col, (var, _) in _VALUES.items() if col in cols}
    table = np.asarray(raw, np.float64).reshape(-1, len(present))
    vals = apply_bounds(
        {var: table[:, k] for k, var in enumerate(present.values())},
        path,
        units=resolve_units(units, {v: NATIVE_UNITS[v] for v in present.values()}, path),
        fields={var: col for col, var in present.items()},
        locate=at_lines(line_arr),
    )
    all_t = np.asarray(times, dtype="datetime64[D]").astype("datetime64[ns]")
    codes, ids = pd.factorize(pd.Index(sids))
    out = {}
    for k, sid in enumerate(ids):
        sel = codes == k
        check_unique(all_t[sel], line_arr[sel], path, "date")
        rec = {"time": all_t[sel], "line": line_arr[sel], **{v: a[sel] for v, a in vals.items()}}
        rec.update(zip(("lat", "lon", "elevation", "name"), meta[sid]))
        out[sid] = rec
    return out


def _input_files(paths: PathLike | list[PathLike]) -> list[Path]:
    files: list[Path] = []
    for p in as_paths(paths):
        if p.is_dir():
            found = sorted(p.rglob("*.csv")) + sorted(p.rglob("*.csv.gz"))
            if not found:
                raise ReaderError(p, "no .csv files in this directory")
            files.extend(found)
        else:
            files.append(p)
    return list(dict.fromkeys(files))


def _check_overlap(sid: str, recs: list[dict]) -> None:
    """A station-day in two files is an error naming both files."""
    if len(recs) < 2:
        return
    t = np.concatenate([r["time"] for r in recs])
    if len(np.unique(t)) == len(t):
        return
    seen: dict[np.datetime64, Path] = {}
    for r in recs:
        for tt in r["time"]:
            if tt in seen:
                raise ReaderError(r["file"], f"{sid} {pd.Timestamp(tt).date()} is also in {seen[tt]}")
            seen[tt] = r["file"]


def read_gsod(
    paths: PathLike | list[PathLike],
    *,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    units: Mapping[str, str] | None = None,
) -> xr.Dataset:
    """Read GSOD CSV files (several stations/years; ``.gz`` too) into the daily schema dataset.

    Station ids become ``USAF-WBAN``; days without a record are NaN; ``start``/``end`` widen the axis.
    A station-day present in two files is a :class:`ReaderError` naming both. ``units`` overrides the
    format's degF / knots (``{"temperature": "degC"}`` for a converted copy).
    """
    files = _input_files(paths)
    per: dict[str, list[dict]] = defaultdict(list)
    for f in files:
        for sid, rec in parse_gsod(read_bytes(f), f, units).items():
            rec["file"] = f
            per[sid].append(rec)
    if not per:
        raise ReaderError(files[0], "no records (only a header)")
    ids = sorted(per)
    try:
        grid = regular_grid(
            np.concatenate([r["time"] for rs in per.values() for r in rs]), pd.Timedelta("1D"), start, end
        )
    except ValueError as e:
        raise ReaderError(files[0], str(e)) from None
    variables = [v for v, _ in _VALUES.values() if any(v in r for rs in per.values() for r in rs)]
    arrays = {v: np.full((len(grid), len(ids)), np.nan, np.float32) for v in variables}
    for j, sid in enumerate(ids):
        recs = per[sid]
        _check_overlap(sid, recs)
        for r in recs:
            for var in arrays:
                if var in r:
                    place_on_grid(grid, r["time"], r[var], arrays[var][:, j])
    metas = [max(per[sid], key=lambda r: r["time"].max()) for sid in ids]
    ds = make_dataset(
        grid,
        ids,
        [m["lat"] for m in metas],
        [m["lon"] for m in metas],
        elevation=[m["elevation"] for m in metas],
        name=[m["name"] or sid for m in metas],
        attrs={
            "source": "NOAA NCEI Global Summary of the Day (GSOD), "
            "https://www.ncei.noaa.gov/data/global-summary-of-the-day/access",
            "source_format": "gsod",
            "cell_methods": "time: mean (daily)",
        },
        **arrays,
    )
    return validate(ds)
