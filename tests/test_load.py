"""Load: a million notifications lose nothing and leak nothing; a big table trims right.

Memory is measured with tracemalloc, which sees every Python allocation (and slows them
down, which is why the churn test is sized as it is). The bound is explained at the test.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
import weakref
from collections.abc import Hashable, Iterator
from contextlib import contextmanager

import anyio
import anyio.lowlevel
import pytest

from asyncconnmgr import ConnManager, Direction
from asyncconnmgr._ledger import REMEMBERED_CLOSES
from asyncconnmgr.testing import FakeClock, settle

pytestmark = pytest.mark.anyio


def task_ids() -> set[int]:
    return {task.id for task in anyio.get_running_tasks()}


class LoadConn:
    """A minimal `abc.Conn` (cheaper than FakeConn, which matters a million times over)."""

    __slots__ = ("__weakref__", "close_calls", "direction", "num_streams", "remote_peer")

    remote_addr = None

    def __init__(
        self, peer: Hashable, direction: Direction = Direction.INBOUND, num_streams: int = 0
    ) -> None:
        self.remote_peer = peer
        self.direction = direction
        self.num_streams = num_streams
        self.close_calls = 0

    async def close(self) -> None:
        self.close_calls += 1

    def __repr__(self) -> str:
        return f"<LoadConn {self.remote_peer!r}>"


@contextmanager
def traced() -> Iterator[None]:
    gc.collect()
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def traced_bytes() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


# --- a million notifications ----------------------------------------------------------------

CONNECTIONS = 500_000  # a million notifications
WARM_UP = 100_000  # the first fifth, before the baseline is taken (see MEMORY_BOUND)
WINDOW = 1_000  # connections open at once: the host yields to the loop every WINDOW
PEERS = 1_500  # fewer peers than connections: peers come and go and come back

#: Allowed growth of traced memory from the end of the warm-up to the end of the churn.
#: The warm-up brings every structure to its working size: dicts and the queue to what the
#: window needs, and any bounded memory the manager keeps of connections it has seen end
#: (so that a late notification is recognised) to its bound, which is well under WARM_UP.
#: What may still change is noise from the event loop and the allocator, a few KiB; anything
#: kept per connection would be at least 16 bytes * 400,000 = 6.4 MB, far above the bound.
MEMORY_BOUND = 64 * 1024


async def churn(manager: ConnManager, start: int, stop: int) -> None:
    """Opens and closes connections start..stop, WINDOW at a time, as fast as it can."""
    notifiee = manager.notifee()
    rng = random.Random(start)
    directions = (Direction.INBOUND, Direction.OUTBOUND)
    for base in range(start, stop, WINDOW):
        window = [
            LoadConn(i % PEERS, directions[i & 1], i & 3)
            for i in range(base, min(base + WINDOW, stop))
        ]
        for conn in window:
            notifiee.connected(conn)
        if base % (50 * WINDOW) == 0:
            await manager.flush()  # a sample: the count is exactly what was reported
            assert manager.get_info().conn_count == len(window)
        rng.shuffle(window)  # close in another order than opened
        for conn in window:
            notifiee.disconnected(conn)
        del window
        await anyio.lowlevel.checkpoint()


async def test_a_million_notifications_none_lost_nothing_leaked() -> None:
    clock = FakeClock()
    before = task_ids()
    manager = ConnManager(low_water=WINDOW * 4, high_water=WINDOW * 8, grace_period=10, clock=clock)
    with traced():
        async with manager:
            manager.tag_peer(0, "keep", 1)  # a temporary entry, converted and dropped
            await churn(manager, 0, WARM_UP)
            await manager.flush()
            await settle()
            baseline = traced_bytes()

            await churn(manager, WARM_UP, CONNECTIONS)
            await manager.flush()
            await settle()

            info = manager.get_info()
            assert (info.conn_count, info.peer_count, info.closing_count) == (0, 0, 0)
            assert info.queued_notifications == 0
            assert info.ignored_notifications == 0, "a notification was not recognised"
            assert info.temporary_count == 0
            assert info.trims == 0  # never above high water: this is notification throughput
            manager._check_invariants()
            grown = traced_bytes() - baseline
            closes = CONNECTIONS - WARM_UP
            assert grown < MEMORY_BOUND, f"{grown} bytes retained after {closes} more closes"
    assert task_ids() == before, "a task was left behind"


async def test_a_burst_without_yielding_is_applied_in_full() -> None:
    # The host never yields while it reports 100,000 connections and then their closes: the
    # queue holds everything and is applied in order, exactly once.
    clock = FakeClock()
    count = 100_000
    async with ConnManager(
        low_water=count, high_water=count, grace_period=10, clock=clock
    ) as manager:
        notifiee = manager.notifee()
        conns = [LoadConn(i % 30_000) for i in range(count)]
        for conn in conns:
            notifiee.connected(conn)
        assert manager.get_info().queued_notifications == count
        await manager.flush()
        info = manager.get_info()
        assert (info.conn_count, info.peer_count, info.trims) == (count, 30_000, 0)
        manager._check_invariants()
        for conn in reversed(conns):
            notifiee.disconnected(conn)
        for conn in conns[:10]:
            notifiee.disconnected(conn)  # ten duplicates, counted
        await manager.flush()
        info = manager.get_info()
        assert (info.conn_count, info.peer_count, info.ignored_notifications) == (0, 0, 10)
        manager._check_invariants()


# --- closes whose `disconnected` never comes --------------------------------------------------

SILENT_ROUND = 6_000
SILENT_ROUNDS = 30  # 180,000 closes: a few times any sane bound on what is remembered


async def test_trims_whose_disconnected_never_comes_stay_correct_and_bounded() -> None:
    # A host may never report the closes the manager makes; the manager then remembers the
    # connections it closed, so that a late report is recognised. That memory is bounded:
    # past its limit the oldest are forgotten, one for each new one, and the trims go on
    # closing exactly what they should. It holds them weakly: none is kept alive by it.
    clock = FakeClock()
    manager = ConnManager(
        low_water=0, high_water=10 * SILENT_ROUND, grace_period=0, close_concurrency=64, clock=clock
    )
    notifiee = manager.notifee()
    closed: list[weakref.ref[LoadConn]] = []
    async with manager:
        for round_ in range(SILENT_ROUNDS):
            conns = [LoadConn((round_, i)) for i in range(SILENT_ROUND)]
            for conn in conns:
                notifiee.connected(conn)
            await manager.flush()
            result = await manager.trim_open_conns()
            assert result.closed == SILENT_ROUND
            assert all(conn.close_calls == 1 for conn in conns)
            info = manager.get_info()
            assert (info.conn_count, info.peer_count, info.ignored_notifications) == (0, 0, 0)
            closed += [weakref.ref(conn) for conn in conns[::100]]
            del conns
        assert SILENT_ROUNDS * SILENT_ROUND > 2 * REMEMBERED_CLOSES  # well past the limit
        manager._check_invariants()
        gc.collect()
        assert [ref for ref in closed if ref() is not None] == []
        # A report that comes at last, for connections the host still holds, is expected.
        late = [LoadConn(("late", i)) for i in range(10)]
        for conn in late:
            notifiee.connected(conn)
        assert (await manager.trim_open_conns()).closed == 10
        for conn in late:
            notifiee.disconnected(conn)
        await manager.flush()
        assert manager.get_info().ignored_notifications == 0


# --- a 100,000-connection table, trimmed again and again ----------------------------------------

TABLE = 100_000
LOW = 80_000  # each trim closes a few thousand connections
GRACE = 60.0
ROUNDS = 5
TAG_NAMES = [f"t{i}" for i in range(10)]


class PeerModel:
    """What the test knows about one peer, kept by the test itself."""

    __slots__ = ("conns", "first_seen", "protected", "tags")

    def __init__(self, conns: list[LoadConn], first_seen: float) -> None:
        self.conns = conns
        self.first_seen = first_seen
        self.tags: dict[str, int] = {}
        self.protected = False

    def sort_key(self) -> tuple[int, bool, bool, int, float]:
        """The default policy's key (all but its private tie-breaker, the entry's age)."""
        streams = sum(conn.num_streams for conn in self.conns)
        outbound = any(conn.direction is Direction.OUTBOUND for conn in self.conns)
        return (sum(self.tags.values()), streams > 0, outbound, streams, -self.first_seen)


async def test_a_100k_table_trimmed_repeatedly_stays_consistent() -> None:
    rng = random.Random(843)
    clock = FakeClock(start=10_000)
    # High water above the table: only the explicit trims below close anything.
    manager = ConnManager(
        low_water=LOW, high_water=TABLE * 2, grace_period=GRACE, close_concurrency=64, clock=clock
    )
    notifiee = manager.notifee()
    model: dict[int, PeerModel] = {}
    next_peer = 0
    open_count = 0

    def tag(peer: int, name: str, value: int) -> None:
        manager.tag_peer(peer, name, value)
        model[peer].tags[name] = value

    def open_peer() -> None:
        nonlocal next_peer, open_count
        peer = next_peer
        next_peer += 1
        draw = rng.random
        conns = [LoadConn(peer, Direction.INBOUND, int(draw() * 4))]
        if draw() < 0.5:  # half the peers have a second, outbound connection
            conns.append(LoadConn(peer, Direction.OUTBOUND, int(draw() * 4)))
        model[peer] = PeerModel(conns, clock.now())
        open_count += len(conns)
        first = int(draw() * 10)
        for name in (first, (first + 3) % 10, (first + 7) % 10):  # 3 of t0..t9
            tag(peer, TAG_NAMES[name], int(draw() * 111) - 10)  # in [-10, 100]
        if draw() < 0.05:
            manager.protect(peer, "keep")
            model[peer].protected = True
        for conn in conns:
            notifiee.connected(conn)

    async with manager:
        for round_ in range(ROUNDS):
            # Refill to TABLE connections; the newest tenth is inside its grace period.
            while open_count < TABLE - TABLE // 10:
                open_peer()
            await manager.flush()
            clock.advance(GRACE + 1)
            while open_count < TABLE:
                open_peer()
            await manager.flush()
            await settle()
            # Retag a fifth of the peers at random; unprotect some.
            for peer in rng.sample(sorted(model), len(model) // 5):
                tag(peer, TAG_NAMES[rng.randrange(10)], rng.randint(-50, 150))
            for peer in rng.sample(sorted(model), len(model) // 50):
                manager.unprotect(peer, "keep")
                model[peer].protected = False

            now = clock.now()
            eligible = {
                peer
                for peer, entry in model.items()
                if not entry.protected and not entry.first_seen > now - GRACE
            }
            eligible_conns = sum(len(model[peer].conns) for peer in eligible)
            assert manager.get_info().conn_count == open_count

            result = await manager.trim_open_conns()

            closed = {peer for peer, entry in model.items() if entry.conns[0].close_calls}
            assert {victim.peer for victim in result.victims} == closed
            assert closed <= eligible, "a protected or in-grace peer was closed"
            closed_conns = sum(len(model[peer].conns) for peer in closed)
            assert result.target == eligible_conns - LOW
            assert (result.closed, result.failed) == (closed_conns, 0)
            # Whole peers, the shortest prefix of the policy order that covers the target.
            assert closed_conns >= result.target
            assert closed_conns - max(len(model[peer].conns) for peer in closed) < result.target
            worst_victim = max(model[peer].sort_key() for peer in closed)
            best_survivor = min(model[peer].sort_key() for peer in eligible - closed)
            assert worst_victim <= best_survivor, "victims not chosen in policy order"
            for victim in result.victims:
                assert isinstance(victim.peer, int)
                assert victim.value == sum(model[victim.peer].tags.values())
            for peer in closed:
                assert all(conn.close_calls == 1 for conn in model[peer].conns)
                open_count -= len(model.pop(peer).conns)
                assert manager.get_tag_info(peer) is None
            assert all(entry.conns[0].close_calls == 0 for entry in model.values())

            info = manager.get_info()
            assert info.conn_count == open_count
            assert (info.closing_count, info.closed_conns) == (0, info.closed_conns)
            assert info.peer_count == len(model)
            # A sample of the survivors, through the public API.
            for peer in rng.sample(sorted(model), 500):
                tag_info = manager.get_tag_info(peer)
                assert tag_info is not None
                assert dict(tag_info.tags) == model[peer].tags
                assert set(tag_info.conns) == set(model[peer].conns)
                assert tag_info.first_seen == model[peer].first_seen
            if round_ == ROUNDS - 1:
                manager._check_invariants()  # about a second at this size: once
