"""ConnManager: the async shell around the ledger, the table, the policy and the closer.

The manager is the only part that awaits and the only part that knows the lifecycle. For
the life of `async with manager:` it owns one task group holding four background loops,
each under a small supervisor, and the trim in flight:

- the consumer hands queued notifications to the ledger and wakes the trimmer when the
  count exceeds high water (or the ceiling);
- the trimmer starts background trims (never twice within `silence_period`, except when the
  count crosses the bounded count's ceiling);
- the decayer visits decaying tags every `decay_resolution`;
- the reaper removes temporary entries unused for the grace period.

A trim is planned synchronously (candidates from the table, the order from the policy, the
victims marked closing) and then flown as a task of the manager's group, which runs the
closes through the closer. Callers of `trim_open_conns()` and the background trimmer *join*
the flight: each with its own deadline and its own cancellation; the flight starts closes
while at least one of them still wants it (see `trim_open_conns`); the `Flight` keeps that
book. Every trim ends in a `TrimResult`, published to `last_trim_result`, to trim listeners
and to subscribers.

Layers (see docs/architecture.md): this module imports the closer, the flight, the ledger,
the table, the policy and the queue; none of them imports this one.
"""

from __future__ import annotations

import enum
import itertools
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Final, cast

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus

from ._clock import AnyioClock, Wakeup, wait_until
from ._closer import Closer, CloseRun
from ._config import (
    Config,
    check_callable,
    check_clock,
    check_deadline,
    check_int,
    check_peer,
    check_seconds,
    check_tag,
)
from ._decay import BumpFn, DecayFn, DecayingTag
from ._errors import LimitExceededError, ManagerClosedError
from ._events import EventQueue, ManagerNotifiee, TrimSubscription
from ._flight import Flight, victims_of
from ._ledger import Ledger
from ._models import (
    LOOPS,
    OUTCOMES,
    TRIGGERS,
    ManagerInfo,
    PeerStatus,
    TagInfo,
    TrimResult,
)
from ._policy import DefaultPolicy, TrimPolicy, as_policy, reason_of
from ._table import Candidates, Choice, PeerEntry, PeerTable
from .abc import Clock, Conn, Notifiee, PeerId

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = ["ConnManager"]

logger = logging.getLogger("asyncconnmgr")

