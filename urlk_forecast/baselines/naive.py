"""Reference forecasts that need (almost) no fitting: persistence, seasonal naive and climatology.

All three are a gather over the window arrays, vectorised over windows and stations at once.

Quantiles (persistence and seasonal naive, ``quantiles=(0.1, 0.5, 0.9)``): the empirical distribution of the
method's own errors on the training split, per lead time and station -- the error at lead ``h`` is
``v[t] - v[t - lag_h]`` (``lag_h = h`` for persistence, the season multiple it copies for the seasonal naive), over up
to 2000 evenly spaced training targets (:func:`~urlk_forecast.baselines.quantiles.lagged_error_quantiles`) -- added
to the point forecast. The point forecast is then the median (the contract): the copied value plus the median
training error at that lead (about zero for a symmetric error distribution). ``max_horizon`` bounds the leads
estimated. Without ``quantiles`` nothing is estimated and the forecasts are exactly the copied values.
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
from .quantiles import lagged_error_quantiles, with_median

__all__ = ["Persistence", "SeasonalNaive", "Climatology"]


class _CopyForecast(Baseline):
    """A forecast that copies an input value per lead, with empirical training-error quantiles (module docstring).

    Subclasses implement :meth:`_lags` (how far back each lead copies from) and :meth:`_copied` (the copied values).
    """

    forecasts_quantiles = True

    def __init__(self, quantiles: Sequence[float] | None = None, max_horizon: int = 24, *,
                 variable: str = "temperature") -> None:
        super().__init__(variable=variable)
        self.quantiles, self._levels, self._median = with_median(quantiles)
        if int(max_horizon) < 1:
            raise ValueError(f"max_horizon must be >= 1, got {max_horizon}")
        self.max_horizon = int(max_horizon)
        self.error_quantiles: np.ndarray | None = None  # (max_horizon, S, len(_levels)), training station order

    def _lags(self, horizon: int, freq: pd.Timedelta) -> np.ndarray:
        """Steps back from each target (leads 1..horizon) to the value the forecast copies."""
        raise NotImplementedError

    def _copied(self, ws: WindowSource, idx: np.ndarray) -> np.ndarray:
        """(N, pred_len, S) float32: the copied input values."""
        raise NotImplementedError

    def _fit(self, train: xr.Dataset) -> None:
        """Record the stations; with quantiles, the training errors' quantiles per lead and station."""
        self.error_quantiles = None
        if self.quantiles is None:
            self._record_stations(train)
            return
        values, times, _ = self._begin_fit(train)
        if len(times) < 2:
            raise ValueError(f"{self.name} needs at least 2 training time steps to estimate its error quantiles")
        lags = self._lags(self.max_horizon, pd.Timedelta(times[1] - times[0]))
        self.error_quantiles = lagged_error_quantiles(values, lags, self._levels)

    def _errors(self, ws: WindowSource) -> np.ndarray:
        """(pred_len, S, levels) error quantiles for the windows' stations."""
        pos = self._check_ready(ws)
        assert self.error_quantiles is not None
        H = window_geometry(ws).pred_len
        if H > self.max_horizon:
            raise ValueError(f"{self.name} estimated its error quantiles for leads up to {self.max_horizon}, the "
                             f"windows ask for {H}; construct it with max_horizon >= {H}")
        return self.error_quantiles[:H, pos].astype(np.float32)

    def predict_windows(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(N, pred_len, S): the copied values (plus the median training error at each lead with quantiles)."""
        self._check_ready(ws)
        point = self._copied(ws, resolve_indices(ws, indices))
        if self.quantiles is None:
            return point
        return point + self._errors(ws)[None, :, :, self._median]

    def predict_quantiles(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(N, pred_len, S, Q): the copied values plus the training errors' quantiles at each lead (sorted)."""
        if self.quantiles is None:
            return super().predict_quantiles(ws, indices)
        err = self._errors(ws)[..., [self._levels.index(v) for v in self.quantiles]]
        point = self._copied(ws, resolve_indices(ws, indices))
        return np.sort(point[..., None] + err[None], axis=-1)

    @property
    def n_params(self) -> int:
        """0; with quantiles the estimated error quantiles (lead x station x level)."""
        return 0 if self.error_quantiles is None else int(self.error_quantiles.size)


class Persistence(_CopyForecast):
    """Last input value repeated over the horizon (the "no change" forecast).

    The last input value is the window's ``x[-1]``; where the last observation is missing, the window dataset has
    already held the last observed value there (its documented fill), which is what persistence means.
    ``quantiles``: see the module docstring (the error at lead ``h`` is ``v[t] - v[t - h]``).
    """

    name = "Persistence"
    kind = "statistical"

    def _lags(self, horizon: int, freq: pd.Timedelta) -> np.ndarray:
        return np.arange(1, horizon + 1)

    def _copied(self, ws: WindowSource, idx: np.ndarray) -> np.ndarray:
        """(N, pred_len, S): ``x[:, -1]`` for every lead."""
        geo = window_geometry(ws)
        x = window_arrays(ws, idx)["x"]
        return np.repeat(x[:, -1:, :], geo.pred_len, axis=1).astype(np.float32, copy=False)


class SeasonalNaive(_CopyForecast):
    """The value one season earlier: lead ``h`` (0-based) is ``x[seq_len - m + (h mod m)]`` with ``m`` the season
    length in steps (24 for a daily season of hourly data), i.e. the last observed season repeated.

    ``period`` is a duration (``"1D"``, ``"24h"``, a :class:`pandas.Timedelta`) converted with the data's time step,
    an int number of steps, or None (the default): from the data's step, one day of sub-daily steps (24 for hourly,
    144 for 10-minute data), a week of daily steps (7). The window must hold at least one season (``seq_len >= m``).
    ``quantiles``: see the module docstring (the error at lead ``h`` is ``v[t] - v[t - m (1 + floor((h - 1) / m))]``).
    """

    name = "Seasonal naive"
    kind = "statistical"

    def __init__(self, period: str | pd.Timedelta | int | None = None, quantiles: Sequence[float] | None = None,
                 max_horizon: int = 24, *, variable: str = "temperature") -> None:
        super().__init__(quantiles, max_horizon, variable=variable)
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

    def _lags(self, horizon: int, freq: pd.Timedelta) -> np.ndarray:
        m = self.season_steps(freq)
        return m * (np.arange(horizon) // m + 1)

    def _copied(self, ws: WindowSource, idx: np.ndarray) -> np.ndarray:
        """(N, pred_len, S): the last season of the input, repeated."""
        geo = window_geometry(ws)
        m = self.season_steps(geo.freq)
        if m > geo.seq_len:
            raise ValueError(f"seasonal naive needs seq_len >= its season ({describe_steps(m, geo.freq)} = {m} steps), "
                             f"got seq_len={geo.seq_len}")
        x = window_arrays(ws, idx)["x"]
        src = geo.seq_len - m + (np.arange(geo.pred_len) % m)
        return np.ascontiguousarray(x[:, src, :], dtype=np.float32)


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
