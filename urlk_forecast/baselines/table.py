"""The paper's Table 12 comparison: every baseline (and optionally a trained model) on the same test windows.

:func:`run_benchmark` loads the data (the synthetic 3850-station default when none is given), splits it
chronologically like the training code, fits each method on the training split, and forecasts the *same* test
windows with every method. Every method -- a trained :class:`~urlk_forecast.forecaster.Forecaster` is just one
more :class:`~urlk_forecast.method.Method` -- is scored by the one scorer (:func:`urlk_forecast.scoring.score_methods`)
on exactly the same target points: the observed targets (``y_mask``) that every method in the table forecast (a method
that leaves a point NaN -- e.g. an NWP grid that does not cover a station, or the neural model for a station with no
observed input -- removes that point for all methods; the ``coverage`` column shows each method's own share, so nothing
is hidden). Scores are the Corrformer-style metrics: per window the mean over lead times x stations, then the mean
over windows, in physical units.

:func:`compare` is the same table for methods already fitted (the end-of-training table of ``urlk-forecast train``).

A trained model of several target variables (``train --var temperature,wind_speed``) is benchmarked per variable: every
baseline is fitted once per target variable (they are univariate), the model's forecast of each variable
(:func:`urlk_forecast.targets.target_views`: the network runs once for all of them) is scored beside them on that
variable's test windows, and the table has one row per (method, variable) with a ``variable`` column.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..data.readers import open_dataset
from ..data.schema import infer_frequency, require_variable, validate
from ..data.synthetic import synthetic_global
from ..data.target_windows import TargetWindows
from ..data.windows import WindowDataset, WindowSource, split_dataset
from ..forecaster import Forecaster
from ..method import Method
from ..metrics import level_label
from ..scoring import Scores, ScoreTable, method_labels, score_methods
from ..targets import score_targets, target_views
from ..utils import atomic_write_text, describe_steps, evenly_spaced, freq_label, normalize_name
from ..utils.quantiles import quantile_levels
from ..utils.steps import default_season, length_steps
from . import BASELINES, get_baseline
from .gfs import synthetic_nwp_grid
from .naive import SeasonalNaive
from .prophet_like import prophet_available

__all__ = ["run_benchmark", "compare", "table_rows", "BenchmarkResult", "PAPER_TABLE12", "DEFAULT_BASELINES",
           "COLUMNS"]

#: Methods run when ``baselines`` is not given (``prophet`` -- the real package, on a station subset -- is added when
#: it is installed; ``gfs`` when a grid is given).
DEFAULT_BASELINES: tuple[str, ...] = ("persistence", "seasonal_naive", "climatology", "holt_winters", "prophet_like",
                                      "gbdt")

#: Columns of the comparison table.
COLUMNS: tuple[str, ...] = ("method", "type", "parameters", "MSE", "MAE", "fit_s", "predict_s", "coverage")

#: Published numbers (UniRepLKNet paper, Table 12, Corrformer's global station benchmark), for reference only.
PAPER_TABLE12: dict[str, dict[str, tuple[float, float]]] = {
    "temperature": {"UniRepLKNet-S (paper)": (7.602, 1.832), "Corrformer (paper)": (7.709, 1.888)},
    "wind_speed": {"UniRepLKNet-S (paper)": (3.865, 1.301), "Corrformer (paper)": (3.889, 1.304)},
}

Progress = Callable[[str], None]
#: A dataset argument: in memory, or a path :func:`~urlk_forecast.data.readers.open_dataset` reads (for ``gfs``, a
#: grid file, or the string ``"synthetic"``).
DataSource = xr.Dataset | str | os.PathLike[str]


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
            f"seq_len/label_len/pred_len = {i['seq_len']}/{i['label_len']}/{i['pred_len']}{_steps_text(i)}",
            f"- scored target points (observed, forecast by every method): {i['points']} of {i['observed']} observed",
            f"- train {i['train_period']}; test {i['test_period']} (plus {i['seq_len']} steps of input history)",
            *([f"- {i['season']}: the last season of the input, repeated"] if i.get("season") else []),
            "",
            *_quantile_note(self.rows),
            _markdown_table(self.rows, list(self.rows.columns)),
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
        """Write ``benchmark_<variable>.md``, ``.csv``, ``_per_lead.csv`` (and ``_prophet.csv``) atomically
        (several targets: ``benchmark_<var1>+<var2>...``)."""
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        var = "+".join(self.info["targets"]) if self.info.get("targets") else self.info["variable"]
        paths = [d / f"benchmark_{var}.md", d / f"benchmark_{var}.csv"]
        atomic_write_text(paths[0], self.to_markdown())
        atomic_write_text(paths[1], self.rows.to_csv(index=False))
        if self.per_lead is not None and len(self.per_lead):
            paths.append(d / f"benchmark_{var}_per_lead.csv")
            atomic_write_text(paths[-1], self.per_lead.to_csv(index=False))
        if self.prophet is not None:
            paths.append(d / f"benchmark_{var}_prophet.csv")
            atomic_write_text(paths[-1], self.prophet.to_csv(index=False))
        return paths


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
    sep = "|" + "|".join("---" if c in ("method", "type", "variable") else "---:" for c in cols) + "|"
    body = ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for _, r in df.iterrows()]
    return "\n".join([head, sep, *body])


# ---------------------------------------------------------------------------------------------------- scoring
def table_rows(methods: Sequence[Method], table: ScoreTable) -> pd.DataFrame:
    """The comparison table (columns :data:`COLUMNS`) of ``methods`` scored together in ``table`` (the result of
    :func:`~urlk_forecast.scoring.score_methods` on the same list): ``describe()`` of each method plus its scores;
    methods that failed are left out (they are in ``table.failures``).

    When a method forecasts quantiles, the probabilistic columns follow MAE (NaN for point forecasts and for levels
    a method lacks): ``CRPS`` (estimated from the quantiles), ``pinball`` (mean over the method's levels),
    ``pinball_q<L>`` per level and ``cover<P>`` (share of the scored targets inside the central P % interval)."""
    rows = []
    for label, m in zip(method_labels(methods), methods):
        s = table.scores.get(label)
        if s is None:
            continue
        d = m.describe()
        rows.append({"method": label, "type": d["type"], "parameters": int(d["parameters"]), "MSE": s.mse,
                     "MAE": s.mae, "fit_s": d["fit_s"], "predict_s": s.predict_seconds, "coverage": s.coverage,
                     **_quantile_scores(s)})
    return pd.DataFrame(rows, columns=_columns(table))


def _quantile_scores(s: Scores) -> dict[str, float]:
    """The probabilistic columns of one method's scores (empty for a point forecast)."""
    if s.quantiles is None:
        return {}
    out = {"CRPS": s.crps, "pinball": s.pinball_mean}
    out.update({f"pinball_q{level_label(k)}": v for k, v in (s.pinball or {}).items()})
    out.update({f"cover{level_label(k)}": v for k, v in (s.interval_coverage or {}).items()})
    return out


def _columns(table: ScoreTable) -> list[str]:
    """:data:`COLUMNS`, with the probabilistic columns of every level and interval scored after MAE."""
    levels = sorted({v for s in table.scores.values() for v in (s.quantiles or ())})
    if not any(s.quantiles is not None for s in table.scores.values()):
        return list(COLUMNS)
    widths = sorted({w for s in table.scores.values() for w in (s.interval_coverage or {})}, reverse=True)
    extra = ["CRPS", "pinball", *(f"pinball_q{level_label(v)}" for v in levels),
             *(f"cover{level_label(w)}" for w in widths)]
    i = COLUMNS.index("MAE") + 1
    return [*COLUMNS[:i], *extra, *COLUMNS[i:]]


def _quantile_note(rows: pd.DataFrame) -> list[str]:
    """The header line explaining the probabilistic columns, when the table has them."""
    if "CRPS" not in rows.columns:
        return []
    return ["Probabilistic columns (methods forecasting quantiles; '-' for point forecasts, whose CRPS is their MAE): "
            "CRPS estimated from the quantiles (cell-weighted pinball loss x 2; compare at equal levels), pinball "
            "loss (mean and per level q<L>), cover<P> = share of the scored targets inside the central P % interval.",
            ""]


def compare(methods: Sequence[Method], ws: WindowSource, indices: Sequence[int] | np.ndarray | None = None, *,
            batch_size: int = 256, keep_going: bool = False, progress: Progress | None = None) -> pd.DataFrame:
    """Score fitted ``methods`` on the same windows and points (:func:`~urlk_forecast.scoring.score_methods`) and
    return the comparison table (:func:`table_rows`). ``df.attrs`` holds ``failures`` (with ``keep_going``),
    ``points``, ``observed`` and ``windows``; ``df.attrs["per_lead"]`` the per-lead MSE/MAE of every method."""
    table = score_methods(methods, ws, indices, batch_size=batch_size, keep_going=keep_going, progress=progress)
    df = table_rows(methods, table)
    df.attrs.update(failures=dict(table.failures), points=table.points, observed=table.observed,
                    windows=table.windows, per_lead=_per_lead(table))
    return df


def _per_lead(table: ScoreTable) -> pd.DataFrame:
    return table.per_lead().rename(columns={"mse": "MSE", "mae": "MAE", "crps": "CRPS"})


# ---------------------------------------------------------------------------------------------------- running
def _load_data(data: DataSource | None, stations: int | None, hours: int | None, seed: int, progress: Progress,
               units: dict[str, str] | None = None, reader: dict[str, Any] | None = None) -> tuple[xr.Dataset, str]:
    if units and (data is None or isinstance(data, xr.Dataset)):
        raise ValueError("units applies to a data file or directory (the reader converts them), not to "
                         f"{'the synthetic default' if data is None else 'an in-memory Dataset'}")
    if data is None:
        n = 3850 if stations is None else int(stations)
        h = 17544 if hours is None else int(hours)
        progress(f"generating the SYNTHETIC default dataset ({n} stations x {h} hours)")
        return (synthetic_global(stations=n, hours=h, seed=seed),
                f"synthetic_global(stations={n}, hours={h}, seed={seed}) -- SYNTHETIC")
    if hours is not None:
        raise ValueError("hours applies to the synthetic default only (data=None)")
    if isinstance(data, xr.Dataset):
        return data, str(data.attrs.get("title", "in-memory dataset"))
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"data: {path} does not exist")
    return open_dataset(path, **(reader or {}), **({"units": dict(units)} if units else {})), str(path)


