"""A py-libp2p hub whose connections an asyncconnmgr `ConnManager` keeps between water marks.

Run it with ``python examples/libp2p_swarm.py`` (needs ``pip install 'asyncconnmgr[libp2p]'``).
Everything listens on 127.0.0.1 and it finishes in about 13 seconds.

Ten peers dial the hub, one every 0.2 s, and four more 6 s later. The hub's manager has low
water 4 and high water 7, and leaves a new connection alone for a 2 s grace period. While
more than 7 connections are open it closes the least valuable peers whose grace period is
over, down to 4 that it could close (protected peers and peers in their grace period are
not counted in those 4). Three peers are special and survive every trim:

- peer-0 is protected (``cm.protect``), as a bootstrap or relay peer would be;
- peer-1 carries a tag worth 100 (``cm.tag_peer``);
- peer-2 carries a tag worth 50 set the py-libp2p way, through ``host.conn_manager``, which
  the adapter forwards to the manager.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import AsyncExitStack

import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.network.config import ConnectionConfig
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from multiaddr import Multiaddr

from asyncconnmgr import ConnManager
from asyncconnmgr.libp2p import InboundSlotsWarning, attach

LOCALHOST = Multiaddr("/ip4/127.0.0.1/tcp/0")
N_PEERS = 14
LOW_WATER, HIGH_WATER = 4, 7
GRACE = 2.0
JOIN_EVERY = 0.2  # seconds between two peers dialing the hub
SECOND_WAVE = (10, 6.0)  # peers from index 10 on start dialing 6 s in
RUN_FOR = 12.0  # seconds, from the first dial to the summary


def swarm_of(host: IHost) -> Swarm:
    network = host.get_network()
    assert isinstance(network, Swarm)
    return network


def gauge(count: int) -> str:
    """A bar of `count` cells with the water marks drawn in: `|` low water, `‖` high water."""
    cells = []
    for i in range(1, max(count, HIGH_WATER) + 1):
        cells.append("#" if i <= count else ".")
        if i == LOW_WATER:
            cells.append("|")
        if i == HIGH_WATER:
            cells.append("‖")
    return "".join(cells)


async def main() -> None:
    # py-libp2p 0.8.1 frees an inbound slot only when the host stops: the hub's
    # max_connections covers every inbound connection of its life (the README says more), so
    # the adapter's warning about it has been heeded.
    hub = new_host(connection_config=ConnectionConfig(max_connections=1_000, min_connections=0))
    warnings.filterwarnings("ignore", category=InboundSlotsWarning)
    # py-libp2p logs an error for each stream it was still negotiating (identify, mostly) on
    # a connection the manager closed; that is expected here, so keep them off the table.
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    peers = [new_host() for _ in range(N_PEERS)]
    names: dict[ID, str] = {p.get_id(): f"peer-{i}" for i, p in enumerate(peers)}
    roles = {
        peers[0].get_id(): "protected under 'bootstrap'",
        peers[1].get_id(): "tag dht=100",
        peers[2].get_id(): "tag bitswap=50, set through host.conn_manager",
    }

    async with AsyncExitStack() as stack:
        for host in [hub, *peers]:
            await stack.enter_async_context(host.run(listen_addrs=[LOCALHOST]))
        for peer in peers:
            # The peers never dial the hub again by themselves: only the hub's manager acts.
            await swarm_of(peer).auto_connector.stop()
            await swarm_of(peer).connection_pruner.stop()

        cm = ConnManager(
            low_water=LOW_WATER, high_water=HIGH_WATER, grace_period=GRACE, silence_period=1.0
        )
        async with cm:
            adapter = await attach(hub, cm)
            cm.protect(peers[0].get_id(), "bootstrap")
            cm.tag_peer(peers[1].get_id(), "dht", 100)
            hub.conn_manager.tag_peer(peers[2].get_id(), "bitswap", 50)
            print(f"hub {hub.get_id()} on {hub.get_addrs()[0]}")
            print(f"manager: low water {LOW_WATER}, high water {HIGH_WATER}, grace {GRACE:g} s")
            for peer_id, role in roles.items():
                print(f"  {names[peer_id]}: {role}")
            print()
            print("host: connections py-libp2p has open; mgr: those the manager counts (not the")
            print("ones it is closing); trims: trims started so far (one that finds nothing to")
            print("close counts too); + a peer connected, - a peer was closed by the manager.")
            print()
            print("  time  host mgr trims  connections (| low, ‖ high water)  events")

            def order(peer_id: ID) -> int:
                return int(names[peer_id].removeprefix("peer-"))

            start = trio.current_time()
            hub_addr = info_from_p2p_addr(hub.get_addrs()[0])

            async def join(peer: IHost, delay: float) -> None:
                await trio.sleep(delay)
                await peer.connect(hub_addr)

            async with trio.open_nursery() as nursery:
                first, wave_start = SECOND_WAVE
                for i, peer in enumerate(peers):
                    delay = i * JOIN_EVERY if i < first else wave_start + (i - first) * JOIN_EVERY
                    nursery.start_soon(join, peer, delay)

                seen: set[ID] = set()
                while (elapsed := trio.current_time() - start) < RUN_FOR:
                    live = [c for c in hub.get_network().get_connections() if not c.is_closed]
                    now_connected = {c.muxed_conn.peer_id for c in live}
                    events = [f"+{names[p]}" for p in sorted(now_connected - seen, key=order)]
                    events += [f"-{names[p]}" for p in sorted(seen - now_connected, key=order)]
                    seen = now_connected
                    info = cm.get_info()
                    host_count = len(live)
                    print(
                        f"{elapsed:5.1f}s  {host_count:4} {info.conn_count:3} {info.trims:5}  "
                        f"{gauge(host_count):<22}  {' '.join(events)}"
                    )
                    await trio.sleep(0.5)

            print()
            print(f"still connected: {', '.join(names[p] for p in sorted(seen, key=order))}")
            info = cm.get_info()
            print(
                f"manager: {info.conn_count} connections, {info.trims} trims, "
                f"{info.closed_conns} connections closed"
            )
            for peer_id, role in roles.items():
                state = "survived" if peer_id in seen else "WAS CLOSED"
                print(f"  {names[peer_id]} ({role}): {state}")
            assert all(peer_id in seen for peer_id in roles), "a special peer was closed"
            assert len(seen) <= HIGH_WATER
            await adapter.detach()

        # Close every swarm explicitly: leaving host.run() alone cancels the connections'
        # closes half-way and leaks their sockets.
        async with trio.open_nursery() as nursery:
            for host in [hub, *peers]:
                nursery.start_soon(host.get_network().close)


if __name__ == "__main__":
    trio.run(main)
