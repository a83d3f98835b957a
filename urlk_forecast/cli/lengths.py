"""``--seq-len``, ``--label-len``, ``--pred-len``: a number of steps or a duration (``48h``, ``7D``, ``30min``).

A duration is converted with the data's time step once the data is read (it must be a whole number of steps;
:func:`urlk_forecast.utils.steps.length_steps`), so the same command line works for hourly and 10-minute data.
"""

from __future__ import annotations

from typing import Any

import click
import pandas as pd

from ..utils.steps import parse_length

__all__ = ["Length", "LENGTH_HELP", "same_kind"]

LENGTH_HELP = " Steps, or a duration that is a whole number of the data's steps (48h, 7D, 30min)."


class Length(click.ParamType):
    """A window length: an int >= ``min`` (steps) or a positive duration (a :class:`pandas.Timedelta`)."""

    name = "length"

    def __init__(self, min: int = 0) -> None:
        self.min = int(min)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | pd.Timedelta:
        if isinstance(value, (int, pd.Timedelta)) and not isinstance(value, bool):
            parsed: int | pd.Timedelta = value
        else:
            try:
                parsed = parse_length(str(value), "value")
            except ValueError:
                self.fail(f"{value!r} is neither a number of steps nor a duration like 48h, 7D, 30min", param, ctx)
        if isinstance(parsed, int) and parsed < self.min:
            self.fail(f"{parsed} is not in the range x>={self.min}", param, ctx)
        return parsed


def same_kind(a: int | pd.Timedelta, b: int | pd.Timedelta) -> bool:
    """Both steps or both durations (so that they can be compared before the data's step is known)."""
    return isinstance(a, pd.Timedelta) == isinstance(b, pd.Timedelta)
