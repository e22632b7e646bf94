"""The py-libp2p adapter against real py-libp2p hosts on 127.0.0.1 (trio only).

Time inside the manager is a `FakeClock`, moved by hand; the only real waiting is for
network events (a connection opening or closing), each bounded by `fail_after`.

With ``ASYNCCONNMGR_REQUIRE_LIBP2P=1`` (set in CI, which installs the extra) a missing
py-libp2p is an error, never a skip.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import select
import socket
import subprocess
import sys
import types
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any, cast

import pytest

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

if os.environ.get("ASYNCCONNMGR_REQUIRE_LIBP2P") == "1":
    import libp2p  # noqa: F401
else:
    pytest.importorskip("libp2p")

import anyio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream
from libp2p.custom_types import TProtocol
from libp2p.io.trio import TrioTCPStream
from libp2p.network.config import ConnectionConfig
from libp2p.network.exceptions import SwarmException
from libp2p.network.swarm import Swarm
from libp2p.network.tag_store import upsert_add
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from multiaddr import Multiaddr

from asyncconnmgr import ConnManager, Direction, TrimResult
from asyncconnmgr.libp2p import InboundSlotsWarning, Libp2pConn, attach
from asyncconnmgr.testing import FakeClock

LOCALHOST = Multiaddr("/ip4/127.0.0.1/tcp/0")
HOLD = TProtocol("/asyncconnmgr-test/hold/1.0.0")
GRACE = 10.0
CLOSE_TIMEOUT = 5.0
NETWORK_TIMEOUT = 10.0

# Every attach() warns about py-libp2p's inbound slots; one test checks that warning.
pytestmark = pytest.mark.filterwarnings("ignore::asyncconnmgr.libp2p.InboundSlotsWarning")


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # py-libp2p runs on trio only


# --- helpers -------------------------------------------------------------------------------


def swarm_of(host: IHost) -> Swarm:
    network = host.get_network()
    assert isinstance(network, Swarm)
    return network


def live_conns(host: IHost) -> int:
    return len([c for c in host.get_network().get_connections() if not c.is_closed])


def connected_to(host: IHost, peer: IHost) -> bool:
    return any(not c.is_closed for c in host.get_network().get_connections(peer.get_id()))


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `condition` until it holds: a bounded wait for a real network event."""
    try:
        with anyio.fail_after(NETWORK_TIMEOUT):
            while not await condition():  # noqa: ASYNC110 - no event to wait on
                await anyio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out waiting for: {what}")


async def settled(hub: IHost, cm: ConnManager, expected: int) -> bool:
    """The host has `expected` connections, none closing, and the manager agrees."""
    await cm.flush()
    info = cm.get_info()
    return (
        swarm_of(hub).get_total_connections() == live_conns(hub) == expected
        and info.conn_count == expected
        and info.closing_count == 0
    )


async def hold_stream(stream: INetStream) -> None:
    """The hub's handler for HOLD: keep the stream open until the other side closes it."""
    try:
        while await stream.read(1024):
            pass
    except Exception:  # reset or EOF error: the stream is gone either way
        return


@asynccontextmanager
async def running_hosts(
    n_peers: int, hub_config: ConnectionConfig | None = None
) -> AsyncIterator[tuple[IHost, list[IHost]]]:
    """A hub (with `hub_config`) and `n_peers` peers, all listening on 127.0.0.1, none
    connected yet.

    The peers' own pruners and auto-connectors are stopped, so a peer the hub drops never
    dials it again behind the test's back. On exit every swarm is closed explicitly (and
    concurrently): leaving `host.run()` alone cancels the connections' closes half-way and
    leaks their sockets.
    """
    hosts = [new_host(connection_config=hub_config)] + [new_host() for _ in range(n_peers)]
    try:
        async with _hosts_running(hosts) as running:
            yield running
    except BaseExceptionGroup as group:
        # Every host.run() wraps an error in the body in one more single-member group.
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if leaf is group:
            raise
        raise leaf from None


