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
import pytest
import torch
import xarray as xr
from click.testing import CliRunner

from urlk_forecast.cli import cli
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
    res = CliRunner().invoke(cli, ["train", *TINY, "--max-steps", "8", "--steps-per-epoch", "4", "--batch-size",
                                   "2", "--lr", "3e-3", "--val-windows", "6", "--eval-windows", "6", "--out",
                                   str(run)], env={"URLK_RUNS_DIR": str(runs), "URLK_DWCONV": "torch"},
                        catch_exceptions=False)  # predict tests below run the default (own-op) path
    assert res.exit_code == 0, res.output
    return runs, run, res.output


def test_train_writes_a_complete_run_and_an_honest_table(trained: tuple) -> None:
    runs, run, out = trained
    assert "persistence" in out and "seasonal naive (24 h)" in out and "MSE" in out
    rec = json.loads((run / "run.json").read_text())
    assert rec["status"] == "done" and rec["data"] == {"kind": "synthetic", "stations": 24, "hours": 480,
                                                       "seed": 0, "start": "2019-01-01"}
    for f in ("model/config.json", "model/weights.pt", "train/checkpoint.pt", "train/history.json", "metrics.json"):
        assert (run / f).is_file(), f
    hist = json.loads((run / "train" / "history.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2] and hist[0]["lr"] == pytest.approx(3e-3)
    assert hist[1]["lr"] == pytest.approx(1.5e-3)  # halved after the first epoch
    m = json.loads((run / "metrics.json").read_text())
    # independent recomputation of the table from the saved model and the regenerated data
    from urlk_forecast.data.synthetic import synthetic_global
    from urlk_forecast.data.windows import WindowDataset, split_dataset
    from urlk_forecast.forecaster import Forecaster

    fc = Forecaster.load(run / "model")
    ds = synthetic_global(stations=24, hours=480, seed=0, variables=("temperature",))
    val = split_dataset(ds, context=48)["val"]
    ws = WindowDataset(val, "temperature")
    idx = np.unique(np.linspace(0, len(ws) - 1, 6).round().astype(int))
    assert m["windows"] == len(idx) and m["windows_available"] == len(ws)
    b = ws.batch(idx)
    y = b["y"][:, -24:].numpy().astype(np.float64)
    mask = b["y_mask"][:, -24:].numpy()
    preds = {"unireplknet_a": fc.predict_windows(ws, idx).astype(np.float64),
             "persistence": np.repeat(b["x"][:, -1:].numpy().astype(np.float64), 24, axis=1),
             "seasonal naive (24 h)": b["x"][:, 24:48].numpy().astype(np.float64)}
    for p in preds.values():
        mask = mask & np.isfinite(p)
    for name, p in preds.items():
        err = np.where(mask, p - y, np.nan)
        per_window_mse = np.nanmean((err**2).reshape(len(idx), -1), axis=1)
        per_window_mae = np.nanmean(np.abs(err).reshape(len(idx), -1), axis=1)
        assert m["methods"][name]["mse"] == pytest.approx(per_window_mse.mean(), rel=1e-5), name
        assert m["methods"][name]["mae"] == pytest.approx(per_window_mae.mean(), rel=1e-5), name


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
        (["--var", "humidity"], "unknown variable 'humidity'; available: temperature, wind_speed"),
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