def _subsample_stations(ds: xr.Dataset, stations: int | None, seed: int) -> xr.Dataset:
    S = ds.sizes["station"]
    if stations is None or int(stations) >= S:
        return ds
    if int(stations) < 1:
        raise ValueError(f"stations must be >= 1, got {stations}")
    keep = np.sort(np.random.default_rng(seed).choice(S, size=int(stations), replace=False))
    return ds.isel(station=keep)


def _model_stations(ds: xr.Dataset, model: Forecaster, stations: int | None) -> xr.Dataset:
    """``ds`` restricted to the trained model's stations, in its order."""
    ids = [str(s) for s in model.station_ids]
    have = pd.Index([str(s) for s in ds["station"].values])
    missing = [s for s in ids if s not in have]
    if missing:
        raise ValueError(f"the data lacks {len(missing)} of the model's stations (e.g. {missing[:5]}); "
                         "benchmark the model on the data it was trained for")
    if stations is not None and int(stations) != len(ids):
        raise ValueError(f"stations={stations} cannot subsample the {len(ids)} stations of a trained model (run=...)")
    return ds.isel(station=have.get_indexer(ids))


def _warn_if_in_sample(model: Forecaster, test: xr.Dataset) -> None:
    period = model.train_period
    test_start = pd.Timestamp(test.time.values[int(test.attrs.get("split_context", 0) or 0)])
    if period is not None and period[1] >= test_start:
        warnings.warn(f"the model was trained on data up to {period[1]}, inside the test split (from {test_start}): "
                      "its row is not an out-of-sample score", RuntimeWarning, stacklevel=3)


