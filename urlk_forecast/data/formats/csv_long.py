"""CSV "long" format: one row per station and time, one column per variable.

``station,time,temperature,wind_speed[,lat,lon,elevation,name]`` — any variable of the registry
(``dew_point``, ``sea_level_pressure``, ``precipitation_1h``, ...: ``data/variables.py``) may be a column too,
in its canonical units unless ``units=`` says otherwise; column names are case-insensitive
(``date``/``datetime``/``timestamp`` work for ``time``, ``station_id``/``id`` for ``station``,
``latitude``/``longitude``/``altitude`` for the coordinates). Times are ISO 8601; naive times are UTC,
zone-aware ones are converted to UTC. Station coordinates come from the same rows (they must not
change within a station) or from a separate station CSV (``station,lat,lon[,elevation,name]``).
Empty cells / NA are missing values. Parsed with pandas' C parser; errors name the CSV line.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..plausibility import apply_bounds, at_lines, resolve_units
from ..schema import make_dataset, validate
from ..variables import REGISTRY, SCHEMA_VARIABLES
from ._common import PathLike, ReaderError, check_complete, decode_text, mixed_steps, read_bytes, regular_grid

__all__ = ["read_csv_long", "CSV_ALIASES"]

CSV_ALIASES = {
    "station": ("station", "station_id", "id", "stationid"),
    "time": ("time", "date", "datetime", "timestamp", "valid_time"),
    "lat": ("lat", "latitude"),
    "lon": ("lon", "longitude", "long"),
    "elevation": ("elevation", "elev", "altitude", "height"),
    "name": ("name", "station_name"),
    **{v: (v,) for v in REGISTRY},
}
#: complete ISO 8601: a date, or a date and time to at least the minute, optionally a UTC offset
_ISO_TIME = r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?"


def _columns(header: list[str], path: PathLike, required: tuple[str, ...]) -> dict[str, str]:
    """Schema name -> the file's column name, by case-insensitive alias."""
    low = {h.strip().lower(): h for h in header}
    out = {}
    for key, aliases in CSV_ALIASES.items():
        hit = [low[a] for a in aliases if a in low]
        if len(hit) > 1:
            raise ReaderError(path, f"columns {hit} all mean {key!r}; keep one", 1)
        if hit:
            out[key] = hit[0]
    missing = [k for k in required if k not in out]
    if missing:
        raise ReaderError(path, f"missing column(s) {missing}; header is {header[:12]}", 1)
    return out


def _data_lines(text: str) -> np.ndarray:
    """1-based line number of every non-blank data row (pandas skips blank lines)."""
    lines = np.array([i for i, s in enumerate(text.split("\n"), 1) if s.strip()], np.int64)
    return lines[1:]


def _read(text: str, path: PathLike, kind: str) -> pd.DataFrame:
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise ReaderError(path, f"empty file; expected a {kind} CSV header", 1) from None
    except (pd.errors.ParserError, ValueError) as e:
        found = _locate_csv_problem(text)
        if found is not None:
            raise ReaderError(path, f"malformed CSV: {found[1]}", found[0]) from None
        m = re.search(r"line (\d+)", str(e))
        raise ReaderError(path, f"malformed CSV: {str(e).strip()}", int(m.group(1)) if m else None) from None


def _locate_csv_problem(text: str) -> tuple[int, str] | None:
    """(line, what) of the first row the strict stdlib CSV parser rejects or whose width is wrong."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    width = None
    try:
        for row in reader:
            if not row:
                continue
            if width is None:
                width = len(row)
            elif len(row) != width:
                return reader.line_num, f"expected {width} fields as in the header, found {len(row)}"
    except csv.Error as e:
        return reader.line_num, str(e)
    return None


def _numbers(col: pd.Series, lines: np.ndarray, path: PathLike, field: str) -> np.ndarray:
    s = col.str.strip()
    vals = pd.to_numeric(s.mask(s.str.upper().isin({"", "NA", "NAN", "N/A", "NULL", "NONE"})), errors="coerce")
    bad = vals.isna() & ~s.str.upper().isin({"", "NA", "NAN", "N/A", "NULL", "NONE"})
    if bad.any():
        i = int(np.argmax(bad.values))
        raise ReaderError(path, f"{s.iloc[i][:40]!r} is not a number", int(lines[i]), field)
    out = vals.to_numpy(np.float64)
    if np.isinf(out).any():
        i = int(np.argmax(np.isinf(out)))
        raise ReaderError(path, "infinite value", int(lines[i]), field)
    return out


def _station_table(path: PathLike, encoding: str) -> pd.DataFrame:
    text = decode_text(read_bytes(path), path, encoding)
    check_complete(text, path)
    df = _read(text, path, "station metadata")
    lines = _data_lines(text)[: len(df)]
    cols = _columns(list(df.columns), path, ("station", "lat", "lon"))
    ids = df[cols["station"]].str.strip()
    if (ids == "").any():
        raise ReaderError(path, "empty station id", int(lines[np.argmax((ids == "").values)]), cols["station"])
    if ids.duplicated().any():
        i = int(np.argmax(ids.duplicated().values))
        raise ReaderError(path, f"station {ids.iloc[i]!r} listed twice", int(lines[i]), cols["station"])
    out = pd.DataFrame(index=pd.Index(ids.values, name="station"))
    for c in ("lat", "lon", "elevation"):
        out[c] = _numbers(df[cols[c]], lines, path, cols[c]) if c in cols else np.nan
    out["name"] = df[cols["name"]].str.strip().values if "name" in cols else ids.values
    return out


def _load(path: PathLike, encoding: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The table (all strings) and the 1-based line of each row; truncated or ragged rows raise."""
    text = decode_text(read_bytes(path), path, encoding)
    check_complete(text, path)
    df = _read(text, path, "long-format (station, time, variables)")
    problem = _ragged_row(text)
    if problem is not None:
        raise ReaderError(path, f"{problem[1]} (truncated line?)", problem[0])
    lines = _data_lines(text)
    if len(lines) < len(df):  # quoted fields spanning lines; fall back to row numbers
        lines = np.arange(2, len(df) + 2)
    return df, lines[: len(df)]


