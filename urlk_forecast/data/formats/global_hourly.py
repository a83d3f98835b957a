"""NOAA NCEI Global Hourly (ISD "CSV access") files.

One quoted CSV per station-year (``/data/global-hourly/access/{YYYY}/{USAF}{WBAN}.csv``) with the
mandatory-data columns ``"STATION","DATE","SOURCE","LATITUDE","LONGITUDE","ELEVATION","NAME",
"REPORT_TYPE","CALL_SIGN","QUALITY_CONTROL","WND","CIG","VIS","TMP","DEW","SLP",...``.

* ``TMP`` ``"+0056,1"``: degC x 10 and a quality code; ``+9999`` is missing.
* ``WND`` ``"160,1,N,0046,1"``: direction, its quality code, type code, speed m/s x 10, speed quality
  code; speed ``9999`` is missing; type ``C`` (calm) with speed ``0000`` is a real zero.
* ``DEW`` ``"-0033,1"`` (dew point, as TMP) and ``SLP`` ``"10132,1"`` (sea-level pressure, hPa x 10;
  ``99999`` is missing) are read when the file has those columns (``dew_point``, ``sea_level_pressure``).
* Quality codes 3 and 7 (erroneous) drop the value. Daily/monthly summary records (``SOD``/``SOM``
  report types) are not observations and are skipped.

Reports come at any minute (METAR at :51, SPECI in between, SYNOP on the hour). They are snapped to
the hourly grid per variable: an hour takes the valid report closest to its top (within +-30 min;
a tie goes to the earlier report), so a report at 00:51 counts for 01:00 unless one nearer to 01:00
(e.g. 01:05) has a valid value; 01:20 loses to 00:51.
"""

from __future__ import annotations

import re
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
    csv_table,
    decode_text,
    isd_station_id,
    missing_elevation,
    parse_float,
    place_on_grid,
    read_bytes,
    regular_grid,
)

__all__ = ["read_global_hourly", "parse_global_hourly", "snap_to_hour", "GLOBAL_HOURLY_REQUIRED", "NATIVE_UNITS"]

GLOBAL_HOURLY_REQUIRED = ("STATION", "DATE")  # TMP and WND too; checked apart for a clearer message
#: the format's units after the x10 scale (``units=`` may override them)
NATIVE_UNITS = {"temperature": "degC", "wind_speed": "m s-1", "dew_point": "degC", "sea_level_pressure": "hPa"}
_VARS = ("temperature", "wind_speed", "dew_point", "sea_level_pressure")
#: optional columns -> the variable read from them
_OPTIONAL = {"DEW": "dew_point", "SLP": "sea_level_pressure"}
_FIELDS = {"temperature": "TMP", "wind_speed": "WND", "dew_point": "DEW", "sea_level_pressure": "SLP"}
_TMP = re.compile(r"^([+-]\d{4}),([0-9A-Z])$")
_SLP = re.compile(r"^(\d{5}),([0-9A-Z])$")
_WND = re.compile(r"^(\d{3}),([0-9A-Z]),([0-9A-Z]),(\d{4}),([0-9A-Z])$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?$")
_ERRONEOUS = frozenset("37")
_SUMMARY_TYPES = frozenset({"SOD", "SOM"})
_HOUR = np.int64(3_600_000_000_000)


def _station_and_meta(key: tuple, path: PathLike, line: int, meta: dict) -> str:
    """Station id from the raw STATION field; records lat/lon/elevation/name (latest wins) in ``meta``."""
    raw_id, *fields = key
    if not raw_id.strip():
        raise ReaderError(path, "empty station id", line, "STATION")
    sid = isd_station_id(raw_id)
    coords = []
    for name, s in zip(("LATITUDE", "LONGITUDE", "ELEVATION"), fields[:3]):
        try:
            coords.append(parse_float(s))
        except ValueError:
            raise ReaderError(path, f"{s.strip()[:40]!r} is not a number", line, name) from None
    if abs(coords[0]) > 90 or abs(coords[1]) > 180:
        raise ReaderError(path, f"latitude/longitude {coords[0]}, {coords[1]} out of range", line, "LATITUDE")
    meta[sid] = (coords[0], coords[1], missing_elevation(coords[2]), fields[3].strip())
    return sid


def _temperature(tmp: str, path: PathLike, line: int, field: str = "TMP") -> float:
    """degC of a ``TMP`` (or ``DEW``) field like ``+0056,1``; NaN when blank, ``+9999`` (missing) or QC-erroneous."""
    if not tmp:
        return float("nan")
    m = _TMP.match(tmp)
    if not m:
        raise ReaderError(path, f"{tmp[:40]!r} is not like '+0056,1' (degC x 10, quality code)", line, field)
    v = int(m.group(1))
    if v in (9999, -9999) or m.group(2) in _ERRONEOUS:
        return float("nan")
    return v / 10.0


