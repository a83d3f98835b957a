"""``auto`` on CPU: the measured per-machine table decides each direction; file handling; overrides; numerics.

No timing is asserted: the measurement is replaced by injected timings or tables wherever a decision is checked.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from urlk_forecast.ops import (
    DWConv2d,
    autotune,
    calibrate,
    cpu_kernels,
    cpu_paths,
    dispatch,
    dwconv2d,
    reach,
    record_calls,
    same_padding,
    use_backend,
)


@pytest.fixture(autouse=True)
def table_dir(tmp_path, monkeypatch):
    """A private table directory (the compiled kernels stay where they are) and a fresh in-memory state."""
    monkeypatch.delenv("URLK_DWCONV", raising=False)
    monkeypatch.delenv(autotune.TUNE_ENV, raising=False)
    monkeypatch.setenv(autotune.TABLE_DIR_ENV, str(tmp_path))
    autotune.reset()
    yield tmp_path
    autotune.reset()


class Ran:
    """Records which implementation ran each direction (the real code still runs)."""

    def __init__(self, monkeypatch):
        self.log: list[tuple[str, str]] = []
        for name, what in (("forward", ("forward", "own")), ("backward", None)):
            real = getattr(cpu_kernels, name)

            def wrapped(*a, _real=real, _what=what, **k):
                if _what:
                    self.log.append(_what)
                else:
                    if k.get("need_input"):
                        self.log.append(("grad_input", "own"))
                    if k.get("need_weight"):
                        self.log.append(("grad_weight", "own"))
                return _real(*a, **k)

            monkeypatch.setattr(cpu_kernels, name, wrapped)
        for name, d in (("torch_forward", "forward"), ("torch_grad_input", "grad_input"),
                        ("torch_grad_weight", "grad_weight")):
            real = getattr(cpu_paths, name)

            def wrapped_t(*a, _real=real, _d=d, **k):
                self.log.append((_d, "torch"))
                return _real(*a, **k)

            monkeypatch.setattr(cpu_paths, name, wrapped_t)


def fake_measure(monkeypatch, times: dict[str, dict[str, float]]) -> list[tuple[str, tuple[int, ...]]]:
    """Replace the timing by fixed seconds per direction; returns the list of (direction, x shape) measured."""
    asked: list[tuple[str, tuple[int, ...]]] = []

    def measure(direction, x, w, pads, dil, gy=None):
        asked.append((direction, tuple(x.shape)))
        return dict(times[direction])

    monkeypatch.setattr(autotune, "measure", measure)
    return asked


def entry(impl: str) -> dict[str, object]:
    """A table entry choosing ``impl``, which its timings show 1 ms faster (so a plan keeps it: see
    ``autotune.choose_plan``)."""
    return {"impl": impl, "own_ms": 1.0 if impl == "own" else 2.0, "torch_ms": 2.0 if impl == "own" else 1.0}


def write_table(entries: dict[str, dict[str, str]]) -> str:
    """Write a table of this machine with the given decisions (key -> direction -> impl)."""
    path = autotune.table_path()
    data = {"format": autotune.FORMAT, "machine": autotune.machine_id(),
            "entries": {k: {d: entry(i) for d, i in v.items()}
                        for k, v in entries.items()}}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    autotune.reset()
    return path


def key_of(x: torch.Tensor, k: int, dil: int = 1) -> str:
    call = (tuple(x.shape), (k, k), same_padding(k, dil), (dil, dil))
    return autotune.bucket(call, x.dtype, torch.get_num_threads())


def grads(x, w, b, dil, path="auto"):
    with use_backend(path):
        y = dwconv2d(x, w, b, dilation=dil)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    return (y, *torch.autograd.grad(y, (x, w, b), g))


# ------------------------------------------------------------------------------------------------ decisions
@pytest.mark.parametrize("impls", list(itertools.product(("own", "torch"), repeat=3)))
def test_injected_table_decides_each_direction(monkeypatch, impls):
    """Every combination of (forward, grad-input, grad-weight) implementations runs as the table says, nothing is
    measured, and the results equal F.conv2d in float64."""
    asked = fake_measure(monkeypatch, {})
    x = torch.randn(3, 5, 7, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    write_table({key_of(x, 5): dict(zip(cpu_paths.DIRECTIONS, impls))})
    ran = Ran(monkeypatch)
    got = grads(x, w, b, 1)
    assert asked == []
    if impls == ("torch",) * 3:  # torch runs everything: plain F.conv2d, its backward is torch's autograd
        assert ran.log == [] and "Convolution" in type(got[0].grad_fn).__name__
    elif impls == ("own", "torch", "torch"):  # own forward; both gradients in one oneDNN call of a lean backward
        assert ran.log == [("forward", "own")] and "OwnForwardTorchGrads" in type(got[0].grad_fn).__name__
    else:
        assert sorted(ran.log) == sorted(zip(cpu_paths.DIRECTIONS, impls))
    ref = F.conv2d(x, w, b, 1, 2, 1, 5)
    want = (ref, *torch.autograd.grad(ref, (x, w, b), torch.randn(ref.shape, dtype=ref.dtype,
                                                                   generator=torch.Generator().manual_seed(1))))
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_missing_bucket_is_measured_once_faster_wins_and_cached(monkeypatch, table_dir):
    asked = fake_measure(monkeypatch, {"forward": {"own": 2e-3, "torch": 1e-3},
                                       "grad_input": {"own": 1e-3, "torch": 3e-3},
                                       "grad_weight": {"own": 5e-3, "torch": 4e-3}})
    x = torch.randn(6, 4, 8, 8, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, requires_grad=True)
    ran = Ran(monkeypatch)
    for _ in range(2):
        dwconv2d(x, w).sum().backward()
    assert sorted(asked) == sorted((d, (6, 4, 8, 8)) for d in cpu_paths.DIRECTIONS)  # once each
    assert ran.log[:3] == [("forward", "torch"), ("grad_input", "own"), ("grad_weight", "torch")] == ran.log[3:]
    data = json.loads(open(autotune.table_path(), encoding="utf-8").read())
    entry = data["entries"][key_of(x, 3)]
    assert {d: e["impl"] for d, e in entry.items()} == {"forward": "torch", "grad_input": "own",
                                                       "grad_weight": "torch"}
    assert entry["forward"]["own_ms"] == 2.0 and data["machine"] == autotune.machine_id()
    # the batch is bucketed by powers of two: 5..8 share the entry; a new process reads it without measuring
    autotune.reset()
    dwconv2d(torch.randn(5, 4, 8, 8, requires_grad=True), w).sum().backward()
    assert len(asked) == 3
    dwconv2d(torch.randn(9, 4, 8, 8), w.detach())
    assert asked[-1] == ("forward", (9, 4, 8, 8)) and len(asked) == 4


def test_refresh_remeasures_once_per_process(monkeypatch):
    asked = fake_measure(monkeypatch, {"forward": {"own": 1e-3, "torch": 2e-3}})
    x, w = torch.randn(2, 3, 6, 6), torch.randn(3, 1, 3, 3)
    dwconv2d(x, w)
    monkeypatch.setenv(autotune.TUNE_ENV, "refresh")
    autotune.reset()
    dwconv2d(x, w)
    dwconv2d(x, w)
    assert len(asked) == 2


def test_tuning_off_uses_the_fixed_rule_and_writes_nothing(monkeypatch, table_dir):
    asked = fake_measure(monkeypatch, {})
    monkeypatch.setenv(autotune.TUNE_ENV, "0")
    ran = Ran(monkeypatch)
    x = torch.randn(2, 3, 8, 10, requires_grad=True)
    w = torch.randn(3, 1, 5, 5, requires_grad=True)
    dwconv2d(x, w).sum().backward()  # small map: oneDNN forward, own backward
    big = torch.randn(1, 3, 20, 20)
    dwconv2d(big, w)
    assert asked == [] and os.listdir(table_dir) == []
    assert ran.log == [("forward", "torch"), ("grad_input", "own"), ("grad_weight", "own"), ("forward", "own")]
    assert autotune.static_choice("forward", (1, 1, 3, 4), (13, 13), same_padding(13)) == "own"  # pad > map
    monkeypatch.setenv(autotune.TUNE_ENV, "sometimes")
    with pytest.raises(ValueError, match=autotune.TUNE_ENV):
        dwconv2d(big, w)


def test_explicit_backend_wins_over_the_table(monkeypatch):
    asked = fake_measure(monkeypatch, {})
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, requires_grad=True)
    write_table({key_of(x, 3): dict.fromkeys(cpu_paths.DIRECTIONS, "torch")})
    ran = Ran(monkeypatch)
    with use_backend("own"):
        dwconv2d(x, w).sum().backward()
    assert ran.log == [("forward", "own"), ("grad_input", "own"), ("grad_weight", "own")]
    write_table({key_of(x, 3): dict.fromkeys(cpu_paths.DIRECTIONS, "own")})
    ran.log.clear()
    monkeypatch.setenv("URLK_DWCONV", "torch")
    dwconv2d(x, w).sum().backward()
    assert ran.log == [("forward", "torch")] and asked == []  # torch's own autograd: no wrapper, no table


def test_all_torch_runs_plain_conv2d_autograd(monkeypatch):
    """When torch runs every direction the call needs, the op is F.conv2d with torch's autograd (no wrapper)."""
    fake_measure(monkeypatch, {})
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, requires_grad=True)
    write_table({key_of(x, 3): {"forward": "torch", "grad_input": "torch", "grad_weight": "own"}})
    assert "Convolution" not in type(dwconv2d(x, w).grad_fn).__name__  # grad-weight on own: the wrapper
    assert "Convolution" not in type(dwconv2d(x.detach(), w).grad_fn).__name__
    y = dwconv2d(x, w.detach())  # no weight gradient needed: forward and grad-input are torch's
    assert "Convolution" in type(y.grad_fn).__name__
    torch.testing.assert_close(torch.autograd.grad(y.sum(), x)[0],
                               torch.autograd.grad(F.conv2d(x, w, None, 1, 1, 1, 3).sum(), x)[0])
    assert len(autotune.plans) == 3  # one plan per gradient need: the next such call is one lookup
    assert "Convolution" in type(dwconv2d(x, w.detach()).grad_fn).__name__
    write_table({key_of(x, 3): {"forward": "own", "grad_input": "torch", "grad_weight": "own"}})  # resets the plans
    assert autotune.plans == {}
    ran = Ran(monkeypatch)
    dwconv2d(x, w.detach())
    assert ran.log == [("forward", "own")] and len(autotune.plans) == 1


