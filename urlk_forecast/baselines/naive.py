"""Reference forecasts that need (almost) no fitting: persistence, seasonal naive and climatology.

All three are a gather over the window arrays, vectorised over windows and stations at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from ..data.windows import WindowSource
from ..utils import describe_steps
from ..utils.steps import default_season
from .base import Baseline, resolve_indices, target_times, window_arrays, window_geometry

__all__ = ["Persistence", "SeasonalNaive", "Climatology"]


class Persistence(Baseline):
    """Last input value repeated over the horizon (the "no change" forecast).

    The last input value is the window's ``x[-1]``; where the last observation is missing, the window dataset has
    already held the last observed value there (its documented fill), which is what persistence means.
    """

    name = "Persistence"
    kind = "statistical"

    def _fit(self, train: xr.Dataset) -> None:
        """Record the stations (nothing to estimate)."""
        self._record_stations(train)

    def predict_windows(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(N, pred_len, S): ``x[:, -1]`` for every lead."""
        self._check_ready(ws)
        geo = window_geometry(ws)
        x = window_arrays(ws, resolve_indices(ws, indices))["x"]
        return np.repeat(x[:, -1:, :], geo.pred_len, axis=1).astype(np.float32, copy=False)

    @property
    def n_params(self) -> int:
        return 0


class SeasonalNaive(Baseline):
    """The value one season earlier: lead ``h`` (0-based) is ``x[seq_len - m + (h mod m)]`` with ``m`` the season
    length in steps (24 for a daily season of hourly data), i.e. the last observed season repeated.

    ``period`` is a duration (``"1D"``, ``"24h"``, a :class:`pandas.Timedelta`) converted with the data's time step,
    an int number of steps, or None (the default): from the data's step, one day of sub-daily steps (24 for hourly,
    144 for 10-minute data), a week of daily steps (7). The window must hold at least one season (``seq_len >= m``).
    """

    name = "Seasonal naive"
    kind = "statistical"

    def __init__(self, period: str | pd.Timedelta | int | None = None, *, variable: str = "temperature") -> None:
        super().__init__(variable=variable)
        self.period = period

    def season_steps(self, freq: pd.Timedelta) -> int:
        """The season length in time steps of ``freq``."""
        if self.period is None:
            return default_season(freq)
        if isinstance(self.period, (int, np.integer)):
            m = int(self.period)
        else:
            p = pd.Timedelta(self.period)
            m = int(round(p / freq))
            if m <= 0 or abs(m * freq - p) > pd.Timedelta(0):
                raise ValueError(f"period {self.period!r} is not a whole number of time steps of {freq}")
        if m <= 0:
            raise ValueError(f"season length must be positive, got {m}")
        return m

    def label(self, freq: pd.Timedelta | str | None) -> str:
        """The method with its season in the data's terms: ``Seasonal naive (24 h)`` on hourly data,
        ``Seasonal naive (1 day)`` on daily data, ``Seasonal naive (144 x 10 min)`` on 10-minute data."""
        if freq is None:
            return f"{self.name} ({self.period if self.period is not None else 'a day, or a week of daily steps'})"
        return f"{self.name} ({describe_steps(self.season_steps(pd.Timedelta(freq)), freq)})"

    def _fit(self, train: xr.Dataset) -> None:
        """Record the stations (nothing to estimate)."""
        self._record_stations(train)

    def predict_windows(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(N, pred_len, S): the last season of the input, repeated."""
        self._check_ready(ws)
        geo = window_geometry(ws)
        m = self.season_steps(geo.freq)
        if m > geo.seq_len:
            raise ValueError(f"seasonal naive needs seq_len >= its season ({describe_steps(m, geo.freq)} = {m} steps), "
                             f"got seq_len={geo.seq_len}")
        x = window_arrays(ws, resolve_indices(ws, indices))["x"]
        src = geo.seq_len - m + (np.arange(geo.pred_len) % m)
        return np.ascontiguousarray(x[:, src, :], dtype=np.float32)

    @property
    def n_params(self) -> int:
        return 0


class Climatology(Baseline):
    """Per-station hour-of-day mean of the training split (``24 x S`` parameters for hourly data).

    Hours a station never observed in training fall back to that station's overall training mean; a station with
    no training observation at all forecasts NaN (reported as unforecast by the scorer, never a zero).
    """

    name = "Climatology"
    kind = "statistical"

    def __init__(self, *, variable: str = "temperature") -> None:
        super().__init__(variable=variable)
        self.table: np.ndarray | None = None  # (24, S) float32

    def _fit(self, train: xr.Dataset) -> None:
        """Hour-of-day means per station (NaN-aware)."""
        values, times, _ = self._begin_fit(train)
        hours = np.asarray(times.hour)
        obs = np.isfinite(values)
        filled = np.where(obs, values, 0.0)
        sums = np.zeros((24, values.shape[1]))
        counts = np.zeros((24, values.shape[1]))
        for h in np.unique(hours):
            rows = hours == h
            sums[h] = filled[rows].sum(0)
            counts[h] = obs[rows].sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            table = sums / counts
            overall = filled.sum(0) / obs.sum(0)
        table = np.where(counts > 0, table, overall[None, :])
        self.table = table.astype(np.float32)

    def predict_windows(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(N, pred_len, S): the hour-of-day mean at each target time."""
        pos = self._check_ready(ws)
        assert self.table is not None
        idx = resolve_indices(ws, indices)
        hours = pd.DatetimeIndex(target_times(ws, idx).ravel()).hour.to_numpy().reshape(idx.size, -1)
        return self.table[:, pos][hours]

    @property
    def n_params(self) -> int:
        return 0 if self.table is None else int(self.table.size)
