"""``--time-column``, ``--columns``, ``--var-name``: how a wide CSV (``date,col1,...,colN``) is read, for every
command that reads station data; and the variable a command forecasts when ``--var`` is not given.

A wide CSV's series columns form one data variable (named ``--var-name``, default ``value``), each column one
station; see :mod:`urlk_forecast.data.formats.wide_csv`. Giving any of these options reads the file as a wide CSV.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..data.formats.wide_csv import DEFAULT_VARIABLE
from ..data.readers import detect_format

__all__ = ["wide_csv_options", "reader_kwargs", "default_variable", "WIDE_FLAGS"]

F = TypeVar("F", bound=Callable[..., Any])

#: the wide-CSV reader's argument names in library messages -> these flags
WIDE_FLAGS = {"time_column": "--time-column", "columns": "--columns"}


def wide_csv_options(f: F) -> F:
    """The three wide-CSV options (parameters ``time_column``, ``columns``, ``var_name``)."""
    f = click.option("--var-name", "var_name", default=None, metavar="NAME",
                     help=f"Wide CSV: the name of the variable its series form (default {DEFAULT_VARIABLE!r}; a "
                          "registry name such as temperature gets its units and plausibility checks).")(f)
    f = click.option("--columns", "columns", default=None, metavar="A,B,...",
                     help="Wide CSV: the series columns to read (default: every column but the time column).")(f)
    f = click.option("--time-column", "time_column", default=None, metavar="NAME",
                     help="Read the data as a wide CSV (one series per column) whose times are in this column "
                          "(default: the first column).")(f)
    return f


def reader_kwargs(time_column: str | None, columns: str | None, var_name: str | None) -> dict[str, Any]:
    """The reader arguments the wide-CSV options ask for (``{}`` when none is given: the format is detected)."""
    if time_column is None and columns is None and var_name is None:
        return {}
    kw: dict[str, Any] = {"format": "wide-csv"}
    if time_column is not None:
        kw["time_column"] = time_column
    if columns is not None:
        names = [c.strip() for c in columns.split(",") if c.strip()]
        if not names:
            raise click.BadParameter(f"{columns!r} names no column", param_hint="--columns")
        kw["columns"] = names
    if var_name is not None:
        kw["variable"] = var_name
    return kw


def default_variable(variable: str | None, data: Path | None, reader: dict[str, Any]) -> str:
    """``--var`` when given; else a wide CSV's variable (``--var-name``, default ``value``); else temperature."""
    if variable is not None:
        return variable
    if reader.get("format") == "wide-csv":
        return str(reader.get("variable", DEFAULT_VARIABLE))
    if data is not None and Path(data).is_file():
        try:
            if detect_format(data) == "wide-csv":
                return DEFAULT_VARIABLE
        except (OSError, ValueError):
            pass  # the reader reports an unreadable file later, naming it
    return "temperature"
