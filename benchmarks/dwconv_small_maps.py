"""Own depthwise-conv kernels vs oneDNN on the forecaster's small maps, per shape and direction (issue 15 item 3).

The call shapes are those of the default ``Forecaster()`` network (``unireplknet_a`` on a 64x96 image; see
``benchmarks/dwconv_dispatch.py``, configurations ``4x32`` and ``3850x1``): batches of 32 and 350 images, maps 16x24
(C=40, K=3), 8x12 (C=80, K=13 and the re-parameterisation branches K=5, K=7 d=2, K=3 d=3/4/5), and with
``--all`` also 4x6 (C=160) and 2x3 (C=320). Every direction (forward, grad-input, grad-weight) runs on

* ``own``: the own kernels as the dispatcher runs them (:func:`urlk_forecast.ops.cpu_paths.compute`), i.e. the
  small-map kernels (:mod:`urlk_forecast.ops.cpu_small`) where they apply;
* ``old``: the own kernels with the small-map kernels switched off (``URLK_DWCONV_SMALL=0``: the spatial and
  channel-blocked kernels of before), only with ``--old``;
* ``pool``: the own kernels sharing a call over a Python thread pool instead of torch's OpenMP threads
  (``URLK_DWCONV_TEAM=0``, :mod:`urlk_forecast.ops.cpu_team`), only with ``--pool``;
* ``torch``: ``F.conv2d`` / ``aten.convolution_backward`` (oneDNN).

The paths run interleaved (in a cycle in which each path follows each other path equally often); the **median**
is reported in ms, and ``torch/own`` > 1 means the own kernels are faster. Rows whose torch call takes longer than
``--slow-ms`` get fewer repeats (grad-weight of oneDNN takes up to 0.25 s on these shapes).

    python benchmarks/dwconv_small_maps.py                       # 16x24 and 8x12, both batches, float32
    python benchmarks/dwconv_small_maps.py --old --all --dtypes float32 bfloat16
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

from urlk_forecast.models import fastpath
from urlk_forecast.ops import cpu_kernels, cpu_paths

DIRECTIONS = ("forward", "grad_input", "grad_weight")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: (C, H, W, K, dilation) of the forecaster's depthwise calls, 'same' padding
SHAPES_MAIN = [(40, 16, 24, 3, 1), (80, 8, 12, 13, 1), (80, 8, 12, 5, 1), (80, 8, 12, 7, 2), (80, 8, 12, 3, 3),
               (80, 8, 12, 3, 4), (80, 8, 12, 3, 5)]
SHAPES_TINY = [(160, 4, 6, 13, 1), (160, 4, 6, 5, 1), (160, 4, 6, 7, 2), (160, 4, 6, 3, 3), (320, 2, 3, 13, 1),
               (320, 2, 3, 5, 1), (320, 2, 3, 7, 2), (320, 2, 3, 3, 3)]


#: the own kernels with one feature switched off by its environment variable
VARIANTS = {"old": "URLK_DWCONV_SMALL", "pool": "URLK_DWCONV_TEAM"}


def _fn(direction: str, impl: str, x: torch.Tensor, w: torch.Tensor, gy: torch.Tensor,
        pads: tuple[int, int, int, int], dil: tuple[int, int]) -> Callable[[], None]:
    env = VARIANTS.get(impl)
    impl = "own" if env else impl

    def run() -> None:
        if env:
            os.environ[env] = "0"
        try:
            cpu_paths.compute(direction, impl, x, w, None if direction == "forward" else gy, pads, dil)
        finally:
            if env:
                os.environ.pop(env, None)
    return run


def time_row(shape: tuple[int, int, int, int, int], batch: int, direction: str, dtype: torch.dtype,
             impls: list[str], repeats: int, slow_ms: float) -> dict[str, float]:
    """Median ms per implementation of one direction of one call shape."""
    C, H, W, K, d = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, C, H, W, generator=gen).to(dtype)
    w = (torch.randn(C, 1, K, K, generator=gen) / K).to(dtype)
    gy = torch.randn(batch, C, H, W, generator=gen).to(dtype)
    p = d * (K - 1) // 2
    pads, dil = (p, p, p, p), (d, d)
    fns = {i: _fn(direction, i, x, w, gy, pads, dil) for i in impls}
    first = {}
    for i, fn in fns.items():  # warm-up (compilation, oneDNN primitive creation), then one timed call
        fn()
        t0 = time.perf_counter()
        fn()
        first[i] = time.perf_counter() - t0
    n = repeats if max(first.values()) * 1e3 < slow_ms else max(3, repeats // 4)
    samples: dict[str, list[float]] = {i: [] for i in impls}
    # each path follows each other path equally often (torch's OpenMP threads spin for a while after its calls
    # and slow down whatever runs next on the 2 cores): a b | a b, or a b c a c b for three paths
    cycle = impls if len(impls) == 2 else [impls[0], impls[1], impls[2], impls[0], impls[2], impls[1]]
    for r in range(n):
        for i in cycle[(r % 2) * 3:(r % 2) * 3 + 3] if len(impls) == 3 else cycle:
            t0 = time.perf_counter()
            fns[i]()
            samples[i].append(time.perf_counter() - t0)
    return {i: statistics.median(s) * 1e3 for i, s in samples.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", nargs="+", type=int, default=[32, 350])
    ap.add_argument("--dtypes", nargs="+", default=["float32"], choices=list(DTYPES))
    ap.add_argument("--directions", nargs="+", default=list(DIRECTIONS), choices=list(DIRECTIONS))
    ap.add_argument("--all", action="store_true", help="also the 4x6 and 2x3 maps")
    ap.add_argument("--old", action="store_true", help="also the own kernels without the small-map kernels")
    ap.add_argument("--pool", action="store_true",
                    help="also the own kernels on the Python thread pool instead of torch's OpenMP threads")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--slow-ms", type=float, default=30.0, help="rows slower than this get repeats/4")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", default=None, help="only shapes whose 'CxHxW Kk dd' label contains this")
    ap.add_argument("--no-retain", action="store_true",
                    help="leave glibc's allocator as it is (default: keep freed memory, as training does)")
    opts = ap.parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if not opts.no_retain:  # the allocator state of training: outputs are not page-faulted in per call
        fastpath.tune_allocator("cpu")
    if not cpu_kernels.available():
        print("own CPU kernels unavailable", file=sys.stderr)
        return 1
    impls = ["own"] + (["old"] if opts.old else []) + (["pool"] if opts.pool else []) + ["torch"]
    if len(impls) > 3:
        ap.error("--old and --pool: one at a time")
    shapes = SHAPES_MAIN + (SHAPES_TINY if opts.all else [])
    print(f"# {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    head = ["dtype", "x (BxCxHxW)", "K", "dil", "direction"] + [f"{i} ms" for i in impls] + ["torch/own"]
    for v in VARIANTS:
        if v in impls:
            head.append(f"{v}/own")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * 5 + "---:|" * (len(head) - 5))
    t_start = time.perf_counter()
    for dname in opts.dtypes:
        for batch in opts.batches:
            for C, H, W, K, d in shapes:
                label = f"{C}x{H}x{W} K{K} d{d}"
                if opts.only and opts.only not in label:
                    continue
                for direction in opts.directions:
                    t = time_row((C, H, W, K, d), batch, direction, DTYPES[dname], impls, opts.repeats,
                                 opts.slow_ms)
                    cells = [dname, f"{batch}x{C}x{H}x{W}", f"{K}x{K}", str(d), direction]
                    cells += [f"{t[i]:.3f}" for i in impls] + [f"{t['torch'] / t['own']:.2f}"]
                    cells += [f"{t[v] / t['own']:.2f}" for v in VARIANTS if v in impls]
                    print("| " + " | ".join(cells) + " |", flush=True)
    print(f"# {time.perf_counter() - t_start:.0f} s, load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
