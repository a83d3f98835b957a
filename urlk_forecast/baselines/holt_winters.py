"""Holt-Winters (additive damped trend, additive daily season): parameters fitted once per station, state filtered
over the recent history up to each forecast origin.

This is what a practitioner's Holt-Winters does at a forecast origin: the smoothing parameters come from a fit on
the training data (statsmodels ``ExponentialSmoothing(trend="add", damped_trend=True, seasonal="add",
seasonal_periods=m)`` per station, on the last ``fit_hours`` steps of that station's training data; gaps
linearly interpolated *for fitting only*; stations fitted in parallel processes, ``n_jobs``), and the *state*
(level, trend, season) comes from running the recursions over the observed history just before the origin -- the
last ``history_hours`` steps (4 weeks by default), not only the window's ``seq_len`` inputs and not a state that
ended with the training data months earlier.

History (:class:`~urlk_forecast.baselines.history.KeptHistory`): the window source's own raw observations
(a :class:`~urlk_forecast.data.windows.WindowDataset` carries its whole series), extended backwards by the last
``history_hours`` of the training split (and of the validation split, when ``fit`` gets one) kept at fit time. Only
steps *before* each origin are read. A window source that carries no series gives each window only its own
``seq_len`` inputs.

Filter (:func:`hw_filter` in numpy, the compiled :func:`_hw_origins` for all windows x stations), with the
damping ``phi`` (``phi = 1`` is the undamped method; a missing input only propagates the states, i.e. the
one-step forecast stands in for the observation)::

    l_t = alpha (y_t - s_{t-m}) + (1 - alpha)(l_{t-1} + phi b_{t-1})
    b_t = beta (l_t - l_{t-1}) + (1 - beta) phi b_{t-1}
    s_t = gamma (y_t - l_{t-1} - phi b_{t-1}) + (1 - gamma) s_{t-m}
    yhat_{T+h} = l_T + (phi + ... + phi^h) b_T + s_{T+h-m(1 + floor((h-1)/m))}

Initial states at the start of each window's history (:func:`history_init`): the season is the station's fitted
seasonal profile at the end of training (aligned by phase, i.e. hour of day), the level is the first observation
minus that season, the trend 0. After 4 weeks of filtering the level and trend no longer depend on that choice; the
season does in part (it is updated by ``gamma`` per day), and the profile from weeks of data is better than one
from the first day of the history.

Quantiles (``quantiles=(0.1, 0.5, 0.9)``): Gaussian around the point forecast (which is already the median), with the
forecast variance of the additive damped ETS model these recursions are (:func:`ets_forecast_sd`; Hyndman et al.
2008, class 1): in error-correction form the level, trend and season gain ``alpha``, ``alpha * beta`` and ``gamma``
of each one-step error, so ``sigma_h^2 = sigma^2 (1 + sum_{j=1}^{h-1} c_j^2)`` with
``c_j = alpha + alpha beta (phi + ... + phi^j) + gamma [j mod m = 0]``. ``sigma^2`` is the station's one-step
residual variance of the parameter fit (statsmodels' in-sample SSE / fitted steps; stations that could not be fitted
use the median over the fitted stations). The formula ignores the error of the estimated states and parameters: on
a local level + season + noise series the 80 % interval covers ~78 %, but where the fit drives ``alpha`` to ~0 the
level stays at the first history observation's and the intervals under-cover (64 % for a nominal 80 % on a pure
daily sine + white noise). The benchmark's coverage columns measure it on the data at hand.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import numba
import numpy as np
import pandas as pd
import xarray as xr

from ..data.windows import WindowSource
from .base import Baseline, resolve_indices, window_geometry
from .history import KeptHistory
from .quantiles import with_median

__all__ = ["HoltWinters", "hw_filter", "fit_series", "history_init", "ets_forecast_sd"]

# Per-station fit result layout: alpha, beta, gamma, phi, initial level, initial trend, final level, final trend,
# one-step residual variance (sse / fitted steps), ok flag, then the m initial seasons and the m final seasonal
# states (phase-aligned, see _fit_block).
_NFIX = 10
_OK = 9


def hw_filter(y: np.ndarray, alpha: np.ndarray | float, beta: np.ndarray | float, gamma: np.ndarray | float,
              level0: np.ndarray | float, trend0: np.ndarray | float, season0: np.ndarray, horizon: int,
              return_states: bool = False, phi: np.ndarray | float = 1.0
              ) -> np.ndarray | tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Run additive (damped) Holt-Winters over ``y`` (T, ...) and forecast ``horizon`` steps: returns (horizon, ...).

    ``level0``/``trend0`` are the states before ``y[0]`` and ``season0`` (m, ...) the seasonal states that apply to
    ``y[0], ..., y[m-1]`` (statsmodels' ``initial_level``/``initial_trend``/``initial_seasons``); parameters and
    initial states broadcast against ``y[0]``. NaN inputs propagate the states. With ``return_states`` also returns
    the final ``(level, trend, season)``, ``season`` (m, ...) being the states for the next ``m`` steps after ``y``.
    The plain-numpy reference of the compiled filter used for forecasting.
    """
    y = np.asarray(y, dtype=np.float64)
    season0 = np.asarray(season0, dtype=np.float64)
    m = season0.shape[0]
    shape = y.shape[1:]
    alpha, beta, gamma, phi = (np.broadcast_to(np.asarray(p, np.float64), shape) for p in (alpha, beta, gamma, phi))
    level = np.broadcast_to(np.asarray(level0, np.float64), shape).copy()
    trend = np.broadcast_to(np.asarray(trend0, np.float64), shape).copy()
    season = np.broadcast_to(season0, (m, *shape)).copy()  # ring buffer: season[t % m] is s for step t
    a1, b1, g1 = 1.0 - alpha, 1.0 - beta, 1.0 - gamma
    for t in range(y.shape[0]):
        j = t % m
        yt = y[t]
        obs = np.isfinite(yt)
        lb = level + phi * trend
        s_old = season[j]
        new_level = np.where(obs, alpha * (yt - s_old) + a1 * lb, lb)
        new_trend = np.where(obs, beta * (new_level - level) + b1 * phi * trend, phi * trend)
        season[j] = np.where(obs, gamma * (yt - lb) + g1 * s_old, s_old)
        level, trend = new_level, new_trend
    damp = np.cumsum(phi[None] ** np.arange(1, horizon + 1).reshape((horizon,) + (1,) * len(shape)), axis=0)
    phase = (y.shape[0] + np.arange(horizon) % m) % m
    fc = level[None] + damp * trend[None] + season[phase]
    if return_states:
        roll = (y.shape[0] + np.arange(m)) % m
        return fc, (level, trend, season[roll])
    return fc


