"""Seeing what the manager does: trim subscriptions, the last result, `explain` and
`preview_trim`.

Every trim, background, explicit or started by the bounded count's ceiling, ends in a
`TrimResult` that says what started it and what became of each victim. A subscriber reads
them in order, loses the oldest (and counts them) when it falls behind, and never slows the
manager. `explain(peer)` says why a peer would or would not be closed now, and
`preview_trim()` what a trim would close, changing nothing; a Hypothesis property checks
over random tables that both agree with what the next trim really does.

Every test runs on asyncio and trio with a `FakeClock`: "later" is `clock.advance` followed
by `settle()`, never a real sleep.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from asyncconnmgr import (
    OUTCOMES,
    Candidate,
    ConnManager,
    Direction,
    ManagerInfo,
    PeerStatus,
    TrimResult,
    TrimSubscription,
)
from asyncconnmgr._models import Victim, closed_victims
from asyncconnmgr.testing import FakeClock, FakeConn, settle

from .util import Gate

pytestmark = pytest.mark.anyio

#: A real-time bound on each test, so that a defect shows as a failure rather than a hang.
#: Nothing waits for it: every timer here runs on the FakeClock.
HANG_GUARD = 10.0


# --- helpers ---------------------------------------------------------------------------------


@asynccontextmanager
async def running(clock: FakeClock, **config: Any) -> AsyncIterator[ConnManager]:
    """A running manager on `clock`: grace 0, silence 10 s, no bounded count unless given.

    If the body fails, the clock jumps far ahead so that hung closes end and the failure is
    reported instead of a hang.
    """
    config.setdefault("grace_period", 0)
    config.setdefault("silence_period", 10)
    config.setdefault("close_timeout", 5)
    config.setdefault("bounded_count", False)
    with anyio.fail_after(HANG_GUARD):
        async with ConnManager(clock=clock, **config) as manager:
            try:
                yield manager
            except BaseException:
                clock.advance(3600)
                raise
            manager._check_invariants()


def connect_conns(manager: ConnManager, values: Mapping[FakeConn, int]) -> None:
    """Tags each connection's peer with its value, then reports the connection.

    Tag and `connected` come with no checkpoint between them, so the temporary entry that
    the tag creates becomes the peer's entry before the reaper could take it (grace is 0).
    """
    notifiee = manager.notifee()
    for conn, value in values.items():
        conn.notifiee = notifiee
        manager.tag_peer(conn.remote_peer, "value", value)
        notifiee.connected(conn)


def connect(
    manager: ConnManager,
    values: Mapping[str, int],
    *,
    direction: Direction = Direction.INBOUND,
    streams: int = 0,
) -> list[FakeConn]:
    """One connection for each peer, whose value is `values[peer]` (see `connect_conns`)."""
    conns = {
        FakeConn(peer, direction=direction, num_streams=streams): value
        for peer, value in values.items()
    }
    connect_conns(manager, conns)
    return list(conns)


async def one_trim(manager: ConnManager, peer: str) -> TrimResult:
    """Connects `peer` (value 0) and runs an explicit trim (which, at low water 0, closes it)."""
    connect(manager, {peer: 0})
    return await manager.trim_open_conns()


async def take(results: TrimSubscription) -> list[TrimResult]:
    """What the subscription holds now, read through its iterator (never waits)."""
    return [await results.__anext__() for _ in range(len(results))]


class Reader:
    """Reads a subscription with `async for` in a task of its own."""

    def __init__(self) -> None:
        self.seen: list[TrimResult] = []
        self.ended = False

    async def run(self, results: TrimSubscription) -> None:
        async for result in results:
            self.seen.append(result)
        self.ended = True


async def fail(conn: FakeConn) -> None:
    raise ConnectionError(f"cannot close {conn.remote_peer}")


async def hang(conn: FakeConn) -> None:
    await anyio.sleep_forever()


class AbortableConn(FakeConn):
    """A FakeConn with the optional `abort()` that the manager calls on a stuck close."""

    aborted = False

    def abort(self) -> None:
        self.aborted = True


def peers_of(result: TrimResult) -> list[Hashable]:
    return [victim.peer for victim in result.victims]


# --- subscriptions ---------------------------------------------------------------------------


async def test_a_subscriber_sees_background_and_explicit_trims_in_order() -> None:
    clock = FakeClock()
    async with (
        running(clock, low_water=2, high_water=4) as manager,
        anyio.create_task_group() as tg,
    ):
        reader = Reader()
        with manager.subscribe() as results:
            tg.start_soon(reader.run, results)
            # Five connections exceed high water: a background trim closes the three least
            # valued peers.
            connect(manager, {"a0": 0, "a1": 1, "a2": 2, "a3": 3, "a4": 4})
            await settle()
            first = manager.last_trim_result
            # An explicit trim goes down to low water whatever high water says.
            connect(manager, {"b": 10})
            explicit = await manager.trim_open_conns()
            # Over high water again within the silence period: the background trim waits
            # for the period to end.
            clock.advance(1)
            connect(manager, {"c0": 5, "c1": 6, "c2": 7})
            await settle()
            assert len(reader.seen) == 2
            clock.advance(9)
            await settle()
        await settle()

    assert reader.ended
    assert [r.trigger for r in reader.seen] == ["background", "explicit", "background"]
    assert [r.started_at for r in reader.seen] == [0, 0, 10]
    assert [peers_of(r) for r in reader.seen] == [["a0", "a1", "a2"], ["a3"], ["a4", "c0", "c1"]]
    assert [[(v.value, v.conns, v.outcome) for v in r.victims] for r in reader.seen] == [
        [(0, 1, "closed"), (1, 1, "closed"), (2, 1, "closed")],
        [(3, 1, "closed")],
        [(4, 1, "closed"), (5, 1, "closed"), (6, 1, "closed")],
    ]
    assert [dict(r.outcomes) for r in reader.seen] == [{"closed": 3}, {"closed": 1}, {"closed": 3}]
    assert reader.seen[0] == first
    assert reader.seen[1] == explicit


async def test_a_ceiling_trim_is_seen_with_its_trigger() -> None:
    clock = FakeClock()
    async with running(clock, low_water=2, high_water=4, bounded_count=True, ceiling=6) as manager:
        assert manager.get_info().ceiling == 6
        with manager.subscribe() as results:
            connect(manager, {"a0": 0, "a1": 1, "a2": 2, "a3": 3, "a4": 4})
            await settle()
            clock.advance(1)
            # Above high water but not the ceiling: the next trim waits for the silence period.
            connect(manager, {"b0": 5, "b1": 6, "b2": 7})
            await settle()
            assert len(results) == 1
            # Above the ceiling: a trim starts at once, silence period or not.
            connect(manager, {"c0": 8, "c1": 9})
            await settle()
            clock.advance(9)  # the silence period ends; the count is back under high water
            await settle()
            seen = await take(results)

    assert [(r.trigger, r.started_at) for r in seen] == [("background", 0), ("ceiling", 1)]
    assert [peers_of(r) for r in seen] == [["a0", "a1", "a2"], ["a3", "a4", "b0", "b1", "b2"]]
    assert seen[1].outcomes == {"closed": 5}


def test_victims_made_a_column_at_a_time_are_what_the_constructor_makes() -> None:
    # A trim whose closes all succeeded makes its victims without the generated __init__:
    # that holds only while Victim has nothing for __init__ to run.
    for field in attrs.fields(Victim):
        assert field.validator is None, field.name
        assert field.converter is None, field.name
        assert not isinstance(field.default, type(attrs.Factory(list))), field.name
    assert attrs.fields(Victim)[3].name == "outcome"  # the column closed_victims fills
    made = closed_victims(["a", "b"], [1, -2], [1, 3], [None, (1, "x")])
    assert made == (Victim("a", 1, 1, "closed", None), Victim("b", -2, 3, "closed", (1, "x")))
    assert [hash(victim) for victim in made] == [
        hash(Victim("a", 1, 1)),
        hash(Victim("b", -2, 3, "closed", (1, "x"))),
    ]
    assert closed_victims([], [], [], []) == ()


async def test_each_victim_says_what_became_of_it_and_why_it_was_chosen() -> None:
    clock = FakeClock()
    stuck = FakeConn("stuck", on_close=hang)
    good = FakeConn("good")
    failing = FakeConn("failing", on_close=fail)
    spared = FakeConn("spared")
    aborted = AbortableConn("aborted", on_close=hang)
    late = FakeConn("late")
    kept = FakeConn("kept")
    order = [stuck, good, failing, spared, aborted, late, kept]
    returned: list[TrimResult] = []

    async def trim() -> None:
        returned.append(await manager.trim_open_conns(deadline=7))

    async with running(clock, low_water=1, high_water=100, close_concurrency=1) as manager:
        with manager.subscribe() as results:
            connect_conns(manager, {conn: value for value, conn in enumerate(order)})
            await manager.flush()
            async with anyio.create_task_group() as tg:
                tg.start_soon(trim)
                await settle()  # the first close hangs
                manager.protect("spared", "late-protection")
                clock.advance(5)  # it times out; the next three go; then one more hangs
                await settle()
                clock.advance(2)  # the caller's deadline: no close starts after this
                await settle()
                clock.advance(3)  # the hung close times out and is aborted
                await settle()
            (result,) = returned
            assert await take(results) == [result]
            info = manager.get_info()

    assert [(v.peer, v.outcome) for v in result.victims] == [
        ("stuck", "timed_out"),
        ("good", "closed"),
        ("failing", "failed"),
        ("spared", "spared"),
        ("aborted", "aborted"),
        ("late", "not_started"),
    ]
    # The default policy's reason is its key: value, busy, dialled by us, streams, -first_seen.
    reasons = [v.reason for v in result.victims]
    assert all(isinstance(reason, tuple) for reason in reasons)
    assert [reason[:5] for reason in reasons if isinstance(reason, tuple)] == [
        (value, False, False, 0, 0.0) for value in range(6)
    ]
    assert result.outcomes == dict.fromkeys(OUTCOMES, 1)
    assert (result.closed, result.failed, result.cut_short) == (2, 2, True)
    assert (result.target, result.trigger) == (6, "explicit")
    assert good.closed
    assert aborted.aborted
    assert late.close_calls == spared.close_calls == kept.close_calls == 0
    # What stayed open is counted: the timed-out, failed, spared, unstarted and kept ones.
    assert (info.conn_count, info.closing_count) == (5, 0)


class ByValue:
    """A v0.1 policy: only a `sort_key`."""

    def sort_key(self, candidate: Candidate) -> tuple[str, int]:
        return ("value", candidate.value)


class Youngest:
    """A policy with `select` and no `reason`."""

    def select(
        self, candidates: Sequence[Candidate], target: int, now: float
    ) -> Iterable[Candidate]:
        return sorted(candidates, key=lambda candidate: -candidate.first_seen)


@pytest.mark.parametrize(
    ("policy", "reasons"),
    [
        (ByValue(), [("value", 1), ("value", 2), ("value", 0)]),
        (Youngest(), [None, None, None]),
    ],
)
async def test_a_victims_reason_is_what_the_policy_ordered_it_by(
    policy: object, reasons: list[object]
) -> None:
    clock = FakeClock()
    config = {"bounded_count": True, "grace_budget": 0, "grace_period": 10, "policy": policy}
    async with running(clock, low_water=1, high_water=100, **config) as manager:
        connect(manager, {"old1": 1, "old2": 2, "old3": 3})
        await manager.flush()
        clock.advance(11)
        connect(manager, {"young": 0})  # in grace, beyond the budget: closed after the others
        await manager.flush()
        preview = manager.preview_trim()
        result = await manager.trim_open_conns()
    assert [(v.peer, v.reason) for v in result.victims] == [
        ("old1", reasons[0]),
        ("old2", reasons[1]),
        ("young", reasons[2]),
    ]
    assert [v.reason for v in preview.victims] == reasons


async def test_a_cancelled_trim_is_seen_with_its_unstarted_victims() -> None:
    clock = FakeClock()
    gate = Gate()
    async with running(clock, low_water=0, high_water=100, close_concurrency=1) as manager:
        with manager.subscribe() as results:
            first = FakeConn("q0", on_close=gate)
            rest = connect(manager, {"q1": 1, "q2": 2})
            connect_conns(manager, {first: 0})
            await manager.flush()
            cancelled: list[bool] = []
            caller_scope: list[anyio.CancelScope] = []

            async def trim() -> None:
                with anyio.CancelScope() as scope:
                    caller_scope.append(scope)
                    await manager.trim_open_conns()
                cancelled.append(scope.cancelled_caught)

            async with anyio.create_task_group() as tg:
                tg.start_soon(trim)
                await settle()
                caller_scope[0].cancel()  # the only caller leaves while q0's close runs
                await settle()
                gate.open()
            assert cancelled == [True]
            seen = await take(results)

    assert seen == [manager.last_trim_result]
    (result,) = seen
    assert [(v.peer, v.outcome) for v in result.victims] == [
        ("q0", "closed"),
        ("q1", "not_started"),
        ("q2", "not_started"),
    ]
    assert result.cut_short
    assert result.outcomes == {"closed": 1, "not_started": 2}
    assert [conn.close_calls for conn in rest] == [0, 0]


async def test_a_subscriber_that_falls_behind_loses_the_oldest_and_counts_them() -> None:
    clock = FakeClock()
    async with running(clock, low_water=0, high_water=100) as manager:
        with manager.subscribe(max_buffer=2) as results:
            returned = [await one_trim(manager, f"p{i}") for i in range(5)]
            assert (len(results), results.lost) == (2, 3)
            assert await take(results) == returned[3:]
            # Reading made room: the next result arrives and nothing more is lost.
            later = await one_trim(manager, "p5")
            assert await take(results) == [later]
            assert results.lost == 3
    assert [peers_of(r) for r in returned] == [[f"p{i}"] for i in range(5)]


async def test_several_subscribers_at_once() -> None:
    clock = FakeClock()
    async with running(clock, low_water=0, high_water=100) as manager:
        stalled = manager.subscribe(max_buffer=1)
        reader = Reader()
        async with anyio.create_task_group() as tg:
            with manager.subscribe() as reading:
                tg.start_soon(reader.run, reading)
                returned = [await one_trim(manager, "p0"), await one_trim(manager, "p1")]
                with manager.subscribe() as late:
                    returned += [await one_trim(manager, "p2"), await one_trim(manager, "p3")]
                    await settle()
                    # A subscription sees only the trims that end while it is open.
                    assert await take(late) == returned[2:]
                    assert late.lost == 0
                await settle()
                assert reader.seen == returned
        assert reader.ended
        assert stalled.lost == 3
        assert await take(stalled) == returned[3:]
        stalled.close()


async def test_two_tasks_reading_one_subscription_share_its_results() -> None:
    clock = FakeClock()
    readers = [Reader(), Reader()]
    async with (
        running(clock, low_water=0, high_water=100) as manager,
        anyio.create_task_group() as tg,
    ):
        with manager.subscribe() as results:
            for reader in readers:
                tg.start_soon(reader.run, results)
            await settle()
            returned = [await one_trim(manager, f"p{i}") for i in range(4)]
            await settle()
        await settle()
        # Leaving the `with` ends both iterations, not only the one that waited last.
        assert [reader.ended for reader in readers] == [True, True]
    # Each result reached exactly one of them, and each saw its share in order.
    shared = readers[0].seen + readers[1].seen
    assert sorted(shared, key=returned.index) == returned
    for reader in readers:
        assert reader.seen == sorted(reader.seen, key=returned.index)


async def test_a_reader_cancelled_while_waiting_takes_nothing() -> None:
    clock = FakeClock()
    reader = Reader()
    scope = anyio.CancelScope()

    async def read(results: TrimSubscription) -> None:
        with scope:
            await reader.run(results)

    async with (
        running(clock, low_water=0, high_water=100) as manager,
        anyio.create_task_group() as tg,
    ):
        with manager.subscribe() as results:
            tg.start_soon(read, results)
            await settle()
            scope.cancel()
            await settle()
            returned = await one_trim(manager, "p")
            assert (reader.seen, reader.ended) == ([], False)
            assert await take(results) == [returned]


async def churn(stalled: int) -> tuple[list[TrimResult], ManagerInfo, list[int]]:
    """Runs background and explicit trims through rounds of churn, with `stalled`
    subscriptions that are never read; returns every result, the counters and how often
    each connection's close was called."""
    clock = FakeClock()
    conns: list[FakeConn] = []
    async with running(clock, low_water=4, high_water=8, silence_period=5) as manager:
        never_read = [manager.subscribe(max_buffer=1) for _ in range(stalled)]
        seen: list[TrimResult] = []
        with manager.subscribe() as watching:
            for round_ in range(6):
                values = {f"r{round_}-{i}": (i * 7 + round_) % 5 for i in range(6)}
                conns += connect(manager, values)
                await settle()
                if round_ % 2:
                    await manager.trim_open_conns()
                clock.advance(5)
                await settle()
                seen += await take(watching)
            info = manager.get_info()
        for subscription in never_read:
            # Memory stays bounded by max_buffer; the rest was counted as lost.
            assert (len(subscription), subscription.lost) == (1, len(seen) - 1)
            subscription.close()
    return seen, info, [conn.close_calls for conn in conns]


