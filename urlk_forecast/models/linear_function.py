"""Float32 ``Linear`` layers on oneDNN's matrix product where the BLAS behind ``F.linear`` is slower (a fast path).

On CPU, torch runs a float32 ``F.linear`` and its gradients on the BLAS it was built with (MKL in the wheels), and
MKL takes an AVX2 code path on AMD CPUs: on the 2-core dev machine (AMD Zen 5, AVX-512) a 12288 x 160 -> 640
product ran 18.1 ms there and 6.1 ms on oneDNN (``torch.ops.mkldnn._linear_pointwise``, same values), the input
gradient 14.5 vs 6.0 ms, the weight gradient 13.9 vs 10.1 ms (2 threads, 2026-12-07); on the forecaster's FFN
shapes (768-12288 tokens, 40-160 channels, 4x wider hidden) the weight gradient 0.9-1.1 ms vs 0.43-0.94.
:func:`linear` runs all three on oneDNN when a one-off measurement in the process (:func:`onednn_is_faster`)
says it is faster, else it is ``F.linear``. Under autocast, or for other dtypes and devices, it is always
``F.linear`` (bfloat16 products run on oneDNN already).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from urlk_forecast.ops import autotune

from . import fastpath

__all__ = ["linear", "onednn_is_faster", "run_linear", "weight_grad_on_onednn"]

_choice: list[bool] = []
_gw_choice: list[bool] = []


def _product(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x @ w.T + b`` for 2-d ``x`` (K columns) and ``w`` (N x K) on oneDNN; strided inputs are taken as they are."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


def _median_ms(fn: Any, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[reps // 2] * 1e3


def onednn_is_faster() -> bool:
    """Whether oneDNN's float32 product beats ``F.linear`` on this machine: both timed on a 4096 x 128 -> 512
    product (~5 ms of measurement) once per machine and thread count (kept with the depthwise dispatch table, so
    every process on the machine sums in the same order: a resumed run repeats the first bit for bit), and oneDNN
    taken when at least 10 % faster."""
    if not _choice:
        ok = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        if ok:
            g = torch.Generator().manual_seed(0)
            x, w = torch.randn(4096, 128, generator=g), torch.randn(512, 128, generator=g)

            def ratio() -> float:
                try:
                    return _median_ms(lambda: _product(x, w, None)) / _median_ms(lambda: F.linear(x, w))
                except RuntimeError:  # an op this build of torch lacks at run time
                    return math.inf

            ok = autotune.machine_constant("linear_onednn_over_blas", ratio) < 0.9
        _choice.append(bool(ok))
    return _choice[0]


def _gw_onednn(x2: torch.Tensor, gy2: torch.Tensor) -> torch.Tensor:
    # gy^T x with both operands as strided views, the one with fewer columns first: the other order ran 2.5-2.8x
    # slower (12288 x 40 and 12288 x 160: 0.92 vs 2.57 ms, MKL 1.04; Zen 5)
    if x2.shape[1] <= gy2.shape[1]:
        return _product(x2.t(), gy2.t(), None).t().contiguous()
    return _product(gy2.t(), x2.t(), None)


def weight_grad_on_onednn() -> bool:
    """Whether the weight gradient ``gy^T x`` (a long reduction over the rows) is faster on oneDNN than on
    ``torch.mm``: timed on 4096 rows of 64 and 256 columns (~10 ms) once per machine and thread count, like
    :func:`onednn_is_faster`. The answer differs by CPU: on the Zen 5 dev machine oneDNN took 0.92 ms against 1.04
    for 12288 x 40 by 12288 x 160, on a Zen 4 one 2.10 against 1.23 (and 1536 x 128 by 1536 x 128: 0.60 against
    0.29), while its forward products won on both."""
    if not _gw_choice:
        g = torch.Generator().manual_seed(1)
        x2, gy2 = torch.randn(4096, 64, generator=g), torch.randn(4096, 256, generator=g)

        def ratio() -> float:
            try:
                return _median_ms(lambda: _gw_onednn(x2, gy2)) / _median_ms(lambda: torch.mm(gy2.t(), x2))
            except RuntimeError:
                return math.inf

        _gw_choice.append(autotune.machine_constant("linear_weight_grad_onednn_over_blas", ratio) < 1.0)
    return _gw_choice[0]


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        # dense operands: on strided ones (a slice of a conv's taps) oneDNN took its reference path, up to ~1000x slower
        x2, w = x.reshape(-1, x.shape[-1]).contiguous(), w.contiguous()
        ctx.save_for_backward(x2, w)
        ctx.has_bias = b is not None
        return _product(x2, w, b).view(*x.shape[:-1], w.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, w = ctx.saved_tensors
        gy2 = gy.reshape(-1, gy.shape[-1]).contiguous()  # an expanded gradient (stride 0) took oneDNN ~1000x longer
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _product(gy2, w.t().contiguous(), None).view(*gy.shape[:-1], w.shape[1])
        if ctx.needs_input_grad[1]:
            gw = _gw_onednn(x2, gy2) if weight_grad_on_onednn() else torch.mm(gy2.t(), x2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy2.sum(0)
        return gx, gw, gb


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; on the fast path for float32 CPU tensors outside autocast and export, on
    oneDNN when :func:`onednn_is_faster` (same values up to the order of the sums)."""
    if (x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32 or x.dim() < 2
            or x.numel() == 0
            or (bias is not None and bias.dtype != torch.float32) or torch.is_autocast_enabled("cpu")
            or not fastpath.enabled() or fastpath.exporting() or not onednn_is_faster()):
        return F.linear(x, weight, bias)
    return _OneDNNLinear.apply(x, weight, bias)


def run_linear(m: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``m(x)``; on the fast path through :func:`linear` (the module itself is not called, so its hooks do not
    fire there: the MAC counter and other hook users run with the fast paths off)."""
    if fastpath.enabled():
        return linear(x, m.weight, m.bias)
    return m(x)
