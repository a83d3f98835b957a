"""The one forecasting interface shared by every baseline and the neural model.

Vocabulary follows Nixtla's: a method is *fitted* once on the training split (``fit(train, variable)``) and then
*forecasts* ``pred_len`` steps from the history of each evaluation window (``predict_windows(ws, indices)``).
Windows come from :class:`urlk_forecast.data.windows.WindowDataset`, so every method -- persistence, Holt-Winters,
GBDT, GFS and the UniRepLKNet ``Forecaster`` alike -- sees exactly the same inputs and is scored on exactly the same
targets and masks by :func:`score_windows` (the shared metrics of :mod:`urlk_forecast.metrics`).

Forecasts are ``np.ndarray`` of shape ``(N, pred_len, S)``, float32, in physical units (degC, m/s) with the stations
in the window dataset's *model order* (``ws.station_ids``). A method that cannot forecast a point returns NaN there
(never a silent zero); :func:`score_windows` reports how many scored points had no forecast.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import xarray as xr

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
    "score_windows",
    "to_numpy",
]

#: The method families of the paper's Table 12 "type" column.
KINDS: tuple[str, ...] = ("statistical", "ML", "NWP", "neural")


@dataclass(frozen=True)
class WindowGeometry:
    """Lengths (in time steps) and time step of a window dataset."""

    seq_len: int
    label_len: int
    pred_len: int
    freq: pd.Timedelta


def to_numpy(a: Any) -> np.ndarray:
    """A torch tensor or array-like as a numpy array (no copy when already numpy)."""
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def window_geometry(ws: Any) -> WindowGeometry:
    """``seq_len``, ``label_len``, ``pred_len`` and the time step of a :class:`WindowDataset`."""
    try:
        seq_len, label_len, pred_len = int(ws.seq_len), int(ws.label_len), int(ws.pred_len)
    except AttributeError as e:  # pragma: no cover - contract violation, say which
        raise TypeError(f"{type(ws).__name__} is not a WindowDataset: missing attribute {e.name!r}") from e
    times = pd.DatetimeIndex(np.asarray(ws.times))
    if len(times) < 2:
        raise ValueError("window dataset has fewer than 2 time steps; cannot infer its time step")
    return WindowGeometry(seq_len, label_len, pred_len, pd.Timedelta(times[1] - times[0]))


def resolve_indices(ws: Any, indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
    """Window indices as an int64 array (``None`` = all windows); out-of-range indices raise IndexError."""
    n = len(ws)
    if indices is None:
        return np.arange(n, dtype=np.int64)
    idx = np.asarray(indices)
    if idx.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        bad = idx[(idx < -n) | (idx >= n)][0]
        raise IndexError(f"window index {int(bad)} out of range for {n} windows")
    return np.where(idx < 0, idx + n, idx)


def window_arrays(ws: Any, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The numpy arrays of windows ``indices``: ``x``, ``x_mask`` (N, seq_len, S) and the *forecast* part of the
    target, ``y`` and ``y_mask`` (N, pred_len, S) -- the label_len overlap with ``x`` is dropped."""
    geo = window_geometry(ws)
    b = ws.batch(indices)
    x = to_numpy(b["x"]).astype(np.float32, copy=False)
    y = to_numpy(b["y"])[:, geo.label_len :].astype(np.float32, copy=False)
    y_mask = to_numpy(b["y_mask"])[:, geo.label_len :].astype(bool, copy=False)
    x_mask = to_numpy(b["x_mask"]).astype(bool, copy=False)
    return {"x": x, "x_mask": x_mask, "y": y, "y_mask": y_mask}


def _window_starts(ws: Any, indices: np.ndarray) -> np.ndarray:
    starts = np.asarray(ws.window_start_times)
    return starts[indices].astype("datetime64[ns]")


def input_times(ws: Any, indices: np.ndarray) -> np.ndarray:
    """Times of the input steps of each window, ``datetime64[ns]`` of shape (N, seq_len)."""
    geo = window_geometry(ws)
    step = np.timedelta64(int(geo.freq.value), "ns")
    return _window_starts(ws, indices)[:, None] + np.arange(geo.seq_len)[None, :] * step


def target_times(ws: Any, indices: np.ndarray) -> np.ndarray:
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


def training_values(train: xr.Dataset, variable: str) -> tuple[np.ndarray, pd.DatetimeIndex, np.ndarray]:
    """``(values (T, S) float64, times, station ids)`` of ``variable`` in a schema dataset (NaN = missing)."""
    if not isinstance(train, xr.Dataset):
        raise TypeError(f"train must be an xarray.Dataset in the station schema, got {type(train).__name__}")
    if variable not in train.data_vars:
        raise ValueError(f"variable {variable!r} not in the training data; it has {sorted(train.data_vars)}")
    da = train[variable].transpose("time", "station")
    values = np.asarray(da.values, dtype=np.float64)
    times = pd.DatetimeIndex(np.asarray(train["time"].values))
    ids = np.asarray([str(s) for s in train["station"].values], dtype=object)
    if values.shape[0] == 0:
        raise ValueError("training data has no time steps")
    return values, times, ids


