"""py-libp2p 0.8.1's connection pruner, its rules re-implemented on the simulated host.

The source is `libp2p/network/connection_pruner.py` (`ConnectionPruner`) and the trigger in
`libp2p/network/swarm.py` (`Swarm._schedule_prune`, `_prune_in_background`). Its rules:

- It runs only when a connection is added to the swarm, debounced: an attempt within 1 s
  (`_prune_debounce`) of the previous attempt is dropped (not deferred), and an attempt
  while a prune runs is dropped too. Nothing runs it on a timer.
- It prunes only when the swarm's connections (protected and in-grace ones included)
  exceed high water; then it aims at `count - low_water`, at most 20 per cycle.
- It sorts connections by peer value (the sum of the tags), stream count, direction
  (inbound first) and age, *oldest first* (`_created_at` ascending).
- It skips a connection in its grace period (age < grace), one with any open stream, one
  whose peer has a positive value, and one whose peer is protected.
- It closes connections (not peers) one after another, awaiting each close.

Where the simulation differs from py-libp2p: the tag values (tags and decaying tags) and
the protections are kept by an `asyncconnmgr.ConnManager` with trimming disabled, standing
in for py-libp2p's `TagStore` (which has no decaying tags; the same values are given to
every policy compared); py-libp2p's "temporary entry first" key never applies (every
simulated peer connects before it is tagged); its allow list is empty; time is the
simulator's clock, not `time.time()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from anyio.abc import TaskGroup

from ..abc import Clock, Direction

if TYPE_CHECKING:
    from .. import ConnManager
    from ._world import SimConn

__all__ = ["LIBP2P_DEBOUNCE", "LIBP2P_MAX_PRUNE_BATCH", "Libp2pPruner"]

#: `Swarm._prune_debounce`: attempts closer together than this are dropped.
LIBP2P_DEBOUNCE = 1.0
#: `max_prune_batch` in `ConnectionPruner._maybe_prune_connections`.
LIBP2P_MAX_PRUNE_BATCH = 20

#: py-libp2p's `rcmgr.Direction` values (UNKNOWN counts as 0, like INBOUND).
_DIRECTION_ORDER = {Direction.INBOUND: 0, Direction.OUTBOUND: 1, Direction.UNKNOWN: 0}

TrimRecord = Callable[[float, float, int, str], None]


class Libp2pPruner:
    """The pruner of py-libp2p 0.8.1 on the simulated host's connections.

    `connection_added()` is the swarm's `_schedule_prune()`: call it on every new
    connection. `record(started, duration, closed, trigger)` is called after every prune
    that ran past the high-water check.
    """

    def __init__(
        self,
        *,
        connections: Callable[[], list[SimConn]],
        tags: ConnManager,
        clock: Clock,
        task_group: TaskGroup,
        low_water: int,
        high_water: int,
        grace_period: float,
        record: TrimRecord,
    ) -> None:
        self._connections = connections
        self._tags = tags
        self._clock = clock
        self._task_group = task_group
        self._low = low_water
        self._high = high_water
        self._grace = grace_period
        self._record = record
        self._last_attempt: float | None = None
        self._running = False

    def connection_added(self) -> None:
        """`Swarm._schedule_prune`: at most one attempt per debounce window."""
        now = self._clock.now()
        if self._last_attempt is not None and now - self._last_attempt < LIBP2P_DEBOUNCE:
            return
        self._last_attempt = now
        self._task_group.start_soon(self._prune_in_background)

    async def _prune_in_background(self) -> None:
        if self._running:
            return
        self._running = True
        try:
            await self._maybe_prune()
        finally:
            self._running = False

    async def _maybe_prune(self) -> None:
        connections = self._connections()
        count = len(connections)
        if count <= self._high:
            return
        started = self._clock.now()
        tags = self._tags
        values: dict[object, int] = {}
        for conn in connections:
            peer = conn.remote_peer
            if peer not in values:
                info = tags.get_tag_info(peer)
                values[peer] = 0 if info is None else info.value
        ordered = sorted(
            connections,
            key=lambda c: (
                values[c.remote_peer],
                c.num_streams,
                _DIRECTION_ORDER[c.direction],
                c.opened,
            ),
        )
        to_prune = min(max(count - self._low, 0), LIBP2P_MAX_PRUNE_BATCH)
        to_close: list[SimConn] = []
        for conn in ordered:
            if started - conn.opened < self._grace:
                continue
            if conn.num_streams > 0:
                continue
            if values[conn.remote_peer] > 0:
                continue
            if tags.is_protected(conn.remote_peer):
                continue
            to_close.append(conn)
            if len(to_close) >= to_prune:
                break
        for conn in to_close:
            await conn.close()
        self._record(started, self._clock.now() - started, len(to_close), "connection")