def _method_names(baselines: Sequence[str] | None, gfs: DataSource | None, ds: xr.Dataset) -> list[str]:
    """Registry names to run: ``baselines`` or the defaults (+ ``prophet`` if installed), + ``gfs`` with a grid."""
    names = [normalize_name(n) for n in (baselines if baselines is not None else DEFAULT_BASELINES) if n.strip()]
    if baselines is None and prophet_available():
        names.append("prophet")
    if gfs is not None and "gfs" not in names:
        names.append("gfs")
    if "gfs" in names and gfs is None:
        raise ValueError("the gfs baseline needs a gridded forecast (gfs=...: a grid file or Dataset, or 'synthetic' "
                         "for a demo grid built from the truth)")
    if "gfs" in names and str(ds.attrs.get("coords_standardised", "")) == "true":
        raise ValueError("this dataset has standardised (not geographic) station coordinates, so an NWP grid cannot "
                         "be interpolated to its stations; drop gfs")
    return names


@dataclass
class _Setup:
    """What building a baseline needs besides its name."""

    variable: str
    seq_len: int
    pred_len: int
    n_jobs: int | None
    threads: int | None
    prophet_stations: int
    gfs: DataSource | None
    test: xr.Dataset
    seed: int
    season: int = 24  # steps: a day of sub-daily steps, a week of daily steps
    quantiles: tuple[float, ...] | None = None  # levels for the baselines that forecast quantiles
    inputs: tuple[str, ...] = ()  # covariates of the run's model: GBDT gets them as lag features


