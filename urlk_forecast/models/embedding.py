"""Input side of the forecasting network: RevIN normalisation, station→node grouping, Corrformer embedding.

* :class:`RevIN` — per-window, per-station normalisation by the input window's mean/std (computed over the
  observed values only, using ``x_mask``) with a learned affine per station *slot* (the D' positions inside a
  node, shared by all nodes as in the released code), undone on the output.
* :class:`NodeGrouping` — ``(B, L, S) → (B·n, L, D')`` with ``n = ceil(S / D')`` nodes of D' consecutive
  stations (the windows arrive in space-filling-curve order, so consecutive stations are neighbours). When
  ``S`` is not a multiple of D' the last node is padded by repeating the last real station; padded slots
  are cropped from the output (they never reach the loss), their coordinates repeat the last station too.
* :class:`DataEmbedding` — Corrformer's embedding: token Conv1d(D' → d_model, k=3, circular, no bias) +
  time-feature Linear(4 → d_model) + geographic Linear(3·D' → d_model) of the node's standardised
  lat/lon/elevation + dropout. With ``n_channels = 1 + 2K`` (K covariates) the token conv reads D'·(1 + 2K)
  channels: the target's D', then per covariate its D' masked normalised values and its D' masks
  (:func:`covariate_channels`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import Dropout

__all__ = ["RevIN", "NodeGrouping", "TokenEmbedding", "DataEmbedding", "covariate_channels"]


class RevIN(nn.Module):
    """Reversible instance normalisation over time for ``(B, L, S)`` tensors (S a multiple of ``node_size``).

    Statistics use the positions where ``mask`` is True and ``x`` is finite. A station with fewer than
    ``min_observed`` (default a quarter of the window, at least 2) observed values falls back to the statistics of
    all its finite values (observed + gap-filled), and to mean 0 / std 1 when it has none; non-finite inputs are
    replaced by the station mean (0 after normalisation) so the network always sees finite numbers. The std is
    floored at ``std_floor`` times the std of all finite values: a station observed only while it was constant
    (one reading, or a calm anemometer) would otherwise scale its gap-filled values by 1/sqrt(eps) and blow up the
    whole node's forecast. :meth:`no_observation` tells callers which stations had nothing observed so they can
    report NaN forecasts there instead of inventing values.
    """

    def __init__(self, node_size: int, eps: float = 1e-5, affine: bool = True, min_observed: int | None = None,
                 std_floor: float = 0.1) -> None:
        super().__init__()
        self.node_size = node_size
        self.eps = eps
        self.min_observed = min_observed
        self.std_floor = std_floor
        self.affine = affine
        if affine:
            self.affine_weight = nn.Parameter(torch.ones(node_size))
            self.affine_bias = nn.Parameter(torch.zeros(node_size))

    def _tiled(self, p: torch.Tensor, n_channels: int) -> torch.Tensor:
        if n_channels % self.node_size:
            raise ValueError(f"RevIN expects a multiple of node_size={self.node_size} channels, got {n_channels}")
        return p.repeat(n_channels // self.node_size)

    @staticmethod
    def no_observation(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, S)`` bool: True where the window holds no observed, finite value of the station."""
        observed = torch.isfinite(x)
        if mask is not None:
            observed = observed & mask.bool()
        return ~observed.any(dim=1)

    def normalize(self, x: torch.Tensor, mask: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x`` (B, L, S) → (normalised x, (mean, std) each (B, 1, S))."""
        finite = torch.isfinite(x)
        xz = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))

        def moments(use: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            w = use.to(x.dtype)
            cnt = w.sum(dim=1, keepdim=True)
            mean = (xz * w).sum(dim=1, keepdim=True) / cnt.clamp(min=1)
            var = (((xz - mean) * w) ** 2).sum(dim=1, keepdim=True) / cnt.clamp(min=1)
            return cnt, mean, var

        cnt_all, mean_all, var_all = moments(finite)
        if mask is None:
            cnt, mean, var = cnt_all, mean_all, var_all
        else:
            need = self.min_observed if self.min_observed is not None else max(2, -(-x.shape[1] // 4))
            cnt, mean, var = moments(finite & mask.bool())
            few = cnt < min(need, x.shape[1])
            cnt = torch.where(few, cnt_all, cnt)
            mean = torch.where(few, mean_all, mean)
            var = torch.where(few, var_all, var)
        var = torch.maximum(var, (self.std_floor ** 2) * var_all)
        std = torch.where(cnt > 0, torch.sqrt(var + self.eps), torch.ones_like(var))
        mean, std = mean.detach(), std.detach()
        xn = torch.where(finite, (xz - mean) / std, torch.zeros((), dtype=x.dtype, device=x.device))
        if self.affine:
            xn = xn * self._tiled(self.affine_weight, x.shape[-1]) + self._tiled(self.affine_bias, x.shape[-1])
        return xn, (mean, std)

    def denormalize(self, y: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Undo :meth:`normalize` on an output ``(B, P, S)``."""
        mean, std = stats
        if self.affine:
            w = self.affine_weight
            w = torch.where(w.abs() < 1e-10, torch.full_like(w, 1e-10), w)  # a weight of exactly 0 is not invertible
            y = (y - self._tiled(self.affine_bias, y.shape[-1])) / self._tiled(w, y.shape[-1])
        return y * std + mean

    def denormalize_spread(self, d: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Undo :meth:`normalize`'s scaling on differences ``d`` (B, P, S, K) between forecasts (quantile spreads):
        ``d * std / |affine weight|``, so non-negative spreads stay non-negative whatever the weight's sign."""
        _, std = stats
        if self.affine:
            w = self.affine_weight.abs().clamp(min=1e-10)
            d = d / self._tiled(w, d.shape[-2])[:, None]
        return d * std[..., None]


def covariate_channels(u: torch.Tensor, mask: torch.Tensor, floor: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Covariates ``u`` (B, L, S, K) with ``mask`` → ``(B, L, S, K, 2)``: the value normalised per window, station
    and covariate by the mean/std of its *observed* entries (mask True and finite; std at least ``floor`` (K,)),
    multiplied by the mask, and the mask (1.0 / 0.0) itself.

    An unobserved entry contributes exactly zero on both channels, so a covariate with nothing observed leaves
    the network's output what it is without that covariate; the mask channel tells a real zero (a value at the
    window mean) from a missing one. Held gap values never enter, so nothing of a later time leaks in.
    """
    m = mask.bool() & torch.isfinite(u)
    w = m.to(u.dtype)
    zero = torch.zeros((), dtype=u.dtype, device=u.device)
    uz = torch.where(m, u, zero)
    cnt = w.sum(dim=1, keepdim=True).clamp(min=1)
    mean = (uz * w).sum(dim=1, keepdim=True) / cnt
    var = (((uz - mean) * w) ** 2).sum(dim=1, keepdim=True) / cnt
    std = torch.sqrt(torch.maximum(var, floor.to(u.dtype) ** 2) + eps)
    z = torch.where(m, (uz - mean) / std, zero)
    return torch.stack([z, w], dim=-1).detach()


class NodeGrouping(nn.Module):
    """Group ``S`` stations into ``n = ceil(S / D')`` nodes of ``D'`` consecutive stations and back."""

    def __init__(self, n_stations: int, node_size: int) -> None:
        super().__init__()
        if n_stations < 1 or node_size < 1:
            raise ValueError(f"n_stations and node_size must be >= 1, got {n_stations}, {node_size}")
        self.n_stations = n_stations
        self.node_size = node_size
        self.n_nodes = math.ceil(n_stations / node_size)
        self.n_padded = self.n_nodes * node_size
        index = torch.arange(self.n_padded).clamp(max=n_stations - 1)
        self.register_buffer("index", index, persistent=False)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., S) → (..., n·D')`` repeating the last station into the padded slots."""
        if x.shape[-1] != self.n_stations:
            raise ValueError(f"expected {self.n_stations} stations in the last dim, got {x.shape[-1]}")
        if self.n_padded == self.n_stations:
            return x
        return x.index_select(-1, self.index)

    def to_nodes(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, n·D') → (B·n, L, D')``."""
        B, L, Sp = x.shape
        return x.reshape(B, L, self.n_nodes, self.node_size).permute(0, 2, 1, 3).reshape(B * self.n_nodes, L,
                                                                                          self.node_size)

    def from_nodes(self, y: torch.Tensor) -> torch.Tensor:
        """``(B·n, L, D') → (B, L, n·D')``."""
        BN, L, D = y.shape
        B = BN // self.n_nodes
        return y.reshape(B, self.n_nodes, L, D).permute(0, 2, 1, 3).reshape(B, L, self.n_nodes * D)

    def crop(self, y: torch.Tensor) -> torch.Tensor:
        """``(..., n·D') → (..., S)``: drop the padded slots."""
        return y[..., : self.n_stations]

    def node_coords(self, coords: torch.Tensor) -> torch.Tensor:
        """``(S, 3)`` station coordinates → ``(n, 3·D')`` per-node vectors (station-major)."""
        return self.pad(coords.t()).t().reshape(self.n_nodes, 3 * self.node_size)


class TokenEmbedding(nn.Module):
    """Conv1d(D' → d_model, kernel 3, circular padding, no bias) over time."""

    def __init__(self, c_in: int, d_model: int) -> None:
        super().__init__()
        self.token_conv = nn.Conv1d(c_in, d_model, 3, padding=1, padding_mode="circular", bias=False)
        nn.init.kaiming_normal_(self.token_conv.weight, mode="fan_in", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.token_conv(x.transpose(1, 2)).transpose(1, 2)


class DataEmbedding(nn.Module):
    """Value + time-feature + geographic embedding of node series, ``(B·n, L, D'·n_channels) → (B·n, L, d_model)``
    (``n_channels`` > 1: covariate channels after the target's, see :func:`covariate_channels`)."""

    def __init__(self, node_size: int, d_model: int, n_time_features: int = 4, dropout: float = 0.05,
                 n_channels: int = 1) -> None:
        super().__init__()
        self.value_embedding = TokenEmbedding(node_size * int(n_channels), d_model)
        self.temporal_embedding = nn.Linear(n_time_features, d_model, bias=False)
        self.geo_embedding = nn.Linear(3 * node_size, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor, node_coords: torch.Tensor) -> torch.Tensor:
        """``x`` (B·n, L, D'), ``x_mark`` (B, L, F) shared by the nodes of a sample, ``node_coords`` (n, 3·D')."""
        B, L = x_mark.shape[:2]
        n = node_coords.shape[0]
        if x.shape[0] != B * n or x.shape[1] != L:
            raise ValueError(f"embedding got x {tuple(x.shape)} for x_mark {tuple(x_mark.shape)} and {n} nodes")
        value = self.value_embedding(x).reshape(B, n, L, -1)
        temporal = self.temporal_embedding(x_mark).unsqueeze(1)  # (B, 1, L, d)
        geo = self.geo_embedding(node_coords)[None, :, None, :]  # (1, n, 1, d)
        return self.dropout((value + temporal + geo).reshape(B * n, L, -1))
