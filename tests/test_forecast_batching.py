"""Forecasting batches windows by node images: a many-station window goes through the network alone, a small one in
batches, and the forecasts do not depend on how the windows were grouped."""

from __future__ import annotations

import numpy as np
import pytest

from urlk_forecast import forecaster as forecaster_module
from urlk_forecast.data.synthetic import synthetic_global
from urlk_forecast.data.windows import WindowDataset
from urlk_forecast.forecaster import Forecaster

TINY = dict(d_model=32, n_heads=4, node_size=4, dims=(8, 16, 32, 64), kernel_size=7)


@pytest.fixture(scope="module")
def fitted():
    ds = synthetic_global(stations=13, hours=24 * 12, seed=3, variables=("temperature",))
    fc = Forecaster("unireplknet_a", "temperature", **TINY)  # 13 stations in nodes of 4: 4 images per window
    fc.fit(ds, schedule="paper", max_steps=2, batch_size=4, progress=False, val_windows=4, seed=0)
    ws = WindowDataset(ds, "temperature", fc.seq_len, fc.label_len, fc.pred_len, max_gap=fc.max_gap)
    return fc, ws


def _forward_sizes(fc: Forecaster, monkeypatch) -> list[int]:
    sizes: list[int] = []
    run = fc._run

    def spy(batch):
        sizes.append(int(batch["x"].shape[0]))
        return run(batch)

    monkeypatch.setattr(fc, "_run", spy)
    return sizes


def test_windows_per_forward_follow_the_node_images(fitted, monkeypatch):
    fc, ws = fitted
    idx = np.arange(10)
    alone = np.stack([fc.predict_windows(ws, [i], batch_size=1)[0] for i in idx])  # reference: one window at a time
    sizes = _forward_sizes(fc, monkeypatch)
    monkeypatch.setattr(forecaster_module, "FORWARD_IMAGES", 8)  # 8 images = 2 windows of 4 images
    got = fc.predict_windows(ws, idx, batch_size=32)
    assert sizes == [2] * 5
    np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-5)
    sizes.clear()
    monkeypatch.setattr(forecaster_module, "FORWARD_IMAGES", 3)  # fewer images than one window: still one window
    fc.predict_windows(ws, idx[:3], batch_size=32)
    assert sizes == [1, 1, 1]
    sizes.clear()
    monkeypatch.setattr(forecaster_module, "FORWARD_IMAGES", 512)  # the default: the caller's batch size caps it
    fc.predict_windows(ws, idx, batch_size=4)
    assert sizes == [4, 4, 2]
