"""``urlk-forecast backtest``: a rolling-origin backtest of baselines (and a trained run) on a data file.

Every method forecasts from the last ``--n-windows`` origins, ``--step`` steps apart, knowing only the data up to
each origin (:func:`urlk_forecast.backtest.cross_validation`). Writes the tidy table (origin, station, lead,
target_time, target, one column per method) to ``--out`` as CSV, all or nothing, and prints MSE/MAE per lead and per
origin. With quantiles (``--quantiles``, or a ``--run`` trained with quantiles, whose levels the baselines then
follow) the baselines that forecast quantiles give them too, the table gets ``<method>_q<level>`` columns and the
summaries the pinball loss, CRPS and interval coverage. ``--out`` and the arguments are checked before anything is
fitted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import xarray as xr

from .. import baselines as baselines_pkg
from ..backtest import cross_validation, warm_refits
from ..baselines import BASELINES, get_baseline
from ..data.readers import open_dataset
from ..forecaster import Forecaster
from ..method import Method
from ..rundir import find_model
from ..utils import normalize_name
from .benchmark import parse_levels
from .errors import user_errors
from .outputs import check_file_destination, write_together
from .units import parse_units, units_option

__all__ = ["backtest"]

# Python argument names in library messages -> this command's flags
_FLAGS = {"n_windows": "--n-windows", "step": "--step", "refit": "--refit", "refit_max_time": "--refit-max-time",
          "seq_len": "--seq-len", "label_len": "--label-len", "pred_len": "--pred-len", "variable": "--var",
          "data": "--data", "methods": "--baselines", "units": "--units", "n_jobs": "--jobs", "threads": "--threads",
          "quantiles": "--quantiles"}
DEFAULT_BASELINES = "persistence,seasonal_naive,gbdt"


def _baseline_names(text: str, has_model: bool) -> list[str]:
    names = [normalize_name(b) for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise click.ClickException(f"--baselines: unknown baseline(s) {', '.join(unknown)}; choose from "
                                   f"{', '.join(BASELINES)}")
    if not names and not has_model:
        raise click.ClickException("--baselines: give at least one baseline (or a trained model with --run)")
    return names


def _baseline(name: str, variable: str, seq_len: int, pred_len: int, threads: int | None,
              jobs: int | None, levels: list[float] | None = None) -> Method:
    """A baseline sized to the backtest's windows (GBDT's lags and horizon; Holt-Winters' processes; the naive
    methods' error leads), forecasting ``levels`` when it forecasts quantiles."""
    kw: dict[str, Any] = {}
    if name == "gbdt":
        kw = {"seq_len": seq_len, "max_horizon": pred_len, "n_threads": threads,
              "lags": tuple(v for v in (*range(1, 25), 48) if v <= seq_len)}
    elif name == "holt_winters":
        kw = {"n_jobs": jobs}
    elif name in ("persistence", "seasonal_naive") and levels:
        kw = {"max_horizon": pred_len}
    if levels and getattr(getattr(baselines_pkg, BASELINES[name][0]), "forecasts_quantiles", False):
        kw["quantiles"] = levels
    return get_baseline(name, variable=variable, **kw)


def _load_model(run_dir: Path) -> Forecaster:
    try:
        model_dir, _ = find_model(run_dir)
    except FileNotFoundError as e:
        raise click.ClickException(f"--run {e}") from None
    return Forecaster.load(model_dir)


def _model_stations(ds: xr.Dataset, model: Forecaster) -> xr.Dataset:
    """``ds`` restricted to the model's stations (all of them must be there)."""
    have = [str(s) for s in ds["station"].values]
    ids = [str(s) for s in model.station_ids]
    missing = [s for s in ids if s not in set(have)]
    if missing:
        raise click.ClickException(f"--data lacks {len(missing)} of the --run model's stations (e.g. "
                                   f"{', '.join(missing[:5])}); backtest it on data with its stations")
    pos = {s: i for i, s in enumerate(have)}
    return ds.isel(station=[pos[s] for s in ids])


@click.command("backtest")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Station data (any supported file/directory).")
@click.option("--var", "variable", default=None, help="Variable to forecast (default temperature; a --run model "
              "fixes it).")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None,
              help="A training run directory (or saved model) to backtest beside the baselines; it must have been "
                   "trained on data before the first origin.")
