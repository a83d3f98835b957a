"""Depthwise convolution on CPU: numba kernels, generated as straight-line code, compiled once and cached on disk.

Problem (stride 1, one filter per channel, pads ``top/left`` with the output size fixing ``bottom/right``)::

    y[n, i, j]  = sum_{a,b} w[c, a, b] * x[n, i + a*dh - top, j + b*dw - left]    (+ bias[c])
    gx          = the same correlation of gy with the kernel rotated by 180 degrees (padding (K-1)*d - pad)
    gw[c, a, b] = sum_{batch} sum_{i,j} gy[n, i, j] * x[n, i + a*dh - top, j + b*dw - left]

This module is the runtime: it loads the kernel module written by :mod:`urlk_forecast.ops.cpu_codegen` (design of
the kernels there and in ``docs/ops.md``), compiles it under the right LLVM settings, splits the work over threads
and wraps it for torch tensors.

* Wide maps run the spatial kernels (vectors along image rows, one (batch, channel) plane at a time, register
  blocks that load each input row once per several kernel rows); maps at most ~12 (forward) / 16 (backward) wide
  run the channel-blocked kernels (16 channels per vector). Kernel taps that only read zero padding are skipped.
* Work units (planes, channel blocks, or channels for grad-weight) are cut into ~4 chunks per thread, pulled by
  ``torch.get_num_threads()`` threads (:func:`_run`); the numba functions release the GIL.
* grad-weight accumulates over the batch in float64 per channel (or per plane, summed afterwards, when there are
  too few channels for the threads); results are deterministic and equal across thread counts in the tests.
* numba disables LLVM's SLP vectorizer by default (``NUMBA_SLP_VECTORIZE=0``); it is switched on only while these
  kernels compile (:func:`_compile_ctx`, under numba's compiler lock), with numba's pipeline minus its SSA pass
  (:class:`NoSSACompiler`). The generated module lives in a user cache directory (``URLK_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/urlk_forecast``, else a temp dir) so numba's on-disk cache works: each driver (direction x
  register block x dtype) compiles lazily, on its first use, once per machine (UniRepLKNet-A's training step needs
  six, ~35 s of CPU).
* A compilation that takes longer than a cache load is logged at INFO level on ``urlk_forecast.ops`` (what, for
  which kernel size, where it is cached), every 30 s while it lasts, and timed (:func:`_compile_notice`).
* A forward whose gradient will be needed asks a helper process to compile the backward driver meanwhile
  (:func:`prefetch_backward`; numba compiles one function at a time per process); per-driver file locks keep the
  two processes from compiling a driver twice, marker files say which drivers the disk cache holds.
  ``URLK_DWCONV_PRECOMPILE=0`` turns the helper off.

The public functions take and return torch CPU tensors (zero-copy ``.numpy()`` views); float32, float64 and
bfloat16. bfloat16 tensors are passed as ``uint16`` views and converted in the kernels' plane copies
(:mod:`urlk_forecast.ops.cpu_bf16`): bfloat16 storage, float32 arithmetic, float64 grad-weight sums; the weight of
a bfloat16 call may be bfloat16 or float32 and its gradient comes back in the weight's dtype.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import itertools
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np
import torch

from urlk_forecast.ops import cpu_team
from urlk_forecast.ops._args import out_hw, pair
from urlk_forecast.ops.cpu_codegen import CB_LANES, CB_PIXELS, FWD_VARIANTS, GENERATOR_VERSION, generate_source

__all__ = [
    "SUPPORTED_DTYPES",
    "available",
    "import_generated",
    "supports",
    "forward",
    "grad_input",
    "grad_weight",
    "backward",
    "generate_source",
    "cache_dir",
    "warmup",
    "prefetch_backward",
]

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
#: weight dtypes accepted with each input dtype (a bfloat16 input may come with its float32 master weight)
_WEIGHT_DTYPES = {torch.float32: (torch.float32,), torch.float64: (torch.float64,),
                  torch.bfloat16: (torch.bfloat16, torch.float32)}

log = logging.getLogger("urlk_forecast.ops")

#: maps at most this wide (input and output) use the channel-blocked kernels, forward / backward
_CB_MAX_WIDTH_FWD = 12
_CB_MAX_WIDTH_BWD = 16
# aliases used by the tests
_FWD_VARIANTS = FWD_VARIANTS
_CB_PIXELS = CB_PIXELS

_lock = threading.RLock()
_module: ModuleType | None = None
_compiled: set[tuple[str, str]] = set()


# ------------------------------------------------------------------------------------------ loading, compiling
def _writable(path: str) -> bool:
    """True for a directory we can write and that only we can write (the kernel module there gets imported)."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        if hasattr(os, "getuid"):
            st = os.stat(path)
            if st.st_uid != os.getuid() or st.st_mode & 0o022:
                return False
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


