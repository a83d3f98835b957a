"""The one place that knows the layout of a training run directory.

A run directory holds::

    <run>/run.json          options, data source, status (written when training starts, updated when it ends)
    <run>/train/            the trainer's files: checkpoint.pt (resume), best.pt, history.json, train_config.json
    <run>/model/            the saved Forecaster (config.json, weights.pt, stations.json)
    <run>/metrics.json      the end-of-training table (the model and baselines on the test windows)
    <run>/forecast.nc       the default output of a forecast from this run

:class:`RunDir` creates runs, finds the latest complete or resumable one, records options and status, loads the
model and re-opens (or, for the synthetic default, regenerates from the recorded seed) the data a run was trained on.
Runs live under ``$URLK_RUNS_DIR`` (default ``./runs``). Errors are ordinary ``FileNotFoundError``/``ValueError``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import xarray as xr

from .data.readers import open_dataset
from .data.schema import data_variables, validate
from .data.synthetic import synthetic_global
from .forecaster import CONFIG_NAME, Forecaster
from .utils import atomic_write_text, to_jsonable

__all__ = ["RunDir", "runs_root", "file_data", "data_units", "data_reader", "synthetic_data", "open_data", "find_model"]

RUN_FILE = "run.json"
TRAIN_DIR = "train"
MODEL_DIR = "model"
METRICS_FILE = "metrics.json"
FORECAST_FILE = "forecast.nc"
CHECKPOINT_FILE = "checkpoint.pt"
SYNTHETIC_START = "2019-01-01"


def runs_root() -> Path:
    """Where runs live: ``$URLK_RUNS_DIR`` or ``./runs``."""
    return Path(os.environ.get("URLK_RUNS_DIR", "runs"))


# ------------------------------------------------------------------------------------------------- data specs
def file_data(path: str | os.PathLike[str], units: dict[str, str] | None = None,
              reader: dict[str, Any] | None = None) -> dict[str, Any]:
    """The data spec of a file or directory any reader understands (the path is made absolute); ``units``: the
    source's units per variable (``{"temperature": "degF"}``); ``reader``: other reader arguments (``format``,
    a wide CSV's ``time_column``/``columns``/``variable``). Both are recorded so the data is re-opened the same
    way."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    spec: dict[str, Any] = {"kind": "file", "path": str(p.resolve())}
    if units:
        spec["units"] = {str(k): str(v) for k, v in units.items()}
    if reader:
        spec["reader"] = {str(k): (list(v) if isinstance(v, tuple) else v) for k, v in reader.items()}
    return spec


def data_reader(spec: dict[str, Any]) -> dict[str, Any]:
    """The reader arguments a file data spec records besides its units (``{}`` when none)."""
    reader = spec.get("reader") or {}
    if not isinstance(reader, dict):
        raise ValueError(f"the data spec's reader should be a mapping of reader arguments, got {reader!r}")
    return dict(reader)


def data_units(spec: dict[str, Any]) -> dict[str, str] | None:
    """The source units a file data spec records (None when it records none)."""
    units = spec.get("units")
    if units is not None and not isinstance(units, dict):
        raise ValueError(f"the data spec's units should be a mapping variable -> unit, got {units!r}")
    return dict(units) if units else None


def synthetic_data(stations: int, hours: int, seed: int, start: str = SYNTHETIC_START) -> dict[str, Any]:
    """The data spec of the synthetic set (regenerated bit for bit from it)."""
    if int(stations) < 1 or int(hours) < 1:
        raise ValueError(f"the synthetic set needs stations >= 1 and hours >= 1, got {stations} and {hours}")
    return {"kind": "synthetic", "stations": int(stations), "hours": int(hours), "seed": int(seed),
            "start": str(start)}


