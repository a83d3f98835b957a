"""NOAA NCEI ISD-Lite hourly files and the ``isd-history.csv`` station list.

ISD-Lite (one file per station-year, ``{USAF}-{WBAN}-{YYYY}.gz``) is fixed width, 61 columns, twelve
integer fields: year month day hour air_temp dew_point slp wind_dir wind_speed sky_cover precip_1h
precip_6h, all read: ``temperature``, ``dew_point`` (degC), ``sea_level_pressure`` (hPa) and ``wind_speed``
(m/s) are scaled by 10, ``wind_direction`` is in degrees, ``sky_cover`` the total coverage code (0-8 are
oktas; 9 "obscured", 10 "partial obscuration" and the descriptive codes 11-19 are no amount and become
NaN), ``precipitation_1h``/``precipitation_6h`` mm scaled by 10 with -1 meaning a trace (read as 0, noted
in the variable's ``comment``). -9999 is missing. A variable no record of any file reports (often the
precipitation) is left out, except temperature and wind speed. Times are UTC, already rounded to the hour
by NCEI.

Parsing has two paths giving identical results: a vectorised one for the exact fixed-width layout
(the real files; ~1 ms per station-year) and a careful line-by-line one, used whenever the fast path
sees anything unusual, that accepts any whitespace separation and raises a :class:`ReaderError`
naming the line and field of the first problem.
"""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..plausibility import ImplausibleValuesWarning, at_lines, check_bounds, resolve_units
from ..schema import make_dataset, validate
from ..variables import REGISTRY
from ._common import (
    PathLike,
    ReaderError,
    as_paths,
    check_complete,
    check_unique,
    decode_text,
    missing_elevation,
    parse_float,
    read_bytes,
    regular_grid,
)

__all__ = [
    "ISD_LITE_FIELDS",
    "ISD_HISTORY_COLUMNS",
    "parse_isd_lite",
    "read_isd_history",
    "read_isd_lite",
    "isd_lite_files",
    "ISD_LITE_NAME",
    "ISD_LITE_VARIABLES",
]

ISD_LITE_FIELDS = (
    "year",
    "month",
    "day",
    "hour",
    "air_temp",
    "dew_point",
    "slp",
    "wind_dir",
    "wind_speed",
    "sky_cover",
    "precip_1h",
    "precip_6h",
)
_WIDTHS = (4, 3, 3, 3, 6, 6, 6, 6, 6, 6, 6, 6)  # fixed layout, 61 characters a line
_MISSING = -9999
#: plausible physical ranges (from the variable registry); values outside become NaN with a warning
TEMP_RANGE = (REGISTRY["temperature"].valid_min, REGISTRY["temperature"].valid_max)
WIND_RANGE = (REGISTRY["wind_speed"].valid_min, REGISTRY["wind_speed"].valid_max)
#: variable -> (column, scale divisor) of every value field (registry names, canonical units after the scale)
ISD_LITE_VARIABLES: dict[str, tuple[int, int]] = {
    "temperature": (4, 10), "dew_point": (5, 10), "sea_level_pressure": (6, 10), "wind_direction": (7, 1),
    "wind_speed": (8, 10), "sky_cover": (9, 1), "precipitation_1h": (10, 10), "precipitation_6h": (11, 10),
}
#: the file's own units (after the x10 scale); ``units=`` may override them
NATIVE_UNITS = {v: REGISTRY[v].units for v in ISD_LITE_VARIABLES}
_FIELDS = {v: ISD_LITE_FIELDS[col] for v, (col, _) in ISD_LITE_VARIABLES.items()}
_ALWAYS = ("temperature", "wind_speed")  # kept even when no record reports them
_TRACE = -1  # precipitation: a trace amount
_COMMENTS = {
    "precipitation_1h": "ISD-Lite trace amounts (-1 in the file) are read as 0",
    "precipitation_6h": "ISD-Lite trace amounts (-1 in the file) are read as 0",
    "sky_cover": "ISD-Lite total coverage codes 0-8 (oktas); codes 9-19 (obscured, partial, descriptive) are NaN",
}

