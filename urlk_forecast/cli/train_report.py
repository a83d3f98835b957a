"""The end of ``urlk-forecast train``: the model against baselines on the test windows, and what to do next.

The trained model, persistence, seasonal naive and GBDT are scored by the one scorer
(:func:`urlk_forecast.scoring.score_methods`) on the same test windows ``benchmark`` scores: evenly spaced over the
test split (``benchmark --max-windows N`` gives the same ones). When the model does not beat every baseline, the
advice names what actually stopped training (early stopping, the time limit, the step limit or the epochs).

A model of several target variables is scored per variable: the baselines are fitted once per variable, the model's
forecast of that variable (:func:`urlk_forecast.targets.target_views`) is scored beside them on that variable's test
windows, and the table gets a ``variable`` column (one row per method and variable).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click
import pandas as pd
import xarray as xr

from ..baselines import GBDT, Persistence, SeasonalNaive
from ..config import TrainConfig
from ..data.target_windows import TargetWindows
from ..data.windows import WindowDataset
from ..forecaster import Forecaster
from ..method import Method
from ..scoring import ScoreTable, score_methods
from ..targets import score_targets, target_views
from ..utils import evenly_spaced
from .outputs import step_label

__all__ = ["DEFAULT_EVAL_WINDOWS", "GBDT_MAX_ROWS", "final_table", "print_report", "print_targets_report",
           "advice"]

#: Test windows of the end-of-training table: the issue's floor of 256 evenly spaced windows (all when fewer). The
#: model forecasts a 3850-station window in ~1.5 s on the 2-core CPU, so `benchmark`'s 512 would add ~13 minutes to
#: the quick default; `--eval-windows 512` (or 0 = all) gives exactly `benchmark`'s windows.
DEFAULT_EVAL_WINDOWS = 256
#: Training rows of the table's GBDT (its own subsampling option; the benchmark's default is 200 000).
GBDT_MAX_ROWS = 200_000

Progress = Callable[..., None]


def _baselines(train: xr.Dataset, fc: Forecaster, threads: int | None, say: Progress,
               variable: str | None = None) -> list[Method]:
    """Persistence, seasonal naive (a day of sub-daily steps, a week of daily steps) and GBDT (with the model's
    covariates as lag features) fitted on ``train``;
    one that cannot be built or fitted for this data (e.g. a season longer than the input) is left out with a
    warning. ``variable``: the one to forecast (default: the model's).
    """
    v = fc.variable if variable is None else variable
    lags = tuple(k for k in (*range(1, 25), 48) if k <= fc.seq_len)
    makers: list[Callable[[], Method]] = [
        lambda: Persistence(variable=v),
        lambda: SeasonalNaive(variable=v),
        lambda: GBDT(variable=v, seq_len=fc.seq_len, max_horizon=fc.pred_len, lags=lags, max_rows=GBDT_MAX_ROWS,
                     n_threads=threads, max_gap=fc.max_gap, inputs=fc.inputs,
                     input_lags=tuple(k for k in (1, 2, 3, 6, 12, 24) if k <= fc.seq_len)),
    ]
    out: list[Method] = []
    for make in makers:
        t0 = time.perf_counter()
        try:
            m = make().fit(train)
        except (ValueError, RuntimeError, ImportError) as e:
            click.echo(f"warning: baseline left out of the table: {e}", err=True)
            continue
        say("fitted %s in %.1f s", m.name, time.perf_counter() - t0)
        out.append(m)
    return out


def _chunk_windows(stations: int) -> int:
    # the network is fastest on about one 3850-station window at a time (~350 node images); small sets batch more
    return max(1, min(256, 4096 // max(1, stations)))


def final_table(fc: Forecaster, train: xr.Dataset, test_ws: WindowDataset | TargetWindows, windows: int | None, *,
                threads: int | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Score ``fc`` and the baselines on ``windows`` evenly spaced test windows (None/0 = all): the metrics dict
    written to ``metrics.json`` (split, windows, stations, variable, units, pred_len, step, methods, failures). A model
    of several targets (``test_ws`` their ``TargetWindows``): ``per_variable`` holds each variable's units, methods,
    points, failures and labels (:func:`_targets_table`)."""
    say: Progress = progress or (lambda *a: None)
    idx = evenly_spaced(len(test_ws), windows or None)
    say("final table: %d of %d test windows, %d stations", idx.size, len(test_ws), test_ws.num_stations)
    if isinstance(test_ws, TargetWindows):
        return _targets_table(fc, train, test_ws, idx, threads, say)
    methods: list[Method] = [fc, *_baselines(train, fc, threads, say)]
    table = score_methods(methods, test_ws, idx, batch_size=_chunk_windows(test_ws.num_stations), keep_going=True,
                          progress=lambda msg: say("%s", msg))
    if fc.name not in table.scores:
        raise RuntimeError(f"the trained model could not be scored: {table.failures.get(fc.name, 'unknown error')}")
    times = pd.DatetimeIndex(test_ws.times)
    step = pd.Timedelta(times[1] - times[0]) if len(times) > 1 else None
    fit_s = {m.name: m.fit_seconds for m in methods}
    return {
        "split": "test", "windows": int(idx.size), "windows_available": len(test_ws),
        "stations": int(test_ws.num_stations), "variable": fc.variable, "units": test_ws.units,
        "pred_len": fc.pred_len, "step": str(step) if step is not None else None, "model": fc.name,
        "methods": {n: {"mse": s.mse, "mae": s.mae, "coverage": s.coverage, "fit_s": fit_s.get(n)}
                    for n, s in table.scores.items()},
        "points": table.points, "failures": table.failures,
        "labels": {m.name: m.label(step) for m in methods if isinstance(m, SeasonalNaive) and step is not None},
    }


def _targets_table(fc: Forecaster, train: xr.Dataset, stack: TargetWindows, idx: Any, threads: int | None,
                   say: Progress) -> dict[str, Any]:
    """:func:`final_table` of a model of several targets: per variable, the baselines fitted to it and the model's
    forecast of it, scored by the one scorer on that variable's windows."""
    views = target_views(fc, stack)
    methods = {v: [views[v], *_baselines(train, fc, threads, say, v)] for v in stack.variables}
    tables: dict[str, ScoreTable] = score_targets(methods, stack, idx, batch_size=_chunk_windows(stack.num_stations),
                                                  keep_going=True, progress=lambda msg: say("%s", msg))
    times = pd.DatetimeIndex(stack.times)
    step = pd.Timedelta(times[1] - times[0]) if len(times) > 1 else None
    per_variable = {}
    for v, table in tables.items():
        if fc.name not in table.scores:
            raise RuntimeError(f"the trained model could not be scored on {v}: "
                               f"{table.failures.get(fc.name, 'unknown error')}")
        fit_s = {m.name: m.fit_seconds for m in methods[v]}
        per_variable[v] = {
            "units": stack.units[v], "points": table.points, "failures": table.failures,
            "methods": {n: {"mse": s.mse, "mae": s.mae, "coverage": s.coverage, "fit_s": fit_s.get(n)}
                        for n, s in table.scores.items()},
            "labels": {m.name: m.label(step) for m in methods[v] if isinstance(m, SeasonalNaive) and step is not None},
        }
    return {
        "split": "test", "windows": int(idx.size), "windows_available": len(stack),
        "stations": int(stack.num_stations), "variable": list(stack.variables), "units": dict(stack.units),
        "pred_len": fc.pred_len, "step": str(step) if step is not None else None, "model": fc.name,
        "per_variable": per_variable,
    }


def advice(stopped: str | None, cfg: TrainConfig) -> str:
    """What to try when the model does not beat the baselines, given what stopped training."""
    if stopped == "early_stopping":
        return (f"validation stopped improving (early stopping after {cfg.patience} epoch(s) without progress), so "
                "more of the same training will not help: try another --lr, --model or --model-kw, or more data")
    if stopped == "max_time":
        return (f"training hit its time limit (--max-time {cfg.max_time:g} s): train longer (--max-time) or continue "
                "this run with --resume --max-time SECONDS")
    if stopped == "max_steps":
        return (f"training hit its step limit (--max-steps {cfg.max_steps}): raise --max-steps, or continue this run "
                "with --resume --max-steps N")
    return (f"training ran all its epochs (--epochs {cfg.epochs}): raise --epochs, or continue this run with "
            "--resume --epochs N")


def print_report(metrics: dict[str, Any], cfg: TrainConfig) -> None:
    """The table (plain numbers) and either the line saying the model beats every baseline or the advice (several
    targets: :func:`print_targets_report`)."""
    if "per_variable" in metrics:
        print_targets_report(metrics, cfg)
        return
    step = pd.Timedelta(metrics["step"]) if metrics.get("step") else None
    click.echo(f"\ntest: {metrics['windows']} windows (of {metrics['windows_available']}, evenly spaced), "
               f"{metrics['stations']} stations, leads 1-{step_label(metrics['pred_len'], step)}, "
               f"{metrics['variable']} [{metrics['units']}]")
    methods = metrics["methods"]
    labels = {n: (metrics.get("labels") or {}).get(n, n) for n in methods}
    width = max(len(n) for n in labels.values()) + 2
    click.echo(f"{'method':<{width}}{'MSE':>10}{'MAE':>10}")
    for name, m in methods.items():
        click.echo(f"{labels[name]:<{width}}{float(m['mse']):>10.4f}{float(m['mae']):>10.4f}")
    model = metrics["model"]
    mine = methods[model]
    others = [n for n in methods if n != model]
    behind = [n for n in others if not (mine["mse"] < methods[n]["mse"] and mine["mae"] < methods[n]["mae"])]
    if not behind:
        click.echo(f"{model} beats {', '.join(others)} (MSE and MAE)")
        return
    stopped = (metrics.get("train") or {}).get("stopped")
    click.echo(f"warning: {model} does not beat {', '.join(behind)} yet; {advice(stopped, cfg)}", err=True)


def print_targets_report(metrics: dict[str, Any], cfg: TrainConfig) -> None:
    """:func:`print_report` of a model of several targets: one row per method and variable (a ``variable`` column
    with the units), then per variable the line saying the model beats every baseline, or the advice."""
    step = pd.Timedelta(metrics["step"]) if metrics.get("step") else None
    per = metrics["per_variable"]
    names = {v: f"{v} [{p['units']}]" for v, p in per.items()}
    click.echo(f"\ntest: {metrics['windows']} windows (of {metrics['windows_available']}, evenly spaced), "
               f"{metrics['stations']} stations, leads 1-{step_label(metrics['pred_len'], step)}, "
               f"{len(per)} variables: {', '.join(names.values())}")
    labels = {v: {n: (p.get("labels") or {}).get(n, n) for n in p["methods"]} for v, p in per.items()}
    width = max(len(n) for lab in labels.values() for n in lab.values()) + 2
    vwidth = max(len(n) for n in names.values()) + 2
    click.echo(f"{'method':<{width}}{'variable':<{vwidth}}{'MSE':>10}{'MAE':>10}")
    for v, p in per.items():
        for name, m in p["methods"].items():
            click.echo(f"{labels[v][name]:<{width}}{names[v]:<{vwidth}}{float(m['mse']):>10.4f}"
                       f"{float(m['mae']):>10.4f}")
    model = metrics["model"]
    stopped = (metrics.get("train") or {}).get("stopped")
    for v, p in per.items():
        mine, rows = p["methods"][model], p["methods"]
        others = [n for n in rows if n != model]
        behind = [n for n in others if not (mine["mse"] < rows[n]["mse"] and mine["mae"] < rows[n]["mae"])]
        if not behind:
            click.echo(f"{v}: {model} beats {', '.join(others)} (MSE and MAE)")
        else:
            click.echo(f"warning: {v}: {model} does not beat {', '.join(behind)} yet; {advice(stopped, cfg)}", err=True)
