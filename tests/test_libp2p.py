"""The py-libp2p adapter against real py-libp2p hosts on 127.0.0.1 (trio only).

Time inside the manager is a `FakeClock`, moved by hand; the only real waiting is for
network events (a connection opening or closing), each bounded by `fail_after`.

With ``ASYNCCONNMGR_REQUIRE_LIBP2P=1`` (set in CI, which installs the extra) a missing
py-libp2p is an error, never a skip.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
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
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.network.swarm import Swarm
from libp2p.network.tag_store import upsert_add
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from multiaddr import Multiaddr

from asyncconnmgr import ConnManager, Direction
from asyncconnmgr.libp2p import Libp2pConn, attach
from asyncconnmgr.testing import FakeClock

LOCALHOST = Multiaddr("/ip4/127.0.0.1/tcp/0")
HOLD = TProtocol("/asyncconnmgr-test/hold/1.0.0")
GRACE = 10.0
NETWORK_TIMEOUT = 10.0


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
async def running_hosts(n_peers: int) -> AsyncIterator[tuple[IHost, list[IHost]]]:
    """A hub and `n_peers` peers, all listening on 127.0.0.1, none connected yet.

    The peers' own pruners and auto-connectors are stopped, so a peer the hub drops never
    dials it again behind the test's back. On exit every swarm is closed explicitly (and
    concurrently): leaving `host.run()` alone cancels the connections' closes half-way and
    leaks their sockets.
    """
    hosts = [new_host() for _ in range(n_peers + 1)]
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
        clock=clock,
        bounded_count=False,
    )


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
