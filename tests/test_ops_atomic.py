"""Work sharing of the small-map kernels: the atomic counter, two threads on one call, and a thread that comes
late (urlk_forecast.ops.cpu_atomic, cpu_small._run_shared)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numba import njit

from urlk_forecast.ops import cpu_atomic, cpu_small, same_padding


@njit(nogil=True)
def _hammer(st, n):  # pragma: no cover - compiled
    last = np.int64(-1)
    for _ in range(n):
        last = cpu_atomic.fetch_add(st, cpu_atomic.COUNT, 1)
    return last


def test_fetch_add_is_atomic_across_threads():
    """Two threads adding 1 a million times each lose no increment; each add returns the value before it."""
    st = cpu_atomic.state()
    _hammer(st, 1)
    assert st[cpu_atomic.COUNT] == 1 and st.sum() == 1
    n = 1_000_000
    threads = [threading.Thread(target=_hammer, args=(st, n)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert st[cpu_atomic.COUNT] == 2 * n + 1 and st.sum() == 2 * n + 1
    assert _hammer(st, 1) == 2 * n + 1


def _forward_args(x, w, bias, y, g, st):
    P, C = x.shape[0] * x.shape[1], x.shape[1]
    return ((x.view(-1).numpy(), w.view(-1).numpy(), bias.numpy(), True, y.view(-1).numpy(), C)
            + cpu_small._steps(g, False) + (0, P, st, np.float32(0)))


@pytest.fixture()
def case():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(40, 6, 8, 12, generator=gen)
    w = torch.randn(6, 1, 13, 13, generator=gen)
    bias = torch.randn(6, generator=gen)
    pads = same_padding(13, 1)
    g = cpu_small.geometry(x, w, pads, (1, 1))
    assert g is not None
    ref = F.conv2d(x.double(), w.double(), bias.double(), 1, 6, 1, 6)
    return x, w, bias, g, ref


def test_two_threads_share_one_call(case, monkeypatch):
    """On two threads every plane is written once, by the same code as on one: bit-identical to the one-thread
    result and float64-close to torch's conv; both threads counted themselves in and out."""
    x, w, bias, g, ref = case
    monkeypatch.setattr(cpu_small, "MIN_FWD_WORK_PER_THREAD", 1)  # the pool's threshold, and the team's
    monkeypatch.setattr(cpu_small, "MIN_FWD_WORK_PER_THREAD_TEAM", 1)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_small.forward(x, w, bias, g)
        torch.set_num_threads(2)
        for _ in range(20):  # the threads race for the planes differently each time
            assert torch.equal(cpu_small.forward(x, w, bias, g), one)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(one.double(), ref, rtol=0, atol=1e-6 * 169)
    y = torch.full_like(x, float("nan"))
    st = cpu_atomic.state()
    args = _forward_args(x, w, bias, y, g, st)
    fn = cpu_small._kernel("sfwd", g, args, (x.dtype, w.dtype, torch.float32))
    returned = threading.Semaphore(0)

    def counted(*a):
        try:
            fn(*a)
        finally:
            returned.release()

    cpu_small._run_shared(counted, args, 2)
    assert torch.equal(y, one)  # complete when the call returns, however late the pool thread is
    # the pool thread may enter after the call returned (a loaded machine): it then takes no plane but still counts
    # itself in and out, so wait for both entries before reading the counts
    assert returned.acquire(timeout=60) and returned.acquire(timeout=60)
    assert st[cpu_atomic.STARTED] == st[cpu_atomic.DONE] == 2 and st[cpu_atomic.COUNT] >= x.shape[0] * 6


def test_a_thread_that_comes_late_writes_nothing(case):
    """A thread entering after every plane was taken leaves the output as it is and counts itself done."""
    x, w, bias, g, _ = case
    y = torch.full_like(x, float("nan"))
    st = cpu_atomic.state()
    st[cpu_atomic.COUNT] = x.shape[0] * 6
    args = _forward_args(x, w, bias, y, g, st)
    fn = cpu_small._kernel("sfwd", g, args, (x.dtype, w.dtype, torch.float32))
    fn(*args)
    assert torch.isnan(y).all()
    assert st[cpu_atomic.STARTED] == st[cpu_atomic.DONE] == 1
