"""Own CPU depthwise-conv kernels against F.conv2d (float64 reference), gradcheck, poisoned outputs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from urlk_forecast.cli.errors import command_logging
from urlk_forecast.ops import cpu_kernels, dwconv2d, same_padding, use_backend

TOL = 1e-5  # norm-wise relative error allowed for float32 results


@pytest.fixture(scope="module", autouse=True)
def _poison():
    """Every output buffer of the own kernels starts as NaN, so an element a kernel fails to write shows up."""
    old = os.environ.get("URLK_DWCONV_POISON")
    os.environ["URLK_DWCONV_POISON"] = "1"
    yield
    if old is None:
        os.environ.pop("URLK_DWCONV_POISON", None)
    else:
        os.environ["URLK_DWCONV_POISON"] = old


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a64, r64 = a.detach().double(), ref.detach().double()
    assert torch.isfinite(a64).all(), "non-finite values (unwritten poisoned elements?)"
    return float((a64 - r64).norm() / r64.norm().clamp_min(1e-30))


def reference(x, w, b, pads, dil, gy):
    """float64 F.conv2d output and gradients (x, w, b given in any float dtype)."""
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if b is not None else None
    t, bo, l, r = pads
    y = F.conv2d(F.pad(x64, (l, r, t, bo)), w64, b64, 1, 0, dil, x.shape[1])
    y.backward(gy.double())
    return y.detach(), x64.grad, w64.grad, (b64.grad if b64 is not None else None)


def own(x, w, b, padding, dil, gy):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    with use_backend("own"):
        y = dwconv2d(x, w, b, padding, dil)
    y.backward(gy)
    return y.detach(), x.grad, w.grad, (b.grad if b is not None else None)


def check_case(B, C, H, W, kh, kw, dil, padding, pads, bias, layout="contiguous", dtype=torch.float32, tol=TOL):
    g = torch.Generator().manual_seed(B * 1000 + C * 100 + H * 10 + W + kh)
    x = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":  # non-contiguous view: every other column of a wider tensor
        x = torch.randn(B, C, H, 2 * W, generator=g, dtype=dtype)[..., ::2]
    w = torch.randn(C, 1, kh, kw, generator=g, dtype=dtype)
    b = torch.randn(C, generator=g, dtype=dtype) if bias else None
    ho = H + pads[0] + pads[1] - dil[0] * (kh - 1)
    wo = W + pads[2] + pads[3] - dil[1] * (kw - 1)
    gy = torch.randn(B, C, ho, wo, generator=g, dtype=dtype)
    y, gx, gw, gb = own(x, w, b, padding, dil, gy)
    ry, rgx, rgw, rgb = reference(x, w, b, pads, dil, gy)
    assert y.shape == ry.shape and y.dtype == dtype
    assert rel_err(y, ry) <= tol, ("output", rel_err(y, ry))
    assert gx.shape == x.shape
    assert rel_err(gx, rgx) <= tol, ("grad_input", rel_err(gx, rgx))
    assert rel_err(gw, rgw) <= tol, ("grad_weight", rel_err(gw, rgw))
    if bias:
        assert rel_err(gb, rgb) <= tol, ("grad_bias", rel_err(gb, rgb))


# ----------------------------------------------------------------------------------------------- fixed cases
@pytest.mark.parametrize(
    "B,C,H,W,k,d",
    [
        (2, 3, 32, 32, 3, 1),    # 16-lane variant
        (1, 4, 12, 16, 13, 1),   # UniRepLKNet-A stage-2 like, K > map
        (2, 3, 6, 8, 7, 2),      # 8-lane variant, dilated
        (2, 5, 3, 4, 13, 1),     # 4-lane variant, almost all taps in the padding
        (1, 2, 2, 2, 3, 5),      # every off-centre tap in the padding
        (1, 2, 40, 37, 31, 1),   # K = 31, width not a multiple of the lanes
        (3, 2, 17, 1, 5, 1),     # width 1
        (1, 1, 1, 9, 3, 2),      # height 1
        (1, 2, 45, 70, 51, 1),   # K beyond 31, several 32-lane column chunks
    ],
)
def test_same_padding_matches_torch(B, C, H, W, k, d):
    check_case(B, C, H, W, k, k, (d, d), None, same_padding(k, d), bias=True)


@pytest.mark.parametrize("kh,kw", [(4, 4), (2, 6), (1, 5), (3, 1)])
def test_even_and_rectangular_kernels(kh, kw):
    check_case(2, 3, 9, 11, kh, kw, (1, 2), "same", same_padding((kh, kw), (1, 2)), bias=False)


@pytest.mark.parametrize("padding,pads", [("valid", (0, 0, 0, 0)), (1, (1, 1, 1, 1)), ((2, 0), (2, 2, 0, 0)),
                                          ((0, 3, 1, 2), (0, 3, 1, 2))])
def test_explicit_padding(padding, pads):
    check_case(2, 3, 10, 13, 5, 5, (1, 1), padding, pads, bias=True)


@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_non_contiguous_input(layout):
    check_case(2, 4, 9, 10, 5, 5, (1, 1), None, same_padding(5), bias=True, layout=layout)


def test_channels_last_output_keeps_format():
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 1, 3, 3)
    with use_backend("own"):
        y = dwconv2d(x, w)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, F.conv2d(x.double(), w.double(), None, 1, 1, 1, 4)) <= TOL


def test_float64_is_float64_accurate():
    check_case(2, 3, 11, 9, 7, 7, (1, 1), None, same_padding(7), bias=True, dtype=torch.float64, tol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computed_in_float32(dtype):
    x = torch.randn(2, 3, 9, 9).to(dtype).requires_grad_()
    w = torch.randn(3, 1, 5, 5).to(dtype).requires_grad_()
    with use_backend("own"):
        y = dwconv2d(x, w)
    assert y.dtype == dtype
    ref = F.conv2d(x.detach().double(), w.detach().double(), None, 1, 2, 1, 3)
    assert rel_err(y, ref) <= 1e-2
    y.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype and w.grad is not None and w.grad.dtype == dtype


# ---------------------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize(
    "shape,k,d,padding",
    [((2, 3, 6, 7), (3, 3), (1, 1), None), ((1, 2, 5, 4), (5, 5), (2, 1), None), ((2, 2, 4, 6), (4, 3), (1, 1), "same"),
     ((1, 3, 7, 5), (3, 5), (1, 1), (0, 2, 1, 0)), ((1, 2, 3, 3), (9, 9), (1, 1), None)],
)
def test_gradcheck_float64(shape, k, d, padding):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(*shape, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(shape[1], 1, *k, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(shape[1], dtype=torch.float64, generator=g, requires_grad=True)
    with use_backend("own"):
        assert torch.autograd.gradcheck(lambda x, w, b: dwconv2d(x, w, b, padding, d), (x, w, b))


# --------------------------------------------------------------------------------------------- hypothesis
@st.composite
def conv_cases(draw):
    B = draw(st.integers(1, 3))
    C = draw(st.integers(1, 5))
    H = draw(st.integers(1, 24))
    W = draw(st.integers(1, 40))
    kh = draw(st.sampled_from([1, 2, 3, 4, 5, 7, 9, 13, 17, 31]))
    kw = draw(st.sampled_from([kh, kh, 1, 3, 6, 11]))
    dil = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    mode = draw(st.sampled_from(["same", "same", "int", "valid", "asym"]))
    if mode == "same":
        padding, pads = None, same_padding((kh, kw), dil)
    elif mode == "valid":
        padding, pads = "valid", (0, 0, 0, 0)
    elif mode == "int":
        ph = draw(st.integers(0, dil[0] * (kh - 1)))
        pw = draw(st.integers(0, dil[1] * (kw - 1)))
        padding, pads = (ph, pw), (ph, ph, pw, pw)
    else:
        pads = tuple(draw(st.integers(0, dil[i // 2] * ((kh, kw)[i // 2] - 1))) for i in range(4))
        padding = pads
    bias = draw(st.booleans())
    layout = draw(st.sampled_from(["contiguous", "contiguous", "channels_last", "sliced"]))
    return B, C, H, W, kh, kw, dil, padding, pads, bias, layout


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases())
def test_hypothesis_against_torch(case):
    B, C, H, W, kh, kw, dil, padding, pads, bias, layout = case
    assume(H + pads[0] + pads[1] - dil[0] * (kh - 1) >= 1)
    assume(W + pads[2] + pads[3] - dil[1] * (kw - 1) >= 1)
    check_case(B, C, H, W, kh, kw, dil, padding, pads, bias, layout=layout)


# ------------------------------------------------------------------------------------- kernel-level contract
@pytest.mark.parametrize("variant", [f"{v}x{r}" for v, r in cpu_kernels._FWD_VARIANTS]
                         + [f"cb{p}" for p in cpu_kernels._CB_PIXELS])
@pytest.mark.parametrize("k,d", [(7, 1), (5, 2)])
def test_every_register_block_variant(monkeypatch, variant, k, d):
    # each (lanes x rows) block on a plane that is not a multiple of it, and each channel-blocked kernel with a
    # channel count that is not a multiple of 16, unit and non-unit dilation
    monkeypatch.setattr(cpu_kernels, "_FORCE_VARIANT", variant)
    C = 19 if variant.startswith("cb") else 3
    check_case(2, C, 11, 37, k, k, (d, d), None, same_padding(k, d), bias=True)


def test_poison_buffers_are_nan_and_fully_overwritten():
    x = torch.randn(2, 3, 7, 19)
    w = torch.randn(3, 1, 5, 3)
    buf = cpu_kernels._empty((2, 3, 7, 19), x)
    assert torch.isnan(buf).all()  # the test mode really poisons
    y = cpu_kernels.forward(x, w, None, (2, 1), 1, out=buf)
    assert y.data_ptr() == buf.data_ptr() and torch.isfinite(y).all()
    assert rel_err(y, F.conv2d(x.double(), w.double(), None, 1, (2, 1), 1, 3)) <= TOL


def test_grad_functions_match_contract():
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 3, 5, dtype=torch.float64, requires_grad=True)
    y = F.conv2d(x, w, None, 1, (2, 3), (2, 1), 3)
    gy = torch.randn_like(y)
    y.backward(gy)
    gx = cpu_kernels.grad_input(gy, w.detach(), (2, 3), (2, 1), (9, 8))
    gw = cpu_kernels.grad_weight(x.detach(), gy, (3, 5), (2, 3), (2, 1))
    assert torch.allclose(gx, x.grad, atol=1e-12) and torch.allclose(gw, w.grad, atol=1e-12)


@pytest.mark.parametrize("B,C", [(3, 5), (8, 1)])  # grad-weight accumulated per channel / per plane
def test_deterministic_and_thread_count_independent(B, C):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, C, 32, 30, generator=g)
    w = torch.randn(C, 1, 7, 7, generator=g)
    gy = torch.randn(B, C, 32, 30, generator=g)
    n = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 1, 2, 3):
            torch.set_num_threads(threads)
            y = cpu_kernels.forward(x, w, None, 3, 1)
            gx, gw = cpu_kernels.backward(x, gy, w, 3, 1)
            outs.append((y, gx, gw))
    finally:
        torch.set_num_threads(n)
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert torch.equal(a, b)
    assert rel_err(outs[-1][2], reference(x, w, None, (3, 3, 3, 3), (1, 1), gy)[2]) <= TOL


def test_unsupported_calls_rejected_by_kernels():
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(ValueError, match="pad"):
        cpu_kernels.forward(x, torch.randn(2, 1, 3, 3), None, 3, 1)  # padding beyond (K-1)*d
    with pytest.raises(ValueError, match="float32/float64"):
        cpu_kernels.forward(x.half(), torch.randn(2, 1, 3, 3).half(), None, 1, 1)
    assert not cpu_kernels.supports(x, torch.randn(3, 1, 3, 3))


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_cache_dir_refuses_directories_others_can_write(tmp_path, monkeypatch):
    # the generated kernel module is imported from the cache dir: never from one another user could plant code in
    shared = tmp_path / "shared" / "dwconv"
    shared.mkdir(parents=True)
    os.chmod(shared, 0o777)
    monkeypatch.setenv("URLK_CACHE_DIR", str(shared.parent))
    assert cpu_kernels.cache_dir() != str(shared)
    os.chmod(shared, 0o700)
    assert cpu_kernels.cache_dir() == str(shared)


def test_generated_source_is_deterministic_and_cached():
    assert cpu_kernels.generate_source() == cpu_kernels.generate_source()
    d = cpu_kernels.cache_dir()
    assert os.path.isdir(d) and any(f.endswith(".py") for f in os.listdir(d))


# ------------------------------------------------------------------------------------------- first compilation
def test_compile_notice_reaches_the_cli_stderr_with_a_heartbeat(monkeypatch, capsys):
    """A compilation that takes longer than a cache load is announced on the CLI's stderr (the package logger that
    ``command_logging`` sets up), then every heartbeat period, then timed; a quick one (a cache load) is silent."""
    monkeypatch.setattr(cpu_kernels, "_COMPILE_NOTICE_S", 0.1)
    monkeypatch.setattr(cpu_kernels, "_COMPILE_HEARTBEAT_S", 0.25)
    with command_logging():
        with cpu_kernels._compile_notice("bwd_32x4", torch.float32, (13, 13)):
            time.sleep(0.75)
        with cpu_kernels._compile_notice("fwd_32x4", torch.float32, (13, 5)):
            pass
    err = capsys.readouterr().err
    first = (f"compiling depthwise-conv kernels bwd_32x4 (float32) for K=13 (first run only, cached in "
             f"{cpu_kernels.cache_dir()})")
    assert err.splitlines()[0] == first
    assert err.count("still compiling depthwise-conv kernels bwd_32x4 (float32) for K=13") >= 1
    assert "compiled depthwise-conv kernels bwd_32x4 (float32) for K=13 in 0." in err
    assert "fwd_32x4" not in err


_FRESH_RUN = textwrap.dedent("""
    import torch, torch.nn.functional as F
    from urlk_forecast.cli.errors import command_logging
    from urlk_forecast.ops import cpu_kernels, dwconv2d, use_backend
    cpu_kernels._COMPILE_NOTICE_S = 1.0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 20, 4, 6, generator=g).requires_grad_()
    w = torch.randn(20, 1, 5, 5, generator=g).requires_grad_()
    with command_logging(), use_backend("own"):
        y = dwconv2d(x, w)
        y.square().sum().backward()
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    F.conv2d(x64, w64, None, 1, 2, 1, 20).square().sum().backward()
    for a, b in ((x.grad, x64.grad), (w.grad, w64.grad)):
        assert float((a.double() - b).norm() / b.norm()) < 1e-5
    mod = cpu_kernels._load()
    misses = sum(sum(getattr(mod, name).stats.cache_misses.values()) for name, _ in cpu_kernels._compiled)
    print("drivers", sorted(name for name, _ in cpu_kernels._compiled), "misses", misses,
          "helper", cpu_kernels._helper is not None)
