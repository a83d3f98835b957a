"""Step counts worded in the data's own time step ("24 h", "24 days", "6 x 10 min"), for every message, table
header and file attribute, so daily or 10-minute data is never described in hours."""

from __future__ import annotations

import pandas as pd

__all__ = ["describe_steps", "freq_label", "as_freq"]

_UNITS = ((pd.Timedelta(days=1), "day"), (pd.Timedelta(hours=1), "h"), (pd.Timedelta(minutes=1), "min"),
          (pd.Timedelta(seconds=1), "s"))


def as_freq(freq: pd.Timedelta | str | None) -> pd.Timedelta | None:
    """``freq`` as a positive :class:`pandas.Timedelta` ("1h", "1D", "10min", a Timedelta); None when unknown."""
    if freq is None:
        return None
    try:
        f = pd.Timedelta(freq)
    except (ValueError, TypeError):
        try:  # offset aliases without a number, e.g. "D", "h"
            f = pd.Timedelta(pd.tseries.frequencies.to_offset(str(freq)))
        except (ValueError, TypeError):
            return None
    return f if f > pd.Timedelta(0) else None


def _amount(count: int, unit: str) -> str:
    if unit == "day":
        return f"{count} day{'s' if count != 1 else ''}"
    return f"{count} {unit}"


def freq_label(freq: pd.Timedelta | str | None) -> str:
    """One time step in words: ``"1 h"``, ``"1 day"``, ``"10 min"``, ``"7 days"``; ``"step"`` when unknown."""
    f = as_freq(freq)
    if f is None:
        return "step"
    for unit, name in _UNITS:
        if f % unit == pd.Timedelta(0):
            return _amount(int(f // unit), name)
    return str(f)


def describe_steps(n: int, freq: pd.Timedelta | str | None) -> str:
    """``n`` steps of ``freq`` in the data's terms: ``"24 h"`` (hourly), ``"24 days"`` (daily), ``"6 x 10 min"``
    (any other step), ``"24 steps"`` when the step is unknown."""
    n = int(n)
    f = as_freq(freq)
    if f is None:
        return f"{n} step{'s' if n != 1 else ''}"
    for unit, name in _UNITS:
        if f == unit:
            return _amount(n, name)
    return f"{n} x {freq_label(f)}"