@click.option("--baselines", default=DEFAULT_BASELINES, show_default=True,
              help="Comma-separated baselines ('' for none with --run).")
@click.option("--n-windows", type=click.IntRange(min=1), required=True, help="Number of forecast origins.")
@click.option("--step", type=click.IntRange(min=1), required=True, help="Steps between consecutive origins.")
@click.option("--refit", type=click.IntRange(min=0), default=0, show_default=True,
              help="Refit every N origins on the data up to that origin (0: fit once, before the first origin).")
@click.option("--refit-max-time", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Seconds of training per refit of the --run model (it continues from its current weights).")
@click.option("--seq-len", type=click.IntRange(min=1), default=48, show_default=True,
              help="Input window length (steps; a --run model fixes it).")
@click.option("--label-len", type=click.IntRange(min=0), default=24, show_default=True,
              help="Decoder start-token length (steps; a --run model fixes it).")
@click.option("--pred-len", type=click.IntRange(min=1), default=24, show_default=True,
              help="Forecast horizon (steps; a --run model fixes it).")
@click.option("--quantiles", default=None, metavar="Q1,Q2,...",
              help="Quantile levels for the baselines that forecast them (persistence, seasonal naive, Holt-Winters, "
                   "GBDT), e.g. 0.1,0.5,0.9; the summaries add pinball loss, CRPS and interval coverage (default: "
                   "the levels of a --run trained with quantiles).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="GBDT OpenMP threads (default: all).")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Holt-Winters fit processes (default: cores).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The tidy table (CSV).")
@units_option
@click.option("--quiet", is_flag=True, help="Only print the summary.")
def backtest(data: Path, variable: str | None, run_dir: Path | None, baselines: str, n_windows: int, step: int,
             refit: int, refit_max_time: float, seq_len: int, label_len: int, pred_len: int, quantiles: str | None,
             threads: int | None, jobs: int | None, out: Path, units: tuple[str, ...], quiet: bool) -> None:
    """Rolling-origin backtest: baselines (and a run) forecast from many origins, each from its past."""
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        if not quiet:
            click.echo(f"[{time.perf_counter() - t0:7.1f}s] {msg}", err=True)

    with user_errors(_FLAGS):
        unit_map = parse_units(units)
        names = _baseline_names(baselines, run_dir is not None)
        levels = parse_levels(quantiles)
        check_file_destination(Path(out), "--out", (".csv",), "CSV (.csv)")
        if not Path(data).exists():
            raise click.ClickException(f"--data {data}: no such file or directory")
        model = _load_model(run_dir) if run_dir is not None else None
        if model is not None:
            if variable is not None and variable != model.variable:
                raise click.ClickException(f"--var {variable}: the --run model forecasts {model.variable}")
            variable, seq_len, label_len, pred_len = model.variable, model.seq_len, model.label_len, model.pred_len
        variable = variable or "temperature"
        ds = open_dataset(data, **({"units": unit_map} if unit_map else {}))
        if model is not None:
            ds = _model_stations(ds, model)
        if levels is None and model is not None and model.quantiles is not None:
            levels = list(model.quantiles)  # the baselines forecast the model's levels: compared at equal levels
        methods = [_baseline(n, variable, seq_len, pred_len, threads, jobs, levels) for n in names]
        methods = ([model] if model is not None else []) + methods
        result = cross_validation(
            methods, ds, n_windows=n_windows, step=step, refit=refit, seq_len=seq_len, label_len=label_len,
            pred_len=pred_len, max_gap=model.max_gap if model is not None else 3,
            fitted=[m is model for m in methods], progress=progress,
            fit_fn=warm_refits(model, refit_max_time) if model is not None else None)
        with write_together(Path(out)) as (tmp,):
            result.table.to_csv(tmp, index=False)
    click.echo(result.summary_text())
    click.echo(f"wrote {out} ({len(result.table)} rows: {result.info['n_windows']} origins x "
               f"{result.info['stations']} stations x {result.info['pred_len']} leads) in "
               f"{time.perf_counter() - t0:.0f} s", err=True)
