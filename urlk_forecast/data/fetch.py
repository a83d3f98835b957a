"""Download NCEI station data (ISD-Lite, Global Hourly, GSOD) into a local cache and one netCDF file.

Stdlib ``urllib`` only. Each file is fetched into ``<cache>/<source>/<year>/<name>.part``, resumed
with an HTTP ``Range`` request after a dropped connection, retried with exponential back-off (plus
jitter) on network errors and 408/425/429/5xx, checked (announced length, gzip integrity) and only
then renamed into place — so a file present in the cache is complete and is never fetched again.
A 404 is not an error: the missing station-years are listed in one warning. The station list
(``isd-history.csv``) is cached too and refreshed when older than a week.
"""

from __future__ import annotations

import concurrent.futures as cf
import gzip
import http.client
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .formats._common import PathLike
from .formats.isd_lite import read_isd_history
from .readers import read_global_hourly, read_gsod, read_isd_lite, write_netcdf

__all__ = [
    "SOURCES",
    "HISTORY_URL",
    "FetchError",
    "NotFoundError",
    "FetchWarning",
    "FetchResult",
    "default_cache_dir",
    "download",
    "fetch_station_list",
    "select_stations",
    "fetch",
]

#: source -> (default base URL, remote file name pattern under ``{base}/{year}/``)
SOURCES: dict[str, tuple[str, str]] = {
    "isd-lite": ("https://www.ncei.noaa.gov/pub/data/noaa/isd-lite", "{usaf}-{wban}-{year}.gz"),
    "global-hourly": ("https://www.ncei.noaa.gov/data/global-hourly/access", "{usaf}{wban}.csv"),
    "gsod": ("https://www.ncei.noaa.gov/data/global-summary-of-the-day/access", "{usaf}{wban}.csv"),
}
HISTORY_URL = "https://www.ncei.noaa.gov/pub/data/noaa/isd-history.csv"
USER_AGENT = "urlk-forecast (https://pypi.org/project/urlk-forecast)"
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_STATION_ID = re.compile(r"^([0-9A-Z]{6})-(\d{5})$")
_CHUNK = 1 << 16


class FetchError(RuntimeError):
    """A download failed for good (after retries), or the request cannot be satisfied."""


class NotFoundError(FetchError):
    """The server answered 404 for this URL."""


class FetchWarning(UserWarning):
    """Some requested station-years do not exist on the server."""


class _Retry(Exception):
    """A recoverable problem with one attempt (short body, bad range answer, corrupt gzip)."""


@dataclass
class FetchResult:
    """What :func:`fetch` did: files in the cache, what was missing, and the netCDF written."""

    stations: list[str]
    files: list[Path] = field(default_factory=list)
    downloaded: list[Path] = field(default_factory=list)
    cached: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    output: Path | None = None


