"""Every public constructor in ``urlk_forecast.models`` works with its defaults.

Each case builds one public class (or calls one public ``create_*``/``build_*`` factory) with its default arguments
only -- plus the arguments that have no default (sizes such as ``channels`` or ``num_classes``) -- and runs one
forward on a small input of the documented default shape, checking the output shape and that it is finite.
:func:`test_every_public_constructor_has_a_case` fails when a public model class or factory has no case here.
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
from collections.abc import Callable

import pytest
import torch
from torch import nn

import urlk_forecast.models as models_pkg
from urlk_forecast.models import corrformer, decoder, embedding, encoders, forecast_net, fusion, layers, modalities
from urlk_forecast.models import unireplknet as urlk

#: public names that are no model constructors (errors, result records)
NOT_MODELS = {"checkpoint.CheckpointError", "checkpoint.LoadReport"}

CASES: dict[str, Callable[[], tuple[torch.Tensor, tuple[int, ...]]]] = {}


def case(name: str) -> Callable:
    def register(fn: Callable[[], tuple[torch.Tensor, tuple[int, ...]]]) -> Callable:
        CASES[name] = fn
        return fn
    return register


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _public_constructors() -> set[str]:
    """``module.Name`` of every public nn.Module class (or other class) and create_/build_ function of the package."""
    found = set()
    for info in pkgutil.iter_modules(models_pkg.__path__):
        mod = importlib.import_module(f"urlk_forecast.models.{info.name}")
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isclass(obj) or (inspect.isfunction(obj) and name.startswith(("create_", "build_"))):
                found.add(f"{info.name}.{name}")
    return found - NOT_MODELS


# ------------------------------------------------------------------------------------------ modalities
@case("modalities.AudioAdapter")
def _audio():
    return modalities.AudioAdapter()(0.1 * torch.randn(2, 16000)), (2, 1, 98, 128)  # 1 s of 16 kHz audio


@case("modalities.VideoAdapter")
def _video():
    return modalities.VideoAdapter()(torch.randn(1, 16, 3, 8, 8)), (1, 3, 32, 32)


@case("modalities.PointCloudAdapter")
def _points():
    return modalities.PointCloudAdapter()(torch.randn(1, 256, 3)), (1, 3, 224, 224)


@case("modalities.ImageAdapter")
def _image():
    return modalities.ImageAdapter()(torch.randn(1, 3, 32, 32)), (1, 3, 32, 32)


@case("modalities.ModalityClassifier")
def _modality_classifier():
    net = modalities.ModalityClassifier("image", modalities.ImageAdapter(), urlk.create_model("unireplknet_a"))
    return net(torch.randn(2, 3, 32, 32)), (2, 1000)  # training mode: BatchNorm needs 2 values on the 1x1 map


@case("modalities.create_classifier")
def _create_classifier():
    """Every modality with the paper's defaults (unireplknet_a): 1 s of 16 kHz audio, 16 frames, a point cloud."""
    inputs = {"audio": torch.randn(1, 16000) * 0.1, "image": torch.randn(1, 3, 32, 32),
              "video": torch.randn(1, 16, 3, 8, 8), "point_cloud": torch.randn(1, 128, 3)}
    outs = []
    for modality, x in inputs.items():
        net = modalities.create_classifier(modality, num_classes=5).eval()
        with torch.no_grad():
            outs.append(net(x))
    return torch.cat(outs), (len(inputs), 5)


# ----------------------------------------------------------------------------------------- unireplknet
@case("unireplknet.UniRepLKNet")
def _unireplknet():
    return urlk.UniRepLKNet().eval()(torch.randn(1, 3, 32, 32)), (1, 1000)


@case("unireplknet.create_model")
def _create_model():
    return urlk.create_model("unireplknet_a")(torch.randn(2, 3, 32, 32)), (2, 1000)


@case("unireplknet.UniRepLKNetBlock")
def _block():
    return urlk.UniRepLKNetBlock(16, 13)(torch.randn(1, 16, 8, 8)), (1, 16, 8, 8)


@case("unireplknet.DilatedReparamBlock")
def _dilated():
    return urlk.DilatedReparamBlock(8, 13)(torch.randn(1, 8, 16, 16)), (1, 8, 16, 16)


@case("unireplknet.GRNwithNHWC")
def _grn():
    return urlk.GRNwithNHWC(8)(torch.randn(1, 4, 4, 8)), (1, 4, 4, 8)


@case("unireplknet.SEBlock")
def _se():
    return urlk.SEBlock(16, 4)(torch.randn(1, 16, 4, 4)), (1, 16, 4, 4)


# ---------------------------------------------------------------------------------------------- layers
@case("layers.LayerNorm")
def _layer_norm():
    return layers.LayerNorm(8)(torch.randn(2, 4, 4, 8)), (2, 4, 4, 8)


@case("layers.LayerNorm2d")
def _layer_norm_2d():
    return layers.LayerNorm2d(8)(torch.randn(2, 8, 4, 4)), (2, 8, 4, 4)


