"""Path choice and autograd for the depthwise convolution: own CPU kernels, own CUDA kernels, or torch.

Per call, :func:`choose` picks

* ``"cpu"``  - :mod:`urlk_forecast.ops.cpu_kernels` for CPU tensors (float32/float64/bfloat16, the latter stored
  as bfloat16 and computed in float32 inside the kernels; float16 is cast to float32 and back). Under ``auto``
  each direction of the call (forward, grad-input, grad-weight) runs the own kernels or torch (oneDNN), whichever
  :func:`urlk_forecast.ops.autotune.choose` measured faster for that call's shape on this machine (a small table
  cached per machine; ``URLK_DWCONV_TUNE=0``: a fixed rule, oneDNN's forward on maps up to 12x12, own elsewhere);
* ``"cuda"`` - :mod:`urlk_forecast.ops.cuda_kernels` for CUDA tensors when its ``available()`` says so;
* ``"torch"`` - ``F.conv2d(..., groups=C)`` for everything else (other devices, padding beyond ``(K-1)*dilation``,
  float64 on CUDA, a failed kernel import). Each distinct reason is logged once at DEBUG level on the
  ``urlk_forecast.ops`` logger.

Overrides, strongest first: :func:`use_backend` (a context manager, thread-local), then the environment variable
``URLK_DWCONV`` = ``auto`` | ``own`` | ``torch`` (read on every call, so a benchmark can flip it). ``own`` makes an
unsupported call an error instead of a silent fallback, which is what bisecting needs.

A CPU call the dispatcher has run before (same backend, shapes, dtypes, padding, dilation, gradients needed,
threads, tuning mode, and the autocast dtype when ``torch.autocast("cpu")`` is on) is one dictionary lookup in
:data:`urlk_forecast.ops.autotune.plans` and then its plan: ``F.conv2d`` itself when torch runs every direction
the call needs, the own forward alone when no gradient is needed, :class:`_OwnForwardTorchGrads` when only the
forward is own, else :class:`_OwnConv` with each direction fixed; under autocast the plan first casts as
``F.conv2d``'s autocast policy does. Under ``auto`` a kernel that reaches past a small map is first cropped to the
taps that touch it (:mod:`urlk_forecast.ops.reach`) when the table's timings say the smaller call is faster
(:func:`cropped_form`), and the plan is that of the smaller call. A dispatcher that re-decided every call cost
~8-12 us of Python per call, 5-10 % of the forecaster's 0.1-0.3 ms calls; the plan lookup costs ~1-2 us.

The autograd functions with own gradients are first-order (``once_differentiable``): double backward through the
own kernels is not implemented; use ``URLK_DWCONV=torch`` for that.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from collections.abc import Callable, Iterator
from functools import partial
from types import ModuleType

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from urlk_forecast.ops import autotune, cpu_kernels, cpu_paths, reach

__all__ = ["BACKENDS", "choose", "run", "use_backend", "get_backend", "Pads"]

log = logging.getLogger("urlk_forecast.ops")

BACKENDS = ("auto", "own", "torch")
Pads = tuple[int, int, int, int]  # top, bottom, left, right

#: the calls plans are kept for at most (a process with ever new shapes forgets them all and starts again)
MAX_PLANS = 4096


class _ThreadState(threading.local):
    """The backend :func:`use_backend` forces in this thread (a class default: reading it unset costs nothing)."""

    backend: str | None = None


_local = _ThreadState()
_logged: set[str] = set()
_logged_lock = threading.Lock()
_HALF = (torch.float16, torch.bfloat16)


def _log_once(key: str, msg: str) -> None:
    with _logged_lock:
        if key in _logged:
            return
        _logged.add(key)
    log.debug(msg)


def get_backend() -> str:
    """The backend in force for this thread: the innermost :func:`use_backend`, else ``URLK_DWCONV``, else auto."""
    forced = _local.backend
    if forced is not None:
        return forced
    env = autotune.env_get("URLK_DWCONV")
    if env is None:
        return "auto"
    env = env.strip().lower() or "auto"
    if env not in BACKENDS:
        raise ValueError(f"URLK_DWCONV must be one of {', '.join(BACKENDS)}, got {env!r}")
    return env


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force ``"own"``, ``"torch"`` or ``"auto"`` for depthwise convs run by this thread inside the block."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    old = _local.backend
    _local.backend = name
    try:
        yield
    finally:
        _local.backend = old


def _cuda_module() -> ModuleType | None:
    """:mod:`urlk_forecast.ops.cuda_kernels`, or None when it cannot be imported (an optional backend)."""
    try:  # through sys.modules (not the package attribute), so a broken/blocked import is seen every time
        cuda_kernels = importlib.import_module("urlk_forecast.ops.cuda_kernels")
    except Exception as exc:  # noqa: BLE001 - a broken optional backend must not break the op
        _log_once("cuda-import", f"dwconv2d: CUDA kernels unavailable ({type(exc).__name__}: {exc}); using torch")
        return None
    return cuda_kernels


def _own_reason(x: torch.Tensor, w: torch.Tensor, pads: Pads, dil: tuple[int, int]) -> tuple[str | None, str]:
    """(path, reason): path "cpu"/"cuda" when the own kernels take the call, else None and why not."""
    kh, kw = w.shape[-2:]
    t, b, l, r = pads
    if min(pads) < 0 or max(t, b) > (kh - 1) * dil[0] or max(l, r) > (kw - 1) * dil[1]:
        return None, f"padding {pads} outside [0, (K-1)*dilation] for kernel {kh}x{kw}, dilation {dil}"
    if x.device.type == "cpu":
        if x.dtype not in cpu_kernels.SUPPORTED_DTYPES + _HALF:
            return None, f"dtype {x.dtype} on CPU"
        if not cpu_kernels.available():
            return None, "own CPU kernels unavailable (see the warning logged above)"
        return "cpu", ""
    if x.device.type == "cuda":
        ck = _cuda_module()
        if ck is None:
            return None, "CUDA kernels failed to import"
        try:
            ok = ck.available()
        except Exception as exc:  # noqa: BLE001
            return None, f"cuda_kernels.available() raised {type(exc).__name__}: {exc}"
        if not ok:
            return None, "cuda_kernels.available() is False"
        try:
            sup = ck.supports(x, w, dil)
        except Exception as exc:  # noqa: BLE001
            return None, f"cuda_kernels.supports() raised {type(exc).__name__}: {exc}"
        if not sup:
            return None, f"cuda_kernels does not support {x.dtype} input, {w.dtype} weight {tuple(w.shape)}, dil {dil}"
        return "cuda", ""  # asymmetric padding is applied with F.pad first (see run)
    return None, f"device {x.device.type}"


def choose(x: torch.Tensor, w: torch.Tensor, pads: Pads, dil: tuple[int, int]) -> str:
    """Return ``"cpu"``, ``"cuda"`` or ``"torch"`` for this call (logs the first fallback of each kind)."""
    return _choose(x, w, pads, dil, get_backend())


def _choose(x: torch.Tensor, w: torch.Tensor, pads: Pads, dil: tuple[int, int], backend: str) -> str:
    if backend == "torch":
        return "torch"
    path, reason = _own_reason(x, w, pads, dil)
    if path is not None:
        return path
    if backend == "own":
        raise NotImplementedError(f"dwconv2d: URLK_DWCONV=own but the own kernels cannot run this call: {reason}")
    _log_once(reason, f"dwconv2d: falling back to F.conv2d ({reason})")
    return "torch"


# ------------------------------------------------------------------------------------------------ autograd
class _CPUKernels:
    """The CPU side of :class:`_OwnConv`: each direction (forward, grad-input, grad-weight) runs the own kernels
    or torch (oneDNN), as ``impls`` says (decided per call shape in :func:`run`; a direction missing there is
    asked of :func:`urlk_forecast.ops.autotune.choose`, or runs own under ``backend="own"``)."""

    def __init__(self, backend: str, impls: dict[str, str]) -> None:
        self.backend, self.impls = backend, impls

    def _impl(self, direction: str, x: torch.Tensor, w: torch.Tensor, pads: Pads, dil: tuple[int, int]) -> str:
        impl = self.impls.get(direction)
        if impl is None:
            impl = self.impls[direction] = "own" if self.backend == "own" else autotune.choose(
                direction, x, w, pads, dil)
        return impl

    def forward(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pads: Pads,
                dil: tuple[int, int]) -> torch.Tensor:
        return cpu_paths.compute("forward", self._impl("forward", x, w, pads, dil), x, w, None, pads, dil, bias)

    def backward(self, x: torch.Tensor, gy: torch.Tensor, w: torch.Tensor, pads: Pads, dil: tuple[int, int],
                 need_x: bool, need_w: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        own_x = need_x and self._impl("grad_input", x, w, pads, dil) == "own"
        own_w = need_w and self._impl("grad_weight", x, w, pads, dil) == "own"
        gx = gw = None
        if own_x or own_w:  # one sweep over the planes when both gradients are on the own kernels
            gx, gw = cpu_kernels.backward(x, gy, w, pads, dil, need_input=own_x, need_weight=own_w)
        if need_x and not own_x:
            gx = cpu_paths.compute("grad_input", "torch", x, w, gy, pads, dil)
        if need_w and not own_w:
            gw = cpu_paths.compute("grad_weight", "torch", x, w, gy, pads, dil)
        return gx, gw

    @staticmethod
    def grad_bias(gy: torch.Tensor) -> torch.Tensor:
        if gy.dtype == torch.float32:  # accumulated in float64, like the weight gradient
            return gy.sum((0, 2, 3), dtype=torch.float64).to(gy.dtype)
        return gy.sum((0, 2, 3))


class _CUDAKernels:
    """The own CUDA kernels behind :class:`_OwnConv` (symmetric padding: ``run`` pads asymmetric cases first)."""

    def __init__(self, cuda_kernels: ModuleType) -> None:
        self.ck = cuda_kernels

    def forward(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pads: Pads,
                dil: tuple[int, int]) -> torch.Tensor:
        return self.ck.forward(x, w, bias, (pads[0], pads[2]), dil)

    def backward(self, x: torch.Tensor, gy: torch.Tensor, w: torch.Tensor, pads: Pads, dil: tuple[int, int],
                 need_x: bool, need_w: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        gy = gy.contiguous()
        pad = (pads[0], pads[2])
        gx = self.ck.grad_input(gy, w, pad, dil, x.shape[-2:]) if need_x else None
        gw = self.ck.grad_weight(x, gy, w.shape[-2:], pad, dil) if need_w else None
        return gx, gw

    @staticmethod
    def grad_bias(gy: torch.Tensor) -> torch.Tensor:
        return gy.sum((0, 2, 3), dtype=torch.float32).to(gy.dtype)


class _OwnConv(torch.autograd.Function):
    """Autograd around the own kernels of one device (``kernels``: :class:`_CPUKernels` or :class:`_CUDAKernels`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pads: Pads,
                dil: tuple[int, int], kernels: _CPUKernels | _CUDAKernels) -> torch.Tensor:
        ctx.pads, ctx.dil, ctx.has_bias, ctx.kernels = pads, dil, bias is not None, kernels
        ctx.save_for_backward(x, w)
        return kernels.forward(x, w, bias, pads, dil)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor):  # type: ignore[override]
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = gw = gb = None
        if need_x or need_w:
            gx, gw = ctx.kernels.backward(x, gy, w, ctx.pads, ctx.dil, need_x, need_w)
        if need_b and ctx.has_bias:
            gb = ctx.kernels.grad_bias(gy)
        return gx, gw, gb, None, None, None


