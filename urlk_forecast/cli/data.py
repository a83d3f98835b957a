"""``urlk-forecast data``: fetch NCEI station data, convert any supported input to netCDF, describe a dataset.

Errors a user can fix (bad file, unknown station, network failure) print one line and exit non-zero,
without a traceback. Warnings (e.g. station-years missing on the server) print as ``warning: ...``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..data.fetch import HISTORY_URL, SOURCES
from ..data.fetch import fetch as run_fetch
from ..data.readers import FORMATS, detect_format, open_dataset, write_netcdf
from ..data.summary import describe, format_description
from ..data.synthetic import synthetic_global
from .errors import user_errors
from .reader_options import WIDE_FLAGS, reader_kwargs, wide_csv_options
from .units import parse_units, units_option

__all__ = ["data"]

_FORMATS = ("isd-lite", "global-hourly", "gsod", "corrformer", "netcdf", "csv-long", "wide-csv")
_MULTI_INPUT = ("isd-lite", "global-hourly", "gsod")
# Python argument names in library messages -> the flags of these commands
_FETCH_FLAGS = {"stations": "--stations", "station_ids": "--station-ids", "years": "--years", "out": "--out",
                "base_url": "--base-url", "history_url": "--history-url", "cache": "--cache"}
_CONVERT_FLAGS = {"format": "--format", "history": "--history", "missing_coords": "--missing-coords",
                  "split": "--split", "name_map": "--name-map", "stations": "--stations-csv", "units": "--units",
                  **WIDE_FLAGS}


class _MultiValueCommand(click.Command):
    """Accepts ``--years 2019 2020`` (several values after one flag) for the options in ``multi``.

    click options take one value per flag; the values following such a flag (up to the next
    ``-``-prefixed token) are rewritten to repeated flags before click parses them.
    """

    multi: tuple[str, ...] = ("--years", "--station-ids")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(args):
            a = args[i]
            if a == "--":
                out.extend(args[i:])
                break
            if a in self.multi:
                vals = []
                i += 1
                while i < len(args) and not args[i].startswith("-"):
                    vals.append(args[i])
                    i += 1
                if not vals:
                    out.append(a)  # let click report the missing value
                for v in vals:
                    out.extend([a, v])
                continue
            out.append(a)
            i += 1
        return super().parse_args(ctx, out)


def _parse_years(values: tuple[str, ...]) -> list[int]:
    years: list[int] = []
    for raw in values:
        for part in filter(None, raw.replace(",", " ").split()):
            try:
                if "-" in part.strip("-"):
                    a, b = part.split("-", 1)
                    lo, hi = int(a), int(b)
                    if hi < lo:
                        raise ValueError
                    years.extend(range(lo, hi + 1))
                else:
                    years.append(int(part))
            except ValueError:
                raise click.BadParameter(
                    f"{part!r} is not a year or a range like 2015-2020", param_hint="--years"
                ) from None
    return sorted(set(years))


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise click.BadParameter(f"{v!r} should look like NAME=VALUE", param_hint=option)
        k, val = v.split("=", 1)
        out[k.strip()] = val.strip()
    return out


@click.group(name="data")
def data() -> None:
    """Station data: download (fetch), convert to netCDF (convert) and describe (info)."""


@data.command(cls=_MultiValueCommand)
@click.option("--source", type=click.Choice(sorted(SOURCES)), default="isd-lite", show_default=True)
@click.option("--years", multiple=True, required=True, help="Years, e.g. --years 2019 2020 or --years 2015-2020.")
@click.option("--stations", type=click.IntRange(min=1), help="Pick this many stations covering the years.")
@click.option("--station-ids", multiple=True, help="Explicit USAF-WBAN ids, e.g. --station-ids 725090-14739 ...")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--base-url", help="Data base URL (default: the NCEI archive of the source).")
@click.option("--history-url", default=HISTORY_URL, show_default=True, help="URL of isd-history.csv.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), help="Download cache directory.")
@click.option("--retries", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--backoff", type=click.FloatRange(min=0), default=1.0, show_default=True, help="First retry wait (s).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True, help="Per-request (s).")
@click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True, help="Parallel downloads.")
@click.option("--no-convert", is_flag=True, help="Only download; do not write the netCDF file.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def fetch(
    source: str,
    years: tuple[str, ...],
    stations: int | None,
    station_ids: tuple[str, ...],
    out: Path,
    base_url: str | None,
    history_url: str,
    cache: Path | None,
    retries: int,
    backoff: float,
    timeout: float,
    workers: int,
    no_convert: bool,
    quiet: bool,
) -> None:
    """Download NCEI station data and convert it to one netCDF file OUT/<source>_<years>.nc."""
    if (stations is None) == (not station_ids):
        raise click.UsageError("give exactly one of --stations N or --station-ids ID ...")
    year_list = _parse_years(years)
    with user_errors(_FETCH_FLAGS):
        res = run_fetch(
            source,
            year_list,
            out,
            stations=stations,
            station_ids=list(station_ids) or None,
            base_url=base_url,
            history_url=history_url,
            cache=cache,
            retries=retries,
            backoff=backoff,
            timeout=timeout,
            workers=workers,
            convert=not no_convert,
            progress=not quiet,
        )
    click.echo(
        f"{len(res.stations)} stations, {len(res.files)} files ({len(res.downloaded)} downloaded, "
        f"{len(res.cached)} from cache, {len(res.missing)} missing on the server)"
    )
    if res.output is not None:
        click.echo(f"wrote {res.output}")


@data.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path), help="netCDF to write.")
@click.option("--format", "fmt", type=click.Choice(_FORMATS), help="Input format (default: detected).")
@click.option("--history", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="isd-history.csv.")
@click.option("--missing-coords", type=click.Choice(["raise", "nan", "drop"]), default="raise", show_default=True)
@click.option("--split", type=click.Choice(["train", "val", "test"]), help="Corrformer release: one split only.")
@click.option("--name-map", multiple=True, help="netCDF: FILE_NAME=SCHEMA_NAME, e.g. --name-map t2m=temperature.")
@click.option(
    "--stations-csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="CSV long: metadata."
)
@units_option
@wide_csv_options
@click.option("--compress", type=click.IntRange(0, 9), default=0, show_default=True, help="zlib level (0 = off).")
def convert(
    inputs: tuple[Path, ...],
    out: Path,
    fmt: str | None,
    history: Path | None,
    missing_coords: str,
    split: str | None,
    name_map: tuple[str, ...],
    stations_csv: Path | None,
    units: tuple[str, ...],
    time_column: str | None,
    columns: str | None,
    var_name: str | None,
    compress: int,
) -> None:
    """Read INPUTS (any supported format) and write one schema netCDF file, atomically."""
    with user_errors(_CONVERT_FLAGS):
        wide = reader_kwargs(time_column, columns, var_name)
        if wide and fmt not in (None, "wide-csv"):
            raise click.UsageError(f"--time-column/--columns/--var-name apply to wide-csv input, not {fmt}")
        fmt = wide.pop("format", fmt)
        kinds = {detect_format(p) for p in inputs} if fmt is None else {fmt}
        if len(kinds) > 1:
            raise click.UsageError(f"inputs mix formats {sorted(kinds)}; convert them separately")
        kind = kinds.pop()
        if len(inputs) > 1 and kind not in _MULTI_INPUT:
            raise click.UsageError(f"{kind} takes one input; got {len(inputs)}")
        given = {
            "--history": (history is not None, "isd-lite"),
            "--missing-coords": (missing_coords != "raise", "isd-lite"),
            "--split": (split is not None, "corrformer"),
            "--name-map": (bool(name_map), "netcdf"),
            "--stations-csv": (stations_csv is not None, "csv-long"),
        }
        for opt, (used, owner) in given.items():
            if used and kind != owner:
                raise click.UsageError(f"{opt} applies to {owner} input, not {kind}")
        kw: dict[str, Any] = {}
        if kind == "isd-lite":
            kw.update(missing_coords=missing_coords)
            if history is not None:
                kw["history"] = history
        if split is not None:
            kw["split"] = split
        if name_map:
            kw["name_map"] = _pairs(name_map, "--name-map")
        if stations_csv is not None:
            kw["stations"] = stations_csv
        if units:
            kw["units"] = parse_units(units)
        kw.update(wide)
        src: Any = list(inputs) if len(inputs) > 1 else inputs[0]
        ds = open_dataset(src, format=kind, **kw) if len(inputs) == 1 else _read_many(kind, src, kw)
        path = write_netcdf(ds, out, compress=compress)
        info = describe(ds)
    click.echo(
        f"wrote {path}: {info['stations']} stations x {info['time_steps']} times "
        f"({info['time_start']} .. {info['time_end']}, every {info['frequency']}) from {kind}"
    )


def _read_many(kind: str, paths: list[Path], kw: dict[str, Any]) -> Any:
    reader: Callable[..., Any] = FORMATS[kind]
    return reader(paths, **kw)


@data.command()
@click.argument("path", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(_FORMATS), help="Input format (default: detected).")
@click.option("--synthetic", is_flag=True, help="Describe the built-in synthetic dataset instead of a file.")
@click.option("--stations", type=click.IntRange(min=1), default=3850, show_default=True, help="With --synthetic.")
@click.option("--hours", type=click.IntRange(min=2), default=17544, show_default=True, help="With --synthetic.")
@click.option("--seed", type=int, default=0, show_default=True, help="With --synthetic.")
@units_option
@wide_csv_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(
    path: Path | None, fmt: str | None, synthetic: bool, stations: int, hours: int, seed: int,
    units: tuple[str, ...], time_column: str | None, columns: str | None, var_name: str | None, as_json: bool
) -> None:
    """Describe a dataset: stations, time span, frequency, missing % per variable, value ranges."""
    if (path is None) == (not synthetic):
        raise click.UsageError("give a PATH or --synthetic")
    if synthetic and units:
        raise click.UsageError("--units applies to a PATH, not --synthetic")
    unit_map = parse_units(units)
    wide = reader_kwargs(time_column, columns, var_name)
    if wide and (synthetic or fmt not in (None, "wide-csv")):
        raise click.UsageError(f"--time-column/--columns/--var-name apply to wide-csv input, not {fmt or 'synthetic'}")
    with user_errors({"format": "--format", "stations": "--stations", "hours": "--hours", "units": "--units",
                      **WIDE_FLAGS}):
        if synthetic:
            ds = synthetic_global(stations=stations, hours=hours, seed=seed)
            title = f"synthetic_global(stations={stations}, hours={hours}, seed={seed})  [SYNTHETIC data]"
        else:
            kind = wide.pop("format", None) or fmt or detect_format(path)
            ds = open_dataset(path, format=kind, **wide, **({"units": unit_map} if unit_map else {}))
            title = f"{path} ({kind})"
        summary = describe(ds)
    if as_json:
        click.echo(json.dumps({"dataset": title, **summary}, indent=2))
    else:
        click.echo(format_description(summary, title))
