"""``--units VAR=UNIT`` (repeatable), the one option every command that reads station data accepts: the source's
units per variable, passed as ``units={var: unit}`` to the readers (converted to the schema units on reading)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["units_option", "parse_units", "UNITS_HELP"]

F = TypeVar("F", bound=Callable[..., Any])

UNITS_HELP = ("Units of the input, VARIABLE=UNIT (repeatable), e.g. --units temperature=degF --units "
              "wind_speed=knots; converted to the schema units on reading (any input format).")


def units_option(f: F) -> F:
    """The ``--units`` option (into the ``units`` parameter, a tuple of ``VAR=UNIT`` strings)."""
    return click.option("--units", "units", multiple=True, metavar="VAR=UNIT", help=UNITS_HELP)(f)


def parse_units(values: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``("temperature=degF",)`` -> ``{"temperature": "degF"}``; a malformed or repeated entry is a usage error."""
    out: dict[str, str] = {}
    for v in values:
        name, sep, unit = v.partition("=")
        name, unit = name.strip(), unit.strip()
        if not sep or not name or not unit:
            raise click.BadParameter(f"{v!r} should look like VARIABLE=UNIT, e.g. temperature=degF",
                                     param_hint="--units")
        if name in out and out[name] != unit:
            raise click.BadParameter(f"{name} is given twice ({out[name]} and {unit})", param_hint="--units")
        out[name] = unit
    return out
