"""Asymmetric large-kernel fusion (§3.4): op vs explicit loops (float64, gradcheck), layer, ForecastNet hook."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from urlk_forecast.models.forecast_net import ForecastNet
from urlk_forecast.models.fusion import (
    ForecastFusion,
    LargeKernelFusion,
    build_forecast_fusion,
    large_kernel_fusion,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _paper_loop(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Z[i, j] = Σ_k X[i+k−1] · Y[k, j], 1-based as printed, valid positions only."""
    L, (K, J) = len(X), Y.shape
    Z = np.zeros((L - K + 1, J))
    for i in range(1, L - K + 2):
        for j in range(1, J + 1):
            Z[i - 1, j - 1] = sum(X[i + k - 1 - 1] * Y[k - 1, j - 1] for k in range(1, K + 1))
    return Z


def _general_loop(x: np.ndarray, ker: np.ndarray, groups: int, pads: list[tuple[int, int]]) -> np.ndarray:
    """Z[b, j, i] = Σ_c Σ_k x[b, g·C/groups + c, i + k − p] · ker[b, j, c, k] with zero padding (1-D or 2-D)."""
    B, C = x.shape[:2]
    J, Cg = ker.shape[1:3]
    xp = np.pad(x, [(0, 0), (0, 0), *pads])
    K = ker.shape[3:]
    out_shape = [xp.shape[2 + d] - K[d] + 1 for d in range(len(K))]
    Z = np.zeros((B, J, *out_shape))
    for b in range(B):
        for j in range(J):
            g = j // (J // groups)
            for pos in np.ndindex(*out_shape):
                acc = 0.0
                for c in range(Cg):
                    for k in np.ndindex(*K):
                        idx = tuple(p + q for p, q in zip(pos, k))
                        acc += xp[(b, g * Cg + c, *idx)] * ker[(b, j, c, *k)]
                Z[(b, j, *pos)] = acc
    return Z


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_paper_formula_single_channel(method):
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal(20), rng.standard_normal((7, 3))  # sequence, K x J kernel map
    x = torch.from_numpy(X).view(1, 1, 20)
    ker = torch.from_numpy(Y.T.copy()).view(1, 3, 1, 7)  # kernel[b, j, 0, k] = Y[k, j]
    Z = large_kernel_fusion(x, ker, padding="valid", method=method)
    np.testing.assert_allclose(Z[0].numpy().T, _paper_loop(X, Y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("nd,groups,C,J,S,K,padding", [
    (1, 1, 3, 2, (13,), (5,), "same"),
    (1, 3, 3, 3, (11,), (11,), "same"),  # depthwise, kernel as long as the input
    (1, 2, 4, 4, (9,), (4,), "same"),  # even kernel: extra tap on the right
    (1, 1, 2, 3, (10,), (3,), 2),
    (2, 1, 2, 3, (6, 7), (3, 5), "same"),
    (2, 2, 2, 2, (5, 6), (5, 6), "valid"),
    (2, 2, 4, 2, (6, 5), (2, 3), "same"),
])
def test_batched_fusion_matches_loop(method, nd, groups, C, J, S, K, padding):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, C, *S, generator=g, dtype=torch.float64)
    ker = torch.randn(2, J, C // groups, *K, generator=g, dtype=torch.float64)
    if padding == "same":
        pads = [((k - 1) // 2, k // 2) for k in K]
    elif padding == "valid":
        pads = [(0, 0)] * nd
    else:
        pads = [(padding, padding)] * nd
    z = large_kernel_fusion(x, ker, groups=groups, padding=padding, method=method)
    ref = _general_loop(x.numpy(), ker.numpy(), groups, pads)
    assert z.shape == ref.shape
    np.testing.assert_allclose(z.numpy(), ref, rtol=1e-11, atol=1e-11)
    if padding == "same":
        assert z.shape[2:] == x.shape[2:]


@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("nd", [1, 2])
def test_fusion_gradcheck(method, nd):
    g = torch.Generator().manual_seed(2)
    S, K = ((9,), (4,)) if nd == 1 else ((5, 6), (3, 2))
    x = torch.randn(2, 4, *S, generator=g, dtype=torch.float64, requires_grad=True)
    ker = torch.randn(2, 2, 2, *K, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: large_kernel_fusion(a, b, groups=2, method=method), (x, ker))


def test_fusion_auto_picks_fft_for_large_kernels_same_numbers():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 8, 200, generator=g)
    ker = torch.randn(3, 8, 1, 63, generator=g)
    direct = large_kernel_fusion(x, ker, groups=8, method="direct")
    auto = large_kernel_fusion(x, ker, groups=8)
    torch.testing.assert_close(auto, direct, rtol=1e-4, atol=1e-4)


def test_fusion_argument_errors():
    x = torch.randn(2, 4, 10)
    with pytest.raises(ValueError, match="kernel batch 1 does not match x batch 2"):
        large_kernel_fusion(x, torch.randn(1, 4, 4, 3))
    with pytest.raises(ValueError, match="channels/groups = 2"):
        large_kernel_fusion(x, torch.randn(2, 4, 4, 3), groups=2)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        large_kernel_fusion(x, torch.randn(2, 3, 1, 3), groups=3)
    with pytest.raises(ValueError, match=r"\(batch, channels, L\) or"):
        large_kernel_fusion(torch.randn(2, 4), torch.randn(2, 4, 1, 3))
    with pytest.raises(ValueError, match="padding must be"):
        large_kernel_fusion(x, torch.randn(2, 4, 4, 3), padding="full")
    with pytest.raises(ValueError, match="exceeds"):
        large_kernel_fusion(x, torch.randn(2, 4, 4, 13), padding="valid")
    with pytest.raises(ValueError, match="method"):
        large_kernel_fusion(x, torch.randn(2, 4, 4, 3), method="winograd")


# ------------------------------------------------------------------------------------------------ layer
def test_large_kernel_fusion_layer():
    layer = LargeKernelFusion(channels=6, aux_channels=3, kernel_size=(5, 7), ndim=2).double()
    x = torch.randn(2, 6, 12, 10, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, 20, 30, dtype=torch.float64, requires_grad=True)
    out = layer(x, y)
    assert out.shape == x.shape
    # the kernel is y projected pointwise and resampled to 5x7, normalised by the taps
    k = layer.make_kernel(y)
    assert k.shape == (2, 6, 1, 5, 7)
    proj = torch.einsum("bchw,oc->bohw", y, layer.kernel_proj.weight) + layer.kernel_proj.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(k[:, :, 0, 0, 0] * 35, proj[:, :, 0, 0])  # corner samples (align_corners)
    torch.testing.assert_close(k[:, :, 0, -1, -1] * 35, proj[:, :, -1, -1])
    assert torch.autograd.gradcheck(lambda a, b: layer(a, b), (x[:1, :, :6, :5].detach().requires_grad_(),
                                                                 y[:1, :, :4, :4].detach().requires_grad_()))
    # gate 0 → exact identity; y changes the output otherwise
    ident = LargeKernelFusion(6, 3, ndim=2, init_scale=0.0)
    xf = torch.randn(1, 6, 8, 8)
    torch.testing.assert_close(ident(xf, torch.randn(1, 3, 4, 4)), xf, rtol=0, atol=0)
    a, b = layer(x, y), layer(x, y + 1)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"aux feature map must be \(batch, 3, H, W\)"):
        layer(x, torch.randn(2, 4, 5, 5, dtype=torch.float64))


# ------------------------------------------------------------------------------------- forecaster hook
S, L, LL, P = 4, 32, 8, 8
NET = dict(node_size=2, seq_len=L, label_len=LL, pred_len=P, d_model=32, n_heads=4, dims=(8, 16, 32, 64),
           depths=(1, 1, 2, 1), dropout=0.0)


def _batch(g: torch.Generator, B: int = 8) -> tuple[dict, torch.Tensor]:
    """Task where only the aux input carries the future: y_future = per-window level known from aux."""
    x = torch.randn(B, L, S, generator=g)
    level = 2 * torch.randn(B, 1, S, generator=g)
    y_future = level + 0.1 * torch.randn(B, P, S, generator=g)
    aux = torch.cat([x, y_future], dim=1)  # a "perfect NWP forecast" over seq_len + pred_len steps
    return dict(x=x, x_mark=torch.zeros(B, L, 4), y_mark=torch.zeros(B, LL + P, 4), aux=aux), y_future


def test_fused_forecast_net_trains_on_aux_signal():
    """Without aux, no model can beat MSE ≈ Var(level) = 4 on this task; the fused net gets well below."""
    torch.manual_seed(0)
    net = ForecastNet(S, coords=torch.randn(S, 3), fusion={"channels": 1, "length": L + P}, **NET)
    assert isinstance(net.fusion, ForecastFusion)
    opt = torch.optim.AdamW(net.parameters(), 4e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(60):
        batch, target = _batch(g)
        loss = torch.nn.functional.mse_loss(net(batch), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:5]), np.mean(losses[-10:])
    assert first > 3.0
    assert last < 0.5 * first and last < 2.0, (first, last)
    with torch.no_grad():  # the aux input is what the prediction depends on
        batch, _ = _batch(torch.Generator().manual_seed(9), B=2)
        base = net.eval()(batch)
        batch["aux"] = batch["aux"] + 3.0
        assert (net(batch) - base).abs().mean() > 0.5


@pytest.mark.parametrize("merge", ["append", "add"])
def test_forecast_fusion_shapes_missing_data_and_config(merge):
    fusion = {"channels": 2, "length": L + P, "merge": merge, "kernel_size": 9}
    net = ForecastNet(S, coords=torch.randn(S, 3), fusion=fusion, **NET).eval()
    batch, _ = _batch(torch.Generator().manual_seed(0), B=3)
    aux = torch.randn(3, L + P, S, 2)
    aux[0, 5, 1, 0] = float("nan")  # missing aux: flagged by the observed channel, never a silent zero
    batch["aux"] = aux
    out = net(batch)
    assert out.shape == (3, P, S) and torch.isfinite(out).all()
    zero = dict(batch, aux=aux.nan_to_num(0.0))
    assert not torch.allclose(net(zero)[0], out[0])
    clone = ForecastNet(**json.loads(json.dumps(net.config)))
    clone.load_state_dict(net.state_dict())
    torch.testing.assert_close(clone.eval()(batch), out)
    tokens = torch.randn(3 * net.n_nodes, 1, 32)
    fused = net.fusion(tokens, batch)
    assert fused.shape == ((3 * net.n_nodes, 1 + L + P, 32) if merge == "append" else tokens.shape)


def test_forecast_fusion_gridded_field():
    # stations exactly on grid nodes: the sampled series equals the field at those nodes (closed form)
    H, W = 5, 9
    cols, rows = [0, 4, 8, 2], [0, 2, 4, 1]
    pts = [[2 * c / (W - 1) - 1, 2 * r / (H - 1) - 1] for c, r in zip(cols, rows)]
    fus = build_forecast_fusion(d_model=16, seq_len=L, n_nodes=2, node_size=2, n_stations=S, channels=3,
                                length=6, grid_points=pts)
    field = torch.randn(2, 6, 3, H, W)
    series = fus._station_series(field)
    assert series.shape == (2, 6, S, 3)
    for s, (c, r) in enumerate(zip(cols, rows)):
        torch.testing.assert_close(series[:, :, s, :], field[:, :, :, r, c])
    static = torch.randn(2, 3, H, W)  # a static field is repeated over the aux length
    torch.testing.assert_close(fus._station_series(static)[:, 4, 1], static[:, :, 2, 4])
    out = fus(torch.randn(4, 2, 16), {"aux": field})
    assert out.shape == (4, 8, 16)
    with pytest.raises(ValueError, match=r"gridded field \(batch, 3, H, W\)"):
        fus(torch.randn(4, 2, 16), {"aux": torch.randn(2, 6, 2, H, W)})
    with pytest.raises(ValueError, match="grid_points"):
        build_forecast_fusion(d_model=16, seq_len=L, n_nodes=2, node_size=2, n_stations=S, grid_points=[[0, 0]])


def test_forecast_fusion_errors():
    net = ForecastNet(S, coords=torch.randn(S, 3), fusion={"length": L + P}, **NET)
    batch, _ = _batch(torch.Generator().manual_seed(0), B=2)
    del batch["aux"]
    with pytest.raises(ValueError, match=r"needs batch\['aux'\]"):
        net(batch)
    batch["aux"] = torch.randn(2, L, S)
    with pytest.raises(ValueError, match=r"length=40, stations=4\).*got \(2, 32, 4\)$"):
        net(batch)
    with pytest.raises(ValueError, match="merge"):
        ForecastNet(S, fusion={"merge": "concat"}, **NET)
    with pytest.raises(TypeError):
        ForecastNet(S, fusion={"bogus": 1}, **NET)