@case("layers.DropPath")
def _drop_path():
    x = torch.randn(2, 8)
    out = layers.DropPath()(x)
    assert torch.equal(out, x)  # drop_prob 0: the identity
    return out, (2, 8)


@case("layers.Dropout")
def _dropout():
    x = torch.ones(64, 256)
    d = layers.Dropout()  # nn.Dropout's default p = 0.5
    assert torch.equal(d.eval()(x), x)  # eval: the identity
    out = d.train()(x)
    kept = out != 0
    assert torch.equal(out[kept], torch.full_like(out[kept], 2.0))  # kept entries scaled by 1 / (1 - 0.5)
    assert 0.4 < kept.float().mean().item() < 0.6
    return out, (64, 256)


@case("layers.FrozenBNStats")
def _frozen_bn():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    before = net[1].running_mean.clone()
    with layers.FrozenBNStats(net):
        out = net(torch.randn(2, 3, 8, 8))
    assert torch.equal(net[1].running_mean, before)
    return out, (2, 4, 6, 6)


@case("layers.SeasonalSkip")
def _seasonal_skip():
    x = torch.randn(2, 48, 5)
    out = layers.SeasonalSkip(48, 24)(x)
    torch.testing.assert_close(out, x[:, 24:], rtol=0, atol=1e-6)  # starts as the seasonal naive forecast
    return out, (2, 24, 5)


# ------------------------------------------------------------------------------------------- embedding
@case("embedding.RevIN")
def _revin():
    rev = embedding.RevIN(11)
    x = torch.randn(2, 48, 22)
    xn, stats = rev.normalize(x)
    return rev.denormalize(xn, stats), (2, 48, 22)


@case("embedding.NodeGrouping")
def _grouping():
    g = embedding.NodeGrouping(12, 11)
    return g.from_nodes(g.to_nodes(g.pad(torch.randn(2, 48, 12)))), (2, 48, 22)


@case("embedding.TokenEmbedding")
def _token_embedding():
    return embedding.TokenEmbedding(11, 64)(torch.randn(2, 48, 11)), (2, 48, 64)


@case("embedding.DataEmbedding")
def _data_embedding():
    emb = embedding.DataEmbedding(11, 64)  # 2 windows x 2 nodes of 11 stations
    return emb(torch.randn(4, 48, 11), torch.randn(2, 48, 4), torch.randn(2, 33)), (4, 48, 64)


# --------------------------------------------------------------------------------------------- decoder
@case("decoder.MovingAverage")
def _moving_average():
    return decoder.MovingAverage(25)(torch.randn(2, 48, 8)), (2, 48, 8)


@case("decoder.SeriesDecomp")
def _series_decomp():
    seasonal, trend = decoder.SeriesDecomp(25)(torch.randn(2, 48, 8))
    return torch.stack([seasonal, trend]), (2, 2, 48, 8)


@case("decoder.SeasonalLayerNorm")
def _seasonal_norm():
    return decoder.SeasonalLayerNorm(8)(torch.randn(2, 48, 8)), (2, 48, 8)


@case("decoder.MultiHeadProjection")
def _multi_head_projection():
    q, k, v = decoder.MultiHeadProjection(64, 8).project(torch.randn(2, 48, 64), torch.randn(2, 12, 64))
    assert k.shape == v.shape == (2, 12, 8, 8)
    return q, (2, 48, 8, 8)


@case("decoder.CrossAttention")
def _cross_attention():
    return decoder.CrossAttention(64, 8)(torch.randn(2, 48, 64), torch.randn(2, 12, 64)), (2, 48, 64)


def _decoder_layer() -> decoder.DecoderLayer:
    self_block = corrformer.build_multi_correlation(64, 8, 48, [1])
    return decoder.DecoderLayer(self_block, decoder.CrossAttention(64, 8), 64, 11)


@case("decoder.DecoderLayer")
def _decoder_layer_case():
    x, trend = _decoder_layer()(torch.randn(2, 48, 64), torch.randn(2, 12, 64))
    assert trend.shape == (2, 48, 11)
    return x, (2, 48, 64)


@case("decoder.Decoder")
def _decoder():
    seasonal, trend = decoder.Decoder([_decoder_layer()], 64, 11)(torch.randn(2, 48, 64), torch.randn(2, 12, 64),
                                                                  torch.randn(2, 48, 11))
    assert trend.shape == (2, 48, 11)
    return seasonal, (2, 48, 11)


# ------------------------------------------------------------------------------------------ corrformer
@case("corrformer.AutoCorrelation")
def _auto_correlation():
    q = torch.randn(2, 48, 8, 8)
    return corrformer.AutoCorrelation()(q, q, q), (2, 48, 8, 8)


@case("corrformer.AutoCorrelationLayer")
def _auto_correlation_layer():
    return corrformer.AutoCorrelationLayer(64, 8)(torch.randn(2, 48, 64), torch.randn(2, 48, 64)), (2, 48, 64)


@case("corrformer.CausalFusion")
def _causal_fusion():
    return corrformer.CausalFusion(16)(torch.randn(2, 16, 5)), (2, 16, 5)


