"""The parallel depthwise branches of a block on a tiny map as one batched matrix product (issue 15 item 5).

On a map of ``H x W <= DENSE_MAX_PIXELS`` pixels (the forecaster's 4x6 and 2x3 stages) a depthwise convolution is a
small dense linear map per channel: output pixel ``o`` is ``sum_i M_c[o, i] x_c[i]`` with ``M_c[o, i]`` the kernel
tap that links them (or 0). A Dilated Reparam Block in training runs six such convolutions on the same input
(the K x K kernel and five dilated branches), each a separate kernel call whose fixed cost (~0.4 ms per direction
at 32 x 160 x 4 x 6 on the 2-core CPU) is ~30x its arithmetic. Here all branches' matrices are gathered from the
kernels at once (``M = flat_weights[:, index]``, the index cached per geometry) and applied by one ``bmm`` over the
channels; autograd gives both gradients (the gather's backward adds every position of a tap into that tap).
The function is the same convolution (zero padding, cross-correlation as ``F.conv2d``), tested against it in
float64.

:func:`dense_branches_bn` goes further for a block in training: the sum of the branches' training-mode BatchNorms,
and the block's BatchNorm after it, is one linear map per channel whose coefficients need only each branch's batch
mean and variance. Those come from the input's per-channel mean ``x_bar`` (n) and centred second moments
``S = sum_b (x_b - x_bar)(x_b - x_bar)^T`` (n x n): branch ``M`` has mean ``mean_p (M x_bar)_p`` and biased variance
``(tr(M S M^T) / B + sum_p ((M x_bar)_p - mean)^2) / n`` (both terms non-negative: no cancellation). So no branch
output is ever formed: the block applies one n x n matrix per channel, and autograd differentiates the statistics
as BatchNorm's backward does. Running statistics are updated as ``nn.BatchNorm2d`` updates them.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import nn

__all__ = ["DENSE_MAX_PIXELS", "FOLD_MIN_IMAGES", "dense_branches_bn", "dense_depthwise", "foldable_bn", "tap_index"]

#: maps with at most this many pixels run their depthwise branches as one dense product (4x6 = 24)
DENSE_MAX_PIXELS = 24
#: images per batch from which :func:`dense_branches_bn` replaces the branch outputs and their BatchNorms: a stage-3
#: block forward + backward on the 2-core CPU, folded / not (channels-last branches): 0.86x at 32 images, 0.99x at
#: 64, 1.14x at 128, 1.10x at 350 under bf16 autocast; the whole 3850-station bf16 step 1.08x (docs/benchmarks.md)
FOLD_MIN_IMAGES = 64

#: one branch's geometry: kernel (kh, kw), dilation (dh, dw), top/left padding (pt, pl)
Branch = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


@lru_cache(maxsize=64)
def tap_index(h: int, w: int, branches: tuple[Branch, ...]) -> torch.Tensor:
    """``(len(branches) * h * w, h * w)`` int64: for output pixel ``o`` of branch ``n`` (row ``n*h*w + o``) and
    input pixel ``i``, the position of the linking tap in the concatenated flattened kernels, or the last position
    (a zero) where no tap links them."""
    sizes = [kh * kw for (kh, kw), _, _ in branches]
    zero = sum(sizes)
    n = h * w
    idx = torch.full((len(branches), n, n), zero, dtype=torch.int64)
    offset = 0
    for b, ((kh, kw), (dh, dw), (pt, pl)) in enumerate(branches):
        for oi in range(h):
            for oj in range(w):
                for a in range(kh):
                    ii = oi + a * dh - pt
                    if not 0 <= ii < h:
                        continue
                    for c in range(kw):
                        jj = oj + c * dw - pl
                        if 0 <= jj < w:
                            idx[b, oi * w + oj, ii * w + jj] = offset + a * kw + c
        offset += sizes[b]
    return idx.reshape(len(branches) * n, n)


def _branch_maps(weights: Sequence[torch.Tensor], dilations: Sequence[tuple[int, int]],
                 paddings: Sequence[tuple[int, int]], h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """Every branch's dense map on an ``h x w`` map, ``(C, branches * h * w, h * w)`` in ``dtype``, gathered from the
    kernels at once (:func:`tap_index`)."""
    geo = tuple(((int(k.shape[-2]), int(k.shape[-1])), (int(d[0]), int(d[1])), (int(p[0]), int(p[1])))
                for k, d, p in zip(weights, dilations, paddings))
    idx = tap_index(h, w, geo)
    C = weights[0].shape[0]
    flat = torch.cat([k.reshape(C, -1) for k in weights] + [weights[0].new_zeros(C, 1)], dim=1)
    # index_select, not flat[:, idx]: its backward (index_add_) took 0.9 ms against index_put_'s 2.0 (160 channels);
    # gathered in the weights' dtype, then cast: in bf16 the gather and its index_add backward ran 1.51 ms against
    # 0.85 for float32 and the cast (160 channels, 4x6, forward + backward)
    return torch.index_select(flat, 1, idx.flatten()).view(C, idx.shape[0], h * w).to(dtype)


def dense_depthwise(x: torch.Tensor, weights: Sequence[torch.Tensor], dilations: Sequence[tuple[int, int]],
                    paddings: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Every depthwise conv ``F.conv2d(x, w, padding=p, dilation=d, groups=C)`` of ``weights`` (each (C, 1, kh, kw),
    symmetric padding ``p`` = (top, left), output size = input size) on ``x`` (B, C, H, W), in one product; returns
    the outputs (B, C, H, W), channels-last, in order, in ``x``'s dtype, or under autocast in its dtype (as
    ``F.conv2d``)."""
    B, C, H, W = x.shape
    n = H * W
    # x's dtype throughout, as run_dwconv does under autocast (bfloat16 activations, float32 weights)
    m = _branch_maps(weights, dilations, paddings, H, W, x.dtype)
    xc = x.reshape(B, C, n).transpose(0, 1)  # (C, B, n)
    # one copy into (branch, B, n, C): every output a dense channels-last NCHW tensor (BatchNorm on a channel-major
    # strided view ran 3x slower than on the kernels' output; with channels last it runs its vectorised kernel);
    # unbind, not y[k]: each slice's backward would zero-fill a y-sized gradient
    y = torch.bmm(xc, m.transpose(1, 2)).view(C, B, len(weights), n).permute(2, 1, 3, 0).contiguous()
    return [t.view(B, H, W, C).permute(0, 3, 1, 2) for t in y.unbind(0)]