async def test_a_subscriber_that_never_reads_changes_nothing_for_the_manager() -> None:
    baseline = await churn(stalled=0)
    with_stalled = await churn(stalled=3)
    assert with_stalled == baseline
    seen = baseline[0]
    assert {r.trigger for r in seen} == {"background", "explicit"}
    assert len(seen) >= 6


async def test_the_iteration_ends_when_the_manager_closes() -> None:
    clock = FakeClock()
    manager = ConnManager(low_water=0, high_water=100, grace_period=0, clock=clock)
    reader = Reader()
    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            early = manager.subscribe()  # before the manager runs
            tg.start_soon(reader.run, early)
            async with manager:
                returned = await one_trim(manager, "p")
                await settle()
                assert reader.seen == [returned]
                assert not reader.ended
            await settle()
            assert reader.ended  # aclose() ended the iteration; the task group can exit
    assert reader.seen == [returned]


async def test_subscribing_to_a_closed_manager_gives_an_iteration_that_has_ended() -> None:
    clock = FakeClock()
    async with running(clock, low_water=0, high_water=100) as manager:
        await one_trim(manager, "p")
    with manager.subscribe() as results:
        assert [result async for result in results] == []
    assert results.lost == 0


async def test_leaving_the_with_stops_delivery() -> None:
    clock = FakeClock()
    reader = Reader()
    async with (
        running(clock, low_water=0, high_water=100) as manager,
        anyio.create_task_group() as tg,
    ):
        with manager.subscribe() as unread, manager.subscribe() as read:
            tg.start_soon(reader.run, read)
            first = await one_trim(manager, "a")
            await settle()
        await settle()
        assert reader.ended  # a reader waiting in `async for` is woken and ends
        second = await one_trim(manager, "b")
        await settle()
        assert reader.seen == [first]
        # What was buffered before leaving can still be read; nothing after it arrives.
        assert [result async for result in unread] == [first]
        assert len(read) == len(unread) == 0
        assert peers_of(second) == ["b"]


