"""Source generation of the small-map depthwise-conv kernels (runtime: :mod:`urlk_forecast.ops.cpu_small`).

On the forecaster's maps (16x24, 8x12) a whole plane fits in a few vector registers, and the general kernels of
:mod:`urlk_forecast.ops.cpu_codegen` lose to oneDNN on what surrounds the arithmetic: per-column-block bookkeeping,
padded lanes, taps that only read zero padding, and (channel-blocked kernels) a strided transpose in and out of
every plane. These kernels are specialised on the whole call geometry ``(H, W, KH, KW, dh, dw, pt, pl)``, which the
forecaster has only a handful of, so that everything but the plane loop is a compile-time constant:

* **rows exact**: for an output row ``i`` only the kernel rows ``a`` whose input row ``i + a*dh - pt`` lies in the
  image produce code (the pairs (output row, input row, kernel row) are enumerated here), so no FMA ever reads a
  zero row of padding, at any dilation;
* **a row is a vector**: ``W`` lanes (12 or 24: one or two AVX-512 registers, SLP-vectorised from scalar
  statements as in :mod:`urlk_forecast.ops.cpu_codegen`), ``R`` output rows of accumulators at once; per kernel
  column each needed input row is loaded once and feeds every output row of the block that uses it;
* **planes stay NCHW**: a plane is copied (with bfloat16 conversion, :mod:`urlk_forecast.ops.cpu_bf16`) into a
  zero-padded scratch whose padding is written once per call, the result copied out once; no transposes. The
  accumulators start at the bias; their rows (all lanes, so the junk lanes stay in the vectors) go to a scratch,
  are packed to ``W`` lanes by row copies, and one flat loop over the plane stores it: the loop vectoriser turns that
  into whole-vector bfloat16 rounding (straight-line 12-lane stores were left scalar, ~10 instructions per element:
  bfloat16 forwards cost ~0.13 ms more than float32 per 2560 planes of 8x12, now ~0.04).

Grad-input is the forward kernel applied to the output gradient with the kernel rotated by 180 degrees (padding
``(K-1)*d - pad``). Grad-weight keeps all ``KH*KW`` taps x ``W`` lanes of partial sums in registers across a block
of images of one channel (so only small kernels, see :func:`gw_fits`), flushed into float64 per block.
"""

from __future__ import annotations

__all__ = ["Geometry", "fwd_source", "gw_source", "gw_fits", "module_source", "SMALL_VERSION", "rows_per_block",
           "lanes", "work"]

SMALL_VERSION = "7"
#: scalar accumulators (rows x lanes) of one forward register block: 8 rows of 12 lanes, 4 rows of 24
_FWD_ACC = 128
#: scalar accumulators (taps x lanes) the grad-weight kernel may keep in registers
_GW_ACC = 320
#: images of one channel whose grad-weight partial sums are kept in float32 before they go into float64
GW_IMAGES = 16

_FASTMATH = "{'contract', 'nnan', 'ninf', 'nsz', 'arcp', 'afn'}"
_JIT = f"@njit(fastmath={_FASTMATH}, cache=True, nogil=True, pipeline_class=NoSSACompiler)"

#: (H, W, KH, KW, dh, dw, pt, pl): map size, kernel, dilation, top/left padding; the output is H x W
Geometry = tuple[int, int, int, int, int, int, int, int]


