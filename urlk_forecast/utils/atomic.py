"""Atomic writes: a reader sees the old file or the complete new one, never a partial file.

Every writer of the package goes through :func:`atomic_path` (or one of the wrappers built on it): the content is
written to a hidden temporary file in the target's directory, flushed to disk (``fsync``), given the permissions a
plain ``open`` would give, and moved over the target with ``os.replace``. On any error the temporary file is removed
and an ``OSError`` names the *target* path (never the hidden temporary name).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_torch_save"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_path(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


@contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it is fsynced and moved onto ``dest``.

    For libraries that write by file name (netCDF, ``savefig``, ``to_csv``). The parent directory is created.
    A failure to create, write or replace raises ``OSError`` naming ``dest``; nothing is left behind.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=dest.suffix or ".tmp", dir=dest.parent)
        os.close(fd)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {dest}: {e.strerror or e}") from None
    tmp = Path(name)
    try:
        yield tmp
        _fsync_path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if str(dest) in str(e):
            raise
        raise OSError(e.errno, f"cannot write {dest}: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(dest: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``dest`` for writing (``mode`` "wb" or "w"); replace ``dest`` on success."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(dest) as tmp, open(tmp, mode, encoding=encoding) as fh:
        yield fh
        fh.flush()


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``dest`` atomically."""
    with atomic_write(dest, "wb") as fh:
        fh.write(data)


def atomic_write_text(dest: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``dest`` atomically."""
    with atomic_write(dest, "w") as fh:
        fh.write(text)


def atomic_torch_save(obj: Any, dest: str | os.PathLike[str], save: Callable[[Any, Any], None] | None = None) -> None:
    """``torch.save(obj)`` to ``dest`` atomically (``save`` overrides the serialiser, for tests)."""
    if save is None:
        import torch

        save = torch.save
    with atomic_write(dest, "wb") as fh:
        save(obj, fh)
