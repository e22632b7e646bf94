"""Managed stream connections against real sockets on 127.0.0.1.

The servers are an anyio TCP listener (run on asyncio and on trio) and an asyncio
`start_server` (asyncio only: asyncio streams do not run on trio); the clients are anyio
TCP streams. Time inside the manager is a `FakeClock` moved by hand; the only real waiting
is for network events, each bounded by `fail_after`.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteStream

from asyncconnmgr import ConnManager, Direction, NullConnManager
from asyncconnmgr.streams import AnyioStreamConn, AsyncioStreamConn, StreamConn, managed_stream
from asyncconnmgr.testing import FakeClock, settle

pytestmark = pytest.mark.anyio

NETWORK_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
FLOOD = b"x" * 65_536

#: The two servers, on the backends each runs on.
SERVERS = pytest.mark.parametrize(
    ("anyio_backend", "kind"),
    [
        pytest.param("asyncio", "anyio", id="anyio-asyncio"),
        pytest.param("trio", "anyio", id="anyio-trio"),
        pytest.param("asyncio", "asyncio", id="asyncio-streams"),
    ],
)


class Boom(Exception):
    """What a failing handler raises."""


def fail(peer: str) -> None:
    raise Boom(peer)


# --- the server ----------------------------------------------------------------------------


class Server:
    """A TCP server whose handler reads a one-line handshake (the peer id), then serves the
    peer under `managed_stream` as `behaviour[peer]` says:

    - "echo" (the default): echo until the peer's EOF;
    - "flood": send without end (to a peer that never reads, until the buffers are full);
    - "raise": raise `Boom`;
    - "return": return at once;
    - "close_self": close the connection itself, from the handler's own task, then note
      whether it is closed.

    `inside` holds the peers whose handler is inside `managed_stream`; `ended[peer]` says
    how each handler ended; `conns[peer]` is its connection.
    """

    def __init__(self, manager: Any, kind: str) -> None:
        self.manager = manager
        self.kind = kind
        self.behaviour: dict[str, str] = {}
        self.inside: set[str] = set()
        self.ended: dict[str, str] = {}
        self.conns: dict[str, StreamConn] = {}
        self.port = 0
        self.handler_scopes: set[anyio.CancelScope] = set()  # the asyncio server's handlers
        self._changed = anyio.Event()

    def _change(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Waits (bounded) until `condition()` holds; it is checked on every change."""
        try:
            with anyio.fail_after(NETWORK_TIMEOUT):
                while not condition():
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"timed out waiting for: {what}")

    async def _serve(
        self,
        peer: str,
        stream: Any,
        recv: Callable[[], Awaitable[bytes]],
        send: Callable[[bytes], Awaitable[None]],
    ) -> None:
        how = self.behaviour.get(peer, "echo")
        outcome = "cancelled"
        try:
            async with managed_stream(self.manager, stream, peer=peer) as conn:
                self.conns[peer] = conn
                self.inside.add(peer)
                self._change()
                if how == "echo":
                    while data := await recv():
                        await send(data)
                    outcome = "peer_eof"
                elif how == "flood":
                    with conn.open_stream():
                        while True:
                            await send(FLOOD)
                elif how == "raise":
                    fail(peer)
                elif how == "return":
                    outcome = "returned"
                elif how == "close_self":
                    await conn.close()
                    outcome = "closed_self" if conn.closed else "still_open"
            if conn.close_requested and outcome == "cancelled":
                outcome = "close_requested"
        except Boom:
            outcome = "raised"
        except Exception as exc:  # a stream error: recorded, so a test sees it
            outcome = f"error: {exc!r}"
        finally:
            self.inside.discard(peer)
            self.ended[peer] = outcome
            self._change()

    async def _handle_anyio(self, stream: anyio.abc.SocketStream) -> None:
        buffered = BufferedByteStream(stream)
        peer = (await buffered.receive_until(b"\n", 64)).decode()

        async def recv() -> bytes:
            try:
                return await buffered.receive()
            except anyio.EndOfStream:
                return b""

        await self._serve(peer, buffered, recv, buffered.send)

    async def _handle_asyncio(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with anyio.CancelScope() as scope:
            self.handler_scopes.add(scope)
            peer = (await reader.readline()).decode().rstrip("\n")

            async def send(data: bytes) -> None:
                writer.write(data)
                await writer.drain()

            await self._serve(peer, (reader, writer), lambda: reader.read(65_536), send)
        self.handler_scopes.discard(scope)
        self._change()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Server]:
        if self.kind == "anyio":
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
            self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, self._handle_anyio)
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()
            await listener.aclose()
        else:
            server = await asyncio.start_server(self._handle_asyncio, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            try:
                yield self
            finally:
                # asyncio's server leaves its handlers running: cancel them, as a host
                # shutting down does.
                server.close()
                for scope in self.handler_scopes:
                    scope.cancel()
                await self.wait_for(lambda: not self.handler_scopes, "the handlers to end")
                await server.wait_closed()


# --- the clients ---------------------------------------------------------------------------


class Client:
    """A client: connects, sends its peer id, then (unless it never reads) reads in a task
    of its own until EOF or a reset, closing its side at EOF as a polite peer does."""

    def __init__(self, peer: str, stream: anyio.abc.SocketStream) -> None:
        self.peer = peer
        self.stream = stream
        self.received = bytearray()
        self.end: str | None = None  # "eof" or "reset"
        self.ended = anyio.Event()
        self.got_data = anyio.Event()

    async def read_until_end(self) -> None:
        try:
            while True:
                self.received += await self.stream.receive()
                self.got_data.set()
        except anyio.EndOfStream:
            self.end = "eof"
        except anyio.BrokenResourceError:
            self.end = "reset"
        await self.stream.aclose()
        self.ended.set()

    async def ping(self) -> None:
        """Sends a ping and waits for its echo: the connection is alive end to end."""
        before = len(self.received)
        self.got_data = anyio.Event()
        await self.stream.send(b"ping")
        with anyio.fail_after(NETWORK_TIMEOUT):
            while len(self.received) < before + 4:
                await self.got_data.wait()
                self.got_data = anyio.Event()

    async def wait_end(self) -> str:
        with anyio.fail_after(NETWORK_TIMEOUT):
            await self.ended.wait()
        assert self.end is not None
        return self.end


@asynccontextmanager
async def clients(
    server: Server, peers: list[str], *, reading: bool = True
) -> AsyncIterator[dict[str, Client]]:
    """Connects a client per peer and waits until every handler is inside `managed_stream`."""
    connected: dict[str, Client] = {}
    async with anyio.create_task_group() as tg:
        for peer in peers:
            stream = await anyio.connect_tcp("127.0.0.1", server.port)
            await stream.send(peer.encode() + b"\n")
            client = connected[peer] = Client(peer, stream)
            if reading:
                tg.start_soon(client.read_until_end)
        await server.wait_for(lambda: set(peers) <= server.inside, "every client served")
        try:
            yield connected
        finally:
            tg.cancel_scope.cancel()
    for client in connected.values():
        await client.stream.aclose()


def a_manager(clock: FakeClock, *, low_water: int = 10, high_water: int = 1000) -> ConnManager:
    # High water far above the clients: only explicit trims close anything.
    return ConnManager(
        low_water=low_water,
        high_water=high_water,
        grace_period=0,
        silence_period=1.0,
        close_timeout=CLOSE_TIMEOUT,
        clock=clock,
    )


async def wait_close_timer(clock: FakeClock) -> None:
    """Waits (bounded) until a close is timed on `clock`: something sleeps until
    `close_timeout` from now (the manager's decay timer sleeps much longer)."""
    with anyio.fail_after(NETWORK_TIMEOUT):
        while clock.next_deadline != clock.now() + CLOSE_TIMEOUT:
            await settle()


async def count(manager: ConnManager) -> int:
    await manager.flush()
    return manager.get_info().conn_count


# --- trims close real sockets --------------------------------------------------------------


@SERVERS
async def test_trimmed_sockets_see_eof_and_the_counts_agree(kind: str) -> None:
    clock = FakeClock()
    peers = [f"peer-{i:02}" for i in range(30)]
    async with a_manager(clock) as manager, Server(manager, kind).running() as server:
        manager.protect("peer-00", "relay")
        for peer in peers[1:4]:
            manager.tag_peer(peer, "dht", 10)
        async with clients(server, peers) as conns:
            assert await count(manager) == len(server.inside) == 30

            result = await manager.trim_open_conns()

            # 29 eligible (one protected), low water 10: 19 closed, the tagged ones kept.
            closed = {str(victim.peer) for victim in result.victims}
            assert result.outcomes == {"closed": 19}
            assert len(closed) == 19
            assert closed.isdisjoint({"peer-00", *peers[1:4]})
            for peer in closed:
                assert await conns[peer].wait_end() == "eof"
                assert server.ended[peer] == "close_requested"
            await server.wait_for(lambda: not closed & server.inside, "the victims' handlers")
            survivors = set(peers) - closed
            for peer in sorted(survivors):
                await conns[peer].ping()
            assert server.inside == survivors
            assert await count(manager) == len(server.inside) == 11
            info = manager.get_info()
            assert info.ignored_notifications == 0
            assert info.closing_count == 0


@SERVERS
async def test_remote_addr_is_the_clients_address(kind: str) -> None:
    clock = FakeClock()
    async with (
        a_manager(clock) as manager,
        Server(manager, kind).running() as server,
        clients(server, ["peer-a"]) as conns,
    ):
        port = conns["peer-a"].stream.extra(anyio.abc.SocketAttribute.local_port)
        conn = server.conns["peer-a"]
        assert conn.remote_addr == f"127.0.0.1:{port}"
        assert conn.remote_peer == "peer-a"
        assert conn.direction is Direction.INBOUND
        status = manager.explain("peer-a")
        assert status.conns == 1


# --- a peer that never reads ----------------------------------------------------------------


@SERVERS
async def test_client_that_never_reads_is_aborted_after_close_timeout(kind: str) -> None:
    clock = FakeClock()
    async with a_manager(clock, low_water=0) as manager, Server(manager, kind).running() as server:
        server.behaviour["stuck"] = "flood"
        async with clients(server, ["stuck"], reading=False) as conns:
            result: list[Any] = []

            async def trim() -> None:
                result.append(await manager.trim_open_conns())

            async with anyio.create_task_group() as tg:
                tg.start_soon(trim)
                await wait_close_timer(clock)
                # The graceful close waits for a peer that never reads: still counted,
                # still connected, the trim still running.
                assert not result
                assert manager.get_info().closing_count == 1
                assert "stuck" in server.inside or server.ended.get("stuck") == "close_requested"

                clock.advance(CLOSE_TIMEOUT)
            (trimmed,) = result
            assert trimmed.outcomes == {"aborted": 1}
            assert [victim.outcome for victim in trimmed.victims] == ["aborted"]
            assert server.conns["stuck"].closed

            # The client reads what is left, and then the reset.
            stuck = conns["stuck"]
            with anyio.fail_after(NETWORK_TIMEOUT):
                await stuck.read_until_end()
            assert stuck.end == "reset"
            await server.wait_for(lambda: "stuck" in server.ended, "the handler to end")
            assert await count(manager) == len(server.inside) == 0
            assert manager.get_info().ignored_notifications == 0


@SERVERS
async def test_handler_own_close_is_bounded_by_close_timeout(kind: str) -> None:
    # The handler returns, but the peer never reads nor closes: the way out waits for the
    # peer for close_timeout on the manager's clock, then aborts.
    clock = FakeClock()
    async with a_manager(clock) as manager, Server(manager, kind).running() as server:
        server.behaviour["quiet"] = "return"
        async with clients(server, ["quiet"], reading=False) as conns:
            await wait_close_timer(clock)
            assert "quiet" not in server.ended
            assert await count(manager) == 1

            clock.advance(CLOSE_TIMEOUT)
            await server.wait_for(lambda: "quiet" in server.ended, "the handler to end")
            assert server.ended["quiet"] == "returned"
            assert await count(manager) == 0
            # The peer got the EOF before the reset; its side is closed either way.
            quiet = conns["quiet"]
            with anyio.fail_after(NETWORK_TIMEOUT):
                await quiet.read_until_end()
            assert quiet.end in {"eof", "reset"}


# --- however the handler ends ---------------------------------------------------------------


@SERVERS
async def test_handler_that_raises_still_reports_disconnected(kind: str) -> None:
    clock = FakeClock()
    async with a_manager(clock) as manager, Server(manager, kind).running() as server:
        server.behaviour["bad"] = "raise"
        stream = await anyio.connect_tcp("127.0.0.1", server.port)
        client = Client("bad", stream)
        await stream.send(b"bad\n")
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.read_until_end)
            assert await client.wait_end() == "eof"
        await server.wait_for(lambda: "bad" in server.ended, "the handler to end")
        assert server.ended["bad"] == "raised"  # the handler's own exception, unwrapped
        assert await count(manager) == 0
        info = manager.get_info()
        assert info.ignored_notifications == 0
        assert server.conns["bad"].closed


