"""``auto``'s kept plans, its cheap environment reads, the measuring protocol and the table across processes.

References are independent of the code under test: ``F.conv2d`` in float64 for the numbers, a table written by
hand for the decisions, scripted clocks for the protocol. No speed is asserted here (that is
``benchmarks/dwconv_dispatch.py``'s job).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from urlk_forecast.ops import autotune, cpu_kernels, cpu_paths, dispatch, dwconv2d, reach, same_padding, use_backend

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def table_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("URLK_DWCONV", raising=False)
    monkeypatch.delenv(autotune.TUNE_ENV, raising=False)
    monkeypatch.setenv(autotune.TABLE_DIR_ENV, str(tmp_path))
    autotune.reset()
    yield tmp_path
    autotune.reset()


def no_measuring(monkeypatch) -> None:
    def measure(*a, **k):
        raise AssertionError("the table was expected to decide; nothing may be measured")

    monkeypatch.setattr(autotune, "measure", measure)


def entry(impl: str) -> dict[str, object]:
    """A table entry choosing ``impl``, which its timings show 1 ms faster (so a plan keeps it: see
    ``autotune.choose_plan``)."""
    return {"impl": impl, "own_ms": 1.0 if impl == "own" else 2.0, "torch_ms": 2.0 if impl == "own" else 1.0}


def write_table(entries: dict[str, dict[str, str]]) -> None:
    data = {"format": autotune.FORMAT, "machine": autotune.machine_id(),
            "entries": {k: {d: entry(i) for d, i in v.items()}
                        for k, v in entries.items()}}
    with open(autotune.table_path(), "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    autotune.reset()


def key(shape, k, dil, dtype) -> str:
    return autotune.bucket((tuple(shape), (k, k), same_padding(k, dil), (dil, dil)), dtype, torch.get_num_threads())


class Spy:
    """Counts which implementation ran each direction (the real code still runs)."""

    def __init__(self, monkeypatch):
        self.log: list[str] = []
        real_f, real_b = cpu_kernels.forward, cpu_kernels.backward
        def fwd(*a, **k):
            self.log.append("own forward")
            return real_f(*a, **k)

        def back(*a, **k):
            self.log += ["own grad_input"] * bool(k.get("need_input"))
            self.log += ["own grad_weight"] * bool(k.get("need_weight"))
            return real_b(*a, **k)

        monkeypatch.setattr(cpu_kernels, "forward", fwd)

        monkeypatch.setattr(cpu_kernels, "backward", back)


def reference(x64, w64, b64, pads, dil, g64):
    xr, wr, br = (t.clone().requires_grad_() for t in (x64, w64, b64))
    y = F.conv2d(F.pad(xr, (pads[2], pads[3], pads[0], pads[1])), wr, br, 1, 0, dil, x64.shape[1])
    return (y, *torch.autograd.grad(y, (xr, wr, br), g64))


# ----------------------------------------------------------------------------------------------------- plans
@pytest.mark.parametrize("impls", list(itertools.product(("own", "torch"), repeat=3)))
def test_repeated_calls_run_the_kept_plan_and_equal_float64_conv2d(monkeypatch, impls):
    """Every mix of implementations: the first call decides from the table, the next calls are one lookup (no
    decision, no table, no compile prefetch) and give forward and all three gradients equal to float64 F.conv2d."""
    no_measuring(monkeypatch)
    gen = torch.Generator().manual_seed(3)
    shape, k, dil = (3, 6, 8, 11), 5, 2
    x64, w64, b64 = (torch.randn(*s, dtype=torch.float64, generator=gen) for s in (shape, (6, 1, k, k), (6,)))
    pads = same_padding(k, dil)
    write_table({key(shape, k, dil, torch.float32): dict(zip(cpu_paths.DIRECTIONS, impls))})
    x, w, b = (t.float().requires_grad_() for t in (x64, w64, b64))
    g64 = torch.randn(shape, dtype=torch.float64, generator=gen)
    want = reference(x64, w64, b64, pads, (dil, dil), g64)
    for attempt in range(3):
        if attempt == 1:  # from now on nothing may decide again
            for name in ("choose_many", "choose", "_table"):
                monkeypatch.setattr(autotune, name, lambda *a, **k: pytest.fail("decided again"))
            monkeypatch.setattr(cpu_kernels, "prefetch_backward", lambda *a, **k: pytest.fail("prefetched again"))
            monkeypatch.setattr(dispatch, "_choose", lambda *a, **k: pytest.fail("checked again"))
        spy = Spy(monkeypatch)
        y = dwconv2d(x, w, b, dilation=dil)
        got = (y, *torch.autograd.grad(y, (x, w, b), g64.float()))
        for a, r in zip(got, want):
            assert ((a.double() - r).norm() / r.norm()).item() < 1e-5
        want_own = [f"own {d}" for d, i in zip(cpu_paths.DIRECTIONS, impls) if i == "own"]
        assert sorted(spy.log) == sorted(want_own)
    assert len(autotune.plans) == 1


def test_plan_key_follows_backend_gradients_threads_and_tuning_mode(monkeypatch):
    """What changes a decision changes the plan: the forced backend, the gradients needed, the thread count (a
    table key) and URLK_DWCONV_TUNE."""
    no_measuring(monkeypatch)
    x = torch.randn(2, 4, 6, 7, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, requires_grad=True)
    write_table({key(x.shape, 3, 1, torch.float32): {"forward": "own", "grad_input": "torch", "grad_weight": "own"}})
    spy = Spy(monkeypatch)
    with torch.no_grad():
        dwconv2d(x, w)
    assert spy.log == ["own forward"]
    with use_backend("torch"), torch.no_grad():
        dwconv2d(x, w)
    monkeypatch.setenv("URLK_DWCONV", "torch")  # the environment, read on every call, not frozen into a plan
    with torch.no_grad():
        dwconv2d(x, w)
    monkeypatch.delenv("URLK_DWCONV")
    assert spy.log == ["own forward"]
    dwconv2d(x, w.detach()).sum().backward()  # only grad-input needed: forward own, grad-input torch
    assert spy.log == ["own forward"] * 2
    monkeypatch.setenv(autotune.TUNE_ENV, "0")  # the fixed rule: oneDNN forward on this small map, own backward
    dwconv2d(x, w).sum().backward()
    assert spy.log == ["own forward"] * 2 + ["own grad_input", "own grad_weight"]
    monkeypatch.delenv(autotune.TUNE_ENV)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)  # another table key: not in the table, so measured
        with pytest.raises(AssertionError, match="expected to decide"), torch.no_grad():
            dwconv2d(x, w)
    finally:
        torch.set_num_threads(threads)
    assert len({k[0] for k in autotune.plans}) == 1  # plans kept for auto only; use_backend("torch") keeps none


def test_plans_are_bounded(monkeypatch):
    monkeypatch.setattr(dispatch, "MAX_PLANS", 3)
    monkeypatch.setenv(autotune.TUNE_ENV, "0")
    w = torch.randn(2, 1, 3, 3)
    for n in range(1, 6):
        dwconv2d(torch.randn(n, 2, 5, 5), w)
        assert 1 <= len(autotune.plans) <= 3


def test_env_get_reads_exactly_what_os_environ_holds(monkeypatch):
    name = "URLK_TEST_ENV_GET_PROBE"
    monkeypatch.delenv(name, raising=False)
    assert autotune.env_get(name) is None
    for value in ("own", " Torch ", "", "ünïcode-wert"):
        monkeypatch.setenv(name, value)
        assert autotune.env_get(name) == os.environ[name] == value
    os.environ.pop(name)
    assert autotune.env_get(name) is None
    os.environ[name] = "x"  # plain assignment, as a script would do
    assert autotune.env_get(name) == "x"


# ----------------------------------------------------------------------------------------------------- bf16
@pytest.mark.parametrize("impls", [("own", "own", "own"), ("torch", "torch", "torch"), ("torch", "own", "torch"),
                                   ("own", "torch", "own")])
def test_bfloat16_calls_have_their_own_table_rows_and_match_float64(monkeypatch, impls):
    """bf16 tensors are decided by the bfloat16 rows of the table (a float32 row of the same shape does not
    decide them) and match F.conv2d in float64 on the bf16-rounded inputs within bf16 rounding."""
    no_measuring(monkeypatch)
    gen = torch.Generator().manual_seed(5)
    shape, k, dil = (2, 16, 8, 12), 7, 2
    pads = same_padding(k, dil)
    x64 = torch.randn(*shape, dtype=torch.float64, generator=gen).bfloat16().double()
    w64 = (torch.randn(16, 1, k, k, dtype=torch.float64, generator=gen) / k).bfloat16().double()
    b64 = torch.randn(16, dtype=torch.float64, generator=gen).bfloat16().double()
    g64 = torch.randn(shape, dtype=torch.float64, generator=gen).bfloat16().double()
    other = tuple("own" if i == "torch" else "torch" for i in impls)
    write_table({key(shape, k, dil, torch.bfloat16): dict(zip(cpu_paths.DIRECTIONS, impls)),
                 key(shape, k, dil, torch.float32): dict(zip(cpu_paths.DIRECTIONS, other))})
    want = reference(x64, w64, b64, pads, (dil, dil), g64)
    x, w, b = (t.bfloat16().requires_grad_() for t in (x64, w64, b64))
    for _ in range(2):  # deciding, then the kept plan
        spy = Spy(monkeypatch)
        y = dwconv2d(x, w, b, dilation=dil)
        got = (y, *torch.autograd.grad(y, (x, w, b), g64.bfloat16()))
        assert y.dtype == torch.bfloat16 and all(t.dtype == torch.bfloat16 for t in got)
        for a, r in zip(got, want):
            assert ((a.double() - r).norm() / r.norm()).item() < 2e-2  # bf16: 8 significant bits
        assert sorted(spy.log) == sorted(f"own {d}" for d, i in zip(cpu_paths.DIRECTIONS, impls) if i == "own")


# ----------------------------------------------------------------------------------------------------- protocol
def scripted_clock(monkeypatch, seconds: dict[str, list[float]]) -> dict[str, int]:
    """Replace the measuring clock: each timed call of an implementation returns its next scripted duration."""
    used = {"own": 0, "torch": 0}

    def clock(fn):
        impl = fn.args[1]  # partial(cpu_paths.compute, direction, impl, ...)
        used[impl] += 1
        return seconds[impl][used[impl] - 1]

    monkeypatch.setattr(autotune, "_clock", clock)
    return used


def measure_tiny(direction: str = "forward") -> dict[str, float]:
    return autotune.measure(direction, torch.randn(2, 3, 5, 5), torch.randn(3, 1, 3, 3), same_padding(3), (1, 1))


def test_measure_decides_by_the_median_not_a_lucky_or_unlucky_call(monkeypatch):
    """A one-off slow first call (oneDNN creating the primitive for a new batch size) and one lucky fast call do
    not decide; the medians do: here torch, although own has the fastest single call."""
    scripted_clock(monkeypatch, {"own": [1.0e-3, 0.70e-3, 1.0e-3, 1.0e-3], "torch": [5e-3, 0.8e-3, 0.8e-3, 0.8e-3]})
    t = measure_tiny()
    assert t == {"own": 1.0e-3, "torch": 0.8e-3}
    assert min(("own", "torch"), key=t.__getitem__) == "torch"


def test_measure_repeats_close_calls_and_stops_early_on_clear_ones(monkeypatch):
    close = scripted_clock(monkeypatch, {"own": [1.00e-3] * 40, "torch": [1.04e-3] * 40})
    measure_tiny()
    assert close == {"own": autotune.MAX_REPEATS, "torch": autotune.MAX_REPEATS}  # within CLOSE: all it may
    apart = scripted_clock(monkeypatch, {"own": [1.0e-3] * 40, "torch": [1.5e-3] * 40})
    measure_tiny()
    assert apart == {"own": autotune.MIN_REPEATS, "torch": autotune.MIN_REPEATS}
    clear = scripted_clock(monkeypatch, {"own": [1.0e-3] * 40, "torch": [90e-3] * 40})  # expensive loser
    assert measure_tiny("grad_weight") == {"own": 1.0e-3, "torch": 90e-3}
    assert clear == {"own": 2, "torch": 2}
    # one pair alone never decides, however clear: the first call may carry a one-off cost
    first_only = scripted_clock(monkeypatch, {"own": [1.0e-3] * 40, "torch": [90e-3, 0.5e-3] + [0.5e-3] * 38})
    assert min(("own", "torch"), key=measure_tiny().__getitem__) == "torch"
    assert first_only["torch"] >= autotune.MIN_REPEATS


# ----------------------------------------------------------------------------------------------------- processes
def test_a_new_process_uses_the_cached_table_without_measuring(table_dir):
    """A table written here decides in a fresh interpreter, which would fail if it measured anything."""
    shape, k, dil = (4, 8, 6, 9), 5, 1
    impls = {"forward": "own", "grad_input": "torch", "grad_weight": "torch"}  # not what a fixed rule gives
    write_table({key(shape, k, dil, torch.float32): impls})
    # the table's keys hold the thread count; the child uses this process's (another test may have changed it)
    code = f"""
