"""CUDA parts of the training loop: fp16 AMP with GradScaler, bf16 autocast, resume with the CUDA RNG, CPU loading.

Marked ``gpu`` (skipped on CPU-only machines; run with ``python -m pytest -m gpu tests/test_training_gpu.py``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_training import TinyNet, flat_params, make_ws, small_cfg  # noqa: E402

from urlk_forecast.training import load_checkpoint, resolve_amp, train  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def data() -> tuple:
    return make_ws(480, 6, seed=0), make_ws(200, 6, seed=1, start="2020-03-01")


def test_amp_on_cuda_tracks_fp32(data: tuple, tmp_path: Path) -> None:
    ws, val = data
    losses = {}
    for amp in (False, "fp16", "bf16"):
        torch.manual_seed(0)
        res = train(TinyNet(), ws, val, small_cfg(device="cuda", amp=amp, epochs=2, out_dir=tmp_path / str(amp)))
        assert all(math.isfinite(v) for v in res.step_losses)
        losses[amp] = res.step_losses
    for amp in ("fp16", "bf16"):
        assert losses[amp][0] == pytest.approx(losses[False][0], rel=2e-2)
        assert losses[amp][-1] < losses[amp][0]
    ck = load_checkpoint(tmp_path / "fp16")
    assert ck["scaler"] and ck["scaler"]["scale"] > 0  # the GradScaler state is checkpointed
    assert resolve_amp(True, torch.device("cuda")) in (torch.bfloat16, torch.float16)


def test_cuda_resume_equals_uninterrupted_and_loads_on_cpu(data: tuple, tmp_path: Path) -> None:
    ws, val = data
    cfg = small_cfg(device="cuda", epochs=2, patience=0, checkpoint_every=2)
    torch.manual_seed(0)
    ref = TinyNet(dropout=0.3)
    r_ref = train(ref, ws, val, cfg.replace(out_dir=tmp_path / "ref"))
    torch.manual_seed(0)
    train(TinyNet(dropout=0.3), ws, val, cfg.replace(max_steps=5, out_dir=tmp_path / "run"))
    m = TinyNet(dropout=0.3)
    r = train(m, ws, val, cfg.replace(out_dir=tmp_path / "run", resume=True))
    assert r.step_losses == r_ref.step_losses
    assert torch.equal(flat_params(m), flat_params(ref))
    assert next(m.parameters()).device.type == "cuda"
    ck = load_checkpoint(tmp_path / "run")  # saved from CUDA, loads on CPU
    cpu = TinyNet(dropout=0.3)
    cpu.load_state_dict(ck["model"])
    assert next(cpu.parameters()).device.type == "cpu"