ISD_HISTORY_COLUMNS = ("USAF", "WBAN", "STATION NAME", "CTRY", "STATE", "ICAO", "LAT", "LON", "ELEV(M)", "BEGIN", "END")
_HISTORY_REQUIRED = ("USAF", "WBAN", "LAT", "LON")

#: ``USAF-WBAN-YYYY`` with optional ``.gz`` (the year part is optional too, for hand-made files)
ISD_LITE_NAME = re.compile(r"^(?P<usaf>[0-9A-Z]{6})-(?P<wban>\d{5})(?:-(?P<year>\d{4}))?(?:\.gz)?$")
_INT = re.compile(r"^-?\d{1,9}$")
_YYYYMMDD = re.compile(r"^\d{8}$")


# ----------------------------------------------------------------------------------------------- parsing
def _fast_parse(data: bytes) -> np.ndarray | None:
    """(n, 12) int64 records when ``data`` is exactly the fixed-width layout, else None (numba, ~0.2 ms/year)."""
    from ._isd_kernel import parse_fixed

    if not data:
        return None
    if not data.endswith(b"\n"):
        data += b"\n"
    width = sum(_WIDTHS) + 1
    n = len(data) // width
    if n * width != len(data):
        return None
    out = np.empty((n, len(_WIDTHS)), np.int64)
    bad = parse_fixed(np.frombuffer(data, np.uint8), np.asarray(_WIDTHS, np.int64), out)
    return out if bad < 0 else None


