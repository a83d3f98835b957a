"""``urlk-forecast predict``: forecast the next ``pred_len`` steps of every station from a trained run.

Loads a run (default: the latest complete one under ``runs/``), takes the last ``seq_len`` steps of the data (default:
the run's own data, the synthetic set regenerated from its seed) and writes the forecast to netCDF or CSV, optionally
with a PNG of a few stations. A quantile run writes every level: a ``quantile`` dimension in netCDF, one column
per level in CSV (``temperature_q0.1``; the plain column is the median) and the central interval bands in the PNG.
A run of several targets (``train --var temperature,wind_speed``) writes every target variable (netCDF: one data
variable each, with its units; CSV: one value column and one ``<variable>_units`` column each).
Every destination is checked first and the files are written together (all or none).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd
import xarray as xr

from ..data.readers import open_dataset
from ..data.schema import require_variable, validate
from ..forecaster import Forecaster
from ..metrics import central_intervals
from ..rundir import RunDir, runs_root
from ..utils.quantiles import quantile_label
from ..utils.steps import lead_time_unit
from .errors import user_errors
from .outputs import check_file_destination, step_label, write_together
from .reader_options import WIDE_FLAGS, reader_kwargs, wide_csv_options
from .units import parse_units, units_option

__all__ = ["predict"]

_FLAGS = {"variable": "--var", "data": "--data", "end": "--end", "stations": "--station", "units": "--units",
          **WIDE_FLAGS}


@click.command("predict")
@click.option("--var", "variable", default=None,
              help="Variable to forecast (must be the run's, e.g. temperature,wind_speed for a run of several; "
                   "default: the run's).")
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
@units_option
@wide_csv_options
def predict(variable: str | None, run_dir: Path | None, data: Path | None, end: str | None,
            stations: tuple[str, ...], out: Path | None, plot: Path | None, device: str,
            units: tuple[str, ...], time_column: str | None, columns: str | None, var_name: str | None) -> None:
    """Forecast the next pred_len steps for every station from the last seq_len steps of the data."""
    unit_map = parse_units(units)
    reader = reader_kwargs(time_column, columns, var_name)
    if (unit_map or reader) and data is None:
        raise click.UsageError("--units and the wide-CSV options describe the --data file; give --data (the run's "
                               "own data is re-opened the way it was read when it was trained)")
    with user_errors(_FLAGS):
        run = _find_run(run_dir)
        out = Path(out) if out is not None else run.forecast_file
        check_file_destination(out, "--out", (".nc", ".csv"), ".nc (netCDF) or .csv")
        if plot is not None:
            plot = Path(plot)

            check_file_destination(plot, "--plot", (".png",), ".png")
            _require_matplotlib()
        fc = run.load_model(map_location=device)
        _check_variable(run, fc, variable)
        if plot is not None and fc.multi:
            raise click.ClickException(f"--plot draws one variable; run {run} forecasts {', '.join(fc.targets)} "
                                       "(write the forecast and plot each variable from it)")
        history = _history(run, data, fc.targets, end, unit_map, reader, inputs=fc.inputs)
        _check_stations(history, stations)
        fcst = fc.predict(history)
        if stations:
            fcst = fcst.sel(station=list(stations))
        with write_together(out, plot) as (tmp_out, tmp_png):
            if tmp_png is not None:  # the plot first: if it fails, no forecast file is written either
                _plot(history, fcst, tmp_png, fc.targets[0], list(stations) or None, fc.seq_len)
            _write_forecast(fcst, tmp_out, fc.targets, out.suffix.lower())
    click.echo(f"wrote {out}: {fcst.sizes['station']} stations x {step_label(fcst.sizes['lead_time'], fc.frequency)} "
               f"of {', '.join(fc.targets)} from {fcst.attrs['forecast_start']} (issued {fcst.attrs['issue_time']})"
               + (f", quantiles {', '.join(f'{q:g}' for q in fc.quantiles)}" if fc.quantiles is not None else ""))
    if plot is not None:
        click.echo(f"wrote {plot}")


def _find_run(run_dir: Path | None) -> RunDir:
    if run_dir is None:
        try:
            return RunDir.latest(runs_root())
        except FileNotFoundError as e:
            raise click.ClickException(f"{e} (train one with `urlk-forecast train`, or pass --run DIR)") from None
    run = RunDir(run_dir)
    if not run.is_complete:
        others = ", ".join(str(r) for r in RunDir.list_runs(run.path.parent)) or "none"
        raise click.ClickException(f"{run} is not a finished run (no model/config.json); runs under "
                                   f"{run.path.parent}: {others}")
    return run


def _check_variable(run: RunDir, fc: Forecaster, variable: str | None) -> None:
    if variable is None or [v.strip() for v in variable.split(",") if v.strip()] == list(fc.targets):
        return
    others = ", ".join(str(r) for r in RunDir.list_runs(run.path.parent, variable=variable)) or "none"
    raise click.ClickException(f"run {run} forecasts {','.join(fc.targets)}, not {variable}; runs for {variable}: "
                               f"{others} "
                               f"(train one with --var {variable})")


def _history(run: RunDir, data: Path | None, variables: Sequence[str], end: str | None,
             units: dict[str, str] | None = None, reader: dict[str, object] | None = None,
             inputs: Sequence[str] = ()) -> xr.Dataset:
    """The history to forecast from: ``--data`` (read with ``--units`` and the wide-CSV options) or the run's data,
    cut at ``--end``. ``variables``: the run's target(s)."""
    if data is not None:
        if not Path(data).exists():
            raise click.ClickException(f"--data {data}: no such file or directory")
        ds = open_dataset(data, **(reader or {}), **({"units": units} if units else {}))
        for v in variables:
            require_variable(ds, v, f"--data {data}")
        validate(ds, variables=list(variables))
    else:
        try:
            ds = run.open_data([*variables, *inputs])  # the covariates too (the forecaster checks them)
        except FileNotFoundError as e:
            raise click.ClickException(f"{e}; pass --data") from None
    if end is None:
        return ds
    try:
        t_end = pd.Timestamp(end)
    except (ValueError, TypeError):
        raise click.ClickException(f"--end {end!r} is not a time (e.g. 2019-03-01T12:00)") from None
    times = pd.DatetimeIndex(ds["time"].values)
    if t_end < times[0] or t_end > times[-1]:
        raise click.ClickException(f"--end {t_end} is outside the data ({times[0]} .. {times[-1]})")
    return ds.sel(time=slice(None, t_end))