@case("corrformer.CrossCorrelation")
def _cross_correlation():
    q = torch.randn(2, 4, 48, 8, 8)  # (B, nodes, L, heads, head_dim)
    return corrformer.CrossCorrelation(8, 48)(q, q, q), (2, 4, 48, 8, 8)


@case("corrformer.CrossCorrelationLayer")
def _cross_correlation_layer():
    x = torch.randn(2 * 4, 48, 64)
    return corrformer.CrossCorrelationLayer(64, 8, 48)(x, x, 4), (8, 48, 64)


@case("corrformer.MultiCorrelation")
def _multi_correlation():
    x = torch.randn(2 * 4, 48, 64)
    return corrformer.MultiCorrelation(64, 8, 48, [2, 2])(x, x), (8, 48, 64)


@case("corrformer.build_multi_correlation")
def _build_multi_correlation():
    x = torch.randn(2 * 4, 48, 64)
    return corrformer.build_multi_correlation(64, 8, 48, [2, 2])(x, x), (8, 48, 64)


@case("corrformer.CorrformerEncoderLayer")
def _corrformer_layer():
    layer = corrformer.CorrformerEncoderLayer(corrformer.MultiCorrelation(64, 8, 48, [2, 2]), 64)
    return layer(torch.randn(8, 48, 64)), (8, 48, 64)


@case("corrformer.CorrformerEncoder")
def _corrformer_encoder():
    return corrformer.CorrformerEncoder(64, 48, 4)(torch.randn(8, 48, 64)), (8, 48, 64)


# -------------------------------------------------------------------------------------------- encoders
@case("encoders.ConvNeXtLike")
def _convnext():
    return encoders.ConvNeXtLike().forward_features(torch.randn(1, 1, 64, 96))[-1], (1, 320, 2, 3)


@case("encoders.ResNetLike")
def _resnet():
    return encoders.ResNetLike().forward_features(torch.randn(1, 1, 64, 96))[-1], (1, 320, 2, 3)


@case("encoders.ImageEncoder")
def _image_encoder():
    enc = encoders.ImageEncoder(urlk.create_model("unireplknet_a", in_chans=1), 128, 48)  # 48 x 128 -> 64 x 96
    return enc(torch.randn(2, 48, 128)), (2, 6, 128)


@case("encoders.build_encoder")
def _build_encoder():
    outs = []
    for name in encoders.list_encoders():
        enc = encoders.build_encoder(name, d_model=128, seq_len=48, n_nodes=2)
        out = enc(torch.randn(2, 48, 128))
        assert out.shape[0] == 2 and out.shape[-1] == 128, name
        outs.append(out.mean(1))
    return torch.stack(outs), (len(encoders.list_encoders()), 2, 128)


# ---------------------------------------------------------------------------------- forecaster, fusion
def _window_batch(S: int, B: int = 1, seq_len: int = 48, dec_len: int = 48) -> dict[str, torch.Tensor]:
    t = torch.arange(seq_len, dtype=torch.float32)[None, :, None]
    return {"x": 10 + 5 * torch.sin(2 * math.pi * t / 24).expand(B, seq_len, S) + torch.randn(B, seq_len, S),
            "x_mark": torch.rand(B, seq_len, 4) - 0.5, "y_mark": torch.rand(B, dec_len, 4) - 0.5}


@case("forecast_net.ForecastNet")
def _forecast_net():
    return forecast_net.ForecastNet(12)(_window_batch(12)), (1, 24, 12)


@case("fusion.LargeKernelFusion")
def _large_kernel_fusion():
    return fusion.LargeKernelFusion(16, 4)(torch.randn(2, 16, 48), torch.randn(2, 4, 24)), (2, 16, 48)


@case("fusion.ForecastFusion")
def _forecast_fusion():
    fuse = fusion.ForecastFusion(64, 12, 11, 2)
    batch = {"aux": torch.randn(2, 48, 12)}
    out = fuse(torch.randn(2 * 2, 6, 64), batch)
    assert out.shape[0] == 4 and out.shape[-1] == 64
    return out, tuple(out.shape)


@case("fusion.build_forecast_fusion")
def _build_forecast_fusion():
    fuse = fusion.build_forecast_fusion(d_model=64, seq_len=48, n_nodes=2, node_size=11, n_stations=12)
    out = fuse(torch.randn(4, 6, 64), {"aux": torch.randn(2, 48, 12)})
    assert out.shape[0] == 4 and out.shape[-1] == 64
    return out, tuple(out.shape)


# ---------------------------------------------------------------------- the tests (after every case)
def test_every_public_constructor_has_a_case():
    assert _public_constructors() - set(CASES) == set()
    assert set(CASES) - _public_constructors() == set()  # no stale cases


@pytest.mark.parametrize("name", sorted(CASES))
def test_defaults_construct_and_run(name):
    out, shape = CASES[name]()
    assert tuple(out.shape) == shape
    assert torch.isfinite(out).all()
