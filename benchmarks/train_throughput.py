"""Training and inference throughput of the forecasting network on the synthetic station set.

For each model (default: the CLI default ``unireplknet_a`` and the paper's variant ``unireplknet_s``) and each
depthwise-conv path (``URLK_DWCONV=own`` — the package's own op — and ``torch`` — ``F.conv2d``) it measures, in a
fresh subprocess per configuration (so peak memory and the op switch are clean):

* training windows/s: forward + masked loss + backward + Adam step through :func:`urlk_forecast.training`'s step,
  batches of ``--batch-size`` windows of all stations;
* inference windows/s in the training form (eval mode) and after ``reparameterize()`` (deploy form), with the
  largest difference between the two forecasts (they must agree);
* peak memory: ``torch.cuda.max_memory_allocated`` on CUDA, peak RSS (``resource.getrusage``) on CPU, and the
  autograd activation memory of one training window (bytes saved for backward, counted with saved-tensor hooks).

Examples::

    python benchmarks/train_throughput.py                                  # 3850 stations, A and S, own/torch
    python benchmarks/train_throughput.py --models unireplknet_a --stations 440 --steps 2
    python benchmarks/train_throughput.py --device cuda --amp bf16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _peak_rss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return r / 1024.0


def _activation_bytes(net: Any, batch: dict) -> int:
    """Bytes of distinct non-parameter tensors autograd saves for backward in one forward (activation memory)."""
    import torch

    # parameters and buffers are saved by reference by many ops: they are weights, not activations
    seen: set[int] = {t.untyped_storage().data_ptr() for t in [*net.parameters(), *net.buffers()]}
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total[0] += st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(batch)
    del out
    return total[0]


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """Measure one (model, op path) configuration in this process; returns a JSON-able dict."""
    import numpy as np
    import torch

    from urlk_forecast.config import TrainConfig
    from urlk_forecast.data.synthetic import synthetic_global
    from urlk_forecast.data.windows import WindowDataset
    from urlk_forecast.forecaster import Forecaster
    from urlk_forecast.training import _train_step, resolve_amp, resolve_device, seed_everything, station_scale

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    seed_everything(0)
    t0 = time.perf_counter()
    ds = synthetic_global(stations=args.stations, hours=args.hours, seed=0, variables=("temperature",))
    ws = WindowDataset(ds, "temperature")
    gen_s = time.perf_counter() - t0
    model_kw = json.loads(args.model_kw) if args.model_kw else {}
    fc = Forecaster(args.model, **model_kw, with_cp=bool(args.checkpointing))
    net = fc.build_net(ws.num_stations, ws.coords).to(device)
    cfg = TrainConfig(lr=1e-4, batch_size=args.batch_size, amp=args.amp, device=str(device), progress=False)
    amp_dtype = resolve_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    scale = station_scale(ws).to(device)
    from urlk_forecast import distributed as D

    ctx = D.DistContext()
    rng = np.random.default_rng(0)
    B = args.batch_size

    def batch(idx: np.ndarray) -> dict:
        return {k: v.to(device, non_blocking=True) for k, v in ws.batch(idx).items()}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    res: dict[str, Any] = {
        "model": args.model, "model_kw": model_kw, "op": os.environ.get("URLK_DWCONV", "auto"),
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "threads": torch.get_num_threads(), "stations": ws.num_stations, "nodes": int(net.n_nodes),
        "batch_size": B, "amp": str(args.amp), "checkpointing": bool(args.checkpointing),
        "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 2), "data_s": round(gen_s, 2),
        "torch": torch.__version__,
    }
    # activation memory of one window (training form, before any step)
    net.train()
    one = batch(np.array([0]))
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        res["activation_mib_per_window"] = round(_activation_bytes(net, one) / 2**20, 1)
    del one
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    # training
    if args.steps > 0:
        times = []
        for s in range(args.warmup + args.steps):
            b = batch(rng.integers(0, len(ws), B))
            sync()
            t = time.perf_counter()
            _train_step(net, opt, scaler, b, scale, amp_dtype, cfg, ctx)
            sync()
            if s >= args.warmup:
                times.append(time.perf_counter() - t)
        res["train_windows_per_s"] = round(B * len(times) / sum(times), 3)
        res["train_s_per_step"] = round(float(np.median(times)), 3)
        res["train_peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _peak_rss_mib(), 1)
    # inference: training form, then deploy form
    net.eval()
    ib = args.infer_batch or B
    idx = np.arange(min(len(ws), ib * (args.infer_steps + 1)))
    outs = {}
    for form in ("train_form", "reparam"):
        if form == "reparam":
            net.reparameterize()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        preds = []
        with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                             enabled=amp_dtype is not None):
            for k in range(0, len(idx), ib):
                b = batch(idx[k : k + ib])
                sync()
                t = time.perf_counter()
                p = net(b)
                sync()
                if k > 0:  # the first batch is warm-up
                    times.append((time.perf_counter() - t, len(idx[k : k + ib])))
                preds.append(p.float().cpu())
        n = sum(c for _, c in times)
        res[f"infer_{form}_windows_per_s"] = round(n / sum(t for t, _ in times), 3) if times else None
        res[f"infer_{form}_peak_mib"] = round(
            torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _peak_rss_mib(), 1)
        outs[form] = torch.cat(preds)
    ref = outs["train_form"]
    res["reparam_max_abs_diff"] = float((outs["reparam"] - ref).abs().max())
    res["reparam_max_rel_diff"] = float((outs["reparam"] - ref).abs().max() / ref.abs().max().clamp(min=1e-12))
    res["peak_rss_mib"] = round(_peak_rss_mib(), 1)
    return res


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def _table(rows: list[dict[str, Any]]) -> str:
    cols = [("model", "model"), ("op", "op"), ("device", "device"), ("amp", "amp"), ("checkpointing", "cp"),
            ("stations", "stations"), ("batch_size", "B"), ("train_windows_per_s", "train win/s"),
            ("infer_train_form_windows_per_s", "infer win/s"), ("infer_reparam_windows_per_s", "reparam win/s"),
            ("reparam_max_rel_diff", "reparam rel diff"), ("activation_mib_per_window", "act MiB/window"),
            ("train_peak_mib", "train peak MiB"), ("infer_reparam_peak_mib", "infer peak MiB")]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('model')} | {r.get('op')} | error: {r['error']} |")
            continue
        cells = []
        for k, _ in cols:
            v = r.get(k)
            if isinstance(v, float):
                cells.append(f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="unireplknet_a,unireplknet_s", help="comma-separated model names")
    p.add_argument("--ops", default="own,torch", help="comma-separated URLK_DWCONV values (own, torch, auto)")
    p.add_argument("--stations", type=int, default=3850)
    p.add_argument("--hours", type=int, default=24 * 8, help="synthetic hours (only a few windows are used)")
    p.add_argument("--batch-size", type=int, default=1, help="windows per training step")
    p.add_argument("--infer-batch", type=int, default=None, help="windows per inference batch (default: batch)")
    p.add_argument("--steps", type=int, default=2, help="timed training steps (0 = skip training)")
    p.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    p.add_argument("--infer-steps", type=int, default=2, help="timed inference batches (after one warm-up)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16", "auto"])
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--model-kw", default=None, help="JSON dict of extra network arguments")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: measure in this process
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return 0
    rows = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        for op in [o.strip() for o in args.ops.split(",") if o.strip()]:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--one", "--model", model]
            for k in ("stations", "hours", "batch_size", "infer_batch", "steps", "warmup", "infer_steps", "device",
                      "amp", "threads", "model_kw"):
                v = getattr(args, k)
                if v is not None:
                    cmd += [f"--{k.replace('_', '-')}", str(v)]
            if args.checkpointing:
                cmd.append("--checkpointing")
            env = {**os.environ, "URLK_DWCONV": op, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get(
                "PYTHONPATH", "")}
            print(f"# {model} op={op} ...", file=sys.stderr, flush=True)
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                    row = {"model": model, "op": op, "error": f"exit {proc.returncode}: {tail[:200]}"}
                else:
                    row = json.loads(line[len("RESULT "):])
            except subprocess.TimeoutExpired:
                row = {"model": model, "op": op, "error": f"timed out after {args.timeout:.0f} s"}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
