"""A short description of a schema dataset: stations, span, frequency, missing share and value ranges.

Used by ``urlk-forecast data info`` and handy before training to see what a file really holds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .schema import data_variables
from .variables import REGISTRY

__all__ = ["describe", "format_description", "format_step"]


def format_step(step: pd.Timedelta) -> str:
    """``Timedelta('1h')`` -> ``"1h"``, ``3 days`` -> ``"3D"``, ``30 min`` -> ``"30min"``."""
    s = int(pd.Timedelta(step).total_seconds())
    for unit, n in (("D", 86400), ("h", 3600), ("min", 60)):
        if s and s % n == 0:
            return f"{s // n}{unit}"
    return f"{s}s"


def describe(ds: xr.Dataset) -> dict[str, Any]:
    """Plain-Python summary (JSON-serialisable) of a schema dataset."""
    t = pd.DatetimeIndex(ds["time"].values)
    freq: str | None = None
    if len(t) >= 2:
        d = np.diff(t.asi8)
        freq = format_step(pd.Timedelta(int(d[0]))) if np.all(d == d[0]) else "irregular"
    out: dict[str, Any] = {
        "stations": int(ds.sizes["station"]),
        "time_steps": int(ds.sizes["time"]),
        "time_start": t[0].isoformat() if len(t) else None,
        "time_end": t[-1].isoformat() if len(t) else None,
        "frequency": freq,
        "variables": {},
        "coords": {},
        "attrs": {k: str(v) for k, v in ds.attrs.items() if k not in ("Conventions", "featureType")},
    }
    for v in data_variables(ds):
        a = np.asarray(ds[v].transpose("time", "station").values)
        # chunks over time keep memory small on 3850 x 17544 archives; sums in float64
        n_ok, total, total_sq, n_out = 0, 0.0, 0.0, 0
        lo, hi = np.inf, -np.inf
        spec = REGISTRY.get(v)  # None: a variable outside the registry has no known plausible range
        lo_ok, hi_ok = (spec.valid_min, spec.valid_max) if spec is not None else (-np.inf, np.inf)
        seen = np.zeros(a.shape[1], bool)
        for i in range(0, a.shape[0], 2048):
            c = a[i : i + 2048]
            ok = np.isfinite(c)
            seen |= ok.any(axis=0)
            k = int(ok.sum())
            if k:
                x = c[ok].astype(np.float64)
                n_ok, total, total_sq = n_ok + k, total + float(x.sum()), total_sq + float((x * x).sum())
                lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
                n_out += int(np.count_nonzero((x < lo_ok) | (x > hi_ok)))
        stats: dict[str, Any] = {
            "units": str(ds[v].attrs.get("units", "")),
            "missing_pct": 100.0 * (1.0 - n_ok / a.size) if a.size else 0.0,
            "stations_all_missing": int((~seen).sum()),
            "plausible_range": [spec.valid_min, spec.valid_max] if spec is not None else None,
            "outside_plausible_range": n_out,
        }
        if n_ok:
            mean = total / n_ok
            std = float(np.sqrt(max(total_sq / n_ok - mean * mean, 0.0)))
            stats.update(min=lo, max=hi, mean=mean, std=std)
        else:
            stats.update(min=None, max=None, mean=None, std=None)
        out["variables"][v] = stats
    for c in ("lat", "lon", "elevation"):
        a = np.asarray(ds[c].values, np.float64)
        ok = np.isfinite(a)
        out["coords"][c] = {
            "min": float(a[ok].min()) if ok.any() else None,
            "max": float(a[ok].max()) if ok.any() else None,
            "unknown": int((~ok).sum()),
        }
    return out


def _num(x: float | None, width: int = 10) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.2f}"


def format_description(info: dict[str, Any], title: str | None = None) -> str:
    """Human-readable table of :func:`describe`'s output."""
    lines = []
    if title:
        lines.append(f"dataset     {title}")
    lines.append(f"stations    {info['stations']}")
    span = f"{info['time_start']} .. {info['time_end']}" if info["time_start"] else "(empty)"
    freq = f", every {info['frequency']}" if info["frequency"] and info["frequency"] != "irregular" else ""
    irregular = ", IRREGULAR steps" if info["frequency"] == "irregular" else ""
    lines.append(f"time        {span}  ({info['time_steps']} steps{freq}{irregular})")
    lines.append("")
    w = max([12, *(len(v) for v in info["variables"])])  # the variable column fits the longest name
    lines.append(
        f"{'variable':<{w}} {'units':<6} {'missing%':>9} {'min':>10} {'mean':>10} {'max':>10} {'std':>10}  "
        "all-missing stations"
    )
    for v, s in info["variables"].items():
        lines.append(
            f"{v:<{w}} {s['units']:<6} {s['missing_pct']:>9.2f} {_num(s['min'])} {_num(s['mean'])} {_num(s['max'])} "
            f"{_num(s['std'])}  {s['stations_all_missing']}"
        )
    for v, s in info["variables"].items():
        if s.get("outside_plausible_range"):
            lo, hi = s["plausible_range"]
            lines.append(
                f"WARNING: {s['outside_plausible_range']} {v} value(s) outside the plausible range [{lo:g}, {hi:g}] "
                f"{s['units']} (wrong units?)"
            )
    lines.append("")
    parts = []
    for c, unit in (("lat", "deg"), ("lon", "deg"), ("elevation", "m")):
        s = info["coords"][c]
        rng = "unknown" if s["min"] is None else f"[{s['min']:.2f}, {s['max']:.2f}] {unit}"
        parts.append(f"{c} {rng}" + (f" ({s['unknown']} unknown)" if s["unknown"] and s["min"] is not None else ""))
    lines.append("coords      " + "; ".join(parts))
    for k, v in info["attrs"].items():
        lines.append(f"{k:<11} {v if len(v) <= 160 else v[:157] + '...'}")
    return "\n".join(lines)
