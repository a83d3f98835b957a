"""Outputs of the commands: destinations checked before any work, files written all together or not at all, and
step counts worded in the data's time step."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import click
import pandas as pd

from ..utils import atomic_path, describe_steps

__all__ = ["check_file_destination", "check_dir_destination", "write_together", "step_label"]


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_writable_dir(d: Path, flag: str, target: Path) -> None:
    """``d`` (or, when it does not exist yet, its nearest existing ancestor) is a directory we can write in."""
    base = _nearest_existing(d.absolute())
    if not base.is_dir():
        raise click.ClickException(f"{flag} {target}: cannot write there, {base} is not a directory")
    if base == d.absolute():  # probe: os.access says yes to root on a read-only file system
        try:
            fd, probe = tempfile.mkstemp(prefix=".urlk-write-test.", dir=base)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise click.ClickException(f"{flag} {target}: cannot write in {base} ({e.strerror or e})") from None
    elif not os.access(base, os.W_OK | os.X_OK):
        raise click.ClickException(f"{flag} {target}: cannot create directories in {base} (permission denied)")


def check_file_destination(path: Path, flag: str, suffixes: Sequence[str], what: str) -> None:
    """``path`` has one of ``suffixes`` (``what`` names them in the error), is not a directory, and its directory is
    writable (or can be created)."""
    if path.suffix.lower() not in suffixes:
        raise click.ClickException(f"{flag} {path}: use a {what} file name")
    if path.is_dir():
        raise click.ClickException(f"{flag} {path}: is a directory, give a file name")
    _check_writable_dir(path.parent, flag, path)


def check_dir_destination(path: Path, flag: str) -> None:
    """``path`` is (or can be created as) a directory we can write in."""
    if path.exists() and not path.is_dir():
        raise click.ClickException(f"{flag} {path}: exists and is not a directory")
    _check_writable_dir(path, flag, path)


@contextmanager
def write_together(*dests: Path | None) -> Iterator[list[Path | None]]:
    """Temporary paths for ``dests`` (None stays None); all are moved onto their targets only when the block
    succeeds, so a failure in any writer leaves every target untouched and no temporary file behind."""
    with ExitStack() as stack:
        yield [None if d is None else stack.enter_context(atomic_path(d)) for d in dests]


def step_label(n: int, freq: pd.Timedelta | str | None) -> str:
    """``n`` steps of ``freq`` for a message (``24 h``, ``24 days``, ``6 x 10 min``): :func:`describe_steps`."""
    return describe_steps(n, freq)
