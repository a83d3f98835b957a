"""Depthwise large-kernel convolution op: own CPU (numba) and CUDA (numba.cuda) kernels, torch fallback.

Paper Guideline 1 (UniRepLKNet, arXiv 2410.08049): depthwise large kernels need a proper operator-level
implementation. Nothing here needs a compiler at install time; kernels compile on first use and are cached.

* :func:`dwconv2d` - functional, autograd-aware, stride 1, ``padding=None`` means "same";
* :class:`DWConv2d` - drop-in for ``nn.Conv2d(C, C, K, padding=..., dilation=..., groups=C)`` with the same
  parameter names and shapes (checkpoints load either way);
* :func:`use_backend` / ``URLK_DWCONV=auto|own|torch`` - force a path (benchmarks, bisecting);
* :func:`convert_depthwise` - swap the depthwise ``nn.Conv2d`` layers of any model for :class:`DWConv2d`;
* :func:`calibrate` / :func:`record_calls` - measure ahead which CPU path ``auto`` runs per call shape and direction
  (otherwise measured on first use, cached per machine; :mod:`urlk_forecast.ops.autotune`).

See ``docs/ops.md`` for the design, supported cases and measured speed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from urlk_forecast.ops import cpu_team as _cpu_team  # noqa: F401 - its fork hook from the first import on
from urlk_forecast.ops._args import out_hw, pair
from urlk_forecast.ops.autotune import calibrate, one_time_seconds, record_calls
from urlk_forecast.ops.dispatch import BACKENDS, get_backend, run, use_backend

__all__ = ["dwconv2d", "DWConv2d", "use_backend", "get_backend", "BACKENDS", "same_padding", "convert_depthwise",
           "calibrate", "record_calls", "one_time_seconds"]

PaddingArg = int | Sequence[int] | str | None


def same_padding(kernel_size: int | Sequence[int], dilation: int | Sequence[int] = 1) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) keeping the spatial size (stride 1); the extra row/column of an even kernel goes
    to the bottom/right, as torch's ``padding="same"`` does."""
    kh, kw = pair(kernel_size, "kernel_size", "dwconv2d")
    dh, dw = pair(dilation, "dilation", "dwconv2d")
    th, tw = dh * (kh - 1), dw * (kw - 1)
    return th // 2, th - th // 2, tw // 2, tw - tw // 2


def _resolve_padding(padding: PaddingArg, k: tuple[int, int], dil: tuple[int, int]) -> tuple[int, int, int, int]:
    if padding is None or (isinstance(padding, str) and padding == "same"):
        return same_padding(k, dil)
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        raise ValueError(f"dwconv2d: padding string must be 'same' or 'valid', got {padding!r}")
    if isinstance(padding, Sequence) and not isinstance(padding, str) and len(padding) == 4:
        t, b, l, r = (int(v) for v in padding)
        return t, b, l, r
    ph, pw = pair(padding, "padding", "dwconv2d")
    return ph, ph, pw, pw


def dwconv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    padding: PaddingArg = None,
    dilation: int | Sequence[int] = 1,
) -> torch.Tensor:
    """Depthwise 2-D convolution, stride 1: ``F.conv2d(x, weight, bias, 1, padding, dilation, groups=C)``.

    ``x`` (B, C, H, W); ``weight`` (C, 1, KH, KW); ``bias`` (C,) or None. ``padding``: None or ``"same"`` (keeps
    H x W, any K), ``"valid"``, an int, an (h, w) pair or (top, bottom, left, right). ``dilation``: int or pair.
    Runs the own kernels when they support the call (see :mod:`urlk_forecast.ops.dispatch`), else ``F.conv2d``.
    Arguments of a signature already validated (shapes, dtypes, devices, padding, dilation) are not checked again.
    """
    try:
        key = (x.shape, weight.shape, x.dtype, weight.dtype, x.device, weight.device,
               None if bias is None else (bias.shape, bias.device), padding, type(padding), dilation, type(dilation))
        args = _validated.get(key)
    except (AttributeError, TypeError):  # not tensors, or a list as padding/dilation: validated every time
        key, args = None, None
    if args is None:
        args = _validate(x, weight, bias, padding, dilation)
        if key is not None:
            if len(_validated) >= 4096:
                _validated.clear()
            _validated[key] = args
    return run(x, weight, bias, *args)


#: validated call signatures -> (pads, dilation): the per-call checks cost ~5 us, 5 % of a 0.1 ms call
_validated: dict[tuple, tuple[tuple[int, int, int, int], tuple[int, int]]] = {}


