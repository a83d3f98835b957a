"""Depthwise-conv latency, the UniRepLKNet/RepLKNet Table 1 protocol: own op vs torch.

A stack of ``--layers`` depthwise K x K layers (:class:`urlk_forecast.ops.DWConv2d`, C=384, stride 1, "same"
padding, no residuals) on input (B, 384, R, R). For every (R, K) the same stack runs on both paths (switched with
:func:`urlk_forecast.ops.use_backend`, i.e. what ``URLK_DWCONV=own|torch`` does), interleaved repeat by repeat so
machine load hits both alike; the median over ``--repeats`` after ``--warmup`` runs is reported, as total ms for
the stack and ms per layer (total / layers), with the ratio torch / ours.

Torch on CPU is very slow for large kernels (seconds per layer for forward+backward at K=31): ``--torch-layers N``
times torch on the first N layers of the same stack (the layers are identical in cost, so ms per layer is unchanged
and the ratio is per layer); the header and the JSON record both layer counts.

Examples::

    python benchmarks/dwconv.py                                  # CPU, B=8, R=32, all K, fwd and fwd+bwd
    python benchmarks/dwconv.py --res 16 32 64 --layers 4 --mode fwd
    python benchmarks/dwconv.py --device cuda --dtype fp16       # GPU default B=64
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn

from urlk_forecast.ops import DWConv2d, use_backend

KERNELS = (3, 5, 7, 9, 13, 17, 21, 27, 29, 31)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def machine() -> str:
    """One line describing the machine: CPU model, threads, GPU if used."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"


def build_stack(channels: int, k: int, layers: int, device: str, dtype: torch.dtype) -> nn.Sequential:
    torch.manual_seed(0)
    stack = nn.Sequential(*[DWConv2d(channels, k) for _ in range(layers)])
    with torch.no_grad():
        for m in stack:  # keep activations O(1) through the stack (default init shrinks them layer by layer)
            m.weight.normal_(0.0, 1.0 / k)
    return stack.to(device=device, dtype=dtype)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_once(fn: Callable[[], None], device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def run_case(stacks: dict[str, nn.Sequential], x: torch.Tensor, mode: str, paths: list[str], warmup: int,
             repeats: int, device: str) -> dict[str, float]:
    """Median seconds of one pass of each path's stack ("own"/"torch"), interleaved."""

    def fwd(stack: nn.Sequential) -> None:
        with torch.no_grad():
            stack(x)

    def fwdbwd(stack: nn.Sequential) -> None:
        xi = x.detach().requires_grad_(True)
        stack(xi).sum().backward()
        stack.zero_grad(set_to_none=True)

    fn = fwd if mode == "fwd" else fwdbwd
    times: dict[str, list[float]] = {p: [] for p in paths}
    for p in paths:
        with use_backend(p):
            for _ in range(warmup):
                fn(stacks[p])
    for _ in range(repeats):
        for p in paths:
            with use_backend(p):
                times[p].append(time_once(lambda p=p: fn(stacks[p]), device))
    return {p: statistics.median(v) for p, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 8 on CPU, 64 on CUDA)")
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--res", type=int, nargs="+", default=[32], help="input resolutions R (protocol: 16 32 64)")
    ap.add_argument("--kernels", type=int, nargs="+", default=list(KERNELS))
    ap.add_argument("--layers", type=int, default=24, help="depthwise layers in the stack (per-layer = total/layers)")
    ap.add_argument("--torch-layers", type=int, default=None,
                    help="time torch on the first N layers only (default: all --layers); ratios are per layer")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    ap.add_argument("--mode", choices=("fwd", "fwdbwd", "both"), default="both")
    ap.add_argument("--paths", nargs="+", choices=("own", "auto", "torch"), default=["own", "torch"],
                    help="own: own kernels only; auto: the dispatch default; torch: F.conv2d")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (the own CPU op follows it)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file (atomic)")
    args = ap.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (64 if args.device == "cuda" else 8)
    torch_layers = min(args.torch_layers or args.layers, args.layers)
    if torch_layers < 1:
        ap.error("--torch-layers must be >= 1")
    n_layers = {"own": args.layers, "auto": args.layers, "torch": torch_layers}
    others = [p for p in args.paths if p != "torch"] if "torch" in args.paths else []
    dtype = DTYPES[args.dtype]
    modes = ["fwd", "fwdbwd"] if args.mode == "both" else [args.mode]
    header = (f"# dwconv benchmark {dt.datetime.now().isoformat(timespec='seconds')} | {machine()}"
              + (f" | {torch.cuda.get_device_name()}" if args.device == "cuda" else "")
              + f"\n# B={batch} C={args.channels} layers={args.layers} (torch: {torch_layers}) "
              f"dtype={args.dtype} repeats={args.repeats} "
              f"warmup={args.warmup} device={args.device}")
    print(header, flush=True)
    results = []
    for mode in modes:
        print(f"\n### {mode}  (ms per layer = stack time / layers in the stack)\n")
        cols = " | ".join(f"{p} ms/layer" for p in args.paths)
        print(f"| R | K | {cols} |" + "".join(f" torch/{p} |" for p in others))
        print("|---|---|" + "---|" * (len(args.paths) + len(others)), flush=True)
        for res in args.res:
            for k in args.kernels:
                stack = build_stack(args.channels, k, args.layers, args.device, dtype)
                stacks = {p: stack[: n_layers[p]] for p in args.paths}
                x = torch.randn(batch, args.channels, res, res, device=args.device, dtype=dtype)
                med = run_case(stacks, x, mode, args.paths, args.warmup, args.repeats, args.device)
                per_layer = {p: 1e3 * v / n_layers[p] for p, v in med.items()}
                row = f"| {res} | {k} | " + " | ".join(f"{per_layer[p]:.3f}" for p in args.paths) + " |"
                ratios = {p: per_layer["torch"] / per_layer[p] for p in others}
                row += "".join(f" {r:.2f} |" for r in ratios.values())
                ratio = ratios.get("own")
                print(row, flush=True)
                results.append({"mode": mode, "res": res, "k": k, "batch": batch, "channels": args.channels,
                                "layers": args.layers, "torch_layers": torch_layers, "dtype": args.dtype,
                                "device": args.device,
                                "ms_per_layer": per_layer, "ratio_torch_over_own": ratio,
                                "ratios_torch_over": ratios})
    if args.json:
        payload = {"header": header, "argv": sys.argv, "results": results}
        d = os.path.dirname(os.path.abspath(args.json))
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
