"""Weight averaging (``TrainConfig.ema_decay``): the average against a float64 recomputation from the raw weight
trajectory, validation and the returned weights use the average, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from tests.test_training import TinyNet, flat_params, make_ws, small_cfg
from urlk_forecast.config import ConfigError
from urlk_forecast.ema import WeightEMA
from urlk_forecast.trainer import evaluate_loss, station_scale
from urlk_forecast.training import train


@pytest.fixture(scope="module")
def data() -> tuple:
    return make_ws(480, 6, seed=0), make_ws(200, 6, seed=1, start="2020-03-01")


def _float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().double().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def _ema_reference(states: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """float64 EMA of a trajectory: the first state (construction) then one update per later state."""
    avg = {k: v.clone() for k, v in states[0].items()}
    for n, st in enumerate(states[1:]):
        d = min(decay, (1.0 + n) / (10.0 + n))
        avg = {k: d * avg[k] + (1 - d) * st[k] for k in avg}
    return avg


def test_update_copy_and_applied_against_a_float64_recomputation() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4))
    ema = WeightEMA(m, 0.9)
    states = [_float_state(m)]
    for _ in range(30):  # random walks of the weights and the BN statistics
        with torch.no_grad():
            for v in m.state_dict().values():
                if v.is_floating_point():
                    v.add_(torch.randn_like(v))
        m[1].num_batches_tracked += 1
        ema.update(m)
        states.append(_float_state(m))
    ref = _ema_reference(states, 0.9)
    raw = {k: v.clone() for k, v in m.state_dict().items()}
    with ema.applied(m):
        for k, v in ref.items():
            torch.testing.assert_close(m.state_dict()[k].double(), v, rtol=1e-5, atol=1e-5)
        assert int(m[1].num_batches_tracked) == 30  # integer buffers are copied, not averaged
    for k, v in m.state_dict().items():  # the raw weights are back, bit for bit
        assert torch.equal(v, raw[k])
    assert ema.updates == 30 and ema.current_decay() == pytest.approx(31 / 40)  # still warming up
    with pytest.raises(ValueError, match="decay must be in"):
        WeightEMA(m, 1.0)


def test_training_validates_and_returns_the_average_of_the_raw_trajectory(data: tuple) -> None:
    ws, val = data
    cfg = small_cfg(epochs=2, patience=0, val_windows=None)
    # the raw run: its weights after every optimiser step (EMA never changes the raw trajectory)
    torch.manual_seed(0)
    raw = TinyNet(dropout=0.3)
    states = [_float_state(raw)]
    hook = register_optimizer_step_post_hook(lambda *_: states.append(_float_state(raw)))
    try:
        r_raw = train(raw, ws, val, cfg)
    finally:
        hook.remove()
    assert len(states) == 1 + r_raw.steps == 13
    torch.manual_seed(0)
    m = TinyNet(dropout=0.3)
    r = train(m, ws, val, cfg.replace(ema_decay=0.8))
    assert r.step_losses == r_raw.step_losses  # same raw training
    # both epochs' validations scored the average, and the better one was returned
    epoch_ends = [h["val_loss"] for h in r.history if h["at"] == "epoch_end"]
    best = min(range(2), key=lambda i: epoch_ends[i])
    ref = _ema_reference(states[: 1 + 6 * (best + 1)], 0.8)
    for k, v in ref.items():
        torch.testing.assert_close(m.state_dict()[k].double(), v, rtol=1e-5, atol=1e-5)
    scale = station_scale(ws)
    got = evaluate_loss(m, val, range(len(val)), 8, torch.device("cpu"), scale)
    assert got == pytest.approx(r.best_val_loss, rel=1e-6)
    assert not torch.equal(flat_params(m), flat_params(raw))


def test_resume_with_the_average_equals_the_uninterrupted_run(data: tuple, tmp_path: Path) -> None:
    ws, val = data
    cfg = small_cfg(epochs=3, patience=0, ema_decay=0.7)
    torch.manual_seed(0)
    ref = TinyNet(dropout=0.3)
    r_ref = train(ref, ws, val, cfg)
    torch.manual_seed(0)
    m1 = TinyNet(dropout=0.3)
    assert train(m1, ws, val, cfg.replace(max_steps=9, out_dir=tmp_path)).stopped == "max_steps"
    torch.manual_seed(99)
    m2 = TinyNet(dropout=0.3)
    r2 = train(m2, ws, val, cfg.replace(out_dir=tmp_path, resume=True))
    assert r2.step_losses == r_ref.step_losses
    assert [h["val_loss"] for h in r2.history if not h["partial"]] == \
        [h["val_loss"] for h in r_ref.history if not h["partial"]]
    assert torch.equal(flat_params(m2), flat_params(ref))
    # a checkpoint without an average cannot silently continue one
    train(TinyNet(), ws, val, small_cfg(epochs=1, out_dir=tmp_path / "plain"))
    with pytest.raises(ConfigError, match="without a weight average"):
        train(TinyNet(), ws, val, cfg.replace(out_dir=tmp_path / "plain", resume=True))
    with pytest.raises(ConfigError, match="ema_decay"):
        small_cfg(ema_decay=1.5)
