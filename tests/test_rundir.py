"""RunDir: the run layout, finding the latest complete / resumable run, the record, re-opening the data."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from urlk_forecast.data.synthetic import synthetic_global
from urlk_forecast.rundir import RunDir, file_data, find_model, open_data, runs_root, synthetic_data


def _touch(path: Path, text: str = "{}", mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def _complete(run: Path, variable: str | list[str] = "temperature", mtime: float | None = None) -> None:
    _touch(run / "run.json", json.dumps({"options": {}, "data": {"kind": "synthetic"}}))
    _touch(run / "model" / "config.json", json.dumps({"variable": variable}), mtime)


def test_layout_names() -> None:
    r = RunDir("runs/x")
    assert (r.run_file, r.train_dir, r.model_dir) == (Path("runs/x/run.json"), Path("runs/x/train"),
                                                      Path("runs/x/model"))
    assert (r.metrics_file, r.forecast_file, r.checkpoint) == (Path("runs/x/metrics.json"),
                                                               Path("runs/x/forecast.nc"),
                                                               Path("runs/x/train/checkpoint.pt"))
    assert os.fspath(r) == "runs/x" and not r.path.exists()  # creating the object touches nothing


def test_runs_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("URLK_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert runs_root() == tmp_path / "elsewhere"
    monkeypatch.delenv("URLK_RUNS_DIR")
    assert runs_root() == Path("runs")


def test_latest_is_the_most_recently_finished_complete_run(tmp_path: Path) -> None:
    now = time.time()
    _complete(tmp_path / "a", mtime=now - 100)
    _complete(tmp_path / "b", "wind_speed", mtime=now - 10)
    _complete(tmp_path / "c", mtime=now - 50)
    _touch(tmp_path / "d" / "run.json")  # started, never finished: not a candidate
    assert RunDir.latest(tmp_path) == RunDir(tmp_path / "b")
    assert RunDir.latest(tmp_path, variable="temperature") == RunDir(tmp_path / "c")
    assert [r.path.name for r in RunDir.list_runs(tmp_path)] == ["a", "b", "c"]
    assert [r.path.name for r in RunDir.list_runs(tmp_path, variable="wind_speed")] == ["b"]
    assert [r.path.name for r in RunDir.list_runs(tmp_path, complete=False)] == ["a", "b", "c", "d"]
    with pytest.raises(FileNotFoundError, match="no trained run found under"):
        RunDir.latest(tmp_path / "empty")


def test_runs_of_several_targets_match_their_list_of_targets(tmp_path: Path) -> None:
    _complete(tmp_path / "one", "temperature")
    _complete(tmp_path / "two", ["temperature", "wind_speed"])
    names = lambda v: [r.path.name for r in RunDir.list_runs(tmp_path, variable=v)]  # noqa: E731
    assert names("temperature") == ["one"]  # a run of two targets is no temperature run
    assert names("temperature,wind_speed") == names(["temperature", "wind_speed"]) == ["two"]
    assert names(" temperature , wind_speed ") == ["two"]
    assert names("wind_speed,temperature") == []  # the targets' order is the output's order
    assert RunDir(tmp_path / "two").model_variable() == ["temperature", "wind_speed"]


def test_resumable_only_with_a_checkpoint(tmp_path: Path) -> None:
    now = time.time()
    _touch(tmp_path / "old" / "run.json")
    _touch(tmp_path / "old" / "train" / "checkpoint.pt", "x", now - 100)
    _touch(tmp_path / "broken" / "run.json", mtime=now)  # a run that failed before its first checkpoint
    _touch(tmp_path / "stray" / "train" / "checkpoint.pt", "x", now)  # a checkpoint without run.json
    assert RunDir.latest_resumable(tmp_path) == RunDir(tmp_path / "old")
    assert RunDir(tmp_path / "old").has_checkpoint and not RunDir(tmp_path / "broken").has_checkpoint
    (tmp_path / "old" / "train" / "checkpoint.pt").unlink()
    with pytest.raises(FileNotFoundError, match="no run with a checkpoint"):
        RunDir.latest_resumable(tmp_path)


def test_create_start_finish_and_metrics(tmp_path: Path) -> None:
    a = RunDir.create(tmp_path / "runs")
    b = RunDir.create(tmp_path / "runs")
    assert a != b and a.path.is_dir() and b.path.is_dir()  # same second: a suffixed, distinct name
    assert not RunDir.unused(tmp_path / "runs").path.exists()
    with pytest.raises(FileExistsError):
        RunDir.create(tmp_path / "runs", name=a.path.name)
    run = RunDir(tmp_path / "fresh")
    run.start({"seq_len": 48, "data": Path("/x.nc")}, synthetic_data(4, 100, 1), argv=["train"])
    rec = run.record()
    assert rec["status"] == "training" and rec["options"] == {"seq_len": 48, "data": "/x.nc"}
    assert run.data_spec == {"kind": "synthetic", "stations": 4, "hours": 100, "seed": 1, "start": "2019-01-01"}
    assert run.options["seq_len"] == 48 and rec["argv"] == ["train"]
    run.finish("done")
    assert run.record()["status"] == "done" and "finished" in run.record()
    run.write_metrics({"mse": np.float64(2.0), "n": np.int64(3), "bad": float("nan")})
    assert json.loads(run.metrics_file.read_text()) == {"mse": 2.0, "n": 3, "bad": None}
    assert not list(run.path.glob(".*"))  # atomic writes leave no temporary files
    with pytest.raises(FileNotFoundError, match="is not a run directory"):
        RunDir(tmp_path / "nothing").record()


def test_open_data_regenerates_the_synthetic_set(tmp_path: Path) -> None:
    spec = synthetic_data(stations=5, hours=200, seed=3)
    run = RunDir(tmp_path / "run")
    run.start({}, spec)
    ds = run.open_data("wind_speed")
    ref = synthetic_global(stations=5, hours=200, seed=3, variables=("wind_speed",))
    xr.testing.assert_identical(ds, ref)
    assert set(open_data(spec).data_vars) == {"temperature", "wind_speed"}
    with pytest.raises(ValueError, match="stations >= 1"):
        synthetic_data(stations=0, hours=10, seed=0)


def test_open_data_of_a_run_re_opens_its_file(tmp_path: Path) -> None:
    ds = synthetic_global(stations=3, hours=60, seed=1, variables=("temperature",))
    path = tmp_path / "d.nc"
    ds.to_netcdf(path)
    run = RunDir(tmp_path / "run")
    run.start({}, file_data(path))
    assert run.data_spec == {"kind": "file", "path": str(path.resolve())}
    got = run.open_data("temperature")
    np.testing.assert_array_equal(got["temperature"].values, ds["temperature"].values)
    with pytest.raises(ValueError, match="the data has no 'wind_speed'; available: temperature"):
        run.open_data("wind_speed")
    path.unlink()
    with pytest.raises(FileNotFoundError, match="no longer exists"):
        run.open_data("temperature")
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        file_data(tmp_path / "missing.nc")
    with pytest.raises(ValueError, match="unknown data spec"):
        open_data({"kind": "ftp"})


def test_find_model_and_load_model_errors(tmp_path: Path) -> None:
    _complete(tmp_path / "run")
    _touch(tmp_path / "saved" / "config.json")
    assert find_model(tmp_path / "run") == (tmp_path / "run" / "model", RunDir(tmp_path / "run"))
    assert find_model(tmp_path / "saved") == (tmp_path / "saved", None)
    with pytest.raises(FileNotFoundError, match="not a training run or saved model"):
        find_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a finished run"):
        RunDir(tmp_path / "nothing").load_model()
