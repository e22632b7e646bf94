"""Managed stream connections: any asyncio or anyio stream server under a `ConnManager`.

A handler that has learnt who its peer is (from its handshake) puts the rest of its work
under `managed_stream`::

    async def handle(stream: anyio.abc.SocketStream) -> None:
        peer = await handshake(stream)
        async with managed_stream(manager, stream, peer=peer) as conn:
            ...  # serve the peer; `with conn.open_stream():` around each request

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = await handshake(reader, writer)
        async with managed_stream(manager, (reader, writer), peer=peer) as conn:
            ...

Theory of operation. The connection is counted for exactly the life of the `async with`:
`connected` on entry, `disconnected` on the way out, however the body ends. The body runs in
a cancel scope of its own. When the manager trims the connection (its `close()`), that scope
is cancelled: the body stops at its next checkpoint, the `async with` ends without an error
and `conn.close_requested` is true, so a handler tells a trim from the peer leaving. The
socket is then shut down the graceful way, a "lingering close": what was written is sent,
followed by EOF, and the incoming side is read (and discarded) until the peer's own EOF, so
the peer reads everything and an EOF rather than a reset. A peer that never reads never
sends that EOF, so the close waits: the manager cancels it after its `close_timeout` and
calls `abort()`, which drops the socket at once (SO_LINGER 0: the peer sees a reset) and the
trim reports the connection "aborted". A cancelled close always aborts, so no close ever
leaves a socket half-open. When the body ends by itself (it returned or raised), the
connection is closed the same graceful way, bounded by the manager's `close_timeout` on the
manager's clock, then aborted: one rule for both ends, and tests drive it with `FakeClock`.
When the body is cancelled from outside (the server shutting down), the connection is
aborted at once.

The connection objects (`AnyioStreamConn`, `AsyncioStreamConn`) can also be used without
`managed_stream`, by a host that reports `connected`/`disconnected` itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    asynccontextmanager,
    contextmanager,
    suppress,
)
from typing import Any, Final, TypeAlias

import anyio
import anyio.lowlevel
from anyio.abc import ByteStream, SocketAttribute

from ._clock import AnyioClock
from ._config import check_callable, check_int, check_peer
from ._manager import ConnManager
from .abc import Clock, Direction, Notifiee, PeerId

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "AnyStream",
    "AnyioStreamConn",
    "AsyncioStreamConn",
    "StreamConn",
    "managed_stream",
]

logger = logging.getLogger("asyncconnmgr.streams")

#: How long a handler's own close may take with a manager that has no `close_timeout`
#: (a `NullConnManager`, or another `abc.ConnManager`), in seconds on anyio's clock.
DEFAULT_CLOSE_TIMEOUT: Final = 5.0

#: What `managed_stream` accepts: an anyio byte stream, or an asyncio stream pair.
AnyStream: TypeAlias = "ByteStream | tuple[asyncio.StreamReader, asyncio.StreamWriter]"

_OPEN: Final = 0
_CLOSING: Final = 1
_CLOSED: Final = 2
_STATES: Final = ("open", "closing", "closed")

_DRAIN_CHUNK: Final = 65_536
#: SO_LINGER on, for 0 seconds: closing the socket discards what is unsent and resets.
_LINGER_ZERO: Final = struct.pack("ii", 1, 0)
#: What a stream raises once the peer has gone or the socket is closed: the graceful close
#: has nothing left to wait for, and the socket is dropped.
_GONE: Final = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


def _format_addr(sock: Any) -> str | None:
    """The socket's remote address as "host:port" ("[host]:port" for IPv6), or None when
    it is not an IP socket or is not connected."""
    try:
        family = sock.family
        address = sock.getpeername()
    except OSError:
        return None
    if family == socket.AF_INET:
        return f"{address[0]}:{address[1]}"
    if family == socket.AF_INET6:
        return f"[{address[0]}]:{address[1]}"
    return None


def _set_linger_zero(sock: Any) -> None:
    with suppress(OSError):  # already closed, or not a TCP socket: nothing to reset
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)


def _check_direction(direction: object) -> Direction:
    if not isinstance(direction, Direction):
        raise TypeError(f"direction must be a Direction, not {type(direction).__name__}")
    return direction


class StreamConn:
    """A connection over one byte stream, as the manager sees it (an `abc.Conn`).

    The base of `AnyioStreamConn` and `AsyncioStreamConn`, which say how their transport
    is shut down; this class holds what they share: the peer, the direction, the address,
    the stream count and the life cycle (open, closing, closed). Weakly referenceable, with
    identity equality, as the manager expects of a connection.

    `remote_peer`, `direction` and `remote_addr` are read-only. The stream count comes from
    the `streams` callable given at construction, or else from a counter the host keeps:
    set `num_streams`, or count a block of work with `with conn.open_stream():`.
    """

    # A plain class: its constructor checks its arguments and derives its state from the
    # stream, and `__weakref__` lets the manager remember it weakly once it has ended.
    __slots__ = (
        "__weakref__",
        "_closed_event",
        "_direction",
        "_handler_done",
        "_handler_scope",
        "_handler_task",
        "_peer",
        "_remote_addr",
        "_state",
        "_stream_count",
        "_streams",
        "close_requested",
    )

    def __init__(
        self,
        *,
        peer: PeerId,
        direction: Direction,
        streams: Callable[[], int] | None,
        remote_addr: str | None,
    ) -> None:
        check_peer(peer)
        self._peer: Hashable = peer
        self._direction = _check_direction(direction)
        if streams is not None:
            check_callable("streams", streams)
        self._streams = streams
        self._stream_count = 0
        self._remote_addr = remote_addr
        self._state = _OPEN
        self._closed_event: anyio.Event | None = None
        self._handler_scope: anyio.CancelScope | None = None
        self._handler_task: int | None = None
        self._handler_done: anyio.Event | None = None
        #: True once `close()` was called (by a trim or by the host): the handler's scope
        #: was cancelled for that reason, not because the peer left.
        self.close_requested = False

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} peer={self._peer!r} {self._remote_addr or '?'} "
            f"{self._direction.name.lower()} {_STATES[self._state]}>"
        )

    # -- what the manager reads --------------------------------------------------------------

    @property
    def remote_peer(self) -> PeerId:
        """The peer id the host gave (from its handshake)."""
        return self._peer

    @property
    def direction(self) -> Direction:
        """Who opened the connection."""
        return self._direction

    @property
    def remote_addr(self) -> str | None:
        """The remote socket address, "host:port" ("[host]:port" for IPv6), or None for a
        socket that is not an IP socket; read once, when the connection was wrapped."""
        return self._remote_addr

    @property
    def num_streams(self) -> int:
        """How many streams (requests, channels...) are open on the connection.

        Read from the `streams` callable if one was given, else the host's counter. Setting
        it (an int >= 0; TypeError/ValueError otherwise) replaces the counter; with a
        `streams` callable it cannot be set (AttributeError).
        """
        streams = self._streams
        return self._stream_count if streams is None else streams()

    @num_streams.setter
    def num_streams(self, value: int) -> None:
        self._check_counter()
        self._stream_count = check_int("num_streams", value, minimum=0)

    @contextmanager
    def open_stream(self) -> Iterator[None]:
        """Counts one more open stream for the duration of the `with` block.

        Raises AttributeError when the count comes from a `streams` callable.
        """
        self._check_counter()
        self._stream_count += 1
        try:
            yield
        finally:
            self._stream_count -= 1

    def _check_counter(self) -> None:
        if self._streams is not None:
            raise AttributeError(
                "num_streams comes from the `streams` callable of this connection; it cannot be set"
            )

    @property
    def closed(self) -> bool:
        """True once the socket is released (closed gracefully, or aborted)."""
        return self._state == _CLOSED

    # -- closing ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Closes the connection gracefully (the manager calls this to trim it).

        Stops the handler running under `managed_stream` (its scope is cancelled; when
        `close()` is called from the handler's own task, the handler goes on) and waits for
        it to leave; then sends what is left and EOF, reads and discards until the peer's
        EOF, and releases the socket. A peer that has gone (reset, broken pipe) makes the
        close drop the socket and return normally.

        It waits for as long as the peer takes to close its side: a peer that never reads
        makes it wait forever. The manager bounds it with `close_timeout` and then calls
        `abort()`; elsewhere bound it with `anyio.move_on_after()`. A cancelled close
        aborts the connection: the socket is dropped at once, never left half-open; the
        cancellation is re-raised. Called again, or while another close runs, it waits for
        that close to end. Idempotent; never raises for a peer's misbehaviour.

        Call it from the handler's own task or from outside the handler: from a task the
        handler started, cancelling the handler cancels the close too, which then aborts.
        """
        self.close_requested = True
        if self._state != _OPEN:
            await self._wait_closed()
            return
        self._state = _CLOSING
        try:
            await self._stop_handler()
            await self._shutdown()
        except BaseException:
            self.abort()
            raise
        self._set_closed()

    def abort(self) -> None:
        """Drops the connection at once, synchronously: unsent data is discarded and the
        peer sees a reset (SO_LINGER 0). The manager calls it when a close is still running
        after `close_timeout`. A handler under `managed_stream` sees its stream fail (or
        end) and leaves. Idempotent; never raises."""
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        try:
            self._drop()
        except Exception:  # an abort must never fail: the socket is as dead as it gets
            logger.debug("asyncconnmgr: aborting %r failed", self, exc_info=True)
        logger.debug("asyncconnmgr: aborted %r", self)
        self._set_closed()

    async def _wait_closed(self) -> None:
        if self._state == _CLOSED:
            await anyio.lowlevel.checkpoint()
            return
        if self._closed_event is None:
            self._closed_event = anyio.Event()
        try:
            await self._closed_event.wait()
        except BaseException:
            self.abort()
            raise

    def _set_closed(self) -> None:
        self._state = _CLOSED
        if self._closed_event is not None:
            self._closed_event.set()

    async def _stop_handler(self) -> None:
        """Cancels the handler's scope and waits for its body to end (unless called from
        the handler's own task, which is going on)."""
        scope = self._handler_scope
        done = self._handler_done
        if scope is None or done is None or done.is_set():
            return
        if anyio.get_current_task().id == self._handler_task:
            return
        scope.cancel()
        await done.wait()

    async def _end(self, clock: Clock, limit: float) -> None:
        """The handler's body has ended: close gracefully within `limit` seconds on `clock`, then
        abort; or, if a close is running already, wait for it. A cancelled wait aborts."""
        if self._state == _CLOSED:
            return
        if self._state != _OPEN:
            await self._wait_closed()
            return
        self._state = _CLOSING
        try:
            finished = await _within(clock, limit, self._shutdown)
        except BaseException:
            self.abort()
            raise
        if finished:
            self._set_closed()
        else:
            logger.debug("asyncconnmgr: %r did not close within %s s; aborting", self, limit)
            self.abort()

    async def _shutdown(self) -> None:
        """Sends EOF, reads until the peer's EOF, releases the socket (per transport)."""
        raise NotImplementedError

    def _drop(self) -> None:
        """Resets and releases the socket at once (per transport)."""
        raise NotImplementedError


