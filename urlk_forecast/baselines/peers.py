"""Neural peers: neuralforecast's PatchTST, NHITS and DLinear as :class:`~urlk_forecast.method.Method`\\ s.

Optional extra ``peers`` (``pip install 'urlk-forecast[peers]'``). Each peer is the library's model with its
defaults except what makes the comparison fair: the same window (``input_size = seq_len`` = 48 h, ``h = pred_len`` =
24 h), ``scaler_type="standard"`` (per-window standardisation of the input), ``max_steps=1000``, early stopping on
the validation split (``val_size`` = the validation hours, checked every ``val_check_steps=50`` steps, patience
``early_stop_patience_steps=5`` checks), and a wall-clock box ``max_time`` (lightning's ``max_time`` trainer
argument) like our model's. One global model per variable is fitted on all stations of the training split (each
station a series), so it forecasts any station.

Missing values. neuralforecast needs complete inputs, so the training series are gap-filled the way
:class:`~urlk_forecast.data.windows.WindowDataset` fills its inputs (:func:`~urlk_forecast.data.windows.fill_gaps`:
gaps of at most ``max_gap`` steps interpolated, longer ones hold the last observation) and the library's
``available_mask`` column carries the window dataset's mask (False on held values), so held values are never a
training target and the scaler ignores them. At prediction the window's ``x`` is already gap-filled and ``x_mask``
becomes ``available_mask``. A station whose input has no observed value in a window (or no value at all) gets NaN.

Prediction. Every (window, station) input is its own ``input_size``-long series in one long frame and the whole
chunk goes through one ``NeuralForecast.predict(df=...)`` call: the library's own path (its scaler, its model, its
inverse scaling), batched by the library; a model forecasts from the last ``input_size`` steps of a series, so this
equals predicting from the whole history (tested). About 0.1-0.2 s for 1000 windows x stations on 2 CPU cores.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import xarray as xr

from ..data.windows import WindowSource, fill_gaps
from ..method import Method
from ..scoring import resolve_indices

__all__ = ["PEER_MODELS", "NeuralForecastPeer", "neuralforecast_available", "training_frame", "window_frame"]

#: Registry key -> neuralforecast model class name.
PEER_MODELS: dict[str, str] = {"patchtst": "PatchTST", "nhits": "NHITS", "dlinear": "DLinear"}

#: Series (window x station inputs) per ``NeuralForecast.predict`` call.
_PREDICT_CHUNK = 20_000

_LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "neuralforecast")


def neuralforecast_available() -> bool:
    """Whether the optional ``neuralforecast`` package is installed (extra ``peers``)."""
    return importlib.util.find_spec("neuralforecast") is not None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence lightning's per-fit banners and warnings ("GPU available", "Seed set", ...) for one call."""
    loggers = [logging.getLogger(n) for n in _LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _regular_span(train: xr.Dataset, val: xr.Dataset | None) -> pd.DatetimeIndex:
    """The hourly (data step) axis from the first training time to the last validation time."""
    times = pd.DatetimeIndex(train["time"].values)
    if len(times) < 2:
        raise ValueError("the training data has fewer than 2 time steps")
    step = times[1] - times[0]
    end = times[-1] if val is None or val.sizes["time"] == 0 else max(times[-1], pd.Timestamp(val["time"].values[-1]))
    return pd.date_range(times[0], end, freq=step)


def training_frame(train: xr.Dataset, variable: str, val: xr.Dataset | None = None, max_gap: int = 3
                   ) -> tuple[pd.DataFrame, int]:
    """The long frame neuralforecast fits on, and ``val_size``.

    Columns ``unique_id`` (station id), ``ds``, ``y`` (gap-filled, see the module docstring) and
    ``available_mask`` (1.0 observed or a short interpolated gap, 0.0 held); the training split followed by the
    validation split (its hours after the last training hour: ``val_size``, 0 without ``val``).
    """
    if variable not in train.data_vars:
        raise ValueError(f"variable {variable!r} not in the training data; it has {sorted(train.data_vars)}")
    axis = _regular_span(train, val)
    ids = [str(s) for s in train["station"].values]
    parts = [train[variable].transpose("time", "station").to_pandas().reindex(axis)]
    val_size = 0
    if val is not None:
        v = val[variable].transpose("time", "station").to_pandas()
        v.columns = [str(c) for c in v.columns]
        v = v.reindex(columns=ids)
        later = v.index > pd.Timestamp(train["time"].values[-1])
        val_size = int((axis > pd.Timestamp(train["time"].values[-1])).sum())
        parts.append(v[later].reindex(axis))
    raw = parts[0].to_numpy(np.float64)
    if len(parts) == 2:
        raw = np.where(np.isnan(raw), parts[1].to_numpy(np.float64), raw)
    filled, mask, _obs = fill_gaps(raw, max_gap)
    keep = np.isfinite(filled).all(axis=0)  # a station never observed has nothing to learn from
    T = len(axis)
    cols = np.flatnonzero(keep)
    df = pd.DataFrame({
        "unique_id": np.repeat(np.asarray(ids, dtype=object)[cols], T),
        "ds": np.tile(axis.values, cols.size),
        "y": filled[:, cols].T.reshape(-1).astype(np.float32),
        "available_mask": mask[:, cols].T.reshape(-1).astype(np.float32),
    })
    return df, val_size


def _numpy(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def window_frame(ws: WindowSource, indices: np.ndarray) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Each (window, station) input as its own ``seq_len``-long series: the frame and the (window, station)
    positions of its series ``0..K-1`` (inputs without an observed value are left out)."""
    b = ws.batch(indices)
    x = _numpy(b["x"]).astype(np.float32, copy=False)
    xm = _numpy(b["x_mask"]).astype(bool, copy=False)
    L = x.shape[1]
    ok = xm.any(axis=1) & np.isfinite(x).all(axis=1)  # (N, S)
    n_i, s_i = np.nonzero(ok)
    times = pd.DatetimeIndex(np.asarray(ws.times))
    step = times[1] - times[0]
    t0 = pd.DatetimeIndex(np.asarray(ws.window_start_times))[indices].values[n_i]
    ds = t0[:, None] + np.arange(L)[None, :] * np.timedelta64(int(step.value), "ns")
    df = pd.DataFrame({
        "unique_id": np.repeat(np.arange(n_i.size), L),
        "ds": ds.reshape(-1),
        "y": x[n_i, :, s_i].reshape(-1),
        "available_mask": xm[n_i, :, s_i].reshape(-1).astype(np.float32),
    })
    return df, n_i, s_i


class NeuralForecastPeer(Method):
    """One neuralforecast model (``"patchtst"``, ``"nhits"`` or ``"dlinear"``) behind the Method contract.

    ``max_time``: seconds of training (lightning's ``max_time``; None = no limit). ``model_kwargs`` override any
    library argument. ``accelerator`` (e.g. ``"cpu"``) goes to lightning; None lets neuralforecast choose (a GPU
    when one is visible). After :meth:`fit`, ``train_info`` holds the steps trained, the last validation loss and
    why training stopped.
    """

    kind: ClassVar[str] = "neural"

    def __init__(self, model: str = "nhits", *, variable: str = "temperature", seq_len: int = 48, pred_len: int = 24,
                 max_steps: int = 1000, max_time: float | None = 540.0, val_check_steps: int = 50,
                 early_stop_patience_steps: int = 5, scaler_type: str = "standard", max_gap: int = 3,
                 random_seed: int = 1, accelerator: str | None = None,
                 model_kwargs: dict[str, Any] | None = None) -> None:
        key = str(model).strip().lower().replace("-", "").replace("_", "")
        if key not in PEER_MODELS:
            raise ValueError(f"unknown neuralforecast peer {model!r}; choose from {', '.join(PEER_MODELS)}")
        if max_time is not None and not max_time > 0:
            raise ValueError(f"max_time must be > 0 seconds or None, got {max_time}")
        self.model = key
        self.variable = variable
        self.seq_len, self.pred_len, self.max_gap = int(seq_len), int(pred_len), int(max_gap)
        self.max_steps, self.max_time = int(max_steps), max_time
        self.val_check_steps, self.early_stop_patience_steps = int(val_check_steps), int(early_stop_patience_steps)
        self.scaler_type, self.random_seed, self.accelerator = scaler_type, int(random_seed), accelerator
        self.model_kwargs = dict(model_kwargs or {})
        self.name = f"{PEER_MODELS[key]} (neuralforecast)"
        self.fit_seconds: float | None = None
        self.nf: Any = None
        self.train_info: dict[str, Any] = {}

    def _build(self, early_stopping: bool) -> Any:
        # neuralforecast (and torch-lightning) load only when a peer is built: an optional, heavy dependency
        try:
            import neuralforecast.models as nf_models
        except ImportError as e:
            raise ImportError("the neural peers need neuralforecast: pip install 'urlk-forecast[peers]'") from e
        kw: dict[str, Any] = dict(h=self.pred_len, input_size=self.seq_len, scaler_type=self.scaler_type,
                                  max_steps=self.max_steps, val_check_steps=self.val_check_steps,
                                  early_stop_patience_steps=self.early_stop_patience_steps if early_stopping else -1,
                                  random_seed=self.random_seed, enable_progress_bar=False, logger=False,
                                  enable_model_summary=False)
        if self.max_time is not None:
            kw["max_time"] = timedelta(seconds=float(self.max_time))
        if self.accelerator is not None:
            kw["accelerator"] = self.accelerator
        kw.update(self.model_kwargs)
        return getattr(nf_models, PEER_MODELS[self.model])(**kw)

    def fit(self, train: xr.Dataset, val: xr.Dataset | None = None) -> NeuralForecastPeer:
        """Fit on the training split (all stations), early-stopping on ``val`` when given; ``self``."""
        from neuralforecast import NeuralForecast  # optional heavy dependency, see _build

        df, val_size = training_frame(train, self.variable, val, self.max_gap)
        if df.empty:
            raise ValueError(f"{self.name}: no station of the training data has a {self.variable} observation")
        freq = pd.DatetimeIndex(train["time"].values[:2])
        freq_str = pd.tseries.frequencies.to_offset(freq[1] - freq[0]).freqstr
        t0 = time.perf_counter()
        with _quiet():
            self.nf = NeuralForecast(models=[self._build(early_stopping=val_size > 0)], freq=freq_str)
            self.nf.fit(df, val_size=val_size)
        self.fit_seconds = time.perf_counter() - t0
        self.train_info = self._summarise(self.nf.models[0], val_size)
        return self

    def _summarise(self, m: Any, val_size: int) -> dict[str, Any]:
        # train_trajectories holds (global_step before the step, loss) of every training step
        steps = int(m.train_trajectories[-1][0]) + 1 if m.train_trajectories else 0
        if steps >= self.max_steps:
            stopped = "max_steps"
        elif self.max_time is not None and (self.fit_seconds or 0.0) >= 0.95 * self.max_time:
            stopped = "max_time"
        else:
            stopped = "early_stopping"
        last_val = float(m.valid_trajectories[-1][1]) if m.valid_trajectories else float("nan")
        return {"steps": steps, "stopped": stopped, "val_size": val_size, "last_val_loss": last_val,
                "fit_seconds": self.fit_seconds}

    def predict_windows(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(N, pred_len, S) float32 forecasts from each window's input ``x``; NaN where it has no observation."""
        if self.nf is None:
            raise RuntimeError(f"{self.name}: call fit(train) before predict_windows")
        if getattr(ws, "variable", self.variable) != self.variable:
            raise ValueError(f"{self.name} forecasts {self.variable!r} but the windows are {ws.variable!r}")
        if (ws.seq_len, ws.pred_len) != (self.seq_len, self.pred_len):
            raise ValueError(f"{self.name} was built for seq_len/pred_len {self.seq_len}/{self.pred_len}, the windows "
                             f"have {ws.seq_len}/{ws.pred_len}")
        idx = resolve_indices(ws, indices)
        out = np.full((idx.size, self.pred_len, ws.num_stations), np.nan, np.float32)
        if idx.size == 0:
            return out
        df, n_i, s_i = window_frame(ws, idx)
        if n_i.size == 0:
            return out
        L = self.seq_len
        for k0 in range(0, n_i.size, _PREDICT_CHUNK):
            k1 = min(n_i.size, k0 + _PREDICT_CHUNK)
            part = df.iloc[k0 * L:k1 * L]
            out[n_i[k0:k1], :, s_i[k0:k1]] = self._predict_frame(part, k1 - k0)
        return out

    def _predict_frame(self, df: pd.DataFrame, k: int) -> np.ndarray:
        """``NeuralForecast.predict`` on ``k`` series ``unique_id`` = 0.. -> (k, pred_len) in series order."""
        with _quiet():
            fc = self.nf.predict(df=df)
        col = [c for c in fc.columns if c not in ("unique_id", "ds")][0]
        fc = fc.assign(unique_id=fc["unique_id"].astype(np.int64)).sort_values(["unique_id", "ds"], kind="stable")
        vals = fc[col].to_numpy(np.float32)
        if vals.size != k * self.pred_len:
            raise RuntimeError(f"{self.name}: neuralforecast returned {vals.size} values for {k} series x "
                               f"{self.pred_len} steps")
        return vals.reshape(k, self.pred_len)

    @property
    def n_params(self) -> int:
        """Trainable parameters of the fitted network (0 before fit)."""
        if self.nf is None:
            return 0
        return int(sum(p.numel() for p in self.nf.models[0].parameters()))

    def __repr__(self) -> str:
        state = "fitted" if self.nf is not None else "not fitted"
        return f"NeuralForecastPeer({self.model!r}, variable={self.variable!r}, {state})"
