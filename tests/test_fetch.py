"""Downloads against a real HTTP server on 127.0.0.1 (a thread, random port) serving fixture files.

The handler supports Range requests and can drop the connection mid-file on a path's first request,
answer 503 a few times, or ignore Range — so resume, retry/back-off, cache reuse, 404 reporting and
the conversion to netCDF are all exercised over real sockets.
"""

from __future__ import annotations

import functools
import gzip
import os
import re
import socket
import subprocess
import sys
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from urlk_forecast.cli.data import data
from urlk_forecast.data.fetch import (
    FetchError,
    FetchWarning,
    NotFoundError,
    download,
    fetch,
    fetch_station_list,
    select_stations,
)
from urlk_forecast.data.readers import read_isd_history, read_netcdf

FIX = Path(__file__).parent / "fixtures"
HISTORY = """"USAF","WBAN","STATION NAME","CTRY","STATE","ICAO","LAT","LON","ELEV(M)","BEGIN","END"
"007018","99999","WXPOD 7018","","","","+00.000","+000.000","+7018.0","20110309","20241231"
"010010","99999","JAN MAYEN(NOR-NAVY)","NO","","ENJA","+70.933","-008.667","+0009.0","19310101","20241231"
"123450","99999","NEW STATION","XX","","","+10.000","+010.000","+0100.0","20200301","20241231"
"476620","99999","TOKYO","JA","","RJTD","+35.683","+139.767","+0036.0","19510101","20241231"
"725090","14739","BOSTON LOGAN INTL AIRPORT","US","MA","KBOS","+42.361","-071.010","+0003.7","19431001","20241231"
"948660","99999","MELBOURNE AIRPORT","AS","","YMML","-37.667","+144.833","+0132.0","19700101","20241231"
"999999","00001","UNKNOWN SITE","","","","","","","20000101","20241231"
"""
ELIGIBLE = ["010010-99999", "476620-99999", "725090-14739", "948660-99999"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        srv: _Server = self.server  # type: ignore[assignment]
        rng = self.headers.get("Range")
        with srv.lock:
            srv.log.append((self.path, rng))
            n_503 = srv.fail_503.get(self.path, 0)
            if n_503:
                srv.fail_503[self.path] = n_503 - 1
            drop = self.path in srv.drop_once and self.path not in srv.dropped
            if drop:
                srv.dropped.add(self.path)
        if n_503:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        f = srv.root / self.path.lstrip("/")
        if not f.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = f.read_bytes()
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and srv.ranges:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if drop:  # send part of the body, then kill the connection
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.log: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self.drop_once: set[str] = set()
        self.dropped: set[str] = set()
        self.fail_503: dict[str, int] = {}
        self.ranges = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def requests_for(self, path: str) -> list[str | None]:
        return [r for p, r in self.log if p == path]


@functools.cache
def _isd_year(year: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A full year of ISD-Lite lines (gzip) with a few missing values; returns (gz, temp x10, wind x10)."""
    rng = np.random.default_rng(seed)
    times = pd.date_range(f"{year}-01-01", f"{year}-12-31 23:00", freq="h")
    temp = rng.integers(-300, 350, len(times))
    wind = rng.integers(0, 250, len(times))
    temp[rng.random(len(times)) < 0.03] = -9999
    lines = [
        f"{t.year:4d} {t.month:02d} {t.day:02d} {t.hour:02d}{a:6d}{-9999:6d}{10132:6d}{180:6d}{w:6d}{4:6d}"
        f"{-9999:6d}{-9999:6d}\n"
        for t, a, w in zip(times, temp, wind)
    ]
    return gzip.compress("".join(lines).encode(), mtime=0), temp, wind


@pytest.fixture
def archive(tmp_path):
    """Server root with isd-history.csv and ISD-Lite files for the eligible stations (Melbourne 2020 absent)."""
    root = tmp_path / "www"
    (root / "isd-lite").mkdir(parents=True)
    (root / "isd-history.csv").write_text(HISTORY)
    truth = {}
    for k, sid in enumerate(ELIGIBLE):
        for y in (2019, 2020):
            if sid == "948660-99999" and y == 2020:
                continue
            gz, temp, wind = _isd_year(y, seed=10 * k + y)
            d = root / "isd-lite" / str(y)
            d.mkdir(exist_ok=True)
            (d / f"{sid}-{y}.gz").write_bytes(gz)
            truth[(sid, y)] = (temp, wind)
    srv = _Server(root)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv, truth
    finally:
        srv.shutdown()
        srv.server_close()


# ---------------------------------------------------------------------------------------- download()
def test_resume_after_dropped_connection_gives_identical_bytes(archive, tmp_path):
    srv, _ = archive
    path = "/isd-lite/2019/010010-99999-2019.gz"
    srv.drop_once.add(path)
    dest = download(srv.url + path, tmp_path / "c" / "f.gz", backoff=0)
    assert dest.read_bytes() == (srv.root / path.lstrip("/")).read_bytes()
    reqs = srv.requests_for(path)
    assert len(reqs) == 2 and reqs[0] is None
    start = int(re.fullmatch(r"bytes=(\d+)-", reqs[1]).group(1))
    assert 0 < start < dest.stat().st_size  # continued where the first response stopped
    assert not (tmp_path / "c" / "f.gz.part").exists()


def test_restart_when_server_ignores_range(archive, tmp_path):
    srv, _ = archive
    srv.ranges = False
    path = "/isd-lite/2020/476620-99999-2020.gz"
    srv.drop_once.add(path)
    dest = download(srv.url + path, tmp_path / "f.gz", backoff=0)
    assert dest.read_bytes() == (srv.root / path.lstrip("/")).read_bytes()
    assert len(srv.requests_for(path)) == 2


def test_resume_from_a_previous_run_part_file(archive, tmp_path):
    srv, _ = archive
    path = "/isd-lite/2020/725090-14739-2020.gz"
    data = (srv.root / path.lstrip("/")).read_bytes()
    (tmp_path / "f.gz.part").write_bytes(data[:1000])
    download(srv.url + path, tmp_path / "f.gz", backoff=0)
    assert (tmp_path / "f.gz").read_bytes() == data
    assert srv.requests_for(path) == ["bytes=1000-"]


def test_retries_with_exponential_backoff_then_success(archive, tmp_path):
    srv, _ = archive
    path = "/isd-lite/2019/725090-14739-2019.gz"
    srv.fail_503[path] = 3
    waits: list[float] = []
    download(srv.url + path, tmp_path / "f.gz", backoff=0.5, sleep=waits.append)
    assert len(srv.requests_for(path)) == 4
    assert len(waits) == 3
    for i, w in enumerate(waits):  # 0.5, 1, 2 s with +-25 % jitter
        assert 0.75 * 0.5 * 2**i <= w <= 1.25 * 0.5 * 2**i


def test_gives_up_after_retries_and_404_is_not_retried(archive, tmp_path):
    srv, _ = archive
    path = "/isd-lite/2019/010010-99999-2019.gz"
    srv.fail_503[path] = 100
    with pytest.raises(FetchError, match=r"010010-99999-2019.gz: giving up after 3 attempts.*503"):
        download(srv.url + path, tmp_path / "f.gz", retries=2, backoff=0)
    assert len(srv.requests_for(path)) == 3 and not (tmp_path / "f.gz").exists()
    with pytest.raises(NotFoundError, match="404"):
        download(srv.url + "/isd-lite/2020/948660-99999-2020.gz", tmp_path / "g.gz", backoff=0)
    assert len(srv.requests_for("/isd-lite/2020/948660-99999-2020.gz")) == 1


def test_connection_refused_is_retried_then_fails(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    waits: list[float] = []
    with pytest.raises(FetchError, match=r"giving up after 3 attempts"):
        download(f"http://127.0.0.1:{port}/x.gz", tmp_path / "x.gz", retries=2, backoff=0.01, sleep=waits.append)
    assert len(waits) == 2


# ---------------------------------------------------------------------------------- station choice
def test_select_stations_coverage_and_spread(tmp_path):
    (tmp_path / "h.csv").write_text(HISTORY)
    h = read_isd_history(tmp_path / "h.csv")
    with pytest.warns(FetchWarning, match="only 4 stations cover 2019-2020"):
        assert select_stations(h, [2019, 2020], n=10) == ELIGIBLE
    two = select_stations(h, [2019, 2020], n=2)
    assert len(two) == 2 and set(two) <= set(ELIGIBLE) and two == select_stations(h, [2020, 2019], n=2)
    assert select_stations(h, [2021], n=5) == sorted(ELIGIBLE + ["123450-99999"])  # began 2020-03, covers 2021
    with pytest.raises(ValueError, match=r"not in the station list"):
        select_stations(h, [2019], station_ids=["111111-22222"])
    with pytest.raises(ValueError, match=r"999999-00001.*no LAT/LON"):
        select_stations(h, [2019], station_ids=["999999-00001"])
    with pytest.raises(ValueError, match="USAF-WBAN"):
        select_stations(h, [2019], station_ids=["72509014739"])


def test_station_list_cached_and_refreshed(archive, tmp_path):
    srv, _ = archive
    p = fetch_station_list(srv.url + "/isd-history.csv", tmp_path)
    p2 = fetch_station_list(srv.url + "/isd-history.csv", tmp_path)
    assert p == p2 and len(srv.requests_for("/isd-history.csv")) == 1
    fetch_station_list(srv.url + "/isd-history.csv", tmp_path, max_age_days=0)
    assert len(srv.requests_for("/isd-history.csv")) == 2
    with pytest.warns(FetchWarning, match="using the cached copy"):
        fetch_station_list(srv.url + "/gone.csv", tmp_path, max_age_days=0, retries=0)


# --------------------------------------------------------------------------------------- fetch()
def test_fetch_end_to_end_with_drop_404_and_cache(archive, tmp_path):
    srv, truth = archive
    srv.drop_once.add("/isd-lite/2020/010010-99999-2020.gz")
    kw = dict(
        stations=4,
        base_url=srv.url + "/isd-lite",
        history_url=srv.url + "/isd-history.csv",
        cache=tmp_path / "cache",
        backoff=0,
        progress=False,
    )
    with pytest.warns(FetchWarning, match=r"1 of 8 station-years are not on the server \(404\): 948660-99999-2020"):
        res = fetch("isd-lite", [2019, 2020], tmp_path / "out", **kw)
    assert res.stations == ELIGIBLE and res.missing == ["948660-99999-2020"]
    assert res.output == tmp_path / "out" / "isd-lite_2019-2020.nc"
    assert (tmp_path / "cache" / "isd-lite" / "2020" / "010010-99999-2020.gz").read_bytes() == (
        srv.root / "isd-lite" / "2020" / "010010-99999-2020.gz"
    ).read_bytes()
    ds = read_netcdf(res.output)
    assert ds.sizes == {"time": 17544, "station": 4}
    assert pd.Timestamp(ds.time.values[0]) == pd.Timestamp("2019-01-01") and pd.Timestamp(
        ds.time.values[-1]
    ) == pd.Timestamp("2020-12-31 23:00")
    for (sid, y), (temp, wind) in truth.items():
        got = ds.sel(station=sid, time=str(y))
        np.testing.assert_array_equal(got.temperature.values, np.where(temp == -9999, np.nan, temp / 10).astype("f4"))
        np.testing.assert_array_equal(got.wind_speed.values, (wind / 10).astype("f4"))
    assert np.isnan(ds.temperature.sel(station="948660-99999", time="2020").values).all()
    assert float(ds.lat.sel(station="476620-99999")) == pytest.approx(35.683, abs=1e-4)

    # a second run reuses every cached file and the fresh station list: no request at all
    n_before = len(srv.log)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FetchWarning)
        res2 = fetch("isd-lite", [2019, 2020], tmp_path / "out2", **kw)
    assert len(srv.log) == n_before - 0 + 1  # only the missing 404 file is asked for again
    assert srv.log[-1][0] == "/isd-lite/2020/948660-99999-2020.gz"
    assert len(res2.cached) == 7 and not res2.downloaded


def test_fetch_failure_is_reported_after_other_files(archive, tmp_path):
    srv, _ = archive
    srv.fail_503["/isd-lite/2019/725090-14739-2019.gz"] = 100
    with pytest.raises(FetchError, match=r"1 download\(s\) failed .*rerun to resume.*725090-14739-2019"):
        fetch(
            "isd-lite",
            [2019],
            tmp_path / "out",
            station_ids=["725090-14739", "010010-99999"],
            base_url=srv.url + "/isd-lite",
            history_url=srv.url + "/isd-history.csv",
            cache=tmp_path / "cache",
            retries=1,
            backoff=0,
            progress=False,
        )
    assert (tmp_path / "cache" / "isd-lite" / "2019" / "010010-99999-2019.gz").is_file()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_fetch_global_hourly_source(archive, tmp_path):
    srv, _ = archive
    d = srv.root / "gh" / "2020"
    d.mkdir(parents=True)
    (d / "72509014739.csv").write_bytes((FIX / "global-hourly" / "72509014739.csv").read_bytes())
    res = fetch(
        "global-hourly",
        [2020],
        tmp_path / "out",
        station_ids=["725090-14739"],
        base_url=srv.url + "/gh",
        history_url=srv.url + "/isd-history.csv",
        cache=tmp_path / "cache",
        backoff=0,
        progress=False,
    )
    ds = read_netcdf(res.output)
    assert res.output.name == "global-hourly_2020.nc" and ds.sizes["time"] == 8784  # leap year, whole year
    np.testing.assert_allclose(
        ds.temperature.sel(time=slice("2020-01-01 01:00", "2020-01-01 04:00")).values[:, 0], [3.9, 3.3, 2.5, 2.2]
    )


# ------------------------------------------------------------------------------------- CLI process
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "urlk_forecast.cli", "data", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_fetch_in_a_real_process(archive, tmp_path):
    srv, truth = archive
    srv.drop_once.add("/isd-lite/2019/725090-14739-2019.gz")
    common = [
        "--base-url",
        srv.url + "/isd-lite",
        "--history-url",
        srv.url + "/isd-history.csv",
        "--cache",
        str(tmp_path / "cache"),
        "--backoff",
        "0",
        "-q",
    ]
    r = _cli("fetch", "--source", "isd-lite", "--years", "2019", "2020", "--station-ids", "725090-14739",
             "948660-99999", "--out", str(tmp_path / "out"), *common)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "wrote " in r.stdout and "1 missing" in r.stdout
    assert "warning: 1 of 4 station-years are not on the server (404): 948660-99999-2020" in r.stderr
    ds = read_netcdf(tmp_path / "out" / "isd-lite_2019-2020.nc")
    assert list(ds.station.values) == ["725090-14739", "948660-99999"]
    temp, _ = truth[("725090-14739", 2019)]
    np.testing.assert_array_equal(
        ds.temperature.sel(station="725090-14739", time="2019").values,
        np.where(temp == -9999, np.nan, temp / 10).astype("f4"),
    )
    r = _cli("fetch", "--years", "2019", "--stations", "1", "--no-convert", "--out", str(tmp_path / "o2"), *common)
    assert r.returncode == 0, r.stderr
    assert not list((tmp_path / "o2").glob("*.nc")) if (tmp_path / "o2").exists() else True


def test_cli_fetch_errors_are_one_line(archive, tmp_path):
    srv, _ = archive
    base = ["--base-url", srv.url + "/isd-lite", "--history-url", srv.url + "/isd-history.csv",
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "o"), "-q"]  # fmt: skip
    r = _cli("fetch", "--years", "2019", "--station-ids", "111111-22222", *base)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "Error: station(s) ['111111-22222'] are not in the station list (isd-history.csv)"
    runner = CliRunner()
    r = runner.invoke(data, ["fetch", "--years", "2019", *base])
    assert r.exit_code == 2 and "exactly one of --stations N or --station-ids" in r.output
    r = runner.invoke(data, ["fetch", "--years", "nineteen", "--stations", "2", *base])
    assert r.exit_code == 2 and "'nineteen' is not a year" in r.output
    r = runner.invoke(
        data, ["fetch", "--years", "2019", "--stations", "1", "--base-url", srv.url + "/nowhere", *base[2:]]
    )
    assert r.exit_code == 1 and "nothing to convert" in r.output and "warning: 1 of 1 station-years" in r.output


def test_fetch_from_a_local_mirror_with_file_urls(archive, tmp_path):
    srv, truth = archive
    with pytest.warns(FetchWarning, match=r"1 of 2 station-years .*948660-99999-2020"):
        res = fetch(
            "isd-lite",
            [2020],
            tmp_path / "out",
            station_ids=["725090-14739", "948660-99999"],
            base_url=(srv.root / "isd-lite").as_uri(),
            history_url=(srv.root / "isd-history.csv").as_uri(),
            cache=tmp_path / "cache",
            backoff=0,
            progress=False,
        )
    assert not srv.log  # nothing went over HTTP
    temp, _ = truth[("725090-14739", 2020)]
    np.testing.assert_array_equal(
        read_netcdf(res.output).temperature.sel(station="725090-14739").values,
        np.where(temp == -9999, np.nan, temp / 10).astype("f4"),
    )


def test_running_year_files_are_refreshed_when_a_day_old(tmp_path):
    this_year = pd.Timestamp.now().year
    root = tmp_path / "www"
    (root / "isd-lite" / str(this_year)).mkdir(parents=True)
    (root / "isd-history.csv").write_text(HISTORY)
    name = f"725090-14739-{this_year}.gz"
    gz, _, _ = _isd_year(2020, seed=1)
    (root / "isd-lite" / str(this_year) / name).write_bytes(gz)
    cached = tmp_path / "cache" / "isd-lite" / str(this_year) / name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"old")
    kw = dict(
        station_ids=["725090-14739"],
        base_url=(root / "isd-lite").as_uri(),
        history_url=(root / "isd-history.csv").as_uri(),
        cache=tmp_path / "cache",
        progress=False,
        convert=False,
    )
    assert fetch("isd-lite", [this_year], tmp_path / "o", **kw).cached == [cached]  # fresh: kept
    os.utime(cached, (cached.stat().st_atime, cached.stat().st_mtime - 2 * 86400))
    res = fetch("isd-lite", [this_year], tmp_path / "o", **kw)
    assert res.downloaded == [cached] and cached.read_bytes() == gz
