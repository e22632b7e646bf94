"""The notifiee and the queue between the host and the manager's state.

The host's `connected`/`disconnected` calls only append to a deque and, if the consumer is
asleep, wake it: they never block, never raise and never drop an event. The consumer (or
`flush()`, or a trim) later applies the whole queue to the table in one synchronous batch.

These two calls are the hottest path of the library (every connection of the host goes
through them twice), so the notifiee appends to the deque itself and takes the slow path
(`EventQueue.push`) only when the queue needs attention: it is closed, or a consumer waits.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from .abc import Conn

__all__ = ["CONNECTED", "DISCONNECTED", "EventQueue", "ManagerNotifiee"]

logger = logging.getLogger("asyncconnmgr")

CONNECTED = True
DISCONNECTED = False


class EventQueue:
    """An unbounded FIFO of `(kind, conn)` with a wake-up for one waiting consumer.

    `needs_attention` is true while the queue is closed or a consumer waits: only then must
    a producer go through `push` rather than append to `items` directly.
    """

    __slots__ = ("_closed", "_waiter", "ignored_after_close", "items", "needs_attention")

    def __init__(self) -> None:
        self.items: deque[tuple[bool, Conn]] = deque()
        self.ignored_after_close = 0
        self.needs_attention = False
        self._closed = False
        self._waiter: anyio.Event | None = None

    @property
    def closed(self) -> bool:
        """Once true, every notification is counted and dropped (set by `aclose()`)."""
        return self._closed

    @closed.setter
    def closed(self, value: bool) -> None:
        self._closed = value
        self._update_attention()

    def _update_attention(self) -> None:
        self.needs_attention = self._closed or self._waiter is not None

    def push(self, kind: bool, conn: Conn) -> None:
        if self._closed:
            self.ignored_after_close += 1
            logger.debug("notification after aclose() ignored: %r", conn)
            return
        self.items.append((kind, conn))
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            self._update_attention()
            waiter.set()

    async def wait_nonempty(self) -> None:
        """Returns once the queue holds an event (a checkpoint either way)."""
        if self.items:
            await anyio.lowlevel.checkpoint()
            return
        waiter = self._waiter = anyio.Event()
        self._update_attention()
        try:
            await waiter.wait()
        finally:
            if self._waiter is waiter:
                self._waiter = None
                self._update_attention()

    def __len__(self) -> int:
        return len(self.items)


class ManagerNotifiee:
    """What `ConnManager.notifee()` returns: hand it to the host's network."""

    __slots__ = ("_append", "_queue")

    def __init__(self, queue: EventQueue) -> None:
        self._queue = queue
        self._append = queue.items.append

    def connected(self, conn: Conn) -> None:
        if self._queue.needs_attention:
            self._queue.push(CONNECTED, conn)
        else:
            self._append((CONNECTED, conn))

    def disconnected(self, conn: Conn) -> None:
        if self._queue.needs_attention:
            self._queue.push(DISCONNECTED, conn)
        else:
            self._append((DISCONNECTED, conn))

    def __repr__(self) -> str:
        return "<ManagerNotifiee>"
