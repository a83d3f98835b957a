"""Rolling-origin backtests: every method forecasts from many origins, each time knowing only the data up to it.

:func:`cross_validation` follows neuralforecast's ``cross_validation``: the *origins* are the last ``n_windows``
forecast origins of the data, ``step`` time steps apart, the last one leaving exactly ``pred_len`` steps of targets.
An origin is the issue time of a forecast: its last input step (``forecast_reference_time`` of
:meth:`Forecaster.predict <urlk_forecast.forecaster.Forecaster.predict>`; neuralforecast's ``cutoff``). From each
origin every method forecasts leads ``1..pred_len``, the target at lead ``h`` being ``h`` steps after it, from
windows of a :class:`~urlk_forecast.data.windows.WindowDataset` over the whole data (whose inputs never carry
information from after their last step). Each method is fitted on the data up to the first origin (``time <=
origin``), or -- with ``refit=N`` -- refitted on the data up to every N-th origin and used until the next refit.

Every method goes through the same :class:`~urlk_forecast.method.Method` calls (``fit``, ``predict_windows``,
``predict_quantiles`` when it has ``quantiles``; a method with the level 0.5 forecasts its point as that level, as in
the scorer); scores come from the one scorer (:func:`urlk_forecast.scoring.score_methods`) on the forecasts made:
observed targets only (NaN targets excluded), and only the points that every method forecast. Methods with
quantiles are also scored with the pinball loss, the CRPS estimate and the coverage of each central interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .data.windows import WindowDataset, WindowSource
from .method import Method
from .metrics import level_label
from .scoring import Scores, method_labels, resolve_indices, score_methods, window_targets
from .utils import quantile_label

__all__ = ["Backtest", "cross_validation", "origin_rows", "refit_schedule", "warm_refits", "FitFn", "TABLE_COLUMNS"]

#: ``fit_fn(method, data_up_to_origin, k)``: how the method is (re)fitted at origin number ``k`` (0 = the first)
FitFn = Callable[[Method, xr.Dataset, int], Any]
Progress = Callable[[str], None]

#: the bookkeeping columns of the tidy table, before one column per method (and per quantile)
TABLE_COLUMNS: tuple[str, ...] = ("origin", "station", "lead", "target_time", "target")


@dataclass
class Backtest:
    """The result of :func:`cross_validation`.

    ``table``: one row per (origin, station, lead) -- columns :data:`TABLE_COLUMNS`, then each method's forecast
    (its label, :func:`~urlk_forecast.scoring.method_labels`) and ``<label>_q<level>`` per quantile level of methods
    that forecast quantiles; ``target`` is NaN where nothing was observed. ``per_lead`` (method, lead, mse, mae,
    windows), ``per_origin`` (method, origin, mse, mae, points) and ``overall`` (method, mse, mae, points,
    coverage = the share of the observed targets the method forecast) score the point forecasts on the points every
    method forecast. When a method forecasts quantiles, all three also have ``pinball`` (the mean over its levels),
    ``crps`` (estimated from the quantiles) and ``cover<P>`` per central interval (``cover80``: the share of the
    scored targets inside the 0.1..0.9 interval, pooled over the points of that row), NaN for point forecasts.
    ``fits`` lists every fit (method, origin k, origin time, last time step fitted on, seconds; ``kept`` for a
    method used as given).
    """

    table: pd.DataFrame
    per_lead: pd.DataFrame
    per_origin: pd.DataFrame
    overall: pd.DataFrame
    fits: pd.DataFrame
    methods: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def summary_text(self) -> str:
        """MSE/MAE per lead and per origin, one column per method, and the quantile scores of the methods that
        forecast quantiles (for the terminal)."""
        units = self.info.get("units", "")
        prob = _prob_columns(self.overall)
        q_methods = list(self.overall.dropna(subset=prob[:1])["method"]) if prob else []
        lines = [f"Backtest: {self.info.get('variable', '')} [{units}], {self.per_origin['origin'].nunique()} "
                 f"origins, {self.info.get('stations', '?')} stations; scored points (observed, forecast by every "
                 f"method): {int(self.overall['points'].iloc[0]) if len(self.overall) else 0}",
                 "", "overall:", self.overall.to_string(index=False, float_format=_fmt)]
        for key, long, title in (("lead", self.per_lead, "per lead (steps after the origin)"),
                                 ("origin", self.per_origin, "per origin")):
            lines += ["", f"{title}:", _wide(long, key, self.methods, ("mse", "mae")).to_string(float_format=_fmt)]
            if q_methods:
                lines += ["", f"{title}, quantile forecasts (pinball: mean over the levels; cover<P>: share of the "
                          "targets inside the central P % interval):",
                          _wide(long, key, q_methods, tuple(prob)).to_string(float_format=_fmt)]
        return "\n".join(lines) + "\n"


def _fmt(v: float) -> str:
    return f"{v:.4g}"


_LABELS = {"mse": "MSE", "mae": "MAE", "crps": "CRPS"}


def _prob_columns(frame: pd.DataFrame) -> list[str]:
    """The quantile-score columns of a summary: ``pinball``, ``crps``, ``cover<P>`` (those present)."""
    return [c for c in frame.columns if c in ("pinball", "crps") or c.startswith("cover") and c != "coverage"]


def _wide(long: pd.DataFrame, key: str, methods: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """``key`` rows, one column per metric and method (``MSE <method>``, ..., ``cover80 <method>``)."""
    parts = [long.pivot(index=key, columns="method", values=m).reindex(columns=list(methods))
             .add_prefix(f"{_LABELS.get(m, m)} ") for m in metrics]
    out = pd.concat(parts, axis=1)
    out.columns.name = None
    return out


# ------------------------------------------------------------------------------------------------ the plan
def origin_rows(n_times: int, *, n_windows: int, step: int, seq_len: int, pred_len: int) -> np.ndarray:
    """Time-row index of each origin (its last input step), oldest first: the last leaves exactly ``pred_len``
    target steps, the others ``step`` rows apart; the first needs ``seq_len`` input rows. ValueError when the data
    is too short for that."""
    for name, v in (("n_windows", n_windows), ("step", step), ("seq_len", seq_len), ("pred_len", pred_len)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    last = int(n_times) - 1 - int(pred_len)
    rows = last - int(step) * np.arange(int(n_windows) - 1, -1, -1, dtype=np.int64)
    if rows[0] < int(seq_len) - 1:
        span = int(seq_len) + int(pred_len) + int(step) * (int(n_windows) - 1)
        raise ValueError(f"{n_windows} origins {step} steps apart (n_windows={n_windows}, step={step}) with "
                         f"seq_len={seq_len} and pred_len={pred_len} need {span} time steps; the data has {n_times}")
    return rows


def refit_schedule(n_windows: int, refit: bool | int) -> np.ndarray:
    """(n_windows,) bool: the origins at which methods are (re)fitted. ``refit=False`` (or 0): the first only;
    ``True``: every origin; ``N``: origins 0, N, 2N, ..."""
    if isinstance(refit, bool):
        every = 1 if refit else 0
    elif isinstance(refit, (int, np.integer)) and int(refit) >= 0:
        every = int(refit)
    else:
        raise ValueError(f"refit must be False, True or a whole number of origins >= 0, got {refit!r}")
    k = np.arange(int(n_windows))
    return (k == 0) | ((k % every == 0) if every else False)


def warm_refits(model: Method, refit_max_time: float | None, **fit_kw: Any) -> FitFn:
    """A ``fit_fn`` for a neural forecaster whose ``fit`` takes ``warm_start`` and ``max_time`` (the
    :class:`~urlk_forecast.forecaster.Forecaster`): its first fit is ``model.fit(train, **fit_kw)``, every refit
    continues from the current weights for at most ``refit_max_time`` seconds; other methods are fitted afresh."""
    if refit_max_time is not None and not float(refit_max_time) > 0:
        raise ValueError(f"refit_max_time must be > 0 seconds or None, got {refit_max_time!r}")

    def fit(method: Method, train: xr.Dataset, k: int) -> Any:
        if method is not model:
            return method.fit(train)
        if k == 0 or getattr(model, "net", None) is None:
            return model.fit(train, **fit_kw)
        return model.fit(train, warm_start=True, **{**fit_kw, "max_time": refit_max_time})  # type: ignore[call-arg]

    return fit


def _default_fit(method: Method, train: xr.Dataset, k: int) -> Any:
    return method.fit(train)


# ------------------------------------------------------------------------------------------------ the run
def cross_validation(methods: Sequence[Method], data: xr.Dataset, *, n_windows: int, step: int = 1,
                     refit: bool | int = False, seq_len: int = 48, label_len: int = 24, pred_len: int = 24,
                     max_gap: int = 3, order: Any = None, fitted: bool | Sequence[bool] = False,
                     fit_fn: FitFn | None = None, batch_size: int = 256,
                     progress: Progress | None = None) -> Backtest:
    """Rolling-origin backtest of ``methods`` (all forecasting the same variable) on ``data``; see the module
    docstring and :class:`Backtest`.

    ``n_windows`` origins ``step`` steps apart (:func:`origin_rows`); ``refit``: False = fit once on the data up to
    the first origin, True = refit at every origin, N = at every N-th (:func:`refit_schedule`), each time on the
    data up to that origin. ``seq_len``/``label_len``/``pred_len``/``max_gap``/``order``: the windows, as in
    :class:`~urlk_forecast.data.windows.WindowDataset`. ``fitted``: per method (or one for all), True = already
    fitted: used as given at the first origin (the data it saw -- its ``train_period`` and a Forecaster's validation
    data, ``train_info["data_end"]`` -- must end by then) and refitted only at later refit origins.
    ``fit_fn(method, data_up_to_origin, k)`` does each fit (default ``method.fit(data_up_to_origin)``;
    :func:`warm_refits` continues a neural network's training instead).
    ``data``'s own splits (``attrs["split_bounds"]``) are ignored: the origins define what is known. The windows
    carry every covariate a method reads (its ``inputs``, e.g. a Forecaster or GBDT trained with covariates).
    """
    methods = list(methods)
    if not methods:
        raise ValueError("methods: give at least one forecasting method")
    variable = _common_variable(methods)
    ds = _without_splits(data)
    inputs = tuple(dict.fromkeys(v for m in methods for v in getattr(m, "inputs", None) or ()))  # covariates
    ws = WindowDataset(ds, variable, seq_len, label_len, pred_len, max_gap=max_gap, order=order, inputs=inputs)
    rows = origin_rows(len(ws.times), n_windows=n_windows, step=step, seq_len=seq_len, pred_len=pred_len)
    idx = rows - (int(seq_len) - 1)  # window i's inputs are rows i .. i + seq_len - 1
    due = refit_schedule(n_windows, refit)
    kept = _fitted_flags(fitted, len(methods))
    labels = method_labels(methods)
    say: Progress = progress or (lambda _msg: None)
    fit = fit_fn or _default_fit
    n, shape = idx.size, (idx.size, int(pred_len), ws.num_stations)
    point = {label: np.full(shape, np.nan, np.float32) for label in labels}
    quant: dict[str, np.ndarray] = {}
    fits: list[dict[str, Any]] = []
    starts = [int(a) for a in np.flatnonzero(due)]
    for a, b in zip(starts, [*starts[1:], n]):
        train = ds.isel(time=slice(0, int(rows[a]) + 1))
        for label, m, given in zip(labels, methods, kept):
            fits.append(_fit_at(fit, m, label, train, a, given and a == 0, say))
        say(f"forecasting origins {a + 1}..{b} of {n}")
        for label, m in zip(labels, methods):
            p, q = _forecast(m, label, ws, idx[a:b], int(batch_size))
            point[label][a:b] = p
            if q is not None:
                quant.setdefault(label, np.full((*shape, q.shape[-1]), np.nan, np.float32))[a:b] = q
    y, mask = window_targets(ws, idx)
    table = _tidy(ws, rows, np.where(mask, y, np.float32(np.nan)), point, quant, methods, labels)
    made = [_Made(label, point[label], idx, m.quantiles if label in quant else None, quant.get(label))
            for label, m in zip(labels, methods)]
    per_lead, per_origin, overall = _summaries(ws, idx, rows, mask, made, int(batch_size))
    info = {"variable": variable, "units": ws.units, "stations": ws.num_stations, "n_windows": int(n),
            "step": int(step), "refit": refit, "seq_len": int(seq_len), "label_len": int(label_len),
            "pred_len": int(pred_len), "time_step": str(pd.Timedelta(ws.times[1] - ws.times[0])),
            "first_origin": str(ws.times[rows[0]]), "last_origin": str(ws.times[rows[-1]])}
    return Backtest(table=table, per_lead=per_lead, per_origin=per_origin, overall=overall,
                    fits=pd.DataFrame(fits), methods=labels, info=info)


def _common_variable(methods: Sequence[Method]) -> str:
    found = {str(getattr(m, "variable", "")) for m in methods}
    if len(found) != 1 or "" in found:
        raise ValueError(f"methods: every method must forecast the same variable, got {sorted(found)}")
    return found.pop()


def _without_splits(data: xr.Dataset) -> xr.Dataset:
    if not isinstance(data, xr.Dataset):
        raise TypeError(f"data must be an xarray.Dataset in the station schema, got {type(data).__name__}")
    ds = data.copy(deep=False)
    ds.attrs = {k: v for k, v in data.attrs.items() if k not in ("split_bounds", "split_context", "split")}
    return ds


def _fitted_flags(fitted: bool | Sequence[bool], n: int) -> list[bool]:
    if isinstance(fitted, (bool, np.bool_)):
        return [bool(fitted)] * n
    flags = [bool(f) for f in fitted]
    if len(flags) != n:
        raise ValueError(f"fitted: give one flag per method ({n}), got {len(flags)}")
    return flags


def _fit_at(fit: FitFn, method: Method, label: str, train: xr.Dataset, k: int, given: bool,
            say: Progress) -> dict[str, Any]:
    """Fit ``method`` on ``train`` (the data up to origin ``k``), or check that a given fit saw nothing later."""
    origin = pd.Timestamp(train["time"].values[-1])
    row = {"method": label, "k": k, "origin": origin, "fitted_until": origin, "fit_s": float("nan"), "kept": given}
    if given:
        seen = _seen_until(method)
        if seen is not None and seen > origin:
            raise ValueError(f"{label} was trained on data up to {seen}, after the first origin {origin}: its "
                             "forecasts would be in-sample; fit it on earlier data, or move the first origin later "
                             "with a smaller n_windows= or step=")
        row["fitted_until"] = seen if seen is not None else pd.NaT
        return row
    say(f"fitting {label} on the data up to {origin} (origin {k + 1})")
    t0 = time.perf_counter()
    fit(method, train, k)
    row["fit_s"] = time.perf_counter() - t0
    return row


def _seen_until(method: Method) -> pd.Timestamp | None:
    """The last time step a fitted method saw: the end of its ``train_period`` or, later, of the validation data its
    fit recorded (``train_info["data_end"]``, the Forecaster's); None when it tells neither."""
    ends = []
    period = getattr(method, "train_period", None)
    if period is not None:
        ends.append(pd.Timestamp(period[1]))
    info = getattr(method, "train_info", None)
    if isinstance(info, dict) and info.get("data_end"):
        ends.append(pd.Timestamp(info["data_end"]))
    return max(ends) if ends else None


def _forecast(method: Method, label: str, ws: WindowSource, idx: np.ndarray,
              batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Point forecasts (N, pred_len, S) and, when the method has ``quantiles``, (N, pred_len, S, Q). With the level
    0.5 the point forecast is that level (the ``Method`` contract; the scorer does the same), computed once."""
    shape = (idx.size, ws.pred_len, ws.num_stations)
    levels = [float(v) for v in getattr(method, "quantiles", None) or ()]
    point = np.empty(shape, np.float32)
    quant = np.empty((*shape, len(levels)), np.float32) if levels else None
    for i in range(0, idx.size, max(1, batch_size)):
        chunk = idx[i:i + max(1, batch_size)]
        if quant is not None:
            q = np.asarray(method.predict_quantiles(ws, chunk), np.float32)
            if q.shape != (chunk.size, *shape[1:], quant.shape[-1]):
                raise ValueError(f"{label}: predict_quantiles returned shape {q.shape}, expected "
                                 f"{(chunk.size, *shape[1:], quant.shape[-1])} (N, pred_len, S, Q)")
            quant[i:i + chunk.size] = q
            if 0.5 in levels:
                point[i:i + chunk.size] = q[..., levels.index(0.5)]
                continue
        p = np.asarray(method.predict_windows(ws, chunk), np.float32)
        if p.shape != (chunk.size, *shape[1:]):
            raise ValueError(f"{label}: predict_windows returned shape {p.shape}, expected "
                             f"{(chunk.size, *shape[1:])} (N, pred_len, S)")
        point[i:i + chunk.size] = p
    return point, quant


# ------------------------------------------------------------------------------------------------ outputs
def _tidy(ws: WindowSource, rows: np.ndarray, target: np.ndarray, point: dict[str, np.ndarray],
          quant: dict[str, np.ndarray], methods: Sequence[Method], labels: Sequence[str]) -> pd.DataFrame:
    """One row per (origin, station, lead), in that order."""
    n, H, S = target.shape
    times = np.asarray(ws.times.values, dtype="datetime64[ns]")

    def flat(a: np.ndarray) -> np.ndarray:  # (n, H, S) -> rows ordered origin, station, lead
        return np.ascontiguousarray(np.swapaxes(a, 1, 2)).reshape(-1)

    lead = np.arange(1, H + 1)
    cols: dict[str, Any] = {
        "origin": np.repeat(times[rows], S * H),
        "station": np.tile(np.repeat(np.asarray([str(s) for s in ws.station_ids], dtype=object), H), n),
        "lead": np.tile(lead, n * S),
        "target_time": flat(np.broadcast_to(times[rows[:, None] + lead[None, :]][:, :, None], (n, H, S))),
        "target": flat(target),
    }
    for label, m in zip(labels, methods):
        names = [label] + ([quantile_label(label, q) for q in m.quantiles] if label in quant and m.quantiles else [])
        clash = [c for c in names if c in cols]
        if clash:
            raise ValueError(f"method label {clash[0]!r} clashes with a column of the backtest table; rename it")
        cols[label] = flat(point[label])
        for j, c in enumerate(names[1:]):
            cols[c] = flat(quant[label][..., j])
    return pd.DataFrame(cols)


class _Made:
    """The forecasts a method made at the backtest's origins (and its quantile forecasts, when it made them),
    replayed to the one scorer."""

    def __init__(self, name: str, pred: np.ndarray, idx: np.ndarray, quantiles: Sequence[float] | None = None,
                 qpred: np.ndarray | None = None) -> None:
        self.name = name
        self.pred = pred
        self.pos = pd.Index(idx)
        self.quantiles = tuple(quantiles) if quantiles is not None and qpred is not None else None
        self.qpred = qpred

    def predict_windows(self, ws: WindowSource, indices: np.ndarray | None = None) -> np.ndarray:
        return self.pred[self.pos.get_indexer(resolve_indices(ws, indices))]

    def predict_quantiles(self, ws: WindowSource, indices: np.ndarray | None = None) -> np.ndarray:
        if self.qpred is None:
            raise NotImplementedError(f"{self.name} made no quantile forecasts")
        return self.qpred[self.pos.get_indexer(resolve_indices(ws, indices))]


def _quantile_scores(s: Scores | None, covers: Sequence[float]) -> dict[str, float]:
    """The quantile columns of a summary row: pinball (mean over the levels), crps, cover<P> (NaN: point
    forecast, or no scored point)."""
    nan = float("nan")
    inside = (s.interval_coverage or {}) if s is not None else {}
    return {"pinball": s.pinball_mean if s is not None else nan, "crps": s.crps if s is not None else nan,
            **{f"cover{level_label(c)}": inside.get(c, nan) for c in covers}}


def _summaries(ws: WindowSource, idx: np.ndarray, rows: np.ndarray, mask: np.ndarray, made: Sequence[_Made],
               batch_size: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per lead, per origin and overall scores of every method from :func:`score_methods` on its forecasts: MSE/MAE,
    and with quantiles the pinball loss, CRPS and interval coverage (the scorer's per-lead columns)."""
    table = score_methods(made, ws, idx, batch_size=batch_size)
    covers = sorted({c for s in table.scores.values() for c in (s.interval_coverage or {})}, reverse=True)
    has_q = any(m.quantiles is not None for m in made)
    prob = ["pinball", "crps", *(f"cover{level_label(c)}" for c in covers)] if has_q else []
    per_lead = pd.concat([s.per_lead.assign(method=label) for label, s in table.scores.items()], ignore_index=True)
    per_lead = per_lead.reindex(columns=["method", "lead", "mse", "mae", "windows", *prob])
    overall = pd.DataFrame([{"method": label, "mse": s.mse, "mae": s.mae, "points": s.n_points,
                             "coverage": s.coverage, **(_quantile_scores(s, covers) if has_q else {})}
                            for label, s in table.scores.items()])
    common = mask.copy()
    for m in made:
        common &= np.isfinite(m.pred)
        if m.qpred is not None:
            common &= np.isfinite(m.qpred).all(axis=-1)
    origins = ws.times[rows]
    per_origin = []
    for k in range(idx.size):
        n_points = int(common[k].sum())
        one = score_methods(made, ws, idx[k:k + 1]).scores if n_points else {}
        for m in made:
            s = one.get(m.name)
            row = {"method": m.name, "origin": origins[k], "mse": s.mse if s else np.nan,
                   "mae": s.mae if s else np.nan, "points": n_points}
            per_origin.append({**row, **(_quantile_scores(s if m.quantiles else None, covers) if has_q else {})})
    return per_lead, pd.DataFrame(per_origin), overall
