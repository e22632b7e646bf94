"""Soak: a py-libp2p hub managed by asyncconnmgr, with real peers churning on 127.0.0.1.

Run it as ``python benchmarks/soak.py`` (about 2 x 3.5 minutes), ``--quick`` (2 x 40 s), or
``--minutes M``. Each run is one fresh hub process; by default the same run is made twice,
once with the manager attached (`asyncconnmgr.libp2p.attach`) and once with py-libp2p's own
pruner and the same water marks (``--no-manager`` or ``--manager-only`` runs one of them).
``--ended N`` ends each run once N connections have ended after the warm-up instead (the
figure for memory per ended connection); ``--no-bounded-count`` runs the manager with
``bounded_count=False`` (grace protects every newcomer, as in go-libp2p). Not part of CI;
it needs py-libp2p.

The hub listens on 127.0.0.1 and never dials. ``--peers`` peers (100 by default) run in
``--procs`` worker processes (4), each peer a py-libp2p host of its own, and dial the hub:

- protected (5%): the hub protects them (through py-libp2p's ``swarm.protect``, which the
  adapter routes to the manager); they stay, and redial 1-3 s after being dropped;
- tagged (15%): the hub tags them 10..100 (``host.conn_manager.tag_peer``); they stay;
- gossiping (20%): keep one stream to the hub open and send a message every second; the
  hub bumps a decaying tag per message (with the manager) or adds to a tag (without); they
  stay;
- churning (60%): stay online 5-25 s, leave (or are dropped), stay offline 5-25 s, dial
  again.

Water marks: low 45, high 60, grace 5 s, silence 1 s (py-libp2p: the same watermarks and
grace period). The 40 peers that want to stay fit under low water; the churning peers
online (about 30) are the surplus a good manager trims. ``max_connections`` is 100,000 in
both runs: py-libp2p 0.8.1 never frees an inbound slot while the host runs (see
`asyncconnmgr.libp2p.InboundSlotsWarning`).

Printed for each run, over the time after the warm-up (the first ~15% of the run):

- the fraction of samples (every 100 ms) where the hub's live connection count was within
  [low, high], and its mean and largest value;
- closes by kind of peer: connections the hub ended while the peer wanted to stay, as the
  peers saw them (and the manager's trim victims, by kind); those of the warm-up, when every
  peer arrives within 5 s, apart;
- the largest and the longest disagreement between the manager's count and the swarm's
  count of live connections, and what the adapter's reconciles fixed;
- the hub's RSS growth per connection that ended after the warm-up (with the SwarmConn
  objects still alive at the end), against the run without the manager.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from multiaddr import Multiaddr

from asyncconnmgr import ConnManager, TrimResult, bump_sum_bounded, decay_linear
from asyncconnmgr.libp2p import InboundSlotsWarning, Libp2pAdapter, attach

LOW, HIGH, GRACE, SILENCE = 45, 60, 5.0, 1.0
MAX_CONNECTIONS = 100_000
GOSSIP = TProtocol("/asyncconnmgr-soak/gossip/1.0.0")
LOCALHOST = Multiaddr("/ip4/127.0.0.1/tcp/0")
SAMPLE_EVERY = 0.1
KINDS = ("protected", "tagged", "gossiping", "churning")
SHARES = {"protected": 0.05, "tagged": 0.15, "gossiping": 0.20}
HUB_SEED = b"asyncconnmgr-soak-hub".ljust(32, b".")


def peer_seed(index: int) -> bytes:
    return f"asyncconnmgr-soak-peer-{index}".encode().ljust(32, b".")


def plan(n_peers: int) -> list[tuple[int, str]]:
    """(index, kind) for every peer: the shares of each kind, the rest churning."""
    counts = {kind: max(1, round(n_peers * share)) for kind, share in SHARES.items()}
    kinds = [kind for kind, count in counts.items() for _ in range(count)]
    kinds += ["churning"] * (n_peers - len(kinds))
    return list(enumerate(kinds))


def peer_id_of(index: int) -> ID:
    return ID.from_pubkey(create_new_key_pair(peer_seed(index)).public_key)


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def swarm_of(host: IHost) -> Swarm:
    network = host.get_network()
    assert isinstance(network, Swarm)
    return network


class _Watch(INotifee):  # type: ignore[misc,unused-ignore]
    """Calls back on connection events; the streams and listeners are of no interest."""

    def __init__(
        self, on_connected: Callable[[INetConn], None], on_disconnected: Callable[[INetConn], None]
    ) -> None:
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._on_connected(conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._on_disconnected(conn)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass


# --- the peers (worker processes) ----------------------------------------------------------


class Peer:
    def __init__(
        self,
        index: int,
        kind: str,
        hub: PeerInfo,
        stats: dict[str, Counter[str]],
        warm_end: float,
    ) -> None:
        self.kind = kind
        self.warm_end = warm_end
        self.host = new_host(key_pair=create_new_key_pair(peer_seed(index)))
        self.hub = hub
        self.rng = random.Random(index)
        self.stats = stats[kind]
        self.leaving = False
        self.gone = trio.Event()
        swarm_of(self.host).register_notifee(_Watch(lambda c: None, self._disconnected))

    def count(self, what: str) -> None:
        """Counts `what` for this peer's kind, apart during the hub's warm-up."""
        self.stats[what if time.time() >= self.warm_end else f"{what} (warm-up)"] += 1

    def _disconnected(self, conn: INetConn) -> None:
        if conn.muxed_conn.peer_id != self.hub.peer_id:
            return
        if swarm_of(self.host).get_connections(self.hub.peer_id):
            return  # another connection to the hub is still open
        if not self.leaving:
            self.count("dropped by the hub")
        self.gone.set()

    async def live(self, stop: trio.Event) -> None:
        swarm = swarm_of(self.host)
        await swarm.connection_pruner.stop()
        await swarm.auto_connector.stop()
        await trio.sleep(self.rng.uniform(0, 5))  # the peers do not all dial at once
        while not stop.is_set():
            self.leaving = False
            self.gone = trio.Event()
            swarm.unblock_peer(self.hub.peer_id)
            try:
                with trio.fail_after(20):
                    await self.host.connect(self.hub)
            except Exception:
                self.count("dial failures")
                await self._pause(self.rng.uniform(1, 3), stop)
                continue
            self.count("connects")
            async with trio.open_nursery() as nursery:
                if self.kind == "gossiping":
                    nursery.start_soon(self._gossip)
                online = self.rng.uniform(5, 25) if self.kind == "churning" else None
                with trio.move_on_after(online if online is not None else float("inf")):
                    await _first(self.gone.wait, stop.wait)
                nursery.cancel_scope.cancel()
            if not self.gone.is_set():  # time to go (churning), or the soak ends
                self.leaving = True
                if not stop.is_set():
                    self.count("left")
                for conn in swarm.get_connections(self.hub.peer_id):
                    with trio.move_on_after(5):
                        await conn.close()
            # A churning peer goes offline for a while, whoever ended the connection.
            churning = self.kind == "churning"
            offline = self.rng.uniform(5, 25) if churning else self.rng.uniform(1, 3)
            await self._pause(offline, stop)

    async def _gossip(self) -> None:
        try:
            stream = await self.host.new_stream(self.hub.peer_id, [GOSSIP])
            while True:
                await stream.write(b"g" * 100)
                self.count("messages")
                await trio.sleep(1.0)
        except Exception:  # the connection went away
            return

    @staticmethod
    async def _pause(seconds: float, stop: trio.Event) -> None:
        with trio.move_on_after(seconds):
            await stop.wait()


async def _first(*waits: Callable[[], Awaitable[object]]) -> None:
    async with trio.open_nursery() as nursery:
        for wait in waits:

            async def run(wait: Callable[[], Awaitable[object]] = wait) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)


async def worker_main(hub_addr: str, peers: list[tuple[int, str]], warm_end: float) -> None:
    """Runs `peers` until stdin closes; prints their counters as one JSON line. `warm_end`
    (``time.time()``) is when the hub's warm-up ends."""
    hub = info_from_p2p_addr(Multiaddr(hub_addr))
    stats: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
    stop = trio.Event()
    members = [Peer(index, kind, hub, stats, warm_end) for index, kind in peers]
    async with AsyncExitStack() as stack:
        for peer in members:
            await stack.enter_async_context(peer.host.run(listen_addrs=[]))
        async with trio.open_nursery() as nursery:

            async def until_stdin_closes() -> None:
                stdin = trio.lowlevel.FdStream(os.dup(0))
                while await stdin.receive_some():
                    pass
                stop.set()

            nursery.start_soon(until_stdin_closes)
            async with trio.open_nursery() as lives:
                for peer in members:
                    lives.start_soon(peer.live, stop)
            nursery.cancel_scope.cancel()
        with trio.move_on_after(10):
            async with trio.open_nursery() as closing:
                for peer in members:
                    closing.start_soon(peer.host.get_network().close)
    print(json.dumps({kind: dict(counter) for kind, counter in stats.items()}), flush=True)


