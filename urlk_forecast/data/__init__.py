"""Station data: the schema, readers, the synthetic default and training windows.

The schema is imported eagerly (it is light); everything else lazily, so ``import urlk_forecast.data``
does not pull in torch or numba.
"""

from __future__ import annotations

import importlib
from typing import Any

from .schema import VARIABLES, SchemaError, convert_units, infer_frequency, make_dataset, validate

_LAZY = {
    "synthetic_global": "urlk_forecast.data.synthetic",
    "WindowDataset": "urlk_forecast.data.windows",
    "split_dataset": "urlk_forecast.data.windows",
    "time_features": "urlk_forecast.data.windows",
    "station_order": "urlk_forecast.data.windows",
    "open_dataset": "urlk_forecast.data.readers",
    "write_netcdf": "urlk_forecast.data.readers",
}

__all__ = ["VARIABLES", "SchemaError", "convert_units", "infer_frequency", "make_dataset", "validate", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'urlk_forecast.data' has no attribute {name!r}")
