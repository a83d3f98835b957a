"""The numba.cuda depthwise-conv kernels against F.conv2d (float64 reference).

Three layers of tests:

* ``TestSimulator`` runs the real kernels in numba's CUDA simulator. It only runs inside a subprocess started by
  ``test_simulator_suite`` with ``NUMBA_ENABLE_CUDASIM=1`` (the variable must be set before numba.cuda is imported, and
  this test process must not be switched to the simulator).
* ``TestGPU`` (marker ``gpu``) runs the same checks, and larger ones, on a CUDA device.
* The rest runs everywhere: cheap import, error messages, launch configurations, generated source.

Every output is written into a NaN-poisoned buffer followed by a NaN guard region: an element the kernel forgets stays
NaN and fails the comparison; a write past the end changes the guard. Tolerances (norm-wise relative error against a
float64 computation on the same rounded inputs): float32 1e-5; float16 1.5e-3 and bfloat16 1e-2, the rounding of the
output to 11 / 8 significant bits (accumulation is float32 in every case).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from urlk_forecast.ops import cuda_kernels as ck

IN_SIM = ck.simulator_enabled()
ON_GPU = (not IN_SIM) and ck.available()
TOL = {torch.float32: 1e-5, torch.float16: 1.5e-3, torch.bfloat16: 1e-2}
GUARD = 37


def _dev() -> str:
    return "cpu" if IN_SIM else "cuda"


def _poisoned(shape, dtype, device):
    n = math.prod(shape)
    buf = torch.full((n + GUARD,), float("nan"), dtype=dtype, device=device)
    return buf, buf[:n].view(shape)


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours = ours.detach().double().cpu()
    assert torch.isfinite(ours).all(), "non-finite element (unwritten output or overflow)"
    return float((ours - ref).norm() / ref.norm().clamp_min(1e-300))


def check_case(B, C, H, W, KH, KW, dil=(1, 1), pad=None, dtype=torch.float32, bias=True, seed=0,
               noncontig=False) -> dict[str, float]:
    """Compare forward, grad_input and grad_weight with F.conv2d in float64; returns the relative errors."""
    dh, dw = dil
    if pad is None:
        pad = (dh * (KH - 1) // 2, dw * (KW - 1) // 2)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g).to(dtype)
    w = (torch.randn(C, 1, KH, KW, generator=g) / math.sqrt(KH * KW)).to(dtype)
    b = torch.randn(C, generator=g).to(dtype) if bias else None
    xr = x.double().requires_grad_()
    wr = w.double().requires_grad_()
    yr = F.conv2d(xr, wr, None if b is None else b.double(), 1, pad, dil, C)
    gy = torch.randn(yr.shape, generator=g).to(dtype)
    yr.backward(gy.double())
    dev = _dev()
    xd, wd, gyd = x.to(dev), w.to(dev), gy.to(dev)
    bd = None if b is None else b.to(dev)
    if noncontig:  # same values, channels-last memory: the kernels must handle (copy) it
        xd = xd.to(memory_format=torch.channels_last)
        gyd = gyd.to(memory_format=torch.channels_last)
    tol = TOL[dtype]
    errs = {}

    buf, y = _poisoned(tuple(yr.shape), dtype, dev)
    assert ck.forward(xd, wd, bd, pad, dil, out=y) is y
    errs["forward"] = _rel(y, yr.detach())
    assert torch.isnan(buf[-GUARD:]).all(), "forward wrote past the end of its output"

    buf, gx = _poisoned((B, C, H, W), dtype, dev)
    ck.grad_input(gyd, wd, pad, dil, (H, W), out=gx)
    errs["grad_input"] = _rel(gx, xr.grad)
    assert torch.isnan(buf[-GUARD:]).all(), "grad_input wrote past the end of its output"

    cfg = ck.gw_config(B, C, yr.shape[2], yr.shape[3], KH, KW, dh, dw)
    pbuf, part = _poisoned((cfg.chunks, C, KH * KW), torch.float32, dev)
    gw = ck.grad_weight(xd, gyd, (KH, KW), pad, dil, partial_out=part)
    assert gw.dtype == dtype and tuple(gw.shape) == (C, 1, KH, KW)
    assert torch.isfinite(part).all(), "grad_weight left a partial sum unwritten"
    assert torch.isnan(pbuf[-GUARD:]).all(), "grad_weight wrote past the end of its partial sums"
    errs["grad_weight"] = _rel(gw, wr.grad)

    for name, err in errs.items():
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol:g} for B={B} C={C} {H}x{W} K={KH}x{KW} " \
                           f"dil={dil} pad={pad} {dtype}"
    return errs


# ----------------------------------------------------------------------------------------------------------------
# simulator (runs only inside the subprocess of test_simulator_suite)
# ----------------------------------------------------------------------------------------------------------------

SIM_CASES = [
    # B, C, H, W, KH, KW, dil, pad
    (1, 2, 7, 9, 3, 3, (1, 1), None),
    (2, 3, 12, 20, 5, 5, (1, 1), None),          # several tiles in both directions (simulator tiles are 8 x 16)
    (1, 3, 11, 6, 7, 7, (1, 1), None),           # non-square input
    (1, 2, 10, 12, 3, 5, (2, 1), None),          # non-square kernel, dilation on one axis
    (2, 2, 9, 9, 3, 3, (3, 2), (1, 4)),          # padding that is not "same": output size differs from input
    (1, 1, 8, 11, 5, 3, (1, 1), (0, 0)),         # no padding ("valid")
    (1, 2, 9, 9, 31, 31, (2, 2), None),          # K = 31 with dilation on a 9 x 9 map: most kernel rows skipped
]


@pytest.mark.skipif(not IN_SIM, reason="runs in numba's CUDA simulator subprocess (see test_simulator_suite)")
class TestSimulator:
    @pytest.mark.parametrize("case", SIM_CASES, ids=lambda c: "x".join(map(str, c[:6])) + f"-d{c[6][0]}{c[6][1]}")
    def test_fixed(self, case):
        B, C, H, W, KH, KW, dil, pad = case
        check_case(B, C, H, W, KH, KW, dil, pad, bias=(C != 1))

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
    def test_half_types(self, dtype):
        check_case(2, 3, 9, 10, 5, 5, (1, 1), None, dtype=dtype)
        check_case(1, 2, 8, 8, 3, 3, (2, 2), None, dtype=dtype, bias=False)

    def test_channels_last_input(self):
        check_case(1, 3, 6, 7, 3, 3, noncontig=True)

    @settings(max_examples=10, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(B=st.integers(1, 2), C=st.integers(1, 3), H=st.integers(1, 12), W=st.integers(1, 12),
           K=st.sampled_from([3, 5, 7]), dh=st.integers(1, 3), dw=st.integers(1, 3), same=st.booleans(),
           data=st.data())
    def test_hypothesis(self, B, C, H, W, K, dh, dw, same, data):
        if same:
            pad = None
        else:
            pad = (data.draw(st.integers(0, dh * (K - 1))), data.draw(st.integers(0, dw * (K - 1))))
            if H + 2 * pad[0] - dh * (K - 1) < 1 or W + 2 * pad[1] - dw * (K - 1) < 1:
                pad = None
        check_case(B, C, H, W, K, K, (dh, dw), pad, bias=data.draw(st.booleans()), seed=data.draw(st.integers(0, 99)))


def test_simulator_suite():
    """Run TestSimulator in a subprocess with NUMBA_ENABLE_CUDASIM=1 and require every test to pass."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", URLK_CUDA_CACHE="off")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}::TestSimulator"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=os.path.dirname(__file__))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    m = re.search(r"(\d+) passed", out)
    expected = len(SIM_CASES) + 2 + 1 + 1
    assert m and int(m.group(1)) == expected, out[-3000:]
    assert "skipped" not in out, out[-3000:]


