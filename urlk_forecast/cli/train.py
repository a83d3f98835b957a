"""``urlk-forecast train``: fit a Forecaster into a run directory, then score it against baselines.

Trains on the synthetic 3850-station default (or any ``--data`` file/directory a reader understands) under a regime
sized to the data (``--schedule auto``, :func:`urlk_forecast.regime.auto_regime`: its choices and reasons are printed
and recorded in ``run.json``) or the paper's (``--schedule paper``), then prints the model next to
persistence, seasonal naive and GBDT on the test windows ``benchmark`` scores (cli/train_report.py). ``--devices N``
re-launches itself under ``torchrun`` (DDP). The run layout is :class:`~urlk_forecast.rundir.RunDir`'s.

Every option, the network's ``--model-kw`` keys and the data are checked before the run directory is created, so a
mistake leaves nothing behind (and ``--resume``, which only considers runs with a checkpoint, never picks it up).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pandas as pd
import torch
import xarray as xr

from .. import distributed as D
from ..config import QUICK_TRAIN_DEFAULTS, ConfigError, TrainConfig
from ..data.target_windows import TargetWindows
from ..data.windows import WindowDataset, split_dataset
from ..forecaster import Forecaster, parse_model_name
from ..models.encoders import encoder_options
from ..models.forecast_net import ForecastNet
from ..regime import Regime
from ..rundir import RunDir, file_data, open_data, runs_root, synthetic_data
from ..utils.steps import parse_length
from .errors import command_logging, user_errors
from .lengths import LENGTH_HELP, Length, same_kind
from .outputs import step_label
from .reader_options import WIDE_FLAGS, default_variable, reader_kwargs, wide_csv_options
from .train_report import DEFAULT_EVAL_WINDOWS, final_table, print_report
from .units import parse_units, units_option

__all__ = ["train"]

_TRAIN_OPTION_KEYS = (
    "data", "variable", "model", "model_kw", "seq_len", "label_len", "pred_len", "epochs", "batch_size", "lr",
    "lr_decay", "patience", "steps_per_epoch", "device", "max_time", "max_steps", "amp", "checkpointing",
    "grad_clip", "seed", "stations", "hours", "val_windows", "eval_windows", "checkpoint_every", "schedule",
    "threads", "units", "time_column", "columns", "var_name", "quantiles", "inputs", "ema_decay", "calibrate",
)
# never forwarded to the torchrun children (they are launcher options, or re-derived)
_LAUNCH_ONLY = ("devices", "nnodes", "node_rank", "master_addr", "master_port", "rdzv_endpoint")
# ForecastNet arguments the Forecaster sets itself (not --model-kw keys)
_SET_BY_FORECASTER = {"self", "n_stations", "coords", "seq_len", "label_len", "pred_len", "encoder", "variant",
                      "encoder_kw", "quantiles", "n_inputs", "input_scale"}
# Python argument names in library messages -> this command's flags
_FLAGS = {"variable": "--var", "model": "--model", "seq_len": "--seq-len", "label_len": "--label-len",
          "pred_len": "--pred-len", "stations": "--stations", "hours": "--hours", "data": "--data", "units": "--units",
          "quantiles": "--quantiles", "inputs": "--inputs", **WIDE_FLAGS}

log = logging.getLogger("urlk_forecast.cli")


@dataclass
class _Plan:
    """What a training run is made of, all checked before anything is written."""

    schedule: str  # "auto" or "paper"
    given: dict[str, Any]  # the TrainConfig values this command line sets (checked); the schedule picks the rest
    forecaster: Forecaster
    data: dict[str, Any]
    options: dict[str, Any]


@click.command("train")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Station data file or directory (any supported format). Default: the synthetic set.")
@units_option
@wide_csv_options
@click.option("--var", "variable", default=None, metavar="VAR[,VAR2,...]",
              help="Variable to forecast: any data variable of --data (default: temperature; for a wide CSV its "
                   "variable, --var-name). Several, comma-separated (temperature,wind_speed): one model forecasts them "
                   "all, predict writes every one, the final table scores each (point forecasts, no --quantiles).")
@click.option("--inputs", default=None, metavar="VAR1,VAR2,...",
              help="Covariates: other data variables of --data whose past values the network reads with the target "
                   "(e.g. dew_point,pressure); GBDT in the final table gets them as lag features.")
@click.option("--model", default="unireplknet_a", show_default=True,
              help="unireplknet_<a|f|p|n|t|s|b|l|xl|h>, convnext[_v], resnet[_v] or corrformer[_v].")
@click.option("--model-kw", multiple=True, metavar="KEY=VALUE",
              help="Extra network argument (repeatable), e.g. --model-kw d_model=128 --model-kw dropout=0.1.")
@click.option("--seq-len", type=Length(min=2), default=48, show_default=True, help="Input length." + LENGTH_HELP)
@click.option("--label-len", type=Length(min=0), default=24, show_default=True,
              help="Decoder start-token length." + LENGTH_HELP)
@click.option("--pred-len", type=Length(min=1), default=24, show_default=True, help="Forecast length." + LENGTH_HELP)
@click.option("--quantiles", default=None, metavar="Q1,Q2,...",
              help="Forecast these quantile levels, e.g. 0.1,0.5,0.9 (sorted, in (0, 1), 0.5 among them: the median "
                   "is the point forecast), trained with the pinball loss; predict then writes every level.")
@click.option("--calibrate/--no-calibrate", default=True, show_default=True,
              help="With --quantiles: after training, calibrate the levels on the validation windows (per lead and "
                   "level, a factor on each quantile's distance from the median so each level holds its share of "
                   "the targets there); recorded in run.json and applied by predict, benchmark, backtest, export.")
@click.option("--schedule", type=click.Choice(["auto", "paper", "quick"]), default="auto", show_default=True,
              help="auto: sized to the data (batch from the stations per window, epochs that are full passes, warm-up "
                   "+ cosine LR over the steps that fit in --max-time, validation ~10 times, early stopping; 600 s on "
                   "CPU, 240 s for the synthetic default, no limit on GPU); quick: the same as auto; paper: lr 1e-4 "
                   "halved per epoch, 10 epochs, batch 32, patience 3, no time limit. Options below override either.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Maximum epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Global batch size (windows per optimiser step).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Initial learning rate (Adam).")
@click.option("--lr-decay", type=click.FloatRange(min=0, min_open=True), default=None,
              help="LR factor after each epoch (paper: 0.5).")
@click.option("--patience", type=click.IntRange(min=0), default=None,
              help="Early-stopping patience in validations (epochs for --schedule paper; 0 = off).")
@click.option("--steps-per-epoch", type=click.IntRange(min=1), default=None, help="Cap on optimiser steps per epoch.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--max-time", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds of training before a clean stop (auto: 600 on CPU, 240 for the synthetic default, none "
                   "on GPU).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Optimiser steps before a clean stop.")
@click.option("--amp", type=click.Choice(["none", "auto", "bf16", "fp16"]), default=None,
              help="Mixed precision: none, auto (bf16 on CPU; bf16 or fp16 on CUDA), bf16, fp16. Default: the "
                   "automatic schedule's choice (bf16 on a CPU with native bf16 when a step holds >= 256 node images, "
                   "e.g. the 3850-station default; else none); none for --schedule paper.")
@click.option("--checkpointing/--no-checkpointing", default=False, show_default=True,
              help="Gradient checkpointing (less memory, ~1.3x compute).")
@click.option("--grad-clip", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Clip the global gradient norm to this value.")
@click.option("--ema-decay", type=click.FloatRange(min=0, max=1, max_open=True), default=None,
              help="Average the weights with this EMA decay (validated and returned); 0 = off. Default: 0.995 with "
                   "the automatic schedule, off with --schedule paper.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out (default: the latest run with a checkpoint) from its checkpoint.")
@click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes per node for DDP (spawns torchrun; GPUs or CPU processes).")
@click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True, help="Nodes for multi-node DDP.")
@click.option("--node-rank", type=click.IntRange(min=0), default=None,
              help="This node's rank (multi-node, static rendezvous).")
@click.option("--master-addr", default=None, help="Rank-0 node address (multi-node).")
@click.option("--master-port", type=click.IntRange(1, 65535), default=None, help="Rank-0 port (multi-node).")
@click.option("--rdzv-endpoint", default=None, help="host:port of a c10d rendezvous (multi-node, elastic).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the data, init and data order.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run directory (default runs/<time>).")
@click.option("--stations", type=click.IntRange(min=1), default=QUICK_TRAIN_DEFAULTS["stations"], show_default=True,
              help="Synthetic stations (without --data).")
@click.option("--hours", type=click.IntRange(min=1), default=QUICK_TRAIN_DEFAULTS["hours"], show_default=True,
              help="Synthetic hours (without --data).")
@click.option("--val-windows", type=click.IntRange(min=1), default=None,
              help="Validation windows per epoch (evenly spaced).")
@click.option("--eval-windows", type=click.IntRange(min=0), default=DEFAULT_EVAL_WINDOWS, show_default=True,
              help="Test windows of the final model-vs-baselines table, evenly spaced as in `benchmark "
                   "--max-windows` (0 = all).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=None, help="Also checkpoint every N steps.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads per process.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.pass_context
def train(ctx: click.Context, **opts: Any) -> None:
    """Train a forecaster (default: synthetic 3850 stations, ~15 min on CPU) and compare it with baselines."""
    main = int(os.environ.get("RANK", "0")) == 0
    with command_logging(main), user_errors(_FLAGS):
        run = _resolve_run(opts)
        if run is not None and opts["resume"]:
            opts = _merge_resumed_options(ctx, opts, run)
        plan = _plan(opts)
        if opts["devices"] > 1 or opts["nnodes"] > 1:
            if D.launched_by_torchrun():
                raise click.ClickException("--devices is for the launching command; torchrun already started "
                                           "these processes")
            sys.exit(_launch_torchrun(ctx, opts, run or RunDir.unused(runs_root())))
        _train_here(plan, run, main)


# --------------------------------------------------------------------------------------------- the run directory
def _resolve_run(opts: dict[str, Any]) -> RunDir | None:
    """The run to train into (not created here): ``--out`` or the run to resume; None for a new run under runs/."""
    if opts["resume"]:
        if opts["out"] is None:
            try:
                return RunDir.latest_resumable(runs_root())
            except FileNotFoundError as e:
                raise click.ClickException(f"--resume: {e}; pass --out DIR") from None
        run = RunDir(opts["out"])
        if not run.is_run:
            raise click.ClickException(f"--resume: {run} is not a run directory (no run.json)")
        if not run.has_checkpoint:
            raise click.ClickException(f"--resume: {run} has no checkpoint ({run.checkpoint}) to resume from; "
                                       "train it again without --resume")
        return run
    if opts["out"] is not None:
        run = RunDir(opts["out"])
        # (torchrun's ranks and the other nodes of a multi-node job share the directory rank 0 starts)
        if run.is_run and not D.launched_by_torchrun() and opts["nnodes"] == 1:
            raise click.ClickException(f"--out {run} already holds a run; continue it with --resume or choose "
                                       "another --out")
        if run.path.exists() and not run.path.is_dir():
            raise click.ClickException(f"--out {run}: exists and is not a directory")
        return run
    return None


def _given(ctx: click.Context, name: str) -> bool:
    src = ctx.get_parameter_source(name)
    return src is not None and src.name in ("COMMANDLINE", "ENVIRONMENT")


def _merge_resumed_options(ctx: click.Context, opts: dict[str, Any], run: RunDir) -> dict[str, Any]:
    """On --resume the run's recorded options apply, except those given again on this command line."""
    saved = run.options
    merged = dict(opts)
    for k in _TRAIN_OPTION_KEYS:
        if k in saved and not _given(ctx, k):
            merged[k] = saved[k]
    if merged.get("data") is not None:
        merged["data"] = Path(merged["data"])
    merged["model_kw"] = tuple(merged.get("model_kw") or ())
    for k in ("seq_len", "label_len", "pred_len"):  # recorded as steps or as a duration's text
        merged[k] = parse_length(merged[k], k)
    return merged


