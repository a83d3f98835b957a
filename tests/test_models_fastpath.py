"""The fast training paths of issue 15 item 5 against the old path they replace (``URLK_FAST=0``).

Every comparison builds one module, runs it once on the old path and once on the fast path from the same weights
and inputs, and compares the output and every gradient (float64, so the tolerance is tight).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from urlk_forecast.models import fastpath
from urlk_forecast.models.corrformer import CausalFusion


def _weights(y: torch.Tensor) -> torch.Tensor:
    """The fixed random weights ``r`` of the loss ``(y * r).sum()``: the same numbers (up to rounding) in any
    dtype of ``y``."""
    return torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(y.dtype)


def _run(module: nn.Module, x: torch.Tensor, fast: bool) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Output, parameter gradients and input gradient of ``(module(x) * r).sum()`` for a fixed random ``r``."""
    x = x.detach().clone().requires_grad_()
    with fastpath.use_fast_paths(fast):  # the backward too: a checkpointed block recomputes its forward there
        y = module(x)
        r = _weights(y)
        module.zero_grad(set_to_none=True)
        (y * r).sum().backward()
    return y.detach(), [p.grad.clone() for p in module.parameters()], x.grad


def _old_and_new(module: nn.Module, x: torch.Tensor, tol: float) -> tuple[nn.Module, nn.Module]:
    """Copies of ``module`` run by :func:`_run` on the old and on the fast path; their outputs, input gradients
    and parameter gradients agree to ``tol`` (relative and absolute). Returns (old, new) for further checks."""
    old, new = copy.deepcopy(module), copy.deepcopy(module)
    y0, g0, gx0 = _run(old, x, False)
    y1, g1, gx1 = _run(new, x, True)
    torch.testing.assert_close(y1, y0, rtol=tol, atol=tol)
    torch.testing.assert_close(gx1, gx0, rtol=tol, atol=tol)
    for (name, _), a, b in zip(module.named_parameters(), g1, g0):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=name)
    return old, new


def test_switch_env_and_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fastpath.ENV, raising=False)
    assert fastpath.enabled()
    monkeypatch.setenv(fastpath.ENV, "0")
    assert not fastpath.enabled()
    assert fastpath.optimizer_options("cpu") == {}
    with fastpath.use_fast_paths(True):
        assert fastpath.enabled() and fastpath.optimizer_options("cpu") == {"fused": True}
        with fastpath.use_fast_paths(False):
            assert not fastpath.enabled()
        assert fastpath.enabled()
    assert not fastpath.enabled()


@pytest.mark.parametrize("nodes", [1, 2, 3, 4, 7, 11])
def test_causal_fusion_skips_padding_taps_exactly(nodes: int) -> None:
    """Dilations 1, 3, 9 over 1-11 nodes: from one live tap (a matrix product) to all three."""
    torch.manual_seed(0)
    f = CausalFusion(12, n_layers=3).double()
    for p in f.parameters():  # weights of order one, so that a wrong or missing tap is far outside tolerance
        nn.init.normal_(p, 0.0, 0.5)
    x = torch.randn(5, 12, nodes, dtype=torch.float64)
    ref = copy.deepcopy(f)
    y0, g0, gx0 = _run(ref, x, fast=False)
    y1, g1, gx1 = _run(f, x, fast=True)
    torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx1, gx0, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # the fast path really ran: a layer with a skipped tap does not call its Conv1d module
    calls = []
    for block in f.blocks:
        block.conv1.register_forward_hook(lambda m, a, o: calls.append(1))
    _run(f, x, fast=True)
    assert len(calls) == sum(nodes > 2 * d for d in (1, 3, 9))