class _OwnForwardTorchGrads(torch.autograd.Function):
    """The own forward with every needed gradient on torch (oneDNN): the backward is one
    ``aten.convolution_backward`` call with its arguments fixed at planning time, nothing else.

    This is the plan of a small map with a large kernel (2x3, K=13: oneDNN's forward 20-100x slower than the own
    one, its grad-input 2-3x faster). There the general :class:`_OwnConv` backward (``once_differentiable``, the
    direction lookup, :func:`urlk_forecast.ops.cpu_paths.compute`'s detaches and autocast check) cost ~40-60 us
    per call on the 2-core CPU, 20-30 % of a 0.2 ms grad-input, against torch's own C++ node running the same
    oneDNN call. Double backward works (the backward is made of differentiable torch ops)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pads: Pads,
                dil: tuple[int, int], args: tuple) -> torch.Tensor:
        ctx.args = args
        ctx.save_for_backward(x, w)
        return cpu_kernels.forward(x, w, bias, pads, dil)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):  # type: ignore[override]
        x, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        stride, padding, dil, zeros, bias_sizes = ctx.args
        gx, gw, gb = _conv_backward(gy, x, w, bias_sizes, stride, padding, dil, False, zeros, x.shape[1],
                                    [need[0], need[1], need[2]])
        return gx, gw, gb, None, None, None


_conv_backward = torch.ops.aten.convolution_backward.default


def _own_torch_grads(args: tuple, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pads: Pads,
                     dil: tuple[int, int]) -> torch.Tensor:
    """:class:`_OwnForwardTorchGrads` (``args``: the fixed arguments of its backward call)."""
    return _keep_layout(x, _OwnForwardTorchGrads.apply(x, w, bias, pads, dil, args))


def _cpu_autocast_reader() -> Callable[[], bool]:
    """``torch.is_autocast_enabled("cpu")`` (torch >= 2.4) or its older spelling, chosen once."""
    try:
        torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled
    return partial(torch.is_autocast_enabled, "cpu")


_cpu_autocast = _cpu_autocast_reader()


def _cpu_autocast_dtype() -> torch.dtype:
    try:
        return torch.get_autocast_dtype("cpu")
    except (AttributeError, TypeError):  # torch < 2.4
        return torch.get_autocast_cpu_dtype()


def _autocast(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Apply torch.autocast's conv2d policy (cast to the autocast dtype), as F.conv2d would under autocast."""
    dev = x.device.type
    if dev not in ("cpu", "cuda"):
        return x, w, bias
    try:
        enabled, dt = torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)
    except (AttributeError, TypeError):  # torch < 2.4
        cpu = dev == "cpu"
        enabled = torch.is_autocast_cpu_enabled() if cpu else torch.is_autocast_enabled()
        dt = torch.get_autocast_cpu_dtype() if cpu else torch.get_autocast_gpu_dtype()
    if not enabled:
        return x, w, bias
    if not x.is_floating_point() or x.dtype == torch.float64:
        return x, w, bias
    return x.to(dt), w.to(dt), (bias.to(dt) if bias is not None else None)


