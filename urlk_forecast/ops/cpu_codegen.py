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

Conventions in the generated code: unsigned (``np.uint64``) indices where numba could not prove them non-negative
(it would emit a wrap-around test per access), vectors loaded through array views (``v = a[i:]; v[0] ... v[15]``:
cheap to type and compile), and ``fastmath`` without ``reassoc``.
"""

from __future__ import annotations

__all__ = ["generate_source", "FWD_VARIANTS", "CB_LANES", "CB_PIXELS", "GENERATOR_VERSION"]

#: (lanes, rows) register blocks of the spatial forward kernel: 32 or 16 lanes for wide maps, 8 or 4 for narrow ones
FWD_VARIANTS = ((32, 4), (16, 8), (16, 4), (8, 4), (4, 4))
#: taps held at once by the grad-weight kernel
_GW_TAPS = 8
#: gradient rows loaded at once by the unit-dilation grad-weight kernel
_GW_ROWS = 4
GENERATOR_VERSION = "6"
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


def _cb_drivers_source(P: int, T: int) -> list[str]:
    L_ = CB_LANES
    return f'''

{_JIT}
def cbfwd_{P}(x, wl, bias, has_bias, out, C, Kh, Kw, pt, pl, dh, dw, lo, hi, zero):
    P_, H, W = x.shape
    Ho = out.shape[1]
    Wo = out.shape[2]
    NCB = (C + {L_ - 1}) // {L_}
    Hs = pt + H + (Kh - 1) * dh + 1
    Ws = pl + W + (Kw - 1) * dw + {P}
    xs = np.zeros(Hs * Ws * {L_}, x.dtype)
    os = np.empty(Ho * Wo * {L_}, x.dtype)
    for u in range(lo, hi):
        b = u // NCB
        c0 = (u - b * NCB) * {L_}
        nl = min({L_}, C - c0)
        for l in range(nl):
            xn = x[b * C + c0 + l]
            for i in range(H):
                r = ((i + pt) * Ws + pl) * {L_} + l
                for j in range(W):
                    xs[r + j * {L_}] = xn[i, j]
        cb_conv_{P}(xs, Ws, wl, (c0 // {L_}) * Kh * Kw * {L_}, Kh, Kw, dh, dw, os, Ho, Wo, pt, pl, H, W, zero)
        for l in range(nl):
            on = out[b * C + c0 + l]
            bv = bias[c0 + l] if has_bias else zero
            for i in range(Ho):
                r = i * Wo * {L_} + l
                for j in range(Wo):
                    on[i, j] = os[r + j * {L_}] + bv


{_JIT}
def cbbwd_{P}(x, gy, wlflip, need_gx, need_gw, gx, gwa, C, Kh, Kw, pt, pl, dh, dw, by_channel, lo, hi, zero):
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
    gs = np.zeros(Hg * Wg * {L_}, x.dtype)
    os = np.empty(H * W * {L_}, x.dtype)
    Hx = pt + H + (Kh - 1) * dh + 1
    Wx = pl + W + 2 * {T - 1} * dw + 1  # image at column pl + (T-1)*dw: the T-tap passes read up to T-1 taps out
    xs = np.zeros(Hx * Wx * {L_} if need_gw else 1, x.dtype)
    gl = np.zeros(KK * {L_} if need_gw else 1, np.float64)
    acc = np.empty({T * L_}, x.dtype)
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
        for l in range(nl):
            gn = gy[b * C + c0 + l]
            for i in range(Ho):
                r = ((i + ptb) * Wg + plb) * {L_} + l
                for j in range(Wo):
                    gs[r + j * {L_}] = gn[i, j]
        if need_gx:
            cb_conv_{P}(gs, Wg, wlflip, cb * KK * {L_}, Kh, Kw, dh, dw, os, H, W, ptb, plb, Ho, Wo, zero)
            for l in range(nl):
                gxn = gx[b * C + c0 + l]
                for i in range(H):
                    r = i * W * {L_} + l
                    for j in range(W):
                        gxn[i, j] = os[r + j * {L_}]
        if need_gw:
            for l in range(nl):
                xn = x[b * C + c0 + l]
                for i in range(H):
                    r = ((i + pt) * Wx + pl + {T - 1} * dw) * {L_} + l
                    for j in range(W):
                        xs[r + j * {L_}] = xn[i, j]
            if first:
                gl[:] = 0.0
            cb_gw_{T}(xs, Wx, gs, Wg, ptb, plb, Ho, Wo, Kh, Kw, dh, dw, pt, pl, H, W, gl, acc, zero)
            if last:
                base = (cb if by_channel else b * NCB + cb) * {L_} * KK
                for l in range(nl):
                    for t in range(KK):
                        gwa[base + l * KK + t] = gl[t * {L_} + l]
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
        lines += _drivers_source(V, R, _GW_TAPS, min(V, 16))
    return "\n".join(lines) + "\n"
