"""Holt-Winters (additive trend, additive daily season) fitted once per station, forecast by filtering each window.

Fitting: statsmodels ``ExponentialSmoothing(trend="add", seasonal="add", seasonal_periods=m)`` per station on the
last ``fit_hours`` steps of that station's training data (default 4 weeks = 672 steps, ending at its last
observation; internal NaNs linearly interpolated *for fitting only*; stations fitted in parallel processes,
``n_jobs``). A station whose fit fails or that has fewer than three seasons of data gets the median smoothing
parameters of the others (counted in ``fit_fallbacks``).

Forecasting: no refit per window. Each window's history is run through the Holt-Winters recursions (:func:`hw_filter`,
vectorised numpy over all windows x stations at once) with the station's fitted ``(alpha, beta, gamma)``, starting
from initial states chosen by ``window_init``:

* ``"fitted"`` (default): the season starts from the station's fitted seasonal profile at the end of training
  (aligned by phase, i.e. hour of day), the level from the mean of the window's first season minus that profile,
  the trend from the difference of the first two seasons' means / m (0 if ``seq_len < 2 m``). The profile is
  estimated on weeks of data, so it is much less noisy than one from two days.
* ``"window"``: the classical heuristic on the window alone -- level = mean of the first season, trend = difference
  of the first two seasons' means / m, season = first season minus its mean (needs ``seq_len >= 2 m``).

The recursions are exactly statsmodels' (checked in the tests against ``HoltWintersResults.forecast``)::

    l_t = alpha (y_t - s_{t-m}) + (1 - alpha)(l_{t-1} + b_{t-1})
    b_t = beta (l_t - l_{t-1}) + (1 - beta) b_{t-1}
    s_t = gamma (y_t - l_{t-1} - b_{t-1}) + (1 - gamma) s_{t-m}
    yhat_{T+h} = l_T + h b_T + s_{T+h-m(1 + floor((h-1)/m))}

A missing input (NaN) only propagates the states (l <- l + b, b and s unchanged).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..data.windows import WindowSource
from .base import Baseline, input_times, resolve_indices, window_arrays, window_geometry

__all__ = ["HoltWinters", "hw_filter", "fit_series"]

# Per-station fit result layout: alpha, beta, gamma, initial level, initial trend, final level, final trend, sse,
# ok flag, then the m initial seasons and the m final seasonal states (phase-aligned, see _fit_block).
_NFIX = 9


def hw_filter(y: np.ndarray, alpha: np.ndarray | float, beta: np.ndarray | float, gamma: np.ndarray | float,
              level0: np.ndarray | float, trend0: np.ndarray | float, season0: np.ndarray, horizon: int,
              return_states: bool = False) -> np.ndarray | tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Run additive Holt-Winters over ``y`` (T, ...) and forecast ``horizon`` steps: returns (horizon, ...).

    ``season0`` (m, ...) holds the seasonal states that apply to ``y[0], ..., y[m-1]`` (statsmodels'
    ``initial_seasons``); parameters and initial states broadcast against ``y[0]``. NaN inputs propagate the states.
    With ``return_states`` also returns the final ``(level, trend, season)``, ``season`` (m, ...) being the states
    for the next ``m`` steps after ``y``.
    """
    y = np.asarray(y, dtype=np.float64)
    season0 = np.asarray(season0, dtype=np.float64)
    m = season0.shape[0]
    shape = y.shape[1:]
    alpha, beta, gamma = (np.broadcast_to(np.asarray(p, np.float64), shape) for p in (alpha, beta, gamma))
    level = np.broadcast_to(np.asarray(level0, np.float64), shape).copy()
    trend = np.broadcast_to(np.asarray(trend0, np.float64), shape).copy()
    season = np.broadcast_to(season0, (m, *shape)).copy()  # ring buffer: season[t % m] is s for step t
    a1, b1, g1 = 1.0 - alpha, 1.0 - beta, 1.0 - gamma
    for t in range(y.shape[0]):
        j = t % m
        yt = y[t]
        obs = np.isfinite(yt)
        lb = level + trend
        s_old = season[j]
        new_level = np.where(obs, alpha * (yt - s_old) + a1 * lb, lb)
        new_trend = np.where(obs, beta * (new_level - level) + b1 * trend, trend)
        season[j] = np.where(obs, gamma * (yt - lb) + g1 * s_old, s_old)
        level, trend = new_level, new_trend
    steps = np.arange(1, horizon + 1, dtype=np.float64).reshape((horizon,) + (1,) * len(shape))
    phase = (y.shape[0] + np.arange(horizon) % m) % m
    fc = level[None] + steps * trend[None] + season[phase]
    if return_states:
        roll = (y.shape[0] + np.arange(m)) % m
        return fc, (level, trend, season[roll])
    return fc


