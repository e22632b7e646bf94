"""Time and waiting: the default clock, and waiting on whichever clock the manager was given.

The manager never calls `anyio.sleep` or uses a cancel scope's deadline: those run on the
event loop's clock, and a test drives the manager with an injected `FakeClock`. Every timed
wait here goes through `Clock.sleep_until`.
"""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel

from .abc import Clock

__all__ = ["AnyioClock", "LoopBudget", "Wakeup", "wait_until"]


class AnyioClock:
    """Reads and sleeps on the running event loop's clock.

    Like the event loop's own clock, it can only be read inside a running loop: a manager
    using it must be tagged and notified from async code (or given another `Clock`).
    """

    __slots__ = ()

    def now(self) -> float:
        try:
            return anyio.current_time()
        except Exception as exc:  # sniffio.AsyncLibraryNotFoundError or RuntimeError
            raise RuntimeError(
                "AnyioClock.now() needs a running event loop (asyncio or trio); "
                "call the manager from async code or inject a Clock"
            ) from exc

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep_until(deadline)

    def __repr__(self) -> str:
        return "AnyioClock()"


class Wakeup:
    """A level-triggered, reusable wake-up for one waiting task; `set()` is sync."""

    __slots__ = ("_event", "_pending", "waiting")

    def __init__(self) -> None:
        self._event: anyio.Event | None = None
        self._pending = False
        self.waiting = False

    def set(self) -> None:
        self._pending = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if not self._pending:
            event = self._event = anyio.Event()
            self.waiting = True
            try:
                await event.wait()
            finally:
                self._event = None
                self.waiting = False
        else:
            await anyio.lowlevel.checkpoint()
        self._pending = False


async def wait_until(clock: Clock, wakeup: Wakeup | anyio.Event, until: float | None) -> bool:
    """Waits for `wakeup`, or until `clock` reaches `until` (None: no limit).

    Returns True if `wakeup` fired, False if the time came first.
    """
    if until is None:
        await wakeup.wait()
        return True
    fired = False
    async with anyio.create_task_group() as tg:

        async def timer() -> None:
            await clock.sleep_until(until)
            tg.cancel_scope.cancel()

        tg.start_soon(timer)
        await wakeup.wait()
        fired = True
        tg.cancel_scope.cancel()
    return fired


class LoopBudget:
    """How long synchronous work may hold the event loop before it yields.

    Measured on the process's performance counter, not on the manager's clock: it bounds
    real time the loop is held, which an injected clock does not see.
    """

    __slots__ = ("_deadline", "slice")

    def __init__(self, slice_seconds: float = 0.002) -> None:
        self.slice = slice_seconds
        self._deadline = time.perf_counter() + slice_seconds

    def spent(self) -> bool:
        """True once the slice is used up; the caller should yield and call `reset()`."""
        return time.perf_counter() >= self._deadline

    def reset(self) -> None:
        self._deadline = time.perf_counter() + self.slice
