"""Hostile sequences: each test pins a promise of the README's Guarantees that v0.1 broke.

The numbers in the section headings are the checklist's (docs/checklist.md, items 31-43).
Each test fails on v0.1 and passes now, on asyncio and on trio, on a `FakeClock`.
"""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Hashable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from asyncconnmgr import ConnManager, Direction, TrimResult
from asyncconnmgr.testing import FakeClock, FakeConn, settle

from .util import (
    CLOSE_TIMEOUT,
    Gate,
    assert_holds,
    connect,
    guarded,
    hang,
    releasing,
    running,
)

pytestmark = pytest.mark.anyio


def tagged(manager: ConnManager, conns: list[FakeConn]) -> None:
    """Tags the peers of `conns` 0, 1, 2...: the default order closes them in list order."""
    for value, conn in enumerate(conns):
        manager.tag_peer(conn.remote_peer, "rank", value)


# --- 31: protection is checked again when each close is about to start ----------------------


async def test_a_peer_protected_after_the_plan_is_spared() -> None:
    clock = FakeClock()
    gate = Gate()
    async with running(clock, gate, close_concurrency=1) as manager:
        conns = [FakeConn(f"p{i}", on_close=gate) for i in range(4)]
        await connect(manager, *conns)
        tagged(manager, conns)
        results: list[TrimResult] = []

        async def trim() -> None:
            results.append(await manager.trim_open_conns())

        async with anyio.create_task_group() as tg:
            with releasing(clock, gate):
                tg.start_soon(trim)
                await settle()
                assert gate.started == conns[:1]  # the plan is made: p0..p3, one at a time
                manager.protect("p2", "late")
                manager.tag_peer("p3", "rank", 1000)  # the plan was made: p3 still goes
                gate.open()
        (result,) = results
        assert [conn.closed for conn in conns] == [True, True, False, True]
        assert manager.is_protected("p2")
        outcomes = {victim.peer: victim.outcome for victim in result.victims}
        assert outcomes == {"p0": "closed", "p1": "closed", "p2": "spared", "p3": "closed"}
        assert (result.closed, result.failed) == (3, 0)
        assert result.outcomes == {"closed": 3, "spared": 1}
        assert_holds(manager, [conns[2]])  # spared: open, counted, not closing


# --- 32: whatever close() raises, no connection stays marked closing -------------------------


class Halt(BaseException):
    """A BaseException that is not an Exception, as a host's own shutdown signal might be."""


def raising(error: BaseException) -> Any:
    async def hook(conn: FakeConn) -> None:
        await anyio.lowlevel.checkpoint()
        raise error

    return hook


@pytest.mark.parametrize("error_type", [Halt, KeyboardInterrupt])
async def test_a_base_exception_from_close_comes_out_of_the_trim_as_itself(
    error_type: type[BaseException],
) -> None:
    clock = FakeClock()
    gate = Gate()
    error = error_type("stop")
    async with running(clock, gate, close_concurrency=2) as manager:
        slow = FakeConn("slow", on_close=gate)
        bad = FakeConn("bad", on_close=raising(error))
        rest = [FakeConn(f"rest{i}") for i in range(3)]
        await connect(manager, slow, bad, *rest)
        tagged(manager, [slow, bad, *rest])

        caught: list[BaseException] = []

        async def trim() -> None:
            try:
                await manager.trim_open_conns()
            except BaseException as exc:
                caught.append(exc)

        async with anyio.create_task_group() as tg:
            with releasing(clock, gate):
                tg.start_soon(trim)
                await settle()
                # `bad` raised while `slow` is still closing: the trim waits for `slow`.
                assert caught == []
                assert gate.started == [slow]
                gate.open()
        (exc,) = caught
        assert exc is error, f"wrapped: {exc!r}"
        assert slow.closed
        assert not any(conn.closed for conn in rest), "a close started after the error"
        # Nothing stays marked closing; the unstarted victims and `bad` stay counted.
        assert_holds(manager, [bad, *rest])


