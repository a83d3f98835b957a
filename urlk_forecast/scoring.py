"""The one scorer: every method -- baselines and the neural ``Forecaster`` alike -- is scored here.

:func:`score_methods` forecasts chunks of windows of a :class:`~urlk_forecast.data.windows.WindowSource` with each
method and scores them with the Corrformer-style metrics of :mod:`urlk_forecast.metrics` (per window the mean over
lead times x stations, then the mean over windows; physical units). Several methods are scored on the *same* points:
the observed targets (``y_mask``) that every method forecast; a point one method left NaN (a station with no observed
input, a grid that does not cover a station) is removed for all, and each method's ``coverage`` says what share of
the observed targets it forecast. ``Method.evaluate``, the benchmark table and the end-of-training table all call it.

Quantile forecasts: a method whose ``quantiles`` is set is forecast with ``predict_quantiles`` (its point forecast --
the median -- is the level-0.5 slice when 0.5 is a level, so the network or model runs once; else
``predict_windows``) and additionally scored, on the same common points, with (:mod:`urlk_forecast.metrics`)

* the pinball loss per level and their mean, averaged like the MAE (per window over lead x stations, then over
  windows); at level 0.5 it is half the MAE of the median;
* the CRPS estimated from the quantiles, ``2 sum_i w_i pinball_i`` with the cell weights of
  :func:`~urlk_forecast.metrics.crps_weights` (its bias for few levels is documented there; for a point forecast
  the CRPS is the MAE);
* the interval coverage of each central interval the levels form (0.1/0.9 -> 80 %): the share of the scored
  targets inside ``[q_lo, q_hi]`` (pooled over all points, so a binomial proportion).

A point a method leaves NaN in any quantile is unforecast, like a NaN point forecast. Methods without quantiles get
``None``/NaN for these scores and are scored exactly as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from .data.windows import WindowSource
from .metrics import central_intervals, crps_weights, evaluate_arrays, level_label, per_horizon, pinball
from .utils.quantiles import quantile_levels

__all__ = ["Scores", "ScoreTable", "score_methods", "window_targets", "resolve_indices", "method_labels",
           "to_numpy"]

Progress = Callable[[str], None]


class _Forecasts(Protocol):
    """What the scorer needs of a method (the :class:`~urlk_forecast.method.Method` contract has it)."""

    name: str

    def predict_windows(self, ws: WindowSource, indices: np.ndarray | None = None) -> np.ndarray: ...

    def predict_quantiles(self, ws: WindowSource, indices: np.ndarray | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class Scores:
    """One method's scores on a set of windows (what every ``Method.evaluate`` returns).

    ``mse``/``mae`` in (units)^2 / units; ``n_windows`` windows with a scored point; ``n_points`` scored targets;
    ``n_unforecast`` observed targets this method left NaN (excluded); ``coverage`` = forecast share of the observed
    targets; ``per_lead``: columns ``lead`` (1..pred_len), ``mse``, ``mae``, ``windows`` (with quantiles also
    ``crps``, ``pinball`` and ``cover<P>`` per central interval). Indexing by name (``scores["mse"]``) works as for
    a dict.

    Quantile forecasts (see the module docstring; ``None``/NaN for a point forecast): ``quantiles`` the levels,
    ``pinball`` the loss per level and ``pinball_mean`` their mean (units), ``crps`` (units), ``interval_coverage``
    nominal coverage -> share of the scored targets inside that central interval (``{0.8: 0.79}``).
    """

    method: str
    mse: float
    mae: float
    n_windows: int
    n_points: int
    n_unforecast: int
    coverage: float
    predict_seconds: float
    per_lead: pd.DataFrame = field(repr=False, compare=False)
    quantiles: tuple[float, ...] | None = None
    pinball: dict[float, float] | None = None
    pinball_mean: float = float("nan")
    crps: float = float("nan")
    interval_coverage: dict[float, float] | None = None

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        """The scalar scores as a dict (no per-lead table)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "per_lead"}


