"""bfloat16 path of the own CPU depthwise op: bf16 storage, float32 arithmetic, float64 grad-weight sums.

Reference: float64 ``F.conv2d`` (and its autograd) on the same bf16-rounded inputs. The kernels differ from it by
(1) float32 accumulation, at most ``n * 2**-24 * sum|terms|`` for ``n`` terms (the classic gamma_n bound), and
(2) one final rounding to bfloat16 (8 significant bits, round to nearest even): at most ``2**-8 * |value|`` for a
normal value. Each element must lie within the sum of both bounds, and most (>= 97 %) must equal the reference
rounded to bfloat16 exactly (rounding to nearest, not truncation; an accumulation error can flip a near-tie).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from urlk_forecast.ops import cpu_kernels, dwconv2d, same_padding, use_backend

BF16_U = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)
F32_U = 2.0**-24


@pytest.fixture(scope="module", autouse=True)
def _poison():
    """Output buffers of the own kernels start as NaN: an element a bf16 store misses shows up."""
    old = os.environ.get("URLK_DWCONV_POISON")
    os.environ["URLK_DWCONV_POISON"] = "1"
    yield
    if old is None:
        os.environ.pop("URLK_DWCONV_POISON", None)
    else:
        os.environ["URLK_DWCONV_POISON"] = old


def reference(x, w, b, pads, dil, gy):
    """float64 output, grad-input, grad-weight, grad-bias of ``F.conv2d`` from the given (bf16-rounded) tensors."""
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    b64 = b.detach().double() if b is not None else None
    t, bo, l, r = pads
    y = F.conv2d(F.pad(x64, (l, r, t, bo)), w64, b64, 1, 0, dil, x.shape[1])
    y.backward(gy.detach().double())
    return y.detach(), x64.grad, w64.grad


def check_close(got, ref, scale, terms, rounded=True, what=""):
    """``got`` within float32 accumulation error (``terms`` terms, ``scale`` = the sum of |terms|) plus, when the
    result is stored in bf16 (``rounded``), one bf16 rounding; and mostly the correctly rounded reference."""
    got = got.detach()
    assert torch.isfinite(got.float()).all(), f"{what}: non-finite values (unwritten poisoned elements?)"
    err = (got.double() - ref).abs()
    bound = (BF16_U * ref.abs() if rounded else 0.0) + 1.01 * terms * F32_U * scale + 1e-300
    worst = float((err / bound).max())
    assert worst <= 1.0, f"{what}: error {worst:.3f} x the bound"
    if rounded:
        exact = float((got == ref.to(got.dtype)).double().mean())
        assert exact >= 0.97, f"{what}: only {exact:.3f} of the elements are the correctly rounded reference"


def check_call(B, C, H, W, kh, kw, dil, pads, bias=True, wdtype=torch.bfloat16, seed=0):
    """Own forward/grad-input/grad-weight for a bf16 input against the float64 reference."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g).bfloat16()
    w = (torch.randn(C, 1, kh, kw, generator=g) / (kh * kw) ** 0.5).to(wdtype)
    b = torch.randn(C, generator=g).bfloat16() if bias else None
    ho = H + pads[0] + pads[1] - dil[0] * (kh - 1)
    wo = W + pads[2] + pads[3] - dil[1] * (kw - 1)
    gy = torch.randn(B, C, ho, wo, generator=g).bfloat16()
    y = cpu_kernels.forward(x, w, b, pads, dil)
    gx, gw = cpu_kernels.backward(x, gy, w, pads, dil)
    assert y.dtype == gx.dtype == torch.bfloat16 and gw.dtype == wdtype
    ry, rgx, rgw = reference(x, w, b, pads, dil, gy)
    ay, agx, agw = reference(x.abs(), w.abs(), b.abs() if b is not None else None, pads, dil, gy.abs())
    check_close(y, ry, ay, kh * kw + 1, what="output")
    check_close(gx, rgx, agx, kh * kw, what="grad_input")
    check_close(gw, rgw, agw, ho * wo, rounded=wdtype == torch.bfloat16, what="grad_weight")


