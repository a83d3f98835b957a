"""Which CPU implementation runs each direction of a depthwise call: a small measured table, cached per machine.

Under ``auto`` the dispatcher asks :func:`choose` for every CPU call and every direction (``forward``,
``grad_input``, ``grad_weight``) whether the own kernels or torch (oneDNN) is faster for that call's shape. Neither
wins everywhere on CPU: oneDNN's forward is 2-5x faster on maps up to ~12x12 with K <= 13, the own kernels win on
large kernels and maps and almost always in the backward, and the cross-over moves with the channel count, the
batch, the dilation and the machine. So the answer is measured, not guessed:

* **Bucket.** A call is keyed by dtype, channels, map size, kernel, padding, dilation, torch's thread count and the
  batch rounded up to a power of two (a last partial batch does not need its own timing).
* **Lazy, bounded measurement.** The first time a bucket is seen (at the forward, for every direction the call
  will need), both implementations run that direction on the call's own tensors (its full batch: a prefix would
  hide the memory-bound behaviour of large calls; :data:`WORK_CAP` bounds it): one untimed warm-up each (kernel
  compilation, oneDNN primitive creation; on one sample for large calls), then interleaved timed pairs (the order
  alternating, an even number of them: each side as often right after itself as after the other), and the
  **median** of each side decides. :data:`MIN_REPEATS` pairs at least; two suffice when
  every pair shows one side :data:`CLEAR_RATIO` times faster and the slower took longer than :data:`BUDGET_S`;
  while the two medians are within :data:`CLOSE` of each other (a choice the noise could flip) pairs are added
  up to :data:`MAX_REPEATS` within :data:`CLOSE_BUDGET_S`. A first timed call can carry a one-off cost (oneDNN
  creates a primitive per batch size; the warm-up of a large call ran on one sample), which the median discards
  and a minimum or a single pair would not. Nothing is timed while the kernels' compile-ahead helper process is
  compiling (:func:`wait_for_compiles`: it would take one of the 2 cores from the timed calls). The timed results
  are discarded: what the caller gets is computed once, by the chosen implementation, so measuring changes numbers
  only within the two paths' agreement (both are tested against ``F.conv2d``).
* **Cached per machine.** Decisions and timings go to ``dispatch-<id>.json`` in the kernels' cache directory
  (:func:`urlk_forecast.ops.cpu_kernels.cache_dir`; ``URLK_DWCONV_TABLE_DIR`` puts the table elsewhere, which the
  test suite uses to keep the user's table untouched), ``<id>`` a hash of the CPU model and flags, the package, torch
  and kernel-source versions; written atomically (merged with what other processes wrote). A corrupt or foreign
  file is ignored with a warning and rewritten.
* **Explicit calibration.** :func:`calibrate` measures a list of calls ahead (re-measuring with ``refresh=True``);
  :func:`record_calls` collects the calls a model makes, so ``calibrate(calls)`` can run before training.

* **Plans.** The dispatcher keeps, per process, the decided plan of every exact call it has run (shapes,
  dtypes, padding, dilation, which gradients are needed, threads, tuning mode): :data:`plans`. A repeated call is
  one dictionary lookup and then either plain ``F.conv2d`` (torch runs every direction the call needs: torch's
  own autograd, no wrapper) or the own autograd function with its directions fixed. :func:`reset` and
  :func:`calibrate` clear them. A plan is charged what that autograd function costs over torch's own node
  (:func:`choose_plan`; measured once per machine, :func:`fixed_cost`, kept in the same file): it goes all-torch
  when its own directions save less.

``URLK_DWCONV_TUNE`` = ``1`` (default: cached table, missing buckets measured) | ``0`` (no table and no timing: the
fixed rule of :func:`static_choice`) | ``refresh`` (every bucket re-measured once in this process). The backend
overrides (``URLK_DWCONV=own|torch``, :func:`urlk_forecast.ops.use_backend`) are applied before this module is
asked, so an explicit choice always wins.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import torch

from urlk_forecast.ops import cpu_kernels, cpu_paths, reach
from urlk_forecast.ops._args import out_hw
from urlk_forecast.utils.atomic import atomic_write_text

__all__ = ["TUNE_ENV", "TABLE_DIR_ENV", "Call", "env_get", "plans", "choose", "static_choice", "measure", "calibrate",
           "record_calls", "table_path", "machine_id", "machine_constant", "bucket", "reset", "tune_mode",
           "choose_many", "wait_for_compiles", "choose_plan", "crop_pays", "fixed_cost", "time_difference",
           "one_time_seconds"]

log = logging.getLogger("urlk_forecast.ops")

TUNE_ENV = "URLK_DWCONV_TUNE"
#: directory of the table file instead of the kernels' cache directory (tests point it at a temporary directory)
TABLE_DIR_ENV = "URLK_DWCONV_TABLE_DIR"
#: multiply-adds (B*C*Ho*Wo*KH*KW) of one timed call at most: larger calls are timed on a prefix of the batch
WORK_CAP = 1_000_000_000
#: calls up to this many multiply-adds warm up on the full timed batch, larger ones on one sample: oneDNN creates a
#: primitive per batch size, and its first two or three calls at a new size ran 2-10x its steady time (350 x 160 x 4 x
#: 6 K=5 forward: 6.2, 2.3, 0.9, then 0.6 ms), enough to decide a 4-pair table entry the wrong way
WARMUP_WORK = 400_000_000
#: warm-up calls of each implementation before the timed pairs
WARMUP_CALLS = 3
#: timed pairs per bucket and direction at least (the median of each side decides); every count of pairs the
#: protocol stops at is even, so each side is timed as often right after itself as right after the other (see
#: :func:`_timed_pairs`)
MIN_REPEATS = 4
#: pairs at most, added while the two medians are within CLOSE of each other and CLOSE_BUDGET_S is not used up
MAX_REPEATS = 16
CLOSE = 0.12
CLOSE_BUDGET_S = 0.15
#: a plan whose own directions save more than this (s) keeps them without the autograd function's cost being
#: measured: that cost was 25-60 us per call on the 2-core CPU, an order of magnitude below
WRAPPER_COST_CAP_S = 0.5e-3
#: two pairs decide when both show one side this many times faster and the slower took over BUDGET_S
CLEAR_RATIO = 3.0
BUDGET_S = 0.02
FORMAT = 1
#: the measuring protocol, part of the machine id (so of the table's file name): tables timed by an earlier protocol
#: are measured again instead of reused (2: several warm-up calls on the timed batch)
PROTOCOL = 2
#: a call: input shape (B, C, H, W), kernel (KH, KW), padding (top, bottom, left, right), dilation (dh, dw)
Call = tuple[tuple[int, int, int, int], tuple[int, int], tuple[int, int, int, int], tuple[int, int]]

# the fixed rule used when tuning is off (URLK_DWCONV_TUNE=0): oneDNN's forward on maps up to 12x12 with K <= 13
# whose padding fits in the map (a kernel reaching past the whole map sends oneDNN to a slow path), own otherwise
STATIC_FWD_MAX_SIDE = 12
STATIC_FWD_MAX_K = 13


def _make_env_get() -> Any:
    """A reader of one environment variable that costs ~0.05 us instead of ``os.environ.get``'s ~0.7 us: the
    dispatcher reads ``URLK_DWCONV`` and ``URLK_DWCONV_TUNE`` on every call (so that a benchmark can flip them),
    and on calls of 0.1 ms that difference showed. On POSIX CPython ``os.environ`` keeps its items in a dict of
    bytes (``_data``), updated in place by every ``os.environ`` assignment and deletion; elsewhere, or when that
    dict is missing, ``os.environ.get``. Either way exactly what ``os.environ`` holds."""
    data = getattr(os.environ, "_data", None)
    if os.name != "posix" or not isinstance(data, dict):
        return os.environ.get
    encode, decode = os.fsencode, os.fsdecode

    def get(name: str) -> str | None:
        v = data.get(encode(name))
        return None if v is None else decode(v)

    return get


#: ``env_get(name)``: the value of environment variable ``name`` (None when unset), cheaply; see :func:`_make_env_get`
env_get = _make_env_get()


def tune_mode() -> str:
    """``"1"``, ``"0"`` or ``"refresh"`` from ``URLK_DWCONV_TUNE`` (ValueError naming the variable otherwise)."""
    v = (env_get(TUNE_ENV) or "1").strip().lower() or "1"
    if v not in ("0", "1", "refresh"):
        raise ValueError(f"{TUNE_ENV} must be 0, 1 or refresh, got {v!r}")
    return v


def static_choice(direction: str, x_shape: Sequence[int], k: Sequence[int], pads: Sequence[int]) -> str:
    """The fixed rule (no measurement): oneDNN forward on small maps whose padding fits, the own kernels else."""
    h, w = x_shape[-2:]
    t, b, l, r = pads
    small = max(h, w) <= STATIC_FWD_MAX_SIDE and max(k) <= STATIC_FWD_MAX_K and max(t, b) <= h and max(l, r) <= w
    return "torch" if direction == "forward" and small else "own"


def bucket(call: Call, dtype: torch.dtype, threads: int) -> str:
    """Table key of a call: exact but for the batch, rounded up to a power of two."""
    (n, c, h, w), (kh, kw), pads, dil = call
    nb = 1 << max(0, math.ceil(math.log2(max(n, 1))))
    return (f"{str(dtype).replace('torch.', '')}|b{nb}|c{c}|{h}x{w}|k{kh}x{kw}|p{','.join(map(str, pads))}"
            f"|d{dil[0]},{dil[1]}|t{threads}")


# ------------------------------------------------------------------------------------------- machine and file
def _cpu_description() -> tuple[str, str]:
    """(CPU model name, hash of its feature flags), from /proc/cpuinfo where there is one."""
    model, flags = platform.processor() or platform.machine(), ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and model != val.strip():
                    model = val.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(val.split()))
                if key == "" and flags:  # end of the first processor's block
                    break
    return model, hashlib.sha256(flags.encode()).hexdigest()[:16]


def machine_id() -> dict[str, str]:
    """What a table's timings depend on besides the call: CPU model and flags, package, torch, kernel source, and the
    measuring protocol."""
    from urlk_forecast import __version__

    model, flags = _cpu_description()
    try:
        kernels = cpu_kernels._load().__name__  # named by the hash of the generated kernel source
    except Exception:  # noqa: BLE001 - no own kernels: the table still records torch's side
        kernels = "unavailable"
    return {"cpu": model, "cpu_flags": flags, "urlk_forecast": __version__, "torch": torch.__version__,
            "kernels": kernels, "protocol": str(PROTOCOL)}


def table_path() -> str:
    """``<kernel cache dir>/dispatch-<machine hash>.json``, or in ``URLK_DWCONV_TABLE_DIR`` when that is set
    (OSError when no cache directory is writable)."""
    ident = hashlib.sha256(json.dumps(machine_id(), sort_keys=True).encode()).hexdigest()[:16]
    folder = os.environ.get(TABLE_DIR_ENV)
    if folder:
        os.makedirs(folder, exist_ok=True)
    return os.path.join(folder or cpu_kernels.cache_dir(), f"dispatch-{ident}.json")


def _valid_entry(v: Any) -> bool:
    return isinstance(v, dict) and all(
        d in cpu_paths.DIRECTIONS and isinstance(e, dict) and e.get("impl") in cpu_paths.IMPLS
        for d, e in v.items())


def _valid_costs(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(c, (int, float)) and math.isfinite(c) and c >= 0 for k, c in v.items())


def _read_table(path: str, machine: dict[str, str]) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, float]]:
    """Entries and fixed costs (s, :func:`fixed_cost`) of the table file; empty (with a warning) when it is
    unreadable, corrupt or another machine's."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return {}, {}
    except (OSError, ValueError) as exc:
        log.warning("dwconv dispatch table %s is unreadable (%s: %s); ignoring it, re-measuring", path,
                    type(exc).__name__, exc)
        return {}, {}
    problem = ""
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
        problem = "not a dispatch table of this format"
    elif data.get("machine") != machine:
        problem = f"written for another machine or version ({data.get('machine')})"
    elif not all(isinstance(k, str) and _valid_entry(v) for k, v in data["entries"].items()):
        problem = "malformed entries"
    elif not _valid_costs(data.get("costs", {})):
        problem = "malformed costs"
    if problem:
        log.warning("dwconv dispatch table %s is %s; ignoring it, re-measuring", path, problem)
        return {}, {}
    return data["entries"], data.get("costs", {})


