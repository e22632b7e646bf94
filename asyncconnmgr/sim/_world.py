"""The simulated host: peers that connect, talk, leave and come back, on a fake clock.

Theory of operation
-------------------
The world is a discrete-event simulation in one task. Its events (a peer dials, leaves,
sends a message, opens or ends a request stream) sit in a heap ordered by time, then by
peer, then by the peer's own sequence number, so the order never depends on the order in
which the events were scheduled. One step moves the `FakeClock` to the next event or the
next timer of the manager (whichever comes first), applies the events due, and lets every
task run until all of them wait (`settle`); then the recorder takes the state, which holds
until the next step.

Every random draw of a peer comes from that peer's own generator (seeded from the run's
seed and the peer's name), so the figures do not depend on the order in which the event
loop (asyncio or trio) happens to run the manager's tasks.

A connection closed by the host (a trim) takes `close_delay` seconds of simulated time and
counts until it is closed; a peer leaving closes its connection at once. Each peer has at
most one connection.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from .. import ConnManager, DecayingTag, bump_sum_bounded, decay_fixed, decay_none
from ..abc import Direction
from ..testing import FakeClock, settle
from ._libp2p import Libp2pPruner
from ._scenarios import Scenario

__all__ = ["ATTACKER_PREFIX", "Recorder", "SimConn", "SimPeer", "World", "drive_clock"]

_OPEN, _CLOSING, _CLOSED = 0, 1, 2
_MAX_DRAIN_STEPS = 100_000


#: How every attacker's peer id begins (honest ones begin with "h", protected ones with "p").
ATTACKER_PREFIX = "a"


class SimPeer:
    """One simulated peer (honest, protected or attacker) and its current connection.

    `epoch` changes whenever the peer connects or its connection ends, so an event
    scheduled for an earlier epoch (the end of a session that a trim already ended, say)
    is dropped. `online` is true while the peer wants to be connected.
    """

    __slots__ = (
        "addr",
        "conn",
        "epoch",
        "group",
        "high_value",
        "honest",
        "index",
        "kind",
        "online",
        "outbound",
        "peer_id",
        "protected",
        "rng",
        "seq",
    )

    def __init__(
        self,
        *,
        index: int,
        peer_id: str,
        honest: bool,
        kind: str,
        protected: bool,
        group: str,
        addr: str,
        outbound: bool,
        rng: random.Random,
    ) -> None:
        self.index = index
        self.peer_id = peer_id
        self.honest = honest
        self.kind = kind
        self.protected = protected
        self.high_value = honest and not protected and kind == "mesh"
        self.group = group
        self.addr = addr
        self.outbound = outbound
        self.rng = rng
        self.conn: SimConn | None = None
        self.online = False
        self.epoch = 0
        self.seq = 0

    def __repr__(self) -> str:
        return f"<SimPeer {self.peer_id} {self.kind} {self.addr}>"


class SimConn:
    """A simulated connection; satisfies `asyncconnmgr.abc.Conn`.

    `close()` takes the scenario's `close_delay` of simulated time, then reports
    `disconnected`. A cancelled close leaves the connection open, as a real one would be.
    """

    # `__weakref__`: the manager remembers ended connections weakly, as it would a real one.
    __slots__ = (
        "__weakref__",
        "_world",
        "direction",
        "num_streams",
        "opened",
        "peer",
        "remote_addr",
        "remote_peer",
        "state",
    )

    def __init__(self, world: World, peer: SimPeer, opened: float) -> None:
        self._world = world
        self.peer = peer
        self.remote_peer: str = peer.peer_id
        self.remote_addr: str | None = peer.addr
        self.direction = Direction.OUTBOUND if peer.outbound else Direction.INBOUND
        self.num_streams = 0
        self.opened = opened
        self.state = _OPEN

    async def close(self) -> None:
        world = self._world
        if self.state != _OPEN:
            await anyio.lowlevel.checkpoint()
            return
        world.close_started(self)
        low, high = world.scenario.close_delay
        delay = self.peer.rng.uniform(low, high)
        clock = world.clock
        try:
            await clock.sleep_until(clock.now() + delay)
        except BaseException:
            if self.state == _CLOSING:
                world.close_abandoned(self)
            raise
        if self.state == _CLOSING:
            world.close_finished(self)

    def __repr__(self) -> str:
        return f"<SimConn {self.remote_peer} {self.remote_addr}>"


TrimRecord = tuple[float, float, int, str]


class Recorder:
    """Integrates the world's state over time, from `warmup` to the end of the run.

    `observe(t, ...)` takes the state at time `t`; it holds until the next observation. A
    state counts only for the part of its interval inside the measured window.
    """

    def __init__(self, scenario: Scenario, ceiling: int) -> None:
        self.warmup = scenario.warmup
        self.end = scenario.duration
        self.low = scenario.low_water
        self.high = scenario.high_water
        self.ceiling = ceiling
        self.measured = 0.0
        self.in_band = 0.0
        self.above_high = 0.0
        self.count_time = 0.0
        self.max_count = 0
        self.hv_online_time = 0.0
        self.hv_open_time = 0.0
        self.attacker_worst = 0.0
        self.attacker_time = 0.0  # the attackers' share of the slots, times how long
        self.groups_min: int | None = None
        self.honest_min: int | None = None
        self.eclipsed = False
        self.longest_above_ceiling = 0.0
        self.longest_above_high = 0.0
        self.longest_unchosen_above_ceiling = 0.0
        self._unchosen_run = 0.0
        self._ceiling_run = 0.0
        self._high_run = 0.0
        self.series: list[tuple[float, int, int, int, int]] = []
        self._next_sample = 0.0
        self._last_t: float | None = None
        self._state: tuple[int, int, int, int, int, int, int, int] = (0,) * 8

    def observe(
        self,
        t: float,
        state: tuple[int, int, int, int, int, int, int, int],
    ) -> None:
        """`state` is (count, slots, honest, attackers, honest groups, hv online, hv open,
        unchosen).

        An unchanged state extends the interval of the one before, so the sums depend only
        on when the state changed (not on how many steps the event loop happened to need).
        """
        last = self._last_t
        if last is not None:
            if state == self._state:
                return
            if t > last:
                self._hold(last, t)
        self._last_t = t
        self._state = state

    def finish(self, t: float) -> None:
        """Ends the run at `t`: the latest state holds until then."""
        if self._last_t is not None and t > self._last_t:
            self._hold(self._last_t, t)
            self._last_t = t

    @property
    def state(self) -> tuple[int, int, int, int, int, int, int, int]:
        """The latest state observed (the end state, once the run is over)."""
        return self._state

    def _hold(self, t0: float, t1: float) -> None:
        count, slots, honest, attackers, groups, hv_online, hv_open, unchosen = self._state
        while self._next_sample < t1:
            if self._next_sample >= t0:
                self.series.append((self._next_sample, count, honest, attackers, groups))
            self._next_sample += 1.0
        start = max(t0, self.warmup)
        stop = min(t1, self.end)
        dt = stop - start
        if dt <= 0:
            return
        self.measured += dt
        if self.low <= count <= self.high:
            self.in_band += dt
        self.count_time += count * dt
        self.max_count = max(self.max_count, count)
        if count > self.high:
            self.above_high += dt
            self._high_run += dt
            self.longest_above_high = max(self.longest_above_high, self._high_run)
        else:
            self._high_run = 0.0
        if count > self.ceiling:
            self._ceiling_run += dt
            self.longest_above_ceiling = max(self.longest_above_ceiling, self._ceiling_run)
        else:
            self._ceiling_run = 0.0
        if unchosen > self.ceiling:
            self._unchosen_run += dt
            self.longest_unchosen_above_ceiling = max(
                self.longest_unchosen_above_ceiling, self._unchosen_run
            )
        else:
            self._unchosen_run = 0.0
        self.hv_online_time += hv_online * dt
        self.hv_open_time += hv_open * dt
        share = attackers / slots if slots else 0.0
        self.attacker_worst = max(self.attacker_worst, share)
        self.attacker_time += share * dt
        self.groups_min = groups if self.groups_min is None else min(self.groups_min, groups)
        self.honest_min = honest if self.honest_min is None else min(self.honest_min, honest)
        if honest == 0:
            self.eclipsed = True


class World:
    """The simulated host, its peers and their events; drives one manager (see module)."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        clock: FakeClock,
        manager: ConnManager,
        task_group: TaskGroup,
        *,
        libp2p: bool,
        ceiling: int,
    ) -> None:
        self.scenario = scenario
        self.seed = seed
        self.clock = clock
        self.manager = manager
        self.notifiee = manager.notifee()
        self.recorder = Recorder(scenario, ceiling)
        self.trims: list[TrimRecord] = []
        self._heap: list[tuple[float, int, int, Callable[..., None], SimPeer, int, Any]] = []
        self._dirty = False
        self.peers: list[SimPeer] = []
        self.open_conns: dict[SimConn, None] = {}
        self.attacker_conns = 0
        # The counts the figures are made of; "slots" are open unprotected connections.
        self.count = 0
        self.slots = 0
        self.protected_open = 0
        self.honest_open = 0
        self.attackers_open = 0
        self.hv_online = 0
        self.hv_open = 0
        self.groups: dict[str, int] = {}
        self.gossip: DecayingTag = manager.register_decaying_tag(
            "gossip",
            scenario.gossip_decay_interval,
            decay_fixed(scenario.gossip_decay) if scenario.gossip_decay else decay_none(),
            bump_sum_bounded(0, scenario.gossip_cap),
        )
        self.pruner: Libp2pPruner | None = None
        if libp2p:
            self.pruner = Libp2pPruner(
                connections=lambda: list(self.open_conns),
                tags=manager,
                clock=clock,
                task_group=task_group,
                low_water=scenario.low_water,
                high_water=scenario.high_water,
                grace_period=scenario.grace_period,
                record=self._record_trim,
            )
        else:
            manager.add_trim_listener(
                lambda r: self._record_trim(
                    r.started_at or 0.0, r.duration or 0.0, r.closed, r.trigger
                )
            )
        self._populate()

    # -- population -------------------------------------------------------------------

    def _rng(self, name: str) -> random.Random:
        return random.Random(f"asyncconnmgr.sim:{self.seed}:{name}")

    def _populate(self) -> None:
        sc = self.scenario
        layout = self._rng("layout")
        honest_groups = _honest_groups(layout, sc.honest_groups, sc.ipv6_share)
        protected = sc.protected_peers
        unprotected = sc.honest_peers - protected
        # Kinds by share, groups evenly over the peers, both in a seeded shuffle.
        mesh = round(unprotected * sc.mesh_share)
        dht = round(unprotected * sc.dht_share)
        kinds = ["mesh"] * mesh + ["dht"] * dht + ["idle"] * (unprotected - mesh - dht)
        layout.shuffle(kinds)
        outbound = round(unprotected * sc.outbound_share)
        directions = [True] * outbound + [False] * (unprotected - outbound)
        layout.shuffle(directions)
        for i in range(sc.honest_peers):
            rng = self._rng(f"h{i}")
            if i < protected:
                group, version = honest_groups[i % len(honest_groups)]
                peer = self._new_peer(f"p{i}", True, "protected", True, group, version, True, rng)
                self.manager.protect(peer.peer_id, "bootstrap")
                start = rng.uniform(0.0, 1.0)
            else:
                j = i - protected
                group, version = honest_groups[j % len(honest_groups)]
                peer = self._new_peer(
                    f"h{j}", True, kinds[j], False, group, version, directions[j], rng
                )
                start = rng.uniform(*sc.honest_start)
            self._at(start, peer, self._dial)
        if sc.attackers:
            self._populate_attackers(layout)

    def _populate_attackers(self, layout: random.Random) -> None:
        sc = self.scenario
        groups = _attacker_groups(layout, sc.attacker_groups)
        mesh, dht = sc.honest_kinds
        index = 0
        for wave in range(sc.attacker_waves):
            start = sc.attacker_start + wave * sc.attacker_wave_every
            for k in range(sc.attackers):
                rng = self._rng(f"a{index}")
                kind = "idle"
                if sc.attacker_kind == "mimic":
                    draw = rng.random()
                    kind = "mesh" if draw < mesh else "dht" if draw < mesh + dht else "idle"
                group = groups[index % len(groups)]
                peer = self._new_peer(
                    f"{ATTACKER_PREFIX}{index}", False, kind, False, group, 4, False, rng
                )
                at = start + (sc.attacker_spread * k / sc.attackers if sc.attackers > 1 else 0.0)
                self._at(at, peer, self._dial)
                index += 1

    def _new_peer(
        self,
        peer_id: str,
        honest: bool,
        kind: str,
        protected: bool,
        group: str,
        version: int,
        outbound: bool,
        rng: random.Random,
    ) -> SimPeer:
        if version == 6:
            addr = (
                f"/ip6/{group}:{rng.randrange(1, 0xFFFF):x}::{rng.randrange(1, 0xFFFF):x}/tcp/4001"
            )
        else:
            host = f"{group}.{rng.randrange(0, 256)}.{rng.randrange(1, 255)}"
            port = 4001 if honest else rng.randrange(1024, 65536)
            addr = f"{host}:{port}" if honest and rng.random() < 0.25 else f"/ip4/{host}/tcp/{port}"
        peer = SimPeer(
            index=len(self.peers),
            peer_id=peer_id,
            honest=honest,
            kind=kind,
            protected=protected,
            group=group,
            addr=addr,
            outbound=outbound,
            rng=rng,
        )
        self.peers.append(peer)
        return peer

    # -- events -----------------------------------------------------------------------

    def _at(
        self, t: float, peer: SimPeer, action: Callable[..., None], payload: object = None
    ) -> None:
        peer.seq += 1
        heapq.heappush(self._heap, (t, peer.index, peer.seq, action, peer, peer.epoch, payload))

    def _dial(self, peer: SimPeer, epoch: int, payload: object) -> None:
        if epoch != peer.epoch or peer.conn is not None:
            return
        if not peer.online:
            peer.online = True
            if peer.high_value:
                self.hv_online += 1
        now = self.clock.now()
        conn = SimConn(self, peer, now)
        peer.conn = conn
        peer.epoch += 1
        self.open_conns[conn] = None
        self._count_open(conn, +1)
        if peer.protected:
            self.protected_open += 1
        else:
            self.count += 1
        if not peer.honest:
            self.attacker_conns += 1
        self.notifiee.connected(conn)
        self._dirty = True
        sc = self.scenario
        rng = peer.rng
        if peer.kind == "mesh":
            conn.num_streams = 1
            self._at(now + rng.expovariate(1 / sc.message_interval), peer, self._message, conn)
        elif peer.kind == "dht":
            self.manager.tag_peer(peer.peer_id, "kbucket", sc.kbucket_value)
            self._at(now + rng.expovariate(1 / sc.request_interval), peer, self._request, conn)
        if peer.honest and not peer.protected:
            self._at(now + rng.uniform(*sc.session), peer, self._leave)
        if self.pruner is not None:
            self.pruner.connection_added()

    def _leave(self, peer: SimPeer, epoch: int, payload: object) -> None:
        """The peer ends its session: it closes its connection and goes offline."""
        conn = peer.conn
        if epoch != peer.epoch or conn is None:
            return
        if conn.state == _OPEN:
            self._count_open(conn, -1)
        self._ended(conn)
        peer.online = False
        if peer.high_value:
            self.hv_online -= 1
        self._at(self.clock.now() + peer.rng.uniform(*self.scenario.offline), peer, self._dial)

    def _message(self, peer: SimPeer, epoch: int, conn: SimConn) -> None:
        if peer.conn is not conn or conn.state != _OPEN:
            return
        self.gossip.bump(peer.peer_id, 1)
        interval = self.scenario.message_interval
        self._at(self.clock.now() + peer.rng.expovariate(1 / interval), peer, self._message, conn)

    def _request(self, peer: SimPeer, epoch: int, conn: SimConn) -> None:
        if peer.conn is not conn or conn.state != _OPEN:
            return
        sc = self.scenario
        now = self.clock.now()
        conn.num_streams += 1
        self._at(now + peer.rng.uniform(*sc.request_length), peer, self._request_end, conn)
        self._at(now + peer.rng.expovariate(1 / sc.request_interval), peer, self._request, conn)

    def _request_end(self, peer: SimPeer, epoch: int, conn: SimConn) -> None:
        if conn.num_streams > 0:
            conn.num_streams -= 1

    # -- connection states ------------------------------------------------------------

    def _count_open(self, conn: SimConn, delta: int) -> None:
        """Counts a connection into (+1) or out of (-1) the open ("slot") figures."""
        peer = conn.peer
        if peer.protected:
            return
        self.slots += delta
        if peer.honest:
            self.honest_open += delta
            groups = self.groups
            left = groups.get(peer.group, 0) + delta
            if left:
                groups[peer.group] = left
            else:
                del groups[peer.group]
            if peer.high_value:
                self.hv_open += delta
        else:
            self.attackers_open += delta

    def _ended(self, conn: SimConn) -> None:
        conn.state = _CLOSED
        peer = conn.peer
        del self.open_conns[conn]
        if peer.protected:
            self.protected_open -= 1
        else:
            self.count -= 1
        peer.conn = None
        peer.epoch += 1
        self.notifiee.disconnected(conn)
        self._dirty = True

    def close_started(self, conn: SimConn) -> None:
        """The host began closing `conn` (a trim chose it): it leaves the open figures."""
        conn.state = _CLOSING
        self._count_open(conn, -1)

    def close_abandoned(self, conn: SimConn) -> None:
        """A close was cancelled before it finished: the connection stays open."""
        conn.state = _OPEN
        self._count_open(conn, +1)

    def close_finished(self, conn: SimConn) -> None:
        """The host's close of `conn` completed: the peer comes back later, or never."""
        peer = conn.peer
        self._ended(conn)
        sc = self.scenario
        delay: tuple[float, float] | None = sc.redial if peer.honest else sc.attacker_redial
        if peer.protected:
            delay = (0.0, 0.0)
        if delay is None:
            peer.online = False
            return
        self._at(self.clock.now() + peer.rng.uniform(*delay), peer, self._dial)

    def _record_trim(self, started: float, duration: float, closed: int, trigger: str) -> None:
        self.trims.append((started, duration, closed, trigger))

    # -- the run ----------------------------------------------------------------------

    def _state(self) -> tuple[int, int, int, int, int, int, int, int]:
        if self.pruner is None:
            # The connections no trim has chosen yet (the manager's own count, unprotected).
            unchosen = self.manager.get_info().conn_count - self.protected_open
        else:
            unchosen = self.slots
        return (
            self.count,
            self.slots,
            self.honest_open,
            self.attackers_open,
            len(self.groups),
            self.hv_online,
            self.hv_open,
            unchosen,
        )

    async def run(self) -> None:
        """Runs the scenario to its end (see the module's docstring)."""
        clock = self.clock
        heap = self._heap
        end = self.scenario.duration
        await settle()
        self.recorder.observe(clock.now(), self._state())
        while True:
            now = clock.now()
            t = end
            if heap and heap[0][0] < t:
                t = heap[0][0]
            deadline = clock.next_deadline
            woke = deadline is not None and deadline <= t
            if woke:
                assert deadline is not None
                t = deadline
            if t > now:
                clock.advance(t - now)
            while heap and heap[0][0] <= t:
                _, _, _, action, peer, epoch, payload = heapq.heappop(heap)
                action(peer, epoch, payload)
            if woke or self._dirty:
                self._dirty = False
                await settle()
            self.recorder.observe(t, self._state())
            if t >= end:
                self.recorder.finish(t)
                return


