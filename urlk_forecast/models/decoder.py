"""Corrformer-style decoder with progressive series decomposition (the decoder of paper §3.3).

Each :class:`DecoderLayer` does

1. self-correlation on the (seasonal) decoder input, residual, series decomposition → trend₁;
2. cross-correlation/attention from the decoder queries to the encoder tokens, residual, decomposition → trend₂;
3. a position-wise FFN (Conv1d k=1, no bias), residual, decomposition → trend₃;
4. the residual trend ``trend₁+trend₂+trend₃`` projected to the node's D' channels by a circular Conv1d (k=3).

:class:`Decoder` accumulates the projected trends onto the trend initialisation and projects the final
seasonal part (after :class:`SeasonalLayerNorm`) with a Linear to D' channels; the forecast is seasonal +
trend. The self/cross blocks are passed in as modules with the call signature ``block(x, cross) -> x-shaped``
so the decoder serves both the convolutional encoders (cross *attention* to spatial image tokens) and the
Corrformer encoder (cross *multi-correlation* to encoded time series).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import fastpath
from .layers import Dropout, pointwise
from .linear_function import run_linear

__all__ = [
    "MovingAverage",
    "SeriesDecomp",
    "SeasonalLayerNorm",
    "MultiHeadProjection",
    "CrossAttention",
    "DecoderLayer",
    "Decoder",
    "get_activation",
]


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``"relu"`` or ``"gelu"`` → the function (a clear error otherwise)."""
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    raise ValueError(f"activation must be 'relu' or 'gelu', got {name!r}")


class MovingAverage(nn.Module):
    """Moving average over time with replicate ("edge") padding, so the output keeps the input length.

    Odd kernels are centred (``(k-1)/2`` steps each side, as Autoformer/Corrformer); even kernels put the
    extra step at the end.
    """

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"moving_avg kernel size must be >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.front = (kernel_size - 1) // 2
        self.end = kernel_size - 1 - self.front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, L, C) → (B, L, C)."""
        if self.kernel_size == 1:
            return x
        if fastpath.enabled():
            return self._by_band(x)
        xt = x.transpose(1, 2)
        xt = F.pad(xt, (self.front, self.end), mode="replicate")
        return F.avg_pool1d(xt, self.kernel_size, stride=1).transpose(1, 2)

    def _by_band(self, x: torch.Tensor) -> torch.Tensor:
        """The same average as one product with the (L, L) band matrix of the window weights (the edge padding
        folded into the first and last columns), in the (B, L, C) layout: forward + backward at 32 x 72 x 128 (k =
        25) 0.5 ms against 3.3 for float64 running sums (whose backward is a reversed cumsum) and more for
        ``avg_pool1d`` on a transposed copy; float32 at least, autocast off (the weights are not bf16-exact)."""
        acc = torch.promote_types(x.dtype, torch.float32)
        band = _band(x.shape[1], self.kernel_size, self.front, x.device, acc)
        with torch.autocast(x.device.type, enabled=False):
            return torch.matmul(band, x.to(acc)).to(x.dtype)


@lru_cache(maxsize=32)
def _band(length: int, k: int, front: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(length, length)``: row ``i`` holds weight ``1/k`` for every step of the window ``i - front .. i - front +
    k - 1``, steps outside the series counted on its first or last step (replicate padding)."""
    a = np.zeros((length, length))
    for i in range(length):
        for t in range(i - front, i - front + k):
            a[i, min(max(t, 0), length - 1)] += 1.0 / k
    return torch.tensor(a, dtype=dtype, device=device)


class SeriesDecomp(nn.Module):
    """``x → (x - moving_average(x), moving_average(x))`` = (seasonal, trend)."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.moving_avg = MovingAverage(kernel_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        trend = self.moving_avg(x)
        return x - trend, trend


class SeasonalLayerNorm(nn.Module):
    """LayerNorm over channels, then the mean over time removed (the seasonal part has zero mean)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_hat = self.layernorm(x)
        return x_hat - x_hat.mean(dim=1, keepdim=True)


class MultiHeadProjection(nn.Module):
    """The query, key, value and output Linear layers (``d_model → d_model``) around a multi-head mixing step
    (attention here, auto-correlation in :mod:`~urlk_forecast.models.corrformer`)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.query_projection = nn.Linear(d_model, d_model)
        self.key_projection = nn.Linear(d_model, d_model)
        self.value_projection = nn.Linear(d_model, d_model)
        self.out_projection = nn.Linear(d_model, d_model)

    def project(self, queries: torch.Tensor, keys: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``queries`` (B, L, C) and ``keys`` (B, S, C) → q (B, L, H, C/H), k and v (B, S, H, C/H)."""
        B, L, _ = queries.shape
        S, H = keys.shape[1], self.n_heads
        q = run_linear(self.query_projection, queries).view(B, L, H, -1)
        k = run_linear(self.key_projection, keys).view(B, S, H, -1)
        v = run_linear(self.value_projection, keys).view(B, S, H, -1)
        return q, k, v


