"""Smoke test of benchmarks/train_throughput.py on a tiny configuration (real subprocesses, both op paths)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_throughput_benchmark_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--models", "unireplknet_a",
           "--ops", "own,torch", "--stations", "44", "--hours", "120", "--steps", "1", "--infer-steps", "1",
           "--threads", "1", "--model-kw", json.dumps({"d_model": 32, "dims": [8, 16, 32, 64]}), "--json", str(out)]
    p = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["op"] for r in rows] == ["own", "torch"]
    for r in rows:
        assert "error" not in r, r
        assert r["stations"] == 44 and r["nodes"] == 4
        assert r["train_windows_per_s"] > 0 and r["infer_train_form_windows_per_s"] > 0
        assert r["infer_reparam_windows_per_s"] > 0
        assert r["reparam_max_rel_diff"] < 1e-4  # the deploy form forecasts what the training form does
        assert r["activation_mib_per_window"] > 0 and r["train_peak_mib"] > 0
    assert "| unireplknet_a | own |" in p.stdout and "| unireplknet_a | torch |" in p.stdout
