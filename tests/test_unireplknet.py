"""UniRepLKNet architecture: variants, kernel tables, layer math, features mode, shapes, training, checkpointing."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import urlk_forecast.forecaster as forecaster
from urlk_forecast.models import DilatedReparamBlock, UniRepLKNet, UniRepLKNetBlock, create_model, list_models, registry
from urlk_forecast.models.forecast_net import DEFAULT_D_MODEL
from urlk_forecast.models.registry import parse_model_name
from urlk_forecast.models.unireplknet import GRNwithNHWC, LayerNorm, SEBlock, default_kernel_sizes
from urlk_forecast.ops import DWConv2d

# Released deploy-form parameter counts with a 1000-class head (issue 3), in millions.
DEPLOY_PARAMS_M = {
    "unireplknet_a": 4.44, "unireplknet_f": 6.24, "unireplknet_p": 10.74, "unireplknet_n": 18.32,
    "unireplknet_t": 31.04, "unireplknet_s": 55.65, "unireplknet_b": 98.01, "unireplknet_l": 218.45,
    "unireplknet_xl": 386.53,
}
TRAIN_PARAMS_M = {"unireplknet_a": 4.65, "unireplknet_s": 56.46}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def tiny(**kw: object) -> UniRepLKNet:
    cfg: dict = dict(in_chans=1, depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))
    cfg.update(kw)
    return UniRepLKNet(**cfg)


# ----------------------------------------------------------------------------------------------- variants
def test_list_models() -> None:
    assert list_models() == [f"unireplknet_{v}" for v in ("a", "f", "p", "n", "t", "s", "b", "l", "xl", "h")]


@pytest.mark.parametrize("name", list(DEPLOY_PARAMS_M))
def test_variant_param_counts_meta(name: str) -> None:
    with torch.device("meta"):
        deploy = create_model(name, deploy=True)
        train = create_model(name)
    got = n_params(deploy) / 1e6
    assert abs(got - DEPLOY_PARAMS_M[name]) / DEPLOY_PARAMS_M[name] < 0.005, (name, got)
    if name in TRAIN_PARAMS_M:
        got_t = n_params(train) / 1e6
        assert abs(got_t - TRAIN_PARAMS_M[name]) / TRAIN_PARAMS_M[name] < 0.005, (name, got_t)
    assert n_params(train) > n_params(deploy)


def test_variant_h_and_reparam_on_meta() -> None:
    with torch.device("meta"):
        h = create_model("unireplknet_h")
        s = create_model("unireplknet_s").eval()
        s_deploy = create_model("unireplknet_s", deploy=True)
    assert h.dims == (480, 960, 1920, 3840) and h.depths == (3, 3, 27, 3)
    s.reparameterize()
    assert n_params(s) == n_params(s_deploy)
    assert [(k, v.shape) for k, v in s.state_dict().items()] == [(k, v.shape) for k, v in s_deploy.state_dict().items()]


def test_variant_names_and_errors() -> None:
    with torch.device("meta"):
        for alias in ("a", "A", "UniRepLKNet-A", "unireplknet_a"):
            assert create_model(alias).dims == (40, 80, 160, 320)
    with pytest.raises(ValueError, match="unknown UniRepLKNet variant 'z'.*unireplknet_a"):
        create_model("z")
    with pytest.raises(TypeError, match="bogus"):
        create_model("a", bogus=1)


def test_registry_is_the_one_variant_list() -> None:
    """Variant table, short names, forecasting d_model and model names all come from models.registry."""
    keys = ("a", "f", "p", "n", "t", "s", "b", "l", "xl", "h")
    assert registry.variant_keys() == keys
    assert list(registry.VARIANTS) == [f"unireplknet_{k}" for k in keys]
    assert list(DEFAULT_D_MODEL) == list(keys) and DEFAULT_D_MODEL["s"] == 768 and DEFAULT_D_MODEL["a"] == 128
    assert registry.VARIANTS["unireplknet_s"] == {"depths": (3, 3, 27, 3), "dims": (96, 192, 384, 768)}
    for alias in ("s", " S ", "UniRepLKNet-S", "unireplknet_s"):
        assert registry.canonical_variant(alias) == "unireplknet_s" and registry.variant_key(alias) == "s"
    cfg = registry.variant_config("a")
    cfg["dims"] = (1, 2, 3, 4)  # a copy: the table is unchanged
    assert registry.VARIANTS["unireplknet_a"]["dims"] == (40, 80, 160, 320)
    with pytest.raises(ValueError, match="unknown UniRepLKNet variant 'z'.*unireplknet_h"):
        registry.variant_key("z")
    assert forecaster.parse_model_name is registry.parse_model_name


@pytest.mark.parametrize("name,expect", [
    ("unireplknet_s", ("unireplknet", "unireplknet_s")), ("S", ("unireplknet", "unireplknet_s")),
    ("UniRepLKNet-XL", ("unireplknet", "unireplknet_xl")), ("unireplknet", ("unireplknet", "unireplknet_a")),
    ("convnext", ("convnext", "unireplknet_a")), ("resnet_xl", ("resnet", "unireplknet_xl")),
    ("Corrformer-T", ("corrformer", "unireplknet_t")),
])
def test_parse_model_name(name: str, expect: tuple[str, str]) -> None:
    assert parse_model_name(name) == expect


@pytest.mark.parametrize("name", ["vit", "convnext_z", "resnet_", "unireplknet_q", ""])
def test_parse_model_name_errors(name: str) -> None:
    with pytest.raises(ValueError, match=r"unknown model .*unireplknet_a, .*unireplknet_h, convnext\[_v\], "
                                         r"resnet\[_v\], corrformer\[_v\]"):
        parse_model_name(name)


def test_registry_imports_no_torch() -> None:
    """The registry is cheap to import (command-line help, name checks): no torch, no ops."""
    code = ("import sys; import urlk_forecast.models.registry as r; r.parse_model_name('s'); "
            "print(sorted(m for m in ('torch', 'numba', 'urlk_forecast.ops') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_default_kernel_tables() -> None:
    assert default_kernel_sizes((2, 2, 6, 2)) == ((3, 3), (13, 13), (13,) * 6, (13, 13))
    assert default_kernel_sizes((2, 2, 8, 2)) == ((3, 3), (13, 13), (13,) * 8, (13, 13))
    assert default_kernel_sizes((3, 3, 18, 3)) == ((3,) * 3, (13,) * 3, (13, 3) * 9, (13,) * 3)
    assert default_kernel_sizes((3, 3, 27, 3)) == ((3,) * 3, (13,) * 3, (13, 3, 3) * 9, (13,) * 3)
    with torch.device("meta"):
        t = create_model("unireplknet_t")
    kinds = [type(b.dwconv).__name__ for b in t.stages[2]]
    assert kinds == ["DilatedReparamBlock", "DWConv2d"] * 9


def test_every_depthwise_conv_is_own_op() -> None:
    with torch.device("meta"):
        m = create_model("unireplknet_s")
    dw = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d) and mod.groups > 1]
    assert dw and all(type(mod) is DWConv2d for mod in dw)
    assert all(mod.groups == mod.in_channels == mod.out_channels for mod in dw)


def test_kernel_size_overrides() -> None:
    with torch.device("meta"):
        m = create_model("a", kernel_sizes=7)
        assert m.kernel_sizes == ((7, 7), (7, 7), (7,) * 6, (7, 7))
        m = create_model("a", kernel_sizes=(3, 5, 31, 0))
        assert [b.kernel_size for b in m.blocks()] == [3, 3, 5, 5] + [31] * 6 + [0, 0]
        assert isinstance(m.stages[1][0].dwconv, DWConv2d) and isinstance(m.stages[3][0].dwconv, nn.Identity)
        assert isinstance(m.stages[3][0].norm, nn.Identity)
        per_block = ((3, 5), 9, (13, 3, 0, 19, 21, 31), (25, 27))
        m = create_model("a", kernel_sizes=per_block)
        assert m.kernel_sizes == ((3, 5), (9, 9), (13, 3, 0, 19, 21, 31), (25, 27))
        drb = m.stages[2][5].dwconv
        assert isinstance(drb, DilatedReparamBlock) and drb.lk_origin.weight.shape == (160, 1, 31, 31)
        assert hasattr(drb, "dil_conv_k15_2") and hasattr(drb, "dil_conv_k3_15")
    with pytest.raises(ValueError, match="kernel_sizes\\[2\\] has 2 entries but stage 2 has depth 6"):
        create_model("a", kernel_sizes=(3, 13, (13, 13), 13))
    with pytest.raises(ValueError, match="stage 1 .* odd int >= 3, got 4"):
        create_model("a", kernel_sizes=(3, 4, 13, 13))
    with pytest.raises(ValueError, match="sequence of 4 entries"):
        create_model("a", kernel_sizes=(3, 13))
    with pytest.raises(ValueError, match="got 1"):
        UniRepLKNetBlock(8, 1)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="depths and dims need 4"):
        UniRepLKNet(depths=(1, 1, 1))
    with pytest.raises(ValueError, match="out_indices"):
        UniRepLKNet(out_indices=(0, 4))
    with pytest.raises(ValueError, match="drop_path_rate"):
        UniRepLKNet(drop_path_rate=1.5)


# ------------------------------------------------------------------------------------------- layer math
def test_stem_and_downsample_layout() -> None:
    m = create_model("a")
    stem = m.downsample_layers[0]
    assert [type(x).__name__ for x in stem] == ["Conv2d", "LayerNorm", "GELU", "Conv2d", "LayerNorm"]
    assert stem[0].stride == (2, 2) and stem[0].kernel_size == (3, 3) and stem[0].out_channels == 20
    assert stem[3].stride == (2, 2) and stem[3].out_channels == 40 and stem[0].bias is not None
    assert stem[1].eps == 1e-6 and stem[1].data_format == "channels_first"
    for i in range(1, 4):
        conv, ln = m.downsample_layers[i]
        assert conv.stride == (2, 2) and conv.out_channels == 2 * conv.in_channels and conv.bias is not None
        assert ln.data_format == "channels_first" and ln.eps == 1e-6
    assert isinstance(m.norm, nn.LayerNorm) and m.norm.eps == 1e-6 and m.head.out_features == 1000


def test_layernorm_channels_first_matches_formula() -> None:
    ln = LayerNorm(6, eps=1e-6, data_format="channels_first").double()
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64) * 3 + 1
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    ref = ln.weight[:, None, None] * (x - u) / torch.sqrt(s + 1e-6) + ln.bias[:, None, None]
    out = ln(x)
    assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12) and out.is_contiguous()


def test_grn_formula_and_half_precision() -> None:
    grn = GRNwithNHWC(6).double()
    with torch.no_grad():
        grn.gamma.normal_()
        grn.beta.normal_()
    x = torch.randn(2, 5, 7, 6, dtype=torch.float64)
    gx = x.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    assert torch.allclose(grn(x), (grn.gamma * nx + 1) * x + grn.beta, rtol=1e-12, atol=1e-12)
    # a large map in bfloat16: sum of squares must not overflow / lose the norm
    big = (torch.randn(1, 128, 384, 6) * 300).to(torch.bfloat16)
    g16 = GRNwithNHWC(6).to(torch.bfloat16)
    with torch.no_grad():
        g16.gamma.fill_(0.5)
    out = g16(big)
    ref = GRNwithNHWC(6)
    with torch.no_grad():
        ref.gamma.fill_(0.5)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.float(), ref(big.float()), rtol=2e-2, atol=1.0)


def test_se_block_matches_formula() -> None:
    se = SEBlock(8, 2).double()
    x = torch.randn(3, 8, 5, 6, dtype=torch.float64)
    p = x.mean((2, 3))
    h = torch.relu(p @ se.down.weight[:, :, 0, 0].T + se.down.bias)
    s = torch.sigmoid(h @ se.up.weight[:, :, 0, 0].T + se.up.bias)
    assert torch.allclose(se(x), x * s[:, :, None, None], rtol=1e-12, atol=1e-12)


def test_block_matches_written_out_reference() -> None:
    """Whole block in eval mode vs the paper's formula written with functional ops (float64)."""
    from test_reparam import randomize_  # same directory

    blk = randomize_(UniRepLKNetBlock(8, 5), seed=1).double().eval()
    x = torch.randn(2, 8, 12, 10, dtype=torch.float64)

    def bn(y: torch.Tensor, m: nn.BatchNorm2d) -> torch.Tensor:
        return F.batch_norm(y, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    y = bn(F.conv2d(x, blk.dwconv.weight, None, 1, 2, 1, 8), blk.norm)
    s = torch.sigmoid(F.conv2d(torch.relu(F.conv2d(y.mean((2, 3), keepdim=True), blk.se.down.weight,
                                                   blk.se.down.bias)), blk.se.up.weight, blk.se.up.bias))
    y = (y * s).permute(0, 2, 3, 1)
    y = F.gelu(y @ blk.pwconv1[1].weight.T + blk.pwconv1[1].bias)
    gx = y.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()
    y = (blk.act[1].gamma * gx / (gx.mean(-1, keepdim=True) + 1e-6) + 1) * y + blk.act[1].beta
    y = bn((y @ blk.pwconv2[0].weight.T).permute(0, 3, 1, 2), blk.pwconv2[2])
    ref = x + blk.gamma.view(1, -1, 1, 1) * y
    assert torch.allclose(blk(x), ref, rtol=1e-10, atol=1e-12)


def test_drop_path_rates_linear() -> None:
    m = create_model("a", drop_path_rate=0.3)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0 for b in m.blocks()]
    assert rates == pytest.approx(torch.linspace(0, 0.3, 12).tolist())
    m.train()
    x = torch.randn(4, 3, 32, 32)
    assert not torch.equal(m(x), m(x))  # stochastic in training
    m.eval()
    assert torch.equal(m(x), m(x))