class _Table:
    """The decisions of one machine: in memory, backed by the JSON file at ``path`` (None: memory only)."""

    def __init__(self, path: str | None, machine: dict[str, str]) -> None:
        self.path, self.machine = path, machine
        self.entries, self.costs = _read_table(path, machine) if path else ({}, {})
        self.fresh: set[tuple[str, str]] = set()  # (key, direction) measured by this process; (name, "cost")
        self.lock = threading.Lock()

    def get(self, key: str, direction: str, refresh: bool) -> str | None:
        if refresh and (key, direction) not in self.fresh:
            return None
        entry = self.entries.get(key, {}).get(direction)
        return entry["impl"] if entry else None

    def put(self, key: str, direction: str, times: dict[str, float]) -> str:
        impl = min(cpu_paths.IMPLS, key=lambda i: times[i])  # ties: own (first)
        entry = {"impl": impl, **{f"{i}_ms": round(1e3 * times[i], 4) for i in cpu_paths.IMPLS}}
        with self.lock:
            self.entries.setdefault(key, {})[direction] = entry
            self.fresh.add((key, direction))
            self.save()
        return impl

    def times(self, key: str, direction: str) -> tuple[float, float] | None:
        """(own, torch) seconds the entry was decided on; None when it has none (a hand-written entry)."""
        entry = self.entries.get(key, {}).get(direction, {})
        own, tch = entry.get("own_ms"), entry.get("torch_ms")
        if not isinstance(own, (int, float)) or not isinstance(tch, (int, float)):
            return None
        return 1e-3 * own, 1e-3 * tch

    def get_cost(self, name: str, refresh: bool) -> float | None:
        if refresh and (name, "cost") not in self.fresh:
            return None
        return self.costs.get(name)

    def put_cost(self, name: str, seconds: float) -> float:
        with self.lock:
            self.costs[name] = float(seconds)
            self.fresh.add((name, "cost"))
            self.save()
        return float(seconds)

    def save(self) -> None:
        """Merge into the file (entries other processes wrote are kept, ours win) and replace it atomically."""
        if not self.path:
            return
        on_disk, costs = _read_table(self.path, self.machine) if os.path.exists(self.path) else ({}, {})
        for key, dirs in self.entries.items():
            on_disk.setdefault(key, {}).update(dirs)
        costs.update(self.costs)
        self.entries, self.costs = on_disk, costs
        text = json.dumps({"format": FORMAT, "machine": self.machine, "entries": on_disk, "costs": costs}, indent=1,
                          sort_keys=True)
        try:
            atomic_write_text(self.path, text + "\n")
        except OSError as exc:
            log.warning("cannot write the dwconv dispatch table %s (%s); keeping it in memory", self.path, exc)
            self.path = None


