"""Export (ONNX, TorchScript): parity of the exported files with Forecaster.predict_windows on real windows, the
standard depthwise convolution in the graph, the sidecar, all-or-nothing writes, the forecaster left untouched, the
CLI command."""

from __future__ import annotations

import copy
import importlib.util
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from urlk_forecast.cli import cli
from urlk_forecast.data.synthetic import synthetic_global
from urlk_forecast.data.windows import WindowDataset
from urlk_forecast.export import (
    EXPORT_FORMAT,
    INPUT_NAMES,
    ExportedForecaster,
    export_forecaster,
    read_sidecar,
    sidecar_path,
)
from urlk_forecast.forecaster import Forecaster

TINY = dict(d_model=32, n_heads=4, node_size=4, dims=(8, 16, 32, 64), kernel_size=7)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
RTOL = 1e-4  # the parity requirement, relative to the largest forecast
GAP = slice(3000, 3100)  # hours during which the second model station reports nothing


def _real_data():
    """The two NREL TMY3 stations of the pvlib wheel (real hourly temperature), else the synthetic set."""
    if importlib.util.find_spec("pvlib") is not None:
        from urlk_forecast.data.real_samples import load_series

        return load_series("tmy3")
    return synthetic_global(stations=6, hours=24 * 20, seed=0, variables=("temperature",))


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = _real_data()
        fc = Forecaster("unireplknet_a", "temperature", **TINY)
        fc.fit(ds, max_steps=3, batch_size=8, lr=2e-3, progress=False, val_windows=8, seed=0)
    finally:
        torch.set_num_threads(n)
    return fc, ds


def _windows(fc, ds, station_ids):
    """Real windows in the station order ``station_ids`` (the sidecar's), the second station blanked during GAP
    so that some windows have a station with nothing observed."""
    ds = ds.copy(deep=True)
    col = [str(s) for s in ds["station"].values].index(station_ids[1])
    vals = ds["temperature"].transpose("time", "station").values.copy()
    vals[GAP, col] = np.nan
    ds["temperature"] = (("time", "station"), vals, ds["temperature"].attrs)
    pos = {str(s): i for i, s in enumerate(ds["station"].values)}
    return WindowDataset(ds, fc.variable, fc.seq_len, fc.label_len, fc.pred_len, max_gap=fc.max_gap,
                         order=np.asarray([pos[s] for s in station_ids]))


def _indices(ws):
    """Windows spread over the year plus some whose whole input lies in GAP (nothing observed for one station)."""
    spread = np.linspace(0, len(ws) - 1, 9).astype(int)
    blank = np.arange(GAP.start + 5, GAP.start + 10)  # inputs [start, start + 48) inside the 100-hour gap
    return np.unique(np.concatenate([spread, blank[blank < len(ws)]]))


def _assert_parity(out, ref):
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=RTOL * np.nanmax(np.abs(ref)), equal_nan=True)


def _depthwise_in(net):
    """Depthwise convolutions of the re-parameterised network (the count the graph must hold)."""
    net = copy.deepcopy(net).eval()
    net.reparameterize()
    return sorted(m.in_channels for m in net.modules()
                  if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels == m.out_channels > 1)


# ------------------------------------------------------------------------------------------------ TorchScript
@pytest.fixture(scope="module")
def torchscript(trained, tmp_path_factory):
    fc, _ = trained
    before = {k: v.clone() for k, v in fc.net.state_dict().items()}
    result = fc.export(tmp_path_factory.mktemp("ts") / "model.pt", "torchscript")
    return result, before


