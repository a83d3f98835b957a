"""Global Response Normalization (NHWC) as one autograd function with a closed-form backward (issue 15 item 5).

Autograd's backward of the composed GRN (``square``, ``sum``, ``sqrt``, ``mean``, ``addcmul`` ...) makes about
ten passes over the (N, H, W, 4C) activation -- the pow backward alone three, on broadcast (stride-0) gradients --
and on the forecaster's 16x24 and 8x12 maps these passes were the largest single cost of a bf16 training step at
3850 stations. Here the backward makes two: one reduction ``sum_hw(g * x)`` (and ``sum(g)`` for the bias) and one
``dx = g * scale + x * t`` with per-(sample, channel) ``scale`` and ``t``. For float32 and float64 the forward
computes exactly the ops of :class:`~urlk_forecast.models.unireplknet.GRNwithNHWC`, so outputs are equal; the
gradients are equal within float tolerance (tests compare both against the composed form). For bf16/fp16 ``x``
(autocast: float32 parameters) everything elementwise stays in ``x``'s dtype: the squares are rounded before their
float32 sum, ``scale`` and ``beta`` are rounded, and the output is ``x``'s dtype where the composed form promotes
to float32 (which the next Linear only casts back). Mixed-dtype elementwise ops run torch's slow casting loops:
GRN + Linear forward + backward at 32 x 16 x 24 x 160 bf16 4.6 -> 3.5 ms, at 350 images 61 -> 49 ms (2-core CPU);
the error against float64 stays at bf16 rounding (relative 3e-3 for dx against 2e-3).

With ``Gx = sqrt(max(sum_hw x^2, tiny))``, ``m = mean_c Gx + eps``, ``Nx = Gx / m``, ``s = gamma * Nx + 1``,
``y = x * s + beta``, and ``u = sum_hw(g * x)``:
``dbeta = sum g``, ``dgamma = sum_n u * Nx``, ``dNx = u * gamma``,
``dGx = dNx / m - sum_c(dNx * Gx) / (C m^2)`` and ``dx = g * s + x * dGx / Gx`` (zero where the clamp is active).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["grn_nhwc"]

EPS = 1e-6


def _norms(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Gx, m, Nx in x's dtype, clamp mask)`` exactly as the composed GRN computes them (float32 for halves)."""
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    ss = x.square().sum(dim=(1, 2), keepdim=True, dtype=acc)  # halves: squares rounded, summed in float32
    tiny = torch.finfo(acc).tiny
    gx = ss.clamp_min(tiny).sqrt()
    m = gx.mean(dim=-1, keepdim=True) + EPS
    return gx, m, (gx / m).to(x.dtype), ss >= tiny


class _GRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None) -> torch.Tensor:
        gx, m, nx, live = _norms(x)
        scale = torch.addcmul(torch.ones((), dtype=x.dtype, device=x.device), gamma, nx)
        ctx.save_for_backward(x, gamma, gx, m, nx, live, scale)
        ctx.has_beta = beta is not None
        # x's dtype out: under autocast the float32 output (beta and gamma are float32) was only cast back to
        # bf16 by the next Linear, one more pass each way; computed in float32 and rounded once, as that cast did
        sh = scale.to(x.dtype)
        return x * sh if beta is None else torch.addcmul(beta.to(x.dtype), x, sh)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, gamma, gx, m, nx, live, scale = ctx.saved_tensors
        acc = gx.dtype  # float32 for half inputs, else x's dtype
        u = (g * x).sum(dim=(1, 2), keepdim=True, dtype=acc)  # d loss / d scale, (N, 1, 1, C)
        dgamma = (u * nx).sum(dim=0, keepdim=True).to(gamma.dtype) if ctx.needs_input_grad[1] else None
        dbeta = g.sum(dim=(0, 1, 2), keepdim=True, dtype=acc) if ctx.has_beta and ctx.needs_input_grad[2] else None
        dx = None
        if ctx.needs_input_grad[0]:
            dnx = (u * gamma).to(nx.dtype).to(acc)  # through the cast of Nx to x's dtype, as autograd does
            dgx = dnx / m - (dnx * gx).sum(dim=-1, keepdim=True) / (gx.shape[-1] * m * m)
            t = torch.where(live, dgx / gx, torch.zeros((), dtype=acc, device=gx.device))
            dx = torch.addcmul(g * scale.to(g.dtype), x, t.to(g.dtype)).to(x.dtype)
        if dbeta is not None:
            dbeta = dbeta.to(gamma.dtype)  # beta and gamma are parameters of one module, one dtype
        return dx, dgamma, dbeta


def grn_nhwc(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None) -> torch.Tensor:
    """``GRNwithNHWC``'s output for NHWC ``x``, ``gamma``/``beta`` of shape (1, 1, 1, C), with the two-pass
    closed-form backward (see the module docstring)."""
    return _GRN.apply(x, gamma, beta)
