"""``urlk-forecast export``: write a trained run's re-parameterised network as ONNX or TorchScript, with its JSON
sidecar (``<out>.json``: variable, units, lengths, station order, inputs, time features), both or neither."""

from __future__ import annotations

from pathlib import Path

import click

from ..forecaster import Forecaster
from ..rundir import RunDir, find_model, runs_root
from .errors import user_errors
from .outputs import check_file_destination

__all__ = ["export"]

_FLAGS = {"format": "--format"}
_SUFFIXES = {"onnx": ((".onnx",), ".onnx"), "torchscript": ((".pt", ".pts", ".ts"), ".pt, .pts or .ts")}
_DEFAULT_NAME = {"onnx": "model.onnx", "torchscript": "model.pt"}


@click.command("export")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None,
              help="Run directory or saved model directory (default: the latest complete run under runs/).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True,
              help="onnx (torch.onnx dynamo exporter; run it with onnxruntime) or torchscript (torch.jit.trace).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="The exported file (default: <run>/model.onnx or <run>/model.pt); the sidecar is <out>.json.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Run the written file on example windows and require parity (1e-4 relative) with the model.")
def export(run_dir: Path | None, fmt: str, out: Path | None, check: bool) -> None:
    """Export a trained run's network (re-parameterised) to ONNX or TorchScript with a JSON sidecar."""
    with user_errors(_FLAGS):
        model_dir, base = _find_model(run_dir)
        out = Path(out) if out is not None else base / _DEFAULT_NAME[fmt]
        suffixes, what = _SUFFIXES[fmt]
        check_file_destination(out, "--out", suffixes, what)
        fc = Forecaster.load(model_dir)
        result = fc.export(out, fmt, check=check)
    info = result.info
    size = result.path.stat().st_size / 1e6
    opset = f", opset {info['opset']}" if info.get("opset") else ""
    parity = info.get("check") or {}
    if "relative_error" in parity:
        parity_text = (f"; parity with the model on {parity['batch']} example windows: relative error "
                       f"{parity['relative_error']:.2g}")
    else:
        parity_text = f"; not checked ({parity.get('skipped', 'disabled with --no-check')})"
    click.echo(f"wrote {result.path} ({fmt}{opset}, {size:.1f} MB) and {result.sidecar}: {info['model']} "
               f"{info['variable']} [{info['units']}], {info['n_stations']} stations, {info['seq_len']} steps in -> "
               f"{info['pred_len']} out, {info['depthwise_conv']['count']} standard depthwise convs (torch path)"
               f"{parity_text}")


def _find_model(run_dir: Path | None) -> tuple[Path, Path]:
    """``(model directory, directory for the default output)`` of ``--run`` (a run or a saved model)."""
    if run_dir is None:
        try:
            run = RunDir.latest(runs_root())
        except FileNotFoundError as e:
            raise click.ClickException(f"{e} (train one with `urlk-forecast train`, or pass --run DIR)") from None
        return run.model_dir, run.path
    try:
        model_dir, run = find_model(run_dir)
    except FileNotFoundError as e:
        raise click.ClickException(f"--run {e}") from None
    return model_dir, (run.path if run is not None else model_dir)
