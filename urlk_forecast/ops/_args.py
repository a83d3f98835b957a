"""Argument helpers shared by the op's front end (:mod:`urlk_forecast.ops`), the dispatcher and the CPU and CUDA
kernels, each defined once. No torch, no numba: every module of the package may import it."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["pair", "out_hw"]


def pair(v: int | Sequence[int], name: str, where: str = "") -> tuple[int, int]:
    """``(v, v)`` for an int, ``tuple(v)`` for an (h, w) pair; TypeError/ValueError naming ``where: name``."""
    msg = f"{where + ': ' if where else ''}{name} must be an int or an (h, w) pair, got {v!r}"
    if isinstance(v, bool):
        raise TypeError(msg)
    if isinstance(v, int):
        return v, v
    try:
        t = tuple(int(a) for a in v)
    except TypeError:
        raise TypeError(msg) from None
    if len(t) != 2:
        raise ValueError(msg)
    return t  # type: ignore[return-value]


def out_hw(h: int, w: int, k: Sequence[int], pads: Sequence[int], dil: Sequence[int]) -> tuple[int, int]:
    """Output (height, width) of a stride-1 convolution of an ``h`` x ``w`` map with kernel ``k`` = (KH, KW),
    ``pads`` = (top, bottom, left, right) and dilation ``dil`` = (dh, dw)."""
    t, b, l, r = pads
    return h + t + b - (k[0] - 1) * dil[0], w + l + r - (k[1] - 1) * dil[1]
