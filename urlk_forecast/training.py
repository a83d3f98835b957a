"""The training entry point ``train()`` and the public names of the training loop.

The loop itself is :class:`urlk_forecast.trainer.Trainer` (schedule, masked loss, AMP, checkpoint/resume, DDP; see
that module and docs/training.md). This module keeps the historical import path: ``train(model, train_ws, val_ws,
cfg)`` is ``Trainer(cfg).fit(model, train_ws, val_ws)``, and the helpers (``station_scale``, ``evaluate_loss``,
``load_checkpoint``, ...) are re-exported from :mod:`urlk_forecast.trainer`.
"""

from __future__ import annotations

from torch import nn

from .config import TrainConfig
from .data.windows import WindowSource
from .trainer import (
    CHECKPOINT_NAME,
    Callback,
    Trainer,
    TrainResult,
    _train_step,  # noqa: F401  (benchmarks/train_throughput.py times the loop's step through this name)
    epoch_permutation,
    evaluate_loss,
    load_checkpoint,
    masked_sq_error,
    resolve_amp,
    resolve_device,
    seed_everything,
    set_grad_checkpointing,
    station_scale,
)

__all__ = [
    "Trainer",
    "TrainResult",
    "train",
    "seed_everything",
    "epoch_permutation",
    "station_scale",
    "masked_sq_error",
    "evaluate_loss",
    "resolve_device",
    "resolve_amp",
    "set_grad_checkpointing",
    "load_checkpoint",
    "CHECKPOINT_NAME",
]


def train(
    model: nn.Module,
    train_ws: WindowSource,
    val_ws: WindowSource | None = None,
    cfg: TrainConfig | None = None,
    *,
    callback: Callback | None = None,
) -> TrainResult:
    """Train ``model`` on the windows ``train_ws`` (early stopping on ``val_ws``): ``Trainer(cfg).fit(...)``.

    ``cfg`` defaults to the paper's schedule; its ``out_dir`` receives ``checkpoint.pt``, ``best.pt`` and
    ``history.json``, and ``resume=True`` continues from that checkpoint. ``callback(entry)`` is called on rank 0
    after each epoch with the history entry. See :meth:`urlk_forecast.trainer.Trainer.fit`.
    """
    return Trainer(cfg, callback=callback).fit(model, train_ws, val_ws)
