"""Depthwise convolution on CPU: numba kernels generated as straight-line code, compiled once and cached on disk.

Problem (stride 1, one filter per channel, pads ``top/left`` with the output size fixing ``bottom/right``)::

    y[n, i, j]  = sum_{a,b} w[c, a, b] * x[n, i + a*dh - top, j + b*dw - left]    (+ bias[c])
    gx          = the same correlation of gy with the kernel rotated by 180 degrees (padding (K-1)*d - pad)
    gw[c, a, b] = sum_{batch} sum_{i,j} gy[n, i, j] * x[n, i + a*dh - top, j + b*dw - left]

Design (why it is fast):

* Work is split over the ``B*C`` planes (``prange`` over one chunk of planes per thread). Each thread owns scratch
  buffers: the input plane is copied once into a zero-padded buffer, so the hot loops have no bounds checks.
* The forward kernel computes a block of ``R`` output rows x ``V`` output columns held in ``R*V`` scalar
  accumulators. Per kernel tap it loads the weight once and does ``R`` vector FMAs against rows of the padded input
  (innermost: ``V`` contiguous columns). numba has no SIMD intrinsics and no unroll pragma, so the block is written
  out as straight-line code by :func:`generate_source`; LLVM's SLP vectorizer turns each row of ``V`` accumulators
  into one AVX-512 (V=16, float32) / AVX2 / SSE register. The accumulators stay in registers across all taps.
* Taps whose rows (per row block) or columns (per column block) read only zero padding are skipped: with K=31 on a
  32x32 map that is 30-40 % of the work, and on the 3x4 maps of a UniRepLKNet stage 3 it is 90 %.
* The backward pass is one sweep over the planes: grad-input is the forward kernel on the padded output gradient
  with the flipped kernel; grad-weight keeps ``T`` taps x ``V`` lanes of partial sums in registers, loading each
  gradient vector once for ``T`` FMAs. Per-plane partial sums (``B*C x K*K``) are reduced over the batch in float64,
  so the result does not depend on the thread count.
* Floating point: ``fastmath`` minus reassociation (``contract`` lets LLVM fuse multiply-adds). Without ``reassoc``
  LLVM's loop vectorizer cannot turn the tap loops into (slow) gather reductions, which leaves them to the SLP
  vectorizer. Summation order is fixed, results are deterministic.

numba disables the SLP vectorizer by default (``NUMBA_SLP_VECTORIZE=0``); it is switched on only while these
kernels are compiled (:func:`_compile_ctx`, under numba's compiler lock). The generated module is written to a user
cache directory (``URLK_CACHE_DIR``, else ``$XDG_CACHE_HOME/urlk_forecast``, else a temp dir) so numba's on-disk
cache (``cache=True``) works and the compilation (~10 s per kernel family and dtype) happens once per machine.

The public functions take and return torch CPU tensors (zero-copy ``.numpy()`` views); float32 and float64.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import itertools
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np
import torch

__all__ = [
    "SUPPORTED_DTYPES",
    "supports",
    "forward",
    "grad_input",
    "grad_weight",
    "backward",
    "generate_source",
    "cache_dir",
    "warmup",
]

SUPPORTED_DTYPES = (torch.float32, torch.float64)

#: (lanes V, rows R) of the forward register block: 16 lanes for wide maps (8 rows when tall), 8 or 4 for narrow ones
_FWD_VARIANTS = ((32, 4), (16, 8), (16, 4), (8, 4), (4, 4))
#: taps held at once by the grad-weight kernel
_GW_TAPS = 8
#: gradient rows loaded at once by the unit-dilation grad-weight kernel
_GW_ROWS = 4
_GENERATOR_VERSION = "5"

_FASTMATH = "{'contract', 'nnan', 'ninf', 'nsz', 'arcp', 'afn'}"
#: decorator of every generated kernel
_JIT = f"@njit(fastmath={_FASTMATH}, cache=True, nogil=True, pipeline_class=NoSSACompiler)"

_lock = threading.RLock()
_module: ModuleType | None = None
_compiled: set[tuple[str, tuple[str, ...]]] = set()


# --------------------------------------------------------------------------------------------- code generation
def _u(k: int) -> str:
    return f"np.uint64({k})"


def _lo_bound(idx: str, span: int, pad: str, d: str) -> str:
    """First tap index k with idx + span - 1 + k*d >= pad (ceil division without a divide when d == 1)."""
    return f"max(0, {pad} - {idx} - {span - 1}) if {d} == 1 else max(0, -(({idx} + {span - 1} - {pad}) // {d}))"


def _hi_bound(idx: str, pad: str, size: str, d: str, K: str, lo: str) -> str:
    """One past the last tap index k with idx + k*d <= pad + size - 1, clamped to [lo, K]."""
    return (f"max({lo}, min({K}, {pad} + {size} - {idx})) if {d} == 1 else "
            f"max({lo}, min({K}, ({pad} + {size} - 1 - {idx}) // {d} + 1))")


def _copy_vec(e, ind: str, V: int, dst: str, src: str, dst_arr: str, src_arr: str) -> None:
    """V-element copy written as V loads then V stores, so the SLP vectorizer needs no alias analysis."""
    e(f"{ind}sv = {src_arr}[{src}:]")
    e(f"{ind}dv = {dst_arr}[{dst}:]")
    e(ind + "; ".join(f"v{l} = sv[{l}]" for l in range(V)))
    e(ind + "; ".join(f"dv[{l}] = v{l}" for l in range(V)))


def _fwd_ring_source(CW: int, R: int) -> list[str]:
    """Forward kernel for unit row dilation: R output rows x CW columns of accumulators; per kernel column the
    kernel rows are taken R at a time and the 2R-1 input rows they touch are loaded once into registers, so every
    loaded vector feeds up to R FMAs (the loads, not the FMAs, bound a naive depthwise conv). R is a power of two."""
    L: list[str] = []
    e = L.append
    e(_JIT)
    e(f"def fwd_plane_{CW}x{R}(xp, Wp, wt, woff, Kh, Kw, dw, o, Wc, Ho, Wo, pt, pl, H, W, zero):")
    e("    Wpu = np.uint64(Wp); dwu = np.uint64(dw); Khu = np.uint64(Kh); wou = np.uint64(woff)")
    e(f"    for j0 in range(0, Wo, {CW}):")
    e("        kwlo = " + _lo_bound("j0", CW, "pl", "dw"))
    e("        kwhi = " + _hi_bound("j0", "pl", "W", "dw", "Kw", "kwlo"))
    e(f"        for i0 in range(0, Ho, {R}):")
    e(f"            khlo = max(0, pt - i0 - {R - 1})")
    e("            khhi = max(khlo, min(Kh, pt + H - i0))")
    e(f"            m = (khhi - khlo) // {R}")
    e(f"            rem = khhi - khlo - m * {R}")
    for r in range(R):
        e("            " + "; ".join(f"a{r}_{l} = zero" for l in range(CW)))
    e("            for kw in range(np.uint64(kwlo), np.uint64(kwhi)):")
    e("                kb = np.uint64(i0 + khlo) * Wpu + np.uint64(j0) + kw * dwu")
    e("                wb = wou + kw * Khu + np.uint64(khlo)")
    e("                for it in range(m):")
    _ring_block(e, "                    ", R, R, CW, "m")
    e(f"                    kb += {_u(R)} * Wpu")
    e(f"                    wb += {_u(R)}")
    # the remaining rem < R kernel rows in blocks of R/2, R/4, ..., 1 rows (binary decomposition of rem)
    step = R // 2
    while step >= 1:
        e(f"                if rem & {step}:")
        _ring_block(e, "                    ", step, R, CW, f"r{step}")
        e(f"                    kb += {_u(step)} * Wpu")
        e(f"                    wb += {_u(step)}")
        step //= 2
    for r in range(R):
        e(f"            v = o[(i0 + {r}) * Wc + j0:]")
        e("            " + "; ".join(f"v[{l}] = a{r}_{l}" for l in range(CW)))
    return L


def _ring_block(e, ind: str, steps: int, R: int, CW: int, tag: str) -> None:
    """``steps`` consecutive kernel rows for the R accumulator rows: load rows kb + q*Wp, q < steps + R - 1, once.

    Each accumulator gets one assignment per block (a sum of ``steps`` products, added left to right, i.e. in the
    same order as one ``+=`` per kernel row): numba's SSA pass is superlinear in re-assignments, and this keeps
    compilation to seconds. Locals get a per-block ``tag`` so that each is defined once.
    """
    for q in range(steps + R - 1):
        e(f"{ind}v = xp[kb + {_u(q)} * Wpu:]")
        e(ind + "; ".join(f"x{tag}{q}_{l} = v[{l}]" for l in range(CW)))
    for s in range(steps):
        e(f"{ind}w{tag}{s} = wt[wb + {_u(s)}]")
        for r in range(R):
            for l in range(CW):
                e(f"{ind}a{r}_{l} += w{tag}{s} * x{tag}{s + r}_{l}")


def _fwd_dilated_source(CW: int, R: int) -> list[str]:
    """Forward kernel for any row dilation: R x CW accumulators, one weight broadcast and R vector FMAs per tap
    straight from the padded plane."""
    L: list[str] = []
    e = L.append
    e(_JIT)
    e(f"def fwd_dil_{CW}x{R}(xp, Wp, wt, woff, Kh, Kw, dh, dw, o, Wc, Ho, Wo, pt, pl, H, W, zero):")
    e("    Wpu = np.uint64(Wp); dwu = np.uint64(dw); dhW = np.uint64(dh * Wp); Khu = np.uint64(Kh)")
    e("    wou = np.uint64(woff)")
    e(f"    for j0 in range(0, Wo, {CW}):")
    e("        kwlo = " + _lo_bound("j0", CW, "pl", "dw"))
    e("        kwhi = " + _hi_bound("j0", "pl", "W", "dw", "Kw", "kwlo"))
    e(f"        for i0 in range(0, Ho, {R}):")
    e("            khlo = " + _lo_bound("i0", R, "pt", "dh"))
    e("            khhi = " + _hi_bound("i0", "pt", "H", "dh", "Kh", "khlo"))
    for r in range(R):
        e("            " + "; ".join(f"a{r}_{l} = zero" for l in range(CW)))
    e("            for kw in range(np.uint64(kwlo), np.uint64(kwhi)):")
    e("                kb = np.uint64(i0) * Wpu + np.uint64(j0) + kw * dwu")
    e("                wb = wou + kw * Khu")
    e("                for kh in range(np.uint64(khlo), np.uint64(khhi)):")
    e("                    wv = wt[wb + kh]")
    e("                    b0 = kb + kh * dhW")
    for r in range(R):
        e(f"                    v = xp[b0 + {_u(r)} * Wpu:]")
        for l in range(CW):
            e(f"                    a{r}_{l} += wv * v[{l}]")
    for r in range(R):
        e(f"            v = o[(i0 + {r}) * Wc + j0:]")
        e("            " + "; ".join(f"v[{l}] = a{r}_{l}" for l in range(CW)))
    return L


def _gw_plane_source(V: int, T: int) -> list[str]:
    """Grad-weight kernel for one plane, added into ``gout[goff:goff+Kh*Kw]``: per gy column chunk, aligned shifted
    copies of x, then T taps x V lanes of partial sums in registers over the rows (one gradient vector load feeds
    T FMAs)."""
    L: list[str] = []
    e = L.append
    e(_JIT)
    e(f"def gw_plane_{V}x{T}(xp, Wx, Hx, gp, Wgp, gr0, gc0, Ho, Wo, Kh, Kw, dh, dw, pt, pl, H, W, gout, goff, acc,")
    e("                     zero, S, soff):")
    e(f"    SL = np.uint64(Hx * {V})")
    e("    Wxu = np.uint64(Wx); Wgu = np.uint64(Wgp); dwu = np.uint64(dw); su = np.uint64(soff)")
    e(f"    for j0 in range(0, Wo, {V}):")
    e(f"        jl = min(j0 + {V}, Wo) - 1")
    e("        kwlo = max(0, pl - jl) if dw == 1 else max(0, -((jl - pl) // dw))")
    e("        kwhi = " + _hi_bound("j0", "pl", "W", "dw", "Kw", "kwlo"))
    e("        j0u = np.uint64(j0)")
    e("        for kw in range(np.uint64(kwlo), np.uint64(kwhi)):")
    e("            sb = su + kw * SL")
    e("            cb = j0u + kw * dwu")
    e("            for rho in range(np.uint64(pt), np.uint64(pt + H)):")
    e("                src = rho * Wxu + cb")
    e(f"                dst = sb + rho * {_u(V)}")
    _copy_vec(e, "                ", V, "dst", "src", "S", "xp")
    e("        for kh in range(Kh):")
    e("            ilo = max(0, pt - kh * dh)")
    e("            ihi = min(Ho, pt + H - kh * dh)")
    e("            if ilo >= ihi:")
    e("                continue")
    e(f"            for kw0 in range(kwlo, kwhi, {T}):")
    for t in range(T):
        e("                " + "; ".join(f"s{t}_{l} = zero" for l in range(V)))
    e(f"                xb = su + np.uint64(kw0) * SL + np.uint64((ilo + kh * dh) * {V})")
    e("                gb = np.uint64(ilo + gr0) * Wgu + np.uint64(gc0) + j0u")
    e("                for i in range(np.uint64(ilo), np.uint64(ihi)):")
    e("                    gv = gp[gb:]")
    e("                    " + "; ".join(f"g{l} = gv[{l}]" for l in range(V)))
    for t in range(T):
        e(f"                    v = S[xb + {_u(t)} * SL:]")
        for l in range(V):
            e(f"                    s{t}_{l} += g{l} * v[{l}]")
    e(f"                    xb += {_u(V)}")
    e("                    gb += Wgu")
    # spill the partial sums with contiguous stores (a lane pattern the SLP vectorizer packs like the accumulation;
    # a horizontal sum tree here would make it re-pack the accumulators), then reduce them
    for t in range(T):
        e("                " + "; ".join(f"acc[{t * V + l}] = s{t}_{l}" for l in range(V)))
    e("                base = goff + kh * Kw + kw0")
    e(f"                for t in range(min({T}, kwhi - kw0)):")
    e("                    tot = zero")
    e(f"                    for l in range({V}):")
    e(f"                        tot += acc[t * {V} + l]")
    e("                    gout[base + t] += tot")
    return L


def _gw_ring_source(V: int, T: int, U: int) -> list[str]:
    """Grad-weight kernel for unit row dilation, added into lane partial sums ``glane[(kh*Kw + kw)*V + l]``
    (float64): per kernel column, T kernel rows at a time; the rows of the gradient are taken U at a time and the
    U + T - 1 input rows they meet are loaded once, so each loaded vector feeds up to T (or U) FMAs."""
    L: list[str] = []
    e = L.append
    e(_JIT)
    e(f"def gw_ring_{V}x{T}(xp, Wx, gp, Wgp, gr0, gc0, Ho, Wo, Kh, Kw, dw, pt, pl, H, W, glane, acc, zero):")
    e("    Wxu = np.uint64(Wx); Wgu = np.uint64(Wgp); dwu = np.uint64(dw)")
    e(f"    for j0 in range(0, Wo, {V}):")
    e(f"        jl = min(j0 + {V}, Wo) - 1")
    e("        kwlo = max(0, pl - jl) if dw == 1 else max(0, -((jl - pl) // dw))")
    e("        kwhi = " + _hi_bound("j0", "pl", "W", "dw", "Kw", "kwlo"))
    e("        for kw in range(kwlo, kwhi):")
    e(f"            for kh0 in range(0, Kh, {T}):")
    e(f"                ilo = max(0, pt - kh0 - {T - 1})")
    e("                ihi = min(Ho, pt + H - kh0)")
    e("                if ilo >= ihi:")
    e("                    continue")
    for t in range(T):
        e("                " + "; ".join(f"s{t}_{l} = zero" for l in range(V)))
    e("                xb = np.uint64(ilo + kh0) * Wxu + np.uint64(j0) + np.uint64(kw) * dwu")
    e("                gb = np.uint64(ilo + gr0) * Wgu + np.uint64(gc0 + j0)")
    e(f"                m = (ihi - ilo) // {U}")
    e("                for it in range(m):")
    ind = "                    "
    for u in range(U):
        e(f"{ind}p{u} = gb + {_u(u)} * Wgu")
        e(f"{ind}v = gp[p{u}:]")
        e(ind + "; ".join(f"g{u}_{l} = v[{l}]" for l in range(V)))
    for q in range(U + T - 1):
        e(f"{ind}v = xp[xb + {_u(q)} * Wxu:]")
        e(ind + "; ".join(f"x{q}_{l} = v[{l}]" for l in range(V)))
    for u in range(U):
        for t in range(T):
            for l in range(V):
                e(f"{ind}s{t}_{l} += g{u}_{l} * x{u + t}_{l}")
    e(f"{ind}xb += {_u(U)} * Wxu")
    e(f"{ind}gb += {_u(U)} * Wgu")
    e(f"                for it in range(ihi - ilo - m * {U}):")
    e(f"{ind}v = gp[gb:]")
    e(ind + "; ".join(f"h{l} = v[{l}]" for l in range(V)))
    for t in range(T):
        e(f"{ind}v = xp[xb + {_u(t)} * Wxu:]")
        for l in range(V):
            e(f"{ind}s{t}_{l} += h{l} * v[{l}]")
    e(f"{ind}xb += Wxu")
    e(f"{ind}gb += Wgu")
    for t in range(T):
        e("                " + "; ".join(f"acc[{t * V + l}] = s{t}_{l}" for l in range(V)))
    e(f"                for t in range(min({T}, Kh - kh0)):")
    e(f"                    gl = ((kh0 + t) * Kw + kw) * {V}")
    e(f"                    for l in range({V}):")
    e(f"                        glane[gl + l] += acc[t * {V} + l]")
    return L


def _drivers_source(V: int, R: int, T: int, GV: int) -> list[str]:
    """Serial drivers over the planes ``[lo, hi)`` (threads are run by the caller, see :func:`_run_chunks`)."""
    s = f"{V}x{R}"
    return f'''

{_JIT}
def fwd_{s}(x, wt, bias, has_bias, out, C, Kh, Kw, pt, pl, dh, dw, lo, hi, zero):
    P, H, W = x.shape
    Ho = out.shape[1]
    Wo = out.shape[2]
    Hc = (Ho + {R - 1}) // {R} * {R}
    Wc = (Wo + {V - 1}) // {V} * {V}
    Hp = pt + H + {R - 1}
    Wp = pl + W + {V - 1}
    xp = np.zeros(Hp * Wp, x.dtype)
    o = np.empty(Hc * Wc, x.dtype)
    for n in range(lo, hi):
        c = n % C
        xn = x[n]
        for i in range(H):
            r = (i + pt) * Wp + pl
            for j in range(W):
                xp[r + j] = xn[i, j]
        if dh == 1:
            fwd_plane_{s}(xp, Wp, wt, c * Kh * Kw, Kh, Kw, dw, o, Wc, Ho, Wo, pt, pl, H, W, zero)
        else:
            fwd_dil_{s}(xp, Wp, wt, c * Kh * Kw, Kh, Kw, dh, dw, o, Wc, Ho, Wo, pt, pl, H, W, zero)
        bv = bias[c] if has_bias else zero
        on = out[n]
        for i in range(Ho):
            r = i * Wc
            for j in range(Wo):
                on[i, j] = o[r + j] + bv


{_JIT}
def bwd_{s}(x, gy, wtflip, need_gx, need_gw, gx, gwa, C, Kh, Kw, pt, pl, dh, dw, by_channel, lo, hi, zero):
    # by_channel: [lo, hi) are channels, gwa (C, Kh*Kw) float64 accumulates over the batch (no partials);
    # else [lo, hi) are planes and gwa (planes, Kh*Kw) receives per-plane sums (reduced by the caller)
    P, H, W = x.shape
    B = P // C
    KK = Kh * Kw
    Ho = gy.shape[1]
    Wo = gy.shape[2]
    # grad-input: the forward kernel on gy padded by (ptb, plb) with the flipped kernel, output H x W
    ptb = (Kh - 1) * dh - pt
    plb = (Kw - 1) * dw - pl
    Hc = (H + {R - 1}) // {R} * {R}
    Wc = (W + {V - 1}) // {V} * {V}
    Hg = ptb + Ho + {R - 1}
    Wg = plb + Wo + {V - 1}
    gp = np.zeros(Hg * Wg, x.dtype)
    o = np.empty(Hc * Wc, x.dtype)
    # grad-weight: only image rows of x are read; shifted copies for Kw + T - 1 taps
    Wx = max(pl + W, (Wo + {GV - 1}) // {GV} * {GV} + (Kw - 1) * dw)
    Hx = pt + H + {T}  # zero rows below the image: the unit-dilation kernel reads up to T - 1 rows past it
    xp = np.zeros(Hx * Wx if need_gw else 1, x.dtype)
    S2, soff2 = _aligned_buffer((Kw + {T - 1}) * Hx * {GV} if need_gw and dh > 1 else 0, x)
    acc = np.empty({T * GV}, x.dtype)
    glane = np.zeros(KK * {GV} if need_gw and dh == 1 else 1, np.float64)
    items = (hi - lo) * B if by_channel else hi - lo
    for k in range(items):
        if by_channel:
            q = k // B
            c = lo + q
            n = (k - q * B) * C + c
            goff = c * KK
            fresh = k - q * B == 0
            last = k - q * B == B - 1
        else:
            n = lo + k
            c = n % C
            goff = n * KK
            fresh = True
            last = True
        gn = gy[n]
        for i in range(Ho):
            r = (i + ptb) * Wg + plb
            for j in range(Wo):
                gp[r + j] = gn[i, j]
        if need_gx:
            if dh == 1:
                fwd_plane_{s}(gp, Wg, wtflip, c * KK, Kh, Kw, dw, o, Wc, H, W, ptb, plb, Ho, Wo, zero)
            else:
                fwd_dil_{s}(gp, Wg, wtflip, c * KK, Kh, Kw, dh, dw, o, Wc, H, W, ptb, plb, Ho, Wo, zero)
            gxn = gx[n]
            for i in range(H):
                r = i * Wc
                for j in range(W):
                    gxn[i, j] = o[r + j]
        if need_gw:
            if fresh:
                for t in range(KK):
                    gwa[goff + t] = 0.0
            xn = x[n]
            for i in range(H):
                r = (i + pt) * Wx + pl
                for j in range(W):
                    xp[r + j] = xn[i, j]
            if dh == 1:
                if fresh:
                    glane[:] = 0.0
                gw_ring_{GV}x{T}(xp, Wx, gp, Wg, ptb, plb, Ho, Wo, Kh, Kw, dw, pt, pl, H, W, glane, acc, zero)
                if last:  # lane partial sums -> per-tap sums, once per channel (or plane)
                    for t in range(KK):
                        tot = 0.0
                        for l in range({GV}):
                            tot += glane[t * {GV} + l]
                        gwa[goff + t] = tot
            else:
                gw_plane_{GV}x{T}(xp, Wx, Hx, gp, Wg, ptb, plb, Ho, Wo, Kh, Kw, dh, dw, pt, pl, H, W, gwa, goff, acc,
                                 zero, S2, soff2)
'''.splitlines()


def generate_source() -> str:
    """Python source of the kernel module (deterministic; its hash names the cached file)."""
    lines = [
        '"""Generated by urlk_forecast.ops.cpu_kernels.generate_source - do not edit."""',
        "import numpy as np",
        "from numba import njit",
        "",
        "from urlk_forecast.ops.cpu_kernels import NoSSACompiler",
        "",
        "",
        "@njit(cache=True, nogil=True)",
        "def _aligned_buffer(n, like):",
        '    """Zeroed buffer of n elements starting at a 64-byte boundary: (array, offset of that boundary)."""',
        "    S = np.zeros(n + 16, like.dtype)",
        "    return S, ((64 - S.ctypes.data % 64) % 64) // S.itemsize",
    ]
    for V in sorted({min(v, 16) for v, _ in _FWD_VARIANTS}, reverse=True):
        lines += ["", ""] + _gw_plane_source(V, _GW_TAPS)
        lines += ["", ""] + _gw_ring_source(V, _GW_TAPS, _GW_ROWS)
    for V, R in _FWD_VARIANTS:
        lines += ["", ""] + _fwd_ring_source(V, R)
        lines += ["", ""] + _fwd_dilated_source(V, R)
        lines += _drivers_source(V, R, _GW_TAPS, min(V, 16))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ loading, compiling
def _writable(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


def cache_dir() -> str:
    """Directory of the generated kernel module and numba's compiled cache (first writable candidate)."""
    candidates = []
    if os.environ.get("URLK_CACHE_DIR"):
        candidates.append(os.path.join(os.environ["URLK_CACHE_DIR"], "dwconv"))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates.append(os.path.join(xdg, "urlk_forecast", "dwconv"))
    uid = os.getuid() if hasattr(os, "getuid") else 0
    candidates.append(os.path.join(tempfile.gettempdir(), f"urlk_forecast-{uid}", "dwconv"))
    for path in candidates:
        if _writable(path):
            return path
    raise OSError(f"no writable cache directory for the dwconv kernels among {candidates}; set URLK_CACHE_DIR")