@SERVERS
async def test_handler_that_returns_closes_gracefully(kind: str) -> None:
    clock = FakeClock()
    async with a_manager(clock) as manager, Server(manager, kind).running() as server:
        server.behaviour["done"] = "return"
        async with clients(server, ["done"]) as conns:
            assert await conns["done"].wait_end() == "eof"
            await server.wait_for(lambda: "done" in server.ended, "the handler to end")
            assert server.ended["done"] == "returned"
            assert await count(manager) == 0


@SERVERS
async def test_close_from_the_handlers_own_task_lets_it_go_on(kind: str) -> None:
    clock = FakeClock()
    async with a_manager(clock) as manager, Server(manager, kind).running() as server:
        server.behaviour["self"] = "close_self"
        async with clients(server, ["self"]) as conns:
            assert await conns["self"].wait_end() == "eof"
            await server.wait_for(lambda: "self" in server.ended, "the handler to end")
            assert server.ended["self"] == "closed_self"
            assert await count(manager) == 0
            assert manager.get_info().ignored_notifications == 0


@SERVERS
async def test_server_shutdown_aborts_and_reports_every_connection(kind: str) -> None:
    clock = FakeClock()
    peers = ["a", "b", "c"]
    async with a_manager(clock) as manager, anyio.create_task_group() as tg:
        server = Server(manager, kind)
        async with server.running():
            waiting = []
            for peer in peers:
                stream = await anyio.connect_tcp("127.0.0.1", server.port)
                await stream.send(peer.encode() + b"\n")
                waiting.append(Client(peer, stream))
                tg.start_soon(waiting[-1].read_until_end)
            await server.wait_for(lambda: server.inside == set(peers), "every client served")
            assert await count(manager) == 3
        # Leaving `running()` cancelled the handlers: every connection is aborted at once.
        assert server.ended == dict.fromkeys(peers, "cancelled")
        for client in waiting:
            assert await client.wait_end() == "reset"
        assert await count(manager) == 0
        assert manager.get_info().ignored_notifications == 0


