"""Work sharing for numba kernels through atomic counters (used by :mod:`urlk_forecast.ops.cpu_small`).

Threads that run one kernel over the same range of planes take the next few planes from a shared counter, in the
kernel, instead of in Python-level chunks: a pool thread that starts late (waking one costs ~10-100 us on the dev
machine, against calls of 0.1-0.3 ms) just takes fewer planes. The calling thread, once the planes are all taken,
waits for the threads still working by spinning on the ``done`` count (:func:`wait`, without the GIL) rather than
on a future: a blocked thread is woken by the futex, another ~10-100 us on an idle virtual core.

A :func:`state` array holds the counters on their own cache lines: the plane counter (``COUNT``) and the
``STARTED`` / ``DONE`` counts of the threads in the kernel. A thread counts itself started before it takes a plane
and done after its last store, so when ``DONE == STARTED`` after the caller's own part, every thread that took a
plane has finished; a thread that starts later finds no plane left and writes nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["COUNT", "STARTED", "DONE", "state", "fetch_add", "pointer", "wait"]

COUNT = 8
STARTED = 16
DONE = 17


def state() -> np.ndarray:
    """Fresh counters (all zero). ``COUNT`` sits at byte 64 and the thread counts at 128 of a 256-byte buffer, so
    each lies on a 64-byte line of its own inside the buffer: an atomic add on a line shared with a kernel's scratch
    (numba allocates it next to small arrays) would stall that scratch's stores on the other core."""
    return np.zeros(32, np.int64)


@intrinsic
def fetch_add(typingctx: Any, arr: Any, i: Any, step: Any) -> Any:
    """``old = arr[i]; arr[i] += step; return old`` as one sequentially consistent atomic operation (``arr`` a
    C-contiguous int64 array, ``i`` in range: not checked)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and isinstance(i, types.Integer)
            and isinstance(step, types.Integer)):
        return None

    def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> Any:
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.gep(data, [context.cast(builder, args[1], sig.args[1], types.int64)])
        inc = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, inc, "seq_cst")

    return types.int64(arr, i, step), codegen


@intrinsic
def pointer(typingctx: Any, addr: Any, dtype_ref: Any) -> Any:
    """A typed pointer from an integer address (the array arguments of :mod:`urlk_forecast.ops.cpu_team`'s
    wrappers)."""
    if not isinstance(addr, types.Integer) or not isinstance(dtype_ref, types.NumberClass):
        return None
    ptrty = types.CPointer(dtype_ref.dtype)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], context.get_value_type(ptrty))

    return ptrty(addr, dtype_ref), codegen


@njit(nogil=True)
def wait(st: np.ndarray) -> None:  # pragma: no cover - compiled
    """Spin (without the GIL) until every thread that started the kernel of ``st`` is done."""
    while fetch_add(st, DONE, 0) < fetch_add(st, STARTED, 0):
        pass
