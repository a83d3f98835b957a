"""The live taps of a weight-normalised kernel, without forming the whole normalised kernel (issue 15 item 5).

The decoder's causal TCN (:class:`urlk_forecast.models.corrformer.CausalFusion`) runs weight-normalised
``Conv1d(768, 768, 3)`` layers over a sequence of nodes; on a short sequence only the last ``live`` taps ever read
data (at 4 stations one tap: a matrix product). ``conv.weight`` of the parametrisation normalises the whole
(768, 768, 3) kernel (``g * v / ||v||``, the norm over everything but the output channel) every step, the slice of
the tap is strided and was copied before the product, and the backward zero-filled a kernel-sized gradient for the
slice, then ran the normalisation's backward over all of it: ~10 ms of a 330-ms 4-station step for two layers of a
7-MB kernel each.

:func:`tap_weight_norm` returns ``(g / ||v||) * v[..., start:]`` as a dense tensor and differentiates it in
closed form: with ``s = sum(gw * v_live)`` per output channel, ``dg = s / ||v||`` and
``dv = -(g s / ||v||^3) v``, plus ``(g / ||v||) gw`` on the live taps -- one pass over ``v``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.utils import parametrize

__all__ = ["tap_weight_norm", "weight_norm_parts"]


class _TapWeightNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, g: torch.Tensor, start: int) -> torch.Tensor:
        dims = tuple(range(1, v.dim()))
        norm = torch.linalg.vector_norm(v, dim=dims, keepdim=True)
        ctx.save_for_backward(v, g, norm)
        ctx.start, ctx.dims = start, dims
        return (v[..., start:] * (g / norm)).contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gw: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        v, g, norm = ctx.saved_tensors
        start = ctx.start
        s = (gw * v[..., start:]).sum(dim=ctx.dims, keepdim=True)
        gv = gg = None
        if ctx.needs_input_grad[0]:
            gv = v * (-g * s / norm.pow(3))
            gv[..., start:].addcmul_(gw, g / norm)  # in place on the view (``+=`` would copy it back onto itself)
        if ctx.needs_input_grad[1]:
            gg = s / norm
        return gv, gg, None


def tap_weight_norm(v: torch.Tensor, g: torch.Tensor, start: int) -> torch.Tensor:
    """``(g * v / ||v||)[..., start:]`` (the norm per output channel, over all of ``v`` (out, in, k)), contiguous,
    equal to slicing ``torch.nn.utils.parametrizations.weight_norm``'s weight (see the module docstring)."""
    if not 0 <= start < v.shape[-1] or g.shape != (v.shape[0],) + (1,) * (v.dim() - 1):
        raise ValueError(f"tap_weight_norm: v {tuple(v.shape)}, g {tuple(g.shape)}, start {start} do not fit")
    return _TapWeightNorm.apply(v, g, start)


def weight_norm_parts(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(v, g)`` of a module whose ``weight`` is ``parametrizations.weight_norm(module)`` over dim 0 and nothing
    else, else None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    plist = module.parametrizations.weight  # type: ignore[union-attr]
    if len(plist) != 1 or type(plist[0]).__name__ != "_WeightNorm" or getattr(plist[0], "dim", None) != 0:
        return None
    return plist.original1, plist.original0
