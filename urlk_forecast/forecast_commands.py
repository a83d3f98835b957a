"""``urlk-forecast train`` and ``urlk-forecast predict`` (click commands registered by cli.py).

``train`` fits a :class:`~urlk_forecast.forecaster.Forecaster` on the synthetic 3850-station default (or any
``--data`` file/directory a reader understands), time-boxed by ``--max-time`` so the default finishes within
~15 minutes on a 2-core CPU, then prints the validation MSE/MAE next to persistence and seasonal naive (24 h)
on the same windows. ``--devices N`` re-launches itself under ``torchrun`` (DDP). A run directory holds::

    runs/NAME/run.json          options, data source, status (written first, updated at the end)
    runs/NAME/train/            checkpoint.pt (resume), best.pt, history.json, train_config.json
    runs/NAME/model/            the saved Forecaster (config.json, weights.pt, stations.json)
    runs/NAME/metrics.json      validation MSE/MAE of the model and the baselines

``predict`` loads a run (default: the latest complete one under ``runs/``), takes the last ``seq_len`` steps of
the data (default: the run's synthetic data regenerated from its seed) and writes the next ``pred_len`` steps for
every station to netCDF or CSV, optionally with a PNG of a few stations. Errors a user can fix print one line and
exit non-zero, without a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from .cli import command_logging, user_errors
from .config import QUICK_TRAIN_DEFAULTS, ConfigError, TrainConfig, atomic_write_text

__all__ = ["train", "predict", "find_latest_run", "runs_root"]

RUN_FILE = "run.json"
MODEL_DIR = "model"
TRAIN_DIR = "train"
METRICS_FILE = "metrics.json"
_VARIABLES = ("temperature", "wind_speed")

log = logging.getLogger("urlk_forecast.cli")


# ------------------------------------------------------------------------------------------------- helpers


def runs_root() -> Path:
    """Where runs live: ``$URLK_RUNS_DIR`` or ``./runs``."""
    return Path(os.environ.get("URLK_RUNS_DIR", "runs"))


def _is_complete(run: Path) -> bool:
    return (run / MODEL_DIR / "config.json").is_file()


def find_latest_run(root: Path | None = None) -> Path:
    """The most recently finished run under ``root`` (a directory with ``model/config.json``)."""
    root = runs_root() if root is None else Path(root)
    runs = [p for p in root.iterdir() if p.is_dir() and _is_complete(p)] if root.is_dir() else []
    if not runs:
        raise click.ClickException(
            f"no trained run found under {root}/ (train one with `urlk-forecast train`, or pass --run DIR)"
        )
    return max(runs, key=lambda p: (p / MODEL_DIR / "config.json").stat().st_mtime)


def _parse_model_kw(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is read as JSON when it parses (numbers, lists, true/null), else a string."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--model-kw")
        k, v = item.split("=", 1)
        k = k.strip().replace("-", "_")
        if not k.isidentifier():
            raise click.BadParameter(f"{k!r} is not a valid keyword name", param_hint="--model-kw")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _atomic_path(dest: Path) -> tuple[Path, Any]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=dest.suffix or ".tmp", dir=dest.parent)
    os.close(fd)
    return Path(tmp), None


def _replace_atomically(tmp: Path, dest: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, dest)


def _load_data(run_data: dict[str, Any], variable: str) -> Any:
    """The dataset a run describes: a file/directory read by any reader, or the synthetic default."""
    from .data.schema import validate

    if run_data["kind"] == "file":
        from .data.readers import open_dataset

        ds = open_dataset(run_data["path"])
    else:
        from .data.synthetic import synthetic_global

        ds = synthetic_global(stations=run_data["stations"], start=run_data.get("start", "2019-01-01"),
                              hours=run_data["hours"], seed=run_data["seed"], variables=(variable,))
    if variable not in ds.data_vars:
        have = [str(v) for v in ds.data_vars if v in _VARIABLES]
        raise click.ClickException(f"the data has no {variable!r}; available: {', '.join(have) or 'none'}")
    validate(ds, variables=[variable])
    return ds


def _evenly_spaced(n: int, k: int | None) -> Any:
    import numpy as np

    if k is None or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def _given(ctx: click.Context, name: str) -> bool:
    src = ctx.get_parameter_source(name)
    return src is not None and src.name in ("COMMANDLINE", "ENVIRONMENT")


# ---------------------------------------------------------------------------------------------------- train

_TRAIN_OPTION_KEYS = (
    "data", "variable", "model", "model_kw", "seq_len", "label_len", "pred_len", "epochs", "batch_size", "lr",
    "lr_decay", "patience", "steps_per_epoch", "device", "max_time", "max_steps", "amp", "checkpointing",
    "grad_clip", "seed", "stations", "hours", "val_windows", "eval_windows", "checkpoint_every", "schedule",
    "threads",
)
# never forwarded to the torchrun children (they are launcher options, or re-derived)
_LAUNCH_ONLY = ("devices", "nnodes", "node_rank", "master_addr", "master_port", "rdzv_endpoint")


@click.command("train")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Station data file or directory (any supported format). Default: the synthetic set.")
@click.option("--var", "variable", type=click.Choice(_VARIABLES), default="temperature", show_default=True,
              help="Variable to forecast.")
@click.option("--model", default="unireplknet_a", show_default=True,
              help="unireplknet_<a|f|p|n|t|s|b|l|xl|h>, convnext[_v], resnet[_v] or corrformer[_v].")
@click.option("--model-kw", multiple=True, metavar="KEY=VALUE",
              help="Extra network argument (repeatable), e.g. --model-kw d_model=128 --model-kw dropout=0.1.")
@click.option("--seq-len", type=int, default=48, show_default=True, help="Input hours.")
@click.option("--label-len", type=int, default=24, show_default=True, help="Decoder start-token hours.")
@click.option("--pred-len", type=int, default=24, show_default=True, help="Forecast hours.")
@click.option("--schedule", type=click.Choice(["quick", "paper"]), default="quick", show_default=True,
              help="quick: time-boxed CPU defaults; paper: lr 1e-4 halved per epoch, 10 epochs, batch 32, "
                   "patience 3, no time limit. Options below override either.")
@click.option("--epochs", type=int, default=None, help="Maximum epochs.")
@click.option("--batch-size", type=int, default=None, help="Global batch size (windows per optimiser step).")
@click.option("--lr", type=float, default=None, help="Initial learning rate (Adam).")
@click.option("--lr-decay", type=float, default=None, help="LR factor after each epoch (paper: 0.5).")
@click.option("--patience", type=int, default=None, help="Early-stopping patience in epochs (0 = off).")
@click.option("--steps-per-epoch", type=int, default=None, help="Cap on optimiser steps per epoch.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--max-time", type=float, default=None, help="Seconds of training before a clean stop.")
@click.option("--max-steps", type=int, default=None, help="Optimiser steps before a clean stop.")
@click.option("--amp", type=click.Choice(["none", "auto", "bf16", "fp16"]), default="none", show_default=True,
              help="Mixed precision (bf16 on CPU; bf16 or fp16 on CUDA).")
@click.option("--checkpointing/--no-checkpointing", default=False, show_default=True,
              help="Gradient checkpointing (less memory, ~1.3x compute).")
@click.option("--grad-clip", type=float, default=None, help="Clip the global gradient norm to this value.")
@click.option("--resume", is_flag=True, help="Continue the run in --out (default: the latest) from its checkpoint.")
@click.option("--devices", type=int, default=1, show_default=True,
              help="Processes per node for DDP (spawns torchrun; GPUs or CPU processes).")
@click.option("--nnodes", type=int, default=1, show_default=True, help="Nodes for multi-node DDP.")
@click.option("--node-rank", type=int, default=None, help="This node's rank (multi-node, static rendezvous).")
@click.option("--master-addr", default=None, help="Rank-0 node address (multi-node).")
@click.option("--master-port", type=int, default=None, help="Rank-0 port (multi-node).")
@click.option("--rdzv-endpoint", default=None, help="host:port of a c10d rendezvous (multi-node, elastic).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the data, init and data order.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run directory (default runs/<time>).")
@click.option("--stations", type=int, default=QUICK_TRAIN_DEFAULTS["stations"], show_default=True,
              help="Synthetic stations (without --data).")
@click.option("--hours", type=int, default=QUICK_TRAIN_DEFAULTS["hours"], show_default=True,
              help="Synthetic hours (without --data).")
@click.option("--val-windows", type=int, default=None, help="Validation windows per epoch (evenly spaced).")
@click.option("--eval-windows", type=int, default=None,
              help="Validation windows of the final model-vs-baselines table.")
@click.option("--checkpoint-every", type=int, default=None, help="Also checkpoint every N steps.")
@click.option("--threads", type=int, default=None, help="torch CPU threads per process.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.pass_context
def train(ctx: click.Context, **opts: Any) -> None:
    """Train a forecaster (default: synthetic 3850 stations, ~10 min on CPU) and compare it with baselines."""
    from . import distributed as D

    in_torchrun = D.launched_by_torchrun()
    main = int(os.environ.get("RANK", "0")) == 0
    with command_logging(main), user_errors():
        run = _resolve_run_dir(opts)
        if opts["resume"]:
            opts = _merge_resumed_options(ctx, opts, run)
        if opts["devices"] > 1 or opts["nnodes"] > 1:
            if in_torchrun:
                raise click.ClickException("--devices is for the launching command; torchrun already started "
                                           "these processes")
            sys.exit(_launch_torchrun(ctx, opts, run))
        _train_here(opts, run, main)


def _resolve_run_dir(opts: dict[str, Any]) -> Path:
    if opts["out"] is not None:
        run = Path(opts["out"])
        if opts["resume"] and not (run / RUN_FILE).is_file():
            raise click.ClickException(f"--resume: {run} is not a run directory (no {RUN_FILE})")
        return run
    if opts["resume"]:
        root = runs_root()
        runs = [p for p in root.iterdir() if (p / RUN_FILE).is_file()] if root.is_dir() else []
        if not runs:
            raise click.ClickException(f"--resume: no run found under {root}/; pass --out DIR")
        return max(runs, key=lambda p: (p / RUN_FILE).stat().st_mtime)
    return runs_root() / time.strftime("%Y%m%d-%H%M%S")


def _merge_resumed_options(ctx: click.Context, opts: dict[str, Any], run: Path) -> dict[str, Any]:
    """On --resume the run's recorded options apply, except those given again on this command line."""
    saved = json.loads((run / RUN_FILE).read_text())["options"]
    merged = dict(opts)
    for k in _TRAIN_OPTION_KEYS:
        if k in saved and not _given(ctx, k):
            merged[k] = saved[k]
    if merged.get("data") is not None:
        merged["data"] = Path(merged["data"])
    merged["model_kw"] = tuple(merged.get("model_kw") or ())
    return merged