@asynccontextmanager
async def _hosts_running(hosts: list[IHost]) -> AsyncIterator[tuple[IHost, list[IHost]]]:
    async with AsyncExitStack() as stack:
        for host in hosts:
            await stack.enter_async_context(host.run(listen_addrs=[LOCALHOST]))
        hosts[0].set_stream_handler(HOLD, hold_stream)
        for peer in hosts[1:]:
            await swarm_of(peer).connection_pruner.stop()
            await swarm_of(peer).auto_connector.stop()
        try:
            yield hosts[0], hosts[1:]
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(NETWORK_TIMEOUT):
                async with anyio.create_task_group() as tg:
                    for host in hosts:
                        tg.start_soon(host.get_network().close)


async def connect(dialer: IHost, listener: IHost) -> None:
    await dialer.connect(info_from_p2p_addr(listener.get_addrs()[0]))


async def connect_all(hub: IHost, peers: list[IHost]) -> None:
    """Each peer dials the hub (inbound connections on the hub), concurrently."""
    async with anyio.create_task_group() as tg:
        for peer in peers:
            tg.start_soon(connect, peer, hub)

    async def all_connected() -> bool:
        return all(connected_to(hub, peer) for peer in peers)

    await wait_until(all_connected, "every peer connected to the hub")


def manager(low_water: int, high_water: int, clock: FakeClock) -> ConnManager:
    # The reference's grace (every newcomer left alone): these tests count on it.
    return ConnManager(
        low_water=low_water,
        high_water=high_water,
        grace_period=GRACE,
        silence_period=1.0,
        close_timeout=CLOSE_TIMEOUT,
        clock=clock,
        bounded_count=False,
    )


def only_conn(host: IHost, peer: IHost) -> INetConn:
    (net_conn,) = host.get_network().get_connections(peer.get_id())
    return net_conn


def tcp_stream_of(net_conn: INetConn) -> TrioTCPStream:
    """The TCP stream under a connection's muxer and security layers."""
    layer: object = net_conn.muxed_conn
    for _ in range(8):
        if isinstance(layer, TrioTCPStream):
            return layer
        layer = next(
            getattr(layer, name)
            for name in ("secured_conn", "conn", "stream")
            if getattr(layer, name, None) is not None
        )
    raise AssertionError(f"no TCP stream under {net_conn!r}")


def reachable_from(roots: list[Any]) -> set[int]:
    """The ids of every object `roots` keep alive (classes and modules aside)."""
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType)):
            continue
        seen.add(id(obj))
        todo.extend(gc.get_referents(obj))
    return seen


def writable(sock: Any) -> bool:
    return bool(select.select([], [sock.fileno()], [], 0)[1])


# --- the "done when" list ------------------------------------------------------------------


@pytest.mark.anyio
async def test_background_trim_keeps_protected_and_valuable_peers() -> None:
    clock = FakeClock()
    async with running_hosts(8) as (hub, peers), manager(3, 5, clock) as cm:
        adapter = await attach(hub, cm)
        protected, valuable, bitswap_peer = (p.get_id() for p in peers[:3])
        # Early tags (before the peers connect): the manager keeps them for the connection.
        cm.protect(protected, "relay")
        cm.tag_peer(valuable, "dht", 100)
        hub.get_network().tag_peer(bitswap_peer, "bitswap", 50)  # py-libp2p's own route

        await connect_all(hub, peers)

        async def all_reported() -> bool:
            return await settled(hub, cm, 8)

        # Over high water, but every connection is in its grace period: nothing closes.
        await wait_until(all_reported, "the manager to learn of all 8 connections")
        assert cm.get_tag_info(bitswap_peer) is not None

        clock.advance(GRACE + 1)  # grace ends: the background trimmer takes over

        # eligible = 7 (one protected), low water 3: four connections go.
        async def trimmed() -> bool:
            return await settled(hub, cm, 4)

        await wait_until(trimmed, "the background trim to settle at 4 connections")
        for peer in peers[:3]:
            assert connected_to(hub, peer), "a protected or tagged peer was trimmed"
        assert sum(connected_to(hub, peer) for peer in peers[3:]) == 1
        info = cm.get_info()
        assert info.trims >= 1
        assert info.peer_count == 4
        assert info.ignored_notifications == 0
        assert adapter.reconcile() == 0
        await adapter.detach()