def _load() -> ModuleType:
    global _module
    with _lock:
        if _module is not None:
            return _module
        src = generate_source()
        digest = hashlib.sha256((src + _GENERATOR_VERSION).encode()).hexdigest()[:16]
        name = f"urlk_dwconv_cpu_{digest}"
        path = os.path.join(cache_dir(), name + ".py")
        if not os.path.exists(path) or open(path, encoding="utf-8").read() != src:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".py")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(src)
            os.replace(tmp, path)
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        _module = mod
        return mod


def _no_ssa_compiler() -> type:
    from numba.core.compiler import CompilerBase, DefaultPassBuilder

    class NoSSACompiler(CompilerBase):
        """numba's nopython pipeline without its SSA reconstruction pass.

        That pass is superlinear in the number of re-assigned variables, and the generated kernels re-assign
        hundreds of accumulators: with it a kernel takes ~3x longer to compile. LLVM's mem2reg builds SSA form
        from numba's per-variable allocas anyway, so the machine code is the same.
        """

        def define_pipelines(self):  # type: ignore[no-untyped-def]
            self.state.flags.enable_ssa = False
            return [DefaultPassBuilder.define_nopython_pipeline(self.state)]

    NoSSACompiler.__module__ = __name__
    NoSSACompiler.__qualname__ = "NoSSACompiler"
    return NoSSACompiler


