"""Throughput of the station-data readers on generated real-format files (offline).

    python datasets/tools/benchmark_readers.py --stations 200

Writes ``stations`` x 2 years of ISD-Lite files (full hourly years, ~5 % hours absent) and one Global
Hourly station-year (3 reports an hour) to a temp directory, then times ``read_isd_lite`` (reported
per station-year and extrapolated to the 3850-station, 2-year Corrformer-sized archive),
``write_netcdf`` / ``read_netcdf`` of the result, and ``read_global_hourly``.
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from urlk_forecast.data.readers import read_global_hourly, read_isd_lite, read_netcdf, write_netcdf


def _isd_files(root: Path, stations: int, years: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    for y in years:
        times = pd.date_range(f"{y}-01-01", f"{y}-12-31 23:00", freq="h")
        heads = [f"{t.year:4d} {t.month:02d} {t.day:02d} {t.hour:02d}" for t in times]
        for s in range(stations):
            temp = rng.integers(-300, 350, len(times))
            wind = rng.integers(0, 250, len(times))
            keep = rng.random(len(times)) > 0.05
            body = "".join(
                f"{h}{a:6d}{-9999:6d}{10132:6d}{180:6d}{w:6d}{4:6d}{-9999:6d}{-9999:6d}\n"
                for h, a, w, k in zip(heads, temp, wind, keep)
                if k
            )
            (root / f"{100000 + s:06d}-99999-{y}.gz").write_bytes(gzip.compress(body.encode(), 6))


def _global_hourly_file(path: Path, year: int) -> int:
    rng = np.random.default_rng(1)
    header = (
        '"STATION","DATE","SOURCE","LATITUDE","LONGITUDE","ELEVATION","NAME","REPORT_TYPE","CALL_SIGN",'
        '"QUALITY_CONTROL","WND","CIG","VIS","TMP","DEW","SLP","AA1","MA1","REM"\n'
    )
    rows = []
    for t in pd.date_range(f"{year}-01-01", f"{year}-12-31 23:00", freq="20min"):
        t = t + pd.Timedelta(minutes=int(rng.integers(0, 10)))
        rows.append(
            f'"72509014739","{t:%Y-%m-%dT%H:%M:%S}","7","42.3606","-71.0097","3.7","BOSTON LOGAN INTERNATIONAL '
            f'AIRPORT, MA US","FM-15","KBOS ","V030","250,1,N,{rng.integers(0, 200):04d},1","22000,1,9,N",'
            f'"016093,1,9,9","{rng.integers(-200, 300):+05d},1","-0033,1","10132,1","01,0000,9,1",'
            f'"10129,1,10127,1","MET10301 METAR KBOS 25009KT 10SM FEW220 04/M03 A2992"\n'
        )
    path.write_text(header + "".join(rows))
    return len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stations", type=int, default=200)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "isd"
        root.mkdir()
        _isd_files(root, args.stations, (2019, 2020))
        read_isd_lite(root, history=False)  # warm-up: numba kernel from its cache, imports
        t0 = time.perf_counter()
        ds = read_isd_lite(root, history=False)
        dt = time.perf_counter() - t0
        n = 2 * args.stations
        print(f"read_isd_lite     {n} station-years in {dt:.2f} s = {1e3 * dt / n:.2f} ms per station-year "
              f"(3850 x 2 years: ~{dt / n * 7700:.0f} s)")  # fmt: skip
        nc = Path(tmp) / "isd.nc"
        t0 = time.perf_counter()
        write_netcdf(ds, nc)
        print(f"write_netcdf      {ds.sizes['station']} x {ds.sizes['time']}: {time.perf_counter() - t0:.2f} s, "
              f"{nc.stat().st_size / 1e6:.0f} MB")  # fmt: skip
        t0 = time.perf_counter()
        read_netcdf(nc)
        print(f"read_netcdf       {time.perf_counter() - t0:.2f} s")
        gh = Path(tmp) / "72509014739.csv"
        rows = _global_hourly_file(gh, 2020)
        t0 = time.perf_counter()
        read_global_hourly(gh)
        dt = time.perf_counter() - t0
        print(f"read_global_hourly 1 station-year ({rows} reports): {dt:.2f} s = {1e6 * dt / rows:.1f} us per report")


if __name__ == "__main__":
    main()
