"""The op and training-step benchmark scripts run end to end at toy sizes and report what they claim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def _load_profile(name: str = "forecaster_profile"):  # type: ignore[no-untyped-def]
    import importlib.util

    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_profile_extracts_a_commit_for_the_side_by_side(tmp_path: Path) -> None:
    """``forecaster_profile.py --against COMMIT`` runs that commit's files: ``_extract`` writes them as git has them,
    and an unknown commit is a clear error."""
    prof = _load_profile()
    prof._extract("HEAD", tmp_path)
    want = subprocess.run(["git", "-C", str(REPO), "show", "HEAD:urlk_forecast/__init__.py"], capture_output=True,
                          text=True, check=True).stdout
    assert (tmp_path / "urlk_forecast" / "__init__.py").read_text() == want
    assert (tmp_path / "benchmarks" / "forecaster_profile.py").exists()
    with pytest.raises(SystemExit, match="git archive no-such-commit failed"):
        prof._extract("no-such-commit", tmp_path / "x")


def test_step_worker_times_the_package_on_its_path(tmp_path: Path) -> None:
    """The worker of ``--against`` trains the default network on the package its PYTHONPATH names and says which."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "step_worker.py"), "--stations", "2", "--batch",
                           "2", "--steps", "2", "--warmup", "0"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), "URLK_DWCONV": "torch"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(res["package"]).resolve() == (REPO / "urlk_forecast" / "__init__.py").resolve()
    assert len(res["steps_s"]) == 2 and all(t > 0 for t in res["steps_s"]) and res["params"] > 1_000_000


def test_step_worker_default_dtype_is_the_package_regime_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--amp default``: bf16 from the package's own ``BF16_MIN_IMAGES`` node images per step on native bf16;
    float32 below it, without native bf16, and for a package whose regime has no such rule (before the decision)."""
    from types import SimpleNamespace

    import torch

    import urlk_forecast.regime as regime

    worker = _load_profile("step_worker")
    net = SimpleNamespace(grouping=SimpleNamespace(n_nodes=2))
    at = regime.BF16_MIN_IMAGES
    monkeypatch.setattr(regime, "cpu_has_native_bf16", lambda: True)
    assert worker._default_amp(net, -(-at // 2)) is torch.bfloat16
    assert worker._default_amp(net, (at - 1) // 2) is None
    monkeypatch.setattr(regime, "cpu_has_native_bf16", lambda: False)
    assert worker._default_amp(net, at) is None
    monkeypatch.setattr(regime, "cpu_has_native_bf16", lambda: True)
    monkeypatch.delattr(regime, "BF16_MIN_IMAGES")
    assert worker._default_amp(net, at) is None


@pytest.mark.slow
def test_profile_against_a_commit_prints_rounds_side_by_side(tmp_path: Path) -> None:
    """End to end: ``--against HEAD`` times HEAD's extracted package and this tree's in fresh processes and prints
    one row per round with both step times and their ratio."""
    text = _run([str(REPO / "benchmarks" / "forecaster_profile.py"), "--against", "HEAD", "--configs", "2x2",
                 "--steps", "1", "--warmup", "1", "--rounds", "2"], tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("| 2 st x 2 none |")]
    assert len(rows) == 2, text
    for r, row in enumerate(rows, 1):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == str(r)
        old_ms, new_ms, ratio = float(cells[2]), float(cells[3]), float(cells[6].rstrip("x"))
        assert old_ms > 0 and new_ms > 0 and abs(ratio - old_ms / new_ms) < 0.01 + 0.01 * ratio
