"""ForecastNet: shapes, no target leakage, RevIN, grouping, decomposition, correlations, reparam, config, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from urlk_forecast.models.corrformer import (
    AutoCorrelation,
    CausalFusion,
    CrossCorrelation,
    MultiCorrelation,
    auto_node_list,
)
from urlk_forecast.models.decoder import MovingAverage, SeriesDecomp
from urlk_forecast.models.embedding import DataEmbedding, NodeGrouping, RevIN
from urlk_forecast.models.forecast_net import ForecastNet, default_d_model

TINY = dict(d_model=32, n_heads=4, node_size=4)
DIMS = dict(dims=(8, 16, 32, 64))


@pytest.fixture(autouse=True)
def _one_thread():
    """The CI/dev CPU is shared: one intra-op thread avoids oversubscription (10x slower otherwise)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_batch(B: int = 2, S: int = 12, seq_len: int = 48, dec_len: int = 48, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(seq_len + dec_len, dtype=torch.float32)
    x = 10 + 5 * torch.sin(2 * math.pi * t[:seq_len, None] / 24 + torch.rand(S, generator=g) * 6)
    x = x.expand(B, -1, -1) + 0.5 * torch.randn(B, seq_len, S, generator=g)
    y = torch.randn(B, dec_len, S, generator=g)
    return {
        "x": x.contiguous(),
        "x_mark": torch.rand(B, seq_len, 4, generator=g) - 0.5,
        "y_mark": torch.rand(B, dec_len, 4, generator=g) - 0.5,
        "x_mask": torch.ones(B, seq_len, S, dtype=torch.bool),
        "y": y,
        "y_mask": torch.ones(B, dec_len, S, dtype=torch.bool),
    }


def tiny_net(S: int = 12, encoder: str = "unireplknet", **kw) -> ForecastNet:
    extra = dict(DIMS) if encoder in ("unireplknet", "convnext", "resnet") else {"e_layers": 1}
    extra.update(kw)
    return ForecastNet(S, coords=torch.randn(S, 3), encoder=encoder, **{**TINY, **extra})


class NoTargets(dict):
    """A batch that fails loudly if anyone reads the targets."""

    def __getitem__(self, key):
        if key in ("y", "y_mask"):
            raise AssertionError(f"ForecastNet read batch[{key!r}]")
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key in ("y", "y_mask"):
            raise AssertionError(f"ForecastNet read batch[{key!r}]")
        return super().get(key, default)


# ------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("encoder", ["unireplknet", "convnext", "resnet", "corrformer"])
@pytest.mark.parametrize("S", [12, 13])  # 13 stations: the last node is padded
def test_shapes_every_encoder(encoder, S):
    net = tiny_net(S, encoder)
    batch = make_batch(3, S)
    out = net(batch)
    assert out.shape == (3, 24, S)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


def test_other_lengths_and_batch_one():
    net = ForecastNet(7, coords=torch.randn(7, 3), seq_len=32, label_len=16, pred_len=8, d_model=64, n_heads=4,
                      node_size=3, dims=(8, 16, 32, 64), moving_avg=7)
    out = net(make_batch(1, 7, seq_len=32, dec_len=24))
    assert out.shape == (1, 8, 7)


def test_no_target_leakage():
    net = tiny_net().eval()
    batch = make_batch()
    out = net(NoTargets(batch))  # raises if y / y_mask are touched
    changed = dict(batch, y=torch.full_like(batch["y"], 1e6), y_mask=torch.zeros_like(batch["y_mask"]))
    torch.testing.assert_close(net(changed), out, rtol=0, atol=0)


def test_output_follows_input_scale():
    """Physical units in and out: shifting/scaling a station's input shifts/scales its forecast (RevIN)."""
    net = tiny_net().eval().double()
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in make_batch().items()}
    out = net(batch)
    shifted = dict(batch, x=batch["x"] * 3.0 + 100.0)
    # equal up to the eps inside the std (sqrt(var + 1e-5))
    torch.testing.assert_close(net(shifted), out * 3.0 + 100.0, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------- RevIN
def test_revin_round_trip_and_masked_stats():
    torch.manual_seed(1)
    rev = RevIN(4).double()
    with torch.no_grad():
        rev.affine_weight.copy_(torch.tensor([0.5, 2.0, -1.5, 1.0]))
        rev.affine_bias.copy_(torch.tensor([0.1, -0.3, 2.0, 0.0]))
    x = torch.randn(3, 20, 8, dtype=torch.float64) * 4 + 7
    mask = torch.rand(3, 20, 8) > 0.3
    xn, stats = rev.normalize(x, mask)
    torch.testing.assert_close(rev.denormalize(xn, stats), x, rtol=1e-12, atol=1e-10)
    # statistics over observed entries only, against numpy in float64
    xs, ms = x.numpy(), mask.numpy()
    for b in range(3):
        for s in range(8):
            obs = xs[b, ms[b, :, s], s]
            assert stats[0][b, 0, s].item() == pytest.approx(obs.mean(), rel=1e-12)
            assert stats[1][b, 0, s].item() == pytest.approx(math.sqrt(obs.var() + 1e-5), rel=1e-12)
    # identity "network": forecasting the normalised last steps returns the physical last steps
    torch.testing.assert_close(rev.denormalize(xn[:, -5:], stats), x[:, -5:], rtol=1e-12, atol=1e-10)


def test_revin_missing_values_never_reach_the_network_as_nan():
    rev = RevIN(2)
    x = torch.randn(1, 10, 4)
    x[0, :, 1] = float("nan")  # a station with nothing at all
    x[0, 3, 2] = float("nan")
    mask = torch.isfinite(x)
    mask[0, :, 3] = False  # values present but none observed: falls back to the filled values
    xn, (mean, std) = rev.normalize(x, mask)
    assert torch.isfinite(xn).all()
    assert mean[0, 0, 1] == 0 and std[0, 0, 1] == 1
    assert mean[0, 0, 3].item() == pytest.approx(x[0, :, 3].mean().item(), rel=1e-5)
    assert RevIN.no_observation(x, mask).tolist() == [[False, True, False, True]]


def test_revin_stays_bounded_when_a_station_is_barely_or_constantly_observed():
    """Regression (3850-station CLI run): a station observed at 1 of 48 hours, its other hours gap-filled from
    neighbours, had std = sqrt(eps) and normalised inputs of ~1e3, which blew up the whole node's forecast."""
    rev = RevIN(3, affine=False).double()
    t = torch.arange(48, dtype=torch.float64)
    filled = 8.0 + 3.0 * torch.sin(2 * math.pi * t / 24)  # plausible neighbour-filled temperatures
    x = torch.stack([filled, filled.clone(), torch.full_like(t, 3.0)], dim=-1)[None]
    mask = torch.zeros(1, 48, 3, dtype=torch.bool)
    mask[0, 30, 0] = True  # one reading
    mask[0, :20, 1] = True  # observed, but a quarter of it is needed: 20 >= 12, observed stats are used
    mask[0, :12, 2] = True  # a calm anemometer: 12 observed zeros, then filled with 3 m/s
    x[0, :12, 2] = 0.0
    xn, (mean, std) = rev.normalize(x, mask)
    # the barely observed station falls back to all its finite values
    assert mean[0, 0, 0].item() == pytest.approx(filled.mean().item(), rel=1e-12)
    assert std[0, 0, 0].item() == pytest.approx(math.sqrt(filled.var(unbiased=False).item() + 1e-5), rel=1e-12)
    # enough observations: their own statistics
    assert mean[0, 0, 1].item() == pytest.approx(filled[:20].mean().item(), rel=1e-12)
    # constant observations: std floored at 0.1 x the std of all finite values, not sqrt(eps)
    all_std = x[0, :, 2].std(unbiased=False).item()
    assert std[0, 0, 2].item() == pytest.approx(math.sqrt((0.1 * all_std) ** 2 + 1e-5), rel=1e-9)
    assert xn.abs().max().item() < 50  # was ~1e3 (3 / sqrt(1e-5) ~ 950) before the floor
    torch.testing.assert_close(rev.denormalize(xn, (mean, std)), x, rtol=1e-12, atol=1e-10)


def test_forecast_is_window_mean_when_decoder_outputs_nothing():
    """Zero decoder projections → seasonal 0, trend = trend init = input mean → forecast = window mean."""
    net = tiny_net().double().eval()
    with torch.no_grad():
        net.decoder.projection.weight.zero_()
        net.decoder.projection.bias.zero_()
        for layer in net.decoder.layers:
            layer.trend_projection.weight.zero_()
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in make_batch().items()}
    out = net(batch)
    expect = batch["x"].mean(dim=1, keepdim=True).expand_as(out)
    torch.testing.assert_close(out, expect, rtol=1e-10, atol=1e-8)