class AnyioStreamConn(StreamConn):
    """An anyio byte stream over a socket, as a connection: an anyio `SocketStream`, or any
    `ByteStream` exposing its socket through `SocketAttribute.raw_socket` (a TLS stream,
    a buffered stream).

    On anyio's asyncio backend, closing a stream discards what its transport still
    buffers; the graceful close first waits for the peer's EOF, so only a peer that closes
    its side before reading everything can miss the end of the data.

    Arguments: `stream`; `peer` (any hashable id but None, from the host's handshake);
    `direction` (a `Direction`; `INBOUND` by default); `streams` (a callable returning the
    stream count, or None for the counter). Raises TypeError naming the argument for a
    wrong type, and ValueError naming `stream` when it exposes no socket.
    """

    __slots__ = ("_raw_socket", "_stream")

    def __init__(
        self,
        stream: ByteStream,
        *,
        peer: PeerId,
        direction: Direction = Direction.INBOUND,
        streams: Callable[[], int] | None = None,
    ) -> None:
        if not isinstance(stream, ByteStream):
            raise TypeError(f"stream must be an anyio ByteStream, not {type(stream).__name__}")
        raw = stream.extra(SocketAttribute.raw_socket, None)
        if raw is None:
            raise ValueError(
                "stream exposes no socket (anyio's SocketAttribute.raw_socket); "
                "wrap a SocketStream, or a stream built on one"
            )
        super().__init__(
            peer=peer, direction=direction, streams=streams, remote_addr=_format_addr(raw)
        )
        self._stream = stream
        self._raw_socket: Any = raw

    @property
    def stream(self) -> ByteStream:
        """The wrapped stream."""
        return self._stream

    async def _shutdown(self) -> None:
        stream = self._stream
        try:
            await stream.send_eof()
        except NotImplementedError:  # no half-close (TLS before 1.3): nothing to wait for
            await self._release()
            return
        except _GONE:
            self._drop()
            return
        try:
            while True:
                await stream.receive(_DRAIN_CHUNK)
        except anyio.EndOfStream:
            pass
        except anyio.BusyResourceError:  # another task reads it: it will see the EOF
            pass
        except _GONE:
            self._drop()
            return
        await self._release()

    async def _release(self) -> None:
        try:
            await self._stream.aclose()
        except _GONE:
            self._drop()

    def _drop(self) -> None:
        raw = self._raw_socket
        _set_linger_zero(raw)
        transport = getattr(_innermost(self._stream), "_transport", None)
        if isinstance(transport, asyncio.Transport):
            # anyio's asyncio SocketStream: its transport owns the socket.
            transport.abort()
        elif isinstance(raw, socket.socket):
            # The socket itself (anyio's trio backend): wake its waiters, then close it.
            if raw.fileno() >= 0:
                anyio.notify_closing(raw)
                raw.close()
        else:
            # A socket this code cannot close under its owner: shut it down, so every reader
            # and writer fails now; the owner's close then resets the connection.
            with suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)


