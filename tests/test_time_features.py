"""Calendar features the network sees (``time_features``): masked columns cannot change the forecast."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_forecast_net import make_batch, tiny_net

from urlk_forecast.data.windows import TIME_FEATURES, check_time_features, time_features
from urlk_forecast.models.forecast_net import ForecastNet


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _with_column(batch: dict, col: int, value: float) -> dict:
    out = dict(batch)
    for k in ("x_mark", "y_mark"):
        m = batch[k].clone()
        m[..., col] = value
        out[k] = m
    return out


def test_names_follow_the_columns_of_time_features() -> None:
    t = pd.DatetimeIndex(["2001-03-05 07:00"])  # a Monday, day 64 of the year
    hour, weekday, monthday, yearday = time_features(t)[0]
    assert TIME_FEATURES == ("hour", "weekday", "monthday", "yearday")
    assert np.allclose([hour, weekday, monthday, yearday], [7 / 23 - 0.5, -0.5, 4 / 30 - 0.5, 63 / 365 - 0.5])
    assert check_time_features(None) == TIME_FEATURES
    assert check_time_features(["yearday", "Hour"]) == ("hour", "yearday")  # column order, any case
    assert check_time_features("hour,weekday") == ("hour", "weekday")
    with pytest.raises(ValueError, match=r"unknown \['season'\].*choose from"):
        check_time_features(["hour", "season"])
    with pytest.raises(ValueError, match="repeated"):
        check_time_features(["hour", "hour"])


@pytest.mark.parametrize("targets", [1, 2])
def test_masked_columns_do_not_change_the_forecast(targets: int) -> None:
    torch.manual_seed(0)
    net = tiny_net(time_features=["hour"], n_targets=targets).eval()
    batch = make_batch(S=12 * targets)
    with torch.no_grad():
        ref = net(batch)
        for col in (1, 2, 3):  # weekday, monthday, yearday: masked
            assert torch.equal(net(_with_column(batch, col, 0.37)), ref)
        assert not torch.allclose(net(_with_column(batch, 0, 0.37)), ref)  # the hour is seen


def test_all_features_by_default_and_the_config_round_trips() -> None:
    torch.manual_seed(0)
    full = tiny_net().eval()
    batch = make_batch()
    with torch.no_grad():  # the default sees the day of the year (the paper's timeF): the check above can fail
        assert not torch.allclose(full(_with_column(batch, 3, 0.37)), full(batch))
    assert "time_features" not in full.config  # configs of the default stay as they were
    assert "time_mask" not in full.state_dict()  # and so do the weights' keys
    net = tiny_net(time_features=["hour", "weekday"])
    assert net.config["time_features"] == ["hour", "weekday"]
    again = ForecastNet(**net.config)
    again.load_state_dict(net.state_dict())
    assert again.time_features == ("hour", "weekday")
    with torch.no_grad():
        assert torch.equal(again.eval()(batch), net.eval()(batch))


def _fit(fc, data):
    return fc.fit(data, schedule="paper", max_steps=2, batch_size=4, progress=False, val_windows=4, seed=0)


def test_the_forecaster_passes_them_to_its_network_and_keeps_them(tmp_path) -> None:
    from urlk_forecast.data.synthetic import synthetic_global
    from urlk_forecast.forecaster import Forecaster

    data = synthetic_global(stations=5, hours=24 * 12, seed=1, variables=("temperature",))
    tiny = dict(d_model=32, n_heads=4, node_size=4, dims=(8, 16, 32, 64), kernel_size=7)
    assert _fit(Forecaster(**tiny), data).net.time_features == TIME_FEATURES  # the default: all four (the paper's)
    fc = _fit(Forecaster(time_features=["hour", "yearday"], **tiny), data)
    assert fc.net.time_features == ("hour", "yearday")
    again = Forecaster.load(fc.save(tmp_path / "m"))
    assert again.net.time_features == ("hour", "yearday")
    np.testing.assert_array_equal(again.predict(data)["temperature"].values, fc.predict(data)["temperature"].values)
    with pytest.raises(ValueError, match=r"time_features: unknown \['moon'\]"):
        Forecaster(time_features=["moon"])
