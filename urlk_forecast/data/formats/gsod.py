"""NOAA NCEI Global Summary of the Day (GSOD) CSV files — a daily dataset.

One quoted CSV per station-year (``/data/global-summary-of-the-day/access/{YYYY}/{USAF}{WBAN}.csv``):
``"STATION","DATE","LATITUDE","LONGITUDE","ELEVATION","NAME","TEMP","TEMP_ATTRIBUTES","DEWP",...,
"WDSP","WDSP_ATTRIBUTES",...``. ``TEMP`` is the daily mean temperature in degF (``9999.9`` missing),
``WDSP`` the daily mean wind speed in knots (``999.9`` missing); both are converted to the schema's
degC and m/s. ``DATE`` is ``YYYY-MM-DD``; the time axis is daily.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..schema import convert_units, make_dataset, validate
from ._common import (
    PathLike,
    ReaderError,
    as_paths,
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
from .isd_lite import TEMP_RANGE, WIND_RANGE

__all__ = ["read_gsod", "parse_gsod", "GSOD_REQUIRED"]

GSOD_REQUIRED = ("STATION", "DATE", "TEMP", "WDSP")
# column -> (schema variable, missing sentinel, source units, plausible range in canonical units)
_VALUES = {
    "TEMP": ("temperature", 9999.9, "degF", TEMP_RANGE),
    "WDSP": ("wind_speed", 999.9, "knots", WIND_RANGE),
}


def parse_gsod(data: bytes, path: PathLike = "<bytes>") -> dict[str, dict]:
    """Parse one GSOD CSV into ``{station_id: {"time", "temperature", "wind_speed", "line", "lat",
    "lon", "elevation", "name"}}`` with values already in degC and m/s (NaN = missing)."""
    text = decode_text(data, path, "utf-8")
    _, cols, rows = csv_table(text, path, GSOD_REQUIRED, "GSOD (Global Summary of the Day)")
    acc: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    meta: dict[str, tuple] = {}
    for line, row in rows:
        raw_id = row[cols["STATION"]].strip()
        if not raw_id:
            raise ReaderError(path, "empty station id", line, "STATION")
        sid = isd_station_id(raw_id)
        date = row[cols["DATE"]].strip()
        try:
            t = np.datetime64(date, "D") if len(date) == 10 else None
        except ValueError:
            t = None
        if t is None:
            raise ReaderError(path, f"{date[:40]!r} is not a date like 2019-01-01", line, "DATE")
        a = acc[sid]
        a["time"].append(t)
        a["line"].append(line)
        for col, (var, sentinel, _, _) in _VALUES.items():
            s = row[cols[col]]
            try:
                v = parse_float(s)
            except ValueError:
                raise ReaderError(path, f"{s.strip()[:40]!r} is not a number", line, col) from None
            a[var].append(np.nan if abs(v - sentinel) < 1e-6 else v)
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
        meta[sid] = (coords[0], coords[1], missing_elevation(coords[2]), name)
    out = {}
    for sid, a in acc.items():
        t = np.asarray(a["time"], dtype="datetime64[D]").astype("datetime64[ns]")
        lines = np.asarray(a["line"], np.int64)
        check_unique(t, lines, path, "date")
        rec = {"time": t, "line": lines}
        for col, (var, _, units, (lo, hi)) in _VALUES.items():
            v = convert_units(np.asarray(a[var], np.float64), units, var)
            bad = (v < lo) | (v > hi)
            if np.any(bad):
                warnings.warn(
                    f"{path}: {int(bad.sum())} {col} value(s) outside the plausible range set to NaN "
                    f"(first on line {int(lines[np.argmax(bad)])})",
                    stacklevel=2,
                )
                v = np.where(bad, np.nan, v)
            rec[var] = v.astype(np.float32)
        rec.update(zip(("lat", "lon", "elevation", "name"), meta[sid]))
        out[sid] = rec
    return out


def read_gsod(
    paths: PathLike | list[PathLike],
    *,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
) -> xr.Dataset:
    """Read GSOD CSV files (several stations/years; ``.gz`` too) into the daily schema dataset.

    Station ids become ``USAF-WBAN``; days without a record are NaN; ``start``/``end`` widen the axis.
    A station-day present in two files must agree, otherwise a :class:`ReaderError` names both.
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
    per: dict[str, list[dict]] = defaultdict(list)
    for f in dict.fromkeys(files):
        for sid, rec in parse_gsod(read_bytes(f), f).items():
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
    arrays = {v: np.full((len(grid), len(ids)), np.nan, np.float32) for v in ("temperature", "wind_speed")}
    for j, sid in enumerate(ids):
        recs = per[sid]
        if len(recs) > 1:
            t = np.concatenate([r["time"] for r in recs])
            if len(np.unique(t)) != len(t):
                seen: dict[np.datetime64, Path] = {}
                for r in recs:
                    for tt in r["time"]:
                        if tt in seen:
                            raise ReaderError(r["file"], f"{sid} {pd.Timestamp(tt).date()} is also in {seen[tt]}")
                        seen[tt] = r["file"]
        for r in recs:
            for var in arrays:
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