# --- the most recent result --------------------------------------------------------------------


async def test_last_trim_after_background_and_explicit_trims() -> None:
    clock = FakeClock()
    async with running(clock, low_water=2, high_water=4) as manager:
        assert manager.get_info().last_trim is None
        assert manager.last_trim_result is None
        with manager.subscribe() as results:
            connect(manager, {"a0": 0, "a1": 1, "a2": 2, "a3": 3, "a4": 4})
            await settle()
            background = manager.last_trim_result
            assert background is not None
            assert (background.trigger, background.started_at) == ("background", 0)
            assert peers_of(background) == ["a0", "a1", "a2"]
            assert manager.get_info().last_trim == 0

            clock.advance(3)
            connect(manager, {"b": 10})
            explicit = await manager.trim_open_conns()
            assert manager.last_trim_result == explicit
            assert (explicit.trigger, explicit.started_at, peers_of(explicit)) == (
                "explicit",
                3,
                ["a3"],
            )
            assert manager.get_info().last_trim == 3

            # The next background trim comes one silence period after the explicit one.
            clock.advance(1)
            connect(manager, {"c0": 5, "c1": 6, "c2": 7})
            await settle()
            assert manager.last_trim_result == explicit
            clock.advance(9)
            await settle()
            again = manager.last_trim_result
            assert again is not None
            assert (again.trigger, again.started_at) == ("background", 13)
            assert manager.get_info().last_trim == 13

            # A trim that closes nothing is a trim too.
            clock.advance(1)
            nothing = await manager.trim_open_conns()
            assert manager.last_trim_result == nothing
            assert (nothing.victims, nothing.closed, nothing.started_at) == ((), 0, 14)
            assert manager.get_info().last_trim == 14
            assert await take(results) == [background, explicit, again, nothing]


