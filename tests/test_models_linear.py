"""linear_function.linear: oneDNN's float32 product with its own backward, against float64 F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from urlk_forecast.models import fastpath, linear_function
from urlk_forecast.models.linear_function import linear

pytestmark = pytest.mark.skipif(not hasattr(torch.ops.mkldnn, "_linear_pointwise"), reason="no oneDNN linear op")


@pytest.fixture()
def onednn(monkeypatch):
    """Take the oneDNN path whatever this machine's measurement says."""
    monkeypatch.setattr(linear_function, "_choice", [True])


def _float64_reference(x, w, b, gy):
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    br = None if b is None else b.detach().double().requires_grad_()
    y = F.linear(xr, wr, br)
    y.backward(gy.double())
    return y, xr.grad, wr.grad, None if br is None else br.grad


@pytest.mark.parametrize("gw_onednn", [True, False])  # the weight gradient on oneDNN (both orders) or torch.mm
@pytest.mark.parametrize("shape,bias,channels_last,out", [
    ((6, 40), True, False, 24), ((2, 8, 12, 40), True, True, 24), ((3, 5, 40), False, False, 24),
    ((4, 9, 40), True, False, 60)])
def test_forward_and_gradients_match_float64(onednn, monkeypatch, shape, bias, channels_last, out, gw_onednn):
    monkeypatch.setattr(linear_function, "_gw_choice", [gw_onednn])
    g = torch.Generator().manual_seed(len(shape))
    if channels_last:  # the block's NHWC view of an NCHW tensor: not contiguous
        x = torch.randn(shape[0], shape[3], shape[1], shape[2], generator=g).permute(0, 2, 3, 1)
        assert not x.is_contiguous()
    else:
        x = torch.randn(*shape, generator=g)
    x.requires_grad_()
    w = torch.randn(out, 40, generator=g).requires_grad_()
    b = torch.randn(out, generator=g).requires_grad_() if bias else None
    y = linear(x, w, b)
    assert y.grad_fn is not None and type(y.grad_fn).__name__.startswith("_OneDNNLinear")
    gy = torch.randn(y.shape, generator=g)
    y.backward(gy)
    ref = _float64_reference(x, w, b, gy)
    for got, want in zip((y, x.grad, w.grad, None if b is None else b.grad), ref):
        if want is None:
            assert got is None
            continue
        assert got.shape == want.shape and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


def test_falls_back_to_f_linear(onednn):
    """Autocast, other dtypes and the old path (URLK_FAST=0) run plain F.linear."""
    x, w = torch.randn(4, 8, requires_grad=True), torch.randn(3, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x, w).dtype == torch.bfloat16
    assert type(linear(x.double(), w.double()).grad_fn).__name__ != "_OneDNNLinearBackward"
    with fastpath.use_fast_paths(False):
        assert "OneDNN" not in type(linear(x, w).grad_fn).__name__
    assert "OneDNN" in type(linear(x, w).grad_fn).__name__


def test_choice_is_measured_once(monkeypatch):
    monkeypatch.setattr(linear_function, "_choice", [])
    first = linear_function.onednn_is_faster()
    assert linear_function._choice == [first]
    assert linear_function.onednn_is_faster() is first
    monkeypatch.setattr(linear_function, "_gw_choice", [])
    first = linear_function.weight_grad_on_onednn()
    assert linear_function._gw_choice == [first] and linear_function.weight_grad_on_onednn() is first


def test_tracing_records_the_standard_op(onednn):
    """An exported graph holds aten::linear (portable), not oneDNN's op; its output is the same."""
    w, b = torch.randn(3, 8), torch.randn(3)

    class M(torch.nn.Module):
        def forward(self, x):
            return linear(x, w, b)

    x = torch.randn(4, 8)
    traced = torch.jit.trace(M(), x)
    graph = str(traced.graph)
    assert "aten::linear" in graph and "mkldnn" not in graph
    torch.testing.assert_close(traced(x), F.linear(x, w, b))


def test_strided_weight_and_expanded_gradient(onednn):
    """A weight sliced from a conv's taps and the stride-0 gradient of ``.sum()`` (both once sent oneDNN to a path
    ~1000x slower; the operands are made dense first): values still match float64."""
    g = torch.Generator().manual_seed(5)
    w3 = torch.randn(24, 16, 3, generator=g).requires_grad_()
    x = torch.randn(4, 16, 6, generator=g).transpose(1, 2).requires_grad_()
    linear(x, w3[..., 0]).sum().backward()
    xr, wr = x.detach().double().requires_grad_(), w3.detach().double().requires_grad_()
    F.linear(xr, wr[..., 0]).sum().backward()
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w3.grad.double(), wr.grad, rtol=1e-5, atol=1e-5)


def test_empty_input_and_double_backward(onednn):
    """No rows: F.linear's result. A second derivative through the oneDNN path is refused, not silently wrong."""
    w = torch.randn(3, 8, requires_grad=True)
    assert linear(torch.zeros(0, 8), w).shape == (0, 3)
    x = torch.randn(4, 8, requires_grad=True)
    (g,) = torch.autograd.grad(linear(x, w).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()
