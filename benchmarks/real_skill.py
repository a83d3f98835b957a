#!/usr/bin/env python3
"""Real-data skill suite: does the default model beat every baseline and peer on real observations?

For each real series that installs offline (:mod:`urlk_forecast.data.real_samples`: ``tmy3`` from the pvlib wheel,
``vega`` from the vega_datasets wheel) and each of its variables, it writes the series to a netCDF file in a cache
directory and runs exactly what a user would::

    urlk-forecast train --data FILE --var V --out OUT/<series>/<var>/run
    urlk-forecast benchmark --data FILE --var V --run OUT/<series>/<var>/run --out OUT/<series>/<var>/cli

then fits the optional peers in-process on the same chronological 7:1:2 split (early stopping on the validation
split where they select on it) and scores them on the same test windows (``--max-windows`` evenly spaced, the
benchmark's default 512) with the same scorer: neuralforecast's PatchTST, NHITS, DLinear (extra ``peers``, time-boxed
by ``--max-time`` seconds like the model's quick schedule) and statsforecast's AutoETS and MSTL. An in-process
persistence row is scored with every peer and compared with the CLI's, so a change in the CLI's windows shows.

One table per (series, variable): every baseline, the model, the peers; MSE, MAE, training (fit) seconds, predict
seconds, coverage. Written to ``OUT/real_skill.md`` and ``OUT/real_skill.csv``. Exit status 1 where the model does
not beat every other row in both MSE and MAE (or a step failed); with ``--skip-model`` there is no verdict.
It is a benchmark to run (tens of minutes on a 2-core CPU), not a CI test. Each step's result is kept under
``OUT``; ``--reuse`` takes finished steps from there, so a long suite can be run in pieces (``--series``, ``--vars``,
``--peers``) and assembled by a last ``--reuse`` call.

Needs the extras ``bench`` (the data) and ``peers`` (the peers)::

    pip install -e ".[bench,peers]"
    python benchmarks/real_skill.py --out real_skill                       # everything
    python benchmarks/real_skill.py --series tmy3 --vars temperature --skip-model --peers nhits,dlinear
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from urlk_forecast.baselines.naive import Persistence
from urlk_forecast.baselines.peers import NeuralForecastPeer
from urlk_forecast.baselines.statsforecast_models import AutoETSMethod, MSTLMethod
from urlk_forecast.config import FORECASTER_DEFAULTS
from urlk_forecast.data.readers import open_dataset
from urlk_forecast.data.real_samples import SERIES, default_cache_dir, write_series
from urlk_forecast.data.windows import WindowDataset, split_dataset
from urlk_forecast.regime import CPU_MAX_TIME
from urlk_forecast.scoring import score_methods
from urlk_forecast.utils import atomic_write_text, evenly_spaced

SEQ_LEN, LABEL_LEN, PRED_LEN, MAX_GAP = int(FORECASTER_DEFAULTS["seq_len"]), 24, 24, 3
COLUMNS = ["series", "variable", "method", "type", "source", "parameters", "MSE", "MAE", "fit_s", "predict_s",
           "coverage", "note"]

#: Peer name -> factory(variable, max_time, accelerator, seq_len, seed). A neural peer of seed ``s`` gets
#: ``random_seed = 1 + s`` (seed 0: neuralforecast's default, 1); the statistical peers are deterministic.
PEERS: dict[str, Callable[[str, float, str | None, int, int], Any]] = {
    name: (lambda v, t, a, n, s, _m=name: NeuralForecastPeer(_m, variable=v, max_time=t, accelerator=a, seq_len=n,
                                                             random_seed=1 + s))
    for name in ("patchtst", "nhits", "dlinear")
}
PEERS["autoets"] = lambda v, _t, _a, _n, _s: AutoETSMethod(variable=v)
PEERS["mstl"] = lambda v, _t, _a, _n, _s: MSTLMethod(variable=v)


def say(msg: str) -> None:
    print(f"[real_skill {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cli() -> list[str]:
    """The ``urlk-forecast`` command (the installed script, else ``python -m urlk_forecast.cli``)."""
    exe = shutil.which("urlk-forecast")
    return [exe] if exe else [sys.executable, "-m", "urlk_forecast.cli"]


def run_logged(args: Sequence[str], log: Path) -> float:
    """Run a command with its output in ``log``; wall seconds; raises RuntimeError naming the log on failure."""
    say("$ " + " ".join(str(a) for a in args))
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        rc = subprocess.run([str(a) for a in args], stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise RuntimeError(f"exit {rc} after {wall:.0f} s (log {log}):\n" + "\n".join(tail))
    return wall


# ------------------------------------------------------------------------------------------------ CLI steps
def _train_seconds(run: Path, wall: float | None) -> float:
    """The model's training wall time recorded in the run (``wall_s``), else the train command's wall time."""
    for path in sorted(run.rglob("*.json")):
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key in ("train", "train_info"):
            sub = d.get(key) if isinstance(d, dict) else None
            if isinstance(sub, dict) and isinstance(sub.get("wall_s"), int | float):
                return float(sub["wall_s"])
    return float("nan") if wall is None else wall


def model_step(data: Path, var: str, out: Path, reuse: bool, seq_len: int = SEQ_LEN, seed: int = 0
               ) -> tuple[Path, float]:
    """``urlk-forecast train --data FILE --var V --seed S`` (defaults otherwise; ``--seq-len`` only when
    ``seq_len`` is not the default); the run directory and its training seconds."""
    run = out / "run"
    done = out / "train.done"
    wall = None
    if not (reuse and done.is_file()):
        if run.exists():
            shutil.rmtree(run)
        extra = [] if seq_len == SEQ_LEN else ["--seq-len", str(seq_len)]
        wall = run_logged([*cli(), "train", "--data", data, "--var", var, "--out", run, "--seed", str(seed), *extra],
                          out / "train.log")
        atomic_write_text(done, f"{wall}\n")
    else:
        wall = float(done.read_text().strip() or "nan")
    return run, _train_seconds(run, wall)


def benchmark_step(data: Path, var: str, out: Path, run: Path | None, reuse: bool) -> pd.DataFrame:
    """``urlk-forecast benchmark --data FILE --var V [--run RUN]``: its CSV table."""
    res = out / "cli"
    csv = res / f"benchmark_{var}.csv"
    marker = out / "benchmark.done"  # which run the table holds (reuse only the same)
    same = marker.is_file() and marker.read_text(encoding="utf-8").strip() == str(run)
    if not (reuse and csv.is_file() and same):
        args = [*cli(), "benchmark", "--data", data, "--var", var, "--out", res]
        if run is not None:
            args += ["--run", run]
        run_logged(args, out / "benchmark.log")
        atomic_write_text(marker, f"{run}\n")
    return pd.read_csv(csv)


# ------------------------------------------------------------------------------------------------ peers
def split_windows(data: Path, var: str, max_windows: int, seq_len: int = SEQ_LEN
                  ) -> tuple[Any, Any, WindowDataset, np.ndarray]:
    """The benchmark's split and test windows, rebuilt in-process: train, val, window source, indices."""
    ds = open_dataset(data)
    parts = split_dataset(ds, context=seq_len)
    ws = WindowDataset(parts["test"], var, seq_len, LABEL_LEN, PRED_LEN, max_gap=MAX_GAP)
    return parts["train"], parts["val"], ws, evenly_spaced(len(ws), max_windows)


