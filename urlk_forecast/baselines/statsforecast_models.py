"""statsforecast's ``AutoETS`` and ``MSTL`` as :class:`~urlk_forecast.method.Method`\\ s (optional extra ``peers``).

The real library's models, as a reference beside our own Holt-Winters:

* **Fit** once per station on that station's training history (gap-filled like the window inputs,
  :func:`~urlk_forecast.data.windows.fill_gaps`; statsforecast needs complete series). ``AutoETS(season_length=24)``
  selects the ETS form by AICc and estimates it; ``MSTL(season_length=24)`` decomposes with STL and fits an
  ``AutoETS(model="ZZN")`` to the trend + remainder.
* **Forecast** each window with the fitted model's ``forward(y, h)`` (the fitted model applied to new data, no
  re-estimation) on the station's history up to the window's origin, whose last ``seq_len`` steps are the window's
  own ``x`` (the same input every method sees). The history is the training and validation data seen in
  :meth:`fit` followed by the window source's own series (rebuilt from non-overlapping windows' inputs), on one
  regular time axis; hours none of them covers are held. ``history`` caps it to the recent steps: AutoETS uses the
  whole history by default (``forward`` restarts from the states fitted at the first training hour, so the series
  must start there for the seasonal states to keep their hour of day; ~0.2 ms per window and station for 7000 h),
  MSTL the last 4 weeks (its STL decomposition is re-run per window: ~11 ms at 672 h, ~95 ms at 7000 h).
* A ``forward`` that fails or returns non-finite values (e.g. a multiplicative model meeting a non-positive value)
  falls back to the last input value; ``fallbacks`` counts them. A station without training data, or a window with
  no observed input, gets NaN.
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import xarray as xr

from ..data.windows import WindowSource, fill_gaps
from ..method import Method
from ..scoring import resolve_indices

__all__ = ["AutoETSMethod", "MSTLMethod", "StatsForecastMethod", "statsforecast_available", "source_series"]


def statsforecast_available() -> bool:
    """Whether the optional ``statsforecast`` package is installed (extra ``peers``)."""
    return importlib.util.find_spec("statsforecast") is not None


def _statsforecast_models() -> Any:
    # statsforecast (numba-compiled, seconds to import) loads only when a model is built: an optional dependency
    try:
        import statsforecast.models as sf_models
    except ImportError as e:
        raise ImportError("the statsforecast methods need statsforecast: pip install 'urlk-forecast[peers]'") from e
    return sf_models


def _numpy(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def source_series(ws: WindowSource) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """The window source's own input series ``(times, values (T, S))``, model order, rebuilt from the inputs ``x``
    of non-overlapping windows (plus the last window); times no input covers are NaN."""
    n = len(ws)
    times = pd.DatetimeIndex(np.asarray(ws.times))
    if n == 0:
        return times, np.full((len(times), ws.num_stations), np.nan)
    starts = pd.DatetimeIndex(np.asarray(ws.window_start_times))
    step = times[1] - times[0]
    span = ws.seq_len * step
    pick, nxt = [], starts[0]
    for i, t in enumerate(starts):
        if t >= nxt:
            pick.append(i)
            nxt = t + span
    if pick[-1] != n - 1:
        pick.append(n - 1)
    x = _numpy(ws.batch(np.asarray(pick))["x"]).astype(np.float64)
    out = np.full((len(times), ws.num_stations), np.nan)
    rows = times.get_indexer(starts[pick])
    for k, r in enumerate(rows):
        out[r:r + ws.seq_len] = x[k]
    return times, out


class StatsForecastMethod(Method):
    """Shared machinery of the statsforecast methods (see the module docstring); subclasses build the model."""

    kind: ClassVar[str] = "statistical"
    default_history: ClassVar[int | None] = None

    def __init__(self, *, variable: str = "temperature", season_length: int = 24, history: int | None | str = "default",
                 max_gap: int = 3) -> None:
        self.variable = variable
        self.season_length = int(season_length)
        self.history = self.default_history if history == "default" else (None if history is None else int(history))
        if self.history is not None and self.history < 1:
            raise ValueError(f"history must be a positive number of steps or None, got {history}")
        self.max_gap = int(max_gap)
        self.fit_seconds: float | None = None
        self.station_ids: np.ndarray | None = None
        self.models: list[Any] = []
        self.fallbacks = 0
        self._axis: pd.DatetimeIndex | None = None
        self._series: np.ndarray | None = None

    @abstractmethod
    def _new_model(self) -> Any:
        """An unfitted statsforecast model."""

    @staticmethod
    @abstractmethod
    def _model_params(model: Any) -> int:
        """Number of fitted parameters of one station's model."""

    def fit(self, train: xr.Dataset, val: xr.Dataset | None = None) -> StatsForecastMethod:
        """Fit one model per station on its training history; keep train (+ val) as forecast history; ``self``."""
        if self.variable not in train.data_vars:
            raise ValueError(f"variable {self.variable!r} not in the training data; it has {sorted(train.data_vars)}")
        t0 = time.perf_counter()
        self.station_ids = np.asarray([str(s) for s in train["station"].values], dtype=object)
        times = pd.DatetimeIndex(train["time"].values)
        end = times[-1] if val is None or val.sizes["time"] == 0 else max(times[-1], pd.Timestamp(val.time.values[-1]))
        self._axis = pd.date_range(times[0], end, freq=times[1] - times[0])
        raw = train[self.variable].transpose("time", "station").to_pandas().reindex(self._axis).to_numpy(np.float64)
        if val is not None:
            v = val[self.variable].transpose("time", "station").to_pandas()
            v.columns = [str(c) for c in v.columns]
            v = v.reindex(index=self._axis, columns=list(self.station_ids)).to_numpy(np.float64)
            raw = np.where(np.isnan(raw), v, raw)
        self._series = fill_gaps(raw, self.max_gap)[0].astype(np.float64)
        n_train = len(times)
        self.models = []
        for s in range(len(self.station_ids)):
            y = self._series[:n_train, s]
            if not np.isfinite(y).all():
                self.models.append(None)  # never observed in training
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.models.append(self._new_model().fit(y=y))
        self.fit_seconds = time.perf_counter() - t0
        return self

    def _history(self, ws: WindowSource, pos: np.ndarray) -> tuple[pd.DatetimeIndex, np.ndarray]:
        """Fitted history + the window source's series on one regular axis, fitted station order (held gaps)."""
        assert self._axis is not None and self._series is not None
        times, own = source_series(ws)
        step = self._axis[1] - self._axis[0]
        axis = pd.date_range(min(self._axis[0], times[0]), max(self._axis[-1], times[-1]), freq=step)
        out = np.full((len(axis), len(self.station_ids)), np.nan)
        out[axis.get_indexer(self._axis)] = self._series
        rows = axis.get_indexer(times)
        if (rows < 0).any():
            raise ValueError(f"{self.name}: the windows' time step differs from the training data's ({step})")
        fresh = out[rows]
        fresh[:, pos] = np.where(np.isnan(own), fresh[:, pos], own)
        out[rows] = fresh
        return axis, fill_gaps(out, self.max_gap)[0].astype(np.float64)

    def predict_windows(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(N, pred_len, S) float32: ``forward`` on each station's history up to each window's origin."""
        if self.station_ids is None:
            raise RuntimeError(f"{self.name}: call fit(train) before predict_windows")
        if getattr(ws, "variable", self.variable) != self.variable:
            raise ValueError(f"{self.name} forecasts {self.variable!r} but the windows are {ws.variable!r}")
        lookup = pd.Index(list(self.station_ids))
        pos = lookup.get_indexer(pd.Index([str(s) for s in ws.station_ids]))
        if (pos < 0).any():
            raise ValueError(f"{self.name} was not fitted on stations {list(np.asarray(ws.station_ids)[pos < 0][:5])}")
        idx = resolve_indices(ws, indices)
        L, H = ws.seq_len, ws.pred_len
        out = np.full((idx.size, H, ws.num_stations), np.nan, np.float32)
        if idx.size == 0:
            return out
        axis, hist = self._history(ws, pos)
        b = ws.batch(idx)
        x = _numpy(b["x"]).astype(np.float64)
        xm = _numpy(b["x_mask"]).astype(bool)
        origins = axis.get_indexer(pd.DatetimeIndex(np.asarray(ws.forecast_start_times))[idx])
        first = int(axis.get_indexer(self._axis[:1])[0])
        for n, o in enumerate(origins):
            lo = first if self.history is None else max(0, o - self.history)
            for s, p in enumerate(pos):
                model = self.models[p]
                if model is None or not xm[n, :, s].any() or not np.isfinite(x[n, :, s]).all():
                    continue
                y = np.concatenate([hist[lo:o - L, p], x[n, :, s]])
                out[n, :, s] = self._forward(model, y, H)
        return out

    def _forward(self, model: Any, y: np.ndarray, h: int) -> np.ndarray:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                f = np.asarray(model.forward(y=y, h=h)["mean"], dtype=np.float64)
            if f.shape == (h,) and np.isfinite(f).all():
                return f
        except Exception:  # noqa: BLE001 - any library failure on one series falls back, counted
            pass
        self.fallbacks += 1
        return np.full(h, y[-1])

    @property
    def n_params(self) -> int:
        """Fitted parameters of all stations' models (0 before fit)."""
        return int(sum(self._model_params(m) for m in self.models if m is not None))

    def __repr__(self) -> str:
        state = f"fitted, {len(self.station_ids)} stations" if self.station_ids is not None else "not fitted"
        return f"{type(self).__name__}(variable={self.variable!r}, {state})"


def _ets_params(model_: dict[str, Any]) -> int:
    """Smoothing parameters + initial states of one fitted ETS model (statsforecast's ``model_`` dict)."""
    return int(np.isfinite(np.asarray(model_["par"], dtype=np.float64)).sum())


class AutoETSMethod(StatsForecastMethod):
    """statsforecast ``AutoETS(season_length=24)`` per station (whole history by default)."""

    name = "AutoETS (statsforecast)"
    default_history = None

    def _new_model(self) -> Any:
        return _statsforecast_models().AutoETS(season_length=self.season_length)

    @staticmethod
    def _model_params(model: Any) -> int:
        return _ets_params(model.model_)

    def components(self) -> list[str | None]:
        """The selected ETS form per station (error, trend, season, damping: e.g. ``"AAAN"``)."""
        return [None if m is None else str(m.model_["components"]) for m in self.models]


class MSTLMethod(StatsForecastMethod):
    """statsforecast ``MSTL(season_length=24)`` with an ``AutoETS(model="ZZN")`` trend, per station (last 4 weeks)."""

    name = "MSTL (statsforecast)"
    default_history = 24 * 28

    def _new_model(self) -> Any:
        m = _statsforecast_models()
        return m.MSTL(season_length=self.season_length, trend_forecaster=m.AutoETS(model="ZZN"))

    @staticmethod
    def _model_params(model: Any) -> int:
        return _ets_params(model.trend_forecaster.model_) + int(np.sum(np.atleast_1d(model.season_length)))