@pytest.mark.anyio
async def test_explicit_trim_closes_the_right_connections() -> None:
    clock = FakeClock()
    async with running_hosts(6) as (hub, peers), manager(3, 100, clock) as cm:
        adapter = await attach(hub, cm)
        await connect_all(hub, peers)
        protected, valuable, bitswap_peer, busy, idle_a, idle_b = peers
        # Each through a different door: the manager, the swarm, the host's conn_manager.
        hub.get_network().protect(protected.get_id(), "relay")
        cm.tag_peer(valuable.get_id(), "dht", 100)
        hub.conn_manager.upsert_tag(bitswap_peer.get_id(), "bitswap", upsert_add(50))
        assert cm.is_protected(protected.get_id(), "relay")
        bitswap_info = cm.get_tag_info(bitswap_peer.get_id())
        assert bitswap_info is not None
        assert bitswap_info.tags["bitswap"] == 50

        # `busy` keeps a stream open to the hub: same value as the idle peers, kept before them.
        stream = await busy.new_stream(hub.get_id(), [HOLD])

        async def busy_has_stream() -> bool:
            wrappers = [c for c in adapter.conns if c.remote_peer == busy.get_id()]
            return len(wrappers) == 1 and wrappers[0].num_streams >= 1

        async def others_idle() -> bool:
            return all(c.num_streams == 0 for c in adapter.conns if c.remote_peer != busy.get_id())

        await wait_until(busy_has_stream, "the hub to see busy's stream")
        await wait_until(others_idle, "identify streams to finish")
        await wait_until(lambda: settled(hub, cm, 6), "the manager to learn of 6 connections")
        assert cm.get_info().trims == 0  # 6 < high water 100: no background trim

        clock.advance(GRACE + 1)
        result = await cm.trim_open_conns()

        # eligible = 5 (one protected), low water 3: the two idle, untagged peers go.
        assert not result.cut_short
        assert result.failed == 0
        assert result.closed == 2
        assert {v.peer for v in result.victims} == {idle_a.get_id(), idle_b.get_id()}
        await wait_until(lambda: settled(hub, cm, 4), "host and manager to agree on 4")
        for peer in (protected, valuable, bitswap_peer, busy):
            assert connected_to(hub, peer)
        for peer in (idle_a, idle_b):
            assert not connected_to(hub, peer)
        assert cm.get_info().conn_count == swarm_of(hub).get_total_connections() == 4
        assert cm.get_info().ignored_notifications == 0
        await stream.close()
        await adapter.detach()


@pytest.mark.anyio
async def test_connections_open_before_attach_are_known() -> None:
    clock = FakeClock()
    async with running_hosts(4) as (hub, peers), manager(3, 10, clock) as cm:
        await connect_all(hub, peers[:3])
        await connect(hub, peers[3])  # one outbound connection from the hub
        assert live_conns(hub) == 4

        adapter = await attach(hub, cm)
        await cm.flush()
        info = cm.get_info()
        assert info.conn_count == 4
        assert info.peer_count == 4
        assert info.ignored_notifications == 0
        assert adapter.reconcile() == 0

        by_peer = {c.remote_peer: c for c in adapter.conns}
        assert set(by_peer) == {p.get_id() for p in peers}
        assert all(isinstance(peer, ID) for peer in by_peer)  # py-libp2p's keys, not str
        assert [by_peer[p.get_id()].direction for p in peers] == [
            Direction.INBOUND,
            Direction.INBOUND,
            Direction.INBOUND,
            Direction.OUTBOUND,
        ]
        for conn in adapter.conns:
            assert conn.remote_addr is not None
            assert conn.remote_addr.startswith("/ip4/127.0.0.1/tcp/")
            tag_info = cm.get_tag_info(conn.remote_peer)
            assert tag_info is not None
            assert conn in tag_info.conns

        # One wrapper per connection, for the connection's whole life.
        net_conn = hub.get_network().get_connections(peers[0].get_id())[0]
        wrapper = adapter.get_conn(net_conn)
        assert isinstance(wrapper, Libp2pConn)
        assert wrapper.net_conn is net_conn
        assert adapter.reconcile() == 0
        assert adapter.get_conn(net_conn) is wrapper
        await adapter.detach()


