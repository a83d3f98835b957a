"""numba kernel for the fixed-width ISD-Lite layout (imported lazily: only the fast path needs numba)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def parse_fixed(buf: np.ndarray, widths: np.ndarray, out: np.ndarray) -> int:
    """Fill ``out`` (n, fields) from ``buf`` (n rows of sum(widths) bytes + a newline).

    Each field must be right-aligned: spaces, an optional ``-``, then at least one digit. Returns -1
    when every row conforms, else the index of the first row that does not (the caller then uses the
    careful parser, which reports the exact problem).
    """
    n = out.shape[0]
    width = buf.shape[0] // n
    for r in range(n):
        base = r * width
        if buf[base + width - 1] != 10:
            return r
        col = 0
        for k in range(widths.shape[0]):
            val = 0
            digits = False
            neg = False
            for i in range(widths[k]):
                c = buf[base + col + i]
                if c == 32:
                    if digits or neg:
                        return r
                elif c == 45:
                    if digits or neg:
                        return r
                    neg = True
                elif c >= 48 and c <= 57:
                    digits = True
                    val = val * 10 + (c - 48)
                else:
                    return r
            if not digits:
                return r
            out[r, k] = -val if neg else val
            col += widths[k]
    return -1