# --------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize(
    "B,C,H,W,k,d",
    [
        (2, 20, 16, 24, 13, 1),  # forecaster stage 1 (64x96 image): spatial forward, spatial backward
        (2, 20, 8, 12, 7, 1),    # stage 2: channel-blocked forward and backward, 20 channels = 1 1/4 blocks
        (2, 17, 4, 6, 13, 1),    # stage 3: K larger than the map
        (2, 16, 2, 3, 13, 1),    # stage 4: tiny map, almost every tap in the padding
        (1, 3, 2, 3, 3, 2),      # tiny map, dilated
        (2, 5, 20, 21, 5, 3),    # dilated spatial kernels
        (1, 4, 40, 37, 31, 1),   # K = 31, width not a multiple of the lanes
        (3, 2, 17, 1, 5, 1),     # width 1
    ],
)
def test_bf16_matches_float64_reference(B, C, H, W, k, d):
    check_call(B, C, H, W, k, k, (d, d), same_padding(k, d))


@pytest.mark.parametrize("kh,kw,pads", [(4, 2, (1, 2, 0, 1)), (1, 5, (0, 0, 2, 2)), (3, 3, (0, 0, 0, 0))])
def test_bf16_even_rectangular_kernels_and_padding(kh, kw, pads):
    check_call(2, 6, 9, 11, kh, kw, (1, 1), pads, bias=False)


@pytest.mark.parametrize("shape", [(2, 20, 16, 24), (2, 20, 4, 6)])
def test_float32_master_weight_gets_a_float32_gradient(shape):
    """A bf16 input with its float32 weight: the weight gradient is float32 (no bf16 rounding), float32-accurate."""
    check_call(*shape, 5, 5, (1, 1), same_padding(5), wdtype=torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["32x4", "16x8", "16x4", "8x4", "4x4", "cb8", "cb4"])
def test_every_register_block_in_bf16(variant, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_FORCE_VARIANT", variant)
    check_call(2, 18, 11, 13, 5, 5, (1, 1), same_padding(5))
    check_call(1, 18, 11, 13, 3, 3, (2, 2), same_padding(3, 2))


def test_bf16_same_results_for_any_thread_count():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 32, 16, 24, generator=g).bfloat16()
    w = torch.randn(32, 1, 7, 7, generator=g).bfloat16()
    gy = torch.randn(4, 32, 16, 24, generator=g).bfloat16()
    old = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append((cpu_kernels.forward(x, w, None, 3, 1), *cpu_kernels.backward(x, gy, w, 3, 1)))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    # grad-weight: float64 sums of the same float32 partials, in a different order; then one bf16 rounding
    assert (outs[0][2].double() - outs[1][2].double()).abs().max() <= BF16_U * outs[0][2].double().abs().max()


