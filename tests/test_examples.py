"""Example scripts train to well above chance (slow: each runs as a real process in --quick mode, < 1 min)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# (script, extra args, chance, asserted accuracy in --quick mode)
CASES = [
    ("image_digits.py", [], 0.10, 0.85),
    ("pointcloud_shapes.py", [], 0.20, 0.70),
    ("video_moving_digits.py", [], 0.25, 0.80),
    ("audio_commands.py", [], 1 / 6, 0.70),
]


def _run(script: str, args: list[str], tmp_path: Path) -> float:
    env = dict(os.environ, HOME=str(tmp_path))  # the audio example caches its clips under ~/.cache
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"^test accuracy: ([0-9.]+)$", proc.stdout, re.M)
    assert match, proc.stdout[-2000:]
    return float(match.group(1))


@pytest.mark.slow
@pytest.mark.parametrize("script,args,chance,target", CASES, ids=[c[0] for c in CASES])
def test_example_reaches_accuracy(script, args, chance, target, tmp_path):
    if script == "audio_commands.py" and shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng)")
    acc = _run(script, args, tmp_path)
    assert acc >= target > 2 * chance, f"{script}: test accuracy {acc:.3f} < {target} (chance {chance:.2f})"