def test_layer_scale_init_and_head_scale() -> None:
    m = create_model("a", layer_scale_init_value=1e-6, head_init_scale=0.0)
    assert all(torch.all(b.gamma == 1e-6) for b in m.blocks())
    assert torch.count_nonzero(m.head.weight) == 0
    m = create_model("a", layer_scale_init_value=0)
    assert all(b.gamma is None for b in m.blocks())


# ----------------------------------------------------------------------------------------- features mode
def test_features_mode_shapes_and_names() -> None:
    m = create_model("a", in_chans=1, out_indices=(0, 1, 2, 3)).eval()
    assert not hasattr(m, "head") and not hasattr(m, "norm")
    assert all(isinstance(getattr(m, f"norm{i}"), LayerNorm) for i in range(4))
    assert m.feature_dims == (40, 80, 160, 320) and m.num_features == 320 and m.feature_strides == (4, 8, 16, 32)
    x = torch.randn(2, 1, 64, 96)
    feats = m.forward_features(x)
    assert [tuple(f.shape) for f in feats] == [(2, 40, 16, 24), (2, 80, 8, 12), (2, 160, 4, 6), (2, 320, 2, 3)]
    # each output is the channels-first LayerNorm of the stage output: zero mean / unit var over C when affine=id
    for f in feats:
        assert torch.allclose(f.mean(1), torch.zeros(()), atol=1e-5)
    sd = m.state_dict()
    assert "norm3.weight" in sd and "head.weight" not in sd


