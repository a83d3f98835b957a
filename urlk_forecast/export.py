"""Export a trained :class:`~urlk_forecast.forecaster.Forecaster` to ONNX or TorchScript, with a JSON sidecar.

:func:`export_forecaster` (also ``Forecaster.export``) writes the *re-parameterised* forecasting network (a deep
copy: the caller's forecaster is never changed) as one file, and beside it ``<file>.json``, the sidecar that says how
to feed it: variable, units, window lengths, frequency, station ids in model order with lat/lon, input names, shapes
and dtypes, how the time features are computed, and where the normalisation happens (RevIN, inside the graph).
Both files are written to temporaries first and moved into place together, only after the exported file has been
run and matched the Python model (``check=True``), so a failed export leaves nothing behind.

The exported function is ``forecast = f(x, x_mark, y_mark, x_mask)`` -- exactly what ``Forecaster.predict_windows``
computes for one batch of windows, the NaN for a station with no observed input included:

* ``x`` float32 (batch, seq_len, S): the last ``seq_len`` values in physical units, stations in model order;
* ``x_mark`` float32 (batch, seq_len, 4), ``y_mark`` float32 (batch, label_len + pred_len, 4): time features;
* ``x_mask`` bool (batch, seq_len, S): True where ``x`` is observed (or a short interpolated gap);
* ``forecast`` float32 (batch, pred_len, S) in physical units. The batch axis is dynamic. A quantile forecaster
  exports its quantile output, ``(batch, pred_len, S, Q)`` non-decreasing along Q, and the sidecar lists the levels
  (``"quantiles"``, also on the output's entry); the median is the level 0.5. When the forecaster is calibrated
  (``Forecaster.calibration``, :mod:`urlk_forecast.calibration`) the graph applies the calibration, so the file
  forecasts what ``Forecaster.predict_quantiles`` does (the sidecar's ``"quantile_calibration"`` has the factors).
* A forecaster with covariates (``inputs``) reads two more inputs, ``x_cov`` float32 and ``x_cov_mask`` bool
  (batch, seq_len, S, K): the covariates' past values in physical units, in the order the sidecar's
  ``"covariates"`` lists them (normalised inside the graph, as the target).

Our depthwise op (:mod:`urlk_forecast.ops`) runs Python-level kernels that no exporter can record, so tracing
forces the torch path (:func:`~urlk_forecast.ops.use_backend` ``"torch"``): the graph holds standard depthwise
convolutions (ONNX ``Conv`` with ``group`` = channels, ``aten::_convolution`` with ``groups`` = channels), and the
export counts them against the network's depthwise convolutions.

ONNX goes through ``torch.onnx.export(dynamo=True)`` (needs ``onnx`` and ``onnxscript``; the TorchScript-based
exporter has no translation for the FFT of the auto-correlation), with a translation of the stable sort of the
spatial cross-correlation as an ONNX ``TopK`` (which breaks ties by index, i.e. is stable). TorchScript goes through
``torch.jit.trace``. Running an ONNX file needs ``onnxruntime`` (the ``export`` extra); :class:`ExportedForecaster`
runs either kind of file on window batches.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import __version__
from .calibration import apply_factors
from .data.variables import REGISTRY
from .data.windows import time_features
from .models.embedding import RevIN
from .ops import use_backend
from .utils import atomic_path, to_jsonable


class Forecaster(Protocol):
    """What export reads of a trained :class:`~urlk_forecast.forecaster.Forecaster` (which imports this module
    for ``Forecaster.export``, so the class itself is not imported here)."""

    name: str
    model: str
    variable: str
    seq_len: int
    label_len: int
    pred_len: int
    max_gap: int
    frequency: pd.Timedelta | None
    stations: dict[str, Any] | None
    train_info: dict[str, Any]
    net: nn.Module | None
    quantiles: tuple[float, ...] | None
    inputs: tuple[str, ...]
    calibration: Any  # urlk_forecast.calibration.QuantileCalibration | None

__all__ = ["ExportedForecaster", "ExportResult", "ExportNet", "export_forecaster", "read_sidecar", "sidecar_path",
           "EXPORT_FORMAT", "EXPORT_FORMAT_VERSION", "FORMATS", "INPUT_NAMES", "COVARIATE_NAMES", "OUTPUT_NAME",
           "ONNX_OPSET", "PARITY_RTOL", "input_names"]

EXPORT_FORMAT = "urlk-forecast-export"
EXPORT_FORMAT_VERSION = 1
FORMATS = ("onnx", "torchscript")
INPUT_NAMES = ("x", "x_mark", "y_mark", "x_mask")
COVARIATE_NAMES = ("x_cov", "x_cov_mask")  # the two further inputs of a forecaster with covariates
OUTPUT_NAME = "forecast"
ONNX_OPSET = 18
#: the export check: max |exported - Python| <= PARITY_RTOL * max |Python| over the check batch
PARITY_RTOL = 1e-4
_TRACE_BATCH, _CHECK_BATCH = 2, 3  # different sizes, so the check also proves the batch axis is dynamic
_TIME_FEATURES = ["hour / 23 - 0.5", "day_of_week / 6 - 0.5  (Monday = 0)", "(day_of_month - 1) / 30 - 0.5",
                  "(day_of_year - 1) / 365 - 0.5"]


# ------------------------------------------------------------------------------------------------- the graph
def input_names(fc: Forecaster) -> tuple[str, ...]:
    """The exported graph's inputs, in order: :data:`INPUT_NAMES`, then :data:`COVARIATE_NAMES` with covariates."""
    return INPUT_NAMES + (COVARIATE_NAMES if getattr(fc, "inputs", ()) else ())


