"""Step counts worded in the data's own time step ("24 h", "24 days", "6 x 10 min"), for every message, table
header and file attribute, so daily or 10-minute data is never described in hours."""

from __future__ import annotations

import pandas as pd

__all__ = ["describe_steps", "freq_label", "as_freq", "parse_length", "length_steps", "lead_time_unit",
           "default_season"]

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


def parse_length(value: int | str | pd.Timedelta, name: str = "length") -> int | pd.Timedelta:
    """A window length as given: an int number of steps (``48``, ``"48"``) or a positive duration (``"48h"``,
    ``"7D"``, ``"30min"``, a Timedelta) to be divided by the data's step (:func:`length_steps`).

    Raises ValueError naming ``name`` for anything else (a float, a negative or zero duration, ``"48 apples"``)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number of steps or a duration like '48h', got {value!r}")
    if isinstance(value, (int,)) or (hasattr(value, "__index__") and not isinstance(value, (str, pd.Timedelta))):
        return int(value)  # type: ignore[arg-type]
    if isinstance(value, pd.Timedelta):
        d = value
    else:
        text = str(value).strip()
        if text.lstrip("+-").isdigit():
            return int(text)
        try:
            d = pd.Timedelta(text)
        except (ValueError, TypeError):
            d = None
        if d is None or not any(c.isalpha() for c in text):
            raise ValueError(f"{name}={value!r} is neither a number of steps nor a duration like '48h', '7D', "
                             "'30min'") from None
    if d <= pd.Timedelta(0):
        raise ValueError(f"{name}={value!r} must be a positive duration")
    return d


def length_steps(value: int | str | pd.Timedelta, freq: pd.Timedelta | str | None, name: str = "length") -> int:
    """``value`` (steps or a duration, :func:`parse_length`) as a number of steps of ``freq``.

    A duration must be a whole number of steps (``"48h"`` of 10-minute data is 288 steps; ``"90min"`` of hourly
    data is an error saying so); with the step unknown a duration is an error."""
    v = parse_length(value, name)
    if isinstance(v, int):
        return v
    f = as_freq(freq)
    if f is None:
        shown = repr(freq_label(value) if isinstance(value, pd.Timedelta) else value)
        raise ValueError(f"{name}={shown} is a duration, but the data's time step is not known; give steps")
    n, rest = divmod(v, f)
    if rest != pd.Timedelta(0) or n < 1:
        shown = repr(freq_label(value) if isinstance(value, pd.Timedelta) else value)
        raise ValueError(f"{name}={shown} is not a whole number of the data's {freq_label(f)} steps "
                         f"({v / f:g} steps); give a multiple of {freq_label(f)} or a number of steps")
    return int(n)


#: (column suffix, CF units, unit) of lead times, largest first: lead_time_d, lead_time_h, lead_time_min, lead_time_s
_LEAD_UNITS = (("d", "days", pd.Timedelta(days=1)), ("h", "hours", pd.Timedelta(hours=1)),
               ("min", "minutes", pd.Timedelta(minutes=1)), ("s", "seconds", pd.Timedelta(seconds=1)))


def lead_time_unit(freq: pd.Timedelta | str | None) -> tuple[str, str, pd.Timedelta]:
    """``(suffix, CF units, unit)`` in which lead times of data with step ``freq`` are whole numbers: the largest
    of days, hours, minutes, seconds dividing the step (``("h", "hours", 1 h)`` for hourly and 3-hourly data,
    ``("d", "days", 1 day)`` for daily data, ``("min", "minutes", 1 min)`` for 10-minute data); hours when unknown."""
    f = as_freq(freq)
    for suffix, cf, unit in _LEAD_UNITS:
        if f is not None and f % unit == pd.Timedelta(0):
            return suffix, cf, unit
    return "h", "hours", pd.Timedelta(hours=1)


def default_season(freq: pd.Timedelta | str | None) -> int:
    """The seasonal period in steps of data with step ``freq``: one day of sub-daily steps (24 for hourly, 8 for
    3-hourly, 144 for 10-minute data), a week of daily or longer steps (7 for daily data); 24 when unknown."""
    f = as_freq(freq)
    if f is None:
        return 24
    if f < pd.Timedelta(days=1):
        return max(1, round(pd.Timedelta(days=1) / f))
    return max(1, round(pd.Timedelta(days=7) / f))
