"""Helpers for testing code that uses asyncconnmgr: a fake clock and fake connections.

`FakeClock` lets a test move time by hand, on asyncio and trio alike::

    clock = FakeClock()
    async with ConnManager(low_water=1, high_water=2, clock=clock) as manager:
        ...
        clock.advance(10)          # wakes every timer whose time has come
        await settle()             # lets the manager's tasks run until they are all waiting
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Awaitable, Callable, Hashable

import anyio
import anyio.lowlevel
import attrs

from .abc import Direction, Notifiee

__all__ = ["FakeClock", "FakeConn", "settle"]

#: How many rounds of the asyncio loop `settle()` waits for it to go idle before giving up.
_SETTLE_ROUNDS = 100_000


@attrs.define(eq=False)
class FakeClock:
    """A clock that only moves when `advance()` is called. Satisfies `abc.Clock`."""

    _now: float = attrs.field(default=0.0, alias="start", converter=float)
    _sleepers: list[tuple[float, int, anyio.Event]] = attrs.field(factory=list, init=False)
    _order: itertools.count[int] = attrs.field(factory=itertools.count, init=False)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Moves time forward and wakes every sleeper whose deadline has come (sync)."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"seconds must be a number, not {type(seconds).__name__}")
        if math.isnan(seconds) or seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self._now += seconds
        sleepers = self._sleepers
        while sleepers and sleepers[0][0] <= self._now:
            heapq.heappop(sleepers)[2].set()

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (deadline, next(self._order), event))
        await event.wait()

    @property
    def next_deadline(self) -> float | None:
        """The earliest time a sleeper waits for (cancelled sleepers included), or None."""
        return self._sleepers[0][0] if self._sleepers else None


async def settle() -> None:
    """Waits until every other task is blocked and nothing is ready to run.

    On trio this is anyio's `wait_all_tasks_blocked`. On asyncio that one can return while
    the waiters of a task that just finished are still to be woken (their wake-ups are
    callbacks queued in the loop), and it polls with real 0.1 s sleeps; so there this yields
    until the loop has no ready callback and every other task waits on an unfinished future.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio
        await anyio.wait_all_tasks_blocked()
        return
    me = asyncio.current_task()
    for _ in range(_SETTLE_ROUNDS):
        await asyncio.sleep(0)
        if getattr(loop, "_ready", None):
            continue
        for task in asyncio.all_tasks():
            waiter = getattr(task, "_fut_waiter", None)
            if task is not me and (waiter is None or waiter.done()):
                break
        else:
            return
    raise RuntimeError("settle(): the event loop never went idle (a task never blocks)")


CloseHook = Callable[["FakeConn"], Awaitable[None]]


@attrs.define(eq=False)
class FakeConn:
    """A connection for tests: satisfies `abc.Conn`.

    `close()` runs `on_close` (if given; it may sleep, hang or raise) and then, if a
    `notifiee` is set, reports `disconnected` the way a host would. `close_calls` counts the
    calls and `closed` is true once a close completed.
    """

    remote_peer: Hashable
    direction: Direction = Direction.INBOUND
    num_streams: int = 0
    remote_addr: str | None = None
    notifiee: Notifiee | None = attrs.field(default=None, repr=False)
    on_close: CloseHook | None = attrs.field(default=None, repr=False)
    closed: bool = attrs.field(default=False, init=False)
    close_calls: int = attrs.field(default=0, init=False)

    async def close(self) -> None:
        self.close_calls += 1
        if self.on_close is not None:
            await self.on_close(self)
        else:
            await anyio.lowlevel.checkpoint()
        self.closed = True
        if self.notifiee is not None:
            self.notifiee.disconnected(self)
