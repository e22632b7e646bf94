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
from numbers import Real

import anyio
import anyio.lowlevel
import attrs

from ._config import check_seconds
from .abc import Direction, Notifiee

__all__ = ["FakeClock", "FakeConn", "settle"]

#: How many rounds of the asyncio loop `settle()` waits for it to go idle before giving up.
_SETTLE_ROUNDS = 100_000


def _start_time(value: object) -> float:
    """`FakeClock(start=...)`: any finite number (negative included; not a bool)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"start must be a number, not {type(value).__name__}")
    start = float(value)
    if not math.isfinite(start):
        raise ValueError(f"start must be finite, got {value!r}")
    return start


@attrs.define(eq=False)
class FakeClock:
    """A clock that only moves when `advance()` is called. Satisfies `abc.Clock`.

    Arguments:
        start: the time `now()` returns until the first `advance()` (0 by default); any
            finite number. TypeError for a non-number (or a bool), ValueError for NaN or an
            infinity, naming `start`.

    Works on asyncio and trio alike: sleepers wait on anyio events, which `advance()` sets.
    """

    _now: float = attrs.field(default=0.0, alias="start", converter=_start_time)
    _sleepers: list[tuple[float, int, anyio.Event]] = attrs.field(factory=list, init=False)
    _order: itertools.count[int] = attrs.field(factory=itertools.count, init=False)

    def now(self) -> float:
        """The current fake time, in seconds."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Moves time forward by `seconds` and wakes every sleeper whose deadline has come.

        Synchronous: the woken tasks run at their next chance (`await settle()` lets them).
        Raises TypeError for a non-number (or a bool) and ValueError for a negative, NaN or
        infinite value, naming `seconds`; time does not move then.
        """
        check_seconds("seconds", seconds)
        self._now += seconds
        sleepers = self._sleepers
        while sleepers and sleepers[0][0] <= self._now:
            heapq.heappop(sleepers)[2].set()

    async def sleep_until(self, deadline: float) -> None:
        """Returns once `advance()` has moved time to `deadline` or beyond (after a
        checkpoint if it already has). An infinite deadline waits until cancelled.

        Raises ValueError naming `deadline` for NaN. Cancelling the sleep leaves its entry
        behind until its deadline comes (it only counts in `next_deadline`).
        """
        if deadline != deadline:  # NaN would break the order of the sleepers
            raise ValueError("deadline must not be NaN")
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

    Use it after `FakeClock.advance()` or a notification to let the manager's tasks do
    what they now can. On trio this is anyio's `wait_all_tasks_blocked`. On asyncio that one
    can return while the waiters of a task that just finished are still to be woken (their
    wake-ups are callbacks queued in the loop), and it polls with real 0.1 s sleeps; so there
    this yields until the loop has no ready callback and every other task waits on an
    unfinished future.

    Raises RuntimeError on asyncio if the loop never goes idle (a task that never blocks).
    A cancelled call leaves nothing behind.
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

    Arguments:
        remote_peer: the peer id (any hashable value).
        direction: a `Direction` (INBOUND by default).
        num_streams: the stream count a trim reads (change it as the test goes).
        remote_addr: the remote address, or None.
        notifiee: if given, `close()` reports `disconnected` to it, as a host would.
        on_close: an async hook `close()` awaits first (it may sleep, hang or raise: a
            hanging one is how a test makes a close time out).

    `close_calls` counts the calls to `close()` and `closed` is true once one completed.
    Keeps identity equality and hashing, as `abc.Conn` asks.
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
        """Runs `on_close` (or a checkpoint), sets `closed`, reports `disconnected`.

        Raises what `on_close` raises (and then stays not `closed`). If it is cancelled,
        `closed` stays false and nothing is reported.
        """
        self.close_calls += 1
        if self.on_close is not None:
            await self.on_close(self)
        else:
            await anyio.lowlevel.checkpoint()
        self.closed = True
        if self.notifiee is not None:
            self.notifiee.disconnected(self)
