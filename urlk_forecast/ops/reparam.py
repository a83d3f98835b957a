"""Structural re-parameterization math for UniRepLKNet (paper §3.2.2, Eq. 1).

Pure tensor functions, no modules are built here:

* :func:`branch_table` - the dilated branches of a Dilated Reparam Block for kernel size ``K``
  (the released tables for K = 5..17 and a documented rule for every larger odd K);
* :func:`fuse_bn` - fold an eval-mode BatchNorm into the conv / linear layer that feeds it;
* :func:`dilated_to_dense` - Eq. (1): a ``k x k`` kernel applied with dilation ``r`` equals the
  ``((k-1)r+1)``-sized dense kernel ``conv_transpose2d(W, ones(1,1,1,1), stride=r)`` applied without dilation;
* :func:`pad_kernel` / :func:`merge_dilated_branches` - zero-pad every branch to ``K x K`` and sum.

The fusion arithmetic runs in float64 and is cast back to the kernel's dtype, so a float32 model loses no
accuracy to the merge itself (see ``docs/backbone.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "RELEASED_BRANCH_TABLES",
    "branch_table",
    "fuse_bn",
    "fold_ffn_tail",
    "dilated_to_dense",
    "pad_kernel",
    "embed_dilated",
    "merge_dilated_branches",
]

# (kernel sizes, dilations) of the dilated branches, exactly as in the released UniRepLKNet code.
RELEASED_BRANCH_TABLES: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    5: ((3, 3), (1, 2)),
    7: ((5, 3, 3), (1, 2, 3)),
    9: ((5, 5, 3, 3), (1, 2, 3, 4)),
    11: ((5, 5, 3, 3, 3), (1, 2, 3, 4, 5)),
    13: ((5, 7, 3, 3, 3), (1, 2, 3, 4, 5)),
    15: ((5, 7, 3, 3, 3), (1, 2, 3, 5, 7)),
    17: ((5, 9, 3, 3, 3), (1, 2, 4, 5, 7)),
}


def branch_table(kernel_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Return ``(kernel_sizes, dilations)`` of the dilated branches of a Dilated Reparam Block.

    K = 5..17 use the released tables. For every odd ``K >= 19`` the rule (``docs/backbone.md``) keeps the
    released shape of five branches - a dense 5x5 (r=1), one mid-size branch at r=2 and three 3x3 branches -
    and scales them with K:

    * mid branch: the largest odd ``k`` with ``(k-1)*2 + 1 <= K`` at dilation 2 (K=17 gives 9, as released);
    * 3x3 branches: with ``R = (K-1)//2`` (the largest dilation a 3x3 may use), dilations
      ``round(R/3), round(2R/3), R`` - sparse samples spread evenly up to the full K x K extent.

    Every branch satisfies ``(k-1)*r + 1 <= K``, so it can be zero-padded into the K x K kernel.
    """
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool):
        raise TypeError(f"kernel_size must be an int, got {type(kernel_size).__name__}")
    if kernel_size < 5 or kernel_size % 2 == 0:
        raise ValueError(f"a Dilated Reparam Block needs an odd kernel_size >= 5, got {kernel_size}")
    if kernel_size in RELEASED_BRANCH_TABLES:
        return RELEASED_BRANCH_TABLES[kernel_size]
    mid = (kernel_size + 1) // 2
    if mid % 2 == 0:
        mid -= 1
    big = (kernel_size - 1) // 2
    small = (int(round(big / 3)), int(round(2 * big / 3)), big)
    return (5, mid, 3, 3, 3), (1, 2, *small)