def _slow_parse(data: bytes, path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Line-by-line parse with exact error positions; returns (records (n, 12), 1-based line numbers)."""
    text = decode_text(data, path, "ascii")
    rows: list[list[int]] = []
    lines: list[int] = []
    for i, raw in enumerate(text.split("\n"), 1):
        tokens = raw.split()
        if not tokens:
            continue
        if len(tokens) != len(ISD_LITE_FIELDS):
            raise ReaderError(
                path,
                f"expected {len(ISD_LITE_FIELDS)} whitespace-separated integer fields "
                f"({' '.join(ISD_LITE_FIELDS)}), found {len(tokens)}: {raw.strip()[:80]!r}"
                + (" (truncated file?)" if i >= text.count("\n") else ""),
                i,
            )
        row = []
        for name, tok in zip(ISD_LITE_FIELDS, tokens):
            if not _INT.match(tok):
                raise ReaderError(path, f"{tok[:40]!r} is not an integer", i, name)
            row.append(int(tok))
        rows.append(row)
        lines.append(i)
    return np.asarray(rows, np.int64).reshape(-1, len(ISD_LITE_FIELDS)), np.asarray(lines, np.int64)


def _times(rec: np.ndarray, lines: np.ndarray, path: PathLike) -> np.ndarray:
    """datetime64[ns] of the records; raises naming the first line with an impossible date."""
    y, m, d, h = rec[:, 0], rec[:, 1], rec[:, 2], rec[:, 3]
    checks = (
        ("year", (y >= 1800) & (y <= 2200), "a year in 1800..2200"),
        ("month", (m >= 1) & (m <= 12), "1..12"),
        ("hour", (h >= 0) & (h <= 23), "0..23"),
    )
    for name, ok, want in checks:
        if not np.all(ok):
            i = int(np.argmax(~ok))
            raise ReaderError(path, f"{int(rec[i, ISD_LITE_FIELDS.index(name)])} is not {want}", int(lines[i]), name)
    month = ((y - 1970) * 12 + (m - 1)).astype("datetime64[M]")
    day = month.astype("datetime64[D]") + (d - 1).astype("timedelta64[D]")
    ok = (d >= 1) & (day.astype("datetime64[M]") == month)
    if not np.all(ok):
        i = int(np.argmax(~ok))
        raise ReaderError(path, f"day {int(d[i])} does not exist in {int(y[i])}-{int(m[i]):02d}", int(lines[i]), "day")
    return (day.astype("datetime64[ns]") + h.astype("timedelta64[h]")).astype("datetime64[ns]")


def _check_year(t: np.ndarray, lines: np.ndarray, path: PathLike) -> None:
    """Records must lie in the year of the file name (``USAF-WBAN-YYYY``); its last report may round up to
    the first hour of the next year. Anything else is another year's data in the wrong file."""
    m = ISD_LITE_NAME.match(Path(str(path)).name)
    if not m or not m["year"]:
        return
    year = int(m["year"])
    lo = np.datetime64(f"{year:04d}-01-01T00", "ns")
    hi = np.datetime64(f"{year + 1:04d}-01-01T00", "ns")
    bad = (t < lo) | (t > hi)
    if bad.any():
        i = int(np.argmax(bad))
        raise ReaderError(
            path,
            f"record for {pd.Timestamp(t[i])} is not in {year}, the year in the file name "
            f"({int(bad.sum())} such record(s)); each file USAF-WBAN-YYYY holds one year",
            int(lines[i]),
            "year",
        )


def _parse(
    data: bytes, path: PathLike, units: Mapping[str, str] | None = None
) -> tuple[dict[str, np.ndarray], str | None]:
    """:func:`parse_isd_lite` without warning: (records, the plausibility warning text or None)."""
    rec = _fast_parse(data)
    if rec is not None:
        lines = np.arange(1, len(rec) + 1, dtype=np.int64)
    else:
        rec, lines = _slow_parse(data, path)
    if len(rec) == 0:
        raise ReaderError(path, "no ISD-Lite records (empty file)")
    check_complete(data, path)
    t = _times(rec, lines, path)
    _check_year(t, lines, path)
    check_unique(t, lines, path, "hour")
    raw = {}
    for var, (col, scale) in ISD_LITE_VARIABLES.items():
        field = rec[:, col]
        if var.startswith("precipitation"):
            field = np.where(field == _TRACE, 0, field)
        vals = np.where(field == _MISSING, np.nan, field / float(scale))
        if var == "sky_cover":
            vals = np.where(vals > 8, np.nan, vals)  # not an amount (obscured, partial, descriptive codes)
        raw[var] = vals
    vals, message = check_bounds(
        raw, path, units=resolve_units(units, NATIVE_UNITS, path), fields=_FIELDS, locate=at_lines(lines)
    )
    return {"time": t, **vals, "line": lines}, message


def parse_isd_lite(
    data: bytes, path: PathLike = "<bytes>", units: Mapping[str, str] | None = None
) -> dict[str, np.ndarray]:
    """Parse the (uncompressed) bytes of one ISD-Lite file.

    Returns ``time`` (datetime64[ns]), every variable of :data:`ISD_LITE_VARIABLES` (``temperature``,
    ``dew_point`` in degC, ``sea_level_pressure`` in hPa, ``wind_speed`` in m/s, ...; see the module doc) as
    float32 with NaN for missing, and ``line`` (1-based line numbers). Duplicate hours, records outside the
    year in the file name and a missing final newline (a truncated file) raise; impossible values
    become NaN with one :class:`~urlk_forecast.data.plausibility.ImplausibleValuesWarning`.
    ``units`` overrides the file's units (after the x10 scale), e.g. ``{"temperature": "degF"}``.
    """
    out, message = _parse(data, path, units)
    if message:
        warnings.warn(message, ImplausibleValuesWarning, stacklevel=2)
    return out


# ---------------------------------------------------------------------------------------- station list
def _history_row(row: list[str], col: dict[str, int], path: PathLike, line: int) -> tuple[str, tuple]:
    """(``USAF-WBAN`` id, the frame row) of one isd-history.csv row; raises naming the bad field."""

    def get(name: str) -> str:
        return row[col[name]].strip() if name in col else ""

    usaf, wban = get("USAF"), get("WBAN")
    if not re.fullmatch(r"[0-9A-Z]{6}", usaf):
        raise ReaderError(path, f"USAF {usaf!r} is not a 6-character station number", line, "USAF")
    if not re.fullmatch(r"\d{5}", wban):
        raise ReaderError(path, f"WBAN {wban!r} is not a 5-digit number", line, "WBAN")
    vals = {}
    for name, lim in (("LAT", 90.0), ("LON", 180.0), ("ELEV(M)", None)):
        try:
            v = parse_float(get(name))
        except ValueError:
            raise ReaderError(path, f"{get(name)!r} is not a number", line, name) from None
        if lim is not None and abs(v) > lim:
            raise ReaderError(path, f"{v} is outside [-{lim}, {lim}]", line, name)
        vals[name] = v
    dates = []
    for name in ("BEGIN", "END"):
        s = get(name)
        if s and not _YYYYMMDD.match(s):
            raise ReaderError(path, f"{s!r} is not a YYYYMMDD date", line, name)
        dates.append(s)
    rec = (
        get("STATION NAME"), get("CTRY"), get("STATE"), get("ICAO"), vals["LAT"], vals["LON"],
        missing_elevation(vals["ELEV(M)"]), dates[0], dates[1], line,
    )
    return f"{usaf}-{wban}", rec


def read_isd_history(path: PathLike) -> pd.DataFrame:
    """Read NCEI's ``isd-history.csv`` station list.

    Returns a DataFrame indexed by ``USAF-WBAN`` id with columns name, ctry, state, icao, lat, lon,
    elevation (NaN when blank or -999.9-like), begin, end (Timestamps, NaT when blank) and line (the
    1-based line in the file). Blank LAT/LON stay NaN here; :func:`read_isd_lite` decides what a
    missing coordinate means. The first entry wins when an id is listed twice.
    """
    text = decode_text(read_bytes(path), path, "latin-1")
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ReaderError(path, "empty file; expected the isd-history.csv header", 1) from None
    except csv.Error as e:
        raise ReaderError(path, f"not a CSV file ({e})", 1) from None
    missing = [c for c in _HISTORY_REQUIRED if c not in header]
    if missing:
        raise ReaderError(
            path, f"not an isd-history.csv station list: missing column(s) {missing}; header is {header[:12]}", 1
        )
    col = {c: header.index(c) for c in ISD_HISTORY_COLUMNS if c in header}
    recs: dict[str, tuple] = {}
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not f.strip() for f in row):
                continue
            if len(row) != len(header):
                raise ReaderError(path, f"expected {len(header)} fields, found {len(row)}", line)

            sid, rec = _history_row(row, col, path, line)
            recs.setdefault(sid, rec)
    except csv.Error as e:
        raise ReaderError(path, f"malformed CSV ({e})", reader.line_num) from None
    cols = ["name", "ctry", "state", "icao", "lat", "lon", "elevation", "begin", "end", "line"]
    df = pd.DataFrame.from_dict(recs, orient="index", columns=cols)
    df.index.name = "station"
    for c in ("begin", "end"):  # vectorised; an impossible date (e.g. 20190230) is named by its line
        raw = df[c].astype(str)
        conv = pd.to_datetime(raw.where(raw != "", None), format="%Y%m%d", errors="coerce")
        bad = conv.isna() & (raw != "")
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise ReaderError(path, f"{raw.iloc[i]!r} is not a valid date", int(df["line"].iloc[i]), c.upper())
        df[c] = conv
    return df