def _wind(wnd: str, path: PathLike, line: int) -> float:
    """m/s of a ``WND`` field like ``160,1,N,0046,1``; NaN when blank, ``9999`` (missing) or QC-erroneous."""
    if not wnd:
        return float("nan")
    m = _WND.match(wnd)
    if not m:
        raise ReaderError(
            path, f"{wnd[:40]!r} is not like '160,1,N,0046,1' (dir, qc, type, m/s x 10, qc)", line, "WND"
        )
    v = int(m.group(4))
    if v == 9999 or m.group(5) in _ERRONEOUS:
        return float("nan")
    return v / 10.0


def _pressure(slp: str, path: PathLike, line: int) -> float:
    """hPa of an ``SLP`` field like ``10132,1``; NaN when blank, ``99999`` (missing) or QC-erroneous."""
    if not slp:
        return float("nan")
    m = _SLP.match(slp)
    if not m:
        raise ReaderError(path, f"{slp[:40]!r} is not like '10132,1' (hPa x 10, quality code)", line, "SLP")
    v = int(m.group(1))
    if v == 99999 or m.group(2) in _ERRONEOUS:
        return float("nan")
    return v / 10.0


def _required_columns(cols: dict[str, int], path: PathLike) -> None:
    """TMP and WND are mandatory in NCEI's files: one absent (renamed?) is an error, never a silent gap."""
    missing = [c for c in ("TMP", "WND") if c not in cols]
    if len(missing) == 2:
        raise ReaderError(path, "not a Global Hourly CSV file: it has neither a TMP nor a WND column", 1)
    if missing:
        raise ReaderError(
            path, f"Global Hourly CSV without its mandatory {missing[0]} column (renamed or removed?); "
            f"header is [{', '.join(list(cols)[:20])}]", 1
        )


def parse_global_hourly(
    data: bytes, path: PathLike = "<bytes>", units: Mapping[str, str] | None = None
) -> dict[str, dict]:
    """Parse one Global Hourly CSV (uncompressed bytes) into raw, un-snapped reports per station.

    Returns ``{station_id: {"time", "temperature", "wind_speed"[, "dew_point", "sea_level_pressure"], "line",
    "lat", "lon", "elevation", "name", "variables"}}`` (dew point and pressure when the file has DEW / SLP);
    times are datetime64[ns] of the reports, values float32 (NaN = missing/erroneous or impossible, with one
    warning for the file). Coordinates are those of the station's last report (stations move; the latest site
    wins). A missing TMP or WND column or final newline raises.
    """
    text = decode_text(data, path, "utf-8")
    check_complete(text, path)
    header, cols, rows = csv_table(text, path, GLOBAL_HOURLY_REQUIRED, "Global Hourly (ISD CSV)")
    _required_columns(cols, path)
    acc: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    meta: dict[str, tuple[float, float, float, str]] = {}
    i_type, i_tmp, i_wnd = cols.get("REPORT_TYPE"), cols["TMP"], cols["WND"]
    i_dew, i_slp = cols.get("DEW"), cols.get("SLP")
    variables = ("temperature", "wind_speed", *(v for c, v in _OPTIONAL.items() if c in cols))
    i_station, i_date = cols["STATION"], cols["DATE"]
    i_meta = [cols.get(c) for c in ("LATITUDE", "LONGITUDE", "ELEVATION", "NAME")]
    prev_key: tuple | None = None
    add = None
    for line, row in rows:
        if i_type is not None and row[i_type].strip() in _SUMMARY_TYPES:
            continue
        # station and site fields repeat on every row: parse them only when they change
        key = (row[i_station], *(row[i] if i is not None else "" for i in i_meta))
        if key != prev_key:
            a = acc[_station_and_meta(key, path, line, meta)]
            add = tuple(a[k].append for k in ("date", "line", *variables))
            prev_key = key
        date = row[i_date].strip()
        if not _DATE.match(date):
            raise ReaderError(path, f"{date[:40]!r} is not a time like 2019-01-01T00:51:00", line, "DATE")
        assert add is not None
        add[0](date)
        add[1](line)
        add[2](_temperature(row[i_tmp].strip(), path, line))
        add[3](_wind(row[i_wnd].strip(), path, line))
        if i_dew is not None:
            add[4](_temperature(row[i_dew].strip(), path, line, "DEW"))
        if i_slp is not None:
            add[-1](_pressure(row[i_slp].strip(), path, line))
    return _finish(acc, meta, path, units, variables)


