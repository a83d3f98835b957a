"""The ``Method`` contract: the one forecasting interface of every baseline and of the neural ``Forecaster``.

Vocabulary follows neuralforecast's: a method is built with its settings (the variable it forecasts among them),
*fitted* once on the training split -- ``fit(train, val=None)``, the validation split for methods that select on
it -- and then *forecasts* ``pred_len`` steps from the history of each evaluation window,
``predict_windows(ws, indices) -> (N, pred_len, S)``. Windows come from a
:class:`~urlk_forecast.data.windows.WindowSource`, so every method sees exactly the same inputs, and
:meth:`Method.evaluate` scores it with the one scorer (:func:`urlk_forecast.scoring.score_methods`) on exactly the
same targets and masks. Tables and backtests therefore never special-case a method.

Forecasts are float32 in physical units, stations in the window source's *model order* (``ws.station_ids``); a
point a method cannot forecast is NaN, never a silent zero.

Distributions: a method that forecasts quantiles sets ``quantiles`` (sorted levels in (0, 1), e.g. ``(0.1, 0.5,
0.9)``) and implements :meth:`Method.predict_quantiles` -> ``(N, pred_len, S, Q)``, non-decreasing along ``Q``. Its
point forecast (``predict_windows``) is then the median (level 0.5 when present). ``quantiles = None`` (the default):
point forecasts only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import xarray as xr

from .data.windows import WindowSource
from .scoring import Scores, score_methods

__all__ = ["KINDS", "Method", "WindowSource"]

#: The method families of the paper's Table 12 "type" column.
KINDS: tuple[str, ...] = ("statistical", "ML", "NWP", "neural")


class Method(ABC):
    """A forecasting method (see the module docstring).

    Implementations set ``name`` (the table label) and ``kind`` (one of :data:`KINDS`), keep ``variable`` (what
    they forecast) and ``fit_seconds`` (wall time of the last :meth:`fit`), and implement :meth:`fit`,
    :meth:`predict_windows` and :attr:`n_params`.
    """

    name: str = "method"
    kind: ClassVar[str] = "statistical"
    variable: str
    fit_seconds: float | None = None
    #: quantile levels forecast by :meth:`predict_quantiles` (sorted, in (0, 1)); None: point forecasts only
    quantiles: tuple[float, ...] | None = None

    @abstractmethod
    def fit(self, train: xr.Dataset, val: xr.Dataset | None = None) -> Method:
        """Fit on the training split (``val``: the validation split, for methods that select on it); ``self``."""

    @abstractmethod
    def predict_windows(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Forecasts ``(N, pred_len, S)`` float32 for windows ``indices`` of ``ws`` (all when None)."""

    def predict_quantiles(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Quantile forecasts ``(N, pred_len, S, Q)`` float32 at the levels ``self.quantiles``, non-decreasing along
        the last axis, for windows ``indices`` of ``ws`` (all when None)."""
        raise NotImplementedError(f"{self.name} forecasts no quantiles (quantiles=None)")

    @property
    @abstractmethod
    def n_params(self) -> int:
        """Number of fitted parameters (all stations together; the Table 12 parameters column)."""

    def evaluate(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None, *,
                 batch_size: int = 256) -> Scores:
        """MSE/MAE overall and per lead of this method on windows ``indices`` of ``ws`` (the one scorer)."""
        return next(iter(score_methods([self], ws, indices, batch_size=batch_size).scores.values()))

    def describe(self) -> dict[str, Any]:
        """The table's bookkeeping columns: method, type, parameters, fit seconds."""
        return {"method": self.name, "type": self.kind, "parameters": int(self.n_params),
                "fit_s": float(self.fit_seconds) if self.fit_seconds is not None else float("nan")}