def default_cache_dir() -> Path:
    """``$URLK_FORECAST_CACHE``, else ``$XDG_CACHE_HOME/urlk-forecast``, else ``~/.cache/urlk-forecast``."""
    env = os.environ.get("URLK_FORECAST_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "urlk-forecast"


# ------------------------------------------------------------------------------------------ one file
def _check_gzip(path: Path) -> None:
    try:
        with gzip.open(path, "rb") as g:
            while g.read(1 << 20):
                pass
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise _Retry(f"downloaded file is not a complete gzip stream ({e})") from None


def _attempt(url: str, part: Path, timeout: float, on_bytes: Callable[[int], None] | None) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # our part is as long as (or longer than) the file
            m = re.match(r"bytes \*/(\d+)", e.headers.get("Content-Range", "") or "")
            if m and int(m.group(1)) == have:
                return
            part.unlink(missing_ok=True)
            raise _Retry("server rejected the resume range; starting over") from None
        raise
    with resp:
        status = getattr(resp, "status", None) or 200
        total: int | None = None
        if status == 206:
            m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", "") or "")
            if not m or int(m.group(1)) != have:
                part.unlink(missing_ok=True)
                raise _Retry(f"server resumed at the wrong offset ({resp.headers.get('Content-Range')})")
            total = None if m.group(3) == "*" else int(m.group(3))
            mode = "ab"
        else:  # whole body: no Range sent, or the server ignored it
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        with open(part, mode) as fh:
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except http.client.IncompleteRead as e:
                    fh.write(e.partial)
                    raise _Retry(f"connection closed early ({e})") from None
                if not chunk:
                    break
                fh.write(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Retry(f"connection closed after {size} of {total} bytes")
    if total is not None and size > total:
        part.unlink(missing_ok=True)
        raise _Retry(f"got {size} bytes, more than the announced {total}; starting over")


def download(
    url: str,
    dest: PathLike,
    *,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    on_bytes: Callable[[int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Fetch ``url`` to ``dest`` resumably and atomically; returns ``dest``.

    Data lands in ``dest + ".part"`` first; a later attempt (or a later run) continues it with an
    HTTP Range request. Waits ``backoff * 2**attempt`` seconds (+-25 % jitter, at most 60 s, or the
    server's Retry-After) between attempts. Raises :class:`NotFoundError` on 404 at once and
    :class:`FetchError` when ``retries`` retries are used up.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last: BaseException | None = None
    for attempt in range(retries + 1):
        wait = min(backoff * 2**attempt, 60.0) * random.uniform(0.75, 1.25)
        try:
            _attempt(url, part, timeout, on_bytes)
            if dest.name.endswith(".gz"):
                try:
                    _check_gzip(part)
                except _Retry:
                    part.unlink(missing_ok=True)
                    raise
            os.replace(part, dest)
            return dest
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise NotFoundError(f"{url}: HTTP 404 not found") from None
            if e.code not in _RETRY_STATUS:
                raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
            last = e
            ra = e.headers.get("Retry-After") if e.headers else None
            if ra and ra.isdigit():
                wait = min(float(ra), 300.0)
        except urllib.error.URLError as e:
            if url.startswith("file:") and isinstance(e.reason, FileNotFoundError):
                raise NotFoundError(f"{url}: no such file") from None
            last = e
        except (_Retry, http.client.HTTPException, OSError) as e:
            last = e
        if attempt < retries:
            sleep(wait)
    raise FetchError(f"{url}: giving up after {retries + 1} attempts; last error: {last}")


# ------------------------------------------------------------------------------------- station list
def fetch_station_list(
    url: str = HISTORY_URL,
    cache: PathLike | None = None,
    *,
    max_age_days: float = 7.0,
    retries: int = 5,
    backoff: float = 1.0,
) -> Path:
    """The cached ``isd-history.csv``, downloaded when absent or older than ``max_age_days``.

    If a refresh fails but an older copy exists, the old copy is used with a warning.
    """
    dest = Path(cache if cache is not None else default_cache_dir()) / "isd-history.csv"
    if dest.is_file() and time.time() - dest.stat().st_mtime < max_age_days * 86400:
        return dest
    if dest.is_file():
        tmp = dest.with_name("isd-history.refresh.csv")
        try:
            download(url, tmp, retries=retries, backoff=backoff)
        except FetchError as e:
            warnings.warn(f"could not refresh the station list ({e}); using the cached copy", FetchWarning, 2)
            return dest
        os.replace(tmp, dest)
        return dest
    return download(url, dest, retries=retries, backoff=backoff)


def _morton(lat: np.ndarray, lon: np.ndarray, bits: int = 12) -> np.ndarray:
    """Z-order key of lat/lon cells: nearby stations get nearby keys."""
    scale = (1 << bits) - 1
    x = np.clip(((lon + 180.0) / 360.0 * scale).astype(np.int64), 0, scale)
    y = np.clip(((lat + 90.0) / 180.0 * scale).astype(np.int64), 0, scale)
    key = np.zeros_like(x)
    for b in range(bits):
        key |= ((x >> b) & 1) << (2 * b) | ((y >> b) & 1) << (2 * b + 1)
    return key


def select_stations(
    history: pd.DataFrame,
    years: Sequence[int],
    n: int | None = None,
    station_ids: Iterable[str] | None = None,
) -> list[str]:
    """Station ids to fetch: ``station_ids`` as given (checked against the list), or ``n`` stations.

    Automatic picks need coordinates (not blank, not the 0/0 placeholder) and BEGIN/END covering all
    ``years`` (the last year up to the list's own freshness); among those, ``n`` are taken evenly
    along a Z-order curve over lat/lon, so they spread over the globe in proportion to station
    density — deterministic, not the first ``n`` by id (which would all be in Norway).
    """
    if (n is None) == (station_ids is None):
        raise ValueError("give exactly one of n (a number of stations) or station_ids")
    if station_ids is not None:
        ids = list(dict.fromkeys(station_ids))
        bad = [s for s in ids if not _STATION_ID.match(s)]
        if bad:
            raise ValueError(f"station ids must look like USAF-WBAN (e.g. 725090-14739); got {bad[:5]}")
        unknown = [s for s in ids if s not in history.index]
        if unknown:
            raise ValueError(f"station(s) {unknown[:5]} are not in the station list (isd-history.csv)")
        blank = [s for s in ids if not (np.isfinite(history.at[s, "lat"]) and np.isfinite(history.at[s, "lon"]))]
        if blank:
            raise ValueError(f"station(s) {blank[:5]} have no LAT/LON in the station list")
        return ids
    if n is not None and n < 1:
        raise ValueError(f"the number of stations must be at least 1, got {n}")
    first = pd.Timestamp(f"{min(years)}-01-01")
    last = pd.Timestamp(f"{max(years)}-12-31")
    freshest = history["end"].max()
    if pd.notna(freshest):
        last = min(last, freshest - pd.Timedelta(days=30))
    h = history
    ok = (
        np.isfinite(h["lat"])
        & np.isfinite(h["lon"])
        & ~((h["lat"] == 0) & (h["lon"] == 0))
        & (h["begin"] <= first)
        & (h["end"] >= last)
        & (h.index != "999999-99999")
    )
    cand = h[ok.to_numpy()]
    if len(cand) == 0:
        raise ValueError(f"no station in the list covers {min(years)}-{max(years)} with coordinates")
    if n > len(cand):
        warnings.warn(f"only {len(cand)} stations cover {min(years)}-{max(years)}; taking all of them", FetchWarning, 2)
        n = len(cand)
    order = np.argsort(_morton(cand["lat"].to_numpy(), cand["lon"].to_numpy()), kind="stable")
    picks = order[((np.arange(n) + 0.5) * len(cand) / n).astype(np.int64)]
    return sorted(cand.index[picks])


# ------------------------------------------------------------------------------------------- fetch
def _years_label(years: Sequence[int]) -> str:
    ys = sorted(set(years))
    if len(ys) > 1 and ys == list(range(ys[0], ys[-1] + 1)):
        return f"{ys[0]}-{ys[-1]}"
    return "_".join(map(str, ys))


def fetch(
    source: str,
    years: Sequence[int],
    out: PathLike,
    *,
    stations: int | None = None,
    station_ids: Sequence[str] | None = None,
    base_url: str | None = None,
    history_url: str = HISTORY_URL,
    cache: PathLike | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    workers: int = 4,
    convert: bool = True,
    progress: bool = True,
) -> FetchResult:
    """Download ``source`` files for ``years`` and (``convert=True``) write ``out/<source>_<years>.nc``.

    Stations: ``stations=N`` (picked by :func:`select_stations`) or ``station_ids``. Files go to
    ``cache`` (default :func:`default_cache_dir`) and are reused on later runs. Missing station-years
    (404) are listed in a :class:`FetchWarning`; other failures raise :class:`FetchError` after every
    other file is done (a rerun resumes). The netCDF spans whole years, hours without data are NaN.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; known: {sorted(SOURCES)}")
    years = _checked_years(years)
    default_base, pattern = SOURCES[source]
    base = (base_url or default_base).rstrip("/")
    cache_dir = Path(cache if cache is not None else default_cache_dir())
    history_path = fetch_station_list(history_url, cache_dir, retries=retries, backoff=backoff)
    history = read_isd_history(history_path)
    ids = select_stations(history, years, n=stations, station_ids=station_ids)
    result = FetchResult(stations=ids)
    tasks = []
    for sid in ids:
        usaf, wban = sid.split("-")
        for y in years:
            name = pattern.format(usaf=usaf, wban=wban, year=y)
            tasks.append((sid, y, f"{base}/{y}/{name}", cache_dir / source / str(y) / name))
    fetch_one = _Downloader(retries=retries, backoff=backoff, timeout=timeout)
    failures = _download_all(tasks, fetch_one, result, workers, f"{source} {_years_label(years)}", progress)
    _report(result, failures, len(tasks))
    if not convert:
        return result
    if not result.files:
        raise FetchError("nothing to convert: none of the requested station-years exist on the server")
    ds = _convert(source, result.files, years, history_path, base)
    Path(out).mkdir(parents=True, exist_ok=True)
    result.output = write_netcdf(ds, Path(out) / f"{source}_{_years_label(years)}.nc")
    return result


def _checked_years(years: Sequence[int]) -> list[int]:
    out = sorted({int(y) for y in years})
    if not out:
        raise ValueError("give at least one year")
    this_year = pd.Timestamp.now().year
    bad = [y for y in out if not 1901 <= y <= this_year]
    if bad:
        raise ValueError(f"years must be in 1901..{this_year}; got {bad}")
    return out


class _Downloader:
    """One station-year: reuse the cached file (refreshing the running year's after a day) or download it."""

    def __init__(self, retries: int, backoff: float, timeout: float) -> None:
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.nbytes = 0
        self._lock = threading.Lock()
        self._this_year = pd.Timestamp.now().year

    def _count(self, k: int) -> None:
        with self._lock:
            self.nbytes += k

    def __call__(self, task: tuple) -> tuple[str, Path | None, Exception | None]:
        _sid, y, url, dest = task
        # files of the running year grow daily at NCEI: refresh a cached copy older than a day
        if dest.is_file() and (y < self._this_year or time.time() - dest.stat().st_mtime < 86400):
            return "cached", dest, None
        try:
            return "downloaded", download(url, dest, retries=self.retries, backoff=self.backoff,
                                          timeout=self.timeout, on_bytes=self._count), None
        except NotFoundError:
            return "missing", None, None
        except FetchError as e:
            return "failed", None, e


def _download_all(tasks: list[tuple], one: _Downloader, result: FetchResult, workers: int, desc: str,
                  progress: bool) -> list[str]:
    """Run every task in a thread pool, filling ``result``; returns the failure messages."""
    from tqdm.auto import tqdm  # optional progress bar, imported only when downloading

    failures: list[str] = []
    with tqdm(total=len(tasks), unit="file", desc=desc, disable=not progress) as bar, \
            cf.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(one, t): t for t in tasks}
        for fut in cf.as_completed(futures):
            sid, y, _url, dest = futures[fut]
            kind, _path, err = fut.result()
            if kind == "cached":
                result.cached.append(dest)
            elif kind == "downloaded":
                result.downloaded.append(dest)
            elif kind == "missing":
                result.missing.append(f"{sid}-{y}")
            else:
                failures.append(str(err))
            bar.update(1)
            bar.set_postfix_str(f"{one.nbytes / 1e6:.1f} MB, {len(result.missing)} missing", refresh=False)
    result.files = sorted(result.cached + result.downloaded)
    result.missing.sort()
    return failures


def _report(result: FetchResult, failures: list[str], n_tasks: int) -> None:
    """Warn about station-years the server does not have; raise if any download failed."""
    if result.missing:
        shown = ", ".join(result.missing[:20]) + (
            f" ... (+{len(result.missing) - 20} more)" if len(result.missing) > 20 else ""
        )
        warnings.warn(
            f"{len(result.missing)} of {n_tasks} station-years are not on the server (404): {shown}",
            FetchWarning,
            stacklevel=3,
        )
    if failures:
        raise FetchError(
            f"{len(failures)} download(s) failed (completed files are cached; rerun to resume): "
            + "; ".join(failures[:5])
        )


def _convert(source: str, files: list[Path], years: list[int], history_path: Path, base: str) -> xr.Dataset:
    """Read the downloaded files into the schema, spanning whole years."""
    span = {"start": f"{years[0]}-01-01", "end": f"{years[-1]}-12-31 23:00"}
    if source == "isd-lite":
        ds = read_isd_lite(files, history=history_path, **span)
    elif source == "global-hourly":
        ds = read_global_hourly(files, **span)
    else:
        ds = read_gsod(files, start=span["start"], end=f"{years[-1]}-12-31")
    ds = ds.sel(time=slice(span["start"], span["end"]))  # reports rounded into the next year stay out
    ds.attrs.update(
        {
            "source_url": base,
            "years": " ".join(map(str, years)),
            "history": f"{pd.Timestamp.now(tz='UTC').isoformat(timespec='seconds')} urlk-forecast data fetch",
        }
    )
    return ds