_DIRS = {(gx, gw): ("forward",) + ("grad_input",) * gx + ("grad_weight",) * gw
         for gx in (False, True) for gw in (False, True)}
Plan = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", Pads, tuple[int, int]], torch.Tensor]


def _plan_key(backend: str, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pads: Pads,
              dil: tuple[int, int]) -> tuple:
    """Everything a CPU call's plan depends on (the caller has checked that autocast is off)."""
    grad = torch.is_grad_enabled()
    return (backend, x.shape, w.shape, x.dtype, w.dtype, pads, dil, grad and x.requires_grad,
            grad and w.requires_grad, grad and bias is not None and bias.requires_grad, torch.get_num_threads(),
            autotune.env_get(autotune.TUNE_ENV))


def _torch_plan(pads: Pads) -> Plan:
    """``F.conv2d`` with torch's own autograd (symmetric padding passed straight through)."""
    t, b, l, r = pads
    if t != b or l != r:
        return cpu_paths.torch_forward
    padding = (t, l)

    def plan(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pads: Pads,
             dil: tuple[int, int]) -> torch.Tensor:
        return F.conv2d(x, w, bias, 1, padding, dil, x.shape[1])

    return plan


def _keep_layout(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` in channels-last memory format when ``x`` came that way (the own kernels write NCHW)."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return y.contiguous(memory_format=torch.channels_last)
    return y


def _own_forward(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pads: Pads,
                 dil: tuple[int, int]) -> torch.Tensor:
    """The own forward of a call that needs no gradient: no autograd function around it."""
    return _keep_layout(x, cpu_kernels.forward(x, w, bias, pads, dil))


def _own_autograd(kernels: _CPUKernels, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pads: Pads,
                  dil: tuple[int, int]) -> torch.Tensor:
    """:class:`_OwnConv` with each direction on the implementation ``kernels`` holds."""
    return _keep_layout(x, _OwnConv.apply(x, w, bias, pads, dil, kernels))


#: name of the autograd function's cost in the table (:func:`urlk_forecast.ops.autotune.fixed_cost`)
WRAPPER_COST = "autograd_function_s"


def measure_wrapper_cost(blocks: int = 21, calls: int = 10) -> float:
    """Seconds per call (forward and backward) that :class:`_OwnConv` costs over ``F.conv2d``'s own autograd node
    when both run the same oneDNN calls (a 1x8x6x6, K=3 call, input gradient: the Python node, ``ctx``,
    ``once_differentiable``, the plan's wrappers); what a plan with own directions must save to be worth it."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 6, 6, generator=gen).requires_grad_()
    w, gy = torch.randn(8, 1, 3, 3, generator=gen), torch.randn(1, 8, 6, 6, generator=gen)
    kernels = _CPUKernels("auto", {"forward": "torch", "grad_input": "torch"})
    pads, dil = (1, 1, 1, 1), (1, 1)

    def native() -> None:
        torch.autograd.grad(F.conv2d(x, w, None, 1, (1, 1), dil, 8), x, gy)

    def wrapped() -> None:
        torch.autograd.grad(_own_autograd(kernels, x, w, None, pads, dil), x, gy)

    with torch.enable_grad(), torch.autocast("cpu", enabled=False):
        return autotune.time_difference(wrapped, native, blocks, calls)


def wrapper_cost() -> float:
    """:func:`measure_wrapper_cost` of this machine, from the table (measured on first need)."""
    return autotune.fixed_cost(WRAPPER_COST, measure_wrapper_cost)


#: name of the kernel crop's cost in the table (:func:`urlk_forecast.ops.autotune.fixed_cost`)
CROP_COST = "kernel_crop_s"


def measure_crop_cost(blocks: int = 21, calls: int = 10) -> float:
    """Seconds per call (forward and backward) that cropping the kernel costs (:func:`_cropped`: the slice, its
    copy and their gradients), on a 1x8x2x3 call whose 13x13 kernel crops to 3x5."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 2, 3, generator=gen)
    w = torch.randn(8, 1, 13, 13, generator=gen).requires_grad_()
    wc = w.detach()[:, :, 5:8, 4:9].contiguous().requires_grad_()
    gy = torch.randn(1, 8, 2, 3, generator=gen)

    def native() -> None:
        torch.autograd.grad(F.conv2d(x, wc, None, 1, (1, 2), 1, 8), wc, gy)

    def cropped() -> None:
        torch.autograd.grad(F.conv2d(x, w[:, :, 5:8, 4:9].contiguous(), None, 1, (1, 2), 1, 8), w, gy)

    with torch.enable_grad(), torch.autocast("cpu", enabled=False):
        return autotune.time_difference(cropped, native, blocks, calls)


def crop_cost() -> float:
    """:func:`measure_crop_cost` of this machine, from the table (measured on first need)."""
    return autotune.fixed_cost(CROP_COST, measure_crop_cost)


def _cpu_plan(backend: str, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pads: Pads,
              dil: tuple[int, int]) -> Plan:
    """Decide the implementation of the forward and of each gradient the call needs (``own`` everywhere under
    "own", the measured table under "auto", all torch when the own directions save less than the autograd
    function costs: :func:`urlk_forecast.ops.autotune.choose_plan`) and return the plan that runs them."""
    grad = torch.is_grad_enabled()
    gx, gw = grad and x.requires_grad, grad and w.requires_grad
    gb = grad and bias is not None and bias.requires_grad
    if gx or gw:  # a backward may follow: compile its kernels ahead, in parallel (first run on a machine)
        cpu_kernels.prefetch_backward(x, w, pads, dil)
    dirs = _DIRS[(gx, gw)]
    if backend == "own":
        impls = dict.fromkeys(dirs, "own")
    else:
        impls = dict(zip(dirs, autotune.choose_plan(dirs, x, w, pads, dil, wrapper_cost)))
    if all(v == "torch" for v in impls.values()):
        return _torch_plan(pads)
    if not (gx or gw or gb):
        return _own_forward
    t, b, l, r = pads
    if all(v == "torch" for d, v in impls.items() if d != "forward") and t == b and l == r:
        args = ([1, 1], [t, l], list(dil), [0, 0], [x.shape[1]] if bias is not None else None)
        return partial(_own_torch_grads, args)
    return partial(_own_autograd, _CPUKernels(backend, impls))


def _run_cpu(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pads: Pads, dil: tuple[int, int],
             backend: str) -> torch.Tensor:
    """A CPU call whose plan is not kept: float16, or autocast to float16 (inputs already cast by its policy),
    computed in float32 (the casts are part of the autograd graph; bfloat16 runs natively on plans: bf16 storage,
    float32 arithmetic)."""
    out_dtype = x.dtype
    if x.dtype not in cpu_kernels.SUPPORTED_DTYPES:
        x, w = x.float(), w.float()
        bias = bias.float() if bias is not None else None
    autotune.note_call(x, w, pads, dil)
    plan = _cpu_plan(backend, x, w, bias, pads, dil)
    if _cpu_autocast():  # the inputs already follow the policy: compute in their dtype
        with torch.autocast("cpu", enabled=False):
            y = plan(x, w, bias, pads, dil)
    else:
        y = plan(x, w, bias, pads, dil)
    return y.to(out_dtype) if y.dtype != out_dtype else y


def _cropped(inner: Plan, taps: tuple[slice, slice], new_pads: Pads, x: torch.Tensor, w: torch.Tensor,
             bias: torch.Tensor | None, pads: Pads, dil: tuple[int, int]) -> torch.Tensor:
    """``inner`` (the plan of the smaller call) on the kernel cropped to the taps that touch the map
    (:mod:`urlk_forecast.ops.reach`): slicing is differentiable, the cut taps get an exactly zero gradient."""
    return inner(x, w[:, :, taps[0], taps[1]].contiguous(), bias, new_pads, dil)


def _decide(backend: str, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pads: Pads,
            dil: tuple[int, int]) -> Plan:
    """The plan of a CPU call seen for the first time (tensors already in the dtype they are computed in). Under
    ``auto`` a kernel that reaches past the map runs cropped to the taps that touch it (a 13x13 kernel on a 2x3 map
    is a 3x5 one), on the plan of that smaller call, when the table says that call is faster
    (:func:`urlk_forecast.ops.autotune.crop_pays`)."""
    if _choose(x, w, pads, dil, backend) != "cpu":  # raises under "own" when the own kernels cannot run it
        return cpu_paths.torch_forward  # auto's fallback (padding beyond (K-1)*dilation, no own kernels): decided once
    grad = torch.is_grad_enabled()
    form = cropped_form(x, w, pads, dil, _DIRS[(grad and x.requires_grad, grad and w.requires_grad)]) \
        if backend == "auto" else None
    if form is None:
        return _cpu_plan(backend, x, w, bias, pads, dil)
    taps, new_pads, wc = form
    return partial(_cropped, _cpu_plan(backend, x, wc, bias, new_pads, dil), taps, new_pads)


def cropped_form(x: torch.Tensor, w: torch.Tensor, pads: Pads, dil: tuple[int, int], directions: tuple[str, ...]
                 ) -> tuple[tuple[slice, slice], Pads, torch.Tensor] | None:
    """How ``auto`` runs a CPU call needing ``directions``: (taps kept, new padding, cropped kernel) when its kernel
    reaches past the map and the cropped call pays (:func:`urlk_forecast.ops.autotune.crop_pays`), else None."""
    cut = reach.crop(tuple(x.shape[-2:]), tuple(w.shape[-2:]), pads, dil)
    if cut is None:
        return None
    taps, new_pads = cut
    wc = w[:, :, taps[0], taps[1]].contiguous()
    if not autotune.crop_pays(directions, x, w, pads, wc, new_pads, dil, crop_cost):
        return None
    return taps, new_pads, wc


def _keep(key: tuple, plan: Plan) -> None:
    if len(autotune.plans) >= MAX_PLANS:
        autotune.plans.clear()
    autotune.plans[key] = plan


def _planned(backend: str, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pads: Pads,
             dil: tuple[int, int]) -> torch.Tensor | None:
    """Run a CPU call (autocast off) on its kept plan, deciding and keeping the plan on first sight; None for
    float16 (cast to float32 each time by :func:`_run_cpu`)."""
    key = _plan_key(backend, x, w, bias, pads, dil)
    plan = autotune.plans.get(key)
    if plan is None:
        if x.dtype not in cpu_kernels.SUPPORTED_DTYPES:
            return None
        plan = _decide(backend, x, w, bias, pads, dil)
        _keep(key, plan)
    autotune.note_call(x, w, pads, dil)
    return plan(x, w, bias, pads, dil)


def _set_cpu_autocast(enabled: bool) -> None:
    try:
        torch.set_autocast_enabled("cpu", enabled)
    except TypeError:  # torch < 2.4
        torch.set_autocast_cpu_enabled(enabled)


def _autocast_plan(inner: Plan, dt: torch.dtype | None, x: torch.Tensor, w: torch.Tensor,
                   bias: torch.Tensor | None, pads: Pads, dil: tuple[int, int]) -> torch.Tensor:
    """A call under CPU autocast: cast to the autocast dtype ``dt`` (None: float64, which autocast leaves alone)
    as ``F.conv2d`` would, then ``inner`` (the plan of the cast call) with autocast off, so every direction
    computes in that dtype (toggled directly: the context manager costs ~5 us)."""
    if dt is not None:
        x, w = x.to(dt), w.to(dt)
        bias = bias.to(dt) if bias is not None else None
    _set_cpu_autocast(False)
    try:
        return inner(x, w, bias, pads, dil)
    finally:
        _set_cpu_autocast(True)


def _planned_autocast(backend: str, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pads: Pads,
                      dil: tuple[int, int]) -> torch.Tensor | None:
    """:func:`_planned` for a CPU call under ``torch.autocast("cpu")``: the plan key holds the autocast dtype and
    the plan does the policy's casts itself; None when the cast dtype has no plans (float16: :func:`_run_cpu`)."""
    dt = _cpu_autocast_dtype()
    key = (*_plan_key(backend, x, w, bias, pads, dil), dt)
    plan = autotune.plans.get(key)
    if plan is None:
        xc, wc, bc = _autocast(x, w, bias)
        if xc.dtype not in cpu_kernels.SUPPORTED_DTYPES:
            return None
        with torch.autocast("cpu", enabled=False):
            inner = _decide(backend, xc, wc, bc, pads, dil)
        plan = partial(_autocast_plan, inner, xc.dtype if xc.dtype != x.dtype else None)
        _keep(key, plan)
    autotune.note_call(x, w, pads, dil)
    return plan(x, w, bias, pads, dil)


def run(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pads: Pads, dil: tuple[int, int]) -> torch.Tensor:
    """Depthwise conv with validated arguments on the chosen path (autograd-aware on every path)."""
    backend = get_backend()
    if backend != "torch" and x.is_cpu:  # the hot path: a kept plan
        if _cpu_autocast():
            y = _planned_autocast(backend, x, w, bias, pads, dil)
        else:
            y = _planned(backend, x, w, bias, pads, dil)
        if y is not None:
            return y
    path = _choose(x, w, pads, dil, backend)
    if path != "torch":
        x, w, bias = _autocast(x, w, bias)
    if path == "torch":
        return cpu_paths.torch_forward(x, w, bias, pads, dil)
    if path == "cpu":
        return _run_cpu(x, w, bias, pads, dil, backend)
    # cuda: the kernels take symmetric padding; an asymmetric one ("same" with an even K) is applied first
    t, b, l, r = pads
    if t != b or l != r:
        x, pads = F.pad(x, (l, r, t, b)), (0, 0, 0, 0)
    return _OwnConv.apply(x, w, bias, pads, dil, _CUDAKernels(_cuda_module()))
