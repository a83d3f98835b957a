"""The variable registry: every station variable we know, its CF metadata and its plausible range.

The schema (``data/schema.py``) has open data variables; :data:`SCHEMA_VARIABLES` (temperature, wind
speed) are the ones every station format carries. Every variable here keeps its name, CF metadata and
canonical units wherever it is read (dew point, sea-level pressure, wind direction, sky cover in oktas,
precipitation per 1 h / 6 h / 24 h, daily maximum and minimum temperature, ...), so units, plausibility
and messages speak one language.
A value outside ``[valid_min, valid_max]`` (in the canonical ``units``) is physically impossible at a
surface station and never becomes data (see ``data/plausibility.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .units import QUANTITIES

__all__ = ["Variable", "REGISTRY", "SCHEMA_VARIABLES", "SENTINELS", "get_variable"]


@dataclass(frozen=True)
class Variable:
    """One variable: schema name, CF ``standard_name``, canonical ``units`` and the plausible range.

    ``at_most`` = (other variable, tolerance): the value may not exceed the other variable's value at
    the same place and time by more than the tolerance (dew point <= air temperature).
    """

    name: str
    standard_name: str
    units: str
    long_name: str
    quantity: str
    valid_min: float
    valid_max: float
    at_most: tuple[str, float] | None = None

    def cf_attrs(self) -> dict[str, str]:
        """The CF attributes a schema variable carries (``units``, ``standard_name``, ``long_name``)."""
        return {"units": self.units, "standard_name": self.standard_name, "long_name": self.long_name}

    def range_text(self) -> str:
        """``"[-90, 60] degC"`` for messages."""
        return f"[{self.valid_min:g}, {self.valid_max:g}] {self.units}"


_VARIABLES = (
    Variable("temperature", "air_temperature", "degC", "air temperature", "temperature", -90.0, 60.0),
    Variable("wind_speed", "wind_speed", "m s-1", "wind speed", "speed", 0.0, 115.0),
    Variable(
        "dew_point", "dew_point_temperature", "degC", "dew point temperature", "temperature", -90.0, 60.0,
        at_most=("temperature", 0.5),
    ),
    Variable(
        "sea_level_pressure", "air_pressure_at_mean_sea_level", "hPa", "sea-level pressure", "pressure", 850.0, 1090.0
    ),
    Variable(
        "precipitation", "lwe_thickness_of_precipitation_amount", "mm", "precipitation amount", "length", 0.0, 500.0
    ),
    Variable("wind_direction", "wind_from_direction", "degree", "wind direction", "angle", 0.0, 360.0),
    Variable("relative_humidity", "relative_humidity", "%", "relative humidity", "fraction", 0.0, 100.0),
    Variable("temperature_max", "air_temperature", "degC", "daily maximum air temperature", "temperature", -90.0, 60.0),
    Variable("temperature_min", "air_temperature", "degC", "daily minimum air temperature", "temperature", -90.0, 60.0),
    Variable("sky_cover", "cloud_area_fraction", "oktas", "total sky cover", "cloud_cover", 0.0, 8.0),
    Variable(
        "precipitation_1h", "lwe_thickness_of_precipitation_amount", "mm", "precipitation amount over 1 hour",
        "length", 0.0, 400.0,
    ),
    Variable(
        "precipitation_6h", "lwe_thickness_of_precipitation_amount", "mm", "precipitation amount over 6 hours",
        "length", 0.0, 1000.0,
    ),
    Variable(
        "precipitation_24h", "lwe_thickness_of_precipitation_amount", "mm", "precipitation amount over 24 hours",
        "length", 0.0, 2000.0,
    ),
)

#: name -> :class:`Variable`
REGISTRY: dict[str, Variable] = {v.name: v for v in _VARIABLES}
assert all(QUANTITIES[v.quantity] == v.units for v in _VARIABLES), "registry units must be canonical"

#: the data variables of the station schema, in schema order
SCHEMA_VARIABLES: tuple[str, ...] = ("temperature", "wind_speed")

#: numbers archives use for "missing" that are never real values; counted apart from other impossible
#: values (in the file's own units; ``99990`` raw Corrformer units is ``9999`` after the x10 scale)
SENTINELS: tuple[float, ...] = (
    9999.0, -9999.0, 9999.9, -9999.9, 999.9, -999.9, 999.0, -999.0, 99999.0, -99999.0, 99.99, 99990.0, -99990.0,
)


def get_variable(name: str) -> Variable:
    """The registry entry of ``name``; a ValueError naming the known variables otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown variable {name!r}; known: {', '.join(REGISTRY)}") from None