class Baseline(ABC):
    """A forecasting method with the shared interface (see the module docstring).

    Subclasses set ``name`` and ``kind`` (one of :data:`KINDS`) and implement :meth:`fit`, :meth:`predict_windows`
    and :attr:`n_params` (the parameter count shown in the Table 12 parameters column).
    """

    name: ClassVar[str] = "baseline"
    kind: ClassVar[str] = "statistical"

    def __init__(self) -> None:
        self.variable: str | None = None
        self.station_ids: np.ndarray | None = None
        self.fit_seconds: float | None = None

    @abstractmethod
    def fit(self, train: xr.Dataset, variable: str) -> Baseline:
        """Fit on the training split of ``variable``; returns ``self``."""

    @abstractmethod
    def predict_windows(self, ws: Any, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Forecast ``pred_len`` steps for windows ``indices`` of ``ws``: (N, pred_len, S) float32, physical units,
        stations in ``ws`` model order."""

    @property
    @abstractmethod
    def n_params(self) -> int:
        """Number of fitted parameters (all stations together)."""

    # -- shared helpers -------------------------------------------------------------------------------------------
    def evaluate(self, ws: Any, indices: Sequence[int] | np.ndarray | None = None,
                 batch_size: int = 256) -> dict[str, float]:
        """MSE/MAE (and bookkeeping) of this method on windows ``indices`` of ``ws``, scored by the shared metrics
        against ``ws``'s targets and ``y_mask``."""
        return score_windows(self.predict_windows, ws, indices, batch_size=batch_size)

    def _begin_fit(self, train: xr.Dataset, variable: str) -> tuple[np.ndarray, pd.DatetimeIndex, np.ndarray]:
        values, times, ids = training_values(train, variable)
        self.variable = variable
        self.station_ids = ids
        return values, times, ids

    def _record_stations(self, train: xr.Dataset, variable: str) -> None:
        """Like ``_begin_fit`` for methods that learn nothing from the values (no copy of the data)."""
        if not isinstance(train, xr.Dataset):
            raise TypeError(f"train must be an xarray.Dataset in the station schema, got {type(train).__name__}")
        if variable not in train.data_vars:
            raise ValueError(f"variable {variable!r} not in the training data; it has {sorted(train.data_vars)}")
        self.variable = variable
        self.station_ids = np.asarray([str(s) for s in train["station"].values], dtype=object)

    def _check_ready(self, ws: Any) -> np.ndarray:
        """Raise if not fitted or fitted on another variable; return the positions of ``ws``'s stations."""
        if self.station_ids is None or self.variable is None:
            raise RuntimeError(f"{self.name}: call fit(train, variable) before predict_windows")
        ws_var = getattr(ws, "variable", None)
        if ws_var is not None and ws_var != self.variable:
            raise ValueError(f"{self.name} was fitted on {self.variable!r} but the windows are {ws_var!r}")
        return station_positions(self.station_ids, ws.station_ids, self.name)

    def __repr__(self) -> str:
        state = f"fitted on {self.variable!r}, {len(self.station_ids)} stations" if self.station_ids is not None \
            else "not fitted"
        return f"{type(self).__name__}({state})"


def score_windows(predict: Callable[[Any, np.ndarray], np.ndarray], ws: Any,
                  indices: Sequence[int] | np.ndarray | None = None, batch_size: int = 256) -> dict[str, float]:
    """Score ``predict(ws, indices) -> (N, pred_len, S)`` on windows of ``ws`` in batches of ``batch_size`` windows.

    Uses :func:`urlk_forecast.metrics.evaluate_arrays` (the Corrformer convention: mean over horizon x stations per
    window, then over windows) with the targets and ``y_mask`` of ``ws``, so every method is scored identically.
    Batches are combined exactly by weighting each batch's metric with its number of scored windows. Returns
    ``mse``, ``mae``, ``n_windows``, ``n_points`` (observed targets), ``n_unforecast`` (observed targets the method
    left NaN -- these are excluded from its score and should be 0 for a complete method) and ``predict_seconds``.
    """
    from urlk_forecast.metrics import evaluate_arrays

    idx = resolve_indices(ws, indices)
    if idx.size == 0:
        raise ValueError("no windows to score")
    batch_size = max(1, int(batch_size))
    tot = {"mse": 0.0, "mae": 0.0}
    weight = 0
    n_points = 0
    n_unforecast = 0
    seconds = 0.0
    for start in range(0, idx.size, batch_size):
        chunk = idx[start : start + batch_size]
        t0 = time.perf_counter()
        pred = to_numpy(predict(ws, chunk))
        seconds += time.perf_counter() - t0
        arrs = window_arrays(ws, chunk)
        y, mask = arrs["y"], arrs["y_mask"] & np.isfinite(arrs["y"])
        if pred.shape != y.shape:
            raise ValueError(f"predict_windows returned shape {pred.shape}, expected {y.shape} (N, pred_len, S)")
        no_fc = mask & ~np.isfinite(pred)
        n_unforecast += int(no_fc.sum())
        mask = mask & ~no_fc
        n_points += int(mask.sum())
        if not mask.any():
            continue
        m = evaluate_arrays(pred, y, mask)  # skips windows without an observed, forecast target
        k = int(m["windows"])
        tot["mse"] += float(m["mse"]) * k
        tot["mae"] += float(m["mae"]) * k
        weight += k
    if weight == 0:
        raise ValueError("none of the selected windows has an observed target with a forecast; nothing to score")
    return {
        "mse": tot["mse"] / weight,
        "mae": tot["mae"] / weight,
        "n_windows": int(weight),
        "n_points": int(n_points),
        "n_unforecast": int(n_unforecast),
        "predict_seconds": float(seconds),
    }
