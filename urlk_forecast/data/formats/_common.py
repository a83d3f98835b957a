"""Shared pieces of the readers: the error type, file loading, station ids and the time grid.

Every reader turns "bad input" into one :class:`ReaderError` that names the file and the line
(or field) so a user can open the file at that place; nothing else escapes a parser.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "ReaderError",
    "PathLike",
    "as_paths",
    "read_bytes",
    "decode_text",
    "isd_station_id",
    "parse_float",
    "missing_elevation",
    "regular_grid",
    "place_on_grid",
    "check_unique",
    "csv_table",
    "check_complete",
    "RESAMPLE_ADVICE",
    "mixed_steps",
]

PathLike = str | os.PathLike

#: how to make irregular or mixed-step data regular (every irregular-time error ends with it)
RESAMPLE_ADVICE = ("resample it to one regular step first, e.g. with pandas: "
                   "df.set_index('date').resample('1h').mean() (or '10min', '3h', '1D'), or with xarray: "
                   "ds.resample(time='1h').mean()")


class ReaderError(ValueError):
    """A file is truncated, mis-formatted or of the wrong kind.

    ``str(err)`` reads ``"<file>, line <n>: <what is wrong>"`` (or ``field <name>``); the parts are
    also kept as attributes ``path``, ``line`` and ``field`` (``None`` where they do not apply).
    """

    def __init__(self, path: PathLike | None, message: str, line: int | None = None, field: str | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = [] if path is None else [str(path)]
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


def as_paths(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    """One path or an iterable of paths as a list of :class:`Path` (a string is one path, not characters)."""
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    out = [Path(p) for p in paths]
    if not out:
        raise ValueError("no input files given")
    return out


def read_bytes(path: PathLike) -> bytes:
    """Whole file contents, gunzipped when the file is gzip (by magic bytes, not by name).

    A truncated or corrupt gzip stream raises :class:`ReaderError` naming the file.
    """
    p = Path(path)
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except EOFError as e:
            raise ReaderError(p, f"truncated gzip file (compressed stream ends early: {e})") from None
        except (gzip.BadGzipFile, zlib.error, OSError) as e:
            raise ReaderError(p, f"corrupt gzip file ({e})") from None
    if p.suffix == ".gz":
        raise ReaderError(p, "named .gz but is not gzip-compressed (no gzip magic bytes)")
    return raw


def check_complete(data: bytes | str, path: PathLike) -> None:
    """Raise :class:`ReaderError` naming the last line when the file does not end with a newline.

    Every archive and tool writes a final newline; a file without one was cut short (a download or
    copy that stopped), so its last line may hold a value cut mid-number (``12.3`` -> ``12``).
    """
    nl = b"\n" if isinstance(data, bytes) else "\n"
    cr = b"\r" if isinstance(data, bytes) else "\r"
    if not data.strip() or data.endswith((nl, cr)):
        return
    line = data.count(nl) + 1
    raise ReaderError(
        path,
        "the file ends in the middle of this line (no final newline): it looks truncated, so its last "
        "values may be cut short; re-download or re-copy it (or add the newline if the line is complete)",
        line,
    )


def decode_text(data: bytes, path: PathLike, encoding: str = "utf-8") -> str:
    """Decode ``data``; an undecodable byte raises :class:`ReaderError` naming its line."""
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ReaderError(
            path, f"byte 0x{data[e.start]:02x} is not valid {encoding} text (binary file?)", line
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


_ISD_COMPACT = re.compile(r"^([0-9A-Z]{6})(\d{5})$")


def isd_station_id(raw: str) -> str:
    """``"72509014739"`` (USAF+WBAN, as in Global Hourly / GSOD files) -> ``"725090-14739"``.

    The ``USAF-WBAN`` spelling is what ISD-Lite file names and isd-history.csv use, so all NCEI
    readers agree on one id per station. Anything else is returned stripped but unchanged.
    """
    s = raw.strip()
    m = _ISD_COMPACT.match(s)
    return f"{m.group(1)}-{m.group(2)}" if m else s


def parse_float(text: str) -> float:
    """``float`` of a stripped field; blank -> NaN. Raises ValueError on anything else."""
    s = text.strip()
    if not s:
        return float("nan")
    v = float(s)
    if not np.isfinite(v):
        raise ValueError(f"{s!r} is not a finite number")
    return v


def missing_elevation(v: float) -> float:
    """NCEI spells an unknown elevation -999.9 / -0999.0 / +9999: map those (and blanks) to NaN."""
    return float("nan") if (not np.isfinite(v) or v <= -999.0 or v >= 9999.0) else v


def regular_grid(
    times: np.ndarray,
    step: pd.Timedelta | None = None,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
) -> pd.DatetimeIndex:
    """The regular time axis covering ``times`` (datetime64[ns], any order, duplicates allowed).

    ``step`` defaults to the most common spacing between distinct times. Raises ValueError naming
    the first time that is not on the grid (so a caller can point at its line). ``start``/``end``
    widen the axis (e.g. to whole years); they never cut data off.
    """
    t = np.asarray(times, dtype="datetime64[ns]").astype(np.int64).ravel()
    if step is None:
        t = np.unique(t)
        if len(t) == 1 and start is None and end is None:
            return pd.DatetimeIndex(t.astype("datetime64[ns]"))
        if len(t) < 2:
            raise ValueError("cannot infer a time step from fewer than 2 distinct times; pass the frequency")
        d = np.diff(t)
        vals, counts = np.unique(d, return_counts=True)
        step_ns = int(vals[np.argmax(counts)])
    else:
        step_ns = int(pd.Timedelta(step).value)
    if step_ns <= 0:
        raise ValueError(f"time step must be positive, got {pd.Timedelta(step_ns)}")
    t0 = int(t.min()) if len(t) else pd.Timestamp(start).value
    if start is not None:
        s = pd.Timestamp(start).value
        if len(t) and s > t0:
            raise ValueError(f"start {pd.Timestamp(start)} is after the first time {pd.Timestamp(int(t0))}")
        if (t0 - s) % step_ns:
            raise ValueError(f"start {pd.Timestamp(start)} is not on the {pd.Timedelta(step_ns)} grid of the data")
        t0 = s
    off = (t - t0) % step_ns
    if np.any(off):
        bad = pd.Timestamp(int(t[np.argmax(off != 0)]))
        raise ValueError(f"time {bad} is not on the regular {pd.Timedelta(step_ns)} grid starting {pd.Timestamp(t0)}; "
                         f"{RESAMPLE_ADVICE}")
    t1 = int(t.max()) if len(t) else t0
    if end is not None:
        e = pd.Timestamp(end).value
        t1 = max(t1, t0 + ((e - t0) // step_ns) * step_ns)
    n = int((t1 - t0) // step_ns) + 1
    return pd.DatetimeIndex((t0 + step_ns * np.arange(n, dtype=np.int64)).astype("datetime64[ns]"))


def mixed_steps(times: np.ndarray, grid: pd.DatetimeIndex) -> str | None:
    """What is wrong when ``times`` (any order, duplicates allowed) fill less than half of their regular ``grid``:
    rows of two steps (hourly, then 10-minute), not gaps; None when they fill at least half."""
    t = np.unique(np.asarray(times, dtype="datetime64[ns]"))
    if len(grid) < 4 or len(t) >= 0.5 * len(grid):
        return None
    steps = pd.Series(np.diff(t)).value_counts()
    shown = ", ".join(f"{pd.Timedelta(k)} ({n}x)" for k, n in steps.head(3).items())
    return (f"mixed time steps ({shown}): the {len(t)} times fill only {100 * len(t) / len(grid):.0f} % of a "
            f"regular {grid[1] - grid[0]} axis; {RESAMPLE_ADVICE} (or pass freq= if they really are that step "
            "with gaps)")


def place_on_grid(grid: pd.DatetimeIndex, times: np.ndarray, values: np.ndarray, out: np.ndarray) -> None:
    """Write ``values`` at ``times`` into the 1-d ``out`` laid out on ``grid`` (a regular axis)."""
    if len(times) == 0:
        return
    g = grid.asi8
    step = g[1] - g[0] if len(g) > 1 else 1
    idx = (np.asarray(times, dtype="datetime64[ns]").astype(np.int64) - g[0]) // step
    out[idx] = values


def check_unique(times: np.ndarray, lines: Sequence[int] | np.ndarray, path: PathLike, what: str) -> None:
    """Raise :class:`ReaderError` naming both lines when ``times`` has a duplicate."""
    t = np.asarray(times, dtype="datetime64[ns]")
    order = np.argsort(t, kind="stable")
    ts = t[order]
    dup = np.nonzero(ts[1:] == ts[:-1])[0]
    if len(dup):
        i, j = order[dup[0]], order[dup[0] + 1]
        raise ReaderError(
            path, f"duplicate {what} {pd.Timestamp(ts[dup[0]])} (also on line {int(lines[i])})", int(lines[j])
        )


def csv_table(
    text: str, path: PathLike, required: Sequence[str], kind: str
) -> tuple[list[str], dict[str, int], Iterator[tuple[int, list[str]]]]:
    """Header, column positions and an iterator of ``(line, fields)`` for a quoted CSV text.

    Raises :class:`ReaderError` when the header lacks a ``required`` column (a wrong-kind file), when
    a row's field count differs from the header's, or when the CSV quoting is broken — each naming
    the line. Blank lines are skipped.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ReaderError(path, f"empty file; expected a {kind} CSV header", 1) from None
    except csv.Error as e:
        raise ReaderError(path, f"not a {kind} CSV file ({e})", 1) from None
    missing = [c for c in required if c not in header]
    if missing:
        shown = ", ".join(header[:12])[:200]
        raise ReaderError(path, f"not a {kind} CSV file: missing column(s) {missing}; header is [{shown}]", 1)
    cols = {h: i for i, h in enumerate(header) if h}

    def rows() -> Iterator[tuple[int, list[str]]]:
        try:
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != len(header):
                    raise ReaderError(
                        path,
                        f"expected {len(header)} fields as in the header, found {len(row)} (truncated line?)",
                        line,
                    )
                yield line, row
        except csv.Error as e:
            raise ReaderError(path, f"malformed CSV ({e})", reader.line_num) from None

    return header, cols, rows()