# --- explain -----------------------------------------------------------------------------------


async def test_explain_an_unknown_and_a_temporary_peer() -> None:
    clock = FakeClock()
    async with running(clock, low_water=0, high_water=100, grace_period=10) as manager:
        assert manager.explain("nobody") == PeerStatus("nobody", "unknown")
        clock.advance(3)
        manager.tag_peer("early", "dht", 4)
        assert manager.explain("early") == PeerStatus("early", "temporary", value=4, until=13)
        clock.advance(10)
        await settle()
        # Reaped when it said it would be.
        assert manager.get_tag_info("early") is None
        assert manager.explain("early") == PeerStatus("early", "unknown")


async def test_explain_a_protected_peer() -> None:
    clock = FakeClock()
    async with running(clock, low_water=0, high_water=100) as manager:
        notifiee = manager.notifee()
        conns = [
            FakeConn("p", direction=Direction.OUTBOUND, num_streams=2, notifiee=notifiee),
            FakeConn("p", direction=Direction.INBOUND, num_streams=1, notifiee=notifiee),
        ]
        for conn in conns:
            notifiee.connected(conn)
        manager.tag_peer("p", "app", -5)
        manager.protect("p", "relay")
        manager.protect("p", "dht")
        assert manager.explain("p") == PeerStatus(
            "p",
            "protected",
            value=-5,
            conns=2,
            streams=3,
            outbound=1,
            protected_by=("dht", "relay"),
        )
        # Protected before it ever connects: protected, not unknown.
        manager.protect("later", "bootstrap")
        assert manager.explain("later") == PeerStatus(
            "later", "protected", protected_by=("bootstrap",)
        )
        result = await manager.trim_open_conns()
        assert result.victims == ()
        manager.unprotect("p", "relay")
        assert manager.explain("p").protected_by == ("dht",)
        manager.unprotect("p", "dht")
        assert manager.explain("p").state == "candidate"


