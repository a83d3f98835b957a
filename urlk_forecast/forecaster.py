"""``Forecaster``: the user-facing station forecaster (fit / predict / evaluate / save / load / reparameterize).

It wraps a :class:`~urlk_forecast.models.forecast_net.ForecastNet` together with everything needed to use it on
new data: the variable, the window lengths, the data frequency, the trained station ids in model order (the
space-filling-curve order the windows were built in) and their metadata. Typical use::

    fc = Forecaster("unireplknet_a", variable="temperature")
    fc.fit(ds, max_time=600)                 # chronological train/val split, the automatic regime; returns fc
    forecast = fc.predict(ds)                # next pred_len steps after the end of ds, per station
    fc.evaluate(test_ds)                     # Scores: MSE/MAE overall, .per_lead per lead time
    fc.save("runs/a");  fc = Forecaster.load("runs/a")

It is a :class:`~urlk_forecast.method.Method` like every baseline (``name``, ``kind = "neural"``, ``n_params``,
``fit_seconds``, ``predict_windows``, ``evaluate``), so tables score it with the same scorer on the same points.

Quantiles: ``Forecaster(quantiles=[0.1, 0.5, 0.9])`` forecasts those levels (the network's monotone quantile head,
:mod:`urlk_forecast.models.quantiles`: the median plus/minus cumulative softplus spreads, so levels never cross),
trained with the pinball loss; ``predict_quantiles`` gives ``(N, pred_len, S, Q)``, ``predict_windows`` the median,
``predict`` a ``quantile`` dimension on the forecast variable.

Model names: ``"unireplknet_<v>"`` (or just ``"<v>"``) for v in a f p n t s b l xl h; ``"convnext"``,
``"resnet"``, ``"corrformer"`` optionally with a variant suffix (``"convnext_s"``: same widths/depths as S).
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import xarray as xr

from .backtest import Backtest, cross_validation, warm_refits
from .calibration import QuantileCalibration, fit_calibration
from .config import FORECASTER_FORMAT, FORECASTER_FORMAT_VERSION, ConfigError, ForecasterConfig, TrainConfig
from .data.readers import open_dataset
from .data.schema import (
    COORD_ATTRS,
    SchemaError,
    infer_frequency,
    make_dataset,
    require_variable,
    validate,
    variable_units,
)
from .data.target_windows import TargetWindows, check_targets
from .data.windows import (
    WindowDataset,
    WindowSource,
    check_inputs,
    check_time_features,
    split_dataset,
)
from .export import ExportResult, export_forecaster
from .method import Method
from .models import fastpath
from .models.embedding import RevIN
from .models.forecast_net import ForecastNet
from .models.registry import parse_model_name  # kept importable here: forecaster.parse_model_name
from .regime import Regime, auto_regime
from .scoring import Scores, resolve_indices, window_targets
from .targets import score_targets, split_targets, target_views
from .trainer import Callback, Trainer, TrainResult, seed_everything
from .utils import atomic_torch_save, atomic_write_text, evenly_spaced, normalize_name, quantile_levels, to_jsonable
from .utils.steps import default_season, lead_time_unit, length_steps, parse_length

__all__ = ["Forecaster", "parse_model_name", "FORMAT", "FORMAT_VERSION"]

FORMAT = FORECASTER_FORMAT  # the config.json format (defined with ForecasterConfig)
FORMAT_VERSION = FORECASTER_FORMAT_VERSION
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.pt"
_NODE_SIZE = inspect.signature(ForecastNet.__init__).parameters["node_size"].default  # stations per node image
STATIONS_NAME = "stations.json"
CALIBRATION_NAME = "calibration.json"  # the quantile calibration (urlk_forecast.calibration), when there is one
#: node images per forward pass when forecasting: a 3850-station window (350 images) is fastest alone on the 2-core
#: CPU (1.38 s per window; 1.9-2.3 s in batches of 2-16 windows, docs/benchmarks.md), small sets batch windows
FORWARD_IMAGES = 512

def _open(data: Any, what: str) -> xr.Dataset:
    if isinstance(data, xr.Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        return open_dataset(data)
    raise TypeError(f"{what} must be an xarray.Dataset or a path to a data file/directory, got {type(data).__name__}")


def _is_window_source(data: Any) -> bool:
    return hasattr(data, "batch") and hasattr(data, "station_ids")


def _read_config(raw: Any, path: Path) -> ForecasterConfig:
    """The :class:`ForecasterConfig` of a saved ``config.json`` (any version this code wrote; errors name ``path``)."""
    if not isinstance(raw, dict) or raw.get("format") != FORECASTER_FORMAT:
        fmt = raw.get("format") if isinstance(raw, dict) else None
        raise ValueError(f"{path}: not a forecaster config (format {fmt!r})")
    if int(raw.get("version", 0)) > FORECASTER_FORMAT_VERSION:
        raise ValueError(f"{path}: format version {raw['version']} is newer than this urlk-forecast supports "
                         f"({FORECASTER_FORMAT_VERSION})")
    try:
        config = ForecasterConfig.from_dict(raw, source=str(path))
    except ConfigError as e:
        raise ConfigError(str(e) if str(path) in str(e) else f"{path}: {e}") from None
    if not config.net:
        raise ValueError(f"{path}: no network config ('net'); not a trained forecaster")
    return config


def _preview(ids: Sequence[str], n: int = 10) -> str:
    ids = list(ids)
    return ", ".join(ids[:n]) + (f", ... ({len(ids)} in all)" if len(ids) > n else "")


def _input_scales(ds: xr.Dataset, inputs: Sequence[str]) -> np.ndarray | None:
    """Each covariate's std over ``ds`` (0 where it has fewer than two values): the network's ``input_scale``."""
    if not inputs:
        return None
    out = []
    for v in inputs:
        a = np.asarray(ds[v].values, np.float64)
        a = a[np.isfinite(a)]
        out.append(float(a.std()) if a.size > 1 else 0.0)
    return np.asarray(out, np.float32)


def season_steps(freq: pd.Timedelta | None) -> int:
    """The seasonal period in steps for data of step ``freq``: one day of sub-daily steps (24 for hourly data),
    a week of daily or longer steps; 24 when the step is unknown (:func:`urlk_forecast.utils.steps.default_season`,
    which the baselines use too)."""
    return default_season(freq)


class Forecaster(Method):
    """Station forecaster built on :class:`~urlk_forecast.models.forecast_net.ForecastNet`; a
    :class:`~urlk_forecast.method.Method` of kind ``"neural"`` named after its model (``"unireplknet_a"``).

    ``variable`` is any data variable of the data it is fitted on (its units are taken from there).
    ``seq_len``/``label_len``/``pred_len`` are steps (int) or durations (``"48h"``, ``"7D"``) converted with the
    data's time step when fitting (a whole number of steps, else an error).

    ``model_kw`` go to the network (``d_model``, ``node_size``, ``kernel_size``, ``dims``, ``spatial``, ...);
    ``max_gap`` (keyword) is the longest gap (steps) interpolated in the inputs, as in
    :class:`~urlk_forecast.data.windows.WindowDataset`. ``quantiles`` (keyword): forecast these levels (sorted,
    unique, in (0, 1), 0.5 among them: the median is the point forecast), trained with the pinball loss; the
    network's levels are non-decreasing by construction (median plus/minus cumulative softplus spreads).
    ``inputs`` (keyword): other data variables whose past values enter the network with the target as covariates
    (extra channels of the encoder's embedding; ``docs/forecasting.md``); the data (training, history) must hold
    them. The calendar features remain the known-future inputs.

    Several targets: ``variable=["temperature", "wind_speed"]`` forecasts them all with one network (each target
    normalised per window and de-normalised on its own, the loss pooled over every target's observed entries on the
    normalised scale; ``docs/forecasting.md``). ``targets`` holds the names (one for a plain string); the windows are a
    :class:`~urlk_forecast.data.target_windows.TargetWindows`, ``predict_windows`` gives ``(N, pred_len, S, V)``,
    ``predict`` a Dataset with every target variable and ``evaluate`` a dict of ``Scores`` per variable (the one
    scorer on each variable's windows). Point forecasts only: ``quantiles`` with several targets is an error.
    """

    kind: ClassVar[str] = "neural"

    def __init__(self, model: str = "unireplknet_a", variable: str | Sequence[str] = "temperature",
                 seq_len: int | str = 48,
                 label_len: int | str = 24, pred_len: int | str = 24, *, max_gap: int = 3,
                 quantiles: Sequence[float] | None = None, inputs: Sequence[str] | None = None,
                 **model_kw: Any) -> None:
        if not isinstance(variable, str | list | tuple) or isinstance(variable, str) and not variable.strip():
            raise ValueError(f"variable must be the name of a data variable (or a list of them), got {variable!r}")
        #: the forecast variables: one (``variable`` a string), or several forecast by one network (a list)
        self.targets: tuple[str, ...] = check_targets(variable)
        if len(self.targets) > 1 and quantiles is not None:
            raise ValueError(f"quantiles are forecast for one variable, but variable={list(self.targets)} names "
                             f"{len(self.targets)}: train one quantile model per variable")
        lengths = {"seq_len": parse_length(seq_len, "seq_len"), "label_len": parse_length(label_len, "label_len"),
                   "pred_len": parse_length(pred_len, "pred_len")}
        self._check_lengths(lengths, max_gap)
        encoder, variant = parse_model_name(model)
        if {"n_inputs", "input_scale"} & set(model_kw):
            raise ValueError("n_inputs/input_scale are set from inputs= and the training data, not given")
        self.quantiles = quantile_levels(quantiles)  # checked here, before any data is read
        if model_kw.get("time_features") is not None:
            check_time_features(model_kw["time_features"])
        #: covariates: variables whose past values are inputs besides the target's (checked before any data is read)
        self.inputs: tuple[str, ...] = check_inputs(inputs, self.targets)
        self.model = str(model)
        #: the table label: the variant for UniRepLKNet ("unireplknet_a" also for model="a"), else the given name
        self.name = variant if encoder == "unireplknet" else normalize_name(model)
        self.variable: Any = self.targets[0] if len(self.targets) == 1 else list(self.targets)  # str, or the list
        #: the lengths as given (steps or durations); resolved to steps from the data's step by fit
        self.lengths: dict[str, int | pd.Timedelta] = lengths
        self.seq_len, self.label_len, self.pred_len = (v if isinstance(v, int) else 0 for v in lengths.values())
        self.max_gap = int(max_gap)
        self.units: Any = None  # the variable's units from the training data ({variable: units} for several)
        # skip="seasonal" (a seasonal-naive-initialised linear head) is the default chosen on the validation windows
        # of the real-data suite (docs/training.md); skip="none" is the paper's network
        self.model_kw: dict[str, Any] = {"encoder": encoder, "variant": variant, "skip": "seasonal", **model_kw}
        self.net: torch.nn.Module | None = None
        self.stations: dict[str, Any] | None = None  # ids (model order), lat, lon, elevation, name, coords
        self.frequency: pd.Timedelta | None = None
        self.train_info: dict[str, Any] = {}  # training metadata, saved in config.json ("train")
        self.train_result: TrainResult | None = None  # the last fit's result (not saved)
        self.fit_seconds: float | None = None  # wall time of training (train_info["wall_s"])
        self.reparameterized = False
        #: post-hoc quantile calibration applied to every quantile output (None: the network's raw levels); fitted
        #: on the validation windows by fit (calibrate=True), or by calibrate(); set to None to turn it off
        self.calibration: QuantileCalibration | None = None

    @staticmethod
    def _check_lengths(lengths: Mapping[str, int | pd.Timedelta], max_gap: int) -> None:
        """Integer lengths within bounds; ``label_len <= seq_len`` where both are of one kind (steps or durations)."""
        lows = {"seq_len": 2, "label_len": 0, "pred_len": 1, "max_gap": 0}
        for name, v in (*lengths.items(), ("max_gap", max_gap)):
            if isinstance(v, pd.Timedelta):
                continue
            if int(v) != v or int(v) < lows[name]:
                raise ValueError(f"{name} must be an integer >= {lows[name]} or a duration like '48h', got {v!r}")
        sl, ll = lengths["seq_len"], lengths["label_len"]
        if type(sl) is type(ll) and ll > sl:  # type: ignore[operator]
            raise ValueError(f"label_len ({ll}) must not exceed seq_len ({sl})")

    def resolve_lengths(self, ds: xr.Dataset) -> None:
        """Turn lengths given as durations into steps of ``ds``'s time step (whole steps only; fit does this)."""
        if all(isinstance(v, int) for v in self.lengths.values()):
            return
        freq = infer_frequency(ds)
        steps = {k: length_steps(v, freq, k) for k, v in self.lengths.items()}
        self._check_lengths(steps, self.max_gap)
        self.seq_len, self.label_len, self.pred_len = steps["seq_len"], steps["label_len"], steps["pred_len"]

    # ------------------------------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        n = len(self.stations["station"]) if self.stations else 0
        state = "untrained" if self.net is None else f"{n} stations"
        return (f"Forecaster(model={self.model!r}, variable={self.variable!r}, seq_len={self.seq_len}, "
                f"label_len={self.label_len}, pred_len={self.pred_len}, "
                f"{f'quantiles={list(self.quantiles)}, ' if self.quantiles is not None else ''}"
                f"{f'inputs={list(self.inputs)}, ' if self.inputs else ''}{state})")

    @property
    def multi(self) -> bool:
        """True when the model forecasts several target variables (``targets``)."""
        return len(self.targets) > 1

    @property
    def station_ids(self) -> np.ndarray:
        """Trained station ids in model order."""
        return np.asarray(self._require()["station"], dtype=object)

    @property
    def device(self) -> torch.device:
        """Device the network's weights are on."""
        return next(self._net().parameters()).device

    @property
    def n_params(self) -> int:
        """Number of parameters of the network (0 before it is built)."""
        return 0 if self.net is None else int(sum(p.numel() for p in self.net.parameters()))

    @property
    def train_period(self) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """First and last time step of the training data (None if unknown)."""
        period = self.train_info.get("train_period") or []
        return (pd.Timestamp(period[0]), pd.Timestamp(period[1])) if len(period) == 2 else None

    def to(self, device: str | torch.device) -> Forecaster:
        """Move the network to ``device``; returns self."""
        self._net().to(device)
        return self

    def _require(self) -> dict[str, Any]:
        if self.net is None or self.stations is None:
            raise RuntimeError("this Forecaster is not trained yet: call fit(data) or Forecaster.load(dir)")
        return self.stations

    def _net(self) -> torch.nn.Module:
        self._require()
        assert self.net is not None
        return self.net

    def _windows(self, ds: xr.Dataset, order: Any = None, stride: int = 1) -> Any:
        if self.multi:  # every target's windows, stacked along the station axis
            return TargetWindows(ds, self.targets, self.seq_len, self.label_len, self.pred_len, stride=stride,
                                 max_gap=self.max_gap, order=order, inputs=self.inputs)
        return WindowDataset(ds, self.variable, self.seq_len, self.label_len, self.pred_len, stride=stride,
                             max_gap=self.max_gap, order=order, inputs=self.inputs)

    def _order_for(self, ds: xr.Dataset, what: str) -> np.ndarray:
        """Permutation of ``ds``'s stations putting them in trained model order (errors name the differences)."""
        trained = [str(s) for s in self.station_ids]
        have = [str(s) for s in ds["station"].values]
        pos = {s: i for i, s in enumerate(have)}
        unknown = [s for s in have if s not in set(trained)]
        missing = [s for s in trained if s not in pos]
        if unknown:
            raise ValueError(f"{what} has {len(unknown)} station(s) the model was not trained on: {_preview(unknown)}; "
                             f"the model knows {len(trained)} station(s): {_preview(trained)}")
        if missing:
            raise ValueError(f"{what} lacks {len(missing)} of the model's station(s): {_preview(missing)}; "
                             f"the model needs all of: {_preview(trained)}")
        return np.asarray([pos[s] for s in trained], dtype=np.int64)

    def _check_frequency(self, ds: xr.Dataset, what: str) -> None:
        if self.frequency is None or ds.sizes.get("time", 0) < 2:
            return
        freq = infer_frequency(ds)
        if freq != self.frequency:
            raise ValueError(f"{what} has a time step of {freq}, but the model was trained on {self.frequency} steps")

    # --------------------------------------------------------------------------------------------- fit
    def build_net(self, n_stations: int, coords: np.ndarray | None = None,
                  input_scale: np.ndarray | None = None) -> torch.nn.Module:
        """Build (and keep) a fresh network for ``n_stations`` stations with ``coords`` (S, 3) standardised;
        ``input_scale``: each covariate's typical scale (its training std; floors the per-window std)."""
        kw = dict(self.model_kw)
        if kw.get("skip", "none") != "none" and "season" not in kw:
            kw["season"] = season_steps(self.frequency)
        if self.inputs:
            kw.update(n_inputs=len(self.inputs), input_scale=input_scale)
        if self.multi:
            kw["n_targets"] = len(self.targets)
        self.net = ForecastNet(n_stations, coords=coords, seq_len=self.seq_len, label_len=self.label_len,
                               pred_len=self.pred_len, quantiles=self.quantiles, **kw)
        self.reparameterized = False
        return self.net

    def fit(self, train: xr.Dataset | str | os.PathLike[str], val: xr.Dataset | str | os.PathLike[str] | None = None,
            *, config: TrainConfig | Regime | None = None, schedule: str = "auto", callback: Callback | None = None,
            stride: int = 1, warm_start: bool = False, calibrate: bool = True, **overrides: Any) -> Forecaster:
        """Train on ``train`` (Dataset or path), early-stopping on ``val``; returns ``self``.

        Without ``val`` the data is split chronologically: the source's own splits when
        ``train.attrs["split_bounds"]`` exists (train / val used, test left out), else the last 10 % of the
        time steps become the validation period (with ``seq_len`` steps of context before it).

        Every training setting is a :class:`~urlk_forecast.config.TrainConfig` field. Without ``config`` the
        ``schedule`` picks them: ``"auto"`` (default) sizes the regime to the training windows
        (:func:`urlk_forecast.regime.auto_regime`: batch, epochs, warm-up + cosine LR, validation, 600 s on a CPU),
        ``"paper"`` is the paper's schedule (:meth:`TrainConfig.paper`); ``config`` may also be a :class:`Regime`
        from :meth:`regime`. ``overrides`` win over either, or replace fields of ``config`` (``epochs``,
        ``max_steps``, ``max_time``, ``lr``, ``batch_size``, ``device``, ``out_dir``/``resume`` to checkpoint and
        continue a killed run, ...). ``stride``: step between training windows. ``callback(entry)`` receives each
        history entry. The :class:`~urlk_forecast.trainer.TrainResult` is kept in ``self.train_result``, the wall
        time in ``self.fit_seconds``, the regime (its settings and reasons) in ``self.train_info["regime"]``.
        A fresh network is initialised from ``seed`` (the config's, or the override), so the same seed, data,
        plan, thread count and machine give the same weights. ``warm_start``: continue training the current network
        (same stations; e.g. a backtest's refit) instead of building a fresh one. ``calibrate`` (quantile
        forecasters): fit :attr:`calibration` on the validation windows at the end (:meth:`calibrate`; recorded in
        ``train_info["calibration"]``); False: the raw levels.
        """
        if config is None and schedule not in ("auto", "paper"):
            raise ValueError(f"schedule={schedule!r}: choose 'auto' or 'paper'")
        base = config.config() if isinstance(config, Regime) else config
        cfg = (base if base is not None else TrainConfig.paper()).replace(**overrides)  # checks the overrides
        ds, train_ds, val_ds = self._split(train, val)
        self.frequency = infer_frequency(train_ds)
        train_ws = self._windows(train_ds, stride=stride)
        if len(train_ws) == 0:
            raise ValueError(f"the training period has {train_ds.sizes['time']} time steps, fewer than "
                             f"seq_len + pred_len = {self.seq_len + self.pred_len}: no training window")
        warm = warm_start and self.net is not None
        if warm and (self.reparameterized or [str(s) for s in train_ws.station_ids] != list(self.station_ids)):
            raise ValueError("warm_start=True continues the current network: the training data must have exactly its "
                             "stations, and the network must not be re-parameterized")
        self._keep_stations(train_ws, train_ds)
        if not warm:
            seed_everything(cfg.seed)  # the initialisation follows the seed too, as the data order does
        net = self.net if warm else self.build_net(len(train_ws.station_ids), coords=train_ws.coords,
                                                   input_scale=_input_scales(train_ds, self.inputs))
        val_ws = self._val_windows(val_ds)
        regime: dict[str, Any] = {"schedule": "config" if config is not None else schedule, "given": sorted(overrides)}
        if isinstance(config, Regime):
            regime = {**config.to_dict(), "overrides": sorted(overrides)}
        elif config is None and schedule == "auto":
            chosen = auto_regime(len(train_ws), len(val_ws) if val_ws is not None else 0, len(train_ws.station_ids),
                                 net.node_size, given=overrides)
            cfg, regime = chosen.config(), chosen.to_dict()
        t0 = time.perf_counter()
        result = Trainer(cfg, callback=callback).fit(net, train_ws, val_ws)
        self.fit_seconds = time.perf_counter() - t0
        net.eval()
        self.train_result = result
        times = pd.DatetimeIndex(train_ds["time"].values)
        self.train_info = {
            "trained_at": pd.Timestamp.now(tz="UTC").isoformat(),
            "train_period": [str(times[0]), str(times[-1])],
            # the last time step this fit saw, its validation data included (a backtest's origins must come later)
            "data_end": str(max(times[-1], pd.Timestamp(val_ds["time"].values[-1])) if val_ds is not None
                            and val_ds.sizes.get("time", 0) else times[-1]),
            "train_windows": len(train_ws),
            "val_windows": len(val_ws) if val_ws is not None else 0,
            "wall_s": self.fit_seconds,
            "train_config": cfg.to_dict(),
            "regime": regime,
            "result": {k: v for k, v in result.to_dict().items() if k != "step_losses"},
            "source": {k: str(v) for k, v in ds.attrs.items() if k in ("title", "source", "synthetic", "seed")},
        }
        self._calibrate_after_fit(val_ws, calibrate)
        return self

    def _calibrate_after_fit(self, val_ws: WindowDataset | None, calibrate: bool) -> None:
        """Fit (or drop) :attr:`calibration` after training; the outcome goes to ``train_info["calibration"]``."""
        self.calibration = None
        if self.quantiles is None:
            return
        if not calibrate or val_ws is None:
            self.train_info["calibration"] = {"skipped": "turned off (calibrate=False)" if not calibrate else
                                              "no validation windows"}
            return
        try:
            self.train_info["calibration"] = self.calibrate(val_ws).summary()
        except ValueError as e:  # too few validation targets: the raw levels stay
            self.train_info["calibration"] = {"skipped": str(e)}

    def calibrate(self, data: WindowSource | xr.Dataset | str | os.PathLike[str],
                  indices: Sequence[int] | np.ndarray | None = None, *, max_windows: int | None = 1024,
                  max_targets: int = 250_000, batch_size: int = 32) -> QuantileCalibration:
        """Fit :attr:`calibration` of a quantile forecaster on held-out ``data`` (windows ``indices``, else at most
        ``max_windows`` evenly spaced ones, fewer when windows x stations would exceed ``max_targets`` per lead: that
        bounds the memory for thousands of stations): per lead and level, a factor on the quantile's gap toward the
        median so that each level's share of targets at or below it there equals the level
        (:mod:`urlk_forecast.calibration`; the median is unchanged, levels never cross). Returns (and keeps) it; it
        replaces an earlier one."""
        self._require()
        if self.quantiles is None:
            raise ValueError(f"{self.name} forecasts no quantiles: nothing to calibrate")
        ws = data if _is_window_source(data) else self._eval_windows(data, None, 1)
        if indices is None:
            cap = max(1, int(max_targets) // max(1, len(ws.station_ids)))
            indices = evenly_spaced(len(ws), min(max_windows or len(ws), cap))
        idx = resolve_indices(ws, indices)
        if idx.size == 0:
            raise ValueError("no complete window to calibrate on")
        y, mask = window_targets(ws, idx)
        raw = self._forecast_windows(ws, idx, batch_size)
        self.calibration = fit_calibration(raw, np.where(mask, y, np.nan), self.quantiles,
                                           source={"windows": int(idx.size)})
        return self.calibration

    def _calibrated(self, out: np.ndarray) -> np.ndarray:
        """The quantile forecasts ``out`` (N, pred_len, S, Q) with :attr:`calibration` applied (when there is one)."""
        return out if self.calibration is None or self.quantiles is None else self.calibration.apply(out)

    def regime(self, train: xr.Dataset | str | os.PathLike[str], val: xr.Dataset | str | os.PathLike[str] | None = None,
               *, stride: int = 1, max_time: float | str | None = "auto", **given: Any) -> Regime:
        """The automatic regime ``fit(train, val, **given)`` would train with (its settings and the reasons), to show
        or record before training; pass it back as ``fit(..., config=regime)``. ``max_time``: the budget when not
        given (``"auto"``: 600 s on a CPU, none on CUDA). See :func:`urlk_forecast.regime.auto_regime`."""
        _, train_ds, val_ds = self._split(train, val)
        train_ws = self._windows(train_ds, stride=stride)
        if len(train_ws) == 0:
            raise ValueError(f"the training period has {train_ds.sizes['time']} time steps, fewer than "
                             f"seq_len + pred_len = {self.seq_len + self.pred_len}: no training window")
        n_val = len(self._windows(val_ds)) if val_ds is not None and val_ds.sizes.get("time", 0) else 0
        node_size = int(self.model_kw.get("node_size", _NODE_SIZE))
        return auto_regime(len(train_ws), n_val, len(train_ws.station_ids), node_size, max_time=max_time,
                           given=given)

    def _split(self, train: Any, val: Any) -> tuple[xr.Dataset, xr.Dataset, xr.Dataset | None]:
        """``(the data given, training split, validation split)``; the chronological split when ``val`` is None."""
        ds = _open(train, "train")
        for v in (*self.targets, *self.inputs):
            require_variable(ds, v, "train")
        validate(ds, variables=[*self.targets, *self.inputs])
        self.resolve_lengths(ds)
        self.units = (variable_units(ds, self.variable) if not self.multi
                      else {v: variable_units(ds, v) for v in self.targets})
        if val is not None:
            val_ds = _open(val, "val")
            for v in (*self.targets, *self.inputs):
                require_variable(val_ds, v, "val")
            validate(val_ds, variables=[*self.targets, *self.inputs])
            return ds, ds, val_ds
        ratios = (0.7, 0.1, 0.2) if ds.attrs.get("split_bounds") else (0.9, 0.1, 0.0)
        parts = split_dataset(ds, ratios=ratios, context=self.seq_len)
        return ds, parts["train"], parts["val"]

    def _keep_stations(self, train_ws: WindowDataset, train_ds: xr.Dataset) -> None:
        """Record the trained stations (model order) and their metadata."""
        self.stations = {
            "station": [str(s) for s in train_ws.station_ids],
            "lat": train_ws.lat.astype(float).tolist(),
            "lon": train_ws.lon.astype(float).tolist(),
            "elevation": train_ws.elevation.astype(float).tolist(),
            "name": [str(v) for v in np.asarray(train_ds["name"].values)[train_ws.order]],
            "coords": np.asarray(train_ws.coords, np.float64).tolist(),
        }

    def _val_windows(self, val_ds: xr.Dataset | None) -> WindowDataset | None:
        if val_ds is None or val_ds.sizes.get("time", 0) == 0:
            return None
        self._check_frequency(val_ds, "val")
        val_ws = self._windows(val_ds, order=self._order_for(val_ds, "val"), stride=1)
        return val_ws if len(val_ws) else None

    # ----------------------------------------------------------------------------------------- predict
    def _inference_net(self) -> torch.nn.Module:
        """The network in its deploy form for forecasting: a re-parameterized copy (BatchNorms folded, the parallel
        dilated branches merged into one kernel; the same outputs within float rounding, 1.37x faster for a
        3850-station window on the 2-core CPU), rebuilt whenever a weight or buffer changed (fit, load, ``to``, a
        user's in-place edit), so it never forecasts with stale weights."""
        net = self._net()
        if self.reparameterized or not hasattr(net, "reparameterize"):
            return net
        key = tuple((t.data_ptr(), t._version) for t in (*net.parameters(), *net.buffers()))
        cached = getattr(self, "_deploy", None)
        if cached is None or cached[0] != key:
            deploy = copy.deepcopy(net).eval()
            deploy.reparameterize()
            for p in deploy.parameters():
                p.requires_grad_(False)
            self._deploy = cached = (key, deploy)
        return cached[1]

    @torch.no_grad()
    def _run(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        net = self._inference_net()
        net.eval()
        dev = self.device
        # everything but the targets (the network must not see them; extra inputs such as a fusion "aux" pass)
        b = {k: v.to(dev) for k, v in batch.items() if k not in ("y", "y_mask", "index") and torch.is_tensor(v)}
        out = net(b).float()
        empty = RevIN.no_observation(b["x"], b.get("x_mask"))  # (B, S): nothing observed → no forecast
        empty = empty.reshape(empty.shape[0], 1, empty.shape[1], *([1] * (out.dim() - 3)))  # (+ the quantile axis)
        return torch.where(empty, torch.full_like(out, float("nan")), out).cpu()

    def predict_windows(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None,
                        batch_size: int = 32) -> np.ndarray:
        """Forecasts ``(N, pred_len, S)`` in physical units for windows ``indices`` of ``ws`` (all when None), in
        ``ws``'s station order, ``batch_size`` windows per forward pass; the median for a quantile forecaster.
        Several targets: ``ws`` is their :class:`~urlk_forecast.data.target_windows.TargetWindows` and the forecasts
        are ``(N, pred_len, S, V)`` (``targets`` order).

        NaN for a station with no observed input in a window (nothing to forecast from).
        """
        out = self._forecast_windows(ws, indices, batch_size)
        if self.multi:  # (N, pred_len, V·S) -> (N, pred_len, S, V)
            return split_targets(out, len(self.targets))
        if self.quantiles is None:
            return out
        return np.ascontiguousarray(out[..., self.quantiles.index(0.5)])

    def predict_quantiles(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None,
                          batch_size: int = 32) -> np.ndarray:
        """Quantile forecasts ``(N, pred_len, S, Q)`` float32 at the levels ``self.quantiles``, non-decreasing along
        ``Q``, for windows ``indices`` of ``ws`` (all when None); NaN as :meth:`predict_windows`."""
        if self.quantiles is None:
            return super().predict_quantiles(ws, indices)
        return self._calibrated(self._forecast_windows(ws, indices, batch_size))

    def _forecast_windows(self, ws: WindowSource, indices: Sequence[int] | np.ndarray | None,
                          batch_size: int) -> np.ndarray:
        """The network's forecasts for windows ``indices`` of ``ws`` in ``ws``'s station order: ``(N, pred_len, S)``,
        or ``(N, pred_len, S, Q)`` for a quantile forecaster."""
        ws_var = getattr(ws, "variable", None)
        if self.multi and tuple(getattr(ws, "variables", ())) != self.targets:
            raise ValueError(f"{self.name} forecasts {', '.join(self.targets)} together: it needs their windows "
                             f"(TargetWindows of exactly these variables), got windows of {ws_var!r}")
        if not self.multi and ws_var is not None and ws_var != self.variable:
            raise ValueError(f"{self.name} forecasts {self.variable!r} but the windows are {ws_var!r}")
        cov = self._covariate_positions(ws)
        ids = [str(s) for s in ws.station_ids]
        trained = [str(s) for s in self.station_ids]
        if ws.seq_len != self.seq_len or ws.label_len != self.label_len or ws.pred_len != self.pred_len:
            raise ValueError(f"windows have seq/label/pred = {ws.seq_len}/{ws.label_len}/{ws.pred_len}, the model "
                             f"{self.seq_len}/{self.label_len}/{self.pred_len}")
        if ids == trained:
            perm = None
        else:
            pos = {s: i for i, s in enumerate(ids)}
            if set(ids) != set(trained):
                unknown = [s for s in ids if s not in set(trained)]
                missing = [s for s in trained if s not in pos]
                raise ValueError(f"window stations differ from the trained ones: unknown {_preview(unknown)}; "
                                 f"missing {_preview(missing)}")
            perm = torch.as_tensor([pos[s] for s in trained])  # ws column of each trained slot
            if self.multi:  # the same permutation within every target's block of the stacked station axis
                perm = torch.cat([perm + j * len(ids) for j in range(len(self.targets))])
        idx = resolve_indices(ws, indices)
        levels = () if self.quantiles is None else (len(self.quantiles),)
        out = np.empty((idx.size, self.pred_len, len(ids) * len(self.targets), *levels), np.float32)
        images = int(getattr(self._net(), "n_nodes", 1))  # node images per window
        batch_size = max(1, min(int(batch_size), FORWARD_IMAGES // max(images, 1)))
        fastpath.tune_allocator(self.device.type)  # large activations reused, not page-faulted in per batch
        for i in range(0, idx.size, batch_size):
            batch = ws.batch(idx[i:i + batch_size])
            if cov is not None:  # the model's covariates, in its order
                batch = {**batch, "x_cov": batch["x_cov"][..., cov], "x_cov_mask": batch["x_cov_mask"][..., cov]}
            if perm is not None:
                cperm = perm[:len(ids)]  # the covariates' station axis is S wide
                batch = {k: (v[..., perm] if k in ("x", "x_mask") else v[..., cperm, :] if k in ("x_cov", "x_cov_mask")
                             else v) for k, v in batch.items()}
            pred = self._run(batch)
            if perm is not None:
                back = torch.empty_like(pred)
                back[:, :, perm] = pred  # the station axis (a quantile axis may follow)
                pred = back
            out[i:i + batch_size] = pred.numpy()
        return out

    def _covariate_positions(self, ws: WindowSource) -> torch.Tensor | None:
        """Positions of the model's covariates among the windows' ``inputs`` (None without covariates); an error
        naming what is missing when the windows lack one."""
        if not self.inputs:
            return None
        have = list(getattr(ws, "inputs", ()) or ())
        missing = [v for v in self.inputs if v not in have]
        if missing:
            raise ValueError(f"{self.name} uses the inputs {', '.join(self.inputs)}, but the windows carry "
                             f"{', '.join(have) if have else 'no inputs'}: missing {', '.join(missing)}")
        return torch.as_tensor([have.index(v) for v in self.inputs])

    def predict(self, history: xr.Dataset | str | os.PathLike[str]) -> xr.Dataset:
        """Forecast the ``pred_len`` steps after the end of ``history`` (Dataset or path) for every station.

        Uses the last ``seq_len`` steps (gaps handled as in training). Returns a Dataset with dims
        ``(lead_time, station)``: the variable in physical units with CF attributes, coords ``lead_time``
        (timedelta), ``time`` (valid time per lead), the station metadata, and ``attrs["forecast_reference_time"]``
        (= issue time, the last history step). A quantile forecaster's variable has dims ``(lead_time, station,
        quantile)`` with the coordinate ``quantile`` (the levels; the median is ``.sel(quantile=0.5)``).
        """
        self._require()
        ds = _open(history, "history")
        for v, role in (*((t, "forecasts") for t in self.targets), *((c, "uses as an input") for c in self.inputs)):
            if v not in ds.data_vars:
                raise ValueError(f"history has no variable {v!r} (the model {role} {v}); "
                                 f"it has: {', '.join(map(str, ds.data_vars)) or 'no data variables'}")
        validate(ds, variables=[*self.targets, *self.inputs], regular=False)
        T = ds.sizes["time"]
        if T < self.seq_len:
            raise ValueError(f"history has {T} time step(s) of {self.variable}, the model needs the last "
                             f"seq_len={self.seq_len}")
        order = self._order_for(ds, "history")
        keep = min(T, self.seq_len + 8 * max(self.max_gap, 1))  # extra context only for gap interpolation
        recent = ds.isel(time=slice(T - keep, T))
        validate(recent, variables=[*self.targets, *self.inputs], regular=True)
        self._check_frequency(recent, "history")
        times = pd.DatetimeIndex(recent["time"].values)
        freq = self.frequency if self.frequency is not None else (
            infer_frequency(recent) if len(times) >= 2 else pd.Timedelta(hours=1))
        future = pd.date_range(times[-1] + freq, periods=self.pred_len, freq=freq)
        full = {}
        for v in (*self.targets, *self.inputs):  # the history, then pred_len unknown (NaN) steps
            vals = np.asarray(recent[v].transpose("time", "station").values, np.float32)[:, order]
            full[v] = np.concatenate([vals, np.full((self.pred_len, vals.shape[1]), np.nan, np.float32)], axis=0)
        st = recent.isel(station=order)
        ext = make_dataset(times.append(future), st["station"].values, st["lat"].values, st["lon"].values,
                           st["elevation"].values, st["name"].values,
                           var_attrs={v: dict(ds[v].attrs) for v in full}, **full)
        try:
            ws = self._windows(ext, order="identity")
        except SchemaError as e:
            raise ValueError(f"history: {e}") from None
        if self.multi:  # (pred_len, S, V) in trained order -> the history's, one variable per target
            pred = self.predict_windows(ws, [len(ws) - 1], 1)[0]
            out = np.empty_like(pred)
            out[:, order] = pred
            return self._targets_dataset(ds, out, times, future, freq)
        pred = self._calibrated(self._forecast_windows(ws, [len(ws) - 1], 1))[0]  # (pred_len, S[, Q]), trained order
        out = np.empty_like(pred)
        out[:, order] = pred  # back to the history's station order
        return self._forecast_dataset(ds, out, times, future, freq)

    def _targets_dataset(self, ds: xr.Dataset, out: np.ndarray, times: pd.DatetimeIndex, future: pd.DatetimeIndex,
                         freq: pd.Timedelta) -> xr.Dataset:
        """:meth:`_forecast_dataset` of several targets: ``out`` ``(pred_len, S, V)``, one variable per target (each
        with its own units and CF attributes from ``ds``)."""
        result = self._forecast_dataset(ds, out[..., 0], times, future, freq, self.targets[0])
        for k, v in enumerate(self.targets[1:], 1):
            one = self._forecast_dataset(ds, out[..., k], times, future, freq, v)
            result[v] = one[v]
        result.attrs["title"] = f"urlk-forecast {self.model} {', '.join(self.targets)} forecast"
        return result

    def _forecast_dataset(self, ds: xr.Dataset, out: np.ndarray, times: pd.DatetimeIndex, future: pd.DatetimeIndex,
                          freq: pd.Timedelta, variable: str | None = None) -> xr.Dataset:
        """The Dataset :meth:`predict` returns for forecasts ``out`` ``(pred_len, S[, Q])`` of ``variable`` (default:
        the model's) in ``ds``'s station order issued at ``times[-1]`` for the valid times ``future``."""
        var = self.variable if variable is None else variable
        lead = pd.to_timedelta(np.arange(1, self.pred_len + 1) * freq.value, unit="ns")
        meta = {k: str(v) for k, v in ds[var].attrs.items() if k in ("units", "standard_name", "long_name")}
        meta.setdefault("long_name", var)
        dims: tuple[str, ...] = ("lead_time", "station")
        attrs = {**meta, "long_name": f"forecast {meta['long_name']}"}
        extra: dict[str, Any] = {}
        if self.quantiles is not None:  # CF-style: a coordinate of the levels; the median is quantile=0.5
            dims += ("quantile",)
            attrs["comment"] = ("quantiles of the forecast distribution, non-decreasing along quantile; the point "
                                "forecast is the median (quantile = 0.5)")
            extra["quantile"] = ("quantile", np.asarray(self.quantiles, np.float64), {
                "long_name": "quantile level (probability of not exceeding the forecast value)", "units": "1"})
        result = xr.Dataset(
            {var: (dims, out, attrs)},
            coords={
                "lead_time": ("lead_time", lead.values, {"long_name": "forecast lead time",
                                                         "standard_name": "forecast_period"}),
                "time": ("lead_time", future.values.astype("datetime64[ns]"), {"standard_name": "time",
                                                                               "long_name": "valid time"}),
                "station": ("station", np.asarray([str(s) for s in ds["station"].values], dtype=object),
                            COORD_ATTRS["station"]),
                **{c: ("station", ds[c].values, COORD_ATTRS[c]) for c in ("lat", "lon", "elevation", "name")},
                **extra,
            },
            attrs={
                "Conventions": "CF-1.8",
                "featureType": "timeSeries",
                "title": f"urlk-forecast {self.model} {var} forecast",
                "forecast_start": str(future[0]),
                "issue_time": str(times[-1]),
                "model": self.model,
                "seq_len": self.seq_len,
                "pred_len": self.pred_len,
            },
        )
        _, lead_units, lead_unit = lead_time_unit(freq)  # netCDF: lead_time = 1, 2, ... hours (days, minutes)
        if freq % lead_unit == pd.Timedelta(0):
            result["lead_time"].encoding.update(units=lead_units, dtype="int32")
        result["forecast_reference_time"] = xr.DataArray(
            np.datetime64(times[-1].to_datetime64(), "ns"), attrs={"standard_name": "forecast_reference_time"})
        return result.set_coords("forecast_reference_time")

    # ---------------------------------------------------------------------------------------- evaluate
    def evaluate(self, data: WindowSource | xr.Dataset | str | os.PathLike[str],
                 indices: Sequence[int] | np.ndarray | None = None, *, split: str | None = None,
                 stride: int = 1, batch_size: int = 32) -> Scores:
        """MSE/MAE (physical units, Corrformer averaging) overall and per lead time (``Scores.per_lead``), scored
        by the one scorer like every baseline.

        ``data``: a window source (its windows ``indices``, all when None) or a Dataset / path: all its windows
        with ``stride``, or those of ``split="test"|"val"|"train"`` of
        :func:`~urlk_forecast.data.windows.split_dataset`. A station with nothing observed in a window's input has
        no forecast there; ``Scores.n_unforecast`` counts those targets. Several targets: a dict
        ``{variable: Scores}`` (``data`` a Dataset/path, or their ``TargetWindows``).
        """
        self._require()
        if _is_window_source(data):
            if split is not None:
                raise ValueError("split applies to a Dataset or path, not to a window source")
            ws = data
        else:
            ws = self._eval_windows(data, split, stride)
        if len(ws) == 0:
            raise ValueError(f"no complete window (seq_len + pred_len = {self.seq_len + self.pred_len} steps) to "
                             "evaluate on")
        if self.multi:  # one Scores per target variable, each from the one scorer on that variable's windows
            tables = score_targets({v: [view] for v, view in target_views(self, ws).items()}, ws, indices,
                                   batch_size=batch_size)
            return {v: next(iter(t.scores.values())) for v, t in tables.items()}  # type: ignore[return-value]
        return super().evaluate(ws, indices, batch_size=batch_size)

    def _eval_windows(self, data: Any, split: str | None, stride: int) -> WindowDataset:
        ds = _open(data, "data")
        validate(ds, variables=[*self.targets, *self.inputs])
        if split is not None:
            if split not in ("train", "val", "test"):
                raise ValueError(f"split must be 'train', 'val', 'test' or None, got {split!r}")
            ds = split_dataset(ds, context=self.seq_len)[split]
        self._check_frequency(ds, "data")
        return self._windows(ds, order=self._order_for(ds, "data"), stride=stride)

    def cross_validation(self, data: xr.Dataset | str | os.PathLike[str], n_windows: int, step: int = 1,
                         refit: bool | int = False, *, baselines: Sequence[Method] = (),
                         refit_max_time: float | None = 60.0, batch_size: int = 256, progress: Any = None,
                         **fit_kw: Any) -> Backtest:
        """Rolling-origin backtest of this forecaster beside ``baselines`` (other methods, fitted at the same origins)
        on ``data``: :func:`urlk_forecast.backtest.cross_validation` with this model's window lengths. Untrained, it
        is fitted on the data up to the first origin with ``fit_kw`` (``fit``'s settings); trained, it is used as it
        is (its training data must end by the first origin). ``refit=N``: at every N-th origin it continues training
        from its current weights on the data up to that origin for at most ``refit_max_time`` seconds."""
        if self.multi:
            raise NotImplementedError(f"backtests score one variable; {self.name} forecasts {', '.join(self.targets)} "
                                      "together (evaluate() scores each variable on its windows)")
        ds = _open(data, "data")
        if self.net is None:
            self.resolve_lengths(ds)  # lengths given as durations, in steps of this data
        return cross_validation(
            [self, *baselines], ds, n_windows=n_windows, step=step, refit=refit,
            seq_len=self.seq_len, label_len=self.label_len, pred_len=self.pred_len, max_gap=self.max_gap,
            fitted=[self.net is not None] + [False] * len(baselines), batch_size=batch_size, progress=progress,
            fit_fn=warm_refits(self, refit_max_time, **fit_kw))

    # ------------------------------------------------------------------------------------ save / load
    def to_config(self) -> ForecasterConfig:
        """What :meth:`save` writes to ``config.json``: how to build this forecaster and its trained state."""
        stations = self._require()
        return ForecasterConfig(
            model=self.model, variable=self.variable, seq_len=self.seq_len, label_len=self.label_len,
            pred_len=self.pred_len, max_gap=self.max_gap, model_kw=dict(self.model_kw),
            quantiles=list(self.quantiles) if self.quantiles is not None else None,
            inputs=list(self.inputs) or None, units=self.units, net=dict(self._net().config),
            reparameterized=self.reparameterized,
            frequency=str(self.frequency) if self.frequency is not None else None,
            n_stations=len(stations["station"]), train=dict(self.train_info))

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write weights, JSON config (:meth:`to_config`) and station metadata into ``directory`` (each file
        atomically). ``config.json`` is written last, so a directory with a config is complete."""
        stations = self._require()
        config = self.to_config()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({k: v.detach().cpu() for k, v in self._net().state_dict().items()}, d / WEIGHTS_NAME)
        atomic_write_text(d / STATIONS_NAME, json.dumps(to_jsonable(stations)))
        if self.calibration is not None:
            atomic_write_text(d / CALIBRATION_NAME, json.dumps(self.calibration.to_dict(), indent=2) + "\n")
        else:
            (d / CALIBRATION_NAME).unlink(missing_ok=True)  # never a stale calibration of an earlier model
        atomic_write_text(d / CONFIG_NAME, json.dumps(to_jsonable(config.to_dict()), indent=2) + "\n")
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Forecaster:
        """Load a forecaster written by :meth:`save` (weights mapped to ``map_location``, CPU by default)."""
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"no saved forecaster at {d} (not a directory)")
        for name in (CONFIG_NAME, WEIGHTS_NAME, STATIONS_NAME):
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d} is not a saved forecaster: {name} is missing")
        try:
            raw = json.loads((d / CONFIG_NAME).read_text(encoding="utf-8"))
            stations = json.loads((d / STATIONS_NAME).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{d}: invalid JSON ({e.msg} at line {e.lineno})") from None
        config = _read_config(raw, d / CONFIG_NAME)
        self = cls(**config.forecaster_kwargs())
        self.model_kw = {**self.model_kw, **config.model_kw}
        net = ForecastNet(**config.net)
        if config.reparameterized:
            net.eval()
            net.reparameterize()
        state = torch.load(d / WEIGHTS_NAME, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        net.to(map_location)
        net.eval()
        self.net = net
        self.reparameterized = bool(config.reparameterized)
        self.stations = stations
        self.frequency = pd.Timedelta(config.frequency) if config.frequency else None
        self.units = config.units
        self.train_info = dict(config.train)
        wall = self.train_info.get("wall_s")
        self.fit_seconds = float(wall) if wall is not None else None
        self.calibration = self._load_calibration(d / CALIBRATION_NAME)
        return self

    def _load_calibration(self, path: Path) -> QuantileCalibration | None:
        """The calibration saved at ``path`` (None when absent: models saved before it, or without one)."""
        if not path.is_file():
            return None
        try:
            cal = QuantileCalibration.from_dict(json.loads(path.read_text(encoding="utf-8")), source=str(path))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
        if self.quantiles is None or cal.levels != list(self.quantiles) or cal.factors.shape[0] != self.pred_len:
            raise ValueError(f"{path}: a calibration of levels {cal.levels} over {cal.factors.shape[0]} leads does not "
                             f"fit this model (quantiles {self.quantiles}, pred_len {self.pred_len})")
        return cal

    # -------------------------------------------------------------------------------------- inference
    def reparameterize(self) -> Forecaster:
        """Convert the network to its inference form (structural re-parameterisation); same predictions."""
        net = self._net()
        net.eval()
        net.reparameterize()
        self.reparameterized = True
        return self

    def export(self, path: str | os.PathLike[str], format: str = "onnx", *, check: bool = True) -> ExportResult:
        """Write the re-parameterised network (a copy; this forecaster is unchanged) to ``path`` as ``format``
        (``"onnx"`` or ``"torchscript"``) with a JSON sidecar ``<path>.json`` (variable, units, lengths, station
        order, inputs, time features); see :func:`urlk_forecast.export.export_forecaster` and ``docs/export.md``.
        A covariate model's graph reads the covariates too; a calibrated quantile model's applies the calibration."""
        self._require()
        if self.multi:
            raise NotImplementedError(f"export of a forecaster of several targets ({', '.join(self.targets)}) is not "
                                      "supported: the exported graph and its sidecar describe one variable")
        return export_forecaster(self, path, format, check=check)
