"""`urlk-forecast train` / `predict` with the real Forecaster (tiny network, small synthetic set).

CliRunner for the flows and the error messages, real subprocesses for the console entry point, a SIGKILLed
training process resumed through the CLI, and (slow) DDP through `train --devices 2`.
"""

from __future__ import annotations

import json
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
import xarray as xr
from click.testing import CliRunner

from urlk_forecast.cli import cli
from urlk_forecast.data.readers import write_netcdf
from urlk_forecast.data.synthetic import synthetic_global
from urlk_forecast.training import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model-kw", "d_model=32", "--model-kw", "dims=[8,16,32,64]", "--model-kw", "node_size=4",
        "--stations", "24", "--hours", "480", "--threads", "1"]


def _env(runs: Path) -> dict[str, str]:
    # subprocesses use torch's depthwise conv: the own op's per-process kernel start-up (tens of seconds) would
    # dominate these short runs, and what they test (CLI, resume, DDP) does not depend on the conv path
    return {**os.environ, "URLK_RUNS_DIR": str(runs), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
            "URLK_DWCONV": "torch"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """One tiny CLI training run shared by the predict tests: (runs root, run dir, train stdout)."""
    runs = tmp_path_factory.mktemp("runs")
    run = runs / "tiny"
    res = CliRunner().invoke(cli, ["train", *TINY, "--schedule", "paper", "--max-steps", "8", "--steps-per-epoch", "4",
                                   "--batch-size", "2", "--lr", "3e-3", "--val-windows", "6", "--eval-windows", "6",
                                   "--out", str(run)], env={"URLK_RUNS_DIR": str(runs), "URLK_DWCONV": "torch"},
                        catch_exceptions=False)  # predict tests below run the default (own-op) path
    assert res.exit_code == 0, res.output
    return runs, run, res.output


def test_train_writes_a_complete_run_and_an_honest_table(trained: tuple) -> None:
    runs, run, out = trained
    assert "Persistence" in out and "Seasonal naive" in out and "GBDT" in out and "MSE" in out
    assert "test: 6 windows (of " in out and "leads 1-24 h" in out
    rec = json.loads((run / "run.json").read_text())
    assert rec["status"] == "done" and rec["data"] == {"kind": "synthetic", "stations": 24, "hours": 480,
                                                       "seed": 0, "start": "2019-01-01"}
    for f in ("model/config.json", "model/weights.pt", "train/checkpoint.pt", "train/history.json", "metrics.json"):
        assert (run / f).is_file(), f
    hist = json.loads((run / "train" / "history.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2] and hist[0]["lr"] == pytest.approx(3e-3)
    assert hist[1]["lr"] == pytest.approx(1.5e-3)  # halved after the first epoch
    m = json.loads((run / "metrics.json").read_text())
    assert m["split"] == "test" and m["train"]["stopped"] == "max_steps"
    # independent recomputation of the table from the saved model and the regenerated data, on the TEST windows
    # benchmark scores (evenly spaced over the test split)
    from urlk_forecast.baselines import GBDT
    from urlk_forecast.cli.train_report import GBDT_MAX_ROWS
    from urlk_forecast.data.synthetic import synthetic_global
    from urlk_forecast.data.windows import WindowDataset, split_dataset
    from urlk_forecast.forecaster import Forecaster

    fc = Forecaster.load(run / "model")
    ds = synthetic_global(stations=24, hours=480, seed=0, variables=("temperature",))
    parts = split_dataset(ds, context=48)
    ws = WindowDataset(parts["test"], "temperature")
    idx = np.unique(np.linspace(0, len(ws) - 1, 6).round().astype(int))
    assert m["windows"] == len(idx) and m["windows_available"] == len(ws)
    b = ws.batch(idx)
    y = b["y"][:, -24:].numpy().astype(np.float64)
    mask = b["y_mask"][:, -24:].numpy()
    gbdt = GBDT(variable="temperature", max_rows=GBDT_MAX_ROWS).fit(parts["train"])
    preds = {"unireplknet_a": fc.predict_windows(ws, idx).astype(np.float64),
             "Persistence": np.repeat(b["x"][:, -1:].numpy().astype(np.float64), 24, axis=1),
             "Seasonal naive": b["x"][:, 24:48].numpy().astype(np.float64),
             "GBDT": gbdt.predict_windows(ws, idx).astype(np.float64)}
    assert list(m["methods"]) == list(preds)
    for p in preds.values():
        mask = mask & np.isfinite(p)
    for name, p in preds.items():
        err = np.where(mask, p - y, np.nan)
        per_window_mse = np.nanmean((err**2).reshape(len(idx), -1), axis=1)
        per_window_mae = np.nanmean(np.abs(err).reshape(len(idx), -1), axis=1)
        assert m["methods"][name]["mse"] == pytest.approx(per_window_mse.mean(), rel=1e-5), name
        assert m["methods"][name]["mae"] == pytest.approx(per_window_mae.mean(), rel=1e-5), name
    if "does not beat" in out:  # the advice names what stopped this run: the step limit, not the time limit
        assert "--max-steps" in out and "--max-time" not in out


def test_predict_writes_netcdf_and_csv_equal_to_the_api(trained: tuple, tmp_path: Path) -> None:
    runs, run, _ = trained
    r = CliRunner()
    env = {"URLK_RUNS_DIR": str(runs)}
    res = r.invoke(cli, ["predict", "--var", "temperature", "--out", str(tmp_path / "f.nc")], env=env)
    assert res.exit_code == 0, res.output
    assert "24 stations x 24 h" in res.output
    res = r.invoke(cli, ["predict", "--run", str(run), "--out", str(tmp_path / "f.csv")], env=env)
    assert res.exit_code == 0, res.output
    from urlk_forecast.data.synthetic import synthetic_global
    from urlk_forecast.forecaster import Forecaster

    ds = synthetic_global(stations=24, hours=480, seed=0, variables=("temperature",))
    ref = Forecaster.load(run / "model").predict(ds)
    with xr.open_dataset(tmp_path / "f.nc") as got:
        assert dict(got.sizes) == {"lead_time": 24, "station": 24}
        np.testing.assert_allclose(got["temperature"].values, ref["temperature"].values, rtol=1e-6)
        assert got["temperature"].attrs["units"] == "degC"
        assert str(got.attrs["issue_time"]) == str(ds["time"].values[-1]).replace("T", " ")[:19]
    import pandas as pd

    csv = pd.read_csv(tmp_path / "f.csv")
    assert len(csv) == 24 * 24 and list(csv.columns[:3]) == ["station", "lat", "lon"]
    piv = csv.pivot(index="lead_time_h", columns="station", values="temperature")
    ids = [str(s) for s in ref["station"].values]
    np.testing.assert_allclose(piv[ids].values, ref["temperature"].values, atol=1e-4)
    assert not list(tmp_path.glob(".f*"))  # no temporary leftovers


def test_predict_end_and_station_and_plot(trained: tuple, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    runs, run, _ = trained
    ids = json.loads((run / "model" / "stations.json").read_text())["station"][:2]
    out, png = tmp_path / "f.nc", tmp_path / "f.png"
    args = ["predict", "--run", str(run), "--end", "2019-01-15T00:00", "--out", str(out), "--plot", str(png)]
    for s in ids:
        args += ["--station", s]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    with xr.open_dataset(out) as got:
        assert list(got["station"].values) == ids
        assert str(got.attrs["issue_time"]).startswith("2019-01-15")
        assert str(got["time"].values[0]).startswith("2019-01-15T01")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--var", "wind_speed"], "forecasts temperature, not wind_speed"),
        (["--var", "humidity"], "forecasts temperature, not humidity; runs for humidity: none"),
        (["--station", "NOPE"], "unknown station(s) NOPE; available (24)"),
        (["--end", "2019-01-02T00:00"], "the model needs the last seq_len=48"),
        (["--end", "1990-01-01"], "outside the data"),
        (["--out", "f.txt"], "use a .nc (netCDF) or .csv file name"),
        (["--data", "/nonexistent.nc"], "no such file or directory"),
    ],
)
def test_predict_errors_are_one_clear_line(trained: tuple, args: list[str], expect: str) -> None:
    runs, run, _ = trained
    res = CliRunner().invoke(cli, ["predict", "--run", str(run), *args])
    assert res.exit_code != 0
    assert expect in res.output, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_errors_without_a_run(tmp_path: Path) -> None:
    r = CliRunner()
    res = r.invoke(cli, ["predict"], env={"URLK_RUNS_DIR": str(tmp_path / "empty")})
    assert res.exit_code != 0 and "no trained run found under" in res.output
    res = r.invoke(cli, ["predict", "--run", str(tmp_path)])
    assert res.exit_code != 0 and "is not a finished run" in res.output
    res = r.invoke(cli, ["train", "--data", str(tmp_path / "missing.nc"), "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "no such file or directory" in res.output
    res = r.invoke(cli, ["train", "--model", "vgg", "--stations", "12", "--hours", "300", "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "unknown model 'vgg'; available" in res.output and "Traceback" not in res.output
    res = r.invoke(cli, ["train", "--resume", "--out", str(tmp_path / "nothing")])
    assert res.exit_code != 0 and "is not a run directory" in res.output
    assert not (tmp_path / "r").exists() and not (tmp_path / "nothing").exists()


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--seq-len", "0"], "Invalid value for '--seq-len'"),
        (["--pred-len", "10000"], "--pred-len 10000 = 10048 steps do not fit in the train split"),
        (["--stations", "0"], "Invalid value for '--stations'"),
        (["--label-len", "60"], "--label-len 60 must not exceed --seq-len 48"),
        (["--model", "vgg"], "unknown model 'vgg'; available"),
        (["--model-kw", "bogus=1"], "--model-kw: unknown key bogus for a unireplknet model; accepted: "),
    ],
)
def test_invalid_arguments_create_no_run_directory(tmp_path: Path, args: list[str], expect: str) -> None:
    """Every option and the data are checked before anything is written; --resume then finds nothing to resume."""
    runs = tmp_path / "runs"
    env = {"URLK_RUNS_DIR": str(runs), "URLK_DWCONV": "torch"}
    r = CliRunner()
    for out in ([], ["--out", str(tmp_path / "r")]):
        res = r.invoke(cli, ["train", *TINY, "--max-steps", "1", *args, *out], env=env)
        assert res.exit_code != 0 and expect in res.output, res.output
        assert "Traceback" not in res.output
        assert not runs.exists() and not (tmp_path / "r").exists()
    res = r.invoke(cli, ["train", "--resume"], env=env)
    assert res.exit_code != 0 and "no run with a checkpoint found under" in res.output


def test_model_kw_error_is_one_line_naming_the_accepted_keys(tmp_path: Path) -> None:
    import inspect

    from urlk_forecast.models.forecast_net import ForecastNet

    res = CliRunner().invoke(cli, ["train", *TINY, "--model-kw", "bogus=1", "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    accepted = res.output.split("accepted: ")[1].strip().split(", ")
    net_args = set(inspect.signature(ForecastNet.__init__).parameters) - {
        "self", "n_stations", "coords", "seq_len", "label_len", "pred_len", "encoder", "variant", "encoder_kw",
        "quantiles", "n_inputs", "input_scale"}
    assert net_args <= set(accepted) and {"dims", "depths", "kernel_sizes", "max_gap"} <= set(accepted)
    assert "bogus" not in accepted and "seq_len" not in accepted  # seq_len is --seq-len, not a network key
    assert "quantiles" not in accepted  # --quantiles, not a network key
    assert "n_inputs" not in accepted  # set by --inputs
    res = CliRunner().invoke(cli, ["train", *TINY, "--model", "corrformer", "--model-kw", "dims=[1,2,3,4]",
                                   "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "unknown key dims for a corrformer model" in res.output
    assert "e_layers" in res.output and not (tmp_path / "r").exists()


def test_resume_needs_a_checkpoint(tmp_path: Path) -> None:
    from urlk_forecast.rundir import RunDir

    run = RunDir(tmp_path / "broken")
    run.start({}, {"kind": "synthetic", "stations": 24, "hours": 480, "seed": 0})
    res = CliRunner().invoke(cli, ["train", "--resume", "--out", str(run)])
    assert res.exit_code == 1 and "has no checkpoint" in res.output
    res = CliRunner().invoke(cli, ["train", *TINY, "--out", str(run)])
    assert res.exit_code == 1 and "already holds a run; continue it with --resume" in res.output


def test_predict_writes_nothing_when_a_destination_or_the_plot_fails(trained: tuple, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    import urlk_forecast.cli.predict as P

    runs, run, _ = trained
    out, png = tmp_path / "f.nc", tmp_path / "f.png"
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = CliRunner()
    res = r.invoke(cli, ["predict", "--run", str(run), "--out", str(out), "--plot", str(blocker / "p.png")])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert f"--plot {blocker / 'p.png'}: cannot write there, {blocker} is not a directory" in res.output
    res = r.invoke(cli, ["predict", "--run", str(run), "--out", str(blocker / "f.nc")])
    assert res.exit_code == 1 and f"--out {blocker / 'f.nc'}: cannot write there" in res.output

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(P, "_plot", no_space)
    res = r.invoke(cli, ["predict", "--run", str(run), "--out", str(out), "--plot", str(png)])
    assert res.exit_code == 1 and f"cannot write {png}: No space left on device" in res.output, res.output
    assert sorted(os.listdir(tmp_path)) == ["file"]  # neither the .nc nor the .png, no temporary file


@pytest.mark.parametrize(
    ("stopped", "expect", "never"),
    [
        ("early_stopping", ["validation stopped improving (early stopping after 3 epoch(s)", "--lr"],
         ["--max-time", "train longer"]),
        ("max_time", ["time limit (--max-time 540 s)", "--resume --max-time"], ["early stopping"]),
        ("max_steps", ["step limit (--max-steps 8)", "--resume --max-steps"], ["--max-time", "early stopping"]),
        ("epochs", ["ran all its epochs (--epochs 10)", "--resume --epochs"], ["--max-time", "early stopping"]),
    ],
)
def test_advice_names_what_stopped_training(capsys: pytest.CaptureFixture[str], stopped: str, expect: list[str],
                                             never: list[str]) -> None:
    from urlk_forecast.cli.train_report import print_report
    from urlk_forecast.config import TrainConfig

    metrics = {"windows": 2, "windows_available": 5, "stations": 3, "pred_len": 24, "step": "0 days 01:00:00",
               "variable": "temperature", "units": "degC", "model": "unireplknet_a", "train": {"stopped": stopped},
               "methods": {"unireplknet_a": {"mse": np.float64(2.0), "mae": 1.0},
                           "Persistence": {"mse": 3.0, "mae": 0.5}, "GBDT": {"mse": 1.0, "mae": 0.4}}}
    cfg = TrainConfig(max_time=540.0, max_steps=8, epochs=10, patience=3)
    print_report(metrics, cfg)
    got = capsys.readouterr()
    assert "\nunireplknet_a      2.0000    1.0000\n" in got.out and "np.float64" not in got.out
    line = got.err.strip()
    assert line.startswith("warning: unireplknet_a does not beat Persistence, GBDT yet; ")
    assert all(e in line for e in expect) and not any(n in line for n in never), line
    metrics["methods"] = {"unireplknet_a": {"mse": 0.5, "mae": 0.3}, "Persistence": {"mse": 3.0, "mae": 0.5}}
    print_report(metrics, cfg)
    got = capsys.readouterr()
    assert "unireplknet_a beats Persistence (MSE and MAE)" in got.out and got.err == ""


def test_early_stopping_run_advises_no_more_time(tmp_path: Path) -> None:
    """A run that early stopping ends is not told to "train longer"."""
    # a noisy learning rate on 2-step epochs: some epoch fails to improve on the best (patience 1) long before 20
    res = CliRunner().invoke(cli, ["train", *TINY, "--lr", "0.05", "--patience", "1", "--epochs", "20",
                                   "--steps-per-epoch", "2", "--batch-size", "2", "--val-windows", "4",
                                   "--eval-windows", "4", "--no-progress", "--out", str(tmp_path / "r")],
                             env={"URLK_DWCONV": "torch"})
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["train"]["stopped"] == "early_stopping", m["train"]
    assert "does not beat" in res.output and "early stopping" in res.output
    assert "--max-time" not in res.output and "train longer" not in res.output


def test_daily_degf_run_records_its_units_and_speaks_days(tmp_path: Path) -> None:
    """A daily file in degF trained with --units: run.json records the units, predict and benchmark --run re-open
    the data the same way (scores equal to the degC file's), and every step count says days."""
    hourly = synthetic_global(stations=6, hours=24 * 400, seed=2)
    daily = hourly.resample(time="1D").mean()
    for v in hourly.data_vars:
        daily[v].attrs = dict(hourly[v].attrs)
    write_netcdf(daily, tmp_path / "daily_degc.nc")
    daily["temperature"] = daily["temperature"] * 9.0 / 5.0 + 32.0
    daily["temperature"].attrs = dict(hourly["temperature"].attrs)  # mislabelled degC: --units corrects it
    write_netcdf(daily, tmp_path / "daily_degf.nc")
    runs, run = tmp_path / "runs", tmp_path / "runs" / "daily"
    env = {"URLK_RUNS_DIR": str(runs), "URLK_DWCONV": "torch"}
    res = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "daily_degf.nc"), "--units", "temperature=degF",
                                   *TINY[:6], "--threads", "1", "--seq-len", "30", "--label-len", "7", "--pred-len",
                                   "7", "--max-steps", "2", "--eval-windows", "4", "--out", str(run)], env=env)
    assert res.exit_code == 0, res.output
    assert "leads 1-7 days" in res.output and "Seasonal naive (7 days)" in res.output and " h," not in res.output
    spec = json.loads((run / "run.json").read_text())["data"]
    assert spec["units"] == {"temperature": "degF"} and spec["kind"] == "file"
    res = CliRunner().invoke(cli, ["predict", "--run", str(run), "--out", str(tmp_path / "f.nc")], env=env)
    assert res.exit_code == 0, res.output
    assert "6 stations x 7 days of temperature" in res.output, res.output
    bench = ["--max-windows", "4", "--baselines", "persistence,seasonal_naive", "--quiet"]
    res = CliRunner().invoke(cli, ["benchmark", "--run", str(run), *bench, "--out", str(tmp_path / "b")], env=env)
    assert res.exit_code == 0, res.output
    assert "steps of 1 day (forecast 7 days ahead)" in (tmp_path / "b" / "benchmark_temperature.md").read_text()
    ref = CliRunner().invoke(cli, ["benchmark", "--data", str(tmp_path / "daily_degc.nc"), "--seq-len", "30",
                                   "--label-len", "7", "--pred-len", "7", *bench, "--out", str(tmp_path / "r")])
    assert ref.exit_code == 0, ref.output
    got = pd.read_csv(tmp_path / "b" / "benchmark_temperature.csv").set_index("method")
    want = pd.read_csv(tmp_path / "r" / "benchmark_temperature.csv").set_index("method")
    for m in ("Persistence", "Seasonal naive"):  # the run's data re-opened in degC, not degF
        assert got.loc[m, "MSE"] == pytest.approx(want.loc[m, "MSE"], rel=1e-4)


def test_console_entry_point_in_a_real_process(trained: tuple, tmp_path: Path) -> None:
    runs, run, _ = trained
    exe = [sys.executable, "-m", "urlk_forecast.cli"]
    p = subprocess.run([*exe, "predict", "--out", str(tmp_path / "g.csv")], env=_env(runs), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "g.csv").is_file() and "wrote" in p.stdout
    p = subprocess.run([*exe, "predict", "--station", "NOPE"], env=_env(runs), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode != 0 and "unknown station(s) NOPE" in p.stderr and "Traceback" not in p.stderr


def test_killed_cli_training_resumes_to_the_same_model(tmp_path: Path) -> None:
    """SIGKILL a real `urlk-forecast train` process after a mid-epoch checkpoint, `--resume`, compare."""
    runs = tmp_path / "runs"
    common = [*TINY, "--max-steps", "9", "--steps-per-epoch", "4", "--batch-size", "2", "--lr", "3e-3",
              "--val-windows", "4", "--eval-windows", "4", "--checkpoint-every", "2", "--no-progress"]
    exe = [sys.executable, "-m", "urlk_forecast.cli", "train"]
    ref = subprocess.Popen([*exe, *common, "--out", str(runs / "ref")], env=_env(runs), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    run = runs / "killed"
    # slow every step a little so that the parent can kill it mid-run (the hook sleeps outside the maths)
    env = {**_env(runs), "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    (tmp_path / "sitecustomize.py").write_text(
        "import time, torch\n"
        "_orig = torch.optim.Adam.step\n"
        "def _slow(self, *a, **k):\n"
        "    time.sleep(0.3)\n"
        "    return _orig(self, *a, **k)\n"
        "torch.optim.Adam.step = _slow\n")
    proc = subprocess.Popen([*exe, *common, "--out", str(run)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    ckpt = run / "train" / "checkpoint.pt"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if ckpt.is_file() and load_checkpoint(ckpt)["state"]["global_step"] >= 2:
                break
            assert proc.poll() is None, "training ended before it could be killed: " + proc.stderr.read().decode()
            time.sleep(0.1)
        assert proc.poll() is None, "training ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = load_checkpoint(ckpt)["state"]["global_step"]
    assert 2 <= killed_at < 9 and not (run / "model").exists()
    res = subprocess.run([*exe, "--resume", "--out", str(run)], env=_env(runs), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resumed from {ckpt}" in res.stderr
    assert ref.wait(timeout=300) == 0
    h_ref = json.loads((runs / "ref" / "train" / "history.json").read_text())
    h_res = json.loads((run / "train" / "history.json").read_text())
    assert h_res["step_losses"] == h_ref["step_losses"] and len(h_ref["step_losses"]) == 9
    strip = [{k: v for k, v in h.items() if k not in ("elapsed_s", "windows_per_s")} for h in h_ref["history"]]
    assert [{k: v for k, v in h.items() if k not in ("elapsed_s", "windows_per_s")} for h in h_res["history"]] == strip
    w_ref = torch.load(runs / "ref" / "model" / "weights.pt")
    w_res = torch.load(run / "model" / "weights.pt")
    assert all(torch.equal(w_ref[k], w_res[k]) for k in w_ref)


@pytest.mark.slow
def test_cli_devices_2_matches_one_process(tmp_path: Path) -> None:
    """`train --devices 2` (torchrun, 2 CPU processes over gloo, real network) follows the 1-process losses."""
    runs = tmp_path / "runs"
    common = [*TINY, "--model-kw", "dropout=0", "--max-steps", "4", "--steps-per-epoch", "4", "--batch-size", "4",
              "--lr", "3e-3", "--val-windows", "4", "--eval-windows", "4", "--no-progress"]
    exe = [sys.executable, "-m", "urlk_forecast.cli", "train"]
    one = subprocess.run([*exe, *common, "--out", str(runs / "one")], env=_env(runs), capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([*exe, *common, "--devices", "2", "--out", str(runs / "two")], env=_env(runs),
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "torch.distributed.run" in two.stderr
    a = json.loads((runs / "one" / "train" / "history.json").read_text())["step_losses"]
    b = json.loads((runs / "two" / "train" / "history.json").read_text())["step_losses"]
    assert len(a) == len(b) == 4
    np.testing.assert_allclose(b, a, rtol=1e-5)
    assert load_checkpoint(runs / "two" / "train")["world_size"] == 2


def test_ema_decay_flag_sets_and_turns_off_the_weight_average(tmp_path: Path) -> None:
    """The automatic schedule averages the weights (0.995); ``--ema-decay D`` replaces it and 0 turns it off,
    recorded in run.json's regime and in the checkpoint the run writes."""
    for flag, want in (("0.9", 0.9), ("0", None)):
        out = tmp_path / f"r{flag}"
        res = CliRunner().invoke(cli, ["train", *TINY, "--ema-decay", flag, "--max-steps", "2", "--batch-size", "2",
                                       "--val-windows", "4", "--eval-windows", "2", "--no-progress", "--out",
                                       str(out)], env={"URLK_DWCONV": "torch"})
        assert res.exit_code == 0, res.output
        regime = json.loads((out / "run.json").read_text())["regime"]
        assert regime["settings"]["ema_decay"] == want
        assert any(r.startswith("ema_decay") and "given (auto: 0.995)" in r for r in regime["reasons"])
        ckpt = load_checkpoint(out / "train" / "checkpoint.pt")
        assert (ckpt["ema"] is None) == (want is None)
