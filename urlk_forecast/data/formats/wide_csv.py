"""Wide CSV: one time column, then one column per series (the long-horizon benchmark layout).

``date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT`` (ETTh1), ``date,OT,...`` (Weather), ``date,0,1,...,320`` (Electricity), or
any CSV with a time column and numeric columns. Each series column becomes one station of the schema's ``station``
dim: station id and name = the column name, lat/lon/elevation NaN (a column has no location; the training windows
keep such series in column order, ``data/windows.py``). All columns form ONE data variable, named by ``variable``
(default ``"value"``): a registry name (``"temperature"``) gets its CF metadata, canonical units and plausibility
bounds; any other name needs its units (``units="kW"`` or ``units={"value": "kW"}``) and is stored as given (no
range check: nothing is known about its range).

Times are ISO 8601 (``2016-07-01 00:00:00``), naive = UTC. They must lie on one regular axis (missing rows become
NaN); an off-grid time or a mix of steps is an error that says how to resample. Empty cells / NA are missing values.
Errors name the file and the line or column.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..plausibility import apply_bounds, at_lines
from ..schema import SchemaError, make_dataset, validate
from ..units import UnitError, lookup
from ..variables import REGISTRY
from ._common import (
    RESAMPLE_ADVICE,
    PathLike,
    ReaderError,
    check_unique,
    decode_text,
    mixed_steps,
    read_bytes,
    regular_grid,
)
from .csv_long import _load, _numbers, _times

__all__ = ["read_wide_csv", "DEFAULT_VARIABLE", "RESAMPLE_ADVICE"]

#: the variable name of a wide CSV's series when none is given
DEFAULT_VARIABLE = "value"


def _header(path: PathLike, text: str) -> list[str]:
    """The header's column names (stripped); an empty or duplicate name is an error naming it."""
    first = next(csv.reader(io.StringIO(text.split("\n", 1)[0])), [])
    names = [h.strip() for h in first]
    seen: dict[str, int] = {}
    for i, h in enumerate(names, 1):
        if not h:
            raise ReaderError(path, f"column {i} of the header has no name", 1)
        if h in seen:
            raise ReaderError(path, f"column name {h!r} appears twice in the header (columns {seen[h]} and {i}); "
                                    "each series needs its own name", 1)
        seen[h] = i
    return names


def _pick_columns(header: list[str], time_column: str | None, columns: Sequence[str] | None,
                  path: PathLike) -> tuple[str, list[str]]:
    """(time column, series columns): the named ones, checked against the header, or the first column / the rest."""
    tcol = header[0] if time_column is None else str(time_column)
    if tcol not in header:
        raise ReaderError(path, f"time_column={tcol!r} is not a column; the header is {header[:12]}", 1)
    if columns is None:
        series = [h for h in header if h != tcol]
    else:
        series = [str(c) for c in ([columns] if isinstance(columns, str) else columns)]
        missing = [c for c in series if c not in header]
        if missing:
            raise ReaderError(path, f"columns={missing} not in the file; the header is {header[:12]}", 1)
        if tcol in series:
            raise ReaderError(path, f"columns= includes the time column {tcol!r}", 1)
        if len(set(series)) != len(series):
            raise ReaderError(path, f"columns= names a column twice: {series}", 1)
    if not series:
        raise ReaderError(path, f"no series column besides the time column {tcol!r}", 1)
    return tcol, series


def _source_unit(variable: str, units: str | Mapping[str, str] | None, path: PathLike) -> str:
    """The unit of the file's values: ``units`` (a string, or ``{variable: unit}``) or the registry's canonical one."""
    if isinstance(units, Mapping):
        extra = [k for k in units if k != variable]
        if extra:
            raise ReaderError(path, f"units={dict(units)!r}: this file's series form the one variable {variable!r}; "
                                    f"{extra} name no variable read here")
        units = units.get(variable)
    if units is None:
        if variable in REGISTRY:
            return REGISTRY[variable].units
        raise ReaderError(path, f"give the units of the series (units={{{variable!r}: 'kW'}}, or '1' for a "
                                f"dimensionless number): {variable!r} is not a registry variable "
                                f"({', '.join(REGISTRY)}), so its units cannot be assumed")
    unit = str(units).strip()
    if not unit:
        raise ReaderError(path, f"units for {variable!r} is empty")
    if variable in REGISTRY:
        try:
            lookup(unit, REGISTRY[variable].quantity)
        except UnitError as e:
            raise ReaderError(path, f"units={{{variable!r}: {unit!r}}}: {e}") from None
    return unit