# ---------------------------------------------------------------------------------------------- reader
def isd_lite_files(directory: PathLike) -> list[Path]:
    """ISD-Lite files (``USAF-WBAN-YYYY[.gz]``) in a directory tree, sorted."""
    d = Path(directory)
    return sorted(p for p in d.rglob("*") if p.is_file() and ISD_LITE_NAME.match(p.name))


def _station_of(path: Path) -> tuple[str, int | None]:
    m = ISD_LITE_NAME.match(path.name)
    if not m:
        raise ReaderError(path, "cannot tell the station: ISD-Lite files are named USAF-WBAN-YYYY[.gz]")
    return f"{m['usaf']}-{m['wban']}", (int(m["year"]) if m["year"] else None)


def _input_files(paths: PathLike | list[PathLike]) -> list[Path]:
    """The ISD-Lite files to read: given files, and the ``USAF-WBAN-YYYY[.gz]`` files of given directories.

    Other data files in a directory (CSV, netCDF, ...) are not ISD-Lite; they are named in a warning
    rather than skipped without a word (``isd-history.csv`` is the station list and expected there).
    """
    files: list[Path] = []
    for p in as_paths(paths):
        if not p.is_dir():
            files.append(p)
            continue
        found = isd_lite_files(p)
        if not found:
            raise ReaderError(p, "no ISD-Lite files (USAF-WBAN-YYYY[.gz]) in this directory")
        known = set(found)
        others = sorted(
            str(f.relative_to(p))
            for f in p.rglob("*")
            if f.is_file() and not f.name.startswith(".") and f not in known and f.name != "isd-history.csv"
        )
        if others:
            warnings.warn(
                f"{p}: {len(others)} file(s) that are not ISD-Lite (USAF-WBAN-YYYY[.gz]) are not read: "
                f"{others[:5]}{' ...' if len(others) > 5 else ''}",
                stacklevel=3,
            )
        files.extend(found)
    return list(dict.fromkeys(files))  # the same file named twice is read once