def _baseline_kwargs(name: str, st: _Setup, say: Progress) -> dict[str, Any]:
    if name == "seasonal_naive":
        return {"period": st.season}
    if name == "holt_winters":
        return {"n_jobs": st.n_jobs, "season_length": st.season, "fit_hours": max(672, 4 * st.season),
                "history_hours": max(672, 4 * st.season)}
    if name == "gbdt":
        return {"n_threads": st.threads, "seq_len": st.seq_len, "max_horizon": st.pred_len,
                "lags": tuple(v for v in (*range(1, 25), 48) if v <= st.seq_len),
                **({"inputs": st.inputs, "input_lags": tuple(v for v in (1, 2, 3, 6, 12, 24) if v <= st.seq_len)}
                   if st.inputs else {})}
    if name == "prophet":
        return {"stations": st.prophet_stations}
    if name == "gfs":
        if isinstance(st.gfs, str) and st.gfs == "synthetic":
            say("building the synthetic demo NWP grid from the test truth + error (NOT a real model)")
            return {"grid_source": synthetic_nwp_grid(st.test, st.variable, seed=st.seed),
                    "label": "GFS (synthetic demo)"}
        return {"grid_source": st.gfs}
    return {}


def _quantile_kwargs(name: str, st: _Setup) -> dict[str, Any]:
    """``quantiles`` (and the leads to estimate them for) for a baseline that forecasts quantiles."""
    if st.quantiles is None or name not in BASELINES:
        return {}
    cls = getattr(importlib.import_module(__package__), BASELINES[name][0])
    if not getattr(cls, "forecasts_quantiles", False):
        return {}
    return {"quantiles": st.quantiles, **({"max_horizon": st.pred_len} if name in ("persistence", "seasonal_naive")
                                          else {})}


