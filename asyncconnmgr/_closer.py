"""The closer: runs one trim's closes, concurrently, each bounded by `close_timeout`.

A trim marks its victims closing before any close starts (so counts drop at once and no
later trim picks them again), then hands the connections to `Closer.run`. The closer starts
them in order with at most `close_concurrency` running at once, and reports what became of
each: `closed(conn)` for a close that completed, `report(conn, outcome)` for any other
outcome of `OUTCOMES`. It never touches the manager's state.

Why a watchdog: a close is bounded by `close_timeout` on the manager's clock, which tests
replace with a `FakeClock`. anyio's cancel-scope deadlines run on the event loop's clock, not
on the injected one, so a scope deadline would never fire in a test and would fire on real
time under a fake one. One watchdog task sleeps on the injected clock until the oldest
suspended close's deadline and cancels the scope that close runs in. Closes suspend in the
order they start, with one timeout, so their deadlines are in order: a deque, not a heap.

Why a fast path: most closes finish without suspending (a stub, a transport already gone, a
close that only schedules work). A worker runs closes in slices, each slice inside one
shielded cancel scope, and steps each close's coroutine itself: a close that completes at
once costs no task, no scope of its own, no watchdog entry and no clock reading. A close
that suspends gets a watchdog entry (its deadline counted from then) and is awaited in the
scope it started in; a close that the watchdog cancelled ends its scope, so that the next
one starts in a fresh scope that nobody has cancelled.

Why lazy workers: the first worker runs in the caller's task. Each close that suspends
starts one more worker (up to `close_concurrency`), and the first that suspends starts the
watchdog, so a trim whose closes never suspend costs no task at all, and one whose closes
all suspend reaches full concurrency within as many turns of the event loop. The workers
share one budget of real time (`LoopBudget`): a worker whose slice has used it leaves its
scope and yields, and so does any other worker that runs before the event loop has come
round, so the loop is never held for much longer than the budget, whatever the closes do;
a cancellation of the manager reaches the workers there.

A close that is still running at its deadline is cancelled; if the connection has a sync
`abort()` it is then called once and the connection counts as closed ("aborted"), else it
stays open and counted ("timed_out"). An `Exception` from `close()` is a failed close; so is
a `CancelledError` that leaks out of it while nobody cancelled the close. A `BaseException`
that is neither (KeyboardInterrupt, SystemExit, ...) stops the run: it is kept in
`CloseRun.fatal` for the manager to raise, and no close starts after it.

The closer's own stop flag, `CloseRun.stopped`, is set by the manager when nobody wants the
trim any more (every caller left, or `aclose()` began); no close starts after it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Generator, Sequence
from time import perf_counter
from types import CoroutineType
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from ._clock import LoopBudget, Wakeup
from .abc import Clock, Conn

__all__ = ["CloseRun", "Closer"]

logger = logging.getLogger("asyncconnmgr.closer")

Report = Callable[[Conn, str], None]
Closed = Callable[[Conn], object]


class CloseRun:
    """One trim's closes: the connections in order and how far they got.

    `started` is how many closes started (or were spared); the connections from there on
    never started. `stopped` stops the run (no close starts after it); `deadline` is a time
    on the manager's clock after which no close starts. `recheck()` says whether protection
    may have changed since the plan, and `spare(conn)` whether `conn` is now protected.
    `task_ids` holds the tasks running this run's closes (a trim called from inside one of
    them must not wait for itself).
    """

    __slots__ = (
        "conns",
        "deadline",
        "fatal",
        "recheck",
        "spare",
        "started",
        "stopped",
        "task_ids",
    )

    def __init__(
        self,
        conns: Sequence[Conn],
        *,
        deadline: float | None = None,
        recheck: Callable[[], bool] = lambda: False,
        spare: Callable[[Conn], bool] = lambda conn: False,
    ) -> None:
        self.conns = conns
        self.deadline = deadline
        self.recheck = recheck
        self.spare = spare
        self.started = 0
        self.stopped = False
        self.fatal: BaseException | None = None
        self.task_ids: set[int] = set()

    def stop(self) -> None:
        self.stopped = True

    @property
    def done(self) -> bool:
        """True once no close will start any more."""
        return self.stopped or self.started >= len(self.conns)


class _Watched:
    """A close that suspended: its deadline, and the scope it runs in."""

    __slots__ = ("deadline", "done", "scope")

    def __init__(self, deadline: float, scope: anyio.CancelScope) -> None:
        self.deadline = deadline
        self.scope = scope
        self.done = False


class _Current:
    """The connection whose suspended close a worker awaits, if any."""

    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn: Conn | None = None


class _Closing:
    """What the workers of one `CloseRun` share."""

    __slots__ = (
        "closed",
        "group",
        "outer",
        "report",
        "run",
        "slice",
        "until",
        "wakeup",
        "watchdog",
        "watched",
        "workers",
    )

    def __init__(self, run: CloseRun, report: Report, closed: Closed, outer: TaskGroup) -> None:
        self.run = run
        self.report = report
        self.closed = closed
        self.outer = outer  # holds the watchdog
        self.group: TaskGroup | None = None  # holds the workers but the first
        self.workers = 1
        self.watched: deque[_Watched] = deque()
        self.wakeup = Wakeup()
        self.watchdog: anyio.CancelScope | None = None
        self.slice = LoopBudget().slice
        self.until = perf_counter() + self.slice  # on the performance counter


class Closer:
    """Runs `CloseRun`s (see the module docstring)."""

    def __init__(self, clock: Clock, *, timeout: float, concurrency: int) -> None:
        self._clock = clock
        self._timeout = timeout
        self._concurrency = concurrency

    async def run(self, run: CloseRun, report: Report, closed: Closed) -> None:
        """Runs the closes of `run`: `closed(conn)` for each that completed, `report(conn,
        outcome)` for each other outcome; returns once every started close has finished (or
        was abandoned after `close_timeout`).

        The first worker runs in the calling task (it joins `run.task_ids`). Cancelling the
        call stops it starting closes at its next yield; the closes already started finish
        first, each within `close_timeout`.
        """
        if not run.conns:
            return
        async with anyio.create_task_group() as outer:
            state = _Closing(run, report, closed, outer)
            try:
                async with anyio.create_task_group() as workers:
                    state.group = workers
                    await self._worker(state)
            finally:
                if state.watchdog is not None:
                    state.watchdog.cancel()

    def _start_watchdog(self, state: _Closing) -> None:
        scope = state.watchdog = anyio.CancelScope(shield=True)

        async def watchdog() -> None:
            with scope:
                await self._watchdog(state.watched, state.wakeup)

        state.outer.start_soon(watchdog)

    async def _watchdog(self, watched: deque[_Watched], wakeup: Wakeup) -> None:
        clock = self._clock
        while True:
            while watched and watched[0].done:
                watched.popleft()
            if not watched:
                await wakeup.wait()
                continue
            head = watched[0]
            await clock.sleep_until(head.deadline)
            if not head.done:
                watched.popleft()
                head.scope.cancel()

    async def _worker(self, state: _Closing) -> None:
        """Closes connections of the run in turn, in slices.

        Each slice runs in a fresh shielded scope (a cancelled trim never abandons a close
        half-way), which the watchdog cancels if a close that suspended in it outlives its
        deadline. Every close runs wholly inside one scope: its first step is taken inside
        the scope its rest runs in (trio and anyio require a coroutine's cancel scopes to
        nest). Between slices the worker is unshielded: a cancellation of the manager stops
        it there. It yields there too, unless its slice ended with a close that suspended
        (the event loop has just come round): the loop is never held for longer than the
        budget.
        """
        run = state.run
        clock = self._clock
        # Only while it runs: a task id is the id() of the task object, and a new task may
        # reuse the id of one that has ended.
        task_id = anyio.get_current_task().id
        run.task_ids.add(task_id)
        current = _Current()
        try:
            while not run.done:
                if run.deadline is not None and clock.now() >= run.deadline:
                    return
                held = True  # the watchdog cancelled the close (its scope ended the slice)
                with anyio.CancelScope(shield=True) as scope:
                    held = await self._slice(state, scope, current)
                stuck = current.conn
                if stuck is not None:
                    current.conn = None
                    state.report(stuck, _abort(stuck))
                if held:
                    await anyio.lowlevel.checkpoint()
                    state.until = perf_counter() + state.slice
                else:  # the slice ended with a close that suspended: the loop has turned
                    await anyio.lowlevel.checkpoint_if_cancelled()
        finally:
            state.workers -= 1
            run.task_ids.discard(task_id)

    async def _slice(self, state: _Closing, scope: anyio.CancelScope, current: _Current) -> bool:
        """Starts closes until the run is done, the budget is spent, or the scope has been
        cancelled; returns whether this worker has held the event loop since it last
        resumed (then it must yield). The per-close work of a close that does not suspend
        is all here."""
        run = state.run
        conns = run.conns
        total = len(conns)
        now = self._clock.now
        recheck = run.recheck
        closed = state.closed
        report = state.report
        held = False
        while True:
            at = run.started
            if at >= total or run.stopped:
                return held
            deadline = run.deadline
            if deadline is not None and now() >= deadline:
                return held
            held = True
            conn = conns[at]
            run.started = at + 1
            if recheck() and run.spare(conn):
                report(conn, "spared")
            else:
                try:
                    awaitable: Any = conn.close()
                    if type(awaitable) is CoroutineType:
                        steps: Any = awaitable
                    elif hasattr(awaitable, "__await__"):
                        steps = awaitable.__await__()
                    else:
                        steps = None  # a plain function: it has closed
                    yielded = None if steps is None else steps.send(None)
                except StopIteration:
                    closed(conn)
                except Exception:
                    logger.warning("asyncconnmgr: closing %r failed", conn, exc_info=True)
                    report(conn, "failed")
                except BaseException as exc:
                    report(conn, self._unexpected(conn, exc, run))
                else:
                    if steps is None:
                        closed(conn)
                    else:
                        await self._suspended(state, scope, current, conn, steps, yielded)
                        held = False
                        if scope.cancel_called:
                            return held  # the close outlived its deadline but did end
            if perf_counter() >= state.until:
                return held

    async def _suspended(
        self,
        state: _Closing,
        scope: anyio.CancelScope,
        current: _Current,
        conn: Conn,
        steps: Any,
        yielded: Any,
    ) -> None:
        """Watches a close whose first step suspended, and awaits the rest of it."""
        run = state.run
        if state.watchdog is None:
            self._start_watchdog(state)
        if state.workers < self._concurrency and not run.done:
            assert state.group is not None
            state.workers += 1
            state.group.start_soon(self._worker, state)
        watch = _Watched(self._clock.now() + self._timeout, scope)
        state.watched.append(watch)
        state.wakeup.set()
        current.conn = conn
        try:
            outcome = await self._rest(conn, _Pending(steps, yielded), run, scope)
        finally:
            watch.done = True
        current.conn = None
        if outcome == "closed":
            state.closed(conn)
        else:
            state.report(conn, outcome)

    async def _rest(
        self, conn: Conn, pending: _Pending, run: CloseRun, scope: anyio.CancelScope
    ) -> str:
        """Awaits the rest of a close that suspended."""
        try:
            await pending
        except Exception:
            logger.warning("asyncconnmgr: closing %r failed", conn, exc_info=True)
            return "failed"
        except BaseException as exc:
            if scope.cancel_called and isinstance(exc, anyio.get_cancelled_exc_class()):
                raise  # the watchdog's: it ends the scope, and the worker aborts the close
            return self._unexpected(conn, exc, run)
        return "closed"

    def _unexpected(self, conn: Conn, exc: BaseException, run: CloseRun) -> str:
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            # Nobody cancelled this close (it runs shielded, and its scope was not cancelled):
            # a close that raised a cancellation of its own making.
            logger.warning("asyncconnmgr: closing %r raised a cancellation", conn, exc_info=exc)
            return "failed"
        if run.fatal is None:
            run.fatal = exc
        run.stop()
        return "failed"


class _Pending:
    """The rest of a close whose first step suspended: awaiting it resumes the close where
    it stopped, passing every later suspension through to the event loop unchanged."""

    __slots__ = ("_steps", "_yielded")

    def __init__(self, steps: Any, yielded: Any) -> None:
        self._steps = steps
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, None]:
        steps = self._steps
        yielded = self._yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                steps.close()
                raise
            except BaseException as exc:
                try:
                    yielded = steps.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    yielded = steps.send(sent)
                except StopIteration:
                    return


def _abort(conn: Conn) -> str:
    abort = getattr(conn, "abort", None)
    if not callable(abort):
        logger.warning("asyncconnmgr: closing %r timed out; it stays open", conn)
        return "timed_out"
    try:
        abort()
    except Exception:
        logger.warning("asyncconnmgr: closing %r timed out and abort() failed", conn, exc_info=True)
        return "timed_out"
    logger.info("asyncconnmgr: closing %r timed out; aborted it", conn)
    return "aborted"
