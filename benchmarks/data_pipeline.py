"""Data-pipeline benchmark: synthetic generation, netCDF write/open, and training windows per second.

    python benchmarks/data_pipeline.py                       # full size: 3850 stations x 17544 hours
    python benchmarks/data_pipeline.py --stations 500 --hours 4000   # quick run

Prints one line per measurement and, with ``--json PATH``, writes them as JSON. The data are SYNTHETIC
(``urlk_forecast.data.synthetic.synthetic_global``). Windows/s counts windows delivered as torch tensors in batches
of ``--batch-size`` random windows (``WindowDataset.batch``, the training fast path); the per-item path through a
``torch.utils.data.DataLoader`` is measured too for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from urlk_forecast.data.synthetic import synthetic_global
from urlk_forecast.data.windows import WindowDataset, split_dataset


def _io() -> tuple:
    try:
        from urlk_forecast.data.readers import read_netcdf, write_netcdf

        return write_netcdf, read_netcdf, "urlk_forecast.data.readers"
    except ImportError:  # readers not available: plain xarray

        def write(ds: xr.Dataset, path: Path) -> Path:
            ds.to_netcdf(path)
            return path

        return write, xr.load_dataset, "xarray"


def _throughput(fn, seconds: float, per_call: int) -> tuple[float, int]:
    """Windows/s of ``fn`` (each call delivers ``per_call`` windows), run for at least ``seconds``."""
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and n >= 3:
            return n * per_call / dt, n


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stations", type=int, default=3850)
    ap.add_argument("--hours", type=int, default=17544)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput measurement")
    ap.add_argument("--variable", default="temperature", choices=["temperature", "wind_speed"])
    ap.add_argument("--workdir", default=None, help="where to write the netCDF file (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    res: dict = {
        "stations": args.stations,
        "hours": args.hours,
        "batch_size": args.batch_size,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch_threads": torch.get_num_threads(),
    }

    def report(key: str, value: float, unit: str, note: str = "") -> None:
        res[key] = value
        print(f"{key:32s} {value:12.3f} {unit:10s} {note}", flush=True)

    t0 = time.perf_counter()
    synthetic_global(stations=8, hours=8, seed=args.seed)  # numba compile / cache load
    report("synthetic_warmup_s", time.perf_counter() - t0, "s", "(numba compile or cache load)")
    t0, c0 = time.perf_counter(), time.process_time()
    ds = synthetic_global(stations=args.stations, hours=args.hours, seed=args.seed)
    report("synthetic_generate_s", time.perf_counter() - t0, "s", f"{args.stations} x {args.hours}")
    report("synthetic_generate_cpu_s", time.process_time() - c0, "s", "CPU time, all threads")

    write, read, io_name = _io()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        path = Path(tmp) / "synthetic.nc"
        t0 = time.perf_counter()
        write(ds, path)
        report("netcdf_write_s", time.perf_counter() - t0, "s", f"{path.stat().st_size / 2**20:.0f} MiB via {io_name}")
        t0 = time.perf_counter()
        with xr.open_dataset(path) as lazy:
            _ = lazy.sizes
        report("netcdf_open_lazy_s", time.perf_counter() - t0, "s", "xarray.open_dataset (metadata only)")
        t0 = time.perf_counter()
        loaded = read(path)
        report("netcdf_read_s", time.perf_counter() - t0, "s", f"full read into the schema via {io_name}")
        del loaded

    splits = split_dataset(ds)
    t0 = time.perf_counter()
    ws = WindowDataset(splits["train"], args.variable)
    report("windows_build_s", time.perf_counter() - t0, "s", f"train split: {len(ws)} windows, gap filling + order")
    cpu0 = time.process_time()
    rng = np.random.default_rng(0)
    bs = args.batch_size

    def one_batch() -> dict:
        return ws.batch(rng.integers(0, len(ws), bs))

    rate, n = _throughput(one_batch, args.seconds, bs)
    report("windows_per_s_batch", rate, "windows/s", f"ws.batch({bs} random), {n} batches")
    report("windows_per_cpu_s_batch", (n + 1) * bs / (time.process_time() - cpu0), "windows/s", "per CPU second")
    loader = torch.utils.data.DataLoader(ws, batch_size=bs, shuffle=True, num_workers=0)
    it = iter(loader)

    def one_loader_batch() -> dict:
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(loader)
            return next(it)

    rate, n = _throughput(one_loader_batch, max(args.seconds / 2, 1.0), bs)
    report("windows_per_s_dataloader", rate, "windows/s", f"DataLoader per-item path + collate, {n} batches")
    sampler = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(ws), bs, drop_last=False)
    loader = torch.utils.data.DataLoader(ws, batch_size=None, sampler=sampler, num_workers=0)
    it = iter(loader)
    rate, n = _throughput(one_loader_batch, args.seconds, bs)
    report("windows_per_s_batchsampler", rate, "windows/s", f"DataLoader + BatchSampler -> ws.batch, {n} batches")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
