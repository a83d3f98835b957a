"""Quantile forecasts of the baselines: the levels a baseline forecasts, and the empirical distribution of a naive
forecast's training-period errors per lead time.

A baseline built with ``quantiles=(0.1, 0.5, 0.9)`` forecasts those levels (``predict_quantiles``) and, by the
:class:`~urlk_forecast.method.Method` contract, its point forecast becomes the median; the median is therefore
always estimated (:func:`with_median`) even when 0.5 is not among the levels asked for.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..utils.quantiles import quantile_levels

__all__ = ["with_median", "column_quantiles", "lagged_error_quantiles", "MIN_ERRORS"]

#: Fewer finite training errors than this at a lead: the station uses the errors of all stations at that lead.
MIN_ERRORS = 50


def with_median(levels: Sequence[float] | None) -> tuple[tuple[float, ...] | None, tuple[float, ...], int]:
    """``(levels checked, levels estimated = levels + 0.5 when missing, index of 0.5 among the estimated)``;
    ``levels=None`` -> ``(None, (0.5,), 0)``."""
    if levels is None:
        return None, (0.5,), 0
    lv = quantile_levels(levels, require_median=False)
    assert lv is not None
    est = tuple(sorted(set(lv) | {0.5}))
    return lv, est, est.index(0.5)


def column_quantiles(a: np.ndarray, levels: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """NaN-aware quantiles along axis 0 (numpy's default linear interpolation, ``np.nanquantile``'s values, one
    vectorised sort): returns ``(quantiles (Q, ...), finite count (...))``; NaN where a column has no finite value."""
    a = np.asarray(a, np.float64)
    srt = np.sort(a, axis=0)  # NaN sorts last
    n = np.isfinite(a).sum(axis=0)
    tau = np.asarray(levels, np.float64).reshape((-1,) + (1,) * (a.ndim - 1))
    pos = tau * np.maximum(n - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    frac = pos - lo
    qlo = np.take_along_axis(srt, lo, axis=0)
    qhi = np.take_along_axis(srt, np.broadcast_to(hi, lo.shape), axis=0)
    q = qlo + frac * (qhi - qlo)
    return np.where(n > 0, q, np.nan), n


def lagged_error_quantiles(values: np.ndarray, lags: Sequence[int], levels: Sequence[float],
                           max_origins: int = 2000) -> np.ndarray:
    """Quantiles (H, S, Q) of the errors ``v[t] - v[t - lag_h]`` of a forecast that copies the value ``lag_h`` steps
    back, per lead ``h`` and station, over the training values ``values`` (T, S) (NaN = missing).

    Targets ``t`` are at most ``max_origins`` evenly spaced steps (neighbouring errors are strongly correlated, so
    more add little). A station with fewer than :data:`MIN_ERRORS` finite errors at a lead uses the quantiles of all
    stations' errors at that lead (NaN when no station has any).
    """
    v = np.asarray(values, np.float64)
    T, S = v.shape
    out = np.full((len(lags), S, len(levels)), np.nan)
    for k, lag in enumerate(lags):
        lag = int(lag)
        if lag >= T:
            continue
        t = np.unique(np.linspace(lag, T - 1, min(int(max_origins), T - lag)).round().astype(np.int64))
        err = v[t] - v[t - lag]  # (n, S)
        q, n = column_quantiles(err, levels)
        out[k] = q.T
        few = n < MIN_ERRORS
        if few.any():
            pooled = err[np.isfinite(err)]
            out[k, few] = np.quantile(pooled, levels) if pooled.size else np.nan
    return out
