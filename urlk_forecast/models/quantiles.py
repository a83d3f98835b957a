"""The monotone quantile parameterisation of the forecasting network: quantiles that cannot cross.

The network forecasts the median directly and every other level as the median plus (above) or minus (below) a
*cumulative sum of non-negative spreads*, each spread a softplus of a network output. So ``q_j <= q_{j+1}`` holds by
construction for any weights -- untrained, diverged or re-parameterised -- and exactly in floating point (adding a
non-negative number never decreases a float). Sorting the outputs instead would also prevent crossing, but it lets
a channel serve different levels from window to window; the monotone form keeps each channel's role fixed and its
gradient smooth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["monotone_quantiles", "spreads_from_raw"]


def spreads_from_raw(raw: torch.Tensor) -> torch.Tensor:
    """Non-negative spreads from unconstrained network outputs (softplus; 0.69 at an output of 0)."""
    return F.softplus(raw)


def monotone_quantiles(median: torch.Tensor, spreads: torch.Tensor, median_index: int) -> torch.Tensor:
    """Quantiles ``(..., Q)``, non-decreasing along the last axis, from the median ``(...)`` and ``Q - 1`` spreads
    ``(..., Q - 1)`` (non-negative, in the median's units).

    Level ``median_index`` is the median; below it spread ``j`` is the gap between levels ``j`` and ``j + 1``
    (``q_j = median - (spreads_j + ... + spreads_{m-1})``), above it the gap between levels ``j`` and ``j + 1`` for
    ``j >= m`` (``q_{j+1} = median + (spreads_m + ... + spreads_j)``).
    """
    m = int(median_index)
    if spreads.shape[:-1] != median.shape or not 0 <= m <= spreads.shape[-1]:
        raise ValueError(f"need spreads (..., Q-1) for a median {tuple(median.shape)} and 0 <= median_index <= Q-1; "
                         f"got spreads {tuple(spreads.shape)}, median_index {m}")
    centre = median.unsqueeze(-1)
    below = spreads[..., :m].flip(-1).cumsum(-1).flip(-1)  # level j < m: the gaps from j up to the median
    above = spreads[..., m:].cumsum(-1)
    return torch.cat([centre - below, centre, centre + above], dim=-1)