@pytest.mark.anyio
async def test_a_peer_that_goes_away_is_forgotten() -> None:
    clock = FakeClock()
    async with running_hosts(2) as (hub, peers), manager(3, 10, clock) as cm:
        adapter = await attach(hub, cm)
        leaving, staying = peers
        await connect_all(hub, peers)
        cm.tag_peer(leaving.get_id(), "app", 10)
        await wait_until(lambda: settled(hub, cm, 2), "the manager to learn of 2 connections")
        net_conn = hub.get_network().get_connections(leaving.get_id())[0]
        assert adapter.get_conn(net_conn) is not None

        await leaving.get_network().close()  # the peer goes away

        await wait_until(lambda: settled(hub, cm, 1), "the hub to notice the peer left")
        assert cm.get_tag_info(leaving.get_id()) is None
        assert cm.get_info().peer_count == 1
        assert adapter.get_conn(net_conn) is None
        assert [c.remote_peer for c in adapter.conns] == [staying.get_id()]
        await adapter.detach()


# --- attach / detach -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_attach_takes_over_and_detach_gives_back() -> None:
    clock = FakeClock()
    async with running_hosts(1) as (hub, peers), manager(3, 10, clock) as cm:
        swarm = swarm_of(hub)
        original_store = swarm.tag_store
        notifees_before = list(swarm.notifees)
        (peer,) = peers
        peer_id = peer.get_id()
        await connect_all(hub, peers)

        adapter = await attach(hub, cm)
        assert adapter.attached
        assert not swarm.connection_pruner._started
        assert not swarm.auto_connector._started
        with pytest.raises(RuntimeError, match="already has an adapter"):
            await attach(hub, cm)

        # py-libp2p's tag store writes through to the manager and keeps its own copy.
        assert hub.conn_manager is not original_store
        hub.conn_manager.tag_peer(peer_id, "pubsub", 7)
        hub.get_network().protect(peer_id, "relay")
        manager_info = cm.get_tag_info(peer_id)
        libp2p_info = hub.get_network().get_tag_info(peer_id)
        assert manager_info is not None
        assert libp2p_info is not None
        assert manager_info.tags["pubsub"] == libp2p_info.tags["pubsub"] == 7
        assert cm.is_protected(peer_id, "relay")
        assert hub.get_network().is_protected(peer_id)
        cm.protect(peer_id, "direct")  # seen by py-libp2p's readers too
        assert hub.get_network().is_protected(peer_id, "direct")
        assert hub.get_network().unprotect(peer_id, "relay") is True  # still "direct"
        assert not cm.is_protected(peer_id, "relay")
        # A str peer id never reaches the manager as a second, str-keyed peer.
        hub.get_network().tag_peer(cast(Any, peer_id.to_base58()), "str-keyed", 1)
        manager_info = cm.get_tag_info(peer_id)
        assert manager_info is not None
        assert manager_info.tags["str-keyed"] == 1
        assert cm.get_tag_info(peer_id.to_base58()) is None

        await adapter.detach()
        await adapter.detach()  # idempotent
        assert not adapter.attached
        assert swarm.tag_store is original_store
        assert swarm.notifees == notifees_before
        assert swarm.connection_pruner._started
        assert swarm.auto_connector._started
        await cm.flush()
        assert cm.get_info().conn_count == 0  # the manager forgot what it cannot follow
        assert live_conns(hub) == 1  # ...without closing anything

        # A detached host can be attached again, and without tag routing.
        again = await attach(hub, cm, route_tags=False)
        assert swarm.tag_store is original_store
        await cm.flush()
        assert cm.get_info().conn_count == 1
        await again.detach()


@pytest.mark.anyio
async def test_attach_needs_a_running_host() -> None:
    clock = FakeClock()
    async with manager(3, 10, clock) as cm:
        with pytest.raises(RuntimeError, match="running host"):
            await attach(new_host(), cm)


@pytest.mark.anyio
async def test_manager_closing_a_connection_is_reported_once() -> None:
    clock = FakeClock()
    async with running_hosts(3) as (hub, peers), manager(0, 10, clock) as cm:
        adapter = await attach(hub, cm)
        await connect_all(hub, peers)
        await wait_until(lambda: settled(hub, cm, 3), "the manager to learn of 3 connections")
        clock.advance(GRACE + 1)
        result = await cm.trim_open_conns()
        assert result.closed == 3
        await wait_until(lambda: settled(hub, cm, 0), "every connection to close")
        assert adapter.conns == ()
        info = cm.get_info()
        assert info.close_failures == 0
        assert info.ignored_notifications == 0  # each close reported once, and expected
        await adapter.detach()


