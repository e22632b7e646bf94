"""How a trim runs its closes: closes that never suspend, closes that do, and both mixed.

A close that returns without suspending is stepped by the closer itself; one that suspends
is awaited in the scope it started in and watched for its timeout. These tests pin what a
user sees of that: the event loop keeps turning, the concurrency bound holds, a stuck close
holds up only itself, and closes that open scopes of their own nest correctly (trio checks
that strictly).
"""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import pytest

from asyncconnmgr import TrimResult
from asyncconnmgr.testing import FakeClock, FakeConn, settle

from .util import CLOSE_TIMEOUT, Gate, assert_holds, connect, hang, releasing, running

pytestmark = pytest.mark.anyio


async def instant(conn: FakeConn) -> None:
    """A close hook that returns without suspending."""


async def test_closes_that_hold_the_loop_let_other_tasks_run_between_them() -> None:
    clock = FakeClock()
    turns = 0
    seen: list[int] = []

    async def blocking(conn: FakeConn) -> None:
        seen.append(turns)
        time.sleep(0.005)  # noqa: ASYNC251 - a close that holds the event loop, on purpose

    async def ticker() -> None:
        nonlocal turns
        while True:
            await anyio.lowlevel.checkpoint()
            turns += 1

    async with running(clock) as manager:
        conns = [FakeConn(f"p{i}", on_close=blocking) for i in range(5)]
        await connect(manager, *conns)
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            result = await manager.trim_open_conns()
            tg.cancel_scope.cancel()
        assert result.closed == 5
        # Each close outlasts the closer's budget of real time, so the closer yields after
        # each: the ticker ran in every turn of the loop between the first and the last.
        assert seen[-1] - seen[0] >= len(seen) - 2
        assert_holds(manager, [])


async def test_a_stuck_close_among_instant_ones_holds_up_only_itself() -> None:
    clock = FakeClock()
    async with running(clock, close_concurrency=2) as manager:
        stuck = FakeConn("stuck", on_close=hang)
        others = [FakeConn(f"p{i}", on_close=instant) for i in range(6)]
        await connect(manager, stuck, *others)
        manager.tag_peer("stuck", "t", -1)  # the least valuable: its close starts first
        results: list[TrimResult] = []

        async def trim() -> None:
            results.append(await manager.trim_open_conns())

        async with anyio.create_task_group() as tg:
            tg.start_soon(trim)
            with releasing(clock):
                await settle()
                assert [conn.closed for conn in others] == [True] * len(others)
                assert not results  # the trim waits for the stuck close
                clock.advance(CLOSE_TIMEOUT)
                await settle()
        (result,) = results
        assert result.outcomes == {"closed": len(others), "timed_out": 1}
        assert_holds(manager, [stuck])


async def test_with_one_close_at_a_time_a_stuck_close_holds_up_the_rest() -> None:
    clock = FakeClock()
    async with running(clock, close_concurrency=1) as manager:
        stuck = FakeConn("stuck", on_close=hang)
        others = [FakeConn(f"p{i}", on_close=instant) for i in range(3)]
        await connect(manager, stuck, *others)
        manager.tag_peer("stuck", "t", -1)
        results: list[TrimResult] = []

        async def trim() -> None:
            results.append(await manager.trim_open_conns())

        async with anyio.create_task_group() as tg:
            tg.start_soon(trim)
            with releasing(clock):
                await settle()
                assert [conn.close_calls for conn in others] == [0, 0, 0]
                clock.advance(CLOSE_TIMEOUT)
                await settle()
        (result,) = results
        assert result.outcomes == {"closed": len(others), "timed_out": 1}
        assert [conn.closed for conn in others] == [True] * len(others)


async def test_closes_that_suspend_run_up_to_the_bound_and_no_further() -> None:
    clock = FakeClock()
    gate = Gate()
    async with running(clock, gate, close_concurrency=3) as manager:
        conns = [FakeConn(f"p{i}", on_close=gate) for i in range(7)]
        first = [FakeConn(f"a{i}", on_close=instant) for i in range(2)]
        await connect(manager, *first, *conns)
        for at, conn in enumerate(first):
            manager.tag_peer(conn.remote_peer, "t", -10 + at)  # closed first, at once
        results: list[TrimResult] = []

        async def trim() -> None:
            results.append(await manager.trim_open_conns())

        async with anyio.create_task_group() as tg:
            tg.start_soon(trim)
            with releasing(clock, gate):
                await settle()
                assert gate.entered == 3
                assert [conn.closed for conn in first] == [True, True]
                gate.open()
                await settle()
        (result,) = results
        assert result.closed == len(first) + len(conns)
        assert gate.peak == 3
        assert_holds(manager, [])


async def test_closes_with_scopes_of_their_own_nest_in_the_closers() -> None:
    clock = FakeClock()

    async def scoped_instant(conn: FakeConn) -> None:
        with anyio.CancelScope():  # noqa: ASYNC100 - entered and left without suspending
            pass

    async def scoped_suspending(conn: FakeConn) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.lowlevel.checkpoint)
            with anyio.CancelScope():
                await anyio.lowlevel.checkpoint()

    async def scoped_stuck(conn: FakeConn) -> None:
        with anyio.CancelScope():
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.sleep_forever)
                await anyio.sleep_forever()

    hooks = [scoped_instant, scoped_suspending, scoped_instant, scoped_stuck, scoped_instant]
    async with running(clock, close_concurrency=2) as manager:
        conns = [FakeConn(f"p{i}", on_close=hooks[i % len(hooks)]) for i in range(20)]
        await connect(manager, *conns)
        results: list[TrimResult] = []

        async def trim() -> None:
            results.append(await manager.trim_open_conns())

        async with anyio.create_task_group() as tg:
            tg.start_soon(trim)
            with releasing(clock):
                for _ in range(len(conns)):
                    await settle()
                    clock.advance(CLOSE_TIMEOUT)
                await settle()
        (result,) = results
        stuck = [conn for conn in conns if conn.on_close is scoped_stuck]
        assert result.outcomes == {"closed": len(conns) - len(stuck), "timed_out": len(stuck)}
        assert_holds(manager, stuck)
        # The manager still runs closes afterwards: nothing was left in a wrong scope.
        for conn in stuck:
            conn.on_close = instant
        again = await manager.trim_open_conns()
        assert again.closed == len(stuck)
        assert_holds(manager, [])
