"""What the baselines share: the :class:`Baseline` base of the :class:`~urlk_forecast.method.Method` contract and
the window helpers they forecast from.

A baseline is built with its settings -- the variable it forecasts among them (``Persistence(variable="wind_speed")``)
-- *fitted* once on the training split (``fit(train)``; ``val`` is accepted and ignored, no baseline selects on it)
and then *forecasts* ``pred_len`` steps from the history of each window of a
:class:`~urlk_forecast.data.windows.WindowSource` (``predict_windows(ws, indices)``). Every method is scored by the
one scorer (:func:`urlk_forecast.scoring.score_methods`, behind ``Method.evaluate``) on the same targets and masks.

Forecasts are ``np.ndarray`` of shape ``(N, pred_len, S)``, float32, in physical units (degC, m/s) with the stations
in the window source's *model order* (``ws.station_ids``). A method that cannot forecast a point returns NaN there
(never a silent zero); the scorer reports how many observed targets had no forecast.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import xarray as xr

from ..data.windows import WindowSource
from ..method import KINDS, Method
from ..scoring import resolve_indices, to_numpy

__all__ = [
    "KINDS",
    "Baseline",
    "WindowGeometry",
    "window_geometry",
    "resolve_indices",
    "window_arrays",
    "input_times",
    "target_times",
    "station_positions",
    "training_values",
    "to_numpy",
]


@dataclass(frozen=True)
class WindowGeometry:
    """Lengths (in time steps) and time step of a window source."""

    seq_len: int
    label_len: int
    pred_len: int
    freq: pd.Timedelta


def window_geometry(ws: WindowSource) -> WindowGeometry:
    """``seq_len``, ``label_len``, ``pred_len`` and the time step of a window source."""
    try:
        seq_len, label_len, pred_len = int(ws.seq_len), int(ws.label_len), int(ws.pred_len)
    except AttributeError as e:  # pragma: no cover - contract violation, say which
        raise TypeError(f"{type(ws).__name__} is not a WindowSource: missing attribute {e.name!r}") from e
    times = pd.DatetimeIndex(np.asarray(ws.times))
    if len(times) < 2:
        raise ValueError("window source has fewer than 2 time steps; cannot infer its time step")
    return WindowGeometry(seq_len, label_len, pred_len, pd.Timedelta(times[1] - times[0]))


def window_arrays(ws: WindowSource, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The numpy arrays of windows ``indices``: ``x``, ``x_mask`` (N, seq_len, S) and the *forecast* part of the
    target, ``y`` and ``y_mask`` (N, pred_len, S) -- the label_len overlap with ``x`` is dropped; for windows with
    covariates also ``u`` (N, seq_len, S, K), NaN where a covariate is not observed."""
    geo = window_geometry(ws)
    b = ws.batch(indices)
    x = to_numpy(b["x"]).astype(np.float32, copy=False)
    y = to_numpy(b["y"])[:, geo.label_len :].astype(np.float32, copy=False)
    y_mask = to_numpy(b["y_mask"])[:, geo.label_len :].astype(bool, copy=False)
    x_mask = to_numpy(b["x_mask"]).astype(bool, copy=False)
    out = {"x": x, "x_mask": x_mask, "y": y, "y_mask": y_mask}
    if "x_cov" in b:
        out["u"] = np.where(to_numpy(b["x_cov_mask"]).astype(bool), to_numpy(b["x_cov"]), np.nan).astype(np.float32)
    return out


def _window_starts(ws: WindowSource, indices: np.ndarray) -> np.ndarray:
    starts = np.asarray(ws.window_start_times)
    return starts[indices].astype("datetime64[ns]")


def input_times(ws: WindowSource, indices: np.ndarray) -> np.ndarray:
    """Times of the input steps of each window, ``datetime64[ns]`` of shape (N, seq_len)."""
    geo = window_geometry(ws)
    step = np.timedelta64(int(geo.freq.value), "ns")
    return _window_starts(ws, indices)[:, None] + np.arange(geo.seq_len)[None, :] * step


def target_times(ws: WindowSource, indices: np.ndarray) -> np.ndarray:
    """Valid times of the forecast steps of each window, ``datetime64[ns]`` of shape (N, pred_len)."""
    geo = window_geometry(ws)
    step = np.timedelta64(int(geo.freq.value), "ns")
    offs = geo.seq_len + np.arange(geo.pred_len)
    return _window_starts(ws, indices)[:, None] + offs[None, :] * step


