"""The automatic training regime (urlk_forecast/regime.py) and Forecaster.fit's use of it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from urlk_forecast import regime as regime_module
from urlk_forecast.config import QUICK_TRAIN_DEFAULTS, ConfigError, TrainConfig
from urlk_forecast.data.synthetic import synthetic_global
from urlk_forecast.forecaster import Forecaster
from urlk_forecast.regime import CPU_MAX_TIME, auto_regime


def test_3850_stations_train_one_window_per_step_on_a_cpu_budget() -> None:
    r = auto_regime(1945, 216, 3850, 11, device="cpu")
    cfg = r.config()
    # 3850 stations / 11 per node = 350 node images per window: 32 / 350 rounds to 0 -> at least 1 window
    assert (cfg.batch_size, cfg.lr, cfg.lr_schedule, cfg.warmup, cfg.grad_clip) == (1, 2e-3, "cosine", 0.05, 5.0)
    assert cfg.steps_per_epoch is None and cfg.epochs == 100  # real passes, a cap
    assert cfg.val_windows == math.ceil(2048 / 350) == 6 and cfg.val_per_plan == 10 and cfg.patience == 4
    assert cfg.max_time == CPU_MAX_TIME == 600.0 and cfg.device == "cpu"
    assert r.reasons[0].startswith("batch 1: 350 node images per window (3850 stations in nodes of 11)")
    assert any("no time limit" in line for line in auto_regime(1945, 216, 3850, 11, device="cuda").reasons)


def test_two_stations_train_32_windows_per_step() -> None:
    r = auto_regime(6100, 800, 2, 11, device="cpu")
    cfg = r.config()
    assert (cfg.batch_size, cfg.lr) == (32, 2e-3)
    assert r.reasons[0] == ("batch 32: 1 node image per window (2 stations in nodes of 11), aiming at ~32 images "
                            "per step")
    assert cfg.val_windows == 256  # 2048 images would be 2048 windows: at most 256
    assert auto_regime(6100, 100, 2, 11, device="cpu").config().val_windows == 100  # all there are
    assert auto_regime(6100, 2, 2, 11, device="cpu").config().val_windows == 2
    assert auto_regime(20, 50, 2, 11, device="cpu").config().batch_size == 20  # capped at the training windows
    # in between: 44 stations in nodes of 11 = 4 images -> 8 windows, lr 2e-3; 12 images -> 3 windows = 36 images per
    # step, lr 2e-3 too (the lr follows node images per step, not windows)
    assert (auto_regime(500, 50, 44, 11, "cpu").config().batch_size, auto_regime(500, 50, 44, 11, "cpu").config().lr) \
        == (8, 2e-3)
    assert (auto_regime(500, 50, 132, 11, "cpu").config().batch_size,
            auto_regime(500, 50, 132, 11, "cpu").config().lr) == (3, 2e-3)
    # fewer than LR_MIN_IMAGES images per step: 1e-3 (a given batch of 4 one-image windows)
    assert auto_regime(500, 50, 2, 11, "cpu", given={"batch_size": 4}).config().lr == 1e-3
    # no validation windows: nothing to validate on, said so
    r = auto_regime(500, 0, 2, 11, "cpu")
    assert r.config().val_windows is None and any("no validation" in line for line in r.reasons)


def test_gpu_has_no_time_limit_and_a_given_budget_is_used() -> None:
    assert auto_regime(6100, 800, 2, 11, device="cuda").config().max_time is None
    assert auto_regime(6100, 800, 2, 11, device="cuda:1").settings["device"] == "cuda:1"
    assert auto_regime(6100, 800, 2, 11, device="cpu", max_time=540.0).config().max_time == 540.0
    assert auto_regime(6100, 800, 2, 11, device="cpu", max_time=None).config().max_time is None
    auto = auto_regime(6100, 800, 2, 11, device="auto").config()
    assert auto.max_time == (None if torch.cuda.is_available() else 600.0)


def test_explicit_values_win_and_derived_choices_follow_them() -> None:
    r = auto_regime(6100, 800, 2, 11, device="cpu",
                    given={"lr": 5e-4, "max_time": 60.0, "max_steps": 40, "out_dir": "x", "val_every": 7})
    cfg = r.config()
    assert (cfg.lr, cfg.max_time, cfg.max_steps, cfg.out_dir, cfg.val_every) == (5e-4, 60.0, 40, "x", 7)
    assert cfg.batch_size == 32 and cfg.lr_schedule == "cosine"  # the rest is still chosen
    assert "lr 0.0005: given (auto: 0.002)" in r.reasons and any("max_steps=40" in line for line in r.reasons)
    assert r.to_dict()["given"] == ["lr", "max_steps", "max_time", "out_dir", "val_every"]
    # a given batch size sets the learning rate chosen for it
    assert auto_regime(6100, 800, 2, 11, "cpu", given={"batch_size": 4}).config().lr == 1e-3
    assert auto_regime(6100, 800, 2, 11, "cpu", given={"lr_schedule": "epoch"}).config().lr_schedule == "epoch"
    assert auto_regime(6100, 800, 2, 11, "cpu", given={"device": "cuda"}).config().max_time is None
    with pytest.raises(ConfigError, match="unknown TrainConfig key.*'lrr'"):
        auto_regime(6100, 800, 2, 11, "cpu", given={"lrr": 1})
    with pytest.raises(ValueError, match="no training window"):
        auto_regime(0, 800, 2, 11, "cpu")
    json.dumps(r.to_dict())  # a JSON record


def test_paper_schedule_is_the_default_config() -> None:
    assert TrainConfig.paper() == TrainConfig()
    assert TrainConfig.paper(lr=1e-3).lr == 1e-3
    p = TrainConfig.paper()
    assert (p.lr, p.lr_decay, p.epochs, p.batch_size, p.patience, p.lr_schedule, p.max_time) == (
        1e-4, 0.5, 10, 32, 3, "epoch", None)


TINY = dict(d_model=32, n_heads=4, node_size=4, dims=(8, 16, 32, 64), kernel_size=7)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_forecaster_fit_uses_the_auto_regime_and_records_it() -> None:
    ds = synthetic_global(stations=13, hours=24 * 20, seed=2, variables=("temperature",))
    fc = Forecaster("unireplknet_a", "temperature", **TINY)
    fc.fit(ds, max_steps=6, progress=False, seed=0, device="cpu")
    info = fc.train_info
    n_train = info["train_windows"]
    # 13 stations in nodes of 4 = 4 images per window -> batch 8, lr 2e-3, cosine, the CPU budget
    expect = auto_regime(n_train, info["val_windows"], 13, 4, "cpu", given={"max_steps": 6, "progress": False,
                                                                            "seed": 0, "device": "cpu"})
    assert info["regime"] == expect.to_dict() and info["regime"]["settings"]["batch_size"] == 8
    used = info["train_config"]
    assert (used["batch_size"], used["lr"], used["lr_schedule"], used["max_time"]) == (8, 2e-3, "cosine", 600.0)
    assert fc.train_result is not None and fc.train_result.plan is not None
    assert fc.train_result.plan["steps"] == 6  # the step budget fits in the time budget
    # the paper's schedule, and a given config with overrides
    fc.fit(ds, schedule="paper", max_steps=2, progress=False, device="cpu")
    assert fc.train_info["regime"] == {"schedule": "paper", "given": ["device", "max_steps", "progress"]}
    assert (fc.train_info["train_config"]["lr"], fc.train_info["train_config"]["batch_size"]) == (1e-4, 32)
    fc.fit(ds, config=TrainConfig(batch_size=4, max_steps=1, progress=False, device="cpu"), lr=5e-4)
    assert fc.train_info["regime"]["schedule"] == "config" and fc.train_info["train_config"]["lr"] == 5e-4
    with pytest.raises(ValueError, match="schedule='quick'"):
        fc.fit(ds, schedule="quick")
    with pytest.raises(ValueError, match="unknown TrainConfig key"):
        fc.fit(ds, max_step=3)


def test_cli_train_prints_and_records_the_auto_regime(tmp_path) -> None:
    from click.testing import CliRunner

    from urlk_forecast.cli import cli

    run = tmp_path / "run"
    args = ["train", "--model-kw", "d_model=32", "--model-kw", "dims=[8,16,32,64]", "--model-kw", "node_size=4",
            "--stations", "24", "--hours", "480", "--threads", "1", "--max-steps", "6", "--eval-windows", "2",
            "--no-progress", "--out", str(run)]
    res = CliRunner().invoke(cli, args, env={"URLK_DWCONV": "torch"}, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    # 24 stations in nodes of 4 = 6 images per window: 32 / 6 -> batch 5, lr 1e-3 (batch < 8)
    assert "training regime (auto):" in res.output
    assert "batch 5: 6 node images per window (24 stations in nodes of 4)" in res.output
    rec = json.loads((run / "run.json").read_text())
    regime = rec["regime"]
    assert regime["schedule"] == "auto" and regime["settings"]["batch_size"] == 5 and regime["settings"]["lr"] == 2e-3
    # the synthetic default's budget, and the plan the trainer fixed (the 6-step budget fits in it)
    assert regime["settings"]["max_time"] == QUICK_TRAIN_DEFAULTS["max_time"] and "max_steps" in regime["given"]
    assert regime["plan"]["steps"] == 6 and regime["plan"]["by"] == "steps"
    cfg = json.loads((run / "train" / "train_config.json").read_text())
    assert (cfg["batch_size"], cfg["lr_schedule"], cfg["max_steps"]) == (5, "cosine", 6)
    assert regime["reasons"] == json.loads((run / "model" / "config.json").read_text())["train"]["regime"]["reasons"]


def test_weight_average_is_on_in_the_automatic_regime_and_off_in_the_paper_schedule() -> None:
    r = auto_regime(6000, 800, 2, 11, device="cpu")
    assert r.settings["ema_decay"] == 0.995 and r.config().ema_decay == 0.995
    assert any("weights averaged" in line for line in r.reasons)
    assert auto_regime(6000, 800, 2, 11, device="cpu", given={"ema_decay": None}).config().ema_decay is None
    assert TrainConfig.paper().ema_decay is None


def _cpuinfo_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def test_native_bf16_probe_agrees_with_the_cpu_flags() -> None:
    flags = _cpuinfo_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    assert regime_module.cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_only_for_big_steps_on_a_cpu_with_native_bf16(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(regime_module, "cpu_has_native_bf16", lambda: native)
    big = auto_regime(1945, 216, 3850, 11, device="cpu")  # 350 node images per step
    assert big.config().amp == ("bf16" if native else False)
    assert any(line.startswith("bf16 autocast: 350 node images per step") for line in big.reasons) == native
    # at the threshold and just below it (batch 1: one window of ceil(S / 11) images)
    at = regime_module.BF16_MIN_IMAGES
    assert auto_regime(500, 50, at * 11, 11, "cpu").config().amp == ("bf16" if native else False)
    assert auto_regime(500, 50, (at - 1) * 11, 11, "cpu").config().amp is False
    small = auto_regime(6100, 800, 2, 11, device="cpu")  # batch 32 of 1 image: the real-data suite's series
    assert small.config().amp == ("bf16" if native and at <= 32 else False)
    assert auto_regime(1945, 216, 3850, 11, device="cuda").config().amp is False  # the rule is the CPU's
    given = auto_regime(1945, 216, 3850, 11, device="cpu", given={"amp": "none"})
    assert given.config().amp == "none"