def peer_step(name: str, var: str, split: tuple[Any, Any, WindowDataset, np.ndarray], out: Path, reuse: bool,
              max_time: float, accelerator: str | None, seed: int = 0) -> dict[str, Any]:
    """Fit one peer on the training split, score it (beside persistence) on the test windows; one table row."""
    path = out / f"peer_{name}.json"
    if reuse and path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    train, val, ws, idx = split
    method = PEERS[name](var, max_time, accelerator, ws.seq_len, seed)
    say(f"fitting {method.name} on {var} ...")
    method.fit(train, val=val)
    ref = Persistence(variable=var).fit(train)
    table = score_methods([ref, method], ws, idx, batch_size=512)
    s, p = table[method.name], table[ref.name]
    info = getattr(method, "train_info", {}) or {}
    note = []
    if info:
        note.append(f"{info.get('steps')} steps, stopped: {info.get('stopped')}")
    if getattr(method, "fallbacks", 0):
        note.append(f"{method.fallbacks} fallbacks")
    row = {"method": method.name, "type": method.kind, "source": "in-process", "parameters": int(method.n_params),
           "MSE": s.mse, "MAE": s.mae, "fit_s": float(method.fit_seconds or float("nan")),
           "predict_s": s.predict_seconds, "coverage": s.coverage, "note": "; ".join(note),
           "persistence_MSE": p.mse, "points": table.points, "windows": table.windows}
    say(f"  {method.name}: MSE {s.mse:.3f} MAE {s.mae:.3f} fit {row['fit_s']:.0f} s ({row['note']})")
    atomic_write_text(path, json.dumps(row, indent=1) + "\n")
    return row


