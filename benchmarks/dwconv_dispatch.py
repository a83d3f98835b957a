"""Does ``auto`` pick the faster CPU path for every depthwise call the forecaster and the backbone make?

The call shapes are recorded from the real models (:func:`urlk_forecast.ops.record_calls` around one forward):

* ``4x32``: the default ``Forecaster()`` network (``unireplknet_a``, 64x96 image -> 16x24, 8x12, 4x6, 2x3 maps) on
  a batch of 32 windows of 4 synthetic stations;
* ``3850x1``: the same network on one window of 3850 stations;
* ``bb224``: the UniRepLKNet-A backbone on ImageNet-size input, ``--backbone-batch`` x 3 x 224 x 224.

For every distinct call and each direction (forward; grad-input alone; grad-weight alone, both through autograd
with only that input requiring a gradient) the public op runs on the three paths ``own``, ``torch`` and ``auto``
(:func:`urlk_forecast.ops.use_backend`), interleaved repeat by repeat, and the minimum over ``--repeats`` is
reported in ms with auto / best(own, torch). ``auto``'s per-machine table is used as it is (measured lazily on
first use, during the warm-up), or re-measured in this run with ``--refresh``. Exit status 1 when auto is more than
``--tolerance`` (5 %) slower than the faster path on any call and direction.

    python benchmarks/dwconv_dispatch.py                      # all three configurations
    python benchmarks/dwconv_dispatch.py --configs 4x32 --repeats 5 --refresh
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from urlk_forecast.ops import autotune, dwconv2d, record_calls, use_backend
from urlk_forecast.utils.atomic import atomic_write_text

PATHS = ("own", "torch", "auto")
#: the orders of the three paths within one repeat (torch's OpenMP threads spin for a while after each of its calls
#: and slow down whatever runs next on this 2-core machine, so no path may follow torch more often than another)
ORDERS = list(itertools.permutations(PATHS))
DIRECTIONS = ("forward", "grad_input", "grad_weight")


def forecaster_calls(stations: int, batch: int) -> list[autotune.Call]:
    """The depthwise calls of one forward of the default Forecaster network on ``batch`` windows of ``stations``."""
    from urlk_forecast.data.schema import infer_frequency
    from urlk_forecast.data.synthetic import synthetic_global
    from urlk_forecast.data.windows import WindowDataset
    from urlk_forecast.forecaster import Forecaster

    ds = synthetic_global(stations=stations, hours=24 * 60, seed=0, variables=("temperature",))
    fc = Forecaster()
    ws = WindowDataset(ds, fc.variable, fc.seq_len, fc.label_len, fc.pred_len)
    fc.frequency = infer_frequency(ds)
    fc.build_net(len(ws.station_ids), None)
    assert fc.net is not None
    fc.net.train()
    idx = np.random.default_rng(0).choice(len(ws), batch, replace=len(ws) < batch)
    with torch.no_grad(), use_backend("own"), record_calls() as calls:
        fc.net(ws.batch(idx))
    return calls


def backbone_calls(batch: int, size: int = 224) -> list[autotune.Call]:
    """The depthwise calls of UniRepLKNet-A (training form, all dilated branches) on (batch, 3, size, size)."""
    from urlk_forecast.models import create_model

    model = create_model("unireplknet_a", in_chans=3, num_classes=10).train()
    with torch.no_grad(), use_backend("own"), record_calls() as calls:
        model(torch.randn(batch, 3, size, size))
    return calls


def _timer(direction: str, path: str, call: autotune.Call) -> Callable[[], None]:
    """A closure running one direction of ``call`` on ``path`` through the public op and autograd."""
    shape, k, pads, dil = call
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    w = torch.randn(shape[1], 1, *k, generator=gen) / (k[0] * k[1])
    if direction == "forward":
        def fwd() -> None:
            with torch.no_grad(), use_backend(path):
                dwconv2d(x, w, None, pads, dil)
        return fwd
    leaf = x.requires_grad_() if direction == "grad_input" else w.requires_grad_()
    with use_backend(path):
        y = dwconv2d(x, w, None, pads, dil)
    gy = torch.randn(y.shape, generator=gen)

    def grad() -> None:
        with use_backend(path):
            torch.autograd.grad(y, leaf, gy, retain_graph=True)
    return grad


def time_call(call: autotune.Call, direction: str, repeats: int, budget: float) -> dict[str, float]:
    """Minimum seconds per path over interleaved repeats (at least ``repeats``, more while the row has used less
    than ``budget`` seconds, at most 8x ``repeats``), after one warm-up each (auto measures there if it must)."""
    fns = {p: _timer(direction, p, call) for p in PATHS}
    for fn in fns.values():
        fn()
    best = {p: float("inf") for p in PATHS}
    start, r = time.perf_counter(), 0
    while r < repeats or (time.perf_counter() - start < budget and r < 8 * repeats):
        for p in ORDERS[r % len(ORDERS)]:  # every order in turn: each path follows each other equally often
            t0 = time.perf_counter()
            fns[p]()
            best[p] = min(best[p], time.perf_counter() - t0)
        r += 1
    return best


class MeasureClock:
    """Wraps :func:`urlk_forecast.ops.autotune.measure` to add up what auto's own measuring costs."""

    def __init__(self) -> None:
        self.seconds, self.count, self.real = 0.0, 0, autotune.measure
        autotune.measure = self  # type: ignore[assignment]

    def __call__(self, *a: Any, **k: Any) -> dict[str, float]:
        t0 = time.perf_counter()
        try:
            return self.real(*a, **k)
        finally:
            self.seconds += time.perf_counter() - t0
            self.count += 1


