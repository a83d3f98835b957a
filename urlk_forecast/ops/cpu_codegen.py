"""Source generation of the CPU depthwise-conv kernels (see :mod:`urlk_forecast.ops.cpu_kernels` for the design).

numba has no SIMD intrinsics and no unroll pragma, and only scalar locals reliably live in registers, so register
blocks are written out as straight-line code: ``V`` scalar accumulators per vector, which LLVM's SLP vectorizer
packs into AVX-512 / AVX2 / SSE registers. :func:`generate_source` returns the whole kernel module; it is
deterministic, and its hash names the cached file.

Two families:

* spatial (maps wider than ~12): vectors run along the image rows of one (batch, channel) plane;
  ``fwd_{lanes}x{rows}`` / ``bwd_{lanes}x{rows}`` drivers, ring blocks that load each input row once per ``R``
  kernel rows, a dilated variant, and grad-weight kernels keeping ``T`` taps x lanes of partial sums;
* channel-blocked (small maps): vectors hold 16 channels of one pixel, ``cbfwd_{P}`` / ``cbbwd_{P}`` drivers
  transpose 16 planes in and out, taps are skipped exactly per output row.

Storage and compute dtypes: the drivers copy each plane into a zero-padded scratch buffer and each result out of
one (:mod:`urlk_forecast.ops.cpu_bf16`); the scratch and the hot loops use the dtype of the weight array (float32
or float64), the tensors keep theirs (float32, float64, or bfloat16 as ``uint16`` bits, converted in those copies).

Conventions in the generated code: unsigned (``np.uint64``) indices where numba could not prove them non-negative
(it would emit a wrap-around test per access), vectors loaded through array views (``v = a[i:]; v[0] ... v[15]``:
cheap to type and compile), and ``fastmath`` without ``reassoc``.
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["generate_source", "FWD_VARIANTS", "CB_LANES", "CB_PIXELS", "GENERATOR_VERSION"]

#: (lanes, rows) register blocks of the spatial forward kernel: 32 or 16 lanes for wide maps, 8 or 4 for narrow ones
FWD_VARIANTS = ((32, 4), (16, 8), (16, 4), (8, 4), (4, 4))
#: taps held at once by the grad-weight kernel
_GW_TAPS = 8
#: gradient rows loaded at once by the unit-dilation grad-weight kernel
_GW_ROWS = 4
GENERATOR_VERSION = "14"
CB_LANES = 16  # channels per vector of the channel-blocked kernels
CB_PIXELS = (8, 4)  # output pixels of a row they hold at once
_CB_TAPS = 4  # kernel columns per channel-blocked grad-weight pass

_FASTMATH = "{'contract', 'nnan', 'ninf', 'nsz', 'arcp', 'afn'}"
#: decorator of every generated kernel
_JIT = f"@njit(fastmath={_FASTMATH}, cache=True, nogil=True, pipeline_class=NoSSACompiler)"


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
    """Grad-weight kernel for unit row dilation over ``nb`` planes of one channel (padded inputs ``xp`` and
    gradients ``gp``, plane strides ``Sx``/``Sg``), added into lane partial sums ``glane[(kh*Kw + kw)*V + l]``
    (float64): per kernel column, T kernel rows at a time (then T/2, T/4, ... for the rest, so no tap is wasted);
    the rows of the gradient are taken U at a time and the U + T - 1 input rows they meet are loaded once, so each
    loaded vector feeds up to T (or U) FMAs. The partial sums stay in registers across the nb planes."""
    L: list[str] = []
    e = L.append
    e(_JIT)
    e(f"def gw_ring_{V}x{T}(xp, Wx, Sx, gp, Wgp, Sg, nb, gr0, gc0, Ho, Wo, Kh, Kw, dw, pt, pl, H, W, glane, acc,")
    e("                 zero):")
    e("    Wxu = np.uint64(Wx); Wgu = np.uint64(Wgp); dwu = np.uint64(dw)")
    e(f"    for j0 in range(0, Wo, {V}):")
    e(f"        jl = min(j0 + {V}, Wo) - 1")
    e("        kwlo = max(0, pl - jl) if dw == 1 else max(0, -((jl - pl) // dw))")
    e("        kwhi = " + _hi_bound("j0", "pl", "W", "dw", "Kw", "kwlo"))
    e("        for kw in range(kwlo, kwhi):")
    e("            kh0 = 0")
    e(f"            while kh0 + {T} <= Kh:")
    _gw_ring_group(e, "                ", V, T, U, f"t{T}")
    e(f"                kh0 += {T}")
    tg = T // 2
    while tg >= 1:
        e(f"            if (Kh - kh0) & {tg}:")
        _gw_ring_group(e, "                ", V, tg, U, f"t{tg}")
        e(f"                kh0 += {tg}")
        tg //= 2
    return L


def _gw_ring_group(e, ind: str, V: int, T: int, U: int, tag: str) -> None:
    """One group of T kernel rows kh0 .. kh0+T-1 at kernel column kw (all rows of the gradient, nb planes).

    Groups of fewer than 8 taps keep ``A = 8 // T`` sets of partial sums (gradient row u goes to set u % A) so that
    8 independent FMA chains hide the FMA latency; the sets are added at the end.
    """
    A = max(1, min(U, 8 // T))
    e(f"{ind}ilo = max(0, pt - kh0 - {T - 1})")
    e(f"{ind}ihi = min(Ho, pt + H - kh0)")
    e(f"{ind}if ilo < ihi:")
    ind2 = ind + "    "
    for a in range(A):
        for t in range(T):
            e(ind2 + "; ".join(f"s{tag}{a}{t}_{l} = zero" for l in range(V)))
    e(f"{ind2}m = (ihi - ilo) // {U}")
    e(f"{ind2}for bb in range(nb):")
    ind2 = ind2 + "    "
    e(f"{ind2}xb = np.uint64(bb * Sx) + np.uint64(ilo + kh0) * Wxu + np.uint64(j0) + np.uint64(kw) * dwu")
    e(f"{ind2}gb = np.uint64(bb * Sg) + np.uint64(ilo + gr0) * Wgu + np.uint64(gc0 + j0)")
    e(f"{ind2}for it in range(m):")
    ind3 = ind2 + "    "
    for u in range(U):
        e(f"{ind3}v = gp[gb + {_u(u)} * Wgu:]")
        e(ind3 + "; ".join(f"g{tag}{u}_{l} = v[{l}]" for l in range(V)))
    for q in range(U + T - 1):
        e(f"{ind3}v = xp[xb + {_u(q)} * Wxu:]")
        e(ind3 + "; ".join(f"x{tag}{q}_{l} = v[{l}]" for l in range(V)))
    for u in range(U):
        for t in range(T):
            for l in range(V):
                e(f"{ind3}s{tag}{u % A}{t}_{l} += g{tag}{u}_{l} * x{tag}{u + t}_{l}")
    e(f"{ind3}xb += {_u(U)} * Wxu")
    e(f"{ind3}gb += {_u(U)} * Wgu")
    e(f"{ind2}for it in range(ihi - ilo - m * {U}):")
    e(f"{ind3}v = gp[gb:]")
    e(ind3 + "; ".join(f"h{tag}{l} = v[{l}]" for l in range(V)))
    for t in range(T):
        e(f"{ind3}v = xp[xb + {_u(t)} * Wxu:]")
        for l in range(V):
            e(f"{ind3}s{tag}0{t}_{l} += h{tag}{l} * v[{l}]")
    e(f"{ind3}xb += Wxu")
    e(f"{ind3}gb += Wgu")
    ind2 = ind2[:-4]
    for t in range(T):
        sets = lambda l, t=t: " + ".join(f"s{tag}{a}{t}_{l}" for a in range(A))  # noqa: E731
        e(ind2 + "; ".join(f"acc[{t * V + l}] = {sets(l)}" for l in range(V)))
    e(f"{ind2}for t in range({T}):")
    e(f"{ind3}gl = ((kh0 + t) * Kw + kw) * {V}")
    e(f"{ind3}for l in range({V}):")
    e(f"{ind3}    glane[gl + l] += acc[t * {V} + l]")


def _drivers_source(V: int, R: int, T: int, GV: int, dilated: bool) -> list[str]:  # noqa: C901 - template
    """Serial drivers over the planes ``[lo, hi)`` (threads are run by the caller, see :func:`_run_chunks`), for unit
    row dilation (``fwd_``/``bwd_``) or any row dilation (``fwdd_``/``bwdd_``). Separate drivers compile separately,
    so a model compiles only the kernels its convolutions run: a re-parameterised UniRepLKNet has no dilated conv,
    and UniRepLKNet-A runs its dilated branches on small maps only (the channel-blocked kernels)."""
    s = f"{V}x{R}"
    d = "d" if dilated else ""
    conv = f"fwd_dil_{s}" if dilated else f"fwd_plane_{s}"
    dh = "dh, " if dilated else ""
    if dilated:  # grad-weight per plane from aligned shifted copies (S2)
        gw_buffers = f"""
    S2, soff2 = _aligned_buffer((Kw + {T - 1}) * Hx * {GV} if need_gw else 0, wtflip)
    acc = np.empty({T * GV}, wtflip.dtype)
    glane = np.zeros(1, np.float64)"""
        gw_plane = f"""
                gw_plane_{GV}x{T}(xp, Wx, Hx, gp, Wg, ptb, plb, Ho, Wo, Kh, Kw, dh, dw, pt, pl, H, W, gwa, goff, acc,
                                 zero, S2, soff2)"""
        gw_ring = ""
    else:  # grad-weight over the rows of each channel, lane partial sums in glane
        gw_buffers = f"""
    acc = np.empty({T * GV}, wtflip.dtype)
    glane = np.zeros(KK * {GV} if need_gw else 1, np.float64)"""
        gw_plane = ""
        gw_ring = f"""
        if need_gw:
            gw_ring_{GV}x{T}(xpB, Wx, Sx, gpB, Wg, Sg, nb, ptb, plb, Ho, Wo, Kh, Kw, dw, pt, pl, H, W, glane, acc,
                             zero)
            if last:  # lane partial sums -> per-tap sums, once per channel (or plane)
                for t in range(KK):
                    tot = 0.0
                    for l in range({GV}):
                        tot += glane[t * {GV} + l]
                    gwa[goff + t] = tot"""
    return f"""