# ------------------------------------------------------------------------------------------------ assembly
def cli_rows(df: pd.DataFrame, train_s: float | None) -> list[dict[str, Any]]:
    """The CLI table's rows in the suite's columns (the model's fit seconds = its training seconds)."""
    rows = []
    for r in df.to_dict("records"):
        neural = str(r.get("type")) == "neural"
        fit_s = train_s if neural and train_s is not None else r.get("fit_s", float("nan"))
        rows.append({"method": r["method"], "type": r.get("type", ""), "source": "model" if neural else "cli",
                     "parameters": r.get("parameters", 0), "MSE": r["MSE"], "MAE": r["MAE"], "fit_s": fit_s,
                     "predict_s": r.get("predict_s", float("nan")), "coverage": r.get("coverage", float("nan")),
                     "note": ""})
    return rows


def verdict(rows: list[dict[str, Any]]) -> tuple[bool | None, str]:
    """Whether the model row beats every other row in both MSE and MAE (None without a model row)."""
    model = [r for r in rows if r["source"] == "model"]
    others = [r for r in rows if r["source"] != "model" and np.isfinite(r["MSE"])]
    if not model:
        return None, "no model row (skipped or failed): no verdict"
    m = model[0]
    beaten_by = [r["method"] for r in others if not (m["MSE"] < r["MSE"] and m["MAE"] < r["MAE"])]
    if beaten_by:
        return False, f"FAIL: {m['method']} does not beat {', '.join(beaten_by)} in MSE and MAE"
    return True, f"PASS: {m['method']} beats all {len(others)} other rows in MSE and MAE"


def check_windows(cli_df: pd.DataFrame | None, peer_rows: list[dict[str, Any]]) -> str:
    """Compare the in-process persistence MSE with the CLI's: equal when the windows and points are the same."""
    if cli_df is None or not peer_rows:
        return ""
    ref = cli_df.loc[cli_df["method"] == "Persistence", "MSE"]
    if ref.empty:
        return "CLI table has no Persistence row: windows not cross-checked"
    want = float(ref.iloc[0])
    bad = [r["method"] for r in peer_rows if abs(r["persistence_MSE"] - want) > 1e-4 * max(1.0, abs(want))]
    if bad:
        return f"WARNING: in-process persistence differs from the CLI's for {', '.join(bad)}: windows/points differ"
    return f"in-process windows checked: persistence MSE {float(ref.iloc[0]):.4f} as in the CLI table"


def fmt(v: Any) -> str:
    if isinstance(v, float | np.floating):
        return "-" if not np.isfinite(v) else (f"{v:.3f}" if abs(v) < 1e4 else f"{v:.4g}")
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    return str(v)


