"""Evenly spaced window indices (validation subsets, the benchmark's test windows)."""

from __future__ import annotations

import numpy as np

__all__ = ["evenly_spaced"]


def evenly_spaced(n: int, k: int | None) -> np.ndarray:
    """``k`` distinct indices spread evenly over ``0..n-1`` including both ends (all ``n`` when ``k`` is None,
    0 or at least ``n``), as int64."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if not k or k >= n:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, int(k)).round().astype(np.int64))
