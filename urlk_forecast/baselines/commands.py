"""``urlk-forecast benchmark``: the paper's Table 12 comparison from the command line.

Runs every baseline (and a trained model with ``--run``) on the same test windows, prints the table (method, type,
parameters, MSE, MAE, fit and predict seconds, coverage) and writes it as Markdown and CSV (atomically) to ``--out``.
Errors a user can fix print one line and exit non-zero without a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..cli import user_errors

__all__ = ["benchmark"]


def _resolve_run(run: Path, data: Path | None) -> tuple[Path, Any]:
    """The Forecaster directory of ``--run`` (a run directory or a saved model) and the data it names, if any."""
    if (run / "config.json").is_file():
        return run, None
    if (run / "model" / "config.json").is_file():
        if data is not None:
            return run / "model", None
        rec = run / "run.json"
        if not rec.is_file():
            raise click.ClickException(f"--run {run}: no run.json saying what data the model used; pass --data")
        spec = json.loads(rec.read_text(encoding="utf-8")).get("data", {})
        if spec.get("kind") == "file":
            path = Path(spec["path"])
            if not path.exists():
                raise click.ClickException(f"the run's data {path} no longer exists; pass --data")
            return run / "model", path
        if spec.get("kind") == "synthetic":
            return run / "model", spec
        raise click.ClickException(f"--run {run}: run.json has an unknown data spec {spec!r}; pass --data")
    raise click.ClickException(f"--run {run}: not a training run or saved model (no config.json or model/config.json)")


@click.command("benchmark")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Station data (any supported file/directory). Default: the SYNTHETIC 3850-station set "
                   "(or the data of --run).")
@click.option("--var", "variable", type=click.Choice(["temperature", "wind_speed"]), default="temperature",
              show_default=True, help="Variable to forecast (a --run model fixes it).")
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
@click.option("--seq-len", type=click.IntRange(min=1), default=48, show_default=True,
              help="Input window length (steps; a --run model fixes it).")
@click.option("--label-len", type=click.IntRange(min=0), default=24, show_default=True,
              help="Decoder start-token length (steps).")
@click.option("--pred-len", type=click.IntRange(min=1), default=24, show_default=True,
              help="Forecast horizon (steps).")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Holt-Winters fit processes (default: cores).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="GBDT OpenMP threads (default: all cores; 1 is faster on a busy machine).")
@click.option("--prophet-stations", type=click.IntRange(min=1), default=8, show_default=True,
              help="Stations for the real Prophet side-by-side (seconds per station).")
@click.option("--seed", type=int, default=0, show_default=True, help="Synthetic data / station subset seed.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmark_results"), show_default=True,
              help="Directory for benchmark_<var>.md / .csv.")
@click.option("--quiet", is_flag=True, help="Only print the table.")
def benchmark(data: Path | None, variable: str, baselines: str | None, run_dir: Path | None, gfs: str | None,
              stations: int | None, hours: int | None, max_windows: int, seq_len: int, label_len: int, pred_len: int,
              jobs: int | None, threads: int | None, prophet_stations: int, seed: int, out: Path,
              quiet: bool) -> None:
    """Compare the baselines of the paper's Table 12 (and a trained model) on the same test windows."""
    with user_errors():
        from .table import run_benchmark

        t0 = time.perf_counter()

        def progress(msg: str) -> None:
            if not quiet:
                click.echo(f"[{time.perf_counter() - t0:7.1f}s] {msg}", err=True)

        if hours is not None and (data is not None or run_dir is not None):
            raise click.UsageError("--hours applies to the synthetic default only (not with --data or --run)")
        if data is not None and not Path(data).exists():
            raise click.ClickException(f"--data {data}: no such file or directory")
        if gfs is not None and gfs != "synthetic" and not Path(gfs).exists():
            raise click.ClickException(f"--gfs {gfs}: no such file")
        names = None
        if baselines is not None:
            from . import BASELINES

            names = [b.strip().lower().replace("-", "_") for b in baselines.split(",") if b.strip()]
            unknown = [b for b in names if b not in BASELINES]
            if unknown:
                raise click.ClickException(f"unknown baseline(s) {', '.join(unknown)}; choose from "
                                           f"{', '.join(BASELINES)}")
        source: Any = data
        model_dir = None
        if run_dir is not None:
            model_dir, spec = _resolve_run(Path(run_dir), data)
            if isinstance(spec, dict):
                from urlk_forecast.data.synthetic import synthetic_global

                progress(f"regenerating the run's synthetic data ({spec['stations']} stations)")
                source = synthetic_global(stations=int(spec["stations"]), start=spec.get("start", "2019-01-01"),
                                          hours=int(spec["hours"]), seed=int(spec["seed"]))
            elif spec is not None:
                source = spec
        result = run_benchmark(
            data=source, variable=variable, baselines=names, run=model_dir, gfs=gfs, stations=stations, hours=hours,
            max_windows=max_windows, seq_len=seq_len, label_len=label_len, pred_len=pred_len, n_jobs=jobs,
            threads=threads, prophet_stations=prophet_stations, seed=seed, progress=progress,
        )
        click.echo(result.to_markdown())
        paths = result.write(out)
        click.echo(f"wrote {', '.join(str(p) for p in paths)} ({time.perf_counter() - t0:.0f} s in all)", err=True)
        if result.failures:
            click.echo(f"error: {len(result.failures)} method(s) failed: {', '.join(result.failures)}", err=True)
            sys.exit(1)