def cache_dir() -> str:
    """Directory of the generated kernel module and numba's compiled cache (first writable candidate)."""
    candidates = []
    if os.environ.get("URLK_CACHE_DIR"):
        candidates.append(os.path.join(os.environ["URLK_CACHE_DIR"], "dwconv"))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates.append(os.path.join(xdg, "urlk_forecast", "dwconv"))
    uid = os.getuid() if hasattr(os, "getuid") else 0
    candidates.append(os.path.join(tempfile.gettempdir(), f"urlk_forecast-{uid}", "dwconv"))
    for path in candidates:
        if _writable(path):
            return path
    raise OSError(f"no writable cache directory for the dwconv kernels among {candidates}; set URLK_CACHE_DIR")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return None


def import_generated(name: str, src: str) -> ModuleType:
    """Module ``name`` of source ``src``: written to the cache directory (atomically; rewritten if stale or altered)
    and imported under that name (numba's disk cache keys its compiled code on the file)."""
    path = os.path.join(cache_dir(), name + ".py")
    if _read(path) != src:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".py")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(src)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _load() -> ModuleType:
    """Write (if needed) and import the generated kernel module; one instance per process."""
    global _module
    with _lock:
        if _module is not None:
            return _module
        src = generate_source()
        digest = hashlib.sha256((src + GENERATOR_VERSION).encode()).hexdigest()[:16]
        _module = import_generated(f"urlk_dwconv_cpu_{digest}", src)
        return _module


_available: bool | None = None


def available() -> bool:
    """Whether the kernel module can be generated and imported here (numba present, a writable cache dir).

    Checked once per process; the dispatcher falls back to torch (and logs why) when this is False.
    """
    global _available
    if _available is None:
        try:
            _load()
            _available = True
        except Exception as exc:  # noqa: BLE001 - any failure means "use torch"
            log.warning("dwconv2d: own CPU kernels unavailable (%s: %s)", type(exc).__name__, exc)
            _available = False
    return _available


def _no_ssa_compiler() -> type:
    from numba.core.compiler import CompilerBase, DefaultPassBuilder

    class NoSSACompiler(CompilerBase):
        """numba's nopython pipeline without its SSA reconstruction pass.

        That pass is superlinear in the number of re-assigned variables, and the generated kernels re-assign
        hundreds of accumulators: with it a kernel takes ~3x longer to compile. LLVM's mem2reg builds SSA form
        from numba's per-variable allocas anyway, so the machine code is the same.
        """

        def define_pipelines(self):  # type: ignore[no-untyped-def]
            self.state.flags.enable_ssa = False
            return [DefaultPassBuilder.define_nopython_pipeline(self.state)]

    NoSSACompiler.__module__ = __name__
    NoSSACompiler.__qualname__ = "NoSSACompiler"
    return NoSSACompiler