def markdown(rows: list[dict[str, Any]], cols: Sequence[str]) -> str:
    head = "| " + " | ".join(cols) + " |"
    sep = "|" + "|".join("---" if c in ("series", "variable", "method", "type", "source", "note") else "---:"
                         for c in cols) + "|"
    return "\n".join([head, sep, *("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows)])


# ------------------------------------------------------------------------------------------------ driver
def pair_dir(out: str | Path, series: str, var: str, seq_len: int, seed: int) -> Path:
    """``OUT/SERIES/VAR[_in<N>][_seed<S>]``: a non-default input length or seed keeps its results apart (seed 0 at
    the default length is where single-seed runs have always been)."""
    name = var + ("" if seq_len == SEQ_LEN else f"_in{seq_len}") + ("" if seed == 0 else f"_seed{seed}")
    return Path(out) / series / name


def aggregate(per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per method over the seeds' rows: mean MSE, MAE and fit seconds, the MSE range in the note."""
    by: dict[str, list[dict[str, Any]]] = {}
    for rows in per_seed:
        for r in rows:
            by.setdefault(r["method"], []).append(r)
    out = []
    for rs in by.values():
        mse = np.array([float(r["MSE"]) for r in rs])
        row = {**rs[0], "MSE": float(mse.mean()), "MAE": float(np.mean([float(r["MAE"]) for r in rs])),
               "fit_s": float(np.nanmean([float(r["fit_s"]) for r in rs])),
               "note": f"mean of {len(rs)} seed(s), MSE {mse.min():.3f}-{mse.max():.3f}"}
        out.append(row)
    return out


def run_pair(series: str, var: str, a: argparse.Namespace, seed: int = 0
             ) -> tuple[list[dict[str, Any]], list[str], bool | None]:
    """Everything for one (series, variable) and seed (the model's ``--seed``; the neural peers' ``random_seed``
    is 1 + seed): rows, notes, verdict."""
    out = pair_dir(a.out, series, var, a.seq_len, seed)
    out.mkdir(parents=True, exist_ok=True)
    data = write_series(series, a.cache)
    notes: list[str] = [f"data: {data} ({SERIES[series].description})"]
    rows: list[dict[str, Any]] = []
    run, train_s, cli_df = None, None, None
    try:
        if not a.skip_model:
            run, train_s = model_step(data, var, out, a.reuse, a.seq_len, seed)
        if not a.skip_baselines:
            cli_df = benchmark_step(data, var, out, run, a.reuse)
            rows += cli_rows(cli_df, train_s)
    except RuntimeError as e:
        notes.append(f"FAILED: {e}")
        say(str(e))
    peer_rows: list[dict[str, Any]] = []
    if not a.skip_peers and a.peers:
        split = split_windows(data, var, a.max_windows, a.seq_len)
        for name in a.peers:
            try:
                peer_rows.append(peer_step(name, var, split, out, a.reuse, a.max_time, a.accelerator, seed))
            except Exception as e:  # noqa: BLE001 - report, go on with the other peers
                notes.append(f"{name} FAILED: {type(e).__name__}: {e}")
                say(notes[-1])
        if peer_rows:
            notes.append(f"peers scored on {peer_rows[0]['windows']} windows, {peer_rows[0]['points']} points")
    rows += peer_rows
    notes.append(check_windows(cli_df, peer_rows))
    ok, text = verdict(rows)
    notes.append(text)
    failed = step_failed(notes)
    return [{"series": series, "variable": var, **r} for r in rows], [n for n in notes if n], (
        False if failed else ok)


def step_failed(notes: Sequence[str]) -> bool:
    """Whether a pair's notes report a failed step (the model's, the CLI's or a peer's)."""
    return any(n.startswith("FAILED") or " FAILED" in n for n in notes)


def run_seeds(series: str, var: str, a: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str], bool | None]:
    """:func:`run_pair` for every seed of ``a.seeds``: all rows (with their seed), the markdown lines, and the
    verdict (with several seeds, on the mean rows; a failed step of any seed fails the pair)."""
    all_rows: list[dict[str, Any]] = []
    text: list[str] = []
    per_seed: list[list[dict[str, Any]]] = []
    failed, ok = False, None
    for seed in a.seeds:
        rows, notes, ok = run_pair(series, var, a, seed)
        failed = failed or step_failed(notes)
        all_rows += [{**r, "seed": seed} for r in rows]
        per_seed.append(rows)
        title = f"## {series} / {var}" + (f", seed {seed}" if len(a.seeds) > 1 else "")
        text += [title, "", markdown(rows, COLUMNS[2:-1] + ["note"]), "", *[f"- {n}" for n in notes], ""]
    if len(a.seeds) == 1:
        return all_rows, text, ok
    mean_rows = aggregate(per_seed)
    ok, vtext = verdict(mean_rows)
    text += [f"## {series} / {var}, mean of seeds {', '.join(map(str, a.seeds))}", "",
             markdown(mean_rows, COLUMNS[2:-1] + ["note"]), "", f"- {vtext}", ""]
    return all_rows, text, False if failed else ok


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--series", default=",".join(SERIES), help=f"comma-separated, from {', '.join(SERIES)}")
    p.add_argument("--vars", default="temperature,wind_speed", help="variables (a series without one skips it)")
    p.add_argument("--skip-model", action="store_true", help="no training; baselines and peers only (no verdict)")
    p.add_argument("--skip-peers", action="store_true", help="no in-process peers")
    p.add_argument("--skip-baselines", action="store_true", help="no CLI benchmark (peers only)")
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, from {', '.join(PEERS)}")
    p.add_argument("--max-time", type=float, default=float(CPU_MAX_TIME),
                   help="training time box of each neural peer in seconds (default: the model's CPU budget on a data "
                        "file, 600 s; the peer rows recorded before 2026-12-07 used 540 s, PatchTST finished its 1000 "
                        "steps in ~380 s either way)")
    p.add_argument("--max-windows", type=int, default=512, help="test windows, evenly spaced (the CLI's default)")
    p.add_argument("--seq-len", type=int, default=SEQ_LEN,
                   help="input steps of the model and the neural peers (default: the package default); a "
                        "non-default length keeps its results apart (OUT/SERIES/VAR_in<N>)")
    p.add_argument("--accelerator", default=None, help="lightning accelerator of the neural peers (default: auto)")
    p.add_argument("--seeds", default="0",
                   help="comma-separated seeds: each trains the model (--seed S) and fits the neural peers "
                        "(random_seed 1 + S) again; with several, a last table per pair holds the means and the "
                        "verdict is taken on them (results of seed S > 0 in OUT/SERIES/VAR_seedS)")
    p.add_argument("--cache", default=None, help=f"directory of the series' netCDF files ({default_cache_dir()})")
    p.add_argument("--reuse", action="store_true", help="take finished steps from --out instead of re-running them")
    p.add_argument("--out", default="real_skill", help="output directory (real_skill.md / .csv, logs, runs)")
    a = p.parse_args(argv)
    a.series = [s.strip() for s in a.series.split(",") if s.strip()]
    a.vars = [v.strip() for v in a.vars.split(",") if v.strip()]
    a.peers = [s.strip().lower() for s in a.peers.split(",") if s.strip()]
    try:
        a.seeds = sorted({int(s) for s in a.seeds.split(",") if s.strip()}) or [0]
    except ValueError:
        p.error(f"--seeds: expected comma-separated integers, got {a.seeds!r}")
    if any(s < 0 for s in a.seeds):
        p.error(f"--seeds: seeds must be >= 0, got {a.seeds}")
    for what, got, known in (("--series", a.series, SERIES), ("--peers", a.peers, PEERS)):
        bad = [g for g in got if g not in known]
        if bad:
            p.error(f"{what}: unknown {', '.join(bad)}; choose from {', '.join(known)}")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse(argv)
    all_rows: list[dict[str, Any]] = []
    text = ["# Real-data skill suite", "",
            f"{time.strftime('%Y-%m-%d %H:%M')}; windows {a.seq_len} h in / {PRED_LEN} h out, chronological 7:1:2 "
            f"split, {a.max_windows} test windows evenly spaced; peers time-boxed at {a.max_time:.0f} s.", ""]
    verdicts: list[bool | None] = []
    for series in a.series:
        for var in a.vars:
            if var not in SERIES[series].variables:
                say(f"{series} has no {var}: skipped")
                continue
            rows, lines, ok = run_seeds(series, var, a)
            all_rows += rows
            text += lines
            verdicts.append(ok)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "real_skill.md", "\n".join(text))
    atomic_write_text(out / "real_skill.csv", pd.DataFrame(all_rows, columns=[*COLUMNS, "seed"]).to_csv(index=False))
    print("\n".join(text))
    say(f"wrote {out / 'real_skill.md'} and {out / 'real_skill.csv'}")
    return 1 if any(v is False for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