class ExportNet(nn.Module):
    """``forecast = ExportNet(net)(x, x_mark, y_mark, x_mask)``: the forecasting network with positional inputs and
    the NaN of ``Forecaster.predict_windows`` for a station with no observed, finite input in the window; with
    ``calibration`` (factors ``(pred_len, Q)`` and the median's index) the quantile calibration applied after it,
    as ``Forecaster.predict_quantiles`` does."""

    def __init__(self, net: nn.Module, calibration: tuple[torch.Tensor, int] | None = None) -> None:
        super().__init__()
        self.net = net
        self.median_index = None if calibration is None else int(calibration[1])
        if calibration is not None:
            self.register_buffer("calibration_factors", calibration[0].float())

    def _forecast(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.net(batch).float()
        empty = RevIN.no_observation(batch["x"], batch["x_mask"])  # (B, S)
        empty = empty.reshape(empty.shape[0], 1, empty.shape[1], *([1] * (out.dim() - 3)))  # (+ a quantile axis)
        out = torch.where(empty, torch.full_like(out, float("nan")), out)
        if self.median_index is not None:
            out = apply_factors(out, self.calibration_factors, self.median_index)
        return out

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor, y_mark: torch.Tensor,
                x_mask: torch.Tensor) -> torch.Tensor:
        return self._forecast({"x": x, "x_mark": x_mark, "y_mark": y_mark, "x_mask": x_mask})


class CovariateExportNet(ExportNet):
    """:class:`ExportNet` of a network with covariates: ``forecast = f(x, x_mark, y_mark, x_mask, x_cov,
    x_cov_mask)``, the covariates (B, seq_len, S, K) in the forecaster's ``inputs`` order."""

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor, y_mark: torch.Tensor,  # type: ignore[override]
                x_mask: torch.Tensor, x_cov: torch.Tensor, x_cov_mask: torch.Tensor) -> torch.Tensor:
        return self._forecast({"x": x, "x_mark": x_mark, "y_mark": y_mark, "x_mask": x_mask, "x_cov": x_cov,
                               "x_cov_mask": x_cov_mask})


