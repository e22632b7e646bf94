"""The closer: runs one trim's closes, concurrently, each bounded by `close_timeout`.

A trim marks its victims closing before any close starts (so counts drop at once and no
later trim picks them again), then hands the connections to `Closer.run`. The closer starts
them in order with at most `close_concurrency` running at once, and reports what became of
each (`report(conn, outcome)`, one of `OUTCOMES`); it never touches the manager's state.

Why a watchdog: a close is bounded by `close_timeout` on the manager's clock, which tests
replace with a `FakeClock`. anyio's cancel-scope deadlines run on the event loop's clock, not
on the injected one, so a scope deadline would never fire in a test and would fire on real
time under a fake one. One watchdog task sleeps on the injected clock until the oldest
running close's deadline and cancels that close's scope. Closes start in order with one
timeout, so their deadlines are in order: a deque, not a heap.

Why a fast path: most closes finish without suspending (a stub, a transport already gone, a
close that only schedules work). A worker runs closes in slices, each slice inside one
shielded cancel scope, and steps each close's coroutine itself: a close that completes at
once costs no task, no scope of its own and no watchdog entry. A close that suspends gets a
watchdog entry and ends its slice, so that the scope the watchdog may cancel holds only it.
The workers leave their scope and yield after every `LoopBudget` slice, so the event loop
is never held for long, and a cancellation of the manager reaches them there.

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
from types import CoroutineType
from typing import Any

import anyio
import anyio.lowlevel

from ._clock import LoopBudget, Wakeup
from .abc import Clock, Conn

__all__ = ["CloseRun", "Closer"]

logger = logging.getLogger("asyncconnmgr.closer")

Report = Callable[[Conn, str], None]


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
    """The connection a worker is closing, if any (set while its close runs)."""

    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn: Conn | None = None


class Closer:
    """Runs `CloseRun`s (see the module docstring)."""

    def __init__(self, clock: Clock, *, timeout: float, concurrency: int) -> None:
        self._clock = clock
        self._timeout = timeout
        self._concurrency = concurrency

    async def run(self, run: CloseRun, report: Report) -> None:
        """Runs the closes of `run`, reporting each outcome; returns once every started close
        has finished (or was abandoned after `close_timeout`)."""
        conns = run.conns
        if not conns:
            return
        watched: deque[_Watched] = deque()
        wakeup = Wakeup()
        budget = LoopBudget()
        async with anyio.create_task_group() as tg:
            watchdog_scope = anyio.CancelScope(shield=True)

            async def watchdog() -> None:
                with watchdog_scope:
                    await self._watchdog(watched, wakeup)

            tg.start_soon(watchdog)
            try:
                async with anyio.create_task_group() as workers:
                    for _ in range(min(self._concurrency, len(conns))):
                        workers.start_soon(self._worker, run, report, watched, wakeup, budget)
            finally:
                watchdog_scope.cancel()

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

    async def _worker(
        self,
        run: CloseRun,
        report: Report,
        watched: deque[_Watched],
        wakeup: Wakeup,
        budget: LoopBudget,
    ) -> None:
        """Closes connections of `run` in turn, in slices.

        Each slice runs in a fresh shielded scope (a cancelled trim never abandons a close
        half-way), which the watchdog cancels if the close that suspended in it outlives its
        deadline. Every close runs wholly inside one scope: its first step is taken inside
        the scope its rest runs in (trio and anyio require a coroutine's cancel scopes to
        nest). Between slices the worker yields, unshielded: the event loop is never held
        for longer than the budget, and a cancellation of the manager stops the worker.
        """
        # Only while it runs: a task id is the id() of the task object, and a new task may
        # reuse the id of one that has ended.
        task_id = anyio.get_current_task().id
        run.task_ids.add(task_id)
        try:
            await self._work(run, report, watched, wakeup, budget)
        finally:
            run.task_ids.discard(task_id)

    async def _work(
        self,
        run: CloseRun,
        report: Report,
        watched: deque[_Watched],
        wakeup: Wakeup,
        budget: LoopBudget,
    ) -> None:
        current = _Current()
        while not run.done:
            if run.deadline is not None and self._clock.now() >= run.deadline:
                return
            with anyio.CancelScope(shield=True) as scope:
                await self._slice(run, report, watched, wakeup, budget, scope, current)
            stuck = current.conn
            if stuck is not None:  # the watchdog cancelled its close
                current.conn = None
                report(stuck, _abort(stuck))
            await anyio.lowlevel.checkpoint()
            budget.reset()

    async def _slice(
        self,
        run: CloseRun,
        report: Report,
        watched: deque[_Watched],
        wakeup: Wakeup,
        budget: LoopBudget,
        scope: anyio.CancelScope,
        current: _Current,
    ) -> None:
        conns = run.conns
        total = len(conns)
        clock = self._clock
        while not run.stopped and run.started < total:
            if run.deadline is not None and clock.now() >= run.deadline:
                return
            conn = conns[run.started]
            run.started += 1
            if run.recheck() and run.spare(conn):
                report(conn, "spared")
                continue
            current.conn = conn
            outcome, pending = self._begin(conn, run)
            if pending is not None:
                watch = _Watched(clock.now() + self._timeout, scope)
                watched.append(watch)
                wakeup.set()
                try:
                    outcome = await self._rest(conn, pending, run, scope)
                finally:
                    watch.done = True
            current.conn = None
            report(conn, outcome)
            if pending is not None or budget.spent():
                return  # a fresh scope for what follows (this one may have been cancelled)

    def _begin(self, conn: Conn, run: CloseRun) -> tuple[str, _Pending | None]:
        """Starts `conn.close()` and steps it once: the outcome if it is over, else what is
        left of it to await."""
        try:
            awaitable: Any = conn.close()
            if type(awaitable) is CoroutineType:
                steps: Any = awaitable
            elif hasattr(awaitable, "__await__"):
                steps = awaitable.__await__()
            else:
                return "closed", None  # a plain function: it has closed
            yielded = steps.send(None)
        except StopIteration:
            return "closed", None
        except Exception:
            logger.warning("asyncconnmgr: closing %r failed", conn, exc_info=True)
            return "failed", None
        except BaseException as exc:
            return self._unexpected(conn, exc, run), None
        return "", _Pending(steps, yielded)

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