def _quantile_levels(quantiles: Sequence[float] | None, model: Forecaster | None, say: Progress
                     ) -> tuple[float, ...] | None:
    """The baselines' levels: ``quantiles``, else those of a model trained with quantiles (compared at equal
    levels), else None."""
    if quantiles is not None:
        return quantile_levels(quantiles, require_median=False)
    own = getattr(model, "quantiles", None)
    if own is None:
        return None
    say(f"the model forecasts the quantiles {list(own)}; the baselines forecast the same levels")
    return quantile_levels(own, require_median=False)


def _fit_baselines(names: Sequence[str], train: xr.Dataset, st: _Setup, failures: dict[str, str],
                   say: Progress) -> list[tuple[str, Method]]:
    """Build and fit every named baseline on ``train``; ``(registry name, method)`` of those that fitted."""
    fitted: list[tuple[str, Method]] = []
    for name in names:
        try:
            kwargs = {**_baseline_kwargs(name, st, say), **_quantile_kwargs(name, st)}
            method = get_baseline(name, variable=st.variable, **kwargs)
        except Exception as e:  # noqa: BLE001 - report and go on with the others
            failures[name] = f"{type(e).__name__}: {e}"
            continue
        say(f"fitting {method.name} ...")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                method.fit(train)
            for w in caught:
                if issubclass(w.category, RuntimeWarning | UserWarning):
                    say(f"  note: {w.message}")
        except Exception as e:  # noqa: BLE001
            failures[method.name] = f"{type(e).__name__}: {e}"
            say(f"  FAILED: {failures[method.name]}")
            continue
        say(f"  fitted in {method.fit_seconds:.1f} s")
        fitted.append((name, method))
    return fitted


def _checked_inputs(ds: xr.Dataset, variable: str, model: Forecaster | None) -> tuple[str, ...]:
    """The covariates of the run's model (none without one), once ``ds`` is known to hold them and ``variable``."""
    inputs = tuple(getattr(model, "inputs", ()) or ())
    for v in (variable, *inputs):
        require_variable(ds, v)
    return inputs


