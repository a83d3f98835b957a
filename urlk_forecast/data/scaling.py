"""Per-station standardisation fitted on the training split.

Corrformer-style models are trained on standardised values and evaluated in physical units; each station gets its
own mean and standard deviation (NaN-aware), so a tropical and a polar station both look like unit-variance series.
The statistics are kept in float64; transforms keep the input's type (numpy or torch), dtype and device.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr

__all__ = ["StandardScaler"]


def _values_last_axis_station(data: Any, variable: str | None) -> np.ndarray:
    """Float64 array with stations on the last axis from an array, DataArray, Dataset or WindowDataset."""
    if hasattr(data, "observed") and hasattr(data, "values") and hasattr(data, "order"):  # a WindowDataset
        return np.where(data.observed, data.values, np.nan).astype(np.float64)
    if isinstance(data, xr.Dataset):
        if variable is None:
            raise ValueError("fitting on an xarray.Dataset needs variable=, e.g. 'temperature'")
        if variable not in data.data_vars:
            raise ValueError(f"variable {variable!r} not in dataset (has {sorted(data.data_vars)})")
        data = data[variable]
    if isinstance(data, xr.DataArray):
        if "station" not in data.dims:
            raise ValueError(f"DataArray has no 'station' dimension (dims {data.dims})")
        data = data.transpose(..., "station").values
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    arr = np.asarray(data, dtype=np.float64)
    if arr.ndim < 1:
        raise ValueError("cannot fit a scaler on a scalar")
    return arr


class StandardScaler:
    """``z = (x - mean) / std`` per station (the last axis), NaN-aware, with a floor on ``std``.

    ``min_std`` (physical units) keeps near-constant stations from blowing up. Stations with fewer than
    ``min_count`` finite training values get the pooled statistics of all stations (a warning names how many).
    ``per_station=False`` fits one pooled mean/std for all stations.
    """

    def __init__(self, per_station: bool = True, min_std: float = 1e-2, min_count: int = 2) -> None:
        if not min_std > 0:
            raise ValueError(f"min_std must be > 0, got {min_std}")
        self.per_station = bool(per_station)
        self.min_std = float(min_std)
        self.min_count = int(min_count)
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self._torch_cache: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`from_state_dict`) has set the statistics."""
        return self.mean is not None

    def fit(self, data: Any, variable: str | None = None) -> StandardScaler:
        """Fit on ``(..., S)`` values: an array/tensor, a DataArray/Dataset (+ ``variable``) or a WindowDataset.

        A WindowDataset contributes only its observed values (not its interpolated or held ones).
        """
        arr = _values_last_axis_station(data, variable)
        flat = arr.reshape(-1, arr.shape[-1])
        finite = np.isfinite(flat)
        if not finite.any():
            raise ValueError("cannot fit a scaler: no finite value in the data")
        pooled = flat[finite]
        g_mean, g_std = float(pooled.mean()), float(pooled.std())
        if self.per_station:
            count = finite.sum(axis=0)
            safe = np.where(finite, flat, 0.0)
            mean = safe.sum(axis=0) / np.maximum(count, 1)
            var = (np.where(finite, flat - mean, 0.0) ** 2).sum(axis=0) / np.maximum(count, 1)
            std = np.sqrt(var)
            few = count < self.min_count
            if few.any():
                warnings.warn(
                    f"{int(few.sum())} station(s) have fewer than {self.min_count} finite values; "
                    "they use the pooled mean/std of all stations",
                    stacklevel=2,
                )
                mean = np.where(few, g_mean, mean)
                std = np.where(few, g_std, std)
        else:
            mean, std = np.full(flat.shape[1], g_mean), np.full(flat.shape[1], g_std)
        self.mean = mean.astype(np.float64)
        self.std = np.maximum(std, self.min_std).astype(np.float64)
        self._torch_cache.clear()
        return self

    def _stats(self, x: Any) -> tuple[Any, Any]:
        if self.mean is None or self.std is None:
            raise RuntimeError("StandardScaler is not fitted; call fit() first")
        n = x.shape[-1] if getattr(x, "ndim", 0) else None
        if n != self.mean.shape[0]:
            raise ValueError(f"expected {self.mean.shape[0]} stations on the last axis, got shape {tuple(x.shape)}")
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float32
            key = (dtype, x.device)
            if key not in self._torch_cache:
                self._torch_cache[key] = (
                    torch.as_tensor(self.mean, dtype=dtype, device=x.device),
                    torch.as_tensor(self.std, dtype=dtype, device=x.device),
                )
            return self._torch_cache[key]
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
        return self.mean.astype(dtype), self.std.astype(dtype)

    def transform(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Standardise ``x`` (stations on the last axis); NaN stays NaN."""
        x = x if isinstance(x, torch.Tensor) else np.asarray(x)
        mean, std = self._stats(x)
        return (x - mean) / std

    def inverse_transform(self, z: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Back to physical units: ``z * std + mean``."""
        z = z if isinstance(z, torch.Tensor) else np.asarray(z)
        mean, std = self._stats(z)
        return z * std + mean

    def state_dict(self) -> dict[str, Any]:
        """Statistics as float64 tensors plus settings (safe for ``torch.load(weights_only=True)``)."""
        if self.mean is None or self.std is None:
            raise RuntimeError("StandardScaler is not fitted; nothing to save")
        return {
            "mean": torch.from_numpy(self.mean.copy()),
            "std": torch.from_numpy(self.std.copy()),
            "per_station": self.per_station,
            "min_std": self.min_std,
            "min_count": self.min_count,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> StandardScaler:
        """Rebuild a fitted scaler from :meth:`state_dict` (tensors, arrays or lists)."""
        missing = [k for k in ("mean", "std") if k not in state]
        if missing:
            raise KeyError(f"scaler state lacks {missing}")

        def arr(v: Any) -> np.ndarray:
            v = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
            return np.asarray(v, dtype=np.float64).reshape(-1)

        obj = cls(
            per_station=bool(state.get("per_station", True)),
            min_std=float(state.get("min_std", 1e-2)),
            min_count=int(state.get("min_count", 2)),
        )
        obj.mean, obj.std = arr(state["mean"]), arr(state["std"])
        if obj.mean.shape != obj.std.shape:
            raise ValueError(f"scaler state mean {obj.mean.shape} and std {obj.std.shape} differ in shape")
        if not (np.all(np.isfinite(obj.std)) and np.all(obj.std > 0)):
            raise ValueError("scaler state has a non-positive or non-finite std")
        return obj

    def __repr__(self) -> str:
        n = None if self.mean is None else self.mean.shape[0]
        return f"StandardScaler(stations={n}, per_station={self.per_station}, min_std={self.min_std})"