def _innermost(stream: object) -> object:
    """The stream under anyio's wrappers (TLS, buffered)."""
    for _ in range(16):
        inner = getattr(stream, "transport_stream", None) or getattr(stream, "receive_stream", None)
        if inner is None:
            return stream
        stream = inner
    return stream


class AsyncioStreamConn(StreamConn):
    """An asyncio `(StreamReader, StreamWriter)` pair, as a connection.

    Arguments: `reader`, `writer` (what `asyncio.start_server` hands its callback, or
    `asyncio.open_connection` returns); `peer` (any hashable id but None, from the host's
    handshake); `direction` (a `Direction`; `INBOUND` by default); `streams` (a callable
    returning the stream count, or None for the counter). Raises TypeError naming the
    argument for a wrong type, and ValueError naming `writer` when its transport has no
    socket.
    """

    __slots__ = ("_reader", "_socket", "_writer")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        peer: PeerId,
        direction: Direction = Direction.INBOUND,
        streams: Callable[[], int] | None = None,
    ) -> None:
        if not isinstance(reader, asyncio.StreamReader):
            raise TypeError(f"reader must be an asyncio.StreamReader, not {type(reader).__name__}")
        if not isinstance(writer, asyncio.StreamWriter):
            raise TypeError(f"writer must be an asyncio.StreamWriter, not {type(writer).__name__}")
        sock = writer.get_extra_info("socket")
        if sock is None:
            raise ValueError("writer has no socket (its transport is not a socket transport)")
        super().__init__(
            peer=peer, direction=direction, streams=streams, remote_addr=_format_addr(sock)
        )
        self._reader = reader
        self._writer = writer
        self._socket: Any = sock

    @property
    def reader(self) -> asyncio.StreamReader:
        """The wrapped reader."""
        return self._reader

    @property
    def writer(self) -> asyncio.StreamWriter:
        """The wrapped writer."""
        return self._writer

    async def _shutdown(self) -> None:
        reader = self._reader
        writer = self._writer
        try:
            if writer.can_write_eof():
                writer.write_eof()  # sent once the transport's buffer is out
                try:
                    while await reader.read(_DRAIN_CHUNK):
                        pass
                except RuntimeError:  # another task reads it: it will see the EOF
                    pass
            writer.close()
            await writer.wait_closed()
        except OSError:
            self._drop()

    def _drop(self) -> None:
        _set_linger_zero(self._socket)
        self._writer.transport.abort()


