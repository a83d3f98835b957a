"""Source generation of the CUDA depthwise-conv kernels (see :mod:`urlk_forecast.ops.cuda_kernels` for the design).

:func:`fwd_source` and :func:`gw_source` return the Python source of one numba.cuda kernel specialised for a kernel
size, dilation, register blocking and dtypes, with the loops over kernel columns and outputs written out (numba has no
unroll pragma; scalar locals are what NVVM keeps in registers). The source is deterministic: its hash names the
compiled-kernel cache entry.
"""

from __future__ import annotations

__all__ = ["fwd_source", "gw_source"]


def _load_expr(kind: str, ptr: str, idx: str) -> str:
    if kind == "f32":
        return f"{ptr}[{idx}]"
    if kind == "f16":
        return f"np.float32({ptr}[{idx}])"
    return f"_bf2f({ptr}[{idx}])"


def _store_expr(kind: str, val: str) -> str:
    if kind == "f32":
        return val
    if kind == "f16":
        return f"np.float16({val})"
    return f"_f2bf({val})"


def _off(base: str, k: int) -> str:
    """Unsigned shared-memory index ``base + k``: unsigned indices spare numba's negative-index wraparound code."""
    return base if k == 0 else f"{base} + _u{k}"


def _uconsts(n: int) -> str:
    """Module-level np.uint64 constants _u1.._u{n-1} (numba freezes global scalars into the kernel)."""
    return "".join(f"_u{k} = np.uint64({k})\n" for k in range(1, n))


def _emit_tile_load(out: list[str], ind: str, src: str, kind: str, plane: str, dst: str, R: str, CC: str,
                    S: str, gh0: str, gw0: str, Hs: str, Ws: str, lid: str, nthr: str) -> None:
    """Code copying rows [gh0, gh0+R) x cols [gw0, gw0+CC) of one plane into shared memory (zeros outside)."""
    e = out.append
    e(f"{ind}if {nthr} >= {CC}:")
    e(f"{ind}    rpp = {nthr} // {CC}")
    e(f"{ind}    rr = {lid} // {CC}")
    e(f"{ind}    cc = {lid} - rr * {CC}")
    e(f"{ind}    if rr < rpp:")
    e(f"{ind}        gw = {gw0} + cc")
    e(f"{ind}        colok = gw >= 0 and gw < {Ws}")
    e(f"{ind}        for r in range(rr, {R}, rpp):")
    e(f"{ind}            gh = {gh0} + r")
    e(f"{ind}            v = zero")
    e(f"{ind}            if colok and gh >= 0 and gh < {Hs}:")
    e(f"{ind}                v = {_load_expr(kind, src, f'{plane} + gh * {Ws} + gw')}")
    e(f"{ind}            sm[np.uint64({dst} + r * {S} + cc)] = v")
    e(f"{ind}else:")
    e(f"{ind}    for r in range({R}):")
    e(f"{ind}        gh = {gh0} + r")
    e(f"{ind}        rowok = gh >= 0 and gh < {Hs}")
    e(f"{ind}        for cc in range({lid}, {CC}, {nthr}):")
    e(f"{ind}            gw = {gw0} + cc")
    e(f"{ind}            v = zero")
    e(f"{ind}            if rowok and gw >= 0 and gw < {Ws}:")
    e(f"{ind}                v = {_load_expr(kind, src, f'{plane} + gh * {Ws} + gw')}")
    e(f"{ind}            sm[np.uint64({dst} + r * {S} + cc)] = v")