def _launch_torchrun(ctx: click.Context, opts: dict[str, Any], run: Path) -> int:
    """Re-run this command under torchrun with the same options (launcher options removed, --out fixed)."""
    from . import distributed as D

    args = ["train"]
    for param in ctx.command.params:
        name = param.name
        assert name is not None
        if name in _LAUNCH_ONLY or name == "out" or not _given(ctx, name) and name not in ("resume",):
            continue
        value = opts[name]
        if isinstance(param, click.Option):
            flag = param.opts[0]
            if param.is_flag:
                if param.secondary_opts:
                    args.append(flag if value else param.secondary_opts[0])
                elif value:
                    args.append(flag)
            elif param.multiple:
                for v in value:
                    args += [flag, str(v)]
            elif value is not None:
                args += [flag, str(value)]
    args += ["--out", str(run)]
    cmd = D.torchrun_command(opts["devices"], args, nnodes=opts["nnodes"], node_rank=opts["node_rank"],
                             master_addr=opts["master_addr"], master_port=opts["master_port"],
                             rdzv_endpoint=opts["rdzv_endpoint"])
    click.echo("launching: " + " ".join(cmd), err=True)
    env = dict(os.environ)
    if opts.get("threads") is None and "OMP_NUM_THREADS" not in env:
        cpus = os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(max(1, cpus // max(opts["devices"], 1)))
    return subprocess.call(cmd, env=env)


def _train_config(opts: dict[str, Any]) -> TrainConfig:
    base: dict[str, Any] = {}
    if opts["schedule"] == "quick":
        q = QUICK_TRAIN_DEFAULTS
        base = {k: q[k] for k in ("max_time", "batch_size", "lr", "lr_decay", "epochs", "steps_per_epoch",
                                  "val_windows", "grad_clip")}
    for k in ("epochs", "batch_size", "lr", "lr_decay", "patience", "steps_per_epoch", "max_time", "max_steps",
              "grad_clip", "val_windows", "checkpoint_every"):
        if opts.get(k) is not None:
            base[k] = opts[k]
    base.update(device=opts["device"], amp=opts["amp"], checkpointing=bool(opts["checkpointing"]),
                seed=int(opts["seed"]), progress=opts.get("progress"))
    base.setdefault("checkpoint_every", 10)
    try:
        return TrainConfig(**base)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def _train_here(opts: dict[str, Any], run: Path, main: bool) -> None:
    import torch

    from . import distributed as D
    from .data.windows import WindowDataset, split_dataset
    from .forecaster import Forecaster
    from .training import seed_everything

    if opts.get("threads"):
        torch.set_num_threads(int(opts["threads"]))
    cfg = _train_config(opts)
    model_kw = _parse_model_kw(opts["model_kw"])
    variable = opts["variable"]
    if opts["data"] is not None:
        path = Path(opts["data"])
        if not path.exists():
            raise click.ClickException(f"--data {path}: no such file or directory")
        data_spec: dict[str, Any] = {"kind": "file", "path": str(path.resolve())}
    else:
        data_spec = {"kind": "synthetic", "stations": int(opts["stations"]), "hours": int(opts["hours"]),
                     "seed": int(opts["seed"]), "start": "2019-01-01"}
    record = {
        "options": {k: (str(v) if isinstance(v, Path) else (list(v) if isinstance(v, tuple) else v))
                    for k, v in opts.items() if k in _TRAIN_OPTION_KEYS},
        "data": data_spec,
        "status": "training",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "argv": sys.argv,
    }
    if main:
        run.mkdir(parents=True, exist_ok=True)
        if not opts["resume"]:
            atomic_write_text(run / RUN_FILE, json.dumps(record, indent=2) + "\n")
        log.info("run directory: %s", run)
    t0 = time.perf_counter()
    ds = _load_data(data_spec, variable)
    if main:
        desc = ("synthetic" if data_spec["kind"] == "synthetic" else data_spec["path"])
        log.info("data: %s, %d stations x %d hours of %s (%.1f s)", desc, ds.sizes["station"], ds.sizes["time"],
                 variable, time.perf_counter() - t0)
    fc = Forecaster(opts["model"], variable=variable, seq_len=opts["seq_len"], label_len=opts["label_len"],
                    pred_len=opts["pred_len"], **model_kw)
    parts = split_dataset(ds, context=fc.seq_len)
    seed_everything(cfg.seed)  # the network's initialisation
    result = fc.fit(parts["train"], val=parts["val"], cfg=cfg, out_dir=run / TRAIN_DIR, resume=bool(opts["resume"]))
    if not main:
        D.cleanup()
        return
    fc.save(run / MODEL_DIR)
    log.info("saved the model to %s (%s after %d steps, %.0f s)", run / MODEL_DIR, result.stopped, result.steps,
             result.elapsed_s)

    # ---- final table: model vs persistence vs seasonal naive on the same validation windows
    ws = WindowDataset(parts["val"], variable, fc.seq_len, fc.label_len, fc.pred_len, max_gap=fc.max_gap)
    k = opts.get("eval_windows") or QUICK_TRAIN_DEFAULTS["eval_windows"]
    idx = _evenly_spaced(len(ws), k)
    table = compare_with_baselines(fc, parts["train"], ws, idx)
    metrics = {"windows": int(len(idx)), "windows_available": len(ws), "stations": int(ws.num_stations),
               "variable": variable, "units": ws.units, "pred_len": fc.pred_len, "methods": table,
               "train": {k2: v for k2, v in result.to_dict().items() if k2 != "step_losses"}}
    atomic_write_text(run / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    record = json.loads((run / RUN_FILE).read_text()) if (run / RUN_FILE).is_file() else record
    record.update(status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    atomic_write_text(run / RUN_FILE, json.dumps(record, indent=2) + "\n")
    _print_table(metrics, opts["model"])
    D.cleanup()


def compare_with_baselines(fc: Any, train_ds: Any, ws: Any, idx: Any) -> dict[str, dict[str, float]]:
    """MSE/MAE (physical units) of the forecaster, persistence and seasonal naive (24 h) on windows ``idx``.

    All methods are scored on the same entries: observed targets where every method has a forecast.
    """
    import numpy as np

    from .metrics import evaluate_arrays

    preds = {fc.model: fc.predict_windows(ws, idx)}
    try:
        from .baselines import Persistence, SeasonalNaive

        preds["persistence"] = Persistence().fit(train_ds, ws.variable).predict_windows(ws, idx)
        preds["seasonal naive (24 h)"] = SeasonalNaive("1D").fit(train_ds, ws.variable).predict_windows(ws, idx)
    except ImportError:  # the baselines package is optional for this table: compute the two inline
        b = ws.batch(idx)
        x = b["x"].numpy()
        preds["persistence"] = np.repeat(x[:, -1:], fc.pred_len, axis=1)
        src = fc.seq_len - 24 + (np.arange(fc.pred_len) % 24)
        preds["seasonal naive (24 h)"] = x[:, src]
    b = ws.batch(idx)
    true = b["y"][:, -fc.pred_len:].numpy()
    mask = b["y_mask"][:, -fc.pred_len:].numpy().astype(bool)
    for p in preds.values():
        mask &= np.isfinite(p)
    return {name: {k: float(v) for k, v in evaluate_arrays(p, true, mask).items() if k in ("mse", "mae")}
            for name, p in preds.items()}


def _print_table(metrics: dict[str, Any], model: str) -> None:
    units = metrics["units"]
    click.echo(f"\nvalidation: {metrics['windows']} windows (of {metrics['windows_available']}), "
               f"{metrics['stations']} stations, leads 1-{metrics['pred_len']} h, {metrics['variable']} [{units}]")
    width = max(len(n) for n in metrics["methods"]) + 2
    click.echo(f"{'method':<{width}}{'MSE':>10}{'MAE':>10}")
    for name, m in metrics["methods"].items():
        click.echo(f"{name:<{width}}{m['mse']:>10.4f}{m['mae']:>10.4f}")
    methods = metrics["methods"]
    mine = methods.get(model) or next(iter(methods.values()))
    beaten = [n for n in methods if n != model and mine["mse"] < methods[n]["mse"] and mine["mae"] < methods[n]["mae"]]
    others = [n for n in methods if n != model]
    if len(beaten) == len(others):
        click.echo(f"{model} beats {' and '.join(others)} (MSE and MAE)")
    else:
        click.echo(f"warning: {model} does not beat {', '.join(n for n in others if n not in beaten)} yet; "
                   "train longer (--max-time, --epochs) or resume (--resume)", err=True)


# -------------------------------------------------------------------------------------------------- predict


@click.command("predict")
@click.option("--var", "variable", default=None, help="Variable to forecast (must be the run's; default: the run's).")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None,
              help="Run directory (default: the latest complete run under runs/).")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="History file/directory (default: the run's data; synthetic runs regenerate it).")
@click.option("--end", default=None, help="Issue the forecast from this time (default: the end of the data).")
@click.option("--station", "stations", multiple=True, help="Only these station ids (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="forecast.nc or forecast.csv (default: <run>/forecast.nc).")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="PNG of a few stations.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
def predict(variable: str | None, run_dir: Path | None, data: Path | None, end: str | None,
            stations: tuple[str, ...], out: Path | None, plot: Path | None, device: str) -> None:
    """Forecast the next pred_len hours for every station from the last seq_len hours of the data."""
    with user_errors():
        run = Path(run_dir) if run_dir is not None else find_latest_run()
        if not _is_complete(run):
            raise click.ClickException(f"{run} is not a finished run (no {MODEL_DIR}/config.json); "
                                       f"runs under {run.parent}: {_list_runs(run.parent)}")
        from .forecaster import Forecaster

        fc = Forecaster.load(run / MODEL_DIR, map_location=device)
        if variable is not None and variable != fc.variable:
            if variable not in _VARIABLES:
                raise click.ClickException(f"unknown variable {variable!r}; available: {', '.join(_VARIABLES)}")
            raise click.ClickException(f"run {run} forecasts {fc.variable}, not {variable}; runs for {variable}: "
                                       f"{_list_runs(run.parent, variable) or 'none'} (train one with --var "
                                       f"{variable})")
        if out is None:
            out = run / "forecast.nc"
        out = Path(out)
        if out.suffix.lower() not in (".nc", ".csv"):
            raise click.ClickException(f"--out {out}: use a .nc (netCDF) or .csv file name")
        if plot is not None and Path(plot).suffix.lower() != ".png":
            raise click.ClickException(f"--plot {plot}: use a .png file name")
        if plot is not None:
            _require_matplotlib()
        history = _history(run, data, fc.variable, end)
        if stations:
            ids = [str(s) for s in history["station"].values]
            unknown = [s for s in stations if s not in set(ids)]
            if unknown:
                raise click.ClickException(f"unknown station(s) {', '.join(unknown)}; available ({len(ids)}): "
                                           f"{', '.join(ids[:12])}{', ...' if len(ids) > 12 else ''}")
        fcst = fc.predict(history)
        if stations:
            fcst = fcst.sel(station=list(stations))
        _write_forecast(fcst, out, fc.variable)
        click.echo(f"wrote {out}: {fcst.sizes['station']} stations x {fcst.sizes['lead_time']} h of "
                   f"{fc.variable} from {fcst.attrs['forecast_start']} (issued {fcst.attrs['issue_time']})")
        if plot is not None:
            _plot(history, fcst, Path(plot), fc.variable, list(stations) or None, fc.seq_len)
            click.echo(f"wrote {plot}")


def _list_runs(root: Path, variable: str | None = None) -> str:
    if not root.is_dir():
        return ""
    names = []
    for p in sorted(root.iterdir()):
        if not _is_complete(p):
            continue
        if variable is not None:
            try:
                if json.loads((p / MODEL_DIR / "config.json").read_text()).get("variable") != variable:
                    continue
            except (OSError, json.JSONDecodeError):
                continue
        names.append(str(p))
    return ", ".join(names)


def _history(run: Path, data: Path | None, variable: str, end: str | None) -> Any:
    import pandas as pd

    if data is not None:
        if not Path(data).exists():
            raise click.ClickException(f"--data {data}: no such file or directory")
        spec: dict[str, Any] = {"kind": "file", "path": str(data)}
    else:
        rec_path = run / RUN_FILE
        if not rec_path.is_file():
            raise click.ClickException(f"{run} has no {RUN_FILE} saying what data it was trained on; pass --data")
        spec = json.loads(rec_path.read_text())["data"]
        if spec["kind"] == "file" and not Path(spec["path"]).exists():
            raise click.ClickException(f"the run's data {spec['path']} no longer exists; pass --data")
    ds = _load_data(spec, variable)
    if end is not None:
        try:
            t_end = pd.Timestamp(end)
        except (ValueError, TypeError):
            raise click.ClickException(f"--end {end!r} is not a time (e.g. 2019-03-01T12:00)") from None
        times = pd.DatetimeIndex(ds["time"].values)
        if t_end < times[0] or t_end > times[-1]:
            raise click.ClickException(f"--end {t_end} is outside the data ({times[0]} .. {times[-1]})")
        ds = ds.sel(time=slice(None, t_end))
    return ds


def _write_forecast(fcst: Any, out: Path, variable: str) -> None:
    """netCDF or long CSV (station, lat, lon, issue_time, valid_time, lead_time_h, value, units), atomically."""
    import numpy as np
    import pandas as pd

    tmp, _ = _atomic_path(out)
    try:
        if out.suffix.lower() == ".nc":
            fcst.to_netcdf(tmp, engine="netcdf4", format="NETCDF4",
                           encoding={variable: {"dtype": "float32", "_FillValue": np.float32(np.nan)}})
        else:
            vals = np.asarray(fcst[variable].values)  # (lead, station)
            lead_h = pd.to_timedelta(fcst["lead_time"].values) / pd.Timedelta(hours=1)
            n_lead, n_st = vals.shape
            df = pd.DataFrame({
                "station": np.tile(np.asarray(fcst["station"].values, dtype=str), n_lead),
                "lat": np.tile(np.asarray(fcst["lat"].values), n_lead),
                "lon": np.tile(np.asarray(fcst["lon"].values), n_lead),
                "issue_time": fcst.attrs["issue_time"],
                "valid_time": np.repeat(pd.DatetimeIndex(fcst["time"].values).strftime("%Y-%m-%dT%H:%M"), n_st),
                "lead_time_h": np.repeat(np.asarray(lead_h, dtype=float), n_st),
                variable: vals.reshape(-1),
                "units": fcst[variable].attrs.get("units", ""),
            })
            df.to_csv(tmp, index=False, float_format="%.4f")
        _replace_atomically(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise click.ClickException("--plot needs matplotlib: pip install 'urlk-forecast[plot]'") from None


def _plot(history: Any, fcst: Any, path: Path, variable: str, stations: list[str] | None, seq_len: int) -> None:
    """History (last 3 x seq_len steps) and forecast of up to 4 stations, one panel each; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    ids = stations or [str(s) for s in fcst["station"].values[:: max(1, fcst.sizes["station"] // 4)][:4]]
    units = fcst[variable].attrs.get("units", "")
    fig, axes = plt.subplots(len(ids), 1, figsize=(9, 2.4 * len(ids)), sharex=True, squeeze=False)
    hist = history.isel(time=slice(-3 * seq_len, None))
    for ax, sid in zip(axes[:, 0], ids):
        h = hist[variable].sel(station=sid)
        f = fcst[variable].sel(station=sid)
        ax.plot(pd.DatetimeIndex(hist["time"].values), np.asarray(h.values), color="0.3", lw=1.2, label="history")
        ax.plot(pd.DatetimeIndex(fcst["time"].values), np.asarray(f.values), color="tab:red", lw=1.6,
                label="forecast")
        ax.axvline(pd.Timestamp(fcst.attrs["issue_time"]), color="0.6", ls="--", lw=0.8)
        name = str(fcst["name"].sel(station=sid).values) if "name" in fcst.coords else sid
        ax.set_title(f"{sid} {name if name != sid else ''}".strip(), fontsize=9, loc="left")
        ax.set_ylabel(units)
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{variable} forecast issued {fcst.attrs['issue_time']}", fontsize=10)
    fig.autofmt_xdate()
    fig.tight_layout()
    tmp, _ = _atomic_path(path)
    try:
        fig.savefig(tmp, format="png", dpi=110)
        _replace_atomically(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