def run_benchmark(data: DataSource | None = None, variable: str = "temperature", baselines: Sequence[str] | None = None,
                  run: str | os.PathLike[str] | None = None, gfs: DataSource | None = None, stations: int | None = None,
                  hours: int | None = None, max_windows: int | None = 512, seq_len: int | str = 48,
                  label_len: int | str = 24, pred_len: int | str = 24,
                  n_jobs: int | None = None, threads: int | None = None, prophet_stations: int = 8,
                  batch_size: int = 32, seed: int = 0, progress: Progress | None = None,
                  units: dict[str, str] | None = None, reader: dict[str, Any] | None = None,
                  season: int | str | None = None, quantiles: Sequence[float] | None = None) -> BenchmarkResult:
    """Run the comparison; see the module docstring.

    ``data``: Dataset, path (any format :func:`~urlk_forecast.data.readers.open_dataset` reads) or None for the
    synthetic default. ``baselines``: registry names (default :data:`DEFAULT_BASELINES`, + ``prophet`` if installed,
    + ``gfs`` if ``gfs`` is given). ``run``: a saved :class:`~urlk_forecast.forecaster.Forecaster` directory whose
    window geometry and variable are used; it is one more row. ``gfs``: NWP grid (path, Dataset, or ``"synthetic"``
    for the demo grid built from the test truth + error). ``stations``: random subset (seeded) of real data, or the
    synthetic station count; ``hours``: synthetic length (default 2 years). ``max_windows``: evenly spaced test
    windows (None/0 = all). ``n_jobs``: Holt-Winters processes; ``threads``: GBDT OpenMP threads. ``units``: the
    source's units per variable of a ``data`` path (``{"temperature": "degF"}``), converted on reading; ``reader``:
    other reader arguments for it (``format``, a wide CSV's ``time_column``/``columns``/``variable``).
    ``variable``: any data variable of the data. ``seq_len``/``label_len``/``pred_len``: steps or durations
    (``"48h"``) that are whole numbers of the data's steps. ``season``: the seasonal naive's and Holt-Winters'
    season (steps or a duration; default one day of sub-daily steps, a week of daily steps). ``quantiles``: levels
    the baselines that can (persistence, seasonal naive, Holt-Winters, GBDT) forecast, scored with pinball loss,
    interval coverage and CRPS (default: the levels of a ``run`` trained with quantiles, else none); a ``run`` is
    always scored at its own levels. A ``run`` trained with covariates (``inputs``) is scored on windows that carry
    them, and GBDT gets the same covariates as lag features.
    """
    say: Progress = progress or (lambda _msg: None)
    model, max_gap = None, 3
    if run is not None:
        say(f"loading the trained model from {run}")
        model = Forecaster.load(run)
        if variable != model.variable:
            say(f"the model forecasts {model.variable!r}; benchmarking {model.variable!r}")
        if model.multi:  # one row per (method, variable)
            return _benchmark_targets(model, say, **{k: v for k, v in locals().items() if k in _TARGETS_KW})
        variable = model.variable
        seq_len, label_len, pred_len, max_gap = model.seq_len, model.label_len, model.pred_len, model.max_gap
    ds, data_label = _load_data(data, stations if model is None else None, hours, seed, say, units, reader)
    inputs = _checked_inputs(ds, variable, model)
    validate(ds, variables=[variable, *inputs])
    freq = infer_frequency(ds)
    seq_len, label_len, pred_len = (length_steps(v, freq, k) for k, v in
                                    (("seq_len", seq_len), ("label_len", label_len), ("pred_len", pred_len)))
    if model is not None:
        ds = _model_stations(ds, model, stations)
    elif data is not None:
        ds = _subsample_stations(ds, stations, seed)
    parts = split_dataset(ds, context=seq_len)
    train, test = parts["train"], parts["test"]
    if model is not None:
        _warn_if_in_sample(model, test)
    if test.sizes["time"] < seq_len + pred_len:
        raise ValueError(f"the test split has {test.sizes['time']} steps, fewer than seq_len + pred_len")
    ws = WindowDataset(test, variable, seq_len, label_len, pred_len, max_gap=max_gap, inputs=inputs)
    if len(ws) == 0:
        raise ValueError("the test split has no complete window")
    idx = evenly_spaced(len(ws), int(max_windows) if max_windows else None)
    say(f"test split: {len(ws)} windows, scoring {idx.size}; {ws.num_stations} stations")

    names = _method_names(baselines, gfs, ds)
    failures: dict[str, str] = {}
    setup = _Setup(variable, seq_len, pred_len, n_jobs, threads, prophet_stations, gfs, test, seed,
                   length_steps(season, freq, "season") if season is not None else default_season(freq),
                   _quantile_levels(quantiles, model, say), inputs)
    fitted = _fit_baselines(names, train, setup, failures, say)
    methods = [m for n, m in fitted if n != "prophet"] + ([model] if model is not None else [])
    table = score_methods(methods, ws, idx, batch_size=batch_size, keep_going=True, progress=say)
    failures.update(table.failures)
    info = _info(variable, data_label, ws, idx, table, train, test, seq_len, label_len, pred_len)
    info.update(_step_info(test, methods))
    reference = prophet_df = None
    if str(ds.attrs.get("source_format", "")) == "corrformer":
        reference = pd.DataFrame([{"method": k, "MSE": v[0], "MAE": v[1]} for k, v in PAPER_TABLE12[variable].items()])
    real = next((m for n, m in fitted if n == "prophet"), None)
    if real is not None:
        own = next((m for n, m in fitted if n == "prophet_like"), None)
        prophet_df = _prophet_side_by_side(real, own, test, ws, idx, max_gap, batch_size, say, failures)
    return BenchmarkResult(rows=table_rows(methods, table), info=info, prophet=prophet_df, reference=reference,
                           failures=failures, per_lead=_per_lead(table))