# --- the stream count -----------------------------------------------------------------------


@SERVERS
async def test_trims_read_the_stream_count(kind: str) -> None:
    clock = FakeClock()
    async with (
        a_manager(clock, low_water=1) as manager,
        Server(manager, kind).running() as server,
        clients(server, ["idle", "busy"]),
    ):
        busy = server.conns["busy"]
        with busy.open_stream():
            assert busy.num_streams == 1
            result = await manager.trim_open_conns()
        assert busy.num_streams == 0
        assert [victim.peer for victim in result.victims] == ["idle"]


async def test_streams_callable_and_counter() -> None:
    async with tcp_pair() as (server_side, _):
        counted = AnyioStreamConn(server_side, peer="p")
        counted.num_streams = 3
        assert counted.num_streams == 3
        with counted.open_stream():
            assert counted.num_streams == 4
        live = [1, 2]
        derived = AnyioStreamConn(server_side, peer="p", streams=lambda: len(live))
        assert derived.num_streams == 2
        live.append(3)
        assert derived.num_streams == 3
        with pytest.raises(AttributeError, match="num_streams"):
            derived.num_streams = 1
        with pytest.raises(AttributeError, match="num_streams"), derived.open_stream():
            pass
        with pytest.raises(ValueError, match="num_streams"):
            counted.num_streams = -1
        with pytest.raises(TypeError, match="num_streams"):
            counted.num_streams = "2"  # type: ignore[assignment]
        with pytest.raises(TypeError, match="num_streams"):
            counted.num_streams = True
        assert counted.num_streams == 3