def _station_list(history: PathLike | pd.DataFrame | bool | None, files: list[Path]) -> tuple[pd.DataFrame | None, str]:
    """(the isd-history frame or None, where it came from) for ``history`` as :func:`read_isd_lite` documents."""
    hist_path: PathLike | None = None
    if history is None:
        cands = [f.parent / "isd-history.csv" for f in files] + [f.parent.parent / "isd-history.csv" for f in files]
        hist_path = next((c for c in dict.fromkeys(cands) if c.is_file()), None)
    elif history is not False and not isinstance(history, pd.DataFrame):
        hist_path = history  # type: ignore[assignment]
    if isinstance(history, pd.DataFrame):
        return history, "<isd-history frame>"
    meta = read_isd_history(hist_path) if hist_path is not None else None
    if meta is None and history is None:
        warnings.warn(
            "no isd-history.csv given or found beside the data: station lat/lon/elevation are unknown (NaN)",
            stacklevel=3,
        )
    return meta, str(hist_path)


def _coordinates(
    ids: list[str], meta: pd.DataFrame | None, hist_path: str, missing_coords: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], np.ndarray]:
    """lat, lon, elevation, names and the keep mask of ``ids`` from the station list."""
    lat, lon, elev = (np.full(len(ids), np.nan) for _ in range(3))
    names = list(ids)
    keep = np.ones(len(ids), bool)
    if meta is None:
        return lat, lon, elev, names, keep
    for k, sid in enumerate(ids):
        if sid in meta.index:
            r = meta.loc[sid]
            lat[k], lon[k], elev[k] = r["lat"], r["lon"], r["elevation"]
            names[k] = str(r["name"]) or sid
            problem = None if np.isfinite(lat[k]) and np.isfinite(lon[k]) else "has a blank LAT/LON"
            where = f"{hist_path}, line {int(r['line'])}" if "line" in r else hist_path
        else:
            problem, where = "is not listed", hist_path
        if problem and missing_coords == "raise":
            raise ReaderError(
                None,
                f"{where}: station {sid} {problem}; pass missing_coords='nan' to keep it without "
                "coordinates or 'drop' to skip it",
            )
        if problem and missing_coords == "drop":
            keep[k] = False
    return lat, lon, elev, names, keep


def _station_series(
    files: list[tuple[Path, int | None]], units: Mapping[str, str] | None
) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """(hours since 1970, values per variable, plausibility warnings) of one station's files.

    Runs in worker threads, so warnings are returned for the caller to emit. An hour present in two
    files (the year boundary) comes from the file of that hour's year.
    """
    parts, messages = [], []
    for f, year in files:
        rec, message = _parse(read_bytes(f), f, units)
        if message:
            messages.append(message)
        own = (
            np.ones(len(rec["time"]), bool)
            if year is None
            else rec["time"].astype("datetime64[Y]").astype(np.int64) + 1970 == year
        )
        parts.append((rec, own))
    t = np.concatenate([r["time"] for r, _ in parts])
    pref = np.concatenate([o for _, o in parts])
    order = np.lexsort((~pref, t))
    ts = t[order]
    first = np.ones(len(ts), bool)
    first[1:] = ts[1:] != ts[:-1]
    sel = order[first]
    hours = (t[sel].astype("datetime64[h]").astype(np.int64)).astype(np.int32)  # compact: 12 B per record
    values = {v: np.concatenate([r[v] for r, _ in parts])[sel] for v in ISD_LITE_VARIABLES}
    return hours, values, messages


