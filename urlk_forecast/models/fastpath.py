"""Switch between the faster training paths of issue 15 item 5 and the code path they replace.

The fast paths compute the same function (forward and gradients equal within float tolerance; tests compare them
against the old path): causal-conv taps that only ever see padding are skipped, the CPU optimiser runs fused, on
a CPU the C allocator keeps freed memory for reuse (:func:`tune_allocator`), dropout masks come from 16-bit lanes
(:class:`~urlk_forecast.models.layers.Dropout`), the depthwise branches of a block on a map of at most 24
pixels run as one dense product, from 64 images with their BatchNorms folded in
(:mod:`urlk_forecast.models.dense_dwconv`), the squeeze-and-excitation's 1x1 convolutions and the decoder's kernel-1
Conv1d run as matrix products (:func:`~urlk_forecast.models.layers.pointwise`), the decomposition's moving average is
one product with a band matrix, channels-first LayerNorms of few channels train through a closed-form backward
(:mod:`urlk_forecast.models.layernorm_function`), and float32 Linear layers run on oneDNN's product where it beats
the BLAS (:mod:`urlk_forecast.models.linear_function`), and a weight-normalised causal conv with trimmed taps
normalises only its live taps (:mod:`urlk_forecast.models.tap_weight_norm`).
``URLK_FAST=0`` in the environment, or :func:`use_fast_paths` (``False``) in code, selects the old path, e.g. for
the side-by-side benchmark (``benchmarks/forecaster_profile.py --paths old new``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..utils.allocator import retain_freed_memory

__all__ = ["ENV", "clip_grad_norm_", "enabled", "exporting", "optimizer_options", "tune_allocator",
           "use_fast_paths"]

#: environment variable: ``0`` selects the old paths (default: fast)
ENV = "URLK_FAST"

_override: list[bool] = []


def exporting() -> bool:
    """Tracing, scripting, ONNX export or torch.compile: the fast paths built on custom autograd functions give the
    standard ops there (and the exported graph gets them too)."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling())


def enabled() -> bool:
    """True unless the old paths are selected (innermost :func:`use_fast_paths`, else ``URLK_FAST``)."""
    if _override:
        return _override[-1]
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@contextmanager
def use_fast_paths(flag: bool) -> Iterator[None]:
    """Within the block, run the fast paths (``True``) or the old ones (``False``), whatever ``URLK_FAST`` says."""
    _override.append(bool(flag))
    try:
        yield
    finally:
        _override.pop()


def optimizer_options(device_type: str) -> dict[str, bool]:
    """Extra keyword arguments for ``torch.optim.Adam``/``AdamW`` on ``device_type``: the fused CPU kernel (one
    pass over every parameter instead of ~10 tensor ops per parameter tensor) on the fast path, none otherwise."""
    return {"fused": True} if device_type == "cpu" and enabled() else {}


def tune_allocator(device_type: str) -> bool:
    """On the fast path and a CPU device, keep freed memory in the process
    (:func:`urlk_forecast.utils.allocator.retain_freed_memory`): the large activations of a step are then reused
    instead of page-faulted in again (1.36x / 1.50x training windows/s at 4 x 32 / 3850 x 1 on the 2-core dev
    machine). Returns whether it is in effect; ``URLK_MALLOC=0`` opts out of this alone."""
    return device_type == "cpu" and enabled() and retain_freed_memory()


def clip_grad_norm_(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (2-norm) on the fast path with its per-tensor loops in one foreach call
    each (torch takes them only on accelerators; on CPU it runs a Python loop of ~3 ops per gradient tensor).
    Same arithmetic: per-tensor norms, the norm of those, ``min(max_norm / (total + 1e-6), 1)`` times every grad."""
    params = list(params)
    grads = [p.grad for p in params if p.grad is not None]
    if not enabled() or not grads or len({(g.device, g.dtype) for g in grads}) > 1 or grads[0].is_sparse:
        return nn.utils.clip_grad_norm_(params, max_norm)
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(grads, coef)
    return total