async def test_a_base_exception_from_a_background_close_ends_the_manager() -> None:
    clock = FakeClock()
    error = Halt("stop")
    manager = ConnManager(low_water=1, high_water=2, grace_period=0, silence_period=1, clock=clock)
    conns = [FakeConn(f"p{i}", on_close=raising(error)) for i in range(4)]

    async def host() -> None:
        async with guarded(manager, clock):
            await connect(manager, *conns)
            clock.advance(1)
            await settle()
            await anyio.sleep_forever()  # the manager's death cancels the body

    with pytest.raises(Halt) as caught:
        await host()
    assert caught.value is error
    info = manager.get_info()
    assert info.closed
    assert info.closing_count == 0
    assert info.conn_count == 4


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("error_type", [KeyboardInterrupt, SystemExit, Halt])
def test_an_interrupt_from_a_background_close_comes_out_of_async_with(
    backend: str, error_type: type[BaseException]
) -> None:
    # Its own event loop: on asyncio a KeyboardInterrupt or SystemExit raised in any task
    # but the host's goes straight to the event loop, past the host's `async with`, and
    # would end the test session.
    error = error_type("stop")
    caught: list[BaseException] = []

    async def host() -> None:
        clock = FakeClock()
        manager = ConnManager(
            low_water=1, high_water=2, grace_period=0, silence_period=1, clock=clock
        )
        conns = [FakeConn(f"p{i}", on_close=raising(error)) for i in range(4)]
        try:
            async with manager:
                await connect(manager, *conns)
                clock.advance(1)
                await settle()
                await anyio.sleep_forever()  # the manager's death cancels the body
        except BaseException as exc:
            caught.append(exc)
        assert manager.get_info().closed
        assert manager.get_info().conn_count == 4

    try:
        anyio.run(host, backend=backend)
    except BaseException as exc:
        pytest.fail(f"{exc!r} escaped the event loop instead of coming out of async with")
    assert caught == [error]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # only asyncio lets a close() raise this
async def test_a_stray_cancellation_out_of_close_is_a_failed_close() -> None:
    import asyncio

    async def stray(conn: FakeConn) -> None:
        await anyio.lowlevel.checkpoint()
        raise asyncio.CancelledError

    clock = FakeClock()
    async with running(clock) as manager:
        bad = FakeConn("bad", on_close=stray)
        rest = [FakeConn(f"rest{i}") for i in range(3)]
        await connect(manager, bad, *rest)
        tagged(manager, [bad, *rest])
        result = await manager.trim_open_conns()
        assert (result.closed, result.failed, result.cut_short) == (3, 1, False)
        assert all(conn.closed for conn in rest)
        assert_holds(manager, [bad])


# --- 33: a cancelled caller always gets the cancellation -------------------------------------


async def test_a_caller_cancelled_after_every_close_started_gets_the_cancellation() -> None:
    clock = FakeClock()
    gate = Gate()
    async with running(clock, gate, close_concurrency=4) as manager:
        conns = [FakeConn(f"p{i}", on_close=gate) for i in range(3)]
        await connect(manager, *conns)
        outcome: list[str] = []

        async def trim(scope: anyio.CancelScope) -> None:
            with scope:
                await manager.trim_open_conns()
                outcome.append("returned")
            if scope.cancelled_caught:
                outcome.append("cancelled")

        scope = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            with releasing(clock, gate):
                tg.start_soon(trim, scope)
                await settle()
                assert set(gate.started) == set(conns)  # every close has started
                scope.cancel()
                await settle()
                gate.open()
        assert outcome == ["cancelled"]
        assert all(conn.closed for conn in conns)  # the closes it started still finished
        assert_holds(manager, [])


# --- 34: joined trims: each caller's deadline is its own -------------------------------------