# --- the manager keeps no ended connection alive --------------------------------------------


async def test_an_ended_connection_is_not_kept_alive() -> None:
    clock = FakeClock()
    async with a_manager(clock) as manager, tcp_pair() as (server_side, client_side):
        async with managed_stream(manager, server_side, peer="p") as conn:
            assert await count(manager) == 1
            ref = weakref.ref(conn)
            await client_side.aclose()
        assert await count(manager) == 0
        del conn
        gc.collect()
        assert ref() is None


# --- other managers, other streams -----------------------------------------------------------


async def test_a_wrapped_stream_reported_by_the_host_itself() -> None:
    # No managed_stream: the host reports the connection, and a trim closes it gracefully.
    clock = FakeClock()
    async with a_manager(clock, low_water=0) as manager, tcp_pair() as (server_side, client_side):
        conn = AnyioStreamConn(server_side, peer="p", direction=Direction.OUTBOUND)
        manager.notifee().connected(conn)
        await manager.flush()
        assert manager.get_info().conns_by_direction["outbound"] == 1
        client = Client("p", client_side)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.read_until_end)
            result = await manager.trim_open_conns()
            assert result.outcomes == {"closed": 1}
            assert await client.wait_end() == "eof"
        assert conn.closed
        manager.notifee().disconnected(conn)
        assert await count(manager) == 0
        assert manager.get_info().ignored_notifications == 0
        assert manager.get_info().conns_by_direction["outbound"] == 0