def test_masked_inputs_do_not_change_the_statistics():
    net = tiny_net().eval()
    batch = make_batch()
    mask = batch["x_mask"].clone()
    mask[:, 10:20, 5] = False
    a = net(dict(batch, x_mask=mask))
    garbage = batch["x"].clone()
    garbage[:, 10:20, 5] = float("nan")
    b = net(dict(batch, x=garbage, x_mask=mask))
    assert torch.isfinite(b).all()
    assert a.shape == b.shape


# ------------------------------------------------------------------------------------------------ grouping
def test_grouping_round_trip_and_layout():
    g = NodeGrouping(10, 4)  # 3 nodes, 2 padded slots
    assert (g.n_nodes, g.n_padded) == (3, 12)
    x = torch.arange(2 * 5 * 10, dtype=torch.float32).reshape(2, 5, 10)
    nodes = g.to_nodes(g.pad(x))
    assert nodes.shape == (6, 5, 4)
    # node j of sample b holds stations 4j..4j+3 (the last node repeats station 9)
    torch.testing.assert_close(nodes[1], x[0, :, 4:8])
    torch.testing.assert_close(nodes[5], x[1, :, [8, 9, 9, 9]])
    torch.testing.assert_close(g.crop(g.from_nodes(nodes)), x)
    coords = torch.arange(30, dtype=torch.float32).reshape(10, 3)
    nc = g.node_coords(coords)
    assert nc.shape == (3, 12)
    torch.testing.assert_close(nc[1], coords[4:8].reshape(-1))
    torch.testing.assert_close(nc[2], coords[[8, 9, 9, 9]].reshape(-1))


