"""The paper's Table 12 comparison: every baseline (and optionally a trained model) on the same test windows.

:func:`run_benchmark` loads the data (the synthetic 3850-station default when none is given), splits it
chronologically like the training code, fits each method on the training split, and forecasts the *same* test
windows with every method. All methods are scored on exactly the same target points: the observed targets
(``y_mask``) that every method in the table forecast (a method that leaves a point NaN -- e.g. an NWP grid that does
not cover a station, or the neural model for a station with no observed input -- removes that point for all methods;
the ``coverage`` column shows each method's own share, so nothing is hidden). Scores are the shared Corrformer-style
metrics (:func:`urlk_forecast.metrics.evaluate_arrays`): per window the mean over lead times x stations, then the mean
over windows, in physical units.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .base import resolve_indices, to_numpy, window_arrays

__all__ = ["run_benchmark", "BenchmarkResult", "PAPER_TABLE12", "DEFAULT_BASELINES"]

#: Methods run when ``baselines`` is not given (``prophet`` -- the real package, on a station subset -- is added when
#: it is installed; ``gfs`` when a grid is given).
DEFAULT_BASELINES: tuple[str, ...] = ("persistence", "seasonal_naive", "climatology", "holt_winters", "prophet_like",
                                      "gbdt")

#: Published numbers (UniRepLKNet paper, Table 12, Corrformer's global station benchmark), for reference only.
PAPER_TABLE12: dict[str, dict[str, tuple[float, float]]] = {
    "temperature": {"UniRepLKNet-S (paper)": (7.602, 1.832), "Corrformer (paper)": (7.709, 1.888)},
    "wind_speed": {"UniRepLKNet-S (paper)": (3.865, 1.301), "Corrformer (paper)": (3.889, 1.304)},
}

Progress = Callable[[str], None]


@dataclass
class BenchmarkResult:
    """The comparison table (``rows``), run information and the optional Prophet side-by-side."""

    rows: pd.DataFrame
    info: dict[str, Any]
    prophet: pd.DataFrame | None = None
    reference: pd.DataFrame | None = None
    failures: dict[str, str] = field(default_factory=dict)
    per_lead: pd.DataFrame | None = None

    def to_markdown(self) -> str:
        """The table(s) as Markdown, with a header describing the data and the windows."""
        i = self.info
        lines = [
            f"# Baseline comparison: {i['variable']} ({i['units']})",
            "",
            f"- data: {i['data']}",
            f"- stations: {i['stations']}; test windows scored: {i['windows']} of {i['windows_total']}"
            f"{' (evenly spaced over the test split)' if i['windows'] < i['windows_total'] else ''}; "
            f"seq_len/label_len/pred_len = {i['seq_len']}/{i['label_len']}/{i['pred_len']}",
            f"- scored target points (observed, forecast by every method): {i['points']} of {i['observed']} observed",
            f"- train {i['train_period']}; test {i['test_period']} (plus {i['seq_len']} steps of input history)",
            "",
            _markdown_table(self.rows, ["method", "type", "parameters", "MSE", "MAE", "fit_s", "predict_s",
                                        "coverage"]),
        ]
        if self.reference is not None:
            lines += ["", "Published numbers (paper Table 12, Corrformer release test set; reported, not re-run here):",
                      "", _markdown_table(self.reference, ["method", "MSE", "MAE"])]
        if self.prophet is not None:
            lines += ["", f"Prophet-like vs the real Prophet on {int(self.prophet['stations'].iloc[0])} stations "
                          "(same windows and points; Prophet-like fit_s is its all-station fit time pro-rated to "
                          "these stations):", "",
                      _markdown_table(self.prophet, ["method", "stations", "MSE", "MAE", "fit_s", "predict_s"])]
        if self.failures:
            lines += ["", "Failed methods:"] + [f"- {k}: {v}" for k, v in self.failures.items()]
        return "\n".join(lines) + "\n"

    def to_text(self) -> str:
        """Plain-text table for the terminal."""
        return self.to_markdown()

    def write(self, out_dir: str | os.PathLike[str]) -> list[Path]:
        """Write ``benchmark_<variable>.md``, ``.csv``, ``_per_lead.csv`` (and ``_prophet.csv``) atomically."""
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        var = self.info["variable"]
        paths = [d / f"benchmark_{var}.md", d / f"benchmark_{var}.csv"]
        _atomic_text(paths[0], self.to_markdown())
        _atomic_text(paths[1], self.rows.to_csv(index=False))
        if self.per_lead is not None and len(self.per_lead):
            paths.append(d / f"benchmark_{var}_per_lead.csv")
            _atomic_text(paths[-1], self.per_lead.to_csv(index=False))
        if self.prophet is not None:
            paths.append(d / f"benchmark_{var}_prophet.csv")
            _atomic_text(paths[-1], self.prophet.to_csv(index=False))
        return paths


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "-"
        return f"{v:.3f}" if abs(v) < 1e4 else f"{v:.4g}"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return str(v)


def _markdown_table(df: pd.DataFrame, cols: Sequence[str]) -> str:
    cols = [c for c in cols if c in df.columns]
    head = "| " + " | ".join(cols) + " |"
    sep = "|" + "|".join("---" if c in ("method", "type") else "---:" for c in cols) + "|"
    body = ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for _, r in df.iterrows()]
    return "\n".join([head, sep, *body])


# ---------------------------------------------------------------------------------------------------- running
def _load_data(data: Any, stations: int | None, hours: int | None, seed: int, progress: Progress
               ) -> tuple[xr.Dataset, str]:
    if data is None:
        from urlk_forecast.data.synthetic import synthetic_global

        n = 3850 if stations is None else int(stations)
        h = 17544 if hours is None else int(hours)
        progress(f"generating the SYNTHETIC default dataset ({n} stations x {h} hours)")
        return (synthetic_global(stations=n, hours=h, seed=seed),
                f"synthetic_global(stations={n}, hours={h}, seed={seed}) -- SYNTHETIC")
    if hours is not None:
        raise ValueError("hours applies to the synthetic default only (no --data)")
    if isinstance(data, xr.Dataset):
        return data, str(data.attrs.get("title", "in-memory dataset"))
    from urlk_forecast.data.readers import open_dataset

    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"--data: {path} does not exist")
    return open_dataset(path), str(path)


def _subsample_stations(ds: xr.Dataset, stations: int | None, seed: int) -> xr.Dataset:
    S = ds.sizes["station"]
    if stations is None or int(stations) >= S:
        return ds
    if int(stations) < 1:
        raise ValueError(f"stations must be >= 1, got {stations}")
    keep = np.sort(np.random.default_rng(seed).choice(S, size=int(stations), replace=False))
    return ds.isel(station=keep)


def _make(name: str, kwargs: dict[str, Any]) -> Any:
    from . import get_baseline

    return get_baseline(name, **kwargs)


def run_benchmark(data: Any = None, variable: str = "temperature", baselines: Sequence[str] | None = None,
                  run: str | os.PathLike[str] | None = None, gfs: Any = None, stations: int | None = None,
                  hours: int | None = None, max_windows: int | None = 512, seq_len: int = 48,
                  label_len: int = 24, pred_len: int = 24,
                  n_jobs: int | None = None, threads: int | None = None, prophet_stations: int = 8,
                  batch_size: int = 32, seed: int = 0, progress: Progress | None = None) -> BenchmarkResult:
    """Run the comparison; see the module docstring.

    ``data``: Dataset, path (any format :func:`~urlk_forecast.data.readers.open_dataset` reads) or None for the
    synthetic default. ``baselines``: registry names (default :data:`DEFAULT_BASELINES`, + ``prophet`` if installed,
    + ``gfs`` if ``gfs`` is given). ``run``: a saved :class:`~urlk_forecast.forecaster.Forecaster` directory whose
    window geometry and variable are used. ``gfs``: NWP grid (path, Dataset, or ``"synthetic"`` for the demo grid
    built from the test truth + error). ``stations``: random subset (seeded) of real data, or the synthetic station
    count; ``hours``: synthetic length (default 2 years). ``max_windows``: evenly spaced test
    windows (None/0 = all). ``n_jobs``: Holt-Winters processes; ``threads``: GBDT OpenMP threads.
    """
    from urlk_forecast.data.schema import VARIABLES, validate
    from urlk_forecast.data.windows import WindowDataset, split_dataset

    say: Progress = progress or (lambda _msg: None)
    model = None
    max_gap = 3
    if run is not None:
        from urlk_forecast.forecaster import Forecaster

        say(f"loading the trained model from {run}")
        model = Forecaster.load(run)
        if variable != model.variable:
            say(f"the model forecasts {model.variable!r}; benchmarking {model.variable!r}")
        variable = model.variable
        seq_len, label_len, pred_len, max_gap = model.seq_len, model.label_len, model.pred_len, model.max_gap
    if variable not in VARIABLES:
        raise ValueError(f"unknown variable {variable!r}; choose from {', '.join(VARIABLES)}")
    ds, data_label = _load_data(data, stations if model is None else None, hours, seed, say)
    validate(ds, variables=[variable])
    if model is not None:
        ids = [str(s) for s in model.station_ids]
        have = pd.Index([str(s) for s in ds["station"].values])
        missing = [s for s in ids if s not in have]
        if missing:
            raise ValueError(f"the data lacks {len(missing)} of the model's stations (e.g. {missing[:5]}); "
                             "benchmark the model on the data it was trained for")
        if stations is not None and int(stations) != len(ids):
            raise ValueError(f"--stations cannot subsample a trained model's {len(ids)} stations")
        ds = ds.isel(station=have.get_indexer(ids))
    elif data is not None:
        ds = _subsample_stations(ds, stations, seed)
    parts = split_dataset(ds, context=seq_len)
    train, test = parts["train"], parts["test"]
    if model is not None:
        period = model.train_info.get("train_period") or []
        test_start = pd.Timestamp(test.time.values[int(test.attrs.get("split_context", 0) or 0)])
        if len(period) == 2 and pd.Timestamp(period[1]) >= test_start:
            warnings.warn(f"the model was trained on data up to {period[1]}, inside the test split (from "
                          f"{test_start}): its row is not an out-of-sample score", RuntimeWarning, stacklevel=2)
    if test.sizes["time"] < seq_len + pred_len:
        raise ValueError(f"the test split has {test.sizes['time']} steps, fewer than seq_len + pred_len")
    ws = WindowDataset(test, variable, seq_len, label_len, pred_len, max_gap=max_gap)
    n_total = len(ws)
    if n_total == 0:
        raise ValueError("the test split has no complete window")
    if max_windows and int(max_windows) < n_total:
        idx = np.unique(np.linspace(0, n_total - 1, int(max_windows)).round().astype(np.int64))
    else:
        idx = resolve_indices(ws, None)
    say(f"test split: {n_total} windows, scoring {idx.size}; {ws.num_stations} stations")

    names = list(baselines) if baselines is not None else list(DEFAULT_BASELINES)
    names = [n.strip().lower().replace("-", "_") for n in names if n.strip()]
    from .prophet_like import prophet_available

    if baselines is None and prophet_available():
        names.append("prophet")
    if gfs is not None and "gfs" not in names:
        names.append("gfs")
    if "gfs" in names and gfs is None:
        raise ValueError("the gfs baseline needs a gridded forecast: pass --gfs FILE (or --gfs synthetic for a demo)")
    if "gfs" in names and str(ds.attrs.get("coords_standardised", "")) == "true":
        raise ValueError("this dataset has standardised (not geographic) station coordinates, so an NWP grid cannot "
                         "be interpolated to its stations; drop gfs")

    methods: list[tuple[str, Any]] = []
    failures: dict[str, str] = {}
    prophet_real = None
    for name in names:
        kw: dict[str, Any] = {}
        if name == "holt_winters":
            kw["n_jobs"] = n_jobs
        elif name == "gbdt":
            kw.update(n_threads=threads, seq_len=seq_len, max_horizon=pred_len,
                      lags=tuple(v for v in (*range(1, 25), 48) if v <= seq_len))
        elif name == "prophet":
            kw.update(stations=prophet_stations)
        elif name == "gfs":
            if isinstance(gfs, str) and gfs == "synthetic":
                from .gfs import synthetic_nwp_grid

                say("building the synthetic demo NWP grid from the test truth + error (NOT a real model)")
                kw.update(grid_source=synthetic_nwp_grid(test, variable, seed=seed), label="GFS (synthetic demo)")
            else:
                kw["grid_source"] = gfs
        try:
            method = _make(name, kw)
        except Exception as e:  # noqa: BLE001 - report and go on with the others
            failures[name] = f"{type(e).__name__}: {e}"
            continue
        say(f"fitting {method.name} ...")
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                method.fit(train, variable)
            for w in caught:
                if issubclass(w.category, RuntimeWarning | UserWarning):
                    say(f"  note: {w.message}")
        except Exception as e:  # noqa: BLE001
            failures[method.name] = f"{type(e).__name__}: {e}"
            say(f"  FAILED: {failures[method.name]}")
            continue
        method.fit_seconds = time.perf_counter() - t0
        say(f"  fitted in {method.fit_seconds:.1f} s")
        if name == "prophet":
            prophet_real = method
        else:
            methods.append((name, method))
    if model is not None:
        methods.append(("model", model))

    rows, points, observed, windows = _score_all(methods, ws, idx, batch_size, say, failures)
    info = {
        "variable": variable, "units": VARIABLES[variable]["units"], "data": data_label,
        "stations": ws.num_stations, "windows": int(idx.size), "windows_total": int(n_total),
        "windows_scored": int(windows), "points": int(points), "observed": int(observed),
        "seq_len": seq_len, "label_len": label_len, "pred_len": pred_len,
        "train_period": f"{pd.Timestamp(train.time.values[0])} .. {pd.Timestamp(train.time.values[-1])}",
        "test_period": f"{pd.Timestamp(test.time.values[int(test.attrs.get('split_context', 0) or 0)])} .. "
                       f"{pd.Timestamp(test.time.values[-1])}",
    }
    reference = None
    if str(ds.attrs.get("source_format", "")) == "corrformer":
        ref = PAPER_TABLE12[variable]
        reference = pd.DataFrame([{"method": k, "MSE": v[0], "MAE": v[1]} for k, v in ref.items()])
    prophet_df = None
    if prophet_real is not None:
        prophet_df = _prophet_side_by_side(prophet_real, dict(methods).get("prophet_like"), test, ws, idx,
                                           variable, seq_len, label_len, pred_len, max_gap, batch_size, say)
    return BenchmarkResult(rows=rows, info=info, prophet=prophet_df, reference=reference, failures=failures,
                           per_lead=rows.attrs.get("per_lead"))


def _score_all(methods: list[tuple[str, Any]], ws: Any, idx: np.ndarray, batch_size: int, say: Progress,
               failures: dict[str, str]) -> tuple[pd.DataFrame, int, int, int]:
    """Forecast every chunk of windows with every method; score all on the common observed+forecast points."""
    from urlk_forecast.metrics import evaluate_arrays, per_horizon

    live = list(methods)
    pred_s = {n: 0.0 for n, _ in live}
    sums = {n: [0.0, 0.0] for n, _ in live}
    lead_sums: dict[str, np.ndarray] = {}  # method -> (H, 2) window-weighted per-lead mse, mae
    lead_w: np.ndarray | None = None
    own_cover = {n: 0 for n, _ in live}
    weight = points = observed = 0
    n_chunks = -(-idx.size // batch_size)
    t_report = time.perf_counter()
    for c, start in enumerate(range(0, idx.size, batch_size)):
        chunk = idx[start : start + batch_size]
        arrs = window_arrays(ws, chunk)
        y = arrs["y"]
        mask = arrs["y_mask"] & np.isfinite(y)
        preds: dict[str, np.ndarray] = {}
        for name, m in list(live):
            t0 = time.perf_counter()
            try:
                p = to_numpy(m.predict_windows(ws, chunk)).astype(np.float32, copy=False)
            except Exception as e:  # noqa: BLE001 - drop the method, keep the table
                label = getattr(m, "name", name)
                failures[label] = f"predict failed: {type(e).__name__}: {e}"
                say(f"  {label} FAILED while predicting: {e}")
                live = [(n, mm) for n, mm in live if n != name]
                continue
            pred_s[name] += time.perf_counter() - t0
            if p.shape != y.shape:
                raise ValueError(f"{name}: predict_windows returned {p.shape}, expected {y.shape}")
            preds[name] = p
        common = mask.copy()
        for name, p in preds.items():
            fin = np.isfinite(p)
            own_cover[name] += int((mask & fin).sum())
            common &= fin
        observed += int(mask.sum())
        points += int(common.sum())
        if common.any():
            k = None
            wh = common.any(axis=2).sum(axis=0).astype(np.float64)  # windows with a scored point, per lead
            lead_w = wh if lead_w is None else lead_w + wh
            for name, p in preds.items():
                r = evaluate_arrays(p, y, common)
                k = int(r["windows"])
                sums[name][0] += r["mse"] * k
                sums[name][1] += r["mae"] * k
                ph = per_horizon(p, y, common)[["mse", "mae"]].to_numpy(np.float64)
                acc = np.nan_to_num(ph) * wh[:, None]
                lead_sums[name] = acc if name not in lead_sums else lead_sums[name] + acc
            weight += k or 0
        if time.perf_counter() - t_report > 30 or c == n_chunks - 1:
            say(f"  scored {min(start + batch_size, idx.size)}/{idx.size} windows")
            t_report = time.perf_counter()
    rows = []
    alive = {n for n, _ in live}
    for name, m in methods:
        if name not in alive:
            continue
        is_model = name == "model"
        label = f"{m.model} (trained, --run)" if is_model else m.name
        kind = "neural" if is_model else m.kind
        n_params = sum(int(p.numel()) for p in m.net.parameters()) if is_model else int(m.n_params)
        fit_s = float(m.train_info.get("wall_s", float("nan"))) if is_model else float(m.fit_seconds or 0.0)
        rows.append({
            "method": label, "type": kind, "parameters": n_params,
            "MSE": sums[name][0] / weight if weight else float("nan"),
            "MAE": sums[name][1] / weight if weight else float("nan"),
            "fit_s": fit_s, "predict_s": pred_s[name],
            "coverage": own_cover[name] / observed if observed else float("nan"),
        })
    df = pd.DataFrame(rows, columns=["method", "type", "parameters", "MSE", "MAE", "fit_s", "predict_s", "coverage"])
    leads = []
    if lead_w is not None:
        for (name, _), label in zip([(n, m) for n, m in methods if n in alive], df["method"]):
            if name not in lead_sums:
                continue
            with np.errstate(invalid="ignore", divide="ignore"):
                v = lead_sums[name] / lead_w[:, None]
            for h in range(v.shape[0]):
                leads.append({"method": label, "lead": h + 1, "MSE": v[h, 0], "MAE": v[h, 1]})
    df.attrs["per_lead"] = pd.DataFrame(leads, columns=["method", "lead", "MSE", "MAE"])
    return df, points, observed, weight


def _prophet_side_by_side(real: Any, own: Any, test: xr.Dataset, ws: Any, idx: np.ndarray, variable: str,
                          seq_len: int, label_len: int, pred_len: int, max_gap: int, batch_size: int,
                          say: Progress) -> pd.DataFrame | None:
    """Real Prophet vs the Prophet-like model on the stations Prophet was fitted on (same windows and points)."""
    from urlk_forecast.data.windows import WindowDataset

    if own is None:
        say("(prophet_like not run: no Prophet side-by-side)")
        return None
    sub_ids = list(real.models)
    if not sub_ids:
        return None
    have = pd.Index([str(s) for s in test["station"].values])
    sub = test.isel(station=np.sort(have.get_indexer(sub_ids)))
    ws_sub = WindowDataset(sub, variable, seq_len, label_len, pred_len, max_gap=max_gap)
    say(f"Prophet side-by-side on {len(sub_ids)} stations ...")
    rows_, _, _, _ = _score_all([("prophet", real), ("prophet_like", own)], ws_sub, idx, batch_size, say, {})
    per_station_fit = (own.fit_seconds or 0.0) / max(len(own.station_ids), 1) * len(sub_ids)
    rows_["stations"] = len(sub_ids)
    rows_.loc[rows_["method"] == own.name, "fit_s"] = per_station_fit
    return rows_[["method", "stations", "MSE", "MAE", "fit_s", "predict_s"]]
