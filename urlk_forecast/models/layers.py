"""Layers and helpers shared by the backbones (UniRepLKNet, the ConvNeXt/ResNet comparison encoders, the modality
classifiers): LayerNorm in both layouts, stochastic depth, gradient checkpointing that leaves BatchNorm running
statistics alone, BatchNorm folding (through the pure functions of :mod:`urlk_forecast.ops.reparam`) and the one
structural re-parameterization walk, :func:`reparameterize_model`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from urlk_forecast.models import fastpath
from urlk_forecast.models.layernorm_function import layer_norm_nchw
from urlk_forecast.models.linear_function import linear
from urlk_forecast.ops import DWConv2d, dwconv2d
from urlk_forecast.ops.reparam import fuse_bn

__all__ = [
    "SKIP_MODES",
    "SeasonalSkip",
    "LayerNorm",
    "LayerNorm2d",
    "DropPath",
    "Dropout",
    "keep_mask",
    "run_dwconv",
    "batch_norm_2d",
    "init_trunc_normal",
    "FrozenBNStats",
    "checkpoint_once",
    "set_weight_and_bias",
    "fold_bn",
    "reparameterize_model",
    "reparameterize_children",
]


#: channels-first LayerNorms of at most this many channels train through :func:`layer_norm_nchw` on the fast path:
#: forward + backward on the 2-core CPU 1.5-2.1x faster at C = 20 and 40 (the stem), 0.4-0.9x at C = 80-320
CLOSED_FORM_LN_CHANNELS = 40


class LayerNorm(nn.Module):
    """LayerNorm over channels for ``channels_last`` (N, H, W, C) or ``channels_first`` (N, C, H, W) input."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6, data_format: str = "channels_last") -> None:
        super().__init__()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}")
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.data_format = data_format
        self.normalized_shape = (normalized_shape,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        if torch.is_grad_enabled() and x.dim() == 4 and x.shape[1] <= CLOSED_FORM_LN_CHANNELS and fastpath.enabled():
            return layer_norm_nchw(x, self.weight, self.bias, self.eps)  # no copies, closed-form backward
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2).contiguous()

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, eps={self.eps}, data_format={self.data_format}"


class LayerNorm2d(LayerNorm):
    """LayerNorm over the channel dim of an NCHW tensor (``LayerNorm(..., data_format="channels_first")``)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__(channels, eps, data_format="channels_first")


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or with ``drop_prob == 0``)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A kernel-1 ``Conv1d`` along the steps of ``x`` (B, L, C_in) -> (B, L, C_out). On the fast path one matrix
    product with the conv's weight, no transposes (oneDNN's 1-wide convolution and its backward cost ~3x the product
    on the decoder's 32 x 128 x 48 activations); else the module on the transposed input."""
    if fastpath.enabled():
        return linear(x, conv.weight.squeeze(-1), conv.bias)
    return conv(x.transpose(1, 2)).transpose(1, 2)