def fit_series(y: np.ndarray, m: int, initialization_method: str = "estimated",
               use_brute: bool = False) -> Any:
    """Fit statsmodels' additive Holt-Winters to one series (no NaN); returns the ``HoltWintersResults``."""
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ExponentialSmoothing(np.asarray(y, np.float64), trend="add", seasonal="add", seasonal_periods=m,
                                     initialization_method=initialization_method)
        return model.fit(use_brute=use_brute)


def _prepare_series(col: np.ndarray, n: int, m: int) -> tuple[np.ndarray, int] | None:
    """The last ``n`` steps of ``col`` ending at its last observation, gaps interpolated; None if too short.
    Also returns the index (in ``col``) of the series' first step."""
    obs = np.flatnonzero(np.isfinite(col))
    if obs.size < 3 * m:
        return None
    end = obs[-1] + 1
    start = max(obs[0], end - n)
    seg = col[start:end]
    ok = np.isfinite(seg)
    if ok.sum() < max(3 * m, 0.5 * seg.size):
        return None
    if not ok.all():
        xs = np.arange(seg.size)
        seg = np.interp(xs, xs[ok], seg[ok])
    return seg, int(start)


def _fit_block(block: np.ndarray, phase0: int, n: int, m: int, init: str, use_brute: bool) -> np.ndarray:
    """Fit every column of ``block`` (T, k); returns (k, _NFIX + 2m) rows (see ``_NFIX``). ``phase0`` is the season
    phase of ``block[0]``; the stored final seasonal states are rolled so that entry p is the state for phase p.

    BLAS is limited to one thread: scipy's L-BFGS-B calls tiny BLAS routines, and multi-threaded OpenBLAS made each
    3-parameter optimiser step ~5x slower (worse on a busy machine); parallelism comes from the processes.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_block_serial(block, phase0, n, m, init, use_brute)


def _fit_block_serial(block: np.ndarray, phase0: int, n: int, m: int, init: str, use_brute: bool) -> np.ndarray:
    out = np.full((block.shape[1], _NFIX + 2 * m), np.nan)
    for i in range(block.shape[1]):
        prep = _prepare_series(block[:, i], n, m)
        if prep is None:
            out[i, 8] = 0.0
            continue
        y, start = prep
        try:
            res = fit_series(y, m, init, use_brute)
            p = res.params
            alpha, beta, gamma = float(p["smoothing_level"]), float(p["smoothing_trend"]), \
                float(p["smoothing_seasonal"])
            s0 = np.asarray(p["initial_seasons"], np.float64)
            _, (lv, tr, seas) = hw_filter(y[:, None], alpha, beta, gamma, float(p["initial_level"]),
                                          float(p["initial_trend"]), s0[:, None], 1, return_states=True)
        except Exception:  # noqa: BLE001 - any optimiser failure -> fallback parameters, counted
            out[i, 8] = 0.0
            continue
        # seas[j] applies to the step (start + len(y) + j) of the block -> phase (phase0 + that) % m
        phases = (phase0 + start + y.size + np.arange(m)) % m
        final = np.empty(m)
        final[phases] = seas[:, 0]
        out[i, :_NFIX] = [alpha, beta, gamma, p["initial_level"], p["initial_trend"], lv[0], tr[0],
                          float(res.sse), 1.0]
        out[i, _NFIX : _NFIX + m] = s0
        out[i, _NFIX + m :] = final
    return out


class HoltWinters(Baseline):
    """Additive Holt-Winters per station: fitted once (statsmodels, parallel), forecast by filtering each window.

    Parameters: ``season_length`` (steps per season, 24 for hourly data), ``fit_hours`` (steps of training data used
    per station, default 672 = 4 weeks: enough for a stable daily profile, short enough that all 3850 stations fit
    in a few minutes on two cores), ``initialization_method`` / ``use_brute`` (passed to statsmodels; default
    ``"heuristic"``: initial states from the first seasons, only alpha/beta/gamma optimised -- on the synthetic
    3850-station set ``"estimated"`` costs ~2.5x the CPU for 2-6 % lower window MSE and mostly lands on the degenerate
    alpha=1, beta=gamma=0 corner), ``n_jobs``
    (worker processes; default all cores, 1 = in-process) and ``window_init`` (``"fitted"`` or ``"window"``, see the
    module docstring).
    """

    name = "Holt-Winters"
    kind = "statistical"

    def __init__(self, season_length: int = 24, fit_hours: int = 672, initialization_method: str = "heuristic",
                 use_brute: bool = False, n_jobs: int | None = None, window_init: str = "fitted", *,
                 variable: str = "temperature") -> None:
        super().__init__(variable=variable)
        if window_init not in ("fitted", "window"):
            raise ValueError(f"window_init must be 'fitted' or 'window', got {window_init!r}")
        if season_length < 1 or fit_hours < 3 * season_length:
            raise ValueError(f"need season_length >= 1 and fit_hours >= 3 * season_length, got {season_length}, "
                             f"{fit_hours}")
        self.m = int(season_length)
        self.fit_hours = int(fit_hours)
        self.initialization_method = initialization_method
        self.use_brute = bool(use_brute)
        self.n_jobs = n_jobs
        self.window_init = window_init
        self.params: np.ndarray | None = None  # (S, _NFIX + 2m)
        self.fit_fallbacks: int = 0
        self._epoch_step: pd.Timedelta | None = None

    # -- fitting --------------------------------------------------------------------------------------------------
    def _phase(self, times: np.ndarray) -> np.ndarray:
        """Season phase (0..m-1) of datetimes: steps since the Unix epoch modulo m (hour of day for hourly data)."""
        assert self._epoch_step is not None
        ns = np.asarray(times, dtype="datetime64[ns]").astype(np.int64)
        return (ns // int(self._epoch_step.value)) % self.m

    def _fit(self, train: xr.Dataset) -> None:
        """Fit (alpha, beta, gamma) and the seasonal profile of every station (parallel processes)."""
        values, times, _ = self._begin_fit(train)
        if len(times) < 2:
            raise ValueError("Holt-Winters needs at least 2 training time steps")
        self._epoch_step = pd.Timedelta(times[1] - times[0])
        m = self.m
        # only the tail each station can use: fit_hours before its last observation
        last_obs = np.where(np.isfinite(values).any(0), values.shape[0] - 1 - np.argmax(np.isfinite(values[::-1]), 0),
                            values.shape[0] - 1)
        first = int(max(0, last_obs.min() - self.fit_hours + 1))
        block = values[first:]
        phase0 = int(self._phase(times[first : first + 1].values)[0])
        n_jobs = self.n_jobs if self.n_jobs is not None else (os.cpu_count() or 1)
        n_jobs = max(1, min(int(n_jobs), block.shape[1]))
        args = (self.fit_hours, m, self.initialization_method, self.use_brute)
        if n_jobs == 1:
            params = _fit_block(block, phase0, *args)
        else:
            chunks = np.array_split(np.arange(block.shape[1]), min(block.shape[1], n_jobs * 8))
            ctx = mp.get_context("spawn")  # no fork: the parent may hold torch/OpenMP threads
            with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
                futs = [pool.submit(_fit_block, np.ascontiguousarray(block[:, c]), phase0, *args) for c in chunks]
                params = np.concatenate([f.result() for f in futs], axis=0)
        ok = params[:, 8] == 1.0
        self.fit_fallbacks = int((~ok).sum())
        if self.fit_fallbacks:
            if ok.any():
                med = np.median(params[ok, :3], axis=0)
            else:
                med = np.array([0.5, 0.01, 0.1])
            params[~ok, :3] = med
            # the seasonal profile of a fallback station: its mean anomaly per phase over all training data
            ph = self._phase(times.values)
            for s in np.flatnonzero(~ok):
                col = values[:, s]
                prof = np.zeros(m)
                fin = np.isfinite(col)
                if fin.any():
                    anom = col[fin] - col[fin].mean()
                    cnt = np.bincount(ph[fin], minlength=m)
                    prof = np.where(cnt > 0, np.bincount(ph[fin], anom, minlength=m) / np.maximum(cnt, 1), 0.0)
                params[s, _NFIX + m :] = prof
            warnings.warn(f"Holt-Winters: {self.fit_fallbacks} of {len(ok)} stations could not be fitted (too few "
                          f"observations or optimiser failure); they use the median smoothing parameters",
                          RuntimeWarning, stacklevel=2)
        self.params = params

    # -- forecasting ----------------------------------------------------------------------------------------------
    @property
    def smoothing(self) -> np.ndarray:
        """(S, 3) fitted ``(alpha, beta, gamma)`` per station (training station order)."""
        if self.params is None:
            raise RuntimeError("Holt-Winters is not fitted")
        return self.params[:, :3]

    def predict_windows(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(N, pred_len, S): filter each window's input with the station's parameters, then forecast."""
        pos = self._check_ready(ws)
        assert self.params is not None
        geo = window_geometry(ws)
        if geo.freq != self._epoch_step:
            raise ValueError(f"Holt-Winters was fitted on {self._epoch_step} steps, windows have {geo.freq}")
        m = self.m
        idx = resolve_indices(ws, indices)
        x = window_arrays(ws, idx)["x"].astype(np.float64)  # (N, L, S)
        y = np.moveaxis(x, 1, 0)  # (L, N, S)
        p = self.params[pos]
        alpha, beta, gamma = p[:, 0], p[:, 1], p[:, 2]
        if self.window_init == "fitted":
            prof = p[:, _NFIX + m :]  # (S, m) by phase
            ph = (self._phase(input_times(ws, idx)[:, 0])[:, None] + np.arange(m)[None, :]) % m  # (N, m)
            season0 = np.moveaxis(prof.T[ph], 1, 0)  # (m, N, S)
            k = min(m, geo.seq_len)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                level0 = np.nanmean(y[:k] - season0[:k], axis=0)
                if geo.seq_len >= 2 * m:  # slope between the first two whole seasons (the profile cancels)
                    trend0 = (np.nanmean(y[m : 2 * m], axis=0) - np.nanmean(y[:m], axis=0)) / m
                else:
                    trend0 = np.zeros_like(level0)
        else:
            if geo.seq_len < 2 * m:
                raise ValueError(f"window_init='window' needs seq_len >= 2 * season_length = {2 * m}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean1 = np.nanmean(y[:m], axis=0)
                mean2 = np.nanmean(y[m : 2 * m], axis=0)
            level0 = mean1
            trend0 = (mean2 - mean1) / m
            season0 = y[:m] - mean1[None]
        fc = hw_filter(y, alpha, beta, gamma, level0, trend0, season0, geo.pred_len)
        return np.ascontiguousarray(np.moveaxis(fc, 0, 1), dtype=np.float32)

    @property
    def n_params(self) -> int:
        """3 smoothing parameters per station, plus the m-step seasonal profile when ``window_init="fitted"``."""
        if self.params is None:
            return 0
        per = 3 + (self.m if self.window_init == "fitted" else 0)
        return per * self.params.shape[0]
