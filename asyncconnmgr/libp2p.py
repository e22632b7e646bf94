"""Let a `ConnManager` manage the connections of a running py-libp2p host.

Install with ``pip install 'asyncconnmgr[libp2p]'``; importing this module without py-libp2p
raises an `ImportError` that names the extra. Use it inside the host's ``run()`` block, from
the host's trio event loop::

    async with host.run(listen_addrs=[...]), ConnManager(low_water=..., high_water=...) as cm:
        async with attach(host, cm) as adapter:  # or: adapter = await attach(host, cm)
            cm.protect(relay_id, "relay")         # py-libp2p `ID` objects are the peer keys
            ...
        # leaving the block detaches (as `await adapter.detach()` does)

What `attach` does to the host, and what carries over:

- Connections. A notifiee on the host's swarm forwards every connection open and close to the
  manager's notifiee, and the connections already open are reported at once. Each py-libp2p
  connection is wrapped once in a `Libp2pConn` (remote peer `ID`, direction, live stream
  count, remote multiaddr, ``close()``, ``abort()``) that is the manager's key for it for its
  whole life. A wrapper holds its py-libp2p connection weakly: a wrapper kept somewhere (in a
  `TagInfo` snapshot, say) never keeps an ended connection alive.
- Stuck closes. When a close is still running after the manager's ``close_timeout`` (a peer
  that stopped reading, so the muxer's last frames never leave), the manager calls
  `Libp2pConn.abort()`: the TCP socket is reset at once and the connection leaves the swarm.
- Streams. `Libp2pConn.num_streams` reads the connection's live stream set each time a trim
  looks at it, so it is exact when it matters. The stream open/close notifications are
  received but not counted: py-libp2p can report one stream closed more than once (a stream
  that is closed and then reset), so a counter kept from events would drift.
- Lost notifications. py-libp2p does not report a connection closed whose close was cancelled
  half-way (at host shutdown, or by a caller's timeout). The adapter reconciles the manager
  with the swarm every ``reconcile_interval`` seconds (a minute by default, on the manager's
  clock), counts what it fixed (`Libp2pAdapter.get_info`) and logs it.
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
- Inbound slots. py-libp2p 0.8.1 gives each inbound connection a slot out of
  ``max_connections - min_connections`` and frees it only when the host stops, not when the
  connection ends: a long-running hub refuses every inbound connection once that many have
  come and gone, whatever the manager closes. `attach` says so with an
  `InboundSlotsWarning`; the remedy is a ``max_connections`` that covers the inbound
  connections expected before the host restarts.

``detach()`` undoes all of it and reports every connection it had forwarded as closed, so
the manager does not keep (and later try to trim) connections it can no longer follow. A
manager that closes while attached is detached from by itself: py-libp2p's own pruner and tag
store are back, and new connections and tags are py-libp2p's alone again.
"""

from __future__ import annotations

import importlib.metadata
import logging
import socket
import struct
import warnings
import weakref
from collections.abc import Callable, Generator
from contextlib import suppress
from types import TracebackType
from typing import Any, Final

import anyio
import anyio.lowlevel
import attrs

from ._clock import AnyioClock
from ._config import check_seconds
from .abc import Clock, ConnManager, Direction, Notifiee

try:
    import trio
    from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
    from libp2p.network.connection.swarm_connection import SwarmConn
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

__all__ = [
    "RECONCILE_INTERVAL",
    "AdapterInfo",
    "Attaching",
    "InboundSlotsWarning",
    "Libp2pAdapter",
    "Libp2pConn",
    "attach",
]

logger = logging.getLogger("asyncconnmgr.libp2p")

#: How often, by default, an adapter reconciles the manager with the swarm (seconds on the
#: manager's clock).
RECONCILE_INTERVAL: Final = 60.0
#: How often an adapter looks again at a manager that was not entered yet (or has no
#: `wait_closed()`), to notice when it closes.
_MANAGER_POLL: Final = 1.0
#: How long py-libp2p's own clean-up of an aborted connection may take (real seconds).
_ABORT_CLEANUP_TIMEOUT: Final = 5.0
#: The attributes that lead from a py-libp2p connection down to its transport, layer by
#: layer (muxer, security session, noise/secio/tls readers, raw connection, TCP stream).
_LAYERS: Final = (
    "muxed_conn",
    "secured_conn",
    "conn",
    "_conn",
    "raw_connection",
    "read_writer",
    "read_write_closer",
    "stream",
    "_stream",
)


