"""Training windows over station data: splits, time features, station order and a lazy window dataset.

The conventions follow Informer/Corrformer, which the UniRepLKNet forecasting experiments reuse:

* chronological train/val/test split 7:1:2 (``int(T*0.7)``, ``int(T*0.2)``, the rest is validation), unless the
  source gives its own splits in ``ds.attrs["split_bounds"]``;
* time features "timeF" for hourly data: hour/23, weekday/6, (day-1)/30, (yearday-1)/365, each minus 0.5;
* a window is ``x`` = ``seq_len`` steps of history and ``y`` = ``label_len + pred_len`` steps whose first
  ``label_len`` rows repeat the end of ``x`` (the decoder's start tokens) and whose last ``pred_len`` rows are the
  targets.

Missing data (see docs/data.md): the dataset is processed once, per station along time. Interior gaps of at most
``max_gap`` steps are linearly interpolated and count as observed (mask True). Longer gaps are never zero-filled:
targets there are NaN with ``y_mask`` False; inputs there hold the last observation (a causal edge hold; before a
station's record starts, the causal value of the nearest station with data) with ``x_mask`` False. A gap still open
at the end of ``x`` is held and unobserved whatever its length (its length is only known later), so no input value
or mask ever carries information from the forecast period.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import numba
import numpy as np
import pandas as pd
import torch
import xarray as xr

from .schema import SchemaError, make_dataset, parse_split_bounds, validate

__all__ = ["split_dataset", "time_features", "TIME_FEATURES", "check_time_features",
           "station_order", "hilbert_index", "WindowDataset", "WindowSource",
           "fill_gaps", "check_inputs"]

SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------------------------------- splits


#: the one parser of ``ds.attrs["split_bounds"]`` (shared with the Corrformer reader), in data/schema.py
_parse_split_bounds = parse_split_bounds


def split_dataset(
    ds: xr.Dataset, ratios: Sequence[float] = (0.7, 0.1, 0.2), context: int = 0
) -> dict[str, xr.Dataset]:
    """Split ``ds`` chronologically into ``{"train", "val", "test"}``.

    With ``ds.attrs["split_bounds"]`` (a source's own splits, e.g. the Corrformer release) those inclusive time
    ranges are used and ``ratios`` is ignored. Otherwise ``n_train = int(T*r0)``, ``n_test = int(T*r2)`` and
    validation gets the rest (the Informer/Corrformer convention).

    ``context`` > 0 prepends that many steps of history to val and test (as Informer's ``border1 = border - seq_len``)
    so their first forecast can start right at the split boundary; the number actually prepended is stored in
    ``attrs["split_context"]`` and :class:`WindowDataset` never puts a target inside it.
    """
    if "time" not in ds.dims:
        raise SchemaError(f"split_dataset needs a 'time' dimension; dataset has dims {tuple(ds.dims)}")
    if int(context) < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    context = int(context)
    times = pd.DatetimeIndex(ds["time"].values)
    T = len(times)
    bounds = ds.attrs.get("split_bounds")
    spans: dict[str, tuple[int, int]] = {}
    if bounds:
        for name, (t0, t1) in _parse_split_bounds(bounds).items():
            i0 = int(times.searchsorted(t0, side="left"))
            i1 = int(times.searchsorted(t1, side="right"))
            if i1 <= i0:
                raise SchemaError(f"split {name!r} ({t0} .. {t1}) from ds.attrs['split_bounds'] selects no time step")
            spans[name] = (i0, i1)
    else:
        r = [float(v) for v in ratios]
        if len(r) != 3 or any(not math.isfinite(v) or v < 0 for v in r) or abs(sum(r) - 1.0) > 1e-6:
            raise ValueError(f"ratios must be three non-negative numbers summing to 1, got {tuple(ratios)}")
        n_train, n_test = int(T * r[0]), int(T * r[2])
        n_val = T - n_train - n_test
        for name, n, ratio in (("train", n_train, r[0]), ("val", n_val, r[1]), ("test", n_test, r[2])):
            if ratio > 0 and n <= 0:
                raise ValueError(f"{T} time steps are too few for a {name} split with ratios {tuple(r)}")
        spans = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, T)}
    attrs = {k: v for k, v in ds.attrs.items() if k != "split_bounds"}
    out: dict[str, xr.Dataset] = {}
    for name in SPLITS:
        i0, i1 = spans[name]
        c = 0 if name == "train" else min(context, i0)
        part = ds.isel(time=slice(i0 - c, i1))
        part.attrs = {**attrs, "split": name, "split_context": c}
        out[name] = part
    return out


# ---------------------------------------------------------------------------------------------- time features


#: names of :func:`time_features`' columns, in order
TIME_FEATURES: tuple[str, ...] = ("hour", "weekday", "monthday", "yearday")


def check_time_features(names: Sequence[str] | None) -> tuple[str, ...]:
    """``names`` as a tuple in :data:`TIME_FEATURES` order (None: all of them); unknown or repeated names are an
    error that lists the known ones."""
    if names is None:
        return TIME_FEATURES
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    got = [str(n).strip().lower() for n in names]
    unknown = sorted(set(got) - set(TIME_FEATURES))
    if unknown or len(set(got)) != len(got):
        what = f"unknown {unknown}" if unknown else f"repeated names in {got}"
        raise ValueError(f"time_features: {what}; choose from {list(TIME_FEATURES)}")
    return tuple(f for f in TIME_FEATURES if f in got)


def time_features(times: Sequence | np.ndarray | pd.DatetimeIndex) -> np.ndarray:
    """Informer/Corrformer "timeF" features, shape ``(T, 4)`` float32 in [-0.5, 0.5].

    Columns: hour of day ``h/23``, day of week ``d/6`` (Monday = 0), day of month ``(d-1)/30``, day of year
    ``(d-1)/365``, each minus 0.5.
    """
    t = pd.DatetimeIndex(pd.to_datetime(np.asarray(times).ravel()))
    out = np.empty((len(t), 4), np.float32)
    out[:, 0] = t.hour.to_numpy() / 23.0 - 0.5
    out[:, 1] = t.day_of_week.to_numpy() / 6.0 - 0.5
    out[:, 2] = (t.day.to_numpy() - 1) / 30.0 - 0.5
    out[:, 3] = (t.day_of_year.to_numpy() - 1) / 365.0 - 0.5
    return out


# ---------------------------------------------------------------------------------------------- station order


def hilbert_index(x: np.ndarray, y: np.ndarray, bits: int = 16) -> np.ndarray:
    """Position along a 2-D Hilbert curve of integer grid points ``(x, y)`` in ``[0, 2**bits)``."""
    if not 1 <= bits <= 31:
        raise ValueError(f"bits must be in 1..31, got {bits}")
    n = np.int64(1) << bits
    x = np.asarray(x, np.int64).copy()
    y = np.asarray(y, np.int64).copy()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {x.shape} and {y.shape}")
    if x.size and (x.min() < 0 or y.min() < 0 or x.max() >= n or y.max() >= n):
        raise ValueError(f"grid coordinates must lie in [0, {int(n)})")
    d = np.zeros(x.shape, np.int64)
    full = n - 1
    s = n >> 1
    while s > 0:
        rx = (x & s) > 0
        ry = (y & s) > 0
        d += s * s * ((3 * rx.astype(np.int64)) ^ ry.astype(np.int64))
        # Rotate the quadrant so the sub-curve has the canonical orientation.
        flip = ~ry & rx
        x = np.where(flip, x ^ full, x)
        y = np.where(flip, y ^ full, y)
        swap = ~ry
        x, y = np.where(swap, y, x), np.where(swap, x, y)
        s >>= 1
    return d


def station_order(lat: Sequence[float] | np.ndarray, lon: Sequence[float] | np.ndarray, bits: int = 16) -> np.ndarray:
    """Permutation that puts nearby stations next to each other (a Hilbert curve over lon/lat).

    ``ds.isel(station=station_order(ds.lat, ds.lon))`` is the model order, in which consecutive groups of stations
    are spatial neighbourhoods (the nodes of Corrformer/UniRepLKNet). Ties keep their input order (stable sort).
    """
    lat = np.asarray(lat, np.float64).ravel()
    lon = np.asarray(lon, np.float64).ravel()
    if lat.shape != lon.shape:
        raise ValueError(f"lat and lon must have the same length, got {lat.size} and {lon.size}")
    if not (np.all(np.isfinite(lat)) and np.all(np.isfinite(lon))):
        bad = int(np.flatnonzero(~(np.isfinite(lat) & np.isfinite(lon)))[0])
        raise ValueError(f"station {bad} has a non-finite lat/lon ({lat[bad]}, {lon[bad]})")
    if lat.size and (lat.min() < -90 or lat.max() > 90):
        raise ValueError(f"latitudes must lie in [-90, 90], got range [{lat.min()}, {lat.max()}]")
    scale = float((1 << bits) - 1)
    gx = np.rint(((lon + 180.0) % 360.0) / 360.0 * scale).astype(np.int64)
    gy = np.rint((lat + 90.0) / 180.0 * scale).astype(np.int64)
    return np.argsort(hilbert_index(gx, gy, bits), kind="stable")


# ----------------------------------------------------------------------------------------------- gap filling


@numba.njit(cache=True, nogil=True)
def _fill_gaps_kernel(v, cols, max_gap, out, mask, observed, s_begin, s_end):  # pragma: no cover - compiled
    """Output stations ``s_begin:s_end``; output column ``s`` is input column ``cols[s]`` (the reorder is free)."""
    T = v.shape[0]
    last = np.full(s_end - s_begin, -1, np.int64)
    for t in range(T):
        for s in range(s_begin, s_end):
            c = cols[s]
            val = v[t, c]
            j = s - s_begin
            if val == val:  # observed (not NaN)
                p = last[j]
                if p < 0:
                    for k in range(t):  # leading gap: hold the first observation backwards, unobserved
                        out[k, s] = val
                else:
                    g = t - p - 1
                    if 0 < g <= max_gap:  # short interior gap: linear interpolation, counts as observed
                        v0 = np.float64(v[p, c])
                        step = (np.float64(val) - v0) / (g + 1)
                        for k in range(1, g + 1):
                            out[p + k, s] = v0 + step * k
                            mask[p + k, s] = True
                out[t, s] = val
                mask[t, s] = True
                observed[t, s] = True
                last[j] = t
            else:
                p = last[j]
                out[t, s] = v[p, c] if p >= 0 else np.nan  # causal hold of the last observation
                mask[t, s] = False
                observed[t, s] = False


def fill_gaps(
    values: np.ndarray, max_gap: int, order: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fill NaN gaps of a ``(T, S)`` array per station along time (optionally reordering stations by ``order``).

    Returns float32 ``filled`` and bool ``mask``, ``observed``, each ``(T, S)`` with columns ``values[:, order]``:
    interior gaps of at most ``max_gap`` steps are interpolated linearly and ``mask`` is True there; longer gaps hold
    the last observation (the first one before a record starts) with ``mask`` False; ``observed`` marks the original
    non-NaN entries. Stations without any observation stay NaN. Runs in threads over station ranges.
    """
    v = np.asarray(values)
    if v.ndim != 2:
        raise ValueError(f"values must be (time, station), got shape {v.shape}")
    if not np.issubdtype(v.dtype, np.floating):
        v = v.astype(np.float32)
    if int(max_gap) < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    T, S = v.shape
    cols = np.arange(S, dtype=np.int64) if order is None else np.asarray(order, np.int64)
    if cols.shape != (S,):
        raise ValueError(f"order must have {S} entries, got {cols.shape}")
    out = np.empty((T, S), np.float32)
    mask = np.empty((T, S), np.bool_)
    observed = np.empty((T, S), np.bool_)
    n_threads = max(1, min(os.cpu_count() or 1, 8, S // 512, T * S // 2_000_000))
    bounds = np.linspace(0, S, n_threads + 1).astype(np.int64)

    def run(i: int) -> None:
        _fill_gaps_kernel(v, cols, int(max_gap), out, mask, observed, bounds[i], bounds[i + 1])

    if n_threads == 1:
        run(0)
    else:  # the kernel releases the GIL
        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(run, range(n_threads)))
    return out, mask, observed


@numba.njit(cache=True, nogil=True)
def _gather_windows(values, mask, observed, starts, L, P, Q, G, x, xm, y, ym):  # pragma: no cover - compiled
    """Fill ``x, x_mask, y, y_mask`` for windows starting at ``starts`` (rules: see WindowDataset).

    Serial on purpose: it is a memory-bound row copy (~10+ GB/s on one core); threads only add overhead.
    """
    S = values.shape[1]
    for b in range(starts.size):
        s0 = starts[b]
        for r in range(L):
            t = s0 + r
            for s in range(S):
                x[b, r, s] = values[t, s]
                xm[b, r, s] = mask[t, s]
        if G > 0:  # a gap still open at the end of x: hold the last observation, unobserved (no look-ahead)
            e = s0 + L - 1
            for s in range(S):
                if observed[e, s]:
                    continue
                age = 1
                while age <= G and e - age >= 0 and not observed[e - age, s]:
                    age += 1
                if age <= G and e - age >= 0:
                    held = values[e - age, s]
                    for k in range(1, min(age, L) + 1):
                        x[b, L - k, s] = held
                        xm[b, L - k, s] = False
        for r in range(P):
            for s in range(S):
                y[b, r, s] = x[b, L - P + r, s]
                ym[b, r, s] = xm[b, L - P + r, s]
        for r in range(Q):
            t = s0 + L + r
            for s in range(S):
                m = mask[t, s]
                ym[b, P + r, s] = m
                y[b, P + r, s] = values[t, s] if m else np.nan


# ------------------------------------------------------------------------------------------------ covariates


def check_inputs(inputs: Sequence[str] | str | None, variable: str | Sequence[str]) -> tuple[str, ...]:
    """The covariate names ``inputs`` as a tuple: non-empty, distinct, none of them the forecast ``variable``
    (errors say ``inputs=...``, which the CLI words as its flag)."""
    if inputs is None:
        return ()
    if isinstance(inputs, str):
        raise TypeError(f"inputs={inputs!r}: must be a list of variable names, not a string")
    names = tuple(inputs)
    bad = [v for v in names if not isinstance(v, str) or not v.strip()]
    if bad:
        raise ValueError(f"inputs={list(names)!r}: {bad[0]!r} is not the name of a data variable")
    dup = sorted({v for v in names if names.count(v) > 1})
    if dup:
        raise ValueError(f"inputs={list(names)!r}: names {', '.join(map(repr, dup))} more than once")
    targets = {variable} if isinstance(variable, str) else set(variable)
    clash = [v for v in names if v in targets]
    if clash:
        raise ValueError(f"inputs={list(names)!r}: must not contain the forecast variable {clash[0]!r} (its past "
                         "values are always an input)")
    return names


# ------------------------------------------------------------------------------------------------- windows


@runtime_checkable
class WindowSource(Protocol):
    """What forecasting methods read windows from (:class:`WindowDataset` is the implementation).

    ``batch(indices)`` returns tensors ``x``/``x_mask`` (N, seq_len, S), ``y``/``y_mask`` (N, label_len + pred_len,
    S), ``x_mark``/``y_mark`` calendar features; stations are in ``station_ids`` (model) order.
    """

    variable: str
    units: str
    seq_len: int
    label_len: int
    pred_len: int
    station_ids: np.ndarray
    times: pd.DatetimeIndex

    def __len__(self) -> int: ...

    @property
    def num_stations(self) -> int: ...

    @property
    def window_start_times(self) -> pd.DatetimeIndex: ...

    def batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]: ...


class WindowDataset(torch.utils.data.Dataset):
    """Sliding forecasting windows over one variable of a schema dataset (lazy: one ``(T, S)`` array, no copies).

    Items are dicts of float32 tensors in physical units and model station order:
    ``x`` (seq_len, S), ``x_mark`` (seq_len, 4), ``y`` (label_len + pred_len, S), ``y_mark`` (label_len + pred_len,
    4), ``x_mask``/``y_mask`` (bool, True = observed or a short interpolated gap) and ``index`` (int).
    The first ``label_len`` rows of ``y``/``y_mask`` equal the last rows of ``x``/``x_mask`` (NaN-free inputs); the
    last ``pred_len`` rows are the targets, NaN where a gap is longer than ``max_gap``.
    :meth:`batch` builds a stacked batch directly (the fast path for training).

    ``inputs``: other data variables whose past values the windows carry as covariates: ``x_cov`` (seq_len, S, K)
    and ``x_cov_mask`` (bool), built exactly like ``x``/``x_mask`` (short gaps interpolated and observed, longer gaps
    held and unobserved, a gap open at the end of ``x`` held and unobserved); absent without inputs.

    ``order``: None = Hilbert order over lat/lon (:func:`station_order`; dataset order when no station has a
    location, as for a wide CSV's series), ``"identity"`` = dataset order, or an
    explicit permutation of station indices. Before a station's first observation its inputs are the causal values
    of the nearest station with data (``x_mask`` False); stations without any observation get only such inputs (a
    warning names them) and all-NaN targets.
    """

    def __init__(
        self,
        ds: xr.Dataset,
        variable: str,
        seq_len: int = 48,
        label_len: int = 24,
        pred_len: int = 24,
        stride: int = 1,
        max_gap: int = 3,
        order: np.ndarray | Sequence[int] | str | None = None,
        inputs: Sequence[str] = (),
    ) -> None:
        for name, val, lo in (("seq_len", seq_len, 1), ("label_len", label_len, 0), ("pred_len", pred_len, 1),
                              ("stride", stride, 1), ("max_gap", max_gap, 0)):
            if int(val) != val or int(val) < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {val!r}")
        if label_len > seq_len:
            raise ValueError(f"label_len ({label_len}) must not exceed seq_len ({seq_len}): y's first rows repeat x's")
        self.inputs = check_inputs(inputs, variable)
        validate(ds, variables=[variable, *self.inputs])
        self.variable = variable
        self.units = str(ds[variable].attrs.get("units", ""))
        self.seq_len, self.label_len, self.pred_len = int(seq_len), int(label_len), int(pred_len)
        self.stride, self.max_gap = int(stride), int(max_gap)
        self.times = pd.DatetimeIndex(ds["time"].values)
        S = ds.sizes["station"]
        self.order = self._resolve_order(order, ds, S)
        self.inverse_order = np.empty_like(self.order)
        self.inverse_order[self.order] = np.arange(S)
        self.station_ids = np.asarray([str(s) for s in ds["station"].values[self.order]], dtype=object)
        lat = np.asarray(ds["lat"].values, np.float64)[self.order]
        lon = np.asarray(ds["lon"].values, np.float64)[self.order]
        elev = np.asarray(ds["elevation"].values, np.float64)[self.order]
        self.lat, self.lon, self.elevation = lat.astype(np.float32), lon.astype(np.float32), elev.astype(np.float32)
        self.coords = self._standardise(np.stack([lat, lon, elev], axis=1))
        context = int(ds.attrs.get("split_context", 0) or 0)
        self._start0 = max(0, context - self.seq_len)
        raw = ds[variable].transpose("time", "station").values
        self.values, self.mask, self.observed = fill_gaps(raw, self.max_gap, self.order)
        self._fill_leading_gaps()
        # covariates: the same gap rules; before a record starts the held values are unobserved (masked), never used
        self.cov = [fill_gaps(ds[v].transpose("time", "station").values, self.max_gap, self.order)
                    for v in self.inputs]
        self.marks = time_features(self.times)
        span = self.seq_len + self.pred_len
        self._len = max(0, (len(self.times) - self._start0 - span) // self.stride + 1)

    # -- construction helpers

    @staticmethod
    def _resolve_order(order: np.ndarray | Sequence[int] | str | None, ds: xr.Dataset, S: int) -> np.ndarray:
        if order is None or (isinstance(order, str) and order == "hilbert"):
            lat, lon = np.asarray(ds["lat"].values, np.float64), np.asarray(ds["lon"].values, np.float64)
            if np.isnan(lat).all() and np.isnan(lon).all():  # series without a location (wide CSV): as given
                return np.arange(S)
            return station_order(lat, lon)
        if isinstance(order, str):
            if order == "identity":
                return np.arange(S)
            raise ValueError(f"order must be None, 'hilbert', 'identity' or a permutation, got {order!r}")
        perm = np.asarray(order, dtype=np.int64).ravel()
        if perm.shape != (S,) or not np.array_equal(np.sort(perm), np.arange(S)):
            raise ValueError(f"order must be a permutation of range({S}), got {perm.size} entries")
        return perm

    @staticmethod
    def _standardise(c: np.ndarray) -> np.ndarray:
        z = np.zeros(c.shape, np.float32)
        for j in range(c.shape[1]):
            col = c[:, j]
            ok = np.isfinite(col)
            if ok.sum() >= 1:
                std = float(col[ok].std())
                z[ok, j] = (col[ok] - col[ok].mean()) / (std if std > 1e-9 else 1.0)
        return z  # unknown values (e.g. elevation) sit at the mean, 0

    def _fill_leading_gaps(self) -> None:
        """Inputs before a station's first observation come from the nearest station with data at that time.

        The donor's value is its causal one (its last observation), so no input carries information from later
        times; ``x_mask`` stays False and targets stay NaN there. Rows before any station has data keep the
        backward hold of :func:`fill_gaps` (nothing causal exists). Stations without any observation are named
        in a warning.
        """
        T = self.values.shape[0]
        has = self.observed.any(axis=0)
        if not has.any():
            raise SchemaError(f"variable {self.variable!r} has no observation at all in this dataset")
        first = np.where(has, np.argmax(self.observed, axis=0), T)
        needy = np.flatnonzero(first > 0)
        if needy.size == 0:
            return
        empty = np.flatnonzero(~has)
        if empty.size:
            warnings.warn(
                f"{empty.size} station(s) have no {self.variable} observation in this dataset "
                f"({', '.join(self.station_ids[empty[:5]])}{', ...' if empty.size > 5 else ''}): their inputs are "
                "taken from the nearest observed stations with x_mask False, their targets are NaN",
                stacklevel=3,
            )
        la, lo = np.radians(self.lat.astype(np.float64)), np.radians(self.lon.astype(np.float64))
        xyz = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=1)
        for s in needy:
            upto = int(first[s])
            for c in np.argsort(-(xyz @ xyz[s]), kind="stable"):  # nearest first
                lo = int(first[c])
                if lo >= upto:
                    continue
                # the donor's last observation at or before each time (row lo is observed, so this is complete)
                span = np.arange(lo, upto)
                last = np.maximum.accumulate(np.where(self.observed[lo:upto, c], span, lo))
                self.values[lo:upto, s] = self.values[last, c]
                upto = lo
                if upto == 0:
                    break

    @classmethod
    def from_arrays(
        cls,
        values: np.ndarray,
        times: Sequence | np.ndarray | pd.DatetimeIndex,
        coords: np.ndarray,
        station_ids: Sequence[str] | None = None,
        variable: str = "temperature",
        **kwargs: object,
    ) -> WindowDataset:
        """Build from a ``(T, S)`` array in physical units, ``T`` times and ``coords`` ``(S, 2|3)`` lat/lon[/elev]."""
        values = np.asarray(values, np.float32)
        coords = np.asarray(coords, np.float64)
        if values.ndim != 2:
            raise ValueError(f"values must be (time, station), got shape {values.shape}")
        S = values.shape[1]
        if coords.ndim != 2 or coords.shape[0] != S or coords.shape[1] not in (2, 3):
            raise ValueError(f"coords must be (S={S}, 2 or 3) lat/lon[/elevation], got shape {coords.shape}")
        ids = [f"s{i:05d}" for i in range(S)] if station_ids is None else list(station_ids)
        elev = coords[:, 2] if coords.shape[1] == 3 else None
        ds = make_dataset(times, ids, coords[:, 0], coords[:, 1], elev, **{variable: values})
        return cls(ds, variable, **kwargs)  # type: ignore[arg-type]

    # -- indexing

    def __len__(self) -> int:
        return self._len

    @property
    def num_stations(self) -> int:
        """Number of stations ``S``."""
        return int(self.values.shape[1])

    def starts(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Time index of the first input step of each window."""
        idx = np.arange(self._len) if indices is None else self._check_indices(indices)
        return self._start0 + idx * self.stride

    @functools.cached_property
    def window_start_times(self) -> pd.DatetimeIndex:
        """Time of the first input step of every window."""
        return self.times[self.starts()]

    @functools.cached_property
    def forecast_start_times(self) -> pd.DatetimeIndex:
        """Time of the first forecast (target) step of every window."""
        return self.times[self.starts() + self.seq_len]

    def _check_indices(self, indices: Sequence[int] | np.ndarray | int) -> np.ndarray:
        idx = np.asarray(indices).reshape(-1)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"window indices must be integers, got dtype {idx.dtype}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self._len):
            bad = idx[(idx < 0) | (idx >= self._len)][0]
            raise IndexError(f"window index {bad} out of range for {self._len} windows")
        return idx

    def batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """Stacked windows ``indices`` as a dict of tensors with a leading batch dimension.

        One compiled pass copies the rows of every window straight into the output tensors (no intermediate
        copies); :meth:`_batch_reference` is the plain-numpy statement of the same rules.
        """
        idx = self._check_indices(indices)
        B, L, P, Q, S = idx.size, self.seq_len, self.label_len, self.pred_len, self.num_stations
        starts = self._start0 + idx * self.stride
        out = {
            "x": torch.empty((B, L, S), dtype=torch.float32),
            "y": torch.empty((B, P + Q, S), dtype=torch.float32),
            "x_mask": torch.empty((B, L, S), dtype=torch.bool),
            "y_mask": torch.empty((B, P + Q, S), dtype=torch.bool),
        }
        if B:
            _gather_windows(
                self.values, self.mask, self.observed, starts, L, P, Q, self.max_gap,
                out["x"].numpy(), out["x_mask"].numpy(), out["y"].numpy(), out["y_mask"].numpy(),
            )  # fmt: skip
        if self.inputs:
            out["x_cov"], out["x_cov_mask"] = self._covariate_batch(starts)
        out["x_mark"] = torch.from_numpy(self.marks[starts[:, None] + np.arange(L)])
        out["y_mark"] = torch.from_numpy(self.marks[starts[:, None] + np.arange(L - P, L + Q)])
        out["index"] = torch.from_numpy(idx)
        keys = ("x", "x_mark", "y", "y_mark", "x_mask", "y_mask", "index") + (("x_cov", "x_cov_mask") if self.inputs
                                                                               else ())
        return {k: out[k] for k in keys}

    def _covariate_batch(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_cov``/``x_cov_mask`` (B, seq_len, S, K) for windows starting at ``starts``: each covariate's inputs
        gathered by the same compiled pass (and rules) as ``x``/``x_mask``."""
        B, L, S = starts.size, self.seq_len, self.num_stations
        xs, ms = [], []
        none_f, none_b = np.empty((B, 0, S), np.float32), np.empty((B, 0, S), np.bool_)
        for values, mask, observed in self.cov:
            x, m = np.empty((B, L, S), np.float32), np.empty((B, L, S), np.bool_)
            if B:
                _gather_windows(values, mask, observed, starts, L, 0, 0, self.max_gap, x, m, none_f, none_b)
            xs.append(x)
            ms.append(m)
        return torch.from_numpy(np.stack(xs, axis=-1)), torch.from_numpy(np.stack(ms, axis=-1))

    def _batch_reference(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Plain-numpy version of :meth:`batch` (the specification the fast path is tested against)."""
        idx = self._check_indices(indices)
        B, L, P, Q = idx.size, self.seq_len, self.label_len, self.pred_len
        starts = self._start0 + idx * self.stride
        rows_x = starts[:, None] + np.arange(L)
        rows_p = starts[:, None] + np.arange(L, L + Q)
        x = self.values[rows_x]
        x_mask = self.mask[rows_x]
        if self.max_gap > 0 and B:
            self._hold_trailing_gaps(x, x_mask, starts)
        y = np.concatenate([x[:, L - P :], np.where(self.mask[rows_p], self.values[rows_p], np.nan)], axis=1)
        y_mask = np.concatenate([x_mask[:, L - P :], self.mask[rows_p]], axis=1)
        return {"x": x, "y": y.astype(np.float32), "x_mask": x_mask, "y_mask": y_mask}

    def _hold_trailing_gaps(self, x: np.ndarray, x_mask: np.ndarray, starts: np.ndarray) -> None:
        """Causal inputs: a gap still open at the end of ``x`` holds the last observation and is unobserved.

        Whether such a gap is short (interpolated) or long is only known after the window ends, so both get the
        same treatment; long ones already hold the last observation, so only gaps of at most ``max_gap`` change.
        """
        G, L = self.max_gap, self.seq_len
        last = starts + L - 1
        rows = last[:, None] - np.arange(G + 1)  # (B, G+1): rows e, e-1, ..., e-G
        tail = self.observed[np.maximum(rows, 0)] & (rows >= 0)[:, :, None]
        age = np.argmax(tail, axis=1)  # steps since the last observation; 0 = observed at e
        fix = (age > 0) & tail.any(axis=1)
        if not fix.any():
            return
        b, s = np.nonzero(fix)
        a = age[b, s]
        held = self.values[last[b] - a, s]
        for k in range(1, min(G, L) + 1):
            sel = a >= k
            x[b[sel], L - k, s[sel]] = held[sel]
            x_mask[b[sel], L - k, s[sel]] = False

    def __getitem__(self, i: int | Sequence[int] | np.ndarray) -> dict[str, torch.Tensor | int]:
        """One window (an int), or a whole batch (a list/array of ints, as a ``BatchSampler`` passes).

        ``DataLoader(ws, batch_size=None, sampler=BatchSampler(RandomSampler(ws), 32, False))`` thus gets the
        :meth:`batch` fast path instead of stacking 32 single windows.
        """
        n = self._len
        if isinstance(i, list | tuple | np.ndarray | torch.Tensor):
            return self.batch(np.asarray(i))
        if not isinstance(i, int | np.integer):
            raise TypeError(f"window index must be an int or a sequence of ints, got {type(i).__name__}")
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"window index {i} out of range for {n} windows")
        item: dict[str, torch.Tensor | int] = {k: v[0] for k, v in self.batch([j]).items()}
        item["index"] = j
        return item

    def iter_batches(
        self, batch_size: int = 32, shuffle: bool = False, seed: int | None = None, drop_last: bool = False
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield :meth:`batch` dicts over all windows (optionally shuffled with ``seed``)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        idx = np.random.default_rng(seed).permutation(self._len) if shuffle else np.arange(self._len)
        stop = self._len - (self._len % batch_size if drop_last else 0)
        for i in range(0, stop, batch_size):
            yield self.batch(idx[i : i + batch_size])

    def to_dataset_order(self, a: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Reorder the last (station) axis of ``a`` from model order back to the dataset's order."""
        return a[..., torch.as_tensor(self.inverse_order) if isinstance(a, torch.Tensor) else self.inverse_order]

    def __repr__(self) -> str:
        return (
            f"WindowDataset({self.variable!r}, windows={self._len}, stations={self.num_stations}, "
            f"seq_len={self.seq_len}, label_len={self.label_len}, pred_len={self.pred_len}, stride={self.stride}, "
            f"max_gap={self.max_gap}, " + (f"inputs={list(self.inputs)}, " if self.inputs else "") +
            f"times={self.times[0] if len(self.times) else None}.."
            f"{self.times[-1] if len(self.times) else None})"
        )
