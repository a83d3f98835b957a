"""Forecaster: fit lowers the loss, predict format/semantics, evaluate vs metrics, save/load, reparameterize, errors."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from urlk_forecast.config import TrainConfig
from urlk_forecast.data.synthetic import synthetic_global
from urlk_forecast.data.windows import WindowDataset
from urlk_forecast.forecaster import Forecaster, parse_model_name
from urlk_forecast.method import Method
from urlk_forecast.metrics import evaluate_arrays
from urlk_forecast.scoring import Scores
from urlk_forecast.utils import to_jsonable

TINY = dict(d_model=32, n_heads=4, node_size=4, dims=(8, 16, 32, 64), kernel_size=7)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data() -> xr.Dataset:
    return synthetic_global(stations=13, hours=24 * 24, seed=1, variables=("temperature",))


@pytest.fixture(scope="module")
def trained(data):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fc = Forecaster("unireplknet_a", "temperature", **TINY)
        assert fc.fit(data, schedule="paper", max_steps=40, batch_size=8, lr=2e-3, progress=False, val_windows=16,
                      seed=0) is fc
    finally:
        torch.set_num_threads(n)
    return fc, fc.train_result


# -------------------------------------------------------------------------------------------------- fit
def test_the_same_seed_gives_the_same_weights_in_one_process(data):
    """docs/training.md: the same seed, data, plan, thread count and machine give bitwise the same weights. The
    default network and regime (own depthwise kernels, fast-path dropout masks, fused AdamW, the weight average) on
    two threads, fitted one after another in one process: the first fit has moved the global RNGs, so the second
    reproduces it only if ``seed`` also sets the initialisation."""
    def weights(seed: int) -> torch.Tensor:
        fc = Forecaster("unireplknet_a", "temperature")
        fc.fit(data, max_time=None, plan_steps=3, max_steps=3, batch_size=2, val_windows=2, progress=False,
               seed=seed, calibrate=False)
        assert fc.train_result.steps == 3
        return torch.cat([t.detach().double().flatten() for t in fc.net.state_dict().values()
                          if t.is_floating_point()])

    torch.set_num_threads(2)  # the autouse fixture restores the count
    first, other = weights(0), weights(1)
    torch.rand(7)  # moving the global RNG between fits changes nothing
    assert torch.equal(first, weights(0))
    assert not torch.allclose(first, other)


def test_fit_lowers_the_loss(trained):
    fc, result = trained
    losses = np.asarray(result.step_losses)
    assert losses.size == 40 and np.isfinite(losses).all()
    assert losses[-10:].mean() < 0.8 * losses[:5].mean()
    assert result.best_val_loss is not None and np.isfinite(result.best_val_loss)
    assert fc.net is not None and not fc.net.training
    assert fc.frequency == pd.Timedelta(hours=1)
    assert fc.train_info["train_windows"] > 0 and fc.train_info["val_windows"] > 0
    assert fc.train_info["train_config"]["max_steps"] == 40 and fc.train_info["train_config"]["lr"] == 2e-3


def test_forecaster_is_a_method(trained):
    fc, _ = trained
    assert isinstance(fc, Method) and fc.kind == "neural" and fc.name == "unireplknet_a"
    assert Forecaster("a").name == "unireplknet_a" and Forecaster("ConvNeXt-S").name == "convnext_s"
    assert fc.n_params == sum(p.numel() for p in fc.net.parameters()) > 0 and Forecaster().n_params == 0
    assert fc.fit_seconds is not None and fc.fit_seconds > 0 and fc.train_info["wall_s"] == fc.fit_seconds
    assert fc.describe() == {"method": "unireplknet_a", "type": "neural", "parameters": fc.n_params,
                             "fit_s": fc.fit_seconds}
    assert fc.train_period == (pd.Timestamp(fc.train_info["train_period"][0]),
                               pd.Timestamp(fc.train_info["train_period"][1]))


def test_fit_takes_a_train_config_and_overrides(data, tmp_path):
    seen = []
    fc = Forecaster("unireplknet_a", "temperature", **TINY)
    cfg = TrainConfig(max_steps=3, batch_size=4, progress=False, val_windows=2, seed=0)
    out = fc.fit(data, config=cfg, lr=5e-4, out_dir=tmp_path / "ckpt", callback=seen.append)
    assert out is fc and fc.train_result is not None and len(fc.train_result.step_losses) == 3
    used = fc.train_info["train_config"]
    assert used["lr"] == 5e-4 and used["batch_size"] == 4 and used["out_dir"] == str(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "checkpoint.pt").is_file() and seen  # out_dir from the config; callback called
    assert cfg.lr == 1e-4  # the given config is not modified
    with pytest.raises(ValueError, match="unknown TrainConfig key"):
        Forecaster("unireplknet_a", "temperature", **TINY).fit(data, max_step=3)


def test_trained_beats_untrained_on_held_out_windows(trained, data):
    fc, _ = trained
    fresh = Forecaster("unireplknet_a", "temperature", **TINY)
    fresh.stations, fresh.frequency = fc.stations, fc.frequency
    torch.manual_seed(0)
    fresh.build_net(13, coords=fc.net.coords.numpy()).eval()
    test = fc.evaluate(data, split="test", stride=4).mse
    untrained = fresh.evaluate(data, split="test", stride=4).mse
    assert test < 0.8 * untrained


def test_fit_keeps_model_station_order(trained, data):
    fc, _ = trained
    ws = WindowDataset(data, "temperature")
    assert list(fc.station_ids) == list(ws.station_ids)  # the space-filling-curve order of the windows
    np.testing.assert_allclose(fc.net.coords.numpy(), ws.coords, rtol=1e-6)


# ---------------------------------------------------------------------------------------------- predict
def test_predict_format(trained, data):
    fc, _ = trained
    out = fc.predict(data)
    assert out["temperature"].dims == ("lead_time", "station")
    assert out.sizes == {"lead_time": 24, "station": 13}
    last = pd.Timestamp(data["time"].values[-1])
    np.testing.assert_array_equal(out["lead_time"].values, (np.arange(1, 25) * np.timedelta64(1, "h")))
    np.testing.assert_array_equal(pd.DatetimeIndex(out["time"].values), last + pd.to_timedelta(np.arange(1, 25), "h"))
    assert pd.Timestamp(out["forecast_reference_time"].values) == last
    assert out.attrs["issue_time"] == str(last) and out.attrs["forecast_start"] == str(last + pd.Timedelta(hours=1))
    assert out["temperature"].attrs["units"] == "degC"
    assert out["temperature"].attrs["standard_name"] == "air_temperature"
    np.testing.assert_array_equal(out["station"].values, data["station"].values)  # the history's order
    np.testing.assert_array_equal(out["lat"].values, data["lat"].values)
    assert np.isfinite(out["temperature"].values).all()
    # plausible physical values: near the recent temperatures of each station
    recent = data["temperature"].isel(time=slice(-48, None)).mean("time").values
    assert np.nanmax(np.abs(out["temperature"].mean("lead_time").values - recent)) < 15


def test_predict_uses_the_last_seq_len_steps(trained, data):
    fc, _ = trained
    full = fc.predict(data)["temperature"].values
    complete = data.copy(deep=True)
    filled = pd.DataFrame(complete["temperature"].values).interpolate(limit_direction="both").to_numpy()
    complete["temperature"][:] = filled.astype(np.float32)
    base = fc.predict(complete)["temperature"].values
    np.testing.assert_allclose(fc.predict(complete.isel(time=slice(-48, None)))["temperature"].values, base,
                               rtol=1e-5, atol=1e-5)
    early = complete.copy(deep=True)
    early["temperature"][: -48 - 30] += 50.0  # far before the input window: no effect
    np.testing.assert_allclose(fc.predict(early)["temperature"].values, base, rtol=1e-5, atol=1e-5)
    late = complete.copy(deep=True)
    late["temperature"][-10:, 0] += 5.0  # inside the input window: changes the forecast
    assert not np.allclose(fc.predict(late)["temperature"].values, base)
    assert full.shape == base.shape


def test_predict_station_order_does_not_matter(trained, data):
    fc, _ = trained
    out = fc.predict(data)
    perm = np.random.default_rng(0).permutation(13)
    shuffled = fc.predict(data.isel(station=perm))
    np.testing.assert_array_equal(shuffled["station"].values, data["station"].values[perm])
    np.testing.assert_allclose(shuffled["temperature"].values, out["temperature"].values[:, perm], rtol=1e-5,
                               atol=1e-5)


def test_predict_nan_where_a_station_has_no_input(trained, data):
    fc, _ = trained
    gap = data.copy(deep=True)
    sid = str(gap["station"].values[4])
    gap["temperature"].loc[{"station": sid}] = np.nan
    with pytest.warns(UserWarning, match="no temperature observation"):
        out = fc.predict(gap)
    vals = out["temperature"].sel(station=sid).values
    assert np.isnan(vals).all()
    others = out["temperature"].drop_sel(station=sid).values
    assert np.isfinite(others).all()


def test_predict_errors(trained, data):
    fc, _ = trained
    with pytest.raises(ValueError, match=r"history has 47 time step\(s\) of temperature, the model needs the last "
                                         r"seq_len=48"):
        fc.predict(data.isel(time=slice(-47, None)))
    extra = data.assign_coords(station=[f"X{i}" if i == 3 else s for i, s in enumerate(data["station"].values)])
    with pytest.raises(ValueError, match="1 station\\(s\\) the model was not trained on: X3; the model knows 13"):
        fc.predict(extra)
    with pytest.raises(ValueError, match="lacks 1 of the model's station"):
        fc.predict(data.isel(station=slice(0, 12)))
    wind = data.rename({"temperature": "wind_speed"})
    wind["wind_speed"].attrs.update(units="m s-1", standard_name="wind_speed")
    with pytest.raises(ValueError, match="no variable 'temperature'.*it has: wind_speed"):
        fc.predict(wind)
    with pytest.raises(ValueError, match="time step of 0 days 02:00:00"):
        fc.predict(data.isel(time=slice(None, None, 2)))
    with pytest.raises(RuntimeError, match="not trained yet"):
        Forecaster().predict(data)


# --------------------------------------------------------------------------------------------- evaluate
def test_evaluate_matches_metrics_and_a_float64_recomputation(trained, data):
    fc, _ = trained
    res = fc.evaluate(data, stride=12, batch_size=5)  # scored in chunks of 5 windows
    assert isinstance(res, Scores) and res.method == "unireplknet_a"
    ws = WindowDataset(data, "temperature", stride=12, order=fc._order_for(data, "data"))
    pred = fc.predict_windows(ws, batch_size=5)  # the same forward batches as the scorer's chunks
    b = ws.batch(np.arange(len(ws)))
    true, mask = b["y"][:, -24:].numpy(), b["y_mask"][:, -24:].numpy()
    assert np.isfinite(pred).all()  # every station observed: nothing left out
    ref = evaluate_arrays(pred, true, mask)
    assert res.mse == pytest.approx(ref["mse"], rel=1e-9)
    assert res["mae"] == pytest.approx(ref["mae"], rel=1e-9)
    # independent float64: per window mean over observed (lead, station), then mean over windows
    err = pred.astype(np.float64) - true.astype(np.float64)
    per_window = [np.mean(err[i][mask[i]] ** 2) for i in range(len(ws)) if mask[i].any()]
    assert res.mse == pytest.approx(np.mean(per_window), rel=1e-9)
    assert res.n_windows == len(ws) and res.n_points == int(mask.sum()) and res.coverage == 1.0
    # per lead: for each lead the mean over windows of the mean over observed stations (float32 sums inside)
    lead = res.per_lead
    assert list(lead["lead"]) == list(range(1, 25))
    for h in (0, 11, 23):
        per = [np.mean(err[i, h][mask[i, h]] ** 2) for i in range(len(ws)) if mask[i, h].any()]
        assert lead["mse"].iloc[h] == pytest.approx(np.mean(per), rel=1e-6)
        per = [np.mean(np.abs(err[i, h][mask[i, h]])) for i in range(len(ws)) if mask[i, h].any()]
        assert lead["mae"].iloc[h] == pytest.approx(np.mean(per), rel=1e-6)
    # the same windows given as a window source, a subset by index, and the test split
    assert fc.evaluate(ws).mse == pytest.approx(res.mse, rel=1e-6)  # other batches: float32 rounding only
    sub = fc.evaluate(ws, [0, 2])
    e2 = fc.predict_windows(ws, [0, 2]).astype(np.float64) - true[[0, 2]].astype(np.float64)
    ref_sub = np.mean([np.mean(e2[k][mask[i]] ** 2) for k, i in enumerate((0, 2))])
    assert sub.n_windows == 2 and sub.mse == pytest.approx(ref_sub, rel=1e-9)
    assert fc.evaluate(data, split="test").n_windows > 0
    with pytest.raises(ValueError, match="split applies to a Dataset"):
        fc.evaluate(ws, split="test")


def test_predict_windows_respects_the_window_station_order(trained, data):
    fc, _ = trained
    ws_model = WindowDataset(data, "temperature", stride=24)
    ws_ident = WindowDataset(data, "temperature", stride=24, order="identity")
    a = fc.predict_windows(ws_model, [0, 2])
    b = fc.predict_windows(ws_ident, [0, 2])
    pos = {s: i for i, s in enumerate(ws_ident.station_ids)}
    cols = [pos[s] for s in ws_model.station_ids]
    np.testing.assert_allclose(b[..., cols], a, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ save / load
def test_save_load_round_trip(trained, data, tmp_path):
    fc, _ = trained
    d = fc.save(tmp_path / "run")
    assert sorted(os.listdir(d)) == ["config.json", "stations.json", "weights.pt"]  # no temp files left
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["format"] == "urlk-forecast/forecaster" and cfg["variable"] == "temperature"
    assert cfg["net"]["n_stations"] == 13 and cfg["frequency"] == "0 days 01:00:00"
    st = json.loads((d / "stations.json").read_text())
    assert st["station"] == list(fc.station_ids) and len(st["coords"]) == 13
    loaded = Forecaster.load(d, map_location="cpu")
    assert loaded.device.type == "cpu"
    np.testing.assert_array_equal(loaded.predict(data)["temperature"].values, fc.predict(data)["temperature"].values)
    assert repr(loaded).startswith("Forecaster(model='unireplknet_a'")


def test_config_json_is_the_forecaster_config(trained, tmp_path):
    from urlk_forecast.config import ForecasterConfig

    fc, _ = trained
    d = fc.save(tmp_path / "run")
    cfg = ForecasterConfig.from_json(d / "config.json")
    assert cfg.to_dict() == fc.to_config().to_dict()  # JSON turns the tuples of model_kw into lists
    assert (cfg.model, cfg.variable, cfg.seq_len, cfg.label_len, cfg.pred_len, cfg.max_gap) == \
        ("unireplknet_a", "temperature", 48, 24, 24, 3)
    assert cfg.units == "degC" and cfg.n_stations == 13 and cfg.train["train_windows"] > 0
    again = Forecaster(**cfg.forecaster_kwargs())
    assert to_jsonable(again.model_kw) == to_jsonable(fc.model_kw) and again.max_gap == fc.max_gap


def test_loads_a_config_written_by_the_old_save(trained, data, tmp_path):
    """A model saved before ForecasterConfig described config.json (hand-written in that code's key order, without
    ``max_gap`` like its first files) still loads and forecasts the same."""
    fc, _ = trained
    d = fc.save(tmp_path / "old")
    net = json.loads((d / "config.json").read_text())["net"]  # the network config must match the weights
    old = (
        '{\n  "format": "urlk-forecast/forecaster",\n  "version": 1,\n  "model": "unireplknet_a",\n'
        '  "variable": "temperature",\n  "units": "degC",\n  "seq_len": 48,\n  "label_len": 24,\n'
        '  "pred_len": 24,\n'
        '  "model_kw": {"encoder": "unireplknet", "variant": "unireplknet_a", "d_model": 32, "n_heads": 4,'
        ' "node_size": 4, "dims": [8, 16, 32, 64], "kernel_size": 7},\n'
        f'  "net": {json.dumps(net)},\n'
        '  "reparameterized": false,\n  "frequency": "0 days 01:00:00",\n  "n_stations": 13,\n'
        '  "train": {"trained_at": "2024-05-01T10:00:00+00:00", "train_period": ["2019-01-01 00:00:00",'
        ' "2019-01-19 23:00:00"], "train_windows": 385, "val_windows": 11, "wall_s": 12.5,'
        ' "result": {"best_val_loss": null}}\n}\n'
    )
    (d / "config.json").write_text(old)
    loaded = Forecaster.load(d)
    assert loaded.max_gap == 3 and loaded.frequency == pd.Timedelta(hours=1) and loaded.fit_seconds == 12.5
    assert loaded.train_period == (pd.Timestamp("2019-01-01"), pd.Timestamp("2019-01-19 23:00"))
    assert to_jsonable(loaded.model_kw) == to_jsonable(fc.model_kw) and loaded.name == "unireplknet_a"
    np.testing.assert_array_equal(loaded.predict(data)["temperature"].values, fc.predict(data)["temperature"].values)
    bad = json.loads(old)
    bad["format"] = "something/else"
    (d / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="not a forecaster config"):
        Forecaster.load(d)
    bad["format"], bad["version"] = "urlk-forecast/forecaster", 99
    (d / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="format version 99 is newer"):
        Forecaster.load(d)
    bad["version"], bad["colour"] = 1, "blue"
    (d / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"config.json: unknown ForecasterConfig key\(s\) \['colour'\]"):
        Forecaster.load(d)


def test_load_errors(tmp_path, trained):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        Forecaster.load(tmp_path / "nope")
    fc, _ = trained
    d = fc.save(tmp_path / "run")
    (d / "weights.pt").unlink()
    with pytest.raises(FileNotFoundError, match="weights.pt is missing"):
        Forecaster.load(d)
    d2 = fc.save(tmp_path / "run2")
    (d2 / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        Forecaster.load(d2)


def test_reparameterize_identical_predictions(trained, data, tmp_path):
    fc, _ = trained
    before = fc.predict(data)["temperature"].values
    d = fc.save(tmp_path / "train_form")
    rep = Forecaster.load(d).reparameterize()
    after = rep.predict(data)["temperature"].values
    assert np.abs(after - before).max() <= 1e-5 * np.abs(before).max()
    assert not any("dil_conv" in k or "origin_bn" in k for k in rep.net.state_dict())
    d2 = rep.save(tmp_path / "deploy_form")
    again = Forecaster.load(d2)
    assert again.reparameterized
    np.testing.assert_array_equal(again.predict(data)["temperature"].values, after)


def test_forecasts_come_from_a_deploy_copy_that_follows_the_weights(trained, data):
    """Forecasting runs a re-parameterized copy of the training-form network; its output equals the training-form
    network's own forward, and an in-place change of the weights is seen by the next forecast."""
    fc, _ = trained
    fc2 = copy.deepcopy(fc)
    ws = fc2._windows(data)
    batch = {k: v for k, v in ws.batch([0, 5]).items() if k not in ("y", "y_mask", "index") and torch.is_tensor(v)}

    def train_form() -> np.ndarray:
        fc2.net.eval()
        with torch.no_grad():
            return fc2.net(batch).float().numpy()

    got = fc2.predict_windows(ws, [0, 5])
    assert "dil_conv" not in str(fc2._inference_net()) and "dil_conv" in str(fc2.net)
    ref = train_form()
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    assert fc2._inference_net() is fc2._inference_net()  # built once per set of weights
    with torch.no_grad():  # in place, as an optimiser or a user would
        for n, p in fc2.net.named_parameters():
            if "dil_conv" in n or "skip" in n:
                p.mul_(1.5)
    changed = fc2.predict_windows(ws, [0, 5])
    ref2 = train_form()
    assert np.abs(changed - got).max() > 1e-2 * np.abs(got).max()
    assert np.abs(changed - ref2).max() <= 1e-5 * np.abs(ref2).max()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_saved_on_gpu_loads_on_cpu(trained, data, tmp_path):
    fc, _ = trained
    cpu_pred = fc.predict(data)["temperature"].values
    gpu = Forecaster.load(fc.save(tmp_path / "a"), map_location="cuda")
    assert gpu.device.type == "cuda"
    back = Forecaster.load(gpu.save(tmp_path / "b"))
    assert back.device.type == "cpu"
    np.testing.assert_allclose(back.predict(data)["temperature"].values, cpu_pred, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------------------- names / errors
def test_model_names():
    assert parse_model_name("unireplknet_s") == ("unireplknet", "unireplknet_s")
    assert parse_model_name("S") == ("unireplknet", "unireplknet_s")
    assert parse_model_name("convnext") == ("convnext", "unireplknet_a")
    assert parse_model_name("resnet_xl") == ("resnet", "unireplknet_xl")
    assert parse_model_name("corrformer") == ("corrformer", "unireplknet_a")
    with pytest.raises(ValueError, match="unknown model 'vit'; available: unireplknet_a"):
        parse_model_name("vit")


def test_constructor_errors():
    # any variable name is accepted; fitting on data without it names the variables the data has
    ds = synthetic_global(stations=4, hours=24 * 4, seed=1)
    with pytest.raises(ValueError, match="train has no variable 'pressure'; its variables are: temperature, wind_spe"):
        Forecaster(variable="pressure").fit(ds)
    with pytest.raises(ValueError, match="label_len \\(30\\) must not exceed seq_len \\(24\\)"):
        Forecaster(seq_len=24, label_len=30)
    with pytest.raises(ValueError, match="pred_len must be an integer >= 1"):
        Forecaster(pred_len=0)


def test_forecast_writes_to_netcdf(trained, data, tmp_path):
    fc, _ = trained
    out = fc.predict(data)
    path = tmp_path / "forecast.nc"
    out.to_netcdf(path)
    back = xr.open_dataset(path, decode_timedelta=True)
    np.testing.assert_array_equal(back["temperature"].values, out["temperature"].values)
    assert pd.TimedeltaIndex(back["lead_time"].values)[0] == pd.Timedelta(hours=1)
    assert pd.Timestamp(back["forecast_reference_time"].values) == pd.Timestamp(data["time"].values[-1])
    back.close()


@pytest.mark.slow
def test_default_model_beats_persistence_and_seasonal_naive():
    """Variant A with its defaults (d_model 128), a few minutes of CPU training on synthetic data."""
    from urlk_forecast.baselines import Persistence, SeasonalNaive
    from urlk_forecast.data.windows import split_dataset

    ds = synthetic_global(stations=44, hours=24 * 60, seed=3, variables=("temperature",))
    parts = split_dataset(ds, context=48)
    fc = Forecaster("unireplknet_a")
    fc.fit(parts["train"], val=parts["val"], max_steps=80, batch_size=8, lr=1e-3, progress=False,
           val_windows=16, steps_per_epoch=40, epochs=2, seed=0)
    ws = WindowDataset(parts["test"], "temperature", order=fc._order_for(parts["test"], "test"), stride=6)
    b = ws.batch(np.arange(len(ws)))
    true, mask = b["y"][:, -24:].numpy(), b["y_mask"][:, -24:].numpy()
    pred = fc.predict_windows(ws)
    mask &= np.isfinite(pred)  # no forecast where a station had nothing observed in its input window
    scores = {
        "model": evaluate_arrays(pred, true, mask)["mse"],
        "persistence": evaluate_arrays(Persistence().fit(parts["train"]).predict_windows(ws),
                                       true, mask)["mse"],
        "seasonal": evaluate_arrays(SeasonalNaive("1D").fit(parts["train"]).predict_windows(ws),
                                    true, mask)["mse"],
    }
    assert scores["model"] < scores["persistence"] and scores["model"] < scores["seasonal"], scores


def test_default_network_has_the_seasonal_skip_and_paper_network_is_one_option_away() -> None:
    """The default Forecaster adds the seasonal-naive-initialised skip with one day of steps as its season (a week
    of steps for daily data); skip="none" builds the paper's network without it."""
    import pandas as pd

    from urlk_forecast.forecaster import season_steps

    assert season_steps(pd.Timedelta(hours=1)) == 24
    assert season_steps(pd.Timedelta(minutes=10)) == 144
    assert season_steps(pd.Timedelta(hours=3)) == 8
    assert season_steps(pd.Timedelta(days=1)) == 7
    assert season_steps(None) == 24
    fc = Forecaster()
    fc.frequency = pd.Timedelta(hours=1)
    net = fc.build_net(3)
    assert net.config["skip"] == "seasonal" and net.config["season"] == 24
    assert any(k.startswith("skip.") for k in net.state_dict())
    paper = Forecaster(skip="none").build_net(3)
    assert paper.config["skip"] == "none" and not any(k.startswith("skip.") for k in paper.state_dict())