def rows_per_block(W: int) -> int:
    """Output rows per forward register block (``R * lanes(W) <= _FWD_ACC`` scalars, at least 1)."""
    return max(1, _FWD_ACC // lanes(W))


def _triples(g: Geometry, i0: int, i1: int) -> list[tuple[int, int, int]]:
    """(output row, input row, kernel row) for the output rows [i0, i1) whose input row lies in the image."""
    H, _, KH, _, dh, _, pt, _ = g
    return [(i, i + a * dh - pt, a) for i in range(i0, i1) for a in range(KH) if 0 <= i + a * dh - pt < H]


def _col_range(g: Geometry) -> tuple[int, int]:
    """Kernel columns [lo, hi) that read an image column for at least one output column."""
    _, W, _, KW, _, dw, _, pl = g
    cols = [b for b in range(KW) if any(0 <= j + b * dw - pl < W for j in range(W))]
    return (cols[0], cols[-1] + 1) if cols else (0, 0)


def scratch_stride(g: Geometry) -> int:
    """Row stride of the zero-padded input scratch: ``pl`` zeros, the row, zeros up to the last column read."""
    _, W, _, KW, _, dw, _, pl = g
    return max(pl + W, lanes(W) + (KW - 1) * dw)


def lanes(W: int) -> int:
    """Accumulator lanes of a forward row: ``W`` rounded up to whole 16-float vectors. With exactly ``W`` lanes
    (12) the SLP vectorizer packs lanes of different rows into one vector and pays a permute per FMA (measured
    3.5x slower at K=13); the extra lanes compute junk that is never stored."""
    return -(-W // 16) * 16


def _name(kind: str, g: Geometry) -> str:
    return f"{kind}_" + "_".join(str(v) for v in g)


def _copy_in(e, ind: str, g: Geometry, src: str, nb: str) -> None:
    """Copy plane ``nb`` of the flat storage array ``src`` into the rows of the padded scratch ``xs`` (float32)."""
    H, W, S, pl = g[0], g[1], scratch_stride(g), g[7]
    e(f"{ind}for r in range(np.uint64({H})):")
    e(f"{ind}    sb = {nb} + r * np.uint64({W}); db = r * np.uint64({S}) + np.uint64({pl})")
    e(f"{ind}    " + "; ".join(f"t{l} = load({src}, sb + np.uint64({l}))" for l in range(W)))
    e(f"{ind}    " + "; ".join(f"xs[db + np.uint64({l})] = t{l}" for l in range(W)))


def _fwd_cols(e, g: Geometry, tri: list[tuple[int, int, int]]) -> None:
    """The forward's loop over the kernel columns that read the image (:func:`_col_range`), whole rows of lanes,
    for the output rows in ``tri``: the weights of the column (read flipped for the grad-input), each needed input
    row loaded once, then the FMAs. Every statement of the loop is ``lanes(W)`` wide: a column run on 8-lane halves
    (tried, 2026-12-07) made LLVM's SLP vectorizer pack every accumulator in 8-lane vectors, and this CPU (AMD Zen 5:
    two full 512-bit FMA pipes) then ran the K=13 forward at 8x12 1.45x slower than on whole 16-lane rows."""
    dw, S = g[5], scratch_stride(g)
    b0, b1 = _col_range(g)
    lanes_ = range(lanes(g[1]))
    e(f"        for b in range(np.uint64({b0}), np.uint64({b1})):")
    e(f"            cb = b * np.uint64({dw})")
    e("            wbb = wb + b * bstep")
    for a in sorted({a for _, _, a in tri}):
        e(f"            w{a} = load(wt, wbb + np.uint64({a}) * astep)")
    for r in sorted({r for _, r, _ in tri}):
        e(f"            xb = cb + np.uint64({r * S})")
        e("            " + "; ".join(f"x{r}_{l} = xs[xb + np.uint64({l})]" for l in lanes_))
    for i, r, a in tri:
        for l in lanes_:
            e(f"            a{i}_{l} += w{a} * x{r}_{l}")


def fwd_source(g: Geometry) -> list[str]:
    """Forward (and grad-input) kernel of geometry ``g`` over the planes [lo, hi) of ``xf`` (P*H*W, flat):
    ``out[n] = conv(x[n], w[n % C]) + bias``; ``wt`` the weight as stored, (C, KH, KW) flat, float32 or bfloat16
    bits, tap (a, b) of channel c read at ``c*KH*KW + woff + a*astep + b*bstep`` (uint64, wrapping): (0, KW, 1), or
    (KH*KW-1, -KW, -1) for the kernel rotated by 180 degrees (the grad-input). Taking the weight (and bias) as stored
    spares the caller ~10 us of torch ops per call, a few % of a 0.2 ms call; a branch on the rotation inside the
    column loop instead made LLVM spill accumulators."""
    H, W, KH, KW, dh, dw, pt, pl = g
    S = scratch_stride(g)
    R = rows_per_block(W)
    V = lanes(W)
    L: list[str] = []
    e = L.append
    e(_JIT)
    e(f"def {_name('sfwd', g)}(xf, wt, bias, has_bias, outf, C, woff, astep, bstep, lo, hi, st, zero):")
    e(f"    xs = np.zeros({H * S + 1}, np.float32)  # zero padding written once; rows overwritten per plane")
    e(f"    o = np.empty({H * V}, np.float32)  # rows of all V lanes: junk lanes stored, so they stay in the vectors")
    e(f"    op = np.empty({H * W}, np.float32)")
    e("    fetch_add(st, STARTED, 1)")
    e("    n = np.int64(0); end = np.int64(0)")
    e("    for _ in range(lo, hi):  # planes taken GRAB at a time from the shared counter (cpu_atomic)")
    e("        if n >= end:  # guided: an eighth of what is left, at least GRAB_WORK multiply-adds")
    e(f"            take = max({grab(g)}, (hi - lo - fetch_add(st, COUNT, 0)) // 8)")
    e("            n = lo + fetch_add(st, COUNT, take)")
    e("            if n >= hi:")
    e("                break")
    e("            end = min(n + take, hi)")
    e("        c = n % C")
    e(f"        nb = np.uint64(n) * np.uint64({H * W})")
    _copy_in(e, "        ", g, "xf", "nb")
    e(f"        wb = np.uint64(c * {KH * KW}) + woff")
    e("        bv = load(bias, c) if has_bias else zero")
    for i0 in range(0, H, R):
        i1 = min(H, i0 + R)
        tri = _triples(g, i0, i1)
        for i in range(i0, i1):
            e("        " + "; ".join(f"a{i}_{l} = bv" for l in range(V)))
        if tri:
            _fwd_cols(e, g, tri)
        for i in range(i0, i1):
            e("        " + "; ".join(f"o[{i * V + l}] = a{i}_{l}" for l in range(V)))
    e(f"        for r in range(np.uint64({H})):  # the W image lanes of each row, packed (as in _copy_in)")
    e(f"            sb = r * np.uint64({V}); db = r * np.uint64({W})")
    e("            " + "; ".join(f"t{l} = o[sb + np.uint64({l})]" for l in range(W)))
    e("            " + "; ".join(f"op[db + np.uint64({l})] = t{l}" for l in range(W)))
    e(f"        for k in range(np.uint64({H * W})):  # one vectorised pass (and bfloat16 rounding) per plane")
    e("            store(outf, nb + k, op[k])")
    e("        n += 1")
    e("    fetch_add(st, DONE, 1)")
    return L


#: multiply-adds (lanes included) a thread takes from the shared counter at least (~5 us of work): it takes an
#: eighth of the planes left, so few atomic adds (~0.1-0.2 us each when the line moves between the cores) and a
#: last take of ~5 us, after which the other thread waits at most that long
GRAB_WORK = 250_000


def grab(g: Geometry) -> int:
    """Planes a thread takes from the shared counter at least (``GRAB_WORK`` multiply-adds, at least one plane)."""
    return max(1, GRAB_WORK // work(g))


def work(g: Geometry) -> int:
    """Multiply-adds per plane the forward kernel executes (its lanes included): what the thread count follows."""
    b0, b1 = _col_range(g)
    return len(_triples(g, 0, g[0])) * (b1 - b0) * lanes(g[1])


def gw_fits(g: Geometry) -> bool:
    """Whether the grad-weight kernel keeps all its partial sums in registers for this geometry."""
    W, KH, KW = g[1:4]
    return KH * KW * W <= _GW_ACC


def _full_rows(g: Geometry) -> tuple[int, int]:
    """Output rows [lo, hi) whose every kernel row reads the image (the grad-weight loops over them at run time)."""
    H, _, KH, _, dh, _, pt, _ = g
    full = [i for i in range(H) if i - pt >= 0 and i + (KH - 1) * dh - pt < H]
    return (full[0], full[-1] + 1) if full else (0, 0)


def _gw_row(e, ind: str, g: Geometry, i: str, pairs: list[tuple[str, int]], cols: range) -> None:
    """Grad-weight partial sums of output row ``i`` (an expression): ``pairs`` = (scratch row expression, kernel
    row) of the input rows it meets."""
    W, dw, S = g[1], g[5], scratch_stride(g)
    e(f"{ind}gb = nb + np.uint64({W}) * ({i})")
    e(ind + "; ".join(f"g{l} = load(gyf, gb + np.uint64({l}))" for l in range(W)))
    for r, a in pairs:
        for b in cols:
            e(f"{ind}xb = np.uint64({S}) * ({r}) + np.uint64({b * dw})")
            e(ind + "; ".join(f"s{a}_{b}_{l} += g{l} * xs[xb + np.uint64({l})]" for l in range(W)))


def gw_source(g: Geometry) -> list[str]:
    """Grad-weight kernel of geometry ``g`` over the channels [lo, hi): ``gwa[c, a*KW + b]`` (float64) = sum over
    images and pixels of ``gy * x`` shifted by the tap. Partial sums (taps x W lanes) stay in registers over
    ``GW_IMAGES`` images, then go into float64; a channel is summed by one thread in a fixed order (results do not
    depend on the thread count). Rows whose kernel rows all read the image run in a loop, the others unrolled."""
    H, W, KH, KW, dh, dw, pt, pl = g
    tri = _triples(g, 0, H)
    blo, bhi = _col_range(g)
    cols = range(blo, bhi)
    taps = [(a, b) for a in range(KH) for b in cols]
    flo, fhi = _full_rows(g)
    L: list[str] = []
    e = L.append
    e(_JIT)
    e(f"def {_name('sgw', g)}(xf, gyf, gwa, C, lo, hi, zero):")
    e(f"    xs = np.zeros({H * scratch_stride(g) + 1}, np.float32)")
    e(f"    acc = np.zeros({KH * KW * W}, np.float64)")
    e(f"    B = xf.shape[0] // ({H * W} * C)")
    e("    for c in range(lo, hi):")
    e("        acc[:] = 0.0")
    e(f"        for n0 in range(0, B, {GW_IMAGES}):")
    for a, b in taps:
        e("            " + "; ".join(f"s{a}_{b}_{l} = zero" for l in range(W)))
    e(f"            for n in range(n0 * C + c, min(B, n0 + {GW_IMAGES}) * C, C):")
    e(f"                nb = np.uint64(n) * np.uint64({H * W})")
    _copy_in(e, "                ", g, "xf", "nb")
    for i in [i for i in range(H) if not flo <= i < fhi]:
        pairs = [(f"np.uint64({r})", a) for ii, r, a in tri if ii == i]
        if pairs:
            _gw_row(e, "                ", g, f"np.uint64({i})", pairs, cols)
    if fhi > flo:
        e(f"                for i in range(np.uint64({flo}), np.uint64({fhi})):")
        pairs = [(f"i + np.uint64({a * dh}) - np.uint64({pt})", a) for a in range(KH)]
        _gw_row(e, "                    ", g, "i", pairs, cols)
    for a, b in taps:
        e(f"            t = {(a * KW + b) * W}")
        e("            " + "; ".join(f"acc[t + {l}] += s{a}_{b}_{l}" for l in range(W)))
    e(f"        for t in range({KH * KW}):")
    e("            tot = 0.0")
    e(f"            for l in range({W}):")
    e(f"                tot += acc[t * {W} + l]")
    e(f"            gwa[c * {KH * KW} + t] = tot")
    return L


def module_source(g: Geometry, helpers_digest: str) -> str:
    """The kernel module of one geometry: the forward kernel, and the grad-weight kernel when it fits."""
    lines = [
        '"""Generated by urlk_forecast.ops.small_codegen - do not edit."""',
        "import numpy as np",
        "from numba import njit",
        "",
        "from urlk_forecast.ops.cpu_atomic import COUNT, DONE, STARTED, fetch_add",
        "from urlk_forecast.ops.cpu_bf16 import load, store",
        "from urlk_forecast.ops.cpu_kernels import NoSSACompiler",
        "",
        f"# small-map kernels v{SMALL_VERSION}; helpers: urlk_forecast/ops/cpu_bf16.py + cpu_atomic.py, sha256 "
        f"{helpers_digest}",
        "",
        "",
    ]
    lines += fwd_source(g)
    if gw_fits(g):
        lines += ["", ""] + gw_source(g)
    return "\n".join(lines) + "\n"