def test_padded_stations_do_not_leak_into_outputs():
    """The crop removes padded slots; real stations' outputs have the requested shape and order."""
    net = tiny_net(13).eval()
    out = net(make_batch(2, 13))
    assert out.shape == (2, 24, 13)


def test_embedding_components():
    emb = DataEmbedding(4, 16, dropout=0.0).double()
    x = torch.randn(6, 10, 4, dtype=torch.float64)
    mark = torch.randn(2, 10, 4, dtype=torch.float64)
    coords = torch.randn(3, 12, dtype=torch.float64)
    out = emb(x, mark, coords)
    conv = emb.value_embedding.token_conv
    xp = torch.cat([x[:, -1:], x, x[:, :1]], dim=1).transpose(1, 2)  # circular padding by hand
    value = torch.nn.functional.conv1d(xp, conv.weight).transpose(1, 2)
    temporal = mark @ emb.temporal_embedding.weight.t()
    geo = coords @ emb.geo_embedding.weight.t() + emb.geo_embedding.bias
    expect = value.reshape(2, 3, 10, 16) + temporal[:, None] + geo[None, :, None]
    torch.testing.assert_close(out, expect.reshape(6, 10, 16))


# ------------------------------------------------------------------------------------------- decomposition
@pytest.mark.parametrize("k", [1, 4, 5, 25])
def test_moving_average_replicate_padding(k):
    x = torch.randn(2, 30, 3, dtype=torch.float64)
    out = MovingAverage(k)(x)
    xs = x.numpy()
    front, end = (k - 1) // 2, k - 1 - (k - 1) // 2
    padded = np.concatenate([np.repeat(xs[:, :1], front, 1), xs, np.repeat(xs[:, -1:], end, 1)], axis=1)
    expect = np.stack([padded[:, i:i + k].mean(axis=1) for i in range(30)], axis=1)
    np.testing.assert_allclose(out.numpy(), expect, rtol=1e-12)
    seasonal, trend = SeriesDecomp(k)(x)
    torch.testing.assert_close(seasonal + trend, x)


