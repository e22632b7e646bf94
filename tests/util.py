"""The harness shared by the manager's tests: running a manager, feeding it, checking it.

Every helper works the same on asyncio and trio. "Later" always means `clock.advance`
followed by `settle()`, never a real sleep; `HANG_GUARD` only turns a defect that would hang
into a failure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio

from asyncconnmgr import ConnManager, Direction
from asyncconnmgr.abc import Notifiee
from asyncconnmgr.testing import FakeClock, FakeConn, settle

#: The close timeout `running()` gives a manager, on its FakeClock.
CLOSE_TIMEOUT = 5.0

#: A real-time bound on each test, so that a defect shows as a failure rather than a hang.
#: Nothing waits for it: every timer in these tests runs on the FakeClock.
HANG_GUARD = 30.0


class Boom(Exception):
    """An exception no library code raises, for callbacks and closes that fail."""


class Gate:
    """A close hook that blocks until released, recording what happened to each call.

    Use the gate itself (or `gate.hook`) as a `FakeConn`'s `on_close`.
    """

    def __init__(self) -> None:
        self.released = anyio.Event()
        self.started: list[FakeConn] = []
        self.cancelled: list[FakeConn] = []
        self.running = 0
        self.peak = 0

    @property
    def entered(self) -> int:
        """How many closes have reached the gate."""
        return len(self.started)

    async def hook(self, conn: FakeConn) -> None:
        self.started.append(conn)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.released.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(conn)
            raise
        finally:
            self.running -= 1

    async def __call__(self, conn: FakeConn) -> None:
        await self.hook(conn)

    def open(self) -> None:
        """Lets every blocked close (and every later one) through."""
        self.released.set()


def task_ids() -> set[int]:
    """The ids of the tasks running now (to check that none is left behind)."""
    return {task.id for task in anyio.get_running_tasks()}


@contextmanager
def releasing(clock: FakeClock, *gates: Gate) -> Iterator[None]:
    """If the body fails, opens the gates and moves the clock far ahead.

    A failed assertion must not leave a shielded close waiting for ever (the task group or
    aclose() that waits for it would hang instead of reporting the failure).
    """
    try:
        yield
    except BaseException:
        for gate in gates:
            gate.open()
        clock.advance(3600)
        raise


@asynccontextmanager
async def guarded(
    manager: ConnManager, clock: FakeClock, *gates: Gate
) -> AsyncIterator[ConnManager]:
    """Runs `manager`; on exit, checks that it left no task behind and is consistent.

    If the body fails, `releasing` lets aclose() (which waits for started closes) finish,
    so that the failure is reported.
    """
    before = task_ids()
    with anyio.fail_after(HANG_GUARD):
        async with manager:
            with releasing(clock, *gates):
                yield manager
            manager._check_invariants()
    assert task_ids() == before, "the manager left a task running"
    manager._check_invariants()


@asynccontextmanager
async def running(
    clock: FakeClock, *gates: Gate, low_water: int = 0, high_water: int = 1000, **config: Any
) -> AsyncIterator[ConnManager]:
    """A running manager with explicit-trim-friendly defaults (see `guarded`)."""
    config.setdefault("grace_period", 0)
    config.setdefault("silence_period", 1)
    config.setdefault("close_timeout", CLOSE_TIMEOUT)
    manager = ConnManager(low_water=low_water, high_water=high_water, clock=clock, **config)
    async with guarded(manager, clock, *gates):
        yield manager


def open_conns(
    manager: ConnManager,
    peers: Iterable[Hashable],
    *,
    direction: Direction = Direction.INBOUND,
    streams: int = 0,
) -> list[FakeConn]:
    """Opens one FakeConn per peer and reports it; closing one reports `disconnected`."""
    notifiee = manager.notifee()
    conns = [
        FakeConn(peer, direction=direction, num_streams=streams, notifiee=notifiee)
        for peer in peers
    ]
    for conn in conns:
        notifiee.connected(conn)
    return conns


async def connect(manager: ConnManager, *conns: FakeConn) -> None:
    """Reports each connection open and lets the manager apply it."""
    notifiee = manager.notifee()
    for conn in conns:
        notifiee.connected(conn)
    await manager.flush()


async def applied(manager: ConnManager) -> None:
    """Lets the manager apply every notification and run its tasks until they all wait."""
    await manager.flush()
    await settle()


def held_conns(manager: ConnManager, peers: Iterable[Hashable]) -> set[FakeConn]:
    """The connections the manager holds for `peers`, read through the public API."""
    held: set[FakeConn] = set()
    for peer in peers:
        info = manager.get_tag_info(peer)
        if info is not None:
            for conn in info.conns:
                assert isinstance(conn, FakeConn)
                held.add(conn)
    return held


def assert_holds(manager: ConnManager, expected: Iterable[FakeConn]) -> None:
    """The manager counts exactly `expected` as open, and is consistent."""
    expected = set(expected)
    peers = {conn.remote_peer for conn in expected}
    info = manager.get_info()
    assert info.conn_count == len(expected), (info.conn_count, len(expected))
    assert info.closing_count == 0
    assert info.peer_count == len(peers)
    assert held_conns(manager, peers) == expected
    manager._check_invariants()


async def fail(conn: FakeConn) -> None:
    """A close hook that raises."""
    raise ConnectionError(f"cannot close {conn.remote_peer}")


async def hang(conn: FakeConn) -> None:
    """A close hook that never returns."""
    await anyio.sleep_forever()


def reporting(
    notifiee: Notifiee, then: Callable[[FakeConn], Awaitable[None]] | None = None
) -> Callable[[FakeConn], Awaitable[None]]:
    """A close hook that reports `disconnected` synchronously, then runs `then`."""

    async def hook(conn: FakeConn) -> None:
        notifiee.disconnected(conn)
        if then is not None:
            await then(conn)

    return hook