class InboundSlotsWarning(RuntimeWarning):
    """py-libp2p frees an inbound connection's slot only when the host stops.

    So a host accepts ``max_connections - min_connections`` inbound connections in its whole
    life and then refuses every one. Emitted by `attach`; once ``max_connections`` is sized
    for the host's lifetime, silence it with
    ``warnings.filterwarnings("ignore", category=InboundSlotsWarning)``.
    """


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
    connection is reported open and never change; `num_streams` is read live. It holds the
    py-libp2p connection weakly (`net_conn` is None once py-libp2p has let go of it), so a
    wrapper that outlives its connection keeps nothing of it alive; it can itself be weakly
    referenced.
    """

    _ref: weakref.ref[INetConn] = attrs.field(alias="ref", repr=False)
    remote_peer: ID
    direction: Direction
    remote_addr: str | None

    @classmethod
    def wrap(cls, net_conn: INetConn) -> Libp2pConn:
        """A wrapper for `net_conn`, a py-libp2p connection (`INetConn`): its peer id,
        direction and remote address are read now, and it is held weakly.

        Raises whatever reading `net_conn.muxed_conn.peer_id` raises (an `AttributeError`
        for an object that is not a py-libp2p connection).
        """
        return cls(
            ref=weakref.ref(net_conn),
            remote_peer=net_conn.muxed_conn.peer_id,
            direction=_direction_of(net_conn),
            remote_addr=_remote_addr_of(net_conn),
        )

    @property
    def net_conn(self) -> INetConn | None:
        """The py-libp2p connection, or None once nothing else holds it (it has ended)."""
        return self._ref()

    @property
    def num_streams(self) -> int:
        """The connection's open streams, read live; 0 once it is gone."""
        net_conn = self._ref()
        if net_conn is None:
            return 0
        try:
            return len(net_conn.get_streams())
        except Exception:  # a dead muxer: it has no streams worth protecting
            return 0

    async def close(self) -> None:
        """Close the connection; py-libp2p then reports it closed (idempotent).

        A connection that is already gone is left alone. Cancelling it leaves the close
        wherever py-libp2p had got to (the connection counts as closed for py-libp2p, and
        `abort()` finishes it).
        """
        net_conn = self._ref()
        if net_conn is not None:
            await net_conn.close()

    def abort(self) -> None:
        """Drop the connection at once, without waiting for the peer (sync).

        The manager calls it once when a close is still running after `close_timeout`: a
        peer that stopped reading keeps py-libp2p's close waiting for its socket buffer
        forever. The TCP socket under the connection is reset (``SO_LINGER`` 0: the peer gets
        an RST, nothing stays queued in the kernel) and the connection leaves the swarm's
        table now; py-libp2p's own clean-up (the muxer's state, the ``disconnected``
        notifications) then runs in the host's background nursery. A connection that is
        already gone is left alone.

        Raises RuntimeError if no TCP socket is found under the connection (a transport
        other than TCP); the manager then reports the close as timed out.
        """
        net_conn = self._ref()
        if net_conn is None:
            return
        sock = _socket_under(net_conn)
        if sock is None:
            raise RuntimeError(f"no TCP socket under {net_conn!r} to abort")
        with suppress(OSError):  # already closed: close() below is then a no-op
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        if not isinstance(net_conn, SwarmConn):
            return
        swarm = net_conn.swarm
        listed = any(conn is net_conn for conn in swarm.get_connections(self.remote_peer))
        if not listed and net_conn.is_closed:
            return  # py-libp2p's own clean-up is past this point already
        swarm.remove_conn(net_conn)
        nursery = swarm.background_nursery
        if nursery is not None:
            nursery.start_soon(_finish_abort, net_conn)


def _socket_under(net_conn: INetConn) -> trio.socket.SocketType | None:
    """The socket of the TCP stream under `net_conn`'s layers, or None."""
    layers: list[object] = [net_conn]
    seen: set[int] = set()
    while layers and len(seen) < 32:
        layer = layers.pop(0)
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, trio.SocketStream):
            return layer.socket
        for name in _LAYERS:
            inner = getattr(layer, name, None)
            if inner is not None:
                layers.append(inner)
    return None