async def test_a_joiner_leaves_at_its_own_deadline_and_the_trim_goes_on() -> None:
    clock = FakeClock()
    gate = Gate()
    async with running(clock, gate, close_concurrency=1) as manager:
        conns = [FakeConn(f"p{i}", on_close=gate) for i in range(4)]
        await connect(manager, *conns)
        tagged(manager, conns)
        first: list[TrimResult] = []
        joiner: list[TrimResult] = []

        async def trim(into: list[TrimResult], deadline: float | None) -> None:
            into.append(await manager.trim_open_conns(deadline=deadline))

        async with anyio.create_task_group() as tg:
            with releasing(clock, gate):
                tg.start_soon(trim, first, None)
                await settle()
                tg.start_soon(trim, joiner, 2.0)
                await settle()
                clock.advance(2)  # the joiner's deadline passes; the first caller still waits
                await settle()
                (progress,) = joiner
                assert progress.cut_short
                assert progress.closed == 0
                assert first == []
                gate.open()
        (result,) = first
        assert not result.cut_short
        assert result.closed == 4
        assert_holds(manager, [])


# --- 35: a trim from inside its own close never waits for itself -----------------------------


async def test_trim_from_inside_its_own_close_raises_at_once() -> None:
    clock = FakeClock()
    errors: list[BaseException] = []
    holder: list[ConnManager] = []

    async def reenter(conn: FakeConn) -> None:
        try:
            await holder[0].trim_open_conns()
        except RuntimeError as exc:
            errors.append(exc)

    async with running(clock) as manager:
        holder.append(manager)
        conn = FakeConn("p", on_close=reenter)
        await connect(manager, conn)
        result = await manager.trim_open_conns()
        (error,) = errors
        assert "inside a close()" in str(error)
        assert (result.closed, result.failed) == (1, 0)
        assert clock.now() == 0  # nothing waited for a timeout
        assert_holds(manager, [])


# --- 36: a sync close() is a close; a stuck close is aborted ---------------------------------


class SyncConn:
    """A connection whose `close()` is a plain function, as some transports have."""

    def __init__(self, peer: Hashable) -> None:
        self.remote_peer = peer
        self.direction = Direction.INBOUND
        self.num_streams = 0
        self.remote_addr: str | None = None
        self.close_calls = 0

    def close(self) -> None:
        self.close_calls += 1


async def test_a_plain_function_close_is_a_completed_close() -> None:
    clock = FakeClock()
    async with running(clock) as manager:
        conn = SyncConn("p")
        manager.notifee().connected(conn)  # type: ignore[arg-type]
        await manager.flush()
        result = await manager.trim_open_conns()
        assert (result.closed, result.failed) == (1, 0)
        assert manager.get_info().conn_count == 0
        await manager.trim_open_conns()
        assert conn.close_calls == 1  # never closed again


class StuckConn(FakeConn):
    """A connection whose graceful close never ends, with a sync `abort()`."""

    aborts = 0

    def abort(self) -> None:
        self.aborts += 1


async def test_a_stuck_close_is_aborted_after_close_timeout() -> None:
    clock = FakeClock()
    async with running(clock) as manager:
        stuck = StuckConn("stuck", on_close=hang)
        plain = FakeConn("plain", on_close=hang)  # no abort(): it stays counted
        await connect(manager, stuck, plain)
        manager.tag_peer("plain", "t", 1)
        results: list[TrimResult] = []

        async def trim() -> None:
            results.append(await manager.trim_open_conns())

        async with anyio.create_task_group() as tg:
            tg.start_soon(trim)
            await settle()
            assert stuck.aborts == 0
            clock.advance(CLOSE_TIMEOUT)
            await settle()
        (result,) = results
        assert stuck.aborts == 1
        assert {victim.peer: victim.outcome for victim in result.victims} == {
            "stuck": "aborted",
            "plain": "timed_out",
        }
        assert (result.closed, result.failed) == (1, 1)
        assert_holds(manager, [plain])  # the aborted one left the counts


# --- 37: no ended connection is kept alive ---------------------------------------------------


