"""UniRepLKNet backbone benchmark: parameters, MACs and images/s in training, eval and reparameterized form.

Forms:
  train    - training form in train mode, forward + backward (loss = mean of the logits), no optimizer step;
  eval     - training form in eval mode (the Dilated Reparam Blocks merge their branches on the fly);
  unfused  - eval mode running every branch separately (what the released code does without reparameterizing);
  reparam  - after ``reparameterize_model`` (deploy form).

MACs are counted with forward hooks on every Conv2d/Linear (one multiply-add per weight tap per output element),
no fvcore needed; elementwise ops (BN, GELU, GRN, SE scaling) are not counted, as is customary.

``--dwconv`` picks the depthwise-conv path (``URLK_DWCONV``: ``auto``, ``own`` kernels, ``torch`` F.conv2d) or
``both`` for one row per path; "torch + eval unfused" is how the released code runs on CPU.

Example (the issue's quick form):
    python benchmarks/backbone.py --variants a --size 224 --iters 3
Full table (A and S at 224x224, batch 8, own kernels vs torch):
    python benchmarks/backbone.py --variants a s --size 224 --batch 8 --iters 10 --dwconv both
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from urlk_forecast.models import create_model, fastpath, reparameterize_model
from urlk_forecast.models.unireplknet import DilatedReparamBlock

FORMS = ("train", "eval", "unfused", "reparam")


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of all Conv2d / Linear layers for one forward of ``x`` (counted by hooks)."""
    total = [0]

    def conv_hook(m: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        kh, kw = m.kernel_size
        total[0] += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp: tuple, out: torch.Tensor) -> None:
        total[0] += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    unfused = _set_fuse(model, False)  # every branch must run as a module to be counted
    model.eval()
    try:
        with fastpath.use_fast_paths(False):  # the fast paths call some layers' weights without their modules
            model(x)
    finally:
        for h in handles:
            h.remove()
        _set_fuse(model, True, only=unfused)
        model.train(was_training)
    return total[0]


def _set_fuse(model: nn.Module, value: bool, only: list[DilatedReparamBlock] | None = None) -> list:
    blocks = only if only is not None else [m for m in model.modules() if isinstance(m, DilatedReparamBlock)]
    for b in blocks:
        b.fuse_in_eval = value
    return blocks


def time_interleaved(fns: dict[str, Callable[[], object]], iters: int, warmup: int) -> dict[str, float]:
    """Median wall time (s) of each function, measured round-robin so load drift hits every form alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_variant(variant: str, size: tuple[int, int], batch: int, iters: int, warmup: int,
                  forms: tuple[str, ...], num_classes: int = 1000) -> dict:
    """Benchmark one variant; returns a dict of numbers (params, MACs, images/s per form)."""
    torch.manual_seed(0)
    model = create_model(variant, num_classes=num_classes)
    x = torch.randn(batch, 3, *size)
    one = x[:1]
    row: dict = {"variant": variant, "size": f"{size[0]}x{size[1]}", "batch": batch,
                 "params_train": count_params(model), "macs_train": count_macs(model, one)}
    eval_model = copy.deepcopy(model).eval()
    unfused_model = copy.deepcopy(model).eval()
    _set_fuse(unfused_model, False)
    deploy_model = reparameterize_model(copy.deepcopy(model).eval())
    row["params_deploy"] = count_params(deploy_model)
    row["macs_deploy"] = count_macs(deploy_model, one)
    model.train()

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        model(x).mean().backward()

    def infer(m: nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return m(x)

        return run

    fns = {"train": train_step, "eval": infer(eval_model), "unfused": infer(unfused_model),
           "reparam": infer(deploy_model)}
    timings = time_interleaved({k: fns[k] for k in FORMS if k in forms}, iters, warmup)
    for k, t in timings.items():
        row[f"{k}_img_s"] = batch / t
    return row


def markdown(rows: list[dict]) -> str:
    """Render benchmark rows as a Markdown table."""
    head = ("| variant | dwconv | input | batch | params train / deploy (M) | GMACs train / deploy "
            "| train fwd+bwd img/s | eval img/s | eval unfused img/s | reparam img/s |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        def f(key: str, r: dict = r) -> str:
            return f"{r[key]:.3g}" if key in r else "-"

        lines.append(
            f"| {r['variant']} | {r.get('dwconv', 'auto')} | {r['size']} | {r['batch']} | "
            f"{r['params_train'] / 1e6:.2f} / "
            f"{r['params_deploy'] / 1e6:.2f} | {r['macs_train'] / 1e9:.3f} / {r['macs_deploy'] / 1e9:.3f} | "
            f"{f('train_img_s')} | {f('eval_img_s')} | {f('unfused_img_s')} | {f('reparam_img_s')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=["a", "s"], help="variant names (a f p n t s b l xl h)")
    p.add_argument("--size", nargs="+", type=int, default=[224], help="input size: S (square) or H W")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=5, help="timed repeats (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS)
    p.add_argument("--dwconv", default="auto", choices=("auto", "own", "torch", "both"),
                   help="depthwise-conv path (sets URLK_DWCONV); 'both' = own and torch rows")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if len(args.size) not in (1, 2):
        p.error("--size takes one (square) or two (H W) integers")
    size = (args.size[0], args.size[-1])
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, {size[0]}x{size[1]}",
          file=sys.stderr)
    rows = []
    backends = ("own", "torch") if args.dwconv == "both" else (args.dwconv,)
    saved = os.environ.get("URLK_DWCONV")
    try:
        for v in args.variants:
            for backend in backends:
                os.environ["URLK_DWCONV"] = backend
                row = bench_variant(v, size, args.batch, args.iters, args.warmup, tuple(args.forms))
                rows.append({"dwconv": backend, **row})
                print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        if saved is None:
            os.environ.pop("URLK_DWCONV", None)
        else:
            os.environ["URLK_DWCONV"] = saved
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