# --- stuck closes --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_close_stalled_by_a_peer_that_never_reads_is_aborted() -> None:
    clock = FakeClock()
    async with running_hosts(1) as (hub, peers), manager(0, 10, clock) as cm:
        (peer,) = peers
        peer.set_stream_handler(HOLD, hold_stream)
        await attach(hub, cm)
        await connect_all(hub, peers)
        await wait_until(lambda: settled(hub, cm, 1), "the manager to learn of the connection")
        stream = await hub.new_stream(peer.get_id(), [HOLD])
        hub_socket = tcp_stream_of(only_conn(hub, peer)).stream.socket
        peer_tcp = tcp_stream_of(only_conn(peer, hub))
        # Small buffers, so that what the hub sends below cannot all fit in them.
        hub_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        peer_tcp.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled = anyio.Event()
        resume = anyio.Event()
        results: list[TrimResult] = []

        async def never_read() -> None:
            # The peer's reader queues behind this lock: the peer stops reading its socket.
            async with peer_tcp.read_lock:
                stalled.set()
                await resume.wait()

        async def send_more_than_fits() -> None:
            with suppress(Exception):  # the abort resets the stream
                await stream.write(b"x" * 256 * 1024)

        async def trim() -> None:
            results.append(await cm.trim_open_conns())

        async def socket_full() -> bool:
            return not writable(hub_socket)

        async def closing() -> bool:
            return cm.get_info().closing_count == 1

        async def trimmed() -> bool:
            return bool(results)

        async def peer_dropped() -> bool:
            return not connected_to(peer, hub)

        async with anyio.create_task_group() as tg:
            tg.start_soon(never_read)
            await stream.write(b"wake")  # the peer's reader reads this, then waits for the lock
            with anyio.fail_after(NETWORK_TIMEOUT):
                await stalled.wait()
            tg.start_soon(send_more_than_fits)
            await wait_until(socket_full, "the hub's socket buffer to fill up")

            clock.advance(GRACE + 1)
            tg.start_soon(trim)
            await wait_until(closing, "the trim to start closing the connection")
            clock.advance(CLOSE_TIMEOUT)  # the close is stuck behind the full buffer
            await wait_until(trimmed, "the trim to return")
            (result,) = results
            assert result.outcomes == {"aborted": 1}
            assert result.closed == 1
            assert cm.get_info().conn_count == 0
            await wait_until(lambda: settled(hub, cm, 0), "the hub's swarm to drop it too")
            info = cm.get_info()
            assert info.closed_conns == 1
            assert info.close_failures == 0
            assert info.ignored_notifications == 0  # py-libp2p's report of it was expected

            resume.set()  # the peer reads again, and finds the connection reset
            await wait_until(peer_dropped, "the peer to see the connection gone")


# --- memory --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_ended_connections_are_not_kept_alive() -> None:
    clock = FakeClock()
    async with running_hosts(4) as (hub, peers), manager(0, 10, clock) as cm:
        adapter = await attach(hub, cm)
        await connect_all(hub, peers)
        await wait_until(lambda: settled(hub, cm, 4), "the manager to learn of 4 connections")
        wrappers = list(adapter.conns)
        # A caller may well keep snapshots, and through them the wrappers, for longer.
        snapshots = [cm.get_tag_info(conn.remote_peer) for conn in wrappers]
        net_conns = [weakref.ref(conn.net_conn) for conn in wrappers if conn.net_conn]
        assert len(net_conns) == 4
        wrapper_refs = [weakref.ref(conn) for conn in wrappers]

        # Two connections end from the peer's side, two by a trim.
        for peer in peers[:2]:
            await peer.get_network().close()
        await wait_until(lambda: settled(hub, cm, 2), "two peers to leave")
        clock.advance(GRACE + 1)
        result = await cm.trim_open_conns()
        assert result.closed == 2
        await wait_until(lambda: settled(hub, cm, 0), "the trimmed connections to end")

        gc.collect()
        held = reachable_from([*wrappers, *snapshots, result])  # what the caller kept
        for ref in net_conns:
            net_conn = ref()  # py-libp2p may hold one for a while; never through a wrapper
            assert net_conn is None or id(net_conn) not in held, "a wrapper keeps it alive"
            del net_conn
        for conn, ref in zip(wrappers, net_conns, strict=True):
            assert (conn.net_conn is None) == (ref() is None)
            assert conn.num_streams == 0

        del snapshots, wrappers, conn
        gc.collect()
        assert [ref() for ref in wrapper_refs] == [None] * 4, "an ended wrapper is kept alive"


