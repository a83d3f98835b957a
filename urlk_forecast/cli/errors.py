"""How commands fail and log: library errors become one line that speaks the command line.

Library code raises ordinary exceptions whose messages name Python arguments (``format=``, ``name_map={...}``,
``stations=``); :func:`user_errors` turns the ones a user can fix into a one-line ``Error: ...`` (exit 1, no
traceback), with those argument names replaced by the command's flags and numpy reprs (``np.float64(2.0)``) by plain
numbers. :func:`command_logging` shows the package log on stderr for the duration of a command.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import click

__all__ = ["user_errors", "command_logging", "speak_flags"]

#: library errors a user can fix (bad file, argument, missing optional package): one line, no traceback
_USER_ERRORS = (ValueError, OSError, RuntimeError, ImportError, KeyError, FloatingPointError)
_QUIET_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ResourceWarning)
_NUMPY_REPR = re.compile(r"\bnp\.(?:float|int|uint|complex|bool|str)\w*\((?P<v>[^()]*)\)")
_DICT_LITERAL = r"\{(?P<body>[^{}]*)\}"
_DICT_PAIR = re.compile(r"""['"]([^'"]*)['"]\s*:\s*['"]?([^'",]*)['"]?""")


def speak_flags(msg: str, flags: Mapping[str, str] | None = None) -> str:
    """``msg`` with numpy scalar reprs as plain numbers and each Python argument ``name=`` of ``flags`` as its flag
    (``{"format": "--format"}``: ``pass format= one of`` → ``pass --format one of``; a dict literal value
    ``name_map={'a': 'b'}`` → ``--name-map a=b``)."""
    msg = _NUMPY_REPR.sub(lambda m: m.group("v"), msg)
    for arg, flag in (flags or {}).items():
        def pairs(m: re.Match[str], flag: str = flag) -> str:
            found = _DICT_PAIR.findall(m.group("body"))
            return " ".join(f"{flag} {k}={v}" for k, v in found) if found else f"{flag} {m.group('body')}"

        msg = re.sub(rf"(?<![\w-]){re.escape(arg)}={_DICT_LITERAL}", pairs, msg)
        msg = re.sub(rf"(?<![\w-]){re.escape(arg)}=\s?", f"{flag} ", msg)
    return msg


@contextmanager
def user_errors(flags: Mapping[str, str] | None = None) -> Iterator[None]:
    """Library errors a user can fix become one-line click errors (exit 1, no traceback) speaking ``flags`` (Python
    argument name → flag, see :func:`speak_flags`); other warnings are printed once each as ``warning: ...``
    (deprecations are for developers and stay silent)."""
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
            raise click.ClickException(speak_flags(msg, flags)) from None
        finally:
            shown: set[str] = set()
            for w in caught:
                msg = str(w.message)
                if msg in shown or issubclass(w.category, _QUIET_WARNINGS):
                    continue
                shown.add(msg)
                click.echo(f"warning: {speak_flags(msg, flags)}", err=True)


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