def inference_copy(fc: Forecaster) -> ExportNet:
    """A re-parameterised, frozen CPU copy of ``fc``'s network wrapped in :class:`ExportNet` (``fc`` untouched;
    :class:`CovariateExportNet` for a forecaster with covariates), with ``fc``'s quantile calibration when it has
    one."""
    net = fc.net
    if net is None or fc.stations is None:
        raise RuntimeError("this Forecaster is not trained yet: call fit(data) or Forecaster.load(dir) before export")
    if getattr(net, "fusion", None) is not None:
        raise ValueError("export supports networks without a fusion input (this one reads an auxiliary input)")
    net = copy.deepcopy(net).cpu().eval()
    if not getattr(net, "reparameterized", False):
        net.reparameterize()
    for p in net.parameters():
        p.requires_grad_(False)
    cal = getattr(fc, "calibration", None) if fc.quantiles is not None else None
    calibration = None if cal is None else (torch.as_tensor(cal.factors, dtype=torch.float32), cal.median_index)
    wrapper = CovariateExportNet if getattr(fc, "inputs", ()) else ExportNet
    return wrapper(net, calibration).eval()


def example_inputs(fc: Forecaster, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Plausible inputs for tracing and the export check: a diurnal cycle plus noise around the variable's typical
    value, about 10 % of the values unobserved, one station with nothing observed, hourly-like time features."""
    g = np.random.default_rng(seed)
    S, L, P, Q = len(fc.stations["station"]), fc.seq_len, fc.label_len, fc.pred_len
    freq = fc.frequency if fc.frequency is not None else pd.Timedelta(hours=1)
    level, spread = (12.0, 8.0) if fc.variable == "temperature" else (4.0, 2.0)
    starts = pd.Timestamp("2020-01-01") + freq * g.integers(0, 24 * 365, size=batch)
    marks = [time_features(pd.date_range(s, periods=L + Q, freq=freq)) for s in starts]
    hours = np.stack([pd.date_range(s, periods=L, freq=freq).hour.to_numpy() for s in starts])[:, :, None]
    x = level + spread * (g.standard_normal((batch, 1, S)) + 0.5 * np.sin(2 * np.pi * hours / 24))
    x = x + 0.3 * g.standard_normal((batch, L, S))
    mask = g.random((batch, L, S)) > 0.1
    mask[:, :, 0] = False  # nothing observed: the exported graph must say NaN there
    out = {"x": torch.as_tensor(x, dtype=torch.float32),
           "x_mark": torch.as_tensor(np.stack([m[:L] for m in marks])),
           "y_mark": torch.as_tensor(np.stack([m[L - P:] for m in marks])),
           "x_mask": torch.as_tensor(mask)}
    K = len(getattr(fc, "inputs", ()) or ())
    if K:  # covariates around their training spread (input_scale), ~10 % unobserved
        scale = np.asarray(getattr(fc.net, "input_scale", torch.ones(K)).cpu(), np.float64).clip(min=0.1)
        cov = 5.0 + scale * (g.standard_normal((batch, 1, S, K)) + 0.3 * g.standard_normal((batch, L, S, K)))
        out["x_cov"] = torch.as_tensor(cov, dtype=torch.float32)
        out["x_cov_mask"] = torch.as_tensor(g.random((batch, L, S, K)) > 0.1)
    return out


def _args(batch: Mapping[str, Any], names: tuple[str, ...] = INPUT_NAMES) -> tuple[torch.Tensor, ...]:
    """The positional inputs ``names`` of :class:`ExportNet` from a window batch (``WindowDataset.batch`` keys)."""
    missing = [k for k in names if k not in batch]
    if missing:
        raise KeyError(f"the batch lacks {', '.join(missing)} (the exported model reads {', '.join(names)})")
    out = [torch.as_tensor(np.asarray(batch[k])) for k in names]
    return tuple(t.bool() if k.endswith("_mask") else t.float() for k, t in zip(names, out))


def count_depthwise(module: nn.Module) -> int:
    """Depthwise convolutions (``groups == in == out channels > 1``) of ``module``."""
    return sum(1 for m in module.modules() if isinstance(m, nn.Conv2d)
               and m.groups == m.in_channels == m.out_channels and m.groups > 1)


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """The torch depthwise path, and the tracers' warnings about constant shapes silenced (the export check runs
    the file on another batch size and against the Python model instead)."""
    with warnings.catch_warnings(), use_backend("torch"), torch.no_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*(axis name|LeafSpec|torchvision|TorchScript).*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


# --------------------------------------------------------------------------------------------------- writers
def _onnx_sort_stable(self: Any, *, stable: Any = None, dim: int = -1, descending: bool = False) -> Any:
    """``aten.sort.stable`` as an ONNX ``TopK`` over the whole axis (ties broken by index, i.e. stable)."""
    from onnxscript import opset18 as op  # optional dependency of the ONNX export only

    n = op.Gather(op.Shape(self), op.Constant(value_ints=[dim]))
    return op.TopK(self, n, axis=dim, largest=int(bool(descending)), sorted=1)


def _onnx_program(model: ExportNet, example: tuple[torch.Tensor, ...], batch: Any) -> Any:
    """``torch.onnx.export(dynamo=True)`` of ``model`` with a dynamic batch axis (an ``ONNXProgram``)."""
    names = INPUT_NAMES + (COVARIATE_NAMES if isinstance(model, CovariateExportNet) else ())
    with _quiet_tracing():
        return torch.onnx.export(
            model, example, None, input_names=list(names), output_names=[OUTPUT_NAME], dynamo=True,
            dynamic_shapes={k: {0: batch} for k in names}, opset_version=ONNX_OPSET, verbose=False,
            custom_translation_table={torch.ops.aten.sort.stable: _onnx_sort_stable})


def _write_onnx(model: ExportNet, example: tuple[torch.Tensor, ...], dest: Path) -> dict[str, Any]:
    """Export ``model`` to ONNX at ``dest`` (dynamic batch); returns the graph facts for the sidecar."""
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            raise ImportError(f"ONNX export needs the {name!r} package: pip install 'urlk-forecast[export]'") from None
    batch = torch.export.Dim("batch")
    registry_log = logging.getLogger("torch.onnx")  # "torchvision is not installed" notes, not ours to act on
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        program = _onnx_program(model, example, batch)
    finally:
        registry_log.setLevel(level)
    program.save(dest, external_data=False)
    proto = program.model_proto
    inits = {i.name: list(i.dims) for i in proto.graph.initializer}
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in proto.graph.node if n.op_type == "Conv"]
    weights = [inits.get(n.input[1]) for n in proto.graph.node if n.op_type == "Conv"]
    depthwise = sum(1 for g, w in zip(groups, weights) if g > 1 and w is not None and w[0] == g and w[1] == 1)
    return {"exporter": "torch.onnx.export(dynamo=True)", "opset": ONNX_OPSET, "depthwise_convs": depthwise,
            "graph_op": "Conv (group = channels)", "python_ops": 0}


def _traced_attr(value: Any, root: nn.Module) -> Any:
    """The module attribute a traced graph value reads through a chain of ``prim::GetAttr`` (None otherwise)."""
    node = value.node()
    if node.kind() != "prim::GetAttr":
        return root if value.debugName().startswith("self") else None
    parent = _traced_attr(node.input(), root)
    return getattr(parent, node.s("name"), None) if parent is not None else None


def _write_torchscript(model: ExportNet, example: tuple[torch.Tensor, ...], dest: Path) -> dict[str, Any]:
    """Trace ``model`` with ``torch.jit.trace`` and save it at ``dest``; returns the graph facts for the sidecar."""
    with _quiet_tracing():
        traced = torch.jit.trace(model, example, check_trace=False)
    depthwise = python_ops = 0
    for node in traced.inlined_graph.nodes():
        if node.kind() == "prim::PythonOp":
            python_ops += 1
        elif node.kind() in ("aten::_convolution", "aten::conv2d"):
            ins = list(node.inputs())
            groups = ins[8 if node.kind() == "aten::_convolution" else 6].toIValue()
            weight = _traced_attr(ins[1], traced)
            if groups and groups > 1 and isinstance(weight, torch.Tensor) and weight.dim() == 4 \
                    and weight.shape[0] == groups and weight.shape[1] == 1:
                depthwise += 1
    if python_ops:
        raise RuntimeError(f"the traced graph holds {python_ops} Python op(s); it cannot be exported")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.jit is deprecated, still works
        torch.jit.save(traced, str(dest))
    return {"exporter": "torch.jit.trace", "opset": None, "depthwise_convs": depthwise,
            "graph_op": "aten::_convolution (groups = channels)", "python_ops": python_ops}


# --------------------------------------------------------------------------------------------------- sidecar
def sidecar_path(path: str | Path) -> Path:
    """The sidecar of an exported file: ``<path>.json`` (``model.onnx`` → ``model.onnx.json``)."""
    return Path(str(path) + ".json")


def _units(fc: Forecaster) -> str:
    """The forecast variable's units: those of the data it was trained on (the registry's for older models)."""
    units = getattr(fc, "units", None)
    return str(units) if units else REGISTRY[fc.variable].units if fc.variable in REGISTRY else ""


def _covariate_units(variable: str) -> str | None:
    """A covariate's units: the variable registry's (the forecaster keeps only its target's from the data)."""
    return REGISTRY[variable].units if variable in REGISTRY else None


def _io_spec(fc: Forecaster) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    S, L, P, Q = len(fc.stations["station"]), fc.seq_len, fc.label_len, fc.pred_len
    units = _units(fc)
    inputs = [
        {"name": "x", "shape": ["batch", L, S], "dtype": "float32", "units": units,
         "description": f"the last seq_len values of {fc.variable}, stations in model order; gaps of at most max_gap "
                        "steps linearly interpolated, longer ones (and a gap still open at the end) hold the last "
                        "value; no NaN needed (a NaN is treated as unobserved)"},
        {"name": "x_mark", "shape": ["batch", L, 4], "dtype": "float32",
         "description": "time features of the seq_len input times"},
        {"name": "y_mark", "shape": ["batch", P + Q, 4], "dtype": "float32",
         "description": "time features of the last label_len input times followed by the pred_len forecast times"},
        {"name": "x_mask", "shape": ["batch", L, S], "dtype": "bool",
         "description": "True where x is observed (or an interpolated short gap); all True if unknown"},
    ]
    covariates = list(getattr(fc, "inputs", ()) or ())
    if covariates:
        K = len(covariates)
        inputs += [
            {"name": "x_cov", "shape": ["batch", L, S, K], "dtype": "float32", "variables": covariates,
             "units": [_covariate_units(v) for v in covariates],
             "description": f"the last seq_len values of the covariates {', '.join(covariates)} (last axis, in this "
                            "order), physical units, stations in model order; gaps as for x"},
            {"name": "x_cov_mask", "shape": ["batch", L, S, K], "dtype": "bool",
             "description": "True where x_cov is observed (or an interpolated short gap)"}]
    outputs = [{"name": OUTPUT_NAME, "shape": ["batch", Q, S], "dtype": "float32", "units": units,
                "description": f"{fc.variable} at the pred_len steps after the input, stations in model order; NaN "
                               "for a station with no observed, finite input in the window"}]
    levels = getattr(fc, "quantiles", None)
    if levels is not None:
        outputs[0].update(shape=["batch", Q, S, len(levels)], quantiles=list(levels),
                          description=outputs[0]["description"] + "; last axis: the quantile levels listed in "
                          "'quantiles' (non-decreasing along it; the median is level 0.5)")
    return inputs, outputs


def build_sidecar(fc: Forecaster, fmt: str, file_name: str, graph: Mapping[str, Any],
                  check: Mapping[str, Any] | None) -> dict[str, Any]:
    """The sidecar dictionary of an export of ``fc`` (see the module docstring)."""
    st = fc.stations
    inputs, outputs = _io_spec(fc)
    return to_jsonable({
        "format": EXPORT_FORMAT, "version": EXPORT_FORMAT_VERSION, "file": file_name, "file_format": fmt,
        "model": fc.model, "name": fc.name, "variable": fc.variable,
        "variables": [fc.variable, *(getattr(fc, "inputs", ()) or ())],
        "covariates": list(getattr(fc, "inputs", ()) or ()),
        "quantiles": list(fc.quantiles) if getattr(fc, "quantiles", None) is not None else None,
        "quantile_calibration": _calibration_record(fc),
        "units": _units(fc),
        "seq_len": fc.seq_len, "label_len": fc.label_len, "pred_len": fc.pred_len, "max_gap": fc.max_gap,
        "frequency": str(fc.frequency) if fc.frequency is not None else None,
        "n_stations": len(st["station"]),
        "stations": {k: list(st[k]) for k in ("station", "lat", "lon", "elevation", "name") if k in st},
        "inputs": inputs, "outputs": outputs,
        "time_features": {"function": "urlk_forecast.data.windows.time_features", "columns": _TIME_FEATURES,
                          "times": "the data's time stamps as stored (UTC in the package schema)"},
        "normalisation": {"in_graph": True, "method": "RevIN: per window and station, mean/std of the observed "
                          "inputs (x_mask), learned affine per station slot, undone on the output; feed physical "
                          "units, read physical units"},
        "missing": "forecast is NaN for a station with no observed (x_mask True) and finite x in the window, as "
                   "Forecaster.predict_windows; computed inside the graph",
        "reparameterized": True,
        "depthwise_conv": {"op_path": "torch", "graph_op": graph["graph_op"], "count": graph["depthwise_convs"],
                           "note": "traced under urlk_forecast.ops.use_backend('torch'): F.conv2d(groups=C), "
                                   "not the own (numba) kernels"},
        "exporter": graph["exporter"], "opset": graph["opset"], "torch_version": torch.__version__,
        "urlk_forecast_version": __version__, "exported_at": pd.Timestamp.now(tz="UTC").isoformat(),
        "train_period": fc.train_info.get("train_period"), "check": dict(check) if check is not None else None,
    })


def _calibration_record(fc: Forecaster) -> dict[str, Any] | None:
    """The sidecar's record of the quantile calibration the graph applies (None: none applied)."""
    cal = getattr(fc, "calibration", None) if getattr(fc, "quantiles", None) is not None else None
    if cal is None:
        return None
    return {"applied_in_graph": True, "levels": list(cal.levels), "factors": cal.factors.tolist(),
            "method": "per lead and level, each quantile's gap toward the median (the next level inward) multiplied "
                      "by its factor, fitted on validation windows (urlk_forecast.calibration)"}


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar of the exported file ``path`` (or the sidecar file itself); errors name the file."""
    p = Path(path)
    side = p if p.suffix == ".json" else sidecar_path(p)
    if not side.is_file():
        raise FileNotFoundError(f"{side}: no export sidecar (write it with Forecaster.export)")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{side}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{side}: not an urlk-forecast export sidecar")
    if int(meta.get("version", 0)) > EXPORT_FORMAT_VERSION:
        raise ValueError(f"{side}: sidecar version {meta['version']} is newer than this urlk-forecast supports "
                         f"({EXPORT_FORMAT_VERSION})")
    return meta


# ----------------------------------------------------------------------------------------------- run a file
class ExportedForecaster:
    """An exported file ready to run on window batches: ``ExportedForecaster(path)(batch) -> (B, pred_len, S)``
    (``(B, pred_len, S, Q)`` for a quantile forecaster).

    ``fmt``: ``"onnx"`` (onnxruntime, CPU) or ``"torchscript"`` (``torch.jit.load``); default: the sidecar's, else
    from the suffix (``.onnx`` is ONNX). ``batch``: a mapping with ``x``, ``x_mark``, ``y_mark``, ``x_mask`` (and
    ``x_cov``, ``x_cov_mask`` for a model with covariates, in the sidecar's ``covariates`` order), e.g.
    ``WindowDataset.batch``; stations in the model's order, see the sidecar. ``names``: the inputs in order
    (default: the sidecar's, else :data:`INPUT_NAMES`).
    """

    def __init__(self, path: str | Path, fmt: str | None = None, names: tuple[str, ...] | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no exported model there")
        side = sidecar_path(self.path)
        meta = read_sidecar(side) if side.is_file() and (fmt is None or names is None) else None
        if fmt is None:
            fmt = meta["file_format"] if meta is not None else (
                "onnx" if self.path.suffix.lower() == ".onnx" else "torchscript")
        if names is None:
            names = tuple(i["name"] for i in meta["inputs"]) if meta is not None else INPUT_NAMES
        self.names = tuple(names)
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
        self.fmt = fmt
        if fmt == "onnx":
            try:
                import onnxruntime  # optional dependency: only running an ONNX file needs it
            except ImportError:
                raise ImportError("running an ONNX file needs onnxruntime: pip install 'urlk-forecast[export]'"
                                  ) from None
            self._session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.jit is deprecated
                self._module = torch.jit.load(str(self.path), map_location="cpu").eval()

    def __call__(self, batch: Mapping[str, Any]) -> np.ndarray:
        args = _args(batch, self.names)
        if self.fmt == "onnx":
            return self._session.run([OUTPUT_NAME], {k: a.numpy() for k, a in zip(self.names, args)})[0]
        with torch.no_grad():
            return self._module(*args).numpy()


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """``max |out - ref| / max |ref|`` over finite ``ref`` (inf when the NaN patterns differ)."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    if out.shape != ref.shape or not np.array_equal(np.isnan(out), np.isnan(ref)):
        return float("inf")
    finite = ~np.isnan(ref)
    if not finite.any():
        return 0.0
    scale = max(float(np.abs(ref[finite]).max()), 1e-12)
    return float(np.abs(out[finite] - ref[finite]).max()) / scale


def _check(model: ExportNet, fc: Forecaster, fmt: str, tmp: Path) -> dict[str, Any]:
    """Run the exported file at ``tmp`` on a batch of another size than the trace's and compare with the Python
    copy; raises when they differ by more than :data:`PARITY_RTOL` (relative to the largest forecast)."""
    if fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401  # optional dependency: the check of an ONNX file needs it
        except ImportError:
            return {"skipped": "onnxruntime is not installed"}
    batch = example_inputs(fc, _CHECK_BATCH, seed=1)
    names = input_names(fc)
    with torch.no_grad():  # the op path users run (auto), not the one forced for tracing
        ref = model(*_args(batch, names)).numpy()
    out = ExportedForecaster(tmp, fmt, names)(batch)
    err = relative_error(out, ref)
    if not err <= PARITY_RTOL:
        raise RuntimeError(f"the exported {fmt} file differs from the Python model: relative error {err:.3g} > "
                           f"{PARITY_RTOL:g} on {_CHECK_BATCH} example windows; nothing was written")
    return {"batch": _CHECK_BATCH, "relative_error": err, "rtol": PARITY_RTOL,
            "inputs": "synthetic example windows (example_inputs), one station unobserved"}


# ---------------------------------------------------------------------------------------------------- export
@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_forecaster` wrote: the model file, its sidecar and the sidecar's contents."""

    path: Path
    sidecar: Path
    info: dict[str, Any]
    seconds: float


def export_forecaster(fc: Forecaster, path: str | Path, fmt: str = "onnx", *, check: bool = True) -> ExportResult:
    """Write ``fc``'s re-parameterised network to ``path`` as ``fmt`` (``"onnx"`` or ``"torchscript"``) and its
    sidecar to ``<path>.json`` (:func:`sidecar_path`); both appear together or not at all.

    ``check``: run the written file on example windows of another batch size and require a relative difference of
    at most :data:`PARITY_RTOL` from the Python model (for ONNX only when onnxruntime is installed).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    dest = Path(path)
    if dest.is_dir():
        raise IsADirectoryError(f"{dest}: is a directory, give a file name for the exported model")
    t0 = time.perf_counter()
    model = inference_copy(fc)
    expected = count_depthwise(model)
    example = _args(example_inputs(fc, _TRACE_BATCH), input_names(fc))
    side = sidecar_path(dest)
    with contextlib.ExitStack() as stack:  # both temporaries replace their targets only if everything succeeded
        tmp_model = stack.enter_context(atomic_path(dest))
        tmp_side = stack.enter_context(atomic_path(side))
        writer = _write_onnx if fmt == "onnx" else _write_torchscript
        graph = writer(model, example, tmp_model)
        if graph["depthwise_convs"] != expected:
            raise RuntimeError(f"the exported graph holds {graph['depthwise_convs']} standard depthwise "
                               f"convolution(s), the network {expected}; nothing was written")
        result = _check(model, fc, fmt, tmp_model) if check else None
        info = build_sidecar(fc, fmt, dest.name, graph, result)
        tmp_side.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return ExportResult(dest, side, info, time.perf_counter() - t0)
