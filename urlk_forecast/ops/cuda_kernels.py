"""Depthwise large-kernel convolution on CUDA: numba.cuda kernels, no build step at install time.

Three kernels, each generated from a template and compiled once per (kernel size, dilation, dtypes, blocking):

* ``forward``     y[n, h, w]  = sum_ij x[n, h + i*dh - ph, w + j*dw - pw] * w[c, i, j] (+ bias[c])
* ``grad_input``  the same kernel with the weights flipped and the offsets of the transposed problem
* ``grad_weight`` gw[c, i, j] = sum_{b,h,w} gy[b, c, h, w] * x[b, c, h + i*dh - ph, w + j*dw - pw], one block per
  (channel, batch chunk) writing an fp32 partial sum; the chunks are summed by torch (deterministic, no atomics).

Design: a thread block owns one output tile of one or more (batch, channel) planes. It copies the input tile with its
halo (zero outside the image) and the K*K weights into shared memory once, converted to float32. Each thread then
computes Q rows x P columns of outputs: per kernel row it keeps the K weights and one input row segment of P+K-1
values in registers (sliding window), so every shared-memory load feeds several FMAs. The inner loops over the kernel
columns and the P outputs are unrolled by generating the kernel source with the constants written in: numba has no
unroll pragma, and scalar locals (not local arrays) are what NVVM keeps in registers. Kernel rows whose input row
lies entirely in the zero padding are skipped, which halves the work of large kernels on small feature maps.

All arithmetic and accumulation is float32. fp16 tensors are read as numba float16; bf16 is not a type numba can
take from torch, so bf16 tensors are viewed as int16 and converted bit-wise (bf16 -> fp32 is ``bits << 16``;
fp32 -> bf16 rounds to nearest even, NaN kept). Pointers and sizes are passed as raw integers (kernels are compiled
for an explicit signature), so a launch costs no array wrapping and no type dispatch; kernels run on torch's current
stream.

Simulator: with ``NUMBA_ENABLE_CUDASIM=1`` set before numba is imported, ``available()`` is True and the very same
generated kernels run in numba's CUDA simulator on CPU tensors (slow: for tests at small sizes only).

Importing this module is cheap and never fails: numba.cuda is imported on first use.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from ._args import out_hw, pair
from .cuda_codegen import fwd_source, gw_source

__all__ = ["available", "forward", "grad_input", "grad_weight", "supports", "simulator_enabled", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_KIND = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
_MAX_SMEM = 48 * 1024  # bytes of dynamic shared memory a block may use without an opt-in attribute

_lock = threading.RLock()
_log = logging.getLogger(__name__)


def simulator_enabled() -> bool:
    """True when numba's CUDA simulator was requested (``NUMBA_ENABLE_CUDASIM=1`` before numba was imported)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


@functools.lru_cache(maxsize=1)
def _cuda():
    """Import numba.cuda lazily (it takes ~1 s and loads the CUDA driver)."""
    if not hasattr(np, "row_stack"):
        # numba-cuda <= 0.30 registers an overload for np.row_stack unconditionally when its target loads; NumPy 2.5
        # removed that alias of np.vstack, which breaks every kernel compilation. Restore the alias (same function).
        np.row_stack = np.vstack
    from numba import cuda

    return cuda


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """True when the kernels can run: a CUDA device usable by torch and numba, or the CUDA simulator."""
    if simulator_enabled():
        try:
            _cuda()
            return True
        except Exception:  # noqa: BLE001 - any import problem means "not available"
            return False
    try:
        if not torch.cuda.is_available():
            return False
        cuda = _cuda()
        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def supports(x: torch.Tensor, w: torch.Tensor, dil=1) -> bool:
    """Whether these kernels handle this input, weight and dilation (device, dtypes, shapes, shared-memory fit).

    The dispatcher's test before calling :func:`forward` & co.; a False answer means "use F.conv2d".
    """
    if x.dim() != 4 or w.dim() != 4 or w.shape[1] != 1 or w.shape[0] != x.shape[1]:
        return False
    if x.dtype not in _KIND or w.dtype not in _KIND:
        return False
    if simulator_enabled():
        if x.device.type != "cpu" or w.device != x.device:
            return False
    elif not (x.is_cuda and w.device == x.device):
        return False
    dh, dw = pair(dil, "dil", "cuda_kernels")
    KH, KW = int(w.shape[2]), int(w.shape[3])
    try:  # the largest tile any plane needs: 64 x 64 outputs (configs shrink tiles to fit, or raise)
        fwd_config(64, 64, KH, KW, dh, dw, 1)
        gw_config(1, 1, 64, 64, KH, KW, dh, dw)
    except ValueError:
        return False
    return available()


