"""urlk-forecast: station weather and time-series forecasting with UniRepLKNet.

Public API (imported lazily so ``import urlk_forecast`` stays fast):
``Forecaster``, ``create_model``, ``list_models``, ``synthetic_global``, the readers
(``read_isd_lite``, ``read_global_hourly``, ``read_gsod``, ``read_corrformer_npy``,
``read_netcdf``, ``read_csv_long``, ``open_dataset``) and ``validate``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Forecaster": "urlk_forecast.forecaster",
    "create_model": "urlk_forecast.models.unireplknet",
    "list_models": "urlk_forecast.models.registry",
    "synthetic_global": "urlk_forecast.data.synthetic",
    "read_isd_lite": "urlk_forecast.data.readers",
    "read_global_hourly": "urlk_forecast.data.readers",
    "read_gsod": "urlk_forecast.data.readers",
    "read_corrformer_npy": "urlk_forecast.data.readers",
    "read_netcdf": "urlk_forecast.data.readers",
    "read_csv_long": "urlk_forecast.data.readers",
    "open_dataset": "urlk_forecast.data.readers",
    "validate": "urlk_forecast.data.schema",
    "make_dataset": "urlk_forecast.data.schema",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'urlk_forecast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