def _ragged_row(text: str) -> tuple[int, str] | None:
    """(line, what) of the first row whose field count differs from the header's (pandas pads short rows)."""
    if '"' in text:
        return _locate_csv_problem(text)
    width = None
    for i, row in enumerate(text.split("\n"), 1):
        if not row.strip():
            continue
        n = row.count(",") + 1
        if width is None:
            width = n
        elif n != width:
            return i, f"expected {width} fields as in the header, found {n}"
    return None


def _times(df: pd.DataFrame, col: str, lines: np.ndarray, path: PathLike) -> np.ndarray:
    """UTC datetime64[ns] of the time column; a time that is not complete ISO 8601 raises naming its line."""
    raw_t = df[col].str.strip()
    ok = raw_t.str.fullmatch(_ISO_TIME)
    t = pd.to_datetime(raw_t.where(ok), format="ISO8601", errors="coerce", utc=True)
    if t.isna().any():
        i = int(np.argmax(t.isna().values))
        raise ReaderError(
            path, f"{raw_t.iloc[i][:40]!r} is not an ISO 8601 time like 2020-01-01T06:00", int(lines[i]), col
        )
    return t.dt.tz_localize(None).to_numpy("datetime64[ns]")


def _check_duplicates(codes: np.ndarray, uniq: pd.Index, tv: np.ndarray, lines: np.ndarray, path: PathLike) -> None:
    dup = pd.DataFrame({"s": codes, "t": tv}).duplicated(keep=False).values
    if dup.any():
        rows = np.nonzero(dup)[0]
        first = rows[0]
        other = next(r for r in rows[1:] if codes[r] == codes[first] and tv[r] == tv[first])
        raise ReaderError(
            path,
            f"station {uniq[codes[first]]!r} has time {pd.Timestamp(tv[first])} twice "
            f"(also on line {int(lines[first])})",
            int(lines[other]),
        )


def _time_grid(
    tv: np.ndarray, freq: str | pd.Timedelta | None, lines: np.ndarray, path: PathLike, col: str
) -> pd.DatetimeIndex:
    """The regular time axis of the rows (off-grid times and mixed steps are errors saying how to resample)."""
    try:
        grid = regular_grid(tv, None if freq is None else pd.Timedelta(freq))
    except ValueError as e:
        m = re.search(r"time (\S+ \S+) is not on", str(e))
        line = None
        if m:
            hit = np.nonzero(tv == np.datetime64(pd.Timestamp(m.group(1))))[0]
            line = int(lines[hit[0]]) if len(hit) else None
        raise ReaderError(path, str(e), line, col) from None
    problem = mixed_steps(tv, grid) if freq is None else None
    if problem is not None:
        raise ReaderError(path, problem, field=col)
    return grid


def _inline_meta(
    df: pd.DataFrame, cols: dict[str, str], codes: np.ndarray, uniq: pd.Index, lines: np.ndarray, path: PathLike
) -> pd.DataFrame:
    """Station lat/lon/elevation/name from the data rows (a value changing within a station raises)."""
    meta = pd.DataFrame(index=pd.Index(uniq, name="station"))
    for c in ("lat", "lon", "elevation"):
        meta[c] = np.nan
    meta["name"] = list(uniq)
    for c in ("lat", "lon", "elevation", "name"):
        if c not in cols:
            continue
        vals = df[cols[c]].str.strip() if c == "name" else pd.Series(_numbers(df[cols[c]], lines, path, cols[c]))
        frame = pd.DataFrame({"s": codes, "v": vals.values})
        n_distinct = frame.groupby("s")["v"].nunique(dropna=True)
        if (n_distinct > 1).any():
            s = int(n_distinct.index[np.argmax((n_distinct > 1).values)])
            rows = np.nonzero(codes == s)[0]
            first_val = frame["v"].iloc[rows[0]]
            diff = next(r for r in rows if frame["v"].iloc[r] != first_val and pd.notna(frame["v"].iloc[r]))
            raise ReaderError(
                path,
                f"station {uniq[s]!r} changes {c} from {first_val!r} (line {int(lines[rows[0]])}) "
                f"to {frame['v'].iloc[diff]!r}",
                int(lines[diff]),
                cols[c],
            )
        first = frame.dropna().groupby("s")["v"].first()
        if c == "name":
            first = first[first != ""]
        meta.iloc[first.index.to_numpy(), meta.columns.get_loc(c)] = first.to_numpy()
    return meta