def _validate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: PaddingArg,
              dilation: int | Sequence[int]) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """Check the arguments of :func:`dwconv2d` (TypeError/ValueError naming the argument); (pads, dilation)."""
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("dwconv2d: x and weight must be torch tensors")
    if x.dim() != 4:
        raise ValueError(f"dwconv2d: x must be 4-D (batch, channels, height, width), got shape {tuple(x.shape)}")
    C = x.shape[1]
    if weight.dim() != 4 or weight.shape[0] != C or weight.shape[1] != 1:
        raise ValueError(
            f"dwconv2d: weight must have shape ({C}, 1, KH, KW) for input with {C} channels, got {tuple(weight.shape)}"
        )
    if weight.shape[2] < 1 or weight.shape[3] < 1:
        raise ValueError(f"dwconv2d: empty kernel {tuple(weight.shape)}")
    if weight.dtype != x.dtype or weight.device != x.device:
        raise TypeError(
            f"dwconv2d: x ({x.dtype}, {x.device}) and weight ({weight.dtype}, {weight.device}) must share dtype "
            "and device"
        )
    if bias is not None and (bias.shape != (C,) or bias.device != x.device):
        raise ValueError(
            f"dwconv2d: bias must have shape ({C},) on {x.device}, got {tuple(bias.shape)} on {bias.device}"
        )
    dil = pair(dilation, "dilation", "dwconv2d")
    if min(dil) < 1:
        raise ValueError(f"dwconv2d: dilation must be >= 1, got {dilation!r}")
    k = (int(weight.shape[2]), int(weight.shape[3]))
    pads = _resolve_padding(padding, k, dil)
    ho, wo = out_hw(x.shape[2], x.shape[3], k, pads, dil)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"dwconv2d: empty output ({ho}x{wo}) for input {tuple(x.shape[2:])}, kernel {k}, padding {pads}, "
            f"dilation {dil}"
        )
    return pads, dil


class DWConv2d(nn.Conv2d):
    """Drop-in for ``nn.Conv2d(C, C, K, padding=same, dilation=d, groups=C, bias=bias)`` running :func:`dwconv2d`.

    Parameters are ``weight`` (C, 1, KH, KW) and optionally ``bias`` (C,), exactly as in ``nn.Conv2d``, so state
    dicts are interchangeable. ``padding=None`` keeps the spatial size (an int for odd kernels, ``"same"`` for even).
    """

    def __init__(self, channels: int, kernel_size: int | Sequence[int], dilation: int | Sequence[int] = 1,
                 bias: bool = False, padding: int | Sequence[int] | str | None = None) -> None:
        k = pair(kernel_size, "kernel_size", "dwconv2d")
        d = pair(dilation, "dilation", "dwconv2d")
        if padding is None:
            t, b, l, r = same_padding(k, d)
            padding = (t, l) if (t == b and l == r) else "same"
        super().__init__(channels, channels, k, 1, padding, d, channels, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":  # circular/reflect padding: not what the own kernels implement
            return super().forward(x)
        return dwconv2d(x, self.weight, self.bias, self.padding, self.dilation)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> DWConv2d:
        """A :class:`DWConv2d` sharing the parameters of a depthwise, stride-1 ``nn.Conv2d``."""
        c = conv.in_channels
        if conv.groups != c or conv.out_channels != c or tuple(conv.stride) != (1, 1):
            raise ValueError(f"DWConv2d.from_conv needs a depthwise stride-1 conv (groups == channels), got {conv}")
        new = cls(c, conv.kernel_size, conv.dilation, conv.bias is not None, conv.padding)
        new.padding_mode = conv.padding_mode
        new.weight = conv.weight
        if conv.bias is not None:
            new.bias = conv.bias
        return new


def convert_depthwise(module: nn.Module) -> nn.Module:
    """Replace (in place) every depthwise stride-1 ``nn.Conv2d`` in ``module`` by a :class:`DWConv2d` sharing its
    parameters; returns ``module`` (or the replacement when ``module`` itself is such a conv)."""
    def eligible(m: nn.Module) -> bool:
        return (type(m) is nn.Conv2d and m.groups == m.in_channels == m.out_channels and m.groups > 1
                and tuple(m.stride) == (1, 1))

    if eligible(module):
        return DWConv2d.from_conv(module)  # type: ignore[arg-type]
    for name, child in list(module.named_children()):
        if eligible(child):
            setattr(module, name, DWConv2d.from_conv(child))  # type: ignore[arg-type]
        else:
            convert_depthwise(child)
    return module
