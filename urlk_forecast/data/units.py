"""Units: the one conversion table for every station variable.

Each unit belongs to a quantity (temperature, speed, pressure, length, angle, fraction, cloud cover) and converts
to that quantity's canonical unit by ``canonical = value * scale + offset``. Spellings are matched
case-insensitively (``degF`` = ``°F`` = ``fahrenheit``; ``knots`` = ``kt``; ``hPa`` = ``mbar``).
:func:`convert` is the only conversion routine; readers, ``schema.convert_units`` and the
plausibility checks all go through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Unit", "UnitError", "UNITS", "QUANTITIES", "lookup", "convert", "known_units"]


class UnitError(ValueError):
    """A unit string is unknown, or two units measure different quantities."""


@dataclass(frozen=True)
class Unit:
    """One unit: its preferred spelling, its quantity and the affine map to the canonical unit."""

    name: str
    quantity: str
    scale: float
    offset: float = 0.0
    aliases: tuple[str, ...] = ()


#: quantity -> canonical unit (CF spellings where CF has one)
QUANTITIES: dict[str, str] = {
    "temperature": "degC",
    "speed": "m s-1",
    "pressure": "hPa",
    "length": "mm",
    "angle": "degree",
    "fraction": "%",
    "cloud_cover": "oktas",
}

_F = 5.0 / 9.0
UNITS: tuple[Unit, ...] = (
    Unit("degC", "temperature", 1.0, 0.0, ("°C", "C", "celsius", "degree_Celsius", "degrees_Celsius", "deg_C")),
    Unit("degF", "temperature", _F, -32.0 * _F, ("°F", "F", "fahrenheit", "degree_Fahrenheit", "deg_F")),
    Unit("K", "temperature", 1.0, -273.15, ("kelvin", "degK", "degree_Kelvin")),
    Unit("m s-1", "speed", 1.0, 0.0, ("m/s", "m s**-1", "m.s-1", "mps", "meter/second", "meters per second")),
    Unit("km/h", "speed", 1.0 / 3.6, 0.0, ("km h-1", "kph", "kmh", "km/hr")),
    Unit("mph", "speed", 0.44704, 0.0, ("mi/h", "miles per hour")),
    Unit("knots", "speed", 1852.0 / 3600.0, 0.0, ("knot", "kt", "kts", "kn")),
    Unit("hPa", "pressure", 1.0, 0.0, ("mbar", "mb", "millibar", "hectopascal")),
    Unit("Pa", "pressure", 0.01, 0.0, ("pascal",)),
    Unit("kPa", "pressure", 10.0, 0.0, ("kilopascal",)),
    Unit("inHg", "pressure", 33.8638866667, 0.0, ("in_Hg", "inches of mercury")),
    Unit("mm", "length", 1.0, 0.0, ("millimeter", "millimetre", "kg m-2")),
    Unit("cm", "length", 10.0, 0.0, ("centimeter", "centimetre")),
    Unit("m", "length", 1000.0, 0.0, ("meter", "metre")),
    Unit("in", "length", 25.4, 0.0, ("inch", "inches")),
    Unit("degree", "angle", 1.0, 0.0, ("deg", "degrees", "°", "degree_true", "degrees_true")),
    Unit("%", "fraction", 1.0, 0.0, ("percent", "pct")),
    Unit("1", "fraction", 100.0, 0.0, ("fraction",)),
    Unit("oktas", "cloud_cover", 1.0, 0.0, ("okta", "eighths")),
)


def _key(spelling: str) -> str:
    return " ".join(str(spelling).split()).lower()


_BY_KEY: dict[str, Unit] = {_key(s): u for u in UNITS for s in (u.name, *u.aliases)}
assert len(_BY_KEY) == sum(1 + len(u.aliases) for u in UNITS), "two units share a spelling"


def known_units(quantity: str | None = None) -> list[str]:
    """Every accepted spelling (preferred names first), of one quantity or of all."""
    units = [u for u in UNITS if quantity is None or u.quantity == quantity]
    return [u.name for u in units] + [a for u in units for a in u.aliases]


def lookup(unit: str, quantity: str | None = None) -> Unit:
    """The :class:`Unit` spelled ``unit``; with ``quantity``, it must measure that quantity."""
    found = _BY_KEY.get(_key(unit))
    if found is None:
        what = f"{quantity} " if quantity else ""
        raise UnitError(f"unknown units {unit!r}; known {what}units: {', '.join(known_units(quantity))}")
    if quantity is not None and found.quantity != quantity:
        raise UnitError(
            f"{unit!r} is a {found.quantity} unit, not a {quantity} unit; known: {', '.join(known_units(quantity))}"
        )
    return found


def convert(values: np.ndarray | float, from_unit: str, to_unit: str) -> np.ndarray:
    """``values`` in ``from_unit`` expressed in ``to_unit`` (float64; NaN stays NaN).

    Both units must measure the same quantity (``convert(x, "degF", "knots")`` raises
    :class:`UnitError`). ``convert(212, "degF", "degC") == 100``.
    """
    src = lookup(from_unit)
    dst = lookup(to_unit, src.quantity)
    v = np.asarray(values, dtype=np.float64)
    if src == dst:
        return v.copy()
    return ((v * src.scale + src.offset) - dst.offset) / dst.scale
