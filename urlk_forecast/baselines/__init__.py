"""Baselines of the paper's Table 12, each a :class:`~urlk_forecast.method.Method` (``X(variable=...).fit(train)`` /
``predict_windows(ws)`` / ``evaluate(ws)``).

Classes are imported lazily so that ``import urlk_forecast.baselines`` does not pull statsmodels or scikit-learn.
``get_baseline("holt_winters", variable="wind_speed", n_jobs=2)`` builds a method by its registry name (see
:data:`BASELINES`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..utils import normalize_name

if TYPE_CHECKING:
    from .base import Baseline

_LAZY: dict[str, str] = {
    "Baseline": "urlk_forecast.baselines.base",
    "Persistence": "urlk_forecast.baselines.naive",
    "SeasonalNaive": "urlk_forecast.baselines.naive",
    "Climatology": "urlk_forecast.baselines.naive",
    "HoltWinters": "urlk_forecast.baselines.holt_winters",
    "ProphetLike": "urlk_forecast.baselines.prophet_like",
    "ProphetReal": "urlk_forecast.baselines.prophet_like",
    "GBDT": "urlk_forecast.baselines.gbdt",
    "GFSInterpolation": "urlk_forecast.baselines.gfs",
    "NeuralForecastPeer": "urlk_forecast.baselines.peers",
    "AutoETSMethod": "urlk_forecast.baselines.statsforecast_models",
    "MSTLMethod": "urlk_forecast.baselines.statsforecast_models",
    "run_benchmark": "urlk_forecast.baselines.table",
    "compare": "urlk_forecast.baselines.table",
}

#: Registry name -> (class name, default keyword arguments). ``prophet`` is the real Prophet package (optional
#: ``prophet`` extra); ``prophet_like_adjusted`` is the own Prophet-like model with the window level offset.
BASELINES: dict[str, tuple[str, dict[str, Any]]] = {
    "persistence": ("Persistence", {}),
    "seasonal_naive": ("SeasonalNaive", {}),
    "climatology": ("Climatology", {}),
    "holt_winters": ("HoltWinters", {}),
    "prophet_like": ("ProphetLike", {}),
    "prophet_like_adjusted": ("ProphetLike", {"adjust_level": True}),
    "prophet": ("ProphetReal", {}),
    "gbdt": ("GBDT", {}),
    "gfs": ("GFSInterpolation", {}),
    # optional real libraries (extra ``peers``): neuralforecast and statsforecast
    **{k: ("NeuralForecastPeer", {"model": k}) for k in ("patchtst", "nhits", "dlinear")},
    "autoets": ("AutoETSMethod", {}), "mstl": ("MSTLMethod", {}),
}

__all__ = [*_LAZY, "BASELINES", "get_baseline", "list_baselines"]


def list_baselines() -> list[str]:
    """Registry names accepted by :func:`get_baseline` (and by the benchmark command)."""
    return list(BASELINES)


def get_baseline(name: str, *, variable: str = "temperature", **kwargs: Any) -> Baseline:
    """A new, unfitted baseline forecasting ``variable``, by registry name (``-``, ``_`` and spaces interchangeable,
    case-insensitive); ``kwargs`` go to its constructor."""
    key = normalize_name(name)
    if key not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    cls_name, defaults = BASELINES[key]
    cls = __getattr__(cls_name)
    return cls(**{**defaults, **kwargs}, variable=variable)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'urlk_forecast.baselines' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