import torch, torch.nn.functional as F
torch.set_num_threads({torch.get_num_threads()})
from urlk_forecast.ops import autotune, cpu_kernels, dwconv2d
def boom(*a, **k):
    raise SystemExit("measured")
autotune.measure = boom
ran = []
real = cpu_kernels.forward
cpu_kernels.forward = lambda *a, **k: (ran.append("own forward"), real(*a, **k))[1]
torch.manual_seed(0)
x = torch.randn({shape}, dtype=torch.float64, requires_grad=True)
w = torch.randn(8, 1, {k}, {k}, dtype=torch.float64, requires_grad=True)
xf, wf = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
y = dwconv2d(xf, wf)
gx, gw = torch.autograd.grad(y.sum(), (xf, wf))
r = F.conv2d(x, w, None, 1, 2, 1, 8)
rx, rw = torch.autograd.grad(r.sum(), (x, w))
err = max(((a.double() - b).norm() / b.norm()).item() for a, b in ((y, r), (gx, rx), (gw, rw)))
print(ran, autotune.choose_many(("forward", "grad_input", "grad_weight"), xf, wf, (2, 2, 2, 2), (1, 1)), err)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), autotune.TABLE_DIR_ENV: str(table_dir)}
    env.pop("URLK_DWCONV", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("['own forward'] ('own', 'torch', 'torch') "), out.stdout
    assert float(out.stdout.split()[-1]) < 1e-5, out.stdout


# ----------------------------------------------------------------------------------------------------- autocast
@pytest.mark.parametrize("impls", [("own", "own", "own"), ("torch", "torch", "torch"), ("own", "torch", "torch"),
                                   ("torch", "own", "own")])
def test_autocast_calls_are_planned_and_equal_conv2d_under_autocast(monkeypatch, impls):
    """Under torch.autocast("cpu", bfloat16) a call is decided once by the table's bfloat16 rows (the casts are
    the plan's), its result and gradients equal F.conv2d under the same autocast (dtypes included: a bf16 output,
    float32 gradients for float32 leaves), and the second call is one lookup; outside autocast the same tensors
    get their own plan."""
    no_measuring(monkeypatch)
    gen = torch.Generator().manual_seed(11)
    shape, k, dil = (2, 16, 6, 9), 5, 1
    pads = same_padding(k, dil)
    x0, g0 = torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)
    w0, b0 = torch.randn(16, 1, k, k, generator=gen) / k, torch.randn(16, generator=gen)
    write_table({key(shape, k, dil, torch.bfloat16): dict(zip(cpu_paths.DIRECTIONS, impls)),
                 key(shape, k, dil, torch.float32): dict.fromkeys(cpu_paths.DIRECTIONS, "own")})
    xr, wr, br = (t.clone().requires_grad_() for t in (x0, w0, b0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yr = F.conv2d(xr, wr, br, 1, (pads[0], pads[2]), dil, 16)
    want = (yr, *torch.autograd.grad(yr, (xr, wr, br), g0.bfloat16()))
    x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
    real_choose_many, real_choose = autotune.choose_many, dispatch._choose
    for attempt in range(2):
        if attempt == 1:
            monkeypatch.setattr(autotune, "choose_many", lambda *a, **k: pytest.fail("decided again"))
            monkeypatch.setattr(dispatch, "_choose", lambda *a, **k: pytest.fail("checked again"))
        spy = Spy(monkeypatch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = dwconv2d(x, w, b, dilation=dil)
        got = (y, *torch.autograd.grad(y, (x, w, b), g0.bfloat16()))
        assert [t.dtype for t in got] == [t.dtype for t in want] == [torch.bfloat16] + [torch.float32] * 3
        for a, r in zip(got, want):
            assert ((a.double() - r.double()).norm() / r.double().norm()).item() < 2e-2
        assert sorted(spy.log) == sorted(f"own {d}" for d, i in zip(cpu_paths.DIRECTIONS, impls) if i == "own")
    assert len(autotune.plans) == 1 and next(iter(autotune.plans))[-1] == torch.bfloat16
    # outside autocast: float32, decided by the float32 rows into a plan of its own
    monkeypatch.setattr(autotune, "choose_many", real_choose_many)
    monkeypatch.setattr(dispatch, "_choose", real_choose)
    spy = Spy(monkeypatch)
    with torch.no_grad():
        assert dwconv2d(x, w, b, dilation=dil).dtype == torch.float32
    assert spy.log == ["own forward"] and len(autotune.plans) == 2


def test_autocast_leaves_float64_alone_like_conv2d(monkeypatch):
    monkeypatch.setenv(autotune.TUNE_ENV, "0")
    gen = torch.Generator().manual_seed(12)
    x, w = torch.randn(2, 4, 7, 7, dtype=torch.float64, generator=gen), torch.randn(4, 1, 3, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(2):
            y = dwconv2d(x, w)
            r = F.conv2d(x, w, None, 1, 1, 1, 4)
            assert y.dtype == r.dtype == torch.float64
            torch.testing.assert_close(y, r, rtol=1e-12, atol=1e-12)
    assert len(autotune.plans) == 1


def test_own_forward_with_torch_gradients_is_one_backward_call_and_twice_differentiable(monkeypatch):
    """The plan 'own forward, every gradient on torch' runs its backward as one aten.convolution_backward call
    (the own kernels' backward never runs), and differentiating its gradient again equals F.conv2d's in float64."""
    no_measuring(monkeypatch)
    monkeypatch.setattr(reach, "crop", lambda *a: None)  # the plan of the full call (the crop: test_ops_reach.py)
    gen = torch.Generator().manual_seed(13)
    shape, k, dil = (3, 8, 2, 3), 13, 1
    pads = same_padding(k, dil)
    write_table({key(shape, k, dil, torch.float64): {"forward": "own", "grad_input": "torch",
                                                     "grad_weight": "torch"}})
    x0, w0 = torch.randn(*shape, dtype=torch.float64, generator=gen), torch.randn(8, 1, k, k, dtype=torch.float64)
    v = torch.randn(*shape, dtype=torch.float64, generator=gen)
    calls = []
    real = dispatch._conv_backward
    monkeypatch.setattr(dispatch, "_conv_backward", lambda *a: (calls.append(a[-1]), real(*a))[1])
    spy = Spy(monkeypatch)
    out = []
    for run in (lambda x, w: dwconv2d(x, w), lambda x, w: F.conv2d(x, w, None, 1, (pads[0], pads[2]), dil, 8)):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        y = run(x, w)
        gx, gw = torch.autograd.grad(y, (x, w), v, create_graph=True)
        out.append((y, gx, gw, *torch.autograd.grad((gx * v).sum() + (gw ** 2).sum(), (x, w))))
    assert type(out[0][0].grad_fn).__name__ == "_OwnForwardTorchGradsBackward"
    assert spy.log == ["own forward"] and calls == [[True, True, False]]
    for a, r in zip(*out):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


def test_nothing_is_timed_while_the_compile_helper_compiles(monkeypatch):
    """A stand-in for the kernels' compile helper (a process busy for ~1.5 s of CPU, then idle and alive, as the
    real one waits for requests): the table's first timed call starts only after it went idle, and a helper seen
    idle is not waited for again."""
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.5: pass\ntime.sleep(60)\n"
    helper = subprocess.Popen([sys.executable, "-c", code])
    try:
        monkeypatch.setattr(cpu_kernels, "_helper", helper)
        autotune._idle_seen.clear()
        busy_until = []
        real_clock = autotune._clock

        def clock(fn):
            if not busy_until:  # the first timed call: how much CPU has the helper used by now?
                busy_until.append(autotune._cpu_ticks(helper.pid) / os.sysconf("SC_CLK_TCK"))
            return real_clock(fn)

        monkeypatch.setattr(autotune, "_clock", clock)
        measure_tiny()
        assert helper.poll() is None  # still alive: the wait ended because it went idle
        assert busy_until[0] >= 1.4
        assert autotune.wait_for_compiles() == 0.0
    finally:
        helper.kill()
        helper.wait()