_state_lock = threading.Lock()
_state: dict[str, Any] = {}
_memo: dict[tuple[Any, ...], tuple[str, ...]] = {}  # (directions, mode, shape, kernel, pads, dil, dtype, threads)
#: the dispatcher's decided plan per exact call (its key: backend, shapes, dtypes, padding, dilation, gradients
#: needed, threads, tuning mode): a callable ``plan(x, w, bias, pads, dil)`` (see :mod:`urlk_forecast.ops.dispatch`)
plans: dict[tuple[Any, ...], Any] = {}


def _table() -> _Table:
    """The table for the current cache location (re-opened when ``URLK_CACHE_DIR``/``XDG_CACHE_HOME`` change)."""
    sig = (os.environ.get("URLK_CACHE_DIR"), os.environ.get("XDG_CACHE_HOME"), os.environ.get("NUMBA_CACHE_DIR"),
           os.environ.get(TABLE_DIR_ENV))
    table = _state.get("table")
    if table is not None and _state.get("sig") == sig:
        return table
    with _state_lock:
        if _state.get("table") is None or _state.get("sig") != sig:
            machine = machine_id()
            try:
                path: str | None = table_path()
            except OSError as exc:
                log.warning("no cache directory for the dwconv dispatch table (%s); measuring per process", exc)
                path = None
            _state.update(table=_Table(path, machine), sig=sig)
            _memo.clear()
            plans.clear()
        return _state["table"]


