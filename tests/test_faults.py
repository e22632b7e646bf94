"""The fault matrix: one test per fault, each checking the state the fault leaves behind.

Every test runs on asyncio and trio with a `FakeClock`; "later" always means `clock.advance`
followed by `settle()`, never a real sleep. After each fault the test checks the counters
(`get_info()`), the peers (`get_tag_info()`), which connections were closed and how often,
and the table's own invariants (`_check_invariants()`), not merely that nothing raised.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from asyncconnmgr import (
    ConnManager,
    DecayingTag,
    DecayingValue,
    Direction,
    ManagerClosedError,
    TrimResult,
    bump_sum_unbounded,
    decay_none,
)
from asyncconnmgr.testing import FakeClock, FakeConn, settle

from .util import (
    CLOSE_TIMEOUT,
    Boom,
    Gate,
    assert_holds,
    connect,
    fail,
    guarded,
    hang,
    held_conns,
    releasing,
    reporting,
    running,
)

pytestmark = pytest.mark.anyio


# --- closes that fail ------------------------------------------------------------------------


async def test_close_that_raises() -> None:
    clock = FakeClock()
    async with running(clock, low_water=1) as manager:
        bad = FakeConn("bad", on_close=fail)
        cheap = FakeConn("cheap")
        good = FakeConn("good")
        await connect(manager, bad, cheap, good)
        manager.tag_peer("cheap", "t", 5)
        manager.tag_peer("good", "t", 10)

        result = await manager.trim_open_conns()

        assert (result.closed, result.failed, result.target) == (1, 1, 2)
        assert [victim.peer for victim in result.victims] == ["bad", "cheap"]
        assert cheap.closed
        assert not bad.closed
        assert not good.closed
        # The failed connection stays open, counted, not closing, with its peer's tags.
        assert_holds(manager, [bad, good])
        info = manager.get_info()
        assert (info.close_failures, info.closed_conns) == (1, 1)
        assert manager.get_info().running

        # A later trim may try it again; this time the close works.
        bad.on_close = None
        result = await manager.trim_open_conns()
        assert (result.closed, result.failed) == (1, 0)
        assert bad.closed
        assert bad.close_calls == 2
        assert cheap.close_calls == 1
        assert_holds(manager, [good])
        assert manager.get_info().ignored_notifications == 0


async def test_close_that_hangs_past_close_timeout() -> None:
    clock = FakeClock()
    async with running(clock, low_water=1, close_concurrency=2) as manager:
        hung = FakeConn("hung", on_close=hang)
        quick = FakeConn("quick")
        keep = FakeConn("keep")
        await connect(manager, hung, quick, keep)
        manager.tag_peer("keep", "t", 10)
        manager.tag_peer("quick", "t", 1)

        results: list[TrimResult] = []

        async def trim() -> None:
            results.append(await manager.trim_open_conns())

        async with anyio.create_task_group() as tg:
            with releasing(clock):
                tg.start_soon(trim)
                await settle()
                # The quick close is not held up by the hung one.
                assert quick.closed
                assert not results
                assert manager.get_info().closing_count == 1
                clock.advance(CLOSE_TIMEOUT - 0.5)
                await settle()
                assert not results, "the close was abandoned before close_timeout"
                clock.advance(0.5)
                await settle()
                assert results, "the close was not abandoned at close_timeout"

        (result,) = results
        assert (result.closed, result.failed, result.cut_short) == (1, 1, False)
        assert result.finished_at == CLOSE_TIMEOUT
        assert not hung.closed
        assert hung.close_calls == 1
        assert_holds(manager, [hung, keep])
        assert manager.get_info().close_failures == 1


async def test_close_that_reports_disconnected_synchronously() -> None:
    clock = FakeClock()
    async with running(clock, low_water=1) as manager:
        notifiee = manager.notifee()
        victim = FakeConn("victim", notifiee=notifiee)  # close() reports disconnected itself
        twin = FakeConn("victim", notifiee=notifiee)
        keep = FakeConn("keep")
        await connect(manager, victim, twin, keep)
        manager.tag_peer("victim", "t", 1)
        manager.tag_peer("keep", "t", 10)

        result = await manager.trim_open_conns()
        await manager.flush()
        await settle()

        assert (result.closed, result.failed) == (2, 0)
        assert victim.closed
        assert twin.closed
        assert_holds(manager, [keep])
        assert manager.get_tag_info("victim") is None, "the peer's tags outlived it"
        info = manager.get_info()
        assert (info.closed_conns, info.ignored_notifications) == (2, 0)

        # The host repeating itself is a duplicate, counted once.
        notifiee.disconnected(victim)
        await manager.flush()
        assert manager.get_info().ignored_notifications == 1
        assert_holds(manager, [keep])


async def test_close_that_reports_disconnected_and_yields_before_returning() -> None:
    # The consumer applies the `disconnected` while close() is still running.
    clock = FakeClock()
    async with running(clock, low_water=0) as manager:
        notifiee = manager.notifee()

        async def report_then_yield(conn: FakeConn) -> None:
            notifiee.disconnected(conn)
            await settle()
            assert not manager.get_info().queued_notifications

        victim = FakeConn("victim", on_close=report_then_yield)
        await connect(manager, victim)
        result = await manager.trim_open_conns()
        await settle()
        assert (result.closed, result.failed) == (1, 0)
        assert_holds(manager, [])
        info = manager.get_info()
        assert (info.closed_conns, info.ignored_notifications) == (1, 0)


async def test_close_that_reports_disconnected_then_raises() -> None:
    # The host says the connection is gone, even though close() failed: it is gone.
    clock = FakeClock()
    async with running(clock, low_water=0) as manager:
        victim = FakeConn("victim")
        victim.on_close = reporting(manager.notifee(), then=fail)
        await connect(manager, victim)
        result = await manager.trim_open_conns()
        await settle()
        assert (result.closed, result.failed) == (0, 1)
        assert_holds(manager, [])
        info = manager.get_info()
        assert (info.close_failures, info.ignored_notifications) == (1, 0)


# --- notifications that go wrong --------------------------------------------------------------


async def test_disconnected_that_never_comes() -> None:
    clock = FakeClock()
    async with running(clock, low_water=1) as manager:
        silent = FakeConn("silent")  # closes fine, but the host never reports it
        keep = FakeConn("keep")
        await connect(manager, silent, keep)
        manager.tag_peer("silent", "t", 3)
        manager.tag_peer("keep", "t", 10)

        result = await manager.trim_open_conns()
        assert result.closed == 1
        assert silent.closed
        # The manager removed it itself: not counted, its peer and tags gone.
        assert_holds(manager, [keep])
        assert manager.get_tag_info("silent") is None

        # It is never closed again, however many trims follow.
        for _ in range(3):
            clock.advance(1)
            await manager.trim_open_conns()
        assert silent.close_calls == 1

        # If the host's notification turns up after all, it is recognised, not "unknown".
        manager.notifee().disconnected(silent)
        await manager.flush()
        assert manager.get_info().ignored_notifications == 0
        assert_holds(manager, [keep])


async def test_two_disconnected_for_one_connection() -> None:
    clock = FakeClock()
    async with running(clock) as manager:
        notifiee = manager.notifee()
        first = FakeConn("p")
        second = FakeConn("p", direction=Direction.OUTBOUND)
        await connect(manager, first, second)
        manager.tag_peer("p", "t", 4)

        notifiee.disconnected(first)
        notifiee.disconnected(first)
        await manager.flush()

        assert_holds(manager, [second])
        tag_info = manager.get_tag_info("p")
        assert tag_info is not None
        assert dict(tag_info.tags) == {"t": 4}, "tags lost"
        assert manager.get_info().ignored_notifications == 1

        # The peer's other connection still closes it normally.
        notifiee.disconnected(second)
        await manager.flush()
        assert_holds(manager, [])
        assert manager.get_info().ignored_notifications == 1


async def test_two_disconnected_for_a_connection_a_trim_closed() -> None:
    clock = FakeClock()
    async with running(clock, low_water=0) as manager:
        notifiee = manager.notifee()
        victim = FakeConn("victim", notifiee=notifiee)
        await connect(manager, victim)
        await manager.trim_open_conns()
        notifiee.disconnected(victim)  # the host's own, after the one close() reported
        await manager.flush()
        assert_holds(manager, [])
        assert manager.get_info().ignored_notifications == 1


async def test_connected_after_its_disconnected() -> None:
    # The `disconnected` overtook the `connected`: the connection is already gone.
    clock = FakeClock()
    async with running(clock) as manager:
        notifiee = manager.notifee()
        ghost = FakeConn("ghost")
        notifiee.disconnected(ghost)
        notifiee.connected(ghost)
        await manager.flush()
        assert_holds(manager, [])
        assert manager.get_tag_info("ghost") is None
        assert manager.get_info().ignored_notifications == 2


async def test_connected_twice_after_its_disconnected() -> None:
    # The overtaken `connected` was also duplicated: both copies are stale.
    clock = FakeClock()
    async with running(clock) as manager:
        notifiee = manager.notifee()
        ghost = FakeConn("ghost")
        notifiee.disconnected(ghost)
        notifiee.connected(ghost)
        notifiee.connected(ghost)
        await manager.flush()
        assert_holds(manager, [])
        assert manager.get_info().ignored_notifications == 3


async def test_duplicate_connected_arriving_after_its_disconnected() -> None:
    # connected, disconnected, then a late copy of the connected: the connection is closed
    # and no further notification will ever come for it, so counting it would leak it.
    clock = FakeClock()
    async with running(clock) as manager:
        notifiee = manager.notifee()
        conn = FakeConn("p")
        await connect(manager, conn)
        notifiee.disconnected(conn)
        await manager.flush()
        notifiee.connected(conn)
        await manager.flush()
        assert_holds(manager, [])
        assert manager.get_tag_info("p") is None
        assert manager.get_info().ignored_notifications == 1


async def test_connected_after_a_trim_closed_it() -> None:
    # A late copy of `connected` for a connection the manager itself closed.
    clock = FakeClock()
    async with running(clock, low_water=0) as manager:
        conn = FakeConn("p")
        await connect(manager, conn)
        assert (await manager.trim_open_conns()).closed == 1
        manager.notifee().connected(conn)
        await manager.flush()
        assert_holds(manager, [])
        assert manager.get_info().ignored_notifications == 1
        # Nothing is closed twice.
        clock.advance(1)
        await manager.trim_open_conns()
        assert conn.close_calls == 1


async def test_connected_queued_before_an_early_tag_expires_keeps_the_tag() -> None:
    # The host reports `connected` just before the peer's temporary entry would expire, and
    # the reaper wakes at the expiry before the consumer has applied that `connected`: the
    # entry was used in time, so it must become real with its tags, not be reaped. (Which
    # ready task runs first is up to the scheduler, at random on trio: hence the attempts.)
    for attempt in range(20):
        clock = FakeClock()
        async with running(clock, grace_period=10) as manager:
            manager.tag_peer("early", "t", 5)
            await settle()
            clock.advance(9.5)
            await settle()
            conn = FakeConn("early")
            manager.notifee().connected(conn)  # queued, not applied yet
            clock.advance(1)  # the early tag's expiry passes
            await settle()
            info = manager.get_tag_info("early")
            assert info is not None
            assert not info.temporary
            assert dict(info.tags) == {"t": 5}, f"the early tag was reaped (attempt {attempt})"
            assert_holds(manager, [conn])


# --- user callbacks that misbehave --------------------------------------------------------------


async def test_upsert_function_that_raises() -> None:
    clock = FakeClock()
    async with running(clock) as manager:
        await connect(manager, FakeConn("known"))
        manager.tag_peer("known", "t", 5)
        error = Boom()

        def explode(value: int) -> int:
            raise error

        for peer in ("known", "unknown"):
            before = (manager.get_info(), manager.get_tag_info(peer))
            with pytest.raises(Boom) as caught:
                manager.upsert_tag(peer, "t", explode)
            assert caught.value is error, "the caller must see its own exception"
            assert (manager.get_info(), manager.get_tag_info(peer)) == before
        assert manager.get_tag_info("unknown") is None, "a temporary entry was left behind"
        manager._check_invariants()
        # The manager is still working.
        manager.upsert_tag("known", "t", lambda v: v + 1)
        info = manager.get_tag_info("known")
        assert info is not None
        assert info.value == 6
        assert manager.get_info().running


@pytest.mark.parametrize("peer", ["known", "unknown"])
async def test_upsert_function_that_calls_back_into_the_manager(peer: str) -> None:
    clock = FakeClock()
    async with running(clock) as manager:
        await connect(manager, FakeConn("known"))
        manager.tag_peer("known", "t", 5)
        seen: list[int] = []

        def reenter(value: int) -> int:
            seen.append(value)
            manager.tag_peer(peer, "t", 100)  # the very tag being upserted
            manager.tag_peer(peer, "other", 3)
            manager.upsert_tag(peer, "nested", lambda v: v + 2)
            manager.protect(peer, "from-callback")
            info = manager.get_tag_info(peer)
            assert info is not None
            assert info.tags["t"] == 100
            return value + 1

        manager.upsert_tag(peer, "t", reenter)

        start = 5 if peer == "known" else 0
        assert seen == [start]
        info = manager.get_tag_info(peer)
        assert info is not None
        # The function's own result is what the tag ends up with.
        assert dict(info.tags) == {"t": start + 1, "other": 3, "nested": 2}
        assert info.value == start + 1 + 3 + 2
        assert info.temporary == (peer == "unknown")
        assert manager.is_protected(peer, "from-callback")
        assert manager.get_info().temporary_count == (1 if peer == "unknown" else 0)
        manager._check_invariants()


def counting_decay(
    calls: list[tuple[Hashable, int]], poisoned: set[Hashable]
) -> Callable[[DecayingValue], tuple[int, bool]]:
    def decay(value: DecayingValue) -> tuple[int, bool]:
        calls.append((value.peer, value.value))
        if value.peer in poisoned:
            raise Boom(f"cannot decay {value.peer!r}")
        return value.value - 1, value.value - 1 <= 0

    return decay


def decaying_value(manager: ConnManager, peer: Hashable, tag: str) -> int | None:
    info = manager.get_tag_info(peer)
    return None if info is None else info.tags.get(tag)


async def test_decay_function_that_raises() -> None:
    clock = FakeClock()
    async with running(clock, decay_resolution=1) as manager:
        await connect(manager, FakeConn("good"), FakeConn("bad"))
        calls: list[tuple[Hashable, int]] = []
        poisoned: set[Hashable] = {"bad"}
        tag = manager.register_decaying_tag(
            "flaky", 1, counting_decay(calls, poisoned), bump_sum_unbounded()
        )
        tag.bump("good", 10)
        tag.bump("bad", 10)

        for tick in range(1, 4):
            clock.advance(1)
            await settle()
            assert decaying_value(manager, "good", "flaky") == 10 - tick
            assert decaying_value(manager, "bad", "flaky") == 10, "a failed decay changed it"
            assert manager.get_info().decay_failures == tick
            manager._check_invariants()
        assert sorted(calls) == sorted([("good", 10 - i) for i in range(3)] + [("bad", 10)] * 3)
        assert all(count == 0 for count in manager.get_info().loop_failures.values())

        # Once the function copes again, the value decays again.
        poisoned.clear()
        clock.advance(1)
        await settle()
        assert decaying_value(manager, "bad", "flaky") == 9
        assert manager.get_info().decay_failures == 3


async def test_decay_function_that_returns_garbage() -> None:
    clock = FakeClock()
    async with running(clock, decay_resolution=1) as manager:
        await connect(manager, FakeConn("p"))
        results: list[Any] = [("3", False), None, (1,), 7]

        def garbage(value: DecayingValue) -> Any:
            return results.pop(0)

        tag = manager.register_decaying_tag("junk", 1, garbage, bump_sum_unbounded())
        tag.bump("p", 5)
        for tick in range(1, 5):
            clock.advance(1)
            await settle()
            assert decaying_value(manager, "p", "junk") == 5
            assert manager.get_info().decay_failures == tick
            manager._check_invariants()


async def test_decay_function_that_calls_back_into_the_manager() -> None:
    clock = FakeClock()
    async with running(clock, decay_resolution=1, grace_period=30) as manager:
        await connect(manager, FakeConn("a"), FakeConn("b"), FakeConn("c"))
        tags: dict[str, DecayingTag] = {}

        def meddle(value: DecayingValue) -> tuple[int, bool]:
            tag = tags["busy"]
            if value.peer == "a":
                tag.remove("a")  # drops its own value mid-visit: the removal stands
            elif value.peer == "b":
                manager.tag_peer("b", "plain", 7)  # a plain tag on the visited peer
                tag.bump("newcomer", 4)  # a value (and a temporary entry) for a new peer
            elif value.peer == "c":
                tag.bump("c", 100)  # rebumps itself: the bump stands, not the decay
            return value.value - 1, False

        tags["busy"] = manager.register_decaying_tag("busy", 1, meddle, bump_sum_unbounded())
        for peer in ("a", "b", "c"):
            tags["busy"].bump(peer, 10)

        clock.advance(1)
        await settle()

        assert decaying_value(manager, "a", "busy") is None
        assert decaying_value(manager, "b", "busy") == 9
        assert decaying_value(manager, "b", "plain") == 7
        assert decaying_value(manager, "c", "busy") == 110
        newcomer = manager.get_tag_info("newcomer")
        assert newcomer is not None
        assert newcomer.temporary
        assert newcomer.value == 4
        assert manager.get_info().decay_failures == 0
        manager._check_invariants()
        for peer, expected in [("a", 0), ("b", 9 + 7), ("c", 110)]:
            info = manager.get_tag_info(peer)
            assert info is not None
            assert info.value == expected


async def test_decay_function_that_closes_its_own_tag() -> None:
    clock = FakeClock()
    async with running(clock, decay_resolution=1) as manager:
        await connect(manager, FakeConn("a"), FakeConn("b"))
        holder: list[DecayingTag] = []

        def close_it(value: DecayingValue) -> tuple[int, bool]:
            holder[0].close()
            return value.value - 1, False

        tag = manager.register_decaying_tag("doomed", 1, close_it, bump_sum_unbounded())
        holder.append(tag)
        tag.bump("a", 5)
        tag.bump("b", 6)
        clock.advance(1)
        await settle()
        for peer in ("a", "b"):
            info = manager.get_tag_info(peer)
            assert info is not None
            assert info.value == 0
            assert "doomed" not in info.tags
        assert manager.get_info().decay_failures == 0
        manager._check_invariants()
        # The name is free again.
        manager.register_decaying_tag("doomed", 1, decay_none(), bump_sum_unbounded())


async def test_bump_function_that_raises() -> None:
    clock = FakeClock()
    async with running(clock) as manager:
        await connect(manager, FakeConn("known"))
        calls = 0

        def bump(value: DecayingValue, delta: int) -> int:
            nonlocal calls
            calls += 1
            if delta < 0:
                raise Boom("no negative bumps")
            return value.value + delta

        tag = manager.register_decaying_tag("picky", 10, decay_none(), bump)
        tag.bump("known", 5)
        for peer in ("known", "unknown"):
            before = (manager.get_info(), manager.get_tag_info(peer))
            with pytest.raises(Boom):
                tag.bump(peer, -1)
            assert (manager.get_info(), manager.get_tag_info(peer)) == before
        assert calls == 3
        manager._check_invariants()


async def test_bump_function_that_calls_back_into_the_manager() -> None:
    clock = FakeClock()
    async with running(clock) as manager:
        await connect(manager, FakeConn("known"))
        holder: list[DecayingTag] = []

        def bump(value: DecayingValue, delta: int) -> int:
            if delta == 1:
                holder[0].bump(value.peer, 10)  # a nested bump of the same value
                manager.tag_peer(value.peer, "plain", 2)
            return value.value + delta

        tag = manager.register_decaying_tag("nested", 10, decay_none(), bump)
        holder.append(tag)
        for peer in ("known", "unknown"):
            tag.bump(peer, 1)
            info = manager.get_tag_info(peer)
            # The outer bump saw 0 and returned 1: it overwrites the nested one.
            assert info is not None
            assert info.tags == {"nested": 1, "plain": 2}
            assert info.value == 3
        manager._check_invariants()


# --- cancellation and shutdown ---------------------------------------------------------------


async def ranked_gated_conns(manager: ConnManager, gate: Gate) -> list[FakeConn]:
    """Ten connections whose closes wait at `gate`, tagged so that p0 is closed first, then
    p1, and so on."""
    conns = [FakeConn(f"p{i}", on_close=gate.hook) for i in range(10)]
    await connect(manager, *conns)
    for i, conn in enumerate(conns):
        manager.tag_peer(conn.remote_peer, "t", i)
    return conns


async def test_cancelling_the_first_caller_never_cuts_a_joiners_trim_short() -> None:
    clock = FakeClock()
    gate = Gate()
    async with running(clock, gate, low_water=0, close_concurrency=2) as manager:
        conns = await ranked_gated_conns(manager, gate)

        outcome: list[str] = []
        joined: list[TrimResult] = []

        async def trim(scope: anyio.CancelScope) -> None:
            with scope:
                await manager.trim_open_conns()
                outcome.append("returned")
            if scope.cancelled_caught:
                outcome.append("cancelled")

        async def join() -> None:
            joined.append(await manager.trim_open_conns())

        scope = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            with releasing(clock, gate):
                tg.start_soon(trim, scope)
                await settle()
                tg.start_soon(join)
                await settle()
                assert gate.started == conns[:2]
                scope.cancel()
                await settle()
                # The joiner still wants the trim: the first caller leaves at once.
                assert outcome == ["cancelled"]
                assert gate.cancelled == []
                gate.released.set()
        (result,) = joined
        assert not result.cut_short
        assert (result.closed, result.failed) == (10, 0)
        assert all(conn.closed for conn in conns)
        assert [conn.close_calls for conn in conns] == [1] * 10
        assert_holds(manager, [])


async def test_the_first_callers_deadline_never_cuts_a_joiners_trim_short() -> None:
    clock = FakeClock()
    gate = Gate()
    async with running(clock, gate, low_water=0, close_concurrency=2) as manager:
        conns = await ranked_gated_conns(manager, gate)
        first: list[TrimResult] = []
        joined: list[TrimResult] = []

        async def trim() -> None:
            first.append(await manager.trim_open_conns(deadline=clock.now() + 2))

        async def join() -> None:
            joined.append(await manager.trim_open_conns())

        async with anyio.create_task_group() as tg:
            with releasing(clock, gate):
                tg.start_soon(trim)
                await settle()
                tg.start_soon(join)
                await settle()
                assert gate.started == conns[:2]
                clock.advance(2)  # the first caller's deadline passes; the joiner has none
                await settle()
                # The first caller leaves at once with the progress so far.
                (early,) = first
                assert early.cut_short
                assert (early.closed, early.failed) == (0, 0)
                assert joined == []
                gate.released.set()
        (result,) = joined
        assert not result.cut_short
        assert (result.closed, result.failed) == (10, 0)
        assert all(conn.closed for conn in conns)
        assert_holds(manager, [])


async def test_the_last_caller_to_leave_stops_the_trim() -> None:
    clock = FakeClock()
    gate = Gate()
    async with running(clock, gate, low_water=0, close_concurrency=2) as manager:
        conns = await ranked_gated_conns(manager, gate)

        outcome: list[str] = []
        progress: list[TrimResult] = []

        async def trim(scope: anyio.CancelScope) -> None:
            with scope:
                await manager.trim_open_conns()
                outcome.append("returned")
            if scope.cancelled_caught:
                outcome.append("cancelled")

        async def join() -> None:
            progress.append(await manager.trim_open_conns(deadline=clock.now() + 1))

        scope = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            with releasing(clock, gate):
                tg.start_soon(trim, scope)
                await settle()
                tg.start_soon(join)
                await settle()
                clock.advance(1)  # the joiner's deadline: it leaves at once, with the progress
                await settle()
                (early,) = progress
                assert early.cut_short
                assert (early.closed, early.failed) == (0, 0)
                scope.cancel()  # the last caller leaves: no close starts from now on
                await settle()
                # The two closes already started are shielded: they run to their end, and
                # the last caller waits for them.
                assert not outcome
                assert gate.cancelled == []
                gate.released.set()
        assert outcome == ["cancelled"]
        assert gate.started == conns[:2], "a close started after the last caller left"
        assert all(conn.closed for conn in conns[:2])
        assert_holds(manager, conns[2:])
        last = manager.last_trim_result
        assert last is not None
        assert last.cut_short
        assert last.outcomes == {"closed": 2, "not_started": 8}

        # A later trim takes up the rest; nothing is closed twice.
        result = await manager.trim_open_conns()
        assert result.closed == 8
        assert [conn.close_calls for conn in conns] == [1] * 10
        assert_holds(manager, [])


def ranked(manager: ConnManager, conns: list[FakeConn]) -> None:
    """Tags the connections' peers so that a trim closes them in list order.

    Call it just before the `connected` notifications, with no checkpoint in between, or
    the reaper takes the temporary entries first (grace is 0 here).
    """
    for rank, conn in enumerate(conns):
        manager.tag_peer(conn.remote_peer, "rank", rank)


async def test_aclose_during_a_background_trim() -> None:
    clock = FakeClock()
    gate = Gate()
    manager = ConnManager(
        low_water=2,
        high_water=4,
        grace_period=0,
        silence_period=1,
        close_concurrency=2,
        close_timeout=CLOSE_TIMEOUT,
        clock=clock,
    )
    conns = [FakeConn(f"p{i}", on_close=gate.hook) for i in range(6)]
    returned: list[bool] = []
    async with guarded(manager, clock, gate):
        ranked(manager, conns)
        await connect(manager, *conns)  # above high water: a background trim starts
        await settle()
        assert gate.started == conns[:2]
        assert manager.get_info().closing_count == 4

        async def close_manager() -> None:
            await manager.aclose()
            returned.append(True)

        async with anyio.create_task_group() as tg:
            with releasing(clock, gate):
                tg.start_soon(close_manager)
                await settle()
                # aclose() waits for the closes already started, and starts no other.
                assert not returned
                assert gate.started == conns[:2]
                gate.released.set()
        assert returned
    assert gate.started == conns[:2]
    assert gate.cancelled == []
    assert_holds(manager, conns[2:])
    info = manager.get_info()
    assert info.closed
    assert not info.running
    assert (info.closed_conns, info.close_failures) == (2, 0)
    with pytest.raises(ManagerClosedError):
        await manager.trim_open_conns()


async def test_aclose_during_a_trim_applies_what_its_closes_report() -> None:
    # The closes a trim started before aclose() report `disconnected` while aclose() waits
    # for them: those reports arrive before aclose() returns and must not be lost.
    clock = FakeClock()
    gate = Gate()
    manager = ConnManager(low_water=0, high_water=1, grace_period=0, silence_period=1, clock=clock)
    notifiee = manager.notifee()

    async def report_after_gate(conn: FakeConn) -> None:
        await gate.hook(conn)
        notifiee.disconnected(conn)
        if conn.remote_peer == "refuses":
            raise ConnectionError("close failed, but the host dropped it anyway")

    fine = FakeConn("fine", on_close=report_after_gate)
    refuses = FakeConn("refuses", on_close=report_after_gate)
    async with guarded(manager, clock, gate):
        await connect(manager, fine, refuses)
        await settle()
        assert len(gate.started) == 2
        async with anyio.create_task_group() as tg:
            with releasing(clock, gate):
                tg.start_soon(manager.aclose)
                await settle()
                gate.released.set()
    assert_holds(manager, [])
    info = manager.get_info()
    assert (info.closed_conns, info.close_failures) == (1, 1)
    assert info.ignored_notifications == 0, "a confirmation was counted as ignored"


async def test_aclose_during_an_explicit_trim() -> None:
    clock = FakeClock()
    gate = Gate()
    manager = ConnManager(
        low_water=0,
        high_water=100,
        grace_period=0,
        silence_period=1,
        close_concurrency=1,
        close_timeout=CLOSE_TIMEOUT,
        clock=clock,
    )
    conns = [FakeConn(f"p{i}", on_close=gate.hook) for i in range(4)]
    results: list[TrimResult] = []
    returned: list[bool] = []

    async def trim() -> None:
        results.append(await manager.trim_open_conns())

    async def close_manager() -> None:
        await manager.aclose()
        returned.append(True)

    async with guarded(manager, clock, gate):
        ranked(manager, conns)
        await connect(manager, *conns)
        async with anyio.create_task_group() as tg:
            with releasing(clock, gate):
                tg.start_soon(trim)
                await settle()
                assert gate.started == conns[:1]
                tg.start_soon(close_manager)
                await settle()
                # aclose() waits for the close in progress (it is bounded by close_timeout)...
                assert not returned
                gate.released.set()
                await settle()
                # ...and once it has returned, the manager starts no other close.
                assert returned
                assert gate.started == conns[:1], "a close started during or after aclose()"
    (result,) = results
    assert result.cut_short
    assert result.closed == 1
    assert_holds(manager, conns[1:])


async def test_aclose_during_a_flood_of_notifications() -> None:
    clock = FakeClock()
    manager = ConnManager(
        low_water=0, high_water=1_000_000, grace_period=0, silence_period=1, clock=clock
    )
    notifiee = manager.notifee()
    pushed: list[FakeConn] = []
    stop = anyio.Event()

    def push(count: int) -> None:
        for _ in range(count):
            conn = FakeConn(len(pushed))
            pushed.append(conn)
            notifiee.connected(conn)

    async def flood() -> None:
        while not stop.is_set():
            push(97)
            await anyio.lowlevel.checkpoint()

    async with guarded(manager, clock), anyio.create_task_group() as tg:
        tg.start_soon(flood)
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        push(5000)  # a burst the consumer has not seen yet when aclose() starts
        at_aclose = len(pushed)
        await manager.aclose()
        for _ in range(20):  # the flood goes on after aclose()
            await anyio.lowlevel.checkpoint()
        stop.set()
    info = manager.get_info()
    # Nothing lost: every notification is either applied or counted as ignored, and the
    # applied ones are exactly the first ones pushed (a prefix: no gap, no reordering).
    assert info.conn_count + info.ignored_notifications == len(pushed)
    assert info.conn_count >= at_aclose, "a notification queued before aclose() was dropped"
    assert info.queued_notifications == 0
    assert held_conns(manager, range(len(pushed))) == set(pushed[: info.conn_count])
    manager._check_invariants()


async def test_aclose_twice_concurrently() -> None:
    clock = FakeClock()
    manager = ConnManager(
        low_water=0,
        high_water=1,
        grace_period=0,
        silence_period=1,
        close_timeout=CLOSE_TIMEOUT,
        clock=clock,
    )
    hung = FakeConn("hung", on_close=hang)
    other = FakeConn("other", on_close=hang)
    returned: list[int] = []

    async def close_manager(n: int) -> None:
        await manager.aclose()
        returned.append(n)

    async with guarded(manager, clock):
        await connect(manager, hung, other)  # a background trim starts; both closes hang
        await settle()
        assert manager.get_info().closing_count == 2
        async with anyio.create_task_group() as tg:
            with releasing(clock):
                tg.start_soon(close_manager, 1)
                tg.start_soon(close_manager, 2)
                await settle()
                assert not returned, "aclose() returned while closes were running"
                clock.advance(CLOSE_TIMEOUT)
                await settle()
                assert sorted(returned) == [1, 2]
        await manager.aclose()  # a third call returns at once
    info = manager.get_info()
    assert info.closed
    assert (info.close_failures, info.closed_conns) == (2, 0)
    assert_holds(manager, [hung, other])
    # Notifications after aclose() are counted, not raised, and change nothing.
    manager.notifee().disconnected(hung)
    assert manager.get_info().ignored_notifications == 1
    assert_holds(manager, [hung, other])


async def test_aclose_called_from_inside_a_close() -> None:
    clock = FakeClock()
    manager = ConnManager(low_water=0, high_water=2, grace_period=0, clock=clock)
    closers: list[FakeConn] = []

    async def close_the_manager(conn: FakeConn) -> None:
        closers.append(conn)
        await manager.aclose()

    with anyio.fail_after(10):  # a guard against the deadlock this test is about
        async with manager:
            notifiee = manager.notifee()
            conns = [
                FakeConn(f"p{i}", notifiee=notifiee, on_close=close_the_manager) for i in range(3)
            ]
            for conn in conns:
                notifiee.connected(conn)
            await manager.flush()
            await settle()
            assert manager.get_info().closed
    assert closers  # the background trim ran the closes, and they closed the manager
    assert all(conn.close_calls <= 1 for conn in conns)
    with pytest.raises(ManagerClosedError):
        await manager.trim_open_conns()
