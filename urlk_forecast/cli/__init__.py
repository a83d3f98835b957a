"""The ``urlk-forecast`` command line (a click group) -- the only code that knows flags.

One module per command: ``data`` (cli/data.py: fetch, convert, info), ``train`` (cli/train.py), ``predict``
(cli/predict.py), ``benchmark`` (cli/benchmark.py), ``backtest`` (cli/backtest.py), ``export`` (cli/export.py).
They call the library and translate its exceptions into one-line errors naming the flags (cli/errors.py); nothing
outside this package imports it.
Sub-commands are imported lazily so ``--help`` stays fast and one broken command does not take the others down.
"""

from __future__ import annotations

import importlib

import click

from .. import __version__
from .errors import command_logging, user_errors

__all__ = ["cli", "main", "user_errors", "command_logging"]

# (module, attribute, one-line help) of each sub-command; the module is imported on first use
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "backtest": ("urlk_forecast.cli.backtest", "backtest",
                 "Rolling-origin backtest: baselines (and a run) forecast from many origins, each from its past."),
    "benchmark": ("urlk_forecast.cli.benchmark", "benchmark",
                  "Compare the baselines of the paper's Table 12 (and a trained model) on the same test windows."),
    "data": ("urlk_forecast.cli.data", "data", "Station data: download (fetch), convert to netCDF (convert) and "
             "describe (info)."),
    "export": ("urlk_forecast.cli.export", "export",
               "Export a trained run's network (re-parameterised) to ONNX or TorchScript with a JSON sidecar."),
    "predict": ("urlk_forecast.cli.predict", "predict",
                "Forecast the next pred_len steps for every station from the last seq_len steps of the data."),
    "train": ("urlk_forecast.cli.train", "train",
              "Train a forecaster (default: synthetic 3850 stations, ~15 min on CPU) and compare it with baselines."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module, attr, _ = _COMMANDS[cmd_name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # from the table, so that `urlk-forecast --help` imports no command (and no torch)
        limit = formatter.width - 6 - max(len(n) for n in _COMMANDS)
        rows = [(name, click.utils.make_default_short_help(_COMMANDS[name][2], limit)) for name in _COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="urlk-forecast")
def cli() -> None:
    """Station weather forecasting with UniRepLKNet (Zhang, Ding, Yue, arXiv 2410.08049)."""


def main() -> None:
    """Console-script entry point."""
    cli()