@pytest.mark.parametrize(("shape", "start"), [((6, 5, 3), 2), ((6, 5, 3), 1), ((6, 5, 3), 0), ((4, 3, 5), 3)])
def test_tap_weight_norm_equals_the_parametrisations_sliced_weight(shape: tuple[int, int, int], start: int) -> None:
    """Value and both gradients (of v and g) equal slicing ``parametrizations.weight_norm``'s weight (float64,
    autograd through torch's own normalisation as the reference)."""
    from torch.nn.utils.parametrizations import weight_norm

    from urlk_forecast.models.tap_weight_norm import tap_weight_norm, weight_norm_parts

    torch.manual_seed(1)
    conv = weight_norm(nn.Conv1d(shape[1], shape[0], shape[2])).double()
    with torch.no_grad():
        conv.parametrizations.weight.original0.uniform_(0.5, 2.0)  # g away from its initial ||v||
    parts = weight_norm_parts(conv)
    assert parts is not None
    v, g = parts
    got = tap_weight_norm(v, g, start)
    want = conv.weight[..., start:]
    assert got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    r = torch.randn(want.shape, dtype=torch.float64)
    ga = torch.autograd.grad((got * r).sum(), (v, g))
    gb = torch.autograd.grad((want * r).sum(), (v, g))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert weight_norm_parts(nn.Conv1d(3, 3, 3)) is None  # not parametrised
    assert weight_norm_parts(weight_norm(nn.Conv1d(3, 3, 3), dim=1)) is None  # another norm
    with pytest.raises(ValueError, match="start 9"):
        tap_weight_norm(v, g, 9)


def _params(seed: int) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 4, 2), (1,)]
    ps = [nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64) * 3
    return ps


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch(max_norm: float) -> None:
    """Clipping (small max_norm) and no-op clipping (huge max_norm) give torch's norm and gradients."""
    a, b = _params(0), _params(0)
    with fastpath.use_fast_paths(False):
        n0 = fastpath.clip_grad_norm_(a, max_norm)
    n1 = fastpath.clip_grad_norm_(b, max_norm)
    ref = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in _params(0)))  # the unclipped 2-norm, float64
    torch.testing.assert_close(n1, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(n1, n0, rtol=1e-12, atol=0)
    for p, q in zip(a, b):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-12, atol=1e-12)
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in b))
    assert float(total) == pytest.approx(min(max_norm, float(ref)), rel=1e-5)


