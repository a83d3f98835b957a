"""Run a numba kernel on torch's own OpenMP threads (libgomp's ``GOMP_parallel``, called through ctypes).

The own depthwise kernels used to share a call with a Python thread pool. On the forecaster's small maps a call takes
0.1-0.5 ms, and it nearly always comes right after a torch op, whose OpenMP worker keeps spinning on the other core
for a while after the op: the pool thread then competes with that spinner (and has to be woken, ~30-100 us), and
two threads ran slower than one. Measured on the 2-core dev machine (2026-12-07, session 14, 32 x 80 x 8 x 12
forward, medians of 300, each call after an ``F.conv2d``): K=13 one thread 0.71 ms, pool 0.74, torch's team 0.44;
K=7 d=2 0.29 / 0.33 / 0.24.

Here the call is handed to ``GOMP_parallel`` of the libgomp torch itself runs on, so the spinning workers pick it up
at once. The kernel is wrapped in a numba ``cfunc`` (``void(int64*)``) that unpacks its arguments from a table of
integers (array addresses and lengths, scalars) and either calls the kernel once per thread (kernels that share
their planes through :mod:`urlk_forecast.ops.cpu_atomic`) or pulls chunks ``(lo, hi)`` of the work from an atomic
counter (the ``*(head, lo, hi, zero)`` drivers). The wrappers are generated as files in the kernels' cache directory
and cached on disk by numba like the kernels. ctypes releases the GIL for the call, and ``GOMP_parallel`` returns
when every thread is done.

Used only where torch's parallel backend is OpenMP and its libgomp is loaded in this process (Linux wheels), and
not in a child forked from this process (libgomp is not fork-safe: a child's parallel region waits forever for its
parent's threads; torch's own ops hang there the same way unless the child sets one thread). The thread pool runs
instead; ``URLK_DWCONV_TEAM=0`` switches the team off too, which benchmarks use for side-by-side runs.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import threading
from typing import Any

import numpy as np
import torch

__all__ = ["ENV", "call", "enabled", "launch"]

ENV = "URLK_DWCONV_TEAM"
log = logging.getLogger(__name__)
_lock = threading.RLock()
_gomp: Any = None  # the GOMP_parallel function, False when unavailable
_wrappers: dict[tuple, int] = {}
_forked = [False]


def _after_fork_in_child() -> None:
    # libgomp is not fork-safe: a child's first parallel region waits forever for the parent's pool threads (torch's
    # own ops hang there too, unless the child sets one thread); the child uses the thread pool instead
    _forked[0] = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def _find_gomp() -> Any:
    """``GOMP_parallel`` of the libgomp torch runs its ops on, or False."""
    if "OpenMP" not in torch.__config__.parallel_info().split("ATen parallel backend:")[-1]:
        return False
    paths = []
    try:
        with open("/proc/self/maps", encoding="utf-8") as fh:
            paths = sorted({ln.split()[-1] for ln in fh if "libgomp" in ln and ln.rstrip().endswith((".so", ".so.1"))})
    except OSError:
        return False
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    paths.sort(key=lambda p: not p.startswith(torch_lib))  # torch's own copy first
    if not paths:
        return False
    try:
        fn = ctypes.CDLL(paths[0]).GOMP_parallel
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    fn.restype = None
    return fn


def enabled() -> bool:
    """Whether calls go to torch's OpenMP threads (``URLK_DWCONV_TEAM`` not ``0`` and libgomp found)."""
    global _gomp
    if _forked[0] or os.environ.get(ENV, "1") in ("0", ""):
        return False
    if _gomp is None:
        with _lock:
            if _gomp is None:
                _gomp = _find_gomp()
                if not _gomp:
                    log.debug("dwconv2d: torch's libgomp not found; kernels share calls with a thread pool")
    return bool(_gomp)


def _arg_line(i: int, arg: Any, k: int) -> tuple[str, int]:
    """Source unpacking argument ``i`` from table slot ``k`` and the number of slots it takes."""
    if isinstance(arg, np.ndarray):
        if not arg.flags.c_contiguous or arg.ndim == 0:
            raise TypeError("cpu_team: array arguments must be C-contiguous")
        shape = "".join(f"tab[{k + 1 + d}], " for d in range(arg.ndim))
        return f"a{i} = carray(_ptr(tab[{k}], np.{arg.dtype.name}), ({shape}))", 1 + arg.ndim
    if isinstance(arg, (bool, np.bool_)):
        return f"a{i} = tab[{k}] != 0", 1
    if isinstance(arg, np.uint64):
        return f"a{i} = np.uint64(tab[{k}])", 1
    if isinstance(arg, (int, np.integer)):
        return f"a{i} = tab[{k}]", 1
    if isinstance(arg, np.floating) and float(arg) == 0.0:  # the drivers' typed ``zero``
        return f"a{i} = np.{arg.dtype.name}(0)", 1
    raise TypeError(f"cpu_team: unsupported kernel argument {type(arg).__name__}")