# --------------------------------------------------------------------------------------------------------------------
# compilation (cached per specialisation)
# --------------------------------------------------------------------------------------------------------------------

def _bf16_helpers(cuda, sim: bool):
    """bf16 <-> fp32 converters on int16 bit patterns (device functions, or plain Python in the simulator)."""
    if sim:
        def bf2f(v):
            return np.array([np.int32(v) << 16], dtype=np.int32).view(np.float32)[0]

        def f2bf(v):
            u = int(np.array([v], dtype=np.float32).view(np.int32)[0])
            if v != v:
                return np.int16(0x7FC0)
            return np.int16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)

        return bf2f, f2bf

    libdevice = cuda.libdevice

    @cuda.jit(device=True, inline=True)
    def bf2f(v):
        return libdevice.int_as_float(np.int32(np.int32(v) << 16))

    @cuda.jit(device=True, inline=True)
    def f2bf(v):
        if v != v:
            return np.int16(0x7FC0)
        u = libdevice.float_as_int(v)
        return np.int16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)

    return bf2f, f2bf


@functools.lru_cache(maxsize=1)
def _namespace() -> dict:
    cuda = _cuda()
    bf2f, f2bf = _bf16_helpers(cuda, simulator_enabled())
    from numba import float32

    return {"cuda": cuda, "np": np, "float32": float32, "_bf2f": bf2f, "_f2bf": f2bf}


def _numba_type(kind: str):
    from numba import types

    return {"f32": types.float32, "f16": types.float16, "bf16": types.int16}[kind]


def _env_ints(name: str) -> tuple[int, ...] | None:
    v = os.environ.get(name)
    if not v:
        return None
    try:
        return tuple(int(t) for t in v.split(","))
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={v!r}: expected comma-separated integers") from exc


# launch bounds: at most 256 threads a block, >= 2 blocks an SM (so <= 128 registers a thread); tuning overrides
_FWD_BOUNDS: tuple[int, int] = _env_ints("URLK_CUDA_FWD_BOUNDS") or (256, 2)  # type: ignore[assignment]
_GW_BOUNDS: tuple[int, int] = _env_ints("URLK_CUDA_GW_BOUNDS") or (256, 2)  # type: ignore[assignment]


def cache_dir() -> str | None:
    """Directory holding generated kernel sources and numba's on-disk cache of their machine code (None: off).

    ``URLK_CUDA_CACHE`` overrides it (``off`` disables); default ``$XDG_CACHE_HOME/urlk_forecast/cuda_kernels``.
    """
    d = os.environ.get("URLK_CUDA_CACHE")
    if d is not None and d.strip().lower() in ("", "0", "off", "none", "false"):
        return None
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "urlk_forecast", "cuda_kernels")
    try:
        os.makedirs(d, exist_ok=True)
    except OSError:
        return None
    return d if os.access(d, os.W_OK) else None


_HEADER = (
    "# generated by urlk_forecast.ops.cuda_kernels - do not edit (regenerated when missing)\n"
    "from urlk_forecast.ops.cuda_kernels import _namespace\n"
    "globals().update(_namespace())\n\n"
)


def _load_function(src: str, name: str):
    """Return (python function, cacheable): from a file in :func:`cache_dir` when possible, else via exec."""
    d = None if simulator_enabled() else cache_dir()
    if d is not None:
        digest = hashlib.sha1(src.encode()).hexdigest()[:20]
        modname = f"urlk_dwconv_{name}_{digest}"
        path = os.path.join(d, modname + ".py")
        try:
            if not os.path.exists(path):
                tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
                with open(tmp, "w") as fh:
                    fh.write(_HEADER + src)
                os.replace(tmp, path)
            spec = importlib.util.spec_from_file_location(modname, path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)  # type: ignore[union-attr]
            return mod.kern, True
        except OSError:
            pass
    ns = dict(_namespace())
    exec(compile(src, f"<urlk_dwconv_{name}>", "exec"), ns)  # noqa: S102 - generated from integer constants only
    return ns["kern"], False