def test_fused_adamw_matches_the_loop() -> None:
    """Five AdamW steps with weight decay: the fused CPU kernel of the fast path against the per-tensor loop."""
    a, b = _params(1), _params(1)
    init = [p.detach().clone() for p in a]
    opt0 = torch.optim.AdamW(a, lr=1e-2, weight_decay=0.05)
    opt1 = torch.optim.AdamW(b, lr=1e-2, weight_decay=0.05, **fastpath.optimizer_options("cpu"))
    assert opt1.defaults.get("fused") is True
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        for p, q in zip(a, b):
            grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
            p.grad, q.grad = grad.clone(), grad.clone()
        opt0.step()
        opt1.step()
    for p, q, p0 in zip(a, b, init):
        assert float((p.detach() - p0).abs().max()) > 1e-3  # the steps moved the weights
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------- GRN
def _grn_ref(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None) -> torch.Tensor:
    """The composed GRN, written out independently (float32 norms for half inputs, as the module)."""
    xf = x.float() if x.dtype == torch.bfloat16 else x
    gx = xf.square().sum(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(xf.dtype).tiny).sqrt()
    nx = (gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)).to(x.dtype)
    y = x * (gamma * nx + 1)
    return y if beta is None else y + beta


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("use_bias", [True, False])
def test_grn_closed_form_backward(dtype: torch.dtype, use_bias: bool) -> None:
    """Forward and every gradient of the two-pass GRN against the composed form; one all-zero channel exercises
    the clamp. bfloat16 input with float32 parameters is the autocast case (squares and the output rounded to
    bf16 on the fast path)."""
    from urlk_forecast.models.unireplknet import GRNwithNHWC

    torch.manual_seed(0)
    grn = GRNwithNHWC(24, use_bias=use_bias)
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32
    grn = grn.to(pdtype)
    with torch.no_grad():
        for p in grn.parameters():
            p.normal_(0.0, 1.0)
    x = torch.randn(3, 5, 7, 24, dtype=pdtype) * torch.linspace(0.1, 3, 24, dtype=pdtype)
    x[1, :, :, 4] = 0
    x = x.to(dtype)
    ref = copy.deepcopy(grn)
    x0 = x.clone().requires_grad_()
    y0 = _grn_ref(x0, ref.gamma, ref.beta)
    y1, g1, gx1 = _run(grn, x, fast=True)
    (y0 * _weights(y0)).sum().backward()
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    assert y1.dtype == dtype  # in x's dtype: the composed form promotes bf16 x with float32 parameters to float32
    torch.testing.assert_close(y1.to(y0.dtype), y0.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(gx1.float(), x0.grad.float(), rtol=tol, atol=tol * float(x0.grad.abs().max()))
    for a, p in zip(g1, ref.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=tol, atol=tol * float(p.grad.abs().max()))
    assert bool(torch.isfinite(gx1).all())  # the zero channel: the clamp keeps the gradient finite
    # the module's own old path (URLK_FAST=0) is the composed form too
    y2, _, gx2 = _run(ref, x, fast=False)
    torch.testing.assert_close(y2, y0.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(gx2.float(), x0.grad.float(), rtol=tol, atol=tol * float(x0.grad.abs().max()))


# ------------------------------------------------------------------------------------------ whole network
@pytest.mark.parametrize("stations", [4, 12])  # 1 node (the TCN's taps trimmed to one) and 3 nodes
def test_forecast_net_training_step_equals_old_path(stations: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """One training-mode forward and backward of a small ForecastNet (UniRepLKNet encoder, Corrformer decoder) on
    the old path and on the fast paths, from the same weights, batch and dropout masks, in float64: output and
    every gradient agree to 1e-9 (float32 rounding differences grow through the net, so float64 keeps this tight).
    The fast dropout draws its masks differently (tested on its own below) and the decoder's FFN applies it in the
    (B, L, C) layout instead of (B, C, L), so the masks differ by design: both runs leave dropout out here."""
    from tests.test_forecast_net import DIMS, TINY, make_batch
    from urlk_forecast.models.forecast_net import ForecastNet
    from urlk_forecast.models.layers import Dropout

    monkeypatch.setattr(Dropout, "forward", lambda self, x: x)

    torch.manual_seed(0)
    net = ForecastNet(stations, coords=torch.randn(stations, 3), encoder="unireplknet", **{**TINY, **DIMS}).double()
    net.train()
    with torch.no_grad():  # GRN and layer scale start at zero; give them weight so that their gradients matter
        for name, p in net.named_parameters():
            if name.endswith(("gamma", "beta")):
                p.normal_(0.0, 0.5)
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in make_batch(B=2, S=stations).items()}
    outs = {}
    for fast in (False, True):
        model = copy.deepcopy(net)
        torch.manual_seed(1)  # any other random draw the same in both runs
        with fastpath.use_fast_paths(fast):
            y = model(batch)
            (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape)).sum().backward()
        outs[fast] = (y.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    (y0, g0), (y1, g1) = outs[False], outs[True]
    torch.testing.assert_close(y1, y0, rtol=1e-9, atol=1e-9)
    assert g1.keys() == g0.keys() and len(g0) > 100
    # absolute tolerance on the scale of the largest gradient: some are zero analytically (GRN's beta before
    # pwconv2's training-mode BatchNorm) and hold only rounding noise (~1e-14)
    scale = max(float(g.abs().max()) for g in g0.values())
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-9, atol=1e-10 * scale, msg=name)


@pytest.mark.parametrize("k", [2, 5, 24, 25, 80])
def test_moving_average_by_band_product_matches_float64_numpy(k: int) -> None:
    """The fast moving average (one product with the band matrix of window weights) against an independent numpy
    edge-padded mean, and its gradient against the old avg_pool path; under bf16 autocast it keeps the input's
    dtype and is computed in float32 (within bf16 rounding of the float32 result)."""
    from urlk_forecast.models.decoder import MovingAverage

    rng = np.random.default_rng(k)
    x = torch.tensor(rng.normal(5.0, 30.0, size=(3, 72, 7)), dtype=torch.float32, requires_grad=True)
    m = MovingAverage(k)
    front, end = (k - 1) // 2, k - 1 - (k - 1) // 2
    xp = np.pad(x.detach().double().numpy(), ((0, 0), (front, end), (0, 0)), mode="edge")
    ref = np.stack([xp[:, j:j + k].mean(axis=1) for j in range(72)], axis=1)
    out = m(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    np.testing.assert_allclose(out.detach().double().numpy(), ref, rtol=0, atol=2e-5)
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, g)
    with fastpath.use_fast_paths(False):
        (gx_old,) = torch.autograd.grad(m(x), x, g)
    torch.testing.assert_close(gx, gx_old, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m(x.bfloat16()).dtype == torch.bfloat16
        y32 = m(x)
    assert y32.dtype == torch.float32  # autocast off inside: the weights 1/k are not bf16-exact
    np.testing.assert_allclose(y32.detach().double().numpy(), ref, rtol=0, atol=2e-5)


def test_nhwc_permute_is_contiguous_on_the_fast_path_and_a_view_on_the_old() -> None:
    from urlk_forecast.models.unireplknet import NCHWtoNHWC

    x = torch.randn(2, 3, 4, 5)
    y = NCHWtoNHWC()(x)
    assert y.is_contiguous() and torch.equal(y, x.permute(0, 2, 3, 1))
    with fastpath.use_fast_paths(False):
        v = NCHWtoNHWC()(x)
    assert v.data_ptr() == x.data_ptr() and torch.equal(v, y)


# ------------------------------------------------------------------------------------------------------- dropout
def test_keep_mask_drops_at_rate_p_independently():
    from urlk_forecast.models.layers import keep_mask

    torch.manual_seed(0)
    n, p = 600_000, 0.05
    keep, q = keep_mask((n,), p)
    assert keep.dtype == torch.bool and keep.shape == (n,)
    assert q == round(p * 65536) / 65536
    drop = (~keep).double()
    sigma = (q * (1 - q) / n) ** 0.5
    assert abs(drop.mean().item() - q) < 5 * sigma  # binomial: the rate is p
    # the three lanes of a word and neighbouring words are independent: the pair rate is q^2
    for lag in (1, 2, 3, 4):
        pair = (drop[:-lag] * drop[lag:]).mean().item()
        assert abs(pair - q * q) < 5 * (q * q / n) ** 0.5 + 1e-5, lag
    # odd sizes and shapes, seeded
    torch.manual_seed(3)
    a, _ = keep_mask((7, 5, 3), 0.5)
    torch.manual_seed(3)
    b, _ = keep_mask((7, 5, 3), 0.5)
    assert a.shape == (7, 5, 3) and torch.equal(a, b) and 0 < a.sum() < a.numel()


def test_dropout_fast_path_scales_by_its_mask_and_old_path_is_nn_dropout():
    from urlk_forecast.models.layers import Dropout, keep_mask

    x = torch.randn(64, 48, 33, dtype=torch.float64)
    d = Dropout(0.1).train()
    torch.manual_seed(7)
    with fastpath.use_fast_paths(True):
        xr = x.clone().requires_grad_()
        y = d(xr)
    torch.manual_seed(7)
    keep, q = keep_mask(x.shape, 0.1)  # the same draw, recomputed
    want = torch.where(keep, x / (1 - q), torch.zeros((), dtype=x.dtype))
    torch.testing.assert_close(y, want, rtol=1e-15, atol=0)
    g = torch.randn_like(x)
    y.backward(g)
    torch.testing.assert_close(xr.grad, torch.where(keep, g / (1 - q), torch.zeros((), dtype=x.dtype)))
    # old path and eval mode: exactly nn.Dropout / F.dropout
    ref = nn.Dropout(0.1).train()
    for fast, train in ((False, True), (True, False)):
        d.train(train)
        ref.train(train)
        torch.manual_seed(11)
        with fastpath.use_fast_paths(fast):
            got = d(x)
        torch.manual_seed(11)
        assert torch.equal(got, ref(x))
    # expectation: the mean of many outputs is the input
    d.train()
    torch.manual_seed(0)
    big = d(torch.ones(2_000_000))
    assert abs(big.mean().item() - 1.0) < 5 * (0.1 / 0.9 / 2_000_000) ** 0.5
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1e-7).train()(x), x)  # rounds to no drop
    near_one = Dropout(1.0 - 1e-7).train()(x)  # rounds to p' = 1: nn.Dropout's own path, finite
    assert torch.isfinite(near_one).all()