def history_init(y: np.ndarray, profile: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Initial ``(level0, trend0, season0)`` of a history ``y`` (T, ...) as the forecaster uses them.

    ``profile`` (m, ...) is the seasonal profile phase-aligned to ``y[0]`` (it applies to ``y[0..m-1]``). The level
    is the first observation minus its seasonal state, the trend 0 (NaN level where nothing is observed). Filtering
    from these states is the same as starting at the first observation. Exposed so that the tests can hand the
    very same states to statsmodels (``initialization_method="known"``).
    """
    y = np.asarray(y, np.float64)
    profile = np.asarray(profile, np.float64)
    m = profile.shape[0]
    obs = np.isfinite(y)
    first = np.argmax(obs, axis=0)
    y0 = np.take_along_axis(y, first[None], axis=0)[0]
    s_first = np.take_along_axis(np.broadcast_to(profile, (m, *y.shape[1:])), (first % m)[None], axis=0)[0]
    level0 = np.where(obs.any(axis=0), y0 - s_first, np.nan)
    return level0, np.zeros_like(level0), profile


@numba.njit(cache=True, nogil=True)
def _hw_origins(vals, phase, origins, lo, hist, alpha, beta, gamma, phi, prof, out, n0, n1):  # pragma: no cover
    """Forecast windows ``n0:n1``: filter ``vals[max(lo, origin - hist):origin]`` (NaN = missing) per station from
    the :func:`history_init` states (season ``prof[s, phase[t]]``), then forecast ``out.shape[1]`` steps.

    ``vals`` (T, S) float (NaN = missing), ``phase`` (T,) int, ``origins``/``lo`` (N,), parameters (S,),
    ``prof`` (S, m), ``out`` (N, horizon, S) float64. A station with no observation in the history gets NaN.
    """
    S = vals.shape[1]
    m = prof.shape[1]
    H = out.shape[1]
    level = np.empty(S)
    trend = np.empty(S)
    seas = np.empty((m, S))
    for n in range(n0, n1):
        end = origins[n]
        t0 = max(lo[n], end - hist)
        for j in range(m):  # consecutive steps: the phase of step t0 + j is phase[t0] + j (mod m)
            for s in range(S):
                seas[j, s] = prof[s, (phase[t0] + j) % m]
        for s in range(S):
            level[s] = np.nan
            trend[s] = 0.0
        for t in range(t0, end):
            j = (t - t0) % m
            for s in range(S):
                y = vals[t, s]
                if y != y:  # missing: the states propagate (one-step forecast in place of the observation)
                    if level[s] == level[s]:
                        level[s] += phi[s] * trend[s]
                        trend[s] *= phi[s]
                    continue
                s_old = seas[j, s]
                if level[s] != level[s]:  # first observation: level = y - season, trend 0 (history_init)
                    level[s] = y - s_old
                    continue
                lb = level[s] + phi[s] * trend[s]
                new_level = alpha[s] * (y - s_old) + (1.0 - alpha[s]) * lb
                trend[s] = beta[s] * (new_level - level[s]) + (1.0 - beta[s]) * phi[s] * trend[s]
                seas[j, s] = gamma[s] * (y - lb) + (1.0 - gamma[s]) * s_old
                level[s] = new_level
        for s in range(S):
            damp = 0.0
            pk = 1.0
            for h in range(H):
                pk *= phi[s]
                damp += pk
                out[n, h, s] = level[s] + damp * trend[s] + seas[(end + h - t0) % m, s]


def ets_forecast_sd(alpha: np.ndarray, beta: np.ndarray, gamma: np.ndarray, phi: np.ndarray, sigma2: np.ndarray,
                    m: int, horizon: int) -> np.ndarray:
    """Forecast standard deviations (horizon, S) of additive damped Holt-Winters (ETS(A,Ad,A)) with statsmodels'
    smoothing parameters per station and one-step error variance ``sigma2``: ``sigma_h^2 = sigma^2 (1 +
    sum_{j<h} c_j^2)``, ``c_j = alpha + alpha beta (phi + ... + phi^j) + gamma [j mod m = 0]``."""
    a, b, g, ph, s2 = (np.asarray(v, np.float64)[None, :] for v in (alpha, beta, gamma, phi, sigma2))
    j = np.arange(1, horizon, dtype=np.float64)[:, None]  # 1..horizon-1
    damp = np.cumsum(ph ** j, axis=0) if horizon > 1 else np.zeros((0, a.shape[1]))
    c = a + a * b * damp + g * ((j.astype(np.int64) % m) == 0)
    var = s2 * (1.0 + np.concatenate([np.zeros((1, a.shape[1])), np.cumsum(c * c, axis=0)])[:horizon])
    return np.sqrt(var)


def fit_series(y: np.ndarray, m: int, initialization_method: str = "estimated", use_brute: bool = False,
               damped: bool = True) -> Any:
    """Fit statsmodels' additive Holt-Winters (damped trend unless ``damped=False``) to one series without NaN;
    returns the ``HoltWintersResults``."""
    from statsmodels.tsa.holtwinters import ExponentialSmoothing  # heavy optional import, only where fitting

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ExponentialSmoothing(np.asarray(y, np.float64), trend="add", damped_trend=bool(damped),
                                     seasonal="add", seasonal_periods=m,
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


def _fit_block(block: np.ndarray, phase0: int, n: int, m: int, init: str, use_brute: bool,
               damped: bool) -> np.ndarray:
    """Fit every column of ``block`` (T, k); returns (k, _NFIX + 2m) rows (see ``_NFIX``). ``phase0`` is the season
    phase of ``block[0]``; the stored final seasonal states are rolled so that entry p is the state for phase p.

    BLAS is limited to one thread: scipy's L-BFGS-B calls tiny BLAS routines, and multi-threaded OpenBLAS made each
    optimiser step ~5x slower (worse on a busy machine); parallelism comes from the processes.
    """
    from threadpoolctl import threadpool_limits  # only in the (spawned) fitting workers

    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_block_serial(block, phase0, n, m, init, use_brute, damped)


def _fit_one(y: np.ndarray, m: int, init: str, use_brute: bool, damped: bool) -> tuple[np.ndarray, float, Any]:
    """statsmodels fit of one prepared series: ``([alpha, beta, gamma, phi, l0, b0], sse, params)``."""
    res = fit_series(y, m, init, use_brute, damped)
    p = res.params
    phi = float(p["damping_trend"]) if damped else 1.0
    head = np.array([p["smoothing_level"], p["smoothing_trend"], p["smoothing_seasonal"], phi,
                     p["initial_level"], p["initial_trend"]], np.float64)
    return head, float(res.sse), p


def _fit_block_serial(block: np.ndarray, phase0: int, n: int, m: int, init: str, use_brute: bool,
                      damped: bool) -> np.ndarray:
    out = np.full((block.shape[1], _NFIX + 2 * m), np.nan)
    for i in range(block.shape[1]):
        out[i, _OK] = 0.0
        prep = _prepare_series(block[:, i], n, m)
        if prep is None:
            continue
        y, start = prep
        try:
            head, sse, p = _fit_one(y, m, init, use_brute, damped)
            s0 = np.asarray(p["initial_seasons"], np.float64)
            _, (lv, tr, seas) = hw_filter(y[:, None], *head[:3], head[4], head[5], s0[:, None], 1,
                                          return_states=True, phi=head[3])
        except Exception:  # noqa: BLE001 - any optimiser failure -> fallback parameters, counted
            continue
        # seas[j] applies to the step (start + len(y) + j) of the block -> phase (phase0 + that) % m
        phases = (phase0 + start + y.size + np.arange(m)) % m
        final = np.empty(m)
        final[phases] = seas[:, 0]
        out[i, :_NFIX] = [*head, lv[0], tr[0], sse / y.size, 1.0]
        out[i, _NFIX : _NFIX + m] = s0
        out[i, _NFIX + m :] = final
    return out


def _phase_profile(col: np.ndarray, phase: np.ndarray, m: int) -> np.ndarray:
    """Mean anomaly of ``col`` per phase (0 where a phase is never observed): a fallback station's season."""
    fin = np.isfinite(col)
    if not fin.any():
        return np.zeros(m)
    anom = col[fin] - col[fin].mean()
    cnt = np.bincount(phase[fin], minlength=m)
    return np.where(cnt > 0, np.bincount(phase[fin], anom, minlength=m) / np.maximum(cnt, 1), 0.0)


class HoltWinters(Baseline):
    """Additive damped Holt-Winters per station: parameters fitted once (statsmodels, parallel processes), state
    filtered over the history up to each forecast origin (see the module docstring).

    Parameters: ``season_length`` (steps per season, 24 for hourly data); ``fit_hours`` (steps of training data used
    per station for the parameter fit, default 672 = 4 weeks: enough for a stable daily profile, short enough that
    all 3850 stations fit in a few minutes on two cores); ``history_hours`` (steps of history filtered before each
    origin, default 672); ``damped`` (damped trend, default True: an undamped trend fitted for one-step forecasts
    extrapolated 24 h ahead goes astray); ``initialization_method`` / ``use_brute`` (passed to statsmodels; default
    ``"estimated"``, statsmodels' own default: initial states optimised with the smoothing parameters.
    ``"heuristic"`` -- initial states from the first seasons, only the smoothing parameters optimised -- costs ~0.6x
    the CPU but often ends on the stability boundary ``alpha + gamma = 1`` whose 24-h forecasts are poor: validation
    MSE 3.43 vs 0.003 on the vega series, 5.42 vs 4.21 on 48 synthetic stations); ``n_jobs`` (worker processes of
    the fit; default all cores, 1 = in-process); ``quantiles`` (levels of a Gaussian forecast distribution with the
    ETS forecast variance, see the module docstring; None = point forecasts only).
    """

    name = "Holt-Winters"
    kind = "statistical"
    forecasts_quantiles = True

    def __init__(self, season_length: int = 24, fit_hours: int = 672, history_hours: int = 672, damped: bool = True,
                 initialization_method: str = "estimated", use_brute: bool = False, n_jobs: int | None = None,
                 quantiles: Sequence[float] | None = None, *, variable: str = "temperature") -> None:
        super().__init__(variable=variable)
        self.quantiles = with_median(quantiles)[0]
        if season_length < 1 or fit_hours < 3 * season_length:
            raise ValueError(f"need season_length >= 1 and fit_hours >= 3 * season_length, got {season_length}, "
                             f"{fit_hours}")
        if history_hours < 1:
            raise ValueError(f"history_hours must be >= 1, got {history_hours}")
        self.m = int(season_length)
        self.fit_hours = int(fit_hours)
        self.history_hours = int(history_hours)
        self.damped = bool(damped)
        self.initialization_method = initialization_method
        self.use_brute = bool(use_brute)
        self.n_jobs = n_jobs
        self.params: np.ndarray | None = None  # (S, _NFIX + 2m)
        self.fit_fallbacks: int = 0
        self._epoch_step: pd.Timedelta | None = None
        self._kept = KeptHistory(self.history_hours)
        if not damped:
            self.name = "Holt-Winters (undamped)"

    # -- fitting --------------------------------------------------------------------------------------------------
    def _phase(self, times: np.ndarray) -> np.ndarray:
        """Season phase (0..m-1) of datetimes: steps since the Unix epoch modulo m (hour of day for hourly data)."""
        assert self._epoch_step is not None
        ns = np.asarray(times, dtype="datetime64[ns]").astype(np.int64)
        return (ns // int(self._epoch_step.value)) % self.m

    def fit(self, train: xr.Dataset, val: xr.Dataset | None = None) -> HoltWinters:
        """Fit the smoothing parameters on ``train``; keep the last ``history_hours`` of ``train`` (and of ``val``,
        if given) as history for the first windows of a later period. ``self``."""
        super().fit(train, val)
        assert self.station_ids is not None
        self._kept.clear()
        for part in (train, val):
            if part is not None and self.variable in part.data_vars:
                self._kept.keep(part, self.variable, self.station_ids)
        return self

    def _fit(self, train: xr.Dataset) -> None:
        """Fit (alpha, beta, gamma, phi) and the seasonal profile of every station (parallel processes)."""
        values, times, _ = self._begin_fit(train)
        if len(times) < 2:
            raise ValueError("Holt-Winters needs at least 2 training time steps")
        self._epoch_step = pd.Timedelta(times[1] - times[0])
        # only the tail each station can use: fit_hours before its last observation
        fin = np.isfinite(values)
        last_obs = np.where(fin.any(0), values.shape[0] - 1 - np.argmax(fin[::-1], 0), values.shape[0] - 1)
        first = int(max(0, last_obs.min() - self.fit_hours + 1))
        block = values[first:]
        phase0 = int(self._phase(times[first : first + 1].values)[0])
        n_jobs = self.n_jobs if self.n_jobs is not None else (os.cpu_count() or 1)
        n_jobs = max(1, min(int(n_jobs), block.shape[1]))
        args = (self.fit_hours, self.m, self.initialization_method, self.use_brute, self.damped)
        if n_jobs == 1:
            params = _fit_block(block, phase0, *args)
        else:
            chunks = np.array_split(np.arange(block.shape[1]), min(block.shape[1], n_jobs * 8))
            ctx = mp.get_context("spawn")  # no fork: the parent may hold torch/OpenMP threads
            with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
                futs = [pool.submit(_fit_block, np.ascontiguousarray(block[:, c]), phase0, *args) for c in chunks]
                params = np.concatenate([f.result() for f in futs], axis=0)
        self._fill_fallbacks(params, values, self._phase(times.values))
        self.params = params

    def _fill_fallbacks(self, params: np.ndarray, values: np.ndarray, phase: np.ndarray) -> None:
        """Stations that could not be fitted get the median parameters and their mean anomaly per phase (warned)."""
        ok = params[:, _OK] == 1.0
        self.fit_fallbacks = int((~ok).sum())
        if not self.fit_fallbacks:
            return
        med = np.median(params[ok, :4], axis=0) if ok.any() else np.array([0.5, 0.01, 0.1, 0.98])
        params[~ok, :4] = med
        params[~ok, 8] = np.median(params[ok, 8]) if ok.any() else np.nan
        for s in np.flatnonzero(~ok):
            params[s, _NFIX + self.m :] = _phase_profile(values[:, s], phase, self.m)
        warnings.warn(f"Holt-Winters: {self.fit_fallbacks} of {len(ok)} stations could not be fitted (too few "
                      f"observations or optimiser failure); they use the median smoothing parameters",
                      RuntimeWarning, stacklevel=3)

    # -- fitted quantities ----------------------------------------------------------------------------------------
    def _fitted(self) -> np.ndarray:
        if self.params is None:
            raise RuntimeError("Holt-Winters is not fitted")
        return self.params

    @property
    def smoothing(self) -> np.ndarray:
        """(S, 3) fitted ``(alpha, beta, gamma)`` per station (training station order)."""
        return self._fitted()[:, :3]

    @property
    def damping(self) -> np.ndarray:
        """(S,) fitted trend damping ``phi`` per station (1.0 when ``damped=False``)."""
        return self._fitted()[:, 3]

    @property
    def profile(self) -> np.ndarray:
        """(S, m) fitted seasonal states at the end of training, by phase (hour of day): the initial season."""
        return self._fitted()[:, _NFIX + self.m :]

    # -- forecasting ----------------------------------------------------------------------------------------------
    def predict_windows(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(N, pred_len, S): filter the history before each window's origin with the station's parameters, then
        forecast."""
        pos = self._check_ready(ws)
        p = self._fitted()[pos]
        geo = window_geometry(ws)
        if geo.freq != self._epoch_step:
            raise ValueError(f"Holt-Winters was fitted on {self._epoch_step} steps, windows have {geo.freq}")
        idx = resolve_indices(ws, indices)
        out = np.empty((idx.size, geo.pred_len, pos.size), np.float64)
        if idx.size == 0:
            return out.astype(np.float32)
        hist = self._kept.assemble(ws, idx, pos)
        args = (hist.values, self._phase(hist.times).astype(np.int64), hist.origins, hist.lo, self.history_hours,
                *(np.ascontiguousarray(p[:, k]) for k in range(4)), np.ascontiguousarray(p[:, _NFIX + self.m :]),
                out)
        n_threads = max(1, min(os.cpu_count() or 1, 8, idx.size * pos.size * self.history_hours // 20_000_000))
        bounds = np.linspace(0, idx.size, n_threads + 1).astype(np.int64)
        if n_threads == 1:
            _hw_origins(*args, 0, idx.size)
        else:  # the kernel releases the GIL
            with ThreadPoolExecutor(n_threads) as pool:
                list(pool.map(lambda i: _hw_origins(*args, bounds[i], bounds[i + 1]), range(n_threads)))
        return out.astype(np.float32)

    def forecast_sd(self, ws: WindowSource) -> np.ndarray:
        """(pred_len, S) forecast standard deviation per lead for the windows' stations (:func:`ets_forecast_sd`)."""
        pos = self._check_ready(ws)
        p = self._fitted()[pos]
        return ets_forecast_sd(p[:, 0], p[:, 1], p[:, 2], p[:, 3], p[:, 8], self.m, window_geometry(ws).pred_len)

    def predict_quantiles(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(N, pred_len, S, Q): the point forecast plus ``sigma_h z_tau`` (Gaussian, ETS forecast variance)."""
        if self.quantiles is None:
            return super().predict_quantiles(ws, indices)
        from scipy.stats import norm  # scipy is a dependency of statsmodels

        point = self.predict_windows(ws, indices)
        z = norm.ppf(np.asarray(self.quantiles))
        q = point[..., None] + (self.forecast_sd(ws)[..., None] * z).astype(np.float32)[None]
        return np.sort(q, axis=-1)

    @property
    def n_params(self) -> int:
        """4 smoothing parameters (alpha, beta, gamma, phi) plus the m-step seasonal profile per station."""
        return 0 if self.params is None else (4 + self.m) * self.params.shape[0]