def _finish(acc: dict[str, dict[str, list]], meta: dict, path: PathLike, units: Mapping[str, str] | None,
            variables: tuple[str, ...]) -> dict:
    """Per-station records of :func:`parse_global_hourly`; the plausibility check runs once over the file."""
    sids = list(acc)
    lines = np.concatenate([np.asarray(acc[s]["line"], np.int64) for s in sids]) if sids else np.zeros(0, np.int64)
    vals = apply_bounds(
        {v: np.concatenate([np.asarray(acc[s][v], np.float64) for s in sids]) if sids else np.zeros(0)
         for v in variables},
        path,
        units=resolve_units(units, {v: NATIVE_UNITS[v] for v in variables}, path),
        fields={v: _FIELDS[v] for v in variables},
        locate=at_lines(lines),
        stacklevel=4,
    )
    out, start = {}, 0
    for sid in sids:
        a = acc[sid]
        n = len(a["line"])
        try:
            t = np.asarray(a["date"], dtype="datetime64[s]").astype("datetime64[ns]")
        except ValueError:
            for d, ln in zip(a["date"], a["line"]):
                try:
                    np.datetime64(d, "s")
                except ValueError:
                    raise ReaderError(path, f"{d!r} is not a valid date/time", int(ln), "DATE") from None
            raise
        lat, lon, elev, name = meta[sid]
        out[sid] = {
            "time": t,
            **{v: vals[v][start : start + n] for v in variables},
            "line": lines[start : start + n],
            "lat": lat,
            "lon": lon,
            "elevation": elev,
            "name": name,
            "variables": variables,
        }
        start += n
    return out


def snap_to_hour(times: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hourly (times, values) from sub-hourly reports: per hour the valid report nearest its top.

    A report at ``t`` can only count for the hour nearest to it (``floor((t + 30 min) / 1 h)``);
    among the valid (non-NaN) reports of an hour the one with the smallest ``|t - hour|`` wins and a
    tie goes to the earlier report.
    """
    t = np.asarray(times, dtype="datetime64[ns]").astype(np.int64)
    v = np.asarray(values)
    ok = ~np.isnan(v)
    t, v = t[ok], v[ok]
    hour = (t + _HOUR // 2) // _HOUR
    dist = np.abs(t - hour * _HOUR)
    order = np.lexsort((t, dist, hour))
    h = hour[order]
    first = np.ones(len(h), bool)
    first[1:] = h[1:] != h[:-1]
    sel = order[first]
    return (hour[sel] * _HOUR).astype("datetime64[ns]"), v[sel]


def read_global_hourly(
    paths: PathLike | list[PathLike],
    *,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    units: Mapping[str, str] | None = None,
) -> xr.Dataset:
    """Read Global Hourly CSV files (one or many stations/years; ``.gz`` works too) into the schema.

    Station ids become ``USAF-WBAN`` (``72509014739`` -> ``725090-14739``) to match ISD-Lite. Reports
    are snapped to the hour (see :func:`snap_to_hour`); ``start``/``end`` widen the hourly axis;
    ``units`` overrides the format's units (after the x10 scale).
    """
    files: list[Path] = []
    for p in as_paths(paths):
        if p.is_dir():
            found = sorted(p.rglob("*.csv")) + sorted(p.rglob("*.csv.gz"))
            if not found:
                raise ReaderError(p, "no .csv files in this directory")
            files.extend(found)
        else:
            files.append(p)
    reports: dict[str, list[dict]] = defaultdict(list)
    for f in dict.fromkeys(files):
        for sid, rec in parse_global_hourly(read_bytes(f), f, units).items():
            rec["file"] = f
            reports[sid].append(rec)
    if not reports:
        raise ReaderError(files[0], "no observations (only a header, or only daily/monthly summary records)")
    ids = sorted(reports)
    present = {v for rs in reports.values() for r in rs for v in r["variables"]}
    variables = [v for v in _VARS if v in present]
    snapped = {}
    for sid in ids:
        recs = reports[sid]
        t = np.concatenate([r["time"] for r in recs])
        snapped[sid] = {var: snap_to_hour(np.concatenate([r["time"] for r in recs if var in r]),
                                          np.concatenate([r[var] for r in recs if var in r]))
                        for var in variables if any(var in r for r in recs)}
    # the axis spans every report's hour, also those whose values are all missing
    raw = np.concatenate([r["time"] for rs in reports.values() for r in rs]).astype(np.int64)
    hours = ((raw + _HOUR // 2) // _HOUR * _HOUR).astype("datetime64[ns]")
    try:
        grid = regular_grid(hours, pd.Timedelta("1h"), start, end)
    except ValueError as e:
        raise ReaderError(files[0], str(e)) from None
    arrays = {v: np.full((len(grid), len(ids)), np.nan, np.float32) for v in variables}
    for j, sid in enumerate(ids):
        for var, (t, vals) in snapped[sid].items():
            place_on_grid(grid, t, vals, arrays[var][:, j])
    last = {sid: max(reports[sid], key=lambda r: r["time"].max())["file"] for sid in ids}
    metas = [next(r for r in reports[sid] if r["file"] == last[sid]) for sid in ids]
    ds = make_dataset(
        grid,
        ids,
        [m["lat"] for m in metas],
        [m["lon"] for m in metas],
        elevation=[m["elevation"] for m in metas],
        name=[m["name"] or sid for m in metas],
        attrs={
            "source": "NOAA NCEI Global Hourly (Integrated Surface Database, CSV access), "
            "https://www.ncei.noaa.gov/data/global-hourly/access",
            "source_format": "global-hourly",
            "snapping": "per variable, the valid report nearest the top of the hour within +-30 min",
        },
        **arrays,
    )
    return validate(ds)
