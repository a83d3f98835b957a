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
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

__all__ = ["DENSE_MAX_PIXELS", "dense_depthwise", "tap_index"]

#: maps with at most this many pixels run their depthwise branches as one dense product (4x6 = 24)
DENSE_MAX_PIXELS = 24

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


def dense_depthwise(x: torch.Tensor, weights: Sequence[torch.Tensor], dilations: Sequence[tuple[int, int]],
                    paddings: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Every depthwise conv ``F.conv2d(x, w, padding=p, dilation=d, groups=C)`` of ``weights`` (each (C, 1, kh, kw),
    symmetric padding ``p`` = (top, left), output size = input size) on ``x`` (B, C, H, W), in one product; returns
    the outputs (B, C, H, W) in order, in ``x``'s dtype, or under autocast in its dtype (as ``F.conv2d``)."""
    B, C, H, W = x.shape
    n = H * W
    geo = tuple(((int(w.shape[-2]), int(w.shape[-1])), (int(d[0]), int(d[1])), (int(p[0]), int(p[1])))
                for w, d, p in zip(weights, dilations, paddings))
    idx = tap_index(H, W, geo)
    # x's dtype throughout, as run_dwconv does under autocast (bfloat16 activations, float32 weights)
    flat = torch.cat([w.reshape(C, -1) for w in weights] + [weights[0].new_zeros(C, 1)], dim=1).to(x.dtype)
    # index_select, not flat[:, idx]: its backward (index_add_) took 0.9 ms against index_put_'s 2.0 (160 channels)
    m = torch.index_select(flat, 1, idx.flatten()).view(C, idx.shape[0], n)  # (C, branches*n, n)
    xc = x.reshape(B, C, n).transpose(0, 1)  # (C, B, n)
    # one copy into (branch, B, C, n): every output contiguous NCHW (BatchNorm on a channel-major strided view ran 3x
    # slower than the kernels' output); unbind, not y[k]: each slice's backward would zero-fill a y-sized gradient
    y = torch.bmm(xc, m.transpose(1, 2)).view(C, B, len(weights), n).permute(2, 1, 0, 3).contiguous()
    return [t.view(B, C, H, W) for t in y.unbind(0)]
