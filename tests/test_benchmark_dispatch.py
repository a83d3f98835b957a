"""benchmarks/dwconv_dispatch.py: a smoke run at a toy size, and its verdict rule and re-measuring on
hand-built timings."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "dwconv_dispatch.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("dwconv_dispatch_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_smoke_run_prints_a_row_per_call_direction_and_dtype_and_a_consistent_verdict(tmp_path):
    out = tmp_path / "rows.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the table goes to conftest's private URLK_DWCONV_TABLE_DIR
    env.pop("URLK_DWCONV", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--configs", "4x1", "--dtypes", "float32", "bfloat16",
                           "--repeats", "1", "--row-budget", "0", "--retries", "0", "--overhead",
                           "--overhead-calls", "20", "--json", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = data["rows"]
    text = proc.stdout
    # the overhead table: every case, both modes
    for case in ("F.conv2d", "nn.Conv2d module", "dwconv2d, forced torch", "dwconv2d, auto", "DWConv2d module, auto"):
        assert len(re.findall(rf"^\| (inference|training forward) \| {re.escape(case)} \| [\d.]+ \|", text, re.M)) == 2
    # one row per recorded call, direction and dtype, each printed once
    calls = {json.dumps(r["call"]) for r in rows}
    assert len(calls) >= 5
    assert len(rows) == len(calls) * 3 * 2
    for dname in ("float32", "bfloat16"):
        got = {(json.dumps(r["call"]), r["direction"]) for r in rows if r["dtype"] == dname}
        assert got == {(c, d) for c in calls for d in ("forward", "grad_input", "grad_weight")}
    printed = re.findall(r"^\| 4x1 \| (float32|bfloat16) \| (\d+)x(\d+)x(\d+)x(\d+) \|.*\| (ok|\*\*FAILS\*\*) \|$",
                         text, re.M)
    assert len(printed) == len(rows)
    # the verdict of each row follows the stated rule, recomputed here from the printed numbers
    tol, abs_us = data["tolerance"], data["abs_tol_us"]
    assert (tol, abs_us) == (0.05, 10.0)
    for r in rows:
        ms = r["ms"]
        best = min(ms["own"], ms["torch"])
        assert r["passes"] == (ms["auto"] <= (1 + tol) * best or (ms["auto"] - best) * 1e3 <= abs_us)
        assert r["auto_runs"] in ("own", "torch") and r["twin_of"] in ("own", "torch")
    failing = sum(not r["passes"] for r in rows)
    assert [p[-1] == "ok" for p in printed].count(False) == failing
    assert proc.returncode == (1 if failing else 0)
    verdict = re.findall(r"^# verdict: (PASS|FAIL): (\d+) rows, (\d+) failing", text, re.M)
    assert verdict == [("FAIL" if failing else "PASS", str(len(rows)), str(failing))]
    # the summary: one line per configuration and dtype
    assert len(re.findall(r"^\| 4x1 \| (float32|bfloat16) \| \d+ \| [\d.]+ \|", text, re.M)) == 2


@pytest.mark.parametrize(("auto_ms", "best_ms", "ok"), [
    (0.104, 0.100, True),     # 4 %: within 5 %
    (0.108, 0.100, True),     # 8 % but 8 us: within the absolute tolerance of short calls
    (0.1115, 0.100, False),   # 11.5 %, 11.5 us: neither
    (10.4, 10.0, True),       # 4 % of a long call
    (10.6, 10.0, False),      # 6 % of a long call is 600 us: the absolute tolerance does not excuse it
    (0.095, 0.100, True),     # auto faster than both forced paths (noise, or the own forward without autograd)
])
def test_verdict_rule_on_hand_built_rows(bench, auto_ms, best_ms, ok):
    assert bench.passes(auto_ms * 1e-3, best_ms * 1e-3, 0.05, 10e-6) is ok


def test_failing_row_is_re_measured_with_samples_pooled(bench, monkeypatch):
    """A row failing on its first repeats is measured again and judged on all its samples together: here auto is
    slow in the first batch and on par afterwards, so the pooled median passes only after the second re-measure
    (a re-measure that replaced the samples would pass after the first)."""
    batches = {"own": [[1.0]], "torch": [[2.0]], "twin": [[1.0]],
               "auto": [[1.2], [1.0], [1.0]]}  # ms per call, per batch of repeats
    state = {"batch": 0}

    class Fn:
        def __init__(self, path):
            self.path = path

        def __call__(self):
            return None

    monkeypatch.setattr(bench, "_timer", lambda direction, path, call, dtype: Fn(path))
    real_repeat = bench._repeat

    def repeat(fns, samples, repeats, budget, cycle=bench.CYCLE):
        real_repeat(fns, samples, repeats, budget, cycle)
        state["batch"] += 1

    def clock(fn):
        series = batches[fn.path]
        return series[min(state["batch"], len(series) - 1)][0] * 1e-3

    monkeypatch.setattr(bench, "_repeat", repeat)
    monkeypatch.setattr(bench, "_clock", clock)
    opts = type("O", (), {"repeats": 4, "row_budget": 0.0, "retries": 3, "tolerance": 0.05, "abs_tol_us": 10.0,
                          "min_samples": 0, "long_budget": 0.0})
    med, twin, retries = bench.time_call(((1, 1, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1)), "forward", None, opts)
    assert twin == "own" and retries == 2
    assert med["auto"] == pytest.approx(1.0e-3) and med["own"] == pytest.approx(1.0e-3)
    opts.retries = 0
    state["batch"] = 0
    med, _, retries = bench.time_call(((1, 1, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1)), "forward", None, opts)
    assert retries == 0 and med["auto"] == pytest.approx(1.2e-3)


def _scripted(bench, monkeypatch, ms):
    class Fn:
        def __init__(self, path):
            self.path = path

        def __call__(self):
            return None

    monkeypatch.setattr(bench, "_timer", lambda direction, path, call, dtype: Fn(path))
    monkeypatch.setattr(bench, "_clock", lambda fn: ms[fn.path] * 1e-3)


@pytest.mark.parametrize(("torch_ms", "focused"), [(20.0, True), (6.0, False)])
def test_long_rows_get_more_samples_of_the_paths_the_verdict_depends_on(bench, monkeypatch, torch_ms, focused):
    """A long row short of --min-samples gets more cycles of auto, the twin and the faster path, each following
    each other once per cycle; a clearly slower forced path (over 1.5x) is not timed again, a close one is."""
    ms = {"own": 5.0, "torch": torch_ms, "auto": 5.0, "twin": 5.0}
    _scripted(bench, monkeypatch, ms)
    seen = []
    real_clock = bench._clock
    monkeypatch.setattr(bench, "_clock", lambda fn: (seen.append(getattr(fn, "path", None)), real_clock(fn))[1])
    opts = type("O", (), {"repeats": 12, "row_budget": 0.0, "retries": 0, "tolerance": 0.05, "abs_tol_us": 10.0,
                          "min_samples": 40, "long_budget": 60.0})
    med, twin, _ = bench.time_call(((1, 1, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1)), "forward", None, opts)
    assert twin == "own" and med["auto"] == pytest.approx(5e-3)
    timed = seen[5:]  # after the warm-up calls (3 paths, then own and torch again); the twin's calls count as own
    counts = {p: timed.count(p) for p in bench.PATHS}
    assert counts["auto"] >= 40 and counts["own"] >= 80
    assert (counts["torch"] == 12) is focused and (counts["torch"] >= 40) is not focused
    cycle = bench.focus_cycle({p: [ms[p]] for p in bench.PATHS}, "own")
    if focused:  # each of the three follows each other exactly once per cycle, the wrap-around included
        pairs = [(cycle[i], cycle[(i + 1) % len(cycle)]) for i in range(len(cycle))]
        assert sorted(pairs) == sorted((a, b) for a in ("auto", "own", "twin") for b in ("auto", "own", "twin")
                                       if a != b)
    else:
        assert cycle == bench.CYCLE
