"""The small-map depthwise kernels (urlk_forecast.ops.cpu_small) against F.conv2d recomputed in float64.

Each geometry compiles its own kernels (seconds, cached on disk), so the cases are few: the forecaster's 8x12 map
with a dilated K=3 (grad-weight on the small-map kernel) and K=13 (grad-weight too large for registers: the general
kernel), a 24-wide map split into register blocks, an even kernel (asymmetric "same" padding), and bfloat16.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from urlk_forecast.ops import cpu_kernels, cpu_small, same_padding, small_codegen

CASES = [  # B, C, H, W, K, dilation
    (3, 5, 8, 12, 3, 5),
    (2, 3, 8, 12, 13, 1),
    (2, 3, 9, 24, 3, 1),
    (2, 4, 8, 12, 4, 1),
    (2, 3, 16, 24, 13, 1),  # width 24: two vectors a row, 4 rows a block
]


def _reference(x, w, bias, pads, dil, gy):
    """Output and both gradients from torch's conv in float64 (asymmetric padding applied with F.pad)."""
    t, b, l, r = pads
    xr = x.double().requires_grad_()
    wr = w.double().requires_grad_()
    y = F.conv2d(F.pad(xr, (l, r, t, b)), wr, None if bias is None else bias.double(), 1, 0, dil, x.shape[1])
    y.backward(gy.double())
    return y.detach(), xr.grad, wr.grad


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_small_kernels_match_float64_conv(case, monkeypatch):
    monkeypatch.delenv(cpu_small.ENV, raising=False)
    B, C, H, W, K, d = case
    gen = torch.Generator().manual_seed(sum(case))
    x = torch.randn(B, C, H, W, generator=gen)
    w = torch.randn(C, 1, K, K, generator=gen)
    bias = torch.randn(C, generator=gen)
    gy = torch.randn(B, C, H, W, generator=gen)
    pads = same_padding(K, d)
    g = cpu_small.geometry(x, w, pads, (d, d))
    assert g == (H, W, K, K, d, d, pads[0], pads[2])  # the call really runs on the small-map kernels
    assert small_codegen.gw_fits(g) == (K * K * W <= 320)
    y_ref, gx_ref, gw_ref = _reference(x, w, bias, pads, (d, d), gy)
    y = cpu_kernels.forward(x, w, bias, pads, d)
    gx, gw = cpu_kernels.backward(x, gy, w, pads, d)
    assert y.shape == y_ref.shape and gx.shape == x.shape and gw.shape == w.shape
    scale = K * K * max(1, B * H * W // 16)
    torch.testing.assert_close(y.double(), y_ref, rtol=0, atol=1e-6 * K * K)
    torch.testing.assert_close(gx.double(), gx_ref, rtol=0, atol=1e-6 * K * K)
    torch.testing.assert_close(gw.double(), gw_ref, rtol=0, atol=1e-6 * scale)
    # the gradients one at a time, and a forward into a given buffer, agree with the joint call
    assert torch.equal(cpu_kernels.backward(x, gy, w, pads, d, need_weight=False)[0], gx)
    assert torch.equal(cpu_kernels.backward(x, gy, w, pads, d, need_input=False)[1], gw)
    out = torch.full_like(y, float("nan"))
    assert cpu_kernels.forward(x, w, bias, pads, d, out=out) is out and torch.equal(out, y)


def test_grad_weight_does_not_depend_on_the_thread_count(monkeypatch):
    """Each channel is summed by one thread in a fixed order: bit-identical results on 1 and 2 threads."""
    monkeypatch.setattr(cpu_small, "MIN_WORK_PER_THREAD", 1)  # the pool's threshold, and the team's
    monkeypatch.setattr(cpu_small, "MIN_WORK_PER_THREAD_TEAM", 1)
    gen = torch.Generator().manual_seed(3)
    x, gy = torch.randn(40, 6, 8, 12, generator=gen), torch.randn(40, 6, 8, 12, generator=gen)
    w = torch.randn(6, 1, 3, 3, generator=gen)
    pads = same_padding(3, 5)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_kernels.backward(x, gy, w, pads, 5)
        torch.set_num_threads(2)
        two = cpu_kernels.backward(x, gy, w, pads, 5)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_bfloat16_storage_rounds_like_torch(monkeypatch):
    """bfloat16 in and out, float32 inside: the float32 result rounded once to bfloat16 (1 ulp of slack)."""
    monkeypatch.delenv(cpu_small.ENV, raising=False)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 5, 8, 12, generator=gen).bfloat16()
    w = torch.randn(5, 1, 3, 3, generator=gen).bfloat16()
    bias = torch.randn(5, generator=gen).bfloat16()
    gy = torch.randn(3, 5, 8, 12, generator=gen).bfloat16()
    pads = same_padding(3, 5)
    y_ref, gx_ref, gw_ref = _reference(x, w, bias, pads, (5, 5), gy)
    y = cpu_kernels.forward(x, w, bias, pads, 5)
    gx, gw = cpu_kernels.backward(x, gy, w, pads, 5)
    assert y.dtype == gx.dtype == gw.dtype == torch.bfloat16
    for got, ref in ((y, y_ref), (gx, gx_ref), (gw, gw_ref)):
        torch.testing.assert_close(got.double(), ref, rtol=2 ** -7, atol=1e-5 * ref.abs().max().item())