# --- the hub (one process per run) ---------------------------------------------------------


class Hub:
    def __init__(self, args: argparse.Namespace, managed: bool) -> None:
        self.args = args
        self.managed = managed
        config = ConnectionConfig(
            max_connections=MAX_CONNECTIONS,
            min_connections=0,
            low_watermark=LOW,
            high_watermark=HIGH,
            grace_period=GRACE,
        )
        self.host = new_host(key_pair=create_new_key_pair(HUB_SEED), connection_config=config)
        self.swarm = swarm_of(self.host)
        self.peers = plan(args.peers)
        self.kind_of: dict[object, str] = {peer_id_of(i): kind for i, kind in self.peers}
        self.ended = 0
        self.victims: Counter[str] = Counter()
        self.warmup_victims: Counter[str] = Counter()
        duration = args.minutes * 60.0
        self.warmup = max(10.0, 0.15 * duration) if args.ended is None else 20.0
        self.warm_end = float("inf")  # time.monotonic() when the warm-up ends
        self.cm: ConnManager | None = None
        self.adapter: Libp2pAdapter | None = None
        self.gossip_bump: Callable[[ID], None] = self._tag_gossip
        self.swarm.register_notifee(_Watch(lambda c: None, self._ended))

    def _ended(self, conn: INetConn) -> None:
        self.ended += 1

    def _tag_gossip(self, peer: ID) -> None:
        self.host.conn_manager.upsert_tag(peer, "gossip", lambda v: min(v + 5, 100))

    async def _gossip_handler(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        try:
            while await stream.read(1024):
                self.gossip_bump(peer)
        except Exception:
            return

    async def _keep_values(self) -> None:
        """Protections and tags, applied again every second (py-libp2p forgets them when
        the peer disconnects; the manager keeps protections and early tags)."""
        network = self.host.get_network()
        ids = [(peer_id_of(index), kind, index) for index, kind in self.peers]
        while True:
            for peer, kind, index in ids:
                if kind == "protected":
                    network.protect(peer, "relay")
                elif kind == "tagged":
                    self.host.conn_manager.tag_peer(peer, "app", 10 + (index * 7) % 91)
            await trio.sleep(1.0)

    async def run(self) -> dict[str, Any]:
        async with self.host.run(listen_addrs=[LOCALHOST]):
            self.host.set_stream_handler(GOSSIP, self._gossip_handler)
            if not self.managed:
                return await self._soak()
            async with ConnManager(
                low_water=LOW,
                high_water=HIGH,
                grace_period=GRACE,
                silence_period=SILENCE,
                decay_resolution=5.0,
                bounded_count=not self.args.no_bounded_count,
            ) as cm:
                self.cm = cm
                gossip = cm.register_decaying_tag(
                    "gossip", 10.0, decay_linear(0.5), bump_sum_bounded(0, 100)
                )
                self.gossip_bump = lambda peer: gossip.bump(peer, 5)
                cm.add_trim_listener(self._count_victims)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", InboundSlotsWarning)  # max_connections is up
                    async with attach(self.host, cm, reconcile_interval=30.0) as adapter:
                        self.adapter = adapter
                        return await self._soak()
        raise AssertionError("unreachable")

    def _count_victims(self, result: TrimResult) -> None:
        victims = self.victims if time.monotonic() >= self.warm_end else self.warmup_victims
        for victim in result.victims:
            if victim.outcome in ("closed", "aborted"):
                victims[self.kind_of.get(victim.peer, "unknown")] += 1

    def _live(self) -> int:
        return sum(1 for conn in self.swarm.get_connections() if not conn.is_closed)

    async def _soak(self) -> dict[str, Any]:
        args = self.args
        addr = f"{self.host.get_addrs()[0]}"
        groups = [self.peers[at :: args.procs] for at in range(args.procs)]
        self.warm_end = time.monotonic() + self.warmup
        warm_end_wall = f"{time.time() + self.warmup:.3f}"
        workers = []
        for group in groups:
            spec = ",".join(f"{index}:{kind}" for index, kind in group)
            command = [sys.executable, __file__, "--worker", addr, spec, warm_end_wall]
            workers.append(
                await trio.lowlevel.open_process(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
                )
            )
        outputs: list[bytes] = [b""] * len(workers)
        result: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_values)
            for at, worker in enumerate(workers):
                nursery.start_soon(self._read_output, worker, outputs, at)
            result = await self._sample()
            for worker in workers:
                assert worker.stdin is not None
                await worker.stdin.aclose()
            with trio.move_on_after(60):
                for worker in workers:
                    await worker.wait()
            nursery.cancel_scope.cancel()
        closes: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
        for output in outputs:
            lines = output.decode().strip().splitlines()
            if lines:
                for kind, counts in json.loads(lines[-1]).items():
                    closes[kind].update(counts)
        result["peers"] = {kind: dict(counter) for kind, counter in closes.items()}
        result["kinds"] = dict(Counter(kind for _, kind in self.peers))
        return result

    @staticmethod
    async def _read_output(worker: trio.Process, outputs: list[bytes], at: int) -> None:
        assert worker.stdout is not None
        while chunk := await worker.stdout.receive_some():
            outputs[at] += chunk

    async def _sample(self) -> dict[str, Any]:
        args = self.args
        duration = args.minutes * 60.0
        warmup = self.warm_end - time.monotonic()
        start = time.monotonic()
        rss_start = ended_start = None
        samples = within = total = largest = 0
        worst_gap = 0
        longest_gap = 0.0
        gap_since: float | None = None
        while True:
            await trio.sleep(SAMPLE_EVERY)
            now = time.monotonic() - start
            if rss_start is None:
                if now < warmup:
                    continue
                gc.collect()
                rss_start, ended_start = rss_bytes(), self.ended
            assert ended_start is not None
            live = self._live()
            samples += 1
            within += LOW <= live <= HIGH
            total += live
            largest = max(largest, live)
            if self.cm is not None:
                gap = abs(self.cm.get_info().conn_count - live)
                worst_gap = max(worst_gap, gap)
                if gap and gap_since is None:
                    gap_since = now
                elif not gap and gap_since is not None:
                    longest_gap = max(longest_gap, now - gap_since)
                    gap_since = None
            ended_now = self.ended - ended_start
            if args.ended is not None:
                if ended_now >= args.ended or now > 3600:
                    break
            elif now >= warmup + duration:
                break
        if gap_since is not None:
            longest_gap = max(longest_gap, time.monotonic() - start - gap_since)
        gc.collect()
        rss_end = rss_bytes()
        ended = self.ended - ended_start
        alive = sum(1 for obj in gc.get_objects() if isinstance(obj, SwarmConn))
        result: dict[str, Any] = {
            "managed": self.managed,
            "seconds": round(time.monotonic() - start - warmup, 1),
            "within_marks": within / samples if samples else 0.0,
            "mean_live": total / samples if samples else 0.0,
            "largest_live": largest,
            "ended": ended,
            "rss_growth": rss_end - rss_start,
            "rss_per_ended": (rss_end - rss_start) / ended if ended else 0.0,
            "swarmconns_alive": alive,
            "live_at_end": self._live(),
            # Listed by the swarm although closed: py-libp2p lost their clean-up.
            "closed_but_listed": sum(1 for c in self.swarm.get_connections() if c.is_closed),
            "victims": dict(self.victims),
            "warmup_victims": dict(self.warmup_victims),
        }
        if self.cm is not None and self.adapter is not None:
            await self.cm.flush()
            info = self.adapter.get_info()
            result.update(
                worst_gap=worst_gap,
                longest_gap=round(longest_gap, 2),
                reconcile_fixes=info.reported_open + info.reported_closed,
                reconciles=info.reconciles,
                final_reconcile=self.adapter.reconcile(),
                trims=self.cm.get_info().trims,
                ignored=self.cm.get_info().ignored_notifications,
            )
        return result