def __getattr__(name: str) -> Any:  # NoSSACompiler is built on first use: importing numba costs ~0.5 s
    if name == "NoSSACompiler":
        cls = _no_ssa_compiler()
        globals()["NoSSACompiler"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextlib.contextmanager
def _compile_ctx() -> Iterator[None]:
    """Enable LLVM's SLP vectorizer while our kernels compile (numba's default is off); restore afterwards."""
    from numba.core import config
    from numba.core.compiler_lock import global_compiler_lock

    with global_compiler_lock:
        old = config.SLP_VECTORIZE
        config.SLP_VECTORIZE = 1
        try:
            yield
        finally:
            config.SLP_VECTORIZE = old


def _compiled_fn(name: str, args: tuple[Any, ...], dtype: torch.dtype) -> Any:
    """The generated driver ``name``, compiled for ``args`` (or loaded from the disk cache) under
    :func:`_compile_ctx`. Drivers are always called with the same argument kinds for a dtype, so (name, dtype) is
    the compile key and the per-call cost is one set lookup."""
    fn = getattr(_load(), name)
    key = (name, str(dtype))
    if key not in _compiled:
        import numba

        with _lock, _compile_ctx():
            fn.compile(tuple(numba.typeof(a) for a in args))
            _compiled.add(key)
    return fn


#: below this many multiply-adds per thread, waking another thread costs more than it saves
_MIN_WORK_PER_THREAD = 300_000
_pool: ThreadPoolExecutor | None = None
_FORCE_VARIANT = ""  # tests/debugging: force one register block ("32x4", "16x8", ...) for every call
_pool_key: tuple[int, int] = (0, 0)


def _get_pool(workers: int) -> ThreadPoolExecutor:
    """Shared worker threads (recreated after a fork or when more are needed)."""
    global _pool, _pool_key
    with _lock:
        if _pool is None or _pool_key[0] != os.getpid() or _pool_key[1] < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="urlk-dwconv")
            _pool_key = (os.getpid(), workers)
        return _pool