#: run_benchmark's arguments that _benchmark_targets takes
_TARGETS_KW = ("data", "baselines", "gfs", "hours", "max_windows", "n_jobs", "threads", "prophet_stations",
               "batch_size", "seed", "units", "reader", "season", "quantiles")


def _benchmark_targets(model: Forecaster, say: Progress, *, data: DataSource | None, baselines: Sequence[str] | None,
                       gfs: DataSource | None, hours: int | None, max_windows: int | None, n_jobs: int | None,
                       threads: int | None, prophet_stations: int, batch_size: int, seed: int,
                       units: dict[str, str] | None, reader: dict[str, Any] | None, season: int | str | None,
                       quantiles: Sequence[float] | None) -> BenchmarkResult:
    """:func:`run_benchmark` of a model of several targets: the baselines fitted once per target variable, each
    variable's rows scored by the one scorer on that variable's windows (the model's row through its target view);
    one row per (method, variable). The real Prophet side-by-side is left out."""
    ds, data_label = _load_data(data, None, hours, seed, say, units, reader)
    inputs = tuple(model.inputs)
    for v in (*model.targets, *inputs):
        require_variable(ds, v)
    validate(ds, variables=[*model.targets, *inputs])
    freq = infer_frequency(ds)
    parts = split_dataset(_model_stations(ds, model, None), context=model.seq_len)
    train, test = parts["train"], parts["test"]
    _warn_if_in_sample(model, test)
    if test.sizes["time"] < model.seq_len + model.pred_len:
        raise ValueError(f"the test split has {test.sizes['time']} steps, fewer than seq_len + pred_len")
    stack = TargetWindows(test, model.targets, model.seq_len, model.label_len, model.pred_len, max_gap=model.max_gap,
                          inputs=inputs)
    if len(stack) == 0:
        raise ValueError("the test split has no complete window")
    idx = evenly_spaced(len(stack), int(max_windows) if max_windows else None)
    say(f"test split: {len(stack)} windows, scoring {idx.size}; {stack.num_stations} stations; "
        f"targets {', '.join(model.targets)}")
    names = [n for n in _method_names(baselines, gfs, ds) if n != "prophet"]
    steps = length_steps(season, freq, "season") if season is not None else default_season(freq)
    levels = quantile_levels(quantiles, require_median=False) if quantiles is not None else None
    views, methods, failures = target_views(model, stack), {}, {}
    for v in model.targets:
        say(f"{v}: fitting the baselines")
        setup = _Setup(v, model.seq_len, model.pred_len, n_jobs, threads, prophet_stations, gfs, test, seed, steps,
                       levels, inputs)
        own: dict[str, str] = {}
        methods[v] = [m for _, m in _fit_baselines(names, train, setup, own, say)] + [views[v]]
        failures.update({f"{k} ({v})": e for k, e in own.items()})
    tables = score_targets(methods, stack, idx, batch_size=batch_size, keep_going=True, progress=say)
    rows, leads = [], []
    for v, table in tables.items():
        failures.update({f"{k} ({v})": e for k, e in table.failures.items()})
        rows.append(table_rows(methods[v], table).assign(variable=v))
        leads.append(_per_lead(table).assign(variable=v))
    first = model.targets[0]
    info = _info(", ".join(model.targets), data_label, stack.part(first), idx, tables[first], train, test,
                 model.seq_len, model.label_len, model.pred_len)
    info.update(_step_info(test, methods[first]), targets=list(model.targets),
                units=", ".join(f"{v}: {stack.units[v]}" for v in model.targets),
                points=sum(t.points for t in tables.values()), observed=sum(t.observed for t in tables.values()))
    table_df = pd.concat(rows, ignore_index=True)
    cols = ["method", "variable", *[c for c in table_df.columns if c not in ("method", "variable")]]
    lead_df = pd.concat(leads, ignore_index=True)
    return BenchmarkResult(rows=table_df[cols], info=info, failures=failures,
                           per_lead=lead_df[["variable", *[c for c in lead_df.columns if c != "variable"]]])


