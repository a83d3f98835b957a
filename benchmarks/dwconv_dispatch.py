"""Does ``auto`` pick the faster CPU path for every depthwise call the forecaster and the backbone make?

The call shapes are recorded from the real models (:func:`urlk_forecast.ops.record_calls` around one forward):

* ``4x32``: the default ``Forecaster()`` network (``unireplknet_a``, 64x96 image -> 16x24, 8x12, 4x6, 2x3 maps) on
  a batch of 32 windows of 4 synthetic stations;
* ``3850x1``: the same network on one window of 3850 stations;
* ``bb224``: the UniRepLKNet-A backbone on ImageNet-size input, ``--backbone-batch`` x 3 x 224 x 224.

For every distinct call, each ``--dtypes`` (float32; bfloat16 tensors, what ``torch.autocast("cpu",
torch.bfloat16)`` hands the op) and each direction (forward; grad-input alone; grad-weight alone, both through
autograd with only that input requiring a gradient) the public op runs on the paths ``own``, ``torch`` and
``auto`` (:func:`urlk_forecast.ops.use_backend`) and on a ``twin``: the faster forced path once more, under another
name (an A/A control: how far two runs of identical code land apart in this run is the noise the verdict must
tolerate). The four run interleaved in cycles of 12 calls in which each path follows each other path exactly once
(:data:`CYCLE`: what ran just before a call changes its time on a 2-core machine); the **median** of each is
reported in ms.

Verdict per row: auto passes when ``auto <= (1 + --tolerance) * best`` **or** ``auto - best <= --abs-tol-us``
(best = the faster of own and torch, both run literally; auto runs a kernel that reaches past the map cropped to
the taps that touch it when its table says that is faster, :mod:`urlk_forecast.ops.reach`, and its pick column
then says e.g. ``torch on 3x5``).
A failing row is measured again (``--retries`` times; the new repeats are
pooled with the old ones, never swapped for them) before it counts. Exit status 1 when any row fails.

``--overhead`` first measures the dispatcher's cost per call on a tiny call (us per call, ``F.conv2d`` directly vs
the op forced to torch vs ``auto``, function and module), which is what decides the verdict on 0.1 ms calls.
auto's per-machine table is used as it is (measured lazily on first use, during the warm-up), or re-measured in
this run with ``--refresh``.

    python benchmarks/dwconv_dispatch.py --refresh                # all configurations, float32 and bfloat16
    python benchmarks/dwconv_dispatch.py --configs 4x32 --dtypes float32 --repeats 6
    python benchmarks/dwconv_dispatch.py --overhead-only          # just the per-call dispatcher cost
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from urlk_forecast.models import fastpath
from urlk_forecast.ops import DWConv2d, autotune, dispatch, dwconv2d, record_calls, use_backend
from urlk_forecast.utils.atomic import atomic_write_text

PATHS = ("own", "torch", "auto", "twin")
#: the order of the timed calls: a cycle of 12 (3 per path) in which each path follows each other path exactly once,
#: the wrap-around included. What ran just before matters on this 2-core machine (torch's OpenMP threads spin after
#: its calls and are awake for the next torch call, asleep after a stretch of own calls): a balanced order within
#: each repeat but not across repeats gave one of two identical paths 15-20 us more than the other on 0.2 ms calls
CYCLE = tuple(PATHS[i] for i in (0, 1, 2, 3, 0, 2, 1, 3, 2, 0, 3, 1))
DIRECTIONS = ("forward", "grad_input", "grad_weight")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: default absolute tolerance (us): see docs/benchmarks.md (issue-15 dispatch section) for the A/A spread behind it
ABS_TOL_US = 10.0


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


def _timer(direction: str, path: str, call: autotune.Call, dtype: torch.dtype) -> Callable[[], None]:
    """A closure running one direction of ``call`` on ``path`` through the public op and autograd."""
    shape, k, pads, dil = call
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen).to(dtype)
    w = (torch.randn(shape[1], 1, *k, generator=gen) / (k[0] * k[1])).to(dtype)
    if direction == "forward":
        def fwd() -> None:
            with torch.no_grad(), use_backend(path):
                dwconv2d(x, w, None, pads, dil)
        return fwd
    leaf = x.requires_grad_() if direction == "grad_input" else w.requires_grad_()
    with use_backend(path):
        y = dwconv2d(x, w, None, pads, dil)
    gy = torch.randn(y.shape, generator=gen).to(dtype)

    def grad() -> None:
        with use_backend(path):
            torch.autograd.grad(y, leaf, gy, retain_graph=True)
    return grad


def _clock(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _repeat(fns: dict[str, Callable[[], None]], samples: dict[str, list[float]], repeats: int, budget: float,
            cycle: tuple[str, ...] = CYCLE) -> None:
    """Add interleaved samples in ``cycle`` order: at least ``repeats`` per path (whole cycles), more cycles while
    under ``budget`` s (at most 8x)."""
    start, r = time.perf_counter(), 0
    cycles = -(-repeats // cycle.count(cycle[0]))
    while r < cycles or (time.perf_counter() - start < budget and r < 8 * max(cycles, 1)):
        for p in cycle:
            samples[p].append(_clock(fns[p]))
        r += 1


def focus_cycle(samples: dict[str, list[float]], twin_of: str) -> tuple[str, ...]:
    """The paths the verdict still depends on, in a cycle of 6 in which each follows each other exactly once: auto,
    the twin and the faster forced path (the slower one is dropped when its median is over 1.5x the faster's, so a
    16-ms loser no longer takes most of a long row's time; both stay when they are closer)."""
    med = {p: statistics.median(v) for p, v in samples.items()}
    fast, slow = sorted(PATHS[:2], key=med.__getitem__)
    if med[slow] <= 1.5 * med[fast] or slow == twin_of:
        return CYCLE
    a, b, c = "auto", fast, "twin"
    return (a, b, c, a, c, b)


def _more_samples(fns: dict[str, Callable[[], None]], samples: dict[str, list[float]], cycle: tuple[str, ...],
                  min_samples: int, budget: float) -> None:
    """Long rows: cycles of ``cycle`` until each of its paths has ``min_samples`` or ``budget`` s have passed."""
    start = time.perf_counter()
    while min(len(samples[p]) for p in cycle) < min_samples and time.perf_counter() - start < budget:
        for p in cycle:
            samples[p].append(_clock(fns[p]))


def passes(auto: float, best: float, tolerance: float, abs_tol: float) -> bool:
    """The verdict of one row (seconds): within ``tolerance`` (relative) or ``abs_tol`` (absolute) of the best."""
    return auto <= (1 + tolerance) * best or auto - best <= abs_tol


def time_call(call: autotune.Call, direction: str, dtype: torch.dtype, opts: argparse.Namespace
              ) -> tuple[dict[str, float], str, int]:
    """Median seconds per path, which forced path the twin repeats, and how many times the row was re-measured.

    All four paths in :data:`CYCLE` first; then, on rows too long to reach ``--min-samples`` within
    ``--row-budget``, more cycles of the paths the verdict depends on (:func:`focus_cycle`) for up to
    ``--long-budget`` s; a failing row is measured again in that cycle, its new samples pooled with the old."""
    fns = {p: _timer(direction, p, call, dtype) for p in PATHS[:3]}
    warm = {p: _clock(fn) for p, fn in fns.items()}  # auto measures here when its table lacks the call
    warm.update({p: _clock(fns[p]) for p in PATHS[:2]})
    twin = min(PATHS[:2], key=lambda p: warm[p])
    fns["twin"] = _timer(direction, twin, call, dtype)
    fns["twin"]()
    autotune.wait_for_compiles()  # the kernels' compile helper may still be compiling what the warm-up asked for
    samples: dict[str, list[float]] = {p: [] for p in PATHS}
    _repeat(fns, samples, opts.repeats, opts.row_budget)
    cycle = focus_cycle(samples, twin)
    _more_samples(fns, samples, cycle, opts.min_samples, opts.long_budget)
    retries = 0
    while True:
        med = {p: statistics.median(v) for p, v in samples.items()}
        if retries >= opts.retries or passes(med["auto"], min(med["own"], med["torch"]), opts.tolerance,
                                             opts.abs_tol_us * 1e-6):
            return med, twin, retries
        retries += 1
        _repeat(fns, samples, opts.repeats, opts.row_budget, cycle)
        _more_samples(fns, samples, cycle, min(len(v) for v in samples.values()) + opts.min_samples,
                      opts.long_budget)


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


def auto_pick(call: autotune.Call, direction: str, dtype: torch.dtype) -> tuple[str, str]:
    """What auto's table (``static`` rule when tuning is off) says for this call as auto runs it, and how it is
    printed: a kernel reaching past the map runs cropped (:mod:`urlk_forecast.ops.reach`), "own on 3x5"."""
    shape, k, pads, dil = call
    x, w = torch.empty(shape, dtype=dtype), torch.empty(shape[1], 1, *k, dtype=dtype)
    form = dispatch.cropped_form(x, w, pads, dil, ("forward",) + ((direction,) if direction != "forward" else ()))
    run_as = call if form is None else (shape, tuple(form[2].shape[-2:]), form[1], dil)
    note = f" on {run_as[1][0]}x{run_as[1][1]}" if run_as != call else ""
    if autotune.tune_mode() == "0":
        impl = autotune.static_choice(direction, run_as[0], run_as[1], run_as[2])
        return impl, f"{impl}{note} (rule)"
    entry = autotune._table().entries.get(autotune.bucket(run_as, dtype, torch.get_num_threads()), {})
    impl = entry.get(direction, {}).get("impl", "?")
    return impl, impl + note


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


# ------------------------------------------------------------------------------------------ dispatcher overhead
def overhead(calls: int = 1000, blocks: int = 41) -> list[tuple[str, str, float]]:
    """(mode, case, us per call) for a tiny call (1x8x6x6, K=3) where oneDNN wins every direction, so auto and the
    forced torch path run the same ``F.conv2d``: the differences are the dispatcher's Python. Median over
    ``blocks`` interleaved blocks of ``calls`` calls each, on one thread (the dispatcher's cost does not depend on
    it; oneDNN's wake-up of a second thread would add ~10 us of jitter to every number)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _overhead(calls, blocks)
    finally:
        torch.set_num_threads(threads)


def _overhead(calls: int, blocks: int) -> list[tuple[str, str, float]]:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 8, 6, 6, generator=gen)
    module = DWConv2d(8, 3)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    conv.weight = module.weight
    w = module.weight.detach()
    rows = []
    for mode in ("inference", "training forward"):
        x = x0.clone().requires_grad_(mode != "inference")
        wt = module.weight if mode != "inference" else w
        cases: dict[str, Callable[[], Any]] = {
            "F.conv2d": lambda x=x, wt=wt: F.conv2d(x, wt, None, 1, (1, 1), (1, 1), 8),
            "nn.Conv2d module": lambda x=x: conv(x),
            "dwconv2d, forced torch": lambda x=x, wt=wt: dwconv2d(x, wt, None, 1, 1),
            "dwconv2d, auto": lambda x=x, wt=wt: dwconv2d(x, wt, None, 1, 1),
            "DWConv2d module, auto": lambda x=x: module(x),
        }
        backend = {c: "torch" if "forced torch" in c else "auto" for c in cases}  # set outside the timed loop
        with torch.set_grad_enabled(mode != "inference"):
            for c, fn in cases.items():
                with use_backend(backend[c]):
                    for _ in range(200):
                        fn()
            per: dict[str, list[float]] = {c: [] for c in cases}
            for b in range(blocks):
                for c in (list(cases) if b % 2 else list(cases)[::-1]):
                    fn = cases[c]
                    with use_backend(backend[c]):
                        t0 = time.perf_counter()
                        for _ in range(calls):
                            fn()
                        per[c].append((time.perf_counter() - t0) / calls)
        rows += [(mode, c, 1e6 * statistics.median(v)) for c, v in per.items()]
    return rows


def print_overhead(rows: list[tuple[str, str, float]]) -> None:
    print("| mode (1 thread) | call (1x8x6x6, K=3) | us per call | minus F.conv2d |\n|---|---|---:|---:|")
    base = {m: us for m, c, us in rows if c == "F.conv2d"}
    for mode, case, us in rows:
        print(f"| {mode} | {case} | {us:.2f} | {us - base[mode]:+.2f} |")
    plan = "plans kept: " + str(len(getattr(autotune, "plans", {}))) if hasattr(autotune, "plans") else "no plans"
    print(f"({plan})\n", flush=True)


# ------------------------------------------------------------------------------------------------ the table
def calls_of(cfg: str, backbone_batch: int) -> list[autotune.Call]:
    if cfg == "bb224":
        return backbone_calls(backbone_batch)
    s, b = (int(v) for v in cfg.lower().split("x"))
    return forecaster_calls(s, b)


def run(opts: argparse.Namespace) -> tuple[list[dict[str, Any]], int]:
    """Rows of the table (printed as they come) and the number of rows where auto fails the verdict."""
    print("| config | dtype | x (BxCxHxW) | K | dil | pad | direction | own ms | torch ms | auto ms | auto runs | "
          "auto - best us | auto / best | twin - same us | verdict |")
    print("|---|---|---|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---|", flush=True)
    rows, losses = [], 0
    for cfg in opts.configs:
        calls = calls_of(cfg, opts.backbone_batch)
        for dname in opts.dtypes:
            clock = MeasureClock()
            for call in calls:
                for d in DIRECTIONS:
                    rows.append(_row(cfg, dname, call, d, opts))
                    losses += not rows[-1]["passes"]
            autotune.measure = clock.real  # type: ignore[assignment]
            print(f"| {cfg} | {dname} | auto's measuring: {clock.count} call x direction buckets, "
                  f"{clock.seconds:.2f} s (once per machine) |||||||||||||", flush=True)
    return rows, losses


def _row(cfg: str, dname: str, call: autotune.Call, d: str, opts: argparse.Namespace) -> dict[str, Any]:
    """Time one call and direction, print its line and return its record."""
    t, twin, retries = time_call(call, d, DTYPES[dname], opts)
    best = min(t["own"], t["torch"])
    ok = passes(t["auto"], best, opts.tolerance, opts.abs_tol_us * 1e-6)
    impl, pick = auto_pick(call, d, DTYPES[dname])
    verdict = ("ok" if ok else "**FAILS**") + (f" (re-measured {retries}x)" if retries else "")
    print(f"| {cfg} | {dname} {_fmt_call(call)} | {d} | {1e3 * t['own']:.3f} | {1e3 * t['torch']:.3f} | "
          f"{1e3 * t['auto']:.3f} | {pick} | {1e6 * (t['auto'] - best):+.1f} | {t['auto'] / best:.3f} | "
          f"{1e6 * (t['twin'] - t[twin]):+.1f} | {verdict} |", flush=True)
    return {"config": cfg, "dtype": dname, "call": call, "direction": d, "auto_runs": impl, "twin_of": twin,
            "ms": {p: 1e3 * v for p, v in t.items()}, "retries": retries, "auto_over_best": t["auto"] / best,
            "passes": ok}


def summary(rows: list[dict[str, Any]], opts: argparse.Namespace) -> None:
    """Per configuration and dtype: sums over the rows, the verdict counts, the A/A spread."""
    print("\n| config | dtype | rows | own only ms | torch only ms | auto ms | best ms | auto / best (sum) | "
          "rows failing | worst auto / best | twin - same: median / p95 / max us |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["config"], r["dtype"]), []).append(r)
    for (cfg, dname), rs in groups.items():
        s = {p: sum(r["ms"][p] for r in rs) for p in ("own", "torch", "auto")}
        best = sum(min(r["ms"]["own"], r["ms"]["torch"]) for r in rs)
        aa = sorted(abs(r["ms"]["twin"] - r["ms"][r["twin_of"]]) * 1e3 for r in rs)
        p95 = aa[min(len(aa) - 1, int(round(0.95 * (len(aa) - 1))))]
        print(f"| {cfg} | {dname} | {len(rs)} | {s['own']:.2f} | {s['torch']:.2f} | {s['auto']:.2f} | {best:.2f} | "
              f"{s['auto'] / best:.3f} | {sum(not r['passes'] for r in rs)} | "
              f"{max(r['auto_over_best'] for r in rs):.3f} | {statistics.median(aa):.1f} / {p95:.1f} / "
              f"{aa[-1]:.1f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=["4x32", "3850x1", "bb224"],
                    help="STATIONSxBATCH of the default forecaster, or bb224 (backbone at 224x224)")
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--backbone-batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=12, help="at least this many interleaved repeats per row")
    ap.add_argument("--row-budget", type=float, default=0.25,
                    help="keep repeating (up to 8x --repeats) while a row has taken less than this many seconds")
    ap.add_argument("--min-samples", type=int, default=48,
                    help="long rows: more samples of auto, the twin and the faster path, up to this many each ...")
    ap.add_argument("--long-budget", type=float, default=1.0, help="... within this many more seconds per row")
    ap.add_argument("--tolerance", type=float, default=0.05, help="auto may be this much slower than the best")
    ap.add_argument("--abs-tol-us", type=float, default=ABS_TOL_US,
                    help="... or this many microseconds slower (the A/A noise floor of short calls)")
    ap.add_argument("--retries", type=int, default=2, help="re-measure a failing row this many times (pooled)")
    ap.add_argument("--refresh", action="store_true", help="re-measure auto's table in this run")
    ap.add_argument("--overhead", action="store_true", help="first measure the dispatcher's cost per call")
    ap.add_argument("--overhead-only", action="store_true", help="only that")
    ap.add_argument("--overhead-calls", type=int, default=1000, help="calls per timed block of --overhead")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file (atomic)")
    ap.add_argument("--no-retain", action="store_true",
                    help="leave glibc's allocator as it is (default: keep freed memory, as training and forecasting "
                         "do: fastpath.tune_allocator)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_retain:  # the allocator state of training: oneDNN's outputs are not page-faulted in per call
        fastpath.tune_allocator("cpu")
    if args.refresh:
        os.environ[autotune.TUNE_ENV] = "refresh"
    t0 = time.perf_counter()
    print(f"# dwconv dispatch benchmark {dt.datetime.now().isoformat(timespec='seconds')} | {machine()}", flush=True)
    over = overhead(args.overhead_calls) if args.overhead or args.overhead_only else []
    if over:
        print_overhead(over)
    if args.overhead_only:
        return 0
    print(f"# {', '.join(args.dtypes)}; median of >= {args.repeats} interleaved repeats (more within "
          f"{args.row_budget} s per row; long rows: auto, twin and the faster path up to {args.min_samples} samples "
          f"within {args.long_budget} s more); a row passes when auto <= {1 + args.tolerance:.2f} x best or "
          f"auto - best <= {args.abs_tol_us:g} us; failing rows re-measured up to {args.retries}x; "
          f"{autotune.TUNE_ENV}={autotune.tune_mode()}\n", flush=True)
    rows, losses = run(args)
    summary(rows, args)
    worst = max(rows, key=lambda r: r["auto_over_best"]) if rows else None
    print(f"\n# verdict: {'PASS' if not losses else 'FAIL'}: {len(rows)} rows, {losses} failing; worst auto/best "
          f"{worst['auto_over_best']:.3f} ({worst['config']} {worst['dtype']} {worst['call']} {worst['direction']}); "
          f"{time.perf_counter() - t0:.0f} s" if worst else "# verdict: no calls")
    if args.json:
        atomic_write_text(args.json, json.dumps({"machine": machine(), "overhead_us": over, "rows": rows,
                                                 "tolerance": args.tolerance, "abs_tol_us": args.abs_tol_us},
                                                indent=1) + "\n")
    return 1 if losses else 0


if __name__ == "__main__":
    sys.exit(main())
