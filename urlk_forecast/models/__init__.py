"""Neural models: the UniRepLKNet backbone (and, in sibling modules, the forecasting network and adapters)."""

from urlk_forecast.models.checkpoint import CheckpointError, LoadReport, load_pretrained
from urlk_forecast.models.unireplknet import (
    VARIANTS,
    DilatedReparamBlock,
    UniRepLKNet,
    UniRepLKNetBlock,
    create_model,
    list_models,
    reparameterize_model,
)

__all__ = [
    "VARIANTS",
    "CheckpointError",
    "DilatedReparamBlock",
    "LoadReport",
    "UniRepLKNet",
    "UniRepLKNetBlock",
    "create_model",
    "list_models",
    "load_pretrained",
    "reparameterize_model",
]