async def drive_clock(clock: FakeClock, done: anyio.Event) -> None:
    """Moves `clock` from timer to timer, letting every task run in between, until `done`
    is set (so that the closes a shutdown waits for, which sleep on it, can finish)."""
    for _ in range(_MAX_DRAIN_STEPS):
        await settle()
        if done.is_set():
            return
        deadline = clock.next_deadline
        clock.advance(1.0 if deadline is None else max(deadline - clock.now(), 0.0))
    raise RuntimeError("the manager did not close within the simulated drain")


def _honest_groups(layout: random.Random, count: int, ipv6_share: float) -> list[tuple[str, int]]:
    """`count` distinct netgroups: IPv4 /16s ("a.b") and IPv6 /32s ("2a0x:yyyy")."""
    groups: list[tuple[str, int]] = []
    seen: set[str] = set()
    ipv6 = math.floor(count * ipv6_share)
    while len(groups) < count:
        if len(groups) < ipv6:
            label = f"2a0{layout.randrange(1, 10)}:{layout.randrange(0x1000, 0xFFFF):x}"
            version = 6
        else:
            label = f"{layout.randrange(11, 200)}.{layout.randrange(0, 256)}"
            version = 4
        if label not in seen:
            seen.add(label)
            groups.append((label, version))
    layout.shuffle(groups)
    return groups


def _attacker_groups(layout: random.Random, count: int) -> list[str]:
    """`count` distinct /16s, apart from the honest ones (first octet 200-223)."""
    groups: list[str] = []
    while len(groups) < count:
        label = f"{layout.randrange(200, 224)}.{layout.randrange(0, 256)}"
        if label not in groups:
            groups.append(label)
    return groups
