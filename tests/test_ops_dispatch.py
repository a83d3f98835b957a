"""Path choice of dwconv2d (own CPU / own CUDA / torch), overrides, fallback logging, DWConv2d drop-in."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from urlk_forecast.ops import (
    DWConv2d,
    convert_depthwise,
    cpu_kernels,
    dispatch,
    dwconv2d,
    get_backend,
    same_padding,
    use_backend,
)


@pytest.fixture(autouse=True)
def _fresh_log_state(monkeypatch):
    monkeypatch.delenv("URLK_DWCONV", raising=False)
    # auto's measured choice is tested in test_ops_autotune.py; here auto follows the fixed rule (deterministic)
    monkeypatch.setenv("URLK_DWCONV_TUNE", "0")
    monkeypatch.setattr(dispatch, "_logged", set())


class Spy:
    """Counts calls into the own CPU kernels (the real kernels still run)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = cpu_kernels.forward

        def wrapped(*a, **k):
            self.calls += 1
            return real(*a, **k)

        monkeypatch.setattr(cpu_kernels, "forward", wrapped)


def test_auto_uses_own_cpu_kernels(monkeypatch):
    spy = Spy(monkeypatch)
    x, w = torch.randn(1, 2, 16, 13), torch.randn(2, 1, 3, 3)
    assert dispatch.choose(x, w, same_padding(3), (1, 1)) == "cpu"
    y = dwconv2d(x, w)
    assert spy.calls == 1
    assert torch.allclose(y, F.conv2d(x, w, None, 1, 1, 1, 2), atol=1e-6)