async def test_ended_connections_are_not_kept_alive() -> None:
    clock = FakeClock()
    async with running(clock) as manager:
        notifiee = manager.notifee()
        ended = [FakeConn(f"e{i}") for i in range(100)]
        for conn in ended:
            notifiee.connected(conn)
            notifiee.disconnected(conn)
        # Closed by a trim, and the host never confirms it with `disconnected`.
        unconfirmed = [FakeConn(f"u{i}") for i in range(100)]
        await connect(manager, *unconfirmed)
        result = await manager.trim_open_conns()
        assert result.closed == 100
        refs = [weakref.ref(conn) for conn in ended + unconfirmed]
        del ended, unconfirmed, conn, result
        gc.collect()
        assert [ref for ref in refs if ref() is not None] == []
        # A late `connected` of a new object that reuses an old id is not ignored.
        fresh = [FakeConn(f"f{i}") for i in range(100)]
        await connect(manager, *fresh)
        assert manager.get_info().conn_count == 100


# --- 38: an all-in-grace trim does not hold the trimmer back ---------------------------------


async def test_the_trimmer_resumes_when_an_out_of_grace_peer_opens_more() -> None:
    clock = FakeClock()
    manager = ConnManager(
        low_water=3,
        high_water=5,
        grace_period=10,
        silence_period=1,
        clock=clock,
        bounded_count=False,
    )
    async with guarded(manager, clock):
        old = [FakeConn(f"old{i}") for i in range(3)]
        await connect(manager, *old)
        manager.tag_peer("old0", "t", 10)
        manager.tag_peer("old2", "t", 10)
        clock.advance(11)  # the old peers are out of their grace period
        await settle()
        newcomers = [FakeConn(f"new{i}") for i in range(5)]
        await connect(manager, *newcomers)
        clock.advance(1)
        await settle()
        # Above high water, but only the 3 old connections are eligible: nothing to close.
        assert manager.get_info().conn_count == 8
        assert not any(conn.closed for conn in old)
        more = FakeConn("old0")
        await connect(manager, more)  # 4 eligible connections: above low water again
        clock.advance(1)  # one silence period; the newcomers' grace ends only at t=21
        await settle()
        assert [conn.closed for conn in old] == [False, True, False]
        assert not any(conn.closed for conn in newcomers)
        assert manager.get_info().conn_count == 8


# --- 39: a connection whose num_streams cannot be read never stops trims ---------------------


class BrokenStreams(FakeConn):
    """A connection whose stream count raises, or is not an int."""

    garbage: object = None

    def __repr__(self) -> str:
        return f"BrokenStreams({self.remote_peer!r})"

    @property
    def num_streams(self) -> int:
        if self.garbage is not None:
            return self.garbage  # type: ignore[return-value]
        raise OSError("stream table gone")

    @num_streams.setter
    def num_streams(self, value: int) -> None:
        pass