# --------------------------------------------------------------------------------------------------- timing
def _clock(fn: partial[torch.Tensor]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(direction: str, x: torch.Tensor, w: torch.Tensor, pads: Sequence[int], dil: Sequence[int],
            gy: torch.Tensor | None = None) -> dict[str, float]:
    """Seconds of one call of ``direction`` on each implementation (``{"own": s, "torch": s}``), bounded.

    Timed on the call's own batch (a prefix of at most :data:`WORK_CAP` multiply-adds: a smaller batch would hide
    the memory-bound behaviour of large calls, where oneDNN's layout reorders cost most); ``gy`` (the output
    gradient) is drawn from a private generator when not given. See the module docstring for the protocol.
    """
    n, c, h, wd = x.shape
    kh, kw = w.shape[-2:]
    pads4 = (int(pads[0]), int(pads[1]), int(pads[2]), int(pads[3]))
    dil2 = (int(dil[0]), int(dil[1]))
    ho, wo = out_hw(h, wd, (kh, kw), pads4, dil2)
    per_sample = max(1, c * ho * wo * kh * kw)
    b = min(n, max(1, WORK_CAP // per_sample))
    gy = None if direction == "forward" else (gy.detach() if gy is not None else torch.randn(
        b, c, ho, wo, dtype=x.dtype, generator=torch.Generator().manual_seed(0)))
    wd_ = w.detach()

    def runs(m: int) -> dict[str, partial[torch.Tensor]]:
        xs, gys = x.detach()[:m], (gy[:m] if gy is not None else None)
        return {i: partial(cpu_paths.compute, direction, i, xs, wd_, gys, pads4, dil2) for i in cpu_paths.IMPLS}

    timed = runs(b)
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            # warm-up (compilation on a machine's first run, oneDNN primitive creation): on the full batch when
            # that is cheap (several calls: oneDNN's first calls at a new batch size are slow), else on one sample
            for fn in (timed if b * per_sample <= WARMUP_WORK else runs(1)).values():
                for _ in range(WARMUP_CALLS):
                    fn()
            wait_for_compiles()
            return _timed_pairs(timed)
    finally:
        _one_time["measure_s"] += time.perf_counter() - t0


_one_time = {"measure_s": 0.0}


def one_time_seconds() -> float:
    """Seconds this process has spent so far on the op's one-time work: compiling or loading kernels
    (:func:`urlk_forecast.ops.cpu_kernels.compile_seconds`) and measuring the table. A caller that times its own
    steps (the trainer's plan) leaves out the steps during which this grew: they are no sample of the steady state."""
    return cpu_kernels.compile_seconds() + _one_time["measure_s"]


#: the longest :func:`wait_for_compiles` waits (s); a numba compilation of one driver takes ~5-60 s
COMPILE_WAIT_S = 300.0
#: the compile helper counts as idle after this long (s) without using CPU time
COMPILE_QUIET_S = 0.1
_idle_seen: dict[str, Any] = {}


def _cpu_ticks(pid: int) -> int | None:
    """CPU time (user + system, clock ticks) of process ``pid`` from ``/proc``; None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None


def wait_for_compiles(timeout: float = COMPILE_WAIT_S) -> float:
    """Block while the kernels' compile-ahead helper process (:func:`urlk_forecast.ops.cpu_kernels.
    prefetch_backward`) is compiling; seconds waited. Timing while it compiles measured the own kernels on half of
    the 2 cores: a forward row of the table was timed while the helper compiled that call's backward. Idle means no
    CPU time used for :data:`COMPILE_QUIET_S`; a helper seen idle with no request sent since is not watched again."""
    helper = getattr(cpu_kernels, "_helper", None)
    if helper is None or helper.poll() is not None:
        return 0.0
    requests = len(getattr(cpu_kernels, "_requested", ()))
    ticks = _cpu_ticks(helper.pid)
    if ticks is None or _idle_seen.get("state") == (helper.pid, requests, ticks):
        return 0.0
    start = quiet_since = time.perf_counter()
    while (now := time.perf_counter()) - start < timeout and now - quiet_since < COMPILE_QUIET_S:
        time.sleep(0.01)
        t = _cpu_ticks(helper.pid)
        if t is None or helper.poll() is not None:
            break
        if t != ticks:
            ticks, quiet_since = t, time.perf_counter()
    _idle_seen["state"] = (helper.pid, requests, ticks)
    waited = time.perf_counter() - start
    if waited > 1.0:
        log.debug("dwconv dispatch: waited %.1f s for the kernel compile helper before timing", waited)
    return waited


def _timed_pairs(timed: dict[str, partial[torch.Tensor]]) -> dict[str, float]:
    """Median seconds of each implementation over interleaved timed pairs, as many as the module docstring says.

    The pairs alternate their order (torch-own, own-torch, ...) and stop only after an even count, so each side has
    as many samples taken right after itself as right after the other. What ran just before moves a call's time on
    the 2-core CPU by up to 2x (torch's OpenMP workers still spinning when the own kernels start, or asleep when
    torch starts after them: float32 8x40x56x56 K=3 grad-input, own 4.5 ms after torch vs 2.2 ms after own); with
    three pairs each side had two samples of the switch and one without, and the median compared the two paths'
    switch costs, which flipped near ties the benchmark (and a network, where both follow each other) saw the
    other way."""
    a, b = cpu_paths.IMPLS
    times: dict[str, list[float]] = {a: [], b: []}
    start = time.perf_counter()
    med = {}
    for r in range(MAX_REPEATS):
        for i in ((a, b) if r % 2 else (b, a)):  # alternating which goes first
            times[i].append(_clock(timed[i]))
        med = {i: statistics.median(v) for i, v in times.items()}
        lo, hi = min(med.values()), max(med.values())
        if r == 1 and hi > BUDGET_S:  # two pairs that agree on a clear winner: the expensive loser is not repeated
            ratios = [tb / ta for ta, tb in zip(times[a], times[b])]
            if min(ratios) > CLEAR_RATIO or max(ratios) < 1 / CLEAR_RATIO:
                break
        stop = hi > (1 + CLOSE) * lo or time.perf_counter() - start > CLOSE_BUDGET_S
        if r % 2 and r + 1 >= MIN_REPEATS and stop:
            break
    return med


def choose(direction: str, x: torch.Tensor, w: torch.Tensor, pads: Sequence[int], dil: Sequence[int],
           gy: torch.Tensor | None = None) -> str:
    """``"own"`` or ``"torch"`` for this CPU call and direction: the table's entry, measured now when missing."""
    return choose_many((direction,), x, w, pads, dil, gy)[0]


def choose_many(directions: tuple[str, ...], x: torch.Tensor, w: torch.Tensor, pads: Sequence[int],
                dil: Sequence[int], gy: torch.Tensor | None = None) -> tuple[str, ...]:
    """:func:`choose` for several directions of one call; a per-process memo makes a decided call one lookup."""
    mode = tune_mode()
    if mode == "0":
        return tuple(static_choice(_direction(d), x.shape, w.shape[-2:], pads) for d in directions)
    threads = torch.get_num_threads()
    memo_key = (directions, mode, tuple(x.shape), tuple(w.shape[-2:]), tuple(pads), tuple(dil), x.dtype, threads)
    impls = _memo.get(memo_key)
    if impls is not None:
        return impls  # type: ignore[return-value]
    table = _table()
    call: Call = (tuple(x.shape), tuple(w.shape[-2:]), tuple(pads), tuple(dil))  # type: ignore[assignment]
    key = bucket(call, x.dtype, threads)
    out = []
    for d in directions:
        impl = table.get(key, _direction(d), refresh=mode == "refresh")
        if impl is None:
            impl = table.put(key, d, measure(d, x, w, pads, dil, gy))
            log.debug("dwconv dispatch: %s %s -> %s (measured)", key, d, impl)
        out.append(impl)
    _memo[memo_key] = tuple(out)  # type: ignore[assignment]
    return tuple(out)


def choose_plan(directions: tuple[str, ...], x: torch.Tensor, w: torch.Tensor, pads: Sequence[int],
                dil: Sequence[int], wrapper_cost: Callable[[], float]) -> tuple[str, ...]:
    """:func:`choose_many` for a whole call, charging a plan that needs a Python autograd function its cost.

    The table compares bare directions; a call that needs gradients runs torch's own C++ autograd node when torch
    runs every direction, but an autograd function of the dispatcher's when any direction is own, which costs
    ``wrapper_cost()`` seconds more per call (forward and backward; measured once per machine, see
    :func:`fixed_cost`). So the plan goes all-torch when the own directions save less than that: a 1x8x6x6 K=3
    call whose own grad-weight saved 15 us paid ~25-50 us of Python for it. Calls without gradients (the own
    forward runs without an autograd function), entries without timings and the fixed rule keep the table's
    choices; savings over :data:`WRAPPER_COST_CAP_S` keep them without measuring the cost."""
    impls = choose_many(directions, x, w, pads, dil)
    if len(directions) < 2 or "own" not in impls or tune_mode() == "0":
        return impls
    threads = torch.get_num_threads()
    call: Call = (tuple(x.shape), tuple(w.shape[-2:]), tuple(pads), tuple(dil))  # type: ignore[assignment]
    key, table = bucket(call, x.dtype, threads), _table()
    saving = 0.0
    for d, impl in zip(directions, impls):
        t = table.times(key, d) if impl == "own" else (0.0, 0.0)
        if t is None:
            return impls
        saving += t[1] - t[0]
    if saving >= WRAPPER_COST_CAP_S or saving >= wrapper_cost():
        return impls
    log.debug("dwconv dispatch: %s %s -> all torch (own saves %.1f us, less than the autograd function)", key,
              impls, 1e6 * saving)
    return ("torch",) * len(directions)


def _best_total(directions: tuple[str, ...], x: torch.Tensor, w: torch.Tensor, pads: Sequence[int],
                dil: Sequence[int]) -> float | None:
    """Seconds of the faster path of every direction of this call summed, from the table (measured now when
    missing); None when an entry has no timings (a hand-written one)."""
    choose_many(directions, x, w, pads, dil)
    call: Call = (tuple(x.shape), tuple(w.shape[-2:]), tuple(pads), tuple(dil))  # type: ignore[assignment]
    key, table = bucket(call, x.dtype, torch.get_num_threads()), _table()
    total = 0.0
    for d in directions:
        t = table.times(key, _direction(d))
        if t is None:
            return None
        total += min(t)
    return total


def crop_pays(directions: tuple[str, ...], x: torch.Tensor, w: torch.Tensor, pads: Sequence[int],
              cropped: torch.Tensor, cropped_pads: Sequence[int], dil: Sequence[int],
              crop_cost: Callable[[], float]) -> bool:
    """Whether a call runs faster with its kernel cropped to the taps that touch the map (``cropped``,
    ``cropped_pads``: :mod:`urlk_forecast.ops.reach`): the faster path of each direction summed, from the table, for
    the cropped call plus ``crop_cost()`` (slicing the kernel and its gradient, measured once per machine) against
    the full call. Fewer taps are not always faster: a 1x3 kernel of dilation 5 on 32x160x4x6 ran 1.7x slower on
    the own kernels than the 3x3 one it came from (AVX2 CPU), oneDNN's 1x3 of dilation 4 1.2x. Tuning off (the
    fixed rule) or entries without timings: crop."""
    if tune_mode() == "0":
        return True
    full = _best_total(directions, x, w, pads, dil)
    cut = _best_total(directions, x, cropped, cropped_pads, dil)
    if full is None or cut is None:
        return True
    return cut + crop_cost() < full


def fixed_cost(name: str, probe: Callable[[], float]) -> float:
    """Seconds of a per-machine constant cost ``name`` at this thread count (the dispatcher's: its Python autograd
    function around a call): the table file's value, else ``probe()`` measured now and stored there (re-measured
    once per process under ``URLK_DWCONV_TUNE=refresh``)."""
    table = _table()
    key = f"{name}|t{torch.get_num_threads()}"
    cost = table.get_cost(key, refresh=tune_mode() == "refresh")
    if cost is None:
        cost = table.put_cost(key, max(0.0, float(probe())))
        log.debug("dwconv dispatch: fixed cost %s = %.1f us (measured)", key, 1e6 * cost)
    return cost


@contextlib.contextmanager
def _file_lock(path: str | None) -> Iterator[None]:
    """An exclusive lock on ``path`` (nothing where there is no path or no ``fcntl``)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        fcntl = None  # type: ignore[assignment]
    if path is None or fcntl is None:
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def machine_constant(name: str, probe: Callable[[], float]) -> float:
    """A number measured once per machine (and thread count) that every process on the machine must agree on,
    because it picks an implementation whose sums are ordered differently (:mod:`urlk_forecast.models.
    linear_function`: a run resumed in a new process must repeat the first one bit for bit). Kept in the table
    file's ``costs``; the first process measures ``probe()`` under a file lock while the others wait and then read
    its value. Not re-measured under ``URLK_DWCONV_TUNE=refresh``."""
    table = _table()
    key = f"{name}|t{torch.get_num_threads()}"
    value = table.get_cost(key, refresh=False)
    if value is not None:
        return value
    with _file_lock(table.path + ".lock" if table.path else None):
        if table.path and os.path.exists(table.path):
            _, on_disk = _read_table(table.path, table.machine)
            if key in on_disk:
                with table.lock:
                    table.costs[key] = on_disk[key]
                return on_disk[key]
        value = table.put_cost(key, max(0.0, float(probe())))
    log.debug("machine constant %s = %.4g (measured)", key, value)
    return value


def time_difference(slow: Callable[[], Any], fast: Callable[[], Any], blocks: int = 21, calls: int = 10) -> float:
    """Median seconds per call by which ``slow`` exceeds ``fast``, over ``blocks`` interleaved blocks of ``calls``
    calls each (order alternating; after one untimed call of each, with nothing compiling)."""
    slow(), fast()
    wait_for_compiles()
    diffs = []
    for b in range(blocks):
        t = {}
        for name, fn in ((("s", slow), ("f", fast)) if b % 2 else (("f", fast), ("s", slow))):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            t[name] = time.perf_counter() - t0
        diffs.append((t["s"] - t["f"]) / calls)
    return statistics.median(diffs)


def _direction(d: str) -> str:
    if d not in cpu_paths.DIRECTIONS:
        raise ValueError(f"autotune: direction must be one of {', '.join(cpu_paths.DIRECTIONS)}, got {d!r}")
    return d


def reset() -> None:
    """Forget the loaded table and the memo (the next call re-reads the file; tests inject tables this way)."""
    with _state_lock:
        _state.clear()
        _memo.clear()
        plans.clear()


# ------------------------------------------------------------------------------------------- calibration
class _Recording(threading.local):
    """Per-thread list of recorded calls (a class default, so reading it when unset costs no AttributeError)."""

    calls: list[Call] | None = None


_recording = _Recording()


@contextlib.contextmanager
def record_calls() -> Iterator[list[Call]]:
    """Collect (in order, without repeats) the CPU depthwise calls the dispatcher sees in this thread."""
    calls: list[Call] = []
    old = _recording.calls
    _recording.calls = calls
    try:
        yield calls
    finally:
        _recording.calls = old


def note_call(x: torch.Tensor, w: torch.Tensor, pads: Sequence[int], dil: Sequence[int]) -> None:
    """Called by the dispatcher for every CPU call; records it inside :func:`record_calls`."""
    calls = _recording.calls
    if calls is not None:
        call = (tuple(x.shape), tuple(w.shape[-2:]), tuple(pads), tuple(dil))
        if call not in calls:
            calls.append(call)  # type: ignore[arg-type]


def calibrate(calls: Iterable[Call], dtype: torch.dtype = torch.float32, refresh: bool = False,
              directions: Sequence[str] = cpu_paths.DIRECTIONS) -> list[dict[str, Any]]:
    """Measure (``refresh``: re-measure) and store the decision of every call and direction; returns one row per
    call and direction with the decision and both timings in ms. Calls are (x shape, kernel, pads, dilation), as
    :func:`record_calls` collects them; a kernel that reaches past its map is measured cropped too
    (:mod:`urlk_forecast.ops.reach`: ``auto`` runs whichever of the two is faster), with rows of its own."""
    table = _table()
    threads = torch.get_num_threads()
    gen = torch.Generator().manual_seed(0)
    rows = []
    every = []
    for call in calls:
        every += [call] + ([cut] if (cut := reach.cropped_call(call)) != call else [])
    for call in every:
        shape, k, pads, dil = call
        key = bucket(call, dtype, threads)
        x = torch.randn(*shape, dtype=dtype, generator=gen)
        w = torch.randn(shape[1], 1, *k, dtype=dtype, generator=gen)
        for d in directions:
            impl = None if refresh else table.get(key, d, tune_mode() == "refresh")
            if impl is None:
                impl = table.put(key, d, measure(d, x, w, pads, dil))
            rows.append({"key": key, "direction": d, **table.entries[key][d]})
    _memo.clear()  # re-measured entries replace what this process remembered
    plans.clear()
    return rows
