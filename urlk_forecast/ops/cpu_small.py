"""Depthwise conv on small maps (the forecaster's 16x24 and 8x12): shape-specialised numba kernels.

Design in :mod:`urlk_forecast.ops.small_codegen`. :mod:`urlk_forecast.ops.cpu_kernels` sends a call here when
:func:`geometry` accepts it: float32 or bfloat16 storage, a "same"-size output (stride 1), ``MIN_H``..``MAX_H``
rows of a width in ``WIDTHS``, kernels at most ``MAX_K`` per side. Each geometry (map, kernel, dilation, padding)
gets its own generated module in the kernels' cache directory, compiled on first use (a few seconds) and cached on
disk by numba; ``URLK_DWCONV_SMALL=0`` switches these kernels off (the general kernels run instead), which the
benchmark ``benchmarks/dwconv_small_maps.py`` uses to show both.

* forward: planes shared out over ``torch.get_num_threads()`` threads by an atomic counter in the kernel
  (:mod:`urlk_forecast.ops.cpu_atomic`), the weight of plane ``n`` is ``w[n % C]``;
* grad-input: the forward kernel on the output gradient with the kernel rotated by 180 degrees;
* grad-weight: channels over the threads, float64 sums (``None`` from :func:`grad_weight` when the partial sums
  would not fit in registers, or at large batches where the general kernel is faster: :func:`takes_grad_weight`;
  the caller then runs the general kernel).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from types import ModuleType
from typing import Any

import numpy as np
import torch

from urlk_forecast.ops import cpu_atomic, cpu_kernels, cpu_team, small_codegen
from urlk_forecast.ops.small_codegen import Geometry

__all__ = ["ENV", "MIN_H", "MAX_H", "WIDTHS", "MAX_K", "enabled", "geometry", "flipped", "forward",
           "grad_weight", "takes_grad_weight"]

ENV = "URLK_DWCONV_SMALL"
#: the maps these kernels take: the forecaster's 8x12 and 16x24 (and heights between), where they were measured
#: against oneDNN and the general kernels (docs/benchmarks.md, issue 15 item 3); every other map keeps the general
#: kernels (each new geometry would also cost a compilation of a few seconds)
MIN_H = 8
MAX_H = 16
WIDTHS = (12, 24)
MAX_K = 13
_DTYPES = (torch.float32, torch.bfloat16)

_lock = threading.RLock()
_modules: dict[Geometry, ModuleType] = {}
_ZERO = np.float32(0)
_geometries: dict[tuple, Geometry | None] = {}


def enabled() -> bool:
    """False when ``URLK_DWCONV_SMALL`` is ``0`` (read on every call, so a benchmark can flip it)."""
    return os.environ.get(ENV, "1") not in ("0", "")


def geometry(x: torch.Tensor, w: torch.Tensor, pads: tuple[int, int, int, int],
             dil: tuple[int, int]) -> Geometry | None:
    """The kernel geometry ``(H, W, KH, KW, dh, dw, top, left)`` of a forward call these kernels take, else None."""
    key = (x.shape, w.shape, x.dtype, w.dtype, pads, dil)
    g = _geometries.get(key, False)
    if g is False:
        g = _geometry(x, w, pads, dil)
        if len(_geometries) > 1024:
            _geometries.clear()
        _geometries[key] = g
    return g  # type: ignore[return-value]


def _geometry(x: torch.Tensor, w: torch.Tensor, pads: tuple[int, int, int, int],
              dil: tuple[int, int]) -> Geometry | None:
    if x.dtype not in _DTYPES or w.dtype not in _DTYPES or x.dim() != 4 or w.dim() != 4:
        return None
    H, W = x.shape[2:]
    KH, KW = w.shape[2:]
    t, b, l, r = pads
    if not (MIN_H <= H <= MAX_H and W in WIDTHS and KH <= MAX_K and KW <= MAX_K):
        return None
    if t + b != (KH - 1) * dil[0] or l + r != (KW - 1) * dil[1] or min(pads) < 0:  # a same-size output
        return None
    return (int(H), int(W), int(KH), int(KW), int(dil[0]), int(dil[1]), int(t), int(l))


def flipped(g: Geometry) -> Geometry:
    """The geometry of the grad-input: the same map and kernel, padding ``(K-1)*d - pad``."""
    H, W, KH, KW, dh, dw, pt, pl = g
    return (H, W, KH, KW, dh, dw, (KH - 1) * dh - pt, (KW - 1) * dw - pl)


# ------------------------------------------------------------------------------------------ modules, compiling
def _module(g: Geometry) -> ModuleType:
    """The generated kernel module of geometry ``g`` (written to the cache directory if needed, then imported)."""
    mod = _modules.get(g)
    if mod is not None:
        return mod
    with _lock:
        if g in _modules:
            return _modules[g]
        from urlk_forecast.ops.cpu_codegen import _helpers_digest

        src = small_codegen.module_source(g, _helpers_digest() + _helpers_digest("cpu_atomic.py"))
        mod = cpu_kernels.import_generated("urlk_dwconv_small_" + hashlib.sha256(src.encode()).hexdigest()[:16], src)
        _modules[g] = mod
        return mod


_fns: dict[tuple, Any] = {}


def _kernel(kind: str, g: Geometry, args: tuple[Any, ...], key: tuple) -> Any:
    """Kernel ``kind`` (``sfwd`` / ``sgw``) of geometry ``g``, compiled for ``args`` on first use under the general
    kernels' compile settings, locks and log lines; ``key`` (the storage dtypes) names the compiled variant, so a
    call never compiles implicitly (numba would, without those settings)."""
    fn = _fns.get((kind, g, key))
    if fn is not None:
        return fn
    name = f"{kind}_" + "_".join(str(v) for v in g)
    fn = getattr(_module(g), name)
    import numba

    with _lock:
        if (kind, g, key) not in _fns:
            dtype = key[0]
            with (cpu_kernels._compile_notice(name, dtype, g[2:4]), cpu_kernels._driver_lock(name, dtype),
                  cpu_kernels._compile_ctx()):
                fn.compile(tuple(numba.typeof(a) for a in args))
            _fns[(kind, g, key)] = fn
    return fn


def _run(fn: Any, head: tuple[Any, ...], units: int, threads: int) -> None:
    """``fn(*head, lo, hi, zero)`` over ``units`` in ~4 chunks per thread pulled from a shared counter (as
    :func:`urlk_forecast.ops.cpu_kernels._run`)."""
    zero = _ZERO
    if threads <= 1:
        fn(*head, 0, units, zero)
        return
    chunks = min(units, 4 * threads)
    if cpu_team.enabled() and cpu_team.launch(fn, head + (0, units, zero), threads, chunks):
        return
    bounds = [units * k // chunks for k in range(chunks + 1)]
    counter = itertools.count()

    def work() -> None:
        while (k := next(counter)) < chunks:
            fn(*head, bounds[k], bounds[k + 1], zero)

    futures = [cpu_kernels._get_pool(threads - 1).submit(work) for _ in range(threads - 1)]
    try:
        work()
    finally:
        for f in futures:
            f.result()


def _run_shared(fn: Any, args: tuple[Any, ...], threads: int) -> None:
    """``fn(*args)`` on ``threads`` threads at once, the caller one of them; the kernel shares its planes out through
    the :func:`urlk_forecast.ops.cpu_atomic.state` last in ``args``, and the caller spins until the others are done
    (:mod:`urlk_forecast.ops.cpu_atomic`: neither a late pool thread nor the caller's wake-up stalls the call)."""
    if threads > 1 and cpu_team.enabled() and cpu_team.launch(fn, args, threads):
        return
    if threads > 1:
        pool = cpu_kernels._get_pool(threads - 1)
        for _ in range(threads - 1):
            pool.submit(fn, *args)
    fn(*args)
    if threads > 1:
        cpu_atomic.wait(args[-2])


#: executed multiply-adds per thread at least before a second thread is used by the grad-weight kernel (chunks
#: pulled by pool threads). Waking a pool thread costs ~40-60 us on the 2-core dev machine, and right after a torch
#: call (the normal case in training) the other core is taken by oneDNN's spinning OpenMP worker: interleaved with
#: F.conv2d (2026-12-07, 32 x 80 x 8 x 12 forwards, chunked then) one thread ran K=5 in 0.30-0.35 ms vs 0.35-0.42 on
#: two, K=7 d=2 0.33 vs 0.39, K=3 d=4 0.20 vs 0.25, while K=13 (33 M) gained from two (0.49-0.64 vs 0.74-0.78 ms)
MIN_WORK_PER_THREAD = 8_000_000
#: the same on torch's OpenMP threads (:mod:`urlk_forecast.ops.cpu_team`). Session 14 (Zen 4 dev machine, medians of
#: 60 calls each after oneDNN's grad-weight, 8 M vs 1.5 M per thread): 32 x 40 x 16 x 24 K=3 (4.4 M multiply-adds)
#: 0.72 vs 0.58 ms, 32 x 80 x 8 x 12 K=5 (7.0 M) 0.92 vs 0.82, K=3 d=3 (2.2 M: one thread either way) 0.31 vs 0.31
MIN_WORK_PER_THREAD_TEAM = 1_500_000
#: the same for the forward (and grad-input), whose threads share planes through the atomic counter: a late thread
#: costs less there. Measured 2026-12-07 (session 13, medians of 5 x 60 calls, 32 x 80 x 8 x 12 unless said, one vs
#: two threads): 1.7 M multiply-adds (8 images K=5) 0.033 vs 0.063 ms, 4.6 M (16 images K=7 d=2) 0.068 vs 0.094,
#: 7.0 M (K=5) 0.115-0.122 vs 0.091-0.126, 8.3 M (8 images K=13) 0.095 vs 0.096, 33 M (K=13) 0.34 vs 0.22
MIN_FWD_WORK_PER_THREAD = 5_000_000
#: the same on torch's OpenMP threads (:mod:`urlk_forecast.ops.cpu_team`), which are spinning, not asleep, after a
#: torch op. Measured 2026-12-07 (session 14, Zen 4 dev machine, medians of 80 calls each after an F.conv2d, x 80 x
#: 8 x 12 forwards, two threads vs one): 1.7 M (8 images K=5) 0.115 vs 0.111 ms, 2.2 M (32 images K=3 d=3) 0.149 vs
#: 0.169, 3.5 M (16 images K=5) 0.125 vs 0.148, 7.0 M (K=5) 0.206 vs 0.272, 33 M (K=13) 0.475 vs 0.773; and with
#: two threads from 1.6 M instead of 2 M, 32 images K=3 d=4 (2.0 M) and d=5 (1.7 M) went from 0.154 to 0.104-0.108
#: ms (float32; oneDNN 0.13-0.15), session 14, benchmarks/dwconv_small_maps.py --repeats 21
MIN_FWD_WORK_PER_THREAD_TEAM = 800_000
#: from this many images a grad-weight of more than ``GW_GENERAL_TAPS`` taps (K=5: 25 taps x 12 lanes of partial
#: sums, most of the registers) goes to the general kernel: at 350 x 80 x 8 x 12, K=5 it ran 6.5 ms there vs 8.0 here
#: (docs/benchmarks.md, 2026-12-06), while at 32 images this kernel is 1.15-2.5x faster than the general one, and
#: at 350 x 40 x 16 x 24, K=3 (9 taps x 24 lanes) 1.9x faster (5.6 vs 10.3 ms)
GW_GENERAL_BATCH = 128
GW_GENERAL_TAPS = 20
_plane_works: dict[Geometry, int] = {}


def _plane_work(g: Geometry) -> int:
    n = _plane_works.get(g)
    if n is None:
        n = _plane_works[g] = small_codegen.work(g)
    return n


def _threads(units: int, work: int, per_thread: int) -> int:
    return max(1, min(torch.get_num_threads(), units, work // per_thread))


# ----------------------------------------------------------------------------------------------- torch layer
_U64 = 1 << 64


def _steps(g: Geometry, flip: bool) -> tuple[np.uint64, np.uint64, np.uint64]:
    """(woff, astep, bstep) of the forward kernel's weight reads (small_codegen.fwd_source): as stored, or rotated."""
    KH, KW = g[2], g[3]
    if not flip:
        return np.uint64(0), np.uint64(KW), np.uint64(1)
    return np.uint64(KH * KW - 1), np.uint64(_U64 - KW), np.uint64(_U64 - 1)


def forward(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, g: Geometry,
            out: torch.Tensor | None = None, flip: bool = False) -> torch.Tensor:
    """Depthwise conv of ``x`` (B, C, H, W) contiguous with ``w`` (C, 1, KH, KW) on geometry ``g`` (from
    :func:`geometry`); ``flip``: with the kernel rotated by 180 degrees (the grad-input, ``g`` then the
    :func:`flipped` geometry, ``x`` the output gradient). Returns (B, C, H, W) in ``x``'s dtype (or fills ``out``)."""
    B, C, H, W = x.shape
    y = torch.empty_like(x) if out is None else out
    if y.numel() == 0:
        return y
    wt = w.detach().contiguous().view(-1)  # (C, KH, KW) as stored; the kernel reads it (flipped)
    has_bias = bias is not None
    if bias is not None and bias.dtype not in _DTYPES:
        bias = bias.float()
    bt = bias.detach().contiguous().view(-1) if bias is not None else wt
    P = B * C
    tail = (C,) + _steps(g, flip) + (0, P, cpu_atomic.state(), _ZERO)
    key = ("sfwd", g, (x.dtype, w.dtype, bt.dtype))
    fn = _fns.get(key)
    per_thread = MIN_FWD_WORK_PER_THREAD_TEAM if cpu_team.enabled() else MIN_FWD_WORK_PER_THREAD
    threads = _threads(P, P * _plane_work(g), per_thread)
    if fn is not None and cpu_team.call(fn, (x.view(-1), wt, bt, has_bias, y.view(-1)) + tail, threads, key):
        return y
    np_ = cpu_kernels._np
    args = (np_(x.view(-1)), np_(wt), np_(bt), has_bias, np_(y.view(-1))) + tail
    fn = _kernel("sfwd", g, args, (x.dtype, w.dtype, bt.dtype))
    _run_shared(fn, args, threads)
    return y


def takes_grad_weight(g: Geometry, batch: int) -> bool:
    """Whether :func:`grad_weight` runs the grad-weight of geometry ``g`` at this batch (else the general kernel)."""
    KH, KW = g[2], g[3]
    return small_codegen.gw_fits(g) and not (batch >= GW_GENERAL_BATCH and KH * KW > GW_GENERAL_TAPS)


def grad_weight(x: torch.Tensor, gy: torch.Tensor, w: torch.Tensor, g: Geometry) -> torch.Tensor | None:
    """Gradient w.r.t. the weight, (C, 1, KH, KW) in ``w``'s dtype, or None when this geometry's partial sums do
    not fit the registers (:func:`urlk_forecast.ops.small_codegen.gw_fits`), or fill most of them at a batch where
    the general kernel is faster (``GW_GENERAL_BATCH``, ``GW_GENERAL_TAPS``). ``x`` and ``gy`` contiguous."""
    B, C, H, W = x.shape
    KH, KW = g[2], g[3]
    if not takes_grad_weight(g, B):
        return None
    gwa = torch.empty(C, KH * KW, dtype=torch.float64)
    if B == 0:
        gwa.zero_()
    else:
        P = B * C
        head = (cpu_kernels._np(x.view(-1)), cpu_kernels._np(gy.view(-1)), gwa.view(-1).numpy(), C)
        fn = _kernel("sgw", g, head + (0, C, _ZERO), (x.dtype,))
        per_thread = MIN_WORK_PER_THREAD_TEAM if cpu_team.enabled() else MIN_WORK_PER_THREAD
        _run(fn, head, C, _threads(C, P * _plane_work(g), per_thread))
    return gwa.to(w.dtype).view(C, 1, KH, KW)
