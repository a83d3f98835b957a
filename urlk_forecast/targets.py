"""Scoring a model of several target variables with the one scorer, one variable at a time.

A multi-target forecaster (``Forecaster(variable=["temperature", "wind_speed"])``) forecasts every target from one
:class:`~urlk_forecast.data.target_windows.TargetWindows`; tables, however, are per variable and every baseline is
univariate. :func:`target_views` therefore gives one :class:`TargetView` per target: a
:class:`~urlk_forecast.method.Method` that forecasts that variable on its own windows (``stack.part(variable)``),
so :func:`urlk_forecast.scoring.score_methods` scores it beside the baselines fitted to that variable on exactly the
same points, as for a single-target model. The network runs once per window for all targets: the views share a cache
of the forecasts of each chunk of windows, dropped once every target has read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import xarray as xr

from .data.target_windows import TargetWindows
from .data.windows import WindowSource
from .method import Method
from .scoring import ScoreTable, resolve_indices, score_methods

__all__ = ["TargetView", "target_views", "score_targets", "split_targets"]


def split_targets(a: np.ndarray, n_targets: int) -> np.ndarray:
    """Forecasts stacked target-major along the last axis, ``(..., V·S)``, as ``(..., S, V)``."""
    S = a.shape[-1] // n_targets
    return np.moveaxis(a.reshape(*a.shape[:-1], n_targets, S), -2, -1)


class _MultiTarget(Protocol):
    """What a view needs of the model (the ``Forecaster`` has it)."""

    name: str
    targets: tuple[str, ...]
    fit_seconds: float | None

    @property
    def n_params(self) -> int: ...

    def predict_windows(self, ws: Any, indices: Any = None) -> np.ndarray: ...


class _Cache:
    """The model's forecasts ``(N, pred_len, S, V)`` per chunk of window indices, each kept until every target has
    read it (a scorer reads one variable's chunks after another's, so at most one pass of forecasts is held)."""

    def __init__(self, model: _MultiTarget, stack: TargetWindows) -> None:
        self.model, self.stack = model, stack
        self.entries: dict[bytes, tuple[np.ndarray, set[str]]] = {}

    def get(self, idx: np.ndarray, variable: str) -> np.ndarray:
        key = idx.tobytes()
        if key not in self.entries:
            self.entries[key] = (np.asarray(self.model.predict_windows(self.stack, idx)), set())
        pred, readers = self.entries[key]
        readers.add(variable)
        if readers >= set(self.stack.variables):
            del self.entries[key]
        return pred[..., self.stack.variables.index(variable)]


class TargetView(Method):
    """One target of a multi-target model as a single-variable :class:`~urlk_forecast.method.Method` (table label:
    the model's name). It forecasts the windows of its variable in the model's ``TargetWindows`` only."""

    kind = "neural"

    def __init__(self, model: _MultiTarget, variable: str, cache: _Cache) -> None:
        self.model, self.variable, self._cache = model, variable, cache
        self.name = model.name
        self.fit_seconds = model.fit_seconds

    @property
    def n_params(self) -> int:
        return int(self.model.n_params)

    def fit(self, train: xr.Dataset, val: xr.Dataset | None = None) -> TargetView:
        raise NotImplementedError("a target view forecasts with its trained model; fit the model itself")

    def predict_windows(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Forecasts ``(N, pred_len, S)`` of this variable for windows ``indices`` of ``ws`` (its part of the stack)."""
        if ws is not self._cache.stack.part(self.variable):
            raise ValueError(f"the {self.variable} view of {self.name} forecasts the {self.variable} windows of its "
                             "own TargetWindows (stack.part(variable)) only")
        return self._cache.get(resolve_indices(ws, indices), self.variable)


def target_views(model: _MultiTarget, stack: TargetWindows) -> dict[str, TargetView]:
    """One :class:`TargetView` per target of ``model`` on ``stack`` (sharing one forecast cache)."""
    if tuple(stack.variables) != tuple(model.targets):
        raise ValueError(f"{model.name} forecasts {', '.join(model.targets)}; the windows hold "
                         f"{', '.join(stack.variables)}")
    cache = _Cache(model, stack)
    return {v: TargetView(model, v, cache) for v in stack.variables}


def score_targets(methods: Mapping[str, Sequence[Method]], stack: TargetWindows,
                  indices: Sequence[int] | np.ndarray | None = None, **kw: Any) -> dict[str, ScoreTable]:
    """Score, per target variable of ``stack``, ``methods[variable]`` (the model's view and the baselines fitted to
    that variable) on that variable's windows with the one scorer (``kw``: :func:`score_methods`'s options)."""
    return {v: score_methods(methods[v], stack.part(v), indices, **kw) for v in stack.variables}