#: How long a background loop waits before restarting after an unexpected exception.
RESTART_BACKOFF: Final = 1.0
_LEFT_THE_COUNTS: Final = frozenset({"closed", "aborted"})


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class ConnManager(anyio.AsyncContextManagerMixin):
    """Keeps a host's open connections between a low and a high water mark.

    When more than `high_water` connections are open, a background trim closes the least
    valuable peers until `low_water` eligible connections are left. Peers are valued by their
    tags; protected peers and peers within `grace_period` of connecting are never closed
    (with the bounded count, only up to a budget of them: see below).

    Run it with `async with ConnManager(...) as manager:` (asyncio or trio), hand
    `manager.notifee()` to the host, and tag and protect peers from anywhere in the host. All
    times are seconds on `clock` (anyio's clock by default).

    Arguments (keyword-only; a wrong type raises TypeError, a wrong value ValueError, naming
    the argument):
        low_water, high_water: `0 <= low_water <= high_water`; `0, 0` disables trimming.
        grace_period: how long a newly connected peer is left alone (>= 0).
        silence_period: the shortest time between the starts of two background trims (> 0).
        close_timeout: how long one close may take before it is cancelled, and the
            connection aborted if it has an `abort()` (> 0).
        close_concurrency: how many closes run at once (>= 1).
        decay_resolution: the period of decaying-tag ticks (> 0).
        clock: an `asyncconnmgr.abc.Clock`; inject `testing.FakeClock` in tests
            (TypeError if it has no `now()` and `sleep_until()`).
        policy: orders the victims (`DefaultPolicy()` by default): an object with
            `select(candidates, target, now)`, or a v0.1 one with `sort_key(candidate)`
            (TypeError if it has neither).
        bounded_count: keep the count bounded while peers are in grace (default True):
            peers in grace beyond `grace_budget` connections become candidates after every
            other one (only down to low water), and a count above `ceiling` starts a trim
            at once. False gives the
            reference behaviour (grace protects every new peer, however many).
        ceiling: with the bounded count, the count that starts a trim at once (>= high
            water; default high water plus a fifth of the band between the marks, at
            least 1).
        grace_budget: with the bounded count, how many connections of peers in grace keep
            their grace (>= 0; default half the band, `(high_water - low_water) // 2`);
            which peers keep it is the policy's choice (the youngest lose it first with
            the default policy).
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
        policy: object = None,
        bounded_count: bool = True,
        ceiling: int | None = None,
        grace_budget: int | None = None,
    ) -> None:
        self._config = Config.build(
            low_water=low_water,
            high_water=high_water,
            grace_period=grace_period,
            silence_period=silence_period,
            close_timeout=close_timeout,
            close_concurrency=close_concurrency,
            decay_resolution=decay_resolution,
            bounded_count=bounded_count,
            ceiling=ceiling,
            grace_budget=grace_budget,
        )
        if clock is None:
            clock = AnyioClock()
        else:
            check_clock(clock)
        self._policy: TrimPolicy = DefaultPolicy() if policy is None else as_policy(policy)
        self._clock: Clock = clock
        self._now = clock.now
        cfg = self._config
        self._table = PeerTable(cfg.grace_period, cfg.grace_budget)
        self._ledger = Ledger(self._table)
        self._queue = EventQueue(self._ledger.ignore_after_close)
        self._notifiee = ManagerNotifiee(self._queue)
        self._closer = Closer(clock, timeout=cfg.close_timeout, concurrency=cfg.close_concurrency)
        self._state = _State.NEW

        self._last_trim: float | None = None
        self._grace_hold: float | None = None
        self._ceiling_armed = True
        self._flight: Flight | None = None
        self._trim_wakeup = Wakeup()
        self._reaper_wakeup = Wakeup()
        self._task_group: TaskGroup | None = None
        self._background_scope: anyio.CancelScope | None = None
        self._background_done: anyio.Event | None = None
        self._closed_event: anyio.Event | None = None
        self._fatal: BaseException | None = None

        self._last_result: TrimResult | None = None
        self._subscriptions: list[TrimSubscription] = []
        self._listeners: dict[int, Callable[[TrimResult], object]] = {}
        self._listener_ids = itertools.count()
        # Trims by trigger, every trigger present (a preview is not a trim).
        self._trims = dict.fromkeys((t for t in TRIGGERS if t != "preview"), 0)
        self._pruned: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._pruned_peers = 0
        self._decay_failures = 0
        self._listener_failures = 0
        self._loop_failures: dict[str, int] = {}

    def __repr__(self) -> str:
        cfg = self._config
        return (
            f"<ConnManager {self._state.value} low_water={cfg.low_water} "
            f"high_water={cfg.high_water} conns={self._table.conn_count} "
            f"peers={self._table.peer_count}>"
        )

    # -- lifecycle ------------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[ConnManager]:
        if self._state is not _State.NEW:
            raise RuntimeError(
                f"a ConnManager can be entered only once (it is {self._state.value})"
            )
        self._state = _State.RUNNING
        self._closed_event = anyio.Event()
        self._background_done = anyio.Event()
        unwrapped: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
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
        finally:
            self._task_group = None
        if self._fatal is not None:
            fatal, self._fatal = self._fatal, None
            raise fatal
        if unwrapped is not None:
            raise unwrapped

    async def _run_background(self, *, task_status: TaskStatus[None]) -> None:
        assert self._background_done is not None
        try:
            with anyio.CancelScope() as scope:
                self._background_scope = scope
                async with anyio.create_task_group() as tg:
                    loops: list[Callable[[], Awaitable[None]]] = [
                        self._consume_loop,
                        self._trim_loop,
                        self._decay_loop,
                        self._reap_loop,
                    ]
                    for name, loop in zip(LOOPS, loops, strict=True):
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

    def _inside_own_close(self) -> bool:
        """Whether the current task is running a close of this manager's trim in flight."""
        flight = self._flight
        if flight is None or not flight.run.task_ids:
            return False
        return anyio.get_current_task().id in flight.run.task_ids

    async def aclose(self) -> None:
        """Applies every queued notification, then stops all background work.

        Idempotent and safe to call concurrently, inside or after `async with`; returns once
        no background task is left (a trim in flight starts no new close and finishes the
        closes it started, each bounded by `close_timeout`). Later notifications are counted
        and ignored, and `trim_open_conns()` raises `ManagerClosedError`. Subscriptions end.
        Cancelling a call to `aclose()` does not stop the shutdown: it completes anyway.

        Called from inside a connection's `close()` that a trim of this manager is running,
        it stops everything the same way but does not wait for the trim: that close is part
        of it, and waiting would never end.
        """
        inside_own_close = self._inside_own_close()
        if self._state is _State.NEW:
            self._drain()
            self._queue.closed = True
            self._state = _State.CLOSED
            self._end_subscriptions()
            return
        assert self._closed_event is not None
        assert self._background_done is not None
        if self._state is not _State.RUNNING:
            if inside_own_close:
                await anyio.lowlevel.checkpoint()
            else:
                await self._closed_event.wait()
            return
        self._state = _State.CLOSING
        try:
            self._drain()
            if self._background_scope is not None:
                self._background_scope.cancel()
            flight = self._flight
            if flight is not None:
                flight.run.stop()  # start no new close from now on
            if inside_own_close:
                await anyio.lowlevel.checkpoint()
                return
            with anyio.CancelScope(shield=True):
                await self._background_done.wait()
                flight = self._flight
                if flight is not None:
                    await flight.done.wait()
            # What the last closes reported (a `disconnected`) while they finished.
            self._drain()
        finally:
            self._queue.closed = True
            self._state = _State.CLOSED
            self._end_subscriptions()
            self._closed_event.set()

    async def wait_closed(self) -> None:
        """Returns once the manager has closed (at once if it already has).

        Raises RuntimeError for a manager that was never entered (it would wait forever).
        Cancelling the wait leaves nothing behind.
        """
        if self._state is _State.CLOSED:
            await anyio.lowlevel.checkpoint()
            return
        if self._closed_event is None:
            raise RuntimeError("wait_closed() on a ConnManager that was never entered")
        await self._closed_event.wait()

    def _die(self, exc: BaseException) -> None:
        """A background trim's close raised a BaseException: end the manager with it."""
        if self._fatal is None:
            self._fatal = exc
        logger.critical("asyncconnmgr: a close raised %r; the manager stops", exc)
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    # -- notifications --------------------------------------------------------------------

    def notifee(self) -> Notifiee:
        """The object the host calls on connection open/close; the same one every call."""
        return self._notifiee

    async def flush(self) -> None:
        """Returns once every notification queued before the call has been applied.

        The notifications are applied before the call first yields: a cancelled `flush()`
        has applied them all the same.
        """
        self._drain()
        await anyio.lowlevel.checkpoint()

    def _drain(self) -> None:
        """Hands every queued notification to the ledger, in order, in one batch."""
        items = self._queue.items
        if not items:
            return
        ledger = self._ledger
        ledger.apply(items, self._now())
        if ledger.regrown:
            # Trimming may be possible again although the last trim found nobody to close.
            ledger.regrown = False
            self._grace_hold = None
            self._ceiling_armed = True
        self._check_high_water()

    def _check_high_water(self) -> None:
        cfg = self._config
        if self._table.conn_count > cfg.high_water and not cfg.trimming_disabled:
            self._trim_wakeup.set()

    # -- tags and protection --------------------------------------------------------------

    def tag_peer(self, peer: PeerId, tag: str, value: int) -> None:
        """Sets the peer's tag to `value` (not added to it). An unknown peer gets a
        temporary entry, reaped after the grace period unless the peer connects.

        Raises TypeError or ValueError naming the argument, and changes nothing, if `peer`
        is None or unhashable, `tag` is not a non-empty str, or `value` is not an int.
        """
        if type(tag) is not str or not tag:
            check_tag("tag", tag)
        if type(value) is not int:
            check_int("value", value)
        if peer is None:
            check_peer(peer)
        try:
            # As in `upsert_tag`: the peer is hashed once, by the table, unless it fails.
            created = self._table.tag_peer(peer, tag, value, self._now)
        except TypeError:
            check_peer(peer)  # raises the message that names `peer` if it is unhashable
            raise
        if created and self._reaper_wakeup.waiting:
            self._reaper_wakeup.set()

    def untag_peer(self, peer: PeerId, tag: str) -> None:
        """Removes the tag; an unknown peer or an absent tag is left alone.

        Raises TypeError or ValueError naming the argument, and changes nothing, if `peer`
        is None or unhashable or `tag` is not a non-empty str.
        """
        check_tag("tag", tag)
        check_peer(peer)
        self._table.untag_peer(peer, tag)

    def upsert_tag(self, peer: PeerId, tag: str, fn: Callable[[int], int]) -> None:
        """Sets the tag to `fn(current value, or 0)`.

        `fn` runs with nothing locked and may call back into the manager; if it raises (or
        does not return an int) the exception reaches the caller and nothing changes.
        Raises TypeError or ValueError naming the argument, and changes nothing, if `peer`
        is None or unhashable, `tag` is not a non-empty str, or `fn` is not callable.
        """
        if type(tag) is not str or not tag:
            check_tag("tag", tag)
        check_callable("fn", fn)
        if peer is None:
            check_peer(peer)
        try:
            # An unhashable peer raises TypeError in the table before anything changes; only
            # then is it worth hashing the peer again to say so (a py-libp2p ID hashes in
            # Python). Any other TypeError (from `fn`, or `fn`'s result) goes on as it is.
            created = self._table.upsert_tag(peer, tag, fn, self._now)
        except TypeError:
            check_peer(peer)
            raise
        if created and self._reaper_wakeup.waiting:
            self._reaper_wakeup.set()

    def get_tag_info(self, peer: PeerId) -> TagInfo | None:
        """A snapshot of the peer's entry, or None if the manager does not know it.

        Raises TypeError naming `peer` if it is None or unhashable.
        """
        check_peer(peer)
        return self._table.tag_info(peer)

    def protect(self, peer: PeerId, tag: str) -> None:
        """Protects the peer under `tag`: it is never trimmed while any protection remains.

        A trim that chose the peer before it was protected spares it, if its close has not
        started. Raises TypeError or ValueError naming the argument, and changes nothing, if
        `peer` is None or unhashable or `tag` is not a non-empty str.
        """
        check_tag("tag", tag)
        check_peer(peer)
        self._table.protect(peer, tag)

    def unprotect(self, peer: PeerId, tag: str) -> bool:
        """Removes one protection; returns True if the peer is still protected by another.

        Raises TypeError or ValueError naming the argument, and changes nothing, if `peer`
        is None or unhashable or `tag` is not a non-empty str.
        """
        check_tag("tag", tag)
        check_peer(peer)
        still_protected = self._table.unprotect(peer, tag)
        if not still_protected:
            self._grace_hold = None  # the peer may be eligible now
            self._check_high_water()
        return still_protected

    def is_protected(self, peer: PeerId, tag: str | None = None) -> bool:
        """Whether the peer is protected under `tag`, or under any tag if `tag` is None.

        Raises TypeError or ValueError naming the argument if `peer` is None or unhashable
        or `tag` is neither None nor a non-empty str.
        """
        if tag is not None:
            check_tag("tag", tag)
        check_peer(peer)
        return self._table.is_protected(peer, tag)

    # -- decaying tags --------------------------------------------------------------------

    def register_decaying_tag(
        self, name: str, interval: float, decay_fn: DecayFn, bump_fn: BumpFn
    ) -> DecayingTag:
        """Registers a tag whose values fade every `interval` seconds unless bumped.

        An interval shorter than `decay_resolution` is raised to it (`tag.interval` tells).
        Raises ValueError for a name already registered, and TypeError or ValueError naming
        the argument if `name` is not a non-empty str, `interval` is not a finite number
        above 0, or `decay_fn` or `bump_fn` is not callable; nothing changes then.
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
        check_peer(peer)
        self._table.bump(tag, peer, delta, self._now)
        if self._reaper_wakeup.waiting:
            self._reaper_wakeup.set()

    def _decaying_remove(self, tag: DecayingTag, peer: PeerId) -> None:
        check_peer(peer)
        self._table.remove_decaying(tag, peer)

    def _decaying_close(self, tag: DecayingTag) -> None:
        self._table.unregister_decaying(tag)

    # -- information ----------------------------------------------------------------------

    def check_limit(self, limit: int) -> None:
        """Raises `LimitExceededError` if high water exceeds the host's connection limit.

        Raises TypeError or ValueError naming `limit` if it is not an int >= 0.
        """
        check_int("limit", limit, minimum=0)
        if self._config.high_water > limit:
            raise LimitExceededError(
                f"high_water ({self._config.high_water}) exceeds the limit ({limit})"
            )

    def get_info(self) -> ManagerInfo:
        """A snapshot of the configuration and the live counters."""
        cfg = self._config
        table = self._table
        pruned = self._pruned
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
            trims=sum(self._trims.values()),
            closed_conns=pruned["closed"] + pruned["aborted"],
            close_failures=pruned["failed"] + pruned["timed_out"],
            ignored_notifications=self._ledger.ignored,
            decay_failures=self._decay_failures,
            loop_failures=self._loop_failures,
            running=self._state is _State.RUNNING,
            closed=self._state is _State.CLOSED,
            conns_by_direction=table.conns_by_direction(),
            closing_by_direction=table.closing_by_direction(),
            trims_by_trigger=self._trims,
            pruned_by_outcome=pruned,
            pruned_peers=self._pruned_peers,
            stream_read_failures=table.stream_failures,
            ceiling=cfg.ceiling,
            grace_budget=cfg.grace_budget,
        )

    @property
    def clock(self) -> Clock:
        """The clock every timer of this manager runs on (the injected one, or anyio's)."""
        return self._clock

    @property
    def close_timeout(self) -> float:
        """How long one close may run before it is given up (or aborted), on `clock`."""
        return self._config.close_timeout

    @property
    def last_trim_result(self) -> TrimResult | None:
        """The `TrimResult` of the most recent trim that ended (background or explicit)."""
        return self._last_result

    def peer_values(self) -> list[int]:
        """The value of every peer with an open connection (for a histogram; no peer ids)."""
        return self._table.peer_values()

    def add_trim_listener(self, callback: Callable[[TrimResult], object]) -> Callable[[], None]:
        """Calls `callback(result)` (sync) when each trim ends; returns a function that
        removes it. An exception from the callback is logged and counted, never raised.

        Raises TypeError naming `callback` if it is not callable.
        """
        check_callable("callback", callback)
        key = next(self._listener_ids)
        self._listeners[key] = callback

        def remove() -> None:
            self._listeners.pop(key, None)

        return remove

    def subscribe(self, max_buffer: int = 256) -> TrimSubscription:
        """A subscription to the `TrimResult` of every trim that ends from now on.

        Use it as `with manager.subscribe() as results: async for result in results: ...`.
        It never blocks or slows the manager: it holds at most `max_buffer` results, and
        when it is full the oldest is dropped and counted in `results.lost`. Iteration ends
        when the subscription is closed (leaving the `with`) or the manager closes. Several
        subscriptions may be open at once. Raises TypeError/ValueError for a `max_buffer`
        that is not a positive int.
        """
        size = check_int("max_buffer", max_buffer, minimum=1)
        subscription = TrimSubscription(size, self._subscriptions.remove)
        self._subscriptions.append(subscription)
        if self._state is _State.CLOSED:
            subscription.close()  # an iteration that has ended (closing removes it again)
        return subscription

    def _end_subscriptions(self) -> None:
        for subscription in list(self._subscriptions):
            subscription.close()

    def _publish(self, result: TrimResult) -> None:
        self._last_result = result
        if result.trigger != "preview":
            pruned = self._pruned
            for outcome, count in result.outcomes.items():
                pruned[outcome] += count
            self._pruned_peers += sum(
                1 for victim in result.victims if victim.outcome in _LEFT_THE_COUNTS
            )
        for subscription in self._subscriptions:
            subscription.push(result)
        for callback in list(self._listeners.values()):
            try:
                callback(result)
            except Exception:
                self._listener_failures += 1
                logger.exception("asyncconnmgr: a trim listener failed")

    def explain(self, peer: PeerId) -> PeerStatus:
        """Why the peer would or would not be closed by a trim now; changes nothing.

        Raises TypeError naming `peer` if it is unhashable or None.
        """
        check_peer(peer)
        self._drain()
        table = self._table
        entry = table.lookup(peer)
        cfg = self._config
        if entry is None:
            protected_by = table.protection_tags(peer)  # protected before it connected
            if protected_by:
                return PeerStatus(peer, "protected", protected_by=protected_by)
            return PeerStatus(peer, "unknown")
        if entry.temp:
            return PeerStatus(
                peer, "temporary", value=entry.value, until=entry.first_seen + cfg.grace_period
            )
        value, conns, outbound = entry.value, entry.open_conns, entry.outbound
        protected_by = table.protection_tags(peer)
        if protected_by or conns <= 0:
            # `entry.streams` is read only for candidates: read this peer's streams now.
            streams = sum(conn.streams for conn in entry.connections)
            if protected_by:
                return PeerStatus(peer, "protected", value, conns, streams, outbound, protected_by)
            return PeerStatus(peer, "closing", value, conns, streams, outbound)
        now = self._now()
        candidates = table.candidates(now)
        everyone = candidates.eligible + candidates.in_grace
        if entry not in everyone:
            until = entry.first_seen + cfg.grace_period
            # `entry.streams` is read only for candidates: read this peer's streams now.
            streams = sum(conn.streams for conn in entry.connections)
            return PeerStatus(peer, "in_grace", value, conns, streams, outbound, until=until)
        self._log_stream_failures()
        order = [
            *self._order(candidates.eligible, candidates.count, now),
            *self._order(candidates.in_grace, candidates.count, now),
        ]
        chosen = self._plan(now)[2].entries
        rank = next((at for at, item in enumerate(order) if item is entry), None)
        return PeerStatus(
            peer,
            "candidate",
            value,
            conns,
            entry.streams,
            outbound,
            rank=rank,
            candidates=len(everyone),
            would_close=any(item is entry for item in chosen),
        )

    def preview_trim(self) -> TrimResult:
        """What a trim would close now (trigger "preview"), closing nothing and changing
        nothing: its victims carry the outcome "not_started".

        Queued notifications are applied first. While a trim is in flight this plans over
        the connections it is not already closing: what a trim started after it would close
        (a `trim_open_conns()` called meanwhile joins the one in flight instead).
        """
        self._drain()
        now = self._now()
        _, target, choice, reasons = self._plan(now)
        values = tuple(entry.value for entry in choice.entries)
        victims = victims_of(choice, values, reasons, {}, 0, not_started=True)
        return TrimResult(
            target=max(target, 0),
            started_at=now,
            finished_at=now,
            victims=victims,
            trigger="preview",
            outcomes={"not_started": len(choice.conns)} if choice.conns else {},
        )

    # -- trimming -------------------------------------------------------------------------

    async def trim_open_conns(self, *, deadline: float | None = None) -> TrimResult:
        """Closes the least valuable peers until `low_water` eligible connections are left.

        Runs whenever eligible connections exceed low water, whatever high water says
        (`low_water == high_water == 0` disables it). `deadline` is a time on the manager's
        clock after which this caller no longer wants the trim.

        A call made while a trim is in flight joins it. Each caller's deadline and
        cancellation are its own: the trim goes on starting closes while at least one caller
        (or the background trimmer) still wants it. A caller that leaves while others still
        want it returns at once a `TrimResult` of the progress so far (`cut_short=True`), or
        re-raises its cancellation. The last caller to leave stops the trim: no close starts
        after that, and it returns (or re-raises) once the closes already started have
        finished, each within `close_timeout`; the connections whose close never started are
        left open and counted. A cancelled caller always gets its cancellation.

        Raises TypeError or ValueError naming `deadline` if it is neither None nor a number
        (or is NaN). Raises `ManagerClosedError` after `aclose()`; RuntimeError on a manager
        that was never entered (`async with`), and when called from inside a `close()` that
        this manager's own trim is running (it would wait for itself). A `BaseException` that is
        not an `Exception` raised by a `close()` comes out of here as itself, once the
        started closes have finished.
        """
        deadline = check_deadline(deadline)
        state = self._state
        if state is _State.CLOSING or state is _State.CLOSED:
            raise ManagerClosedError("trim_open_conns() after aclose()")
        if state is _State.NEW:
            raise RuntimeError("trim_open_conns() on a ConnManager that is not running")
        if self._inside_own_close():
            raise RuntimeError("trim_open_conns() from inside a close() of this manager's own trim")
        if self._config.trimming_disabled:
            await anyio.lowlevel.checkpoint()
            return TrimResult()
        return await self._trim("explicit", deadline)

    async def _trim(self, trigger: str, deadline: float | None) -> TrimResult:
        flight = self._flight
        if flight is None:
            flight = self._take_off(trigger)
        return await self._join(flight, deadline, explicit=trigger == "explicit")

    def _take_off(self, trigger: str) -> Flight:
        """Plans a trim synchronously, marks its victims closing and starts its flight."""
        assert self._task_group is not None
        self._drain()
        table = self._table
        now = self._now()
        previous_trim = self._last_trim
        self._last_trim = now
        self._trims[trigger] += 1
        temporary_removed = table.reap_temporary(now)
        candidates, target, choice, reasons = self._plan(now)
        # Nothing to close: the next background trim waits for the first grace period to
        # end, unless a connection arrives meanwhile that could be closed (see `_drain`).
        self._grace_hold = candidates.next_grace_expiry if target <= 0 else None
        marked = table.mark_closing(choice.conns)
        assert len(marked) == len(choice.conns), "a victim was closing already"
        epoch = table.protect_epoch
        run = CloseRun(
            choice.conns,
            recheck=lambda: table.protect_epoch != epoch,
            spare=table.conn_protected,
        )
        flight = self._flight = Flight(
            trigger,
            run,
            choice,
            target,
            now,
            anyio.Event(),
            previous_trim=previous_trim,
            temporary_removed=temporary_removed,
            reasons=reasons,
        )
        self._task_group.start_soon(self._fly, flight)
        return flight

    def _plan(self, now: float) -> tuple[Candidates, int, Choice, tuple[object, ...]]:
        """The victims of a trim now: the policy's order of the eligible, covering what
        exceeds low water; then, when more connections are in grace than the budget, the
        policy's order of the peers in grace, covering the excess (the policy chooses who
        keeps its grace), as far as the count (protected peers aside) stays at or above
        low water: a host that has just started, all of its peers in grace, keeps low water.
        Also each victim's reason, asked of the policy right after the order it belongs
        to."""
        table = self._table
        candidates = table.candidates(now)
        self._log_stream_failures()
        if self._config.trimming_disabled:
            return candidates, 0, Choice(), ()
        target = self._target(candidates)
        over = candidates.beyond_budget
        if target <= 0 and over <= 0:
            return candidates, min(target, 0), Choice(), ()
        choice = Choice()
        reasons: tuple[object, ...] = ()
        # A policy may keep its reasons for its last order only (a v0.1 `sort_key` policy
        # does): ask for them before ordering the next part.
        if target > 0:
            choice = table.choose(self._order(candidates.eligible, target, now), target)
            reasons = self._reasons(choice)
        if over > 0:
            left = candidates.eligible_count - len(choice.conns) + candidates.grace_count
            over = min(over, left - self._config.low_water)
        if over > 0:
            late = table.choose(self._order(candidates.in_grace, over, now), over)
            choice = choice + late
            reasons += self._reasons(late)
        return candidates, max(target, 0) + max(over, 0), choice, reasons

    def _target(self, candidates: Candidates) -> int:
        """How many eligible connections exceed low water."""
        return candidates.eligible_count - self._config.low_water

    def _order(self, entries: list[PeerEntry], target: int, now: float) -> Iterable[PeerEntry]:
        # The table checks that the policy returns the entries it was given (`choose`).
        return cast("Iterable[PeerEntry]", self._policy.select(entries, target, now))

    def _log_stream_failures(self) -> None:
        for conn, error in self._table.take_stream_failures():
            logger.warning(
                "asyncconnmgr: num_streams of %r %s; counted as idle",
                conn,
                "failed" if error is not None else "is not a non-negative int",
                exc_info=error,
            )

    async def _join(self, flight: Flight, deadline: float | None, *, explicit: bool) -> TrimResult:
        """Waits for `flight` on behalf of one caller (see `trim_open_conns`).

        A `BaseException` that a close raised comes out here for an `explicit` caller only.
        The background trimmer never raises it: the flight ends the manager with it
        (`_die`), and it comes out of `async with` in the host's task. (On asyncio a
        KeyboardInterrupt or SystemExit raised in any other task goes to the event loop.)
        """
        flight.want(deadline)
        try:
            if deadline is None:
                await flight.done.wait()
            else:
                await wait_until(self._clock, flight.done, deadline)
        except BaseException:
            if flight.leave(deadline):
                with anyio.CancelScope(shield=True):
                    await flight.done.wait()
            raise
        if flight.result is None:  # this caller's deadline came first
            if not flight.leave(deadline):
                return flight.make_result(self._now(), self._table, finished=False)
            with anyio.CancelScope(shield=True):
                await flight.done.wait()
        else:
            flight.leave(deadline)
        assert flight.result is not None
        if explicit and flight.run.fatal is not None:
            raise flight.run.fatal
        return flight.result

    async def _fly(self, flight: Flight) -> None:
        """Runs a planned trim's closes; always ends with `flight.result` and `done` set."""
        ledger = self._ledger
        outcomes = flight.outcomes

        def report(conn: Conn, outcome: str) -> None:  # every outcome but "closed"
            if outcome == "aborted":
                ledger.close_completed(conn)
            else:
                ledger.close_not_done(conn)
            outcomes[conn] = outcome

        run = flight.run
        try:
            await self._closer.run(run, report, ledger.close_completed)
        finally:
            ledger.closes_not_started(run.conns[run.started :])
            ledger.settle()
            if run.started == 0 and flight.target > 0 and flight.choice.conns:
                # No close started (the deadline had passed, or every caller left at once):
                # this trim must not push the background trimmer back by a silence period.
                self._last_trim = flight.previous_trim
            result = flight.result = flight.make_result(self._now(), self._table, finished=True)
            self._flight = None
            flight.done.set()
            self._publish(result)
            self._check_high_water()
            if run.fatal is not None and flight.trigger != "explicit":
                self._die(run.fatal)

    def _reasons(self, choice: Choice) -> tuple[object, ...]:
        """Each victim's reason, asked of the policy while planning (before any close)."""
        reason = reason_of(self._policy)
        if reason is None:
            return (None,) * len(choice.entries)
        return tuple(reason(entry) for entry in choice.entries)

    # -- background loops -----------------------------------------------------------------

    async def _consume_loop(self) -> None:
        queue = self._queue
        while True:
            await queue.wait_nonempty()
            if self._state is not _State.RUNNING:
                # aclose() applies what is left once the closes in flight have finished.
                # Park until cancelled: on asyncio, a task woken by every notification of a
                # flood would never be at rest long enough to receive the cancellation.
                await anyio.sleep_forever()
            self._drain()

    async def _trim_loop(self) -> None:
        cfg = self._config
        table = self._table
        ceiling = cfg.ceiling
        while True:
            count = table.conn_count
            if cfg.trimming_disabled or count <= cfg.high_water:
                await self._trim_wakeup.wait()
                continue
            now = self._now()
            if ceiling is not None and count > ceiling and self._ceiling_armed:
                trigger, earliest = "ceiling", now
            else:
                trigger = "background"
                earliest = now if self._last_trim is None else self._last_trim + cfg.silence_period
                if self._grace_hold is not None and self._grace_hold > earliest:
                    earliest = self._grace_hold
            if now < earliest:
                await wait_until(self._clock, self._trim_wakeup, earliest)
                continue
            result = await self._trim(trigger, None)
            if result.trigger == "ceiling" and result.closed == 0:
                # Crossing the ceiling again starts a trim at once only after a connection
                # arrives: a ceiling trim that closed nothing would otherwise spin.
                self._ceiling_armed = False

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
        self._ledger._check_invariants()
