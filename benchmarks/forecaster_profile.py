"""Where a training step of the forecaster spends its time (issue 15 item 1).

For the default network of ``Forecaster()`` (``unireplknet_a``, seasonal skip, the CLI's defaults) on the synthetic
set, at each configuration of ``--configs`` (default: 4 stations x batch 32 windows, and 3850 stations x batch 1
window -- the two sizes the default regime trains), it runs the trainer's own step function
(``urlk_forecast.trainer._train_step``: forward, masked loss, backward, gradient clipping at 5, AdamW) and splits
the wall time of each step with hooks, no profiler:

* **data**: ``WindowDataset.batch`` of the step's windows (the trainer builds it in a background thread while the
  previous step computes, so it overlaps with the rest; it is not part of the step total);
* **forward**: the encoder / decoder embeddings, the UniRepLKNet encoder, the decoder, and the rest (RevIN, series
  decomposition, node grouping, the seasonal skip), from forward hooks; the encoder's depthwise convolutions are
  timed inside the forward (``ops.dwconv2d`` wrapped);
* **loss**: from the end of the forward to the first gradient (the loss, its all-reduce and the backward's entry);
* **backward** (with gradient clipping): from there to the optimiser's step pre-hook. Its depthwise share is
  measured by replaying every depthwise call of one step in isolation on the same path, forward and forward +
  backward, and taking the difference (a replay, not a measurement inside the step);
* **optimiser**: AdamW's step (pre- to post-hook).

Medians over ``--steps`` steps after ``--warmup``. Printed as a Markdown table with each part's share of the step.

    python benchmarks/forecaster_profile.py
    python benchmarks/forecaster_profile.py --configs 4x32 --steps 10 --path torch
    python benchmarks/forecaster_profile.py --amp none bf16          # fp32 and bf16 autocast side by side
    python benchmarks/forecaster_profile.py --paths old new --amp regime  # issue 15 item 5: old vs fast paths

``--against COMMIT`` compares whole steps with an earlier commit's code instead, side by side in one run: the commit is
extracted with ``git archive`` and ``benchmarks/step_worker.py`` times the same default network, windows and
autocast dtype in fresh processes, alternately under that commit's package and this tree's (``--rounds`` rounds,
the order flipped every round, after one untimed run of each that compiles their kernels), and prints each round's
median step, windows/s and the ratio (``--amp default``: each side in the dtype its own automatic regime picks,
the comparison of what each code trains with by default). Issue 15 item 5 is
measured this way against the commit before the issue (43b118a), so that every change of the issue counts (the
dispatch table, the small-map kernels and the bf16 path of the op too, which ``URLK_FAST=0`` does not switch off).

``--paths old new`` runs every configuration on the old code path (``URLK_FAST=0``: what the trainer ran before
issue 15 item 5) and on the fast paths (:mod:`urlk_forecast.models.fastpath`, the allocator setting of
:mod:`urlk_forecast.utils.allocator` included: every old run comes first, before the process turns it on), and
prints windows/s of both and their ratio. ``--amp regime`` takes the autocast dtype the automatic regime picks for
the configuration (bf16 from ``BF16_MIN_IMAGES`` node images per step on a CPU with native bf16, else float32).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

import urlk_forecast.ops as ops
from urlk_forecast.config import TrainConfig
from urlk_forecast.data.schema import infer_frequency
from urlk_forecast.data.synthetic import synthetic_global
from urlk_forecast.data.windows import WindowDataset
from urlk_forecast.distributed import DistContext
from urlk_forecast.forecaster import Forecaster
from urlk_forecast.models import fastpath
from urlk_forecast.regime import bf16_pays
from urlk_forecast.trainer import _train_step

SECTIONS = ("enc_embedding", "dec_embedding", "encoder", "decoder")


class StepClock:
    """Marks of one training step from hooks on the network, its output and the optimiser."""

    def __init__(self, net: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.marks: dict[str, float] = {}
        self.sections: dict[str, float] = defaultdict(float)
        self.dw_fwd = 0.0
        self.dw_calls: list[tuple[Any, ...]] = []
        self.record = False
        for name in SECTIONS:
            mod = getattr(net, name, None)
            if mod is not None:
                mod.register_forward_pre_hook(self._start(name))
                mod.register_forward_hook(self._stop(name))
        net.register_forward_pre_hook(lambda m, a: self.marks.__setitem__("fwd0", time.perf_counter()))
        net.register_forward_hook(self._forward_done)
        optimizer.register_step_pre_hook(lambda o, a, k: self.marks.__setitem__("opt0", time.perf_counter()))
        optimizer.register_step_post_hook(lambda o, a, k: self.marks.__setitem__("opt1", time.perf_counter()))

    def _start(self, name: str) -> Callable[..., None]:
        def hook(mod: torch.nn.Module, args: Any) -> None:
            self.marks[name] = time.perf_counter()
        return hook

    def _stop(self, name: str) -> Callable[..., None]:
        def hook(mod: torch.nn.Module, args: Any, out: Any) -> None:
            self.sections[name] += time.perf_counter() - self.marks[name]
        return hook

    def _forward_done(self, mod: torch.nn.Module, args: Any, out: torch.Tensor) -> None:
        self.marks["fwd1"] = time.perf_counter()
        if out.requires_grad:
            out.register_hook(lambda g: self.marks.__setitem__("bwd0", time.perf_counter()))

    def reset(self) -> None:
        self.marks.clear()
        self.sections.clear()
        self.dw_fwd = 0.0

    def parts(self, total: float) -> dict[str, float]:
        """Seconds per part of the last step."""
        m = self.marks
        fwd = m["fwd1"] - m["fwd0"]
        out = {f"forward: {k.replace('_', ' ')}": self.sections.get(k, 0.0) for k in SECTIONS}
        out["forward: encoder, of which depthwise convs"] = self.dw_fwd
        out["forward: other (RevIN, decomposition, nodes, skip)"] = fwd - sum(self.sections.values())
        out["loss"] = m["bwd0"] - m["fwd1"]
        out["backward (+ grad clip)"] = m["opt0"] - m["bwd0"]
        out["optimiser (AdamW)"] = m["opt1"] - m["opt0"]
        out["step total"] = total
        return out


@contextmanager
def timed_dwconv(clock: StepClock) -> Iterator[None]:
    """Wrap ``ops.dwconv2d`` (``DWConv2d`` looks it up at call time) to time the depthwise forwards of a step."""
    real = ops.dwconv2d

    def spy(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding: Any = None,
            dilation: Any = 1) -> torch.Tensor:
        t0 = time.perf_counter()
        y = real(x, weight, bias, padding, dilation)
        clock.dw_fwd += time.perf_counter() - t0
        if clock.record:
            clock.dw_calls.append((tuple(x.shape), weight.detach().clone(), bias is not None, padding, dilation))
        return y

    ops.dwconv2d = spy
    try:
        yield
    finally:
        ops.dwconv2d = real


def replay(calls: list[tuple[Any, ...]], backward: bool, repeats: int) -> float:
    """Median seconds to run every recorded depthwise call, forward only or forward + backward."""
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(shape, generator=gen).requires_grad_(), w.clone().requires_grad_(),
             torch.zeros(w.shape[0], requires_grad=True) if has_bias else None, pad, dil)
            for shape, w, has_bias, pad, dil in calls]

    def once() -> None:
        for x, w, b, pad, dil in data:
            y = ops.dwconv2d(x, w, b, pad, dil)
            if backward:
                y.sum().backward()

    once()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def setup(stations: int, batch: int, seed: int) -> tuple[Forecaster, WindowDataset, list[np.ndarray]]:
    """The default Forecaster's network for ``stations`` synthetic stations and batches of ``batch`` windows."""
    ds = synthetic_global(stations=stations, hours=24 * 60, seed=seed, variables=("temperature",))
    fc = Forecaster()
    ws = WindowDataset(ds, fc.variable, fc.seq_len, fc.label_len, fc.pred_len)
    fc.frequency = infer_frequency(ds)
    fc.build_net(len(ws.station_ids), None)
    rng = np.random.default_rng(seed)
    batches = [rng.choice(len(ws), batch, replace=len(ws) < batch) for _ in range(64)]
    return fc, ws, batches