def _threads_for(units: int, work: float) -> int:
    """Threads worth using: at most ``torch.get_num_threads()``, one per unit, one per ``_MIN_WORK_PER_THREAD``."""
    return max(1, min(torch.get_num_threads(), units, int(work // _MIN_WORK_PER_THREAD)))


def _run(name: str, head: tuple[Any, ...], units: int, threads: int, dtype: torch.dtype) -> None:
    """Run driver ``name(*head, lo, hi, zero)`` over ``units`` work units (planes or channels) on ``threads``
    threads (the kernels release the GIL).

    The units are cut into ~4 chunks per thread that the threads (the caller included) pull from a shared counter:
    on a busy machine a worker that is scheduled late just takes fewer chunks instead of stalling the call.
    """
    zero = np.float32(0) if dtype == torch.float32 else np.float64(0)
    fn = _compiled_fn(name, head + (0, units, zero), dtype)
    if threads <= 1:
        fn(*head, 0, units, zero)
        return
    chunks = min(units, 4 * threads)
    bounds = [units * k // chunks for k in range(chunks + 1)]
    counter = itertools.count()  # next() on it is atomic under the GIL

    def work() -> None:
        while (k := next(counter)) < chunks:
            fn(*head, bounds[k], bounds[k + 1], zero)

    futures = [_get_pool(threads - 1).submit(work) for _ in range(threads - 1)]
    try:
        work()
    finally:
        for f in futures:
            f.result()


def _variant(out_h: int, out_w: int) -> str:
    """Register block (lanes x rows) for an output plane: lanes by width; 4 rows, or 8 for 16 lanes."""
    if _FORCE_VARIANT:
        return _FORCE_VARIANT
    lanes = 32 if out_w > 16 else 16 if out_w > 8 else 8 if out_w > 4 else 4
    rows = 8 if lanes == 16 and out_h >= 8 else 4  # 16 lanes: 8 rows give 8 independent FMA chains
    assert (lanes, rows) in _FWD_VARIANTS
    return f"{lanes}x{rows}"


# ----------------------------------------------------------------------------------------------- torch layer
Pad = int | Sequence[int]


def _pads(pad: Pad) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) from an int, an (h, w) pair or a 4-tuple."""
    if isinstance(pad, int):
        return pad, pad, pad, pad
    p = tuple(int(v) for v in pad)
    if len(p) == 2:
        return p[0], p[0], p[1], p[1]
    if len(p) == 4:
        return p  # type: ignore[return-value]
    raise ValueError(f"pad must be an int, an (h, w) pair or (top, bottom, left, right), got {pad!r}")


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or an (h, w) pair, got {v!r}")
    return t  # type: ignore[return-value]


def supports(x: torch.Tensor, w: torch.Tensor, pad: Pad = 0, dil: int | Sequence[int] = 1) -> bool:
    """Whether these kernels handle the call (CPU, float32/float64, depthwise weight, 0 <= pad <= (K-1)*d)."""
    if x.device.type != "cpu" or w.device.type != "cpu" or x.dim() != 4 or w.dim() != 4:
        return False
    if x.dtype not in SUPPORTED_DTYPES or w.dtype != x.dtype:
        return False
    if w.shape[1] != 1 or w.shape[0] != x.shape[1]:
        return False
    try:
        t, b, l, r = _pads(pad)
        dh, dw = _pair(dil, "dil")
    except (TypeError, ValueError):
        return False
    kh, kw = w.shape[-2:]
    if dh < 1 or dw < 1 or kh < 1 or kw < 1:
        return False
    if min(t, b, l, r) < 0 or max(t, b) > (kh - 1) * dh or max(l, r) > (kw - 1) * dw:
        return False
    return x.shape[2] + t + b - (kh - 1) * dh > 0 and x.shape[3] + l + r - (kw - 1) * dw > 0


def _check(x: torch.Tensor, w: torch.Tensor, pad: Pad, dil: int | Sequence[int], what: str) -> None:
    if not supports(x, w, pad, dil):
        raise ValueError(
            f"cpu_kernels.{what}: unsupported call (input {x.dtype} {tuple(x.shape)} on {x.device}, weight {w.dtype} "
            f"{tuple(w.shape)}, pad {pad!r}, dil {dil!r}); need CPU float32/float64, weight (C, 1, KH, KW), "
            "0 <= pad <= (K-1)*dilation and a non-empty output"
        )


def _empty(shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Output buffer; NaN-filled when URLK_DWCONV_POISON=1 so elements a kernel fails to write are caught."""
    if os.environ.get("URLK_DWCONV_POISON", "0") not in ("", "0"):
        return torch.full(shape, float("nan"), dtype=dtype or like.dtype)
    return torch.empty(shape, dtype=dtype or like.dtype)


def forward(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pad: Pad, dil: int | Sequence[int],
            out: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise conv2d, stride 1: x (B, C, H, W), w (C, 1, KH, KW) -> (B, C, Ho, Wo), NCHW contiguous.

    ``pad``: int, (h, w) or (top, bottom, left, right); ``dil``: int or (h, w). ``out`` (optional, contiguous,
    right shape and dtype) receives the result.
    """
    _check(x, w, pad, dil, "forward")
    t, b, l, r = _pads(pad)
    dh, dw = _pair(dil, "dil")
    x = x.detach().contiguous()
    B, C, H, W = x.shape
    KH, KW = w.shape[-2:]
    Ho, Wo = H + t + b - (KH - 1) * dh, W + l + r - (KW - 1) * dw
    if out is None:
        y = _empty((B, C, Ho, Wo), x)
    elif tuple(out.shape) != (B, C, Ho, Wo) or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError(f"cpu_kernels.forward: out must be a contiguous {x.dtype} tensor of shape {(B, C, Ho, Wo)}")
    else:
        y = out
    if y.numel() == 0:
        return y
    wt = w.detach().transpose(-1, -2).contiguous().view(-1).numpy()  # [c][kw][kh]: the kernel's loop order
    has_bias = bias is not None
    bv = bias.detach().to(x.dtype).contiguous().numpy() if bias is not None else np.zeros(C, x.numpy().dtype)
    head = (x.view(B * C, H, W).numpy(), wt, bv, has_bias, y.view(B * C, Ho, Wo).numpy(), C, KH, KW, t, l, dh, dw)
    _run(f"fwd_{_variant(Ho, Wo)}", head, B * C, _threads_for(B * C, float(B * C * Ho * Wo * KH * KW)), x.dtype)
    return y


def backward(x: torch.Tensor, gy: torch.Tensor, w: torch.Tensor, pad: Pad, dil: int | Sequence[int],
             need_input: bool = True, need_weight: bool = True
             ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients (gx, gw) of :func:`forward` in one sweep over the planes (gx: NCHW contiguous; gw: (C, 1, KH, KW),
    accumulated over the batch in float64: deterministic, and the same float32 per-plane sums whatever the thread
    count, so results agree across thread counts up to float64 rounding of their sum)."""
    _check(x, w, pad, dil, "backward")
    t, b, l, r = _pads(pad)
    dh, dw = _pair(dil, "dil")
    x = x.detach().contiguous()
    gy = gy.detach().to(x.dtype).contiguous()
    B, C, H, W = x.shape
    KH, KW = w.shape[-2:]
    Ho, Wo = H + t + b - (KH - 1) * dh, W + l + r - (KW - 1) * dw
    if tuple(gy.shape) != (B, C, Ho, Wo):
        raise ValueError(f"cpu_kernels.backward: gy has shape {tuple(gy.shape)}, expected {(B, C, Ho, Wo)}")
    gx = _empty((B, C, H, W), x) if need_input else None
    work = float(B * C * Ho * Wo * KH * KW) * (int(need_input) + int(need_weight))
    threads = _threads_for(B * C, work)
    # grad-weight accumulates per channel over the batch when the channels alone keep the threads busy; otherwise
    # per plane, and the partial sums are reduced here (both in float64)
    by_channel = threads == 1 or C >= 2 * threads
    gwa = _empty((C if by_channel else B * C, KH * KW), x, torch.float64) if need_weight else None
    if B * C and (need_input or need_weight):
        wtflip = w.detach().flip(-2, -1).transpose(-1, -2).contiguous().view(-1).numpy()
        dummy = np.zeros((1, 1, 1), x.numpy().dtype)
        head = (x.view(B * C, H, W).numpy(), gy.view(B * C, Ho, Wo).numpy(), wtflip, need_input, need_weight,
                gx.view(B * C, H, W).numpy() if gx is not None else dummy,
                gwa.view(-1).numpy() if gwa is not None else np.zeros(1), C, KH, KW, t, l, dh, dw, by_channel)
        _run(f"bwd_{_variant(H, W)}", head, C if by_channel else B * C, threads, x.dtype)
    gw = None
    if gwa is not None:
        if not by_channel:
            gwa = gwa.view(B, C, KH * KW).sum(0)
        gw = gwa.to(x.dtype).view(C, 1, KH, KW)
    return gx, gw


def grad_input(gy: torch.Tensor, w: torch.Tensor, pad: Pad, dil: int | Sequence[int],
               in_hw: int | Sequence[int]) -> torch.Tensor:
    """Gradient w.r.t. the input, (B, C, *in_hw)."""
    H, W = _pair(in_hw, "in_hw")
    x = torch.empty(gy.shape[0], gy.shape[1], H, W, dtype=gy.dtype)  # shape carrier only, never read
    gx, _ = backward(x, gy, w, pad, dil, need_input=True, need_weight=False)
    assert gx is not None
    return gx


def grad_weight(x: torch.Tensor, gy: torch.Tensor, k: int | Sequence[int], pad: Pad,
                dil: int | Sequence[int]) -> torch.Tensor:
    """Gradient w.r.t. the weight, (C, 1, KH, KW)."""
    KH, KW = _pair(k, "k")
    w = torch.empty(x.shape[1], 1, KH, KW, dtype=x.dtype)  # shape carrier only, never read
    _, gw = backward(x, gy, w, pad, dil, need_input=False, need_weight=True)
    assert gw is not None
    return gw


def warmup(dtypes: Sequence[torch.dtype] = (torch.float32,)) -> None:
    """Compile (or load from the disk cache) every kernel variant for the given dtypes."""
    for dt in dtypes:
        for V, _ in _FWD_VARIANTS:
            x = torch.zeros(1, 1, 3, max(1, V - 1), dtype=dt)
            w = torch.zeros(1, 1, 3, 3, dtype=dt)
            y = forward(x, w, None, 1, 1)
            backward(x, y, w, 1, 1)
