"""Quantile levels: the one check of a ``quantiles=`` argument and the names of the levels in tables and files.

A quantile forecast at level ``q`` is the value the target falls at or below with probability ``q``. Methods that
forecast quantiles (``Method.quantiles``) keep their levels as a sorted tuple of floats in (0, 1); the neural
forecaster also needs the median (its point forecast), hence ``require_median``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["quantile_levels", "quantile_label"]


def quantile_levels(levels: Iterable[float] | None, name: str = "quantiles", *,
                    require_median: bool = True) -> tuple[float, ...] | None:
    """``levels`` checked: at least one number, each finite and strictly inside (0, 1), strictly increasing (sorted
    and unique), and containing 0.5 when ``require_median``; returned as a tuple of floats (None stays None).

    Errors are ``ValueError`` naming the argument ``name`` (``quantiles=[0.9, 0.1]: ...``).
    """
    if levels is None:
        return None
    if isinstance(levels, (str, bytes)):
        raise ValueError(f"{name}={levels!r}: give a sequence of numbers such as [0.1, 0.5, 0.9], not a string")
    try:
        raw = list(levels)
        out = tuple(float(v) for v in raw)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={levels!r}: must be a sequence of numbers such as [0.1, 0.5, 0.9]") from None
    shown = "[" + ", ".join(f"{v:g}" for v in out) + "]"
    if not out:
        raise ValueError(f"{name}=[]: give at least one quantile level")
    bad = [v for v in out if not (math.isfinite(v) and 0.0 < v < 1.0)]
    if bad:
        raise ValueError(f"{name}={shown}: every level must lie strictly between 0 and 1 (got {bad[0]:g})")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"{name}={shown}: levels must be sorted and unique, e.g. "
                         f"[{', '.join(f'{v:g}' for v in sorted(set(out)))}]")
    if require_median and 0.5 not in out:
        raise ValueError(f"{name}={shown}: must contain 0.5 (the median is the point forecast)")
    return out


def quantile_label(variable: str, level: float) -> str:
    """Column name of ``variable``'s quantile forecast at ``level``: ``temperature_q0.1``."""
    return f"{variable}_q{level:g}"

