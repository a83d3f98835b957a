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

The channel-blocked kernels transpose 16 channel planes into (pixel, 16 channels) rows and back: :func:`put_cb` /
:func:`get_cb`. A strided copy cannot vectorise the bfloat16 rounding (it would be ~7 scalar integer operations per
element, which made bf16 small-map forwards ~1.5x slower than float32), so for bfloat16 the strided part moves raw
16-bit values through a staging buffer laid out like the scratch, and the conversion runs as one contiguous,
vectorised pass over it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

__all__ = ["put", "get", "put_s", "get_s", "put_cb", "get_cb", "load", "store", "bf16_to_f32", "f32_to_bf16"]

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


def put_cb(dst, off, stride, src, n0, nl, stage):  # type: ignore[no-untyped-def]
    """Channel-blocked load: ``dst[off + i*stride + j*16 + l] = src[n0 + l, i, j]`` for ``l < nl`` (lanes >= nl are
    left alone; their values are never read back). ``stage``: (H*W*16,) buffer of ``src``'s dtype."""
    raise NotImplementedError("call from numba-compiled code")


def get_cb(dst, n0, nl, src, bias, has_bias, c0, zero, stage):  # type: ignore[no-untyped-def]
    """Channel-blocked store: ``dst[n0 + l, i, j] = src[(i*Wo + j)*16 + l] + (bias[c0 + l] if has_bias)`` for
    ``l < nl``. ``stage``: (Ho*Wo*16,) buffer of ``dst``'s dtype."""
    raise NotImplementedError("call from numba-compiled code")


_CB = 16  # channels per vector of the channel-blocked kernels (cpu_codegen.CB_LANES)


@njit(nogil=True)
def _raw_in(dst, off, stride, src):  # type: ignore[no-untyped-def]
    """``dst[off + i*stride + j*16] = src[i, j]``, no conversion."""
    H, W = src.shape
    for i in range(H):
        row = src[i]
        b = np.uint64(off + i * stride)
        for j in range(np.uint64(W)):
            dst[b + j * np.uint64(_CB)] = row[j]


@njit(nogil=True)
def _raw_out(dst, src, off, stride):  # type: ignore[no-untyped-def]
    """``dst[i, j] = src[off + i*stride + j*16]``, no conversion."""
    H, W = dst.shape
    for i in range(H):
        row = dst[i]
        b = np.uint64(off + i * stride)
        for j in range(np.uint64(W)):
            row[j] = src[b + j * np.uint64(_CB)]


@overload(put_cb, jit_options=_JIT)
def _put_cb(dst, off, stride, src, n0, nl, stage):  # type: ignore[no-untyped-def]
    if not _is_bf16(src):
        def impl(dst, off, stride, src, n0, nl, stage):  # type: ignore[no-untyped-def]
            for l in range(nl):
                put_s(dst, off + l, stride, _CB, src[n0 + l])
        return impl

    def impl_bf16(dst, off, stride, src, n0, nl, stage):  # type: ignore[no-untyped-def]
        H, W = src.shape[1], src.shape[2]
        for l in range(nl):  # raw 16-bit copies, strided
            _raw_in(stage, l, W * _CB, src[n0 + l])
        n = np.uint64(W * _CB)
        for i in range(H):  # conversion: contiguous rows of W*16
            b = np.uint64(off + i * stride)
            s0 = np.uint64(i) * n
            for q in range(n):
                dst[b + q] = bf16_to_f32(stage[s0 + q])
    return impl_bf16


@overload(get_cb, jit_options=_JIT)
def _get_cb(dst, n0, nl, src, bias, has_bias, c0, zero, stage):  # type: ignore[no-untyped-def]
    if not _is_bf16(dst):
        def impl(dst, n0, nl, src, bias, has_bias, c0, zero, stage):  # type: ignore[no-untyped-def]
            Wo = dst.shape[2]
            for l in range(nl):
                get_s(dst[n0 + l], src, l, Wo * _CB, _CB, bias[c0 + l] if has_bias else zero)
        return impl

    def impl_bf16(dst, n0, nl, src, bias, has_bias, c0, zero, stage):  # type: ignore[no-untyped-def]
        Ho, Wo = dst.shape[1], dst.shape[2]
        add = np.zeros(_CB, src.dtype)
        if has_bias:
            for l in range(nl):
                add[l] = bias[c0 + l]
        for p in range(np.uint64(Ho * Wo)):  # conversion: contiguous, 16 lanes per pixel
            b = p * np.uint64(_CB)
            for l in range(np.uint64(_CB)):
                stage[b + l] = f32_to_bf16(src[b + l] + add[l])
        for l in range(nl):  # raw 16-bit copies, strided
            _raw_out(dst[n0 + l], stage, l, Wo * _CB)
    return impl_bf16


# ----------------------------------------------------------------------- element access for the small-map kernels
def load(arr, i):  # type: ignore[no-untyped-def]
    """``arr[i]`` as float32 (``arr`` float32, or bfloat16 bits as uint16); inlined, so straight-line code that
    loads consecutive elements stays vectorisable (:mod:`urlk_forecast.ops.small_codegen`)."""
    raise NotImplementedError("call from numba-compiled code")


def store(arr, i, v):  # type: ignore[no-untyped-def]
    """``arr[i] = v`` (float32 ``v``; rounded to bfloat16 bits when ``arr`` is uint16); inlined."""
    raise NotImplementedError("call from numba-compiled code")


@overload(load, inline="always", jit_options=_JIT)
def _load(arr, i):  # type: ignore[no-untyped-def]
    if _is_bf16(arr):
        return lambda arr, i: bf16_to_f32(arr[i])
    return lambda arr, i: arr[i]


@overload(store, inline="always", jit_options=_JIT)
def _store(arr, i, v):  # type: ignore[no-untyped-def]
    if _is_bf16(arr):
        def impl_bf16(arr, i, v):  # type: ignore[no-untyped-def]
            arr[i] = f32_to_bf16(v)
        return impl_bf16

    def impl(arr, i, v):  # type: ignore[no-untyped-def]
        arr[i] = v
    return impl