async def _finish_abort(net_conn: SwarmConn) -> None:
    """py-libp2p's clean-up of an aborted connection: quick, with its socket gone."""
    try:
        with anyio.move_on_after(_ABORT_CLEANUP_TIMEOUT):
            if not net_conn.is_closed:  # aborted before any close: py-libp2p's whole close
                await net_conn.close()
                return
            # A close that was abandoned half-way: the rest of it.
            with suppress(Exception):
                await net_conn.muxed_conn.close()
            await net_conn.swarm.notify_disconnected(net_conn)
    except Exception:  # never into the host's nursery
        logger.warning("cleaning up aborted connection %r failed", net_conn, exc_info=True)


class _RoutedTagStore(TagStore):  # type: ignore[misc,unused-ignore]  # Any without libp2p
    """A write-through wrapper over a swarm's own `TagStore`.

    It never calls ``TagStore.__init__``: every attribute it does not define (the state,
    the lock, and any method a later py-libp2p adds) is looked up on the wrapped store by
    `__getattr__`, so there is a single copy of py-libp2p's state and putting the wrapped
    store back (on detach) loses nothing. The swarm's `TagStoreNotifee` keeps feeding the
    wrapped store its connection events directly. Once `routing` is off (on detach), it is
    the wrapped store and nothing more, for whoever kept a reference to it.
    """

    def __init__(self, inner: TagStore, manager: ConnManager) -> None:
        self.inner = inner
        self.manager = manager
        self.routing = True

    def __getattr__(self, name: str) -> Any:
        # Only reached for names missing on the wrapper; `inner` is always set, but guard
        # against lookups during unpickling/copying before __init__ ran.
        if name in ("inner", "manager", "routing"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def tag_peer(self, peer_id: ID, tag: str, value: int) -> None:
        peer_id = _as_peer_id(peer_id)
        if self.routing:
            self.manager.tag_peer(peer_id, tag, value)
        self.inner.tag_peer(peer_id, tag, value)

    def untag_peer(self, peer_id: ID, tag: str) -> None:
        peer_id = _as_peer_id(peer_id)
        if self.routing:
            self.manager.untag_peer(peer_id, tag)
        self.inner.untag_peer(peer_id, tag)

    def upsert_tag(self, peer_id: ID, tag: str, upsert_fn: Callable[[int], int]) -> None:
        peer_id = _as_peer_id(peer_id)
        if not self.routing:
            self.inner.upsert_tag(peer_id, tag, upsert_fn)
            return
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
        if self.routing:
            self.manager.protect(peer_id, tag)
        self.inner.protect(peer_id, tag)

    def unprotect(self, peer_id: ID, tag: str) -> bool:
        peer_id = _as_peer_id(peer_id)
        still_protected: bool = self.inner.unprotect(peer_id, tag)
        if self.routing:
            return self.manager.unprotect(peer_id, tag)
        return still_protected

    def is_protected(self, peer_id: ID, tag: str = "") -> bool:
        peer_id = _as_peer_id(peer_id)
        if not self.routing:
            protected: bool = self.inner.is_protected(peer_id, tag)
            return protected
        # py-libp2p spells "under any tag" as ""; the manager as None.
        return self.manager.is_protected(peer_id, tag or None)

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


@attrs.frozen
class AdapterInfo:
    """A snapshot of an adapter: its state, and what its reconciles found.

    `conns` is how many connections it has reported open and not yet closed.
    `reconcile_interval` is the period of its own reconciles (None: never by itself).
    `reconciles` counts the reconciles since `attach` (periodic and explicit ones, not the
    one `attach` starts with); `reported_open` the live connections they found the manager
    had not been told of, `reported_closed` the reported ones the swarm no longer had (each
    a notification py-libp2p lost); `last_reconcile` is when the last one ran, on the
    manager's clock.
    """

    attached: bool
    conns: int
    reconcile_interval: float | None
    reconciles: int
    reported_open: int
    reported_closed: int
    last_reconcile: float | None


@attrs.define(eq=False)
class Libp2pAdapter:
    """The link between one running py-libp2p host and one manager; see the module doc.

    Made by `attach` (`host` and `manager` are what it links); undone by `detach`, or by the
    manager closing. While attached it runs one task in the host's background nursery: the
    periodic reconcile, and the watch for the manager's close.
    """

    host: IHost
    manager: ConnManager
    _swarm: Swarm = attrs.field(alias="swarm")
    _clock: Clock = attrs.field(alias="clock")
    _reconcile_interval: float | None = attrs.field(
        alias="reconcile_interval", default=RECONCILE_INTERVAL
    )
    _manager_notifee: Notifiee = attrs.field(init=False)
    _swarm_notifee: _SwarmNotifee = attrs.field(init=False)
    _conns: dict[INetConn, Libp2pConn] = attrs.field(init=False, factory=dict)
    _routed_store: _RoutedTagStore | None = attrs.field(init=False, default=None)
    _stopped_pruner: bool = attrs.field(init=False, default=False)
    _stopped_auto_connector: bool = attrs.field(init=False, default=False)
    _attached: bool = attrs.field(init=False, default=False)
    _task_scope: anyio.CancelScope | None = attrs.field(init=False, default=None)
    _reconciles: int = attrs.field(init=False, default=0)
    _reported_open: int = attrs.field(init=False, default=0)
    _reported_closed: int = attrs.field(init=False, default=0)
    _last_reconcile: float | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._manager_notifee = self.manager.notifee()
        self._swarm_notifee = _SwarmNotifee(self)

    @property
    def attached(self) -> bool:
        """True from `attach` until `detach` (or the manager's close)."""
        return self._attached

    @property
    def reconcile_interval(self) -> float | None:
        """Seconds (on the manager's clock) between two reconciles; None: only on request."""
        return self._reconcile_interval

    @property
    def conns(self) -> tuple[Libp2pConn, ...]:
        """The connections reported open to the manager and not yet reported closed."""
        return tuple(self._conns.values())

    def get_conn(self, net_conn: INetConn) -> Libp2pConn | None:
        """The wrapper the manager knows `net_conn` by, or None if it is not (or no longer)
        reported open."""
        return self._conns.get(net_conn)

    def get_info(self) -> AdapterInfo:
        """A snapshot of the adapter's state and of what its reconciles fixed."""
        return AdapterInfo(
            attached=self._attached,
            conns=len(self._conns),
            reconcile_interval=self._reconcile_interval,
            reconciles=self._reconciles,
            reported_open=self._reported_open,
            reported_closed=self._reported_closed,
            last_reconcile=self._last_reconcile,
        )

    def reconcile(self) -> int:
        """Bring the manager in line with the swarm's live connections, now.

        Reports open every live connection the manager was not told about and closed every
        forwarded connection the swarm no longer has (or has closed); returns how many it
        reported. Each one is a notification py-libp2p lost (a close cancelled half-way, at
        host shutdown or by a caller's timeout): it is counted in `get_info()` and logged as
        a warning. The adapter runs this every `reconcile_interval` by itself. A detached
        adapter does nothing and returns 0.
        """
        if not self._attached:
            return 0
        opened, closed = self._sync_with_swarm()
        self._reconciles += 1
        self._reported_open += opened
        self._reported_closed += closed
        self._last_reconcile = self._clock.now()
        if opened or closed:
            logger.warning(
                "asyncconnmgr: %d connections were out of step with the swarm (%d open, "
                "%d closed without a notification); the manager now has them right",
                opened + closed,
                opened,
                closed,
            )
        return opened + closed

    def _sync_with_swarm(self) -> tuple[int, int]:
        live = [c for c in self._swarm.get_connections() if not c.is_closed]
        live_set = set(live)
        closed = 0
        for net_conn in [c for c in self._conns if c not in live_set]:
            self._on_disconnected(net_conn)
            closed += 1
        opened = 0
        for net_conn in live:
            if net_conn not in self._conns:
                self._on_connected(net_conn)
                opened += 1
        return opened, closed

    async def detach(self) -> None:
        """Stop forwarding, put py-libp2p's own tag store back and restart its pruner and
        auto-connector (if the host still runs), and report every forwarded connection
        closed to the manager (unless it has closed). Idempotent.

        It is async because py-libp2p's start methods are coroutines. Its only checkpoint is
        the first thing it does: cancelled there, it leaves everything attached and may be
        called again; past it, it runs to the end.
        """
        if not self._attached:
            await anyio.lowlevel.checkpoint()
            return
        await anyio.lowlevel.checkpoint()
        if not self._attached:  # detached meanwhile (the manager closed)
            return
        self._attached = False
        if self._task_scope is not None:
            self._task_scope.cancel()
        self._swarm.remove_notifee(self._swarm_notifee)
        store = self._routed_store
        if store is not None:
            self._routed_store = None
            store.routing = False  # also for whoever kept a reference to it
            if self._swarm.tag_store is store:
                self._swarm.tag_store = store.inner
            else:
                logger.warning(
                    "the swarm's tag store was replaced after attach(); leaving it as it is"
                )
        forwarded = list(self._conns.values())
        self._conns.clear()
        if not self.manager.get_info().closed:  # a closed manager has nothing to forget
            for conn in forwarded:
                self._manager_notifee.disconnected(conn)
        await self._restart_libp2p_conn_mgr()

    def _start(self, nursery: trio.Nursery) -> None:
        # Started with start_soon (no checkpoint in attach), in a scope made here, so that a
        # detach() before the task first runs still stops it.
        scope = self._task_scope = anyio.CancelScope()
        nursery.start_soon(self._run, scope)

    async def _run(self, scope: anyio.CancelScope) -> None:
        """The adapter's task: reconciles periodically; detaches when the manager closes."""
        try:
            with scope:
                async with anyio.create_task_group() as tg:
                    if self._reconcile_interval is not None:
                        tg.start_soon(self._reconcile_periodically, self._reconcile_interval)
                    await self._wait_manager_closed()
                    tg.cancel_scope.cancel()
            if scope.cancel_called:  # detach() ended it
                return
            logger.info("asyncconnmgr: the manager closed; detaching it from the host")
            await self.detach()
        except Exception:  # never into the host's nursery: that would stop the host
            logger.exception("asyncconnmgr: the py-libp2p adapter's task failed")

    async def _reconcile_periodically(self, interval: float) -> None:
        clock = self._clock
        while True:
            await clock.sleep_until(clock.now() + interval)
            try:
                self.reconcile()
            except Exception:
                logger.exception("asyncconnmgr: reconciling with the swarm failed")

    async def _wait_manager_closed(self) -> None:
        manager = self.manager
        wait_closed = getattr(manager, "wait_closed", None)
        clock = self._clock
        while True:
            if callable(wait_closed):
                try:
                    await wait_closed()
                except RuntimeError:  # not entered yet: nothing to wait on so far
                    pass
                else:
                    return
            elif manager.get_info().closed:
                return
            await clock.sleep_until(clock.now() + _MANAGER_POLL)

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


class Attaching:
    """What `attach` returns: await it for the adapter, or enter it with ``async with``.

    ``adapter = await attach(host, manager)`` attaches and leaves the detaching to the
    caller (or to the manager's close). ``async with attach(host, manager) as adapter:``
    attaches on entry and detaches on exit, even when the block is cancelled or raises (the
    block's exception comes out as itself).
    """

    __slots__ = ("_adapter", "_host", "_manager", "_reconcile_interval", "_route_tags")

    def __init__(
        self,
        host: IHost,
        manager: ConnManager,
        route_tags: bool,
        reconcile_interval: float | None,
    ) -> None:
        self._host = host
        self._manager = manager
        self._route_tags = route_tags
        self._reconcile_interval = reconcile_interval
        self._adapter: Libp2pAdapter | None = None

    def __await__(self) -> Generator[Any, None, Libp2pAdapter]:
        # Frames: the caller's, _attach's, the warning's helper.
        return self._attach(stacklevel=3).__await__()

    async def __aenter__(self) -> Libp2pAdapter:
        """Attaches (as ``await attach(...)`` does) and returns the adapter.

        Raises what `attach` raises. Cancelled before it attached, it leaves the host as it
        was.
        """
        self._adapter = await self._attach(stacklevel=4)  # one more frame: __aenter__'s
        return self._adapter

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Detaches the adapter (`Libp2pAdapter.detach`), shielded: a cancellation of the
        body, or of the exit, still leaves the host detached. The body's exception goes on
        as itself."""
        adapter, self._adapter = self._adapter, None
        if adapter is not None:
            with anyio.CancelScope(shield=True):
                await adapter.detach()

    async def _attach(self, *, stacklevel: int) -> Libp2pAdapter:
        host, manager = self._host, self._manager
        network = host.get_network()
        if not isinstance(network, Swarm):
            raise TypeError(
                "attach() needs a host whose network is a libp2p Swarm, "
                f"not {type(network).__name__}"
            )
        await anyio.lowlevel.checkpoint()
        nursery = network.background_nursery
        if nursery is None or not network.event_background_nursery_created.is_set():
            # Swarm.run() starts the pruner and auto-connector itself: attaching earlier
            # would be undone by it.
            raise RuntimeError("attach() needs a running host: call it inside `host.run(...)`")
        if any(isinstance(n, _SwarmNotifee) for n in network.notifees):
            raise RuntimeError("this host already has an adapter: detach() it first")

        adapter = Libp2pAdapter(
            host=host,
            manager=manager,
            swarm=network,
            clock=_clock_of(manager),
            reconcile_interval=self._reconcile_interval,
        )
        high_water = manager.get_info().high_water
        max_connections = getattr(network.connection_config, "max_connections", None)
        if isinstance(max_connections, int) and high_water >= max_connections:
            logger.warning(
                "py-libp2p refuses connections beyond max_connections=%d, so the manager's "
                "high_water=%d is never exceeded; raise ConnectionConfig.max_connections",
                max_connections,
                high_water,
            )
        # Before anything changes: with warnings turned into errors, this raises.
        _warn_about_inbound_slots(network, stacklevel=stacklevel)
        # From here on nothing checkpoints until the adapter is returned, so no connection
        # event can slip between the snapshot and the notifee.
        await adapter._switch_off_libp2p_conn_mgr()
        if self._route_tags:
            store = _RoutedTagStore(network.tag_store, manager)
            network.tag_store = store
            adapter._routed_store = store
        adapter._attached = True
        network.register_notifee(adapter._swarm_notifee)
        adapter._sync_with_swarm()
        adapter._start(nursery)
        return adapter


def attach(
    host: IHost,
    manager: ConnManager,
    *,
    route_tags: bool = True,
    reconcile_interval: float | None = RECONCILE_INTERVAL,
) -> Attaching:
    """Make `manager` manage `host`'s connections; see the module doc for what changes.

    ``adapter = await attach(host, manager)``, or ``async with attach(host, manager) as
    adapter:`` to detach when the block ends (see `Attaching`). Call it while the host runs
    (inside ``async with host.run(...)``), on the host's trio loop; the manager may or may
    not be running yet (notifications sent before it starts are queued). With
    ``route_tags=False`` the host's tag store is left alone and py-libp2p's tags and
    protections do not reach the manager. The adapter reconciles the manager with the swarm
    every `reconcile_interval` seconds on the manager's clock (None: only when
    `Libp2pAdapter.reconcile` is called).

    Raises TypeError naming `route_tags` if it is not a bool, TypeError or ValueError naming
    `reconcile_interval` if it is not a positive, finite number of seconds (at once, here;
    nothing changes); when awaited, TypeError if the host's network
    is not a py-libp2p `Swarm`, RuntimeError if the host is not running or already has an
    adapter. It warns with an `InboundSlotsWarning` about py-libp2p's inbound slots (see the
    module doc). Its only checkpoint comes before it changes anything, so a cancelled
    `attach` leaves the host as it was; so does the warning, if warnings are errors.
    """
    if not isinstance(route_tags, bool):
        raise TypeError(f"route_tags must be a bool, not {type(route_tags).__name__}")
    if reconcile_interval is not None:
        reconcile_interval = check_seconds("reconcile_interval", reconcile_interval, positive=True)
    return Attaching(host, manager, route_tags, reconcile_interval)


def _clock_of(manager: ConnManager) -> Clock:
    """The manager's clock (`asyncconnmgr.ConnManager.clock`), so that the adapter's timers
    run on it too and a `FakeClock` in tests drives both; anyio's for a manager without one."""
    clock = getattr(manager, "clock", None)
    return clock if isinstance(clock, Clock) else AnyioClock()


def _warn_about_inbound_slots(network: Swarm, *, stacklevel: int) -> None:
    limiter = getattr(network, "_inbound_limiter", None)
    if not isinstance(limiter, trio.CapacityLimiter):
        return
    slots = limiter.total_tokens
    if not isinstance(slots, int):  # math.inf: no cap
        return
    config = network.connection_config
    try:
        version = importlib.metadata.version("libp2p")
    except importlib.metadata.PackageNotFoundError:
        version = "(unknown version)"
    warnings.warn(
        f"py-libp2p {version} frees an inbound connection's slot only when the host stops, "
        f"not when the connection ends: this host accepts {slots} inbound connections in "
        f"its whole life ({limiter.borrowed_tokens} so far; max_connections="
        f"{getattr(config, 'max_connections', '?')} minus min_connections="
        f"{getattr(config, 'min_connections', '?')}) and then refuses every one, whatever "
        "the manager closes. Raise ConnectionConfig.max_connections to cover the inbound "
        "connections expected before the host restarts.",
        InboundSlotsWarning,
        stacklevel=stacklevel,
    )