def __getattr__(name: str) -> Any:  # NoSSACompiler is built on first use: importing numba costs ~0.5 s
    if name == "NoSSACompiler":
        cls = _no_ssa_compiler()
        globals()["NoSSACompiler"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextlib.contextmanager
def _compile_ctx() -> Iterator[None]:
    """Enable LLVM's SLP vectorizer while our kernels compile (numba's default is off); restore afterwards."""
    from numba.core import config
    from numba.core.compiler_lock import global_compiler_lock

    with global_compiler_lock:
        old = config.SLP_VECTORIZE
        config.SLP_VECTORIZE = 1
        try:
            yield
        finally:
            config.SLP_VECTORIZE = old


#: a driver that takes longer than this to get ready is being compiled (a disk-cache load takes ~0.1-0.5 s)
_COMPILE_NOTICE_S = 2.0
#: then a line every this many seconds until it is done
_COMPILE_HEARTBEAT_S = 30.0


_compile_seconds = [0.0]
_compile_seconds_lock = threading.Lock()


def compile_seconds() -> float:
    """Seconds this process has spent getting drivers ready (compiling them, or loading them from the disk cache)."""
    return _compile_seconds[0]


@contextlib.contextmanager
def _compile_notice(name: str, dtype: torch.dtype, k: tuple[int, int]) -> Iterator[None]:
    """Log at INFO level when getting driver ``name`` ready takes longer than a disk-cache load (i.e. it compiles,
    once per machine), then every ``_COMPILE_HEARTBEAT_S`` seconds, and how long it took: a first run is otherwise
    silent for minutes when no progress bar is shown."""
    done = threading.Event()
    noticed = threading.Event()
    t0 = time.perf_counter()
    what = f"{name} ({str(dtype).replace('torch.', '')}) for K={k[0]}" + (f"x{k[1]}" if k[1] != k[0] else "")

    def watch() -> None:
        if done.wait(_COMPILE_NOTICE_S):
            return
        noticed.set()
        log.info("compiling depthwise-conv kernels %s (first run only, cached in %s)", what, cache_dir())
        while not done.wait(_COMPILE_HEARTBEAT_S):
            log.info("still compiling depthwise-conv kernels %s (%.0f s so far)", what, time.perf_counter() - t0)

    watcher = threading.Thread(target=watch, name="urlk-dwconv-compile-notice", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        with _compile_seconds_lock:
            _compile_seconds[0] += time.perf_counter() - t0
        if noticed.is_set():
            log.info("compiled depthwise-conv kernels %s in %.1f s", what, time.perf_counter() - t0)


def _compiled_fn(name: str, args: tuple[Any, ...], dtype: torch.dtype, k: tuple[int, int] = (0, 0)) -> Any:
    """The generated driver ``name``, compiled for ``args`` (or loaded from the disk cache) under
    :func:`_compile_ctx`. Drivers are always called with the same argument kinds for a dtype, so (name, dtype) is
    the compile key and the per-call cost is one set lookup. ``k`` (the kernel size of the call) only labels the
    log line of a compilation."""
    fn = getattr(_load(), name)
    key = (name, str(dtype))
    if key not in _compiled:
        import numba

        with _lock:
            if key not in _compiled:
                # the driver lock: when the helper process is compiling this driver, wait and load its result
                with _compile_notice(name, dtype, k), _driver_lock(name, dtype), _compile_ctx():
                    fn.compile(tuple(numba.typeof(a) for a in args))
                _mark_ready(name, dtype)
                _compiled.add(key)
    return fn


# ------------------------------------------------------------------------------- compiling ahead, in parallel
# A training step needs the backward drivers right after the forward ones. numba compiles one function at a time
# per process (its compiler lock), so while this process compiles a forward driver, a helper process compiles the
# matching backward driver into the shared disk cache; this process then loads it instead of compiling it. A
# per-driver file lock keeps the two from compiling the same driver twice, and a marker file per driver records
# that the disk cache holds it (later processes start no helper).
_PRECOMPILE_ENV = "URLK_DWCONV_PRECOMPILE"  # "0": no helper process
#: the helper exits after this long without a request
_HELPER_IDLE_S = 20.0
_helper: subprocess.Popen[bytes] | None = None
_requested: set[tuple[str, str]] = set()


def _module_dir() -> str:
    """Directory of the loaded kernel module (numba's cache, the driver locks and the ready markers live there)."""
    return os.path.dirname(os.path.abspath(_load().__file__ or ""))


def _driver_file(kind: str, name: str, dtype: torch.dtype) -> str:
    """Lock or marker file of a driver: named by the kernel module (its source hash), the driver, the dtype and
    numba's cache location (markers are only true for the cache they describe)."""
    where = hashlib.sha256(os.environ.get("NUMBA_CACHE_DIR", "").encode()).hexdigest()[:8]
    d = os.path.join(_module_dir(), kind)
    os.makedirs(d, mode=0o700, exist_ok=True)
    return os.path.join(d, f"{_load().__name__}-{name}-{str(dtype).replace('torch.', '')}-{where}")


@contextlib.contextmanager
def _driver_lock(name: str, dtype: torch.dtype) -> Iterator[None]:
    """Exclusive lock of one driver across processes (POSIX ``flock``; a no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process coordination (and no helper process)
        yield
        return
    with open(_driver_file("locks", name, dtype), "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mark_ready(name: str, dtype: torch.dtype) -> None:
    with contextlib.suppress(OSError):
        with open(_driver_file("ready", name, dtype), "wb"):
            pass


def _is_ready(name: str, dtype: torch.dtype) -> bool:
    return os.path.exists(_driver_file("ready", name, dtype))


def _precompile_enabled() -> bool:
    return os.environ.get(_PRECOMPILE_ENV, "1") not in ("", "0") and os.name == "posix" and available()


def _backward_driver(x: torch.Tensor, w: torch.Tensor, pad: Pad, dil: int | Sequence[int]) -> str:
    """Name of the driver :func:`backward` runs for this call."""
    H, W = x.shape[-2:]
    dh, dw = pair(dil, "dil", "cpu_kernels")
    Wo = out_hw(H, W, tuple(w.shape[-2:]), _pads(pad), (dh, dw))[1]
    cbp = _cb_pixels(W, Wo, backward=True)
    return f"cbbwd_{cbp}" if cbp else f"bwd{_dil_tag(dh)}_{_variant(H, W)}"


def prefetch_backward(x: torch.Tensor, w: torch.Tensor, pad: Pad, dil: int | Sequence[int]) -> None:
    """The forward of a call whose gradient will be needed: have the helper process compile the backward driver (and
    its forward sibling, whose code it shares) unless this process or the disk cache already has it."""
    if x.dtype not in SUPPORTED_DTYPES or not supports(x, w, pad, dil):
        return
    small = _small()
    if small is not None and (g := small.geometry(x, w, _pads(pad), pair(dil, "dil", "cpu_kernels"))) is not None:
        if small.takes_grad_weight(g, x.shape[0]):  # the small-map kernels run the whole backward
            return
    name = _backward_driver(x, w, pad, dil)
    key = (name, str(x.dtype))
    if key in _compiled or key in _requested or not _precompile_enabled() or _is_ready(name, x.dtype):
        return
    sibling = name.replace("bwd", "fwd")  # bwd_32x4 -> fwd_32x4, cbbwd_8 -> cbfwd_8: the same conv callee
    _requested.add(key)
    _request(f"{sibling} {name} {str(x.dtype).replace('torch.', '')}\n")


def _request(line: str) -> None:
    """Send one request to the helper process, starting it when none is running."""
    global _helper
    with _lock:
        for _attempt in range(2):
            if _helper is None or _helper.poll() is not None:
                _helper = _start_helper()
                if _helper is None:
                    return
            try:
                assert _helper.stdin is not None
                _helper.stdin.write(line.encode())
                _helper.stdin.flush()
                return
            except (BrokenPipeError, OSError):  # it had just exited (idle): start another
                _helper = None


def _start_helper() -> subprocess.Popen[bytes] | None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above urlk_forecast/
    env = dict(os.environ, OMP_NUM_THREADS="1", **{_PRECOMPILE_ENV: "0"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    try:
        return subprocess.Popen(
            [sys.executable, "-c", "from urlk_forecast.ops.cpu_kernels import _helper_main; _helper_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
            start_new_session=True)
    except OSError as exc:
        log.debug("dwconv2d: no helper process for compiling ahead (%s)", exc)
        return None


def _compile_driver(name: str, dtype: torch.dtype) -> None:
    """Compile driver ``name`` (e.g. ``bwd_32x4``, ``cbfwd_8``) for ``dtype`` the way a real call does: a tiny call
    with that register block forced, so the argument types (the compile signature) are those of real calls."""
    global _FORCE_VARIANT
    kind, _, block = name.partition("_")  # fwd, fwdd, bwd, bwdd, cbfwd, cbbwd
    x = torch.zeros(1, 1, 4, 4, dtype=dtype)
    w = torch.zeros(1, 1, 3, 3, dtype=dtype)
    dil = 2 if kind in ("fwdd", "bwdd") else 1
    with _lock:
        old, _FORCE_VARIANT = _FORCE_VARIANT, f"cb{block}" if kind.startswith("cb") else block
        try:
            if "fwd" in kind:
                forward(x, w, None, dil, dil)
            else:
                backward(x, torch.zeros_like(x), w, dil, dil)
        finally:
            _FORCE_VARIANT = old


def _helper_main() -> None:
    """The helper process: compile the drivers named on stdin (``"name name ... dtype"`` per line) in order; exit on
    end of input or after ``_HELPER_IDLE_S`` seconds without a request."""
    import select

    torch.set_num_threads(1)
    fd, buf = sys.stdin.fileno(), b""
    while True:
        while b"\n" not in buf:  # raw reads: a buffered reader could hold a request that select() never sees
            if not select.select([fd], [], [], _HELPER_IDLE_S)[0]:
                return
            chunk = os.read(fd, 4096)
            if not chunk:
                return
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        *names, dt = line.decode().split()
        for name in names:
            with contextlib.suppress(Exception):  # the parent compiles whatever did not work here
                _compile_driver(name, getattr(torch, dt))


#: below this many multiply-adds per thread, waking another thread costs more than it saves
_MIN_WORK_PER_THREAD = 300_000
_pool: ThreadPoolExecutor | None = None
_FORCE_VARIANT = ""  # tests/debugging: force one register block ("32x4", "16x8", ...) for every call
_pool_key: tuple[int, int] = (0, 0)


def _get_pool(workers: int) -> ThreadPoolExecutor:
    """Shared worker threads (recreated after a fork or when more are needed)."""
    global _pool, _pool_key
    with _lock:
        if _pool is None or _pool_key[0] != os.getpid() or _pool_key[1] < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="urlk-dwconv")
            _pool_key = (os.getpid(), workers)
        return _pool


def _threads_for(units: int, work: float) -> int:
    """Threads worth using: at most ``torch.get_num_threads()``, one per unit, one per ``_MIN_WORK_PER_THREAD``."""
    return max(1, min(torch.get_num_threads(), units, int(work // _MIN_WORK_PER_THREAD)))


def _run(name: str, head: tuple[Any, ...], units: int, threads: int, dtype: torch.dtype,
         k: tuple[int, int] = (0, 0)) -> None:
    """Run driver ``name(*head, lo, hi, zero)`` over ``units`` work units (planes or channels) on ``threads``
    threads (the kernels release the GIL).

    The units are cut into ~4 chunks per thread that the threads (the caller included) pull from a shared counter:
    on a busy machine a worker that is scheduled late just takes fewer chunks instead of stalling the call.
    """
    zero = np.float64(0) if dtype == torch.float64 else np.float32(0)
    fn = _compiled_fn(name, head + (0, units, zero), dtype, k)
    if threads <= 1:
        fn(*head, 0, units, zero)
        return
    chunks = min(units, 4 * threads)
    if cpu_team.enabled() and cpu_team.launch(fn, head + (0, units, zero), threads, chunks):
        return
    bounds = [units * k // chunks for k in range(chunks + 1)]
    counter = itertools.count()  # next() on it is atomic under the GIL

    def work() -> None:
        while (k := next(counter)) < chunks:
            fn(*head, bounds[k], bounds[k + 1], zero)

    futures = [_get_pool(threads - 1).submit(work) for _ in range(threads - 1)]
    try:
        work()
    finally:
        for f in futures:
            f.result()


def _cb_pixels(w: int, out_w: int, backward: bool) -> int:
    """Pixels per row group (8 or 4) when the channel-blocked kernels suit these maps, else 0.

    Small maps: spatial vectors would be mostly empty lanes and every plane pays loop overheads; 16 channels per
    vector fill the registers, and kernel taps are skipped exactly per output row. The price is a transpose in and
    out, so the forward switches at a smaller width than the backward (measured on AVX-512, see docs/ops.md).
    """
    if _FORCE_VARIANT.startswith("cb"):
        return int(_FORCE_VARIANT[2:])
    if _FORCE_VARIANT or max(w, out_w) > (_CB_MAX_WIDTH_BWD if backward else _CB_MAX_WIDTH_FWD):
        return 0
    return 8 if out_w > 4 else 4


def _cb_weights(w: torch.Tensor, flip: bool) -> np.ndarray:
    """(C, 1, KH, KW) -> flat (ceil(C/16), KH, KW, 16), zero-padded channels, optionally rotated by 180 degrees."""
    C, _, KH, KW = w.shape
    nb = -(-C // CB_LANES)
    wp = torch.zeros(nb * CB_LANES, KH, KW, dtype=_compute(w.dtype))
    wp[:C] = w.detach()[:, 0].flip(-2, -1) if flip else w.detach()[:, 0]
    return wp.view(nb, CB_LANES, KH, KW).permute(0, 2, 3, 1).contiguous().view(-1).numpy()


def _dil_tag(dh: int) -> str:
    """Suffix of the spatial drivers: ``fwd_``/``bwd_`` for unit row dilation, ``fwdd_``/``bwdd_`` for dilated rows
    (separate drivers, compiled only when used)."""
    return "d" if dh > 1 else ""


def _variant(out_h: int, out_w: int) -> str:
    """Register block (lanes x rows) for an output plane: lanes by width; 4 rows, or 8 for 16 lanes."""
    if _FORCE_VARIANT:
        return _FORCE_VARIANT
    lanes = 32 if out_w > 16 else 16 if out_w > 8 else 8 if out_w > 4 else 4
    rows = 8 if lanes == 16 and out_h >= 8 else 4  # 16 lanes: 8 rows give 8 independent FMA chains
    assert (lanes, rows) in FWD_VARIANTS
    return f"{lanes}x{rows}"


# ----------------------------------------------------------------------------------------------- torch layer
Pad = int | Sequence[int]


def _pads(pad: Pad) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) from an int, an (h, w) pair or a 4-tuple."""
    if isinstance(pad, int):
        return pad, pad, pad, pad
    p = tuple(int(v) for v in pad)
    if len(p) == 2:
        return p[0], p[0], p[1], p[1]
    if len(p) == 4:
        return p  # type: ignore[return-value]
    raise ValueError(f"pad must be an int, an (h, w) pair or (top, bottom, left, right), got {pad!r}")


def supports(x: torch.Tensor, w: torch.Tensor, pad: Pad = 0, dil: int | Sequence[int] = 1) -> bool:
    """Whether these kernels handle the call (CPU, float32/float64/bfloat16 with a weight of the same dtype, or a
    bfloat16 input with a float32 weight; depthwise weight, 0 <= pad <= (K-1)*d)."""
    if x.device.type != "cpu" or w.device.type != "cpu" or x.dim() != 4 or w.dim() != 4:
        return False
    if x.dtype not in SUPPORTED_DTYPES or w.dtype not in _WEIGHT_DTYPES[x.dtype]:
        return False
    if w.shape[1] != 1 or w.shape[0] != x.shape[1]:
        return False
    try:
        t, b, l, r = _pads(pad)
        dh, dw = pair(dil, "dil", "cpu_kernels")
    except (TypeError, ValueError):
        return False
    kh, kw = w.shape[-2:]
    if dh < 1 or dw < 1 or kh < 1 or kw < 1:
        return False
    if min(t, b, l, r) < 0 or max(t, b) > (kh - 1) * dh or max(l, r) > (kw - 1) * dw:
        return False
    return min(out_hw(x.shape[2], x.shape[3], (kh, kw), (t, b, l, r), (dh, dw))) > 0


def _check(x: torch.Tensor, w: torch.Tensor, pad: Pad, dil: int | Sequence[int], what: str) -> None:
    if not supports(x, w, pad, dil):
        raise ValueError(
            f"cpu_kernels.{what}: unsupported call (input {x.dtype} {tuple(x.shape)} on {x.device}, weight {w.dtype} "
            f"{tuple(w.shape)}, pad {pad!r}, dil {dil!r}); need CPU float32/float64/bfloat16 (weight: same "
            "dtype, or float32 for bfloat16), weight (C, 1, KH, KW), "
            "0 <= pad <= (K-1)*dilation and a non-empty output"
        )


_NP = {torch.float32: np.float32, torch.float64: np.float64}
_small_mod: ModuleType | None = None
#: forward calls already checked, by (shapes, dtypes, devices, pad, dil): their small-map geometry or None (the
#: checks and the geometry cost ~10 us of a 0.15 ms call on the forecaster's 8 x 12 maps)
_small_calls: dict[tuple, Any] = {}


def _small() -> ModuleType | None:
    """:mod:`urlk_forecast.ops.cpu_small` when its kernels are switched on (``URLK_DWCONV_SMALL``), else None."""
    global _small_mod
    if _small_mod is None:
        from urlk_forecast.ops import cpu_small

        _small_mod = cpu_small
    return _small_mod if _small_mod.enabled() else None


def _compute(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic (scratch) dtype of a storage dtype: float32 for bfloat16, else the dtype itself."""
    return torch.float32 if dtype == torch.bfloat16 else dtype


def _np(t: torch.Tensor) -> np.ndarray:
    """Zero-copy numpy view of a contiguous tensor: bfloat16 as its ``uint16`` bits (numba has no bfloat16)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _poison() -> bool:
    """URLK_DWCONV_POISON=1 (tests): outputs and the kernels' output scratch start as NaN, so an element a kernel
    fails to write shows up."""
    return os.environ.get("URLK_DWCONV_POISON", "0") not in ("", "0")


def _empty(shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Output buffer (NaN-filled in poison mode)."""
    if _poison():
        return torch.full(shape, float("nan"), dtype=dtype or like.dtype)
    return torch.empty(shape, dtype=dtype or like.dtype)


def _checked_small(small: ModuleType, x: torch.Tensor, w: torch.Tensor, pad: Pad,
                   dil: int | Sequence[int]) -> Any:
    """The small-map geometry of a forward call (None: not theirs), from ``_small_calls`` after the first time;
    the first time the call is also checked (``ValueError`` for an unsupported one, nothing remembered)."""
    try:
        key = (x.shape, w.shape, x.dtype, w.dtype, x.device.type, w.device.type,
               pad if isinstance(pad, (int, tuple)) else tuple(pad),
               dil if isinstance(dil, (int, tuple)) else tuple(dil))
        g = _small_calls.get(key, False)
    except TypeError:  # an unhashable pad or dil: no memo
        return None
    if g is False:
        _check(x, w, pad, dil, "forward")
        g = small.geometry(x, w, _pads(pad), pair(dil, "dil", "cpu_kernels"))
        if len(_small_calls) > 1024:
            _small_calls.clear()
        _small_calls[key] = g
    return g


def forward(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pad: Pad, dil: int | Sequence[int],
            out: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise conv2d, stride 1: x (B, C, H, W), w (C, 1, KH, KW) -> (B, C, Ho, Wo), NCHW contiguous.

    ``pad``: int, (h, w) or (top, bottom, left, right); ``dil``: int or (h, w). ``out`` (optional, contiguous,
    right shape and dtype) receives the result.
    """
    small = _small()
    if small is not None and out is None and x.is_contiguous():  # the small-map kernels' calls, checked once
        g = _checked_small(small, x, w, pad, dil)
        if g is not None:
            return small.forward(x.detach(), w, bias, g)
    _check(x, w, pad, dil, "forward")
    t, b, l, r = _pads(pad)
    dh, dw = pair(dil, "dil", "cpu_kernels")
    x = x.detach().contiguous()
    B, C, H, W = x.shape
    KH, KW = w.shape[-2:]
    Ho, Wo = out_hw(H, W, (KH, KW), (t, b, l, r), (dh, dw))
    if out is not None and (tuple(out.shape) != (B, C, Ho, Wo) or out.dtype != x.dtype or not out.is_contiguous()):
        raise ValueError(f"cpu_kernels.forward: out must be a contiguous {x.dtype} tensor of shape {(B, C, Ho, Wo)}")
    if small is not None and (g := small.geometry(x, w, (t, b, l, r), (dh, dw))) is not None:
        return small.forward(x, w, bias, g, out)
    y = _empty((B, C, Ho, Wo), x) if out is None else out
    if y.numel() == 0:
        return y
    has_bias = bias is not None
    cdt = _compute(x.dtype)
    bv = bias.detach().to(cdt).contiguous().numpy() if bias is not None else np.zeros(C, _NP[cdt])
    work = float(B * C * Ho * Wo * KH * KW)
    cbp = _cb_pixels(W, Wo, backward=False)
    if cbp:
        units = B * -(-C // CB_LANES)
        head = (_np(x.view(B * C, H, W)), _cb_weights(w, False), bv, has_bias, _np(y.view(B * C, Ho, Wo)), C,
                KH, KW, t, l, dh, dw, _poison())
        _run(f"cbfwd_{cbp}", head, units, _threads_for(units, work), x.dtype, (KH, KW))
        return y
    wt = w.detach().to(cdt).transpose(-1, -2).contiguous().view(-1).numpy()  # [c][kw][kh]: the kernels' loop order
    head = (_np(x.view(B * C, H, W)), wt, bv, has_bias, _np(y.view(B * C, Ho, Wo)), C, KH, KW, t, l, dh, dw,
            _poison())
    _run(f"fwd{_dil_tag(dh)}_{_variant(Ho, Wo)}", head, B * C, _threads_for(B * C, work), x.dtype, (KH, KW))
    return y


def backward(x: torch.Tensor, gy: torch.Tensor, w: torch.Tensor, pad: Pad, dil: int | Sequence[int],
             need_input: bool = True, need_weight: bool = True, small_maps: bool = True
             ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients (gx, gw) of :func:`forward` in one sweep over the planes (gx: NCHW contiguous; gw: (C, 1, KH, KW),
    accumulated over the batch in float64: deterministic, and the same float32 per-plane sums whatever the thread
    count, so results agree across thread counts up to float64 rounding of their sum). Small maps go to
    :mod:`urlk_forecast.ops.cpu_small` (two passes, one per gradient) unless ``small_maps`` is False."""
    _check(x, w, pad, dil, "backward")
    t, b, l, r = _pads(pad)
    dh, dw = pair(dil, "dil", "cpu_kernels")
    x = x.detach().contiguous()
    gy = gy.detach().to(x.dtype).contiguous()
    B, C, H, W = x.shape
    KH, KW = w.shape[-2:]
    Ho, Wo = out_hw(H, W, (KH, KW), (t, b, l, r), (dh, dw))
    if tuple(gy.shape) != (B, C, Ho, Wo):
        raise ValueError(f"cpu_kernels.backward: gy has shape {tuple(gy.shape)}, expected {(B, C, Ho, Wo)}")
    small = _small() if small_maps else None
    if small is not None and (g := small.geometry(x, w, (t, b, l, r), (dh, dw))) is not None:
        sgx = sgw = None
        if need_input:
            sgx = small.forward(gy, w, None, small.flipped(g), flip=True)
        if need_weight:
            sgw = small.grad_weight(x, gy, w, g)
        # what the small-map kernels do not take (grad-input at other widths, grad-weights whose partial sums
        # would not fit in registers) runs on the general kernels
        gen_x, gen_w = need_input and sgx is None, need_weight and sgw is None
        if gen_x or gen_w:
            ox, ow = _backward_general(x, gy, w, pad, dil, need_input=gen_x, need_weight=gen_w, small_maps=False)
            sgx, sgw = (ox if gen_x else sgx), (ow if gen_w else sgw)
        return sgx, sgw
    gx = _empty((B, C, H, W), x) if need_input else None
    work = float(B * C * Ho * Wo * KH * KW) * (int(need_input) + int(need_weight))
    cbp = _cb_pixels(W, Wo, backward=True)
    if cbp:
        return _backward_cb(x, gy, w, gx, (t, l), (dh, dw), need_input, need_weight, cbp, work)
    threads = _threads_for(B * C, work)
    # grad-weight accumulates per channel over the batch when the channels alone keep the threads busy; otherwise
    # per plane, and the partial sums are reduced here (both in float64)
    by_channel = threads == 1 or C >= 2 * threads
    gwa = _empty((C if by_channel else B * C, KH * KW), x, torch.float64) if need_weight else None
    if B * C and (need_input or need_weight):
        wtflip = w.detach().to(_compute(x.dtype)).flip(-2, -1).transpose(-1, -2).contiguous().view(-1).numpy()
        dummy = np.zeros((1, 1, 1), _np(x).dtype)
        head = (_np(x.view(B * C, H, W)), _np(gy.view(B * C, Ho, Wo)), wtflip, need_input, need_weight,
                _np(gx.view(B * C, H, W)) if gx is not None else dummy,
                gwa.view(-1).numpy() if gwa is not None else np.zeros(1), C, KH, KW, t, l, dh, dw, by_channel,
                _poison())
        _run(f"bwd{_dil_tag(dh)}_{_variant(H, W)}", head, C if by_channel else B * C, threads, x.dtype, (KH, KW))
    gw = None
    if gwa is not None:
        if not by_channel:
            gwa = gwa.view(B, C, KH * KW).sum(0)
        gw = gwa.to(w.dtype).view(C, 1, KH, KW)
    return gx, gw


#: :func:`backward` itself, for its own call on the general kernels (tests may wrap the module attribute)
_backward_general = backward


def _backward_cb(x: torch.Tensor, gy: torch.Tensor, w: torch.Tensor, gx: torch.Tensor | None,
                 tl: tuple[int, int], dil: tuple[int, int], need_input: bool, need_weight: bool, cbp: int,
                 work: float) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """:func:`backward` with the channel-blocked kernels (units: blocks of 16 channels, or (batch, block))."""
    B, C, H, W = x.shape
    Ho, Wo = gy.shape[-2:]
    KH, KW = w.shape[-2:]
    nb = -(-C // CB_LANES)
    threads = _threads_for(B * nb, work)
    by_channel = threads == 1 or nb >= 2 * threads
    rows = nb * CB_LANES
    gwa = _empty((rows, KH * KW) if by_channel else (B, rows, KH * KW), x, torch.float64) if need_weight else None
    if B * C and (need_input or need_weight):
        dummy = np.zeros((1, 1, 1), _np(x).dtype)
        head = (_np(x.view(B * C, H, W)), _np(gy.view(B * C, Ho, Wo)), _cb_weights(w, True), need_input,
                need_weight, _np(gx.view(B * C, H, W)) if gx is not None else dummy,
                gwa.view(-1).numpy() if gwa is not None else np.zeros(1), C, KH, KW, tl[0], tl[1], dil[0], dil[1],
                by_channel, _poison())
        units = nb if by_channel else B * nb
        _run(f"cbbwd_{cbp}", head, units, min(threads, units), x.dtype, (KH, KW))
    gw = None
    if gwa is not None:
        gwa = gwa[:C] if by_channel else gwa[:, :C].sum(0)
        gw = gwa.to(w.dtype).reshape(C, 1, KH, KW)
    return gx, gw


def grad_input(gy: torch.Tensor, w: torch.Tensor, pad: Pad, dil: int | Sequence[int],
               in_hw: int | Sequence[int]) -> torch.Tensor:
    """Gradient w.r.t. the input, (B, C, *in_hw)."""
    H, W = pair(in_hw, "in_hw", "cpu_kernels")
    x = torch.empty(gy.shape[0], gy.shape[1], H, W, dtype=gy.dtype)  # shape carrier only, never read
    gx, _ = backward(x, gy, w, pad, dil, need_input=True, need_weight=False)
    assert gx is not None
    return gx


def grad_weight(x: torch.Tensor, gy: torch.Tensor, k: int | Sequence[int], pad: Pad,
                dil: int | Sequence[int]) -> torch.Tensor:
    """Gradient w.r.t. the weight, (C, 1, KH, KW)."""
    KH, KW = pair(k, "k", "cpu_kernels")
    w = torch.empty(x.shape[1], 1, KH, KW, dtype=x.dtype)  # shape carrier only, never read
    _, gw = backward(x, gy, w, pad, dil, need_input=False, need_weight=True)
    assert gw is not None
    return gw


def warmup(dtypes: Sequence[torch.dtype] = (torch.float32,)) -> None:
    """Compile (or load from the disk cache) every kernel driver for the given dtypes (the spatial ones with and
    without row dilation, the channel-blocked ones)."""
    for dt in dtypes:
        for name in [f"{k}_{V}x{R}" for V, R in FWD_VARIANTS for k in ("fwd", "bwd", "fwdd", "bwdd")] + [
                f"cb{k}_{P}" for P in CB_PIXELS for k in ("fwd", "bwd")]:
            _compile_driver(name, dt)