def fwd_source(KH: int, KW: int, DH: int, DW: int, P: int, Q: int,  # noqa: C901 - generated kernel template
               xkind: str, wkind: str) -> str:
    """Python source of the forward / grad-input kernel for one specialisation (see module docstring)."""
    KK = KH * KW
    L = P + (KW - 1) * DW
    o: list[str] = []
    e = o.append
    e("def kern(x, w, b, y, N, C, Hi, Wi, Ho, Wo, offh, offw, TH, TW, S, ntw, hasb, flip):")
    e("    zero = np.float32(0.0)")
    e("    tx = cuda.threadIdx.x")
    e("    ty = cuda.threadIdx.y")
    e("    tz = cuda.threadIdx.z")
    e("    TX = cuda.blockDim.x")
    e("    TY = cuda.blockDim.y")
    e("    NZ = cuda.blockDim.z")
    e("    n = cuda.blockIdx.x * NZ + tz")
    e("    tile = cuda.blockIdx.y")
    e("    th = tile // ntw")
    e("    h0 = th * TH")
    e("    w0 = (tile - th * ntw) * TW")
    e(f"    R = TH + {(KH - 1) * DH}")
    e(f"    CC = TW + {(KW - 1) * DW}")
    e("    sm = cuda.shared.array(0, dtype=float32)")
    e(f"    wb = tz * {KK}")
    e(f"    xb = NZ * {KK} + tz * (R * S)")
    e("    lid = ty * TX + tx")
    e("    nthr = TX * TY")
    e("    active = n < N")
    e("    c = 0")
    e("    if active:")
    e("        c = n % C")
    e(f"        for k in range(lid, {KK}, nthr):")
    e(f"            kk = {KK - 1} - k if flip else k")
    e(f"            sm[wb + k] = {_load_expr(wkind, 'w', f'c * {KK} + kk')}")
    e("        plane = n * (Hi * Wi)")
    _emit_tile_load(o, "        ", "x", xkind, "plane", "xb", "R", "CC", "S", "h0 + offh", "w0 + offw", "Hi", "Wi",
                    "lid", "nthr")
    e("    cuda.syncthreads()")
    e("    r0 = ty * " + str(Q))
    e("    c0 = tx * " + str(P))
    e("    oh0 = h0 + r0")
    e("    ow0 = w0 + c0")
    e("    if (not active) or oh0 >= Ho or ow0 >= Wo:")
    e("        return")
    for q in range(Q):
        for p in range(P):
            e(f"    a{q}_{p} = zero")
    # kernel rows that touch at least one valid input row for some q
    e(f"    lo = oh0 + {Q - 1} + offh")
    e("    ilo = 0")
    e("    if lo < 0:")
    e(f"        ilo = (-lo + {DH - 1}) // {DH}")
    e("    hi = Hi - 1 - (oh0 + offh)")
    e(f"    ihi = hi // {DH} + 1")
    e(f"    if ihi > {KH}:")
    e(f"        ihi = {KH}")
    e("    for i in range(ilo, ihi):")
    e(f"        wr = np.uint64(wb + i * {KW})")
    for j in range(KW):
        e(f"        w{j} = sm[{_off('wr', j)}]")
    for q in range(Q):
        e(f"        g = oh0 + {q} + i * {DH} + offh")
        e(f"        if g >= 0 and g < Hi and oh0 + {q} < Ho:")
        e(f"            rb = np.uint64(xb + (r0 + {q} + i * {DH}) * S + c0)")
        for k in range(L):
            e(f"            s{k} = sm[{_off('rb', k)}]")
        for j in range(KW):
            for p in range(P):
                e(f"            a{q}_{p} += s{p + j * DW} * w{j}")
    e("    bv = zero")
    e("    if hasb:")
    e(f"        bv = {_load_expr(wkind, 'b', 'c')}")
    e("    ob = n * (Ho * Wo)")
    for q in range(Q):
        e(f"    if oh0 + {q} < Ho:")
        e(f"        orow = ob + (oh0 + {q}) * Wo + ow0")
        for p in range(P):
            cond = "" if p == 0 else f"ow0 + {p} < Wo"
            val = _store_expr(xkind, f"a{q}_{p} + bv")
            if cond:
                e(f"        if {cond}:")
                e(f"            y[orow + {p}] = {val}")
            else:
                e(f"        y[orow] = {val}")
    return _uconsts(max(L, KW)) + "\n".join(o) + "\n"


