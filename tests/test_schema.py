import numpy as np
import pandas as pd
import pytest

from urlk_forecast.data.schema import SchemaError, convert_units, make_dataset, validate


def _ds(times=None, stations=("a", "b")):
    times = pd.date_range("2019-01-01", periods=6, freq="h") if times is None else times
    t = np.arange(len(times) * len(stations), dtype=np.float32).reshape(len(times), len(stations))
    return make_dataset(times, list(stations), [10, 20], [30, 40], [1, 2], temperature=t, wind_speed=t)


def test_valid_roundtrip():
    ds = validate(_ds())
    assert ds.temperature.attrs["units"] == "degC"
    assert ds.wind_speed.attrs["standard_name"] == "wind_speed"
    assert ds.temperature.dtype == np.float32


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.drop_vars("lat"), "missing coordinate 'lat'"),
        (lambda d: d.drop_vars(["temperature", "wind_speed"]), "no schema variable"),
        (lambda d: d.isel(time=[0, 2, 1, 3]), "not monotonic"),
        (lambda d: d.isel(time=[0, 1, 1, 2]), "duplicate time"),
        (lambda d: d.isel(station=[0, 0]), "duplicate station id 'a'"),
        (lambda d: d.isel(time=[0, 1, 3, 4]), "irregular time frequency"),
        (lambda d: d.assign(temperature=d.temperature.assign_attrs(units="furlongs")), "unknown units 'furlongs'"),
        (lambda d: d.assign(temperature=d.temperature.assign_attrs(units="K")), "convert to 'degC'"),
    ],
)
def test_validate_errors(mutate, match):
    with pytest.raises(SchemaError, match=match):
        validate(mutate(_ds()))


def test_required_variable_missing():
    with pytest.raises(SchemaError, match="missing variable 'wind_speed'"):
        validate(_ds().drop_vars("wind_speed"), variables=["wind_speed"])


def test_convert_units_closed_form():
    np.testing.assert_allclose(convert_units(np.array([273.15, 300.0]), "K", "temperature"), [0.0, 26.85])
    np.testing.assert_allclose(convert_units(np.array([32.0, 212.0]), "degF", "temperature"), [0.0, 100.0])
    # 1 knot = 1 nautical mile (1852 m) per hour, exactly
    np.testing.assert_allclose(convert_units(np.array([10.0]), "knots", "wind_speed"), [10 * 1852 / 3600], rtol=1e-12)
    with pytest.raises(SchemaError, match="unknown units"):
        convert_units(np.array([1.0]), "parsec", "wind_speed")
