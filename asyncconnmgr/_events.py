"""The notifiee and the queue between the host and the manager's state.

The host's `connected`/`disconnected` calls only append to a deque and, if the consumer is
asleep, wake it: they never block, never raise and never drop an event. The consumer (or
`flush()`, or a trim) later applies the whole queue to the table in one synchronous batch.
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
    """An unbounded FIFO of `(kind, conn)` with a wake-up for one waiting consumer."""

    __slots__ = ("_waiter", "closed", "ignored_after_close", "items")

    def __init__(self) -> None:
        self.items: deque[tuple[bool, Conn]] = deque()
        self.closed = False
        self.ignored_after_close = 0
        self._waiter: anyio.Event | None = None

    def push(self, kind: bool, conn: Conn) -> None:
        if self.closed:
            self.ignored_after_close += 1
            logger.debug("notification after aclose() ignored: %r", conn)
            return
        self.items.append((kind, conn))
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    async def wait_nonempty(self) -> None:
        """Returns once the queue holds an event (a checkpoint either way)."""
        if self.items:
            await anyio.lowlevel.checkpoint()
            return
        waiter = self._waiter = anyio.Event()
        try:
            await waiter.wait()
        finally:
            if self._waiter is waiter:
                self._waiter = None

    def __len__(self) -> int:
        return len(self.items)


class ManagerNotifiee:
    """What `ConnManager.notifee()` returns: hand it to the host's network."""

    __slots__ = ("_push",)

    def __init__(self, queue: EventQueue) -> None:
        self._push = queue.push

    def connected(self, conn: Conn) -> None:
        self._push(CONNECTED, conn)

    def disconnected(self, conn: Conn) -> None:
        self._push(DISCONNECTED, conn)

    def __repr__(self) -> str:
        return "<ManagerNotifiee>"