def read_isd_lite(
    paths: PathLike | list[PathLike],
    history: PathLike | pd.DataFrame | bool | None = None,
    *,
    missing_coords: str = "raise",
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    units: Mapping[str, str] | None = None,
) -> xr.Dataset:
    """Read ISD-Lite files (``.gz`` or plain; several years and stations) into the schema.

    ``paths``: files, or a directory searched recursively for ``USAF-WBAN-YYYY[.gz]`` files.
    ``history``: ``isd-history.csv`` (path or the frame from :func:`read_isd_history`) giving
    lat/lon/elevation/name; ``None`` looks for ``isd-history.csv`` beside the data and, if there is
    none, keeps NaN coordinates with a warning; ``False`` uses no station list at all.
    ``missing_coords``: what to do with a station whose LAT/LON is blank or that the list lacks —
    ``"raise"`` (a :class:`ReaderError` naming it), ``"nan"`` (keep it, NaN coordinates) or ``"drop"``.
    ``start``/``end`` widen the hourly axis (e.g. to whole years); hours without a record are NaN.
    Records of one hour found in two files (year boundary) come from the file of that year; a record
    of any other year is an error naming its file and line. ``units`` overrides the format's units.
    """
    if missing_coords not in ("raise", "nan", "drop"):
        raise ValueError(f"missing_coords must be 'raise', 'nan' or 'drop', got {missing_coords!r}")
    files = _input_files(paths)
    meta, hist_path = _station_list(history, files)
    by_station: dict[str, list[tuple[Path, int | None]]] = defaultdict(list)
    for f in files:
        sid, year = _station_of(f)
        other = next((g for g, y in by_station[sid] if y == year), None)
        if other is not None:
            raise ReaderError(f, f"station-year {sid} {year or ''} is also in {other}; pass each station-year once")
        by_station[sid].append((f, year))
    ids = sorted(by_station)
    lat, lon, elev, names, keep = _coordinates(ids, meta, hist_path, missing_coords)
    kept = [sid for k, sid in enumerate(ids) if keep[k]]
    if not kept:
        raise ReaderError(None, "no station left to read (all dropped for missing coordinates)")
    # gunzip and the numba parser release the GIL: threads overlap them on several cores
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1, len(kept)))) as pool:
        series = dict(zip(kept, pool.map(lambda sid: _station_series(by_station[sid], units), kept)))
    for sid in kept:  # warnings from the main thread, in station order
        for message in series[sid][2]:
            warnings.warn(message, ImplausibleValuesWarning, stacklevel=2)
    lo = min(int(h[0]) for h, *_ in series.values() if len(h))
    hi = max(int(h[-1]) for h, *_ in series.values() if len(h))
    grid = regular_grid(np.array([lo, hi], "datetime64[h]").astype("datetime64[ns]"), pd.Timedelta("1h"), start, end)
    g0 = int(grid[0].value // 3_600_000_000_000)
    reported = [v for v in ISD_LITE_VARIABLES
                if v in _ALWAYS or any(np.isfinite(s[1][v]).any() for s in series.values())]
    data = {v: np.full((len(grid), len(kept)), np.nan, np.float32) for v in reported}
    for j, sid in enumerate(kept):
        h, values, _ = series.pop(sid)
        for v in reported:
            data[v][h - g0, j] = values[v]
    ds = make_dataset(
        grid,
        kept,
        lat[keep],
        lon[keep],
        elevation=elev[keep],
        name=[n for k, n in enumerate(names) if keep[k]],
        attrs={
            "source": "NOAA NCEI Integrated Surface Database Lite (ISD-Lite), https://www.ncei.noaa.gov/pub/data/noaa/isd-lite",
            "source_format": "isd-lite",
        },
        var_attrs={v: {"comment": c} for v, c in _COMMENTS.items() if v in data},
        **data,
    )
    return validate(ds)
