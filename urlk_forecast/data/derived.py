"""Variables derived from others of the same dataset: relative humidity from air temperature and dew point.

``with_relative_humidity(ds)`` adds ``relative_humidity`` (%, the registry's) where ``ds`` has ``temperature`` and
``dew_point`` (as ISD-Lite, Global-Hourly and GSOD data do), with the Magnus formula of Alduchov & Eskridge (1996):
``e(T) = exp(17.625 T / (243.04 + T))``, ``RH = 100 e(Td) / e(T)``. NaN where either input is missing; values are
capped at 100 % (a dew point up to 0.5 degC above the temperature passes the plausibility check).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .schema import SchemaError, variable_attrs

__all__ = ["relative_humidity", "with_relative_humidity"]

_A, _B = 17.625, 243.04  # Alduchov & Eskridge (1996), over water, degC


def relative_humidity(temperature: np.ndarray, dew_point: np.ndarray) -> np.ndarray:
    """Relative humidity (%) of air at ``temperature`` with ``dew_point`` (both degC, any shape; NaN stays NaN)."""
    t = np.asarray(temperature, np.float64)
    td = np.asarray(dew_point, np.float64)
    rh = 100.0 * np.exp(_A * td / (_B + td) - _A * t / (_B + t))
    return np.minimum(rh, 100.0)


def with_relative_humidity(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with ``relative_humidity`` (%) added from its ``temperature`` and ``dew_point`` (a new Dataset)."""
    missing = [v for v in ("temperature", "dew_point") if v not in ds.data_vars]
    if missing:
        raise SchemaError(f"relative humidity needs temperature and dew_point; the dataset lacks {missing}")
    t = ds["temperature"].transpose("time", "station")
    rh = relative_humidity(t.values, ds["dew_point"].transpose("time", "station").values).astype(np.float32)
    attrs = {**variable_attrs("relative_humidity"), "comment": "derived from temperature and dew_point (Magnus, "
             "Alduchov & Eskridge 1996)"}
    return ds.assign(relative_humidity=(("time", "station"), rh, attrs))