# ----------------------------------------------------------------------------------------------------------------
# everywhere
# ----------------------------------------------------------------------------------------------------------------

def test_import_is_cheap_and_safe():
    """Importing the module does not import numba; without CUDA and simulator, available() is False."""
    code = ("import sys, time; t = time.perf_counter(); import urlk_forecast.ops.cuda_kernels as ck; "
            "dt = time.perf_counter() - t; print('numba' in sys.modules, ck.available(), "
            "'numba.cuda' in sys.modules, round(dt, 3))")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    numba_on_import, avail, numba_cuda_after, _ = r.stdout.split()
    assert numba_on_import == "False"
    if not torch.cuda.is_available():
        assert avail == "False"
        assert numba_cuda_after == "False"


def test_numpy_row_stack_shim():
    """numba-cuda <= 0.30 needs np.row_stack, which NumPy 2.5 removed; loading numba.cuda restores the alias."""
    code = ("import numpy as np\n"
            "np.__dict__.pop('row_stack', None)\n"
            "assert not hasattr(np, 'row_stack')\n"
            "from urlk_forecast.ops import cuda_kernels as ck\n"
            "ck._cuda()\n"
            "assert np.row_stack is np.vstack\n"
            "print('ok')")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.skipif(IN_SIM or ON_GPU, reason="checks the errors raised for CPU tensors without the simulator")