def quiet_libp2p() -> None:
    """asyncconnmgr's warnings to stderr; py-libp2p's own logging (noisy under churn) off."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)


def hub_main(args: argparse.Namespace, managed: bool) -> None:
    quiet_libp2p()
    result = trio.run(Hub(args, managed).run)
    print(json.dumps(result), flush=True)


# --- the report ----------------------------------------------------------------------------


def run_hub(args: argparse.Namespace, managed: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--hub", "manager" if managed else "none"]
    command += ["--peers", str(args.peers), "--procs", str(args.procs)]
    command += ["--minutes", str(args.minutes)]
    if args.no_bounded_count:
        command.append("--no-bounded-count")
    if args.ended is not None:
        command += ["--ended", str(args.ended)]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def report(results: dict[str, dict[str, Any]]) -> None:
    for name, result in results.items():
        print(f"\n== {name}: {result['seconds']:.0f} s after the warm-up")
        print(
            f"live connections within [{LOW}, {HIGH}]: {result['within_marks']:.1%} of the time "
            f"(mean {result['mean_live']:.1f}, largest {result['largest_live']})"
        )
        print("closes by kind of peer (the hub ended it while the peer wanted to stay):")
        for kind in KINDS:
            counts = result["peers"].get(kind, {})
            print(
                f"  {kind:<10} {result['kinds'].get(kind, 0):>3} peers: "
                f"{counts.get('dropped by the hub', 0):>5} dropped, "
                f"{counts.get('connects', 0):>5} connects, {counts.get('left', 0):>4} left, "
                f"{counts.get('dial failures', 0):>3} dial failures"
                + (f"; trim victims {result['victims'].get(kind, 0)}" if result["managed"] else "")
                + f"; during the warm-up {counts.get('dropped by the hub (warm-up)', 0)} dropped"
            )
        if result["managed"]:
            print(
                f"manager vs swarm live count: largest gap {result['worst_gap']}, longest "
                f"{result['longest_gap']:.2f} s; reconciles fixed {result['reconcile_fixes']} "
                f"in {result['reconciles']} runs, a final one {result['final_reconcile']}; "
                f"{result['trims']} trims, {result['ignored']} ignored notifications"
            )
        print(
            f"hub RSS: {result['rss_growth'] / 1e6:+.1f} MB over {result['ended']} ended "
            f"connections = {result['rss_per_ended'] / 1e3:+.1f} KB each; "
            f"{result['swarmconns_alive']} SwarmConn objects alive with "
            f"{result['live_at_end']} live ({result['closed_but_listed']} closed ones still "
            "in the swarm's table)"
        )
    if len(results) == 2:
        with_manager, without = results["with the manager"], results["py-libp2p alone"]
        print(
            f"\nRSS per ended connection: {with_manager['rss_per_ended'] / 1e3:+.1f} KB with "
            f"the manager, {without['rss_per_ended'] / 1e3:+.1f} KB without"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="length of each run")
    parser.add_argument("--quick", action="store_true", help="30 s runs")
    parser.add_argument("--ended", type=int, help="end each run after N ended connections")
    parser.add_argument("--peers", type=int, default=100)
    parser.add_argument("--procs", type=int, default=4, help="worker processes for the peers")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--no-manager", action="store_true", help="only py-libp2p's pruner")
    which.add_argument("--manager-only", action="store_true", help="only with the manager")
    parser.add_argument(
        "--no-bounded-count", action="store_true", help="the manager with bounded_count=False"
    )
    parser.add_argument("--hub", choices=["manager", "none"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--worker", nargs=3, metavar=("HUB", "PEERS", "WARM_END"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.quick:
        args.minutes = 0.5
    if args.worker is not None:
        hub_addr, spec, warm_end = args.worker
        peers = [(int(i), kind) for i, kind in (item.split(":") for item in spec.split(","))]
        quiet_libp2p()
        trio.run(worker_main, hub_addr, peers, float(warm_end))
        return
    if args.hub is not None:
        hub_main(args, managed=args.hub == "manager")
        return
    if args.peers < 4 or args.procs < 1:
        parser.error("--peers must be >= 4 and --procs >= 1")
    results: dict[str, dict[str, Any]] = {}
    if not args.no_manager:
        results["with the manager"] = run_hub(args, managed=True)
    if not args.manager_only:
        results["py-libp2p alone"] = run_hub(args, managed=False)
    report(results)


if __name__ == "__main__":
    main()