def test_forecaster_modules_use_the_fast_dropout():
    from urlk_forecast import Forecaster
    from urlk_forecast.models.layers import Dropout

    fc = Forecaster()
    net = fc.build_net(3)
    drops = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(isinstance(m, Dropout) for m in drops)


# ------------------------------------------------------------------- depthwise branches of tiny maps, dense
def _branch_kernels(channels: int, geo: list[tuple[tuple[int, int], tuple[int, int]]], g: torch.Generator
                    ) -> tuple[list[torch.Tensor], list[tuple[int, int]], list[tuple[int, int]]]:
    """Random float64 depthwise kernels (requiring grad) for (kernel, dilation) pairs, their dilations and the
    symmetric paddings that keep the map size."""
    ws = [torch.randn(channels, 1, *k, generator=g, dtype=torch.float64, requires_grad=True) for k, _ in geo]
    return ws, [d for _, d in geo], [((k[0] - 1) * d[0] // 2, (k[1] - 1) * d[1] // 2) for k, d in geo]


@pytest.mark.parametrize("hw", [(4, 6), (2, 3), (1, 1), (3, 5)])
def test_dense_depthwise_equals_conv2d_float64(hw: tuple[int, int]) -> None:
    """Every branch's output and the gradients of x and of every kernel equal ``F.conv2d``'s, kernels larger than
    the map, dilations up to 3, a non-square kernel included."""
    import torch.nn.functional as F

    from urlk_forecast.models.dense_dwconv import dense_depthwise

    C, B = 5, 3
    g = torch.Generator().manual_seed(0)
    ws, dils, pads = _branch_kernels(C, [((13, 13), (1, 1)), ((5, 5), (1, 1)), ((7, 7), (2, 2)), ((3, 3), (3, 3)),
                                         ((3, 5), (2, 1))], g)
    x = torch.randn(B, C, *hw, generator=g, dtype=torch.float64, requires_grad=True)
    ys = dense_depthwise(x, ws, dils, pads)
    refs = [F.conv2d(x, w, padding=p, dilation=d, groups=C) for w, d, p in zip(ws, dils, pads)]
    rs = [torch.randn(r.shape, generator=g, dtype=r.dtype) for r in refs]
    got = torch.autograd.grad(sum((y * r).sum() for y, r in zip(ys, rs)), [x, *ws])
    want = torch.autograd.grad(sum((y * r).sum() for y, r in zip(refs, rs)), [x, *ws])
    for y, ref in zip(ys, refs):
        assert y.shape == ref.shape
        assert y.is_contiguous(memory_format=torch.channels_last)  # BatchNorm's vectorised kernel next
        torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("hw", "dense"), [((4, 6), True), ((2, 3), True), ((5, 5), False), ((8, 12), False)])
def test_dilated_block_runs_tiny_maps_as_one_dense_product(hw: tuple[int, int], dense: bool) -> None:
    """A training-mode Dilated Reparam Block (K=13 and its five dilated branches): on maps of at most 24 pixels the
    fast path takes the dense product, elsewhere the kernels; either way its output, every gradient and the
    BatchNorm running statistics equal the old path's (float64)."""
    from urlk_forecast.models.unireplknet import DilatedReparamBlock
    from urlk_forecast.ops import use_backend

    torch.manual_seed(0)
    blk = DilatedReparamBlock(6, 13).double().train()
    with torch.no_grad():
        for m in blk.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    x = torch.randn(4, 6, *hw, dtype=torch.float64)
    with fastpath.use_fast_paths(True):
        assert blk._dense(x) is dense
        with use_backend("own"):
            assert not blk._dense(x)  # a forced backend is honoured
        reflect = copy.deepcopy(blk)
        reflect.dil_conv_k5_1.padding_mode = "reflect"
        assert not reflect._dense(x)  # only zero padding is a dense product here
    with fastpath.use_fast_paths(False):
        assert not blk._dense(x)
    old, new = _old_and_new(blk, x, 1e-10)
    for a, b in zip(new.buffers(), old.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_dense_branches_under_bf16_autocast_keep_the_dtype_and_track_float32() -> None:
    """Under CPU bf16 autocast the dense block returns the dtype the kernels path returns, for bfloat16 and float32
    activations, and stays within bfloat16 rounding of the float32 result."""
    from urlk_forecast.models.unireplknet import DilatedReparamBlock

    torch.manual_seed(0)
    _check_bf16_autocast(DilatedReparamBlock(8, 13).train(), torch.randn(4, 8, 4, 6))


def _check_bf16_autocast(module: nn.Module, x: torch.Tensor) -> None:
    """Under CPU bf16 autocast ``module`` (a fresh copy per call) returns the old path's dtype for float32 and
    bfloat16 ``x``, within bfloat16 rounding of its float32 result."""
    with fastpath.use_fast_paths(True):
        ref = copy.deepcopy(module)(x)
        for xin in (x, x.bfloat16()):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y_new = copy.deepcopy(module)(xin)
            with fastpath.use_fast_paths(False), torch.autocast("cpu", dtype=torch.bfloat16):
                y_old = copy.deepcopy(module)(xin)
            assert y_new.dtype == y_old.dtype
            err = float((y_new.float() - ref).abs().max())
            assert err < 0.05 * float(ref.abs().max()), err


# ------------------------------------------- tiny-map branches with their BatchNorms folded (training, large batches)
def _bn_ref(x: torch.Tensor, convs: list[tuple[torch.Tensor, tuple[int, int], tuple[int, int]]],
            bns: list[nn.BatchNorm2d], outer: nn.BatchNorm2d | None) -> torch.Tensor:
    import torch.nn.functional as F

    out = sum(bn(F.conv2d(x, w, padding=p, dilation=d, groups=x.shape[1])) for (w, d, p), bn in zip(convs, bns))
    return out if outer is None else outer(out)


@pytest.mark.parametrize("hw", [(4, 6), (2, 3), (1, 1)])
@pytest.mark.parametrize("with_outer", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_dense_branches_bn_equals_conv2d_and_batchnorm_float64(hw: tuple[int, int], with_outer: bool,
                                                               momentum: float | None) -> None:
    """``outer(sum_k BN_k(conv_k(x)))`` in training mode, folded: output, the gradients of x, of every kernel and of
    every BatchNorm's weight and bias, and every running statistic and batch counter equal ``F.conv2d`` followed by
    ``nn.BatchNorm2d`` (float64; inputs with a mean far from zero; two steps, so the running statistics move)."""
    from urlk_forecast.models.dense_dwconv import dense_branches_bn

    C, B = 5, 7
    g = torch.Generator().manual_seed(0)
    ws, dils, pads = _branch_kernels(C, [((13, 13), (1, 1)), ((5, 5), (1, 1)), ((7, 7), (2, 2)), ((3, 3), (3, 3)),
                                         ((3, 3), (5, 5))], g)
    bns = [nn.BatchNorm2d(C, momentum=momentum).double() for _ in ws]
    outer = nn.BatchNorm2d(C, momentum=momentum).double() if with_outer else None
    with torch.no_grad():
        for bn in [*bns, outer]:
            if bn is not None:
                bn.weight.uniform_(0.5, 1.5, generator=g)
                bn.bias.normal_(generator=g)
                bn.running_var.uniform_(0.5, 2.0, generator=g)
    ref_bns, ref_outer = copy.deepcopy(bns), copy.deepcopy(outer)
    mods = [m for m in [*bns, outer] if m is not None]
    ref_mods = [m for m in [*ref_bns, ref_outer] if m is not None]
    for _ in range(2):
        x = (torch.randn(B, C, *hw, generator=g, dtype=torch.float64) * 3 + 5).requires_grad_()
        y = dense_branches_bn(x, ws, dils, pads, bns, outer)
        assert y.is_contiguous(memory_format=torch.channels_last)
        ref = _bn_ref(x, list(zip(ws, dils, pads)), ref_bns, ref_outer)
        torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
        r = torch.randn(ref.shape, generator=g, dtype=ref.dtype)
        params = [x, *ws, *(p for m in mods for p in (m.weight, m.bias))]
        ref_params = [x, *ws, *(p for m in ref_mods for p in (m.weight, m.bias))]
        got = torch.autograd.grad((y * r).sum(), params)
        want = torch.autograd.grad((ref * r).sum(), ref_params)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    for m, rm in zip(mods, ref_mods):
        for a, b in zip(m.buffers(), rm.buffers()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="more than 1 value"):
        dense_branches_bn(torch.ones(1, C, 1, 1, dtype=torch.float64), ws, dils, pads, bns, outer)


def _lk_block(channels: int, with_cp: bool = False) -> nn.Module:
    from urlk_forecast.models.unireplknet import UniRepLKNetBlock

    torch.manual_seed(0)
    blk = UniRepLKNetBlock(channels, 13, layer_scale_init_value=0.5, with_cp=with_cp).double().train()
    with torch.no_grad():
        for m in blk.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    return blk


@pytest.mark.parametrize("with_cp", [False, True])
def test_block_folds_its_batchnorms_from_fold_min_images(with_cp: bool) -> None:
    """A UniRepLKNet block with a K=13 Dilated Reparam Block on a 4x6 map in training: from ``FOLD_MIN_IMAGES``
    images the fast path folds the branches and the block's BatchNorm; output, every gradient and every running
    statistic equal the old path's (float64), under gradient checkpointing too (statistics updated once). Below
    that many images, in eval mode, with a forced backend, with DDP's synchronised BatchNorms and on the old path it
    does not fold."""
    from urlk_forecast.distributed import convert_sync_batchnorm
    from urlk_forecast.models.dense_dwconv import FOLD_MIN_IMAGES
    from urlk_forecast.ops import use_backend

    blk = _lk_block(6, with_cp)
    x = torch.randn(FOLD_MIN_IMAGES, 6, 4, 6, dtype=torch.float64) + 2
    with fastpath.use_fast_paths(True):
        assert blk.dwconv.folds(x, blk.norm)
        assert not blk.dwconv.folds(x[:-1], blk.norm)
        with use_backend("own"):
            assert not blk.dwconv.folds(x, blk.norm)
        assert not copy.deepcopy(blk).eval().dwconv.folds(x, blk.norm)
        synced = convert_sync_batchnorm(copy.deepcopy(blk), use_cuda=False)  # DDP's global statistics: not folded
        assert not synced.dwconv.folds(x, synced.norm) and not synced.dwconv.folds(x)
    with fastpath.use_fast_paths(False):
        assert not blk.dwconv.folds(x, blk.norm)
    old, new = _old_and_new(blk, x, 1e-9)
    for (name, a), b in zip(new.named_buffers(), old.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    assert int(new.norm.num_batches_tracked) == 1


def test_folded_block_under_bf16_autocast_keeps_the_dtype_and_tracks_float32() -> None:
    """Folded under CPU bf16 autocast: the block returns the old path's dtype for float32 and bfloat16 input, within
    bfloat16 rounding of the float32 result."""
    from urlk_forecast.models.dense_dwconv import FOLD_MIN_IMAGES

    blk = _lk_block(8).float()
    x = torch.randn(FOLD_MIN_IMAGES, 8, 2, 3)
    with fastpath.use_fast_paths(True):
        assert blk.dwconv.folds(x, blk.norm)
    _check_bf16_autocast(blk, x)


def test_se_block_fast_path_equals_its_modules() -> None:
    """The squeeze-and-excitation's 1x1 convolutions as matrix products: output and every gradient equal the
    modules' (float64)."""
    from urlk_forecast.models.unireplknet import SEBlock

    torch.manual_seed(0)
    _old_and_new(SEBlock(12, 3).double(), torch.randn(5, 12, 4, 6, dtype=torch.float64), 1e-12)


# ------------------------------------------------------------------------ channels-first LayerNorm, closed form
@pytest.mark.parametrize("shape", [(3, 20, 5, 7), (2, 40, 1, 1), (4, 1, 3, 3)])
def test_layer_norm_nchw_equals_f_layer_norm_float64(shape: tuple[int, ...]) -> None:
    """Output and the gradients of x, weight and bias equal ``F.layer_norm`` on the NHWC permutation (float64), for
    inputs with a large common offset."""
    import torch.nn.functional as F

    from urlk_forecast.models.layernorm_function import layer_norm_nchw

    g = torch.Generator().manual_seed(0)
    C = shape[1]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 30).requires_grad_()
    w = torch.randn(C, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(C, generator=g, dtype=torch.float64, requires_grad=True)
    y = layer_norm_nchw(x, w, b, 1e-6)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (C,), w, b, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    r = torch.randn(shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((y * r).sum(), [x, w, b])
    want = torch.autograd.grad((ref * r).sum(), [x, w, b])
    for a, c in zip(got, want):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10)


def test_channels_first_layer_norm_takes_the_closed_form_only_where_it_pays() -> None:
    """The module takes the closed form in training on the fast path for at most ``CLOSED_FORM_LN_CHANNELS``
    channels (same output and gradients as the old path); bf16 input keeps its dtype and tracks float32."""
    from urlk_forecast.models import layernorm_function
    from urlk_forecast.models.layers import CLOSED_FORM_LN_CHANNELS, LayerNorm

    calls = []
    real = layernorm_function._LayerNormNCHW.apply

    def spy(*a: object) -> torch.Tensor:
        calls.append(a[0].shape)  # type: ignore[union-attr]
        return real(*a)

    layernorm_function._LayerNormNCHW.apply = spy  # type: ignore[method-assign]
    try:
        for c, taken in ((CLOSED_FORM_LN_CHANNELS, True), (CLOSED_FORM_LN_CHANNELS + 1, False)):
            torch.manual_seed(0)
            ln = LayerNorm(c, data_format="channels_first").double()
            with torch.no_grad():
                ln.weight.uniform_(0.5, 1.5)
                ln.bias.normal_()
            x = torch.randn(2, c, 3, 4, dtype=torch.float64)
            calls.clear()
            y1, g1, gx1 = _run(ln, x, True)
            assert bool(calls) is taken
            calls.clear()
            y0, g0, gx0 = _run(ln, x, False)
            assert not calls
            torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(gx1, gx0, rtol=1e-10, atol=1e-10)
            for a, b in zip(g1, g0):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    finally:
        layernorm_function._LayerNormNCHW.apply = real  # type: ignore[method-assign]
    ln = LayerNorm(20, data_format="channels_first")
    x = torch.randn(2, 20, 6, 6) * 3 + 1
    with fastpath.use_fast_paths(True):
        y16 = ln(x.bfloat16())
        y32 = ln(x)
    assert y16.dtype == torch.bfloat16 and y32.dtype == torch.float32
    assert float((y16.float() - y32).abs().max()) < 0.05


def test_pointwise_conv1d_as_a_product_equals_the_module() -> None:
    """A kernel-1 Conv1d along (B, L, C) steps: the fast path's matrix product equals the module on the transposed
    input, output and every gradient (float64), with and without a bias."""
    from urlk_forecast.models.layers import pointwise

    for bias in (False, True):
        torch.manual_seed(0)
        conv = nn.Conv1d(6, 10, 1, bias=bias).double()
        x = torch.randn(3, 7, 6, dtype=torch.float64)
        outs = []
        for fast in (False, True):
            xi = x.clone().requires_grad_()
            with fastpath.use_fast_paths(fast):
                y = pointwise(conv, xi)
            conv.zero_grad(set_to_none=True)
            (y * torch.arange(y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
            outs.append((y.detach(), xi.grad, [p.grad.clone() for p in conv.parameters()]))
        (ya, gxa, gpa), (yb, gxb, gpb) = outs
        assert ya.shape == (3, 7, 10)
        torch.testing.assert_close(yb, ya, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gxb, gxa, rtol=1e-12, atol=1e-12)
        for a, b in zip(gpb, gpa):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _format(t: torch.Tensor) -> str:
    return "cf" if t.is_contiguous() else "cl" if t.is_contiguous(memory_format=torch.channels_last) else "other"


@pytest.mark.parametrize("x_format", ["cf", "cl"])
def test_batch_norm_backward_gets_its_gradient_stored_like_its_input(x_format: str) -> None:
    """``batch_norm_2d`` hands BatchNorm's backward a gradient stored like ``x`` (the block's two BatchNorms get
    the other layout from their neighbours); values and gradients equal ``nn.BatchNorm2d`` in float64."""
    from urlk_forecast.models.layers import batch_norm_2d

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 6, 3, 4, generator=g, dtype=torch.float64)
    r = torch.randn(5, 3, 4, 6, generator=g, dtype=torch.float64).permute(0, 3, 1, 2)  # the other layout
    if x_format == "cl":
        x0, r = x0.contiguous(memory_format=torch.channels_last), r.contiguous()
    assert _format(x0) == x_format and _format(r) != x_format
    results, seen = {}, {}
    for fast in (False, True):
        bn = nn.BatchNorm2d(6).double()

        def record(module: nn.Module, inputs: tuple, out: torch.Tensor, fast: bool = fast) -> None:
            out.register_hook(lambda grad: seen.__setitem__(fast, _format(grad)))  # what reaches the module

        bn.register_forward_hook(record)
        x = x0.clone().requires_grad_()
        with fastpath.use_fast_paths(fast):
            y = batch_norm_2d(bn, x)
            (y * r).sum().backward()
        results[fast] = (y.detach(), x.grad, bn.weight.grad, bn.bias.grad, bn.running_var)
    assert seen == {False: _format(r), True: x_format}  # the plain module on the old path
    for a, b in zip(results[True], results[False]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
