"""Gradient-boosted trees across all stations: one scikit-learn ``HistGradientBoostingRegressor``.

Direct multi-horizon with the *horizon as a feature* (one model for every lead and station, rather than one model per
lead: the leads share most of their structure, and one model is 24x cheaper to fit). Each training row is a
(window, station, lead) triple of the training split, built with the same :class:`WindowDataset` preprocessing as the
evaluation windows. Features:

* lags ``x[-l]`` of the input window for ``lags`` (default 1..24 and 48), NaN where the input is not observed
  (``x_mask`` False: HGB routes missing values natively, nothing is imputed);
* the seasonal lags of the *target*: the input values 24 h and 48 h before the target time (NaN if outside the
  window), the mean of the last 24 inputs;
* calendar of the target time: hour of day and day of year as sin/cos, and the local solar hour (UTC hour + lon/15)
  as sin/cos so one model can share the diurnal cycle across longitudes;
* station latitude, longitude, elevation, and the lead ``h``;
* with covariates (``inputs=["dew_point", "pressure"]``, the same variables a Forecaster trained with ``inputs``
  sees): lags ``u[-l]`` of each covariate's input window for ``input_lags`` (default 1, 2, 3, 6, 12, 24), NaN where
  that covariate is not observed, so the comparison with such a model stays fair.

The target is the change from the last input value (``y[h] - x[-1]``), which trees fit far better than the level;
the forecast adds it back. Training rows are subsampled (``max_rows``, default 200 000) for speed; early stopping
uses a 10 % validation split. Defaults (100 trees of 31 leaves, learning rate 0.2) trade ~6 % of MSE against 300
trees of 63 leaves for a 4x faster fit; prediction -- 3850 stations x 24 leads per window -- runs through the
compiled :class:`Forest` (equal to scikit-learn's ``predict``, ~4x faster).

Quantiles (``quantiles=(0.1, 0.5, 0.9)``): one model per level, fitted with scikit-learn's quantile (pinball) loss
(``loss="quantile"``) on the same rows and features, plus a median model when 0.5 is not a level; the median model
replaces the squared-error one as the point forecast (the contract; taken after sorting, so it is the quantile
forecast's median). The fit costs one model per level. Separately
fitted quantile models can cross; the forecast quantiles are sorted per point, which keeps each level's pinball loss
no worse on average than the crossing values (sorting is a rearrangement, Chernozhukov et al. 2010).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numba
import numpy as np
import pandas as pd
import xarray as xr

from ..data.windows import WindowDataset, WindowSource, check_inputs
from .base import Baseline, resolve_indices, window_arrays, window_geometry
from .quantiles import with_median

if TYPE_CHECKING:  # scikit-learn is imported only when fitting (it is slow to import)
    from sklearn.ensemble import HistGradientBoostingRegressor

__all__ = ["GBDT", "Forest"]

# libgomp busy-waits between parallel regions by default; on a shared (oversubscribed) machine that makes
# HistGradientBoosting ~8x slower, while passive waiting costs little on an idle one. Affects only OpenMP runtimes
# loaded after this import (scikit-learn's is loaded lazily by fit) and never overrides the user's own setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_NS_PER_HOUR = 3600 * 10**9


@numba.njit(parallel=True, cache=True)
def _forest_predict(X: np.ndarray, feature: np.ndarray, threshold: np.ndarray, missing_left: np.ndarray,
                    left: np.ndarray, right: np.ndarray, is_leaf: np.ndarray, value: np.ndarray, roots: np.ndarray,
                    baseline: float, out: np.ndarray) -> None:  # pragma: no cover - compiled
    for i in numba.prange(X.shape[0]):
        acc = baseline
        for t in range(roots.size):
            k = roots[t]
            while not is_leaf[k]:
                v = X[i, feature[k]]
                if np.isnan(v):
                    k = left[k] if missing_left[k] else right[k]
                elif v <= threshold[k]:
                    k = left[k]
                else:
                    k = right[k]
            acc += value[k]
        out[i] = acc


def _mean_last_24(xv: np.ndarray) -> np.ndarray:
    """(N, S) mean of the observed values among the last (up to) 24 inputs of ``xv`` (N, L, S, NaN = missing); NaN
    where none is observed."""
    tail = xv[:, max(xv.shape[1] - 24, 0):, :]
    cnt = np.isfinite(tail).sum(1)
    with np.errstate(invalid="ignore"):
        return np.where(cnt > 0, np.nansum(tail, axis=1) / np.maximum(cnt, 1), np.nan)


def _hour_and_doy(tgt_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fractional UTC hour of day and day of year (1-based) of target times given as int64 nanoseconds."""
    hour = (tgt_ns // _NS_PER_HOUR) % 24 + ((tgt_ns % _NS_PER_HOUR) / _NS_PER_HOUR)
    td = tgt_ns.astype("datetime64[ns]")
    doy = (td.astype("datetime64[D]") - td.astype("datetime64[Y]")).astype(np.int64) + 1
    return hour, doy

class Forest:
    """The trees of a fitted ``HistGradientBoostingRegressor`` (numeric features) as flat arrays, evaluated by a
    compiled row-by-row traversal.

    scikit-learn evaluates tree by tree over the whole float64 copy of the feature matrix, which streams the matrix
    through memory once per tree; here each row is read once and walks all trees while it is in cache (float32 input,
    no copy). The decisions are scikit-learn's exactly (NaN follows ``missing_go_to_left``, else
    ``x <= threshold`` goes left, with the float32 value compared in float64) and leaf values are summed in the same
    order, so the result equals ``model.predict`` (tested).
    """

    def __init__(self, model: HistGradientBoostingRegressor) -> None:
        preds = [it[0] for it in model._predictors]  # one tree per iteration for single-output regression
        nodes = [p.nodes for p in preds]
        if any(n["is_categorical"].any() for n in nodes):
            raise ValueError("categorical splits are not supported by the compiled forest")
        sizes = np.array([len(n) for n in nodes], np.int64)
        offs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        allnodes = np.concatenate(nodes)
        shift = np.repeat(offs, sizes)
        self.feature = allnodes["feature_idx"].astype(np.int64)
        self.threshold = allnodes["num_threshold"].astype(np.float64)
        self.missing_left = allnodes["missing_go_to_left"].astype(np.uint8)
        self.left = allnodes["left"].astype(np.int64) + shift
        self.right = allnodes["right"].astype(np.int64) + shift
        self.is_leaf = allnodes["is_leaf"].astype(np.uint8)
        self.value = allnodes["value"].astype(np.float64)
        self.roots = offs.astype(np.int64)
        self.baseline = float(np.asarray(model._baseline_prediction).ravel()[0])
        self.n_features = int(model.n_features_in_)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Raw predictions (float64) for ``X`` (n, n_features), float32 or float64."""
        X = np.ascontiguousarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected (n, {self.n_features}) features, got {X.shape}")
        out = np.empty(X.shape[0], np.float64)
        _forest_predict(X, self.feature, self.threshold, self.missing_left, self.left, self.right, self.is_leaf,
                        self.value, self.roots, self.baseline, out)
        return out

    def __len__(self) -> int:
        return int(self.value.size)


class GBDT(Baseline):
    """One ``HistGradientBoostingRegressor`` over (window, station, lead) rows; see the module docstring.

    ``seq_len``/``max_horizon`` fix the window geometry used to build training rows (prediction windows need
    ``seq_len >=`` the largest lag and ``pred_len <= max_horizon``); ``max_rows`` caps the training rows;
    ``max_iter``, ``learning_rate``, ``max_leaf_nodes``, ``l2_regularization`` go to scikit-learn. ``n_threads``
    caps scikit-learn's OpenMP threads (None = its default, all cores); on a machine shared with other jobs, 1 is
    often much faster than oversubscribed OpenMP. ``quantiles``: levels forecast with one quantile-loss model each
    (see the module docstring; None = the one squared-error model). ``inputs``: covariates (other data variables;
    the training data and the windows must carry them) whose ``input_lags`` are features too.
    """

    name = "GBDT"
    kind = "ML"
    forecasts_quantiles = True

    def __init__(self, lags: Sequence[int] = (*range(1, 25), 48), seq_len: int = 48, max_horizon: int = 24,
                 max_rows: int = 200_000, max_iter: int = 100, learning_rate: float = 0.2, max_leaf_nodes: int = 31,
                 l2_regularization: float = 0.0, max_gap: int = 3, random_state: int = 0,
                 predict_rows: int = 500_000, n_threads: int | None = None,
                 quantiles: Sequence[float] | None = None, *, variable: str = "temperature",
                 inputs: Sequence[str] | None = None, input_lags: Sequence[int] = (1, 2, 3, 6, 12, 24)) -> None:
        super().__init__(variable=variable)
        self.inputs = check_inputs(inputs, variable)
        self.input_lags = np.asarray(sorted({int(v) for v in input_lags}), np.int64)
        if self.inputs and (self.input_lags.size == 0 or self.input_lags.min() < 1
                            or self.input_lags.max() > int(seq_len)):
            raise ValueError(f"input_lags must be positive integers up to seq_len ({seq_len}), got {list(input_lags)}")
        self.quantiles, self._levels, self._median = with_median(quantiles)
        self.lags = np.asarray(sorted({int(v) for v in lags}), np.int64)
        if self.lags.size == 0 or self.lags.min() < 1:
            raise ValueError(f"lags must be positive integers, got {list(lags)}")
        if int(seq_len) < int(self.lags.max()):
            raise ValueError(f"seq_len ({seq_len}) must cover the largest lag ({int(self.lags.max())})")
        self.seq_len = int(seq_len)
        self.max_horizon = int(max_horizon)
        self.max_rows = int(max_rows)
        self.max_gap = int(max_gap)
        self.random_state = int(random_state)
        self.predict_rows = int(predict_rows)
        self.n_threads = None if n_threads is None else max(1, int(n_threads))
        self.hgb_kwargs: dict[str, Any] = {
            "max_iter": int(max_iter), "learning_rate": float(learning_rate), "max_leaf_nodes": int(max_leaf_nodes),
            "l2_regularization": float(l2_regularization), "early_stopping": True, "validation_fraction": 0.1,
            "n_iter_no_change": 15, "random_state": self.random_state,
        }
        self.model: HistGradientBoostingRegressor | None = None
        self.station_geo: np.ndarray | None = None  # (S, 3) lat, lon, elevation (training order)
        self.n_train_rows: int = 0
        self.used_features: np.ndarray | None = None
        self.forest: Forest | None = None
        #: with quantiles: one (model, forest) per estimated level (the levels + 0.5), else empty
        self.level_models: list[tuple[HistGradientBoostingRegressor, Forest]] = []

    @property
    def feature_names(self) -> list[str]:
        """Column names of the feature matrix."""
        return ([f"lag{int(v)}" for v in self.lags] + ["target_minus_24h", "target_minus_48h", "mean24",
                                                        "hour_sin", "hour_cos", "doy_sin", "doy_cos", "solar_sin",
                                                        "solar_cos", "lat", "lon", "elevation", "lead"]
                + [f"{v}_lag{int(k)}" for v in self.inputs for k in self.input_lags])

    # -- features -------------------------------------------------------------------------------------------------
    def _features(self, x: np.ndarray, xmask: np.ndarray, starts_ns: np.ndarray, step_ns: int, n: np.ndarray,
                  s: np.ndarray, h: np.ndarray, geo: np.ndarray, u: np.ndarray | None = None) -> np.ndarray:
        """Feature rows for (window n, station s, lead h (0-based)) triples; ``x``/``xmask`` (N, L, S), ``u`` the
        covariates (N, L, S, K), NaN where not observed."""
        L = x.shape[1]
        xv = np.where(xmask, x, np.nan)
        F = np.empty((n.size, len(self.feature_names)), np.float32)
        j = 0
        for lag in self.lags:
            F[:, j] = xv[n, L - lag, s]
            j += 1
        for back in (24, 48):
            src = L + h - back  # input index of (target time - back hours)
            ok = (src >= 0) & (src < L)
            F[:, j] = np.where(ok, xv[n, np.clip(src, 0, L - 1), s], np.nan)
            j += 1
        F[:, j] = _mean_last_24(xv)[n, s]
        j += 1
        tgt = starts_ns[n] + (L + h).astype(np.int64) * step_ns
        hour, doy = _hour_and_doy(tgt)
        lat, lon, elev = geo[s, 0], geo[s, 1], geo[s, 2]
        solar = (hour + lon / 15.0) % 24
        F[:, j] = np.sin(2 * np.pi * hour / 24)
        F[:, j + 1] = np.cos(2 * np.pi * hour / 24)
        F[:, j + 2] = np.sin(2 * np.pi * doy / 365.25)
        F[:, j + 3] = np.cos(2 * np.pi * doy / 365.25)
        F[:, j + 4] = np.sin(2 * np.pi * solar / 24)
        F[:, j + 5] = np.cos(2 * np.pi * solar / 24)
        F[:, j + 6], F[:, j + 7], F[:, j + 8] = lat, lon, elev
        F[:, j + 9] = h + 1
        j += 10
        for k in range(len(self.inputs)):
            for lag in self.input_lags:
                F[:, j] = u[n, L - lag, s, k]  # type: ignore[index]
                j += 1
        return F

    def _grid_features(self, x: np.ndarray, xmask: np.ndarray, starts_ns: np.ndarray, step_ns: int, H: int,
                       geo: np.ndarray, u: np.ndarray | None = None) -> np.ndarray:
        """:meth:`_features` for *every* (window, lead, station) of the windows, rows ordered (n, h, s), built by
        broadcasting instead of gathering (the prediction path; equal to ``_features`` on the same rows, tested)."""
        N, L, S = x.shape
        xv = np.where(xmask, x, np.nan)
        F = np.empty((N, H, S, len(self.feature_names)), np.float32)
        j = 0
        for lag in self.lags:
            F[..., j] = xv[:, None, L - lag, :]
            j += 1
        hs = np.arange(H)
        for back in (24, 48):
            src = L + hs - back
            ok = (src >= 0) & (src < L)
            F[..., j] = np.where(ok[None, :, None], xv[:, np.clip(src, 0, L - 1), :], np.nan)
            j += 1
        F[..., j] = _mean_last_24(xv)[:, None, :]
        j += 1
        tgt = starts_ns[:, None] + (L + hs).astype(np.int64)[None, :] * step_ns  # (N, H)
        hour, doy = _hour_and_doy(tgt)
        lat, lon, elev = geo[:, 0], geo[:, 1], geo[:, 2]
        solar = (hour[:, :, None] + lon[None, None, :] / 15.0) % 24
        F[..., j] = np.sin(2 * np.pi * hour / 24)[:, :, None]
        F[..., j + 1] = np.cos(2 * np.pi * hour / 24)[:, :, None]
        F[..., j + 2] = np.sin(2 * np.pi * doy / 365.25)[:, :, None]
        F[..., j + 3] = np.cos(2 * np.pi * doy / 365.25)[:, :, None]
        F[..., j + 4] = np.sin(2 * np.pi * solar / 24)
        F[..., j + 5] = np.cos(2 * np.pi * solar / 24)
        F[..., j + 6], F[..., j + 7], F[..., j + 8] = lat, lon, elev
        F[..., j + 9] = (hs + 1)[None, :, None]
        j += 10
        for k in range(len(self.inputs)):
            for lag in self.input_lags:
                F[..., j] = u[:, None, L - lag, :, k]  # type: ignore[index]
                j += 1
        return F.reshape(N * H * S, -1)

    @staticmethod
    def _starts_ns(ws: WindowSource, idx: np.ndarray) -> np.ndarray:
        return np.asarray(ws.window_start_times, dtype="datetime64[ns]")[idx].astype(np.int64)

    def _threads(self) -> Any:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=self.n_threads, user_api="openmp") if self.n_threads else nullcontext()

    @staticmethod
    def _station_geo(ds: xr.Dataset) -> np.ndarray:
        """(S, 3) latitude, longitude, elevation of the dataset's stations (dataset order)."""
        return np.stack([np.asarray(ds[c].values, np.float64) for c in ("lat", "lon", "elevation")], axis=1)

    # -- fitting --------------------------------------------------------------------------------------------------
    def _fit(self, train: xr.Dataset) -> None:
        """Sample (window, station, lead) rows of the training split and fit the one model."""
        from sklearn.ensemble import HistGradientBoostingRegressor  # heavy optional dependency: only when fitting

        self._begin_fit(train)
        ws = WindowDataset(train, self.variable, seq_len=self.seq_len, label_len=0, pred_len=self.max_horizon,
                           max_gap=self.max_gap, order="identity", inputs=self.inputs)
        if len(ws) == 0:
            raise ValueError(f"training split too short for GBDT windows of {self.seq_len}+{self.max_horizon} steps")
        S, H = len(ws.station_ids), self.max_horizon
        geo = self._station_geo(train)  # the training windows use the dataset (identity) order
        step_ns = int(pd.Timedelta(ws.times[1] - ws.times[0]).value)
        rng = np.random.default_rng(self.random_state)
        # spread the rows over many windows: ~64 (station, lead) pairs per window, at most every window once
        per_window = max(1, min(64, S * H))
        n_win = int(min(len(ws), max(1, -(-self.max_rows // per_window))))
        windows = np.sort(rng.choice(len(ws), size=n_win, replace=False))
        feats, targets = [], []
        for a in range(0, n_win, 128):
            wi = windows[a : a + 128]
            arrs = window_arrays(ws, wi)
            nb = wi.size
            n = np.repeat(np.arange(nb), per_window)
            s = rng.integers(0, S, n.size)
            h = rng.integers(0, H, n.size)
            yv = arrs["y"][n, h, s]
            ok = arrs["y_mask"][n, h, s] & np.isfinite(yv)
            n, s, h = n[ok], s[ok], h[ok]
            base = arrs["x"][n, -1, s]
            F = self._features(arrs["x"], arrs["x_mask"], self._starts_ns(ws, wi), step_ns, n, s, h, geo,
                               arrs.get("u"))
            feats.append(F)
            targets.append((arrs["y"][n, h, s] - base).astype(np.float32))
        X = np.concatenate(feats)[: self.max_rows]
        y = np.concatenate(targets)[: self.max_rows]
        if X.shape[0] < 100:
            raise ValueError(f"GBDT: only {X.shape[0]} observed training rows; need at least 100")
        # a feature without any value (e.g. elevation unknown everywhere) carries nothing and trips sklearn's binning
        self.used_features = np.isfinite(X).any(axis=0)
        self.level_models = []
        X = X[:, self.used_features]
        if self.quantiles is None:
            with self._threads():
                self.model = HistGradientBoostingRegressor(**self.hgb_kwargs).fit(X, y)
            self.forest = Forest(self.model)
        else:
            for tau in self._levels:
                with self._threads():
                    model = HistGradientBoostingRegressor(loss="quantile", quantile=tau, **self.hgb_kwargs).fit(X, y)
                self.level_models.append((model, Forest(model)))
            self.model, self.forest = self.level_models[self._median]
        self.station_geo = geo  # identity order = training order
        self.n_train_rows = int(X.shape[0])
        self._step_ns = step_ns

    # -- forecasting ----------------------------------------------------------------------------------------------
    def predict_windows(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(N, pred_len, S): ``x[-1]`` + the predicted change (the median with quantiles), every lead and station."""
        if self.quantiles is not None:  # the median of the sorted levels, as in predict_quantiles
            return self._sorted_levels(ws, indices)[..., self._median]
        return self._predict(ws, indices, [(self.model, self.forest)])[..., 0]

    def predict_quantiles(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(N, pred_len, S, Q): ``x[-1]`` + each quantile model's predicted change, sorted along the levels."""
        if self.quantiles is None:
            return super().predict_quantiles(ws, indices)
        return self._sorted_levels(ws, indices)[..., [self._levels.index(v) for v in self.quantiles]]

    def _sorted_levels(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
        """Every estimated level's forecast (the levels + 0.5), sorted per point: (N, pred_len, S, levels)."""
        return np.sort(self._predict(ws, indices, self.level_models), axis=-1)

    def _predict(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None,
                 members: list[tuple[Any, Forest | None]]) -> np.ndarray:
        """(N, pred_len, S, len(members)): the forecast of each (model, forest), features built once per chunk."""
        pos = self._check_ready(ws)
        assert self.model is not None and self.station_geo is not None
        g = window_geometry(ws)
        if g.seq_len < int(self.lags.max()):
            raise ValueError(f"GBDT needs seq_len >= {int(self.lags.max())} (its largest lag), windows have "
                             f"{g.seq_len}")
        if g.pred_len > self.max_horizon:
            raise ValueError(f"GBDT was trained for leads up to {self.max_horizon}, windows ask for {g.pred_len}")
        if int(g.freq.value) != self._step_ns:
            raise ValueError(f"GBDT was trained on {pd.Timedelta(self._step_ns)} steps, windows have {g.freq}")
        cov = self._covariate_positions(ws)
        idx = resolve_indices(ws, indices)
        geo = self.station_geo[pos]
        S, H = pos.size, g.pred_len
        out = np.empty((idx.size, H, S, len(members)), np.float32)
        per_window = S * H
        wchunk = max(1, self.predict_rows // per_window)
        for a in range(0, idx.size, wchunk):
            wi = idx[a : a + wchunk]
            arrs = window_arrays(ws, wi)
            nb = wi.size
            u = arrs["u"][..., cov] if cov is not None else None
            F = self._grid_features(arrs["x"], arrs["x_mask"], self._starts_ns(ws, wi), self._step_ns, H, geo, u)
            F = F if self.used_features.all() else F[:, self.used_features]
            for k, (model, forest) in enumerate(members):
                delta = self._predict_rows(F, model, forest).astype(np.float32).reshape(nb, H, S)
                out[a : a + nb, ..., k] = arrs["x"][:, -1:, :] + delta
        return out

    def _covariate_positions(self, ws: WindowSource) -> np.ndarray | None:
        """Positions of this model's covariates among the windows' ``inputs`` (None without covariates)."""
        if not self.inputs:
            return None
        have = list(getattr(ws, "inputs", ()) or ())
        missing = [v for v in self.inputs if v not in have]
        if missing:
            raise ValueError(f"{self.name} uses the inputs {', '.join(self.inputs)}, but the windows carry "
                             f"{', '.join(have) if have else 'no inputs'}: missing {', '.join(missing)}")
        return np.asarray([have.index(v) for v in self.inputs], np.int64)

    def _predict_rows(self, F: np.ndarray, model: Any, forest: Forest | None) -> np.ndarray:
        if forest is None:
            with self._threads():
                return model.predict(F)
        n = numba.get_num_threads()
        if self.n_threads:
            numba.set_num_threads(min(self.n_threads, numba.config.NUMBA_NUM_THREADS))
        try:
            return forest.predict(F)
        finally:
            numba.set_num_threads(n)

    @property
    def n_params(self) -> int:
        """Total number of tree nodes (the model's size; split thresholds + leaf values), of every level's model."""
        if self.level_models:
            return int(sum(len(f) for _, f in self.level_models))
        if self.model is None:
            return 0
        if self.forest is not None:
            return len(self.forest)
        return int(sum(len(p.nodes) for it in self.model._predictors for p in it))
