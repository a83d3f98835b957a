"""Windows over several forecast variables at once (``Forecaster(variable=["temperature", "wind_speed"])``).

:class:`TargetWindows` holds one :class:`~urlk_forecast.data.windows.WindowDataset` per target variable, all over the
same dataset, times, window lengths, stride, gap rules and station order, and stacks them *target-major along the
station axis*: ``x``/``x_mask`` ``(B, seq_len, V·S)`` and ``y``/``y_mask`` ``(B, label_len + pred_len, V·S)`` hold
target 0's S stations, then target 1's, and so on. To the trainer a V-target window is therefore a window of V·S
series: the masked loss, its per-series scale (:func:`urlk_forecast.trainer.station_scale` over ``values``/
``observed``, ``(T, V·S)``) and the missing-target rule need no change. Covariates (``inputs``) and the calendar
features are shared (``x_cov``/``x_cov_mask`` ``(B, seq_len, S, K)``, ``x_mark``/``y_mark``).

Each target keeps its own window source (:meth:`TargetWindows.part`), which the univariate baselines and the one
scorer read exactly as for a single-target model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from .windows import WindowDataset, check_inputs

__all__ = ["TargetWindows", "check_targets"]


def check_targets(variable: str | Sequence[str]) -> tuple[str, ...]:
    """The forecast variable(s) as a tuple of names: a string is one target; a list names several (non-empty
    strings, each once). Errors say ``variable=...`` (the CLI words it as its flag)."""
    if isinstance(variable, str):
        names: tuple[Any, ...] = (variable,)
    elif isinstance(variable, Sequence):
        names = tuple(variable)
    else:
        raise TypeError(f"variable={variable!r}: must be a variable name or a list of names")
    bad = [v for v in names if not isinstance(v, str) or not v.strip()]
    if not names or bad:
        raise ValueError(f"variable={variable!r}: {bad[0] if bad else 'nothing'!r} is not the name of a data "
                         "variable")
    dup = sorted({v for v in names if names.count(v) > 1})
    if dup:
        raise ValueError(f"variable={list(names)!r}: names {', '.join(map(repr, dup))} more than once")
    return names


class TargetWindows:
    """Windows of several target variables of ``ds`` stacked target-major along the station axis (module docstring).

    ``order``: as for :class:`~urlk_forecast.data.windows.WindowDataset` (resolved once, by the first target's
    windows, and used for every target). ``inputs``: covariates, carried by every target's windows.
    """

    def __init__(self, ds: xr.Dataset, variables: Sequence[str], seq_len: int = 48, label_len: int = 24,
                 pred_len: int = 24, stride: int = 1, max_gap: int = 3,
                 order: np.ndarray | Sequence[int] | str | None = None, inputs: Sequence[str] = ()) -> None:
        self.variables = check_targets(list(variables))
        self.inputs = check_inputs(inputs, self.variables)
        first = WindowDataset(ds, self.variables[0], seq_len, label_len, pred_len, stride=stride, max_gap=max_gap,
                              order=order, inputs=self.inputs)
        self.parts: list[WindowDataset] = [first] + [
            WindowDataset(ds, v, seq_len, label_len, pred_len, stride=stride, max_gap=max_gap, order=first.order,
                          inputs=self.inputs) for v in self.variables[1:]]
        self.seq_len, self.label_len, self.pred_len = first.seq_len, first.label_len, first.pred_len
        self.stride, self.max_gap = first.stride, first.max_gap
        self.times: pd.DatetimeIndex = first.times
        self.order, self.station_ids = first.order, first.station_ids
        self.lat, self.lon, self.elevation, self.coords = first.lat, first.lon, first.elevation, first.coords
        self.units: dict[str, str] = {v: p.units for v, p in zip(self.variables, self.parts)}
        #: every target's raw values and observed flags side by side, ``(T, V·S)`` (the trainer's loss scale)
        self.values = np.concatenate([p.values for p in self.parts], axis=1)
        self.observed = np.concatenate([p.observed for p in self.parts], axis=1)

    @property
    def variable(self) -> tuple[str, ...]:
        """The target variables (a tuple, where a single-target source has one name)."""
        return self.variables

    def __len__(self) -> int:
        return len(self.parts[0])

    @property
    def num_stations(self) -> int:
        """Stations ``S`` (the stacked arrays are ``V·S`` wide)."""
        return self.parts[0].num_stations

    @property
    def window_start_times(self) -> pd.DatetimeIndex:
        """Time of the first input step of every window."""
        return self.parts[0].window_start_times

    def part(self, variable: str) -> WindowDataset:
        """The windows of one target (a plain single-variable window source, same indices and stations)."""
        if variable not in self.variables:
            raise KeyError(f"{variable!r} is not a target of these windows ({', '.join(self.variables)})")
        return self.parts[self.variables.index(variable)]

    def batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """The windows ``indices``: every target's ``x``/``x_mask``/``y``/``y_mask`` concatenated along the
        station axis (target-major), the first target's calendar features, index and covariates."""
        parts = [p.batch(indices) for p in self.parts]
        out = dict(parts[0])
        for k in ("x", "x_mask", "y", "y_mask"):
            out[k] = torch.cat([b[k] for b in parts], dim=-1)
        return out

    def split_targets(self, a: np.ndarray) -> np.ndarray:
        """``(..., V·S)`` stacked along the station axis → ``(..., S, V)``."""
        V, S = len(self.variables), self.num_stations
        return np.moveaxis(a.reshape(*a.shape[:-1], V, S), -2, -1)

    def __repr__(self) -> str:
        return (f"TargetWindows({list(self.variables)}, windows={len(self)}, stations={self.num_stations}, "
                f"seq_len={self.seq_len}, label_len={self.label_len}, pred_len={self.pred_len}"
                + (f", inputs={list(self.inputs)}" if self.inputs else "") + ")")
