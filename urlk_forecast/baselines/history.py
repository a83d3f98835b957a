"""The observed history before each window's forecast origin, for methods that condition on the recent past.

A forecaster at an origin has the observations up to it -- the recent weeks, not only a window's ``seq_len``
inputs. :class:`KeptHistory` assembles that history for windows ``idx`` of a window source:

* the window source's own series where it carries one (a :class:`~urlk_forecast.data.windows.WindowDataset` holds
  its whole ``(T, S)`` ``values`` with the ``observed`` mask): only the raw observations are used, never the
  interpolated values of short gaps (an interpolated value is computed from the observation *after* the gap);
* extended backwards by the tails of the splits seen at fit time (:meth:`KeptHistory.keep`: the last ``hours``
  steps of the training split, and of the validation split where the method gets one), so that the first windows
  of a later split also have their weeks of history;
* a window source without a series gives each window only its own inputs (``x`` where ``x_mask``).

Only the rows before each window's origin are meant to be read (``values[max(lo, origin - hours):origin]``); no
method looks past it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..data.windows import WindowSource
from .base import input_times, training_values, window_arrays, window_geometry

__all__ = ["History", "KeptHistory"]


@dataclass(frozen=True)
class History:
    """Observed values before the forecast origins of some windows.

    ``values`` (T, S) float32, NaN where nothing was observed, stations in the window source's model order;
    ``times`` (T,) datetime64[ns] of the rows (consecutive steps between ``lo`` and ``origins`` of each window);
    ``origins`` (N,) the row of each window's first forecast step; ``lo`` (N,) the first row a window may read.
    """

    values: np.ndarray
    times: np.ndarray
    origins: np.ndarray
    lo: np.ndarray

    def start(self, hours: int) -> np.ndarray:
        """(N,) the first row of each window's last ``hours`` steps of history."""
        return np.maximum(self.lo, self.origins - int(hours))


def _has_series(ws: Any) -> bool:
    return all(hasattr(ws, a) for a in ("values", "observed", "starts", "times"))


class KeptHistory:
    """Tails of the fit-time splits plus the window source's own series: see the module docstring.

    ``hours``: the steps of history kept from each split and assembled before the earliest origin.
    """

    def __init__(self, hours: int) -> None:
        if int(hours) < 1:
            raise ValueError(f"history hours must be >= 1, got {hours}")
        self.hours = int(hours)
        self.segments: list[tuple[np.ndarray, np.ndarray]] = []  # (times ns int64, values (T, S) float32)

    def clear(self) -> None:
        """Forget every kept tail (a new fit)."""
        self.segments = []

    def keep(self, part: xr.Dataset, variable: str, station_ids: np.ndarray) -> None:
        """Keep the last ``hours`` steps of ``part`` (a split), stations in ``station_ids`` order (NaN where absent)."""
        values, times, ids = training_values(part.isel(time=slice(-self.hours, None)), variable)
        out = np.full((values.shape[0], len(station_ids)), np.nan, np.float32)
        where = pd.Index(ids).get_indexer(pd.Index([str(s) for s in station_ids]))
        out[:, where >= 0] = values[:, where[where >= 0]]
        self.segments.append((times.values.astype("datetime64[ns]").astype(np.int64), out))

    def _before(self, start_ns: int, step_ns: int, n_pre: int, pos: np.ndarray) -> np.ndarray:
        """(n_pre, len(pos)) kept values at the ``n_pre`` steps before ``start_ns`` (NaN where none kept)."""
        pre = np.full((n_pre, pos.size), np.nan, np.float32)
        first = start_ns - n_pre * step_ns
        for t_ns, vals in self.segments:
            off = t_ns - first
            rows = off // step_ns
            sel = (off % step_ns == 0) & (rows >= 0) & (rows < n_pre)
            pre[rows[sel]] = vals[sel][:, pos]
        return pre

    def assemble(self, ws: WindowSource, idx: np.ndarray, pos: np.ndarray) -> History:
        """The history of windows ``idx`` of ``ws``; ``pos``: positions of ``ws``'s stations in the kept arrays."""
        idx = np.asarray(idx, np.int64)
        if _has_series(ws):
            return self._from_series(ws, idx, pos)
        arr = window_arrays(ws, idx)
        n, seq_len, s = arr["x"].shape
        vals = np.where(arr["x_mask"], arr["x"], np.float32(np.nan)).reshape(n * seq_len, s)
        return History(vals, input_times(ws, idx).ravel(), (np.arange(n, dtype=np.int64) + 1) * seq_len,
                       np.arange(n, dtype=np.int64) * seq_len)

    def _from_series(self, ws: Any, idx: np.ndarray, pos: np.ndarray) -> History:
        geo = window_geometry(ws)
        step = np.timedelta64(int(geo.freq.value), "ns")
        origins = np.asarray(ws.starts(idx), np.int64) + geo.seq_len
        first = int(origins.min()) if idx.size else 0
        lo_row = max(0, first - self.hours)
        n_pre = max(0, self.hours - first)
        rows = slice(lo_row, int(origins.max()) if idx.size else 0)
        own = np.where(np.asarray(ws.observed[rows]), np.asarray(ws.values[rows], np.float32), np.float32(np.nan))
        times = np.asarray(ws.times, dtype="datetime64[ns]")
        pre = self._before(int(times[0].astype(np.int64)), int(geo.freq.value), n_pre, pos) if n_pre else own[:0]
        vals = np.concatenate([pre, own], axis=0)
        t = times[lo_row] - n_pre * step + np.arange(vals.shape[0]) * step
        return History(vals, t, origins - lo_row + n_pre, np.zeros(idx.size, np.int64))
