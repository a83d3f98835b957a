"""The ``urlk-forecast`` command line (a click group).

Sub-commands live beside their concepts and are registered here: ``data`` (data/commands.py),
``benchmark`` (baselines/commands.py), ``train`` and ``predict`` (commands defined in
forecast_commands.py). Errors the user can fix are printed as one line, exit code 2, no traceback.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import click

from . import __version__

__all__ = ["cli", "main", "user_errors", "command_logging"]

#: library errors a user can fix (bad file, argument, missing optional package): one line, no traceback
_USER_ERRORS = (ValueError, OSError, RuntimeError, ImportError, KeyError, FloatingPointError)
_QUIET_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ResourceWarning)


@contextmanager
def user_errors() -> Iterator[None]:
    """Library errors a user can fix become one-line click errors (exit 1, no traceback); other warnings are
    printed once each as ``warning: ...`` (deprecations are for developers and stay silent)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except click.ClickException:
            raise
        except _USER_ERRORS as e:
            msg = str(e).strip().replace("\n", " ") or type(e).__name__
            if isinstance(e, KeyError):
                msg = f"missing {msg}"
            raise click.ClickException(msg) from None
        finally:
            shown: set[str] = set()
            for w in caught:
                msg = str(w.message)
                if msg in shown or issubclass(w.category, _QUIET_WARNINGS):
                    continue
                shown.add(msg)
                click.echo(f"warning: {msg}", err=True)


class _EchoHandler(logging.Handler):
    """Log records to the *current* stderr via click (so CliRunner and redirected streams see them)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


@contextmanager
def command_logging(verbose: bool = True) -> Iterator[None]:
    """The package logger prints to stderr (INFO when ``verbose``, else WARNING) for the duration of a command,
    then is restored, so that commands run in-process (tests, notebooks) leave no logging state behind."""
    logger = logging.getLogger("urlk_forecast")
    saved = (logger.level, logger.propagate)
    handler = _EchoHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]

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
