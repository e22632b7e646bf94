"""ConnManager: the async shell around the PeerTable.

The manager is the only part that awaits. It owns four background loops, each under a small
supervisor, inside one task group for the life of `async with manager:`

- the consumer applies queued notifications to the table and wakes the trimmer when the
  count exceeds high water;
- the trimmer starts background trims (never twice within `silence_period`);
- the decayer visits decaying tags every `decay_resolution`;
- the reaper removes temporary entries unused for the grace period.

Background and explicit trims share one single-flight coordinator. A trim decides
synchronously (plan, then mark the victims closing) and only then closes them, concurrently,
each close shielded and bounded by `close_timeout`, so a close never runs while the state is
being changed and a cancelled trim never abandons a half-closed connection.
"""

from __future__ import annotations

import logging
import math
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from itertools import repeat
from typing import Final

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from ._clock import AnyioClock
from ._config import Config, check_callable, check_int, check_seconds, check_tag
from ._decay import BumpFn, DecayFn, DecayingTag
from ._errors import LimitExceededError, ManagerClosedError
from ._events import EventQueue, ManagerNotifiee
from ._models import ManagerInfo, TagInfo, TrimResult
from ._policy import DefaultPolicy, TrimPolicy
from ._table import PeerTable, TrimPlan
from .abc import Clock, Conn, Notifiee, PeerId

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = ["ConnManager"]

logger = logging.getLogger("asyncconnmgr")

_NEW: Final = "new"
_RUNNING: Final = "running"
_CLOSING: Final = "closing"
_CLOSED: Final = "closed"

#: How long a background loop waits before restarting after an unexpected exception.
RESTART_BACKOFF: Final = 1.0
#: How many connections closed by a trim are remembered so that the host's later
#: `disconnected` for them is recognised rather than counted as unknown.
_REMEMBERED_CLOSES: Final = 65_536
#: How many ended connections (reported disconnected, or closed by a trim) are remembered, so
#: that a late or repeated `connected` for the same connection object does not resurrect it.
_REMEMBERED_ENDED: Final = 16_384


#: The manager whose trim is running the current task's `conn.close()`, if any: `aclose()`
#: called from inside such a close must not wait for the trim it is part of.
_CLOSE_IN_PROGRESS: ContextVar[ConnManager | None] = ContextVar(
    "asyncconnmgr_close_in_progress", default=None
)


def _consume(iterator: Iterator[object]) -> None:
    """Runs an iterator to its end, in C, keeping nothing."""
    deque(iterator, maxlen=0)


class _Remembered:
    """A bounded set of connections, by the connection object; once full, the oldest go first.

    `items` is the set (a dict: membership is one lookup, and `_drain` adds to it inline);
    `_ring` holds the same connections in the order they came, `limit` at most, and every
    addition beyond the limit overwrites the oldest slot and forgets that connection. So an
    addition is O(1) and, once full, the memory held stays the same however many connections
    pass through. Holding the connections keeps their identities from being reused while
    they are remembered.
    """

    __slots__ = ("_limit", "_next", "_ring", "items")

    def __init__(self, limit: int) -> None:
        self.items: dict[Conn, None] = {}
        self._ring: list[Conn] = []
        self._limit = limit
        self._next = 0

    def add(self, conn: Conn) -> None:
        if conn not in self.items:  # each connection has at most one slot in the ring
            self.items[conn] = None
            self.track((conn,))

    def track(self, conns: Sequence[Conn]) -> None:
        """Records the arrival order of connections just put in `items` (none of them was
        there before, so no connection holds two slots).

        Works on slices, with the per-connection work in C (`map`, `dict.fromkeys`): this runs
        for every `disconnected` the host reports.
        """
        ring = self._ring
        room = self._limit - len(ring)
        if room > 0:
            ring.extend(conns[:room])
            conns = conns[room:]
        items = self.items
        at = self._next
        while conns:
            chunk = conns[: self._limit - at]
            end = at + len(chunk)
            evicted = ring[at:end]
            ring[at:end] = chunk
            _consume(map(items.pop, evicted, repeat(None)))
            items.update(dict.fromkeys(chunk))  # in case a connection was evicted and re-added
            conns = conns[len(chunk) :]
            at = end if end < self._limit else 0
        self._next = at

    def __contains__(self, conn: object) -> bool:
        return conn in self.items

    def discard(self, conn: Conn) -> bool:
        """Forgets `conn`; True if it was remembered.

        Its ring slot is left to be overwritten in turn: a connection discarded and then
        added again could be forgotten early. The manager never does that (it discards only
        confirmations of its own closes, and a closed connection is never closed again).
        """
        return self.items.pop(conn, False) is None

    def __len__(self) -> int:
        return len(self.items)