""")


def test_first_run_compiles_visibly_once_and_later_runs_load_the_cache(tmp_path):
    """Fresh caches: the run says what it compiles (with the cache directory), a helper process compiles the
    backward kernels ahead, gradients are right and markers record the cache; a second run with the same caches
    compiles nothing, logs nothing and starts no helper."""
    env = dict(os.environ, URLK_CACHE_DIR=str(tmp_path / "urlk"), NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    env.pop("URLK_DWCONV_PRECOMPILE", None)
    runs = [subprocess.run([sys.executable, "-c", _FRESH_RUN], env=env, capture_output=True, text=True,
                           timeout=600) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    first, second = runs
    where = os.path.join(str(tmp_path / "urlk"), "dwconv")
    assert (f"compiling depthwise-conv kernels cbfwd_8 (float32) for K=5 (first run only, cached in {where})"
            in first.stderr)
    assert "compiled depthwise-conv kernels cbfwd_8 (float32) for K=5 in" in first.stderr
    assert "drivers ['cbbwd_8', 'cbfwd_8']" in first.stdout and "helper True" in first.stdout
    ready = os.listdir(os.path.join(where, "ready"))
    assert any("-cbfwd_8-float32-" in f for f in ready) and any("-cbbwd_8-float32-" in f for f in ready)
    assert "compiling" not in second.stderr
    assert "drivers ['cbbwd_8', 'cbfwd_8'] misses 0 helper False" in second.stdout