# --- the manager's lifetime ----------------------------------------------------------------


@pytest.mark.anyio
async def test_a_manager_that_closes_detaches_its_adapter() -> None:
    clock = FakeClock()
    async with running_hosts(2) as (hub, peers):
        swarm = swarm_of(hub)
        original_store = swarm.tag_store
        notifees_before = list(swarm.notifees)
        first, second = peers
        async with manager(3, 10, clock) as cm:
            adapter = await attach(hub, cm)
            kept = hub.conn_manager  # as code that looked it up once would keep it
            await connect(first, hub)
            await wait_until(lambda: settled(hub, cm, 1), "the manager to learn of it")
            assert not swarm.connection_pruner._started

        async def detached() -> bool:
            return not adapter.attached

        await wait_until(detached, "the adapter to detach from the closed manager")
        assert swarm.tag_store is original_store
        assert hub.conn_manager is original_store
        assert swarm.notifees == notifees_before
        assert swarm.connection_pruner._started
        assert swarm.auto_connector._started
        assert adapter.conns == ()

        # Tags no longer reach the closed manager: py-libp2p's own store has them.
        late = [new_host().get_id() for _ in range(20)]
        for peer_id in late:
            hub.conn_manager.tag_peer(peer_id, "late", 1)
        assert all(cm.get_tag_info(peer_id) is None for peer_id in late)
        kept.tag_peer(late[1], "kept", 2)
        kept.protect(late[1], "relay")
        assert cm.get_tag_info(late[1]) is None
        assert not cm.is_protected(late[1])
        assert kept.is_protected(late[1])  # py-libp2p's own answer
        assert cm.get_info().temporary_count == 0
        late_info = original_store.get_tag_info(late[0])
        assert late_info is not None
        assert late_info.tags["late"] == 1

        # New connections are py-libp2p's again.
        ignored = cm.get_info().ignored_notifications
        await connect(second, hub)

        async def second_connected() -> bool:
            return connected_to(hub, second)

        await wait_until(second_connected, "the second peer to connect")
        assert adapter.get_conn(only_conn(hub, second)) is None
        assert adapter.conns == ()
        assert cm.get_info().ignored_notifications == ignored  # nothing was sent to it


@pytest.mark.anyio
async def test_attach_as_a_context_manager_detaches_on_exit() -> None:
    clock = FakeClock()
    async with running_hosts(1) as (hub, peers), manager(3, 10, clock) as cm:
        swarm = swarm_of(hub)
        original_store = swarm.tag_store
        await connect_all(hub, peers)
        async with attach(hub, cm) as adapter:
            assert adapter.attached
            assert swarm.tag_store is not original_store
            await cm.flush()
            assert cm.get_info().conn_count == 1
        assert not adapter.attached
        assert swarm.tag_store is original_store
        assert swarm.connection_pruner._started
        await cm.flush()
        assert cm.get_info().conn_count == 0

        # An error in the body comes out as itself, after the adapter detached.
        with pytest.raises(KeyError, match="body"):
            async with attach(hub, cm) as adapter:
                raise KeyError("body")
        assert not adapter.attached
        assert swarm.tag_store is original_store
        assert live_conns(hub) == 1  # detaching closes nothing