def station_positions(fitted_ids: Sequence[str] | np.ndarray, wanted_ids: Sequence[str] | np.ndarray,
                      what: str = "baseline") -> np.ndarray:
    """Positions of ``wanted_ids`` in ``fitted_ids``; a station the method was not fitted on raises ValueError."""
    lookup = pd.Index([str(s) for s in fitted_ids])
    wanted = pd.Index([str(s) for s in wanted_ids])
    pos = lookup.get_indexer(wanted)
    if (pos < 0).any():
        missing = list(wanted[pos < 0][:5])
        raise ValueError(
            f"{what} was not fitted on {int((pos < 0).sum())} of the window dataset's stations "
            f"(e.g. {missing}); fit it on a training split with the same stations"
        )
    return pos.astype(np.int64)


def _check_train(train: object, variable: str) -> None:
    if not isinstance(train, xr.Dataset):
        raise TypeError(f"train must be an xarray.Dataset in the station schema, got {type(train).__name__}")
    if variable not in train.data_vars:
        raise ValueError(f"variable {variable!r} not in the training data; it has {sorted(train.data_vars)}")


def training_values(train: xr.Dataset, variable: str) -> tuple[np.ndarray, pd.DatetimeIndex, np.ndarray]:
    """``(values (T, S) float64, times, station ids)`` of ``variable`` in a schema dataset (NaN = missing)."""
    _check_train(train, variable)
    da = train[variable].transpose("time", "station")
    values = np.asarray(da.values, dtype=np.float64)
    times = pd.DatetimeIndex(np.asarray(train["time"].values))
    ids = np.asarray([str(s) for s in train["station"].values], dtype=object)
    if values.shape[0] == 0:
        raise ValueError("training data has no time steps")
    return values, times, ids




class Baseline(Method):
    """A baseline forecasting method: the :class:`~urlk_forecast.method.Method` contract plus the bookkeeping every
    baseline shares (see the module docstring).

    ``variable`` (keyword) is what it forecasts. Subclasses set ``name`` and ``kind`` (one of :data:`KINDS`) and
    implement :meth:`_fit` (learn from the training split), :meth:`predict_windows` and :attr:`n_params`;
    :meth:`fit` checks the training data and records the wall time in ``fit_seconds``.
    """

    name: str = "baseline"
    kind: ClassVar[str] = "statistical"
    #: whether the constructor takes ``quantiles=`` (the benchmark passes its levels to those that do)
    forecasts_quantiles: ClassVar[bool] = False

    def __init__(self, *, variable: str = "temperature") -> None:
        if not isinstance(variable, str) or not variable:
            raise TypeError(f"variable must be a variable name (str), got {variable!r}")
        self.variable = variable
        self.station_ids: np.ndarray | None = None
        self.fit_seconds: float | None = None

    def fit(self, train: xr.Dataset, val: xr.Dataset | None = None) -> Baseline:
        """Fit on the training split of ``self.variable`` (``val`` is ignored: no baseline selects on it); ``self``.

        ``fit_seconds`` becomes the wall time of this call.
        """
        if val is not None and not isinstance(val, xr.Dataset):
            raise TypeError(f"val must be an xarray.Dataset or None, got {type(val).__name__}; the variable is a "
                            f"constructor setting: {type(self).__name__}(variable=...).fit(train)")
        _check_train(train, self.variable)
        t0 = time.perf_counter()
        self._fit(train)
        self.fit_seconds = time.perf_counter() - t0
        return self

    @abstractmethod
    def _fit(self, train: xr.Dataset) -> None:
        """Learn from the training split (already checked to hold ``self.variable``)."""

    @abstractmethod
    def predict_windows(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Forecast ``pred_len`` steps for windows ``indices`` of ``ws``: (N, pred_len, S) float32, physical units,
        stations in ``ws`` model order."""

    # -- shared helpers -------------------------------------------------------------------------------------------
    def _begin_fit(self, train: xr.Dataset) -> tuple[np.ndarray, pd.DatetimeIndex, np.ndarray]:
        """The training values of ``self.variable`` (see :func:`training_values`); records the stations."""
        values, times, ids = training_values(train, self.variable)
        self.station_ids = ids
        return values, times, ids

    def _record_stations(self, train: xr.Dataset) -> None:
        """Like ``_begin_fit`` for methods that learn nothing from the values (no copy of the data)."""
        self.station_ids = np.asarray([str(s) for s in train["station"].values], dtype=object)

    def _check_ready(self, ws: WindowSource) -> np.ndarray:
        """Raise if not fitted or the windows are of another variable; return the positions of ``ws``'s stations."""
        if self.station_ids is None:
            raise RuntimeError(f"{self.name}: call fit(train) before predict_windows")
        ws_var = getattr(ws, "variable", None)
        if ws_var is not None and ws_var != self.variable:
            raise ValueError(f"{self.name} forecasts {self.variable!r} but the windows are {ws_var!r}")
        return station_positions(self.station_ids, ws.station_ids, self.name)

    def __repr__(self) -> str:
        state = f"fitted, {len(self.station_ids)} stations" if self.station_ids is not None else "not fitted"
        return f"{type(self).__name__}(variable={self.variable!r}, {state})"
