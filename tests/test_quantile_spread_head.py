"""The quantile network's spread head: its band follows the noise at every lead, the last one included.

The bug this guards against: the spreads were decoder *seasonal* channels. The series decomposition's moving average
(k=25, replicate padding) keeps only 12/25 of the last step's own value in the seasonal part (24/25 elsewhere) and
removes smooth growth over the leads; the median gets the rest back through the trend, a spread got nothing back, so a
trained model's band collapsed at the last lead (TMY3: 3.3 degC against 6.6 at the lead before). References: the
known noise standard deviation per lead of a synthetic target (its 80 % band is ``2 * 1.2816 * sigma``), and the
closed-form weights of the replicate-padded moving average.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from urlk_forecast.models.forecast_net import ForecastNet
from urlk_forecast.trainer import masked_pinball_loss

TINY = dict(d_model=32, n_heads=4, node_size=4, dims=(8, 16, 32, 64), kernel_size=7)
LEVELS = (0.1, 0.5, 0.9)
Z90 = 1.2815515655446004  # the standard normal's 0.9 quantile


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _windows(g: torch.Generator, sigma: torch.Tensor, B: int, S: int, L: int, P: int
             ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Daily sine windows (random phase per station and window); the target adds N(0, sigma[lead]^2) noise, the
    only unpredictable part, so the true 0.1..0.9 band at lead h is ``2 * Z90 * sigma[h]``."""
    t = torch.randint(0, 24, (B, 1), generator=g).double() + torch.arange(L + P).double()
    clean = torch.sin(2 * math.pi * t[..., None] / 24 + 2 * math.pi * torch.rand(B, 1, S, generator=g).double())
    hour = (t % 24) / 23 - 0.5
    mark = torch.stack([hour, torch.zeros_like(hour), torch.zeros_like(hour), torch.zeros_like(hour)], -1).float()
    y = clean[:, L:] + sigma.double()[None, :, None] * torch.randn(B, P, S, generator=g, dtype=torch.float64)
    return {"x": clean[:, :L].float(), "x_mark": mark[:, :L], "y_mark": mark[:, L - P:]}, y.float()


@pytest.mark.slow
def test_band_follows_lead_dependent_noise_at_every_lead() -> None:
    """Trained briefly (200 steps, ~27 s) on targets whose noise std grows linearly with the lead (0.5 -> 3), the band
    is within [0.7, 1.4] of the true band at every lead. Before the spread head the last lead's band was ~0 (measured
    0.00 of the true band, the other leads 0.9-1.3; the last lead needs the default 48/24/24 lengths: with 24/12/12
    the decoder is shorter than the moving average and the old head passed)."""
    torch.manual_seed(0)
    S, L, P, B = 4, 48, 24, 32
    sigma = torch.linspace(0.5, 3.0, P)
    net = ForecastNet(S, seq_len=L, label_len=P, pred_len=P, quantiles=LEVELS, **TINY)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        batch, y = _windows(g, sigma, B, S, L, P)
        loss, n = masked_pinball_loss(net(batch), y, torch.ones_like(y, dtype=torch.bool), LEVELS)
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        batch, _ = _windows(torch.Generator().manual_seed(2), sigma, 64, S, L, P)
        q = net(batch)
    ratio = ((q[..., 2] - q[..., 0]).mean(dim=(0, 2)) / (2 * Z90 * sigma)).numpy()
    assert ((ratio > 0.7) & (ratio < 1.4)).all(), np.round(ratio, 2)


def _perturbed_heads(t: int, delta: torch.Tensor) -> dict[str, torch.Tensor]:
    """Add ``delta`` to the last decoder layer's FFN output at decoder step ``t``; the change of the spread head's
    input (the un-decomposed stream) and of the seasonal part (the final seasonal LayerNorm's input)."""
    torch.manual_seed(0)
    S = 4
    net = ForecastNet(S, seq_len=48, label_len=24, pred_len=24, quantiles=LEVELS, dropout=0.0, **TINY)
    net = net.double().eval()
    dec = net.decoder
    seen: dict[str, torch.Tensor] = {}
    dec.spread_norm.register_forward_hook(lambda m, i, o: seen.__setitem__("stream", i[0]))
    dec.norm.register_forward_hook(lambda m, i, o: seen.__setitem__("seasonal", i[0]))
    g = torch.Generator().manual_seed(3)
    batch = {"x": torch.randn(2, 48, S, generator=g, dtype=torch.float64),
             "x_mark": torch.rand(2, 48, 4, generator=g, dtype=torch.float64),
             "y_mark": torch.rand(2, 48, 4, generator=g, dtype=torch.float64)}
    out = {}
    for name, d in (("base", None), ("moved", delta)):
        calls = [0]

        def add(m, i, o, d=d, calls=calls):
            # the FFN's output is the second call of the layer's dropout, (B, L, C) on either code path (the fast
            # path runs its kernel-1 convolutions as matrix products, without calling the conv modules)
            calls[0] += 1
            if d is None or calls[0] != 2:
                return o
            o = o.clone()
            o[:, t, :] += d
            return o
        h = dec.layers[-1].dropout.register_forward_hook(add)
        with torch.no_grad():
            net(batch)
        h.remove()
        assert calls[0] == 2
        out[name] = {k: v.clone() for k, v in seen.items()}
    return {k: out["moved"][k] - out["base"][k] for k in ("stream", "seasonal")}


@pytest.mark.parametrize("t", [47, 46, 35])
def test_spread_head_sees_the_last_steps_undamped(t: int) -> None:
    """A change of the decoder's FFN output at step ``t`` reaches the spread head's input unchanged, at that step
    only (the decomposition's trends are added back); the seasonal part keeps ``1 - w`` of it, ``w`` the moving
    average's weight of step ``t`` at step ``t`` with replicate padding: 13/25 at the last step (it is repeated
    12 times), 1/25 inside."""
    delta = torch.linspace(-1, 1, 32, dtype=torch.float64)
    diff = _perturbed_heads(t, delta)
    want = torch.zeros_like(diff["stream"])
    want[:, t] = delta
    torch.testing.assert_close(diff["stream"], want, rtol=0, atol=1e-12)
    w = 13 / 25 if t == 47 else 1 / 25
    torch.testing.assert_close(diff["seasonal"][:, t], ((1 - w) * delta).expand_as(diff["seasonal"][:, t]),
                               rtol=0, atol=1e-12)


def test_weights_without_the_spread_head_are_refused_clearly() -> None:
    net = ForecastNet(4, seq_len=24, label_len=12, pred_len=12, quantiles=LEVELS, **TINY)
    old = {k: v for k, v in net.state_dict().items() if not k.startswith("decoder.spread_")}
    old["decoder.projection.weight"] = torch.zeros(12, 32)
    old["decoder.projection.bias"] = torch.zeros(12)
    with pytest.raises(ValueError, match="predate the decoder's spread head"):
        net.load_state_dict(old)
    point = ForecastNet(4, seq_len=24, label_len=12, pred_len=12, **TINY)
    point.load_state_dict(point.state_dict())  # a point network has no spread head and loads as before