def _compile(src: str, argkinds: list[str], name: str, bounds: tuple[int, int]):
    """Compile generated source for an explicit signature (raw pointers and int64), cached on disk when possible."""
    src = src + f"# launch_bounds={bounds}\n"
    fn, cacheable = _load_function(src, name)
    cuda = _cuda()
    if simulator_enabled():
        return cuda.jit(fn)
    from numba import types

    sig = types.void(*[types.int64 if a == "i64" else types.CPointer(_numba_type(a)) for a in argkinds])
    try:
        return cuda.jit(sig, cache=cacheable, launch_bounds=bounds)(fn)
    except TypeError:  # numba-cuda < 0.13 has no launch_bounds
        return cuda.jit(sig, cache=cacheable)(fn)
    except Exception as exc:  # noqa: BLE001 - a broken disk cache must not stop the op: compile without it
        if not cacheable:
            raise
        _log.debug("cuda_kernels: compiling %s without the disk cache (%s)", name, exc)
        return cuda.jit(sig, cache=False, launch_bounds=bounds)(fn)


_KERNELS: dict[tuple, object] = {}


def _spec(op: str, key: tuple) -> tuple[str, list[str], tuple[int, int]]:
    """Source, argument kinds and launch bounds of kernel ``op`` ("fwd" or "gw") specialised by ``key``."""
    if op == "fwd":
        KH, KW, DH, DW, P, Q, xkind, wkind = key
        return (fwd_source(KH, KW, DH, DW, P, Q, xkind, wkind), [xkind, wkind, wkind, xkind] + ["i64"] * 14,
                _FWD_BOUNDS)
    KH, KW, DH, DW, PJ, TWG, xkind, gkind = key
    return gw_source(KH, KW, DH, DW, PJ, TWG, xkind, gkind), [xkind, gkind, "f32"] + ["i64"] * 15, _GW_BOUNDS


def _kernel(op: str, key: tuple):
    """The compiled kernel for (op, key): from memory, numba's disk cache, or compiled now (seconds)."""
    k = _KERNELS.get((op, key))
    if k is None:
        with _lock:
            k = _KERNELS.get((op, key))
            if k is None:
                src, kinds, bounds = _spec(op, key)
                k = _compile(src, kinds, op, bounds)
                _KERNELS[(op, key)] = k
    return k


def _fwd_kernel(KH, KW, DH, DW, P, Q, xkind, wkind):
    return _kernel("fwd", (KH, KW, DH, DW, P, Q, xkind, wkind))


def _gw_kernel(KH, KW, DH, DW, PJ, TWG, xkind, gkind):
    return _kernel("gw", (KH, KW, DH, DW, PJ, TWG, xkind, gkind))


# --------------------------------------------------------------------------------------------------------------------
# launch configuration
# --------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FwdConfig:
    """Blocking of the forward kernel: P columns x Q rows per thread, tile TH x TW, NZ planes per block."""

    P: int
    Q: int
    TH: int
    TW: int
    NZ: int
    S: int


def _pad_stride(cols: int, lanes_x: int, P: int, Q: int) -> int:
    """Row stride >= cols of the shared input tile that keeps the warp's first seg loads on distinct banks."""
    best, best_deg = cols, 1 << 30
    for s in range(cols, cols + 32):
        banks: dict[int, int] = {}
        for lane in range(32):
            tx, ty = lane % lanes_x, lane // lanes_x
            b = (ty * Q * s + tx * P) % 32
            banks[b] = banks.get(b, 0) + 1
        deg = max(banks.values())
        if deg < best_deg:
            best, best_deg = s, deg
        if deg == 1:
            break
    return best