def auto_pick(call: autotune.Call, direction: str) -> str:
    """What auto's table says for this call (``static`` rule when tuning is off)."""
    if autotune.tune_mode() == "0":
        return autotune.static_choice(direction, call[0], call[1], call[2]) + " (rule)"
    entry = autotune._table().entries.get(autotune.bucket(call, torch.float32, torch.get_num_threads()), {})
    return entry.get(direction, {}).get("impl", "?")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"


def _fmt_call(call: autotune.Call) -> str:
    (n, c, h, w), (kh, kw), pads, dil = call
    pad = str(pads[0]) if len(set(pads)) == 1 else ",".join(map(str, pads))
    return f"| {n}x{c}x{h}x{w} | {kh}x{kw} | {dil[0]} | {pad}"


def run(configs: list[str], repeats: int, budget: float, backbone_batch: int, tolerance: float
        ) -> tuple[list[dict[str, Any]], int]:
    """Rows of the table (printed as they come) and the number of (call, direction) where auto loses."""
    print("| config | x (BxCxHxW) | K | dil | pad | direction | own ms | torch ms | auto ms | auto runs | "
          "auto / best |")
    print("|---|---|---|---|---|---|---:|---:|---:|---|---:|", flush=True)
    rows, losses = [], 0
    for cfg in configs:
        clock = MeasureClock()
        if cfg == "bb224":
            calls = backbone_calls(backbone_batch)
        else:
            s, b = (int(v) for v in cfg.lower().split("x"))
            calls = forecaster_calls(s, b)
        for call in calls:
            for d in DIRECTIONS:
                t = time_call(call, d, repeats, budget)
                ratio = t["auto"] / min(t["own"], t["torch"])
                lose = ratio > 1 + tolerance
                losses += lose
                pick = auto_pick(call, d)
                print(f"| {cfg} {_fmt_call(call)} | {d} | {1e3 * t['own']:.3f} | {1e3 * t['torch']:.3f} | "
                      f"{1e3 * t['auto']:.3f} | {pick} | {ratio:.2f}{' **LOSES**' if lose else ''} |", flush=True)
                rows.append({"config": cfg, "call": call, "direction": d, "ms": {p: 1e3 * v for p, v in t.items()},
                             "auto_runs": pick, "auto_over_best": ratio})
        autotune.measure = clock.real  # type: ignore[assignment]
        print(f"| {cfg} | auto's measuring: {clock.count} call x direction buckets, {clock.seconds:.2f} s "
              "(once per machine) |||||||||", flush=True)
    return rows, losses


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=["4x32", "3850x1", "bb224"],
                    help="STATIONSxBATCH of the default forecaster, or bb224 (backbone at 224x224)")
    ap.add_argument("--backbone-batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=12, help="at least this many interleaved repeats per row")
    ap.add_argument("--row-budget", type=float, default=0.25,
                    help="keep repeating (up to 8x --repeats) while a row has taken less than this many seconds")
    ap.add_argument("--tolerance", type=float, default=0.05, help="auto may be this much slower than the best")
    ap.add_argument("--refresh", action="store_true", help="re-measure auto's table in this run")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file (atomic)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.refresh:
        os.environ[autotune.TUNE_ENV] = "refresh"
    t0 = time.perf_counter()
    print(f"# dwconv dispatch benchmark {dt.datetime.now().isoformat(timespec='seconds')} | {machine()}\n"
          f"# float32, min of >= {args.repeats} interleaved repeats (more within {args.row_budget} s per row), "
          f"tolerance {args.tolerance:.0%}, "
          f"{autotune.TUNE_ENV}={autotune.tune_mode()}\n", flush=True)
    rows, losses = run(args.configs, args.repeats, args.row_budget, args.backbone_batch, args.tolerance)
    worst = max(rows, key=lambda r: r["auto_over_best"]) if rows else None
    print(f"\n# {len(rows)} call x direction rows; auto more than {args.tolerance:.0%} slower than the best on "
          f"{losses}; worst auto/best {worst['auto_over_best']:.3f} ({worst['config']} {worst['call']} "
          f"{worst['direction']}); {time.perf_counter() - t0:.0f} s" if worst else "# no calls")
    if args.json:
        atomic_write_text(args.json, json.dumps({"machine": machine(), "rows": rows}, indent=1) + "\n")
    return 1 if losses else 0


if __name__ == "__main__":
    sys.exit(main())
