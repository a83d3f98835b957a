"""End-to-end training step of the UniRepLKNet backbone with the own depthwise op vs torch's conv.

Model: ``create_model(--model, in_chans=1, out_indices=(0, 1, 2, 3))`` in training mode (Dilated Reparam Blocks with
all their dilated branches, BatchNorm, drop-path 0), input ``--batch x 1 x --height x --width`` (default 32x1x48x64,
a station grid), loss = sum of the means of the four stage outputs, SGD step. Every depthwise conv of the model is
a :class:`urlk_forecast.ops.DWConv2d`; the two paths are switched with :func:`urlk_forecast.ops.use_backend`
(``URLK_DWCONV=own|torch``) and timed interleaved, median over ``--repeats`` after ``--warmup`` steps.

It also reports which share of a step the depthwise convs take on each path: every depthwise call of one step is
recorded (input, weight, padding, dilation) and replayed in isolation, forward + backward, on that path.

    python benchmarks/train_step.py
    python benchmarks/train_step.py --model unireplknet_f --batch 16 --repeats 7
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time

import torch

import urlk_forecast.ops as ops
from urlk_forecast.models import create_model
from urlk_forecast.ops import use_backend

try:  # the same machine line as the op benchmark
    from dwconv import machine  # type: ignore[import-not-found]
except ImportError:  # run from another directory
    import platform

    def machine() -> str:
        return f"{platform.processor() or platform.machine()}, torch {torch.__version__}, " \
               f"{torch.get_num_threads()} threads"


def record_dw_calls(model: torch.nn.Module, x: torch.Tensor) -> list[tuple]:
    """(input shape, weight, bias?, padding, dilation) of every depthwise conv of one training forward."""
    calls: list[tuple] = []
    real = ops.dwconv2d

    def spy(inp, weight, bias=None, padding=None, dilation=1):
        calls.append((tuple(inp.shape), weight.detach().clone(), bias is not None, padding, dilation))
        return real(inp, weight, bias, padding, dilation)

    ops.dwconv2d = spy  # DWConv2d.forward looks the function up in the package namespace at call time
    try:
        model(x)
    finally:
        ops.dwconv2d = real
    return calls


def replay_seconds(calls: list[tuple], path: str, repeats: int) -> float:
    """Median seconds to run all recorded depthwise convs forward + backward (input and weight grads) on a path."""
    torch.manual_seed(0)
    data = []
    for shape, w, has_bias, padding, dilation in calls:
        xi = torch.randn(shape, requires_grad=True)
        wi = w.clone().requires_grad_(True)
        bi = torch.zeros(w.shape[0], requires_grad=True) if has_bias else None
        data.append((xi, wi, bi, padding, dilation))

    def once() -> None:
        for xi, wi, bi, padding, dilation in data:
            ops.dwconv2d(xi, wi, bi, padding, dilation).sum().backward()

    with use_backend(path):
        once()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            once()
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="unireplknet_a")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--height", type=int, default=48)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-share", action="store_true", help="skip the depthwise-share measurement")
    ap.add_argument("--paths", nargs="+", choices=("own", "auto", "torch"), default=["own", "auto", "torch"],
                    help="own: own kernels only; auto: the dispatch default (oneDNN forward on small maps); torch")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = create_model(args.model, in_chans=1, out_indices=(0, 1, 2, 3))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(args.batch, 1, args.height, args.width)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        feats = model(x)
        loss = sum(f.float().mean() for f in feats)
        loss.backward()
        opt.step()

    print(f"# train step {dt.datetime.now().isoformat(timespec='seconds')} | {machine()}")
    print(f"# {args.model}, input {args.batch}x1x{args.height}x{args.width}, repeats={args.repeats}, "
          f"warmup={args.warmup}\n")
    paths = list(dict.fromkeys(args.paths))
    for p in paths:
        with use_backend(p):
            for _ in range(args.warmup):
                step()
    times: dict[str, list[float]] = {p: [] for p in paths}
    for _ in range(args.repeats):
        for p in paths:
            with use_backend(p):
                t0 = time.perf_counter()
                step()
                times[p].append(time.perf_counter() - t0)
    med = {p: statistics.median(v) for p, v in times.items()}

    share = {}
    if not args.no_share:
        calls = record_dw_calls(model, x)
        for p in paths:
            share[p] = replay_seconds(calls, p, max(3, args.repeats // 2))
        print(f"{len(calls)} depthwise convs per step\n")

    print("| path | step ms | depthwise fwd+bwd ms (replayed) | depthwise share |")
    print("|---|---|---|---|")
    for p in paths:
        dw = f"{1e3 * share[p]:.1f}" if share else "-"
        frac = f"{100 * share[p] / med[p]:.0f} %" if share else "-"
        print(f"| {p} | {1e3 * med[p]:.1f} | {dw} | {frac} |")
    if "torch" in med:
        for p in paths:
            if p != "torch":
                print(f"\nspeed-up torch/{p}: {med['torch'] / med[p]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
