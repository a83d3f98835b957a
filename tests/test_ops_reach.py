"""A kernel that reaches past the map runs cropped (ops/reach.py): same outputs and gradients as the full call."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from urlk_forecast.ops import autotune, dwconv2d, reach, record_calls, use_backend
from urlk_forecast.ops import dispatch as dispatch_mod


def _conv(x: torch.Tensor, w: torch.Tensor, pads: tuple[int, int, int, int], dil: tuple[int, int]) -> torch.Tensor:
    t, b, l, r = pads
    return F.conv2d(F.pad(x, (l, r, t, b)), w, None, 1, 0, dil, x.shape[1])


def _touching_taps(size: int, k: int, lo: int, hi: int, d: int) -> list[int]:
    """Reference: the taps whose one-hot kernel gives a non-zero output on an all-ones input (F.conv2d)."""
    x = torch.ones(1, 1, 1, size, dtype=torch.float64)
    used = []
    for i in range(k):
        w = torch.zeros(1, 1, 1, k, dtype=torch.float64)
        w[..., i] = 1
        if _conv(x, w, (0, 0, lo, hi), (1, d)).abs().sum() > 0:
            used.append(i)
    return used


@pytest.mark.parametrize("size,k,d", [(2, 13, 1), (3, 13, 1), (4, 13, 1), (6, 13, 1), (7, 13, 1), (2, 5, 3),
                                      (4, 5, 3), (6, 7, 2), (1, 3, 1), (3, 4, 1), (5, 6, 2), (16, 13, 1)])
def test_used_taps_match_a_brute_force_search(size: int, k: int, d: int) -> None:
    for lo, hi in itertools.product(range(0, d * (k - 1) + 1, max(1, d * (k - 1) // 4)), repeat=2):
        if size + lo + hi - d * (k - 1) < 1:
            assert reach.used_taps(size, k, lo, hi, d) is None
            continue
        ref = _touching_taps(size, k, lo, hi, d)
        got = reach.used_taps(size, k, lo, hi, d)
        assert got == ((ref[0], ref[-1]) if ref else None), (size, k, lo, hi, d)
        assert ref == list(range(ref[0], ref[-1] + 1)) if ref else True  # a contiguous range


CASES = [((2, 3), (13, 13), (1, 1)), ((4, 6), (13, 13), (1, 1)), ((4, 6), (5, 5), (3, 3)), ((2, 3), (7, 7), (2, 2)),
         ((1, 5), (3, 9), (1, 1)), ((3, 3), (4, 6), (1, 1)), ((5, 3), (7, 3), (2, 1))]


@pytest.mark.parametrize("hw,k,dil", CASES)
@pytest.mark.parametrize("kind", ["same", "asymmetric"])
def test_cropped_call_equals_the_full_call(hw, k, dil, kind) -> None:
    gen = torch.Generator().manual_seed(sum(hw) + sum(k))
    th, tw = dil[0] * (k[0] - 1), dil[1] * (k[1] - 1)
    if kind == "same":
        pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    else:
        pads = (th, max(0, th - 1 - hw[0]), max(0, tw - hw[1]), tw // 3)
    cut = reach.crop(hw, k, pads, dil)
    assert cut is not None
    (rows, cols), new_pads = cut
    assert (rows.stop - rows.start) * (cols.stop - cols.start) < k[0] * k[1]
    x = torch.randn(2, 3, *hw, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(3, 1, *k, dtype=torch.float64, generator=gen, requires_grad=True)
    y = _conv(x, w, pads, dil)
    yc = _conv(x, w[:, :, rows, cols], new_pads, dil)
    assert yc.shape == y.shape
    torch.testing.assert_close(yc, y, rtol=0, atol=1e-12)
    gy = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), gy)
    gxc, gwc = torch.autograd.grad(yc, (x, w), gy)
    torch.testing.assert_close(gxc, gx, rtol=0, atol=1e-12)
    torch.testing.assert_close(gwc, gw, rtol=0, atol=1e-12)  # the cut taps: zero in both
    outside = torch.ones_like(gw, dtype=torch.bool)
    outside[:, :, rows, cols] = False
    assert gw[outside].abs().max() == 0


def test_nothing_to_crop_when_every_tap_touches_data() -> None:
    assert reach.crop((16, 24), (13, 13), (6, 6, 6, 6), (1, 1)) is None
    assert reach.crop((7, 7), (13, 13), (6, 6, 6, 6), (1, 1)) is None  # the backbone's 7x7 stage: 13 taps all used
    assert reach.cropped_call(((1, 8, 7, 7), (13, 13), (6, 6, 6, 6), (1, 1))) == (
        (1, 8, 7, 7), (13, 13), (6, 6, 6, 6), (1, 1))
    assert reach.cropped_call(((1, 8, 2, 3), (13, 13), (6, 6, 6, 6), (1, 1))) == (
        (1, 8, 2, 3), (3, 5), (1, 1, 2, 2), (1, 1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("pays", [True, False])
def test_auto_runs_the_cropped_call_with_the_full_calls_results(monkeypatch, dtype, needs, pays) -> None:
    asked = []
    monkeypatch.setattr(autotune, "crop_pays", lambda dirs, *a: asked.append(dirs) or pays)
    autotune.plans.clear()
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, 16, 2, 3, generator=gen).to(dtype)
    w0 = torch.randn(16, 1, 13, 13, generator=gen).to(dtype)
    b0 = torch.randn(16, generator=gen).to(dtype)
    outs = {}
    for backend in ("torch", "auto"):
        x, w, b = (t.clone().requires_grad_(n) for t, n in zip((x0, w0, b0), (*needs, True)))
        with use_backend(backend), record_calls() as calls:
            y = dwconv2d(x, w, b)
        y.float().square().sum().backward()
        outs[backend] = (y, x.grad, w.grad, b.grad)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    for ref, got in zip(outs["torch"], outs["auto"]):
        if ref is None:
            assert got is None
        else:
            torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=tol * 10)
    if needs[1]:
        assert outs["auto"][2][..., :5, :].abs().max() == 0  # rows 0-4 never touch a 2-row map
    assert calls == [((4, 16, 2, 3), (13, 13), (6, 6, 6, 6), (1, 1))]  # the caller's call is what is recorded
    plan = next(p for k, p in autotune.plans.items() if k[1] == x0.shape and k[3] == dtype and k[0] == "auto")
    assert asked == [("forward",) + ("grad_input",) * needs[0] + ("grad_weight",) * needs[1]]
    cropped = getattr(plan, "func", None) is dispatch_mod._cropped
    assert cropped == pays and (not pays or plan.args[2] == (1, 1, 2, 2))


def _timed_table(entries: dict[tuple, dict[str, tuple[float, float]]], dtype: torch.dtype) -> None:
    """This machine's table with (own ms, torch ms) per call and direction."""
    data = {"format": autotune.FORMAT, "machine": autotune.machine_id(), "costs": {},
            "entries": {autotune.bucket(call, dtype, torch.get_num_threads()): {
                d: {"impl": "own" if o <= t else "torch", "own_ms": o, "torch_ms": t} for d, (o, t) in v.items()}
                for call, v in entries.items()}}
    with open(autotune.table_path(), "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    autotune.reset()


@pytest.mark.parametrize(("full", "cut", "cost_ms", "pays"), [
    ({"forward": (0.5, 0.9)}, {"forward": (0.6, 0.2)}, 0.01, True),  # best 0.5 -> 0.2 + 0.01
    ({"forward": (0.5, 0.9)}, {"forward": (0.6, 0.7)}, 0.01, False),  # the cropped call is slower
    ({"forward": (0.5, 0.9)}, {"forward": (0.3, 0.7)}, 0.25, False),  # faster, but not by the crop's cost
    ({"forward": (0.5, 0.9), "grad_input": (0.4, 0.3)}, {"forward": (0.45, 0.7), "grad_input": (0.2, 0.5)}, 0.01,
     True),  # 0.8 -> 0.65 over both directions
    ({"forward": (0.5, 0.9), "grad_input": (0.4, 0.3)}, {"forward": (0.1, 0.7), "grad_input": (0.9, 0.8)}, 0.01,
     False),  # the forward gains 0.4, the gradient loses 0.5
])
def test_crop_pays_when_the_tables_timings_say_so(monkeypatch, tmp_path, full, cut, cost_ms, pays) -> None:
    monkeypatch.setenv(autotune.TABLE_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(autotune.TUNE_ENV, raising=False)
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("the table decides; nothing is measured"))
    x, w = torch.randn(2, 8, 2, 3), torch.randn(8, 1, 13, 13)
    call = ((2, 8, 2, 3), (13, 13), (6, 6, 6, 6), (1, 1))
    cut_call = reach.cropped_call(call)
    _timed_table({call: full, cut_call: cut}, torch.float32)
    wc = w[:, :, 5:8, 4:9].contiguous()
    try:
        dirs = tuple(full)
        assert autotune.crop_pays(dirs, x, w, call[2], wc, cut_call[2], (1, 1), lambda: cost_ms * 1e-3) == pays
        monkeypatch.setenv(autotune.TUNE_ENV, "0")  # the fixed rule: fewer taps
        assert autotune.crop_pays(dirs, x, w, call[2], wc, cut_call[2], (1, 1), lambda: 1.0)
    finally:
        autotune.reset()


def test_the_crops_cost_is_measured_and_small() -> None:
    v = dispatch_mod.measure_crop_cost(blocks=3, calls=5)
    assert isinstance(v, float) and abs(v) < 2e-3  # a slice, a copy and their gradients: microseconds


def test_forced_paths_stay_literal(monkeypatch) -> None:
    x = torch.randn(1, 4, 2, 3)
    w = torch.randn(4, 1, 13, 13)
    seen = []
    real = dispatch_mod._cpu_plan
    monkeypatch.setattr(dispatch_mod, "_cpu_plan", lambda backend, x, w, *a: seen.append(tuple(w.shape)) or real(
        backend, x, w, *a))
    monkeypatch.setattr(autotune, "crop_pays", lambda *a: True)
    autotune.plans.clear()
    with use_backend("own"):
        dwconv2d(x, w)
    assert seen == [(4, 1, 13, 13)]
    with use_backend("auto"):
        dwconv2d(x, w)
    assert seen[-1] == (4, 1, 3, 5)
