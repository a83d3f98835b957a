"""The Corrformer / UniRepLKNet "Global Temp" and "Global Wind" release (3850 NCEI stations, hourly).

The release directory holds ``temp_global_hourly_{train,val,test}.npy`` and
``wind_global_hourly_{train,val,test}.npy`` — arrays (T, 3850, 1) (the first channel is used when the
last axis is wider) with values x 10 (degC x 10, m/s x 10) — plus ``data_time_{split}.npy`` (T time
strings like ``"2019-01-01 01:00:00"``) and ``stations_sorted.npy`` (3850, 3) holding *standardised*
lat / lon / elevation (true coordinates are not part of the release).

Reading keeps the released split. ``split=None`` concatenates train, val and test on one hourly axis
(hours between splits, if any, are NaN; hours present in two splits must agree) and records the
released split in ``ds.attrs["split_bounds"]``::

    "train:2019-01-01T01:00:00/2020-05-15T23:00:00;val:2020-05-16T00:00:00/...;test:.../..."

i.e. ``name:START/END`` per split, ``;``-separated, ISO times, both ends inclusive — the format
``split_dataset`` (data/windows.py) honours. ``split="train"`` (or val/test) returns that split only
(``attrs["split"]`` names it, and there is no split_bounds).
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..plausibility import apply_bounds, at_grid, resolve_units
from ..schema import SPLITS, format_split_bounds, make_dataset, parse_split_bounds, validate
from ..variables import REGISTRY
from ._common import PathLike, ReaderError, regular_grid

__all__ = ["read_corrformer_npy", "format_split_bounds", "parse_split_bounds", "SPLITS", "CORRFORMER_FILES"]

#: schema variable -> file prefix in the release
CORRFORMER_FILES = {"temperature": "temp_global_hourly", "wind_speed": "wind_global_hourly"}
SCALE = 10.0


def _load(path: Path, allow_pickle: bool = False) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=allow_pickle)
    except ValueError as e:
        if not allow_pickle and "allow_pickle" in str(e):
            raise
        raise ReaderError(path, f"not a readable .npy array ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile, UnicodeError) as e:
        raise ReaderError(path, f"not a readable .npy array (truncated or wrong kind: {e})") from None


def _times(path: Path) -> pd.DatetimeIndex:
    try:
        raw = _load(path)
    except ValueError:  # object array of str, as in the release; pickled, so only for a release you trust
        raw = _load(path, allow_pickle=True)
    if raw.ndim != 1:
        raise ReaderError(path, f"expected a 1-d array of time strings, found shape {raw.shape}")
    strings = [x.decode() if isinstance(x, bytes) else str(x) for x in raw.tolist()]
    try:
        return pd.DatetimeIndex(pd.to_datetime(strings, format="%Y-%m-%d %H:%M:%S")).as_unit("ns")
    except (ValueError, TypeError):
        for i, s in enumerate(strings):
            try:
                pd.to_datetime(s, format="%Y-%m-%d %H:%M:%S")
            except (ValueError, TypeError):
                raise ReaderError(path, f"entry {i} is {s[:40]!r}, not a time like '2019-01-01 01:00:00'") from None
        raise


def _values(path: Path, n_time: int, n_station: int | None) -> np.ndarray:
    """The (time, station) array of one release file, still x10 (raw)."""
    try:
        a = _load(path)
    except ReaderError:
        raise
    except ValueError:
        raise ReaderError(path, "holds pickled Python objects, expected a numeric array") from None
    if a.ndim == 3:
        a = a[..., 0]
    if a.ndim != 2:
        raise ReaderError(path, f"expected an array (time, station[, channel]), found shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number):
        raise ReaderError(path, f"expected numbers, found dtype {a.dtype}")
    if a.shape[0] != n_time:
        raise ReaderError(path, f"has {a.shape[0]} time steps but its data_time file lists {n_time}")
    if n_station is not None and a.shape[1] != n_station:
        raise ReaderError(path, f"has {a.shape[1]} stations but stations_sorted.npy lists {n_station}")
    return a


def _which_variables(d: Path, splits: tuple[str, ...], variables: list[str] | None) -> list[str]:
    if variables is None:
        variables = [v for v, pre in CORRFORMER_FILES.items() if any((d / f"{pre}_{s}.npy").is_file() for s in splits)]
        if not variables:
            raise ReaderError(
                d, f"no {' or '.join(f'{p}_<split>.npy' for p in CORRFORMER_FILES.values())} files for {list(splits)}"
            )
    for v in variables:
        if v not in CORRFORMER_FILES:
            raise ValueError(f"unknown variable {v!r}; the release has {sorted(CORRFORMER_FILES)}")
    return variables


def _station_coords(d: Path) -> np.ndarray | None:
    st_path = d / "stations_sorted.npy"
    if not st_path.is_file():
        return None
    coords = _load(st_path)
    if coords.ndim != 2 or coords.shape[1] < 3 or not np.issubdtype(coords.dtype, np.number):
        raise ReaderError(st_path, f"expected (stations, 3) lat/lon/elevation numbers, found {coords.shape}")
    return coords


def _read_split(
    d: Path, s: str, variables: list[str], n_station: int | None, units: dict[str, str], one_split: bool
) -> tuple[pd.DatetimeIndex, dict[str, np.ndarray]]:
    """Times and canonical values of one split; impossible values NaN with one warning per file."""
    tp = d / f"data_time_{s}.npy"
    if not tp.is_file():
        hint = "" if one_split else "; pass split='train' (or val/test) to read a single split"
        raise ReaderError(tp, f"missing: every split needs its data_time_<split>.npy{hint}")
    t = _times(tp)
    vals = {}
    for v in variables:
        vp = d / f"{CORRFORMER_FILES[v]}_{s}.npy"
        if not vp.is_file():
            raise ReaderError(vp, f"missing: {v} is present for other splits")
        raw = _values(vp, len(t), n_station)
        n_station = raw.shape[1]
        scaled = (raw.astype(np.float32) / np.float32(SCALE)).astype(np.float32)  # raw +-99990 -> +-9999: a code
        ids = [f"S{i:04d}" for i in range(n_station)]
        vals[v] = apply_bounds(
            {v: scaled}, vp, units={v: units[v]}, locate=at_grid(t, ids), stacklevel=5
        )[v]
    if len(t) and not (t.is_monotonic_increasing and not t.has_duplicates):
        raise ReaderError(tp, "times are not strictly increasing")
    return t, vals


def _merge(
    d: Path, parts: dict[str, tuple[pd.DatetimeIndex, dict[str, np.ndarray]]], n_station: int
) -> tuple[pd.DatetimeIndex, dict[str, np.ndarray]]:
    """The splits on one hourly axis (hours between splits NaN; hours in two splits must agree)."""
    try:
        grid = regular_grid(np.concatenate([t.values for t, _ in parts.values()]), pd.Timedelta("1h"))
    except ValueError as e:
        raise ReaderError(d, f"split times do not lie on one hourly axis: {e}") from None
    variables = next(iter(parts.values()))[1]
    data = {v: np.full((len(grid), n_station), np.nan, np.float32) for v in variables}
    filled = np.zeros(len(grid), bool)
    step = grid.asi8[1] - grid.asi8[0] if len(grid) > 1 else 1
    for s, (t, vals) in parts.items():
        idx = (t.asi8 - grid.asi8[0]) // step
        overlap = filled[idx]
        for v, a in vals.items():
            if overlap.any() and not np.array_equal(data[v][idx[overlap]], a[overlap], equal_nan=True):
                raise ReaderError(d, f"split {s} overlaps an earlier split with different {v} values")
            data[v][idx] = a
        filled[idx] = True
    return grid, data


def read_corrformer_npy(
    directory: PathLike,
    split: str | None = None,
    variables: list[str] | None = None,
    *,
    units: Mapping[str, str] | None = None,
) -> xr.Dataset:
    """Read the Corrformer Global Temp / Global Wind ``.npy`` release in ``directory`` (see module doc).

    ``variables`` defaults to every variable whose files are present. Values are divided by 10 into
    degC / m/s (``units`` overrides that unit); impossible values (and the raw code +-99990) become NaN
    with one warning per file. Stations are ``S0000``... in release order; lat/lon/elevation hold the
    release's standardised values, flagged by ``attrs["coords_standardised"] = "true"``.
    """
    d = Path(directory)
    if not d.is_dir():
        raise ReaderError(d, "expected the directory of the Corrformer .npy release")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    splits = SPLITS if split is None else (split,)
    variables = _which_variables(d, splits, variables)
    given = resolve_units(units, {v: REGISTRY[v].units for v in variables}, d)
    coords = _station_coords(d)
    n_station = None if coords is None else coords.shape[0]
    parts: dict[str, tuple[pd.DatetimeIndex, dict[str, np.ndarray]]] = {}
    for s in splits:
        parts[s] = _read_split(d, s, variables, n_station, given, split is not None)
        n_station = next(iter(parts[s][1].values())).shape[1]
    assert n_station is not None
    grid, data = _merge(d, parts, n_station)
    ids = [f"S{i:04d}" for i in range(n_station)]
    if coords is None:
        lat = lon = elev = np.full(n_station, np.nan, np.float32)
        std = "unknown (stations_sorted.npy absent)"
    else:
        lat, lon, elev = coords[:, 0], coords[:, 1], coords[:, 2]
        std = "true"
    bounds = {s: (t[0], t[-1]) for s, (t, _) in parts.items() if len(t)}
    attrs = {
        "source": "Corrformer Global Temp/Wind release (NOAA NCEI stations, Wu et al. 2023), values / 10",
        "source_format": "corrformer",
        "coords_standardised": std,
    }
    if split is None:  # the released split, for split_dataset (data/windows.py)
        attrs["split_bounds"] = format_split_bounds(bounds)
    else:  # one split only: nothing left to split, so no split_bounds that would lack the others
        attrs["split"] = split
    ds = make_dataset(grid, ids, lat, lon, elevation=elev, attrs=attrs, **data)
    return validate(ds)