def open_data(spec: dict[str, Any], variable: str | Sequence[str] | None = None) -> xr.Dataset:
    """The dataset a data spec describes; with ``variable`` (a name or several: a target and its covariates),
    checked to hold them (and, for synthetic data, generated with only them)."""
    names = [variable] if isinstance(variable, str) else list(variable or [])
    kind = spec.get("kind")
    if kind == "file":
        path = Path(spec["path"])
        if not path.exists():
            raise FileNotFoundError(f"the data file {path} no longer exists")
        units = data_units(spec)
        ds = open_dataset(path, **data_reader(spec), **({"units": units} if units else {}))
    elif kind == "synthetic":
        kw = {"variables": tuple(names)} if names else {}
        ds = synthetic_global(stations=int(spec["stations"]), start=spec.get("start", SYNTHETIC_START),
                              hours=int(spec["hours"]), seed=int(spec["seed"]), **kw)
    else:
        raise ValueError(f"unknown data spec {spec!r} (kind must be 'file' or 'synthetic')")
    for name in names:
        if name not in ds.data_vars:
            have = data_variables(ds)
            raise ValueError(f"the data has no {name!r}; available: {', '.join(have) or 'none'}")
    if names:
        validate(ds, variables=names)
    return ds


def _target_tuple(variable: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"a"``, ``"a,b"`` or ``["a", "b"]`` as a tuple of names (empty for None)."""
    if variable is None:
        return ()
    names = variable.split(",") if isinstance(variable, str) else [str(v) for v in variable]
    return tuple(v.strip() for v in names if v.strip())


def find_model(path: str | os.PathLike[str]) -> tuple[Path, RunDir | None]:
    """``(model directory, run)`` of ``path``: a run directory (its ``model/``) or a saved Forecaster (run None)."""
    p = Path(path)
    if (p / CONFIG_NAME).is_file():
        return p, None
    run = RunDir(p)
    if run.is_complete:
        return run.model_dir, run
    raise FileNotFoundError(f"{p}: not a training run or saved model (no {CONFIG_NAME} or {MODEL_DIR}/{CONFIG_NAME})")


# ---------------------------------------------------------------------------------------------------- RunDir
class RunDir:
    """One run directory (see the module docstring); creating the object touches nothing on disk."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    # -- layout -------------------------------------------------------------------------------------------------
    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def train_dir(self) -> Path:
        return self.path / TRAIN_DIR

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def forecast_file(self) -> Path:
        return self.path / FORECAST_FILE

    @property
    def checkpoint(self) -> Path:
        return self.train_dir / CHECKPOINT_FILE

    @property
    def is_run(self) -> bool:
        """A run directory: it has ``run.json``."""
        return self.run_file.is_file()

    @property
    def is_complete(self) -> bool:
        """Training finished and saved the model."""
        return (self.model_dir / CONFIG_NAME).is_file()

    @property
    def has_checkpoint(self) -> bool:
        """Training can be resumed from here."""
        return self.is_run and self.checkpoint.is_file()

    # -- finding runs ---------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike[str] | None = None, name: str | None = None) -> RunDir:
        """Create a new, empty run directory under ``root`` (default :func:`runs_root`) named ``name`` (which must
        not exist yet) or after the current time (``-2``, ``-3``, ... appended when taken)."""
        base = runs_root() if root is None else Path(root)
        base.mkdir(parents=True, exist_ok=True)
        if name is not None:
            (base / name).mkdir()
            return cls(base / name)
        for _ in range(1000):
            run = cls.unused(base)
            try:
                run.path.mkdir()
            except FileExistsError:  # taken since unused() looked: try the next name
                continue
            return run
        raise FileExistsError(f"no free run name under {base}")

    @classmethod
    def unused(cls, root: str | os.PathLike[str] | None = None) -> RunDir:
        """A run under ``root`` named after the current time that does not exist yet (nothing is created)."""
        base = runs_root() if root is None else Path(root)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        k = 1
        while (base / (stamp if k == 1 else f"{stamp}-{k}")).exists():
            k += 1
        return cls(base / (stamp if k == 1 else f"{stamp}-{k}"))

    @classmethod
    def list_runs(cls, root: str | os.PathLike[str] | None = None, *, variable: str | Sequence[str] | None = None,
                  complete: bool = True) -> list[RunDir]:
        """Runs under ``root`` sorted by name: complete ones (``complete``; else every directory with ``run.json``),
        only those forecasting ``variable`` when given: one name, or several (a list or ``"a,b"``), matched against
        the run's targets in order (a run forecasting temperature and wind speed together is no temperature run)."""
        base = runs_root() if root is None else Path(root)
        if not base.is_dir():
            return []
        runs = [cls(p) for p in sorted(base.iterdir()) if p.is_dir()]
        runs = [r for r in runs if (r.is_complete if complete else r.is_run)]
        if variable is not None:
            want = _target_tuple(variable)
            runs = [r for r in runs if _target_tuple(r.model_variable()) == want]
        return runs

    @classmethod
    def latest(cls, root: str | os.PathLike[str] | None = None, *, variable: str | Sequence[str] | None = None
               ) -> RunDir:
        """The most recently finished run under ``root`` (FileNotFoundError when there is none)."""
        base = runs_root() if root is None else Path(root)
        runs = cls.list_runs(base, variable=variable)
        if not runs:
            raise FileNotFoundError(f"no trained run found under {base}/")
        return max(runs, key=lambda r: (r.model_dir / CONFIG_NAME).stat().st_mtime)

    @classmethod
    def latest_resumable(cls, root: str | os.PathLike[str] | None = None) -> RunDir:
        """The run under ``root`` with the most recent checkpoint (FileNotFoundError when none has one)."""
        base = runs_root() if root is None else Path(root)
        runs = [r for r in cls.list_runs(base, complete=False) if r.has_checkpoint]
        if not runs:
            raise FileNotFoundError(f"no run with a checkpoint found under {base}/")
        return max(runs, key=lambda r: r.checkpoint.stat().st_mtime)

    # -- the record -----------------------------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """The contents of ``run.json``."""
        if not self.run_file.is_file():
            raise FileNotFoundError(f"{self.path} is not a run directory (no {RUN_FILE})")
        try:
            return json.loads(self.run_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.run_file}: not valid JSON ({e})") from None

    @property
    def options(self) -> dict[str, Any]:
        """The training options recorded in ``run.json``."""
        return dict(self.record().get("options", {}))

    @property
    def data_spec(self) -> dict[str, Any]:
        """The data the run was trained on (see :func:`file_data`, :func:`synthetic_data`)."""
        spec = self.record().get("data")
        if not isinstance(spec, dict):
            raise ValueError(f"{self.run_file} does not say what data the run used")
        return spec

    def start(self, options: dict[str, Any], data: dict[str, Any], **extra: Any) -> None:
        """Create the directory and write ``run.json`` with status "training"."""
        rec = {"options": options, "data": data, "status": "training",
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
        self.path.mkdir(parents=True, exist_ok=True)
        self._write_record(rec)

    def finish(self, status: str = "done", **extra: Any) -> None:
        """Record the end of training (``status``, the time, ``extra`` fields) in ``run.json``."""
        rec = self.record()
        rec.update(status=status, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra)
        self._write_record(rec)

    def _write_record(self, rec: dict[str, Any]) -> None:
        atomic_write_text(self.run_file, json.dumps(to_jsonable(rec), indent=2) + "\n")

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        """Write ``metrics.json`` atomically; returns its path."""
        atomic_write_text(self.metrics_file, json.dumps(to_jsonable(metrics), indent=2) + "\n")
        return self.metrics_file

    def metrics(self) -> dict[str, Any]:
        """The contents of ``metrics.json``."""
        return json.loads(self.metrics_file.read_text(encoding="utf-8"))

    # -- model and data -------------------------------------------------------------------------------------------
    def model_variable(self) -> str | list[str] | None:
        """The variable the saved model forecasts, a list for a model of several targets (None when there is no
        readable model config)."""
        try:
            return json.loads((self.model_dir / CONFIG_NAME).read_text(encoding="utf-8")).get("variable")
        except (OSError, json.JSONDecodeError, AttributeError):
            return None

    def load_model(self, map_location: str = "cpu") -> Forecaster:
        """The trained Forecaster of this run."""
        if not self.is_complete:
            raise FileNotFoundError(f"{self.path} is not a finished run (no {MODEL_DIR}/{CONFIG_NAME})")
        return Forecaster.load(self.model_dir, map_location=map_location)

    def open_data(self, variable: str | Sequence[str] | None = None) -> xr.Dataset:
        """The data the run was trained on: its file re-opened (with the source units recorded at training), or the
        synthetic set regenerated from its seed."""
        return open_data(self.data_spec, variable)