class _Wakeup:
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


class _Flight:
    """The trim in flight, which concurrent callers join."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: TrimResult | None = None


class _Closing:
    """One close in progress, watched for `close_timeout`."""

    __slots__ = ("deadline", "done", "scope")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.scope = anyio.CancelScope(shield=True)
        self.done = False


class _Progress:
    __slots__ = ("closed", "failed", "started")

    def __init__(self) -> None:
        self.started = 0
        self.closed = 0
        self.failed = 0


def _check_peer(peer: object) -> None:
    if peer is None:
        raise TypeError("peer must be a hashable peer id, not None")
    try:
        hash(peer)
    except TypeError:
        raise TypeError(f"peer must be hashable, not {type(peer).__name__}") from None


class ConnManager(anyio.AsyncContextManagerMixin):
    """Keeps a host's open connections between a low and a high water mark.

    When more than `high_water` connections are open, a background trim closes the least
    valuable peers until `low_water` eligible connections are left. Peers are valued by their
    tags; protected peers and peers within `grace_period` of connecting are never closed.

    Run it with `async with ConnManager(...) as manager:` (asyncio or trio), hand
    `manager.notifee()` to the host, and tag and protect peers from anywhere in the host. All
    times are seconds on `clock` (anyio's clock by default).

    Arguments (keyword-only; a wrong type raises TypeError, a wrong value ValueError):
        low_water, high_water: `0 <= low_water <= high_water`; `0, 0` disables trimming.
        grace_period: how long a newly connected peer is left alone (>= 0).
        silence_period: the shortest time between the starts of two trims (> 0).
        close_timeout: how long one close may take before it is abandoned (> 0).
        close_concurrency: how many closes run at once (>= 1).
        decay_resolution: the period of decaying-tag ticks (> 0).
        clock: an `asyncconnmgr.abc.Clock`; inject `testing.FakeClock` in tests.
        policy: chooses the order of victims (`DefaultPolicy()` by default).
    """

    def __init__(
        self,
        *,
        low_water: int = 160,
        high_water: int = 192,
        grace_period: float = 60.0,
        silence_period: float = 10.0,
        close_timeout: float = 5.0,
        close_concurrency: int = 64,
        decay_resolution: float = 60.0,
        clock: Clock | None = None,
        policy: TrimPolicy | None = None,
    ) -> None:
        self._config = Config.build(
            low_water=low_water,
            high_water=high_water,
            grace_period=grace_period,
            silence_period=silence_period,
            close_timeout=close_timeout,
            close_concurrency=close_concurrency,
            decay_resolution=decay_resolution,
        )
        if clock is None:
            clock = AnyioClock()
        elif not (
            callable(getattr(clock, "now", None)) and callable(getattr(clock, "sleep_until", None))
        ):
            raise TypeError("clock must have now() and async sleep_until(deadline) methods")
        if policy is None:
            policy = DefaultPolicy()
        elif not callable(getattr(policy, "sort_key", None)):
            raise TypeError("policy must have a sort_key(candidate) method")
        self._clock: Clock = clock
        self._now = clock.now
        self._policy: TrimPolicy = policy
        self._table = PeerTable(self._config.grace_period)
        self._queue = EventQueue()
        self._notifiee = ManagerNotifiee(self._queue)
        self._state: str = _NEW

        self._last_trim: float | None = None
        self._grace_hold: float | None = None
        self._flight: _Flight | None = None
        self._trim_wakeup = _Wakeup()
        self._reaper_wakeup = _Wakeup()
        self._background_scope: anyio.CancelScope | None = None
        self._background_done: anyio.Event | None = None
        self._closed_event: anyio.Event | None = None

        # Closed by a trim, the host's `disconnected` not seen yet.
        self._unconfirmed = _Remembered(_REMEMBERED_CLOSES)
        # Known to be closed: a `connected` for one of these is stale.
        self._ended = _Remembered(_REMEMBERED_ENDED)
        self._trims = 0
        self._closed_conns = 0
        self._close_failures = 0
        self._ignored = 0
        self._decay_failures = 0
        self._loop_failures: dict[str, int] = {}

    def __repr__(self) -> str:
        cfg = self._config
        return (
            f"<ConnManager {self._state} low_water={cfg.low_water} high_water={cfg.high_water} "
            f"conns={self._table.conn_count} peers={self._table.peer_count}>"
        )

    # -- lifecycle ------------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[ConnManager]:
        if self._state != _NEW:
            raise RuntimeError(f"a ConnManager can be entered only once (it is {self._state})")
        self._state = _RUNNING
        self._closed_event = anyio.Event()
        self._background_done = anyio.Event()
        unwrapped: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self._run_background)
                try:
                    yield self
                finally:
                    with anyio.CancelScope(shield=True):
                        await self.aclose()
        except BaseExceptionGroup as group:
            # The body's own exception (or one loop's) comes out as itself, not wrapped.
            if len(group.exceptions) != 1:
                raise
            unwrapped = group.exceptions[0]
        if unwrapped is not None:
            raise unwrapped

    async def _run_background(self, *, task_status: TaskStatus[None]) -> None:
        assert self._background_done is not None
        try:
            with anyio.CancelScope() as scope:
                self._background_scope = scope
                async with anyio.create_task_group() as tg:
                    loops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                        ("consumer", self._consume_loop),
                        ("trimmer", self._trim_loop),
                        ("decayer", self._decay_loop),
                        ("reaper", self._reap_loop),
                    ]
                    for name, loop in loops:
                        await tg.start(self._supervise, name, loop)
                    task_status.started()
        finally:
            self._background_done.set()

    async def _supervise(
        self, name: str, loop: Callable[[], Awaitable[None]], *, task_status: TaskStatus[None]
    ) -> None:
        """Runs `loop` forever: an unexpected exception is logged, counted and restarted."""
        self._loop_failures.setdefault(name, 0)
        task_status.started()
        while True:
            try:
                await loop()
            except Exception:
                self._loop_failures[name] += 1
                logger.exception("asyncconnmgr %s loop failed; restarting it", name)
                await self._clock.sleep_until(self._clock.now() + RESTART_BACKOFF)

    async def aclose(self) -> None:
        """Applies every queued notification, then stops all background work.

        Idempotent and safe to call concurrently, inside or after `async with`; returns once
        no background task is left (a background trim in flight finishes its started closes,
        each bounded by `close_timeout`). Later notifications are counted and ignored, and
        `trim_open_conns()` raises `ManagerClosedError`.

        Called from inside a connection's `close()` that a trim of this manager is running,
        it stops everything the same way but does not wait for the trim: that close is part
        of it, and waiting would never end.
        """
        inside_own_close = _CLOSE_IN_PROGRESS.get() is self
        if self._state == _NEW:
            self._drain()
            self._queue.closed = True
            self._state = _CLOSED
            return
        assert self._closed_event is not None
        assert self._background_done is not None
        if self._state != _RUNNING:
            if inside_own_close:
                await anyio.lowlevel.checkpoint()
            else:
                await self._closed_event.wait()
            return
        self._state = _CLOSING
        try:
            self._drain()
            if self._background_scope is not None:
                self._background_scope.cancel()
            if inside_own_close:
                await anyio.lowlevel.checkpoint()
                return
            with anyio.CancelScope(shield=True):
                await self._background_done.wait()
                # An explicit trim in flight starts no new close from now on (see
                # `_close_all`); wait for the closes it started.
                flight = self._flight
                if flight is not None:
                    await flight.done.wait()
            # What the last closes reported (a `disconnected`) while they finished.
            self._drain()
        finally:
            self._queue.closed = True
            self._state = _CLOSED
            self._closed_event.set()

    # -- notifications --------------------------------------------------------------------

    def notifee(self) -> Notifiee:
        """The object the host calls on connection open/close; the same one every call."""
        return self._notifiee

    async def flush(self) -> None:
        """Returns once every notification queued before the call has been applied."""
        self._drain()
        await anyio.lowlevel.checkpoint()

    def _drain(self) -> None:
        """Applies every queued notification to the table, in order, in one batch."""
        items = self._queue.items
        if not items:
            return
        now = self._now()
        add_conn = self._table.add_conn
        remove_conn = self._table.remove_conn
        ended = self._ended.items
        ended_now: list[Conn] = []
        popleft = items.popleft
        while items:
            connected, conn = popleft()
            try:
                if connected:
                    if ended and conn in ended:
                        self._ignore("connected after its disconnected", conn)
                    elif not add_conn(conn, now):
                        self._ignore("duplicate connected", conn)
                elif remove_conn(conn):
                    # Not remembered yet: an ended connection never gets back in the table.
                    ended[conn] = None
                    ended_now.append(conn)
                else:
                    self._unknown_disconnect(conn)
            except Exception:
                self._ignored += 1
                logger.exception("asyncconnmgr could not apply a notification for %r", conn)
        if ended_now:
            self._ended.track(ended_now)
        self._check_high_water()

    def _ignore(self, why: str, conn: Conn) -> None:
        self._ignored += 1
        logger.debug("asyncconnmgr ignored a notification (%s): %r", why, conn)

    def _unknown_disconnect(self, conn: Conn) -> None:
        if self._unconfirmed and self._unconfirmed.discard(conn):
            return  # the host confirming a close we made: expected
        self._ended.add(conn)  # an unhashable one raises here: `_drain` counts it once
        self._ignore("disconnected for an unknown connection", conn)

    def _check_high_water(self) -> None:
        cfg = self._config
        if self._table.conn_count > cfg.high_water and not cfg.trimming_disabled:
            self._trim_wakeup.set()

    # -- tags and protection --------------------------------------------------------------

    def tag_peer(self, peer: PeerId, tag: str, value: int) -> None:
        """Sets the peer's tag to `value` (not added to it). An unknown peer gets a
        temporary entry, reaped after the grace period unless the peer connects."""
        if type(tag) is not str or not tag:
            check_tag("tag", tag)
        if type(value) is not int:
            check_int("value", value)
        if peer is None:
            _check_peer(peer)
        try:
            created = self._table.tag_peer(peer, tag, value, self._now)
        except TypeError:
            _check_peer(peer)  # raises the message that names `peer` if it is unhashable
            raise
        if created and self._reaper_wakeup.waiting:
            self._reaper_wakeup.set()

    def untag_peer(self, peer: PeerId, tag: str) -> None:
        """Removes the tag; an unknown peer or an absent tag is left alone."""
        check_tag("tag", tag)
        _check_peer(peer)
        self._table.untag_peer(peer, tag)

    def upsert_tag(self, peer: PeerId, tag: str, fn: Callable[[int], int]) -> None:
        """Sets the tag to `fn(current value, or 0)`.

        `fn` runs with nothing locked and may call back into the manager; if it raises (or
        does not return an int) the exception reaches the caller and nothing changes.
        """
        if type(tag) is not str or not tag:
            check_tag("tag", tag)
        if peer is None:
            check_callable("fn", fn)
            _check_peer(peer)
        try:
            # A non-callable `fn` or an unhashable peer raises TypeError in the table before
            # anything changes; only then is it worth finding out which argument was wrong.
            created = self._table.upsert_tag(peer, tag, fn, self._now)
        except TypeError:
            if not callable(fn):
                try:
                    check_callable("fn", fn)
                except TypeError as wrong_fn:
                    raise wrong_fn from None  # the table's own error says nothing useful
            _check_peer(peer)
            raise
        if created and self._reaper_wakeup.waiting:
            self._reaper_wakeup.set()

    def get_tag_info(self, peer: PeerId) -> TagInfo | None:
        """A snapshot of the peer's entry, or None if the manager does not know it."""
        _check_peer(peer)
        return self._table.tag_info(peer)

    def protect(self, peer: PeerId, tag: str) -> None:
        """Protects the peer under `tag`: it is never trimmed while any protection remains."""
        check_tag("tag", tag)
        _check_peer(peer)
        self._table.protect(peer, tag)

    def unprotect(self, peer: PeerId, tag: str) -> bool:
        """Removes one protection; returns True if the peer is still protected by another."""
        check_tag("tag", tag)
        _check_peer(peer)
        still_protected = self._table.unprotect(peer, tag)
        if not still_protected:
            self._grace_hold = None  # the peer may be eligible now
            self._check_high_water()
        return still_protected

    def is_protected(self, peer: PeerId, tag: str | None = None) -> bool:
        """Whether the peer is protected under `tag`, or under any tag if `tag` is None."""
        if tag is not None:
            check_tag("tag", tag)
        _check_peer(peer)
        return self._table.is_protected(peer, tag)

    # -- decaying tags --------------------------------------------------------------------

    def register_decaying_tag(
        self, name: str, interval: float, decay_fn: DecayFn, bump_fn: BumpFn
    ) -> DecayingTag:
        """Registers a tag whose values fade every `interval` seconds unless bumped.

        An interval shorter than `decay_resolution` is raised to it (`tag.interval` tells);
        a name already registered raises ValueError.
        """
        check_tag("name", name)
        seconds = check_seconds("interval", interval, positive=True)
        check_callable("decay_fn", decay_fn)
        check_callable("bump_fn", bump_fn)
        tag = DecayingTag(
            name, max(seconds, self._config.decay_resolution), decay_fn, bump_fn, owner=self
        )
        self._table.register_decaying(tag, self._now())
        return tag

    def _decaying_bump(self, tag: DecayingTag, peer: PeerId, delta: int) -> None:
        check_int("delta", delta)
        _check_peer(peer)
        self._table.bump(tag, peer, delta, self._now)
        if self._reaper_wakeup.waiting:
            self._reaper_wakeup.set()

    def _decaying_remove(self, tag: DecayingTag, peer: PeerId) -> None:
        _check_peer(peer)
        self._table.remove_decaying(tag, peer)

    def _decaying_close(self, tag: DecayingTag) -> None:
        self._table.unregister_decaying(tag)

    # -- information ----------------------------------------------------------------------

    def check_limit(self, limit: int) -> None:
        """Raises `LimitExceededError` if high water exceeds the host's connection limit."""
        check_int("limit", limit, minimum=0)
        if self._config.high_water > limit:
            raise LimitExceededError(
                f"high_water ({self._config.high_water}) exceeds the limit ({limit})"
            )

    def get_info(self) -> ManagerInfo:
        """A snapshot of the configuration and the live counters."""
        cfg = self._config
        table = self._table
        return ManagerInfo(
            low_water=cfg.low_water,
            high_water=cfg.high_water,
            grace_period=cfg.grace_period,
            silence_period=cfg.silence_period,
            last_trim=self._last_trim,
            conn_count=table.conn_count,
            peer_count=table.peer_count,
            closing_count=table.closing_count,
            temporary_count=table.temporary_count,
            protected_count=table.protected_count,
            queued_notifications=len(self._queue),
            trims=self._trims,
            closed_conns=self._closed_conns,
            close_failures=self._close_failures,
            ignored_notifications=self._ignored + self._queue.ignored_after_close,
            decay_failures=self._decay_failures,
            loop_failures=self._loop_failures,
            running=self._state == _RUNNING,
            closed=self._state == _CLOSED,
        )

    # -- trimming -------------------------------------------------------------------------

    async def trim_open_conns(self, *, deadline: float | None = None) -> TrimResult:
        """Closes the least valuable peers until `low_water` eligible connections are left.

        Runs whenever eligible connections exceed low water, whatever high water says
        (`low_water == high_water == 0` disables it). A call made while a trim is in flight
        joins it and returns its result. `deadline` is a time on the manager's clock after
        which no close starts; the result then says `cut_short`. Cancelling the caller stops
        the trim the same way (closes already started finish, each within `close_timeout`;
        the others are left open and counted) and re-raises the cancellation.

        Raises `ManagerClosedError` at once after `aclose()`.
        """
        if deadline is not None:
            if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
                raise TypeError(f"deadline must be a number or None, not {type(deadline).__name__}")
            if math.isnan(deadline):
                raise ValueError("deadline must not be NaN")
        if self._state in (_CLOSING, _CLOSED):
            raise ManagerClosedError("trim_open_conns() after aclose()")
        if self._config.trimming_disabled:
            await anyio.lowlevel.checkpoint()
            return TrimResult()
        return await self._trim(deadline)

    async def _trim(self, deadline: float | None) -> TrimResult:
        """The single-flight coordinator shared by explicit and background trims."""
        flight = self._flight
        if flight is not None:
            await flight.done.wait()
            if flight.result is None:
                raise RuntimeError("the trim this call joined failed")
            return flight.result
        flight = self._flight = _Flight()
        try:
            return await self._run_trim(flight, deadline)
        finally:
            self._flight = None
            flight.done.set()

    async def _run_trim(self, flight: _Flight, deadline: float | None) -> TrimResult:
        self._drain()
        table = self._table
        started_at = self._now()
        self._last_trim = started_at
        self._trims += 1
        temporary_removed = table.reap_temporary(started_at)
        plan: TrimPlan = table.plan_trim(started_at, self._config.low_water, self._policy)
        # Nothing eligible: the next background trim waits for the first grace period to end.
        self._grace_hold = plan.next_grace_expiry if plan.target <= 0 else None
        conns = table.mark_planned(plan)
        progress = _Progress()
        cancelled = False
        try:
            if conns:
                await self._close_all(conns, deadline, progress)
        except anyio.get_cancelled_exc_class():
            cancelled = True
            raise
        finally:
            for conn in conns[progress.started :]:
                table.unmark_closing(conn)
            self._closed_conns += progress.closed
            self._close_failures += progress.failed
            flight.result = TrimResult(
                closed=progress.closed,
                failed=progress.failed,
                cut_short=cancelled or progress.started < len(conns),
                target=plan.target,
                started_at=started_at,
                finished_at=self._now(),
                victims=plan.victims,
                temporary_removed=temporary_removed,
            )
            self._check_high_water()
        return flight.result

    async def _close_all(
        self, conns: list[Conn], deadline: float | None, progress: _Progress
    ) -> None:
        """Closes `conns` with at most `close_concurrency` at once; see `trim_open_conns`."""
        clock = self._clock
        timeout = self._config.close_timeout
        watched: deque[_Closing] = deque()
        watch_wakeup = _Wakeup()

        async def watchdog() -> None:
            # Closes start in order, so their deadlines are in order: watch the oldest only.
            while True:
                while watched and watched[0].done:
                    watched.popleft()
                if not watched:
                    await watch_wakeup.wait()
                    continue
                head = watched[0]
                await clock.sleep_until(head.deadline)
                if not head.done:
                    watched.popleft()
                    head.scope.cancel()

        async def worker() -> None:
            while progress.started < len(conns):
                await anyio.lowlevel.checkpoint_if_cancelled()
                if deadline is not None and clock.now() >= deadline:
                    return
                if self._state in (_CLOSING, _CLOSED):
                    return  # aclose() has begun: start no new close
                conn = conns[progress.started]
                progress.started += 1
                closing = _Closing(clock.now() + timeout)
                watched.append(closing)
                watch_wakeup.set()
                await self._close_one(conn, closing, progress)

        async with anyio.create_task_group() as tg:
            watchdog_scope = anyio.CancelScope(shield=True)

            async def run_watchdog() -> None:
                with watchdog_scope:
                    await watchdog()

            tg.start_soon(run_watchdog)
            try:
                async with anyio.create_task_group() as workers:
                    for _ in range(min(self._config.close_concurrency, len(conns))):
                        workers.start_soon(worker)
            finally:
                watchdog_scope.cancel()

    async def _close_one(self, conn: Conn, closing: _Closing, progress: _Progress) -> None:
        closed = False
        token = _CLOSE_IN_PROGRESS.set(self)
        with closing.scope:
            try:
                await conn.close()
                closed = True
            except Exception:
                logger.warning("asyncconnmgr: closing %r failed", conn, exc_info=True)
            finally:
                _CLOSE_IN_PROGRESS.reset(token)
        closing.done = True
        if closing.scope.cancelled_caught:
            closed = False
            logger.warning("asyncconnmgr: closing %r timed out; it stays open", conn)
        table = self._table
        if closed:
            progress.closed += 1
            if table.remove_conn(conn):
                self._unconfirmed.add(conn)
                self._ended.add(conn)
        else:
            progress.failed += 1
            table.unmark_closing(conn)

    # -- background loops -----------------------------------------------------------------

    async def _wait(self, wakeup: _Wakeup, until: float | None) -> None:
        """Waits for `wakeup`, or until the clock reaches `until` (if not None)."""
        if until is None:
            await wakeup.wait()
            return
        async with anyio.create_task_group() as tg:

            async def timer() -> None:
                await self._clock.sleep_until(until)
                tg.cancel_scope.cancel()

            tg.start_soon(timer)
            await wakeup.wait()
            tg.cancel_scope.cancel()

    async def _consume_loop(self) -> None:
        queue = self._queue
        while True:
            await queue.wait_nonempty()
            if self._state != _RUNNING:
                # aclose() applies what is left once the closes in flight have finished.
                # Park until cancelled: on asyncio, a task woken by every notification of a
                # flood would never be at rest long enough to receive the cancellation.
                await anyio.sleep_forever()
            self._drain()

    async def _trim_loop(self) -> None:
        cfg = self._config
        table = self._table
        while True:
            if cfg.trimming_disabled or table.conn_count <= cfg.high_water:
                await self._trim_wakeup.wait()
                continue
            earliest = (
                self._now() if self._last_trim is None else self._last_trim + cfg.silence_period
            )
            if self._grace_hold is not None and self._grace_hold > earliest:
                earliest = self._grace_hold
            if self._now() < earliest:
                await self._wait(self._trim_wakeup, earliest)
                continue
            await self._trim(None)

    async def _decay_loop(self) -> None:
        resolution = self._config.decay_resolution
        next_tick = self._now() + resolution
        while True:
            await self._clock.sleep_until(next_tick)
            now = self._now()
            for value, exc in self._table.decay(now):
                self._decay_failures += 1
                logger.error(
                    "asyncconnmgr: decay function of tag %r failed for peer %r; value kept",
                    value.tag,
                    value.peer,
                    exc_info=exc,
                )
            next_tick += resolution
            if next_tick <= now:
                next_tick = now + resolution

    async def _reap_loop(self) -> None:
        table = self._table
        while True:
            expiry = table.next_temporary_expiry()
            if expiry is None:
                await self._reaper_wakeup.wait()
                continue
            await self._clock.sleep_until(expiry)
            # A queued `connected` converts its peer's temporary entry: apply it first.
            self._drain()
            table.reap_temporary(self._now())

    # -- for tests --------------------------------------------------------------------------

    def _check_invariants(self) -> None:
        self._table._check_invariants()