def _check_stations(history: xr.Dataset, stations: tuple[str, ...]) -> None:
    if not stations:
        return
    ids = [str(s) for s in history["station"].values]
    unknown = [s for s in stations if s not in set(ids)]
    if unknown:
        raise click.ClickException(f"unknown station(s) {', '.join(unknown)}; available ({len(ids)}): "
                                   f"{', '.join(ids[:12])}{', ...' if len(ids) > 12 else ''}")


def _write_forecast(fcst: xr.Dataset, path: Path, variables: Sequence[str], kind: str) -> None:
    """netCDF, or long CSV (station, lat, lon, issue_time, valid_time, lead_time_<unit>, value, units), to ``path``;
    several ``variables``: a value column and a ``<variable>_units``  column each.

    The lead-time column counts in the largest unit that divides the data's step (``lead_time_h`` for hourly,
    ``lead_time_d`` for daily, ``lead_time_min`` for 10-minute data; :func:`~urlk_forecast.utils.steps.lead_time_unit`).
    """
    if kind == ".nc":
        fcst.to_netcdf(path, engine="netcdf4", format="NETCDF4",
                       encoding={v: {"dtype": "float32", "_FillValue": np.float32(np.nan)} for v in variables})
        return
    cols: dict[str, np.ndarray] = {}
    for v in variables:  # the forecast (the median of a quantile run) and one column per level
        cols.update(_value_columns(fcst, v))
    units = ({"units": fcst[variables[0]].attrs.get("units", "")} if len(variables) == 1 else
             {f"{v}_units": fcst[v].attrs.get("units", "") for v in variables})
    leads = pd.to_timedelta(fcst["lead_time"].values)
    suffix, _, unit = lead_time_unit(leads[0] if len(leads) else None)
    lead = leads / unit
    n_lead, n_st = fcst.sizes["lead_time"], fcst.sizes["station"]
    df = pd.DataFrame({
        "station": np.tile(np.asarray(fcst["station"].values, dtype=str), n_lead),
        "lat": np.tile(np.asarray(fcst["lat"].values), n_lead),
        "lon": np.tile(np.asarray(fcst["lon"].values), n_lead),
        "issue_time": fcst.attrs["issue_time"],
        "valid_time": np.repeat(pd.DatetimeIndex(fcst["time"].values).strftime("%Y-%m-%dT%H:%M"), n_st),
        f"lead_time_{suffix}": np.repeat(np.asarray(lead, dtype=float), n_st),
        **cols,
        **units,
    })
    df.to_csv(path, index=False, float_format="%.4f")