def _notifiee_of(manager: object) -> Notifiee:
    notifee = getattr(manager, "notifee", None)
    if not callable(notifee):
        raise TypeError(
            f"manager must be a ConnManager (with notifee()), not {type(manager).__name__}"
        )
    notifiee: Notifiee = notifee()
    return notifiee


def _close_bound(manager: object) -> tuple[Clock, float]:
    """The clock and the time a handler's own close may take: the manager's own
    `close_timeout` on its clock, so that a trim's close and a handler's close follow one
    rule (and a test moves both with its `FakeClock`)."""
    if isinstance(manager, ConnManager):
        return manager.clock, manager.close_timeout
    return AnyioClock(), DEFAULT_CLOSE_TIMEOUT


async def _within(clock: Clock, seconds: float, work: Callable[[], Any]) -> bool:
    """Runs `await work()` for at most `seconds` on `clock`; True if it finished.

    `work` must not raise an `Exception` (it would come out in an exception group).
    """
    finished = False
    async with anyio.create_task_group() as tg:

        async def timer() -> None:
            await clock.sleep_until(clock.now() + seconds)
            tg.cancel_scope.cancel()

        tg.start_soon(timer)
        await work()
        finished = True
        tg.cancel_scope.cancel()
    return finished


def _wrap(
    stream: object,
    peer: PeerId,
    direction: Direction,
    streams: Callable[[], int] | None,
) -> StreamConn:
    if isinstance(stream, ByteStream):
        return AnyioStreamConn(stream, peer=peer, direction=direction, streams=streams)
    if isinstance(stream, tuple) and len(stream) == 2:
        reader, writer = stream
        return AsyncioStreamConn(reader, writer, peer=peer, direction=direction, streams=streams)
    raise TypeError(
        "stream must be an anyio ByteStream or an asyncio (StreamReader, StreamWriter) pair, "
        f"not {type(stream).__name__}"
    )