@pytest.mark.parametrize(("hw", "k", "dil", "onednn"), [
    ((12, 12), 13, 1, True),  # small map, K <= 13: oneDNN forward
    ((7, 9), 3, 1, True),
    ((6, 8), 7, 2, True),  # dilated, padding 6 <= 6
    ((12, 13), 13, 1, False),  # a side > 12
    ((12, 12), 17, 1, False),  # K > 13
    ((3, 4), 13, 1, True),  # runs cropped to 5x7 (ops/reach.py): padding 2/3 fits the map
    ((3, 4), 3, 5, True),  # cropped to its one tap that touches the map
])
def test_auto_small_maps_forward_on_onednn_backward_on_own(monkeypatch, hw, k, dil, onednn):
    """auto: small-map forward via F.conv2d, backward always via the own kernels; gradients equal torch's."""
    spy = Spy(monkeypatch)
    bwd_calls = []
    real_bwd = cpu_kernels.backward

    def bwd(*a, **kw):
        bwd_calls.append(1)
        return real_bwd(*a, **kw)

    monkeypatch.setattr(cpu_kernels, "backward", bwd)
    x = torch.randn(2, 3, *hw, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, k, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y = dwconv2d(x, w, b, dilation=dil)
    g = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), g)
    assert spy.calls == (0 if onednn else 1) and len(bwd_calls) == 1
    pad = (k - 1) * dil // 2
    ref = F.conv2d(x, w, b, 1, pad, dil, 3)
    rgx, rgw, rgb = torch.autograd.grad(ref, (x, w, b), g)
    for got, want in ((y, ref), (gx, rgx), (gw, rgw), (gb, rgb)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    with use_backend("own"):  # forcing the own path runs the own forward on small maps too
        dwconv2d(x, w, b, dilation=dil)
    assert spy.calls == (1 if onednn else 2)


@pytest.mark.parametrize(("hw", "driver"), [((16, 24), "bwd_32x4"), ((12, 12), "cbbwd_8"), ((3, 4), "cbbwd_4")])
def test_forward_with_grad_asks_for_the_backward_kernels_ahead(monkeypatch, hw, driver):
    """A CPU forward whose gradient will be needed names the backward driver that will run (compiled ahead by the
    helper process); inference (no_grad, or nothing requiring grad) asks for nothing."""
    asked = []
    monkeypatch.setattr(cpu_kernels, "prefetch_backward",
                        lambda x, w, pads, dil: asked.append(cpu_kernels._backward_driver(x, w, pads, dil)))
    used = []
    real_run = cpu_kernels._run
    monkeypatch.setattr(cpu_kernels, "_run", lambda name, *a, **k: (used.append(name), real_run(name, *a, **k)))
    x = torch.randn(2, 16, *hw, requires_grad=True)
    w = torch.randn(16, 1, 13, 13, requires_grad=True)
    with torch.no_grad():
        dwconv2d(x, w)
    dwconv2d(x.detach(), w.detach())
    assert asked == []
    used.clear()
    dwconv2d(x, w).sum().backward()
    assert asked == [driver]
    assert used[-1] == driver  # the backward ran exactly the driver named ahead


def test_env_forces_torch_and_own(monkeypatch):
    spy = Spy(monkeypatch)
    x, w = torch.randn(1, 2, 6, 6), torch.randn(2, 1, 3, 3)
    monkeypatch.setenv("URLK_DWCONV", "torch")
    assert get_backend() == "torch"
    y_torch = dwconv2d(x, w)
    assert spy.calls == 0
    monkeypatch.setenv("URLK_DWCONV", "own")
    y_own = dwconv2d(x, w)
    assert spy.calls == 1
    assert torch.allclose(y_torch, y_own, atol=1e-6)
    monkeypatch.setenv("URLK_DWCONV", "fast")
    with pytest.raises(ValueError, match="URLK_DWCONV"):
        dwconv2d(x, w)


def test_use_backend_overrides_env_and_restores(monkeypatch):
    spy = Spy(monkeypatch)
    monkeypatch.setenv("URLK_DWCONV", "own")
    x, w = torch.randn(1, 2, 6, 6), torch.randn(2, 1, 3, 3)
    with use_backend("torch"):
        assert get_backend() == "torch"
        dwconv2d(x, w)
    assert spy.calls == 0 and get_backend() == "own"
    with pytest.raises(ValueError, match="backend"):
        with use_backend("cudnn"):
            pass


def test_fallback_is_logged_once_at_debug(caplog):
    x, w = torch.randn(1, 2, 6, 6), torch.randn(2, 1, 3, 3)
    with caplog.at_level(logging.DEBUG, logger="urlk_forecast.ops"):
        y1 = dwconv2d(x, w, padding=3)  # padding beyond (K-1)*dilation: outside the own kernels
        y2 = dwconv2d(x, w, padding=3)
    msgs = [r for r in caplog.records if r.name == "urlk_forecast.ops" and "falling back" in r.getMessage()]
    assert len(msgs) == 1 and msgs[0].levelno == logging.DEBUG and "padding" in msgs[0].getMessage()
    ref = F.conv2d(x, w, None, 1, 3, 1, 2)
    assert torch.allclose(y1, ref, atol=1e-6) and torch.equal(y1, y2)


def test_own_forced_on_unsupported_call_raises(monkeypatch):
    monkeypatch.setenv("URLK_DWCONV", "own")
    x, w = torch.randn(1, 2, 6, 6), torch.randn(2, 1, 3, 3)
    with pytest.raises(NotImplementedError, match="padding"):
        dwconv2d(x, w, padding=3)


def test_autocast_policy_matches_conv2d():
    x, w = torch.randn(2, 3, 9, 9), torch.randn(3, 1, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with use_backend("own"):
            y = dwconv2d(x, w)
        ref = F.conv2d(x, w, None, 1, 2, 1, 3)
    assert y.dtype == ref.dtype == torch.bfloat16
    assert torch.allclose(y.float(), ref.float(), rtol=2e-2, atol=5e-2)


def test_meta_device_falls_back_to_torch():
    x = torch.empty(2, 3, 8, 8, device="meta")
    w = torch.empty(3, 1, 5, 5, device="meta")
    assert dispatch.choose(x, w, same_padding(5), (1, 1)) == "torch"
    assert dwconv2d(x, w).shape == (2, 3, 8, 8)


def test_broken_cuda_backend_is_guarded(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "urlk_forecast.ops.cuda_kernels", None)  # import now raises ImportError
    with caplog.at_level(logging.DEBUG, logger="urlk_forecast.ops"):
        assert dispatch._cuda_module() is None
    assert any("CUDA kernels unavailable" in r.getMessage() for r in caplog.records)


def test_unavailable_cpu_kernels_fall_back_to_torch(monkeypatch, caplog):
    monkeypatch.setattr(cpu_kernels, "_available", None)

    def broken():
        raise OSError("read-only file system")

    monkeypatch.setattr(cpu_kernels, "_load", broken)
    x, w = torch.randn(1, 2, 6, 6), torch.randn(2, 1, 3, 3)
    with caplog.at_level(logging.DEBUG, logger="urlk_forecast.ops"):
        assert dispatch.choose(x, w, same_padding(3), (1, 1)) == "torch"
        y = dwconv2d(x, w)
    assert torch.allclose(y, F.conv2d(x, w, None, 1, 1, 1, 2), atol=1e-6)
    assert any("unavailable" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.parametrize(
    "args,exc,match",
    [
        ((torch.randn(2, 3, 5), torch.randn(3, 1, 3, 3)), ValueError, "4-D"),
        ((torch.randn(1, 3, 5, 5), torch.randn(4, 1, 3, 3)), ValueError, r"\(3, 1, KH, KW\)"),
        ((torch.randn(1, 3, 5, 5), torch.randn(3, 1, 3, 3).double()), TypeError, "dtype"),
        ((torch.randn(1, 3, 2, 2), torch.randn(3, 1, 5, 5), None, "valid"), ValueError, "empty output"),
        ((torch.randn(1, 3, 5, 5), torch.randn(3, 1, 3, 3), torch.randn(2)), ValueError, "bias"),
        ((torch.randn(1, 3, 5, 5), torch.randn(3, 1, 3, 3), None, None, 0), ValueError, "dilation"),
        ((torch.randn(1, 3, 5, 5), torch.randn(3, 1, 3, 3), None, "full"), ValueError, "padding"),
    ],
)
def test_bad_arguments_raise_clear_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        dwconv2d(*args)


# ------------------------------------------------------------------------------------------------- DWConv2d
@pytest.mark.parametrize("k,d,bias", [(3, 1, False), (13, 1, True), (5, 3, False), (4, 1, True)])
def test_dwconv2d_module_is_a_drop_in_for_conv2d(k, d, bias):
    m = DWConv2d(6, k, dilation=d, bias=bias)
    assert isinstance(m, nn.Conv2d) and m.groups == 6 and m.weight.shape == (6, 1, k, k)
    ref = nn.Conv2d(6, 6, k, padding="same", dilation=d, groups=6, bias=bias)
    ref.load_state_dict(m.state_dict(), strict=True)
    m.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 6, 11, 9)
    assert torch.allclose(m(x), ref(x), atol=1e-5)
    assert set(dict(m.named_parameters())) == set(dict(ref.named_parameters()))


def test_padding_mode_other_than_zeros_uses_conv2d():
    conv = nn.Conv2d(3, 3, 3, padding=1, groups=3, padding_mode="circular")
    m = DWConv2d.from_conv(conv)
    x = torch.randn(1, 3, 6, 6)
    assert torch.allclose(m(x), conv(x), atol=1e-6)


def test_convert_depthwise_swaps_only_depthwise_stride1():
    net = nn.Sequential(nn.Conv2d(4, 4, 7, padding=3, groups=4), nn.Conv2d(4, 8, 1),
                        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)),
                        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8))
    x = torch.randn(2, 4, 10, 10)
    before = net(x)
    convert_depthwise(net)
    assert isinstance(net[0], DWConv2d) and isinstance(net[2][0], DWConv2d)
    assert type(net[1]) is nn.Conv2d and type(net[3]) is nn.Conv2d
    assert torch.allclose(net(x), before, atol=1e-5)