# ---------------------------------------------------------------------------------------------- correlations
def _ref_autocorrelation(q, k, v, factor):
    q, k, v = (a.numpy() for a in (q, k, v))
    B, L, H, E = q.shape
    out = np.zeros_like(q)
    top = int(factor * math.log(L))
    for b in range(B):
        for h in range(H):
            corr = np.array([np.mean([sum(q[b, (t + tau) % L, h, e] * k[b, t, h, e] for t in range(L))
                                      for e in range(E)]) for tau in range(L)])
            lags = np.argsort(-corr)[:top]
            w = np.exp(corr[lags] - corr[lags].max())
            w /= w.sum()
            for i, lag in enumerate(lags):
                out[b, :, h] += w[i] * v[b, (np.arange(L) + lag) % L, h]
    return out


def test_autocorrelation_matches_loop_reference():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 12, 2, 3, dtype=torch.float64) for _ in range(3))
    out = AutoCorrelation(factor=1.0).eval()(q, k, v)
    np.testing.assert_allclose(out.numpy(), _ref_autocorrelation(q, k, v, 1.0), rtol=1e-10, atol=1e-12)


def test_autocorrelation_pads_shorter_keys():
    q = torch.randn(1, 12, 2, 3, dtype=torch.float64)
    k = torch.randn(1, 7, 2, 3, dtype=torch.float64)
    out = AutoCorrelation().eval()(q, k, k)
    kp = torch.cat([k, torch.zeros(1, 5, 2, 3, dtype=torch.float64)], dim=1)
    np.testing.assert_allclose(out.numpy(), _ref_autocorrelation(q, kp, kp, 1.0), rtol=1e-10, atol=1e-12)


def test_cross_correlation_matches_loop_reference():
    torch.manual_seed(0)
    B, N, L, H, E = 2, 5, 8, 2, 3
    cc = CrossCorrelation(E, L, factor=1, tcn_layers=1).double().eval()
    with torch.no_grad():  # non-trivial fusion weights so the node order matters
        for p in cc.fusion.parameters():
            p.normal_(0, 0.2)
    q, k, v = (torch.randn(B, N, L, H, E, dtype=torch.float64) for _ in range(3))
    out = cc(q, k, v).detach().numpy()
    qn, kn, vn = q.numpy(), k.numpy(), v.numpy()
    ref = np.zeros_like(qn)
    t = np.arange(L)
    for b in range(B):
        for h in range(H):
            pivot = qn[b, :, :, h].mean(axis=0)  # (L, E)
            lags, gates, aligned = [], [], []
            for n in range(N):
                corr = [np.mean([(pivot[(t + tau) % L, e] * kn[b, n, :, h, e]).sum() for e in range(E)])
                        for tau in range(L)]
                lag = int(np.argmax(corr))
                lags.append(lag)
                gates.append(1 / (1 + math.exp(-corr[lag])))
                aligned.append(vn[b, n, (t - lag) % L, h].T * gates[-1])  # (E, L), v shifted right by lag
            order = np.argsort(lags, kind="stable")
            seq = torch.from_numpy(np.stack([aligned[i].reshape(-1) for i in order], axis=1))[None]  # (1, E·L, N)
            fused = cc.fusion(seq)[0].detach().numpy().T.reshape(N, E, L)
            for j, n in enumerate(order):
                ref[b, n, :, h] = fused[j][:, (t + lags[n]) % L].T
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)


def test_causal_fusion_is_causal():
    f = CausalFusion(6, n_layers=2).double().eval()
    x = torch.randn(2, 6, 9, dtype=torch.float64)
    y = f(x)
    x2 = x.clone()
    x2[..., 5:] += 10.0
    y2 = f(x2)
    torch.testing.assert_close(y2[..., :5], y[..., :5])
    assert not torch.allclose(y2[..., 5:], y[..., 5:])