def fuse_bn(
    weight: torch.Tensor,
    bn: nn.BatchNorm2d | nn.BatchNorm1d,
    bias: torch.Tensor | None = None,
    differentiable: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm ``bn`` that follows a layer with ``weight`` (out channels first) and ``bias``.

    ``bn((W x + b)) = (W * t) x + (beta + (b - mu) * t)`` with ``t = gamma / sqrt(var + eps)``. Works for conv
    kernels ``(C_out, ...)`` and linear weights ``(C_out, C_in)``. Returns ``(weight, bias)`` in ``weight``'s dtype,
    computed in float64 - or, with ``differentiable=True``, in the input dtype and part of the autograd graph.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    out_dtype = weight.dtype

    def prep(t: torch.Tensor) -> torch.Tensor:
        return t if differentiable else t.detach().double()

    w = prep(weight)
    mean = prep(bn.running_mean)
    t = torch.rsqrt(prep(bn.running_var) + bn.eps)
    if bn.weight is not None:
        t = prep(bn.weight) * t
    fused_w = w * t.reshape(-1, *([1] * (w.dim() - 1)))
    fused_b = -mean * t if bias is None else (prep(bias) - mean) * t
    if bn.bias is not None:
        fused_b = prep(bn.bias) + fused_b
    return fused_w.to(out_dtype), fused_b.to(out_dtype)


def fold_ffn_tail(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    grn_beta: torch.Tensor | None,
    bn: nn.BatchNorm2d,
    gamma: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold GRN ``beta``, the BN after the last Linear and the layer scale ``gamma`` into that Linear.

    ``gamma * BN(W (y + beta) + b) = W' y + b'``: first ``b += W beta``, then :func:`fuse_bn`, then both scaled by
    ``gamma`` per output channel. float64 arithmetic, result in ``weight``'s dtype.
    """
    out_dtype = weight.dtype
    w = weight.detach().double()
    b = bias.detach().double() if bias is not None else None
    if grn_beta is not None:
        wb = w @ grn_beta.detach().double().reshape(-1)
        b = wb if b is None else b + wb
    w, b = fuse_bn(w, bn, b)
    if gamma is not None:
        g = gamma.detach().double()
        w, b = w * g[:, None], b * g
    return w.to(out_dtype), b.to(out_dtype)


def dilated_to_dense(kernel: torch.Tensor, dilation: int) -> torch.Tensor:
    """Eq. (1): the dense ``(C, 1, (k-1)r+1, (k-1)r+1)`` kernel equivalent to ``kernel`` applied with dilation r.

    Implemented as the paper states, a transposed convolution of the kernel with a 1x1 identity kernel and
    stride ``r`` (inserting ``r-1`` zeros between the taps).
    """
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    if dilation == 1:
        return kernel
    if kernel.dim() != 4 or kernel.shape[1] != 1:
        raise ValueError(f"expected a depthwise kernel of shape (C, 1, k, k), got {tuple(kernel.shape)}")
    identity = torch.ones(1, 1, 1, 1, dtype=kernel.dtype, device=kernel.device)
    return F.conv_transpose2d(kernel, identity, stride=dilation)


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a square odd ``(..., k, k)`` kernel symmetrically to ``(..., size, size)``."""
    k = kernel.shape[-1]
    if kernel.shape[-2] != k:
        raise ValueError(f"expected a square kernel, got {tuple(kernel.shape[-2:])}")
    if k > size or (size - k) % 2:
        raise ValueError(f"cannot centre-pad a {k}x{k} kernel to {size}x{size}")
    p = (size - k) // 2
    return F.pad(kernel, (p, p, p, p)) if p else kernel


def embed_dilated(kernel: torch.Tensor, dilation: int, size: int) -> torch.Tensor:
    """``pad_kernel(dilated_to_dense(kernel, dilation), size)`` in one strided assignment (~100x faster).

    Used on every eval forward of an un-merged Dilated Reparam Block; equality with Eq. (1) is tested.
    Differentiable w.r.t. ``kernel``.
    """
    k = kernel.shape[-1]
    extent = (k - 1) * dilation + 1
    if extent > size or (size - extent) % 2:
        raise ValueError(f"a {k}x{k} kernel with dilation {dilation} does not centre in {size}x{size}")
    off = (size - extent) // 2
    out = kernel.new_zeros(*kernel.shape[:-2], size, size)
    out[..., off:off + extent:dilation, off:off + extent:dilation] = kernel
    return out


def merge_dilated_branches(
    kernel: torch.Tensor,
    bias: torch.Tensor,
    branches: Sequence[tuple[torch.Tensor, torch.Tensor, int]],
    differentiable: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum the (BN-folded) K x K ``kernel``/``bias`` and each ``(kernel, bias, dilation)`` branch into one conv.

    Each branch kernel is densified by Eq. (1), zero-padded to K x K and added; biases add up. The sum is taken
    in float64 and returned in ``kernel``'s dtype - or, with ``differentiable=True``, kept in the autograd graph.
    """
    size = kernel.shape[-1]
    out_dtype = kernel.dtype

    def prep(t: torch.Tensor) -> torch.Tensor:
        return t if differentiable else t.detach().double()

    total_k, total_b = prep(kernel), prep(bias)
    for bk, bb, r in branches:
        if differentiable:  # the per-forward path: same result as Eq. (1), without a transposed conv
            total_k = total_k + embed_dilated(bk, r, size)
        else:
            total_k = total_k + pad_kernel(dilated_to_dense(prep(bk), r), size)
        total_b = total_b + prep(bb)
    return total_k.to(out_dtype), total_b.to(out_dtype)
