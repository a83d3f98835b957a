"""``Forecaster``: the user-facing station forecaster (fit / predict / evaluate / save / load / reparameterize).

It wraps a :class:`~urlk_forecast.models.forecast_net.ForecastNet` together with everything needed to use it on
new data: the variable, the window lengths, the data frequency, the trained station ids in model order (the
space-filling-curve order the windows were built in) and their metadata. Typical use::

    fc = Forecaster("unireplknet_a", variable="temperature")
    fc.fit(ds, max_time=600)                 # chronological train/val split, the paper's schedule
    forecast = fc.predict(ds)                # next pred_len steps after the end of ds, per station
    fc.evaluate(test_ds)                     # MSE/MAE per lead time and overall
    fc.save("runs/a");  fc = Forecaster.load("runs/a")

Model names: ``"unireplknet_<v>"`` (or just ``"<v>"``) for v in a f p n t s b l xl h; ``"convnext"``,
``"resnet"``, ``"corrformer"`` optionally with a variant suffix (``"convnext_s"``: same widths/depths as S).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from .data.schema import COORD_ATTRS, VARIABLES, SchemaError, infer_frequency, make_dataset, validate
from .models.registry import parse_model_name  # kept importable here: forecaster.parse_model_name

__all__ = ["Forecaster", "parse_model_name", "FORMAT", "FORMAT_VERSION"]

FORMAT = "urlk-forecast/forecaster"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.pt"
STATIONS_NAME = "stations.json"

def _open(data: Any, what: str) -> xr.Dataset:
    if isinstance(data, xr.Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        from .data.readers import open_dataset

        return open_dataset(data)
    raise TypeError(f"{what} must be an xarray.Dataset or a path to a data file/directory, got {type(data).__name__}")


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    if isinstance(v, (pd.Timestamp, pd.Timedelta)):
        return str(v)
    return v


def _atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _preview(ids: Sequence[str], n: int = 10) -> str:
    ids = list(ids)
    return ", ".join(ids[:n]) + (f", ... ({len(ids)} in all)" if len(ids) > n else "")


class Forecaster:
    """Station forecaster built on :class:`~urlk_forecast.models.forecast_net.ForecastNet`.

    ``model_kw`` go to the network (``d_model``, ``node_size``, ``kernel_size``, ``dims``, ``spatial``, ...);
    ``max_gap`` (keyword) is the longest gap (steps) interpolated in the inputs, as in
    :class:`~urlk_forecast.data.windows.WindowDataset`.
    """

    def __init__(self, model: str = "unireplknet_a", variable: str = "temperature", seq_len: int = 48,
                 label_len: int = 24, pred_len: int = 24, *, max_gap: int = 3, **model_kw: Any) -> None:
        if variable not in VARIABLES:
            raise ValueError(f"unknown variable {variable!r}; available: {', '.join(VARIABLES)}")
        for name, v, lo in (("seq_len", seq_len, 2), ("label_len", label_len, 0), ("pred_len", pred_len, 1),
                            ("max_gap", max_gap, 0)):
            if int(v) != v or int(v) < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if label_len > seq_len:
            raise ValueError(f"label_len ({label_len}) must not exceed seq_len ({seq_len})")
        encoder, variant = parse_model_name(model)
        self.model = str(model)
        self.variable = variable
        self.seq_len, self.label_len, self.pred_len = int(seq_len), int(label_len), int(pred_len)
        self.max_gap = int(max_gap)
        self.model_kw: dict[str, Any] = {"encoder": encoder, "variant": variant, **model_kw}
        self.net: torch.nn.Module | None = None
        self.stations: dict[str, Any] | None = None  # ids (model order), lat, lon, elevation, name, coords
        self.frequency: pd.Timedelta | None = None
        self.train_info: dict[str, Any] = {}
        self.reparameterized = False

    # ------------------------------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        n = len(self.stations["station"]) if self.stations else 0
        state = "untrained" if self.net is None else f"{n} stations"
        return (f"Forecaster(model={self.model!r}, variable={self.variable!r}, seq_len={self.seq_len}, "
                f"label_len={self.label_len}, pred_len={self.pred_len}, {state})")

    @property
    def station_ids(self) -> np.ndarray:
        """Trained station ids in model order."""
        return np.asarray(self._require()["station"], dtype=object)

    @property
    def device(self) -> torch.device:
        """Device the network's weights are on."""
        return next(self._net().parameters()).device

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
        from .data.windows import WindowDataset

        return WindowDataset(ds, self.variable, self.seq_len, self.label_len, self.pred_len, stride=stride,
                             max_gap=self.max_gap, order=order)

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
    def build_net(self, n_stations: int, coords: Any = None) -> torch.nn.Module:
        """Build (and keep) a fresh network for ``n_stations`` stations with ``coords`` (S, 3) standardised."""
        from .models.forecast_net import ForecastNet

        self.net = ForecastNet(n_stations, coords=coords, seq_len=self.seq_len, label_len=self.label_len,
                               pred_len=self.pred_len, **self.model_kw)
        self.reparameterized = False
        return self.net

    def fit(self, data: Any, val: Any = None, epochs: int | None = None, max_steps: int | None = None,
            max_time: float | None = None, *, cfg: Any = None, out_dir: str | os.PathLike[str] | None = None,
            resume: bool = False, stride: int = 1, callback: Callable[[dict[str, Any]], None] | None = None,
            **train_overrides: Any) -> Any:
        """Train on ``data`` (Dataset or path); returns the :class:`~urlk_forecast.training.TrainResult`.

        Without ``val`` the data is split chronologically: the source's own splits when
        ``data.attrs["split_bounds"]`` exists (train / val used, test left out), else the last 10 % of the
        time steps become the validation period (with ``seq_len`` steps of context before it). ``epochs``,
        ``max_steps``, ``max_time`` and ``train_overrides`` (any :class:`~urlk_forecast.config.TrainConfig`
        field: ``lr``, ``batch_size``, ``device``, ``amp``, ``checkpointing``, ``seed``, ...) override ``cfg``
        (default: the paper's schedule). ``out_dir``/``resume`` checkpoint and continue a killed run.
        """
        from .config import TrainConfig
        from .data.windows import split_dataset
        from .training import train

        ds = _open(data, "data")
        validate(ds, variables=[self.variable])
        if val is None:
            ratios = (0.7, 0.1, 0.2) if ds.attrs.get("split_bounds") else (0.9, 0.1, 0.0)
            parts = split_dataset(ds, ratios=ratios, context=self.seq_len)
            train_ds, val_ds = parts["train"], parts["val"]
        else:
            train_ds, val_ds = ds, _open(val, "val")
            validate(val_ds, variables=[self.variable])
        self.frequency = infer_frequency(train_ds)
        train_ws = self._windows(train_ds, stride=stride)
        if len(train_ws) == 0:
            raise ValueError(f"the training period has {train_ds.sizes['time']} time steps, fewer than "
                             f"seq_len + pred_len = {self.seq_len + self.pred_len}: no training window")
        ids = [str(s) for s in train_ws.station_ids]
        self.stations = {
            "station": ids,
            "lat": train_ws.lat.astype(float).tolist(),
            "lon": train_ws.lon.astype(float).tolist(),
            "elevation": train_ws.elevation.astype(float).tolist(),
            "name": [str(v) for v in np.asarray(train_ds["name"].values)[train_ws.order]],
            "coords": np.asarray(train_ws.coords, np.float64).tolist(),
        }
        net = self.build_net(len(ids), coords=train_ws.coords)
        val_ws = None
        if val_ds is not None and val_ds.sizes.get("time", 0) > 0:
            self._check_frequency(val_ds, "val")
            val_ws = self._windows(val_ds, order=self._order_for(val_ds, "val"), stride=1)
            if len(val_ws) == 0:
                val_ws = None

        base = cfg if cfg is not None else TrainConfig()
        overrides = dict(train_overrides)
        for k, v in (("epochs", epochs), ("max_steps", max_steps), ("max_time", max_time)):
            if v is not None:
                overrides[k] = v
        cfg = base.replace(**overrides) if overrides else base
        t0 = time.time()
        run_cfg = cfg.replace(out_dir=cfg.out_dir if out_dir is None else out_dir, resume=resume or cfg.resume)
        result = train(net, train_ws, val_ws, run_cfg, callback=callback)
        net.eval()
        times = pd.DatetimeIndex(train_ds["time"].values)
        self.train_info = {
            "trained_at": pd.Timestamp.now(tz="UTC").isoformat(),
            "train_period": [str(times[0]), str(times[-1])],
            "train_windows": len(train_ws),
            "val_windows": len(val_ws) if val_ws is not None else 0,
            "wall_s": time.time() - t0,
            "train_config": cfg.to_dict(),
            "result": {k: v for k, v in result.to_dict().items() if k != "step_losses"},
            "source": {k: str(v) for k, v in ds.attrs.items() if k in ("title", "source", "synthetic", "seed")},
        }
        return result

    # ----------------------------------------------------------------------------------------- predict
    @torch.no_grad()
    def _run(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        net = self._net()
        net.eval()
        dev = self.device
        # everything but the targets (the network must not see them; extra inputs such as a fusion "aux" pass)
        b = {k: v.to(dev) for k, v in batch.items() if k not in ("y", "y_mask", "index") and torch.is_tensor(v)}
        out = net(b).float()
        from .models.embedding import RevIN

        empty = RevIN.no_observation(b["x"], b.get("x_mask"))  # (B, S): nothing observed → no forecast
        return torch.where(empty[:, None, :], torch.full_like(out, float("nan")), out).cpu()

    def predict_windows(self, ws: Any, indices: Sequence[int] | np.ndarray | None = None,
                        batch_size: int = 32) -> np.ndarray:
        """Forecasts ``(N, pred_len, S)`` in physical units for windows of ``ws``, in ``ws``'s station order.

        NaN for a station with no observed input in a window (nothing to forecast from).
        """
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
        idx = np.arange(len(ws)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((idx.size, self.pred_len, len(ids)), np.float32)
        for i in range(0, idx.size, batch_size):
            batch = ws.batch(idx[i:i + batch_size])
            if perm is not None:
                batch = {k: (v[..., perm] if k in ("x", "x_mask") else v) for k, v in batch.items()}
            pred = self._run(batch)
            if perm is not None:
                back = torch.empty_like(pred)
                back[..., perm] = pred
                pred = back
            out[i:i + batch_size] = pred.numpy()
        return out

    def predict(self, history: Any) -> xr.Dataset:
        """Forecast the ``pred_len`` steps after the end of ``history`` (Dataset or path) for every station.

        Uses the last ``seq_len`` steps (gaps handled as in training). Returns a Dataset with dims
        ``(lead_time, station)``: the variable in physical units with CF attributes, coords ``lead_time``
        (timedelta), ``time`` (valid time per lead), the station metadata, and ``attrs["forecast_reference_time"]``
        (= issue time, the last history step).
        """
        self._require()
        ds = _open(history, "history")
        if self.variable not in ds.data_vars:
            raise ValueError(f"history has no variable {self.variable!r} (the model forecasts {self.variable}); "
                             f"it has: {', '.join(map(str, ds.data_vars)) or 'no data variables'}")
        validate(ds, variables=[self.variable], regular=False)
        T = ds.sizes["time"]
        if T < self.seq_len:
            raise ValueError(f"history has {T} time step(s) of {self.variable}, the model needs the last "
                             f"seq_len={self.seq_len}")
        order = self._order_for(ds, "history")
        keep = min(T, self.seq_len + 8 * max(self.max_gap, 1))  # extra context only for gap interpolation
        recent = ds.isel(time=slice(T - keep, T))
        validate(recent, variables=[self.variable], regular=True)
        self._check_frequency(recent, "history")
        times = pd.DatetimeIndex(recent["time"].values)
        freq = self.frequency if self.frequency is not None else (
            infer_frequency(recent) if len(times) >= 2 else pd.Timedelta(hours=1))
        future = pd.date_range(times[-1] + freq, periods=self.pred_len, freq=freq)
        vals = np.asarray(recent[self.variable].transpose("time", "station").values, np.float32)[:, order]
        full = np.concatenate([vals, np.full((self.pred_len, vals.shape[1]), np.nan, np.float32)], axis=0)
        st = recent.isel(station=order)
        ext = make_dataset(times.append(future), st["station"].values, st["lat"].values, st["lon"].values,
                           st["elevation"].values, st["name"].values, **{self.variable: full})
        try:
            ws = self._windows(ext, order="identity")
        except SchemaError as e:
            raise ValueError(f"history: {e}") from None
        pred = self.predict_windows(ws, [len(ws) - 1])[0]  # (pred_len, S) in trained order
        out = np.empty_like(pred)
        out[:, order] = pred  # back to the history's station order
        lead = pd.to_timedelta(np.arange(1, self.pred_len + 1) * freq.value, unit="ns")
        meta = VARIABLES[self.variable]
        result = xr.Dataset(
            {self.variable: (("lead_time", "station"), out, {**meta, "long_name": f"forecast {meta['long_name']}"})},
            coords={
                "lead_time": ("lead_time", lead.values, {"long_name": "forecast lead time",
                                                         "standard_name": "forecast_period"}),
                "time": ("lead_time", future.values.astype("datetime64[ns]"), {"standard_name": "time",
                                                                               "long_name": "valid time"}),
                "station": ("station", np.asarray([str(s) for s in ds["station"].values], dtype=object),
                            COORD_ATTRS["station"]),
                **{c: ("station", ds[c].values, COORD_ATTRS[c]) for c in ("lat", "lon", "elevation", "name")},
            },
            attrs={
                "Conventions": "CF-1.8",
                "featureType": "timeSeries",
                "title": f"urlk-forecast {self.model} {self.variable} forecast",
                "forecast_start": str(future[0]),
                "issue_time": str(times[-1]),
                "model": self.model,
                "seq_len": self.seq_len,
                "pred_len": self.pred_len,
            },
        )
        if freq % pd.Timedelta(hours=1) == pd.Timedelta(0):  # netCDF: lead_time = 1, 2, ... hours
            result["lead_time"].encoding.update(units="hours", dtype="int32")
        result["forecast_reference_time"] = xr.DataArray(
            np.datetime64(times[-1].to_datetime64(), "ns"), attrs={"standard_name": "forecast_reference_time"})
        return result.set_coords("forecast_reference_time")

    # ---------------------------------------------------------------------------------------- evaluate
    def evaluate(self, data: Any, split: str | None = None, stride: int = 1, batch_size: int = 32) -> pd.DataFrame:
        """MSE/MAE (physical units, Corrformer averaging) per lead time plus an ``"all"`` row.

        ``data``: a Dataset / path (all its windows, or ``split="test"|"val"|"train"`` of
        :func:`~urlk_forecast.data.windows.split_dataset`) or a WindowDataset. ``df.attrs`` holds the overall
        ``mse``/``mae`` and the number of windows.
        """
        from .metrics import evaluate_arrays, per_horizon

        self._require()
        if hasattr(data, "batch") and hasattr(data, "station_ids"):
            ws = data
        else:
            ds = _open(data, "data")
            validate(ds, variables=[self.variable])
            if split is not None:
                from .data.windows import split_dataset

                if split not in ("train", "val", "test"):
                    raise ValueError(f"split must be 'train', 'val', 'test' or None, got {split!r}")
                ds = split_dataset(ds, context=self.seq_len)[split]
            self._check_frequency(ds, "data")
            ws = self._windows(ds, order=self._order_for(ds, "data"), stride=stride)
        if len(ws) == 0:
            raise ValueError(f"no complete window (seq_len + pred_len = {self.seq_len + self.pred_len} steps) to "
                             "evaluate on")
        pred = self.predict_windows(ws, batch_size=batch_size)
        trues, masks = [], []
        for i in range(0, len(ws), 256):
            b = ws.batch(np.arange(i, min(i + 256, len(ws))))
            trues.append(b["y"][:, -self.pred_len:].numpy())
            masks.append(b["y_mask"][:, -self.pred_len:].numpy())
        true, mask = np.concatenate(trues), np.concatenate(masks)
        # a NaN forecast (station with nothing observed in its input window) is left out like a missing target
        mask = mask & np.isfinite(pred)
        df = per_horizon(pred, true, mask)
        overall = evaluate_arrays(pred, true, mask)
        row = {"horizon": "all", "mse": overall["mse"], "mae": overall["mae"]}
        if "count" in df.columns:
            row["count"] = int(df["count"].sum())
        df = pd.concat([df.astype({"horizon": object}), pd.DataFrame([row])], ignore_index=True)
        df.attrs.update(mse=float(overall["mse"]), mae=float(overall["mae"]), windows=len(ws))
        return df

    # ------------------------------------------------------------------------------------ save / load
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write weights, JSON config and station metadata into ``directory`` (each file atomically).

        ``config.json`` is written last, so a directory with a config is complete.
        """
        stations = self._require()
        net = self._net()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        _atomic_write_bytes(d / WEIGHTS_NAME, lambda fh: torch.save(state, fh))
        _atomic_write_bytes(d / STATIONS_NAME, lambda fh: fh.write(json.dumps(_jsonable(stations)).encode()))
        config = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": self.model,
            "variable": self.variable,
            "units": VARIABLES[self.variable]["units"],
            "seq_len": self.seq_len,
            "label_len": self.label_len,
            "pred_len": self.pred_len,
            "max_gap": self.max_gap,
            "model_kw": self.model_kw,
            "net": net.config,
            "reparameterized": self.reparameterized,
            "frequency": str(self.frequency) if self.frequency is not None else None,
            "n_stations": len(stations["station"]),
            "train": self.train_info,
        }
        text = json.dumps(_jsonable(config), indent=2) + "\n"
        _atomic_write_bytes(d / CONFIG_NAME, lambda fh: fh.write(text.encode()))
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Forecaster:
        """Load a forecaster written by :meth:`save` (weights mapped to ``map_location``, CPU by default)."""
        from .models.forecast_net import ForecastNet

        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"no saved forecaster at {d} (not a directory)")
        for name in (CONFIG_NAME, WEIGHTS_NAME, STATIONS_NAME):
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d} is not a saved forecaster: {name} is missing")
        try:
            config = json.loads((d / CONFIG_NAME).read_text(encoding="utf-8"))
            stations = json.loads((d / STATIONS_NAME).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{d}: invalid JSON ({e.msg} at line {e.lineno})") from None
        if config.get("format") != FORMAT:
            raise ValueError(f"{d / CONFIG_NAME}: not a forecaster config (format {config.get('format')!r})")
        if int(config.get("version", 0)) > FORMAT_VERSION:
            raise ValueError(f"{d / CONFIG_NAME}: format version {config['version']} is newer than this "
                             f"urlk-forecast supports ({FORMAT_VERSION})")
        model_kw = dict(config.get("model_kw", {}))
        model_kw.pop("encoder", None)
        model_kw.pop("variant", None)
        self = cls(config["model"], config["variable"], config["seq_len"], config["label_len"], config["pred_len"],
                   max_gap=config.get("max_gap", 3), **model_kw)
        self.model_kw = dict(config.get("model_kw", self.model_kw))
        net = ForecastNet(**config["net"])
        if config.get("reparameterized"):
            net.eval()
            net.reparameterize()
        state = torch.load(d / WEIGHTS_NAME, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        net.to(map_location)
        net.eval()
        self.net = net
        self.reparameterized = bool(config.get("reparameterized"))
        self.stations = stations
        freq = config.get("frequency")
        self.frequency = pd.Timedelta(freq) if freq else None
        self.train_info = config.get("train", {})
        return self

    # -------------------------------------------------------------------------------------- inference
    def reparameterize(self) -> Forecaster:
        """Convert the network to its inference form (structural re-parameterisation); same predictions."""
        net = self._net()
        net.eval()
        net.reparameterize()
        self.reparameterized = True
        return self
