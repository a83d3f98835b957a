"""Neural models: the UniRepLKNet backbone (and, in sibling modules, the forecasting network and adapters)."""

from urlk_forecast.models.unireplknet import (
    VARIANTS,
    CheckpointError,
    DilatedReparamBlock,
    LoadReport,
    UniRepLKNet,
    UniRepLKNetBlock,
    create_model,
    list_models,
    load_pretrained,
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