async def test_with_a_null_manager() -> None:
    async with tcp_pair() as (server_side, client_side):
        client = Client("p", client_side)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.read_until_end)
            async with managed_stream(NullConnManager(), server_side, peer="p") as conn:
                pass
            assert conn.closed
            assert await client.wait_end() == "eof"


async def test_ipv6_remote_addr_is_bracketed() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        listener = await anyio.create_tcp_listener(local_host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    async with listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        accepted: list[anyio.abc.SocketStream] = []
        got = anyio.Event()

        async def keep(stream: anyio.abc.SocketStream) -> None:
            accepted.append(stream)
            got.set()
            await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, keep)
            client = await anyio.connect_tcp("::1", port)
            with anyio.fail_after(NETWORK_TIMEOUT):
                await got.wait()
            conn = AnyioStreamConn(accepted[0], peer="p6")
            local_port = client.extra(anyio.abc.SocketAttribute.local_port)
            assert conn.remote_addr == f"[::1]:{local_port}"
            conn.abort()
            await client.aclose()
            tg.cancel_scope.cancel()


# --- bad input -------------------------------------------------------------------------------


class NoSocketStream(anyio.abc.ByteStream):
    """A byte stream with no socket under it."""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        raise anyio.EndOfStream

    async def send(self, item: bytes) -> None:
        pass

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize(
    ("change", "error", "name"),
    [
        ({"manager": object()}, TypeError, "manager"),
        ({"stream": "a stream"}, TypeError, "stream"),
        ({"stream": NoSocketStream()}, ValueError, "stream"),
        ({"peer": None}, TypeError, "peer"),
        ({"peer": ["unhashable"]}, TypeError, "peer"),
        ({"direction": "inbound"}, TypeError, "direction"),
        ({"streams": 3}, TypeError, "streams"),
    ],
    ids=["manager", "stream", "no-socket", "peer-none", "peer-unhashable", "direction", "streams"],
)
async def test_bad_input_names_the_argument_and_reports_nothing(
    change: dict[str, Any], error: type[Exception], name: str
) -> None:
    clock = FakeClock()
    async with a_manager(clock) as manager, tcp_pair() as (server_side, _):
        arguments: dict[str, Any] = {
            "manager": manager,
            "stream": server_side,
            "peer": "p",
            "direction": Direction.INBOUND,
            "streams": None,
            **change,
        }
        with pytest.raises(error, match=name):
            managed_stream(
                arguments["manager"],
                arguments["stream"],
                peer=arguments["peer"],
                direction=arguments["direction"],
                streams=arguments["streams"],
            )
        assert await count(manager) == 0
        assert manager.get_info().ignored_notifications == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # asyncio streams run on asyncio only
async def test_bad_asyncio_pair_names_the_argument() -> None:
    reader = asyncio.StreamReader()
    with pytest.raises(TypeError, match="reader"):
        AsyncioStreamConn("reader", None, peer="p")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="writer"):
        AsyncioStreamConn(reader, "writer", peer="p")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="stream"):
        managed_stream(NullConnManager(), (reader,), peer="p")  # type: ignore[arg-type]


# --- helpers ---------------------------------------------------------------------------------


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[anyio.abc.SocketStream, anyio.abc.SocketStream]]:
    """A connected pair of anyio TCP streams on 127.0.0.1: (accepted, dialled)."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        accepted: list[anyio.abc.SocketStream] = []
        got = anyio.Event()

        async def take(stream: anyio.abc.SocketStream) -> None:
            accepted.append(stream)
            got.set()
            await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, take)
            client = await anyio.connect_tcp("127.0.0.1", port)
            with anyio.fail_after(NETWORK_TIMEOUT):
                await got.wait()
            try:
                yield accepted[0], client
            finally:
                await client.aclose()
                await accepted[0].aclose()
                tg.cancel_scope.cancel()