def test_backbone_convs_run_the_own_op(monkeypatch):
    from urlk_forecast.models import create_model

    spy = Spy(monkeypatch)
    model = create_model("unireplknet_a", in_chans=1, num_classes=3, depths=(1, 1, 1, 1))
    model.train()
    # the backend forced: under auto the table may give a map to oneDNN, and the tiny maps (<= 24 pixels: 4x4 and
    # below here) run their Dilated Reparam branches as one dense product, not through the op
    with use_backend("own"):
        out = model(torch.randn(2, 1, 32, 32))
    out.sum().backward()
    assert spy.calls >= 4  # every stage's depthwise conv: 8x8, 4x4, 2x2, 1x1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_matches_conv2d():
    x = torch.randn(4, 8, 20, 24, device="cuda", requires_grad=True)
    w = torch.randn(8, 1, 7, 7, device="cuda", requires_grad=True)
    path = dispatch.choose(x, w, same_padding(7), (1, 1))
    y = dwconv2d(x, w)
    ref = F.conv2d(x, w, None, 1, 3, 1, 8)
    assert torch.allclose(y, ref, atol=1e-4, rtol=1e-4)
    gx, gw = torch.autograd.grad(y.sum(), (x, w))
    rgx, rgw = torch.autograd.grad(ref.sum(), (x, w))
    assert torch.allclose(gx, rgx, atol=1e-4) and torch.allclose(gw, rgw, rtol=1e-4, atol=1e-3)
    from urlk_forecast.ops import cuda_kernels

    assert path == ("cuda" if cuda_kernels.available() else "torch")
