"""The taps of a kernel that ever touch the map: a large kernel on a small map is a smaller kernel.

With stride 1, tap ``i`` of a kernel (dilation ``d``, top padding ``t``) reads input row ``o - t + d*i`` for output
row ``o``. On a map smaller than the kernel's reach most taps read only the zero padding for every output pixel —
a 13x13 kernel on the forecaster's 2x3 map touches data with 3x5 of its 169 taps, on 4x6 with 7x11. Those taps
add nothing to the output, receive an exactly zero weight gradient and contribute nothing to the input gradient,
so the call equals the same call with the kernel cropped to the taps that can touch data and the padding reduced
to keep every output where it was. :func:`crop` computes that smaller call (pure integer arithmetic, no tensors);
the dispatcher runs it in place of the original (``auto`` only: the forced paths stay literal for bisecting).
"""

from __future__ import annotations

__all__ = ["used_taps", "crop", "cropped_call"]

Pads = tuple[int, int, int, int]  # top, bottom, left, right


def used_taps(size: int, k: int, lo: int, hi: int, d: int) -> tuple[int, int] | None:
    """``(first, last)`` taps of a ``k``-tap kernel (dilation ``d``, padding ``lo`` before and ``hi`` after) that read
    at least one of the ``size`` input samples for some output, or None when none does (or no output exists)."""
    n_out = size + lo + hi - d * (k - 1)
    if size < 1 or n_out < 1:
        return None
    # tap i reads input o - lo + d*i for o in [0, n_out - 1]: data when that range meets [0, size - 1]
    first = max(0, -(-(lo - (n_out - 1)) // d))  # smallest i with d*i >= lo - (n_out - 1)
    last = min(k - 1, (size - 1 + lo) // d)  # largest i with d*i <= size - 1 + lo
    return (first, last) if first <= last else None


def _axis(size: int, k: int, lo: int, hi: int, d: int) -> tuple[int, int, int, int] | None:
    """(first tap, taps kept, new lo, new hi) along one axis, or None when cropping it is not possible."""
    taps = used_taps(size, k, lo, hi, d)
    if taps is None:
        return None
    first, last = taps
    kept = last - first + 1
    n_out = size + lo + hi - d * (k - 1)
    new_lo = lo - d * first
    new_hi = n_out - size - new_lo + d * (kept - 1)  # the same number of outputs
    if not (0 <= new_lo <= d * (kept - 1) and 0 <= new_hi <= d * (kept - 1)):
        return None  # the cropped call would need negative padding (it reads less than the kept taps span)
    return first, kept, new_lo, new_hi


def crop(hw: tuple[int, int], k: tuple[int, int], pads: Pads, dil: tuple[int, int]
         ) -> tuple[tuple[slice, slice], Pads] | None:
    """The smaller equivalent call of a depthwise conv on an ``hw`` map with a ``k`` kernel: ``(rows, cols)`` slices
    of the kernel to keep and the new (top, bottom, left, right) padding; None when every tap touches data or the
    crop cannot be expressed (its output would move)."""
    rows = _axis(hw[0], k[0], pads[0], pads[1], dil[0])
    cols = _axis(hw[1], k[1], pads[2], pads[3], dil[1])
    if rows is None or cols is None or (rows[1] == k[0] and cols[1] == k[1]):
        return None
    (r0, kr, t, b), (c0, kc, l, r) = rows, cols
    return (slice(r0, r0 + kr), slice(c0, c0 + kc)), (t, b, l, r)


def cropped_call(call: tuple) -> tuple:
    """A call as :func:`urlk_forecast.ops.autotune.record_calls` lists it, ``(x shape, kernel, pads, dilation)``,
    replaced by its cropped equivalent when :func:`crop` finds one (else returned as it is)."""
    shape, k, pads, dil = call
    cut = crop(tuple(shape[-2:]), tuple(k), tuple(pads), tuple(dil))
    if cut is None:
        return call
    (rows, cols), new_pads = cut
    return tuple(shape), (rows.stop - rows.start, cols.stop - cols.start), new_pads, tuple(dil)