def test_torchscript_matches_predict_windows_on_real_windows(trained, torchscript):
    fc, ds = trained
    result, _ = torchscript
    meta = read_sidecar(result.path)
    ws = _windows(fc, ds, meta["stations"]["station"])
    idx = _indices(ws)
    ref = fc.predict_windows(ws, idx)
    assert np.isnan(ref).any() and np.isfinite(ref).any()  # windows with an unobserved station are included
    module = torch.jit.load(str(result.path))
    for part in (idx[:4], idx[4:]):  # two batch sizes, neither the traced one
        batch = ws.batch(part)
        with torch.no_grad():
            out = module(*(batch[k] for k in INPUT_NAMES)).numpy()
        _assert_parity(out, ref[np.searchsorted(idx, part)])
    _assert_parity(ExportedForecaster(result.path)(ws.batch(idx)), ref)


def test_torchscript_graph_holds_standard_depthwise_convs(trained, torchscript):
    fc, _ = trained
    result, _ = torchscript
    graph = torch.jit.load(str(result.path)).inlined_graph
    kinds = [n.kind() for n in graph.nodes()]
    assert "prim::PythonOp" not in kinds  # not our numba op
    groups = sorted(list(n.inputs())[8].toIValue() for n in graph.nodes() if n.kind() == "aten::_convolution")
    assert [g for g in groups if g > 1] == _depthwise_in(fc.net)


def test_export_leaves_the_forecaster_untouched(trained, torchscript):
    fc, _ = trained
    _, before = torchscript
    after = fc.net.state_dict()
    assert fc.reparameterized is False and not fc.net.reparameterized
    assert list(after) == list(before)  # the training form (branches, BatchNorms) is still there
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(p.requires_grad for p in fc.net.parameters())


def test_sidecar(trained, torchscript):
    fc, _ = trained
    result, _ = torchscript
    assert result.sidecar == sidecar_path(result.path) == result.path.with_name("model.pt.json")
    meta = json.loads(result.sidecar.read_text())
    assert meta == result.info
    S = len(fc.station_ids)
    assert meta["format"] == EXPORT_FORMAT and meta["file"] == "model.pt" and meta["file_format"] == "torchscript"
    assert meta["variable"] == "temperature" and meta["variables"] == ["temperature"] and meta["units"] == "degC"
    assert (meta["seq_len"], meta["label_len"], meta["pred_len"]) == (48, 24, 24)
    assert meta["frequency"] == "0 days 01:00:00" and meta["n_stations"] == S
    assert meta["stations"]["station"] == [str(s) for s in fc.station_ids]
    assert meta["stations"]["lat"] == fc.stations["lat"] and meta["stations"]["lon"] == fc.stations["lon"]
    assert [(i["name"], i["shape"], i["dtype"]) for i in meta["inputs"]] == [
        ("x", ["batch", 48, S], "float32"), ("x_mark", ["batch", 48, 4], "float32"),
        ("y_mark", ["batch", 48, 4], "float32"), ("x_mask", ["batch", 48, S], "bool")]
    assert meta["outputs"][0]["shape"] == ["batch", 24, S] and meta["outputs"][0]["units"] == "degC"
    assert meta["time_features"]["function"] == "urlk_forecast.data.windows.time_features"
    assert len(meta["time_features"]["columns"]) == 4
    assert meta["normalisation"]["in_graph"] is True and "RevIN" in meta["normalisation"]["method"]
    assert meta["depthwise_conv"]["op_path"] == "torch"
    assert meta["depthwise_conv"]["count"] == len(_depthwise_in(fc.net))
    assert meta["torch_version"] == torch.__version__ and meta["reparameterized"] is True
    assert meta["check"]["relative_error"] <= RTOL and "NaN" in meta["missing"]