def test_switch_and_eligibility(monkeypatch):
    """URLK_DWCONV_SMALL=0 turns the kernels off; maps, kernels and dtypes outside their range are declined."""
    x, w = torch.zeros(1, 2, 8, 12), torch.zeros(2, 1, 3, 3)
    monkeypatch.setenv(cpu_small.ENV, "0")
    assert cpu_kernels._small() is None
    monkeypatch.delenv(cpu_small.ENV)
    assert cpu_kernels._small() is cpu_small
    same = same_padding(3, 1)
    assert cpu_small.geometry(x, w, same, (1, 1)) is not None
    assert cpu_small.geometry(x, w, (0, 0, 0, 0), (1, 1)) is None  # "valid": not a same-size output
    assert cpu_small.geometry(x.double(), w.double(), same, (1, 1)) is None
    assert cpu_small.geometry(torch.zeros(1, 2, 32, 32), w, same, (1, 1)) is None
    assert cpu_small.geometry(torch.zeros(1, 2, 7, 7), w, same, (1, 1)) is None
    big = torch.zeros(2, 1, 15, 15)
    assert cpu_small.geometry(x, big, same_padding(15, 1), (1, 1)) is None


def test_generated_rows_read_only_the_image():
    """The forward code has one FMA per (output row, kernel row) pair whose input row is inside the map."""
    g = (8, 12, 13, 13, 1, 1, 6, 6)
    pairs = small_codegen._triples(g, 0, 8)
    assert len(pairs) == sum(1 for i in range(8) for a in range(13) if 0 <= i + a - 6 < 8) == 62
    assert all(0 <= r < 8 for _, r, _ in pairs)
    src = "\n".join(small_codegen.fwd_source(g))
    assert src.count("a0_0 += ") == sum(1 for i, _, _ in pairs if i == 0)


@pytest.mark.parametrize("g", [(8, 12, 13, 13, 1, 1, 6, 6), (8, 12, 7, 7, 2, 2, 6, 6), (8, 12, 3, 3, 5, 5, 5, 5),
                               (8, 12, 4, 4, 1, 1, 2, 1), (9, 24, 3, 3, 1, 1, 1, 1), (8, 12, 3, 3, 13, 13, 13, 13)])
def test_column_loop_covers_exactly_the_columns_that_read_the_image(g):
    """The forward loops over the kernel columns [b0, b1) of every (output column, kernel column) pair that reads
    the image and no column outside (whose every read would be padding), on whole rows of lanes."""
    _, W, _, KW, _, dw, _, pl = g
    b0, b1 = small_codegen._col_range(g)
    reads = [b for b in range(KW) if any(0 <= j + b * dw - pl < W for j in range(W))]
    assert list(range(b0, b1)) == reads
    src = "\n".join(small_codegen.fwd_source(g))
    assert f"for b in range(np.uint64({b0}), np.uint64({b1})):" in src
    V = small_codegen.lanes(W)
    assert f"a0_{V - 1} += " in src and f"a0_{V} += " not in src


def test_large_batch_grad_weight_goes_to_the_general_kernel(monkeypatch):
    """From GW_GENERAL_BATCH images a register-heavy grad-weight (K=5 at width 12) runs on the general kernel, K=3
    (at width 12 or 24) stays; the gradients still match float64, and the small batch keeps the small-map kernel."""
    monkeypatch.delenv(cpu_small.ENV, raising=False)
    B = cpu_small.GW_GENERAL_BATCH
    g5, g3 = (8, 12, 5, 5, 1, 1, 2, 2), (8, 12, 3, 3, 5, 5, 5, 5)
    assert not cpu_small.takes_grad_weight(g5, B) and cpu_small.takes_grad_weight(g5, B - 1)
    assert cpu_small.takes_grad_weight((16, 24, 3, 3, 1, 1, 1, 1), B)
    assert cpu_small.takes_grad_weight(g3, B) and not cpu_small.takes_grad_weight((8, 12, 13, 13, 1, 1, 6, 6), 2)
    gen = torch.Generator().manual_seed(7)
    x, gy = torch.randn(B, 2, 8, 12, generator=gen), torch.randn(B, 2, 8, 12, generator=gen)
    w = torch.randn(2, 1, 5, 5, generator=gen)
    pads = same_padding(5, 1)
    assert cpu_small.grad_weight(x, gy, w, cpu_small.geometry(x, w, pads, (1, 1))) is None
    _, gx_ref, gw_ref = _reference(x, w, None, pads, (1, 1), gy)
    gx, gw = cpu_kernels.backward(x, gy, w, pads, 1)
    torch.testing.assert_close(gx.double(), gx_ref, rtol=0, atol=1e-6 * 25)
    torch.testing.assert_close(gw.double(), gw_ref, rtol=0, atol=1e-6 * 25 * (B * 96 // 16))