# ------------------------------------------------------------------------------------------------ plan cost
def write_timed_table(entries: dict[str, dict[str, tuple[float, float]]], cost_us: float | None = None) -> str:
    """A table of this machine whose entries hold (own ms, torch ms) per direction (the faster decides, as a
    measured table would) and, unless None, the autograd function's cost at this thread count."""
    path = autotune.table_path()
    data = {"format": autotune.FORMAT, "machine": autotune.machine_id(),
            "entries": {k: {d: {"impl": "own" if o <= t else "torch", "own_ms": o, "torch_ms": t}
                            for d, (o, t) in v.items()} for k, v in entries.items()},
            "costs": {} if cost_us is None else {cost_key(): cost_us * 1e-6}}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    autotune.reset()
    return path


def cost_key() -> str:
    return f"{dispatch.WRAPPER_COST}|t{torch.get_num_threads()}"


def no_probe(monkeypatch) -> list[int]:
    """Count calls of the autograd function's cost probe (which returns 40 us instead of timing anything)."""
    calls: list[int] = []
    monkeypatch.setattr(dispatch, "measure_wrapper_cost", lambda *a, **k: (calls.append(1), 40e-6)[1])
    return calls


def reference(x, w, b, pads=1, dil=1):
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = F.conv2d(xr, wr, br, 1, pads, dil, x.shape[1])
    g = torch.randn(ref.shape, dtype=ref.dtype, generator=torch.Generator().manual_seed(1))
    return (ref, *torch.autograd.grad(ref, (xr, wr, br), g))