def _wrapper_source(module: str, name: str, args: tuple[Any, ...], chunked: bool) -> str:
    """Source of the wrapper module; ``args`` without ``(lo, hi)`` when ``chunked`` (the wrapper supplies them)."""
    lines, k = [], 0
    for i, a in enumerate(args):
        line, n = _arg_line(i, a, k)
        lines.append("    " + line)
        k += n
    names = [f"a{i}" for i in range(len(args))]
    if chunked:  # then (state address, units, chunks) follow the arguments in the table
        call = ", ".join(names[:-1] + ["units * c // chunks", "units * (c + 1) // chunks", names[-1]])
        body = [f"st = carray(_ptr(tab[{k}], np.int64), (32,))", f"units = tab[{k + 1}]", f"chunks = tab[{k + 2}]",
                "while True:", "    c = fetch_add(st, COUNT, 1)", "    if c >= chunks:", "        break",
                f"    kernel({call})"]
        k += 3
    else:
        body = [f"kernel({', '.join(names)})"]
    return "\n".join([
        '"""Generated by urlk_forecast.ops.cpu_team: one kernel call on an OpenMP thread."""',
        "import numpy as np",
        "from numba import carray, cfunc, types",
        "from urlk_forecast.ops.cpu_atomic import COUNT, fetch_add, pointer as _ptr",
        f"from {module} import {name} as kernel",
        "",
        "",
        "@cfunc(types.void(types.CPointer(types.int64)), cache=True)",
        "def team(data):",
        f"    tab = carray(data, ({k},))",
        *lines,
        *("    " + ln for ln in body),
        "",
    ])


def _wrapper(fn: Any, args: tuple[Any, ...], chunked: bool) -> int:
    """The address of the cfunc wrapping kernel ``fn`` (a compiled numba dispatcher) for arguments like ``args``."""
    key = (id(fn), chunked) + tuple((a.dtype.str, a.ndim, a.flags.c_contiguous) if isinstance(a, np.ndarray)
                                    else type(a) for a in args)
    addr = _wrappers.get(key)
    if addr is not None:
        return addr
    py = getattr(fn, "py_func", None)
    if py is None:  # not a numba dispatcher (a test's Python wrapper): the caller runs it
        return 0
    from urlk_forecast.ops import cpu_kernels

    with _lock:
        if key in _wrappers:
            return _wrappers[key]
        try:
            src = _wrapper_source(py.__module__, py.__name__, args, chunked)
        except TypeError as exc:  # not expressible in the table: the caller uses its thread pool
            log.debug("dwconv2d: %s not on torch's threads (%s)", py.__name__, exc)
            _wrappers[key] = 0
            return 0
        with cpu_kernels._compile_ctx():  # the cfunc compiles (or loads) as its module is imported
            mod = cpu_kernels.import_generated("urlk_dwconv_team_" + hashlib.sha256(src.encode()).hexdigest()[:16],
                                               src)
        _wrappers[key] = addr = mod.team.address
        return addr


