"""The two CPU implementations of each direction of the depthwise conv: the own kernels and torch (oneDNN).

One function, :func:`compute`, runs ``forward``, ``grad_input`` or ``grad_weight`` on ``"own"``
(:mod:`urlk_forecast.ops.cpu_kernels`) or ``"torch"`` (``F.conv2d`` and ``aten.convolution_backward``, which on CPU
run oneDNN's depthwise primitives in float32), so the dispatcher and the timings that choose between them
(:mod:`urlk_forecast.ops.autotune`) run exactly the same code. Asymmetric padding (an even kernel with "same") is
applied to the input with ``F.pad`` on the torch side, and the input gradient is cropped back.

:func:`compute` runs with autocast off: the caller has already applied the autocast policy, and the two paths must
compute in the same dtype to be interchangeable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from urlk_forecast.ops import cpu_kernels

__all__ = ["DIRECTIONS", "IMPLS", "compute", "torch_forward", "torch_grad_input", "torch_grad_weight"]

DIRECTIONS = ("forward", "grad_input", "grad_weight")
IMPLS = ("own", "torch")
Pads = tuple[int, int, int, int]  # top, bottom, left, right


def _symmetric(pads: Pads) -> bool:
    return pads[0] == pads[1] and pads[2] == pads[3]


def torch_forward(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pads: Pads,
                  dil: tuple[int, int]) -> torch.Tensor:
    """``F.conv2d(..., groups=C)`` with (top, bottom, left, right) padding, on any device (under an active autocast
    it casts as ``F.conv2d`` does; :func:`compute` turns autocast off)."""
    t, b, l, r = pads
    if _symmetric(pads):
        return F.conv2d(x, w, bias, 1, (t, l), dil, x.shape[1])
    return F.conv2d(F.pad(x, (l, r, t, b)), w, bias, 1, 0, dil, x.shape[1])


def _conv_backward(x: torch.Tensor, gy: torch.Tensor, w: torch.Tensor, pads: Pads, dil: tuple[int, int],
                   mask: list[bool]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """torch's own convolution backward (what autograd of ``F.conv2d`` runs), for one or both gradients."""
    t, b, l, r = pads
    padding = [t, l]
    xin = x
    if not _symmetric(pads):
        xin, padding = F.pad(x, (l, r, t, b)), [0, 0]
    gx, gw, _ = torch.ops.aten.convolution_backward.default(  # the overload itself: no packet resolution per call
        gy.contiguous(), xin, w, None, [1, 1], padding, list(dil), False, [0, 0], x.shape[1], mask + [False])
    if gx is not None and xin is not x:
        gx = gx[..., t:t + x.shape[-2], l:l + x.shape[-1]].contiguous()
    return gx, gw


def torch_grad_input(x: torch.Tensor, gy: torch.Tensor, w: torch.Tensor, pads: Pads,
                     dil: tuple[int, int]) -> torch.Tensor:
    """Gradient w.r.t. the input on torch's path (``x`` gives the shape; its values are not needed). Like
    :func:`torch_grad_weight`, called by :func:`compute` (autocast off) or with inputs of one dtype."""
    gx, _ = _conv_backward(x, gy, w, pads, dil, [True, False])
    assert gx is not None
    return gx


def torch_grad_weight(x: torch.Tensor, gy: torch.Tensor, w: torch.Tensor, pads: Pads,
                      dil: tuple[int, int]) -> torch.Tensor:
    """Gradient w.r.t. the weight on torch's path."""
    _, gw = _conv_backward(x, gy, w, pads, dil, [False, True])
    assert gw is not None
    return gw


def compute(direction: str, impl: str, x: torch.Tensor, w: torch.Tensor, gy: torch.Tensor | None,
            pads: Pads, dil: tuple[int, int], bias: torch.Tensor | None = None) -> torch.Tensor:
    """One direction (``forward`` -> y, ``grad_input`` -> gx, ``grad_weight`` -> gw) on one implementation.

    ``x`` (B, C, H, W) and ``w`` (C, 1, KH, KW) always; ``gy`` (the output gradient) for the gradients; ``bias``
    only for the forward. Tensors are used detached.
    """
    if not torch.is_autocast_enabled("cpu"):  # entering the context costs ~5 us: only when needed
        return _compute(direction, impl, x.detach(), w.detach(), gy, pads, dil, bias)
    with torch.autocast("cpu", enabled=False):
        return _compute(direction, impl, x.detach(), w.detach(), gy, pads, dil, bias)


def _compute(direction: str, impl: str, x: torch.Tensor, w: torch.Tensor, gy: torch.Tensor | None,
             pads: Pads, dil: tuple[int, int], bias: torch.Tensor | None) -> torch.Tensor:
    if direction == "forward":
        if impl == "own":
            return cpu_kernels.forward(x, w, bias, pads, dil)
        return torch_forward(x, w, bias.detach() if bias is not None else None, pads, dil)
    if gy is None:
        raise ValueError(f"cpu_paths.compute: {direction} needs the output gradient gy")
    gy = gy.detach()
    if direction == "grad_input":
        if impl == "own":
            gx, _ = cpu_kernels.backward(x, gy, w, pads, dil, need_input=True, need_weight=False)
            assert gx is not None
            return gx
        return torch_grad_input(x, gy, w, pads, dil)
    if direction == "grad_weight":
        if impl == "own":
            _, gw = cpu_kernels.backward(x, gy, w, pads, dil, need_input=False, need_weight=True)
            assert gw is not None
            return gw
        return torch_grad_weight(x, gy, w, pads, dil)
    raise ValueError(f"cpu_paths.compute: direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
