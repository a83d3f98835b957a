"""The op and training-step benchmark scripts run end to end at toy sizes and report what they claim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], tmp_path: Path) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "URLK_DWCONV": "auto"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_dwconv_benchmark_reports_per_layer_times_and_ratios(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    text = _run([str(REPO / "benchmarks" / "dwconv.py"), "--res", "8", "--kernels", "3", "5", "--channels", "4",
                 "--layers", "3", "--torch-layers", "1", "--repeats", "1", "--warmup", "1", "--mode", "both",
                 "--paths", "own", "auto", "torch", "--json", str(out)], tmp_path)
    assert "torch/own" in text and "torch/auto" in text and "(torch: 1)" in text
    rows = json.loads(out.read_text())["results"]
    assert [(r["mode"], r["k"]) for r in rows] == [("fwd", 3), ("fwd", 5), ("fwdbwd", 3), ("fwdbwd", 5)]
    for r in rows:
        assert r["layers"] == 3 and r["torch_layers"] == 1
        ms = r["ms_per_layer"]
        assert set(ms) == {"own", "auto", "torch"} and all(v > 0 for v in ms.values())
        assert r["ratio_torch_over_own"] == ms["torch"] / ms["own"]
        assert r["ratios_torch_over"]["auto"] == ms["torch"] / ms["auto"]


def test_train_step_benchmark_compares_the_paths(tmp_path: Path) -> None:
    text = _run([str(REPO / "benchmarks" / "train_step.py"), "--batch", "2", "--height", "32", "--width", "32",
                 "--repeats", "1", "--warmup", "1"], tmp_path)
    for p in ("own", "auto", "torch"):
        assert f"| {p} |" in text
    assert "speed-up torch/own:" in text and "speed-up torch/auto:" in text
    assert "depthwise convs per step" in text