# --- periodic reconcile --------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_lost_notification_heals_at_the_next_periodic_reconcile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    async with running_hosts(2) as (hub, peers), manager(3, 10, clock) as cm:
        adapter = await attach(hub, cm, reconcile_interval=30.0)
        await connect_all(hub, peers)
        await wait_until(lambda: settled(hub, cm, 2), "the manager to learn of 2 connections")
        lost = only_conn(hub, peers[0])
        # A close cancelled half-way: py-libp2p never reports this connection closed.
        with anyio.move_on_after(0.05):
            await lost.close()
        assert lost.is_closed

        async def swarm_has_one() -> bool:
            return live_conns(hub) == 1

        await wait_until(swarm_has_one, "the hub to have one live connection")
        await cm.flush()
        assert cm.get_info().conn_count == 2  # out of step
        assert adapter.get_info().reported_closed == 0

        caplog.set_level(logging.WARNING, logger="asyncconnmgr.libp2p")
        clock.advance(29.0)
        await anyio.wait_all_tasks_blocked()
        await cm.flush()
        assert cm.get_info().conn_count == 2  # not yet: the interval has not passed
        clock.advance(1.0)

        async def healed() -> bool:
            await cm.flush()
            return cm.get_info().conn_count == 1

        await wait_until(healed, "the periodic reconcile to report the lost close")
        info = adapter.get_info()
        assert info.reconcile_interval == adapter.reconcile_interval == 30.0
        assert info.reported_closed == 1
        assert info.reported_open == 0
        assert info.reconciles == 1
        assert adapter.get_conn(lost) is None
        assert any("out of step" in r.getMessage() for r in caplog.records), caplog.text
        assert adapter.reconcile() == 0
        assert adapter.get_info().reconciles == 2


@pytest.mark.anyio
async def test_attach_refuses_bad_arguments() -> None:
    clock = FakeClock()
    async with running_hosts(0) as (hub, _), manager(3, 10, clock) as cm:
        swarm = swarm_of(hub)
        store = swarm.tag_store
        for bad, error in ((0, ValueError), (-1.0, ValueError), (float("inf"), ValueError)):
            with pytest.raises(error, match="reconcile_interval"):
                await attach(hub, cm, reconcile_interval=bad)
        with pytest.raises(TypeError, match="reconcile_interval"):
            await attach(hub, cm, reconcile_interval=cast(Any, "60"))
        with pytest.raises(TypeError, match="route_tags"):
            await attach(hub, cm, route_tags=cast(Any, 1))
        assert swarm.tag_store is store
        assert swarm.connection_pruner._started
        adapter = await attach(hub, cm, reconcile_interval=None)  # never reconciles by itself
        await adapter.detach()


# --- py-libp2p's inbound slots -------------------------------------------------------------


@pytest.mark.anyio
async def test_attach_warns_that_py_libp2p_never_frees_inbound_slots() -> None:
    # max_connections - min_connections = 3 inbound slots for the hub's whole life.
    config = ConnectionConfig(
        max_connections=4, min_connections=1, low_watermark=1, high_watermark=4
    )
    clock = FakeClock()
    async with running_hosts(4, hub_config=config) as (hub, peers), manager(1, 3, clock) as cm:
        with pytest.warns(InboundSlotsWarning, match="max_connections") as warned:
            adapter = await attach(hub, cm)
        (warning,) = warned
        assert "3 inbound" in str(warning.message)
        assert warning.filename == __file__  # it points at the caller

        # What it warns about: three inbound connections come and go...
        for peer in peers[:3]:
            await connect(peer, hub)
            await wait_until(lambda: settled(hub, cm, 1), "a peer to connect")
            await peer.get_network().close()
            await wait_until(lambda: settled(hub, cm, 0), "the peer to leave")
        # ...and the hub refuses the fourth, with no connection open.
        with pytest.raises(SwarmException, match="unable to connect"):
            await connect(peers[3], hub)
        assert await settled(hub, cm, 0)
        await adapter.detach()


# --- packaging -----------------------------------------------------------------------------


def test_import_without_libp2p_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "libp2p" or name.startswith(("libp2p.", "multiaddr")):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "libp2p", None)
    monkeypatch.delitem(sys.modules, "asyncconnmgr.libp2p")
    with pytest.raises(ImportError, match=r"asyncconnmgr\[libp2p\]"):
        importlib.import_module("asyncconnmgr.libp2p")


def test_importing_asyncconnmgr_does_not_import_libp2p() -> None:
    code = "import sys, asyncconnmgr, asyncconnmgr.testing; assert 'libp2p' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
