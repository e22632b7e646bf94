"""Adversarial load: what a hostile network can and cannot make the manager do.

- Thousands of inbound connections cannot get a protected peer, or a peer inside its grace
  period, closed; and once the attackers' own grace ends, the trimmer brings the table back
  to low water, closing the attackers (worth nothing, young) before the host's peers.
- Tagging millions of peers that never connect (which a host does on the say-so of remote
  peers: routing tables, gossip scores) creates temporary entries; they are reaped without
  any trim, and the memory they took comes back.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Hashable

import pytest

from asyncconnmgr import ConnManager, Direction, bump_sum_unbounded, decay_none
from asyncconnmgr.testing import FakeClock, FakeConn, settle

from .util import task_ids

pytestmark = pytest.mark.anyio


# --- an inbound flood --------------------------------------------------------------------------

LOW, HIGH = 100, 200
GRACE = 30.0
SILENCE = 10.0
ATTACKERS_PER_WAVE = 3_000
WAVES = 3


async def test_inbound_flood_cannot_close_protected_or_in_grace_peers() -> None:
    clock = FakeClock(start=1_000)
    before = task_ids()
    manager = ConnManager(
        bounded_count=False,
        low_water=LOW,
        high_water=HIGH,
        grace_period=GRACE,
        silence_period=SILENCE,
        close_concurrency=64,
        clock=clock,
    )
    notifiee = manager.notifee()
    host_conns: dict[Hashable, FakeConn] = {}
    protected: set[Hashable] = set()
    in_grace: set[Hashable] = set()
    valued: set[Hashable] = set()
    attackers: dict[Hashable, FakeConn] = {}

    def host_peer(peer: Hashable, direction: Direction = Direction.OUTBOUND) -> None:
        conn = FakeConn(peer, direction=direction, notifiee=notifiee)
        host_conns[peer] = conn
        notifiee.connected(conn)

    def closed_host_peers() -> list[Hashable]:
        """Host peers that must survive any flood, but were closed."""
        must_survive = protected | in_grace | valued
        return [peer for peer in must_survive if host_conns[peer].close_calls]

    async with manager:
        peer: Hashable
        # The host's own peers: valued ones, unvalued ones (which the policy may close: an
        # idle peer worth nothing goes before a busy one), and protected ones worth less
        # than nothing.
        for i in range(40):
            manager.tag_peer(("valued", i), "dht", 10)
            host_peer(("valued", i))
            valued.add(("valued", i))
        for i in range(20):
            host_peer(("plain", i), Direction.INBOUND)
        for i in range(10):
            peer = ("protected", i)
            manager.protect(peer, "relay")
            manager.tag_peer(peer, "spam-score", -100)
            protected.add(peer)
            host_peer(peer, Direction.INBOUND)
        await manager.flush()
        clock.advance(GRACE * 4)
        await settle()
        assert manager.get_info().trims == 0

        for wave in range(WAVES):
            # The flood: thousands of inbound connections from fresh peer ids, some of them
            # holding streams open to look busy. Each reports its own close, as a host does.
            for i in range(ATTACKERS_PER_WAVE):
                peer = ("attacker", wave, i)
                conn = FakeConn(peer, num_streams=i % 2, notifiee=notifiee)
                attackers[peer] = conn
                notifiee.connected(conn)
            await settle()
            # The trimmer woke at once, but every attacker is in grace and the host's peers
            # are fewer than low water: nothing may be closed.
            assert manager.get_info().conn_count > HIGH
            assert closed_host_peers() == []

            # A real newcomer arrives late in the attackers' grace period.
            clock.advance(GRACE - 5)
            await settle()
            newcomer: Hashable = ("newcomer", wave)
            host_peer(newcomer, Direction.INBOUND)
            in_grace.add(newcomer)
            await settle()
            assert closed_host_peers() == []

            # The attackers' grace ends: the trimmer brings eligible connections back to low
            # water, closing attackers (value 0, youngest) before any of the host's peers.
            clock.advance(5 + SILENCE)
            await settle()
            await manager.flush()
            assert closed_host_peers() == [], "a host peer was closed during a flood"
            now = clock.now()
            eligible = 0
            for peer in [*host_conns, *attackers]:
                tag_info = manager.get_tag_info(peer)
                if tag_info is None or manager.is_protected(peer):
                    continue
                if not tag_info.first_seen > now - GRACE:
                    eligible += len(tag_info.conns)
            assert eligible == LOW, "the flood pushed the table past low water"
            live = [c for c in [*host_conns.values(), *attackers.values()] if not c.close_calls]
            info = manager.get_info()
            assert info.conn_count == len(live)
            assert (info.closing_count, info.close_failures) == (0, 0)
            assert info.ignored_notifications == 0
            assert all(conn.close_calls <= 1 for conn in attackers.values())
            manager._check_invariants()
            # The newcomer leaves grace before the next wave: from now on it is an unvalued
            # peer like the others.
            in_grace.discard(newcomer)
            clock.advance(GRACE)
            await settle()
            assert closed_host_peers() == []
        for peer in protected | in_grace | valued:
            assert manager.get_tag_info(peer) is not None
    assert task_ids() == before


# --- tagging peers that never connect ------------------------------------------------------------

TAGGED_PER_WAVE = 300_000  # tracemalloc slows every allocation: 600,000 per backend
TAG_WAVES = 2
#: Allowed growth of traced memory after the temporary entries are reaped: noise from the
#: event loop and the allocator (a few KiB). Keeping anything per tagged peer, even a dict
#: slot (8 bytes of index plus 24 of entry), would be over 10 MB here.
MEMORY_BOUND = 64 * 1024


async def test_tagging_millions_of_never_connected_peers_is_reaped() -> None:
    clock = FakeClock(start=1_000)
    manager = ConnManager(
        low_water=LOW, high_water=HIGH, grace_period=GRACE, decay_resolution=1, clock=clock
    )
    notifiee = manager.notifee()
    async with manager:
        gossip = manager.register_decaying_tag("gossip", 3600, decay_none(), bump_sum_unbounded())
        host = FakeConn("host-peer")
        manager.tag_peer("host-peer", "dht", 7)
        notifiee.connected(host)
        await manager.flush()
        await settle()

        gc.collect()
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            for wave in range(TAG_WAVES):
                # A friend is tagged early and connects in time: it must survive the reaping.
                manager.tag_peer("early-friend", "dht", 3)
                # Plain tags, upserts and decaying bumps for peers that never connect.
                for i in range(0, TAGGED_PER_WAVE, 2):
                    manager.tag_peer((wave, i), "seen", 1)
                    gossip.bump((wave, i + 1), 1)
                for i in range(0, TAGGED_PER_WAVE, 50):
                    manager.upsert_tag((wave, i), "seen", lambda v: v + 1)
                info = manager.get_info()
                assert info.temporary_count == TAGGED_PER_WAVE + 1
                assert info.trims == 0

                clock.advance(GRACE / 2)
                await settle()
                friend = FakeConn("early-friend")
                notifiee.connected(friend)
                await manager.flush()
                clock.advance(GRACE / 2 + 1)
                await settle()

                info = manager.get_info()
                assert info.temporary_count == 0, "temporary entries were not reaped"
                assert info.trims == 0, "the reaping needed a trim"
                assert manager.get_tag_info((wave, 0)) is None
                assert manager.get_tag_info((wave, 1)) is None
                friend_info = manager.get_tag_info("early-friend")
                assert friend_info is not None
                assert dict(friend_info.tags) == {"dht": 3}
                host_info = manager.get_tag_info("host-peer")
                assert host_info is not None
                assert dict(host_info.tags) == {"dht": 7}
                manager._check_invariants()

                notifiee.disconnected(friend)
                await manager.flush()
                await settle()
                gc.collect()
                grown = tracemalloc.get_traced_memory()[0] - baseline
                assert grown < MEMORY_BOUND, (
                    f"{grown} bytes retained after {TAGGED_PER_WAVE} temporary entries "
                    f"were reaped (wave {wave})"
                )
        finally:
            tracemalloc.stop()