@pytest.mark.parametrize("spatial", [True, False])
def test_multicorrelation_mixes_nodes_only_when_spatial(spatial):
    torch.manual_seed(0)
    mc = MultiCorrelation(16, 4, 12, node_list=[2, 3], spatial=spatial).double().eval()
    x = torch.randn(2 * 6, 12, 16, dtype=torch.float64)
    y = mc(x, x)
    x2 = x.clone()
    x2[4] += torch.randn(12, 16, dtype=torch.float64)  # sample 0, node 4
    y2 = mc(x2, x2)
    torch.testing.assert_close(y2[6:], y[6:])  # the other sample is never affected
    others_changed = not torch.allclose(y2[[0, 1, 2, 3, 5]], y[[0, 1, 2, 3, 5]])
    assert others_changed == spatial
    if not spatial:
        torch.testing.assert_close(y, mc.auto_correlation(x, x))


def test_auto_node_list():
    assert auto_node_list(350) == [14, 25]
    assert auto_node_list(7) == [7]
    assert auto_node_list(1) == [1]
    assert math.prod(auto_node_list(96)) == 96


# ---------------------------------------------------------------------------------- checkpointing / reparam
@pytest.mark.parametrize("encoder", ["unireplknet", "corrformer"])
def test_gradient_checkpointing_same_gradients(encoder):
    torch.manual_seed(0)
    a = tiny_net(encoder=encoder, dropout=0.0)
    b = tiny_net(encoder=encoder, dropout=0.0, with_cp=True)
    b.load_state_dict(a.state_dict())
    batch = make_batch()
    for net in (a, b):
        net.train()
        net(batch).square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-6, msg=name)


def _randomise_bn(net: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)


@pytest.mark.parametrize("encoder", ["unireplknet", "resnet"])
def test_reparameterize_same_predictions(encoder):
    net = tiny_net(encoder=encoder, kernel_size=7).eval()
    _randomise_bn(net)
    batch = make_batch()
    with torch.no_grad():
        before = net(batch)
        net.reparameterize()
        after = net(batch)
    assert net.reparameterized
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.encoder.modules())
    rel = (after - before).abs().max() / before.abs().max()
    assert rel <= 1e-5


# ------------------------------------------------------------------------------------------- config / errors
def test_config_is_json_and_rebuilds_the_same_net():
    net = tiny_net(13, kernel_size=5).eval()
    text = json.dumps(net.config)
    clone = ForecastNet(**json.loads(text)).eval()
    clone.load_state_dict(net.state_dict())  # coords come back through the persistent buffer
    torch.testing.assert_close(clone.coords, net.coords)
    batch = make_batch(2, 13)
    torch.testing.assert_close(clone(batch), net(batch), rtol=0, atol=0)
    assert net.config["d_model"] == 32 and net.config["node_list"] == [2, 2]  # 4 nodes


def test_defaults_follow_the_paper_script():
    assert default_d_model("unireplknet_s") == 768 and default_d_model("a") == 128
    with torch.device("meta"):
        net = ForecastNet(3850, variant="unireplknet_s", n_heads=16)
    c = net.config
    assert (c["seq_len"], c["label_len"], c["pred_len"], c["node_size"], c["d_model"], c["dropout"]) == \
        (48, 24, 24, 11, 768, 0.05)
    assert net.n_nodes == 350
    assert (net.encoder.H, net.encoder.W, net.encoder.pad) == (192, 192, 0)  # 48·768 = 192², paper Eq. 2
    assert net.encoder.out_tokens == 36