async def test_explain_a_peer_in_grace() -> None:
    clock = FakeClock()
    async with running(clock, low_water=0, high_water=100, grace_period=10) as manager:
        clock.advance(5)
        connect(manager, {"g": 3}, direction=Direction.OUTBOUND, streams=2)
        status = manager.explain("g")
        assert status == PeerStatus(
            "g", "in_grace", value=3, conns=1, streams=2, outbound=1, until=15
        )
        assert (await manager.trim_open_conns()).victims == ()
        clock.advance(10)
        await settle()
        status = manager.explain("g")
        assert (status.state, status.rank, status.would_close) == ("candidate", 0, True)


async def test_explain_a_peer_being_closed() -> None:
    clock = FakeClock()
    gate = Gate()
    async with running(clock, low_water=0, high_water=100) as manager:
        connect_conns(manager, {FakeConn("v", on_close=gate): 2})
        await manager.flush()
        async with anyio.create_task_group() as tg:
            tg.start_soon(manager.trim_open_conns)
            await settle()
            assert manager.explain("v") == PeerStatus("v", "closing", value=2)
            gate.open()
        await settle()
        assert manager.explain("v") == PeerStatus("v", "unknown")


async def test_explain_candidates_rank_and_whether_the_next_trim_closes_them() -> None:
    clock = FakeClock()
    async with running(clock, low_water=2, high_water=100) as manager:
        connect(manager, {"a": 1})
        connect(manager, {"b": 1}, direction=Direction.OUTBOUND)
        busy = [FakeConn("c", num_streams=1), FakeConn("c", num_streams=1)]
        connect_conns(manager, dict.fromkeys(busy, 5))
        connect(manager, {"d": 10, "guarded": 0})
        manager.protect("guarded", "relay")
        await manager.flush()
        # Five eligible connections, low water 2: the trim closes a (1), b (1, but dialled by
        # us) and c (value 5, two connections), which covers the three.
        statuses = {peer: manager.explain(peer) for peer in "abcd"}
        assert statuses == {
            "a": PeerStatus("a", "candidate", 1, 1, rank=0, candidates=4, would_close=True),
            "b": PeerStatus(
                "b", "candidate", 1, 1, outbound=1, rank=1, candidates=4, would_close=True
            ),
            "c": PeerStatus(
                "c", "candidate", 5, 2, streams=2, rank=2, candidates=4, would_close=True
            ),
            "d": PeerStatus("d", "candidate", 10, 1, rank=3, candidates=4, would_close=False),
        }
        result = await manager.trim_open_conns()
        assert peers_of(result) == ["a", "b", "c"]
        assert manager.explain("d") == PeerStatus(
            "d", "candidate", 10, 1, rank=0, candidates=1, would_close=False
        )