def run_dwconv(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a depthwise conv module; under autocast (x in bf16/fp16, weights fp32) cast the weights to x's dtype.

    ``F.conv2d`` is autocast-aware but the own op is not: it requires equal dtypes, as does any custom kernel.
    """
    if not isinstance(conv, DWConv2d) or x.dtype == conv.weight.dtype:
        return conv(x)
    bias = conv.bias.to(x.dtype) if conv.bias is not None else None
    return dwconv2d(x, conv.weight.to(x.dtype), bias, conv.padding, conv.dilation)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """``channels_last`` for a 4-d tensor stored that way (and not also contiguous), else ``contiguous_format``."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class _GradInFormat(torch.autograd.Function):
    """Identity whose backward hands the gradient on in a given memory format (a copy only if it is stored
    otherwise)."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        ctx.memory_format = memory_format
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        return g.contiguous(memory_format=ctx.memory_format), None


def batch_norm_2d(bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``bn(x)``; on the fast path with gradients, a ``BatchNorm2d``'s output gradient is first stored like ``x``.

    In a block, the BatchNorm after the depthwise conv sees channels-first ``x`` but gets a channels-last gradient
    (from the NHWC copy in front of the FFN), and the one after the FFN the reverse (channels-last ``x``, gradient
    from the channels-first residual stream). torch's BatchNorm backward on mixed layouts is 1.6-4x slower than
    on matching ones, more than the copy costs: forward + backward at 350 x 40 x 16 x 24 bf16 30 -> 8 ms, at
    32 x 40 x 16 x 24 bf16 2.0 -> 0.6 ms (2-core CPU, docs/benchmarks.md)."""
    y = bn(x)
    if isinstance(bn, nn.BatchNorm2d) and torch.is_grad_enabled() and fastpath.enabled() and y.requires_grad:
        return _GradInFormat.apply(y, _memory_format(x))
    return y


def init_trunc_normal(m: nn.Module) -> None:
    """``module.apply`` initialiser: truncated-normal (std 0.02) conv/linear weights, zero biases."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------ gradient checkpointing
class FrozenBNStats:
    """Context manager: BatchNorms in ``module`` keep their running statistics (and batch counter) unchanged.

    Momentum is set to 0 so the (still batch-statistics) forward is bit-identical and autograd saves the same
    tensors as in the first pass; the counter incremented by the forward is restored on exit.
    """

    def __init__(self, module: nn.Module) -> None:
        self.bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self) -> None:
        self.saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
                      for m in self.bns]
        for m in self.bns:
            m.momentum = 0.0

    def __exit__(self, *exc: object) -> None:
        for m, (momentum, count) in zip(self.bns, self.saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def checkpoint_once(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` under gradient checkpointing whose backward recomputation leaves the BatchNorm running statistics
    of ``module`` untouched (plain ``torch.utils.checkpoint`` re-runs the forward, updating them twice)."""
    calls = [0]

    def run(inp: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 1 or not module.training:
            return fn(inp)
        with FrozenBNStats(module):
            return fn(inp)

    return checkpoint(run, x, use_reentrant=False)


# ------------------------------------------------------------------------------------------ BN folding
@torch.no_grad()
def set_weight_and_bias(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Give a conv or linear ``layer`` new ``weight`` and ``bias`` parameters in place (a missing bias is created,
    under its usual state-dict name); they keep the old weight's ``requires_grad``."""
    requires_grad = layer.weight.requires_grad
    layer.weight = nn.Parameter(weight.detach().clone(), requires_grad=requires_grad)
    layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=requires_grad)


def fold_bn(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold the eval-mode BatchNorm ``bn`` that follows ``layer`` (a conv or linear) into it, in place; the caller
    then drops ``bn`` (e.g. replaces it with ``nn.Identity``)."""
    weight, bias = fuse_bn(layer.weight, bn, layer.bias)
    set_weight_and_bias(layer, weight, bias)


# --------------------------------------------------------------------------------- re-parameterization
def _children_first(model: nn.Module) -> Iterator[nn.Module]:
    """Every module of ``model`` after all of its descendants (``model`` last); a snapshot taken up front."""
    return reversed(list(model.modules()))  # modules() lists each parent before its descendants


def reparameterize_model(model: nn.Module) -> nn.Module:
    """Structurally re-parameterize ``model`` in place; returns ``model``.

    Calls ``reparameterize()`` on every module that has one, children before parents (a block then sees its
    branches already merged), ``model`` itself last (timm's convention). Every ``reparameterize()`` leaves its
    module in inference form with identical eval-mode outputs, is idempotent and may convert its own children
    first, so calling it on a part already converted costs nothing. The BatchNorm running statistics are used,
    i.e. the result equals ``model`` in eval mode.
    """
    for module in _children_first(model):
        fn = getattr(module, "reparameterize", None)
        if callable(fn):
            fn()
    return model


def reparameterize_children(module: nn.Module) -> None:
    """:func:`reparameterize_model` on every child of ``module`` (what a container's ``reparameterize()`` does)."""
    for child in list(module.children()):
        reparameterize_model(child)


#: Modes of :class:`SeasonalSkip`: "none" (the paper's network), "linear" (zero-initialised linear map),
#: "seasonal" (initialised to seasonal naive).
SKIP_MODES: tuple[str, ...] = ("none", "linear", "seasonal")


class SeasonalSkip(nn.Module):
    """A linear map from the normalised input window to the forecast, added to the network's output.

    One ``Linear(seq_len, pred_len)`` over time, shared by all stations (DLinear's linear head, in RevIN units). With
    ``mode="seasonal"`` it starts as the seasonal-naive forecast (lead ``h`` copies input step
    ``seq_len - season + h % season``; persistence when ``season > seq_len``), so training starts from that baseline
    and learns the correction; ``"linear"`` starts at zero. Chosen on the validation windows of the real-data suite
    (docs/training.md); ``"none"`` is the paper's network.
    """

    def __init__(self, seq_len: int, pred_len: int, mode: str = "seasonal", season: int = 24) -> None:
        super().__init__()
        if mode not in SKIP_MODES[1:]:
            raise ValueError(f"skip must be one of {list(SKIP_MODES)}, got {mode!r}")
        if int(season) < 1:
            raise ValueError(f"season must be >= 1 step, got {season!r}")
        self.proj = nn.Linear(int(seq_len), int(pred_len))
        with torch.no_grad():
            self.proj.weight.zero_()
            self.proj.bias.zero_()
            if mode == "seasonal":
                for h in range(int(pred_len)):
                    src = seq_len - season + h % season if season <= seq_len else seq_len - 1
                    self.proj.weight[h, src] = 1.0

    def forward(self, xn: torch.Tensor) -> torch.Tensor:
        """``(B, seq_len, S)`` normalised inputs → ``(B, pred_len, S)``."""
        return self.proj(xn.transpose(1, 2)).transpose(1, 2)


# ----------------------------------------------------------------------------------------------------- dropout
_LANE = 1 << 16  # a 16-bit lane of a random int64 word
_LOW_LANES = slice(0, 3) if sys.byteorder == "little" else slice(1, 4)  # bits 0-47: random_() leaves bit 63 at 0


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu"
              ) -> tuple[torch.Tensor, float]:
    """A boolean keep-mask of ``shape`` (each entry dropped with probability ``p`` quantised to 1/65536) and the
    quantised ``p``, from three 16-bit lanes per random int64 word of the default generator.

    Why: on a CPU, ``bernoulli_`` (what ``F.dropout`` calls) draws one random number per element and took 2.2 ms per
    call, ~4 % of a 4-station training step; a third as many 64-bit draws cut that ~3x. The seed controls it as
    usual (``torch.manual_seed``); the numbers differ from ``bernoulli_``'s, the distribution does not."""
    n = math.prod(shape)
    cut = round(float(p) * _LANE)
    words = torch.empty(-(-n // 3), dtype=torch.int64, device=device).random_()
    lanes = words.view(torch.int16).view(-1, 4)[:, _LOW_LANES]  # uniform over [-32768, 32767]
    keep = lanes >= cut - _LANE // 2
    return keep.reshape(-1)[:n].view(tuple(shape)), cut / _LANE


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose training mask comes from :func:`keep_mask` on a CPU (fast path); elsewhere, on the old
    path and in eval mode exactly ``nn.Dropout``. Outputs are scaled by ``1 / (1 - p')`` with ``p'`` the quantised
    drop probability, so the expectation equals the input as with ``F.dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and 0.0 < self.p < 1.0 and x.device.type == "cpu" and fastpath.enabled()):
            return super().forward(x)
        keep, q = keep_mask(x.shape, self.p, x.device)
        if q <= 0.0:  # p below 1/131072 rounds to no drop at all
            return x
        if q >= 1.0:  # p within 1/131072 of 1: everything dropped, as nn.Dropout would (nearly) do
            return super().forward(x)
        scale = keep.to(x.dtype).mul_(1.0 / (1.0 - q))
        return x.mul_(scale) if self.inplace else x * scale
