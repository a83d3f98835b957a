"""Depthwise large-kernel convolution op (own CPU and CUDA kernels, torch fallback).

PLACEHOLDER until the op issue lands: ``dwconv2d`` calls ``F.conv2d``. The public names and the
parameter layout of :class:`DWConv2d` are the contract the backbone builds on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["dwconv2d", "DWConv2d"]


def dwconv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    padding: int | tuple[int, int] | None = None,
    dilation: int = 1,
) -> torch.Tensor:
    """Depthwise 2-D convolution, stride 1; ``padding=None`` means "same" for odd kernels."""
    if padding is None:
        padding = (dilation * (weight.shape[-2] - 1) // 2, dilation * (weight.shape[-1] - 1) // 2)
    return F.conv2d(x, weight, bias, 1, padding, dilation, x.shape[1])


class DWConv2d(nn.Conv2d):
    """Drop-in for ``nn.Conv2d(C, C, K, padding=same, dilation=d, groups=C)`` running :func:`dwconv2d`."""

    def __init__(self, channels: int, kernel_size: int, dilation: int = 1, bias: bool = False,
                 padding: int | None = None) -> None:
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        super().__init__(channels, channels, kernel_size, 1, padding, dilation, channels, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dwconv2d(x, self.weight, self.bias, self.padding, self.dilation[0])