@functools.lru_cache(maxsize=4096)
def fwd_config(Ho: int, Wo: int, KH: int, KW: int, DH: int, DW: int, N: int) -> FwdConfig:
    """Pick the forward blocking for an output plane Ho x Wo and kernel KH x KW (overridable: URLK_CUDA_FWD)."""
    sim = simulator_enabled()
    env = _env_ints("URLK_CUDA_FWD")  # P,Q,THmax,TWmax,threads
    if env is not None:
        P, Q, thmax, twmax, target = env
    else:
        P = 8 if Wo > 4 else 4
        Q = 2 if KW >= 5 else 4
        thmax, twmax, target = 64, 32, 128
        if sim:
            thmax, twmax, target = 8, 16, 16
    TW = min(twmax, -(-Wo // P) * P)
    TH = min(thmax, -(-Ho // Q) * Q)
    TX, TY = TW // P, TH // Q
    R = TH + (KH - 1) * DH
    cols = TW + (KW - 1) * DW
    S = _pad_stride(cols, TX, P, Q)
    per_plane = 4 * (KH * KW + R * S)
    if per_plane > _MAX_SMEM:  # shrink the tile until it fits
        while per_plane > _MAX_SMEM and TH > Q:
            TH -= Q
            R = TH + (KH - 1) * DH
            per_plane = 4 * (KH * KW + R * S)
        TY = TH // Q
    if per_plane > _MAX_SMEM:
        raise ValueError(f"kernel {KH}x{KW} with dilation ({DH}, {DW}) needs more shared memory than a block has")
    NZ = max(1, min(target // max(1, TX * TY), _MAX_SMEM // per_plane, N, 64 // max(1, TX * TY) * 16))
    while TX * TY * NZ > _FWD_BOUNDS[0] and NZ > 1:
        NZ -= 1
    if TX * TY * NZ > _FWD_BOUNDS[0]:
        raise ValueError(f"URLK_CUDA_FWD: {TX * TY} threads a block exceed {_FWD_BOUNDS[0]}")
    return FwdConfig(P, Q, TH, TW, NZ, S)


@dataclass(frozen=True)
class GwConfig:
    """Blocking of the grad-weight kernel: PJ weights per thread, tile TH x TWG, NB batch planes per pass."""

    PJ: int
    TWG: int
    TH: int
    NB: int
    nsplit: int
    S: int
    chunks: int


@functools.lru_cache(maxsize=1)
def _sm_count() -> int:
    if simulator_enabled() or not torch.cuda.is_available():
        return 1
    return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count


@functools.lru_cache(maxsize=4096)
def gw_config(B: int, C: int, Ho: int, Wo: int, KH: int, KW: int, DH: int, DW: int) -> GwConfig:
    """Pick the grad-weight blocking (overridable: URLK_CUDA_GW=pjmax,twg,threads,blocks_per_sm)."""
    sim = simulator_enabled()
    env = _env_ints("URLK_CUDA_GW")
    if env is not None:
        pjmax, twg, target, per_sm = env
    else:
        pjmax, twg, target, per_sm = 16, 0, 256, 8
        if sim:
            target = 24
    if KH > _GW_BOUNDS[0]:
        raise ValueError(f"kernel height {KH} exceeds {_GW_BOUNDS[0]} (grad_weight)")
    nstrip = max(-(-KW // pjmax), 1)
    if KH * nstrip > _GW_BOUNDS[0]:
        nstrip = _GW_BOUNDS[0] // KH
    PJ = -(-KW // nstrip)
    ncombo = KH * nstrip
    target = min(target, _GW_BOUNDS[0])
    if twg == 0:
        twg = 32 if Wo > 16 else (16 if Wo > 8 else 8)
    TWG = twg
    TH = min(32, Ho) if not sim else min(8, Ho)
    nsplit = max(1, target // ncombo)
    NB = max(1, min(B, -(-nsplit // TH)))
    cols = TWG + (KW - 1) * DW
    S = cols + (1 if cols % 2 == 0 else 0)

    def smem(nb: int, th: int) -> int:
        return 4 * max(nb * (th * TWG + (th + (KH - 1) * DH) * S), nsplit * ncombo * PJ)

    while smem(NB, TH) > _MAX_SMEM and NB > 1:
        NB -= 1
    while smem(NB, TH) > _MAX_SMEM and TH > 1:
        TH -= 1
    while smem(NB, TH) > _MAX_SMEM and nsplit > 1:
        nsplit -= 1
    if smem(NB, TH) > _MAX_SMEM:
        raise ValueError(f"kernel {KH}x{KW} with dilation ({DH}, {DW}) needs more shared memory than a block has")
    want = max(1, (per_sm * _sm_count() + C - 1) // C)
    chunks = max(1, min(want, -(-B // NB)))
    return GwConfig(PJ, TWG, TH, NB, nsplit, S, chunks)


# --------------------------------------------------------------------------------------------------------------------
# launching
# --------------------------------------------------------------------------------------------------------------------

_STREAMS: dict[tuple[int, int], object] = {}
_FAST: dict[tuple[int, int], object] = {}
_fast_ok = [os.environ.get("URLK_CUDA_LAUNCH", "fast").strip().lower() != "numba"]


@functools.lru_cache(maxsize=1)
def _device_count() -> int:
    return torch.cuda.device_count()


def _stream_for(dev: int):
    ptr = torch.cuda.current_stream(dev).cuda_stream
    s = _STREAMS.get((dev, ptr))
    if s is None:
        s = _cuda().external_stream(ptr)
        _STREAMS[(dev, ptr)] = s
    return s


def _arg(t: torch.Tensor):
    """Kernel argument for a contiguous tensor: its device pointer, or a numpy view in the simulator."""
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    if simulator_enabled():
        return t.detach().reshape(-1).numpy()
    return t.data_ptr()


class _FastLauncher:
    """Launch a compiled numba kernel through cuda.core with cached launch configs.

    numba's own ``kernel[grid, block, stream, smem](*args)`` path re-validates the configuration and converts every
    argument on each call (tens of microseconds); our arguments are plain 64-bit integers, so they go straight through.
    """

    def __init__(self, disp) -> None:
        from cuda.core import LaunchConfig, launch

        kobj = next(iter(disp.overloads.values()))
        self.kernel = kobj._codelibrary.get_cufunc().kernel
        self.launch = launch
        self.LaunchConfig = LaunchConfig
        self.configs: dict[tuple, object] = {}

    def __call__(self, grid, block, stream, smem, args) -> None:
        key = (grid, block, smem)
        cfg = self.configs.get(key)
        if cfg is None:
            cfg = self.configs[key] = self.LaunchConfig(grid=grid, block=block, shmem_size=smem)
        self.launch(stream, cfg, self.kernel, *args)


def _launch(kern, grid, block, like: torch.Tensor, smem: int, args) -> None:
    """Launch ``kern`` on ``like``'s device and torch's current stream there (simulator: synchronously)."""
    if simulator_enabled():
        kern[grid, block, 0, smem](*args)
        return
    dev = like.device.index if like.device.index is not None else torch.cuda.current_device()
    if _device_count() > 1:
        with _cuda().gpus[dev]:
            _launch_on(kern, grid, block, dev, smem, args)
    else:
        _launch_on(kern, grid, block, dev, smem, args)


def _launch_on(kern, grid, block, dev: int, smem: int, args) -> None:
    stream = _stream_for(dev)
    if _fast_ok[0]:
        key = (id(kern), dev)
        fast = _FAST.get(key)
        try:
            if fast is None:
                fast = _FAST[key] = _FastLauncher(kern)
            fast(grid, block, stream, smem, args)
            return
        except Exception as exc:  # noqa: BLE001 - numba/cuda.core internals moved: use the public path from now on
            _fast_ok[0] = False
            _log.debug("cuda_kernels: fast launch unavailable (%s); using numba's launch path", exc)
    kern[grid, block, stream, smem](*args)


def _check_tensor(t: torch.Tensor, what: str, name: str) -> None:
    if t.dim() != 4:
        raise ValueError(f"{what}: {name} must be a 4-D (B, C, H, W) tensor, got shape {tuple(t.shape)}")
    if t.dtype not in _KIND:
        raise TypeError(f"{what}: {name} dtype {t.dtype} not supported (float32, float16, bfloat16)")
    if not simulator_enabled() and not t.is_cuda:
        raise ValueError(f"{what}: {name} must be a CUDA tensor, got {t.device} (the CUDA simulator is not enabled)")
    if not available():
        raise RuntimeError(f"{what}: no usable CUDA device for numba (and NUMBA_ENABLE_CUDASIM is not set)")


def _check_pair(x: torch.Tensor, w: torch.Tensor, what: str) -> None:
    _check_tensor(x, what, "input")
    if w.dim() != 4 or w.shape[1] != 1 or w.shape[0] != x.shape[1]:
        raise ValueError(f"{what}: weight must be (C, 1, KH, KW) with C={x.shape[1]}, got {tuple(w.shape)}")
    if w.dtype not in _KIND:
        raise TypeError(f"{what}: weight dtype {w.dtype} not supported (float32, float16, bfloat16)")
    if w.device != x.device:
        raise ValueError(f"{what}: input on {x.device} but weight on {w.device}")


def _run_fwd(x, w, bias, out, offh, offw, dil, flip) -> None:
    B, C, Hi, Wi = x.shape
    _, _, Ho, Wo = out.shape
    KH, KW = w.shape[-2:]
    DH, DW = dil
    N = B * C
    if N == 0 or Ho <= 0 or Wo <= 0:
        return
    cfg = fwd_config(Ho, Wo, KH, KW, DH, DW, N)
    kern = _fwd_kernel(KH, KW, DH, DW, cfg.P, cfg.Q, _KIND[x.dtype], _KIND[w.dtype])
    TX, TY = cfg.TW // cfg.P, cfg.TH // cfg.Q
    ntw = -(-Wo // cfg.TW)
    nth = -(-Ho // cfg.TH)
    R = cfg.TH + (KH - 1) * DH
    smem = 4 * cfg.NZ * (KH * KW + R * cfg.S)
    grid = (-(-N // cfg.NZ), ntw * nth, 1)
    if grid[1] > 65535:
        raise ValueError(f"output plane {Ho}x{Wo} too large for one launch ({grid[1]} tiles)")
    hasb = 1 if bias is not None else 0
    b = bias if bias is not None else w
    args = (_arg(x), _arg(w), _arg(b), _arg(out), N, C, Hi, Wi, Ho, Wo, offh, offw, cfg.TH, cfg.TW, cfg.S, ntw, hasb,
            1 if flip else 0)
    _launch(kern, grid, (TX, TY, cfg.NZ), x, smem, args)


def forward(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pad, dil,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise conv2d, stride 1: x (B, C, H, W), w (C, 1, KH, KW), pad/dil (h, w) -> y in x's dtype.

    ``out`` (optional, contiguous, right shape and dtype) receives the result; tests pass a NaN-poisoned buffer.
    """
    _check_pair(x, w, "cuda_kernels.forward")
    ph, pw = pair(pad, "pad", "cuda_kernels")
    dh, dw = pair(dil, "dil", "cuda_kernels")
    if dh < 1 or dw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"cuda_kernels.forward: need dilation >= 1 and padding >= 0, got pad={pad}, dil={dil}")
    x = x.contiguous()
    w = w.contiguous()
    B, C, H, W = x.shape
    KH, KW = w.shape[-2:]
    Ho, Wo = out_hw(H, W, (KH, KW), (ph, ph, pw, pw), (dh, dw))
    if Ho <= 0 or Wo <= 0:
        raise ValueError(f"cuda_kernels.forward: empty output for input {H}x{W}, kernel {KH}x{KW}, "
                         f"pad {pad}, dil {dil}")
    if bias is not None:
        if bias.shape != (C,):
            raise ValueError(f"cuda_kernels.forward: bias must have shape ({C},), got {tuple(bias.shape)}")
        bias = bias.to(w.dtype).contiguous()
    y = _out(out, (B, C, Ho, Wo), x, "forward")
    _run_fwd(x, w, bias, y, -ph, -pw, (dh, dw), False)
    return y


def _out(out, shape, like: torch.Tensor, what: str) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    if tuple(out.shape) != tuple(shape) or out.dtype != like.dtype or not out.is_contiguous():
        raise ValueError(f"cuda_kernels.{what}: out must be a contiguous {like.dtype} tensor of shape {shape}, "
                         f"got {out.dtype} {tuple(out.shape)}")
    return out


def _check_gy_shape(what: str, gy_hw: tuple[int, int], in_hw: tuple[int, int], k: tuple[int, int],
                    pad: tuple[int, int], dil: tuple[int, int]) -> None:
    """ValueError unless gy (Ho, Wo) is the forward's output size for the input (H, W), kernel, padding, dilation."""
    if tuple(gy_hw) != out_hw(*in_hw, k, (pad[0], pad[0], pad[1], pad[1]), dil):
        raise ValueError(f"cuda_kernels.{what}: gy {gy_hw[0]}x{gy_hw[1]} does not match input {in_hw[0]}x{in_hw[1]} "
                         f"with kernel {k[0]}x{k[1]}, pad {pad}, dil {dil}")


def grad_input(gy: torch.Tensor, w: torch.Tensor, pad, dil, in_hw, out: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient of the forward w.r.t. its input: correlation of gy with the flipped kernel, shape (B, C, *in_hw)."""
    _check_pair(gy, w, "cuda_kernels.grad_input")
    ph, pw = pair(pad, "pad", "cuda_kernels")
    dh, dw = pair(dil, "dil", "cuda_kernels")
    H, W = pair(in_hw, "in_hw", "cuda_kernels")
    gy = gy.contiguous()
    w = w.contiguous()
    B, C, Ho, Wo = gy.shape
    KH, KW = w.shape[-2:]
    _check_gy_shape("grad_input", (Ho, Wo), (H, W), (KH, KW), (ph, pw), (dh, dw))
    gx = _out(out, (B, C, H, W), gy, "grad_input")
    _run_fwd(gy, w, None, gx, ph - (KH - 1) * dh, pw - (KW - 1) * dw, (dh, dw), True)
    return gx


def grad_weight(x: torch.Tensor, gy: torch.Tensor, k, pad, dil, partial_out: torch.Tensor | None = None
                ) -> torch.Tensor:
    """Gradient w.r.t. the weight, (C, 1, KH, KW) in x's dtype, accumulated in float32.

    ``partial_out`` (optional fp32 (chunks, C, KH*KW) buffer, see :func:`gw_config`) receives the per-chunk partial
    sums before they are added; tests pass a NaN-poisoned buffer to catch unwritten elements.
    """
    KH, KW = pair(k, "k", "cuda_kernels")
    ph, pw = pair(pad, "pad", "cuda_kernels")
    dh, dw = pair(dil, "dil", "cuda_kernels")
    if x.dim() != 4 or gy.dim() != 4 or x.shape[:2] != gy.shape[:2]:
        raise ValueError(f"cuda_kernels.grad_weight: x {tuple(x.shape)} and gy {tuple(gy.shape)} must be (B, C, ., .)")
    _check_tensor(x, "cuda_kernels.grad_weight", "input")
    _check_tensor(gy, "cuda_kernels.grad_weight", "gy")
    if gy.device != x.device:
        raise ValueError(f"cuda_kernels.grad_weight: input on {x.device} but gy on {gy.device}")
    if KH < 1 or KW < 1 or dh < 1 or dw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"cuda_kernels.grad_weight: bad kernel {k}, pad {pad} or dil {dil}")
    x = x.contiguous()
    gy = gy.contiguous()
    B, C, H, W = x.shape
    Ho, Wo = gy.shape[-2:]
    _check_gy_shape("grad_weight", (Ho, Wo), (H, W), (KH, KW), (ph, pw), (dh, dw))
    if B == 0 or C == 0:
        return torch.zeros((C, 1, KH, KW), dtype=x.dtype, device=x.device)
    cfg = gw_config(B, C, Ho, Wo, KH, KW, dh, dw)
    part = partial_out
    shape = (cfg.chunks, C, KH * KW)
    if part is None:
        part = torch.empty(shape, dtype=torch.float32, device=x.device)
    elif tuple(part.shape) != shape or part.dtype != torch.float32 or not part.is_contiguous():
        raise ValueError(f"cuda_kernels.grad_weight: partial_out must be contiguous float32 {shape}")
    kern = _gw_kernel(KH, KW, dh, dw, cfg.PJ, cfg.TWG, _KIND[x.dtype], _KIND[gy.dtype])
    nstrip = -(-KW // cfg.PJ)
    ncombo = KH * nstrip
    nthr = ncombo * cfg.nsplit
    ntw = -(-Wo // cfg.TWG)
    nth = -(-Ho // cfg.TH)
    bpc = -(-B // cfg.chunks)
    R = cfg.TH + (KH - 1) * dh
    smem = 4 * max(cfg.NB * (cfg.TH * cfg.TWG + R * cfg.S), cfg.nsplit * ncombo * cfg.PJ)
    args = (_arg(x), _arg(gy), _arg(part), B, C, H, W, Ho, Wo, -ph, -pw, cfg.TH, ntw, nth, bpc, cfg.NB, cfg.S,
            cfg.nsplit)
    _launch(kern, (C, cfg.chunks, 1), (nthr, 1, 1), x, smem, args)
    gw = part.sum(0) if cfg.chunks > 1 else part[0]
    return gw.view(C, 1, KH, KW).to(x.dtype)



# --------------------------------------------------------------------------------------------------------------------
# ahead-of-time compilation (parallel, into numba's disk cache)
# --------------------------------------------------------------------------------------------------------------------

def kernel_keys(shape: tuple[int, int, int, int], k, pad, dil, dtype: torch.dtype, backward: bool = True
                ) -> list[tuple[str, tuple]]:
    """The kernels a forward (and backward) of a depthwise conv with this input shape needs."""
    B, C, H, W = shape
    KH, KW = pair(k, "k", "cuda_kernels")
    ph, pw = pair(pad, "pad", "cuda_kernels")
    DH, DW = pair(dil, "dil", "cuda_kernels")
    kind = _KIND[dtype]
    Ho, Wo = out_hw(H, W, (KH, KW), (ph, ph, pw, pw), (DH, DW))
    cfg = fwd_config(Ho, Wo, KH, KW, DH, DW, B * C)
    keys = [("fwd", (KH, KW, DH, DW, cfg.P, cfg.Q, kind, kind))]
    if backward:
        cfg = fwd_config(H, W, KH, KW, DH, DW, B * C)
        keys.append(("fwd", (KH, KW, DH, DW, cfg.P, cfg.Q, kind, kind)))
        g = gw_config(B, C, Ho, Wo, KH, KW, DH, DW)
        keys.append(("gw", (KH, KW, DH, DW, g.PJ, g.TWG, kind, kind)))
    return list(dict.fromkeys(keys))


def _precompile_worker(item: tuple[str, tuple]) -> float:
    t = time.perf_counter()
    _kernel(*item)
    return time.perf_counter() - t


def precompile(keys: list[tuple[str, tuple]], processes: int | None = None) -> dict[tuple, float]:
    """Compile kernels ahead of use, in parallel processes that fill numba's disk cache; returns seconds per kernel.

    numba compiles one kernel in a few seconds on one core; a training run or a benchmark sweep over many kernel
    sizes pays that once per machine instead of once per process and size.
    """
    keys = [k for k in dict.fromkeys(keys) if k not in _KERNELS]
    if not keys:
        return {}
    if simulator_enabled() or cache_dir() is None:
        return {k: _precompile_worker(k) for k in keys}
    for op, key in keys:  # write the sources first: numba's cache is keyed on the file's time stamp
        src, _, bounds = _spec(op, key)
        _load_function(src + f"# launch_bounds={bounds}\n", op)
    n = processes or min(len(keys), max(1, (os.cpu_count() or 2) - 1))
    times: dict[tuple, float] = {}
    if n > 1 and len(keys) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(n) as pool:
            times = dict(zip(keys, pool.map(_precompile_worker, keys, chunksize=1)))
    for item in keys:  # load (from the disk cache when the workers filled it)
        t = time.perf_counter()
        _kernel(*item)
        times.setdefault(item, time.perf_counter() - t)
    return times