{_JIT}
def fwd{d}_{s}(x, wt, bias, has_bias, out, C, Kh, Kw, pt, pl, dh, dw, poison, lo, hi, zero):
    P, H, W = x.shape
    Ho = out.shape[1]
    Wo = out.shape[2]
    Hc = (Ho + {R - 1}) // {R} * {R}
    Wc = (Wo + {V - 1}) // {V} * {V}
    Hp = pt + H + {R - 1}
    Wp = pl + W + {V - 1}
    xp = np.zeros(Hp * Wp, wt.dtype)
    o = np.empty(Hc * Wc, wt.dtype)
    for n in range(lo, hi):
        c = n % C
        xn = x[n]
        _put(xp, pt * Wp + pl, Wp, xn)
        if poison:  # test mode: scratch an unwritten output element would be read from is NaN
            o[:] = np.nan
        {conv}(xp, Wp, wt, c * Kh * Kw, Kh, Kw, {dh}dw, o, Wc, Ho, Wo, pt, pl, H, W, zero)
        bv = bias[c] if has_bias else zero
        _get(out[n], o, 0, Wc, bv)


{_JIT}
def bwd{d}_{s}(x, gy, wtflip, need_gx, need_gw, gx, gwa, C, Kh, Kw, pt, pl, dh, dw, by_channel, poison, lo, hi,
          zero):
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
    o = np.empty(Hc * Wc, wtflip.dtype)
    # grad-weight: only image rows of x are read; shifted copies for Kw + T - 1 taps
    Wx = max(pl + W, (Wo + {GV - 1}) // {GV} * {GV} + (Kw - 1) * dw)
    Hx = pt + H + {T}  # zero rows below the image: the unit-dilation kernel reads up to T - 1 rows past it
    Sg = Hg * Wg
    Sx = Hx * Wx
    # The grad-weight kernel can keep its partial sums in registers across NB planes of a channel, but then the
    # float32 rounding would depend on whether a thread owns whole channels, i.e. on the thread count; one plane
    # at a time keeps results identical for any thread count (the batching gained < 10 %).
    NB = 1
    gpB = np.zeros(NB * Sg, wtflip.dtype)
    xpB = np.zeros(NB * Sx if need_gw else 1, wtflip.dtype){gw_buffers}
    nblk = (B + NB - 1) // NB
    items = (hi - lo) * nblk if by_channel else hi - lo
    for k in range(items):
        if by_channel:
            q = k // nblk
            c = lo + q
            blk = k - q * nblk
            nb = min(NB, B - blk * NB)
            n0 = blk * NB * C + c
            goff = c * KK
            fresh = blk == 0
            last = blk == nblk - 1
        else:
            n0 = lo + k
            c = n0 % C
            nb = 1
            goff = n0 * KK
            fresh = True
            last = True
        if need_gw and fresh:
            for t in range(KK):
                gwa[goff + t] = 0.0
            glane[:] = 0.0
        for bb in range(nb):
            n = n0 + bb * C
            gp = gpB[bb * Sg:]
            _put(gp, ptb * Wg + plb, Wg, gy[n])
            if need_gx:
                if poison:
                    o[:] = np.nan
                {conv}(gp, Wg, wtflip, c * KK, Kh, Kw, {dh}dw, o, Wc, H, W, ptb, plb, Ho, Wo, zero)
                _get(gx[n], o, 0, Wc, zero)
            if need_gw:
                xp = xpB[bb * Sx:]
                _put(xp, pt * Wx + pl, Wx, x[n]){gw_plane}{gw_ring}
""".splitlines()


# ------------------------------------------------------------------------ channel-blocked kernels (small maps)


def _cb_conv_source(P: int) -> list[str]:
    """Channel-blocked correlation of one block of 16 channels: ``src`` (rows, cols, 16) zero-padded, ``wl``
    (Kh, Kw, 16) per block -> ``dst`` (Ho, Wo, 16). P output pixels of a row in registers; per tap one weight vector
    and P aligned input vectors. Kernel rows are skipped exactly per output row, kernel columns per P-pixel group."""
    L_ = CB_LANES
    L: list[str] = []
    e = L.append
    e(_JIT)
    e(f"def cb_conv_{P}(src, Ws, wl, woff, Kh, Kw, dh, dw, dst, Ho, Wo, pt, pl, H, W, zero):")
    e("    for i in range(Ho):")
    e("        khlo = max(0, pt - i) if dh == 1 else max(0, -((i - pt) // dh))")
    e("        khhi = max(khlo, min(Kh, pt + H - i)) if dh == 1 else max(khlo, min(Kh, (pt + H - 1 - i) // dh + 1))")
    e(f"        for j0 in range(0, Wo, {P}):")
    e(f"            jl = min(j0 + {P}, Wo) - 1")
    e("            kwlo = max(0, pl - jl) if dw == 1 else max(0, -((jl - pl) // dw))")
    e("            kwhi = " + _hi_bound("j0", "pl", "W", "dw", "Kw", "kwlo"))
    for p in range(P):
        e("            " + "; ".join(f"a{p}_{l} = zero" for l in range(L_)))
    e("            for kh in range(khlo, khhi):")
    e(f"                rb = ((i + kh * dh) * Ws + j0) * {L_}")
    e(f"                wb = woff + kh * Kw * {L_}")
    e("                for kw in range(kwlo, kwhi):")
    e(f"                    wv = wl[wb + kw * {L_}:]")
    e("                    " + "; ".join(f"w{l} = wv[{l}]" for l in range(L_)))
    e(f"                    v = src[rb + kw * dw * {L_}:]")
    for p in range(P):
        for l in range(L_):
            e(f"                    a{p}_{l} += w{l} * v[{p * L_ + l}]")
    e(f"            v = dst[(i * Wo + j0) * {L_}:]")
    for p in range(P):
        e(f"            if j0 + {p} < Wo:")
        e("                " + "; ".join(f"v[{p * L_ + l}] = a{p}_{l}" for l in range(L_)))
    return L


def _cb_gw_source(T: int) -> list[str]:
    """Channel-blocked grad-weight of one block: for each kernel row and T kernel columns at a time, sum over the
    output pixels that read the image of g * x (16 channel lanes), exact ranges; the T x 16 partial sums are added
    into ``gl`` (Kh * Kw * 16, float64)."""
    L_ = CB_LANES
    L: list[str] = []
    e = L.append
    e(_JIT)
    e(f"def cb_gw_{T}(xs, Wx, gs, Wg, gr0, gc0, Ho, Wo, Kh, Kw, dh, dw, pt, pl, H, W, gl, acc, zero):")
    e("    for kh in range(Kh):")
    e("        ilo = max(0, pt - kh * dh)")
    e("        ihi = min(Ho, pt + H - kh * dh)")
    e(f"        for kw0 in range(0, Kw, {T}):")
    for t in range(T):
        e("            " + "; ".join(f"s{t}_{l} = zero" for l in range(L_)))
    e(f"            jlo = max(0, pl - (kw0 + {T - 1}) * dw)")
    e("            jhi = min(Wo, pl + W - kw0 * dw)")
    e("            for i in range(ilo, ihi):")
    e(f"                gb = ((i + gr0) * Wg + gc0) * {L_}")
    e(f"                xb = ((i + kh * dh) * Wx + kw0 * dw + {T - 1} * dw) * {L_}")
    e("                for j in range(jlo, jhi):")
    e(f"                    gv = gs[gb + j * {L_}:]")
    e("                    " + "; ".join(f"g{l} = gv[{l}]" for l in range(L_)))
    e(f"                    v = xs[xb + j * {L_}:]")
    for t in range(T):
        e(f"                    o{t} = {t} * dw * {L_}")
        for l in range(L_):
            e(f"                    s{t}_{l} += g{l} * v[o{t} + {l}]")
    for t in range(T):
        e("            " + "; ".join(f"acc[{t * L_ + l}] = s{t}_{l}" for l in range(L_)))
    e(f"            for t in range(min({T}, Kw - kw0)):")
    e(f"                b = (kh * Kw + kw0 + t) * {L_}")
    e(f"                for l in range({L_}):")
    e(f"                    gl[b + l] += acc[t * {L_} + l]")
    return L


def _cb_drivers_source(P: int, T: int) -> list[str]:  # noqa: C901 - generated kernel template
    L_ = CB_LANES
    return f'''

{_JIT}
def cbfwd_{P}(x, wl, bias, has_bias, out, C, Kh, Kw, pt, pl, dh, dw, poison, lo, hi, zero):
    P_, H, W = x.shape
    Ho = out.shape[1]
    Wo = out.shape[2]
    NCB = (C + {L_ - 1}) // {L_}
    Hs = pt + H + (Kh - 1) * dh + 1
    Ws = pl + W + (Kw - 1) * dw + {P}
    xs = np.zeros(Hs * Ws * {L_}, wl.dtype)
    os = np.empty(Ho * Wo * {L_}, wl.dtype)
    stin = np.zeros(H * W * {L_}, x.dtype)  # staging of the storage dtype (bf16 conversions, see cpu_bf16)
    stout = np.zeros(Ho * Wo * {L_}, x.dtype)
    for u in range(lo, hi):
        b = u // NCB
        c0 = (u - b * NCB) * {L_}
        nl = min({L_}, C - c0)
        _put_cb(xs, (pt * Ws + pl) * {L_}, Ws * {L_}, x, b * C + c0, nl, stin)
        if poison:
            os[:] = np.nan
        cb_conv_{P}(xs, Ws, wl, (c0 // {L_}) * Kh * Kw * {L_}, Kh, Kw, dh, dw, os, Ho, Wo, pt, pl, H, W, zero)
        _get_cb(out, b * C + c0, nl, os, bias, has_bias, c0, zero, stout)


{_JIT}
def cbbwd_{P}(x, gy, wlflip, need_gx, need_gw, gx, gwa, C, Kh, Kw, pt, pl, dh, dw, by_channel, poison, lo,
            hi, zero):
    # units: channel blocks (by_channel: a thread owns whole blocks and loops over the batch) or (batch, block)
    P_, H, W = x.shape
    B = P_ // C
    KK = Kh * Kw
    Ho = gy.shape[1]
    Wo = gy.shape[2]
    NCB = (C + {L_ - 1}) // {L_}
    ptb = (Kh - 1) * dh - pt
    plb = (Kw - 1) * dw - pl
    Hg = ptb + Ho + (Kh - 1) * dh + 1
    Wg = plb + Wo + (Kw - 1) * dw + {P}
    gs = np.zeros(Hg * Wg * {L_}, wlflip.dtype)
    os = np.empty(H * W * {L_}, wlflip.dtype)
    stin = np.zeros(H * W * {L_} if need_gw else 1, x.dtype)  # staging of the storage dtype (see cpu_bf16)
    stg = np.zeros(Ho * Wo * {L_}, x.dtype)
    stout = np.zeros(H * W * {L_} if need_gx else 1, x.dtype)
    Hx = pt + H + (Kh - 1) * dh + 1
    Wx = pl + W + 2 * {T - 1} * dw + 1  # image at column pl + (T-1)*dw: the T-tap passes read up to T-1 taps out
    xs = np.zeros(Hx * Wx * {L_} if need_gw else 1, wlflip.dtype)
    gl = np.zeros(KK * {L_} if need_gw else 1, np.float64)
    acc = np.empty({T * L_}, wlflip.dtype)
    items = (hi - lo) * B if by_channel else hi - lo
    for k in range(items):
        if by_channel:
            q = k // B
            cb = lo + q
            b = k - q * B
            first = b == 0
            last = b == B - 1
        else:
            b = (lo + k) // NCB
            cb = lo + k - b * NCB
            first = True
            last = True
        c0 = cb * {L_}
        nl = min({L_}, C - c0)
        _put_cb(gs, (ptb * Wg + plb) * {L_}, Wg * {L_}, gy, b * C + c0, nl, stg)
        if need_gx:
            if poison:
                os[:] = np.nan
            cb_conv_{P}(gs, Wg, wlflip, cb * KK * {L_}, Kh, Kw, dh, dw, os, H, W, ptb, plb, Ho, Wo, zero)
            _get_cb(gx, b * C + c0, nl, os, os, False, c0, zero, stout)
        if need_gw:
            _put_cb(xs, (pt * Wx + pl + {T - 1} * dw) * {L_}, Wx * {L_}, x, b * C + c0, nl, stin)
            if first:
                gl[:] = 0.0
            cb_gw_{T}(xs, Wx, gs, Wg, ptb, plb, Ho, Wo, Kh, Kw, dh, dw, pt, pl, H, W, gl, acc, zero)
            if last:
                base = (cb if by_channel else b * NCB + cb) * {L_} * KK
                for l in range(nl):
                    for t in range(KK):
                        gwa[base + l * KK + t] = gl[t * {L_} + l]
'''.splitlines()


def _helpers_digest(name: str = "cpu_bf16.py") -> str:
    """Hash of :mod:`urlk_forecast.ops.cpu_bf16` (the row copies the generated kernels call): it is part of the
    generated source, so editing the helpers renames the kernel module and numba's disk cache cannot serve stale
    machine code (numba only checks the generated file itself). With ``name="small_codegen.py"``: the hash of the
    small-map kernels' generator, also part of the source, so that their changes rename the module too, and with
    it the per-machine dispatch table (:func:`urlk_forecast.ops.autotune.machine_id`), whose timings they change."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:16]


def generate_source() -> str:  # noqa: C901 - generated kernel template
    """Python source of the kernel module (deterministic; its hash names the cached file)."""
    lines = [
        '"""Generated by urlk_forecast.ops.cpu_kernels.generate_source - do not edit."""',
        "import numpy as np",
        "from numba import njit",
        "",
        "from urlk_forecast.ops.cpu_bf16 import get as _get, get_cb as _get_cb, put as _put, put_cb as _put_cb",
        "from urlk_forecast.ops.cpu_kernels import NoSSACompiler",
        "",
        f"# row copies and bfloat16 conversion: urlk_forecast/ops/cpu_bf16.py, source sha256 {_helpers_digest()}",
        f"# small-map kernels (own modules): urlk_forecast/ops/small_codegen.py, sha256 "
        f"{_helpers_digest('small_codegen.py')}",
        "",
        "",
        "@njit(cache=True, nogil=True)",
        "def _aligned_buffer(n, like):",
        '    """Zeroed buffer of n elements starting at a 64-byte boundary: (array, offset of that boundary)."""',
        "    S = np.zeros(n + 16, like.dtype)",
        "    return S, ((64 - S.ctypes.data % 64) % 64) // S.itemsize",
    ]
    for V in sorted({min(v, 16) for v, _ in FWD_VARIANTS}, reverse=True):
        lines += ["", ""] + _gw_plane_source(V, _GW_TAPS)
        lines += ["", ""] + _gw_ring_source(V, _GW_TAPS, _GW_ROWS)
    for P in CB_PIXELS:
        lines += ["", ""] + _cb_conv_source(P)
    lines += ["", ""] + _cb_gw_source(_CB_TAPS)
    for P in CB_PIXELS:
        lines += _cb_drivers_source(P, _CB_TAPS)
    for V, R in FWD_VARIANTS:
        lines += ["", ""] + _fwd_ring_source(V, R)
        lines += ["", ""] + _fwd_dilated_source(V, R)
        lines += _drivers_source(V, R, _GW_TAPS, min(V, 16), dilated=False)
        lines += _drivers_source(V, R, _GW_TAPS, min(V, 16), dilated=True)
    return "\n".join(lines) + "\n"
