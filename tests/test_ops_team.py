"""Kernels run on torch's OpenMP threads (urlk_forecast.ops.cpu_team): two threads really run at once, chunks are
taken once each, arguments of every kind arrive intact, results equal the thread pool's bit for bit, and a forked
child (where libgomp would hang) falls back to the pool."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import torch
from numba import njit

from urlk_forecast.ops import cpu_atomic, cpu_kernels, cpu_paths, cpu_team

pytestmark = pytest.mark.skipif(not cpu_team.enabled(), reason="torch does not run on libgomp here")


@njit(nogil=True)
def _meet(st, met):  # pragma: no cover - compiled
    """Each thread counts itself in, then waits (bounded) for a second one: met[i] is 2 only if two ran at once."""
    me = cpu_atomic.fetch_add(st, cpu_atomic.COUNT, 1)
    n = 0
    while cpu_atomic.fetch_add(st, cpu_atomic.COUNT, 0) < 2 and n < 500_000_000:
        n += 1
    if me < met.shape[0]:
        met[me] = cpu_atomic.fetch_add(st, cpu_atomic.COUNT, 0)


@njit(nogil=True)
def _count(out, lo, hi, zero):  # pragma: no cover - compiled
    for i in range(lo, hi):
        out[i] += 1 + zero


@njit(nogil=True)
def _echo(grid, flag, big, small, out, lo, hi, zero):  # pragma: no cover - compiled
    for i in range(lo, hi):
        out[i, 0] = grid[i, 1, 2]
        out[i, 1] = 1.0 if flag else 0.0
        out[i, 2] = np.float64(big >> np.uint64(60))
        out[i, 3] = small + zero


def test_two_threads_run_at_once():
    st, met = cpu_atomic.state(), np.zeros(4, np.int64)
    _meet(cpu_atomic.state() + 5, met[2:])  # compile (no waiting: the count starts above 2)
    met[:] = 0
    assert cpu_team.launch(_meet, (st, met), 2)
    assert met.tolist()[:2] == [2, 2] and st[cpu_atomic.COUNT] == 2


def test_chunks_are_taken_once_each():
    out = np.zeros(1001, np.float32)
    _count(out, 0, 0, np.float32(0))
    assert cpu_team.launch(_count, (out, 0, out.shape[0], np.float32(0)), 2, chunks=7)
    assert (out == 1).all()


def test_arguments_of_every_kind_arrive():
    grid = np.arange(6 * 3 * 4, dtype=np.float32).reshape(6, 3, 4)
    out = np.full((6, 4), -1.0)
    big = np.uint64(0xF000_0000_0000_0001)  # above int64's range: passed as the same 64 bits
    args = (grid, True, big, -3, out, 0, 6, np.float32(0))
    _echo(*args[:5], 0, 0, np.float32(0))
    assert cpu_team.launch(_echo, args, 2, chunks=3)
    np.testing.assert_array_equal(out, np.stack([grid[:, 1, 2], np.ones(6), np.full(6, 15.0), np.full(6, -3.0)], 1))


@njit(nogil=True)
def _scaled(src, out, k, st):  # pragma: no cover - compiled
    cpu_atomic.fetch_add(st, cpu_atomic.STARTED, 1)
    for i in range(src.shape[0]):
        out[i] = src[i] * k


@pytest.mark.parametrize("team", ["1", "0"])
def test_call_passes_tensors_by_address(monkeypatch, team):
    """``call``: tensors go in by address, on the calling thread alone (even with the team off) or on two threads
    (each runs the whole kernel here); with the team off two threads are refused, not run."""
    monkeypatch.setenv(cpu_team.ENV, team)
    src = torch.arange(10, dtype=torch.float32)
    out = torch.zeros(10, dtype=torch.float32)
    _scaled(src.numpy(), out.numpy(), 3, cpu_atomic.state())  # compile
    out.zero_()
    st = cpu_atomic.state()
    assert cpu_team.call(_scaled, (src, out, 3, st), 1)
    assert torch.equal(out, src * 3) and st[cpu_atomic.STARTED] == 1
    st = cpu_atomic.state()
    assert cpu_team.call(_scaled, (src, out, 2, st), 2) == (team == "1")
    assert st[cpu_atomic.STARTED] == (2 if team == "1" else 0)
    assert not cpu_team.call(_scaled, (src.view(2, 5), out, 2, st), 1)  # not 1-d: the caller's job
    assert not cpu_team.call(_scaled, (torch.zeros(20)[::2], out, 2, st), 1)  # strided: the caller's job


def test_what_the_table_cannot_carry_is_left_to_the_caller():
    out = np.zeros((4, 4), np.float32)
    assert not cpu_team.launch(_count, (out[:, 0], 0, 4, np.float32(0)), 2, chunks=2)  # a strided array
    assert not cpu_team.launch(lambda *a: None, (out.reshape(-1), 0, 4, np.float32(0)), 2, chunks=2)
    assert (out == 0).all()


@pytest.mark.parametrize("shape,k,dil", [((32, 80, 8, 12), 13, 1), ((2, 16, 40, 40), 7, 1), ((4, 8, 33, 20), 5, 2)])
def test_team_and_pool_give_the_same_bits(monkeypatch, shape, k, dil):
    """The small-map kernel (8x12) and the general kernels, every direction, on two threads."""
    gen = torch.Generator().manual_seed(3)
    x, gy = torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)
    w, b = torch.randn(shape[1], 1, k, k, generator=gen), torch.randn(shape[1], generator=gen)
    p = dil * (k - 1) // 2
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = {}
        for team in ("1", "0"):
            monkeypatch.setenv(cpu_team.ENV, team)
            out[team] = [cpu_paths.compute(d, "own", x, w, gy, (p,) * 4, (dil, dil), b if d == "forward" else None)
                         for d in cpu_paths.DIRECTIONS]
    finally:
        torch.set_num_threads(old)
    for a, c in zip(out["1"], out["0"]):
        assert torch.equal(a, c)
    ref = torch.nn.functional.conv2d(x.double(), w.double(), b.double(), 1, p, dil, shape[1])
    torch.testing.assert_close(out["1"][0].double(), ref, rtol=0, atol=1e-4)


def _child(conn, x, w, b):  # pragma: no cover - runs in the forked child
    y = cpu_paths.compute("forward", "own", x, w, None, (6,) * 4, (1, 1), b)
    conn.send((cpu_team.enabled(), torch.get_num_threads(), y.numpy()))  # no torch op here: it would hang


def test_a_forked_child_uses_the_thread_pool():
    """libgomp is not fork-safe; the child runs the op on the pool (two threads), with the parent's result."""
    gen = torch.Generator().manual_seed(5)
    x, w, b = torch.randn(32, 80, 8, 12, generator=gen), torch.randn(80, 1, 13, 13, generator=gen), torch.randn(80)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        y = cpu_paths.compute("forward", "own", x, w, None, (6,) * 4, (1, 1), b)  # the team runs in this process
        assert cpu_kernels.available() and cpu_team.enabled()
        ctx = mp.get_context("fork")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(child, x, w, b))
        proc.start()
        assert parent.poll(60), "the forked child did not answer"
        enabled, threads, yc = parent.recv()
        proc.join(10)
    finally:
        torch.set_num_threads(old)
    assert not enabled and threads == 2
    np.testing.assert_array_equal(yc, y.numpy())
