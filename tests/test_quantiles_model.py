"""Quantile forecasts of the neural model: the pinball loss, non-crossing levels, calibration on a series with
known noise, save/load, the predict command's quantile outputs, export, and unchanged point-forecast defaults.

References are independent of the code under test: the pinball loss recomputed in float64 numpy from its
definition, the coverage of a Gaussian noise series (80 % between the 0.1 and 0.9 quantiles), netCDF/CSV read back
with xarray/pandas.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from click.testing import CliRunner

from urlk_forecast import Forecaster
from urlk_forecast.cli import cli
from urlk_forecast.config import ConfigError, ForecasterConfig
from urlk_forecast.data.readers import open_dataset, write_netcdf
from urlk_forecast.data.schema import make_dataset
from urlk_forecast.data.windows import WindowDataset
from urlk_forecast.export import ExportedForecaster, read_sidecar
from urlk_forecast.models.forecast_net import ForecastNet
from urlk_forecast.models.quantiles import monotone_quantiles
from urlk_forecast.rundir import RunDir, file_data
from urlk_forecast.trainer import evaluate_loss, masked_loss, masked_pinball_loss, masked_sq_error

TINY = dict(d_model=32, n_heads=4, node_size=4, dims=(8, 16, 32, 64), kernel_size=7)
LEVELS = (0.1, 0.5, 0.9)
SIGMA = 1.5  # the noise of the synthetic series
LENS = dict(seq_len=24, label_len=12, pred_len=12)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def noisy_series(stations: int = 8, hours: int = 24 * 60, seed: int = 0) -> xr.Dataset:
    """A daily cycle per station plus i.i.d. Gaussian noise of std ``SIGMA`` (the only unpredictable part)."""
    g = np.random.default_rng(seed)
    t = np.arange(hours)
    phase, amp, level = g.uniform(0, 2 * np.pi, stations), g.uniform(3, 6, stations), g.uniform(5, 20, stations)
    clean = level + amp * np.sin(2 * np.pi * t[:, None] / 24 + phase)
    values = (clean + SIGMA * g.standard_normal((hours, stations))).astype(np.float32)
    ids = [f"S{i}" for i in range(stations)]
    return make_dataset(pd.date_range("2020-01-01", periods=hours, freq="h"), ids, g.uniform(-60, 60, stations),
                        g.uniform(-180, 180, stations), g.uniform(0, 500, stations), ids, temperature=values)


def _batch(B: int, S: int, seq_len: int = 24, dec_len: int = 24, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x": 10 + 4 * torch.randn(B, seq_len, S, generator=g), "x_mark": torch.rand(B, seq_len, 4, generator=g),
            "y_mark": torch.rand(B, dec_len, 4, generator=g), "x_mask": torch.rand(B, seq_len, S, generator=g) > 0.1}


@pytest.fixture(scope="module")
def data() -> dict[str, xr.Dataset]:
    ds = noisy_series()
    T, L = ds.sizes["time"], LENS["seq_len"]
    return {"all": ds, "train": ds.isel(time=slice(0, int(T * 0.6))),
            "val": ds.isel(time=slice(int(T * 0.6) - L, int(T * 0.75))),
            "test": ds.isel(time=slice(int(T * 0.75) - L, T))}


def _fit(data: dict[str, xr.Dataset], steps: int) -> Forecaster:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fc = Forecaster("unireplknet_a", "temperature", **LENS, quantiles=list(LEVELS), **TINY)
        fc.fit(data["train"], val=data["val"], schedule="paper", max_steps=steps, batch_size=16, lr=3e-3,
               progress=False, val_windows=16, seed=0)
    finally:
        torch.set_num_threads(n)
    return fc


@pytest.fixture(scope="module")
def trained(data) -> Forecaster:
    """A tiny quantile forecaster after a few steps (for the plumbing: save/load, predict, export)."""
    return _fit(data, 4)


def _pinball64(pred: np.ndarray, y: np.ndarray, mask: np.ndarray, levels, scale=None) -> tuple[float, int]:
    """Sum over observed entries of the mean over levels of the pinball loss, in float64, from its definition."""
    total = 0.0
    pred, y = pred.astype(np.float64), y.astype(np.float64)
    for idx in zip(*np.nonzero(mask)):
        s = 1.0 if scale is None else float(scale[idx[-1]])
        losses = []
        for k, q in enumerate(levels):
            e = (y[idx] - pred[idx + (k,)]) / s
            losses.append(q * e if e >= 0 else (q - 1) * e)
        total += sum(losses) / len(levels)
    return total, int(mask.sum())


# ------------------------------------------------------------------------------------------------- the loss
def test_pinball_loss_matches_float64_definition() -> None:
    g = np.random.default_rng(3)
    pred = g.normal(size=(3, 5, 4, 3)).astype(np.float32)
    y = g.normal(size=(3, 5, 4)).astype(np.float32)
    mask = g.random((3, 5, 4)) > 0.3
    y[~mask] = np.nan  # missing targets never reach the sum or the gradient
    scale = g.uniform(0.5, 2.0, 4).astype(np.float32)
    p = torch.from_numpy(pred).requires_grad_(True)
    s, c = masked_pinball_loss(p, torch.from_numpy(y), torch.from_numpy(mask), LEVELS, torch.from_numpy(scale))
    want, n = _pinball64(pred, y, mask, LEVELS, scale)
    assert float(c) == n and float(s.detach()) == pytest.approx(want, rel=1e-6)
    s.backward()
    assert torch.isfinite(p.grad).all() and (p.grad[torch.from_numpy(~mask)] == 0).all()
    # the expected pinball loss is minimised by the true quantile: for y ~ N(0, 1) the 0.9 level beats 0.5 or 1.6
    ys = torch.from_numpy(np.random.default_rng(0).standard_normal(200_000).astype(np.float32))
    def risk(v: float) -> float:
        return float(masked_pinball_loss(torch.full((ys.numel(), 1), v), ys, torch.ones_like(ys, dtype=bool),
                                         (0.9,))[0]) / ys.numel()
    assert risk(1.2816) < min(risk(1.0), risk(1.6), risk(0.5))
    with pytest.raises(ValueError, match="quantile levels"):
        masked_pinball_loss(p[..., :2], torch.from_numpy(y), torch.from_numpy(mask), LEVELS)


def test_masked_loss_is_mse_without_quantiles() -> None:
    g = torch.Generator().manual_seed(1)
    pred, y = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    mask = torch.rand(2, 3, 4, generator=g) > 0.2
    a, b = masked_loss(pred, y, mask), masked_sq_error(pred, y, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_validation_loss_is_the_mean_pinball_loss(data) -> None:
    """``evaluate_loss`` (early stopping's number) equals the float64 mean pinball loss of the model's forecasts."""
    torch.manual_seed(0)
    ws = WindowDataset(data["val"], "temperature", **LENS, stride=7)
    net = ForecastNet(len(ws.station_ids), **LENS, quantiles=LEVELS, **TINY).eval()
    idx = np.arange(len(ws))
    got = evaluate_loss(net, ws, idx, 8, torch.device("cpu"))
    batch = ws.batch(idx)
    with torch.no_grad():
        pred = net(batch).numpy()
    y = batch["y"][:, -LENS["pred_len"]:].numpy()
    mask = batch["y_mask"][:, -LENS["pred_len"]:].numpy().astype(bool) & np.isfinite(y)
    total, n = _pinball64(pred, y, mask, LEVELS)
    assert got == pytest.approx(total / n, rel=1e-5)


# --------------------------------------------------------------------------------------------- non-crossing
def test_monotone_quantiles_never_cross_in_float32() -> None:
    g = torch.Generator().manual_seed(0)
    median = torch.randn(1000, generator=g) * 1e4
    spreads = torch.rand(1000, 4, generator=g) * torch.logspace(-8, 4, 1000)[:, None]  # tiny to huge
    spreads[::7] = 0.0
    out = monotone_quantiles(median, spreads, 2)
    assert out.shape == (1000, 5) and torch.equal(out[:, 2], median)
    assert (out.diff(dim=-1) >= 0).all()
    np.testing.assert_allclose(out[:, 0].double(), median.double() - spreads[:, :2].double().sum(-1), rtol=1e-6,
                               atol=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_untrained_net_quantiles_never_cross(seed: int) -> None:
    """Random weights (scaled up, RevIN affine weights of either sign) and random inputs: still non-decreasing."""
    torch.manual_seed(seed)
    S = 13  # a padded last node
    net = ForecastNet(S, coords=torch.randn(S, 3), seq_len=24, label_len=12, pred_len=12,
                      quantiles=(0.05, 0.1, 0.5, 0.8, 0.95), **TINY)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.5)
        net.revin.affine_weight.copy_(torch.randn(net.node_size) * 2)
    out = net(_batch(3, S, seed=seed))
    assert out.shape == (3, 12, S, 5) and torch.isfinite(out).all()
    assert (out.diff(dim=-1) >= 0).all()
    out.sum().backward()  # the whole head is differentiable
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_quantile_levels_are_checked() -> None:
    for bad, why in (([0.9, 0.5, 0.1], "sorted and unique"), ([0.1, 0.9], "must contain 0.5"),
                     ([0.0, 0.5], "strictly between 0 and 1"), ([0.5, 0.5], "sorted and unique"),
                     ("0.1,0.5", "not a string"), ([], "at least one")):
        with pytest.raises(ValueError, match=f"quantiles=.*{why}"):
            Forecaster(quantiles=bad)
    with pytest.raises(ValueError, match="quantiles="):
        ForecastNet(8, quantiles=[0.2, 0.8], **TINY)
    with pytest.raises(ConfigError, match="ForecasterConfig.quantiles"):
        ForecasterConfig(quantiles=[0.5, 1.0])


# ------------------------------------------------------------------------------------------- calibration
def test_learned_quantiles_bracket_80_percent_of_held_out_targets(data) -> None:
    """After 100 steps (about 15 s) the 0.1 and 0.9 levels of the model hold ~80 % of held-out targets between them.

    The test windows do not overlap (stride = pred_len), so each of the 8 stations x 360 held-out hours is one
    target: 2880 targets, with the noise the only unpredictable part. The binomial standard error of an 80 %
    coverage on 2880 independent targets is 0.75 points, of a 10 % tail 0.56 points; the tolerance (5 points on the
    coverage, 5 on each tail) also allows for the estimation error of quantiles learned from ~860 training hours in
    100 steps, and still fails a model whose band is too narrow (e.g. +-SIGMA: 68 %) or lopsided.
    """
    trained = _fit(data, 100)
    ws = WindowDataset(data["test"], "temperature", **LENS, stride=LENS["pred_len"],
                       order=trained._order_for(data["test"], "test"))
    q = trained.predict_quantiles(ws)
    assert q.shape == (len(ws), 12, 8, 3) and q.dtype == np.float32
    assert (np.diff(q, axis=-1) >= 0).all()
    y = ws.batch(np.arange(len(ws)))["y"][:, -LENS["pred_len"]:].numpy()
    assert y.size == 2880 and np.isfinite(y).all()  # 30 windows x 12 leads x 8 stations, each hour once
    inside = float(((y >= q[..., 0]) & (y <= q[..., 2])).mean())
    below, above = float((y < q[..., 0]).mean()), float((y > q[..., 2]).mean())
    assert abs(inside - 0.8) < 0.05, (inside, below, above)
    assert abs(below - 0.1) < 0.05 and abs(above - 0.1) < 0.05, (below, above)
    # the point forecast is the median level
    np.testing.assert_array_equal(trained.predict_windows(ws), q[..., 1])
    # early stopping followed the mean pinball loss of the validation windows
    assert trained.train_result.best_val_loss is not None and math.isfinite(trained.train_result.best_val_loss)


# ------------------------------------------------------------------------------------------- save / load
def test_save_load_round_trip_keeps_the_quantiles(trained, data, tmp_path) -> None:
    trained.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["quantiles"] == list(LEVELS) and cfg["net"]["quantiles"] == list(LEVELS)
    back = Forecaster.load(tmp_path / "m")
    assert back.quantiles == LEVELS
    ws = WindowDataset(data["test"], "temperature", **LENS, stride=24, order=back._order_for(data["test"], "t"))
    np.testing.assert_array_equal(back.predict_quantiles(ws), trained.predict_quantiles(ws))
    assert "quantiles=[0.1, 0.5, 0.9]" in repr(back)


def test_old_model_directory_without_quantiles_loads(data, tmp_path) -> None:
    """A point model saved before quantiles existed (no "quantiles" key anywhere) loads as a point model."""
    fc = Forecaster("unireplknet_a", "temperature", **LENS, **TINY)
    ws = WindowDataset(data["val"], "temperature", **LENS)
    fc._keep_stations(ws, data["val"])
    fc.frequency = pd.Timedelta(hours=1)
    fc.build_net(len(ws.station_ids), coords=ws.coords).eval()
    fc.save(tmp_path / "old")
    raw = json.loads((tmp_path / "old" / "config.json").read_text())
    raw.pop("quantiles")
    raw["net"].pop("quantiles")
    (tmp_path / "old" / "config.json").write_text(json.dumps(raw))
    back = Forecaster.load(tmp_path / "old")
    assert back.quantiles is None and back.net.quantiles is None
    np.testing.assert_array_equal(back.predict_windows(ws, [0, 5]), fc.predict_windows(ws, [0, 5]))
    with pytest.raises(NotImplementedError, match="no quantiles"):
        back.predict_quantiles(ws, [0])


# -------------------------------------------------------------------------------------- point defaults
def test_point_defaults_unchanged_bit_for_bit() -> None:
    """``quantiles=None`` builds exactly the network built without the option: same parameters (the decoder still
    projects to one channel per station), same output ``(B, pred_len, S)``, bit for bit."""
    S = 13
    coords = torch.randn(S, 3)
    torch.manual_seed(5)
    plain = ForecastNet(S, coords=coords, **TINY).eval()
    torch.manual_seed(5)
    explicit = ForecastNet(S, coords=coords, quantiles=None, **TINY).eval()
    a, b = plain.state_dict(), explicit.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert plain.decoder.projection.out_features == plain.node_size and plain.quantiles is None
    batch = _batch(2, S, seq_len=48, dec_len=48)
    out = plain(batch)
    assert out.shape == (2, 24, S) and torch.equal(out, explicit(batch))
    assert Forecaster().quantiles is None and Forecaster().model_kw == Forecaster(quantiles=None).model_kw


# ----------------------------------------------------------------------------------------- predict / export
@pytest.fixture(scope="module")
def run_dir(trained, data, tmp_path_factory) -> tuple[Path, Path]:
    """A finished run holding the trained quantile model, and its data as a netCDF file."""
    root = tmp_path_factory.mktemp("qruns")
    path = root / "data.nc"
    write_netcdf(data["all"], path)
    run = RunDir(root / "run")
    run.start({"variable": "temperature"}, file_data(path))
    trained.save(run.model_dir)
    run.finish("done")
    return run.path, path


def test_predict_cli_writes_quantiles_to_netcdf_csv_and_plot(trained, run_dir, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    run, path = run_dir
    r = CliRunner()
    res = r.invoke(cli, ["predict", "--run", str(run), "--data", str(path), "--out", str(tmp_path / "f.nc"),
                         "--plot", str(tmp_path / "f.png")])
    assert res.exit_code == 0, res.output
    assert "quantiles 0.1, 0.5, 0.9" in res.output
    want = trained.predict(open_dataset(path))  # what the command reads
    with xr.open_dataset(tmp_path / "f.nc") as nc:
        da = nc["temperature"]
        assert da.dims == ("lead_time", "station", "quantile")
        assert list(nc["quantile"].values) == list(LEVELS) and nc["quantile"].attrs["units"] == "1"
        np.testing.assert_allclose(da.values, want["temperature"].values, rtol=0, atol=1e-6)
        assert (da.diff("quantile") >= 0).all()
    png = (tmp_path / "f.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    res = r.invoke(cli, ["predict", "--run", str(run), "--data", str(path), "--out", str(tmp_path / "f.csv")])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "f.csv")
    for q in LEVELS:
        assert f"temperature_q{q:g}" in df.columns
    np.testing.assert_array_equal(df["temperature"].to_numpy(), df["temperature_q0.5"].to_numpy())
    first = df[df["station"] == "S3"].iloc[0]
    for q in LEVELS:
        assert first[f"temperature_q{q:g}"] == pytest.approx(
            float(want["temperature"].sel(station="S3", quantile=q).isel(lead_time=0)), abs=1e-3)


def test_train_cli_rejects_bad_quantiles_naming_the_flag(tmp_path) -> None:
    res = CliRunner().invoke(cli, ["train", "--quantiles", "0.9,0.1", "--stations", "8", "--hours", "300",
                                   "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "--quantiles" in res.output and "sorted" in res.output, res.output
    res = CliRunner().invoke(cli, ["train", "--quantiles", "0.1,a", "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "--quantiles" in res.output, res.output
    assert not (tmp_path / "r").exists()


def test_export_writes_the_quantile_output_with_its_levels(trained, data, tmp_path) -> None:
    """Export keeps the quantile output: (batch, pred_len, S, Q), the levels in the sidecar, equal to the model."""
    result = trained.export(tmp_path / "q.pt", "torchscript")
    meta = read_sidecar(result.path)
    assert meta["quantiles"] == list(LEVELS) and meta["outputs"][0]["quantiles"] == list(LEVELS)
    assert meta["outputs"][0]["shape"][-1] == len(LEVELS)
    ws = WindowDataset(data["test"], "temperature", **LENS, stride=24,
                       order=trained._order_for(data["test"], "t"))
    idx = np.arange(min(len(ws), 5))
    got = ExportedForecaster(result.path)(ws.batch(idx))
    ref = trained.predict_quantiles(ws, idx)
    assert got.shape == ref.shape == (idx.size, 12, 8, 3)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
