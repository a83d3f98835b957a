"""The ``urlk-forecast`` command line (a click group).

Sub-commands live beside their concepts and are registered here: ``data`` (data/commands.py),
``benchmark`` (baselines/commands.py), ``train`` and ``predict`` (commands defined in
forecast_commands.py). Errors the user can fix are printed as one line, exit code 2, no traceback.
"""

from __future__ import annotations

import importlib

import click

from . import __version__

# (module, attribute) of each sub-command; imported lazily so `--help` stays fast and one broken
# sub-command does not take the others down.
_COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("urlk_forecast.data.commands", "data"),
    "train": ("urlk_forecast.forecast_commands", "train"),
    "predict": ("urlk_forecast.forecast_commands", "predict"),
    "benchmark": ("urlk_forecast.baselines.commands", "benchmark"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module, attr = _COMMANDS[cmd_name]
        return getattr(importlib.import_module(module), attr)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="urlk-forecast")
def cli() -> None:
    """Station weather forecasting with UniRepLKNet (Zhang, Ding, Yue, arXiv 2410.08049)."""


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