# ------------------------------------------------------------------------------------------------------ ONNX
# the ONNX export takes ~15 s on one core (torch.export, then the translation): slow tests
@pytest.fixture(scope="module")
def onnx_file(trained, tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    fc, _ = trained
    return export_forecaster(fc, tmp_path_factory.mktemp("onnx") / "model.onnx", "onnx")


@pytest.mark.slow
def test_onnx_matches_predict_windows_on_real_windows(trained, onnx_file):
    ort = pytest.importorskip("onnxruntime")
    fc, ds = trained
    meta = read_sidecar(onnx_file.sidecar)
    assert meta["file_format"] == "onnx" and meta["opset"] == 18 and meta["check"]["relative_error"] <= RTOL
    ws = _windows(fc, ds, meta["stations"]["station"])
    idx = _indices(ws)
    ref = fc.predict_windows(ws, idx)
    sess = ort.InferenceSession(str(onnx_file.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(INPUT_NAMES)
    assert all(isinstance(i.shape[0], str) for i in sess.get_inputs())  # dynamic batch axis
    for part in (idx[:5], idx[5:], idx[:1]):
        batch = ws.batch(part)
        out = sess.run(["forecast"], {k: batch[k].numpy() for k in INPUT_NAMES})[0]
        _assert_parity(out, ref[np.searchsorted(idx, part)])


@pytest.mark.slow
def test_onnx_graph_holds_standard_depthwise_convs(trained, onnx_file):
    onnx = pytest.importorskip("onnx")
    fc, _ = trained
    model = onnx.load(str(onnx_file.path))
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    depthwise = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group > 1:
            w = inits[node.input[1]]
            assert w[0] == group and w[1] == 1  # (C, 1, K, K): depthwise, group == channels
            depthwise.append(group)
    assert sorted(depthwise) == _depthwise_in(fc.net) and depthwise
    assert not [n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")]  # standard ops only


# ---------------------------------------------------------------------------------------------- failure cases
def test_failed_export_writes_nothing_and_keeps_old_files(trained, tmp_path, monkeypatch):
    fc, _ = trained
    dest = tmp_path / "model.pt"
    dest.write_bytes(b"old model")
    sidecar_path(dest).write_text("old sidecar")

    def broken(*args, **kwargs):
        raise RuntimeError("check failed")

    monkeypatch.setattr("urlk_forecast.export._check", broken)
    with pytest.raises(RuntimeError, match="check failed"):
        fc.export(dest, "torchscript")
    assert dest.read_bytes() == b"old model" and sidecar_path(dest).read_text() == "old sidecar"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.json"]  # no temporaries left


def test_bad_arguments(trained, tmp_path):
    fc, _ = trained
    with pytest.raises(ValueError, match="format must be one of onnx, torchscript"):
        fc.export(tmp_path / "m.x", "tflite")
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        fc.export(tmp_path, "torchscript")
    with pytest.raises(RuntimeError, match="not trained"):
        Forecaster("unireplknet_a").export(tmp_path / "m.pt", "torchscript")
    with pytest.raises(FileNotFoundError, match="no export sidecar"):
        read_sidecar(tmp_path / "none.onnx")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def run_dir(trained, tmp_path_factory):
    fc, _ = trained
    run = tmp_path_factory.mktemp("runs") / "r1"
    fc.save(run / "model")
    return run


def test_cli_export_torchscript(run_dir):
    res = CliRunner().invoke(cli, ["export", "--run", str(run_dir), "--format", "torchscript"])
    assert res.exit_code == 0, res.output
    out = run_dir / "model.pt"
    assert out.is_file() and sidecar_path(out).is_file()
    assert f"wrote {out}" in res.output and str(sidecar_path(out)) in res.output and "parity" in res.output
    assert read_sidecar(out)["file_format"] == "torchscript"


def test_cli_export_errors(run_dir, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["export", "--run", str(tmp_path / "nope"), "--format", "onnx"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "Error: --run" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(cli, ["export", "--run", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "m.pt")])
    assert res.exit_code == 1 and "--out" in res.output and ".onnx" in res.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_export_onnx(run_dir, tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "sub" / "m.onnx"
    res = CliRunner().invoke(cli, ["export", "--run", str(run_dir / "model"), "--format", "onnx", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "opset 18" in res.output and out.is_file() and read_sidecar(out)["check"]["relative_error"] <= RTOL