async def test_explain_a_peer_in_grace_beyond_the_budget() -> None:
    clock = FakeClock()
    config = {"bounded_count": True, "grace_budget": 1, "grace_period": 10}
    async with running(clock, low_water=1, high_water=100, **config) as manager:
        connect(manager, {"settled": 9})
        await manager.flush()
        clock.advance(11)
        connect(manager, {"first": 0})
        await manager.flush()
        clock.advance(1)
        connect(manager, {"second": 0})
        await settle()
        # More in grace than the budget: the peers in grace are candidates, after every
        # eligible one, and the policy's order says who keeps the grace (the default: the
        # oldest; the youngest is closed first).
        assert manager.explain("settled") == PeerStatus(
            "settled", "candidate", 9, 1, rank=0, candidates=3, would_close=False
        )
        assert manager.explain("second") == PeerStatus(
            "second", "candidate", 0, 1, rank=1, candidates=3, would_close=True
        )
        assert manager.explain("first") == PeerStatus(
            "first", "candidate", 0, 1, rank=2, candidates=3, would_close=False
        )
        result = await manager.trim_open_conns()
        assert peers_of(result) == ["second"]


# --- preview_trim ------------------------------------------------------------------------------


async def test_preview_closes_nothing_and_changes_nothing() -> None:
    clock = FakeClock()
    async with running(clock, low_water=2, high_water=100, grace_period=10) as manager:
        conns = connect(manager, {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5})
        manager.protect("e", "relay")
        await manager.flush()
        clock.advance(10)
        conns += connect(manager, {"young": 0})
        manager.tag_peer("early", "t", 1)
        await settle()
        with manager.subscribe() as results:
            info = manager.get_info()
            tags = {peer: manager.get_tag_info(peer) for peer in ("a", "e", "young", "early")}

            preview = manager.preview_trim()

            assert manager.get_info() == info
            assert {peer: manager.get_tag_info(peer) for peer in tags} == tags
            assert [conn.close_calls for conn in conns] == [0] * len(conns)
            assert manager.last_trim_result is None
            assert len(results) == 0  # a preview is not a trim
            assert preview.trigger == "preview"
            assert [(v.peer, v.outcome) for v in preview.victims] == [
                ("a", "not_started"),
                ("b", "not_started"),
            ]
            assert preview.outcomes == {"not_started": 2}
            assert (preview.closed, preview.failed, preview.target) == (0, 0, 2)

            result = await manager.trim_open_conns()
            assert [(v.peer, v.value, v.conns, v.reason) for v in result.victims] == [
                (v.peer, v.value, v.conns, v.reason) for v in preview.victims
            ]
            assert [v.outcome for v in result.victims] == ["closed", "closed"]