def _grid(tv: np.ndarray, freq: str | pd.Timedelta | None, lines: np.ndarray, path: PathLike,
          tcol: str) -> pd.DatetimeIndex:
    """The regular time axis of the rows; an irregular or mixed-step table is an error saying how to resample.

    Without ``freq``, rows filling less than half of the axis of their most common step mean mixed steps (hourly
    rows, then 10-minute rows), not gaps, and are an error too."""
    try:
        grid = regular_grid(tv, None if freq is None else pd.Timedelta(freq))
        problem = mixed_steps(tv, grid) if freq is None else None
        if problem is not None:
            raise ReaderError(path, problem, field=tcol)
        return grid
    except ValueError as e:
        if isinstance(e, ReaderError):
            raise
        off = None
        if len(tv) > 1:
            step = pd.Series(np.diff(np.sort(tv))).mode().iloc[0]
            bad = np.flatnonzero((tv - tv.min()) % step != np.timedelta64(0))
            off = int(lines[bad[0]]) if len(bad) else None
        raise ReaderError(path, f"irregular time axis: {e}", off, tcol) from None


def read_wide_csv(
    path: PathLike,
    *,
    time_column: str | None = None,
    columns: Sequence[str] | str | None = None,
    units: str | Mapping[str, str] | None = None,
    variable: str = DEFAULT_VARIABLE,
    freq: str | pd.Timedelta | None = None,
    encoding: str = "utf-8",
) -> xr.Dataset:
    """Read a wide CSV (see module doc) into the schema: one station per series column, one data variable.

    ``time_column``: the time column (default: the first); ``columns``: the series to read (default: every other
    column, in file order); ``variable``: the data variable's name; ``units``: the series' units (required unless
    ``variable`` is a registry name, whose values are converted to its canonical unit); ``freq``: the time step
    (default: the most common one).
    """
    if not str(variable).strip() or not str(variable).isidentifier():
        raise ValueError(f"the variable name {variable!r} is not a name like 'value' or 'load'")
    df, lines = _load(path, encoding)
    header = _header(path, decode_text(read_bytes(path), path, encoding))
    tcol, series = _pick_columns(header, time_column, columns, path)
    unit = _source_unit(variable, units, path)
    if len(df) == 0:
        raise ReaderError(path, "no data rows")
    df.columns = header  # the names were checked unique above (pandas would have renamed a repeat "A" to "A.1")
    tv = _times(df, tcol, lines, path)
    check_unique(tv, lines, path, "time")
    grid = _grid(tv, freq, lines, path, tcol)
    raw = np.stack([_numbers(df[c], lines, path, c) for c in series], axis=1)  # (rows, S)
    if variable in REGISTRY:
        raw = apply_bounds({variable: raw}, path, units={variable: unit}, fields={variable: ", ".join(series[:3])},
                           locate=at_lines(lines, per_line=len(series)))[variable]
    step = grid.asi8[1] - grid.asi8[0] if len(grid) > 1 else 1
    values = np.full((len(grid), len(series)), np.nan, np.float32)
    values[(tv.astype(np.int64) - grid.asi8[0]) // step] = raw
    nan = np.full(len(series), np.nan)
    try:
        ds = make_dataset(
            grid, series, nan, nan,
            attrs={"source": f"wide CSV ({Path(path).name})", "source_format": "wide-csv",
                   "coordinates_known": "false"},
            var_attrs={variable: {"units": unit}} if variable not in REGISTRY else None,
            **{variable: values},
        )
    except SchemaError as e:
        raise ReaderError(path, str(e)) from None
    return validate(ds)
