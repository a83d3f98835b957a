"""Corrformer's multi-correlation (Wu et al., Nature Machine Intelligence 2023), batched and CPU-capable.

The UniRepLKNet time-series path (paper §3.3) reuses Corrformer's embedding and decoder; the decoder's
self-correlation and the ``corrformer`` comparison encoder are built from the pieces here:

* :class:`AutoCorrelation` — temporal auto-correlation inside each node (Autoformer-style): the period
  lags with the largest FFT cross-correlation between queries and keys are found, the values rolled by
  those lags and averaged with softmax weights.
* :class:`CrossCorrelation` — spatial correlation between nodes: every node's keys are correlated with the
  pivot (the mean query over nodes), each node's values are aligned to the pivot by its best lag, gated by
  ``sigmoid(correlation)``, fused along the nodes sorted by lag with a causal TCN, and aligned back.
* :class:`MultiCorrelation` — the auto-correlation on the leaf nodes plus cross-correlations on a
  multiscale node tree (``node_list``, e.g. ``(7, 50)`` for the 350 nodes of the paper), averaged.
* :class:`CorrformerEncoder` — ``e_layers`` of multi-correlation + FFN with progressive series
  decomposition, the encoder used for the paper's "Corrformer" comparison.

Tensors are laid out ``(B·n, L, C)`` with the ``n`` nodes of one sample consecutive (the station grouping of
:mod:`urlk_forecast.models.embedding`). All index arithmetic is vectorised (no per-lag Python loops over the
batch), and nothing is hard-wired to CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from torch.utils.checkpoint import checkpoint

from . import fastpath
from .decoder import MultiHeadProjection, SeasonalLayerNorm, SeriesDecomp, get_activation
from .layers import Dropout, pointwise
from .linear_function import linear, run_linear
from .tap_weight_norm import tap_weight_norm, weight_norm_parts

__all__ = [
    "AutoCorrelation",
    "AutoCorrelationLayer",
    "CausalFusion",
    "CrossCorrelation",
    "CrossCorrelationLayer",
    "MultiCorrelation",
    "CorrformerEncoderLayer",
    "CorrformerEncoder",
    "auto_node_list",
    "build_multi_correlation",
]


def auto_node_list(n_nodes: int) -> list[int]:
    """Two-level node tree ``[a, n/a]`` with ``a`` the largest divisor ``<= sqrt(n)`` (``[n]`` if none > 1).

    The paper's 350 nodes used ``[7, 50]``; pass ``node_list`` explicitly to reproduce that exactly.
    """
    if n_nodes < 1:
        raise ValueError(f"n_nodes must be >= 1, got {n_nodes}")
    a = 1
    for d in range(2, math.isqrt(n_nodes) + 1):
        if n_nodes % d == 0:
            a = d
    return [n_nodes] if a == 1 else [a, n_nodes // a]


def _match_length(x: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """Zero-pad or crop ``x`` along ``dim`` to ``length`` (Autoformer's convention for L != S)."""
    n = x.shape[dim]
    if n == length:
        return x
    if n > length:
        return x.narrow(dim, 0, length)
    shape = list(x.shape)
    shape[dim] = length - n
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def _circular_corr(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``R[..., tau] = sum_t q[..., t + tau] * k[..., t]`` (circular), via the FFT over the last dim."""
    length = q.shape[-1]
    if q.dtype in (torch.float16, torch.bfloat16):  # no half FFT for arbitrary lengths; compute in float32
        q, k = q.float(), k.float()
    qf = torch.fft.rfft(q, dim=-1)
    kf = torch.fft.rfft(k, dim=-1)
    return torch.fft.irfft(qf * torch.conj(kf), n=length, dim=-1)


def _roll_gather(values: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``out[..., j, t] = values[..., (t + shifts[..., j]) mod L]`` for every shift ``j``.

    ``values`` (..., L), ``shifts`` (..., J) integer → (..., J, L).
    """
    length = values.shape[-1]
    t = torch.arange(length, device=values.device)
    idx = (t + shifts.unsqueeze(-1)) % length  # (..., J, L)
    src = values.unsqueeze(-2).expand(*values.shape[:-1], shifts.shape[-1], length)
    return torch.gather(src, -1, idx)


class AutoCorrelation(nn.Module):
    """Auto-correlation with time-delay aggregation over the ``top_k = factor·ln L`` strongest lags."""

    def __init__(self, factor: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.factor = factor
        self.dropout = Dropout(dropout)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q`` (B, L, H, E), ``k``/``v`` (B, S, H, E) → (B, L, H, E)."""
        B, L, H, E = q.shape
        k = _match_length(k, L, 1)
        v = _match_length(v, L, 1)
        corr = _circular_corr(q.permute(0, 2, 3, 1), k.permute(0, 2, 3, 1))  # (B, H, E, L)
        top_k = max(1, min(L, int(self.factor * math.log(L))))
        weights, delays = torch.topk(corr.mean(dim=2), top_k, dim=-1)  # (B, H, k)
        weights = self.dropout(torch.softmax(weights, dim=-1))
        vals = v.permute(0, 2, 3, 1).reshape(B * H, E, L)
        delays = delays.reshape(B * H, top_k)
        weights = weights.reshape(B * H, top_k)
        t = torch.arange(L, device=v.device)
        agg = None
        for i in range(top_k):  # one lag at a time: peak memory of one rolled copy, not top_k
            idx = ((t + delays[:, i, None]) % L)[:, None, :].expand(-1, E, -1)
            term = torch.gather(vals, -1, idx) * weights[:, i, None, None].to(vals.dtype)
            agg = term if agg is None else agg + term
        return agg.reshape(B, H, E, L).permute(0, 3, 1, 2)


class AutoCorrelationLayer(MultiHeadProjection):
    """Multi-head projections around :class:`AutoCorrelation`."""

    def __init__(self, d_model: int, n_heads: int, factor: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__(d_model, n_heads)
        self.inner = AutoCorrelation(factor, dropout)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        out = self.inner(*self.project(queries, keys))
        return run_linear(self.out_projection, out.reshape(queries.shape[0], queries.shape[1], -1))


class _CausalBlock(nn.Module):
    """Two weight-normalised dilated causal Conv1d + ReLU + dropout with a residual (a TCN block)."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.pad = (kernel_size - 1) * dilation
        self.conv1 = weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=dilation))
        self.conv2 = weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=dilation))
        self.dropout = Dropout(dropout)
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.parametrizations.weight.original1, 0.0, 0.01)

    def _causal(self, conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        """``conv`` over ``x`` left-padded by ``(k - 1)·dilation`` zeros. Fast path: tap ``j`` reads input step
        ``t - (k - 1 - j)·dilation``, so on a sequence of ``n`` steps the taps with ``(k - 1 - j)·dilation >= n`` only
        ever read padding and are skipped (exactly zero terms; at ``n = 1`` one tap is left, a matrix product)."""
        k, d = conv.kernel_size[0], conv.dilation[0]
        live = min(k, (x.shape[-1] - 1) // d + 1)
        if live == k or not fastpath.enabled():
            return conv(F.pad(x, (self.pad, 0)))
        parts = None if fastpath.exporting() else weight_norm_parts(conv)  # only the live taps (tap_weight_norm.py)
        weight = tap_weight_norm(*parts, k - live) if parts is not None else conv.weight[..., k - live:]
        if live == 1:
            return linear(x.transpose(1, 2), weight[..., 0], conv.bias).transpose(1, 2)
        return F.conv1d(F.pad(x, ((live - 1) * d, 0)), weight, conv.bias, dilation=d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dropout(F.relu(self._causal(self.conv1, x)))
        y = self.dropout(F.relu(self._causal(self.conv2, y)))
        return F.relu(x + y)


class CausalFusion(nn.Module):
    """Causal TCN over a sequence of nodes (dilations 3^i), channels = head_dim × length."""

    def __init__(self, channels: int, n_layers: int = 1, kernel_size: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[_CausalBlock(channels, kernel_size, 3**i, dropout) for i in range(n_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, channels, nodes) → same shape; node ``i`` only sees nodes ``<= i``."""
        return self.blocks(x)


class CrossCorrelation(nn.Module):
    """Pivot-based cross-correlation between the nodes of one sample (spatial modelling)."""

    def __init__(self, head_dim: int, length: int, factor: int = 1, tcn_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.factor = factor
        self.length = length
        self.fusion = CausalFusion(head_dim * length, tcn_layers, 3, dropout)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q`` (B, N, L, H, E), ``k``/``v`` (B, N, S, H, E) → (B, N, L, H, E)."""
        B, N, L, H, E = q.shape
        if L != self.length:
            raise ValueError(f"CrossCorrelation was built for length {self.length}, got {L}")
        k = _match_length(k, L, 2)
        v = _match_length(v, L, 2)
        pivot = q.mean(dim=1, keepdim=True)  # (B, 1, L, H, E), broadcast against every node's keys
        corr = _circular_corr(pivot.permute(0, 1, 3, 4, 2), k.permute(0, 1, 3, 4, 2))  # (B, N, H, E, L)
        f = min(self.factor, L)
        weight, lag = torch.topk(corr.mean(dim=3), f, dim=-1)  # (B, N, H, f)
        vals = v.permute(0, 3, 1, 4, 2).reshape(B * H, N, E, L)  # (B·H, N, E, L)
        lag = lag.permute(0, 2, 1, 3).reshape(B * H, N, f)
        gate = torch.sigmoid(weight.permute(0, 2, 1, 3).reshape(B * H, N, f))
        # align every node to the pivot: aligned[t] = v[t - lag]
        aligned = _roll_gather(vals, (-lag).unsqueeze(2).expand(-1, -1, E, -1))  # (B·H, N, E, f, L)
        aligned = aligned * gate[:, :, None, :, None]
        out = vals.new_zeros(B * H, N, E, L)
        for i in range(f):
            order = torch.argsort(lag[..., i], dim=1, stable=True)  # nodes sorted by lag (leaders first)
            inv = torch.argsort(order, dim=1)
            a = aligned[..., i, :].reshape(B * H, N, E * L)
            a = torch.gather(a, 1, order[..., None].expand(-1, -1, E * L))
            fused = self.fusion(a.transpose(1, 2)).transpose(1, 2)
            fused = torch.gather(fused, 1, inv[..., None].expand(-1, -1, E * L)).reshape(B * H, N, E, L)
            # align back: out[t] = fused[t + lag]
            out = out + _roll_gather(fused, lag[..., i, None, None].expand(-1, -1, E, 1))[..., 0, :]
        out = out / f
        return out.reshape(B, H, N, E, L).permute(0, 2, 4, 1, 3)


class CrossCorrelationLayer(nn.Module):
    """Multi-head projections around :class:`CrossCorrelation` for ``(B·n, L, C)`` tensors."""

    def __init__(self, d_model: int, n_heads: int, length: int, factor: int = 1, tcn_layers: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.inner = CrossCorrelation(d_model // n_heads, length, factor, tcn_layers, dropout)
        self.query_projection = nn.Linear(d_model, d_model)
        self.key_projection = nn.Linear(d_model, d_model)
        self.value_projection = nn.Linear(d_model, d_model)
        self.out_projection = nn.Linear(d_model, d_model)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, n_nodes: int) -> torch.Tensor:
        BN, L, _ = queries.shape
        S, H = keys.shape[1], self.n_heads
        B = BN // n_nodes
        q = run_linear(self.query_projection, queries).view(B, n_nodes, L, H, -1)
        k = run_linear(self.key_projection, keys).view(B, n_nodes, S, H, -1)
        v = run_linear(self.value_projection, keys).view(B, n_nodes, S, H, -1)
        return run_linear(self.out_projection, self.inner(q, k, v).reshape(BN, L, -1))


class MultiCorrelation(nn.Module):
    """Auto-correlation on leaf nodes + cross-correlation on each level of the node tree.

    ``node_list`` factorises the number of nodes per sample (its product). At level ``i`` the nodes are
    averaged over the deeper levels and the ``node_list[i]`` siblings under each parent are cross-correlated;
    the result is broadcast back to the leaves and the levels are averaged. ``spatial=False`` keeps only the
    auto-correlation (every node independent).
    """

    def __init__(self, d_model: int, n_heads: int, length: int, node_list: Sequence[int], factor_temporal: float = 1,
                 factor_spatial: int = 1, tcn_layers: int = 1, dropout: float = 0.0, spatial: bool = True) -> None:
        super().__init__()
        self.node_list = [int(n) for n in node_list]
        self.n_nodes = math.prod(self.node_list)
        self.auto_correlation = AutoCorrelationLayer(d_model, n_heads, factor_temporal, dropout)
        self.cross_correlation = (
            CrossCorrelationLayer(d_model, n_heads, length, factor_spatial, tcn_layers, dropout) if spatial else None
        )
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        """``x`` (B·n, L, C), ``cross`` (B·n, S, C) → (B·n, L, C)."""
        leaf = self.dropout(self.auto_correlation(x, cross))
        if self.cross_correlation is None:
            return leaf
        BN, L, C = x.shape
        S = cross.shape[1]
        if BN % self.n_nodes:
            raise ValueError(f"batch·nodes={BN} is not a multiple of the {self.n_nodes} nodes per sample")
        B = BN // self.n_nodes
        nl = self.node_list
        levels = []
        for i in range(len(nl)):
            keep = B * math.prod(nl[:i])
            x_i = x.reshape(keep * nl[i], -1, L, C).mean(dim=1)
            c_i = cross.reshape(keep * nl[i], -1, S, C).mean(dim=1)
            y_i = self.cross_correlation(x_i, c_i, n_nodes=nl[i])  # (keep·nl[i], L, C)
            reduce = math.prod(nl[i + 1:])
            levels.append(y_i.unsqueeze(1).expand(-1, reduce, -1, -1).reshape(BN, L, C))
        inter = torch.stack(levels, dim=0).mean(dim=0)
        return leaf + self.dropout(inter)


def build_multi_correlation(d_model: int, n_heads: int, length: int, node_list: Sequence[int], *,
                            factor_temporal: float = 1, factor_spatial: int = 1, tcn_layers: int = 1,
                            dropout: float = 0.0, spatial: bool = True) -> MultiCorrelation:
    """Factory used by the encoder and the decoder (one place for the defaults)."""
    return MultiCorrelation(d_model, n_heads, length, node_list, factor_temporal, factor_spatial, tcn_layers,
                            dropout, spatial)


class CorrformerEncoderLayer(nn.Module):
    """Multi-correlation + FFN, each followed by series decomposition (the seasonal part is kept)."""

    def __init__(self, correlation: MultiCorrelation, d_model: int, d_ff: int | None = None, moving_avg: int = 25,
                 dropout: float = 0.0, activation: str = "gelu") -> None:
        super().__init__()
        d_ff = d_ff or 4 * d_model
        self.correlation = correlation
        self.conv1 = nn.Conv1d(d_model, d_ff, 1, bias=False)
        self.conv2 = nn.Conv1d(d_ff, d_model, 1, bias=False)
        self.decomp1 = SeriesDecomp(moving_avg)
        self.decomp2 = SeriesDecomp(moving_avg)
        self.dropout = Dropout(dropout)
        self.activation = get_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.decomp1(x + self.correlation(x, x))
        y = self.dropout(self.activation(pointwise(self.conv1, x)))
        y = self.dropout(pointwise(self.conv2, y))
        x, _ = self.decomp2(x + y)
        return x


class CorrformerEncoder(nn.Module):
    """The Corrformer encoder: embedded node series ``(B·n, L, d_model)`` → tokens of the same shape."""

    token_kind = "temporal"

    def __init__(self, d_model: int, seq_len: int, n_nodes: int, n_heads: int = 8, e_layers: int = 2,
                 d_ff: int | None = None, moving_avg: int = 25, dropout: float = 0.05,
                 node_list: Sequence[int] | None = None, factor_temporal: float = 1, factor_spatial: int = 1,
                 tcn_layers: int = 1, spatial: bool = True, activation: str = "gelu", with_cp: bool = False) -> None:
        super().__init__()
        node_list = list(node_list) if node_list is not None else auto_node_list(n_nodes)
        if math.prod(node_list) != n_nodes:
            raise ValueError(f"node_list {node_list} multiplies to {math.prod(node_list)}, expected {n_nodes} nodes")
        self.with_cp = with_cp
        self.layers = nn.ModuleList(
            CorrformerEncoderLayer(
                build_multi_correlation(d_model, n_heads, seq_len, node_list, factor_temporal=factor_temporal,
                                        factor_spatial=factor_spatial, tcn_layers=tcn_layers, dropout=dropout,
                                        spatial=spatial),
                d_model, d_ff, moving_avg, dropout, activation)
            for _ in range(e_layers)
        )
        self.norm = SeasonalLayerNorm(d_model)
        self.out_tokens = seq_len

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if self.with_cp and self.training and x.requires_grad:
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return self.norm(x)