def _layout(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """What the table layout of ``args`` depends on: each argument's kind (and an array's dimensions)."""
    return tuple(("t",) if isinstance(a, torch.Tensor) else ("a", a.ndim) if isinstance(a, np.ndarray)
                 else type(a) for a in args)


def _table(args: tuple[Any, ...], extra: tuple[int, ...]) -> np.ndarray:
    """The int64 table of ``args`` followed by ``extra`` (through the packer of their layout)."""
    key = _layout(args)
    pack = _packers.get(key)
    if pack is None:
        pack = _packers[key] = _packer(args)
    return pack(args, extra)


def launch(fn: Any, args: tuple[Any, ...], threads: int, chunks: int = 0) -> bool:
    """``fn(*args)`` on ``threads`` of torch's OpenMP threads (the caller one of them), returning when all are done.

    ``chunks == 0``: every thread calls ``fn(*args)`` (the kernel shares out its own work). ``chunks > 0``: ``args``
    ends ``(0, units, zero)`` and the threads call ``fn(*head, lo, hi, zero)`` on ``chunks`` consecutive pieces of
    ``units``, pulled from an atomic counter. The caller checks :func:`enabled` first; ``fn`` must already be
    compiled for these argument types. False (nothing run) for arguments the wrapper cannot take (a non-contiguous
    array): the caller then runs the call itself.
    """
    if chunks:
        units = int(args[-2])
        args = args[:-3] + args[-1:]
        st = np.zeros(32, np.int64)
        tab = _table(args, (st.__array_interface__["data"][0], units, chunks))
    else:
        tab = _table(args, ())
    addr = _wrapper(fn, args, chunks > 0)
    if not addr:
        return False
    _gomp(addr, tab.__array_interface__["data"][0], threads, 0)
    return True


#: numba's view of a tensor dtype (bfloat16 as its uint16 bits, as :func:`urlk_forecast.ops.cpu_kernels._np`)
_NP_OF = {torch.float32: np.float32, torch.float64: np.float64, torch.bfloat16: np.uint16, torch.int64: np.int64}
_calls: dict[Any, tuple[int, Any]] = {}
_packers: dict[tuple[Any, ...], Any] = {}
_direct: dict[int, Any] = {}


def _sample(a: Any) -> Any:
    return np.empty(1, _NP_OF[a.dtype]) if isinstance(a, torch.Tensor) else a


def _packer(args: tuple[Any, ...]) -> Any:
    """``pack(args, extra=())``: the int64 table of arguments laid out like ``args`` (array: address and shape;
    tensor, 1-d: address and length; flag or integer: its value; ``np.uint64``: the same 64 bits; the float ``zero``:
    0), then ``extra``; generated for that layout (a generic loop cost ~6 us a call, this ~1.5)."""
    items = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            items += [f"a[{i}].data_ptr()", f"a[{i}].shape[0]"]
        elif isinstance(a, np.ndarray):
            items += [f"a[{i}].__array_interface__['data'][0]"] + [f"a[{i}].shape[{d}]" for d in range(a.ndim)]
        elif isinstance(a, np.uint64):
            items.append(f"_signed(a[{i}])")
        elif isinstance(a, np.floating):
            items.append("0")
        else:
            items.append(f"int(a[{i}])")
    src = f"def pack(a, extra=()):\n    return np.array([{', '.join(items)}, *extra], np.int64)\n"
    scope: dict[str, Any] = {"np": np, "_signed": _signed}
    exec(src, scope)  # noqa: S102 - source built above from fixed templates
    return scope["pack"]


def _signed(v: np.uint64) -> int:
    u = int(v)
    return u - (1 << 64) if u >= 1 << 63 else u


def call(fn: Any, args: tuple[Any, ...], threads: int, key: Any = None) -> bool:
    """``fn(*args)`` on ``threads`` threads like :func:`launch` (the kernel shares out its own work), or on the
    calling thread alone for ``threads == 1``, with 1-d contiguous CPU tensors among ``args`` passed by address:
    no numpy views and no numba dispatch on the way. False (nothing run) when several threads are asked for and
    :func:`enabled` is False, or for arguments the wrapper cannot take: the caller then calls ``fn`` itself.
    ``fn`` must already be compiled for these argument types. ``key``: the caller's name for this layout of
    arguments (every call with that key must pass the same kinds of arguments, tensors 1-d and contiguous), which
    saves working it out per call (~3 us)."""
    if threads > 1 and not enabled():
        return False
    if key is None:
        key = (id(fn),) + tuple((a.dtype, a.dim(), a.is_contiguous()) if isinstance(a, torch.Tensor)
                                else (a.dtype, a.ndim) if isinstance(a, np.ndarray) else type(a) for a in args)
    entry = _calls.get(key)
    if entry is None:
        if any(isinstance(a, torch.Tensor) and (a.dim() != 1 or not a.is_contiguous() or a.dtype not in _NP_OF)
               for a in args):
            return False
        addr = _wrapper(fn, tuple(_sample(a) for a in args), False)
        entry = _calls[key] = (addr, _packer(args) if addr else None)
    addr, pack = entry
    if not addr:
        return False
    tab = pack(args)
    if threads > 1:
        _gomp(addr, tab.__array_interface__["data"][0], threads, 0)
    else:
        direct = _direct.get(addr)
        if direct is None:
            direct = _direct[addr] = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(addr)
        direct(tab.__array_interface__["data"][0])
    return True
