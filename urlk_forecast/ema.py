"""Exponential moving average of a model's weights (Polyak averaging), for validation and the returned weights.

On small real datasets the validation loss of the raw weights jumps from one check to the next (the best
checkpoint of a 2-station run came at epoch 2 of 5), so early stopping ranks noise. The average of the recent
weights is a smoother and usually better model at no extra forward cost: the trainer updates it after every
optimiser step, validates it instead of the raw weights, and returns it as the best weights.

The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the first steps (far from any
useful average) are forgotten quickly. Floating-point parameters and buffers (BatchNorm running statistics) are
averaged in float32; integer buffers (``num_batches_tracked``) are copied.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class WeightEMA:
    """An exponential moving average of ``model``'s state (parameters and buffers), kept on the model's device."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
            for k, v in model.state_dict().items()
        }

    def current_decay(self) -> float:
        """The decay the next update uses (warmed up over the first updates)."""
        n = self.updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current state (call after every optimiser step)."""
        d = self.current_decay()
        state = model.state_dict()
        floats_avg, floats_new = [], []
        for k, avg in self.shadow.items():
            new = state[k].detach()
            if avg.is_floating_point():
                floats_avg.append(avg)
                floats_new.append(new.float() if new.dtype != avg.dtype else new)
            else:
                avg.copy_(new)
        if floats_avg:
            torch._foreach_lerp_(floats_avg, floats_new, 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged state into ``model`` (in place, the model's dtypes kept)."""
        state = model.state_dict()
        for k, avg in self.shadow.items():
            state[k].copy_(avg)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` holds the averaged state inside the block and its own state again afterwards."""
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                state = model.state_dict()
                for k, v in saved.items():
                    state[k].copy_(v)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint stores (the average on the CPU, the decay and the update count)."""
        return {"decay": self.decay, "updates": self.updates,
                "shadow": {k: v.detach().cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (keys must match the model this average was built for)."""
        missing = set(self.shadow) ^ set(sd["shadow"])
        if missing:
            raise ValueError(f"EMA state does not match the model (keys differ: {sorted(missing)[:5]})")
        self.decay, self.updates = float(sd["decay"]), int(sd["updates"])
        for k, v in sd["shadow"].items():
            self.shadow[k].copy_(v)