def test_errors_are_clear():
    net = tiny_net()
    batch = make_batch()
    with pytest.raises(ValueError, match="missing \\['x_mark'\\]"):
        net({k: v for k, v in batch.items() if k != "x_mark"})
    with pytest.raises(ValueError, match="stations=12"):
        net(dict(batch, x=batch["x"][..., :11]))
    with pytest.raises(ValueError, match="label_len\\+pred_len=48"):
        net(dict(batch, y_mark=batch["y_mark"][:, :40]))
    with pytest.raises(ValueError, match="x_mask"):
        net(dict(batch, x_mask=batch["x_mask"][:, :10]))
    with pytest.raises(ValueError, match="divisible by n_heads"):
        ForecastNet(12, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="node_list"):
        ForecastNet(12, node_size=4, node_list=[2, 2], **DIMS, d_model=32, n_heads=4)
    with pytest.raises(ValueError, match="unknown encoder 'vit'; available"):
        ForecastNet(12, encoder="vit", d_model=32, n_heads=4)
    with pytest.raises(TypeError, match="unexpected option"):
        ForecastNet(12, encoder="resnet", d_model=32, n_heads=4, bogus=1)
    with pytest.raises(ValueError, match="coords must have shape"):
        ForecastNet(12, coords=np.zeros((11, 3)), d_model=32, n_heads=4, **DIMS)
    with pytest.raises(ValueError, match="NaN"):
        ForecastNet(2, coords=[[0, 0, float("nan")], [0, 0, 0]], d_model=32, n_heads=4, **DIMS)
    with pytest.raises(ValueError, match="label_len"):
        ForecastNet(12, seq_len=10, label_len=20, d_model=32, n_heads=4)


@pytest.mark.parametrize("encoder", ["unireplknet", "convnext", "resnet", "corrformer"])
def test_bf16_autocast_forward_backward(encoder):
    """AMP on CPU (bf16 autocast): finite output close to float32, finite gradients."""
    net = tiny_net(encoder=encoder).eval()
    batch = make_batch()
    ref = net(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(batch)
    assert out.dtype == torch.float32  # RevIN's inverse runs in float32: physical units keep their precision
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
    net.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(batch).square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("encoder", ["unireplknet", "corrformer"])
def test_cuda_matches_cpu(encoder):
    """Device-agnostic: the same weights give the same forecast on CUDA (batch > 1, no hard-wired .cuda())."""
    net = tiny_net(encoder=encoder).eval()
    batch = make_batch(3)
    ref = net(batch)
    gpu = net.cuda()
    out = gpu({k: v.cuda() for k, v in batch.items()})
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-3, atol=1e-3)
    gpu.train()
    gpu({k: v.cuda() for k, v in batch.items()}).square().mean().backward()


def test_seasonal_skip_starts_at_seasonal_naive_and_linear_at_zero() -> None:
    """SeasonalSkip: lead h copies input step L - 24 + h % 24 (persistence when the season exceeds the input);
    in a ForecastNet it adds exactly x[seasonal-naive step] - window mean to the paper network's output (RevIN's
    affine is the identity at initialisation), checked against the same weights without the skip."""
    from urlk_forecast.data.synthetic import synthetic_global
    from urlk_forecast.data.windows import WindowDataset
    from urlk_forecast.models.forecast_net import ForecastNet
    from urlk_forecast.models.layers import SeasonalSkip

    xn = torch.randn(3, 48, 5)
    out = SeasonalSkip(48, 30, "seasonal", 24)(xn)
    ref = torch.stack([xn[:, 48 - 24 + h % 24] for h in range(30)], dim=1)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(SeasonalSkip(12, 4, "seasonal", 24)(xn[:, :12]), xn[:, 11:12].expand(-1, 4, -1))
    assert SeasonalSkip(48, 24, "linear")(xn).abs().max() == 0
    with pytest.raises(ValueError, match="skip must be one of"):
        SeasonalSkip(48, 24, "bogus")

    ds = synthetic_global(stations=5, hours=300, seed=0)
    ws = WindowDataset(ds, "temperature")
    b = ws.batch([0, 5])
    torch.manual_seed(0)
    with_skip = ForecastNet(5, coords=ws.coords, skip="seasonal").eval()
    plain = ForecastNet(5, coords=ws.coords).eval()
    missing = plain.load_state_dict(with_skip.state_dict(), strict=False)
    assert sorted(missing.unexpected_keys) == ["skip.proj.bias", "skip.proj.weight"]
    with torch.no_grad():
        diff = (with_skip(b) - plain(b)).double()
    x = b["x"].double()
    expected = x[:, 24:48] - x.mean(dim=1, keepdim=True)
    assert bool(b["x_mask"].all())
    torch.testing.assert_close(diff, expected, rtol=1e-4, atol=1e-3)