@dataclass
class ScoreTable:
    """Scores of several methods on the same points, in the order given; methods that failed are in ``failures``."""

    scores: dict[str, Scores]
    observed: int
    points: int
    windows: int
    failures: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Scores:
        return self.scores[name]

    def per_lead(self) -> pd.DataFrame:
        """Long table: ``method``, ``lead``, ``mse``, ``mae`` (and ``crps`` when a method forecasts quantiles)."""
        cols = ["method", "lead", "mse", "mae"]
        if any(s.quantiles is not None for s in self.scores.values()):
            cols.append("crps")
        frames = [s.per_lead.assign(method=n).reindex(columns=cols) for n, s in self.scores.items()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def resolve_indices(ws: WindowSource, indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
    """Window indices as an int64 array (``None`` = all windows; negative indices count from the end);
    out-of-range indices raise IndexError."""
    n = len(ws)
    if indices is None:
        return np.arange(n, dtype=np.int64)
    idx = np.asarray(indices)
    if idx.ndim != 1:
        idx = idx.reshape(-1)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"window indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.size and ((idx < -n) | (idx >= n)).any():
        bad = idx[(idx < -n) | (idx >= n)][0]
        raise IndexError(f"window index {int(bad)} out of range for {n} windows")
    return np.where(idx < 0, idx + n, idx)


def window_targets(ws: WindowSource, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The forecast targets ``y`` (N, pred_len, S) float32 and the mask of observed, finite targets."""
    b = ws.batch(indices)
    y = to_numpy(b["y"])[:, ws.label_len:].astype(np.float32, copy=False)
    mask = to_numpy(b["y_mask"])[:, ws.label_len:].astype(bool) & np.isfinite(y)
    return y, mask


def to_numpy(a: ArrayLike) -> np.ndarray:
    """A torch tensor (it has ``detach``; torch is not imported here) or array-like as a numpy array (no copy when
    already numpy)."""
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def method_labels(methods: Sequence[_Forecasts]) -> list[str]:
    """The table label of each method: its ``name``, with `` #2``, `` #3`` ... appended to repeated names (the keys
    of :attr:`ScoreTable.scores` and ``failures``)."""
    labels: list[str] = []
    for m in methods:
        base = str(getattr(m, "name", type(m).__name__))
        label, k = base, 2
        while label in labels:
            label, k = f"{base} #{k}", k + 1
        labels.append(label)
    return labels


class _Accumulator:
    """Window-weighted running sums of one method's metrics over chunks."""

    def __init__(self, pred_len: int) -> None:
        self.sums = np.zeros(2)
        self.weight = 0
        self.lead_sums = np.zeros((pred_len, 2))
        self.covered = 0
        self.unforecast = 0
        self.seconds = 0.0

    def add(self, pred: np.ndarray, y: np.ndarray, common: np.ndarray, lead_w: np.ndarray) -> None:
        r = evaluate_arrays(pred, y, common)
        k = int(r["windows"])
        self.sums += np.array([r["mse"], r["mae"]]) * k
        self.weight += k
        ph = per_horizon(pred, y, common)[["mse", "mae"]].to_numpy(np.float64)
        self.lead_sums += np.nan_to_num(ph) * lead_w[:, None]


class _QuantileAccumulator:
    """Running sums of one method's quantile scores over chunks: window-averaged pinball per level (overall and per
    lead) and pooled counts of targets inside each central interval."""

    #: elements of (windows x lead x stations x levels) per float64 block
    BLOCK = 1 << 22

    def __init__(self, levels: tuple[float, ...], pred_len: int) -> None:
        self.levels = levels
        self.intervals = central_intervals(levels)
        self.sums = np.zeros(len(levels))
        self.lead_sums = np.zeros((pred_len, len(levels)))
        self.inside = np.zeros((pred_len, len(self.intervals)), np.int64)
        self.points = np.zeros(pred_len, np.int64)

    def add(self, q: np.ndarray, y: np.ndarray, common: np.ndarray) -> None:
        """Add windows with quantile forecasts ``q`` (N, H, S, Q), targets ``y`` and scored points ``common``."""
        step = max(1, self.BLOCK // max(1, int(np.prod(q.shape[1:]))))
        for a in range(0, q.shape[0], step):
            qc, yc, mc = q[a:a + step], y[a:a + step], common[a:a + step]
            loss = np.where(mc[..., None], pinball(qc, yc, self.levels), 0.0)  # (n, H, S, Q)
            cnt_lead = mc.sum(axis=2)  # (n, H)
            lead_loss = loss.sum(axis=2)  # (n, H, Q)
            cnt = cnt_lead.sum(axis=1)
            ok = cnt > 0
            self.sums += (lead_loss.sum(axis=1)[ok] / cnt[ok, None]).sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                self.lead_sums += np.nan_to_num(lead_loss / cnt_lead[..., None]).sum(axis=0)
            self.points += cnt_lead.sum(axis=0)
            for k, (lo, hi, _) in enumerate(self.intervals):
                self.inside[:, k] += ((qc[..., lo] <= yc) & (yc <= qc[..., hi]) & mc).sum(axis=(0, 2))

    def finish(self, windows: int, lead_w: np.ndarray) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The scalar quantile scores of :class:`Scores` and the per-lead columns."""
        w2 = 2.0 * crps_weights(self.levels)
        with np.errstate(invalid="ignore", divide="ignore"):
            pin = self.sums / windows if windows else np.full(len(self.levels), np.nan)
            lead_pin = self.lead_sums / lead_w[:, None]
            share = self.inside / self.points[:, None]
            total = self.inside.sum(axis=0) / self.points.sum()
        scalars = {"quantiles": self.levels, "pinball": dict(zip(self.levels, map(float, pin))),
                   "pinball_mean": float(pin.mean()), "crps": float(pin @ w2),
                   "interval_coverage": {c: float(v) for (_, _, c), v in zip(self.intervals, total)}}
        lead = {"crps": lead_pin @ w2, "pinball": lead_pin.mean(axis=1),
                **{f"cover{level_label(c)}": share[:, k] for k, (_, _, c) in enumerate(self.intervals)}}
        return scalars, lead


def score_methods(methods: Sequence[_Forecasts], ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None,
                  *, batch_size: int = 256, keep_going: bool = False, progress: Progress | None = None) -> ScoreTable:
    """Forecast windows ``indices`` of ``ws`` (all when None) with every method and score them on common points.

    ``keep_going``: a method whose ``predict_windows`` raises is dropped and named in ``failures`` (the table goes
    on); otherwise the error propagates. ``progress`` receives a line at most every 30 s.
    """
    idx = resolve_indices(ws, indices)
    if idx.size == 0:
        raise ValueError("no windows to score")
    labels = method_labels(methods)
    live = dict(zip(labels, methods))
    acc = {n: _Accumulator(ws.pred_len) for n in labels}
    qacc: dict[str, _QuantileAccumulator] = {}
    failures: dict[str, str] = {}
    observed = points = 0
    lead_w = np.zeros(ws.pred_len)
    bs = max(1, int(batch_size))
    t_report = time.perf_counter()
    for start in range(0, idx.size, bs):
        chunk = idx[start:start + bs]
        y, mask = window_targets(ws, chunk)
        preds, qpreds = _forecast_chunk(live, acc, ws, chunk, y.shape, keep_going, failures, progress)
        common = mask.copy()
        for n, p in preds.items():
            fin = np.isfinite(p)
            if n in qpreds:
                fin &= np.isfinite(qpreds[n]).all(axis=-1)
            acc[n].covered += int((mask & fin).sum())
            acc[n].unforecast += int((mask & ~fin).sum())
            common &= fin
        observed += int(mask.sum())
        points += int(common.sum())
        if common.any():
            wh = common.any(axis=2).sum(axis=0).astype(np.float64)
            lead_w += wh
            for n, p in preds.items():
                acc[n].add(p, y, common, wh)
            for n, q in qpreds.items():
                qacc.setdefault(n, _QuantileAccumulator(_levels(live[n], n), ws.pred_len)).add(q, y, common)
        if progress is not None and (time.perf_counter() - t_report > 30 or start + bs >= idx.size):
            progress(f"scored {min(start + bs, idx.size)}/{idx.size} windows")
            t_report = time.perf_counter()
    if not live:
        raise ValueError(f"every method failed: {failures}")
    if points == 0:
        raise ValueError("none of the selected windows has an observed target that every method forecast; "
                         "nothing to score")
    scores = {n: _finish(n, acc[n], lead_w, points, observed, qacc.get(n)) for n in live}
    windows = next(iter(acc[n].weight for n in live))
    return ScoreTable(scores=scores, observed=observed, points=points, windows=windows, failures=failures)


def _levels(method: _Forecasts, label: str) -> tuple[float, ...] | None:
    """The method's quantile levels (checked), or None for a point forecast."""
    levels = getattr(method, "quantiles", None)
    return quantile_levels(levels, f"{label}: quantiles", require_median=False)


def _predict(m: _Forecasts, n: str, ws: WindowSource, chunk: np.ndarray,
             shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    """One method's point forecast (N, H, S) and quantile forecast (N, H, S, Q) or None, both checked."""
    levels = _levels(m, n)
    q = None
    if levels is not None:
        q = to_numpy(m.predict_quantiles(ws, chunk)).astype(np.float32, copy=False)
        if q.shape != (*shape, len(levels)):
            raise ValueError(f"{n}: predict_quantiles returned shape {q.shape}, expected {(*shape, len(levels))} "
                             f"(N, pred_len, S, Q) for the levels {list(levels)}")
        if (np.diff(q, axis=-1) < 0).any():
            raise ValueError(f"{n}: predict_quantiles returned crossing quantiles (not non-decreasing along the "
                             f"levels {list(levels)})")
    if levels is not None and 0.5 in levels:
        p = q[..., levels.index(0.5)]
    else:
        p = to_numpy(m.predict_windows(ws, chunk)).astype(np.float32, copy=False)
    if p.shape != shape:
        raise ValueError(f"{n}: predict_windows returned shape {p.shape}, expected {shape} (N, pred_len, S)")
    return p, q


def _forecast_chunk(live: dict[str, _Forecasts], acc: dict[str, _Accumulator], ws: WindowSource, chunk: np.ndarray,
                    shape: tuple[int, ...], keep_going: bool, failures: dict[str, str],
                    progress: Progress | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    preds: dict[str, np.ndarray] = {}
    qpreds: dict[str, np.ndarray] = {}
    for n, m in list(live.items()):
        t0 = time.perf_counter()
        try:
            p, q = _predict(m, n, ws, chunk, shape)
        except Exception as e:
            if not keep_going:
                raise
            failures[n] = f"predict failed: {type(e).__name__}: {e}"
            if progress is not None:
                progress(f"{n} FAILED while predicting: {e}")
            del live[n]
            continue
        acc[n].seconds += time.perf_counter() - t0
        preds[n] = p
        if q is not None:
            qpreds[n] = q
    return preds, qpreds


def _finish(name: str, a: _Accumulator, lead_w: np.ndarray, points: int, observed: int,
            qa: _QuantileAccumulator | None = None) -> Scores:
    with np.errstate(invalid="ignore", divide="ignore"):
        lead = a.lead_sums / lead_w[:, None]
    per_lead = pd.DataFrame({"lead": np.arange(1, lead.shape[0] + 1), "mse": lead[:, 0], "mae": lead[:, 1],
                             "windows": lead_w.astype(np.int64)})
    w = a.weight
    extra: dict[str, Any] = {}
    if qa is not None:
        extra, lead_cols = qa.finish(w, lead_w)
        per_lead = per_lead.assign(**lead_cols)
    return Scores(method=name, mse=float(a.sums[0] / w) if w else float("nan"),
                  mae=float(a.sums[1] / w) if w else float("nan"), n_windows=int(w), n_points=int(points),
                  n_unforecast=int(a.unforecast), coverage=a.covered / observed if observed else float("nan"),
                  predict_seconds=float(a.seconds), per_lead=per_lead, **extra)