class CrossAttention(MultiHeadProjection):
    """Multi-head scaled dot-product attention from decoder queries ``(B, L, C)`` to tokens ``(B, T, C)``.

    Used when the encoder tokens are spatial patches of the Eq. 2 image (UniRepLKNet, ConvNeXt, ResNet):
    a time-lag correlation is meaningless across image patches, attention is not.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__(d_model, n_heads)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.transpose(1, 2) for t in self.project(x, cross))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return run_linear(self.out_projection, out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class DecoderLayer(nn.Module):
    """One decoder layer (see the module docstring); returns ``(seasonal, residual_trend)``."""

    def __init__(self, self_block: nn.Module, cross_block: nn.Module, d_model: int, c_out: int,
                 d_ff: int | None = None, moving_avg: int = 25, dropout: float = 0.05,
                 activation: str = "gelu") -> None:
        super().__init__()
        d_ff = d_ff or 4 * d_model
        self.self_block = self_block
        self.cross_block = cross_block
        self.conv1 = nn.Conv1d(d_model, d_ff, 1, bias=False)
        self.conv2 = nn.Conv1d(d_ff, d_model, 1, bias=False)
        self.decomp1 = SeriesDecomp(moving_avg)
        self.decomp2 = SeriesDecomp(moving_avg)
        self.decomp3 = SeriesDecomp(moving_avg)
        self.dropout = Dropout(dropout)
        self.trend_projection = nn.Conv1d(d_model, c_out, 3, padding=1, padding_mode="circular", bias=False)
        self.activation = get_activation(activation)

    def decompose(self, x: torch.Tensor, cross: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(seasonal, residual_trend, trend)``: :meth:`forward`'s pair plus the layer's removed trend
        ``trend1 + trend2 + trend3`` (B, L, d_model), so ``seasonal + trend`` is the un-decomposed residual stream."""
        x, trend1 = self.decomp1(x + self.self_block(x, x))
        x, trend2 = self.decomp2(x + self.cross_block(x, cross))
        y = self.dropout(self.activation(pointwise(self.conv1, x)))
        y = self.dropout(pointwise(self.conv2, y))
        x, trend3 = self.decomp3(x + y)
        trend = trend1 + trend2 + trend3
        return x, self.trend_projection(trend.transpose(1, 2)).transpose(1, 2), trend

    def forward(self, x: torch.Tensor, cross: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual_trend, _ = self.decompose(x, cross)
        return x, residual_trend


class Decoder(nn.Module):
    """Stack of :class:`DecoderLayer` + seasonal LayerNorm + Linear projection to ``c_out`` channels.

    ``spread_channels > 0`` adds a second head (LayerNorm + Linear to that many channels) on the *un-decomposed*
    residual stream (the final seasonal part plus every layer's removed trend), read by :meth:`forward_spreads`. It
    serves the quantile spreads: the seasonal part cannot carry them, because the moving average's replicate padding
    keeps only 12/25 of the last step's own value in its seasonal part (24/25 elsewhere) and removes any smooth
    growth over the leads; the median gets the rest back through the trend, a spread had nothing to get it back
    from (its band collapsed at the last lead).
    """

    def __init__(self, layers: Sequence[DecoderLayer], d_model: int, c_out: int, with_cp: bool = False,
                 spread_channels: int = 0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = SeasonalLayerNorm(d_model)
        self.projection = nn.Linear(d_model, c_out)
        self.with_cp = with_cp
        self.spread_channels = int(spread_channels)
        if self.spread_channels:
            self.spread_norm = nn.LayerNorm(d_model)
            self.spread_projection = nn.Linear(d_model, self.spread_channels)

    def _run(self, x: torch.Tensor, cross: torch.Tensor, trend: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layers: ``(final seasonal (B, L, d_model), trend (B, L, c_out), removed trends (B, L, d_model))``
        (the last summed over the layers; only with a spread head, zeros otherwise)."""
        removed = torch.zeros_like(x)
        for layer in self.layers:
            if self.with_cp and self.training and torch.is_grad_enabled():
                x, residual_trend, layer_trend = checkpoint(layer.decompose, x, cross, use_reentrant=False)
            else:
                x, residual_trend, layer_trend = layer.decompose(x, cross)
            trend = trend + residual_trend
            if self.spread_channels:
                removed = removed + layer_trend
        return x, trend, removed

    def forward(self, x: torch.Tensor, cross: torch.Tensor, trend: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, L, d_model) embedded seasonal init, ``cross`` (B, T, d_model), ``trend`` (B, L, c_out).

        Returns ``(seasonal, trend)``, both (B, L, c_out).
        """
        x, trend, _ = self._run(x, cross, trend)
        return run_linear(self.projection, self.norm(x)), trend

    def forward_spreads(self, x: torch.Tensor, cross: torch.Tensor, trend: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward`'s ``(seasonal, trend)`` plus the spread head's raw output (B, L, spread_channels)."""
        if not self.spread_channels:
            raise ValueError("this decoder has no spread head (built with spread_channels=0)")
        x, trend, removed = self._run(x, cross, trend)
        spreads = run_linear(self.spread_projection, self.spread_norm(x + removed))
        return run_linear(self.projection, self.norm(x)), trend, spreads
