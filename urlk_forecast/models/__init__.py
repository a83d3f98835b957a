"""Neural models: the UniRepLKNet backbone (and, in sibling modules, the forecasting network and adapters).

* :mod:`.registry` -- the variant table and model names (no torch: cheap to import);
* :mod:`.layers` -- shared layers and :func:`reparameterize_model`;
* :mod:`.unireplknet` -- the backbone and :func:`create_model`; :mod:`.checkpoint` -- :func:`load_pretrained`.

Names are imported lazily, so importing the registry alone does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "VARIANTS": "urlk_forecast.models.registry",
    "list_models": "urlk_forecast.models.registry",
    "parse_model_name": "urlk_forecast.models.registry",
    "CheckpointError": "urlk_forecast.models.checkpoint",
    "LoadReport": "urlk_forecast.models.checkpoint",
    "load_pretrained": "urlk_forecast.models.checkpoint",
    "reparameterize_model": "urlk_forecast.models.layers",
    "DilatedReparamBlock": "urlk_forecast.models.unireplknet",
    "UniRepLKNet": "urlk_forecast.models.unireplknet",
    "UniRepLKNetBlock": "urlk_forecast.models.unireplknet",
    "create_model": "urlk_forecast.models.unireplknet",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'urlk_forecast.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