def _warn_dropped(header: list[str], cols: dict[str, str], path: PathLike) -> None:
    """Name the columns that are not read: an extra variable is never dropped without a word."""
    used = set(cols.values())
    dropped = [h for h in header if h.strip() and h not in used]
    if dropped:
        warnings.warn(
            f"{path}: column(s) {dropped} are not read; a station table holds {', '.join(SCHEMA_VARIABLES)} "
            "or another registry variable (dew_point, sea_level_pressure, ...) and station, time, lat, lon, "
            "elevation, name",
            UserWarning,
            stacklevel=3,
        )


def read_csv_long(
    path: PathLike,
    stations: PathLike | None = None,
    *,
    units: Mapping[str, str] | None = None,
    freq: str | pd.Timedelta | None = None,
    encoding: str = "utf-8",
) -> xr.Dataset:
    """Read a long-format CSV (see module doc) into the schema.

    ``stations``: optional station metadata CSV; ``units``: source units per variable when not the
    schema's (``{"temperature": "degF"}``; a key naming no variable column is an error); ``freq``: the
    time step (default: the most common step). Times must lie on one regular axis; absent (station,
    time) pairs become NaN. Impossible values become NaN with one warning; columns that are not read are
    named in a warning. Stations without coordinates are kept with NaN lat/lon and a warning.
    """
    df, lines = _load(path, encoding)
    cols = _columns(list(df.columns), path, ("station", "time"))
    variables = [v for v in REGISTRY if v in cols]
    if not variables:
        raise ReaderError(
            path, f"no variable column: expected one of {sorted(SCHEMA_VARIABLES)} (or another registry variable); "
            f"header is {list(df.columns)}", 1
        )
    src_units = resolve_units(units, {v: REGISTRY[v].units for v in variables}, path)
    _warn_dropped(list(df.columns), cols, path)
    if len(df) == 0:
        raise ReaderError(path, "no data rows")
    ids = df[cols["station"]].str.strip()
    empty = (ids == "").values
    if empty.any():
        raise ReaderError(path, "empty station id", int(lines[np.argmax(empty)]), cols["station"])
    tv = _times(df, cols["time"], lines, path)
    codes, uniq = pd.factorize(ids, sort=True)
    _check_duplicates(codes, uniq, tv, lines, path)
    grid = _time_grid(tv, freq, lines, path, cols["time"])
    step = grid.asi8[1] - grid.asi8[0] if len(grid) > 1 else 1
    ti = (tv.astype(np.int64) - grid.asi8[0]) // step
    values = apply_bounds(
        {v: _numbers(df[cols[v]], lines, path, cols[v]) for v in variables},
        path,
        units=src_units,
        fields={v: cols[v] for v in variables},
        locate=at_lines(lines),
    )
    data = {}
    for v in variables:
        a = np.full((len(grid), len(uniq)), np.nan, np.float32)
        a[ti, codes] = values[v]
        data[v] = a
    if stations is not None:
        table = _station_table(stations, encoding)
        missing = [s for s in uniq if s not in table.index]
        if missing:
            raise ReaderError(stations, f"station(s) {missing[:5]} of {path} are not listed")
        meta = table.loc[list(uniq)]
    else:
        meta = _inline_meta(df, cols, codes, uniq, lines, path)
    nocoord = meta["lat"].isna() | meta["lon"].isna()
    if nocoord.any():
        warnings.warn(
            f"{path}: {int(nocoord.sum())} station(s) without lat/lon (e.g. {list(meta.index[nocoord][:3])}); "
            "their coordinates are NaN — add lat/lon columns or pass stations=<metadata csv>",
            stacklevel=2,
        )
    ds = make_dataset(
        grid,
        list(uniq),
        meta["lat"].to_numpy(np.float64),
        meta["lon"].to_numpy(np.float64),
        elevation=meta["elevation"].to_numpy(np.float64),
        name=[str(x) for x in meta["name"]],
        attrs={"source": f"CSV long format ({Path(path).name})", "source_format": "csv-long"},
        **data,
    )
    return validate(ds)