# the tiny call of the benchmark's --overhead (1x8x6x6, K=3): oneDNN faster in the forward and the grad-input, the
# own grad-weight 15 us faster than oneDNN's (the re-measured table of the 23:09 run)
TINY = {"forward": (0.060, 0.050), "grad_input": (0.070, 0.060), "grad_weight": (0.078, 0.093)}


@pytest.mark.parametrize(("cost_us", "mixed"), [(25.0, False), (10.0, True)])
def test_plan_goes_all_torch_when_own_saves_less_than_the_autograd_function(monkeypatch, cost_us, mixed):
    """An own grad-weight saving 15 us is not worth an autograd function costing 25 us: the call runs plain
    F.conv2d (torch's own node, no own kernel); at 10 us it is. Gradients equal float64 F.conv2d either way."""
    asked, probed = fake_measure(monkeypatch, {}), no_probe(monkeypatch)
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, requires_grad=True)
    write_timed_table({key_of(x, 3): TINY}, cost_us)
    ran = Ran(monkeypatch)
    got = grads(x, w, b, 1)
    assert asked == [] and probed == []
    if mixed:
        assert sorted(ran.log) == [("forward", "torch"), ("grad_input", "torch"), ("grad_weight", "own")]
        assert "Convolution" not in type(got[0].grad_fn).__name__
    else:
        assert ran.log == [] and "Convolution" in type(got[0].grad_fn).__name__
    for g, r in zip(got, reference(x, w, b)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_plan_charge_spares_own_forwards_and_large_savings(monkeypatch):
    """No gradient: the own forward runs without an autograd function, so a 1-us saving keeps it whatever the
    cost; an own forward saving 1 ms keeps the lean plan (own forward, torch gradients) under a 300-us cost."""
    fake_measure(monkeypatch, {})
    no_probe(monkeypatch)
    monkeypatch.setattr(reach, "crop", lambda *a: None)  # the plan of the full call (the crop: test_ops_reach.py)
    x = torch.randn(2, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 1, 13, 13, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    timings = {"forward": (0.100, 1.100), "grad_input": (0.300, 0.200), "grad_weight": (0.300, 0.200)}
    write_timed_table({key_of(x, 13): timings}, 300.0)
    ran = Ran(monkeypatch)
    got = grads(x, w, b, 1)
    assert ran.log == [("forward", "own")] and "OwnForwardTorchGrads" in type(got[0].grad_fn).__name__
    for g, r in zip(got, reference(x, w, b, 6)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
    write_timed_table({key_of(x, 13): {"forward": (0.100, 0.101)}}, 1e6)
    ran.log.clear()
    with torch.no_grad():
        y = dwconv2d(x, w, b)
    assert ran.log == [("forward", "own")]
    torch.testing.assert_close(y, reference(x, w, b, 6)[0], rtol=1e-10, atol=1e-10)


def test_autograd_function_cost_is_measured_once_per_machine_and_only_when_it_matters(monkeypatch, table_dir):
    fake_measure(monkeypatch, {})
    probed = no_probe(monkeypatch)
    x = torch.randn(1, 8, 6, 6, requires_grad=True)
    w = torch.randn(8, 1, 3, 3, requires_grad=True)
    # savings over the cap, or entries without timings (written by hand): the cost is not needed
    write_timed_table({key_of(x, 3): {**TINY, "grad_weight": (0.078, 1.093)}})
    dwconv2d(x, w).sum().backward()
    write_table({key_of(x, 3): {"forward": "torch", "grad_input": "torch", "grad_weight": "own"}})
    data = json.loads(open(autotune.table_path(), encoding="utf-8").read())
    for e in data["entries"].values():
        for d in e.values():
            d.pop("own_ms"), d.pop("torch_ms")
    with open(autotune.table_path(), "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    autotune.reset()
    dwconv2d(x, w).sum().backward()
    assert probed == []
    # a 15-us saving: measured once (40 us: all torch), stored per thread count, read by a new process
    write_timed_table({key_of(x, 3): TINY})
    assert "Convolution" in type(dwconv2d(x, w).grad_fn).__name__
    assert "Convolution" in type(dwconv2d(x.detach(), w).grad_fn).__name__  # another plan: the stored cost
    assert probed == [1]
    costs = json.loads(open(autotune.table_path(), encoding="utf-8").read())["costs"]
    assert costs == {cost_key(): pytest.approx(40e-6)}
    autotune.reset()
    dwconv2d(x, w)
    assert probed == [1]
    monkeypatch.setenv(autotune.TUNE_ENV, "refresh")  # re-measured once per process (with the whole table)
    autotune.reset()
    monkeypatch.setattr(autotune, "measure", lambda d, *a, **k: {"own": TINY[d][0] * 1e-3, "torch": TINY[d][1] * 1e-3})
    dwconv2d(x, w)
    dwconv2d(x.detach(), w)  # the same process: the cost it measured
    assert probed == [1, 1]


def test_malformed_costs_are_ignored_with_a_warning(monkeypatch, caplog):
    fake_measure(monkeypatch, {"forward": {"own": 3e-3, "torch": 2e-3}})
    path = write_timed_table({})
    data = json.loads(open(path, encoding="utf-8").read())
    data["costs"] = {cost_key(): -1.0}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    autotune.reset()
    with caplog.at_level(logging.WARNING, logger="urlk_forecast.ops"):
        dwconv2d(torch.randn(2, 3, 6, 6), torch.randn(3, 1, 3, 3))
    assert any("malformed costs" in r.getMessage() for r in caplog.records)


def test_the_cost_probe_runs_both_paths_and_leaves_no_trace():
    """The real probe (no value asserted: timings are the benchmark's business): a finite number of seconds, no
    plan kept, no table entry written, grad mode and autocast as they were."""
    with torch.no_grad():
        v = dispatch.measure_wrapper_cost(blocks=3, calls=2)
        assert not torch.is_grad_enabled()
    assert isinstance(v, float) and v == v and abs(v) < 1.0
    assert autotune.plans == {}
    assert not os.path.exists(autotune.table_path())


# ------------------------------------------------------------------------------------------------ numerics
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("shape", "k", "dil", "padding"), [
    ((3, 16, 8, 12), 13, 1, None),
    ((2, 20, 2, 3), 3, 5, None),  # dilated kernel reaching past the whole map
    ((2, 5, 9, 10), 4, 1, "same"),  # even kernel: asymmetric padding
    ((2, 4, 7, 9), 5, 2, (1, 3, 2, 0)),
])
def test_auto_matches_conv2d_on_every_mix_of_paths(monkeypatch, dtype, shape, k, dil, padding):
    """Forward and both gradients of auto, for the measured choice and for every forced mix, equal F.conv2d."""
    gen = torch.Generator().manual_seed(0)
    x64 = torch.randn(*shape, dtype=torch.float64, generator=gen)
    w64 = torch.randn(shape[1], 1, k, k, dtype=torch.float64, generator=gen)
    pads = same_padding(k, dil) if padding in (None, "same") else padding
    xr, wr = x64.clone().requires_grad_(), w64.clone().requires_grad_()
    ref = F.conv2d(F.pad(xr, (pads[2], pads[3], pads[0], pads[1])), wr, None, 1, 0, dil, shape[1])
    g = torch.randn(ref.shape, dtype=torch.float64, generator=gen)
    want = (ref, *torch.autograd.grad(ref, (xr, wr), g))
    x, w = x64.to(dtype).requires_grad_(), w64.to(dtype).requires_grad_()
    call = (tuple(shape), (k, k), tuple(pads), (dil, dil))
    key = autotune.bucket(call, dtype, torch.get_num_threads())
    tables = [None] + [dict(zip(cpu_paths.DIRECTIONS, m)) for m in itertools.product(("own", "torch"), repeat=3)]
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for table in tables:
        if table is not None:
            write_table({key: table})
        y = dwconv2d(x, w, None, padding, dil)
        got = (y, *torch.autograd.grad(y, (x, w), g.to(dtype)))
        for a, b in zip(got, want):
            err = (a.double() - b).norm() / b.norm()
            assert err < tol, (table, err)


def test_measure_is_bounded_and_leaves_no_trace(monkeypatch):
    """A real measurement: both paths timed on at most WORK_CAP multiply-adds of the batch, the global RNG and
    the inputs untouched, gradients not accumulated."""
    monkeypatch.setattr(autotune, "WORK_CAP", 3 * 4 * 6 * 6 * 9)  # three samples' worth
    sizes = []
    real = cpu_paths.compute
    monkeypatch.setattr(cpu_paths, "compute", lambda d, i, x, *a, **k: (sizes.append(x.shape[0]), real(d, i, x, *a,
                                                                                                         **k))[1])
    x = torch.randn(10, 4, 6, 6, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, requires_grad=True)
    x0, state = x.detach().clone(), torch.get_rng_state()
    for d in cpu_paths.DIRECTIONS:
        t = autotune.measure(d, x, w, same_padding(3), (1, 1))
        assert set(t) == {"own", "torch"} and all(v > 0 for v in t.values())
    assert set(sizes) == {3} and len(sizes) >= 12  # warm-up + timed call, both paths, three directions
    assert torch.equal(torch.get_rng_state(), state) and torch.equal(x.detach(), x0)
    assert x.grad is None and w.grad is None


@pytest.mark.parametrize("small", [True, False])
def test_measure_warms_each_path_up_on_the_timed_batch_before_timing(monkeypatch, small):
    """oneDNN creates a primitive per batch size and its first calls at a new size are slow (measured 6.2, 2.3, 0.9,
    then 0.6 ms), so below WARMUP_WORK each path runs WARMUP_CALLS times on the timed batch before the first timed
    pair; above it, on one sample (compilation and primitive kinds), and the timed calls follow."""
    if not small:
        monkeypatch.setattr(autotune, "WARMUP_WORK", 1)
    calls: list[tuple[str, int]] = []
    real = cpu_paths.compute
    me = threading.get_ident()

    def spy(d, i, x, *a, **k):  # this thread's calls of this shape only (compile-ahead work may run beside it)
        if threading.get_ident() == me and tuple(x.shape[1:]) == (3, 7, 7):
            calls.append((i, x.shape[0]))
        return real(d, i, x, *a, **k)

    monkeypatch.setattr(cpu_paths, "compute", spy)
    x, w = torch.randn(5, 3, 7, 7), torch.randn(3, 1, 3, 3)
    autotune.measure("forward", x, w, same_padding(3), (1, 1))
    n = autotune.WARMUP_CALLS
    assert n >= 2
    warm = calls[: 2 * n]
    assert sorted(i for i, _ in warm) == sorted(["own"] * n + ["torch"] * n), calls
    assert {b for _, b in warm} == ({5} if small else {1}), calls
    assert {b for _, b in calls[2 * n:]} == {5} and len(calls) >= 2 * n + 4, calls  # two timed pairs at least


def test_measure_times_each_side_as_often_after_itself_as_after_the_other(monkeypatch):
    """What ran just before moves a call's time (measured: own 4.5 ms right after torch, 2.2 ms right after own on
    float32 8x40x56x56 K=3 grad-input). A scripted clock with that context dependence: every stopping point is
    balanced, and the medians pick own, the faster on average over both contexts (three pairs picked torch)."""
    per = {("own", "torch"): 4.5e-3, ("own", "own"): 2.2e-3, ("torch", "own"): 3.9e-3, ("torch", "torch"): 3.6e-3}
    seen: list[tuple[str, str]] = []

    def clock(fn):
        impl = fn.args[1]
        prev = seen[-1][0] if seen else "torch"  # the warm-up runs own, then torch
        seen.append((impl, prev))
        return per[(impl, prev)]

    monkeypatch.setattr(autotune, "_clock", clock)
    x, w = torch.randn(2, 3, 5, 5), torch.randn(3, 1, 3, 3)
    t = autotune.measure("grad_input", x, w, same_padding(3), (1, 1))
    assert len(seen) == 2 * autotune.MAX_REPEATS and min(t, key=t.__getitem__) == "own"  # a near tie: all pairs
    for impl in cpu_paths.IMPLS:
        after = [p for i, p in seen if i == impl]
        assert after.count("own") == after.count("torch"), (impl, after)
    per.update({("torch", "own"): 9e-3, ("torch", "torch"): 8e-3})  # apart: stops at MIN_REPEATS, still balanced
    seen.clear()
    autotune.measure("grad_input", x, w, same_padding(3), (1, 1))
    assert len(seen) == 2 * autotune.MIN_REPEATS and autotune.MIN_REPEATS % 2 == 0
    assert [p for i, p in seen if i == "own"].count("own") == autotune.MIN_REPEATS // 2


# ------------------------------------------------------------------------------------------------ the file
def test_table_is_keyed_per_machine_and_foreign_tables_are_ignored(monkeypatch, caplog):
    fake_measure(monkeypatch, {"forward": {"own": 1e-3, "torch": 2e-3}})
    here = autotune.table_path()
    assert os.path.basename(here).startswith("dispatch-") and here.endswith(".json")
    real = autotune._cpu_description
    monkeypatch.setattr(autotune, "_cpu_description", lambda: ("Other CPU", real()[1]))
    other = autotune.table_path()
    monkeypatch.setattr(autotune, "_cpu_description", lambda: (real()[0], "0" * 16))  # other instruction set
    assert len({here, other, autotune.table_path()}) == 3
    monkeypatch.setattr(autotune, "_cpu_description", real)
    data = {"format": autotune.FORMAT, "machine": {**autotune.machine_id(), "cpu": "Other CPU"},
            "entries": {"float32|b2|c3|6x6|k3x3|p1,1,1,1|d1,1|t1": {"forward": {"impl": "torch"}}}}
    with open(here, "w", encoding="utf-8") as fh:  # a file copied from another machine under this name
        json.dump(data, fh)
    autotune.reset()
    with caplog.at_level(logging.WARNING, logger="urlk_forecast.ops"):
        dwconv2d(torch.randn(2, 3, 6, 6), torch.randn(3, 1, 3, 3))
    assert any("another machine" in r.getMessage() for r in caplog.records)
    assert json.loads(open(here, encoding="utf-8").read())["machine"] == autotune.machine_id()


@pytest.mark.parametrize("content", ["{not json", '{"format": 1, "machine": {}, "entries": []}', "[1, 2]",
                                     '{"format": 1, "entries": {"k": {"forward": {"impl": "cudnn"}}}}'])
def test_corrupt_table_is_ignored_with_a_warning_and_rebuilt(monkeypatch, caplog, content):
    asked = fake_measure(monkeypatch, {"forward": {"own": 3e-3, "torch": 2e-3}})
    path = autotune.table_path()
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(content)
    autotune.reset()
    x, w = torch.randn(2, 3, 6, 6), torch.randn(3, 1, 3, 3)
    with caplog.at_level(logging.WARNING, logger="urlk_forecast.ops"):
        y = dwconv2d(x, w)
    assert any(path in r.getMessage() and "ignoring" in r.getMessage() for r in caplog.records)
    assert asked == [("forward", (2, 3, 6, 6))]
    torch.testing.assert_close(y, F.conv2d(x, w, None, 1, 1, 1, 3))
    data = json.loads(open(path, encoding="utf-8").read())  # rebuilt: a valid table with the new entry
    assert data["entries"][key_of(x, 3)]["forward"]["impl"] == "torch"


def test_table_writes_are_atomic_and_merge_other_processes(monkeypatch, caplog, table_dir):
    fake_measure(monkeypatch, {"forward": {"own": 1e-3, "torch": 2e-3}})
    x, w = torch.randn(2, 3, 6, 6), torch.randn(3, 1, 3, 3)
    dwconv2d(x, w)
    path = autotune.table_path()
    before = open(path, encoding="utf-8").read()
    # another process adds an entry meanwhile: our next write keeps it
    data = json.loads(before)
    data["entries"]["float32|b1|c9|9x9|k3x3|p1,1,1,1|d1,1|t1"] = {"grad_weight": {"impl": "torch"}}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    dwconv2d(torch.randn(2, 3, 7, 7), w)
    merged = json.loads(open(path, encoding="utf-8").read())["entries"]
    assert "float32|b1|c9|9x9|k3x3|p1,1,1,1|d1,1|t1" in merged and key_of(x, 3) in merged and len(merged) == 3
    # a write that fails at the final rename leaves the old file whole and no temporary file behind
    before = open(path, encoding="utf-8").read()

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m, caplog.at_level(logging.WARNING, logger="urlk_forecast.ops"):
        m.setattr("urlk_forecast.utils.atomic.os.replace", fail)
        y = dwconv2d(torch.randn(2, 3, 8, 8), w)
    assert y.shape == (2, 3, 8, 8) and any("cannot write" in r.getMessage() for r in caplog.records)
    assert open(path, encoding="utf-8").read() == before
    assert sorted(os.listdir(table_dir)) == [os.path.basename(path)]


# ------------------------------------------------------------------------------------------------ calibration
def test_record_calls_and_calibrate(monkeypatch):
    asked = fake_measure(monkeypatch, {"forward": {"own": 1e-3, "torch": 2e-3},
                                       "grad_input": {"own": 2e-3, "torch": 1e-3},
                                       "grad_weight": {"own": 1e-3, "torch": 2e-3}})
    net = nn.Sequential(DWConv2d(4, 5), DWConv2d(4, 3, dilation=2), DWConv2d(4, 5))
    with torch.no_grad(), use_backend("own"), record_calls() as calls:
        net(torch.randn(2, 4, 9, 11))
    assert calls == [((2, 4, 9, 11), (5, 5), (2, 2, 2, 2), (1, 1)), ((2, 4, 9, 11), (3, 3), (2, 2, 2, 2), (2, 2))]
    assert asked == []
    rows = calibrate(calls)
    assert [(r["direction"], r["impl"]) for r in rows[:3]] == [("forward", "own"), ("grad_input", "torch"),
                                                              ("grad_weight", "own")]
    assert len(rows) == 6 and len(asked) == 6
    calibrate(calls)  # cached: nothing re-measured
    assert len(asked) == 6
    calibrate(calls[:1], refresh=True)
    assert len(asked) == 9


def test_a_machine_constant_is_measured_once_per_machine_and_shared():
    """The first call measures and stores; later calls, and another process reading the same file (a fresh table
    object), use the stored value without measuring; a value another process stored first wins over measuring."""
    calls = []

    def probe():
        calls.append(1)
        return 0.75

    assert autotune.machine_constant("probe_ratio", probe) == 0.75 and len(calls) == 1
    assert autotune.machine_constant("probe_ratio", probe) == 0.75 and len(calls) == 1
    autotune.reset()  # a new process: the table is read back from the file
    assert autotune.machine_constant("probe_ratio", lambda: 9.0) == 0.75
    data = json.loads(open(autotune.table_path()).read())
    assert data["costs"][f"probe_ratio|t{torch.get_num_threads()}"] == 0.75
    # another process wrote "other" after this one opened the table: its value is adopted, nothing is measured
    table = autotune._table()
    data["costs"][f"other|t{torch.get_num_threads()}"] = 2.5
    open(autotune.table_path(), "w").write(json.dumps(data))
    assert autotune._table() is table and autotune.machine_constant("other", lambda: 9.0) == 2.5
