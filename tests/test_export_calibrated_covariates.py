"""Export of a forecaster with covariates, and of a calibrated quantile forecaster: the files (TorchScript; ONNX
through onnxruntime, slow) match ``Forecaster.predict_windows`` / ``predict_quantiles`` within 1e-4 relative on real
windows (the NREL TMY3 pair: temperature with dew point and pressure as covariates), the graph reads the
covariates in the sidecar's order, and it applies the calibration (it differs from the raw network's levels by what
the calibration changes)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from urlk_forecast.data.windows import WindowDataset
from urlk_forecast.export import COVARIATE_NAMES, INPUT_NAMES, ExportedForecaster, export_forecaster, read_sidecar
from urlk_forecast.forecaster import Forecaster

TINY = dict(d_model=32, n_heads=4, node_size=4, dims=(8, 16, 32, 64), kernel_size=7)
LEVELS = (0.1, 0.5, 0.9)
COVARIATES = ("dew_point", "pressure")
RTOL = 1e-4
GAP = slice(3000, 3100)  # hours during which the second model station reports nothing (target and covariates)
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"),
              pytest.mark.skipif(importlib.util.find_spec("pvlib") is None, reason="needs the real TMY3 series")]


@pytest.fixture(scope="module")
def data():
    from urlk_forecast.data.real_samples import load_series

    return load_series("tmy3")


def _fit(ds, **kw) -> Forecaster:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fc = Forecaster("unireplknet_a", "temperature", **TINY, **kw)
        fc.fit(ds, max_steps=3, batch_size=8, lr=2e-3, progress=False, val_windows=8, seed=0)
    finally:
        torch.set_num_threads(n)
    return fc


@pytest.fixture(scope="module")
def quantile_cov(data):
    """Covariates and quantiles, calibrated by fit on its validation windows."""
    fc = _fit(data, inputs=COVARIATES, quantiles=LEVELS)
    assert fc.calibration is not None and not np.allclose(fc.calibration.factors, 1.0)
    return fc


def _windows(fc, ds, meta):
    """Real windows in the sidecar's station and covariate order, the second station blanked (target and
    covariates) during GAP, so that some windows have a station with nothing observed."""
    ds = ds.copy(deep=True)
    stations = meta["stations"]["station"]
    col = [str(s) for s in ds["station"].values].index(stations[1])
    for v in ("temperature", *COVARIATES):
        vals = ds[v].transpose("time", "station").values.copy()
        vals[GAP, col] = np.nan
        ds[v] = (("time", "station"), vals, ds[v].attrs)
    pos = {str(s): i for i, s in enumerate(ds["station"].values)}
    return WindowDataset(ds, "temperature", fc.seq_len, fc.label_len, fc.pred_len, max_gap=fc.max_gap,
                         order=np.asarray([pos[s] for s in stations]), inputs=meta["covariates"])


def _indices(ws):
    spread = np.linspace(0, len(ws) - 1, 9).astype(int)
    blank = np.arange(GAP.start + 5, GAP.start + 10)
    return np.unique(np.concatenate([spread, blank[blank < len(ws)]]))


def _assert_parity(out, ref):
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=RTOL * np.nanmax(np.abs(ref)), equal_nan=True)


def test_point_model_with_covariates_exports_and_matches(data, tmp_path):
    fc = _fit(data, inputs=COVARIATES)
    result = fc.export(tmp_path / "m.pt", "torchscript")
    meta = read_sidecar(result.path)
    assert meta["covariates"] == list(COVARIATES) and meta["variables"] == ["temperature", *COVARIATES]
    assert [i["name"] for i in meta["inputs"]] == [*INPUT_NAMES, *COVARIATE_NAMES]
    S = len(fc.station_ids)
    assert meta["inputs"][4]["shape"] == ["batch", 48, S, 2] and meta["inputs"][5]["dtype"] == "bool"
    assert meta["inputs"][4]["units"] == ["degC", None]  # pressure: not a registry variable
    assert meta["quantile_calibration"] is None
    ws = _windows(fc, data, meta)
    idx = _indices(ws)
    ref = fc.predict_windows(ws, idx)
    assert np.isnan(ref).any() and np.isfinite(ref).any()
    module = torch.jit.load(str(result.path))
    batch = ws.batch(idx[:4])
    with torch.no_grad():
        out = module(*(batch[k] for k in (*INPUT_NAMES, *COVARIATE_NAMES))).numpy()
    _assert_parity(out, ref[:4])
    _assert_parity(ExportedForecaster(result.path)(ws.batch(idx)), ref)
    # the covariates matter in the graph: other covariate values, another forecast
    b2 = dict(batch)
    b2["x_cov"] = batch["x_cov"] + 10.0 * torch.randn_like(batch["x_cov"])
    with torch.no_grad():
        moved = module(*(b2[k] for k in (*INPUT_NAMES, *COVARIATE_NAMES))).numpy()
    assert np.nanmax(np.abs(moved - out)) > 1e-3


def test_calibrated_quantile_model_with_covariates_exports_the_calibrated_levels(quantile_cov, data, tmp_path):
    fc = quantile_cov
    result = fc.export(tmp_path / "q.pt", "torchscript")
    meta = read_sidecar(result.path)
    assert meta["quantiles"] == list(LEVELS) and meta["covariates"] == list(COVARIATES)
    assert meta["quantile_calibration"]["factors"] == fc.calibration.factors.tolist()
    ws = _windows(fc, data, meta)
    idx = _indices(ws)
    ref = fc.predict_quantiles(ws, idx)  # calibrated
    raw = fc._forecast_windows(ws, idx, 32)  # the network's own levels
    out = ExportedForecaster(result.path)(ws.batch(idx))
    _assert_parity(out, ref)
    assert np.nanmax(np.abs(out - raw)) > 100 * RTOL * np.nanmax(np.abs(ref))  # the calibration is in the graph
    assert (np.diff(out, axis=-1)[np.isfinite(out[..., 0])] >= 0).all()


@pytest.mark.slow
def test_onnx_of_the_calibrated_covariate_quantile_model(quantile_cov, data, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    fc = quantile_cov
    result = export_forecaster(fc, tmp_path / "q.onnx", "onnx")
    meta = read_sidecar(result.path)
    assert meta["check"]["relative_error"] <= RTOL
    ws = _windows(fc, data, meta)
    idx = _indices(ws)
    ref = fc.predict_quantiles(ws, idx)
    sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert names == [*INPUT_NAMES, *COVARIATE_NAMES]
    for part in (idx[:5], idx[5:]):
        batch = ws.batch(part)
        out = sess.run(["forecast"], {k: batch[k].numpy() for k in names})[0]
        _assert_parity(out, ref[np.searchsorted(idx, part)])