def foldable_bn(bn: nn.Module) -> bool:
    """Whether :func:`dense_branches_bn` can stand in for ``bn``: a training ``BatchNorm2d`` with affine parameters
    and running statistics."""
    return (isinstance(bn, nn.BatchNorm2d) and bn.training and bn.affine and bn.track_running_stats
            and bn.running_mean is not None and bn.running_var is not None)


def _moments(m: torch.Tensor, xbar: torch.Tensor, s: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mean and biased variance, (C, k), of the k branch outputs ``M x`` for maps ``m`` (C, k*n, n), input
    mean ``xbar`` (C, n, 1) and centred second moments ``s`` (C, n, n) of ``batch`` samples."""
    C, kn, n = m.shape
    quad = (torch.bmm(m, s) * m).sum(-1).view(C, kn // n, n).sum(-1)  # tr(M S M^T) per branch
    mx = torch.bmm(m, xbar).view(C, kn // n, n)  # M x_bar
    mean = mx.mean(-1)
    spread = (mx - mean.unsqueeze(-1)).square().sum(-1)
    return mean, (quad / batch + spread) / n


@torch.no_grad()
def _update_running(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """``bn``'s running statistics after one training batch of ``count`` values per channel, as BatchNorm does."""
    assert bn.num_batches_tracked is not None and bn.running_mean is not None and bn.running_var is not None
    bn.num_batches_tracked.add_(1)
    factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    rm, rv = bn.running_mean, bn.running_var
    rm.mul_(1 - factor).add_(mean.to(rm.dtype), alpha=factor)
    rv.mul_(1 - factor).add_(var.to(rv.dtype) * (count / (count - 1)), alpha=factor)


def _affine(bns: Sequence[nn.BatchNorm2d], mean: torch.Tensor, var: torch.Tensor, count: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-branch scales ``gamma / sqrt(var + eps)`` (C, k) and summed shifts ``sum(beta - scale * mean)`` (C,);
    the running statistics of ``bns`` updated from the (detached) batch statistics."""
    for j, bn in enumerate(bns):
        _update_running(bn, mean[:, j].detach(), var[:, j].detach(), count)
    dt = mean.dtype
    gamma = torch.stack([bn.weight.to(dt) for bn in bns], 1)
    beta = torch.stack([bn.bias.to(dt) for bn in bns], 1)
    eps = torch.tensor([bn.eps for bn in bns], dtype=dt, device=mean.device)
    scale = gamma * torch.rsqrt(var + eps)
    return scale, (beta - scale * mean).sum(1)


def dense_branches_bn(x: torch.Tensor, weights: Sequence[torch.Tensor], dilations: Sequence[tuple[int, int]],
                      paddings: Sequence[tuple[int, int]], bns: Sequence[nn.BatchNorm2d],
                      outer: nn.BatchNorm2d | None = None) -> torch.Tensor:
    """``outer(sum_k bns[k](conv_k(x)))`` in training mode (``outer`` optional), every ``conv_k`` a depthwise conv as
    in :func:`dense_depthwise`, every BatchNorm :func:`foldable_bn`; their running statistics are updated. Computed
    in float32 at least with autocast off, returned in the dtype the convolutions would return (``x``'s, or the
    autocast dtype for a float32 or half ``x`` under autocast), see the module docstring."""
    if x.shape[0] * x.shape[2] * x.shape[3] < 2:
        raise ValueError(f"BatchNorm in training needs more than 1 value per channel, got input {tuple(x.shape)}")
    out_dtype = x.dtype
    if x.dtype in (torch.float32, torch.bfloat16, torch.float16) and torch.is_autocast_enabled(x.device.type):
        out_dtype = torch.get_autocast_dtype(x.device.type)
    with torch.autocast(x.device.type, enabled=False):
        return _folded(x, weights, dilations, paddings, bns, outer).to(out_dtype)


def _folded(x: torch.Tensor, weights: Sequence[torch.Tensor], dilations: Sequence[tuple[int, int]],
            paddings: Sequence[tuple[int, int]], bns: Sequence[nn.BatchNorm2d], outer: nn.BatchNorm2d | None
            ) -> torch.Tensor:
    """:func:`dense_branches_bn` in float32 at least (float64 stays float64), without autocast."""
    B, C, H, W = x.shape
    n, k = H * W, len(weights)
    acc = torch.promote_types(x.dtype, torch.float32)
    m = _branch_maps(weights, dilations, paddings, H, W, acc)  # every branch's map, (C, k*n, n)
    xc = x.reshape(B, C, n).transpose(0, 1).to(acc)  # (C, B, n)
    xbar = xc.mean(1).unsqueeze(-1)  # (C, n, 1)
    xt = xc - xbar.transpose(1, 2)
    s = torch.bmm(xt.transpose(1, 2), xt)  # (C, n, n)
    mean, var = _moments(m, xbar, s, B)
    scale, shift = _affine(bns, mean, var, B * n)
    meff = torch.bmm(scale.unsqueeze(1), m.view(C, k, n * n)).view(C, n, n)  # sum_k scale_k M_k
    if outer is not None:
        o_mean, o_var = _moments(meff, xbar, s, B)  # of meff x; the constant shift moves the mean only
        o_scale, o_shift = _affine([outer], o_mean + shift.unsqueeze(1), o_var, B * n)
        meff = meff * o_scale.view(C, 1, 1)
        shift = o_scale[:, 0] * shift + o_shift
    y = torch.baddbmm(shift.view(C, 1, 1), xc, meff.transpose(1, 2))  # (C, B, n)
    return y.permute(1, 2, 0).contiguous().view(B, H, W, C).permute(0, 3, 1, 2)  # channels last, as above