def test_features_mode_skips_unused_stages() -> None:
    m = tiny(out_indices=(1,))
    called = []
    m.stages[2].register_forward_hook(lambda *a: called.append(2))
    out = m(torch.randn(1, 1, 32, 48))
    assert len(out) == 1 and out[0].shape == (1, 16, 4, 6) and called == []
    assert m.feature_dims == (16,)


def test_classification_mode() -> None:
    m = create_model("a", num_classes=7).eval()
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    m0 = create_model("a", num_classes=0).eval()
    assert isinstance(m0.head, nn.Identity) and m0(torch.randn(2, 3, 32, 40)).shape == (2, 320)
    feats = m0.forward_features(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [40, 80, 160, 320]


# -------------------------------------------------------------------------------------------- robustness
@pytest.mark.parametrize("hw", [(32, 32), (33, 97), (48, 192), (45, 200), (127, 33)])
def test_any_size_at_least_32(hw: tuple[int, int]) -> None:
    m = tiny(out_indices=(0, 3)).eval()
    h, w = hw
    f0, f3 = m(torch.randn(1, 1, h, w))
    ceil = lambda v, n: -(-v // 2**n)  # noqa: E731 - stride-2 convs with padding 1 give ceil(v/2)
    assert f0.shape[-2:] == (ceil(h, 2), ceil(w, 2)) and f3.shape[-2:] == (ceil(h, 5), ceil(w, 5))


def test_input_errors() -> None:
    m = tiny()
    with pytest.raises(ValueError, match=r"expects 1 input channel\(s\) \(in_chans=1\), got 3"):
        m(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="height and width >= 32.*got 31x64"):
        m(torch.randn(1, 1, 31, 64))
    with pytest.raises(ValueError, match="4-D input"):
        m(torch.randn(1, 32, 32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        m([1, 2, 3])


def test_short_training_non_square_stays_finite() -> None:
    """20 Adam steps on 2x1x48x192 maps (released code reports NaN on non-square inputs, #14)."""
    torch.manual_seed(0)
    m = create_model("a", in_chans=1, num_classes=3, dims=(16, 32, 64, 128), drop_path_rate=0.1)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    x = torch.randn(2, 1, 48, 192)
    y = torch.tensor([0, 2])
    losses = []
    m.train()
    for _ in range(20):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert min(losses[-5:]) < losses[0]  # it learns the two labels
    m.eval()
    assert torch.isfinite(m(torch.randn(1, 1, 384, 128))).all()


def test_gradient_checkpointing_same_gradients_and_bn_stats() -> None:
    torch.manual_seed(0)
    a = tiny(in_chans=1, num_classes=4, drop_path_rate=0.2, kernel_sizes=(3, 7, (13, 0), 5)).double()
    b = copy.deepcopy(a)
    b.with_cp = True
    assert b.with_cp and not a.with_cp
    x = torch.randn(3, 1, 40, 72, dtype=torch.float64)
    for model in (a, b):
        model.train()
        torch.manual_seed(123)  # same drop-path draws
        model(x).pow(2).sum().backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert pa.grad is not None and torch.allclose(pa.grad, pb.grad, rtol=1e-10, atol=1e-14), n
    # recomputation in backward must not update BatchNorm running statistics a second time
    for (n, ba), (_, bb) in zip(a.named_buffers(), b.named_buffers()):
        assert torch.equal(ba, bb), n
    # input gradients too
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    torch.manual_seed(1)
    a(xa).sum().backward()
    torch.manual_seed(1)
    b(xb).sum().backward()
    assert torch.allclose(xa.grad, xb.grad, rtol=1e-10, atol=1e-14)


def test_constructor_with_cp_flag() -> None:
    m = tiny(with_cp=True)
    assert m.with_cp and all(blk.with_cp for blk in m.blocks())


def test_grn_zero_channel_has_finite_gradient() -> None:
    grn = GRNwithNHWC(4).double()
    with torch.no_grad():
        grn.gamma.fill_(0.7)
    x = torch.randn(2, 5, 6, 4, dtype=torch.float64)
    x[:, :, :, 1] = 0.0
    x.requires_grad_()
    grn(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    # same gradient as the reference formula built on torch.linalg.vector_norm (which masks the zero norm)
    xr = x.detach().clone().requires_grad_()
    gx = torch.linalg.vector_norm(xr, 2, dim=(1, 2), keepdim=True)
    ((grn.gamma * gx / (gx.mean(-1, keepdim=True) + 1e-6) + 1) * xr + grn.beta).sum().backward()
    assert torch.allclose(x.grad, xr.grad, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------- benchmark
def _load_benchmark():  # benchmarks/ is not a package
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "backbone.py"
    spec = importlib.util.spec_from_file_location("bench_backbone", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_mac_count_closed_form() -> None:
    bench = _load_benchmark()
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), DWConv2d(8, 7, dilation=2), nn.Flatten(2),
                        nn.Linear(16 * 20, 5))
    x = torch.randn(1, 3, 32, 40)
    expected = 8 * 16 * 20 * 3 * 9 + 8 * 16 * 20 * 49 + 8 * 5 * 320
    assert bench.count_macs(net, x) == expected
    with torch.device("meta"):
        a = create_model("a")
    # the DRB's branches are all counted in training form (they are skipped by the fused eval path)
    assert bench.count_macs(a, torch.empty(1, 3, 224, 224, device="meta")) == 674_684_480


def test_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load_benchmark()
    assert bench.main(["--variants", "a", "--size", "32", "64", "--batch", "1", "--iters", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "| a | auto | 32x64 | 1 | 4.65 / 4.44 |" in out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_large_activations_stay_finite(dtype: torch.dtype) -> None:
    """Half-precision autocast on inputs with huge values: LayerNorm/GRN reductions must not overflow (#14)."""
    m = tiny(in_chans=1, num_classes=4, kernel_sizes=(3, 13, 13, 13)).eval()
    x = torch.randn(2, 1, 96, 32) * 1e3
    with torch.no_grad():
        ref = m(x)
        with torch.autocast("cpu", dtype=dtype):
            out = m(x)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.float(), ref, rtol=0.1, atol=0.1)


@pytest.mark.slow
def test_training_384x128_full_variant_a_stays_finite() -> None:
    """The released code reports NaN at 384x128 (AILab-CVC/UniRepLKNet#14): full variant A, 10 Adam steps."""
    torch.manual_seed(0)
    m = create_model("a", num_classes=10, drop_path_rate=0.1)
    opt = torch.optim.AdamW(m.parameters(), lr=4e-3)
    x, y = torch.randn(2, 3, 384, 128) * 2, torch.tensor([1, 7])
    for _ in range(10):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in m.parameters())


# ------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_gpu_reparam_and_training_step() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from test_reparam import randomize_, rel_err, set_unfused

    dev = torch.device("cuda")
    model = set_unfused(randomize_(create_model("unireplknet_a"), seed=2)).to(dev).eval()
    x = torch.randn(3, 3, 40, 72, device=dev)
    with torch.no_grad():
        ref = model(x)
        model.reparameterize()
        out = model(x)
    assert rel_err(out, ref) <= 1e-5
    net = create_model("a", in_chans=1, num_classes=3, drop_path_rate=0.1).to(dev).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    xb = torch.randn(4, 1, 48, 192, device=dev)
    for _ in range(3):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(net(xb * 100), torch.tensor([0, 1, 2, 0], device=dev))
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)


def test_config_rebuilds_same_model_and_frozen_reparam() -> None:
    m = create_model("a", in_chans=2, num_classes=5, kernel_sizes=(3, 5, 17, 0), out_indices=None)
    twin = UniRepLKNet(**m.config)
    assert repr(twin) == repr(m)
    m.requires_grad_(False)
    m.eval().reparameterize()
    assert not any(p.requires_grad for p in m.parameters())


def test_bf16_autocast_training_step() -> None:
    """training.py defaults to bf16 autocast on CPU: a train step must work and give finite gradients."""
    m = tiny(in_chans=1, num_classes=3, kernel_sizes=(3, 5, 7, 13)).train()
    x = torch.randn(2, 1, 48, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(m(x), torch.tensor([0, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert m.stages[2][1].dwconv.dil_conv_k5_1.weight.grad.abs().sum() > 0
