"""Keep freed memory in the process so large CPU tensors are not page-faulted in again on every operation.

glibc's ``malloc`` serves every block above its mmap threshold (128 KiB, adapting up to 32 MiB) with a fresh
``mmap`` and gives it back with ``munmap`` on ``free``. A forecaster step at 3850 stations allocates and frees
activations of 20-90 MB dozens of times, so each of them is first-touched again: the kernel zero-fills every 4 KiB
page, and an elementwise pass such as GELU over a 86 MB activation ran at ~4 GB/s (40 ms) instead of ~14 ms with
the memory kept (2-core dev machine, 2026-12-07). :func:`retain_freed_memory` asks glibc (``mallopt``) to serve
large blocks from its heap and never trim it, so freed memory is reused without faults; the price is that the
process keeps its peak heap until it exits. That is the trade the training and forecasting loops of this package
make on a CPU (:func:`urlk_forecast.models.fastpath.tune_allocator`); ``URLK_MALLOC=0`` opts out.

Other C libraries (musl, macOS, Windows) have no such knobs here: the function then does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any

__all__ = ["ENV", "retain_freed_memory", "retained"]

#: environment variable: ``0`` leaves the C library's allocator as it is
ENV = "URLK_MALLOC"

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_MAX = -4
_DEFAULT_MMAP_MAX = 65536  # glibc's defaults, restored by retain_freed_memory(False)
_DEFAULT_TRIM_THRESHOLD = 128 * 1024

_state = {"on": False}


def _mallopt() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def retained() -> bool:
    """True while :func:`retain_freed_memory` has the allocator keeping freed memory in this process."""
    return _state["on"]


def retain_freed_memory(on: bool = True) -> bool:
    """Make glibc keep freed memory for reuse (``on``), or restore its default thresholds (``on=False``).

    Returns whether the setting is now in effect: False without glibc's ``mallopt``, or when ``URLK_MALLOC=0``
    (then nothing is changed). Process-wide and idempotent; blocks already mapped are unaffected.
    """
    if on and os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if on == _state["on"]:
        return on
    fn = _mallopt()
    if fn is None:
        return False
    if on:
        # every block from the heap (no mmap), and a trim threshold of SIZE_MAX (-1 is read as size_t): never trim
        ok = bool(fn(_M_MMAP_MAX, 0)) and bool(fn(_M_TRIM_THRESHOLD, -1))
    else:
        ok = bool(fn(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)) and bool(fn(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD))
    _state["on"] = on if ok else _state["on"]
    return _state["on"]