# ------------------------------------------------------------------------------------------------ autocast
def test_op_under_autocast_stays_bf16(monkeypatch):
    """Under ``torch.autocast("cpu", bfloat16)`` the own kernels get bf16 tensors and return bf16: no cast to
    float32 around them; the float32 leaves get float32 gradients equal to the reference on the bf16-cast values."""
    seen = []
    real_fwd, real_bwd = cpu_kernels.forward, cpu_kernels.backward

    def fwd(x, w, bias, pad, dil, out=None):
        seen.append(("fwd", x.dtype, w.dtype))
        return real_fwd(x, w, bias, pad, dil, out)

    def bwd(x, gy, w, pad, dil, need_input=True, need_weight=True):
        seen.append(("bwd", x.dtype, gy.dtype))
        return real_bwd(x, gy, w, pad, dil, need_input, need_weight)

    monkeypatch.setattr(cpu_kernels, "forward", fwd)
    monkeypatch.setattr(cpu_kernels, "backward", bwd)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 20, 16, 24, generator=g).requires_grad_()
    w = (torch.randn(20, 1, 13, 13, generator=g) / 13).requires_grad_()
    b = torch.randn(20, generator=g).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16), use_backend("own"):
        y = dwconv2d(x, w, b)
    assert y.dtype == torch.bfloat16
    assert "ToCopy" not in y.grad_fn.name()  # the op's own node produced y: no cast back after it
    assert all(t.dtype == torch.bfloat16 for t in y.grad_fn.saved_tensors)
    gy = torch.randn(y.shape, generator=g).bfloat16()
    y.backward(gy)
    assert seen == [("fwd", torch.bfloat16, torch.bfloat16), ("bwd", torch.bfloat16, torch.bfloat16)]
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == torch.float32
    pads = same_padding(13)
    ry, rgx, rgw = reference(x.bfloat16(), w.bfloat16(), b.bfloat16(), pads, (1, 1), gy)
    ay, agx, agw = reference(x.bfloat16().abs(), w.bfloat16().abs(), b.bfloat16().abs(), pads, (1, 1), gy.abs())
    check_close(y, ry, ay, 13 * 13 + 1, what="output")
    check_close(x.grad.bfloat16(), rgx, agx, 13 * 13, what="grad_input")  # produced in bf16, cast up by autograd
    check_close(w.grad.bfloat16(), rgw, agw, 16 * 24, what="grad_weight")
    assert torch.allclose(b.grad.double(), gy.double().sum((0, 2, 3)), rtol=BF16_U, atol=0)


def test_bf16_supports_and_rejects():
    x = torch.zeros(1, 2, 5, 5, dtype=torch.bfloat16)
    assert cpu_kernels.supports(x, torch.zeros(2, 1, 3, 3, dtype=torch.bfloat16), 1, 1)
    assert cpu_kernels.supports(x, torch.zeros(2, 1, 3, 3), 1, 1)  # float32 master weight
    assert not cpu_kernels.supports(x, torch.zeros(2, 1, 3, 3, dtype=torch.float64), 1, 1)
    assert not cpu_kernels.supports(x.float(), torch.zeros(2, 1, 3, 3, dtype=torch.bfloat16), 1, 1)
    with pytest.raises(ValueError, match="bfloat16"):
        cpu_kernels.forward(x.half(), torch.zeros(2, 1, 3, 3, dtype=torch.float16), None, 1, 1)


# ----------------------------------------------------------------------------------------- the conversions
def test_store_rounds_to_nearest_even_like_torch():
    """The float32 -> bf16 store of the kernels' copies (``cpu_bf16.get``) against torch's conversion, on random
    values over the whole exponent range and on the edge cases: ties (to even), the largest finite values (round up
    to infinity), infinities, subnormals, and NaN (stays NaN, whatever its payload)."""
    from numba import njit

    from urlk_forecast.ops.cpu_bf16 import get, put

    @njit
    def store(dst, src):
        get(dst, src, 0, dst.shape[1], np.float32(0))

    @njit
    def load(dst, src):
        put(dst, 0, src.shape[1], src)

    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32)
    special = np.array([0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0x7F7FFFFF, 0x7F7F8000, 0x7F7F7FFF,
                        0x7F800000, 0xFF800000, 0x00000001, 0x00018000, 0x80008000, 0x7F800001, 0xFFC00000,
                        0x7FFFFFFF, 0x3F800000], np.uint32)
    bits = np.concatenate([bits, special])
    f32 = bits.view(np.float32)
    nonzero = f32 != 0  # -0.0 + 0.0 is +0.0: the store adds the bias (zero here)
    src, out = f32[nonzero], np.empty((1, int(nonzero.sum())), np.uint16)
    store(out, src)
    ref = torch.from_numpy(src.copy()).bfloat16().view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(src)
    assert np.array_equal(out[0][~nan], ref[~nan])
    back = np.empty(out.shape[1], np.float32)
    load(back, out)
    assert np.isnan(back[nan]).all() and not np.isnan(back[~nan]).any()
    assert np.array_equal(back[~nan], torch.from_numpy(ref[~nan].view(np.int16)).view(torch.bfloat16).float().numpy())