def test_cpu_tensors_rejected_with_clear_errors():
    x = torch.randn(1, 2, 5, 5)
    w = torch.randn(2, 1, 3, 3)
    with pytest.raises(ValueError, match="must be a CUDA tensor"):
        ck.forward(x, w, None, (1, 1), (1, 1))
    with pytest.raises(ValueError, match="4-D"):
        ck.forward(x[0], w, None, (1, 1), (1, 1))
    with pytest.raises(TypeError, match="float64"):
        ck.grad_input(x.double(), w, (1, 1), (1, 1), (5, 5))
    assert not ck.supports(x, w)
    assert not ck.available()


@pytest.mark.parametrize("K", [3, 5, 7, 9, 13, 17, 21, 27, 29, 31, 51])
@pytest.mark.parametrize("R", [2, 7, 16, 32, 64, 200])
def test_launch_configs_fit_the_hardware(K, R):
    """Every configuration stays within 48 KiB of shared memory and 256 threads a block, and covers the output."""
    for dil in (1, 2):
        if (K - 1) * dil + 1 > 90:  # the halo alone overflows a block's 48 KiB: refused, the dispatcher uses torch
            with pytest.raises(ValueError, match="shared memory"):
                ck.fwd_config(R, R, K, K, dil, dil, 64 * 384)
            continue
        cfg = ck.fwd_config(R, R, K, K, dil, dil, 64 * 384)
        tx, ty = cfg.TW // cfg.P, cfg.TH // cfg.Q
        assert cfg.TW % cfg.P == 0 and cfg.TH % cfg.Q == 0
        assert 1 <= tx * ty * cfg.NZ <= 256
        rows, cols = cfg.TH + (K - 1) * dil, cfg.TW + (K - 1) * dil
        assert cfg.S >= cols
        assert 4 * cfg.NZ * (K * K + rows * cfg.S) <= 48 * 1024
        g = ck.gw_config(64, 384, R, R, K, K, dil, dil)
        nstrip = -(-K // g.PJ)
        assert nstrip * g.PJ >= K and (nstrip - 1) * g.PJ < K
        assert 1 <= K * nstrip * g.nsplit <= 256
        grows, gcols = g.TH + (K - 1) * dil, g.TWG + (K - 1) * dil
        assert g.S >= gcols
        assert 4 * max(g.NB * (g.TH * g.TWG + grows * g.S), g.nsplit * K * nstrip * g.PJ) <= 48 * 1024
        assert 1 <= g.chunks <= 64


def test_generated_source_is_valid_python_with_unrolled_body():
    """The generated kernels compile as Python and hold exactly the unrolled multiply-adds the design calls for."""
    for K, dil, P, Q in [(3, 1, 8, 4), (13, 2, 8, 2), (31, 1, 8, 2)]:
        src = ck.fwd_source(K, K, dil, dil, P, Q, "f32", "bf16")
        compile(src, "fwd", "exec")
        assert len(re.findall(r"^\s+a\d+_\d+ \+= s\d+ \* w\d+$", src, flags=re.M)) == K * P * Q
        assert "_bf2f(w[" in src
    for K, PJ, TWG in [(3, 3, 8), (31, 16, 32)]:
        src = ck.gw_source(K, K, 1, 1, PJ, TWG, "f16", "f16")
        compile(src, "gw", "exec")
        assert len(re.findall(r"^\s+a\d+ \+= gv \* s\d+$", src, flags=re.M)) == TWG * PJ


# ----------------------------------------------------------------------------------------------------------------
# real GPU
# ----------------------------------------------------------------------------------------------------------------

GPU_CASES = [
    (2, 16, 40, 40, 31, 31, (1, 1), None),
    (3, 8, 33, 47, 7, 7, (1, 1), None),
    (2, 24, 64, 64, 13, 13, (1, 1), None),
    (4, 16, 16, 16, 5, 5, (3, 3), None),          # dilated branch of a Dilated Reparam Block
    (2, 8, 70, 19, 9, 3, (2, 1), (3, 2)),
    (1, 130, 12, 16, 27, 27, (1, 1), None),        # many planes, large kernel on a small map (forecasting shapes)
    (2, 4, 3, 4, 3, 3, (1, 1), None),
]


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device usable by numba")
class TestGPU:
    @pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "x".join(map(str, c[:6])) + f"-d{c[6][0]}{c[6][1]}")
    def test_fixed(self, case):
        B, C, H, W, KH, KW, dil, pad = case
        check_case(B, C, H, W, KH, KW, dil, pad)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
    @pytest.mark.parametrize("K", [3, 7, 31])
    def test_half_types(self, dtype, K):
        check_case(2, 12, 29, 35, K, K, (1, 1), None, dtype=dtype)

    def test_channels_last_input(self):
        check_case(2, 6, 20, 21, 7, 7, noncontig=True)

    @settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(B=st.integers(1, 3), C=st.integers(1, 20), H=st.integers(1, 72), W=st.integers(1, 72),
           K=st.sampled_from([3, 7]), d=st.sampled_from([1, 2]), data=st.data())
    def test_hypothesis(self, B, C, H, W, K, d, data):
        check_case(B, C, H, W, K, K, (d, d), None, bias=data.draw(st.booleans()), seed=data.draw(st.integers(0, 99)))

    def test_runs_on_torchs_current_stream(self):
        """Work queued on a side stream before our kernel must be visible to it (no hidden default-stream use)."""
        x = torch.randn(8, 64, 64, 64, device="cuda")
        w = torch.randn(64, 1, 13, 13, device="cuda") / 13
        ref = ck.forward(x * 2, w, None, (6, 6), (1, 1))
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            torch.cuda._sleep(50_000_000)  # keeps the side stream busy, so a kernel on another stream runs early
            x2 = x * 2
            y = ck.forward(x2, w, None, (6, 6), (1, 1))
            gx = ck.grad_input(y, w, (6, 6), (1, 1), (64, 64))
            gw = ck.grad_weight(x2, y, (13, 13), (6, 6), (1, 1))
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        assert torch.equal(y, ref)
        assert torch.equal(gx, ck.grad_input(ref, w, (6, 6), (1, 1), (64, 64)))
        assert torch.equal(gw, ck.grad_weight(x * 2, ref, (13, 13), (6, 6), (1, 1)))

    def test_deterministic(self):
        x = torch.randn(16, 32, 32, 32, device="cuda")
        gy = torch.randn_like(x)
        a = ck.grad_weight(x, gy, (31, 31), (15, 15), (1, 1))
        b = ck.grad_weight(x, gy, (31, 31), (15, 15), (1, 1))
        assert torch.equal(a, b)


