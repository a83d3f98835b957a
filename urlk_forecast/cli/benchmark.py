"""``urlk-forecast benchmark``: the paper's Table 12 comparison from the command line.

Runs every baseline (and a trained model with ``--run``) on the same test windows, writes the table (method, type,
parameters, MSE, MAE, fit and predict seconds, coverage) as Markdown and CSV to ``--out`` and prints it. With
``--quantiles 0.1,0.5,0.9`` the baselines that can forecast those levels and the table adds CRPS, pinball loss and
interval coverage columns (a ``--run`` trained with quantiles is scored at its own levels, and sets the default).
``--out`` is checked before anything is computed; errors a user can fix print one line and exit non-zero without a
traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from ..baselines import BASELINES
from ..baselines.table import run_benchmark
from ..rundir import data_reader, data_units, find_model
from ..utils import normalize_name
from ..utils.quantiles import quantile_levels
from .errors import user_errors
from .lengths import LENGTH_HELP, Length
from .outputs import check_dir_destination
from .reader_options import WIDE_FLAGS, default_variable, reader_kwargs, wide_csv_options
from .units import parse_units, units_option

__all__ = ["benchmark"]

# Python argument names in library messages -> this command's flags
_FLAGS = {"data": "--data", "variable": "--var", "baselines": "--baselines", "run": "--run", "gfs": "--gfs",
          "stations": "--stations", "hours": "--hours", "max_windows": "--max-windows", "seq_len": "--seq-len",
          "label_len": "--label-len", "pred_len": "--pred-len", "n_jobs": "--jobs", "threads": "--threads",
          "prophet_stations": "--prophet-stations", "units": "--units", "season": "--season",
          "quantiles": "--quantiles", **WIDE_FLAGS}


def _check_arguments(data: Path | None, run_dir: Path | None, gfs: str | None, hours: int | None,
                     baselines: str | None, units: dict[str, str]) -> list[str] | None:
    """Everything that can be checked without loading data; returns the normalised baseline names."""
    if hours is not None and (data is not None or run_dir is not None):
        raise click.UsageError("--hours applies to the synthetic default only (not with --data or --run)")
    if units and data is None:
        raise click.UsageError("--units describes the --data file; give --data (a --run's own data is re-opened "
                               "with the units recorded when it was trained)")
    if data is not None and not Path(data).exists():
        raise click.ClickException(f"--data {data}: no such file or directory")
    if gfs is not None and gfs != "synthetic" and not Path(gfs).exists():
        raise click.ClickException(f"--gfs {gfs}: no such file")
    if baselines is None:
        return None
    names = [normalize_name(b) for b in baselines.split(",") if b.strip()]
    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise click.ClickException(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    return names


def _model_and_data(run_dir: Path | None, data: Path | None, units: dict[str, str], reader: dict[str, Any],
                    progress: Any) -> tuple[Path | None, Any, dict[str, str] | None, dict[str, Any]]:
    """The model directory of ``--run``, the data to benchmark on (``--data``, else the run's own data), the
    source units to read it with (``--units``, else those the run recorded) and the other reader arguments (the
    wide-CSV options, else those the run recorded)."""
    if run_dir is None:
        return None, data, units or None, reader
    try:
        model_dir, run = find_model(run_dir)
    except FileNotFoundError as e:
        raise click.ClickException(f"--run {e}") from None
    if data is not None or run is None:
        return model_dir, data, units or None, reader
    try:
        spec = run.data_spec
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(f"--run {run_dir}: {e}; pass --data") from None
    if spec.get("kind") == "file":
        path = Path(spec["path"])
        if not path.exists():
            raise click.ClickException(f"the run's data {path} no longer exists; pass --data")
        return model_dir, path, data_units(spec), data_reader(spec)
    progress(f"regenerating the run's synthetic data ({spec.get('stations')} stations)")
    return model_dir, run.open_data(), None, {}


def parse_levels(text: str | None) -> list[float] | None:
    """``--quantiles 0.1,0.5,0.9`` as checked levels, before any data is read (the check's errors name the flag)."""
    if text is None:
        return None
    try:
        levels = [float(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers such as 0.1,0.5,0.9",
                                 param_hint="--quantiles") from None
    return list(quantile_levels(levels, require_median=False) or ())


@click.command("benchmark")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Station data (any supported file/directory). Default: the SYNTHETIC 3850-station set "
                   "(or the data of --run).")
@click.option("--var", "variable", default=None,
              help="Variable to forecast: any data variable of --data (default: temperature; for a wide CSV its "
                   "variable, --var-name; a --run model fixes it).")
@click.option("--baselines", default=None,
              help="Comma-separated baselines (default: persistence,seasonal_naive,climatology,holt_winters,"
                   "prophet_like,gbdt; + prophet if installed; + gfs with --gfs). Also: prophet_like_adjusted.")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None,
              help="A training run directory (or saved model) to add as the neural row.")
@click.option("--gfs", default=None,
              help="Gridded NWP forecast file (netCDF, or GRIB2 with the 'grib' extra) for the GFS row; "
                   "'synthetic' builds a demo grid from the truth + error (clearly labelled, not a model).")
@click.option("--stations", type=click.IntRange(min=1), default=None,
              help="Use N stations (synthetic default: 3850; real data: a seeded random subset).")
@click.option("--hours", type=click.IntRange(min=100), default=None,
              help="Length of the synthetic default in hours (default 17544 = 2 years).")
@click.option("--max-windows", type=click.IntRange(min=0), default=512, show_default=True,
              help="Score N test windows evenly spaced over the test split (0 = all).")
@click.option("--seq-len", type=Length(min=1), default=48, show_default=True,
              help="Input window length (a --run model fixes it)." + LENGTH_HELP)
@click.option("--label-len", type=Length(min=0), default=24, show_default=True,
              help="Decoder start-token length." + LENGTH_HELP)
@click.option("--pred-len", type=Length(min=1), default=24, show_default=True,
              help="Forecast horizon." + LENGTH_HELP)
@click.option("--season", type=Length(min=1), default=None,
              help="Season of the seasonal naive and Holt-Winters (default: one day of sub-daily steps, a week of "
                   "daily steps)." + LENGTH_HELP)
@click.option("--quantiles", default=None, metavar="Q1,Q2,...",
              help="Quantile levels, e.g. 0.1,0.5,0.9: persistence, seasonal naive, Holt-Winters and GBDT forecast "
                   "them, and the table adds CRPS, pinball loss and interval coverage (default: the levels of a "
                   "--run trained with quantiles).")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Holt-Winters fit processes (default: cores).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="GBDT OpenMP threads (default: all cores; 1 is faster on a busy machine).")