async def test_unreadable_stream_counts_never_stop_trims(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    async with running(clock, low_water=1) as manager:
        raises = BrokenStreams("raises")
        garbage = BrokenStreams("garbage")
        garbage.garbage = "3"
        good = FakeConn("good", num_streams=2)
        keep = FakeConn("keep")
        await connect(manager, raises, garbage, good, keep)
        manager.tag_peer("keep", "t", 100)
        with caplog.at_level(logging.WARNING, logger="asyncconnmgr"):
            result = await manager.trim_open_conns()
            assert result.closed == 3
            assert_holds(manager, [keep])
            # Each broken connection is logged and counted once, however often it is read.
            raises2 = BrokenStreams("raises2")
            await connect(manager, raises2, FakeConn("x"), FakeConn("y"))
            await manager.trim_open_conns()
            await manager.trim_open_conns()
        assert manager.get_info().stream_read_failures == 3
        logged = [record for record in caplog.records if "num_streams" in record.getMessage()]
        assert len(logged) == 3


# --- 40: remote_peer and direction are read once, at `connected` ----------------------------


async def test_peer_and_direction_are_a_snapshot_taken_at_connected() -> None:
    clock = FakeClock()
    async with running(clock) as manager:
        conn = FakeConn("early", direction=Direction.UNKNOWN)
        other = FakeConn("other", direction=Direction.INBOUND)
        await connect(manager, conn, other)
        conn.remote_peer = "late"  # a host that fills these in after the handshake
        conn.direction = Direction.OUTBOUND
        info = manager.get_info()
        assert info.conns_by_direction == {"inbound": 1, "outbound": 0, "unknown": 1}
        manager.tag_peer("other", "t", 5)
        result = await manager.trim_open_conns(deadline=None)
        assert [victim.peer for victim in result.victims] == ["early", "other"]
        manager.notifee().disconnected(other)
        await manager.flush()
        assert_holds(manager, [])
        assert manager.get_info().conns_by_direction == {"inbound": 0, "outbound": 0, "unknown": 0}

    async with running(clock) as manager:
        conn = FakeConn("early")
        await connect(manager, conn)
        conn.remote_peer = "late"
        manager.notifee().disconnected(conn)
        await manager.flush()
        assert_holds(manager, [])  # the `disconnected` found its connection


# --- 42: a trim that started nothing does not push the trimmer back --------------------------


async def test_a_past_deadline_trim_does_not_push_the_background_trimmer_back() -> None:
    clock = FakeClock()
    manager = ConnManager(low_water=2, high_water=4, grace_period=0, silence_period=10, clock=clock)
    async with guarded(manager, clock):
        await connect(manager, *[FakeConn(f"a{i}") for i in range(5)])
        await settle()
        assert manager.get_info().trims_by_trigger["background"] == 1  # at t=0
        clock.advance(5)
        await settle()
        await connect(manager, *[FakeConn(f"b{i}") for i in range(3)])  # 5: above high
        result = await manager.trim_open_conns(deadline=clock.now() - 1)
        assert (result.closed, result.cut_short) == (0, True)
        assert manager.get_info().last_trim == 0
        clock.advance(5)  # one silence period after the background trim at t=0
        await settle()
        info = manager.get_info()
        assert info.trims_by_trigger["background"] == 2
        assert info.conn_count == 2


# --- 43: a manager that was never entered refuses to trim ------------------------------------


async def test_trim_on_a_manager_that_was_never_entered_raises() -> None:
    manager = ConnManager(low_water=0, high_water=1, grace_period=0, clock=FakeClock())
    conn = FakeConn("p")
    manager.notifee().connected(conn)
    with pytest.raises(RuntimeError, match="not running"):
        await manager.trim_open_conns()
    assert conn.close_calls == 0
    await manager.aclose()


async def test_a_new_task_is_never_taken_for_one_of_the_trims_closes() -> None:
    # A task id is the id() of the task object: a new task may reuse the id of a close that
    # has ended. Only closes still running may count as "inside the trim".
    clock = FakeClock()

    async def slow(conn: FakeConn) -> None:
        await clock.sleep_until(clock.now() + 1)

    async with running(clock, close_concurrency=64) as manager:
        await connect(
            manager, *[FakeConn(f"p{i}", on_close=slow if i % 2 else None) for i in range(50)]
        )
        errors: list[RuntimeError] = []

        async def new_caller() -> None:
            try:
                await manager.trim_open_conns(deadline=clock.now())
            except RuntimeError as error:
                errors.append(error)

        async with anyio.create_task_group() as tg:
            tg.start_soon(manager.trim_open_conns)
            await settle()  # the trim is in flight; its quick closes have ended
            for _ in range(500):
                async with anyio.create_task_group() as inner:
                    inner.start_soon(new_caller)
                if errors:
                    break
            clock.advance(1)
        assert errors == []


async def test_the_bounded_count_never_trims_below_low_water() -> None:
    # A host that has just started: every peer is in its grace period, far beyond the grace
    # budget. The peers beyond it are candidates, but only down to low water.
    clock = FakeClock()
    manager = ConnManager(
        low_water=20, high_water=30, grace_period=60, silence_period=1, clock=clock
    )
    async with guarded(manager, clock):
        conns = [FakeConn(f"p{i}") for i in range(100)]
        await connect(manager, *conns)
        result = await manager.trim_open_conns()
        assert result.closed == 80
        info = manager.get_info()
        assert info.conn_count == 20
        clock.advance(5)  # the background trimmer finds nothing more to close
        await settle()
        assert manager.get_info().conn_count == 20
