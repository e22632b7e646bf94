"""The hand-offs out of the manager's hands: the notifiee's queue, and trim subscriptions.

The host's `connected`/`disconnected` calls only append to a deque and, if the consumer is
asleep, wake it: they never block, never raise and never drop an event. The consumer (or
`flush()`, or a trim) later gives the whole queue to the ledger in one synchronous batch.
What the notifications mean is the ledger's business (`_ledger.py`), not the queue's.

A `TrimSubscription` is the other way out: the manager pushes every `TrimResult` into it
synchronously, and a subscriber that falls behind loses the oldest, never slowing the
manager.

These two calls are the hottest path of the library (every connection of the host goes
through them twice), so the notifiee appends to the deque itself and takes the slow path
(`EventQueue.push`) only when the queue needs attention: it is closed, or a consumer waits.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from ._models import TrimResult
    from .abc import Conn

__all__ = ["CONNECTED", "DISCONNECTED", "EventQueue", "ManagerNotifiee", "TrimSubscription"]

logger = logging.getLogger("asyncconnmgr")

CONNECTED = True
DISCONNECTED = False


class EventQueue:
    """An unbounded FIFO of `(kind, conn)` with a wake-up for one waiting consumer.

    `needs_attention` is true while the queue is closed or a consumer waits: only then must
    a producer go through `push` rather than append to `items` directly. Once closed, every
    notification goes to `on_dropped` instead.
    """

    __slots__ = ("_closed", "_waiter", "items", "needs_attention", "on_dropped")

    def __init__(self, on_dropped: Callable[[Conn], None]) -> None:
        self.items: deque[tuple[bool, Conn]] = deque()
        self.on_dropped = on_dropped
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
            self.on_dropped(conn)
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


class TrimSubscription:
    """The `TrimResult` of every trim that ends while subscribed, in order (see
    `ConnManager.subscribe`).

    Iterate it with `async for`; the iteration ends when the subscription or the manager
    closes. It holds at most `max_buffer` results: when a new one arrives and it is full, the
    oldest is dropped and counted in `lost`. Several tasks may iterate one subscription: each
    result goes to one of them. A cancelled wait for the next result takes nothing.
    """

    __slots__ = ("_buffer", "_closed", "_on_close", "_waiter", "lost")

    def __init__(self, max_buffer: int, on_close: Callable[[TrimSubscription], None]) -> None:
        self._buffer: deque[TrimResult] = deque(maxlen=max_buffer)
        self._on_close = on_close
        self._closed = False
        self._waiter: anyio.Event | None = None
        self.lost = 0

    def push(self, result: TrimResult) -> None:
        """Adds a result (sync, never blocks)."""
        if self._closed:
            return
        buffer = self._buffer
        if len(buffer) == buffer.maxlen:
            self.lost += 1
        buffer.append(result)
        self._wake()

    def close(self) -> None:
        """Ends the iteration once the buffered results are read."""
        if not self._closed:
            self._closed = True
            self._on_close(self)
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    def __enter__(self) -> TrimSubscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> TrimSubscription:
        return self

    async def __anext__(self) -> TrimResult:
        await anyio.lowlevel.checkpoint()
        # Every task waiting here shares one event, so a push or a close wakes them all;
        # nothing awaits between the last look at the buffer and taking from it.
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            waiter = self._waiter
            if waiter is None:
                waiter = self._waiter = anyio.Event()
            await waiter.wait()
        return self._buffer.popleft()

    def __len__(self) -> int:
        return len(self._buffer)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<TrimSubscription {state} buffered={len(self._buffer)} lost={self.lost}>"