def profile(stations: int, batch: int, steps: int, warmup: int, seed: int, amp: torch.dtype | None = None
            ) -> tuple[dict[str, float], float]:
    """Median seconds per part over ``steps`` steps, and the median data seconds."""
    fc, ws, batches = setup(stations, batch, seed)
    net = fc.net
    assert net is not None
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, **fastpath.optimizer_options("cpu"))  # as the trainer
    clock = StepClock(net, opt)
    cfg = TrainConfig(grad_clip=5.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ctx = DistContext()
    rows: dict[str, list[float]] = defaultdict(list)
    data_s: list[float] = []
    with timed_dwconv(clock):
        for k in range(warmup + steps):
            t0 = time.perf_counter()
            b = ws.batch(batches[k % len(batches)])
            t1 = time.perf_counter()
            clock.reset()
            clock.record = k == warmup
            _train_step(net, opt, scaler, b, None, amp, cfg, ctx)
            total = time.perf_counter() - t1
            clock.record = False
            if k >= warmup:
                data_s.append(t1 - t0)
                for name, v in clock.parts(total).items():
                    rows[name].append(v)
    med = {name: statistics.median(v) for name, v in rows.items()}
    reps = max(3, steps // 2)
    fwd = replay(clock.dw_calls, False, reps)
    med["backward, of which depthwise convs (replayed)"] = max(replay(clock.dw_calls, True, reps) - fwd, 0.0)
    return med, statistics.median(data_s)


ORDER = ("forward: enc embedding", "forward: dec embedding", "forward: encoder",
         "forward: encoder, of which depthwise convs", "forward: decoder",
         "forward: other (RevIN, decomposition, nodes, skip)", "loss", "backward (+ grad clip)",
         "backward, of which depthwise convs (replayed)", "optimiser (AdamW)", "step total")


def table(results: dict[str, tuple[dict[str, float], float, int]]) -> str:
    """Markdown: one column pair (ms, share of the step) per configuration."""
    names = list(results)
    head = "| part | " + " | ".join(f"{n} ms | share" for n in names) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(names)]
    for part in ("data (WindowDataset.batch; prefetched, overlaps)",) + ORDER:
        cells = []
        for n in names:
            med, data_s, _ = results[n]
            v = data_s if part.startswith("data") else med[part]
            cells.append(f"{1e3 * v:.1f} | {100 * v / med['step total']:.0f} %")
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines.append("| windows/s | " + " | ".join(
        f"{results[n][2] / results[n][0]['step total']:.2f} | " for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=["4x32", "3850x1"],
                    help="STATIONSxBATCH (default: 4x32 3850x1)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--path", choices=("auto", "own", "torch"), default=None,
                    help="depthwise path (default: URLK_DWCONV or auto)")
    ap.add_argument("--amp", choices=("none", "bf16", "regime", "default"), nargs="+", default=["none"],
                    help="autocast dtype(s) of the step; several: one column per configuration and dtype; regime: "
                         "the automatic regime's choice for the configuration; default: with --against, each "
                         "side's own regime's choice (what each code trains with by default), else as regime")
    ap.add_argument("--paths", choices=("old", "new"), nargs="+", default=["new"],
                    help="code path(s): old = before issue 15 item 5 (URLK_FAST=0), new = the fast paths")
    ap.add_argument("--against", metavar="COMMIT", default=None,
                    help="compare whole steps with this commit's code, in fresh processes (see the module docstring)")
    ap.add_argument("--rounds", type=int, default=2, help="with --against: alternating rounds per configuration")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.against:
        return against(args.against, args.configs, args.amp, args.steps, args.warmup, args.rounds, args.seed)
    if args.path:
        ops.use_backend(args.path).__enter__()  # for the whole process
    torch.manual_seed(args.seed)
    print(f"# forecaster profile {dt.datetime.now().isoformat(timespec='seconds')} | "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, depthwise path {args.path or os.environ.get('URLK_DWCONV', 'auto')}")
    print(f"# default Forecaster network, synthetic data, median of {args.steps} steps after {args.warmup}\n")
    measured = {}
    # every old-path run first: the allocator setting of the fast path is process-wide and glibc's adaptive mmap
    # threshold cannot be restored once set, so an old run after a new one would not be the old path
    for path in sorted(args.paths, key=lambda p: p != "old"):
        for c in args.configs:
            s, b = (int(v) for v in c.lower().split("x"))
            for amp in args.amp:
                dtype = _amp_dtype(amp, s, b, args.seed)
                with fastpath.use_fast_paths(path == "new"):
                    fastpath.tune_allocator("cpu")
                    med, data_s = profile(s, b, args.steps, args.warmup, args.seed, dtype)
                name = f"{s} st x {b}" + (f" {amp}" if len(args.amp) > 1 or amp == "regime" else "")
                name = name.replace("regime", f"regime={'bf16' if dtype else 'none'}")
                measured[(c, amp, path)] = (name + (f" {path}" if len(args.paths) > 1 else ""), (med, data_s, b))
    results = dict(measured[(c, amp, path)] for c in args.configs for amp in args.amp for path in args.paths)
    print(table(results))
    if len(args.paths) > 1:
        print("\n" + speedups(results, args.paths))
    return 0


def _amp_dtype(amp: str, stations: int, batch: int, seed: int) -> torch.dtype | None:
    """The step's autocast dtype; ``regime`` (and ``default``, which with ``--against`` lets each side's own regime
    decide): bf16 from ``BF16_MIN_IMAGES`` node images per step on native bf16."""
    if amp in ("regime", "default"):
        fc, _, _ = setup(stations, batch, seed)
        images = fc.net.grouping.n_nodes * batch  # type: ignore[union-attr]
        return torch.bfloat16 if bf16_pays(images) else None
    return torch.bfloat16 if amp == "bf16" else None


def _extract(commit: str, dest: Path) -> None:
    """The files of ``commit`` of this repository, written under ``dest`` (``git archive``)."""
    repo = Path(__file__).resolve().parents[1]
    tar = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit], capture_output=True)
    if tar.returncode != 0:
        raise SystemExit(f"git archive {commit} failed: {tar.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as tf:
        tf.extractall(dest, filter="data")


def _worker(root: Path, stations: int, batch: int, amp: str, steps: int, warmup: int, seed: int
            ) -> tuple[float, str]:
    """Median step seconds of ``step_worker.py`` run on the package under ``root`` in a fresh process, and the
    autocast dtype it ran (``none`` or ``bf16``)."""
    cmd = [sys.executable, str(Path(__file__).with_name("step_worker.py")), "--stations", str(stations), "--batch",
           str(batch), "--amp", amp, "--steps", str(steps), "--warmup", str(warmup), "--seed", str(seed),
           "--threads", str(torch.get_num_threads())]
    marker = f"{root}:{time.monotonic_ns()}"
    env = dict(os.environ, PYTHONPATH=str(root), URLK_AGAINST_WORKER=marker)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    _wait_for_children(marker)
    if out.returncode != 0:
        raise SystemExit(f"step worker under {root} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if not Path(res["package"]).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"the worker imported {res['package']}, not the package under {root}")
    return float(res["median_s"]), str(res.get("amp", amp))


def _wait_for_children(marker: str, timeout: float = 600.0) -> None:
    """Wait until no process started by the worker (its environment holds ``marker``) is left: a kernel-compiling
    helper that outlives the worker would take a core from the next timed run."""
    needle = f"URLK_AGAINST_WORKER={marker}".encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = False
        for env_file in Path("/proc").glob("[0-9]*/environ"):
            try:
                alive = needle in env_file.read_bytes().split(b"\0")
            except OSError:
                continue
            if alive:
                break
        if not alive:
            return
        time.sleep(0.5)


def against(commit: str, configs: list[str], amps: list[str], steps: int, warmup: int, rounds: int,
            seed: int) -> int:
    """Whole training steps of ``commit``'s code and of this tree's, alternating in fresh processes (Markdown)."""
    here = Path(__file__).resolve().parents[1]
    print(f"# step time vs {commit} {dt.datetime.now().isoformat(timespec='seconds')} | "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {steps} steps after {warmup}, {rounds} rounds\n")
    print(f"| config | round | {commit} step ms | this tree step ms | {commit} windows/s | this tree windows/s "
          f"| ratio |\n|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="urlk-against-") as tmp:
        old_root = Path(tmp)
        _extract(commit, old_root)
        for root in (old_root, here):  # an untimed run each first: numba caches and dispatch tables written, and no
            _worker(root, 4, 2, "none", 1, 1, seed)  # compile helper of the first timed run competes for the CPU
        for c in configs:
            s, b = (int(v) for v in c.lower().split("x"))
            for amp in amps:
                kind = amp if amp == "default" else "bf16" if _amp_dtype(amp, s, b, seed) else "none"
                for r in range(rounds):
                    order = [old_root, here] if r % 2 == 0 else [here, old_root]
                    res = {root: _worker(root, s, b, kind, steps, warmup, seed) for root in order}
                    t = {root: v[0] for root, v in res.items()}
                    used = {v[1] for v in res.values()}
                    name = f"{s} st x {b} " + (" ".join(used) if len(used) == 1 else
                                               f"{res[old_root][1]} / {res[here][1]}")
                    print(f"| {name} | {r + 1} | {t[old_root] * 1e3:.1f} | {t[here] * 1e3:.1f} | "
                          f"{b / t[old_root]:.2f} | {b / t[here]:.2f} | {t[old_root] / t[here]:.2f}x |", flush=True)
    return 0


def speedups(results: dict[str, tuple[dict[str, float], float, int]], paths: list[str]) -> str:
    """Markdown: windows/s per code path and the ratio last path / first path, one row per configuration."""
    first, last = paths[0], paths[-1]
    lines = [f"| config | {first} windows/s | {last} windows/s | {last} / {first} |", "|---|---:|---:|---:|"]
    for name in results:
        if not name.endswith(f" {first}"):
            continue
        base = name[: -len(first) - 1]
        rate = {p: results[f"{base} {p}"][2] / results[f"{base} {p}"][0]["step total"] for p in (first, last)}
        lines.append(f"| {base} | {rate[first]:.2f} | {rate[last]:.2f} | {rate[last] / rate[first]:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
