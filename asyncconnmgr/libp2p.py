"""Let a `ConnManager` manage the connections of a running py-libp2p host.

Install with ``pip install 'asyncconnmgr[libp2p]'``; importing this module without py-libp2p
raises an `ImportError` that names the extra. Use it inside the host's ``run()`` block, from
the host's trio event loop::

    async with host.run(listen_addrs=[...]), ConnManager(low_water=..., high_water=...) as cm:
        adapter = await attach(host, cm)
        cm.protect(relay_id, "relay")        # py-libp2p `ID` objects are the peer keys
        ...
        await adapter.detach()

What `attach` does to the host, and what carries over:

- Connections. A notifiee on the host's swarm forwards every connection open and close to the
  manager's notifiee, and the connections already open are reported at once. Each py-libp2p
  connection is wrapped once in a `Libp2pConn` (remote peer `ID`, direction, live stream
  count, remote multiaddr, ``close()``) that is the manager's key for it for its whole life.
- Streams. `Libp2pConn.num_streams` reads the connection's live stream set each time a trim
  looks at it, so it is exact when it matters. The stream open/close notifications are
  received but not counted: py-libp2p can report one stream closed more than once (a stream
  that is closed and then reset), so a counter kept from events would drift.
- Tags and protections. Unless ``route_tags=False``, the swarm's tag store (what
  ``host.conn_manager``, ``host.get_network().tag_peer``/``protect``/... and py-libp2p's own
  protocols such as bitswap write to) is replaced by a write-through store: every
  ``tag_peer``, ``untag_peer``, ``upsert_tag``, ``protect`` and ``unprotect`` reaches the
  manager and is also kept in py-libp2p's own store, so ``get_tag_info`` still returns
  py-libp2p's `TagInfo`. ``is_protected`` and ``unprotect``'s result come from the manager,
  the one that decides; so py-libp2p's per-peer connection cap and health monitor also see
  protections set on the manager directly. Tags set on the manager directly do not show up
  in py-libp2p's store. Two rules differ: py-libp2p forgets a peer's protections when its
  last connection closes, the manager keeps them until ``unprotect``; and the manager's
  ``upsert_tag`` sees the manager's current value (its result is copied to py-libp2p's store).
  Decaying tags exist only on the manager. Writes through the tag store must happen on the
  host's event loop thread (py-libp2p's store has a lock; the manager does not need one).
- py-libp2p's own connection manager. Its `ConnectionPruner` (the high-water trim) and its
  `AutoConnector` (dialing peers from the peerstore to stay above low water) are stopped, so
  two managers never fight over the same connections; ``detach()`` starts them again if the
  host is still running. Not switched off, because they are hard limits rather than policy:
  ``ConnectionConfig.max_connections`` (a connection over it is refused when it registers;
  keep it above the manager's high water), ``max_connections_per_peer`` (extra connections
  to one peer are closed; it honours protections, through the store above), the resource
  manager and the opt-in health monitor. ``host.get_network().get_conn_mgr_info()`` keeps
  describing py-libp2p's idle pruner, not the manager: read ``cm.get_info()``.

``detach()`` undoes all of it and reports every connection it had forwarded as closed, so
the manager does not keep (and later try to trim) connections it can no longer follow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import attrs

from .abc import ConnManager, Direction, Notifiee

try:
    from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
    from libp2p.network.swarm import Swarm
    from libp2p.network.tag_store import TagInfo, TagStore
    from libp2p.peer.id import ID
    from multiaddr import Multiaddr
except ImportError as exc:  # see test_import_without_libp2p_names_the_extra
    raise ImportError(
        "asyncconnmgr.libp2p needs py-libp2p; install it with: "
        "pip install 'asyncconnmgr[libp2p]' "
        f"(importing it failed: {exc})"
    ) from exc

__all__ = ["Libp2pAdapter", "Libp2pConn", "attach"]

logger = logging.getLogger("asyncconnmgr.libp2p")

_DIRECTIONS = {"INBOUND": Direction.INBOUND, "OUTBOUND": Direction.OUTBOUND}


def _direction_of(net_conn: INetConn) -> Direction:
    # `direction` is a `SwarmConn` property (a `libp2p.rcmgr.Direction`), not part of
    # `INetConn`; anything else is UNKNOWN.
    raw: object = getattr(net_conn, "direction", None)
    return _DIRECTIONS.get(getattr(raw, "name", ""), Direction.UNKNOWN)


def _remote_addr_of(net_conn: INetConn) -> str | None:
    try:
        addrs = net_conn.get_transport_addresses()
    except Exception:  # a transport that cannot tell must not stop the connection
        logger.debug("cannot read the transport address of %r", net_conn, exc_info=True)
        return None
    return str(addrs[0]) if addrs else None


def _as_peer_id(peer: object) -> ID:
    """Return a py-libp2p `ID` for `peer`.

    `ID` compares equal to its base58 `str` but hashes differently, so a `str` that reached
    the manager would make a second, phantom peer; it is converted here instead.
    """
    if isinstance(peer, ID):
        return peer
    if isinstance(peer, str):
        return ID.from_base58(peer)
    raise TypeError(f"peer_id must be a libp2p ID, not {type(peer).__name__}")


@attrs.define(eq=False, frozen=True)
class Libp2pConn:
    """One py-libp2p connection, as the manager sees it (an `asyncconnmgr.abc.Conn`).

    Created once per connection by the adapter, so its identity is the connection's
    identity for the manager. `remote_peer`, `direction` and `remote_addr` are read when the
    connection is reported open and never change; `num_streams` is read live.
    """

    net_conn: INetConn
    remote_peer: ID
    direction: Direction
    remote_addr: str | None

    @classmethod
    def wrap(cls, net_conn: INetConn) -> Libp2pConn:
        return cls(
            net_conn=net_conn,
            remote_peer=net_conn.muxed_conn.peer_id,
            direction=_direction_of(net_conn),
            remote_addr=_remote_addr_of(net_conn),
        )

    @property
    def num_streams(self) -> int:
        try:
            return len(self.net_conn.get_streams())
        except Exception:  # a dead muxer: it has no streams worth protecting
            return 0

    async def close(self) -> None:
        """Close the connection; py-libp2p then reports it closed (idempotent)."""
        await self.net_conn.close()


class _RoutedTagStore(TagStore):  # type: ignore[misc,unused-ignore]  # Any without libp2p
    """A write-through wrapper over a swarm's own `TagStore`.

    It never calls ``TagStore.__init__``: every attribute it does not define (the state,
    the lock, and any method a later py-libp2p adds) is looked up on the wrapped store by
    `__getattr__`, so there is a single copy of py-libp2p's state and putting the wrapped
    store back (on detach) loses nothing. The swarm's `TagStoreNotifee` keeps feeding the
    wrapped store its connection events directly.
    """

    def __init__(self, inner: TagStore, manager: ConnManager) -> None:
        self.inner = inner
        self.manager = manager

    def __getattr__(self, name: str) -> Any:
        # Only reached for names missing on the wrapper; `inner` is always set, but guard
        # against lookups during unpickling/copying before __init__ ran.
        if name in ("inner", "manager"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def tag_peer(self, peer_id: ID, tag: str, value: int) -> None:
        peer_id = _as_peer_id(peer_id)
        self.manager.tag_peer(peer_id, tag, value)
        self.inner.tag_peer(peer_id, tag, value)

    def untag_peer(self, peer_id: ID, tag: str) -> None:
        peer_id = _as_peer_id(peer_id)
        self.manager.untag_peer(peer_id, tag)
        self.inner.untag_peer(peer_id, tag)

    def upsert_tag(self, peer_id: ID, tag: str, upsert_fn: Callable[[int], int]) -> None:
        peer_id = _as_peer_id(peer_id)
        results: list[int] = []

        def once(current: int) -> int:
            # The manager is authoritative; the function runs once, on its value.
            new_value = upsert_fn(current)
            results.append(new_value)
            return new_value

        self.manager.upsert_tag(peer_id, tag, once)
        if results:
            self.inner.tag_peer(peer_id, tag, results[-1])
        else:  # a manager that ignores tags (NullConnManager)
            self.inner.upsert_tag(peer_id, tag, upsert_fn)

    def get_tag_info(self, peer_id: ID) -> TagInfo | None:
        return self.inner.get_tag_info(_as_peer_id(peer_id))

    def get_tag_value(self, peer_id: ID) -> int:
        value: int = self.inner.get_tag_value(_as_peer_id(peer_id))
        return value

    def get_tag(self, peer_id: ID, tag: str) -> int:
        value: int = self.inner.get_tag(_as_peer_id(peer_id), tag)
        return value

    def protect(self, peer_id: ID, tag: str) -> None:
        peer_id = _as_peer_id(peer_id)
        self.manager.protect(peer_id, tag)
        self.inner.protect(peer_id, tag)

    def unprotect(self, peer_id: ID, tag: str) -> bool:
        peer_id = _as_peer_id(peer_id)
        self.inner.unprotect(peer_id, tag)
        return self.manager.unprotect(peer_id, tag)

    def is_protected(self, peer_id: ID, tag: str = "") -> bool:
        # py-libp2p spells "under any tag" as ""; the manager as None.
        return self.manager.is_protected(_as_peer_id(peer_id), tag or None)

    def record_connection(self, peer_id: ID, conn_id: int) -> None:
        self.inner.record_connection(peer_id, conn_id)

    def remove_connection(self, peer_id: ID, conn_id: int) -> None:
        self.inner.remove_connection(peer_id, conn_id)

    def clear_peer(self, peer_id: ID) -> None:
        self.inner.clear_peer(peer_id)

    def get_all_peers(self) -> list[ID]:
        peers: list[ID] = self.inner.get_all_peers()
        return peers

    def get_protected_peers(self) -> list[ID]:
        peers: list[ID] = self.inner.get_protected_peers()
        return peers


class _SwarmNotifee(INotifee):  # type: ignore[misc,unused-ignore]  # Any without libp2p
    """The py-libp2p side of the bridge: it only hands events to the adapter.

    The swarm awaits every notifee (each in its own task) on its connect/close path, so
    these return without waiting.
    """

    def __init__(self, adapter: Libp2pAdapter) -> None:
        self._adapter = adapter

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._adapter._on_connected(conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._adapter._on_disconnected(conn)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        """Nothing to do: `Libp2pConn.num_streams` reads the live stream set."""

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        """Nothing to do: `Libp2pConn.num_streams` reads the live stream set."""

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        """Listeners are not connections."""

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        """Listeners are not connections."""


def _is_started(component: object) -> bool:
    # Neither ConnectionPruner nor AutoConnector exposes its running flag publicly; read it
    # so that detach() restarts only what attach() stopped.
    return bool(getattr(component, "_started", False))


@attrs.define(eq=False)
class Libp2pAdapter:
    """The link between one running py-libp2p host and one manager; see the module doc.

    Made by `attach`; undone by `detach`.
    """

    host: IHost
    manager: ConnManager
    _swarm: Swarm = attrs.field(alias="swarm")
    _manager_notifee: Notifiee = attrs.field(init=False)
    _swarm_notifee: _SwarmNotifee = attrs.field(init=False)
    _conns: dict[INetConn, Libp2pConn] = attrs.field(init=False, factory=dict)
    _routed_store: _RoutedTagStore | None = attrs.field(init=False, default=None)
    _stopped_pruner: bool = attrs.field(init=False, default=False)
    _stopped_auto_connector: bool = attrs.field(init=False, default=False)
    _attached: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        self._manager_notifee = self.manager.notifee()
        self._swarm_notifee = _SwarmNotifee(self)

    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def conns(self) -> tuple[Libp2pConn, ...]:
        """The connections reported open to the manager and not yet reported closed."""
        return tuple(self._conns.values())

    def get_conn(self, net_conn: INetConn) -> Libp2pConn | None:
        """The wrapper the manager knows `net_conn` by, or None if it is not (or no longer)
        reported open."""
        return self._conns.get(net_conn)

    def reconcile(self) -> int:
        """Bring the manager in line with the swarm's live connections, now.

        Reports open every live connection the manager was not told about and closed every
        forwarded connection the swarm no longer has; returns how many it reported. `attach`
        starts with it; afterwards it should always return 0, unless py-libp2p closed a
        connection without notifying (a close cancelled half-way, at host shutdown).
        """
        if not self._attached:
            return 0
        live = [c for c in self._swarm.get_connections() if not c.is_closed]
        live_set = set(live)
        changes = 0
        for net_conn in [c for c in self._conns if c not in live_set]:
            self._on_disconnected(net_conn)
            changes += 1
        for net_conn in live:
            if net_conn not in self._conns:
                self._on_connected(net_conn)
                changes += 1
        return changes

    async def detach(self) -> None:
        """Stop forwarding, put py-libp2p's own tag store back and restart its pruner and
        auto-connector (if the host still runs), and report every forwarded connection
        closed to the manager. Idempotent.

        It is async because py-libp2p's start methods are coroutines. Its only checkpoint is
        the first thing it does: cancelled there, it leaves everything attached and may be
        called again; past it, it runs to the end.
        """
        if not self._attached:
            await anyio.lowlevel.checkpoint()
            return
        await anyio.lowlevel.checkpoint()
        self._attached = False
        self._swarm.remove_notifee(self._swarm_notifee)
        store = self._routed_store
        if store is not None:
            self._routed_store = None
            if self._swarm.tag_store is store:
                self._swarm.tag_store = store.inner
            else:
                logger.warning(
                    "the swarm's tag store was replaced after attach(); leaving it as it is"
                )
        forwarded = list(self._conns.values())
        self._conns.clear()
        for conn in forwarded:
            self._manager_notifee.disconnected(conn)
        await self._restart_libp2p_conn_mgr()

    async def _switch_off_libp2p_conn_mgr(self) -> None:
        # Neither stop() checkpoints, so there is no gap between the two.
        pruner = self._swarm.connection_pruner
        if _is_started(pruner):
            await pruner.stop()
            self._stopped_pruner = True
        auto_connector = self._swarm.auto_connector
        if _is_started(auto_connector):
            # stop() also wakes and ends its periodic task. A dial cycle in flight finishes;
            # its connections are reported like any other.
            await auto_connector.stop()
            self._stopped_auto_connector = True

    async def _restart_libp2p_conn_mgr(self) -> None:
        nursery = self._swarm.background_nursery
        if nursery is None:  # the host has stopped: its shutdown stopped them anyway
            return
        if self._stopped_pruner:
            self._stopped_pruner = False
            await self._swarm.connection_pruner.start()
        if self._stopped_auto_connector:
            self._stopped_auto_connector = False
            auto_connector = self._swarm.auto_connector
            await auto_connector.start()
            await auto_connector.run_background_task(nursery)

    def _on_connected(self, net_conn: INetConn) -> None:
        # A connection is reported once: the snapshot in attach() and a notification still
        # in flight can both name it. A connection that closed before its notification
        # arrived is not reported at all.
        if not self._attached or net_conn in self._conns or net_conn.is_closed:
            return
        try:
            conn = Libp2pConn.wrap(net_conn)
        except Exception:
            logger.warning("cannot wrap py-libp2p connection %r", net_conn, exc_info=True)
            return
        self._conns[net_conn] = conn
        self._manager_notifee.connected(conn)

    def _on_disconnected(self, net_conn: INetConn) -> None:
        conn = self._conns.pop(net_conn, None)
        if conn is not None:
            self._manager_notifee.disconnected(conn)


async def attach(host: IHost, manager: ConnManager, *, route_tags: bool = True) -> Libp2pAdapter:
    """Make `manager` manage `host`'s connections; see the module doc for what changes.

    Call it while the host runs (inside ``async with host.run(...)``), on the host's trio
    loop; the manager may or may not be running yet (notifications sent before it starts are
    queued). With ``route_tags=False`` the host's tag store is left alone and py-libp2p's
    tags and protections do not reach the manager.

    Raises `TypeError` if the host's network is not a py-libp2p `Swarm`, `RuntimeError` if the
    host is not running or already has an adapter. Its only checkpoint comes before it
    changes anything, so a cancelled `attach` leaves the host as it was.
    """
    network = host.get_network()
    if not isinstance(network, Swarm):
        raise TypeError(
            f"attach() needs a host whose network is a libp2p Swarm, not {type(network).__name__}"
        )
    await anyio.lowlevel.checkpoint()
    if network.background_nursery is None or not network.event_background_nursery_created.is_set():
        # Swarm.run() starts the pruner and auto-connector itself: attaching earlier would
        # be undone by it.
        raise RuntimeError("attach() needs a running host: call it inside `host.run(...)`")
    if any(isinstance(n, _SwarmNotifee) for n in network.notifees):
        raise RuntimeError("this host already has an adapter: detach() it first")

    adapter = Libp2pAdapter(host=host, manager=manager, swarm=network)
    high_water = manager.get_info().high_water
    max_connections = getattr(network.connection_config, "max_connections", None)
    if isinstance(max_connections, int) and high_water >= max_connections:
        logger.warning(
            "py-libp2p refuses connections beyond max_connections=%d, so the manager's "
            "high_water=%d is never exceeded; raise ConnectionConfig.max_connections",
            max_connections,
            high_water,
        )
    # From here on nothing checkpoints until the adapter is returned, so no connection
    # event can slip between the snapshot and the notifee.
    await adapter._switch_off_libp2p_conn_mgr()
    if route_tags:
        store = _RoutedTagStore(network.tag_store, manager)
        network.tag_store = store
        adapter._routed_store = store
    adapter._attached = True
    network.register_notifee(adapter._swarm_notifee)
    adapter.reconcile()
    return adapter