def _value_columns(fcst: xr.Dataset, variable: str) -> dict[str, np.ndarray]:
    """The CSV's value columns, each (lead x station) flattened lead-major: ``variable`` (the point forecast: the
    median of a quantile forecast) and, for a quantile forecast, ``<variable>_q<level>`` per level."""
    da = fcst[variable]
    if "quantile" not in da.dims:
        return {variable: np.asarray(da.transpose("lead_time", "station").values).reshape(-1)}
    cols = {variable: np.asarray(da.sel(quantile=0.5).transpose("lead_time", "station").values).reshape(-1)}
    for q in np.asarray(da["quantile"].values, dtype=float):
        cols[quantile_label(variable, q)] = np.asarray(
            da.sel(quantile=q).transpose("lead_time", "station").values).reshape(-1)
    return cols


def _draw_forecast(ax: Any, fcst: xr.Dataset, variable: str, sid: str) -> None:
    """The forecast of station ``sid`` on ``ax``: the line (the median of a quantile forecast) and, for a quantile
    forecast, a shaded band per central interval its levels bound (80 % for 0.1/0.9), the widest lightest."""
    f = fcst[variable].sel(station=sid)
    times = pd.DatetimeIndex(fcst["time"].values)
    if "quantile" in f.dims:
        pairs = central_intervals(np.asarray(f["quantile"].values, dtype=float))
        for k, (lo, hi, cover) in enumerate(pairs):
            ax.fill_between(times, np.asarray(f.isel(quantile=lo).values), np.asarray(f.isel(quantile=hi).values),
                            color="tab:red", alpha=0.15 + 0.15 * k / max(len(pairs) - 1, 1), lw=0,
                            label=f"{100 * cover:g} % interval")
        f = f.sel(quantile=0.5)
    ax.plot(times, np.asarray(f.values), color="tab:red", lw=1.6,
            label="forecast (median)" if "quantile" in fcst[variable].dims else "forecast")


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401 - optional dependency (the 'plot' extra): checked before any work
    except ImportError:
        raise click.ClickException("--plot needs matplotlib: pip install 'urlk-forecast[plot]'") from None


def _plot(history: xr.Dataset, fcst: xr.Dataset, path: Path, variable: str, stations: list[str] | None,
          seq_len: int) -> None:
    """History (last 3 x seq_len steps) and forecast of up to 4 stations, one panel each, as a PNG at ``path``."""
    import matplotlib  # optional dependency (the 'plot' extra), imported only with --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = stations or [str(s) for s in fcst["station"].values[:: max(1, fcst.sizes["station"] // 4)][:4]]
    units = fcst[variable].attrs.get("units", "")
    fig, axes = plt.subplots(len(ids), 1, figsize=(9, 2.4 * len(ids)), sharex=True, squeeze=False)
    try:
        hist = history.isel(time=slice(-3 * seq_len, None))
        for ax, sid in zip(axes[:, 0], ids):
            h = hist[variable].sel(station=sid)
            ax.plot(pd.DatetimeIndex(hist["time"].values), np.asarray(h.values), color="0.3", lw=1.2,
                    label="history")
            _draw_forecast(ax, fcst, variable, sid)
            ax.axvline(pd.Timestamp(fcst.attrs["issue_time"]), color="0.6", ls="--", lw=0.8)
            name = str(fcst["name"].sel(station=sid).values) if "name" in fcst.coords else sid
            ax.set_title(f"{sid} {name if name != sid else ''}".strip(), fontsize=9, loc="left")
            ax.set_ylabel(units)
        axes[0, 0].legend(loc="upper left", fontsize=8)
        fig.suptitle(f"{variable} forecast issued {fcst.attrs['issue_time']}", fontsize=10)
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=110)
    finally:
        plt.close(fig)
