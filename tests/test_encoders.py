"""Encoders behind the forecaster: Eq. 2 shape rule, exact reshape, token shapes, kernel sizes, sizes, BN folding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from urlk_forecast.models.encoders import (
    ConvNeXtLike,
    ImageEncoder,
    ResNetLike,
    build_encoder,
    eq2_image_shape,
    list_encoders,
    variant_kernel_sizes,
)
from urlk_forecast.models.layers import DropPath, LayerNorm2d, reparameterize_model
from urlk_forecast.models.registry import ENCODERS

DIMS = (8, 16, 32, 64)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------ Eq. 2 rule
@pytest.mark.parametrize(
    "seq_len,d_model,expect",
    [
        (48, 768, (192, 192, 0)),  # the paper: 48·768 = 192²
        (48, 256, (96, 128, 0)),
        (48, 128, (64, 96, 0)),
        (48, 384, (96, 192, 0)),
        (48, 512, (128, 192, 0)),
        (96, 768, (256, 288, 0)),
        (48, 32, (32, 64, 512)),  # 1536 has no 32-multiple factorisation → padded to 32×64
        (24, 100, (32, 96, 672)),  # 2400 → smallest padded area 3072 (32×96)
    ],
)
def test_eq2_known_shapes(seq_len, d_model, expect):
    assert eq2_image_shape(seq_len, d_model) == expect


def _brute(n: int) -> tuple[int, int, int]:
    exact = [(h, n // h) for h in range(32, n + 1, 32) if n % h == 0 and (n // h) % 32 == 0]
    if exact:
        h, w = min(exact, key=lambda hw: (abs(hw[0] - hw[1]), hw[0] > hw[1]))
        return min(h, w), max(h, w), 0
    best = None
    for h in range(32, 4 * n + 33, 32):
        for w in range(h, 4 * n + 33, 32):
            if h * w >= n:
                key = (h * w, w - h)
                if best is None or key < best[0]:
                    best = (key, (h, w))
                break
    (area, _), (h, w) = best
    return h, w, area - n


@pytest.mark.parametrize("seq_len", [8, 24, 48, 96])
@pytest.mark.parametrize("d_model", [16, 32, 64, 96, 100, 128, 192, 200, 256, 320, 512, 768])
def test_eq2_rule_against_brute_force(seq_len, d_model):
    H, W, pad = eq2_image_shape(seq_len, d_model)
    assert H % 32 == 0 and W % 32 == 0 and H <= W
    assert H * W == seq_len * d_model + pad
    assert (H, W, pad) == _brute(seq_len * d_model)


def test_eq2_errors():
    with pytest.raises(ValueError, match="no factorisation"):
        eq2_image_shape(48, 32, allow_pad=False)
    with pytest.raises(ValueError, match="multiples of the encoder stride"):
        eq2_image_shape(48, 128, image_shape=(60, 100))
    with pytest.raises(ValueError, match="holds 4096 values"):
        eq2_image_shape(48, 128, image_shape=(64, 64))
    with pytest.raises(ValueError, match="allow_pad=False"):
        eq2_image_shape(48, 128, image_shape=(96, 96), allow_pad=False)
    assert eq2_image_shape(48, 128, image_shape=(32, 192)) == (32, 192, 0)
    assert eq2_image_shape(48, 128, image_shape=(96, 96)) == (96, 96, 3072)


def test_to_image_is_the_row_major_reshape():
    enc = build_encoder("unireplknet", d_model=32, seq_len=48, n_nodes=1, dims=DIMS)
    assert (enc.H, enc.W, enc.pad) == (32, 64, 512)
    x = torch.randn(3, 48, 32)
    img = enc.to_image(x)
    assert img.shape == (3, 1, 32, 64)
    flat = img.reshape(3, -1)
    torch.testing.assert_close(flat[:, : 48 * 32], x.reshape(3, -1), rtol=0, atol=0)
    assert (flat[:, 48 * 32:] == 0).all()
    # pixel (r, c) of the image is embedding value (t, d) with r·W + c = t·d_model + d
    t, d = 17, 5
    r, c = divmod(t * 32 + d, 64)
    assert img[1, 0, r, c] == x[1, t, d]
    with pytest.raises(ValueError, match="expects \\(batch, 48, 32\\)"):
        enc.to_image(torch.randn(3, 40, 32))


# --------------------------------------------------------------------------------------------- encoders
@pytest.mark.parametrize("name", list_encoders())
def test_every_encoder_maps_to_d_model_tokens(name):
    kw = {"dims": DIMS} if name != "corrformer" else {"e_layers": 1, "node_list": [3]}
    enc = build_encoder(name, d_model=64, seq_len=48, n_nodes=3, n_heads=4, **kw)
    x = torch.randn(6, 48, 64)  # 2 samples × 3 nodes
    out = enc(x)
    expect_tokens = 48 if name == "corrformer" else (96 // 32) * (32 // 32)  # 48·64 = 32×96 → 1×3 tokens
    assert out.shape == (6, expect_tokens, 64)
    assert enc.out_tokens == expect_tokens
    assert enc.token_kind == ("temporal" if name == "corrformer" else "spatial")
    out.square().mean().backward()


def test_kernel_size_override():
    ks = variant_kernel_sizes("unireplknet_s", 31)
    assert ks[0] == [3, 3, 3] and ks[1] == [31] * 3 and ks[3] == [31] * 3
    assert ks[2][:3] == [31, 3, 3] and len(ks[2]) == 27
    enc = build_encoder("unireplknet", d_model=32, seq_len=48, n_nodes=1, dims=DIMS, kernel_size=7)
    assert enc.backbone.kernel_sizes[1] == (7, 7) and enc.backbone.kernel_sizes[0] == (3, 3)
    cnx = build_encoder("convnext", d_model=32, seq_len=48, n_nodes=1, dims=DIMS)
    assert {b.dwconv.kernel_size for s in cnx.backbone.stages for b in s} == {(7, 7)}
    res = build_encoder("resnet", d_model=32, seq_len=48, n_nodes=1, dims=DIMS, kernel_size=5)
    assert {b.conv1.kernel_size for s in res.backbone.stages for b in s} == {(5, 5)}
    with pytest.raises(ValueError, match="odd integer"):
        variant_kernel_sizes("a", 8)


@pytest.mark.parametrize("variant", ["unireplknet_a", "unireplknet_s"])
def test_comparison_encoders_have_similar_size(variant):
    with torch.device("meta"):
        counts = {name: sum(p.numel() for p in build_encoder(name, d_model=256, seq_len=48, n_nodes=1,
                                                             variant=variant).backbone.parameters())
                  for name in ("unireplknet", "convnext", "resnet")}
    for name in ("convnext", "resnet"):
        assert 0.75 <= counts[name] / counts["unireplknet"] <= 1.25, counts


def test_encoder_names_are_the_registry_names():
    assert list_encoders() == list(ENCODERS)


def test_unknown_encoder_and_options():
    with pytest.raises(ValueError, match="available: unireplknet, convnext, resnet, corrformer"):
        build_encoder("vit", d_model=32, seq_len=48, n_nodes=1)
    with pytest.raises(TypeError, match="accepted"):
        build_encoder("convnext", d_model=32, seq_len=48, n_nodes=1, kernel_sizes=3)
    with pytest.raises(ValueError, match="multiplies to"):
        build_encoder("corrformer", d_model=32, seq_len=48, n_nodes=6, n_heads=4, node_list=[4])


# ------------------------------------------------------------------------------------- ResNet specifics
def _randomise_bn(net: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.3)


def test_resnet_bn_folding_is_exact():
    enc = ImageEncoder(ResNetLike(1, (1, 2, 1, 1), DIMS), d_model=32, seq_len=48).double().eval()
    _randomise_bn(enc)
    x = torch.randn(4, 48, 32, dtype=torch.float64)
    with torch.no_grad():
        before = enc(x)
        enc.reparameterize()
        after = enc(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("cls", [ResNetLike, ConvNeXtLike])
def test_checkpointing_same_gradients_and_bn_stats(cls):
    torch.manual_seed(0)
    a = cls(1, (1, 2, 1, 1), DIMS)
    b = cls(1, (1, 2, 1, 1), DIMS, with_cp=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 1, 64, 64)
    for net in (a, b):
        net.train()
        net.forward_features(x)[-1].square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-6, msg=name)
    for (name, ba), bb in zip(a.named_buffers(), b.buffers()):  # running stats updated once, not twice
        torch.testing.assert_close(bb, ba, msg=name)



def test_reparameterize_model_folds_resnet_without_special_case():
    """The generic walk reaches the ResNet blocks and stem through any wrapper; outputs equal in eval mode and the
    inference-form keys are the conv weights and biases only (shortcut conv in place of its Sequential)."""
    wrapper = torch.nn.Sequential(ImageEncoder(ResNetLike(1, (1, 2, 1, 1), DIMS), d_model=32, seq_len=48))
    wrapper = wrapper.double().eval()
    _randomise_bn(wrapper)
    x = torch.randn(3, 48, 32, dtype=torch.float64)
    with torch.no_grad():
        before = wrapper(x)
        reparameterize_model(wrapper)
        after = wrapper(x)
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-10)
    keys = list(wrapper.state_dict())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in wrapper.modules())
    assert "0.backbone.stem.0.bias" in keys and "0.backbone.stages.1.0.shortcut.weight" in keys
    assert "0.backbone.stages.1.0.shortcut.bias" in keys and "0.backbone.stages.1.0.conv1.bias" in keys
    assert not any(".bn" in k or "stem.1." in k or "shortcut.0." in k for k in keys)
    reparameterize_model(wrapper)  # idempotent
    assert list(wrapper.state_dict()) == keys


@pytest.mark.parametrize("name", ["unireplknet", "convnext", "resnet"])
def test_every_image_encoder_reparameterizes_exactly(name):
    """ConvNeXt has nothing to re-parameterize; the others lose their BatchNorms; all keep their outputs."""
    enc = build_encoder(name, d_model=32, seq_len=48, n_nodes=1, dims=DIMS).double().eval()
    _randomise_bn(enc)
    x = torch.randn(2, 48, 32, dtype=torch.float64)
    keys = list(enc.state_dict())
    with torch.no_grad():
        before = enc(x)
        enc.reparameterize()
        after = enc(x)
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-10)
    assert (list(enc.state_dict()) == keys) == (name == "convnext")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())


def test_shared_layers_against_references():
    ln = LayerNorm2d(6)
    with torch.no_grad():
        ln.weight.copy_(torch.rand(6) + 0.5)
        ln.bias.copy_(torch.randn(6))
    x = torch.randn(2, 6, 5, 7)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (6,), ln.weight, ln.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), ref)
    dp = DropPath(0.25)
    assert dp.eval()(x) is x
    torch.manual_seed(0)
    y = dp.train()(x)
    kept = (y != 0).flatten(1).all(1)
    for i in range(2):  # per sample: dropped entirely or kept and scaled by 1 / keep
        torch.testing.assert_close(y[i], x[i] / 0.75 if kept[i] else torch.zeros_like(x[i]))
    with pytest.raises(ValueError, match="drop_prob"):
        DropPath(1.0)