@pytest.mark.skipif(IN_SIM, reason="the disk cache is off in the simulator")
def test_generated_sources_live_in_the_cache_dir(tmp_path, monkeypatch):
    """Kernel sources go to URLK_CUDA_CACHE once (numba's disk cache keys on their time stamp) and import from there."""
    monkeypatch.setenv("URLK_CUDA_CACHE", str(tmp_path))
    src = ck.fwd_source(5, 5, 1, 1, 8, 2, "f32", "f32")
    fn, cacheable = ck._load_function(src, "fwd")
    assert cacheable
    files = list(tmp_path.glob("urlk_dwconv_fwd_*.py"))
    assert len(files) == 1 and fn.__code__.co_filename == str(files[0])
    stamp = files[0].stat().st_mtime_ns
    fn2, _ = ck._load_function(src, "fwd")
    assert files[0].stat().st_mtime_ns == stamp and fn2.__code__.co_filename == str(files[0])
    _, again = ck._load_function(ck.fwd_source(7, 7, 1, 1, 8, 2, "f32", "f32"), "fwd")
    assert again and len(list(tmp_path.glob("urlk_dwconv_fwd_*.py"))) == 2
    monkeypatch.setenv("URLK_CUDA_CACHE", "off")
    assert ck.cache_dir() is None
    fn3, cacheable3 = ck._load_function(src, "fwd")
    assert not cacheable3 and fn3.__code__.co_filename.startswith("<urlk_dwconv_")
