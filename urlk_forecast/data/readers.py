"""Station-data readers: every format in, the one schema (``data/schema.py``) out.

=================  ===========================================================  =====================
format             what                                                         reader
=================  ===========================================================  =====================
``isd-lite``       NCEI ISD-Lite hourly files (+ ``isd-history.csv``)           :func:`read_isd_lite`
``global-hourly``  NCEI Global Hourly / ISD CSV access files                    :func:`read_global_hourly`
``gsod``           NCEI Global Summary of the Day CSV (daily)                   :func:`read_gsod`
``corrformer``     Corrformer Global Temp/Wind ``.npy`` release (a directory)   :func:`read_corrformer_npy`
``netcdf``         our own files, or CF files through a name map                :func:`read_netcdf`
``csv-long``       ``station,time,temperature,wind_speed[,lat,lon,...]``        :func:`read_csv_long`
``wide-csv``       ``date,col1,...,colN``: one series per column (ETTh1 layout)   :func:`read_wide_csv`
=================  ===========================================================  =====================

:func:`open_dataset` picks the reader from the path (extension, content, or a directory's files);
:func:`write_netcdf` writes atomically. Truncated, mis-formatted or wrong-kind input raises
:class:`ReaderError` (a ``ValueError``) naming the file and the line or field.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xarray as xr

from .formats._common import PathLike, ReaderError
from .formats.corrformer import format_split_bounds, parse_split_bounds, read_corrformer_npy
from .formats.csv_long import CSV_ALIASES, read_csv_long
from .formats.global_hourly import read_global_hourly
from .formats.gsod import read_gsod
from .formats.isd_lite import ISD_LITE_NAME, read_isd_history, read_isd_lite
from .formats.netcdf import NETCDF_MAGIC, read_netcdf, write_netcdf
from .formats.wide_csv import read_wide_csv

__all__ = [
    "ReaderError",
    "FORMATS",
    "read_isd_lite",
    "read_isd_history",
    "read_global_hourly",
    "read_gsod",
    "read_corrformer_npy",
    "read_netcdf",
    "read_csv_long",
    "read_wide_csv",
    "open_dataset",
    "detect_format",
    "write_netcdf",
    "format_split_bounds",
    "parse_split_bounds",
]

#: format name -> reader; every reader takes the path first and returns a validated schema dataset
FORMATS: dict[str, Callable[..., xr.Dataset]] = {
    "isd-lite": read_isd_lite,
    "global-hourly": read_global_hourly,
    "gsod": read_gsod,
    "corrformer": read_corrformer_npy,
    "netcdf": read_netcdf,
    "csv-long": read_csv_long,
    "wide-csv": read_wide_csv,
}
_NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf", ".h5")
_ISD_LITE_LINE = re.compile(r"^\s*\d{4}(\s+-?\d+){11}\s*$")


def _head(path: Path, n: int = 65536) -> bytes:
    """The first ``n`` bytes of a file, gunzipped if it is gzip (partial streams are fine)."""
    with open(path, "rb") as fh:
        raw = fh.read(n)
    if raw[:2] == b"\x1f\x8b":
        try:
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw, n)
        except zlib.error as e:
            raise ReaderError(path, f"corrupt gzip file ({e})") from None
    return raw


#: columns only NCEI's Global Hourly (ISD CSV) files have, and those only GSOD files have
_GLOBAL_HOURLY_COLUMNS = frozenset(
    {"SOURCE", "REPORT_TYPE", "CALL_SIGN", "QUALITY_CONTROL", "WND", "CIG", "VIS", "TMP", "DEW"}
)
_GSOD_COLUMNS = frozenset(
    {"TEMP", "DEWP", "STP", "VISIB", "WDSP", "MXSPD", "GUST", "MAX", "MIN", "PRCP", "SNDP", "FRSHTT"}
)


def _ncei_kind(cols: set[str]) -> str | None:
    """``global-hourly`` / ``gsod`` when the header has STATION, DATE and columns only that archive has.

    Decided by the archive's own columns, not by the value columns the reader needs, so a file whose
    TEMP or TMP column is missing (renamed) is still recognised and its reader names the missing column.
    """
    if not {"STATION", "DATE"} <= cols:
        return None
    gh = len(cols & _GLOBAL_HOURLY_COLUMNS)
    gsod = len(cols & _GSOD_COLUMNS) + sum(c.endswith("_ATTRIBUTES") for c in cols)
    if gh == gsod == 0:
        return None
    return "global-hourly" if gh > gsod or (gh == gsod and cols & {"TMP", "WND"}) else "gsod"


def _sniff_text(path: Path) -> str | None:
    head = _head(path, 8192)
    first = head.split(b"\n", 1)[0].decode("utf-8", "replace").strip().lstrip("\ufeff")
    cols = {c.strip().strip('"').strip() for c in first.split(",")}
    kind = _ncei_kind(cols)
    if kind is not None:
        return kind
    if {"USAF", "WBAN", "LAT", "LON"} <= cols:
        raise ReaderError(path, "this is the isd-history.csv station list, not data; read ISD-Lite files with it")
    low = {c.lower() for c in cols}
    if low & set(CSV_ALIASES["station"]) and low & set(CSV_ALIASES["time"]):
        return "csv-long"
    names = [c.strip().strip('"').strip() for c in first.split(",")]
    if len(names) >= 2 and names[0].lower() in CSV_ALIASES["time"]:
        return "wide-csv"  # date,col1,...,colN (a time column first, no station column)
    if _ISD_LITE_LINE.match(first):
        return "isd-lite"
    return None


def _file_kind(f: Path) -> str | None:
    """The format a file in a directory belongs to (``None``: not a data file, e.g. a README)."""
    n = f.name
    if n.startswith(".") or n == "isd-history.csv":
        return None
    if n.endswith(".npy"):
        return "corrformer"
    if ISD_LITE_NAME.match(n):
        return "isd-lite"
    if n.endswith(_NETCDF_SUFFIXES):
        return "netcdf"
    if n.endswith((".csv", ".csv.gz")):
        return _sniff_text(f) or "unrecognised CSV"
    return None


def _directory_format(p: Path) -> str:
    """The one format of a directory's data files; a mix of formats is an error naming the files."""
    kinds: dict[str, list[str]] = {}
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        kind = _file_kind(f)
        if kind is not None:
            kinds.setdefault(kind, []).append(str(f.relative_to(p)))
    if len(kinds) > 1:
        listing = "; ".join(
            f"{k}: {', '.join(v[:3])}{f' and {len(v) - 3} more' if len(v) > 3 else ''}"
            for k, v in sorted(kinds.items())
        )
        raise ReaderError(p, f"directory mixes file formats ({listing}); put each format in its own directory")
    if not kinds:
        names = sorted(f.name for f in p.iterdir() if f.is_file())
        raise ReaderError(p, f"cannot tell the format of this directory (files: {names[:6]})")
    kind, files = kinds.popitem()
    if kind == "netcdf":
        raise ReaderError(p, f"directory holds netCDF files {files[:3]}; open one file at a time")
    if kind == "unrecognised CSV":
        raise ReaderError(p, f"cannot tell the format of the CSV files {files[:3]}: not NCEI, not long format")
    return kind