@click.option("--prophet-stations", type=click.IntRange(min=1), default=8, show_default=True,
              help="Stations for the real Prophet side-by-side (seconds per station).")
@click.option("--seed", type=int, default=0, show_default=True, help="Synthetic data / station subset seed.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmark_results"), show_default=True,
              help="Directory for benchmark_<var>.md / .csv.")
@units_option
@wide_csv_options
@click.option("--quiet", is_flag=True, help="Only print the table.")
def benchmark(data: Path | None, variable: str | None, baselines: str | None, run_dir: Path | None, gfs: str | None,
              stations: int | None, hours: int | None, max_windows: int, seq_len: Any, label_len: Any, pred_len: Any,
              season: Any, quantiles: str | None, jobs: int | None, threads: int | None, prophet_stations: int,
              seed: int, out: Path,
              units: tuple[str, ...], time_column: str | None, columns: str | None, var_name: str | None,
              quiet: bool) -> None:
    """Compare the baselines of the paper's Table 12 (and a trained model) on the same test windows."""
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        if not quiet:
            click.echo(f"[{time.perf_counter() - t0:7.1f}s] {msg}", err=True)

    with user_errors(_FLAGS):
        unit_map = parse_units(units)
        reader = reader_kwargs(time_column, columns, var_name)
        if reader and data is None:
            raise click.UsageError("--time-column/--columns/--var-name describe a wide CSV --data file")
        names = _check_arguments(data, run_dir, gfs, hours, baselines, unit_map)
        if variable is not None and "," in variable and run_dir is None:
            raise click.UsageError(f"--var {variable}: several variables are benchmarked beside a model trained on "
                                   "them (--run RUN, which scores each one); without --run give one variable")
        levels = parse_levels(quantiles)
        check_dir_destination(Path(out), "--out")
        model_dir, source, source_units, source_reader = _model_and_data(run_dir, data, unit_map, reader, progress)
        result = run_benchmark(
            data=source, variable=default_variable(variable, data, reader),
            baselines=names, run=model_dir, gfs=gfs, stations=stations, hours=hours,
            max_windows=max_windows, seq_len=seq_len, label_len=label_len, pred_len=pred_len, n_jobs=jobs,
            threads=threads, prophet_stations=prophet_stations, seed=seed, progress=progress, units=source_units,
            reader=source_reader or None, season=season, quantiles=levels,
        )
        paths = result.write(out)
    click.echo(result.to_markdown())
    click.echo(f"wrote {', '.join(str(p) for p in paths)} ({time.perf_counter() - t0:.0f} s in all)", err=True)
    if result.failures:
        click.echo(f"error: {len(result.failures)} method(s) failed: {', '.join(result.failures)}", err=True)
        sys.exit(1)