def managed_stream(
    manager: object,
    stream: AnyStream,
    *,
    peer: PeerId,
    direction: Direction = Direction.INBOUND,
    streams: Callable[[], int] | None = None,
) -> AbstractAsyncContextManager[StreamConn]:
    """Counts a stream connection with `manager` for exactly the life of an `async with`.

    `async with managed_stream(manager, stream, peer=peer) as conn:` reports
    `connected(conn)` on entry and `disconnected(conn)` on the way out, however the body
    ends (it returned, raised, was cancelled, or the manager closed the connection).

    - A trim (or any `conn.close()`) cancels the body's scope: the body stops at its next
      checkpoint and the `async with` ends without an error, with `conn.close_requested`
      true; the connection is then closed gracefully by the trim (see `StreamConn.close`).
    - A body that ends by itself has its connection closed gracefully on the way out,
      waiting at most the manager's `close_timeout` (on the manager's clock;
      `DEFAULT_CLOSE_TIMEOUT` seconds for a manager without one) for the peer to close its
      side, then aborted. A body's exception comes out as itself once that is done.
    - When the `async with` ends, the socket is released. A cancellation from outside (the
      server shutting down) aborts it at once and is re-raised.

    Arguments: `manager` (a `ConnManager`, or anything with `notifee()`); `stream` (an
    anyio `ByteStream` over a socket, or an asyncio `(reader, writer)` pair); `peer` (the
    peer's id from the handshake: any hashable but None); `direction` (a `Direction`,
    `INBOUND` by default); `streams` (a callable returning the stream count, or None to
    count with `conn.num_streams` / `conn.open_stream()`).

    Raises TypeError/ValueError naming the argument, before anything is reported. Enter it
    from the handler's own task; the body runs in that task. Entering never waits (it is
    not a checkpoint), so there is no cancelled entry to clean up after.
    """
    notifiee = _notifiee_of(manager)
    conn = _wrap(stream, peer, _check_direction(direction), streams)
    clock, timeout = _close_bound(manager)
    return _manage(notifiee, conn, clock, timeout)


@asynccontextmanager
async def _manage(
    notifiee: Notifiee, conn: StreamConn, clock: Clock, limit: float
) -> AsyncIterator[StreamConn]:
    scope = conn._handler_scope = anyio.CancelScope()
    done = conn._handler_done = anyio.Event()
    conn._handler_task = anyio.get_current_task().id
    notifiee.connected(conn)
    try:
        with scope:
            try:
                yield conn
            finally:
                done.set()
    except anyio.get_cancelled_exc_class():
        # Cancelled from outside (a trim's cancellation ends in `scope`): no graceful close,
        # even where a cancellation is delivered once (asyncio) and the way out could wait.
        conn.abort()
        raise
    finally:
        try:
            await conn._end(clock, limit)
        finally:
            notifiee.disconnected(conn)