def detect_format(path: PathLike) -> str:
    """The format name (a key of :data:`FORMATS`) of a file or directory, from names and content.

    A directory must hold files of one format (``isd-history.csv`` and non-data files aside);
    mixed formats are an error naming the files of each.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if p.is_dir():
        return _directory_format(p)
    with open(p, "rb") as fh:
        magic = fh.read(8)
    if any(magic.startswith(m) for m in NETCDF_MAGIC):
        return "netcdf"
    if p.suffix == ".npy":
        raise ReaderError(p, "a Corrformer release is a directory of .npy files; pass the directory")
    if p.suffix.lower() in _NETCDF_SUFFIXES:
        raise ReaderError(p, f"named {p.suffix} but not a netCDF file (starts with {magic!r})")
    kind = _sniff_text(p)
    if kind is None:
        first = _head(p, 200).split(b"\n", 1)[0][:80]
        raise ReaderError(p, f"unknown format (first line {first!r}); pass format= one of {sorted(FORMATS)}", line=1)
    return kind


def open_dataset(path: PathLike, format: str | None = None, **kwargs: Any) -> xr.Dataset:
    """Read any supported file or directory into the schema; ``format=None`` detects it.

    ``kwargs`` go to the reader: ``units={"temperature": "degF"}`` for every format (the source's units
    per variable when they are not the format's; a key naming no variable of the file is an error),
    ``history=`` for ISD-Lite, ``split=`` for Corrformer, ``name_map=`` for netCDF, ``stations=`` for
    CSV long, ``start=``/``end=`` for the NCEI formats, ``time_column=``/``columns=``/``variable=`` for a
    wide CSV (``format="wide-csv"`` or ``"wide_csv"``: format names take ``_`` for ``-``). A directory of
    ISD-Lite files uses the ``isd-history.csv`` inside it when present.
    """
    fmt = detect_format(path) if format is None else str(format).replace("_", "-")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {sorted(FORMATS)}")
    return FORMATS[fmt](path, **kwargs)