async def test_preview_and_explain_close_nobody_when_trimming_is_disabled() -> None:
    clock = FakeClock()
    async with running(clock, low_water=0, high_water=0) as manager:
        conns = connect(manager, {"a": 0, "b": 1})
        await manager.flush()
        assert manager.preview_trim().victims == ()
        status = manager.explain("a")
        assert (status.state, status.would_close) == ("candidate", False)
        assert (await manager.trim_open_conns()).victims == ()
        assert [conn.close_calls for conn in conns] == [0, 0]


# --- preview and explain agree with the next trim (a property) -------------------------------

NOW = 20
GRACE = 10


@attrs.frozen
class PeerSpec:
    """One peer of a random table: its tags, protections, connections (none: a temporary
    entry) and when it connects (or is tagged)."""

    tags: tuple[int, ...]
    protections: tuple[str, ...]
    conns: tuple[tuple[Direction, int], ...]
    at: int

    @property
    def value(self) -> int:
        return sum(self.tags)

    @property
    def in_grace(self) -> bool:
        return self.at > NOW - GRACE


@attrs.frozen
class TableSpec:
    low_water: int
    disabled: bool
    grace_budget: int | None
    peers: tuple[PeerSpec, ...]


CONNS = st.lists(
    st.tuples(st.sampled_from(list(Direction)), st.integers(0, 2)), min_size=1, max_size=3
)
PEERS = st.builds(
    PeerSpec,
    tags=st.lists(st.integers(-3, 3), max_size=2).map(tuple),
    protections=st.sampled_from([(), (), (), (), (), ("a",), ("a", "b")]),
    # One peer in five is only tagged: a temporary entry.
    conns=st.sampled_from([True, True, True, True, False]).flatmap(
        lambda connected: CONNS.map(tuple) if connected else st.just(())
    ),
    # Mostly past grace (connected by NOW - GRACE), some in it.
    at=st.integers(0, NOW - GRACE) | st.integers(0, NOW),
)
TABLES = st.builds(
    TableSpec,
    low_water=st.sampled_from([0, 0, 1, 2, 4]),
    disabled=st.sampled_from([False] * 7 + [True]),
    grace_budget=st.none() | st.integers(0, 4),
    peers=st.lists(PEERS, min_size=3, max_size=10).map(tuple),
)


async def build_table(manager: ConnManager, clock: FakeClock, spec: TableSpec) -> list[FakeConn]:
    """Drives the manager to the table `spec` describes, at time NOW."""
    notifiee = manager.notifee()
    conns: list[FakeConn] = []
    for t in range(NOW + 1):
        clock.advance(t - clock.now())
        await settle()
        for index, peer_spec in enumerate(spec.peers):
            if peer_spec.at != t:
                continue
            peer = f"p{index}"
            for number, value in enumerate(peer_spec.tags or (0,)):
                manager.tag_peer(peer, f"t{number}", value)
            for tag in peer_spec.protections:
                manager.protect(peer, tag)
            for direction, streams in peer_spec.conns:
                conn = FakeConn(peer, direction=direction, num_streams=streams, notifiee=notifiee)
                notifiee.connected(conn)
                conns.append(conn)
        await manager.flush()  # applied now, at time t
    await settle()
    return conns


def expected_state(spec: TableSpec, peer_spec: PeerSpec) -> set[str]:
    if not peer_spec.conns:
        if peer_spec.in_grace:
            return {"temporary"}
        return {"protected"} if peer_spec.protections else {"unknown"}
    if peer_spec.protections:
        return {"protected"}
    if peer_spec.in_grace:
        return {"in_grace"} if spec.grace_budget is None else {"in_grace", "candidate"}
    return {"candidate"}


