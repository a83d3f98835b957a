"""Depthwise convs in bfloat16 on CPU (issue 15 item 4): own fp32, own bf16, torch (oneDNN) bf16 side by side.

Two kinds of cases:

* ``--forecaster STATIONSxBATCH`` (default ``4x32``): every depthwise call one forward of the default
  ``Forecaster()`` network makes (recorded from the network itself, so the shapes, kernel sizes, dilations and
  channel counts are the real ones: UniRepLKNet-A on the 64x96 image -> 16x24, 8x12, 4x6 and 2x3 maps), grouped by
  map size; a group's time is that of running all its calls once;
* ``--table1`` (default on): the Table 1 case K=31 on (8, 384, 32, 32), one layer.

Each variant is ``PATH:DTYPE``: ``own`` (own kernels for every call), ``auto`` (the default dispatch) or ``torch``
(``F.conv2d``: oneDNN), with float32 or bfloat16 tensors (what ``torch.autocast("cpu", torch.bfloat16)`` hands the
op). Variants run interleaved repeat by repeat; medians, forward and forward + backward (input and weight
gradients), with each variant's time relative to the first one.

    python benchmarks/dwconv_bf16.py
    python benchmarks/dwconv_bf16.py --forecaster 4x32 3850x1 --variants own:fp32 own:bf16 torch:bf16 auto:bf16
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

import urlk_forecast.ops as ops

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
Call = tuple[tuple[int, ...], torch.Tensor, bool, Any, Any]  # input shape, weight, has bias, padding, dilation


def forecaster_calls(stations: int, batch: int) -> list[Call]:
    """The depthwise calls of one training-mode forward of the default Forecaster network."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from forecaster_profile import setup  # the profile's network and batches (same script directory)

    fc, ws, batches = setup(stations, batch, 0)
    net = fc.net
    assert net is not None
    calls: list[Call] = []
    real = ops.dwconv2d

    def spy(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding: Any = None,
            dilation: Any = 1) -> torch.Tensor:
        calls.append((tuple(x.shape), weight.detach().clone(), bias is not None, padding, dilation))
        return real(x, weight, bias, padding, dilation)

    ops.dwconv2d = spy
    try:
        from urlk_forecast.config import TrainConfig
        from urlk_forecast.distributed import DistContext
        from urlk_forecast.trainer import _train_step

        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        _train_step(net, opt, torch.amp.GradScaler("cpu", enabled=False), ws.batch(batches[0]), None, None,
                    TrainConfig(grad_clip=5.0), DistContext())
    finally:
        ops.dwconv2d = real
    return calls


def make_runner(calls: list[Call], dtype: torch.dtype, backward: bool) -> Callable[[], None]:
    """A function running every call once (forward, or forward + backward) on fresh leaf tensors of ``dtype``."""
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(shape, generator=gen).to(dtype).requires_grad_(backward),
             w.to(dtype).requires_grad_(backward),
             torch.zeros(w.shape[0], dtype=dtype, requires_grad=backward) if has_bias else None, pad, dil)
            for shape, w, has_bias, pad, dil in calls]

    def run() -> None:
        for x, w, b, pad, dil in data:
            if backward:
                y = ops.dwconv2d(x, w, b, pad, dil)
                y.backward(torch.ones_like(y))
                x.grad = w.grad = None
                if b is not None:
                    b.grad = None
            else:
                with torch.no_grad():
                    ops.dwconv2d(x, w, b, pad, dil)
    return run


def time_variants(calls: list[Call], variants: list[str], backward: bool, warmup: int, repeats: int
                  ) -> dict[str, float]:
    """Median seconds of running ``calls`` once per variant, interleaved repeat by repeat."""
    runners = {v: make_runner(calls, DTYPES[v.split(":")[1]], backward) for v in variants}
    times: dict[str, list[float]] = defaultdict(list)
    for rep in range(warmup + repeats):
        for v in variants:
            with ops.use_backend(v.split(":")[0]):
                t0 = time.perf_counter()
                runners[v]()
                dt_ = time.perf_counter() - t0
            if rep >= warmup:
                times[v].append(dt_)
    return {v: statistics.median(ts) for v, ts in times.items()}


def describe(calls: list[Call]) -> str:
    """``n calls, C=.., K=.., d=..`` for a group of calls."""
    ks = sorted({(int(w.shape[-1]), int(d if isinstance(d, int) else d[0])) for _, w, _, _, d in calls})
    chans = sorted({s[1] for s, *_ in calls})
    batch = sorted({s[0] for s, *_ in calls})
    kd = ", ".join(f"{k}" + (f"d{d}" if d > 1 else "") for k, d in ks)
    return f"{len(calls)} calls, B={'/'.join(map(str, batch))}, C={'/'.join(map(str, chans))}, K {kd}"


def report(name: str, groups: dict[str, list[Call]], variants: list[str], warmup: int, repeats: int) -> None:
    """One Markdown table per mode: ms per group and variant, ratio to the first variant."""
    for backward in (False, True):
        print(f"\n### {name}: {'forward + backward' if backward else 'forward'} (ms; in brackets first/this)\n")
        print("| maps | calls | " + " | ".join(variants) + " |")
        print("|---|---|" + "---:|" * len(variants), flush=True)
        totals: dict[str, float] = defaultdict(float)
        for hw, calls in groups.items():
            med = time_variants(calls, variants, backward, warmup, repeats)
            base = med[variants[0]]
            cells = [f"{1e3 * med[v]:.2f}" + ("" if v == variants[0] else f" ({base / med[v]:.2f}x)") for v in variants]
            print(f"| {hw} | {describe(calls)} | " + " | ".join(cells) + " |", flush=True)
            for v in variants:
                totals[v] += med[v]
        if len(groups) > 1:
            base = totals[variants[0]]
            cells = [f"{1e3 * totals[v]:.2f}" + ("" if v == variants[0] else f" ({base / totals[v]:.2f}x)")
                     for v in variants]
            print("| all | | " + " | ".join(cells) + " |", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--forecaster", nargs="*", default=["4x32"], help="STATIONSxBATCH configurations (none: skip)")
    ap.add_argument("--table1", action=argparse.BooleanOptionalAction, default=True,
                    help="also K=31 on (8, 384, 32, 32)")
    ap.add_argument("--variants", nargs="+", default=["own:fp32", "own:bf16", "torch:bf16", "auto:bf16"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args(argv)
    for v in args.variants:
        path, _, dtype = v.partition(":")
        if path not in ops.BACKENDS or dtype not in DTYPES:
            ap.error(f"variant {v!r}: need PATH:DTYPE with PATH in {ops.BACKENDS} and DTYPE in {tuple(DTYPES)}")
    print(f"# dwconv bf16 {dt.datetime.now().isoformat(timespec='seconds')} | "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads | median of {args.repeats} after {args.warmup}, interleaved")
    for cfg in args.forecaster:
        s, b = (int(v) for v in cfg.lower().split("x"))
        groups: dict[str, list[Call]] = defaultdict(list)
        for call in forecaster_calls(s, b):
            groups["x".join(map(str, call[0][2:]))].append(call)
        report(f"default Forecaster, {s} stations x batch {b}", dict(groups), args.variants, args.warmup,
               args.repeats)
    if args.table1:
        w = torch.randn(384, 1, 31, 31) / 31
        report("Table 1, K=31, (8, 384, 32, 32), one layer", {"32x32": [((8, 384, 32, 32), w, False, None, 1)]},
               args.variants, 1, 3)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
