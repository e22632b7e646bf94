"""A simulated p2p host whose connections a ConnManager keeps between two water marks.

Run it with `python examples/quickstart.py` (asyncio) or `python examples/quickstart.py --trio`.

The host accepts waves of inbound connections and dials a few peers itself. Other parts of
the "host" tag the peers they care about (a DHT routing table, a relay it depends on), and the
manager closes the least valuable peers whenever the count goes above high water. Every close
is printed with the reason the peer was chosen: its value, its streams, its direction.
"""

from __future__ import annotations

import argparse
import random

import anyio

from asyncconnmgr import ConnManager, Direction


class SimConn:
    """What the manager needs of a connection: these five members (see asyncconnmgr.abc.Conn)."""

    def __init__(self, host: SimHost, peer: str, direction: Direction, streams: int) -> None:
        self.host = host
        self.remote_peer = peer
        self.direction = direction
        self.num_streams = streams
        self.remote_addr = f"/ip4/127.0.0.1/tcp/{random.randint(4000, 60000)}"

    async def close(self) -> None:
        await anyio.sleep(0.01)  # a real transport takes a moment to close
        self.host.on_closed(self)


class SimHost:
    """Opens connections and reports them to the manager's notifiee, like a libp2p swarm."""

    def __init__(self, manager: ConnManager) -> None:
        self.manager = manager
        self.notifiee = manager.notifee()
        self.conns: set[SimConn] = set()

    def open(self, peer: str, direction: Direction, streams: int = 0) -> None:
        conn = SimConn(self, peer, direction, streams)
        self.conns.add(conn)
        self.notifiee.connected(conn)

    def on_closed(self, conn: SimConn) -> None:
        info = self.manager.get_tag_info(conn.remote_peer)
        value = info.value if info else 0
        tags = dict(info.tags) if info else {}
        why = f"value {value:>3} {tags or ''}".rstrip()
        print(
            f"    closed {conn.remote_peer:<9} {why:<28} "
            f"{conn.direction.name.lower():<8} {conn.num_streams} stream(s)"
        )
        self.conns.discard(conn)
        self.notifiee.disconnected(conn)


async def main() -> None:
    random.seed(7)
    async with ConnManager(
        low_water=10, high_water=15, grace_period=0.2, silence_period=0.3
    ) as manager:
        host = SimHost(manager)
        manager.protect("relay", "circuit-relay")  # never closed
        for peer in ("dht-1", "dht-2", "dht-3"):
            manager.tag_peer(peer, "dht", 20)  # worth keeping
        manager.tag_peer("spammer", "misbehaved", -50)  # the first to go

        info = manager.get_info()
        print(
            f"water marks: low {info.low_water}, high {info.high_water}; "
            f"grace {info.grace_period} s\n"
        )
        host.open("relay", Direction.OUTBOUND, streams=2)
        for peer in ("dht-1", "dht-2", "dht-3"):
            host.open(peer, Direction.OUTBOUND, streams=1)
        host.open("spammer", Direction.INBOUND)

        for wave in range(3):
            for i in range(6):
                host.open(f"w{wave}-{i}", Direction.INBOUND, streams=random.randint(0, 2))
            await manager.flush()
            print(f"wave {wave}: {manager.get_info().conn_count} connections open")
            # New peers are in their grace period: the manager waits for it to end,
            # then trims back to low water.
            await anyio.sleep(0.5)
            info = manager.get_info()
            print(f"  after the trimmer: {info.conn_count} open, {info.closed_conns} closed so far")

        survivors = sorted(conn.remote_peer for conn in host.conns)
        print(f"\nstill connected: {', '.join(survivors)}")
        assert "relay" in survivors, "a protected peer is never closed"
        assert {"dht-1", "dht-2", "dht-3"} <= set(survivors), "valuable peers are kept"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trio", action="store_true", help="run on trio instead of asyncio")
    args = parser.parse_args()
    anyio.run(main, backend="trio" if args.trio else "asyncio")