async def check_preview_and_explain(spec: TableSpec) -> None:
    clock = FakeClock()
    manager = ConnManager(
        low_water=0 if spec.disabled else spec.low_water,
        high_water=0 if spec.disabled else 1000,
        grace_period=GRACE,
        silence_period=10,
        bounded_count=spec.grace_budget is not None,
        grace_budget=spec.grace_budget,
        clock=clock,
    )
    names = [f"p{index}" for index in range(len(spec.peers))]
    with anyio.fail_after(HANG_GUARD):
        async with manager:
            conns = await build_table(manager, clock, spec)
            info = manager.get_info()
            tags = {peer: manager.get_tag_info(peer) for peer in names}

            preview = manager.preview_trim()
            statuses = {peer: manager.explain(peer) for peer in names}

            assert manager.get_info() == info
            assert {peer: manager.get_tag_info(peer) for peer in names} == tags
            assert not any(conn.close_calls for conn in conns)
            result = await manager.trim_open_conns()

    # The preview named the victims of the trim, in its order, with the same details.
    victims = peers_of(result)
    assert peers_of(preview) == victims
    assert [(v.value, v.conns, v.reason) for v in preview.victims] == [
        (v.value, v.conns, v.reason) for v in result.victims
    ]
    assert preview.target == result.target
    assert {conn.remote_peer for conn in conns if conn.close_calls} == set(victims)
    if spec.disabled:
        assert victims == []

    # explain: would_close is true exactly for the victims; ranks order the candidates.
    assert {peer for peer, status in statuses.items() if status.would_close} == set(victims)
    candidates = {peer: s for peer, s in statuses.items() if s.state == "candidate"}
    ranks: dict[str, int] = {}
    for peer, status in candidates.items():
        assert status.rank is not None
        assert status.candidates == len(candidates)
        ranks[peer] = status.rank
    assert sorted(ranks.values()) == list(range(len(candidates)))
    victim_ranks = [ranks[str(peer)] for peer in victims]
    assert victim_ranks == sorted(victim_ranks)
    # Eligible peers come before peers in grace beyond the budget; in each group, the trim
    # closes the candidates ranked first.
    by_peer = dict(zip(names, spec.peers, strict=True))
    eligible = [peer for peer in candidates if not by_peer[peer].in_grace]
    over_budget = [peer for peer in candidates if by_peer[peer].in_grace]
    assert max((ranks[peer] for peer in eligible), default=-1) < min(
        (ranks[peer] for peer in over_budget), default=len(candidates)
    )
    event(f"victims: {min(len(victims), 3)}{'+' if len(victims) >= 3 else ''}")
    closed_in_grace = bool(set(victims) & set(over_budget))
    event(f"in-grace candidates: {bool(over_budget)}, of them closed: {closed_in_grace}")
    for group in (eligible, over_budget):
        ordered = sorted(group, key=ranks.__getitem__)
        chosen = [peer for peer in ordered if statuses[peer].would_close]
        assert chosen == ordered[: len(chosen)]

    # Every peer's state, value and connections are what the table holds.
    for peer, peer_spec in by_peer.items():
        status = statuses[peer]
        assert status.state in expected_state(spec, peer_spec), (peer, peer_spec, status)
        if not peer_spec.conns and not peer_spec.in_grace:
            # Its tags were reaped with its temporary entry: at most a protection is left.
            assert status.protected_by == peer_spec.protections
            continue
        assert status.value == peer_spec.value
        if status.state == "temporary":
            assert status.until == peer_spec.at + GRACE
            continue
        assert status.conns == len(peer_spec.conns)
        outbound = sum(1 for way, _ in peer_spec.conns if way is Direction.OUTBOUND)
        assert status.outbound == outbound
        if status.state == "protected":
            assert status.protected_by == peer_spec.protections
        if status.state in ("candidate", "in_grace"):
            assert status.streams == sum(streams for _, streams in peer_spec.conns)
        if status.state == "in_grace":
            assert status.until == peer_spec.at + GRACE


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=40, deadline=None)
@given(spec=TABLES)
def test_preview_and_explain_agree_with_the_next_trim(backend: str, spec: TableSpec) -> None:
    anyio.run(check_preview_and_explain, spec, backend=backend)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_buffer", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (1.5, TypeError),
        ("8", TypeError),
        (True, TypeError),
        (None, TypeError),
    ],
)
async def test_subscribe_rejects_a_max_buffer_that_is_not_a_positive_int(
    max_buffer: object, error: type[Exception]
) -> None:
    clock = FakeClock()
    async with running(clock, low_water=0, high_water=100) as manager:
        with manager.subscribe() as results:
            info = manager.get_info()
            with pytest.raises(error, match="max_buffer"):
                manager.subscribe(max_buffer=max_buffer)  # type: ignore[arg-type]
            assert manager.get_info() == info
            returned = await one_trim(manager, "p")
            assert await take(results) == [returned]
            assert results.lost == 0


@pytest.mark.parametrize("peer", [[1], {"a": 1}, {"a"}, None])
async def test_explain_rejects_an_unhashable_peer(peer: object) -> None:
    clock = FakeClock()
    async with running(clock, low_water=0, high_water=100) as manager:
        connect(manager, {"p": 1})
        await manager.flush()
        info = manager.get_info()
        status = manager.explain("p")
        with pytest.raises(TypeError, match="peer"):
            manager.explain(peer)
        assert manager.get_info() == info
        assert manager.explain("p") == status
