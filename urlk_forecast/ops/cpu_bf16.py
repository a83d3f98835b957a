"""Row copies between the CPU kernels' float scratch buffers and tensor storage, for float and bfloat16 storage.

The generated kernels (:mod:`urlk_forecast.ops.cpu_codegen`) copy every input plane once into a zero-padded scratch
buffer and every result plane once out of one; the hot loops only see the scratch, in the compute dtype (float32 or
float64). These copies are where bfloat16 storage is converted, so a bfloat16 call costs no torch casts and no
float32 copies of its activations: the kernels get bfloat16 tensors as ``uint16`` arrays (numba has no bfloat16
type) and

* load: ``bits << 16`` reinterpreted as float32 (exact: bfloat16 is the high half of a float32);
* store: float32 -> bfloat16 rounded to nearest, ties to even (``(u + 0x7FFF + ((u >> 16) & 1)) >> 16``), NaN kept
  a quiet NaN (rounding could carry a NaN's low mantissa bits into infinity), as torch's conversion does.

Both conversions are LLVM intrinsics on 32-bit integers (numba would widen integer arithmetic to 64 bits), so the
copy loops vectorise like the plain float copies. :func:`put` / :func:`get` (contiguous rows) and :func:`put_s` /
:func:`get_s` (strided destination or source, for the channel-blocked layout) pick the conversion by the storage
dtype at compile time (numba ``overload``); float storage is copied as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

__all__ = ["put", "get", "put_s", "get_s", "bf16_to_f32", "f32_to_bf16"]

_JIT = {"nogil": True}


@intrinsic
def bf16_to_f32(typingctx: Any, h: Any) -> Any:
    """uint16 bfloat16 bits -> float32 (exact)."""
    if h != types.uint16:
        return None

    def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> Any:
        u = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(u, ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def f32_to_bf16(typingctx: Any, f: Any) -> Any:
    """float32 -> uint16 bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN."""
    if f != types.float32:
        return None

    def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> Any:
        i32 = ir.IntType(32)

        def c(v: int) -> ir.Constant:
            return ir.Constant(i32, v)

        u = builder.bitcast(args[0], i32)
        odd = builder.and_(builder.lshr(u, c(16)), c(1))
        rounded = builder.lshr(builder.add(builder.add(u, c(0x7FFF)), odd), c(16))
        is_nan = builder.icmp_unsigned(">", builder.and_(u, c(0x7FFFFFFF)), c(0x7F800000))
        quiet = builder.or_(builder.lshr(u, c(16)), c(0x40))
        return builder.trunc(builder.select(is_nan, quiet, rounded), ir.IntType(16))

    return types.uint16(types.float32), codegen


@njit(inline="always", nogil=True)
def _same(v):  # type: ignore[no-untyped-def]
    """Float storage: no conversion."""
    return v


def _is_bf16(arr: Any) -> bool:
    """bfloat16 storage reaches the kernels as uint16 arrays."""
    return isinstance(arr, types.Array) and arr.dtype == types.uint16


# Python stubs; the implementations are the overloads below (chosen by the argument types when a kernel compiles)
def put(dst: np.ndarray, off: int, stride: int, src: np.ndarray) -> None:
    """``dst[off + i*stride + j] = src[i, j]`` (float scratch ``dst``; ``src`` float or bfloat16 bits)."""
    raise NotImplementedError("call from numba-compiled code")


def get(dst: np.ndarray, src: np.ndarray, off: int, stride: int, add: float) -> None:
    """``dst[i, j] = src[off + i*stride + j] + add`` (float scratch ``src``; ``dst`` float or bfloat16 bits)."""
    raise NotImplementedError("call from numba-compiled code")


def put_s(dst: np.ndarray, off: int, stride: int, step: int, src: np.ndarray) -> None:
    """``dst[off + i*stride + j*step] = src[i, j]``."""
    raise NotImplementedError("call from numba-compiled code")


def get_s(dst: np.ndarray, src: np.ndarray, off: int, stride: int, step: int, add: float) -> None:
    """``dst[i, j] = src[off + i*stride + j*step] + add``."""
    raise NotImplementedError("call from numba-compiled code")


@overload(put, jit_options=_JIT)
def _put(dst, off, stride, src):  # type: ignore[no-untyped-def]  # (numba: same signature as impl)
    cvt = bf16_to_f32 if _is_bf16(src) else _same

    def impl(dst, off, stride, src):  # type: ignore[no-untyped-def]
        H, W = src.shape
        for i in range(H):
            row = src[i]
            b = np.uint64(off + i * stride)  # unsigned indices: no wrap-around tests, vectorisable
            for j in range(np.uint64(W)):
                dst[b + j] = cvt(row[j])

    return impl


@overload(get, jit_options=_JIT)
def _get(dst, src, off, stride, add):  # type: ignore[no-untyped-def]  # (numba: same signature as impl)
    cvt = f32_to_bf16 if _is_bf16(dst) else _same

    def impl(dst, src, off, stride, add):  # type: ignore[no-untyped-def]
        H, W = dst.shape
        for i in range(H):
            row = dst[i]
            b = np.uint64(off + i * stride)
            for j in range(np.uint64(W)):
                row[j] = cvt(src[b + j] + add)

    return impl


@overload(put_s, jit_options=_JIT)
def _put_s(dst, off, stride, step, src):  # type: ignore[no-untyped-def]  # (numba: same signature as impl)
    cvt = bf16_to_f32 if _is_bf16(src) else _same

    def impl(dst, off, stride, step, src):  # type: ignore[no-untyped-def]
        H, W = src.shape
        su = np.uint64(step)
        for i in range(H):
            row = src[i]
            b = np.uint64(off + i * stride)
            for j in range(np.uint64(W)):
                dst[b + j * su] = cvt(row[j])

    return impl


@overload(get_s, jit_options=_JIT)
def _get_s(dst, src, off, stride, step, add):  # type: ignore[no-untyped-def]  # (numba: same signature as impl)
    cvt = f32_to_bf16 if _is_bf16(dst) else _same

    def impl(dst, src, off, stride, step, add):  # type: ignore[no-untyped-def]
        H, W = dst.shape
        su = np.uint64(step)
        for i in range(H):
            row = dst[i]
            b = np.uint64(off + i * stride)
            for j in range(np.uint64(W)):
                row[j] = cvt(src[b + j * su] + add)

    return impl