# ------------------------------------------------------------------------------------------------ the checks
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


def _parse_quantiles(text: str | None) -> list[float] | None:
    """``--quantiles 0.1,0.5,0.9`` as numbers (the Forecaster checks the levels; its errors name the flag)."""
    if text is None:
        return None
    try:
        return [float(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers such as 0.1,0.5,0.9",
                                 param_hint="--quantiles") from None


def _parse_variable(text: str) -> str | list[str]:
    """``--var temperature`` as one name, ``--var temperature,wind_speed`` as the list of targets (the Forecaster
    checks them; the data check names the file's variables)."""
    if "," not in str(text):
        return str(text)
    names = [v.strip() for v in str(text).split(",") if v.strip()]
    if not names:
        raise click.BadParameter(f"{text!r} names no variable; give e.g. temperature,wind_speed", param_hint="--var")
    return names[0] if len(names) == 1 else names


def _parse_inputs(text: str | None) -> list[str] | None:
    """``--inputs dew_point,pressure`` as names (the Forecaster checks them; the data check names the file's)."""
    if text is None:
        return None
    names = [v.strip() for v in str(text).split(",") if v.strip()]
    if not names:
        raise click.BadParameter(f"{text!r} names no variable; give e.g. dew_point,pressure", param_hint="--inputs")
    return names


def accepted_model_kw(encoder: str) -> list[str]:
    """The ``--model-kw`` keys a model of ``encoder`` accepts: the network's own arguments, the encoder's options
    and the Forecaster's ``max_gap``."""
    net = set(inspect.signature(ForecastNet.__init__).parameters) - _SET_BY_FORECASTER
    return sorted(net | set(encoder_options(encoder)) | {"max_gap"})


def _check_model_kw(encoder: str, model_kw: dict[str, Any]) -> None:
    accepted = accepted_model_kw(encoder)
    unknown = [k for k in model_kw if k not in accepted]
    if unknown:
        raise click.ClickException(f"--model-kw: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                                   f"for a {encoder} model; accepted: {', '.join(accepted)}")


def _train_settings(opts: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig values this command line sets (the schedule picks the rest), checked."""
    given: dict[str, Any] = {k: opts[k] for k in ("epochs", "batch_size", "lr", "lr_decay", "patience",
                                                  "steps_per_epoch", "max_time", "max_steps", "grad_clip",
                                                  "val_windows", "checkpoint_every") if opts.get(k) is not None}
    given.update(seed=int(opts["seed"]), checkpoint_every=given.get("checkpoint_every", 10))
    if opts.get("ema_decay") is not None:  # 0 turns the average off
        given["ema_decay"] = float(opts["ema_decay"]) or None
    for k, unset in (("device", "auto"), ("amp", None), ("checkpointing", False), ("progress", None),
                     ("resume", False)):
        if opts.get(k) != unset:
            given[k] = opts[k]
    try:
        TrainConfig.paper(**given)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    return given


def _plan(opts: dict[str, Any]) -> _Plan:
    """Check every option (no data read yet) and return what the run is made of."""
    given = _train_settings(opts)
    if same_kind(opts["label_len"], opts["seq_len"]) and opts["label_len"] > opts["seq_len"]:
        raise click.ClickException(f"--label-len {opts['label_len']} must not exceed --seq-len {opts['seq_len']}")
    model_kw = _parse_model_kw(opts["model_kw"])
    encoder, _ = parse_model_name(opts["model"])
    _check_model_kw(encoder, model_kw)
    reader = reader_kwargs(opts.get("time_column"), opts.get("columns"), opts.get("var_name"))
    if reader and opts["data"] is None:
        raise click.UsageError("--time-column/--columns/--var-name describe a wide CSV --data file")
    opts["variable"] = default_variable(opts["variable"], opts["data"], reader)
    fc = Forecaster(opts["model"], variable=_parse_variable(opts["variable"]), seq_len=opts["seq_len"],
                    label_len=opts["label_len"], pred_len=opts["pred_len"],
                    quantiles=_parse_quantiles(opts.get("quantiles")), inputs=_parse_inputs(opts.get("inputs")),
                    **model_kw)
    units = parse_units(opts.get("units") or ())
    if units and opts["data"] is None:
        raise click.UsageError("--units describes the --data file; the synthetic set is in the schema units")
    if opts["data"] is not None:
        if not Path(opts["data"]).exists():
            raise click.ClickException(f"--data {opts['data']}: no such file or directory")
        data = file_data(opts["data"], units, reader)
    else:
        data = synthetic_data(opts["stations"], opts["hours"], opts["seed"])
    options = {k: (str(v) if isinstance(v, (Path, pd.Timedelta)) else (list(v) if isinstance(v, tuple) else v))
               for k, v in opts.items() if k in _TRAIN_OPTION_KEYS}
    schedule = "paper" if opts["schedule"] == "paper" else "auto"  # quick: the name auto had before
    return _Plan(schedule=schedule, given=given, forecaster=fc, data=data, options=options)


def _split(plan: _Plan) -> tuple[dict[str, xr.Dataset], WindowDataset | TargetWindows]:
    """Open and split the data; check that training and the final table both have windows. Returns the splits and
    the test windows."""
    fc = plan.forecaster
    t0 = time.perf_counter()
    # the target and its covariates: present, valid, with units (nothing is written yet); synthetic data generates them
    ds = open_data(plan.data, [*fc.targets, *fc.inputs])
    fc.resolve_lengths(ds)  # --seq-len 48h: steps of this data
    parts = split_dataset(ds, context=fc.seq_len)
    need = fc.seq_len + fc.pred_len
    for name in ("train", "test"):
        steps = parts[name].sizes["time"]
        if steps < need:
            raise click.ClickException(
                f"--seq-len {fc.seq_len} + --pred-len {fc.pred_len} = {need} steps do not fit in the {name} split "
                f"({steps} of the data's {ds.sizes['time']} steps); use shorter windows or more data")
    test_ws: WindowDataset | TargetWindows = (
        TargetWindows(parts["test"], fc.targets, fc.seq_len, fc.label_len, fc.pred_len, max_gap=fc.max_gap,
                      inputs=fc.inputs) if fc.multi else
        WindowDataset(parts["test"], fc.variable, fc.seq_len, fc.label_len, fc.pred_len, max_gap=fc.max_gap,
                      inputs=fc.inputs))
    if len(test_ws) == 0:
        raise click.ClickException(f"the test split ({parts['test'].sizes['time']} steps) has no complete window of "
                                   f"--seq-len {fc.seq_len} + --pred-len {fc.pred_len}; use shorter windows")
    desc = "synthetic" if plan.data["kind"] == "synthetic" else plan.data["path"]
    times = ds["time"].values
    step = times[1] - times[0] if len(times) > 1 else None
    log.info("data: %s, %d stations x %s of %s (%.1f s)", desc, ds.sizes["station"],
             step_label(ds.sizes["time"], step), ", ".join(fc.targets), time.perf_counter() - t0)
    return parts, test_ws


# -------------------------------------------------------------------------------------------------- training
def _train_here(plan: _Plan, run: RunDir | None, main: bool) -> None:
    """Train in this process (one of several under torchrun); only rank 0 (``main``) writes the run."""
    opts, fc = plan.options, plan.forecaster
    if opts.get("threads"):
        torch.set_num_threads(int(opts["threads"]))
    parts, test_ws = _split(plan)  # the last check: nothing has been written so far
    chosen = _auto_regime(plan, parts) if plan.schedule == "auto" else None
    regime = chosen.to_dict() if chosen is not None else _paper_regime(plan)
    if run is None:
        run = RunDir.create(runs_root())
    if main:
        if not plan.given.get("resume"):
            run.start(plan.options, plan.data, world_size=int(os.environ.get("WORLD_SIZE", "1")), argv=sys.argv,
                      regime=regime)
        log.info("run directory: %s", run)
        log.info("training regime (%s):\n  %s", regime["schedule"], "\n  ".join(regime["reasons"]))
    out_dir = str(run.train_dir)
    calibrate = bool(opts.get("calibrate", True))
    if chosen is not None:
        fc.fit(parts["train"], val=parts["val"], config=chosen, out_dir=out_dir, calibrate=calibrate)
    else:
        fc.fit(parts["train"], val=parts["val"], schedule="paper", **plan.given, out_dir=out_dir, calibrate=calibrate)
    if not main:
        D.cleanup()
        return
    fc.save(run.model_dir)
    outcome = {k: v for k, v in fc.train_info.get("result", {}).items() if k != "step_losses"}
    log.info("saved the model to %s (%s after %s steps, %.0f s)", run.model_dir, outcome.get("stopped"),
             outcome.get("steps"), float(outcome.get("elapsed_s") or 0.0))
    report = final_table(fc, parts["train"], test_ws, opts.get("eval_windows"), threads=opts.get("threads"),
                         progress=log.info)
    report["train"] = outcome
    run.write_metrics(report)
    calibration = fc.train_info.get("calibration")  # quantile models: the validation calibration, or why none
    if calibration is not None:
        _log_calibration(calibration)
    run.finish("done", regime={**regime, "plan": outcome.get("plan")},
               **({"calibration": calibration} if calibration is not None else {}))
    print_report(report, TrainConfig.from_dict(fc.train_info["train_config"]))
    D.cleanup()


def _log_calibration(cal: dict[str, Any]) -> None:
    """One line on the quantile calibration: the validation coverage before and after, or why there is none."""
    if "skipped" in cal:
        log.info("quantile calibration: none (%s)", cal["skipped"])
        return
    covers = [k for k in cal["after"] if k.startswith("cover")]
    log.info("quantile calibration on %d validation targets: %s; factors per level (mean over leads) %s",
             cal["targets"], ", ".join(f"{k} {cal['before'][k]:.3f} -> {cal['after'][k]:.3f}" for k in covers),
             ", ".join(f"q{lv} {v['mean']:.2f}" for lv, v in cal["factor_per_level"].items()))


def _auto_regime(plan: _Plan, parts: dict[str, xr.Dataset]) -> Regime:
    """The automatic regime for this data: what it chooses and why (printed, and recorded in ``run.json``)."""
    # on a CPU the synthetic default trains 240 s; with generation and the 256-window table ~10 minutes
    device = str(plan.given.get("device", "auto"))
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    budget = QUICK_TRAIN_DEFAULTS["max_time"] if plan.data["kind"] == "synthetic" and not on_gpu else "auto"
    try:
        return plan.forecaster.regime(parts["train"], parts["val"], **{"max_time": budget, **plan.given})
    except (ValueError, ConfigError) as e:
        raise click.ClickException(str(e)) from None


def _paper_regime(plan: _Plan) -> dict[str, Any]:
    """The record of ``--schedule paper``: the paper's settings with the options given."""
    p = TrainConfig.paper()
    return {"schedule": "paper", "settings": TrainConfig.paper(**plan.given).to_dict(), "given": sorted(plan.given),
            "reasons": [f"the paper's schedule: Adam, lr {p.lr:g} halved after every epoch, {p.epochs} epochs of batch "
                        f"{p.batch_size}, early stopping after {p.patience} epochs without improvement, no time limit",
                        "given: " + ", ".join(f"{k}={v!r}" for k, v in plan.given.items())]}


def _launch_torchrun(ctx: click.Context, opts: dict[str, Any], run: RunDir) -> int:
    """Re-run this command under torchrun with the same options (launcher options removed, --out fixed)."""
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