def gw_source(KH: int, KW: int, DH: int, DW: int, PJ: int, TWG: int,  # noqa: C901 - generated kernel template
              xkind: str, gkind: str) -> str:
    """Python source of the grad-weight kernel: block (c, chunk) -> fp32 partial[chunk, c, :, :]."""
    nstrip = -(-KW // PJ)
    ncombo = KH * nstrip
    L = TWG + (PJ - 1) * DW
    o: list[str] = []
    e = o.append
    e("def kern(x, gy, part, B, C, Hi, Wi, Ho, Wo, offh, offw, TH, ntw, nth, bpc, NB, S, nsplit):")
    e("    zero = np.float32(0.0)")
    e("    tid = cuda.threadIdx.x")
    e("    nthr = cuda.blockDim.x")
    e("    c = cuda.blockIdx.x")
    e("    chunk = cuda.blockIdx.y")
    e(f"    combo = tid % {ncombo}")
    e(f"    split = tid // {ncombo}")
    e(f"    i = combo // {nstrip}")
    e(f"    j0 = (combo - i * {nstrip}) * {PJ}")
    e(f"    R = TH + {(KH - 1) * DH}")
    e(f"    CC = {TWG} + {(KW - 1) * DW}")
    e(f"    GT = TH * {TWG}")
    e("    XT = R * S")
    e("    PT = GT + XT")
    e("    sm = cuda.shared.array(0, dtype=float32)")
    for p in range(PJ):
        e(f"    a{p} = zero")
    e("    b0 = chunk * bpc")
    e("    b1 = b0 + bpc")
    e("    if b1 > B:")
    e("        b1 = B")
    e("    nitems = NB * TH")
    e("    for bb in range(b0, b1, NB):")
    e("        for tile in range(nth * ntw):")
    e("            th = tile // ntw")
    e("            h0 = th * TH")
    e(f"            w0 = (tile - th * ntw) * {TWG}")
    e("            cuda.syncthreads()")
    e("            for nb in range(NB):")
    e("                b = bb + nb")
    e("                if b < b1:")
    e("                    pb = nb * PT")
    e("                    gplane = (b * C + c) * (Ho * Wo)")
    e("                    xplane = (b * C + c) * (Hi * Wi)")
    _emit_tile_load(o, "                    ", "gy", gkind, "gplane", "pb", "TH", str(TWG), str(TWG), "h0", "w0",
                    "Ho", "Wo", "tid", "nthr")
    _emit_tile_load(o, "                    ", "x", xkind, "xplane", "pb + GT", "R", "CC", "S", "h0 + offh",
                    "w0 + offw", "Hi", "Wi", "tid", "nthr")
    e("            cuda.syncthreads()")
    e("            if split < nsplit:")
    e("                for it in range(split, nitems, nsplit):")
    e("                    nb = it // TH")
    e("                    h = it - nb * TH")
    e(f"                    g = h0 + h + i * {DH} + offh")
    e("                    if bb + nb < b1 and h0 + h < Ho and g >= 0 and g < Hi:")
    e("                        pb = nb * PT")
    e(f"                        rb = np.uint64(pb + GT + (h + i * {DH}) * S + j0 * {DW})")
    for k in range(L):
        e(f"                        s{k} = sm[{_off('rb', k)}]")
    e(f"                        gb = np.uint64(pb + h * {TWG})")
    for w in range(TWG):
        e(f"                        gv = sm[{_off('gb', w)}]")
        for p in range(PJ):
            e(f"                        a{p} += gv * s{w + p * DW}")
    e("    cuda.syncthreads()")
    e("    if split < nsplit:")
    e(f"        rbase = split * {ncombo * PJ} + combo * {PJ}")
    for p in range(PJ):
        e(f"        sm[rbase + {p}] = a{p}")
    e("    cuda.syncthreads()")
    e(f"    for t in range(tid, {ncombo * PJ}, nthr):")
    e(f"        cb = t // {PJ}")
    e(f"        p = t - cb * {PJ}")
    e(f"        ii = cb // {nstrip}")
    e(f"        jj = (cb - ii * {nstrip}) * {PJ} + p")
    e(f"        if jj < {KW}:")
    e("            s = zero")
    e("            for sp in range(nsplit):")
    e(f"                s += sm[sp * {ncombo * PJ} + t]")
    e(f"            part[(chunk * C + c) * {KH * KW} + ii * {KW} + jj] = s")
    return _uconsts(max(L, TWG)) + "\n".join(o) + "\n"
