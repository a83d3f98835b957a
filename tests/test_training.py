"""Tests of the training loop (urlk_forecast/training.py) with a small stand-in network.

The stand-in ``TinyNet`` has the ForecastNet contract (``forward(batch) -> (B, pred_len, S)`` in physical units)
and a BatchNorm and dropout, so the loop, the masked loss, checkpoint/resume and DDP can be checked quickly against
independent recomputations. This file doubles as the worker script of the subprocess tests
(``python tests/test_training.py worker ...``), so the real process that gets SIGKILLed runs exactly this code.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from urlk_forecast.config import ConfigError, TrainConfig
from urlk_forecast.data.windows import WindowDataset
from urlk_forecast.trainer import Trainer, cosine_lr_factor
from urlk_forecast.training import (
    CHECKPOINT_NAME,
    epoch_permutation,
    evaluate_loss,
    load_checkpoint,
    masked_sq_error,
    resolve_amp,
    set_grad_checkpointing,
    station_scale,
    train,
)

SEQ, LABEL, PRED = 24, 12, 12
REPO = Path(__file__).resolve().parents[1]


class TinyNet(nn.Module):
    """Per-station MLP over the de-meaned input window, with BatchNorm, dropout and optional checkpointing."""

    def __init__(self, seq_len: int = SEQ, pred_len: int = PRED, hidden: int = 16, dropout: float = 0.0,
                 bn: bool = True) -> None:
        super().__init__()
        self.pred_len = pred_len
        self.lin1 = nn.Linear(seq_len + 4, hidden, bias=not bn)  # a bias before BatchNorm is degenerate
        self.bn = nn.BatchNorm1d(hidden) if bn else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.lin2 = nn.Linear(hidden, pred_len)
        self.with_cp = False

    def _body(self, h: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.drop(torch.relu(self.bn(self.lin1(h).transpose(1, 2)).transpose(1, 2))))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["x"]  # (B, L, S)
        mu = x.mean(1, keepdim=True)
        h = (x - mu).transpose(1, 2)  # (B, S, L)
        mark = batch["x_mark"][:, -1:, :].expand(-1, x.shape[2], -1)  # (B, S, 4)
        h = torch.cat([h, mark], dim=-1)
        if self.with_cp and self.training:
            from torch.utils.checkpoint import checkpoint

            calls = [0]

            def body(inp: torch.Tensor) -> torch.Tensor:  # the recomputation must not update BN statistics again
                calls[0] += 1
                if calls[0] == 1 or not isinstance(self.bn, nn.BatchNorm1d):
                    return self._body(inp)
                saved = [t.clone() for t in self.bn.buffers()]
                try:
                    return self._body(inp)
                finally:
                    with torch.no_grad():
                        for t, v in zip(self.bn.buffers(), saved):
                            t.copy_(v)

            out = checkpoint(body, h, use_reentrant=False)
        else:
            out = self._body(h)
        return out.transpose(1, 2) + mu  # (B, P, S)


def make_series(T: int = 480, S: int = 6, seed: int = 0, missing: float = 0.0, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(T)[:, None]
    phase = rng.uniform(0, 2 * np.pi, S)[None]
    amp = rng.uniform(2, 6, S)[None]
    v = 10 + offset + amp * np.sin(2 * np.pi * t / 24 + phase) + rng.normal(0, 0.5, (T, S))
    v = v.astype(np.float32)
    if missing:
        v[rng.random(v.shape) < missing] = np.nan
    return v


def make_ws(T: int = 480, S: int = 6, seed: int = 0, start: str = "2020-01-01", **kw: object) -> WindowDataset:
    values = make_series(T, S, seed, **kw)  # type: ignore[arg-type]
    times = pd.date_range(start, periods=T, freq="h")
    rng = np.random.default_rng(100)
    coords = np.stack([rng.uniform(-50, 50, S), rng.uniform(-150, 150, S), rng.uniform(0, 900, S)], 1)
    return WindowDataset.from_arrays(values, times, coords, seq_len=SEQ, label_len=LABEL, pred_len=PRED)


def small_cfg(**kw: object) -> TrainConfig:
    base = dict(lr=3e-3, epochs=3, batch_size=8, steps_per_epoch=6, val_windows=16, progress=False, device="cpu",
                prefetch=True)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.state_dict().values() if p.dtype.is_floating_point])


@pytest.fixture(scope="module")
def data() -> tuple[WindowDataset, WindowDataset]:
    return make_ws(480, 6, seed=0), make_ws(200, 6, seed=1, start="2020-03-01")


# ----------------------------------------------------------------------------------------------- loss pieces


def test_masked_sq_error_matches_float64_numpy() -> None:
    rng = np.random.default_rng(3)
    pred = rng.normal(size=(4, 5, 7)).astype(np.float32)
    y = rng.normal(size=(4, 5, 7)).astype(np.float32)
    mask = rng.random((4, 5, 7)) > 0.3
    y[~mask] = np.nan
    scale = rng.uniform(0.5, 3, 7).astype(np.float32)
    s, c = masked_sq_error(torch.from_numpy(pred), torch.from_numpy(y), torch.from_numpy(mask), torch.from_numpy(scale))
    d = (pred.astype(np.float64) - y.astype(np.float64)) / scale.astype(np.float64)
    ref = np.nansum(np.where(mask, d, np.nan) ** 2)
    assert int(c) == mask.sum()
    assert float(s) == pytest.approx(ref, rel=1e-6)
    # NaN targets never reach the gradient
    p = torch.from_numpy(pred).requires_grad_()
    masked_sq_error(p, torch.from_numpy(y), torch.from_numpy(mask))[0].backward()
    assert torch.isfinite(p.grad).all() and (p.grad[~torch.from_numpy(mask)] == 0).all()
    with pytest.raises(ValueError, match="targets have"):
        masked_sq_error(p[:, :3], torch.from_numpy(y), torch.from_numpy(mask))


def test_station_scale_is_the_std_of_observed_training_values() -> None:
    ws = make_ws(480, 6, seed=0, missing=0.05)
    raw = make_series(480, 6, seed=0, missing=0.05).astype(np.float64)
    ref = np.nanstd(raw, axis=0, ddof=1)[ws.order]  # model (space-filling-curve) order
    np.testing.assert_allclose(station_scale(ws).numpy(), ref, rtol=1e-5)

    class OnlyBatches:  # a window source exposing just the contract (len + batch): the scanning path
        def __len__(self) -> int:
            return len(ws)

        def batch(self, idx: np.ndarray) -> dict:
            return ws.batch(idx)

    np.testing.assert_allclose(station_scale(OnlyBatches()).numpy(), ref, rtol=0.05)


def test_first_step_equals_closed_form_adam_on_masked_scaled_loss(data: tuple) -> None:
    ws, _ = data
    ws_nan = make_ws(480, 6, seed=0, missing=0.1)
    torch.manual_seed(0)
    model = TinyNet(dropout=0.0)
    p0 = {k: v.clone() for k, v in model.named_parameters()}
    cfg = small_cfg(epochs=1, max_steps=1, lr=1e-3, val_windows=None)
    # independent gradient: the loss written out by hand on the same first batch (epoch-0 permutation)
    ref = TinyNet(dropout=0.0)
    ref.load_state_dict(model.state_dict())
    idx = epoch_permutation(len(ws_nan), cfg.seed, 0)[: cfg.batch_size]
    b = ws_nan.batch(idx)
    sd = np.nanstd(make_series(480, 6, seed=0, missing=0.1).astype(np.float64), axis=0, ddof=1)[ws_nan.order]
    pred = ref(b)
    y, m = b["y"][:, -PRED:].double(), b["y_mask"][:, -PRED:]
    err = (pred.double() - torch.nan_to_num(y)) / torch.from_numpy(sd)
    loss = (err[m] ** 2).sum() / m.sum()
    loss.backward()
    loss = loss.detach()
    res = train(model, ws_nan, None, cfg)
    assert res.steps == 1 and res.stopped == "max_steps"
    assert res.step_losses[0] == pytest.approx(loss.item(), rel=1e-5)
    for name, p in model.named_parameters():
        g = dict(ref.named_parameters())[name].grad.double()
        # Adam step 1: m_hat = g, v_hat = g^2, update = lr * g / (|g| + eps)
        # (where |g| is near rounding noise g / |g| is ill-conditioned: compare where it is well above)
        expect = p0[name].double() - 1e-3 * g / (g.abs() + 1e-8)
        ok = g.abs() > 1e-5
        assert ok.double().mean() > 0.9, name
        torch.testing.assert_close(p.detach().double()[ok], expect[ok], rtol=0, atol=2e-6)


# ----------------------------------------------------------------------------------------------- schedule


def test_paper_schedule_defaults() -> None:
    cfg = TrainConfig()
    assert (cfg.lr, cfg.epochs, cfg.lr_decay, cfg.patience, cfg.optimizer, cfg.loss_norm) == (
        1e-4, 10, 0.5, 3, "adam", "station")


def test_lr_halves_each_epoch_and_loss_falls(data: tuple) -> None:
    ws, val = data
    torch.manual_seed(0)
    model = TinyNet()
    scale = station_scale(ws)
    before = evaluate_loss(model, val, np.arange(len(val)), 32, torch.device("cpu"), scale)
    res = train(model, ws, val, small_cfg(epochs=4, patience=0, steps_per_epoch=10, lr=2e-2))
    assert [h["lr"] for h in res.history] == pytest.approx([2e-2 * 0.5**e for e in range(4)])
    assert res.epochs_completed == 4 and res.stopped == "epochs" and res.steps == 40
    after = evaluate_loss(model, val, np.arange(len(val)), 32, torch.device("cpu"), scale)
    assert after < 0.5 * before
    # the model ends with the best epoch's weights
    assert res.best_val_loss == pytest.approx(min(h["val_loss"] for h in res.history))
    vi = np.unique(np.linspace(0, len(val) - 1, 16).round().astype(int))
    assert evaluate_loss(model, val, vi, 32, torch.device("cpu"), scale) == pytest.approx(res.best_val_loss, rel=1e-6)


def test_early_stopping_restores_best_epoch(tmp_path: Path) -> None:
    # validation inputs are white noise around a constant: the input mean is the best forecast there, and
    # learning the training set's daily cycle can only hurt, so the validation loss stops improving early
    ws = make_ws(480, 6, seed=0)
    rng = np.random.default_rng(5)
    noise = (10 + rng.normal(0, 3, (200, 6))).astype(np.float32)
    val = WindowDataset.from_arrays(noise, pd.date_range("2020-03-01", periods=200, freq="h"),
                                    np.stack([np.arange(6.0), np.arange(6.0)], 1), seq_len=SEQ, label_len=LABEL,
                                    pred_len=PRED)
    torch.manual_seed(0)
    model = TinyNet(bn=False)
    cfg = small_cfg(epochs=12, patience=2, lr=1e-2, lr_decay=1.0, loss_norm="none", val_windows=None)
    res = train(model, ws, val, cfg.replace(out_dir=tmp_path))
    vals = [h["val_loss"] for h in res.history]
    assert res.stopped == "early_stopping"
    b = res.best_epoch
    assert len(vals) == b + 2 and min(vals) == vals[b - 1] == res.best_val_loss
    assert all(v >= vals[b - 1] for v in vals[b:])
    best = torch.load(tmp_path / "best.pt")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, best[k], rtol=0, atol=0)
    got = evaluate_loss(model, val, np.arange(len(val)), 64, torch.device("cpu"))
    assert got == pytest.approx(res.best_val_loss, rel=1e-6)
    hist = json.loads((tmp_path / "history.json").read_text())
    assert [h["val_loss"] for h in hist["history"]] == pytest.approx(vals)


def test_max_steps_and_max_time_stop_cleanly_and_still_evaluate(data: tuple, tmp_path: Path) -> None:
    ws, val = data
    res = train(TinyNet(), ws, val, small_cfg(epochs=5, max_steps=8, out_dir=tmp_path / "a"))
    assert res.stopped == "max_steps" and res.steps == 8
    assert res.history[-1]["partial"] and res.history[-1]["val_loss"] is not None
    ck = load_checkpoint(tmp_path / "a")
    assert ck["state"]["global_step"] == 8 and ck["state"]["step_in_epoch"] == 2
    res = train(TinyNet(), ws, val, small_cfg(epochs=1000, steps_per_epoch=None, max_time=0.5, out_dir=tmp_path / "b"))
    assert res.stopped == "max_time" and 0 < res.steps < 1000 * (len(ws) // 8)
    assert res.elapsed_s < 5 and res.history and res.history[-1]["val_loss"] is not None
    assert (tmp_path / "b" / CHECKPOINT_NAME).is_file()


def test_seeded_runs_are_reproducible_and_seed_matters(data: tuple) -> None:
    ws, val = data
    out = []
    for seed in (0, 0, 1):
        torch.manual_seed(123)
        m = TinyNet(dropout=0.2)
        train(m, ws, val, small_cfg(seed=seed, epochs=2, patience=0, deterministic=True))
        out.append(flat_params(m))
    assert torch.equal(out[0], out[1])
    assert not torch.allclose(out[0], out[2])


def test_grad_clip_bounds_the_gradient_the_optimiser_sees(data: tuple, tmp_path: Path) -> None:
    ws, _ = data
    model = TinyNet()
    train(model, ws, None, small_cfg(max_steps=1, grad_clip=1e-3, lr=1e-4, out_dir=tmp_path))
    state = load_checkpoint(tmp_path)["optimizer"]["state"]
    # after one Adam step exp_avg = (1 - beta1) * g_clipped
    norm = math.sqrt(sum(float((s["exp_avg"] / 0.1).double().pow(2).sum()) for s in state.values()))
    assert norm == pytest.approx(1e-3, rel=1e-4)


def test_bf16_autocast_runs_and_tracks_fp32(data: tuple) -> None:
    ws, _ = data
    losses = {}
    for amp in (False, "bf16"):
        torch.manual_seed(0)
        res = train(TinyNet(), ws, None, small_cfg(max_steps=3, amp=amp))
        losses[amp] = res.step_losses
    assert all(math.isfinite(v) for v in losses["bf16"])
    assert losses["bf16"][0] == pytest.approx(losses[False][0], rel=2e-2)
    assert resolve_amp(True, torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        resolve_amp("fp16", torch.device("cpu"))


def test_gradient_checkpointing_flag_same_gradients(data: tuple) -> None:
    ws, _ = data
    res = {}
    for cp in (False, True):
        torch.manual_seed(0)
        m = TinyNet()
        train(m, ws, None, small_cfg(max_steps=3, checkpointing=cp))
        assert m.with_cp is cp
        res[cp] = flat_params(m)
    torch.testing.assert_close(res[False], res[True], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="gradient checkpointing unsupported"):
        set_grad_checkpointing(nn.Linear(2, 2))


def test_missing_targets_are_masked_not_zero(data: tuple) -> None:
    ws = make_ws(480, 6, seed=0, missing=0.2)
    assert torch.isnan(ws.batch(np.arange(len(ws)))["y"]).any()
    res = train(TinyNet(), ws, ws, small_cfg(epochs=2))
    assert all(math.isfinite(v) for v in res.step_losses)
    assert all(math.isfinite(h["val_loss"]) for h in res.history)


def test_progress_bar_shows_loss_and_windows_per_second(data: tuple, capsys: pytest.CaptureFixture) -> None:
    ws, _ = data
    train(TinyNet(), ws, None, small_cfg(max_steps=3, progress=True))
    err = capsys.readouterr().err
    assert "loss=" in err and "windows/s=" in err and "epoch 1/3" in err


class FakeClock:
    """Training time that advances exactly 1 s per training forward pass (validation takes no time)."""

    def __init__(self, model: nn.Module) -> None:
        self.now = 0.0
        model.register_forward_pre_hook(self._pre)

    def _pre(self, module: nn.Module, _inputs: object) -> None:
        if module.training:
            self.now += 1.0

    def __call__(self) -> float:
        return self.now


def _fit_with_clock(model: nn.Module, ws: WindowDataset, val: WindowDataset | None, cfg: TrainConfig):
    trainer = Trainer(cfg)
    trainer.clock = FakeClock(model)  # type: ignore[method-assign]
    return trainer.fit(model, ws, val)


def test_max_time_stops_mid_epoch_and_at_an_epoch_boundary(data: tuple, tmp_path: Path) -> None:
    ws, val = data
    # 6 steps per epoch, 1 s per step: after step 9 (3 steps into epoch 2) 9 s >= 8.5 s, checked before step 10
    res = _fit_with_clock(TinyNet(), ws, val, small_cfg(epochs=5, patience=0, max_time=8.5))
    assert (res.stopped, res.steps, res.elapsed_s) == ("max_time", 9, 9.0)
    assert [(h["epoch"], h["partial"], h["steps"]) for h in res.history] == [(1, False, 6), (2, True, 3)]
    # 5.5 s: step 6 still starts (5 s < 5.5 s), ends the epoch; the limit is then hit before epoch 2: no partial entry
    out = tmp_path / "boundary"
    res = _fit_with_clock(TinyNet(), ws, val, small_cfg(epochs=5, patience=0, max_time=5.5, out_dir=out))
    assert (res.stopped, res.steps, res.epochs_completed) == ("max_time", 6, 1)
    assert [h["partial"] for h in res.history] == [False]
    st = load_checkpoint(out)["state"]
    assert (st["epoch"], st["step_in_epoch"], st["elapsed"]) == (1, 0, 6.0)
    # the time limit is summed over resumes: 6 s done, 8.5 s allowed -> 3 more steps
    res = _fit_with_clock(TinyNet(), ws, val, small_cfg(epochs=5, patience=0, max_time=8.5, out_dir=out, resume=True))
    assert (res.stopped, res.steps, res.elapsed_s) == ("max_time", 9, 9.0)
    assert res.resumed_from == {"epoch": 1, "step_in_epoch": 0, "global_step": 6}


def test_max_steps_at_an_epoch_boundary_leaves_no_partial_epoch(data: tuple, tmp_path: Path) -> None:
    ws, val = data
    res = train(TinyNet(), ws, val, small_cfg(epochs=5, patience=0, max_steps=12, out_dir=tmp_path))
    assert (res.stopped, res.steps, res.epochs_completed) == ("max_steps", 12, 2)
    assert [h["partial"] for h in res.history] == [False, False]
    st = load_checkpoint(tmp_path)["state"]
    assert (st["epoch"], st["step_in_epoch"], st["global_step"]) == (2, 0, 12)


def test_epochs_rule_a_finished_run_resumed_with_more_epochs_equals_one_longer_run(data: tuple, tmp_path: Path) -> None:
    ws, val = data
    cfg = small_cfg(epochs=3, patience=0)
    torch.manual_seed(0)
    ref = TinyNet(dropout=0.2)
    r_ref = train(ref, ws, val, cfg)
    torch.manual_seed(0)
    r1 = train(TinyNet(dropout=0.2), ws, val, cfg.replace(epochs=2, out_dir=tmp_path))
    assert (r1.stopped, r1.steps, r1.epochs_completed) == ("epochs", 12, 2)
    m = TinyNet(dropout=0.2)
    r2 = train(m, ws, val, cfg.replace(out_dir=tmp_path, resume=True))
    assert (r2.stopped, r2.steps, r2.epochs_completed) == ("epochs", 18, 3)
    assert r2.step_losses == r_ref.step_losses
    assert torch.equal(flat_params(m), flat_params(ref))
    # resuming the finished run with the same budget trains nothing more
    r3 = train(TinyNet(dropout=0.2), ws, val, cfg.replace(out_dir=tmp_path, resume=True))
    assert (r3.stopped, r3.steps, len(r3.step_losses)) == ("epochs", 18, 18)


def test_early_stopping_needs_validation_windows(data: tuple) -> None:
    ws, _ = data
    # no validation: patience cannot count bad epochs, the epoch budget stops the run
    res = train(TinyNet(), ws, None, small_cfg(epochs=3, patience=1))
    assert (res.stopped, res.epochs_completed) == ("epochs", 3)
    assert all(h["val_loss"] is None for h in res.history)


def _logged_steps(caplog: pytest.LogCaptureFixture) -> list[int]:
    import re

    return [int(m.group(1)) for r in caplog.records if (m := re.search(r"\(global (\d+)\)", r.getMessage()))]


def test_without_a_bar_progress_is_logged_every_n_steps_or_every_t_seconds(
    data: tuple, caplog: pytest.LogCaptureFixture
) -> None:
    ws, _ = data
    caplog.set_level(logging.INFO, logger="urlk_forecast.training")
    expected = {(4, 0.0): [4, 8], (0, 2.5): [3, 6, 9], (4, 2.5): [3, 4, 7, 8], (0, 0.0): []}
    for (every, every_s), steps in expected.items():
        caplog.clear()
        _fit_with_clock(TinyNet(), ws, None, small_cfg(max_steps=9, log_every=every, log_every_s=every_s))
        assert _logged_steps(caplog) == steps, (every, every_s)
    line = next(r.getMessage() for r in caplog.records if "training stopped" in r.getMessage())
    assert line.startswith("training stopped (max_steps) after 9 steps")
    caplog.clear()
    _fit_with_clock(TinyNet(), ws, None, small_cfg(max_steps=3, log_every=1))
    msg = [r.getMessage() for r in caplog.records if "(global 3)" in r.getMessage()][0]
    assert msg.startswith("epoch 1 step 3/6 (global 3): loss ") and msg.endswith(" windows/s")


def test_trainer_api_one_place_for_out_dir_and_resume(data: tuple, tmp_path: Path) -> None:
    ws, val = data
    with pytest.raises(ConfigError, match="resume=True needs out_dir"):
        Trainer(small_cfg(resume=True))
    with pytest.raises(TypeError):
        train(TinyNet(), ws, val, small_cfg(), out_dir=tmp_path)  # type: ignore[call-arg]
    cfg = small_cfg(max_steps=4, out_dir=tmp_path)
    assert isinstance(cfg.out_dir, str) and TrainConfig.from_json(cfg.to_json()) == cfg
    trainer = Trainer(cfg)
    results = []
    for _ in range(2):  # a Trainer fits afresh each time (a fresh state, not the previous run's)
        torch.manual_seed(0)
        results.append(trainer.fit(TinyNet(), ws, val))
    assert results[0].step_losses == results[1].step_losses and results[1].steps == 4
    assert results[1].out_dir == str(tmp_path) and (tmp_path / CHECKPOINT_NAME).is_file()
    saved = TrainConfig.from_json(tmp_path / "train_config.json")
    assert saved == cfg


def test_config_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TrainConfig.lr=-1"):
        TrainConfig(lr=-1)
    with pytest.raises(ConfigError, match="TrainConfig.log_every_s=-1"):
        TrainConfig(log_every_s=-1)
    with pytest.raises(ConfigError, match=r"TrainConfig.max_steps=0: must be >= 1 or None"):
        TrainConfig(max_steps=0)
    with pytest.raises(ConfigError, match="unknown TrainConfig key.*'lrr'"):
        TrainConfig.from_dict({"lrr": 1})
    cfg = TrainConfig(lr=2e-3, amp="bf16", betas=(0.8, 0.9), max_time=12.5)
    assert TrainConfig.from_json(cfg.to_json(tmp_path / "c.json")) == cfg
    assert TrainConfig.from_json(tmp_path / "c.json") == cfg
    (tmp_path / "bad.json").write_text('{"lr": 1,\n "x": }')
    with pytest.raises(ConfigError, match=r"bad.json: invalid JSON at line 2"):
        TrainConfig.from_json(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="resume=True needs out_dir"):
        train(TinyNet(), make_ws(200), None, small_cfg(resume=True))


def test_forecaster_config_round_trip_and_defaults_match_the_forecaster(tmp_path: Path) -> None:
    import inspect

    from urlk_forecast.config import FORECASTER_DEFAULTS, ForecasterConfig
    from urlk_forecast.forecaster import Forecaster

    sig = inspect.signature(Forecaster.__init__).parameters
    assert {k: sig[k].default for k in FORECASTER_DEFAULTS} == FORECASTER_DEFAULTS
    fc = ForecasterConfig(model="unireplknet_s", pred_len=12, model_kw={"d_model": 64, "dims": [8, 16, 32, 64]})
    back = ForecasterConfig.from_json(fc.to_json(tmp_path / "f.json"))
    assert back == fc and back.forecaster_kwargs()["d_model"] == 64
    f = Forecaster(**back.forecaster_kwargs())
    assert (f.model, f.pred_len, f.model_kw["d_model"]) == ("unireplknet_s", 12, 64)
    with pytest.raises(ConfigError, match="label_len=60"):
        ForecasterConfig(label_len=60)


# ------------------------------------------------------------------------------- cosine schedule, plan, val_every


def _cosine_ref(step: int, plan: int, warmup: float, min_ratio: float) -> float:
    """The schedule as docs/training.md states it: ramp 1/w..1 over w = round(warmup*plan) steps, then a half cosine
    from the peak (step w-1) to min_ratio (step plan-1), flat after."""
    w = max(1, round(warmup * plan))
    if step < w:
        return (step + 1) / w
    t = min((step - (w - 1)) / (plan - 1 - (w - 1)), 1.0)
    return min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * t)) / 2


def test_cosine_lr_factor_ramps_peaks_and_ends_at_min_ratio() -> None:
    f = [cosine_lr_factor(s, 101, 0.05, 0.01) for s in range(110)]
    assert f[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # 5 warm-up steps
    assert f[52] == pytest.approx((1 + 0.01) / 2)  # half way from the peak (4) to the end (100)
    assert f[100] == pytest.approx(0.01) and f[109] == pytest.approx(0.01)  # the last planned step, and after
    assert all(a >= b for a, b in zip(f[4:], f[5:]))  # non-increasing after the peak
    assert cosine_lr_factor(0, 10, 0.0, 0.1) < 1.0 and cosine_lr_factor(9, 10, 0.0, 0.1) == pytest.approx(0.1)
    for plan in (1, 2, 7, 40):
        assert [cosine_lr_factor(s, plan, 0.1, 0.05) for s in range(plan)] == pytest.approx(
            [_cosine_ref(s, plan, 0.1, 0.05) if plan > max(1, round(0.1 * plan)) else 1.0 for s in range(plan)])


def test_cosine_schedule_sets_the_lr_of_every_step(data: tuple) -> None:
    ws, val = data
    cfg = small_cfg(epochs=3, patience=0, lr=1e-2, lr_schedule="cosine", warmup=0.1, min_lr_ratio=0.05,
                    plan_steps=20, val_every=1, val_windows=2)
    res = train(TinyNet(), ws, val, cfg)
    assert res.steps == 18 and res.plan == {"steps": 20, "val_every": 1, "by": "config"}
    # one validation per step (val_every=1 and the epoch ends): each entry has the LR of that step
    assert [h["global_step"] for h in res.history] == list(range(1, 19))
    assert [h["lr"] for h in res.history] == pytest.approx([1e-2 * _cosine_ref(s, 20, 0.1, 0.05) for s in range(18)])
    # without plan_steps nor max_time the plan is the step budget: epochs x steps per epoch, capped by max_steps
    res = train(TinyNet(), ws, val, cfg.replace(plan_steps=None, max_steps=10, val_every=5))
    assert res.plan == {"steps": 10, "val_every": 5, "by": "steps"} and res.history[-1]["global_step"] == 10
    assert res.history[-1]["lr"] == pytest.approx(1e-2 * 0.05)  # the last planned step ends the decay


class StepClock:
    """Training time: ``train_s`` per training forward pass (``slow[k]`` for the k-th, 1-based) and ``eval_s`` per
    validation forward pass."""

    def __init__(self, model: nn.Module, train_s: float = 1.0, eval_s: float = 0.0,
                 slow: dict[int, float] | None = None) -> None:
        self.now, self.train_s, self.eval_s, self.slow, self.n = 0.0, train_s, eval_s, slow or {}, 0
        model.register_forward_pre_hook(self._pre)

    def _pre(self, module: nn.Module, _inputs: object) -> None:
        if module.training:
            self.n += 1
            self.now += self.slow.get(self.n, self.train_s)
        else:
            self.now += self.eval_s

    def __call__(self) -> float:
        return self.now


def _fit_with_step_clock(model: nn.Module, ws, val, cfg: TrainConfig, eval_s: float = 0.0,
                         slow: dict[int, float] | None = None):
    trainer = Trainer(cfg)
    trainer.clock = StepClock(model, 1.0, eval_s, slow)  # type: ignore[method-assign]
    return trainer.fit(model, ws, val)


def test_time_plan_from_the_measured_step_and_validation_times(data: tuple, tmp_path: Path) -> None:
    ws, val = data
    # 1 s per step, 0.25 s per validation forward pass of 8 windows (16 windows: 0.5 s per validation), validation at
    # each epoch end (6 steps); 40 s and a 20-epoch step budget (120 steps)
    cfg = small_cfg(epochs=20, patience=0, lr_schedule="cosine", max_time=40.0, eval_batch_size=8,
                    out_dir=tmp_path / "run")
    res = _fit_with_step_clock(TinyNet(), ws, val, cfg, eval_s=0.25, slow={5: 9.0})
    # timed: steps 2..8 (the first may compile), 1 s each but step 5 (9 s, another process): the median is 1 s.
    # At step 8 one more validation is timed (0.5 s): 8 steps + 8 s extra + the step-6 and the timing validations
    # = 17 s spent. The plan P is the largest with (P - 8) steps + (epoch ends in steps 9..P) x 0.5 s <= 95 % of
    # the rest (checkpoints take no time on this clock)
    left = (40.0 - 17.0) * 0.95
    expect = max(p for p in range(9, 121) if (p - 8) * 1.0 + (p // 6 - 1) * 0.5 <= left)
    assert expect == 28
    assert res.plan is not None
    assert {k: res.plan[k] for k in ("steps", "by", "step_s", "val_s", "val_every")} == {
        "steps": expect, "by": "time", "step_s": 1.0, "val_s": 0.5, "val_every": None}
    assert load_checkpoint(tmp_path / "run")["state"]["plan_steps"] == expect  # kept for a resume
    # the budget runs out just after the plan: 9 s extra + steps + 0.5 s per epoch end >= 40 s before step 31
    assert res.stopped == "max_time" and res.steps == 30
    lrs = {h["global_step"]: h["lr"] for h in res.history}
    assert lrs[30] == pytest.approx(3e-3 * 0.01)  # past the plan: the final LR
    assert lrs[18] == pytest.approx(3e-3 * _cosine_ref(17, expect, 0.05, 0.01))
    # before the plan is fixed a provisional one from the fastest step shapes the warm-up: after step 5 (13 s spent)
    # 95 % of the 27 s left fit 25 more 1-s steps: P = 30, 2 warm-up steps (the step budget's would be 6)
    assert lrs[6] == pytest.approx(3e-3 * _cosine_ref(5, 30, 0.05, 0.01))
    # an explicit plan or no time limit: nothing is measured
    res = _fit_with_step_clock(TinyNet(), ws, val, cfg.replace(plan_steps=30, out_dir=None), eval_s=0.25)
    assert res.plan == {"steps": 30, "val_every": None, "by": "config"}
    # validations spread over a time plan: val_per_plan
    res = _fit_with_step_clock(TinyNet(), ws, val, cfg.replace(out_dir=None, val_per_plan=10, epochs=3), eval_s=0.25)
    assert res.plan is not None and res.plan["by"] == "steps" and res.plan["steps"] == 18
    assert res.plan["val_every"] == 2  # 10 over 3 epochs of 6 steps: 3 per epoch, at steps 2, 4 and its end
    # (the interval exists once the plan is fixed, after step 8: before it only the epoch end validates)
    assert [h["global_step"] for h in res.history] == [6, 8, 10, 12, 14, 16, 18]


def test_time_plan_counts_checkpoints(data: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urlk_forecast.trainer as trainer_mod

    ws, val = data
    model = TinyNet()
    trainer = Trainer(small_cfg(epochs=20, patience=0, lr_schedule="cosine", max_time=40.0, eval_batch_size=8,
                                checkpoint_every=4, out_dir=tmp_path))
    clock = StepClock(model, 1.0, 0.25)
    trainer.clock = clock  # type: ignore[method-assign]
    save = trainer_mod.atomic_torch_save

    def slow_save(obj: object, path: Path) -> None:  # every checkpoint write takes 2 s of the clock
        save(obj, path)
        if Path(path).name == CHECKPOINT_NAME:
            clock.now += 2.0

    monkeypatch.setattr(trainer_mod, "atomic_torch_save", slow_save)
    res = trainer.fit(model, ws, val)
    # checkpoints before the plan: after step 1 (timing one), step 4 (checkpoint_every), the step-6 epoch end; at
    # step 8: 8 s of steps + 3 x 2 s + the step-6 and the timing validations (2 x 0.5 s) = 15 s spent. Each
    # further step costs 1 s + 2 s / 4, each validation 0.5 s + its 2-s checkpoint
    left = (40.0 - 15.0) * 0.95
    expect = max(p for p in range(9, 121) if (p - 8) * 1.5 + (p // 6 - 1) * 2.5 <= left)
    assert res.plan is not None and (res.plan["checkpoint_s"], res.plan["step_s"]) == (2.0, 1.0)
    assert res.plan["steps"] == expect == 20


def test_val_every_validates_mid_epoch_and_restores_the_best_validation(tmp_path: Path) -> None:
    ws = make_ws(480, 6, seed=0)
    rng = np.random.default_rng(5)
    noise = (10 + rng.normal(0, 3, (200, 6))).astype(np.float32)  # learning the daily cycle hurts here (see above)
    val = WindowDataset.from_arrays(noise, pd.date_range("2020-03-01", periods=200, freq="h"),
                                    np.stack([np.arange(6.0), np.arange(6.0)], 1), seq_len=SEQ, label_len=LABEL,
                                    pred_len=PRED)
    torch.manual_seed(0)
    model = TinyNet(bn=False)
    cfg = small_cfg(epochs=12, patience=3, lr=1e-2, lr_decay=1.0, loss_norm="none", val_windows=None, val_every=2,
                    out_dir=tmp_path)
    res = train(model, ws, val, cfg)
    hist = res.history
    # validations at steps 2 and 4 into an epoch, and at its end (6)
    assert [(h["global_step"], h["at"]) for h in hist[:4]] == [(2, "val_every"), (4, "val_every"), (6, "epoch_end"),
                                                               (8, "val_every")]
    vals = [h["val_loss"] for h in hist]
    b = int(np.argmin(vals))
    assert res.stopped == "early_stopping" and len(hist) == b + 4  # patience counts validations
    assert res.best_val_loss == vals[b] and res.best_step == hist[b]["global_step"]
    assert res.best_epoch == hist[b]["epoch"]
    assert res.steps == hist[-1]["global_step"]  # stopped right after the third validation without improvement
    best = torch.load(tmp_path / "best.pt")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, best[k], rtol=0, atol=0)
    got = evaluate_loss(model, val, np.arange(len(val)), 64, torch.device("cpu"))
    assert got == pytest.approx(res.best_val_loss, rel=1e-6)
    assert load_checkpoint(tmp_path)["state"]["global_step"] == res.steps  # checkpointed at the last validation
    assert res.epochs_completed == sum(h["at"] == "epoch_end" for h in hist)


def _scheduled(history: list[dict]) -> list[tuple]:
    return [(h["epoch"], h["global_step"], h["train_loss"], h["val_loss"], h["lr"]) for h in history
            if h["at"] != "stop"]


class _Killed(Exception):
    """Stands in for a SIGKILL in the middle of a step."""


@pytest.mark.parametrize("timed", [False, True])
def test_cosine_val_every_resume_equals_uninterrupted(data: tuple, tmp_path: Path, timed: bool) -> None:
    ws, val = data
    # a plan measured on the fake clock (1 s per step: at 8 s, 95 % of the 7 s left fit 6 more steps) or a given one
    plan = dict(max_time=15.0) if timed else dict(plan_steps=18)
    cfg = small_cfg(epochs=3, patience=0, lr_schedule="cosine", warmup=0.2, val_every=4, **plan)
    fit = (lambda m, c: _fit_with_step_clock(m, ws, val, c)) if timed else (lambda m, c: train(m, ws, val, c))
    torch.manual_seed(0)
    ref = TinyNet(dropout=0.3)
    r_ref = fit(ref, cfg)
    torch.manual_seed(0)
    m1 = TinyNet(dropout=0.3)
    if timed:  # max_steps would shorten the plan: the run dies in step 11 instead (last checkpoint: the validation
        calls = [0]  # 4 steps into epoch 2, step 10)

        def die(module: nn.Module, _inputs: object) -> None:
            calls[0] += module.training
            if calls[0] == 11:
                raise _Killed

        m1.register_forward_pre_hook(die)
        with pytest.raises(_Killed):
            fit(m1, cfg.replace(out_dir=tmp_path))
        at = {"epoch": 1, "step_in_epoch": 4, "global_step": 10}
    else:
        r1 = fit(m1, cfg.replace(max_steps=9, out_dir=tmp_path))
        assert r1.stopped == "max_steps" and r1.history[-1]["at"] == "stop"
        at = {"epoch": 1, "step_in_epoch": 3, "global_step": 9}
    torch.manual_seed(99)
    m2 = TinyNet(dropout=0.3)
    r2 = fit(m2, cfg.replace(out_dir=tmp_path, resume=True))
    assert r2.resumed_from == at
    assert r2.plan == r_ref.plan and r2.plan is not None
    assert (r2.plan["steps"], r2.plan["by"]) == ((14, "time") if timed else (18, "config"))
    assert (r2.stopped, r2.steps) == (r_ref.stopped, r_ref.steps) == (("max_time", 15) if timed else ("epochs", 18))
    assert r2.step_losses == r_ref.step_losses
    assert _scheduled(r2.history) == _scheduled(r_ref.history)
    assert torch.equal(flat_params(m2), flat_params(ref))


# -------------------------------------------------------------------------------------------- resume


def _comparable(res_history: list[dict]) -> list[tuple]:
    return [(h["epoch"], h["steps"], h["train_loss"], h["val_loss"], h["lr"]) for h in res_history if not h["partial"]]


def test_mid_epoch_resume_in_process_equals_uninterrupted(data: tuple, tmp_path: Path) -> None:
    ws, val = data
    cfg = small_cfg(epochs=3, patience=0, checkpoint_every=2)
    torch.manual_seed(0)
    ref = TinyNet(dropout=0.3)
    r_ref = train(ref, ws, val, cfg.replace(out_dir=tmp_path / "ref"))
    torch.manual_seed(0)
    m = TinyNet(dropout=0.3)
    r1 = train(m, ws, val, cfg.replace(max_steps=9, out_dir=tmp_path / "run"))  # stops mid epoch 2
    assert r1.stopped == "max_steps"
    torch.manual_seed(99)  # a different init: resume must overwrite everything
    m2 = TinyNet(dropout=0.3)
    r2 = train(m2, ws, val, cfg.replace(out_dir=tmp_path / "run", resume=True))
    assert r2.resumed_from == {"epoch": 1, "step_in_epoch": 3, "global_step": 9}
    assert torch.equal(flat_params(m2), flat_params(ref))
    assert r2.step_losses == r_ref.step_losses
    assert _comparable(r2.history) == _comparable(r_ref.history)
    # a changed batch size cannot resume the same data order
    with pytest.raises(ConfigError, match="batch_size: checkpoint 8 vs now 4"):
        train(TinyNet(), ws, val, cfg.replace(batch_size=4, out_dir=tmp_path / "run", resume=True))


def _worker_cmd(out: Path, **kw: object) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "worker", str(out), json.dumps(kw)]


def _run_worker(out: Path, **kw: object) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run(_worker_cmd(out, **kw), check=True, env=env, timeout=300)
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow  # the default suite kills a real `urlk-forecast train` process instead (test_cli_train.py)
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    """A real training process is SIGKILLed after a mid-training checkpoint; the resumed run ends identically."""
    kw = dict(epochs=3, steps_per_epoch=10, checkpoint_every=3, dropout=0.2)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    ref_proc = subprocess.Popen(_worker_cmd(tmp_path / "ref", **kw), env=env)  # the uninterrupted run, alongside
    proc = subprocess.Popen(_worker_cmd(run, slow=0.1, **kw), env=env)
    ckpt = run / CHECKPOINT_NAME
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if ckpt.is_file():
                state = load_checkpoint(ckpt)["state"]
                if state["global_step"] >= 4:  # mid epoch 1 (steps 3, 6 and 9 checkpoint mid-epoch)
                    break
            assert proc.poll() is None, "the training process ended before it could be killed"
            time.sleep(0.05)
        assert proc.poll() is None, "the training process ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(ckpt)["state"]["global_step"]
    assert 4 <= killed_at < 30 and not (run / "result.json").exists()
    res = _run_worker(run, resume=True, **kw)
    assert ref_proc.wait(timeout=300) == 0
    ref = json.loads((tmp_path / "ref" / "result.json").read_text())
    assert len(ref["step_losses"]) == 30
    assert res["resumed_from"]["global_step"] == killed_at
    assert res["step_losses"] == ref["step_losses"]
    assert res["history"] == ref["history"]
    w_ref = torch.load(tmp_path / "ref" / "final.pt")
    w_res = torch.load(run / "final.pt")
    for k in w_ref:
        assert torch.equal(w_ref[k], w_res[k]), k


def _worker(out: str, kw_json: str) -> None:
    """Subprocess entry: train TinyNet on fixed data into ``out``; write result.json and final.pt."""
    kw = json.loads(kw_json)
    slow = float(kw.pop("slow", 0.0))
    resume = bool(kw.pop("resume", False))
    dropout = float(kw.pop("dropout", 0.0))
    torch.set_num_threads(1)
    ws, val = make_ws(480, 6, seed=0), make_ws(200, 6, seed=1, start="2020-03-01")
    torch.manual_seed(0)
    model = TinyNet(dropout=dropout)
    if slow:  # make every step take a while so the parent can kill the process mid-run
        model.register_forward_pre_hook(lambda *_: time.sleep(slow))
    res = train(model, ws, val, small_cfg(patience=0, out_dir=out, resume=resume, **kw))
    d = res.to_dict()
    d["history"] = _comparable(d["history"])
    torch.save(model.state_dict(), Path(out) / "final.pt")
    (Path(out) / "result.json").write_text(json.dumps(d))


if __name__ == "__main__" and len(sys.argv) >= 2 and sys.argv[1] == "worker":
    _worker(sys.argv[2], sys.argv[3])


def test_cpu_training_keeps_freed_memory_and_the_old_path_does_not(data: tuple) -> None:
    """The trainer turns the allocator setting on for a CPU run (``utils.allocator``; its effect on page faults is
    tested in tests/test_allocator.py), and the old code path (``URLK_FAST=0``) leaves the allocator alone."""
    from urlk_forecast.models import fastpath
    from urlk_forecast.utils import allocator

    ws, val = data
    try:
        allocator.retain_freed_memory(False)
        with fastpath.use_fast_paths(False):
            Trainer(small_cfg(epochs=1, steps_per_epoch=1)).fit(TinyNet(), ws, val)
        assert not allocator.retained()
        Trainer(small_cfg(epochs=1, steps_per_epoch=1)).fit(TinyNet(), ws, val)
        assert allocator.retained() is (os.environ.get(allocator.ENV, "1") != "0")
    finally:
        allocator.retain_freed_memory()


class _CompilingClock(StepClock):
    """StepClock whose steps 2-9 take 5 s each and count as the op's one-time work (kernels compiling), and whose
    first validation forward after step 12 takes 10 s and counts as one-time work too (validation shapes)."""

    def __init__(self, model: nn.Module, flag_compiles: bool = True) -> None:
        super().__init__(model, 1.0, 0.25, {n: 5.0 for n in range(2, 10)})
        self.one_time, self.flag, self.val_compiled = 0.0, flag_compiles, False

    def _pre(self, module: nn.Module, _inputs: object) -> None:
        super()._pre(module, _inputs)
        if module.training and self.n in self.slow and self.flag:
            self.one_time += 5.0
        if not module.training and self.n >= 12 and not self.val_compiled:
            self.val_compiled = True
            self.now += 10.0
            self.one_time += 10.0 if self.flag else 0.0


@pytest.mark.parametrize("flag", [True, False])
def test_time_plan_leaves_out_steps_that_compiled_kernels(data: tuple, monkeypatch, flag: bool) -> None:
    """On a machine's first run the op compiles kernels during the first steps; the plan waits for steps without
    one-time work (ops.one_time_seconds unchanged) and times the validation again when its first timing compiled."""
    import urlk_forecast.trainer as trainer_module

    ws, val = data
    model = TinyNet()
    clock = _CompilingClock(model, flag_compiles=flag)
    monkeypatch.setattr(trainer_module.ops, "one_time_seconds", lambda: clock.one_time)
    cfg = small_cfg(epochs=20, patience=0, lr_schedule="cosine", max_time=200.0, eval_batch_size=8)
    trainer = Trainer(cfg)
    trainer.clock = clock  # type: ignore[method-assign]
    res = trainer.fit(model, ws, val)
    assert res.plan is not None
    if flag:  # steps 10-13 are the first four clean ones: 1 s each; the validation's second timing: 2 x 0.25 s
        assert (res.plan["step_s"], res.plan["val_s"]) == (1.0, 0.5)
    else:  # nothing says the slow steps compiled: their median is taken, as before (steps 2-8, fixed at step 8)
        assert res.plan["step_s"] == 5.0