def _steps_text(info: dict[str, Any]) -> str:
    """`` steps of 1 day (forecast 24 days ahead)`` for the header; empty when the step is not known."""
    if not info.get("step"):
        return ""
    return f" steps of {freq_label(info['step'])} (forecast {describe_steps(info['pred_len'], info['step'])} ahead)"


def _period(ds: xr.Dataset, start: int = 0) -> str:
    return f"{pd.Timestamp(ds.time.values[start])} .. {pd.Timestamp(ds.time.values[-1])}"


def _info(variable: str, data_label: str, ws: WindowSource, idx: np.ndarray, table: ScoreTable, train: xr.Dataset,
          test: xr.Dataset, seq_len: int, label_len: int, pred_len: int) -> dict[str, Any]:
    return {
        "variable": variable, "units": ws.units, "data": data_label,
        "stations": ws.num_stations, "windows": int(idx.size), "windows_total": len(ws),
        "windows_scored": int(table.windows), "points": int(table.points), "observed": int(table.observed),
        "seq_len": seq_len, "label_len": label_len, "pred_len": pred_len,
        "train_period": _period(train),
        "test_period": _period(test, int(test.attrs.get("split_context", 0) or 0)),
    }


def _step_info(test: xr.Dataset, methods: Sequence[Method]) -> dict[str, Any]:
    """The data's time step (``"1D"``, ``"1h"``) and the seasonal naive's label with its season in those terms."""
    times = pd.DatetimeIndex(test["time"].values)
    if len(times) < 2:
        return {"step": None}
    step = pd.Timedelta(times[1] - times[0])
    out: dict[str, Any] = {"step": str(pd.tseries.frequencies.to_offset(step).freqstr)}
    sn = next((m for m in methods if isinstance(m, SeasonalNaive)), None)
    if sn is not None:
        try:
            out["season"] = sn.label(step)
        except ValueError:  # a period that is not a whole number of steps: the method has failed already
            pass
    return out


def _prophet_side_by_side(real: Method, own: Method | None, test: xr.Dataset, ws: WindowSource, idx: np.ndarray,
                          max_gap: int, batch_size: int, say: Progress,
                          failures: dict[str, str]) -> pd.DataFrame | None:
    """Real Prophet vs the Prophet-like model on the stations Prophet was fitted on (same windows and points)."""
    if own is None:
        say("(prophet_like not run: no Prophet side-by-side)")
        return None
    sub_ids = list(getattr(real, "models", {}))
    if not sub_ids:
        return None
    have = pd.Index([str(s) for s in test["station"].values])
    sub = test.isel(station=np.sort(have.get_indexer(sub_ids)))
    ws_sub = WindowDataset(sub, ws.variable, ws.seq_len, ws.label_len, ws.pred_len, max_gap=max_gap)
    say(f"Prophet side-by-side on {len(sub_ids)} stations ...")
    try:
        table = score_methods([real, own], ws_sub, idx, batch_size=batch_size, keep_going=True, progress=say)
    except ValueError as e:  # every method failed, or nothing to score on these stations
        failures["Prophet side-by-side"] = str(e)
        say(f"  Prophet side-by-side FAILED: {e}")
        return None
    failures.update({f"{k} (Prophet side-by-side)": v for k, v in table.failures.items()})
    rows = table_rows([real, own], table)
    own_ids = getattr(own, "station_ids", None)
    n_own = len(own_ids) if own_ids is not None else 0
    rows["stations"] = len(sub_ids)
    rows.loc[rows["method"] == own.name, "fit_s"] = (own.fit_seconds or 0.0) / max(n_own, 1) * len(sub_ids)
    return rows[["method", "stations", "MSE", "MAE", "fit_s", "predict_s"]]
